//! The layering rule of the core, checked on the source text (tests only).
//!
//! A *layer* is a folder of `src/` (`crdt`, `profile`, `ingest`, `cluster`, `wire`, `replication`, `sim`,
//! `compact`) or a top-level file (`knobs`, `error`, `hlc`, `limits`). The rule:
//! 1. the graph of `crate::<layer>` references between layers has no cycle, and the layers only point
//!    down the order in [`ORDER`];
//! 2. inside a folder, the sibling files (all but `mod.rs`) have no cycle among themselves (`mod.rs` and
//!    its children share items by design: a state machine's `impl` is split across the files of its
//!    folder);
//! 3. `error.rs` refers to nothing else in the crate (the wire's error codes map *from* it).
//!
//! References are found by scanning for `crate::name` and `super::name` tokens, comments excluded, test
//! modules included (a test may only use what is below it too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers from the ground up: a layer may refer only to layers before it.
const ORDER: [&str; 13] = [
    "knobs",
    "error",
    "compact",
    "hlc",
    "crdt",
    "limits",
    "profile",
    "ingest",
    "segment",
    "cluster",
    "wire",
    "replication",
    "sim",
];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The names following `prefix` (`crate::` or `super::`) in `code`, outside `//` comments.
fn referenced(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            let after = &rest[at + prefix.len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

/// A cycle in `graph`, if there is one (as the list of nodes along it).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable src dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The layer graph and, per folder, the graph of its sibling files.
fn graphs(src: &Path) -> (Graph, BTreeMap<String, Graph>) {
    let mut layers = Graph::new();
    let mut siblings: BTreeMap<String, Graph> = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).expect("under src");
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        let layer = parts[0].clone();
        if layer == "lib" || layer == "layering" {
            continue; // the crate root re-exports everything; this checker names every layer
        }
        let code = std::fs::read_to_string(&file).expect("readable source");
        let edges = layers.entry(layer.clone()).or_default();
        for target in referenced(&code, "crate::") {
            if target != layer && ORDER.contains(&target.as_str()) {
                edges.insert(target);
            }
        }
        if parts.len() == 2 && parts[1] != "mod" {
            let inner = siblings.entry(layer.clone()).or_default();
            let me = parts[1].clone();
            let mut targets = referenced(&code, "super::");
            for line in code.lines() {
                let prefix = format!("crate::{layer}::");
                targets.extend(referenced(line, &prefix));
            }
            let edges = inner.entry(me.clone()).or_default();
            for t in targets {
                if t != me && src.join(&layer).join(format!("{t}.rs")).exists() {
                    edges.insert(t);
                }
            }
        }
    }
    (layers, siblings)
}

#[test]
fn the_core_has_no_import_loops_and_points_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (layers, siblings) = graphs(&src);
    assert!(layers.len() >= ORDER.len(), "layers found: {layers:?}");
    assert_eq!(find_cycle(&layers), None, "a cycle between layers");
    for (layer, targets) in &layers {
        let rank = |l: &str| ORDER.iter().position(|o| *o == l);
        let mine = rank(layer).unwrap_or_else(|| panic!("{layer} is not in ORDER"));
        for t in targets {
            assert!(
                rank(t).is_some_and(|r| r < mine),
                "{layer} refers to {t}, which is not below it in {ORDER:?}"
            );
        }
    }
    for (folder, graph) in &siblings {
        assert_eq!(
            find_cycle(graph),
            None,
            "a cycle between the files of {folder}/"
        );
    }
    assert!(
        layers["error"].is_empty(),
        "error.rs must not depend on the crate: {:?}",
        layers["error"]
    );
}

/// The checker sees the defects it looks for.
#[test]
fn the_layering_check_finds_cycles_and_references() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (a, b) in edges {
            g.entry((*a).to_owned())
                .or_default()
                .insert((*b).to_owned());
            g.entry((*b).to_owned()).or_default();
        }
        g
    };
    assert_eq!(find_cycle(&graph(&[("a", "b"), ("b", "c")])), None);
    let cycle = find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(find_cycle(&graph(&[("error", "wire"), ("wire", "error")])).is_some());
    let found = referenced(
        "use crate::wire::client::ErrorCode;\n// crate::sim in a comment\nlet x = crate::hlc::Clock::new;",
        "crate::",
    );
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        vec!["hlc".to_owned(), "wire".to_owned()]
    );
}
