//! Inbound permessage-deflate: compressed messages are collected and
//! inflated before tungstenite sees them.
//!
//! tungstenite decodes frames and assembles messages, but it fails any
//! frame with RSV1 set and its message assembly is private. So for a
//! connection that negotiated the extension, the bytes from the socket go
//! through [`Inbound`] first, frame by frame:
//!
//! - a plain frame (RSV1 clear: control frames, small messages the client
//!   did not compress, their continuations) is passed on to tungstenite as
//!   it came, in as many pieces as it arrived in;
//! - a compressed message (RSV1 on its first frame, §6.1) is taken out of
//!   the stream: its frames' payloads are unmasked and collected, and once
//!   its last frame is in it is inflated (§7.2.2) and handed over whole, as
//!   a [`Message`]. tungstenite never sees it.
//!
//! A control frame may arrive between a compressed message's frames (§5.4);
//! it passes through in its place. Only what a message in progress needs is
//! kept: its compressed bytes, bounded by `--max-message`, and, for a client
//! that keeps context between messages, the connection's inflate window.
//! Pure code: bytes in, pieces out.

use tungstenite::Message;
use tungstenite::protocol::frame::Utf8Bytes;

use super::{Failure, InflateStream};

/// A client frame header is at most 14 bytes: 2, then 8 of extended
/// length, then the 4-byte mask (§5.2).
const MAX_HEADER: usize = 14;

/// One frame header, as far as routing it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    rsv1: bool,
    /// RSV2 or RSV3: no extension we speak uses them.
    rsv23: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Payload length.
    len: u64,
}

/// Reads a frame header from the start of `bytes`: the header and its
/// length, or `None` if `bytes` ends inside it ("need more bytes").
fn parse_header(bytes: &[u8]) -> Option<(Header, usize)> {
    let (&b0, &b1) = (bytes.first()?, bytes.get(1)?);
    let (len, mut at) = match b1 & 0x7f {
        126 => (u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)), 4),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let key: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let header =
        Header { fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, rsv23: b0 & 0x30 != 0, opcode: b0 & 0x0f, mask, len };
    Some((header, at))
}

/// Where the filter stands in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// At a frame boundary: a header comes next.
    Header,
    /// Inside a plain frame being passed on: payload bytes left.
    Passing(u64),
    /// Inside a compressed message's frame: payload bytes left, its mask,
    /// the mask's phase, and whether this frame ends the message.
    Collecting { left: u64, mask: [u8; 4], phase: usize, fin: bool },
}

/// What [`Inbound::next`] found.
#[derive(Debug, PartialEq)]
pub enum Piece<'a> {
    /// Bytes for tungstenite, as they came (part of a plain frame).
    Plain(&'a [u8]),
    /// The header of a plain frame that arrived split over reads, whole.
    Head([u8; MAX_HEADER], usize),
    /// A compressed message, inflated.
    Message(Message),
    /// Everything offered was taken: wait for more bytes.
    Wait,
    /// The client broke the protocol: close with this code and reason.
    Fail(Failure),
}

/// The inbound half of a connection's permessage-deflate.
#[derive(Debug)]
pub struct Inbound {
    /// A header split over reads, as far as it came.
    head: [u8; MAX_HEADER],
    head_len: usize,
    at: At,
    /// A plain message in fragments is under way: a compressed one may not
    /// start inside it.
    plain_fragments: bool,
    /// The compressed message being collected: text or not, and its DEFLATE bytes so far.
    message: Option<(bool, Vec<u8>)>,
    /// The client keeps context between messages: its inflate window.
    stream: Option<InflateStream>,
    /// `--max-message`, applied to the inflated size.
    max_message: usize,
    /// Frames come from a client, which masks every one (§5.1); `false`
    /// for a client's own filter (the load generator), reading a server,
    /// which never masks.
    from_client: bool,
}

impl Inbound {
    /// A filter for messages of at most `max_message` bytes once inflated;
    /// `stream` is the connection's own inflate window, if the client
    /// keeps context between messages.
    pub fn new(max_message: usize, stream: Option<InflateStream>) -> Inbound {
        Inbound {
            head: [0; MAX_HEADER],
            head_len: 0,
            at: At::Header,
            plain_fragments: false,
            message: None,
            stream,
            max_message,
            from_client: true,
        }
    }

    /// The same filter on the client side, for frames from a server
    /// (unmasked): the load generator inflates what it receives with it.
    /// `stream`: the server keeps context between messages.
    pub fn for_client(max_message: usize, stream: Option<InflateStream>) -> Inbound {
        Inbound { from_client: false, ..Inbound::new(max_message, stream) }
    }

