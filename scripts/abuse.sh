#!/usr/bin/env bash
# A timed abuse mix against a running chatroom server: every hostile case
# of tests/hostile.rs and tests/limits.rs at once, next to normal chat
# clients that must keep getting every message. Samples the server's
# resident memory and open descriptors every second into a CSV under
# reports/ and prints them as a table.
#
#   scripts/abuse.sh                          # starts target/release/chatroom, 60 s
#   scripts/abuse.sh --duration 20            # shorter
#   scripts/abuse.sh --url http://127.0.0.1:8000 --pid 1234   # a server already running
#   scripts/abuse.sh --bin target/debug/chatroom
#
# The mix, all in parallel, loopback only:
#   slowloris     100 connections trickling a head one byte a second (408 at --header-timeout)
#   garbage       random bytes on the HTTP port (400, or a close)
#   oversized     WebSocket frames past --max-message (close 1009)
#   bad frames    invalid UTF-8 (1007), binary to a room (1003), unmasked frames (1002)
#   flood         one client posting as fast as it can (rate_limited errors)
#   firehose      4 clients posting 15 messages of 4 KB a second, read by each other (every message, in order)
#   slow readers  10 members of the firehose room that never read (dropped with 1008), renewed every 20 s
#   rst storms    every 5 s, 200 members join a room and vanish with an RST
#   normal        5 chat clients posting 4 messages a second each; each must get every message
#
# Exit status: 0 if the server is alive at the end and no normal or firehose
# client lost a message; 1 otherwise; 2 for bad arguments.
#
# Needs only bash and python3 (standard library: the WebSocket client is a
# hand-written one, below).
set -euo pipefail
cd "$(dirname "$0")/.."

duration=60
url=""
pid=""
bin="target/release/chatroom"
while [ $# -gt 0 ]; do
    case "$1" in
    --duration) duration=$2; shift 2 ;;
    --url) url=$2; shift 2 ;;
    --pid) pid=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "abuse.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

mkdir -p reports
stamp=$(date +%Y%m%d-%H%M%S)
csv="reports/abuse-$stamp.csv"
started_here=""
log=""
if [ -z "$url" ]; then
    if [ ! -x "$bin" ]; then
        echo "abuse.sh: $bin not found; build it with: cargo build --release" >&2
        exit 2
    fi
    log="reports/abuse-$stamp.server.log"
    RUST_LOG=info "$bin" --bind 127.0.0.1:0 --data none 2>"$log" &
    pid=$!
    started_here=1
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*listening on http:\/\///p' "$log" | head -n1)
        [ -n "$addr" ] && break
        sleep 0.1
    done
    if [ -z "${addr:-}" ]; then
        echo "abuse.sh: the server did not start; see $log" >&2
        kill "$pid" 2>/dev/null || true
        exit 1
    fi
    url="http://$addr"
    echo "started $bin (pid $pid) on $url; log in $log"
fi
if [ -z "$pid" ]; then
    echo "abuse.sh: no --pid given: memory and descriptors will not be sampled" >&2
fi

status=0
python3 - "$url" "${pid:-0}" "$duration" "$csv" <<'PY' || status=$?
import base64, os, random, socket, struct, sys, threading, time

URL, PID, DURATION, CSV = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
HOST, PORT = URL.split("//", 1)[1].rstrip("/").rsplit(":", 1)
PORT = int(PORT)
DEADLINE = time.monotonic() + DURATION
RUN = "%x" % random.getrandbits(24)  # keeps this run's rooms apart from earlier runs

lock = threading.Lock()
counts = {}


def count(what, n=1):
    with lock:
        counts[what] = counts.get(what, 0) + n


def running():
    return time.monotonic() < DEADLINE


# --- A minimal WebSocket client (RFC 6455), by hand -------------------------

