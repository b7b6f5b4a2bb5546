//! Opening a peer connection: the Noise handshake, then the `Hello` exchange.
//!
//! The handshake is `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` keyed by the
//! cluster's peer PSK: fresh ephemeral keys on both sides (forward secrecy), and
//! the PSK mixed in before the first message, so a party without the cluster
//! secret cannot complete it (its first message fails to authenticate on the
//! responder, and the responder's reply cannot be read without the key). No
//! node keeps a static key: membership in the cluster *is* knowing the secret.
//!
//! Once the channel is up, each side sends a [`Hello`] as its first frame and
//! reads the other's, so both know who they talk to and whether they speak the
//! same protocol generation before any request flows.

use prost::Message;
use snow::Builder;
use snow::resolvers::{BoxedCryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use tessera_proto::peer::Hello;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, FrameError, Opener, Sealer};

/// The Noise protocol name.
pub(crate) const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: both sides must agree on it.
pub(crate) const PROLOGUE: &[u8] = b"tessera-peer/1";
/// The peer protocol generation this build speaks (`Hello.protocol`).
pub(crate) const PROTOCOL: u32 = 1;
/// This build's version, sent in `Hello.version`.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// NNpsk0 messages are 48 bytes (an ephemeral key and a tag); anything much
/// longer is not a Tessera peer.
const MAX_HANDSHAKE_MESSAGE: usize = 256;
/// A `Hello` is a few dozen bytes.
const MAX_HELLO_BYTES: usize = 16 * 1024;

/// Which end of the connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// We dialed.
    Initiator,
    /// We accepted.
    Responder,
}

/// Why a connection was refused while opening.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// Almost always a wrong cluster secret, or something that is not a
    /// Tessera peer at all.
    #[error("noise handshake failed: {0}")]
    Noise(String),
    #[error("connection closed during the handshake")]
    Closed,
    #[error("i/o error during the handshake: {0}")]
    Io(std::io::Error),
    #[error("bad hello: {0}")]
    BadHello(String),
    #[error(
        "peer speaks peer protocol {theirs} (Tessera {their_version}); this node speaks protocol {ours} (Tessera {our_version})"
    )]
    Protocol {
        theirs: u32,
        their_version: String,
        ours: u32,
        our_version: &'static str,
    },
}

impl From<FrameError> for HandshakeError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed => HandshakeError::Closed,
            FrameError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                HandshakeError::Closed
            }
            FrameError::Io(e) => HandshakeError::Io(e),
            other => HandshakeError::Noise(other.to_string()),
        }
    }
}

fn noise_error(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

/// The implementations of the Noise primitives: ring's ChaCha20-Poly1305
/// (vectorised assembly; with RustCrypto's the cipher was ~35% of a
/// catch-up's instructions), RustCrypto's for the rest (X25519, BLAKE2s).
/// The same algorithms either way, so the bytes on the wire are the same and
/// nodes of either build talk to each other (tested below).
fn resolver() -> BoxedCryptoResolver {
    Box::new(FallbackResolver::new(
        Box::new(RingResolver),
        Box::new(DefaultResolver),
    ))
}

/// Run the Noise handshake on `stream` and return the transport halves.
pub(crate) async fn noise_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    psk: &[u8; 32],
) -> Result<(Sealer, Opener), HandshakeError> {
    noise_handshake_with(stream, role, psk, resolver()).await
}

/// [`noise_handshake`] with the given implementations of the primitives.
async fn noise_handshake_with<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    psk: &[u8; 32],
    resolver: BoxedCryptoResolver,
) -> Result<(Sealer, Opener), HandshakeError> {
    let params = NOISE_PATTERN
        .parse()
        .map_err(|e: snow::Error| HandshakeError::Noise(e.to_string()))?;
    let builder = Builder::with_resolver(params, resolver)
        .psk(0, psk)
        .map_err(noise_error)?
        .prologue(PROLOGUE)
        .map_err(noise_error)?;
    let mut buf = [0u8; MAX_HANDSHAKE_MESSAGE];
    let state = match role {
        Role::Initiator => {
            let mut hs = builder.build_initiator().map_err(noise_error)?;
            let n = hs.write_message(&[], &mut buf).map_err(noise_error)?;
            frame::write_handshake_message(stream, &buf[..n]).await?;
            let reply = frame::read_handshake_message(stream, MAX_HANDSHAKE_MESSAGE).await?;
            hs.read_message(&reply, &mut buf).map_err(noise_error)?;
            hs
        }
        Role::Responder => {
            let mut hs = builder.build_responder().map_err(noise_error)?;
            let first = frame::read_handshake_message(stream, MAX_HANDSHAKE_MESSAGE).await?;
            hs.read_message(&first, &mut buf).map_err(noise_error)?;
            let n = hs.write_message(&[], &mut buf).map_err(noise_error)?;
            frame::write_handshake_message(stream, &buf[..n]).await?;
            hs
        }
    };
    if !state.is_handshake_finished() {
        return Err(HandshakeError::Noise("handshake did not finish".into()));
    }
    let transport = state.into_stateless_transport_mode().map_err(noise_error)?;
    Ok(frame::split(transport))
}

