//! The three systems under test behind one interface: featurestore, Redis and the QUIC echo floor.
//!
//! A [`Target`] is a set of connections to one system and knows how to do the three operations the
//! workloads are made of, on the shared [`Keyspace`]:
//!
//! | operation | featurestore | Redis | echo |
//! |---|---|---|---|
//! | point read | `get_encoded(key)` (whole profile, kept encoded) | `HGETALL key` | a `Get` frame's size out, a 20-feature `Profile` answer's size back |
//! | single-feature write | `put(key, [(name, value)])` | `HSET key name value` | a `Put` frame out, a `PutAck` back |
//! | batch read of N | `get_many(N keys)` | N `HGETALL` in one pipeline | a `GetMany` frame out, N profiles back |
//!
//! The echo sizes are the exact encoded sizes of the featurestore frames ([`FrameSizes`]), computed with the
//! core's codec, so the floor moves the same bytes.
//!
//! Redis connections are `MultiplexedConnection`s; a target holds one or more and operation `lane` picks one
//! (so 50 closed-loop workers or an open-loop generator can spread over 50 connections). featurestore and
//! echo use one QUIC connection and one stream per request, whatever the lane.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use featurestore::profile::GaugeUpdate;
use featurestore::wire::client::{GaugeWrite, PutAck};
use featurestore::wire::codec::{encode_request, encode_response};
use featurestore::{Limits, Marker, NodeId, Profile, Request, Response, Timestamp};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use store_client::{Client, ClientConfig, NodeAddr};

use crate::echo::{echo_request, EchoClient, EchoSession};
use crate::error::{Error, Result};
use crate::keyspace::{redis_text, Keyspace, FEATURES};

/// Which system a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// featurestore through `store-client`.
    Featurestore,
    /// Redis through the `redis` crate.
    Redis,
    /// The bare QUIC echo (transport floor).
    Echo,
    /// The QUIC echo over one long-lived stream with length-prefixed frames (`loadgen run` only): what a
    /// stream pool would cost instead of a stream per request.
    #[serde(rename = "echo-stream")]
    EchoStream,
}

impl TargetKind {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Featurestore => "featurestore",
            TargetKind::Redis => "redis",
            TargetKind::Echo => "echo",
            TargetKind::EchoStream => "echo-stream",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TargetKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "featurestore" | "fs" => Ok(TargetKind::Featurestore),
            "redis" => Ok(TargetKind::Redis),
            "echo" => Ok(TargetKind::Echo),
            "echo-stream" => Ok(TargetKind::EchoStream),
            other => Err(Error::Setup(format!(
                "unknown target {other:?} (expected featurestore, redis or echo)"
            ))),
        }
    }
}

/// The number of fields in an `HGETALL` reply, parsed by the `redis` crate into its `Value` (RESP2 array
/// of alternating names and values, or a RESP3 map). The reply is kept in that parsed form rather than
/// converted to a `HashMap<String, String>`: the conversion costs the client more than Redis spends on the
/// command (measured: 100 pipelined `HGETALL` took 1.8 ms p50 into `HashMap`s against 0.37 ms with
/// `redis-benchmark`), and the comparison is about the server, not about one client library's conversions.
fn hash_len(reply: &redis::Value) -> usize {
    match reply {
        redis::Value::Array(items) => items.len() / 2,
        redis::Value::Map(pairs) => pairs.len(),
        _ => 0,
    }
}

/// Encoded sizes (header included) of the featurestore frames each operation exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameSizes {
    /// `Get` request.
    pub read_request: usize,
    /// `Profile` answer with 20 features.
    pub read_answer: usize,
    /// `Put` request of one feature.
    pub write_request: usize,
    /// `PutAck` answer.
    pub write_answer: usize,
    /// `GetMany` request of `batch` keys.
    pub batch_request: usize,
    /// `Profiles` answer of `batch` profiles.
    pub batch_answer: usize,
}

