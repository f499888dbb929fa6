//! Hostile input: clients that send too slowly, not at all, too much, or
//! the wrong thing. Slowloris heads get 408, idle keep-alives and silent
//! WebSockets are closed, every protocol fault closes with the code RFC 6455
//! §7.4.1 gives it, a foreign Origin gets 403, a flooder is rate-limited
//! without slowing another room, and a storm of clients that vanish with an
//! RST leaves nothing behind.
//!
//! Every timeout is set short (a few hundred milliseconds) so that the tests
//! wait on sockets for a fraction of a second, never the real defaults.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::stream::MaybeTlsStream;

/// Slack allowed past a deadline before a test calls it missed. Generous:
/// CI runs these on two cores next to the other tests.
const MARGIN: Duration = Duration::from_millis(1500);

/// Slack allowed *before* a deadline (timers are armed at accept, a little
/// before the test starts its clock).
const EARLY: Duration = Duration::from_millis(100);

/// Asserts `elapsed` is within [expected - EARLY, expected + MARGIN].
fn assert_near(what: &str, elapsed: Duration, expected: Duration) {
    assert!(
        elapsed + EARLY >= expected && elapsed <= expected + MARGIN,
        "{what} after {elapsed:?}, expected about {expected:?}"
    );
}

// ---------------------------------------------------------------------------
// Timeouts (--header-timeout, --idle-timeout, --ping-interval/--ping-timeout)
// ---------------------------------------------------------------------------

#[test]
fn slowloris_half_a_head_or_nothing_gets_408_then_close_at_the_header_timeout() {
    let mut cfg = config();
    cfg.header_timeout = Duration::from_millis(500);
    let server = TestServer::with(cfg);
    let started = Instant::now();
    let mut silent = tcp(server.addr);
    let mut half = tcp(server.addr);
    half.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: slow", server.addr).as_bytes()).unwrap();
    for (name, s) in [("half a head", &mut half), ("nothing at all", &mut silent)] {
        let mut buf = Vec::new();
        let r = read_response(s, &mut buf, false);
        assert_eq!(r.status, 408, "{name}: {}", r.text());
        assert_eq!(r.header("connection"), Some("close"), "{name}");
        assert_near(name, started.elapsed(), Duration::from_millis(500));
        assert!(rest_until_close(s, &mut buf).is_empty(), "{name}: bytes after the 408");
    }
}

#[test]
fn a_head_trickled_one_byte_per_100ms_still_gets_408_at_the_deadline() {
    let mut cfg = config();
    cfg.header_timeout = Duration::from_secs(1);
    let server = TestServer::with(cfg);
    let mut s = tcp(server.addr);
    // The pacing is the read timeout: each turn waits up to 100 ms for an
    // answer, then sends one more byte of a head that never ends.
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let head = format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: {}", server.addr, "a".repeat(200));
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut sent = 0;
    let mut chunk = [0u8; 4096];
    let status = loop {
        assert!(started.elapsed() < Duration::from_secs(1) + MARGIN, "no 408 after {sent} bytes");
        if sent < head.len() {
            // The server may already have answered and shut its side: ignore.
            let _ = s.write_all(&head.as_bytes()[sent..sent + 1]);
            sent += 1;
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!("closed without an answer after {sent} bytes"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("read: {e}"),
        }
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(_) = resp.parse(&buf).unwrap() {
            break resp.code.unwrap();
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(status, 408);
    assert_near("408 to a trickled head", elapsed, Duration::from_secs(1));
    assert!(sent >= 5 && sent < head.len(), "the client was still trickling ({sent} bytes sent)");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert!(closed_by_peer(&mut s));
}

#[test]
fn idle_keep_alive_closes_after_idle_timeout_but_an_active_one_stays() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_millis(400);
    let server = TestServer::with(cfg);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);

    // Active: a request every 200 ms for well over the idle timeout.
    let mut active = tcp(server.addr);
    active.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = Vec::new();
    let started = Instant::now();
    for _ in 0..6 {
        active.write_all(request.as_bytes()).unwrap();
        let r = read_response(&mut active, &mut buf, false);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "keep-alive is the HTTP/1.1 default");
        // 200 ms of silence, with the connection still open.
        let mut byte = [0u8; 1];
        match active.read(&mut byte) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("an active keep-alive connection was closed or spoken to: {other:?}"),
        }
    }
    assert!(started.elapsed() > Duration::from_millis(1000));

    // Idle: one request, then nothing: closed silently after 400 ms.
    let mut idle = tcp(server.addr);
    idle.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut idle, &mut buf, false).status, 200);
    let answered = Instant::now();
    assert!(rest_until_close(&mut idle, &mut buf).is_empty(), "an idle close says nothing");
    assert_near("idle close", answered.elapsed(), Duration::from_millis(400));
}

