//! The seeded fault plan of one run: which nemesis acts when, for how long, with which per-step seed.
//!
//! The plan is a pure function of the seed, the run's length and the enabled nemeses ([`plan`]). Faults
//! do not overlap: each step is applied, held for its duration, healed, and followed by a quiet gap, so
//! every operation falls in exactly one window (a fault's or a quiet one) for the availability checker.
//! Targets (which node, which halves) are drawn at run time from the step's own seed among the nodes
//! that are eligible then (e.g. not already left), so the plan stays valid whatever happened before.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// A nemesis family, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nemesis {
    /// Blackhole-route partitions (random halves, isolate one, majority ring, bridge, one-way) and
    /// packet loss/delay with `tc netem`.
    Partition,
    /// `kill -9`, then restart on the same data dir.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// A node's clock offset jumped or strobed.
    Clock,
    /// A spare node joins, or a member leaves.
    Membership,
    /// A node's data dir wiped; it restarts (rejoins) under the same name.
    Disk,
}

impl Nemesis {
    /// Every nemesis.
    pub const ALL: [Nemesis; 6] = [
        Nemesis::Partition,
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Clock,
        Nemesis::Membership,
        Nemesis::Disk,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Partition => "partition",
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Clock => "clock",
            Nemesis::Membership => "membership",
            Nemesis::Disk => "disk",
        }
    }

    /// Parses `partition,kill,...` (`all` for every one, `none` for none).
    pub fn parse_list(text: &str) -> Result<Vec<Nemesis>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => out.extend(Nemesis::ALL),
                "none" => {}
                _ => out.push(
                    *Nemesis::ALL
                        .iter()
                        .find(|n| n.name() == part)
                        .ok_or_else(|| {
                            format!(
                                "unknown nemesis {part:?} (known: partition, kill, pause, clock, membership, disk, all, none)"
                            )
                        })?,
                ),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// When it starts, ms after the workload started.
    pub at_ms: u64,
    /// How long the fault is held, ms.
    pub duration_ms: u64,
    /// Which nemesis.
    pub nemesis: Nemesis,
    /// The seed its targets are drawn with.
    pub seed: u64,
}

/// The workload's first this-many ms are fault-free (the cluster settles, clients connect).
pub const WARMUP_MS: u64 = 3_000;

/// The plan for a run of `time_ms` with `nemeses` enabled, from `seed`.
pub fn plan(seed: u64, time_ms: u64, nemeses: &[Nemesis]) -> Vec<Step> {
    let mut rng = Rng::new(seed ^ 0x5ced_u64);
    let mut steps = Vec::new();
    if nemeses.is_empty() {
        return steps;
    }
    let mut t = WARMUP_MS;
    loop {
        let duration_ms = rng.range(2_000, 6_000);
        if t + duration_ms + 1_000 > time_ms {
            break;
        }
        steps.push(Step {
            at_ms: t,
            duration_ms,
            nemesis: nemeses[rng.index(nemeses.len())],
            seed: rng.next_u64(),
        });
        t += duration_ms + rng.range(1_500, 3_500);
    }
    steps
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn plans_are_seeded_and_do_not_overlap() {
        let all = Nemesis::parse_list("all").unwrap();
        assert_eq!(all.len(), 6);
        let a = plan(1, 60_000, &all);
        assert_eq!(a, plan(1, 60_000, &all));
        assert_ne!(a, plan(2, 60_000, &all));
        assert!(a.len() >= 5, "{a:?}");
        for w in a.windows(2) {
            assert!(w[0].at_ms + w[0].duration_ms < w[1].at_ms);
        }
        assert!(a
            .iter()
            .all(|s| s.at_ms >= WARMUP_MS && s.at_ms + s.duration_ms <= 60_000));
        assert!(plan(1, 60_000, &[]).is_empty());
        assert_eq!(
            Nemesis::parse_list("kill, partition,kill").unwrap(),
            [Nemesis::Partition, Nemesis::Kill]
        );
        assert!(Nemesis::parse_list("flood").is_err());
    }
}
