//! The two echo endpoints, end to end over real sockets: `/ws/echo` (raw)
//! and `/ws/chatroom/echo` (the original JSON echo room).

mod common;

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
