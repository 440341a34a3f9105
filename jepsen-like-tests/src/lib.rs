//! jepsen-like-tests: the real-process, real-network counterpart of the in-process simulation
//! (`src/sim/`). It runs N `store-node` processes, each in its own network namespace joined by a bridge
//! (that lives in a namespace of its own), breaks them with seeded nemeses (partitions, packet loss,
//! `kill -9`, pauses, clock skew, membership changes, disk loss), runs workloads with unique values from
//! a client namespace (gauges, counters, flags, erasures racing writes, ingested events with retried and
//! duplicated message ids), records every operation in `history.jsonl`, heals, waits for quiescence and
//! then checks what came out against what was acknowledged.
//!
//! Layout: [`netns`] (namespaces, bridge, veth, blackhole routes, netem), [`cluster`] (node processes,
//! configs, certificates), [`schedule`] (the seeded fault plan), [`nemesis`] (applying and healing
//! faults), [`worker`] (the client side, run inside the client namespace), [`history`] (the records),
//! [`checkers`] (one module per promise), [`report`] (verdict, summary, SVG) and [`run`] (one schedule,
//! end to end). See `docs/harness.md`.
//!
//! Caveat: the harness needs root (network namespaces, routes, qdiscs); it says what is missing
//! otherwise ([`netns::preflight`]).

pub mod checkers;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod report;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod worker;

/// Milliseconds since the Unix epoch on the host's clock: the one time base of the history, the fault
/// windows and the final state (the nodes' clock offsets never apply to it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a duration such as `60s`, `2m`, `500ms` or `90` (seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1000)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (use e.g. 60s, 2m, 500ms)"))?;
    Ok(std::time::Duration::from_millis(n.saturating_mul(mult)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("60s").unwrap().as_secs(), 60);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("7").unwrap().as_secs(), 7);
        assert!(parse_duration("x").is_err());
    }
}
