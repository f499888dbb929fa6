//! The reactor: one thread, one `mio::Poll`, every socket.
//!
//! Everything that is `impl Server` lives in this folder, one concern a
//! file, in the order a byte travels:
//!
//! | file | when it runs |
//! |---|---|
//! | `mod.rs` | start: the listeners, storage, the bus; the `Server` itself |
//! | `run.rs` | the loop: poll, dispatch each event, the turn's order |
//! | `accept.rs` | a listener is readable: admit or refuse new clients |
//! | `read.rs` | a connection is readable: bytes to its phase |
//! | `respond.rs` | HTTP: whole requests out of the reader, answers queued in order |
//! | `request.rs` | what one request gets: a page, the API, an upgrade |
//! | `api.rs` | the JSON API over rooms |
//! | `backend.rs` | the server API: a site's backend posts, with an API key |
//! | `endpoints.rs` | WebSocket: frames to messages, each endpoint's reply |
//! | `pressure.rs` | a member with too many posts in flight is not read, then resumed |
//! | `inspect.rs` | the learn page's inspector: descriptions and commands |
//! | `delivery.rs` | the chat's decisions become queued frames; storage replies |
//! | `redis.rs` | the bus's events to the chat, the chat's commands to the bus |
//! | `timers.rs` | deadlines: 408, idle keep-alive, heartbeat, linger |
//! | `stats.rs` | gauges, and the stats page's once-a-second feed |
//! | `flush.rs` | the end of the turn: write, hold, linger, reap |
//! | `shutdown.rs` | signals: SIGTERM/SIGINT drain and stop; SIGHUP reloads TLS; SIGXFSZ is ignored |
//!
//! A post travels down this table: `read.rs` reads it, `endpoints.rs`
//! hands it to the chat, `delivery.rs` sends the turn's posts to storage
//! and queues each committed one, framed once, for every member, and
//! `flush.rs` writes each member's queue with one `sendmsg`.
//!
//! Handlers never write to sockets: they queue output on a connection
//! (`crate::conn`, which owns the socket and the connection's state
//! machine) and mark it dirty, so a handler can never block.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::info;
use mio::net::TcpListener;
use mio::{Interest, Poll, Token, Waker};
use slab::Slab;

use crate::chat::{Chat, Mode};
use crate::config::Config;
use crate::conn::Connection;
use crate::metrics::Metrics;
use crate::pacing::Pacer;
use crate::response::DateCache;
use crate::site::Site;
use crate::storage::{Backend, Storage};
use crate::timer::Timers;

mod accept;
mod api;
mod backend;
mod delivery;
mod endpoints;
mod flush;
mod inspect;
mod pressure;
mod read;
mod redis;
mod request;
mod respond;
mod run;
mod shutdown;
mod stats;
mod timers;

/// The listening socket. Fixed tokens sit at the top of the token space,
/// far above any slab key (connection keys count up from 0).
const LISTENER: Token = Token(usize::MAX - 1);
/// The waker the storage thread (and shutdown handles) use.
const WAKER: Token = Token(usize::MAX - 2);
/// SIGTERM, SIGINT and SIGHUP.
const SIGNALS: Token = Token(usize::MAX - 3);
/// The separate admin listener (`--admin-bind`).
const ADMIN_LISTENER: Token = Token(usize::MAX - 4);
/// Redis subscription connection.
const REDIS_SUB: Token = Token(usize::MAX - 5);
/// Redis command connection.
const REDIS_CMD: Token = Token(usize::MAX - 6);
/// The plain-HTTP listener that redirects to TLS (`--redirect-bind`).
const REDIRECT_LISTENER: Token = Token(usize::MAX - 7);
/// Redis Cluster nodes at most (`--redis-cluster`): each takes two tokens
/// from the range below, commands then subscriptions. Far more than the
/// masters of any cluster a chat server uses.
const REDIS_NODES: usize = 1024;
/// The first token of the cluster's range, just below the fixed tokens and
/// still far above any slab key.
const REDIS_NODE_TOKENS: usize = usize::MAX - 7 - 2 * REDIS_NODES;

