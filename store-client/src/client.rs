//! The async [`Client`]: one QUIC connection to a node, one bidirectional stream per request.
//!
//! Guarantees:
//! - One long-lived connection is shared by every clone of a [`Client`]; each request opens its own stream
//!   on it, so requests from many tasks run concurrently and cannot interleave.
//! - Every response header is checked against `max_frame_bytes` before the payload is allocated; the payload
//!   is read exactly and decoded with the core's bounded decoder.
//! - Every request attempt is bounded by `request_timeout_ms`, every handshake by `connect_timeout_ms`.
//! - When the connection has closed (node restarted, idle timeout, network loss), the next request
//!   reconnects first, trying the configured nodes in order. Concurrent callers share one reconnection (a
//!   mutex guards it, and callers that waited for a failed attempt get its error instead of dialing again).
//! - A read (`Get`, `GetMany`, `Status`) that fails because the connection was lost mid-request is retried
//!   once on a fresh connection. Writes are never retried: a write whose connection died may have been
//!   applied, and applying a counter increment twice would be wrong. The caller decides.
//!
//! Caveat: the client talks to one node at a time and relies on that node to route and replicate; it is
//! not yet ring-aware (design brief §10).

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::{Duration, Instant};

use featurestore::codec::{self, FRAME_HEADER_BYTES};
use featurestore::protocol::{CounterDelta, ErrorReply, GaugeWrite, NodeStatus, PutAck};
use featurestore::{CausalContext, FlagView, Marker, ProfileView, Request, Response, Value};
use quinn::{
    Connection, Endpoint, ReadExactError, ReadToEndError, RecvStream, SendStream, WriteError,
};
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::error::{ConnectAttempt, Error, Result};
use crate::tls::{self, CLIENT_ALPN};

/// The longest [`Client::close`] waits for the endpoint to become idle.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A connection to a featurestore cluster.
///
/// Cheap to clone (an `Arc`); clones share the connection and may be used from many tasks at once. Dropping
/// the last clone closes the connection abruptly; call [`Client::close`] to close it gracefully.
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
}

struct Inner {
    config: ClientConfig,
    endpoints: Endpoints,
    /// The connection in use and the node it goes to.
    current: StdMutex<Current>,
    /// Held while reconnecting; holds the last failed reconnection, to hand to callers that waited for it.
    reconnect: tokio::sync::Mutex<Option<(Instant, Vec<ConnectAttempt>)>>,
    closed: AtomicBool,
}

#[derive(Clone)]
struct Current {
    node: String,
    conn: Connection,
}

/// One client endpoint per address family used by the configured nodes.
struct Endpoints {
    v4: Option<Endpoint>,
    v6: Option<Endpoint>,
}

impl Endpoints {
    fn new(config: &ClientConfig, quic: &quinn::ClientConfig) -> Result<Self> {
        let bind = |local: SocketAddr| -> Result<Endpoint> {
            let mut endpoint = Endpoint::client(local).map_err(|e| {
                Error::Transport(format!("cannot bind a UDP socket to {local}: {e}"))
            })?;
            endpoint.set_default_client_config(quic.clone());
            Ok(endpoint)
        };
        let v4 = if config.nodes.iter().any(|n| n.addr.is_ipv4()) {
            Some(bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?)
        } else {
            None
        };
        let v6 = if config.nodes.iter().any(|n| n.addr.is_ipv6()) {
            Some(bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))?)
        } else {
            None
        };
        Ok(Endpoints { v4, v6 })
    }

    fn for_addr(&self, addr: SocketAddr) -> Option<&Endpoint> {
        if addr.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }

    fn all(&self) -> impl Iterator<Item = &Endpoint> {
        self.v4.iter().chain(self.v6.iter())
    }
}

/// Connects to the configured nodes in order; returns the first connection whose handshake succeeds.
async fn dial(config: &ClientConfig, endpoints: &Endpoints) -> Result<Current> {
    let mut attempts = Vec::new();
    for node in &config.nodes {
        let attempt = async {
            let endpoint = endpoints
                .for_addr(node.addr)
                .ok_or_else(|| "no endpoint for this address family".to_owned())?;
            let connecting = endpoint
                .connect(node.addr, &node.server_name())
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(config.connect_timeout(), connecting).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "handshake timed out after {} ms",
                    config.connect_timeout_ms
                )),
            }
        };
        match attempt.await {
            Ok(conn) => {
                info!(node = %node.name, addr = %node.addr, "connected");
                return Ok(Current {
                    node: node.name.clone(),
                    conn,
                });
            }
            Err(error) => {
                warn!(node = %node.name, addr = %node.addr, %error, "connection attempt failed");
                attempts.push(ConnectAttempt {
                    node: node.name.clone(),
                    addr: node.addr,
                    error,
                });
            }
        }
    }
    Err(Error::Connect { attempts })
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

