//! # loadgen: many WebSocket clients on one core, and a check of every delivery
//!
//! `loadgen` drives a chat server that runs on this machine (chatroom itself, or one of the
//! reference peers in `shared/peers/`) and reports how fast it delivers and whether it
//! delivered correctly. It is one thread around one `mio::Poll`, the same shape as the
//! server it measures, so pin it to a core of its own (`taskset -c 1 loadgen ...`) and the
//! server to another: then "deliveries/s" is what one server core achieved, as long as the
//! load generator's core is not the one that is full (watch `top`).
//!
//! ## Modes
//!
//! - `room` (default): N clients spread over R rooms; S of them post M messages each. Every
//!   receiver checks every delivery: per sender, sequence numbers must arrive exactly as
//!   0, 1, 2, ... (anything else is a loss, a duplicate or a reorder); all receivers of a room
//!   must see the same interleaving of senders (each folds what it sees into an order hash);
//!   and when frames carry an `id`, ids must climb by one. Closed loop by default (a sender
//!   posts its next message when its previous one came back to it), open loop with `--rate`
//!   (a fixed schedule, whatever the server does; latency is then measured from the
//!   *scheduled* time, so a stalled server cannot hide its stall: no coordinated omission).
//! - `echo`: N clients on `/ws/echo`, closed loop, each echo compared with what was sent.
//! - `idle`: N connections that only listen; with `--server-pid`, the server's RSS before and
//!   after gives the memory one idle connection costs.
//! - `churn`: N concurrent cycles of connect, (welcome,) post, await own message, close.
//!
//! ## Reading the output
//!
//! - `deliveries/s` counts frames delivered to receivers (one post to a room of 1,000 is
//!   1,000 deliveries), over the window from the first post to the last delivery.
//! - Latencies are receive time minus send time, both read from one monotonic clock in this
//!   process; the send time travels inside the message text. Percentiles come from a
//!   log-linear histogram with under 1% error; `max` is exact.
//! - `server cpu` is the server process's user+system time over the measurement window, from
//!   `/proc/PID/stat`; per delivery it is the figure to compare between servers, since it
//!   does not depend on how busy the rest of the machine was.
//! - `lost` = expected deliveries that never arrived before `--timeout`; `order_mismatch` =
//!   receivers that got every delivery, but whose order hash differs from that of most
//!   complete receivers of their room (they saw the senders interleaved differently).
//!
//! The exit status is 0 only when every check passed, 1 otherwise, 2 for a usage error, so a
//! script can gate on it.
//!
//! ## Layout of this file
//!
//! command line · target URL · clock, histogram, /proc sampling · frame parsing · the
//! connection engine (`Net`: connect, upgrade, frames) · the drive loop · one section per
//! mode · the report.

// Bytes from the network must never panic this process (STYLE.md, "Errors"): no unwrap,
// expect or indexing outside tests, the same rule the chatroom crate keeps.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tungstenite::error::ProtocolError;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

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

/// Cap on an HTTP response head; a server that sends more is not answering an upgrade.
const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// How long the flavour probe waits for a first frame after its handshake. chatroom sends
/// its welcome within a millisecond; the peers never send one, so this is what a peer run
/// pays once.
const PROBE_WAIT: Duration = Duration::from_millis(500);

/// Before measuring, wait until no frame arrived for this long (join and presence frames of
/// the connect phase are still in flight), but never longer than `SETTLE_MAX`.
const SETTLE_QUIET: Duration = Duration::from_millis(200);
const SETTLE_MAX: Duration = Duration::from_secs(3);

/// The idle mode's settle before sampling RSS: the server may still be allocating for the
/// last connections (join broadcasts, buffers), so wait longer.
const IDLE_SETTLE_QUIET: Duration = Duration::from_secs(1);

/// Time a server has to answer our close frame and close TCP before we just drop the socket.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Longest single `poll` sleep: the stop conditions of the drive loop (quiet periods,
/// deadlines) are checked at least this often.
const MAX_POLL_SLEEP: Duration = Duration::from_millis(20);

/// epoll's timeout has millisecond resolution and mio rounds up, so a timer could fire up to
/// a millisecond late. So the loop sleeps whole milliseconds (rounded down) and, within this
/// distance of a timer, polls without sleeping; the core is ours, and an open-loop schedule
/// stays accurate to microseconds for at most a millisecond of spinning per timer.
const SPIN_WINDOW: Duration = Duration::from_millis(1);

/// Readiness events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// Pause before a churn slot starts a new cycle after a failed one, so a server that
/// refuses connections is not hammered in a tight loop.
const CHURN_FAILURE_PAUSE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

const USAGE: &str = "\
usage: loadgen --url ws://127.0.0.1:PORT [options]

Drives a chat server on this machine (chatroom, or a reference peer) with many WebSocket
clients, checks every delivery, and reports throughput, latency and server CPU.

modes (--mode):
  room    (default) N clients over R rooms, S senders post M messages each; every receiver
          checks loss, duplicates, order and ids; reports deliveries/s
  echo    N clients on /ws/echo, closed loop, each echo compared; reports round trips/s
  idle    N connections that only listen; with --server-pid, server RSS per connection
  churn   N concurrent cycles: connect, post, await own message, close; reports cycles/s

options:
  --url ws://HOST:PORT   the server; HOST must be 127.0.0.0/8, localhost or [::1]
  --mode MODE            room | echo | idle | churn                                [room]
  --clients N            connections (churn: concurrent cycles)
                         [room 100, echo 10, idle 1000, churn 50]
  --rooms R              rooms bench-0..bench-R-1 (idle-*, churn-* in those modes)     [1]
  --senders S            room: senders in total, spread over the rooms                 [R]
  --messages M           room: messages per sender [100]; echo: round trips per client
                         (instead of --duration)
  --size BYTES           message text length                                          [100]
  --window W             room, closed loop: messages in flight per sender               [1]
  --rate X               room: open loop, X messages/s offered in total, on a schedule
  --warmup N             room: each sender first posts N unmeasured messages           [0]
  --duration SECS        echo [5], churn [5]: how long to run; idle [2]: how long to hold
  --timeout SECS         bound on each wait: connecting, measuring                     [60]
  --flavour F            auto | typed | plain: does the server send typed frames
                         (chatroom) or bare {username, message} ones (peers)?        [auto]
  --path-prefix P        path in front of the room name                    [/ws/chatroom/]
  --server-pid PID       sample this process's CPU time and RSS from /proc
  --json                 print one JSON object line instead of the text block
  --help                 print this text

Pin the server and loadgen to different cores and name the server's PID, e.g.
  taskset -c 1 loadgen --url ws://127.0.0.1:8000 --clients 1000 --senders 10 --messages 200 --server-pid PID
  taskset -c 1 loadgen --url ws://127.0.0.1:8000 --clients 100 --senders 10 --rate 200 --messages 100
  taskset -c 1 loadgen --url ws://127.0.0.1:8000 --mode idle --clients 10000 --server-pid PID

exit status: 0 when every check passed, 1 when one failed or the run could not complete,
2 for a usage error.
";

/// Which experiment to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Room,
    Echo,
    Idle,
    Churn,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Room => "room",
            Mode::Echo => "echo",
            Mode::Idle => "idle",
            Mode::Churn => "churn",
        }
    }
}

/// What the server's room frames look like; decides when a client counts as "connected".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    /// Find out with a probe connection (see `detect_flavour`).
    Auto,
    /// chatroom: every frame has a `type`, and a `welcome` frame opens each membership.
    Typed,
    /// The reference peers: bare `{"username", "message"}` frames, nothing on join.
    Plain,
}

/// Everything the command line decides, with the defaults of the chosen mode applied.
#[derive(Clone, Debug)]
struct Options {
    target: Target,
    mode: Mode,
    clients: usize,
    rooms: usize,
    senders: usize,
    messages: Option<u64>,
    size: usize,
    window: u32,
    rate: Option<f64>,
    warmup: u32,
    duration: Duration,
    timeout: Duration,
    flavour: Flavour,
    path_prefix: String,
    server_pid: Option<u32>,
    json: bool,
}

/// What `main` should do.
enum Command {
    Help,
    Run(Box<Options>),
}

/// Reads the value after `flag`, or explains what is missing.
fn flag_value<T: FromStr>(flag: &str, args: &mut impl Iterator<Item = String>) -> Result<T, String> {
    let raw = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
    raw.parse().map_err(|_| format!("{flag}: cannot read {raw:?} as a value of the right kind"))
}

