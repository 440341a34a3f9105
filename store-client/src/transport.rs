//! The client's QUIC plumbing: one connection per node, dialed in the background (a dial never
//! belongs to a request, so a request that stops waiting for it does not abandon it), the per-node
//! health (judged down, answers, the background probe of a node judged down), and one
//! request/response exchange per bidirectional stream, with a record of whether the request may have
//! reached the node.
//!
//! Every dial binds its own UDP socket (a quinn endpoint). A handshake that never finished then costs
//! nothing at [`NodeConn::close`]: its endpoint is dropped and never waited for, while for established
//! connections `Client::close` waits until their close has been sent, so that it reaches the nodes.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use featurestore::wire::codec;
use featurestore::wire::encoded_view::{decode_get_answer, GetAnswer};
use featurestore::{NodeId, Request, Response};
use quinn::{Connection, Endpoint, ReadToEndError, RecvStream, SendStream, WriteError};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::config::NODE_NAME_SUFFIX;
use crate::error::{ConnectAttempt, Error, Result};
use crate::frame::{read_frame, FrameError};
use crate::routing::{silent, Traffic};

/// Locks a std mutex, ignoring poisoning (every critical section here leaves the data consistent).
pub(crate) fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Microseconds since the first call (a process-wide monotonic origin, so instants fit an atomic).
fn micros_now() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// What every connection of one client shares: the QUIC configuration, the timeouts, and whether the
/// client was closed.
pub(crate) struct Dialer {
    quic: quinn::ClientConfig,
    connect_timeout: Duration,
    failure_timeout: Duration,
    probe_interval: Duration,
    max_frame_bytes: u32,
    /// Set by `Client::close`: no more dials, probes or requests.
    pub(crate) closed: AtomicBool,
    /// The probe request (`Cluster`), encoded once.
    probe_frame: Vec<u8>,
}

