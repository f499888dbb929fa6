//! The reactor: one thread, one `mio::Poll`, every socket.
//!
//! This is the loop the whole server turns on, shaped like redis's `ae.c`:
//!
//! ```text
//!  loop {
//!      poll(timeout = next timer)          // sleep until something happens
//!      for each event:                     // dispatch
//!          LISTENER → accept until WouldBlock
//!          WAKER    → storage thread replies (commits, reads)
//!          SIGNALS  → SIGTERM/SIGINT: start the graceful shutdown
//!          key      → a connection: read until WouldBlock, handle what arrived
//!      run due timers                      // 408s, pings, lingering closes
//!      before_sleep:                       // one pass over what changed
//!          flush the authors of this turn's posts first, then take
//!          (zero-timeout poll) what they sent next, up to REPLY_ROUNDS
//!          flush every connection with output (one send each),
//!          except listeners' output that may wait a little to share a
//!          write with the next turn's (pacing.rs)
//!          (WRITABLE is registered once, edge-triggered: no epoll_ctl here)
//!          reap connections marked dead
//!  }
//! ```
//!
//! Handlers never write to sockets directly: they append to a connection's
//! [`OutQueue`](crate::outbuf::OutQueue) and mark it dirty. So a room
//! broadcast that reaches a member ten times in one turn still leaves in one
//! syscall, and a handler can never block.
//!
//! mio registers sockets edge-triggered. The rule from mio's `Poll` docs we
//! rely on: "With edge-triggered events, operations **must** be performed on
//! the `Source` until `WouldBlock` is returned." Every read and accept loop
//! below runs until `WouldBlock` (or parks the connection in `more_to_read`
//! to be resumed next turn, so one fast sender cannot starve the others).
//!
//! Connections are closed lazily (redis's `freeClientAsync`): a handler
//! marks one dead and the reap at the end of the turn removes it, so a slab
//! key is never reused within one batch of events.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::chat::{Chat, Mode};
use crate::config::Config;
use crate::conn::{Connection, HttpState, Phase};
use crate::metrics::Metrics;
use crate::outbuf::Flushed;
use crate::pacing::Pacer;
use crate::response::{DateCache, Response};
use crate::site::Site;
use crate::storage::{Backend, Storage};
use crate::timer::{Timer, TimerKind, Timers};
use crate::ws::Closing;

mod api;
pub mod endpoints;
mod inspect;
mod redis;
mod request;
mod stats;

/// The listening socket. Fixed tokens sit at the top of the token space,
/// far above any slab key (connection keys count up from 0).
pub const LISTENER: Token = Token(usize::MAX - 1);
/// The waker the storage thread (and shutdown handles) use.
pub const WAKER: Token = Token(usize::MAX - 2);
/// SIGTERM / SIGINT.
pub const SIGNALS: Token = Token(usize::MAX - 3);
/// The separate admin listener (`--admin-bind`).
pub const ADMIN_LISTENER: Token = Token(usize::MAX - 4);
/// Redis subscription connection.
pub const REDIS_SUB: Token = Token(usize::MAX - 5);
/// Redis command connection.
pub const REDIS_CMD: Token = Token(usize::MAX - 6);

/// Size of the one read buffer all connections share, in bytes. Data is
/// copied out of it right away (into the HTTP head buffer or tungstenite's
/// frame buffer), so one buffer serves every socket.
const SCRATCH: usize = 64 * 1024;

/// Reads per connection per turn before yielding to others (fairness). With
/// a 64 KiB buffer that is up to 1 MiB per turn for one client.
const MAX_READS_PER_TURN: usize = 16;

/// Extra zero-timeout polls a turn makes before it writes (see `run`):
/// enough to gather a burst, few enough that a flood cannot hold the
/// writes back for more than a few rounds of reading.
const GATHER_ROUNDS: usize = 4;

/// Rounds of "write the authors' copies, gather what they answered"
/// before a turn's fan-out (see `before_sleep`).
const REPLY_ROUNDS: usize = 4;

/// A listener with this much output waiting is written anyway: a write
/// this size is already cheap per byte, and held bytes are memory (at most
/// this much per listener on top of what one turn queues).
pub const HOLD_BYTES: usize = 4 * 1024;

