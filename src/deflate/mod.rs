//! permessage-deflate (RFC 7692): WebSocket messages compressed with DEFLATE.
//!
//! A message with the extension is sent as its DEFLATE bytes, with the first
//! frame's RSV1 bit set to say so (§6). Three parts, in the order a
//! connection meets them:
//!
//! - [`offer`]: the handshake. The client offers the extension in
//!   `Sec-WebSocket-Extensions`; we take an offer or go on without it.
//! - [`inflate`]: inbound. Frames with RSV1 are collected and inflated
//!   before tungstenite sees them (it refuses RSV1 bits itself, and its
//!   message assembly is private), so it is handed the plain message.
//! - this file: outbound. A payload becomes a frame with RSV1 set,
//!   compressed on its own ([`frame_alone`]: the same bytes serve every
//!   member of a room) or in a connection's own stream ([`Stream`]:
//!   smaller, at the price of a compressor per connection).
//!
//! How each message is compressed (§7.2.1): DEFLATE it, end with a sync
//! flush (which appends an empty stored block, `00 00 ff ff`), and drop those
//! four bytes; the receiver puts them back before inflating (§7.2.2).
//!
//! The DEFLATE engine is zlib-rs, zlib-ng's algorithms in Rust. It never
//! emits a back-reference farther than its window minus 262 bytes (zlib's
//! `MAX_DIST`), so with a 512-byte window (9 bits, its smallest) every
//! distance is within 250 bytes: valid for a client that asked for a
//! 256-byte window (8 bits), which zlib itself refuses to produce.

pub mod inflate;
pub mod offer;

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::rc::Rc;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::OpCode;
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush, Status};

pub use offer::{Agreed, negotiate};

/// `--compression`: what the server offers clients that ask for compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Declined: frames go as they are.
    Off,
    /// No context takeover either way: large frames are compressed once
    /// and shared; no connection keeps a compression window.
    Shared,
    /// A compressor and decompressor per connection: every frame
    /// compressed, best ratio, tens of KiB per connection.
    Dedicated,
}

/// The compression settings, from `--compression*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `--compression`.
    pub mode: Mode,
    /// `--compression-min`: in `shared` mode, frames smaller than this go
    /// plain (a chat message is too short to repeat itself: alone, it
    /// barely shrinks).
    pub min: usize,
    /// `--compression-window-bits`: the window cap in `dedicated` mode.
    pub window_bits: u8,
    /// `--compression-mem-level`: zlib's memory level (1-9) of a dedicated
    /// compressor, which sizes its buffer of pending symbols.
    pub mem_level: u8,
    /// `--compression-level`: DEFLATE's effort, 1 (fastest) to 9.
    pub level: u8,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { mode: Mode::Shared, min: 1024, window_bits: 12, mem_level: 8, level: 1 }
    }
}

