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
    /// The plain-HTTP redirect listener (`--redirect-bind`), if configured.
    pub redirect: Option<SocketAddr>,
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
        // RUST_LOG=debug cargo test -- --nocapture shows the server's log.
        let _ = env_logger::builder().is_test(true).try_init();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let server = match Server::bind(cfg) {
                Ok(s) => s,
                Err(e) => {
                    tx.send(Err(e.to_string())).unwrap();
                    return;
                }
            };
            let addrs = (server.local_addr(), server.admin_addr(), server.redirect_addr());
            tx.send(Ok((addrs, server.handle()))).unwrap();
            server.run().unwrap();
        });
        let ((addr, admin, redirect), handle) = rx.recv_timeout(IO_TIMEOUT).unwrap().unwrap();
        TestServer { addr, admin, redirect, handle, thread: Some(thread), data_dir: None }
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
pub fn read_response<S: Read>(s: &mut S, buf: &mut Vec<u8>, head_only: bool) -> HttpResponse {
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

fn read_more<S: Read>(s: &mut S, buf: &mut Vec<u8>, deadline: Instant) {
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
pub fn recv_json<S: Read + Write>(c: &mut WebSocket<S>) -> serde_json::Value {
    loop {
        match c.read().expect("read failed") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// The next JSON event whose `type` is `kind` (skipping others, e.g. presence).
pub fn recv_type<S: Read + Write>(c: &mut WebSocket<S>, kind: &str) -> serde_json::Value {
    loop {
        let v = recv_json(c);
        if v["type"] == kind {
            return v;
        }
    }
}

/// Sends a text message.
pub fn send_text<S: Read + Write>(c: &mut WebSocket<S>, text: &str) {
    c.send(Message::text(text)).unwrap();
}

/// Reads until the server's close frame; returns its code.
pub fn recv_close<S: Read + Write>(c: &mut WebSocket<S>) -> Option<u16> {
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

// ---------------------------------------------------------------------------
// Raw WebSocket helpers: frames built and read by hand over a plain
// `TcpStream`, for what a well-behaved client library will not send
// (fragments, unmasked frames, bad UTF-8, a frame glued to the head).
// ---------------------------------------------------------------------------

/// The sample key of RFC 6455 §1.3 (16 bytes once decoded).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Opcodes (RFC 6455 §5.2).
pub const OP_CONT: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// An upgrade request for `path` with the standard headers, `Host` set to
/// `addr`, the key [`WS_KEY`], then `extra` header lines (each ending in CRLF).
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n{extra}\r\n"
    )
}

/// A client frame. `masked` as RFC 6455 §5.3 requires of clients (a fixed,
/// non-zero key); `false` builds the unmasked frame a server must refuse.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(mask_bit | n as u8),
        n if n < 65536 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A close frame payload: the code, big-endian, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One frame from the server, as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Payload (server frames are never masked).
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The status code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Reads one server frame from `s` (leftover bytes stay in `buf`). Asserts
/// the frame is unmasked and has no reserved bits, as RFC 6455 §5.1 requires.
pub fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> RawFrame {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Some((frame, used)) = parse_server_frame(buf) {
            buf.drain(..used);
            return frame;
        }
        read_more(s, buf, deadline);
    }
}

/// A complete server frame at the start of `buf`, and its length in bytes.
fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[0] & 0x70, 0, "reserved bits set in a server frame");
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < header + len {
        return None;
    }
    let frame =
        RawFrame { fin: buf[0] & 0x80 != 0, opcode: buf[0] & 0x0f, payload: buf[header..header + len].to_vec() };
    Some((frame, header + len))
}

