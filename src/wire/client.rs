//! The client protocol: requests, responses and typed error replies.
//!
//! One request and one response travel on their own QUIC bidirectional stream, each as one frame (see
//! [`codec`](crate::wire::codec) for the framing and the encoding). This module only defines the messages and
//! their validation against [`Limits`]; it does no I/O.
//!
//! Compatibility: the frame carries [`PROTOCOL_VERSION`]; a node answers a frame of another version with
//! [`ErrorCode::UnsupportedVersion`]. Variants are only ever appended, never reordered, within a version.
//! Version 2: profiles gained window features (a new `Profile` field and `FeatureView::Window`); nodes and
//! clients of version 1 and 2 do not talk to each other (no rolling upgrade across it). Version 3: window
//! slots carry a distinct-count sketch and window parameters its size (`Aggregation::DistinctCount`),
//! profiles gained identity links (a new `Profile` field) and events the redirect count `WireEvent::hops`;
//! no rolling upgrade across it either. Version 5: change events carry dots, forwarded events the instant
//! they were accepted, and the segment requests joined (`SegmentChanges` ... `DefineSegments`).

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::cluster::detector::Liveness;
use crate::cluster::membership::{MemberState, MembershipTable};
use crate::crdt::flag::CausalContext;
use crate::error::Result;
use crate::hlc::{Marker, NodeId};
use crate::limits::Limits;
use crate::profile::{Applied, FlagView, Profile, ProfileView, Write};
pub use crate::profile::{CounterDelta, GaugeWrite};
use crate::segment::SegmentDef;
use crate::wire::dead_letter::{DeadLetter, DeadLetterPage, Purged, ReplayReport};
use crate::wire::event::{EventOutcome, WireEvent};
pub use crate::wire::reply::{ErrorCode, ErrorReply};
use crate::wire::segment::{ChangePage, MembersPage, SegmentsView, WhyReport};

