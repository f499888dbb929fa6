//! One WebSocket session: tungstenite's protocol state over our own buffers.
//!
//! tungstenite's [`WebSocketContext`] holds the protocol state (partial
//! frames, fragmented messages, the close handshake) but not the socket: each
//! call borrows a `Read + Write` stream. We hand it a `Pipe`: its `read`
//! side returns the bytes the reactor just read from the socket and then
//! `WouldBlock`; its `write` side appends to the connection's
//! [`OutQueue`] and never blocks. So tungstenite decodes, unmasks,
//! reassembles, validates UTF-8 and answers pings and closes, while the
//! reactor alone touches the socket, once per turn.
//!
//! Data frames we send (echo replies, room broadcasts) do not go through
//! tungstenite's `write`, which would copy each frame into its own buffer:
//! they are encoded by [`crate::frame`] and pushed onto the same queue, so
//! control frames and data frames stay in one order.
//!
//! A session that negotiated permessage-deflate puts one more step in
//! front of tungstenite: [`crate::deflate::inflate`] takes compressed
//! messages out of the byte stream and inflates them, and passes the rest
//! on, frame by frame.

use std::io::{self, Read, Write};

use tungstenite::Message;
use tungstenite::error::{CapacityError, Error, ProtocolError};
use tungstenite::protocol::frame::coding::{CloseCode, Control, OpCode};
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};

use crate::deflate::inflate::Piece;
use crate::deflate::{self, Agreed, Extension};
use crate::frame;
use crate::outbuf::OutQueue;

/// tungstenite's read buffer per connection, allocated up front: none.
///
/// tungstenite allocates `read_buffer_size` bytes eagerly for every session
/// and keeps them for the session's life, which would make it the largest
/// part of an idle WebSocket (10,000 idle sockets × 128 KiB by default is
/// 1.25 GiB). With 0 it allocates nothing until a frame arrives, then
/// reserves exactly the frame's length. The price: it copies from our
/// [`Pipe`] in 14-byte steps (its minimum read), a few extra calls to a
/// memcpy per frame. The socket is still read in 64 KiB gulps by the
/// reactor, so no syscall is added.
const READ_BUFFER: usize = 0;

/// The state of the closing handshake, as far as we are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Open: messages flow both ways.
    No,
    /// We sent a close frame and wait for the client's (§5.5.1).
    Sent,
    /// The handshake is complete, or the peer is gone: drop the socket
    /// once the output has been flushed.
    Done,
    /// The client broke the protocol; we sent a close frame with the reason
    /// and ignore everything it sends from now on.
    Failed,
}

/// A stream for tungstenite: reads come from a slice, writes go to the queue.
struct Pipe<'a> {
    input: &'a [u8],
    eof: bool,
    out: &'a mut OutQueue,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            // Ok(0) tells tungstenite the peer closed the TCP stream; otherwise
            // WouldBlock says "that is all for now", as a non-blocking socket would.
            return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(self.input.len());
        let (now, later) = self.input.split_at(n);
        if let Some(dest) = buf.get_mut(..n) {
            dest.copy_from_slice(now);
        }
        self.input = later;
        Ok(n)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A WebSocket session.
pub struct Session {
    ctx: WebSocketContext,
    closing: Closing,
    /// permessage-deflate's parameters, if the handshake agreed it.
    agreed: Option<Agreed>,
    /// Its state, while there is any: for the connection's life with
    /// context takeover, else only while a frame is half-read (so an idle
    /// connection in `shared` mode holds nothing but `agreed`).
    extension: Option<Box<Extension>>,
    /// `--max-message`, for the inflated size.
    max_message: usize,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("closing", &self.closing).finish()
    }
}

impl Session {
    /// A server-side session that accepts messages up to `max_message`
    /// bytes (inflated, with `extension`).
    pub fn new(max_message: usize, extension: Option<Extension>) -> Session {
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = READ_BUFFER;
        // We never let tungstenite buffer output: every frame it writes goes
        // straight into our queue (which never blocks), so 0 is right here,
        // and the cap only has to exceed it.
        config.write_buffer_size = 0;
        config.max_write_buffer_size = 64 * 1024;
        config.max_message_size = Some(max_message);
        config.max_frame_size = Some(max_message);
        Session {
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            closing: Closing::No,
            agreed: extension.as_ref().map(|e| e.agreed),
            extension: extension.filter(|e| !e.is_idle()).map(Box::new),
            max_message,
        }
    }

