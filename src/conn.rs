//! A client connection: its socket, its output, the phase it is in, and how
//! far it is from being closed.
//!
//! A connection is two small state machines, both private to this file and
//! changed only through the methods below (sozu's sessions are the model):
//!
//! ```text
//!  Phase:  accept ──► Http ──(GET + Upgrade: websocket, valid)──► WebSocket
//!                      │ ▲
//!                      │ └── keep-alive: the next request
//!
//!  Life:   Open ──► Closing ──(output flushed, write side shut)──► Lingering
//!            │         │                                             │
//!            └─────────┴──────────── Dead (reaped this turn) ◄───────┘
//! ```
//!
//! - **Open**: requests are answered, frames handled.
//! - **Closing { answering }**: nothing new is read as a request or a
//!   message; the queued output is flushed, then the write side is shut.
//!   `answering` is true after the client's FIN (the requests it pipelined
//!   before it still get their answers) and false after a last answer
//!   (`Connection: close`, an error, a close frame), after which nothing
//!   more is answered.
//! - **Lingering**: everything is sent and our FIN is out; we read and
//!   discard until the client's FIN (or a deadline), so that unread input
//!   cannot turn our last bytes into a reset.
//! - **Dead**: the reactor reaps it at the end of the turn; nothing more is
//!   done with it. Any state can die (a reset, a deadline).
//!
//! Each phase owns only what it needs: the HTTP phase its request reader,
//! the WebSocket phase its protocol session and its endpoint role (a room
//! membership, an inspector). The request reader is dropped at the upgrade,
//! so an idle WebSocket carries nothing of its HTTP past.
//!
//! This file and the reactor (`server/`) are the only code that touches a
//! socket: reads and writes happen here, called by the reactor when an
//! event or the end of a turn says so.

use std::io::{self, Read};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::Message;

use crate::chat::Membership;
use crate::http::framing::{Framed, Request, RequestReader};
use crate::inspect::Inspector;
use crate::outbuf::{Chunk, Flushed, OutQueue};
use crate::response::Response;
use crate::route::Endpoint;
use crate::ws::{Closing, Session};

/// Where a connection stands in its protocol.
#[derive(Debug)]
enum Phase {
    /// Reading requests and answering them.
    Http(HttpState),
    /// Speaking WebSocket frames (boxed: the larger variant, and most
    /// connections of a chat server spend their life in it).
    WebSocket(Box<WsState>),
}

/// How far a connection is from being closed (see the file's header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Open,
    Closing { answering: bool },
    Lingering,
    Dead,
}

/// Which request heads keep their raw bytes: the frame inspector's, which
/// shows a learner its upgrade request exactly as it arrived.
fn keeps_raw_head(head: &crate::http::Head) -> bool {
    head.path() == "/ws/inspect"
}

/// The HTTP phase.
#[derive(Debug, Default)]
struct HttpState {
    /// Received bytes, cut into requests (pipelining, bodies, limits).
    reader: RequestReader,
    /// When the request now arriving started (for `--header-timeout`);
    /// `None` while the connection is idle between requests.
    started: Option<Instant>,
    /// Requests answered on this connection.
    served: u64,
    /// Waiting for the storage thread to answer a request; later pipelined
    /// requests stay in the reader until then, so answers keep their order.
    parked: Option<Parked>,
}

/// How to send an answer that had to wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parked {
    /// The request was HEAD: send no body.
    pub(crate) head_only: bool,
    /// Keep the connection open afterwards.
    pub(crate) keep_alive: bool,
}

/// The WebSocket phase.
#[derive(Debug)]
pub(crate) struct WsState {
    /// tungstenite's protocol state over our buffers.
    session: Session,
    /// Which endpoint this socket was upgraded to.
    endpoint: Endpoint,
    /// A ping is outstanding since this instant (`--ping-timeout` runs).
    ping_sent: Option<Instant>,
    /// Per-endpoint state (chat membership, inspector...).
    role: Role,
}

impl WsState {
    /// A fresh session on `endpoint`, accepting messages up to `max_message` bytes.
    pub(crate) fn new(endpoint: Endpoint, max_message: usize) -> WsState {
        WsState { session: Session::new(max_message), endpoint, ping_sent: None, role: Role::None }
    }

