//! Reading: the bytes a readable event announced, handed to the
//! connection's phase: HTTP requests (`respond.rs`) or WebSocket frames
//! (`endpoints.rs`).
//!
//! mio registers sockets edge-triggered. The rule from mio's `Poll` docs we
//! rely on: "With edge-triggered events, operations **must** be performed on
//! the `Source` until `WouldBlock` is returned." Every read loop here runs
//! until `WouldBlock`, or stops early only where something is sure to bring
//! it back: a spent read budget (`more_to_read`, resumed next turn, so one
//! fast sender cannot starve the others), an HTTP connection paused
//! behind an answer (the answer's flush or storage's reply resumes it), or
//! a chat member with too many posts in flight (`pressure.rs` resumes it
//! when they complete), or a TLS connection still in its handshake once
//! this turn's handshakes are spent (`HANDSHAKES_PER_TURN`, resumed next
//! turn like a spent read budget).

use log::debug;

use super::{HANDSHAKES_PER_TURN, MAX_READS_PER_TURN, Server};
use crate::conn::Received;
use crate::http::MAX_HEAD;
use crate::timer::{Timer, TimerKind};

impl Server {
    /// Data (or EOF, or an error) on a connection, or a connection whose
    /// read budget ran out last turn.
    ///
    /// `short_read_drains`: a read that returns less than the buffer holds
    /// has emptied the socket, so we stop there instead of paying one more
    /// `recv` just to hear WouldBlock (one syscall saved per message). This
    /// is safe with edge-triggered epoll because every later arrival,
    /// data or FIN, queues a fresh event. It is false when the event already
    /// said the peer closed (that FIN would raise no new event, so we read
    /// on until the 0) and for the read budget's second go.
    pub(super) fn on_readable(&mut self, key: usize, short_read_drains: bool) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.is_dead() {
            return;
        }
        if conn.is_tls_handshaking() {
            // Handshakes are the costly reads; past this turn's share, the
            // rest wait for the next turn.
            if self.handshakes >= HANDSHAKES_PER_TURN {
                self.metrics.tls_handshakes_deferred += 1;
                return self.read_again(key);
            }
            self.handshakes += 1;
        }
        // Whatever it sent gets its answer this turn.
        conn.set_urgent();
        if conn.is_websocket() {
            return self.read_ws(key, short_read_drains);
        }
        // Requests already buffered first: pipelined behind an answer that
        // waited for storage, or for the output queue to drain.
        if let Some(leftover) = self.process_http(key) {
            self.feed_ws(key, &leftover, false);
            return self.read_ws(key, short_read_drains);
        }
        self.read_http(key, short_read_drains);
    }

    /// HTTP phase: feed the request reader and answer whole requests.
    fn read_http(&mut self, key: usize, short_read_drains: bool) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.is_closing() {
                return self.read_and_discard(key);
            }
            if conn.http_input_paused(MAX_HEAD + self.cfg.max_body) {
                // Left unread until the answers leave (then we come back).
                return;
            }
            match conn.receive(&mut self.scratch, self.now) {
                Received::Data(n) => {
                    self.metrics.bytes_in += n as u64;
                    let drained = conn.drained_after(n, self.scratch.len());
                    conn.push_http(self.scratch.get(..n).unwrap_or_default());
                    if let Some(leftover) = self.process_http(key) {
                        // Upgraded: the rest is WebSocket input.
                        self.feed_ws(key, &leftover, false);
                        return self.read_ws(key, short_read_drains);
                    }
                    if short_read_drains && drained {
                        return;
                    }
                }
                // EOF: the client is done sending. Answer what is whole, then close.
                Received::Eof => {
                    if conn.close_after_flush() {
                        // An answer the client never reads must not hold
                        // the socket forever.
                        let (serial, at) = (conn.serial(), self.now + self.cfg.idle_timeout);
                        self.timers.arm(Timer { at, key, serial, kind: TimerKind::Linger });
                    }
                    if let Some(leftover) = self.process_http(key) {
                        // An upgrade whose frames came before the FIN. If
                        // some wait (posts in flight), so does the FIN: a
                        // read after it returns 0 again when reads resume.
                        if self.feed_ws(key, &leftover, false) {
                            self.feed_ws(key, &[], true);
                        }
                        return;
                    }
                    self.mark_dirty(key);
                    return;
                }
                Received::Drained => return,
                Received::Gone(e) => {
                    debug!("read #{}: {e}", conn.serial());
                    return self.kill(key);
                }
            }
        }
        // Budget spent with data possibly left: come back next turn.
        self.read_again(key);
    }

    /// WebSocket phase: read frames and handle each complete message. A
    /// chat member with too many posts in flight is not read (see
    /// `pressure.rs`): first what it sent before is decoded, then the socket
    /// is read only while its allowance lasts.
    fn read_ws(&mut self, key: usize, short_read_drains: bool) {
        let held = match self.conns.get_mut(key) {
            Some(conn) => conn.take_held(),
            None => return,
        };
        if !held.is_empty() && !self.decode_ws(key, &held, false) {
            // Still too many in flight: the rest stays held.
            return;
        }
        for _ in 0..MAX_READS_PER_TURN {
            if self.read_allowance(key) == 0 && self.conns.get(key).is_some_and(|c| !c.is_closing()) {
                // Whatever waits in the socket stays there until some posts
                // complete; a resume reads on until WouldBlock.
                return self.pause_reads(key);
            }
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.is_closing() {
                return self.read_and_discard(key);
            }
            match conn.receive(&mut self.scratch, self.now) {
                Received::Data(n) => {
                    self.metrics.bytes_in += n as u64;
                    // Lend the scratch buffer out while handlers run (they
                    // need `&mut self`); it comes back right after.
                    let drained = conn.drained_after(n, self.scratch.len());
                    let scratch = std::mem::take(&mut self.scratch);
                    let all_taken = self.feed_ws(key, scratch.get(..n).unwrap_or_default(), false);
                    self.scratch = scratch;
                    if !all_taken || (short_read_drains && drained) {
                        return;
                    }
                }
                Received::Eof => {
                    self.feed_ws(key, &[], true);
                    return;
                }
                Received::Drained => return,
                // Reset or other error: this peer is gone, silently.
                Received::Gone(e) => {
                    debug!("read #{}: {e}", conn.serial());
                    return self.kill(key);
                }
            }
        }
        self.read_again(key);
    }

    /// Reads and throws away the input of a connection that is closing
    /// (after our last answer or close frame), until the client's FIN.
    fn read_and_discard(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.discard_input(&mut self.scratch) {
            self.kill(key);
        }
    }

    /// Comes back to `key` next turn (its budget ran out, or input waits
    /// behind an answer that has now gone out).
    pub(super) fn read_again(&mut self, key: usize) {
        if let Some(conn) = self.conns.get(key) {
            self.more_to_read.push((key, conn.serial()));
        }
    }

    /// Connections listed by [`Server::read_again`] get their go.
    pub(super) fn resume_reads(&mut self) {
        let pending = std::mem::take(&mut self.more_to_read);
        for (key, serial) in pending {
            if self.conns.get(key).is_some_and(|c| c.serial() == serial && !c.is_dead()) {
                self.on_readable(key, false);
            }
        }
    }
}