/// Seconds on the command line may be fractional ("0.5"); they must be positive and finite.
fn seconds(flag: &str, args: &mut impl Iterator<Item = String>) -> Result<Duration, String> {
    let secs: f64 = flag_value(flag, args)?;
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(format!("{flag} must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses the arguments after the program name. Only syntax and ranges are checked here;
/// the URL is checked for being loopback in `parse_url`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut url: Option<String> = None;
    let mut mode = Mode::Room;
    let mut clients: Option<usize> = None;
    let mut rooms: Option<usize> = None;
    let mut senders: Option<usize> = None;
    let mut messages: Option<u64> = None;
    let mut size: usize = 100;
    let mut window: u32 = 1;
    let mut rate: Option<f64> = None;
    let mut warmup: u32 = 0;
    let mut duration: Option<Duration> = None;
    let mut timeout = Duration::from_secs(60);
    let mut flavour = Flavour::Auto;
    let mut path_prefix = String::from("/ws/chatroom/");
    let mut server_pid: Option<u32> = None;
    let mut json = false;

    while let Some(arg) = args.next() {
        // Accept `--flag=value` as well as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut rest = inline.into_iter().chain(&mut args);
        let args = &mut rest;
        match flag.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--url" => url = Some(flag_value(&flag, args)?),
            "--mode" => {
                mode = match flag_value::<String>(&flag, args)?.as_str() {
                    "room" => Mode::Room,
                    "echo" => Mode::Echo,
                    "idle" => Mode::Idle,
                    "churn" => Mode::Churn,
                    other => return Err(format!("--mode: unknown mode {other:?}")),
                }
            }
            "--clients" => clients = Some(flag_value(&flag, args)?),
            "--rooms" => rooms = Some(flag_value(&flag, args)?),
            "--senders" => senders = Some(flag_value(&flag, args)?),
            "--messages" => messages = Some(flag_value(&flag, args)?),
            "--size" => size = flag_value(&flag, args)?,
            "--window" => window = flag_value(&flag, args)?,
            "--rate" => rate = Some(flag_value(&flag, args)?),
            "--warmup" => warmup = flag_value(&flag, args)?,
            "--duration" => duration = Some(seconds(&flag, args)?),
            "--timeout" => timeout = seconds(&flag, args)?,
            "--flavour" | "--flavor" => {
                flavour = match flag_value::<String>(&flag, args)?.as_str() {
                    "auto" => Flavour::Auto,
                    "typed" | "chatroom" => Flavour::Typed,
                    "plain" | "peer" => Flavour::Plain,
                    other => return Err(format!("--flavour: unknown flavour {other:?}")),
                }
            }
            "--path-prefix" => path_prefix = flag_value(&flag, args)?,
            "--server-pid" => server_pid = Some(flag_value(&flag, args)?),
            "--json" => json = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let url = url.ok_or("--url is required (for example --url ws://127.0.0.1:8000)")?;
    let target = parse_url(&url)?;
    let clients = clients.unwrap_or(match mode {
        Mode::Room => 100,
        Mode::Echo => 10,
        Mode::Idle => 1000,
        Mode::Churn => 50,
    });
    let rooms = rooms.unwrap_or(1);
    // One sender per room unless told otherwise: every room then carries traffic.
    let senders = senders.unwrap_or(rooms);
    if clients == 0 || rooms == 0 {
        return Err("--clients and --rooms must be at least 1".into());
    }
    if mode == Mode::Room {
        if senders == 0 || senders > clients {
            return Err(format!("--senders must be between 1 and --clients ({clients})"));
        }
        if rooms > clients {
            return Err(format!("--rooms ({rooms}) cannot exceed --clients ({clients})"));
        }
    }
    if window == 0 {
        return Err("--window must be at least 1".into());
    }
    if let Some(r) = rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err("--rate must be a positive number of messages per second".into());
    }
    if messages == Some(0) {
        return Err("--messages must be at least 1".into());
    }
    if size > 1 << 20 {
        return Err("--size above 1 MiB is not a chat message".into());
    }
    if !path_prefix.starts_with('/') || !path_prefix.ends_with('/') {
        return Err("--path-prefix must start and end with '/'".into());
    }
    let duration = duration.unwrap_or(match mode {
        Mode::Idle => Duration::from_secs(2),
        _ => Duration::from_secs(5),
    });
    Ok(Command::Run(Box::new(Options {
        target,
        mode,
        clients,
        rooms,
        senders,
        messages,
        size,
        window,
        rate,
        warmup,
        duration,
        timeout,
        flavour,
        path_prefix,
        server_pid,
        json,
    })))
}

// ---------------------------------------------------------------------------------------------
// Target: where the traffic goes (loopback only)
// ---------------------------------------------------------------------------------------------

/// The server: its socket address, the `Host` header naming it, and a base path from the URL
/// (empty unless the URL had one, e.g. behind a proxy).
#[derive(Clone, Debug)]
struct Target {
    addr: SocketAddr,
    host: String,
    base: String,
}

/// Parses `ws://HOST[:PORT][/base]` and refuses any host that is not this machine: a load
/// generator pointed at someone else's server is a denial-of-service tool, and the numbers
/// it produced over a real network would not mean what this tool's output says anyway.
fn parse_url(url: &str) -> Result<Target, String> {
    let rest = if let Some(rest) = url.strip_prefix("ws://") {
        rest
    } else if url.starts_with("wss://") {
        return Err("wss:// is not supported: loadgen speaks plain ws:// to a local server".into());
    } else {
        return Err(format!("--url must start with ws:// (got {url:?})"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or_else(|| format!("unclosed '[' in {url:?}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?} in {url:?}"))?,
        None => 80,
    };
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse::<IpAddr>().map_err(|_| not_loopback(host))?
    };
    let loopback = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    };
    if !loopback {
        return Err(not_loopback(host));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host: authority.to_string(),
        base: path.trim_end_matches('/').to_string(),
    })
}

fn not_loopback(host: &str) -> String {
    format!(
        "refusing host {host:?}: loadgen only drives servers on this machine \
         (127.0.0.0/8, localhost or [::1])"
    )
}

// ---------------------------------------------------------------------------------------------
// Clock, latency histogram, server sampling
// ---------------------------------------------------------------------------------------------

/// Nanoseconds since the start of the run, from the monotonic clock. Send times travel in
/// message texts as these numbers, so sender and receiver (both here) agree on them.
#[derive(Clone, Copy)]
struct Clock {
    origin: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock { origin: Instant::now() }
    }

    fn ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// The instant `ns` nanoseconds after the origin (for timers).
    fn at(&self, ns: u64) -> Instant {
        self.origin + Duration::from_nanos(ns)
    }
}

/// Sub-buckets per power of two: 2^7 = 128, so a bucket is at most 1/128 (0.8%) of its value
/// wide. Values below 256 ns get a bucket each.
const SUB_BUCKET_BITS: u32 = 7;

/// A log-linear histogram of nanoseconds (the HdrHistogram layout): constant memory (58 KiB)
/// however many deliveries a run records, with bounded relative error.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        let buckets = (64 - SUB_BUCKET_BITS as usize + 1) << SUB_BUCKET_BITS;
        Histogram { counts: vec![0; buckets], total: 0, max: 0 }
    }

    /// Bucket of `v`: values below 2^(bits+1) map to themselves; above, the top `bits + 1`
    /// significant bits select the bucket and the exponent selects the group.
    fn index(v: u64) -> usize {
        let sub = 1u64 << SUB_BUCKET_BITS;
        if v < 2 * sub {
            return v as usize;
        }
        let exponent = 63 - v.leading_zeros();
        let shift = exponent - SUB_BUCKET_BITS;
        let top = (v >> shift) as usize; // in [sub, 2*sub)
        ((shift as usize + 1) << SUB_BUCKET_BITS) + (top - sub as usize)
    }

    /// The largest value that lands in bucket `i` (reported, so percentiles never flatter).
    fn highest_in(i: usize) -> u64 {
        let sub = 1usize << SUB_BUCKET_BITS;
        if i < 2 * sub {
            return i as u64;
        }
        let shift = (i >> SUB_BUCKET_BITS) - 1;
        let top = ((i & (sub - 1)) | sub) as u64;
        (top << shift) + ((1u64 << shift) - 1)
    }

    fn record(&mut self, ns: u64) {
        if let Some(c) = self.counts.get_mut(Self::index(ns)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(ns);
    }

    /// The value below which a fraction `q` of the recordings fall (nanoseconds).
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::highest_in(i).min(self.max);
            }
        }
        self.max
    }
}

/// Reads the server's CPU time and memory from /proc: the only honest way to compare
/// servers that use different languages and thread counts.
struct ServerProbe {
    pid: u32,
    ticks_per_second: f64,
}

impl ServerProbe {
    fn new(pid: u32) -> Result<Self, String> {
        // SAFETY: sysconf only reads a configuration value; no memory is shared.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let probe = ServerProbe { pid, ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 } };
        if probe.cpu_seconds().is_none() {
            return Err(format!("--server-pid {pid}: cannot read /proc/{pid}/stat (is the server running?)"));
        }
        Ok(probe)
    }

    /// User + system CPU seconds the process has used so far, all its threads included.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Field 2 (comm) is in parentheses and may itself contain spaces or ')', so count
        // the fields from the last ')': state is field 3, utime field 14, stime field 15.
        let (_, after_comm) = stat.rsplit_once(')')?;
        let mut fields = after_comm.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some((utime + stime) as f64 / self.ticks_per_second)
    }

    /// Resident set size in KiB (`VmRSS` in /proc/PID/status).
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// Lets this process hold as many sockets as the hard limit allows: the soft limit is often
/// 1024, which 10,000 idle connections would hit. Returns the resulting soft limit.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read or write only the struct we pass them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

/// Distinct reasons connections failed, with counts: "1,000 failures" says little,
/// "connection refused ×1,000" says what to fix.
#[derive(Default)]
struct Problems {
    reasons: Vec<(String, u64)>,
}

impl Problems {
    /// Distinct reasons kept; past this, new ones are folded into the last.
    const MAX_REASONS: usize = 16;

    fn note(&mut self, reason: &str) {
        if let Some(entry) = self.reasons.iter_mut().find(|(r, _)| r == reason) {
            entry.1 += 1;
        } else if self.reasons.len() < Self::MAX_REASONS {
            self.reasons.push((reason.to_string(), 1));
        } else if let Some(last) = self.reasons.last_mut() {
            last.1 += 1;
        }
    }

    fn total(&self) -> u64 {
        self.reasons.iter().map(|(_, n)| n).sum()
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
        parts.join("; ")
    }
}

// ---------------------------------------------------------------------------------------------
// What we post, and what we read back
// ---------------------------------------------------------------------------------------------

/// The kinds of text loadgen posts, told apart by their first word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    /// `lg`: a measured room message.
    Measured,
    /// `lw`: a warm-up room message (order-checked by nobody, latency recorded nowhere).
    Warmup,
    /// `lc`: a churn cycle's message.
    Churn,
    /// `le`: an echo mode payload.
    Echo,
}

impl Tag {
    fn word(self) -> &'static str {
        match self {
            Tag::Measured => "lg",
            Tag::Warmup => "lw",
            Tag::Churn => "lc",
            Tag::Echo => "le",
        }
    }
}

/// The fields a message text carries: `TAG RUN A B SENT_NS xxxx...`. `RUN` tells this run's
/// messages from anything else in the room; `A` is the sender (or client) index, `B` the
/// sequence number (or cycle); `SENT_NS` the send time on this process's `Clock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Payload<'a> {
    tag: Tag,
    run: &'a str,
    a: u32,
    b: u64,
    sent_ns: u64,
}

impl Payload<'_> {
    /// The text, padded with 'x' to `size` bytes (or longer when the fields need more).
    /// It is plain ASCII without quotes or backslashes, so it needs no JSON escaping.
    fn compose(&self, size: usize) -> String {
        let mut text = format!("{} {} {} {} {} ", self.tag.word(), self.run, self.a, self.b, self.sent_ns);
        if text.len() < size {
            text.extend(std::iter::repeat_n('x', size - text.len()));
        }
        text
    }
}

/// Reads a text written by `Payload::compose`; `None` for anything else (another client's
/// chat, a server notice), which the caller counts as foreign rather than as an error.
fn decode_payload(text: &str) -> Option<Payload<'_>> {
    let mut words = text.splitn(6, ' ');
    let tag = match words.next()? {
        "lg" => Tag::Measured,
        "lw" => Tag::Warmup,
        "lc" => Tag::Churn,
        "le" => Tag::Echo,
        _ => return None,
    };
    Some(Payload {
        tag,
        run: words.next()?,
        a: words.next()?.parse().ok()?,
        b: words.next()?.parse().ok()?,
        sent_ns: words.next()?.parse().ok()?,
    })
}

/// The chat post frame: `{"message": TEXT, "username": NAME}`. Both strings come from
/// `Payload::compose` and our own `c<N>` names, so they need no escaping.
fn compose_post(text: &str, username: &str) -> String {
    let mut post = String::with_capacity(text.len() + username.len() + 32);
    post.push_str("{\"message\":\"");
    post.push_str(text);
    post.push_str("\",\"username\":\"");
    post.push_str(username);
    post.push_str("\"}");
    post
}

/// The few fields of a server frame the checks look at.
#[derive(Debug, Default, PartialEq)]
struct FrameFields<'a> {
    /// The frame has a `type` key at all (chatroom's frames do, the peers' do not).
    typed: bool,
    kind: Option<Cow<'a, str>>,
    id: Option<u64>,
    last_id: Option<u64>,
    message: Option<Cow<'a, str>>,
    /// An error frame's `code` ("rate_limited", ...).
    code: Option<Cow<'a, str>>,
}

/// Parses a server frame. Every delivery goes through here, up to millions per second, and a
/// general JSON parse into `serde_json::Value` costs ~0.75 µs for a chatroom message frame
/// (six allocations): enough to make the load generator, not the server, the bottleneck.
/// So a flat object of escape-free strings and integers, which is every message frame,
/// takes a zero-allocation path; anything else (nested history, escapes, fractions) is
/// handed to serde_json, which is strict. `None` means the frame is not a JSON object.
fn parse_frame(text: &str) -> Option<FrameFields<'_>> {
    if let Some(fields) = scan_flat_object(text) {
        return Some(fields);
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    let string = |key: &str| object.get(key).and_then(|v| v.as_str()).map(|s| Cow::Owned(s.to_string()));
    Some(FrameFields {
        typed: object.contains_key("type"),
        kind: string("type"),
        id: object.get("id").and_then(|v| v.as_u64()),
        last_id: object.get("last_id").and_then(|v| v.as_u64()),
        message: string("message"),
        code: string("code"),
    })
}

