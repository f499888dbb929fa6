//! The command line: what `loadgen --help` prints, how the arguments become `Options`, and
//! the check that matters most, that `--url` names this machine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// What `--help` prints.
pub const USAGE: &str = "\
usage: loadgen --url ws://127.0.0.1:PORT [options]

Drives a chat server on this machine (chatroom, or a reference peer) with many WebSocket
clients, checks every delivery, and reports throughput, latency and server CPU.

modes (--mode):
  room    (default) N clients over R rooms, S senders post M messages each; every receiver
          checks loss, duplicates, order and ids; reports deliveries/s
  echo    N clients on /ws/echo, closed loop, each echo compared; reports round trips/s
  idle    N connections that only listen; with --server-pid, server RSS per connection
  churn   N concurrent cycles: connect, post, await own message, close; reports cycles/s
  soak    chatroom only, for --duration: N chatters over R rooms posting --rate msg/s in
          total, plus visitors (join, leave, resume with ?since=), slow readers, resets,
          a flooder and scroll-back over HTTP; samples the server (--server-pid) every
          5 s into --csv; fails on a lost or duplicated message or descriptors that do
          not come back, and on runs of 10 min or more on RSS growing > 1 MiB/10 min

options:
  --url ws://HOST:PORT   the server; HOST must be 127.0.0.0/8, localhost or [::1];
                         wss:// speaks TLS (any certificate is accepted unless --tls-ca)
  --mode MODE            room | echo | idle | churn | soak                         [room]
  --clients N            connections (churn: concurrent cycles; soak: chatters)
                         [room 100, echo 10, idle 1000, churn 50, soak 100]
  --rooms R              rooms bench-0..bench-R-1 (idle-*, churn-*, soak-* in those
                         modes)                                             [1; soak 20]
  --senders S            room: senders in total, spread over the rooms                 [R]
  --messages M           room: messages per sender [100]; echo: round trips per client
                         (instead of --duration)
  --size BYTES           message text length                                          [100]
  --window W             room, closed loop: messages in flight per sender               [1]
  --rate X               room: open loop, X messages/s offered in total, on a schedule;
                         soak: the chatters' messages/s in total                [2 × N]
  --warmup N             room: each sender first posts N unmeasured messages           [0]
  --duration SECS        echo [5], churn [5], soak [60]: how long to run; idle [2]: how
                         long to hold
  --timeout SECS         bound on each wait: connecting, measuring                     [60]
  --flavour F            auto | typed | plain: does the server send typed frames
                         (chatroom) or bare {username, message} ones (peers)?        [auto]
  --path-prefix P        path in front of the room name                    [/ws/chatroom/]
  --room-prefix NAME     room: rooms are NAME-0..NAME-R-1, so that two loadgen processes
                         can load different rooms of one server                     [bench]
  --server-pid PID       sample this process's CPU time and RSS from /proc
  --csv PATH             soak: write the samples to this CSV file
  --json                 print one JSON object line instead of the text block
  --deflate              offer permessage-deflate (as a browser does) and inflate what
                         comes compressed; wire_bytes_in reports what was read
  --tls-ca FILE          wss://: trust only the certificates in this PEM file
  --tls-no-resume        wss://: a full handshake every time (no session resumption)
  --filler x|words       pad message texts to --size with 'x' (default) or with English
                         words (compresses about as chat text does)
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
pub enum Mode {
    Room,
    Echo,
    Idle,
    Churn,
    Soak,
}

impl Mode {
    /// The mode's name, as `--mode` takes it and the report shows it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Room => "room",
            Mode::Echo => "echo",
            Mode::Idle => "idle",
            Mode::Churn => "churn",
            Mode::Soak => "soak",
        }
    }
}

/// What the server's room frames look like; decides when a client counts as "connected".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Find out with a probe connection (see `detect_flavour`).
    Auto,
    /// chatroom: every frame has a `type`, and a `welcome` frame opens each membership.
    Typed,
    /// The reference peers: bare `{"username", "message"}` frames, nothing on join.
    Plain,
}

/// Everything the command line decides, with the defaults of the chosen mode applied.
#[derive(Clone, Debug)]
pub struct Options {
    /// The server (`--url`), already checked to be on this machine.
    pub target: Target,
    pub mode: Mode,
    /// Connections (`--clients`); concurrent cycles in mode churn.
    pub clients: usize,
    /// Rooms the clients are spread over (`--rooms`).
    pub rooms: usize,
    /// Room mode: clients that post (`--senders`); sender j is client j.
    pub senders: usize,
    /// Room: messages per sender; echo: round trips per client (`--messages`).
    pub messages: Option<u64>,
    /// Bytes of message text (`--size`).
    pub size: usize,
    /// Closed loop: messages a sender may have in flight (`--window`).
    pub window: u32,
    /// Open loop: messages per second offered in total (`--rate`).
    pub rate: Option<f64>,
    /// Unmeasured messages each sender posts first (`--warmup`).
    pub warmup: u32,
    /// How long echo and churn run, and how long idle holds its connections.
    pub duration: Duration,
    /// Bound on every wait: connecting, measuring (`--timeout`).
    pub timeout: Duration,
    /// Typed (chatroom) or plain (peer) frames, or find out (`--flavour`).
    pub flavour: Flavour,
    /// Path in front of a room name (`--path-prefix`).
    pub path_prefix: String,
    /// Rooms are `<room_prefix>-N` (`--room-prefix`).
    pub room_prefix: String,
    /// The server process to sample in /proc (`--server-pid`).
    pub server_pid: Option<u32>,
    /// Print one JSON line instead of the text block (`--json`).
    pub json: bool,
    /// Soak: where to write the samples (`--csv`).
    pub csv: Option<String>,
}

