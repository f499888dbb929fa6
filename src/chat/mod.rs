//! Chat rooms: joining, posting, presence, history and resume.
//!
//! This is the application on top of the WebSocket plumbing, and it follows
//! one rule: **a message is broadcast only after it is durable.** A post is
//! given the room's next id, handed to the storage thread, and parked in
//! [`Chat::pending`]; when storage reports the batch committed
//! ([`Chat::on_committed`]) the message goes into the room's recent history
//! and out to every member, in id order. A `kill -9` therefore can never
//! leave a client holding a message the history lost.
//!
//! `Chat` knows rooms, members (by connection key) and storage requests,
//! but nothing about sockets: what it decides to send is pushed onto
//! [`Chat::out`] as [`Outgoing`] instructions, and the reactor carries them
//! out (framing once, sharing the bytes between members).

pub mod protocol;
pub mod room;
pub mod warm;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use slab::Slab;

use crate::config::Config;
use crate::handshake::Refusal;
use crate::storage::{ReadRange, Request, RoomRecord, StoredMessage};
use protocol::{PostError, clean_name};
use room::Room;
use warm::WarmCaches;

/// The room that exists from the first start, as in the original site.
pub const DEFAULT_ROOM: &str = "welcome";

/// Messages a resume (`?since=`) may replay at most; a client further
/// behind gets a `gap` frame and the newest this many.
pub const RESUME_MAX: u64 = 1000;

/// Names listed in a welcome frame or the room API at most.
pub const ONLINE_LIST_MAX: usize = 1000;

/// Recent messages cached per live room, at least (more if `--history` asks).
const RECENT_MIN: usize = 200;

/// Redis mode: posts answered but not yet seen back remembered at most (a
/// bound against a subscription that lost them; they are only a hint).
const OWN_POSTS_MAX: usize = 10_000;

/// Emptied rooms whose recent history is kept for their return (see
/// `warm.rs`): at most this many caches of `RECENT_MIN` messages.
const WARM_ROOMS: usize = 32;