/// Opens a WebSocket to `path` by hand: sends [`upgrade_request`], checks the
/// 101 and its accept key, and returns the stream with any bytes already read
/// past the head.
pub fn raw_ws(addr: SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    let mut s = tcp(addr);
    s.write_all(upgrade_request(addr, path, "").as_bytes()).unwrap();
    let mut buf = Vec::new();
    let resp = read_response(&mut s, &mut buf, false);
    assert_eq!(resp.status, 101, "upgrade to {path} refused: {}", resp.text());
    let accept = tungstenite::handshake::derive_accept_key(WS_KEY.as_bytes());
    assert_eq!(resp.header("sec-websocket-accept"), Some(accept.as_str()));
    (s, buf)
}

/// Everything the peer still sends until it closes the connection (EOF or
/// reset), after the bytes already in `buf`. Panics if it stays open past
/// the read timeout.
pub fn rest_until_close(s: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut chunk = [0u8; 16384];
    loop {
        assert!(Instant::now() < deadline, "the server did not close the connection");
        match s.read(&mut chunk) {
            Ok(0) => return std::mem::take(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return std::mem::take(buf),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (up to the
/// hard limit); returns the soft limit in force afterwards.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass, nothing else.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < want {
        let raised = libc::rlimit { rlim_cur: want.min(lim.rlim_max), rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) }, 0);
        lim.rlim_cur = raised.rlim_cur;
    }
    lim.rlim_cur
}

/// The bytes of `www/<rel>` in the source tree (what the embedded site serves).
pub fn www_file(rel: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("www").join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// The real binary as a child process, and what /proc says about it: for the
// tests that send signals, lower descriptor limits with `prlimit`, or
// measure memory and CPU time.
// ---------------------------------------------------------------------------

/// The `chatroom` binary running as a child process; killed when dropped.
pub struct RealServer {
    /// The child (`prlimit` execs the server, so this is the server itself).
    pub child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: i32,
    /// Every line it has logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RealServer {
    /// Runs `prefix... <chatroom> --bind 127.0.0.1:0 args...` (`prefix` is
    /// e.g. `["prlimit", "--nofile=40:40"]`, or empty) and waits for the
    /// "listening on" line of its log.
    pub fn spawn(prefix: &[&str], args: &[&str]) -> RealServer {
        RealServer::spawn_logging(prefix, args, "info")
    }

    /// [`RealServer::spawn`] with `RUST_LOG` at `level`.
    pub fn spawn_logging(prefix: &[&str], args: &[&str], level: &str) -> RealServer {
        use std::io::BufRead;
        let bin = env!("CARGO_BIN_EXE_chatroom");
        let mut command = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = std::process::Command::new(program);
                c.args(rest).arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        let mut child = command
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", level)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                kept.lock().unwrap().push(line.clone());
                // http:// or, with TLS, https://
                if let Some(rest) = line.split("listening on http").nth(1).and_then(|r| r.split("://").nth(1)) {
                    let _ = tx.send(rest.trim().parse::<SocketAddr>().unwrap());
                }
                if std::env::var_os("CHATROOM_TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let addr = rx.recv_timeout(IO_TIMEOUT).expect("the server did not report its address");
        let pid = child.id() as i32;
        RealServer { child, addr, pid, log }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(self.pid, signal) }, 0, "kill({}, {signal})", self.pid);
    }

    /// Waits up to `timeout` for the process to exit; its status, if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid, "VmRSS")
    }

    /// CPU time used so far (user + system), from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        proc_cpu_time(self.pid)
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).unwrap().count()
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`...).
pub fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

/// utime + stime of /proc/PID/stat (fields 14 and 15, in clock ticks).
pub fn proc_cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// A TCP connection whose receive buffer is set small *before* connecting
/// (so the window the server sees stays small and autotuning is off): a
/// client that reads slowly fills up fast.
pub fn tcp_small_rcvbuf(addr: SocketAddr, bytes: usize) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(bytes).unwrap();
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A TCP connection from a chosen local address (any 127.x.y.z works on
/// Linux loopback), to look like another client to `--max-per-ip`.
pub fn tcp_from(local: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(local, 0).into()).unwrap();
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The WebSocket handshake over an already connected `s` (see [`raw_ws`]);
/// returns the bytes read past the 101.
pub fn raw_upgrade(s: &mut TcpStream, addr: SocketAddr, path: &str) -> Vec<u8> {
    s.write_all(upgrade_request(addr, path, "").as_bytes()).unwrap();
    let mut buf = Vec::new();
    let resp = read_response(s, &mut buf, false);
    assert_eq!(resp.status, 101, "upgrade to {path} refused: {}", resp.text());
    buf
}

/// Reads server frames until a close frame; returns its code. Data frames
/// before it (a welcome, presence) are skipped.
pub fn read_until_close_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    loop {
        let frame = read_frame(s, buf);
        if frame.opcode == OP_CLOSE {
            return frame.close_code();
        }
    }
}

/// Splits `bytes` into complete server frames; the bytes of an incomplete
/// last frame are returned apart. Panics on a frame no server may send.
pub fn split_frames(mut bytes: &[u8]) -> (Vec<RawFrame>, usize) {
    let mut frames = Vec::new();
    while let Some((frame, used)) = parse_server_frame(bytes) {
        frames.push(frame);
        bytes = &bytes[used..];
    }
    (frames, bytes.len())
}

/// Resets the connection on drop (SO_LINGER 0: an RST, no FIN), as a client
/// that vanishes does.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// Percentiles (0..=100) of `samples`, sorted in place.
pub fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples[(samples.len() - 1) * p / 100]
}

/// Posts `text` in a chat room and returns the first answer that is either
/// its message or an error frame (a refused post).
pub fn post_and_answer(c: &mut Client, text: &str) -> serde_json::Value {
    send_text(c, &format!(r#"{{"message": "{text}"}}"#));
    loop {
        let frame = recv_json(c);
        if frame["type"] == "error" || (frame["type"] == "message" && frame["message"] == text) {
            return frame;
        }
    }
}

/// A private redis-server on a free port, killed when dropped.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<std::process::Child>,
    dir: PathBuf,
    appendonly: bool,
    /// The password it requires (`--requirepass`), if any: `cli` gives it.
    password: Option<String>,
    /// More arguments for redis-server (e.g. `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server (from PATH) on a free port; `appendonly` persists.
    pub fn start(appendonly: bool) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = temp_dir("redis");
        let mut r = RedisServer { port, child: None, dir, appendonly, password: None, extra: Vec::new() };
        r.restart();
        r
    }

    /// Starts a replica of `master` (`--replicaof`) and waits until it
    /// has synced (its link to the master up).
    pub fn start_replica_of(master: &RedisServer) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let extra = vec!["--replicaof".into(), "127.0.0.1".into(), master.port.to_string()];
        let mut r = RedisServer { port, child: None, dir: temp_dir("redis"), appendonly: false, password: None, extra };
        r.restart();
        let synced = eventually(IO_TIMEOUT, || r.cli(&["info", "replication"]).contains("master_link_status:up"));
        assert!(synced, "the replica never synced: {}", r.cli(&["info", "replication"]));
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command with `redis-cli` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cli = std::process::Command::new("redis-cli");
        if let Some(password) = &self.password {
            cli.args(["-a", password, "--no-auth-warning"]);
        }
        let out = cli
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (installed with redis-server) runs");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The messages in `room`'s stream (`chatroom:{ROOM}:log`) on this
    /// node, oldest first, as JSON events. An entry holds a batch: its
    /// field `b` is the first id, then each message's event after its id,
    /// one per line (an entry of an earlier build: field `m`, one event).
    pub fn stream(&self, room: &str) -> Vec<serde_json::Value> {
        let reply = self.cli(&["--json", "xrange", &format!("chatroom:{{{room}}}:log"), "-", "+"]);
        let entries: Vec<(String, Vec<String>)> = serde_json::from_str(&reply).expect("XRANGE as JSON");
        let prefix = format!(r#"{{"type":"message","room":{},"id":"#, serde_json::Value::from(room));
        let mut messages = Vec::new();
        for (_, fields) in entries {
            match fields.as_slice() {
                [field, batch] if field == "b" => {
                    let mut lines = batch.lines();
                    let first: u64 =
                        lines.next().and_then(|l| l.parse().ok()).expect("a batch starts with its first id");
                    for (id, line) in (first..).zip(lines) {
                        messages.push(serde_json::from_str(&format!("{prefix}{id}{line}")).expect("an event"));
                    }
                }
                [field, event] if field == "m" => messages.push(serde_json::from_str(event).expect("an event")),
                other => panic!("not a stream entry of ours: {other:?}"),
            }
        }
        messages
    }

    /// Kills the server (SIGKILL: as abrupt as a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` to redis-server: `libc::SIGSTOP` freezes it with its
    /// sockets open (connected but stuck), `libc::SIGCONT` resumes it.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("redis-server is not running").id() as i32;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
    }

    /// Starts it again on the same port (same data folder; a cluster
    /// node so keeps its `nodes.conf`, and rejoins its cluster).
    pub fn restart(&mut self) {
        assert!(self.try_restart(), "redis-server on {} did not start", self.port);
    }

    /// [`RedisServer::restart`], saying whether it came up instead of
    /// failing the test.
    fn try_restart(&mut self) -> bool {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server not found: run scripts/install-deps.sh");
        self.child = Some(child);
        eventually(IO_TIMEOUT, || self.ping()) && self.is_running()
    }

    /// Whether the process is still there (it exits at once if one of its
    /// ports was taken).
    fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes a folder (e.g. from [`temp_dir`]) when dropped, so a failing
