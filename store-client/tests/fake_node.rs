//! The client against in-process fake nodes: minimal QUIC servers speaking the wire protocol with canned
//! answers, sharing one membership table. They check the client's behaviour (mutual TLS, framing, error
//! mapping, timeouts, reconnection, routing to the replicas of a key, failover and the write retry rules,
//! `get_many` grouping, cluster view refresh, admin calls, `storectl`), not the node's semantics; tests
//! against real nodes live in `store-node`.
//!
//! A fake node is honest about what it does not do: it answers `Cluster` with the shared table (where every
//! fake node registers itself as `Active` at its real address), `Status` with that table, `LocalState`
//! with an empty profile for keys it received writes for, and `Leave` by marking itself `Leaving`. It
//! stores nothing and never replicates.
//!
//! Canned behaviours, by key: `drop-conn` closes the connection instead of answering (a `Get` only the
//! first time), `hang` never answers (nor a batch holding it), `p-slow-<node>-...` is never answered by `<node>` (the other nodes
//! answer it as a `p-` key), `huge` announces an oversize frame, `wrong-variant` answers a `Get` with
//! `Incremented`, `no-answer` finishes the stream without answering, `refuse` is refused with
//! `LimitExceeded`, keys starting with `unavail` are refused with `Unavailable`, and keys starting with
//! `p-` are read as a profile naming the key and the node that served it.
//!
//! [`Fake::kill`] makes a node look like a `kill -9`ed process to the client: its UDP port closes, so
//! nothing comes back from it (not even an acknowledgement) while the client's connection still looks
//! open; [`Fake::revive`] brings it back on the same port.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use featurestore::cluster::detector::Liveness;
use featurestore::cluster::membership::{MemberState, MembershipTable};
use featurestore::cluster::ring::Ring;
use featurestore::wire::client::{
    ClusterView, ErrorReply, MemberStatus, NodeStatus, PutAck, WriteReply,
};
use featurestore::wire::codec;
use featurestore::{
    ErrorCode, FeatureView, FlagView, Marker, NodeId, Profile, ProfileView, Request, Response,
    Timestamp,
};
use quinn::Endpoint;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use store_client::tls::{self, CLIENT_ALPN};
use store_client::{Client, ClientConfig, Error, NodeAddr, Value};

const VNODES: u32 = 64;

/// What every fake node of one test shares: the membership table and the ring parameters.
struct Shared {
    table: Mutex<MembershipTable>,
    replication_factor: u32,
    /// False: answer `Cluster` like a node that does not know the request.
    describes_cluster: bool,
}

fn shared(replication_factor: u32) -> Arc<Shared> {
    Arc::new(Shared {
        table: Mutex::new(MembershipTable::default()),
        replication_factor,
        describes_cluster: true,
    })
}

/// One request as a fake node saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    op: &'static str,
    keys: Vec<String>,
    quorum: u8,
}

/// One fake node and what it has seen.
struct State {
    id: NodeId,
    addr: Mutex<Option<SocketAddr>>,
    shared: Arc<Shared>,
    connections: AtomicUsize,
    increments: AtomicUsize,
    gets: AtomicUsize,
    /// `Writes` requests (coalesced writes) received.
    batches: AtomicUsize,
    /// Set once a `drop-conn` read has closed a connection.
    dropped_read: AtomicBool,
    /// Answer `GetMany` with `Unavailable`.
    refuse_batches: AtomicBool,
    log: Mutex<Vec<Seen>>,
    written: Mutex<BTreeSet<String>>,
    /// Why each connection ended, as the node saw it.
    closes: Mutex<Vec<String>>,
}

impl State {
    fn seen(&self, op: &str) -> Vec<Seen> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.op == op)
            .cloned()
            .collect()
    }

    /// Keys of every `op` request seen, flattened.
    fn keys(&self, op: &str) -> Vec<String> {
        self.seen(op).into_iter().flat_map(|s| s.keys).collect()
    }
}

struct Fake {
    id: NodeId,
    addr: SocketAddr,
    state: Arc<State>,
    endpoint: Endpoint,
}

impl Fake {
    fn seed(&self) -> NodeAddr {
        NodeAddr::new(self.id.as_str(), self.addr)
    }

    /// Stops the node: open connections are closed, new handshakes fail.
    fn stop(&self) {
        self.endpoint.close(0u32.into(), b"stopped");
    }

    /// Kills the node as `kill -9` would, seen from the client: the endpoint moves to another port, so
    /// whatever it sends comes from an address the client does not talk to and is dropped there; not
    /// one packet (not even an acknowledgement) reaches the client any more, and new handshakes time
    /// out, while the client's connection still looks open. (quinn keeps reading the old socket until
    /// traffic arrives on the new one, so the node itself carries on, unheard.)
    fn kill(&self) {
        let elsewhere = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        self.endpoint.rebind(elsewhere).unwrap();
    }

    /// Brings a killed node back on its port: one more move releases the old socket (quinn keeps only
    /// the previous one), then the port is bound again.
    async fn revive(&self) {
        let transit = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        self.endpoint.rebind(transit).unwrap();
        for _ in 0..100 {
            if let Ok(socket) = std::net::UdpSocket::bind(self.addr) {
                self.endpoint.rebind(socket).unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} cannot be bound again", self.addr);
    }
}

struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    node_cert: CertificateDer<'static>,
    node_key: PrivateKeyDer<'static>,
}

/// A CA, one node certificate naming `n1`..`n4` (so any fake node can be any of them), and a client
/// certificate (PEM files in a temp dir).
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert, key)
    };
    let (node, node_key) = leaf(
        (1..=4).map(|i| format!("n{i}.node.featurestore")).collect(),
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(vec!["app.client.featurestore".into()], {
        ExtendedKeyUsagePurpose::ClientAuth
    });
    std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
    Pki {
        dir,
        ca: ca.der().clone(),
        node_cert: node.der().clone(),
        node_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(node_key.serialize_der())),
    }
}

fn client_config(pki: &Pki, nodes: Vec<NodeAddr>) -> ClientConfig {
    let dir: &Path = pki.dir.path();
    ClientConfig {
        connect_timeout_ms: 500,
        request_timeout_ms: 2_000,
        // Routing tests count the requests each node saw: no hedge within a test's time (hedging has
        // tests of its own).
        hedge_delay_us: Some(1_000_000),
        ..ClientConfig::new(
            dir.join("ca.pem"),
            dir.join("client.pem"),
            dir.join("client.key"),
            nodes,
        )
    }
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Starts fake node `name` on a loopback port (requiring client certificates signed by the CA) and
/// registers it in the shared table as `Active`.
fn start_node(pki: &Pki, name: &str, shared: &Arc<Shared>) -> Fake {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), tls::provider())
        .build()
        .unwrap();
    let mut server_tls = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.node_cert.clone()], pki.node_key.clone_key())
        .unwrap();
    server_tls.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let state = Arc::new(State {
        id: id(name),
        addr: Mutex::new(Some(addr)),
        shared: shared.clone(),
        connections: AtomicUsize::new(0),
        increments: AtomicUsize::new(0),
        gets: AtomicUsize::new(0),
        batches: AtomicUsize::new(0),
        dropped_read: AtomicBool::new(false),
        refuse_batches: AtomicBool::new(false),
        log: Mutex::new(Vec::new()),
        written: Mutex::new(BTreeSet::new()),
        closes: Mutex::new(Vec::new()),
    });
    shared
        .table
        .lock()
        .unwrap()
        .set(&state.id, addr, MemberState::Active);
    tokio::spawn(serve(endpoint.clone(), state.clone()));
    Fake {
        id: id(name),
        addr,
        state,
        endpoint,
    }
}

