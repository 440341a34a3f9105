//! Failure detection: a phi-accrual detector over the arrival times of messages from each peer.
//!
//! Every message received from a peer (gossip, replication, acks) counts as a heartbeat. The detector
//! keeps a window of recent inter-arrival times per peer and computes phi, the suspicion level, assuming
//! exponentially distributed intervals (as Cassandra does): `phi = elapsed / mean * log10(e)`. A peer is
//! `Alive` below `suspect_phi`, `Suspect` up to `down_phi`, and `Down` beyond. A peer never heard from is
//! `Suspect` for the first `startup_grace_ms` after the detector started (so a starting cluster tries
//! its peers) and `Down` after that.
//!
//! The detector never reads a clock: every call takes `now_ms`.
//!
//! Caveat: phi needs a few samples to be meaningful; until then the mean is the configured
//! `expected_interval_ms`, and the mean is never taken below it, so short bursts of traffic do not make a
//! normally quiet peer look dead after a short silence.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::hlc::NodeId;

/// What the detector believes about a peer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// Heard from recently.
    Alive,
    /// Late: still tried, but not relied on.
    Suspect,
    /// Presumed down: writes for it become hints.
    Down,
}

/// Detector settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// The heartbeat interval peers aim for (the gossip interval), in ms.
    pub expected_interval_ms: u64,
    /// Phi at which a peer becomes suspect.
    pub suspect_phi: f64,
    /// Phi at which a peer is considered down.
    pub down_phi: f64,
    /// Inter-arrival samples kept per peer.
    pub window: usize,
    /// How long unknown peers are given after start before they count as down, in ms.
    pub startup_grace_ms: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            expected_interval_ms: 200,
            suspect_phi: 5.0,
            down_phi: 8.0,
            window: 100,
            startup_grace_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Arrivals {
    last_ms: u64,
    intervals: VecDeque<u64>,
    sum: u64,
}

/// A phi-accrual failure detector.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    config: DetectorConfig,
    started_ms: u64,
    peers: BTreeMap<NodeId, Arrivals>,
}

impl FailureDetector {
    /// A detector started at `now_ms`.
    pub fn new(config: DetectorConfig, now_ms: u64) -> Self {
        FailureDetector {
            config,
            started_ms: now_ms,
            peers: BTreeMap::new(),
        }
    }

    /// Records that a message from `peer` arrived at `now_ms`.
    pub fn heard_from(&mut self, peer: &NodeId, now_ms: u64) {
        let window = self.config.window.max(1);
        match self.peers.get_mut(peer) {
            Some(a) => {
                let interval = now_ms.saturating_sub(a.last_ms);
                a.last_ms = a.last_ms.max(now_ms);
                a.intervals.push_back(interval);
                a.sum += interval;
                while a.intervals.len() > window {
                    if let Some(old) = a.intervals.pop_front() {
                        a.sum -= old;
                    }
                }
            }
            None => {
                self.peers.insert(
                    peer.clone(),
                    Arrivals {
                        last_ms: now_ms,
                        ..Arrivals::default()
                    },
                );
            }
        }
    }

    /// The suspicion level of `peer` at `now_ms` (`None` if never heard from).
    pub fn phi(&self, peer: &NodeId, now_ms: u64) -> Option<f64> {
        let a = self.peers.get(peer)?;
        let mean = if a.intervals.is_empty() {
            self.config.expected_interval_ms
        } else {
            a.sum / a.intervals.len() as u64
        }
        .max(self.config.expected_interval_ms)
        .max(1);
        let elapsed = now_ms.saturating_sub(a.last_ms);
        Some(elapsed as f64 / mean as f64 * std::f64::consts::LOG10_E)
    }

    /// What the detector believes about `peer` at `now_ms`.
    pub fn liveness(&self, peer: &NodeId, now_ms: u64) -> Liveness {
        match self.phi(peer, now_ms) {
            None if now_ms.saturating_sub(self.started_ms) < self.config.startup_grace_ms => {
                Liveness::Suspect
            }
            None => Liveness::Down,
            Some(phi) if phi >= self.config.down_phi => Liveness::Down,
            Some(phi) if phi >= self.config.suspect_phi => Liveness::Suspect,
            Some(_) => Liveness::Alive,
        }
    }

    /// When `peer` was last heard from.
    pub fn last_heard(&self, peer: &NodeId) -> Option<u64> {
        self.peers.get(peer).map(|a| a.last_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_heartbeats_are_alive_and_silence_goes_suspect_then_down() {
        let n = NodeId::new("n2").expect("valid");
        let mut d = FailureDetector::new(DetectorConfig::default(), 0);
        assert_eq!(d.liveness(&n, 0), Liveness::Suspect, "unknown during grace");
        for t in (0..5_000).step_by(200) {
            d.heard_from(&n, t);
        }
        assert_eq!(d.liveness(&n, 5_000), Liveness::Alive);
        // mean 200 ms: phi 5 after ~2.3 s, phi 8 after ~3.7 s of silence.
        assert_eq!(d.liveness(&n, 4_800 + 2_000), Liveness::Alive);
        assert_eq!(d.liveness(&n, 4_800 + 3_000), Liveness::Suspect);
        assert_eq!(d.liveness(&n, 4_800 + 4_000), Liveness::Down);
        d.heard_from(&n, 9_000);
        assert_eq!(d.liveness(&n, 9_000), Liveness::Alive);
    }

    #[test]
    fn unknown_peers_are_down_after_the_grace_period() {
        let n = NodeId::new("n9").expect("valid");
        let d = FailureDetector::new(DetectorConfig::default(), 1_000);
        assert_eq!(d.liveness(&n, 5_999), Liveness::Suspect);
        assert_eq!(d.liveness(&n, 6_000), Liveness::Down);
    }
}
