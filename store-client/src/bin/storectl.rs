//! `storectl`: the featurestore command-line client.
//!
//! ```text
//! storectl --config client.toml get user-42 --features cart_value,vip --quorum 2
//! storectl --config client.toml get-many user-1 user-2
//! storectl --config client.toml put user-42 cart_value=42.5 plan='"pro"' --ttl-ms 60000 --quorum 2
//! storectl --config client.toml incr user-42 page_views=1 credits=-5
//! storectl --config client.toml flag user-42 vip=true --context n1:3,n2:1
//! storectl --config client.toml erase user-42
//! storectl --config client.toml status [--node n2]
//! storectl --config client.toml cluster
//! storectl --config admin.toml local user-42 --node n2
//! storectl --config admin.toml digests --node n1 --peer n2
//! storectl --config admin.toml leave --node n3
//! storectl --config client.toml dlq list [--node n1] [--after ID] [--limit N]
//! storectl --config client.toml dlq show ID [--node n1]
//! storectl --config admin.toml dlq replay ID... --node n1 | dlq replay --all [--node n1]
//! storectl --config admin.toml dlq purge ID... --node n1 | dlq purge --all [--node n1]
//! storectl segments check segments.toml
//! storectl --config client.toml segments of user-42
//! ```
//!
//! Requests are routed like the library's (to the replicas of the key; see `store_client::client`);
//! `--quorum N` sets R for reads and W for writes (default: `read_quorum` / `write_quorum` of the
//! configuration). `status`, `local`, `digests` and `leave` with `--node` ask that node only. The
//! dead-letter queue is node-local: `dlq` asks every member of the cluster (one JSON object per node), or
//! only `--node`; ids are per node, so `replay`/`purge` of ids need `--node` unless there is one member.
//!
//! `local`, `digests` and `leave` are admin requests: the configuration's certificate must carry the admin
//! role (`store-node certs --admins NAME`; `store-node dev` writes `admin.toml` for that). With an
//! application certificate they fail with `error: forbidden: ...`.
//!
//! Every answer is printed as pretty JSON on stdout. Errors go to stderr as `error: ...` (including the
//! node's error code for refused requests) with exit code 1; usage errors exit with code 2. The
//! configuration path may also come from `FEATURESTORE_CLIENT_CONFIG`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use featurestore::ingest::Event;
use featurestore::wire::event::EventOutcome;
use serde::Serialize;
use serde_json::json;
use store_client::{
    CausalContext, Client, ClientConfig, DeadLetter, GaugeWrite, MemberState, NodeId, Value,
};

