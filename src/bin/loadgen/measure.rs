//! Measuring: the run's clock, the latency histogram, the server's CPU time and memory from
//! `/proc`, and a tally of what went wrong.

use std::time::{Duration, Instant};

/// Nanoseconds since the start of the run, from the monotonic clock. Send times travel in
/// message texts as these numbers, so sender and receiver (both here) agree on them.
#[derive(Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Clock { origin: Instant::now() }
    }

    /// Nanoseconds since the clock's zero.
    pub fn ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The instant `ns` nanoseconds after the origin (for timers).
    pub fn at(&self, ns: u64) -> Instant {
        self.origin + Duration::from_nanos(ns)
    }
}

/// Sub-buckets per power of two: 2^7 = 128, so a bucket is at most 1/128 (0.8%) of its value
/// wide. Values below 256 ns get a bucket each.
const SUB_BUCKET_BITS: u32 = 7;

/// A log-linear histogram of nanoseconds (the HdrHistogram layout): constant memory (58 KiB)
/// however many deliveries a run records, with bounded relative error.
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    /// The largest value recorded, exact.
    pub max: u64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        let buckets = (64 - SUB_BUCKET_BITS as usize + 1) << SUB_BUCKET_BITS;
        Histogram { counts: vec![0; buckets], total: 0, max: 0 }
    }

    /// Bucket of `v`: values below 2^(bits+1) map to themselves; above, the top `bits + 1`
    /// significant bits select the bucket and the exponent selects the group.
    fn index(v: u64) -> usize {
        let sub = 1u64 << SUB_BUCKET_BITS;
        if v < 2 * sub {
            return v as usize;
        }
        let exponent = 63 - v.leading_zeros();
        let shift = exponent - SUB_BUCKET_BITS;
        let top = (v >> shift) as usize; // in [sub, 2*sub)
        ((shift as usize + 1) << SUB_BUCKET_BITS) + (top - sub as usize)
    }

    /// The largest value that lands in bucket `i` (reported, so percentiles never flatter).
    fn highest_in(i: usize) -> u64 {
        let sub = 1usize << SUB_BUCKET_BITS;
        if i < 2 * sub {
            return i as u64;
        }
        let shift = (i >> SUB_BUCKET_BITS) - 1;
        let top = ((i & (sub - 1)) | sub) as u64;
        (top << shift) + ((1u64 << shift) - 1)
    }

    /// Counts one value (nanoseconds).
    pub fn record(&mut self, ns: u64) {
        if let Some(c) = self.counts.get_mut(Self::index(ns)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(ns);
    }

    /// The value below which a fraction `q` of the recordings fall (nanoseconds).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::highest_in(i).min(self.max);
            }
        }
        self.max
    }
}

/// Reads the server's CPU time and memory from /proc: the only honest way to compare
/// servers that use different languages and thread counts.
pub struct ServerProbe {
    pid: u32,
    ticks_per_second: f64,
}

impl ServerProbe {
    /// Checks that /proc shows the process; an error a person can act on if not.
    pub fn new(pid: u32) -> Result<Self, String> {
        // SAFETY: sysconf only reads a configuration value; no memory is shared.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let probe = ServerProbe { pid, ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 } };
        if probe.cpu_seconds().is_none() {
            return Err(format!("--server-pid {pid}: cannot read /proc/{pid}/stat (is the server running?)"));
        }
        Ok(probe)
    }

    /// User + system CPU seconds the process has used so far, all its threads included.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Field 2 (comm) is in parentheses and may itself contain spaces or ')', so count
        // the fields from the last ')': state is field 3, utime field 14, stime field 15.
        let (_, after_comm) = stat.rsplit_once(')')?;
        let mut fields = after_comm.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some((utime + stime) as f64 / self.ticks_per_second)
    }

    /// Resident set size in KiB (`VmRSS` in /proc/PID/status).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Descriptors the process has open (entries of /proc/PID/fd).
    pub fn fd_count(&self) -> Option<u64> {
        let entries = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).ok()?;
        Some(entries.count() as u64)
    }

    /// What each open descriptor is (`socket:[123]`, a file's path), sorted: the difference
    /// between two of these lists names a leaked descriptor.
    pub fn fd_targets(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{}/fd", self.pid)) else {
            return Vec::new();
        };
        let mut targets: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| {
                let target = std::fs::read_link(e.path()).map_or_else(|_| "?".into(), |t| t.display().to_string());
                format!("{} -> {target}", e.file_name().to_string_lossy())
            })
            .collect();
        targets.sort();
        targets
    }
}

/// Distinct reasons connections failed, with counts: "1,000 failures" says little,
/// "connection refused ×1,000" says what to fix.
#[derive(Default)]
pub struct Problems {
    reasons: Vec<(String, u64)>,
}

impl Problems {
    /// Distinct reasons kept; past this, new ones are folded into the last.
    const MAX_REASONS: usize = 16;

    /// Counts one more occurrence of `reason`.
    pub fn note(&mut self, reason: &str) {
        if let Some(entry) = self.reasons.iter_mut().find(|(r, _)| r == reason) {
            entry.1 += 1;
        } else if self.reasons.len() < Self::MAX_REASONS {
            self.reasons.push((reason.to_string(), 1));
        } else if let Some(last) = self.reasons.last_mut() {
            last.1 += 1;
        }
    }

    /// Occurrences of all reasons together.
    pub fn total(&self) -> u64 {
        self.reasons.iter().map(|(_, n)| n).sum()
    }

    /// "reason ×count; ...", for the report.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
        parts.join("; ")
    }
}

/// Events per second over a window in nanoseconds (0 for an empty window).
pub fn rate_per_sec(events: u64, window_ns: u64) -> f64 {
    if window_ns == 0 { 0.0 } else { events as f64 * 1e9 / window_ns as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i >= last, "index must not decrease at {v}");
            last = i;
            let high = Histogram::highest_in(i);
            assert!(high >= v, "bucket of {v} ends at {high}");
            assert!((high - v) as f64 <= v as f64 / 128.0 + 1.0, "bucket of {v} too wide");
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5);
        assert!((500_000..=504_000).contains(&p50), "p50 {p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
    }
}