/// Send our `Hello` and read the peer's; refuse a peer of another protocol
/// generation or one that does not name itself.
pub(crate) async fn exchange_hello<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sealer: &mut Sealer,
    opener: &mut Opener,
    ours: &Hello,
) -> Result<Hello, HandshakeError> {
    sealer.write_frame(stream, &ours.encode_to_vec()).await?;
    let bytes = opener.read_frame(stream, MAX_HELLO_BYTES).await?;
    let theirs = Hello::decode(bytes.as_slice())
        .map_err(|e| HandshakeError::BadHello(format!("undecodable: {e}")))?;
    if theirs.protocol != PROTOCOL {
        return Err(HandshakeError::Protocol {
            theirs: theirs.protocol,
            their_version: theirs.version.clone(),
            ours: PROTOCOL,
            our_version: VERSION,
        });
    }
    if theirs.node_id.is_empty() {
        return Err(HandshakeError::BadHello("empty node id".into()));
    }
    Ok(theirs)
}

/// A connection whose handshake and `Hello` exchange succeeded.
pub(crate) struct Established {
    pub sealer: Sealer,
    pub opener: Opener,
    pub hello: Hello,
}

/// The whole opening of a connection: Noise, then `Hello`.
pub(crate) async fn establish<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    psk: &[u8; 32],
    ours: &Hello,
) -> Result<Established, HandshakeError> {
    let (mut sealer, mut opener) = noise_handshake(stream, role, psk).await?;
    let hello = exchange_hello(stream, &mut sealer, &mut opener, ours).await?;
    Ok(Established {
        sealer,
        opener,
        hello,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str, protocol: u32) -> Hello {
        Hello {
            node_id: node.into(),
            generation: 7,
            version: VERSION.into(),
            protocol,
            hlc: None,
            physical_ms: None,
        }
    }

    #[tokio::test]
    async fn same_psk_establishes_and_exchanges_hellos() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let psk = [1u8; 32];
        let (hello_a, hello_b) = (hello("a", PROTOCOL), hello("b", PROTOCOL));
        let (ra, rb) = tokio::join!(
            establish(&mut a, Role::Initiator, &psk, &hello_a),
            establish(&mut b, Role::Responder, &psk, &hello_b),
        );
        assert_eq!(ra.unwrap().hello.node_id, "b");
        assert_eq!(rb.unwrap().hello.node_id, "a");
    }

    /// Nodes of the previous build (RustCrypto's cipher) and of this one
    /// (ring's) must understand each other, both ways and across the chunk
    /// boundaries of large frames.
    #[tokio::test]
    async fn ring_and_rustcrypto_sessions_interoperate() {
        use tokio::io::AsyncWriteExt;
        let psk = [3u8; 32];
        for ring_dials in [true, false] {
            let (mut a, mut b) = tokio::io::duplex(1 << 20);
            let pick = |ring: bool| -> BoxedCryptoResolver {
                if ring {
                    resolver()
                } else {
                    Box::new(DefaultResolver)
                }
            };
            let (ra, rb) = tokio::join!(
                noise_handshake_with(&mut a, Role::Initiator, &psk, pick(ring_dials)),
                noise_handshake_with(&mut b, Role::Responder, &psk, pick(!ring_dials)),
            );
            let ((mut sa, mut oa), (mut sb, mut ob)) = (ra.unwrap(), rb.unwrap());
            let data: Vec<u8> = (0..3 * frame::MAX_CHUNK_PLAINTEXT + 7)
                .map(|i| (i * 7) as u8)
                .collect();
            for _ in 0..2 {
                let mut out = Vec::new();
                sa.seal(&data, &mut out).unwrap();
                a.write_all(&out).await.unwrap();
                assert_eq!(ob.read_frame(&mut b, 1 << 20).await.unwrap(), data);
                let mut out = Vec::new();
                sb.seal(&data[..100], &mut out).unwrap();
                b.write_all(&out).await.unwrap();
                assert_eq!(oa.read_frame(&mut a, 1 << 20).await.unwrap(), &data[..100]);
            }
        }
    }

    #[tokio::test]
    async fn a_different_psk_fails_the_handshake() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let (ra, rb) = tokio::join!(
            async {
                let r = noise_handshake(&mut a, Role::Initiator, &[1u8; 32]).await;
                drop(a);
                r
            },
            async {
                let r = noise_handshake(&mut b, Role::Responder, &[2u8; 32]).await;
                drop(b);
                r
            },
        );
        assert!(
            matches!(rb, Err(HandshakeError::Noise(_))),
            "{:?}",
            rb.err()
        );
        assert!(ra.is_err());
    }

    #[tokio::test]
    async fn another_protocol_generation_is_refused_naming_both() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let psk = [1u8; 32];
        let (hello_a, hello_b) = (hello("a", PROTOCOL), hello("b", 2));
        let (ra, _rb) = tokio::join!(
            establish(&mut a, Role::Initiator, &psk, &hello_a),
            establish(&mut b, Role::Responder, &psk, &hello_b),
        );
        let message = ra.err().unwrap().to_string();
        assert!(message.contains("protocol 2"), "{message}");
        assert!(message.contains("protocol 1"), "{message}");
    }
}
