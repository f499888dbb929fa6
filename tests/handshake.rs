//! The WebSocket opening handshake by hand (RFC 6455 §4.2), over real
//! sockets: what gets a 101, what gets which refusal, the Origin policy, and
//! a first frame that arrives in the same write as the head.

mod common;

use std::io::Write;
use std::net::SocketAddr;

use common::*;
use tungstenite::handshake::derive_accept_key;

/// Sends `raw` on a new connection; returns the answer and, for a refusal,
/// checks the connection is closed right after it.
fn handshake(addr: SocketAddr, raw: &str) -> HttpResponse {
    let mut s = tcp(addr);
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false);
    if r.status != 101 {
        assert_eq!(r.header("connection"), Some("close"), "a refused upgrade closes: {raw:?}");
        assert!(r.header("sec-websocket-accept").is_none());
        assert!(rest_until_close(&mut s, &mut buf).is_empty(), "bytes after a refusal");
    }
    r
}

/// An upgrade request for `/ws/echo` built from explicit header lines.
fn upgrade_with(addr: SocketAddr, headers: &str) -> String {
    format!("GET /ws/echo HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n")
}

const VERSION: &str = "Sec-WebSocket-Version: 13\r\n";

fn key_line(key: &str) -> String {
    format!("Sec-WebSocket-Key: {key}\r\n")
}

