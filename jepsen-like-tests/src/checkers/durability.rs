//! Durability (`durability = sync`): after `kill -9` and a restart on the same data dir, the store
//! reopened every time, and the restarted node still holds (or has superseded, or erased) every `g-*`
//! write it stamped and acknowledged before it was killed: a probe found a marker at least as high as
//! the newest such write.

use super::{show, Input, Report};

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("durability");
    let (mut reopened, mut failed) = (0u64, 0u64);
    for restart in &input.restarts {
        if restart.reopened {
            reopened += 1;
        } else {
            failed += 1;
            r.error(format!(
                "{} did not reopen after {}: {}",
                restart.node,
                if restart.wiped {
                    "a disk wipe"
                } else {
                    "kill -9"
                },
                restart.error.as_deref().unwrap_or("?")
            ));
        }
    }
    let (mut held, mut missing, mut unread) = (0u64, 0u64, 0u64);
    for p in &input.fin.probes {
        if let Some(e) = &p.error {
            unread += 1;
            let _ = e;
            continue;
        }
        let covered = p.found.as_ref().is_some_and(|f| *f >= p.expected)
            || p.erased_at.as_ref().is_some_and(|e| *e >= p.expected);
        if covered {
            held += 1;
        } else {
            missing += 1;
            r.error(format!(
                "{} lost {} after kill -9: acknowledged {}, holds {:?}",
                p.node,
                p.key,
                show(&p.expected),
                p.found.as_ref().map(show)
            ));
        }
    }
    r.count("restarts", input.restarts.len() as u64);
    r.count("reopened", reopened);
    r.count("failed_to_reopen", failed);
    r.count("probes", input.fin.probes.len() as u64);
    r.count("probes_held", held);
    r.count("probes_missing", missing);
    r.count("probes_unread", unread);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::super::test_support::*;
    use super::*;
    use crate::history::{Probe, Restart};

    fn probe(found: Option<&str>) -> Probe {
        Probe {
            node: "n2".into(),
            key: "g-0".into(),
            expected: marker("200.0@n2"),
            found: found.map(marker),
            erased_at: None,
            error: None,
        }
    }

    #[test]
    fn held_writes_pass_and_a_lost_one_or_a_failed_reopen_fails() {
        let mut i = Input::default();
        i.restarts.push(Restart {
            node: "n2".into(),
            wiped: false,
            reopened: true,
            time_ms: 1,
            error: None,
        });
        i.fin.probes = vec![probe(Some("200.0@n2")), probe(Some("300.0@n1"))];
        assert!(check(&i).valid);
        i.fin.probes.push(probe(Some("150.0@n2")));
        i.fin.probes.push(probe(None));
        let r = check(&i);
        assert!(!r.valid);
        assert_eq!(r.counts["probes_missing"], 2);
        i.fin.probes.clear();
        i.restarts[0].reopened = false;
        assert!(!check(&i).valid);
    }
}