/// test does not leave it behind.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real Redis Cluster on loopback: three masters and a replica each,
/// every node a `redis-server --cluster-enabled yes` in its own folder
/// (with its own `nodes.conf`), joined by `redis-cli --cluster create`.
///
/// A node listens on its port p and on p + 10000, the cluster bus port
/// (fixed by Redis: port 0 cannot be used), so both are picked free.
/// `cluster-node-timeout` is 1000 ms so that a failover in a test takes
/// seconds, and `cluster-require-full-coverage no` keeps the slots that
/// are still served answering while one is not.
pub struct RedisCluster {
    /// The nodes, masters first as `--cluster create` was given them (it
    /// makes the first three masters and the other three their replicas).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (three masters, one replica
    /// each) and waits for `cluster_state:ok` on every node and for every
    /// replica to be in sync.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with_password(None)
    }

    /// The same, every node requiring `password` (of the `default` user;
    /// replicas log in to their masters with it too).
    ///
    /// A node exits at start if its ports were taken between the pick
    /// and its bind (by another test, or as the local port of any
    /// outgoing connection), and `--cluster create` would then wait for
    /// it forever: so the create runs under a deadline, and the start is
    /// tried again on fresh ports, a bounded number of times.
    pub fn start_with_password(password: Option<&str>) -> RedisCluster {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            match RedisCluster::try_create(password) {
                Ok(nodes) => return RedisCluster::wait_ready(nodes),
                Err(why) => eprintln!("redis cluster, attempt {attempt} of {ATTEMPTS}: {why}"),
            }
        }
        panic!("no Redis Cluster after {ATTEMPTS} attempts");
    }

    /// Six nodes on fresh ports, joined by `redis-cli --cluster create`.
    fn try_create(password: Option<&str>) -> Result<Vec<RedisServer>, String> {
        let ports = cluster_ports(6);
        let mut nodes = Vec::new();
        for &port in &ports {
            let (node, up) = RedisServer::start_cluster_node(port, password);
            nodes.push(node);
            if !up {
                return Err(format!("the node on port {port} did not start"));
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        // Without --cluster-yes, redis-cli waits at a prompt for a "yes".
        let mut create = std::process::Command::new("redis-cli");
        if let Some(password) = password {
            create.args(["-a", password, "--no-auth-warning"]);
        }
        let mut child = create
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli runs");
        let done = eventually(Duration::from_secs(60), || !matches!(child.try_wait(), Ok(None)));
        if !done {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("redis-cli ends");
        if !done || !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create{}: {}{}",
                if done { "" } else { " did not finish in 60 s" },
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(nodes)
    }

    /// Waits for the created cluster to be whole.
    fn wait_ready(nodes: Vec<RedisServer>) -> RedisCluster {
        let cluster = RedisCluster { nodes };
        let ok = eventually(Duration::from_secs(30), || {
            cluster.nodes.iter().all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        });
        assert!(ok, "the cluster never reached cluster_state:ok on every node");
        // Every replica in sync with its master, so that a failover in a
        // test has a replica that can take over.
        let synced = eventually(Duration::from_secs(30), || {
            cluster.nodes.iter().all(|n| {
                let replication = n.cli(&["info", "replication"]);
                replication.contains("role:master") || replication.contains("master_link_status:up")
            })
        });
        assert!(synced, "a replica never synced with its master");
        cluster
    }

    /// The seed list for `--redis-cluster`: every node, `HOST:PORT,...`.
    pub fn seeds(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The node that serves `key` now (a master), asked of the cluster.
    pub fn owner_of(&self, key: &str) -> &RedisServer {
        let slot: u16 = self.nodes[0].cli(&["cluster", "keyslot", key]).parse().unwrap();
        let slots = self.nodes[0].cli(&["cluster", "slots"]);
        // redis-cli prints the nested reply flat: start, end, then each
        // node's ip, port, id (and more with Redis 7); masters come first.
        let lines: Vec<&str> = slots.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let (Ok(start), Some(Ok(end))) = (line.parse::<u16>(), lines.get(i + 1).map(|l| l.parse::<u16>())) else {
                continue;
            };
            if (start..=end).contains(&slot) {
                let port: u16 = lines[i + 3].parse().unwrap();
                return self.nodes.iter().find(|n| n.port == port).unwrap();
            }
        }
        panic!("no node serves slot {slot}: {slots}");
    }
}

/// `n` ports p, each with p + 10000 free too (a cluster node's bus port).
fn cluster_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut held = Vec::new();
    while ports.len() < n {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let Some(bus) = port.checked_add(10_000) else { continue };
        let Ok(bus_listener) = std::net::TcpListener::bind(("127.0.0.1", bus)) else { continue };
        ports.push(port);
        // Held until all are chosen, so no two picks collide.
        held.push((listener, bus_listener));
    }
    ports
}

impl RedisServer {
    /// Starts one empty cluster node on `port` (its bus on port + 10000).
    /// A cluster node on `port`, and whether it came up.
    fn start_cluster_node(port: u16, password: Option<&str>) -> (RedisServer, bool) {
        let mut extra: Vec<String> = Vec::new();
        if let Some(password) = password {
            extra.extend(["--requirepass", password, "--masterauth", password].map(String::from));
        }
        extra.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                // A replica syncs at once (the default waits 5 s for more
                // replicas to share a diskless transfer), and may always
                // take over: a test kills a master seconds after the
                // start, when the replica's link is young.
                "--repl-diskless-sync-delay",
                "0",
                "--cluster-replica-validity-factor",
                "0",
            ]
            .map(String::from),
        );
        let password = password.map(str::to_string);
        let mut node =
            RedisServer { port, child: None, dir: temp_dir("redis-cluster"), appendonly: false, password, extra };
        let up = node.try_restart();
        (node, up)
    }

    /// Whether it answers PING (or refuses it for want of a password:
    /// it is up either way).
    fn ping(&self) -> bool {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let Ok(mut s) = TcpStream::connect(addr) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        s.write_all(b"PING\r\n").is_ok() && {
            let mut b = [0u8; 7];
            s.read(&mut b).map(|n| &b[..n] == b"+PONG\r\n" || b[..n].starts_with(b"-NOAUTH")).unwrap_or(false)
        }
    }
}

