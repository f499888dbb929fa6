//! The end of every turn (redis's `beforeSleep`): hand storage and Redis
//! this turn's work, write every connection with output in one syscall
//! each, and reap the connections that died.
//!
//! Handlers never write to sockets: they queue output on a connection and
//! mark it dirty. So a room broadcast that reaches a member ten times in one
//! turn still leaves in one `sendmsg`, and a handler can never block.
//!
//! Connections are closed lazily (redis's `freeClientAsync`): a handler
//! marks one dead and the reap here removes it, so a slab key is never
//! reused within one batch of events.

use std::time::{Duration, Instant};

use log::debug;
use mio::Events;

use super::{HOLD_BYTES, LINGER, REPLY_ROUNDS, Server};
use crate::conn::Linger;
use crate::outbuf::Flushed;
use crate::timer::{Timer, TimerKind};

impl Server {
    /// The end of every turn: flush, adjust interest, reap (ae.c's beforeSleep).
    pub(super) fn before_sleep(&mut self, events: &mut Events) {
        // Reap first: a member who left this turn is announced this turn.
        let mut closed_any = self.reap_dead();
        self.chat_before_flush();
        self.flush_bus();
        // Authors first: a poster's copy of its own message is its
        // acknowledgement, and a client that waits for it sends nothing
        // more until it arrives. Write those, then take (zero-timeout) what
        // they answered with, so the fan-out below carries both to each
        // listener in one write instead of one write each turn.
        for _ in 0..REPLY_ROUNDS {
            if self.authors.is_empty() {
                break;
            }
            let authors = std::mem::take(&mut self.authors);
            for &key in &authors {
                if self.conns.get(key).is_some_and(|c| c.is_dirty()) {
                    self.flush(key);
                }
            }
            match self.poll.poll(events, Some(Duration::ZERO)) {
                Ok(()) if !events.is_empty() => {
                    self.now = Instant::now();
                    self.dispatch(events);
                    self.chat_before_flush();
                    self.flush_bus();
                }
                _ => break,
            }
        }
        self.authors.clear();
        // Listeners' output may wait a little to share a write with the
        // next turn's (see `pacing.rs`); everything else goes now.
        let hold = self.pacer.may_hold(self.now, self.metrics.messages_received);
        let dirty = std::mem::take(&mut self.dirty);
        let mut held = std::mem::take(&mut self.held);
        for &key in &dirty {
            let Some(conn) = self.conns.get(key) else { continue };
            if !conn.is_dirty() {
                continue;
            }
            if hold && !conn.is_urgent() && !conn.is_dead() && conn.out_len() < HOLD_BYTES {
                held.push(key);
            } else {
                self.flush(key);
            }
        }
        self.metrics.held_turns += u64::from(!held.is_empty());
        self.pacer.held(self.now, !held.is_empty());
        self.only_held = !held.is_empty() && self.dirty.is_empty();
        let mut dirty = dirty;
        dirty.clear();
        dirty.append(&mut held);
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
        self.held = held;
        // Writes that failed just now are reaped too; anything they cause
        // (a leave event) goes out next turn, which `poll_timeout` makes immediate.
        closed_any |= self.reap_dead();
        if closed_any && self.accept_paused {
            // A descriptor came free: the clients queued behind EMFILE can come in.
            self.accept_paused = false;
            self.accept_all(crate::conn::Door::Main);
        }
        // Commits and Redis answers taken this turn may let paused
        // connections go on: list them now, so the loop does not sleep on them.
        self.resume_paused();
    }

    /// Writes a connection's queued output: one vectored write per turn when the
    /// socket takes it all; when it does not, the rest waits for the
    /// WRITABLE event (registered once, at accept).
    pub(super) fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.is_dead() {
            return;
        }
        if conn.out_len() > 0 {
            self.metrics.flushes += 1;
        }
        let (result, written) = conn.flush();
        self.metrics.bytes_out += written as u64;
        match result {
            Ok(Flushed::All) => {
                if conn.has_pipelined_input() {
                    // Requests held back by a full queue (or read before the
                    // client's FIN): answer on, when it is read next.
                    self.read_again(key);
                } else if conn.done_sending() {
                    self.start_linger(key);
                }
            }
            Ok(Flushed::Partial) => {
                // Stuck until the kernel's send buffer drains; the socket is
                // registered for WRITABLE from the start (edge-triggered, it
                // reports only the change), so no epoll_ctl is needed here.
                if conn.out_len() > self.cfg.max_pending {
                    self.drop_slow_consumer(key);
                }
            }
            Err(e) => {
                debug!("write #{}: {e}", conn.serial());
                self.kill(key);
            }
        }
    }

    /// A client that leaves more than `--max-pending` unread is closed with
    /// 1008 "slow consumer": its backlog is dropped, a close frame is tried,
    /// and the socket goes soon after, whether or not it read it.
    pub(super) fn drop_slow_consumer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let pending = conn.out_len();
        if !conn.drop_as_slow() {
            return;
        }
        self.metrics.slow_consumers += 1;
        debug!("#{}: slow consumer ({pending} bytes pending)", conn.serial());
        let (serial, at) = (conn.serial(), self.now + LINGER);
        self.timers.arm(Timer { at, key, serial, kind: TimerKind::Linger });
        self.mark_dirty(key);
    }

    /// Everything is sent: half-close and wait (briefly) for the client's
    /// FIN, so unread input does not turn our last bytes into a reset.
    fn start_linger(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match conn.linger() {
            Linger::Already => {}
            Linger::CloseNow => self.kill(key),
            Linger::Started => {
                let (serial, at) = (conn.serial(), self.now + LINGER);
                self.timers.arm(Timer { at, key, serial, kind: TimerKind::Linger });
                // Input may already be waiting (edge-triggered: no new event for it).
                if conn.discard_input(&mut self.scratch) {
                    self.kill(key);
                }
            }
        }
    }

    /// Reaps every connection marked dead; whether there were any.
    fn reap_dead(&mut self) -> bool {
        let dead = std::mem::take(&mut self.dead);
        let any = !dead.is_empty();
        for key in dead {
            self.reap(key);
        }
        any
    }

    /// Removes a dead connection for good.
    fn reap(&mut self, key: usize) {
        if !self.conns.get(key).is_some_and(|c| c.is_dead()) {
            return;
        }
        let conn = self.conns.remove(key);
        // No epoll_ctl(DEL): closing the descriptor (dropping `conn`) takes
        // it out of the epoll set on Linux, one syscall fewer per connection.
        if let (ip, true) = conn.ip() {
            self.per_ip.release(ip);
        }
        debug!("close #{}", conn.serial());
        if let Some(ws) = conn.into_ws() {
            self.on_ws_closed(ws.into_role());
        }
    }

    /// Marks a connection to be flushed in `before_sleep`.
    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && conn.mark_dirty()
        {
            self.dirty.push(key);
        }
    }

    /// Marks a connection dead: it is reaped at the end of this turn.
    pub(super) fn kill(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && conn.kill()
        {
            self.dead.push(key);
        }
    }
}
