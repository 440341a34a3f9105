//! The whole decision of one client write on its coordinator: stamping, TTL → expiry, the profile-level
//! checks, and the apply. The node's engine and the simulation both call [`apply`], so they cannot drift.
//!
//! Stamping rules (one place for all of them):
//! - gauges take a fresh HLC marker, or, with an event time, the marker `(event time, this node)` after the
//!   clock checked the event time against `max_clock_skew` and moved past it; a TTL counts from the event
//!   time (or from `now_ms` without one);
//! - counters take a fresh HLC tick, the slot is this node's actor's (the node in its current incarnation);
//! - flags take a fresh marker and a dot of this node's actor, a TTL counts from `now_ms`;
//! - an erasure's watermark is a fresh marker: everything stamped up to now is dropped.
//!
//! Guarantees: a refused write changes neither the profile nor anything but the clock (the clock may have
//! ticked, which is harmless: markers only need to be unique and increasing). What to persist and when to
//! acknowledge is decided by the caller's durability policy and by
//! [`Replication::on_local_write`](crate::replication::Replication::on_local_write).

use bincode::{Decode, Encode};

use crate::crdt::flag::CausalContext;
use crate::crdt::value::Value;
use crate::error::Result;
use crate::hlc::{Actor, Clock, Marker, Timestamp};
use crate::limits::Limits;
use crate::profile::{FlagUpdate, FlagView, GaugeUpdate, Profile, WriteOutcome};

/// One gauge write.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct GaugeWrite {
    /// Feature name.
    pub name: String,
    /// New value.
    pub value: Value,
    /// Time to live in milliseconds.
    pub ttl_ms: Option<u64>,
}

/// One counter delta.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CounterDelta {
    /// Feature name.
    pub name: String,
    /// Amount to add (negative to subtract).
    pub delta: i64,
}

/// A client write to one entity, borrowed from the request that carries it.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// Gauge writes, all stamped with one marker.
    Put {
        /// The writes.
        gauges: &'a [GaugeWrite],
        /// Event time in Unix milliseconds, if the write is ordered by when it happened.
        timestamp_ms: Option<u64>,
    },
    /// Counter deltas.
    Increment {
        /// The deltas.
        deltas: &'a [CounterDelta],
    },
    /// A flag write with the causal context of the read it is based on.
    SetFlag {
        /// The flag.
        name: &'a str,
        /// The value.
        value: bool,
        /// The context of the read.
        context: &'a CausalContext,
        /// Time to live in milliseconds.
        ttl_ms: Option<u64>,
    },
    /// Erase the entity up to now.
    Erase,
}

/// What an applied write answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Gauges written.
    Put {
        /// The marker every gauge of the write was stamped with.
        version: Marker,
        /// Features whose write was dropped because a newer version (or an erasure) covers it.
        superseded: Vec<String>,
    },
    /// Counters incremented.
    Incremented {
        /// The stamp of the increment (this node's tick).
        stamp: Marker,
        /// The actor whose slots took the increment (this node in its current incarnation).
        actor: Actor,
        /// Each counter's value after the write, in request order.
        values: Vec<i64>,
    },
    /// A flag written.
    Flag {
        /// The marker of the new sibling.
        version: Marker,
        /// The flag after the write (every sibling and the context to write back).
        view: FlagView,
    },
    /// The entity erased.
    Erased {
        /// Everything at or below it is gone.
        watermark: Marker,
    },
}

impl Applied {
    /// The marker the write was stamped with.
    pub fn marker(&self) -> &Marker {
        match self {
            Applied::Put { version, .. } | Applied::Flag { version, .. } => version,
            Applied::Incremented { stamp, .. } => stamp,
            Applied::Erased { watermark } => watermark,
        }
    }
}

