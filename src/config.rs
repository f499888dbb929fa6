//! Configuration: every setting once, in one table.
//!
//! A setting can come from four places, weakest first: its built-in default,
//! the config file (`--config chatroom.toml`), the environment
//! (`CHATROOM_MAX_MESSAGE` for `--max-message`) and the command line. All four
//! are read into one map of raw strings, and only then is each value parsed
//! into its type. That keeps one parser per type, one error message shape
//! ("--max-message: `12XB` is not a size; use bytes or KiB/MiB/GiB, e.g. 64KiB")
//! and lets `--print-config` show where each effective value came from.
//!
//! `main.rs` calls [`Config::load`]; the rest of the crate only sees the typed
//! [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// What kind of value a setting holds; decides its parser and its help text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `host:port`.
    Addr,
    /// Free text (a path, a URL).
    Text,
    /// A whole number.
    Count,
    /// Bytes, with an optional KiB/MiB/GiB (or K/M/G) suffix.
    Size,
    /// Seconds or milliseconds: `10s`, `250ms`, `1.5s`.
    Duration,
    /// A switch: given on the command line without a value.
    Flag,
    /// A comma-separated list.
    List,
}

/// One row of the settings table.
struct Setting {
    name: &'static str,
    kind: Kind,
    default: &'static str,
    help: &'static str,
}

