//! Several processes sharing rooms through a real redis-server that the
//! tests start on a free port. The tests that do not depend on there being
//! one Redis (restarting it, freezing it, its key names of old) run again
//! on a real Redis Cluster (`mod on_cluster`, `--redis-cluster`).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// What a test's processes share rooms through: one Redis, or a cluster.
trait Backend {
    /// Points `cfg` at it.
    fn configure(&self, cfg: &mut chatroom::Config);
    /// The flag and value that do the same on a command line.
    fn flag(&self) -> [String; 2];
}

impl Backend for RedisServer {
    fn configure(&self, cfg: &mut chatroom::Config) {
        cfg.redis = Some(self.url());
    }
    fn flag(&self) -> [String; 2] {
        ["--redis".into(), self.url()]
    }
}

impl Backend for RedisCluster {
    fn configure(&self, cfg: &mut chatroom::Config) {
        cfg.redis_cluster = vec![self.seeds()];
    }
    fn flag(&self) -> [String; 2] {
        ["--redis-cluster".into(), self.seeds()]
    }
}

fn node(redis: &impl Backend) -> TestServer {
    node_with(redis, Duration::from_secs(10))
}

/// A process whose rooms stay subscribed for `room_grace` after their last
/// member here left.
fn node_with(redis: &impl Backend, room_grace: Duration) -> TestServer {
    let mut cfg = config();
    redis.configure(&mut cfg);
    cfg.rate_limit = 0;
    cfg.presence_ttl = Duration::from_secs(2);
    cfg.room_grace = room_grace;
    TestServer::with(cfg)
}

/// A counter of `/metrics`, as a whole number.
fn count(server: &TestServer, name: &str) -> u64 {
    metric(server.addr, name) as u64
}

