//! The async, ring-aware [`Client`].
//!
//! # Cluster view
//!
//! [`Client::connect`] dials the configured nodes (the *seeds*) in parallel, happy-eyeballs style: the
//! first at once, each next one [`SEED_STAGGER`] later or as soon as every
//! earlier one failed; the first handshake that succeeds wins and the others carry on in the background
//! (their connections are kept). It then asks that node for the cluster ([`Request::Cluster`]: the
//! membership table, virtual nodes per member and the replication factor N) and, at the same time, for
//! its status (the liveness its failure detector gives every member), and builds the *current* ring
//! exactly as the nodes do (`Active` and `Leaving` members,
//! [`MembershipTable::current_ring`](featurestore::cluster::membership::MembershipTable::current_ring)).
//! If the seed cannot describe the cluster (an older node, or an error), the client routes over a ring
//! made of the seeds (N=3) until a later refresh succeeds.
//!
//! The view is refreshed in the background (one refresh at a time, from a node the client is connected to,
//! else from any reachable node) by the first request made after it is `ring_refresh_ms` old, and after
//! any node failure (at most every 100 ms). Answers are merged into the cached membership table as the
//! nodes merge theirs (per member, the higher version wins), so the view never goes back to an older
//! ring, whichever node answers. [`Client::cluster`] returns the cached view; [`Client::refresh_cluster`]
//! fetches it now.
//!
//! # Connections
//!
//! One QUIC connection (mutual TLS against the cluster CA, server name `<id>.node.featurestore`) per node,
//! shared by every clone of the client. Each request has its own bidirectional stream, so requests from
//! many tasks run concurrently and cannot interleave. Addresses come from the membership table (members
//! in state `Left` are skipped; a member publishing an undialable address such as `0.0.0.0:7401` gets its
//! seed's configured address).
//!
//! Dials run in the background, one at a time per node, bounded by `connect_timeout_ms` (500 ms by
//! default: a LAN). A request that needs a node without a connection waits for that node's dial like for
//! any slow answer: a read hedges to the next replica after its hedge delay, and a request that stops
//! waiting does not abandon the dial.
//!
//! # Failure detection
//!
//! The client keeps a verdict per node ([`Client::node_health`]). A node is **judged down** when
//! - its handshake fails or times out, or its connection breaks;
//! - not one packet (not even a QUIC acknowledgement) came back from it for `failure_timeout_ms` (150 ms)
//!   while a request to it was outstanding and the client was sending to it. A live node acknowledges
//!   within milliseconds, even while it is still working on a long request, so this never judges a slow
//!   node, only one that is gone (killed, paused, cut off): a `kill -9` is noticed within the failure
//!   timeout of the first request sent after it;
//! - the cluster's own failure detector (the liveness in the status of the node the client refreshes
//!   from) reports it down and the client has not heard from it for a second.
//!
//! A node judged down is routed around at once (tried only after every other candidate) and **probed in
//! the background** every `probe_interval_ms` (250 ms): a `Cluster` request on its connection, or a new
//! handshake. A connection on which the node stays silent is closed then, so requests still waiting on
//! it fail at once. The node is up again as soon as it answers anything (a probe, a request, a
//! handshake); time alone never brings it back, so a dead node is never put first again while it stays
//! dead, and no request ever waits on a dial to it while another replica is reachable.
//!
//! # Routing, hedging and retries
//!
//! A request for a key goes to the key's replicas, `ring.preference_list(key, N)`, tried in order, those
//! judged down last.
//!
//! - **Reads** (`Get`) are **hedged**: if the replica asked has not answered after the *hedge delay*,
//!   the next replica is asked too, and the first answer wins (the slower attempt is dropped). The delay
//!   is `hedge_delay_us` if configured (0: no hedging), otherwise the p99 of the client's reads of the last
//!   one to two seconds (point reads and quorum reads are tracked apart), at least `hedge_min_us` (1 ms)
//!   and at most [`MAX_HEDGE_DELAY`](crate::config::MAX_HEDGE_DELAY), and
//!   [`INITIAL_HEDGE_DELAY`](crate::config::INITIAL_HEDGE_DELAY) before 32 reads were seen. At the p99
//!   about one read in a hundred is sent twice. Reads also move on at once on a connection failure,
//!   transport error, a node judged down, or an [`ErrorCode::Unavailable`] reply (the node could not
//!   reach the read quorum). A node whose connection was lost in the middle of the read (it restarted, or
//!   closed the connection) gets one more try on a fresh connection after the other replicas. Reads
//!   never go to nodes outside the preference list. Hedging costs no consistency: with R = 1 any replica
//!   may be behind (this is an AP store), hedged or not.
//! - **Writes** (`Put`, `Increment`, `SetFlag`, `Erase`, and `Leave`) move on to the next node **only if
//!   the request certainly did not reach the node**: connecting failed, or the stream could not be
//!   opened. Once the first byte has been handed to QUIC, a failure is returned to the caller: the write
//!   may have been applied. Writes are never hedged. Not even a gauge put is sent again, although
//!   applying the same assignment twice looks harmless: the node stamps a write when it *applies* it,
//!   so a first copy that was only delayed (a node paused or cut off, not dead, with the request in its
//!   socket buffer) would be stamped *after* the re-sent copy and after any write made since, even the
//!   caller's own next one, and overwrite it; an erasure delivered late would erase later writes. A
//!   write whose node is judged down while it waits fails at once with [`Error::Transport`] (the silent
//!   connection is closed) instead of at the deadline; the caller, who knows whether its write can be
//!   repeated, decides. (Re-sending writes safely needs the client to fix what a write means when it
//!   is first sent, a write id deduplicated by the coordinator together with a client-side stamp: a
//!   protocol change not made yet.)
//! - Writes are never sent to a node judged down while another candidate exists: if no replica that is
//!   up can be reached, a write goes to the other members that are up, in ring order from the key (such a
//!   node accepts it as a sloppy-quorum coordinator and hands it over to the replicas later: hinted
//!   handoff), and only then to the replicas judged down.
//! - Every other error reply of a node is returned as [`Error::Server`] without retry; malformed answers
//!   ([`Error::Protocol`], [`Error::UnexpectedResponse`]) are returned at once as well.
//! - When every candidate fails, the last error other than a connection failure is returned; if every
//!   candidate failed to connect, one [`Error::Connect`] lists every attempt.
//! - Requests bound to no key ([`Client::status`], [`Client::send_raw`], and `Status`, `Cluster`,
//!   `Digests`, `Leave` through [`Client::request`]) go to the [connected node](Client::connected_node)
//!   first, then to the seeds and the other members, with the same read and write rules (not hedged).
//!   Node-directed calls ([`Client::status_of`], [`Client::local_state`], [`Client::digests`],
//!   [`Client::leave`]) ask the named node only.
//!
//! [`Client::get_many`] groups the keys by the first replica to try (up), sends one `GetMany` per node
//! concurrently, and reassembles the answers in request order; the keys of a node that fails (as above,
//! including `Unavailable` and a node judged down while the batch waits) are then read one by one with
//! the routing (and hedging) of [`Client::get`].
//!
//! # Deadline
//!
//! One deadline bounds a whole call, every attempt, hedge and retry of it together (and for `get_many`
//! every batch and every key read one by one): `request_timeout_ms` (5 s by default), or the duration
//! given to [`Client::with_deadline`]. When it passes, the call fails with [`Error::Timeout`] (for a
//! write, the outcome is then unknown). Every response header is checked against `max_frame_bytes`
//! before the payload is allocated; the payload is read exactly and decoded with the core's bounded
//! decoder.
//!
//! # Coalescing
//!
//! Concurrent calls to one node share requests, as a Redis client's pipelined connection shares its
//! writes (the mechanism and its guarantees are in `coalesce.rs`):
//! - [`Client::ingest`] puts each call's events for a node (up to [`INGEST_EVENTS_PER_REQUEST`]) into
//!   that node's ingest queue as one entry;
//! - [`Client::put`], [`Client::put_with`], [`Client::increment`], [`Client::set_flag`] and
//!   [`Client::erase`] put their write into the write queue of the first node of the key's write plan.
//!
//! At most `coalesce_requests_per_node` (default 1) requests per queue are in flight to a node. A
//! waiting call that gets one of those slots takes every entry queued (oldest first; up to
//! [`INGEST_EVENTS_PER_REQUEST`] events, or [`WRITES_PER_REQUEST`] writes and
//! [`WRITE_BYTES_PER_REQUEST`] bytes; never splitting an entry) into one request, `Ingest` or
//! `Writes`, and each call gets its own answer back. An idle client therefore sends each call at once
//! and alone. A shared request goes along the plan of its first entry's key, with that call's rules
//! (a write moves on only if it was certainly not sent); the node forwards events to their owners and
//! coordinates every write as if it had come alone, so a refused write is refused alone. A request that
//! fails fails every call it carried with the same error. `coalesce_requests_per_node = 0` turns
//! coalescing off (nodes older than `Request::Writes` need that). [`Client::ingest_requests_sent`]
//! counts the ingest requests.
//!
//! # Closing
//!
//! [`Client::close`] closes every connection, aborts the dials in progress, and waits only until the
//! close of each connection established to a node that is up has been sent (about a millisecond; at
//! most 250 ms), so the nodes learn about it. A handshake that never finished costs nothing there.
//!
//! # Caveats
//!
//! - Routing is a best effort on a view that may be up to `ring_refresh_ms` old: during a join or leave
//!   a request may reach a node that is no longer (or not yet) a replica; nodes coordinate such requests
//!   themselves, so this costs a hop, not correctness.
//! - Quorums are enforced by the node that coordinates the request, not by the client.
//! - A write in flight to a node that dies fails (with [`Error::Transport`] once the node is judged down,
//!   about `failure_timeout_ms` after the first unanswered packet) rather than being re-sent; its outcome
//!   is unknown. Writes that start after that go to the next replica without delay.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use featurestore::cluster::detector::Liveness;
use featurestore::wire::client::{
    ClusterView, CounterDelta, ErrorReply, GaugeWrite, NodeStatus, PutAck, WriteOp, WriteReply,
};
use featurestore::wire::codec::{self, FRAME_HEADER_BYTES};
use featurestore::wire::dead_letter::{DeadLetter, DeadLetterPage, Purged, ReplayOutcome};
use featurestore::wire::encoded_view::{EncodedView, GetAnswer};
use featurestore::wire::event::{EventOutcome, WireEvent};
use featurestore::{
    CausalContext, ErrorCode, FlagView, Marker, NodeId, Profile, ProfileView, Request, Response,
    Value,
};
use quinn::Connection;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::coalesce::{self, NodeQueue, Pending, PendingEvents, PendingWrite};
use crate::config::{ClientConfig, SEED_STAGGER};
use crate::error::{ConnectAttempt, Error, Result};
use crate::routing::{self, silent, LatencyWindow, Merged, Traffic, View};
use crate::tls::{self, CLIENT_ALPN};
use crate::transport::{self, lock, Dialer, Failure, NodeConn, NodeHealth};