/// Every setting the server knows. The order is the order of `--help`.
const SETTINGS: &[Setting] = &[
    Setting {
        name: "bind",
        kind: Kind::Addr,
        default: "127.0.0.1:8000",
        help: "address to listen on (port 0 picks a free port)",
    },
    Setting {
        name: "www",
        kind: Kind::Text,
        default: "",
        help: "serve the site from this folder instead of the copy embedded in the binary",
    },
    Setting {
        name: "data",
        kind: Kind::Text,
        default: "./data/chatroom.db",
        help: "SQLite file for users, rooms and messages; `none` keeps history in memory only",
    },
    Setting {
        name: "max-data-size",
        kind: Kind::Size,
        default: "0",
        help: "the size the SQLite file may grow to (0 = no limit); past it posts are refused as on a full disk",
    },
    Setting {
        name: "history",
        kind: Kind::Count,
        default: "50",
        help: "messages a newcomer receives in its welcome frame",
    },
    Setting { name: "max-rooms", kind: Kind::Count, default: "10000", help: "live rooms at most (rooms with members)" },
    Setting {
        name: "max-room-members",
        kind: Kind::Count,
        default: "10000",
        help: "members per room at most; more are closed with 1013",
    },
    Setting {
        name: "max-message",
        kind: Kind::Size,
        default: "64KiB",
        help: "largest WebSocket message (and frame) accepted; larger ones close with 1009",
    },
    Setting { name: "max-text", kind: Kind::Count, default: "4096", help: "longest chat message text, in characters" },
    Setting {
        name: "max-pending",
        kind: Kind::Size,
        default: "1MiB",
        help: "output a client may leave unread before it is dropped as a slow consumer",
    },
    Setting {
        name: "rate-limit",
        kind: Kind::Count,
        default: "20",
        help: "chat posts per second per connection (0 = off)",
    },
    Setting {
        name: "rate-burst",
        kind: Kind::Count,
        default: "40",
        help: "chat posts a connection may send at once before the rate limit applies",
    },
    Setting {
        name: "max-posts-in-flight",
        kind: Kind::Count,
        default: "32",
        help: "posts of one connection not yet stored (or acknowledged by Redis) before it is no longer read",
    },
    Setting {
        name: "presence-limit",
        kind: Kind::Count,
        default: "1000",
        help: "above this many members, presence frames carry counts only",
    },
    Setting {
        name: "header-timeout",
        kind: Kind::Duration,
        default: "10s",
        help: "time a client has to send a whole request head (then 408)",
    },
    Setting {
        name: "idle-timeout",
        kind: Kind::Duration,
        default: "60s",
        help: "idle keep-alive HTTP connections are closed after this",
    },
    Setting {
        name: "ping-interval",
        kind: Kind::Duration,
        default: "25s",
        help: "quiet WebSockets are pinged after this",
    },
    Setting {
        name: "ping-timeout",
        kind: Kind::Duration,
        default: "10s",
        help: "a pinged WebSocket that stays silent this long is closed",
    },
    Setting {
        name: "max-connections",
        kind: Kind::Count,
        default: "0",
        help: "open connections at most; 0 = sized from the file-descriptor limit",
    },
    Setting {
        name: "max-per-ip",
        kind: Kind::Count,
        default: "0",
        help: "connections per client address at most (0 = off)",
    },
    Setting {
        name: "trusted-proxy",
        kind: Kind::List,
        default: "",
        help: "CIDRs of reverse proxies whose X-Forwarded-For is believed",
    },
    Setting {
        name: "allow-origin",
        kind: Kind::List,
        default: "",
        help: "extra Origin host[:port] values allowed to open WebSockets",
    },
    Setting {
        name: "redis",
        kind: Kind::Text,
        default: "",
        help: "redis://HOST:PORT[/DB] to share rooms between processes",
    },
    Setting {
        name: "redis-cluster",
        kind: Kind::List,
        default: "",
        help: "seed nodes HOST:PORT[,HOST:PORT...] (or redis://user:pass@HOST:PORT) of a Redis Cluster (>= 7) to share rooms through, instead of --redis",
    },
    Setting {
        name: "redis-buffer",
        kind: Kind::Count,
        default: "10000",
        help: "posts held while Redis is away before senders get an error",
    },
    Setting {
        name: "redis-batch",
        kind: Kind::Count,
        default: "100",
        help: "posts to one room sent in one Redis script call at most (1 = each post alone)",
    },
    Setting {
        name: "redis-wait",
        kind: Kind::Count,
        default: "0",
        help: "replicas that must confirm a post before it is published and acknowledged (Redis WAIT; 0 = do not wait)",
    },
    Setting {
        name: "redis-timeout",
        kind: Kind::Duration,
        default: "5s",
        help: "reconnect to Redis when a command (or a PING) goes unanswered this long",
    },
    Setting {
        name: "presence-ttl",
        kind: Kind::Duration,
        default: "30s",
        help: "how long a silent process's members stay in shared presence",
    },
    Setting {
        name: "room-grace",
        kind: Kind::Duration,
        default: "10s",
        help: "how long a process stays subscribed to a room after its last member there left",
    },
    Setting {
        name: "reuse-port",
        kind: Kind::Flag,
        default: "false",
        help: "set SO_REUSEPORT so several processes can share --bind",
    },
    Setting {
        name: "admin-bind",
        kind: Kind::Text,
        default: "",
        help: "serve /metrics, /healthz, /readyz and /stats on this address instead",
    },
    Setting {
        name: "tls-cert",
        kind: Kind::Text,
        default: "",
        help: "serve https:// and wss:// on --bind with this PEM certificate chain (leaf first); needs --tls-key",
    },
    Setting {
        name: "tls-key",
        kind: Kind::Text,
        default: "",
        help: "the PEM private key of --tls-cert (reloaded with it on SIGHUP)",
    },
    Setting {
        name: "redirect-bind",
        kind: Kind::Text,
        default: "",
        help: "with TLS, also listen here for plain HTTP and answer 308 to https://",
    },
    Setting {
        name: "acme-dir",
        kind: Kind::Text,
        default: "",
        help: "on --redirect-bind, serve /.well-known/acme-challenge/ from this webroot (the DIR of certbot --webroot -w DIR)",
    },
    Setting {
        name: "hsts",
        kind: Kind::Flag,
        default: "false",
        help: "with TLS, add Strict-Transport-Security (two years) to every HTTP answer",
    },
    Setting {
        name: "auth-secret",
        kind: Kind::Text,
        default: "",
        help: "HS256 secret (32 bytes or more) that signs users' JWT connection tokens; prefer --auth-secret-file",
    },
    Setting {
        name: "auth-secret-file",
        kind: Kind::List,
        default: "",
        help: "[KID=]FILE[,...]: files each holding an HS256 secret (a token's kid picks the KID one)",
    },
    Setting {
        name: "auth-public-key",
        kind: Kind::List,
        default: "",
        help: "[KID=]FILE[,...]: PEM public keys (RSA, EC P-256, Ed25519) whose RS256/ES256/EdDSA tokens are accepted",
    },
    Setting {
        name: "auth-issuer",
        kind: Kind::Text,
        default: "",
        help: "the iss every token must carry (unset: not checked)",
    },
    Setting {
        name: "auth-audience",
        kind: Kind::Text,
        default: "",
        help: "the aud every token must carry (unset: not checked)",
    },
    Setting {
        name: "private-rooms",
        kind: Kind::List,
        default: "",
        help: "rooms (names or prefix-* patterns) only users whose token's rooms claim names them may join, list or read",
    },
    Setting {
        name: "api-key",
        kind: Kind::List,
        default: "",
        help: "keys (16 bytes or more each) that open the server API as Authorization: Bearer KEY; prefer --api-key-file",
    },
    Setting {
        name: "api-key-file",
        kind: Kind::List,
        default: "",
        help: "FILE[,...]: files holding API keys, one per line",
    },
    Setting {
        name: "max-body",
        kind: Kind::Size,
        default: "64KiB",
        help: "largest request body the server API accepts (413 past it)",
    },
    Setting {
        name: "guests",
        kind: Kind::Text,
        default: "on",
        help: "users without a token: on (chat), read-only (join and read), off (refused with 4401)",
    },
    Setting {
        name: "compression",
        kind: Kind::Text,
        default: "shared",
        help: "permessage-deflate: off, shared (large frames compressed once for all, no memory per connection) or dedicated (a compressor per connection)",
    },
    Setting {
        name: "compression-min",
        kind: Kind::Size,
        default: "1KiB",
        help: "with --compression shared, frames smaller than this go uncompressed",
    },
    Setting {
        name: "compression-window-bits",
        kind: Kind::Count,
        default: "12",
        help: "with --compression dedicated, the compression window per connection: 2^N bytes (9-15)",
    },
    Setting {
        name: "compression-mem-level",
        kind: Kind::Count,
        default: "8",
        help: "with --compression dedicated, zlib's memory level (1-9): the compressor's buffer of pending symbols",
    },
    Setting {
        name: "compression-level",
        kind: Kind::Count,
        default: "1",
        help: "DEFLATE effort, 1 (fastest) to 9 (smallest)",
    },
];

