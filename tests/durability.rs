//! History survives `kill -9`: a message is broadcast only after its batch
//! has committed, so whatever a client received is in the history after a
//! crash. Runs the real binary as a child process.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts the `chatroom` binary on port 0 with `args`; returns it and its address.
fn spawn(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args(["--bind", "127.0.0.1:0", "--rate-limit", "0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = rx.recv_timeout(IO_TIMEOUT).expect("the server did not report its address");
    (child, addr)
}

#[test]
fn kill_9_keeps_every_message_a_client_received() {
    let dir = temp_dir("kill9");
    let db = dir.join("chatroom.db");
    let (mut child, addr) = spawn(&["--data", db.to_str().unwrap()]);
    let mut c = ws(addr, "/ws/chatroom/crash?username=a");
    recv_type(&mut c, "welcome");
    // Post a burst, then kill the server the moment message 50 arrives.
    for i in 1..=200 {
        send_text(&mut c, &format!(r#"{{"message": "m{i}"}}"#));
    }
    let mut received = 0;
    while received < 50 {
        received = recv_type(&mut c, "message")["id"].as_u64().unwrap();
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (mut child, addr) = spawn(&["--data", db.to_str().unwrap()]);
    let page = get(addr, "/api/rooms/crash/messages?limit=200").json();
    let ids: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids.len() as u64 >= received, "got {} stored, client had seen {received}", ids.len());
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>(), "stored ids are 1..=n without gaps");
    // New messages continue after the stored ones.
    let mut c = ws(addr, "/ws/chatroom/crash?username=b");
    let w = recv_type(&mut c, "welcome");
    assert_eq!(w["last_id"].as_u64().unwrap(), ids.len() as u64);
    send_text(&mut c, r#"{"message": "after"}"#);
    assert_eq!(recv_type(&mut c, "message")["id"].as_u64().unwrap(), ids.len() as u64 + 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_second_process_refuses_a_data_file_in_use() {
    let dir = temp_dir("lock");
    let db = dir.join("chatroom.db");
    let (mut first, _) = spawn(&["--data", db.to_str().unwrap()]);
    let started = Instant::now();
    let second = Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args(["--bind", "127.0.0.1:0", "--data", db.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another chatroom process"), "{err}");
    first.kill().unwrap();
    first.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_port_in_use_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_chatroom")).args(["--bind", &addr, "--data", "none"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains(" INFO ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("already in use"), "{err}");
}

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_chatroom")).args(["--max-message", "lots"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-message: `lots` is not valid"), "{err}");
    let help = Command::new(env!("CARGO_BIN_EXE_chatroom")).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--bind ADDR"));
}

/// Runs the binary on data file `db` and returns its exit code and the
/// lines it wrote to stderr other than INFO logs.
fn start_on(db: &std::path::Path) -> (Option<i32>, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args(["--bind", "127.0.0.1:0", "--data", db.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), err.lines().filter(|l| !l.contains(" INFO ")).map(str::to_string).collect())
}

#[test]
fn a_data_file_that_is_not_a_database_is_a_one_line_error() {
    let dir = temp_dir("notdb");
    let db = dir.join("chat.db");
    std::fs::write(&db, b"these are not the bytes of an SQLite database, not even its header\n".repeat(64)).unwrap();
    let (code, lines) = start_on(&db);
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("not a database"), "{lines:?}");
    assert!(lines[0].contains("chat.db"), "the line names the file: {lines:?}");
}

#[test]
fn a_data_file_from_a_newer_chatroom_is_a_one_line_error() {
    let dir = temp_dir("newer");
    let db = dir.join("chat.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 9999).unwrap();
    }
    let (code, lines) = start_on(&db);
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("9999") || lines[0].contains("newer"), "{lines:?}");
}

#[test]
fn a_data_file_deleted_or_replaced_underneath_stops_writes_not_the_server() {
    for replace in [false, true] {
        let dir = temp_dir("lostdb");
        let db = dir.join("chatroom.db");
        // The real binary: how it exits after losing its file is its own
        // business (the last commits could not be stored).
        let server = RealServer::spawn(&[], &["--data", db.to_str().unwrap()]);
        let mut c = ws(server.addr, "/ws/chatroom/lost?username=a");
        recv_type(&mut c, "welcome");
        assert_eq!(post_and_answer(&mut c, "kept")["id"], 1);
        if replace {
            let other = dir.join("other.db");
            std::fs::write(&other, b"").unwrap();
            std::fs::rename(&other, &db).unwrap();
        } else {
            std::fs::remove_file(&db).unwrap();
        }
        // Posts are refused, not written to a file nobody will read.
        let refused = post_and_answer(&mut c, "lost");
        assert_eq!(refused["code"], "unavailable", "replace={replace}: {refused}");
        assert!(
            eventually(IO_TIMEOUT, || get(server.addr, "/readyz").status == 503),
            "replace={replace}: /readyz stays 200"
        );
        assert_eq!(get(server.addr, "/readyz").json()["storage"], "lost");
        // Everything else is served.
        assert_eq!(get(server.addr, "/healthz").status, 200);
        let mut other = ws(server.addr, "/ws/chatroom/elsewhere?username=b");
        recv_type(&mut other, "welcome");
    }
}

#[test]
fn a_full_disk_refuses_those_posts_and_nothing_else() {
    // `--max-data-size` makes the data file full the way a full disk does
    // (SQLITE_FULL), without needing a small filesystem.
    let dir = temp_dir("fulldb");
    let db = dir.join("chatroom.db");
    let server =
        RealServer::spawn(&[], &["--data", db.to_str().unwrap(), "--max-data-size", "96KiB", "--rate-limit", "0"]);
    let mut c = ws(server.addr, "/ws/chatroom/full?username=a");
    recv_type(&mut c, "welcome");
    let long = "x".repeat(4000);
    let mut stored = 0;
    let refused = loop {
        let answer = post_and_answer(&mut c, &format!("{long}{stored}"));
        if answer["type"] == "error" {
            break answer;
        }
        stored += 1;
        assert_eq!(answer["id"], stored, "ids stay gapless");
        assert!(stored < 1000, "the file never filled");
    };
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(stored > 0, "a few posts fit before the limit");
    // The process serves everyone else, and the history it kept reads back.
    assert_eq!(get(server.addr, "/healthz").status, 200);
    let page = get(server.addr, &format!("/api/rooms/full/messages?limit={stored}")).json();
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(stored as usize));
}
