//! The connection engine: every connection of a run on one `mio::Poll`, from the connect
//! through the upgrade to frames and the close handshake. Modes never touch a socket: they
//! see `NetEvent`s and call `open`, `queue_text` and `close`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::error::ProtocolError;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cli::Target;
use crate::deflate::Deflating;
use crate::drive::Driver;
use crate::tls::Socket;
use crate::upgrade::Upgrade;

/// Bytes each connection reads per `read` call (tungstenite allocates this buffer eagerly).
/// 4 KiB holds ~25 chat frames: enough to amortise the syscall, small enough that 10,000
/// connections cost 40 MiB here rather than the 1.25 GiB of tungstenite's 128 KiB default.
const READ_BUFFER_BYTES: usize = 4096;

/// Outgoing bytes tungstenite may collect before it writes on its own. We flush explicitly
/// once per loop turn anyway; this only bounds how much one turn can pile up.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Largest frame we accept from a server. Chat frames are a few hundred bytes; a welcome
/// frame with history is a few tens of KiB.
const MAX_FRAME_BYTES: usize = 1 << 20;

/// Connections that may be connecting or upgrading at once. A server's accept backlog is
/// typically 128 to 4096; staying under it means no SYN is dropped, so no connect sits out
/// a one-second SYN retransmit and the "connect all" phase measures the server, not TCP.
const MAX_HANDSHAKES_IN_FLIGHT: usize = 200;

/// Attempts per connection before a refused or reset connect counts as a failure.
const CONNECT_ATTEMPTS: u32 = 5;

/// First back-off after a refused or reset connect; it doubles per attempt (50, 100, 200 ms..).
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Time a server has to answer our close frame and close TCP before we just drop the socket.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Readiness events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// What happened to one connection, as the modes see it. `user` (passed alongside) is the
/// mode's own index for the connection (client number, churn slot).
#[derive(Debug)]
pub enum NetEvent<'a> {
    /// The upgrade succeeded: frames can flow.
    Opened,
    /// A text frame arrived.
    Text(&'a str),
    /// A binary frame arrived (no chat server should send one).
    Binary(&'a [u8]),
    /// The connection ended: `code` is the server's close code if the server started the
    /// close, `None` when we did. `clean` is false when the server closed TCP without the
    /// close frame RFC 6455 §5.5.1 asks for ("the endpoint MUST send a Close frame in
    /// response"): not a lost connection, but not quite right either.
    Closed { code: Option<u16>, clean: bool },
    /// The connection ended any other way (after the connect retries, if it never opened).
    Failed(&'a str),
}

/// Words for a connection the server ended while we still wanted it.
pub fn describe_close(code: Option<u16>, clean: bool) -> String {
    match (code, clean) {
        (Some(code), _) => format!("server closed the connection (code {code})"),
        (None, true) => "server closed the connection".to_string(),
        (None, false) => "connection dropped without a close frame".to_string(),
    }
}

/// One connection's stage. Each variant owns only what that stage needs.
enum Phase {
    /// No socket yet: queued for a handshake slot, or backing off before a retry.
    Waiting,
    /// TCP connect in flight; the first writable event tells how it went.
    Connecting,
    /// Writing the HTTP upgrade request and reading the `101` response.
    Upgrading(Upgrade),
    /// A WebSocket. `closing_since` is set once we sent our close frame.
    Open {
        ws: Box<WebSocketContext>,
        closing_since: Option<Instant>,
        peer_close_code: Option<u16>,
        /// The server took permessage-deflate: inbound frames go through this.
        deflate: Option<Box<Deflating>>,
    },
}

/// One connection and the mode's name for it.
pub struct Conn {
    user: usize,
    path: Box<str>,
    attempts: u32,
    stream: Option<Socket>,
    phase: Phase,
    /// Output waits in tungstenite's buffer for this turn's flush.
    dirty: bool,
    /// A write failed: the next `advance` ends the connection with this reason.
    broken: Option<String>,
    /// Reading is paused (a slow reader): what the server sends stays in the socket.
    paused: bool,
}

impl Conn {
    fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Upgrading(_))
    }
}