#[test]
fn a_websocket_that_never_answers_pings_is_closed_after_interval_plus_timeout() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_millis(300);
    cfg.ping_timeout = Duration::from_millis(300);
    let server = TestServer::with(cfg);
    let (mut s, mut buf) = raw_ws(server.addr, "/ws/echo");
    let opened = Instant::now();
    // A quiet connection is pinged after the interval...
    let ping = read_frame(&mut s, &mut buf);
    assert_eq!(ping.opcode, OP_PING, "{ping:?}");
    assert_near("ping", opened.elapsed(), Duration::from_millis(300));
    // ...and, not answering, dropped after the timeout.
    rest_until_close(&mut s, &mut buf);
    assert_near("close", opened.elapsed(), Duration::from_millis(600));
}

#[test]
fn a_client_that_reads_answers_pings_and_stays_open_across_many_intervals() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_millis(200);
    cfg.ping_timeout = Duration::from_millis(200);
    let server = TestServer::with(cfg);
    let mut c = ws(server.addr, "/ws/echo");
    if let MaybeTlsStream::Plain(s) = c.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    }
    // tungstenite queues a pong for each ping it reads and sends it on the
    // next read, write or flush: this client sends nothing else.
    let mut pings = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        match c.read() {
            Ok(Message::Ping(payload)) => {
                pings += 1;
                c.flush().unwrap();
                assert!(!payload.is_empty());
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("closed after {pings} pings and {:?}: {e}", started.elapsed()),
        }
    }
    // 1.5 s is over three intervals plus timeouts: without the pongs the
    // server would have closed it twice over.
    assert!(pings >= 3, "only {pings} pings in 1.5 s");
    if let MaybeTlsStream::Plain(s) = c.get_mut() {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    c.send(Message::text("still here")).unwrap();
    loop {
        match c.read().unwrap() {
            Message::Ping(_) => continue,
            m => break assert_eq!(m, Message::text("still here")),
        }
    }
}

#[test]
fn many_idle_connections_do_not_keep_the_loop_busy() {
    // Timers sit in a heap: 200 idle connections with armed deadlines cost
    // no loop turns while nothing is due (a scan-every-connection design
    // that polls with a short timeout would show up here as turns).
    let server = TestServer::start();
    let mut http: Vec<TcpStream> = (0..100).map(|_| tcp(server.addr)).collect();
    let ws: Vec<Client> = (0..100).map(|_| ws(server.addr, "/ws/echo")).collect();
    for s in &mut http {
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes()).unwrap();
        assert_eq!(read_response(s, &mut Vec::new(), false).status, 200);
    }
    let turns = |addr| metric(addr, "chatroom_loop_turn_seconds_count");
    let before = turns(server.addr);
    // Wait on a socket that will not speak (the server does not write to an
    // idle keep-alive connection before --idle-timeout, 60 s).
    http[0].set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(http[0].read(&mut [0u8; 1]).is_err(), "the idle connection was spoken to");
    let during = turns(server.addr) - before;
    // Each /metrics request costs a few turns (accept, read, flush, close).
    assert!(during <= 12.0, "{during} loop turns in 1 s with nothing to do");
    drop(ws);
}