def connect(rcvbuf=None, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((HOST, PORT))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def reset(s):
    """Close with SO_LINGER 0: the peer sees an RST, as when a client vanishes."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


def read_head(s, buf=b""):
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole response head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    return status, head, rest


def mask(payload, key):
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def frame(opcode, payload, fin=True, masked=True, declared=None):
    n = len(payload) if declared is None else declared
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if masked:
        key = os.urandom(4)
        return head + key + mask(payload, key)
    return head + payload


class WS:
    def __init__(self, path, rcvbuf=None, timeout=10):
        self.s = connect(rcvbuf, timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        status, _, self.buf = read_head(self.s)
        if status != 101:
            self.s.close()
            raise ConnectionError(f"upgrade refused: {status}")

    def send(self, opcode, payload, **kw):
        self.s.sendall(frame(opcode, payload, **kw))

    def text(self, text):
        self.send(0x1, text.encode())

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(262144)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def recv(self):
        """The next frame: (opcode, payload). Answers pings."""
        while True:
            self._need(2)
            b0, b1 = self.buf[0], self.buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                self._need(4)
                n, at = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                self._need(10)
                n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
            self._need(at + n)
            payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            return opcode, payload

    def close_code(self):
        """Reads until the server's close frame; its code (None on EOF/reset)."""
        try:
            while True:
                op, payload = self.recv()
                if op == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (OSError, ConnectionError):
            return None


def http_get(path, timeout=5):
    s = connect(timeout=timeout)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        status, _, body = read_head(s, data)
        return status, body
    finally:
        s.close()


def metrics():
    try:
        _, body = http_get("/metrics")
    except OSError:
        return {}
    out = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("chatroom_") and " " in line and "{" not in line:
            name, value = line.rsplit(" ", 1)
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def guarded(name, fn):
    """Runs a worker; a worker's own crash is counted, never fatal."""
    def run():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - abuse workers must not die silently
            count(f"{name}: worker error {type(e).__name__}: {e}")
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


# --- The hostile workers ---------------------------------------------------

def slowloris():
    socks = []
    head = f"GET / HTTP/1.1\r\nHost: {HOST}:{PORT}\r\nX-Slow: ".encode()
    while running():
        while len(socks) < 100 and running():
            try:
                s = connect(timeout=0.2)
                s.sendall(head)
                socks.append(s)
            except OSError:
                count("slowloris: connect failed")
                break
        time.sleep(1)
        for s in list(socks):
            try:
                s.setblocking(False)
                data = s.recv(4096)
                s.setblocking(True)
                if data.startswith(b"HTTP/1.1 408"):
                    count("slowloris: 408")
                elif data:
                    count("slowloris: other answer")
                else:
                    count("slowloris: closed")
                socks.remove(s)
                s.close()
            except BlockingIOError:
                # No answer yet: one more byte of a head that never ends.
                s.setblocking(True)
                try:
                    s.sendall(b"a")
                except OSError:
                    count("slowloris: closed")
                    socks.remove(s)
                    s.close()
            except OSError:
                count("slowloris: closed")
                socks.remove(s)
                s.close()
    for s in socks:
        s.close()


def garbage():
    while running():
        try:
            s = connect(timeout=5)
            s.sendall(os.urandom(random.randint(1, 4096)))
            s.shutdown(socket.SHUT_WR)
            data = s.recv(64)
            status = data.split(b" ", 2)[1].decode(errors="replace") if data.startswith(b"HTTP/") else "no answer"
            count(f"garbage: {status}")
            s.close()
        except OSError as e:
            count(f"garbage: {type(e).__name__}")
        time.sleep(0.02)


def bad_frames():
    cases = [
        ("oversized (1009)", "/ws/echo", lambda: frame(0x1, b"a" * 200_000)),
        ("bad utf-8 (1007)", f"/ws/chatroom/abuse-utf8-{RUN}", lambda: frame(0x1, b'{"message": "\xff\xfe"}')),
        ("binary to a room (1003)", f"/ws/chatroom/abuse-bin-{RUN}", lambda: frame(0x2, b"\x00\x01")),
        ("unmasked (1002)", "/ws/echo", lambda: frame(0x1, b"hi", masked=False)),
        ("random bytes on a websocket", "/ws/echo", lambda: os.urandom(512)),
    ]
    while running():
        name, path, make = random.choice(cases)
        try:
            ws = WS(path)
            try:
                ws.s.sendall(make())
            except OSError:
                pass  # the server may close before taking all of an oversized frame
            count(f"bad frames: {name} -> {ws.close_code()}")
            ws.s.close()
        except (OSError, ConnectionError) as e:
            count(f"bad frames: {name} -> {type(e).__name__}")
        time.sleep(0.02)


def flood():
    while running():
        try:
            ws = WS(f"/ws/chatroom/abuse-flood-{RUN}?username=flooder")
        except (OSError, ConnectionError):
            count("flood: connect failed")
            time.sleep(0.5)
            continue

        def reader():
            try:
                while True:
                    op, payload = ws.recv()
                    if b'"code":"rate_limited"' in payload:
                        count("flood: rate_limited")
                    elif payload.startswith(b'{"type":"message"'):
                        count("flood: posted")
                    elif op == 0x8:
                        count(f"flood: closed {struct.unpack('!H', payload[:2])[0]}")
                        return
            except (OSError, ConnectionError):
                return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        post = frame(0x1, b'{"message": "flood"}') * 100
        try:
            while running() and t.is_alive():
                ws.s.sendall(post)
                count("flood: sent", 100)
                time.sleep(0.01)
        except OSError:
            pass
        try:
            ws.s.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv()
        except OSError:
            pass
        ws.s.close()
        t.join(5)


def rst_storms():
    n = 0
    while running():
        n += 1
        socks = []
        key = base64.b64encode(os.urandom(16)).decode()
        for i in range(200):
            try:
                s = connect(timeout=5)
                s.sendall(
                    (
                        f"GET /ws/chatroom/abuse-storm-{RUN}?username=s{i} HTTP/1.1\r\nHost: {HOST}:{PORT}\r\n"
                        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n"
                    ).encode()
                )
                socks.append(s)
            except OSError:
                count("rst storm: connect failed")
        for s in socks:
            try:
                status, _, _ = read_head(s)
                count(f"rst storm: {status}")
            except (OSError, ConnectionError):
                count("rst storm: no answer")
        for s in socks:
            reset(s)
        count("rst storm: storms")
        end = time.monotonic() + 5
        while running() and time.monotonic() < end:
            time.sleep(0.1)


# --- Clients that must not lose anything -----------------------------------

class Member:
    """A chat member whose reader thread records every message it gets."""

    def __init__(self, room, name, rcvbuf=None):
        self.ws = WS(f"/ws/chatroom/{room}?username={name}", rcvbuf=rcvbuf, timeout=30)
        self.got = []  # (id, text)
        self.errors = []
        self.closed = None
        self.welcome = threading.Event()

    def start_reading(self):
        def read():
            import json
            try:
                while True:
                    op, payload = self.ws.recv()
                    if op == 0x8:
                        self.closed = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                        return
                    if op != 0x1:
                        continue
                    event = json.loads(payload)
                    kind = event.get("type")
                    if kind == "welcome":
                        self.welcome.set()
                    elif kind == "message":
                        self.got.append((event["id"], event["message"]))
                    elif kind == "error":
                        self.errors.append(event.get("code"))
            except (OSError, ConnectionError, ValueError) as e:
                self.closed = self.closed or type(e).__name__

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()


def steady_room(label, room, members, per_second, size, stop_before):
    """`members` clients in `room`, each posting `per_second` messages of
    `size` characters until `stop_before` seconds before the end; every
    member must get every message, in id order."""
    clients = [Member(room, f"{label}{i}") for i in range(members)]
    for c in clients:
        c.start_reading()
    for c in clients:
        if not c.welcome.wait(10):
            count(f"{label}: no welcome")
    sent = []
    sent_lock = threading.Lock()

    def post(i, c):
        seq = 0
        stop = DEADLINE - stop_before
        pad = "x" * max(0, size - 16)
        while time.monotonic() < stop:
            seq += 1
            text = f"{label}{i}-{seq} {pad}"
            try:
                c.ws.text('{"message": "%s"}' % text)
            except OSError:
                return
            with sent_lock:
                sent.append(text)
            time.sleep(1.0 / per_second)

    posters = [threading.Thread(target=post, args=(i, c), daemon=True) for i, c in enumerate(clients)]
    for p in posters:
        p.start()
    for p in posters:
        p.join()
    # Give the last ones time to arrive.
    want = set(sent)
    end = time.monotonic() + 15
    while time.monotonic() < end and any(len(c.got) < len(want) and c.closed is None for c in clients):
        time.sleep(0.1)
    lost = 0
    for i, c in enumerate(clients):
        texts = [t for _, t in c.got]
        ids = [n for n, _ in c.got]
        missing = len(want - set(texts))
        in_order = ids == list(range(ids[0], ids[0] + len(ids))) if ids else True
        if missing or not in_order or c.errors:
            lost += 1
            count(f"{label}: client {i} missed {missing}, in order {in_order}, errors {c.errors[:3]}, closed {c.closed}")
        # shutdown() first: a plain close() would wait for the reader
        # thread's blocked recv() and leave the connection open meanwhile.
        try:
            c.ws.s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        c.ws.s.close()
    count(f"{label}: messages posted", len(want))
    count(f"{label}: clients that lost a message", lost)
    results[label] = lost


results = {}


def slow_readers(room):
    """Members of the firehose room that never read: dropped as slow consumers."""
    while running():
        socks = []
        for i in range(10):
            try:
                socks.append(WS(f"/ws/chatroom/{room}?username=slow{i}", rcvbuf=4096))
            except (OSError, ConnectionError):
                count("slow readers: connect failed")
        end = time.monotonic() + 20
        while running() and time.monotonic() < end:
            time.sleep(0.1)
        for ws in socks:
            reset(ws.s)


# --- Sampling ---------------------------------------------------------------

def proc_sample():
    if not PID:
        return None, None
    try:
        with open(f"/proc/{PID}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{PID}/fd"))
        return rss, fds
    except (OSError, StopIteration):
        return None, None