/// Why `advance` stopped.
pub enum Step {
    /// Waiting for the socket (WouldBlock) or for the mode: nothing to do until the next event.
    Pending,
    /// The connection is over.
    Ended(Ending),
}

/// How a connection ended, as `Net` sees it (it turns this into a `NetEvent`).
pub enum Ending {
    Closed { code: Option<u16>, clean: bool },
    Failed { reason: String, retryable: bool },
}

/// A failure with a reason; `retryable` if a new connect attempt may cure it.
pub fn failed(reason: &str, retryable: bool) -> Ending {
    Ending::Failed { reason: reason.to_string(), retryable }
}

/// Socket errors a fresh connect attempt can cure: the server's backlog overflowed
/// (refused, reset), or this machine briefly ran out of ephemeral ports.
pub fn io_failure(e: &io::Error) -> Ending {
    let retryable = matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::TimedOut
    );
    failed(&e.to_string(), retryable)
}

/// The socket has nothing more for now (or no room): not an error, wait for the next edge.
pub fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// A signal interrupted the call: just try again.
pub fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

/// Whether a non-blocking connect has finished. mio's `TcpStream::connect` documents the
/// recipe: on the first writable event, `take_error` reports a failed connect, and
/// `peer_addr` returning `NotConnected` means the event was spurious and we wait on.
fn connect_finished(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) if would_block(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The socket as tungstenite sees it: a `TcpStream` that remembers when it ran dry.
///
/// Edge-triggered readiness requires reading until the socket has nothing left, and the
/// obvious test for that is one more `read` returning `WouldBlock`: a second syscall per
/// wake-up, which at a million deliveries a second is a good part of this core. epoll(7)
/// allows a cheaper test for stream sockets: "if you call read(2) by asking to read a
/// certain amount of data and read(2) returns a lower number of bytes, you can be sure of
/// having exhausted the read I/O space for the file descriptor". So after a short read we
/// answer `WouldBlock` ourselves; data arriving later raises a new edge anyway.
///
/// One catch: the end of the stream is not "data". When the server's last frame and its FIN
/// arrived before we woke up, the short read returns the frame and only one more read would
/// return the 0 that means EOF, and no new edge will come for it. epoll flags exactly that
/// case (`EPOLLRDHUP`, mio's `is_read_closed`), and then we read until `WouldBlock` or EOF.
struct DrainAware<'a> {
    stream: &'a mut Socket,
    trust_short_reads: bool,
    drained: bool,
}

/// Bytes read off WebSocket connections in this run, as they came (compressed or not):
/// what a compression mode saves is measured against it.
pub static WIRE_BYTES_IN: AtomicU64 = AtomicU64::new(0);

impl Read for DrainAware<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.stream.read(buf)?;
        WIRE_BYTES_IN.fetch_add(n as u64, Ordering::Relaxed);
        // n == 0 is end of stream, which tungstenite must see as such (not WouldBlock).
        if self.trust_short_reads && n > 0 && n < buf.len() {
            self.drained = true;
        }
        Ok(n)
    }
}

/// The socket as tungstenite sees it: through the deflate filter when the
/// server took the extension.
struct Wire<'a, 'd> {
    socket: DrainAware<'a>,
    deflate: Option<&'d mut Deflating>,
}

impl Wire<'_, '_> {
    fn has_message(&self) -> bool {
        self.deflate.as_ref().is_some_and(|d| d.message.is_some())
    }
}

impl Read for Wire<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.deflate.as_deref_mut() {
            Some(d) => d.read_through(&mut self.socket, buf),
            None => self.socket.read(buf),
        }
    }
}

impl Write for Wire<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

