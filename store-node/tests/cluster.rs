//! Multi-process cluster tests: real `store-node` processes replicating over QUIC.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use featurestore::cluster::membership::MemberState;
use featurestore::{NodeId, Value};
use store_client::Client;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Whether every key's state is identical on all `nodes` (compared with the admin read of each replica).
async fn identical_on(client: &Client, nodes: &[NodeId], keys: &[String]) -> Result<(), String> {
    for key in keys {
        let mut first = None;
        for node in nodes {
            let state = client
                .local_state(node, key)
                .await
                .map_err(|e| format!("{node}: {e}"))?;
            match &first {
                None => first = Some(state),
                Some(f) if *f != state => return Err(format!("{key} differs on {node}")),
                Some(_) => {}
            }
        }
        if first.flatten().is_none() {
            return Err(format!("{key} missing everywhere"));
        }
    }
    Ok(())
}

/// The hints queued on `nodes` in total. A node that does not answer its status is an error, never a 0:
/// otherwise "every hint queue drained" would hold with no node answering.
async fn hints_queued(client: &Client, nodes: &[NodeId]) -> Result<u64, String> {
    let mut total = 0;
    for node in nodes {
        let status = client
            .status_of(node)
            .await
            .map_err(|e| format!("status of {node}: {e}"))?;
        total += status.members.iter().map(|m| m.hints_queued).sum::<u64>();
    }
    Ok(total)
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if start.elapsed() > limit => panic!("{what} not reached in {limit:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Kill one of three nodes: writes for its keys are still accepted; after a restart every replica holds
/// identical state (checked per replica with the admin read) and every hint queue drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_catches_up_and_hints_drain() {
    let mut cluster = common::TestCluster::start(3);
    let client = cluster.client().await;
    let nodes = [id("n1"), id("n2"), id("n3")];
    let keys: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        client
            .put(key, &[("v", Value::I64(i as i64))])
            .await
            .unwrap();
    }
    eventually("initial replication", Duration::from_secs(30), || {
        identical_on(&client, &nodes, &keys)
    })
    .await;

    cluster.kill9(2);
    // A node that does not answer makes the hint count an error, not a 0 that would pass for "drained".
    let counted = hints_queued(&client, &nodes).await;
    assert!(counted.is_err(), "hints counted with n3 dead: {counted:?}");
    // With N = 3 on three nodes, n3 replicates every key: all of these are writes for its keys. A request
    // already sent to n3 when it died times out (it may or may not have been applied), so the client
    // retries gauge writes (idempotent) and counts only acknowledged increments.
    let mut acked_incr = vec![0i64; keys.len()];
    let mut tried_incr = vec![0i64; keys.len()];
    for (i, key) in keys.iter().enumerate() {
        let mut attempts = 0;
        while let Err(e) = client.put(key, &[("w", Value::I64(i as i64))]).await {
            attempts += 1;
            assert!(
                attempts < 5,
                "{key}: write not accepted after {attempts} attempts: {e}"
            );
        }
        tried_incr[i] += 1;
        if client.increment(key, &[("c", 1)]).await.is_ok() {
            acked_incr[i] += 1;
        } else {
            tried_incr[i] += 1;
            if client.increment(key, &[("c", 1)]).await.is_ok() {
                acked_incr[i] += 1;
            }
        }
    }
    let accepted = acked_incr.iter().filter(|a| **a > 0).count();
    assert!(
        accepted >= keys.len() - 2,
        "only {accepted} keys took an increment"
    );
    let live = [id("n1"), id("n2")];
    eventually(
        "hints for the dead node",
        Duration::from_secs(30),
        || async {
            let queued = hints_queued(&client, &live).await?;
            if queued > 0 {
                Ok(())
            } else {
                Err("no hints yet".into())
            }
        },
    )
    .await;

    // Hints are persistent: the coordinator holding the most hints crashes and still has them after restart.
    let mut held = Vec::new();
    for node in &live {
        let status = client.status_of(node).await.unwrap();
        held.push(status.members.iter().map(|m| m.hints_queued).sum::<u64>());
    }
    let busiest = if held[0] >= held[1] { 0 } else { 1 };
    assert!(held[busiest] > 0);
    cluster.kill9(busiest);
    cluster.launch(busiest);
    let after = client.status_of(&live[busiest]).await.unwrap();
    let after: u64 = after.members.iter().map(|m| m.hints_queued).sum();
    assert!(
        after >= held[busiest],
        "{} held {} hints before kill -9, {after} after restart",
        live[busiest],
        held[busiest]
    );

    cluster.launch(2);
    eventually("convergence after restart", Duration::from_secs(60), || {
        identical_on(&client, &nodes, &keys)
    })
    .await;
    eventually("hints drained", Duration::from_secs(30), || async {
        match hints_queued(&client, &nodes).await? {
            0 => Ok(()),
            n => Err(format!("{n} hints queued")),
        }
    })
    .await;
    for (i, key) in keys.iter().enumerate() {
        let state = client.local_state(&id("n3"), key).await.unwrap().unwrap();
        let view = state.view(u64::MAX / 2, None).unwrap();
        assert!(
            view.features.contains_key("v") && view.features.contains_key("w"),
            "{key}: {view:?}"
        );
        let w = &state.gauges["w"];
        assert_eq!(w.value, Some(Value::I64(i as i64)));
        let c = state.counters.get("c").map_or(0, |c| c.value());
        assert!(
            (acked_incr[i]..=tried_incr[i]).contains(&c),
            "{key}: counter {c}, acknowledged {}, attempted {}",
            acked_incr[i],
            tried_incr[i]
        );
    }
}

/// A node joins and another leaves while a client keeps writing: every acknowledged write is on every
/// replica of the final ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_under_write_load_lose_nothing() {
    let mut cluster = common::TestCluster::start(3);
    let client = cluster.client().await;
    let acked: Arc<Mutex<BTreeMap<(String, String), i64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("user-{}", i % 40);
                let feature = format!("f{i}");
                if client.put(&key, &[(&feature, Value::I64(i))]).await.is_ok() {
                    acked.lock().unwrap().insert((key, feature), i);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    cluster.join_new_node();
    let n4 = id("n4");
    eventually("n4 active", Duration::from_secs(60), || async {
        let status = client
            .status_of(&id("n2"))
            .await
            .map_err(|e| e.to_string())?;
        match status.members.iter().find(|m| m.id == n4) {
            Some(m) if m.state == MemberState::Active => Ok(()),
            other => Err(format!("n4 is {other:?}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    client.leave(&id("n1")).await.unwrap();
    eventually("n1 left", Duration::from_secs(60), || async {
        let status = client
            .status_of(&id("n2"))
            .await
            .map_err(|e| e.to_string())?;
        match status.members.iter().find(|m| m.id == id("n1")) {
            Some(m) if m.state == MemberState::Left => Ok(()),
            other => Err(format!("n1 is {other:?}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let keys: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let remaining = [id("n2"), id("n3"), n4.clone()];
    eventually(
        "convergence on the final ring",
        Duration::from_secs(60),
        || identical_on(&client, &remaining, &keys),
    )
    .await;
    let mut lost = Vec::new();
    for key in &keys {
        let state = client
            .local_state(&n4, key)
            .await
            .unwrap()
            .unwrap_or_default();
        for ((k, feature), value) in acked.iter().filter(|((k, _), _)| k == key) {
            match state.gauges.get(feature.as_str()) {
                Some(g) if g.value == Some(Value::I64(*value)) => {}
                other => lost.push(format!("{k}.{feature}={value}: {other:?}")),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