/// Why a connection fails: a close code and its reason.
pub type Failure = (u16, &'static str);

/// The smallest window zlib-rs compresses with (see the module docs for why
/// its output still fits an 8-bit window).
const MIN_DEFLATE_WINDOW: u8 = 9;

/// The empty stored block a sync flush ends with (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// The reactor's compressors for messages compressed alone, one per
    /// window size asked for (9 to 15), each with the level it was made
    /// for, made on first use and reset before each message. One thread,
    /// so no connection needs its own.
    static ALONE: RefCell<[Option<(u8, Deflate)>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };

    /// The reactor's decompressor for messages sent without context
    /// takeover, reset before each one.
    static INFLATE_ALONE: RefCell<Option<Inflate>> = const { RefCell::new(None) };

    /// Where a message is compressed before its frame is built (kept, so
    /// each message does not allocate it again).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A server frame (`opcode`, unfragmented) whose payload is compressed on
/// its own with a window of at most `window_bits`: RSV1 set. `None` if
/// compressing does not make it smaller (then send it plain).
pub fn frame_alone(opcode: OpCode, payload: &[u8], window_bits: u8, level: u8) -> Option<Vec<u8>> {
    let bits = window_bits.clamp(MIN_DEFLATE_WINDOW, 15);
    ALONE.with_borrow_mut(|alone| {
        let slot = alone.get_mut(usize::from(bits - MIN_DEFLATE_WINDOW))?;
        if slot.as_ref().is_none_or(|(made_for, _)| *made_for != level) {
            *slot = Some((level, new_deflate(level, bits, 8)));
        }
        let (_, deflate) = slot.as_mut()?;
        deflate.reset();
        SCRATCH.with_borrow_mut(|scratch| {
            compress(deflate, payload, scratch)?;
            (scratch.len() < payload.len()).then(|| compressed_frame(opcode, scratch))
        })
    })
}

/// A connection's own compressor (`dedicated`): each message is compressed
/// with the ones before it as context, so repeated field names and words
/// cost a few bits each.
pub struct Stream {
    deflate: Deflate,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

impl Stream {
    /// A compressor with a window of `window_bits` (at least 9, see above).
    pub fn new(settings: &Settings, window_bits: u8) -> Stream {
        let bits = window_bits.clamp(MIN_DEFLATE_WINDOW, 15);
        Stream { deflate: new_deflate(settings.level, bits, settings.mem_level) }
    }

    /// The frame for `payload`, compressed after everything before it. Every
    /// frame goes compressed, even one that grows: the client's window must
    /// hold the same history as ours.
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        SCRATCH.with_borrow_mut(|scratch| match compress(&mut self.deflate, payload, scratch) {
            Some(()) => compressed_frame(opcode, scratch),
            // zlib-rs reports errors only for misuse. Should one come, the
            // frame goes plain (it leaves the client's window as it was)
            // and our compressor starts over with an empty window: from
            // then on it refers back to less than the client holds, which
            // the client inflates just the same.
            None => {
                self.deflate.reset();
                crate::frame::encode(opcode, payload)
            }
        })
    }
}

fn new_deflate(level: u8, window_bits: u8, mem_level: u8) -> Deflate {
    Deflate::new_with_config(DeflateConfig {
        level: i32::from(level.clamp(1, 9)),
        window_bits: -i32::from(window_bits),
        mem_level: i32::from(mem_level.clamp(1, 9)),
        ..DeflateConfig::default()
    })
}

/// DEFLATEs `input` into `out` (replacing its contents) up to a sync flush,
/// without the flush's `00 00 ff ff` (§7.2.1). `None` on an engine error.
fn compress(deflate: &mut Deflate, input: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    out.reserve(input.len() + input.len() / 1000 + 64);
    let mut rest = input;
    loop {
        let before_in = deflate.total_in();
        let before_out = deflate.total_out();
        let spare: &mut [MaybeUninit<u8>] = out.spare_capacity_mut();
        let status = deflate.compress_uninit(rest, spare, DeflateFlush::SyncFlush).ok()?;
        let wrote = (deflate.total_out() - before_out) as usize;
        // SAFETY: zlib-rs initialised `wrote` bytes of the spare capacity.
        unsafe { out.set_len(out.len() + wrote) };
        rest = rest.get((deflate.total_in() - before_in) as usize..).unwrap_or_default();
        // zlib's rule: when a flush returns with output space left, the
        // flush is complete; with the output full, call again with more.
        if rest.is_empty() && out.len() < out.capacity() {
            break;
        }
        if status == Status::BufError && wrote == 0 && out.len() < out.capacity() {
            return None;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(())
}

/// A frame header with RSV1 ("compressed") around `deflated`.
fn compressed_frame(opcode: OpCode, deflated: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(crate::frame::MAX_HEADER + deflated.len());
    let header = FrameHeader { opcode, rsv1: true, ..FrameHeader::default() };
    // Formatting into a Vec cannot fail; an Err here would be a tungstenite bug.
    if header.format(deflated.len() as u64, &mut out).is_err() {
        out.clear();
    }
    out.extend_from_slice(deflated);
    out
}

/// A broadcast's frames, each made at most once and shared: the plain
/// frame, and the payload compressed alone for each window size its
/// recipients agreed to (browsers all take the full 32 KiB, so one copy in
/// practice). A recipient with a compressor of its own gets a frame made
/// for it alone.
pub struct Copies<'a> {
    opcode: OpCode,
    payload: &'a [u8],
    settings: &'a Settings,
    plain: Rc<[u8]>,
    /// By window bits from 9: not made yet, or made (the compressed frame,
    /// or the plain one where compressing does not pay).
    compressed: [Option<Rc<[u8]>>; 7],
}

impl<'a> Copies<'a> {
    /// The copies of `payload` in an `opcode` frame (only the plain one is
    /// made now).
    pub fn new(opcode: OpCode, payload: &'a [u8], settings: &'a Settings) -> Copies<'a> {
        let plain = Rc::from(crate::frame::encode(opcode, payload));
        Copies { opcode, payload, settings, plain, compressed: Default::default() }
    }

    /// Whether any recipient may get something else than the plain frame.
    /// When not (a chat message under `--compression-min`), the sender
    /// need not look at each recipient's extension.
    pub fn may_differ(&self) -> bool {
        match self.settings.mode {
            Mode::Off => false,
            Mode::Shared => self.payload.len() >= self.settings.min,
            Mode::Dedicated => true,
        }
    }

    /// The plain frame.
    pub fn plain(&self) -> Rc<[u8]> {
        self.plain.clone()
    }

    /// The frame for a recipient whose messages are compressed alone with
    /// at most `window_bits`: compressed once per window size, if it pays.
    pub fn compressed(&mut self, window_bits: u8) -> Rc<[u8]> {
        if self.payload.len() < self.settings.min {
            return self.plain();
        }
        let bits = window_bits.clamp(MIN_DEFLATE_WINDOW, 15);
        let Some(slot) = self.compressed.get_mut(usize::from(bits - MIN_DEFLATE_WINDOW)) else { return self.plain() };
        slot.get_or_insert_with(|| match frame_alone(self.opcode, self.payload, bits, self.settings.level) {
            Some(frame) => Rc::from(frame),
            None => self.plain.clone(),
        })
        .clone()
    }

    /// What to compress for a recipient with a compressor of its own:
    /// the opcode, the payload and the settings.
    pub fn parts(&self) -> (OpCode, &[u8], &Settings) {
        (self.opcode, self.payload, self.settings)
    }
}

/// One connection's permessage-deflate state: the filter its input goes
/// through and, when the server keeps context (`dedicated`), its
/// compressor. Without context takeover either way (`shared`) nothing here
/// outlives a frame in progress, so a connection holds it only while one
/// is (see [`Extension::is_idle`]).
#[derive(Debug)]
pub struct Extension {
    /// The parameters of the handshake.
    pub agreed: Agreed,
    /// Inflates the client's compressed messages.
    pub inbound: inflate::Inbound,
    /// The server's compressor with context takeover, if any.
    stream: Option<Stream>,
}

impl Extension {
    /// The state for a connection that agreed `agreed`, whose messages
    /// may be `max_message` bytes once inflated. Context takeover is what
    /// costs memory: a compressor (server side) and an inflate window
    /// (client side) for the connection's whole life.
    pub fn new(agreed: Agreed, settings: &Settings, max_message: usize) -> Extension {
        let inflate_stream =
            (!agreed.client_no_context_takeover).then(|| InflateStream::new(agreed.client_max_window_bits));
        let stream = (!agreed.server_no_context_takeover).then(|| Stream::new(settings, agreed.server_max_window_bits));
        Extension { agreed, inbound: inflate::Inbound::new(max_message, inflate_stream), stream }
    }

    /// Whether it holds nothing worth keeping: no compression context, and
    /// no frame or message half-read. It can then be dropped, and made
    /// again (with [`Extension::new`]) when the next bytes arrive.
    pub fn is_idle(&self) -> bool {
        self.stream.is_none() && self.inbound.is_idle()
    }

    /// The frame to send `payload` in, compressed as agreed; `None` to send
    /// it plain.
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8], settings: &Settings) -> Option<Vec<u8>> {
        match &mut self.stream {
            Some(stream) => Some(stream.frame(opcode, payload)),
            None => compress_alone(&self.agreed, opcode, payload, settings),
        }
    }
}

