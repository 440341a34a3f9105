//! The client's QUIC plumbing: lazily bound endpoints, one lazily dialed connection per node, and one
//! request/response exchange per bidirectional stream, with a record of whether the request may have
//! reached the node.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use featurestore::wire::codec;
use featurestore::{NodeId, Response};
use quinn::{Connection, Endpoint, ReadToEndError, RecvStream, SendStream, WriteError};
use tracing::{debug, info, warn};

use crate::config::NODE_NAME_SUFFIX;
use crate::error::{ConnectAttempt, Error, Result};
use crate::frame::{read_frame, FrameError};

/// Locks a std mutex, ignoring poisoning (every critical section here leaves the data consistent).
pub(crate) fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One client endpoint (UDP socket) per address family, bound when first needed.
pub(crate) struct Endpoints {
    quic: quinn::ClientConfig,
    v4: StdMutex<Option<Endpoint>>,
    v6: StdMutex<Option<Endpoint>>,
}

impl Endpoints {
    pub(crate) fn new(quic: quinn::ClientConfig) -> Self {
        Endpoints {
            quic,
            v4: StdMutex::new(None),
            v6: StdMutex::new(None),
        }
    }

    /// The endpoint for `addr`'s family, binding it on first use.
    fn for_addr(&self, addr: SocketAddr) -> Result<Endpoint, String> {
        let (slot, local) = if addr.is_ipv4() {
            (&self.v4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        } else {
            (&self.v6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
        };
        let mut slot = lock(slot);
        if let Some(endpoint) = &*slot {
            return Ok(endpoint.clone());
        }
        let mut endpoint = Endpoint::client(local)
            .map_err(|e| format!("cannot bind a UDP socket to {local}: {e}"))?;
        endpoint.set_default_client_config(self.quic.clone());
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The endpoints bound so far.
    pub(crate) fn bound(&self) -> Vec<Endpoint> {
        [&self.v4, &self.v6]
            .into_iter()
            .filter_map(|slot| lock(slot).clone())
            .collect()
    }
}

/// The TLS server name of node `id`: `<id>.node.featurestore`.
pub(crate) fn server_name(id: &NodeId) -> String {
    format!("{id}.{NODE_NAME_SUFFIX}")
}

/// Dials `id` at `addr`; the handshake is bounded by `timeout`.
async fn dial(
    endpoints: &Endpoints,
    id: &NodeId,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Connection, String> {
    let endpoint = endpoints.for_addr(addr)?;
    let connecting = endpoint
        .connect(addr, &server_name(id))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "handshake timed out after {} ms",
            timeout.as_millis()
        )),
    }
}

/// The connection to one node, dialed when first needed and again after it closed.
pub(crate) struct NodeConn {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    conn: StdMutex<Option<Connection>>,
    /// Held while dialing; holds the last failed dial, handed to callers that waited for it.
    dialing: tokio::sync::Mutex<Option<(Instant, String)>>,
}

impl NodeConn {
    pub(crate) fn new(id: NodeId, addr: SocketAddr) -> Self {
        NodeConn {
            id,
            addr,
            conn: StdMutex::new(None),
            dialing: tokio::sync::Mutex::new(None),
        }
    }

    /// The connection, if it is open.
    pub(crate) fn open(&self) -> Option<Connection> {
        lock(&self.conn)
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    fn attempt(&self, error: String) -> Error {
        Error::Connect {
            attempts: vec![ConnectAttempt {
                node: self.id.to_string(),
                addr: self.addr,
                error,
            }],
        }
    }

    /// The open connection, dialing first if there is none. Concurrent callers share one dial; callers
    /// that waited for a dial that failed get its error ([`Error::Connect`]) instead of dialing again.
    /// After [`NodeConn::close`] (with `closed` set), fails with [`Error::Closed`].
    pub(crate) async fn connection(
        &self,
        endpoints: &Endpoints,
        timeout: Duration,
        closed: &AtomicBool,
    ) -> Result<Connection> {
        if closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        let waiting_since = Instant::now();
        let mut last_failure = self.dialing.lock().await;
        if closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        if let Some((at, error)) = &*last_failure {
            if *at >= waiting_since {
                return Err(self.attempt(error.clone()));
            }
        }
        match dial(endpoints, &self.id, self.addr, timeout).await {
            Ok(conn) => {
                info!(node = %self.id, addr = %self.addr, "connected");
                *lock(&self.conn) = Some(conn.clone());
                *last_failure = None;
                // close() sets `closed` before it closes the stored connections: either it saw this
                // connection, or this sees `closed`.
                if closed.load(Ordering::SeqCst) {
                    conn.close(0u32.into(), b"bye");
                    return Err(Error::Closed);
                }
                Ok(conn)
            }
            Err(error) => {
                warn!(node = %self.id, addr = %self.addr, %error, "connection attempt failed");
                *last_failure = Some((Instant::now(), error.clone()));
                Err(self.attempt(error))
            }
        }
    }

    /// Closes the connection gracefully (application code 0, reason `bye`), if there is one.
    pub(crate) fn close(&self) {
        if let Some(conn) = lock(&self.conn).take() {
            conn.close(0u32.into(), b"bye");
            debug!(node = %self.id, "connection closed");
        }
    }
}

/// A failed attempt on one node.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    /// Whether the request may have reached the node: false only if connecting or opening the stream
    /// failed, so not one byte of it was handed to QUIC.
    pub(crate) sent: bool,
    /// Whether the connection was closed when the attempt failed (lost mid-request: the node closed
    /// it, restarted, or the network dropped it).
    pub(crate) conn_lost: bool,
}

impl Failure {
    /// A failure before anything was sent (no connection, unknown address, client closed).
    pub(crate) fn unsent(error: Error) -> Self {
        Failure {
            error,
            sent: false,
            conn_lost: false,
        }
    }