def alive():
    if PID and not os.path.exists(f"/proc/{PID}/status"):
        return False
    try:
        return http_get("/healthz")[0] == 200
    except OSError:
        return False


rows = []
COLUMNS = ["t_s", "rss_kib", "open_fds", "websockets", "http_conns", "members", "queued_bytes",
           "slow_consumers_total", "rate_limited_total", "requests_total"]


def sample(t):
    rss, fds = proc_sample()
    m = metrics()
    row = [
        round(t, 1), rss, fds,
        m.get("chatroom_websocket_connections"), m.get("chatroom_http_connections"),
        m.get("chatroom_room_members"), m.get("chatroom_queued_bytes"),
        m.get("chatroom_slow_consumers_total"), m.get("chatroom_rate_limited_total"),
        m.get("chatroom_http_requests_total"),
    ]
    rows.append(row)
    return row


start = time.monotonic()
sample(0)
firehose_room = f"abuse-firehose-{RUN}"
workers = [
    guarded("slowloris", slowloris),
    guarded("garbage", garbage),
    guarded("bad frames", bad_frames),
    guarded("flood", flood),
    guarded("rst storms", rst_storms),
    guarded("normal", lambda: steady_room("normal", f"abuse-normal-{RUN}", 5, 4, 60, 3)),
    guarded("firehose", lambda: steady_room("firehose", firehose_room, 4, 15, 4000, 3)),
    guarded("slow readers", lambda: slow_readers(firehose_room)),
]
next_sample = start + 1
while running():
    time.sleep(max(0, next_sample - time.monotonic()))
    next_sample += 1
    sample(time.monotonic() - start)