// ---------------------------------------------------------------------------
// Close codes (RFC 6455 §7.4.1)
// ---------------------------------------------------------------------------

/// Opens a raw WebSocket to `path`, sends `bytes`, and returns the code of
/// the server's close frame, after checking the server then closes the TCP
/// connection.
fn close_code_after(server: &TestServer, path: &str, bytes: &[u8]) -> Option<u16> {
    let (mut s, mut buf) = raw_ws(server.addr, path);
    s.write_all(bytes).unwrap();
    let code = read_until_close_frame(&mut s, &mut buf);
    let rest = rest_until_close(&mut s, &mut buf);
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
    code
}

#[test]
fn each_protocol_fault_closes_with_its_rfc_6455_code() {
    let mut cfg = config();
    cfg.max_message = 1024;
    cfg.max_pending = 4096;
    let server = TestServer::with(cfg);
    let text = |payload: &[u8]| client_frame(OP_TEXT, true, payload, true);
    let mut reserved_bits = text(b"hi");
    reserved_bits[0] |= 0x40; // RSV1 without a negotiated extension
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("message over --max-message", "/ws/echo", text(&[b'a'; 1025]), 1009),
        ("message over --max-message in a room", "/ws/chatroom/codes", text(&[b'a'; 1025]), 1009),
        ("invalid UTF-8", "/ws/echo", text(b"caf\xc3"), 1007),
        ("invalid UTF-8 in a room", "/ws/chatroom/codes", text(b"{\"message\": \"\xff\"}"), 1007),
        ("binary to a chat room", "/ws/chatroom/codes", client_frame(OP_BINARY, true, b"\x00\x01", true), 1003),
        ("binary to the echo room", "/ws/chatroom/echo", client_frame(OP_BINARY, true, b"\x00", true), 1003),
        ("unmasked frame", "/ws/echo", client_frame(OP_TEXT, true, b"hi", false), 1002),
        ("reserved opcode 0x3", "/ws/echo", client_frame(0x3, true, b"", true), 1002),
        ("reserved control opcode 0xB", "/ws/echo", client_frame(0xB, true, b"", true), 1002),
        ("RSV1 bit", "/ws/echo", reserved_bits, 1002),
        ("fragmented ping", "/ws/echo", client_frame(OP_PING, false, b"x", true), 1002),
        ("ping over 125 bytes", "/ws/echo", client_frame(OP_PING, true, &[0; 126], true), 1002),
        ("continuation with nothing to continue", "/ws/echo", client_frame(OP_CONT, true, b"x", true), 1002),
    ];
    for (name, path, bytes, want) in cases {
        assert_eq!(close_code_after(&server, path, &bytes), Some(want), "{name}");
    }
}

#[test]
fn an_upgrade_from_a_foreign_origin_gets_403() {
    let server = TestServer::start();
    let a = server.addr;
    let attempt =
        |origin: &str| request(a, &upgrade_request(a, "/ws/chatroom/lobby", &format!("Origin: {origin}\r\n")));
    let r = attempt("https://attacker.example");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(attempt(&format!("http://{a}")).status, 101, "the page's own origin is fine");
}

// ---------------------------------------------------------------------------
// Floods and vanishing clients
// ---------------------------------------------------------------------------

