//! `/ws/inspect` over a real socket: the handshake explained, then hand-built
//! frames (each length encoding, masked and fragmented, control frames,
//! malformed ones) described field by field, and the learn page's commands.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use serde_json::Value;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A masked client frame with the first byte `first` (FIN, RSV, opcode).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(first & 0x0f, first & 0x80 != 0, payload, true)
        .into_iter()
        .enumerate()
        .map(|(i, b)| if i == 0 { first } else { b })
        .collect()
}

/// A raw WebSocket connection that reads unmasked server frames by hand.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn open(server: &TestServer) -> (Raw, Value) {
        let mut s = tcp(server.addr);
        write!(
            s,
            "GET /ws/inspect HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n",
            server.addr
        )
        .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut s, &mut buf, false);
        assert_eq!(resp.status, 101);
        let mut raw = Raw { s, buf };
        let hello = raw.json();
        (raw, hello)
    }

    /// The next server frame: (first byte, payload).
    fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let (len, hdr) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let first = self.buf[0];
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return (first, payload);
                }
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn json(&mut self) -> Value {
        let (first, payload) = self.frame();
        assert_eq!(first, 0x81, "a text frame");
        serde_json::from_slice(&payload).unwrap()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }
}

#[test]
fn handshake_is_shown_step_by_step() {
    let server = TestServer::start();
    let (_raw, hello) = Raw::open(&server);
    assert_eq!(hello["type"], "handshake");
    assert!(hello["request"].as_str().unwrap().starts_with("GET /ws/inspect HTTP/1.1\r\n"));
    assert_eq!(hello["key"], KEY);
    assert_eq!(hello["concatenated"], format!("{KEY}258EAFA5-E914-47DA-95CA-C5AB0DC85B11"));
    assert_eq!(hello["accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert!(hello["response"].as_str().unwrap().contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

#[test]
fn frames_are_described_field_by_field() {
    let server = TestServer::start();
    let (mut raw, _) = Raw::open(&server);
    // 7-bit length, the RFC's "Hello".
    raw.send(&masked(0x81, b"Hello"));
    let d = raw.json();
    assert_eq!(d["header_hex"], "81 85 37 fa 21 3d");
    assert_eq!(
        (d["fin"].as_bool(), d["opcode"].as_u64(), d["masked"].as_bool(), d["payload_length"].as_u64()),
        (Some(true), Some(1), Some(true), Some(5))
    );
    assert_eq!(d["length_encoding"], "7-bit");
    assert_eq!(d["mask_key_hex"], "37 fa 21 3d");
    assert_eq!(d["masked_payload_hex"], "7f 9f 4d 51 58");
    assert_eq!(d["payload_text"], "Hello");
    // The previous server frame was the handshake description: a text frame
    // longer than 125 bytes, so its header is 81 7e + 16-bit length.
    assert!(d["previous_server_frame_header_hex"].as_str().unwrap().starts_with("81 7e"));
    // 16-bit and 64-bit lengths.
    raw.send(&masked(0x82, &[9u8; 1000]));
    let d = raw.json();
    assert_eq!((d["length_encoding"].as_str(), d["payload_length"].as_u64()), (Some("16-bit"), Some(1000)));
    assert_eq!(d["opcode_name"], "binary");
    raw.send(&masked(0x82, &[9u8; 65536]));
    let d = raw.json();
    assert_eq!((d["length_encoding"].as_str(), d["payload_length"].as_u64()), (Some("64-bit"), Some(65536)));
    // Fragments one by one, with a ping between them; the ping gets its pong.
    let mut bytes = masked(0x01, b"frag");
    bytes.extend(masked(0x89, b"hi"));
    bytes.extend(masked(0x80, b"ment"));
    raw.send(&bytes);
    // Three descriptions and one pong; the pong may come before or after the
    // descriptions, depending on how the bytes were split into reads.
    let mut texts = Vec::new();
    let mut pongs = Vec::new();
    while texts.len() < 3 || pongs.is_empty() {
        match raw.frame() {
            (0x81, p) => texts.push(serde_json::from_slice::<Value>(&p).unwrap()),
            (0x8a, p) => pongs.push(p),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(pongs, vec![b"hi".to_vec()], "the pong");
    assert_eq!((texts[0]["fin"].as_bool(), texts[0]["opcode_name"].as_str()), (Some(false), Some("text")));
    assert_eq!(texts[1]["opcode_name"], "ping");
    assert_eq!((texts[2]["fin"].as_bool(), texts[2]["opcode_name"].as_str()), (Some(true), Some("continuation")));
    // A close frame: described, then the close handshake completes.
    raw.send(&masked(0x88, &[0x03, 0xe8, b'o', b'k']));
    let d = raw.json();
    assert_eq!((d["close_code"].as_u64(), d["close_reason"].as_str()), (Some(1000), Some("ok")));
    let (first, payload) = raw.frame();
    assert_eq!((first, &payload[..2]), (0x88, &[0x03, 0xe8][..]));
}

#[test]
fn malformed_frames_are_explained_then_closed_as_the_rfc_says() {
    let server = TestServer::start();
    // Unmasked: described, then close 1002.
    let (mut raw, _) = Raw::open(&server);
    raw.send(b"\x81\x02hi");
    let d = raw.json();
    assert!(d["problems"][0].as_str().unwrap().contains("not masked"), "{d}");
    let (first, payload) = raw.frame();
    assert_eq!((first, u16::from_be_bytes([payload[0], payload[1]])), (0x88, 1002));
    // Invalid UTF-8: described, then close 1007.
    let (mut raw, _) = Raw::open(&server);
    raw.send(&masked(0x81, b"\xff\xfe"));
    let d = raw.json();
    assert!(d["problems"][0].as_str().unwrap().contains("UTF-8"), "{d}");
    let (first, payload) = raw.frame();
    assert_eq!((first, u16::from_be_bytes([payload[0], payload[1]])), (0x88, 1007));
    // Reserved opcode: described, then close 1002.
    let (mut raw, _) = Raw::open(&server);
    raw.send(&masked(0x83, b"x"));
    let d = raw.json();
    assert!(d["problems"][0].as_str().unwrap().contains("malformed"), "{d}");
    let (first, payload) = raw.frame();
    assert_eq!((first, u16::from_be_bytes([payload[0], payload[1]])), (0x88, 1002));
}

#[test]
fn commands_make_the_server_send_ping_fragments_and_close() {
    let server = TestServer::start();
    let (mut raw, _) = Raw::open(&server);
    raw.send(&masked(0x81, br#"{"cmd":"ping","payload":"abc"}"#));
    assert_eq!(raw.json()["payload_text"], r#"{"cmd":"ping","payload":"abc"}"#);
    assert_eq!(raw.json()["what"], "ping");
    assert_eq!(raw.frame(), (0x89, b"abc".to_vec()));
    // Our pong is then described.
    raw.send(&masked(0x8a, b"abc"));
    assert_eq!(raw.json()["opcode_name"], "pong");
    raw.send(&masked(0x81, br#"{"cmd":"fragmented","text":"abcdef","parts":3}"#));
    raw.json();
    assert_eq!(raw.json()["frames_hex"].as_array().unwrap().len(), 3);
    assert_eq!(raw.frame(), (0x01, b"ab".to_vec()));
    assert_eq!(raw.frame(), (0x00, b"cd".to_vec()));
    assert_eq!(raw.frame(), (0x80, b"ef".to_vec()));
    raw.send(&masked(0x81, br#"{"cmd":"close","code":1005}"#));
    raw.json();
    assert_eq!(raw.json()["code"], "bad_command");
    raw.send(&masked(0x81, br#"{"cmd":"close","code":4321,"reason":"bye"}"#));
    raw.json();
    assert_eq!(raw.json()["code"], 4321);
    let (first, payload) = raw.frame();
    assert_eq!((first, u16::from_be_bytes([payload[0], payload[1]])), (0x88, 4321));
}
