//! The Redis bus: publish and subscribe through Redis, inside the reactor.
//!
//! Several chatroom servers share their rooms through Redis pub/sub. The bus
//! is the piece that talks to Redis, and it knows nothing about rooms or
//! connections: it sends commands the caller packed, hands back replies by
//! the caller's tags, and delivers pub/sub messages as channel and payload.
//!
//! ```text
//!   caller ──command(packed, tag)──▶ cmd link ──▶ Redis      (PUBLISH, INCR…)
//!   caller ◀──Reply{tag, value}───── cmd link ◀── Redis      (in order: FIFO of tags)
//!   caller ──subscribe(channel)────▶ sub link ──▶ Redis      (remembered)
//!   caller ──unsubscribe(channel)──▶ sub link ──▶ Redis      (forgotten)
//!   caller ◀──Subscribed{channel}─── sub link ◀── Redis      (confirmed)
//!   caller ◀──Message{channel, payload}── sub link ◀── Redis
//! ```
//!
//! Two connections, because a connection that has subscribed may only
//! (un)subscribe and ping: PUBLISH needs a connection of its own. Both are
//! mio sources in the reactor's one poll, non-blocking from the first connect
//! to every reconnect; nothing here ever waits. The reactor drives the bus
//! with four calls:
//!
//! - [`Bus::on_event`] for every event on the two tokens: finishes connects,
//!   reads until `WouldBlock`, notices failures.
//! - [`Bus::flush`] once per turn, before sleeping: every command queued in
//!   the turn leaves in one `write` (a pipeline; Redis answers in order).
//! - [`Bus::on_timer`] every turn, and [`Bus::next_timeout`] for the poll
//!   timeout: reconnects after backoff, connect timeouts, reply timeouts and
//!   the subscription link's PING.
//! - [`Bus::drain_events`] to collect what happened, in order.
//!
//! When Redis goes away, commands sent and not answered come back as
//! [`BusEvent::Failed`] (they may or may not have run), then
//! [`BusEvent::Down`]; the bus reconnects with backoff and jitter, logs in
//! again (AUTH, SELECT from the URL, and a PING, pipelined first),
//! resubscribes to every channel and pattern, and says
//! [`BusEvent::CommandUp`] and [`BusEvent::SubscribedUp`] again.
//!
//! A Redis can also stay connected and stop answering: `DEBUG SLEEP 30`,
//! `kill -STOP`, a long script, a frozen VM. No EOF, no error, and TCP
//! keepalive speaks up only after a minute or more. So the bus times the
//! answers themselves, with one timeout (`--redis-timeout`, 5 s by default):
//!
//! - On the command link, the oldest command sent must get its reply within
//!   the timeout. Redis answers in order, so the oldest is the front of the
//!   FIFO of tags; every command sent by one flush shares one send time (a
//!   `Batch`), so the check is one comparison per turn whatever the depth
//!   of the pipeline. An idle command link has nothing to time.
//!   A chain ([`Bus::command_chain`]: a script and the `WAIT` behind it)
//!   counts as several commands; its `WAIT` may hold the connection up to
//!   its own timeout on purpose, so when a chain completes, what waits
//!   behind it starts its clock anew.
//! - The subscription link may be silent for good reasons (a quiet chat), so
//!   after a timeout's worth of silence it sends a PING, which Redis answers
//!   even on a subscribed connection (with a `pong` push); that answer must
//!   come within the timeout too.
//!
//! Either way the link is failed exactly as if the connection had dropped,
//! through the same path: `Failed` for each unanswered command, `Down`, and
//! a reconnect with backoff. The clock of a command starts when it is
//! flushed, not when Redis reads it: a write stuck behind a full socket
//! buffer counts too, and that is what a stuck Redis looks like. A Redis
//! still frozen when the bus reconnects does not come back "up" either:
//! the kernel accepts the TCP connection for it, but the command link's
//! handshake ends with a PING, and the handshake has its own 2 s limit.
//!
//! With `--redis-cluster` one such pair of connections goes to each master
//! ([`ClusterBus`], `cluster.rs`), its subscription link in *sharded* mode
//! (`SSUBSCRIBE`: a channel lives on the master of its slot); [`AnyBus`]
//! is whichever of the two the server runs.
//!
//! Files: [`resp`] decodes RESP, `conn.rs` moves one connection's bytes,
//! `url.rs` parses the URL, [`slots`] places keys in a cluster,
//! `cluster.rs` routes commands over a cluster's masters, `any.rs` is the
//! one face the server sees; `incoming.rs` gives what Redis sends its
//! meaning and times the answers; this file is the single-Redis bus itself.

