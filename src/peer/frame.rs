//! Byte framing on peer connections.
//!
//! Two layers, both read defensively (a peer may send anything):
//! - during the Noise handshake, each handshake message travels as a
//!   u16-big-endian length followed by that many bytes;
//! - afterwards, each application frame is a u32-big-endian length of its
//!   *plaintext* (checked against the limit before anything else is read or
//!   allocated), followed by the plaintext split into Noise transport messages
//!   of at most 65535 bytes of ciphertext, each sent as a u16-big-endian length
//!   and the ciphertext.
//!
//! The two directions of a connection are independent Noise cipher states with
//! their own nonce counters ([`Sealer`] for sending, [`Opener`] for receiving),
//! so a connection's reader and writer never share mutable state. TCP delivers
//! in order, so the receiver's expected nonce is simply the count of messages
//! it has opened: a dropped, replayed or reordered message fails to decrypt.

use std::sync::Arc;

use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest Noise message (ciphertext), fixed by the Noise specification.
pub(crate) const NOISE_MAX_MESSAGE: usize = 65535;
/// Authentication tag appended to every encrypted Noise message.
pub(crate) const NOISE_TAG: usize = 16;
/// Largest plaintext carried by one transport message.
pub(crate) const MAX_CHUNK_PLAINTEXT: usize = NOISE_MAX_MESSAGE - NOISE_TAG;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The peer closed the connection cleanly between two frames.
    #[error("connection closed by the peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("frame failed to decrypt (wrong key, tampered or out of order)")]
    Decrypt,
    #[error("frame could not be encrypted")]
    Encrypt,
}

impl FrameError {
    /// The peer sent something we refuse (as opposed to the connection ending).
    pub(crate) fn is_rejection(&self) -> bool {
        matches!(
            self,
            FrameError::TooLarge { .. } | FrameError::Malformed(_) | FrameError::Decrypt
        )
    }
}

/// The sending half of an established Noise session.
pub(crate) struct Sealer {
    noise: Arc<StatelessTransportState>,
    nonce: u64,
}

/// The receiving half of an established Noise session.
pub(crate) struct Opener {
    noise: Arc<StatelessTransportState>,
    nonce: u64,
    /// One transport message's ciphertext, reused across frames.
    scratch: Box<[u8]>,
}

/// Split a finished Noise session into its sending and receiving halves.
pub(crate) fn split(noise: StatelessTransportState) -> (Sealer, Opener) {
    let noise = Arc::new(noise);
    (
        Sealer {
            noise: Arc::clone(&noise),
            nonce: 0,
        },
        Opener {
            noise,
            nonce: 0,
            scratch: vec![0u8; NOISE_MAX_MESSAGE].into_boxed_slice(),
        },
    )
}

impl Sealer {
    /// Append `plaintext` to `out` as one encrypted frame.
    pub(crate) fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        out.extend_from_slice(&frame_len(plaintext)?.to_be_bytes());
        for chunk in plaintext.chunks(MAX_CHUNK_PLAINTEXT) {
            self.seal_chunk(chunk, out)?;
        }
        Ok(())
    }

    /// Append `plaintext` to `out` as one encrypted frame, writing `out` to
    /// `writer` whenever it grows past `flush_at` (what is left stays in `out`
    /// for the caller to send with the frames that follow). Yields to the
    /// scheduler between transport messages, so sealing a large frame does
    /// not hold the thread.
    pub(crate) async fn seal_streaming<W: AsyncWrite + Unpin>(
        &mut self,
        plaintext: &[u8],
        out: &mut Vec<u8>,
        writer: &mut W,
        flush_at: usize,
    ) -> Result<(), FrameError> {
        out.extend_from_slice(&frame_len(plaintext)?.to_be_bytes());
        for chunk in plaintext.chunks(MAX_CHUNK_PLAINTEXT) {
            self.seal_chunk(chunk, out)?;
            if out.len() >= flush_at {
                writer.write_all(out).await?;
                out.clear();
            }
            tokio::task::coop::consume_budget().await;
        }
        Ok(())
    }

    /// Append one transport message (u16 length, ciphertext) to `out`.
    fn seal_chunk(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let start = out.len();
        out.resize(start + 2 + chunk.len() + NOISE_TAG, 0);
        let written = self
            .noise
            .write_message(self.nonce, chunk, &mut out[start + 2..])
            .map_err(|_| FrameError::Encrypt)?;
        self.nonce += 1;
        let written16 = u16::try_from(written).map_err(|_| FrameError::Encrypt)?;
        out[start..start + 2].copy_from_slice(&written16.to_be_bytes());
        out.truncate(start + 2 + written);
        Ok(())
    }

    /// Seal `plaintext` and write it out at once.
    pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        plaintext: &[u8],
    ) -> Result<(), FrameError> {
        let mut out = Vec::new();
        self.seal(plaintext, &mut out)?;
        writer.write_all(&out).await?;
        writer.flush().await?;
        Ok(())
    }
}

