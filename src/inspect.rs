//! The frame inspector behind `/ws/inspect` and the learn page.
//!
//! No WebSocket library shows you the bytes of your own connection; this
//! endpoint does. On connect it explains the handshake it just performed
//! (the request head it received, the key, how the accept value was
//! computed, the response head it sent). Then every frame the client sends
//! is described field by field, from the raw bytes as they came off the
//! socket.
//!
//! tungstenite's `read` returns whole, unmasked messages, so the reactor
//! tees the raw bytes into [`Inspector::observe`] before they drive the
//! normal WebSocket path. The inspector keeps its own little buffer, cuts it
//! into frames with tungstenite's [`FrameHeader::parse`], and describes each
//! one; it never decides anything about the connection. When a frame is
//! malformed it says what is wrong, and the real session then closes the
//! connection as RFC 6455 requires (1002, 1007, 1009...).
//!
//! A browser cannot send pings or choose how to fragment, so the learn page
//! can ask (JSON commands) for the server to send a ping, a fragmented
//! message, or a close with a chosen code, and then watch the browser's
//! automatic answer arrive here.

use std::io::Cursor;

use data_encoding::{BASE64, HEXLOWER};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use crate::handshake::{Upgrade, response_101};
use crate::http::Head;

/// The GUID RFC 6455 §1.3 appends to every key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Payload bytes shown in hex at most (the rest is summarised).
const SHOWN: usize = 512;

/// Raw bytes the inspector buffers at most while a frame is incomplete.
/// Beyond it, the frame is too big to show; the session closes it (1009).
const MAX_BUFFERED: usize = 1 << 20;

/// Per-connection inspector state.
#[derive(Debug, Default)]
pub struct Inspector {
    handshake: String,
    /// Raw client bytes not yet cut into frames.
    buf: Vec<u8>,
    /// Frames described so far.
    count: u64,
    /// Header bytes of the last frame the server sent on this connection.
    last_server_header: Vec<u8>,
    /// A fragmented message is in progress (for "continuation" problems).
    in_fragmented: bool,
    /// Stopped describing (after a malformed or oversized frame).
    stopped: bool,
    /// permessage-deflate was agreed (each message compressed alone).
    deflate: bool,
    /// The compressed message being described: its DEFLATE bytes so far.
    compressed: Option<Vec<u8>>,
}

/// What the learn page asked the server to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a ping with this payload (the browser answers with a pong).
    Ping(Vec<u8>),
    /// Send `text` as a message split into `parts` frames.
    Fragmented {
        /// The message.
        text: String,
        /// How many frames.
        parts: usize,
    },
    /// Send a close frame with this code and reason.
    Close {
        /// Close code.
        code: u16,
        /// Reason text.
        reason: String,
    },
}

/// Bytes as lowercase hex pairs separated by spaces: `81 85 37 fa`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&HEXLOWER.encode(&[*b]));
    }
    out
}

fn shown(bytes: &[u8]) -> &[u8] {
    bytes.get(..SHOWN.min(bytes.len())).unwrap_or_default()
}

fn opcode_name(code: u8) -> &'static str {
    match code {
        0x0 => "continuation",
        0x1 => "text",
        0x2 => "binary",
        0x8 => "close",
        0x9 => "ping",
        0xA => "pong",
        0x3..=0x7 => "reserved (data)",
        _ => "reserved (control)",
    }
}

impl Inspector {
    /// Starts inspecting a connection upgraded with `head` (whose raw bytes
    /// are `head.raw`).
    pub fn new(head: &Head, upgrade: &Upgrade) -> Inspector {
        let concatenated = format!("{}{GUID}", upgrade.key);
        let digest = Sha1::digest(concatenated.as_bytes());
        let response = String::from_utf8_lossy(&response_101(
            &upgrade.accept,
            upgrade.extension.as_ref().map(|(_, answer)| answer.as_str()),
        ))
        .into_owned();
        let handshake = json!({
            "type": "handshake",
            "request": String::from_utf8_lossy(&head.raw),
            "key": upgrade.key,
            "key_decoded_hex": BASE64.decode(upgrade.key.as_bytes()).map(|k| hex(&k)).unwrap_or_default(),
            "guid": GUID,
            "concatenated": concatenated,
            "sha1_hex": hex(&digest),
            "accept": BASE64.encode(&digest),
            "accept_sent": upgrade.accept,
            "response": response,
            "extension": upgrade.extension.as_ref().map(|(_, answer)| answer),
        })
        .to_string();
        Inspector { handshake, deflate: upgrade.extension.is_some(), ..Inspector::default() }
    }

