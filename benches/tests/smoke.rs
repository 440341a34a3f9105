//! Smoke tests of the load generator: `loadgen compare --smoke` against a real `store-node`, Redis and the
//! QUIC echo must run every workload to the end without errors and write its summary; and a failing phase
//! must make `loadgen` exit non-zero.
//!
//! In CI (`CI` set, as `.ci/run` runs) nothing may be missing: without `store-node` next to `loadgen` or
//! without `redis-server` on `PATH` the tests fail (`.ci/run` installs Redis). Elsewhere they say loudly
//! what they skip.
//!
//! This checks that the benchmark machinery works; it asserts nothing about performance (figures from a
//! debug build on a busy CI machine mean nothing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether this runs in CI (`CI` set to anything but empty, `0` or `false`).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `store-node` from the same target directory as this test's `loadgen` (built by
/// `cargo test --workspace`, which builds every binary of the workspace). In CI its absence fails the
/// test; elsewhere `None` (the caller skips, saying so).
fn store_node() -> Option<PathBuf> {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_loadgen"));
    let candidate = loadgen.parent().map(|dir| dir.join("store-node"));
    match candidate {
        Some(path) if path.is_file() => Some(path),
        other => {
            assert!(
                !in_ci(),
                "CI: store-node is not built next to loadgen ({other:?}), so the smoke test cannot run; \
                 `cargo test --workspace` builds it"
            );
            eprintln!(
                "SKIPPED (not in CI): store-node is not built next to loadgen; run `cargo build -p store-node` \
                 (cargo test --workspace builds it)"
            );
            None
        }
    }
}

/// `redis-server` on `PATH`, if any.
fn redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

/// Runs `loadgen compare --smoke` with `extra` arguments; results and scratch files in temp dirs.
fn smoke(store_node: &Path, results: &Path, extra: &[&std::ffi::OsStr]) -> Output {
    let work = tempfile::tempdir().expect("temp dir");
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["compare", "--smoke", "--no-pin", "--store-node"])
        .arg(store_node)
        .arg("--results")
        .arg(results)
        .arg("--work-dir")
        .arg(work.path().join("w"))
        .args(extra)
        .output()
        .expect("loadgen runs")
}

fn summary(results: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(results.join("summary.json")).expect("summary.json written"),
    )
    .expect("summary.json is JSON")
}