/// The featurestore command-line client.
#[derive(Debug, Parser)]
#[command(name = "storectl", version, about)]
struct Cli {
    /// Client configuration file (TOML).
    #[arg(long, env = "FEATURESTORE_CLIENT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read one entity; prints its profile, or `null` if nothing is visible.
    Get {
        /// The entity key.
        key: String,
        /// Only these features (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "NAMES")]
        features: Option<Vec<String>>,
        /// Read quorum R: replicas read and merged (stale ones repaired).
        #[arg(long, value_name = "N", value_parser = parse_quorum)]
        quorum: Option<u8>,
    },
    /// Read several entities; prints a JSON array in key order.
    GetMany {
        /// The entity keys.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Only these features (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "NAMES")]
        features: Option<Vec<String>>,
        /// Read quorum R: replicas read and merged per key.
        #[arg(long, value_name = "N", value_parser = parse_quorum)]
        quorum: Option<u8>,
    },
    /// Write gauges: `name=value` (true/false, an integer, a float, else a string; `"42"` forces a string).
    Put {
        /// The entity key.
        key: String,
        /// `name=value` pairs.
        #[arg(required = true, value_parser = parse_gauge, value_name = "NAME=VALUE")]
        gauges: Vec<(String, Value)>,
        /// Time to live of every written gauge, in milliseconds.
        #[arg(long, value_name = "MS")]
        ttl_ms: Option<u64>,
        /// Event time (Unix milliseconds) instead of the node's clock.
        #[arg(long, value_name = "MS")]
        timestamp_ms: Option<u64>,
        /// Write quorum W: replicas holding the write before it is acknowledged.
        #[arg(long, value_name = "N", value_parser = parse_quorum)]
        quorum: Option<u8>,
    },
    /// Add to counters: `name=delta`; prints each counter's new value.
    Incr {
        /// The entity key.
        key: String,
        /// `name=delta` pairs (delta is a signed integer).
        #[arg(required = true, value_parser = parse_delta, value_name = "NAME=DELTA", allow_negative_numbers = true)]
        deltas: Vec<(String, i64)>,
        /// Write quorum W: replicas holding the write before it is acknowledged.
        #[arg(long, value_name = "N", value_parser = parse_quorum)]
        quorum: Option<u8>,
    },
    /// Write a flag: `name=true|false`; prints its siblings and the context to write back.
    Flag {
        /// The entity key.
        key: String,
        /// `name=true` or `name=false`.
        #[arg(value_parser = parse_flag, value_name = "NAME=BOOL")]
        flag: (String, bool),
        /// Causal context from the last read of the flag (`node:counter,...`); empty if none.
        #[arg(long, value_parser = parse_context, value_name = "TOKEN")]
        context: Option<CausalContext>,
        /// Time to live, in milliseconds.
        #[arg(long, value_name = "MS")]
        ttl_ms: Option<u64>,
        /// Write quorum W: replicas holding the write before it is acknowledged.
        #[arg(long, value_name = "N", value_parser = parse_quorum)]
        quorum: Option<u8>,
    },
    /// Erase an entity for good; prints the erasure watermark.
    Erase {
        /// The entity key.
        key: String,
        /// Write quorum W: replicas holding the erasure before it is acknowledged.
        #[arg(long, value_name = "N", value_parser = parse_quorum)]
        quorum: Option<u8>,
    },
    /// Print a node's status: counters, ring version, members with state, liveness and hint queues.
    Status {
        /// Ask this node (default: the first reachable node).
        #[arg(long, value_parser = parse_node, value_name = "ID")]
        node: Option<NodeId>,
    },
    /// Print the cluster view: membership table, virtual nodes, replication factor.
    Cluster,
    /// Print one node's raw local state of a key (values and CRDT metadata), or `null`. Admin.
    Local {
        /// The entity key.
        key: String,
        /// The node to ask.
        #[arg(long, required = true, value_parser = parse_node, value_name = "ID")]
        node: NodeId,
    },
    /// Print a node's anti-entropy digests of the keys it shares with a peer (a JSON array). Admin.
    Digests {
        /// The node to ask.
        #[arg(long, required = true, value_parser = parse_node, value_name = "ID")]
        node: NodeId,
        /// The other replica.
        #[arg(long, required = true, value_parser = parse_node, value_name = "ID")]
        peer: NodeId,
    },
    /// Ask a node to leave the cluster (it hands its ranges over, then is marked left). Admin.
    Leave {
        /// The node that leaves.
        #[arg(long, required = true, value_parser = parse_node, value_name = "ID")]
        node: NodeId,
    },
    /// Send a track event for USER (Segment's track call): `storectl track u1 "Order Completed" revenue=42.5`.
    Track {
        /// The user id.
        user: String,
        /// The event name.
        event: String,
        /// Properties as NAME=VALUE.
        #[arg(value_parser = parse_gauge)]
        properties: Vec<(String, Value)>,
        /// The message id (default: a fresh one; send the same id again to retry without double counting).
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Send an identify call for USER with traits as NAME=VALUE (each becomes a gauge).
    Identify {
        /// The user id.
        user: String,
        /// Traits as NAME=VALUE.
        #[arg(value_parser = parse_gauge)]
        traits: Vec<(String, Value)>,
        /// The message id (default: a fresh one).
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Ingest a file of Segment-format events, one JSON object per line (nothing is sent if a line is
    /// invalid).
    Ingest {
        /// The file.
        file: PathBuf,
    },
    /// The dead-letter queues: events the nodes could not ingest (see docs/ingest.md).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Segments (see docs/segments.md).
    Segments {
        #[command(subcommand)]
        command: SegmentsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SegmentsCommand {
    /// Compile a segment definitions file (`[[segment]]` tables) as a node would, with the default
    /// limits, without a cluster: each segment with the features its rule reads, or the first error with
    /// its line and column.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// The segments a user is a member of, and those it left (its `segment:NAME` flags).
    Of {
        /// The user.
        user: String,
    },
    /// Every node's segments: definitions, runtime catalog, backfill progress, entries/exits, members
    /// (those it is primary owner of) and the event→change latency.
    List,
    /// Add (or replace) a runtime segment: stored in the catalog that replicates to every node, and
    /// backfilled over existing profiles on their owners.
    Add {
        /// The segment's name.
        name: String,
        /// Its rule, in CEL.
        rule: String,
    },
    /// Remove a segment (a runtime one, or hide one of the start-up file) on every node.
    Remove {
        /// The segment's name.
        name: String,
    },
    /// Stream entries and exits from every node's change log, one JSON line each (Ctrl-C to stop).
    Watch {
        /// Only this segment (repeatable).
        #[arg(long)]
        segment: Vec<String>,
        /// `fenced`: the change with its fencing fields; `segment`: an `Audience Entered`/`Audience
        /// Exited` track event as Segment audiences send.
        #[arg(long, default_value = "fenced")]
        format: String,
        /// Stop after this many changes.
        #[arg(long)]
        limit: Option<u64>,
        /// Start at the newest change of each node instead of the oldest retained one.
        #[arg(long)]
        new: bool,
    },
    /// Members of a segment (merged from every node's primary-owned profiles), paged.
    Members {
        /// The segment.
        segment: String,
        /// Only members after this id (the `next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Most members to list.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Why a user is or is not a member: the rule, the values it reads, the last transition and its
    /// cause, the next deadline.
    Why {
        /// The user.
        user: String,
        /// The segment.
        segment: String,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List entries (reason, source, time, payload) of every node, or of `--node`.
    List {
        /// Ask this node only.
        #[arg(long, value_parser = parse_node, value_name = "ID")]
        node: Option<NodeId>,
        /// Only entries with a larger id (a page's `next`).
        #[arg(long, value_name = "ID")]
        after: Option<u64>,
        /// Most entries per node.
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: u32,
    },
    /// Show one entry (every node's entry of that id, or `--node`'s).
    Show {
        /// The entry's id.
        id: u64,
        /// Ask this node only.
        #[arg(long, value_parser = parse_node, value_name = "ID")]
        node: Option<NodeId>,
    },
    /// Replay entries through the ingest path with the current definitions (deduplicated): applied ones
    /// are removed, ones refused again stay with the new reason.
    Replay {
        /// The entries (needs `--node` unless the cluster has one member).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<u64>,
        /// Every entry (of every node, or of `--node`).
        #[arg(long)]
        all: bool,
        /// This node's entries.
        #[arg(long, value_parser = parse_node, value_name = "ID")]
        node: Option<NodeId>,
    },
    /// Remove entries.
    Purge {
        /// The entries (needs `--node` unless the cluster has one member).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<u64>,
        /// Every entry (of every node, or of `--node`).
        #[arg(long)]
        all: bool,
        /// This node's entries.
        #[arg(long, value_parser = parse_node, value_name = "ID")]
        node: Option<NodeId>,
    },
}

/// The nodes a `dlq` command asks: `--node`, else every member that has not left.
fn dlq_nodes(client: &Client, node: Option<NodeId>) -> Vec<NodeId> {
    match node {
        Some(node) => vec![node],
        None => client
            .cluster()
            .table
            .members
            .values()
            .filter(|m| m.state != MemberState::Left)
            .map(|m| m.id.clone())
            .collect(),
    }
}

/// The nodes a replay or purge of `ids` (empty: `--all`) asks.
fn dlq_targets(client: &Client, ids: &[u64], node: Option<NodeId>) -> anyhow::Result<Vec<NodeId>> {
    let nodes = dlq_nodes(client, node);
    if !ids.is_empty() && nodes.len() > 1 {
        anyhow::bail!("dead-letter ids are per node: name the node with --node");
    }
    Ok(nodes)
}

/// An entry as JSON, its payload parsed when it is JSON (a truncated one stays a string).
fn dead_letter_json(entry: &DeadLetter) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(entry)?;
    if let Ok(payload) = serde_json::from_str::<serde_json::Value>(&entry.payload) {
        value["payload"] = payload;
    }
    Ok(value)
}

/// Runs a `dlq` command; one JSON object per node asked (with `error` for a node that failed).
async fn dlq(client: &Client, command: DlqCommand) -> anyhow::Result<String> {
    let mut out = Vec::new();
    match command {
        DlqCommand::List { node, after, limit } => {
            for node in dlq_nodes(client, node) {
                out.push(match client.dead_letters(&node, after, limit).await {
                    Ok(page) => {
                        let entries: Vec<_> = page
                            .entries
                            .iter()
                            .map(dead_letter_json)
                            .collect::<anyhow::Result<_>>()?;
                        json!({"node": node, "total_entries": page.total_entries,
                               "total_bytes": page.total_bytes, "next": page.next,
                               "entries": entries})
                    }
                    Err(e) => json!({"node": node, "error": e.to_string()}),
                });
            }
        }
        DlqCommand::Show { id, node } => {
            let asked_one = node.is_some();
            for node in dlq_nodes(client, node) {
                match client.dead_letter(&node, id).await {
                    Ok(Some(entry)) => {
                        out.push(json!({"node": node, "entry": dead_letter_json(&entry)?}));
                    }
                    Ok(None) if asked_one => anyhow::bail!("{node} has no dead letter #{id}"),
                    Ok(None) => {}
                    Err(e) => out.push(json!({"node": node, "error": e.to_string()})),
                }
            }
            if out.is_empty() {
                anyhow::bail!("no node has a dead letter #{id}");
            }
        }
        DlqCommand::Replay { ids, all, node } => {
            let targets = dlq_targets(client, &ids, node)?;
            let ids = (!all).then_some(ids.as_slice());
            for node in targets {
                out.push(match client.replay_dead_letters(&node, ids).await {
                    Ok(outcomes) => json!({"node": node, "replayed": outcomes}),
                    Err(e) => json!({"node": node, "error": e.to_string()}),
                });
            }
        }
        DlqCommand::Purge { ids, all, node } => {
            let targets = dlq_targets(client, &ids, node)?;
            let ids = (!all).then_some(ids.as_slice());
            for node in targets {
                out.push(match client.purge_dead_letters(&node, ids).await {
                    Ok(purged) => {
                        json!({"node": node, "removed": purged.removed, "missing": purged.missing})
                    }
                    Err(e) => json!({"node": node, "error": e.to_string()}),
                });
            }
        }
    }
    pretty(&out)
}

/// A fresh message id for a command-line event.
fn fresh_message_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("storectl-{}-{nanos}", std::process::id())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn json_of(value: &Value) -> serde_json::Value {
    match value {
        Value::Bool(b) => (*b).into(),
        Value::I64(i) => (*i).into(),
        Value::F64(f) => {
            serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
        }
        Value::Str(s) => s.as_str().into(),
    }
}

/// A command-line event as the Segment API would receive it.
fn cli_event(
    kind: &str,
    user: &str,
    name: Option<&str>,
    fields: &[(String, Value)],
    message_id: Option<String>,
) -> anyhow::Result<Event> {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), json_of(v)))
        .collect();
    let mut json = serde_json::json!({
        "type": kind,
        "userId": user,
        "messageId": message_id.unwrap_or_else(fresh_message_id),
    });
    if let Some(name) = name {
        json["event"] = name.into();
    }
    json[if kind == "identify" {
        "traits"
    } else {
        "properties"
    }] = map.into();
    Event::from_segment(&json, None, now_ms(), &featurestore::Limits::default())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Reads a JSON-lines file of events.
fn events_of_file(path: &std::path::Path) -> anyhow::Result<Vec<Event>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    for (no, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let json: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}, line {}: not JSON", path.display(), no + 1))?;
        let event = Event::from_segment(&json, None, now_ms(), &featurestore::Limits::default())
            .map_err(|e| anyhow::anyhow!("{}, line {}: {e}", path.display(), no + 1))?;
        events.push(event);
    }
    Ok(events)
}

/// Outcomes as JSON lines for the terminal.
fn render_outcomes(events: &[Event], outcomes: &[EventOutcome]) -> anyhow::Result<String> {
    let rows: Vec<serde_json::Value> = events
        .iter()
        .zip(outcomes)
        .map(|(e, o)| {
            let (outcome, detail) = match o {
                EventOutcome::Applied { late } if late.is_empty() => {
                    ("applied", serde_json::Value::Null)
                }
                EventOutcome::Applied { late } => ("applied", serde_json::json!({ "late": late })),
                EventOutcome::Duplicate => ("duplicate", serde_json::Value::Null),
                EventOutcome::Refused { code, message } => (
                    "refused",
                    serde_json::json!({ "code": format!("{code:?}"), "message": message }),
                ),
            };
            serde_json::json!({ "message_id": e.message_id, "outcome": outcome, "detail": detail })
        })
        .collect();
    pretty(&rows)
}

/// Splits `name=value` at the first `=`; the name must be non-empty.
fn split_pair(pair: &str) -> Result<(&str, &str), String> {
    match pair.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name, value)),
        _ => Err(format!("expected NAME=VALUE, got {pair:?}")),
    }
}

