//! The loop every mode runs (turn the engine, let the mode react, stop on a condition or a
//! deadline), and the steps several modes share: finding out the server's flavour, waiting
//! for quiet, closing everything.

use std::time::{Duration, Instant};

use crate::cli::Flavour;
use crate::net::{CLOSE_GRACE, Net, NetEvent};
use crate::wire::parse_frame;

/// How long the flavour probe waits for a first frame after its handshake. chatroom sends
/// its welcome within a millisecond; the peers never send one, so this is what a peer run
/// pays once.
const PROBE_WAIT: Duration = Duration::from_millis(500);

/// Before measuring, wait until no frame arrived for this long (join and presence frames of
/// the connect phase are still in flight), but never longer than `SETTLE_MAX`.
pub const SETTLE_QUIET: Duration = Duration::from_millis(200);

/// The longest wait for that quiet period.
pub const SETTLE_MAX: Duration = Duration::from_secs(3);

/// Longest single `poll` sleep: the stop conditions of the drive loop (quiet periods,
/// deadlines) are checked at least this often.
const MAX_POLL_SLEEP: Duration = Duration::from_millis(20);

/// epoll's timeout has millisecond resolution and mio rounds up, so a timer could fire up to
/// a millisecond late. So the loop sleeps whole milliseconds (rounded down) and, within this
/// distance of a timer, polls without sleeping; the core is ours, and an open-loop schedule
/// stays accurate to microseconds for at most a millisecond of spinning per timer.
const SPIN_WINDOW: Duration = Duration::from_millis(1);

/// A mode's reaction to its connections.
pub trait Driver {
    /// Runs for every event of every connection, inside the turn.
    fn on_event(&mut self, user: usize, event: NetEvent<'_>);

    /// Runs after each turn: act on what the events changed (send, open, close). Returns
    /// when it next wants to run even if nothing happens (a send schedule), if ever.
    fn after_turn(&mut self, net: &mut Net) -> Option<Instant>;

    /// Whether `after_turn` has something to do right away; checked after every connection
    /// of a batch, so it must be cheap.
    fn has_work(&self) -> bool {
        false
    }
}

/// Turns the loop until `finished` says so (`Ok(true)`) or `deadline` passes (`Ok(false)`).
pub fn drive<D: Driver>(
    net: &mut Net,
    driver: &mut D,
    deadline: Instant,
    mut finished: impl FnMut(&D, &Net, Instant) -> bool,
) -> Result<bool, String> {
    loop {
        let timer = driver.after_turn(net);
        let now = Instant::now();
        if finished(driver, net, now) {
            return Ok(true);
        }
        if now >= deadline {
            return Ok(false);
        }
        let wake = timer.map_or(deadline, |t| t.min(deadline));
        let until_wake = wake.saturating_duration_since(now);
        let sleep = if until_wake < SPIN_WINDOW {
            Duration::ZERO
        } else {
            Duration::from_millis(until_wake.as_millis() as u64).min(MAX_POLL_SLEEP)
        };
        net.turn(sleep, driver)?;
    }
}

/// Finds out whether the server sends typed frames: one connection to `path`, and the first
/// frame within `PROBE_WAIT` of the handshake decides (chatroom's welcome has a "type").
pub fn detect_flavour(net: &mut Net, path: &str, timeout: Duration) -> Result<Flavour, String> {
    struct Probe {
        opened_at: Option<Instant>,
        typed: Option<bool>,
        failure: Option<String>,
        closed: bool,
    }
    impl Driver for Probe {
        fn on_event(&mut self, _: usize, event: NetEvent<'_>) {
            match event {
                NetEvent::Opened => self.opened_at = Some(Instant::now()),
                NetEvent::Text(text) if self.typed.is_none() => {
                    self.typed = Some(parse_frame(text).is_some_and(|f| f.typed));
                }
                NetEvent::Failed(reason) => self.failure = Some(reason.to_string()),
                NetEvent::Closed { .. } => self.closed = true,
                _ => {}
            }
        }
        fn after_turn(&mut self, _: &mut Net) -> Option<Instant> {
            self.opened_at.map(|t| t + PROBE_WAIT)
        }
    }
    let mut probe = Probe { opened_at: None, typed: None, failure: None, closed: false };
    let token = net.open(usize::MAX, path);
    drive(net, &mut probe, Instant::now() + timeout, |p, _, now| {
        p.typed.is_some() || p.failure.is_some() || p.closed || p.opened_at.is_some_and(|t| now >= t + PROBE_WAIT)
    })?;
    if let Some(reason) = probe.failure {
        return Err(format!("cannot connect to {path}: {reason}"));
    }
    if probe.opened_at.is_none() {
        return Err(format!("no WebSocket handshake on {path} within the timeout"));
    }
    if net.close(token) {
        drive(net, &mut probe, Instant::now() + 2 * CLOSE_GRACE, |_, n, _| n.live() == 0)?;
    }
    Ok(if probe.typed == Some(true) { Flavour::Typed } else { Flavour::Plain })
}

/// Waits until no frame arrived for `quiet` (at most `max`), reading and discarding.
pub fn settle<D: Driver>(
    net: &mut Net,
    driver: &mut D,
    last_frame: impl Fn(&D) -> Instant,
    quiet: Duration,
    max: Duration,
) -> Result<(), String> {
    drive(net, driver, Instant::now() + max, |d, _, now| now >= last_frame(d) + quiet)?;
    Ok(())
}

/// Closes everything still open and waits (bounded) for the close handshakes.
pub fn close_everything<D: Driver>(net: &mut Net, driver: &mut D) -> Result<(), String> {
    net.close_all();
    drive(net, driver, Instant::now() + 2 * CLOSE_GRACE, |_, n, _| n.live() == 0)?;
    Ok(())
}
