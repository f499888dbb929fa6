//! Fuzz target: the WebSocket opening handshake (RFC 6455 §4.2.1).
//!
//! Bytes → `http::parse_head` → `handshake::validate`. An accepted upgrade
//! must carry a `Sec-WebSocket-Accept` that is 28 characters of base64 and
//! equals tungstenite's own `derive_accept_key` of the client's key (§4.2.2
//! step 5.4), and `response_101` must build a complete head around it.
//! Every request is validated twice: with no extra allowed origins (the
//! default), and with a `--allow-origin` list, so the origin check's
//! comparison runs on whatever Origin the fuzzer invents.
#![no_main]

use chatroom::handshake;
use chatroom::http;
use chatroom::route::{self, Endpoint};
use libfuzzer_sys::fuzz_target;

fn is_base64_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = http::parse_head(data) else { return };
    let _ = handshake::wants_upgrade(&head);
    let allow = ["example.com".to_string(), "localhost:8000".to_string()];
    for allow_origin in [&[][..], &allow[..]] {
        let upgrade = match handshake::validate(&head, allow_origin) {
            Ok(upgrade) => upgrade,
            Err(refusal) => {
                assert!((400..500).contains(&refusal.status), "refusal with status {}", refusal.status);
                assert!(!refusal.label.is_empty() && !refusal.reason.is_empty());
                continue;
            }
        };
        let accept = &upgrade.accept;
        assert_eq!(accept.len(), 28, "accept {accept:?} is not 28 characters");
        assert!(accept.bytes().all(is_base64_char), "accept {accept:?} is not base64");
        assert!(accept.ends_with('='), "accept {accept:?} lacks the padding of a 20-byte digest");
        assert_eq!(*accept, tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes()));
        assert_eq!(route::endpoint(head.path()).ok(), Some(upgrade.endpoint.clone()));
        if let Endpoint::Room(name) = &upgrade.endpoint {
            assert!(route::valid_room_name(name));
        }

        let response = handshake::response_101(accept, None);
        assert!(response.starts_with(b"HTTP/1.1 101 "), "response_101 does not start with the status line");
        assert!(response.ends_with(b"\r\n\r\n"), "response_101 is not a complete head");
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut headers);
        assert_eq!(parsed.parse(&response).ok(), Some(httparse::Status::Complete(response.len())));
        assert_eq!(parsed.code, Some(101));
    }
});
