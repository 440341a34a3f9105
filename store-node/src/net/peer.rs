//! Peer transport: QUIC connections between nodes (mutual TLS, the peer ALPN), one unidirectional stream
//! per batch of messages.
//!
//! Guarantees:
//! - Every peer has one outbound queue of bounded capacity and one sender task. When the queue is full the
//!   message is dropped and counted: the replication protocol tolerates loss (unacknowledged sends become
//!   hints, anti-entropy repairs the rest), so a slow or dead peer can never make a node buffer without bound.
//! - **Batching**: the sender takes what is queued for a peer when it sends (up to
//!   [`PeerBatch::messages`] messages and about [`PeerBatch::bytes`] bytes) and writes those frames on
//!   one stream: under load, one stream (and its QUIC stream state, frames and acks) carries many
//!   messages; when idle, a message goes alone, without waiting for company. The receiver delivers every
//!   frame of a stream in its own task, so one message's durability wait never holds up the next.
//! - Connecting is bounded by a timeout; after a failure the sender waits a short backoff before the next
//!   attempt and drops what arrives meanwhile, rather than queueing behind a dead peer.
//! - Inbound: only connections whose certificate names a node (checked by the server) reach
//!   [`read_peer_streams`]; every frame's size is checked before its buffer is allocated, and a bad frame
//!   is counted and ends its stream (the messages before it were delivered) without closing the
//!   connection; so does a stream carrying more than [`PEER_BATCH_MESSAGES_CEILING`] messages (the
//!   ceiling of every node's `max_peer_batch_messages`, so nodes configured differently still agree).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use featurestore::limits::{FRAME_BYTES_CEILING, PEER_BATCH_MESSAGES_CEILING};
use featurestore::wire::codec::{decode_peer, encode_frame};
use featurestore::wire::peer::PeerMessage;
use featurestore::NodeId;
use store_client::frame::{read_frame, FrameError, FramePart};
use tokio::sync::mpsc;

use crate::certs::node_server_name;

/// After a failed connect to a peer, messages for it are dropped, and counted as unreachable, for this
/// long before the next connection attempt: a dead peer costs one attempt per backoff, not one per
/// message.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// Time an inbound peer stream gets to deliver its whole message; a slower one is counted as a bad frame
/// and dropped, so a stalled peer cannot hold a task forever.
const INBOUND_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

crate::metrics::counters! {
    /// Counters of the peer transport, reported as `peer_<field>`.
    pub struct PeerMetrics as "peer_" {
        /// Messages handed to a sender.
        sent,
        /// Messages dropped because a peer's queue was full.
        queue_drops,
        /// Messages dropped because the peer could not be reached.
        unreachable_drops,
        /// Inbound messages received.
        received,
        /// Inbound frames that could not be decoded or were too large.
        bad_frames,
        /// Streams opened to send messages (each carries a batch of one or more).
        batches,
    }
}

/// How many queued messages for one peer share a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerBatch {
    /// Most messages per stream.
    pub messages: usize,
    /// Bytes of frames after which a batch is closed (its first message goes alone whatever its size).
    pub bytes: usize,
}

impl PeerBatch {
    /// The batch limits of `limits` (`max_peer_batch_messages`, `max_peer_batch_bytes`).
    pub fn of(limits: &featurestore::Limits) -> Self {
        PeerBatch {
            messages: limits.max_peer_batch_messages.max(1),
            bytes: limits.max_peer_batch_bytes,
        }
    }
}

struct Outbound {
    tx: mpsc::Sender<(SocketAddr, PeerMessage)>,
}

/// Outbound connections to every peer.
pub struct Peers {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    queue_capacity: usize,
    connect_timeout: Duration,
    batch: PeerBatch,
    queues: Mutex<HashMap<NodeId, Outbound>>,
    metrics: Arc<PeerMetrics>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Outbound peer transport over `endpoint`, authenticating with `client_config` (this node's
    /// certificate, the peer ALPN), with `batch` messages at most per stream.
    pub fn new(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        queue_capacity: usize,
        connect_timeout: Duration,
        batch: PeerBatch,
    ) -> Self {
        Peers {
            endpoint,
            client_config,
            queue_capacity,
            connect_timeout,
            batch,
            queues: Mutex::new(HashMap::new()),
            metrics: Arc::default(),
        }
    }

    /// The transport's counters.
    pub fn metrics(&self) -> &Arc<PeerMetrics> {
        &self.metrics
    }

    /// Queues `msg` for `to` at `addr`; drops it (counted) if the peer's queue is full.
    pub fn send(&self, to: &NodeId, addr: SocketAddr, msg: PeerMessage) {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let outbound = queues.entry(to.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.queue_capacity);
            tokio::spawn(sender(
                to.clone(),
                self.endpoint.clone(),
                self.client_config.clone(),
                self.connect_timeout,
                self.batch,
                rx,
                self.metrics.clone(),
            ));
            Outbound { tx }
        });
        match outbound.tx.try_send((addr, msg)) {
            Ok(()) => {
                self.metrics.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.queue_drops.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                queues.remove(to);
            }
        }
    }
}