#[test]
fn a_flooder_is_rate_limited_while_another_room_gets_every_echo() {
    const ROUNDS: usize = 30;
    let mut cfg = config();
    cfg.rate_limit = 20;
    cfg.rate_burst = 40;
    let server = TestServer::with(cfg);

    // The flooder writes on one handle and reads on another. It is a fast
    // flooder but not a slow consumer: it keeps at most WINDOW posts
    // unanswered, so its answers never back up past --max-pending.
    const WINDOW: u64 = 2000;
    let (mut flood, _) = raw_ws(server.addr, "/ws/chatroom/flood?username=flooder");
    let mut flood_reader = flood.try_clone().unwrap();
    let answered = Arc::new((Mutex::new(0u64), Condvar::new()));
    let done = Arc::new(AtomicBool::new(false));
    let counts = answered.clone();
    let reader = std::thread::spawn(move || {
        let (mut posted, mut limited) = (0u64, 0u64);
        let mut buf = Vec::new();
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        loop {
            let frame = read_frame(&mut flood_reader, &mut buf);
            if frame.opcode != OP_TEXT {
                continue;
            }
            let p = &frame.payload;
            if p.starts_with(br#"{"type":"message""#) {
                posted += 1;
            } else if contains(p, br#""code":"rate_limited""#) {
                limited += 1;
            } else if contains(p, br#""code":"bad_json""#) {
                // The end marker: answers come in order, so every flood
                // post has had its answer.
                return (posted, limited);
            } else {
                continue;
            }
            let (lock, cv) = &*counts;
            *lock.lock().unwrap() = posted + limited;
            cv.notify_all();
        }
    });
    let flooding = done.clone();
    let writer = std::thread::spawn(move || {
        let frame = client_frame(OP_TEXT, true, br#"{"message": "flood"}"#, true);
        let batch: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 100).collect();
        let started = Instant::now();
        let mut sent = 0u64;
        while !flooding.load(Ordering::SeqCst) && sent < 200_000 {
            let (lock, cv) = &*answered;
            let guard = lock.lock().unwrap();
            let (guard, _) = cv.wait_timeout_while(guard, IO_TIMEOUT, |n| *n + WINDOW < sent).unwrap();
            assert!(*guard + WINDOW >= sent, "the flooder's answers stopped at {}", *guard);
            drop(guard);
            flood.write_all(&batch).unwrap();
            sent += 100;
        }
        (flood, sent, started.elapsed())
    });

    let mut echo = ws(server.addr, "/ws/chatroom/quiet?username=echo");
    recv_type(&mut echo, "welcome");
    let mut latencies = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let sent = Instant::now();
        send_text(&mut echo, &format!(r#"{{"message": "echo {i}"}}"#));
        let m = recv_type(&mut echo, "message");
        latencies.push(sent.elapsed());
        assert_eq!(m["message"], format!("echo {i}"), "round {i}");
    }
    done.store(true, Ordering::SeqCst);
    let (mut flood, sent, flood_time) = writer.join().unwrap();
    // Not JSON: refused before the rate limiter, so its answer always comes.
    flood.write_all(&client_frame(OP_TEXT, true, b"end", true)).unwrap();
    let (posted, limited) = reader.join().unwrap();

    let allowed = 40.0 + 20.0 * (flood_time.as_secs_f64() + 1.0) + 1.0;
    assert!(limited > 0, "{sent} posts and none refused");
    assert!((posted as f64) <= allowed, "{posted} posts got through in {flood_time:?}");
    assert_eq!(metric(server.addr, "chatroom_rate_limited_total"), limited as f64);
    let (p50, p90, max) =
        (percentile(&mut latencies, 50), percentile(&mut latencies, 90), percentile(&mut latencies, 100));
    println!(
        "flood: {sent} posts in {flood_time:?}, {posted} posted, {limited} refused; \
         echo in another room: p50 {:?}, p90 {:?}, max {:?}",
        p50, p90, max
    );
}

/// Opens `n` chat members of `room`, `BATCH` at a time (heads written
/// together, then their 101s read, so the server admits many per loop turn),
/// and returns them unread: welcome and presence frames stay in the kernel.
fn open_members(addr: std::net::SocketAddr, room: &str, n: usize) -> Vec<TcpStream> {
    const BATCH: usize = 50;
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let mut batch: Vec<TcpStream> = (0..BATCH.min(n - all.len())).map(|_| tcp(addr)).collect();
        for s in &mut batch {
            let path = format!("/ws/chatroom/{room}?username=u{}", all.len());
            s.write_all(upgrade_request(addr, &path, "").as_bytes()).unwrap();
        }
        for s in &mut batch {
            assert_eq!(read_response(s, &mut Vec::new(), false).status, 101);
        }
        all.extend(batch);
    }
    all
}

