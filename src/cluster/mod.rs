//! Rooms shared by several processes through Redis (`--redis`), or a Redis
//! Cluster (`--redis-cluster`: see "On a Redis Cluster" below).
//!
//! With Redis, a room's members may sit on any process, so one process can
//! no longer hand out ids by itself. The order of the conversation comes from
//! Redis instead: the posts of a loop turn to a room run one Lua script
//! ([`POST_SCRIPT`]) that takes the room's next ids, appends the posts to
//! the room's stream as one entry, and PUBLISHes them, as one message, on
//! the room's own channel. Redis runs scripts one at a time, so every process
//! that listens to a room receives its messages in the same order, with the
//! same gapless ids. Each process then treats a published message exactly
//! as the embedded mode treats a local post: it stores it in its own
//! `--data`, and broadcasts it to its local members once that commit is done.
//!
//! A process listens only to the rooms it serves: it subscribes to a
//! room's channel when the room gets its first member here, and
//! unsubscribes once the room has had none for `--room-grace`
//! (`channels.rs`). A process whose members sit in quiet rooms so stays
//! idle however busy the others are. The first subscription misses what
//! was posted before it took effect; the room's welcome read covers what
//! came before the read, and a catch-up from the stream, once Redis
//! confirms the subscription, covers the moment between (`feed.rs`).
//!
//! What can go wrong, and what happens:
//!
//! - Redis is away when a member posts: the post waits in a bounded backlog
//!   (`--redis-buffer`) and is sent when Redis is back; past the bound the
//!   sender gets an `unavailable` error event. Never silently dropped.
//! - The connection drops with a post in flight: the outcome is unknown, so
//!   the post is sent again. The room remembers the number of the last
//!   post it applied from each process (`posts.rs`), so a retry never
//!   publishes twice.
//! - The master fails over to a replica that lacks the newest writes
//!   (Redis replicates after answering): posts acknowledged just before
//!   are lost. With `--redis-wait N` the script only stores, a `WAIT N`
//!   rides behind it, and the post is published (acknowledged) once N
//!   replicas have it, or flagged `"unconfirmed": true` when they do not
//!   confirm in time; `posts.rs` says why order survives the publish
//!   coming from the process.
//! - The subscription drops: messages published meanwhile were missed. On
//!   resubscribing, every room listened to reads its stream from the last
//!   id it delivered, so members catch up without a gap. A message that
//!   arrives with a gap at any other time triggers the same catch-up.
//! - Redis restarts empty: the script is given the highest id this process
//!   knows for the room and never hands out an id at or below it.
//!
//! History (welcome, `?since=`, scroll-back) is read from the room's stream,
//! so it is the same whichever process a client lands on, including one
//! started after the messages were sent.
//!
//! What a process would learn by hearing every message, and where it comes from
//! now that a process hears only its rooms:
//!
//! - `/api/rooms` and `/api/rooms/<room>`: the room list, message counts
//!   and last posts of rooms served elsewhere are read from Redis (the
//!   rooms hash, and each room stream's newest entry) when the API is
//!   asked and the figures are more than two seconds old; the request waits
//!   for the read (`directory.rs`). Online counts and names come from
//!   presence, which every process still hears with one Redis
//!   (`presence.rs`); in a cluster presence is per room, and the refresh
//!   also reads the online hash each room keeps in Redis.
//! - `/ws/stats` and `/metrics` count this process's own connections,
//!   members, posts and deliveries: nothing in them came from other
//!   processes' messages.
//!
//! # On a Redis Cluster
//!
//! The same layout works on a cluster because every key and the channel
//! of a room carry its hash tag `{ROOM}`: one script call touches one
//! slot, on one master, and each command here says which slot it routes
//! by (the third part of `Commands`; the bus, [`crate::bus::ClusterBus`],
//! sends it to that slot's master). What changes ([`Cluster::sharded`]):
//!
//! - the post script publishes with SPUBLISH, and the room channels are
//!   subscribed with SSUBSCRIBE at the room's master;
//! - a room has one script call in flight at a time (`posts.rs`), so a
//!   call redirected or retried is never overtaken by a later one;
//! - nothing global sits on one master: the room list is sixteen hashes
//!   (`layout.rs`), and presence travels per room on the room's channel
//!   (`presence.rs`) instead of `chatroom:presence`;
//! - no migration of an older layout (a cluster never held one).
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
//! - `channels.rs`: which rooms' channels this process listens to.
//! - `directory.rs`: the API's figures for rooms served elsewhere.
//! - `presence.rs`: the other processes' members.