    /// The first message: how the handshake went.
    pub fn handshake_json(&self) -> String {
        self.handshake.clone()
    }

    /// Remembers the header bytes of a frame the server just sent, to show
    /// in the next description (a frame cannot contain its own header).
    pub fn sent(&mut self, frame: &[u8]) {
        let len = frame.get(1).map(|b| match b & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        });
        self.last_server_header = frame.get(..len.unwrap_or(0)).unwrap_or_default().to_vec();
    }

    /// Takes raw bytes read from the client and returns a description (JSON)
    /// of every frame they complete.
    pub fn observe(&mut self, bytes: &[u8]) -> Vec<String> {
        if self.stopped {
            return Vec::new();
        }
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let mut cursor = Cursor::new(&self.buf[..]);
            match FrameHeader::parse(&mut cursor) {
                // Not even a whole header yet.
                Ok(None) => break,
                Ok(Some((header, length))) => {
                    let header_len = cursor.position() as usize;
                    let total = (header_len as u64).saturating_add(length);
                    if total > MAX_BUFFERED as u64 {
                        out.push(self.describe_oversized(header_len, length));
                        self.stopped = true;
                        break;
                    }
                    let total = total as usize;
                    if self.buf.len() < total {
                        break; // the payload is still arriving
                    }
                    let frame: Vec<u8> = self.buf.drain(..total).collect();
                    out.push(self.describe(&frame, header_len, &header, length));
                }
                Err(e) => {
                    out.push(self.describe_malformed(&e.to_string()));
                    self.stopped = true;
                    break;
                }
            }
        }
        out
    }

    fn base(&mut self, header_bytes: &[u8]) -> Value {
        self.count += 1;
        let first = header_bytes.first().copied().unwrap_or(0);
        let second = header_bytes.get(1).copied().unwrap_or(0);
        let code = first & 0x0F;
        json!({
            "type": "frame",
            "index": self.count,
            "header_hex": hex(header_bytes),
            "first_byte_bits": format!("{first:08b}"),
            "second_byte_bits": format!("{second:08b}"),
            "fin": first & 0x80 != 0,
            "rsv1": first & 0x40 != 0,
            "rsv2": first & 0x20 != 0,
            "rsv3": first & 0x10 != 0,
            "opcode": code,
            "opcode_name": opcode_name(code),
            "masked": second & 0x80 != 0,
            "length_encoding": match second & 0x7F { 126 => "16-bit", 127 => "64-bit", _ => "7-bit" },
            "previous_server_frame_header_hex": hex(&self.last_server_header),
        })
    }

    fn describe(&mut self, frame: &[u8], header_len: usize, header: &FrameHeader, length: u64) -> String {
        let header_bytes = frame.get(..header_len).unwrap_or_default();
        let masked_payload = frame.get(header_len..).unwrap_or_default();
        let payload: Vec<u8> = match header.mask {
            // RFC 6455 §5.3: octet i of the payload is XORed with octet i % 4 of the key.
            Some(mask) => masked_payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m).collect(),
            None => masked_payload.to_vec(),
        };
        let mut d = self.base(header_bytes);
        let mut problems: Vec<String> = Vec::new();
        if header.mask.is_none() {
            problems
                .push("not masked: a client MUST mask every frame (RFC 6455 §5.1); the server closes with 1002".into());
        }
        let is_data_start = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        if header.rsv2 || header.rsv3 || (header.rsv1 && !self.deflate) {
            problems.push("RSV bit set without a negotiated extension (§5.2): closed with 1002".into());
        } else if header.rsv1 && !is_data_start {
            problems.push(
                "RSV1 marks a compressed message's first frame, and only that (RFC 7692 §6.1): closed with 1002".into(),
            );
        }
        let is_control = matches!(header.opcode, OpCode::Control(_));
        if is_control && !header.is_final {
            problems.push("control frames must not be fragmented (§5.5): closed with 1002".into());
        }
        if is_control && length > 125 {
            problems.push("control frames carry at most 125 bytes (§5.5): closed with 1002".into());
        }
        match header.opcode {
            OpCode::Data(Data::Continue) if !self.in_fragmented => {
                problems.push("continuation frame with no message in progress (§5.4): closed with 1002".into());
            }
            OpCode::Data(Data::Text | Data::Binary) if self.in_fragmented => {
                problems.push("new message before the fragmented one ended (§5.4): closed with 1002".into());
            }
            _ => {}
        }
        if let OpCode::Data(_) = header.opcode {
            self.in_fragmented = !header.is_final;
        }
        // A compressed message (RSV1 on its first frame): its frames'
        // payloads are DEFLATE bytes, inflated once the last one is in.
        let mut inflated = None;
        if self.deflate && matches!(header.opcode, OpCode::Data(_)) {
            if header.rsv1 && is_data_start {
                self.compressed = Some(Vec::new());
            }
            if let Some(bytes) = &mut self.compressed {
                bytes.extend_from_slice(&payload);
                if header.is_final {
                    let mut bytes = self.compressed.take().unwrap_or_default();
                    inflated = Some(crate::deflate::inflate(&mut bytes, None, MAX_BUFFERED));
                }
            }
        }
        let compressed = self.compressed.is_some() || inflated.is_some();
        if let Some(obj) = d.as_object_mut() {
            obj.insert("payload_length".into(), json!(length));
            obj.insert("mask_key_hex".into(), json!(header.mask.map(|m| hex(&m))));
            obj.insert("masked_payload_hex".into(), json!(hex(shown(masked_payload))));
            obj.insert("payload_hex".into(), json!(hex(shown(&payload))));
            obj.insert("truncated".into(), json!(payload.len() > SHOWN));
            let text = std::str::from_utf8(&payload).ok();
            obj.insert("payload_text".into(), json!(text));
            obj.insert("compressed".into(), json!(compressed));
            match &inflated {
                Some(Ok(bytes)) => {
                    obj.insert("inflated_length".into(), json!(bytes.len()));
                    obj.insert("inflated_hex".into(), json!(hex(shown(bytes))));
                    obj.insert("inflated_text".into(), json!(std::str::from_utf8(bytes).ok()));
                }
                Some(Err((code, why))) => {
                    problems.push(format!("the message does not inflate ({why}): closed with {code}"))
                }
                None => {}
            }
            if header.opcode == OpCode::Data(Data::Text) && header.is_final && text.is_none() && !compressed {
                problems.push("text payload is not valid UTF-8 (§8.1): closed with 1007".into());
            }
            if header.opcode == OpCode::Control(Control::Close) {
                let code = match payload.as_slice() {
                    [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
                    _ => None,
                };
                obj.insert("close_code".into(), json!(code));
                obj.insert(
                    "close_reason".into(),
                    json!(payload.get(2..).map(|r| String::from_utf8_lossy(r).into_owned())),
                );
                if payload.len() == 1 {
                    problems.push("a close payload of one byte is invalid (§5.5.1): closed with 1002".into());
                }
            }
            obj.insert("problems".into(), json!(problems));
        }
        d.to_string()
    }

    fn describe_oversized(&mut self, header_len: usize, length: u64) -> String {
        let header_bytes = self.buf.get(..header_len).unwrap_or_default().to_vec();
        let mut d = self.base(&header_bytes);
        if let Some(obj) = d.as_object_mut() {
            obj.insert("payload_length".into(), json!(length));
            obj.insert(
                "problems".into(),
                json!(["larger than the inspector shows; beyond --max-message the server closes with 1009"]),
            );
        }
        d.to_string()
    }

    fn describe_malformed(&mut self, error: &str) -> String {
        let header_bytes = self.buf.get(..2.min(self.buf.len())).unwrap_or_default().to_vec();
        let mut d = self.base(&header_bytes);
        if let Some(obj) = d.as_object_mut() {
            obj.insert(
                "problems".into(),
                json!([format!("malformed frame ({error}); the server closes the connection with 1002")]),
            );
        }
        d.to_string()
    }

    /// A JSON command from the learn page. Unknown or invalid commands get
    /// an explanation back.
    pub fn on_command(&mut self, text: &str) -> Result<Option<Command>, String> {
        let Ok(v) = serde_json::from_str::<Value>(text) else { return Ok(None) };
        let Some(cmd) = v.get("cmd").and_then(Value::as_str) else { return Ok(None) };
        match cmd {
            "ping" => {
                let payload = v.get("payload").and_then(Value::as_str).unwrap_or("ping from the server");
                let bytes = payload.as_bytes();
                Ok(Some(Command::Ping(bytes.get(..125.min(bytes.len())).unwrap_or_default().to_vec())))
            }
            "fragmented" => {
                let text = v.get("text").and_then(Value::as_str).unwrap_or("a message in several frames").to_string();
                let parts = v.get("parts").and_then(Value::as_u64).unwrap_or(3).clamp(1, 16) as usize;
                Ok(Some(Command::Fragmented { text, parts }))
            }
            "close" => {
                let code = v.get("code").and_then(Value::as_u64).unwrap_or(1000);
                let reason = v.get("reason").and_then(Value::as_str).unwrap_or("").to_string();
                // §7.4: codes a server may put on the wire.
                let allowed = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                if !allowed {
                    return Err(format!("close code {code} may not be sent (RFC 6455 §7.4)"));
                }
                Ok(Some(Command::Close { code: code as u16, reason }))
            }
            other => Err(format!("unknown command `{other}`; try ping, fragmented or close")),
        }
    }
}

