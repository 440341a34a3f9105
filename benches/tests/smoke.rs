//! Smoke test of the load generator: `loadgen compare --smoke` against a real `store-node` (and Redis when
//! `redis-server` is installed) must run every workload to the end without errors and write its summary.
//!
//! This checks that the benchmark machinery works; it asserts nothing about performance (figures from a
//! debug build on a busy CI machine mean nothing).

use std::path::PathBuf;
use std::process::Command;

/// `store-node` from the same target directory as this test's `loadgen` (built by
/// `cargo test --workspace`, which builds every binary of the workspace).
fn store_node() -> Option<PathBuf> {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let candidate = loadgen.parent()?.join("store-node");
    candidate.is_file().then_some(candidate)
}

#[test]
fn smoke_run_completes_without_errors() {
    let Some(store_node) = store_node() else {
        eprintln!(
            "SKIPPED: store-node is not built next to loadgen; run `cargo build -p store-node` \
             (cargo test --workspace builds it)"
        );
        return;
    };
    let results = tempfile::tempdir().expect("temp dir");
    let work = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["compare", "--smoke", "--no-pin", "--store-node"])
        .arg(&store_node)
        .arg("--results")
        .arg(results.path())
        .arg("--work-dir")
        .arg(work.path().join("w"))
        .output()
        .expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed:\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.path().join("summary.json"))
            .expect("summary.json written"),
    )
    .expect("summary.json is JSON");
    let runs = summary["runs"].as_array().expect("runs");
    assert!(runs.len() >= 8, "too few runs: {}\n{stderr}", runs.len());
    for run in runs {
        assert!(
            run["stats"]["ops"].as_u64().unwrap_or(0) > 0,
            "no ops: {run}"
        );
        assert_eq!(run["stats"]["errors"].as_u64(), Some(0), "errors: {run}");
    }
    let targets: Vec<&str> = runs.iter().filter_map(|r| r["target"].as_str()).collect();
    assert!(targets.contains(&"featurestore") && targets.contains(&"echo"));
    assert!(summary["sweeps"].as_array().map_or(0, Vec::len) >= 2);
    assert!(summary["restarts"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
}
