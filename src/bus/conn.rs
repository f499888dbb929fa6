//! One connection to Redis: its socket, its buffers, and its way back up.
//!
//! The bus keeps two of these (commands, and subscriptions: a subscribed
//! connection may only (un)subscribe and ping, so it cannot publish). Both
//! follow the same life, which is all this file knows:
//!
//! ```text
//!   Down ──retry_at──▶ Connecting ──writable, connected──▶ Handshake ──▶ Up
//!    ▲                     │                                   │          │
//!    └──── backoff ◀───────┴──── error, EOF, timeout ◀─────────┴──────────┘
//! ```
//!
//! What the replies *mean* (whose command they answer, whether the handshake
//! succeeded) is for [`Bus`](super::Bus) to judge; a `Link` only moves bytes:
//! [`Link::queue`] appends to the output buffer, [`Link::flush`] writes it
//! once per loop turn, [`Link::read`] reads until `WouldBlock` and decodes.
//!
//! mio registers sockets edge-triggered, and its `Poll` docs set the rule we
//! follow: "With edge-triggered events, operations **must** be performed on
//! the `Source` until `WouldBlock` is returned." Reads run until
//! `WouldBlock` or a budget (then [`Link::more_to_read`] asks the bus to
//! come back next turn); a write that would block waits for the writable
//! edge that the kernel will send once there is room again.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::Which;
use super::resp::{self, MAX_REPLY, Value};

/// How long a connect plus its handshake (AUTH, SELECT, PING, SUBSCRIBE) may
/// take before we give up and try again. Redis on a LAN answers in a
/// millisecond; 2 s rides out a busy Redis without leaving the chat waiting
/// long.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The first retry comes this soon after a failure: a restarted Redis is
/// usually back within a few hundred milliseconds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);

/// The wait between retries doubles up to this. A Redis that stays away is
/// tried every 5 s, which costs nothing and brings the chat back quickly.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Bytes asked of each `read` call. Replies to a chat server are small; 64
/// KiB takes a burst of pub/sub messages in one syscall.
const READ_CHUNK: usize = 64 * 1024;

/// Reads per link per loop turn before yielding to the clients (fairness,
/// and a bound on the events one turn produces): up to 4 MiB.
const MAX_READS_PER_TURN: usize = 64;

/// A read buffer grown past this by one large reply is given back once the
/// reply is consumed, so an idle link holds little memory.
const KEEP_BUFFER: usize = 4 * READ_CHUNK;

/// Where the link is in its life. Each stage owns what it needs: only a
/// connected stage has a socket.
#[derive(Debug)]
enum Stage {
    /// No socket. Connect again at `retry_at`.
    Down { retry_at: Instant },
    /// `connect(2)` issued; waiting for the socket to become writable.
    Connecting { stream: TcpStream, deadline: Instant },
    /// Connected; the bus is waiting for the handshake replies.
    Handshake { stream: TcpStream, deadline: Instant },
    /// Ready for commands (or delivering messages).
    Up { stream: TcpStream },
}

/// A connection to Redis and its buffers. (No `Debug`: `out` may hold the
/// packed AUTH, password and all.)
pub(super) struct Link {
    /// Which of the bus's two connections this is (for log lines).
    pub(super) which: Which,
    addr: SocketAddr,
    token: Token,
    stage: Stage,
    /// Bytes queued and not yet written; `out[..out_sent]` is already sent.
    out: Vec<u8>,
    out_sent: usize,
    /// Bytes read and not yet decoded (at most the start of one reply).
    inbuf: Vec<u8>,
    /// The interest the socket is registered with, when it is.
    interest: Option<Interest>,
    /// The last write hit `WouldBlock`: wait for the writable event.
    write_blocked: bool,
    /// The read budget ran out with bytes left in the socket.
    pub(super) more_to_read: bool,
    /// Reads per call: [`MAX_READS_PER_TURN`] (tests lower it).
    pub(super) read_budget: usize,
    /// Replies to the handshake (AUTH, SELECT, PING) the bus still has to see.
    pub(super) hello_left: usize,
    /// Failures since the link was last up: the backoff exponent.
    failures: u32,
    /// Whether the bus has told its caller this outage began.
    pub(super) down_reported: bool,
    /// `write(2)` calls made (tests check the pipeline leaves in one).
    pub(super) write_calls: u64,
    /// Bytes received over the link's life: the bus compares it around a
    /// read to tell whether Redis said anything (the subscription link's
    /// keepalive counts any byte as a sign of life).
    pub(super) bytes_read: u64,
    /// The jitter generator's state.
    rng: u64,
}