    /// Whether nothing is in progress: at a frame boundary, no compressed
    /// message being collected, and no inflate window kept.
    pub fn is_idle(&self) -> bool {
        self.at == At::Header && self.head_len == 0 && self.message.is_none() && self.stream.is_none()
    }

    /// The DEFLATE bytes one message may take: a little over its inflated
    /// limit, since incompressible data grows slightly when deflated.
    fn compressed_limit(&self) -> usize {
        self.max_message.saturating_add(self.max_message / 8 + 64)
    }

    /// Takes bytes from the front of `input` and says what they were. Call
    /// it until it answers [`Piece::Wait`] (all of `input` taken) or
    /// [`Piece::Fail`] (the connection fails; stop reading).
    pub fn next<'a>(&mut self, input: &mut &'a [u8]) -> Piece<'a> {
        loop {
            match self.at {
                At::Header => {
                    let Some((header, source)) = self.take_header(input) else { return Piece::Wait };
                    match (self.route(&header), source) {
                        (Err(failure), _) => return Piece::Fail(failure),
                        (Ok(Route::Pass), Source::Kept(bytes, len)) => {
                            self.at = At::Passing(header.len);
                            return Piece::Head(bytes, len);
                        }
                        (Ok(Route::Pass), Source::Front(hlen)) => {
                            // The header goes on with as much payload as came.
                            let payload = clamp(header.len, input.len() - hlen);
                            self.at = At::Passing(header.len - payload as u64);
                            let (now, rest) = input.split_at(hlen + payload);
                            *input = rest;
                            return Piece::Plain(now);
                        }
                        (Ok(Route::Collect), source) => {
                            if let Source::Front(hlen) = source {
                                *input = input.get(hlen..).unwrap_or_default();
                            }
                            // An unmasked frame XORs with zeros: its bytes as they are.
                            let mask = header.mask.unwrap_or_default();
                            self.at = At::Collecting { left: header.len, mask, phase: 0, fin: header.fin };
                        }
                    }
                }
                At::Passing(0) => self.at = At::Header,
                At::Passing(left) => {
                    if input.is_empty() {
                        return Piece::Wait;
                    }
                    let n = clamp(left, input.len());
                    let (now, rest) = input.split_at(n);
                    *input = rest;
                    self.at = At::Passing(left - n as u64);
                    return Piece::Plain(now);
                }
                At::Collecting { left, mask, phase, fin } => {
                    let n = clamp(left, input.len());
                    let (now, rest) = input.split_at(n);
                    *input = rest;
                    if let Some((_, bytes)) = &mut self.message {
                        // §5.3: octet i of the payload is XORed with mask[i % 4].
                        bytes.extend(now.iter().zip(mask.iter().cycle().skip(phase)).map(|(b, m)| b ^ m));
                    }
                    if left > n as u64 {
                        self.at = At::Collecting { left: left - n as u64, mask, phase: (phase + n) % 4, fin };
                        return Piece::Wait;
                    }
                    self.at = At::Header;
                    if fin {
                        return self.finish();
                    }
                }
            }
        }
    }

    /// The next header, whole: at the front of `input` (left there for
    /// the caller to take), or completed from bytes kept since the last
    /// read. `None` if it is not all here yet: what came is kept, and
    /// `input` is empty.
    fn take_header(&mut self, input: &mut &[u8]) -> Option<(Header, Source)> {
        if self.head_len == 0 {
            if let Some((header, len)) = parse_header(input) {
                return Some((header, Source::Front(len)));
            }
            if input.is_empty() {
                return None;
            }
        }
        // Byte by byte into the kept header until it parses: 14 at most.
        loop {
            if let Some((header, len)) = parse_header(self.head.get(..self.head_len).unwrap_or_default()) {
                self.head_len = 0;
                return Some((header, Source::Kept(self.head, len)));
            }
            let (&b, rest) = input.split_first()?;
            *input = rest;
            if let Some(slot) = self.head.get_mut(self.head_len) {
                *slot = b;
                self.head_len += 1;
            }
        }
    }

    /// Whether a frame goes to tungstenite or is collected here, or breaks
    /// the protocol (§5.2, §6.1: RSV1 marks a compressed message's first
    /// frame, and only that).
    fn route(&mut self, h: &Header) -> Result<Route, Failure> {
        const PROTOCOL: u16 = 1002;
        if h.rsv23 {
            return Err((PROTOCOL, "reserved bits set"));
        }
        let collecting = self.message.is_some();
        match h.opcode {
            // Control frames may come between a message's fragments (§5.4).
            0x8..=0xf if h.rsv1 => Err((PROTOCOL, "RSV1 on a control frame")),
            0x8..=0xf => Ok(Route::Pass),
            0x0 if h.rsv1 => Err((PROTOCOL, "RSV1 on a continuation frame")),
            0x0 if collecting => self.collect(h),
            0x0 => {
                if h.fin {
                    self.plain_fragments = false;
                }
                Ok(Route::Pass)
            }
            0x1 | 0x2 if collecting || (h.rsv1 && self.plain_fragments) => {
                Err((PROTOCOL, "a new message before the last one ended"))
            }
            0x1 | 0x2 if h.rsv1 => {
                self.message = Some((h.opcode == 0x1, Vec::new()));
                self.collect(h)
            }
            0x1 | 0x2 => {
                self.plain_fragments = !h.fin;
                Ok(Route::Pass)
            }
            // Reserved data opcodes: tungstenite refuses them with 1002.
            _ if h.rsv1 => Err((PROTOCOL, "RSV1 on an unknown opcode")),
            _ => Ok(Route::Pass),
        }
    }

    /// Checks a compressed message's frame before its payload is collected.
    fn collect(&mut self, h: &Header) -> Result<Route, Failure> {
        if h.mask.is_none() && self.from_client {
            // §5.1: "The server MUST close the connection upon receiving a frame that is not masked."
            return Err((1002, "unmasked frame"));
        }
        if h.mask.is_some() && !self.from_client {
            // §5.1: "A client MUST close a connection if it detects a masked frame."
            return Err((1002, "masked frame from a server"));
        }
        let so_far = self.message.as_ref().map_or(0, |(_, bytes)| bytes.len()) as u64;
        if so_far.saturating_add(h.len) > self.compressed_limit() as u64 {
            return Err((1009, "message too big"));
        }
        Ok(Route::Collect)
    }

    /// The last frame of a compressed message is in: inflate it.
    fn finish<'a>(&mut self) -> Piece<'a> {
        let Some((text, mut compressed)) = self.message.take() else { return Piece::Wait };
        match super::inflate(&mut compressed, self.stream.as_mut(), self.max_message) {
            Err(failure) => Piece::Fail(failure),
            Ok(bytes) if !text => Piece::Message(Message::Binary(bytes.into())),
            Ok(bytes) => match Utf8Bytes::try_from(bytes) {
                Ok(text) => Piece::Message(Message::Text(text)),
                // §8.1: a text message must be UTF-8 once inflated.
                Err(_) => Piece::Fail((1007, "invalid UTF-8")),
            },
        }
    }
}

