//! Operating-system limits: file descriptors and the listening socket.
//!
//! Each connection costs one file descriptor. The default soft limit on
//! Linux is often 1,024, far below what one reactor can serve, so at startup
//! we raise the soft limit to the hard one (no privilege needed) and size
//! `--max-connections` from it, keeping some descriptors back for the
//! listener, the storage file, Redis and the poll itself. Past that number a
//! client gets a 503 instead of an accept failure.

use std::io;
use std::net::SocketAddr;

use log::{info, warn};
use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

/// Descriptors kept back from `--max-connections` for everything that is
/// not a client: listeners, epoll, the waker, SQLite and its WAL, Redis,
/// signals, stdio, and a few spare for accept to refuse with a 503.
const RESERVED_FDS: u64 = 64;

/// Backlog of not-yet-accepted connections: large, because a load test
/// opens thousands of connections at once and the kernel caps it anyway
/// (net.core.somaxconn).
const BACKLOG: i32 = 4096;

/// Raises the soft descriptor limit to the hard limit, and returns
/// `requested` if set, else the number of connections the limit allows.
pub fn size_connections(requested: usize) -> usize {
    let limit = raise_fd_limit();
    let allowed = limit.saturating_sub(RESERVED_FDS).max(16) as usize;
    if requested == 0 {
        info!("file-descriptor limit {limit}: up to {allowed} connections");
        allowed
    } else {
        if requested > allowed {
            warn!("--max-connections {requested} exceeds what the descriptor limit ({limit}) allows ({allowed})");
        }
        requested
    }
}

/// Sets RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now in force.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass, nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

/// A non-blocking listening socket on `addr`, with SO_REUSEADDR (restart
/// without waiting out TIME_WAIT) and, if asked, SO_REUSEPORT (several
/// processes share the port and the kernel spreads connections over them).
pub fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Open connections per client address, for `--max-per-ip` (0 = off).
#[derive(Debug, Default)]
pub struct PerIp {
    max: usize,
    open: std::collections::HashMap<std::net::IpAddr, usize>,
}

impl PerIp {
    /// A counter admitting at most `max` connections per address (0 = any).
    pub fn new(max: usize) -> PerIp {
        PerIp { max, open: std::collections::HashMap::new() }
    }

    /// Counts a connection from `ip` if the limit allows; false if not.
    pub fn admit(&mut self, ip: std::net::IpAddr) -> bool {
        if self.max == 0 {
            return true;
        }
        let n = self.open.entry(ip).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Forgets one connection from `ip`.
    pub fn release(&mut self, ip: std::net::IpAddr) {
        if self.max == 0 {
            return;
        }
        if let Some(n) = self.open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&ip);
            }
        }
    }
}

/// The client address a trusted proxy reports: X-Forwarded-For read from
/// the right, skipping our own proxies; the first address that is not one of
/// them is the client (entries further left could be forged by the client).
pub fn forwarded_client(head: &crate::http::Head, trusted: &[crate::config::Cidr]) -> Option<std::net::IpAddr> {
    let xff = head.header_str("x-forwarded-for")?;
    let mut last = None;
    for entry in xff.rsplit(',') {
        let ip: std::net::IpAddr = entry.trim().parse().ok()?;
        last = Some(ip);
        if !trusted.iter().any(|net| net.contains(ip)) {
            return Some(ip);
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    #[test]
    fn per_ip_counts() {
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let mut p = PerIp::new(2);
        assert!(p.admit(ip) && p.admit(ip));
        assert!(!p.admit(ip));
        p.release(ip);
        assert!(p.admit(ip));
        assert!(PerIp::new(0).admit(ip));
    }

    #[test]
    fn forwarded_for_skips_trusted_proxies() {
        let head =
            crate::http::parse_head(b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4, 203.0.113.9, 10.0.0.2\r\n\r\n")
                .unwrap()
                .unwrap();
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        assert_eq!(forwarded_client(&head, &trusted), Some("203.0.113.9".parse().unwrap()));
    }
}
