//! The admin role (issue 11), over real QUIC to real node processes: an application certificate is
//! refused every admin request (`leave`, `local_state`, `digests`) with the typed `Forbidden` error, which
//! is counted; its data requests and `status` keep working; an admin certificate (`certs --admins`) is
//! answered, and its `leave` really starts the node leaving.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use featurestore::cluster::membership::MemberState;
use featurestore::{ErrorCode, NodeId, Value};
use store_client::Error;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(e @ Error::Forbidden { .. }) => {
            assert_eq!(e.server_code(), Some(ErrorCode::Forbidden));
            assert!(e.to_string().starts_with("forbidden: "), "{e}");
            assert!(e.to_string().contains("--admins"), "{e}");
        }
        other => {
            panic!("{what} with an application certificate: expected Forbidden, got {other:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_certificate_is_forbidden_admin_requests_and_an_admin_certificate_is_not() {
    let cluster = common::TestCluster::start(3);
    let app = cluster.app_node_client(2).await;
    let admin = cluster.node_client(2).await;
    let n3 = id("n3");

    // Data requests and status work with the application certificate.
    app.put("u1", &[("score", Value::I64(1))]).await.unwrap();
    assert!(app.get("u1", None).await.unwrap().is_some());
    let before = common::cluster::status_counter(&admin, &n3, "requests_forbidden")
        .await
        .unwrap();

    // Every admin request is refused, typed and counted; nothing is executed.
    assert_forbidden(app.leave(&n3).await, "leave");
    assert_forbidden(app.local_state(&n3, "u1").await, "local_state");
    assert_forbidden(app.digests(&n3, &id("n1")).await, "digests");
    let after = common::cluster::status_counter(&admin, &n3, "requests_forbidden")
        .await
        .unwrap();
    assert_eq!(after - before, 3);
    let status = app.status_of(&n3).await.unwrap();
    let me = status.members.iter().find(|m| m.id == n3).unwrap();
    assert_eq!(
        me.state,
        MemberState::Active,
        "a refused leave must not start leaving"
    );

    // The admin certificate is answered: per-replica reads, digests, and a leave that takes effect.
    admin.local_state(&n3, "u1").await.unwrap();
    admin.digests(&n3, &id("n1")).await.unwrap();
    admin.leave(&n3).await.unwrap();
    common::cluster::eventually("n3 leaving", Duration::from_secs(20), || async {
        let status = admin.status_of(&n3).await.map_err(|e| e.to_string())?;
        let me = status
            .members
            .iter()
            .find(|m| m.id == n3)
            .ok_or("n3 missing")?;
        if me.state == MemberState::Active {
            return Err(format!("n3 is {:?}", me.state));
        }
        Ok(())
    })
    .await;
    app.close().await;
    admin.close().await;
}