/// Where a whole header is.
enum Source {
    /// At the front of the input, this many bytes long.
    Front(usize),
    /// Kept from earlier reads (a copy, and its length).
    Kept([u8; MAX_HEADER], usize),
}

/// What to do with a frame.
enum Route {
    /// Hand it to tungstenite as it is.
    Pass,
    /// Collect its payload into the compressed message.
    Collect,
}

/// `left` capped at `available`, as a length.
fn clamp(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |l| l.min(available))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::frame_alone;
    use crate::deflate::tests::payload_of;
    use crate::testutil::masked_frame;
    use tungstenite::protocol::frame::coding::{Data, OpCode};

    /// A client's compressed text message in one frame (RSV1 set).
    fn compressed(text: &str) -> Vec<u8> {
        let frame = frame_alone(OpCode::Data(Data::Text), text.as_bytes(), 15, 1).expect("compressible");
        masked_frame(0xc1, payload_of(&frame))
    }

    /// Runs `bytes` through a filter in chunks of `step`, collecting what
    /// tungstenite would get and the messages inflated here.
    fn run(inbound: &mut Inbound, bytes: &[u8], step: usize) -> (Vec<u8>, Vec<Message>, Option<Failure>) {
        let (mut plain, mut messages) = (Vec::new(), Vec::new());
        for chunk in bytes.chunks(step) {
            let mut input = chunk;
            loop {
                match inbound.next(&mut input) {
                    Piece::Plain(b) => plain.extend_from_slice(b),
                    Piece::Head(h, n) => plain.extend_from_slice(&h[..n]),
                    Piece::Message(m) => messages.push(m),
                    Piece::Wait => break,
                    Piece::Fail(f) => return (plain, messages, Some(f)),
                }
            }
        }
        (plain, messages, None)
    }

    fn long_text() -> String {
        (0..40).map(|i| format!("message number {i} in a row; ")).collect()
    }

    #[test]
    fn plain_frames_pass_untouched_in_any_split() {
        let mut bytes = masked_frame(0x81, b"hello");
        bytes.extend(masked_frame(0x89, b"ping"));
        bytes.extend(masked_frame(0x82, &[7u8; 300]));
        for step in [1, 2, 3, 7, 14, 1000] {
            let (plain, messages, failure) = run(&mut Inbound::new(1 << 20, None), &bytes, step);
            assert_eq!((plain.as_slice(), messages.len(), failure), (bytes.as_slice(), 0, None), "step {step}");
        }
    }

    #[test]
    fn a_compressed_message_is_inflated_in_any_split() {
        let text = long_text();
        let mut bytes = compressed(&text);
        bytes.extend(masked_frame(0x81, b"after"));
        for step in [1, 5, 13, 4096] {
            let (plain, messages, failure) = run(&mut Inbound::new(1 << 20, None), &bytes, step);
            assert_eq!(failure, None);
            assert_eq!(messages, vec![Message::text(text.clone())], "step {step}");
            assert_eq!(plain, masked_frame(0x81, b"after"), "step {step}");
        }
    }

    #[test]
    fn fragments_with_a_ping_between_them() {
        let text = long_text();
        let whole = compressed(&text);
        let payload = {
            // Unmask the test frame's payload back (mask in bytes 4..8 of a 126-length header).
            let (h, hlen) = parse_header(&whole).unwrap();
            let m = h.mask.unwrap();
            whole[hlen..].iter().enumerate().map(|(i, b)| b ^ m[i % 4]).collect::<Vec<u8>>()
        };
        let (a, b) = payload.split_at(payload.len() / 2);
        let mut bytes = masked_frame(0x41, a); // RSV1, text, not final
        bytes.extend(masked_frame(0x89, b"hb"));
        bytes.extend(masked_frame(0x80, b)); // continuation, final, RSV1 clear
        let (plain, messages, failure) = run(&mut Inbound::new(1 << 20, None), &bytes, 3);
        assert_eq!(failure, None);
        assert_eq!(plain, masked_frame(0x89, b"hb"), "the ping passes through");
        assert_eq!(messages, vec![Message::text(text)]);
    }

    #[test]
    fn protocol_errors() {
        let fails = |bytes: Vec<u8>| run(&mut Inbound::new(1 << 20, None), &bytes, 1000).2;
        assert_eq!(fails(masked_frame(0xc9, b"x")).unwrap().0, 1002, "RSV1 on a ping");
        let mut cont = masked_frame(0x41, b"\x00");
        cont.extend(masked_frame(0xc0, b"\x00"));
        assert_eq!(fails(cont).unwrap().1, "RSV1 on a continuation frame");
        let mut two = masked_frame(0x41, b"\x00");
        two.extend(masked_frame(0x81, b"x"));
        assert_eq!(fails(two).unwrap().1, "a new message before the last one ended");
        let mut inside_plain = masked_frame(0x01, b"x");
        inside_plain.extend(masked_frame(0xc1, b"\x00"));
        assert_eq!(fails(inside_plain).unwrap().0, 1002);
        assert_eq!(fails(b"\xc1\x01\x00".to_vec()).unwrap().1, "unmasked frame");
        assert_eq!(fails(masked_frame(0xe1, b"x")).unwrap().1, "reserved bits set");
        assert_eq!(fails(masked_frame(0xc1, b"\xff\xff\xff")).unwrap().0, 1007, "not DEFLATE");
    }

    #[test]
    fn text_that_is_not_utf8_once_inflated_is_1007() {
        let frame = frame_alone(OpCode::Data(Data::Binary), &[0xff; 3000], 15, 1).unwrap();
        let bytes = masked_frame(0xc1, payload_of(&frame));
        let (_, _, failure) = run(&mut Inbound::new(1 << 20, None), &bytes, 1000);
        assert_eq!(failure, Some((1007, "invalid UTF-8")));
    }

    #[test]
    fn a_bomb_closes_with_1009() {
        let frame = frame_alone(OpCode::Data(Data::Binary), &vec![0u8; 1 << 20], 15, 1).unwrap();
        let bytes = masked_frame(0xc2, payload_of(&frame));
        let (_, messages, failure) = run(&mut Inbound::new(64 * 1024, None), &bytes, 1000);
        assert!(messages.is_empty());
        assert_eq!(failure, Some((1009, "message too big")));
        // Too many compressed bytes fail before any inflating.
        let big = masked_frame(0xc2, &vec![0u8; 1000]);
        assert_eq!(run(&mut Inbound::new(200, None), &big, 1000).2, Some((1009, "message too big")));
    }

    #[test]
    fn nothing_is_kept_between_messages() {
        let mut inbound = Inbound::new(1 << 20, None);
        run(&mut inbound, &compressed(&long_text()), 7);
        assert!(inbound.message.is_none() && inbound.head_len == 0 && inbound.at == At::Header);
    }
}
