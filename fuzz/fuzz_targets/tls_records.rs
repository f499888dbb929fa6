//! Fuzz target: what a client sends to a TLS port, through
//! `tls::TlsSession` (rustls's unbuffered server state machine over our
//! buffers), cut into reads whose sizes come from the first byte.
//!
//! Whatever the bytes and however TCP cuts them, the session must not
//! panic, every read must end in plaintext that fits the caller's buffer,
//! a wait, an EOF or an error, each read must use input (no loop), and what
//! it writes back (its handshake, the plain-HTTP answer) stays small.
#![no_main]

use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};

use chatroom::tls::session::{Received, TlsSession, Wire};
use libfuzzer_sys::fuzz_target;
use rustls::ServerConfig;

/// A throwaway self-signed ECDSA P-256 certificate for localhost.
const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBfzCCASWgAwIBAgIUJ093Snl3dMOfGMYsHjJgZKg4hXQwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNDAzMTYyOFoYDzIxMjYxMTEw
MDMxNjI4WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAASwP65NRmnJgKQ07KOxGb0iyJW9AmKNVzeQWsP4olPBcOmLjI4U7oB4
OMyEXS0bnolQSnNiRftK+Rg3oEIGZUOUo1MwUTAdBgNVHQ4EFgQUpKlUBGHeKQDU
rj5+KWqUlxZtnRgwHwYDVR0jBBgwFoAUpKlUBGHeKQDUrj5+KWqUlxZtnRgwDwYD
VR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiAhiiZakqxleT6bZL7/knPA
CRPaVVfd+irCBfE2Iiu8vQIhAMuJ9wfaB9SWY4BEIK4ACwS9ZVVdB8IyRbFWxC9B
YnCY
-----END CERTIFICATE-----
";
const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgH7LmD4LI4evEEZNs
OAKyboP+jY6LF3nEzjgLIobWIuGhRANCAASwP65NRmnJgKQ07KOxGb0iyJW9AmKN
VzeQWsP4olPBcOmLjI4U7oB4OMyEXS0bnolQSnNiRftK+Rg3oEIGZUOU
-----END PRIVATE KEY-----
";

/// The client's side of a socket, in memory: reads hand out the input in
/// pieces of `step`, then WouldBlock (the client waits); writes are counted.
struct Memory {
    input: Vec<u8>,
    at: usize,
    step: usize,
    written: usize,
}

impl Read for Memory {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.input.len() - self.at;
        if left == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = left.min(self.step).min(buf.len());
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire for Memory {
    fn shut_write(&mut self) {}
}

fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| chatroom::tls::config_from_pem(CERT.as_bytes(), KEY.as_bytes()).unwrap()).clone()
}

fuzz_target!(|data: &[u8]| {
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut session = TlsSession::new(config()).unwrap();
    let mut wire = Memory { input: data.to_vec(), at: 0, step, written: 0 };
    let mut plain = vec![0u8; 64 * 1024];
    // Each call reads at least one piece or ends: the input bounds the calls.
    for _ in 0..data.len() + 2 {
        let before = wire.at;
        let received = session.receive(&mut wire, &mut plain);
        assert!(wire.at > before || wire.at == wire.input.len(), "a read that used nothing");
        match received {
            Received::Data(n) => assert!(n > 0 && n <= plain.len()),
            // A short read counts as drained, as on a real socket, where
            // the rest raises the next readable event: that is this loop.
            Received::Drained if wire.at < wire.input.len() => {}
            Received::Drained | Received::Eof | Received::Gone(_) => break,
        }
    }
    // A server flight (certificate, signature) is a few KiB, whatever the client sent.
    assert!(wire.written <= 16 * 1024, "wrote {} bytes", wire.written);
});
