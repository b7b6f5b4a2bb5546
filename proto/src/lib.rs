//! Tessera's wire types, generated from the `.proto` files beside this crate.
//!
//! One generated copy serves the server, the client crate and the CLI.

/// Generated modules, nested like the protobuf packages so that one package
/// can refer to another's messages.
pub mod tessera {
    /// The client API (`tessera.v1`).
    pub mod v1 {
        tonic::include_proto!("tessera.v1");
    }

    /// The peer protocol (`tessera.peer.v1`): messages only, carried over
    /// Tessera's own encrypted framing rather than gRPC.
    pub mod peer {
        #[allow(clippy::large_enum_variant)]
        pub mod v1 {
            tonic::include_proto!("tessera.peer.v1");
        }
    }
}

pub use tessera::peer::v1 as peer;
pub use tessera::v1;

/// Encoded `FileDescriptorSet` of every Tessera proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tessera_descriptor.bin"));
