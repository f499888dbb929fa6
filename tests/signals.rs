//! Signals that must not take the real binary down: SIGHUP is logged and
//! the server goes on; a write past the file-size limit (SIGXFSZ, then
//! EFBIG) refuses the posts it carried and nothing else; a write to a reset
//! socket (SIGPIPE, then EPIPE) drops that peer alone.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn sighup_is_logged_and_the_server_keeps_serving() {
    let mut server = RealServer::spawn(&[], &["--data", "none"]);
    for _ in 0..3 {
        server.signal(libc::SIGHUP);
    }
    // Signals are taken in order with the requests that follow: a server
    // that died of the SIGHUPs would not answer this.
    assert_eq!(get(server.addr, "/healthz").status, 200);
    assert!(server.is_running());
    let mut c = ws(server.addr, "/ws/chatroom/hup?username=a");
    recv_type(&mut c, "welcome");
    assert_eq!(post_and_answer(&mut c, "still here")["type"], "message");
}

#[test]
fn a_write_past_the_file_size_limit_refuses_those_posts_and_nothing_else() {
    let dir = temp_dir("fsize");
    let db = dir.join("chat.db");
    let mut server = RealServer::spawn(&[], &["--data", db.to_str().unwrap(), "--rate-limit", "0"]);
    let mut c = ws(server.addr, "/ws/chatroom/big?username=a");
    recv_type(&mut c, "welcome");
    assert_eq!(post_and_answer(&mut c, "before")["type"], "message");
    // A soft limit at the files' current size: the next commit's write
    // passes it (the WAL grows with every commit).
    let largest =
        std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).max().unwrap();
    let pid = server.pid.to_string();
    let prlimit = |limit: &str| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={limit}")])
            .status()
            .expect("prlimit (util-linux) runs");
        assert!(status.success(), "prlimit --fsize={limit}");
    };
    prlimit(&format!("{largest}:unlimited"));
    let long = "x".repeat(4000);
    let mut refused = None;
    for i in 0..200 {
        let answer = post_and_answer(&mut c, &format!("{long}{i}"));
        if answer["type"] == "error" {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("a commit past the limit is refused");
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert!(server.is_running(), "SIGXFSZ did not kill the server");
    // Another client is served meanwhile.
    assert_eq!(get(server.addr, "/healthz").status, 200);
    // The limit raised: posting works again.
    prlimit("unlimited:unlimited");
    let answer = post_and_answer(&mut c, "after");
    assert_eq!(answer["type"], "message", "{answer}");
    let ids = [answer["id"].as_u64().unwrap()];
    assert!(ids[0] >= 2, "ids go on: {ids:?}");
    drop(c);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(5)).is_some_and(|s| s.success()));
}

#[test]
fn writes_to_reset_sockets_drop_those_peers_alone() {
    let mut server = RealServer::spawn(&[], &["--data", "none"]);
    // Clients that ask for a page and reset at once, unread: the answers
    // meet closed sockets (EPIPE or ECONNRESET, never a SIGPIPE death).
    for _ in 0..50 {
        let mut s = tcp(server.addr);
        s.write_all(format!("GET /learn HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes()).unwrap();
        reset(s);
    }
    assert_eq!(get(server.addr, "/healthz").status, 200);
    assert!(server.is_running());
}
