//! Reading one frame of the wire protocol ([`featurestore::wire::codec`]) from a QUIC receive stream.
//!
//! The client (responses), the node's client server (requests) and the node's peer transport (replication
//! messages) all read frames the same way, with this one function: [`read_frame`].
//!
//! Guarantees:
//! - The 5-byte header is read and checked by [`featurestore::wire::codec::parse_header`] (protocol version,
//!   announced size at most `max_frame_bytes`) *before* the payload buffer is allocated; the buffer is
//!   exactly the announced size.
//! - Every failure is a typed [`FrameError`] that says which part of the frame it concerns, so callers can
//!   answer a bad frame (a typed error reply) and give up on a broken stream (nobody to answer) without
//!   parsing messages.
//!
//! Caveats:
//! - Only the frame is read: decoding the payload, and checking that nothing follows the frame, are the
//!   caller's (they differ between requests, responses and peer messages).
//! - No timeout: bound the call with `tokio::time::timeout` where a slow sender must not hold a task.

use std::fmt;

use featurestore::wire::codec::{parse_header, FRAME_HEADER_BYTES};
use quinn::{ReadExactError, RecvStream};

/// The part of a frame a [`FrameError`] concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    /// The fixed-size header (version byte and payload length).
    Header,
    /// The payload whose length the header announced.
    Payload,
}

impl fmt::Display for FramePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FramePart::Header => "header",
            FramePart::Payload => "payload",
        })
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The sender finished the stream before the whole frame arrived (a truncated frame).
    #[error("the stream ended after {read} of {expected} bytes of the frame {part}")]
    Closed {
        /// Where the stream ended.
        part: FramePart,
        /// Bytes of `part` that did arrive.
        read: usize,
        /// Bytes `part` should have had.
        expected: usize,
    },
    /// Reading failed: the sender reset the stream, the connection was lost, or the stream was stopped
    /// locally.
    #[error("reading the frame {part}: {source}")]
    Read {
        /// The part being read.
        part: FramePart,
        /// The QUIC error.
        #[source]
        source: quinn::ReadError,
    },
    /// The header was refused before anything was allocated: an unknown protocol version
    /// ([`featurestore::Error::UnsupportedVersion`]) or a payload above the limit
    /// ([`featurestore::Error::FrameTooLarge`]).
    #[error("frame header refused: {0}")]
    Header(#[source] featurestore::Error),
}

/// Reads one frame from `recv` and returns its payload, refusing (from the header alone) a frame of an
/// unknown version or with a payload above `max_frame_bytes`.
pub async fn read_frame(
    recv: &mut RecvStream,
    max_frame_bytes: u32,
) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    read_part(recv, &mut header, FramePart::Header).await?;
    let len = parse_header(header, max_frame_bytes).map_err(FrameError::Header)?;
    let mut payload = vec![0u8; len];
    read_part(recv, &mut payload, FramePart::Payload).await?;
    Ok(payload)
}

/// Fills `buf` from `recv`.
async fn read_part(
    recv: &mut RecvStream,
    buf: &mut [u8],
    part: FramePart,
) -> Result<(), FrameError> {
    let expected = buf.len();
    recv.read_exact(buf).await.map_err(|e| match e {
        ReadExactError::FinishedEarly(read) => FrameError::Closed {
            part,
            read,
            expected,
        },
        ReadExactError::ReadError(source) => FrameError::Read { part, source },
    })
}
