//! The node's log output: a `tracing` subscriber whose writes can never stop or crash the process.
//!
//! Guarantees:
//! - A failed write of a log line (stderr closed: a log shipper that died, `store-node serve 2>&1 | head`,
//!   the `store-node dev` supervisor killed) is dropped and counted in [`write_failures`] (reported as
//!   `log_write_failures_total` by `GET /metrics`); it never panics and never blocks shutdown. The
//!   subscriber's own error reporting (`tracing-subscriber` prints write errors with `eprintln!`, which
//!   panics on a broken pipe) is switched off.
//! - SIGPIPE stays ignored (Rust's default for binaries), so a closed pipe is an `EPIPE` error here, not a
//!   signal that kills the process.
//!
//! Caveat: log lines written while stderr is closed are lost; nothing buffers them.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

/// Log lines that could not be written, since the process started.
static WRITE_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many log lines could not be written (stderr closed or failing) since the process started.
pub fn write_failures() -> u64 {
    WRITE_FAILURES.load(Ordering::Relaxed)
}

/// Stderr as a log destination that never reports an error: a failed write is counted and dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The fmt layer hands over one whole formatted event per write.
        if std::io::stderr().lock().write_all(buf).is_err() {
            WRITE_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().lock().flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LossyStderr {
    type Writer = LossyStderr;

    fn make_writer(&'a self) -> LossyStderr {
        LossyStderr
    }
}

/// Installs the process's log subscriber: filtered by `FEATURESTORE_LOG` (else `RUST_LOG`, else `info`),
/// written to stderr through [`LossyStderr`], with colours only on a terminal.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FEATURESTORE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LossyStderr)
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Writes `text` and a newline to stdout, ignoring errors (a closed stdout must not stop the process).
pub fn print_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