/// Settings whose values `--print-config` never shows.
const SECRET_SETTINGS: &[&str] = &["auth-secret", "api-key"];

/// What users without a token may do (`--guests`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guests {
    /// Join, read and post, under a name of their choosing.
    On,
    /// Join and read; their posts are refused (`read_only`).
    ReadOnly,
    /// Refused at the chat endpoints (4401).
    Off,
}

/// Where an effective value came from, for `--print-config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The `--config` file.
    File,
    /// A `CHATROOM_*` environment variable.
    Env,
    /// The command line.
    Cli,
}

/// The typed, validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listening address.
    pub bind: SocketAddr,
    /// `Some(dir)`: serve files from disk; `None`: the embedded copy of `www/`.
    pub www: Option<PathBuf>,
    /// `Some(path)`: SQLite file; `None`: memory only.
    pub data: Option<PathBuf>,
    /// `--max-data-size`: the SQLite file's size limit, if any.
    pub max_data_size: Option<u64>,
    /// Messages in a welcome frame.
    pub history: usize,
    /// Live rooms at most.
    pub max_rooms: usize,
    /// Members per room at most.
    pub max_room_members: usize,
    /// Largest WebSocket message in bytes.
    pub max_message: usize,
    /// Longest chat text in characters.
    pub max_text: usize,
    /// Output bytes a client may leave unread.
    pub max_pending: usize,
    /// Chat posts per second (0 = off).
    pub rate_limit: u32,
    /// Token-bucket depth.
    pub rate_burst: u32,
    /// `--max-posts-in-flight`: a connection with this many posts not yet
    /// stored (or acknowledged by Redis) is not read until some complete.
    /// 32 by default: a post waiting for its commit holds its text about
    /// three times (the storage request, the broadcast JSON, the frame),
    /// so even 32 of the longest (`--max-text` 4096 characters, at most
    /// 16 KiB of UTF-8 each, JSON escaping aside) keep one client's share
    /// of the server's memory near 1.5 MiB; a typical 100-byte post, 32 ×
    /// ~300 bytes. Enough to keep the storage thread's batches full for
    /// one client writing as fast as it can.
    pub max_posts_in_flight: usize,
    /// Above this many members presence carries counts only.
    pub presence_limit: usize,
    /// Deadline for a complete request head.
    pub header_timeout: Duration,
    /// Idle keep-alive connections close after this.
    pub idle_timeout: Duration,
    /// Quiet WebSockets are pinged after this.
    pub ping_interval: Duration,
    /// A ping unanswered this long closes the WebSocket.
    pub ping_timeout: Duration,
    /// Open connections at most (0 until `limits` sizes it).
    pub max_connections: usize,
    /// Connections per client address (0 = off).
    pub max_per_ip: usize,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxy: Vec<Cidr>,
    /// Extra allowed Origin `host[:port]` values, lowercased.
    pub allow_origin: Vec<String>,
    /// Redis URL, if scaling out.
    pub redis: Option<String>,
    /// `--redis-cluster`: seed nodes of a Redis Cluster, if scaling out
    /// over one (never together with `redis`).
    pub redis_cluster: Vec<String>,
    /// Posts held while Redis is away.
    pub redis_buffer: usize,
    /// `--redis-batch`: posts to one room per script call, at most.
    pub redis_batch: usize,
    /// `--redis-wait`: replicas that must have a post (Redis `WAIT`)
    /// before it is published and acknowledged; 0 publishes at once.
    pub redis_wait: usize,
    /// A Redis reply (or PING answer) later than this takes the link down.
    pub redis_timeout: Duration,
    /// Presence lifetime of a silent process.
    pub presence_ttl: Duration,
    /// How long a room's channel stays subscribed after its last local
    /// member left: 10 s by default, so a member who reconnects (a page
    /// reload, a network blip) costs no UNSUBSCRIBE, SUBSCRIBE and
    /// catch-up, while a room nobody here uses stops costing CPU soon.
    pub room_grace: Duration,
    /// SO_REUSEPORT on the listener.
    pub reuse_port: bool,
    /// Separate listener for the operations endpoints.
    pub admin_bind: Option<SocketAddr>,
    /// `--tls-cert` and `--tls-key`: TLS on `--bind` when both are given.
    pub tls: Option<(String, String)>,
    /// `--redirect-bind`: a plain-HTTP listener that redirects to https://.
    pub redirect_bind: Option<SocketAddr>,
    /// `--acme-dir`: the http-01 challenges `--redirect-bind` serves.
    pub acme_dir: Option<PathBuf>,
    /// `--hsts`: Strict-Transport-Security on HTTPS answers.
    pub hsts: bool,
    /// `--auth-secret`: an HS256 secret given inline.
    pub auth_secret: Option<String>,
    /// `--auth-secret-file`: `[KID=]FILE` each.
    pub auth_secret_files: Vec<String>,
    /// `--auth-public-key`: `[KID=]FILE` each.
    pub auth_public_keys: Vec<String>,
    /// `--auth-issuer`.
    pub auth_issuer: Option<String>,
    /// `--auth-audience`.
    pub auth_audience: Option<String>,
    /// `--guests`.
    pub guests: Guests,
    /// `--private-rooms`: names or `prefix-*` patterns.
    pub private_rooms: Vec<String>,
    /// `--api-key`: keys given inline.
    pub api_keys: Vec<String>,
    /// `--api-key-file`: files of keys, one per line.
    pub api_key_files: Vec<String>,
    /// `--max-body`: the largest request body read, in bytes.
    pub max_body: usize,
    /// `--compression*`: permessage-deflate.
    pub compression: crate::deflate::Settings,
    /// Each setting's effective raw value and its source, for `--print-config`.
    effective: Vec<(&'static str, String, Source)>,
}

