//! Fuzz target: RESP, the Redis wire protocol, as the bus decodes it.
//!
//! `bus::resp::decode` reads the replies and pub/sub messages Redis sends
//! back; they are bytes from the network like any other, so it must never
//! panic and never allocate what a length merely claims. On top of that:
//!
//! - a decoded value used between 3 and `data.len()` bytes, and decoding just
//!   those bytes gives the same value (nothing past the frame mattered);
//! - every strict prefix of a decoded frame is `Ok(None)` ("read more"),
//!   never an error and never a different value: a reply split across reads
//!   parses the same as one read whole;
//! - the value, encoded again as RESP2, decodes to itself (unless lossy
//!   UTF-8 decoding grew a status line past the line limit);
//! - a buffer holding several frames is consumed the way the bus does it
//!   (decode, drop the bytes used, repeat) without looping forever;
//! - what reads the values above the bus takes them too: a bulk string as
//!   a room channel's payload (`cluster::decode_batch`), the value as a
//!   stream reply (`cluster::stream_messages`). Messages come out in id
//!   order, once each, every one a message event of the room.
#![no_main]

use chatroom::bus::resp::{self, Value};
use chatroom::chat::protocol;
use libfuzzer_sys::fuzz_target;

/// Prefixes checked one by one only for frames up to this size; longer
/// frames get a handful of cut points, so a long input stays fast.
const EVERY_PREFIX_MAX: usize = 256;

/// Encodes `v` as RESP2 (`Nil` as the nil bulk string `$-1`).
fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        Value::Simple(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Value::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
        Value::Bulk(b) => {
            out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        }
        Value::Array(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                encode(item, out);
            }
        }
    }
}

/// Whether every line in `v` still fits in [`resp::MAX_LINE`]: invalid UTF-8
/// in a status line is decoded lossily, and each bad byte becomes a 3-byte
/// U+FFFD, so re-encoding can outgrow a line that was within the limit.
fn lines_fit(v: &Value) -> bool {
    match v {
        Value::Simple(s) | Value::Error(s) => s.len() <= resp::MAX_LINE,
        Value::Array(items) => items.iter().all(lines_fit),
        Value::Nil | Value::Int(_) | Value::Bulk(_) => true,
    }
}

fn check_prefixes(frame: &[u8]) {
    let cuts: Vec<usize> = if frame.len() <= EVERY_PREFIX_MAX {
        (0..frame.len()).collect()
    } else {
        let n = frame.len();
        vec![0, 1, 2, n / 3, n / 2, n - 2, n - 1]
    };
    for cut in cuts {
        let prefix = frame.get(..cut).unwrap_or_default();
        assert_eq!(resp::decode(prefix), Ok(None), "prefix of {cut} of a {}-byte frame", frame.len());
    }
}

/// The room the payloads are read for.
const ROOM: &str = "r";

fn check_messages(value: &Value) {
    if let Value::Bulk(payload) = value {
        let batch = chatroom::cluster::decode_batch(ROOM, payload);
        for msg in &batch {
            let event = protocol::parse_message_event(msg.json.as_bytes()).expect("a message event");
            assert_eq!((&*event.room, event.id, event.ts), (ROOM, msg.id, msg.ts), "{}", msg.json);
        }
    }
    let stored = chatroom::cluster::stream_messages(ROOM, value);
    assert!(stored.windows(2).all(|w| w[0].id < w[1].id), "in id order, once each");
}

fuzz_target!(|data: &[u8]| {
    // The bus's read loop: decode, drop what was used, repeat.
    let mut rest = data;
    let mut first = true;
    loop {
        let (value, used) = match resp::decode(rest) {
            Ok(Some(found)) => found,
            Ok(None) | Err(_) => break,
        };
        assert!((3..=rest.len()).contains(&used), "used {used} of {} bytes", rest.len());
        let frame = rest.get(..used).unwrap_or_default();
        assert_eq!(resp::decode(frame), Ok(Some((value.clone(), used))), "the frame alone decodes differently");
        if first {
            // Prefix checks cost a decode per cut: on the first frame only.
            check_prefixes(frame);
            first = false;
        }
        check_messages(&value);
        if lines_fit(&value) {
            let mut again = Vec::new();
            encode(&value, &mut again);
            assert_eq!(resp::decode(&again), Ok(Some((value, again.len()))), "re-encoded value decodes differently");
        }
        rest = rest.get(used..).unwrap_or_default();
    }
});
