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
//! On a TLS listener the connection also owns a `crate::tls::TlsSession`,
//! between the socket and everything above: `receive` hands the phases
//! plaintext, `flush` encrypts the output queue, and the phases never know.
//!
//! The phases' own state and methods live beside this file: `http.rs`
//! and `ws.rs`. This folder and the reactor (`server/`) are the only code
//! that touches a client's socket: reads and writes happen here, called by
//! the reactor when an event or the end of a turn says so.

use std::io::{self, Read};
use std::net::IpAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::outbuf::{Chunk, Flushed, OutQueue};
use crate::tls::TlsSession;
use crate::ws::Closing;

mod http;
mod ws;

use http::HttpState;
pub(crate) use http::{HttpDeadline, HttpStep, Parked};
pub(crate) use ws::{Heartbeat, Role, WsState};

/// Where a connection stands in its protocol.
#[derive(Debug)]
enum Phase {
    /// Reading requests and answering them (boxed: a WebSocket, which
    /// most connections soon are, then carries one pointer for it).
    Http(Box<HttpState>),
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

/// What a read from the socket gave.
#[derive(Debug)]
pub enum Received {
    /// `n` bytes, at the start of the buffer.
    Data(usize),
    /// The client's FIN: it will send nothing more.
    Eof,
    /// Nothing more for now (WouldBlock): wait for the next event.
    Drained,
    /// A reset or another error: the peer is gone.
    Gone(io::Error),
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

/// Which listener a connection came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Door {
    /// `--bind`: the site, the API, the WebSockets (over TLS when it is on).
    Main,
    /// `--admin-bind`: the operations endpoints only.
    Admin,
    /// `--redirect-bind`: plain HTTP, answered with a redirect to
    /// `https://` (and ACME's http-01 challenges).
    Redirect,
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
    /// The listener it came through.
    door: Door,
    /// Its TLS state, on a TLS listener (boxed: plain connections carry
    /// one pointer for it).
    tls: Option<Box<TlsSession>>,
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
    pub(crate) fn new(
        socket: TcpStream,
        serial: u64,
        (ip, ip_counted): (IpAddr, bool),
        door: Door,
        tls: Option<TlsSession>,
        now: Instant,
    ) -> Self {
        Connection {
            socket,
            serial,
            ip,
            ip_counted,
            door,
            tls: tls.map(Box::new),
            out: OutQueue::new(),
            phase: Phase::Http(Box::new(HttpState::new())),
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

    /// The listener it came through.
    pub(crate) fn door(&self) -> Door {
        self.door
    }

    /// Whether it speaks TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether its TLS handshake is still under way (reading it costs
    /// key exchanges and signatures).
    pub(crate) fn is_tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
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

    /// Finishes once the queued output is flushed (after the client's FIN,
    /// a close frame, a shutdown); HTTP requests already buffered are still
    /// answered. `true` if it was open until now.
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
        if let Some(tls) = &mut self.tls {
            tls.close_notify(&mut self.socket);
        }
        if self.socket.shutdown(std::net::Shutdown::Write).is_err() {
            return Linger::CloseNow;
        }
        Linger::Started
    }

    /// What a graceful shutdown does here: a WebSocket is told 1001; an
    /// HTTP connection's answer under way becomes its last.
    pub(crate) fn on_shutdown(&mut self) -> ShutdownStep {
        let out_empty = self.out_is_empty();
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
                } else if !out_empty {
                    self.close_after_flush();
                    ShutdownStep::Flush
                } else if !http.reader.in_request() && http.served > 0 {
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

    /// Reads what the socket has into `buf`. A signal's EINTR is retried
    /// here. On TLS, `buf` gets the plaintext.
    pub(crate) fn receive(&mut self, buf: &mut [u8], now: Instant) -> Received {
        if let Some(tls) = &mut self.tls {
            let socket = &mut self.socket;
            let received = contained(|| tls.receive(socket, buf)).unwrap_or_else(Received::Gone);
            if matches!(received, Received::Data(_)) {
                self.last_read = now;
            }
            return received;
        }
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

    /// Whether the read that gave `n` bytes into a buffer of `capacity`
    /// emptied the socket. A plain read that fell short did; on TLS the
    /// plaintext's length says nothing, and the session knows.
    pub(crate) fn drained_after(&self, n: usize, capacity: usize) -> bool {
        match &self.tls {
            None => n < capacity,
            Some(tls) => tls.drained(),
        }
    }

    // ----- output -----

    /// Bytes waiting to be written (with TLS, ciphertext the kernel has
    /// not taken yet counts too).
    pub(crate) fn out_len(&self) -> usize {
        self.out.len() + self.tls.as_ref().map_or(0, |t| t.pending())
    }

    /// Nothing waits to be written.
    fn out_is_empty(&self) -> bool {
        self.out_len() == 0
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
        let before = self.out_len();
        let result = match &mut self.tls {
            None => self.out.write_to(&mut self.socket),
            Some(tls) => contained(|| tls.flush(&mut self.out, &mut self.socket)).and_then(|r| r),
        };
        self.stalled = matches!(result, Ok(Flushed::Partial));
        (result, before.saturating_sub(self.out_len()))
    }

    /// Whether the output is flushed and the connection only waits to finish
    /// (closing, not yet lingering).
    pub(crate) fn done_sending(&self) -> bool {
        matches!(self.life, Life::Closing { .. }) && self.out_is_empty() && !self.is_parked() && !self.has_held_input()
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
                Ok(0) => return (self.out_is_empty() && !self.is_parked()) || self.life == Life::Lingering,
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

/// Runs a TLS step so that a panic inside the TLS library, on bytes a
/// client chose, ends that connection (an error, logged at debug level)
/// instead of the process and every other connection with it. The
/// session is dropped with the connection right after, so no state that
/// the panic left half-changed is used again.
fn contained<T>(step: impl FnOnce() -> T) -> io::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step))
        .map_err(|_| io::Error::other("the TLS library failed on this connection's input"))
}
