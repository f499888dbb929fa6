//! Chat rooms over real sockets: broadcast order and ids, names, presence,
//! history, resume, bad frames, and durability across restarts.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tungstenite::Message;

/// Joins `room` and returns the client with its welcome frame.
fn join(server: &TestServer, room: &str, query: &str) -> (Client, Value) {
    let mut c = ws(server.addr, &format!("/ws/chatroom/{room}/{query}"));
    let welcome = recv_type(&mut c, "welcome");
    (c, welcome)
}

fn post(c: &mut Client, text: &str) {
    send_text(c, &serde_json::json!({"message": text}).to_string());
}

#[test]
fn every_member_gets_every_message_once_in_order_with_gapless_ids() {
    let server = TestServer::start();
    let mut clients: Vec<Client> = (0..5).map(|i| join(&server, "order", &format!("?username=u{i}")).0).collect();
    for round in 0..20 {
        for (i, c) in clients.iter_mut().enumerate() {
            post(c, &format!("m{round}-{i}"));
        }
    }
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 100 {
            let m = recv_type(c, "message");
            seen.push((m["id"].as_u64().unwrap(), m["message"].as_str().unwrap().to_string()));
        }
        let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=100).collect::<Vec<u64>>(), "ids are 1..=100 without gaps");
        let texts: HashSet<&String> = seen.iter().map(|(_, t)| t).collect();
        assert_eq!(texts.len(), 100, "no duplicates");
        orders.push(seen);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "every member saw the same order");
}

