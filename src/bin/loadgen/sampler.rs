//! The soak mode's samples: every few seconds the server's RSS and open descriptors (from
//! its /proc entry), a few `/metrics` counters and the chat clients' delivery latency of
//! the interval, as one CSV line; and the RSS slope those samples show.

use std::fs::File;
use std::io::{BufWriter, Write};

use crate::cli::Target;
use crate::http;
use crate::measure::{Histogram, ServerProbe};

/// The CSV's first line. Counters are the server's running totals; `deliveries` and the
/// latencies cover the interval since the previous sample.
const CSV_HEADER: &str = "t_s,rss_kib,fds,websockets,messages_received,messages_delivered,history_writes,\
slow_consumers,deliveries,p50_us,p99_us,clients";

/// The `/metrics` counters each sample keeps, in CSV order.
const METRICS: [&str; 5] = [
    "chatroom_websocket_connections",
    "chatroom_messages_received_total",
    "chatroom_messages_delivered_total",
    "chatroom_history_writes_total",
    "chatroom_slow_consumers_total",
];

/// One sample, as much of it as the run needs afterwards.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Seconds since the soak started.
    pub t_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Takes the samples and writes them to the CSV as they come (a long run that is stopped
/// early still leaves every sample taken so far).
pub struct Sampler {
    target: Target,
    csv: Option<BufWriter<File>>,
    /// Every sample so far.
    pub samples: Vec<Sample>,
}

impl Sampler {
    /// A sampler writing to `csv_path` (if given), header first.
    pub fn new(target: Target, csv_path: Option<&str>) -> Result<Self, String> {
        let csv = match csv_path {
            Some(path) => {
                let mut file = BufWriter::new(File::create(path).map_err(|e| format!("--csv {path}: {e}"))?);
                writeln!(file, "{CSV_HEADER}").map_err(|e| format!("--csv {path}: {e}"))?;
                Some(file)
            }
            None => None,
        };
        Ok(Sampler { target, csv, samples: Vec::new() })
    }

    /// Takes one sample: `latency` holds the interval's deliveries (the caller starts a new
    /// one after), `clients` the chat connections open now. Prints it as a progress line.
    pub fn sample(&mut self, probe: &ServerProbe, t_s: f64, latency: &Histogram, deliveries: u64, clients: usize) {
        let rss_kib = probe.rss_kib().unwrap_or(0);
        let fds = probe.fd_count().unwrap_or(0);
        let metrics = http::get(self.target.addr, &self.target.host, "/metrics").ok().map(|(_, body)| body);
        let counters: Vec<String> = METRICS
            .iter()
            .map(|name| {
                metrics.as_deref().and_then(|m| http::metric(m, name)).map_or(String::new(), |v| format!("{v:.0}"))
            })
            .collect();
        let p50_us = latency.quantile(0.5) as f64 / 1e3;
        let p99_us = latency.quantile(0.99) as f64 / 1e3;
        let sample = Sample { t_s, rss_kib, fds, p50_us, p99_us };
        self.samples.push(sample);
        let line =
            format!("{t_s:.1},{rss_kib},{fds},{},{deliveries},{p50_us:.1},{p99_us:.1},{clients}", counters.join(","));
        println!("soak sample: {line}");
        if let Some(csv) = self.csv.as_mut() {
            // A full disk must not end the run; the samples are also printed.
            let _ = writeln!(csv, "{line}").and_then(|()| csv.flush());
        }
    }
}

/// The least-squares slope of RSS over time, in KiB per 10 minutes, over the samples taken
/// at or after `from_s` (the warm-up is left out: caches and pools fill first). `None` with
/// fewer than three samples or no spread in time.
pub fn rss_slope_kib_per_10min(samples: &[Sample], from_s: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.t_s >= from_s).map(|s| (s.t_s, s.rss_kib as f64)).collect();
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_r = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points.iter().map(|(t, r)| (t - mean_t) * (r - mean_r)).sum();
    let variance: f64 = points.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance * 600.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_s: f64, rss_kib: u64) -> Sample {
        Sample { t_s, rss_kib, fds: 0, p50_us: 0.0, p99_us: 0.0 }
    }

    #[test]
    fn slope_leaves_out_the_warm_up_and_is_per_ten_minutes() {
        // Grows 1,000 KiB in the first minute, then 1 KiB per minute.
        let mut samples = vec![at(0.0, 5_000), at(30.0, 5_500)];
        samples.extend((0..10u32).map(|i| at(60.0 + 60.0 * f64::from(i), 6_000 + u64::from(i))));
        let slope = rss_slope_kib_per_10min(&samples, 60.0).unwrap();
        assert!((slope - 10.0).abs() < 1e-9, "slope {slope}");
        assert!(rss_slope_kib_per_10min(&samples, 0.0).unwrap() > 10.0);
        assert_eq!(rss_slope_kib_per_10min(&samples[..2], 0.0), None);
    }
}
