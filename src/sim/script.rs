//! Scenario scripts (goldenscripts, after toydb): text files in `src/sim/scripts/` of commands run on the
//! [`Cluster`] harness, each followed by its expected output on lines starting with `> `. The test runs
//! every script and fails on the first difference; `UPDATE_GOLDEN=1 cargo test -p featurestore --lib
//! sim::script` rewrites the expected output (review the diff before committing it).
//!
//! Commands (node names are `n1`, `n2`, ...; keys and feature names are plain words):
//! - `cluster nodes=N`: a new cluster of N active nodes, N = 3 replicas per key, a perfect network;
//! - `replicas KEY`: the key's preference list;
//! - `put NODE KEY name=INT ... [at=MS]`: gauges, coordinated by NODE (`at`: event time, ms);
//! - `incr NODE KEY name=DELTA ...`: counters;
//! - `flag NODE KEY name=BOOL [ctx=NODE2]`: a flag write with the context NODE2 holds for it (none: empty);
//! - `erase NODE KEY`;
//! - `track NODE USER EVENT_NAME [prop=NUMBER ...] [id=MESSAGE_ID] [at=MS]` and `page NODE USER [id=..]`:
//!   an event ingested at NODE acting as the user's owner (`ingest::apply_event`, as the node's ingest path
//!   does), with the dev cluster's example definitions (event names use `_` for spaces: `Order_Completed`);
//! - `partition NODES | NODES` (comma-separated) and `heal`;
//! - `crash NODE`, `restart NODE`, `wipe NODE` (it crashes and loses its disk; `restart` brings it back
//!   empty under its name), `join` (a new node joins), `leave NODE`;
//! - `run MS`: time passes;
//! - `state NODE KEY`: one replica's state; `states KEY`: every replica's, and whether they are identical;
//! - `hints NODE`: the hints NODE holds per target; `stats NODE`: its replication counters;
//! - `members NODE`: the membership table as NODE sees it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{sim_config, Cluster};
use crate::crdt::flag::CausalContext;
use crate::crdt::value::Value;
use crate::profile::{Applied, CounterDelta, GaugeWrite, Profile, Write};

/// Runs one script; returns the file as it should read (commands with their actual output).
fn run_script(text: &str) -> Result<String, String> {
    let mut cluster: Option<Cluster> = None;
    let mut out = String::new();
    for (no, line) in text.lines().enumerate() {
        if line.starts_with("> ") || *line == *">" {
            continue; // expected output: regenerated below its command
        }
        out.push_str(line);
        out.push('\n');
        let command = line.trim();
        if command.is_empty() || command.starts_with('#') {
            continue;
        }
        let lines = execute(&mut cluster, command).map_err(|e| format!("line {}: {e}", no + 1))?;
        for l in lines {
            let _ = writeln!(out, "> {l}");
        }
    }
    Ok(out)
}

fn node(cluster: &Cluster, name: &str) -> Result<usize, String> {
    cluster
        .nodes
        .iter()
        .position(|n| n.id.as_str() == name)
        .ok_or_else(|| format!("no node {name}"))
}

/// The disk-loss script's checker works: with every start as the same actor (the node id alone, as before
/// incarnations), the wiped node's new slots and dot collide with the old ones the replicas hold (the new
/// slot, with its later `first`, replaces the old one; the reissued dot replaces the old sibling), so
/// acknowledged writes are lost, and the script's final states say so.
#[test]
fn a_wiped_node_without_incarnations_loses_writes() {
    let path = scripts_dir().join("disk_loss_new_incarnation.txt");
    let script = std::fs::read_to_string(&path).expect("the script exists");
    let with = run_script(&script).expect("runs");
    let without = crate::knobs::with(crate::knobs::Bug::KeepIncarnation, || run_script(&script))
        .expect("runs");
    let last_states = |out: &str| {
        out.lines()
            .rev()
            .take_while(|l| !l.starts_with("states"))
            .filter(|l| l.starts_with("> n"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // The counter (3 + 2), the flag's two concurrent siblings and the window (5 + 10) after the heal.
    type Check = (&'static str, fn(&str) -> bool);
    let checks: [Check; 3] = [
        ("counter", |l| l.contains("c=5")),
        ("flag", |l| l.contains("true@") && l.contains("false@")),
        ("window", |l| l.contains("revenue_7d=15")),
    ];
    for line in last_states(&with) {
        assert!(checks.iter().all(|(_, holds)| holds(&line)), "{with}");
    }
    for (what, holds) in checks {
        assert!(
            last_states(&without).iter().any(|l| !holds(l)),
            "without incarnations a {what} write must be lost: {without}"
        );
    }
}

fn pairs(args: &[&str]) -> Result<Vec<(String, String)>, String> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("expected name=value, got {a:?}"))
        })
        .collect()
}

