//! The loop itself: sleep in `poll`, hand each event to its owner, then
//! the turn's closing pass (`flush.rs`). Shaped like redis's `ae.c`.
//!
//! ```text
//!  loop {
//!      poll(timeout = next timer)          // sleep until something happens
//!      for each event (and, up to GATHER_ROUNDS times, for what a
//!      zero-timeout poll finds ready meanwhile):                 // dispatch
//!          LISTENER → accept until WouldBlock           (accept.rs)
//!          WAKER    → storage replies, shutdown request (delivery.rs)
//!          SIGNALS  → SIGTERM/SIGINT: shutdown; SIGHUP: logged  (shutdown.rs)
//!          REDIS_*  → the bus                           (redis.rs)
//!          key      → a connection: read until WouldBlock and handle
//!                     what arrived                      (read.rs)
//!      resume connections whose read budget ran out, and those
//!      paused for their posts in flight that may go on (read.rs, pressure.rs)
//!      run due timers                                   (timers.rs)
//!      before_sleep:                                    (flush.rs)
//!          hand the turn's posts to storage / Redis    (delivery.rs, redis.rs)
//!          write the authors of this turn's posts first, take what
//!          they sent next (zero-timeout poll), up to REPLY_ROUNDS
//!          write every connection with output, one send each, except
//!          listeners' output that may wait to share a write (pacing.rs)
//!          reap connections marked dead
//!  }
//! ```

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Token};

use crate::conn::Door;

use super::*;

impl Server {
    /// Runs the loop until a graceful shutdown completes.
    pub fn run(mut self) -> Result<(), StartError> {
        let mut events = Events::with_capacity(1024);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        info!("chatroom listening on {scheme}://{}", self.local_addr);
        if let Some(admin) = self.admin_addr {
            info!("admin endpoints on http://{admin}");
        }
        loop {
            let timeout = self.poll_timeout();
            let asked = Instant::now();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                // A signal interrupted epoll_wait: not an error, just go round.
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(StartError(format!("poll failed: {e}")));
            }
            self.now = Instant::now();
            self.pacer.polled(asked, self.now, from_clients(&events));
            let turn_start = self.now;
            self.handshakes = 0;
            self.dispatch(&events);
            // Cork: before writing anything, take what else became ready while
            // we worked (a zero-timeout poll), so that one write per
            // connection carries the answers to all of it. Under load this
            // turns N small writes to each member into one; when idle it costs
            // one empty epoll_wait. Bounded, so the writes are not put off
            // for long by a flood.
            for _ in 0..GATHER_ROUNDS {
                match self.poll.poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) if !events.is_empty() => {
                        self.now = Instant::now();
                        self.dispatch(&events);
                    }
                    _ => break,
                }
            }
            self.resume_paused();
            self.resume_reads();
            self.run_timers();
            if let Some(bus) = &mut self.bus {
                bus.on_timer(self.poll.registry(), self.now);
                self.on_bus_events();
            }
            if self.now >= self.next_tick {
                self.next_tick = self.now + TICK;
                self.on_tick();
            }
            if self.accept_paused {
                self.accept_paused = false;
                self.accept_all(Door::Main);
            }
            self.before_sleep(&mut events);
            self.metrics.record_turn(turn_start.elapsed().as_micros() as u64);
            if let RunState::Draining { deadline } = self.state
                && (self.conns.is_empty() || Instant::now() >= deadline)
            {
                break;
            }
        }
        self.finish()
    }

    /// Hands each ready event to its owner.
    pub(super) fn dispatch(&mut self, events: &Events) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(Door::Main),
                ADMIN_LISTENER => self.accept_all(Door::Admin),
                REDIRECT_LISTENER => self.accept_all(Door::Redirect),
                WAKER => self.on_wake(),
                SIGNALS => self.on_signal(),
                token if self.bus.as_ref().is_some_and(|b| b.owns(token, [REDIS_CMD, REDIS_SUB])) => {
                    if let Some(bus) = &mut self.bus {
                        bus.on_event(self.poll.registry(), token, event, self.now);
                    }
                    self.on_bus_events();
                }
                Token(key) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        // No FIN or error reported: a short read means drained.
                        self.on_readable(key, !event.is_read_closed() && !event.is_error());
                    }
                    if event.is_writable() {
                        self.mark_dirty(key);
                    }
                }
            }
        }
    }

    /// How long `poll` may sleep: until the next timer, at most.
    pub(super) fn poll_timeout(&self) -> Option<Duration> {
        // Held output lets the loop sleep only as long as the pacer says.
        let held_until = self.pacer.sleep_until().filter(|_| self.only_held);
        if !self.more_to_read.is_empty() || self.chat.has_work() || (!self.dirty.is_empty() && held_until.is_none()) {
            return Some(Duration::ZERO);
        }
        let mut timeout = self.timers.next_in(Instant::now());
        if !self.dirty.is_empty()
            && let Some(due) = held_until
        {
            let left = due.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if self.accept_paused {
            timeout = Some(timeout.map_or(ACCEPT_RETRY, |t| t.min(ACCEPT_RETRY)));
        }
        if let RunState::Draining { deadline } = self.state {
            let left = deadline.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if self.stats_viewers > 0 {
            let left = self.next_tick.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if let Some(t) = self.bus.as_ref().and_then(|b| b.next_timeout(Instant::now())) {
            timeout = Some(timeout.map_or(t, |cur| cur.min(t)));
        }
        if let Some(t) = self.cluster_wakeup() {
            timeout = Some(timeout.map_or(t, |cur| cur.min(t)));
        }
        timeout
    }

    /// The waker fired: storage replies, or a shutdown request.
    pub(super) fn on_wake(&mut self) {
        if self.stop.swap(false, Ordering::SeqCst) {
            self.begin_shutdown();
        }
        self.on_storage_replies();
    }
}

/// Whether any of these events is clients' doing: what the pacer's "busy"
/// means. Their sockets and the listeners count, and so does the Redis
/// subscription, which carries the posts of other processes' clients. The
/// storage thread's wake-up and the replies on the Redis command connection
/// answer our own requests: that they were ready the moment we polled says
/// how fast the answer came, not that anyone queues.
fn from_clients(events: &Events) -> bool {
    events.iter().any(|e| is_clients(e.token()))
}

/// See [`from_clients`].
fn is_clients(token: Token) -> bool {
    !matches!(token, WAKER | SIGNALS | REDIS_CMD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn only_clients_sockets_and_listeners_make_the_loop_busy() {
        for token in [Token(0), Token(12_345), LISTENER, ADMIN_LISTENER, REDIS_SUB] {
            assert!(is_clients(token), "{token:?}");
        }
        for token in [WAKER, SIGNALS, REDIS_CMD] {
            assert!(!is_clients(token), "{token:?}");
        }
    }
}