/// Starts `n1`..`n<count>` sharing one table.
fn start_cluster(pki: &Pki, count: usize, replication_factor: u32) -> Vec<Fake> {
    let shared = shared(replication_factor);
    (1..=count)
        .map(|i| start_node(pki, &format!("n{i}"), &shared))
        .collect()
}

async fn serve(endpoint: Endpoint, state: Arc<State>) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            state.connections.fetch_add(1, Ordering::SeqCst);
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(handle(conn.clone(), send, recv, state.clone()));
            }
            let reason = format!("{:?}", conn.close_reason());
            state.closes.lock().unwrap().push(reason);
        });
    }
}

fn marker() -> Marker {
    Marker {
        ts: Timestamp::from_millis(1_000),
        node: id("n1"),
    }
}

fn gauge(text: &str) -> FeatureView {
    FeatureView::Gauge {
        value: Value::Str(text.into()),
        version: marker(),
        expires_at_ms: None,
    }
}

/// What a fake node answers to a read of `key`: a profile naming the key and the node for `p-` keys.
fn read(state: &State, key: &str) -> Option<ProfileView> {
    key.starts_with("p-").then(|| ProfileView {
        features: [
            ("key".into(), gauge(key)),
            ("node".into(), gauge(state.id.as_str())),
        ]
        .into_iter()
        .collect(),
    })
}

fn refused(code: ErrorCode, message: &str) -> Response {
    Response::Error(ErrorReply {
        code,
        message: message.into(),
    })
}

fn log(state: &State, op: &'static str, keys: Vec<String>, quorum: u8) {
    state.log.lock().unwrap().push(Seen { op, keys, quorum });
}

fn wrote(state: &State, key: &str) {
    state.written.lock().unwrap().insert(key.to_owned());
}

async fn handle(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    state: Arc<State>,
) {
    let Ok(bytes) = recv.read_to_end(1 << 20).await else {
        return;
    };
    let decoded = codec::split_frame(&bytes, 1 << 20).and_then(codec::decode_request);
    let reply = match decoded {
        // A coalesced batch: each write answered as if it had come alone (logged alone too).
        Ok(Request::Writes { writes }) => {
            state.batches.fetch_add(1, Ordering::SeqCst);
            let mut replies = Vec::with_capacity(writes.len());
            for op in writes {
                match respond(&conn, &mut send, &state, Ok(Request::from(op))).await {
                    Some(reply) => replies.push(WriteReply::from(reply)),
                    None => return,
                }
            }
            Response::Written(replies)
        }
        decoded => match respond(&conn, &mut send, &state, decoded).await {
            Some(reply) => reply,
            None => return,
        },
    };
    let frame = codec::encode_response(&reply).unwrap();
    let _ = send.write_all(&frame).await;
    let _ = send.finish();
    // Keep the stream until the client has read everything.
    let _ = send.stopped().await;
}

/// The fake node's answer to one request; `None` if it answered otherwise (closed the connection,
/// wrote raw bytes) or never answers.
async fn respond(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    state: &Arc<State>,
    decoded: Result<Request, featurestore::Error>,
) -> Option<Response> {
    let state = state.clone();
    let reply = match decoded {
        Err(e) => refused(ErrorCode::from(&e), &e.to_string()),
        Ok(Request::Get { key, quorum, .. }) => {
            state.gets.fetch_add(1, Ordering::SeqCst);
            log(&state, "get", vec![key.clone()], quorum);
            let slow_here = key
                .strip_prefix("p-slow-")
                .is_some_and(|rest| rest.starts_with(&format!("{}-", state.id)));
            if slow_here {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return None;
            }
            match key.as_str() {
                "drop-conn" if !state.dropped_read.swap(true, Ordering::SeqCst) => {
                    conn.close(7u32.into(), b"restarting");
                    return None;
                }
                "hang" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return None;
                }
                "huge" => {
                    let _ = send
                        .write_all(&[
                            featurestore::wire::client::PROTOCOL_VERSION,
                            0xff,
                            0xff,
                            0xff,
                            0xff,
                        ])
                        .await;
                    let _ = send.finish();
                    return None;
                }
                "wrong-variant" => Response::Incremented(vec![]),
                "no-answer" => {
                    let _ = send.finish();
                    return None;
                }
                k if k.starts_with("unavail") => refused(ErrorCode::Unavailable, "no quorum"),
                k => Response::Profile(read(&state, k)),
            }
        }
        Ok(Request::GetMany { keys, quorum, .. }) => {
            log(&state, "get_many", keys.clone(), quorum);
            if keys.iter().any(|k| k == "hang") {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return None;
            }
            if state.refuse_batches.load(Ordering::SeqCst) {
                refused(ErrorCode::Unavailable, "batches refused")
            } else {
                Response::Profiles(keys.iter().map(|k| read(&state, k)).collect())
            }
        }
        Ok(Request::Put { key, quorum, .. }) if key == "refuse" => {
            log(&state, "put", vec![key], quorum);
            refused(ErrorCode::LimitExceeded, "too big")
        }
        Ok(Request::Put { key, quorum, .. }) if key.starts_with("unavail") => {
            log(&state, "put", vec![key], quorum);
            refused(ErrorCode::Unavailable, "no quorum")
        }
        Ok(Request::Put {
            key,
            gauges,
            quorum,
            ..
        }) => {
            log(&state, "put", vec![key.clone()], quorum);
            wrote(&state, &key);
            Response::Put(PutAck {
                version: marker(),
                superseded: gauges.into_iter().skip(1).map(|g| g.name).collect(),
            })
        }
        Ok(Request::Increment {
            key,
            deltas,
            quorum,
        }) => {
            state.increments.fetch_add(1, Ordering::SeqCst);
            log(&state, "increment", vec![key.clone()], quorum);
            if key == "drop-conn" {
                conn.close(7u32.into(), b"restarting");
                return None;
            }
            wrote(&state, &key);
            Response::Incremented(deltas.iter().map(|d| d.delta).collect())
        }
        Ok(Request::SetFlag {
            key,
            context,
            quorum,
            ..
        }) => {
            log(&state, "set_flag", vec![key.clone()], quorum);
            wrote(&state, &key);
            Response::Flag(FlagView {
                values: vec![],
                context,
            })
        }
        Ok(Request::Erase { key, quorum }) => {
            log(&state, "erase", vec![key.clone()], quorum);
            wrote(&state, &key);
            Response::Erased {
                watermark: marker(),
            }
        }
        Ok(Request::Status) => {
            log(&state, "status", vec![], 0);
            let table = state.shared.table.lock().unwrap().clone();
            Response::Status(NodeStatus {
                node_id: state.id.clone(),
                version: "fake".into(),
                uptime_ms: 1,
                entities: state.written.lock().unwrap().len() as u64,
                storage: "memory".into(),
                durability: "sync".into(),
                disk_bytes: 0,
                counters: vec![],
                ring_version: table.version(),
                members: table
                    .members
                    .values()
                    .map(|m| MemberStatus {
                        id: m.id.clone(),
                        addr: m.addr.to_string(),
                        state: m.state,
                        liveness: Liveness::Alive,
                        hints_queued: 0,
                    })
                    .collect(),
            })
        }
        Ok(Request::Cluster) => {
            log(&state, "cluster", vec![], 0);
            if state.shared.describes_cluster {
                Response::Cluster(ClusterView {
                    table: state.shared.table.lock().unwrap().clone(),
                    vnodes: VNODES,
                    replication_factor: state.shared.replication_factor,
                })
            } else {
                refused(ErrorCode::MalformedFrame, "unknown request")
            }
        }
        Ok(Request::LocalState { key }) => {
            log(&state, "local_state", vec![key.clone()], 0);
            let held = state.written.lock().unwrap().contains(&key);
            Response::LocalState(held.then(Profile::default))
        }
        Ok(Request::Digests { peer }) => {
            log(&state, "digests", vec![peer.to_string()], 0);
            Response::Digests(vec![state.written.lock().unwrap().len() as u64, 0])
        }
        Ok(Request::Leave) => {
            log(&state, "leave", vec![], 0);
            let addr = state.addr.lock().unwrap().unwrap();
            state
                .shared
                .table
                .lock()
                .unwrap()
                .set(&state.id, addr, MemberState::Leaving);
            Response::Leaving
        }
        Ok(Request::Ingest { events }) => {
            log(&state, "ingest", vec![], 0);
            refused(
                ErrorCode::Unavailable,
                &format!("the fake node does not ingest ({} events)", events.len()),
            )
        }
        Ok(
            Request::DeadLetters { .. }
            | Request::DeadLetter { .. }
            | Request::ReplayDeadLetters { .. }
            | Request::PurgeDeadLetters { .. },
        ) => {
            log(&state, "dlq", vec![], 0);
            refused(
                ErrorCode::Unavailable,
                "the fake node keeps no dead letters",
            )
        }
        // An empty page at once: a subscription's follower polls again and again (counted).
        Ok(Request::SegmentChanges { from, .. }) => {
            log(&state, "changes", vec![], 0);
            Response::SegmentChanges(featurestore::wire::segment::ChangePage {
                node: Some(state.id.clone()),
                changes: Vec::new(),
                next: from,
                oldest: 1,
            })
        }
        Ok(
            Request::SegmentWhy { .. }
            | Request::SegmentMembers { .. }
            | Request::Segments
            | Request::DefineSegments { .. },
        ) => refused(
            ErrorCode::Unavailable,
            "the fake node evaluates no segments",
        ),
        Ok(Request::Writes { .. }) => refused(ErrorCode::MalformedFrame, "nested writes"),
    };
    Some(reply)
}

