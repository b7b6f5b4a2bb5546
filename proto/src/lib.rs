//! Tessera's wire types, generated from the `.proto` files beside this crate.
//!
//! One generated copy serves the server, the client crate and the CLI.

/// Generated modules, nested like the protobuf packages so that one package
/// can refer to another's messages.
pub mod tessera {
    /// The client API (`tessera.v1`). A watch event is mostly its ticket:
    /// boxing it would allocate once more per event for nothing.
    #[allow(clippy::large_enum_variant)]
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

    /// The records of a data directory (`tessera.journal.v1`).
    pub mod journal {
        pub mod v1 {
            tonic::include_proto!("tessera.journal.v1");
        }
    }
}

use std::marker::PhantomData;

use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

pub use tessera::journal::v1 as journal;
pub use tessera::peer::v1 as peer;
pub use tessera::v1;

/// Encoded `FileDescriptorSet` of every Tessera proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tessera_descriptor.bin"));

/// The codec of every generated service and client: prost, with buffers that
/// start at, and grow by, [`CODEC_BUFFER_BYTES`] instead of tonic's 8 KiB.
///
/// A buffer grows by whole increments, each growth a reallocation that copies
/// what is already encoded: a `Batch` response of a few dozen tickets (10-40 KB)
/// was copied up to four times, and one of 256 tickets of 1 KB thirty-odd
/// times (callgrind: 2.7% of a node's instructions under the `cas` bench).
/// Memory is reserved, not touched, until a message fills it.
#[derive(Debug, Clone, Copy)]
pub struct Codec<T, U>(PhantomData<fn(T) -> U>);

/// Where a codec buffer starts, and how much it grows by at a time.
pub const CODEC_BUFFER_BYTES: usize = 32 * 1024;
/// Of a streamed response, how much is gathered before it is handed to the
/// transport (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(buffers())
    }
}

fn buffers() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}
