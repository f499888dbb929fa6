//! The server API a site's backend uses (`--api-key`): posting into a room,
//! its keys, and its bodies, read by the same framing as every request.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

const KEY: &str = "backend-key-0123456789";
const OLD_KEY: &str = "old-backend-key-0123456789";

fn server_with(f: impl FnOnce(&mut chatroom::Config)) -> TestServer {
    let mut cfg = config();
    cfg.api_keys = vec![KEY.into(), OLD_KEY.into()];
    f(&mut cfg);
    TestServer::with(cfg)
}

/// A POST's raw bytes, with `headers` (each ending in CRLF) and `body`.
fn post_raw(path: &str, headers: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len())
}

/// The headers of a well-formed API call with `key`.
fn with_key(key: &str) -> String {
    format!("Authorization: Bearer {key}\r\nContent-Type: application/json\r\n")
}

/// Posts `body` to room `room` with the first key.
fn post(addr: SocketAddr, room: &str, body: &str) -> HttpResponse {
    request(addr, &post_raw(&format!("/api/rooms/{room}/messages"), &with_key(KEY), body))
}

/// A backend's post is stored and broadcast like a member's, marked
/// verified; the answer (201, with its id) comes once it is committed, the
/// room is created if it did not exist, and any configured key works.
#[test]
fn a_backend_posts_into_a_room_and_gets_the_id() {
    let s = server_with(|_| {});
    let mut member = ws(s.addr, "/ws/chatroom/lobby?username=amy");
    recv_type(&mut member, "welcome");
    let r = post(s.addr, "lobby", r#"{"message":"deploy at 5","username":"ops-bot"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"room": "lobby", "id": 1}));
    let heard = recv_type(&mut member, "message");
    assert_eq!(
        (&heard["id"], &heard["username"], &heard["message"], &heard["verified"]),
        (&1.into(), &"ops-bot".into(), &"deploy at 5".into(), &true.into()),
        "{heard}"
    );
    let r = request(
        s.addr,
        &post_raw("/api/rooms/fresh-room/messages", &with_key(OLD_KEY), r#"{"message":"first","username":"ops"}"#),
    );
    assert_eq!((r.status, r.json()["id"].as_u64()), (201, Some(1)), "a new room, with the other key");
    let page = get(s.addr, "/api/rooms/fresh-room/messages").json();
    assert_eq!(page["messages"][0]["message"], "first", "{page}");
    assert_eq!(page["messages"][0]["verified"], true, "{page}");
    let r = post(s.addr, "fresh-room", r#"{"message":"second","username":"ops"}"#);
    assert_eq!(r.json()["id"], 2, "ids go on from the room's last");
}

/// Without a key, with a wrong one, or with a user's token: 401, and
/// nothing is posted. A server started without keys has no such route.
#[test]
fn the_api_needs_one_of_the_keys() {
    let s = server_with(|_| {});
    let body = r#"{"message":"sneaky","username":"x"}"#;
    let path = "/api/rooms/welcome/messages";
    for (what, headers) in [
        ("no key", "Content-Type: application/json\r\n".to_string()),
        ("a wrong key", with_key("backend-key-0123456788")),
        ("a prefix of the key", with_key(&KEY[..KEY.len() - 1])),
        ("not a bearer", format!("Authorization: Basic {KEY}\r\nContent-Type: application/json\r\n")),
    ] {
        let r = request(s.addr, &post_raw(path, &headers, body));
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
        assert_eq!(r.json()["error"], "unauthorized", "{what}");
    }
    assert_eq!(get(s.addr, "/api/rooms/welcome").json()["messages"], 0, "nothing was posted");

    let plain = TestServer::start();
    let r = request(plain.addr, &post_raw(path, &with_key(KEY), body));
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["message"].as_str().unwrap().contains("--api-key"), "{}", r.text());
}

/// Bodies: not JSON by its Content-Type → 415, not the right JSON → 400
/// saying why, over `--max-body` → 413 before it is read, a bad room or
/// name or a text too long → 400. None of them posts anything.
#[test]
fn bad_bodies_get_the_right_status() {
    let s = server_with(|cfg| cfg.max_body = 1024);
    let path = "/api/rooms/welcome/messages";
    let auth = format!("Authorization: Bearer {KEY}\r\n");
    let good = r#"{"message":"hi","username":"ops"}"#;
    let cases = [
        ("no content type", post_raw(path, &auth, good), 415, "unsupported_media_type"),
        (
            "text/plain",
            post_raw(path, &format!("{auth}Content-Type: text/plain\r\n"), good),
            415,
            "unsupported_media_type",
        ),
        ("broken JSON", post_raw(path, &with_key(KEY), r#"{"message":"#), 400, "bad_json"),
        ("no username", post_raw(path, &with_key(KEY), r#"{"message":"hi"}"#), 400, "bad_json"),
        ("a number for text", post_raw(path, &with_key(KEY), r#"{"message":5,"username":"a"}"#), 400, "bad_json"),
        ("a bad name", post_raw(path, &with_key(KEY), r#"{"message":"hi","username":"  "}"#), 400, "bad_name"),
        ("a bad room", post_raw("/api/rooms/no.dots/messages", &with_key(KEY), good), 400, "bad_room"),
        (
            "too long",
            post_raw(path, &with_key(KEY), &format!(r#"{{"message":"{}","username":"a"}}"#, "x".repeat(4097))),
            413,
            "",
        ),
    ];
    for (what, raw, status, code) in cases {
        let r = request(s.addr, &raw);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if !code.is_empty() {
            assert_eq!(r.json()["error"], code, "{what}");
        }
    }
    // Under --max-body but over --max-text.
    let s = server_with(|cfg| cfg.max_text = 10);
    let r = request(s.addr, &post_raw(path, &with_key(KEY), r#"{"message":"eleven char","username":"a"}"#));
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("too_long")), "{}", r.text());
    assert_eq!(get(s.addr, "/api/rooms/welcome").json()["messages"], 0, "nothing was posted");
}

/// A body that arrives in pieces is read whole; requests pipelined behind
/// a post are answered after it, in order, on the same connection.
#[test]
fn bodies_in_pieces_and_pipelining_work() {
    let s = server_with(|_| {});
    let mut c = tcp(s.addr);
    let raw = post_raw("/api/rooms/lobby/messages", &with_key(KEY), r#"{"message":"in pieces","username":"ops"}"#);
    for piece in raw.as_bytes().chunks(7) {
        c.write_all(piece).unwrap();
        c.flush().unwrap();
    }
    let mut buf = Vec::new();
    let r = read_response(&mut c, &mut buf, false);
    assert_eq!((r.status, r.json()["id"].as_u64()), (201, Some(1)), "{}", r.text());

    let second = post_raw("/api/rooms/lobby/messages", &with_key(KEY), r#"{"message":"two","username":"ops"}"#);
    let third = post_raw("/api/rooms/lobby/messages", &with_key(KEY), r#"{"message":"three","username":"ops"}"#);
    let read = "GET /api/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\n\r\n";
    c.write_all(format!("{second}{third}{read}").as_bytes()).unwrap();
    let answers: Vec<HttpResponse> = (0..3).map(|_| read_response(&mut c, &mut buf, false)).collect();
    assert_eq!(answers[0].json()["id"], 2);
    assert_eq!(answers[1].json()["id"], 3);
    let page = answers[2].json();
    let texts: Vec<&str> =
        page["messages"].as_array().unwrap().iter().map(|m| m["message"].as_str().unwrap()).collect();
    assert_eq!(texts, ["in pieces", "two", "three"], "the read saw both posts");
}

/// A body sent too slowly is cut off by `--header-timeout` (408), which
/// covers the whole request, body included.
#[test]
fn a_slow_body_times_out() {
    let s = server_with(|cfg| cfg.header_timeout = Duration::from_millis(300));
    let mut c = tcp(s.addr);
    let raw = post_raw("/api/rooms/welcome/messages", &with_key(KEY), r#"{"message":"slow","username":"ops"}"#);
    let (head, body) = raw.split_at(raw.len() - 10);
    c.write_all(head.as_bytes()).unwrap();
    assert!(!body.is_empty(), "the rest never comes");
    let r = read_response(&mut c, &mut Vec::new(), false);
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(get(s.addr, "/api/rooms/welcome").json()["messages"], 0, "nothing was posted");
}

/// An API key also opens private rooms' read API.
#[test]
fn a_key_reads_private_rooms() {
    let s = server_with(|cfg| cfg.private_rooms = vec!["team-*".into()]);
    assert_eq!(post(s.addr, "team-a", r#"{"message":"inside","username":"ops"}"#).status, 201);
    assert_eq!(get(s.addr, "/api/rooms/team-a/messages").status, 404, "hidden from anyone");
    let read = |path: &str| {
        request(
            s.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(read("/api/rooms/team-a/messages").json()["messages"][0]["message"], "inside");
    let rooms = read("/api/rooms").json();
    assert!(rooms["rooms"].as_array().unwrap().iter().any(|r| r["name"] == "team-a"), "{rooms}");
}

/// With Redis, a backend's post on one process reaches a member on another,
/// and the ids are the room's shared ones.
#[test]
fn a_backend_post_crosses_processes() {
    let redis = RedisServer::start(false);
    let node = || server_with(|cfg| cfg.redis = Some(redis.url()));
    let (a, b) = (node(), node());
    let mut far = ws(b.addr, "/ws/chatroom/lobby?username=far");
    recv_type(&mut far, "welcome");
    let mut near = ws(a.addr, "/ws/chatroom/lobby?username=near");
    recv_type(&mut near, "welcome");
    post_and_answer(&mut near, "a member first");
    recv_type(&mut far, "message");
    let r = post(a.addr, "lobby", r#"{"message":"from the backend","username":"ops"}"#);
    assert_eq!((r.status, r.json()["id"].as_u64()), (201, Some(2)), "{}", r.text());
    let heard = recv_type(&mut far, "message");
    assert_eq!((heard["id"].as_u64(), heard["verified"].as_bool()), (Some(2), Some(true)), "{heard}");
    // A room nobody on this process hears is posted all the same.
    let r = post(a.addr, "quiet", r#"{"message":"to nobody","username":"ops"}"#);
    assert_eq!((r.status, r.json()["id"].as_u64()), (201, Some(1)), "{}", r.text());
    let stored = redis.stream("quiet");
    assert_eq!(stored.len(), 1, "{stored:?}");
}

/// Keys come from `--api-key-file` too (one per line); a key under 16
/// bytes stops the start, in one line that does not show it.
#[test]
fn keys_from_files_and_their_rules() {
    let dir = temp_dir("api-keys");
    let file = dir.join("keys");
    std::fs::write(&file, format!("{KEY}\n\n{OLD_KEY}\n")).unwrap();
    let s = TestServer::with({
        let mut cfg = config();
        cfg.api_key_files = vec![file.display().to_string()];
        cfg
    });
    let r = request(
        s.addr,
        &post_raw("/api/rooms/lobby/messages", &with_key(OLD_KEY), r#"{"message":"filed","username":"ops"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());

    let mut cfg = config();
    cfg.api_keys = vec!["short".into()];
    let e = chatroom::Server::bind(cfg).err().expect("refused").to_string();
    assert!(e.contains("at least 16") && !e.contains("short") && !e.contains('\n'), "{e}");
}

/// With SQLite the answer waits for the commit: every 201 is in the
/// history after a restart, and once the data file is full (as a full disk
/// is, through `--max-data-size`) the backend gets 503, ids staying gapless.
#[test]
fn a_201_is_on_disk_and_a_full_disk_is_a_503() {
    let dir = temp_dir("backend-sqlite");
    let mut cfg = config();
    cfg.api_keys = vec![KEY.into()];
    cfg.max_data_size = Some(96 * 1024);
    let s = TestServer::with_sqlite(cfg.clone(), &dir);
    let long = "x".repeat(4000);
    let mut stored = 0;
    let refused = loop {
        let r = post(s.addr, "archive", &format!(r#"{{"message":"{long}{stored}","username":"ops"}}"#));
        if r.status != 201 {
            break r;
        }
        stored += 1;
        assert_eq!(r.json()["id"], stored, "ids stay gapless");
        assert!(stored < 1000, "the file never filled");
    };
    assert_eq!((refused.status, refused.json()["error"].as_str()), (503, Some("unavailable")), "{}", refused.text());
    assert!(stored > 0, "a few posts fit before the limit");
    s.stop();
    cfg.max_data_size = None;
    let s = TestServer::with_sqlite(cfg, &dir);
    let page = get(s.addr, &format!("/api/rooms/archive/messages?limit={}", stored + 5)).json();
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(stored as usize), "every 201 was stored");
}

/// `DELETE /api/rooms/<room>/messages/<id>` as `key` on `addr`.
fn delete(addr: SocketAddr, room: &str, id: &str, key: &str) -> HttpResponse {
    request(
        addr,
        &format!(
            "DELETE /api/rooms/{room}/messages/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        ),
    )
}

/// The tombstone of message `id` of `room`, as history shows it.
fn is_tombstone(event: &serde_json::Value, room: &str, id: u64) -> bool {
    let fields: Vec<&str> = event.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    event["type"] == "message"
        && event["room"] == room
        && event["id"] == id
        && event["deleted"] == true
        && event["ts"].is_u64()
        && fields.len() == 5
}

/// A deleted message becomes a tombstone everywhere: members are told
/// live, and the welcome, a `?since=` resume and scroll-back show the id
/// with no name and no text. Deleting twice is fine; an id the room never
/// had, or a room that does not exist, is 404; without a key, 401.
#[test]
fn a_backend_deletes_a_message_and_history_keeps_a_tombstone() {
    let s = server_with(|_| {});
    let mut amy = ws(s.addr, "/ws/chatroom/lobby?username=amy");
    recv_type(&mut amy, "welcome");
    for text in ["one", "regrettable", "three"] {
        post_and_answer(&mut amy, text);
    }
    let r = delete(s.addr, "lobby", "2", KEY);
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let told = recv_type(&mut amy, "delete");
    assert_eq!(told, serde_json::json!({"type": "delete", "room": "lobby", "id": 2}));

    let (_bob, welcome) = {
        let mut c = ws(s.addr, "/ws/chatroom/lobby?username=bob");
        let w = recv_type(&mut c, "welcome");
        (c, w)
    };
    let history = welcome["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{welcome}");
    assert!(is_tombstone(&history[1], "lobby", 2), "{}", history[1]);
    assert_eq!(history[2]["message"], "three");
    let mut resumed = ws(s.addr, "/ws/chatroom/lobby?username=cy&since=1");
    let w = recv_type(&mut resumed, "welcome");
    assert!(is_tombstone(&w["history"][0], "lobby", 2), "{w}");
    let page = get(s.addr, "/api/rooms/lobby/messages").json();
    assert!(is_tombstone(&page["messages"][1], "lobby", 2), "{page}");
    assert!(!page.to_string().contains("regrettable"), "{page}");

    assert_eq!(delete(s.addr, "lobby", "2", KEY).status, 204, "twice");
    for (room, id) in [("lobby", "4"), ("lobby", "0"), ("lobby", "x"), ("nowhere", "1")] {
        let r = delete(s.addr, room, id, KEY);
        assert_eq!((r.status, r.json()["error"].as_str()), (404, Some("not_found")), "{room}/{id}");
    }
    assert_eq!(delete(s.addr, "lobby", "1", "not-the-key-0123456789").status, 401);
    let page = get(s.addr, "/api/rooms/lobby/messages").json();
    assert_eq!(page["messages"][0]["message"], "one", "a refused delete deletes nothing");
}

/// With SQLite the tombstone is on disk: after a restart the history still
/// has the id and not the text, whether the message had been filed into
/// `messages` or was still in the inbox.
#[test]
fn a_deletion_survives_a_restart() {
    let dir = temp_dir("backend-delete");
    let mut cfg = config();
    cfg.api_keys = vec![KEY.into()];
    let s = TestServer::with_sqlite(cfg.clone(), &dir);
    for text in ["filed secret", "keep"] {
        assert_eq!(post(s.addr, "vault", &format!(r#"{{"message":"{text}","username":"ops"}}"#)).status, 201);
    }
    s.stop();
    // Filed at the restart; the next one stays in the inbox.
    let s = TestServer::with_sqlite(cfg.clone(), &dir);
    assert_eq!(post(s.addr, "vault", r#"{"message":"inbox secret","username":"ops"}"#).status, 201);
    assert_eq!(delete(s.addr, "vault", "1", KEY).status, 204);
    assert_eq!(delete(s.addr, "vault", "3", KEY).status, 204);
    s.stop();
    let s = TestServer::with_sqlite(cfg, &dir);
    let page = get(s.addr, "/api/rooms/vault/messages").json();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{page}");
    assert!(is_tombstone(&messages[0], "vault", 1) && is_tombstone(&messages[2], "vault", 3), "{page}");
    assert_eq!(messages[1]["message"], "keep");
    assert!(!page.to_string().contains("secret"), "{page}");
}

/// With Redis a deletion reaches every process: a member on another one
/// is told, history read from the stream there shows the tombstone (the
/// stream still holds the entry: the room's deleted set is applied on
/// read), and so does a process that starts afterwards. The id check is
/// Redis's: an id the room never had is 404.
#[test]
fn a_deletion_crosses_processes() {
    let redis = RedisServer::start(false);
    let node = || server_with(|cfg| cfg.redis = Some(redis.url()));
    let (a, b) = (node(), node());
    let mut far = ws(b.addr, "/ws/chatroom/lobby?username=far");
    recv_type(&mut far, "welcome");
    for text in ["hello", "oops", "bye"] {
        assert_eq!(post(a.addr, "lobby", &format!(r#"{{"message":"{text}","username":"ops"}}"#)).status, 201);
        assert_eq!(recv_type(&mut far, "message")["message"], text);
    }
    let r = delete(a.addr, "lobby", "2", KEY);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(recv_type(&mut far, "delete"), serde_json::json!({"type": "delete", "room": "lobby", "id": 2}));
    let page = get(b.addr, "/api/rooms/lobby/messages").json();
    assert!(is_tombstone(&page["messages"][1], "lobby", 2), "{page}");
    let late = node();
    let mut c = ws(late.addr, "/ws/chatroom/lobby?username=late&since=1");
    let w = recv_type(&mut c, "welcome");
    assert!(is_tombstone(&w["history"][0], "lobby", 2), "{w}");
    assert_eq!(w["history"][1]["message"], "bye");
    assert!(redis.stream("lobby").iter().any(|m| m["message"] == "oops"), "the stream keeps the entry");
    assert_eq!(delete(a.addr, "lobby", "9", KEY).status, 404);
    assert_eq!(delete(b.addr, "nowhere", "1", KEY).status, 404);
}

/// The HS256 secret of the tests with signed-in users.
const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes";

/// A token of user `u-7`, named Mal, signed with `SECRET`.
fn mal_token() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    chatroom::testutil::jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"u-7","name":"Mal","exp":{}}}"#, now + 600),
        chatroom::testutil::hs256_signer(SECRET.as_bytes()),
    )
}

/// `POST /api/rooms/<room>/kick` with `body` on `addr`.
fn kick(addr: SocketAddr, room: &str, body: &str) -> HttpResponse {
    request(addr, &post_raw(&format!("/api/rooms/{room}/kick"), &with_key(KEY), body))
}

/// `GET /api/rooms/<room>/bans` with the key.
fn bans(addr: SocketAddr, room: &str) -> serde_json::Value {
    let raw = format!(
        "GET /api/rooms/{room}/bans HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
    );
    request(addr, &raw).json()
}

/// The close code and reason a client gets next (its frames before it skipped).
fn close_of(c: &mut Client) -> (u16, String) {
    loop {
        match c.read() {
            Ok(tungstenite::Message::Close(Some(frame))) => return (frame.code.into(), frame.reason.to_string()),
            Ok(tungstenite::Message::Close(None)) => return (1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// A refused join: its error frame and close code.
fn refused_join(addr: SocketAddr, path: &str) -> (serde_json::Value, u16) {
    let mut c = ws(addr, path);
    let error = recv_json(&mut c);
    (error, close_of(&mut c).0)
}

/// A kick closes the member it names with 4001 and the reason, and nobody
/// else; without `ban_seconds` the member may come back.
#[test]
fn a_kick_closes_the_member_with_4001() {
    let s = server_with(|_| {});
    let mut amy = ws(s.addr, "/ws/chatroom/lobby?username=amy");
    recv_type(&mut amy, "welcome");
    let mut bob = ws(s.addr, "/ws/chatroom/lobby?username=bob");
    recv_type(&mut bob, "welcome");
    let r = kick(s.addr, "lobby", r#"{"username":"amy","reason":"cool off"}"#);
    assert_eq!((r.status, r.json()), (200, serde_json::json!({"closed": 1, "banned": []})), "{}", r.text());
    assert_eq!(close_of(&mut amy), (4001, "cool off".to_string()));
    assert_eq!(post_and_answer(&mut bob, "still here")["message"], "still here");
    let mut back = ws(s.addr, "/ws/chatroom/lobby?username=amy");
    assert_eq!(recv_type(&mut back, "welcome")["username"], "amy", "no ban: back at once");
    let r = kick(s.addr, "lobby", r#"{"username":"nobody"}"#);
    assert_eq!(r.json()["closed"], 0);
    for body in [r#"{"username":"amy","user":"u-1"}"#, r#"{"reason":"x"}"#, r#"{"username":"amy","ban":5}"#] {
        assert_eq!(kick(s.addr, "lobby", body).status, 400, "{body}");
    }
}

/// With `ban_seconds` a guest is banned by address: its next join gets a
/// `banned` error frame and 4403 saying until when and why, in that room
/// only, until the ban is lifted through the API (or lapses).
#[test]
fn a_ban_keeps_a_guest_out_until_lifted() {
    let s = server_with(|_| {});
    let mut amy = ws(s.addr, "/ws/chatroom/lobby?username=amy");
    recv_type(&mut amy, "welcome");
    let r = kick(s.addr, "lobby", r#"{"username":"amy","ban_seconds":3600,"reason":"spam"}"#);
    assert_eq!(r.json(), serde_json::json!({"closed": 1, "banned": ["address:127.0.0.1"]}));
    assert_eq!(close_of(&mut amy).0, 4001);
    let (error, code) = refused_join(s.addr, "/ws/chatroom/lobby?username=amy2");
    assert_eq!((error["code"].as_str(), code), (Some("banned"), 4403), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("until") && message.contains("GMT") && message.ends_with("spam"), "{message}");
    let mut elsewhere = ws(s.addr, "/ws/chatroom/other?username=amy");
    recv_type(&mut elsewhere, "welcome");
    let listed = bans(s.addr, "lobby");
    assert_eq!(listed["bans"][0]["who"], "address:127.0.0.1", "{listed}");
    assert_eq!(listed["bans"][0]["reason"], "spam");
    assert!(listed["bans"][0]["until"].as_u64().unwrap() > 3_500_000, "{listed}");
    assert_eq!(get(s.addr, "/api/rooms/lobby/bans").status, 401, "the list needs the key");

    let lift = |who: &str| {
        request(
            s.addr,
            &format!(
                "DELETE /api/rooms/lobby/bans/{who} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    assert_eq!(lift("address:127.0.0.1").status, 204);
    assert_eq!(lift("address:127.0.0.1").status, 404, "no such ban any more");
    let mut back = ws(s.addr, "/ws/chatroom/lobby?username=amy");
    recv_type(&mut back, "welcome");
}

/// A user with a token is kicked and banned by `sub`: every connection of
/// theirs in the room closes, their token cannot rejoin, a guest from the
/// same address still can, and the ban outlives a restart (SQLite).
#[test]
fn a_user_is_banned_by_token_and_the_ban_survives_a_restart() {
    let dir = temp_dir("backend-bans");
    let mut cfg = config();
    cfg.api_keys = vec![KEY.into()];
    cfg.auth_secret = Some(SECRET.into());
    let token = mal_token();
    let s = TestServer::with_sqlite(cfg.clone(), &dir);
    let mut tabs: Vec<Client> = (0..2).map(|_| ws(s.addr, &format!("/ws/chatroom/lobby?token={token}"))).collect();
    for tab in &mut tabs {
        recv_type(tab, "welcome");
    }
    let r = kick(s.addr, "lobby", r#"{"user":"u-7","ban_seconds":600}"#);
    assert_eq!(r.json(), serde_json::json!({"closed": 2, "banned": ["user:u-7"]}), "both tabs");
    for tab in &mut tabs {
        assert_eq!(close_of(tab), (4001, "kicked by a moderator".to_string()));
    }
    let (error, code) = refused_join(s.addr, &format!("/ws/chatroom/lobby?token={token}"));
    assert_eq!((error["code"].as_str(), code), (Some("banned"), 4403), "{error}");
    let mut guest = ws(s.addr, "/ws/chatroom/lobby?username=guest");
    recv_type(&mut guest, "welcome");
    drop(guest);
    s.stop();

    let s = TestServer::with_sqlite(cfg, &dir);
    let (error, code) = refused_join(s.addr, &format!("/ws/chatroom/lobby?token={token}"));
    assert_eq!((error["code"].as_str(), code), (Some("banned"), 4403), "after a restart: {error}");
    assert_eq!(bans(s.addr, "lobby")["bans"][0]["who"], "user:u-7");
}

/// The frames a client gets until its close frame, and the close code.
fn frames_until_close(c: &mut Client) -> (Vec<serde_json::Value>, u16) {
    let mut frames = Vec::new();
    loop {
        match c.read() {
            Ok(tungstenite::Message::Text(text)) => frames.push(serde_json::from_str(text.as_str()).unwrap()),
            Ok(tungstenite::Message::Close(frame)) => return (frames, frame.map_or(1005, |f| f.code.into())),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}; frames so far {frames:?}"),
        }
    }
}

/// With Redis a kick and its ban reach every process: a guest on another
/// process is closed with 4001 and banned there and on the process that
/// kicked (by address); a user is banned by `sub` on a process that starts
/// afterwards, which learns the room's bans as it starts to hear the room
/// and closes the user it admitted before; lifting the ban reaches them all.
#[test]
fn kicks_and_bans_cross_processes() {
    let redis = RedisServer::start(false);
    let node = || {
        server_with(|cfg| {
            cfg.redis = Some(redis.url());
            cfg.auth_secret = Some(SECRET.into());
        })
    };
    let token = mal_token();
    let (a, b) = (node(), node());
    let mut bob = ws(a.addr, "/ws/chatroom/lobby?username=bob");
    recv_type(&mut bob, "welcome");
    let mut amy = ws(b.addr, "/ws/chatroom/lobby?username=amy");
    recv_type(&mut amy, "welcome");
    let mut mal = ws(b.addr, &format!("/ws/chatroom/lobby?token={token}"));
    recv_type(&mut mal, "welcome");

    let r = kick(a.addr, "lobby", r#"{"username":"amy","ban_seconds":600,"reason":"spam"}"#);
    assert_eq!(r.json()["closed"], 0, "amy is not on this process");
    assert_eq!(close_of(&mut amy), (4001, "spam".to_string()));
    let banned_here = |addr| {
        eventually(IO_TIMEOUT, || {
            let (error, code) = refused_join(addr, "/ws/chatroom/lobby?username=amy");
            error["code"] == "banned" && code == 4403
        })
    };
    assert!(banned_here(b.addr), "banned where she was");
    assert!(banned_here(a.addr), "and on the process that kicked her");

    let r = kick(a.addr, "lobby", r#"{"user":"u-7","ban_seconds":600}"#);
    assert_eq!(r.json()["banned"], serde_json::json!(["user:u-7"]));
    assert_eq!(close_of(&mut mal).0, 4001);
    let c = node();
    let mut late = ws(c.addr, &format!("/ws/chatroom/lobby?token={token}"));
    let (frames, code) = frames_until_close(&mut late);
    assert_eq!(code, 4403, "{frames:?}");
    assert!(frames.iter().any(|f| f["type"] == "error" && f["code"] == "banned"), "{frames:?}");

    let lift = request(
        a.addr,
        &format!(
            "DELETE /api/rooms/lobby/bans/user:u-7 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(lift.status, 204);
    let back = eventually(IO_TIMEOUT, || {
        let mut c = ws(b.addr, &format!("/ws/chatroom/lobby?token={token}"));
        recv_json(&mut c)["type"] == "welcome"
    });
    assert!(back, "the lifted ban reached the other process");
    assert_eq!(post_and_answer(&mut bob, "still here")["message"], "still here");
}

/// A token of user `sub` named `name` whose `moderate` claim is `rooms`.
fn moderator_token(sub: &str, name: &str, rooms: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    chatroom::testutil::jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"{sub}","name":"{name}","exp":{},"moderate":{rooms}}}"#, now + 600),
        chatroom::testutil::hs256_signer(SECRET.as_bytes()),
    )
}

/// A member whose token moderates the room deletes and kicks with frames,
/// to the same effect as the server API: the welcome says it moderates,
/// members see the delete, the kicked is closed with 4001 and banned.
#[test]
fn a_moderator_deletes_and_kicks_from_the_room() {
    let s = server_with(|cfg| cfg.auth_secret = Some(SECRET.into()));
    let token = moderator_token("m-1", "Mod", r#"["lob*"]"#);
    let mut moderator = ws(s.addr, &format!("/ws/chatroom/lobby?token={token}"));
    assert_eq!(recv_type(&mut moderator, "welcome")["moderator"], true);
    let mut amy = ws(s.addr, "/ws/chatroom/lobby?username=amy");
    assert!(recv_type(&mut amy, "welcome").get("moderator").is_none(), "only moderators are told");
    post_and_answer(&mut amy, "bad words");
    recv_type(&mut moderator, "message");

    send_text(&mut moderator, r#"{"type":"delete","id":1}"#);
    let deleted = serde_json::json!({"type": "delete", "room": "lobby", "id": 1});
    assert_eq!(recv_type(&mut moderator, "delete"), deleted);
    assert_eq!(recv_type(&mut amy, "delete"), deleted);
    let page = get(s.addr, "/api/rooms/lobby/messages").json();
    assert!(is_tombstone(&page["messages"][0], "lobby", 1), "{page}");
    send_text(&mut moderator, r#"{"type":"delete","id":7}"#);
    assert_eq!(recv_type(&mut moderator, "error")["code"], "not_found");

    send_text(&mut moderator, r#"{"type":"kick","username":"amy","ban_seconds":60,"reason":"language"}"#);
    assert_eq!(close_of(&mut amy), (4001, "language".to_string()));
    let (error, code) = refused_join(s.addr, "/ws/chatroom/lobby?username=amy");
    assert_eq!((error["code"].as_str(), code), (Some("banned"), 4403), "{error}");
}

/// Anyone else gets `forbidden`: a guest, a user with a token but no
/// `moderate` claim, and a moderator of another room; nothing happens.
#[test]
fn only_the_room_s_moderators_may_delete_or_kick() {
    let s = server_with(|cfg| cfg.auth_secret = Some(SECRET.into()));
    let mut amy = ws(s.addr, "/ws/chatroom/lobby?username=amy");
    recv_type(&mut amy, "welcome");
    post_and_answer(&mut amy, "keep me");
    let elsewhere = moderator_token("m-2", "Other", r#"["team-b"]"#);
    let plain = mal_token();
    for query in ["?username=guest".to_string(), format!("?token={plain}"), format!("?token={elsewhere}")] {
        let mut c = ws(s.addr, &format!("/ws/chatroom/lobby{query}"));
        recv_type(&mut c, "welcome");
        for frame in [r#"{"type":"delete","id":1}"#, r#"{"type":"kick","username":"amy"}"#] {
            send_text(&mut c, frame);
            assert_eq!(recv_type(&mut c, "error")["code"], "forbidden", "{query} {frame}");
        }
    }
    assert_eq!(post_and_answer(&mut amy, "still here")["message"], "still here");
    let page = get(s.addr, "/api/rooms/lobby/messages").json();
    assert_eq!(page["messages"][0]["message"], "keep me");
}

/// With Redis a moderator on one process kicks a member on another.
#[test]
fn a_moderator_kicks_across_processes() {
    let redis = RedisServer::start(false);
    let node = || {
        server_with(|cfg| {
            cfg.redis = Some(redis.url());
            cfg.auth_secret = Some(SECRET.into());
        })
    };
    let (a, b) = (node(), node());
    let mut amy = ws(b.addr, "/ws/chatroom/lobby?username=amy");
    recv_type(&mut amy, "welcome");
    let token = moderator_token("m-1", "Mod", r#"["lobby"]"#);
    let mut moderator = ws(a.addr, &format!("/ws/chatroom/lobby?token={token}"));
    recv_type(&mut moderator, "welcome");
    post_and_answer(&mut amy, "bad words");
    recv_type(&mut moderator, "message");
    send_text(&mut moderator, r#"{"type":"delete","id":1}"#);
    assert_eq!(recv_type(&mut amy, "delete")["id"], 1);
    send_text(&mut moderator, r#"{"type":"kick","username":"amy"}"#);
    assert_eq!(close_of(&mut amy), (4001, "kicked by a moderator".to_string()));
}

/// `--allow-origin` also governs CORS: a listed site's pages may read the
/// API (answers, parked ones included, name the origin) and load the
/// client module, and their preflights are answered; other sites get no
/// CORS headers, and their preflights 403.
#[test]
fn listed_origins_may_use_the_api_from_their_pages() {
    let s = server_with(|cfg| cfg.allow_origin = vec!["site.example".into()]);
    let from = |origin: &str, raw: &str| {
        let raw = raw.replacen("\r\n", &format!("\r\nOrigin: {origin}\r\n"), 1);
        request(s.addr, &raw)
    };
    let read = "GET /api/rooms HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let r = from("https://site.example", read);
    assert_eq!(
        (r.header("access-control-allow-origin"), r.header("vary")),
        (Some("https://site.example"), Some("Origin"))
    );
    assert_eq!(from("https://evil.example", read).header("access-control-allow-origin"), None);
    let module =
        from("https://site.example", "GET /js/chatroom-client.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((module.status, module.header("access-control-allow-origin")), (200, Some("https://site.example")));
    assert!(module.text().contains("export class ChatroomClient"));
    let page = from("https://site.example", "GET /room/lobby HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(page.header("access-control-allow-origin"), None, "pages are not shared");

    let preflight = "OPTIONS /api/rooms/lobby/messages HTTP/1.1\r\nHost: x\r\nAccess-Control-Request-Method: POST\r\n\
                     Access-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n";
    let r = from("https://site.example", preflight);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://site.example"));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(r.header("access-control-allow-headers").unwrap().to_ascii_lowercase().contains("authorization"));
    assert_eq!(from("https://evil.example", preflight).status, 403);

    let posted = from(
        "https://site.example",
        &post_raw("/api/rooms/lobby/messages", &with_key(KEY), r#"{"message":"hi","username":"ops"}"#),
    );
    assert_eq!((posted.status, posted.header("access-control-allow-origin")), (201, Some("https://site.example")));
}

/// With Redis and a data file, a process keeps copies of the messages it
/// hears. A message deleted while it did not hear the room (its members
/// gone, its grace over) leaves its copy as soon as the room is heard here
/// again: the process reads the room's deleted ids when it subscribes.
#[test]
fn a_deletion_reaches_the_copies_of_a_process_that_was_not_listening() {
    let redis = RedisServer::start(false);
    let dir = temp_dir("backend-copies");
    let mut cfg = config();
    cfg.api_keys = vec![KEY.into()];
    cfg.redis = Some(redis.url());
    cfg.room_grace = Duration::from_millis(100);
    let a = server_with(|c| c.redis = Some(redis.url()));
    let b = TestServer::with_sqlite(cfg.clone(), &dir);
    let mut bea = ws(b.addr, "/ws/chatroom/lobby?username=bea");
    recv_type(&mut bea, "welcome");
    assert_eq!(post(a.addr, "lobby", r#"{"message":"copied secret","username":"ops"}"#).status, 201);
    assert_eq!(recv_type(&mut bea, "message")["message"], "copied secret");
    drop(bea);
    let unheard = eventually(IO_TIMEOUT, || metric(b.addr, "chatroom_redis_unsubscribes_total") >= 1.0);
    assert!(unheard, "b stops listening to the room");
    assert_eq!(delete(a.addr, "lobby", "1", KEY).status, 204);
    let mut back = ws(b.addr, "/ws/chatroom/lobby?username=bea");
    let welcome = recv_type(&mut back, "welcome");
    assert!(is_tombstone(&welcome["history"][0], "lobby", 1), "{welcome}");
    let copies = || -> Vec<String> {
        let conn = rusqlite::Connection::open(dir.join("chatroom.db")).unwrap();
        let mut stmt = conn.prepare("SELECT text FROM messages UNION ALL SELECT text FROM inbox").unwrap();
        stmt.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    };
    assert!(eventually(IO_TIMEOUT, || copies() == [""]), "the copy lost its text: {:?}", copies());
}
