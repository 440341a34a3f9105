//! The node's one reading of the wall clock: every timestamp, deadline and expiry check in the node goes
//! through [`now_ms`].
//!
//! It is the system clock plus a process-wide offset in milliseconds, for fault-injection tests (a
//! clock-skew nemesis) that need a node whose clock runs ahead or behind without `faketime`. The offset
//! is 0, and so inert, unless the node is started with the test-only config key `[test] clock_offset_ms`
//! (see `docs/configuration.md`); [`set_offset_ms`] changes it in a running process, and
//! [`watch_control_file`] lets a test harness change it from outside: with the test-only key
//! `[test] clock_control_file`, the node polls that file every 100 ms and takes the integer in it as the
//! new offset. Without the key no file is read.
//!
//! Caveat: the offset moves the node's wall clock only. Monotonic timers (`Instant`, tokio's sleeps,
//! QUIC) and the TLS certificate validity checks keep the real time. A jump backwards while the node
//! runs delays the ticker's next wake-up by up to the jump (it sleeps until a deadline computed before).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds added to the system clock by [`now_ms`].
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Milliseconds since the Unix epoch: the system clock (0 if it is before 1970) plus the offset,
/// saturating at 0 and `u64::MAX`.
pub fn now_ms() -> u64 {
    offset(system_ms(), OFFSET_MS.load(Ordering::Relaxed))
}

fn offset(system_ms: u64, offset_ms: i64) -> u64 {
    system_ms.saturating_add_signed(offset_ms)
}

/// The current offset in milliseconds (0 unless set).
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

/// Sets the offset (for tests that skew this node's clock; it applies to the whole process).
pub fn set_offset_ms(offset: i64) {
    OFFSET_MS.store(offset, Ordering::Relaxed);
}

/// How often [`watch_control_file`] reads its file.
pub const CONTROL_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The offset written in a control file's text: one integer (surrounding whitespace allowed), or `None`.
pub fn parse_control(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

/// The most bytes of a control file that are read (an offset needs 20 at most).
const CONTROL_MAX_BYTES: u64 = 64;

async fn read_control(path: &std::path::Path) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await.ok()?;
    let mut text = String::new();
    file.take(CONTROL_MAX_BYTES)
        .read_to_string(&mut text)
        .await
        .ok()?;
    Some(text)
}

/// Polls `path` every [`CONTROL_POLL`] until `shutdown` and sets the offset to the integer it holds
/// (see [`parse_control`]; only its first 64 bytes are read); a missing or unparsable file leaves the
/// offset as it is. Test-only: the node
/// calls it only when started with `[test] clock_control_file`. Needs a tokio runtime.
pub fn watch_control_file(path: std::path::PathBuf, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        // The offset from the config: a file that says the same changes (and logs) nothing.
        let mut last = Some(offset_ms());
        loop {
            if let Some(text) = read_control(&path).await {
                if let Some(offset) = parse_control(&text) {
                    if last != Some(offset) {
                        tracing::warn!(offset_ms = offset, "test control: clock offset set");
                        set_offset_ms(offset);
                        last = Some(offset);
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(CONTROL_POLL) => {}
            }
        }
    });
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_moves_the_clock_and_saturates() {
        assert_eq!(offset(1_000, 60_000), 61_000);
        assert_eq!(offset(61_000, -60_000), 1_000);
        assert_eq!(offset(1_000, i64::MIN), 0);
        assert_eq!(offset(u64::MAX - 1, i64::MAX), u64::MAX);
        // The process-wide knob, moved by 1 ms only (other tests in this binary read the clock).
        assert_eq!(offset_ms(), 0);
        set_offset_ms(1);
        assert_eq!(offset_ms(), 1);
        set_offset_ms(0);
        let (before, now, after) = (system_ms(), now_ms(), system_ms());
        assert!(before <= now && now <= after);
    }

    #[test]
    fn a_control_file_holds_one_integer() {
        assert_eq!(parse_control("1500\n"), Some(1500));
        assert_eq!(parse_control(" -250 "), Some(-250));
        for bad in ["", "12ms", "1.5", "x"] {
            assert_eq!(parse_control(bad), None, "{bad}");
        }
    }
}
