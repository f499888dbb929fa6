//! Shared helpers for the integration tests: a real server on 127.0.0.1:0,
//! raw HTTP over `std::net::TcpStream`, and a blocking WebSocket client
//! (tungstenite's), every socket with timeouts so a bug fails a test
//! instead of hanging it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chatroom::{Config, Handle, Server};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long any single socket operation in a test may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A server running on its own thread, stopped when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The admin listener, if configured.
    pub admin: Option<SocketAddr>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
    /// A data folder removed at the end, if the test asked for one.
    data_dir: Option<PathBuf>,
}

/// A unique temporary folder for a test.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chatroom-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Test defaults: a free port, history in memory, no rate limit surprises.
pub fn config() -> Config {
    let mut cfg = Config::defaults();
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.data = None;
    cfg
}

impl TestServer {
    /// Starts a server with the test defaults.
    pub fn start() -> TestServer {
        TestServer::with(config())
    }

    /// Starts a server with `cfg` (bind should be port 0).
    pub fn with(cfg: Config) -> TestServer {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let server = match Server::bind(cfg) {
                Ok(s) => s,
                Err(e) => {
                    tx.send(Err(e.to_string())).unwrap();
                    return;
                }
            };
            tx.send(Ok((server.local_addr(), server.admin_addr(), server.handle()))).unwrap();
            server.run().unwrap();
        });
        let (addr, admin, handle) = rx.recv_timeout(IO_TIMEOUT).unwrap().unwrap();
        TestServer { addr, admin, handle, thread: Some(thread), data_dir: None }
    }

    /// Starts a server storing history in SQLite in a fresh temporary folder.
    pub fn with_sqlite(mut cfg: Config, dir: &std::path::Path) -> TestServer {
        cfg.data = Some(dir.join("chatroom.db"));
        TestServer::with(cfg)
    }

    /// Asks for a graceful shutdown and waits for the thread to finish.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// `ws://addr` + `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_inner();
        }
    }
}

/// A TCP connection with timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (per Content-Length).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads one response from `s`; `head_only` for answers to HEAD (no body
/// despite Content-Length). Leftover bytes stay in `buf` for the next call.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> HttpResponse {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(buf).expect("bad response head") {
            let status = resp.code.unwrap();
            let headers: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                .collect();
            let clen = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse::<usize>().unwrap())
                .unwrap_or(0);
            let body_len = if head_only || status == 304 || status == 101 { 0 } else { clen };
            while buf.len() < len + body_len {
                read_more(s, buf, deadline);
            }
            let body = buf[len..len + body_len].to_vec();
            buf.drain(..len + body_len);
            return HttpResponse { status, headers, body };
        }
        read_more(s, buf, deadline);
    }
}

fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) {
    assert!(Instant::now() < deadline, "timed out reading a response");
    let mut chunk = [0u8; 16384];
    let n = s.read(&mut chunk).expect("read failed");
    assert!(n > 0, "connection closed before a whole response: got {:?}", String::from_utf8_lossy(buf));
    buf.extend_from_slice(&chunk[..n]);
}

/// Sends raw request bytes on a new connection and reads one response.
pub fn request(addr: SocketAddr, raw: &str) -> HttpResponse {
    let mut s = tcp(addr);
    s.write_all(raw.as_bytes()).unwrap();
    read_response(&mut s, &mut Vec::new(), raw.starts_with("HEAD "))
}

/// `GET path` with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
}

/// Whether the peer closed `s` (EOF or reset) within the timeout.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A blocking WebSocket client.
pub type Client = WebSocket<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `path` (e.g. `/ws/echo`).
pub fn ws(addr: SocketAddr, path: &str) -> Client {
    let stream = tcp(addr);
    let url = format!("ws://{addr}{path}");
    let (client, _) = tungstenite::client::client(url.as_str(), MaybeTlsStream::Plain(stream))
        .unwrap_or_else(|e| panic!("handshake to {path} failed: {e}"));
    client
}

/// The next text message as JSON (skipping pings/pongs).
pub fn recv_json(c: &mut Client) -> serde_json::Value {
    loop {
        match c.read().expect("read failed") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The next JSON event whose `type` is `kind` (skipping others, e.g. presence).
pub fn recv_type(c: &mut Client, kind: &str) -> serde_json::Value {
    loop {
        let v = recv_json(c);
        if v["type"] == kind {
            return v;
        }
    }
}

/// Sends a text message.
pub fn send_text(c: &mut Client, text: &str) {
    c.send(Message::text(text)).unwrap();
}

/// Reads until the server's close frame; returns its code.
pub fn recv_close(c: &mut Client) -> Option<u16> {
    loop {
        match c.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got error {e}"),
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes (for state that
/// changes asynchronously, e.g. a server-side count after a disconnect).
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Prometheus counter or gauge value from `/metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let text = get(addr, "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("metric {name} not found"))
}