/// What the reactor must send on the chat's behalf.
#[derive(Debug)]
pub enum Outgoing {
    /// A JSON text for one connection, if it is still the same connection.
    ToSerial {
        /// Connection key.
        key: usize,
        /// Its serial.
        serial: u64,
        /// The JSON text to frame.
        json: String,
    },
    /// A JSON text for one connection.
    To {
        /// Connection key.
        key: usize,
        /// The JSON text to frame.
        json: String,
    },
    /// A JSON text for every welcomed member of a live room (framed once).
    Room {
        /// Live room slot.
        room: usize,
        /// The JSON text.
        json: Rc<str>,
        /// Counts as message deliveries in the metrics.
        is_message: bool,
        /// A connection that must not get it (a joiner, about its own join).
        except: Option<usize>,
        /// The poster's connection (key, serial), when it is ours: its copy
        /// is its acknowledgement, so it is written before the others'.
        author: Option<(usize, u64)>,
    },
    /// Close one connection with a close code.
    Close {
        /// Connection key.
        key: usize,
        /// Close code.
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
    /// An HTTP answer that waited for storage.
    Http {
        /// Connection key.
        key: usize,
        /// Its serial (the key may have been reused).
        serial: u64,
        /// Status code.
        status: u16,
        /// JSON body.
        body: Vec<u8>,
    },
}

/// A connection's place in a room.
#[derive(Debug)]
pub struct Membership {
    /// The live room's slot.
    room: usize,
    /// The member's slot in the room.
    slot: usize,
    /// The name was assigned by the server (`guest-N`): the first post may rename it.
    named_by_server: bool,
    /// Has posted (later names in posts are ignored).
    posted: bool,
    /// The connection's serial (errors that come back later check it).
    serial: u64,
    /// Token bucket for `--rate-limit`.
    tokens: f64,
    /// When the bucket was last refilled.
    refilled: Instant,
}

/// A post waiting for its commit.
#[derive(Debug)]
struct PendingPost {
    seq: u64,
    room: Rc<str>,
    id: u64,
    ts: u64,
    json: Rc<str>,
    /// The local poster, told if the commit fails (None: from another process).
    sender: Option<(usize, u64)>,
}

/// Why a storage read was made.
#[derive(Debug)]
enum PendingRead {
    /// Filling a newly live room's recent history.
    RoomCache { room: Rc<str> },
    /// A member resuming with `?since=` from further back than the cache.
    Resume { room: Rc<str>, key: usize, serial: u64, slot: usize, since: u64 },
    /// `GET /api/rooms/<room>/messages`.
    Http { key: usize, serial: u64, room: String },
    /// Redis mode: messages this process missed (gap or resubscribe).
    CatchUp { room: String },
}

/// Limits and sizes the chat applies.
#[derive(Debug, Clone)]
struct Settings {
    history: usize,
    max_rooms: usize,
    max_room_members: usize,
    presence_limit: usize,
    max_text: usize,
    rate_limit: f64,
    rate_burst: f64,
}

/// All rooms: the live ones in memory, and the directory of every room ever.
#[derive(Debug)]
pub struct Chat {
    settings: Settings,
    /// Every room ever created (from storage at startup, then kept current).
    pub(crate) directory: HashMap<String, RoomRecord>,
    /// Rooms with members.
    pub(crate) live: Slab<Room>,
    /// Live rooms by name.
    index: HashMap<Rc<str>, usize>,
    /// The history of rooms that emptied lately, for when they fill again.
    warm: WarmCaches,
    /// Posts handed to storage, in commit order.
    pending: VecDeque<PendingPost>,
    /// Storage reads in flight, by ticket.
    reads: HashMap<u64, PendingRead>,
    next_ticket: u64,
    guests: u64,
    /// Rooms with presence changes this turn.
    presence_dirty: Vec<usize>,
    /// Instructions for the reactor.
    pub out: Vec<Outgoing>,
    /// Storage requests to send (the reactor owns the storage handle).
    pub requests: Vec<Request>,
    /// Sequence numbers storage gave our appends so far.
    appended: u64,
    /// Posts refused by the rate limiter so far (the reactor copies it into
    /// its metrics: the chat knows nothing of them).
    pub rate_limited: u64,
    /// Redis mode (`--redis`): ids and history come from Redis.
    pub cluster: Option<crate::cluster::Cluster>,
    /// Redis mode: our own posts Redis has answered for, by (room, id), until
    /// they come back through the subscription (their poster is its author).
    own_posts: HashMap<(String, u64), (usize, u64)>,
    /// Redis mode: published messages held while a room catches up.
    held: HashMap<String, Vec<crate::cluster::Published>>,
    /// Redis mode: the other processes' members, as they last told us.
    remote: HashMap<String, RemoteProcess>,
    /// Redis mode: when to publish our next full presence snapshot.
    next_snapshot: Option<Instant>,
    /// `--presence-ttl`: a process silent this long is presumed dead.
    presence_ttl: Duration,
}

/// What another process last said about its members.
#[derive(Debug, Default)]
struct RemoteProcess {
    seen: Option<Instant>,
    rooms: HashMap<String, Vec<String>>,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Chat {
    /// The chat state, with the directory storage loaded.
    pub fn new(cfg: &Config, rooms: Vec<RoomRecord>) -> Chat {
        let directory: HashMap<String, RoomRecord> = rooms.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut chat = Chat {
            settings: Settings {
                history: cfg.history,
                max_rooms: cfg.max_rooms,
                max_room_members: cfg.max_room_members,
                presence_limit: cfg.presence_limit,
                max_text: cfg.max_text,
                rate_limit: f64::from(cfg.rate_limit),
                rate_burst: f64::from(cfg.rate_burst.max(1)),
            },
            directory,
            live: Slab::new(),
            index: HashMap::new(),
            warm: WarmCaches::new(WARM_ROOMS),
            pending: VecDeque::new(),
            reads: HashMap::new(),
            next_ticket: 0,
            guests: 0,
            presence_dirty: Vec::new(),
            out: Vec::new(),
            requests: Vec::new(),
            appended: 0,
            rate_limited: 0,
            cluster: cfg.redis.as_ref().map(|_| crate::cluster::Cluster::new(cfg.redis_buffer)),
            own_posts: HashMap::new(),
            held: HashMap::new(),
            remote: HashMap::new(),
            next_snapshot: None,
            presence_ttl: cfg.presence_ttl,
        };
        chat.ensure_directory(DEFAULT_ROOM);
        chat
    }

    /// Whether a new member may go to `room` (checked before the 101).
    pub fn admit(&self, room: &str) -> Result<(), Refusal> {
        if !self.index.contains_key(room) && self.live.len() >= self.settings.max_rooms {
            return Err(Refusal { status: 503, reason: "too many live rooms; try again later", label: "max_rooms" });
        }
        Ok(())
    }

    /// Makes sure `room` is in the directory (and in storage).
    fn ensure_directory(&mut self, room: &str) {
        if !self.directory.contains_key(room) {
            let created = now_ms();
            self.directory.insert(
                room.to_string(),
                RoomRecord { name: room.to_string(), created, last_post: None, messages: 0, last_id: 0 },
            );
            self.requests.push(Request::CreateRoom { room: room.to_string(), created });
            if let Some(cluster) = &mut self.cluster {
                cluster.create_room(room, created);
            }
        }
    }

    /// Reads history from where it lives: the room's Redis stream in Redis
    /// mode (the same for every process), else the storage thread.
    fn read_request(&mut self, ticket: u64, range: ReadRange) {
        match &mut self.cluster {
            Some(cluster) => cluster.read(ticket, &range),
            None => self.requests.push(Request::Read { ticket, range }),
        }
    }

    fn ticket(&mut self, read: PendingRead) -> u64 {
        self.next_ticket += 1;
        self.reads.insert(self.next_ticket, read);
        self.next_ticket
    }

    /// The live slot of `room`, making it live (and loading its history) if needed.
    fn live_room(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.index.get(name) {
            return slot;
        }
        self.ensure_directory(name);
        let (messages, last_id) = self.directory.get(name).map(|r| (r.messages, r.last_id)).unwrap_or((0, 0));
        // In Redis mode other processes may have posted: always read the stream.
        let has_history = messages > 0 || self.cluster.is_some();
        let cap = self.settings.history.max(RECENT_MIN);
        let warm = self.warm.take(name, last_id);
        let read = has_history && warm.is_none();
        let mut room = Room::new(name, last_id, cap, !read);
        if let Some(recent) = warm {
            room.recent = recent;
        }
        let rc = room.name.clone();
        let slot = self.live.insert(room);
        self.index.insert(rc.clone(), slot);
        if read {
            let ticket = self.ticket(PendingRead::RoomCache { room: rc });
            self.read_request(ticket, ReadRange::newest(name, cap));
        }
        slot
    }

    /// A connection joins `room`. `name` is `?username=`, `since` is `?since=`.
    /// Returns the membership, or `None` if the room is full (the
    /// connection is closed with 1013).
    pub fn join(
        &mut self,
        (key, serial): (usize, u64),
        room: &str,
        name: Option<&str>,
        since: Option<u64>,
        now: Instant,
    ) -> Option<Membership> {
        let slot_room = self.live_room(room);
        let full = self.live.get(slot_room).is_none_or(|r| r.members.len() >= self.settings.max_room_members);
        if full {
            self.out.push(Outgoing::Close { key, code: 1013, reason: "room full" });
            self.drop_if_empty(slot_room);
            return None;
        }
        let (wanted, named_by_server, bad_name) = match name.map(clean_name) {
            Some(Some(clean)) => (clean, false, false),
            Some(None) => (self.guest_name(), true, true),
            None => (self.guest_name(), true, false),
        };
        let r = self.live.get_mut(slot_room)?;
        let (slot, got) = r.add(key, &wanted, since);
        if let Some(m) = r.members.get_mut(slot) {
            m.serial = serial;
        }
        r.joined.push((got, key));
        self.queue_presence(slot_room);
        self.try_welcome(slot_room, slot);
        if bad_name {
            self.out.push(Outgoing::To {
                key,
                json: protocol::error_json(
                    "bad_name",
                    "names are 1-32 characters without control characters; you got a guest name",
                ),
            });
        }
        Some(Membership {
            room: slot_room,
            slot,
            named_by_server,
            posted: false,
            serial,
            tokens: self.settings.rate_burst,
            refilled: now,
        })
    }

    fn guest_name(&mut self) -> String {
        self.guests += 1;
        format!("guest-{}", self.guests)
    }

    /// Sends a member its welcome if the room's history is at hand; else
    /// asks storage and sends it when the answer comes.
    fn try_welcome(&mut self, room_slot: usize, slot: usize) {
        let Some(room) = self.live.get(room_slot) else { return };
        if !room.loaded {
            return; // sent from on_messages when the room's history arrives
        }
        let Some(member) = room.members.get(slot) else { return };
        if member.welcomed || member.awaiting_read {
            return;
        }
        let key = member.key;
        match member.since {
            Some(since) if !room.cache_covers(since) => {
                // Further back than the cache: read from storage, at most RESUME_MAX.
                let mut from = since;
                if room.committed_id.saturating_sub(since) > RESUME_MAX {
                    from = room.committed_id - RESUME_MAX;
                    self.out.push(Outgoing::To { key, json: protocol::gap_json(&room.name, from + 1) });
                }
                let name = room.name.clone();
                let serial = member.serial;
                let ticket = self.ticket(PendingRead::Resume { room: name.clone(), key, serial, slot, since: from });
                self.read_request(ticket, ReadRange::after(&name, from, RESUME_MAX as usize));
                if let Some(m) = self.live.get_mut(room_slot).and_then(|r| r.members.get_mut(slot)) {
                    m.awaiting_read = true;
                }
            }
            Some(since) => {
                let history: Vec<Rc<str>> =
                    room.recent.iter().filter(|(id, _)| *id > since).map(|(_, j)| j.clone()).collect();
                self.send_welcome(room_slot, slot, history);
            }
            None => {
                let skip = room.recent.len().saturating_sub(self.settings.history);
                let history: Vec<Rc<str>> = room.recent.iter().skip(skip).map(|(_, j)| j.clone()).collect();
                self.send_welcome(room_slot, slot, history);
            }
        }
    }

    fn send_welcome(&mut self, room_slot: usize, slot: usize, history: Vec<Rc<str>>) {
        let Some(room) = self.live.get_mut(room_slot) else { return };
        let Some(member) = room.members.get(slot) else { return };
        let key = member.key;
        let mut online = room.online_names(ONLINE_LIST_MAX);
        let remote = remote_names(&self.remote, &room.name);
        let count = room.members.len() + remote.len();
        online.extend(remote.iter().take(ONLINE_LIST_MAX.saturating_sub(online.len())).map(|s| s.as_str()));
        let history: Vec<&str> = history.iter().map(|h| &**h).collect();
        let json = protocol::welcome_json(&room.name, &member.name, &online, count, &history, room.committed_id);
        if let Some(m) = room.members.get_mut(slot) {
            m.welcomed = true;
            m.since = None;
            m.awaiting_read = false;
        }
        self.out.push(Outgoing::To { key, json });
    }

    /// A member's text frame: post it, or answer with an error event.
    pub fn on_text(&mut self, key: usize, m: &mut Membership, text: &str, now: Instant) {
        let post = match protocol::parse_post(text, self.settings.max_text) {
            Ok(post) => post,
            Err(PostError::BadJson) => {
                let json = protocol::error_json("bad_json", r#"send {"message": "text"} as a JSON object"#);
                return self.out.push(Outgoing::To { key, json });
            }
            Err(PostError::TooLong) => {
                let json = protocol::error_json(
                    "too_long",
                    &format!("messages are at most {} characters", self.settings.max_text),
                );
                return self.out.push(Outgoing::To { key, json });
            }
        };
        if !self.take_token(m, now) {
            self.rate_limited += 1;
            let json = protocol::error_json("rate_limited", "you are sending too fast; this message was not posted");
            return self.out.push(Outgoing::To { key, json });
        }
        // The original client sends its name inside every message: the first
        // one may rename a server-named member; later names are ignored.
        if !m.posted
            && m.named_by_server
            && let Some(wanted) = post.username.as_deref()
        {
            match clean_name(wanted) {
                Some(clean) => {
                    let Some(room) = self.live.get_mut(m.room) else { return };
                    if let Some((from, to)) = room.rename(m.slot, &clean) {
                        let json: Rc<str> = protocol::rename_json(&room.name, &from, &to).into();
                        self.out.push(Outgoing::Room {
                            room: m.room,
                            json,
                            is_message: false,
                            except: None,
                            author: None,
                        });
                    }
                }
                None => self.out.push(Outgoing::To {
                    key,
                    json: protocol::error_json("bad_name", "names are 1-32 characters without control characters"),
                }),
            }
        }
        m.posted = true;
        let Some(room) = self.live.get_mut(m.room) else { return };
        let Some(member) = room.members.get(m.slot) else { return };
        if let Some(cluster) = &mut self.cluster {
            // Redis hands out the id; the message comes back through the
            // subscription like everyone else's.
            let known = self.directory.get(&*room.name).map_or(0, |r| r.last_id);
            if !cluster.post(&room.name, &member.name, &post.message, now_ms(), known, (key, m.serial)) {
                let json =
                    protocol::error_json("unavailable", "the chat backend is unreachable; this message was not sent");
                self.out.push(Outgoing::To { key, json });
            }
            return;
        }
        room.last_id += 1;
        let (id, ts) = (room.last_id, now_ms());
        // The directory learns the id now, not at commit: if the room empties
        // and comes back before the commit, it must not hand out `id` again.
        if let Some(record) = self.directory.get_mut(&*room.name) {
            record.last_id = record.last_id.max(id);
        }
        let json: Rc<str> = protocol::message_json(&room.name, id, &member.name, &post.message, ts).into();
        let msg = StoredMessage { id, ts, username: member.name.to_string(), text: post.message };
        let name = room.name.clone();
        self.enqueue_commit(name, msg, json, Some((key, m.serial)));
    }

    /// Hands a message to storage; it is broadcast when the commit is done.
    fn enqueue_commit(&mut self, room: Rc<str>, msg: StoredMessage, json: Rc<str>, sender: Option<(usize, u64)>) {
        let (id, ts) = (msg.id, msg.ts);
        self.requests.push(Request::Append { room: room.to_string(), msg });
        self.appended += 1;
        self.pending.push_back(PendingPost { seq: self.appended, room, id, ts, json, sender });
    }

    /// Redis mode: a message published by any process (ours included).
    /// Accepted in id order; a gap means we missed some, so read them from
    /// the stream first and hold what arrives meanwhile.
    pub fn on_published(&mut self, p: crate::cluster::Published) {
        if !crate::route::valid_room_name(&p.room) {
            return;
        }
        if let Some(held) = self.held.get_mut(&p.room) {
            held.push(p);
            return;
        }
        self.ensure_directory(&p.room);
        let last = self.directory.get(&p.room).map_or(0, |r| r.last_id);
        if p.id <= last {
            return; // already delivered (a catch-up overlapped the live feed)
        }
        if p.id > last + 1 {
            let room = p.room.clone();
            self.held.insert(room.clone(), vec![p]);
            let ticket = self.ticket(PendingRead::CatchUp { room: room.clone() });
            self.read_request(ticket, ReadRange::after(&room, last, RESUME_MAX as usize));
            return;
        }
        self.accept_published(p);
    }

    fn accept_published(&mut self, p: crate::cluster::Published) {
        if let Some(record) = self.directory.get_mut(&p.room) {
            record.last_id = record.last_id.max(p.id);
        }
        if let Some(&slot) = self.index.get(p.room.as_str())
            && let Some(room) = self.live.get_mut(slot)
        {
            room.last_id = room.last_id.max(p.id);
        }
        let json: Rc<str> = protocol::message_json(&p.room, p.id, &p.username, &p.message, p.ts).into();
        let room: Rc<str> = Rc::from(p.room.as_str());
        let sender = self.own_posts.remove(&(p.room, p.id));
        let msg = StoredMessage { id: p.id, ts: p.ts, username: p.username, text: p.message };
        self.enqueue_commit(room, msg, json, sender);
    }

    /// Redis mode: the subscription is (back) up. Anything published while it
    /// was down was missed: every live room reads on from its last id.
    pub fn on_subscribed(&mut self) {
        let rooms: Vec<String> = self.live.iter().map(|(_, r)| r.name.to_string()).collect();
        for room in rooms {
            if self.held.contains_key(&room) {
                continue;
            }
            let last = self.directory.get(&room).map_or(0, |r| r.last_id);
            self.held.insert(room.clone(), Vec::new());
            let ticket = self.ticket(PendingRead::CatchUp { room: room.clone() });
            self.read_request(ticket, ReadRange::after(&room, last, RESUME_MAX as usize));
        }
    }

    /// Redis mode: a reply (or a failure) for one of our commands.
    pub fn on_bus_reply(&mut self, reply: crate::cluster::ReplyFor) {
        match reply {
            crate::cluster::ReplyFor::Posted { room, id, sender } => {
                // Its copy is its acknowledgement (written first, never held
                // back): remember whose it is, unless it came back already.
                let delivered = self.directory.get(&room).is_some_and(|r| r.last_id >= id);
                if !delivered {
                    if self.own_posts.len() >= OWN_POSTS_MAX {
                        self.own_posts.clear();
                    }
                    self.own_posts.insert((room, id), sender);
                }
            }
            crate::cluster::ReplyFor::Nothing => {}
            crate::cluster::ReplyFor::PostFailed { sender: (key, serial), reason } => {
                log::warn!("post refused: {reason}");
                let json =
                    protocol::error_json("unavailable", "the chat backend refused this message; it was not sent");
                self.out.push(Outgoing::ToSerial { key, serial, json });
            }
            crate::cluster::ReplyFor::Read(ticket, messages, oldest) => self.on_messages(ticket, messages, oldest),
            crate::cluster::ReplyFor::Rooms(rooms) => {
                for (name, created) in rooms {
                    if crate::route::valid_room_name(&name) && !self.directory.contains_key(&name) {
                        self.directory.insert(
                            name.clone(),
                            RoomRecord { name, created, last_post: None, messages: 0, last_id: 0 },
                        );
                    }
                }
            }
        }
    }

    /// The token bucket: `--rate-burst` deep, refilled at `--rate-limit` per second.
    fn take_token(&mut self, m: &mut Membership, now: Instant) -> bool {
        if self.settings.rate_limit <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(m.refilled).as_secs_f64();
        m.refilled = now;
        m.tokens = (m.tokens + elapsed * self.settings.rate_limit).min(self.settings.rate_burst);
        if m.tokens >= 1.0 {
            m.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Storage committed (or failed) every append up to `upto`.
    pub fn on_committed(&mut self, upto: u64, result: &Result<(), String>) -> usize {
        let mut committed = 0;
        while self.pending.front().is_some_and(|p| p.seq <= upto) {
            let Some(post) = self.pending.pop_front() else { break };
            match result {
                Ok(()) => {
                    committed += 1;
                    if let Some(record) = self.directory.get_mut(&*post.room) {
                        record.messages += 1;
                        record.last_id = record.last_id.max(post.id);
                        record.last_post = Some(post.ts);
                    }
                    if let Some(&slot) = self.index.get(&post.room)
                        && let Some(room) = self.live.get_mut(slot)
                    {
                        room.remember(post.id, post.json.clone());
                        let author = post.sender;
                        self.out.push(Outgoing::Room {
                            room: slot,
                            json: post.json,
                            is_message: true,
                            except: None,
                            author,
                        });
                    }
                }
                Err(reason) => {
                    log::error!("history commit failed: {reason}");
                    if let Some((key, serial)) = post.sender {
                        let json =
                            protocol::error_json("unavailable", "the message could not be stored and was not sent");
                        self.out.push(Outgoing::ToSerial { key, serial, json });
                    }
                }
            }
        }
        committed
    }

    /// A storage read came back.
    pub fn on_messages(&mut self, ticket: u64, messages: Vec<StoredMessage>, oldest_id: Option<u64>) {
        let Some(read) = self.reads.remove(&ticket) else { return };
        match read {
            PendingRead::RoomCache { room } => {
                let Some(&slot) = self.index.get(&room) else { return };
                let loaded = messages.iter().map(|m| (m.id, event_json(&room, m))).collect();
                let Some(r) = self.live.get_mut(slot) else { return };
                r.prepend_loaded(loaded);
                r.committed_id = r.committed_id.max(r.recent.back().map(|(id, _)| *id).unwrap_or(0));
                let waiting: Vec<usize> = r.members.iter().filter(|(_, m)| !m.welcomed).map(|(s, _)| s).collect();
                for member in waiting {
                    self.try_welcome(slot, member);
                }
            }
            PendingRead::Resume { room, key, serial, slot, since } => {
                let Some(&room_slot) = self.index.get(&room) else { return };
                let Some(r) = self.live.get(room_slot) else { return };
                if r.members.get(slot).is_none_or(|m| m.key != key || m.serial != serial || m.welcomed) {
                    return;
                }
                // Storage may have lost what was asked for (memory mode keeps
                // the last 1,000 per room): say so before replaying.
                if oldest_id.is_some_and(|oldest| oldest > since + 1) {
                    let oldest = oldest_id.unwrap_or(0);
                    self.out.push(Outgoing::To { key, json: protocol::gap_json(&room, oldest) });
                }
                let mut history: Vec<Rc<str>> = messages.iter().map(|m| event_json(&room, m)).collect();
                // Messages committed while the read was in flight are in the
                // cache, newer than anything storage returned.
                let newest = messages.last().map(|m| m.id).unwrap_or(since);
                history.extend(r.recent.iter().filter(|(id, _)| *id > newest).map(|(_, j)| j.clone()));
                self.send_welcome(room_slot, slot, history);
            }
            PendingRead::CatchUp { room } => {
                let held = self.held.remove(&room).unwrap_or_default();
                let last = self.directory.get(&room).map_or(0, |r| r.last_id);
                let mut next = last;
                let stored = messages.into_iter().map(|m| crate::cluster::Published {
                    room: room.clone(),
                    id: m.id,
                    username: m.username,
                    message: m.text,
                    ts: m.ts,
                });
                let mut all: Vec<crate::cluster::Published> = stored.chain(held).filter(|p| p.id > last).collect();
                all.sort_by_key(|p| p.id);
                all.dedup_by_key(|p| p.id);
                for p in all {
                    if p.id != next + 1 {
                        // The stream no longer has what we missed (trimmed or
                        // lost): members are told, then live delivery resumes.
                        if let Some(&slot) = self.index.get(room.as_str()) {
                            let json: Rc<str> = protocol::gap_json(&room, p.id).into();
                            self.out.push(Outgoing::Room {
                                room: slot,
                                json,
                                is_message: false,
                                except: None,
                                author: None,
                            });
                        }
                    }
                    next = p.id;
                    self.accept_published(p);
                }
            }
            PendingRead::Http { key, serial, room } => {
                let events: Vec<serde_json::Value> = messages
                    .iter()
                    .map(|m| serde_json::from_str(&event_json(&room, m)).unwrap_or(serde_json::Value::Null))
                    .collect();
                let body = serde_json::json!({"room": room, "messages": events, "oldest_id": oldest_id});
                self.out.push(Outgoing::Http { key, serial, status: 200, body: body.to_string().into_bytes() });
            }
        }
    }

    /// A member's connection closed.
    pub fn leave(&mut self, m: Membership) {
        let Some(room) = self.live.get_mut(m.room) else { return };
        if let Some(name) = room.remove(m.slot) {
            room.left.push(name);
            self.queue_presence(m.room);
        }
        self.drop_if_empty(m.room);
    }

    fn drop_if_empty(&mut self, slot: usize) {
        if self.live.get(slot).is_some_and(|r| r.members.is_empty()) {
            let room = self.live.remove(slot);
            self.index.remove(&room.name);
            self.presence_dirty.retain(|&s| s != slot);
            // Its history is complete only if it was loaded and nothing is
            // still committing; Redis mode always rereads the shared stream.
            if self.cluster.is_none() && room.loaded && room.committed_id == room.last_id {
                self.warm.park(room.name, room.last_id, room.recent);
            }
        }
    }

    fn queue_presence(&mut self, slot: usize) {
        let Some(room) = self.live.get_mut(slot) else { return };
        if !room.presence_queued {
            room.presence_queued = true;
            self.presence_dirty.push(slot);
        }
    }

    /// Once per loop turn: one presence frame per room that changed, so a
    /// thousand joins in one turn cost each member one frame, not a thousand.
    pub fn flush_presence(&mut self) {
        let mut changed_rooms = Vec::new();
        for slot in std::mem::take(&mut self.presence_dirty) {
            let Some(room) = self.live.get_mut(slot) else { continue };
            room.presence_queued = false;
            let joined = std::mem::take(&mut room.joined);
            let left = std::mem::take(&mut room.left);
            let count = room.members.len() + remote_names(&self.remote, &room.name).len();
            if self.cluster.is_some() {
                changed_rooms.push(room.name.to_string());
            }
            // A lone joiner already learnt everything from its welcome frame.
            let mut except = None;
            let json = if count > self.settings.presence_limit {
                protocol::presence_many_json(&room.name, None, None, count)
            } else {
                match (joined.as_slice(), left.as_slice()) {
                    ([], []) => continue,
                    ([(one, key)], []) => {
                        except = Some(*key);
                        protocol::presence_one_json("join", &room.name, one, count)
                    }
                    ([], [one]) => protocol::presence_one_json("leave", &room.name, one, count),
                    _ => {
                        let joined: Vec<String> = joined.into_iter().map(|(name, _)| name).collect();
                        protocol::presence_many_json(&room.name, Some(&joined), Some(&left), count)
                    }
                }
            };
            self.out.push(Outgoing::Room { room: slot, json: json.into(), is_message: false, except, author: None });
        }
        if !changed_rooms.is_empty() {
            let rooms = changed_rooms
                .into_iter()
                .map(|name| {
                    let names = self
                        .index
                        .get(name.as_str())
                        .and_then(|&s| self.live.get(s))
                        .map_or(Vec::new(), |r| r.members.iter().map(|(_, m)| m.name.to_string()).collect());
                    (name, names)
                })
                .collect();
            self.publish_presence(rooms, false);
        }
    }

    /// Starts a scroll-back read for the HTTP API.
    pub fn read_for_http(&mut self, key: usize, serial: u64, room: &str, before: u64, limit: usize) {
        let ticket = self.ticket(PendingRead::Http { key, serial, room: room.to_string() });
        self.read_request(ticket, ReadRange::newest(room, limit).before(before));
    }

    /// Members of live room `slot` that receive broadcasts: (key) of each welcomed member.
    pub fn recipients(&self, slot: usize) -> impl Iterator<Item = usize> + '_ {
        self.live.get(slot).into_iter().flat_map(|r| r.members.iter().filter(|(_, m)| m.welcomed).map(|(_, m)| m.key))
    }

    /// When the chat needs the loop to wake without I/O (none yet: Redis
    /// presence refresh will use it).
    pub fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        self.next_snapshot.map(|t| t.saturating_duration_since(now).min(Duration::from_secs(1)))
    }

    /// Whether something is waiting for the end of a turn (presence frames,
    /// storage requests, deliveries): the loop must not sleep on it.
    pub fn has_work(&self) -> bool {
        !self.presence_dirty.is_empty() || !self.requests.is_empty() || !self.out.is_empty()
    }

    /// Live rooms and their members, for the gauges.
    pub fn counts(&self) -> (usize, usize) {
        (self.live.len(), self.live.iter().map(|(_, r)| r.members.len()).sum())
    }

    /// The online count and names of `room` (0 and none when not live).
    pub fn online(&self, room: &str, limit: usize) -> (usize, Vec<String>) {
        let mut names: Vec<String> = match self.index.get(room).and_then(|&s| self.live.get(s)) {
            Some(r) => r.online_names(limit).into_iter().map(str::to_string).collect(),
            None => Vec::new(),
        };
        let local = self.index.get(room).and_then(|&s| self.live.get(s)).map_or(0, |r| r.members.len());
        let remote = remote_names(&self.remote, room);
        names.extend(remote.iter().take(limit.saturating_sub(names.len())).cloned());
        (local + remote.len(), names)
    }

    /// Redis mode: a presence note from any process (ours is ignored).
    /// The difference from what that process said before becomes join and
    /// leave events in our local copy of each room.
    pub fn on_presence(&mut self, payload: &[u8], now: Instant) {
        let Some(cluster) = &self.cluster else { return };
        let Ok(note) = serde_json::from_slice::<crate::cluster::PresenceNote>(payload) else { return };
        if note.proc == cluster.proc_id {
            return;
        }
        let process = self.remote.entry(note.proc.clone()).or_default();
        process.seen = Some(now);
        let mut changes: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
        let mut rooms: Vec<String> = note.rooms.keys().cloned().collect();
        if note.full {
            rooms.extend(process.rooms.keys().filter(|r| !note.rooms.contains_key(*r)).cloned());
        }
        for room in rooms {
            let new = note.rooms.get(&room).cloned().unwrap_or_default();
            let old = process.rooms.remove(&room).unwrap_or_default();
            let joined: Vec<String> = new.iter().filter(|n| !old.contains(n)).cloned().collect();
            let left: Vec<String> = old.iter().filter(|n| !new.contains(n)).cloned().collect();
            if !new.is_empty() {
                process.rooms.insert(room.clone(), new);
            }
            if !joined.is_empty() || !left.is_empty() {
                changes.push((room, joined, left));
            }
        }
        for (room, joined, left) in changes {
            self.remote_changed(&room, joined, left);
        }
    }

    /// Queues presence events for remote joins and leaves in a live room.
    fn remote_changed(&mut self, room: &str, joined: Vec<String>, left: Vec<String>) {
        let Some(&slot) = self.index.get(room) else { return };
        let Some(r) = self.live.get_mut(slot) else { return };
        // usize::MAX: no local connection to spare from its own join event.
        r.joined.extend(joined.into_iter().map(|n| (n, usize::MAX)));
        r.left.extend(left);
        self.queue_presence(slot);
    }

    /// Once a second (Redis mode): publish a full snapshot every third of
    /// `--presence-ttl`, and forget processes silent for longer than it
    /// (killed with `kill -9`: their members leave).
    pub fn on_tick(&mut self, now: Instant) {
        if self.cluster.is_none() {
            return;
        }
        if self.next_snapshot.is_none_or(|t| now >= t) {
            self.next_snapshot = Some(now + self.presence_ttl / 3);
            let rooms: HashMap<String, Vec<String>> = self
                .live
                .iter()
                .map(|(_, r)| {
                    (r.name.to_string(), r.online_names(usize::MAX).into_iter().map(str::to_string).collect())
                })
                .collect();
            self.publish_presence(rooms, true);
        }
        let ttl = self.presence_ttl;
        let dead: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, p)| p.seen.is_none_or(|s| now >= s + ttl))
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            if let Some(process) = self.remote.remove(&id) {
                log::info!("presence: process {id} silent for {ttl:?}; its members leave");
                for (room, names) in process.rooms {
                    self.remote_changed(&room, Vec::new(), names);
                }
            }
        }
    }

