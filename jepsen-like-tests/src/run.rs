//! One schedule, end to end: namespaces, certificates and configs, the nodes, the worker in the client
//! namespace, the nemesis schedule, the final heal, quiescence, the checkers and the outputs. Whatever
//! happens (an error, Ctrl-C: [`request_stop`]), every node is killed and every namespace removed
//! before it returns.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::checkers::{self, Input};
use crate::cluster::Cluster;
use crate::history::{self, FaultWindow, Restart};
use crate::nemesis;
use crate::netns::Net;
use crate::report::{self, Verdict};
use crate::schedule::{self, Nemesis};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the running schedule to stop (Ctrl-C): it heals nothing, tears everything down and fails.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was requested.
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// What one schedule runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes that bootstrap the cluster.
    pub nodes: usize,
    /// Workload duration.
    pub time: Duration,
    /// Enabled nemeses.
    pub nemeses: Vec<Nemesis>,
    /// The schedule's seed.
    pub seed: u64,
    /// Its results directory.
    pub dir: PathBuf,
    /// The `store-node` binary.
    pub store_node: PathBuf,
    /// Long-lived client tasks.
    pub tasks: u32,
    /// The schedule's index in this run (part of the namespace names).
    pub index: u32,
    /// The command that reruns it.
    pub reproduce: String,
    /// How packet loss can be injected here ([`crate::netns::loss_backend`]).
    pub loss: crate::netns::Loss,
}

/// The worker process and its answers.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn start(net: &Net, dir: &Path, seed: u64, tasks: u32) -> anyhow::Result<Worker> {
        let ns = &net.member("cl")?.ns;
        let log = std::fs::File::create(dir.join("worker.log"))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(std::env::current_exe()?)
            .arg("worker")
            .arg("--dir")
            .arg(dir)
            .arg("--client-config")
            .arg(dir.join("client.toml"))
            .arg("--seed")
            .arg(seed.to_string())
            .arg("--tasks")
            .arg(tasks.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting the worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Worker {
            child,
            stdin,
            lines,
        };
        let first = w.answer(Duration::from_secs(60))?;
        if first != "ready" {
            bail!("worker said {first:?} instead of ready (see worker.log)");
        }
        Ok(w)
    }

    fn answer(&mut self, timeout: Duration) -> anyhow::Result<String> {
        self.lines.recv_timeout(timeout).map_err(|_| {
            anyhow::anyhow!("the worker did not answer within {timeout:?} (see worker.log)")
        })
    }

    fn command(&mut self, line: &str, timeout: Duration) -> anyhow::Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.answer(timeout)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sleeps until `deadline`, failing if a stop is requested.