/// What `Config::load` decided: run, or print something and exit.
#[derive(Debug)]
pub enum Loaded {
    /// Start the server with this configuration.
    Run(Box<Config>),
    /// `--help` or `--print-config`: print this text and exit 0.
    Print(String),
}

/// A configuration error, worded for the person who typed the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// An IPv4 or IPv6 network, `10.0.0.0/8` or `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or a lone address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 { 0 } else { bits >> (width - prefix) }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32) == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128) == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

impl Config {
    /// Reads the command line (`args` without the program name), the
    /// environment (`env`, usually `std::env::vars()`) and the config file the
    /// command line or environment names, and validates the result.
    pub fn load<A, E>(args: A, env: E) -> Result<Loaded, ConfigError>
    where
        A: IntoIterator<Item = String>,
        E: IntoIterator<Item = (String, String)>,
    {
        let mut raw: BTreeMap<&'static str, (String, Source)> =
            SETTINGS.iter().map(|s| (s.name, (s.default.to_string(), Source::Default))).collect();

        // The command line is parsed first (it names the config file), but
        // applied last, so it wins over the file and the environment.
        let mut cli: Vec<(&'static str, String)> = Vec::new();
        let mut config_file: Option<String> = None;
        let mut print_config = false;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError(format!("unexpected argument `{arg}`; see --help")));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            match name {
                "help" => return Ok(Loaded::Print(help_text())),
                "print-config" => {
                    print_config = true;
                    continue;
                }
                _ => {}
            }
            let value_for = |args: &mut dyn Iterator<Item = String>| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ConfigError(format!("--{name} needs a value; see --help")))
            };
            if name == "config" {
                config_file = Some(value_for(&mut args)?);
                continue;
            }
            let Some(setting) = SETTINGS.iter().find(|s| s.name == name) else {
                return Err(ConfigError(format!("unknown option --{name}; see --help")));
            };
            let value = match (setting.kind, &inline) {
                (Kind::Flag, None) => "true".to_string(),
                _ => value_for(&mut args)?,
            };
            cli.push((setting.name, value));
        }

        let env: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with("CHATROOM_")).collect();
        if config_file.is_none() {
            config_file = env.get("CHATROOM_CONFIG").cloned();
        }
        if let Some(path) = &config_file {
            for (name, value) in read_config_file(path)? {
                raw.insert(name, (value, Source::File));
            }
        }
        for setting in SETTINGS {
            if let Some(value) = env.get(&env_name(setting.name)) {
                raw.insert(setting.name, (value.clone(), Source::Env));
            }
        }
        for (name, value) in cli {
            raw.insert(name, (value, Source::Cli));
        }

        let config = Config::from_raw(&raw)?;
        if print_config {
            return Ok(Loaded::Print(config.describe()));
        }
        Ok(Loaded::Run(Box::new(config)))
    }

    /// The defaults, as if started with no options (tests start from here).
    pub fn defaults() -> Config {
        let raw = SETTINGS.iter().map(|s| (s.name, (s.default.to_string(), Source::Default))).collect();
        match Config::from_raw(&raw) {
            Ok(c) => c,
            // The defaults are constants checked by a unit test below.
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }

    fn from_raw(raw: &BTreeMap<&'static str, (String, Source)>) -> Result<Config, ConfigError> {
        let get = |name: &'static str| -> Value<'_> {
            let (text, _) = &raw[name];
            Value { name, text: text.trim() }
        };
        let optional_text = |name| {
            let v = get(name).text;
            (!v.is_empty()).then(|| v.to_string())
        };
        let data = match get("data").text {
            "none" | "" => None,
            path => Some(PathBuf::from(path)),
        };
        let config = Config {
            bind: get("bind").addr()?,
            www: optional_text("www").map(PathBuf::from),
            data,
            max_data_size: match get("max-data-size").size(0, usize::MAX)? {
                0 => None,
                n => Some(n as u64),
            },
            history: get("history").count(0, 1000)?,
            max_rooms: get("max-rooms").count(1, 10_000_000)?,
            max_room_members: get("max-room-members").count(1, 10_000_000)?,
            max_message: get("max-message").size(125, 1 << 30)?,
            max_text: get("max-text").count(1, 1 << 20)?,
            max_pending: get("max-pending").size(4096, 1 << 34)?,
            rate_limit: get("rate-limit").count(0, 1_000_000)? as u32,
            rate_burst: get("rate-burst").count(1, 1_000_000)? as u32,
            max_posts_in_flight: get("max-posts-in-flight").count(1, 1_000_000)?,
            presence_limit: get("presence-limit").count(0, 10_000_000)?,
            header_timeout: get("header-timeout").duration()?,
            idle_timeout: get("idle-timeout").duration()?,
            ping_interval: get("ping-interval").duration()?,
            ping_timeout: get("ping-timeout").duration()?,
            max_connections: get("max-connections").count(0, 10_000_000)?,
            max_per_ip: get("max-per-ip").count(0, 10_000_000)?,
            trusted_proxy: get("trusted-proxy")
                .list()
                .into_iter()
                .map(|c| {
                    Cidr::parse(&c).ok_or_else(|| get("trusted-proxy").invalid("a CIDR such as 10.0.0.0/8 or ::1/128"))
                })
                .collect::<Result<_, _>>()?,
            allow_origin: get("allow-origin").list().into_iter().map(|o| o.to_ascii_lowercase()).collect(),
            redis: optional_text("redis"),
            redis_cluster: get("redis-cluster").list(),
            redis_buffer: get("redis-buffer").count(0, 10_000_000)?,
            redis_batch: get("redis-batch").count(1, 10_000)?,
            redis_wait: get("redis-wait").count(0, 100)?,
            redis_timeout: get("redis-timeout").duration()?,
            presence_ttl: get("presence-ttl").duration()?,
            room_grace: get("room-grace").duration()?,
            reuse_port: get("reuse-port").flag()?,
            admin_bind: match optional_text("admin-bind") {
                Some(_) => Some(get("admin-bind").addr()?),
                None => None,
            },
            tls: match (optional_text("tls-cert"), optional_text("tls-key")) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(ConfigError("--tls-cert and --tls-key go together: give both, or neither".into())),
            },
            redirect_bind: match optional_text("redirect-bind") {
                Some(_) => Some(get("redirect-bind").addr()?),
                None => None,
            },
            acme_dir: optional_text("acme-dir").map(PathBuf::from),
            hsts: get("hsts").flag()?,
            auth_secret: optional_text("auth-secret"),
            auth_secret_files: get("auth-secret-file").list(),
            auth_public_keys: get("auth-public-key").list(),
            auth_issuer: optional_text("auth-issuer"),
            auth_audience: optional_text("auth-audience"),
            private_rooms: get("private-rooms").list(),
            api_keys: get("api-key").list(),
            api_key_files: get("api-key-file").list(),
            max_body: get("max-body").size(0, 1 << 30)?,
            guests: match get("guests").text {
                "on" => Guests::On,
                "read-only" => Guests::ReadOnly,
                "off" => Guests::Off,
                _ => return Err(get("guests").invalid("on, read-only or off")),
            },
            compression: crate::deflate::Settings {
                mode: match get("compression").text {
                    "off" => crate::deflate::Mode::Off,
                    "shared" => crate::deflate::Mode::Shared,
                    "dedicated" => crate::deflate::Mode::Dedicated,
                    _ => return Err(get("compression").invalid("off, shared or dedicated")),
                },
                min: get("compression-min").size(0, 1 << 30)?,
                window_bits: get("compression-window-bits").count(9, 15)? as u8,
                mem_level: get("compression-mem-level").count(1, 9)? as u8,
                level: get("compression-level").count(1, 9)? as u8,
            },
            effective: SETTINGS.iter().map(|s| (s.name, raw[s.name].0.clone(), raw[s.name].1)).collect(),
        };
        if config.tls.is_none() && (config.redirect_bind.is_some() || config.hsts) {
            return Err(ConfigError(
                "--redirect-bind and --hsts are for TLS: give --tls-cert and --tls-key too".to_string(),
            ));
        }
        if config.acme_dir.is_some() && config.redirect_bind.is_none() {
            return Err(ConfigError(
                "--acme-dir is served on --redirect-bind (port 80, where http-01 asks): give --redirect-bind too"
                    .to_string(),
            ));
        }
        let keys = config.auth_secret.is_some() || !config.auth_secret_files.is_empty();
        if config.guests == Guests::Off && !keys && config.auth_public_keys.is_empty() {
            return Err(ConfigError(
                "--guests off admits only users with a token: give --auth-secret-file or --auth-public-key too"
                    .to_string(),
            ));
        }
        if let Some(url) = &config.redis
            && !url.starts_with("redis://")
        {
            return Err(get("redis").invalid("a URL of the form redis://HOST:PORT[/DB]"));
        }
        if config.redis.is_some() && !config.redis_cluster.is_empty() {
            return Err(ConfigError(
                "--redis and --redis-cluster exclude each other: give one Redis, or the seeds of one cluster"
                    .to_string(),
            ));
        }
        if config.redis_cluster.iter().any(|s| s.contains("://") && !s.starts_with("redis://")) {
            return Err(
                get("redis-cluster").invalid("HOST:PORT or redis://[user:pass@]HOST:PORT seeds, comma-separated")
            );
        }
        // The output cap must hold at least two of the largest messages, or an
        // echo of one maximum-size message would already count as slow.
        if config.max_pending < 2 * config.max_message {
            return Err(ConfigError(format!(
                "--max-pending ({}) must be at least twice --max-message ({}): raise --max-pending or lower --max-message",
                config.max_pending, config.max_message
            )));
        }
        if config.ping_interval.is_zero() || config.ping_timeout.is_zero() || config.header_timeout.is_zero() {
            return Err(ConfigError(
                "--header-timeout, --ping-interval and --ping-timeout must be longer than 0".to_string(),
            ));
        }
        // Zero would fail every command before Redis could answer it.
        if config.redis_timeout.is_zero() {
            return Err(ConfigError("--redis-timeout must be longer than 0".to_string()));
        }
        Ok(config)
    }

    /// The effective settings as `--print-config` shows them: a valid config file.
    pub(crate) fn describe(&self) -> String {
        let mut out = String::from("# effective chatroom settings (a valid --config file)\n");
        for (name, value, source) in &self.effective {
            let source = match source {
                Source::Default => "default",
                Source::File => "config file",
                Source::Env => "environment",
                Source::Cli => "command line",
            };
            let value = if SECRET_SETTINGS.contains(name) && !value.is_empty() { "<redacted>" } else { value };
            out.push_str(&format!("{name} = {:?}  # {source}\n", value));
        }
        out
    }
}