/// Sends `n` messages `<tag>1`, `<tag>2`... and waits for each to come back.
fn post(c: &mut Client, tag: &str, n: usize) -> Vec<Value> {
    (1..=n).for_each(|i| send_text(c, &format!(r#"{{"message": "{tag}{i}"}}"#)));
    (0..n).map(|_| recv_type(c, "message")).collect()
}

/// The ids in a welcome's history.
fn history_ids(welcome: &Value) -> Vec<u64> {
    welcome["history"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect()
}

/// Joins, and waits for the welcome (the room is live on that process; its
/// subscription may still be on its way, and the catch-up covers that).
fn join(server: &TestServer, room: &str, query: &str) -> (Client, Value) {
    let mut c = ws(server.addr, &format!("/ws/chatroom/{room}{query}"));
    let w = recv_type(&mut c, "welcome");
    (c, w)
}

fn wait_up(server: &TestServer) {
    assert!(eventually(IO_TIMEOUT, || get(server.addr, "/readyz").json()["redis"] == "up"), "redis never came up");
}

#[test]
fn three_processes_one_conversation() {
    three_processes_one_conversation_on(&RedisServer::start(false));
}

fn three_processes_one_conversation_on(redis: &impl Backend) {
    let nodes: Vec<TestServer> = (0..3).map(|_| node(redis)).collect();
    nodes.iter().for_each(wait_up);
    let mut clients: Vec<Client> =
        (0..6).map(|i| join(&nodes[i % 3], "shared", &format!("?username=c{i}")).0).collect();
    for round in 0..10 {
        for (i, c) in clients.iter_mut().enumerate() {
            send_text(c, &format!(r#"{{"message": "r{round}-c{i}"}}"#));
        }
    }
    let mut orders = Vec::new();
    for c in clients.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 60 {
            let m = recv_type(c, "message");
            seen.push((m["id"].as_u64().unwrap(), m["message"].as_str().unwrap().to_string()));
        }
        assert_eq!(seen.iter().map(|(id, _)| *id).collect::<Vec<_>>(), (1..=60).collect::<Vec<_>>());
        assert_eq!(seen.iter().map(|(_, t)| t).collect::<HashSet<_>>().len(), 60, "no duplicates");
        orders.push(seen);
    }
    assert!(orders.windows(2).all(|w| w[0] == w[1]), "one order everywhere");
}

/// `--redis-wait 1` on a process posting through `redis`; a second
/// process (no wait) listens. Each of `n` posts reaches both members, in
/// order, with `"unconfirmed": true` exactly when `flagged`; the poster's
/// metric counts the flagged ones.
fn posts_with_a_wait_on(redis: &RedisServer, flagged: bool) {
    let mut cfg = config();
    redis.configure(&mut cfg);
    cfg.rate_limit = 0;
    cfg.redis_wait = 1;
    let a = TestServer::with(cfg);
    let b = node(redis);
    wait_up(&a);
    wait_up(&b);
    let (mut poster, _) = join(&a, "waited", "?username=ann");
    let (mut listener, _) = join(&b, "waited", "?username=bob");
    let n = 5;
    let sent = Instant::now();
    let acks = post(&mut poster, "w", n);
    let took = sent.elapsed();
    let heard: Vec<Value> = (0..n).map(|_| recv_type(&mut listener, "message")).collect();
    for frames in [&acks, &heard] {
        let ids: Vec<u64> = frames.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, (1..=n as u64).collect::<Vec<_>>(), "in order, gapless");
        let texts: Vec<&str> = frames.iter().map(|m| m["message"].as_str().unwrap()).collect();
        assert_eq!(texts, ["w1", "w2", "w3", "w4", "w5"]);
        for m in frames {
            assert_eq!(m["unconfirmed"].as_bool(), flagged.then_some(true), "{m}");
        }
    }
    assert_eq!(count(&a, "chatroom_redis_unconfirmed_posts_total"), if flagged { n as u64 } else { 0 });
    if flagged {
        // The WAIT ran to its timeout (100 ms), and only that: the
        // command link never timed out (`--redis-timeout`) and reconnected.
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert_eq!(count(&a, "chatroom_redis_reconnects_total"), 0);
    }
    // The stream has them all, whatever the flag said.
    let page = get(a.addr, "/api/rooms/waited/messages").json();
    let stored: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(stored, (1..=n as u64).collect::<Vec<_>>(), "{page}");
}

/// A Redis with no replica cannot confirm anything: every post is still
/// published and acknowledged, after the WAIT's timeout, flagged.
#[test]
fn with_redis_wait_and_no_replica_posts_go_out_flagged_unconfirmed() {
    posts_with_a_wait_on(&RedisServer::start(false), true);
}

/// With a replica that keeps up, the WAIT is answered at once and nothing
/// is flagged.
#[test]
fn with_redis_wait_and_a_replica_posts_go_out_confirmed() {
    let master = RedisServer::start(false);
    let _replica = RedisServer::start_replica_of(&master);
    posts_with_a_wait_on(&master, false);
}

#[test]
fn history_and_resume_work_on_any_process_even_a_late_one() {
    history_and_resume_work_on_any_process_even_a_late_one_on(&RedisServer::start(false));
}

fn history_and_resume_work_on_any_process_even_a_late_one_on(redis: &impl Backend) {
    let a = node(redis);
    wait_up(&a);
    let (mut ca, _) = join(&a, "hist", "?username=a");
    for i in 1..=12 {
        send_text(&mut ca, &format!(r#"{{"message": "m{i}"}}"#));
        recv_type(&mut ca, "message");
    }
    // A process started after the messages were sent.
    let late = node(redis);
    wait_up(&late);
    let (_cb, wb) = join(&late, "hist", "?username=b");
    let ids: Vec<u64> = wb["history"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=12).collect::<Vec<_>>());
    let (_cc, wc) = join(&late, "hist", "?username=c&since=9");
    let ids: Vec<u64> = wc["history"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![10, 11, 12]);
    let page = get(late.addr, "/api/rooms/hist/messages?before=5&limit=3").json();
    let ids: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![2, 3, 4]);
    // Where history starts, not where the page does: a page that can scroll
    // back further says so.
    assert_eq!(page["oldest_id"], 1, "{page}");
    let newest = get(late.addr, "/api/rooms/hist/messages?limit=2").json();
    assert_eq!(newest["oldest_id"], 1, "{newest}");
}

/// Posts made while Redis is down each end in exactly one outcome: delivered
/// once (buffered, then sent) or an error to the sender.
fn redis_restart_mid_conversation(appendonly: bool) {
    let mut redis = RedisServer::start(appendonly);
    let a = node(&redis);
    let b = node(&redis);
    wait_up(&a);
    wait_up(&b);
    let (mut ca, _) = join(&a, "flaky", "?username=a");
    let (mut cb, _) = join(&b, "flaky", "?username=b");
    for i in 1..=5 {
        send_text(&mut ca, &format!(r#"{{"message": "before{i}"}}"#));
    }
    let mut got_b: Vec<Value> = (0..5).map(|_| recv_type(&mut cb, "message")).collect();
    redis.stop();
    assert!(eventually(IO_TIMEOUT, || get(a.addr, "/readyz").json()["redis"] == "down"));
    for i in 1..=5 {
        send_text(&mut ca, &format!(r#"{{"message": "during{i}"}}"#));
    }
    redis.restart();
    wait_up(&a);
    wait_up(&b);
    for i in 1..=5 {
        send_text(&mut ca, &format!(r#"{{"message": "after{i}"}}"#));
    }
    // Sender's view: every post is either delivered back or refused with an error.
    let mut outcomes: HashMap<String, &str> = HashMap::new();
    let mut delivered_a = Vec::new();
    while outcomes.len() < 15 {
        let v = recv_json(&mut ca);
        match v["type"].as_str() {
            Some("message") => {
                let text = v["message"].as_str().unwrap().to_string();
                assert!(outcomes.insert(text, "delivered").is_none(), "delivered twice: {v}");
                delivered_a.push(v["id"].as_u64().unwrap());
            }
            Some("error") => {
                assert_eq!(v["code"], "unavailable");
                outcomes.insert(format!("error{}", outcomes.len()), "error");
            }
            _ => {}
        }
    }
    // Receiver on the other process: the same delivered messages, in order, once.
    let delivered = outcomes.values().filter(|o| **o == "delivered").count();
    while got_b.len() < delivered {
        got_b.push(recv_type(&mut cb, "message"));
    }
    let ids_b: Vec<u64> = got_b.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids_b.windows(2).all(|w| w[1] == w[0] + 1), "gapless at b: {ids_b:?}");
    assert_eq!(ids_b, delivered_a, "same messages, same order");
    assert!(ids_b[0] == 1);
}

#[test]
fn redis_restart_without_persistence() {
    redis_restart_mid_conversation(false);
}

#[test]
fn redis_restart_with_appendonly() {
    redis_restart_mid_conversation(true);
}

#[test]
fn presence_spans_processes() {
    presence_spans_processes_on(&RedisServer::start(false));
}

fn presence_spans_processes_on(redis: &impl Backend) {
    let a = node(redis);
    let b = node(redis);
    wait_up(&a);
    wait_up(&b);
    let (mut ca, _) = join(&a, "pres", "?username=ann");
    let (_cb, _) = join(&b, "pres", "?username=bob");
    // Ann, on process A, hears that Bob joined on process B.
    let j = recv_type(&mut ca, "join");
    assert_eq!(j["username"], "bob");
    assert_eq!(j["online_count"], 2);
    assert!(eventually(IO_TIMEOUT, || get(b.addr, "/api/rooms/pres").json()["online"] == 2));
    let (_cc, wc) = join(&b, "pres", "?username=cat");
    let online: HashSet<String> =
        wc["online"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(online, HashSet::from(["ann".to_string(), "bob".to_string(), "cat".to_string()]));
}

#[test]
fn kill_9_of_one_process_heals_presence_and_the_rest_carry_on() {
    kill_9_of_one_process_heals_presence_and_the_rest_carry_on_on(&RedisServer::start(false));
}

fn kill_9_of_one_process_heals_presence_and_the_rest_carry_on_on(redis: &impl Backend) {
    let [flag, value] = redis.flag();
    let args = [flag.as_str(), value.as_str(), "--data", "none", "--presence-ttl", "2s", "--rate-limit", "0"];
    let a = RealServer::spawn(&[], &args);
    let mut b = RealServer::spawn(&[], &args);
    for addr in [a.addr, b.addr] {
        assert!(eventually(IO_TIMEOUT, || get(addr, "/readyz").json()["redis"] == "up"));
    }
    let mut ca = ws(a.addr, "/ws/chatroom/heal?username=ann");
    recv_type(&mut ca, "welcome");
    let mut cb = ws(b.addr, "/ws/chatroom/heal?username=bob");
    recv_type(&mut cb, "welcome");
    assert_eq!(recv_type(&mut ca, "join")["username"], "bob");
    assert!(eventually(IO_TIMEOUT, || get(a.addr, "/api/rooms/heal").json()["online"] == 2));
    b.child.kill().unwrap(); // SIGKILL: no leave is ever sent by b
    b.child.wait().unwrap();
    let started = std::time::Instant::now();
    let left = recv_type(&mut ca, "leave");
    assert_eq!(left["username"], "bob");
    assert_eq!(left["online_count"], 1);
    assert!(started.elapsed() < Duration::from_secs(6), "healed in {:?}", started.elapsed());
    assert_eq!(get(a.addr, "/api/rooms/heal").json()["online"], 1);
    // The survivor carries on.
    send_text(&mut ca, r#"{"message": "still here"}"#);
    assert_eq!(recv_type(&mut ca, "message")["message"], "still here");
    drop(a);
}

/// A Redis that is connected but stuck (SIGSTOP: its sockets stay open, no
/// EOF, no reset) is noticed within `--redis-timeout`, not after minutes of
/// TCP keepalive; a post made meanwhile waits, and the chat resumes once
/// Redis does.
#[test]
fn a_frozen_redis_is_noticed_within_the_timeout_and_the_chat_resumes() {
    let redis = RedisServer::start(false);
    let url = redis.url();
    let args = ["--redis", url.as_str(), "--data", "none", "--redis-timeout", "500ms", "--rate-limit", "0"];
    let server = RealServer::spawn(&[], &args);
    let redis_state = || get(server.addr, "/readyz").json()["redis"].as_str().unwrap_or_default().to_string();
    assert!(eventually(IO_TIMEOUT, || redis_state() == "up"), "redis never came up");
    let mut c = ws(server.addr, "/ws/chatroom/frozen?username=ann");
    recv_type(&mut c, "welcome");
    send_text(&mut c, r#"{"message": "before"}"#);
    assert_eq!(recv_type(&mut c, "message")["message"], "before");

    redis.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    // This post's command gets no reply: it times out, waits in the
    // backlog, and goes again once Redis answers.
    send_text(&mut c, r#"{"message": "during"}"#);
    assert!(eventually(IO_TIMEOUT, || redis_state() == "down"), "the frozen redis was never noticed");
    let noticed = frozen_at.elapsed();
    // The subscription link pings after 500 ms of silence and gives up
    // 500 ms later; TCP keepalive alone would take over a minute.
    assert!(noticed < Duration::from_secs(3), "noticed after {noticed:?}");
    // Still frozen: reconnects do not pretend to be up.
    assert!(!eventually(Duration::from_millis(1500), || redis_state() != "down"));

    redis.signal(libc::SIGCONT);
    assert!(
        eventually(IO_TIMEOUT, || {
            let r = get(server.addr, "/readyz");
            r.status == 200 && r.json()["redis"] == "up"
        }),
        "redis never came back up"
    );
    // The post made while frozen arrives once, then new posts flow again.
    assert_eq!(recv_type(&mut c, "message")["message"], "during");
    send_text(&mut c, r#"{"message": "after"}"#);
    assert_eq!(recv_type(&mut c, "message")["message"], "after");
}

#[test]
fn history_kept_under_the_earlier_key_names_is_moved_on_start() {
    let redis = RedisServer::start(false);
    // A room as an earlier chatroom left it: keys without a hash tag.
    redis.cli(&["HSET", "chatroom:rooms", "old", "1"]);
    redis.cli(&["SET", "chatroom:room:old:id", "2"]);
    for id in 1..=2 {
        let json = serde_json::json!({"type": "message", "room": "old", "id": id, "username": "u", "message": format!("m{id}"), "ts": 1});
        redis.cli(&["XADD", "chatroom:room:old:log", &format!("{id}-0"), "m", &json.to_string()]);
    }
    let a = node(&redis);
    wait_up(&a);
    let (mut c, w) = join(&a, "old", "?username=a");
    let ids: Vec<u64> = w["history"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2], "the history under the earlier names is the room's");
    send_text(&mut c, r#"{"message": "next"}"#);
    let next = loop {
        let m = recv_type(&mut c, "message");
        if m["message"] == "next" {
            break m;
        }
    };
    assert_eq!(next["id"], 3, "ids go on from where they were");
    assert_eq!(redis.cli(&["EXISTS", "chatroom:room:old:log"]), "0");
    assert_eq!(redis.cli(&["XLEN", "chatroom:{old}:log"]), "3");
}

#[test]
fn a_turn_s_posts_to_a_room_share_one_script_call() {
    a_turn_s_posts_to_a_room_share_one_script_call_on(&RedisServer::start(false));
}

fn a_turn_s_posts_to_a_room_share_one_script_call_on(redis: &impl Backend) {
    let a = node(redis);
    wait_up(&a);
    let (mut c, _) = join(&a, "batch", "?username=a");
    // 50 posts in one write: they are read and handed to Redis in the
    // same loop turn (or a few), far fewer calls than posts.
    let mut frames = Vec::new();
    for i in 0..50 {
        frames.extend(client_frame(1, true, format!(r#"{{"message": "p{i}"}}"#).as_bytes(), true));
    }
    let stream = c.get_mut();
    match stream {
        tungstenite::stream::MaybeTlsStream::Plain(s) => std::io::Write::write_all(s, &frames).unwrap(),
        _ => unreachable!("plain TCP"),
    }
    let ids: Vec<u64> = (0..50).map(|_| recv_type(&mut c, "message")["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
    let posts = metric(a.addr, "chatroom_redis_posts_total");
    let calls = metric(a.addr, "chatroom_redis_post_calls_total");
    assert_eq!(posts, 50.0);
    assert!(calls <= 10.0, "{calls} script calls for 50 posts sent at once");

    // So the stream holds them several to an entry: history cut at any id
    // still comes back exact, on a process that never heard them.
    let late = node(redis);
    wait_up(&late);
    for before in [2u64, 17, 33, 50, 51] {
        let page = get(late.addr, &format!("/api/rooms/batch/messages?before={before}&limit=7")).json();
        let ids: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(ids, (before.saturating_sub(7).max(1)..before).collect::<Vec<_>>(), "before {before}: {page}");
        assert_eq!(page["oldest_id"], 1, "{page}");
    }
    for since in [3u64, 26, 49, 50] {
        let (_c, welcome) = join(&late, "batch", &format!("?username=s{since}&since={since}"));
        assert_eq!(history_ids(&welcome), (since + 1..=50).collect::<Vec<_>>(), "since {since}");
    }
    let texts: Vec<String> = join(&late, "batch", "?username=all").1["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts, (0..50).map(|i| format!("p{i}")).collect::<Vec<_>>());
}

/// Rooms are heard only where they have members: process B never receives
/// the posts of a room served by A, yet B's API lists the room with its
/// message count, last post and online count.
#[test]
fn a_process_hears_only_its_rooms_and_still_lists_the_others() {
    a_process_hears_only_its_rooms_and_still_lists_the_others_on(&RedisServer::start(false));
}

fn a_process_hears_only_its_rooms_and_still_lists_the_others_on(redis: &impl Backend) {
    let a = node(redis);
    let b = node(redis);
    wait_up(&a);
    wait_up(&b);
    let (mut ann, _) = join(&a, "busy", "?username=ann");
    let sent = post(&mut ann, "busy", 20);
    let last_ts = sent.last().unwrap()["ts"].as_u64().unwrap();

    // Posts in B's own room, after all of those: the subscription link
    // delivers in order, so had B been subscribed to "busy" its twenty
    // posts would have come first. (A post made before B's subscription
    // took effect reaches B through the catch-up, not the channel: post
    // until one comes through the channel.)
    let (mut bob, _) = join(&b, "mine", "?username=bob");
    let mut mine = 0;
    while count(&b, "chatroom_redis_messages_received_total") == 0 {
        assert!(mine < 50, "B never heard its own room");
        post(&mut bob, "mine", 1);
        mine += 1;
    }
    assert!(count(&b, "chatroom_redis_messages_received_total") <= mine, "B heard its own room only");
    assert_eq!(count(&a, "chatroom_redis_messages_received_total"), 20);

    // B's API still knows "busy": created by A, posted in on A, online on A.
    let busy_on_b = || {
        let rooms = get(b.addr, "/api/rooms").json();
        rooms["rooms"].as_array().unwrap().iter().find(|r| r["name"] == "busy").cloned()
    };
    assert!(eventually(IO_TIMEOUT, || busy_on_b().is_some_and(|r| r["online"] == 1)), "{:?}", busy_on_b());
    let busy = busy_on_b().unwrap();
    assert_eq!((busy["messages"].as_u64(), busy["last_post"].as_u64()), (Some(20), Some(last_ts)), "{busy}");
    assert_eq!(busy["status"], "active");
    let room = get(b.addr, "/api/rooms/busy").json();
    assert_eq!(room["online_names"], serde_json::json!(["ann"]), "{room}");
    assert_eq!((room["messages"].as_u64(), room["last_post"].as_u64()), (Some(20), Some(last_ts)));

    // Busiest first: two rooms with one member each, the later post first.
    let names: Vec<String> = get(b.addr, "/api/rooms").json()["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&names[..2], ["mine", "busy"]);

    // A room created on A after B's last refresh is found too (its figures
    // are read again once they are two seconds old).
    let (_ann2, _) = join(&a, "newer", "?username=ann");
    assert!(eventually(IO_TIMEOUT, || get(b.addr, "/api/rooms/newer").status == 200));
    assert_eq!(get(b.addr, "/api/rooms/newer/messages").status, 200);
    assert!(count(&b, "chatroom_redis_messages_received_total") <= mine, "and still none of A's posts");

    // Ann leaves: B's count of the room it does not serve follows.
    drop(ann);
    assert!(eventually(IO_TIMEOUT, || busy_on_b().is_some_and(|r| r["online"] == 0)), "{:?}", busy_on_b());
}

/// A member joining on B a room served until then by A alone gets the
/// room's history, then every later message once and in order, while A
/// keeps posting through the moment B subscribes.
#[test]
fn a_member_joining_elsewhere_gets_the_history_then_every_message_in_order() {
    a_member_joining_elsewhere_gets_the_history_then_every_message_in_order_on(&RedisServer::start(false));
}

fn a_member_joining_elsewhere_gets_the_history_then_every_message_in_order_on(redis: &impl Backend) {
    let a = node(redis);
    let b = node(redis);
    wait_up(&a);
    wait_up(&b);
    let (mut ann, _) = join(&a, "late", "?username=ann");
    post(&mut ann, "before", 30);
    let poster = std::thread::spawn(move || {
        post(&mut ann, "during", 100);
        ann
    });
    let (mut bob, welcome) = join(&b, "late", "?username=bob");
    let mut ids = history_ids(&welcome);
    assert!(ids.len() >= 30, "the welcome's history: {ids:?}");
    while ids.last() != Some(&130) {
        let v = recv_json(&mut bob);
        assert_ne!(v["type"], "gap", "nothing was lost: {v}");
        if v["type"] == "message" {
            ids.push(v["id"].as_u64().unwrap());
        }
    }
    let first = ids[0];
    assert_eq!(ids, (first..=130).collect::<Vec<_>>(), "gapless, once each, in order");
    poster.join().unwrap();
}

/// A room B has not served for a while: B unsubscribed after the grace and
/// its idea of the room's last id fell far behind. A member coming back on
/// B gets the newest history in the welcome and then only new messages:
/// no replay of what was posted meanwhile, and nothing skipped.
#[test]
fn a_room_not_heard_for_a_while_carries_on_from_its_welcome() {
    a_room_not_heard_for_a_while_carries_on_from_its_welcome_on(&RedisServer::start(false));
}

fn a_room_not_heard_for_a_while_carries_on_from_its_welcome_on(redis: &impl Backend) {
    let a = node(redis);
    let b = node_with(redis, Duration::from_millis(200));
    wait_up(&a);
    wait_up(&b);
    let (mut ann, _) = join(&a, "away", "?username=ann");
    post(&mut ann, "first", 3);
    let (bob, w) = join(&b, "away", "?username=bob");
    assert_eq!(history_ids(&w), [1, 2, 3]);
    drop(bob);
    assert!(
        eventually(IO_TIMEOUT, || count(&b, "chatroom_redis_unsubscribes_total") == 1),
        "B never unsubscribed after the grace"
    );
    // More than a catch-up reads at once (1,000), posted while B is away.
    post(&mut ann, "meanwhile", 1100);
    let (mut bob, w) = join(&b, "away", "?username=bob");
    assert_eq!(history_ids(&w), (1054..=1103).collect::<Vec<_>>());
    post(&mut ann, "after", 5);
    let mut later = Vec::new();
    while later.len() < 5 {
        let v = recv_json(&mut bob);
        assert_ne!(v["type"], "gap", "{v}");
        if v["type"] == "message" {
            later.push(v["id"].as_u64().unwrap());
        }
    }
    assert_eq!(later, (1104..=1108).collect::<Vec<_>>(), "new messages only, once each");
}

/// A member who leaves and comes back within the grace finds the room
/// still subscribed: no UNSUBSCRIBE, no new SUBSCRIBE, and messages flow.
#[test]
fn leaving_and_coming_back_within_the_grace_keeps_the_subscription() {
    leaving_and_coming_back_within_the_grace_keeps_the_subscription_on(&RedisServer::start(false));
}

fn leaving_and_coming_back_within_the_grace_keeps_the_subscription_on(redis: &impl Backend) {
    let a = node(redis);
    let b = node(redis);
    wait_up(&a);
    wait_up(&b);
    let (mut ann, _) = join(&a, "blip", "?username=ann");
    let before = count(&b, "chatroom_redis_subscribes_total");
    let (bob, _) = join(&b, "blip", "?username=bob");
    assert!(eventually(IO_TIMEOUT, || count(&b, "chatroom_redis_subscribes_total") == before + 1));
    let online_on_b = || get(b.addr, "/api/rooms/blip").json()["online"].as_u64();
    assert!(eventually(IO_TIMEOUT, || online_on_b() == Some(2)), "ann and bob: {:?}", online_on_b());
    drop(bob);
    assert!(eventually(IO_TIMEOUT, || online_on_b() == Some(1)), "bob's leave was never seen: {:?}", online_on_b());
    let (mut bob, _) = join(&b, "blip", "?username=bob");
    post(&mut ann, "hi", 1);
    assert_eq!(recv_type(&mut bob, "message")["message"], "hi1");
    assert_eq!(count(&b, "chatroom_redis_subscribes_total"), before + 1);
    assert_eq!(count(&b, "chatroom_redis_unsubscribes_total"), 0);
}

/// The tests above that do not depend on there being one Redis, on a
/// real cluster of three masters and three replicas.
mod on_cluster {
    use super::*;

    #[test]
    fn three_processes_one_conversation() {
        three_processes_one_conversation_on(&RedisCluster::start());
    }

    #[test]
    fn history_and_resume_work_on_any_process_even_a_late_one() {
        history_and_resume_work_on_any_process_even_a_late_one_on(&RedisCluster::start());
    }

    #[test]
    fn presence_spans_processes() {
        presence_spans_processes_on(&RedisCluster::start());
    }

    #[test]
    fn kill_9_of_one_process_heals_presence_and_the_rest_carry_on() {
        kill_9_of_one_process_heals_presence_and_the_rest_carry_on_on(&RedisCluster::start());
    }

    #[test]
    fn a_turn_s_posts_to_a_room_share_one_script_call() {
        a_turn_s_posts_to_a_room_share_one_script_call_on(&RedisCluster::start());
    }

    #[test]
    fn a_process_hears_only_its_rooms_and_still_lists_the_others() {
        a_process_hears_only_its_rooms_and_still_lists_the_others_on(&RedisCluster::start());
    }

    #[test]
    fn a_member_joining_elsewhere_gets_the_history_then_every_message_in_order() {
        a_member_joining_elsewhere_gets_the_history_then_every_message_in_order_on(&RedisCluster::start());
    }

    #[test]
    fn a_room_not_heard_for_a_while_carries_on_from_its_welcome() {
        a_room_not_heard_for_a_while_carries_on_from_its_welcome_on(&RedisCluster::start());
    }

    #[test]
    fn leaving_and_coming_back_within_the_grace_keeps_the_subscription() {
        leaving_and_coming_back_within_the_grace_keeps_the_subscription_on(&RedisCluster::start());
    }
}