/// The protocol version carried in every frame header (2 since window features, 3 since distinct counts
/// and identity links, 4 since per-incarnation actors in slots, dots and causal contexts, 5 since segment
/// change events and requests).
pub const PROTOCOL_VERSION: u8 = 5;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Request {
    /// Read one entity, optionally only some features.
    Get {
        /// The entity key.
        key: String,
        /// Only these features, if given.
        features: Option<Vec<String>>,
        /// Replicas to read and merge (R); 0 or 1 reads one. Above 1, stale replicas are repaired.
        quorum: u8,
    },
    /// Read several entities; the answer is in request order.
    GetMany {
        /// The entity keys.
        keys: Vec<String>,
        /// Only these features, if given.
        features: Option<Vec<String>>,
        /// Replicas to read and merge per key (R); 0 or 1 reads one.
        quorum: u8,
    },
    /// Write gauges (last-writer-wins).
    Put {
        /// The entity key.
        key: String,
        /// The writes, all stamped with one marker.
        gauges: Vec<GaugeWrite>,
        /// Event time in Unix milliseconds, for writes that must be ordered by when they happened rather
        /// than when they arrived (late events lose to newer values). Refused if further ahead of the node's
        /// clock than `max_clock_skew`. `None` stamps with the node's clock.
        timestamp_ms: Option<u64>,
        /// Replicas that must hold the write before it is acknowledged (W); 0 or 1 = the coordinator.
        quorum: u8,
    },
    /// Add to counters.
    Increment {
        /// The entity key.
        key: String,
        /// The deltas.
        deltas: Vec<CounterDelta>,
        /// Replicas that must hold the write before it is acknowledged (W).
        quorum: u8,
    },
    /// Write a flag with the causal context of the read it is based on.
    SetFlag {
        /// The entity key.
        key: String,
        /// The flag.
        name: String,
        /// The value.
        value: bool,
        /// The context from the last read of this flag (empty if the writer saw nothing).
        context: CausalContext,
        /// Time to live in milliseconds.
        ttl_ms: Option<u64>,
        /// Replicas that must hold the write before it is acknowledged (W).
        quorum: u8,
    },
    /// Erase the entity: everything written up to now is dropped, everywhere, for good.
    Erase {
        /// The entity key.
        key: String,
        /// Replicas that must hold the erasure before it is acknowledged (W).
        quorum: u8,
    },
    /// The node's status and counters.
    Status,
    /// The membership table and ring parameters, for ring-aware clients.
    Cluster,
    /// Admin: this node's raw local state of a key (value and full CRDT metadata), without merging
    /// other replicas.
    LocalState {
        /// The entity key.
        key: String,
    },
    /// Admin: this node's anti-entropy digests of the keys it shares with `peer` (equal digests on both
    /// sides mean equal replicas).
    Digests {
        /// The other replica.
        peer: NodeId,
    },
    /// Admin: start leaving the cluster (hand every range over, then mark this node `Left`).
    Leave,
    /// Ingest behaviour events: each is applied on its user's owner, in order per user, exactly once per
    /// message id; the answer is one outcome per event, in request order.
    Ingest {
        /// The events.
        events: Vec<WireEvent>,
    },
    /// Admin: a page of this node's dead-letter queue, entries with ids above `after`, in id order. The
    /// node answers at most `limit` entries (capped at `max_batch`), fewer if they would not fit half of
    /// `max_frame_bytes`.
    DeadLetters {
        /// Only entries with a larger id (the `next` of the previous page).
        after: Option<u64>,
        /// Most entries to answer.
        limit: u32,
    },
    /// Admin: one entry of this node's dead-letter queue.
    DeadLetter {
        /// The entry's id.
        id: u64,
    },
    /// Admin: replays entries of this node's dead-letter queue through the ingest path (with the node's
    /// current definitions; deduplicated by message id). Applied entries (and duplicates) are removed,
    /// ones refused again stay with the new reason.
    ReplayDeadLetters {
        /// These entries (at most `max_batch`), or `None`: every entry, at most `max_batch` per request,
        /// starting after `after`.
        ids: Option<Vec<u64>>,
        /// With `ids: None`: start after this id (the `next` of the previous answer).
        after: Option<u64>,
    },
    /// Admin: removes entries of this node's dead-letter queue.
    PurgeDeadLetters {
        /// These entries (at most `max_batch`), or `None`: every entry.
        ids: Option<Vec<u64>>,
    },
    /// A page of this node's segment change log from the cursor `from` (a long poll: with nothing to
    /// answer, the node waits up to `wait_ms`, capped at [`MAX_CHANGE_WAIT_MS`], for a change).
    SegmentChanges {
        /// The first `seq` wanted (the `next` of the previous page; 0 or 1 for the start of the log).
        from: u64,
        /// Most changes to answer (capped at `max_batch`, and at half of `max_frame_bytes`).
        limit: u32,
        /// How long to wait for a change when there is none (ms).
        wait_ms: u32,
        /// Only changes of these segments, if given.
        segments: Option<Vec<String>>,
    },
    /// Why `user` is or is not a member of `segment`, from this node's copy of the profile and its log.
    SegmentWhy {
        /// The user.
        user: String,
        /// The segment.
        segment: String,
    },
    /// A page of `segment`'s members among the profiles this node is the primary owner of.
    SegmentMembers {
        /// The segment.
        segment: String,
        /// Only members after this id (the `next` of the previous page).
        after: Option<String>,
        /// Most members to answer (capped at `max_batch`).
        limit: u32,
    },
    /// The segments this node evaluates, its runtime catalog, backfills, counts and latencies.
    Segments,
    /// Admin: add (or replace) and remove runtime segment definitions, in the catalog that replicates to
    /// every node. Definitions are compiled first; one that does not compile refuses the whole change.
    DefineSegments {
        /// Definitions to add or replace.
        add: Vec<SegmentDef>,
        /// Names to remove.
        remove: Vec<String>,
    },
    /// Several writes of any keys in one request, as a client that coalesces concurrent writes sends
    /// them (at most `max_batch`). The node coordinates each as if it had come alone (validated on its
    /// own, and for a key it does not replicate as a sloppy-quorum coordinator), all of them at once, and
    /// answers [`Response::Written`]: one response per write, in request order, a refused write as
    /// [`Response::Error`] without affecting the others. Only writes can be inside ([`WriteOp`]), so a
    /// frame cannot nest requests.
    Writes {
        /// The writes.
        writes: Vec<WriteOp>,
    },
}

