//! Backpressure (`--max-posts-in-flight`): a client that writes posts
//! faster than they are stored is not read until some are, and nothing is
//! lost, repeated or refused on the way; a client paused that way is not
//! dropped by the ping timeout.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// A masked text frame carrying the post `text`.
fn post_frame(text: &str) -> Vec<u8> {
    client_frame(OP_TEXT, true, serde_json::json!({ "message": text }).to_string().as_bytes(), true)
}

/// The next chat event on a raw WebSocket (skipping pings and others'
/// presence), as JSON; pings are counted in `pings`.
fn next_event(s: &mut std::net::TcpStream, buf: &mut Vec<u8>, pings: &mut usize) -> serde_json::Value {
    loop {
        let frame = read_frame(s, buf);
        match frame.opcode {
            OP_TEXT => return serde_json::from_slice(&frame.payload).unwrap(),
            0x9 => *pings += 1,
            other => panic!("unexpected frame {other:#x}: {frame:?}"),
        }
    }
}

/// Reads `count` message events (every other event must be presence or a
/// welcome): none may be an error. Returns their (id, text).
fn messages(s: &mut std::net::TcpStream, buf: &mut Vec<u8>, count: usize, pings: &mut usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < count {
        let event = next_event(s, buf, pings);
        match event["type"].as_str() {
            Some("message") => {
                got.push((event["id"].as_u64().unwrap(), event["message"].as_str().unwrap().to_string()))
            }
            Some("presence" | "welcome") => {}
            _ => panic!("after {} messages: {event}", got.len()),
        }
    }
    got
}

#[test]
fn a_burst_of_thousands_of_posts_is_stored_once_in_order_with_reads_paused() {
    const POSTS: usize = 3000;
    let dir = temp_dir("pressure");
    let mut cfg = config();
    cfg.rate_limit = 0;
    cfg.max_posts_in_flight = 4;
    let server = TestServer::with_sqlite(cfg, &dir);
    let (mut s, mut buf) = raw_ws(server.addr, "/ws/chatroom/flood?username=f");
    let mut pings = 0;
    assert_eq!(next_event(&mut s, &mut buf, &mut pings)["type"], "welcome");

    // All of it in one go, from another thread: the server's copies come
    // back while it is still being written.
    let burst: Vec<u8> = (0..POSTS).flat_map(|i| post_frame(&format!("m{i}"))).collect();
    let mut writer = s.try_clone().unwrap();
    let writing = std::thread::spawn(move || writer.write_all(&burst).unwrap());
    let got = messages(&mut s, &mut buf, POSTS, &mut pings);
    writing.join().unwrap();
    let expected: Vec<(u64, String)> = (0..POSTS).map(|i| (i as u64 + 1, format!("m{i}"))).collect();
    assert!(got == expected, "copies out of order, repeated or missing");
    assert!(metric(server.addr, "chatroom_reads_paused_total") > 0.0, "the flood was never paused");
    assert_eq!(metric(server.addr, "chatroom_rate_limited_total"), 0.0);

    // And in the file: each once, in order.
    drop(s);
    server.stop();
    let db = rusqlite::Connection::open(dir.join("chatroom.db")).unwrap();
    let mut rows = db.prepare("SELECT id, text FROM messages WHERE room = 'flood' ORDER BY id").unwrap();
    let stored: Vec<(u64, String)> = rows
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(stored == expected, "stored {} rows, not the {POSTS} posts in order", stored.len());
}

/// Posts through `redis`, two in flight at most, no rate limit, and a
/// Redis that may stay frozen for a minute before it counts as down.
fn patient_config(redis: &RedisServer) -> chatroom::Config {
    let mut cfg = config();
    cfg.redis = Some(redis.url());
    cfg.redis_timeout = Duration::from_secs(60);
    cfg.rate_limit = 0;
    cfg.max_posts_in_flight = 2;
    cfg
}

#[test]
fn a_client_paused_for_its_posts_is_not_dropped_by_the_ping_timeout() {
    // Redis frozen (SIGSTOP): the posts wait for its answer, for real.
    let redis = RedisServer::start(false);
    let mut cfg = patient_config(&redis);
    cfg.ping_interval = Duration::from_millis(200);
    cfg.ping_timeout = Duration::from_millis(200);
    let server = TestServer::with(cfg);
    let (mut s, mut buf) = raw_ws(server.addr, "/ws/chatroom/frozen?username=a");
    assert_eq!(next_event(&mut s, &mut buf, &mut 0)["type"], "welcome");

    redis.signal(libc::SIGSTOP);
    let burst: Vec<u8> = (0..10).flat_map(|i| post_frame(&format!("p{i}"))).collect();
    s.write_all(&burst).unwrap();
    // We never answer a ping. Three of them mean the first one's timeout
    // passed, and the next one's too, with the connection kept: its pongs
    // could not have been read while it was paused.
    let mut pings = 0;
    while pings < 3 {
        let frame = read_frame(&mut s, &mut buf);
        match frame.opcode {
            0x9 => pings += 1,
            OP_TEXT => panic!("nothing may come while Redis is frozen: {:?}", String::from_utf8_lossy(&frame.payload)),
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    assert!(metric(server.addr, "chatroom_reads_paused_total") > 0.0);
    redis.signal(libc::SIGCONT);

    let got = messages(&mut s, &mut buf, 10, &mut pings);
    let expected: Vec<(u64, String)> = (0..10).map(|i| (i as u64 + 1, format!("p{i}"))).collect();
    assert_eq!(got, expected);
}

/// An upgrade, more posts than may be in flight and the client's FIN, all
/// in one write: the posts held back are still decoded and stored once
/// the first ones complete, before the connection finishes.
#[test]
fn posts_held_back_behind_a_fin_are_still_stored() {
    // Redis frozen (SIGSTOP): the first posts stay in flight for certain
    // while the rest of the write and the FIN are read.
    let redis = RedisServer::start(false);
    let server = TestServer::with(patient_config(&redis));
    assert!(eventually(IO_TIMEOUT, || get(server.addr, "/readyz").json()["redis"] == "up"));

    redis.signal(libc::SIGSTOP);
    let mut s = tcp(server.addr);
    // A scroll-back first: its answer waits for the frozen Redis, so the
    // upgrade behind it is handled only after the FIN was read.
    let mut all = format!("GET /api/rooms HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).into_bytes();
    all.extend(upgrade_request(server.addr, "/ws/chatroom/finned?username=f", "").into_bytes());
    all.extend((0..10).flat_map(|i| post_frame(&format!("p{i}"))));
    s.write_all(&all).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    redis.signal(libc::SIGCONT);

    let texts = || -> Vec<String> {
        let page = get(server.addr, "/api/rooms/finned/messages").json();
        page["messages"]
            .as_array()
            .map_or(Vec::new(), |m| m.iter().map(|m| m["message"].as_str().unwrap_or_default().to_string()).collect())
    };
    let expected: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    assert!(eventually(IO_TIMEOUT, || texts() == expected), "stored: {:?}", texts());
    assert!(metric(server.addr, "chatroom_reads_paused_total") > 0.0, "the posts were never held back");
}
