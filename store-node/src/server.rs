//! The client-facing QUIC server: connections, streams, frames.
//!
//! Guarantees:
//! - Only clients with a certificate from the cluster CA get a connection (mutual TLS, see [`crate::net::tls`]);
//!   a failed handshake is logged once with the remote address and counted.
//! - One request per bidirectional stream. The 5-byte header is read and checked (version, size) *before*
//!   any buffer for the payload is allocated; the payload buffer is exactly the announced size, which is
//!   at most `max_frame_bytes`. The whole request must arrive within `request_timeout_ms`.
//! - Every bad frame (oversized, unknown version, undecodable, trailing data) gets a typed error reply on its
//!   own stream, is logged once with the peer and counted; the connection and every other stream carry on.
//! - A response larger than `max_frame_bytes` is replaced by a `LimitExceeded` error reply.
//! - Admin requests (`Request::is_admin`: leave, per-replica reads, digests) are answered only on a
//!   connection whose client certificate carries the admin role ([`crate::certs::ADMIN_ROLE_URI`]); any
//!   other client gets a `Forbidden` error reply, logged and counted (`requests_forbidden`), and the
//!   request is not executed.
//! - Shutdown: stop accepting connections and streams, let in-flight requests finish (bounded by
//!   `drain_timeout_ms`), then return so the caller can flush and close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use featurestore::wire::client::ErrorReply;
use featurestore::wire::codec::{decode_request, encode_response, FRAME_HEADER_BYTES};
use featurestore::{ErrorCode, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Answer, Cluster};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::net::tls::{peer_identity, peer_is_admin, PeerIdentity};
use store_client::frame::{read_frame, FrameError, FramePart};
use store_client::tls::{CLIENT_ALPN, PEER_ALPN};

/// How long a stream waits, after its response is sent, for the client to acknowledge all of it, so
/// that a shutdown right after the drain does not cut a response off.
const RESPONSE_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-request settings of the server.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    /// Largest request or response payload.
    pub max_frame_bytes: u32,
    /// Time allowed for a whole request to arrive.
    pub request_timeout: Duration,
    /// Time in-flight requests get to finish at shutdown.
    pub drain_timeout: Duration,
}

/// Serves clients on `endpoint` until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
    settings: ServeSettings,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    let conn = Connection {
                        engine: engine.clone(),
                        cluster: cluster.clone(),
                        settings,
                        shutdown: shutdown.clone(),
                        tracker: tracker.clone(),
                    };
                    tracker.spawn(conn.run(incoming));
                }
                None => break,
            },
        }
    }
    // Refuse new connections; existing ones stop accepting streams (they watch `shutdown`).
    endpoint.set_server_config(None);
    tracker.close();
    if tokio::time::timeout(settings.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = tracker.len(),
            "drain timeout: abandoning in-flight requests"
        );
    }
}

struct Connection {
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
    settings: ServeSettings,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Connection {
    async fn run(self, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let metrics = self.engine.metrics().clone();
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(peer = %remote, %error, "TLS handshake failed");
                Metrics::incr(&metrics.tls_handshake_failures);
                return;
            }
        };
        let alpn = conn
            .handshake_data()
            .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol);
        let client = match (alpn.as_deref(), peer_identity(&conn)) {
            (Some(CLIENT_ALPN), Some(PeerIdentity::Client(name))) => name,
            (Some(PEER_ALPN), Some(PeerIdentity::Node(name))) => {
                self.serve_peer(conn, name).await;
                return;
            }
            (_, other) => {
                tracing::warn!(peer = %remote, identity = ?other, "certificate does not match the protocol; closing");
                Metrics::incr(&metrics.wrong_identity);
                conn.close(1u32.into(), b"certificate does not match the protocol");
                return;
            }
        };
        Metrics::incr(&metrics.connections_accepted);
        let admin = peer_is_admin(&conn);
        tracing::debug!(peer = %remote, %client, admin, "client connected");
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                stream = conn.accept_bi() => match stream {
                    Ok((send, recv)) => {
                        let peer = Peer { addr: remote, client: client.clone(), admin };
                        self.tracker.spawn(handle_stream(self.engine.clone(), self.cluster.clone(), self.settings, peer, send, recv));
                    }
                    Err(error) => {
                        tracing::debug!(peer = %remote, %client, %error, "connection ended");
                        break;
                    }
                },
            }
        }
    }
}

impl Connection {
    /// Receives replication traffic from another node until the connection ends or the node shuts down.
    async fn serve_peer(&self, conn: quinn::Connection, name: String) {
        let Ok(from) = featurestore::NodeId::new(name) else {
            conn.close(1u32.into(), b"bad node id");
            return;
        };
        tracing::debug!(peer = %from, "peer connected");
        let cluster = self.cluster.clone();
        let metrics = cluster.peers().metrics().clone();
        let deliver = move |from, msg| {
            let cluster = cluster.clone();
            async move { cluster.on_peer_message(from, msg).await }
        };
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = crate::net::peer::read_peer_streams(conn, from, metrics, deliver) => {}
        }
    }
}

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddr,
    client: String,
    /// Whether its certificate carries the admin role.
    admin: bool,
}

/// Why a request could not be read.
enum ReadFailure {
    /// The frame is bad: answer with this error.
    Frame(featurestore::Error),
    /// The stream broke (reset, connection lost): nobody to answer.
    Stream(quinn::ReadError),
}

