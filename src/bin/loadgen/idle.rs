//! Mode `idle`: many connections that only listen, and what they cost the server's memory.

use std::time::{Duration, Instant};

use crate::cli::Options;
use crate::drive::{Driver, SETTLE_MAX, close_everything, drive, settle};
use crate::measure::{Problems, ServerProbe};
use crate::net::{Net, NetEvent, describe_close};
use crate::report::Report;

/// The idle mode's settle before sampling RSS: the server may still be allocating for the
/// last connections (join broadcasts, buffers), so wait longer.
const IDLE_SETTLE_QUIET: Duration = Duration::from_secs(1);

struct IdleRun {
    opened: usize,
    frames: u64,
    last_frame: Instant,
    closing: bool,
    /// Connections that failed before opening, or ended while they should have been held.
    problems: Problems,
    lost_while_held: u64,
}

impl Driver for IdleRun {
    fn on_event(&mut self, _: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => self.opened += 1,
            // Read and thrown away: we only measure what holding the connection costs.
            NetEvent::Text(_) | NetEvent::Binary(_) => {
                self.frames += 1;
                self.last_frame = Instant::now();
            }
            NetEvent::Closed { .. } | NetEvent::Failed(_) if self.closing => {}
            NetEvent::Closed { code, clean } => {
                self.lost_while_held += 1;
                self.problems.note(&describe_close(code, clean));
            }
            NetEvent::Failed(reason) => {
                self.lost_while_held += 1;
                self.problems.note(reason);
            }
        }
    }

    fn after_turn(&mut self, _: &mut Net) -> Option<Instant> {
        None
    }
}

/// Runs mode `idle` and reports.
pub fn run_idle(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let mut net = Net::new(o.target.clone())?;
    let n = o.clients;
    let mut run = IdleRun {
        opened: 0,
        frames: 0,
        last_frame: Instant::now(),
        closing: false,
        problems: Problems::default(),
        lost_while_held: 0,
    };
    let rss_before = probe.and_then(ServerProbe::rss_kib);
    let start = Instant::now();
    for i in 0..n {
        let room = format!("idle-{}", i % o.rooms);
        let path = net.room_path(&o.path_prefix, &room, &format!("i{i}"));
        net.open(i, &path);
    }
    drive(&mut net, &mut run, start + o.timeout, |r, _, _| r.opened + r.problems.total() as usize >= n)?;
    let connect_secs = start.elapsed().as_secs_f64();
    let opened = run.opened;
    let failed_to_open = n - opened.min(n);
    // The server may still be sending join/presence frames and allocating for the last
    // connections: sample its memory once it has been quiet for a while.
    run.last_frame = Instant::now();
    settle(&mut net, &mut run, |r| r.last_frame, IDLE_SETTLE_QUIET, SETTLE_MAX)?;
    let rss_after = probe.and_then(ServerProbe::rss_kib);
    let held_from = Instant::now();
    drive(&mut net, &mut run, held_from + o.duration, |_, _, _| false)?;
    let held_secs = held_from.elapsed().as_secs_f64();
    run.closing = true;
    close_everything(&mut net, &mut run)?;

    let mut report =
        Report::new(format!("loadgen idle: {n} connections over {} room(s), held {:.1} s", o.rooms, held_secs));
    report.text("mode", "mode", "idle");
    report.int("clients", "clients", n as u64);
    report.int("rooms", "rooms", o.rooms as u64);
    report.int("connected", "connected", opened as u64);
    report.int("failed", "failed to connect", failed_to_open as u64);
    report.int("connect_retries", "connect retries", net.retried);
    report.int("dropped", "dropped while held", run.lost_while_held.saturating_sub(failed_to_open as u64));
    report.real("connect_s", "connect time (s)", connect_secs, 3);
    report.real("connects_per_sec", "connects/s", opened as f64 / connect_secs.max(1e-9), 0);
    report.int("frames_received", "frames received", run.frames);
    report.real("held_s", "held (s)", held_secs, 1);
    match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            report.int("rss_before_kib", "server RSS before (KiB)", before);
            report.int("rss_after_kib", "server RSS after (KiB)", after);
            // Signed: a garbage-collected server (node) may well shrink while we connect.
            let per_conn = (after as f64 - before as f64) * 1024.0 / opened.max(1) as f64;
            report.real("rss_per_conn_bytes", "server RSS per connection (B)", per_conn, 0);
        }
        _ => {
            report.absent("rss_before_kib", "server RSS before (KiB)");
            report.absent("rss_after_kib", "server RSS after (KiB)");
            report.absent("rss_per_conn_bytes", "server RSS per connection (B)");
        }
    }
    if run.problems.total() > 0 {
        report.fail(format!("connections failed: {}", run.problems.summary()));
    }
    Ok(report)
}
