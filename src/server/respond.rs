//! HTTP on a connection: cut its input into requests, queue their answers
//! in order, park one that waits for storage, and switch to WebSocket.

use super::*;

impl Server {
    /// Answers every complete request in the buffer, in order (pipelining).
    pub(super) fn process_http(&mut self, key: usize) {
        loop {
            let now = self.now;
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Phase::Http(http) = &mut conn.phase else { return };
            if http.parked.is_some() || conn.dead {
                return;
            }
            if http.skip > 0 {
                // Skip a GET's body exactly, so it is never parsed as a request.
                let n = (http.skip.min(http.buf.len() as u64)) as usize;
                http.buf.drain(..n);
                http.skip -= n as u64;
                if http.skip > 0 {
                    return;
                }
            }
            if http.buf.is_empty() {
                http.head_started = None;
                return;
            }
            if conn.final_answer {
                // Closing after an answer: later pipelined requests are not served.
                http.buf.clear();
                return;
            }
            if conn.out.len() >= self.cfg.max_pending {
                // A client pipelining faster than it reads: answer no more
                // until the answers so far have left (see `flush`), so its
                // backlog cannot grow without bound in one turn.
                return;
            }
            if http.head_started.is_none() {
                http.head_started = Some(now);
                // The first head is covered by the timer armed at accept
                // (its deadline is earlier); later ones need their own.
                if http.served > 0 {
                    let (serial, at) = (conn.serial, now + self.cfg.header_timeout);
                    self.timers.arm(Timer { at, key, serial, kind: TimerKind::Http });
                }
                continue;
            }
            match crate::http::parse_head(&http.buf) {
                // The head has not ended yet: wait for more bytes.
                Ok(None) => return,
                Err(e) => {
                    let (status, text) = match e {
                        crate::http::HeadError::Malformed => (400, "malformed request"),
                        crate::http::HeadError::TooLarge => (431, "request head too large (8 KiB at most)"),
                    };
                    http.buf.clear();
                    self.respond(key, Response::text(status, text).close(true));
                    return;
                }
                Ok(Some(mut head)) => {
                    if head.path() == "/ws/inspect" {
                        head.raw = http.buf.get(..head.len).unwrap_or_default().to_vec();
                    }
                    http.buf.drain(..head.len);
                    http.head_started = None;
                    http.served += 1;
                    match crate::http::body_of(&head) {
                        crate::http::Body::None => {}
                        crate::http::Body::Length(n) if n <= crate::http::MAX_SKIPPED_BODY => http.skip = n,
                        crate::http::Body::Length(_) => {
                            http.buf.clear();
                            self.respond(key, Response::text(413, "request body too large").close(true));
                            return;
                        }
                        crate::http::Body::Unsupported => {
                            http.buf.clear();
                            self.respond(key, Response::text(400, "request bodies are not accepted here").close(true));
                            return;
                        }
                    }
                    self.on_request(key, head);
                }
            }
        }
    }

    /// Queues `response` on connection `key`; a closing response ends it.
    pub(crate) fn respond(&mut self, key: usize, response: Response) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        self.metrics.http_requests += 1;
        if response.closes() {
            conn.final_answer = true;
        }
        if response.closes() && !conn.close_after_flush {
            conn.close_after_flush = true;
            // A last answer the client never reads must not hold the socket
            // forever: it gets an idle timeout to be taken, then is dropped.
            let (serial, at) = (conn.serial, self.now + self.cfg.idle_timeout);
            self.timers.arm(Timer { at, key, serial, kind: TimerKind::Linger });
        }
        response.write_into(&mut conn.out, self.date.now());
        // Idle keep-alive timing starts once the answer is queued.
        if !conn.close_after_flush
            && let Phase::Http(_) = conn.phase
        {
            let (serial, at) = (conn.serial, self.now + self.cfg.idle_timeout);
            self.timers.arm(Timer { at, key, serial, kind: TimerKind::Http });
        }
        self.mark_dirty(key);
    }

    /// Switches connection `key` to the WebSocket phase and feeds it the
    /// bytes that arrived glued to the head (a client may send its first
    /// frame without waiting for the 101).
    pub(crate) fn upgrade(&mut self, key: usize, ws: crate::conn::WsState) -> Vec<u8> {
        let Some(conn) = self.conns.get_mut(key) else { return Vec::new() };
        let leftover = match std::mem::replace(&mut conn.phase, Phase::WebSocket(Box::new(ws))) {
            Phase::Http(HttpState { buf, .. }) => buf,
            Phase::WebSocket(_) => Vec::new(),
        };
        self.metrics.upgrades += 1;
        let (serial, at) = (conn.serial, self.now + self.cfg.ping_interval);
        self.timers.arm(Timer { at, key, serial, kind: TimerKind::Heartbeat });
        leftover
    }

    /// A parked HTTP connection got its answer: serve what was pipelined
    /// behind it and read on (its socket may hold input we left unread).
    pub(crate) fn resume_http(&mut self, key: usize) {
        self.process_http(key);
        if let Some(conn) = self.conns.get(key) {
            self.more_to_read.push((key, conn.serial));
        }
    }
}

impl Server {
    /// Sends the answer a parked HTTP connection waited for, then serves
    /// whatever was pipelined behind it.
    pub(super) fn answer_parked(&mut self, key: usize, serial: u64, status: u16, body: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.serial != serial {
            return;
        }
        let Phase::Http(http) = &mut conn.phase else { return };
        let Some(parked) = http.parked.take() else { return };
        let response = Response::json(status, body).head_only(parked.head_only).close(!parked.keep_alive);
        self.respond(key, response);
        self.resume_http(key);
    }
}
