//! Liveness: no node panicked (no `panicked at` in any node log, over all its incarnations), every
//! active node answered its status after heal and sees every other active member alive, and every
//! node's resident memory at the end stays under [`MAX_RSS_KIB`].

use super::{Input, Report};

/// The most resident memory a node may have at the end of a run, KiB (1 GiB).
pub const MAX_RSS_KIB: u64 = 1024 * 1024;

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("liveness");
    let mut panics = 0u64;
    for (node, log) in &input.logs {
        for line in log.lines().filter(|l| l.contains("panicked at")) {
            panics += 1;
            r.error(format!("{node} panicked: {}", line.trim()));
        }
    }
    let (mut healthy, mut unhealthy) = (0u64, 0u64);
    for (node, s) in &input.fin.status {
        if !s.answered {
            unhealthy += 1;
            r.error(format!(
                "{node} did not answer after heal: {}",
                s.error.as_deref().unwrap_or("?")
            ));
        } else if !s.not_alive.is_empty() {
            unhealthy += 1;
            r.error(format!(
                "{node} still sees {:?} as not alive after heal",
                s.not_alive
            ));
        } else {
            healthy += 1;
        }
    }
    if input.fin.status.is_empty() {
        r.error("no node status after heal".to_owned());
    }
    let max_rss = input.rss_kib.values().max().copied().unwrap_or(0);
    for (node, rss) in &input.rss_kib {
        if *rss > MAX_RSS_KIB {
            r.error(format!("{node} uses {rss} KiB resident"));
        }
    }
    r.count("panics", panics);
    r.count("healthy_nodes", healthy);
    r.count("unhealthy_nodes", unhealthy);
    r.count("max_rss_kib", max_rss);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::*;
    use crate::history::FinalStatus;

    fn input() -> Input {
        let mut i = Input::default();
        i.fin.status.insert(
            "n1".into(),
            FinalStatus {
                answered: true,
                ..FinalStatus::default()
            },
        );
        i.logs.insert("n1".into(), "WARN something\n".into());
        i.rss_kib.insert("n1".into(), 50_000);
        i
    }

    #[test]
    fn a_healthy_cluster_passes() {
        let r = check(&input());
        assert!(r.valid, "{r:?}");
        assert_eq!(r.counts["healthy_nodes"], 1);
    }

    #[test]
    fn a_panic_a_silent_node_or_a_dead_peer_fails() {
        let mut i = input();
        i.logs.insert(
            "n2".into(),
            "thread 'tokio-runtime-worker' panicked at store-node/src/x.rs:1:1:\n".into(),
        );
        let r = check(&i);
        assert!(!r.valid);
        assert_eq!(r.counts["panics"], 1);
        let mut i = input();
        i.fin.status.insert("n2".into(), FinalStatus::default());
        assert!(!check(&i).valid);
        let mut i = input();
        i.fin.status.get_mut("n1").unwrap().not_alive = vec!["n3".into()];
        assert!(!check(&i).valid);
        let mut i = input();
        i.rss_kib.insert("n1".into(), MAX_RSS_KIB + 1);
        assert!(!check(&i).valid);
    }
}
