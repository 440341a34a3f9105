//! The client against an in-process fake node: a minimal QUIC server speaking the wire protocol with
//! canned answers. It checks the client's transport behaviour (mutual TLS, framing, error mapping,
//! timeouts, reconnection, retry of reads only, connection sharing), not the node's semantics; end-to-end
//! tests against the real node live in `store-node`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use featurestore::codec;
use featurestore::protocol::{ErrorReply, NodeStatus, PutAck};
use featurestore::{ErrorCode, FlagView, Marker, NodeId, Request, Response, Timestamp};
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

/// What the fake node has seen.
#[derive(Default)]
struct State {
    connections: AtomicUsize,
    increments: AtomicUsize,
    gets: AtomicUsize,
    /// Set once a `drop-conn` read has closed a connection.
    dropped_read: AtomicBool,
}

struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    node_cert: CertificateDer<'static>,
    node_key: PrivateKeyDer<'static>,
}

/// A CA, a node certificate for `n1`/`n2`, and a client certificate (PEM files in a temp dir).
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
        vec!["n1.node.featurestore".into(), "n2.node.featurestore".into()],
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
        ..ClientConfig::new(
            dir.join("ca.pem"),
            dir.join("client.pem"),
            dir.join("client.key"),
            nodes,
        )
    }
}

/// Starts a fake node on a loopback port; requires client certificates signed by the CA.
fn start_node(pki: &Pki) -> (SocketAddr, Arc<State>, Endpoint) {
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
    let state = Arc::new(State::default());
    tokio::spawn(serve(endpoint.clone(), state.clone()));
    (addr, state, endpoint)
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
        });
    }
}

fn marker() -> Marker {
    Marker {
        ts: Timestamp::from_millis(1_000),
        node: NodeId::new("n1").unwrap(),
    }
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
        Err(e) => Response::Error(ErrorReply {
            code: e.code(),
            message: e.to_string(),
        }),
        Ok(Request::Get { key, .. }) => {
            state.gets.fetch_add(1, Ordering::SeqCst);
            match key.as_str() {
                "drop-conn" if !state.dropped_read.swap(true, Ordering::SeqCst) => {
                    conn.close(7u32.into(), b"restarting");
                    return;
                }
                "hang" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                "huge" => {
                    let _ = send.write_all(&[1, 0xff, 0xff, 0xff, 0xff]).await;
                    let _ = send.finish();
                    return;
                }
                "wrong-variant" => Response::Incremented(vec![]),
                "no-answer" => {
                    let _ = send.finish();
                    return;
                }
                _ => Response::Profile(None),
            }
        }
        Ok(Request::GetMany { keys, .. }) => Response::Profiles(vec![None; keys.len()]),
        Ok(Request::Put { key, .. }) if key == "refuse" => Response::Error(ErrorReply {
            code: ErrorCode::LimitExceeded,
            message: "too big".into(),
        }),
        Ok(Request::Put { gauges, .. }) => Response::Put(PutAck {
            version: marker(),
            superseded: gauges.into_iter().skip(1).map(|g| g.name).collect(),
        }),
        Ok(Request::Increment { key, deltas }) => {
            state.increments.fetch_add(1, Ordering::SeqCst);
            if key == "drop-conn" {
                conn.close(7u32.into(), b"restarting");
                return;
            }
            Response::Incremented(deltas.iter().map(|d| d.delta).collect())
        }
        Ok(Request::SetFlag { context, .. }) => Response::Flag(FlagView {
            values: vec![],
            context,
        }),
        Ok(Request::Erase { .. }) => Response::Erased {
            watermark: marker(),
        },
        Ok(Request::Status) => Response::Status(NodeStatus {
            node_id: NodeId::new("n1").unwrap(),
            version: "fake".into(),
            uptime_ms: 1,
            entities: 0,
            storage: "memory".into(),
            durability: "sync".into(),
            disk_bytes: 0,
            counters: vec![],
        }),
    };
    let frame = codec::encode_response(&reply).unwrap();
    let _ = send.write_all(&frame).await;
    let _ = send.finish();
    // Keep the stream until the client has read everything.
    let _ = send.stopped().await;
}

#[tokio::test]
async fn typed_calls_round_trip() {
    let pki = pki();
    let (addr, state, _server) = start_node(&pki);
    let client = Client::connect(client_config(&pki, vec![NodeAddr::new("n1", addr)]))
        .await
        .unwrap();
    assert_eq!(client.connected_node(), "n1");

    assert_eq!(client.get("u1", Some(&["a"])).await.unwrap(), None);
    assert_eq!(
        client.get_many(&["u1", "u2"], None).await.unwrap(),
        vec![None, None]
    );
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
    assert_eq!(client.status().await.unwrap().version, "fake");

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

    assert_eq!(state.connections.load(Ordering::SeqCst), 1);
    client.close().await;
    assert!(matches!(client.status().await, Err(Error::Closed)));
}