/// Parses a command-line value: `true`/`false`, an integer, a float, or else a string. Wrap the text in
/// double quotes to force a string (`"42"`). Text that reads as a number but is not a finite one (`NaN`,
/// `inf`, `-Infinity`, `1e999`, which overflows) is an error rather than silently stored as a string;
/// quote it to store the text.
fn parse_value(text: &str) -> Result<Value, String> {
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return Ok(Value::Str(inner.into()));
    }
    match text {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::I64(i));
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Value::F64(f)),
        Ok(_) => Err(format!(
            "{text:?} is not a finite number (NaN, infinities and numbers beyond ±1.8e308 cannot be \
             stored); quote it to store the text: '\"{text}\"'"
        )),
        Err(_) => Ok(Value::Str(text.into())),
    }
}

fn parse_gauge(pair: &str) -> Result<(String, Value), String> {
    let (name, value) = split_pair(pair)?;
    Ok((name.to_owned(), parse_value(value)?))
}

/// `--quorum N`: 1 to 255 (0 would silently mean 1).
fn parse_quorum(text: &str) -> Result<u8, String> {
    match text.parse::<u8>() {
        Ok(0) => Err("the quorum must be at least 1 (1 = the coordinator only)".into()),
        Ok(q) => Ok(q),
        Err(_) => Err(format!("expected a quorum from 1 to 255, got {text:?}")),
    }
}