/// When accept fails for lack of descriptors (EMFILE), how soon to retry.
/// Edge-triggered epoll sends no new event for clients already queued, so
/// we must come back by ourselves; 100 ms keeps that from being a busy loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long a closing connection may take to finish (our close frame or
/// response flushed, the peer's FIN or close frame back) before it is dropped.
const LINGER: Duration = Duration::from_secs(2);

/// The period of the once-a-second work (the stats page's feed).
const TICK: Duration = Duration::from_secs(1);

/// How long the graceful shutdown waits for clients to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// A fault that stops the server from starting, worded for the operator.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Lets another thread (a test, or `main` on a signal) stop the server
/// gracefully.
#[derive(Clone, Debug)]
pub struct Handle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Handle {
    /// Starts the graceful shutdown (like SIGTERM).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Whether the server is serving or winding down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Serving,
    /// SIGTERM received: no new connections; existing ones are closing.
    Draining {
        deadline: Instant,
    },
}

/// The whole server: the poll, the sockets, and the state of every room.
pub struct Server {
    pub(crate) poll: Poll,
    listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    /// Every connection, keyed by its token.
    pub(crate) conns: Slab<Connection>,
    /// Settings.
    pub(crate) cfg: Config,
    /// The static site.
    pub(crate) site: Site,
    /// The cached `Date` header.
    pub(crate) date: DateCache,
    /// The shared read buffer.
    scratch: Box<[u8]>,
    /// Connections with output to flush in `before_sleep`.
    pub(crate) dirty: Vec<usize>,
    /// Dirty connections whose own post is among this turn's output: they
    /// are flushed first (see `before_sleep`).
    pub(crate) authors: Vec<usize>,
    /// Whether to hold listeners' output back (see `pacing.rs`).
    pacer: Pacer,
    /// After `before_sleep`: every connection in `dirty` is held output.
    only_held: bool,
    /// Scratch list of the connections a turn holds back (kept, so that
    /// holding allocates nothing turn after turn).
    held: Vec<usize>,
    /// Connections to remove in `before_sleep`.
    dead: Vec<usize>,
    /// Connections that still had input when their read budget ran out.
    more_to_read: Vec<(usize, u64)>,
    /// Deadlines.
    pub(crate) timers: Timers,
    /// Rooms and members.
    pub(crate) chat: Chat,
    /// The storage thread.
    pub(crate) storage: Option<Storage>,
    /// Counters.
    pub(crate) metrics: Metrics,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    state: RunState,
    next_serial: u64,
    /// Set when accept failed for lack of descriptors.
    accept_paused: bool,
    /// The time of the current loop turn (read once per turn).
    pub(crate) now: Instant,
    /// Reused buffer for messages read in one go.
    incoming: Vec<tungstenite::Message>,
    /// Connections watching `/ws/stats`.
    pub(crate) stats_viewers: usize,
    /// Open connections per client address (`--max-per-ip`).
    pub(crate) per_ip: crate::limits::PerIp,
    /// When each batch of appends left for storage: (last sequence, time).
    pub(crate) commit_clock: std::collections::VecDeque<(u64, Instant)>,
    /// The Redis bus, with `--redis`.
    pub(crate) bus: Option<crate::bus::Bus>,
    /// The rooms' Redis side, with `--redis` (see `redis.rs`).
    pub(crate) cluster: Option<crate::cluster::Cluster>,
    /// When the once-a-second work (stats feed) runs next.
    next_tick: Instant,
    /// Counters at the last tick, for per-second rates.
    pub(crate) last_tick: stats::Sample,
}