    /// permessage-deflate's parameters, if the handshake agreed it.
    pub fn agreed(&self) -> Option<Agreed> {
        self.agreed
    }

    /// Where the closing handshake stands.
    pub fn closing(&self) -> Closing {
        self.closing
    }

    /// Feeds bytes read from the socket (or the end of the stream, `eof`)
    /// through the protocol. Complete messages are pushed onto `messages`,
    /// `max` of them at most; pongs and close replies are queued on `out`
    /// by tungstenite. Returns how many bytes of `input` were taken: at
    /// `max` messages the rest is left undecoded, for the caller to keep
    /// and feed again later (a 64 KiB read can hold hundreds of posts).
    pub fn feed(
        &mut self,
        input: &[u8],
        eof: bool,
        out: &mut OutQueue,
        messages: &mut Vec<Message>,
        max: usize,
    ) -> usize {
        if matches!(self.closing, Closing::Done | Closing::Failed) {
            // After a protocol error the stream is out of step: nothing more
            // can be trusted as a frame. Discard until the peer closes.
            if eof {
                self.closing = Closing::Done;
            }
            return input.len();
        }
        let Some(agreed) = self.agreed else {
            return self.decode(input, eof, out, messages, max);
        };
        if self.extension.is_none() {
            // Without context takeover the state is made for this input
            // (no settings needed: there is no compressor to make).
            let settings = deflate::Settings::default();
            self.extension = Some(Box::new(Extension::new(agreed, &settings, self.max_message)));
        }
        // Through the deflate filter: a piece is at most one frame, so
        // tungstenite makes at most one message of each, and the cap is
        // kept to the message.
        let start = messages.len();
        let mut rest = input;
        while messages.len() - start < max || (eof && rest.is_empty()) {
            let Some(extension) = self.extension.as_deref_mut() else { break };
            match extension.inbound.next(&mut rest) {
                Piece::Plain(bytes) => {
                    self.decode(bytes, false, out, messages, usize::MAX);
                }
                Piece::Head(bytes, len) => {
                    self.decode(bytes.get(..len).unwrap_or_default(), false, out, messages, usize::MAX);
                }
                Piece::Message(message) => messages.push(message),
                Piece::Wait => {
                    if eof {
                        // tungstenite must hear the end of the stream.
                        self.decode(&[], true, out, messages, usize::MAX);
                    }
                    break;
                }
                Piece::Fail((code, reason)) => {
                    self.fail(code, reason, out);
                    return input.len();
                }
            }
            if matches!(self.closing, Closing::Done | Closing::Failed) {
                return input.len();
            }
        }
        if self.extension.as_deref().is_some_and(Extension::is_idle) {
            self.extension = None;
        }
        input.len() - rest.len()
    }