fn parse_delta(pair: &str) -> Result<(String, i64), String> {
    let (name, delta) = split_pair(pair)?;
    let delta = delta
        .parse()
        .map_err(|_| format!("delta of {name:?} must be a signed integer, got {delta:?}"))?;
    Ok((name.to_owned(), delta))
}

fn parse_flag(pair: &str) -> Result<(String, bool), String> {
    let (name, value) = split_pair(pair)?;
    let value = match value {
        "true" => true,
        "false" => false,
        other => {
            return Err(format!(
                "flag {name:?} must be true or false, got {other:?}"
            ))
        }
    };
    Ok((name.to_owned(), value))
}

fn parse_context(token: &str) -> Result<CausalContext, String> {
    token
        .parse()
        .map_err(|e: featurestore::Error| e.to_string())
}

fn parse_node(id: &str) -> Result<NodeId, String> {
    NodeId::new(id).map_err(|e| e.to_string())
}

/// `client` with `quorum` as its read and write quorum, if given.
fn with_quorum(client: &Client, quorum: Option<u8>) -> Client {
    match quorum {
        Some(q) => client.with_quorums(q, q),
        None => client.clone(),
    }
}

fn pretty<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    serde_json::to_string_pretty(value).context("cannot render the answer as JSON")
}

fn names(features: &Option<Vec<String>>) -> Option<Vec<&str>> {
    features
        .as_ref()
        .map(|names| names.iter().map(String::as_str).collect())
}

