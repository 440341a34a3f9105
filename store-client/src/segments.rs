//! Segment change subscriptions: [`Client::subscribe_segments`] reads every member's change log from a
//! cursor (one long poll per node), merges the streams into one channel, and resumes each node from its
//! cursor after a failure.
//!
//! Guarantees: at-least-once per node: a node's changes arrive in `seq` order, and after a failure of
//! that node (or of the connection) the task retries, with backoff, from the last `seq` it delivered plus
//! one, so nothing it logged and still retains is skipped. A consumer that also resumes from a saved
//! [`Cursor`] may see a change twice; [`ChangeEvent::dedup_key`](featurestore::segment::ChangeEvent::dedup_key)
//! `(segment, user, dot)` removes repeats. A cursor older than a node's retention skips the dropped
//! changes; the gap is logged.
//!
//! Caveats: streams of different nodes are merged in arrival order (per-node `seq` is not a global
//! order). Members that join after the subscription started are picked up at the next membership
//! refresh ([`MEMBER_REFRESH`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use featurestore::segment::SegmentDef;
use featurestore::wire::segment::{
    ChangePage, MembersPage, SegmentChange, SegmentsView, WhyReport,
};
use featurestore::{NodeId, Request, Response};
use tokio::sync::mpsc;
use tracing::warn;

use crate::client::Client;
use crate::error::Result;

/// A subscriber's position: per node, the next `seq` wanted.
pub type Cursor = BTreeMap<NodeId, u64>;

/// How long one long poll waits at the node (ms).
pub const POLL_WAIT_MS: u32 = 2_000;

/// How often the subscription looks for new members.
pub const MEMBER_REFRESH: Duration = Duration::from_secs(10);

