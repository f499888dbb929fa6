//! Fuzz target: what a client that negotiated permessage-deflate sends,
//! through `deflate::inflate::Inbound`, the filter that takes compressed
//! messages out of the byte stream before tungstenite sees it.
//!
//! Two checks. The bytes as a stream of frames, cut into pieces whose sizes
//! come from the first byte: the filter must never panic, and must say the
//! same thing however TCP cut them (the same plain bytes for tungstenite,
//! the same inflated messages, the same failure) as when it gets them in
//! one piece. Then the bytes as a message: compressed alone the way a
//! server does it, masked as a client would, they must come back exactly.
#![no_main]

use chatroom::deflate::inflate::{Inbound, Piece};
use chatroom::deflate::{Failure, frame_alone};
use chatroom::testutil::masked_frame;
use libfuzzer_sys::fuzz_target;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// A small `--max-message`, so bombs are cheap to find.
const MAX_MESSAGE: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let whole = run(data, data.len().max(1));
    let cut = run(data, step);
    assert_eq!(whole, cut, "the same bytes cut differently");
    round_trip(data);
});

/// What the filter made of `bytes` fed in pieces of `step`.
#[derive(Debug, PartialEq)]
struct Outcome {
    plain: Vec<u8>,
    messages: Vec<Message>,
    failure: Option<Failure>,
}

fn run(bytes: &[u8], step: usize) -> Outcome {
    let mut inbound = Inbound::new(MAX_MESSAGE, None);
    let mut out = Outcome { plain: Vec::new(), messages: Vec::new(), failure: None };
    for piece in bytes.chunks(step) {
        let mut input = piece;
        loop {
            match inbound.next(&mut input) {
                Piece::Plain(b) => out.plain.extend_from_slice(b),
                Piece::Head(h, n) => out.plain.extend_from_slice(&h[..n]),
                Piece::Message(m) => {
                    assert!(m.len() <= MAX_MESSAGE, "a message over the limit");
                    out.messages.push(m);
                }
                Piece::Wait => break,
                Piece::Fail(f) => {
                    out.failure = Some(f);
                    return out;
                }
            }
        }
    }
    out
}

fn round_trip(message: &[u8]) {
    let Some(frame) = frame_alone(OpCode::Data(Data::Binary), message, 15, 1) else { return };
    let at = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let client = masked_frame(0xc2, &frame[at..]);
    let out = run(&client, 7);
    if message.len() > MAX_MESSAGE {
        assert_eq!(out.failure, Some((1009, "message too big")));
    } else {
        assert_eq!(out.messages, vec![Message::binary(message.to_vec())], "round trip");
    }
}
