//! Quorums above 1 on real processes: three `store-node` processes (N = 3, so every node replicates every
//! key), clients with per-request W and R, and each replica's raw state read with the admin `LocalState`
//! request (what `storectl local KEY --node N` prints).
//!
//! - W = 3: a write is acknowledged only once all three replicas hold it (checked on each replica right
//!   after the ack; and not acknowledged at all while one replica is frozen with SIGSTOP, while a W = 2
//!   write is); with one replica killed, a W = 3 write answers `Unavailable` after the RPC timeout.
//! - R = 3 and R = 2 with read repair: a replica that missed a W = 1 write (it was killed) is shown to be
//!   stale after its restart and to stay stale while nothing reads it; a quorum read that includes it
//!   answers the new state, and afterwards the replica's raw state is the new one.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::cluster::{
    self as support, counter, eventually, gauge, key_where, local, status_counter,
};
use common::TestCluster;
use featurestore::{ErrorCode, FeatureView, NodeId, ProfileView, Value};
use store_client::{Client, Error};
use store_node::launch::Signal;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn all() -> [NodeId; 3] {
    [id("n1"), id("n2"), id("n3")]
}

/// Every test ends within this bound, whatever hangs.
const TEST_LIMIT: Duration = Duration::from_secs(300);

async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_LIMIT, work).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {TEST_LIMIT:?}"),
    }
}

/// RPC timeout 1 s; otherwise as the cluster tests' fast settings.
const RPC_1S: &str = "[cluster]\n\
tick_ms = 20\n\
[cluster.replication]\n\
rpc_timeout_ms = 1000\n\
hint_replay_ms = 200\n\
gossip_ms = 100\n\
anti_entropy_ms = 1000\n\
[cluster.replication.detector]\n\
expected_interval_ms = 100\n\
startup_grace_ms = 2000\n";
const RPC_TIMEOUT: Duration = Duration::from_millis(1000);

/// For freezing a replica: an RPC timeout of 15 s (a W = 3 write waits that long for the frozen replica),
/// and a detector that still finds a peer alive after a few seconds of silence (expected interval 1 s),
/// so the coordinator sends to the frozen replica instead of writing it off as down.
const PATIENT: &str = "[cluster]\n\
tick_ms = 20\n\
[cluster.replication]\n\
rpc_timeout_ms = 15000\n\
hint_replay_ms = 200\n\
gossip_ms = 100\n\
anti_entropy_ms = 1000\n\
[cluster.replication.detector]\n\
expected_interval_ms = 1000\n\
startup_grace_ms = 2000\n";

fn gauge_of(view: &Option<ProfileView>, name: &str) -> Option<Value> {
    match view.as_ref()?.features.get(name)? {
        FeatureView::Gauge { value, .. } => Some(value.clone()),
        _ => None,
    }
}

fn counter_of(view: &Option<ProfileView>, name: &str) -> Option<i64> {
    match view.as_ref()?.features.get(name)? {
        FeatureView::Counter { value } => Some(*value),
        _ => None,
    }
}

/// Checks that `node`'s raw state of `key` has gauge `v` = `v` and counter `c` = `c`.
async fn holds(client: &Client, node: &NodeId, key: &str, v: i64, c: i64) -> Result<(), String> {
    let state = local(client, node, key).await?;
    let (got_v, got_c) = (gauge(&state, "v"), counter(&state, "c"));
    if got_v == Some(Value::I64(v)) && got_c == c {
        Ok(())
    } else {
        Err(format!(
            "{node} holds v={got_v:?} c={got_c} for {key}, expected v={v} c={c}"
        ))
    }
}