/// Splits `text` into `parts` frames: the first text frame with FIN = 0,
/// continuation frames, and the last with FIN = 1 (§5.4). Splits at
/// character boundaries, so each piece is readable on its own.
pub fn fragments(text: &str, parts: usize) -> Vec<Vec<u8>> {
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(parts.max(1)).max(1);
    let mut pieces: Vec<String> = chars.chunks(per).map(|c| c.iter().collect()).collect();
    if pieces.is_empty() {
        // An empty message is still one (empty) text frame.
        pieces.push(String::new());
    }
    let last = pieces.len().saturating_sub(1);
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let opcode = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
            let header = FrameHeader { is_final: i == last, opcode, ..FrameHeader::default() };
            let mut out = Vec::new();
            if header.format(piece.len() as u64, &mut out).is_err() {
                out.clear();
            }
            out.extend_from_slice(piece.as_bytes());
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::masked_frame as masked;

    fn one(inspector: &mut Inspector, bytes: &[u8]) -> Value {
        let out = inspector.observe(bytes);
        assert_eq!(out.len(), 1, "{out:?}");
        serde_json::from_str(&out[0]).unwrap()
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: a masked "Hello": 0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58.
        let mut i = Inspector::default();
        let d = one(&mut i, &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        assert_eq!(d["header_hex"], "81 85 37 fa 21 3d");
        assert_eq!(d["fin"], true);
        assert_eq!(d["opcode_name"], "text");
        assert_eq!(d["masked"], true);
        assert_eq!(d["payload_length"], 5);
        assert_eq!(d["length_encoding"], "7-bit");
        assert_eq!(d["mask_key_hex"], "37 fa 21 3d");
        assert_eq!(d["masked_payload_hex"], "7f 9f 4d 51 58");
        assert_eq!(d["payload_hex"], "48 65 6c 6c 6f");
        assert_eq!(d["payload_text"], "Hello");
        assert_eq!(d["problems"], json!([]));
    }

    #[test]
    fn length_encodings_and_split_input() {
        let mut i = Inspector::default();
        let f = masked(0x82, &[7u8; 300]);
        assert!(i.observe(&f[..3]).is_empty(), "partial header");
        let d = one(&mut i, &f[3..]);
        assert_eq!(d["length_encoding"], "16-bit");
        assert_eq!(d["payload_length"], 300);
        assert_eq!(d["opcode_name"], "binary");
        let d = one(&mut i, &masked(0x82, &vec![1u8; 70_000]));
        assert_eq!(d["length_encoding"], "64-bit");
        assert_eq!(d["truncated"], true);
    }

    #[test]
    fn fragments_and_control_frames() {
        let mut i = Inspector::default();
        let mut bytes = masked(0x01, b"Hel");
        bytes.extend(masked(0x89, b"p"));
        bytes.extend(masked(0x80, b"lo"));
        let out: Vec<Value> = i.observe(&bytes).iter().map(|s| serde_json::from_str(s).unwrap()).collect();
        assert_eq!(out.len(), 3);
        assert_eq!((out[0]["fin"].as_bool(), out[0]["opcode_name"].as_str()), (Some(false), Some("text")));
        assert_eq!(out[1]["opcode_name"], "ping");
        assert_eq!((out[2]["fin"].as_bool(), out[2]["opcode_name"].as_str()), (Some(true), Some("continuation")));
        let d = one(&mut i, &masked(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        assert_eq!(d["close_code"], 1000);
        assert_eq!(d["close_reason"], "bye");
    }

    #[test]
    fn malformed_frames_are_explained() {
        let mut i = Inspector::default();
        let d = one(&mut i, b"\x81\x02hi");
        assert!(d["problems"][0].as_str().unwrap().contains("not masked"));
        let mut i = Inspector::default();
        let d = one(&mut i, &masked(0xC1, b"x"));
        assert!(d["problems"][0].as_str().unwrap().contains("RSV"));
        let mut i = Inspector::default();
        let d = one(&mut i, &masked(0x83, b"x"));
        assert!(d["problems"][0].as_str().unwrap().contains("malformed"));
        assert!(i.observe(&masked(0x81, b"later")).is_empty(), "stops after a malformed frame");
        let mut i = Inspector::default();
        let d = one(&mut i, &masked(0x09, b"x"));
        assert!(d["problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap().contains("fragmented")));
        let mut i = Inspector::default();
        let d = one(&mut i, &masked(0x81, b"\xff"));
        assert!(d["problems"][0].as_str().unwrap().contains("UTF-8"));
        let mut i = Inspector::default();
        let d = one(&mut i, &masked(0x80, b"x"));
        assert!(d["problems"][0].as_str().unwrap().contains("continuation"));
    }

    #[test]
    fn previous_server_header_is_reported() {
        let mut i = Inspector::default();
        i.sent(&crate::frame::text(&[0u8; 300]));
        let d = one(&mut i, &masked(0x81, b"x"));
        assert_eq!(d["previous_server_frame_header_hex"], "81 7e 01 2c");
    }

    #[test]
    fn commands() {
        let mut i = Inspector::default();
        assert_eq!(i.on_command(r#"{"cmd":"ping","payload":"hi"}"#), Ok(Some(Command::Ping(b"hi".to_vec()))));
        assert_eq!(
            i.on_command(r#"{"cmd":"close","code":4000,"reason":"x"}"#),
            Ok(Some(Command::Close { code: 4000, reason: "x".into() }))
        );
        assert!(i.on_command(r#"{"cmd":"close","code":1005}"#).is_err());
        assert!(i.on_command(r#"{"cmd":"dance"}"#).is_err());
        assert_eq!(i.on_command("just text"), Ok(None));
        let f = fragments("abcdef", 3);
        assert_eq!(f, vec![b"\x01\x02ab".to_vec(), b"\x00\x02cd".to_vec(), b"\x80\x02ef".to_vec()]);
    }

    #[test]
    fn handshake_is_explained() {
        let head = crate::http::parse_head(
            b"GET /ws/inspect HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let up = crate::handshake::validate(&head, &[]).unwrap();
        let i = Inspector::new(&head, &up);
        let v: Value = serde_json::from_str(&i.handshake_json()).unwrap();
        assert_eq!(v["accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(v["sha1_hex"], "b3 7a 4f 2c c0 62 4f 16 90 f6 46 06 cf 38 59 45 b2 be c4 ea");
        assert_eq!(v["concatenated"], "dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    }
}
