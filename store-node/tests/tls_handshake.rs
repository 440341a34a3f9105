//! Real QUIC handshakes on 127.0.0.1 with certificates generated into a temporary directory:
//! mutual TLS succeeds for cluster certificates and is refused for foreign or missing client
//! certificates, wrong ALPN or wrong server name; regenerating reuses the CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use store_client::tls::{client_config, root_store, TransportLimits, CLIENT_ALPN, PEER_ALPN};
use store_node::certs::{generate, node_server_name, GeneratedCerts};
use store_node::net::tls::{peer_identity, server_config, PeerIdentity};
use tokio::sync::mpsc;

const STEP: Duration = Duration::from_secs(10);

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// What the server saw for one incoming connection.
type Outcome = Result<Option<PeerIdentity>, String>;

/// A running echo server: every connection's handshake outcome is reported on `outcomes`; every
/// bidirectional stream is echoed back.
struct Server {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    endpoint: quinn::Endpoint,
}

impl Server {
    fn start(certs: &GeneratedCerts, node: usize, alpn: &[&[u8]]) -> Self {
        let node = &certs.nodes[node];
        let config = server_config(
            &certs.ca.cert,
            &node.cert,
            &node.key,
            alpn,
            &TransportLimits::default(),
        )
        .unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (tx, outcomes) = mpsc::unbounded_channel();
        let accept = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let conn = match incoming.await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(peer_identity(&conn)));
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            if let Ok(data) = recv.read_to_end(1024).await {
                                let _ = send.write_all(&data).await;
                                let _ = send.finish();
                                let _ = send.stopped().await;
                            }
                        });
                    }
                });
            }
        });
        Self {
            addr,
            outcomes,
            endpoint,
        }
    }

    /// Asserts that the next connection failed its handshake with an error mentioning `reason`.
    async fn expect_refused(&mut self, reason: &str) {
        match self.next_outcome().await {
            Err(e) => assert!(e.contains(reason), "expected {reason:?} in {e:?}"),
            Ok(identity) => panic!("server accepted the connection as {identity:?}"),
        }
    }

    async fn next_outcome(&mut self) -> Outcome {
        tokio::time::timeout(STEP, self.outcomes.recv())
            .await
            .expect("server reported no handshake outcome in time")
            .expect("server task ended")
    }
}

fn client(certs: &GeneratedCerts, ca: &Path, client: usize, alpn: &[u8]) -> quinn::ClientConfig {
    let c = &certs.clients[client];
    client_config(ca, &c.cert, &c.key, alpn, &TransportLimits::default()).unwrap()
}

/// Connects, sends `ping` on a new bidirectional stream and returns the echo.
async fn ping(
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
) -> Result<Vec<u8>, String> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let attempt = async {
        let conn = endpoint
            .connect_with(config, addr, server_name)
            .map_err(|e| format!("connect: {e}"))?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
        send.write_all(b"ping")
            .await
            .map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let echo = recv
            .read_to_end(1024)
            .await
            .map_err(|e| format!("read: {e}"))?;
        conn.close(0u32.into(), b"done");
        Ok(echo)
    };
    let result = tokio::time::timeout(STEP, attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".to_string()));
    endpoint.wait_idle().await;
    result
}

async fn assert_good_client(
    server: &mut Server,
    config: quinn::ClientConfig,
    expected: PeerIdentity,
) {
    let echo = ping(config, server.addr, &node_server_name("n1")).await;
    assert_eq!(echo.as_deref(), Ok(&b"ping"[..]));
    assert_eq!(server.next_outcome().await, Ok(Some(expected)));
}