async fn read_exact(recv: &mut RecvStream, buf: &mut [u8], what: &str) -> Result<()> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(ReadExactError::FinishedEarly(read)) => {
            Err(Error::Protocol(featurestore::Error::Malformed {
                what: "response",
                reason: format!(
                    "the stream ended after {read} of {} bytes of the {what}",
                    buf.len()
                ),
            }))
        }
        Err(ReadExactError::ReadError(e)) => {
            Err(Error::Transport(format!("reading the {what}: {e}")))
        }
    }
}

/// The variant name of a response, for [`Error::UnexpectedResponse`].
fn variant(response: &Response) -> String {
    match response {
        Response::Profile(_) => "Profile",
        Response::Profiles(_) => "Profiles",
        Response::Put(_) => "Put",
        Response::Incremented(_) => "Incremented",
        Response::Flag(_) => "Flag",
        Response::Erased { .. } => "Erased",
        Response::Status(_) => "Status",
        Response::Error(_) => "Error",
    }
    .to_owned()
}

fn unexpected(expected: &'static str, got: &Response) -> Error {
    Error::UnexpectedResponse {
        expected,
        got: variant(got),
    }
}

fn projection(features: Option<&[&str]>) -> Option<Vec<String>> {
    features.map(|names| names.iter().map(|n| (*n).to_owned()).collect())
}

impl Client {
    /// Validates `config`, loads the certificates, and connects to the first configured node whose
    /// handshake succeeds (nodes are tried in order, each bounded by `connect_timeout_ms`).
    ///
    /// Must be called within a tokio runtime. Errors: [`Error::Config`], [`Error::Tls`] (certificate
    /// files), [`Error::Transport`] (no local UDP socket), [`Error::Connect`] listing every attempt.
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
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let quic = tls::client_config(
            &config.ca_cert,
            &config.cert,
            &config.key,
            CLIENT_ALPN,
            &config.transport,
        )?;
        let endpoints = Endpoints::new(&config, &quic)?;
        let current = dial(&config, &endpoints).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                endpoints,
                current: StdMutex::new(current),
                reconnect: tokio::sync::Mutex::new(None),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The name of the node the current connection goes to.
    pub fn connected_node(&self) -> String {
        self.current().node
    }

    fn current(&self) -> Current {
        self.inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The current connection, reconnecting first if it has closed.
    async fn connection(&self) -> Result<Current> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let current = self.current();
        if current.conn.close_reason().is_none() {
            return Ok(current);
        }
        self.reconnect(&current.conn).await
    }

    /// Replaces the closed connection `failed`, unless another caller already did.
    async fn reconnect(&self, failed: &Connection) -> Result<Current> {
        let waiting_since = Instant::now();
        let mut last_failure = self.inner.reconnect.lock().await;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let current = self.current();
        if current.conn.stable_id() != failed.stable_id() && current.conn.close_reason().is_none() {
            return Ok(current);
        }
        if let Some((at, attempts)) = last_failure.as_ref() {
            if *at >= waiting_since {
                // Someone reconnected (and failed) while we waited: do not dial again at once.
                return Err(Error::Connect {
                    attempts: attempts.clone(),
                });
            }
        }
        debug!(
            node = %current.node,
            reason = ?current.conn.close_reason(),
            "connection closed; reconnecting"
        );
        match dial(&self.inner.config, &self.inner.endpoints).await {
            Ok(fresh) => {
                *last_failure = None;
                *self
                    .inner
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = fresh.clone();
                Ok(fresh)
            }
            Err(Error::Connect { attempts }) => {
                *last_failure = Some((Instant::now(), attempts.clone()));
                Err(Error::Connect { attempts })
            }
            Err(e) => Err(e),
        }
    }

    async fn with_timeout<T>(&self, attempt: impl Future<Output = Result<T>>) -> Result<T> {
        let after = self.inner.config.request_timeout();
        tokio::time::timeout(after, attempt)
            .await
            .unwrap_or_else(|_| Err(Error::Timeout { after }))
    }

