//! Mode `echo`: closed-loop round trips on `/ws/echo`, each echo compared byte for byte with
//! what was sent.

use std::time::Instant;

use crate::cli::Options;
use crate::drive::{Driver, close_everything, drive};
use crate::measure::{Clock, Histogram, Problems, ServerProbe, rate_per_sec};
use crate::net::{CLOSE_GRACE, Net, NetEvent, describe_close};
use crate::report::Report;
use crate::wire::{Payload, Tag, run_tag};

/// One echo client: the text it is waiting to see again, and when it sent it.
struct EchoClient {
    expect: Option<String>,
    sent_ns: u64,
    round_trips: u64,
    alive: bool,
}

struct EchoRun {
    clock: Clock,
    run: String,
    size: usize,
    /// Round trips per client (`--messages`), or `None` to run for `--duration`.
    limit: Option<u64>,
    sending: bool,
    closing: bool,
    tokens: Vec<usize>,
    clients: Vec<EchoClient>,
    due: Vec<usize>,
    opened: usize,
    /// Clients that finished their round trips or died.
    finished: usize,
    outstanding: usize,
    latency: Histogram,
    completed: u64,
    mismatches: u64,
    unexpected: u64,
    first_send_ns: u64,
    last_done_ns: u64,
    problems: Problems,
}

impl EchoRun {
    fn send(&mut self, net: &mut Net, i: usize) {
        let now = self.clock.ns();
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        let text = Payload { tag: Tag::Echo, run: &self.run, a: i as u32, b: client.round_trips, sent_ns: now }
            .compose(self.size);
        let Some(&token) = self.tokens.get(i) else {
            return;
        };
        // The copy to compare with: echo frames must come back byte for byte.
        client.expect = Some(text.clone());
        client.sent_ns = now;
        if net.queue_text(token, text) {
            self.outstanding += 1;
        } else {
            client.expect = None;
        }
    }

    /// An echo arrived; `as_text` says whether it kept the text opcode we sent it with.
    fn on_echo(&mut self, i: usize, data: &[u8], as_text: bool) {
        let now = self.clock.ns();
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        let Some(expect) = client.expect.take() else {
            // Nothing was outstanding: the server sent something we did not ask for.
            self.unexpected += 1;
            return;
        };
        self.outstanding -= 1;
        if !as_text || data != expect.as_bytes() {
            self.mismatches += 1;
        }
        self.latency.record(now.saturating_sub(client.sent_ns));
        self.completed += 1;
        self.last_done_ns = now;
        client.round_trips += 1;
        if self.limit.is_some_and(|l| client.round_trips >= l) {
            self.finished += 1;
        } else if self.sending {
            self.due.push(i);
        }
    }
}

impl EchoRun {
    fn on_lost(&mut self, i: usize, reason: &str) {
        self.problems.note(reason);
        if let Some(client) = self.clients.get_mut(i)
            && client.alive
        {
            client.alive = false;
            if client.expect.take().is_some() {
                self.outstanding -= 1;
            }
            if self.limit.is_none_or(|l| client.round_trips < l) {
                self.finished += 1;
            }
        }
    }
}

impl Driver for EchoRun {
    fn on_event(&mut self, i: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => self.opened += 1,
            NetEvent::Text(text) => self.on_echo(i, text.as_bytes(), true),
            // We only send text; binary back means the server changed the opcode.
            NetEvent::Binary(data) => self.on_echo(i, data, false),
            NetEvent::Closed { .. } | NetEvent::Failed(_) if self.closing => {}
            NetEvent::Closed { code, clean } => self.on_lost(i, &describe_close(code, clean)),
            NetEvent::Failed(reason) => self.on_lost(i, reason),
        }
    }

    fn has_work(&self) -> bool {
        !self.due.is_empty()
    }

    fn after_turn(&mut self, net: &mut Net) -> Option<Instant> {
        let due = std::mem::take(&mut self.due);
        for &i in &due {
            self.send(net, i);
        }
        self.due = due;
        self.due.clear();
        None
    }
}

/// Runs mode `echo` and reports.
pub fn run_echo(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let clock = Clock::new();
    let mut net = Net::new(o.target.clone())?;
    let n = o.clients;
    let mut run = EchoRun {
        clock,
        run: run_tag(),
        size: o.size,
        limit: o.messages,
        sending: false,
        closing: false,
        tokens: Vec::with_capacity(n),
        clients: (0..n).map(|_| EchoClient { expect: None, sent_ns: 0, round_trips: 0, alive: true }).collect(),
        due: Vec::new(),
        opened: 0,
        finished: 0,
        outstanding: 0,
        latency: Histogram::new(),
        completed: 0,
        mismatches: 0,
        unexpected: 0,
        first_send_ns: 0,
        last_done_ns: 0,
        problems: Problems::default(),
    };
    let path = format!("{}/ws/echo", o.target.base);
    for i in 0..n {
        run.tokens.push(net.open(i, &path));
    }
    drive(&mut net, &mut run, Instant::now() + o.timeout, |r, _, _| r.opened + r.problems.total() as usize >= n)?;
    if run.opened < n {
        return Err(format!("only {} of {n} echo clients connected: {}", run.opened, run.problems.summary()));
    }

    let cpu_before = probe.and_then(ServerProbe::cpu_seconds);
    run.sending = true;
    run.first_send_ns = clock.ns();
    run.due.extend(0..n);
    let deadline = match o.messages {
        Some(_) => Instant::now() + o.timeout,
        None => Instant::now() + o.duration,
    };
    drive(&mut net, &mut run, deadline, |r, _, _| r.finished >= n)?;
    // Stop sending, and give the echoes still on their way a moment to arrive.
    run.sending = false;
    drive(&mut net, &mut run, Instant::now() + 2 * CLOSE_GRACE, |r, _, _| r.outstanding == 0)?;
    let cpu_after = probe.and_then(ServerProbe::cpu_seconds);
    let rss = probe.and_then(ServerProbe::rss_kib);
    let lost = run.outstanding as u64;
    run.closing = true;
    close_everything(&mut net, &mut run)?;

    let window_ns = run.last_done_ns.saturating_sub(run.first_send_ns);
    let mut report = Report::new(format!("loadgen echo: {n} clients, closed loop, {} B text frames", o.size));
    report.text("mode", "mode", "echo");
    report.int("clients", "clients", n as u64);
    report.int("size", "message size (B)", o.size as u64);
    report.int("round_trips", "round trips", run.completed);
    report.int("mismatches", "mismatched echoes", run.mismatches);
    report.int("unexpected", "unexpected frames", run.unexpected);
    report.int("lost", "lost", lost);
    report.real("elapsed_s", "measurement window (s)", window_ns as f64 / 1e9, 3);
    report.real("round_trips_per_sec", "round trips/s", rate_per_sec(run.completed, window_ns), 0);
    report.latencies(&run.latency);
    report.server(cpu_before, cpu_after, run.completed, "round_trip", rss);
    for (bad, what) in [
        (run.mismatches, "echoes that differ from what was sent"),
        (run.unexpected, "frames nobody asked for"),
        (lost, "echoes that never came back"),
    ] {
        if bad > 0 {
            report.fail(format!("{bad} {what}"));
        }
    }
    if run.problems.total() > 0 {
        report.fail(format!("connections lost: {}", run.problems.summary()));
    }
    Ok(report)
}
