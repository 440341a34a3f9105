//! Bug knobs (tests only): each one switches a known defect on inside the production code, so that a test
//! can show the suite catches it. Compiled only with `cfg(test)`; a knob is per thread, so tests running in
//! parallel never see each other's.
//!
//! - [`Bug::NoAntiEntropy`]: nodes never start an anti-entropy exchange;
//! - [`Bug::AckWithoutMerge`]: a replica acknowledges replicated state without merging it;
//! - [`Bug::CounterMinMerge`]: counter slots merge by `min` instead of `max` (losing increments);
//! - [`Bug::KeepIncarnation`]: a node always starts as the same actor (the node id alone), as before
//!   per-incarnation actors, so a node that lost its disk reissues slots and dots.
//! - [`Bug::BareDelta`]: a client write is replicated as the bare delta of what it changed, without
//!   the register that superseded a write that changed nothing (the gap the simulation found).

use std::cell::Cell;

/// A defect a test can switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bug {
    NoAntiEntropy,
    AckWithoutMerge,
    CounterMinMerge,
    KeepIncarnation,
    BareDelta,
}

thread_local! {
    static ACTIVE: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Whether `bug` is switched on for this thread.
pub(crate) fn active(bug: Bug) -> bool {
    ACTIVE.with(|a| a.get() == Some(bug))
}

/// Runs `f` with `bug` switched on (and off again afterwards, even if `f` panics).
pub(crate) fn with<R>(bug: Bug, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(None));
        }
    }
    ACTIVE.with(|a| a.set(Some(bug)));
    let _reset = Reset;
    f()
}
