//! Measurement helpers: latency histograms (HdrHistogram) and process statistics from `/proc`.
//!
//! - [`Latencies`] records nanoseconds with 3 significant digits from 1 ns to 100 s and summarises them as
//!   [`LatencySummary`] (p50, p90, p99, p99.9, max, mean, in microseconds).
//! - [`ProcSample`] reads a process's CPU time (`utime + stime` from `/proc/<pid>/stat`, all threads) and
//!   resident memory (`VmRSS` from `/proc/<pid>/status`); the difference of two samples divided by the
//!   operations in between is the server CPU time per operation.
//! - [`dir_bytes`] is `du`: bytes allocated on disk by every file under a directory.
//!
//! Linux only (`/proc`); on a process that has exited, sampling fails with a typed error.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency recorded (100 s); larger values are clamped to it.
const MAX_NANOS: u64 = 100_000_000_000;

/// A latency histogram in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram (1 ns .. 100 s, 3 significant digits).
    pub fn new() -> Self {
        // hdrhistogram only refuses invalid bounds (low < 1, high < 2 * low, sigfig > 5); ours are constants.
        Latencies(
            Histogram::new_with_bounds(1, MAX_NANOS, 3)
                .expect("constant histogram bounds are valid"),
        )
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos())
            .unwrap_or(MAX_NANOS)
            .clamp(1, MAX_NANOS);
        self.0.saturating_record(nanos);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so `add` cannot fail; a failure would only lose samples.
        let _ = self.0.add(&other.0);
    }

    /// Number of values recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The percentiles of what was recorded.
    pub fn summary(&self) -> LatencySummary {
        let us = |nanos: u64| nanos as f64 / 1_000.0;
        LatencySummary {
            count: self.0.len(),
            p50_us: us(self.0.value_at_quantile(0.50)),
            p90_us: us(self.0.value_at_quantile(0.90)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
            mean_us: self.0.mean() / 1_000.0,
        }
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

/// Errors reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (e.g. the process exited).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file did not have the expected format.
    #[error("unexpected format of {path}")]
    Format {
        /// The file.
        path: String,
    },
}

/// CPU time and memory of a process at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time of all threads, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size in KiB.
    pub rss_kib: u64,
}

impl ProcSample {
    /// Samples process `pid`.
    pub fn of(pid: u32) -> Result<ProcSample, ProcError> {
        Ok(ProcSample {
            cpu_ticks: cpu_ticks(pid)?,
            rss_kib: rss_kib(pid)?,
        })
    }

    /// CPU time used between `earlier` and `self`.
    pub fn cpu_since(&self, earlier: &ProcSample) -> Duration {
        let ticks = self.cpu_ticks.saturating_sub(earlier.cpu_ticks);
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64)
    }
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

/// `utime + stime` of `pid`, in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/stat");
    let text = read(&path)?;
    // The command name (field 2) is in parentheses and may contain spaces: parse after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| ProcError::Format { path: path.clone() })?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is at index N - 3.
    let field = |n: usize| -> Result<u64, ProcError> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| ProcError::Format { path: path.clone() })
    };
    Ok(field(14)? + field(15)?)
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(ProcError::Format { path })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on, used if `getconf` fails).
pub fn clock_ticks_per_second() -> u64 {
    static TCK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// Bytes allocated on disk by all files under `dir` (like `du -s --block-size=1`; 0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    // Bounded by the directory tree; symlinks are not followed.
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 2.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn own_process_can_be_sampled() {
        let s = ProcSample::of(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(ProcSample::of(u32::MAX).is_err());
    }
}
