//! Tessera: a gossip-based, peer-to-peer ticket store for single sign-on servers.
//!
//! Modules follow the architecture in `DESIGN.md`:
//! - [`entry`]: the ticket entry lattice (CRDT) and its merge laws;
//! - [`store`]: the sharded local store and its derived indexes;
//! - [`sweeper`]: the expiry worker; [`worker`]: how background jobs run;
//! - [`api`]: the gRPC service; [`server`]: one node, wired together;
//! - [`cli`]: the command line; [`config`]: node settings;
//! - [`clock`], [`ticket`], [`error`], [`redact`]: time, validation, errors, log redaction.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod entry;
pub mod error;
pub mod journal;
pub mod membership;
pub mod peer;
pub mod redact;
pub mod replication;
pub mod secret;
pub mod server;
pub mod store;
pub mod sweeper;
pub mod ticket;
pub mod watch;
pub mod worker;