impl RedisCluster {
    /// The node's id in the cluster (`CLUSTER MYID`).
    pub fn id_of(node: &RedisServer) -> String {
        node.cli(&["cluster", "myid"])
    }

    /// The masters, as the cluster sees them now.
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.nodes.iter().filter(|n| n.cli(&["role"]).starts_with("master")).collect()
    }

    /// A replica of `master`: the node whose `ROLE` names it as its master
    /// (asked of the replicas themselves, so a master's own view of its
    /// replicas, which can lag after a start, does not matter).
    pub fn replica_of(&self, master: &RedisServer) -> &RedisServer {
        let mut found = None;
        let seen = eventually(IO_TIMEOUT, || {
            found = self.nodes.iter().find(|n| {
                let role = n.cli(&["role"]);
                let mut lines = role.lines();
                lines.next() == Some("slave")
                    && lines.nth(1).and_then(|p| p.trim().parse::<u16>().ok()) == Some(master.port)
            });
            found.is_some()
        });
        assert!(seen, "no replica of {}", master.port);
        found.unwrap()
    }

    /// Moves `slot` from `from` to `to` the way `redis-cli --cluster
    /// reshard` does, in steps a test can interleave with traffic:
    /// [`SlotMove::begin`] marks the slot migrating/importing, `move_keys`
    /// moves some of its keys, [`SlotMove::move_rest`] the rest, and
    /// [`SlotMove::assign`] gives the slot to `to` on every master.
    pub fn move_slot<'a>(&'a self, slot: u16, from: &'a RedisServer, to: &'a RedisServer) -> SlotMove<'a> {
        SlotMove { cluster: self, slot, from, to }
    }
}