/// The ring the fake cluster describes, built independently of the client.
fn expected_ring(nodes: &[&Fake]) -> Ring {
    Ring::new(0, nodes.iter().map(|f| f.id.clone()), VNODES)
}

fn node_of<'a>(nodes: &'a [Fake], id: &NodeId) -> &'a Fake {
    nodes.iter().find(|f| f.id == *id).unwrap()
}

/// The feature `name` of a `p-` profile.
fn text(profile: &Option<ProfileView>, name: &str) -> String {
    match profile.as_ref().unwrap().features.get(name) {
        Some(FeatureView::Gauge {
            value: Value::Str(s),
            ..
        }) => s.to_string(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn typed_calls_round_trip() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let (n1, state) = (&nodes[0], &nodes[0].state);
    let client = Client::connect(client_config(&pki, vec![n1.seed()]))
        .await
        .unwrap();
    assert_eq!(client.connected_node(), "n1");
    assert_eq!(client.replicas("u1"), vec![id("n1")]);
    let cluster = client.cluster();
    assert_eq!(cluster.replication_factor, 3);
    assert_eq!(cluster.vnodes, VNODES);
    assert_eq!(client.ring_version(), 1);

    assert_eq!(client.get("u1", Some(&["a"])).await.unwrap(), None);
    assert_eq!(
        client.get_many(&["u1", "u2"], None).await.unwrap(),
        vec![None, None]
    );
    assert_eq!(client.get_many(&[], None).await.unwrap(), vec![]);
    let ack = client
        .put("u1", &[("a", Value::I64(1)), ("b", Value::Bool(true))])
        .await
        .unwrap();
    assert_eq!(ack.version, marker());
    assert_eq!(ack.superseded, vec!["b".to_owned()]);
    assert_eq!(
        client
            .increment("u1", &[("c", 3), ("d", -2)])
            .await
            .unwrap(),
        vec![3, -2]
    );
    let context: featurestore::CausalContext = "n1:3".parse().unwrap();
    let flag = client
        .set_flag("u1", "vip", true, &context, Some(10))
        .await
        .unwrap();
    assert_eq!(flag.context, context);
    assert_eq!(client.erase("u1").await.unwrap(), marker());

    let status = client.status().await.unwrap();
    assert_eq!(status.version, "fake");
    assert_eq!(status.ring_version, 1);
    assert_eq!(status.members.len(), 1);
    assert_eq!(status.members[0].state, MemberState::Active);
    assert_eq!(client.status_of(&id("n1")).await.unwrap().node_id, id("n1"));
    assert_eq!(
        client.local_state(&id("n1"), "u1").await.unwrap(),
        Some(Profile::default())
    );
    assert_eq!(client.local_state(&id("n1"), "u2").await.unwrap(), None);
    assert_eq!(
        client.digests(&id("n1"), &id("n2")).await.unwrap(),
        vec![1, 0]
    );

    // Quorums: the configured ones (1), per call, and per client.
    assert!(state.seen("put").iter().all(|s| s.quorum == 1));
    client.get_with_quorum("u1", None, 3).await.unwrap();
    assert_eq!(state.seen("get").last().unwrap().quorum, 3);
    let careful = client.with_quorums(2, 3);
    assert_eq!((careful.read_quorum(), careful.write_quorum()), (2, 3));
    careful.get("u1", None).await.unwrap();
    careful.get_many(&["u1"], None).await.unwrap();
    careful.increment("u1", &[("c", 1)]).await.unwrap();
    careful.erase("u1").await.unwrap();
    assert_eq!(state.seen("get").last().unwrap().quorum, 2);
    assert_eq!(state.seen("get_many").last().unwrap().quorum, 2);
    assert_eq!(state.seen("increment").last().unwrap().quorum, 3);
    assert_eq!(state.seen("erase").last().unwrap().quorum, 3);
    assert_eq!(client.read_quorum(), 1);

    let err = client
        .put("refuse", &[("a", Value::I64(1))])
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::LimitExceeded), "{err}");
    assert!(err.to_string().contains("too big"), "{err}");

    let err = client.get("wrong-variant", None).await.unwrap_err();
    assert!(matches!(err, Error::UnexpectedResponse { .. }), "{err}");

    let err = client.get("huge", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol(featurestore::Error::FrameTooLarge { .. })
        ),
        "{err}"
    );
    let err = client.get("no-answer", None).await.unwrap_err();
    assert!(
        matches!(err, Error::Protocol(featurestore::Error::Malformed { .. })),
        "{err}"
    );
    let err = client.status_of(&id("n9")).await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownNode(ref n) if n == "n9"),
        "{err}"
    );

    assert_eq!(state.connections.load(Ordering::SeqCst), 1);
    client.close().await;
    assert!(matches!(client.status().await, Err(Error::Closed)));
    assert!(matches!(client.get("u1", None).await, Err(Error::Closed)));
}