/// `max-message` → `CHATROOM_MAX_MESSAGE`.
fn env_name(setting: &str) -> String {
    format!("CHATROOM_{}", setting.replace('-', "_").to_ascii_uppercase())
}

/// Reads a TOML file of `setting = value` pairs, with the same names as the
/// flags (`max-message = "64KiB"`, `rate-limit = 20`, `reuse-port = true`,
/// `allow-origin = ["example.com"]`).
fn read_config_file(path: &str) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError(format!("--config {path}: cannot read it: {e}")))?;
    let table: toml::Table = text.parse().map_err(|e| ConfigError(format!("--config {path}: not valid TOML: {e}")))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(setting) = SETTINGS.iter().find(|s| s.name == key || s.name == key.replace('_', "-")) else {
            return Err(ConfigError(format!("--config {path}: unknown setting `{key}`; see --help for the names")));
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(ConfigError(format!("--config {path}: `{key}` cannot be {}", other.type_str())));
            }
        };
        out.push((setting.name, text));
    }
    Ok(out)
}

/// The text of `--help`, generated from the table so it cannot drift.
pub(crate) fn help_text() -> String {
    let mut out = String::from(
        "chatroom: a single-threaded real-time group chat server\n\n\
         Usage: chatroom [OPTIONS]\n\n\
         Every option can also be set as an environment variable (--max-message → CHATROOM_MAX_MESSAGE)\n\
         or in a TOML file given by --config (max-message = \"64KiB\"). The command line wins over the\n\
         environment, which wins over the file. Sizes take bytes or KiB/MiB/GiB; durations s or ms.\n\n\
         Options:\n",
    );
    for s in SETTINGS {
        let arg = match s.kind {
            Kind::Flag => String::new(),
            Kind::Addr => " ADDR".into(),
            Kind::Text => " VALUE".into(),
            Kind::Count => " N".into(),
            Kind::Size => " SIZE".into(),
            Kind::Duration => " TIME".into(),
            Kind::List => " A,B".into(),
        };
        let default = if s.default.is_empty() { String::new() } else { format!(" [default: {}]", s.default) };
        out.push_str(&format!("  --{}{arg}\n        {}{default}\n", s.name, s.help));
    }
    out.push_str(
        "  --config FILE\n        read settings from a TOML file\n  --print-config\n        print the effective settings and exit\n  --help\n        print this help\n\nLogging: RUST_LOG=debug chatroom\n",
    );
    out
}