impl Dialer {
    pub(crate) fn new(
        quic: quinn::ClientConfig,
        connect_timeout: Duration,
        failure_timeout: Duration,
        probe_interval: Duration,
        max_frame_bytes: u32,
    ) -> Result<Self> {
        Ok(Dialer {
            quic,
            connect_timeout,
            failure_timeout,
            probe_interval,
            max_frame_bytes,
            closed: AtomicBool::new(false),
            probe_frame: codec::encode_request(&Request::Cluster)?,
        })
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// The TLS server name of node `id`: `<id>.node.featurestore`.
pub(crate) fn server_name(id: &NodeId) -> String {
    format!("{id}.{NODE_NAME_SUFFIX}")
}

/// The packet counters of `conn` (see [`silent`]).
pub(crate) fn traffic(conn: &Connection) -> Traffic {
    let stats = conn.stats();
    Traffic {
        conn: conn.stable_id(),
        rx: stats.udp_rx.datagrams,
        tx: stats.udp_tx.datagrams,
    }
}

/// A fresh client endpoint (UDP socket) for `addr`'s address family.
fn bind(quic: &quinn::ClientConfig, addr: SocketAddr) -> Result<Endpoint, String> {
    let local = if addr.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let mut endpoint =
        Endpoint::client(local).map_err(|e| format!("cannot bind a UDP socket to {local}: {e}"))?;
    endpoint.set_default_client_config(quic.clone());
    Ok(endpoint)
}

/// Where a dial stands, as published to the requests waiting for it.
#[derive(Clone)]
enum Dial {
    Pending,
    Done(Result<Connection, String>),
}

/// The connection slot of one node.
#[derive(Default)]
struct Slot {
    /// The connection and the endpoint it was dialed from.
    conn: Option<(Connection, Endpoint)>,
    /// The dial in progress (or the last one), and how to abort it.
    dial: Option<(watch::Receiver<Dial>, AbortHandle)>,
}

/// Why and since when a node is judged down.
#[derive(Default)]
struct Verdict {
    since: Option<Instant>,
    reason: Option<String>,
    /// Whether the background probe task runs.
    probing: bool,
}

/// A connection being closed (see [`NodeConn::close`]).
pub(crate) struct Closing {
    conn: Connection,
    /// Kept until the close is sent.
    _endpoint: Endpoint,
    sent_before: u64,
}

impl Closing {
    /// Whether a datagram went out after the close: once closed, a connection sends nothing but its
    /// CONNECTION_CLOSE.
    pub(crate) fn sent(&self) -> bool {
        self.conn.stats().udp_tx.datagrams > self.sent_before
    }
}

/// What the client believes about one node at one instant (see
/// [`Client::node_health`](crate::Client::node_health)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// The node.
    pub node: NodeId,
    /// The address the client dials.
    pub addr: SocketAddr,
    /// Whether a connection is established (it may still belong to a node that died a moment ago).
    pub connected: bool,
    /// Whether the node is judged down: tried only after every other candidate, and probed in the
    /// background until it answers.
    pub down: bool,
    /// Why it was judged down, if it is.
    pub reason: Option<String>,
    /// How long it has been judged down, if it is.
    pub down_for: Option<Duration>,
    /// Answers received from it (replies to requests, including error replies, probe answers and
    /// successful handshakes).
    pub answers: u64,
    /// Times it was judged failed (failed handshakes, broken connections, silence).
    pub failures: u64,
    /// Time since its last answer, if it ever answered.
    pub last_answer: Option<Duration>,
}

/// The connection to one node, dialed when first needed and again after it closed, and the node's
/// health as this client sees it.
pub(crate) struct NodeConn {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    dialer: Arc<Dialer>,
    slot: StdMutex<Slot>,
    down: AtomicBool,
    verdict: StdMutex<Verdict>,
    /// [`micros_now`] of the last answer; 0: never.
    last_answer: AtomicU64,
    answers: AtomicU64,
    failures: AtomicU64,
    /// Set when the client no longer uses this slot (replaced, or the client was dropped).
    retired: AtomicBool,
}

impl NodeConn {
    pub(crate) fn new(id: NodeId, addr: SocketAddr, dialer: Arc<Dialer>) -> Self {
        NodeConn {
            id,
            addr,
            dialer,
            slot: StdMutex::new(Slot::default()),
            down: AtomicBool::new(false),
            verdict: StdMutex::new(Verdict::default()),
            last_answer: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// The connection, if it is open.
    pub(crate) fn open(&self) -> Option<Connection> {
        lock(&self.slot)
            .conn
            .as_ref()
            .map(|(c, _)| c)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The packet counters of the open connection, if there is one.
    pub(crate) fn traffic(&self) -> Option<Traffic> {
        self.open().map(|c| traffic(&c))
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

    /// The open connection, or the outcome of a dial: the one in progress if there is one, else a new
    /// one started in the background. Concurrent callers share one dial, and a caller that stops
    /// waiting (its deadline passed, a hedge answered first) does not abandon it: the connection is
    /// kept for the next request. Fails with [`Error::Connect`] if the dial fails, with
    /// [`Error::Closed`] after [`Client::close`](crate::Client::close).
    pub(crate) async fn connection(self: &Arc<Self>) -> Result<Connection> {
        if self.dialer.is_closed() {
            return Err(Error::Closed);
        }
        if let Some(conn) = self.open() {
            return Ok(conn);
        }
        let mut rx = self.dial();
        loop {
            match &*rx.borrow_and_update() {
                Dial::Done(Ok(conn)) => return Ok(conn.clone()),
                Dial::Done(Err(error)) => return Err(self.attempt(error.clone())),
                Dial::Pending => {}
            }
            if rx.changed().await.is_err() {
                // The dial was aborted: the client was closed (or dropped).
                return Err(Error::Closed);
            }
        }
    }

    /// The receiver of the dial in progress, starting one if there is none.
    fn dial(self: &Arc<Self>) -> watch::Receiver<Dial> {
        let mut slot = lock(&self.slot);
        if let Some((rx, _)) = &slot.dial {
            if matches!(*rx.borrow(), Dial::Pending) {
                return rx.clone();
            }
        }
        let (tx, rx) = watch::channel(Dial::Pending);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let outcome = me.dial_once().await;
            tx.send_replace(Dial::Done(outcome));
        });
        slot.dial = Some((rx.clone(), task.abort_handle()));
        rx
    }

    /// One handshake, bounded by the connect timeout. A success is stored (and counts as an answer); a
    /// failure judges the node down.
    async fn dial_once(self: &Arc<Self>) -> Result<Connection, String> {
        let timeout = self.dialer.connect_timeout;
        let outcome = async {
            let endpoint = bind(&self.dialer.quic, self.addr)?;
            let connecting = endpoint
                .connect(self.addr, &server_name(&self.id))
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(conn)) => Ok((conn, endpoint)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "handshake timed out after {} ms",
                    timeout.as_millis()
                )),
            }
        }
        .await;
        match outcome {
            Ok((conn, endpoint)) => {
                if self.dialer.is_closed() || self.retired.load(Ordering::SeqCst) {
                    conn.close(0u32.into(), b"bye");
                    return Err("the client was closed".into());
                }
                info!(node = %self.id, addr = %self.addr, "connected");
                lock(&self.slot).conn = Some((conn.clone(), endpoint));
                // close() sets `closed` before it takes the stored connections: either it saw this
                // connection, or this sees `closed`.
                if self.dialer.is_closed() {
                    self.drop_conn(&conn);
                    return Err("the client was closed".into());
                }
                self.answered();
                Ok(conn)
            }
            Err(error) => {
                warn!(node = %self.id, addr = %self.addr, %error, "connection attempt failed");
                self.failed(&format!("connecting failed: {error}"));
                Err(error)
            }
        }
    }