#[tokio::test]
async fn raw_frames_get_raw_answers() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let v = featurestore::wire::client::PROTOCOL_VERSION;
    let reply = client
        .send_raw(&[v, 0, 0, 0, 3, b'a', b'b', b'c'])
        .await
        .unwrap();
    let payload = codec::split_frame(&reply, 1 << 20).unwrap();
    match codec::decode_response(payload).unwrap() {
        Response::Error(e) => assert_eq!(e.code, ErrorCode::MalformedFrame),
        other => panic!("{other:?}"),
    }
    let reply = client.send_raw(b"\x09\x00\x00\x00\x00").await.unwrap();
    let payload = codec::split_frame(&reply, 1 << 20).unwrap();
    match codec::decode_response(payload).unwrap() {
        Response::Error(e) => assert_eq!(e.code, ErrorCode::UnsupportedVersion),
        other => panic!("{other:?}"),
    }
    // A well-formed frame through send_raw is answered normally.
    let frame = codec::encode_request(&Request::Status).unwrap();
    let reply = client.send_raw(&frame).await.unwrap();
    let payload = codec::split_frame(&reply, 1 << 20).unwrap();
    assert!(matches!(
        codec::decode_response(payload).unwrap(),
        Response::Status(_)
    ));
    client.close().await;
}

#[tokio::test]
async fn concurrent_requests_share_one_connection() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let state = &nodes[0].state;
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.get(&format!("user-{i}"), None).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), None);
    }
    assert_eq!(state.gets.load(Ordering::SeqCst), 64);
    assert_eq!(state.connections.load(Ordering::SeqCst), 1);
    client.close().await;
}

/// Many tasks writing at once share `Writes` requests (the client's coalescing), and each write gets
/// its own answer: a refused one (`refuse`) fails alone, its neighbours in the same request succeed.
/// With coalescing off, every write is its own request.
#[tokio::test]
async fn concurrent_writes_share_requests_and_get_their_own_answers() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let state = &nodes[0].state;
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let key = if i % 50 == 7 {
                    "refuse".to_owned()
                } else {
                    format!("user-{i}")
                };
                let result = match i % 3 {
                    0 => client
                        .put(&key, &[("a", Value::I64(i)), ("b", Value::I64(0))])
                        .await
                        .map(|ack| format!("put {:?}", ack.superseded)),
                    1 => client
                        .increment(&key, &[("c", i)])
                        .await
                        .map(|values| format!("incr {values:?}")),
                    _ => client.erase(&key).await.map(|_| "erased".to_owned()),
                };
                (i, key, result)
            })
        })
        .collect();
    for task in tasks {
        let (i, key, result) = task.await.unwrap();
        if key == "refuse" && i % 3 == 0 {
            let err = result.unwrap_err();
            assert_eq!(err.server_code(), Some(ErrorCode::LimitExceeded), "{err}");
            continue;
        }
        let want = match i % 3 {
            0 => r#"put ["b"]"#.to_owned(),
            1 => format!("incr [{i}]"),
            _ => "erased".to_owned(),
        };
        assert_eq!(result.unwrap(), want, "write {i}");
    }
    let written: usize = ["put", "increment", "erase"]
        .iter()
        .map(|op| state.seen(op).len())
        .sum();
    assert_eq!(written, 200, "every write reached the node once");
    let batches = state.batches.load(Ordering::SeqCst);
    assert!(
        (1..=100).contains(&batches),
        "{batches} requests for 200 concurrent writes"
    );
    client.close().await;

    let plain = Client::connect(ClientConfig {
        coalesce_requests_per_node: 0,
        ..client_config(&pki, vec![nodes[0].seed()])
    })
    .await
    .unwrap();
    for i in 0..10 {
        plain.increment("alone", &[("c", i)]).await.unwrap();
    }
    assert_eq!(state.batches.load(Ordering::SeqCst), batches);
    assert_eq!(state.increments.load(Ordering::SeqCst), (200 / 3 + 1) + 10);
    plain.close().await;
}