for w in workers:
    w.join(30)
# Every client is gone: the gauges must come back to zero.
settle = time.monotonic() + 10
while time.monotonic() < settle:
    m = metrics()
    if m and m.get("chatroom_websocket_connections") == 0 and m.get("chatroom_room_members") == 0:
        break
    time.sleep(0.2)
last = sample(time.monotonic() - start)
server_alive = alive()

with open(CSV, "w") as f:
    f.write(",".join(COLUMNS) + "\n")
    for r in rows:
        f.write(",".join("" if v is None else str(int(v) if isinstance(v, float) and k != 0 else v)
                         for k, v in enumerate(r)) + "\n")


def fmt(v):
    return "-" if v is None else str(int(v)) if isinstance(v, float) else str(v)


print()
print("%6s %9s %8s %10s %10s %8s %12s %6s %8s %9s" % ("t(s)", "RSS(KiB)", "fds", "websockets", "http", "members",
                                                      "queued(B)", "slow", "limited", "requests"))
step = max(1, len(rows) // 20)
for i, r in enumerate(rows):
    if i % step == 0 or i == len(rows) - 1:
        print("%6s %9s %8s %10s %10s %8s %12s %6s %8s %9s" % tuple(fmt(v) for v in r))
print()
print(f"samples: {CSV}")
print()
print("outcomes:")
for k in sorted(counts):
    print(f"  {counts[k]:>8}  {k}")
rss = [r[1] for r in rows if r[1] is not None]
fds = [r[2] for r in rows if r[2] is not None]
print()
if rss:
    print(f"RSS: start {rss[0]} KiB, max {max(rss)} KiB, end {rss[-1]} KiB")
if fds:
    print(f"open descriptors: start {fds[0]}, max {max(fds)}, end {fds[-1]}")
lost = sum(results.get(k, 1) for k in ("normal", "firehose"))
print(f"after the mix: {fmt(last[3])} websockets, {fmt(last[5])} members, {fmt(last[6])} bytes queued")
print(f"server alive at the end: {'yes' if server_alive else 'NO'}")
print(f"clients that lost a message: {lost}" + ("" if set(results) >= {"normal", "firehose"} else " (a steady room did not finish)"))
sys.exit(0 if server_alive and lost == 0 else 1)
PY

if [ -n "$started_here" ]; then
    # The server we started gets the same SIGTERM a deployment would send.
    kill -TERM "$pid" 2>/dev/null || true
    code=0
    wait "$pid" || code=$?
    echo "server (pid $pid) stopped with SIGTERM: exit status $code"
    if [ "$code" -ne 0 ]; then
        status=1
    fi
fi
exit "$status"
