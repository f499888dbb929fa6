//! Graceful shutdown of the real binary: on SIGTERM or SIGINT it stops
//! taking WebSockets, says 1001 to every open one, answers `/readyz` with
//! 503 until it exits, commits the history still pending, and exits 0
//! within 5 seconds.
//!
//! `/readyz` and `/metrics` are read *during* the drain on purpose: the
//! listener stays open so that a load balancer can see the 503.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

/// The longest a graceful shutdown may take.
const EXIT_WITHIN: Duration = Duration::from_secs(5);

/// Reads until the server's close frame (its code), then lets tungstenite
/// answer it and reads on until the connection is over.
fn close_code_and_reply(c: &mut Client) -> (Option<u16>, u64) {
    let mut messages = 0;
    let code = loop {
        match c.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(tungstenite::Message::Text(t)) if t.as_str().starts_with(r#"{"type":"message""#) => messages += 1,
            Ok(_) => {}
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    // The reply close frame leaves with the next read; the server then ends
    // the TCP connection.
    while c.read().is_ok() {}
    (code, messages)
}

/// `GET /healthz` on an open connection.
fn ask_healthz(s: &mut std::net::TcpStream, addr: SocketAddr) -> HttpResponse {
    use std::io::Write;
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    read_response(s, &mut Vec::new(), false)
}

/// Every message id stored for `room`, paging back through the history API.
fn stored_ids(addr: SocketAddr, room: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut before = u64::MAX;
    loop {
        let page = get(addr, &format!("/api/rooms/{room}/messages?limit=200&before={before}")).json();
        let batch: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
        let Some(&oldest) = batch.first() else { break };
        ids.splice(0..0, batch);
        before = oldest;
    }
    ids
}

#[test]
fn sigterm_says_1001_commits_what_was_posted_and_exits_0() {
    let dir = temp_dir("sigterm");
    let db = dir.join("chatroom.db");
    let args = ["--data", db.to_str().unwrap(), "--rate-limit", "0"];
    let mut server = RealServer::spawn(&[], &args);
    let a = server.addr;
    let mut poster = ws(a, "/ws/chatroom/bye?username=poster");
    let mut listener = ws(a, "/ws/chatroom/bye?username=listener");
    recv_type(&mut poster, "welcome");
    recv_type(&mut listener, "welcome");
    let mut post_burst = |from: u64, to: u64| {
        for i in from..=to {
            poster.write(tungstenite::Message::text(format!(r#"{{"message": "m{i}"}}"#))).unwrap();
        }
        poster.flush().unwrap();
    };
    // A first burst the server has surely read, then a second one with the
    // signal right behind it: part of it is read before the signal (and
    // must be stored, though still on its way to the disk), part after
    // (and is not posted at all).
    post_burst(1, 200);
    assert!(eventually(Duration::from_secs(10), || metric(a, "chatroom_messages_received_total") == 200.0));
    post_burst(201, 2000);
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // Once /metrics says "not ready", the count of posts read is final.
    let mut received = 0.0;
    assert!(eventually(Duration::from_secs(2), || {
        let text = get(a, "/metrics").text();
        let value = |name: &str| -> f64 {
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap()
        };
        received = value("chatroom_messages_received_total");
        value("chatroom_ready") == 0.0
    }));
    let received = received as u64;

    let (code, seen) = close_code_and_reply(&mut listener);
    assert_eq!(code, Some(1001), "the listener's close code");
    assert_eq!(close_code_and_reply(&mut poster).0, Some(1001), "the poster's close code");
    // Clients that answered the close go away, as a browser would.
    drop((listener, poster));
    let status = server.wait_exit(EXIT_WITHIN).expect("still running 5 s after SIGTERM");
    println!(
        "SIGTERM: {status} after {:?}; {received} posts read, {seen} broadcast before the 1001",
        signalled.elapsed()
    );
    assert!(status.success(), "{status}");

    // Everything the server had read is in the history after a restart.
    let restarted = RealServer::spawn(&[], &args);
    assert_eq!(stored_ids(restarted.addr, "bye"), (1..=received).collect::<Vec<_>>());
    drop(restarted);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn readyz_answers_503_from_the_signal_until_exit() {
    let mut server = RealServer::spawn(&[], &["--data", "none"]);
    let a = server.addr;
    assert_eq!(get(a, "/readyz").status, 200);
    // A client that will not answer the close frame keeps the server
    // draining for a while (it waits a little for a reply before dropping it).
    let (mut stubborn, mut buf) = raw_ws(a, "/ws/echo");
    // A client that connected but has not sent its request yet: it must
    // still get an answer after the signal, not a reset.
    let mut early = tcp(a);
    assert!(eventually(Duration::from_secs(2), || metric(a, "chatroom_http_connections") == 2.0));
    server.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // The signal is handled on the server's next loop turn: poll until then.
    assert!(eventually(Duration::from_secs(2), || get(a, "/readyz").status == 503), "/readyz never said 503");
    assert!(server.is_running(), "exited before /readyz could be read");
    let r = get(a, "/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["ready"], false);
    let r = ask_healthz(&mut early, a);
    assert_eq!(r.status, 200, "a request sent after the signal on an earlier connection");
    assert_eq!(r.header("connection"), Some("close"), "every answer is the last while draining");
    // While draining, no new WebSockets.
    let r = request(a, &upgrade_request(a, "/ws/echo", ""));
    assert_eq!(r.status, 503, "an upgrade while draining: {}", r.text());
    assert!(server.is_running());
    assert_eq!(read_until_close_frame(&mut stubborn, &mut buf), Some(1001));
    let status = server.wait_exit(EXIT_WITHIN).expect("still running 5 s after SIGTERM");
    assert!(status.success(), "{status}");
    println!("SIGTERM with an unresponsive client: exit after {:?}", signalled.elapsed());
    assert!(signalled.elapsed() < EXIT_WITHIN);
}

#[test]
fn sigint_shuts_down_the_same_way() {
    let mut server = RealServer::spawn(&[], &["--data", "none"]);
    let mut member = ws(server.addr, "/ws/chatroom/ctrl-c?username=a");
    recv_type(&mut member, "welcome");
    let mut echo = ws(server.addr, "/ws/echo");
    let signalled = Instant::now();
    server.signal(libc::SIGINT);
    assert_eq!(close_code_and_reply(&mut member).0, Some(1001));
    assert_eq!(close_code_and_reply(&mut echo).0, Some(1001));
    drop((member, echo));
    let status = server.wait_exit(EXIT_WITHIN).expect("still running 5 s after SIGINT");
    assert!(status.success(), "{status}");
    println!("SIGINT: exit after {:?}", signalled.elapsed());
}
