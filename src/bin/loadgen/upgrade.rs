//! The client side of the WebSocket opening handshake (RFC 6455 §4.1), done by hand over a
//! non-blocking socket: tungstenite's own client handshake wants a blocking stream, and
//! this one is a few dozen lines.

use std::io::{Read, Write};

use tungstenite::handshake::derive_accept_key;

use crate::net::{Ending, failed, interrupted, io_failure, would_block};

/// Cap on an HTTP response head; a server that sends more is not answering an upgrade.
const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// The HTTP/1.1 upgrade, done by hand (RFC 6455 §4.1): tungstenite's own client handshake
/// wants a blocking stream, and this one is a few dozen lines.
pub struct Upgrade {
    key: String,
    request: Vec<u8>,
    written: usize,
    head: Vec<u8>,
}

/// What the `101` said.
pub struct Opened {
    /// Whatever the server sent after the head (already frames).
    pub leftover: Vec<u8>,
    /// The server took permessage-deflate: `Some(true)` if it keeps
    /// context between messages (no `server_no_context_takeover`).
    pub deflate: Option<bool>,
}

impl Upgrade {
    /// The request for `path` on `host`, with a fresh key, ready to be
    /// written; offering permessage-deflate if `deflate`.
    pub fn new(host: &str, path: &str, deflate: bool) -> Self {
        // "a nonce consisting of a randomly selected 16-byte value that has been
        // base64-encoded" (RFC 6455 §4.1)
        let key = tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            if deflate { crate::deflate::OFFER } else { "" }
        )
        .into_bytes();
        Upgrade { key, request, written: 0, head: Vec::new() }
    }

    /// Moves the upgrade on as far as the socket allows. `Ok(Some(_))` when the `101`
    /// arrived.
    pub fn advance(&mut self, stream: &mut crate::tls::Socket) -> Result<Option<Opened>, Ending> {
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
                        let deflate = self.check_response()?;
                        return Ok(Some(Opened { leftover, deflate }));
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
    /// Whether the server took permessage-deflate (RFC 7692 §5), and if so
    /// whether it keeps context between messages.
    fn check_response(&self) -> Result<Option<bool>, Ending> {
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
        let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(':')).collect();
        let header = |wanted: &str| {
            headers.iter().find(|(name, _)| name.trim().eq_ignore_ascii_case(wanted)).map(|(_, value)| value.trim())
        };
        if header("sec-websocket-accept") != Some(expected.as_str()) {
            return Err(failed("bad or missing Sec-WebSocket-Accept in the 101 response", false));
        }
        Ok(header("sec-websocket-extensions")
            .filter(|e| e.starts_with("permessage-deflate"))
            .map(|e| !e.contains("server_no_context_takeover")))
    }
}

/// Index just past the blank line that ends an HTTP head, if it arrived.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}
