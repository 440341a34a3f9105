//! What clients see of a profile: visible features only (no CRDT metadata but versions and the causal
//! context a flag write must carry), optionally projected to some feature names.
//!
//! Guarantees: a view never shows an expired value or anything at or below the erasure watermark; when a
//! name exists with several kinds (concurrent creation on two replicas), every replica shows the same one
//! (flag over window over counter over gauge). The profiles of ids linked into this one are combined into
//! its view (see [`identity`](crate::profile::identity)).

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::compact::{Symbol, VecMap};
use crate::crdt::flag::{CausalContext, FlagRegister};
use crate::crdt::value::Value;
use crate::crdt::window::Aggregation;
use crate::hlc::Marker;
use crate::profile::identity::combine_views;
use crate::profile::Profile;

impl Profile {
    /// What a client sees at `now_ms`: the visible features, optionally only those named in `projection`.
    /// `None` if no feature is visible (never written, erased, or all expired).
    pub fn view(&self, now_ms: u64, projection: Option<&[String]>) -> Option<ProfileView> {
        let wanted = |name: &str| projection.is_none_or(|p| p.iter().any(|n| n == name));
        let mut features = VecMap::new();
        for (name, g) in self.gauges.iter().filter(|(n, _)| wanted(n)) {
            if let Some(value) = g.visible(now_ms) {
                features.insert(
                    name.clone(),
                    FeatureView::Gauge {
                        value: value.clone(),
                        version: g.marker.clone(),
                        expires_at_ms: g.expires_at_ms,
                    },
                );
            }
        }
        for (name, c) in self.counters.iter().filter(|(n, _)| wanted(n)) {
            features.insert(name.clone(), FeatureView::Counter { value: c.value() });
        }
        for (name, w) in self.windows.iter().filter(|(n, _)| wanted(n)) {
            let (events, value) = w.value(now_ms);
            features.insert(
                name.clone(),
                FeatureView::Window {
                    aggregation: w.spec.aggregation,
                    value,
                    events,
                },
            );
        }
        for (name, f) in self.flags.iter().filter(|(n, _)| wanted(n)) {
            if let Some(view) = FlagView::of(f, now_ms) {
                features.insert(name.clone(), FeatureView::Flag(view));
            }
        }
        for absorbed in self.identity.absorbed.values() {
            if let Some(theirs) = absorbed.view(now_ms, projection) {
                combine_views(&mut features, theirs.features);
            }
        }
        if features.is_empty() {
            None
        } else {
            Some(ProfileView { features })
        }
    }

    /// The client view of one flag (empty values if it has none visible).
    pub fn flag_view(&self, name: &str, now_ms: u64) -> FlagView {
        self.flags
            .get(name)
            .and_then(|f| FlagView::of(f, now_ms))
            .unwrap_or_default()
    }
}

/// What a client sees of one entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
pub struct ProfileView {
    /// Visible features by name, in name order. Names are interned ([`Symbol`]): a view shares them with
    /// the profile it was built from, and a decoded view with every other view of the process.
    pub features: VecMap<Symbol, FeatureView>,
}

/// What a client sees of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Encode, Decode)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FeatureView {
    /// A gauge's current value and its version.
    Gauge {
        /// The value.
        value: Value,
        /// The `(hlc, node)` marker of the write that set it.
        version: Marker,
        /// When it expires, if it has a TTL.
        expires_at_ms: Option<u64>,
    },
    /// A counter's current value.
    Counter {
        /// The sum of all increments.
        value: i64,
    },
    /// A flag's concurrent values and the context to write back.
    Flag(FlagView),
    /// A window's aggregate over the span before now.
    Window {
        /// What it aggregates.
        aggregation: Aggregation,
        /// The aggregate (`None` for the min or max of no events).
        value: Option<f64>,
        /// Events in the span.
        events: u64,
    },
}

/// What a client sees of one flag: every concurrent value, and the causal context that a write must carry
/// to replace them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct FlagView {
    /// The siblings, in dot order. One entry when there is no conflict.
    pub values: Vec<FlagValue>,
    /// The context to send with the next write of this flag.
    pub context: CausalContext,
}

/// One sibling as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Encode, Decode)]
pub struct FlagValue {
    /// The value.
    pub value: bool,
    /// When and where it was written.
    pub version: Marker,
}

impl FlagView {
    pub(crate) fn of(reg: &FlagRegister, now_ms: u64) -> Option<FlagView> {
        let values: Vec<FlagValue> = reg
            .visible(now_ms)
            .map(|s| FlagValue {
                value: s.value,
                version: s.marker.clone(),
            })
            .collect();
        if values.is_empty() {
            None
        } else {
            Some(FlagView {
                values,
                context: reg.clock.clone(),
            })
        }
    }
}