    /// What the endpoint kept for this connection (given back at reap).
    pub(crate) fn into_role(self) -> Role {
        self.role
    }
}

/// What an endpoint keeps per connection.
#[derive(Debug, Default)]
pub(crate) enum Role {
    /// Nothing (echo endpoints).
    #[default]
    None,
    /// A member of a chat room.
    Member(Membership),
    /// Receiving the stats feed.
    StatsViewer,
    /// Being inspected: the raw bytes of this socket are described.
    Inspected(Box<Inspector>),
}

/// What a read from the socket gave.
#[derive(Debug)]
pub(crate) enum Received {
    /// `n` bytes, at the start of the buffer.
    Data(usize),
    /// The client's FIN: it will send nothing more.
    Eof,
    /// Nothing more for now (WouldBlock): wait for the next event.
    Drained,
    /// A reset or another error: the peer is gone.
    Gone(io::Error),
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

/// What the heartbeat found (see [`Connection::heartbeat`]).
#[derive(Debug)]
pub(crate) enum Heartbeat {
    /// Not a WebSocket.
    None,
    /// Check again then.
    Next(Instant),
    /// A ping was queued: flush it; check again then.
    Pinged(Instant),
    /// The ping went unanswered: drop the connection.
    Unanswered,
}

/// What finishing the output means (see [`Connection::linger`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Linger {
    /// Already lingering or dead: nothing to do.
    Already,
    /// Nothing can still arrive that needs waiting for: drop it now.
    CloseNow,
    /// The write side is shut; wait (bounded) for the client's FIN.
    Started,
}

/// What a graceful shutdown does with a connection (see [`Connection::on_shutdown`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ShutdownStep {
    /// Leave it: its answer (or a first request) is still on its way.
    Wait,
    /// Idle between requests: close it, nothing is lost.
    Drop,
    /// It was told (a 1001 close frame, or its last answer): flush it.
    Flush,
}

/// A client connection.
#[derive(Debug)]
pub(crate) struct Connection {
    /// The socket. Only this file reads and writes it.
    socket: TcpStream,
    /// A number unique over the server's life. Slab keys are reused after a
    /// close, so timers and storage replies carry (key, serial) and check both.
    serial: u64,
    /// The client's address (or, behind a trusted proxy, X-Forwarded-For's).
    ip: IpAddr,
    /// `ip` is counted in the per-address limit (released at reap).
    ip_counted: bool,
    /// Came in through `--admin-bind` (operations endpoints only).
    admin: bool,
    /// Everything waiting to be written, in order.
    out: OutQueue,
    phase: Phase,
    life: Life,
    /// Last time bytes arrived (idle and heartbeat timers compare with it).
    last_read: Instant,
    /// In the reactor's list of connections to flush this turn.
    dirty: bool,
    /// Its output answers something it sent (its own post's copy, a
    /// response): flushed at the end of the turn even when the fan-out to
    /// mere listeners is held back (see `server/flush.rs`).
    urgent: bool,
    /// The last flush left output behind (the kernel's send buffer was
    /// full): it resumes on the WRITABLE event.
    stalled: bool,
}

impl Connection {
    /// A freshly accepted connection, in the HTTP phase.
    pub(crate) fn new(socket: TcpStream, serial: u64, ip: IpAddr, ip_counted: bool, admin: bool, now: Instant) -> Self {
        Connection {
            socket,
            serial,
            ip,
            ip_counted,
            admin,
            out: OutQueue::new(),
            phase: Phase::Http(HttpState {
                reader: RequestReader::with_raw_head(keeps_raw_head),
                ..HttpState::default()
            }),
            life: Life::Open,
            last_read: now,
            dirty: false,
            urgent: false,
            stalled: false,
        }
    }

    // ----- identity -----

    /// Its serial (see the field).
    pub(crate) fn serial(&self) -> u64 {
        self.serial
    }

    /// The client's address, and whether it counts toward `--max-per-ip`.
    pub(crate) fn ip(&self) -> (IpAddr, bool) {
        (self.ip, self.ip_counted)
    }