/// A raw value on its way to a type; knows its setting's name for errors.
struct Value<'a> {
    name: &'static str,
    text: &'a str,
}

impl Value<'_> {
    fn invalid(&self, accepted: &str) -> ConfigError {
        ConfigError(format!("--{}: `{}` is not valid; expected {accepted}", self.name, self.text))
    }

    fn addr(&self) -> Result<SocketAddr, ConfigError> {
        self.text.parse().map_err(|_| self.invalid("an IP address and port such as 127.0.0.1:8000 or [::1]:8000"))
    }

    fn count(&self, min: usize, max: usize) -> Result<usize, ConfigError> {
        let accepted = || self.invalid(&format!("a whole number from {min} to {max}"));
        let n: usize = self.text.replace('_', "").parse().map_err(|_| accepted())?;
        if n < min || n > max {
            return Err(accepted());
        }
        Ok(n)
    }

    fn size(&self, min: usize, max: usize) -> Result<usize, ConfigError> {
        let accepted = || {
            self.invalid(&format!("a size from {min} bytes to {max} bytes, in bytes or with KiB/MiB/GiB, e.g. 64KiB"))
        };
        let n = parse_size(self.text).ok_or_else(accepted)?;
        if n < min as u64 || n > max as u64 {
            return Err(accepted());
        }
        Ok(n as usize)
    }

    fn duration(&self) -> Result<Duration, ConfigError> {
        parse_duration(self.text).ok_or_else(|| self.invalid("a duration such as 10s, 1.5s or 250ms"))
    }

    fn flag(&self) -> Result<bool, ConfigError> {
        match self.text {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err(self.invalid("true or false")),
        }
    }

    fn list(&self) -> Vec<String> {
        self.text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
    }
}

