//! A connection's HTTP phase: the request reader, the request being
//! answered or parked, and the deadlines that bound a slow client.

use std::time::{Duration, Instant};

use super::{Connection, Life, Phase, WsState};
use crate::http::framing::{Framed, Request, RequestReader};
use crate::response::Response;

/// Which request heads keep their raw bytes: the frame inspector's, which
/// shows a learner its upgrade request exactly as it arrived.
fn keeps_raw_head(head: &crate::http::Head) -> bool {
    head.path() == "/ws/inspect"
}

/// Which requests' bodies are read: the server API's writes (POST under
/// `/api/`). Every other body is skipped as it arrives.
fn takes_body(head: &crate::http::Head) -> bool {
    head.method == Some(crate::http::Method::Post) && head.path().starts_with("/api/")
}

/// The HTTP phase.
#[derive(Debug, Default)]
pub(super) struct HttpState {
    /// Received bytes, cut into requests (pipelining, bodies, limits).
    pub(super) reader: RequestReader,
    /// When the request now arriving started (for `--header-timeout`);
    /// `None` while the connection is idle between requests.
    pub(super) started: Option<Instant>,
    /// Requests answered on this connection.
    pub(super) served: u64,
    /// Waiting for the storage thread to answer a request; later pipelined
    /// requests stay in the reader until then, so answers keep their order.
    /// Boxed: rare, and a connection that never parks pays 8 bytes for it.
    pub(super) parked: Option<Box<Parked>>,
}

/// How to send an answer that had to wait.
#[derive(Debug, Clone)]
pub(crate) struct Parked {
    /// The request was HEAD: send no body.
    pub(crate) head_only: bool,
    /// Keep the connection open afterwards.
    pub(crate) keep_alive: bool,
    /// The listed cross-origin `Origin` the answer's CORS headers name.
    pub(crate) cors: Option<Box<str>>,
}

/// What the HTTP phase wants done next (see [`Connection::next_request`]).
#[derive(Debug)]
pub(crate) enum HttpStep {
    /// Nothing until more bytes arrive, an answer comes back from storage,
    /// or the output queue drains.
    Wait,
    /// A request began arriving after an earlier one was answered: its own
    /// header deadline starts now.
    Started,
    /// The client waits for `100 Continue` before sending its body.
    Continue,
    /// A whole request, to be answered.
    Request(Request),
    /// Bytes that cannot be served: answer `status` and close.
    Reject {
        /// 400, 411, 413, 417 or 431.
        status: u16,
        /// Said in the answer's body.
        reason: &'static str,
    },
}

/// What an HTTP connection's deadline found (see [`Connection::http_deadline`]).
#[derive(Debug)]
pub(crate) enum HttpDeadline {
    /// Nothing to time: parked, closing, or upgraded.
    None,
    /// Not yet: come back then.
    Later(Instant),
    /// A request did not arrive whole in time (408).
    SlowRequest,
    /// Idle between requests for too long: close quietly.
    Idle,
}

impl HttpState {
    /// A fresh connection's: nothing read yet.
    pub(super) fn new() -> HttpState {
        // Only the server API's writes take a body: every other body is
        // skipped as it arrives, and its request answered at the head.
        let reader = RequestReader::with_raw_head(keeps_raw_head).with_bodies(takes_body);
        HttpState { reader, ..HttpState::default() }
    }
}

impl Connection {
    /// Adds bytes read in the HTTP phase to the request reader.
    pub(crate) fn push_http(&mut self, bytes: &[u8]) {
        if let Phase::Http(http) = &mut self.phase {
            http.reader.push(bytes);
        }
    }

