//! The async, ring-aware [`Client`].
//!
//! # Cluster view
//!
//! [`Client::connect`] connects to the first configured node (a *seed*) whose handshake succeeds, asks it
//! for the cluster ([`Request::Cluster`]: the membership table, virtual nodes per member and the
//! replication factor N), and builds the *current* ring from it exactly as the nodes do (`Active` and
//! `Leaving` members, [`MembershipTable::current_ring`](featurestore::cluster::membership::MembershipTable::current_ring)).
//! If the seed cannot describe the cluster (an older node, or an error), the client routes over a ring made
//! of the seeds (N=3) until a later refresh succeeds.
//!
//! The view is refreshed in the background (one refresh at a time, from a node the client is connected to,
//! else from any reachable node) by the first request made after it is `ring_refresh_ms` old, and after
//! any transport error (at most every 100 ms). Answers are merged into the cached membership table as the
//! nodes merge theirs (per member, the higher version wins), so the view never goes back to an older
//! ring, whichever node answers. [`Client::cluster`] returns the cached view; [`Client::refresh_cluster`]
//! fetches it now.
//!
//! # Connections
//!
//! One QUIC connection (mutual TLS against the cluster CA, server name `<id>.node.featurestore`) per node,
//! dialed when a request first needs that node, redialed when it has closed, shared by every clone of the
//! client. Each request has its own bidirectional stream, so requests from many tasks run concurrently
//! and cannot interleave. Addresses come from the membership table (members in state `Left` are skipped;
//! a member publishing an undialable address such as `0.0.0.0:7401` gets its seed's configured address).
//!
//! # Routing and retries
//!
//! A request for a key goes to the key's replicas, `ring.preference_list(key, N)`, tried in order. A node
//! that failed (could not be connected, transport error, timeout) is *backed off*: tried only after the
//! others, for one second ([`NODE_BACKOFF`](crate::routing::NODE_BACKOFF)), doubling with each failure
//! after a backoff up to eight ([`MAX_NODE_BACKOFF`](crate::routing::MAX_NODE_BACKOFF)); any answer from
//! it clears that.
//!
//! - **Reads** (`Get`, `GetMany`, `LocalState`, `Status`, `Cluster`, `Digests`) move on to the next
//!   replica on any connection failure, transport error or timeout, and on an
//!   [`ErrorCode::Unavailable`] reply (the node could not reach the read quorum). A node whose connection
//!   was lost in the middle of the read (it restarted, or closed the connection) gets one more try on a
//!   fresh connection after the other replicas. Reads never go to nodes outside the preference list.
//! - **Writes** (`Put`, `Increment`, `SetFlag`, `Erase`, and `Leave`) move on to the next node **only if
//!   the request certainly did not reach the node**: connecting failed, or the stream could not be
//!   opened. Once the first byte has been handed to QUIC, a failure (transport error, timeout) is
//!   returned to the caller: the write may have been applied, and applying an increment twice would be
//!   wrong. If no replica that is not backed off can be reached, the write goes to the other members
//!   not backed off, in ring order from the key (such a node accepts it as a sloppy-quorum coordinator
//!   and hands it over to the replicas later: hinted handoff), and only then to the backed-off replicas.
//! - Every other error reply of a node is returned as [`Error::Server`] without retry; malformed answers
//!   ([`Error::Protocol`], [`Error::UnexpectedResponse`]) are returned at once as well.
//! - When every candidate fails, the last error other than a connection failure is returned; if every
//!   candidate failed to connect, one [`Error::Connect`] lists every attempt.
//! - Requests bound to no key ([`Client::status`], [`Client::send_raw`], and `Status`, `Cluster`,
//!   `Digests`, `Leave` through [`Client::request`]) go to the [connected node](Client::connected_node)
//!   first, then to the seeds and the other members, with the same read and write rules. Node-directed
//!   calls ([`Client::status_of`], [`Client::local_state`], [`Client::digests`], [`Client::leave`]) ask
//!   the named node only.
//!
//! [`Client::get_many`] groups the keys by the first replica to try, sends one `GetMany` per node
//! concurrently, and reassembles the answers in request order; the keys of a node that fails (as above,
//! including `Unavailable`) are then read one by one with the routing of [`Client::get`].
//!
//! # Bounds
//!
//! - Every handshake is bounded by `connect_timeout_ms`; every attempt (open a stream, send, receive) by
//!   `request_timeout_ms`. A request may make one attempt per candidate node (plus the one retry of a
//!   read on a lost connection), so a read of a key whose N replicas all hang takes about N times
//!   `request_timeout_ms`.
//! - Every response header is checked against `max_frame_bytes` before the payload is allocated; the
//!   payload is read exactly and decoded with the core's bounded decoder.
//!
//! # Caveats
//!
//! - Routing is a best effort on a view that may be up to `ring_refresh_ms` old: during a join or leave
//!   a request may reach a node that is no longer (or not yet) a replica; nodes coordinate such requests
//!   themselves, so this costs a hop, not correctness.
//! - Quorums are enforced by the node that coordinates the request, not by the client.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use featurestore::wire::client::{
    ClusterView, CounterDelta, ErrorReply, GaugeWrite, NodeStatus, PutAck,
};
use featurestore::wire::codec::{self, FRAME_HEADER_BYTES};
use featurestore::{
    CausalContext, ErrorCode, FlagView, Marker, NodeId, Profile, ProfileView, Request, Response,
    Value,
};
use quinn::Connection;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::error::{ConnectAttempt, Error, Result};
use crate::routing::{self, Backoff, Merged, View};
use crate::tls::{self, CLIENT_ALPN};
use crate::transport::{self, lock, Endpoints, Failure, NodeConn};