#[test]
fn good_upgrade_gets_101_with_the_right_accept_key() {
    let server = TestServer::start();
    for key in [WS_KEY, "AQIDBAUGBwgJCgsMDQ4PEA==", "x3JJHMbDL1EzLkh9GBhXDw=="] {
        let raw = upgrade_with(
            server.addr,
            &format!("Upgrade: websocket\r\nConnection: Upgrade\r\n{VERSION}{}", key_line(key)),
        );
        let r = handshake(server.addr, &raw);
        assert_eq!(r.status, 101, "{}", r.text());
        assert_eq!(r.header("sec-websocket-accept"), Some(derive_accept_key(key.as_bytes()).as_str()));
        assert!(r.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
        assert!(r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    }
    // RFC 6455 §1.3's worked example, as a fixed point.
    let r = handshake(server.addr, &upgrade_request(server.addr, "/ws/echo", ""));
    assert_eq!(r.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

#[test]
fn upgrade_and_connection_tokens_match_case_insensitively_in_lists() {
    let server = TestServer::start();
    let key = key_line(WS_KEY);
    for tokens in [
        "upgrade: WebSocket\r\nconnection: upgrade\r\n",
        "UPGRADE: WEBSOCKET\r\nCONNECTION: UPGRADE\r\n",
        "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n",
        "Upgrade: websocket\r\nConnection: keep-alive,upgrade\r\n",
        "Upgrade: websocket\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n",
        "Upgrade: h2c, websocket\r\nConnection: Upgrade, HTTP2-Settings\r\n",
    ] {
        let r = handshake(server.addr, &upgrade_with(server.addr, &format!("{tokens}{VERSION}{key}")));
        assert_eq!(r.status, 101, "{tokens:?}: {}", r.text());
    }
}

#[test]
fn missing_upgrade_or_connection_token_gets_400() {
    let server = TestServer::start();
    let rest = format!("{VERSION}{}", key_line(WS_KEY));
    for tokens in [
        "Connection: Upgrade\r\n",
        "Upgrade: websocket\r\n",
        "Upgrade: websocket\r\nConnection: keep-alive\r\n",
        "Upgrade: websockets\r\nConnection: Upgrade\r\n",
        "Upgrade: h2c\r\nConnection: Upgrade\r\n",
        "Upgrade: websocket\r\nConnection: Upgraded\r\n",
        "",
    ] {
        let r = handshake(server.addr, &upgrade_with(server.addr, &format!("{tokens}{rest}")));
        assert_eq!(r.status, 400, "{tokens:?}");
    }
}

#[test]
fn websocket_version_other_than_13_gets_426_naming_13() {
    let server = TestServer::start();
    let key = key_line(WS_KEY);
    for version in
        ["Sec-WebSocket-Version: 8\r\n", "Sec-WebSocket-Version: 14\r\n", "Sec-WebSocket-Version: 13x\r\n", ""]
    {
        let raw = upgrade_with(server.addr, &format!("Upgrade: websocket\r\nConnection: Upgrade\r\n{version}{key}"));
        let r = handshake(server.addr, &raw);
        assert_eq!(r.status, 426, "{version:?}");
        assert_eq!(r.header("sec-websocket-version"), Some("13"), "{version:?}");
    }
}

#[test]
fn key_that_is_not_16_bytes_of_base64_gets_400() {
    let server = TestServer::start();
    for key in [
        "".to_string(),
        key_line("dG9vc2hvcnQ="),                            // 8 bytes
        key_line("AQIDBAUGBwgJCgsMDQ4PEBES"),                // 18 bytes
        key_line("!!!!not-base64-at-all!!!"),                // not base64
        key_line("dGhlIHNhbXBsZSBub25jZQ"),                  // unpadded
        format!("{}{}", key_line(WS_KEY), key_line(WS_KEY)), // two keys
    ] {
        let raw = upgrade_with(server.addr, &format!("Upgrade: websocket\r\nConnection: Upgrade\r\n{VERSION}{key}"));
        assert_eq!(handshake(server.addr, &raw).status, 400, "{key:?}");
    }
}

#[test]
fn unknown_ws_path_gets_404_and_bad_room_name_400() {
    let server = TestServer::start();
    for path in ["/ws/nope", "/ws/", "/ws/chatroom/", "/ws/echo/extra"] {
        assert_eq!(handshake(server.addr, &upgrade_request(server.addr, path, "")).status, 404, "{path}");
    }
    let long = format!("/ws/chatroom/{}", "x".repeat(65));
    for path in ["/ws/chatroom/bad.name", "/ws/chatroom/a%20b", "/ws/chatroom/a/b", long.as_str()] {
        assert_eq!(handshake(server.addr, &upgrade_request(server.addr, path, "")).status, 400, "{path}");
    }
    // A good room name upgrades, with or without the trailing slash.
    for path in ["/ws/chatroom/welcome", "/ws/chatroom/welcome/", "/ws/chatroom/echo/"] {
        assert_eq!(handshake(server.addr, &upgrade_request(server.addr, path, "")).status, 101, "{path}");
    }
}

#[test]
fn upgrade_that_is_not_a_get_is_refused() {
    let server = TestServer::start();
    let raw = upgrade_request(server.addr, "/ws/echo", "").replacen("GET", "POST", 1);
    assert_eq!(handshake(server.addr, &raw).status, 405);
    let raw = upgrade_request(server.addr, "/ws/echo", "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_eq!(handshake(server.addr, &raw).status, 400);
}

#[test]
fn oversize_upgrade_head_gets_431() {
    let server = TestServer::start();
    let pad = format!("X-Pad: {}\r\n", "p".repeat(9 * 1024));
    let r = handshake(server.addr, &upgrade_request(server.addr, "/ws/echo", &pad));
    assert_eq!(r.status, 431);
}

#[test]
fn first_frame_glued_to_the_head_is_echoed_not_lost() {
    let server = TestServer::start();
    let mut s = tcp(server.addr);
    let mut bytes = upgrade_request(server.addr, "/ws/echo", "").into_bytes();
    bytes.extend(client_frame(OP_TEXT, true, b"sent with the head", true));
    bytes.extend(client_frame(OP_BINARY, true, &[0, 1, 2, 3], true));
    s.write_all(&bytes).unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf, false);
    assert_eq!(r.status, 101);
    assert_eq!(r.header("sec-websocket-accept"), Some(derive_accept_key(WS_KEY.as_bytes()).as_str()));
    assert_eq!(
        read_frame(&mut s, &mut buf),
        RawFrame { fin: true, opcode: OP_TEXT, payload: b"sent with the head".to_vec() }
    );
    assert_eq!(read_frame(&mut s, &mut buf), RawFrame { fin: true, opcode: OP_BINARY, payload: vec![0, 1, 2, 3] });
}

#[test]
fn first_frame_glued_to_the_head_reaches_the_echo_room_after_its_greeting() {
    let server = TestServer::start();
    let mut s = tcp(server.addr);
    let mut bytes = upgrade_request(server.addr, "/ws/chatroom/echo", "").into_bytes();
    bytes.extend(client_frame(OP_TEXT, true, br#"{"message": "early"}"#, true));
    s.write_all(&bytes).unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf, false).status, 101);
    let greeting = read_frame(&mut s, &mut buf);
    assert!(String::from_utf8_lossy(&greeting.payload).contains("You are connected to the Echo Room!"));
    assert_eq!(read_frame(&mut s, &mut buf).payload, br#"{"message": "early"}"#);
}

#[test]
fn origin_must_match_host_unless_allowed() {
    let server = TestServer::start();
    let a = server.addr;
    let with_origin = |origin: &str| upgrade_request(a, "/ws/echo", &format!("Origin: {origin}\r\n"));
    // Same host[:port] as Host, whatever the scheme or case.
    for origin in [format!("http://{a}"), format!("https://{a}"), format!("HTTP://{a}/")] {
        assert_eq!(handshake(a, &with_origin(&origin)).status, 101, "{origin}");
    }
    // No Origin: a non-browser client.
    assert_eq!(handshake(a, &upgrade_request(a, "/ws/echo", "")).status, 101);
    // Another host, another port, or an opaque origin: 403.
    let other_port = format!("http://{}:{}", a.ip(), a.port().wrapping_add(1).max(1));
    for origin in ["http://evil.example", "https://good.example", other_port.as_str(), "null", "http://localhost"] {
        let r = handshake(a, &with_origin(origin));
        assert_eq!(r.status, 403, "{origin}");
    }
}

#[test]
fn allow_origin_list_admits_listed_origins_only() {
    let mut cfg = config();
    cfg.allow_origin = vec!["good.example".into()];
    let server = TestServer::with(cfg);
    let a = server.addr;
    let with_origin = |origin: &str| upgrade_request(a, "/ws/echo", &format!("Origin: {origin}\r\n"));
    for origin in ["https://good.example", "http://good.example", "https://good.example:443"] {
        let r = handshake(a, &with_origin(origin));
        assert_eq!(r.status, 101, "{origin}: {}", r.text());
    }
    for origin in ["https://evil.example", "https://good.example.evil.example", "https://good.example:8443"] {
        assert_eq!(handshake(a, &with_origin(origin)).status, 403, "{origin}");
    }
    // The own host is still allowed besides the list.
    assert_eq!(handshake(a, &with_origin(&format!("http://{a}"))).status, 101);
}

#[test]
fn refused_upgrades_are_counted_by_reason() {
    let server = TestServer::start();
    let name = "chatroom_handshakes_rejected_total{reason=\"version\"}";
    let raw = upgrade_with(server.addr, &format!("Upgrade: websocket\r\nConnection: Upgrade\r\n{}", key_line(WS_KEY)));
    for n in 1..=2 {
        assert_eq!(handshake(server.addr, &raw).status, 426);
        assert_eq!(metric(server.addr, name), f64::from(n));
    }
}