#[tokio::test]
async fn a_lost_connection_is_replaced_and_only_reads_are_retried() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let state = &nodes[0].state;
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();

    // The node closes the connection instead of answering: the read is retried on a new connection.
    assert_eq!(client.get("drop-conn", None).await.unwrap(), None);
    assert_eq!(state.gets.load(Ordering::SeqCst), 2);
    assert_eq!(state.connections.load(Ordering::SeqCst), 2);

    // A write that loses its connection is not retried...
    let err = client
        .increment("drop-conn", &[("c", 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    assert_eq!(state.increments.load(Ordering::SeqCst), 1);
    // ...but the next request reconnects.
    assert_eq!(client.increment("u1", &[("c", 1)]).await.unwrap(), vec![1]);
    assert_eq!(state.increments.load(Ordering::SeqCst), 2);
    assert_eq!(state.connections.load(Ordering::SeqCst), 3);
    client.close().await;
}

#[tokio::test]
async fn seeds_are_tried_in_order_and_failures_listed() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let addr = nodes[0].addr;
    // A UDP socket that never answers: the handshake times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();

    let client = Client::connect(client_config(
        &pki,
        vec![NodeAddr::new("n2", silent_addr), NodeAddr::new("n1", addr)],
    ))
    .await
    .unwrap();
    assert_eq!(client.connected_node(), "n1");
    // The table (n1 only) decides the ring; the unlisted seed is not a replica of anything.
    assert_eq!(client.replicas("u1"), vec![id("n1")]);
    client.close().await;

    // The node's certificate does not name n9: the handshake fails.
    let err = Client::connect(client_config(
        &pki,
        vec![NodeAddr::new("n2", silent_addr), NodeAddr::new("n9", addr)],
    ))
    .await
    .unwrap_err();
    match &err {
        Error::Connect { attempts } => {
            assert_eq!(attempts.len(), 2);
            assert_eq!(attempts[0].node, "n2");
            assert!(attempts[0].error.contains("timed out"), "{err}");
            assert_eq!(attempts[1].node, "n9");
            assert!(attempts[1].error.contains("certificate"), "{err}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn requests_time_out() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let client = Client::connect(ClientConfig {
        request_timeout_ms: 200,
        ..client_config(&pki, vec![nodes[0].seed()])
    })
    .await
    .unwrap();
    let err = client.get("hang", None).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // The connection is still usable.
    assert_eq!(client.get("u1", None).await.unwrap(), None);
    client.close().await;
}

#[tokio::test]
async fn a_client_without_a_trusted_certificate_is_refused() {
    let trusted = pki();
    let other = pki();
    let nodes = start_cluster(&trusted, 1, 3);
    // Trusts the node's CA but presents a certificate from another CA.
    let config = ClientConfig {
        ca_cert: trusted.dir.path().join("ca.pem"),
        ..client_config(&other, vec![nodes[0].seed()])
    };
    let result = async {
        let client = Client::connect(config).await?;
        client.status().await
    }
    .await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn requests_go_to_the_replicas_of_their_key() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 2);
    // One seed is enough: the rest is learnt from it.
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let cluster = client.cluster();
    assert_eq!(cluster.table.members.len(), 3);
    assert_eq!(cluster.replication_factor, 2);
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());

    for k in 0..30 {
        let key = format!("p-{k}");
        let replicas = ring.preference_list(key.as_bytes(), 2);
        assert_eq!(client.replicas(&key), replicas);
        let owner = node_of(&nodes, &replicas[0]);
        client.put(&key, &[("a", Value::I64(1))]).await.unwrap();
        client.increment(&key, &[("c", 1)]).await.unwrap();
        let profile = client.get(&key, None).await.unwrap();
        assert_eq!(text(&profile, "node"), owner.id.as_str());
        for node in &nodes {
            let expected = usize::from(node.id == owner.id);
            for op in ["put", "increment", "get"] {
                let count = node.state.keys(op).iter().filter(|k| **k == key).count();
                assert_eq!(count, expected, "{op} {key} on {}", node.id);
            }
        }
    }
    // One connection per node, each used.
    for node in &nodes {
        assert_eq!(node.state.connections.load(Ordering::SeqCst), 1);
        assert!(!node.state.seen("put").is_empty(), "{}", node.id);
    }
    client.close().await;
}

#[tokio::test]
async fn get_many_is_grouped_per_node_and_reassembled_in_order() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 2);
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    let mut keys: Vec<String> = (0..40).map(|k| format!("p-{k}")).collect();
    keys.push("absent".into());
    keys.push("p-3".into());
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();

    let profiles = client
        .get_many(&refs, Some(&["key", "node"]))
        .await
        .unwrap();
    assert_eq!(profiles.len(), keys.len());
    for (key, profile) in keys.iter().zip(&profiles) {
        if key == "absent" {
            assert_eq!(*profile, None);
            continue;
        }
        let owner = ring.owner(key.as_bytes()).unwrap();
        assert_eq!(text(profile, "key"), *key);
        assert_eq!(text(profile, "node"), owner.as_str());
    }
    // One GetMany per node, holding exactly the keys it owns, in request order; no single gets.
    for node in &nodes {
        let batches = node.state.seen("get_many");
        assert_eq!(batches.len(), 1, "{}", node.id);
        let owned: Vec<String> = keys
            .iter()
            .filter(|k| ring.owner(k.as_bytes()) == Some(&node.id))
            .cloned()
            .collect();
        assert_eq!(batches[0].keys, owned, "{}", node.id);
        assert!(node.state.seen("get").is_empty());
    }
    client.close().await;
}

#[tokio::test]
async fn a_failed_get_many_group_is_read_key_by_key_from_other_replicas() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 2);
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    let keys: Vec<String> = (0..30).map(|k| format!("p-{k}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();

    // n2 refuses batches (Unavailable): its keys are read one by one.
    nodes[1].state.refuse_batches.store(true, Ordering::SeqCst);
    // n3 is down: its keys are read one by one from their second replica.
    nodes[2].stop();

    let profiles = client.get_many(&refs, None).await.unwrap();
    for (key, profile) in keys.iter().zip(&profiles) {
        let replicas = ring.preference_list(key.as_bytes(), 2);
        assert_eq!(text(profile, "key"), *key);
        let served_by = id(&text(profile, "node"));
        if replicas[0] == id("n3") {
            assert_eq!(served_by, replicas[1], "{key}");
        } else {
            assert_eq!(served_by, replicas[0], "{key}");
        }
    }
    let n2_keys: Vec<String> = keys
        .iter()
        .filter(|k| ring.owner(k.as_bytes()) == Some(&id("n2")))
        .cloned()
        .collect();
    assert!(!n2_keys.is_empty());
    let mut got = nodes[1].state.keys("get");
    got.retain(|k| n2_keys.contains(k));
    got.sort();
    let mut want = n2_keys.clone();
    want.sort();
    assert_eq!(got, want);
    client.close().await;
}

#[tokio::test]
async fn reads_fail_over_and_writes_move_on_only_when_undelivered() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 2);
    let client = Client::connect(client_config(&pki, nodes.iter().map(Fake::seed).collect()))
        .await
        .unwrap();
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    // A key owned by n3, which goes down.
    let key = (0..)
        .map(|k| format!("p-{k}"))
        .find(|k| ring.owner(k.as_bytes()) == Some(&id("n3")))
        .unwrap();
    let second = node_of(&nodes, &ring.preference_list(key.as_bytes(), 2)[1]);
    nodes[2].stop();
    // Until the client has the close, a request may still go out on the old connection and be lost in
    // flight (an ambiguous write, another test's case): wait for the node's connections to drain.
    nodes[2].endpoint.wait_idle().await;

    // Connecting to n3 fails, so the write certainly did not reach it: the next replica takes it.
    client.put(&key, &[("a", Value::I64(1))]).await.unwrap();
    assert_eq!(second.state.keys("put"), vec![key.clone()]);
    // Reads go to the next replica as well.
    let profile = client.get(&key, None).await.unwrap();
    assert_eq!(text(&profile, "node"), second.id.as_str());
    assert!(nodes[2].state.seen("put").is_empty());

    client.close().await;
}