mod any;
mod cluster;
mod conn;
mod incoming;
pub mod resp;
pub mod slots;
mod url;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use log::debug;
use mio::{Registry, Token};

pub use any::AnyBus;
pub use cluster::{ClusterBus, NodeState, SeedList};
use conn::Link;
pub use resp::{RespError, Value, decode};
pub use slots::key_slot;
pub use url::RedisUrl;

/// Output waiting for a slow (or stuck) Redis beyond this many bytes makes
/// [`Bus::command`] refuse new commands with [`BusEvent::Failed`] instead of
/// buffering without end. 32 MiB is minutes of chat traffic.
pub const MAX_PENDING_OUT: usize = 32 * 1024 * 1024;

/// Channels (or patterns) per SUBSCRIBE command when resubscribing: one
/// command per thousand keeps each well under Redis's argument limits.
const SUBSCRIBE_BATCH: usize = 1000;

/// Commands that left in one flush: how many still wait for their replies,
/// and when they were sent. The front batch holds the oldest unanswered
/// command; a batch leaves the queue when its last reply arrives.
#[derive(Debug)]
struct Batch {
    /// Commands of this flush not answered yet (never 0 in the queue).
    waiting: usize,
    /// When the flush that sent them ran.
    sent_at: Instant,
}

/// PING, packed: it ends the command link's handshake (a Redis that takes
/// the TCP connection but never answers must not count as up) and keeps
/// the subscription link honest when it has been silent.
const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Which of the bus's two connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Which {
    /// The connection for commands (PUBLISH, INCR...).
    Command,
    /// The connection that is subscribed.
    Subscription,
}

/// Something the caller should know, returned by [`Bus::drain_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// The command connection is up (after AUTH/SELECT succeeded): the caller
    /// may (re)send commands; also emitted after every reconnect.
    CommandUp,
    /// The subscription connection is up and (re)subscribed to every
    /// channel/pattern asked so far.
    SubscribedUp,
    /// Redis confirmed a subscription asked for while the subscription
    /// connection was already up: messages on `channel` come from now on.
    /// (Subscriptions confirmed during a (re)connect's handshake are all
    /// covered by the one `SubscribedUp` that ends it.)
    Subscribed {
        /// The channel (or pattern) now subscribed.
        channel: Vec<u8>,
    },
    /// A connection went down (which, and why); commands sent and not
    /// answered are reported as Failed first. Emitted once per outage:
    /// retries that fail while it is already down are only logged.
    Down {
        /// The connection that failed.
        which: Which,
        /// What happened, for the log.
        reason: String,
    },
    /// Reply to the command with this tag (tags are caller-chosen u64).
    /// Error replies (`-ERR ...`) arrive here too, as [`Value::Error`].
    Reply {
        /// The tag given to [`Bus::command`].
        tag: u64,
        /// What Redis answered.
        value: Value,
    },
    /// A command sent but not answered when the connection dropped, or
    /// refused because the bus is down: outcome unknown/not executed.
    Failed {
        /// The tag given to [`Bus::command`].
        tag: u64,
    },
    /// Redis ended a subscription nobody asked to end: a sharded channel
    /// whose slot migrated to another master (`sunsubscribe` pushed
    /// unasked). The bus has forgotten the channel; the caller (the
    /// cluster bus) subscribes again where the slot lives now.
    Unsubscribed {
        /// The channel no longer subscribed.
        channel: Vec<u8>,
    },
    /// A pub/sub message (from SUBSCRIBE, PSUBSCRIBE or SSUBSCRIBE).
    Message {
        /// The channel it was published to.
        channel: Vec<u8>,
        /// What was published.
        payload: Vec<u8>,
    },
}