fn execute(cluster: &mut Option<Cluster>, command: &str) -> Result<Vec<String>, String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let (verb, args) = words.split_first().ok_or("empty command")?;
    if *verb == "cluster" {
        let n: usize = match pairs(args)?.as_slice() {
            [(k, v)] if k == "nodes" => v.parse().map_err(|e| format!("nodes: {e}"))?,
            _ => return Err("usage: cluster nodes=N".into()),
        };
        *cluster = Some(Cluster::new(n, sim_config(), &[], 0));
        return Ok(Vec::new());
    }
    let c = cluster
        .as_mut()
        .ok_or("no cluster yet: start with `cluster nodes=N`")?;
    let mut out = Vec::new();
    match (*verb, args) {
        ("replicas", [key]) => {
            let list: Vec<String> = c.replicas(key).iter().map(|n| n.to_string()).collect();
            out.push(format!("{key}: {}", list.join(" ")));
        }
        ("put", [n, key, rest @ ..]) => {
            let i = node(c, n)?;
            let mut at = None;
            let mut gauges = Vec::new();
            for (name, v) in pairs(rest)? {
                let v: i64 = v.parse().map_err(|e| format!("{name}: {e}"))?;
                if name == "at" {
                    at = Some(v.unsigned_abs());
                } else {
                    gauges.push(GaugeWrite {
                        name,
                        value: Value::I64(v),
                        ttl_ms: None,
                    });
                }
            }
            let write = Write::Put {
                gauges: &gauges,
                timestamp_ms: at,
            };
            out.push(describe(c.write(i, key, write, 1, false)));
        }
        ("incr", [n, key, rest @ ..]) => {
            let i = node(c, n)?;
            let deltas = pairs(rest)?
                .into_iter()
                .map(|(name, v)| {
                    v.parse()
                        .map(|delta| CounterDelta { name, delta })
                        .map_err(|e| format!("{v}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let write = Write::Increment { deltas: &deltas };
            out.push(describe(c.write(i, key, write, 1, false)));
        }
        ("flag", [n, key, rest @ ..]) => {
            let i = node(c, n)?;
            let mut context_from = None;
            let mut flag = None;
            for (name, v) in pairs(rest)? {
                if name == "ctx" {
                    context_from = Some(node(c, &v)?);
                } else {
                    let value: bool = v.parse().map_err(|e| format!("{name}: {e}"))?;
                    flag = Some((name, value));
                }
            }
            let (name, value) = flag.ok_or("usage: flag NODE KEY name=BOOL [ctx=NODE]")?;
            let context: CausalContext = context_from
                .and_then(|from| c.state(from, key))
                .and_then(|p| p.flags.get(name.as_str()).map(|r| r.clock.clone()))
                .unwrap_or_default();
            let write = Write::SetFlag {
                name: &name,
                value,
                context: &context,
                ttl_ms: None,
            };
            out.push(describe(c.write(i, key, write, 1, false)));
        }
        ("erase", [n, key]) => {
            let i = node(c, n)?;
            out.push(describe(c.write(i, key, Write::Erase, 1, false)));
        }
        ("track" | "page", [n, user, rest @ ..]) => {
            let i = node(c, n)?;
            let (name, rest) = match (*verb, rest) {
                ("track", [name, rest @ ..]) => (Some(name.replace('_', " ")), rest),
                ("track", []) => return Err("usage: track NODE USER EVENT ...".into()),
                _ => (None, rest),
            };
            let mut json = serde_json::Map::new();
            json.insert("type".into(), (*verb).into());
            json.insert("userId".into(), (*user).into());
            if let Some(name) = name {
                json.insert("event".into(), name.into());
            }
            let mut properties = serde_json::Map::new();
            let mut at = None;
            for (k, v) in pairs(rest)? {
                match k.as_str() {
                    "id" => {
                        json.insert("messageId".into(), v.into());
                    }
                    "at" => at = Some(v.parse::<u64>().map_err(|e| format!("at: {e}"))?),
                    _ => {
                        let n: f64 = v.parse().map_err(|e| format!("{k}: {e}"))?;
                        properties.insert(k, n.into());
                    }
                }
            }
            json.insert("properties".into(), properties.into());
            let received = at.unwrap_or_else(|| c.nodes[i].store.local_now());
            let event = crate::ingest::Event::from_segment(
                &serde_json::Value::Object(json),
                None,
                received,
                &c.limits,
            )
            .map_err(|e| e.to_string())?;
            let defs = example_definitions();
            out.push(match c.ingest(i, &event, &defs) {
                None => "node is down".to_owned(),
                Some(Err(e)) => format!("refused: {e}"),
                Some(Ok(ing)) if ing.duplicate => "duplicate".to_owned(),
                Some(Ok(ing)) if !ing.late.is_empty() => {
                    format!("ok, late for {}", ing.late.join(","))
                }
                Some(Ok(ing)) => format!("ok {}", ing.features.join(",")),
            });
        }
        ("partition", _) => {
            let text = args.join(" ");
            let (a, b) = text.split_once('|').ok_or("usage: partition A,B | C,D")?;
            let side = a
                .split(',')
                .map(|n| node(c, n.trim()))
                .collect::<Result<std::collections::BTreeSet<usize>, _>>()?;
            for n in b.split(',') {
                node(c, n.trim())?;
            }
            c.partition = Some(side);
        }
        ("heal", []) => c.partition = None,
        ("crash", [n]) => {
            let i = node(c, n)?;
            c.crash(i);
        }
        ("restart", [n]) => {
            let i = node(c, n)?;
            c.restart(i);
        }
        ("wipe", [n]) => {
            let i = node(c, n)?;
            c.wipe(i);
        }
        ("join", []) => {
            c.join_new_node(0);
            out.push(format!("{} joining", c.nodes[c.nodes.len() - 1].id));
        }
        ("leave", [n]) => {
            let i = node(c, n)?;
            c.leave(i);
        }
        ("run", [ms]) => c.run(ms.parse().map_err(|e| format!("run: {e}"))?),
        ("state", [n, key]) => {
            let i = node(c, n)?;
            out.push(format!("{n} {key}: {}", show(c.state(i, key).as_ref())));
        }
        ("states", [key]) => {
            let replicas = c.replicas(key);
            let states: Vec<Option<Profile>> =
                replicas.iter().map(|r| c.state(c.index(r), key)).collect();
            for (r, s) in replicas.iter().zip(&states) {
                out.push(format!("{r} {key}: {}", show(s.as_ref())));
            }
            let same = states.windows(2).all(|w| w[0] == w[1]);
            out.push(if same { "identical" } else { "DIFFERENT" }.to_owned());
        }
        ("hints", [n]) => {
            let i = node(c, n)?;
            let repl = c.nodes[i].repl.as_ref().ok_or("node is down")?;
            let hints: Vec<String> = repl
                .hints()
                .into_iter()
                .map(|(t, keys)| format!("{t}={}", keys.len()))
                .collect();
            out.push(format!("{n} hints: {}", list_or_none(&hints)));
        }
        ("stats", [n]) => {
            let i = node(c, n)?;
            let s = c.nodes[i].repl.as_ref().ok_or("node is down")?.stats();
            out.push(format!(
                "{n}: hints queued {} delivered {} dropped {}, send timeouts {}, handoff keys {}, orphans moved {}",
                s.hints_queued, s.hints_delivered, s.hints_dropped, s.send_timeouts, s.handoff_keys, s.orphans_moved
            ));
        }
        ("members", [n]) => {
            let i = node(c, n)?;
            let repl = c.nodes[i].repl.as_ref().ok_or("node is down")?;
            let members: Vec<String> = repl
                .table()
                .members
                .values()
                .map(|m| format!("{}:{}", m.id, m.state))
                .collect();
            out.push(format!("{n} sees {}", members.join(" ")));
        }
        _ => return Err(format!("unknown command {command:?}")),
    }
    Ok(out)
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(" ")
    }
}

/// A write's answer, as the client would see it.
fn describe(result: Option<crate::Result<super::Coordinated>>) -> String {
    match result.map(|r| r.map(|c| c.applied)) {
        None => "node is down".to_owned(),
        Some(Err(e)) => format!("refused: {e}"),
        Some(Ok(Applied::Put {
            version,
            superseded,
        })) => {
            if superseded.is_empty() {
                format!("ok {version}")
            } else {
                format!("ok {version}, superseded {}", superseded.join(","))
            }
        }
        Some(Ok(Applied::Incremented { values, .. })) => format!("ok {values:?}"),
        Some(Ok(Applied::Flag { view, .. })) => {
            let values: Vec<String> = view.values.iter().map(|v| v.value.to_string()).collect();
            format!("ok [{}] context {}", values.join(","), view.context)
        }
        Some(Ok(Applied::Erased { watermark })) => format!("ok erased up to {watermark}"),
    }
}

/// One replica's raw state, compactly: gauges with their versions, counters with their slots, flags with
/// their siblings' dots, the watermark.
fn show(state: Option<&Profile>) -> String {
    let Some(p) = state else {
        return "none".to_owned();
    };
    let mut parts = Vec::new();
    for (name, g) in &p.gauges {
        let value = g
            .value
            .as_ref()
            .map_or("expired".to_owned(), Value::to_string);
        parts.push(format!("{name}={value}@{}", g.marker));
    }
    for (name, c) in &p.counters {
        let slots: Vec<String> = c
            .slots
            .iter()
            .map(|(n, s)| format!("{n}:+{}-{}", s.inc, s.dec))
            .collect();
        parts.push(format!("{name}={} ({})", c.value(), slots.join(" ")));
    }
    for (name, f) in &p.flags {
        let siblings: Vec<String> = f
            .siblings
            .iter()
            .map(|s| format!("{}@{}:{}", s.value, s.dot.actor, s.dot.counter))
            .collect();
        parts.push(format!("{name}=[{}]", siblings.join(" ")));
    }
    for (name, w) in &p.windows {
        let events: u64 = w
            .buckets
            .values()
            .flat_map(|s| s.values())
            .map(|s| s.count)
            .sum();
        let slots: Vec<String> = w
            .buckets
            .values()
            .flat_map(|s| s.keys())
            .map(|n| n.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let (_, value) = w.value(u64::MAX / 2);
        let total: f64 = w
            .buckets
            .values()
            .flat_map(|s| s.values())
            .map(|s| s.sum)
            .sum();
        let shown = match w.spec.aggregation {
            crate::crdt::window::Aggregation::Count => events.to_string(),
            crate::crdt::window::Aggregation::Sum => total.to_string(),
            crate::crdt::window::Aggregation::DistinctCount => {
                let sketched: Vec<String> = w
                    .buckets
                    .values()
                    .flat_map(|s| s.iter())
                    .map(|(n, s)| format!("{n}:{}", s.hashes.len()))
                    .collect();
                // Read at the newest bucket: every bucket held overlaps the span before it.
                let newest = w.buckets.keys().next_back().copied().unwrap_or_default();
                format!(
                    "{} distinct [sketches {}]",
                    w.value(newest).1.unwrap_or_default(),
                    sketched.join(" ")
                )
            }
            _ => format!("{value:?}"),
        };
        parts.push(format!(
            "{name}={shown} ({events} events from {})",
            slots.join(" ")
        ));
    }
    if !p.seen.ids.is_empty() {
        parts.push(format!("seen={}", p.seen.ids.len()));
    }
    if let Some(w) = &p.erased_at {
        parts.push(format!("erased<={w}"));
    }
    if parts.is_empty() {
        "empty".to_owned()
    } else {
        parts.join(" ")
    }
}

/// The dev cluster's example definitions (store-node/features.example.toml), for the scripts.
fn example_definitions() -> crate::ingest::Definitions {
    let defs: Vec<crate::ingest::FeatureDefinition> = serde_json::from_value(serde_json::json!([
        {"name": "page_views", "on": "page", "aggregation": "count"},
        {"name": "orders_30m", "on": "track", "event": "Order Completed", "aggregation": "count", "window": "30m"},
        {"name": "revenue_7d", "on": "track", "event": "Order Completed", "aggregation": "sum", "property": "revenue", "window": "7d"},
        {"name": "distinct_products_7d", "on": "track", "event": "Product Viewed", "aggregation": "distinct_count", "property": "product_id", "window": "7d"},
    ]))
    .expect("definitions");
    crate::ingest::Definitions::compile(&defs, &crate::Limits::default()).expect("valid")
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sim/scripts")
}

#[test]
fn scenario_scripts_produce_their_expected_output() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(scripts_dir())
        .expect("src/sim/scripts exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable script");
        match run_script(&text) {
            Err(e) => failures.push(format!("{}: {e}", file.display())),
            Ok(actual) if actual == text => {}
            Ok(actual) if update => std::fs::write(file, actual).expect("writable script"),
            Ok(actual) => {
                let diff = text
                    .lines()
                    .zip(actual.lines())
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .map_or_else(
                        || "the files differ in length".to_owned(),
                        |(no, (want, got))| {
                            format!("line {}: expected {want:?}, got {got:?}", no + 1)
                        },
                    );
                failures.push(format!("{}: {diff}", file.display()));
            }
        }
    }
    assert!(files.len() >= 5, "the scenario scripts are missing");
    assert!(
        failures.is_empty(),
        "scenario scripts differ (UPDATE_GOLDEN=1 rewrites them; review the diff):\n{}",
        failures.join("\n")
    );
}

/// The runner itself must see a difference: a script whose expected output is wrong fails.
#[test]
fn a_script_with_a_wrong_expectation_is_caught() {
    let script = "cluster nodes=3\nput n1 k g=1\n> ok 1.0@n9\n";
    let actual = run_script(script).expect("runs");
    assert_ne!(actual, script, "the wrong expectation must be replaced");
    assert!(
        actual.contains("> ok ") && actual.contains("@n1"),
        "{actual}"
    );
    let bad = run_script("cluster nodes=3\nfrobnicate n1\n");
    assert!(bad.is_err(), "unknown commands are errors, not silence");
}