impl FrameSizes {
    /// Computes the sizes for the profiles of `keyspace` and batches of `batch` keys.
    pub fn compute(keyspace: &Keyspace, batch: usize) -> Result<FrameSizes> {
        let enc = |e: featurestore::Error| Error::Setup(format!("encoding a sample frame: {e}"));
        let node = NodeId::new("n1").map_err(enc)?;
        // A realistic wall clock (13 decimal digits) so varints have their real length.
        let marker = Marker {
            ts: Timestamp {
                wall_ms: 1_763_000_000_000,
                logical: 3,
            },
            node,
        };
        let fields = keyspace.profile(0);
        let updates: Vec<GaugeUpdate<'_>> = fields
            .iter()
            .map(|(name, value)| GaugeUpdate {
                name,
                value,
                expires_at_ms: None,
            })
            .collect();
        let mut profile = Profile::default();
        profile
            .put_gauges(&updates, &marker, &Limits::default())
            .map_err(enc)?;
        let view = profile.view(marker.ts.wall_ms, None);
        let key = keyspace.key(0);
        let read_request = encode_request(&Request::Get {
            key: key.clone(),
            features: None,
            quorum: 1,
        })
        .map_err(enc)?
        .len();
        let read_answer = encode_response(&Response::Profile(view.clone()))
            .map_err(enc)?
            .len();
        let (name, value) = &fields[0];
        let write_request = encode_request(&Request::Put {
            key: key.clone(),
            gauges: vec![GaugeWrite {
                name: (*name).to_owned(),
                value: value.clone(),
                ttl_ms: None,
            }],
            timestamp_ms: None,
            quorum: 1,
        })
        .map_err(enc)?
        .len();
        let write_answer = encode_response(&Response::Put(PutAck {
            version: marker,
            superseded: Vec::new(),
        }))
        .map_err(enc)?
        .len();
        let batch_request = encode_request(&Request::GetMany {
            keys: vec![key; batch],
            features: None,
            quorum: 1,
        })
        .map_err(enc)?
        .len();
        let batch_answer = encode_response(&Response::Profiles(vec![view; batch]))
            .map_err(enc)?
            .len();
        Ok(FrameSizes {
            read_request,
            read_answer,
            write_request,
            write_answer,
            batch_request,
            batch_answer,
        })
    }
}

/// Pre-built echo requests, one per operation.
#[derive(Debug, Clone)]
pub struct EchoRequests {
    read: Vec<u8>,
    write: Vec<u8>,
    batch: Vec<u8>,
}

impl EchoRequests {
    /// The requests imitating `sizes`.
    pub fn new(sizes: &FrameSizes) -> Result<Self> {
        Ok(EchoRequests {
            read: echo_request(sizes.read_request, sizes.read_answer)?,
            write: echo_request(sizes.write_request, sizes.write_answer)?,
            batch: echo_request(sizes.batch_request, sizes.batch_answer)?,
        })
    }
}

/// Connections to one system under test.
#[derive(Clone)]
pub enum Target {
    /// One `store-client` connection (streams are multiplexed on it).
    Featurestore(Client),
    /// One or more multiplexed Redis connections.
    Redis(Vec<MultiplexedConnection>),
    /// One echo connection and the requests to send.
    Echo(EchoClient, Box<EchoRequests>),
    /// One long-lived echo stream and the requests to send.
    EchoStream(EchoClient, EchoSession, Box<EchoRequests>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Featurestore(_) => f.write_str("Featurestore"),
            Target::Redis(conns) => write!(f, "Redis({} connections)", conns.len()),
            Target::Echo(..) => f.write_str("Echo"),
            Target::EchoStream(..) => f.write_str("EchoStream"),
        }
    }
}