    /// Whether the node may be down or unreachable (as opposed to answering with something wrong).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(
            self.error,
            Error::Connect { .. } | Error::Transport(_) | Error::Timeout { .. }
        )
    }
}

/// Opens a stream on `conn` and runs `io` on it, the whole bounded by `timeout`, recording whether the
/// stream was opened (after which the request may have been delivered).
async fn on_stream<T, F, Fut>(conn: &Connection, timeout: Duration, io: F) -> Result<T, Failure>
where
    F: FnOnce(SendStream, RecvStream) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut opened = false;
    let outcome = tokio::time::timeout(timeout, async {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Transport(format!("opening a stream: {e}")))?;
        opened = true;
        io(send, recv).await
    })
    .await;
    let error = match outcome {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(error)) => error,
        Err(_) => Error::Timeout { after: timeout },
    };
    Err(Failure {
        error,
        sent: opened,
        conn_lost: conn.close_reason().is_some(),
    })
}

/// One request/response exchange on a fresh stream of `conn`: the response header is checked against
/// `max_frame_bytes` before the payload is allocated.
pub(crate) async fn exchange(
    conn: &Connection,
    frame: &[u8],
    timeout: Duration,
    max_frame_bytes: u32,
) -> Result<Response, Failure> {
    on_stream(conn, timeout, |mut send, mut recv| async move {
        send_request(&mut send, frame).await?;
        let payload = read_frame(&mut recv, max_frame_bytes)
            .await
            .map_err(response_error)?;
        Ok(codec::decode_response(&payload)?)
    })
    .await
}

/// Writes `bytes` on a fresh stream and returns everything the node sends back (at most `limit` bytes).
pub(crate) async fn exchange_raw(
    conn: &Connection,
    bytes: &[u8],
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, Failure> {
    on_stream(conn, timeout, |mut send, mut recv| async move {
        send_request(&mut send, bytes).await?;
        recv.read_to_end(limit).await.map_err(|e| match e {
            ReadToEndError::TooLong => {
                Error::Transport(format!("the reply is longer than {limit} bytes"))
            }
            ReadToEndError::Read(e) => Error::Transport(format!("reading the reply: {e}")),
        })
    })
    .await
}

/// Writes a whole request and finishes the stream. If the node stops reading early (it may refuse an
/// oversize or malformed frame after its header), its answer is still read.
async fn send_request(send: &mut SendStream, bytes: &[u8]) -> Result<()> {
    match send.write_all(bytes).await {
        Ok(()) => {
            if let Err(e) = send.finish() {
                debug!(error = %e, "could not finish the request stream");
            }
            Ok(())
        }
        Err(WriteError::Stopped(code)) => {
            debug!(%code, "node stopped reading the request; reading its answer");
            Ok(())
        }
        Err(e) => Err(Error::Transport(format!("sending the request: {e}"))),
    }
}

/// The client error for a response frame that could not be read: a truncated or refused frame is a
/// [`Error::Protocol`] error, a failed read a [`Error::Transport`] error.
fn response_error(e: FrameError) -> Error {
    match e {
        FrameError::Closed {
            part,
            read,
            expected,
        } => Error::Protocol(featurestore::Error::Malformed {
            what: "response",
            reason: format!(
                "the stream ended after {read} of {expected} bytes of the response {part}"
            ),
        }),
        FrameError::Read { part, source } => {
            Error::Transport(format!("reading the response {part}: {source}"))
        }
        FrameError::Header(e) => Error::Protocol(e),
    }
}