/// The frame for `payload` to a connection that agreed `agreed` without
/// server context takeover: compressed alone if it is at least
/// `--compression-min` and shrinks; `None` to send it plain.
pub fn compress_alone(agreed: &Agreed, opcode: OpCode, payload: &[u8], settings: &Settings) -> Option<Vec<u8>> {
    if payload.len() < settings.min {
        return None;
    }
    frame_alone(opcode, payload, agreed.server_max_window_bits, settings.level)
}

/// A connection's decompressor when the client keeps context between
/// messages (`dedicated` without `client_no_context_takeover`).
pub struct InflateStream(Inflate);

impl std::fmt::Debug for InflateStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InflateStream")
    }
}

impl InflateStream {
    /// A decompressor with a window of `window_bits` (8 to 15).
    pub fn new(window_bits: u8) -> InflateStream {
        InflateStream(Inflate::new(false, window_bits.clamp(8, 15)))
    }
}

/// Inflates one message's DEFLATE bytes (`compressed`, which gets the
/// `00 00 ff ff` tail back, §7.2.2) into at most `max` bytes: in the
/// connection's own stream, or alone. A message that would inflate past
/// `max` stops there (1009: a small frame can inflate a thousandfold);
/// bytes that do not inflate are 1007 (§7.2.3.1, invalid payload data).
pub fn inflate(compressed: &mut Vec<u8>, stream: Option<&mut InflateStream>, max: usize) -> Result<Vec<u8>, Failure> {
    compressed.extend_from_slice(&TAIL);
    match stream {
        Some(InflateStream(inflate)) => inflate_into(inflate, compressed, max),
        None => INFLATE_ALONE.with_borrow_mut(|alone| {
            let inflate = alone.get_or_insert_with(|| Inflate::new(false, 15));
            inflate.reset(false);
            inflate_into(inflate, compressed, max)
        }),
    }
}

