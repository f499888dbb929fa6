//! Limits: connections at most (503 with Retry-After past them), per client
//! address (also behind a trusted proxy, by X-Forwarded-For), descriptors
//! (the soft limit raised to the hard one, EMFILE survived without a busy
//! loop), and output per client (a slow consumer is dropped with 1008 while
//! the rest of its room gets every message).
//!
//! The descriptor tests run the real binary under `prlimit`, so the limits
//! are the process's own and /proc can be read.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chatroom::config::Cidr;
use common::*;

/// A keep-alive `GET /healthz` with `extra` header lines.
fn healthz(addr: SocketAddr, extra: &str) -> String {
    format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n")
}

/// Sends `raw` on `s` and reads the answer, keeping the connection.
fn ask(s: &mut TcpStream, raw: &str) -> HttpResponse {
    s.write_all(raw.as_bytes()).unwrap();
    read_response(s, &mut Vec::new(), false)
}

/// Asserts `r` is the refusal a client over a limit gets.
fn assert_refused(r: &HttpResponse, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert!(r.header("retry-after").is_some(), "{what}: 503 without Retry-After");
}

/// The answer to `raw` on `s` if one comes within `wait`, else `None`
/// (the connection is still in the kernel's accept queue).
fn answer_within(s: &mut TcpStream, raw: &str, wait: Duration) -> Option<u16> {
    s.write_all(raw.as_bytes()).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    let first = match s.read(&mut byte) {
        Ok(1) => byte[0],
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
        other => panic!("no answer: {other:?}"),
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = vec![first];
    Some(read_response(s, &mut buf, false).status)
}

#[test]
fn past_max_connections_http_and_upgrades_get_503_with_retry_after() {
    let mut cfg = config();
    cfg.max_connections = 3;
    let server = TestServer::with(cfg);
    let a = server.addr;
    let mut open: Vec<TcpStream> = (0..3).map(|_| tcp(a)).collect();
    for s in &mut open {
        assert_eq!(ask(s, &healthz(a, "")).status, 200);
    }
    assert_refused(&request(a, &healthz(a, "")), "the 4th connection");
    assert_refused(&request(a, &upgrade_request(a, "/ws/echo", "")), "an upgrade as the 4th connection");
    // A slot comes free when a client leaves.
    drop(open.pop());
    assert!(eventually(Duration::from_secs(5), || get(a, "/healthz").status == 200));
}

#[test]
fn max_per_ip_counts_each_client_address_alone() {
    let mut cfg = config();
    cfg.max_per_ip = 2;
    let server = TestServer::with(cfg);
    let a = server.addr;
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut mine: Vec<TcpStream> = (0..2).map(|_| tcp_from(local, a)).collect();
    for s in &mut mine {
        assert_eq!(ask(s, &healthz(a, "")).status, 200);
    }
    assert_refused(&ask(&mut tcp_from(local, a), &healthz(a, "")), "a 3rd connection from 127.0.0.1");
    // Another address has its own count, WebSockets included.
    let mut theirs = tcp_from(other, a);
    raw_upgrade(&mut theirs, a, "/ws/echo");
    let mut second = tcp_from(other, a);
    raw_upgrade(&mut second, a, "/ws/echo");
    let r = ask(&mut tcp_from(other, a), &upgrade_request(a, "/ws/echo", ""));
    assert_refused(&r, "a 3rd WebSocket from 127.0.0.2");
    // Leaving gives the slot back.
    drop(mine.pop());
    assert!(eventually(Duration::from_secs(5), || ask(&mut tcp_from(local, a), &healthz(a, "")).status == 200));
}

#[test]
fn behind_a_trusted_proxy_x_forwarded_for_is_the_client() {
    let mut cfg = config();
    cfg.max_per_ip = 1;
    cfg.trusted_proxy = vec![Cidr::parse("127.0.0.1/32").unwrap()];
    let server = TestServer::with(cfg);
    let a = server.addr;
    let proxy: IpAddr = "127.0.0.1".parse().unwrap();
    let via = |client: &str| format!("X-Forwarded-For: {client}\r\n");
    // Two clients through one proxy address: counted apart.
    let mut first = tcp_from(proxy, a);
    assert_eq!(ask(&mut first, &healthz(a, &via("203.0.113.1"))).status, 200);
    let mut second = tcp_from(proxy, a);
    assert_eq!(ask(&mut second, &healthz(a, &via("203.0.113.2"))).status, 200);
    // The same client again is over its limit of 1, for HTTP and upgrades.
    assert_refused(&ask(&mut tcp_from(proxy, a), &healthz(a, &via("203.0.113.1"))), "203.0.113.1 again");
    let upgrade = upgrade_request(a, "/ws/echo", &via("198.51.100.7, 203.0.113.2"));
    assert_refused(&ask(&mut tcp_from(proxy, a), &upgrade), "203.0.113.2 again, by upgrade");
    // A client that is not a proxy cannot pick its address with the header.
    let direct: IpAddr = "127.0.0.3".parse().unwrap();
    let mut own = tcp_from(direct, a);
    assert_eq!(ask(&mut own, &healthz(a, &via("203.0.113.50"))).status, 200);
    assert_refused(&ask(&mut tcp_from(direct, a), &healthz(a, &via("203.0.113.51"))), "a forged X-Forwarded-For");
    // The first client leaves: its address may come back.
    drop(first);
    assert!(eventually(Duration::from_secs(5), || {
        ask(&mut tcp_from(proxy, a), &healthz(a, &via("203.0.113.1"))).status == 200
    }));
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one_and_sizes_max_connections() {
    let mut server = RealServer::spawn(&["prlimit", "--nofile=100:200"], &["--data", "none"]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid)).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["200", "200"], "{line}");
    // --max-connections was sized from 200 descriptors: past it, a 503 (not
    // an accept failure: the reserve leaves descriptors to refuse with).
    let a = server.addr;
    let mut open = Vec::new();
    let refused_at = loop {
        let mut s = tcp(a);
        let r = ask(&mut s, &healthz(a, ""));
        if r.status == 503 {
            assert_refused(&r, "past max-connections");
            break open.len();
        }
        assert_eq!(r.status, 200);
        open.push(s);
        assert!(open.len() < 200, "200 connections and no 503 under a limit of 200 descriptors");
    };
    println!("descriptor limit 200: {refused_at} connections, then 503");
    assert!(refused_at >= 100, "only {refused_at} connections out of 200 descriptors");
    assert!(server.is_running());
}