    /// Behind a trusted proxy: the address X-Forwarded-For named (if any),
    /// counted from now on when `counted`.
    pub(crate) fn set_client_ip(&mut self, ip: Option<IpAddr>, counted: bool) {
        if let Some(ip) = ip {
            self.ip = ip;
        }
        self.ip_counted = counted;
    }

    /// Whether it came in through `--admin-bind`.
    pub(crate) fn is_admin(&self) -> bool {
        self.admin
    }

    // ----- life -----

    /// Marked for reaping.
    pub(crate) fn is_dead(&self) -> bool {
        self.life == Life::Dead
    }

    /// Closing, lingering or dead: nothing new is answered or broadcast to it.
    pub(crate) fn is_closing(&self) -> bool {
        self.life != Life::Open
    }

    /// Whether it is a WebSocket.
    pub(crate) fn is_websocket(&self) -> bool {
        matches!(self.phase, Phase::WebSocket(_))
    }

    /// Marks it dead; `true` the first time (the reactor then lists it for the reap).
    pub(crate) fn kill(&mut self) -> bool {
        let first = self.life != Life::Dead;
        self.life = Life::Dead;
        first
    }

    /// Finishes once the queued output is flushed; requests already
    /// buffered are still answered (the client sent its FIN).
    /// `true` if it was open until now.
    pub(crate) fn close_after_flush(&mut self) -> bool {
        match self.life {
            Life::Open => {
                self.life = Life::Closing { answering: true };
                true
            }
            _ => false,
        }
    }

    /// The answer just queued is the last: nothing after it is answered.
    /// `true` if it was open until now.
    fn last_answer(&mut self) -> bool {
        let was_open = self.life == Life::Open;
        if matches!(self.life, Life::Open | Life::Closing { .. }) {
            self.life = Life::Closing { answering: false };
        }
        was_open
    }

    /// Everything is flushed: shut the write side and wait for the client's FIN.
    pub(crate) fn linger(&mut self) -> Linger {
        if matches!(self.life, Life::Lingering | Life::Dead) {
            return Linger::Already;
        }
        self.life = Life::Lingering;
        // A finished close handshake means the client has sent its last
        // frame: nothing can still arrive to turn our FIN into a reset.
        if let Phase::WebSocket(ws) = &self.phase
            && ws.session.closing() == Closing::Done
        {
            return Linger::CloseNow;
        }
        if self.socket.shutdown(std::net::Shutdown::Write).is_err() {
            return Linger::CloseNow;
        }
        Linger::Started
    }

    /// What a graceful shutdown does here: a WebSocket is told 1001; an
    /// HTTP connection's answer under way becomes its last.
    pub(crate) fn on_shutdown(&mut self) -> ShutdownStep {
        match &mut self.phase {
            Phase::WebSocket(ws) => {
                ws.session.close(1001, "server shutting down", &mut self.out);
                self.close_after_flush();
                ShutdownStep::Flush
            }
            Phase::Http(http) => {
                if let Some(parked) = &mut http.parked {
                    // The answer waits for storage: it will be the
                    // connection's last (closing now would lose it).
                    parked.keep_alive = false;
                    ShutdownStep::Wait
                } else if !self.out.is_empty() {
                    self.close_after_flush();
                    ShutdownStep::Flush
                } else if http.reader.is_empty() && http.served > 0 {
                    ShutdownStep::Drop
                } else {
                    // A first request (or the rest of one) may be on its
                    // way; closing now would reset it unanswered. It is
                    // answered, with `Connection: close`.
                    ShutdownStep::Wait
                }
            }
        }
    }

    // ----- input -----

    /// Reads what the socket has into `buf`. A signal's EINTR is retried here.
    pub(crate) fn receive(&mut self, buf: &mut [u8], now: Instant) -> Received {
        loop {
            return match self.socket.read(buf) {
                Ok(0) => Received::Eof,
                Ok(n) => {
                    self.last_read = now;
                    Received::Data(n)
                }
                // Drained: wait for the next readable event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Received::Drained,
                // Interrupted by a signal: read again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Reset or another error: this peer is gone.
                Err(e) => Received::Gone(e),
            };
        }
    }