fn is_unavailable(result: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(result, Err(e) if e.server_code() == Some(ErrorCode::Unavailable))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3_acknowledged_writes_are_on_all_three_replicas_at_once() {
    within("the W = 3 test", async {
        let mut cluster = support::start_with(3, PATIENT);
        let client = support::slow_client(&cluster).await;
        support::all_alive(&cluster, &client).await;
        let w3 = client.with_quorums(1, 3);
        for i in 0..20 {
            let key = format!("user-{i}");
            w3.put(&key, &[("v", Value::I64(i))]).await.unwrap();
            // No waiting: the ack itself promises that every replica holds the write.
            for node in &all() {
                let state = local(&client, node, &key).await.unwrap();
                assert_eq!(
                    gauge(&state, "v"),
                    Some(Value::I64(i)),
                    "{key}: W = 3 write acknowledged, but {node} holds {state:?}"
                );
            }
        }

        // Freeze n3: a W = 3 write coordinated elsewhere cannot be acknowledged until n3 holds it too.
        let n3 = id("n3");
        let frozen_key = key_where(&client, "frozen", 3, |r| r[0] != n3);
        let other_key = key_where(&client, "other", 3, |r| r[0] != n3);
        support::signal(&mut cluster, 2, Signal::Stop);
        let pending = {
            let w3 = w3.clone();
            let key = frozen_key.clone();
            tokio::spawn(async move { w3.put(&key, &[("v", Value::I64(100))]).await })
        };
        // Two replicas are enough for W = 2: acknowledged while n3 is frozen.
        let w2 = client.with_quorums(1, 2);
        let w2_result = w2.put(&other_key, &[("v", Value::I64(200))]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let still_pending = !pending.is_finished();
        support::signal(&mut cluster, 2, Signal::Cont);
        assert!(
            w2_result.is_ok(),
            "W = 2 write with one replica frozen: {w2_result:?}"
        );
        assert!(
            still_pending,
            "a W = 3 write was answered while a replica was frozen: {:?}",
            pending.await.unwrap()
        );
        let result = pending.await.unwrap();
        assert!(
            result.is_ok(),
            "W = 3 write after the replica resumed: {result:?}"
        );
        for node in &all() {
            let state = local(&client, node, &frozen_key).await.unwrap();
            assert_eq!(
                gauge(&state, "v"),
                Some(Value::I64(100)),
                "{frozen_key}: W = 3 write acknowledged, but {node} holds {state:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3_with_a_replica_down_is_unavailable_within_the_rpc_timeout() {
    within("the W = 3 unavailable test", async {
        let mut cluster = support::start_with(3, RPC_1S);
        let n3 = id("n3");
        let key = {
            let client = support::slow_client(&cluster).await;
            support::all_alive(&cluster, &client).await;
            let key = key_where(&client, "key", 3, |r| r[0] != n3);
            client
                .with_quorums(1, 3)
                .put(&key, &[("v", Value::I64(1))])
                .await
                .unwrap();
            client.close().await;
            key
        };
        cluster.kill9(2);
        // A new client: it has no connection to the dead node, and requests may take 30 s, so only the
        // node's own answer can end the request early.
        let client = support::slow_client(&cluster).await;

        let started = Instant::now();
        let result = client
            .with_quorums(1, 3)
            .put(&key, &[("v", Value::I64(2))])
            .await;
        let took = started.elapsed();
        assert!(
            is_unavailable(&result),
            "W = 3 with one of three replicas dead: {result:?}"
        );
        assert!(
            took < RPC_TIMEOUT + Duration::from_secs(9),
            "Unavailable took {took:?} (RPC timeout {RPC_TIMEOUT:?})"
        );
        // No rollback: the write stays applied where it landed (both live replicas).
        for node in [id("n1"), id("n2")] {
            eventually(
                "the unacknowledged write on the live replicas",
                Duration::from_secs(15),
                || holds(&client, &node, &key, 2, 0),
            )
            .await;
        }

        // Two live replicas are enough for W = 2 and R = 2, not for R = 3.
        let w2 = client
            .with_quorums(2, 2)
            .put(&key, &[("v", Value::I64(3))])
            .await;
        assert!(w2.is_ok(), "W = 2 with two live replicas: {w2:?}");
        let r2 = client.get_with_quorum(&key, None, 2).await;
        assert_eq!(
            r2.as_ref().ok().map(|v| gauge_of(v, "v")),
            Some(Some(Value::I64(3))),
            "R = 2 with two live replicas: {r2:?}"
        );
        let r3 = client.get_with_quorum(&key, None, 3).await;
        assert!(is_unavailable(&r3), "R = 3 with one replica dead: {r3:?}");
    })
    .await;
}

/// A cluster whose n3 missed a write: every replica held `v = 1, c = 1` for the key, then n3 was killed,
/// `v = 2` and `c += 1` were written with W = 1, and n3 was restarted. Background repair is off
/// ([`support::NO_BACKGROUND_REPAIR`]), and n3 is checked to be stale — and to stay stale for 3 s — before
/// this returns.
struct StaleReplica {
    /// Kept for its processes (stopped when it is dropped).
    _cluster: TestCluster,
    /// A client connected after the restart (nothing backed off).
    client: Client,
    key: String,
}

const STALE: usize = 2;

async fn stale_replica(n3_coordinates: bool) -> StaleReplica {
    let mut cluster = support::start_with(3, support::NO_BACKGROUND_REPAIR);
    let n3 = id("n3");
    let live = [id("n1"), id("n2")];
    let key = {
        let client = support::slow_client(&cluster).await;
        support::all_alive(&cluster, &client).await;
        let key = key_where(&client, "key", 3, |r| (r[0] == n3) == n3_coordinates);
        let w3 = client.with_quorums(1, 3);
        w3.put(&key, &[("v", Value::I64(1))]).await.unwrap();
        w3.increment(&key, &[("c", 1)]).await.unwrap();
        for node in &all() {
            holds(&client, node, &key, 1, 1).await.unwrap();
        }
        client.close().await;
        key
    };

    cluster.kill9(STALE);
    let client = support::slow_client(&cluster).await;
    let w1 = client.with_quorums(1, 1);
    w1.put(&key, &[("v", Value::I64(2))]).await.unwrap();
    w1.increment(&key, &[("c", 1)]).await.unwrap();
    for node in &live {
        eventually(
            "the new state on both live replicas",
            Duration::from_secs(15),
            || holds(&client, node, &key, 2, 2),
        )
        .await;
    }
    // The copies for the dead n3 were given up (no hint kept: the budget is 0), so nothing is pending for
    // it when it comes back.
    eventually(
        "the copies for n3 dropped",
        Duration::from_secs(15),
        || async {
            let mut dropped = 0;
            for node in &live {
                dropped += status_counter(&client, node, "hints_dropped").await?;
            }
            if dropped >= 1 {
                Ok(())
            } else {
                Err("no hint dropped yet".to_owned())
            }
        },
    )
    .await;
    client.close().await;

    cluster.launch(STALE);
    let client = support::slow_client(&cluster).await;
    support::all_alive(&cluster, &client).await;
    // The restart kept what n3 had durably acknowledged, and only that: it is stale.
    holds(&client, &n3, &key, 1, 1).await.unwrap_or_else(|e| {
        panic!("n3 is not stale after its restart (the test could not see a repair): {e}")
    });
    // Nothing but a read repairs it here: still stale after a quiet while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    holds(&client, &n3, &key, 1, 1)
        .await
        .unwrap_or_else(|e| panic!("n3 was repaired without a quorum read: {e}"));
    StaleReplica {
        _cluster: cluster,
        client,
        key,
    }
}

/// After the quorum read: n3's raw state becomes the merged one, and neither anti-entropy nor a hint did
/// it.
async fn repaired_by_the_read(s: &StaleReplica) {
    let n3 = id("n3");
    eventually("n3 repaired by the read", Duration::from_secs(15), || {
        holds(&s.client, &n3, &s.key, 2, 2)
    })
    .await;
    for node in &all() {
        for name in ["ae_keys_repaired", "hints_delivered"] {
            let value = status_counter(&s.client, node, name).await.unwrap();
            assert_eq!(value, 0, "{node}: {name} = {value}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_read_answers_the_new_state_and_repairs_the_stale_replica() {
    within("the R = 3 test", async {
        let s = stale_replica(false).await;
        let view = s.client.get_with_quorum(&s.key, None, 3).await.unwrap();
        assert_eq!(
            gauge_of(&view, "v"),
            Some(Value::I64(2)),
            "R = 3 read: {view:?}"
        );
        assert_eq!(counter_of(&view, "c"), Some(2), "R = 3 read: {view:?}");
        repaired_by_the_read(&s).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_read_through_the_stale_replica_answers_the_new_state_and_repairs_it() {
    within("the R = 2 test", async {
        let s = stale_replica(true).await;
        let n3 = id("n3");
        // n3 is the key's first replica, so it serves the key's reads: with R = 1, from itself alone.
        let view = s.client.get_with_quorum(&s.key, None, 1).await.unwrap();
        assert_eq!(
            gauge_of(&view, "v"),
            Some(Value::I64(1)),
            "R = 1 read at the stale replica: {view:?}"
        );
        // With R = 2 it merges its own state with another replica's.
        let reads_before = status_counter(&s.client, &n3, "keys_read").await.unwrap();
        let view = s.client.get_with_quorum(&s.key, None, 2).await.unwrap();
        let reads_after = status_counter(&s.client, &n3, "keys_read").await.unwrap();
        assert_eq!(
            reads_after,
            reads_before + 1,
            "the R = 2 read was not served by n3"
        );
        assert_eq!(
            gauge_of(&view, "v"),
            Some(Value::I64(2)),
            "R = 2 read: {view:?}"
        );
        assert_eq!(counter_of(&view, "c"), Some(2), "R = 2 read: {view:?}");
        repaired_by_the_read(&s).await;
    })
    .await;
}