#[tokio::test]
async fn a_write_that_may_have_been_delivered_is_not_sent_again() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 2);
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    // The owner of `drop-conn` closes the connection after receiving the increment: another replica
    // could take it, but it may have been applied, so the error is returned instead.
    let owner = client.replicas("drop-conn")[0].clone();
    let err = client
        .increment("drop-conn", &[("c", 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err}");
    for node in &nodes {
        let expected = usize::from(node.id == owner);
        assert_eq!(
            node.state.increments.load(Ordering::SeqCst),
            expected,
            "{}",
            node.id
        );
    }
    client.close().await;
}

#[tokio::test]
async fn writes_fall_back_to_any_live_member_and_reads_do_not() {
    let pki = pki();
    // N=1: each key has exactly one replica.
    let nodes = start_cluster(&pki, 2, 1);
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    let key = (0..)
        .map(|k| format!("p-{k}"))
        .find(|k| ring.owner(k.as_bytes()) == Some(&id("n2")))
        .unwrap();
    nodes[1].stop();

    // The only replica is down: n1 takes the write as a sloppy-quorum coordinator.
    client.increment(&key, &[("c", 1)]).await.unwrap();
    assert_eq!(nodes[0].state.keys("increment"), vec![key.clone()]);
    // A read is never sent to a node outside the preference list.
    let err = client.get(&key, None).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(nodes[0].state.seen("get").is_empty());
    client.close().await;
}

#[tokio::test]
async fn unavailable_moves_reads_on_but_not_writes() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 2);
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    let key = "unavail-1";
    let replicas = ring.preference_list(key.as_bytes(), 2);

    let err = client.get(key, None).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::Unavailable), "{err}");
    for node in &nodes {
        let asked = node.state.keys("get").len();
        assert_eq!(
            asked,
            usize::from(replicas.contains(&node.id)),
            "{}",
            node.id
        );
    }

    let err = client.put(key, &[("a", Value::I64(1))]).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::Unavailable), "{err}");
    for node in &nodes {
        let asked = node.state.keys("put").len();
        assert_eq!(asked, usize::from(node.id == replicas[0]), "{}", node.id);
    }
    client.close().await;
}

#[tokio::test]
async fn admin_calls_go_to_the_named_node() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 2);
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let (n2, n3) = (id("n2"), id("n3"));

    let status = client.status_of(&n2).await.unwrap();
    assert_eq!(status.node_id, n2);
    assert_eq!(status.members.len(), 3);
    assert_eq!(client.status().await.unwrap().node_id, id("n1"));

    let replicas = client.replicas("p-7");
    client.put("p-7", &[("a", Value::I64(1))]).await.unwrap();
    assert_eq!(
        client.local_state(&replicas[0], "p-7").await.unwrap(),
        Some(Profile::default())
    );
    assert_eq!(client.local_state(&replicas[1], "p-7").await.unwrap(), None);
    assert_eq!(client.digests(&n3, &n2).await.unwrap().len(), 2);
    assert_eq!(node_of(&nodes, &n3).state.keys("digests"), vec!["n2"]);

    let before = client.ring_version();
    client.leave(&n3).await.unwrap();
    assert_eq!(node_of(&nodes, &n3).state.seen("leave").len(), 1);
    let view = client.refresh_cluster().await.unwrap();
    assert_eq!(view.table.get(&n3).unwrap().state, MemberState::Leaving);
    assert!(client.ring_version() > before);
    // A leaving node still serves its ranges: it stays in the current ring.
    assert_eq!(client.status_of(&n3).await.unwrap().node_id, n3);
    client.close().await;
}

#[tokio::test]
async fn a_seed_that_cannot_describe_the_cluster_gives_a_ring_of_the_seeds() {
    let pki = pki();
    let shared = Arc::new(Shared {
        table: Mutex::new(MembershipTable::default()),
        replication_factor: 3,
        describes_cluster: false,
    });
    let n1 = start_node(&pki, "n1", &shared);
    let client = Client::connect(client_config(&pki, vec![n1.seed()]))
        .await
        .unwrap();
    assert_eq!(client.ring_version(), 0);
    let cluster = client.cluster();
    assert_eq!(cluster.table.members.len(), 1);
    assert_eq!(cluster.replication_factor, 3);
    assert_eq!(client.replicas("u1"), vec![id("n1")]);
    assert_eq!(client.get("u1", None).await.unwrap(), None);
    let err = client.refresh_cluster().await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::MalformedFrame), "{err}");
    client.close().await;
}

#[tokio::test]
async fn the_view_is_refreshed_in_the_background() {
    let pki = pki();
    let mut nodes = start_cluster(&pki, 2, 1);
    let client = Client::connect(ClientConfig {
        ring_refresh_ms: 50,
        ..client_config(&pki, vec![nodes[0].seed()])
    })
    .await
    .unwrap();
    assert_eq!(client.cluster().table.members.len(), 2);
    let shared = nodes[0].state.shared.clone();
    nodes.push(start_node(&pki, "n3", &shared));

    // Requests trigger the refresh once the view is older than ring_refresh_ms.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.cluster().table.get(&id("n3")).is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never refreshed");
        client.get("u1", None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.ring_version(), 3);
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    let key = (0..)
        .map(|k| format!("p-{k}"))
        .find(|k| ring.owner(k.as_bytes()) == Some(&id("n3")))
        .unwrap();
    client.put(&key, &[("a", Value::I64(1))]).await.unwrap();
    assert_eq!(nodes[2].state.keys("put"), vec![key]);
    client.close().await;
}

