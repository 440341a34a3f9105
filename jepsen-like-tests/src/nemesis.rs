//! Applying and healing the faults of a [`Step`](crate::schedule::Step).
//!
//! - `partition`: blackhole routes between groups of running nodes (random halves, one node isolated,
//!   a majority ring where each node reaches only its two neighbours, a bridge where two halves share
//!   one node, or one-way: some nodes' packets to the others vanish while the reverse direction works),
//!   or, when the kernel has it, `tc netem` delay (50–200 ms ± 20 ms) with 5–30 % loss on one or two
//!   nodes (without netem: 5–30 % random loss with an nftables rule; without either, this variant is
//!   left out). Healed by removing exactly the routes and qdiscs added.
//! - `kill`: `kill -9` of one or two nodes; healed by restarting them on the same data dir, recording
//!   whether the store reopened, then asking the worker for a durability probe of each.
//! - `pause`: SIGSTOP of one node, SIGCONT at the heal.
//! - `clock`: a node's clock offset jumped by ±0.5–10 s, or strobed between 0 and that offset every
//!   250 ms; set back to 0 at the heal (through the node's control file).
//! - `membership`: the first time a spare node is started and joins; afterwards one of the original
//!   members is asked to leave (through the worker, which has network access), at most once.
//! - `disk`: `kill -9`, the data dir removed, and at the heal the node restarts empty with
//!   `bootstrap = false`, rejoining under the same name.
//!
//! Every fault is one [`FaultWindow`] in `faults.jsonl`, from its start to the end of its heal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::history::{FaultWindow, Restart};
use crate::netns::{Loss, Net};
use crate::rng::Rng;
use crate::schedule::{Nemesis, Step};

/// Sends a command line to the worker and returns its one-line answer.
pub type WorkerCommand<'a> = dyn FnMut(&str) -> anyhow::Result<String> + 'a;

/// A fault that is in force.
#[derive(Debug)]
pub enum Active {
    /// Routes or qdiscs to remove.
    Net,
    /// Nodes to restart.
    Killed(Vec<usize>),
    /// A node to resume.
    Paused(usize),
    /// A node whose clock to reset (and the strobe thread to stop).
    Clock(usize, Option<(Arc<AtomicBool>, JoinHandle<()>)>),
    /// A node to restart empty.
    Wiped(usize),
    /// Nothing to undo (a join or a leave).
    Nothing,
}

/// The result of applying a step.
#[derive(Debug)]
pub struct Applied {
    /// What to undo at the heal.
    pub active: Active,
    /// The window, `end_ms` filled in at the heal.
    pub window: FaultWindow,
}

fn window(nemesis: Nemesis, detail: String, nodes: Vec<String>) -> FaultWindow {
    FaultWindow {
        nemesis: nemesis.name().to_owned(),
        detail,
        nodes,
        start_ms: crate::now_ms(),
        end_ms: 0,
        offset_ms: None,
    }
}

fn ids(cluster: &Cluster, idx: &[usize]) -> Vec<String> {
    idx.iter().map(|&i| cluster.nodes[i].id.clone()).collect()
}

fn cut(net: &mut Net, a: &[String], b: &[String], both_ways: bool) -> anyhow::Result<()> {
    for x in a {
        for y in b {
            net.blackhole(x, y)?;
            if both_ways {
                net.blackhole(y, x)?;
            }
        }
    }
    Ok(())
}