/// Runs one command and returns what to print.
async fn execute(client: &Client, command: Command) -> anyhow::Result<String> {
    match command {
        Command::Get {
            key,
            features,
            quorum,
        } => {
            let features = names(&features);
            let profile = with_quorum(client, quorum)
                .get(&key, features.as_deref())
                .await?;
            pretty(&profile)
        }
        Command::GetMany {
            keys,
            features,
            quorum,
        } => {
            let features = names(&features);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let profiles = with_quorum(client, quorum)
                .get_many(&keys, features.as_deref())
                .await?;
            pretty(&profiles)
        }
        Command::Put {
            key,
            gauges,
            ttl_ms,
            timestamp_ms,
            quorum,
        } => {
            let writes = gauges
                .into_iter()
                .map(|(name, value)| GaugeWrite {
                    name,
                    value,
                    ttl_ms,
                })
                .collect();
            let ack = with_quorum(client, quorum)
                .put_with(&key, writes, timestamp_ms)
                .await?;
            pretty(&json!({ "version": ack.version, "superseded": ack.superseded }))
        }
        Command::Incr {
            key,
            deltas,
            quorum,
        } => {
            let pairs: Vec<(&str, i64)> = deltas.iter().map(|(n, d)| (n.as_str(), *d)).collect();
            let values = with_quorum(client, quorum).increment(&key, &pairs).await?;
            let map: serde_json::Map<String, serde_json::Value> = deltas
                .into_iter()
                .zip(values)
                .map(|((name, _), value)| (name, json!(value)))
                .collect();
            pretty(&map)
        }
        Command::Flag {
            key,
            flag: (name, value),
            context,
            ttl_ms,
            quorum,
        } => {
            let context = context.unwrap_or_default();
            let view = with_quorum(client, quorum)
                .set_flag(&key, &name, value, &context, ttl_ms)
                .await?;
            pretty(&view)
        }
        Command::Erase { key, quorum } => {
            let watermark = with_quorum(client, quorum).erase(&key).await?;
            pretty(&json!({ "watermark": watermark }))
        }
        Command::Status { node: None } => pretty(&client.status().await?),
        Command::Status { node: Some(node) } => pretty(&client.status_of(&node).await?),
        Command::Cluster => pretty(&client.refresh_cluster().await?),
        Command::Local { key, node } => pretty(&client.local_state(&node, &key).await?),
        Command::Digests { node, peer } => pretty(&client.digests(&node, &peer).await?),
        Command::Track {
            user,
            event,
            properties,
            message_id,
        } => {
            let events = [cli_event(
                "track",
                &user,
                Some(&event),
                &properties,
                message_id,
            )?];
            render_outcomes(&events, &client.ingest(&events).await?)
        }
        Command::Identify {
            user,
            traits,
            message_id,
        } => {
            let events = [cli_event("identify", &user, None, &traits, message_id)?];
            render_outcomes(&events, &client.ingest(&events).await?)
        }
        Command::Ingest { file } => {
            let events = events_of_file(&file)?;
            render_outcomes(&events, &client.ingest(&events).await?)
        }
        Command::Leave { node } => {
            client.leave(&node).await?;
            pretty(&json!({ "node": node, "leaving": true }))
        }
        Command::Dlq { command } => dlq(client, command).await,
        Command::Segments { command } => segments(client, command).await,
    }
}

/// The members of the cluster, not left.
fn live_members(client: &Client) -> Vec<NodeId> {
    client
        .cluster()
        .table
        .members
        .values()
        .filter(|m| m.state != store_client::MemberState::Left)
        .map(|m| m.id.clone())
        .collect()
}