fn inflate_into(inflate: &mut Inflate, mut input: &[u8], max: usize) -> Result<Vec<u8>, Failure> {
    const TOO_BIG: Failure = (1009, "message too big");
    let mut out: Vec<u8> = Vec::with_capacity((input.len() * 4).max(64).min(max.saturating_add(1)));
    loop {
        if out.len() == out.capacity() {
            if out.len() > max {
                return Err(TOO_BIG);
            }
            // Room for at most one byte past the limit: enough to tell.
            let grow = out.capacity().max(64).min(max + 1 - out.len());
            out.reserve_exact(grow);
        }
        let before_in = inflate.total_in();
        let before_out = inflate.total_out();
        let status = inflate
            .decompress_uninit(input, out.spare_capacity_mut(), InflateFlush::SyncFlush)
            .map_err(|_| (1007, "invalid compressed data"))?;
        let wrote = (inflate.total_out() - before_out) as usize;
        // SAFETY: zlib-rs initialised `wrote` bytes of the spare capacity.
        unsafe { out.set_len(out.len() + wrote) };
        input = input.get((inflate.total_in() - before_in) as usize..).unwrap_or_default();
        if out.len() > max {
            return Err(TOO_BIG);
        }
        match status {
            // The stream may not end: §7.2.3.1's messages end at a sync flush, not a final block.
            Status::StreamEnd => return Ok(out),
            _ if input.is_empty() && out.len() < out.capacity() => return Ok(out),
            // Output full: grow (above) and go on.
            _ if out.len() == out.capacity() => {}
            // Input left, room left, and no progress: the data is broken.
            _ if wrote == 0 => return Err((1007, "invalid compressed data")),
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::Data;

    const TEXT: OpCode = OpCode::Data(Data::Text);

    pub(crate) fn payload_of(frame: &[u8]) -> &[u8] {
        let len = usize::from(frame[1] & 0x7f);
        match len {
            126 => &frame[4..],
            127 => &frame[10..],
            _ => &frame[2..],
        }
    }

    fn history(n: usize) -> String {
        let messages: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"type":"message","id":{i},"username":"user{}","message":"hello number {i}","ts":1700000000}}"#,
                    i % 7
                )
            })
            .collect();
        format!(r#"{{"type":"welcome","history":[{}]}}"#, messages.join(","))
    }

    #[test]
    fn a_large_frame_compressed_alone_inflates_back() {
        let text = history(50);
        let frame = frame_alone(TEXT, text.as_bytes(), 15, 1).unwrap();
        assert_eq!(frame[0], 0xc1, "FIN, RSV1, text");
        assert!(frame.len() < text.len() / 3, "{} of {}", frame.len(), text.len());
        let back = inflate(&mut payload_of(&frame).to_vec(), None, 1 << 20).unwrap();
        assert_eq!(back, text.as_bytes());
    }

    #[test]
    fn incompressible_frames_stay_plain() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(frame_alone(OpCode::Data(Data::Binary), &noise, 15, 1).is_none());
    }

    #[test]
    fn a_window_of_8_bits_is_respected() {
        // The client inflates with a 256-byte window: zlib-rs with 8 bits
        // refuses distances past 256, so this fails if any reaches further.
        let text = history(200);
        let frame = frame_alone(TEXT, text.as_bytes(), 8, 1).unwrap();
        let mut small = Inflate::new(false, 8);
        let mut data = payload_of(&frame).to_vec();
        data.extend_from_slice(&TAIL);
        assert_eq!(inflate_into(&mut small, &data, 1 << 20).unwrap(), text.as_bytes());
    }

    #[test]
    fn a_stream_carries_context_between_messages() {
        let settings = Settings { mode: Mode::Dedicated, ..Settings::default() };
        let mut ours = Stream::new(&settings, 12);
        let mut theirs = InflateStream::new(12);
        let one = r#"{"type":"message","room":"welcome","username":"alice","message":"hi there"}"#;
        let first = ours.frame(TEXT, one.as_bytes());
        let second = ours.frame(TEXT, one.as_bytes());
        assert!(second.len() < first.len() / 2, "the second refers back to the first");
        for frame in [first, second] {
            assert_eq!(inflate(&mut payload_of(&frame).to_vec(), Some(&mut theirs), 1000).unwrap(), one.as_bytes());
        }
    }

    #[test]
    fn an_empty_message_is_one_byte() {
        // §7.2.3.6: an empty message compresses to 0x00.
        let mut d = new_deflate(1, 15, 8);
        let mut out = Vec::new();
        compress(&mut d, b"", &mut out).unwrap();
        assert_eq!(out, [0x00]);
        assert_eq!(inflate(&mut out, None, 10).unwrap(), b"");
    }

    #[test]
    fn the_rfc_s_hello_inflates() {
        // §7.2.3.1: "Hello" compressed without context takeover.
        let mut hello = vec![0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&mut hello, None, 100).unwrap(), b"Hello");
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_1007() {
        let zeros = vec![0u8; 1 << 20];
        let frame = frame_alone(OpCode::Data(Data::Binary), &zeros, 15, 1).unwrap();
        assert!(frame.len() < 20_000, "a megabyte of zeros is {} bytes", frame.len());
        assert_eq!(inflate(&mut payload_of(&frame).to_vec(), None, 64 * 1024), Err((1009, "message too big")));
        assert_eq!(inflate(&mut vec![0xff, 0xff, 0xff, 0xff], None, 100).unwrap_err().0, 1007);
    }
}
