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
                        expires_at_ms: g.expires_at_ms.get(),
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

/// One feature as [`Profile::for_each_visible`] yields it: what [`FeatureView`] holds, borrowed from the
/// profile where it can be. It encodes (bincode) byte for byte as the [`FeatureView`] it stands for: the
/// same variants in the same order with the same fields, and `&T` encodes as `T`.
#[derive(Debug, Clone, PartialEq, Encode)]
pub enum FeatureViewRef<'a> {
    /// [`FeatureView::Gauge`].
    Gauge {
        /// The value.
        value: &'a Value,
        /// The marker of the write that set it.
        version: &'a Marker,
        /// When it expires, if it has a TTL.
        expires_at_ms: Option<u64>,
    },
    /// [`FeatureView::Counter`].
    Counter {
        /// The sum of all increments.
        value: i64,
    },
    /// [`FeatureView::Flag`] (built: a flag's visible siblings are a filtered list).
    Flag(FlagView),
    /// [`FeatureView::Window`].
    Window {
        /// What it aggregates.
        aggregation: Aggregation,
        /// The aggregate.
        value: Option<f64>,
        /// Events in the span.
        events: u64,
    },
}

impl Profile {
    /// Calls `each` with every feature [`Profile::view`] would show at `now_ms`, in name order, borrowing
    /// from the profile instead of building a view: the read path encodes a view straight from the profile
    /// with it. Returns how many features it yielded, or the first error of `each`.
    ///
    /// `None` (and no call) when ids are linked into this profile: combining their views needs the built
    /// view, so callers fall back to [`Profile::view`].
    ///
    /// Which kind shows when a name exists with several is decided as in [`Profile::view`]: the first
    /// visible one of flag, window, counter, gauge. A merge of the four sorted maps, one pass, no allocation
    /// but a flag's sibling list.
    pub fn for_each_visible<E>(
        &self,
        now_ms: u64,
        projection: Option<&[String]>,
        mut each: impl FnMut(&Symbol, FeatureViewRef<'_>) -> Result<(), E>,
    ) -> Option<Result<usize, E>> {
        if !self.identity.absorbed.is_empty() {
            return None;
        }
        let wanted = |name: &str| projection.is_none_or(|p| p.iter().any(|n| n == name));
        let (mut gauges, mut counters, mut windows, mut flags) = (
            self.gauges.iter().peekable(),
            self.counters.iter().peekable(),
            self.windows.iter().peekable(),
            self.flags.iter().peekable(),
        );
        let mut yielded = 0;
        loop {
            // The smallest name at the head of any map.
            let name = [
                gauges.peek().map(|(n, _)| *n),
                counters.peek().map(|(n, _)| *n),
                windows.peek().map(|(n, _)| *n),
                flags.peek().map(|(n, _)| *n),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(name) = name else {
                return Some(Ok(yielded));
            };
            // Take this name from every map that has it; the later kind wins, as in `view`.
            let gauge = gauges.next_if(|(n, _)| *n == name).map(|(_, g)| g);
            let counter = counters.next_if(|(n, _)| *n == name).map(|(_, c)| c);
            let window = windows.next_if(|(n, _)| *n == name).map(|(_, w)| w);
            let flag = flags.next_if(|(n, _)| *n == name).map(|(_, f)| f);
            if !wanted(name) {
                continue;
            }
            let shown = flag
                .and_then(|f| FlagView::of(f, now_ms).map(FeatureViewRef::Flag))
                .or_else(|| {
                    window.map(|w| {
                        let (events, value) = w.value(now_ms);
                        FeatureViewRef::Window {
                            aggregation: w.spec.aggregation,
                            value,
                            events,
                        }
                    })
                })
                .or_else(|| counter.map(|c| FeatureViewRef::Counter { value: c.value() }))
                .or_else(|| {
                    gauge.and_then(|g| {
                        g.visible(now_ms).map(|value| FeatureViewRef::Gauge {
                            value,
                            version: &g.marker,
                            expires_at_ms: g.expires_at_ms.get(),
                        })
                    })
                });
            if let Some(feature) = shown {
                if let Err(e) = each(name, feature) {
                    return Some(Err(e));
                }
                yielded += 1;
            }
        }
    }
}
