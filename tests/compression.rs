//! permessage-deflate (RFC 7692) over real sockets, spoken by hand: what the
//! handshake answers, which frames arrive compressed (RSV1) and inflate to
//! the same JSON, that a client which did not offer never sees RSV1, and
//! what a broken or hostile compressed frame costs (its sender, nobody else).
//!
//! The client side compresses and inflates with zlib-rs directly, not with
//! the server's own code.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use chatroom::deflate::Mode;
use common::*;
use serde_json::Value;
use zlib_rs::{Deflate, DeflateFlush, Inflate, InflateFlush};

/// What Chromium offers.
const BROWSER_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

fn server(mode: Mode) -> TestServer {
    let mut cfg = config();
    cfg.compression.mode = mode;
    TestServer::with(cfg)
}

/// A server frame, RSV1 included.
#[derive(Debug)]
struct Frame {
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// Reads one server frame (any RSV1), leaving the rest in `buf`.
fn read(s: &mut TcpStream, buf: &mut Vec<u8>) -> Frame {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 65536];
    loop {
        if buf.len() >= 2 {
            assert_eq!(buf[0] & 0x30, 0, "RSV2/RSV3 set");
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
                126 | 127 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if len != usize::MAX && buf.len() >= at + len {
                let frame =
                    Frame { rsv1: buf[0] & 0x40 != 0, opcode: buf[0] & 0x0f, payload: buf[at..at + len].to_vec() };
                assert!(buf[0] & 0x80 != 0, "the server sends unfragmented frames");
                buf.drain(..at + len);
                return frame;
            }
        }
        assert!(Instant::now() < deadline, "no frame within 10 s");
        let n = std::io::Read::read(s, &mut chunk).expect("read");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Opens `path` with the extension header line `offer` ("" for none);
/// returns the stream, the bytes past the 101 and the answer's
/// `Sec-WebSocket-Extensions`.
fn open(addr: SocketAddr, path: &str, offer: &str) -> (TcpStream, Vec<u8>, Option<String>) {
    let mut s = tcp(addr);
    s.write_all(upgrade_request(addr, path, offer).as_bytes()).unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.status, 101, "{}", r.text());
    let answer = r.header("sec-websocket-extensions").map(str::to_string);
    (s, buf, answer)
}

/// Inflates a compressed message's payload (§7.2.2) with a window of `bits`.
fn inflate(payload: &[u8], bits: u8) -> Vec<u8> {
    let mut data = payload.to_vec();
    data.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut z = Inflate::new(false, bits);
    let mut out = vec![0u8; 4 << 20];
    z.decompress(&data, &mut out, InflateFlush::SyncFlush).expect("inflates");
    assert_eq!(z.total_in() as usize, data.len(), "all input inflated");
    out.truncate(z.total_out() as usize);
    out
}

/// A text message as a client compresses it (alone), payload only.
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut z = Deflate::new(6, false, 15);
    let mut out = vec![0u8; text.len() + 1024];
    z.compress(text, &mut out, DeflateFlush::SyncFlush).unwrap();
    out.truncate(z.total_out() as usize);
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// The next text frame's JSON whose type is `kind`, inflated if compressed;
/// also says whether it came compressed.
fn next_json(s: &mut TcpStream, buf: &mut Vec<u8>, kind: &str, bits: u8) -> (Value, bool) {
    loop {
        let f = read(s, buf);
        if f.opcode != OP_TEXT {
            continue;
        }
        let text = if f.rsv1 { inflate(&f.payload, bits) } else { f.payload };
        let v: Value = serde_json::from_slice(&text).unwrap();
        if v["type"] == kind {
            return (v, f.rsv1);
        }
    }
}

/// Fills `room` with `n` posts of some length from a plain client.
fn fill(server: &TestServer, room: &str, n: usize) {
    let mut c = ws(server.addr, &format!("/ws/chatroom/{room}/?username=filler"));
    recv_type(&mut c, "welcome");
    for i in 0..n {
        post_and_answer(&mut c, &format!("message number {i}, long enough to make the history worth compressing"));
    }
}

#[test]
fn the_handshake_answers_what_was_agreed() {
    let shared = server(Mode::Shared);
    let (_, _, answer) = open(shared.addr, "/ws/echo", BROWSER_OFFER);
    assert_eq!(answer.as_deref(), Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"));
    let offer =
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; client_max_window_bits=12\r\n";
    let (_, _, answer) = open(shared.addr, "/ws/echo", offer);
    assert_eq!(
        answer.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10")
    );
    // An offer with a parameter we do not know is declined: the next is taken,
    // and with none left the upgrade goes ahead without the extension.
    let two =
        "Sec-WebSocket-Extensions: permessage-deflate; mystery=1, permessage-deflate; server_max_window_bits=9\r\n";
    let (_, _, answer) = open(shared.addr, "/ws/echo", two);
    assert!(answer.unwrap().ends_with("server_max_window_bits=9"));
    let bad = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=16\r\n";
    assert_eq!(open(shared.addr, "/ws/echo", bad).2, None);
    assert_eq!(open(shared.addr, "/ws/echo", "").2, None);

    let dedicated = server(Mode::Dedicated);
    let (_, _, answer) = open(dedicated.addr, "/ws/echo", BROWSER_OFFER);
    assert_eq!(answer.as_deref(), Some("permessage-deflate; client_max_window_bits=12"));

    let off = server(Mode::Off);
    assert_eq!(open(off.addr, "/ws/echo", BROWSER_OFFER).2, None);
}

#[test]
fn a_large_welcome_arrives_compressed_and_a_small_message_plain() {
    let server = server(Mode::Shared);
    fill(&server, "big", 30);
    let (mut s, mut buf, answer) = open(server.addr, "/ws/chatroom/big/?username=zipped", BROWSER_OFFER);
    assert!(answer.is_some());
    let (welcome, compressed) = next_json(&mut s, &mut buf, "welcome", 15);
    assert!(compressed, "a welcome with 30 messages of history is over 1 KiB: compressed");
    // The same history as a client without the extension is sent.
    let (mut plain, mut pbuf) = raw_ws(server.addr, "/ws/chatroom/big/?username=plain");
    let plain_welcome = loop {
        let f = read_frame(&mut plain, &mut pbuf); // asserts RSV1 clear: it did not offer
        let v: Value = serde_json::from_slice(&f.payload).unwrap();
        if v["type"] == "welcome" {
            break v;
        }
    };
    assert_eq!(welcome["history"], plain_welcome["history"]);
    assert_eq!(welcome["history"].as_array().unwrap().len(), 30);
    // A chat message is far under --compression-min: it comes plain.
    let mut poster = ws(server.addr, "/ws/chatroom/big/?username=poster");
    post_and_answer(&mut poster, "short");
    let (m, compressed) = next_json(&mut s, &mut buf, "message", 15);
    assert_eq!(m["message"], "short");
    assert!(!compressed, "a short message goes plain");
    let f = loop {
        let f = read_frame(&mut plain, &mut pbuf);
        if serde_json::from_slice::<Value>(&f.payload).unwrap()["type"] == "message" {
            break f;
        }
    };
    assert_eq!(serde_json::from_slice::<Value>(&f.payload).unwrap()["message"], "short");
}

#[test]
fn a_large_broadcast_is_compressed_for_each_window_and_plain_for_the_rest() {
    let mut cfg = config();
    cfg.max_text = 8000;
    let server = TestServer::with(cfg);
    let room = "/ws/chatroom/wide/?username=";
    let (mut full, mut fbuf, _) = open(server.addr, &format!("{room}full"), BROWSER_OFFER);
    let eight = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n";
    let (mut small, mut sbuf, answer) = open(server.addr, &format!("{room}small"), eight);
    assert!(answer.unwrap().ends_with("server_max_window_bits=8"));
    let (mut plain, mut pbuf) = raw_ws(server.addr, &format!("{room}plain"));
    let mut poster = ws(server.addr, &format!("{room}poster"));
    let text: String = (0..100).map(|i| format!("line {i} of a long paste; ")).collect();
    post_and_answer(&mut poster, &text);
    let (m, compressed) = next_json(&mut full, &mut fbuf, "message", 15);
    assert!(compressed && m["message"] == text.as_str());
    // Inflated with a 256-byte window: fails if any back-reference reaches further.
    let (m, compressed) = next_json(&mut small, &mut sbuf, "message", 8);
    assert!(compressed && m["message"] == text.as_str());
    let f = loop {
        let f = read_frame(&mut plain, &mut pbuf);
        if serde_json::from_slice::<Value>(&f.payload).unwrap()["type"] == "message" {
            break f;
        }
    };
    assert_eq!(serde_json::from_slice::<Value>(&f.payload).unwrap()["message"], text.as_str());
}

#[test]
fn compressed_posts_and_echoes_are_inflated() {
    let server = server(Mode::Shared);
    // A compressed chat post reaches a member without the extension as plain text.
    let (mut s, mut buf, _) = open(server.addr, "/ws/chatroom/in/?username=zipped", BROWSER_OFFER);
    next_json(&mut s, &mut buf, "welcome", 15);
    let mut reader = ws(server.addr, "/ws/chatroom/in/?username=reader");
    recv_type(&mut reader, "welcome");
    let post = br#"{"message": "compressed hello, compressed hello, compressed hello"}"#;
    s.write_all(&client_frame(0x40 | OP_TEXT, true, &deflate(post), true)).unwrap();
    assert_eq!(recv_type(&mut reader, "message")["message"], "compressed hello, compressed hello, compressed hello");
    // In fragments, with a ping between them (§5.4): the pong comes, then the echo.
    let (mut e, mut ebuf, _) = open(server.addr, "/ws/echo", BROWSER_OFFER);
    let text = "echo me ".repeat(300);
    let z = deflate(text.as_bytes());
    let (a, b) = z.split_at(z.len() / 2);
    let mut bytes = client_frame(0x40 | OP_TEXT, false, a, true);
    bytes.extend(client_frame(OP_PING, true, b"mid", true));
    bytes.extend(client_frame(OP_CONT, true, b, true));
    e.write_all(&bytes).unwrap();
    let pong = read(&mut e, &mut ebuf);
    assert_eq!((pong.opcode, pong.payload.as_slice()), (OP_PONG, &b"mid"[..]));
    let echo = read(&mut e, &mut ebuf);
    assert!(echo.rsv1, "a 2,400-byte echo goes compressed");
    assert_eq!(inflate(&echo.payload, 15), text.as_bytes());
}

/// Sends `bytes` on a fresh connection that negotiated the extension (or
/// not); returns the close code the server answers with.
fn close_code_for(addr: SocketAddr, offer: &str, bytes: &[u8]) -> Option<u16> {
    let (mut s, mut buf, _) = open(addr, "/ws/echo", offer);
    s.write_all(bytes).unwrap();
    read_until_close_frame(&mut s, &mut buf)
}

#[test]
fn broken_compressed_frames_close_their_sender_only() {
    let mut cfg = config();
    cfg.compression.mode = Mode::Shared;
    cfg.max_message = 64 * 1024;
    let server = TestServer::with(cfg);
    let mut bystander = ws(server.addr, "/ws/chatroom/calm/?username=bystander");
    recv_type(&mut bystander, "welcome");
    let compressed = |text: &[u8]| client_frame(0x40 | OP_TEXT, true, &deflate(text), true);
    // A bomb: 16 MiB of zeros in about 16 KiB. The server stops at --max-message.
    let mut zeros = Deflate::new(9, false, 15);
    let mut bomb = vec![0u8; 64 << 10];
    zeros.compress(&vec![0u8; 16 << 20], &mut bomb, DeflateFlush::SyncFlush).unwrap();
    bomb.truncate(zeros.total_out() as usize - 4);
    assert!(bomb.len() < 20_000, "{}", bomb.len());
    assert_eq!(
        close_code_for(server.addr, BROWSER_OFFER, &client_frame(0x40 | OP_BINARY, true, &bomb, true)),
        Some(1009)
    );
    // Not DEFLATE data: 1007. Not UTF-8 once inflated: 1007.
    assert_eq!(close_code_for(server.addr, BROWSER_OFFER, &client_frame(0x41, true, &[0xff; 8], true)), Some(1007));
    assert_eq!(close_code_for(server.addr, BROWSER_OFFER, &compressed(&[0xc3, 0x28, 0x41, 0x42])), Some(1007));
    // RSV1 where it has no meaning: 1002.
    assert_eq!(close_code_for(server.addr, "", &compressed(b"not negotiated")), Some(1002));
    assert_eq!(close_code_for(server.addr, BROWSER_OFFER, &client_frame(0x40 | OP_PING, true, b"x", true)), Some(1002));
    let mut cont = client_frame(OP_TEXT, false, b"plain start", true);
    cont.extend(client_frame(0x40 | OP_CONT, true, &deflate(b"x"), true));
    assert_eq!(close_code_for(server.addr, BROWSER_OFFER, &cont), Some(1002));
    // Nobody else noticed.
    let mut poster = ws(server.addr, "/ws/chatroom/calm/?username=poster");
    post_and_answer(&mut poster, "still here");
    assert_eq!(recv_type(&mut bystander, "message")["message"], "still here");
}

#[test]
fn dedicated_compresses_every_frame_with_context() {
    let server = server(Mode::Dedicated);
    let (mut s, mut buf, answer) = open(server.addr, "/ws/echo", BROWSER_OFFER);
    assert_eq!(answer.as_deref(), Some("permessage-deflate; client_max_window_bits=12"));
    // One inflate stream for the whole connection (context takeover).
    let mut z = Inflate::new(false, 15);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let text = b"the same short line, again";
        s.write_all(&client_frame(OP_TEXT, true, text, true)).unwrap();
        let f = read(&mut s, &mut buf);
        assert!(f.rsv1, "dedicated compresses even a short frame");
        sizes.push(f.payload.len());
        let mut data = f.payload.clone();
        data.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = vec![0u8; 1024];
        let before = z.total_out();
        z.decompress(&data, &mut out, InflateFlush::SyncFlush).unwrap();
        assert_eq!(&out[..(z.total_out() - before) as usize], text);
    }
    assert!(sizes[1] < sizes[0] / 2, "the second refers back to the first: {sizes:?}");
    // The client keeps context too: two messages compressed in one stream.
    let mut c = Deflate::new(6, false, 12);
    for _ in 0..2 {
        let mut out = vec![0u8; 256];
        let before = c.total_out();
        c.compress(b"hello hello hello", &mut out, DeflateFlush::SyncFlush).unwrap();
        let n = (c.total_out() - before) as usize - 4;
        s.write_all(&client_frame(0x40 | OP_TEXT, true, &out[..n], true)).unwrap();
        let f = read(&mut s, &mut buf);
        let mut data = f.payload.clone();
        data.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut back = vec![0u8; 256];
        let before = z.total_out();
        z.decompress(&data, &mut back, InflateFlush::SyncFlush).unwrap();
        assert_eq!(&back[..(z.total_out() - before) as usize], b"hello hello hello");
    }
}
