//! The peer transport over real QUIC on 127.0.0.1, with certificates generated into a temporary
//! directory: messages queued for a peer while it connects go out on one stream and all arrive; a
//! stream carrying more than the ceiling, or a bad frame, is cut there (what came before it is
//! delivered, and counted), and the connection keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use featurestore::limits::PEER_BATCH_MESSAGES_CEILING;
use featurestore::wire::codec::encode_frame;
use featurestore::wire::peer::PeerMessage;
use featurestore::NodeId;
use store_client::tls::{client_config, TransportLimits, PEER_ALPN};
use store_node::certs::{generate, node_server_name, GeneratedCerts};
use store_node::net::peer::{read_peer_streams, PeerBatch, PeerMetrics, Peers};
use store_node::net::tls::server_config;
use tokio::sync::mpsc;

const STEP: Duration = Duration::from_secs(10);

fn ack(seq: u64) -> PeerMessage {
    PeerMessage::ReplicateAck {
        seq,
        key: format!("k{seq}"),
    }
}

/// n1 receiving peer streams: every delivered message's seq comes out of the channel.
struct Receiver {
    addr: SocketAddr,
    metrics: Arc<PeerMetrics>,
    delivered: mpsc::UnboundedReceiver<u64>,
    endpoint: quinn::Endpoint,
}

impl Receiver {
    fn start(certs: &GeneratedCerts) -> Self {
        let n1 = &certs.nodes[0];
        let config = server_config(
            &certs.ca.cert,
            &n1.cert,
            &n1.key,
            &[PEER_ALPN],
            &TransportLimits::default(),
        )
        .unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let metrics = Arc::new(PeerMetrics::default());
        let (tx, delivered) = mpsc::unbounded_channel();
        let (accept, m) = (endpoint.clone(), metrics.clone());
        tokio::spawn(async move {
            while let Some(incoming) = accept.accept().await {
                let Ok(conn) = incoming.await else { continue };
                let tx = tx.clone();
                let deliver = move |_from: NodeId, msg: PeerMessage| {
                    let tx = tx.clone();
                    async move {
                        if let PeerMessage::ReplicateAck { seq, .. } = msg {
                            let _ = tx.send(seq);
                        }
                    }
                };
                tokio::spawn(read_peer_streams(
                    conn,
                    NodeId::new("n2").unwrap(),
                    m.clone(),
                    deliver,
                ));
            }
        });
        Receiver {
            addr,
            metrics,
            delivered,
            endpoint,
        }
    }

    async fn next(&mut self) -> u64 {
        tokio::time::timeout(STEP, self.delivered.recv())
            .await
            .expect("delivered in time")
            .expect("open")
    }

    async fn wait_bad_frames(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + STEP;
        while self.metrics.bad_frames.load(Ordering::Relaxed) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "bad frame not counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn n2_config(certs: &GeneratedCerts) -> quinn::ClientConfig {
    let n2 = &certs.nodes[1];
    client_config(
        &certs.ca.cert,
        &n2.cert,
        &n2.key,
        PEER_ALPN,
        &TransportLimits::default(),
    )
    .unwrap()
}

fn client_endpoint() -> quinn::Endpoint {
    quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Fifty messages handed over at once (the sender is still connecting) travel in batches of at most
/// the limit, and every one arrives.
#[tokio::test]
async fn queued_messages_share_streams_and_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate(dir.path(), &["n1".to_owned(), "n2".to_owned()], &[]).unwrap();
    let mut receiver = Receiver::start(&certs);
    let batch = PeerBatch {
        messages: 16,
        bytes: 1 << 20,
    };
    let peers = Peers::new(client_endpoint(), n2_config(&certs), 256, STEP, batch);
    let n1 = NodeId::new("n1").unwrap();
    for seq in 0..50 {
        peers.send(&n1, receiver.addr, ack(seq));
    }
    let mut got = Vec::new();
    for _ in 0..50 {
        got.push(receiver.next().await);
    }
    got.sort_unstable();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    let batches = peers.metrics().batches.load(Ordering::Relaxed);
    assert!(
        (4..50).contains(&batches),
        "50 queued messages in batches of at most 16 took {batches} streams"
    );
    assert_eq!(receiver.metrics.received.load(Ordering::Relaxed), 50);
    assert_eq!(receiver.metrics.bad_frames.load(Ordering::Relaxed), 0);
    receiver.endpoint.close(0u32.into(), b"bye");
}

/// A stream over the ceiling is cut after the ceiling's messages; a bad frame cuts its stream after
/// the good ones before it; both are counted and the connection still carries the next stream.
#[tokio::test]
async fn a_stream_over_the_ceiling_or_with_a_bad_frame_is_cut_there() {
    let dir = tempfile::tempdir().unwrap();
    let certs = generate(dir.path(), &["n1".to_owned(), "n2".to_owned()], &[]).unwrap();
    let mut receiver = Receiver::start(&certs);
    let endpoint = client_endpoint();
    let conn = endpoint
        .connect_with(n2_config(&certs), receiver.addr, &node_server_name("n1"))
        .unwrap()
        .await
        .unwrap();
    let send_stream = |frames: Vec<u8>| {
        let conn = conn.clone();
        async move {
            let mut stream = conn.open_uni().await.unwrap();
            stream.write_all(&frames).await.unwrap();
            stream.finish().unwrap();
        }
    };

    let over = PEER_BATCH_MESSAGES_CEILING as u64 + 1;
    let mut frames = Vec::new();
    for seq in 0..over {
        frames.extend(encode_frame(&ack(seq)).unwrap());
    }
    send_stream(frames).await;
    let mut got = Vec::new();
    for _ in 0..PEER_BATCH_MESSAGES_CEILING {
        got.push(receiver.next().await);
    }
    got.sort_unstable();
    assert_eq!(got, (0..over - 1).collect::<Vec<_>>());
    receiver.wait_bad_frames(1).await;

    let mut frames = encode_frame(&ack(5000)).unwrap();
    // A frame header of this version announcing 3 bytes that are no peer message.
    let version = frames[0];
    frames.extend([version, 0, 0, 0, 3, 0xff, 0xff, 0xff]);
    frames.extend(encode_frame(&ack(5001)).unwrap());
    send_stream(frames).await;
    assert_eq!(receiver.next().await, 5000);
    receiver.wait_bad_frames(2).await;

    send_stream(encode_frame(&ack(6000)).unwrap()).await;
    assert_eq!(receiver.next().await, 6000, "the connection still serves");
    assert_eq!(
        receiver.metrics.received.load(Ordering::Relaxed),
        PEER_BATCH_MESSAGES_CEILING as u64 + 2
    );
    assert!(
        receiver.delivered.try_recv().is_err(),
        "nothing after a cut"
    );
    receiver.endpoint.close(0u32.into(), b"bye");
}