/// The longest [`Client::close`] waits for the closes of established connections to be sent.
const CLOSE_WAIT: Duration = Duration::from_millis(250);

/// The shortest time between two refreshes of the cluster view triggered by node failures.
const ERROR_REFRESH_GAP: Duration = Duration::from_millis(100);

/// The cluster's "down" verdict on a node is taken only if the client has not heard from the node for
/// this long (its own evidence is fresher).
const OWN_EVIDENCE: Duration = Duration::from_secs(1);

/// A ring-aware connection to a featurestore cluster.
///
/// Cheap to clone (an `Arc`, two quorums and a deadline); clones share the connections, the node
/// verdicts and the cluster view and may be used from many tasks at once. Dropping the last clone closes
/// the connections abruptly; call [`Client::close`] to close them gracefully. See the
/// [module docs](crate::client) for failure detection, hedging, retries and the deadline.
///
/// ```no_run
/// use store_client::{Client, ClientConfig, Value};
///
/// # async fn example() -> Result<(), store_client::Error> {
/// let client = Client::connect(ClientConfig::load("client.toml")?).await?;
/// client.put("user-42", &[("cart_value", Value::F64(42.5))]).await?;
/// let profile = client.get("user-42", None).await?;
/// println!("{profile:?}");
/// client.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    read_quorum: u8,
    write_quorum: u8,
    deadline: Duration,
}

struct Inner {
    config: ClientConfig,
    /// The configured seeds, in order.
    seeds: Vec<(NodeId, SocketAddr)>,
    dialer: Arc<Dialer>,
    view: StdMutex<Arc<View>>,
    /// When a node last confirmed the view.
    fetched: StdMutex<Instant>,
    /// When the last background refresh started.
    refresh_started: StdMutex<Option<Instant>>,
    /// Set while a background refresh runs.
    refreshing: AtomicBool,
    pool: StdMutex<HashMap<NodeId, Arc<NodeConn>>>,
    /// Recent read latencies, per [`Class`], for the adaptive hedge delay.
    latency: [StdMutex<LatencyWindow>; 2],
    /// The node that answered the last node-independent request (status, cluster, raw frames).
    home: StdMutex<NodeId>,
    /// The ingest coalescing queue of each node ingested to (see "Coalescing" in the module docs).
    ingest_queues: Queues<Vec<WireEvent>, Vec<EventOutcome>>,
    /// The write coalescing queue of each node written to.
    write_queues: Queues<WriteOp, WriteReply>,
    /// `Ingest` requests sent (each once, however many nodes its routing tried).
    ingest_requests: AtomicU64,
}

impl Drop for Inner {
    /// The last clone is gone: stop every connection, dial and probe.
    fn drop(&mut self) {
        let pool = self
            .pool
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for node in pool.values() {
            node.retire();
        }
    }
}

/// What a call may send again after the request may have reached a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Reads: move on after any failure of a node (connection, transport, judged down, `Unavailable`).
    Read,
    /// Writes: move on only if the request certainly did not reach the node.
    Never,
}

/// Reads whose latencies are tracked apart for the hedge delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `Get` with R ≤ 1.
    Point = 0,
    /// `Get` with R > 1 (the node reads other replicas first).
    Quorum = 1,
}

/// How a call treats failures, slowness and requests that may have been delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Policy {
    resend: Resend,
    /// Hedge to the next node after the hedge delay of this class (reads only).
    hedge: Option<Class>,
    /// Give up once every node tried is judged down and none is left, instead of waiting for the
    /// deadline (`get_many` batches, whose keys are then read one by one).
    give_up_when_down: bool,
}

impl Policy {
    const READ: Policy = Policy {
        resend: Resend::Read,
        hedge: None,
        give_up_when_down: false,
    };
    const BATCH: Policy = Policy {
        give_up_when_down: true,
        ..Policy::READ
    };
    const WRITE: Policy = Policy {
        resend: Resend::Never,
        ..Policy::READ
    };

    fn get(quorum: u8) -> Policy {
        Policy {
            hedge: Some(if quorum > 1 {
                Class::Quorum
            } else {
                Class::Point
            }),
            ..Policy::READ
        }
    }

    fn is_write(self) -> bool {
        self.resend != Resend::Read
    }
}

/// When a call must be over, and how long it was given.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    fn after(budget: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            at: now
                .checked_add(budget)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
            budget,
        }
    }
}

/// One attempt in flight.
type Attempt<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The attempts of one call that are in flight, polled together; each is identified by a number.
struct Race<'a, T> {
    attempts: Vec<(u64, Attempt<'a, T>)>,
}

impl<'a, T> Race<'a, T> {
    fn new() -> Self {
        Race {
            attempts: Vec::new(),
        }
    }

    fn push(&mut self, id: u64, attempt: impl Future<Output = T> + Send + 'a) {
        self.attempts.push((id, Box::pin(attempt)));
    }

    fn is_empty(&self) -> bool {
        self.attempts.is_empty()
    }

    /// The next attempt to finish, with its number; `None` if none is in flight.
    async fn next(&mut self) -> Option<(u64, T)> {
        std::future::poll_fn(|cx| {
            if self.attempts.is_empty() {
                return Poll::Ready(None);
            }
            for i in 0..self.attempts.len() {
                if let Poll::Ready(out) = self.attempts[i].1.as_mut().poll(cx) {
                    let (id, _) = self.attempts.remove(i);
                    return Poll::Ready(Some((id, out)));
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// One attempt of a call as the call watches it.
struct Running {
    id: u64,
    node: NodeId,
    slot: Option<Arc<NodeConn>>,
    /// The node's packet counters at the last check (`None` while it has no connection).
    traffic: Option<Traffic>,
    /// When the attempt is checked for silence next.
    check_at: Instant,
    /// Whether its node was judged down while it ran (handled once).
    judged: bool,
}

/// Clears [`Inner::refreshing`] when the background refresh ends, even if it panics.
struct RefreshGuard(Arc<Inner>);

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::SeqCst);
    }
}

/// Most events [`Client::ingest`] sends in one request: within a node's `max_batch` (default 1000),
/// and at the largest event a node takes (`max_event_bytes`, 32 KiB) within its 4 MiB frame.
pub const INGEST_EVENTS_PER_REQUEST: usize = 100;

/// Most dead-letter ids [`Client::replay_dead_letters`] and [`Client::purge_dead_letters`] send in one
/// request (a node refuses more than its `max_batch`, default 1000).
pub const DEAD_LETTER_IDS_PER_REQUEST: usize = 500;

/// A node's answer as the caller sees it: an error reply is a [`Failure`] of a delivered request
/// ([`Error::Forbidden`] or [`Error::Server`]), anything else the answer.
fn served(response: Response) -> Result<Response, Failure> {
    match response {
        Response::Error(ErrorReply {
            code: ErrorCode::Forbidden,
            message,
        }) => Err(Failure {
            error: Error::Forbidden { message },
            sent: true,
            conn_lost: false,
        }),
        Response::Error(ErrorReply { code, message }) => Err(Failure {
            error: Error::Server { code, message },
            sent: true,
            conn_lost: false,
        }),
        response => Ok(response),
    }
}

pub(crate) fn unexpected(expected: &'static str, got: &Response) -> Error {
    Error::UnexpectedResponse {
        expected,
        got: got.kind().to_owned(),
    }
}

fn projection(features: Option<&[&str]>) -> Option<Vec<String>> {
    features.map(|names| names.iter().map(|n| (*n).to_owned()).collect())
}

/// The error of a call whose every candidate failed.
fn final_error(last: Option<Error>, connect_failures: Vec<ConnectAttempt>) -> Error {
    match last {
        Some(error) => error,
        None if !connect_failures.is_empty() => Error::Connect {
            attempts: connect_failures,
        },
        None => Error::Transport("no node to send the request to".into()),
    }
}

/// Most writes one coalesced `Writes` request carries (a node takes up to its `max_batch`, default 1000).
pub const WRITES_PER_REQUEST: usize = 256;

/// Most encoded bytes of writes one coalesced `Writes` request carries (a node's frame limit is 4 MiB by
/// default); a single larger write still goes, alone.
pub const WRITE_BYTES_PER_REQUEST: usize = 1 << 20;

/// The coalescing queue of each node, of one kind of call.
type Queues<T, R> = StdMutex<HashMap<NodeId, Arc<NodeQueue<T, R>>>>;

/// Sends one taken batch of a coalescing queue and answers every entry of it.
type SendBatch<T, R> = fn(Client, Vec<Pending<T, R>>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// A queue map's queue of `node`, created (with `permits`) on first use.
fn queue_of<T, R>(queues: &Queues<T, R>, node: &NodeId, permits: usize) -> Arc<NodeQueue<T, R>> {
    let mut queues = lock(queues);
    if let Some(queue) = queues.get(node) {
        return queue.clone();
    }
    let queue = Arc::new(NodeQueue::new(permits));
    queues.insert(node.clone(), queue.clone());
    queue
}

/// [`SendBatch`] of the ingest queues: one `Ingest` request.
fn send_events(
    client: Client,
    batch: Vec<PendingEvents>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let Some((key, events, waiters)) = coalesce::into_request(batch) else {
            return;
        };
        let result = client.ingest_request(&key, events).await;
        coalesce::answer(waiters, result);
    })
}

/// [`SendBatch`] of the write queues: one `Writes` request.
fn send_writes(
    client: Client,
    batch: Vec<PendingWrite>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let Some((key, writes, waiters)) = coalesce::into_writes(batch) else {
            return;
        };
        let result = client.writes_request(&key, writes).await;
        coalesce::answer_writes(waiters, result);
    })
}

/// Whether the keys of a failed `GetMany` group are worth reading one by one on other replicas.
fn group_falls_back(error: &Error) -> bool {
    matches!(
        error,
        Error::Connect { .. }
            | Error::Transport(_)
            | Error::Timeout { .. }
            | Error::UnknownNode(_)
            | Error::Server {
                code: ErrorCode::Unavailable,
                ..
            }
    )
}

