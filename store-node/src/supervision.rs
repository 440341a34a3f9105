//! A node started by a supervisor (`store-node dev`) dies with it.
//!
//! `store-node serve --die-with-parent PID` asks the kernel for a parent-death signal
//! (`prctl(PR_SET_PDEATHSIG, SIGTERM)`, through `rustix`, which keeps the workspace free of `unsafe`): when
//! the parent exits for any reason, `kill -9` included, the node receives SIGTERM and shuts down as on
//! Ctrl-C (drain, flush, exit). Because the node's stderr then goes to a closed pipe, this relies on the
//! log output never failing the process (see [`crate::logging`]).
//!
//! Guarantees:
//! - No orphan window: the parent could die between `fork` and the `prctl` call, in which case no signal
//!   would ever come. So after setting the signal the node checks that its parent is still `PID`; if not,
//!   it refuses to start ([`die_with_parent`] fails and `serve` exits non-zero).
//!
//! Caveats:
//! - Linux only (FreeBSD has the same through `procctl`, which `rustix` also wraps, but is not tested
//!   here); on other systems the flag is refused with an error rather than silently ignored.
//! - The signal fires when the *thread* that spawned the child exits. `store-node dev` spawns its nodes
//!   from the runtime's main thread, which lives as long as the process.
//! - SIGTERM, not SIGKILL: the node drains and flushes. A node that hangs in shutdown would survive;
//!   shutdown is bounded by `drain_timeout_ms` and the close wait.

use crate::error::{Error, Result};

/// Makes this process receive SIGTERM when its parent exits, and checks that the parent is still
/// `expected_parent` (it may have died before the signal was armed).
#[cfg(target_os = "linux")]
pub fn die_with_parent(expected_parent: u32) -> Result<()> {
    use rustix::process::{getppid, set_parent_process_death_signal, Pid, Signal};
    set_parent_process_death_signal(Some(Signal::TERM)).map_err(|e| {
        Error::Config(format!(
            "--die-with-parent: prctl(PR_SET_PDEATHSIG) failed: {e}"
        ))
    })?;
    let parent = u32::try_from(getppid().map_or(0, Pid::as_raw_pid)).unwrap_or(0);
    if parent != expected_parent {
        return Err(Error::Config(format!(
            "--die-with-parent {expected_parent}: the parent process is gone (parent is now {parent}); \
             not starting"
        )));
    }
    Ok(())
}

/// Refused: parent-death signals are implemented for Linux only.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_expected_parent: u32) -> Result<()> {
    Err(Error::Config(
        "--die-with-parent is only supported on Linux".into(),
    ))
}