/// The Redis transport: two connections, their state, and the events for the
/// caller. See the module documentation for how the reactor drives it.
pub struct Bus {
    url: RedisUrl,
    /// The connection for commands.
    cmd: Link,
    /// The subscribed connection.
    sub: Link,
    /// Tags of the commands sent on `cmd` and not yet answered, oldest
    /// first, each with the number of replies it takes (more than one
    /// for a chain, see [`Bus::command_chain`]): Redis answers in order,
    /// so each reply belongs to the front.
    tags: VecDeque<(u64, usize)>,
    /// The replies so far of the chain at the front of `tags`.
    chain: Vec<Value>,
    /// How long a command may wait for its reply, and a PING for its pong,
    /// before the link counts as failed (`--redis-timeout`).
    reply_timeout: Duration,
    /// The flushed commands of `tags`, one entry per flush, oldest first.
    batches: VecDeque<Batch>,
    /// Commands queued since the last flush (the back of `tags`): their
    /// clock starts, in a batch of their own, when they are flushed.
    unstamped: usize,
    /// When the subscription link last received a byte (or connected).
    sub_heard_at: Instant,
    /// When the subscription link's PING left, while its answer is awaited.
    ping_sent_at: Option<Instant>,
    /// Every channel and pattern asked for, re-sent after each reconnect.
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
    /// Subscription confirmations still expected on `sub`.
    sub_pending: usize,
    /// AUTH and SELECT from the URL, packed once, sent first on each link.
    hello: Vec<u8>,
    /// The names of the commands in `hello`, for error messages.
    hello_names: Vec<&'static str>,
    /// What happened since the last `drain_events`.
    events: Vec<BusEvent>,
    /// Reused buffer of values decoded in one read.
    values: Vec<Value>,
    started: bool,
    reconnects: u64,
    /// Channels sent in SUBSCRIBE commands, and UNSUBSCRIBE commands sent.
    subscribes_sent: u64,
    unsubscribes_sent: u64,
    /// Sharded pub/sub (a cluster node): SSUBSCRIBE and SUNSUBSCRIBE, one
    /// channel per command (a command's channels must share a slot).
    sharded: bool,
}

/// A summary for logs. Not derived: `hello` holds the packed AUTH, password
/// and all.
impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.url)
            .field("command_up", &self.cmd.is_up())
            .field("subscribed_up", &self.sub.is_up())
            .field("pipeline_depth", &self.tags.len())
            .field("channels", &self.channels.len())
            .field("patterns", &self.patterns.len())
            .field("reconnects", &self.reconnects)
            .field("reply_timeout", &self.reply_timeout)
            .finish()
    }
}