#[test]
fn smoke_run_completes_without_errors() {
    let Some(store_node) = store_node() else {
        return;
    };
    let redis = redis_server();
    let mut extra: Vec<&std::ffi::OsStr> = Vec::new();
    if in_ci() {
        // loadgen itself refuses to skip Redis, so a missing redis-server fails here with its message.
        extra.push("--require-redis".as_ref());
    } else if redis.is_none() {
        eprintln!(
            "NOTE (not in CI): redis-server is not on PATH, so this run covers featurestore and the echo \
             only (apt-get install -y redis-server; CI requires it)"
        );
    }
    let results = tempfile::tempdir().expect("temp dir");
    let out = smoke(&store_node, results.path(), &extra);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadgen failed:\n{stderr}");
    let summary = summary(results.path());
    assert_eq!(
        summary["failed_phases"].as_array().map(Vec::len),
        Some(0),
        "failed phases: {}\n{stderr}",
        summary["failed_phases"]
    );
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
    assert!(
        targets.contains(&"featurestore") && targets.contains(&"echo"),
        "targets: {targets:?}"
    );
    if in_ci() || redis.is_some() {
        assert!(
            targets.contains(&"redis"),
            "Redis was to be measured, targets: {targets:?}\n{stderr}"
        );
    }
    assert!(summary["sweeps"].as_array().map_or(0, Vec::len) >= 2);
    assert!(summary["restarts"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
}

/// A "redis-server" that exits at once makes every phase fail (each starts a Redis): `loadgen` still
/// writes the summary, naming the failed phases, and exits non-zero.
#[test]
fn a_failing_phase_makes_loadgen_exit_non_zero() {
    let Some(store_node) = store_node() else {
        return;
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let broken = scratch.path().join("redis-server");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken on purpose' >&2\nexit 1\n").expect("script");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let results = tempfile::tempdir().expect("temp dir");
    let out = smoke(
        &store_node,
        results.path(),
        &["--redis-server".as_ref(), broken.as_os_str()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "loadgen exited {:?} although its phases failed:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("phase(s) failed"), "stderr:\n{stderr}");
    let failed = summary(results.path())["failed_phases"].clone();
    assert_eq!(
        failed.as_array().map(Vec::len),
        Some(3),
        "failed phases: {failed}"
    );
}

/// `loadgen ingest` (W5a) with tiny parameters: both targets acknowledge every event (also of the memory
/// measure) and every probe becomes readable, and `ingest.json` says so.
#[test]
fn ingest_smoke_run_acknowledges_every_event() {
    let Some(store_node) = store_node() else {
        return;
    };
    let results = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args([
        "ingest",
        "--no-pin",
        "--users",
        "200",
        "--workers",
        "4",
        "--duration",
        "1",
        "--probes",
        "20",
        "--memory-users",
        "50",
        "--memory-events",
        "4",
        "--store-node",
    ])
    .arg(&store_node)
    .arg("--results")
    .arg(results.path());
    if redis_server().is_none() {
        assert!(!in_ci(), "CI: redis-server must be installed");
        eprintln!("SKIPPED Redis (not in CI): redis-server is not on PATH");
        cmd.arg("--no-redis");
    }
    let out = cmd.output().expect("loadgen runs");
    assert!(
        out.status.success(),
        "loadgen ingest failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.path().join("ingest.json")).expect("ingest.json written"),
    )
    .expect("ingest.json is JSON");
    let targets = report["results"].as_array().expect("results");
    assert!(!targets.is_empty());
    for t in targets {
        assert_eq!(t["failed"], 0, "{t}");
        assert!(t["events_per_s"].as_f64().expect("a rate") > 0.0, "{t}");
        assert_eq!(t["unreadable"], 0, "every probe readable: {t}");
        assert_eq!(t["readable"]["count"], 20, "{t}");
        assert_eq!(t["memory"]["users"], 50, "{t}");
        assert_eq!(
            t["memory"]["events_per_user"].as_f64(),
            Some(4.0),
            "every event of the memory measure applied: {t}"
        );
    }
}

/// `loadgen segments` (W5) with tiny parameters: every event's entry reaches the subscriber, the timers
/// fire the exits, and `segments.json` says so.
#[test]
fn segments_smoke_run_sees_every_entry_and_the_timer_exits() {
    let Some(store_node) = store_node() else {
        return;
    };
    let results = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "segments",
            "--no-pin",
            "--rates",
            "20,40",
            "--duration",
            "1",
            "--workers",
            "4",
            "--store-node",
        ])
        .arg(&store_node)
        .arg("--results")
        .arg(results.path())
        .output()
        .expect("loadgen runs");
    assert!(
        out.status.success(),
        "loadgen segments failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.path().join("segments.json"))
            .expect("segments.json written"),
    )
    .expect("segments.json is JSON");
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2, "{report}");
    let mut entries = 0;
    for p in phases {
        assert_eq!(p["failed"], 0, "{p}");
        assert_eq!(p["missing"], 0, "every entry reached the subscriber: {p}");
        assert!(
            p["end_to_end"]["count"].as_u64().expect("a count") > 0,
            "{p}"
        );
        entries += p["end_to_end"]["count"].as_u64().expect("a count");
        assert_eq!(p["node"].as_array().expect("per node").len(), 3, "{p}");
    }
    // Every user's recent-cart membership ends by a timer, with no new event.
    assert_eq!(
        report["timer_received"]["count"].as_u64(),
        Some(entries),
        "{report}"
    );
    let fired: u64 = report["timer_lag"]
        .as_array()
        .expect("per node")
        .iter()
        .map(|n| n[1]["count"].as_u64().expect("a count"))
        .sum();
    assert_eq!(fired, entries, "{report}");
}
