//! TLS (`--tls-cert`, `--tls-key`): https:// pages, wss:// chat and echo,
//! the redirect listener, HSTS, hostile and stalled clients, reload on
//! SIGHUP. Certificates are made by the test (rcgen, ECDSA P-256); the
//! client is rustls over a blocking socket, trusting exactly them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::{Message, WebSocket};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A self-signed certificate for localhost and 127.0.0.1, as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn make_pair(dir: &Path, name: &str) -> Pair {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Pair { cert, key, der: made.cert.der().clone() }
}

/// A client configuration that trusts `pairs` and nothing else.
fn client_config(pairs: &[&Pair]) -> Arc<ClientConfig> {
    client_config_for(pairs, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] speaking only `versions`.
fn client_config_for(pairs: &[&Pair], versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for pair in pairs {
        roots.add(pair.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` whose handshake is done.
fn tls(addr: SocketAddr, config: &Arc<ClientConfig>) -> Tls {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp(addr));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("TLS handshake failed");
    }
    stream
}

/// `GET path` over TLS, `Connection: close`.
fn https_get(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> HttpResponse {
    let mut s = tls(addr, config);
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    s.flush().unwrap();
    read_response(&mut s, &mut Vec::new(), false)
}

/// A WebSocket over TLS (`wss://localhost:PORT/path`).
fn wss(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> WebSocket<Tls> {
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (client, _) = tungstenite::client::client(url.as_str(), tls(addr, config))
        .unwrap_or_else(|e| panic!("wss handshake to {path} failed: {e}"));
    client
}

fn tls_config(pair: &Pair) -> chatroom::Config {
    let mut cfg = config();
    cfg.tls = Some((pair.cert.display().to_string(), pair.key.display().to_string()));
    cfg
}

fn echo_once<S: Read + Write>(c: &mut WebSocket<S>, text: &str) {
    send_text(c, text);
    loop {
        match c.read().expect("echo read") {
            Message::Text(t) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected the echo, got {other:?}"),
        }
    }
}

#[test]
fn https_pages_and_wss_chat_and_echo() {
    let dir = temp_dir("tls-basic");
    let pair = make_pair(&dir, "a");
    let server = TestServer::with(tls_config(&pair));
    let client = client_config(&[&pair]);

    let page = https_get(server.addr, &client, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.header("strict-transport-security").is_none(), "no HSTS unless asked");

    // Echo: small, then large enough to span several TLS records both ways.
    let mut echo = wss(server.addr, &client, "/ws/echo");
    echo_once(&mut echo, "hello over TLS");
    let big = "x".repeat(60_000);
    echo_once(&mut echo, &big);

    // Chat: a post reaches another member, in order.
    let mut a = wss(server.addr, &client, "/ws/chatroom/tls/?username=alice");
    recv_type(&mut a, "welcome");
    let mut b = wss(server.addr, &client, "/ws/chatroom/tls/?username=bob");
    recv_type(&mut b, "welcome");
    // (Ten: within the default rate limit's burst.)
    for i in 0..10 {
        send_text(&mut a, &serde_json::json!({"message": format!("m{i}")}).to_string());
    }
    for i in 0..10 {
        let m = recv_type(&mut b, "message");
        assert_eq!(m["message"], format!("m{i}"));
        assert_eq!(m["username"], "alice");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_1_2_clients_are_served_too() {
    let dir = temp_dir("tls-12");
    let pair = make_pair(&dir, "a");
    let server = TestServer::with(tls_config(&pair));
    let config = client_config_for(&[&pair], &[&rustls::version::TLS12]);
    let mut echo = wss(server.addr, &config, "/ws/echo");
    assert_eq!(echo.get_ref().conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    echo_once(&mut echo, "over TLS 1.2");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_returning_client_resumes_its_session() {
    let dir = temp_dir("tls-resume");
    let pair = make_pair(&dir, "a");
    let server = TestServer::with(tls_config(&pair));
    let client = client_config(&[&pair]);
    // The first connection gets a ticket (read after the handshake: the
    // server sends it with its first answer at the latest).
    assert_eq!(https_get(server.addr, &client, "/").status, 200);
    let mut second = tls(server.addr, &client);
    assert_eq!(second.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    write!(second, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut second, &mut Vec::new(), false).status, 200);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_400_and_a_clean_close_and_logs_nothing() {
    let dir = temp_dir("tls-plain");
    let pair = make_pair(&dir, "a");
    let (cert, key) = (pair.cert.display().to_string(), pair.key.display().to_string());
    let server = RealServer::spawn(&[], &["--tls-cert", &cert, "--tls-key", &key]);
    let logged_at_start = server.log.lock().unwrap().len();
    let mut s = tcp(server.addr);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes()).unwrap();
    let mut answer = Vec::new();
    // A clean close: the answer, then EOF (not a reset).
    s.read_to_end(&mut answer).expect("a clean close");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("use https://"), "{answer}");
    // A record that is not a ClientHello: closed too.
    let mut s = tcp(server.addr);
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
    assert!(closed_by_peer(&mut s));
    // Everyone else is served as before.
    let client = client_config(&[&pair]);
    assert_eq!(https_get(server.addr, &client, "/").status, 200);
    let log = server.log.lock().unwrap();
    assert_eq!(
        log.len(),
        logged_at_start,
        "nothing logged at info level per connection: {:?}",
        &log[logged_at_start..]
    );
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_handshake_that_stalls_is_closed_by_the_header_timeout() {
    let dir = temp_dir("tls-stall");
    let pair = make_pair(&dir, "a");
    let mut cfg = tls_config(&pair);
    cfg.header_timeout = Duration::from_millis(500);
    let server = TestServer::with(cfg);
    let client = client_config(&[&pair]);
    // Half a ClientHello, then nothing.
    let mut hello = Vec::new();
    let mut conn = ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    conn.write_tls(&mut hello).unwrap();
    let mut staller = tcp(server.addr);
    staller.write_all(&hello[..hello.len() / 2]).unwrap();
    // Meanwhile a complete client is served.
    let mut echo = wss(server.addr, &client, "/ws/echo");
    echo_once(&mut echo, "not held up");
    let started = Instant::now();
    assert!(closed_by_peer(&mut staller), "the stalled handshake is closed");
    assert!(started.elapsed() < IO_TIMEOUT, "by the header timeout, not the test's");
    echo_once(&mut echo, "still here");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn redirect_listener_sends_to_https_and_serves_acme_challenges() {
    let dir = temp_dir("tls-redirect");
    let pair = make_pair(&dir, "a");
    // The webroot, as certbot --webroot -w fills it.
    let acme = dir.join("acme");
    let challenges = acme.join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenges).unwrap();
    std::fs::write(challenges.join("tok-EN_123"), "tok-EN_123.thumbprint").unwrap();
    let mut cfg = tls_config(&pair);
    cfg.redirect_bind = Some("127.0.0.1:0".parse().unwrap());
    cfg.acme_dir = Some(acme);
    cfg.hsts = true;
    cfg.admin_bind = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::with(cfg);
    let plain = server.redirect.unwrap();
    let port = server.addr.port();

    let r = request(plain, "GET /room/lobby?x=1 HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location").unwrap(), format!("https://127.0.0.1:{port}/room/lobby?x=1"));
    let mut s = tcp(plain);
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"), "{raw}");
    let r = request(plain, "GET / HTTP/1.1\r\nHost: chat.example.com\r\nConnection: close\r\n\r\n");
    assert_eq!(r.header("location").unwrap(), format!("https://chat.example.com:{port}/"));
    let r = request(plain, "GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 400, "no Host, nowhere to send it");

    let r = get(plain, "/.well-known/acme-challenge/tok-EN_123");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"tok-EN_123.thumbprint");
    assert_eq!(get(plain, "/.well-known/acme-challenge/missing").status, 404);
    let r = get(plain, "/.well-known/acme-challenge/..%2Facme%2Ftok-EN_123");
    assert_ne!(r.status, 200, "only plain tokens name files");

    // HSTS on https answers; the admin listener stays plain HTTP.
    let client = client_config(&[&pair]);
    let page = https_get(server.addr, &client, "/");
    assert_eq!(page.header("strict-transport-security"), Some("max-age=63072000"));
    assert_eq!(get(server.admin.unwrap(), "/healthz").status, 200);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs the binary with `args` and expects it to refuse to start: exit 1
/// and one line saying what is wrong, containing `says`.
fn refuses(args: &[&str], says: &str) {
    refuses_with(args, says, 1);
}

/// [`refuses`] for settings that do not go together: a usage error, exit 2.
fn refuses_with(args: &[&str], says: &str, code: i32) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatroom"))
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(says), "{args:?}: expected {says:?} in {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn missing_unreadable_or_mismatched_files_stop_the_start_with_one_line() {
    let dir = temp_dir("tls-bad");
    let a = make_pair(&dir, "a");
    let b = make_pair(&dir, "b");
    let (a_cert, a_key, b_key) =
        (a.cert.display().to_string(), a.key.display().to_string(), b.key.display().to_string());
    let missing = dir.join("nope.pem").display().to_string();
    refuses(&["--tls-cert", &missing, "--tls-key", &a_key], "cannot read it");
    refuses(&["--tls-cert", &a_cert, "--tls-key", &missing], "cannot read it");
    refuses(&["--tls-cert", &a_cert, "--tls-key", &b_key], "does not match the certificate");
    refuses(&["--tls-cert", &a_key, "--tls-key", &a_key], "no certificate in it");
    refuses(&["--tls-cert", &a_cert, "--tls-key", &a_cert], "no private key in it");
    refuses_with(&["--tls-cert", &a_cert], "go together", 2);
    refuses_with(&["--redirect-bind", "127.0.0.1:0"], "for TLS", 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sighup_reloads_the_certificate_under_load_without_dropping_a_connection() {
    let dir = temp_dir("tls-reload");
    let a = make_pair(&dir, "a");
    let b = make_pair(&dir, "b");
    let c = make_pair(&dir, "c");
    // The server reads these two paths; the test swaps what they hold.
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(&a.cert, &cert).unwrap();
    std::fs::copy(&a.key, &key).unwrap();
    let args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let server = RealServer::spawn(&[], &args);
    let client = client_config(&[&a, &b, &c]);
    let leaf = |s: &Tls| s.conn.peer_certificates().unwrap()[0].clone();

    // Load: clients echoing on their own threads, across the reloads.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (stop, client, addr) = (stop.clone(), client.clone(), server.addr);
            std::thread::spawn(move || {
                let mut ws = wss(addr, &client, "/ws/echo");
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
                    echo_once(&mut ws, &format!("worker {i} message {n}"));
                    n += 1;
                }
                assert!(n > 0);
                n
            })
        })
        .collect();
    let first = tls(server.addr, &client);
    assert_eq!(leaf(&first), a.der);

    let reloaded = |server: &RealServer, count: usize, what: &str| {
        eventually(IO_TIMEOUT, || server.log.lock().unwrap().iter().filter(|l| l.contains(what)).count() >= count)
    };
    // A new pair: new connections get it.
    std::fs::copy(&b.cert, &cert).unwrap();
    std::fs::copy(&b.key, &key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(reloaded(&server, 1, "TLS certificate and key reloaded"));
    assert_eq!(leaf(&tls(server.addr, &client)), b.der);

    // A bad pair (c's certificate, a's key): refused, b kept.
    std::fs::copy(&c.cert, &cert).unwrap();
    std::fs::copy(&a.key, &key).unwrap();
    server.signal(libc::SIGHUP);
    assert!(reloaded(&server, 1, "keeping the old TLS certificate"));
    assert_eq!(leaf(&tls(server.addr, &client)), b.der);

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        assert!(w.join().expect("an echo client lost its connection") > 0);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_tls_client_that_stops_reading_is_dropped_as_slow_and_others_go_on() {
    let dir = temp_dir("tls-slow");
    let pair = make_pair(&dir, "a");
    let mut cfg = tls_config(&pair);
    cfg.max_message = 16 * 1024;
    cfg.max_pending = 64 * 1024;
    // /metrics over plain HTTP, on the admin listener.
    cfg.admin_bind = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::with(cfg);
    let admin = server.admin.unwrap();
    let client = client_config(&[&pair]);
    // A small receive buffer, and no reads: its echoes pile up on the server.
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream =
        StreamOwned::new(ClientConnection::new(client.clone(), name).unwrap(), tcp_small_rcvbuf(server.addr, 4096));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    let url = format!("wss://localhost:{}/ws/echo", server.addr.port());
    let (mut slow, _) = tungstenite::client::client(url.as_str(), stream).unwrap();
    let payload = "s".repeat(8 * 1024);
    let mut sent = 0;
    // Bounded: far more than --max-pending plus every kernel buffer on the way.
    while sent < 2_000 && slow.send(Message::text(payload.clone())).is_ok() {
        sent += 1;
        if sent % 100 == 0 && metric(admin, "chatroom_slow_consumers_total") >= 1.0 {
            break;
        }
    }
    assert!(
        eventually(IO_TIMEOUT, || metric(admin, "chatroom_slow_consumers_total") >= 1.0),
        "the TLS client that does not read passes --max-pending (its ciphertext counts too)"
    );
    // It reads now: echoes, then the close frame, in a stream that still decrypts.
    assert_eq!(recv_close(&mut slow), Some(1008));
    // Others are served as before.
    let mut other = wss(server.addr, &client, "/ws/echo");
    echo_once(&mut other, "unaffected");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_burst_of_handshakes_all_complete_while_the_loop_takes_them_a_share_at_a_time() {
    let dir = temp_dir("tls-burst");
    let pair = make_pair(&dir, "a");
    let mut cfg = tls_config(&pair);
    cfg.admin_bind = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::with(cfg);
    let client = client_config(&[&pair]);
    // Every ClientHello sent before any answer is read: the reactor finds
    // far more handshakes waiting than one turn takes.
    let name = ServerName::try_from("localhost").unwrap();
    let mut pending: Vec<Tls> = (0..200)
        .map(|_| {
            let mut conn = ClientConnection::new(client.clone(), name.clone()).unwrap();
            let mut socket = tcp(server.addr);
            conn.write_tls(&mut socket).unwrap();
            StreamOwned::new(conn, socket)
        })
        .collect();
    for s in &mut pending {
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).expect("every handshake completes");
        }
    }
    // And each connection works.
    for s in pending.iter_mut().step_by(20) {
        write!(s, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        assert_eq!(read_response(s, &mut Vec::new(), false).status, 200);
    }
    let deferred = metric(server.admin.unwrap(), "chatroom_tls_handshakes_deferred_total");
    eprintln!("handshake reads deferred to a later turn: {deferred}");
    let _ = std::fs::remove_dir_all(dir);
}