impl Bus {
    /// A bus for the Redis at `url` that gives Redis `reply_timeout` to
    /// answer each command (and PING) before it reconnects. No I/O happens
    /// until [`Bus::start`].
    pub fn new(url: RedisUrl, reply_timeout: Duration) -> Bus {
        let mut hello = Vec::new();
        let mut hello_names = Vec::new();
        if let Some(password) = &url.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &url.username {
                auth.arg(user);
            }
            hello.extend(auth.arg(password).get_packed_command());
            hello_names.push("AUTH");
        }
        if url.db != 0 {
            hello.extend(redis::cmd("SELECT").arg(url.db).get_packed_command());
            hello_names.push("SELECT");
        }
        let now = Instant::now();
        Bus {
            cmd: Link::new(Which::Command, url.addr, now),
            sub: Link::new(Which::Subscription, url.addr, now),
            url,
            tags: VecDeque::new(),
            chain: Vec::new(),
            reply_timeout,
            batches: VecDeque::new(),
            unstamped: 0,
            sub_heard_at: now,
            ping_sent_at: None,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            sub_pending: 0,
            hello,
            hello_names,
            events: Vec::new(),
            values: Vec::new(),
            started: false,
            reconnects: 0,
            subscribes_sent: 0,
            unsubscribes_sent: 0,
            sharded: false,
        }
    }

    /// The same bus for one node of a Redis Cluster: its subscriptions are
    /// sharded (`SSUBSCRIBE`), and an unasked `sunsubscribe` (the slot
    /// moved) becomes [`BusEvent::Unsubscribed`].
    pub fn sharded(mut self) -> Bus {
        self.sharded = true;
        self
    }

    /// Whether the command link is up: commands given now are sent.
    pub fn command_is_up(&self) -> bool {
        self.cmd.is_up()
    }

    /// Whether the subscription link is up.
    pub fn subscription_is_up(&self) -> bool {
        self.sub.is_up()
    }

    /// The subscribe command's name: sharded or not.
    fn subscribe_name(&self) -> &'static str {
        if self.sharded { "SSUBSCRIBE" } else { "SUBSCRIBE" }
    }

    /// Starts both connections (non-blocking connect) and registers them with
    /// the reactor's poll under `cmd_token` and `sub_token` (the server's
    /// fixed `REDIS_CMD` and `REDIS_SUB`). A connect that fails at once is
    /// reported as `Down` and retried like any other failure.
    pub fn start(&mut self, registry: &Registry, cmd_token: Token, sub_token: Token, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        self.cmd.set_token(cmd_token);
        self.sub.set_token(sub_token);
        debug!("redis bus: connecting to {}", self.url);
        self.connect(registry, Which::Command, now);
        self.connect(registry, Which::Subscription, now);
    }

    /// Handles an event on either token (readable, writable, error, hang-up):
    /// finishes a pending connect, reads and handles every reply until
    /// `WouldBlock`, and takes the link down on an error or EOF.
    pub fn on_event(&mut self, registry: &Registry, token: Token, event: &mio::event::Event, now: Instant) {
        let which = if self.cmd.owns(token) {
            Which::Command
        } else if self.sub.owns(token) {
            Which::Subscription
        } else {
            return;
        };
        let link = self.link_mut(which);
        if link.is_connecting() {
            match link.finish_connect() {
                Ok(true) => self.on_connected(which),
                // Not connected yet; the next event will tell.
                Ok(false) => return,
                Err(reason) => return self.fail(registry, which, reason, now),
            }
        }
        if event.is_writable() {
            self.link_mut(which).on_writable();
        }
        // Read on every other kind of event too: an error or hang-up shows
        // itself as a failed read or EOF, after any replies still buffered.
        self.read(registry, which, now);
    }

    /// Queues a command (already packed, e.g.
    /// `redis::cmd("PUBLISH").arg(..).get_packed_command()`) on the command
    /// connection; its reply comes back as `Reply { tag }`. If the command
    /// connection is not up, or Redis has stopped reading (more than
    /// [`MAX_PENDING_OUT`] bytes waiting), emits `Failed { tag }` at once:
    /// the caller decides whether to buffer and retry after `CommandUp`.
    pub fn command(&mut self, packed: Vec<u8>, tag: u64) {
        self.command_chain(packed, tag, 1);
    }

    /// Queues a *chain*: `replies` commands packed one after the other in
    /// `packed`, which must run together on one connection (a script that
    /// writes, then the `WAIT` that waits for replicas to have what it
    /// wrote: `WAIT` counts the replicas that have this connection's last
    /// write). One tag for all of them, and one `Reply` once the last has
    /// answered, its value an array of every reply in order; `Failed`
    /// (once) as for one command. `replies` 1 is [`Bus::command`].
    pub fn command_chain(&mut self, packed: Vec<u8>, tag: u64, replies: usize) {
        if !self.cmd.is_up() || self.cmd.pending_out() > MAX_PENDING_OUT {
            self.events.push(BusEvent::Failed { tag });
            return;
        }
        let replies = replies.max(1);
        self.cmd.queue(&packed);
        self.tags.push_back((tag, replies));
        self.unstamped += replies;
    }

    /// Subscribes to `channel`, now if connected and after every reconnect.
    /// Asking twice for the same channel is a no-op.
    pub fn subscribe(&mut self, channel: &[u8]) {
        if !self.channels.insert(channel.to_vec()) {
            return;
        }
        if self.sub.has_socket() {
            self.sub.queue(&redis::cmd(self.subscribe_name()).arg(channel).get_packed_command());
            self.sub_pending += 1;
            self.subscribes_sent += 1;
        }
    }

    /// Forgets `channel`: it is not resubscribed after a reconnect, and an
    /// UNSUBSCRIBE goes now if connected. Messages already on their way may
    /// still arrive. Forgetting a channel never asked for is a no-op.
    pub fn unsubscribe(&mut self, channel: &[u8]) {
        if !self.channels.remove(channel) {
            return;
        }
        if self.sub.has_socket() {
            let name = if self.sharded { "SUNSUBSCRIBE" } else { "UNSUBSCRIBE" };
            self.sub.queue(&redis::cmd(name).arg(channel).get_packed_command());
            self.unsubscribes_sent += 1;
        }
    }

    /// Subscribes to the glob-style `pattern` (PSUBSCRIBE), now if connected
    /// and after every reconnect. Asking twice for the same pattern is a no-op.
    ///
    /// The server subscribes to channels only, so this is built for the
    /// tests alone; the rest of pattern support (resubscribing, `pmessage`)
    /// stays, and those tests keep it working.
    #[cfg(test)]
    pub fn psubscribe(&mut self, pattern: &[u8]) {
        if !self.patterns.insert(pattern.to_vec()) {
            return;
        }
        if self.sub.has_socket() {
            self.sub.queue(&redis::cmd("PSUBSCRIBE").arg(pattern).get_packed_command());
            self.sub_pending += 1;
        }
    }

    /// Runs once per loop turn, before the reactor sleeps: writes everything
    /// queued on both connections (one `write` each unless the kernel's
    /// buffer fills) and keeps WRITABLE registered only while output remains.
    /// A write error takes that link down (its events wait in the queue;
    /// [`Bus::next_timeout`] is zero until they are drained).
    ///
    /// The commands queued since the last flush become one `Batch`: their
    /// reply timeout starts now.
    pub fn flush(&mut self, registry: &Registry) {
        if self.unstamped > 0 {
            self.batches.push_back(Batch { waiting: self.unstamped, sent_at: Instant::now() });
            self.unstamped = 0;
        }
        for which in [Which::Command, Which::Subscription] {
            if let Err(reason) = self.link_mut(which).flush(registry) {
                self.fail(registry, which, reason, Instant::now());
            }
        }
    }

    /// Runs every loop turn: reconnects links whose backoff has passed, gives
    /// up on connects (and handshakes) older than 2 s, resumes reads that
    /// stopped at the per-turn budget, and takes down a link whose Redis
    /// stopped answering (see `Bus::check_answers`).
    pub fn on_timer(&mut self, registry: &Registry, now: Instant) {
        if !self.started {
            return;
        }
        for which in [Which::Command, Which::Subscription] {
            let link = self.link_mut(which);
            if link.due_for_retry(now) {
                self.reconnects += 1;
                self.connect(registry, which, now);
            } else if link.timed_out(now) {
                let what = if link.is_connecting() { "connect" } else { "handshake" };
                let reason = format!("{what} timed out after {} s", conn::CONNECT_TIMEOUT.as_secs());
                self.fail(registry, which, reason, now);
            } else if link.more_to_read {
                self.read(registry, which, now);
            }
            self.check_answers(registry, which, now);
        }
    }

    /// How long the reactor may sleep before [`Bus::on_timer`] has work: zero
    /// while events wait to be drained or reads to be resumed.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.started {
            return None;
        }
        if !self.events.is_empty() || self.cmd.more_to_read || self.sub.more_to_read {
            return Some(Duration::ZERO);
        }
        [
            self.cmd.deadline(),
            self.sub.deadline(),
            self.answer_deadline(Which::Command),
            self.answer_deadline(Which::Subscription),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.saturating_duration_since(now))
    }

    /// Takes the events produced since the last call, in order.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, BusEvent> {
        self.events.drain(..)
    }

    /// Whether both connections are up (logged in, and subscribed).
    pub fn is_up(&self) -> bool {
        self.cmd.is_up() && self.sub.is_up()
    }

    /// Commands queued or sent and still awaiting their replies.
    pub fn pipeline_depth(&self) -> usize {
        self.tags.len()
    }

    /// Reconnect attempts made after a failure, on both connections, whether
    /// they succeeded or not.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Channels sent in SUBSCRIBE commands so far, resubscriptions after a
    /// reconnect included.
    pub fn subscribes_sent(&self) -> u64 {
        self.subscribes_sent
    }

    /// UNSUBSCRIBE commands sent so far.
    pub fn unsubscribes_sent(&self) -> u64 {
        self.unsubscribes_sent
    }

    fn link(&self, which: Which) -> &Link {
        match which {
            Which::Command => &self.cmd,
            Which::Subscription => &self.sub,
        }
    }

    fn link_mut(&mut self, which: Which) -> &mut Link {
        match which {
            Which::Command => &mut self.cmd,
            Which::Subscription => &mut self.sub,
        }
    }

    /// Opens `which` and queues its handshake: AUTH and SELECT from the URL,
    /// then a PING on the command link, or on the subscription link SUBSCRIBE
    /// and PSUBSCRIBE for everything asked so far. All of it is pipelined:
    /// it waits in the output buffer and leaves in one write as soon as the
    /// connect finishes.
    ///
    /// The PING is there because the kernel completes a TCP connect from the
    /// listen backlog even while Redis itself is frozen: without an answer
    /// to wait for, the command link would come "up" at once and send the
    /// caller's commands into a Redis that runs them all when it wakes.
    fn connect(&mut self, registry: &Registry, which: Which, now: Instant) {
        let link = match which {
            Which::Command => &mut self.cmd,
            Which::Subscription => &mut self.sub,
        };
        if let Err(reason) = link.connect(registry, now) {
            return self.fail(registry, which, reason, now);
        }
        debug!("redis {which:?} link: connecting");
        link.queue(&self.hello);
        link.hello_left = self.hello_names.len();
        if which == Which::Command {
            link.queue(PING);
            link.hello_left += 1;
        }
        if which == Which::Subscription {
            // Sharded: one channel per SSUBSCRIBE, as channels of one
            // command must share a slot.
            let batch_size = if self.sharded { 1 } else { SUBSCRIBE_BATCH };
            let name = if self.sharded { "SSUBSCRIBE" } else { "SUBSCRIBE" };
            for (name, keys) in [(name, &self.channels), ("PSUBSCRIBE", &self.patterns)] {
                let keys: Vec<&Vec<u8>> = keys.iter().collect();
                for batch in keys.chunks(batch_size) {
                    let mut cmd = redis::cmd(name);
                    for key in batch {
                        cmd.arg(key.as_slice());
                    }
                    link.queue(&cmd.get_packed_command());
                }
            }
            self.subscribes_sent += self.channels.len() as u64;
            self.sub_pending = self.channels.len() + self.patterns.len();
            // A new connection has said nothing yet, and owes no pong.
            self.sub_heard_at = now;
            self.ping_sent_at = None;
        }
    }

    /// The TCP connect finished. With nothing to wait for (the subscription
    /// link with no AUTH, SELECT or subscriptions), the link is up at once.
    fn on_connected(&mut self, which: Which) {
        debug!("redis {which:?} link: connected");
        self.check_up(which);
    }

    /// Declares `which` up once its handshake replies have all come back.
    fn check_up(&mut self, which: Which) {
        let sub_pending = self.sub_pending;
        let link = self.link_mut(which);
        if !link.in_handshake() || link.hello_left > 0 {
            return;
        }
        let event = match which {
            Which::Command => BusEvent::CommandUp,
            Which::Subscription if sub_pending == 0 => BusEvent::SubscribedUp,
            Which::Subscription => return,
        };
        link.set_up();
        debug!("redis {which:?} link up ({})", self.url);
        self.events.push(event);
    }
}
