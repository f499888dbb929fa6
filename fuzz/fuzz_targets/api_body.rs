//! Fuzz target: a request body sent to the server API (`--api-key`), from
//! the bytes on the socket to the checked request.
//!
//! The bytes are a body twice over. First as it arrives: behind a POST head
//! with their length as Content-Length, cut into pieces whose sizes come
//! from the first byte, through `http::RequestReader` keeping bodies (as
//! the reactor does for the API's POSTs). The request must come out whole,
//! its body exactly the bytes sent, however TCP cut them. Then as JSON:
//! `api_body::new_message` and `api_body::kick` must never panic, and what
//! they accept holds what the server relies on: a message within the
//! character limit under a clean name, a kick naming exactly one non-empty
//! target.
#![no_main]

use chatroom::api_body;
use chatroom::chat::KickTarget;
use chatroom::chat::protocol::clean_name;
use chatroom::http::{Framed, RequestReader};
use libfuzzer_sys::fuzz_target;

/// The `--max-text` we fuzz with (the server's default).
const MAX_CHARS: usize = 4096;

fuzz_target!(|data: &[u8]| {
    check_framing(data);
    check_parsers(data);
});

/// The body through the request reader, cut anywhere.
fn check_framing(data: &[u8]) {
    let head = format!(
        "POST /api/rooms/r/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    let stream: Vec<u8> = head.bytes().chain(data.iter().copied()).collect();
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut reader = RequestReader::new().with_bodies(|_| true);
    let mut bodies = Vec::new();
    for piece in stream.chunks(step) {
        reader.push(piece);
        loop {
            match reader.next(1 << 20) {
                Framed::Incomplete => break,
                Framed::Request(request) => bodies.push(request.body),
                Framed::Continue => {}
                Framed::Reject { status, .. } => panic!("a well-formed POST refused with {status}"),
            }
        }
    }
    assert_eq!(bodies.len(), 1, "one request");
    assert_eq!(bodies[0], data, "the body is the bytes sent");
}

/// The body's JSON, as the API reads it.
fn check_parsers(data: &[u8]) {
    if let Ok(m) = api_body::new_message(data, MAX_CHARS) {
        assert!(m.message.chars().count() <= MAX_CHARS, "a message over the limit");
        assert_eq!(clean_name(&m.username).as_deref(), Some(m.username.as_str()), "an unclean name");
    }
    if let Ok(k) = api_body::kick(data) {
        let named = match &k.target {
            KickTarget::Name(name) => name,
            KickTarget::User(sub) => sub,
        };
        assert!(!named.is_empty(), "a kick naming nobody");
    }
}
