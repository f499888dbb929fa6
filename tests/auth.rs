//! Signed identities at the chat handshake: tokens, guests policy, names
//! you can trust. Tokens are made here by hand (base64url and HMAC from
//! `ring`), not by the code under test.

mod common;

use std::net::SocketAddr;

use chatroom::testutil::{hs256_signer, jwt};
use common::*;
use data_encoding::BASE64URL_NOPAD;
use tungstenite::Message;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;

const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An HS256 token over `claims`, signed with `secret`.
fn token_with(claims: &str, secret: &str) -> String {
    jwt(r#"{"alg":"HS256","typ":"JWT"}"#, claims, hs256_signer(secret.as_bytes()))
}

/// A valid token for user `sub` named `name`, with extra claims (`,"rooms":[…]`).
fn token(sub: &str, name: &str, extra: &str) -> String {
    token_with(&format!(r#"{{"sub":"{sub}","name":"{name}","exp":{}{extra}}}"#, now() + 600), SECRET)
}

fn server(guests: chatroom::config::Guests) -> TestServer {
    let mut cfg = config();
    cfg.auth_secret = Some(SECRET.to_string());
    cfg.guests = guests;
    TestServer::with(cfg)
}

/// A process with tokens on, sharing its rooms through `redis`.
fn redis_node(redis: &RedisServer) -> TestServer {
    let mut cfg = config();
    cfg.auth_secret = Some(SECRET.to_string());
    cfg.redis = Some(redis.url());
    TestServer::with(cfg)
}

/// The welcome a member gets on joining `room` with `query`.
fn join(addr: SocketAddr, room: &str, query: &str) -> (Client, serde_json::Value) {
    let mut c = ws(addr, &format!("/ws/chatroom/{room}{query}"));
    let welcome = recv_type(&mut c, "welcome");
    (c, welcome)
}

/// The error frame and close code a refused member gets.
fn refused(addr: SocketAddr, path: &str) -> (serde_json::Value, Option<u16>) {
    let mut c = ws(addr, path);
    let error = recv_json(&mut c);
    (error, recv_close(&mut c))
}

#[test]
fn a_token_user_joins_under_the_token_s_name_and_keeps_it() {
    let s = server(chatroom::config::Guests::On);
    let (mut c, welcome) = join(s.addr, "lobby", &format!("?token={}&username=mallory", token("u-1", "Alice", "")));
    assert_eq!(welcome["username"], "Alice", "?username= does not apply to a token user");
    // The original client puts a name in every post: it renames guests only.
    send_text(&mut c, r#"{"message": "hi", "username": "bob"}"#);
    let msg = recv_type(&mut c, "message");
    assert_eq!((msg["username"].as_str(), msg["message"].as_str()), (Some("Alice"), Some("hi")));
}

#[test]
fn a_token_in_an_authorization_header_works_too() {
    let s = server(chatroom::config::Guests::Off);
    let mut request = format!("ws://{}/ws/chatroom/lobby", s.addr).into_client_request().unwrap();
    let bearer = format!("Bearer {}", token("u-2", "Bea", "")).parse().unwrap();
    request.headers_mut().insert("Authorization", bearer);
    let (mut c, _) = tungstenite::client::client(request, MaybeTlsStream::Plain(tcp(s.addr))).unwrap();
    assert_eq!(recv_type(&mut c, "welcome")["username"], "Bea");
}

#[test]
fn bad_tokens_get_one_error_frame_then_4401() {
    let s = server(chatroom::config::Guests::On);
    let expired = token_with(&format!(r#"{{"sub":"u","exp":{}}}"#, now() - 3600), SECRET);
    let forged =
        token_with(&format!(r#"{{"sub":"u","exp":{}}}"#, now() + 600), "another-secret-of-thirty-two-bytes-or-more");
    let no_sub = token_with(&format!(r#"{{"exp":{}}}"#, now() + 600), SECRET);
    let none = format!(
        "{}.{}.",
        BASE64URL_NOPAD.encode(br#"{"alg":"none"}"#),
        BASE64URL_NOPAD.encode(format!(r#"{{"sub":"u","exp":{}}}"#, now() + 600).as_bytes())
    );
    for (what, bad) in
        [("expired", expired), ("forged", forged), ("no sub", no_sub), ("alg none", none), ("junk", "abc".into())]
    {
        let (error, code) = refused(s.addr, &format!("/ws/chatroom/lobby?token={bad}"));
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some("unauthorized")), "{what}");
        assert!(!error.to_string().contains(&bad), "{what}: the token is never echoed");
        assert_eq!(code, Some(4401), "{what}");
    }
    let (error, _) = refused(
        s.addr,
        &format!(
            "/ws/chatroom/lobby?token={}",
            token_with(&format!(r#"{{"sub":"u","exp":{}}}"#, now() - 3600), SECRET)
        ),
    );
    assert!(error["message"].as_str().unwrap().contains("expired"), "{error}");
}

#[test]
fn a_room_outside_the_token_s_rooms_gets_4403() {
    let s = server(chatroom::config::Guests::On);
    let t = token("u-3", "Cy", r#","rooms":["team-*","lobby"]"#);
    join(s.addr, "team-a", &format!("?token={t}"));
    join(s.addr, "lobby", &format!("?token={t}"));
    let (error, code) = refused(s.addr, &format!("/ws/chatroom/secret?token={t}"));
    assert_eq!((error["code"].as_str(), code), (Some("forbidden"), Some(4403)));
    assert!(error["message"].as_str().unwrap().contains("secret"), "{error}");
}

#[test]
fn read_only_guests_read_but_cannot_post() {
    let s = server(chatroom::config::Guests::ReadOnly);
    let (mut guest, _) = join(s.addr, "lobby", "?username=gus");
    let (mut user, _) = join(s.addr, "lobby", &format!("?token={}", token("u-4", "Dee", "")));
    send_text(&mut guest, r#"{"message": "may I?"}"#);
    let error = recv_type(&mut guest, "error");
    assert_eq!(error["code"], "read_only");
    send_text(&mut user, r#"{"message": "hello"}"#);
    let heard = recv_type(&mut guest, "message");
    assert_eq!((heard["username"].as_str(), heard["message"].as_str()), (Some("Dee"), Some("hello")));
    assert_eq!(recv_type(&mut user, "message")["message"], "hello", "nothing else was posted");
}

#[test]
fn with_guests_off_the_chat_needs_a_token_and_the_echo_stays_open() {
    let s = server(chatroom::config::Guests::Off);
    let (error, code) = refused(s.addr, "/ws/chatroom/lobby?username=gus");
    assert_eq!((error["code"].as_str(), code), (Some("unauthorized"), Some(4401)));
    join(s.addr, "lobby", &format!("?token={}", token("u-5", "Eve", "")));
    let mut echo = ws(s.addr, "/ws/echo");
    send_text(&mut echo, "ping?");
    assert_eq!(echo.read().unwrap(), Message::text("ping?"));
}

#[test]
fn a_guest_never_holds_a_verified_user_s_name() {
    let s = server(chatroom::config::Guests::On);
    let (mut early, welcome) = join(s.addr, "lobby", "?username=Alice");
    assert_eq!(welcome["username"], "Alice");
    let (_alice, welcome) = join(s.addr, "lobby", &format!("?token={}", token("u-1", "Alice", "")));
    assert_eq!(welcome["username"], "Alice", "the verified user gets the name");
    let rename = recv_type(&mut early, "rename");
    assert_eq!((rename["from"].as_str(), rename["to"].as_str()), (Some("Alice"), Some("Alice-2")), "{rename}");
    let (_late, welcome) = join(s.addr, "lobby", "?username=Alice");
    assert_ne!(welcome["username"], "Alice", "a later guest asking for it gets another");
    // Nor can a guest rename into it with its first post.
    let (mut guest, _) = join(s.addr, "lobby", "");
    send_text(&mut guest, r#"{"message": "hi", "username": "Alice"}"#);
    let msg = recv_type(&mut guest, "message");
    assert_ne!(msg["username"], "Alice");
}

#[test]
fn a_short_secret_or_a_missing_key_file_stops_the_start_with_one_line() {
    let mut cfg = config();
    cfg.auth_secret = Some("short".into());
    let e = chatroom::Server::bind(cfg).err().expect("refused").to_string();
    assert!(e.contains("too short for HS256") && !e.contains('\n'), "{e}");
    let mut cfg = config();
    cfg.auth_public_keys = vec!["/nonexistent/key.pem".into()];
    let e = chatroom::Server::bind(cfg).err().expect("refused").to_string();
    assert!(e.contains("/nonexistent/key.pem") && e.contains("cannot read it"), "{e}");
}

fn verified(event: &serde_json::Value) -> Option<bool> {
    event["verified"].as_bool()
}

/// A token user's messages carry `"verified": true`, live and in history
/// (after a restart, from SQLite); a guest's carry nothing of the kind.
#[test]
fn verified_posts_say_so_live_and_in_history() {
    let dir = temp_dir("auth-verified");
    let mut cfg = config();
    cfg.auth_secret = Some(SECRET.to_string());
    let s = TestServer::with_sqlite(cfg.clone(), &dir);
    let (mut user, _) = join(s.addr, "lobby", &format!("?token={}", token("u-1", "Alice", "")));
    let (mut guest, _) = join(s.addr, "lobby", "?username=gus");
    assert_eq!(verified(&post_and_answer(&mut user, "signed")), Some(true));
    assert_eq!(verified(&recv_type(&mut guest, "message")), Some(true), "as every member sees it");
    assert_eq!(verified(&post_and_answer(&mut guest, "unsigned")), None);
    s.stop();
    let s = TestServer::with_sqlite(cfg, &dir);
    let (_c, welcome) = join(s.addr, "lobby", "?username=later");
    let history: Vec<(Option<&str>, Option<bool>)> =
        welcome["history"].as_array().unwrap().iter().map(|m| (m["message"].as_str(), verified(m))).collect();
    assert_eq!(history, vec![(Some("signed"), Some(true)), (Some("unsigned"), None)]);
}

/// Through Redis the mark travels with the message: a member on another
/// process sees it, and so does history read from the stream.
#[test]
fn the_verified_mark_crosses_processes() {
    let redis = RedisServer::start(false);
    let node = || redis_node(&redis);
    let (a, b) = (node(), node());
    let (mut user, _) = join(a.addr, "lobby", &format!("?token={}", token("u-1", "Alice", "")));
    let (mut far, _) = join(b.addr, "lobby", "?username=far");
    let sent = post_and_answer(&mut user, "over redis");
    assert_eq!(verified(&sent), Some(true));
    let heard = recv_type(&mut far, "message");
    assert_eq!((heard["message"].as_str(), verified(&heard)), (Some("over redis"), Some(true)));
    let late = node();
    let (_c, welcome) = join(late.addr, "lobby", "?username=late");
    assert_eq!(verified(&welcome["history"][0]), Some(true), "{welcome}");
}

/// `--private-rooms team-*`: only a token whose `rooms` names the room
/// joins it, and to everyone else the API and the stats act as if it did
/// not exist; a bearer token on the API opens it.
#[test]
fn private_rooms_need_a_token_that_names_them() {
    let mut cfg = config();
    cfg.auth_secret = Some(SECRET.to_string());
    cfg.private_rooms = vec!["team-*".into()];
    let s = TestServer::with(cfg);
    let member = token("u-1", "Alice", r#","rooms":["team-a"]"#);
    let (mut alice, _) = join(s.addr, "team-a", &format!("?token={member}"));
    post_and_answer(&mut alice, "private words");
    let (_gus, _) = join(s.addr, "lobby", "?username=gus");

    let (error, code) = refused(s.addr, "/ws/chatroom/team-a?username=gus");
    assert_eq!((error["code"].as_str(), code), (Some("forbidden"), Some(4403)), "a guest");
    let everywhere = token("u-2", "Bob", "");
    let (error, code) = refused(s.addr, &format!("/ws/chatroom/team-a?token={everywhere}"));
    assert_eq!(
        (error["code"].as_str(), code),
        (Some("forbidden"), Some(4403)),
        "a token without rooms: public rooms only"
    );
    assert!(error["message"].as_str().unwrap().contains("private"), "{error}");

    let names = |body: &serde_json::Value| -> Vec<String> {
        body["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
    };
    let public = names(&get(s.addr, "/api/rooms").json());
    assert!(public.contains(&"lobby".to_string()) && !public.contains(&"team-a".to_string()), "{public:?}");
    assert_eq!(get(s.addr, "/api/rooms/team-a").status, 404);
    assert_eq!(get(s.addr, "/api/rooms/team-a/messages").status, 404);
    let with_bearer = |path: &str, token: &str| {
        request(
            s.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(with_bearer("/api/rooms/team-a", &everywhere).status, 404, "a token that does not name it");
    let listed = names(&with_bearer("/api/rooms", &member).json());
    assert!(listed.contains(&"lobby".to_string()) && listed.contains(&"team-a".to_string()), "{listed:?}");
    let page = with_bearer("/api/rooms/team-a/messages", &member).json();
    assert_eq!(page["messages"][0]["message"], "private words", "{page}");

    let mut stats = ws(s.addr, "/ws/stats");
    let snapshot = recv_json(&mut stats).to_string();
    assert!(snapshot.contains("lobby") && !snapshot.contains("team-a"), "{snapshot}");
}

/// A server at `--max-rooms` answers a new room's join with 503 before the
/// upgrade, but only to a member the room would take: a stranger to a
/// private room gets 4403 whether the room is live or not, so a full
/// server does not tell strangers which private rooms are in use.
#[test]
fn a_full_server_does_not_tell_strangers_which_private_rooms_are_live() {
    let mut cfg = config();
    cfg.auth_secret = Some(SECRET.to_string());
    cfg.private_rooms = vec!["team-*".into()];
    cfg.max_rooms = 1;
    let s = TestServer::with(cfg);
    let (_alice, _) = join(s.addr, "team-a", &format!("?token={}", token("u-1", "Alice", r#","rooms":["team-*"]"#)));
    for room in ["team-a", "team-b"] {
        let (error, code) = refused(s.addr, &format!("/ws/chatroom/{room}?username=gus"));
        assert_eq!((error["code"].as_str(), code), (Some("forbidden"), Some(4403)), "{room}");
    }
    let upgrade = |path: String| {
        request(
            s.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ),
        )
    };
    let bob = token("u-2", "Bob", r#","rooms":["team-*"]"#);
    assert_eq!(upgrade(format!("/ws/chatroom/team-b?token={bob}")).status, 503, "a member: the room limit holds");
    assert_eq!(upgrade(format!("/ws/chatroom/team-a?token={bob}")).status, 101, "the live room takes members");
}

/// The README's Python snippet, run as written: a backend with nothing but
/// Python's standard library mints a token the server accepts.
#[test]
fn the_readme_s_python_snippet_mints_a_token_the_server_accepts() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("```python\n").expect("a Python block in the README") + "```python\n".len();
    let snippet = &readme[start..start + readme[start..].find("```").unwrap()];
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(snippet)
        .env("CHATROOM_AUTH_SECRET", SECRET)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let s = server(chatroom::config::Guests::On);
    let (_c, welcome) = join(s.addr, "lobby", &format!("?token={token}"));
    assert_eq!(welcome["username"], "Alice", "{welcome}");
}

/// One person, one name: a second tab of the same user (same `sub`) joins
/// under the same name; another user with that `name` claim gets a suffix,
/// and the name stays held until the user's last tab leaves.
#[test]
fn two_tabs_of_one_user_share_the_name() {
    let s = server(chatroom::config::Guests::On);
    let alice = token("u-1", "Alice", "");
    let (first, w1) = join(s.addr, "lobby", &format!("?token={alice}"));
    let (mut second, w2) = join(s.addr, "lobby", &format!("?token={alice}"));
    assert_eq!((w1["username"].as_str(), w2["username"].as_str()), (Some("Alice"), Some("Alice")));
    let (_other, w3) = join(s.addr, "lobby", &format!("?token={}", token("u-2", "Alice", "")));
    assert_eq!(w3["username"], "Alice-2", "another user");
    drop(first);
    assert_eq!(recv_type(&mut second, "leave")["username"], "Alice", "the first tab is gone");
    let (_guest, w4) = join(s.addr, "lobby", "?username=Alice");
    assert_ne!(w4["username"], "Alice", "still held by the second tab: {w4}");
}

/// With Redis a room spans processes, and so do its names: a guest on one
/// process never holds a name a verified user holds on another (nor one
/// another guest holds there); it gets the usual suffix.
#[test]
fn a_guest_elsewhere_never_takes_a_verified_name() {
    let redis = RedisServer::start(false);
    let node = || redis_node(&redis);
    let (a, b) = (node(), node());
    let (_alice, _) = join(a.addr, "lobby", &format!("?token={}", token("u-1", "Alice", "")));
    let (_gus, _) = join(a.addr, "lobby", "?username=gus");
    let (_watcher, _) = join(b.addr, "lobby", "?username=watcher");
    let known = eventually(IO_TIMEOUT, || {
        let names = get(b.addr, "/api/rooms/lobby").json()["online_names"].to_string();
        names.contains("\"Alice\"") && names.contains("\"gus\"")
    });
    assert!(known, "b hears who is on a");
    let (_guest, w) = join(b.addr, "lobby", "?username=Alice");
    assert_eq!(w["username"], "Alice-2");
    let (_other, w) = join(b.addr, "lobby", "?username=gus");
    assert_eq!(w["username"], "gus-2");
}

/// The other way round: a guest holds a name on one process when a user
/// with that `name` claim joins on another; the guest is renamed (a
/// `rename` event), as it would be on the same process.
#[test]
fn a_guest_elsewhere_gives_way_to_a_verified_user() {
    let redis = RedisServer::start(false);
    let (a, b) = (redis_node(&redis), redis_node(&redis));
    let (mut guest, _) = join(b.addr, "lobby", "?username=Alice");
    let (_alice, w) = join(a.addr, "lobby", &format!("?token={}", token("u-1", "Alice", "")));
    assert_eq!(w["username"], "Alice");
    let renamed = recv_type(&mut guest, "rename");
    assert_eq!((renamed["from"].as_str(), renamed["to"].as_str()), (Some("Alice"), Some("Alice-2")), "{renamed}");
}

/// Tokens never reach the log, even at debug level: not a good one on the
/// handshake's query, not a bad one, not one in an API request's header.
#[test]
fn tokens_never_reach_the_log() {
    let good = token("u-1", "Alice", "");
    let forged =
        token_with(&format!(r#"{{"sub":"u-1","exp":{}}}"#, now() + 600), "another-secret-of-thirty-two-bytes!!");
    let mut server = RealServer::spawn_logging(&[], &["--auth-secret", SECRET, "--data", "none"], "debug");
    let (_alice, _) = join(server.addr, "lobby", &format!("?token={good}"));
    let (error, code) = refused(server.addr, &format!("/ws/chatroom/lobby?token={forged}"));
    assert_eq!((error["code"].as_str(), code), (Some("unauthorized"), Some(4401)));
    let r = request(
        server.addr,
        &format!("GET /api/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(IO_TIMEOUT).is_some_and(|s| s.success()), "a clean stop");
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("chatroom listening"), "the log was read: {log}");
    for secret in [good.as_str(), forged.as_str(), "token="] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}