/// Runs `storectl` with `args` against the configuration in `dir`; returns (exit code, stdout, stderr).
async fn storectl(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let config = dir.join("client.toml");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_storectl"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("FEATURESTORE_CLIENT_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storectl_prints_json_and_reports_errors() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let (addr, state) = (nodes[0].addr, &nodes[0].state);
    let dir = pki.dir.path();
    // Relative paths: resolved against the directory of client.toml, not the working directory.
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "ca_cert = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n\
             write_quorum = 2\n\
             [[nodes]]\nname = \"n1\"\naddr = \"{addr}\"\n"
        ),
    )
    .unwrap();

    let (code, out, err) = storectl(dir, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    let status = json(&out);
    assert_eq!(status["node_id"], "n1");
    assert_eq!(status["ring_version"], 1);
    assert_eq!(status["members"][0]["state"], "active");
    assert_eq!(status["members"][0]["liveness"], "alive");
    assert_eq!(status["members"][0]["hints_queued"], 0);

    let (code, out, err) = storectl(dir, &["status", "--node", "n1"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["node_id"], "n1");

    let (code, out, err) = storectl(dir, &["cluster"]).await;
    assert_eq!(code, 0, "{err}");
    let cluster = json(&out);
    assert_eq!(cluster["replication_factor"], 3);
    assert_eq!(cluster["vnodes"], VNODES);
    assert_eq!(cluster["table"]["members"]["n1"]["addr"], addr.to_string());

    let (code, out, _) = storectl(dir, &["get", "u1", "--features", "a,b", "--quorum", "2"]).await;
    assert_eq!((code, out.trim()), (0, "null"));
    assert_eq!(state.seen("get").last().unwrap().quorum, 2);

    let (code, out, _) = storectl(dir, &["get-many", "u1", "u2"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out), serde_json::json!([null, null]));

    let (code, out, _) = storectl(dir, &["incr", "u1", "a=2", "b=-1"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out), serde_json::json!({"a": 2, "b": -1}));
    // The configured write quorum.
    assert_eq!(state.seen("increment").last().unwrap().quorum, 2);

    let (code, out, _) = storectl(
        dir,
        &["put", "u1", "a=1", "b=x", "--ttl-ms", "5", "--quorum", "3"],
    )
    .await;
    assert_eq!(code, 0);
    let ack = json(&out);
    assert_eq!(ack["superseded"], serde_json::json!(["b"]));
    assert!(ack["version"].as_str().unwrap().ends_with("@n1"), "{ack}");
    assert_eq!(state.seen("put").last().unwrap().quorum, 3);

    let (code, out, _) = storectl(dir, &["flag", "u1", "vip=true", "--context", "n1:3"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["context"], "n1:3");

    let (code, out, _) = storectl(dir, &["erase", "u1", "--quorum", "1"]).await;
    assert_eq!(code, 0);
    let erased = json(&out);
    assert!(
        erased["watermark"].as_str().unwrap().ends_with("@n1"),
        "{erased}"
    );
    assert_eq!(state.seen("erase").last().unwrap().quorum, 1);

    let (code, out, err) = storectl(dir, &["local", "u1", "--node", "n1"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out),
        serde_json::to_value(Profile::default()).unwrap()
    );
    let (code, out, _) = storectl(dir, &["local", "never-written", "--node", "n1"]).await;
    assert_eq!((code, out.trim()), (0, "null"));

    let (code, out, err) = storectl(dir, &["digests", "--node", "n1", "--peer", "n2"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out), serde_json::json!([1, 0]));

    let (code, out, err) = storectl(dir, &["status", "--node", "n4"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("unknown node n4"), "{err}");

    let (code, out, err) = storectl(dir, &["put", "refuse", "a=1"]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("LimitExceeded"), "{err}");

    let (code, _, err) = storectl(dir, &["put", "u1", "oops"]).await;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = storectl(dir, &["leave", "--node", "n1"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out),
        serde_json::json!({"node": "n1", "leaving": true})
    );
    let (code, out, _) = storectl(dir, &["cluster"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out)["table"]["members"]["n1"]["state"], "leaving");
}

/// What `client` believes about node `node`.
fn health_of(client: &Client, node: &str) -> store_client::NodeHealth {
    client
        .node_health()
        .into_iter()
        .find(|h| h.node.as_str() == node)
        .unwrap_or_else(|| panic!("no health for {node}: {:?}", client.node_health()))
}

/// The `skip`-th key `<prefix><k>` whose first replica is `owner`.
fn key_owned_by(ring: &Ring, prefix: &str, owner: &str, skip: usize) -> String {
    (0..)
        .map(|k| format!("{prefix}{k}"))
        .filter(|k| ring.owner(k.as_bytes()) == Some(&id(owner)))
        .nth(skip)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_is_hedged_and_not_judged_down() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 3);
    let seeds: Vec<NodeAddr> = nodes.iter().map(Fake::seed).collect();
    let client = Client::connect(ClientConfig {
        hedge_delay_us: Some(20_000),
        ..client_config(&pki, seeds.clone())
    })
    .await
    .unwrap();
    assert_eq!(client.hedge_delay(), Some(Duration::from_millis(20)));
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    // n1 owns the key and never answers it, but it is alive: it acknowledges the request.
    let key = key_owned_by(&ring, "p-slow-n1-", "n1", 0);
    let replicas = ring.preference_list(key.as_bytes(), 3);
    let second = replicas[1].clone();

    let begin = Instant::now();
    let profile = client.get(&key, None).await.unwrap();
    let took = begin.elapsed();
    // The second replica normally answers; on a loaded machine it may take longer than another hedge
    // delay, and then the third replica, asked next, may answer first. Never n1.
    let answered = text(&profile, "node");
    assert!(
        answered != "n1" && replicas.iter().any(|r| r.as_str() == answered),
        "answered by {answered}"
    );
    if answered != second.as_str() {
        assert_eq!(
            node_of(&nodes, &replicas[2]).state.keys("get"),
            vec![key.clone()]
        );
    }
    assert!(
        took >= Duration::from_millis(20) && took < Duration::from_secs(1),
        "{took:?}"
    );
    // n1 was asked first, the second replica after the hedge delay.
    assert_eq!(nodes[0].state.keys("get"), vec![key.clone()]);
    assert_eq!(
        node_of(&nodes, &second).state.keys("get"),
        vec![key.clone()]
    );
    // Well past the failure timeout: a slow node that acknowledges is not judged down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n1 = health_of(&client, "n1");
    assert!(!n1.down && n1.failures == 0, "{n1:?}");
    client.close().await;

    // Without hedging the same read waits for n1 until the deadline: a typed timeout.
    let patient = Client::connect(ClientConfig {
        hedge_delay_us: Some(0),
        request_timeout_ms: 400,
        ..client_config(&pki, seeds)
    })
    .await
    .unwrap();
    assert_eq!(patient.hedge_delay(), None);
    let begin = Instant::now();
    let err = patient.get(&key, None).await.unwrap_err();
    let took = begin.elapsed();
    assert!(
        matches!(err, Error::Timeout { after } if after == Duration::from_millis(400)),
        "{err}"
    );
    assert!(took < Duration::from_millis(1_500), "{took:?}");
    patient.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_bounds_the_whole_call() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 3);
    let client = Client::connect(ClientConfig {
        hedge_delay_us: Some(10_000),
        ..client_config(&pki, vec![nodes[0].seed()])
    })
    .await
    .unwrap();
    // Every replica hangs: hedged to all three, and the whole call still ends at its deadline (the
    // previous client gave every attempt its own timeout).
    let quick = client.with_deadline(Duration::from_millis(300));
    assert_eq!(quick.deadline(), Duration::from_millis(300));
    assert_eq!(client.deadline(), Duration::from_millis(2_000));
    let begin = Instant::now();
    let err = quick.get("hang", None).await.unwrap_err();
    let took = begin.elapsed();
    assert!(
        matches!(err, Error::Timeout { after } if after == Duration::from_millis(300)),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(900),
        "{took:?}"
    );
    for node in &nodes {
        assert_eq!(node.state.keys("get"), vec!["hang"], "{}", node.id);
    }
    // get_many is bounded by one deadline too: its batches and the keys read one by one after them.
    let begin = Instant::now();
    let err = quick.get_many(&["hang", "p-1"], None).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        begin.elapsed() < Duration::from_millis(900),
        "{:?}",
        begin.elapsed()
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_routed_around_and_back_when_it_returns() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 3);
    // Hedging is off in effect (1 s): what moves the reads on here is the failure verdict.
    let client = Client::connect(client_config(&pki, nodes.iter().map(Fake::seed).collect()))
        .await
        .unwrap();
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    for owner in ["n1", "n2", "n3"] {
        let key = key_owned_by(&ring, "p-", owner, 0);
        assert_eq!(text(&client.get(&key, None).await.unwrap(), "node"), owner);
    }
    nodes[0].kill();

    // The first read of one of n1's keys goes to n1, gets not one packet back, and moves on when n1 is
    // judged down (after the 150 ms failure timeout, long before the 1 s hedge).
    let key = key_owned_by(&ring, "p-", "n1", 1);
    let second = ring.preference_list(key.as_bytes(), 3)[1].clone();
    let begin = Instant::now();
    let profile = client.get(&key, None).await.unwrap();
    let took = begin.elapsed();
    assert_eq!(text(&profile, "node"), second.as_str());
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(900),
        "{took:?}"
    );
    let n1 = health_of(&client, "n1");
    assert!(n1.down, "{n1:?}");
    assert!(
        n1.reason.as_deref().unwrap_or("").contains("packet"),
        "{n1:?}"
    );

    // From then on n1 is tried last: its keys are read from their next replica at once.
    for skip in 2..12 {
        let key = key_owned_by(&ring, "p-", "n1", skip);
        let begin = Instant::now();
        let profile = client.get(&key, None).await.unwrap();
        assert_ne!(text(&profile, "node"), "n1");
        assert!(
            begin.elapsed() < Duration::from_millis(100),
            "{:?}",
            begin.elapsed()
        );
    }

    // n1 comes back: the background probe finds it, and its keys go to it again.
    nodes[0].revive().await;
    let revived = Instant::now();
    let key = key_owned_by(&ring, "p-", "n1", 12);
    loop {
        let profile = client.get(&key, None).await.unwrap();
        if text(&profile, "node") == "n1" {
            break;
        }
        assert!(
            revived.elapsed() < Duration::from_secs(3),
            "n1 not used again: {:?}",
            client.node_health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!health_of(&client, "n1").down);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_on_a_killed_node_fail_fast_and_are_not_sent_again() {
    let pki = pki();
    let nodes = start_cluster(&pki, 3, 3);
    let ring = expected_ring(&nodes.iter().collect::<Vec<_>>());
    let client = Client::connect(client_config(&pki, nodes.iter().map(Fake::seed).collect()))
        .await
        .unwrap();
    // Connected to n1 before it dies.
    let warm = key_owned_by(&ring, "p-", "n1", 0);
    client.get(&warm, None).await.unwrap();
    nodes[0].kill();

    // A put sent to n1 may have reached it: it is not sent elsewhere, and fails as soon as n1 is judged
    // down (the 150 ms failure timeout), not at the 2 s deadline. An increment made at the same time
    // either rode in the same request (and fails the same way) or waited in n1's coalescing queue
    // behind it, unsent: then it goes to the next replica once n1 is judged down, and is applied there
    // once.
    let put_key = key_owned_by(&ring, "p-", "n1", 1);
    let incr_key = key_owned_by(&ring, "p-", "n1", 2);
    let begin = Instant::now();
    let (put, incr) = tokio::join!(
        client.put(&put_key, &[("a", Value::I64(1))]),
        client.increment(&incr_key, &[("c", 1)]),
    );
    let took = begin.elapsed();
    let may_have_applied = |err: Error| {
        assert!(matches!(err, Error::Transport(_)), "{err}");
        assert!(
            err.to_string().contains("may or may not have been applied"),
            "{err}"
        );
    };
    may_have_applied(put.unwrap_err());
    let increments_elsewhere: usize = nodes[1..]
        .iter()
        .map(|n| n.state.increments.load(Ordering::SeqCst))
        .sum();
    match incr {
        Ok(values) => {
            assert_eq!(values, [1]);
            assert_eq!(increments_elsewhere, 1, "applied once, on another replica");
        }
        Err(err) => {
            may_have_applied(err);
            assert_eq!(increments_elsewhere, 0, "not sent again");
        }
    }
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(1_000),
        "{took:?}"
    );
    for node in &nodes[1..] {
        assert!(node.state.seen("put").is_empty(), "{}", node.id);
    }
    // Now n1 is judged down: the next writes go to the next replica at once, never to n1.
    let second = node_of(&nodes, &ring.preference_list(put_key.as_bytes(), 3)[1]);
    let begin = Instant::now();
    client.put(&put_key, &[("a", Value::I64(2))]).await.unwrap();
    assert_eq!(
        client.increment(&incr_key, &[("c", 1)]).await.unwrap(),
        vec![1]
    );
    assert!(
        begin.elapsed() < Duration::from_millis(300),
        "{:?}",
        begin.elapsed()
    );
    assert_eq!(second.state.keys("put"), vec![put_key.clone()]);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_are_dialed_in_parallel_and_close_skips_unfinished_handshakes() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    // A UDP socket that never answers, first in the list: a dead first seed.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = client_config(
        &pki,
        vec![
            NodeAddr::new("n2", silent.local_addr().unwrap()),
            nodes[0].seed(),
        ],
    );
    let begin = Instant::now();
    let client = Client::connect(config).await.unwrap();
    let connected = begin.elapsed();
    assert_eq!(client.connected_node(), "n1");
    // The dead seed's 500 ms handshake timeout is not waited for.
    assert!(connected < Duration::from_millis(400), "{connected:?}");
    assert_eq!(client.get("u1", None).await.unwrap(), None);
    // Its handshake is still pending: close() neither waits for it nor for a fixed second.
    let begin = Instant::now();
    client.close().await;
    let closed = begin.elapsed();
    assert!(closed < Duration::from_millis(400), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storectl_answers_quickly_when_the_first_seed_is_dead() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = pki.dir.path();
    // Default timeouts: what a user's client.toml says.
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "ca_cert = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n\
             [[nodes]]\nname = \"n2\"\naddr = \"{}\"\n\
             [[nodes]]\nname = \"n1\"\naddr = \"{}\"\n",
            silent.local_addr().unwrap(),
            nodes[0].addr
        ),
    )
    .unwrap();
    let begin = Instant::now();
    let (code, out, err) = storectl(dir, &["get", "p-7", "--features", "node"]).await;
    let took = begin.elapsed();
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["features"]["node"]["value"], "n1", "{out}");
    // The whole process (start, connect, read, close, exit) takes well under a second.
    assert!(took < Duration::from_secs(1), "storectl took {took:?}");
    // And its close reached the node before it exited (not an idle timeout 30 s later).
    let closed = nodes[0].state.closes.lock().unwrap().clone();
    assert!(closed.len() == 1 && closed[0].contains("bye"), "{closed:?}");
}

#[tokio::test]
async fn dropping_a_subscription_stops_its_polls() {
    let pki = pki();
    let nodes = start_cluster(&pki, 1, 3);
    let state = nodes[0].state.clone();
    let client = Client::connect(client_config(&pki, vec![nodes[0].seed()]))
        .await
        .unwrap();
    let polls = || state.seen("changes").len();
    let subscription = client.subscribe_segments(None, store_client::Cursor::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while polls() < 3 {
        assert!(Instant::now() < deadline, "no polls");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(subscription);
    // A poll in flight may still be answered; after that, nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_drop = polls();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(polls(), after_drop, "a follower kept polling");
    client.close().await;
}
