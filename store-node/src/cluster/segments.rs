//! The cluster side of segments: the segment requests (change-log pages, why-traces, member pages, the
//! definitions and runtime changes to them), the timer task that fires deadlines on the owner, the
//! backfill of segments added at runtime, and the exchange of the runtime catalog with every peer.
//!
//! Guarantees:
//! - **Only the owner decides**: a due timer or a backfilled profile is evaluated only if this node is the
//!   user's acting owner (the first replica its detector does not consider down); a decision is written,
//!   logged, made durable and replicated like an ingested event's.
//! - **Bounded work**: at most [`TIMER_BATCH`] timers are fired at once (concurrently), a backfill
//!   evaluates at most `backfill_per_second` profiles per second, a change page holds at most `max_batch`
//!   changes and half of `max_frame_bytes`, a member page at most `max_batch` members.
//! - **Catalog convergence**: every [`CATALOG_GOSSIP`], the node sends its catalog's `(version, digest)` to
//!   every other member; the side with the larger catalog sends it whole, so every node reachable from
//!   the one that changed it holds it within a few rounds.
//!
//! Caveats: member pages scan every profile held (O(profiles) per page), and so does the member count
//! behind the segments view, but only every [`MEMBER_COUNT_EVERY`], off the runtime threads; a backfill
//! lists the keys it owns first (one string per profile in memory while it runs). Both are fine for the
//! hot profiles one node holds, and named in docs/segments.md.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use featurestore::segment::{explain_profile, is_member};
use featurestore::wire::client::MAX_CHANGE_WAIT_MS;
use featurestore::wire::codec::encode_change;
use featurestore::wire::peer::PeerMessage;
use featurestore::wire::segment::{
    ChangePage, MembersPage, SegmentCounts, SegmentsView, WhyReport,
};
use featurestore::{ErrorCode, ErrorReply, NodeId, Profile, Request, Response};
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::clock::now_ms;
use crate::engine::error_reply;
use crate::metrics::Metrics;
use crate::segments::log::Fence;
use crate::segments::SegmentRuntime;

/// How often the member counts of [`Cluster::segments_view`] are recounted.
pub const MEMBER_COUNT_EVERY: Duration = Duration::from_secs(5);

/// Most timers fired at once.
pub const TIMER_BATCH: usize = 256;

/// How often the catalog digest goes to every peer.
pub const CATALOG_GOSSIP: Duration = Duration::from_secs(2);

/// The longest the timer task sleeps without looking again (a timer armed meanwhile also wakes it).
const TIMER_IDLE: Duration = Duration::from_secs(1);

/// A requested page size, between 1 and `max_batch`.
fn page_limit(limit: u32, max_batch: usize) -> usize {
    usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .clamp(1, max_batch)
}

impl Cluster {
    /// The segment runtime.
    pub fn segments(&self) -> &Arc<SegmentRuntime> {
        &self.segments
    }

    /// The fencing fields of a decision made here now.
    pub(super) fn fence(&self, accepted_us: Option<u64>, deadline_ms: Option<u64>) -> Fence {
        Fence {
            owner: self.me.clone(),
            ring_version: self.placement().version(),
            accepted_us,
            deadline_ms,
        }
    }

    /// Handles a catalog message from a peer (see the module docs).
    pub(super) fn on_catalog(
        &self,
        addrs: &HashMap<NodeId, SocketAddr>,
        from: NodeId,
        message: PeerMessage,
    ) {
        match message {
            PeerMessage::CatalogDigest { version, digest } => {
                let mine = self.segments.catalog();
                let ours = (mine.version, mine.digest());
                if ours > (version, digest) {
                    self.send(addrs, from, PeerMessage::SegmentCatalog { catalog: mine });
                } else if ours < (version, digest) {
                    let (version, digest) = ours;
                    self.send(addrs, from, PeerMessage::CatalogDigest { version, digest });
                }
            }
            PeerMessage::SegmentCatalog { catalog } => {
                if catalog.added.len() > self.engine.limits().max_segments {
                    tracing::warn!(peer = %from, "segment catalog over max_segments refused");
                    return;
                }
                if let Err(error) = self.segments.adopt(catalog, true) {
                    tracing::error!(peer = %from, %error, "could not store a segment catalog");
                }
            }
            _ => {}
        }
    }