impl Link {
    /// A link that has not connected yet (due to connect at once).
    pub(super) fn new(which: Which, addr: SocketAddr, now: Instant) -> Link {
        Link {
            which,
            addr,
            token: Token(usize::MAX),
            stage: Stage::Down { retry_at: now },
            out: Vec::new(),
            out_sent: 0,
            inbuf: Vec::new(),
            interest: None,
            write_blocked: false,
            more_to_read: false,
            read_budget: MAX_READS_PER_TURN,
            hello_left: 0,
            failures: 0,
            down_reported: false,
            write_calls: 0,
            bytes_read: 0,
            rng: seed(which),
        }
    }

    /// Sets the token the reactor routes this link's events by.
    pub(super) fn set_token(&mut self, token: Token) {
        self.token = token;
    }

    /// Whether events with `token` are ours.
    pub(super) fn owns(&self, token: Token) -> bool {
        self.token == token
    }

    /// Ready for commands: connected and the handshake done.
    pub(super) fn is_up(&self) -> bool {
        matches!(self.stage, Stage::Up { .. })
    }

    /// Has a socket (connecting, handshaking or up): bytes queued now will
    /// be sent on this connection.
    pub(super) fn has_socket(&self) -> bool {
        !matches!(self.stage, Stage::Down { .. })
    }

    /// Still waiting for `connect(2)` to finish.
    pub(super) fn is_connecting(&self) -> bool {
        matches!(self.stage, Stage::Connecting { .. })
    }

    /// Connected, waiting for the handshake replies.
    pub(super) fn in_handshake(&self) -> bool {
        matches!(self.stage, Stage::Handshake { .. })
    }

    /// Bytes queued and not yet written.
    pub(super) fn pending_out(&self) -> usize {
        self.out.len() - self.out_sent.min(self.out.len())
    }