/// Applies `step` (targets drawn from its seed among the nodes up now). `None` if nothing applies
/// (e.g. membership with no spare left, or too few nodes up).
pub fn apply(
    step: &Step,
    net: &mut Net,
    cluster: &mut Cluster,
    worker: &mut WorkerCommand<'_>,
    loss: Loss,
) -> anyhow::Result<Option<Applied>> {
    let mut rng = Rng::new(step.seed);
    let mut up = cluster.up();
    rng.shuffle(&mut up);
    if up.len() < 2 {
        return Ok(None);
    }
    let n = up.len();
    let applied = match step.nemesis {
        Nemesis::Partition => {
            let names = ids(cluster, &up);
            let variants = if loss == Loss::Unavailable { 5 } else { 6 };
            let (detail, nodes) = match rng.index(variants) {
                0 => {
                    let (a, b) = names.split_at(n / 2);
                    cut(net, a, b, true)?;
                    (format!("halves {a:?} | {b:?}"), names.clone())
                }
                1 => {
                    let (a, b) = names.split_at(1);
                    cut(net, a, b, true)?;
                    (format!("isolate {}", a[0]), a.to_vec())
                }
                2 if n >= 4 => {
                    for i in 0..n {
                        for j in 0..n {
                            let d = (i + n - j) % n;
                            if d > 1 && d < n - 1 {
                                net.blackhole(&names[i], &names[j])?;
                            }
                        }
                    }
                    (format!("majority ring {names:?}"), names.clone())
                }
                3 if n >= 3 => {
                    let mid = n / 2;
                    let (a, b) = (&names[..mid], &names[mid + 1..]);
                    cut(net, a, b, true)?;
                    (
                        format!("bridge {a:?} <{}> {b:?}", names[mid]),
                        names.clone(),
                    )
                }
                4 => {
                    let k = 1 + rng.index(n / 2);
                    let (a, b) = names.split_at(k);
                    cut(net, a, b, false)?;
                    (format!("one-way {a:?} -/-> {b:?}"), a.to_vec())
                }
                5 if loss == Loss::Nft => {
                    let k = 1 + rng.index(2);
                    let pct = rng.range(5, 30);
                    for name in &names[..k] {
                        net.nft_loss(name, pct)?;
                    }
                    (
                        format!("nftables loss {pct}% from {:?}", &names[..k]),
                        names[..k].to_vec(),
                    )
                }
                5 => {
                    let k = 1 + rng.index(2);
                    let delay = rng.range(50, 200);
                    let loss = rng.range(5, 30);
                    for name in &names[..k] {
                        net.netem(name, delay, 20, loss)?;
                    }
                    (
                        format!(
                            "netem delay {delay}ms±20ms loss {loss}% on {:?}",
                            &names[..k]
                        ),
                        names[..k].to_vec(),
                    )
                }
                _ => {
                    let (a, b) = names.split_at(n / 2);
                    cut(net, a, b, true)?;
                    (format!("halves {a:?} | {b:?}"), names.clone())
                }
            };
            Applied {
                active: Active::Net,
                window: window(step.nemesis, detail, nodes),
            }
        }
        Nemesis::Kill => {
            // Keep a majority of the members up.
            let k = if n >= 5 && rng.chance(0.3) { 2 } else { 1 };
            let victims: Vec<usize> = up[..k].to_vec();
            let names = ids(cluster, &victims);
            let w = window(step.nemesis, format!("kill -9 {names:?}"), names);
            for &i in &victims {
                cluster.kill(i)?;
            }
            Applied {
                active: Active::Killed(victims),
                window: w,
            }
        }
        Nemesis::Pause => {
            let i = up[0];
            let w = window(
                step.nemesis,
                format!("SIGSTOP {}", cluster.nodes[i].id),
                ids(cluster, &[i]),
            );
            cluster.pause(i, true)?;
            Applied {
                active: Active::Paused(i),
                window: w,
            }
        }
        Nemesis::Clock => {
            let i = up[0];
            let magnitude = rng.range(500, 10_000) as i64;
            let offset = if rng.chance(0.5) {
                magnitude
            } else {
                -magnitude
            };
            let strobe = rng.chance(0.4);
            let mut w = window(
                step.nemesis,
                format!(
                    "{} {} by {offset} ms",
                    if strobe { "strobe" } else { "jump" },
                    cluster.nodes[i].id
                ),
                ids(cluster, &[i]),
            );
            w.offset_ms = Some(offset);
            cluster.set_clock(i, offset)?;
            let strober = if strobe {
                let stop = Arc::new(AtomicBool::new(false));
                let (flag, path) = (stop.clone(), cluster.nodes[i].clock_file());
                let handle = std::thread::spawn(move || {
                    let mut on = true;
                    while !flag.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(250));
                        on = !on;
                        let tmp = path.with_extension("tmp");
                        let value = if on { offset } else { 0 };
                        if std::fs::write(&tmp, format!("{value}\n")).is_ok() {
                            let _ = std::fs::rename(&tmp, &path);
                        }
                    }
                });
                Some((stop, handle))
            } else {
                None
            };
            Applied {
                active: Active::Clock(i, strober),
                window: w,
            }
        }
        Nemesis::Membership => {
            let spare = (cluster.initial..cluster.nodes.len()).find(|&i| !cluster.nodes[i].member);
            if let Some(i) = spare {
                let w = window(
                    step.nemesis,
                    format!("join {}", cluster.nodes[i].id),
                    ids(cluster, &[i]),
                );
                cluster.start(i)?;
                Applied {
                    active: Active::Nothing,
                    window: w,
                }
            } else if cluster.nodes.iter().all(|n| !n.left) && n > 3 {
                let i = *up.iter().find(|&&i| i < cluster.initial).unwrap_or(&up[0]);
                let id = cluster.nodes[i].id.clone();
                let w = window(step.nemesis, format!("leave {id}"), vec![id.clone()]);
                let answer = worker(&format!("leave {id}"))?;
                if !answer.ends_with(" ok") {
                    anyhow::bail!("leave {id}: {answer}");
                }
                cluster.nodes[i].left = true;
                Applied {
                    active: Active::Nothing,
                    window: w,
                }
            } else {
                return Ok(None);
            }
        }
        Nemesis::Disk => {
            let i = up[0];
            let w = window(
                step.nemesis,
                format!("wipe {}", cluster.nodes[i].id),
                ids(cluster, &[i]),
            );
            cluster.kill(i)?;
            cluster.wipe(i)?;
            Applied {
                active: Active::Wiped(i),
                window: w,
            }
        }
    };
    Ok(Some(applied))
}

