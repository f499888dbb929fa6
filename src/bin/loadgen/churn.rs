//! Mode `churn`: connect, (be welcomed,) post, receive the post back, close, and again: what
//! joining and leaving cost the server.

use std::time::{Duration, Instant};

use crate::cli::{Flavour, Options};
use crate::drive::{Driver, close_everything, detect_flavour, drive};
use crate::measure::{Clock, Histogram, Problems, ServerProbe, rate_per_sec};
use crate::net::{Net, NetEvent, describe_close};
use crate::report::Report;
use crate::wire::{Payload, Tag, compose_post, decode_payload, parse_frame, peek_kind, run_tag};

/// Pause before a churn slot starts a new cycle after a failed one, so a server that
/// refuses connections is not hammered in a tight loop.
const CHURN_FAILURE_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChurnStage {
    /// Between cycles (or stopped).
    Idle,
    /// Connecting, upgrading, or waiting for the welcome.
    Joining,
    /// Posted; waiting for the message to come back.
    Posted,
    /// Close frame sent; waiting for the server to finish the close.
    Leaving,
}

struct ChurnSlot {
    stage: ChurnStage,
    token: usize,
    cycle: u64,
    started: Instant,
    posted_ns: u64,
    restart_at: Instant,
}

struct ChurnRun {
    clock: Clock,
    typed: bool,
    run: String,
    size: usize,
    rooms: usize,
    prefix: String,
    timeout: Duration,
    stopping: bool,
    slots: Vec<ChurnSlot>,
    to_post: Vec<usize>,
    to_close: Vec<usize>,
    cycles: u64,
    cycle_latency: Histogram,
    post_latency: Histogram,
    failures: u64,
    stalled: u64,
    /// Cycles whose close the server ended without its close frame.
    unclean_closes: u64,
    first_start: Instant,
    last_done: Instant,
    last_stall_scan: Instant,
    problems: Problems,
}

impl ChurnRun {
    /// A cycle broke (failed connect, unexpected close): count it, pause, start again.
    fn on_broken(&mut self, slot: usize, reason: &str) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.stage == ChurnStage::Idle {
            return;
        }
        s.stage = ChurnStage::Idle;
        s.restart_at = Instant::now() + CHURN_FAILURE_PAUSE;
        self.failures += 1;
        self.problems.note(reason);
    }

    fn username(slot: usize, cycle: u64) -> String {
        format!("k{slot}n{cycle}")
    }
}

impl Driver for ChurnRun {
    fn on_event(&mut self, slot: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => {
                if !self.typed {
                    self.to_post.push(slot);
                }
            }
            NetEvent::Text(text) => {
                // Only messages need reading; the rest (a welcome with its
                // history, presence) only by kind.
                match peek_kind(text) {
                    Some("welcome") => return self.to_post.push(slot),
                    Some(kind) if kind != "message" => return,
                    _ => {}
                }
                let Some(frame) = parse_frame(text) else {
                    return;
                };
                match frame.kind.as_deref() {
                    Some("welcome") => self.to_post.push(slot),
                    Some("message") | None => {
                        let now_ns = self.clock.ns();
                        let Some(s) = self.slots.get_mut(slot) else {
                            return;
                        };
                        let mine = frame.message.as_deref().and_then(decode_payload).is_some_and(|p| {
                            p.tag == Tag::Churn && p.run == self.run && p.a as usize == slot && p.b == s.cycle
                        });
                        if mine && s.stage == ChurnStage::Posted {
                            self.post_latency.record(now_ns.saturating_sub(s.posted_ns));
                            self.to_close.push(slot);
                        }
                    }
                    _ => {}
                }
            }
            NetEvent::Binary(_) => {}
            NetEvent::Closed { code, clean } => {
                let leaving = self.slots.get(slot).is_some_and(|s| s.stage == ChurnStage::Leaving);
                if leaving {
                    let now = Instant::now();
                    if let Some(s) = self.slots.get_mut(slot) {
                        // The cycle did its work either way; a missing close reply is
                        // counted (and fails the run) but does not void the cycle.
                        if !clean {
                            self.unclean_closes += 1;
                        }
                        self.cycles += 1;
                        self.cycle_latency.record(now.duration_since(s.started).as_nanos() as u64);
                        self.last_done = now;
                        s.stage = ChurnStage::Idle;
                        s.restart_at = now;
                    }
                } else {
                    self.on_broken(slot, &describe_close(code, clean));
                }
            }
            NetEvent::Failed(reason) => self.on_broken(slot, reason),
        }
    }

    fn has_work(&self) -> bool {
        !self.to_post.is_empty() || !self.to_close.is_empty()
    }

    fn after_turn(&mut self, net: &mut Net) -> Option<Instant> {
        let now = Instant::now();
        for slot in std::mem::take(&mut self.to_post) {
            let Some(s) = self.slots.get_mut(slot) else {
                continue;
            };
            if s.stage != ChurnStage::Joining {
                continue;
            }
            s.posted_ns = self.clock.ns();
            let text = Payload { tag: Tag::Churn, run: &self.run, a: slot as u32, b: s.cycle, sent_ns: s.posted_ns }
                .compose(self.size);
            let post = compose_post(&text, &Self::username(slot, s.cycle));
            if net.queue_text(s.token, post) {
                s.stage = ChurnStage::Posted;
            }
        }
        for slot in std::mem::take(&mut self.to_close) {
            let Some(s) = self.slots.get_mut(slot) else {
                continue;
            };
            if s.stage == ChurnStage::Posted {
                s.stage = ChurnStage::Leaving;
                if !net.close(s.token) {
                    self.on_broken(slot, "connection gone before its close");
                }
            }
        }
        // A cycle stuck for longer than --timeout: drop its connection and count a stall.
        if now >= self.last_stall_scan + Duration::from_millis(100) {
            self.last_stall_scan = now;
            for s in &mut self.slots {
                if s.stage != ChurnStage::Idle && now >= s.started + self.timeout {
                    net.close(s.token);
                    net.remove(s.token);
                    s.stage = ChurnStage::Idle;
                    s.restart_at = now;
                    self.stalled += 1;
                }
            }
        }
        let mut next: Option<Instant> = None;
        if !self.stopping {
            for (slot, s) in self.slots.iter_mut().enumerate() {
                if s.stage != ChurnStage::Idle {
                    continue;
                }
                if s.restart_at > now {
                    next = Some(next.map_or(s.restart_at, |n| n.min(s.restart_at)));
                    continue;
                }
                s.cycle += 1;
                s.started = now;
                s.stage = ChurnStage::Joining;
                let room = format!("churn-{}", slot % self.rooms);
                let path = net.room_path(&self.prefix, &room, &Self::username(slot, s.cycle));
                s.token = net.open(slot, &path);
            }
        }
        next
    }
}