impl Client {
    /// Validates `config`, loads the certificates, dials the seeds (`[[nodes]]`) in parallel, keeps the
    /// first whose handshake succeeds, and learns the cluster from it (see the
    /// [module docs](crate::client)). A dead first seed costs [`SEED_STAGGER`], not a handshake timeout.
    ///
    /// Must be called within a tokio runtime. Errors: [`Error::Config`], [`Error::Tls`] (certificate
    /// files), [`Error::Connect`] listing every seed tried, in configuration order. A seed that
    /// connects but cannot describe the cluster is not an error: the client then routes over the seeds
    /// and keeps asking in the background.
    ///
    /// ```no_run
    /// use store_client::{Client, ClientConfig, NodeAddr};
    ///
    /// # async fn example() -> Result<(), store_client::Error> {
    /// let config = ClientConfig::new(
    ///     "certs/ca.pem",
    ///     "certs/client-app.pem",
    ///     "certs/client-app.key",
    ///     vec![NodeAddr::new("n1", "127.0.0.1:7401".parse().expect("address"))],
    /// );
    /// let client = Client::connect(config).await?;
    /// println!("connected to {}", client.connected_node());
    /// println!("ring version {}", client.ring_version());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let seeds = config
            .nodes
            .iter()
            .map(|n| {
                NodeId::new(n.name.as_str())
                    .map(|id| (id, n.addr))
                    .map_err(|e| Error::Config(format!("node {:?}: {e}", n.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let quic = tls::client_config(
            &config.ca_cert,
            &config.cert,
            &config.key,
            CLIENT_ALPN,
            &config.transport,
        )?;
        let dialer = Arc::new(Dialer::new(
            quic,
            config.connect_timeout(),
            config.failure_timeout(),
            config.probe_interval(),
            config.max_frame_bytes,
        )?);
        let view = View::from_seeds(&seeds);
        let first = seeds[0].0.clone();
        let now = Instant::now();
        let client = Client {
            read_quorum: config.read_quorum,
            write_quorum: config.write_quorum,
            deadline: config.request_timeout(),
            inner: Arc::new(Inner {
                dialer,
                seeds,
                config,
                view: StdMutex::new(Arc::new(view)),
                fetched: StdMutex::new(now),
                refresh_started: StdMutex::new(None),
                refreshing: AtomicBool::new(false),
                pool: StdMutex::new(HashMap::new()),
                latency: [
                    StdMutex::new(LatencyWindow::new(now)),
                    StdMutex::new(LatencyWindow::new(now)),
                ],
                home: StdMutex::new(first),
                ingest_queues: StdMutex::new(HashMap::new()),
                write_queues: StdMutex::new(HashMap::new()),
                ingest_requests: AtomicU64::new(0),
            }),
        };

        let home = client.dial_seeds().await?;
        *lock(&client.inner.home) = home.clone();

        // The cluster view from the first node that answers, and at the same time the status of the
        // seed that connected: the liveness its failure detector gives every member.
        let deadline = Deadline::after(client.deadline);
        let status_deadline =
            Deadline::after(client.deadline.min(client.inner.config.failure_timeout()));
        let cluster_frame = codec::encode_request(&Request::Cluster)?;
        let status_frame = codec::encode_request(&Request::Status)?;
        let (cluster, status) = tokio::join!(
            client.call(client.home_plan(), Policy::READ, deadline, |c| client
                .typed(c, &cluster_frame)),
            client.call(vec![home.clone()], Policy::READ, status_deadline, |c| {
                client.typed(c, &status_frame)
            }),
        );
        match cluster {
            Ok((_, Response::Cluster(cluster))) => {
                client.apply(cluster);
            }
            Ok((node, other)) => {
                warn!(%node, got = other.kind(), "the seed did not describe the cluster; routing over the seeds");
            }
            Err(error) => {
                warn!(node = %home, %error, "the seed did not describe the cluster; routing over the seeds");
            }
        }
        if let Ok((_, Response::Status(status))) = status {
            client.apply_liveness(&status);
        }
        Ok(client)
    }

    /// Dials the seeds in parallel, happy-eyeballs style: the first at once, each next one
    /// [`SEED_STAGGER`] later, or at once when a dial fails. Returns the first seed whose handshake
    /// succeeds; the other dials go on in the background. Fails with one [`Error::Connect`] listing
    /// every seed, in configuration order, if none succeeds.
    async fn dial_seeds(&self) -> Result<NodeId> {
        let seeds = self.inner.seeds.clone();
        let mut race: Race<'_, Result<Connection>> = Race::new();
        let mut failed: Vec<(usize, ConnectAttempt)> = Vec::new();
        let mut started = 0usize;
        let mut last_start = Instant::now();
        macro_rules! start_next {
            () => {
                while started < seeds.len() {
                    let i = started;
                    started += 1;
                    if let Some(slot) = self.node_conn(&seeds[i].0) {
                        last_start = Instant::now();
                        race.push(i as u64, async move { slot.connection().await });
                        break;
                    }
                }
            };
        }
        start_next!();
        loop {
            if race.is_empty() {
                if started < seeds.len() {
                    start_next!();
                    continue;
                }
                failed.sort_by_key(|(i, _)| *i);
                return Err(Error::Connect {
                    attempts: failed.into_iter().map(|(_, a)| a).collect(),
                });
            }
            let stagger = (started < seeds.len()).then(|| last_start + SEED_STAGGER);
            tokio::select! {
                biased;
                done = race.next() => match done {
                    Some((i, Ok(_))) => return Ok(seeds[i as usize].0.clone()),
                    Some((i, Err(Error::Connect { attempts }))) => {
                        failed.extend(attempts.into_iter().map(|a| (i as usize, a)));
                        start_next!();
                    }
                    Some((_, Err(other))) => return Err(other),
                    None => {}
                },
                () = tokio::time::sleep_until(stagger.unwrap_or(last_start).into()), if stagger.is_some() => {
                    start_next!();
                }
            }
        }
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A clone of this client (sharing its connections and cluster view) whose reads use quorum `read`
    /// (R) and whose writes use quorum `write` (W) instead of the configured `read_quorum` and
    /// `write_quorum`. 0 and 1 both mean one replica.
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// // Read from two replicas (merged, stale ones repaired); acknowledge writes after two replicas.
    /// let careful = client.with_quorums(2, 2);
    /// careful.increment("user-42", &[("orders", 1)]).await?;
    /// let profile = careful.get("user-42", None).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_quorums(&self, read: u8, write: u8) -> Client {
        Client {
            read_quorum: read,
            write_quorum: write,
            ..self.clone()
        }
    }

    /// A clone of this client (sharing its connections and cluster view) whose calls each have
    /// `deadline` in total, every attempt, hedge and retry included, instead of the configured
    /// `request_timeout_ms`. A call that runs out of it fails with [`Error::Timeout`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// // A decision engine that must answer within 20 ms reads with a 5 ms budget.
    /// let fast = client.with_deadline(Duration::from_millis(5));
    /// match fast.get("user-42", None).await {
    ///     Ok(profile) => println!("{profile:?}"),
    ///     Err(store_client::Error::Timeout { .. }) => println!("no profile in time; using defaults"),
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_deadline(&self, deadline: Duration) -> Client {
        Client {
            deadline,
            ..self.clone()
        }
    }

    /// The deadline of each call of this client (see [`Client::with_deadline`]).
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// What the client currently believes about each node it has dealt with, by node id: whether it is
    /// connected, judged down (and why, for how long), and how many answers and failures it has seen.
    ///
    /// ```no_run
    /// # fn example(client: store_client::Client) {
    /// for node in client.node_health() {
    ///     if node.down {
    ///         println!("{} down for {:?}: {:?}", node.node, node.down_for, node.reason);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn node_health(&self) -> Vec<NodeHealth> {
        let mut health: Vec<NodeHealth> = lock(&self.inner.pool)
            .values()
            .map(|node| node.health())
            .collect();
        health.sort_by(|a, b| a.node.cmp(&b.node));
        health
    }

    /// The hedge delay a point read (R ≤ 1) would use now: the configured `hedge_delay_us`, or the
    /// adaptive one (see the [module docs](crate::client)); `None` if hedging is off.
    pub fn hedge_delay(&self) -> Option<Duration> {
        self.hedge_delay_of(Class::Point)
    }

    fn hedge_delay_of(&self, class: Class) -> Option<Duration> {
        let config = &self.inner.config;
        let p99 = match config.hedge_delay_us {
            Some(_) => None,
            None => lock(&self.inner.latency[class as usize]).p99(Instant::now()),
        };
        routing::hedge_delay(
            config.hedge_delay_us,
            Duration::from_micros(config.hedge_min_us),
            p99,
        )
    }

    fn record_latency(&self, class: Class, latency: Duration) {
        lock(&self.inner.latency[class as usize]).record(latency, Instant::now());
    }

    /// The read quorum (R) of this client's reads.
    pub fn read_quorum(&self) -> u8 {
        self.read_quorum
    }

    /// The write quorum (W) of this client's writes.
    pub fn write_quorum(&self) -> u8 {
        self.write_quorum
    }

    /// The node that answered the last request not bound to a key or a node (initially the seed
    /// [`Client::connect`] reached): [`Client::status`] and [`Client::send_raw`] go there first.
    pub fn connected_node(&self) -> String {
        lock(&self.inner.home).to_string()
    }

    /// The cached cluster view: membership table (its `version()` is the ring version), virtual nodes
    /// per member and replication factor. Made of the seeds (ring version 0) if no node has described
    /// the cluster yet.
    pub fn cluster(&self) -> ClusterView {
        self.view().cluster.clone()
    }

    /// The version of the cached ring (the membership table's version; 0 for a ring of the seeds).
    pub fn ring_version(&self) -> u64 {
        self.view().ring.version()
    }

    /// The replicas of `key` in the cached ring, in preference order (the first one coordinates).
    ///
    /// ```no_run
    /// # fn example(client: store_client::Client) {
    /// let replicas = client.replicas("user-42");
    /// println!("user-42 lives on {replicas:?}");
    /// # }
    /// ```
    pub fn replicas(&self, key: &str) -> Vec<NodeId> {
        let view = self.view();
        view.ring
            .preference_list(key.as_bytes(), view.replication_factor)
    }

    /// Fetches the cluster view now (from a connected node, else from any reachable one), merges it into
    /// the cached view, and returns the result.
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let view = client.refresh_cluster().await?;
    /// for member in view.table.members.values() {
    ///     println!("{} {} {}", member.id, member.addr, member.state);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn refresh_cluster(&self) -> Result<ClusterView> {
        let mut nodes: Vec<NodeId> = {
            let pool = lock(&self.inner.pool);
            let mut open: Vec<NodeId> = pool
                .values()
                .filter(|n| !n.is_down() && n.open().is_some())
                .map(|n| n.id.clone())
                .collect();
            open.sort();
            open
        };
        for node in self.home_plan() {
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        let frame = codec::encode_request(&Request::Cluster)?;
        let (node, response) = self
            .call(nodes, Policy::READ, Deadline::after(self.deadline), |c| {
                self.typed(c, &frame)
            })
            .await?;
        let view = match response {
            Response::Cluster(cluster) => self.apply(cluster),
            other => return Err(unexpected("Cluster", &other)),
        };
        // The liveness the same node's failure detector gives every member (best effort, briefly).
        let frame = codec::encode_request(&Request::Status)?;
        let budget = self.deadline.min(self.inner.config.failure_timeout());
        if let Ok((_, Response::Status(status))) = self
            .call(vec![node], Policy::READ, Deadline::after(budget), |c| {
                self.typed(c, &frame)
            })
            .await
        {
            self.apply_liveness(&status);
        }
        Ok(view)
    }

    /// Takes the "down" verdicts of a node's failure detector on the members the client has not heard
    /// from for [`OWN_EVIDENCE`] (the client's own, fresher evidence wins; the probe then decides).
    fn apply_liveness(&self, status: &NodeStatus) {
        for member in &status.members {
            if member.liveness != Liveness::Down || member.id == status.node_id {
                continue;
            }
            let Some(slot) = self.node_conn(&member.id) else {
                continue;
            };
            if slot.is_down() || slot.since_answer().is_some_and(|d| d < OWN_EVIDENCE) {
                continue;
            }
            slot.failed(&format!(
                "the failure detector of {} reports it down",
                status.node_id
            ));
        }
    }

    fn view(&self) -> Arc<View> {
        lock(&self.inner.view).clone()
    }

    /// Merges a node's description of the cluster into the cached view; returns the cached view.
    fn apply(&self, answer: ClusterView) -> ClusterView {
        let (view, changed) = {
            let mut cached = lock(&self.inner.view);
            let changed = match cached.merged(answer, &self.inner.seeds) {
                Merged::Unchanged => false,
                Merged::Changed(view) => {
                    info!(
                        ring_version = view.ring.version(),
                        members = view.ring.len(),
                        replication_factor = view.replication_factor,
                        "cluster view updated"
                    );
                    *cached = Arc::new(view);
                    true
                }
                Merged::EmptyRing => {
                    warn!("a node described a cluster without serving members; ignored");
                    false
                }
            };
            (cached.clone(), changed)
        };
        *lock(&self.inner.fetched) = Instant::now();
        if changed {
            // Forget connections to nodes that left or moved.
            let mut pool = lock(&self.inner.pool);
            pool.retain(|id, node| {
                let keep = view.addr(id) == Some(node.addr);
                if !keep {
                    node.retire();
                }
                keep
            });
        }
        view.cluster.clone()
    }

    /// Starts a background refresh of the cluster view if one is due: the view is older than
    /// `ring_refresh_ms` (and so is the last refresh), or `after_error` (a node failed) and the last
    /// refresh started at least [`ERROR_REFRESH_GAP`] ago. At most one runs at a time.
    fn maybe_refresh(&self, after_error: bool) {
        if self.inner.dialer.closed.load(Ordering::SeqCst)
            || self.inner.refreshing.load(Ordering::SeqCst)
        {
            return;
        }
        let now = Instant::now();
        let since_start =
            lock(&self.inner.refresh_started).map(|t| now.saturating_duration_since(t));
        let due = if after_error {
            since_start.is_none_or(|d| d >= ERROR_REFRESH_GAP)
        } else {
            match self.inner.config.ring_refresh() {
                None => false,
                Some(every) => {
                    let age = now.saturating_duration_since(*lock(&self.inner.fetched));
                    age >= every && since_start.is_none_or(|d| d >= every)
                }
            }
        };
        if !due {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        *lock(&self.inner.refresh_started) = Some(now);
        let client = self.clone();
        runtime.spawn(async move {
            let _guard = RefreshGuard(client.inner.clone());
            if let Err(error) = client.refresh_cluster().await {
                debug!(%error, "background refresh of the cluster view failed");
            }
        });
    }

    /// The connection slot of `node`, created if needed; `None` if the node has no known address.
    fn node_conn(&self, node: &NodeId) -> Option<Arc<NodeConn>> {
        let addr = self.view().addr(node)?;
        let mut pool = lock(&self.inner.pool);
        if let Some(existing) = pool.get(node) {
            if existing.addr == addr {
                return Some(existing.clone());
            }
        }
        let fresh = Arc::new(NodeConn::new(node.clone(), addr, self.inner.dialer.clone()));
        if let Some(old) = pool.insert(node.clone(), fresh.clone()) {
            old.retire();
        }
        Some(fresh)
    }

    /// Whether each node is judged down, as of now.
    fn down_now(&self) -> impl Fn(&NodeId) -> bool {
        let down: Vec<NodeId> = lock(&self.inner.pool)
            .values()
            .filter(|n| n.is_down())
            .map(|n| n.id.clone())
            .collect();
        move |node| down.contains(node)
    }

    /// Judges `slot`'s node down and refreshes the cluster view soon.
    fn node_failed(&self, slot: &Arc<NodeConn>, why: &str) {
        slot.failed(why);
        self.maybe_refresh(true);
    }

    /// The nodes for requests bound to no key or node: the last node that answered one, the seeds, then
    /// every other known node; those judged down last.
    fn home_plan(&self) -> Vec<NodeId> {
        let home = lock(&self.inner.home).clone();
        let view = self.view();
        let mut nodes = vec![home];
        for node in self
            .inner
            .seeds
            .iter()
            .map(|(id, _)| id)
            .chain(view.nodes())
        {
            if !nodes.contains(node) {
                nodes.push(node.clone());
            }
        }
        let down = self.down_now();
        let (mut fresh, late): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|n| !down(n));
        fresh.extend(late);
        fresh
    }

    /// One typed exchange on `conn`; an error reply becomes a [`Failure`] carrying [`Error::Server`].
    async fn typed(&self, conn: Connection, frame: &[u8]) -> Result<Response, Failure> {
        served(transport::exchange(&conn, frame, self.inner.config.max_frame_bytes).await?)
    }

    /// [`Client::typed`] for a `Get` whose view is kept encoded: the view, or the other answer.
    async fn typed_get(
        &self,
        conn: Connection,
        frame: &[u8],
    ) -> Result<std::result::Result<Option<EncodedView>, Response>, Failure> {
        match transport::exchange_get(&conn, frame, self.inner.config.max_frame_bytes).await? {
            GetAnswer::View(view) => Ok(Ok(view)),
            GetAnswer::Other(response) => served(*response).map(Err),
        }
    }

    /// Runs `op` on `nodes` following `policy` (see the [module docs](crate::client)) until one answers
    /// or `deadline` passes. Returns the node that answered and its answer.
    ///
    /// Attempts run concurrently: the first at once; the next when the running one failed in a way the
    /// policy moves on from, when its node is judged down (silence for `failure_timeout_ms`, checked
    /// every failure timeout), or, for hedged reads, when the hedge delay has passed since the last
    /// attempt started. The first answer wins; the others are dropped.
    async fn call<T, F, Fut>(
        &self,
        nodes: Vec<NodeId>,
        policy: Policy,
        deadline: Deadline,
        op: F,
    ) -> Result<(NodeId, T)>
    where
        T: Send,
        F: Fn(Connection) -> Fut + Sync,
        Fut: Future<Output = Result<T, Failure>> + Send,
    {
        let failure_timeout = self.inner.config.failure_timeout();
        let hedge = policy.hedge.and_then(|class| self.hedge_delay_of(class));
        let op = &op;
        let mut queue: VecDeque<NodeId> = nodes.into();
        let mut second_chance: Vec<NodeId> = Vec::new();
        let mut connect_failures: Vec<ConnectAttempt> = Vec::new();
        let mut last: Option<Error> = None;
        let mut race: Race<'_, Result<(T, Instant), Failure>> = Race::new();
        let mut running: Vec<Running> = Vec::new();
        let mut next_id = 0u64;
        let mut last_launch = Instant::now();

        macro_rules! launch {
            ($node:expr) => {{
                let node: NodeId = $node;
                let slot = self.node_conn(&node);
                let now = Instant::now();
                running.push(Running {
                    id: next_id,
                    node: node.clone(),
                    slot: slot.clone(),
                    traffic: slot.as_ref().and_then(|s| s.traffic()),
                    check_at: now + failure_timeout,
                    judged: false,
                });
                last_launch = now;
                race.push(next_id, async move {
                    let Some(slot) = slot else {
                        return Err(Failure::unsent(Error::UnknownNode(node.to_string())));
                    };
                    let conn = slot.connection().await.map_err(Failure::unsent)?;
                    let sent = Instant::now();
                    op(conn).await.map(|value| (value, sent))
                });
                next_id += 1;
            }};
        }

        loop {
            if race.is_empty() {
                match queue.pop_front() {
                    Some(node) => launch!(node),
                    None => return Err(final_error(last, connect_failures)),
                }
            }
            let mut wake = deadline.at;
            if let Some(delay) = hedge {
                if !queue.is_empty() {
                    wake = wake.min(last_launch + delay);
                }
            }
            for r in running.iter().filter(|r| !r.judged) {
                wake = wake.min(r.check_at);
            }
            let done = tokio::select! {
                biased;
                done = race.next() => done,
                () = tokio::time::sleep_until(wake.into()) => None,
            };

            if let Some((id, outcome)) = done {
                let Some(at) = running.iter().position(|r| r.id == id) else {
                    continue;
                };
                let attempt = running.remove(at);
                let failure = match outcome {
                    Ok((value, sent)) => {
                        if let Some(slot) = &attempt.slot {
                            slot.answered();
                        }
                        if let Some(class) = policy.hedge {
                            self.record_latency(class, sent.elapsed());
                        }
                        return Ok((attempt.node, value));
                    }
                    Err(failure) => failure,
                };
                if matches!(failure.error, Error::Closed) {
                    return Err(Error::Closed);
                }
                let unreachable = failure.is_unreachable();
                if let Some(slot) = &attempt.slot {
                    match &failure.error {
                        // A failed dial has judged the node already.
                        Error::Connect { .. } => self.maybe_refresh(true),
                        Error::Transport(_) if failure.conn_lost => {
                            self.node_failed(slot, &format!("connection lost: {}", failure.error));
                        }
                        Error::Server { .. } | Error::Forbidden { .. } => slot.answered(),
                        _ => {}
                    }
                }
                let unavailable = failure.error.server_code() == Some(ErrorCode::Unavailable);
                let move_on = !failure.sent
                    || match policy.resend {
                        Resend::Read => unreachable || unavailable,
                        Resend::Never => false,
                    };
                if !move_on {
                    let down = attempt.slot.as_ref().is_some_and(|s| s.is_down());
                    return Err(match failure.error {
                        Error::Transport(detail) if down && failure.conn_lost => {
                            Error::Transport(format!(
                                "{} was judged down while the request waited; it may or may not have \
                                 been applied ({detail})",
                                attempt.node
                            ))
                        }
                        error => error,
                    });
                }
                if policy.resend == Resend::Read
                    && failure.sent
                    && failure.conn_lost
                    && !second_chance.contains(&attempt.node)
                {
                    second_chance.push(attempt.node.clone());
                    queue.push_back(attempt.node.clone());
                }
                debug!(node = %attempt.node, error = %failure.error, sent = failure.sent, "request failed; trying the next node");
                match failure.error {
                    Error::Connect { attempts } => connect_failures.extend(attempts),
                    error => last = Some(error),
                }
                // Keep one attempt in flight whose node is not judged down (the hedge adds more).
                if running.iter().all(|r| r.judged) {
                    if let Some(node) = queue.pop_front() {
                        launch!(node);
                    }
                }
                continue;
            }

            // The timer: the deadline, silence checks, the hedge.
            let now = Instant::now();
            if now >= deadline.at {
                return Err(Error::Timeout {
                    after: deadline.budget,
                });
            }
            for r in running
                .iter_mut()
                .filter(|r| !r.judged && r.check_at <= now)
            {
                // A check that runs late says more about this process (starved of CPU: the packets
                // may be waiting in its socket) than about the node; it only takes a new reading.
                let on_time = now.saturating_duration_since(r.check_at) <= failure_timeout / 4;
                r.check_at = now + failure_timeout;
                let Some(slot) = &r.slot else {
                    continue;
                };
                let traffic = slot.traffic();
                let quiet = on_time
                    && match (r.traffic, traffic) {
                        (Some(before), Some(after)) => silent(before, after),
                        _ => false,
                    };
                if let (true, Some(dead)) = (quiet, traffic) {
                    self.node_failed(
                        slot,
                        &format!(
                            "not one packet back in {} ms with a request outstanding",
                            failure_timeout.as_millis()
                        ),
                    );
                    // Every request waiting on that connection fails now (reads move on, writes
                    // report that they may have been applied) instead of at its deadline.
                    slot.abandon(dead.conn);
                }
                if quiet || slot.is_down() {
                    r.judged = true;
                } else {
                    r.traffic = traffic;
                }
            }
            if policy.resend == Resend::Read && running.iter().all(|r| r.judged) {
                if let Some(node) = queue.pop_front() {
                    launch!(node);
                }
            }
            if policy.give_up_when_down && queue.is_empty() && running.iter().all(|r| r.judged) {
                let nodes: Vec<String> = running.iter().map(|r| r.node.to_string()).collect();
                return Err(last.unwrap_or_else(|| {
                    Error::Transport(format!("{} judged down", nodes.join(", ")))
                }));
            }
            if let Some(delay) = hedge {
                if now >= last_launch + delay {
                    if let Some(node) = queue.pop_front() {
                        launch!(node);
                    }
                }
            }
        }
    }

    /// Sends `frame` (a request about `key`) along the key's plan.
    async fn routed(
        &self,
        key: &str,
        frame: &[u8],
        policy: Policy,
        deadline: Deadline,
    ) -> Result<Response> {
        self.routed_by(key, policy, deadline, |c| self.typed(c, frame))
            .await
    }

    /// Runs `op` along `key`'s plan following `policy` (see [`Client::call`]); returns its answer.
    async fn routed_by<T, F, Fut>(
        &self,
        key: &str,
        policy: Policy,
        deadline: Deadline,
        op: F,
    ) -> Result<T>
    where
        T: Send,
        F: Fn(Connection) -> Fut + Sync,
        Fut: Future<Output = Result<T, Failure>> + Send,
    {
        self.maybe_refresh(false);
        let view = self.view();
        let nodes = routing::plan(
            &view.ring,
            view.replication_factor,
            key.as_bytes(),
            policy.is_write(),
            self.down_now(),
        );
        let (_, answer) = self.call(nodes, policy, deadline, op).await?;
        Ok(answer)
    }

    /// Sends `frame` (a request bound to no key) along [`Client::home_plan`].
    async fn at_home(&self, frame: &[u8], policy: Policy) -> Result<Response> {
        self.maybe_refresh(false);
        let (node, response) = self
            .call(
                self.home_plan(),
                policy,
                Deadline::after(self.deadline),
                |c| self.typed(c, frame),
            )
            .await?;
        *lock(&self.inner.home) = node;
        Ok(response)
    }

    /// Sends `request` to `node` only.
    /// Sends `request` to `node` (a read: retried on a transient failure) within `deadline`.
    pub(crate) async fn request_at(
        &self,
        node: &NodeId,
        request: &Request,
        deadline: Duration,
    ) -> Result<Response> {
        self.at_node(node, request, Policy::READ, Deadline::after(deadline))
            .await
    }

    async fn at_node(
        &self,
        node: &NodeId,
        request: &Request,
        policy: Policy,
        deadline: Deadline,
    ) -> Result<Response> {
        let frame = codec::encode_request(request)?;
        let (_, response) = self
            .call(vec![node.clone()], policy, deadline, |c| {
                self.typed(c, &frame)
            })
            .await?;
        Ok(response)
    }

    /// Sends any request and returns the answer, routed by what it is about:
    ///
    /// - `Get` and `LocalState` to the replicas of the key (read rules); `GetMany` as
    ///   [`Client::get_many`] does;
    /// - `Put`, `Increment`, `SetFlag` and `Erase` to the replicas of the key (write rules, sent alone:
    ///   not coalesced); `Writes` along its first write's key (write rules);
    /// - `Status`, `Cluster` and `Digests` to the [connected node](Client::connected_node) (read rules:
    ///   another node if it fails); `Leave` there too (write rules: the node that leaves is the one that
    ///   answers, so prefer [`Client::leave`]).
    ///
    /// The request's own quorum is sent as given. An error reply ([`Response::Error`]) is returned as
    /// [`Error::Server`], so an `Ok` response is never `Response::Error`.
    ///
    /// ```no_run
    /// use store_client::{Client, Request, Response};
    ///
    /// # async fn example(client: Client) -> Result<(), store_client::Error> {
    /// match client.request(Request::Status).await? {
    ///     Response::Status(status) => println!("{} holds {} entities", status.node_id, status.entities),
    ///     other => println!("unexpected: {other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request(&self, request: Request) -> Result<Response> {
        if let Request::GetMany {
            keys,
            features,
            quorum,
        } = request
        {
            return Ok(Response::Profiles(
                self.get_many_owned(keys, features, quorum).await?,
            ));
        }
        let frame = codec::encode_request(&request)?;
        let deadline = Deadline::after(self.deadline);
        match &request {
            Request::Get { key, quorum, .. } => {
                self.routed(key, &frame, Policy::get(*quorum), deadline)
                    .await
            }
            Request::LocalState { key } => self.routed(key, &frame, Policy::READ, deadline).await,
            Request::Put { key, .. } | Request::Erase { key, .. } => {
                self.routed(key, &frame, Policy::WRITE, deadline).await
            }
            Request::Increment { key, .. } | Request::SetFlag { key, .. } => {
                self.routed(key, &frame, Policy::WRITE, deadline).await
            }
            Request::Writes { writes } => match writes.first() {
                Some(first) => {
                    self.routed(first.key(), &frame, Policy::WRITE, deadline)
                        .await
                }
                None => self.at_home(&frame, Policy::WRITE).await,
            },
            Request::Leave => self.at_home(&frame, Policy::WRITE).await,
            _ => self.at_home(&frame, Policy::READ).await,
        }
    }

    /// Writes arbitrary bytes on a fresh stream to the [connected node](Client::connected_node),
    /// finishes it, and returns everything the node sends back (at most `max_frame_bytes + 5` bytes;
    /// more is an [`Error::Transport`]).
    ///
    /// For testing and diagnostics only (e.g. checking how a node answers malformed or oversize frames):
    /// nothing is validated or decoded. Another node is tried only if the connection or the stream could
    /// not be opened; once bytes were sent, nothing is retried. A stream the node resets or stops without
    /// answering is an [`Error::Transport`].
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let limit = self.inner.config.max_frame_bytes as usize + FRAME_HEADER_BYTES;
        let (node, reply) = self
            .call(
                self.home_plan(),
                Policy::WRITE,
                Deadline::after(self.deadline),
                |c| async move { transport::exchange_raw(&c, bytes, limit).await },
            )
            .await?;
        *lock(&self.inner.home) = node;
        Ok(reply)
    }

    /// Reads one entity with the configured read quorum, optionally only the named features. `None` if
    /// nothing of it is visible (never written, erased, or expired).
    ///
    /// ```no_run
    /// use store_client::{Client, FeatureView};
    ///
    /// # async fn example(client: Client) -> Result<(), store_client::Error> {
    /// if let Some(profile) = client.get("user-42", Some(&["cart_value", "vip"])).await? {
    ///     for (name, feature) in &profile.features {
    ///         println!("{name}: {feature:?}");
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(&self, key: &str, features: Option<&[&str]>) -> Result<Option<ProfileView>> {
        self.get_with_quorum(key, features, self.read_quorum).await
    }

    /// Like [`Client::get`], with read quorum `r`: the serving node reads `r` replicas, merges them and
    /// repairs the stale ones before answering (0 and 1 read one). If fewer than `r` replicas answer,
    /// the node replies [`ErrorCode::Unavailable`] and the next replica is asked.
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let profile = client.get_with_quorum("user-42", None, 2).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_with_quorum(
        &self,
        key: &str,
        features: Option<&[&str]>,
        r: u8,
    ) -> Result<Option<ProfileView>> {
        self.get_owned(key, projection(features), r, Deadline::after(self.deadline))
            .await
    }

    /// Like [`Client::get`], but the view stays as the bytes it arrived in and is read without
    /// allocating: [`EncodedView::features`] yields each name and string borrowed from them. The fastest
    /// way to read a profile; [`EncodedView::to_view`] makes the owned [`ProfileView`] when one is needed.
    ///
    /// The request, its routing, hedging and failover are those of [`Client::get`]; only the decoding of
    /// the answer differs.
    ///
    /// ```no_run
    /// use store_client::{FeatureRef, ValueRef};
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// if let Some(view) = client.get_encoded("user-42", None).await? {
    ///     for (name, feature) in view.features() {
    ///         if let FeatureRef::Gauge { value: ValueRef::Str(text), .. } = feature {
    ///             println!("{name} = {text}");
    ///         }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_encoded(
        &self,
        key: &str,
        features: Option<&[&str]>,
    ) -> Result<Option<EncodedView>> {
        self.get_encoded_with_quorum(key, features, self.read_quorum)
            .await
    }

