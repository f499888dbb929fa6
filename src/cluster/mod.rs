//! Rooms shared by several processes through Redis (`--redis`).
//!
//! With Redis, a room's members may sit on any process, so one process can
//! no longer hand out ids by itself. The order of the conversation comes from
//! Redis instead: a post runs one Lua script ([`POST_SCRIPT`]) that takes the
//! room's next id (INCR), appends the message to the room's stream (XADD
//! with the id as the entry id, capped by MAXLEN), and PUBLISHes it. Redis
//! runs scripts one at a time, so every process receives every message in
//! the same order, with the same gapless ids. Each process then treats a
//! published message exactly as the embedded mode treats a local post: it
//! stores it in its own `--data`, and broadcasts it to its local members once
//! that commit is done.
//!
//! What can go wrong, and what happens:
//!
//! - Redis is away when a member posts: the post waits in a bounded backlog
//!   (`--redis-buffer`) and is sent when Redis is back; past the bound the
//!   sender gets an `unavailable` error event. Never silently dropped.
//! - The connection drops with a post in flight: the outcome is unknown, so
//!   the post is sent again. The script remembers each post's unique id for
//!   an hour and answers a repeat with the id it already gave, so a retry
//!   never publishes twice.
//! - The subscription drops: messages published meanwhile were missed. On
//!   resubscribing, every live room reads its stream from the last id it
//!   delivered, so members catch up without a gap. A message that arrives
//!   with a gap at any other time triggers the same catch-up.
//! - Redis restarts empty: the script is given the highest id this process
//!   knows for the room and never hands out an id at or below it.
//!
//! History (welcome, `?since=`, scroll-back) is read from the room's stream,
//! so it is the same whichever process a client lands on, including one
//! started after the messages were sent.
//!
//! # Where this sits
//!
//! ```text
//!   chat ──take_handoffs()──▶ Cluster ──commands──▶ bus ──▶ Redis
//!   chat ◀──accept_ordered(), on_messages(), ...── Cluster ◀──BusEvent── bus
//! ```
//!
//! The chat runs in its shared mode ([`crate::chat::Mode::Shared`]): it
//! hands out posts, reads and presence ([`crate::chat::Handoff`]) and takes
//! ordered messages back. The bus ([`crate::bus::Bus`]) moves bytes and
//! knows nothing of rooms. This module is what lies between: it knows the
//! Redis data layout and the chat, but no sockets. It produces packed,
//! tagged commands for the bus and consumes the bus's events;
//! `server/redis.rs` does the carrying: it gives the cluster the chat's
//! handoffs and then the bus's events as they come, and sends the
//! cluster's commands once per loop turn.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`Cluster`], which sorts handoffs, replies and
//!   messages to the parts below.
//! - `layout.rs`: keys, channels, the post script, decoding stream entries.
//! - `posts.rs`: posting, the backlog, retries.
//! - `reads.rs`: history reads from a room's stream.
//! - `feed.rs`: published messages to the chat in id order; catching up.
//! - `presence.rs`: the other processes' members.

mod feed;
mod layout;
mod posts;
mod presence;
mod reads;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::bus::{BusEvent, Value, Which};
use crate::chat::{Chat, Handoff, NotSent};
use feed::Feed;
use layout::decode_batch;
pub use layout::{MESSAGES_CHANNEL, POST_SCRIPT, PRESENCE_CHANNEL, STREAM_MAXLEN};
use posts::Posts;
use presence::Presence;
use reads::{Reader, Reads};

/// The channels every process subscribes to.
pub const CHANNELS: [&[u8]; 2] = [MESSAGES_CHANNEL, PRESENCE_CHANNEL];

/// Packed commands for the bus, with their tags, in order.
type Commands = Vec<(Vec<u8>, u64)>;

/// Tags are the bus's names for our commands; the top two bits say what a
/// reply is for.
const TAG_POST: u64 = 1 << 62;
const TAG_READ: u64 = 2 << 62;
/// Tag of commands whose replies nobody waits for.
const TAG_INTERNAL: u64 = 3 << 62;
const TAG_KIND: u64 = 3 << 62;

/// Tag of the SCRIPT LOAD sent after every (re)connect.
const TAG_SCRIPT: u64 = TAG_INTERNAL | 1;
/// Tag of the HGETALL that learns rooms other processes created.
const TAG_ROOMS: u64 = TAG_INTERNAL | 2;