/// One write of a [`Request::Writes`]: the fields of [`Request::Put`], [`Request::Increment`],
/// [`Request::SetFlag`] or [`Request::Erase`], with the same meaning.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
#[allow(missing_docs)] // the fields are those of the `Request` variant of the same name
pub enum WriteOp {
    /// [`Request::Put`].
    Put {
        key: String,
        gauges: Vec<GaugeWrite>,
        timestamp_ms: Option<u64>,
        quorum: u8,
    },
    /// [`Request::Increment`].
    Increment {
        key: String,
        deltas: Vec<CounterDelta>,
        quorum: u8,
    },
    /// [`Request::SetFlag`].
    SetFlag {
        key: String,
        name: String,
        value: bool,
        context: CausalContext,
        ttl_ms: Option<u64>,
        quorum: u8,
    },
    /// [`Request::Erase`].
    Erase { key: String, quorum: u8 },
}

impl WriteOp {
    /// The entity key written.
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Put { key, .. }
            | WriteOp::Increment { key, .. }
            | WriteOp::SetFlag { key, .. }
            | WriteOp::Erase { key, .. } => key,
        }
    }
}

impl From<WriteOp> for Request {
    fn from(op: WriteOp) -> Request {
        match op {
            WriteOp::Put {
                key,
                gauges,
                timestamp_ms,
                quorum,
            } => Request::Put {
                key,
                gauges,
                timestamp_ms,
                quorum,
            },
            WriteOp::Increment {
                key,
                deltas,
                quorum,
            } => Request::Increment {
                key,
                deltas,
                quorum,
            },
            WriteOp::SetFlag {
                key,
                name,
                value,
                context,
                ttl_ms,
                quorum,
            } => Request::SetFlag {
                key,
                name,
                value,
                context,
                ttl_ms,
                quorum,
            },
            WriteOp::Erase { key, quorum } => Request::Erase { key, quorum },
        }
    }
}

impl TryFrom<Request> for WriteOp {
    /// A request that is not a single write comes back as it was.
    type Error = Request;

    fn try_from(request: Request) -> std::result::Result<WriteOp, Request> {
        match request {
            Request::Put {
                key,
                gauges,
                timestamp_ms,
                quorum,
            } => Ok(WriteOp::Put {
                key,
                gauges,
                timestamp_ms,
                quorum,
            }),
            Request::Increment {
                key,
                deltas,
                quorum,
            } => Ok(WriteOp::Increment {
                key,
                deltas,
                quorum,
            }),
            Request::SetFlag {
                key,
                name,
                value,
                context,
                ttl_ms,
                quorum,
            } => Ok(WriteOp::SetFlag {
                key,
                name,
                value,
                context,
                ttl_ms,
                quorum,
            }),
            Request::Erase { key, quorum } => Ok(WriteOp::Erase { key, quorum }),
            other => Err(other),
        }
    }
}

/// The longest a `SegmentChanges` long poll waits for a change (ms).
pub const MAX_CHANGE_WAIT_MS: u32 = 10_000;