/// The fast path of `parse_frame`: `Some` only for a complete, flat JSON object whose
/// strings have no escapes and whose numbers are integers; `None` means "let serde_json
/// decide", never "invalid". Every step is a bounds-checked `get`: these are network bytes.
fn scan_flat_object(text: &str) -> Option<FrameFields<'_>> {
    let bytes = text.as_bytes();
    let mut fields = FrameFields::default();
    let mut i = skip_whitespace(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_whitespace(bytes, i + 1);
    if bytes.get(i) == Some(&b'}') {
        return only_whitespace_after(bytes, i + 1).then_some(fields);
    }
    loop {
        let (key, next) = scan_plain_string(text, i)?;
        i = skip_whitespace(bytes, next);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        i = skip_whitespace(bytes, i + 1);
        if key == "type" {
            fields.typed = true;
        }
        match bytes.get(i)? {
            b'"' => {
                let (value, next) = scan_plain_string(text, i)?;
                i = next;
                match key {
                    "type" => fields.kind = Some(Cow::Borrowed(value)),
                    "message" => fields.message = Some(Cow::Borrowed(value)),
                    "code" => fields.code = Some(Cow::Borrowed(value)),
                    _ => {}
                }
            }
            b'0'..=b'9' => {
                let start = i;
                while matches!(bytes.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
                // Fractions, exponents and leading zeros: serde_json's business.
                if matches!(bytes.get(i), Some(b'.' | b'e' | b'E'))
                    || (i - start > 1 && bytes.get(start) == Some(&b'0'))
                {
                    return None;
                }
                let number: u64 = text.get(start..i)?.parse().ok()?;
                match key {
                    "id" => fields.id = Some(number),
                    "last_id" => fields.last_id = Some(number),
                    _ => {}
                }
            }
            b't' | b'f' | b'n' => {
                let word = ["true", "false", "null"].into_iter().find(|w| text.get(i..i + w.len()) == Some(w))?;
                i += word.len();
            }
            // Nested objects and arrays, negative numbers: serde_json's business.
            _ => return None,
        }
        i = skip_whitespace(bytes, i);
        match bytes.get(i)? {
            b',' => i = skip_whitespace(bytes, i + 1),
            b'}' => return only_whitespace_after(bytes, i + 1).then_some(fields),
            _ => return None,
        }
    }
}

/// A JSON string starting at `start` (the opening quote) with no escapes or control
/// characters: returns its contents and the index after the closing quote.
fn scan_plain_string(text: &str, start: usize) -> Option<(&str, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let body = start + 1;
    // Two passes that vectorise beat one byte-at-a-time pass on ~100-byte texts: `find`
    // locates the closing quote with memchr, then a branch-free fold checks the contents.
    let len = text.get(body..)?.find('"')?;
    let end = body + len;
    let contents = bytes.get(body..end)?;
    let needs_unescaping = contents.iter().fold(false, |any, &b| any | (b == b'\\') | (b < 0x20));
    if needs_unescaping {
        return None;
    }
    Some((text.get(body..end)?, end + 1))
}

fn skip_whitespace(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

fn only_whitespace_after(bytes: &[u8], i: usize) -> bool {
    skip_whitespace(bytes, i) == bytes.len()
}

// ---------------------------------------------------------------------------------------------
// The connection engine: connect, upgrade, exchange frames
// ---------------------------------------------------------------------------------------------

/// What happened to one connection, as the modes see it. `user` (passed alongside) is the
/// mode's own index for the connection (client number, churn slot).
#[derive(Debug)]
enum NetEvent<'a> {
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

/// One connection's stage. Each variant owns only what that stage needs.
enum Phase {
    /// No socket yet: queued for a handshake slot, or backing off before a retry.
    Waiting,
    /// TCP connect in flight; the first writable event tells how it went.
    Connecting,
    /// Writing the HTTP upgrade request and reading the `101` response.
    Upgrading(Upgrade),
    /// A WebSocket. `closing_since` is set once we sent our close frame.
    Open { ws: Box<WebSocketContext>, closing_since: Option<Instant>, peer_close_code: Option<u16> },
}

/// One connection and the mode's name for it.
struct Conn {
    user: usize,
    path: Box<str>,
    attempts: u32,
    stream: Option<TcpStream>,
    phase: Phase,
    /// Output waits in tungstenite's buffer for this turn's flush.
    dirty: bool,
    /// A write failed: the next `advance` ends the connection with this reason.
    broken: Option<String>,
}

impl Conn {
    fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Connecting | Phase::Upgrading(_))
    }
}

/// Why `advance` stopped.
enum Step {
    /// Waiting for the socket (WouldBlock) or for the mode: nothing to do until the next event.
    Pending,
    /// The connection is over.
    Ended(Ending),
}

enum Ending {
    Closed { code: Option<u16>, clean: bool },
    Failed { reason: String, retryable: bool },
}

/// The HTTP/1.1 upgrade, done by hand (RFC 6455 §4.1): tungstenite's own client handshake
/// wants a blocking stream, and this one is a few dozen lines.
struct Upgrade {
    key: String,
    request: Vec<u8>,
    written: usize,
    head: Vec<u8>,
}

impl Upgrade {
    fn new(host: &str, path: &str) -> Self {
        // "a nonce consisting of a randomly selected 16-byte value that has been
        // base64-encoded" (RFC 6455 §4.1)
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .into_bytes();
        Upgrade { key, request, written: 0, head: Vec::new() }
    }

    /// Moves the upgrade on as far as the socket allows. `Ok(Some(leftover))` when the `101`
    /// arrived: `leftover` is whatever the server sent after the head (already frames).
    fn advance(&mut self, stream: &mut TcpStream) -> Result<Option<Vec<u8>>, Ending> {
        while let Some(unsent) = self.request.get(self.written..).filter(|u| !u.is_empty()) {
            match stream.write(unsent) {
                // A zero-length write on a non-empty buffer: the socket is gone.
                Ok(0) => return Err(failed("connection closed while sending the upgrade", true)),
                Ok(n) => self.written += n,
                // The socket buffer is full; the writable edge will bring us back.
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) if interrupted(&e) => continue,
                Err(e) => return Err(io_failure(&e)),
            }
        }
        let mut chunk = [0u8; 2048];
        loop {
            match stream.read(&mut chunk) {
                // EOF before the head ended: the server hung up on us (a full backlog or a
                // server restarting look like this), so it is worth another try.
                Ok(0) => return Err(failed("server closed the connection during the upgrade", true)),
                Ok(n) => {
                    self.head.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    if let Some(end) = find_head_end(&self.head) {
                        let leftover = self.head.split_off(end);
                        self.check_response()?;
                        return Ok(Some(leftover));
                    }
                    if self.head.len() > MAX_RESPONSE_HEAD_BYTES {
                        return Err(failed("upgrade response head too large", false));
                    }
                }
                // All there is for now; the readable edge will bring us back.
                Err(e) if would_block(&e) => return Ok(None),
                Err(e) if interrupted(&e) => continue,
                Err(e) => return Err(io_failure(&e)),
            }
        }
    }

    /// The client's duties from RFC 6455 §4.1: "If the status code received from the server
    /// is not 101, the client handles the response per HTTP procedures", and the
    /// `Sec-WebSocket-Accept` value must be the base64 SHA-1 of our key and the GUID.
    fn check_response(&self) -> Result<(), Ending> {
        let head = String::from_utf8_lossy(&self.head);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let mut parts = status.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") || code != "101" {
            let shown: String = status.chars().take(80).collect();
            return Err(failed(&format!("server answered {shown:?} instead of 101"), false));
        }
        let expected = derive_accept_key(self.key.as_bytes());
        let accept = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, value)| value.trim());
        if accept != Some(expected.as_str()) {
            return Err(failed("bad or missing Sec-WebSocket-Accept in the 101 response", false));
        }
        Ok(())
    }
}

/// Index just past the blank line that ends an HTTP head, if it arrived.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn failed(reason: &str, retryable: bool) -> Ending {
    Ending::Failed { reason: reason.to_string(), retryable }
}

/// Socket errors a fresh connect attempt can cure: the server's backlog overflowed
/// (refused, reset), or this machine briefly ran out of ephemeral ports.
fn io_failure(e: &io::Error) -> Ending {
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

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
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
    stream: &'a mut TcpStream,
    trust_short_reads: bool,
    drained: bool,
}

