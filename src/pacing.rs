//! When to hold a broadcast back: adaptive write coalescing.
//!
//! Every write to a socket costs a syscall and a trip through the TCP stack
//! (on loopback, through the receiver's side too): several microseconds,
//! whatever its size. A listener in a busy room that gets one write per
//! loop turn pays that for every message; held back a little, its next
//! messages share the write. Network cards do the same with interrupts
//! (adaptive interrupt moderation) and TCP with small segments (Nagle): the
//! art is to hold only when holding is nearly free.
//!
//! The reactor may hold a *listener's* output, never a reply to something
//! the connection sent nor an author's copy of its own post (a client may
//! be waiting for those), when
//!
//! - the loop is busy: clients' events were already waiting when it
//!   polled, so there is a queue anyway. The answers to our own requests
//!   (the storage thread's wake-up, Redis's command replies) do not count:
//!   that they were ready says the answer was quick, not that anyone
//!   queues. (Counting the storage thread's held most fan-outs in a quiet
//!   room back by up to [`FAN_OUT_DELAY`] whenever history is in SQLite.); or
//! - posts arrive faster than one per [`FAN_OUT_DELAY`] ([`HOLD_RATE`]), so
//!   the next one is likely to come while the first waits,
//!
//! and never for longer than [`FAN_OUT_DELAY`] (nor, per listener, beyond
//! [`HOLD_BYTES`], see the server). At a human pace neither holds, and each
//! message leaves the moment it is committed.
//!
//! [`HOLD_BYTES`]: crate::server::HOLD_BYTES

use std::time::{Duration, Instant};

/// The longest a listener's output is held back.
pub const FAN_OUT_DELAY: Duration = Duration::from_micros(500);

/// Posts per second above which output is held even when the loop is not
/// busy: one per `FAN_OUT_DELAY`.
pub const HOLD_RATE: f64 = 2_000.0;

/// The window over which the post rate is counted: long enough that a
/// burst (ten people answering the same message) is not taken for a rate.
const RATE_WINDOW: Duration = Duration::from_millis(20);

/// A poll that returns events sooner than this did not really sleep.
const BUSY_SLEEP: Duration = Duration::from_micros(20);

/// The hold decision, turn by turn.
#[derive(Debug)]
pub struct Pacer {
    /// This turn's first poll found clients' events waiting.
    busy: bool,
    /// Posts came faster than `HOLD_RATE` in the last window.
    fast: bool,
    window_start: Instant,
    window_posts: u64,
    /// When output held now must go at the latest.
    due: Option<Instant>,
}

impl Pacer {
    /// A pacer that holds nothing yet.
    pub fn new(now: Instant) -> Pacer {
        Pacer { busy: false, fast: false, window_start: now, window_posts: 0, due: None }
    }

    /// After the poll that starts a turn: asked at `asked`, returned at
    /// `now`, with events from clients or not.
    pub fn polled(&mut self, asked: Instant, now: Instant, from_clients: bool) {
        self.busy = from_clients && now.saturating_duration_since(asked) < BUSY_SLEEP;
    }

    /// Whether this turn may hold listeners' output, given the number of
    /// posts received so far.
    pub fn may_hold(&mut self, now: Instant, posts_total: u64) -> bool {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            let posts = posts_total.saturating_sub(self.window_posts);
            self.fast = posts as f64 >= HOLD_RATE * elapsed.as_secs_f64();
            self.window_start = now;
            self.window_posts = posts_total;
        }
        (self.busy || self.fast) && self.due.is_none_or(|due| now < due)
    }

    /// What the turn did: held some output or not. The first hold starts
    /// the clock; a turn that held nothing stops it.
    pub fn held(&mut self, now: Instant, any: bool) {
        if !any {
            self.due = None;
        } else if self.due.is_none() {
            self.due = Some(now + FAN_OUT_DELAY);
        }
    }

    /// Until when the loop may sleep with output held: to the deadline when
    /// posts come fast (the next is due any moment); not at all when it
    /// held only because the loop was busy, for if the next poll finds
    /// nothing the reason to hold is gone.
    pub fn sleep_until(&self) -> Option<Instant> {
        if self.fast { self.due } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_human_pace_holds_nothing() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        // A turn after a real sleep, one post in 10 ms: write at once.
        p.polled(t0, t0 + Duration::from_millis(10), true);
        assert!(!p.may_hold(t0 + Duration::from_millis(10), 1));
    }

    #[test]
    fn a_busy_loop_holds_until_the_deadline() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        p.polled(t0, t0 + Duration::from_micros(2), true);
        assert!(p.may_hold(t0, 0));
        p.held(t0, true);
        assert_eq!(p.due, Some(t0 + FAN_OUT_DELAY));
        assert_eq!(p.sleep_until(), None, "held for being busy: no sleeping on it");
        // Still busy later, but the held output is due: write it.
        assert!(p.may_hold(t0 + FAN_OUT_DELAY / 2, 0));
        assert!(!p.may_hold(t0 + FAN_OUT_DELAY, 0));
        p.held(t0 + FAN_OUT_DELAY, false);
        assert_eq!(p.due, None);
    }

    #[test]
    fn a_fast_room_holds_even_after_a_sleep() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        // 100 posts in 20 ms is 5,000/s: above HOLD_RATE.
        let t1 = t0 + RATE_WINDOW;
        p.polled(t1 - Duration::from_micros(100), t1, true);
        assert!(p.may_hold(t1, 100));
        p.held(t1, true);
        assert_eq!(p.sleep_until(), Some(t1 + FAN_OUT_DELAY));
        // The next 20 ms bring one post: the rate is gone.
        let t2 = t1 + RATE_WINDOW;
        p.polled(t2 - Duration::from_micros(100), t2, true);
        assert!(!p.may_hold(t2, 101));
    }
}
