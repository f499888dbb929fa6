//! The figures of a run, printed as a block for people or as one JSON line for scripts.

use crate::measure::Histogram;

/// One reported figure.
enum Figure {
    Int(u64),
    /// A real number and the decimals to show.
    Real(f64, usize),
    Text(String),
    /// Not measured (no `--server-pid`, say): `null` in JSON.
    Absent,
}

/// One line of the report: JSON key, human label, value.
struct Row {
    key: String,
    label: String,
    value: Figure,
}

/// The figures of a run, printed either as a block for people or one JSON line for scripts.
pub struct Report {
    title: String,
    rows: Vec<Row>,
    failures: Vec<String>,
}

impl Report {
    /// An empty report; `title` heads the text block.
    pub fn new(title: String) -> Self {
        Report { title, rows: Vec::new(), failures: Vec::new() }
    }

    fn push(&mut self, key: &str, label: &str, value: Figure) {
        self.rows.push(Row { key: key.to_string(), label: label.to_string(), value });
    }

    /// Adds a count.
    pub fn int(&mut self, key: &str, label: &str, value: u64) {
        self.push(key, label, Figure::Int(value));
    }

    /// Adds a measurement, shown with `decimals` decimals.
    pub fn real(&mut self, key: &str, label: &str, value: f64, decimals: usize) {
        self.push(key, label, Figure::Real(value, decimals));
    }

    /// Adds a word (the mode, the server flavour).
    pub fn text(&mut self, key: &str, label: &str, value: &str) {
        self.push(key, label, Figure::Text(value.to_string()));
    }

    /// Adds a figure that was not measured (shown as `-`, `null` in JSON).
    pub fn absent(&mut self, key: &str, label: &str) {
        self.push(key, label, Figure::Absent);
    }

    /// Records a failed check: the run will exit with status 1.
    pub fn fail(&mut self, why: String) {
        self.failures.push(why);
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// p50, p90, p99, p99.9 and max, in microseconds.
    pub fn latencies(&mut self, h: &Histogram) {
        for (key, label, q) in [
            ("p50_us", "latency p50 (µs)", 0.5),
            ("p90_us", "latency p90 (µs)", 0.9),
            ("p99_us", "latency p99 (µs)", 0.99),
            ("p999_us", "latency p99.9 (µs)", 0.999),
        ] {
            self.real(key, label, h.quantile(q) as f64 / 1e3, 1);
        }
        self.real("max_us", "latency max (µs)", h.max as f64 / 1e3, 1);
    }

    /// Server CPU over the measurement window, per `unit` (delivery, round trip, cycle).
    pub fn server(&mut self, before: Option<f64>, after: Option<f64>, events: u64, unit: &str, rss_kib: Option<u64>) {
        let per_key = format!("server_cpu_us_per_{unit}");
        let per_label = format!("server CPU per {} (µs)", unit.replace('_', " "));
        match (before, after) {
            (Some(b), Some(a)) => {
                let cpu = (a - b).max(0.0);
                self.real("server_cpu_s", "server CPU (s)", cpu, 3);
                if events > 0 {
                    self.real(&per_key, &per_label, cpu * 1e6 / events as f64, 3);
                } else {
                    self.absent(&per_key, &per_label);
                }
            }
            _ => {
                self.absent("server_cpu_s", "server CPU (s)");
                self.absent(&per_key, &per_label);
            }
        }
        match rss_kib {
            Some(kib) => self.int("server_rss_kib", "server RSS (KiB)", kib),
            None => self.absent("server_rss_kib", "server RSS (KiB)"),
        }
    }

    /// Prints the report to stdout, as one JSON line or as a text block.
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
            return;
        }
        println!("{}", self.title);
        for row in &self.rows {
            let value = match &row.value {
                Figure::Int(v) => v.to_string(),
                Figure::Real(v, decimals) => format!("{v:.decimals$}"),
                Figure::Text(t) => t.clone(),
                Figure::Absent => "-".to_string(),
            };
            println!("  {:<32} {value}", row.label);
        }
        if self.passed() {
            println!("  {:<32} PASS", "result");
        } else {
            println!("  {:<32} FAIL: {}", "result", self.failures.join("; "));
        }
    }

    /// One JSON object, keys in report order, then `ok` and `failures`.
    fn to_json(&self) -> String {
        let mut out = String::from("{");
        for row in &self.rows {
            let value = match &row.value {
                Figure::Int(v) => serde_json::Value::from(*v),
                Figure::Real(v, decimals) => {
                    let scale = 10f64.powi(*decimals as i32);
                    serde_json::Value::from((v * scale).round() / scale)
                }
                Figure::Text(t) => serde_json::Value::from(t.as_str()),
                Figure::Absent => serde_json::Value::Null,
            };
            out.push_str(&serde_json::Value::from(row.key.as_str()).to_string());
            out.push(':');
            out.push_str(&value.to_string());
            out.push(',');
        }
        out.push_str(&format!(
            "\"ok\":{},\"failures\":{}}}",
            self.passed(),
            serde_json::Value::from(self.failures.clone())
        ));
        out
    }
}
