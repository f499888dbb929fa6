//! The two echo endpoints, end to end over real sockets: `/ws/echo` (raw)
//! and `/ws/chatroom/echo` (the original JSON echo room).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn raw_echo_text_binary_and_empty() {
    let server = TestServer::start();
    let mut c = ws(server.addr, "/ws/echo");
    for msg in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(""),
        Message::binary(Vec::<u8>::new()),
        Message::text("é".repeat(1000)),
    ] {
        c.send(msg.clone()).unwrap();
        assert_eq!(c.read().unwrap(), msg);
    }
}

#[test]
fn echo_room_greets_and_echoes() {
    let server = TestServer::start();
    let mut c = ws(server.addr, "/ws/chatroom/echo/");
    let greeting = recv_json(&mut c);
    assert_eq!(greeting["message"], "You are connected to the Echo Room!");
    assert_eq!(greeting["status"], "connected");
    send_text(&mut c, r#"{"message": "hi there"}"#);
    assert_eq!(recv_json(&mut c), serde_json::json!({"message": "hi there"}));
    send_text(&mut c, "not json");
    let err = recv_json(&mut c);
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "bad_json");
    // Still open after the error.
    send_text(&mut c, r#"{"message": 42}"#);
    assert_eq!(recv_json(&mut c), serde_json::json!({"message": 42}));
    c.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(recv_close(&mut c), Some(u16::from(CloseCode::Unsupported)));
}

/// A server whose largest message is `max` bytes.
fn server_with_max_message(max: usize) -> TestServer {
    let mut cfg = config();
    cfg.max_message = max;
    TestServer::with(cfg)
}

#[test]
fn raw_echo_accepts_exactly_max_message_and_closes_1009_above() {
    const MAX: usize = 64 * 1024;
    let server = server_with_max_message(MAX);
    let mut c = ws(server.addr, "/ws/echo");
    let text = Message::text("t".repeat(MAX));
    c.send(text.clone()).unwrap();
    assert_eq!(c.read().unwrap(), text);
    let bin = Message::binary((0..MAX).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    c.send(bin.clone()).unwrap();
    assert_eq!(c.read().unwrap(), bin);
    c.send(Message::binary(vec![7u8; MAX + 1])).unwrap();
    assert_eq!(recv_close(&mut c), Some(u16::from(CloseCode::Size)));
}

#[test]
fn echo_room_accepts_exactly_max_message_and_closes_1009_above() {
    const MAX: usize = 1024;
    let server = server_with_max_message(MAX);
    let mut c = ws(server.addr, "/ws/chatroom/echo");
    assert_eq!(recv_json(&mut c)["status"], "connected");
    // `{"message": "xxx…"}` padded to exactly MAX bytes.
    let shell = r#"{"message": ""}"#.len();
    let fill = "x".repeat(MAX - shell);
    let exact = format!(r#"{{"message": "{fill}"}}"#);
    assert_eq!(exact.len(), MAX);
    send_text(&mut c, &exact);
    assert_eq!(recv_json(&mut c)["message"], fill.as_str());
    send_text(&mut c, &format!(r#"{{"message": "{fill}y"}}"#));
    assert_eq!(recv_close(&mut c), Some(u16::from(CloseCode::Size)));
}

#[test]
fn fragmented_text_is_reassembled_and_a_ping_between_fragments_answered_first() {
    let server = TestServer::start();
    for path in ["/ws/echo", "/ws/echo/"] {
        let (mut s, mut buf) = raw_ws(server.addr, path);
        let mut first = client_frame(OP_TEXT, false, "Hello, wö".as_bytes(), true);
        first.extend(client_frame(OP_PING, true, b"between", true));
        s.write_all(&first).unwrap();
        // The pong comes while the message is still incomplete.
        assert_eq!(read_frame(&mut s, &mut buf), RawFrame { fin: true, opcode: OP_PONG, payload: b"between".to_vec() });
        let mut rest = client_frame(OP_CONT, false, "rld".as_bytes(), true);
        rest.extend(client_frame(OP_CONT, true, "!".as_bytes(), true));
        s.write_all(&rest).unwrap();
        let echoed = read_frame(&mut s, &mut buf);
        assert_eq!(echoed, RawFrame { fin: true, opcode: OP_TEXT, payload: "Hello, wörld!".as_bytes().to_vec() });
    }
}

#[test]
fn fragmented_binary_written_a_few_bytes_at_a_time_is_reassembled() {
    let server = TestServer::start();
    let (mut s, mut buf) = raw_ws(server.addr, "/ws/echo");
    let payload: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let mut bytes = client_frame(OP_BINARY, false, &payload[..100], true);
    bytes.extend(client_frame(OP_CONT, false, &payload[100..101], true));
    bytes.extend(client_frame(OP_PING, true, b"", true));
    bytes.extend(client_frame(OP_CONT, true, &payload[101..], true));
    for chunk in bytes.chunks(5) {
        s.write_all(chunk).unwrap();
    }
    assert_eq!(read_frame(&mut s, &mut buf), RawFrame { fin: true, opcode: OP_PONG, payload: vec![] });
    assert_eq!(read_frame(&mut s, &mut buf), RawFrame { fin: true, opcode: OP_BINARY, payload });
}

#[test]
fn fragments_adding_up_past_max_message_close_1009() {
    const MAX: usize = 1000;
    let server = server_with_max_message(MAX);
    let (mut s, mut buf) = raw_ws(server.addr, "/ws/echo");
    let mut bytes = client_frame(OP_TEXT, false, &[b'a'; 600], true);
    bytes.extend(client_frame(OP_CONT, true, &[b'b'; 401], true));
    s.write_all(&bytes).unwrap();
    assert_eq!(read_frame(&mut s, &mut buf).close_code(), Some(1009));
    assert!(rest_until_close(&mut s, &mut buf).is_empty());
}

#[test]
fn ping_gets_pong_with_the_same_payload() {
    let server = TestServer::start();
    let (mut s, mut buf) = raw_ws(server.addr, "/ws/echo");
    for payload in [&b""[..], b"ping!", &[0xffu8; 125][..]] {
        s.write_all(&client_frame(OP_PING, true, payload, true)).unwrap();
        assert_eq!(read_frame(&mut s, &mut buf), RawFrame { fin: true, opcode: OP_PONG, payload: payload.to_vec() });
    }
    // And through a client library, on the JSON echo room too.
    let mut c = ws(server.addr, "/ws/chatroom/echo");
    assert_eq!(recv_json(&mut c)["status"], "connected");
    c.send(Message::Ping(b"room ping".to_vec().into())).unwrap();
    assert_eq!(c.read().unwrap(), Message::Pong(b"room ping".to_vec().into()));
}

#[test]
fn client_close_1000_gets_close_1000_then_tcp_close() {
    let server = TestServer::start();
    for path in ["/ws/echo", "/ws/chatroom/echo"] {
        let (mut s, mut buf) = raw_ws(server.addr, path);
        if path == "/ws/chatroom/echo" {
            assert_eq!(read_frame(&mut s, &mut buf).opcode, OP_TEXT, "the greeting");
        }
        s.write_all(&client_frame(OP_CLOSE, true, &close_payload(1000, "bye"), true)).unwrap();
        let reply = read_frame(&mut s, &mut buf);
        assert_eq!(reply.close_code(), Some(1000), "{path}");
        assert!(closed_by_peer(&mut s), "{path}: the server should close TCP after the close handshake");
    }
}

#[test]
fn invalid_utf8_text_closes_1007() {
    let server = TestServer::start();
    // Whole, and split so that only the reassembled message is invalid.
    let whole = client_frame(OP_TEXT, true, b"ok \xff\xfe", true);
    let mut split = client_frame(OP_TEXT, false, b"caf\xc3", true);
    split.extend(client_frame(OP_CONT, true, b"(", true));
    for (i, bytes) in [whole, split].into_iter().enumerate() {
        let (mut s, mut buf) = raw_ws(server.addr, "/ws/echo");
        s.write_all(&bytes).unwrap();
        let reply = read_frame(&mut s, &mut buf);
        assert_eq!(reply.close_code(), Some(1007), "case {i}: {reply:?}");
        assert!(rest_until_close(&mut s, &mut buf).is_empty(), "case {i}: nothing was echoed");
    }
}

#[test]
fn unmasked_client_frame_closes_1002() {
    let server = TestServer::start();
    let (mut s, mut buf) = raw_ws(server.addr, "/ws/echo");
    // A masked message first works...
    s.write_all(&client_frame(OP_TEXT, true, b"masked", true)).unwrap();
    assert_eq!(read_frame(&mut s, &mut buf).payload, b"masked");
    // ...an unmasked one is a protocol error and is not echoed.
    s.write_all(&client_frame(OP_TEXT, true, b"unmasked", false)).unwrap();
    let reply = read_frame(&mut s, &mut buf);
    assert_eq!(reply.close_code(), Some(1002), "{reply:?}");
    assert!(rest_until_close(&mut s, &mut buf).is_empty());
}

#[test]
fn thousand_concurrent_echo_clients_each_get_their_own_message_back() {
    const CLIENTS: usize = 1_000;
    const LIMIT: Duration = Duration::from_secs(60);
    // Each client costs this process two descriptors (ours and the server's).
    let limit = raise_fd_limit(4 * CLIENTS as u64 + 256);
    assert!(limit >= 2 * CLIENTS as u64 + 64, "RLIMIT_NOFILE {limit} is too low for this test");
    let server = TestServer::start();
    let started = Instant::now();
    // All open at once, from one thread.
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| ws(server.addr, "/ws/echo")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(Message::text(format!("message from client {i}"))).unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.read().unwrap(), Message::text(format!("message from client {i}")), "client {i}");
    }
    let elapsed = started.elapsed();
    assert!(elapsed < LIMIT, "1,000 clients took {elapsed:?}");
    // They are all still open and still served, the first after the last.
    for i in [CLIENTS - 1, 0] {
        clients[i].send(Message::binary(vec![i as u8; 3])).unwrap();
        assert_eq!(clients[i].read().unwrap(), Message::binary(vec![i as u8; 3]));
    }
}