/// Runs mode `churn` and reports.
pub fn run_churn(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let clock = Clock::new();
    let mut net = Net::new(o.target.clone())?;
    let flavour = match o.flavour {
        Flavour::Auto => {
            let path = net.room_path(&o.path_prefix, "churn-0", "probe");
            detect_flavour(&mut net, &path, o.timeout)?
        }
        f => f,
    };
    let now = Instant::now();
    let mut run = ChurnRun {
        clock,
        typed: flavour == Flavour::Typed,
        run: run_tag(),
        size: o.size,
        rooms: o.rooms,
        prefix: o.path_prefix.clone(),
        timeout: o.timeout,
        stopping: false,
        slots: (0..o.clients)
            .map(|_| ChurnSlot {
                stage: ChurnStage::Idle,
                token: usize::MAX,
                cycle: 0,
                started: now,
                posted_ns: 0,
                restart_at: now,
            })
            .collect(),
        to_post: Vec::new(),
        to_close: Vec::new(),
        cycles: 0,
        cycle_latency: Histogram::new(),
        post_latency: Histogram::new(),
        failures: 0,
        stalled: 0,
        unclean_closes: 0,
        first_start: now,
        last_done: now,
        last_stall_scan: now,
        problems: Problems::default(),
    };
    let cpu_before = probe.and_then(ServerProbe::cpu_seconds);
    run.first_start = Instant::now();
    let end = run.first_start + o.duration;
    drive(&mut net, &mut run, end, |_, _, _| false)?;
    // No new cycles; let the ones under way finish (bounded).
    run.stopping = true;
    let grace = o.timeout.min(Duration::from_secs(5));
    drive(&mut net, &mut run, Instant::now() + grace, |r, _, _| r.slots.iter().all(|s| s.stage == ChurnStage::Idle))?;
    let cpu_after = probe.and_then(ServerProbe::cpu_seconds);
    let rss = probe.and_then(ServerProbe::rss_kib);
    let unfinished = run.slots.iter().filter(|s| s.stage != ChurnStage::Idle).count() as u64;
    close_everything(&mut net, &mut run)?;

    let window = run.last_done.saturating_duration_since(run.first_start);
    let mut report = Report::new(format!(
        "loadgen churn: {} concurrent cycles over {} room(s) for {:.1} s, {} server",
        o.clients,
        o.rooms,
        o.duration.as_secs_f64(),
        if run.typed { "typed (chatroom)" } else { "plain (peer)" }
    ));
    report.text("mode", "mode", "churn");
    report.text("flavour", "server flavour", if run.typed { "typed" } else { "plain" });
    report.int("clients", "concurrent cycles", o.clients as u64);
    report.int("rooms", "rooms", o.rooms as u64);
    report.int("cycles", "cycles completed", run.cycles);
    report.int("failed_cycles", "failed cycles", run.failures);
    report.int("stalled", "stalled cycles", run.stalled + unfinished);
    report.int("unclean_closes", "closes without a close frame", run.unclean_closes);
    report.real("elapsed_s", "measurement window (s)", window.as_secs_f64(), 3);
    report.real("cycles_per_sec", "cycles/s", rate_per_sec(run.cycles, window.as_nanos() as u64), 0);
    report.latencies(&run.cycle_latency);
    report.real("post_p50_us", "post → own copy p50 (µs)", run.post_latency.quantile(0.5) as f64 / 1e3, 1);
    report.real("post_p99_us", "post → own copy p99 (µs)", run.post_latency.quantile(0.99) as f64 / 1e3, 1);
    report.server(cpu_before, cpu_after, run.cycles, "cycle", rss);
    if run.failures > 0 {
        report.fail(format!("{} failed cycles: {}", run.failures, run.problems.summary()));
    }
    if run.stalled + unfinished > 0 {
        report.fail(format!("{} cycles stalled", run.stalled + unfinished));
    }
    if run.unclean_closes > 0 {
        report.fail(format!(
            "{} closes answered by dropping TCP without a close frame (RFC 6455 §5.5.1)",
            run.unclean_closes
        ));
    }
    Ok(report)
}