    /// [`Client::get_encoded`] with read quorum `r` (see [`Client::get_with_quorum`]).
    pub async fn get_encoded_with_quorum(
        &self,
        key: &str,
        features: Option<&[&str]>,
        r: u8,
    ) -> Result<Option<EncodedView>> {
        let frame = codec::encode_request(&Request::Get {
            key: key.to_owned(),
            features: projection(features),
            quorum: r,
        })?;
        let answer = self
            .routed_by(key, Policy::get(r), Deadline::after(self.deadline), |c| {
                self.typed_get(c, &frame)
            })
            .await?;
        answer.map_err(|other| unexpected("Profile", &other))
    }

    async fn get_owned(
        &self,
        key: &str,
        features: Option<Vec<String>>,
        quorum: u8,
        deadline: Deadline,
    ) -> Result<Option<ProfileView>> {
        let frame = codec::encode_request(&Request::Get {
            key: key.to_owned(),
            features,
            quorum,
        })?;
        match self
            .routed(key, &frame, Policy::get(quorum), deadline)
            .await?
        {
            Response::Profile(profile) => Ok(profile),
            other => Err(unexpected("Profile", &other)),
        }
    }

    /// Reads several entities with the configured read quorum; the answer is in `keys` order.
    ///
    /// The keys are grouped by the replica each is read from first, one `GetMany` per node is sent
    /// concurrently, and the answers are put back in order; the keys of a node that fails are read one by
    /// one from their other replicas (see the [module docs](crate::client)).
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let profiles = client.get_many(&["user-1", "user-2"], None).await?;
    /// assert_eq!(profiles.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_many(
        &self,
        keys: &[&str],
        features: Option<&[&str]>,
    ) -> Result<Vec<Option<ProfileView>>> {
        let keys = keys.iter().map(|k| (*k).to_owned()).collect();
        self.get_many_owned(keys, projection(features), self.read_quorum)
            .await
    }

    async fn get_many_owned(
        &self,
        keys: Vec<String>,
        features: Option<Vec<String>>,
        quorum: u8,
    ) -> Result<Vec<Option<ProfileView>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = Deadline::after(self.deadline);
        self.maybe_refresh(false);
        let view = self.view();
        let groups =
            routing::group_keys(&view.ring, view.replication_factor, &keys, self.down_now());
        let mut results: Vec<Option<Option<ProfileView>>> = vec![None; keys.len()];
        let mut tasks = JoinSet::new();
        for (node, indices) in groups {
            let client = self.clone();
            let request = Request::GetMany {
                keys: indices.iter().map(|&i| keys[i].clone()).collect(),
                features: features.clone(),
                quorum,
            };
            tasks.spawn(async move {
                let outcome = client
                    .at_node(&node, &request, Policy::BATCH, deadline)
                    .await;
                (node, indices, outcome)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (node, indices, outcome) =
                joined.map_err(|e| Error::Transport(format!("a get_many task failed: {e}")))?;
            match outcome {
                Ok(Response::Profiles(profiles)) if profiles.len() == indices.len() => {
                    for (i, profile) in indices.into_iter().zip(profiles) {
                        results[i] = Some(profile);
                    }
                }
                Ok(Response::Profiles(profiles)) => {
                    return Err(Error::UnexpectedResponse {
                        expected: "one profile per key",
                        got: format!("{} profiles for {} keys", profiles.len(), indices.len()),
                    })
                }
                Ok(other) => return Err(unexpected("Profiles", &other)),
                Err(error) if group_falls_back(&error) => {
                    debug!(%node, %error, keys = indices.len(), "get_many group failed; reading its keys one by one");
                }
                Err(error) => return Err(error),
            }
        }

        let mut tasks = JoinSet::new();
        for (i, _) in results.iter().enumerate().filter(|(_, r)| r.is_none()) {
            let client = self.clone();
            let key = keys[i].clone();
            let features = features.clone();
            tasks.spawn(
                async move { (i, client.get_owned(&key, features, quorum, deadline).await) },
            );
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, outcome) =
                joined.map_err(|e| Error::Transport(format!("a get task failed: {e}")))?;
            results[i] = Some(outcome?);
        }
        Ok(results.into_iter().map(Option::flatten).collect())
    }

    /// Writes gauges (last-writer-wins), stamped by the coordinating node's clock, without TTL, with the
    /// configured write quorum.
    ///
    /// ```no_run
    /// use store_client::Value;
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let ack = client
    ///     .put("user-42", &[("cart_value", Value::F64(42.5)), ("plan", Value::Str("pro".into()))])
    ///     .await?;
    /// println!("written as {}", ack.version);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put(&self, key: &str, gauges: &[(&str, Value)]) -> Result<PutAck> {
        let gauges = gauges
            .iter()
            .map(|(name, value)| GaugeWrite {
                name: (*name).to_owned(),
                value: value.clone(),
                ttl_ms: None,
            })
            .collect();
        self.put_with(key, gauges, None).await
    }

    /// Writes gauges with per-feature TTLs and, optionally, an event time (Unix milliseconds) so that late
    /// events lose to newer values. The node refuses event times too far ahead of its clock
    /// ([`ErrorCode::ClockSkew`]).
    ///
    /// ```no_run
    /// use store_client::{GaugeWrite, Value};
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let writes = vec![GaugeWrite {
    ///     name: "session_depth".into(),
    ///     value: Value::I64(3),
    ///     ttl_ms: Some(30 * 60 * 1000),
    /// }];
    /// client.put_with("user-42", writes, Some(1_700_000_000_000)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_with(
        &self,
        key: &str,
        gauges: Vec<GaugeWrite>,
        timestamp_ms: Option<u64>,
    ) -> Result<PutAck> {
        let request = Request::Put {
            key: key.to_owned(),
            gauges,
            timestamp_ms,
            quorum: self.write_quorum,
        };
        match self.write(request).await? {
            Response::Put(ack) => Ok(ack),
            other => Err(unexpected("Put", &other)),
        }
    }

    /// Adds to counters; returns each counter's value after the write (as seen by the coordinating
    /// node), in request order.
    ///
    /// Sent again to another node only if it certainly did not reach the first one: if it fails with
    /// [`Error::Transport`] or [`Error::Timeout`], the increment may or may not have been applied.
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let values = client.increment("user-42", &[("page_views", 1), ("credits", -5)]).await?;
    /// println!("page views now {}", values[0]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn increment(&self, key: &str, deltas: &[(&str, i64)]) -> Result<Vec<i64>> {
        let request = Request::Increment {
            key: key.to_owned(),
            deltas: deltas
                .iter()
                .map(|(name, delta)| CounterDelta {
                    name: (*name).to_owned(),
                    delta: *delta,
                })
                .collect(),
            quorum: self.write_quorum,
        };
        match self.write(request).await? {
            Response::Incremented(values) if values.len() == deltas.len() => Ok(values),
            Response::Incremented(values) => Err(Error::UnexpectedResponse {
                expected: "one value per delta",
                got: format!("{} values for {} deltas", values.len(), deltas.len()),
            }),
            other => Err(unexpected("Incremented", &other)),
        }
    }

    /// Ingests behaviour events (parsed with [`Event::from_segment`](featurestore::ingest::Event)): each
    /// is applied on its user's owner, in order per user, exactly once per message id. Returns one outcome
    /// per event, in order: `Applied` once it is durable on its owner and handed to replication,
    /// `Duplicate` if its message id was already ingested, or `Refused` with the reason.
    ///
    /// Events are grouped by the node their user's owner is (the first replica not judged down), and the
    /// groups go at once. A group of up to [`INGEST_EVENTS_PER_REQUEST`] events is one entry of that
    /// node's coalescing queue: concurrent calls share requests (see "Coalescing" in the
    /// [module docs](crate::client)), and an idle client sends it at once. A larger group, or every group
    /// when `coalesce_requests_per_node` is 0, goes in its own requests of up to
    /// [`INGEST_EVENTS_PER_REQUEST`] events, in order. So a batch of many users costs about one request
    /// per node, not one per user, and a user's events keep their order. A request the chosen node
    /// cannot take falls back along its first user's plan; the node that takes it forwards each event
    /// to its owner. A request that fails is safe to send again: the events are deduplicated by message
    /// id. The call's deadline covers its wait in the queue as well.
    pub async fn ingest(
        &self,
        events: &[featurestore::ingest::Event],
    ) -> Result<Vec<featurestore::wire::event::EventOutcome>> {
        use featurestore::wire::event::WireEvent;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.maybe_refresh(false);
        let view = self.view();
        let keys: Vec<&str> = events.iter().map(|e| e.key()).collect();
        let groups =
            routing::group_keys(&view.ring, view.replication_factor, &keys, self.down_now());
        let coalescing = self.inner.config.coalesce_requests_per_node > 0;
        let queued = |indices: &[usize]| coalescing && indices.len() <= INGEST_EVENTS_PER_REQUEST;
        if let [(node, indices)] = groups.as_slice() {
            if queued(indices) {
                // One group holds every event, in order: its outcomes are the answer.
                let wire = events.iter().map(WireEvent::from).collect();
                return self
                    .ingest_queued(node.clone(), keys[0].to_owned(), wire)
                    .await;
            }
        }
        let mut outcomes: Vec<Option<featurestore::wire::event::EventOutcome>> =
            vec![None; events.len()];
        type Answered = Vec<(Vec<usize>, Vec<featurestore::wire::event::EventOutcome>)>;
        let mut tasks: JoinSet<Result<Answered>> = JoinSet::new();
        for (node, indices) in groups {
            let client = self.clone();
            if queued(&indices) {
                let key = keys[indices[0]].to_owned();
                let wire = indices
                    .iter()
                    .map(|&i| WireEvent::from(&events[i]))
                    .collect();
                tasks.spawn(async move {
                    let got = client.ingest_queued(node, key, wire).await?;
                    Ok(vec![(indices, got)])
                });
                continue;
            }
            let requests: Vec<(String, Vec<usize>, Vec<WireEvent>)> = indices
                .chunks(INGEST_EVENTS_PER_REQUEST)
                .map(|chunk| {
                    let events = chunk.iter().map(|&i| WireEvent::from(&events[i])).collect();
                    (keys[chunk[0]].to_owned(), chunk.to_vec(), events)
                })
                .collect();
            tasks.spawn(async move {
                let mut answered = Vec::new();
                for (key, chunk, events) in requests {
                    let got = client.ingest_request(&key, events).await?;
                    answered.push((chunk, got));
                }
                Ok(answered)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let answered =
                joined.map_err(|e| Error::Transport(format!("an ingest task failed: {e}")))??;
            for (chunk, got) in answered {
                for (i, outcome) in chunk.into_iter().zip(got) {
                    outcomes[i] = Some(outcome);
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.ok_or(Error::UnexpectedResponse {
                    expected: "an outcome for every event",
                    got: "an event no request carried".to_owned(),
                })
            })
            .collect()
    }

    /// How many `Ingest` requests this client (every clone) has sent, coalesced or not: with
    /// [`Client::ingest`]'s coalescing, fewer than the calls when calls are concurrent.
    pub fn ingest_requests_sent(&self) -> u64 {
        self.inner.ingest_requests.load(Ordering::Relaxed)
    }

    /// One `Ingest` request of `events` along `key`'s write plan: exactly one outcome per event.
    async fn ingest_request(
        &self,
        key: &str,
        events: Vec<featurestore::wire::event::WireEvent>,
    ) -> Result<Vec<featurestore::wire::event::EventOutcome>> {
        let count = events.len();
        let frame = codec::encode_request(&Request::Ingest { events })?;
        self.inner.ingest_requests.fetch_add(1, Ordering::Relaxed);
        let response = self
            .routed(key, &frame, Policy::WRITE, Deadline::after(self.deadline))
            .await?;
        match response {
            Response::Ingested(got) if got.len() == count => Ok(got),
            Response::Ingested(got) => Err(Error::UnexpectedResponse {
                expected: "one outcome per event",
                got: format!("{} outcomes for {count} events", got.len()),
            }),
            other => Err(unexpected("Ingested", &other)),
        }
    }

    /// One `Writes` request of `writes` along `key`'s write plan: exactly one reply per write.
    async fn writes_request(&self, key: &str, writes: Vec<WriteOp>) -> Result<Vec<WriteReply>> {
        let count = writes.len();
        let frame = codec::encode_request(&Request::Writes { writes })?;
        let response = self
            .routed(key, &frame, Policy::WRITE, Deadline::after(self.deadline))
            .await?;
        match response {
            Response::Written(got) if got.len() == count => Ok(got),
            Response::Written(got) => Err(Error::UnexpectedResponse {
                expected: "one reply per write",
                got: format!("{} replies for {count} writes", got.len()),
            }),
            other => Err(unexpected("Written", &other)),
        }
    }

    /// Sends a single write (`Put`, `Increment`, `SetFlag`, `Erase`) along its key's write plan:
    /// through the coalescing queue of the plan's first node (see "Coalescing" in the
    /// [module docs](crate::client)), or alone when coalescing is off. An error reply is
    /// [`Error::Server`] (or [`Error::Forbidden`]), so an `Ok` answer is never `Response::Error`.
    async fn write(&self, request: Request) -> Result<Response> {
        let Some(key) = request.key().map(str::to_owned) else {
            return Err(Error::UnexpectedResponse {
                expected: "a single-key write",
                got: request.kind().to_owned(),
            });
        };
        if self.inner.config.coalesce_requests_per_node == 0 {
            let frame = codec::encode_request(&request)?;
            return self
                .routed(&key, &frame, Policy::WRITE, Deadline::after(self.deadline))
                .await;
        }
        let op = WriteOp::try_from(request).map_err(|other| Error::UnexpectedResponse {
            expected: "a single-key write",
            got: other.kind().to_owned(),
        })?;
        let weight = codec::encoded_len(&op)?;
        self.maybe_refresh(false);
        let view = self.view();
        let Some(node) = routing::plan(
            &view.ring,
            view.replication_factor,
            key.as_bytes(),
            true,
            self.down_now(),
        )
        .into_iter()
        .next() else {
            return Err(Error::Transport("no node to send the write to".into()));
        };
        let queue = queue_of(&self.inner.write_queues, &node, self.coalesce_permits());
        let reply = self
            .coalesced(
                queue,
                key,
                op,
                weight,
                WRITES_PER_REQUEST,
                WRITE_BYTES_PER_REQUEST,
                send_writes,
            )
            .await?;
        match Response::from(reply) {
            Response::Error(ErrorReply {
                code: ErrorCode::Forbidden,
                message,
            }) => Err(Error::Forbidden { message }),
            Response::Error(ErrorReply { code, message }) => Err(Error::Server { code, message }),
            response => Ok(response),
        }
    }

    /// Requests in flight per node and queue while coalescing.
    fn coalesce_permits(&self) -> usize {
        self.inner.config.coalesce_requests_per_node as usize
    }

    /// Sends `events` (one group of one call, routed by `key`) through `node`'s ingest queue; returns
    /// this entry's outcomes.
    async fn ingest_queued(
        &self,
        node: NodeId,
        key: String,
        events: Vec<featurestore::wire::event::WireEvent>,
    ) -> Result<Vec<featurestore::wire::event::EventOutcome>> {
        let queue = queue_of(&self.inner.ingest_queues, &node, self.coalesce_permits());
        let weight = events.len();
        self.coalesced(
            queue,
            key,
            events,
            weight,
            usize::MAX,
            INGEST_EVENTS_PER_REQUEST,
            send_events,
        )
        .await
    }

    /// Queues one entry in `queue`, then, whenever this call holds one of the queue's permits, sends
    /// every entry waiting (at most `max_entries`, weighing at most `max_weight`) as one request with
    /// `send`, in a task that keeps the permit until the request is answered: this call's entry among
    /// them, or others' if its own was taken already. Returns this entry's answer. The call's deadline
    /// covers the wait; the request has the latest deadline of the entries it carries.
    #[allow(clippy::too_many_arguments)]
    async fn coalesced<T: Send + 'static, R: Send + 'static>(
        &self,
        queue: Arc<NodeQueue<T, R>>,
        key: String,
        items: T,
        weight: usize,
        max_entries: usize,
        max_weight: usize,
        send: SendBatch<T, R>,
    ) -> Result<R> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        queue.push(Pending {
            key,
            items,
            weight,
            until: Instant::now() + self.deadline,
            reply,
        });
        let ended = || {
            Error::Transport("the request that carried this call ended without an answer".into())
        };
        let wait = async {
            loop {
                tokio::select! {
                    biased;
                    got = &mut answer => return got.unwrap_or_else(|_| Err(ended())),
                    permit = queue.permits.clone().acquire_owned() => {
                        let Ok(permit) = permit else {
                            return Err(Error::Closed);
                        };
                        let batch = queue.take(max_entries, max_weight);
                        if batch.is_empty() {
                            // Nothing waits: this call's entry is in a request already.
                            drop(permit);
                            return (&mut answer).await.unwrap_or_else(|_| Err(ended()));
                        }
                        let client = self.with_deadline(coalesce::budget(&batch, Instant::now()));
                        tokio::spawn(async move {
                            send(client, batch).await;
                            drop(permit);
                        });
                    }
                }
            }
        };
        match tokio::time::timeout(self.deadline, wait).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                after: self.deadline,
            }),
        }
    }

    /// Writes a flag with the causal context of the read it is based on (the empty context if the writer
    /// saw nothing). Returns the flag after the write: every sibling, and the context for the next write.
    ///
    /// A write whose context covers the current siblings replaces them; a write that did not see them is
    /// kept next to them as a sibling.
    ///
    /// ```no_run
    /// use store_client::{CausalContext, FeatureView};
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// // Read the flag's context first, so the write replaces what was read.
    /// let context = match client.get("user-42", Some(&["vip"])).await? {
    ///     Some(profile) => match profile.features.get("vip") {
    ///         Some(FeatureView::Flag(flag)) => flag.context.clone(),
    ///         _ => CausalContext::default(),
    ///     },
    ///     None => CausalContext::default(),
    /// };
    /// let flag = client.set_flag("user-42", "vip", true, &context, None).await?;
    /// assert!(!flag.values.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn set_flag(
        &self,
        key: &str,
        name: &str,
        value: bool,
        context: &CausalContext,
        ttl_ms: Option<u64>,
    ) -> Result<FlagView> {
        let request = Request::SetFlag {
            key: key.to_owned(),
            name: name.to_owned(),
            value,
            context: context.clone(),
            ttl_ms,
            quorum: self.write_quorum,
        };
        match self.write(request).await? {
            Response::Flag(flag) => Ok(flag),
            other => Err(unexpected("Flag", &other)),
        }
    }

    /// Erases the entity: everything written to it up to now is dropped everywhere, for good. Returns the
    /// erasure watermark.
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let watermark = client.erase("user-42").await?;
    /// println!("erased up to {watermark}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn erase(&self, key: &str) -> Result<Marker> {
        let request = Request::Erase {
            key: key.to_owned(),
            quorum: self.write_quorum,
        };
        match self.write(request).await? {
            Response::Erased { watermark } => Ok(watermark),
            other => Err(unexpected("Erased", &other)),
        }
    }

    /// The status of the [connected node](Client::connected_node) (or, if it fails, of the first other
    /// node that answers): counters, ring version, and every member with its state, the node's liveness
    /// verdict and the hints it holds for it.
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let status = client.status().await?;
    /// println!("{} up for {} ms, ring version {}", status.node_id, status.uptime_ms, status.ring_version);
    /// for m in &status.members {
    ///     println!("  {} {:?} {:?} hints={}", m.id, m.state, m.liveness, m.hints_queued);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn status(&self) -> Result<NodeStatus> {
        let frame = codec::encode_request(&Request::Status)?;
        match self.at_home(&frame, Policy::READ).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected("Status", &other)),
        }
    }

    /// The status of `node` (no other node is asked).
    ///
    /// Errors: [`Error::UnknownNode`] if the node is neither in the cached view nor a seed.
    ///
    /// ```no_run
    /// use store_client::NodeId;
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let status = client.status_of(&NodeId::new("n2")?).await?;
    /// println!("n2 holds {} entities", status.entities);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn status_of(&self, node: &NodeId) -> Result<NodeStatus> {
        match self
            .at_node(
                node,
                &Request::Status,
                Policy::READ,
                Deadline::after(self.deadline),
            )
            .await?
        {
            Response::Status(status) => Ok(status),
            other => Err(unexpected("Status", &other)),
        }
    }

    /// Admin: `node`'s raw local state of `key` (values with their full CRDT metadata), without merging
    /// other replicas or filtering expired data; `None` if the node holds nothing for it. Comparing the
    /// answers of every replica shows whether they converged.
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let replicas = client.replicas("user-42");
    /// let mut states = Vec::new();
    /// for node in &replicas {
    ///     states.push(client.local_state(node, "user-42").await?);
    /// }
    /// let converged = states.windows(2).all(|w| w[0] == w[1]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn local_state(&self, node: &NodeId, key: &str) -> Result<Option<Profile>> {
        let request = Request::LocalState {
            key: key.to_owned(),
        };
        match self
            .at_node(node, &request, Policy::READ, Deadline::after(self.deadline))
            .await?
        {
            Response::LocalState(profile) => Ok(profile),
            other => Err(unexpected("LocalState", &other)),
        }
    }

    /// Admin: `node`'s anti-entropy digests of the keys it shares with `peer`, one per bucket. Equal
    /// digests on both sides (`digests(a, b) == digests(b, a)`) mean equal replicas.
    ///
    /// ```no_run
    /// use store_client::NodeId;
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let (a, b) = (NodeId::new("n1")?, NodeId::new("n2")?);
    /// let in_sync = client.digests(&a, &b).await? == client.digests(&b, &a).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn digests(&self, node: &NodeId, peer: &NodeId) -> Result<Vec<u64>> {
        let request = Request::Digests { peer: peer.clone() };
        match self
            .at_node(node, &request, Policy::READ, Deadline::after(self.deadline))
            .await?
        {
            Response::Digests(digests) => Ok(digests),
            other => Err(unexpected("Digests", &other)),
        }
    }

    /// Admin: asks `node` to leave the cluster (it hands every range over, then marks itself `Left`).
    /// Returns once the node has started leaving. Not sent again if the answer is lost.
    ///
    /// ```no_run
    /// use store_client::NodeId;
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// client.leave(&NodeId::new("n3")?).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn leave(&self, node: &NodeId) -> Result<()> {
        match self
            .at_node(
                node,
                &Request::Leave,
                Policy::WRITE,
                Deadline::after(self.deadline),
            )
            .await?
        {
            Response::Leaving => Ok(()),
            other => Err(unexpected("Leaving", &other)),
        }
    }

    /// Admin: a page of `node`'s dead-letter queue: entries with ids above `after` (`None`: from the
    /// start), at most `limit` (the node also caps a page at `max_batch` entries and half its
    /// `max_frame_bytes`). Ask again with `after = page.next` while it is `Some`. The queue is node-local,
    /// so a cluster-wide listing asks every member.
    ///
    /// ```no_run
    /// use store_client::NodeId;
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let node = NodeId::new("n1")?;
    /// let mut after = None;
    /// loop {
    ///     let page = client.dead_letters(&node, after, 100).await?;
    ///     for entry in &page.entries {
    ///         println!("#{} {:?} {}: {}", entry.id, entry.code, entry.source, entry.reason);
    ///     }
    ///     match page.next {
    ///         Some(next) => after = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dead_letters(
        &self,
        node: &NodeId,
        after: Option<u64>,
        limit: u32,
    ) -> Result<DeadLetterPage> {
        let request = Request::DeadLetters { after, limit };
        match self
            .at_node(node, &request, Policy::READ, Deadline::after(self.deadline))
            .await?
        {
            Response::DeadLetters(page) => Ok(page),
            other => Err(unexpected("DeadLetters", &other)),
        }
    }

    /// Admin: entry `id` of `node`'s dead-letter queue, `None` if it has none of that id.
    pub async fn dead_letter(&self, node: &NodeId, id: u64) -> Result<Option<DeadLetter>> {
        let request = Request::DeadLetter { id };
        match self
            .at_node(node, &request, Policy::READ, Deadline::after(self.deadline))
            .await?
        {
            Response::DeadLetter(entry) => Ok(entry),
            other => Err(unexpected("DeadLetter", &other)),
        }
    }

    /// Admin: replays entries of `node`'s dead-letter queue (`None`: every entry) through its ingest
    /// path with its current definitions, deduplicated by message id: applied entries and duplicates are
    /// removed, entries refused again stay with the new reason. One outcome per entry, in id order.
    /// Every entry is sent in requests of at most [`DEAD_LETTER_IDS_PER_REQUEST`] ids (or one request
    /// per page the node chooses, for `None`). Not retried if an answer is lost (a replay again is
    /// harmless: deduplicated).
    ///
    /// ```no_run
    /// use store_client::NodeId;
    ///
    /// # async fn example(client: store_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// for outcome in client.replay_dead_letters(&NodeId::new("n1")?, None).await? {
    ///     println!("#{}: {:?}", outcome.id, outcome.result);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn replay_dead_letters(
        &self,
        node: &NodeId,
        ids: Option<&[u64]>,
    ) -> Result<Vec<ReplayOutcome>> {
        let mut outcomes = Vec::new();
        let send = |request: Request| async move {
            match self
                .at_node(
                    node,
                    &request,
                    Policy::WRITE,
                    Deadline::after(self.deadline),
                )
                .await?
            {
                Response::Replayed(report) => Ok(report),
                other => Err(unexpected("Replayed", &other)),
            }
        };
        match ids {
            Some(ids) => {
                for chunk in ids.chunks(DEAD_LETTER_IDS_PER_REQUEST) {
                    let report = send(Request::ReplayDeadLetters {
                        ids: Some(chunk.to_vec()),
                        after: None,
                    })
                    .await?;
                    outcomes.extend(report.outcomes);
                }
            }
            None => {
                let mut after = None;
                loop {
                    let report = send(Request::ReplayDeadLetters { ids: None, after }).await?;
                    outcomes.extend(report.outcomes);
                    match report.next {
                        Some(next) if after.is_none_or(|a| next > a) => after = Some(next),
                        _ => break,
                    }
                }
            }
        }
        Ok(outcomes)
    }

    /// Admin: removes entries of `node`'s dead-letter queue (`None`: every entry), in requests of at most
    /// [`DEAD_LETTER_IDS_PER_REQUEST`] ids.
    pub async fn purge_dead_letters(&self, node: &NodeId, ids: Option<&[u64]>) -> Result<Purged> {
        let send = |request: Request| async move {
            match self
                .at_node(
                    node,
                    &request,
                    Policy::WRITE,
                    Deadline::after(self.deadline),
                )
                .await?
            {
                Response::Purged(purged) => Ok(purged),
                other => Err(unexpected("Purged", &other)),
            }
        };
        let Some(ids) = ids else {
            return send(Request::PurgeDeadLetters { ids: None }).await;
        };
        let mut total = Purged {
            removed: 0,
            missing: Vec::new(),
        };
        for chunk in ids.chunks(DEAD_LETTER_IDS_PER_REQUEST) {
            let purged = send(Request::PurgeDeadLetters {
                ids: Some(chunk.to_vec()),
            })
            .await?;
            total.removed += purged.removed;
            total.missing.extend(purged.missing);
        }
        Ok(total)
    }

    /// Closes every connection gracefully (application code 0, reason `bye`), aborts the dials in
    /// progress, and waits until the close of every connection established to a node that is up has
    /// been sent (a millisecond or so; at most 250 ms), so that the nodes learn about it. A handshake
    /// that never finished, or a connection to a node judged down, is not waited for. Afterwards every
    /// request on this client and its clones fails with [`Error::Closed`]; requests still in flight
    /// fail with [`Error::Transport`] or [`Error::Closed`].
    pub async fn close(&self) {
        self.inner.dialer.closed.store(true, Ordering::SeqCst);
        let nodes: Vec<Arc<NodeConn>> = lock(&self.inner.pool).values().cloned().collect();
        let closing: Vec<transport::Closing> =
            nodes.iter().filter_map(|node| node.close()).collect();
        let begin = Instant::now();
        // A closed connection sends nothing but its CONNECTION_CLOSE, so one more datagram means the
        // close is out; waiting for the endpoint to be idle would wait out the whole drain period
        // (three probe timeouts) instead.
        while closing.iter().any(|c| !c.sent()) {
            if begin.elapsed() >= CLOSE_WAIT {
                debug!("closes not sent after {CLOSE_WAIT:?}; not waiting longer");
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::task::yield_now().await;
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let view = self.view();
        f.debug_struct("Client")
            .field("connected_node", &self.connected_node())
            .field("ring_version", &view.ring.version())
            .field("ring", &view.ring.nodes())
            .field("replication_factor", &view.replication_factor)
            .field("read_quorum", &self.read_quorum)
            .field("write_quorum", &self.write_quorum)
            .field("deadline", &self.deadline)
            .field("closed", &self.inner.dialer.closed.load(Ordering::Relaxed))
            .field("seeds", &self.inner.config.nodes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn client_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<Client>();
    }

    #[test]
    fn projection_copies_names() {
        assert_eq!(projection(None), None);
        assert_eq!(
            projection(Some(&["a", "b"])),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn only_unreachable_or_unavailable_groups_fall_back() {
        assert!(group_falls_back(&Error::Transport("x".into())));
        assert!(group_falls_back(&Error::Timeout {
            after: Duration::from_secs(1)
        }));
        assert!(group_falls_back(&Error::Connect { attempts: vec![] }));
        assert!(group_falls_back(&Error::UnknownNode("n9".into())));
        assert!(group_falls_back(&Error::Server {
            code: ErrorCode::Unavailable,
            message: String::new()
        }));
        assert!(!group_falls_back(&Error::Server {
            code: ErrorCode::LimitExceeded,
            message: String::new()
        }));
        assert!(!group_falls_back(&Error::Closed));
    }

    #[tokio::test]
    async fn connect_fails_with_missing_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let config = ClientConfig::new(
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("c.key"),
            vec![crate::NodeAddr::new("n1", "127.0.0.1:9".parse().unwrap())],
        );
        let err = Client::connect(config).await.unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
    }
}