mod channels;
mod directory;
mod feed;
mod layout;
mod posts;
mod presence;
mod reads;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::auth::bans::Ban;
use crate::bus::{BusEvent, Value, Which};
use crate::chat::{Chat, Handoff, NotSent};
use channels::RoomChannels;
pub use channels::Subscription;
use directory::Directory;
use feed::Feed;
use layout::Moderation;
use layout::channel_room;
pub use layout::{POST_SCRIPT, PRESENCE_CHANNEL, STREAM_MAXLEN, decode_batch, stream_messages};
use posts::Posts;
use presence::Presence;
use reads::{Reader, Reads};

/// The channels every process subscribes to, whatever rooms it serves.
pub const CHANNELS: [&[u8]; 1] = [PRESENCE_CHANNEL];

/// Packed commands for the bus, with their tags and the hash slot each
/// routes by (`None`: no key; any node of a cluster will do), in order.
type Commands = Vec<(Vec<u8>, u64, Option<u16>)>;

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
/// With `TAG_INTERNAL`: the commands of a directory refresh (the low bits
/// are `directory.rs`'s).
const TAG_DIRECTORY: u64 = TAG_INTERNAL | 1 << 61;
/// With `TAG_INTERNAL`: a delete script call (the low bits number it).
const TAG_DELETE: u64 = TAG_INTERNAL | 1 << 60;
/// With `TAG_INTERNAL`: the read of a room's bans (the low bits number it).
const TAG_BANS: u64 = TAG_INTERNAL | 1 << 59;
/// With `TAG_INTERNAL`: the read of a room's deleted ids, for the copies
/// on disk (the low bits number it).
const TAG_DELETED: u64 = TAG_INTERNAL | 1 << 58;

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
    /// The rooms whose channels this process listens to (those with local
    /// members, from the chat's `FirstMember` and `LastMemberLeft`).
    channels: RoomChannels,
    directory: Directory,
    /// Chat messages received on room channels (for `/metrics`).
    received: u64,
    /// A Redis Cluster: sharded channels, the room list spread.
    sharded: bool,
    /// The server API's deletes sent and not answered, by number: (room,
    /// id, the request's connection).
    deletes: HashMap<u64, (String, u64, (usize, u64))>,
    next_delete: u64,
    /// Reads of rooms' bans sent and not answered, by tag: the room.
    ban_reads: HashMap<u64, String>,
}

/// What the cluster counted, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    /// Chat messages received on room channels.
    pub received: u64,
    /// Posts of ours published unconfirmed (`--redis-wait`).
    pub unconfirmed: u64,
}