    /// The next thing to do with the buffered input: wait, answer a whole
    /// request, or refuse. `max_pending` stops a client that pipelines
    /// faster than it reads (its answers must leave first); `max_body`
    /// bounds a request body.
    pub(crate) fn next_request(&mut self, now: Instant, max_pending: usize, max_body: usize) -> HttpStep {
        let Phase::Http(http) = &mut self.phase else { return HttpStep::Wait };
        if http.parked.is_some() || self.life == Life::Dead {
            return HttpStep::Wait;
        }
        if matches!(self.life, Life::Closing { answering: false } | Life::Lingering) {
            // Closing after a last answer: later pipelined requests are not served.
            http.reader.clear();
            return HttpStep::Wait;
        }
        if http.reader.is_empty() {
            // Nothing to parse. The request's deadline keeps running while
            // its body is due (read or skipped); it ends between requests.
            if !http.reader.in_request() {
                http.started = None;
            }
            return HttpStep::Wait;
        }
        if self.out.len() >= max_pending {
            // Answer no more until the answers so far have left (the flush
            // resumes us), so the backlog cannot grow without bound in one turn.
            return HttpStep::Wait;
        }
        if http.started.is_none() {
            http.started = Some(now);
            // The first request is covered by the deadline armed at accept
            // (an earlier one); a later one needs its own.
            if http.served > 0 {
                return HttpStep::Started;
            }
        }
        match http.reader.next(max_body) {
            // Not whole yet: wait for more bytes.
            Framed::Incomplete => HttpStep::Wait,
            Framed::Continue => HttpStep::Continue,
            Framed::Request(request) => {
                http.started = None;
                http.served += 1;
                HttpStep::Request(request)
            }
            Framed::Reject { status, reason } => {
                http.reader.clear();
                HttpStep::Reject { status, reason }
            }
        }
    }

    /// Whether answered requests left more pipelined input to serve (the
    /// flush resumes such a connection once its queue has drained).
    pub(crate) fn has_pipelined_input(&self) -> bool {
        match &self.phase {
            Phase::Http(http) => {
                matches!(self.life, Life::Open | Life::Closing { answering: true })
                    && !http.reader.is_empty()
                    && http.parked.is_none()
            }
            Phase::WebSocket(_) => false,
        }
    }

    /// Whether reading more HTTP input must wait: a request is parked for
    /// storage, or more than `cap` bytes of requests already wait behind
    /// answers that have not left (a client pipelining faster than it
    /// reads). The rest stays in the kernel's buffer, which pushes back on
    /// the client, until the flush or the parked answer resumes us.
    pub(crate) fn http_input_paused(&self, cap: usize) -> bool {
        self.is_parked() || matches!(&self.phase, Phase::Http(http) if http.reader.buffered() > cap)
    }

    /// Whether an answer waits for storage: the connection must not close
    /// before it is sent.
    pub(crate) fn is_parked(&self) -> bool {
        matches!(&self.phase, Phase::Http(http) if http.parked.is_some())
    }

    /// Queues an HTTP answer. Returns whether the connection just stopped
    /// being open (the answer closes it), for the reactor to bound the close.
    pub(crate) fn queue_response(&mut self, response: Response, date: &str) -> bool {
        let closes = response.closes();
        response.write_into(&mut self.out, date);
        closes && self.last_answer()
    }

    /// Queues raw bytes (the 101, a `100 Continue`).
    pub(crate) fn queue_bytes(&mut self, bytes: &[u8]) {
        self.out.push_copy(bytes);
    }

    /// Waits for storage to answer the current request.
    pub(crate) fn park(&mut self, parked: Parked) {
        if let Phase::Http(http) = &mut self.phase {
            http.parked = Some(Box::new(parked));
        }
    }

    /// The parked request's answer came: how to send it (`None` if nothing waits).
    pub(crate) fn unpark(&mut self) -> Option<Parked> {
        match &mut self.phase {
            Phase::Http(http) => http.parked.take().map(|parked| *parked),
            Phase::WebSocket(_) => None,
        }
    }

    /// When the HTTP deadline falls, and what it means now.
    pub(crate) fn http_deadline(&mut self, now: Instant, header: Duration, idle: Duration) -> HttpDeadline {
        let Phase::Http(http) = &mut self.phase else { return HttpDeadline::None };
        if http.parked.is_some() || self.life != Life::Open {
            return HttpDeadline::None;
        }
        let (deadline, slow) = match http.started {
            Some(started) => (started + header, true),
            // Nothing received yet since accept (last_read starts at accept).
            None if http.served == 0 => (self.last_read + header, true),
            None => (self.last_read + idle, false),
        };
        if deadline > now {
            HttpDeadline::Later(deadline)
        } else if slow {
            http.reader.clear();
            HttpDeadline::SlowRequest
        } else {
            HttpDeadline::Idle
        }
    }

    /// Switches to the WebSocket phase. Returns the bytes that came glued
    /// to the upgrade request: a client may send its first frames without
    /// waiting for the 101.
    pub(crate) fn upgrade(&mut self, ws: WsState) -> Vec<u8> {
        match std::mem::replace(&mut self.phase, Phase::WebSocket(Box::new(ws))) {
            Phase::Http(http) => http.reader.into_rest(),
            Phase::WebSocket(_) => Vec::new(),
        }
    }
}