#[tokio::test]
async fn raw_frames_get_raw_answers() {
    let pki = pki();
    let (addr, _state, _server) = start_node(&pki);
    let client = Client::connect(client_config(&pki, vec![NodeAddr::new("n1", addr)]))
        .await
        .unwrap();
    let reply = client.send_raw(b"\x01\x00\x00\x00\x03abc").await.unwrap();
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
    let (addr, state, _server) = start_node(&pki);
    let client = Client::connect(client_config(&pki, vec![NodeAddr::new("n1", addr)]))
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

#[tokio::test]
async fn a_lost_connection_is_replaced_and_only_reads_are_retried() {
    let pki = pki();
    let (addr, state, _server) = start_node(&pki);
    let client = Client::connect(client_config(&pki, vec![NodeAddr::new("n1", addr)]))
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
async fn nodes_are_tried_in_order_and_failures_listed() {
    let pki = pki();
    let (addr, _state, _server) = start_node(&pki);
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
    client.close().await;

    // The node's certificate does not name n3: the handshake fails.
    let err = Client::connect(client_config(
        &pki,
        vec![NodeAddr::new("n2", silent_addr), NodeAddr::new("n3", addr)],
    ))
    .await
    .unwrap_err();
    match &err {
        Error::Connect { attempts } => {
            assert_eq!(attempts.len(), 2);
            assert_eq!(attempts[0].node, "n2");
            assert!(attempts[0].error.contains("timed out"), "{err}");
            assert_eq!(attempts[1].node, "n3");
            assert!(attempts[1].error.contains("certificate"), "{err}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn requests_time_out() {
    let pki = pki();
    let (addr, _state, _server) = start_node(&pki);
    let client = Client::connect(ClientConfig {
        request_timeout_ms: 200,
        ..client_config(&pki, vec![NodeAddr::new("n1", addr)])
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
    let (addr, _state, _server) = start_node(&trusted);
    // Trusts the node's CA but presents a certificate from another CA.
    let config = ClientConfig {
        ca_cert: trusted.dir.path().join("ca.pem"),
        ..client_config(&other, vec![NodeAddr::new("n1", addr)])
    };
    let result = async {
        let client = Client::connect(config).await?;
        client.status().await
    }
    .await;
    assert!(result.is_err(), "{result:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storectl_prints_json_and_reports_errors() {
    let pki = pki();
    let (addr, _state, _server) = start_node(&pki);
    let dir = pki.dir.path();
    // Relative paths: resolved against the directory of client.toml, not the working directory.
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "ca_cert = \"ca.pem\"\ncert = \"client.pem\"\nkey = \"client.key\"\n\
             [[nodes]]\nname = \"n1\"\naddr = \"{addr}\"\n"
        ),
    )
    .unwrap();

    let (code, out, err) = storectl(dir, &["status"]).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["node_id"], "n1");

    let (code, out, _) = storectl(dir, &["get", "u1", "--features", "a,b"]).await;
    assert_eq!((code, out.trim()), (0, "null"));

    let (code, out, _) = storectl(dir, &["get-many", "u1", "u2"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([null, null])
    );

    let (code, out, _) = storectl(dir, &["incr", "u1", "a=2", "b=-1"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({"a": 2, "b": -1})
    );

    let (code, out, _) = storectl(dir, &["put", "u1", "a=1", "b=x", "--ttl-ms", "5"]).await;
    assert_eq!(code, 0);
    let ack: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ack["superseded"], serde_json::json!(["b"]));
    assert!(ack["version"].as_str().unwrap().ends_with("@n1"), "{ack}");

    let (code, out, _) = storectl(dir, &["flag", "u1", "vip=true", "--context", "n1:3"]).await;
    assert_eq!(code, 0);
    let flag: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(flag["context"], "n1:3");

    let (code, out, _) = storectl(dir, &["erase", "u1"]).await;
    assert_eq!(code, 0);
    let erased: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(erased["watermark"].as_str().unwrap().ends_with("@n1"), "{erased}");

    let (code, out, err) = storectl(dir, &["put", "refuse", "a=1"]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("LimitExceeded"), "{err}");

    let (code, _, err) = storectl(dir, &["put", "u1", "oops"]).await;
    assert_eq!(code, 2, "{err}");
}