    fn publish_presence(&mut self, rooms: HashMap<String, Vec<String>>, full: bool) {
        let Some(cluster) = &mut self.cluster else { return };
        let note = crate::cluster::PresenceNote { proc: cluster.proc_id.clone(), full, rooms };
        let Ok(json) = serde_json::to_vec(&note) else { return };
        let cmd = redis::cmd("PUBLISH").arg(PRESENCE_CHANNEL_NAME).arg(json).get_packed_command();
        cluster.commands.push((cmd, crate::cluster::TAG_INTERNAL));
    }
}

/// The channel name presence notes go to.
const PRESENCE_CHANNEL_NAME: &[u8] = crate::cluster::PRESENCE_CHANNEL;

/// Names other processes report in `room`.
fn remote_names(remote: &HashMap<String, RemoteProcess>, room: &str) -> Vec<String> {
    remote.values().filter_map(|p| p.rooms.get(room)).flatten().cloned().collect()
}

/// The JSON event of a stored message.
fn event_json(room: &str, m: &StoredMessage) -> Rc<str> {
    protocol::message_json(room, m.id, &m.username, &m.text, m.ts).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Chat {
        Chat::new(&Config::defaults(), Vec::new())
    }

    fn presence_frames(chat: &mut Chat) -> Vec<serde_json::Value> {
        chat.flush_presence();
        chat.out
            .drain(..)
            .filter_map(|o| match o {
                Outgoing::Room { json, .. } => serde_json::from_str(&json).ok(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn joins_and_leaves_of_one_turn_become_one_frame() {
        let mut chat = chat();
        let now = Instant::now();
        let a = chat.join((1, 1), "r", Some("a"), None, now).unwrap();
        presence_frames(&mut chat);
        // One turn: three joins and a leave.
        let _b = chat.join((2, 2), "r", Some("b"), None, now).unwrap();
        let _c = chat.join((3, 3), "r", Some("c"), None, now).unwrap();
        let _d = chat.join((4, 4), "r", Some("d"), None, now).unwrap();
        chat.leave(a);
        let frames = presence_frames(&mut chat);
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["type"], "presence");
        assert_eq!(frames[0]["joined"], serde_json::json!(["b", "c", "d"]));
        assert_eq!(frames[0]["left"], serde_json::json!(["a"]));
        assert_eq!(frames[0]["online_count"], 3);
    }

    /// Whether the chat asked storage for a read since the last call.
    fn read_requested(chat: &mut Chat) -> bool {
        chat.requests.drain(..).any(|r| matches!(r, Request::Read { .. }))
    }

    /// The history ids in the welcome frame queued for `key`.
    fn welcome_history(chat: &mut Chat, key: usize) -> Vec<u64> {
        let welcome = chat.out.drain(..).find_map(|o| match o {
            Outgoing::To { key: k, json } if k == key && json.contains(r#""type":"welcome""#) => Some(json),
            _ => None,
        });
        let welcome: serde_json::Value = serde_json::from_str(&welcome.unwrap_or_default()).unwrap_or_default();
        welcome["history"].as_array().map_or(Vec::new(), |h| h.iter().filter_map(|m| m["id"].as_u64()).collect())
    }

    #[test]
    fn a_room_that_empties_and_refills_keeps_its_history_without_a_read() {
        let mut chat = chat();
        let now = Instant::now();
        let mut a = chat.join((1, 1), "r", Some("a"), None, now).unwrap();
        chat.on_text(1, &mut a, r#"{"message": "hello"}"#, now);
        chat.on_committed(chat.appended, &Ok(()));
        chat.leave(a);
        chat.out.clear();
        read_requested(&mut chat);
        // Back after the room was dropped: the welcome comes from the parked
        // history, with no storage read.
        let b = chat.join((2, 2), "r", Some("b"), None, now).unwrap();
        assert!(!read_requested(&mut chat), "the parked history serves the welcome");
        assert_eq!(welcome_history(&mut chat, 2), vec![1]);
        chat.leave(b);

        // A post still committing when the room empties: the parked copy
        // would miss it, so the room is not parked and history is read.
        let mut c = chat.join((3, 3), "r", Some("c"), None, now).unwrap();
        chat.on_text(3, &mut c, r#"{"message": "late"}"#, now);
        chat.leave(c);
        chat.on_committed(chat.appended, &Ok(()));
        chat.out.clear();
        read_requested(&mut chat);
        chat.join((4, 4), "r", Some("d"), None, now).unwrap();
        assert!(read_requested(&mut chat), "a stale history is read again from storage");
    }

    #[test]
    fn a_lone_join_is_a_join_event_not_sent_to_the_joiner() {
        let mut chat = chat();
        let now = Instant::now();
        chat.join((1, 1), "r", Some("a"), None, now).unwrap();
        chat.flush_presence();
        let except: Vec<Option<usize>> = chat
            .out
            .iter()
            .filter_map(|o| match o {
                Outgoing::Room { except, .. } => Some(*except),
                _ => None,
            })
            .collect();
        assert_eq!(except, vec![Some(1)]);
    }
}