/// Undoes `active`: returns the restarts made (killed and wiped nodes) and fills the window's end.
pub fn heal(
    applied: Applied,
    net: &mut Net,
    cluster: &mut Cluster,
    worker: &mut WorkerCommand<'_>,
) -> anyhow::Result<(FaultWindow, Vec<Restart>)> {
    let Applied { active, mut window } = applied;
    let mut restarts = Vec::new();
    match active {
        Active::Net => net.heal()?,
        Active::Killed(nodes) => {
            let kill_ms = window.start_ms;
            for i in nodes {
                let restart = restart(cluster, i, false);
                let reopened = restart.reopened;
                restarts.push(restart);
                if reopened {
                    let since = cluster.nodes[i].wiped_at.unwrap_or(0);
                    worker(&format!("probe {} {kill_ms} {since}", cluster.nodes[i].id))?;
                }
            }
        }
        Active::Paused(i) => cluster.pause(i, false)?,
        Active::Clock(i, strober) => {
            if let Some((stop, handle)) = strober {
                stop.store(true, Ordering::SeqCst);
                let _ = handle.join();
            }
            cluster.set_clock(i, 0)?;
        }
        Active::Wiped(i) => {
            cluster.write_config(i, false)?;
            restarts.push(restart(cluster, i, true));
        }
        Active::Nothing => {}
    }
    window.end_ms = crate::now_ms();
    Ok((window, restarts))
}

fn restart(cluster: &mut Cluster, i: usize, wiped: bool) -> Restart {
    let result = cluster.start(i);
    Restart {
        node: cluster.nodes[i].id.clone(),
        wiped,
        reopened: result.is_ok(),
        time_ms: crate::now_ms(),
        error: result.err().map(|e| format!("{e:#}")),
    }
}