    /// One request/response exchange on a fresh stream of `conn`.
    async fn exchange(&self, conn: &Connection, frame: &[u8]) -> Result<Response> {
        let max_frame_bytes = self.inner.config.max_frame_bytes;
        self.with_timeout(async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| Error::Transport(format!("opening a stream: {e}")))?;
            send_request(&mut send, frame).await?;
            let mut header = [0u8; FRAME_HEADER_BYTES];
            read_exact(&mut recv, &mut header, "response header").await?;
            let len = codec::parse_header(header, max_frame_bytes)?;
            let mut payload = vec![0u8; len];
            read_exact(&mut recv, &mut payload, "response payload").await?;
            Ok(codec::decode_response(&payload)?)
        })
        .await
    }

    /// Sends any request and returns the node's answer.
    ///
    /// An error reply ([`Response::Error`]) is returned as [`Error::Server`], so an `Ok` response is never
    /// `Response::Error`. Reads (`Get`, `GetMany`, `Status`) are retried once on a fresh connection if the
    /// connection was lost during the request; writes are not (see the [module docs](crate::client)).
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
        let frame = codec::encode_request(&request)?;
        let current = self.connection().await?;
        let response = match self.exchange(&current.conn, &frame).await {
            Err(e @ Error::Transport(_))
                if !request.is_write() && current.conn.close_reason().is_some() =>
            {
                debug!(node = %current.node, error = %e, "connection lost during a read; retrying once");
                let fresh = self.reconnect(&current.conn).await?;
                self.exchange(&fresh.conn, &frame).await
            }
            other => other,
        }?;
        match response {
            Response::Error(ErrorReply { code, message }) => Err(Error::Server { code, message }),
            other => Ok(other),
        }
    }

    /// Writes arbitrary bytes on a fresh stream, finishes it, and returns everything the node sends back
    /// (at most `max_frame_bytes + 5` bytes; more is an [`Error::Transport`]).
    ///
    /// For testing and diagnostics only (e.g. checking how a node answers malformed or oversize frames):
    /// nothing is validated or decoded, and the request is never retried. A stream the node resets or
    /// stops without answering is an [`Error::Transport`].
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let current = self.connection().await?;
        let limit = self.inner.config.max_frame_bytes as usize + FRAME_HEADER_BYTES;
        self.with_timeout(async {
            let (mut send, mut recv) = current
                .conn
                .open_bi()
                .await
                .map_err(|e| Error::Transport(format!("opening a stream: {e}")))?;
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

    /// Reads one entity, optionally only the named features. `None` if nothing of it is visible (never
    /// written, erased, or expired).
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
        let request = Request::Get {
            key: key.to_owned(),
            features: projection(features),
        };
        match self.request(request).await? {
            Response::Profile(profile) => Ok(profile),
            other => Err(unexpected("Profile", &other)),
        }
    }

    /// Reads several entities in one request; the answer is in `keys` order.
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
        let request = Request::GetMany {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            features: projection(features),
        };
        match self.request(request).await? {
            Response::Profiles(profiles) if profiles.len() == keys.len() => Ok(profiles),
            Response::Profiles(profiles) => Err(Error::UnexpectedResponse {
                expected: "one profile per key",
                got: format!("{} profiles for {} keys", profiles.len(), keys.len()),
            }),
            other => Err(unexpected("Profiles", &other)),
        }
    }

    /// Writes gauges (last-writer-wins), stamped by the node's clock, without TTL.
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
    /// ([`ErrorCode::ClockSkew`](featurestore::ErrorCode::ClockSkew)).
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
        };
        match self.request(request).await? {
            Response::Put(ack) => Ok(ack),
            other => Err(unexpected("Put", &other)),
        }
    }

    /// Adds to counters; returns each counter's value after the write, in request order.
    ///
    /// Not retried automatically: if it fails with [`Error::Transport`] or [`Error::Timeout`], the
    /// increment may or may not have been applied.
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
        };
        match self.request(request).await? {
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
        };
        match self.request(request).await? {
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
        };
        match self.request(request).await? {
            Response::Erased { watermark } => Ok(watermark),
            other => Err(unexpected("Erased", &other)),
        }
    }

    /// The connected node's status and counters.
    ///
    /// ```no_run
    /// # async fn example(client: store_client::Client) -> Result<(), store_client::Error> {
    /// let status = client.status().await?;
    /// println!("{} up for {} ms", status.node_id, status.uptime_ms);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn status(&self) -> Result<NodeStatus> {
        match self.request(Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected("Status", &other)),
        }
    }

    /// Closes the connection gracefully (application code 0, reason `bye`) and waits, at most one second,
    /// for the endpoint to become idle, so that the close reaches the node. (The bound matters after a
    /// failed connection attempt: an abandoned handshake to an unreachable node would otherwise keep the
    /// endpoint busy for several seconds.) Afterwards every request on this client and its clones fails
    /// with [`Error::Closed`]; requests still in flight fail with [`Error::Transport`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        // Wait for a reconnection in progress, so that its connection is the one closed.
        let _guard = self.inner.reconnect.lock().await;
        let current = self.current();
        current.conn.close(0u32.into(), b"bye");
        let idle = async {
            for endpoint in self.inner.endpoints.all() {
                endpoint.wait_idle().await;
            }
        };
        if tokio::time::timeout(CLOSE_WAIT, idle).await.is_err() {
            debug!("endpoint not idle after {CLOSE_WAIT:?}; not waiting longer");
        }
        debug!(node = %current.node, "connection closed");
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current();
        f.debug_struct("Client")
            .field("node", &current.node)
            .field("remote", &current.conn.remote_address())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .field("nodes", &self.inner.config.nodes)
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
    fn variant_names() {
        assert_eq!(variant(&Response::Profile(None)), "Profile");
        assert_eq!(variant(&Response::Incremented(vec![])), "Incremented");
        let e = unexpected("Flag", &Response::Profiles(vec![]));
        assert_eq!(
            e.to_string(),
            "unexpected response: expected Flag, got Profiles"
        );
    }

    #[test]
    fn projection_copies_names() {
        assert_eq!(projection(None), None);
        assert_eq!(
            projection(Some(&["a", "b"])),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
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
