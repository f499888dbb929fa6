//! Operating it: /metrics in the Prometheus text format with counters that
//! move by exactly what the traffic implies, /healthz and /readyz (which
//! follows Redis), the separate admin listener, and configuration.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;

/// Parses the Prometheus text format strictly enough to catch mistakes:
/// every sample line is `name{labels} value` with a declared TYPE.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(["counter", "gauge", "histogram", "summary"].contains(&kind), "{line}");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#') && !line.trim().is_empty(), "stray line {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("chatroom_"), "{name}");
        let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(types.contains_key(name) || types.contains_key(base), "no TYPE for {name}");
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn metrics_parse_and_count_exactly_n_posts_times_m_members() {
    let mut cfg = config();
    cfg.rate_limit = 0;
    let server = TestServer::with(cfg);
    let before = parse_prometheus(&get(server.addr, "/metrics").text());
    let (n, m) = (7u64, 4usize);
    let mut clients: Vec<Client> = (0..m)
        .map(|i| {
            let mut c = ws(server.addr, &format!("/ws/chatroom/metrics?username=m{i}"));
            recv_type(&mut c, "welcome");
            c
        })
        .collect();
    for i in 0..n {
        send_text(&mut clients[0], &format!(r#"{{"message": "p{i}"}}"#));
    }
    for c in clients.iter_mut() {
        for _ in 0..n {
            recv_type(c, "message");
        }
    }
    let after = parse_prometheus(&get(server.addr, "/metrics").text());
    let delta = |name: &str| after[name] - before.get(name).copied().unwrap_or(0.0);
    assert_eq!(delta("chatroom_messages_received_total"), n as f64);
    assert_eq!(delta("chatroom_messages_delivered_total"), (n * m as u64) as f64);
    assert_eq!(delta("chatroom_history_writes_total"), n as f64);
    assert_eq!(after["chatroom_websocket_connections"], m as f64);
    assert_eq!(after["chatroom_room_members"], m as f64);
    assert_eq!(after["chatroom_rooms"], 1.0);
    assert!(after["chatroom_loop_turn_seconds_count"] > 0.0);
    assert!(after["chatroom_history_commit_seconds_count"] > 0.0);
    assert!(delta("chatroom_bytes_out_total") > 0.0 && delta("chatroom_bytes_in_total") > 0.0);
    assert_eq!(delta("chatroom_websocket_upgrades_total"), m as f64);
    // Every delivery went out in some flush; coalescing is counted too.
    assert!(delta("chatroom_flushes_total") > 0.0);
    assert!(after.contains_key("chatroom_held_turns_total"));
}

#[test]
fn healthz_and_readyz() {
    let server = TestServer::start();
    let h = get(server.addr, "/healthz");
    assert_eq!(h.status, 200);
    let r = get(server.addr, "/readyz");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ready"], true);
    assert_eq!(r.json()["redis"], "disabled");
}

#[test]
fn readyz_and_metrics_follow_redis_down_and_back() {
    let mut redis = RedisServer::start(false);
    let mut cfg = config();
    cfg.redis = Some(redis.url());
    let server = TestServer::with(cfg);
    assert!(eventually(IO_TIMEOUT, || get(server.addr, "/readyz").json()["redis"] == "up"));
    assert_eq!(metric(server.addr, "chatroom_redis_up"), 1.0);
    redis.stop();
    assert!(eventually(IO_TIMEOUT, || {
        let r = get(server.addr, "/readyz");
        r.status == 200 && r.json()["redis"] == "down"
    }));
    assert_eq!(metric(server.addr, "chatroom_redis_up"), 0.0);
    // Pages keep working while Redis is away.
    assert_eq!(get(server.addr, "/").status, 200);
    redis.restart();
    assert!(eventually(IO_TIMEOUT, || get(server.addr, "/readyz").json()["redis"] == "up"));
    assert!(metric(server.addr, "chatroom_redis_reconnects_total") >= 1.0);
}

#[test]
fn admin_listener_serves_operations_and_nothing_else() {
    let mut cfg = config();
    cfg.admin_bind = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::with(cfg);
    let admin = server.admin.expect("admin address");
    assert_eq!(get(admin, "/metrics").status, 200);
    assert_eq!(get(admin, "/healthz").status, 200);
    assert_eq!(get(admin, "/readyz").status, 200);
    assert_eq!(get(admin, "/stats").status, 200);
    assert_eq!(get(admin, "/").status, 404);
    assert_eq!(get(server.addr, "/metrics").status, 404);
    assert_eq!(get(server.addr, "/readyz").status, 404);
    assert_eq!(get(server.addr, "/").status, 200);
    assert_eq!(get(server.addr, "/css/style.css").status, 200);
}

#[test]
fn print_config_shows_effective_settings_and_their_sources() {
    let dir = temp_dir("config");
    let file = dir.join("chatroom.toml");
    std::fs::write(&file, "history = 7\nmax-message = \"128KiB\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args(["--config", file.to_str().unwrap(), "--print-config", "--rate-limit", "3"])
        .env("CHATROOM_MAX_TEXT", "100")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("history = \"7\"  # config file"), "{text}");
    assert!(text.contains("rate-limit = \"3\"  # command line"), "{text}");
    assert!(text.contains("max-text = \"100\"  # environment"), "{text}");
    assert!(text.contains("bind = \"127.0.0.1:8000\"  # default"), "{text}");
    std::fs::write(&file, "history = \"lots\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chatroom")).args(["--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--history: `lots` is not valid; expected a whole number from 0 to 1000"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