#[test]
fn message_events_carry_every_field_and_the_senders_name() {
    let server = TestServer::start();
    let (mut a, wa) = join(&server, "fields", "?username=alice");
    assert_eq!(wa["username"], "alice");
    let (mut b, _) = join(&server, "fields", "?username=bob");
    // Bob tries to post as alice: the server stamps his own name.
    send_text(&mut b, r#"{"message": "hello", "username": "alice"}"#);
    for c in [&mut a, &mut b] {
        let m = recv_type(c, "message");
        assert_eq!(m["room"], "fields");
        assert_eq!(m["id"], 1);
        assert_eq!(m["username"], "bob");
        assert_eq!(m["message"], "hello");
        assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }
}

#[test]
fn names_guests_suffixes_and_first_message_rename() {
    let server = TestServer::start();
    let (_a, wa) = join(&server, "names", "?username=%20sam%20");
    assert_eq!(wa["username"], "sam", "trimmed");
    let (_b, wb) = join(&server, "names", "?username=sam");
    assert_eq!(wb["username"], "sam-2", "suffixed");
    let (mut g, wg) = join(&server, "names", "");
    let guest = wg["username"].as_str().unwrap().to_string();
    assert!(guest.starts_with("guest-"), "{guest}");
    // The original client sends its name inside the first message: rename.
    send_text(&mut g, r#"{"message": "hi", "username": "gina"}"#);
    let r = recv_type(&mut g, "rename");
    assert_eq!(r["from"], guest.as_str());
    assert_eq!(r["to"], "gina");
    assert_eq!(recv_type(&mut g, "message")["username"], "gina");
    // Later names are ignored.
    send_text(&mut g, r#"{"message": "again", "username": "other"}"#);
    assert_eq!(recv_type(&mut g, "message")["username"], "gina");
    // A bad name at the handshake: a guest name and a bad_name error.
    let mut c = ws(server.addr, "/ws/chatroom/names?username=%07bell");
    let w = recv_json(&mut c);
    assert_eq!(w["type"], "welcome");
    assert!(w["username"].as_str().unwrap().starts_with("guest-"));
    assert_eq!(recv_type(&mut c, "error")["code"], "bad_name");
}

#[test]
fn join_leave_and_the_online_list() {
    let server = TestServer::start();
    let (mut a, wa) = join(&server, "presence", "?username=ann");
    assert_eq!(wa["online"], serde_json::json!(["ann"]));
    assert_eq!(wa["online_count"], 1);
    let (b, wb) = join(&server, "presence", "?username=ben");
    assert_eq!(wb["online_count"], 2);
    let online: HashSet<&str> = wb["online"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(online, HashSet::from(["ann", "ben"]));
    let j = recv_type(&mut a, "join");
    assert_eq!((j["username"].as_str(), j["online_count"].as_u64()), (Some("ben"), Some(2)));
    drop(b);
    let l = recv_type(&mut a, "leave");
    assert_eq!((l["username"].as_str(), l["online_count"].as_u64()), (Some("ben"), Some(1)));
    let room = get(server.addr, "/api/rooms/presence").json();
    assert_eq!(room["online"], 1);
    assert_eq!(room["online_names"], serde_json::json!(["ann"]));
}

#[test]
fn newcomers_get_the_last_n_messages() {
    let mut cfg = config();
    cfg.history = 5;
    let server = TestServer::with(cfg);
    let (mut a, _) = join(&server, "hist", "?username=a");
    for i in 1..=8 {
        post(&mut a, &format!("m{i}"));
        recv_type(&mut a, "message");
    }
    let (_b, wb) = join(&server, "hist", "?username=b");
    let ids: Vec<u64> = wb["history"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![4, 5, 6, 7, 8]);
    assert_eq!(wb["last_id"], 8);
}

#[test]
fn resume_with_since_replays_exactly_what_was_missed() {
    let server = TestServer::start();
    let (mut a, _) = join(&server, "resume", "?username=a");
    for i in 1..=10 {
        post(&mut a, &format!("m{i}"));
        recv_type(&mut a, "message");
    }
    let (mut b, wb) = join(&server, "resume", "?username=b&since=7");
    let ids: Vec<u64> = wb["history"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![8, 9, 10]);
    post(&mut a, "live");
    assert_eq!(recv_type(&mut b, "message")["id"], 11);
}

#[test]
fn resume_from_beyond_history_says_gap() {
    // Memory mode keeps the last 1,000 per room; ask for more than that.
    let mut cfg = config();
    cfg.rate_limit = 0;
    let server = TestServer::with(cfg);
    let (mut a, _) = join(&server, "gappy", "?username=a");
    for i in 1..=1105 {
        post(&mut a, &format!("m{i}"));
    }
    for _ in 1..=1105 {
        recv_type(&mut a, "message");
    }
    let mut b = ws(server.addr, "/ws/chatroom/gappy?since=3");
    let gap = recv_json(&mut b);
    assert_eq!(gap["type"], "gap", "{gap}");
    let oldest = gap["oldest_id"].as_u64().unwrap();
    assert!(oldest > 4, "{gap}");
    let w = recv_type(&mut b, "welcome");
    let ids: Vec<u64> = w["history"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.first().copied(), Some(oldest));
    assert_eq!(ids.last().copied(), Some(1105));
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1));
}

#[test]
fn bad_frames_get_errors_and_the_connection_stays() {
    let mut cfg = config();
    cfg.max_text = 10;
    let server = TestServer::with(cfg);
    let (mut a, _) = join(&server, "bad", "?username=a");
    send_text(&mut a, "not json");
    assert_eq!(recv_type(&mut a, "error")["code"], "bad_json");
    send_text(&mut a, r#"{"nomessage": 1}"#);
    assert_eq!(recv_type(&mut a, "error")["code"], "bad_json");
    post(&mut a, "this is longer than ten");
    assert_eq!(recv_type(&mut a, "error")["code"], "too_long");
    post(&mut a, "fine");
    assert_eq!(recv_type(&mut a, "message")["message"], "fine");
    a.send(Message::binary(vec![1u8])).unwrap();
    assert_eq!(recv_close(&mut a), Some(1003));
}

#[test]
fn posts_over_the_rate_limit_get_an_error() {
    let mut cfg = config();
    cfg.rate_limit = 1;
    cfg.rate_burst = 3;
    let server = TestServer::with(cfg);
    let (mut a, _) = join(&server, "rl", "?username=a");
    for i in 0..5 {
        post(&mut a, &format!("m{i}"));
    }
    let mut messages = 0;
    let mut limited = 0;
    while messages + limited < 5 {
        let v = recv_json(&mut a);
        match v["type"].as_str() {
            Some("message") => messages += 1,
            Some("error") => {
                assert_eq!(v["code"], "rate_limited");
                limited += 1;
            }
            _ => {}
        }
    }
    assert_eq!((messages, limited), (3, 2));
}

#[test]
fn room_names_are_checked_and_the_welcome_room_exists() {
    let server = TestServer::start();
    let rooms = get(server.addr, "/api/rooms").json();
    assert!(rooms["rooms"].as_array().unwrap().iter().any(|r| r["name"] == "welcome"));
    let (_c, w) = join(&server, "welcome", "");
    assert_eq!(w["room"], "welcome");
    let bad = request(
        server.addr,
        "GET /ws/chatroom/no.dots HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(bad.status, 400);
}

#[test]
fn a_full_room_closes_with_1013() {
    let mut cfg = config();
    cfg.max_room_members = 2;
    let server = TestServer::with(cfg);
    let (_a, _) = join(&server, "small", "");
    let (_b, _) = join(&server, "small", "");
    let mut c = ws(server.addr, "/ws/chatroom/small");
    assert_eq!(recv_close(&mut c), Some(1013));
}

#[test]
fn scroll_back_api_pages_through_older_messages() {
    let mut cfg = config();
    cfg.rate_limit = 0;
    let server = TestServer::with(cfg);
    let (mut a, _) = join(&server, "scroll", "?username=a");
    for i in 1..=30 {
        post(&mut a, &format!("m{i}"));
    }
    for _ in 1..=30 {
        recv_type(&mut a, "message");
    }
    let page = get(server.addr, "/api/rooms/scroll/messages?before=21&limit=10").json();
    let ids: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (11..=20).collect::<Vec<u64>>());
    assert_eq!(page["messages"][0]["message"], "m11");
    let all = get(server.addr, "/api/rooms/scroll/messages?limit=500").json();
    assert_eq!(all["messages"].as_array().unwrap().len(), 30, "limit is capped at 200, and 30 exist");
    assert_eq!(get(server.addr, "/api/rooms/nope/messages").status, 404);
    let listed = get(server.addr, "/api/rooms?limit=1").json();
    assert_eq!(listed["rooms"][0]["name"], "scroll", "the active room comes first");
    assert_eq!(listed["rooms"][0]["messages"], 30);
}

#[test]
fn history_survives_a_restart() {
    let dir = temp_dir("restart");
    let server = TestServer::with_sqlite(config(), &dir);
    let (mut a, _) = join(&server, "durable", "?username=a");
    for i in 1..=3 {
        post(&mut a, &format!("m{i}"));
        recv_type(&mut a, "message");
    }
    drop(a);
    server.stop();
    let server = TestServer::with_sqlite(config(), &dir);
    let (mut b, wb) = join(&server, "durable", "?username=b");
    let texts: Vec<&str> = wb["history"].as_array().unwrap().iter().map(|m| m["message"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["m1", "m2", "m3"]);
    post(&mut b, "m4");
    assert_eq!(recv_type(&mut b, "message")["id"], 4, "ids continue after a restart");
    let room = get(server.addr, "/api/rooms/durable").json();
    assert_eq!(room["messages"], 4);
    let _ = Duration::ZERO;
    server.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn above_the_presence_limit_presence_carries_counts_only() {
    let mut cfg = config();
    cfg.presence_limit = 2;
    let server = TestServer::with(cfg);
    let (mut a, _) = join(&server, "big", "?username=a");
    let (_b, _) = join(&server, "big", "?username=b");
    assert_eq!(recv_type(&mut a, "join")["username"], "b", "at the limit: names");
    let (_c, _) = join(&server, "big", "?username=c");
    let p = recv_type(&mut a, "presence");
    assert_eq!(p["online_count"], 3);
    assert!(p.get("joined").is_none() && p.get("left").is_none(), "{p}");
}

#[test]
fn max_rooms_refuses_a_new_room_with_503() {
    let mut cfg = config();
    cfg.max_rooms = 1;
    let server = TestServer::with(cfg);
    let (_a, _) = join(&server, "only", "");
    let r = request(
        server.addr,
        "GET /ws/chatroom/another HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(r.status, 503);
    let (_b, w) = join(&server, "only", "");
    assert_eq!(w["online_count"], 2, "the live room still takes members");
}