/// Redis-mode state: what is on its way to Redis, and what came back.
#[derive(Debug)]
pub struct Cluster {
    /// Commands for the bus, taken once per turn.
    commands: Commands,
    /// The command connection is up (posts are sent, not kept).
    up: bool,
    posts: Posts,
    reads: Reads,
    feed: Feed,
    presence: Presence,
    /// Rooms with local members (from the chat's `FirstMember` and
    /// `LastMemberLeft`): the ones to catch up after a resubscribe.
    live: BTreeSet<String>,
}

impl Cluster {
    /// Redis-mode state; `backlog_cap` is `--redis-buffer`, `batch` is
    /// `--redis-batch`, `presence_ttl` is `--presence-ttl`.
    pub fn new(backlog_cap: usize, batch: usize, presence_ttl: Duration) -> Cluster {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
                ^ u128::from(std::process::id()) << 64;
        // Unique over processes and restarts: post uids and presence notes carry it.
        let proc_id = format!("{:x}", seed & 0xffff_ffff_ffff_ffff_ffff);
        Cluster {
            commands: Commands::new(),
            up: false,
            posts: Posts::new(&proc_id, backlog_cap, batch),
            reads: Reads::default(),
            feed: Feed::default(),
            presence: Presence::new(&proc_id, presence_ttl),
            live: BTreeSet::new(),
        }
    }

    /// Takes what the chat handed out since the last call. Runs before the
    /// bus's events are handled and before the commands leave, so the
    /// cluster's view of the chat (its live rooms) is current for both.
    pub fn take_handoffs(&mut self, chat: &mut Chat) {
        for handoff in chat.take_handoffs() {
            match handoff {
                Handoff::RoomCreated { room, created } => {
                    let cmd = redis::cmd("HSETNX").arg(layout::ROOMS_KEY).arg(room).arg(created).get_packed_command();
                    self.commands.push((cmd, TAG_INTERNAL));
                }
                Handoff::FirstMember { room } => {
                    self.live.insert(room);
                }
                Handoff::LastMemberLeft { room } => {
                    self.live.remove(&room);
                }
                Handoff::Post(intent) => {
                    let author = intent.author;
                    if !self.posts.post(intent, self.up) {
                        chat.refuse_post(author, NotSent::Unreachable);
                    }
                }
                Handoff::Read { ticket, range } => self.reads.read(Reader::Chat(ticket), &range, &mut self.commands),
                Handoff::Presence { rooms } => self.presence.publish(rooms, false, &mut self.commands),
            }
        }
    }

    /// One event from the bus.
    pub fn on_event(&mut self, event: BusEvent, chat: &mut Chat, now: Instant) {
        match event {
            BusEvent::CommandUp => {
                info!("redis: command connection up");
                // Load the script, learn the rooms, then send what waited.
                self.up = true;
                Posts::on_connected(&mut self.commands, true);
                self.commands.push((redis::cmd("HGETALL").arg(layout::ROOMS_KEY).get_packed_command(), TAG_ROOMS));
                self.posts.send(&mut self.commands);
                self.reads.send_deferred(&mut self.commands);
            }
            BusEvent::SubscribedUp => {
                info!("redis: subscribed");
                for room in &self.live {
                    self.feed.catch_up(room, chat, &mut self.reads, &mut self.commands);
                }
            }
            BusEvent::Down { which, reason } => {
                let name = if which == Which::Command { "command" } else { "subscription" };
                warn!("redis: {name} connection down: {reason}");
                if which == Which::Command {
                    self.up = false;
                }
            }
            BusEvent::Reply { tag, value } => self.on_reply(tag, value, chat),
            BusEvent::Failed { tag } => self.on_failed(tag, chat),
            BusEvent::Message { channel, payload } => {
                if channel == MESSAGES_CHANNEL {
                    for p in decode_batch(&payload) {
                        self.feed.on_published(p, chat, &mut self.reads, &mut self.commands);
                    }
                } else if channel == PRESENCE_CHANNEL {
                    self.presence.on_note(&payload, now, chat);
                }
            }
        }
    }