impl From<FrameError> for ReadFailure {
    /// A truncated frame is malformed, a refused header keeps its own error (oversized, bad version), a
    /// failed read leaves nobody to answer.
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed {
                part: FramePart::Header,
                read,
                ..
            } => ReadFailure::Frame(featurestore::Error::Malformed {
                what: "frame",
                reason: format!("stream ended after {read} header bytes"),
            }),
            FrameError::Closed {
                part: FramePart::Payload,
                read,
                expected,
            } => ReadFailure::Frame(featurestore::Error::Malformed {
                what: "frame",
                reason: format!("payload ended after {read} of {expected} bytes"),
            }),
            FrameError::Header(e) => ReadFailure::Frame(e),
            FrameError::Read { source, .. } => ReadFailure::Stream(source),
        }
    }
}

async fn read_request(
    recv: &mut quinn::RecvStream,
    max_frame_bytes: u32,
) -> Result<featurestore::Request, ReadFailure> {
    let payload = read_frame(recv, max_frame_bytes).await?;
    // Exactly one frame per stream: anything after it is a protocol error.
    let mut probe = [0u8; 1];
    match recv.read(&mut probe).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(ReadFailure::Frame(featurestore::Error::Malformed {
                what: "frame",
                reason: "data after the frame".into(),
            }))
        }
        Err(e) => return Err(ReadFailure::Stream(e)),
    }
    decode_request(&payload).map_err(ReadFailure::Frame)
}

fn error_response(code: ErrorCode, message: String) -> Response {
    Response::Error(ErrorReply { code, message })
}

async fn handle_stream(
    engine: Arc<Engine>,
    cluster: Arc<Cluster>,
    settings: ServeSettings,
    peer: Peer,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let metrics = engine.metrics().clone();
    let read = tokio::time::timeout(
        settings.request_timeout,
        read_request(&mut recv, settings.max_frame_bytes),
    )
    .await;
    let started = std::time::Instant::now();
    let mut kind = None;
    let response = match read {
        Err(_elapsed) => {
            Metrics::incr(&metrics.request_timeouts);
            tracing::warn!(peer = %peer.addr, client = %peer.client, "request timed out");
            let _ = recv.stop(0u32.into());
            error_response(
                ErrorCode::InvalidRequest,
                "request not received in time".into(),
            )
        }
        Ok(Err(ReadFailure::Stream(error))) => {
            tracing::debug!(peer = %peer.addr, client = %peer.client, %error, "stream failed");
            return;
        }
        Ok(Err(ReadFailure::Frame(error))) => {
            let code = ErrorCode::from(&error);
            metrics.count_error(code);
            tracing::warn!(peer = %peer.addr, client = %peer.client, %error, "bad frame");
            // Tell the peer to stop sending the rest of an oversized or broken frame.
            let _ = recv.stop(0u32.into());
            error_response(code, error.to_string())
        }
        Ok(Ok(request)) if request.is_admin() && !peer.admin => {
            kind = Some(request.kind());
            Metrics::incr(&metrics.requests);
            metrics.count_error(ErrorCode::Forbidden);
            tracing::warn!(
                peer = %peer.addr, client = %peer.client,
                "admin request refused: the client certificate has no admin role"
            );
            error_response(
                ErrorCode::Forbidden,
                format!(
                    "admin request refused: client {:?} has no admin role (issue an admin certificate \
                     with `store-node certs --admins NAME`)",
                    peer.client
                ),
            )
        }
        Ok(Ok(request)) => {
            kind = Some(request.kind());
            match cluster.handle(request).await {
                Answer::Response(response) => {
                    if let Response::Error(reply) = &response {
                        tracing::info!(
                            peer = %peer.addr, client = %peer.client, code = ?reply.code,
                            message = %reply.message, "request refused"
                        );
                    }
                    response
                }
                Answer::Frame(frame) => {
                    respond(&metrics, &settings, &peer, kind, started, Ok(frame), send).await;
                    return;
                }
            }
        }
    };
    respond(
        &metrics,
        &settings,
        &peer,
        kind,
        started,
        encode_response(&response),
        send,
    )
    .await;
}

/// Sends a response frame (or, if it is too large or could not be encoded, an error reply), records the
/// request's latency, and waits briefly for the client to acknowledge it.
async fn respond(
    metrics: &Metrics,
    settings: &ServeSettings,
    peer: &Peer,
    kind: Option<&'static str>,
    started: std::time::Instant,
    encoded: featurestore::Result<Vec<u8>>,
    mut send: quinn::SendStream,
) {
    let frame = match encoded {
        Ok(frame) if frame.len() - FRAME_HEADER_BYTES <= settings.max_frame_bytes as usize => frame,
        Ok(frame) => {
            Metrics::incr(&metrics.responses_too_large);
            let message = format!(
                "response of {} bytes exceeds max_frame_bytes {}: ask for fewer keys or features",
                frame.len() - FRAME_HEADER_BYTES,
                settings.max_frame_bytes
            );
            match encode_response(&error_response(ErrorCode::LimitExceeded, message)) {
                Ok(f) => f,
                Err(_) => return,
            }
        }
        Err(error) => {
            tracing::error!(%error, "could not encode a response");
            match encode_response(&error_response(ErrorCode::Internal, error.to_string())) {
                Ok(f) => f,
                Err(_) => return,
            }
        }
    };
    if let Some(kind) = kind {
        metrics
            .histograms
            .observe_request(kind, started.elapsed().as_secs_f64());
    }
    if let Err(error) = send.write_all(&frame).await {
        tracing::debug!(peer = %peer.addr, %error, "could not send the response");
        return;
    }
    let _ = send.finish();
    // Wait (briefly) until the peer acknowledged the whole response.
    let _ = tokio::time::timeout(RESPONSE_ACK_TIMEOUT, send.stopped()).await;
}
