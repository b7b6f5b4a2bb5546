//! Tessera's wire types, generated from the `.proto` files beside this crate.
//!
//! One generated copy serves the server, the client crate and the CLI.

/// The client API (`tessera.v1`).
pub mod v1 {
    tonic::include_proto!("tessera.v1");
}

/// The peer protocol (`tessera.peer.v1`): messages only, carried over Tessera's
/// own encrypted framing rather than gRPC.
#[allow(clippy::large_enum_variant)]
pub mod peer {
    tonic::include_proto!("tessera.peer.v1");
}

/// Encoded `FileDescriptorSet` of every Tessera proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tessera_descriptor.bin"));