    /// Sends this node's catalog digest to every other member.
    pub fn gossip_catalog(&self) {
        let catalog = self.segments.catalog();
        let (version, digest) = (catalog.version, catalog.digest());
        let addrs = self.addrs();
        for peer in addrs.keys().filter(|p| **p != self.me) {
            self.send(
                &addrs,
                peer.clone(),
                PeerMessage::CatalogDigest { version, digest },
            );
        }
    }

    /// Answers the segment requests.
    pub(super) async fn segment_request(&self, request: Request) -> Response {
        let limits = self.engine.limits();
        match request {
            Request::SegmentChanges {
                from,
                limit,
                wait_ms,
                segments,
            } => {
                let limit = page_limit(limit, limits.max_batch);
                let mut page = self.change_page(from, limit, segments.as_deref());
                if page.changes.is_empty() && wait_ms > 0 {
                    let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_CHANGE_WAIT_MS)));
                    let deadline = tokio::time::Instant::now() + wait;
                    // Filtered-out changes move the cursor without answering: keep waiting.
                    while page.changes.is_empty() {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        self.segments.log.wait_after(page.next, left).await;
                        page = self.change_page(page.next, limit, segments.as_deref());
                    }
                }
                Response::SegmentChanges(page)
            }
            Request::SegmentWhy { user, segment } => match self.why(&user, &segment) {
                Ok(report) => Response::SegmentWhy(report),
                Err(reply) => Response::Error(reply),
            },
            Request::SegmentMembers {
                segment,
                after,
                limit,
            } => {
                let limit = page_limit(limit, limits.max_batch);
                Response::SegmentMembers(self.members(&segment, after.as_deref(), limit))
            }
            Request::Segments => Response::Segments(self.segments_view()),
            Request::DefineSegments { add, remove } => match self.segments.define(&add, &remove) {
                Ok(catalog) => {
                    tracing::info!(version = catalog.version, "segment catalog changed");
                    self.gossip_catalog();
                    Response::Segments(self.segments_view())
                }
                Err(e) => Response::Error(error_reply(&e)),
            },
            _ => Response::Error(ErrorReply {
                code: ErrorCode::Internal,
                message: "not a segment request".into(),
            }),
        }
    }

    /// A change page that fits half a frame.
    fn change_page(&self, from: u64, limit: usize, segments: Option<&[String]>) -> ChangePage {
        let mut page = self.segments.log.page(&self.me, from, limit, segments);
        let budget =
            usize::try_from(self.engine.limits().max_frame_bytes / 2).unwrap_or(usize::MAX);
        let mut used = 0usize;
        let mut keep = page.changes.len();
        for (i, c) in page.changes.iter().enumerate() {
            used = used.saturating_add(encode_change(c).map_or(usize::MAX, |b| b.len()));
            if used > budget && i > 0 {
                keep = i;
                break;
            }
        }
        if keep < page.changes.len() {
            page.changes.truncate(keep);
            if let Some(last) = page.changes.last() {
                page.next = last.seq + 1;
            }
        }
        page
    }

    /// Why `user` is or is not a member of `segment`, from this node's copy.
    pub(crate) fn why(&self, user: &str, segment: &str) -> Result<WhyReport, ErrorReply> {
        let rules = self.segments.rules();
        let Some(seg) = rules.segments.get(segment) else {
            return Err(ErrorReply {
                code: ErrorCode::InvalidRequest,
                message: format!("no segment named {segment:?} on {}", self.me),
            });
        };
        let now = now_ms();
        let explain = |p: &Profile| {
            (
                is_member(p, segment, now),
                explain_profile(&seg.rule, p, &rules.schema, now),
            )
        };
        let (member, evaluation) = self
            .engine
            .inspect(user, explain)
            .unwrap_or_else(|| explain(&Profile::default()));
        let (value, read) = match evaluation {
            Ok(e) => (Ok(e.member), e.read),
            Err(e) => (Err(e.to_string()), BTreeMap::new()),
        };
        Ok(WhyReport {
            node: self.me.clone(),
            user: user.to_owned(),
            segment: segment.to_owned(),
            rule: seg.rule.text().to_owned(),
            member,
            value,
            read,
            last: self.segments.log.last_of(user, segment),
            next_deadline_ms: self.segments.timer_of(user),
        })
    }

    /// Members of `segment` after `after` among the profiles this node is the primary owner of.
    fn members(&self, segment: &str, after: Option<&str>, limit: usize) -> MembersPage {
        let placement = self.placement();
        let now = now_ms();
        let mut found = BTreeSet::new();
        self.engine.for_each_profile(&mut |key, profile| {
            if after.is_some_and(|a| key <= a) {
                return;
            }
            if found.len() >= limit && found.last().is_some_and(|l: &String| key >= l.as_str()) {
                return;
            }
            if placement.replicas(key).first() != Some(&self.me)
                || !is_member(profile, segment, now)
            {
                return;
            }
            found.insert(key.to_owned());
            if found.len() > limit {
                found.pop_last();
            }
        });
        let next = (found.len() >= limit)
            .then(|| found.last().cloned())
            .flatten();
        MembersPage {
            members: found.into_iter().collect(),
            next,
        }
    }

    /// Counts the members of every segment among the profiles this node is the primary owner of, for
    /// [`Cluster::segments_view`]. A scan of every profile held: call it off the runtime threads.
    pub fn count_members(&self) {
        let rules = self.segments.rules();
        let names: Vec<&str> = rules.segments.iter().map(|s| s.name()).collect();
        // No segment, nothing to count: no walk over every profile (and its key's replica list) every
        // few seconds on a node that defines none.
        if names.is_empty() {
            self.segments
                .member_counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            return;
        }
        let placement = self.placement();
        let now = now_ms();
        let mut members = vec![0u64; names.len()];
        self.engine.for_each_profile(&mut |key, profile| {
            if placement.replicas(key).first() != Some(&self.me) {
                return;
            }
            for (i, name) in names.iter().enumerate() {
                if is_member(profile, name, now) {
                    members[i] += 1;
                }
            }
        });
        let counted = names.iter().map(|n| (*n).to_owned()).zip(members).collect();
        *self
            .segments
            .member_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = counted;
    }

    /// The segments view of this node: definitions, entries and exits, latencies, and the member counts
    /// of the last [`Cluster::count_members`] (at most [`MEMBER_COUNT_EVERY`] old). Never scans.
    pub fn segments_view(&self) -> SegmentsView {
        let rules = self.segments.rules();
        let counts = self.segments.log.counts();
        let names: Vec<&str> = rules.segments.iter().map(|s| s.name()).collect();
        let members: Vec<u64> = {
            let counted = self
                .segments
                .member_counts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            names
                .iter()
                .map(|n| counted.get(*n).copied().unwrap_or(0))
                .collect()
        };
        let (event_latency, timer_lag) = self.segments.log.latencies();
        SegmentsView {
            node: Some(self.me.clone()),
            catalog: self.segments.catalog(),
            segments: rules.segments.iter().map(|s| s.def()).collect(),
            backfills: self.segments.backfills(),
            counts: names
                .iter()
                .zip(members)
                .map(|(name, members)| {
                    let (entries, exits) = counts.get(*name).copied().unwrap_or_default();
                    SegmentCounts {
                        segment: (*name).to_owned(),
                        entries,
                        exits,
                        members,
                    }
                })
                .collect(),
            event_latency,
            timer_lag,
        }
    }

    /// Re-evaluates `names` on `user` as its owner (a timer or a backfill) and replicates what moved.
    async fn decide_now(&self, user: &str, names: &[String], deadline_ms: Option<u64>) {
        let ticket = match self.repl().begin_local_write(user, 1) {
            Ok(ticket) => ticket,
            Err(error) => {
                tracing::debug!(%user, %error, "segment re-evaluation not admitted");
                return;
            }
        };
        let fence = self.fence(None, deadline_ms);
        match self
            .engine
            .reevaluate(user, names, &self.segments, &fence)
            .await
        {
            Ok(Some(decided)) => {
                super::ingest::count_decided(self.engine.metrics(), &decided);
                let plan = self.repl().on_local_write(
                    ticket,
                    user,
                    Some(&decided.delta),
                    &*self.engine,
                    now_ms(),
                );
                if let Err(Response::Error(reply)) = self.replicate(plan).await {
                    tracing::warn!(%user, message = %reply.message, "segment decision not replicated yet");
                }
            }
            Ok(None) => self.repl().abort_local_write(ticket),
            Err(reply) => {
                self.repl().abort_local_write(ticket);
                tracing::warn!(%user, message = %reply.message, "segment re-evaluation failed");
            }
        }
    }

    /// Arms the timer of every profile held (at start: timers live in memory only).
    pub fn arm_all_timers(&self) {
        let now = now_ms();
        self.engine.for_each_profile(&mut |key, profile| {
            self.segments.arm(key, profile, now);
        });
    }
}