    /// Records an answer from the node: it is no longer judged down.
    pub(crate) fn answered(&self) {
        self.answers.fetch_add(1, Ordering::Relaxed);
        self.last_answer.store(micros_now(), Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::SeqCst) {
            let mut verdict = lock(&self.verdict);
            let down_for = verdict.since.map(|t| t.elapsed());
            verdict.since = None;
            verdict.reason = None;
            info!(node = %self.id, ?down_for, "node answers again; routing to it");
        }
    }

    /// Time since the node's last answer; `None` if it never answered.
    pub(crate) fn since_answer(&self) -> Option<Duration> {
        match self.last_answer.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_micros(micros_now().saturating_sub(at))),
        }
    }

    /// Whether the node is judged down.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Judges the node down (`why` is logged and reported by [`NodeConn::health`]) and starts its
    /// background probe if it is not running. Returns whether it was up before.
    pub(crate) fn failed(self: &Arc<Self>, why: &str) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut verdict = lock(&self.verdict);
        let was_up = !self.down.swap(true, Ordering::SeqCst);
        if was_up {
            verdict.since = Some(Instant::now());
            verdict.reason = Some(why.to_owned());
            warn!(node = %self.id, reason = why, "node judged down; routing around it and probing it in the background");
        }
        let stopped = self.dialer.is_closed() || self.retired.load(Ordering::SeqCst);
        if !verdict.probing && !stopped {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                verdict.probing = true;
                runtime.spawn(self.clone().probe());
            }
        }
        was_up
    }

    /// While the node is judged down: every probe interval, ask it for the cluster view (on the open
    /// connection, or on a new one). An answer ends it (the node is up again). A connection on which
    /// the node stays [`silent`] is closed, so the next probe dials afresh and requests still waiting
    /// on the dead connection fail at once instead of at their deadline.
    async fn probe(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.dialer.probe_interval).await;
            {
                let mut verdict = lock(&self.verdict);
                let stopped = self.dialer.is_closed() || self.retired.load(Ordering::SeqCst);
                if stopped || !self.is_down() {
                    verdict.probing = false;
                    return;
                }
            }
            self.probe_once().await;
        }
    }

    async fn probe_once(self: &Arc<Self>) {
        let conn = match self.open() {
            Some(conn) => conn,
            // A successful dial counts as an answer; a failed one is already recorded.
            None => match self.connection().await {
                Ok(conn) => conn,
                Err(_) => return,
            },
        };
        if !self.is_down() {
            return;
        }
        let before = traffic(&conn);
        let asked = Instant::now();
        let answer = tokio::time::timeout(
            self.dialer.failure_timeout,
            exchange(&conn, &self.dialer.probe_frame, self.dialer.max_frame_bytes),
        )
        .await;
        // A probe whose timeout fired late (this process was starved) judges nothing.
        let on_time = asked.elapsed() <= self.dialer.failure_timeout * 5 / 4;
        match answer {
            Ok(Ok(_)) => self.answered(),
            Ok(Err(failure)) => {
                debug!(node = %self.id, error = %failure.error, "probe failed");
                if failure.conn_lost {
                    self.drop_conn(&conn);
                }
            }
            Err(_) => {
                if on_time && silent(before, traffic(&conn)) {
                    debug!(node = %self.id, "probe: not one packet back; closing the connection");
                    self.drop_conn(&conn);
                }
            }
        }
    }

    /// Closes `conn` if it is still this node's connection (requests waiting on it fail at once).
    fn drop_conn(&self, conn: &Connection) {
        self.abandon(conn.stable_id());
    }

    /// Closes the connection whose `stable_id` is `conn` if it is still this node's connection: the
    /// node is judged dead on it, so requests waiting on it fail at once.
    pub(crate) fn abandon(&self, conn: usize) {
        let mut slot = lock(&self.slot);
        if slot
            .conn
            .as_ref()
            .is_some_and(|(c, _)| c.stable_id() == conn)
        {
            if let Some((conn, _endpoint)) = slot.conn.take() {
                conn.close(0u32.into(), b"node judged down");
            }
        }
    }

    /// Closes the connection gracefully (application code 0, reason `bye`) and aborts a dial in
    /// progress. Returns what is worth waiting for until the close has been sent: an established
    /// connection to a node that is not judged down (a dead node would never read it), with its
    /// endpoint and the number of datagrams it had sent before the close.
    pub(crate) fn close(&self) -> Option<Closing> {
        let mut slot = lock(&self.slot);
        if let Some((_, dial)) = slot.dial.take() {
            dial.abort();
        }
        let (conn, endpoint) = slot.conn.take()?;
        let sent_before = conn.stats().udp_tx.datagrams;
        conn.close(0u32.into(), b"bye");
        debug!(node = %self.id, "connection closed");
        (!self.is_down()).then_some(Closing {
            conn,
            _endpoint: endpoint,
            sent_before,
        })
    }

    /// Stops using this slot: closes its connection, aborts its dial, ends its probe.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.close();
    }

    /// What the client believes about this node now.
    pub(crate) fn health(&self) -> NodeHealth {
        let verdict = lock(&self.verdict);
        let down = self.is_down();
        NodeHealth {
            node: self.id.clone(),
            addr: self.addr,
            connected: self.open().is_some(),
            down,
            reason: if down { verdict.reason.clone() } else { None },
            down_for: if down {
                verdict.since.map(|t| t.elapsed())
            } else {
                None
            },
            answers: self.answers.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_answer: self.since_answer(),
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

/// Opens a stream on `conn` and runs `io` on it, recording whether the stream was opened (after which
/// the request may have been delivered). Not bounded in time: the caller's deadline is.
async fn on_stream<T, F, Fut>(conn: &Connection, io: F) -> Result<T, Failure>
where
    F: FnOnce(SendStream, RecvStream) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut opened = false;
    let outcome = async {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Error::Transport(format!("opening a stream: {e}")))?;
        opened = true;
        io(send, recv).await
    }
    .await;
    outcome.map_err(|error| Failure {
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
    max_frame_bytes: u32,
) -> Result<Response, Failure> {
    exchange_decoded(conn, frame, max_frame_bytes, |payload| {
        codec::decode_response(&payload)
    })
    .await
}

/// Like [`exchange`], for a `Get`: the answer's view is kept encoded ([`decode_get_answer`]).
pub(crate) async fn exchange_get(
    conn: &Connection,
    frame: &[u8],
    max_frame_bytes: u32,
) -> Result<GetAnswer, Failure> {
    exchange_decoded(conn, frame, max_frame_bytes, decode_get_answer).await
}

/// The exchange of [`exchange`], its response payload decoded by `decode`.
async fn exchange_decoded<T>(
    conn: &Connection,
    frame: &[u8],
    max_frame_bytes: u32,
    decode: impl FnOnce(Vec<u8>) -> featurestore::Result<T>,
) -> Result<T, Failure> {
    on_stream(conn, |mut send, mut recv| async move {
        send_request(&mut send, frame).await?;
        let payload = read_frame(&mut recv, max_frame_bytes)
            .await
            .map_err(response_error)?;
        Ok(decode(payload)?)
    })
    .await
}

/// Writes `bytes` on a fresh stream and returns everything the node sends back (at most `limit` bytes).
pub(crate) async fn exchange_raw(
    conn: &Connection,
    bytes: &[u8],
    limit: usize,
) -> Result<Vec<u8>, Failure> {
    on_stream(conn, |mut send, mut recv| async move {
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