impl Write for DrainAware<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Reads every frame the socket has, then flushes what tungstenite queued (our writes, its
/// automatic pongs and close replies). Edge-triggered readiness means we must go on until
/// `WouldBlock`: mio's `Poll` docs say an edge-triggered source gets no new event "until
/// the readiness is cleared", i.e. until a read or write returned `WouldBlock`.
fn exchange(
    stream: &mut Socket,
    ws: &mut WebSocketContext,
    deflate: Option<&mut Deflating>,
    peer_close_code: &mut Option<u16>,
    user: usize,
    trust_short_reads: bool,
    on: &mut dyn FnMut(usize, NetEvent<'_>),
) -> Step {
    // Through TLS a short read of plaintext says nothing about the socket: read on to WouldBlock.
    let trust_short_reads = trust_short_reads && !stream.is_tls();
    let mut socket = Wire { socket: DrainAware { stream, trust_short_reads, drained: false }, deflate };
    // Once we sent our close frame, the server's close frame is only its answer.
    let we_closed = !ws.can_write();
    loop {
        match ws.read(&mut socket) {
            Ok(Message::Text(text)) => on(user, NetEvent::Text(text.as_str())),
            Ok(Message::Binary(bytes)) => on(user, NetEvent::Binary(&bytes)),
            // A close frame: the server's answer to ours, or the server closing (then
            // tungstenite queued our reply). Either way the server closes TCP next, which
            // `read` reports as `ConnectionClosed`. 1005: "no status code was present".
            Ok(Message::Close(frame)) => {
                if !we_closed {
                    *peer_close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                }
            }
            // Pings are answered by tungstenite (the pong goes out with the flush below).
            Ok(_) => {}
            // An inflated message came before anything behind it: hand it over, read on.
            Err(WsError::Io(e)) if would_block(&e) && socket.has_message() => {
                match socket.deflate.as_mut().and_then(|d| d.message.take()) {
                    Some(Message::Text(text)) => on(user, NetEvent::Text(text.as_str())),
                    Some(Message::Binary(bytes)) => on(user, NetEvent::Binary(&bytes)),
                    _ => {}
                }
            }
            // Read everything there was: the readable edge will bring us back.
            Err(WsError::Io(e)) if would_block(&e) => break,
            Err(WsError::Io(e)) if interrupted(&e) => continue,
            // The close handshake completed and the server closed TCP: the normal end.
            Err(WsError::ConnectionClosed) => {
                return Step::Ended(Ending::Closed { code: *peer_close_code, clean: true });
            }
            // TCP ended without a close frame from the server.
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                return Step::Ended(Ending::Closed { code: *peer_close_code, clean: false });
            }
            Err(e) => return Step::Ended(failed(&e.to_string(), false)),
        }
    }
    match ws.flush(&mut socket) {
        Ok(()) => Step::Pending,
        // The socket buffer is full; the rest stays queued until the writable edge.
        Err(WsError::Io(e)) if would_block(&e) => Step::Pending,
        Err(WsError::ConnectionClosed) => Step::Ended(Ending::Closed { code: *peer_close_code, clean: true }),
        Err(e) => Step::Ended(failed(&e.to_string(), false)),
    }
}

/// All connections of a run, on one `mio::Poll`. Tokens are slot indices; a slot freed
/// while handling a batch of events is reused only from the next turn on (`released`), so
/// a stale event from the batch can never reach a new connection.
pub struct Net {
    poll: Poll,
    events: Events,
    target: Target,
    config: WebSocketConfig,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Slots freed during the current batch of events: a late event of the batch may still
    /// name them, so they join `free` only when the next turn starts.
    released: Vec<usize>,
    live: usize,
    /// Connections waiting for a handshake slot (see `MAX_HANDSHAKES_IN_FLIGHT`).
    queued: VecDeque<usize>,
    /// Connections backing off before another connect attempt: (when, token).
    retries: Vec<(Instant, usize)>,
    /// Connections we sent a close frame on, oldest first: (deadline, token).
    closing: VecDeque<(Instant, usize)>,
    in_flight: usize,
    /// Connect attempts that were refused or reset and tried again (a sign that the
    /// server's accept backlog overflowed).
    pub retried: u64,
    /// Connections with output written this turn, flushed before the next sleep.
    dirty: Vec<usize>,
    /// Connections to look at next turn even without an event (a write failed on them).
    recheck: Vec<usize>,
    /// This batch's tokens, each with whether a short read may be taken as "drained"
    /// (see `DrainAware`).
    ready: Vec<(usize, bool)>,
}

impl Net {
    /// An engine with no connections yet, for connections to `target`.
    pub fn new(target: Target) -> Result<Self, String> {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        Ok(Net {
            poll: Poll::new().map_err(|e| format!("cannot create the poll instance: {e}"))?,
            events: Events::with_capacity(EVENTS_PER_POLL),
            target,
            config,
            slots: Vec::new(),
            free: Vec::new(),
            released: Vec::new(),
            live: 0,
            queued: VecDeque::new(),
            retries: Vec::new(),
            closing: VecDeque::new(),
            in_flight: 0,
            retried: 0,
            dirty: Vec::new(),
            recheck: Vec::new(),
            ready: Vec::new(),
        })
    }

    /// The path for a room under the URL's base path.
    pub fn room_path(&self, prefix: &str, room: &str, username: &str) -> String {
        format!("{}{prefix}{room}/?username={username}", self.target.base)
    }

    /// Queues a new connection to `path`; returns its token. The connect itself starts on
    /// a coming turn, when a handshake slot is free.
    pub fn open(&mut self, user: usize, path: &str) -> usize {
        let conn = Conn {
            user,
            path: path.into(),
            attempts: 0,
            stream: None,
            phase: Phase::Waiting,
            dirty: false,
            broken: None,
            paused: false,
        };
        let token = match self.free.pop() {
            Some(t) => {
                if let Some(slot) = self.slots.get_mut(t) {
                    *slot = Some(conn);
                }
                t
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        };
        self.live += 1;
        self.queued.push_back(token);
        token
    }

    /// Connections not yet ended (waiting, connecting, open or closing).
    pub fn live(&self) -> usize {
        self.live
    }

    /// Writes one text frame (masked, as RFC 6455 §5.3 requires of clients) into the
    /// connection's buffer; it leaves with this turn's flush. `false` if the connection is
    /// not open for writing (not yet open, closing, or gone).
    pub fn queue_text(&mut self, token: usize, text: String) -> bool {
        let Some(Some(conn)) = self.slots.get_mut(token) else {
            return false;
        };
        let (Some(stream), Phase::Open { ws, closing_since: None, .. }) = (conn.stream.as_mut(), &mut conn.phase)
        else {
            return false;
        };
        match ws.write(stream, Message::text(text)) {
            // `write` may already have tried to send and hit a full socket buffer: the frame
            // is queued either way, and the writable edge will flush it.
            Ok(()) => {}
            Err(WsError::Io(e)) if would_block(&e) => {}
            Err(e) => {
                conn.broken = Some(e.to_string());
                self.recheck.push(token);
                return false;
            }
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(token);
        }
        true
    }

    /// Starts the close handshake (RFC 6455 §5.5.1: we send a close frame, the server
    /// answers with one and closes TCP). Returns `true` if a `Closed` or `Failed` event
    /// will follow; `false` if the connection was not open yet and was dropped at once.
    pub fn close(&mut self, token: usize) -> bool {
        let Some(Some(conn)) = self.slots.get_mut(token) else {
            return false;
        };
        match (&mut conn.phase, conn.stream.as_mut()) {
            (Phase::Open { ws, closing_since, .. }, Some(stream)) => {
                if closing_since.is_some() {
                    return true;
                }
                let now = Instant::now();
                *closing_since = Some(now);
                self.closing.push_back((now + CLOSE_GRACE, token));
                match ws.close(stream, None) {
                    Ok(()) => {}
                    Err(WsError::Io(e)) if would_block(&e) => {}
                    // Already closed by the server: the read path reports it.
                    Err(WsError::ConnectionClosed) => self.recheck.push(token),
                    Err(e) => {
                        conn.broken = Some(e.to_string());
                        self.recheck.push(token);
                    }
                }
                true
            }
            _ => {
                self.remove(token);
                false
            }
        }
    }

    /// Stops or resumes reading a connection, as a slow reader does: while paused, frames
    /// pile up in the socket buffers and then in the server's output queue. Resuming reads
    /// at once on the next turn: the data is already there, so no new edge would come.
    pub fn set_paused(&mut self, token: usize, paused: bool) {
        let Some(Some(conn)) = self.slots.get_mut(token) else {
            return;
        };
        if conn.paused && !paused {
            self.recheck.push(token);
        }
        conn.paused = paused;
    }

    /// Ends a connection with a TCP reset instead of a close handshake, as a crashed client
    /// or a dropped mobile link does: `SO_LINGER` with a zero timeout makes `close(2)` send
    /// RST and discard whatever was unsent. No event follows; the slot is freed at once.
    pub fn reset(&mut self, token: usize) {
        if let Some(Some(Conn { stream: Some(stream), .. })) = self.slots.get(token) {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: setsockopt reads only the struct we pass, on a descriptor we own.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&stream.tcp),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
        self.remove(token);
    }

    /// Closes every open connection and drops the others.
    pub fn close_all(&mut self) {
        for token in 0..self.slots.len() {
            self.close(token);
        }
    }

    /// Forgets a connection: deregisters and closes its socket and frees its slot.
    pub fn remove(&mut self, token: usize) {
        let Some(slot) = self.slots.get_mut(token) else {
            return;
        };
        let Some(mut conn) = slot.take() else {
            return;
        };
        if conn.is_handshaking() {
            self.in_flight -= 1;
        }
        if let Some(mut stream) = conn.stream.take() {
            // Deregistering fails only if it was never registered; nothing to undo then.
            let _ = self.poll.registry().deregister(&mut stream.tcp);
        }
        self.released.push(token);
        self.live -= 1;
    }

    /// One loop turn: start queued connects, flush this turn's output, drop connections whose
    /// close was never answered, then sleep in `poll` for at most `timeout` and handle
    /// whatever became ready.
    pub fn turn<D: Driver>(&mut self, timeout: Duration, driver: &mut D) -> Result<(), String> {
        let now = Instant::now();
        // Slots freed during the last batch become reusable only now, between batches.
        self.free.append(&mut self.released);
        self.start_connects(now, &mut |user, event| driver.on_event(user, event));
        self.flush_dirty();
        self.reap_closing(now, &mut |user, event| driver.on_event(user, event));

        let mut timeout = timeout;
        if let Some(&(at, _)) = self.retries.iter().min_by_key(|(at, _)| *at) {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if let Some(&(at, _)) = self.closing.front() {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if !self.recheck.is_empty() {
            timeout = Duration::ZERO;
        }
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            // A signal interrupted the sleep: just another turn.
            Err(e) if interrupted(&e) => return Ok(()),
            Err(e) => return Err(format!("poll failed: {e}")),
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| (e.token().0, !(e.is_read_closed() || e.is_error()))));
        ready.extend(self.recheck.drain(..).map(|token| (token, false)));
        for &(token, trust_short_reads) in &ready {
            self.advance(token, trust_short_reads, &mut |user, event| driver.on_event(user, event));
            // Act on what this connection's frames changed at once: a closed-loop sender
            // whose message came back posts its next one now, not after the other thousand
            // sockets of this batch, which would leave the server idle in between.
            if driver.has_work() {
                driver.after_turn(self);
                self.flush_dirty();
            }
        }
        self.ready = ready;
        Ok(())
    }

    /// Runs when `token` had an event (readable, writable, error: we do not care which,
    /// every stage just tries everything it can until `WouldBlock`).
    fn advance(&mut self, token: usize, trust_short_reads: bool, on: &mut dyn FnMut(usize, NetEvent<'_>)) {
        // Gone already: an event for a connection that ended earlier in this batch.
        let Some(Some(conn)) = self.slots.get_mut(token) else {
            return;
        };
        let was_handshaking = conn.is_handshaking();
        let step = advance_conn(conn, &self.target, &self.config, trust_short_reads, on);
        if was_handshaking && matches!(conn.phase, Phase::Open { .. }) {
            self.in_flight -= 1;
        }
        let user = conn.user;
        match step {
            Step::Pending => {}
            Step::Ended(Ending::Failed { reason, retryable }) if retryable && conn.is_handshaking() => {
                if conn.attempts < CONNECT_ATTEMPTS {
                    self.schedule_retry(token);
                } else {
                    self.remove(token);
                    on(user, NetEvent::Failed(&reason));
                }
            }
            Step::Ended(Ending::Failed { reason, .. }) => {
                self.remove(token);
                on(user, NetEvent::Failed(&reason));
            }
            Step::Ended(Ending::Closed { code, clean }) => {
                self.remove(token);
                on(user, NetEvent::Closed { code, clean });
            }
        }
    }

    /// Drops the socket of a connect that was refused or reset and tries again later, with
    /// exponential back-off, so a server whose backlog overflowed gets time to drain it.
    fn schedule_retry(&mut self, token: usize) {
        let Some(Some(conn)) = self.slots.get_mut(token) else {
            return;
        };
        if conn.is_handshaking() {
            self.in_flight -= 1;
        }
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream.tcp);
        }
        conn.phase = Phase::Waiting;
        self.retried += 1;
        let backoff = RETRY_BACKOFF * 2u32.pow(conn.attempts.saturating_sub(1).min(5));
        self.retries.push((Instant::now() + backoff, token));
    }

    /// Starts connects while fewer than `MAX_HANDSHAKES_IN_FLIGHT` are under way; retries
    /// whose back-off is over go first, since they have waited longest.
    fn start_connects(&mut self, now: Instant, on: &mut dyn FnMut(usize, NetEvent<'_>)) {
        let mut i = 0;
        while let Some(&(at, token)) = self.retries.get(i) {
            if at <= now {
                self.retries.swap_remove(i);
                self.queued.push_front(token);
            } else {
                i += 1;
            }
        }
        while self.in_flight < MAX_HANDSHAKES_IN_FLIGHT {
            let Some(token) = self.queued.pop_front() else {
                break;
            };
            self.connect(token, on);
        }
    }

    /// Starts the non-blocking TCP connect of a waiting connection.
    fn connect(&mut self, token: usize, on: &mut dyn FnMut(usize, NetEvent<'_>)) {
        let Some(Some(conn)) = self.slots.get_mut(token) else {
            return;
        };
        // A stale queue entry (the connection was closed, or its slot reused and already
        // started): nothing to do.
        if !matches!(conn.phase, Phase::Waiting) {
            return;
        }
        conn.attempts += 1;
        let tls = self.target.tls.as_ref();
        let result = TcpStream::connect(self.target.addr).and_then(|mut stream| {
            self.poll
                .registry()
                .register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)
                .and_then(|()| Socket::new(stream, tls))
        });
        match result {
            Ok(stream) => {
                conn.stream = Some(stream);
                conn.phase = Phase::Connecting;
                self.in_flight += 1;
            }
            Err(e) => {
                let user = conn.user;
                let attempts = conn.attempts;
                match io_failure(&e) {
                    Ending::Failed { retryable: true, .. } if attempts < CONNECT_ATTEMPTS => {
                        self.retried += 1;
                        self.retries.push((Instant::now() + RETRY_BACKOFF, token));
                    }
                    _ => {
                        self.remove(token);
                        on(user, NetEvent::Failed(&format!("connect: {e}")));
                    }
                }
            }
        }
    }

    /// Sends what `queue_text` buffered this turn: one `write` per connection per turn.
    fn flush_dirty(&mut self) {
        for token in std::mem::take(&mut self.dirty) {
            let Some(Some(conn)) = self.slots.get_mut(token) else {
                continue;
            };
            conn.dirty = false;
            let (Some(stream), Phase::Open { ws, .. }) = (conn.stream.as_mut(), &mut conn.phase) else {
                continue;
            };
            match ws.flush(stream) {
                Ok(()) => {}
                // The rest stays queued until the writable edge.
                Err(WsError::Io(e)) if would_block(&e) => {}
                Err(e) => {
                    conn.broken = Some(e.to_string());
                    self.recheck.push(token);
                }
            }
        }
    }

    /// Ends connections whose close frame the server has not answered within `CLOSE_GRACE`.
    fn reap_closing(&mut self, now: Instant, on: &mut dyn FnMut(usize, NetEvent<'_>)) {
        while let Some(&(deadline, token)) = self.closing.front() {
            if deadline > now {
                break;
            }
            self.closing.pop_front();
            // Only if the slot still holds a connection that has been closing this long
            // (it may have ended, and the slot been reused, in the meantime).
            let overdue = match self.slots.get(token) {
                Some(Some(Conn { phase: Phase::Open { closing_since: Some(since), .. }, .. })) => {
                    *since + CLOSE_GRACE <= now
                }
                _ => false,
            };
            if overdue && let Some(Some(conn)) = self.slots.get(token) {
                let user = conn.user;
                self.remove(token);
                on(user, NetEvent::Failed("close frame not answered in time"));
            }
        }
    }
}

/// Moves one connection through its stages for as long as its socket allows.
fn advance_conn(
    conn: &mut Conn,
    target: &Target,
    config: &WebSocketConfig,
    trust_short_reads: bool,
    on: &mut dyn FnMut(usize, NetEvent<'_>),
) -> Step {
    let Some(stream) = conn.stream.as_mut() else {
        return Step::Pending;
    };
    if let Some(reason) = conn.broken.take() {
        return Step::Ended(failed(&reason, false));
    }
    if matches!(conn.phase, Phase::Connecting) {
        match connect_finished(&stream.tcp) {
            Ok(true) => {
                // Chat frames are small and latency is what we measure: no Nagle delay.
                let _ = stream.tcp.set_nodelay(true);
                conn.phase = Phase::Upgrading(Upgrade::new(&target.host, &conn.path, target.deflate));
            }
            Ok(false) => return Step::Pending,
            Err(e) => return Step::Ended(io_failure(&e)),
        }
    }
    if let Phase::Upgrading(upgrade) = &mut conn.phase {
        match upgrade.advance(stream) {
            Ok(None) => return Step::Pending,
            Ok(Some(opened)) => {
                // With the extension, the first bytes go through the filter too.
                let (leftover, deflate) = match opened.deflate {
                    Some(context) => {
                        let mut d = Box::new(Deflating::new(context));
                        d.carry_first(opened.leftover);
                        (Vec::new(), Some(d))
                    }
                    None => (opened.leftover, None),
                };
                let ws = WebSocketContext::from_partially_read(leftover, Role::Client, Some(*config));
                conn.phase = Phase::Open { ws: Box::new(ws), closing_since: None, peer_close_code: None, deflate };
                on(conn.user, NetEvent::Opened);
            }
            Err(ending) => return Step::Ended(ending),
        }
    }
    match &mut conn.phase {
        // A paused reader leaves its socket alone; `set_paused` brings it back.
        Phase::Open { .. } if conn.paused => Step::Pending,
        Phase::Open { ws, peer_close_code, deflate, .. } => {
            exchange(stream, ws, deflate.as_deref_mut(), peer_close_code, conn.user, trust_short_reads, on)
        }
        _ => Step::Pending,
    }
}