impl Read for DrainAware<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.stream.read(buf)?;
        // n == 0 is end of stream, which tungstenite must see as such (not WouldBlock).
        if self.trust_short_reads && n > 0 && n < buf.len() {
            self.drained = true;
        }
        Ok(n)
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
    stream: &mut TcpStream,
    ws: &mut WebSocketContext,
    peer_close_code: &mut Option<u16>,
    user: usize,
    trust_short_reads: bool,
    on: &mut dyn FnMut(usize, NetEvent<'_>),
) -> Step {
    let mut socket = DrainAware { stream, trust_short_reads, drained: false };
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
struct Net {
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
    retried: u64,
    /// Connections with output written this turn, flushed before the next sleep.
    dirty: Vec<usize>,
    /// Connections to look at next turn even without an event (a write failed on them).
    recheck: Vec<usize>,
    /// This batch's tokens, each with whether a short read may be taken as "drained"
    /// (see `DrainAware`).
    ready: Vec<(usize, bool)>,
}

impl Net {
    fn new(target: Target) -> Result<Self, String> {
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
    fn room_path(&self, prefix: &str, room: &str, username: &str) -> String {
        format!("{}{prefix}{room}/?username={username}", self.target.base)
    }

    /// Queues a new connection to `path`; returns its token. The connect itself starts on
    /// a coming turn, when a handshake slot is free.
    fn open(&mut self, user: usize, path: &str) -> usize {
        let conn = Conn {
            user,
            path: path.into(),
            attempts: 0,
            stream: None,
            phase: Phase::Waiting,
            dirty: false,
            broken: None,
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
    fn live(&self) -> usize {
        self.live
    }

    /// Writes one text frame (masked, as RFC 6455 §5.3 requires of clients) into the
    /// connection's buffer; it leaves with this turn's flush. `false` if the connection is
    /// not open for writing (not yet open, closing, or gone).
    fn queue_text(&mut self, token: usize, text: String) -> bool {
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
    fn close(&mut self, token: usize) -> bool {
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

    /// Closes every open connection and drops the others.
    fn close_all(&mut self) {
        for token in 0..self.slots.len() {
            self.close(token);
        }
    }

    /// Forgets a connection: deregisters and closes its socket and frees its slot.
    fn remove(&mut self, token: usize) {
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
            let _ = self.poll.registry().deregister(&mut stream);
        }
        self.released.push(token);
        self.live -= 1;
    }

    /// One loop turn: start queued connects, flush this turn's output, drop connections whose
    /// close was never answered, then sleep in `poll` for at most `timeout` and handle
    /// whatever became ready.
    fn turn<D: Driver>(&mut self, timeout: Duration, driver: &mut D) -> Result<(), String> {
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
            let _ = self.poll.registry().deregister(&mut stream);
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
        let result = TcpStream::connect(self.target.addr).and_then(|mut stream| {
            self.poll
                .registry()
                .register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)
                .map(|()| stream)
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
        match connect_finished(stream) {
            Ok(true) => {
                // Chat frames are small and latency is what we measure: no Nagle delay.
                let _ = stream.set_nodelay(true);
                conn.phase = Phase::Upgrading(Upgrade::new(&target.host, &conn.path));
            }
            Ok(false) => return Step::Pending,
            Err(e) => return Step::Ended(io_failure(&e)),
        }
    }
    if let Phase::Upgrading(upgrade) = &mut conn.phase {
        match upgrade.advance(stream) {
            Ok(None) => return Step::Pending,
            Ok(Some(leftover)) => {
                let ws = WebSocketContext::from_partially_read(leftover, Role::Client, Some(*config));
                conn.phase = Phase::Open { ws: Box::new(ws), closing_since: None, peer_close_code: None };
                on(conn.user, NetEvent::Opened);
            }
            Err(ending) => return Step::Ended(ending),
        }
    }
    match &mut conn.phase {
        Phase::Open { ws, peer_close_code, .. } => {
            exchange(stream, ws, peer_close_code, conn.user, trust_short_reads, on)
        }
        _ => Step::Pending,
    }
}

// ---------------------------------------------------------------------------------------------
// The drive loop
// ---------------------------------------------------------------------------------------------

/// A mode's reaction to its connections.
trait Driver {
    /// Runs for every event of every connection, inside the turn.
    fn on_event(&mut self, user: usize, event: NetEvent<'_>);

    /// Runs after each turn: act on what the events changed (send, open, close). Returns
    /// when it next wants to run even if nothing happens (a send schedule), if ever.
    fn after_turn(&mut self, net: &mut Net) -> Option<Instant>;

    /// Whether `after_turn` has something to do right away; checked after every connection
    /// of a batch, so it must be cheap.
    fn has_work(&self) -> bool {
        false
    }
}

/// Turns the loop until `finished` says so (`Ok(true)`) or `deadline` passes (`Ok(false)`).
fn drive<D: Driver>(
    net: &mut Net,
    driver: &mut D,
    deadline: Instant,
    mut finished: impl FnMut(&D, &Net, Instant) -> bool,
) -> Result<bool, String> {
    loop {
        let timer = driver.after_turn(net);
        let now = Instant::now();
        if finished(driver, net, now) {
            return Ok(true);
        }
        if now >= deadline {
            return Ok(false);
        }
        let wake = timer.map_or(deadline, |t| t.min(deadline));
        let until_wake = wake.saturating_duration_since(now);
        let sleep = if until_wake < SPIN_WINDOW {
            Duration::ZERO
        } else {
            Duration::from_millis(until_wake.as_millis() as u64).min(MAX_POLL_SLEEP)
        };
        net.turn(sleep, driver)?;
    }
}

/// Finds out whether the server sends typed frames: one connection to `path`, and the first
/// frame within `PROBE_WAIT` of the handshake decides (chatroom's welcome has a "type").
fn detect_flavour(net: &mut Net, path: &str, timeout: Duration) -> Result<Flavour, String> {
    struct Probe {
        opened_at: Option<Instant>,
        typed: Option<bool>,
        failure: Option<String>,
        closed: bool,
    }
    impl Driver for Probe {
        fn on_event(&mut self, _: usize, event: NetEvent<'_>) {
            match event {
                NetEvent::Opened => self.opened_at = Some(Instant::now()),
                NetEvent::Text(text) if self.typed.is_none() => {
                    self.typed = Some(parse_frame(text).is_some_and(|f| f.typed));
                }
                NetEvent::Failed(reason) => self.failure = Some(reason.to_string()),
                NetEvent::Closed { .. } => self.closed = true,
                _ => {}
            }
        }
        fn after_turn(&mut self, _: &mut Net) -> Option<Instant> {
            self.opened_at.map(|t| t + PROBE_WAIT)
        }
    }
    let mut probe = Probe { opened_at: None, typed: None, failure: None, closed: false };
    let token = net.open(usize::MAX, path);
    drive(net, &mut probe, Instant::now() + timeout, |p, _, now| {
        p.typed.is_some() || p.failure.is_some() || p.closed || p.opened_at.is_some_and(|t| now >= t + PROBE_WAIT)
    })?;
    if let Some(reason) = probe.failure {
        return Err(format!("cannot connect to {path}: {reason}"));
    }
    if probe.opened_at.is_none() {
        return Err(format!("no WebSocket handshake on {path} within the timeout"));
    }
    if net.close(token) {
        drive(net, &mut probe, Instant::now() + 2 * CLOSE_GRACE, |_, n, _| n.live() == 0)?;
    }
    Ok(if probe.typed == Some(true) { Flavour::Typed } else { Flavour::Plain })
}

/// Waits until no frame arrived for `quiet` (at most `max`), reading and discarding.
fn settle<D: Driver>(
    net: &mut Net,
    driver: &mut D,
    last_frame: impl Fn(&D) -> Instant,
    quiet: Duration,
    max: Duration,
) -> Result<(), String> {
    drive(net, driver, Instant::now() + max, |d, _, now| now >= last_frame(d) + quiet)?;
    Ok(())
}

/// Closes everything still open and waits (bounded) for the close handshakes.
fn close_everything<D: Driver>(net: &mut Net, driver: &mut D) -> Result<(), String> {
    net.close_all();
    drive(net, driver, Instant::now() + 2 * CLOSE_GRACE, |_, n, _| n.live() == 0)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mode room: fan-out throughput, latency and delivery checks
// ---------------------------------------------------------------------------------------------

/// Where the room run is; decides what a delivery means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Warmup,
    Measuring,
    Closing,
}

/// One client as a receiver: what it has seen so far.
struct Receiver {
    room: usize,
    ready: bool,
    /// Its deliveries are all in, or it died (what is missing then counts as lost).
    finished: bool,
    alive: bool,
    /// Next sequence number expected from each sender of the room (by local sender index).
    next_seq: Vec<u32>,
    delivered: u64,
    expected: u64,
    order_hash: u64,
    /// Last message id seen (chatroom only; the welcome frame's `last_id` starts it).
    last_id: Option<u64>,
}

/// One client as a sender.
struct Sender {
    client: usize,
    room: usize,
    /// Index among the senders of its room (the receivers' `next_seq` index).
    local: usize,
    next_seq: u32,
    in_flight: u32,
    /// Warm-up messages posted and come back (the warm-up is closed loop).
    warm_sent: u32,
    warm_back: u32,
}

/// Mixes one delivery (sender, seq) into a receiver's order hash. Order matters: xor then
/// multiply by an odd constant then rotate does not commute, so two receivers that saw the
/// same deliveries in different orders end with different hashes.
fn fold_order(hash: u64, sender: u32, seq: u32) -> u64 {
    let word = (u64::from(sender) << 32) | u64::from(seq);
    (hash ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

/// A run tag that tells this run's messages from any earlier run's (or anyone else's).
fn run_tag() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:08x}", std::process::id().rotate_left(16) ^ nanos)
}

struct RoomRun {
    clock: Clock,
    typed: bool,
    run: String,
    size: usize,
    messages: u32,
    window: u32,
    /// Warm-up messages per sender.
    warm_goal: u32,
    /// Open loop: nanoseconds between two scheduled posts (over all senders).
    interval_ns: Option<f64>,
    stage: Stage,
    tokens: Vec<usize>,
    usernames: Vec<String>,
    receivers: Vec<Receiver>,
    senders: Vec<Sender>,
    /// Closed loop: senders whose own message came back, so they post again.
    due: Vec<usize>,
    /// Open loop: index of the next post in the global schedule, and the schedule's start.
    next_post: u64,
    schedule_start_ns: u64,
    /// (receiver, sender, seq) that were skipped: a later arrival of one is a reorder,
    /// anything else already seen is a duplicate. Empty when all is well.
    missing: HashSet<(u32, u32, u32)>,
    latency: Histogram,
    ready: usize,
    finished: usize,
    warm_done: usize,
    sent: u64,
    delivered: u64,
    duplicates: u64,
    reordered: u64,
    id_errors: u64,
    misrouted: u64,
    foreign: u64,
    bad_frames: u64,
    /// Error frames from the server, by code (a rate limit shows up here).
    server_errors: Problems,
    first_send_ns: u64,
    last_delivery_ns: u64,
    /// When the last frame of any kind arrived (for the quiet period before measuring).
    last_frame_ns: u64,
    problems: Problems,
}

impl RoomRun {
    fn new(o: &Options, typed: bool, clock: Clock) -> Self {
        let rooms = o.rooms;
        let messages = o.messages.unwrap_or(100).min(u64::from(u32::MAX)) as u32;
        // Client i is in room i % R, so rooms differ in size by at most one. Sender j is
        // client j: it sits in room j % R and is that room's (j / R)-th sender.
        let senders: Vec<Sender> = (0..o.senders)
            .map(|j| Sender {
                client: j,
                room: j % rooms,
                local: j / rooms,
                next_seq: 0,
                in_flight: 0,
                warm_sent: 0,
                warm_back: 0,
            })
            .collect();
        let senders_in = |room: usize| (o.senders + rooms - 1 - room) / rooms;
        let receivers = (0..o.clients)
            .map(|i| {
                let room = i % rooms;
                Receiver {
                    room,
                    ready: false,
                    finished: false,
                    alive: true,
                    next_seq: vec![0; senders_in(room)],
                    delivered: 0,
                    expected: senders_in(room) as u64 * u64::from(messages),
                    order_hash: 0,
                    last_id: None,
                }
            })
            .collect();
        RoomRun {
            clock,
            typed,
            run: run_tag(),
            size: o.size,
            messages,
            window: o.window,
            warm_goal: o.warmup,
            interval_ns: o.rate.map(|r| 1e9 / r),
            stage: Stage::Connecting,
            tokens: Vec::with_capacity(o.clients),
            usernames: (0..o.clients).map(|i| format!("c{i}")).collect(),
            receivers,
            senders,
            due: Vec::new(),
            next_post: 0,
            schedule_start_ns: 0,
            missing: HashSet::new(),
            latency: Histogram::new(),
            ready: 0,
            finished: 0,
            warm_done: 0,
            sent: 0,
            delivered: 0,
            duplicates: 0,
            reordered: 0,
            id_errors: 0,
            misrouted: 0,
            foreign: 0,
            bad_frames: 0,
            server_errors: Problems::default(),
            first_send_ns: 0,
            last_delivery_ns: 0,
            last_frame_ns: clock.ns(),
            problems: Problems::default(),
        }
    }

    fn expected(&self) -> u64 {
        self.receivers.iter().map(|r| r.expected).sum()
    }

    /// Posts one message of `sender`; `sent_ns` is the send time it carries (now, or the
    /// scheduled time in open loop).
    fn post(&mut self, net: &mut Net, sender: usize, tag: Tag, seq: u32, sent_ns: u64) -> bool {
        let Some(s) = self.senders.get(sender) else {
            return false;
        };
        let text = Payload { tag, run: &self.run, a: sender as u32, b: u64::from(seq), sent_ns }.compose(self.size);
        let Some(username) = self.usernames.get(s.client) else {
            return false;
        };
        let post = compose_post(&text, username);
        let Some(&token) = self.tokens.get(s.client) else {
            return false;
        };
        net.queue_text(token, post)
    }

    /// Closed loop: queue the next measured message of `sender` if it has any left.
    fn post_next(&mut self, net: &mut Net, sender: usize) {
        let Some(s) = self.senders.get_mut(sender) else {
            return;
        };
        if s.next_seq >= self.messages {
            return;
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.in_flight += 1;
        let now = self.clock.ns();
        if self.post(net, sender, Tag::Measured, seq, now) {
            self.sent += 1;
        }
    }

    fn start_warmup(&mut self, net: &mut Net) {
        self.stage = Stage::Warmup;
        for j in 0..self.senders.len() {
            for _ in 0..self.window {
                self.post_warmup(net, j);
            }
        }
    }

    fn post_warmup(&mut self, net: &mut Net, sender: usize) {
        let Some(s) = self.senders.get_mut(sender) else {
            return;
        };
        if s.warm_sent >= self.warm_goal {
            return;
        }
        let seq = s.warm_sent;
        s.warm_sent += 1;
        let now = self.clock.ns();
        self.post(net, sender, Tag::Warmup, seq, now);
    }

    fn start_measuring(&mut self, net: &mut Net) {
        self.stage = Stage::Measuring;
        self.first_send_ns = self.clock.ns();
        self.schedule_start_ns = self.first_send_ns;
        // Receivers in a room without senders expect nothing: they are done already.
        for r in &mut self.receivers {
            if r.expected == 0 && !r.finished {
                r.finished = true;
                self.finished += 1;
            }
        }
        if self.interval_ns.is_none() {
            for j in 0..self.senders.len() {
                for _ in 0..self.window {
                    self.post_next(net, j);
                }
            }
        }
    }

    /// A client is ready: open (peers), or welcomed (chatroom).
    fn mark_ready(&mut self, client: usize) {
        if let Some(r) = self.receivers.get_mut(client)
            && !r.ready
        {
            r.ready = true;
            self.ready += 1;
        }
    }

    /// A client's connection ended. Its missing deliveries will count as lost; if it was
    /// a sender, so will the messages it could not send.
    fn on_lost(&mut self, client: usize, reason: &str) {
        if self.stage == Stage::Closing {
            return;
        }
        self.problems.note(reason);
        if let Some(r) = self.receivers.get_mut(client) {
            r.alive = false;
            if !r.finished {
                r.finished = true;
                self.finished += 1;
            }
        }
    }

    fn on_text(&mut self, client: usize, text: &str) {
        let now_ns = self.clock.ns();
        self.last_frame_ns = now_ns;
        let Some(frame) = parse_frame(text) else {
            self.bad_frames += 1;
            return;
        };
        if frame.typed {
            match frame.kind.as_deref() {
                Some("message") => {}
                Some("welcome") => {
                    if let Some(r) = self.receivers.get_mut(client) {
                        r.last_id = frame.last_id;
                    }
                    self.mark_ready(client);
                    return;
                }
                Some("error") => {
                    self.server_errors.note(frame.code.as_deref().unwrap_or("no code"));
                    return;
                }
                // join, leave, presence, rename...: not deliveries.
                _ => return,
            }
        }
        let Some(receiver) = self.receivers.get_mut(client) else {
            return;
        };
        // Ids count every message of the room, ours or not: they must climb by one.
        if let Some(id) = frame.id {
            if let Some(last) = receiver.last_id
                && id != last + 1
            {
                self.id_errors += 1;
            }
            receiver.last_id = Some(id);
        }
        let Some(message) = frame.message.as_deref() else {
            return;
        };
        let Some(payload) = decode_payload(message).filter(|p| p.run == self.run) else {
            self.foreign += 1;
            return;
        };
        match payload.tag {
            Tag::Measured => self.on_delivery(client, payload, now_ns),
            Tag::Warmup => {
                // Only the sender's own copy matters: it frees a place in its window.
                if let Some(s) = self.senders.get_mut(payload.a as usize)
                    && s.client == client
                {
                    s.warm_back += 1;
                    if s.warm_back == self.warm_goal {
                        self.warm_done += 1;
                    } else {
                        self.due.push(payload.a as usize);
                    }
                }
            }
            _ => self.foreign += 1,
        }
    }

    /// Checks one measured delivery against everything this receiver saw before.
    fn on_delivery(&mut self, client: usize, payload: Payload<'_>, now_ns: u64) {
        let sender_index = payload.a as usize;
        let (Some(sender), Some(receiver)) = (self.senders.get_mut(sender_index), self.receivers.get_mut(client))
        else {
            self.bad_frames += 1;
            return;
        };
        // A message from another room's sender: the server mixed rooms up.
        if sender.room != receiver.room {
            self.misrouted += 1;
            return;
        }
        let Ok(seq) = u32::try_from(payload.b) else {
            self.bad_frames += 1;
            return;
        };
        let Some(next) = receiver.next_seq.get_mut(sender.local) else {
            self.bad_frames += 1;
            return;
        };
        let key = (client as u32, payload.a, seq);
        if seq == *next {
            *next += 1;
        } else if seq > *next && seq < self.messages {
            // Skipped some: remember them, so a late one counts as reordered, not duplicate.
            for missing in *next..seq {
                self.missing.insert((client as u32, payload.a, missing));
            }
            *next = seq + 1;
        } else if self.missing.remove(&key) {
            self.reordered += 1;
        } else {
            self.duplicates += 1;
            return;
        }
        receiver.delivered += 1;
        receiver.order_hash = fold_order(receiver.order_hash, payload.a, seq);
        if receiver.delivered == receiver.expected && !receiver.finished {
            receiver.finished = true;
            self.finished += 1;
        }
        self.delivered += 1;
        self.latency.record(now_ns.saturating_sub(payload.sent_ns));
        self.last_delivery_ns = now_ns;
        // Its own message came back: in closed loop, that frees a place in its window.
        if sender.client == client && self.interval_ns.is_none() {
            sender.in_flight = sender.in_flight.saturating_sub(1);
            self.due.push(sender_index);
        }
    }

    /// Receivers that got every delivery but in another interleaving than most complete
    /// receivers of their room. Incomplete receivers are left out: their count differs
    /// anyway, and what they miss is already reported as lost.
    fn order_mismatches(&self) -> u64 {
        let mut per_room: HashMap<usize, HashMap<u64, u64>> = HashMap::new();
        for r in self.receivers.iter().filter(|r| r.expected > 0 && r.delivered == r.expected) {
            *per_room.entry(r.room).or_default().entry(r.order_hash).or_default() += 1;
        }
        per_room
            .values()
            .map(|pairs| {
                let total: u64 = pairs.values().sum();
                total - pairs.values().max().copied().unwrap_or(0)
            })
            .sum()
    }
}

impl Driver for RoomRun {
    fn on_event(&mut self, client: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => {
                if !self.typed {
                    self.mark_ready(client);
                }
            }
            NetEvent::Text(text) => self.on_text(client, text),
            NetEvent::Binary(_) => self.bad_frames += 1,
            NetEvent::Closed { code, clean } => self.on_lost(client, &describe_close(code, clean)),
            NetEvent::Failed(reason) => self.on_lost(client, reason),
        }
    }

    fn has_work(&self) -> bool {
        !self.due.is_empty()
    }

    fn after_turn(&mut self, net: &mut Net) -> Option<Instant> {
        match (self.stage, self.interval_ns) {
            (Stage::Warmup, _) => {
                let due = std::mem::take(&mut self.due);
                for &j in &due {
                    self.post_warmup(net, j);
                }
                self.due = due;
                self.due.clear();
                None
            }
            (Stage::Measuring, None) => {
                let due = std::mem::take(&mut self.due);
                for &j in &due {
                    self.post_next(net, j);
                }
                self.due = due;
                self.due.clear();
                None
            }
            (Stage::Measuring, Some(interval)) => {
                // Post everything whose scheduled time has come; each carries its
                // scheduled time, so a late post (our lateness or the server's backlog)
                // shows up in the latency instead of silently thinning the load.
                let senders = self.senders.len() as u64;
                let total = senders * u64::from(self.messages);
                let due_ns = |k: u64, start: u64| start + (k as f64 * interval) as u64;
                let now = self.clock.ns();
                while self.next_post < total && due_ns(self.next_post, self.schedule_start_ns) <= now {
                    let k = self.next_post;
                    let sender = (k % senders) as usize;
                    let seq = (k / senders) as u32;
                    if self.post(net, sender, Tag::Measured, seq, due_ns(k, self.schedule_start_ns)) {
                        self.sent += 1;
                    }
                    self.next_post += 1;
                }
                (self.next_post < total).then(|| self.clock.at(due_ns(self.next_post, self.schedule_start_ns)))
            }
            _ => None,
        }
    }
}

/// Runs mode `room` and reports.
fn run_room(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let clock = Clock::new();
    let mut net = Net::new(o.target.clone())?;
    let flavour = match o.flavour {
        Flavour::Auto => {
            let path = net.room_path(&o.path_prefix, "bench-0", "probe");
            detect_flavour(&mut net, &path, o.timeout)?
        }
        f => f,
    };
    let mut run = RoomRun::new(o, flavour == Flavour::Typed, clock);
    for i in 0..o.clients {
        let room = format!("bench-{}", i % o.rooms);
        let path = net.room_path(&o.path_prefix, &room, &format!("c{i}"));
        run.tokens.push(net.open(i, &path));
    }

    // 1. Everyone connected (and welcomed).
    let connect_start = Instant::now();
    drive(&mut net, &mut run, connect_start + o.timeout, |r, _, _| r.ready + r.finished >= r.receivers.len())?;
    if run.ready < o.clients {
        let why = if run.problems.total() > 0 {
            run.problems.summary()
        } else {
            format!("not done within --timeout {} s", o.timeout.as_secs_f64())
        };
        return Err(format!("only {} of {} clients connected: {why}", run.ready, o.clients));
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    settle(&mut net, &mut run, |r| r.clock.at(r.last_frame_ns), SETTLE_QUIET, SETTLE_MAX)?;

    // 2. Warm-up: closed loop, not measured.
    if o.warmup > 0 {
        run.start_warmup(&mut net);
        let senders = run.senders.len();
        let done = drive(&mut net, &mut run, Instant::now() + o.timeout, |r, _, _| r.warm_done >= senders)?;
        if !done {
            return Err("the warm-up did not complete within --timeout".into());
        }
        settle(&mut net, &mut run, |r| r.clock.at(r.last_frame_ns), SETTLE_QUIET, SETTLE_MAX)?;
    }

    // 3. Measure: from the first post until every delivery arrived or the timeout.
    let cpu_before = probe.and_then(ServerProbe::cpu_seconds);
    run.start_measuring(&mut net);
    let clients = run.receivers.len();
    drive(&mut net, &mut run, Instant::now() + o.timeout, |r, _, _| r.finished >= clients)?;
    let cpu_after = probe.and_then(ServerProbe::cpu_seconds);
    let rss = probe.and_then(ServerProbe::rss_kib);

    run.stage = Stage::Closing;
    close_everything(&mut net, &mut run)?;

    // 4. Report.
    let expected = run.expected();
    let lost = expected.saturating_sub(run.delivered);
    let mismatches = run.order_mismatches();
    let window_ns = run.last_delivery_ns.saturating_sub(run.first_send_ns);
    let per_sec = rate_per_sec(run.delivered, window_ns);
    let loop_kind = match o.rate {
        Some(r) => format!("open loop at {r} msg/s"),
        None => format!("closed loop, window {}", o.window),
    };
    let mut report = Report::new(format!(
        "loadgen room: {} clients in {} room(s), {} senders × {} messages of {} B, {}, {} server",
        o.clients,
        o.rooms,
        o.senders,
        run.messages,
        o.size,
        loop_kind,
        if run.typed { "typed (chatroom)" } else { "plain (peer)" }
    ));
    report.text("mode", "mode", "room");
    report.text("flavour", "server flavour", if run.typed { "typed" } else { "plain" });
    report.int("clients", "clients", o.clients as u64);
    report.int("rooms", "rooms", o.rooms as u64);
    report.int("senders", "senders", o.senders as u64);
    report.int("messages", "messages per sender", u64::from(run.messages));
    report.int("size", "message size (B)", o.size as u64);
    report.real("connect_s", "connect time (s)", connect_secs, 3);
    report.int("connect_retries", "connect retries", net.retried);
    report.int("sent", "messages sent", run.sent);
    report.int("expected", "deliveries expected", expected);
    report.int("delivered", "deliveries received", run.delivered);
    report.int("lost", "lost", lost);
    report.int("duplicates", "duplicates", run.duplicates);
    report.int("reordered", "reordered", run.reordered);
    report.int("order_mismatch", "order mismatches", mismatches);
    report.int("id_errors", "id errors", run.id_errors);
    report.int("misrouted", "misrouted", run.misrouted);
    report.int("bad_frames", "bad frames", run.bad_frames);
    report.int("server_errors", "server error frames", run.server_errors.total());
    report.int("foreign", "foreign messages", run.foreign);
    report.real("elapsed_s", "measurement window (s)", window_ns as f64 / 1e9, 3);
    report.real("deliveries_per_sec", "deliveries/s", per_sec, 0);
    report.latencies(&run.latency);
    report.server(cpu_before, cpu_after, run.delivered, "delivery", rss);
    for (bad, what) in [
        (lost, "lost deliveries"),
        (run.duplicates, "duplicates"),
        (run.reordered, "reordered deliveries"),
        (mismatches, "receivers disagreeing on the order"),
        (run.id_errors, "id gaps"),
        (run.misrouted, "deliveries to the wrong room"),
        (run.bad_frames, "frames that are not valid chat JSON"),
    ] {
        if bad > 0 {
            report.fail(format!("{bad} {what}"));
        }
    }
    if run.problems.total() > 0 {
        report.fail(format!("connections lost: {}", run.problems.summary()));
    }
    if run.server_errors.total() > 0 {
        report.fail(format!("server error frames: {}", run.server_errors.summary()));
    }
    Ok(report)
}

/// Words for a connection the server ended while we still wanted it.
fn describe_close(code: Option<u16>, clean: bool) -> String {
    match (code, clean) {
        (Some(code), _) => format!("server closed the connection (code {code})"),
        (None, true) => "server closed the connection".to_string(),
        (None, false) => "connection dropped without a close frame".to_string(),
    }
}

/// Events per second over a window in nanoseconds (0 for an empty window).
fn rate_per_sec(events: u64, window_ns: u64) -> f64 {
    if window_ns == 0 { 0.0 } else { events as f64 * 1e9 / window_ns as f64 }
}

// ---------------------------------------------------------------------------------------------
// Mode echo: round trips on /ws/echo
// ---------------------------------------------------------------------------------------------

/// One echo client: the text it is waiting to see again, and when it sent it.
struct EchoClient {
    expect: Option<String>,
    sent_ns: u64,
    round_trips: u64,
    alive: bool,
}

struct EchoRun {
    clock: Clock,
    run: String,
    size: usize,
    /// Round trips per client (`--messages`), or `None` to run for `--duration`.
    limit: Option<u64>,
    sending: bool,
    closing: bool,
    tokens: Vec<usize>,
    clients: Vec<EchoClient>,
    due: Vec<usize>,
    opened: usize,
    /// Clients that finished their round trips or died.
    finished: usize,
    outstanding: usize,
    latency: Histogram,
    completed: u64,
    mismatches: u64,
    unexpected: u64,
    first_send_ns: u64,
    last_done_ns: u64,
    problems: Problems,
}

impl EchoRun {
    fn send(&mut self, net: &mut Net, i: usize) {
        let now = self.clock.ns();
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        let text = Payload { tag: Tag::Echo, run: &self.run, a: i as u32, b: client.round_trips, sent_ns: now }
            .compose(self.size);
        let Some(&token) = self.tokens.get(i) else {
            return;
        };
        // The copy to compare with: echo frames must come back byte for byte.
        client.expect = Some(text.clone());
        client.sent_ns = now;
        if net.queue_text(token, text) {
            self.outstanding += 1;
        } else {
            client.expect = None;
        }
    }

    /// An echo arrived; `as_text` says whether it kept the text opcode we sent it with.
    fn on_echo(&mut self, i: usize, data: &[u8], as_text: bool) {
        let now = self.clock.ns();
        let Some(client) = self.clients.get_mut(i) else {
            return;
        };
        let Some(expect) = client.expect.take() else {
            // Nothing was outstanding: the server sent something we did not ask for.
            self.unexpected += 1;
            return;
        };
        self.outstanding -= 1;
        if !as_text || data != expect.as_bytes() {
            self.mismatches += 1;
        }
        self.latency.record(now.saturating_sub(client.sent_ns));
        self.completed += 1;
        self.last_done_ns = now;
        client.round_trips += 1;
        if self.limit.is_some_and(|l| client.round_trips >= l) {
            self.finished += 1;
        } else if self.sending {
            self.due.push(i);
        }
    }
}

impl Driver for EchoRun {
    fn on_event(&mut self, i: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => self.opened += 1,
            NetEvent::Text(text) => self.on_echo(i, text.as_bytes(), true),
            // We only send text; binary back means the server changed the opcode.
            NetEvent::Binary(data) => self.on_echo(i, data, false),
            NetEvent::Closed { .. } | NetEvent::Failed(_) if self.closing => {}
            NetEvent::Closed { code, clean } => self.on_lost(i, &describe_close(code, clean)),
            NetEvent::Failed(reason) => self.on_lost(i, reason),
        }
    }

    fn has_work(&self) -> bool {
        !self.due.is_empty()
    }

    fn after_turn(&mut self, net: &mut Net) -> Option<Instant> {
        let due = std::mem::take(&mut self.due);
        for &i in &due {
            self.send(net, i);
        }
        self.due = due;
        self.due.clear();
        None
    }
}

impl EchoRun {
    fn on_lost(&mut self, i: usize, reason: &str) {
        self.problems.note(reason);
        if let Some(client) = self.clients.get_mut(i)
            && client.alive
        {
            client.alive = false;
            if client.expect.take().is_some() {
                self.outstanding -= 1;
            }
            if self.limit.is_none_or(|l| client.round_trips < l) {
                self.finished += 1;
            }
        }
    }
}

/// Runs mode `echo` and reports.
fn run_echo(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let clock = Clock::new();
    let mut net = Net::new(o.target.clone())?;
    let n = o.clients;
    let mut run = EchoRun {
        clock,
        run: run_tag(),
        size: o.size,
        limit: o.messages,
        sending: false,
        closing: false,
        tokens: Vec::with_capacity(n),
        clients: (0..n).map(|_| EchoClient { expect: None, sent_ns: 0, round_trips: 0, alive: true }).collect(),
        due: Vec::new(),
        opened: 0,
        finished: 0,
        outstanding: 0,
        latency: Histogram::new(),
        completed: 0,
        mismatches: 0,
        unexpected: 0,
        first_send_ns: 0,
        last_done_ns: 0,
        problems: Problems::default(),
    };
    let path = format!("{}/ws/echo", o.target.base);
    for i in 0..n {
        run.tokens.push(net.open(i, &path));
    }
    drive(&mut net, &mut run, Instant::now() + o.timeout, |r, _, _| r.opened + r.problems.total() as usize >= n)?;
    if run.opened < n {
        return Err(format!("only {} of {n} echo clients connected: {}", run.opened, run.problems.summary()));
    }

    let cpu_before = probe.and_then(ServerProbe::cpu_seconds);
    run.sending = true;
    run.first_send_ns = clock.ns();
    run.due.extend(0..n);
    let deadline = match o.messages {
        Some(_) => Instant::now() + o.timeout,
        None => Instant::now() + o.duration,
    };
    drive(&mut net, &mut run, deadline, |r, _, _| r.finished >= n)?;
    // Stop sending, and give the echoes still on their way a moment to arrive.
    run.sending = false;
    drive(&mut net, &mut run, Instant::now() + 2 * CLOSE_GRACE, |r, _, _| r.outstanding == 0)?;
    let cpu_after = probe.and_then(ServerProbe::cpu_seconds);
    let rss = probe.and_then(ServerProbe::rss_kib);
    let lost = run.outstanding as u64;
    run.closing = true;
    close_everything(&mut net, &mut run)?;

    let window_ns = run.last_done_ns.saturating_sub(run.first_send_ns);
    let mut report = Report::new(format!("loadgen echo: {n} clients, closed loop, {} B text frames", o.size));
    report.text("mode", "mode", "echo");
    report.int("clients", "clients", n as u64);
    report.int("size", "message size (B)", o.size as u64);
    report.int("round_trips", "round trips", run.completed);
    report.int("mismatches", "mismatched echoes", run.mismatches);
    report.int("unexpected", "unexpected frames", run.unexpected);
    report.int("lost", "lost", lost);
    report.real("elapsed_s", "measurement window (s)", window_ns as f64 / 1e9, 3);
    report.real("round_trips_per_sec", "round trips/s", rate_per_sec(run.completed, window_ns), 0);
    report.latencies(&run.latency);
    report.server(cpu_before, cpu_after, run.completed, "round_trip", rss);
    for (bad, what) in [
        (run.mismatches, "echoes that differ from what was sent"),
        (run.unexpected, "frames nobody asked for"),
        (lost, "echoes that never came back"),
    ] {
        if bad > 0 {
            report.fail(format!("{bad} {what}"));
        }
    }
    if run.problems.total() > 0 {
        report.fail(format!("connections lost: {}", run.problems.summary()));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Mode idle: what an idle connection costs the server
// ---------------------------------------------------------------------------------------------

struct IdleRun {
    opened: usize,
    frames: u64,
    last_frame: Instant,
    closing: bool,
    /// Connections that failed before opening, or ended while they should have been held.
    problems: Problems,
    lost_while_held: u64,
}

impl Driver for IdleRun {
    fn on_event(&mut self, _: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => self.opened += 1,
            // Read and thrown away: we only measure what holding the connection costs.
            NetEvent::Text(_) | NetEvent::Binary(_) => {
                self.frames += 1;
                self.last_frame = Instant::now();
            }
            NetEvent::Closed { .. } | NetEvent::Failed(_) if self.closing => {}
            NetEvent::Closed { code, clean } => {
                self.lost_while_held += 1;
                self.problems.note(&describe_close(code, clean));
            }
            NetEvent::Failed(reason) => {
                self.lost_while_held += 1;
                self.problems.note(reason);
            }
        }
    }

    fn after_turn(&mut self, _: &mut Net) -> Option<Instant> {
        None
    }
}

/// Runs mode `idle` and reports.
fn run_idle(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let mut net = Net::new(o.target.clone())?;
    let n = o.clients;
    let mut run = IdleRun {
        opened: 0,
        frames: 0,
        last_frame: Instant::now(),
        closing: false,
        problems: Problems::default(),
        lost_while_held: 0,
    };
    let rss_before = probe.and_then(ServerProbe::rss_kib);
    let start = Instant::now();
    for i in 0..n {
        let room = format!("idle-{}", i % o.rooms);
        let path = net.room_path(&o.path_prefix, &room, &format!("i{i}"));
        net.open(i, &path);
    }
    drive(&mut net, &mut run, start + o.timeout, |r, _, _| r.opened + r.problems.total() as usize >= n)?;
    let connect_secs = start.elapsed().as_secs_f64();
    let opened = run.opened;
    let failed_to_open = n - opened.min(n);
    // The server may still be sending join/presence frames and allocating for the last
    // connections: sample its memory once it has been quiet for a while.
    run.last_frame = Instant::now();
    settle(&mut net, &mut run, |r| r.last_frame, IDLE_SETTLE_QUIET, SETTLE_MAX)?;
    let rss_after = probe.and_then(ServerProbe::rss_kib);
    let held_from = Instant::now();
    drive(&mut net, &mut run, held_from + o.duration, |_, _, _| false)?;
    let held_secs = held_from.elapsed().as_secs_f64();
    run.closing = true;
    close_everything(&mut net, &mut run)?;

    let mut report =
        Report::new(format!("loadgen idle: {n} connections over {} room(s), held {:.1} s", o.rooms, held_secs));
    report.text("mode", "mode", "idle");
    report.int("clients", "clients", n as u64);
    report.int("rooms", "rooms", o.rooms as u64);
    report.int("connected", "connected", opened as u64);
    report.int("failed", "failed to connect", failed_to_open as u64);
    report.int("connect_retries", "connect retries", net.retried);
    report.int("dropped", "dropped while held", run.lost_while_held.saturating_sub(failed_to_open as u64));
    report.real("connect_s", "connect time (s)", connect_secs, 3);
    report.real("connects_per_sec", "connects/s", opened as f64 / connect_secs.max(1e-9), 0);
    report.int("frames_received", "frames received", run.frames);
    report.real("held_s", "held (s)", held_secs, 1);
    match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            report.int("rss_before_kib", "server RSS before (KiB)", before);
            report.int("rss_after_kib", "server RSS after (KiB)", after);
            // Signed: a garbage-collected server (node) may well shrink while we connect.
            let per_conn = (after as f64 - before as f64) * 1024.0 / opened.max(1) as f64;
            report.real("rss_per_conn_bytes", "server RSS per connection (B)", per_conn, 0);
        }
        _ => {
            report.absent("rss_before_kib", "server RSS before (KiB)");
            report.absent("rss_after_kib", "server RSS after (KiB)");
            report.absent("rss_per_conn_bytes", "server RSS per connection (B)");
        }
    }
    if run.problems.total() > 0 {
        report.fail(format!("connections failed: {}", run.problems.summary()));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Mode churn: connect, post, receive, close, again
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChurnStage {
    /// Between cycles (or stopped).
    Idle,
    /// Connecting, upgrading, or waiting for the welcome.
    Joining,
    /// Posted; waiting for the message to come back.
    Posted,
    /// Close frame sent; waiting for the server to finish the close.
    Leaving,
}

struct ChurnSlot {
    stage: ChurnStage,
    token: usize,
    cycle: u64,
    started: Instant,
    posted_ns: u64,
    restart_at: Instant,
}

struct ChurnRun {
    clock: Clock,
    typed: bool,
    run: String,
    size: usize,
    rooms: usize,
    prefix: String,
    timeout: Duration,
    stopping: bool,
    slots: Vec<ChurnSlot>,
    to_post: Vec<usize>,
    to_close: Vec<usize>,
    cycles: u64,
    cycle_latency: Histogram,
    post_latency: Histogram,
    failures: u64,
    stalled: u64,
    /// Cycles whose close the server ended without its close frame.
    unclean_closes: u64,
    first_start: Instant,
    last_done: Instant,
    last_stall_scan: Instant,
    problems: Problems,
}

impl ChurnRun {
    /// A cycle broke (failed connect, unexpected close): count it, pause, start again.
    fn on_broken(&mut self, slot: usize, reason: &str) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.stage == ChurnStage::Idle {
            return;
        }
        s.stage = ChurnStage::Idle;
        s.restart_at = Instant::now() + CHURN_FAILURE_PAUSE;
        self.failures += 1;
        self.problems.note(reason);
    }

    fn username(slot: usize, cycle: u64) -> String {
        format!("k{slot}n{cycle}")
    }
}

impl Driver for ChurnRun {
    fn on_event(&mut self, slot: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => {
                if !self.typed {
                    self.to_post.push(slot);
                }
            }
            NetEvent::Text(text) => {
                let Some(frame) = parse_frame(text) else {
                    return;
                };
                match frame.kind.as_deref() {
                    Some("welcome") => self.to_post.push(slot),
                    Some("message") | None => {
                        let now_ns = self.clock.ns();
                        let Some(s) = self.slots.get_mut(slot) else {
                            return;
                        };
                        let mine = frame.message.as_deref().and_then(decode_payload).is_some_and(|p| {
                            p.tag == Tag::Churn && p.run == self.run && p.a as usize == slot && p.b == s.cycle
                        });
                        if mine && s.stage == ChurnStage::Posted {
                            self.post_latency.record(now_ns.saturating_sub(s.posted_ns));
                            self.to_close.push(slot);
                        }
                    }
                    _ => {}
                }
            }
            NetEvent::Binary(_) => {}
            NetEvent::Closed { code, clean } => {
                let leaving = self.slots.get(slot).is_some_and(|s| s.stage == ChurnStage::Leaving);
                if leaving {
                    let now = Instant::now();
                    if let Some(s) = self.slots.get_mut(slot) {
                        // The cycle did its work either way; a missing close reply is
                        // counted (and fails the run) but does not void the cycle.
                        if !clean {
                            self.unclean_closes += 1;
                        }
                        self.cycles += 1;
                        self.cycle_latency.record(now.duration_since(s.started).as_nanos() as u64);
                        self.last_done = now;
                        s.stage = ChurnStage::Idle;
                        s.restart_at = now;
                    }
                } else {
                    self.on_broken(slot, &describe_close(code, clean));
                }
            }
            NetEvent::Failed(reason) => self.on_broken(slot, reason),
        }
    }

    fn has_work(&self) -> bool {
        !self.to_post.is_empty() || !self.to_close.is_empty()
    }

    fn after_turn(&mut self, net: &mut Net) -> Option<Instant> {
        let now = Instant::now();
        for slot in std::mem::take(&mut self.to_post) {
            let Some(s) = self.slots.get_mut(slot) else {
                continue;
            };
            if s.stage != ChurnStage::Joining {
                continue;
            }
            s.posted_ns = self.clock.ns();
            let text = Payload { tag: Tag::Churn, run: &self.run, a: slot as u32, b: s.cycle, sent_ns: s.posted_ns }
                .compose(self.size);
            let post = compose_post(&text, &Self::username(slot, s.cycle));
            if net.queue_text(s.token, post) {
                s.stage = ChurnStage::Posted;
            }
        }
        for slot in std::mem::take(&mut self.to_close) {
            let Some(s) = self.slots.get_mut(slot) else {
                continue;
            };
            if s.stage == ChurnStage::Posted {
                s.stage = ChurnStage::Leaving;
                if !net.close(s.token) {
                    self.on_broken(slot, "connection gone before its close");
                }
            }
        }
        // A cycle stuck for longer than --timeout: drop its connection and count a stall.
        if now >= self.last_stall_scan + Duration::from_millis(100) {
            self.last_stall_scan = now;
            for s in &mut self.slots {
                if s.stage != ChurnStage::Idle && now >= s.started + self.timeout {
                    net.close(s.token);
                    net.remove(s.token);
                    s.stage = ChurnStage::Idle;
                    s.restart_at = now;
                    self.stalled += 1;
                }
            }
        }
        let mut next: Option<Instant> = None;
        if !self.stopping {
            for (slot, s) in self.slots.iter_mut().enumerate() {
                if s.stage != ChurnStage::Idle {
                    continue;
                }
                if s.restart_at > now {
                    next = Some(next.map_or(s.restart_at, |n| n.min(s.restart_at)));
                    continue;
                }
                s.cycle += 1;
                s.started = now;
                s.stage = ChurnStage::Joining;
                let room = format!("churn-{}", slot % self.rooms);
                let path = net.room_path(&self.prefix, &room, &Self::username(slot, s.cycle));
                s.token = net.open(slot, &path);
            }
        }
        next
    }
}

/// Runs mode `churn` and reports.
fn run_churn(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let clock = Clock::new();
    let mut net = Net::new(o.target.clone())?;
    let flavour = match o.flavour {
        Flavour::Auto => {
            let path = net.room_path(&o.path_prefix, "churn-0", "probe");
            detect_flavour(&mut net, &path, o.timeout)?
        }
        f => f,
    };
    let now = Instant::now();
    let mut run = ChurnRun {
        clock,
        typed: flavour == Flavour::Typed,
        run: run_tag(),
        size: o.size,
        rooms: o.rooms,
        prefix: o.path_prefix.clone(),
        timeout: o.timeout,
        stopping: false,
        slots: (0..o.clients)
            .map(|_| ChurnSlot {
                stage: ChurnStage::Idle,
                token: usize::MAX,
                cycle: 0,
                started: now,
                posted_ns: 0,
                restart_at: now,
            })
            .collect(),
        to_post: Vec::new(),
        to_close: Vec::new(),
        cycles: 0,
        cycle_latency: Histogram::new(),
        post_latency: Histogram::new(),
        failures: 0,
        stalled: 0,
        unclean_closes: 0,
        first_start: now,
        last_done: now,
        last_stall_scan: now,
        problems: Problems::default(),
    };
    let cpu_before = probe.and_then(ServerProbe::cpu_seconds);
    run.first_start = Instant::now();
    let end = run.first_start + o.duration;
    drive(&mut net, &mut run, end, |_, _, _| false)?;
    // No new cycles; let the ones under way finish (bounded).
    run.stopping = true;
    let grace = o.timeout.min(Duration::from_secs(5));
    drive(&mut net, &mut run, Instant::now() + grace, |r, _, _| r.slots.iter().all(|s| s.stage == ChurnStage::Idle))?;
    let cpu_after = probe.and_then(ServerProbe::cpu_seconds);
    let rss = probe.and_then(ServerProbe::rss_kib);
    let unfinished = run.slots.iter().filter(|s| s.stage != ChurnStage::Idle).count() as u64;
    close_everything(&mut net, &mut run)?;

    let window = run.last_done.saturating_duration_since(run.first_start);
    let mut report = Report::new(format!(
        "loadgen churn: {} concurrent cycles over {} room(s) for {:.1} s, {} server",
        o.clients,
        o.rooms,
        o.duration.as_secs_f64(),
        if run.typed { "typed (chatroom)" } else { "plain (peer)" }
    ));
    report.text("mode", "mode", "churn");
    report.text("flavour", "server flavour", if run.typed { "typed" } else { "plain" });
    report.int("clients", "concurrent cycles", o.clients as u64);
    report.int("rooms", "rooms", o.rooms as u64);
    report.int("cycles", "cycles completed", run.cycles);
    report.int("failed_cycles", "failed cycles", run.failures);
    report.int("stalled", "stalled cycles", run.stalled + unfinished);
    report.int("unclean_closes", "closes without a close frame", run.unclean_closes);
    report.real("elapsed_s", "measurement window (s)", window.as_secs_f64(), 3);
    report.real("cycles_per_sec", "cycles/s", rate_per_sec(run.cycles, window.as_nanos() as u64), 0);
    report.latencies(&run.cycle_latency);
    report.real("post_p50_us", "post → own copy p50 (µs)", run.post_latency.quantile(0.5) as f64 / 1e3, 1);
    report.real("post_p99_us", "post → own copy p99 (µs)", run.post_latency.quantile(0.99) as f64 / 1e3, 1);
    report.server(cpu_before, cpu_after, run.cycles, "cycle", rss);
    if run.failures > 0 {
        report.fail(format!("{} failed cycles: {}", run.failures, run.problems.summary()));
    }
    if run.stalled + unfinished > 0 {
        report.fail(format!("{} cycles stalled", run.stalled + unfinished));
    }
    if run.unclean_closes > 0 {
        report.fail(format!(
            "{} closes answered by dropping TCP without a close frame (RFC 6455 §5.5.1)",
            run.unclean_closes
        ));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// One reported figure.
enum Figure {
    Int(u64),
    /// A real number and the decimals to show.
    Real(f64, usize),
    Text(String),
    /// Not measured (no `--server-pid`, say): `null` in JSON.
    Absent,
}

/// One line of the report: JSON key, human label, value.
struct Row {
    key: String,
    label: String,
    value: Figure,
}

/// The figures of a run, printed either as a block for people or one JSON line for scripts.
struct Report {
    title: String,
    rows: Vec<Row>,
    failures: Vec<String>,
}

impl Report {
    fn new(title: String) -> Self {
        Report { title, rows: Vec::new(), failures: Vec::new() }
    }

    fn push(&mut self, key: &str, label: &str, value: Figure) {
        self.rows.push(Row { key: key.to_string(), label: label.to_string(), value });
    }

    fn int(&mut self, key: &str, label: &str, value: u64) {
        self.push(key, label, Figure::Int(value));
    }

    fn real(&mut self, key: &str, label: &str, value: f64, decimals: usize) {
        self.push(key, label, Figure::Real(value, decimals));
    }

    fn text(&mut self, key: &str, label: &str, value: &str) {
        self.push(key, label, Figure::Text(value.to_string()));
    }

    fn absent(&mut self, key: &str, label: &str) {
        self.push(key, label, Figure::Absent);
    }

    fn fail(&mut self, why: String) {
        self.failures.push(why);
    }

    fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// p50, p90, p99, p99.9 and max, in microseconds.
    fn latencies(&mut self, h: &Histogram) {
        for (key, label, q) in [
            ("p50_us", "latency p50 (µs)", 0.5),
            ("p90_us", "latency p90 (µs)", 0.9),
            ("p99_us", "latency p99 (µs)", 0.99),
            ("p999_us", "latency p99.9 (µs)", 0.999),
        ] {
            self.real(key, label, h.quantile(q) as f64 / 1e3, 1);
        }
        self.real("max_us", "latency max (µs)", h.max as f64 / 1e3, 1);
    }

    /// Server CPU over the measurement window, per `unit` (delivery, round trip, cycle).
    fn server(&mut self, before: Option<f64>, after: Option<f64>, events: u64, unit: &str, rss_kib: Option<u64>) {
        let per_key = format!("server_cpu_us_per_{unit}");
        let per_label = format!("server CPU per {} (µs)", unit.replace('_', " "));
        match (before, after) {
            (Some(b), Some(a)) => {
                let cpu = (a - b).max(0.0);
                self.real("server_cpu_s", "server CPU (s)", cpu, 3);
                if events > 0 {
                    self.real(&per_key, &per_label, cpu * 1e6 / events as f64, 3);
                } else {
                    self.absent(&per_key, &per_label);
                }
            }
            _ => {
                self.absent("server_cpu_s", "server CPU (s)");
                self.absent(&per_key, &per_label);
            }
        }
        match rss_kib {
            Some(kib) => self.int("server_rss_kib", "server RSS (KiB)", kib),
            None => self.absent("server_rss_kib", "server RSS (KiB)"),
        }
    }

    fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
            return;
        }
        println!("{}", self.title);
        for row in &self.rows {
            let value = match &row.value {
                Figure::Int(v) => v.to_string(),
                Figure::Real(v, decimals) => format!("{v:.decimals$}"),
                Figure::Text(t) => t.clone(),
                Figure::Absent => "-".to_string(),
            };
            println!("  {:<32} {value}", row.label);
        }
        if self.passed() {
            println!("  {:<32} PASS", "result");
        } else {
            println!("  {:<32} FAIL: {}", "result", self.failures.join("; "));
        }
    }

    /// One JSON object, keys in report order, then `ok` and `failures`.
    fn to_json(&self) -> String {
        let mut out = String::from("{");
        for row in &self.rows {
            let value = match &row.value {
                Figure::Int(v) => serde_json::Value::from(*v),
                Figure::Real(v, decimals) => {
                    let scale = 10f64.powi(*decimals as i32);
                    serde_json::Value::from((v * scale).round() / scale)
                }
                Figure::Text(t) => serde_json::Value::from(t.as_str()),
                Figure::Absent => serde_json::Value::Null,
            };
            out.push_str(&serde_json::Value::from(row.key.as_str()).to_string());
            out.push(':');
            out.push_str(&value.to_string());
            out.push(',');
        }
        out.push_str(&format!(
            "\"ok\":{},\"failures\":{}}}",
            self.passed(),
            serde_json::Value::from(self.failures.clone())
        ));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(options)) => options,
        Err(why) => {
            eprintln!("loadgen: {why}\n(loadgen --help shows the options)");
            return ExitCode::from(2);
        }
    };
    let probe = match options.server_pid.map(ServerProbe::new).transpose() {
        Ok(probe) => probe,
        Err(why) => {
            eprintln!("loadgen: {why}");
            return ExitCode::from(2);
        }
    };
    let fd_limit = raise_fd_limit();
    let needed = options.clients as u64 + 64;
    if fd_limit < needed {
        eprintln!(
            "loadgen: warning: the open-file limit is {fd_limit}, below the {needed} this run \
             needs; connections past it will fail"
        );
    }
    let result = match options.mode {
        Mode::Room => run_room(&options, probe.as_ref()),
        Mode::Echo => run_echo(&options, probe.as_ref()),
        Mode::Idle => run_idle(&options, probe.as_ref()),
        Mode::Churn => run_churn(&options, probe.as_ref()),
    };
    match result {
        Ok(report) => {
            report.print(options.json);
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(why) => {
            eprintln!("loadgen: {why}");
            if options.json {
                // Scripts reading stdout still get one parseable line.
                let line = serde_json::json!({
                    "mode": options.mode.name(),
                    "ok": false,
                    "error": why,
                });
                println!("{line}");
            }
            ExitCode::from(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests of the pure parts (run with `cargo test --bin loadgen`)
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_tight() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i >= last, "index must not decrease at {v}");
            last = i;
            let high = Histogram::highest_in(i);
            assert!(high >= v, "bucket of {v} ends at {high}");
            assert!((high - v) as f64 <= v as f64 / 128.0 + 1.0, "bucket of {v} too wide");
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5);
        assert!((500_000..=504_000).contains(&p50), "p50 {p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
    }

    #[test]
    fn scans_flat_frames_without_serde() {
        let typed = r#"{"type":"message","room":"r","id":42,"username":"a","message":"hi","ts":1}"#;
        let f = scan_flat_object(typed).expect("flat");
        assert!(f.typed);
        assert_eq!(f.kind.as_deref(), Some("message"));
        assert_eq!(f.id, Some(42));
        assert_eq!(f.message.as_deref(), Some("hi"));
        let plain = r#"{"username": "c1", "message": "lg x 1 2 3 xx"}"#;
        let f = scan_flat_object(plain).expect("flat");
        assert!(!f.typed);
        assert_eq!(f.message.as_deref(), Some("lg x 1 2 3 xx"));
    }

    #[test]
    fn hands_the_rest_to_serde() {
        let nested = r#"{"type":"welcome","history":[{"id":1}],"last_id":7}"#;
        assert!(scan_flat_object(nested).is_none());
        let f = parse_frame(nested).expect("valid JSON");
        assert_eq!(f.kind.as_deref(), Some("welcome"));
        assert_eq!(f.last_id, Some(7));
        let escaped = r#"{"message":"a\"b"}"#;
        assert!(scan_flat_object(escaped).is_none());
        assert_eq!(parse_frame(escaped).and_then(|f| f.message).as_deref(), Some("a\"b"));
        for bad in ["", "{", "{\"a\":}", "{\"a\":1,}", "[1]", "{\"a\":1} x", "{\"a\":tru}"] {
            assert!(parse_frame(bad).is_none(), "{bad:?} is not a JSON object");
        }
    }

    #[test]
    fn payload_round_trip() {
        let p = Payload { tag: Tag::Measured, run: "abc", a: 7, b: 99, sent_ns: 123_456 };
        let text = p.compose(100);
        assert_eq!(text.len(), 100);
        assert_eq!(decode_payload(&text), Some(p));
        assert_eq!(decode_payload("hello world"), None);
    }

    #[test]
    fn only_loopback_urls() {
        assert!(parse_url("ws://127.0.0.1:8000").is_ok());
        assert!(parse_url("ws://127.1.2.3:8000/").is_ok());
        assert!(parse_url("ws://localhost:8000").is_ok());
        assert!(parse_url("ws://[::1]:8000").is_ok());
        assert_eq!(parse_url("ws://localhost").map(|t| t.addr.port()), Ok(80));
        for bad in ["ws://10.0.0.1:80", "ws://example.com:80", "http://127.0.0.1", "ws://[::2]:80", "wss://127.0.0.1"] {
            assert!(parse_url(bad).is_err(), "{bad} must be refused");
        }
    }

    /// A room run of `clients` receivers and `senders` senders (clients 0..) of `messages`.
    fn room_run(clients: &str, senders: &str, messages: &str, typed: bool) -> RoomRun {
        let args = ["--url", "ws://127.0.0.1:1", "--clients", clients, "--senders", senders, "--messages", messages];
        let Ok(Command::Run(options)) = parse_args(args.into_iter().map(String::from)) else {
            panic!("test arguments must parse");
        };
        let mut run = RoomRun::new(&options, typed, Clock::new());
        run.stage = Stage::Measuring;
        run
    }

    fn plain_frame(run: &str, sender: u32, seq: u64) -> String {
        let text = Payload { tag: Tag::Measured, run, a: sender, b: seq, sent_ns: 0 }.compose(40);
        format!(r#"{{"username": "c{sender}", "message": "{text}"}}"#)
    }

    #[test]
    fn room_checks_catch_losses_duplicates_reorders_and_disagreement() {
        let mut run = room_run("2", "1", "4", false);
        let tag = run.run.clone();
        for seq in [0, 1, 2, 3] {
            run.on_text(0, &plain_frame(&tag, 0, seq));
        }
        // Receiver 1: 2 before 1 (a reorder), 1 again (a duplicate), 3 never (a loss).
        for seq in [0, 2, 1, 1] {
            run.on_text(1, &plain_frame(&tag, 0, seq));
        }
        assert_eq!(run.delivered, 7);
        assert_eq!(run.expected() - run.delivered, 1);
        assert_eq!(run.reordered, 1);
        assert_eq!(run.duplicates, 1);
        // The incomplete receiver is reported as a loss, not as an order mismatch.
        assert_eq!(run.order_mismatches(), 0);
        assert_eq!(run.foreign, 0);
        run.on_text(1, r#"{"username": "someone", "message": "hello"}"#);
        assert_eq!(run.foreign, 1);
        run.on_text(1, "not json");
        assert_eq!(run.bad_frames, 1);
    }

    #[test]
    fn room_checks_catch_receivers_that_disagree_on_the_interleaving() {
        let mut run = room_run("3", "2", "1", false);
        let tag = run.run.clone();
        for (receiver, order) in [(0, [0, 1]), (1, [0, 1]), (2, [1, 0])] {
            for sender in order {
                run.on_text(receiver, &plain_frame(&tag, sender, 0));
            }
        }
        assert_eq!(run.expected(), run.delivered);
        assert_eq!(run.order_mismatches(), 1);
    }

    #[test]
    fn room_checks_follow_ids_from_the_welcome() {
        let mut run = room_run("1", "1", "3", true);
        let tag = run.run.clone();
        run.on_text(0, r#"{"type":"welcome","room":"bench-0","history":[{"id":9}],"last_id":9}"#);
        assert_eq!(run.ready, 1);
        for (id, seq) in [(10, 0), (11, 1), (13, 2)] {
            let text = Payload { tag: Tag::Measured, run: &tag, a: 0, b: seq, sent_ns: 0 }.compose(40);
            run.on_text(
                0,
                &format!(
                    r#"{{"type":"message","room":"bench-0","id":{id},"username":"c0","message":"{text}","ts":1}}"#
                ),
            );
        }
        run.on_text(0, r#"{"type":"error","code":"rate_limited","message":"slow down"}"#);
        assert_eq!(run.delivered, 3);
        assert_eq!(run.id_errors, 1);
        assert_eq!(run.server_errors.summary(), "rate_limited ×1");
    }

    #[test]
    fn order_hash_depends_on_order() {
        let ab = fold_order(fold_order(0, 1, 0), 2, 0);
        let ba = fold_order(fold_order(0, 2, 0), 1, 0);
        assert_ne!(ab, ba);
    }
}