#[test]
fn out_of_descriptors_the_server_waits_without_spinning_and_serves_the_queue_after_a_close() {
    // 40 descriptors, but permission for 1,000 connections: accept hits
    // EMFILE instead of the 503 path.
    let mut server =
        RealServer::spawn(&["prlimit", "--nofile=40:40"], &["--data", "none", "--max-connections", "1000"]);
    let a = server.addr;
    let request = healthz(a, "");
    let mut served = Vec::new();
    let mut queued = Vec::new();
    while queued.is_empty() {
        assert!(served.len() < 40, "40 connections served under a 40-descriptor limit");
        let mut s = tcp(a);
        match answer_within(&mut s, &request, Duration::from_secs(1)) {
            Some(status) => {
                assert_eq!(status, 200);
                served.push(s);
            }
            // Not accepted: it waits in the kernel's backlog.
            None => queued.push(s),
        }
    }
    for _ in 0..2 {
        let mut s = tcp(a);
        s.write_all(request.as_bytes()).unwrap();
        queued.push(s);
    }
    // Stalled on EMFILE for a second: the retry every 100 ms costs almost
    // nothing; a busy loop would burn the whole second.
    let cpu_before = server.cpu_time();
    queued[0].set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(queued[0].read(&mut [0u8; 1]).is_err(), "a queued client was answered while out of descriptors");
    let cpu = server.cpu_time() - cpu_before;
    println!("EMFILE stall: {} connections served, CPU {cpu:?} over 1 s", served.len());
    assert!(cpu < Duration::from_millis(200), "{cpu:?} of CPU in 1 s while out of descriptors");
    // Clients leave: the queued ones come in and get their answers.
    served.truncate(served.len() - 5);
    for (i, s) in queued.iter_mut().enumerate() {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        assert_eq!(read_response(s, &mut Vec::new(), false).status, 200, "queued client {i}");
    }
    assert!(server.is_running());
}

