//! A client connection: its socket, its output, and the phase it is in.
//!
//! A connection is a small state machine (as sozu's sessions are):
//!
//! ```text
//!   accept ──► Http ──(GET + Upgrade: websocket, valid)──► WebSocket ──► reaped
//!               │ ▲                                            │
//!               │ └── keep-alive: next request                 │
//!               └──(error, Connection: close, timeout)──► reaped ◄┘
//! ```
//!
//! Each phase owns only what it needs: the HTTP phase its request buffer,
//! the WebSocket phase its protocol session and its place in a room. The
//! request buffer is dropped at the upgrade, so an idle WebSocket carries
//! nothing of its HTTP past. The reactor (`server.rs`) owns every
//! `Connection` in a slab and is the only code that reads or writes its
//! socket.

use std::net::IpAddr;
use std::time::Instant;

use mio::net::TcpStream;

use crate::outbuf::OutQueue;
use crate::route::Endpoint;
use crate::ws::Session;

/// Where a connection stands.
#[derive(Debug)]
pub enum Phase {
    /// Reading request heads and answering them.
    Http(HttpState),
    /// Speaking WebSocket frames.
    WebSocket(Box<WsState>),
}

/// The HTTP phase: bytes received but not yet parsed.
#[derive(Debug, Default)]
pub struct HttpState {
    /// Received bytes: the start of a head, or pipelined requests.
    pub buf: Vec<u8>,
    /// Bytes of a request body still to skip before the next head.
    pub skip: u64,
    /// When the current head started arriving (for `--header-timeout`);
    /// `None` while the connection is idle between requests.
    pub head_started: Option<Instant>,
    /// Requests answered on this connection.
    pub served: u64,
    /// Waiting for the storage thread to answer a request; later pipelined
    /// requests stay in `buf` until then, so answers keep their order.
    pub parked: Option<Parked>,
}

/// How to send an answer that had to wait.
#[derive(Debug, Clone, Copy)]
pub struct Parked {
    /// The request was HEAD: send no body.
    pub head_only: bool,
    /// Keep the connection open afterwards.
    pub keep_alive: bool,
}

/// The WebSocket phase.
#[derive(Debug)]
pub struct WsState {
    /// tungstenite's protocol state over our buffers.
    pub session: Session,
    /// Which endpoint this socket was upgraded to.
    pub endpoint: Endpoint,
    /// A ping is outstanding since this instant (`--ping-timeout` runs).
    pub ping_sent: Option<Instant>,
    /// Per-endpoint state (chat membership, inspector...).
    pub role: Role,
}

/// What an endpoint keeps per connection.
#[derive(Debug, Default)]
pub enum Role {
    /// Nothing (echo endpoints).
    #[default]
    None,
    /// A member of a chat room.
    Member(crate::chat::Membership),
    /// Receiving the stats feed.
    StatsViewer,
    /// Being inspected: the raw bytes of this socket are described.
    Inspected(Box<crate::inspect::Inspector>),
}

/// A client connection.
#[derive(Debug)]
pub struct Connection {
    /// The socket; only the reactor touches it.
    pub socket: TcpStream,
    /// A number unique over the server's life. Slab keys are reused after a
    /// close, so timers and storage replies carry (key, serial) and check both.
    pub serial: u64,
    /// The client's address (or, behind a trusted proxy, X-Forwarded-For's).
    pub ip: IpAddr,
    /// Everything waiting to be written, in order.
    pub out: OutQueue,
    /// The current phase.
    pub phase: Phase,
    /// Last time bytes arrived (idle and heartbeat timers compare with it).
    pub last_read: Instant,
    /// The last flush left output behind (the kernel's send buffer was
    /// full): waiting for a WRITABLE event.
    pub writable_interest: bool,
    /// Already in the reactor's list of connections to flush this turn.
    pub dirty: bool,
    /// Its output answers something it sent (its own post's copy, a
    /// response): flushed at the end of the turn even when the fan-out to
    /// mere listeners is held back (see `Server::before_sleep`).
    pub urgent: bool,
    /// Close once the output queue has been flushed.
    pub close_after_flush: bool,
    /// An answer with `Connection: close` was queued: nothing after it is
    /// answered (unlike a client's FIN, after which buffered requests are).
    pub final_answer: bool,
    /// Output done and write side shut: waiting for the client's FIN.
    pub lingering: bool,
    /// Marked for reaping; nothing more is done with it.
    pub dead: bool,
    /// `ip` is counted in the per-address limit (released at reap).
    pub counted_ip: bool,
    /// Came in through `--admin-bind` (operations endpoints only).
    pub admin: bool,
}

impl Connection {
    /// A freshly accepted connection, in the HTTP phase.
    pub fn new(socket: TcpStream, serial: u64, ip: IpAddr, now: Instant) -> Connection {
        Connection {
            socket,
            serial,
            ip,
            out: OutQueue::new(),
            phase: Phase::Http(HttpState::default()),
            last_read: now,
            writable_interest: false,
            dirty: false,
            urgent: false,
            close_after_flush: false,
            final_answer: false,
            lingering: false,
            dead: false,
            counted_ip: false,
            admin: false,
        }
    }

    /// The WebSocket state, if upgraded.
    pub fn ws(&mut self) -> Option<&mut WsState> {
        match &mut self.phase {
            Phase::WebSocket(ws) => Some(ws),
            Phase::Http(_) => None,
        }
    }
}