async fn sender(
    peer: NodeId,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    connect_timeout: Duration,
    batch: PeerBatch,
    mut rx: mpsc::Receiver<(SocketAddr, PeerMessage)>,
    metrics: Arc<PeerMetrics>,
) {
    let server_name = node_server_name(peer.as_str());
    let mut conn: Option<(SocketAddr, quinn::Connection)> = None;
    let mut failed_at: Option<Instant> = None;
    // A message taken from the queue for a batch but addressed elsewhere (the peer moved): it starts
    // the next batch.
    let mut carried: Option<(SocketAddr, PeerMessage)> = None;
    loop {
        let next = match carried.take() {
            Some(next) => Some(next),
            None => rx.recv().await,
        };
        let Some((addr, msg)) = next else {
            return;
        };
        let usable = conn
            .as_ref()
            .is_some_and(|(a, c)| *a == addr && c.close_reason().is_none());
        if !usable {
            conn = None;
            if failed_at.is_some_and(|t| t.elapsed() < RECONNECT_BACKOFF) {
                metrics.unreachable_drops.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let attempt = endpoint
                .connect_with(client_config.clone(), addr, &server_name)
                .map_err(|e| e.to_string());
            let connected = match attempt {
                Ok(connecting) => match tokio::time::timeout(connect_timeout, connecting).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("connect timeout".to_owned()),
                },
                Err(e) => Err(e),
            };
            match connected {
                Ok(c) => {
                    failed_at = None;
                    conn = Some((addr, c));
                }
                Err(error) => {
                    tracing::debug!(%peer, %addr, %error, "peer unreachable");
                    failed_at = Some(Instant::now());
                    metrics.unreachable_drops.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some((_, c)) = conn.as_ref() else {
            continue;
        };
        let (frames, count) = take_batch(&peer, addr, msg, &mut rx, &mut carried, batch);
        if count == 0 {
            continue;
        }
        let sent = async {
            let mut stream = c.open_uni().await.map_err(|e| e.to_string())?;
            stream.write_all(&frames).await.map_err(|e| e.to_string())?;
            stream.finish().map_err(|e| e.to_string())
        };
        metrics.batches.fetch_add(1, Ordering::Relaxed);
        // A dead peer never returns stream credit: without a bound, `open_uni` would wait until the idle
        // timeout. Give up on the connection instead and reconnect for the next message.
        let sent = match tokio::time::timeout(connect_timeout, sent).await {
            Ok(r) => r,
            Err(_) => Err("send timed out".to_owned()),
        };
        if let Err(error) = sent {
            tracing::debug!(%peer, %error, "peer send failed");
            metrics
                .unreachable_drops
                .fetch_add(count as u64, Ordering::Relaxed);
            if let Some((_, c)) = conn.take() {
                c.close(0u32.into(), b"send failed");
            }
        }
    }
}

/// The frames of one batch for `addr`: `first`, then whatever is already queued for the same address,
/// up to the batch limits (never waiting for more). A queued message for another address is left in
/// `carried`. Returns the frames and how many messages they hold (a message that cannot be encoded is
/// logged and left out).
fn take_batch(
    peer: &NodeId,
    addr: SocketAddr,
    first: PeerMessage,
    rx: &mut mpsc::Receiver<(SocketAddr, PeerMessage)>,
    carried: &mut Option<(SocketAddr, PeerMessage)>,
    batch: PeerBatch,
) -> (Vec<u8>, usize) {
    let mut frames = Vec::new();
    let mut count = 0;
    let mut next = Some(first);
    while let Some(msg) = next.take() {
        match encode_frame(&msg) {
            Ok(frame) => {
                frames.extend_from_slice(&frame);
                count += 1;
            }
            Err(error) => tracing::error!(%peer, %error, "could not encode a peer message"),
        }
        if count >= batch.messages || frames.len() >= batch.bytes {
            break;
        }
        match rx.try_recv() {
            Ok((a, msg)) if a == addr => next = Some(msg),
            Ok(other) => *carried = Some(other),
            Err(_) => {}
        }
    }
    (frames, count)
}

/// Why an inbound peer message was dropped.
#[derive(Debug, thiserror::Error)]
enum BadMessage {
    /// The frame could not be read (truncated, refused header, broken stream).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The payload is not a peer message.
    #[error(transparent)]
    Decode(#[from] featurestore::Error),
}

/// Reads the next message of a unidirectional peer stream; `Ok(None)` when the stream ended cleanly
/// between messages.
async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<PeerMessage>, BadMessage> {
    let payload = match read_frame(recv, FRAME_BYTES_CEILING).await {
        Ok(payload) => payload,
        Err(FrameError::Closed {
            part: FramePart::Header,
            read: 0,
            ..
        }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(decode_peer(&payload)?))
}

/// Receives messages from an authenticated peer connection until it closes, handing each to `deliver`
/// in a task of its own. A stream carries at most [`PEER_BATCH_MESSAGES_CEILING`] messages.
pub async fn read_peer_streams<F, Fut>(
    conn: quinn::Connection,
    from: NodeId,
    metrics: Arc<PeerMetrics>,
    deliver: F,
) where
    F: Fn(NodeId, PeerMessage) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let mut recv = match conn.accept_uni().await {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(peer = %from, %error, "peer connection ended");
                return;
            }
        };
        let from = from.clone();
        let metrics = metrics.clone();
        let deliver = deliver.clone();
        tokio::spawn(async move {
            let mut received = 0;
            loop {
                let read = tokio::time::timeout(INBOUND_MESSAGE_TIMEOUT, read_message(&mut recv));
                match read.await {
                    Ok(Ok(Some(msg))) if received < PEER_BATCH_MESSAGES_CEILING => {
                        received += 1;
                        metrics.received.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(deliver(from.clone(), msg));
                    }
                    Ok(Ok(Some(_))) => {
                        metrics.bad_frames.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %from, "peer stream over the message ceiling");
                        let _ = recv.stop(0u32.into());
                        return;
                    }
                    Ok(Ok(None)) => {
                        if received == 0 {
                            metrics.bad_frames.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(peer = %from, "empty peer stream");
                        }
                        return;
                    }
                    Ok(Err(error)) => {
                        metrics.bad_frames.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %from, %error, "bad peer frame");
                        let _ = recv.stop(0u32.into());
                        return;
                    }
                    Err(_) => {
                        metrics.bad_frames.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(peer = %from, "peer message timed out");
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: &str = "127.0.0.1:7001";
    const THERE: &str = "127.0.0.1:7002";

    fn ack(seq: u64) -> PeerMessage {
        PeerMessage::ReplicateAck {
            seq,
            key: format!("k{seq}"),
        }
    }

    /// The acks a batch's frames hold, in order.
    fn acks_in(mut frames: &[u8]) -> Vec<u64> {
        let mut seqs = Vec::new();
        while !frames.is_empty() {
            let (header, rest) = frames.split_at(featurestore::wire::codec::FRAME_HEADER_BYTES);
            let len = featurestore::wire::codec::parse_header(
                header.try_into().expect("a header"),
                FRAME_BYTES_CEILING,
            )
            .expect("a valid header");
            let (payload, rest) = rest.split_at(len);
            match decode_peer(payload).expect("a peer message") {
                PeerMessage::ReplicateAck { seq, .. } => seqs.push(seq),
                other => panic!("unexpected {other:?}"),
            }
            frames = rest;
        }
        seqs
    }

    fn batch_of(messages: usize, bytes: usize) -> PeerBatch {
        PeerBatch { messages, bytes }
    }

    /// What is queued for the same address joins the first message, up to the message limit; the rest
    /// stays queued for the next batch.
    #[test]
    fn a_batch_takes_what_is_queued_up_to_its_message_limit() {
        let (tx, mut rx) = mpsc::channel(16);
        let here: SocketAddr = HERE.parse().expect("addr");
        for seq in 2..=5 {
            tx.try_send((here, ack(seq))).expect("queued");
        }
        let mut carried = None;
        let peer = NodeId::new("n2").expect("id");
        let (frames, count) = take_batch(
            &peer,
            here,
            ack(1),
            &mut rx,
            &mut carried,
            batch_of(3, 1 << 20),
        );
        assert_eq!(count, 3);
        assert_eq!(acks_in(&frames), [1, 2, 3]);
        assert!(carried.is_none());
        let (frames, count) = take_batch(
            &peer,
            here,
            ack(9),
            &mut rx,
            &mut carried,
            batch_of(64, 1 << 20),
        );
        assert_eq!(
            (count, acks_in(&frames)),
            (3, vec![9, 4, 5]),
            "never waits for more"
        );
    }

    /// A batch closes at its byte limit (its first message goes whatever its size), and a message for
    /// another address ends the batch and starts the next one.
    #[test]
    fn a_batch_closes_at_its_byte_limit_and_at_another_address() {
        let (tx, mut rx) = mpsc::channel(16);
        let (here, there): (SocketAddr, SocketAddr) =
            (HERE.parse().expect("addr"), THERE.parse().expect("addr"));
        let peer = NodeId::new("n2").expect("id");
        tx.try_send((here, ack(2))).expect("queued");
        let mut carried = None;
        let (_, count) = take_batch(&peer, here, ack(1), &mut rx, &mut carried, batch_of(64, 1));
        assert_eq!(count, 1, "the first frame alone is over one byte");

        let (_, left) = rx.try_recv().expect("ack 2 stayed queued");
        tx.try_send((there, ack(3))).expect("queued");
        tx.try_send((here, ack(4))).expect("queued");
        let (frames, count) = take_batch(
            &peer,
            here,
            left,
            &mut rx,
            &mut carried,
            batch_of(64, 1 << 20),
        );
        assert_eq!((count, acks_in(&frames)), (1, vec![2]));
        let (addr, msg) = carried.take().expect("the other address's message is kept");
        assert_eq!(addr, there);
        assert!(matches!(msg, PeerMessage::ReplicateAck { seq: 3, .. }));
        let (frames, _) = take_batch(
            &peer,
            here,
            ack(5),
            &mut rx,
            &mut carried,
            batch_of(64, 1 << 20),
        );
        assert_eq!(acks_in(&frames), [5, 4]);
    }
}