/// A running subscription: receive changes with [`Subscription::recv`]; dropping it stops the tasks.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<SegmentChange>,
    cursor: Arc<Mutex<Cursor>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Subscription {
    /// The next change, from any node.
    pub async fn recv(&mut self) -> Option<SegmentChange> {
        self.rx.recv().await
    }

    /// The cursor after the changes received so far (save it to resume later).
    pub fn cursor(&self) -> Cursor {
        self.cursor.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

impl Client {
    /// A page of `node`'s segment change log from `from` (a long poll of up to `wait_ms`).
    pub async fn segment_changes(
        &self,
        node: &NodeId,
        from: u64,
        limit: u32,
        wait_ms: u32,
        segments: Option<Vec<String>>,
    ) -> Result<ChangePage> {
        let request = Request::SegmentChanges {
            from,
            limit,
            wait_ms,
            segments,
        };
        let deadline = self.deadline() + Duration::from_millis(u64::from(wait_ms));
        match self.request_at(node, &request, deadline).await? {
            Response::SegmentChanges(page) => Ok(page),
            other => Err(crate::client::unexpected("SegmentChanges", &other)),
        }
    }

    /// Why `user` is or is not a member of `segment`, as `node` sees it.
    pub async fn segment_why(&self, node: &NodeId, user: &str, segment: &str) -> Result<WhyReport> {
        let request = Request::SegmentWhy {
            user: user.to_owned(),
            segment: segment.to_owned(),
        };
        match self.request_at(node, &request, self.deadline()).await? {
            Response::SegmentWhy(r) => Ok(r),
            other => Err(crate::client::unexpected("SegmentWhy", &other)),
        }
    }

    /// A page of `segment`'s members that `node` is the primary owner of, after `after`.
    pub async fn segment_members(
        &self,
        node: &NodeId,
        segment: &str,
        after: Option<String>,
        limit: u32,
    ) -> Result<MembersPage> {
        let request = Request::SegmentMembers {
            segment: segment.to_owned(),
            after,
            limit,
        };
        match self.request_at(node, &request, self.deadline()).await? {
            Response::SegmentMembers(p) => Ok(p),
            other => Err(crate::client::unexpected("SegmentMembers", &other)),
        }
    }

    /// The segments `node` evaluates, with its catalog, backfills, counts and latencies.
    pub async fn segments_of(&self, node: &NodeId) -> Result<SegmentsView> {
        match self
            .request_at(node, &Request::Segments, self.deadline())
            .await?
        {
            Response::Segments(v) => Ok(v),
            other => Err(crate::client::unexpected("Segments", &other)),
        }
    }

    /// Admin: adds (or replaces) and removes runtime segment definitions, through `node`; the catalog
    /// replicates to every node. Not retried: a refusal (a rule that does not compile) is the answer.
    pub async fn define_segments(
        &self,
        node: &NodeId,
        add: Vec<SegmentDef>,
        remove: Vec<String>,
    ) -> Result<SegmentsView> {
        match self
            .request_at(
                node,
                &Request::DefineSegments { add, remove },
                self.deadline(),
            )
            .await?
        {
            Response::Segments(v) => Ok(v),
            other => Err(crate::client::unexpected("Segments", &other)),
        }
    }

    /// Streams segment change events from every member, merged, from `from` (nodes missing from it start
    /// at the beginning of their logs), only of `segments` if given. See the module docs for the
    /// delivery guarantees.
    pub fn subscribe_segments(&self, segments: Option<Vec<String>>, from: Cursor) -> Subscription {
        let (tx, rx) = mpsc::channel(1024);
        let cursor = Arc::new(Mutex::new(from));
        let mut tasks = tokio::task::JoinSet::new();
        let client = self.clone();
        let shared = cursor.clone();
        tasks.spawn(async move {
            // Dropped with this task (when the subscription is dropped): the followers stop with it.
            let mut running: BTreeMap<NodeId, AbortOnDrop> = BTreeMap::new();
            loop {
                let members: Vec<NodeId> = client
                    .cluster()
                    .table
                    .members
                    .values()
                    .filter(|m| m.state != featurestore::cluster::membership::MemberState::Left)
                    .map(|m| m.id.clone())
                    .collect();
                for node in members {
                    if running.get(&node).is_some_and(|h| !h.0.is_finished()) {
                        continue;
                    }
                    let task = follow(
                        client.clone(),
                        node.clone(),
                        segments.clone(),
                        shared.clone(),
                        tx.clone(),
                    );
                    running.insert(node, AbortOnDrop(tokio::spawn(task)));
                }
                if tx.is_closed() {
                    break;
                }
                tokio::time::sleep(MEMBER_REFRESH).await;
                let _ = client.refresh_cluster().await;
            }
        });
        Subscription { rx, cursor, tasks }
    }
}

/// A follower task, aborted when dropped: dropping the [`Subscription`] aborts the task that holds these,
/// so no follower keeps long-polling a node after the subscription is gone.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows one node's log until the receiver is gone.
async fn follow(
    client: Client,
    node: NodeId,
    segments: Option<Vec<String>>,
    cursor: Arc<Mutex<Cursor>>,
    tx: mpsc::Sender<SegmentChange>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let from = cursor
            .lock()
            .map(|c| c.get(&node).copied().unwrap_or(1))
            .unwrap_or(1);
        match client
            .segment_changes(&node, from, 500, POLL_WAIT_MS, segments.clone())
            .await
        {
            Ok(page) => {
                backoff = Duration::from_millis(100);
                let missed = page.missed(from);
                if missed > 0 {
                    warn!(%node, missed, "subscription cursor older than the node's change log");
                }
                for change in page.changes {
                    let next = change.seq + 1;
                    if tx.send(change).await.is_err() {
                        return;
                    }
                    if let Ok(mut c) = cursor.lock() {
                        c.insert(node.clone(), next);
                    }
                }
                if let Ok(mut c) = cursor.lock() {
                    let e = c.entry(node.clone()).or_insert(1);
                    *e = (*e).max(page.next);
                }
            }
            Err(error) => {
                tracing::debug!(%node, %error, "change log not readable; retrying from the cursor");
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