/// `storectl segments list|add|remove|watch|members|why`.
async fn segments(client: &Client, command: SegmentsCommand) -> anyhow::Result<String> {
    use featurestore::segment::SegmentDef;
    match command {
        SegmentsCommand::List => {
            let mut views = Vec::new();
            for node in live_members(client) {
                match client.segments_of(&node).await {
                    Ok(v) => views.push(serde_json::to_value(v)?),
                    Err(e) => views.push(json!({ "node": node, "error": e.to_string() })),
                }
            }
            pretty(&json!(views))
        }
        SegmentsCommand::Add { name, rule } => {
            define(client, vec![SegmentDef { name, rule }], Vec::new()).await
        }
        SegmentsCommand::Remove { name } => define(client, Vec::new(), vec![name]).await,
        SegmentsCommand::Watch {
            segment,
            format,
            limit,
            new,
        } => {
            let filter = (!segment.is_empty()).then_some(segment);
            let mut from = store_client::Cursor::new();
            if new {
                for node in live_members(client) {
                    let page = client.segment_changes(&node, u64::MAX, 1, 0, None).await?;
                    from.insert(node, page.next);
                }
            }
            let mut sub = client.subscribe_segments(filter, from);
            let mut seen = 0u64;
            while let Some(change) = sub.recv().await {
                let line = match format.as_str() {
                    "segment" => featurestore::wire::segment::audience_event(&change),
                    _ => serde_json::to_value(&change)?,
                };
                // A closed pipe (`watch | head`) ends the watch quietly instead of panicking.
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
                seen += 1;
                if limit.is_some_and(|l| seen >= l) {
                    break;
                }
            }
            Ok(String::new())
        }
        SegmentsCommand::Members {
            segment,
            after,
            limit,
        } => {
            let mut all = std::collections::BTreeSet::new();
            for node in live_members(client) {
                let page = client
                    .segment_members(&node, &segment, after.clone(), limit)
                    .await?;
                all.extend(page.members);
            }
            let members: Vec<String> = all.into_iter().take(limit as usize).collect();
            let next = (members.len() == limit as usize)
                .then(|| members.last().cloned())
                .flatten();
            pretty(&json!({ "segment": segment, "members": members, "next": next }))
        }
        SegmentsCommand::Why { user, segment } => {
            let owner = client.replicas(&user).into_iter().next();
            let mut reports = Vec::new();
            for node in live_members(client) {
                if let Ok(r) = client.segment_why(&node, &user, &segment).await {
                    reports.push(r);
                }
            }
            let last = reports
                .iter()
                .filter_map(|r| r.last.clone())
                .max_by_key(|c| (c.change.at_ms, c.seq));
            let Some(mut report) = reports
                .iter()
                .find(|r| Some(&r.node) == owner.as_ref())
                .or(reports.first())
                .cloned()
            else {
                anyhow::bail!("no node answered for {user} in {segment}");
            };
            report.last = last;
            pretty(&serde_json::to_value(report)?)
        }
        SegmentsCommand::Check { file } => check_segments(&file),
        SegmentsCommand::Of { user } => {
            let view = client.get(&user, None).await?;
            let memberships: serde_json::Map<String, serde_json::Value> = view
                .iter()
                .flat_map(|v| v.features.iter())
                .filter_map(|(name, feature)| {
                    let segment =
                        name.strip_prefix(featurestore::segment::membership::MEMBERSHIP_PREFIX)?;
                    match feature {
                        featurestore::FeatureView::Flag(flag) => Some((
                            segment.to_owned(),
                            json!(flag.values.iter().any(|v| v.value)),
                        )),
                        _ => None,
                    }
                })
                .collect();
            pretty(&json!({ "user": user, "segments": memberships }))
        }
    }
}