/// The longest [`Client::close`] waits for the endpoints to become idle.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The shortest time between two refreshes of the cluster view triggered by transport errors.
const ERROR_REFRESH_GAP: Duration = Duration::from_millis(100);

/// A ring-aware connection to a featurestore cluster.
///
/// Cheap to clone (an `Arc` and two quorums); clones share the connections and the cluster view and may
/// be used from many tasks at once. Dropping the last clone closes the connections abruptly; call
/// [`Client::close`] to close them gracefully. See the [module docs](crate::client) for routing and
/// retries.
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
}

struct Inner {
    config: ClientConfig,
    /// The configured seeds, in order.
    seeds: Vec<(NodeId, SocketAddr)>,
    endpoints: Endpoints,
    view: StdMutex<Arc<View>>,
    /// When a node last confirmed the view.
    fetched: StdMutex<Instant>,
    /// When the last background refresh started.
    refresh_started: StdMutex<Option<Instant>>,
    /// Set while a background refresh runs.
    refreshing: AtomicBool,
    pool: StdMutex<HashMap<NodeId, Arc<NodeConn>>>,
    backoff: StdMutex<Backoff>,
    /// The node that answered the last node-independent request (status, cluster, raw frames).
    home: StdMutex<NodeId>,
    closed: AtomicBool,
}

/// Whether a request may be sent again after it may have reached a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Yes: it does not change anything (reads).
    Read,
    /// No: only if it certainly did not reach the node (writes).
    Write,
}

/// Clears [`Inner::refreshing`] when the background refresh ends, even if it panics.
struct RefreshGuard(Arc<Inner>);

impl Drop for RefreshGuard {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::SeqCst);
    }
}

fn unexpected(expected: &'static str, got: &Response) -> Error {
    Error::UnexpectedResponse {
        expected,
        got: got.kind().to_owned(),
    }
}

