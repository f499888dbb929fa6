//! HTTP on a connection: take whole requests from its reader (the framing
//! itself is pure: `http/framing.rs`), have each answered (`request.rs`),
//! and queue the answers in the order the requests came.
//!
//! An answer that waits for storage parks the connection: requests
//! pipelined behind it stay in the reader until the answer is queued
//! ([`Server::answer_parked`]), so answers never overtake each other.

use super::Server;
use super::request::Answer;
use crate::conn::{HttpStep, WsState};
use crate::response::Response;
use crate::timer::{Timer, TimerKind};

/// What a client that sent `Expect: 100-continue` waits for (RFC 9110 §10.1.1).
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

impl Server {
    /// Answers every whole request in the connection's reader, in order
    /// (pipelining). Returns the bytes that followed an upgrade request, if
    /// one switched the connection to WebSocket: the caller feeds them to
    /// the session.
    pub(super) fn process_http(&mut self, key: usize) -> Option<Vec<u8>> {
        loop {
            let (now, max_pending, max_body) = (self.now, self.cfg.max_pending, self.cfg.max_body);
            let conn = self.conns.get_mut(key)?;
            match conn.next_request(now, max_pending, max_body) {
                HttpStep::Wait => return None,
                HttpStep::Started => {
                    let (serial, at) = (conn.serial(), now + self.cfg.header_timeout);
                    self.timers.arm(Timer { at, key, serial, kind: TimerKind::Http });
                }
                HttpStep::Continue => {
                    conn.queue_bytes(CONTINUE);
                    self.mark_dirty(key);
                }
                HttpStep::Reject { status, reason } => {
                    self.respond(key, Response::text(status, reason).close(true));
                    return None;
                }
                HttpStep::Request(request) => match self.on_request(key, request) {
                    Answer::Now(response) => self.respond(key, response),
                    // The storage thread is reading: requests behind this
                    // one wait in the reader.
                    Answer::Later(parked) => {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.park(parked);
                        }
                    }
                    Answer::Upgraded(leftover) => return Some(leftover),
                },
            }
        }
    }

    /// Queues `response` on connection `key`; a closing response is its last.
    pub(super) fn respond(&mut self, key: usize, response: Response) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        self.metrics.http_requests += 1;
        let serial = conn.serial();
        // `--hsts`: browsers that saw this over TLS use https:// only,
        // for two years, whatever link or address they are given.
        let response = if self.cfg.hsts && conn.is_tls() {
            response.header("Strict-Transport-Security", "max-age=63072000")
        } else {
            response
        };
        if conn.queue_response(response, self.date.now()) {
            // A last answer the client never reads must not hold the socket
            // forever: it gets an idle timeout to be taken, then is dropped.
            let at = self.now + self.cfg.idle_timeout;
            self.timers.arm(Timer { at, key, serial, kind: TimerKind::Linger });
        } else if !conn.is_closing() && !conn.is_websocket() {
            // Idle keep-alive timing starts once the answer is queued.
            let at = self.now + self.cfg.idle_timeout;
            self.timers.arm(Timer { at, key, serial, kind: TimerKind::Http });
        }
        self.mark_dirty(key);
    }

    /// Switches connection `key` to the WebSocket phase; returns the bytes
    /// that came glued to the upgrade request.
    pub(super) fn upgrade(&mut self, key: usize, ws: WsState) -> Vec<u8> {
        let Some(conn) = self.conns.get_mut(key) else { return Vec::new() };
        let leftover = conn.upgrade(ws);
        self.metrics.upgrades += 1;
        let (serial, at) = (conn.serial(), self.now + self.cfg.ping_interval);
        self.timers.arm(Timer { at, key, serial, kind: TimerKind::Heartbeat });
        leftover
    }

    /// Sends the answer a parked HTTP connection waited for; what was
    /// pipelined behind it is served when the connection is read next
    /// (this turn's end makes that immediate).
    pub(super) fn answer_parked(&mut self, key: usize, serial: u64, status: u16, body: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.serial() != serial {
            return;
        }
        let Some(parked) = conn.unpark() else { return };
        let response = Response::json(status, body)
            .cors(parked.cors.as_deref())
            .head_only(parked.head_only)
            .close(!parked.keep_alive);
        self.respond(key, response);
        self.read_again(key);
    }
}
