//! Acceptance: untrusted clients and bad frames are refused with typed errors, counted, and never stop the
//! node from serving well-behaved clients.
#![allow(clippy::unwrap_used)]

mod common;

use featurestore::limits::FRAME_BYTES_CEILING;
use featurestore::wire::client::PROTOCOL_VERSION;
use featurestore::wire::codec::{decode_response, encode_request, split_frame};
use featurestore::{ErrorCode, Request, Response, Value};
use store_client::{Client, ClientConfig};

fn counter(status: &featurestore::wire::client::NodeStatus, name: &str) -> u64 {
    status
        .counters
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn error_code(reply: &[u8]) -> ErrorCode {
    let payload = split_frame(reply, FRAME_BYTES_CEILING).unwrap();
    match decode_response(payload).unwrap() {
        Response::Error(e) => e.code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_clients_and_bad_frames_are_refused_and_the_node_keeps_serving() {
    let node = common::TestNode::start("");
    let good = node.client().await;
    good.put("u1", &[("a", Value::I64(1))]).await.unwrap();

    // A client whose certificate comes from another CA is refused.
    let rogue_dir = tempfile::tempdir().unwrap();
    store_node::certs::generate(rogue_dir.path(), &["n1".to_owned()], &["app".to_owned()]).unwrap();
    let mut rogue = node.client_config();
    rogue.cert = rogue_dir.path().join("client-app.pem");
    rogue.key = rogue_dir.path().join("client-app.key");
    let refused = match Client::connect(rogue).await {
        Err(_) => true,
        Ok(c) => c.status().await.is_err(),
    };
    assert!(refused, "a client with a foreign certificate was served");

    // A connection whose client presents a node certificate (not a client identity) is refused too.
    let mut as_node = node.client_config();
    as_node.cert = node.path().join("certs/node-n1.pem");
    as_node.key = node.path().join("certs/node-n1.key");
    let refused = match Client::connect(as_node).await {
        Err(_) => true,
        Ok(c) => c.status().await.is_err(),
    };
    assert!(
        refused,
        "a node certificate was accepted on the client ALPN"
    );

    // Garbage, an unknown version, an oversized announcement, a truncated frame, trailing bytes.
    let raw = Client::connect(node.client_config()).await.unwrap();
    let v = PROTOCOL_VERSION;
    let reply = raw
        .send_raw(&[v, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(error_code(&reply), ErrorCode::MalformedFrame);
    let reply = raw.send_raw(b"\x07\x00\x00\x00\x01\x00").await.unwrap();
    assert_eq!(error_code(&reply), ErrorCode::UnsupportedVersion);
    let mut oversized = vec![v];
    oversized.extend_from_slice(&(u32::MAX).to_be_bytes());
    oversized.extend_from_slice(&[0u8; 1024]);
    let reply = raw.send_raw(&oversized).await.unwrap();
    assert_eq!(error_code(&reply), ErrorCode::FrameTooLarge);
    let reply = raw.send_raw(&[v, 0, 0, 1, 0, 0]).await.unwrap();
    assert_eq!(error_code(&reply), ErrorCode::MalformedFrame);
    let mut trailing = encode_request(&Request::Status).unwrap();
    trailing.push(0);
    let reply = raw.send_raw(&trailing).await.unwrap();
    assert_eq!(error_code(&reply), ErrorCode::MalformedFrame);

    // Typed validation errors for well-formed but invalid requests.
    let err = good
        .put(&"k".repeat(10_000), &[("a", Value::I64(1))])
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::LimitExceeded));
    let err = good.increment("u1", &[("a", 1)]).await.unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::KindMismatch));
    let err = good
        .put("u1", &[("bad name", Value::I64(1))])
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some(ErrorCode::InvalidRequest));

    // The same raw connection still works for a valid request, and so does the good client.
    let reply = raw
        .send_raw(&encode_request(&Request::Status).unwrap())
        .await
        .unwrap();
    let payload = split_frame(&reply, FRAME_BYTES_CEILING).unwrap();
    assert!(matches!(
        decode_response(payload).unwrap(),
        Response::Status(_)
    ));
    good.put("u2", &[("b", Value::Bool(true))]).await.unwrap();
    assert!(good.get("u1", None).await.unwrap().is_some());
    assert!(good.get("u2", None).await.unwrap().is_some());

    // Every refusal was counted.
    let status = good.status().await.unwrap();
    assert!(
        counter(&status, "tls_handshake_failures") >= 1,
        "{status:?}"
    );
    assert!(counter(&status, "wrong_identity") >= 1, "{status:?}");
    assert_eq!(counter(&status, "frames_malformed"), 3, "{status:?}");
    assert_eq!(counter(&status, "frames_bad_version"), 1, "{status:?}");
    assert_eq!(counter(&status, "frames_oversized"), 1, "{status:?}");
    assert_eq!(counter(&status, "requests_rejected"), 3, "{status:?}");

    // A fresh client after all that is served normally.
    let fresh = Client::connect(ClientConfig::load(node.path().join("client.toml")).unwrap())
        .await
        .unwrap();
    assert!(fresh.get("u2", None).await.unwrap().is_some());
}
