//! Reading: the bytes a readable event announced, handed to the
//! connection's phase (HTTP requests or WebSocket frames).
//!
//! mio registers sockets edge-triggered. The rule from mio's `Poll` docs we
//! rely on: "With edge-triggered events, operations **must** be performed on
//! the `Source` until `WouldBlock` is returned." Every read loop here runs
//! until `WouldBlock`, or parks the connection in `more_to_read` to be
//! resumed next turn, so one fast sender cannot starve the others.

use std::io::{self, Read};

use log::debug;

use super::*;

impl Server {
    /// Data (or EOF, or an error) on a connection.
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
        if conn.dead {
            return;
        }
        // Whatever it sent gets its answer this turn.
        conn.urgent = true;
        if conn.close_after_flush {
            self.read_and_discard(key);
            return;
        }
        match conn.phase {
            Phase::Http(_) => self.read_http(key, short_read_drains),
            Phase::WebSocket(_) => self.read_ws(key, short_read_drains),
        }
    }

    /// HTTP phase: append to the request buffer and answer complete requests.
    pub(super) fn read_http(&mut self, key: usize, short_read_drains: bool) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Phase::Http(http) = &mut conn.phase else {
                // Upgraded during this loop: the rest is WebSocket input.
                return self.read_ws(key, short_read_drains);
            };
            if http.parked.is_some() || conn.close_after_flush || conn.dead {
                return;
            }
            match conn.socket.read(&mut self.scratch) {
                // EOF: the client is done sending. Answer what is complete, then close.
                Ok(0) => {
                    conn.close_after_flush = true;
                    let (serial, at) = (conn.serial, self.now + self.cfg.idle_timeout);
                    self.timers.arm(Timer { at, key, serial, kind: TimerKind::Linger });
                    self.process_http(key);
                    self.mark_dirty(key);
                    return;
                }
                Ok(n) => {
                    conn.last_read = self.now;
                    self.metrics.bytes_in += n as u64;
                    http.buf.extend_from_slice(self.scratch.get(..n).unwrap_or_default());
                    self.process_http(key);
                    if short_read_drains && n < self.scratch.len() {
                        return;
                    }
                }
                // Drained: wait for the next readable event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted by a signal: read again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Reset or other error: this peer is gone.
                Err(e) => {
                    debug!("read #{}: {e}", conn.serial);
                    return self.kill(key);
                }
            }
        }
        // Budget spent with data possibly left: come back next turn.
        if let Some(conn) = self.conns.get(key) {
            self.more_to_read.push((key, conn.serial));
        }
    }

    /// WebSocket phase: read frames and handle each complete message.
    pub(super) fn read_ws(&mut self, key: usize, short_read_drains: bool) {
        for _ in 0..MAX_READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.dead || conn.close_after_flush {
                return;
            }
            match conn.socket.read(&mut self.scratch) {
                Ok(0) => {
                    let scratch = std::mem::take(&mut self.scratch);
                    self.feed_ws(key, &[], true);
                    self.scratch = scratch;
                    return;
                }
                Ok(n) => {
                    conn.last_read = self.now;
                    self.metrics.bytes_in += n as u64;
                    // Lend the scratch buffer out while handlers run (they
                    // may need `&mut self`); it comes back right after.
                    let scratch = std::mem::take(&mut self.scratch);
                    self.feed_ws(key, scratch.get(..n).unwrap_or_default(), false);
                    self.scratch = scratch;
                    if short_read_drains && n < self.scratch.len() {
                        return;
                    }
                }
                // Drained: wait for the next readable event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // Interrupted by a signal: read again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Reset or other error: this peer is gone, silently.
                Err(e) => {
                    debug!("read #{}: {e}", conn.serial);
                    return self.kill(key);
                }
            }
        }
        if let Some(conn) = self.conns.get(key) {
            self.more_to_read.push((key, conn.serial));
        }
    }

    /// Runs `bytes` through the connection's WebSocket session and handles
    /// the messages that complete.
    pub(crate) fn feed_ws(&mut self, key: usize, bytes: &[u8], eof: bool) {
        let mut messages = std::mem::take(&mut self.incoming);
        // The inspector sees the raw bytes first (tee), then the session.
        let descriptions = match self.conns.get_mut(key).and_then(|c| c.ws()) {
            Some(crate::conn::WsState { role: crate::conn::Role::Inspected(inspector), .. }) => {
                inspector.observe(bytes)
            }
            _ => Vec::new(),
        };
        for description in descriptions {
            self.inspector_send(key, description.as_bytes());
        }
        {
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Phase::WebSocket(ws) = &mut conn.phase else { return };
            ws.session.feed(bytes, eof, &mut conn.out, &mut messages);
        }
        for message in messages.drain(..) {
            self.on_ws_message(key, message);
        }
        self.incoming = messages;
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::WebSocket(ws) = &mut conn.phase else { return };
        match ws.session.closing() {
            Closing::No | Closing::Sent => {}
            Closing::Done | Closing::Failed => {
                if eof && conn.out.is_empty() {
                    return self.kill(key);
                }
                conn.close_after_flush = true;
            }
        }
        if eof {
            // The client closed its side without finishing the handshake.
            conn.close_after_flush = true;
        }
        self.mark_dirty(key);
    }

    /// Reads and throws away input of a connection that is closing (after
    /// our last response or close frame), until the client's FIN.
    pub(super) fn read_and_discard(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            match conn.socket.read(&mut self.scratch) {
                // The client's FIN. If our answer is still queued (a client
                // that half-closed after sending, like `nc -N`), let it
                // finish: the deadline armed with `close_after_flush` bounds it.
                Ok(0) if !conn.out.is_empty() && !conn.lingering => return,
                Ok(0) => return self.kill(key),
                // Our last words are sent; what the client still says (its
                // close frame, pipelined requests) needs no answer.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.kill(key),
            }
        }
    }

    /// Connections whose read budget ran out last turn get another go.
    pub(super) fn resume_reads(&mut self) {
        let pending = std::mem::take(&mut self.more_to_read);
        for (key, serial) in pending {
            if self.conns.get(key).is_some_and(|c| c.serial == serial && !c.dead) {
                self.on_readable(key, false);
            }
        }
    }
}