impl Cluster {
    /// Redis-mode state; `backlog_cap` is `--redis-buffer`, `batch` is
    /// `--redis-batch`, `presence_ttl` is `--presence-ttl`, `room_grace`
    /// is `--room-grace`.
    pub fn new(backlog_cap: usize, batch: usize, presence_ttl: Duration, room_grace: Duration) -> Cluster {
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
            channels: RoomChannels::new(room_grace),
            directory: Directory::default(),
            received: 0,
            sharded: false,
            deletes: HashMap::new(),
            next_delete: 0,
            ban_reads: HashMap::new(),
        }
    }

    /// Takes what the chat handed out since the last call. Runs before the
    /// bus's events are handled and before the commands leave, so the
    /// cluster's view of the chat (its live rooms) is current for both.
    pub fn take_handoffs(&mut self, chat: &mut Chat, now: Instant) {
        for handoff in chat.take_handoffs() {
            match handoff {
                Handoff::RoomCreated { room, created } => {
                    let key = layout::rooms_key(&room, self.sharded);
                    let cmd = redis::cmd("HSETNX").arg(&key).arg(room).arg(created).get_packed_command();
                    self.commands.push((cmd, TAG_INTERNAL, layout::route(&key)));
                }
                Handoff::FirstMember { room } => {
                    self.channels.on_first_member(&room);
                }
                Handoff::LastMemberLeft { room } => {
                    self.channels.on_last_member_left(&room, now);
                }
                Handoff::Post(intent) => {
                    let author = intent.author;
                    if !self.posts.post(intent, self.up) {
                        chat.refuse_post(author, NotSent::Unreachable);
                    }
                }
                Handoff::Delete { room, id, author } => self.delete(room, id, author, chat),
                Handoff::Kick { room, target, reason, until } => {
                    self.publish(&room, Moderation::Kick(layout::KickRecord { target, reason, until }));
                }
                Handoff::Ban { room, who, ban } => {
                    let key = layout::bans_key(&room);
                    let value = serde_json::to_vec(&layout::BanNote {
                        who: String::new(),
                        until: ban.until,
                        reason: ban.reason.clone(),
                    })
                    .unwrap_or_default();
                    let cmd = redis::cmd("HSET").arg(&key).arg(&who).arg(value).get_packed_command();
                    self.commands.push((cmd, TAG_INTERNAL, layout::route(&key)));
                    self.publish(&room, Moderation::Ban(layout::BanNote { who, until: ban.until, reason: ban.reason }));
                }
                Handoff::Unban { room, who } => {
                    let key = layout::bans_key(&room);
                    let cmd = redis::cmd("HDEL").arg(&key).arg(&who).get_packed_command();
                    self.commands.push((cmd, TAG_INTERNAL, layout::route(&key)));
                    self.publish(&room, Moderation::Unban(who));
                }
                Handoff::Read { ticket, range } => self.reads.read(Reader::Chat(ticket), &range, &mut self.commands),
                Handoff::Presence { rooms } => self.presence.publish(rooms, false, &mut self.commands),
            }
        }
    }

    /// Publishes a moderation record on `room`'s channel (after the
    /// room's messages published before it).
    fn publish(&mut self, room: &str, record: Moderation) {
        let channel = layout::room_channel(room);
        let verb = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
        let cmd = redis::cmd(verb).arg(&channel).arg(record.encode()).get_packed_command();
        self.commands.push((cmd, TAG_INTERNAL, layout::route(&channel)));
    }

    /// Reads `room`'s bans, and with copies on disk its deleted ids, as
    /// this process starts to hear the room: both may have changed while
    /// it did not.
    fn read_bans(&mut self, room: &str, chat: &Chat) {
        self.next_delete += 1;
        let number = self.next_delete & ((1 << 58) - 1);
        let key = layout::bans_key(room);
        let cmd = redis::cmd("HGETALL").arg(&key).get_packed_command();
        self.commands.push((cmd, TAG_BANS | number, layout::route(&key)));
        self.ban_reads.insert(TAG_BANS | number, room.to_string());
        if chat.keeps_copies() {
            let key = layout::deleted_key(room);
            let cmd = redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).get_packed_command();
            self.commands.push((cmd, TAG_DELETED | number, layout::route(&key)));
            self.ban_reads.insert(TAG_DELETED | number, room.to_string());
        }
    }

    /// A room's deleted ids came back: the copies on disk lose their text
    /// (a message deleted while this process did not hear the room).
    fn on_deleted_ids(&mut self, tag: u64, value: &Value, chat: &mut Chat) {
        let Some(room) = self.ban_reads.remove(&tag) else { return };
        let Value::Array(ids) = value else { return };
        let ids: Vec<u64> =
            ids.iter().filter_map(|id| std::str::from_utf8(id.as_bytes()?).ok()?.parse().ok()).collect();
        chat.purge_copies(&room, &ids);
    }

    /// A room's bans came back: those in force join the chat's table,
    /// lapsed ones are deleted.
    fn on_bans(&mut self, tag: u64, value: &Value, chat: &mut Chat) {
        let Some(room) = self.ban_reads.remove(&tag) else { return };
        let Value::Array(pairs) = value else { return };
        let now = crate::chat::now_ms();
        let mut bans = Vec::new();
        let mut lapsed = Vec::new();
        for pair in pairs.chunks(2) {
            let [who, note] = pair else { continue };
            let (Some(who), Some(note)) = (who.as_bytes(), note.as_bytes()) else { continue };
            let (Ok(who), Ok(note)) = (std::str::from_utf8(who), serde_json::from_slice::<layout::BanNote>(note))
            else {
                continue;
            };
            if note.until > now {
                bans.push((who.to_string(), Ban { until: note.until, reason: note.reason }));
            } else {
                lapsed.push(who.to_string());
            }
        }
        if !lapsed.is_empty() {
            let key = layout::bans_key(&room);
            let cmd = redis::cmd("HDEL").arg(&key).arg(lapsed).get_packed_command();
            self.commands.push((cmd, TAG_INTERNAL, layout::route(&key)));
        }
        chat.bans_loaded(&room, bans);
    }

    /// Sends the server API's delete of message `id` of `room`
    /// ([`layout::DELETE_SCRIPT`]); its reply answers `author`. Deletes
    /// are rare: the script goes whole (EVAL), no cache to keep.
    fn delete(&mut self, room: String, id: u64, author: (usize, u64), chat: &mut Chat) {
        if !self.up {
            return chat.api_deleted(author, Err(NotSent::Unreachable));
        }
        self.next_delete += 1;
        let tag = TAG_DELETE | (self.next_delete & ((1 << 60) - 1));
        let channel = layout::room_channel(&room);
        let (id_key, deleted_key) = (layout::id_key(&room), layout::deleted_key(&room));
        let cmd = redis::cmd("EVAL")
            .arg(layout::delete_script(self.sharded))
            .arg(2)
            .arg(&id_key)
            .arg(deleted_key)
            .arg(channel)
            .arg(id)
            .get_packed_command();
        self.commands.push((cmd, tag, layout::route(&id_key)));
        self.deletes.insert(tag, (room, id, author));
    }

    /// A delete script answered (or failed, `None`).
    fn on_deleted(&mut self, tag: u64, value: Option<Value>, chat: &mut Chat) {
        let Some((room, id, author)) = self.deletes.remove(&tag) else { return };
        let outcome = match value {
            Some(Value::Int(1)) => {
                // A room heard here learns it from its channel, like every
                // other process; one that is not has nothing live to tell,
                // but perhaps a copy on disk.
                if !self.channels.hears(&room) {
                    chat.apply_delete(&room, id);
                }
                Ok(true)
            }
            Some(Value::Int(0)) => Ok(false),
            Some(other) => {
                warn!("redis: deleting message {id} of room {room}: {other:?}");
                Err(NotSent::Refused)
            }
            None => Err(NotSent::Unreachable),
        };
        chat.api_deleted(author, outcome);
    }

    /// One event from the bus.
    pub fn on_event(&mut self, event: BusEvent, chat: &mut Chat, now: Instant) {
        match event {
            BusEvent::CommandUp => {
                info!("redis: command connection up");
                // Load the script, learn the rooms, then send what waited.
                self.up = true;
                self.posts.on_connected(&mut self.commands);
                for key in layout::rooms_keys(self.sharded) {
                    let rooms = redis::cmd("HGETALL").arg(&key).get_packed_command();
                    self.commands.push((rooms, TAG_ROOMS, layout::route(&key)));
                }
                self.posts.send(&mut self.commands);
                self.reads.send_deferred(&mut self.commands);
            }
            BusEvent::SubscribedUp => {
                info!("redis: subscribed");
                let rooms: Vec<String> = self.channels.rooms().cloned().collect();
                for room in &rooms {
                    // Bans and messages published while not subscribed.
                    self.read_bans(room, chat);
                    self.feed.catch_up(room, &mut self.reads, &mut self.commands);
                }
            }
            BusEvent::Subscribed { channel } => {
                // A room's first subscription: what was posted since its
                // welcome read, and before this, was not heard.
                if let Some(room) = channel_room(&channel).filter(|room| self.channels.hears(room)) {
                    // Bans made while the room was not heard here.
                    self.read_bans(room, chat);
                    self.feed.catch_up(room, &mut self.reads, &mut self.commands);
                    // In a cluster, presence too travels on the room's channel.
                    self.presence.ask(room, chat, &mut self.commands);
                }
            }
            // Only a cluster's bus says this, and it handles it itself.
            BusEvent::Unsubscribed { .. } => {}
            BusEvent::Down { which, reason } => {
                let name = if which == Which::Command { "command" } else { "subscription" };
                warn!("redis: {name} connection down: {reason}");
                if which == Which::Command {
                    self.up = false;
                }
            }
            BusEvent::Reply { tag, value } => self.on_reply(tag, value, chat, now),
            BusEvent::Failed { tag } => self.on_failed(tag, chat),
            BusEvent::Message { channel, payload } => {
                if channel == PRESENCE_CHANNEL || payload.starts_with(presence::NOTE_START) {
                    self.presence.on_note(&payload, now, chat, &mut self.commands);
                } else if let Some(room) = channel_room(&channel)
                    && let Some(id) = layout::delete_record(&payload)
                {
                    self.feed.on_deleted(room, id);
                    chat.apply_delete(room, id);
                } else if let Some(room) = channel_room(&channel)
                    && let Some(record) = Moderation::decode(&payload)
                {
                    match record {
                        Moderation::Kick(kick) => chat.kick_here(room, &kick.target, &kick.reason, kick.until),
                        Moderation::Ban(note) => {
                            chat.bans.insert(room, &note.who, Ban { until: note.until, reason: note.reason });
                        }
                        Moderation::Unban(who) => {
                            chat.bans.lift(room, &who);
                        }
                    }
                } else if let Some(room) = channel_room(&channel) {
                    // A room's channel carries that room's messages only.
                    let batch = decode_batch(room, &payload);
                    self.received += batch.len() as u64;
                    self.feed.on_published(room, batch, chat, &mut self.reads, &mut self.commands);
                }
            }
        }
    }

    /// Once a second: presence snapshots and silent processes, and the
    /// rooms whose grace is over.
    pub fn on_tick(&mut self, now: Instant, chat: &mut Chat) {
        self.presence.on_tick(now, chat, &mut self.commands);
        self.channels.on_tick(now);
    }

    /// How long the loop may sleep before [`Cluster::on_tick`] has work.
    pub fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        let grace = self.channels.next_deadline().map(|at| at.saturating_duration_since(now));
        [self.presence.next_wakeup(now), grace].into_iter().flatten().min()
    }

    /// The commands for the bus, oldest first: the turn's posts go with
    /// them, one script call per room (while Redis is away they wait).
    /// Each comes with the number of replies it takes: 1, or 2 for a
    /// script call with its `WAIT` (`--redis-wait`) and for a read back
    /// from an id (`reads.rs`), which the bus sends as one chain.
    pub fn drain_commands(&mut self) -> impl Iterator<Item = (Vec<u8>, u64, Option<u16>, usize)> + '_ {
        if self.up {
            self.posts.send(&mut self.commands);
        }
        let (posts, reads) = (&self.posts, &self.reads);
        self.commands.drain(..).map(move |(packed, tag, slot)| {
            let replies = if tag & TAG_KIND == TAG_READ { reads.replies(tag) } else { posts.replies(tag) };
            (packed, tag, slot, replies)
        })
    }

    /// Posts sent to Redis and the script calls that carried them, since
    /// the start (`/metrics`: posts per call shows the batching).
    pub fn posts_sent(&self) -> (u64, u64) {
        self.posts.sent()
    }

    /// In a Redis Cluster: posts sent and script calls, by the hash slot
    /// of their room (`/metrics` adds them up by master).
    pub fn posts_sent_by_slot(&self) -> &std::collections::HashMap<u16, (u64, u64)> {
        self.posts.sent_by_slot()
    }

    /// The subscriptions to change on the bus, oldest first.
    pub fn drain_subscriptions(&mut self) -> std::vec::Drain<'_, Subscription> {
        self.channels.drain()
    }

    /// Whether the chat's directory can answer `/api/rooms` now: it was
    /// refreshed from Redis lately, or Redis is away (then what we have is
    /// the best answer). If not, a refresh is on its way, and
    /// [`Cluster::take_directory_settled`] says when it is done.
    pub fn directory_ready(&mut self, now: Instant) -> bool {
        if !self.up || self.directory.is_fresh(now) {
            return true;
        }
        self.directory.refresh(&layout::rooms_keys(self.sharded), &mut self.commands);
        false
    }

    /// Whether a directory refresh ended (or was given up) since the last
    /// call: the API requests waiting for it can be answered.
    pub fn take_directory_settled(&mut self) -> bool {
        self.directory.take_settled()
    }

    /// The same for a Redis Cluster (`--redis-cluster`): posts SPUBLISH,
    /// one script call in flight per room; presence travels per room on
    /// the room's channel; the room list is spread over 16 hashes; no
    /// migration of an older layout.
    pub fn sharded(mut self) -> Cluster {
        self.posts = self.posts.sharded();
        self.presence = self.presence.sharded();
        self.directory = std::mem::take(&mut self.directory).sharded();
        self.sharded = true;
        self
    }

    /// The same with `--redis-wait` `replicas`: a post is published, and
    /// so acknowledged, once that many replicas have it, or flagged
    /// `unconfirmed` when they do not confirm in time (`posts.rs`).
    pub fn waiting_for(mut self, replicas: usize) -> Cluster {
        self.posts = self.posts.waiting_for(replicas);
        self
    }

    /// What the cluster counted so far.
    pub fn counts(&self) -> ClusterCounts {
        ClusterCounts { received: self.received, unconfirmed: self.posts.unconfirmed() }
    }

    /// Redis answered one of our commands.
    fn on_reply(&mut self, tag: u64, value: Value, chat: &mut Chat, now: Instant) {
        match tag & TAG_KIND {
            TAG_POST => {
                for answer in self.posts.on_reply(tag, value, &mut self.commands) {
                    match answer {
                        posts::Answer::Posted { room, id, author } => {
                            chat.post_acknowledged(author);
                            // An API request is answered now; a member's
                            // copy, when it comes back, is its answer.
                            if !chat.api_posted(author, &room, Some(id)) {
                                self.feed.on_posted(room, id, author, chat);
                            }
                        }
                        posts::Answer::Repeated { room, author, reread } => {
                            chat.post_acknowledged(author);
                            chat.api_posted(author, &room, None);
                            if reread && self.channels.hears(&room) {
                                self.feed.catch_up(&room, &mut self.reads, &mut self.commands);
                            }
                        }
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
                    Reader::CatchUp(room) => {
                        self.feed.on_caught_up(&room, answer.messages, chat, &mut self.reads, &mut self.commands);
                    }
                    Reader::Newest(room) => {
                        let newest = answer.messages.last().map(|m| m.id);
                        self.feed.on_newest(&room, newest, chat, &mut self.reads, &mut self.commands);
                    }
                }
            }
            _ if tag == TAG_ROOMS => chat.learn_rooms(layout::room_list(&value)),
            // Bit 61 first: a directory tag's own bits run below it.
            _ if tag & TAG_DIRECTORY == TAG_DIRECTORY => {
                if let Some((room, online)) = self.directory.on_reply(tag, &value, chat, &mut self.commands, now) {
                    self.presence.on_online(&room, online, now, chat);
                }
            }
            _ if tag & TAG_DELETE == TAG_DELETE => self.on_deleted(tag, Some(value), chat),
            _ if tag & TAG_BANS == TAG_BANS => self.on_bans(tag, &value, chat),
            _ if tag & TAG_DELETED == TAG_DELETED => self.on_deleted_ids(tag, &value, chat),
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
            _ if tag & TAG_DIRECTORY == TAG_DIRECTORY => self.directory.on_failed(tag),
            _ if tag & TAG_DELETE == TAG_DELETE => self.on_deleted(tag, None, chat),
            _ if tag & TAG_BANS == TAG_BANS || tag & TAG_DELETED == TAG_DELETED => {
                self.ban_reads.remove(&tag);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Outgoing;
    use crate::config::Config;
    use crate::storage::{Request, RoomRecord};

    fn cluster() -> Cluster {
        Cluster::new(10, 100, Duration::from_secs(30), Duration::from_secs(10))
    }

    fn read_tags(cluster: &mut Cluster) -> Vec<u64> {
        cluster.drain_commands().map(|(_, tag, _, _)| tag).filter(|tag| tag & TAG_KIND == TAG_READ).collect()
    }

    /// A stream reply (XRANGE or XREVRANGE) holding messages `ids`, an
    /// entry each.
    fn entries(ids: impl IntoIterator<Item = u64>) -> Value {
        let batches: Vec<_> = ids.into_iter().map(|id| id..=id).collect();
        layout::stream_reply(&batches)
    }

    fn message(room: &str, id: u64) -> String {
        layout::test_message(room, id)
    }

    /// The ids the chat handed to storage since the last call.
    fn stored(chat: &mut Chat) -> Vec<u64> {
        let ids = chat.requests.iter().filter_map(|r| match r {
            Request::Append { msg, .. } => Some(msg.id),
            _ => None,
        });
        let ids = ids.collect();
        chat.requests.clear();
        ids
    }

    /// The last command for the bus, as text (RESP, `\r\n` and all).
    fn last_command(cluster: &mut Cluster) -> (String, u64) {
        let commands: Vec<_> = cluster.drain_commands().collect();
        let Some((packed, tag, _, _)) = commands.last() else { panic!("no command") };
        (String::from_utf8_lossy(packed).into_owned(), *tag)
    }

    #[test]
    fn a_resubscribe_catches_up_the_rooms_listened_to() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), crate::chat::Mode::Shared);
        let mut cluster = cluster();
        let now = Instant::now();
        let a = chat.join((1, 1), "a", Some("x"), None, now).unwrap();
        chat.join((2, 2), "b", Some("y"), None, now).unwrap();
        chat.leave(a);
        cluster.take_handoffs(&mut chat, now);
        cluster.drain_commands().for_each(drop);
        // a emptied, but is listened to until its grace is over.
        cluster.on_event(BusEvent::SubscribedUp, &mut chat, now);
        assert_eq!(read_tags(&mut cluster).len(), 2, "one newest-entry read each for a and b");
        cluster.on_tick(now + Duration::from_secs(10), &mut chat);
        let unsubscribed: Vec<Subscription> = cluster.drain_subscriptions().collect();
        assert_eq!(unsubscribed.last(), Some(&Subscription::Unsubscribe(b"chatroom:{a}:msgs".to_vec())));
        cluster.on_event(BusEvent::SubscribedUp, &mut chat, now);
        assert_eq!(read_tags(&mut cluster).len(), 0, "b is still catching up, and a is not heard");
    }

    /// A room this process has not heard for a while: its last id is far
    /// behind. The subscription is confirmed before the welcome read's
    /// answer is in, and messages arrive meanwhile: the catch-up must read
    /// on from the welcome's newest message, neither from the stale id
    /// (replaying history to the member) nor past what was missed.
    #[test]
    fn a_first_subscription_catches_up_from_the_welcome_not_from_a_stale_id() {
        let stale = RoomRecord { name: "r".into(), created: 1, last_post: Some(1), messages: 5, last_id: 5 };
        let mut chat = Chat::new(&Config::defaults(), vec![stale], crate::chat::Mode::Shared);
        chat.take_handoffs();
        let mut cluster = cluster();
        let now = Instant::now();
        chat.join((1, 1), "r", Some("x"), None, now).unwrap();
        cluster.take_handoffs(&mut chat, now);
        let welcome: Vec<u64> = read_tags(&mut cluster);
        assert_eq!(welcome.len(), 2, "the welcome read: first entry, then the newest page");
        let channel = b"chatroom:{r}:msgs".to_vec();
        assert_eq!(cluster.drain_subscriptions().collect::<Vec<_>>(), [Subscription::Subscribe(channel.clone())]);

        // Redis confirms the subscription before the welcome read's answer
        // arrives; messages 2002 and 2003 follow, in one payload.
        cluster.on_event(BusEvent::Subscribed { channel: channel.clone() }, &mut chat, now);
        let (newest, newest_tag) = last_command(&mut cluster);
        assert!(newest.contains("XREVRANGE") && newest.contains("COUNT"), "{newest}");
        let payload = format!("{}\n{}", message("r", 2002), message("r", 2003)).into_bytes();
        cluster.on_event(BusEvent::Message { channel, payload }, &mut chat, now);
        assert_eq!(stored(&mut chat), Vec::<u64>::new(), "held while the room catches up");

        // The welcome read's answers, then the newest entry's.
        let reply = |tag, value| BusEvent::Reply { tag, value };
        cluster.on_event(reply(welcome[0], entries([1])), &mut chat, now);
        cluster.on_event(
            reply(welcome[1], layout::read_reply(vec![entries((1801..=2000).rev())], &[])),
            &mut chat,
            now,
        );
        assert_eq!(chat.last_id("r"), 2000);
        cluster.on_event(reply(newest_tag, entries([2003])), &mut chat, now);
        let (range, range_tag) = last_command(&mut cluster);
        assert!(range.contains("(2000-0"), "read on from the welcome's newest: {range}");
        cluster.on_event(reply(range_tag, layout::read_reply(vec![entries(2001..=2003)], &[])), &mut chat, now);
        assert_eq!(stored(&mut chat), vec![2001, 2002, 2003]);

        chat.on_committed(u64::MAX, &Ok(()));
        let mut delivered = Vec::new();
        for out in chat.out.drain(..) {
            let json = match out {
                Outgoing::To { json, .. } => json,
                Outgoing::Room { json, .. } => json.to_string(),
                _ => continue,
            };
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            match v["type"].as_str() {
                Some("welcome") => delivered.extend(v["history"].as_array().unwrap().iter().map(|m| m["id"].clone())),
                Some("message") => delivered.push(v["id"].clone()),
                Some("gap") => panic!("no gap: {v}"),
                _ => {}
            }
        }
        let ids: Vec<u64> = delivered.iter().filter_map(|id| id.as_u64()).collect();
        assert_eq!(ids, (1951..=2003).collect::<Vec<_>>(), "the welcome's 50, then every later one once");
    }

    #[test]
    fn a_post_with_no_room_left_to_wait_is_refused() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), crate::chat::Mode::Shared);
        let mut cluster = Cluster::new(0, 100, Duration::from_secs(30), Duration::from_secs(10));
        let now = Instant::now();
        let mut m = chat.join((1, 1), "r", Some("x"), None, now).unwrap();
        chat.out.clear();
        chat.on_text(1, &mut m, r#"{"message": "hi"}"#, now);
        cluster.take_handoffs(&mut chat, now);
        let refused = chat.out.iter().any(|o| {
            matches!(o, crate::chat::Outgoing::ToSerial { key: 1, serial: 1, json } if json.contains("unavailable"))
        });
        assert!(refused, "{:?}", chat.out);
    }
}
