//! The Redis URL: where Redis is, and how to log in.
//!
//! `redis://[:password@ | user:password@]HOST[:PORT][/DB]`, as redis-cli and
//! the `redis` crate spell it. The host is resolved once, at startup: the
//! reactor must never wait for DNS, and every reconnect later goes to the
//! address found here. Characters that mean something in a URL (`@`, `/`,
//! `:`, `%`) are written percent-encoded in the user name and password.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// The port Redis listens on when the URL names none.
const DEFAULT_PORT: u16 = 6379;

/// A parsed Redis URL: `redis://[:password@ | user:password@]HOST:PORT[/DB]`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The address the host resolved to at startup.
    pub addr: SocketAddr,
    /// The ACL user (Redis 6+), sent as `AUTH user password`.
    pub username: Option<String>,
    /// The password, sent as `AUTH password` (or with the user).
    pub password: Option<String>,
    /// The database number, sent as `SELECT db` when not 0.
    pub db: u32,
}

/// Shows the URL without its password, so it can be logged.
impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisUrl")
            .field("addr", &self.addr)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .finish()
    }
}

/// `redis://addr/db`, the password left out, for log lines.
impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}/{}", self.addr, self.db)
    }
}

impl RedisUrl {
    /// Parses `url` and resolves its host (with `ToSocketAddrs`, once: this
    /// may block on DNS, so call it at startup, never from the loop). The
    /// error says what is wrong in words an operator can act on.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let rest = match url.split_once("://") {
            Some(("redis", rest)) => rest,
            Some(("rediss", _)) => return Err(format!("{url:?}: rediss:// (TLS) is not supported; use redis://")),
            Some((scheme, _)) => return Err(format!("{url:?}: unsupported scheme {scheme:?}; expected redis://")),
            None => return Err(format!("{url:?}: expected redis://HOST[:PORT][/DB]")),
        };
        if rest.contains(['?', '#']) {
            return Err(format!("{url:?}: query parameters are not supported; put the database in the path (/2)"));
        }
        // The user info ends at the last '@' (passwords should encode theirs,
        // but this way an unencoded '@' still works).
        let (userinfo, hostpath) = match rest.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, rest),
        };
        let (hostport, path) = hostpath.split_once('/').unwrap_or((hostpath, ""));
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let Some((user, pass)) = info.split_once(':') else {
                    return Err(format!("{url:?}: expected :password@ or user:password@ before the host"));
                };
                let user = percent_decode(user).map_err(|e| format!("{url:?}: user name: {e}"))?;
                let pass = percent_decode(pass).map_err(|e| format!("{url:?}: password: {e}"))?;
                ((!user.is_empty()).then_some(user), Some(pass))
            }
        };
        let (host, port) = split_host_port(hostport).map_err(|e| format!("{url:?}: {e}"))?;
        let db = match path {
            "" => 0,
            p => p.parse::<u32>().map_err(|_| format!("{url:?}: the database must be a number, as in /2"))?,
        };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{url:?}: cannot resolve {host:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url:?}: {host:?} resolved to no address"))?;
        Ok(RedisUrl { addr, username, password, db })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(hostport: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("an IPv6 address needs its closing ']'")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("expected :PORT after the IPv6 address")?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("invalid port {p:?}"))?,
    };
    Ok((host, port))
}

/// Decodes `%XX` escapes (RFC 3986 §2.1); the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = [bytes.next(), bytes.next()];
        let value = match hex {
            [Some(hi), Some(lo)] => std::str::from_utf8(&[hi, lo]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        out.push(value.ok_or("a '%' must be followed by two hex digits")?);
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn forms_that_parse() {
        let u = RedisUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!((u.addr, u.username, u.password, u.db), ("127.0.0.1:6379".parse().unwrap(), None, None, 0));

        let u = RedisUrl::parse("redis://:s3cret@127.0.0.1:7000/2").unwrap();
        assert_eq!(u.addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!((u.username, u.password.as_deref(), u.db), (None, Some("s3cret"), 2));

        let u = RedisUrl::parse("redis://chat:p%40ss%2Fw@localhost:6380/").unwrap();
        assert_eq!(u.username.as_deref(), Some("chat"));
        assert_eq!(u.password.as_deref(), Some("p@ss/w"));
        assert_eq!((u.addr.port(), u.db), (6380, 0));
        assert!(u.addr.ip().is_loopback());

        let u = RedisUrl::parse("redis://[::1]:6381/15").unwrap();
        assert_eq!((u.addr, u.db), ("[::1]:6381".parse().unwrap(), 15));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("127.0.0.1:6379", "expected redis://"),
            ("http://127.0.0.1", "unsupported scheme"),
            ("rediss://127.0.0.1", "TLS"),
            ("redis://127.0.0.1:notaport", "invalid port"),
            ("redis://127.0.0.1:0", "invalid port"),
            ("redis://127.0.0.1/two", "database must be a number"),
            ("redis://pass@127.0.0.1", ":password@"),
            ("redis://:%zz@127.0.0.1", "two hex digits"),
            ("redis://:/x", "host is missing"),
            ("redis://[::1", "closing ']'"),
            ("redis://127.0.0.1?db=2", "query parameters"),
            ("redis://no-such-host.invalid", "cannot resolve"),
        ];
        for (url, want) in cases {
            let err = RedisUrl::parse(url).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
        }
    }

    #[test]
    fn the_password_never_shows() {
        let u = RedisUrl::parse("redis://:hunter2@127.0.0.1/3").unwrap();
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(u.to_string(), "redis://127.0.0.1:6379/3");
    }
}