    /// tungstenite's part of [`Session::feed`]: decodes frames from
    /// `input`, `max` messages at most.
    fn decode(
        &mut self,
        input: &[u8],
        eof: bool,
        out: &mut OutQueue,
        messages: &mut Vec<Message>,
        max: usize,
    ) -> usize {
        let mut pipe = Pipe { input, eof, out };
        let mut taken = 0;
        loop {
            if taken >= max && !(eof && pipe.input.is_empty()) {
                // Not one frame more: what is left waits, undecoded. (At the
                // end of the stream with nothing left to feed, tungstenite
                // still has to hear that end.)
                break;
            }
            match self.ctx.read(&mut pipe) {
                Ok(Message::Close(_)) => {
                    // tungstenite queued the reply close frame (§5.5.1); push it out.
                    let _ = self.ctx.flush(&mut pipe);
                    // Either it answered ours, or it started the close and
                    // our reply completes it: the handshake is over both ways.
                    self.closing = Closing::Done;
                    return input.len();
                }
                Ok(message) => {
                    taken += 1;
                    messages.push(message);
                }
                // All input consumed; a partial frame, if any, waits in
                // tungstenite's buffer for the next read.
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Both close frames have crossed: the session is over.
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => {
                    self.closing = Closing::Done;
                    return input.len();
                }
                // The TCP stream ended without a close frame: nothing to answer.
                Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) | Err(Error::Io(_)) => {
                    self.closing = Closing::Done;
                    return input.len();
                }
                Err(e) => {
                    let (code, reason) = close_code_for(&e);
                    self.fail(code, reason, pipe.out);
                    return input.len();
                }
            }
        }
        let left = pipe.input.len();
        // Pongs for pings read above leave with this turn's output.
        let _ = self.ctx.flush(&mut pipe);
        input.len() - left
    }

    /// Starts the closing handshake with `code` (e.g. 1001 when shutting
    /// down, 1008 for a slow consumer). Later data frames are dropped.
    pub fn close(&mut self, code: u16, reason: &str, out: &mut OutQueue) {
        if self.closing != Closing::No {
            return;
        }
        // A control frame carries at most 125 bytes (§5.5): 2 for the code,
        // so the reason is cut to 123, at a character boundary.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = reason.get(..end).unwrap_or_default();
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() };
        let mut pipe = Pipe { input: &[], eof: false, out };
        match self.ctx.close(&mut pipe, Some(frame)) {
            Ok(()) => self.closing = Closing::Sent,
            // tungstenite considers the session over already: nothing to wait for.
            Err(_) => self.closing = Closing::Done,
        }
    }

    /// Fails the connection (§7.1.7): a close frame with the reason, then
    /// no more reading from this client.
    pub fn fail(&mut self, code: u16, reason: &str, out: &mut OutQueue) {
        if matches!(self.closing, Closing::No | Closing::Sent) {
            out.push_copy(&close_frame(code, reason));
        }
        self.closing = Closing::Failed;
    }

    /// The frame that carries data `payload` to this client: compressed
    /// if the extension was agreed and it pays, plain otherwise.
    pub fn data_frame(&mut self, opcode: OpCode, payload: &[u8], settings: &deflate::Settings) -> Vec<u8> {
        let compressed = match (&self.agreed, self.extension.as_deref_mut()) {
            (_, Some(extension)) => extension.frame(opcode, payload, settings),
            (Some(agreed), None) => deflate::compress_alone(agreed, opcode, payload, settings),
            (None, None) => None,
        };
        compressed.unwrap_or_else(|| frame::encode(opcode, payload))
    }

    /// Sends a ping (the heartbeat); the client must answer with a pong.
    pub fn ping(&mut self, payload: &[u8], out: &mut OutQueue) {
        if self.closing == Closing::No {
            out.push_copy(&frame::encode(OpCode::Control(Control::Ping), payload));
        }
    }

    /// Whether data frames may still be sent.
    pub(crate) fn is_open(&self) -> bool {
        self.closing == Closing::No
    }
}

/// A close frame with `code` and `reason` (reason cut to fit the 125-byte
/// control-frame limit of §5.5, at a character boundary).
pub(crate) fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes().get(..end).unwrap_or_default());
    frame::encode(OpCode::Control(Control::Close), &payload)
}