/// Size of the one read buffer all connections share, in bytes. Data is
/// copied out of it right away (into the HTTP head buffer or tungstenite's
/// frame buffer), so one buffer serves every socket.
const SCRATCH: usize = 64 * 1024;

/// Reads per connection per turn before yielding to others (fairness). With
/// a 64 KiB buffer that is up to 1 MiB per turn for one client.
const MAX_READS_PER_TURN: usize = 16;

/// TLS handshake steps (a ClientHello's key exchange and signature, say)
/// one loop turn takes at most; the connections beyond wait for the next
/// turn, so a burst of new clients cannot stall everyone else's messages
/// for long (an RSA-2048 signature costs about ten ECDSA P-256 ones).
const HANDSHAKES_PER_TURN: usize = 16;

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
    poll: Poll,
    listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    redirect_listener: Option<TcpListener>,
    /// TLS on `--bind`: the configuration new connections start with.
    tls: Option<crate::tls::Certificates>,
    /// TLS handshake steps taken this turn (see [`HANDSHAKES_PER_TURN`]).
    handshakes: usize,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    redirect_addr: Option<SocketAddr>,
    /// Every connection, keyed by its token.
    conns: Slab<Connection>,
    /// Settings.
    cfg: Config,
    /// The static site.
    site: Site,
    /// The cached `Date` header.
    date: DateCache,
    /// The shared read buffer.
    scratch: Box<[u8]>,
    /// Connections with output to flush in `before_sleep`.
    dirty: Vec<usize>,
    /// Dirty connections whose own post is among this turn's output: they
    /// are flushed first (see `before_sleep`).
    authors: Vec<usize>,
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
    /// Connections not read for their posts in flight (see `pressure.rs`).
    paused: Vec<(usize, u64)>,
    /// Deadlines.
    timers: Timers,
    /// Rooms and members.
    chat: Chat,
    /// The keys users' tokens are checked against (`--auth-*`), if any.
    auth: Option<crate::auth::Auth>,
    /// `--private-rooms`.
    private_rooms: crate::auth::Patterns,
    /// The keys that open the server API (`--api-key`), if any.
    api_keys: Option<crate::auth::ApiKeys>,
    /// The storage thread.
    storage: Option<Storage>,
    /// Counters.
    metrics: Metrics,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    state: RunState,
    next_serial: u64,
    /// Set when accept failed for lack of descriptors.
    accept_paused: bool,
    /// The time of the current loop turn (read once per turn).
    now: Instant,
    /// Reused buffer for messages read in one go.
    incoming: Vec<tungstenite::Message>,
    /// Connections watching `/ws/stats`.
    stats_viewers: usize,
    /// Open connections per client address (`--max-per-ip`).
    per_ip: crate::limits::PerIp,
    /// When each batch of appends left for storage: (last sequence, time).
    commit_clock: std::collections::VecDeque<(u64, Instant)>,
    /// Why the data file cannot take writes now (deleted or replaced
    /// underneath), as the storage thread last said.
    storage_problem: Option<String>,
    /// The Redis bus, with `--redis`.
    bus: Option<crate::bus::AnyBus>,
    /// The rooms' Redis side, with `--redis` (see `redis.rs`).
    cluster: Option<crate::cluster::Cluster>,
    /// API requests parked until the cluster's directory refresh is in.
    directory_waiters: Vec<api::ApiWaiter>,
    /// When the once-a-second work (stats feed) runs next.
    next_tick: Instant,
    /// Counters at the last tick, for per-second rates.
    last_tick: stats::Sample,
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
        // Certificates first: a bad file stops the start before anything
        // is bound or logged.
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(crate::tls::Certificates::load(cert, key).map_err(StartError)?),
            None => None,
        };
        cfg.max_connections = crate::limits::size_connections(cfg.max_connections);
        let site = match &cfg.www {
            Some(dir) => Site::dir(dir).map_err(|e| StartError(e.to_string()))?,
            None => Site::embedded(),
        };
        let auth = crate::auth::Auth::from_config(&cfg).map_err(StartError)?;
        if let Some(auth) = &auth {
            info!("tokens checked with {}; guests {:?}", crate::auth::describe(auth), cfg.guests);
        }
        let api_keys = crate::auth::ApiKeys::from_config(&cfg).map_err(StartError)?;
        if let Some(keys) = &api_keys {
            info!("server API open to {} key(s)", keys.len());
        }
        let mut listener = crate::limits::listen(cfg.bind, cfg.reuse_port)
            .map_err(|e| StartError(format!("cannot listen on {}: {}", cfg.bind, explain_bind_error(&e))))?;
        let local_addr = listener.local_addr().map_err(|e| StartError(format!("listener address: {e}")))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| StartError(format!("cannot register the listener: {e}")))?;
        let (admin_listener, admin_addr) = extra_listener(&poll, cfg.admin_bind, ADMIN_LISTENER, "--admin-bind")?;
        let (redirect_listener, redirect_addr) =
            extra_listener(&poll, cfg.redirect_bind, REDIRECT_LISTENER, "--redirect-bind")?;
        if tls.is_some() {
            info!("TLS on {local_addr} (https://, wss://)");
        }
        if let Some(addr) = redirect_addr {
            info!("redirecting plain HTTP on {addr} to https://");
        }
        let backend = match &cfg.data {
            Some(path) => Backend::Sqlite { path: path.clone(), max_size: cfg.max_data_size },
            None => Backend::Memory { keep_per_room: 1000 },
        };
        let (mut storage, rooms) = Storage::open(backend, waker.clone()).map_err(|e| StartError(e.to_string()))?;
        let bans = storage.take_bans();
        let (bus, cluster) = Server::open_redis(&cfg, poll.registry())?;
        let mode = if cluster.is_some() { Mode::Shared } else { Mode::Local };
        let mut chat = Chat::new(&cfg, rooms, mode);
        for ban in bans {
            chat.bans.insert(&ban.room, &ban.who, crate::auth::bans::Ban { until: ban.until, reason: ban.reason });
        }
        if mode == Mode::Shared && cfg.data.is_none() {
            chat.without_copies();
        }
        let cfg_max_per_ip = cfg.max_per_ip;
        let private_rooms = crate::auth::Patterns::new(cfg.private_rooms.clone());
        let now = Instant::now();
        Ok(Server {
            poll,
            listener: Some(listener),
            admin_listener,
            redirect_listener,
            redirect_addr,
            tls,
            handshakes: 0,
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
            paused: Vec::new(),
            timers: Timers::new(),
            chat,
            auth,
            private_rooms,
            api_keys,
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
            storage_problem: None,
            bus,
            cluster,
            directory_waiters: Vec::new(),
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

    /// The redirect listener's address, if `--redirect-bind` was given.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_addr
    }

    /// A handle to stop the server from another thread.
    pub fn handle(&self) -> Handle {
        Handle { stop: self.stop.clone(), waker: self.waker.clone() }
    }

    /// Whether the server is serving (not shutting down, storage open).
    pub(super) fn is_ready(&self) -> bool {
        self.state == RunState::Serving && self.storage.is_some() && self.storage_problem.is_none()
    }

    /// Whether a graceful shutdown is under way.
    pub(super) fn is_draining(&self) -> bool {
        self.state != RunState::Serving
    }
}

/// Binds and registers a listener of its own (`--admin-bind`,
/// `--redirect-bind`), when one is asked for.
fn extra_listener(
    poll: &Poll,
    addr: Option<SocketAddr>,
    token: Token,
    flag: &str,
) -> Result<(Option<TcpListener>, Option<SocketAddr>), StartError> {
    let Some(addr) = addr else { return Ok((None, None)) };
    let mut listener = crate::limits::listen(addr, false)
        .map_err(|e| StartError(format!("cannot listen on {flag} {addr}: {}", explain_bind_error(&e))))?;
    let local = listener.local_addr().ok();
    poll.registry()
        .register(&mut listener, token, Interest::READABLE)
        .map_err(|e| StartError(format!("cannot register the {flag} listener: {e}")))?;
    Ok((Some(listener), local))
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