/// The gauges that must return to zero once every client is gone.
fn leftovers(addr: std::net::SocketAddr) -> [f64; 3] {
    let text = get(addr, "/metrics").text();
    let value = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap()
    };
    [value("chatroom_websocket_connections"), value("chatroom_room_members"), value("chatroom_queued_bytes")]
}

#[test]
fn a_thousand_clients_vanishing_with_rst_leave_nothing_behind_twice() {
    const CLIENTS: usize = 1000;
    let limit = raise_fd_limit(2 * CLIENTS as u64 + 256);
    assert!(limit >= CLIENTS as u64 + 64, "RLIMIT_NOFILE {limit} is too low for this test");
    // The real binary, so its memory is its own (and readable in /proc).
    let server = RealServer::spawn(&[], &["--data", "none"]);
    let addr = server.addr;
    let start_rss = server.rss_kib();
    let mut rss_after = Vec::new();
    for storm in 1..=2 {
        let started = Instant::now();
        let members = open_members(addr, "storm", CLIENTS);
        assert!(
            eventually(Duration::from_secs(10), || metric(addr, "chatroom_room_members") == CLIENTS as f64),
            "storm {storm}: not every client joined"
        );
        let peak = server.rss_kib();
        for s in members {
            reset(s);
        }
        assert!(
            eventually(Duration::from_secs(10), || leftovers(addr) == [0.0; 3]),
            "storm {storm}: connections, members, queued bytes = {:?}",
            leftovers(addr)
        );
        let rss = server.rss_kib();
        println!(
            "storm {storm}: {CLIENTS} joined and reset in {:?}; RSS peak {peak} KiB, after {rss} KiB",
            started.elapsed()
        );
        rss_after.push(rss);
    }
    let (first, second) = (rss_after[0], rss_after[1]);
    println!("RSS: start {start_rss} KiB, after storm 1 {first} KiB, after storm 2 {second} KiB");
    assert!(
        (second as f64) < first as f64 * 1.10,
        "the second storm grew RSS from {first} KiB to {second} KiB (more than 10%)"
    );
    // Still serving.
    assert_eq!(get(addr, "/healthz").status, 200);
}

/// Pipelined GETs of one page, the last with `Connection: close`.
fn pipelined_gets(n: usize) -> String {
    let mut req = "GET /learn HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
    req.push_str("GET /learn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    req
}

#[test]
fn a_closing_connection_whose_client_never_reads_is_dropped_after_the_idle_timeout() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_millis(500);
    cfg.header_timeout = Duration::from_millis(500);
    let server = TestServer::with(cfg);
    let mut s = tcp_small_rcvbuf(server.addr, 4096);
    s.write_all(pipelined_gets(2000).as_bytes()).unwrap();
    // The server is stuck on our full receive buffer with its last answer
    // queued; it must give up on us rather than hold the socket forever.
    assert!(
        // 1: the connection that asks for /metrics.
        eventually(Duration::from_secs(10), || metric(server.addr, "chatroom_http_connections") == 1.0),
        "a client that never reads its last answer is still held"
    );
    drop(s);
}

#[test]
fn a_client_that_half_closes_still_gets_every_answer() {
    let server = TestServer::start();
    let mut s = tcp_small_rcvbuf(server.addr, 4096);
    let n = 300;
    s.write_all(pipelined_gets(n).as_bytes()).unwrap();
    // Like `nc -N`: done sending, still reading.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let page = www_file("learn.html").len();
    let answers = String::from_utf8_lossy(&got).matches("HTTP/1.1 200 OK").count();
    assert_eq!(answers, n + 1, "every pipelined request answered");
    assert!(got.len() >= (n + 1) * page);
}
