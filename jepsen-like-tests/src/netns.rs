//! Network namespaces with iproute2 only: one namespace per node and one for the clients, each with a
//! veth pair whose other end is enslaved to a bridge that lives in a namespace of its own. Nothing is
//! created in the host's namespace (the veth pairs are created inside the bridge namespace with their
//! peer placed straight into the member's namespace).
//!
//! Names are `fsj-<pid>-<member>` (`fsj-4242-n1`, `fsj-4242-cl`, `fsj-4242-br`): the pid is the
//! harness's own, so [`cleanup_stale`] can find namespaces of an earlier run whose harness died (its pid
//! is gone) and remove them, with the processes still inside them. [`Net`] removes its own namespaces
//! when dropped (also on a panic) and [`Net::teardown`] does it explicitly (on exit and on Ctrl-C).
//!
//! Faults: blackhole routes ([`Net::blackhole`]) in the sending member's namespace make its packets to a
//! peer vanish (both directions are cut by one route on each side; one-way partitions use one side),
//! and `tc netem` ([`Net::netem`]) adds delay and loss on a member's interface, or, where the kernel has
//! no netem qdisc, an nftables rule drops a share of its packets at random ([`Net::nft_loss`]).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The prefix of every namespace the harness creates.
pub const PREFIX: &str = "fsj-";