/// `65536`, `64KiB`, `64K`, `1MiB`, `1 MB` (binary multiples throughout).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// `10s`, `1.5s`, `250ms`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().ok()?;
    if !value.is_finite() || value < 0.0 || value * scale > 86_400.0 * 365.0 {
        return None;
    }
    Some(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        Config::load(args.iter().map(|s| s.to_string()), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Config {
        match load(args, env) {
            Ok(Loaded::Run(c)) => *c,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn identity_settings_parse_and_secrets_are_never_printed() {
        let c = run(
            &["--auth-secret", "s3cret-value", "--auth-public-key", "k1=/a.pem, /b.pem", "--guests", "read-only"],
            &[("CHATROOM_AUTH_ISSUER", "https://site.example")],
        );
        assert_eq!(c.auth_secret.as_deref(), Some("s3cret-value"));
        assert_eq!(c.auth_public_keys, vec!["k1=/a.pem", "/b.pem"]);
        assert_eq!(
            (c.auth_issuer.as_deref(), c.auth_audience, c.guests),
            (Some("https://site.example"), None, Guests::ReadOnly)
        );
        assert_eq!(Config::defaults().guests, Guests::On);
        let args = ["--auth-secret", "s3cret-value", "--api-key", "k3y-value-0123456789", "--print-config"];
        let Ok(Loaded::Print(text)) = load(&args, &[]) else { panic!("print-config prints") };
        assert!(text.contains("auth-secret = \"<redacted>\"") && !text.contains("s3cret"), "{text}");
        assert!(text.contains("api-key = \"<redacted>\"") && !text.contains("k3y"), "{text}");
        let off = load(&["--guests", "off"], &[]).unwrap_err().to_string();
        assert!(off.contains("--guests off admits only users with a token"), "{off}");
        assert!(load(&["--guests", "maybe"], &[]).is_err());
        assert_eq!(run(&["--guests", "off", "--auth-secret-file", "/s"], &[]).guests, Guests::Off);
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.bind, "127.0.0.1:8000".parse().unwrap());
        assert_eq!(c.max_message, 64 * 1024);
        assert_eq!(c.history, 50);
        assert_eq!(c.data, Some(PathBuf::from("./data/chatroom.db")));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("16M"), Some(16 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("12XB"), None);
        assert_eq!(parse_size("KiB"), None);
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("soon"), None);
    }

    #[test]
    fn command_line_beats_environment() {
        let c = run(
            &["--max-message", "1MiB", "--max-pending=4MiB"],
            &[("CHATROOM_MAX_MESSAGE", "2MiB"), ("CHATROOM_HISTORY", "7")],
        );
        assert_eq!(c.max_message, 1 << 20);
        assert_eq!(c.max_pending, 4 << 20);
        assert_eq!(c.history, 7);
    }

    #[test]
    fn flags_and_lists() {
        let c = run(&["--reuse-port", "--allow-origin", "Example.com, chat.example.org:8443", "--data", "none"], &[]);
        assert!(c.reuse_port);
        assert_eq!(c.allow_origin, vec!["example.com", "chat.example.org:8443"]);
        assert_eq!(c.data, None);
    }

    #[test]
    fn errors_name_the_setting_and_the_accepted_values() {
        let e = load(&["--max-message", "12XB"], &[]).unwrap_err();
        assert!(e.0.starts_with("--max-message: `12XB` is not valid; expected a size"), "{e}");
        let e = load(&["--bind", "nowhere"], &[]).unwrap_err();
        assert!(e.0.contains("--bind") && e.0.contains("127.0.0.1:8000"), "{e}");
        let e = load(&["--frobnicate"], &[]).unwrap_err();
        assert!(e.0.contains("unknown option --frobnicate"), "{e}");
        let e = load(&[], &[("CHATROOM_RATE_LIMIT", "fast")]).unwrap_err();
        assert!(e.0.contains("--rate-limit") && e.0.contains("whole number"), "{e}");
        let e = load(&["--max-message", "1MiB", "--max-pending", "1MiB"], &[]).unwrap_err();
        assert!(e.0.contains("--max-pending"), "{e}");
        let e = load(&["--history"], &[]).unwrap_err();
        assert!(e.0.contains("--history needs a value"), "{e}");
    }

    #[test]
    fn config_file_and_print_config() {
        let path = std::env::temp_dir().join(format!("chatroom-config-test-{}.toml", std::process::id()));
        std::fs::write(&path, "max-message = \"128KiB\"\nrate_limit = 5\nallow-origin = [\"a.example\"]\n").unwrap();
        let p = path.to_str().unwrap();
        let c = run(&["--config", p], &[("CHATROOM_RATE_LIMIT", "6")]);
        assert_eq!(c.max_message, 128 << 10);
        assert_eq!(c.rate_limit, 6, "the environment beats the file");
        assert_eq!(c.allow_origin, vec!["a.example"]);
        match load(&["--config", p, "--print-config"], &[]).unwrap() {
            Loaded::Print(text) => {
                assert!(text.contains("max-message = \"128KiB\"  # config file"), "{text}");
                assert!(text.contains("history = \"50\"  # default"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "max_mesage = 1\n").unwrap();
        let e = load(&["--config", p], &[]).unwrap_err();
        assert!(e.0.contains("unknown setting `max_mesage`"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn redis_cluster_from_every_source_and_never_with_redis() {
        assert!(Config::defaults().redis_cluster.is_empty());
        let seeds = vec!["127.0.0.1:7000".to_string(), "redis://u:p@127.0.0.1:7001".to_string()];
        let cli = run(&["--redis-cluster", "127.0.0.1:7000, redis://u:p@127.0.0.1:7001"], &[]);
        assert_eq!(cli.redis_cluster, seeds);
        let env = run(&[], &[("CHATROOM_REDIS_CLUSTER", "127.0.0.1:7000,redis://u:p@127.0.0.1:7001")]);
        assert_eq!(env.redis_cluster, seeds);
        let path = std::env::temp_dir().join(format!("chatroom-redis-cluster-{}.toml", std::process::id()));
        std::fs::write(&path, "redis-cluster = \"127.0.0.1:7000,redis://u:p@127.0.0.1:7001\"\n").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(run(&["--config", p], &[]).redis_cluster, seeds);
        match load(&["--config", p, "--print-config"], &[]).unwrap() {
            Loaded::Print(text) => assert!(
                text.contains("redis-cluster = \"127.0.0.1:7000,redis://u:p@127.0.0.1:7001\"  # config file"),
                "{text}"
            ),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_file(&path);
        let e = load(&["--redis", "redis://127.0.0.1:6379", "--redis-cluster", "127.0.0.1:7000"], &[]).unwrap_err();
        assert!(e.0.contains("--redis and --redis-cluster exclude each other"), "{e}");
        let e = load(&["--redis-cluster", "rediss://127.0.0.1:7000"], &[]).unwrap_err();
        assert!(e.0.starts_with("--redis-cluster: `rediss://127.0.0.1:7000` is not valid"), "{e}");
        assert!(help_text().contains("--redis-cluster"));
    }

    #[test]
    fn redis_timeout_from_every_source() {
        assert_eq!(Config::defaults().redis_timeout, Duration::from_secs(5));
        assert_eq!(run(&["--redis-timeout", "500ms"], &[]).redis_timeout, Duration::from_millis(500));
        assert_eq!(run(&[], &[("CHATROOM_REDIS_TIMEOUT", "1.5s")]).redis_timeout, Duration::from_millis(1500));
        let path = std::env::temp_dir().join(format!("chatroom-redis-timeout-{}.toml", std::process::id()));
        std::fs::write(&path, "redis-timeout = \"2s\"\n").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(run(&["--config", p], &[]).redis_timeout, Duration::from_secs(2));
        match load(&["--config", p, "--print-config"], &[]).unwrap() {
            Loaded::Print(text) => assert!(text.contains("redis-timeout = \"2s\"  # config file"), "{text}"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
        let e = load(&["--redis-timeout", "soon"], &[]).unwrap_err();
        assert!(e.0.starts_with("--redis-timeout: `soon` is not valid; expected a duration"), "{e}");
        let e = load(&["--redis-timeout", "0s"], &[]).unwrap_err();
        assert!(e.0.contains("--redis-timeout must be longer than 0"), "{e}");
        assert!(help_text().contains("--redis-timeout TIME"));
    }

    #[test]
    fn cidr_matching() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
    }
}
