//! Fuzz target: what a chat client sends once it is a WebSocket.
//!
//! Two layers, fed the same bytes:
//!
//! 1. The chat wire format (`chat::protocol`): if the bytes are UTF-8 they are
//!    a text frame's payload, so `parse_post`, `clean_name` and the echo
//!    room's `echo_room::reply` run on them. A post's message has at most
//!    4096 characters (the limit we pass), a cleaned name is 1–32 trimmed
//!    characters with no control characters, and every reply we build from
//!    client text (echo reply, message event, welcome) is valid JSON that
//!    gives the client's text back unchanged; the message event, written by
//!    hand, is byte for byte what `serde_json` writes, and reads back.
//! 2. The frame layer (`ws::Session`): the bytes are what the socket read
//!    after the handshake, fed to a session in several chunkings (whole,
//!    one byte at a time, small chunks, two halves). It must never panic,
//!    and since TCP may cut a stream anywhere, every chunking must yield the
//!    same messages and end in the same closing state.
#![no_main]

use chatroom::chat::protocol;
use chatroom::echo_room;
use chatroom::outbuf::OutQueue;
use chatroom::ws::{Closing, Session};
use libfuzzer_sys::fuzz_target;
use tungstenite::Message;

/// The `--max-text` we fuzz with (the server's default).
const MAX_CHARS: usize = 4096;

/// Largest message a fuzzed session accepts, in bytes.
const MAX_MESSAGE: usize = 1024;

/// Byte-at-a-time feeding costs one tungstenite read per byte: only for
/// inputs up to this size, so long inputs do not slow the fuzzer down.
const BYTEWISE_MAX: usize = 512;

/// A message event as `serde_json` writes it, fields in the same order.
#[derive(serde::Serialize)]
struct BySerde<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    room: &'a str,
    id: u64,
    username: &'a str,
    message: &'a str,
    ts: u64,
}

fn check_name(name: &str) {
    let Some(clean) = protocol::clean_name(name) else { return };
    let count = clean.chars().count();
    assert!((1..=32).contains(&count), "clean_name({name:?}) = {clean:?} has {count} chars");
    assert_eq!(clean, clean.trim(), "clean_name({name:?}) = {clean:?} is not trimmed");
    assert!(!clean.chars().any(char::is_control), "clean_name({name:?}) = {clean:?} has a control char");
}

fn json(text: &str, what: &str) -> serde_json::Value {
    match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => panic!("{what} is not JSON ({e}): {text:?}"),
    }
}

fn check_text(text: &str) {
    check_name(text);
    if let Ok(post) = protocol::parse_post(text, MAX_CHARS) {
        let chars = post.message.chars().count();
        assert!(chars <= MAX_CHARS, "parse_post kept a message of {chars} chars");
        if let Some(name) = &post.username {
            check_name(name);
        }
        // The events built from a post must give its text back verbatim.
        let name = post.username.as_deref().and_then(protocol::clean_name).unwrap_or_else(|| "guest".into());
        let event = protocol::message_json("welcome", 7, &name, &post.message, 1_700_000_000_000);
        let v = json(&event, "message_json");
        assert_eq!(v["message"].as_str(), Some(&*post.message));
        // Built by hand, byte for byte what serde_json writes, and read back whole.
        let by_serde = BySerde { kind: "message", room: "welcome", id: 7, username: &name, message: &post.message, ts: 1_700_000_000_000 };
        assert_eq!(event, serde_json::to_string(&by_serde).unwrap(), "message_json differs from serde_json");
        let back = protocol::parse_message_event(event.as_bytes()).expect("message_json reads back");
        assert_eq!((&*back.username, &*back.message, back.id), (name.as_str(), &*post.message, 7));
        assert_eq!(v["username"].as_str(), Some(name.as_str()));
        let welcome = protocol::welcome_json("welcome", &name, &[name.as_str()], 1, &[event.as_str()], 7);
        let w = json(&welcome, "welcome_json");
        assert_eq!(w["history"][0], v);
        assert_eq!(w["username"].as_str(), Some(name.as_str()));
    }
    json(&echo_room::reply(text), "echo_room::reply");
}

/// Feeds `data` to a fresh session in pieces of `chunk` bytes (then the end
/// of the stream) and returns the messages and the final state.
fn run_session(data: &[u8], chunk: usize) -> (Vec<Message>, Closing, Closing) {
    let mut session = Session::new(MAX_MESSAGE, None);
    let mut out = OutQueue::new();
    let mut messages = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        session.feed(piece, false, &mut out, &mut messages, usize::MAX);
    }
    let before_eof = session.closing();
    session.feed(&[], true, &mut out, &mut messages, usize::MAX);
    (messages, before_eof, session.closing())
}

fn check_session(data: &[u8]) {
    let whole = run_session(data, data.len());
    let mut chunkings = vec![3, 64, data.len().div_ceil(2)];
    if data.len() <= BYTEWISE_MAX {
        chunkings.push(1);
    }
    for chunk in chunkings {
        let split = run_session(data, chunk);
        assert_eq!(split.0, whole.0, "messages differ when fed in {chunk}-byte chunks");
        assert_eq!(split.1, whole.1, "closing state differs when fed in {chunk}-byte chunks");
        assert_eq!(split.2, whole.2, "closing state after EOF differs when fed in {chunk}-byte chunks");
    }
    assert_eq!(whole.2, Closing::Done, "a session is not over after the end of the stream");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text);
    }
    check_session(data);
});