/// What `main` should do.
pub enum Command {
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
pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
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
    let mut room_prefix = String::from("bench");
    let mut server_pid: Option<u32> = None;
    let mut json = false;
    let mut csv: Option<String> = None;
    let mut deflate = false;
    let mut tls_ca: Option<String> = None;
    let mut tls_resume = true;

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
                    "soak" => Mode::Soak,
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
            "--room-prefix" => room_prefix = flag_value(&flag, args)?,
            "--server-pid" => server_pid = Some(flag_value(&flag, args)?),
            "--json" => json = true,
            "--deflate" => deflate = true,
            "--tls-ca" => tls_ca = Some(flag_value(&flag, args)?),
            "--tls-no-resume" => tls_resume = false,
            "--filler" => match flag_value::<String>(&flag, args)?.as_str() {
                "words" => crate::wire::use_word_filler(),
                "x" => {}
                other => return Err(format!("--filler: {other:?} is not x or words")),
            },
            "--csv" => csv = Some(flag_value(&flag, args)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let url = url.ok_or("--url is required (for example --url ws://127.0.0.1:8000)")?;
    let mut target = parse_url(&url)?;
    target.deflate = deflate;
    if target.tls.is_some() {
        target.tls = Some(crate::tls::Tls::new(&target.server_name, tls_ca.as_deref(), tls_resume)?);
    } else if tls_ca.is_some() || !tls_resume {
        return Err("--tls-ca and --tls-no-resume are for wss:// URLs".into());
    }
    let clients = clients.unwrap_or(match mode {
        Mode::Room => 100,
        Mode::Echo => 10,
        Mode::Idle => 1000,
        Mode::Churn => 50,
        Mode::Soak => 100,
    });
    let rooms = rooms.unwrap_or(if mode == Mode::Soak { 20 } else { 1 });
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
    if room_prefix.is_empty() || !room_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err("--room-prefix takes letters, digits, '-' and '_'".into());
    }
    let duration = duration.unwrap_or(match mode {
        Mode::Idle => Duration::from_secs(2),
        Mode::Soak => Duration::from_secs(60),
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
        room_prefix,
        server_pid,
        json,
        csv,
    })))
}

/// The server: its socket address, the `Host` header naming it, and a base path from the URL
/// (empty unless the URL had one, e.g. behind a proxy).
#[derive(Clone, Debug)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority as given.
    pub host: String,
    /// A path from the URL to put in front of every route, without a trailing '/'.
    pub base: String,
    /// `--deflate`: offer permessage-deflate and inflate what comes compressed.
    pub deflate: bool,
    /// `wss://`: TLS on every connection.
    pub tls: Option<crate::tls::Tls>,
    /// The URL's host without the port: the TLS server name.
    pub server_name: String,
}

/// Parses `ws://HOST[:PORT][/base]` and refuses any host that is not this machine: a load
/// generator pointed at someone else's server is a denial-of-service tool, and the numbers
/// it produced over a real network would not mean what this tool's output says anyway.
fn parse_url(url: &str) -> Result<Target, String> {
    let (rest, secure) = if let Some(rest) = url.strip_prefix("ws://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        (rest, true)
    } else {
        return Err(format!("--url must start with ws:// or wss:// (got {url:?})"));
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
        None if secure => 443,
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
        deflate: false,
        tls: if secure { Some(crate::tls::Tls::new(host, None, true)?) } else { None },
        server_name: host.to_string(),
    })
}

fn not_loopback(host: &str) -> String {
    format!(
        "refusing host {host:?}: loadgen only drives servers on this machine \
         (127.0.0.0/8, localhost or [::1])"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls() {
        assert!(parse_url("ws://127.0.0.1:8000").is_ok());
        assert!(parse_url("ws://127.1.2.3:8000/").is_ok());
        assert!(parse_url("ws://localhost:8000").is_ok());
        assert!(parse_url("ws://[::1]:8000").is_ok());
        assert_eq!(parse_url("ws://localhost").map(|t| t.addr.port()), Ok(80));
        assert_eq!(parse_url("wss://localhost").map(|t| (t.addr.port(), t.tls.is_some())), Ok((443, true)));
        assert!(parse_url("wss://[::1]:8443").is_ok_and(|t| t.tls.is_some()));
        for bad in ["ws://10.0.0.1:80", "ws://example.com:80", "http://127.0.0.1", "ws://[::2]:80", "wss://10.0.0.1"] {
            assert!(parse_url(bad).is_err(), "{bad} must be refused");
        }
    }
}
