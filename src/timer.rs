//! Timers: deadlines for connections, without scanning connections.
//!
//! Slowloris defence, keep-alive idling, the WebSocket heartbeat and the
//! lingering close all need "do X to connection K at time T". Scanning every
//! connection each loop turn would cost O(connections) per turn, so instead
//! each deadline is one entry in a binary heap: arming is O(log n), and a
//! turn only looks at the entries that are due.
//!
//! Entries are never removed early. When one comes due, the reactor asks
//! the connection whether it still applies (the connection may have sent its
//! head since, or been closed and its slab key reused: the `serial` tells).
//! That lazy check is what lets activity (every byte read) cost nothing here:
//! the connection just records the time, and a heartbeat entry that comes due
//! after recent activity re-arms itself for later.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// HTTP: a head must be complete (408), or an idle keep-alive closes.
    Http,
    /// WebSocket heartbeat: ping when quiet, close when the ping is unanswered.
    Heartbeat,
    /// A closing connection gets this long to finish before it is dropped.
    Linger,
}

/// One armed deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    /// When it is due.
    pub at: Instant,
    /// The connection's slab key.
    pub key: usize,
    /// The connection's serial, to tell a reused slab key apart.
    pub serial: u64,
    /// What to check.
    pub kind: TimerKind,
}

/// All armed deadlines, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    /// No deadlines.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Arms a deadline.
    pub fn arm(&mut self, timer: Timer) {
        self.heap.push(Reverse(timer));
    }

    /// Removes and returns the next deadline due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse(t)) if t.at <= now => self.heap.pop().map(|Reverse(t)| t),
            _ => None,
        }
    }

    /// How long until the next deadline (for the poll timeout).
    pub fn next_in(&self, now: Instant) -> Option<Duration> {
        self.heap.peek().map(|Reverse(t)| t.at.saturating_duration_since(now))
    }

    /// Armed deadlines (including ones that will turn out stale).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_in_order() {
        let t0 = Instant::now();
        let mut timers = Timers::new();
        for (i, ms) in [30u64, 10, 20].into_iter().enumerate() {
            timers.arm(Timer { at: t0 + Duration::from_millis(ms), key: i, serial: 0, kind: TimerKind::Http });
        }
        assert_eq!(timers.next_in(t0), Some(Duration::from_millis(10)));
        assert!(timers.pop_due(t0).is_none());
        let now = t0 + Duration::from_millis(25);
        assert_eq!(timers.pop_due(now).map(|t| t.key), Some(1));
        assert_eq!(timers.pop_due(now).map(|t| t.key), Some(2));
        assert!(timers.pop_due(now).is_none());
        assert_eq!(timers.len(), 1);
    }
}