/// Changes the runtime catalog through the first member that answers.
async fn define(
    client: &Client,
    add: Vec<featurestore::segment::SegmentDef>,
    remove: Vec<String>,
) -> anyhow::Result<String> {
    let mut last = None;
    for node in live_members(client) {
        match client
            .define_segments(&node, add.clone(), remove.clone())
            .await
        {
            Ok(view) => return pretty(&serde_json::to_value(view)?),
            Err(e @ store_client::Error::Server { .. }) => return Err(e.into()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no member to ask"), Into::into))
}

/// `storectl segments check FILE`: compiles the file as a node would (default limits).
fn check_segments(file: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let segments =
        featurestore::segment::Segments::from_toml(&text, &featurestore::Limits::default())
            .with_context(|| file.display().to_string())?;
    let list: Vec<serde_json::Value> = segments
        .iter()
        .map(|s| {
            json!({
                "name": s.name(),
                "reads": s.rule.reads(),
                "reads_now": s.rule.reads_now(),
            })
        })
        .collect();
    pretty(&json!({ "segments": list }))
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    // Checking a definitions file needs no cluster.
    if let Command::Segments {
        command: SegmentsCommand::Check { file },
    } = &cli.command
    {
        return check_segments(file);
    }
    let config = ClientConfig::load(&cli.config)?;
    let client = Client::connect(config).await?;
    let result = execute(&client, cli.command).await;
    client.close().await;
    result
}

/// The error and its causes, joined with `: `, skipping causes whose text is already shown (library errors
/// often repeat their source in their own message).
fn report(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr().lock(),
                "error: cannot start the async runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(output) => {
            // `storectl ... | head` must not panic on the closed pipe.
            let _ = writeln!(std::io::stdout().lock(), "{output}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {

    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cli_parsing_picks_the_narrowest_type() {
        assert_eq!(parse_value("42.5"), Ok(Value::F64(42.5)));
        assert_eq!(parse_value("42"), Ok(Value::I64(42)));
        assert_eq!(parse_value("true"), Ok(Value::Bool(true)));
        assert_eq!(parse_value("\"42\""), Ok(Value::Str("42".into())));
        assert_eq!(parse_value("gold"), Ok(Value::Str("gold".into())));
        assert_eq!(parse_value("1e-999"), Ok(Value::F64(0.0)));
    }

    #[test]
    fn non_finite_numbers_are_errors_unless_quoted() {
        for text in ["NaN", "nan", "inf", "-inf", "+Infinity", "1e999", "-1e999"] {
            let e = parse_value(text).unwrap_err();
            assert!(e.contains("not a finite number"), "{text}: {e}");
            assert!(parse_gauge(&format!("x={text}")).is_err(), "{text}");
            assert_eq!(
                parse_value(&format!("\"{text}\"")),
                Ok(Value::Str(text.into()))
            );
        }
        assert!(parse(&["put", "u1", "x=NaN"]).is_err());
        assert!(parse(&["track", "u1", "e", "x=inf"]).is_err());
    }

    #[test]
    fn a_quorum_of_zero_is_refused() {
        for cmd in [
            &["get", "u1"][..],
            &["get-many", "u1"],
            &["put", "u1", "a=1"],
            &["incr", "u1", "a=1"],
            &["flag", "u1", "f=true"],
            &["erase", "u1"],
        ] {
            let mut args = cmd.to_vec();
            args.extend(["--quorum", "0"]);
            let e = parse(&args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} accepted"));
            assert!(e.to_string().contains("at least 1"), "{args:?}: {e}");
            args.pop();
            args.push("1");
            assert!(parse(&args).is_ok(), "{args:?}");
        }
    }
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec!["storectl", "--config", "client.toml"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn pairs_are_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_gauge("cart_value=42.5").unwrap(),
            ("cart_value".to_owned(), Value::F64(42.5))
        );
        assert_eq!(
            parse_gauge("url=a=b").unwrap(),
            ("url".to_owned(), Value::Str("a=b".into()))
        );
        assert_eq!(
            parse_gauge("plan=\"42\"").unwrap(),
            ("plan".to_owned(), Value::Str("42".into()))
        );
        assert_eq!(
            parse_gauge("empty=").unwrap(),
            ("empty".to_owned(), Value::Str(Default::default()))
        );
        assert_eq!(
            parse_delta("credits=-5").unwrap(),
            ("credits".to_owned(), -5)
        );
        assert_eq!(parse_flag("vip=false").unwrap(), ("vip".to_owned(), false));
    }

    #[test]
    fn bad_pairs_are_errors() {
        assert!(parse_gauge("no_equals").is_err());
        assert!(parse_gauge("=5").is_err());
        assert!(parse_delta("n=1.5").is_err());
        assert!(parse_delta("n=abc").is_err());
        assert!(parse_flag("vip=yes").is_err());
        assert!(parse_context("n1:x").is_err());
        assert_eq!(parse_context("n2:1,n1:3").unwrap().to_string(), "n1:3,n2:1");
    }

    #[test]
    fn put_parses_pairs_and_options() {
        let cli = parse(&[
            "put",
            "user-42",
            "cart_value=42.5",
            "vip=true",
            "--ttl-ms",
            "1000",
            "--timestamp-ms",
            "1700000000000",
        ])
        .unwrap();
        assert_eq!(cli.config, PathBuf::from("client.toml"));
        match cli.command {
            Command::Put {
                key,
                gauges,
                ttl_ms,
                timestamp_ms,
                quorum,
            } => {
                assert_eq!(quorum, None);
                assert_eq!(key, "user-42");
                assert_eq!(
                    gauges,
                    vec![
                        ("cart_value".to_owned(), Value::F64(42.5)),
                        ("vip".to_owned(), Value::Bool(true)),
                    ]
                );
                assert_eq!(ttl_ms, Some(1000));
                assert_eq!(timestamp_ms, Some(1_700_000_000_000));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn incr_accepts_negative_deltas() {
        let cli = parse(&["incr", "u1", "a=1", "b=-2", "--quorum", "2"]).unwrap();
        match cli.command {
            Command::Incr {
                key,
                deltas,
                quorum,
            } => {
                assert_eq!(quorum, Some(2));
                assert_eq!(key, "u1");
                assert_eq!(deltas, vec![("a".to_owned(), 1), ("b".to_owned(), -2)]);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn get_and_flag_options() {
        match parse(&["get", "u1", "--features", "a,b", "--quorum", "3"])
            .unwrap()
            .command
        {
            Command::Get {
                key,
                features,
                quorum,
            } => {
                assert_eq!(quorum, Some(3));
                assert_eq!(key, "u1");
                assert_eq!(features, Some(vec!["a".to_owned(), "b".to_owned()]));
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["get-many", "u1", "u2"]).unwrap().command {
            Command::GetMany {
                keys,
                features,
                quorum: None,
            } => {
                assert_eq!(keys, vec!["u1".to_owned(), "u2".to_owned()]);
                assert_eq!(features, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        match parse(&[
            "flag",
            "u1",
            "vip=true",
            "--context",
            "n1:3,n2:1",
            "--ttl-ms",
            "5",
        ])
        .unwrap()
        .command
        {
            Command::Flag {
                key,
                flag,
                context,
                ttl_ms,
                quorum: None,
            } => {
                assert_eq!(key, "u1");
                assert_eq!(flag, ("vip".to_owned(), true));
                assert_eq!(context.unwrap().to_string(), "n1:3,n2:1");
                assert_eq!(ttl_ms, Some(5));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(matches!(
            parse(&["status"]).unwrap().command,
            Command::Status { node: None }
        ));
        assert!(matches!(
            parse(&["erase", "u1", "--quorum", "2"]).unwrap().command,
            Command::Erase {
                quorum: Some(2),
                ..
            }
        ));
    }

    #[test]
    fn dlq_commands() {
        let n = |s: &str| NodeId::new(s).unwrap();
        match parse(&["dlq", "list", "--node", "n2", "--limit", "5"])
            .unwrap()
            .command
        {
            Command::Dlq {
                command: DlqCommand::List { node, after, limit },
            } => assert_eq!((node, after, limit), (Some(n("n2")), None, 5)),
            other => panic!("{other:?}"),
        }
        match parse(&["dlq", "replay", "3", "4", "--node", "n1"])
            .unwrap()
            .command
        {
            Command::Dlq {
                command: DlqCommand::Replay { ids, all, node },
            } => assert_eq!((ids, all, node), (vec![3, 4], false, Some(n("n1")))),
            other => panic!("{other:?}"),
        }
        match parse(&["dlq", "purge", "--all"]).unwrap().command {
            Command::Dlq {
                command: DlqCommand::Purge { ids, all, node },
            } => assert_eq!((ids, all, node), (Vec::<u64>::new(), true, None)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["dlq", "purge"]).is_err(), "ids or --all");
        assert!(parse(&["dlq", "replay", "1", "--all"]).is_err());
        assert!(parse(&["dlq", "show"]).is_err());
    }

    #[test]
    fn cluster_and_admin_commands() {
        let n = |s: &str| NodeId::new(s).unwrap();
        match parse(&["status", "--node", "n2"]).unwrap().command {
            Command::Status { node } => assert_eq!(node, Some(n("n2"))),
            other => panic!("parsed as {other:?}"),
        }
        assert!(matches!(
            parse(&["cluster"]).unwrap().command,
            Command::Cluster
        ));
        match parse(&["local", "u1", "--node", "n1"]).unwrap().command {
            Command::Local { key, node } => assert_eq!((key.as_str(), node), ("u1", n("n1"))),
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["digests", "--node", "n1", "--peer", "n3"])
            .unwrap()
            .command
        {
            Command::Digests { node, peer } => assert_eq!((node, peer), (n("n1"), n("n3"))),
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["leave", "--node", "n3"]).unwrap().command {
            Command::Leave { node } => assert_eq!(node, n("n3")),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn error_reports_skip_repeated_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let tls = store_client::tls::TlsError::Read {
            path: "ca.pem".into(),
            source: io,
        };
        let error = anyhow::Error::from(store_client::Error::from(tls)).context("connecting");
        assert_eq!(report(&error), "connecting: TLS: cannot read ca.pem: gone");
    }

    #[test]
    fn usage_errors() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["put", "u1", "novalue"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["incr", "u1", "a=x"]), ErrorKind::ValueValidation);
        assert_eq!(
            kind(&["flag", "u1", "vip=maybe"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["flag", "u1", "vip=true", "--context", "bogus"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind(&["put", "u1"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["get-many"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["frobnicate"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["local", "u1"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["digests", "--node", "n1"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(kind(&["leave"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["status", "--node", "Not Valid"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["get", "u1", "--quorum", "300"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(parse(&["put", "u1", "novalue"]).unwrap_err().exit_code(), 2);
    }
}