    // ----- HTTP -----

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
            http.started = None;
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
        matches!(&self.phase, Phase::Http(http) if http.parked.is_some() || http.reader.buffered() > cap)
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
            http.parked = Some(parked);
        }
    }

    /// The parked request's answer came: how to send it (`None` if nothing waits).
    pub(crate) fn unpark(&mut self) -> Option<Parked> {
        match &mut self.phase {
            Phase::Http(http) => http.parked.take(),
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

    // ----- WebSocket -----

    /// Runs `bytes` (or the end of the stream) through the WebSocket
    /// session; complete messages go to `messages`, protocol answers (pongs,
    /// close replies) to the output queue.
    pub(crate) fn feed_ws(&mut self, bytes: &[u8], eof: bool, messages: &mut Vec<Message>) {
        if let Phase::WebSocket(ws) = &mut self.phase {
            ws.session.feed(bytes, eof, &mut self.out, messages);
        }
    }

    /// After input was handled: a finished or failed close handshake, or
    /// the client's FIN, closes the connection. `true` if it can be
    /// dropped at once (nothing left to send).
    pub(crate) fn after_ws_input(&mut self, eof: bool) -> bool {
        let Phase::WebSocket(ws) = &self.phase else { return false };
        let over = matches!(ws.session.closing(), Closing::Done | Closing::Failed);
        if over && eof && self.out.is_empty() {
            return true;
        }
        if over || eof {
            self.close_after_flush();
        }
        false
    }

    /// Whether data frames may still be sent (upgraded, no close frame sent).
    pub(crate) fn ws_open(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket(ws) if ws.session.is_open())
    }

    /// The endpoint this WebSocket serves.
    pub(crate) fn endpoint(&self) -> Option<&Endpoint> {
        match &self.phase {
            Phase::WebSocket(ws) => Some(&ws.endpoint),
            Phase::Http(_) => None,
        }
    }

    /// Gives the WebSocket its endpoint role. A chat member's room name
    /// lives in the room: the endpoint forgets its copy (10,000 idle
    /// members would each carry one).
    pub(crate) fn set_role(&mut self, role: Role) {
        if let Phase::WebSocket(ws) = &mut self.phase {
            if let (Role::Member(_), Endpoint::Room(name)) = (&role, &mut ws.endpoint) {
                *name = String::new();
            }
            ws.role = role;
        }
    }

    /// The endpoint role, to act on it.
    pub(crate) fn role_mut(&mut self) -> Option<&mut Role> {
        match &mut self.phase {
            Phase::WebSocket(ws) => Some(&mut ws.role),
            Phase::Http(_) => None,
        }
    }

    /// Whether it receives the stats feed.
    pub(crate) fn is_stats_viewer(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket(ws) if matches!(ws.role, Role::StatsViewer))
    }

    /// A pong arrived: the outstanding ping is answered.
    pub(crate) fn on_pong(&mut self) {
        if let Phase::WebSocket(ws) = &mut self.phase {
            ws.ping_sent = None;
        }
    }

    /// Queues a text frame if data may still be sent; whether it was.
    pub(crate) fn send_text(&mut self, payload: &[u8]) -> bool {
        let open = self.ws_open();
        if open {
            self.out.push(Chunk::Owned(crate::frame::text(payload)));
        }
        open
    }

    /// Queues a frame to an inspected connection and lets its inspector
    /// note the header (shown with the next description). Whether it was queued.
    pub(crate) fn send_inspected(&mut self, frame: Vec<u8>) -> bool {
        let Phase::WebSocket(ws) = &mut self.phase else { return false };
        if !ws.session.is_open() {
            return false;
        }
        if let Role::Inspected(inspector) = &mut ws.role {
            inspector.sent(&frame);
        }
        self.out.push(Chunk::Owned(frame));
        true
    }

    /// Starts the closing handshake with `code`; the connection closes once
    /// the handshake is done or the output is flushed.
    pub(crate) fn close_ws(&mut self, code: u16, reason: &str) {
        if let Phase::WebSocket(ws) = &mut self.phase {
            ws.session.close(code, reason, &mut self.out);
            self.close_after_flush();
        }
    }

    /// The WebSocket heartbeat: ping when quiet, give up when the ping goes
    /// unanswered (any bytes from the client count as an answer).
    pub(crate) fn heartbeat(&mut self, now: Instant, interval: Duration, timeout: Duration) -> Heartbeat {
        let last_read = self.last_read;
        let Phase::WebSocket(ws) = &mut self.phase else { return Heartbeat::None };
        match ws.ping_sent {
            Some(sent) if last_read >= sent => {
                ws.ping_sent = None;
                Heartbeat::Next(last_read + interval)
            }
            Some(sent) if now >= sent + timeout => Heartbeat::Unanswered,
            Some(sent) => Heartbeat::Next(sent + timeout),
            None if now >= last_read + interval => {
                // A quiet connection: give back the queue's spare capacity too.
                self.out.shrink();
                ws.session.ping(b"chatroom", &mut self.out);
                ws.ping_sent = Some(now);
                Heartbeat::Pinged(now + timeout)
            }
            None => Heartbeat::Next(last_read + interval),
        }
    }

    /// The WebSocket state, taken at reap (its role has cleaning up to do).
    pub(crate) fn into_ws(self) -> Option<WsState> {
        match self.phase {
            Phase::WebSocket(ws) => Some(*ws),
            Phase::Http(_) => None,
        }
    }

    // ----- output -----

    /// Bytes waiting to be written.
    pub(crate) fn out_len(&self) -> usize {
        self.out.len()
    }

    /// Queues one chunk (a broadcast's shared frame, say).
    pub(crate) fn push(&mut self, chunk: Chunk) {
        self.out.push(chunk);
    }

    /// Whether it still takes broadcasts (open, not closing).
    pub(crate) fn takes_broadcasts(&self) -> bool {
        self.life == Life::Open
    }

    /// Puts it on the turn's flush list; `true` if it was not there yet.
    pub(crate) fn mark_dirty(&mut self) -> bool {
        let first = !self.dirty && self.life != Life::Dead;
        if first {
            self.dirty = true;
        }
        first
    }

    /// On the turn's flush list.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Its output answers something it sent: written this turn, never held.
    pub(crate) fn set_urgent(&mut self) {
        self.urgent = true;
    }

    /// Whether its output must go this turn (see [`Connection::set_urgent`]).
    pub(crate) fn is_urgent(&self) -> bool {
        self.urgent
    }

    /// The last flush left output behind.
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Writes the queued output: one `sendmsg` for all of it when the socket
    /// takes it. Returns how it went and the bytes written.
    pub(crate) fn flush(&mut self) -> (io::Result<Flushed>, usize) {
        self.dirty = false;
        self.urgent = false;
        let before = self.out.len();
        let result = self.out.write_to(&mut self.socket);
        self.stalled = matches!(result, Ok(Flushed::Partial));
        (result, before - self.out.len())
    }

    /// Whether the output is flushed and the connection only waits to finish
    /// (closing, not yet lingering).
    pub(crate) fn done_sending(&self) -> bool {
        matches!(self.life, Life::Closing { .. }) && self.out.is_empty()
    }

    /// A client that leaves too much unread: its backlog is dropped and a
    /// 1008 close frame tried. `false` if it was closing already.
    pub(crate) fn drop_as_slow(&mut self) -> bool {
        if self.life != Life::Open {
            return false;
        }
        self.out.drop_unsent();
        if let Phase::WebSocket(ws) = &mut self.phase {
            ws.session.fail(1008, "slow consumer", &mut self.out);
        }
        self.last_answer();
        true
    }

    /// Reads and discards the input of a closing connection until the
    /// client's FIN. `true` when the connection can go: the FIN came (and
    /// our last bytes are out, or we already linger), or the peer is gone.
    pub(crate) fn discard_input(&mut self, buf: &mut [u8]) -> bool {
        loop {
            match self.socket.read(buf) {
                // The client's FIN. If our answer is still queued (a client
                // that half-closed after sending, like `nc -N`), let it
                // finish: the deadline armed at closing bounds it.
                Ok(0) => return self.out.is_empty() || self.life == Life::Lingering,
                // Our last words are sent; what the client still says (its
                // close frame, pipelined requests) needs no answer.
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return true,
            }
        }
    }
}