#[test]
fn a_slow_consumer_is_dropped_with_1008_while_its_room_gets_every_message() {
    const POSTS: u64 = 3000;
    const CAP: usize = 64 * 1024;
    /// Posts the poster may have in flight (not yet back to itself).
    const WINDOW: u64 = 40;
    let mut cfg = config();
    cfg.max_pending = CAP;
    cfg.max_message = 16 * 1024;
    cfg.rate_limit = 0;
    let server = TestServer::with(cfg);
    let a = server.addr;
    let room = "/ws/chatroom/slow";

    // The slow one: a small receive window, and it never reads.
    let mut slow = tcp_small_rcvbuf(a, 4096);
    let slow_head = raw_upgrade(&mut slow, a, &format!("{room}?username=slow"));
    let readers: Vec<_> = (0..2)
        .map(|i| {
            let mut c = ws(a, &format!("{room}?username=reader{i}"));
            recv_type(&mut c, "welcome");
            std::thread::spawn(move || {
                let ids: Vec<u64> = (1..=POSTS).map(|_| recv_type(&mut c, "message")["id"].as_u64().unwrap()).collect();
                (c, ids)
            })
        })
        .collect();
    let (mut poster, _) = raw_ws(a, &format!("{room}?username=poster"));
    assert!(eventually(Duration::from_secs(5), || metric(a, "chatroom_room_members") == 4.0));
    // Once dropped, the slow one starts reading: the server gives a dropped
    // client a couple of seconds to take its close frame.
    let slow_reader = std::thread::spawn(move || {
        assert!(eventually(Duration::from_secs(30), || metric(a, "chatroom_slow_consumers_total") >= 1.0));
        let mut buf = slow_head;
        rest_until_close(&mut slow, &mut buf)
    });

    // The poster reads its own copies on another handle; the writer keeps
    // at most WINDOW posts ahead of them.
    let seen = Arc::new((Mutex::new(0u64), Condvar::new()));
    let mut poster_reader = poster.try_clone().unwrap();
    let counter = seen.clone();
    let own = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut ids = Vec::new();
        while (ids.len() as u64) < POSTS {
            let frame = read_frame(&mut poster_reader, &mut buf);
            let v: serde_json::Value = serde_json::from_slice(&frame.payload).unwrap_or_default();
            if v["type"] == "message" {
                ids.push(v["id"].as_u64().unwrap());
                let (lock, cv) = &*counter;
                *lock.lock().unwrap() = ids.len() as u64;
                cv.notify_all();
            }
        }
        ids
    });
    // Meanwhile, watch the queued bytes.
    let posting = Arc::new(AtomicBool::new(true));
    let watching = posting.clone();
    let watcher = std::thread::spawn(move || {
        let mut max = 0.0f64;
        while watching.load(Ordering::SeqCst) {
            max = max.max(metric(a, "chatroom_queued_bytes"));
        }
        max
    });
    let text = "x".repeat(1000);
    for i in 1..=POSTS {
        let (lock, cv) = &*seen;
        let guard = cv.wait_timeout_while(lock.lock().unwrap(), IO_TIMEOUT, |n| *n + WINDOW < i).unwrap().0;
        assert!(*guard + WINDOW >= i, "the poster's own messages stopped at {}", *guard);
        drop(guard);
        let post = format!(r#"{{"message": "{i} {text}"}}"#);
        poster.write_all(&client_frame(OP_TEXT, true, post.as_bytes(), true)).unwrap();
    }
    // The readers' sockets stay open to the end: only the slow one leaves.
    let (_clients, mut everyone): (Vec<Client>, Vec<Vec<u64>>) = readers.into_iter().map(|r| r.join().unwrap()).unzip();
    everyone.push(own.join().unwrap());
    posting.store(false, Ordering::SeqCst);
    let max_queued = watcher.join().unwrap();
    for (i, ids) in everyone.iter().enumerate() {
        assert_eq!(*ids, (1..=POSTS).collect::<Vec<_>>(), "member {i} missed or reordered messages");
    }
    assert_eq!(metric(a, "chatroom_slow_consumers_total"), 1.0, "exactly the slow one was dropped");
    // A /metrics answer can see one turn's deliveries not yet flushed: at
    // most WINDOW messages (a frame is ~1.1 KB) to each of the 4 members,
    // plus what a busy loop holds back for each of them.
    let turn = 4 * (WINDOW as usize * 1200 + chatroom::server::HOLD_BYTES);
    println!("slow consumer: max queued bytes seen {max_queued} (cap {CAP} + one turn {turn})");
    assert!(max_queued <= (CAP + turn) as f64, "{max_queued} bytes queued with a cap of {CAP}");

    // What the slow one finally reads: whole frames (its welcome, presence,
    // the messages it took in time, in order), then close 1008, then EOF.
    let bytes = slow_reader.join().unwrap();
    let (frames, tail) = split_frames(&bytes);
    assert_eq!(tail, 0, "a frame cut short after {} whole frames", frames.len());
    let last = frames.last().unwrap();
    assert_eq!(last.close_code(), Some(1008), "{last:?}");
    let ids: Vec<u64> = frames
        .iter()
        .filter(|f| f.opcode == OP_TEXT)
        .filter_map(|f| serde_json::from_slice::<serde_json::Value>(&f.payload).ok())
        .filter(|v| v["type"] == "message")
        .map(|v| v["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    println!("slow consumer: took {} of {POSTS} messages ({} bytes) before the drop", ids.len(), bytes.len());
    assert!((ids.len() as u64) < POSTS, "the slow consumer was not slow");
    assert!(eventually(Duration::from_secs(5), || metric(a, "chatroom_room_members") == 3.0));
}
