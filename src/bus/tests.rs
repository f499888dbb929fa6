//! The bus against a real `redis-server`, driven by a real mio poll loop
//! shaped like the reactor's: poll, `on_event` for each event, `on_timer`,
//! `flush`, `drain_events`.
//!
//! Each test starts its own redis-server on a free port (`--save ''
//! --appendonly no`: nothing touches the disk) and kills it at the end.
//! `scripts/install-deps.sh` installs redis-server; without it these tests
//! fail and say so. A few tests use a fake Redis instead (a std listener in
//! a thread) to send what a real one never would: replies dripped a byte at a
//! time, replies too large, no reply at all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{TcpListener as StdListener, TcpStream as StdStream};
use std::process::{Child, Command, Stdio};
use std::thread;

use mio::{Events, Poll};

use super::*;

const CMD: Token = Token(1);
const SUB: Token = Token(2);

/// Longest any test waits for something to happen before failing.
const PATIENCE: Duration = Duration::from_secs(10);

/// The loop's longest sleep, so a test notices its deadline.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// A private redis-server, killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

impl Redis {
    /// Starts redis-server on `port` with `extra` arguments and waits until
    /// it accepts connections.
    fn start(port: u16, extra: &[&str]) -> Redis {
        let mut redis = Redis { child: None, port, args: extra.iter().map(|s| s.to_string()).collect() };
        redis.restart();
        redis
    }

    fn restart(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run redis-server (scripts/install-deps.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while StdStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port} in time");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to redis-server: SIGSTOP freezes it with its sockets
    /// open (connected but stuck), SIGCONT lets it run again.
    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("redis-server is running").id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
    }

    /// SIGKILL, and wait until it is gone (its sockets closed).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nobody listens on (bound, then released).
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn pack(args: &[&str]) -> Vec<u8> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.get_packed_command()
}

/// A bus in a poll loop, and every event it has produced.
struct Harness {
    poll: Poll,
    events: Events,
    bus: Bus,
    seen: Vec<BusEvent>,
}

impl Harness {
    fn new(url: &str) -> Harness {
        Harness::with_timeout(url, Duration::from_secs(5))
    }

    /// A harness whose bus gives Redis `reply_timeout` to answer.
    fn with_timeout(url: &str, reply_timeout: Duration) -> Harness {
        let poll = Poll::new().unwrap();
        let mut bus = Bus::new(RedisUrl::parse(url).unwrap(), reply_timeout);
        bus.start(poll.registry(), CMD, SUB, Instant::now());
        Harness { poll, events: Events::with_capacity(64), bus, seen: Vec::new() }
    }

    /// One turn of the reactor's loop.
    fn turn(&mut self) {
        let timeout = self.bus.next_timeout(Instant::now()).map_or(MAX_SLEEP, |t| t.min(MAX_SLEEP));
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
        }
        let now = Instant::now();
        for event in self.events.iter() {
            self.bus.on_event(self.poll.registry(), event.token(), event, now);
        }
        self.bus.on_timer(self.poll.registry(), now);
        self.bus.flush(self.poll.registry());
        self.seen.extend(self.bus.drain_events());
    }

    /// Turns until `done(seen)` holds; fails the test after [`PATIENCE`].
    fn run_until(&mut self, what: &str, done: impl Fn(&[BusEvent]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(&self.seen) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; saw {:#?}", self.seen);
            self.turn();
        }
    }

    /// Turns for `time`, whatever happens.
    fn run_for(&mut self, time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until {
            self.turn();
        }
    }

    fn wait_up(&mut self) {
        self.run_until("CommandUp and SubscribedUp", |seen| {
            seen.contains(&BusEvent::CommandUp) && seen.contains(&BusEvent::SubscribedUp)
        });
        assert!(self.bus.is_up());
        self.seen.clear();
    }

    /// Turns until both links are up, whatever events that took.
    fn wait_is_up(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while !self.bus.is_up() {
            assert!(Instant::now() < deadline, "the bus never came back up; saw {:#?}", self.seen);
            self.turn();
        }
    }

    /// Sends one command and waits for its reply.
    fn ask(&mut self, args: &[&str], tag: u64) -> Value {
        self.bus.command(pack(args), tag);
        self.run_until("a reply", |seen| {
            seen.iter().any(|e| matches!(e, BusEvent::Reply { tag: t, .. } | BusEvent::Failed { tag: t } if *t == tag))
        });
        let at = self.seen.iter().position(|e| matches!(e, BusEvent::Reply { tag: t, .. } if *t == tag));
        match at.map(|i| self.seen.remove(i)) {
            Some(BusEvent::Reply { value, .. }) => value,
            _ => panic!("{args:?} failed; saw {:#?}", self.seen),
        }
    }

    /// Publishes until Redis counts `receivers` subscribers for `channel`
    /// (a SUBSCRIBE sent after the link is up takes effect a moment later).
    fn publish_reaching(&mut self, channel: &str, payload: &str, receivers: i64) {
        let deadline = Instant::now() + PATIENCE;
        for tag in 1_000_000.. {
            if self.ask(&["PUBLISH", channel, payload], tag) == Value::Int(receivers) {
                return;
            }
            assert!(Instant::now() < deadline, "{channel}: never reached {receivers} subscribers");
            self.run_for(Duration::from_millis(10));
        }
    }

    fn messages(&self) -> Vec<(String, String)> {
        self.seen
            .iter()
            .filter_map(|e| match e {
                BusEvent::Message { channel, payload } => {
                    Some((String::from_utf8_lossy(channel).into(), String::from_utf8_lossy(payload).into()))
                }
                _ => None,
            })
            .collect()
    }
}