/// The u32 length prefix of a frame.
fn frame_len(plaintext: &[u8]) -> Result<u32, FrameError> {
    u32::try_from(plaintext.len()).map_err(|_| FrameError::TooLarge {
        len: plaintext.len(),
        max: u32::MAX as usize,
    })
}

impl Opener {
    /// Read one frame and return its plaintext.
    ///
    /// The announced length is checked against `max` before anything else is
    /// read; the plaintext buffer then grows chunk by chunk as chunks decrypt,
    /// so a peer cannot make us allocate more than it actually sent.
    pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        max: usize,
    ) -> Result<Vec<u8>, FrameError> {
        let mut len_bytes = [0u8; 4];
        let first = reader.read(&mut len_bytes).await?;
        if first == 0 {
            return Err(FrameError::Closed);
        }
        reader.read_exact(&mut len_bytes[first..]).await?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        let mut plaintext = Vec::with_capacity(len.min(MAX_CHUNK_PLAINTEXT));
        while plaintext.len() < len {
            let chunk_len = reader.read_u16().await? as usize;
            let remaining = len - plaintext.len();
            if chunk_len <= NOISE_TAG {
                return Err(FrameError::Malformed("empty transport message"));
            }
            if chunk_len - NOISE_TAG > remaining {
                return Err(FrameError::Malformed(
                    "transport message longer than the frame",
                ));
            }
            let ciphertext = &mut self.scratch[..chunk_len];
            reader.read_exact(ciphertext).await?;
            // Room for the whole ciphertext, tag included: ring's cipher
            // opens in place when the output can hold the ciphertext, and
            // otherwise copies it to a fresh allocation and back.
            let start = plaintext.len();
            plaintext.resize(start + chunk_len, 0);
            let opened = self
                .noise
                .read_message(self.nonce, ciphertext, &mut plaintext[start..])
                .map_err(|_| FrameError::Decrypt)?;
            self.nonce += 1;
            plaintext.truncate(start + opened);
            // Opening a large frame must not hold the thread.
            tokio::task::coop::consume_budget().await;
        }
        Ok(plaintext)
    }
}