impl Request {
    /// Validates every key, name, value and batch size against `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let check_projection = |features: &Option<Vec<String>>| -> Result<()> {
            if let Some(names) = features {
                limits.check_batch(names.len(), "feature projection")?;
                for n in names {
                    limits.check_feature_name(n)?;
                }
            }
            Ok(())
        };
        match self {
            Request::Get { key, features, .. } => {
                limits.check_key(key)?;
                check_projection(features)
            }
            Request::GetMany { keys, features, .. } => {
                limits.check_batch(keys.len(), "keys")?;
                for k in keys {
                    limits.check_key(k)?;
                }
                check_projection(features)
            }
            Request::Put { key, gauges, .. } => {
                limits.check_key(key)?;
                limits.check_batch(gauges.len(), "gauge writes")?;
                for g in gauges {
                    limits.check_feature_name(&g.name)?;
                    limits.check_value(&g.name, &g.value)?;
                    limits.check_ttl(&g.name, g.ttl_ms)?;
                }
                Ok(())
            }
            Request::Increment { key, deltas, .. } => {
                limits.check_key(key)?;
                limits.check_batch(deltas.len(), "counter deltas")?;
                for d in deltas {
                    limits.check_feature_name(&d.name)?;
                }
                Ok(())
            }
            Request::SetFlag {
                key,
                name,
                context,
                ttl_ms,
                ..
            } => {
                limits.check_key(key)?;
                limits.check_feature_name(name)?;
                limits.check_ttl(name, *ttl_ms)?;
                limits.check_context(context.0.dots.len())
            }
            Request::Erase { key, .. } | Request::LocalState { key } => limits.check_key(key),
            Request::Status
            | Request::Cluster
            | Request::Digests { .. }
            | Request::Leave
            | Request::DeadLetters { .. }
            | Request::DeadLetter { .. }
            | Request::ReplayDeadLetters { ids: None, .. }
            | Request::PurgeDeadLetters { ids: None } => Ok(()),
            Request::ReplayDeadLetters { ids: Some(ids), .. }
            | Request::PurgeDeadLetters { ids: Some(ids) } => {
                limits.check_batch(ids.len(), "dead-letter ids")
            }
            Request::SegmentChanges { segments, .. } => check_projection(segments),
            Request::SegmentWhy { user, segment } => {
                limits.check_key(user)?;
                limits.check_feature_name(segment)
            }
            Request::SegmentMembers { segment, after, .. } => {
                limits.check_feature_name(segment)?;
                after.as_deref().map_or(Ok(()), |a| limits.check_key(a))
            }
            Request::Segments => Ok(()),
            Request::DefineSegments { add, remove } => {
                limits.check_batch(add.len() + remove.len(), "segment definitions")?;
                for d in add {
                    limits.check_feature_name(&d.name)?;
                    if d.rule.len() > limits.max_rule_bytes {
                        return Err(crate::error::Error::RuleTooLong {
                            segment: d.name.clone(),
                            len: d.rule.len(),
                            max: limits.max_rule_bytes,
                        });
                    }
                }
                for r in remove {
                    limits.check_feature_name(r)?;
                }
                Ok(())
            }
            // Each write is validated on its own when the node coordinates it, so one bad write is
            // refused alone.
            Request::Writes { writes } => limits.check_batch(writes.len(), "writes"),
            Request::Ingest { events } => {
                limits.check_batch(events.len(), "events")?;
                for e in events {
                    let key = e
                        .user_id
                        .as_deref()
                        .or(e.anonymous_id.as_deref())
                        .unwrap_or_default();
                    limits.check_key(key)?;
                }
                Ok(())
            }
        }
    }

    /// The key of a single-key request.
    pub fn key(&self) -> Option<&str> {
        match self {
            Request::Get { key, .. }
            | Request::Put { key, .. }
            | Request::Increment { key, .. }
            | Request::SetFlag { key, .. }
            | Request::Erase { key, .. }
            | Request::LocalState { key } => Some(key),
            _ => None,
        }
    }

    /// The requested quorum (R for reads, W for writes), at least 1; 1 for requests without one.
    pub fn quorum(&self) -> usize {
        let q = match self {
            Request::Get { quorum, .. }
            | Request::GetMany { quorum, .. }
            | Request::Put { quorum, .. }
            | Request::Increment { quorum, .. }
            | Request::SetFlag { quorum, .. }
            | Request::Erase { quorum, .. } => *quorum,
            _ => 1,
        };
        usize::from(q.max(1))
    }

    /// The entity write this request asks for, with its key, if it is one (`Put`, `Increment`,
    /// `SetFlag`, `Erase`): what [`profile::apply`](crate::profile::apply) decides.
    pub fn write(&self) -> Option<(&str, Write<'_>)> {
        match self {
            Request::Put {
                key,
                gauges,
                timestamp_ms,
                ..
            } => Some((
                key,
                Write::Put {
                    gauges,
                    timestamp_ms: *timestamp_ms,
                },
            )),
            Request::Increment { key, deltas, .. } => Some((key, Write::Increment { deltas })),
            Request::SetFlag {
                key,
                name,
                value,
                context,
                ttl_ms,
                ..
            } => Some((
                key,
                Write::SetFlag {
                    name,
                    value: *value,
                    context,
                    ttl_ms: *ttl_ms,
                },
            )),
            Request::Erase { key, .. } => Some((key, Write::Erase)),
            _ => None,
        }
    }

    /// Whether the request is an admin request, answered only to a client certificate with the admin
    /// role (others get [`ErrorCode::Forbidden`](crate::ErrorCode::Forbidden)): `Leave`, and the per-replica
    /// reads `LocalState` and `Digests`, which bypass quorums and expose CRDT metadata, and the dead-letter
    /// operations that change the queue (replay, purge). Every new request
    /// kind must be classified here.
    pub fn is_admin(&self) -> bool {
        match self {
            Request::LocalState { .. }
            | Request::Digests { .. }
            | Request::Leave
            | Request::ReplayDeadLetters { .. }
            | Request::PurgeDeadLetters { .. }
            | Request::DefineSegments { .. } => true,
            Request::Get { .. }
            | Request::GetMany { .. }
            | Request::Put { .. }
            | Request::Increment { .. }
            | Request::SetFlag { .. }
            | Request::Erase { .. }
            | Request::Status
            | Request::Cluster
            | Request::Ingest { .. }
            | Request::DeadLetters { .. }
            | Request::DeadLetter { .. }
            | Request::SegmentChanges { .. }
            | Request::SegmentWhy { .. }
            | Request::SegmentMembers { .. }
            | Request::Segments
            | Request::Writes { .. } => false,
        }
    }

    /// The request's kind in snake case (`get`, `get_many`, `put`, ..., `ingest`): a stable label for
    /// metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Get { .. } => "get",
            Request::GetMany { .. } => "get_many",
            Request::Put { .. } => "put",
            Request::Increment { .. } => "increment",
            Request::SetFlag { .. } => "set_flag",
            Request::Erase { .. } => "erase",
            Request::Status => "status",
            Request::Cluster => "cluster",
            Request::LocalState { .. } => "local_state",
            Request::Digests { .. } => "digests",
            Request::Leave => "leave",
            Request::Ingest { .. } => "ingest",
            Request::DeadLetters { .. } => "dead_letters",
            Request::DeadLetter { .. } => "dead_letter",
            Request::ReplayDeadLetters { .. } => "replay_dead_letters",
            Request::PurgeDeadLetters { .. } => "purge_dead_letters",
            Request::SegmentChanges { .. } => "segment_changes",
            Request::SegmentWhy { .. } => "segment_why",
            Request::SegmentMembers { .. } => "segment_members",
            Request::Segments => "segments",
            Request::DefineSegments { .. } => "define_segments",
            Request::Writes { .. } => "writes",
        }
    }

    /// Whether the request is one entity write (`Put`, `Increment`, `SetFlag`, `Erase`; a
    /// [`Request::Writes`] is several, and not one).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Put { .. }
                | Request::Increment { .. }
                | Request::SetFlag { .. }
                | Request::Erase { .. }
        )
    }

    /// Whether the request reads profiles (`Get`, `GetMany`).
    pub fn is_read(&self) -> bool {
        matches!(self, Request::Get { .. } | Request::GetMany { .. })
    }
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Response {
    /// Answer to `Get`: the profile, or `None` if nothing is visible.
    Profile(Option<ProfileView>),
    /// Answer to `GetMany`, in request order.
    Profiles(Vec<Option<ProfileView>>),
    /// Answer to `Put`.
    Put(PutAck),
    /// Answer to `Increment`: each counter's value after the write, in request order.
    Incremented(Vec<i64>),
    /// Answer to `SetFlag`: the flag after the write (all siblings and the context to write back).
    Flag(FlagView),
    /// Answer to `Erase`: the watermark; everything at or below it is gone.
    Erased {
        /// The erasure watermark.
        watermark: Marker,
    },
    /// Answer to `Status`.
    Status(NodeStatus),
    /// Answer to `Cluster`.
    Cluster(ClusterView),
    /// Answer to `LocalState`.
    LocalState(Option<Profile>),
    /// Answer to `Digests`: one digest per anti-entropy bucket.
    Digests(Vec<u64>),
    /// Answer to `Leave`: the handoff has started.
    Leaving,
    /// The request was refused or failed.
    Error(ErrorReply),
    /// Answer to `Ingest`: one outcome per event, in request order.
    Ingested(Vec<EventOutcome>),
    /// Answer to `DeadLetters`.
    DeadLetters(DeadLetterPage),
    /// Answer to `DeadLetter`: the entry, or `None` if there is none of that id.
    DeadLetter(Option<DeadLetter>),
    /// Answer to `ReplayDeadLetters`: one outcome per entry.
    Replayed(ReplayReport),
    /// Answer to `PurgeDeadLetters`.
    Purged(Purged),
    /// Answer to `SegmentChanges`.
    SegmentChanges(ChangePage),
    /// Answer to `SegmentWhy`.
    SegmentWhy(WhyReport),
    /// Answer to `SegmentMembers`.
    SegmentMembers(MembersPage),
    /// Answer to `Segments` and `DefineSegments`.
    Segments(SegmentsView),
    /// Answer to `Writes`: one reply per write, in request order.
    Written(Vec<WriteReply>),
}