fn count(seen: &[BusEvent], want: &BusEvent) -> usize {
    seen.iter().filter(|e| *e == want).count()
}

fn is_down(which: Which) -> impl Fn(&BusEvent) -> bool {
    move |e| matches!(e, BusEvent::Down { which: w, .. } if *w == which)
}

#[test]
fn publish_through_one_link_and_receive_on_the_other() {
    let redis = Redis::start(free_port(), &[]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{}", redis.port));
    h.bus.subscribe(b"room:lobby");
    h.bus.psubscribe(b"room:pattern:*");
    h.bus.subscribe(b"room:lobby"); // twice: still one subscription
    h.wait_up();

    assert_eq!(h.ask(&["PUBLISH", "room:lobby", "hello"], 1), Value::Int(1));
    assert_eq!(h.ask(&["PUBLISH", "room:pattern:x", "world"], 2), Value::Int(1));
    assert_eq!(h.ask(&["PUBLISH", "room:elsewhere", "nobody"], 3), Value::Int(0));
    h.run_until("two messages", |seen| seen.iter().filter(|e| matches!(e, BusEvent::Message { .. })).count() == 2);
    assert_eq!(h.messages(), vec![("room:lobby".into(), "hello".into()), ("room:pattern:x".into(), "world".into())]);

    // A subscription asked for while up is sent at once.
    h.seen.clear();
    h.bus.subscribe(b"room:late");
    h.publish_reaching("room:late", "binary\r\n\0ok", 1);
    h.run_until("the late message", |seen| seen.iter().any(|e| matches!(e, BusEvent::Message { .. })));
    assert_eq!(h.messages()[0], ("room:late".into(), "binary\r\n\0ok".into()));
}

#[test]
fn replies_come_back_by_tag_in_order() {
    let redis = Redis::start(free_port(), &[]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{}", redis.port));
    h.wait_up();
    for tag in 10..20 {
        h.bus.command(pack(&["INCR", "counter"]), tag);
    }
    // An error reply is a reply like any other: the link stays up.
    h.bus.command(pack(&["NOSUCHCOMMAND"]), 20);
    h.bus.command(pack(&["GET", "missing"]), 21);
    h.bus.command(pack(&["SET", "k", "v"]), 22);
    assert_eq!(h.bus.pipeline_depth(), 13);
    h.run_until("13 replies", |seen| seen.len() >= 13);
    let mut want: Vec<BusEvent> =
        (10..20).map(|tag| BusEvent::Reply { tag, value: Value::Int(tag as i64 - 9) }).collect();
    want.push(BusEvent::Reply { tag: 21, value: Value::Nil });
    want.push(BusEvent::Reply { tag: 22, value: Value::Simple("OK".into()) });
    let mut got = h.seen.clone();
    let error = got.remove(10);
    assert!(
        matches!(error, BusEvent::Reply { tag: 20, value: Value::Error(ref e) } if e.starts_with("ERR unknown command")),
        "{error:?}"
    );
    assert_eq!(got, want);
    assert_eq!(h.bus.pipeline_depth(), 0);
    assert!(h.bus.is_up());
}

#[test]
fn a_pipeline_of_a_thousand_commands_leaves_in_one_write() {
    let redis = Redis::start(free_port(), &[]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{}", redis.port));
    h.wait_up();
    let before = h.bus.cmd.write_calls;
    for tag in 0..1000 {
        h.bus.command(pack(&["INCR", "n"]), tag);
    }
    assert_eq!(h.bus.pipeline_depth(), 1000);
    assert_eq!(h.bus.cmd.write_calls, before, "command() only queues");
    h.bus.flush(h.poll.registry());
    assert_eq!(h.bus.cmd.write_calls, before + 1, "one write for the whole turn");
    h.run_until("1000 replies", |seen| seen.len() >= 1000);
    for (i, event) in h.seen.iter().enumerate() {
        assert_eq!(*event, BusEvent::Reply { tag: i as u64, value: Value::Int(i as i64 + 1) });
    }
    assert_eq!(h.bus.pipeline_depth(), 0);
}

#[test]
fn a_restarted_redis_fails_what_was_pending_then_comes_back_resubscribed() {
    let mut redis = Redis::start(free_port(), &[]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{}", redis.port));
    h.bus.subscribe(b"room:a");
    h.bus.psubscribe(b"room:p:*");
    h.wait_up();
    h.publish_reaching("room:a", "before", 1);

    // Redis dies with commands in flight: the bus has not noticed yet, so
    // these are queued and written; no answer will ever come.
    redis.kill();
    h.seen.clear();
    for tag in 100..103 {
        h.bus.command(pack(&["INCR", "x"]), tag);
    }
    h.bus.flush(h.poll.registry());
    h.run_until("both links down", |seen| {
        seen.iter().any(is_down(Which::Command)) && seen.iter().any(is_down(Which::Subscription))
    });
    let down_at = h.seen.iter().position(is_down(Which::Command)).unwrap();
    let failed: Vec<&BusEvent> = h.seen[..down_at].iter().filter(|e| matches!(e, BusEvent::Failed { .. })).collect();
    assert_eq!(
        failed,
        [&BusEvent::Failed { tag: 100 }, &BusEvent::Failed { tag: 101 }, &BusEvent::Failed { tag: 102 }]
    );
    assert!(!h.bus.is_up());
    assert_eq!(h.bus.pipeline_depth(), 0);

    // While down, commands are refused at once.
    h.bus.command(pack(&["INCR", "x"]), 200);
    assert_eq!(h.bus.drain_events().collect::<Vec<_>>(), [BusEvent::Failed { tag: 200 }]);

    // Retries fail quietly: one Down per link for the whole outage.
    h.run_for(Duration::from_millis(700));
    assert!(h.bus.reconnects() >= 4, "retries after 100, 200, 400 ms: {}", h.bus.reconnects());
    assert_eq!(h.seen.iter().filter(|e| is_down(Which::Command)(e)).count(), 1, "{:#?}", h.seen);
    assert_eq!(h.seen.iter().filter(|e| is_down(Which::Subscription)(e)).count(), 1);
    let wait = h.bus.next_timeout(Instant::now()).unwrap();
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(5), "{wait:?}");

    // Redis is back on the same port: both links return, resubscribed.
    redis.restart();
    h.seen.clear();
    h.wait_up();
    h.publish_reaching("room:a", "after", 1);
    assert_eq!(h.ask(&["PUBLISH", "room:p:1", "pattern too"], 7), Value::Int(1));
    h.run_until("two messages", |seen| seen.iter().filter(|e| matches!(e, BusEvent::Message { .. })).count() == 2);
    assert_eq!(h.messages(), vec![("room:a".into(), "after".into()), ("room:p:1".into(), "pattern too".into())]);
}

#[test]
fn auth_and_select_from_the_url() {
    let redis = Redis::start(free_port(), &["--requirepass", "s3cret"]);
    for url in [
        format!("redis://:s3cret@127.0.0.1:{}/2", redis.port),
        format!("redis://default:s3cret@127.0.0.1:{}/2", redis.port),
    ] {
        let mut h = Harness::new(&url);
        h.bus.subscribe(b"room:auth");
        h.wait_up();
        let Value::Bulk(info) = h.ask(&["CLIENT", "INFO"], 1) else { panic!("CLIENT INFO") };
        let info = String::from_utf8(info).unwrap();
        assert!(info.contains(" db=2 "), "{info}");
        h.publish_reaching("room:auth", "hi", 1);
    }
}

#[test]
fn a_wrong_password_is_reported_and_retried_with_backoff() {
    let redis = Redis::start(free_port(), &["--requirepass", "s3cret"]);
    let mut h = Harness::new(&format!("redis://:wrong@127.0.0.1:{}", redis.port));
    h.run_until("both links down", |seen| {
        seen.iter().any(is_down(Which::Command)) && seen.iter().any(is_down(Which::Subscription))
    });
    let Some(BusEvent::Down { reason, .. }) = h.seen.iter().find(|e| is_down(Which::Command)(e)) else {
        unreachable!()
    };
    assert!(reason.contains("redis refused AUTH") && reason.contains("WRONGPASS"), "{reason}");
    h.bus.command(pack(&["PING"]), 1);
    h.run_for(Duration::from_millis(500));
    assert!(h.seen.contains(&BusEvent::Failed { tag: 1 }));
    assert!(!h.seen.contains(&BusEvent::CommandUp) && !h.bus.is_up());
    // Backing off, not spinning: a handful of tries in half a second.
    assert!((2..=10).contains(&h.bus.reconnects()), "{}", h.bus.reconnects());
    assert_eq!(count(&h.seen, &BusEvent::Failed { tag: 1 }), 1);
}

#[test]
fn redis_absent_at_startup_is_waited_for() {
    let port = free_port();
    let mut h = Harness::new(&format!("redis://127.0.0.1:{port}"));
    h.bus.subscribe(b"room:early");
    h.run_until("both links down", |seen| {
        seen.iter().any(is_down(Which::Command)) && seen.iter().any(is_down(Which::Subscription))
    });
    let Some(BusEvent::Down { reason, .. }) = h.seen.first() else { unreachable!() };
    assert!(reason.contains("refused"), "{reason}");
    h.run_for(Duration::from_millis(300));
    let redis = Redis::start(port, &[]);
    h.wait_up();
    h.publish_reaching("room:early", "made it", 1);
    assert_eq!(redis.port, port);
}

/// A fake Redis: accepts the bus's two connections; on the first one to
/// send commands (the command link), answers the handshake's PING, waits for
/// `expect` more commands, then plays `script`: each entry is written
/// whole, or a byte at a time when `drip` is set.
fn fake_redis(expect: usize, script: Vec<(Vec<u8>, bool)>) -> u16 {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (a, _) = listener.accept().unwrap();
        let (b, _) = listener.accept().unwrap();
        // Whichever link speaks first is the command link (the other one,
        // with no subscriptions and no AUTH, says nothing for seconds).
        for s in [&a, &b] {
            s.set_nonblocking(true).unwrap();
            s.set_nodelay(true).unwrap();
        }
        let mut received = Vec::new();
        let mut commands = 0;
        let mut found = None;
        let mut sock = loop {
            let mut buf = [0u8; 4096];
            for mut s in [&a, &b] {
                if found.is_some_and(|f: &StdStream| !std::ptr::eq(f, s)) {
                    continue;
                }
                if let Ok(n @ 1..) = s.read(&mut buf) {
                    received.extend_from_slice(&buf[..n]);
                    found = Some(s);
                }
            }
            while let Ok(Some((_, used))) = decode(&received) {
                received.drain(..used);
                commands += 1;
                if commands == 1 {
                    found.unwrap().write_all(b"+PONG\r\n").unwrap();
                }
            }
            if let (Some(s), true) = (found, commands > expect) {
                break s;
            }
            thread::sleep(Duration::from_millis(1));
        };
        for (bytes, drip) in script {
            if drip {
                for byte in bytes {
                    let _ = sock.write_all(&[byte]);
                    thread::sleep(Duration::from_millis(2));
                }
            } else {
                let _ = sock.write_all(&bytes);
            }
        }
        thread::sleep(Duration::from_secs(3));
    });
    port
}

#[test]
fn replies_dripped_a_byte_at_a_time_or_packed_together_both_parse() {
    let port =
        fake_redis(3, vec![(b"*2\r\n$5\r\nhello\r\n:42\r\n".to_vec(), true), (b"+OK\r\n$-1\r\n".to_vec(), false)]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{port}"));
    h.wait_up();
    for tag in 1..=3 {
        h.bus.command(pack(&["PING"]), tag);
    }
    h.run_until("three replies", |seen| seen.len() >= 3);
    assert_eq!(
        h.seen,
        [
            BusEvent::Reply { tag: 1, value: Value::Array(vec![Value::Bulk(b"hello".to_vec()), Value::Int(42)]) },
            BusEvent::Reply { tag: 2, value: Value::Simple("OK".into()) },
            BusEvent::Reply { tag: 3, value: Value::Nil },
        ]
    );
}

#[test]
fn an_oversized_reply_takes_the_link_down() {
    let port = fake_redis(1, vec![(b"$999999999\r\n".to_vec(), false)]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{port}"));
    h.wait_up();
    h.bus.command(pack(&["GET", "big"]), 9);
    h.run_until("the command link down", |seen| seen.iter().any(is_down(Which::Command)));
    assert_eq!(h.seen[0], BusEvent::Failed { tag: 9 });
    let BusEvent::Down { reason, .. } = &h.seen[1] else { panic!("{:?}", h.seen) };
    assert!(reason.contains("protocol error") && reason.contains("limits"), "{reason}");
}

#[test]
fn a_redis_that_never_answers_the_handshake_times_out() {
    // The kernel completes the TCP handshake from the listen backlog, but
    // nobody ever reads our AUTH.
    let silent = StdListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Before the bus exists: its handshake deadline starts when it connects.
    let started = Instant::now();
    let mut h = Harness::new(&format!("redis://:pw@127.0.0.1:{port}"));
    h.run_until("a timeout", |seen| seen.iter().any(is_down(Which::Command)));
    let Some(BusEvent::Down { reason, .. }) = h.seen.iter().find(|e| is_down(Which::Command)(e)) else {
        unreachable!()
    };
    assert!(reason.contains("handshake timed out"), "{reason}");
    let took = started.elapsed();
    assert!(took >= conn::CONNECT_TIMEOUT && took < conn::CONNECT_TIMEOUT * 2, "{took:?}");
    drop(silent);
}

#[test]
fn a_flood_of_large_messages_arrives_whole_and_in_order() {
    let redis = Redis::start(free_port(), &[]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{}", redis.port));
    h.bus.subscribe(b"flood");
    h.wait_up();
    // One 64 KiB read per turn: the rest must wait for the next turn,
    // which `next_timeout` makes immediate.
    h.bus.sub.read_budget = 1;
    let n = 60;
    for i in 0..n {
        let payload = format!("{i:04}").repeat(25_000); // 100 kB each, 6 MB in all
        h.bus.command(pack(&["PUBLISH", "flood", &payload]), i);
    }
    h.bus.flush(h.poll.registry());
    // Let Redis fill our receive buffer before we read any of it.
    thread::sleep(Duration::from_millis(300));
    let mut resumed = 0;
    let deadline = Instant::now() + PATIENCE;
    while h.messages().len() < n as usize {
        assert!(Instant::now() < deadline, "got {} of {n}", h.messages().len());
        h.turn();
        if h.bus.sub.more_to_read {
            assert_eq!(h.bus.next_timeout(Instant::now()), Some(Duration::ZERO));
            resumed += 1;
        }
    }
    assert!(resumed > 10, "{resumed}");
    for (i, (channel, payload)) in h.messages().into_iter().enumerate() {
        assert_eq!(channel, "flood");
        assert_eq!(payload, format!("{i:04}").repeat(25_000));
    }
}

#[test]
fn thousands_of_channels_are_subscribed_in_batches_before_subscribed_up() {
    let redis = Redis::start(free_port(), &[]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{}", redis.port));
    for i in 0..2500 {
        h.bus.subscribe(format!("room:{i}").as_bytes());
    }
    h.wait_up();
    // SubscribedUp means every one is in place: no retrying needed here.
    assert_eq!(
        h.ask(&["PUBSUB", "NUMSUB", "room:0", "room:2499"], 1),
        Value::Array(vec![
            Value::Bulk(b"room:0".to_vec()),
            Value::Int(1),
            Value::Bulk(b"room:2499".to_vec()),
            Value::Int(1),
        ])
    );
    let Value::Array(channels) = h.ask(&["PUBSUB", "CHANNELS", "room:*"], 2) else { panic!("PUBSUB CHANNELS") };
    assert_eq!(channels.len(), 2500);
}

/// Chains (a write and the `WAIT` behind it) answer as one, in order
/// with plain commands; a `WAIT` that runs to its own timeout (this Redis
/// has no replica) restarts the clock of what is pipelined behind it, so
/// three of them in a row, longer together than `--redis-timeout`, do
/// not take the link down.
#[test]
fn chains_answer_as_one_and_waits_in_a_row_do_not_trip_the_timeout() {
    let redis = Redis::start(free_port(), &[]);
    let timeout = Duration::from_millis(500);
    let mut h = Harness::with_timeout(&format!("redis://127.0.0.1:{}", redis.port), timeout);
    h.wait_up();
    let chain = || [pack(&["INCR", "n"]), pack(&["WAIT", "1", "200"])].concat();
    let sent = Instant::now();
    h.bus.command_chain(chain(), 1, 2);
    h.bus.command(pack(&["GET", "n"]), 2);
    h.bus.command_chain(chain(), 3, 2);
    h.bus.command_chain(chain(), 4, 2);
    h.run_until("4 replies", |seen| seen.len() >= 4);
    assert!(sent.elapsed() >= Duration::from_millis(600), "three WAITs ran to their timeout");
    let chained = |n: i64| Value::Array(vec![Value::Int(n), Value::Int(0)]);
    let want = [
        BusEvent::Reply { tag: 1, value: chained(1) },
        BusEvent::Reply { tag: 2, value: Value::Bulk(b"1".to_vec()) },
        BusEvent::Reply { tag: 3, value: chained(2) },
        BusEvent::Reply { tag: 4, value: chained(3) },
    ];
    assert_eq!(h.seen, want);
    assert!(h.bus.is_up());
    assert_eq!(h.bus.pipeline_depth(), 0);

    // A chain that cannot be answered fails once, like one command.
    h.seen.clear();
    redis.signal(libc::SIGSTOP);
    h.bus.command_chain(chain(), 5, 2);
    h.run_until("the command link down", |seen| seen.iter().any(is_down(Which::Command)));
    let failed: Vec<&BusEvent> = h.seen.iter().filter(|e| matches!(e, BusEvent::Failed { .. })).collect();
    assert_eq!(failed, [&BusEvent::Failed { tag: 5 }]);
    redis.signal(libc::SIGCONT);
}

#[test]
fn a_stuck_redis_fails_the_waiting_commands_then_the_bus_comes_back() {
    let redis = Redis::start(free_port(), &[]);
    let timeout = Duration::from_millis(300);
    let mut h = Harness::with_timeout(&format!("redis://127.0.0.1:{}", redis.port), timeout);
    h.bus.subscribe(b"room:stuck");
    h.wait_up();
    assert_eq!(h.ask(&["PING"], 1), Value::Simple("PONG".into()));

    // Connected but stuck: the sockets stay open, nothing answers.
    redis.signal(libc::SIGSTOP);
    let sent = Instant::now();
    h.bus.command(pack(&["SET", "k", "lost?"]), 2);
    h.bus.command(pack(&["GET", "k"]), 3);
    h.run_until("the command link down", |seen| seen.iter().any(is_down(Which::Command)));
    let took = sent.elapsed();
    // The timeout, not TCP keepalive (a minute): loose above for a busy machine.
    assert!(took >= timeout && took < timeout * 4, "{took:?}");
    let down_at = h.seen.iter().position(is_down(Which::Command)).unwrap();
    let failed: Vec<&BusEvent> = h.seen[..down_at].iter().filter(|e| matches!(e, BusEvent::Failed { .. })).collect();
    assert_eq!(failed, [&BusEvent::Failed { tag: 2 }, &BusEvent::Failed { tag: 3 }]);
    let BusEvent::Down { reason, .. } = &h.seen[down_at] else { unreachable!() };
    assert_eq!(reason, "no reply in 300ms; reconnecting");
    assert_eq!(h.bus.pipeline_depth(), 0);
    assert!(!h.bus.is_up());

    // Still frozen: the reconnect is accepted by the kernel, but its
    // handshake PING goes unanswered, so the link does not claim to be up.
    h.run_for(Duration::from_millis(500));
    assert!(h.bus.reconnects() >= 1);
    assert!(!h.seen.contains(&BusEvent::CommandUp), "{:#?}", h.seen);
    assert!(!h.bus.is_up());

    // Redis runs again: both links come back and work.
    redis.signal(libc::SIGCONT);
    h.wait_is_up();
    h.seen.clear();
    assert_eq!(h.ask(&["SET", "k", "v"], 4), Value::Simple("OK".into()));
    assert_eq!(h.ask(&["GET", "k"], 5), Value::Bulk(b"v".to_vec()));
    h.publish_reaching("room:stuck", "back", 1);
    h.run_until("the message", |seen| seen.iter().any(|e| matches!(e, BusEvent::Message { .. })));
    assert_eq!(h.messages(), [("room:stuck".to_string(), "back".to_string())]);
}

#[test]
fn a_reply_that_comes_in_time_does_not_trip_the_timeout() {
    let redis = Redis::start(free_port(), &[]);
    let timeout = Duration::from_millis(600);
    let mut h = Harness::with_timeout(&format!("redis://127.0.0.1:{}", redis.port), timeout);
    h.bus.subscribe(b"room:slow");
    h.wait_up();

    // Redis pauses for a third of the timeout with a command waiting.
    redis.signal(libc::SIGSTOP);
    let sent = Instant::now();
    h.bus.command(pack(&["INCR", "n"]), 1);
    h.run_for(timeout / 3);
    redis.signal(libc::SIGCONT);
    h.run_until("the reply", |seen| seen.iter().any(|e| matches!(e, BusEvent::Reply { tag: 1, .. })));
    assert!(sent.elapsed() >= timeout / 3);
    assert_eq!(h.seen, [BusEvent::Reply { tag: 1, value: Value::Int(1) }]);

    // Then idle for three timeouts: an idle command link has nothing to
    // time, and the subscription link's PINGs are answered.
    h.run_for(timeout * 3);
    assert_eq!(h.seen.len(), 1, "{:#?}", h.seen);
    assert!(h.bus.is_up());
    // The PINGs did go out: the subscribed connection's last command.
    let Value::Bulk(clients) = h.ask(&["CLIENT", "LIST"], 2) else { panic!("CLIENT LIST") };
    let clients = String::from_utf8(clients).unwrap();
    assert!(clients.lines().any(|l| l.contains(" sub=1 ") && l.contains(" cmd=ping ")), "{clients}");
}

/// A fake Redis that answers the command link's handshake PING and nothing
/// else, and reports through the channel what the other (subscription) link
/// sent it. It keeps both sockets open for a few seconds: silent, not gone.
fn silent_redis() -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let socks = [listener.accept().unwrap().0, listener.accept().unwrap().0];
        for s in &socks {
            s.set_nonblocking(true).unwrap();
        }
        // The command link speaks first: its handshake PING leaves at once,
        // while the subscription link waits for a silence to ping.
        let mut command_link = None;
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            for (i, mut s) in socks.iter().enumerate() {
                let mut buf = [0u8; 4096];
                let Ok(n @ 1..) = s.read(&mut buf) else { continue };
                if *command_link.get_or_insert(i) == i {
                    s.write_all(b"+PONG\r\n").unwrap();
                } else {
                    let _ = tx.send(buf[..n].to_vec());
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
    });
    (port, rx)
}

#[test]
fn the_subscription_links_ping_finds_a_silent_server() {
    let (port, heard) = silent_redis();
    let timeout = Duration::from_millis(200);
    let mut h = Harness::with_timeout(&format!("redis://127.0.0.1:{port}"), timeout);
    h.wait_up();
    let up_at = Instant::now();
    h.run_until("the subscription link down", |seen| seen.iter().any(is_down(Which::Subscription)));
    let took = up_at.elapsed();
    // A silence of one timeout sends the PING; one more without a pong fails it.
    // (The silence counts from the connect, a moment before `up_at`.)
    assert!(took >= timeout * 2 - Duration::from_millis(60) && took < timeout * 6, "{took:?}");
    let Some(BusEvent::Down { reason, .. }) = h.seen.iter().find(|e| is_down(Which::Subscription)(e)) else {
        unreachable!()
    };
    assert_eq!(reason, "no answer to PING in 200ms; reconnecting");
    assert_eq!(heard.recv_timeout(PATIENCE).unwrap(), pack(&["PING"]));
    // The idle command link had nothing to time and stays up.
    assert!(!h.seen.iter().any(is_down(Which::Command)), "{:#?}", h.seen);
    assert!(h.bus.cmd.is_up());
}

#[test]
fn a_channel_added_while_up_is_confirmed_on_its_own_and_one_dropped_goes_quiet() {
    let redis = Redis::start(free_port(), &[]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{}", redis.port));
    h.bus.subscribe(b"room:a");
    h.wait_up();
    // The handshake's subscriptions are covered by SubscribedUp alone.
    assert!(!h.seen.iter().any(|e| matches!(e, BusEvent::Subscribed { .. })), "{:#?}", h.seen);

    h.bus.subscribe(b"room:b");
    let confirmed = BusEvent::Subscribed { channel: b"room:b".to_vec() };
    h.run_until("room:b confirmed", |seen| seen.contains(&confirmed));
    // Confirmed means in place: the first publish already reaches it.
    assert_eq!(h.ask(&["PUBLISH", "room:b", "hello b"], 1), Value::Int(1));
    h.run_until("the message", |seen| seen.iter().any(|e| matches!(e, BusEvent::Message { .. })));
    assert_eq!(h.messages(), [("room:b".to_string(), "hello b".to_string())]);

    h.bus.unsubscribe(b"room:b");
    h.bus.unsubscribe(b"room:never"); // never asked for: nothing is sent
    assert_eq!(h.bus.unsubscribes_sent(), 1);
    h.seen.clear();
    h.publish_reaching("room:b", "nobody hears", 0);
    h.seen.clear(); // what was published before the UNSUBSCRIBE took effect
    assert_eq!(h.ask(&["PUBLISH", "room:a", "still here"], 2), Value::Int(1));
    h.run_until("room:a's message", |seen| seen.iter().any(|e| matches!(e, BusEvent::Message { .. })));
    assert_eq!(h.messages(), [("room:a".to_string(), "still here".to_string())]);
    assert!(h.bus.is_up(), "an UNSUBSCRIBE's confirmation is no reason to fail");
    assert_eq!(h.bus.subscribes_sent(), 2);
}

#[test]
fn a_dropped_channel_is_not_resubscribed_after_a_restart() {
    let mut redis = Redis::start(free_port(), &[]);
    let mut h = Harness::new(&format!("redis://127.0.0.1:{}", redis.port));
    for channel in [&b"room:a"[..], b"room:b", b"room:c"] {
        h.bus.subscribe(channel);
    }
    h.wait_up();
    h.bus.unsubscribe(b"room:b"); // while up: UNSUBSCRIBE goes at once
    redis.kill();
    h.run_until("the subscription link down", |seen| seen.iter().any(is_down(Which::Subscription)));
    h.bus.unsubscribe(b"room:c"); // while down: only forgotten
    assert_eq!(h.bus.unsubscribes_sent(), 1);
    redis.restart();
    h.seen.clear();
    h.wait_up();
    let Value::Array(channels) = h.ask(&["PUBSUB", "CHANNELS", "room:*"], 1) else { panic!("PUBSUB CHANNELS") };
    assert_eq!(channels, [Value::Bulk(b"room:a".to_vec())]);
    assert!(!h.seen.iter().any(|e| matches!(e, BusEvent::Subscribed { .. })), "{:#?}", h.seen);
}

/// A cluster node's bus (`sharded`), here on a standalone Redis 7, which
/// has sharded pub/sub too: SSUBSCRIBE for every channel (before and after
/// the link is up), `smessage` pushes delivered as messages, and the
/// confirmation of our own SUNSUBSCRIBE is not taken for the server
/// ending a subscription (which would be [`BusEvent::Unsubscribed`]).
#[test]
fn a_sharded_bus_subscribes_with_ssubscribe_and_hears_spublish() {
    let redis = Redis::start(free_port(), &[]);
    let poll = Poll::new().unwrap();
    let url = RedisUrl::parse(&format!("redis://127.0.0.1:{}", redis.port)).unwrap();
    let mut bus = Bus::new(url, Duration::from_secs(5)).sharded();
    bus.subscribe(b"chatroom:{a}:msgs");
    bus.subscribe(b"chatroom:{b}:msgs");
    bus.start(poll.registry(), CMD, SUB, Instant::now());
    let mut h = Harness { poll, events: Events::with_capacity(64), bus, seen: Vec::new() };
    h.wait_up();
    let Value::Array(channels) = h.ask(&["PUBSUB", "SHARDCHANNELS"], 1) else { panic!("PUBSUB SHARDCHANNELS") };
    assert_eq!(channels.len(), 2, "{channels:?}");

    h.bus.subscribe(b"chatroom:{c}:msgs");
    let confirmed = BusEvent::Subscribed { channel: b"chatroom:{c}:msgs".to_vec() };
    h.run_until("the new channel confirmed", |seen| seen.contains(&confirmed));
    assert_eq!(h.ask(&["SPUBLISH", "chatroom:{c}:msgs", "hi"], 2), Value::Int(1));
    assert_eq!(h.ask(&["PUBLISH", "chatroom:{c}:msgs", "not sharded"], 3), Value::Int(0));
    h.run_until("the message", |seen| seen.iter().any(|e| matches!(e, BusEvent::Message { .. })));
    assert_eq!(h.messages(), [("chatroom:{c}:msgs".to_string(), "hi".to_string())]);

    h.bus.unsubscribe(b"chatroom:{a}:msgs");
    let deadline = Instant::now() + PATIENCE;
    while h.ask(&["PUBSUB", "SHARDNUMSUB", "chatroom:{a}:msgs"], 4)
        != Value::Array(vec![Value::Bulk(b"chatroom:{a}:msgs".to_vec()), Value::Int(0)])
    {
        assert!(Instant::now() < deadline, "SUNSUBSCRIBE never took effect");
    }
    // The confirmation left before this message, on the same connection:
    // once the message is here, the confirmation has been handled.
    h.seen.clear();
    assert_eq!(h.ask(&["SPUBLISH", "chatroom:{b}:msgs", "after"], 5), Value::Int(1));
    h.run_until("the later message", |seen| seen.iter().any(|e| matches!(e, BusEvent::Message { .. })));
    assert!(!h.seen.iter().any(|e| matches!(e, BusEvent::Unsubscribed { .. })), "{:#?}", h.seen);
    assert!(h.bus.is_up());
}