fn sleep_until(deadline: Instant) -> anyhow::Result<()> {
    loop {
        if stopping() {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// Runs one schedule and writes its outputs; the verdict says whether every checker passed.
pub fn run(opts: &Options) -> anyhow::Result<Verdict> {
    std::fs::create_dir_all(&opts.dir)?;
    let time_ms = u64::try_from(opts.time.as_millis()).unwrap_or(u64::MAX);
    let steps = schedule::plan(opts.seed, time_ms, &opts.nemeses);
    std::fs::write(
        opts.dir.join("schedule.json"),
        serde_json::to_string_pretty(&steps)?,
    )?;
    let spare = usize::from(opts.nemeses.contains(&Nemesis::Membership));
    let mut names: Vec<String> = (1..=opts.nodes + spare).map(|i| format!("n{i}")).collect();
    names.push("cl".to_owned());
    let mut net = Net::create(opts.index, &names)?;
    let mut cluster = Cluster::prepare(&opts.dir, &opts.store_node, &net, opts.nodes, spare)?;
    let result = drive(opts, &steps, &mut net, &mut cluster, time_ms);
    let rss: BTreeMap<String, u64> = (0..cluster.nodes.len())
        .filter_map(|i| Some((cluster.nodes[i].id.clone(), cluster.rss_kib(i)?)))
        .collect();
    cluster.stop_all();
    net.teardown();
    let start_ms = match result {
        Ok(start_ms) => start_ms,
        Err(e) => {
            let verdict = Verdict {
                seed: opts.seed,
                valid: false,
                nodes: opts.nodes,
                time_ms,
                nemeses: opts.nemeses.iter().map(|n| n.name().to_owned()).collect(),
                ops: 0,
                ok: 0,
                faults: BTreeMap::new(),
                checkers: Vec::new(),
                reproduce: opts.reproduce.clone(),
                error: Some(format!("{e:#}")),
            };
            verdict.write(&opts.dir)?;
            return Ok(verdict);
        }
    };
    let ops = history::pair(&history::read_history(&opts.dir.join("history.jsonl"))?);
    let faults: Vec<FaultWindow> = history::read_jsonl(&opts.dir.join("faults.jsonl"))?;
    let restarts: Vec<Restart> = history::read_jsonl(&opts.dir.join("restarts.jsonl"))?;
    let fin: history::FinalState =
        serde_json::from_str(&std::fs::read_to_string(opts.dir.join("final.json"))?)?;
    let logs = cluster
        .nodes
        .iter()
        .filter_map(|n| Some((n.id.clone(), std::fs::read_to_string(n.log()).ok()?)))
        .collect();
    let input = Input {
        ops,
        faults,
        restarts,
        fin,
        logs,
        rss_kib: rss,
        start_ms,
    };
    let reports = checkers::check_all(&input);
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for f in &input.faults {
        *by_kind.entry(f.nemesis.clone()).or_default() += 1;
    }
    let verdict = Verdict {
        seed: opts.seed,
        valid: reports.iter().all(|r| r.valid),
        nodes: opts.nodes,
        time_ms,
        nemeses: opts.nemeses.iter().map(|n| n.name().to_owned()).collect(),
        ops: input.ops.len() as u64,
        ok: input.ops.iter().filter(|o| o.is_ok()).count() as u64,
        faults: by_kind,
        checkers: reports,
        reproduce: opts.reproduce.clone(),
        error: None,
    };
    verdict.write(&opts.dir)?;
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();
    let end = input.fin.heal_ms + 1_000;
    std::fs::write(
        opts.dir.join("timeline.svg"),
        report::svg(&input.ops, &input.faults, start_ms, end, &ids),
    )?;
    Ok(verdict)
}

/// Starts the nodes and the worker, plays the schedule, heals and waits for `final.json`. Returns the
/// workload's start time.
fn drive(
    opts: &Options,
    steps: &[schedule::Step],
    net: &mut Net,
    cluster: &mut Cluster,
    time_ms: u64,
) -> anyhow::Result<u64> {
    for i in 0..cluster.initial {
        cluster.start(i)?;
    }
    let mut worker = Worker::start(net, &opts.dir, opts.seed, opts.tasks)?;
    let loss = opts.loss;
    let start = Instant::now();
    let start_ms = crate::now_ms();
    let faults_path = opts.dir.join("faults.jsonl");
    let restarts_path = opts.dir.join("restarts.jsonl");
    for step in steps {
        sleep_until(start + Duration::from_millis(step.at_ms))?;
        let mut command = |line: &str| worker.command(line, Duration::from_secs(60));
        let applied = nemesis::apply(step, net, cluster, &mut command, loss)
            .with_context(|| format!("applying {step:?}"))?;
        let Some(applied) = applied else { continue };
        let held = sleep_until(Instant::now() + Duration::from_millis(step.duration_ms));
        let mut command = |line: &str| worker.command(line, Duration::from_secs(60));
        let (window, restarts) = nemesis::heal(applied, net, cluster, &mut command)?;
        history::append_json(&faults_path, &window)?;
        for r in &restarts {
            history::append_json(&restarts_path, r)?;
        }
        held?;
    }
    sleep_until(start + Duration::from_millis(time_ms))?;
    // Final heal: nothing should be left, but make sure.
    net.heal()?;
    for i in 0..cluster.nodes.len() {
        if cluster.nodes[i].paused {
            cluster.pause(i, false)?;
        }
        cluster.set_clock(i, 0)?;
    }
    let heal_ms = crate::now_ms();
    let answer = worker.command(&format!("heal {heal_ms}"), Duration::from_secs(240))?;
    if answer != "final" {
        bail!("worker answered {answer:?} to heal (see worker.log)");
    }
    let _ = worker.child.wait();
    Ok(start_ms)
}