/// The answer to one write of a [`Request::Writes`]: what the node answers that write alone
/// ([`Response::Put`], [`Response::Incremented`], [`Response::Flag`], [`Response::Erased`] or
/// [`Response::Error`]).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum WriteReply {
    /// [`Response::Put`].
    Put(PutAck),
    /// [`Response::Incremented`].
    Incremented(Vec<i64>),
    /// [`Response::Flag`].
    Flag(FlagView),
    /// [`Response::Erased`].
    Erased {
        /// The erasure watermark.
        watermark: Marker,
    },
    /// [`Response::Error`]: this write was refused or failed.
    Error(ErrorReply),
}

impl From<WriteReply> for Response {
    fn from(reply: WriteReply) -> Response {
        match reply {
            WriteReply::Put(ack) => Response::Put(ack),
            WriteReply::Incremented(values) => Response::Incremented(values),
            WriteReply::Flag(view) => Response::Flag(view),
            WriteReply::Erased { watermark } => Response::Erased { watermark },
            WriteReply::Error(reply) => Response::Error(reply),
        }
    }
}

impl From<Response> for WriteReply {
    /// A response that is no write's answer becomes an [`ErrorCode::Internal`] error reply naming it.
    fn from(response: Response) -> WriteReply {
        match response {
            Response::Put(ack) => WriteReply::Put(ack),
            Response::Incremented(values) => WriteReply::Incremented(values),
            Response::Flag(view) => WriteReply::Flag(view),
            Response::Erased { watermark } => WriteReply::Erased { watermark },
            Response::Error(reply) => WriteReply::Error(reply),
            other => WriteReply::Error(ErrorReply {
                code: ErrorCode::Internal,
                message: format!("a write was answered with {}", other.kind()),
            }),
        }
    }
}