/// The members' subnet (private to the namespaces: it never appears in the host's).
pub const SUBNET: [u8; 3] = [10, 99, 0];

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` can be run (found on `PATH`).
pub fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-V")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Checks that the harness can create namespaces: root, `ip` on the path, and a namespace that can be
/// created and removed. The error names what is missing.
pub fn preflight() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default();
    if uid != "0" {
        bail!(
            "the harness needs root (effective uid {uid}): it creates network namespaces, veth pairs, \
             routes and qdiscs. Run it with sudo, or as root in a container with CAP_NET_ADMIN and CAP_SYS_ADMIN. \
             (Rootless runs through user namespaces are not supported.)"
        );
    }
    if !have("ip") {
        bail!("`ip` (iproute2) is not on PATH: install it (apt-get install iproute2)");
    }
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    ip(&["netns", "add", &probe]).context(
        "cannot create a network namespace (`ip netns add`): the kernel needs CONFIG_NET_NS and the \
         process CAP_SYS_ADMIN; /run/netns must be writable",
    )?;
    let veth = ip(&[
        "-n",
        &probe,
        "link",
        "add",
        "fsjprobe0",
        "type",
        "veth",
        "peer",
        "name",
        "fsjprobe1",
    ]);
    let bridge = ip(&["-n", &probe, "link", "add", "fsjbr", "type", "bridge"]);
    ip(&["netns", "del", &probe])?;
    veth.context("cannot create a veth pair inside a namespace (kernel module veth missing?)")?;
    bridge.context("cannot create a bridge inside a namespace (kernel module bridge missing?)")?;
    Ok(())
}

/// How packet loss (and delay) can be injected on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// `tc netem`: delay with jitter, and loss.
    Netem,
    /// nftables (`numgen random` drop rules): loss only (nftables cannot delay).
    Nft,
    /// Neither works: partitions use blackhole routes only.
    Unavailable,
}

/// Which [`Loss`] backend works here (tried in a scratch namespace), with the reasons the better ones
/// do not.
pub fn loss_backend() -> (Loss, Vec<String>) {
    let mut why = Vec::new();
    match netem_available() {
        Ok(()) => return (Loss::Netem, why),
        Err(e) => why.push(format!("tc netem: {e:#}")),
    }
    match nft_available() {
        Ok(()) => (Loss::Nft, why),
        Err(e) => {
            why.push(format!("nftables: {e:#}"));
            (Loss::Unavailable, why)
        }
    }
}

fn nft_available() -> anyhow::Result<()> {
    if !have("nft") {
        bail!("`nft` is not on PATH (apt-get install nftables)");
    }
    let probe = format!("{PREFIX}{}-nftprobe", std::process::id());
    ip(&["netns", "add", &probe])?;
    let result = nft_drop(&probe, 1);
    ip(&["netns", "del", &probe])?;
    result.context("the kernel refuses the nftables rule (nf_tables, nft_numgen)")
}

/// Drops `pct` % of what namespace `ns` sends to the members' subnet (an nftables table `fsj`).
fn nft_drop(ns: &str, pct: u64) -> anyhow::Result<()> {
    let nft = |args: &[&str]| {
        let mut all = vec!["netns", "exec", ns, "nft"];
        all.extend_from_slice(args);
        run("ip", &all)
    };
    nft(&["add", "table", "inet", "fsj"])?;
    nft(&["add chain inet fsj out { type filter hook output priority 0 ; }"])?;
    let subnet = format!("{}.{}.{}.0/24", SUBNET[0], SUBNET[1], SUBNET[2]);
    nft(&[&format!(
        "add rule inet fsj out ip daddr {subnet} numgen random mod 100 < {pct} drop"
    )])
}

/// Whether `tc netem` works here: `tc` on the path and the kernel's `sch_netem` qdisc (tried on the
/// loopback of a scratch namespace). `Err` says why not.
pub fn netem_available() -> anyhow::Result<()> {
    if !have("tc") {
        bail!("`tc` is not on PATH (iproute2)");
    }
    let probe = format!("{PREFIX}{}-tcprobe", std::process::id());
    ip(&["netns", "add", &probe])?;
    let result = run(
        "ip",
        &[
            "netns", "exec", &probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay",
            "1ms",
        ],
    );
    ip(&["netns", "del", &probe])?;
    result.context("the kernel has no netem qdisc (module sch_netem)")
}

/// Every namespace name (`ip netns list`).
pub fn list() -> anyhow::Result<Vec<String>> {
    Ok(output("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// The owner pid in a harness namespace name (`fsj-<pid>-...`).
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills (SIGKILL) every process in namespace `ns`, then removes it.
pub fn remove(ns: &str) -> anyhow::Result<()> {
    if let Ok(pids) = output("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-KILL", pid]);
        }
    }
    ip(&["netns", "del", ns])
}

/// Removes the namespaces of earlier runs whose harness process is gone (found by [`PREFIX`] and the
/// owner pid in the name), with every process in them. Returns their names.
pub fn cleanup_stale() -> anyhow::Result<Vec<String>> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for ns in list()? {
        let Some(pid) = owner_pid(&ns) else { continue };
        if pid != me && !alive(pid) {
            remove(&ns).with_context(|| format!("removing stale namespace {ns}"))?;
            removed.push(ns);
        }
    }
    Ok(removed)
}

/// One member of the network (a node or the client namespace).
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name (`n1`, `cl`).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

/// The harness's namespaces; removed on drop.
#[derive(Debug)]
pub struct Net {
    /// The run's tag, `fsj-<pid>-<k>`.
    pub tag: String,
    /// The bridge's namespace.
    pub bridge_ns: String,
    /// Every member, in the order given to [`Net::create`].
    pub members: Vec<Member>,
    created: Vec<String>,
    blackholes: Vec<(String, Ipv4Addr)>,
    netem: Vec<String>,
    nft: Vec<String>,
}

impl Net {
    /// Creates the bridge namespace and one namespace per member, member `i` at `10.99.0.(i+1)`.
    pub fn create(schedule: u32, names: &[String]) -> anyhow::Result<Net> {
        let tag = format!("{PREFIX}{}-{schedule}", std::process::id());
        let bridge_ns = format!("{tag}-br");
        let mut net = Net {
            tag: tag.clone(),
            bridge_ns: bridge_ns.clone(),
            members: Vec::new(),
            created: Vec::new(),
            blackholes: Vec::new(),
            netem: Vec::new(),
            nft: Vec::new(),
        };
        ip(&["netns", "add", &bridge_ns])?;
        net.created.push(bridge_ns.clone());
        ip(&["-n", &bridge_ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], (i + 1) as u8);
            ip(&["netns", "add", &ns])?;
            net.created.push(ns.clone());
            let host_end = format!("v{i}");
            ip(&[
                "-n", &bridge_ns, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &bridge_ns, "link", "set", &host_end, "master", "br0"])?;
            ip(&["-n", &bridge_ns, "link", "set", &host_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            net.members.push(Member {
                name: name.clone(),
                ns,
                ip: addr,
            });
        }
        Ok(net)
    }

    /// The member called `name`.
    pub fn member(&self, name: &str) -> anyhow::Result<&Member> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no member {name}"))
    }

    /// Drops every packet `from` sends to `to` (a blackhole route in `from`'s namespace).
    pub fn blackhole(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        let ns = self.member(from)?.ns.clone();
        let dest = self.member(to)?.ip;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "blackhole",
            &format!("{dest}/32"),
        ])?;
        self.blackholes.push((ns, dest));
        Ok(())
    }

    /// Adds `delay_ms` (± `jitter_ms`) and `loss_pct` % loss to everything `member` sends (tc netem).
    pub fn netem(
        &mut self,
        member: &str,
        delay_ms: u64,
        jitter_ms: u64,
        loss_pct: u64,
    ) -> anyhow::Result<()> {
        let ns = self.member(member)?.ns.clone();
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "tc",
                "qdisc",
                "add",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                &format!("{delay_ms}ms"),
                &format!("{jitter_ms}ms"),
                "loss",
                &format!("{loss_pct}%"),
            ],
        )?;
        self.netem.push(ns);
        Ok(())
    }

    /// Drops `loss_pct` % of what `member` sends to the other members (nftables).
    pub fn nft_loss(&mut self, member: &str, loss_pct: u64) -> anyhow::Result<()> {
        let ns = self.member(member)?.ns.clone();
        nft_drop(&ns, loss_pct)?;
        self.nft.push(ns);
        Ok(())
    }

    /// Removes every blackhole route, netem qdisc and nftables table the harness added.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for (ns, dest) in std::mem::take(&mut self.blackholes) {
            if let Err(e) = ip(&[
                "-n",
                &ns,
                "route",
                "del",
                "blackhole",
                &format!("{dest}/32"),
            ]) {
                first_error.get_or_insert(e);
            }
        }
        for ns in std::mem::take(&mut self.nft) {
            if let Err(e) = run(
                "ip",
                &[
                    "netns", "exec", &ns, "nft", "delete", "table", "inet", "fsj",
                ],
            ) {
                first_error.get_or_insert(e);
            }
        }
        for ns in std::mem::take(&mut self.netem) {
            if let Err(e) = run(
                "ip",
                &[
                    "netns", "exec", &ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                ],
            ) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Kills every process left in the namespaces and removes them.
    pub fn teardown(&mut self) {
        for ns in std::mem::take(&mut self.created).iter().rev() {
            if let Err(e) = remove(ns) {
                eprintln!("teardown: {e:#}");
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_pid_is_in_the_name() {
        assert_eq!(owner_pid("fsj-4242-0-n1"), Some(4242));
        assert_eq!(owner_pid("fsj-x-n1"), None);
        assert_eq!(owner_pid("other-1"), None);
        assert!(alive(std::process::id()));
    }
}
