//! permessage-deflate on the load generator's side (`--deflate`): it offers
//! the extension as a browser does, and inflates what arrives compressed.
//!
//! tungstenite refuses frames with RSV1 set, so, as in the server, a filter
//! (`chatroom::deflate::inflate::Inbound`, in its client role) stands
//! between the socket and tungstenite: plain frames go on to tungstenite,
//! compressed messages are taken out and inflated. Order matters to the
//! run's checks, so the filter stops at each inflated message until the
//! caller has handled it, and only then goes on with the bytes behind it.

use std::io::{self, Read};

use chatroom::deflate::InflateStream;
use chatroom::deflate::inflate::{Inbound, Piece};
use tungstenite::Message;

/// What Chromium offers.
pub const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The largest message the load generator inflates (the server's default `--max-message` is far below).
const MAX_MESSAGE: usize = 64 << 20;

/// A connection's inbound deflate state, kept between reads.
pub struct Deflating {
    inbound: Inbound,
    /// Bytes read from the socket, run through the filter up to
    /// `carry_at` (the rest came behind an inflated message the caller
    /// has not taken yet).
    carry: Vec<u8>,
    carry_at: usize,
    carry_len: usize,
    /// Plain frame bytes for tungstenite, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// An inflated message waiting for the caller.
    pub message: Option<Message>,
}

impl Deflating {
    /// The state for a connection whose server took the extension; with
    /// `context`, it compresses each message after the ones before it
    /// (no `server_no_context_takeover` in its answer), so one inflate
    /// stream serves the whole connection.
    pub fn new(context: bool) -> Deflating {
        let stream = context.then(|| InflateStream::new(15));
        Deflating {
            inbound: Inbound::for_client(MAX_MESSAGE, stream),
            carry: Vec::new(),
            carry_at: 0,
            carry_len: 0,
            plain: Vec::new(),
            plain_at: 0,
            message: None,
        }
    }

    /// Bytes that came with the `101`, to go through the filter first.
    pub fn carry_first(&mut self, bytes: Vec<u8>) {
        self.carry_len = bytes.len();
        self.carry_at = 0;
        self.carry = bytes;
    }

    /// tungstenite's read: plain frame bytes, read from `socket` through the
    /// filter. `WouldBlock` when the socket has no more, or when an
    /// inflated message waits in `message` (take it, then read again).
    /// Plain bytes go straight into `buf` where they fit (the common case:
    /// nothing compressed), so the filter costs little more than a copy.
    pub fn read_through(&mut self, socket: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(pending) = self.plain.get(self.plain_at..).filter(|p| !p.is_empty()) {
                let n = pending.len().min(buf.len());
                buf.get_mut(..n).unwrap_or_default().copy_from_slice(pending.get(..n).unwrap_or_default());
                self.plain_at += n;
                return Ok(n);
            }
            self.plain.clear();
            self.plain_at = 0;
            if self.message.is_some() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.carry_at == self.carry_len {
                if self.carry.len() < READ_CHUNK {
                    self.carry.resize(READ_CHUNK, 0);
                }
                self.carry_at = 0;
                self.carry_len = 0;
                let n = socket.read(&mut self.carry)?;
                if n == 0 {
                    // The end of the stream, for tungstenite to see.
                    return Ok(0);
                }
                self.carry_len = n;
            }
            let mut input = self.carry.get(self.carry_at..self.carry_len).unwrap_or_default();
            let mut written = 0;
            loop {
                let bytes = match self.inbound.next(&mut input) {
                    Piece::Plain(bytes) => bytes,
                    Piece::Head(head, len) => {
                        self.plain.extend_from_slice(head.get(..len).unwrap_or_default());
                        continue;
                    }
                    Piece::Message(message) => {
                        self.message = Some(message);
                        break;
                    }
                    Piece::Wait => break,
                    Piece::Fail((code, why)) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("deflate: {why} ({code})")));
                    }
                };
                match buf.get_mut(written..written + bytes.len()) {
                    Some(room) if self.plain.is_empty() => {
                        room.copy_from_slice(bytes);
                        written += bytes.len();
                    }
                    _ => self.plain.extend_from_slice(bytes),
                }
            }
            self.carry_at = self.carry_len - input.len();
            if written > 0 {
                return Ok(written);
            }
        }
    }
}