impl From<Applied> for Response {
    fn from(applied: Applied) -> Response {
        match applied {
            Applied::Put {
                version,
                superseded,
            } => Response::Put(PutAck {
                version,
                superseded,
            }),
            Applied::Incremented { values, .. } => Response::Incremented(values),
            Applied::Flag { view, .. } => Response::Flag(view),
            Applied::Erased { watermark } => Response::Erased { watermark },
        }
    }
}

impl Response {
    /// The variant's name, for errors and logs (`"Profile"`, `"Put"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Profile(_) => "Profile",
            Response::Profiles(_) => "Profiles",
            Response::Put(_) => "Put",
            Response::Incremented(_) => "Incremented",
            Response::Flag(_) => "Flag",
            Response::Erased { .. } => "Erased",
            Response::Status(_) => "Status",
            Response::Cluster(_) => "Cluster",
            Response::LocalState(_) => "LocalState",
            Response::Digests(_) => "Digests",
            Response::Leaving => "Leaving",
            Response::Error(_) => "Error",
            Response::Ingested(_) => "Ingested",
            Response::DeadLetters(_) => "DeadLetters",
            Response::DeadLetter(_) => "DeadLetter",
            Response::Replayed(_) => "Replayed",
            Response::Purged(_) => "Purged",
            Response::SegmentChanges(_) => "SegmentChanges",
            Response::SegmentWhy(_) => "SegmentWhy",
            Response::SegmentMembers(_) => "SegmentMembers",
            Response::Segments(_) => "Segments",
            Response::Written(_) => "Written",
        }
    }
}