    /// Once a second: presence snapshots and silent processes.
    pub fn on_tick(&mut self, now: Instant, chat: &mut Chat) {
        self.presence.on_tick(now, chat, &mut self.commands);
    }

    /// How long the loop may sleep before [`Cluster::on_tick`] has work.
    pub fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        self.presence.next_wakeup(now)
    }

    /// The commands for the bus, oldest first: the turn's posts go with
    /// them, one script call per room (while Redis is away they wait).
    pub fn drain_commands(&mut self) -> std::vec::Drain<'_, (Vec<u8>, u64)> {
        if self.up {
            self.posts.send(&mut self.commands);
        }
        self.commands.drain(..)
    }

    /// Posts sent to Redis and the script calls that carried them, since
    /// the start (`/metrics`: posts per call shows the batching).
    pub fn posts_sent(&self) -> (u64, u64) {
        self.posts.sent()
    }

    /// Redis answered one of our commands.
    fn on_reply(&mut self, tag: u64, value: Value, chat: &mut Chat) {
        match tag & TAG_KIND {
            TAG_POST => {
                for answer in self.posts.on_reply(tag, value, &mut self.commands) {
                    match answer {
                        posts::Answer::Posted { room, id, author } => self.feed.on_posted(room, id, author, chat),
                        posts::Answer::Failed { author, reason } => {
                            warn!("post refused: {reason}");
                            chat.refuse_post(author, NotSent::Refused);
                        }
                    }
                }
            }
            TAG_READ => {
                let Some(answer) = self.reads.on_reply(tag, &value) else { return };
                match answer.reader {
                    Reader::Chat(ticket) => chat.on_messages(ticket, answer.messages, answer.oldest),
                    Reader::CatchUp(room) => self.feed.on_caught_up(&room, answer.messages, chat),
                }
            }
            _ if tag == TAG_ROOMS => chat.learn_rooms(layout::room_list(&value)),
            _ => {
                if let Value::Error(e) = value {
                    warn!("redis: {e}");
                }
            }
        }
    }

    /// A command of ours failed without an answer (the connection dropped,
    /// or the bus was down).
    fn on_failed(&mut self, tag: u64, chat: &mut Chat) {
        match tag & TAG_KIND {
            TAG_POST => {
                for author in self.posts.on_failed(tag) {
                    warn!("post refused: Redis is unavailable");
                    chat.refuse_post(author, NotSent::Refused);
                }
            }
            TAG_READ => self.reads.on_failed(tag),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn read_tags(cluster: &mut Cluster) -> Vec<u64> {
        cluster.drain_commands().map(|(_, tag)| tag).filter(|tag| tag & TAG_KIND == TAG_READ).collect()
    }

    #[test]
    fn a_resubscribe_catches_up_the_rooms_live_here() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), crate::chat::Mode::Shared);
        let mut cluster = Cluster::new(10, 100, Duration::from_secs(30));
        let now = Instant::now();
        let a = chat.join((1, 1), "a", Some("x"), None, now).unwrap();
        chat.join((2, 2), "b", Some("y"), None, now).unwrap();
        chat.leave(a);
        cluster.take_handoffs(&mut chat);
        assert_eq!(cluster.live, BTreeSet::from(["b".to_string()]));
        cluster.drain_commands();
        cluster.on_event(BusEvent::SubscribedUp, &mut chat, now);
        assert_eq!(read_tags(&mut cluster).len(), 2, "one read (first entry and range) for room b");
        cluster.on_event(BusEvent::SubscribedUp, &mut chat, now);
        assert_eq!(read_tags(&mut cluster).len(), 0, "b is still catching up");
    }

    #[test]
    fn a_post_with_no_room_left_to_wait_is_refused() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), crate::chat::Mode::Shared);
        let mut cluster = Cluster::new(0, 100, Duration::from_secs(30));
        let now = Instant::now();
        let mut m = chat.join((1, 1), "r", Some("x"), None, now).unwrap();
        chat.out.clear();
        chat.on_text(1, &mut m, r#"{"message": "hi"}"#, now);
        cluster.take_handoffs(&mut chat);
        let refused = chat.out.iter().any(|o| {
            matches!(o, crate::chat::Outgoing::ToSerial { key: 1, serial: 1, json } if json.contains("unavailable"))
        });
        assert!(refused, "{:?}", chat.out);
    }
}