/// Decides and applies one client write to `profile` on the node whose clock is `clock`, at local time
/// `now_ms`. Request-level validation (key and name syntax, value sizes, batch sizes) happened at the
/// edge; this adds the checks that need the profile (kinds, feature count, siblings, overflow) and the
/// clock (event-time skew).
pub fn apply(
    profile: &mut Profile,
    write: Write<'_>,
    clock: &mut Clock,
    now_ms: u64,
    limits: &Limits,
) -> Result<Applied> {
    match write {
        Write::Put {
            gauges,
            timestamp_ms,
        } => {
            let version = match timestamp_ms {
                None => clock.stamp(now_ms),
                Some(t) => {
                    let ts = Timestamp::from_millis(t);
                    clock.observe(ts, now_ms)?;
                    Marker {
                        ts,
                        node: clock.node().clone(),
                    }
                }
            };
            let base = timestamp_ms.unwrap_or(now_ms);
            let updates: Vec<GaugeUpdate<'_>> = gauges
                .iter()
                .map(|g| GaugeUpdate {
                    name: &g.name,
                    value: &g.value,
                    expires_at_ms: g.ttl_ms.map(|ttl| base.saturating_add(ttl)),
                })
                .collect();
            let outcomes = profile.put_gauges(&updates, &version, limits)?;
            let superseded = gauges
                .iter()
                .zip(outcomes)
                .filter(|(_, o)| *o == WriteOutcome::Superseded)
                .map(|(g, _)| g.name.clone())
                .collect();
            Ok(Applied::Put {
                version,
                superseded,
            })
        }
        Write::Increment { deltas } => {
            let ts = clock.tick(now_ms);
            let actor = clock.actor().clone();
            let pairs: Vec<(&str, i64)> =
                deltas.iter().map(|d| (d.name.as_str(), d.delta)).collect();
            let values = profile.increment(&pairs, &actor, ts, limits)?;
            Ok(Applied::Incremented {
                stamp: Marker {
                    ts,
                    node: actor.node.clone(),
                },
                actor,
                values,
            })
        }
        Write::SetFlag {
            name,
            value,
            context,
            ttl_ms,
        } => {
            let version = clock.stamp(now_ms);
            let update = FlagUpdate {
                name,
                value,
                context,
                marker: version.clone(),
                actor: clock.actor().clone(),
                expires_at_ms: ttl_ms.map(|ttl| now_ms.saturating_add(ttl)),
            };
            profile.set_flag(update, now_ms, limits)?;
            Ok(Applied::Flag {
                version,
                view: profile.flag_view(name, now_ms),
            })
        }
        Write::Erase => {
            let watermark = clock.stamp(now_ms);
            profile.erase(watermark.clone());
            Ok(Applied::Erased { watermark })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NodeId;
    use crate::Error;

    fn clock() -> Clock {
        Clock::new(NodeId::new("n1").expect("valid"), 1_000)
    }

    fn put(name: &str, v: i64, ttl_ms: Option<u64>) -> GaugeWrite {
        GaugeWrite {
            name: name.into(),
            value: Value::I64(v),
            ttl_ms,
        }
    }

    #[test]
    fn an_event_time_write_is_ordered_by_its_time_and_its_ttl_counts_from_it() {
        let (mut p, mut c, limits) = (Profile::default(), clock(), Limits::default());
        let now = 10_000;
        let late = [put("g", 1, Some(500))];
        let fresh = [put("g", 2, None)];
        apply(
            &mut p,
            Write::Put {
                gauges: &fresh,
                timestamp_ms: None,
            },
            &mut c,
            now,
            &limits,
        )
        .expect("valid");
        let out = apply(
            &mut p,
            Write::Put {
                gauges: &late,
                timestamp_ms: Some(now - 2_000),
            },
            &mut c,
            now,
            &limits,
        )
        .expect("valid");
        let Applied::Put {
            version,
            superseded,
        } = out
        else {
            panic!("a put answers Put: {out:?}");
        };
        assert_eq!(version.ts, Timestamp::from_millis(now - 2_000));
        assert_eq!(
            superseded,
            vec!["g".to_owned()],
            "the late event loses to the newer value"
        );
        let mut q = Profile::default();
        apply(
            &mut q,
            Write::Put {
                gauges: &late,
                timestamp_ms: Some(now - 2_000),
            },
            &mut c,
            now,
            &limits,
        )
        .expect("valid");
        assert_eq!(q.gauges["g"].expires_at_ms, Some(now - 1_500));
    }

    #[test]
    fn an_event_time_beyond_the_skew_limit_is_refused_and_changes_nothing() {
        let (mut p, mut c, limits) = (Profile::default(), clock(), Limits::default());
        let g = [put("g", 1, None)];
        let err = apply(
            &mut p,
            Write::Put {
                gauges: &g,
                timestamp_ms: Some(5_000),
            },
            &mut c,
            1_000,
            &limits,
        );
        assert!(matches!(err, Err(Error::ClockSkew { .. })), "{err:?}");
        assert!(p.is_empty());
    }

    #[test]
    fn every_write_kind_is_stamped_by_the_coordinators_clock() {
        let (mut p, mut c, limits) = (Profile::default(), clock(), Limits::default());
        let deltas = [CounterDelta {
            name: "c".into(),
            delta: 2,
        }];
        let ctx = CausalContext::default();
        let writes = [
            Write::Increment { deltas: &deltas },
            Write::SetFlag {
                name: "f",
                value: true,
                context: &ctx,
                ttl_ms: Some(10),
            },
            Write::Erase,
        ];
        let mut last: Option<Marker> = None;
        for w in writes {
            let out = apply(&mut p, w, &mut c, 1_000, &limits).expect("valid");
            assert_eq!(out.marker().node.as_str(), "n1");
            assert!(
                last.as_ref().is_none_or(|l| out.marker() > l),
                "markers increase"
            );
            last = Some(out.marker().clone());
        }
        assert_eq!(
            p.view(1_000, None),
            None,
            "the erasure covers both earlier writes"
        );
    }
}