/// Acknowledgement of a gauge write.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PutAck {
    /// The marker the write was stamped with (its version).
    pub version: Marker,
    /// Names of features whose write was dropped because a newer version (or an erasure) already covers it.
    pub superseded: Vec<String>,
}

/// What a ring-aware client needs to route: the membership table and the ring parameters.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ClusterView {
    /// The membership table (its `version()` is the ring version).
    pub table: MembershipTable,
    /// Virtual nodes per member.
    pub vnodes: u32,
    /// Replicas per key (N).
    pub replication_factor: u32,
}

/// One member as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
    /// Its lifecycle state.
    pub state: MemberState,
    /// What this node's failure detector believes.
    pub liveness: Liveness,
    /// Hints this node holds for it.
    pub hints_queued: u64,
}

/// A node's status.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub node_id: NodeId,
    /// The node's software version.
    pub version: String,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Entities held.
    pub entities: u64,
    /// Storage engine (`sled` or `memory`).
    pub storage: String,
    /// Durability policy (`sync` or `periodic:<ms>`).
    pub durability: String,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Counters: requests, errors by kind, flushes, replication, ...
    pub counters: Vec<(String, u64)>,
    /// The ring version (sum of the membership versions).
    pub ring_version: u64,
    /// Every member as this node sees it.
    pub members: Vec<MemberStatus>,
}

#[cfg(test)]
mod tests {
    use crdts::CmRDT;

    use super::*;
    use crate::crdt::value::Value;
    use crate::hlc::NodeId;
    use crate::Error;

    fn put(key: &str, ttl_ms: Option<u64>) -> Request {
        Request::Put {
            key: key.into(),
            gauges: vec![GaugeWrite {
                name: "g".into(),
                value: Value::I64(1),
                ttl_ms,
            }],
            timestamp_ms: None,
            quorum: 1,
        }
    }

    /// Input that used to be accepted although it should not be gets a typed error.
    #[test]
    fn control_characters_zero_ttls_and_huge_contexts_are_refused() {
        let limits = Limits::default();
        assert!(put("user-1", Some(1)).validate(&limits).is_ok());
        for key in ["a\nb", "tab\there", "nul\0", "esc\u{1b}[31m"] {
            assert!(
                matches!(
                    put(key, None).validate(&limits),
                    Err(Error::InvalidKey { .. })
                ),
                "{key:?}"
            );
        }
        assert!(matches!(
            put("u", Some(0)).validate(&limits),
            Err(Error::ZeroTtl { .. })
        ));
        let mut context = CausalContext::default();
        for i in 0..300 {
            let node = NodeId::new(format!("n{i}")).expect("valid");
            context
                .0
                .apply(crdts::Dot::new(crate::hlc::Actor::legacy(node), 1));
        }
        let flag = Request::SetFlag {
            key: "u".into(),
            name: "f".into(),
            value: true,
            context,
            ttl_ms: None,
            quorum: 1,
        };
        assert!(matches!(
            flag.validate(&limits),
            Err(Error::ContextTooLarge { len: 300, max: 256 })
        ));
        assert_eq!(
            ErrorCode::from(&Error::ContextTooLarge { len: 1, max: 0 }),
            ErrorCode::LimitExceeded
        );
    }
}
