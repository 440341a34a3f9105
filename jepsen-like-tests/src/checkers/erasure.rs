//! Erasure (`e-*`, writes racing erasures): after convergence no replica returns erased data. For the
//! highest acknowledged erasure watermark W of a key, every replica's watermark is at least W and every
//! value it holds carries a marker above W and came from a write.

use super::{show, Input, Report};
use crate::history::OpKind;
use featurestore::Value;

/// Runs the checker.
pub fn check(input: &Input) -> Report {
    let mut r = Report::new("erasure");
    let erases = input.by_key(OpKind::Erase, "e-");
    let puts = input.by_key(OpKind::Put, "e-");
    let (mut acked, mut racing, mut resurrected, mut watermark_behind) = (0u64, 0u64, 0u64, 0u64);
    for (key, es) in &erases {
        let Some(w) = es
            .iter()
            .filter(|e| e.is_ok())
            .filter_map(|e| e.marker())
            .max()
        else {
            continue;
        };
        acked += es.iter().filter(|e| e.is_ok()).count() as u64;
        let writes = puts.get(key).map(Vec::as_slice).unwrap_or_default();
        racing += writes
            .iter()
            .filter(|p| {
                es.iter()
                    .any(|e| p.invoke.time_ms < e.end_ms() && e.invoke.time_ms < p.end_ms())
            })
            .count() as u64;
        for (node, state) in input.states(key) {
            let erased_at = state.and_then(|s| s.erased_at.as_ref());
            if erased_at.is_none_or(|e| e < w) {
                watermark_behind += 1;
                r.error(format!(
                    "{key} on {node}: watermark {:?} is behind the acknowledged erase {}",
                    erased_at.map(show),
                    show(w)
                ));
            }
            if let Some(g) = state.and_then(|s| s.gauges.get("v")) {
                let known = match &g.value {
                    Some(Value::I64(v)) => writes.iter().any(|p| p.invoke.value == Some(*v)),
                    _ => g.value.is_none(),
                };
                if g.marker <= *w && g.value.is_some() || !known {
                    resurrected += 1;
                    r.error(format!(
                        "{key} on {node}: holds {:?} stamped {} at or below the erase {}",
                        g.value,
                        show(&g.marker),
                        show(w)
                    ));
                }
            }
        }
    }
    r.count("keys_erased", erases.len() as u64);
    r.count("acknowledged_erasures", acked);
    r.count("writes_racing_an_erase", racing);
    r.count("resurrected", resurrected);
    r.count("watermark_behind", watermark_behind);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::super::test_support::*;
    use super::*;
    use crate::history::OpType;

    fn input(state: featurestore::Profile) -> Input {
        let mut i = Input::default();
        i.ops.push(put(0, "e-0", 100, OpType::Ok, 1, "100.0@n1"));
        let mut e = op(1, OpKind::Erase, "e-0", 150, OpType::Ok);
        e.done.as_mut().unwrap().marker = Some(marker("150.0@n2"));
        i.ops.push(e);
        i.ops.push(put(2, "e-0", 155, OpType::Ok, 2, "160.0@n1"));
        set_final(
            &mut i,
            "e-0",
            vec![("n1", Some(state.clone())), ("n2", Some(state))],
        );
        i
    }

    #[test]
    fn a_write_after_the_erase_survives_and_passes() {
        let mut s = gauge_state(2, "160.0@n1");
        s.erased_at = Some(marker("150.0@n2"));
        let r = check(&input(s));
        assert!(r.valid, "{r:?}");
        assert_eq!(r.counts["writes_racing_an_erase"], 1);
    }

    #[test]
    fn erased_data_returned_fails() {
        let mut s = gauge_state(1, "100.0@n1");
        s.erased_at = Some(marker("150.0@n2"));
        let r = check(&input(s));
        assert!(!r.valid);
        assert_eq!(r.counts["resurrected"], 2);
        // A replica that never saw the erase.
        let r = check(&input(gauge_state(1, "100.0@n1")));
        assert_eq!(r.counts["watermark_behind"], 2);
    }
}