/// Starts the segment tasks: the timer task, the backfill task and the catalog gossip. They end with
/// `shutdown`.
pub fn spawn_tasks(
    cluster: Arc<Cluster>,
    backfill_per_second: u32,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    {
        let cluster = cluster.clone();
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            // Restore the timers first (a blocking scan of memory), then fire them as they come.
            let scan = cluster.clone();
            let _ = tokio::task::spawn_blocking(move || scan.arm_all_timers()).await;
            run_timers(cluster, shutdown).await;
        }));
    }
    {
        let cluster = cluster.clone();
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            run_backfills(cluster, backfill_per_second, shutdown).await;
        }));
    }
    {
        let cluster = cluster.clone();
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(MEMBER_COUNT_EVERY);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = every.tick() => {
                        let count = cluster.clone();
                        let _ = tokio::task::spawn_blocking(move || count.count_members()).await;
                    }
                }
            }
        }));
    }
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(CATALOG_GOSSIP);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => cluster.gossip_catalog(),
            }
        }
    }));
    tasks
}

async fn run_timers(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let runtime = cluster.segments.clone();
    loop {
        let now = now_ms();
        let due = runtime.due(now, TIMER_BATCH);
        if due.is_empty() {
            let sleep = runtime
                .next_timer()
                .map_or(TIMER_IDLE, |t| Duration::from_millis(t.saturating_sub(now)))
                .min(TIMER_IDLE);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = runtime.timer_wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
            continue;
        }
        let mut fired = tokio::task::JoinSet::new();
        // Every segment is evaluated when a user's timer fires: another segment's deadline may have
        // passed in the meantime (a timer holds only the earliest), and most re-evaluations move nothing.
        let all: Vec<String> = runtime
            .rules()
            .segments
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        for (user, deadline, _earliest) in due {
            let names = all.clone();
            if cluster.owner_of(&user) != cluster.me {
                // The owner holds the same timer; this replica re-arms when it merges the owner's write.
                continue;
            }
            Metrics::incr(&cluster.engine.metrics().segment_timers_fired);
            let cluster = cluster.clone();
            fired.spawn(async move {
                cluster.decide_now(&user, &names, Some(deadline)).await;
            });
        }
        while fired.join_next().await.is_some() {}
        if shutdown.is_cancelled() {
            return;
        }
    }
}