#[tokio::test]
async fn mutual_tls_accepts_cluster_clients_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate(dir.path(), &names(&["n1"]), &names(&["app"])).unwrap();
    let mut server = Server::start(&certs, 0, &[CLIENT_ALPN]);
    let good = || client(&certs, &certs.ca.cert, 0, CLIENT_ALPN);

    // 1. A cluster client: echo works and the server sees Client("app").
    assert_good_client(&mut server, good(), PeerIdentity::Client("app".into())).await;

    // 2. A client certificate from a different CA (trusting the right CA) is refused.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = generate(foreign_dir.path(), &[], &names(&["app"])).unwrap();
    let rogue = client(&foreign, &certs.ca.cert, 0, CLIENT_ALPN);
    let result = ping(rogue, server.addr, &node_server_name("n1")).await;
    assert!(result.is_err(), "foreign client accepted: {result:?}");
    server.expect_refused("certificate").await;
    assert_good_client(&mut server, good(), PeerIdentity::Client("app".into())).await;

    // 3. No client certificate at all is refused.
    let mut tls = rustls::ClientConfig::builder_with_provider(store_client::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(root_store(&certs.ca.cert).unwrap())
        .with_no_client_auth();
    tls.alpn_protocols = vec![CLIENT_ALPN.to_vec()];
    let anonymous = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let result = ping(anonymous, server.addr, &node_server_name("n1")).await;
    assert!(result.is_err(), "anonymous client accepted: {result:?}");
    server.expect_refused("certificate").await;

    // 4. The wrong ALPN (peer protocol on a client-only server) is refused.
    let wrong_alpn = client(&certs, &certs.ca.cert, 0, PEER_ALPN);
    let result = ping(wrong_alpn, server.addr, &node_server_name("n1")).await;
    assert!(result.is_err(), "wrong ALPN accepted: {result:?}");
    server.expect_refused("protocol").await;

    // 5. The client refuses a server that does not hold the dialled name.
    let result = ping(good(), server.addr, &node_server_name("n2")).await;
    assert!(result.is_err(), "wrong server name accepted: {result:?}");
    server.expect_refused("certificate").await;

    // The server still serves the good client after all refusals, also when dialled by address.
    assert_good_client(&mut server, good(), PeerIdentity::Client("app".into())).await;
    let echo = ping(good(), server.addr, "127.0.0.1").await;
    assert_eq!(echo.as_deref(), Ok(&b"ping"[..]));
    assert_eq!(
        server.next_outcome().await,
        Ok(Some(PeerIdentity::Client("app".into())))
    );

    server.endpoint.close(0u32.into(), b"bye");
}

#[tokio::test]
async fn node_certificate_identifies_a_peer_node() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate(dir.path(), &names(&["n1", "n2"]), &[]).unwrap();
    let mut server = Server::start(&certs, 0, &[CLIENT_ALPN, PEER_ALPN]);
    let n2 = &certs.nodes[1];
    let config = client_config(
        &certs.ca.cert,
        &n2.cert,
        &n2.key,
        PEER_ALPN,
        &TransportLimits::default(),
    )
    .unwrap();
    assert_good_client(&mut server, config, PeerIdentity::Node("n2".into())).await;
    server.endpoint.close(0u32.into(), b"bye");
}

#[tokio::test]
async fn regenerating_reuses_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let first = generate(dir.path(), &names(&["n1"]), &names(&["app"])).unwrap();
    let ca_before = std::fs::read(&first.ca.cert).unwrap();
    let node_before = std::fs::read(&first.nodes[0].cert).unwrap();

    // Add a client later; the CA and the old node certificate are untouched.
    let second = generate(dir.path(), &names(&["n1"]), &names(&["app", "late"])).unwrap();
    assert!(!second.ca.created);
    assert!(!second.nodes[0].created && !second.clients[0].created && second.clients[1].created);
    assert_eq!(std::fs::read(&second.ca.cert).unwrap(), ca_before);
    assert_eq!(std::fs::read(&second.nodes[0].cert).unwrap(), node_before);

    // The old node (server built from the first run's files) accepts the client issued in the
    // second run by the reloaded CA, and that client verifies the old node certificate.
    let mut server = Server::start(&first, 0, &[CLIENT_ALPN]);
    let late = client(&second, &second.ca.cert, 1, CLIENT_ALPN);
    assert_good_client(&mut server, late, PeerIdentity::Client("late".into())).await;
    let app = client(&second, &second.ca.cert, 0, CLIENT_ALPN);
    assert_good_client(&mut server, app, PeerIdentity::Client("app".into())).await;
    server.endpoint.close(0u32.into(), b"bye");
}
