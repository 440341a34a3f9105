//! The outputs of a run: `verdict.json` (every checker's report, counts and the reproduce command),
//! `summary.txt` (the same for people) and `timeline.svg` (each operation's latency over time, one row
//! per node, fault windows shaded).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkers::Report;
use crate::history::{Completed, FaultWindow, OpType};

/// The verdict of one schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// The schedule's seed.
    pub seed: u64,
    /// Whether every checker passed.
    pub valid: bool,
    /// Nodes at the start.
    pub nodes: usize,
    /// Workload duration, ms.
    pub time_ms: u64,
    /// Enabled nemeses.
    pub nemeses: Vec<String>,
    /// Operations invoked.
    pub ops: u64,
    /// Operations acknowledged.
    pub ok: u64,
    /// Faults injected, by nemesis.
    pub faults: BTreeMap<String, u64>,
    /// Every checker's report.
    pub checkers: Vec<Report>,
    /// The command that runs this schedule again.
    pub reproduce: String,
    /// An error that stopped the run before the checkers (the run is then invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Verdict {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} seed {}: {} nodes, {} s, nemeses {}",
            if self.valid { "PASS" } else { "FAIL" },
            self.seed,
            self.nodes,
            self.time_ms / 1000,
            self.nemeses.join(",")
        );
        let _ = writeln!(
            s,
            "  operations: {} invoked, {} acknowledged",
            self.ops, self.ok
        );
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "  faults: {}", faults.join(", "));
        if let Some(e) = &self.error {
            let _ = writeln!(s, "  ERROR: {e}");
        }
        for c in &self.checkers {
            let counts: Vec<String> = c
                .counts
                .iter()
                .filter(|(_, v)| !v.is_object())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                s,
                "  {} {:<12} {}",
                if c.valid { "ok  " } else { "FAIL" },
                c.name,
                counts.join(" ")
            );
            for (k, v) in c.counts.iter().filter(|(_, v)| v.is_object()) {
                if let Some(map) = v.as_object() {
                    for (name, t) in map {
                        let _ = writeln!(s, "         {k} {name}: {t}");
                    }
                }
            }
            for e in &c.errors {
                let _ = writeln!(s, "         - {e}");
            }
            if c.error_count > c.errors.len() {
                let _ = writeln!(s, "         ... {} more", c.error_count - c.errors.len());
            }
        }
        let _ = writeln!(s, "  reproduce: {}", self.reproduce);
        s
    }

    /// Writes `verdict.json` and `summary.txt` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(
            dir.join("verdict.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(dir.join("summary.txt"), self.summary())?;
        Ok(())
    }
}

fn count(v: &Verdict, checker: &str, name: &str) -> u64 {
    v.checkers
        .iter()
        .find(|c| c.name == checker)
        .and_then(|c| c.counts.get(name))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// The figures of many schedules (`summary.json`): schedules passed, operations, faults by kind,
/// acknowledged writes lost (LWW, counters, flags, events, durability probes), the worst convergence times and
/// availability per fault kind.
pub fn aggregate(verdicts: &[Verdict]) -> serde_json::Value {
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut avail: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut failed = Vec::new();
    for v in verdicts {
        for (k, n) in &v.faults {
            *faults.entry(k.clone()).or_default() += n;
        }
        if !v.valid {
            let bad: Vec<&str> = v
                .checkers
                .iter()
                .filter(|c| !c.valid)
                .map(|c| c.name.as_str())
                .collect();
            failed.push(serde_json::json!({
                "seed": v.seed, "checkers": bad, "error": v.error,
            }));
        }
        let by = v
            .checkers
            .iter()
            .find(|c| c.name == "availability")
            .and_then(|c| c.counts.get("by_fault"))
            .and_then(serde_json::Value::as_object);
        for (k, t) in by.into_iter().flatten() {
            let e = avail.entry(k.clone()).or_default();
            e.0 += t["ops"].as_u64().unwrap_or(0);
            e.1 += t["ok"].as_u64().unwrap_or(0);
        }
    }
    let sum = |checker: &str, name: &str| {
        verdicts
            .iter()
            .map(|v| count(v, checker, name))
            .sum::<u64>()
    };
    let max = |checker: &str, name: &str| verdicts.iter().map(|v| count(v, checker, name)).max();
    let p50s: Vec<u64> = verdicts
        .iter()
        .map(|v| count(v, "convergence", "converge_ms_p50"))
        .collect();
    serde_json::json!({
        "schedules": verdicts.len(),
        "passed": verdicts.iter().filter(|v| v.valid).count(),
        "operations": verdicts.iter().map(|v| v.ops).sum::<u64>(),
        "acknowledged": verdicts.iter().map(|v| v.ok).sum::<u64>(),
        "faults": faults,
        "lost_acknowledged": {
            "lww": sum("lww", "lost"),
            "counters_below_acknowledged": sum("counters", "below_acknowledged"),
            "counters_above_attempted": sum("counters", "above_attempted"),
            "flag_siblings_lost": sum("flags", "lost_siblings"),
            "flag_values_resurrected": sum("flags", "resurrected"),
            "erasures_resurrected": sum("erasure", "resurrected"),
            "ingest_below_acknowledged": sum("ingest", "below_acknowledged"),
            "ingest_above_distinct": sum("ingest", "above_distinct"),
            "durability_probes_missing": sum("durability", "probes_missing"),
        },
        "restarts": sum("durability", "restarts"),
        "reopened": sum("durability", "reopened"),
        "durability_probes": sum("durability", "probes"),
        "realtime_inversions": sum("lww", "realtime_inversions"),
        "convergence_ms": {
            "p50_of_schedule_p50s": crate::checkers::quantile(&p50s, 0.5),
            "max_schedule_p99": max("convergence", "converge_ms_p99"),
            "max": max("convergence", "converge_ms_max"),
        },
        "availability": avail.iter().map(|(k, (ops, ok))| {
            (k.clone(), serde_json::json!({"ops": ops, "ok": ok,
                "fraction_ok": if *ops == 0 { 1.0 } else { (*ok as f64 / *ops as f64 * 10_000.0).round() / 10_000.0 }}))
        }).collect::<serde_json::Map<_, _>>(),
        "failed": failed,
    })
}

fn color(nemesis: &str) -> &'static str {
    match nemesis {
        "partition" => "#9ecae1",
        "kill" => "#fc9272",
        "pause" => "#fdd0a2",
        "clock" => "#c7e9c0",
        "membership" => "#dadaeb",
        _ => "#d9d9d9",
    }
}