/// A slot on its way from one master to another (see [`RedisCluster::move_slot`]).
pub struct SlotMove<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: &'a RedisServer,
    to: &'a RedisServer,
}

impl SlotMove<'_> {
    /// `to` imports the slot, `from` migrates it: keys still at `from` are
    /// served there, the others are answered `ASK`.
    pub fn begin(&self) {
        let slot = self.slot.to_string();
        let (from_id, to_id) = (RedisCluster::id_of(self.from), RedisCluster::id_of(self.to));
        assert_eq!(self.to.cli(&["cluster", "setslot", &slot, "importing", &from_id]), "OK");
        assert_eq!(self.from.cli(&["cluster", "setslot", &slot, "migrating", &to_id]), "OK");
    }

    /// Moves these keys (of the slot) to `to` now.
    pub fn move_keys(&self, keys: &[&str]) {
        let port = self.to.port.to_string();
        let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend_from_slice(keys);
        let out = self.from.cli(&args);
        assert!(out == "OK" || out == "NOKEY", "MIGRATE: {out}");
    }

    /// Moves every key left: commands on the slot's keys are answered
    /// ASK by `from` from now on.
    pub fn move_rest(&self) {
        let slot = self.slot.to_string();
        loop {
            let keys = self.from.cli(&["cluster", "getkeysinslot", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            self.move_keys(&keys);
        }
    }

    /// Gives the slot to `to` (on `to` first, then `from`, then the other
    /// masters, as redis-cli does): `from` answers MOVED from now on.
    pub fn assign(&self) {
        let slot = self.slot.to_string();
        let to_id = RedisCluster::id_of(self.to);
        assert_eq!(self.to.cli(&["cluster", "setslot", &slot, "node", &to_id]), "OK");
        assert_eq!(self.from.cli(&["cluster", "setslot", &slot, "node", &to_id]), "OK");
        for master in self.cluster.masters() {
            if master.port != self.to.port && master.port != self.from.port {
                master.cli(&["cluster", "setslot", &slot, "node", &to_id]);
            }
        }
    }
}
