//! The `tessera` command line: `serve` runs a node; every other subcommand is
//! a call through `tessera-client`. Scripts rely on the shape and exit codes:
//! 0 success; 1 the ticket is not there (or a compare-and-set / create-only
//! lost); 2 invalid input, or a missing or wrong API token (the caller's
//! configuration is wrong); 3 the store could not be reached or failed.

mod commands;
mod output;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{NodeConfig, parse_duration};
pub use serve::ServeArgs;

/// Process exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Ok = 0,
    NotThere = 1,
    InvalidInput = 2,
    Failed = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// Tessera: a replicated ticket store for single sign-on servers.
#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version,
    about,
    propagate_version = true,
    after_help = "Client subcommands send the API token from --token-file or $TESSERA_API_TOKEN \
                  (a node with peers requires it).\n\
                  Exit codes: 0 success; 1 the ticket is not there, or a compare-and-set / \
                  create-only lost; 2 invalid input, or a missing or wrong API token; \
                  3 the store could not be reached or failed."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags of every client subcommand (accepted before or after it).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Node addresses, comma-separated; the client fails over in order.
    #[arg(
        long,
        global = true,
        env = "TESSERA_ADDR",
        default_value = "http://127.0.0.1:7070",
        value_delimiter = ','
    )]
    pub addr: Vec<String>,
    /// Print JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Per-call timeout of client subcommands.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// File holding the cluster's API token, sent with every call (not
    /// world-readable); or set TESSERA_API_TOKEN (never give the token itself as
    /// a flag: argv is visible to every user). A missing or wrong token exits 2.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA that signs the nodes' certificates, for https://
    /// addresses; or the PEM text itself in TESSERA_CA [default: the
    /// system's trusted roots].
    #[arg(long, global = true, env = "TESSERA_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate, for nodes that require one (mTLS).
    #[arg(
        long,
        global = true,
        env = "TESSERA_CERT_FILE",
        value_name = "FILE",
        requires = "key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// PEM file of this client's private key (with --cert-file).
    #[arg(
        long,
        global = true,
        env = "TESSERA_KEY_FILE",
        value_name = "FILE",
        requires = "cert_file"
    )]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (defaults: one node on 127.0.0.1:7070, no other dependency).
    Serve(Box<ServeArgs>),
    /// Create a ticket, or replace it unless --create-only.
    Put(PutArgs),
    /// Show a live ticket (records no use, extends nothing).
    Get { id: String },
    /// Record a use of a ticket and show it.
    Touch { id: String },
    /// Check and record a use atomically (service tickets).
    Consume { id: String },
    /// Replace a ticket's payload and/or idle timeout.
    Update(UpdateArgs),
    /// Delete a ticket and all its descendants.
    Delete { id: String },
    /// Delete every ticket.
    DeleteAll,
    /// Delete every ticket of a principal, with descendants (logout everywhere).
    DeleteFor { principal: String },
    /// List live tickets.
    List(ListArgs),
    /// Follow ticket events (created, deleted, expired, used up) of every
    /// node in --addr, one line each, until interrupted; a node's stream that
    /// breaks is resumed from its last position. Each event is reported by
    /// one node, so give every node to hear every event.
    Watch(WatchArgs),
    /// Count tickets, total and per kind.
    Count,
    /// Live TGTs (sessions) of a principal, case-insensitive.
    Sessions { principal: String },
    /// The cluster's nodes as the contacted node sees them.
    Members,
    /// Counters of the contacted node since it started: rejected handshakes,
    /// frames and API calls, clock skew reports, read repairs...
    Stats,
    /// Whether every node in --addr is ready (joined and caught up): exit 0 if
    /// so, 1 if one answers but is not ready, 3 if one cannot be reached. Needs
    /// no token; meant for container health checks.
    Health,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub id: String,
    /// Upper-case word [default: the id's prefix before the first '-'].
    #[arg(long)]
    pub kind: Option<String>,
    /// Time to live: 10s, 5m, 8h, 14d.
    #[arg(long, default_value = "8h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Sliding idle timeout (at most the TTL).
    #[arg(long, value_parser = parse_duration)]
    pub idle: Option<Duration>,
    /// Uses allowed; 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    pub max_uses: u32,
    #[arg(long)]
    pub principal: Option<String>,
    /// Parent ticket id (the ticket dies with it and never outlives it).
    #[arg(long)]
    pub parent: Option<String>,
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// Fail (exit 1) instead of replacing a live ticket.
    #[arg(long)]
    pub create_only: bool,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct PayloadArgs {
    /// Payload as text.
    #[arg(long)]
    pub payload: Option<String>,
    /// Payload read from a file ('-' for standard input).
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: String,
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// New idle timeout; 0s removes it.
    #[arg(long, value_parser = parse_duration)]
    pub idle: Option<Duration>,
    /// Only update if the ticket is still at this version (else exit 1).
    #[arg(long)]
    pub if_version: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub kind: Option<String>,
    #[arg(long)]
    pub principal: Option<String>,
    /// Stop after this many tickets; 0 = all.
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only tickets of this kind (repeatable).
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// Only these events (repeatable).
    #[arg(long = "event", value_enum)]
    pub events: Vec<WatchEventArg>,
    /// Resume after this position (from an earlier line; one --addr only).
    #[arg(long)]
    pub resume_after: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WatchEventArg {
    Created,
    Deleted,
    Expired,
    UsedUp,
}

/// Parse the command line and run it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve`'s settings are read before the runtime starts: they size it. One
    // that does not load or validate leaves the default; `serve` reports it.
    let serve_config = match &cli.command {
        Command::Serve(args) => Some(args.node_config()),
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(Ok(NodeConfig {
        worker_threads: Some(threads),
        ..
    })) = &serve_config
    {
        builder.worker_threads(*threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tessera: cannot start the async runtime: {e}");
            return Exit::Failed.into();
        }
    };
    let exit = runtime.block_on(async move {
        match cli.command {
            Command::Serve(_) if cli.global.token_file.is_some() => {
                // Silently ignoring it could leave a node open that was meant to be closed.
                eprintln!(
                    "tessera: --token-file is for client subcommands; tessera serve takes --api-token-file"
                );
                Exit::InvalidInput
            }
            Command::Serve(args) => {
                let config = serve_config.unwrap_or_else(|| args.node_config());
                serve::run(*args, config).await
            }
            Command::Health => commands::health(&cli.global).await,
            command => commands::run(&cli.global, command).await,
        }
    });
    exit.into()
}