/// The SVG timeline: x is time, one row per node (plus `?` for operations with no node), y within a
/// row the operation's latency on a log scale (1 ms at the bottom, 10 s at the top); green `ok`, orange
/// `info`, red `fail`; fault windows shaded across every row and labelled.
pub fn svg(
    ops: &[Completed],
    faults: &[FaultWindow],
    start_ms: u64,
    end_ms: u64,
    nodes: &[String],
) -> String {
    let (width, left, row_h, top) = (1200.0_f64, 60.0_f64, 70.0_f64, 30.0_f64);
    let mut rows: Vec<String> = nodes.to_vec();
    rows.push("?".to_owned());
    let height = top + row_h * rows.len() as f64 + 30.0;
    let span = end_ms.saturating_sub(start_ms).max(1) as f64;
    let x = |t: u64| left + (t.saturating_sub(start_ms) as f64 / span) * (width - left - 10.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="10">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for f in faults {
        let (x0, x1) = (x(f.start_ms), x(f.end_ms.max(f.start_ms)));
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{:.1}" fill="{}" opacity="0.6"><title>{} {}</title></rect>"#,
            (x1 - x0).max(1.0),
            row_h * rows.len() as f64,
            color(&f.nemesis),
            f.nemesis,
            xml(&f.detail)
        );
        let _ = writeln!(
            s,
            r#"<text x="{x0:.1}" y="{:.1}">{}</text>"#,
            top - 4.0,
            f.nemesis
        );
    }
    for (i, name) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{width}" y1="{:.1}" y2="{:.1}" stroke="#bbb"/><text x="5" y="{:.1}">{name}</text>"##,
            y + row_h,
            y + row_h,
            y + row_h / 2.0
        );
    }
    let row_of = |node: Option<&String>| {
        node.and_then(|n| rows.iter().position(|r| r == n))
            .unwrap_or(rows.len() - 1)
    };
    for op in ops {
        let Some(done) = &op.done else { continue };
        let lat = done.latency_ms.unwrap_or(0).max(1) as f64;
        let frac = (lat.log10() / 4.0).clamp(0.0, 1.0);
        let row = row_of(done.node.as_ref().or(op.invoke.node.as_ref()));
        let y = top + row_h * (row as f64 + 1.0) - 4.0 - frac * (row_h - 8.0);
        let fill = match done.typ {
            OpType::Ok => "#2ca02c",
            OpType::Fail => "#d62728",
            _ => "#ff7f0e",
        };
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{y:.1}" r="1.5" fill="{fill}"/>"#,
            x(op.invoke.time_ms)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{:.1}">time: {:.0} s; y per row: latency, log scale 1 ms..10 s; green ok, orange info, red fail</text>"#,
        height - 10.0,
        span / 1000.0
    );
    s.push_str("</svg>\n");
    s
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]
    use super::*;
    use crate::checkers::test_support::op;
    use crate::history::OpKind;

    #[test]
    fn the_svg_has_a_row_per_node_a_point_per_op_and_the_faults() {
        let ops = vec![op(0, OpKind::Put, "g-0", 1_500, OpType::Ok)];
        let faults = vec![FaultWindow {
            nemesis: "kill".into(),
            detail: "kill -9 <n1>".into(),
            nodes: vec!["n1".into()],
            start_ms: 1_200,
            end_ms: 1_800,
            offset_ms: None,
        }];
        let svg = svg(&ops, &faults, 1_000, 3_000, &["n1".into(), "n2".into()]);
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(svg.contains(">n2</text>") && svg.contains("&lt;n1&gt;"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
