//! Server-to-client frames, encoded once.
//!
//! RFC 6455 §5.1: "A server MUST NOT mask any frames that it sends to the
//! client." So a frame the server sends is the same bytes whichever client
//! receives it, and a room broadcast can encode its frame once and share it
//! ([`crate::outbuf::Chunk::Shared`]). The header is formatted by
//! tungstenite's [`FrameHeader`]; the payload is appended after it.
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! ```
//! (server frames: MASK = 0, so no masking key follows.)

use std::rc::Rc;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// Frames with this payload size or less have a 2-byte header; up to 65,535
/// a 4-byte one; beyond, 10 bytes (§5.2 "Payload length").
pub(crate) const MAX_HEADER: usize = 10;

/// Encodes one unfragmented, unmasked frame with `opcode` around `payload`.
pub fn encode(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len());
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    // Formatting into a Vec cannot fail; an Err here would be a tungstenite bug.
    if header.format(payload.len() as u64, &mut out).is_err() {
        out.clear();
    }
    out.extend_from_slice(payload);
    out
}

/// A text frame.
pub fn text(payload: &[u8]) -> Vec<u8> {
    encode(OpCode::Data(Data::Text), payload)
}

/// A binary frame.
pub fn binary(payload: &[u8]) -> Vec<u8> {
    encode(OpCode::Data(Data::Binary), payload)
}

/// A text frame to share among many connections (one allocation, many readers).
pub fn shared_text(payload: &[u8]) -> Rc<[u8]> {
    Rc::from(text(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_encodings() {
        // 7-bit length.
        assert_eq!(text(b"Hello"), b"\x81\x05Hello");
        // 16-bit length: 126 then the length big-endian.
        let f = binary(&[0u8; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 0x01, 0x2c]);
        assert_eq!(f.len(), 304);
        // 64-bit length: 127 then eight bytes.
        let f = text(&vec![b'a'; 70_000]);
        assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
    }
}