async fn run_backfills(cluster: Arc<Cluster>, per_second: u32, shutdown: CancellationToken) {
    let Some(mut queue) = cluster.segments.take_backfill_queue() else {
        return;
    };
    let per_second = per_second.max(1);
    loop {
        let names = tokio::select! {
            () = shutdown.cancelled() => return,
            names = queue.recv() => match names {
                Some(names) => names,
                None => return,
            },
        };
        let mut keys = Vec::new();
        cluster
            .engine
            .for_each_profile(&mut |key, _| keys.push(key.to_owned()));
        let total = keys.len() as u64;
        tracing::info!(segments = ?names, profiles = total, "backfill started");
        cluster.segments.backfill_progress(&names, 0, total);
        let started = tokio::time::Instant::now();
        for (done, key) in keys.iter().enumerate() {
            if shutdown.is_cancelled() {
                return;
            }
            if cluster.owner_of(key) == cluster.me {
                cluster.decide_now(key, &names, None).await;
                Metrics::incr(&cluster.engine.metrics().segment_backfilled);
            }
            let done = done as u64 + 1;
            if done.is_multiple_of(64) || done == total {
                cluster.segments.backfill_progress(&names, done, total);
            }
            // The rate bound: `done` profiles take at least `done / per_second` seconds.
            let due = started + Duration::from_secs_f64(done as f64 / f64::from(per_second));
            tokio::time::sleep_until(due).await;
        }
        cluster.segments.backfill_progress(&names, total, total);
        tracing::info!(segments = ?names, profiles = total, "backfill finished");
    }
}