/// Write one handshake message: u16-big-endian length, then the bytes.
pub(crate) async fn write_handshake_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &[u8],
) -> Result<(), FrameError> {
    let len = u16::try_from(message.len()).map_err(|_| FrameError::TooLarge {
        len: message.len(),
        max: u16::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// Read one handshake message of at most `max` bytes.
pub(crate) async fn read_handshake_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = match reader.read_u16().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed);
        }
        Err(e) => return Err(e.into()),
    };
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut message = vec![0u8; len];
    reader.read_exact(&mut message).await?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::handshake::{Role, noise_handshake};

    type Side = (Sealer, Opener, tokio::io::DuplexStream);

    /// A connected pair of Noise sessions over an in-memory pipe.
    async fn session_pair() -> (Side, Side) {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let psk = [9u8; 32];
        let (ra, rb) = tokio::join!(
            noise_handshake(&mut a, Role::Initiator, &psk),
            noise_handshake(&mut b, Role::Responder, &psk),
        );
        let (sa, oa) = ra.unwrap();
        let (sb, ob) = rb.unwrap();
        ((sa, oa, a), (sb, ob, b))
    }

    #[tokio::test]
    async fn frames_of_every_size_round_trip() {
        let ((mut sa, _oa, mut a), (_sb, mut ob, mut b)) = session_pair().await;
        let sizes = [
            0,
            1,
            MAX_CHUNK_PLAINTEXT - 1,
            MAX_CHUNK_PLAINTEXT,
            MAX_CHUNK_PLAINTEXT + 1,
            3 * MAX_CHUNK_PLAINTEXT + 17,
        ];
        let writer = async {
            for (i, size) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..*size).map(|j| (i + j) as u8).collect();
                sa.write_frame(&mut a, &data).await.unwrap();
            }
        };
        let reader = async {
            for (i, size) in sizes.iter().enumerate() {
                let got = ob.read_frame(&mut b, 1 << 20).await.unwrap();
                let want: Vec<u8> = (0..*size).map(|j| (i + j) as u8).collect();
                assert_eq!(got, want, "frame {i} of {size} bytes");
            }
        };
        tokio::join!(writer, reader);
    }

    #[tokio::test]
    async fn streamed_frames_read_like_sealed_ones() {
        let ((mut sa, _oa, mut a), (_sb, mut ob, mut b)) = session_pair().await;
        let data: Vec<u8> = (0..3 * MAX_CHUNK_PLAINTEXT + 5).map(|i| i as u8).collect();
        let writer = async {
            let mut out = Vec::new();
            sa.seal_streaming(&data, &mut out, &mut a, 1000)
                .await
                .unwrap();
            sa.seal_streaming(b"tail", &mut out, &mut a, 1 << 20)
                .await
                .unwrap();
            a.write_all(&out).await.unwrap();
        };
        let reader = async {
            assert_eq!(ob.read_frame(&mut b, 1 << 20).await.unwrap(), data);
            assert_eq!(ob.read_frame(&mut b, 1 << 20).await.unwrap(), b"tail");
        };
        tokio::join!(writer, reader);
    }

    #[tokio::test]
    async fn oversized_lengths_are_refused_before_reading_the_body() {
        let ((mut sa, _oa, mut a), (_sb, mut ob, mut b)) = session_pair().await;
        sa.write_frame(&mut a, &[1u8; 1000]).await.unwrap();
        match ob.read_frame(&mut b, 999).await {
            Err(
                e @ FrameError::TooLarge {
                    len: 1000,
                    max: 999,
                },
            ) => assert!(e.is_rejection()),
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn tampered_and_malformed_frames_are_refused() {
        let ((mut sa, _oa, mut a), (_sb, mut ob, mut b)) = session_pair().await;
        // Flip one ciphertext bit.
        let mut out = Vec::new();
        sa.seal(b"hello peer", &mut out).unwrap();
        let last = out.len() - 1;
        out[last] ^= 1;
        a.write_all(&out).await.unwrap();
        assert!(matches!(
            ob.read_frame(&mut b, 1024).await,
            Err(FrameError::Decrypt)
        ));

        // A transport message longer than the frame it belongs to.
        let ((_sa, _oa, mut a), (_sb, mut ob, mut b)) = session_pair().await;
        a.write_all(&[0, 0, 0, 4, 0, 100]).await.unwrap();
        assert!(matches!(
            ob.read_frame(&mut b, 1024).await,
            Err(FrameError::Malformed(_))
        ));

        // A transport message too short to hold a tag.
        let ((_sa, _oa, mut a), (_sb, mut ob, mut b)) = session_pair().await;
        a.write_all(&[0, 0, 0, 4, 0, 16]).await.unwrap();
        assert!(matches!(
            ob.read_frame(&mut b, 1024).await,
            Err(FrameError::Malformed(_))
        ));

        // A frame cut short, then a clean close between frames.
        let ((mut sa, _oa, mut a), (_sb, mut ob, mut b)) = session_pair().await;
        let mut out = Vec::new();
        sa.seal(&[7u8; 100], &mut out).unwrap();
        a.write_all(&out[..50]).await.unwrap();
        drop(a);
        assert!(matches!(
            ob.read_frame(&mut b, 1024).await,
            Err(FrameError::Io(_))
        ));
        let ((_sa, _oa, a), (_sb, mut ob, mut b)) = session_pair().await;
        drop(a);
        assert!(matches!(
            ob.read_frame(&mut b, 1024).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn replayed_messages_fail_to_decrypt() {
        let ((mut sa, _oa, mut a), (_sb, mut ob, mut b)) = session_pair().await;
        let mut out = Vec::new();
        sa.seal(b"once", &mut out).unwrap();
        a.write_all(&out).await.unwrap();
        a.write_all(&out).await.unwrap();
        assert_eq!(ob.read_frame(&mut b, 1024).await.unwrap(), b"once");
        assert!(matches!(
            ob.read_frame(&mut b, 1024).await,
            Err(FrameError::Decrypt)
        ));
    }
}