fn projection(features: Option<&[&str]>) -> Option<Vec<String>> {
    features.map(|names| names.iter().map(|n| (*n).to_owned()).collect())
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
    /// Validates `config`, loads the certificates, connects to the first seed (`[[nodes]]`, in order)
    /// whose handshake succeeds, and learns the cluster from it (see the [module docs](crate::client)).
    ///
    /// Must be called within a tokio runtime. Errors: [`Error::Config`], [`Error::Tls`] (certificate
    /// files), [`Error::Connect`] listing every seed tried. A seed that connects but cannot describe the
    /// cluster is not an error: the client then routes over the seeds and keeps asking in the background.
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
        let view = View::from_seeds(&seeds);
        let first = seeds[0].0.clone();
        let client = Client {
            read_quorum: config.read_quorum,
            write_quorum: config.write_quorum,
            inner: Arc::new(Inner {
                endpoints: Endpoints::new(quic),
                seeds,
                config,
                view: StdMutex::new(Arc::new(view)),
                fetched: StdMutex::new(Instant::now()),
                refresh_started: StdMutex::new(None),
                refreshing: AtomicBool::new(false),
                pool: StdMutex::new(HashMap::new()),
                backoff: StdMutex::new(Backoff::default()),
                home: StdMutex::new(first),
                closed: AtomicBool::new(false),
            }),
        };

        let mut attempts: Vec<ConnectAttempt> = Vec::new();
        let mut home = None;
        for (id, _) in &client.inner.seeds {
            let Some(node) = client.node_conn(id) else {
                continue;
            };
            match node
                .connection(
                    &client.inner.endpoints,
                    client.inner.config.connect_timeout(),
                    &client.inner.closed,
                )
                .await
            {
                Ok(_) => {
                    home = Some(id.clone());
                    break;
                }
                Err(Error::Connect { attempts: failed }) => attempts.extend(failed),
                Err(other) => return Err(other),
            }
        }
        let Some(home) = home else {
            return Err(Error::Connect { attempts });
        };
        *lock(&client.inner.home) = home.clone();

        let frame = codec::encode_request(&Request::Cluster)?;
        match client
            .run(vec![home.clone()], Retry::Read, |c| client.typed(c, &frame))
            .await
        {
            Ok((_, Response::Cluster(cluster))) => {
                client.apply(cluster);
            }
            Ok((_, other)) => {
                warn!(node = %home, got = other.kind(), "the seed did not describe the cluster; routing over the seeds");
            }
            Err(error) => {
                warn!(node = %home, %error, "the seed did not describe the cluster; routing over the seeds");
            }
        }
        Ok(client)
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
            inner: self.inner.clone(),
            read_quorum: read,
            write_quorum: write,
        }
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
                .filter(|n| n.open().is_some())
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
        let (_, response) = self
            .run(nodes, Retry::Read, |c| self.typed(c, &frame))
            .await?;
        match response {
            Response::Cluster(cluster) => Ok(self.apply(cluster)),
            other => Err(unexpected("Cluster", &other)),
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
                    node.close();
                }
                keep
            });
        }
        view.cluster.clone()
    }

    /// Starts a background refresh of the cluster view if one is due: the view is older than
    /// `ring_refresh_ms` (and so is the last refresh), or `after_error` and the last refresh started
    /// at least [`ERROR_REFRESH_GAP`] ago. At most one runs at a time.
    fn maybe_refresh(&self, after_error: bool) {
        if self.inner.closed.load(Ordering::SeqCst) || self.inner.refreshing.load(Ordering::SeqCst)
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
        let fresh = Arc::new(NodeConn::new(node.clone(), addr));
        if let Some(old) = pool.insert(node.clone(), fresh.clone()) {
            old.close();
        }
        Some(fresh)
    }

    /// Whether `node` failed recently, for each node at one instant.
    fn backed_off_now(&self) -> impl Fn(&NodeId) -> bool {
        let backed_off = lock(&self.inner.backoff).backed_off(Instant::now());
        move |node| backed_off.contains(node)
    }

    /// The nodes for requests bound to no key or node: the last node that answered one, the seeds, then
    /// every other known node; those that failed recently last.
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
        let backed_off = self.backed_off_now();
        let (mut fresh, late): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|n| !backed_off(n));
        fresh.extend(late);
        fresh
    }

    /// One typed exchange on `conn`; an error reply becomes a [`Failure`] carrying [`Error::Server`].
    async fn typed(&self, conn: Connection, frame: &[u8]) -> Result<Response, Failure> {
        let config = &self.inner.config;
        match transport::exchange(
            &conn,
            frame,
            config.request_timeout(),
            config.max_frame_bytes,
        )
        .await?
        {
            Response::Error(ErrorReply { code, message }) => Err(Failure {
                error: Error::Server { code, message },
                sent: true,
                conn_lost: false,
            }),
            response => Ok(response),
        }
    }

    /// Tries `nodes` in order with `op` until one succeeds, following the retry rules of the
    /// [module docs](crate::client). Returns the node that answered and its answer.
    async fn run<T, F, Fut>(&self, nodes: Vec<NodeId>, retry: Retry, op: F) -> Result<(NodeId, T)>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut queue: VecDeque<NodeId> = nodes.into();
        let mut second_chance: Vec<NodeId> = Vec::new();
        let mut connect_failures: Vec<ConnectAttempt> = Vec::new();
        let mut last: Option<Error> = None;
        while let Some(node) = queue.pop_front() {
            let outcome = match self.node_conn(&node) {
                None => Err(Failure::unsent(Error::UnknownNode(node.to_string()))),
                Some(slot) => match slot
                    .connection(
                        &self.inner.endpoints,
                        self.inner.config.connect_timeout(),
                        &self.inner.closed,
                    )
                    .await
                {
                    Ok(conn) => op(conn).await,
                    Err(error) => Err(Failure::unsent(error)),
                },
            };
            let failure = match outcome {
                Ok(value) => {
                    lock(&self.inner.backoff).succeeded(&node);
                    return Ok((node, value));
                }
                Err(failure) => failure,
            };
            if matches!(failure.error, Error::Closed) {
                return Err(Error::Closed);
            }
            let unreachable = failure.is_unreachable();
            if unreachable {
                lock(&self.inner.backoff).failed(&node, Instant::now());
                self.maybe_refresh(true);
            } else if matches!(failure.error, Error::Server { .. }) {
                lock(&self.inner.backoff).succeeded(&node);
            }
            let unavailable = failure.error.server_code() == Some(ErrorCode::Unavailable);
            let move_on = !failure.sent || (retry == Retry::Read && (unreachable || unavailable));
            if !move_on {
                return Err(failure.error);
            }
            if retry == Retry::Read
                && failure.sent
                && failure.conn_lost
                && !second_chance.contains(&node)
            {
                second_chance.push(node.clone());
                queue.push_back(node.clone());
            }
            debug!(%node, error = %failure.error, sent = failure.sent, "request failed; trying the next node");
            match failure.error {
                Error::Connect { attempts } => connect_failures.extend(attempts),
                error => last = Some(error),
            }
        }
        Err(match last {
            Some(error) => error,
            None if !connect_failures.is_empty() => Error::Connect {
                attempts: connect_failures,
            },
            None => Error::Transport("no node to send the request to".into()),
        })
    }

    /// Sends `frame` (a request about `key`) along the key's plan.
    async fn routed(&self, key: &str, frame: &[u8], write: bool) -> Result<Response> {
        self.maybe_refresh(false);
        let view = self.view();
        let nodes = routing::plan(
            &view.ring,
            view.replication_factor,
            key.as_bytes(),
            write,
            self.backed_off_now(),
        );
        let retry = if write { Retry::Write } else { Retry::Read };
        let (_, response) = self.run(nodes, retry, |c| self.typed(c, frame)).await?;
        Ok(response)
    }

    /// Sends `frame` (a request bound to no key) along [`Client::home_plan`].
    async fn at_home(&self, frame: &[u8], retry: Retry) -> Result<Response> {
        self.maybe_refresh(false);
        let (node, response) = self
            .run(self.home_plan(), retry, |c| self.typed(c, frame))
            .await?;
        *lock(&self.inner.home) = node;
        Ok(response)
    }

    /// Sends `request` to `node` only.
    async fn at_node(&self, node: &NodeId, request: &Request, retry: Retry) -> Result<Response> {
        let frame = codec::encode_request(request)?;
        let (_, response) = self
            .run(vec![node.clone()], retry, |c| self.typed(c, &frame))
            .await?;
        Ok(response)
    }

    /// Sends any request and returns the answer, routed by what it is about:
    ///
    /// - `Get` and `LocalState` to the replicas of the key (read rules); `GetMany` as
    ///   [`Client::get_many`] does;
    /// - `Put`, `Increment`, `SetFlag` and `Erase` to the replicas of the key (write rules);
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
        match &request {
            Request::Get { key, .. } | Request::LocalState { key } => {
                self.routed(key, &frame, false).await
            }
            Request::Put { key, .. }
            | Request::Increment { key, .. }
            | Request::SetFlag { key, .. }
            | Request::Erase { key, .. } => self.routed(key, &frame, true).await,
            Request::Leave => self.at_home(&frame, Retry::Write).await,
            _ => self.at_home(&frame, Retry::Read).await,
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
        let config = &self.inner.config;
        let limit = config.max_frame_bytes as usize + FRAME_HEADER_BYTES;
        let timeout = config.request_timeout();
        let (node, reply) = self
            .run(self.home_plan(), Retry::Write, |c| async move {
                transport::exchange_raw(&c, bytes, timeout, limit).await
            })
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
        self.get_owned(key, projection(features), r).await
    }

    async fn get_owned(
        &self,
        key: &str,
        features: Option<Vec<String>>,
        quorum: u8,
    ) -> Result<Option<ProfileView>> {
        let frame = codec::encode_request(&Request::Get {
            key: key.to_owned(),
            features,
            quorum,
        })?;
        match self.routed(key, &frame, false).await? {
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
        self.maybe_refresh(false);
        let view = self.view();
        let groups = routing::group_keys(
            &view.ring,
            view.replication_factor,
            &keys,
            self.backed_off_now(),
        );
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
                let outcome = client.at_node(&node, &request, Retry::Read).await;
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
            tasks.spawn(async move { (i, client.get_owned(&key, features, quorum).await) });
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
        let frame = codec::encode_request(&request)?;
        match self.routed(key, &frame, true).await? {
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
        let frame = codec::encode_request(&request)?;
        match self.routed(key, &frame, true).await? {
            Response::Incremented(values) if values.len() == deltas.len() => Ok(values),
            Response::Incremented(values) => Err(Error::UnexpectedResponse {
                expected: "one value per delta",
                got: format!("{} values for {} deltas", values.len(), deltas.len()),
            }),
            other => Err(unexpected("Incremented", &other)),
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
        let frame = codec::encode_request(&request)?;
        match self.routed(key, &frame, true).await? {
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
        let frame = codec::encode_request(&request)?;
        match self.routed(key, &frame, true).await? {
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
        match self.at_home(&frame, Retry::Read).await? {
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
        match self.at_node(node, &Request::Status, Retry::Read).await? {
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
        match self.at_node(node, &request, Retry::Read).await? {
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
        match self.at_node(node, &request, Retry::Read).await? {
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
        match self.at_node(node, &Request::Leave, Retry::Write).await? {
            Response::Leaving => Ok(()),
            other => Err(unexpected("Leaving", &other)),
        }
    }

    /// Closes every connection gracefully (application code 0, reason `bye`) and waits, at most one
    /// second, for the endpoints to become idle, so that the closes reach the nodes. (The bound matters
    /// after a failed connection attempt: an abandoned handshake to an unreachable node would otherwise
    /// keep an endpoint busy for several seconds.) Afterwards every request on this client and its clones
    /// fails with [`Error::Closed`]; requests still in flight fail with [`Error::Transport`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let nodes: Vec<Arc<NodeConn>> = lock(&self.inner.pool).values().cloned().collect();
        for node in nodes {
            node.close();
        }
        let endpoints = self.inner.endpoints.bound();
        let idle = async {
            for endpoint in &endpoints {
                endpoint.wait_idle().await;
            }
        };
        if tokio::time::timeout(CLOSE_WAIT, idle).await.is_err() {
            debug!("endpoints not idle after {CLOSE_WAIT:?}; not waiting longer");
        }
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
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
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