/// The close code RFC 6455 §7.4.1 assigns to each way a client can fail.
fn close_code_for(e: &Error) -> (u16, &'static str) {
    match e {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => (1009, "message too big"),
        Error::Capacity(_) => (1009, "message too big"),
        Error::Utf8(_) => (1007, "invalid UTF-8"),
        Error::Protocol(ProtocolError::InvalidCloseSequence) => (1002, "invalid close frame"),
        Error::Protocol(_) => (1002, "protocol error"),
        _ => (1011, "internal error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::masked_frame;

    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        masked_frame(if fin { 0x80 } else { 0 } | opcode, payload)
    }

    #[test]
    fn messages_split_anywhere_reassemble() {
        let mut bytes = client_frame(0x1, true, b"hello");
        bytes.extend(client_frame(0x2, false, b"bin"));
        bytes.extend(client_frame(0x0, true, b"ary"));
        let mut s = Session::new(1024, None);
        let mut out = OutQueue::new();
        let mut got = vec![];
        for chunk in bytes.chunks(3) {
            s.feed(chunk, false, &mut out, &mut got, usize::MAX);
        }
        assert_eq!(got, vec![Message::text("hello"), Message::binary(&b"binary"[..])]);
        assert!(out.is_empty());
    }

    #[test]
    fn at_its_cap_a_feed_stops_and_the_rest_decodes_later() {
        let mut bytes = Vec::new();
        for text in ["one", "two", "three"] {
            bytes.extend(client_frame(0x1, true, text.as_bytes()));
        }
        let mut s = Session::new(1024, None);
        let mut out = OutQueue::new();
        let mut got = vec![];
        let taken = s.feed(&bytes, false, &mut out, &mut got, 2);
        assert_eq!(got, vec![Message::text("one"), Message::text("two")]);
        assert!(taken < bytes.len(), "the third frame is left undecoded");
        got.clear();
        assert_eq!(s.feed(&bytes[taken..], false, &mut out, &mut got, 0), 0, "a cap of 0 takes nothing");
        assert_eq!(s.feed(&bytes[taken..], false, &mut out, &mut got, 2), bytes.len() - taken);
        assert_eq!(got, vec![Message::text("three")]);
    }

    #[test]
    fn ping_gets_pong_and_close_gets_close() {
        let mut s = Session::new(1024, None);
        let mut out = OutQueue::new();
        let mut got = vec![];
        s.feed(&client_frame(0x9, true, b"hi"), false, &mut out, &mut got, usize::MAX);
        assert_eq!(out.to_vec(), b"\x8a\x02hi");
        out.clear();
        s.feed(&client_frame(0x8, true, &[0x03, 0xe8]), false, &mut out, &mut got, usize::MAX);
        assert_eq!(out.to_vec(), b"\x88\x02\x03\xe8");
        assert_eq!(s.closing(), Closing::Done);
    }

    #[test]
    fn too_big_is_1009_and_bad_utf8_is_1007() {
        let mut s = Session::new(10, None);
        let mut out = OutQueue::new();
        s.feed(&client_frame(0x1, true, b"way too long for ten"), false, &mut out, &mut vec![], usize::MAX);
        assert_eq!(&out.to_vec()[..4], b"\x88\x11\x03\xf1");
        assert_eq!(s.closing(), Closing::Failed);

        let mut s = Session::new(100, None);
        let mut out = OutQueue::new();
        s.feed(&client_frame(0x1, true, b"\xff\xfe"), false, &mut out, &mut vec![], usize::MAX);
        assert_eq!(&out.to_vec()[..4], b"\x88\x0f\x03\xef");
    }

    #[test]
    fn unmasked_frame_is_a_protocol_error() {
        let mut s = Session::new(100, None);
        let mut out = OutQueue::new();
        s.feed(b"\x81\x02hi", false, &mut out, &mut vec![], usize::MAX);
        assert_eq!(&out.to_vec()[..4], b"\x88\x10\x03\xea");
    }

    #[test]
    fn long_close_reasons_are_cut_to_fit_a_control_frame() {
        let mut s = Session::new(100, None);
        let mut out = OutQueue::new();
        s.close(4000, &"é".repeat(200), &mut out);
        let bytes = out.to_vec();
        assert_eq!(bytes[0], 0x88);
        assert!(bytes[1] <= 125, "payload {} bytes", bytes[1]);
    }

    #[test]
    fn without_context_takeover_an_idle_session_keeps_no_deflate_state() {
        let agreed = deflate::Agreed {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        };
        let settings = deflate::Settings::default();
        let mut s = Session::new(1 << 20, Some(Extension::new(agreed, &settings, 1 << 20)));
        assert!(s.extension.is_none(), "nothing kept before the first byte");
        let text = "a compressed message, a compressed message, a compressed message";
        let frame = deflate::frame_alone(
            OpCode::Data(tungstenite::protocol::frame::coding::Data::Text),
            text.as_bytes(),
            15,
            1,
        )
        .unwrap();
        let bytes = client_frame(0x41, true, &frame[2..]);
        let (mut out, mut got) = (OutQueue::new(), vec![]);
        let half = bytes.len() / 2;
        s.feed(&bytes[..half], false, &mut out, &mut got, usize::MAX);
        assert!(s.extension.is_some() && got.is_empty(), "half a message is kept");
        s.feed(&bytes[half..], false, &mut out, &mut got, usize::MAX);
        assert_eq!(got, vec![Message::text(text)]);
        assert!(s.extension.is_none(), "and dropped once it is whole");
    }

    #[test]
    fn server_close_waits_for_the_reply() {
        let mut s = Session::new(100, None);
        let mut out = OutQueue::new();
        s.close(1001, "going away", &mut out);
        assert_eq!(s.closing(), Closing::Sent);
        assert_eq!(&out.to_vec()[..4], b"\x88\x0c\x03\xe9");
        s.feed(&client_frame(0x8, true, &[0x03, 0xe9]), false, &mut out, &mut vec![], usize::MAX);
        assert_eq!(s.closing(), Closing::Done);
    }
}
