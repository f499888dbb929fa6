//! New connections: accept until WouldBlock, admit or refuse politely.
//!
//! A refusal (connection limit, `--max-per-ip`) is a short 503 written once,
//! best effort, without giving the client a slot. Running out of
//! descriptors (EMFILE) is survived: accept pauses and retries after a
//! close or `ACCEPT_RETRY`, never in a busy loop.

use std::io;
use std::net::SocketAddr;

use log::{debug, error, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::Server;
use crate::conn::{Connection, Door};
use crate::timer::{Timer, TimerKind};

impl Server {
    /// Accepts every queued connection (edge-triggered: until WouldBlock).
    pub(super) fn accept_all(&mut self, door: Door) {
        loop {
            let listener = match door {
                Door::Main => self.listener.as_ref(),
                Door::Admin => self.admin_listener.as_ref(),
                Door::Redirect => self.redirect_listener.as_ref(),
            };
            let Some(listener) = listener else { return };
            match listener.accept() {
                Ok((socket, addr)) => self.on_accept(socket, addr, door),
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
    pub(super) fn on_accept(&mut self, mut socket: TcpStream, addr: SocketAddr, door: Door) {
        // The main listener speaks TLS when it is on; the admin and
        // redirect listeners never do.
        let tls = match (&self.tls, door) {
            (Some(certificates), Door::Main) => match certificates.session() {
                Ok(session) => Some(session),
                Err(e) => {
                    warn!("TLS session for {addr}: {e}");
                    return;
                }
            },
            _ => None,
        };
        // A refusal is a plain-text 503, which a TLS client could not
        // read: it gets the closed connection alone.
        let plain = tls.is_none();
        if self.conns.len() >= self.cfg.max_connections {
            self.metrics.refused += 1;
            if plain {
                refuse_at_accept(&mut socket, "the server is at its connection limit; try again shortly");
            }
            return;
        }
        // Behind a trusted proxy the real client is only known from
        // X-Forwarded-For, after the head: `on_client_address` checks then.
        let behind_proxy = self.cfg.trusted_proxy.iter().any(|net| net.contains(addr.ip()));
        if !behind_proxy && !self.per_ip.admit(addr.ip()) {
            self.metrics.refused += 1;
            if plain {
                refuse_at_accept(&mut socket, "too many connections from your address");
            }
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
        entry.insert(Connection::new(socket, serial, (addr.ip(), !behind_proxy), door, tls, self.now));
        self.metrics.accepted += 1;
        debug!("open #{serial} from {addr}");
        self.timers.arm(Timer { at: self.now + self.cfg.header_timeout, key, serial, kind: TimerKind::Http });
    }
}

/// Answers a connection we will not serve with 503 and closes it, without
/// giving it a slot: one best-effort write of a short response.
fn refuse_at_accept(socket: &mut TcpStream, why: &str) {
    use std::io::Write;
    let response = crate::response::closing_text(503, "Retry-After: 1\r\n", why);
    let _ = socket.write(response.as_bytes());
    let _ = socket.shutdown(std::net::Shutdown::Write);
}

/// Whether an accept error means "out of descriptors or memory".
fn is_out_of_resources(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}