/// The client configuration for node `n1` at `addr` with certificates from `certs`.
pub fn featurestore_config(certs: &Path, addr: SocketAddr) -> ClientConfig {
    let mut config = ClientConfig::new(
        certs.join("ca.pem"),
        certs.join("client-app.pem"),
        certs.join("client-app.key"),
        vec![NodeAddr::new("n1", addr)],
    );
    // Long enough that an overloaded open-loop step, or a node stalled behind a storage flush, shows up
    // as latency rather than as errors.
    config.request_timeout_ms = 60_000;
    config
}

impl Target {
    /// Connects to a featurestore node `n1` at `addr`.
    pub async fn featurestore(certs: &Path, addr: SocketAddr) -> Result<Target> {
        Ok(Target::Featurestore(
            Client::connect(featurestore_config(certs, addr)).await?,
        ))
    }

    /// Opens `connections` (at least 1) multiplexed connections to Redis at `addr`.
    pub async fn redis(addr: SocketAddr, connections: usize) -> Result<Target> {
        let client = redis::Client::open(format!("redis://{addr}/"))?;
        // The `redis` crate gives up on a reply after 500 ms by default; use featurestore's 60 s so both
        // targets show overload as latency, and a `SAVE` of a million profiles can finish.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(60)));
        let mut conns = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            conns.push(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        Ok(Target::Redis(conns))
    }

    /// Connects to the echo server at `addr`, imitating the frames of `sizes`.
    pub async fn echo(certs: &Path, addr: SocketAddr, sizes: &FrameSizes) -> Result<Target> {
        Ok(Target::Echo(
            EchoClient::connect(certs, addr).await?,
            Box::new(EchoRequests::new(sizes)?),
        ))
    }

    /// Connects to the echo server at `addr` and opens one long-lived stream (session mode).
    pub async fn echo_stream(certs: &Path, addr: SocketAddr, sizes: &FrameSizes) -> Result<Target> {
        let client = EchoClient::connect(certs, addr).await?;
        let session = client.session().await?;
        Ok(Target::EchoStream(
            client,
            session,
            Box::new(EchoRequests::new(sizes)?),
        ))
    }

    /// Which system this is.
    pub fn kind(&self) -> TargetKind {
        match self {
            Target::Featurestore(_) => TargetKind::Featurestore,
            Target::Redis(_) => TargetKind::Redis,
            Target::Echo(..) => TargetKind::Echo,
            Target::EchoStream(..) => TargetKind::EchoStream,
        }
    }

    fn redis_conn(conns: &[MultiplexedConnection], lane: usize) -> Result<MultiplexedConnection> {
        conns
            .get(lane % conns.len().max(1))
            .cloned()
            .ok_or_else(|| Error::Setup("no Redis connection".into()))
    }

    /// Reads the whole profile `key`. A missing profile is an [`Error::Unexpected`].
    pub async fn read(&self, lane: usize, keyspace: &Keyspace, key: usize) -> Result<()> {
        match self {
            // Kept encoded and checked, as Redis's reply is parsed into `redis::Value` and not into a map.
            Target::Featurestore(client) => {
                match client.get_encoded(&keyspace.key(key), None).await? {
                    Some(p) if p.len() == FEATURES.len() => Ok(()),
                    Some(p) => Err(Error::Unexpected(format!(
                        "{} has {} features",
                        keyspace.key(key),
                        p.len()
                    ))),
                    None => Err(Error::Unexpected(format!(
                        "{} not found",
                        keyspace.key(key)
                    ))),
                }
            }
            Target::Redis(conns) => {
                let mut conn = Self::redis_conn(conns, lane)?;
                let reply: redis::Value = redis::cmd("HGETALL")
                    .arg(keyspace.key(key))
                    .query_async(&mut conn)
                    .await?;
                if hash_len(&reply) == FEATURES.len() {
                    Ok(())
                } else {
                    Err(Error::Unexpected(format!(
                        "{} has {} fields",
                        keyspace.key(key),
                        hash_len(&reply)
                    )))
                }
            }
            Target::Echo(client, requests) => {
                client.call(&requests.read).await?;
                Ok(())
            }
            Target::EchoStream(_, session, requests) => {
                session.call(&requests.read).await?;
                Ok(())
            }
        }
    }

    /// Writes one feature of profile `key` (feature `feature`, a value varied by `salt`).
    pub async fn write(
        &self,
        lane: usize,
        keyspace: &Keyspace,
        key: usize,
        feature: usize,
        salt: u64,
    ) -> Result<()> {
        let feature = feature % FEATURES.len();
        let name = FEATURES[feature].0;
        let value = Keyspace::value(key, feature, salt);
        match self {
            Target::Featurestore(client) => {
                client.put(&keyspace.key(key), &[(name, value)]).await?;
                Ok(())
            }
            Target::Redis(conns) => {
                let mut conn = Self::redis_conn(conns, lane)?;
                let _: i64 = redis::cmd("HSET")
                    .arg(keyspace.key(key))
                    .arg(name)
                    .arg(redis_text(&value))
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            }
            Target::Echo(client, requests) => {
                client.call(&requests.write).await?;
                Ok(())
            }
            Target::EchoStream(_, session, requests) => {
                session.call(&requests.write).await?;
                Ok(())
            }
        }
    }

    /// Reads the profiles `keys` in one request (featurestore `get_many`, one Redis pipeline).
    pub async fn batch_read(&self, lane: usize, keyspace: &Keyspace, keys: &[usize]) -> Result<()> {
        match self {
            Target::Featurestore(client) => {
                let names: Vec<String> = keys.iter().map(|&k| keyspace.key(k)).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let profiles = client.get_many(&refs, None).await?;
                let missing = profiles.iter().filter(|p| p.is_none()).count();
                if missing == 0 {
                    Ok(())
                } else {
                    Err(Error::Unexpected(format!(
                        "{missing} profiles of a batch missing"
                    )))
                }
            }
            Target::Redis(conns) => {
                let mut conn = Self::redis_conn(conns, lane)?;
                let mut pipe = redis::pipe();
                for &k in keys {
                    pipe.cmd("HGETALL").arg(keyspace.key(k));
                }
                let answers: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                let missing = answers.iter().filter(|a| hash_len(a) == 0).count();
                if answers.len() == keys.len() && missing == 0 {
                    Ok(())
                } else {
                    Err(Error::Unexpected(format!(
                        "{missing} of {} profiles of a batch missing",
                        keys.len()
                    )))
                }
            }
            Target::Echo(client, requests) => {
                client.call(&requests.batch).await?;
                Ok(())
            }
            Target::EchoStream(_, session, requests) => {
                session.call(&requests.batch).await?;
                Ok(())
            }
        }
    }

    /// Writes every feature of profiles `keys` (loading the keyspace). featurestore: one `put` of 20
    /// gauges per profile; Redis: one pipeline of `HSET key f1 v1 ... f20 v20` per call.
    pub async fn load(
        &self,
        lane: usize,
        keyspace: &Keyspace,
        keys: std::ops::Range<usize>,
    ) -> Result<()> {
        match self {
            Target::Featurestore(client) => {
                for i in keys {
                    client.put(&keyspace.key(i), &keyspace.profile(i)).await?;
                }
                Ok(())
            }
            Target::Redis(conns) => {
                let mut conn = Self::redis_conn(conns, lane)?;
                let mut pipe = redis::pipe();
                for i in keys {
                    let cmd = pipe.cmd("HSET").arg(keyspace.key(i));
                    for (name, value) in keyspace.redis_fields(i) {
                        cmd.arg(name).arg(value);
                    }
                    cmd.ignore();
                }
                let () = pipe.query_async(&mut conn).await?;
                Ok(())
            }
            Target::Echo(..) | Target::EchoStream(..) => Ok(()),
        }
    }

    /// Closes the connections (featurestore gracefully).
    pub async fn close(&self) {
        match self {
            Target::Featurestore(client) => client.close().await,
            Target::Redis(_) => {}
            Target::Echo(client, _) | Target::EchoStream(client, ..) => client.close(),
        }
    }
}