    /// The next moment the bus's `on_timer` has something to do here.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Down { retry_at } => Some(*retry_at),
            Stage::Connecting { deadline, .. } | Stage::Handshake { deadline, .. } => Some(*deadline),
            Stage::Up { .. } => None,
        }
    }

    /// Whether the retry time has come (the link is down and due).
    pub(super) fn due_for_retry(&self, now: Instant) -> bool {
        matches!(self.stage, Stage::Down { retry_at } if now >= retry_at)
    }

    /// Whether connecting or the handshake has taken too long.
    pub(super) fn timed_out(&self, now: Instant) -> bool {
        match &self.stage {
            Stage::Connecting { deadline, .. } | Stage::Handshake { deadline, .. } => now >= *deadline,
            _ => false,
        }
    }

    /// Starts a non-blocking connect to the address resolved at startup and
    /// registers the socket for the writable event that will say how it went.
    pub(super) fn connect(&mut self, registry: &Registry, now: Instant) -> Result<(), String> {
        // mio's `connect` only starts the connection (EINPROGRESS); it never
        // waits. An immediate error (no route, no descriptors) is a failure
        // like any other, retried after the backoff.
        let mut stream = TcpStream::connect(self.addr).map_err(|e| format!("connect to {}: {e}", self.addr))?;
        // Commands leave once per turn, already batched: Nagle's algorithm
        // would only hold them back waiting for an ACK.
        let _ = stream.set_nodelay(true);
        // Notice a Redis host that vanished without a FIN (power loss, a
        // network partition) in about a minute rather than never.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10))
            .with_retries(3);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let interest = Interest::READABLE | Interest::WRITABLE;
        registry.register(&mut stream, self.token, interest).map_err(|e| format!("register: {e}"))?;
        self.interest = Some(interest);
        self.stage = Stage::Connecting { stream, deadline: now + CONNECT_TIMEOUT };
        Ok(())
    }

    /// After an event on a connecting socket: has the connect finished?
    /// `Ok(false)` means not yet (a spurious wakeup): keep waiting.
    ///
    /// This is the check mio's `TcpStream::connect` documents: first
    /// `take_error` (the connect's own failure, such as ECONNREFUSED), then
    /// `peer_addr`, which fails with `NotConnected` until the handshake of
    /// TCP is complete.
    pub(super) fn finish_connect(&mut self) -> Result<bool, String> {
        let Stage::Connecting { stream, deadline } = &self.stage else { return Ok(true) };
        if let Some(e) = stream.take_error().map_err(|e| format!("connect to {}: {e}", self.addr))? {
            return Err(format!("connect to {}: {e}", self.addr));
        }
        match stream.peer_addr() {
            Ok(_) => {}
            // Not connected yet: the writable event was not about the connect.
            Err(e) if e.kind() == io::ErrorKind::NotConnected || e.raw_os_error() == Some(libc::EINPROGRESS) => {
                return Ok(false);
            }
            Err(e) => return Err(format!("connect to {}: {e}", self.addr)),
        }
        let deadline = *deadline;
        // Move the socket into the next stage; the placeholder lives only
        // inside this function, so no half-moved link can be seen.
        if let Stage::Connecting { stream, .. } = std::mem::replace(&mut self.stage, Stage::Down { retry_at: deadline })
        {
            self.stage = Stage::Handshake { stream, deadline };
        }
        Ok(true)
    }

    /// The handshake succeeded: the link is ready, and the backoff starts
    /// over from its minimum for the next outage.
    pub(super) fn set_up(&mut self) {
        let placeholder = Stage::Down { retry_at: Instant::now() };
        self.stage = match std::mem::replace(&mut self.stage, placeholder) {
            Stage::Handshake { stream, .. } | Stage::Up { stream } => Stage::Up { stream },
            other => other,
        };
        self.failures = 0;
        self.down_reported = false;
    }

    /// Takes the link down after a failure: deregisters and closes the
    /// socket, drops both buffers, and sets the time of the next try
    /// (exponential backoff with jitter). Returns the delay chosen.
    pub(super) fn fail(&mut self, registry: &Registry, now: Instant) -> Duration {
        let delay = self.backoff();
        let old = std::mem::replace(&mut self.stage, Stage::Down { retry_at: now + delay });
        if let Stage::Connecting { mut stream, .. } | Stage::Handshake { mut stream, .. } | Stage::Up { mut stream } =
            old
        {
            // Closing the socket would remove it from epoll anyway; saying so
            // keeps mio's bookkeeping honest. A failure here changes nothing.
            let _ = registry.deregister(&mut stream);
        }
        self.out = Vec::new();
        self.out_sent = 0;
        self.inbuf = Vec::new();
        self.interest = None;
        self.write_blocked = false;
        self.more_to_read = false;
        self.hello_left = 0;
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The wait before the next try: 100 ms doubling per consecutive failure
    /// up to 5 s, times a random factor in [0.75, 1.25) so that many servers
    /// that lost the same Redis do not all come back in the same instant.
    fn backoff(&mut self) -> Duration {
        let base = BACKOFF_MIN.saturating_mul(1 << self.failures.min(16)).min(BACKOFF_MAX);
        // xorshift64 (Marsaglia 2003): plenty random for spreading retries.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let permille = 750 + (self.rng % 500) as u32;
        base * permille / 1000
    }

    /// Appends `bytes` to the output; nothing is written until [`Link::flush`].
    pub(super) fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The reactor saw a writable event: the kernel has room again.
    pub(super) fn on_writable(&mut self) {
        self.write_blocked = false;
    }

    /// Writes the queued output, then registers WRITABLE only if some of it
    /// is still waiting (redis's `beforeSleep` installs a write handler the
    /// same way). A connecting socket is left alone: its writable event
    /// reports the connect, and the handshake bytes wait for that.
    ///
    /// Everything queued since the last flush leaves in one `write` call
    /// unless the kernel's send buffer fills.
    pub(super) fn flush(&mut self, registry: &Registry) -> Result<(), String> {
        let stream = match &mut self.stage {
            Stage::Handshake { stream, .. } | Stage::Up { stream } => stream,
            Stage::Connecting { .. } | Stage::Down { .. } => return Ok(()),
        };
        while !self.write_blocked && self.out_sent < self.out.len() {
            self.write_calls += 1;
            match stream.write(self.out.get(self.out_sent..).unwrap_or_default()) {
                // Redis reads everything it is sent; taking nothing means
                // the connection is broken.
                Ok(0) => return Err(format!("write to {}: connection closed", self.addr)),
                Ok(n) => self.out_sent += n,
                // The send buffer is full: the writable event says when to resume.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.write_blocked = true,
                // A signal arrived mid-call: nothing was written, try again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write to {}: {e}", self.addr)),
            }
        }
        if self.out_sent >= self.out.len() {
            self.out.clear();
            self.out_sent = 0;
            if self.out.capacity() > KEEP_BUFFER {
                self.out = Vec::new();
            }
        }
        let want =
            if self.out_sent < self.out.len() { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if self.interest != Some(want) {
            registry.reregister(stream, self.token, want).map_err(|e| format!("reregister: {e}"))?;
            self.interest = Some(want);
        }
        Ok(())
    }

    /// Reads until `WouldBlock` (or the turn's budget: then `more_to_read`
    /// is set), then decodes every complete value into `values` in order.
    /// Values that arrived before a failure (say, replies just before the
    /// EOF) are decoded too, so the bus handles them before taking the link
    /// down.
    ///
    /// Decoding once per call rather than once per `read` matters for a
    /// reply that spans many reads: an incomplete reply is scanned again
    /// from its start each time, so scanning less often keeps that cheap.
    pub(super) fn read(&mut self, values: &mut Vec<Value>) -> Result<(), String> {
        let stream = match &mut self.stage {
            Stage::Handshake { stream, .. } | Stage::Up { stream } => stream,
            // Not connected: nothing to read (the event was about the connect).
            Stage::Connecting { .. } | Stage::Down { .. } => return Ok(()),
        };
        let mut outcome = Ok(());
        self.more_to_read = true;
        for _ in 0..self.read_budget {
            let start = self.inbuf.len();
            self.inbuf.resize(start + READ_CHUNK, 0);
            let result = stream.read(self.inbuf.get_mut(start..).unwrap_or_default());
            self.inbuf.truncate(start + result.as_ref().map_or(0, |&n| n));
            match result {
                // EOF: Redis closed the connection (restart, `CLIENT KILL`,
                // timeout, or an output buffer limit).
                Ok(0) => outcome = Err(format!("{} closed the connection", self.addr)),
                Ok(n) => {
                    self.bytes_read += n as u64;
                    continue;
                }
                // Drained: the next readable edge will say when to read again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A signal interrupted the read: nothing was lost, read again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => outcome = Err(format!("read from {}: {e}", self.addr)),
            }
            self.more_to_read = false;
            break;
        }
        if self.more_to_read {
            debug!("redis {:?} link: read budget spent; continuing next turn", self.which);
        }
        decode_all(&mut self.inbuf, values).and(outcome)
    }
}

/// Moves every complete value from the front of `inbuf` to `values`, leaving
/// the start of an incomplete one. An incomplete reply larger than
/// [`MAX_REPLY`] is a protocol error: the memory it would take is refused.
fn decode_all(inbuf: &mut Vec<u8>, values: &mut Vec<Value>) -> Result<(), String> {
    let mut used = 0;
    let result = loop {
        match resp::decode(inbuf.get(used..).unwrap_or_default()) {
            Ok(Some((value, n))) => {
                values.push(value);
                used += n;
            }
            // The rest is the beginning of a reply: keep it for the next read.
            Ok(None) => break Ok(()),
            Err(e) => break Err(format!("protocol error from redis: {e}")),
        }
    };
    inbuf.drain(..used.min(inbuf.len()));
    if inbuf.len() > MAX_REPLY {
        return Err(format!("a reply from redis exceeds {} MiB", MAX_REPLY >> 20));
    }
    if inbuf.capacity() > KEEP_BUFFER && inbuf.len() < READ_CHUNK {
        inbuf.shrink_to(READ_CHUNK);
    }
    result
}

/// A seed for the jitter: the clock's nanoseconds and our pid, so that
/// servers (and the two links of one server) restarted together still
/// spread their retries. Never zero, which xorshift cannot leave.
fn seed(which: Which) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let salt = match which {
        Which::Command => 0x9E37_79B9_7F4A_7C15,
        Which::Subscription => 0xC2B2_AE3D_27D4_EB4F,
    };
    (nanos ^ (u64::from(std::process::id()) << 32) ^ salt) | 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let mut link = Link::new(Which::Command, addr, Instant::now());
        let mut seen = vec![];
        for failures in 0..12 {
            link.failures = failures;
            let d = link.backoff();
            let base = BACKOFF_MIN.saturating_mul(1 << failures).min(BACKOFF_MAX);
            assert!(d >= base * 3 / 4 && d < base * 5 / 4, "{failures}: {d:?} vs {base:?}");
            seen.push(d);
        }
        assert!(seen[0] < Duration::from_millis(125));
        assert!(seen[11] >= Duration::from_millis(3750));
        // The jitter varies: twenty draws at the cap are not all the same.
        let draws: std::collections::HashSet<Duration> = (0..20).map(|_| link.backoff()).collect();
        assert!(draws.len() > 10, "{draws:?}");
    }

    #[test]
    fn decode_all_keeps_the_partial_reply_and_caps_memory() {
        let mut inbuf = b":1\r\n+OK\r\n$5\r\nhel".to_vec();
        let mut values = vec![];
        decode_all(&mut inbuf, &mut values).unwrap();
        assert_eq!(values, vec![Value::Int(1), Value::Simple("OK".into())]);
        assert_eq!(inbuf, b"$5\r\nhel");
        inbuf.extend_from_slice(b"lo\r\n");
        decode_all(&mut inbuf, &mut values).unwrap();
        assert_eq!(values.last(), Some(&Value::Bulk(b"hello".to_vec())));
        assert!(inbuf.is_empty());

        // An array that keeps growing past the cap is refused.
        let mut inbuf = b"*100\r\n".to_vec();
        let mut element = format!("${}\r\n", 1 << 20).into_bytes();
        element.extend(vec![b'x'; 1 << 20]);
        element.extend_from_slice(b"\r\n");
        for _ in 0..65 {
            inbuf.extend_from_slice(&element);
        }
        let err = decode_all(&mut inbuf, &mut values).unwrap_err();
        assert!(err.contains("exceeds 64 MiB"), "{err}");
    }
}