impl Server {
    /// Binds the listener, opens storage, and prepares the loop. Errors are
    /// server faults (address in use, unreadable data file) for `main` to
    /// print.
    pub fn bind(mut cfg: Config) -> Result<Server, StartError> {
        let poll = Poll::new().map_err(|e| StartError(format!("cannot create the event loop (epoll): {e}")))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(|e| StartError(format!("cannot create the waker: {e}")))?,
        );
        cfg.max_connections = crate::limits::size_connections(cfg.max_connections);
        let site = match &cfg.www {
            Some(dir) => Site::dir(dir).map_err(|e| StartError(e.to_string()))?,
            None => Site::embedded(),
        };
        let mut listener = crate::limits::listen(cfg.bind, cfg.reuse_port)
            .map_err(|e| StartError(format!("cannot listen on {}: {}", cfg.bind, explain_bind_error(&e))))?;
        let local_addr = listener.local_addr().map_err(|e| StartError(format!("listener address: {e}")))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| StartError(format!("cannot register the listener: {e}")))?;
        let (admin_listener, admin_addr) = match cfg.admin_bind {
            Some(addr) => {
                let mut l = crate::limits::listen(addr, false).map_err(|e| {
                    StartError(format!("cannot listen on --admin-bind {addr}: {}", explain_bind_error(&e)))
                })?;
                let a = l.local_addr().ok();
                poll.registry()
                    .register(&mut l, ADMIN_LISTENER, Interest::READABLE)
                    .map_err(|e| StartError(format!("cannot register the admin listener: {e}")))?;
                (Some(l), a)
            }
            None => (None, None),
        };
        let backend = match &cfg.data {
            Some(path) => Backend::Sqlite(path.clone()),
            None => Backend::Memory { keep_per_room: 1000 },
        };
        let (storage, rooms) = Storage::open(backend, waker.clone()).map_err(|e| StartError(e.to_string()))?;
        let (bus, cluster) = Server::open_redis(&cfg, poll.registry())?;
        let mode = if cluster.is_some() { Mode::Shared } else { Mode::Local };
        let chat = Chat::new(&cfg, rooms, mode);
        let cfg_max_per_ip = cfg.max_per_ip;
        let now = Instant::now();
        Ok(Server {
            poll,
            listener: Some(listener),
            admin_listener,
            local_addr,
            admin_addr,
            conns: Slab::with_capacity(1024),
            cfg,
            site,
            date: DateCache::default(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            dirty: Vec::new(),
            authors: Vec::new(),
            pacer: Pacer::new(Instant::now()),
            only_held: false,
            held: Vec::new(),
            dead: Vec::new(),
            more_to_read: Vec::new(),
            timers: Timers::new(),
            chat,
            storage: Some(storage),
            metrics: Metrics::default(),
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            signals: None,
            state: RunState::Serving,
            next_serial: 0,
            accept_paused: false,
            now,
            incoming: Vec::new(),
            stats_viewers: 0,
            per_ip: crate::limits::PerIp::new(cfg_max_per_ip),
            commit_clock: std::collections::VecDeque::new(),
            bus,
            cluster,
            next_tick: now + TICK,
            last_tick: stats::Sample::default(),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, if `--admin-bind` was given.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> Handle {
        Handle { stop: self.stop.clone(), waker: self.waker.clone() }
    }

    /// Routes SIGTERM and SIGINT into the poll (for the binary; tests stop
    /// the server through a [`Handle`] instead).
    pub fn handle_signals(&mut self) -> Result<(), StartError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGTERM, SIGINT])
            .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| StartError(format!("cannot register signals: {e}")))?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Whether the server is serving (not shutting down, storage open).
    pub fn is_ready(&self) -> bool {
        self.state == RunState::Serving && self.storage.is_some()
    }

    /// Whether a graceful shutdown is under way.
    pub fn is_draining(&self) -> bool {
        self.state != RunState::Serving
    }

    /// Runs the loop until a graceful shutdown completes.
    pub fn run(mut self) -> Result<(), StartError> {
        let mut events = Events::with_capacity(1024);
        info!("chatroom listening on http://{}", self.local_addr);
        if let Some(admin) = self.admin_addr {
            info!("admin endpoints on http://{admin}");
        }
        loop {
            let timeout = self.poll_timeout();
            let asked = Instant::now();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                // A signal interrupted epoll_wait: not an error, just go round.
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(StartError(format!("poll failed: {e}")));
            }
            self.now = Instant::now();
            self.pacer.polled(asked, self.now, from_clients(&events));
            let turn_start = self.now;
            self.dispatch(&events);
            // Cork: before writing anything, take what else became ready while
            // we worked (a zero-timeout poll), so that one write per
            // connection carries the answers to all of it. Under load this
            // turns N small writes to each member into one; when idle it costs
            // one empty epoll_wait. Bounded, so the writes are not put off
            // for long by a flood.
            for _ in 0..GATHER_ROUNDS {
                match self.poll.poll(&mut events, Some(Duration::ZERO)) {
                    Ok(()) if !events.is_empty() => {
                        self.now = Instant::now();
                        self.dispatch(&events);
                    }
                    _ => break,
                }
            }
            self.resume_reads();
            self.run_timers();
            if let Some(bus) = &mut self.bus {
                bus.on_timer(self.poll.registry(), self.now);
                self.on_bus_events();
            }
            if self.now >= self.next_tick {
                self.next_tick = self.now + TICK;
                self.on_tick();
            }
            if self.accept_paused {
                self.accept_paused = false;
                self.accept_all(false);
            }
            self.before_sleep(&mut events);
            self.metrics.record_turn(turn_start.elapsed().as_micros() as u64);
            if let RunState::Draining { deadline } = self.state
                && (self.conns.is_empty() || Instant::now() >= deadline)
            {
                break;
            }
        }
        self.finish()
    }

    /// Hands each ready event to its owner.
    fn dispatch(&mut self, events: &Events) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(false),
                ADMIN_LISTENER => self.accept_all(true),
                WAKER => self.on_wake(),
                SIGNALS => self.on_signal(),
                REDIS_CMD | REDIS_SUB => {
                    if let Some(bus) = &mut self.bus {
                        bus.on_event(self.poll.registry(), event.token(), event, self.now);
                    }
                    self.on_bus_events();
                }
                Token(key) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        // No FIN or error reported: a short read means drained.
                        self.on_readable(key, !event.is_read_closed() && !event.is_error());
                    }
                    if event.is_writable() {
                        self.mark_dirty(key);
                    }
                }
            }
        }
    }

    /// How long `poll` may sleep: until the next timer, at most.
    fn poll_timeout(&self) -> Option<Duration> {
        // Held output lets the loop sleep only as long as the pacer says.
        let held_until = self.pacer.sleep_until().filter(|_| self.only_held);
        if !self.more_to_read.is_empty() || self.chat.has_work() || (!self.dirty.is_empty() && held_until.is_none()) {
            return Some(Duration::ZERO);
        }
        let mut timeout = self.timers.next_in(Instant::now());
        if !self.dirty.is_empty()
            && let Some(due) = held_until
        {
            let left = due.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if self.accept_paused {
            timeout = Some(timeout.map_or(ACCEPT_RETRY, |t| t.min(ACCEPT_RETRY)));
        }
        if let RunState::Draining { deadline } = self.state {
            let left = deadline.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if self.stats_viewers > 0 {
            let left = self.next_tick.saturating_duration_since(Instant::now());
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        if let Some(t) = self.bus.as_ref().and_then(|b| b.next_timeout(Instant::now())) {
            timeout = Some(timeout.map_or(t, |cur| cur.min(t)));
        }
        if let Some(t) = self.cluster_wakeup() {
            timeout = Some(timeout.map_or(t, |cur| cur.min(t)));
        }
        timeout
    }

    /// Accepts every queued connection (edge-triggered: until WouldBlock).
    fn accept_all(&mut self, admin: bool) {
        loop {
            let listener = if admin { self.admin_listener.as_ref() } else { self.listener.as_ref() };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((socket, addr)) => self.on_accept(socket, addr, admin),
                // The queue is empty: wait for the next event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A signal interrupted accept(2): try again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_resources(&e) => {
                    // EMFILE/ENFILE: no descriptor for the new client. Log,
                    // and retry after a close or ACCEPT_RETRY, never spin.
                    if !self.accept_paused {
                        error!("accept: {e}; retrying when a connection closes or in 100 ms");
                    }
                    self.accept_paused = true;
                    return;
                }
                // ECONNABORTED and friends: that one client is gone; next.
                Err(e) => debug!("accept: {e}"),
            }
        }
    }

    /// A new TCP connection: admit it or refuse it politely.
    fn on_accept(&mut self, mut socket: TcpStream, addr: SocketAddr, admin: bool) {
        if self.conns.len() >= self.cfg.max_connections {
            self.metrics.refused += 1;
            refuse_at_accept(&mut socket, "the server is at its connection limit; try again shortly");
            return;
        }
        // Behind a trusted proxy the real client is only known from
        // X-Forwarded-For, after the head: `on_client_address` checks then.
        let behind_proxy = self.cfg.trusted_proxy.iter().any(|net| net.contains(addr.ip()));
        if !behind_proxy && !self.per_ip.admit(addr.ip()) {
            self.metrics.refused += 1;
            refuse_at_accept(&mut socket, "too many connections from your address");
            return;
        }
        // Chat frames are small and latency matters more than packet count:
        // don't let Nagle hold a frame back waiting for an ACK.
        let _ = socket.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        // READABLE and WRITABLE once, for the connection's life: edge-triggered
        // WRITABLE fires only when a full send buffer drains, which is exactly
        // when a stuck flush can resume. Toggling interest per stall would
        // cost two epoll_ctl calls each time (the redis ae.c way, built for
        // level-triggered polling).
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut socket, Token(key), interest) {
            warn!("register {addr}: {e}");
            if !behind_proxy {
                self.per_ip.release(addr.ip());
            }
            return;
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        let mut conn = Connection::new(socket, serial, addr.ip(), self.now);
        conn.counted_ip = !behind_proxy;
        conn.admin = admin;
        entry.insert(conn);
        self.metrics.accepted += 1;
        debug!("open #{serial} from {addr}");
        self.timers.arm(Timer { at: self.now + self.cfg.header_timeout, key, serial, kind: TimerKind::Http });
    }

    /// Data (or EOF, or an error) on a connection.
    ///
    /// `short_read_drains`: a read that returns less than the buffer holds
    /// has emptied the socket, so we stop there instead of paying one more
    /// `recv` just to hear WouldBlock (one syscall saved per message). This
    /// is safe with edge-triggered epoll because every later arrival,
    /// data or FIN, queues a fresh event. It is false when the event already
    /// said the peer closed (that FIN would raise no new event, so we read
    /// on until the 0) and for the read budget's second go.
    fn on_readable(&mut self, key: usize, short_read_drains: bool) {
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
    fn read_http(&mut self, key: usize, short_read_drains: bool) {
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

    /// Answers every complete request in the buffer, in order (pipelining).
    fn process_http(&mut self, key: usize) {
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

    /// WebSocket phase: read frames and handle each complete message.
    fn read_ws(&mut self, key: usize, short_read_drains: bool) {
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
    fn read_and_discard(&mut self, key: usize) {
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
    fn resume_reads(&mut self) {
        let pending = std::mem::take(&mut self.more_to_read);
        for (key, serial) in pending {
            if self.conns.get(key).is_some_and(|c| c.serial == serial && !c.dead) {
                self.on_readable(key, false);
            }
        }
    }

    /// Marks a connection to be flushed in `before_sleep`.
    pub(crate) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
            && !conn.dead
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Marks a connection dead: it is reaped at the end of this turn.
    pub(crate) fn kill(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dead
        {
            conn.dead = true;
            self.dead.push(key);
        }
    }

    /// The end of every turn: flush, adjust interest, reap (ae.c's beforeSleep).
    fn before_sleep(&mut self, events: &mut Events) {
        // Reap first: a member who left this turn is announced this turn.
        let mut closed_any = self.reap_dead();
        self.chat_before_flush();
        self.flush_bus();
        // Authors first: a poster's copy of its own message is its
        // acknowledgement, and a client that waits for it sends nothing
        // more until it arrives. Write those, then take (zero-timeout) what
        // they answered with, so the fan-out below carries both to each
        // listener in one write instead of one write each turn.
        for _ in 0..REPLY_ROUNDS {
            if self.authors.is_empty() {
                break;
            }
            let authors = std::mem::take(&mut self.authors);
            for &key in &authors {
                if self.conns.get(key).is_some_and(|c| c.dirty) {
                    self.flush(key);
                }
            }
            match self.poll.poll(events, Some(Duration::ZERO)) {
                Ok(()) if !events.is_empty() => {
                    self.now = Instant::now();
                    self.dispatch(events);
                    self.chat_before_flush();
                    self.flush_bus();
                }
                _ => break,
            }
        }
        self.authors.clear();
        // Listeners' output may wait a little to share a write with the
        // next turn's (see `pacing.rs`); everything else goes now.
        let hold = self.pacer.may_hold(self.now, self.metrics.messages_received);
        let dirty = std::mem::take(&mut self.dirty);
        let mut held = std::mem::take(&mut self.held);
        for &key in &dirty {
            let Some(conn) = self.conns.get(key) else { continue };
            if !conn.dirty {
                continue;
            }
            if hold && !conn.urgent && !conn.dead && conn.out.len() < HOLD_BYTES {
                held.push(key);
            } else {
                self.flush(key);
            }
        }
        self.metrics.held_turns += u64::from(!held.is_empty());
        self.pacer.held(self.now, !held.is_empty());
        self.only_held = !held.is_empty() && self.dirty.is_empty();
        let mut dirty = dirty;
        dirty.clear();
        dirty.append(&mut held);
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
        self.held = held;
        // Writes that failed just now are reaped too; anything they cause
        // (a leave event) goes out next turn, which `poll_timeout` makes immediate.
        closed_any |= self.reap_dead();
        if closed_any && self.accept_paused {
            // A descriptor came free: the clients queued behind EMFILE can come in.
            self.accept_paused = false;
            self.accept_all(false);
        }
    }

    /// Writes a connection's queued output: one vectored write per turn when the
    /// socket takes it all; when it does not, the rest waits for the
    /// WRITABLE event (registered once, at accept).
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.dirty = false;
        conn.urgent = false;
        if conn.dead {
            return;
        }
        let before = conn.out.len();
        if before > 0 {
            self.metrics.flushes += 1;
        }
        let result = conn.out.write_to(&mut conn.socket);
        self.metrics.bytes_out += (before - conn.out.len()) as u64;
        match result {
            Ok(Flushed::All) => {
                conn.writable_interest = false;
                let held_back =
                    matches!(&conn.phase, Phase::Http(http) if !http.buf.is_empty() && http.parked.is_none());
                if held_back && !conn.final_answer && !conn.lingering {
                    // Pipelined requests held back by a full queue (or read
                    // before the client's FIN): answer on.
                    self.resume_http(key);
                } else if conn.close_after_flush {
                    self.start_linger(key);
                }
            }
            Ok(Flushed::Partial) => {
                // Stuck until the kernel's send buffer drains; the socket is
                // registered for WRITABLE from the start (edge-triggered, it
                // reports only the change), so no epoll_ctl is needed here.
                conn.writable_interest = true;
                if conn.out.len() > self.cfg.max_pending {
                    self.drop_slow_consumer(key);
                }
            }
            Err(e) => {
                debug!("write #{}: {e}", conn.serial);
                self.kill(key);
            }
        }
    }

    /// A client that leaves more than `--max-pending` unread is closed with
    /// 1008 "slow consumer": its backlog is dropped, a close frame is tried,
    /// and the socket goes soon after, whether or not it read it.
    pub(crate) fn drop_slow_consumer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.dead || conn.close_after_flush {
            return;
        }
        self.metrics.slow_consumers += 1;
        debug!("#{}: slow consumer ({} bytes pending)", conn.serial, conn.out.len());
        conn.out.drop_unsent();
        if let Phase::WebSocket(ws) = &mut conn.phase {
            ws.session.fail(1008, "slow consumer", &mut conn.out);
        }
        conn.close_after_flush = true;
        let (serial, at) = (conn.serial, self.now + LINGER);
        self.timers.arm(Timer { at, key, serial, kind: TimerKind::Linger });
        self.mark_dirty(key);
    }

    /// Everything is sent: half-close and wait (briefly) for the client's
    /// FIN, so unread input does not turn our last bytes into a reset.
    fn start_linger(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.lingering {
            return;
        }
        conn.lingering = true;
        // A finished close handshake means the client has sent its last
        // frame: nothing can still arrive to turn our FIN into a reset, so
        // close right away instead of waiting for its FIN.
        if let Phase::WebSocket(ws) = &conn.phase
            && ws.session.closing() == Closing::Done
        {
            return self.kill(key);
        }
        if conn.socket.shutdown(std::net::Shutdown::Write).is_err() {
            return self.kill(key);
        }
        let (serial, at) = (conn.serial, self.now + LINGER);
        self.timers.arm(Timer { at, key, serial, kind: TimerKind::Linger });
        // Input may already be waiting (edge-triggered: no new event for it).
        self.read_and_discard(key);
    }

    /// Reaps every connection marked dead; whether there were any.
    fn reap_dead(&mut self) -> bool {
        let dead = std::mem::take(&mut self.dead);
        let any = !dead.is_empty();
        for key in dead {
            self.reap(key);
        }
        any
    }

    /// Removes a dead connection for good.
    fn reap(&mut self, key: usize) {
        if !self.conns.get(key).is_some_and(|c| c.dead) {
            return;
        }
        let conn = self.conns.remove(key);
        // No epoll_ctl(DEL): closing the descriptor (dropping `conn`) takes
        // it out of the epoll set on Linux, one syscall fewer per connection.
        if conn.counted_ip {
            self.per_ip.release(conn.ip);
        }
        debug!("close #{}", conn.serial);
        if let Phase::WebSocket(ws) = conn.phase {
            let ws = *ws;
            self.on_ws_closed(key, ws);
        }
    }

    /// Due timers: each checks whether it still applies.
    fn run_timers(&mut self) {
        while let Some(timer) = self.timers.pop_due(self.now) {
            let Some(conn) = self.conns.get_mut(timer.key) else { continue };
            if conn.serial != timer.serial || conn.dead {
                continue;
            }
            match timer.kind {
                TimerKind::Linger => self.kill(timer.key),
                TimerKind::Http => self.on_http_timer(timer.key),
                TimerKind::Heartbeat => self.on_heartbeat(timer.key),
            }
        }
    }

    /// Slowloris (408) and idle keep-alive (close) deadlines.
    fn on_http_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::Http(http) = &conn.phase else { return };
        if http.parked.is_some() || conn.close_after_flush {
            return;
        }
        let serial = conn.serial;
        let deadline = match http.head_started {
            Some(started) => started + self.cfg.header_timeout,
            // Nothing received yet since accept (last_read starts at accept).
            None if http.served == 0 => conn.last_read + self.cfg.header_timeout,
            None => conn.last_read + self.cfg.idle_timeout,
        };
        if deadline > self.now {
            self.timers.arm(Timer { at: deadline, key, serial, kind: TimerKind::Http });
            return;
        }
        if http.head_started.is_some() || http.served == 0 {
            debug!("#{serial}: request head not complete in time (408)");
            if let Phase::Http(http) = &mut conn.phase {
                http.buf.clear();
            }
            self.respond(key, Response::text(408, "request head not received in time").close(true));
        } else {
            debug!("#{serial}: idle keep-alive closed");
            self.kill(key);
        }
    }

    /// The WebSocket heartbeat: ping when quiet, close when the ping goes
    /// unanswered (any bytes from the client count as an answer).
    fn on_heartbeat(&mut self, key: usize) {
        let now = self.now;
        let (interval, timeout) = (self.cfg.ping_interval, self.cfg.ping_timeout);
        let Some(conn) = self.conns.get_mut(key) else { return };
        let serial = conn.serial;
        let last_read = conn.last_read;
        let Phase::WebSocket(ws) = &mut conn.phase else { return };
        let next = match ws.ping_sent {
            Some(sent) if last_read >= sent => {
                ws.ping_sent = None;
                last_read + interval
            }
            Some(sent) if now >= sent + timeout => {
                debug!("#{serial}: no answer to ping; closing");
                return self.kill(key);
            }
            Some(sent) => sent + timeout,
            None if now >= last_read + interval => {
                conn.out.shrink();
                ws.session.ping(b"chatroom", &mut conn.out);
                ws.ping_sent = Some(now);
                self.mark_dirty(key);
                now + timeout
            }
            None => last_read + interval,
        };
        self.timers.arm(Timer { at: next, key, serial, kind: TimerKind::Heartbeat });
    }

    /// The waker fired: storage replies, or a shutdown request.
    fn on_wake(&mut self) {
        if self.stop.swap(false, Ordering::SeqCst) {
            self.begin_shutdown();
        }
        self.on_storage_replies();
    }

    /// SIGTERM or SIGINT.
    fn on_signal(&mut self) {
        let mut got = false;
        if let Some(signals) = &mut self.signals {
            for signal in signals.pending() {
                info!("received signal {signal}; shutting down");
                got = true;
            }
        }
        if got {
            self.begin_shutdown();
        }
    }

    /// Graceful shutdown: stop accepting WebSockets, say 1001 to every open
    /// one, let HTTP answers finish, and wait up to a few seconds for
    /// everyone to go. The listener stays open so that a load balancer can
    /// still read `/readyz` (503 from now on) and take us out of rotation;
    /// new connections get HTTP answers with `Connection: close`, and
    /// upgrades a 503.
    fn begin_shutdown(&mut self) {
        if self.state != RunState::Serving {
            return;
        }
        self.state = RunState::Draining { deadline: self.now + SHUTDOWN_GRACE };
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match &mut conn.phase {
                Phase::WebSocket(ws) => {
                    ws.session.close(1001, "server shutting down", &mut conn.out);
                    conn.close_after_flush = true;
                }
                Phase::Http(http) => {
                    if let Some(parked) = &mut http.parked {
                        // The answer waits for storage: it will be the
                        // connection's last (closing now would lose it).
                        parked.keep_alive = false;
                        continue;
                    } else if !conn.out.is_empty() {
                        // An answer is on its way: it is the connection's last.
                        conn.close_after_flush = true;
                    } else if http.buf.is_empty() && http.served > 0 {
                        // Idle between requests: nothing is lost by closing.
                        self.kill(key);
                        continue;
                    } else {
                        // A first request (or the rest of a head) may be on
                        // its way; closing now would reset it unanswered. It
                        // is answered, with `Connection: close`.
                        continue;
                    }
                }
            }
            self.mark_dirty(key);
        }
    }

    /// After the loop: commit the last history and stop the storage thread.
    fn finish(mut self) -> Result<(), StartError> {
        if let Some(storage) = self.storage.take() {
            storage.shutdown().map_err(|e| StartError(format!("storage did not shut down cleanly: {e}")))?;
        }
        info!("chatroom stopped");
        Ok(())
    }
}

/// Answers a connection we will not serve with 503 and closes it, without
/// giving it a slot: one best-effort write of a short response.
fn refuse_at_accept(socket: &mut TcpStream, why: &str) {
    use std::io::Write;
    let body = format!("{why}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write(response.as_bytes());
    let _ = socket.shutdown(std::net::Shutdown::Write);
}

/// Whether any of these events is clients' doing: what the pacer's "busy"
/// means. Their sockets and the listeners count, and so does the Redis
/// subscription, which carries the posts of other processes' clients. The
/// storage thread's wake-up and the replies on the Redis command connection
/// answer our own requests: that they were ready the moment we polled says
/// how fast the answer came, not that anyone queues.
fn from_clients(events: &Events) -> bool {
    events.iter().any(|e| is_clients(e.token()))
}

/// See [`from_clients`].
fn is_clients(token: Token) -> bool {
    !matches!(token, WAKER | SIGNALS | REDIS_CMD)
}

/// Whether an accept error means "out of descriptors or memory".
fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Turns a bind error into advice.
fn explain_bind_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            "the address is already in use (another server runs there; pick another --bind)".into()
        }
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)".into(),
        io::ErrorKind::AddrNotAvailable => "no such local address".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_sockets_and_listeners_make_the_loop_busy() {
        for token in [Token(0), Token(12_345), LISTENER, ADMIN_LISTENER, REDIS_SUB] {
            assert!(is_clients(token), "{token:?}");
        }
        for token in [WAKER, SIGNALS, REDIS_CMD] {
            assert!(!is_clients(token), "{token:?}");
        }
    }
}
