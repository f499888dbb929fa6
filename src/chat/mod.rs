//! Chat rooms: joining, posting, presence, history and resume.
//!
//! This is the application on top of the WebSocket plumbing, and it follows
//! one rule: **a message is broadcast only after it is durable.** A post is
//! given the room's next id, handed to the storage thread, and parked in
//! `Chat::pending`; when storage reports the batch committed
//! ([`Chat::on_committed`]) the message goes into the room's recent history
//! and out to every member, in id order. A `kill -9` therefore can never
//! leave a client holding a message the history lost.
//!
//! `Chat` knows rooms, members (by connection key) and storage requests,
//! but nothing about sockets: what it decides to send is pushed onto
//! [`Chat::out`] as [`Outgoing`] instructions, and the reactor carries them
//! out (framing once, sharing the bytes between members).
//!
//! Rooms may also be shared with other processes ([`Mode::Shared`]). Then
//! the chat does not number posts or read history itself: it hands both out
//! ([`Chat::take_handoffs`]) and takes messages back in their shared order
//! ([`Chat::accept_ordered`]); from there on a message goes the same way,
//! through storage to the members. `shared.rs` is that interface.
//!
//! # Layout
//!
//! - `mod.rs` (this file): [`Chat`], joining, posting, committing, presence
//!   frames.
//! - `history.rs`: reading history: welcomes, resumes, scroll-back.
//! - `room.rs`: one live room, its members and recent history.
//! - `protocol.rs`: the JSON events on the wire.
//! - `warm.rs`: the history of rooms that emptied lately.
//! - `shared.rs`: what the chat hands out and takes back when its rooms are
//!   shared ([`Handoff`], [`Mode`]).
//! - `roster.rs`: members connected to other processes.
//! - `backend.rs`: posts from the server API (a site's backend).
//! - `flights.rs`: posts not yet complete, by connection and room: whether
//!   a connection may be read (`--max-posts-in-flight`).

mod backend;
mod flights;
mod history;
pub mod protocol;
pub mod room;
mod roster;
pub mod shared;
pub mod warm;

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use slab::Slab;

use crate::config::Config;
use crate::handshake::Refusal;
use crate::storage::{ReadRange, Request, RoomRecord, StoredMessage};
pub use backend::KickTarget;
use flights::Flights;
use history::PendingRead;
use protocol::{PostError, clean_name};
use room::Room;
use roster::Roster;
pub use shared::{Handoff, Mode, NotSent, OrderedMessage, PostIntent};
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
    /// A kick that came from another process (`backend.rs`): close this
    /// member's connection, if it is still the same one, with 4001 and
    /// the reason, and take it out of the room; with `until`, ban it
    /// (by `sub`, or for a guest by its address, which only the reactor
    /// knows) from `room` until then.
    Kick {
        /// Connection key.
        key: usize,
        /// Its serial.
        serial: u64,
        /// Its token's `sub` (`None`: a guest).
        sub: Option<Rc<String>>,
        /// The room.
        room: String,
        /// The close frame's reason.
        reason: String,
        /// Ban until then (ms since the epoch).
        until: Option<u64>,
    },
    /// A room's bans were (re)loaded (`Chat::bans_loaded`): members who
    /// joined before this process knew of a ban must go.
    CheckBans {
        /// The room.
        room: String,
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
    /// A guest under `--guests read-only`: its posts are refused.
    read_only: bool,
    /// Its token's `moderate` claim names the room: it may send
    /// [`protocol::Command`]s.
    moderator: bool,
}

/// Who joins a room ([`Chat::join_as`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who<'a> {
    /// A guest: the name it asked for (`?username=`), if any; `read_only`
    /// under `--guests read-only`.
    Guest {
        /// The name asked for.
        name: Option<&'a str>,
        /// Its posts are refused.
        read_only: bool,
    },
    /// A user the server verified (a signed token): joins under the
    /// token's name, which posts cannot change.
    Verified {
        /// The token's name.
        name: &'a str,
        /// The token's `sub`: the user, whatever the name (kicks by user).
        sub: &'a str,
        /// Its `moderate` claim names the room.
        moderator: bool,
    },
}

/// A post waiting for its commit.
#[derive(Debug)]
struct PendingPost {
    seq: u64,
    room: Rc<str>,
    id: u64,
    ts: u64,
    json: Rc<str>,
    /// The local poster, told if the commit fails (None: posted on another process).
    sender: Option<(usize, u64)>,
}

/// A sequenced write handed to storage, waiting for its commit.
#[derive(Debug)]
enum Pending {
    /// A post: broadcast once committed.
    Post(PendingPost),
    /// A delete (`backend.rs`): applied once committed.
    Delete {
        seq: u64,
        room: Rc<str>,
        id: u64,
        /// The API request that asked for it (none for a shared copy's).
        author: Option<(usize, u64)>,
    },
}

impl Pending {
    fn seq(&self) -> u64 {
        match self {
            Pending::Post(post) => post.seq,
            Pending::Delete { seq, .. } => *seq,
        }
    }
}

/// A message ready to go out: its id, time, event and local author.
struct Ordered {
    id: u64,
    ts: u64,
    json: Rc<str>,
    sender: Option<(usize, u64)>,
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
    pending: VecDeque<Pending>,
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
    /// Whether this process numbers its posts, or shares its rooms.
    mode: Mode,
    /// Shared mode: what the sharer has to take (see `shared.rs`).
    handoffs: Vec<Handoff>,
    /// Shared mode: the members connected to other processes.
    elsewhere: Roster,
    /// Posts not yet complete, by connection and room (`--max-posts-in-flight`).
    flights: Flights,
    /// Who may not join which room (the server API's bans).
    pub bans: crate::auth::bans::Bans,
    /// The serials of the API requests whose posts await their outcome
    /// (see `backend.rs`).
    api_authors: HashSet<u64>,
    /// Whether messages are stored here. Always in [`Mode::Local`]; in
    /// [`Mode::Shared`] only with a data file: history is read from the
    /// sharer, so a copy in memory would never be read (see
    /// [`Chat::without_copies`]).
    copies: bool,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Chat {
    /// The chat state, with the directory storage loaded; `mode` says who
    /// numbers the posts (see [`Mode`]).
    pub fn new(cfg: &Config, rooms: Vec<RoomRecord>, mode: Mode) -> Chat {
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
            mode,
            handoffs: Vec::new(),
            elsewhere: Roster::default(),
            flights: Flights::new(cfg.max_posts_in_flight),
            copies: true,
            api_authors: HashSet::new(),
            bans: crate::auth::bans::Bans::default(),
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
            if self.mode == Mode::Shared {
                self.handoffs.push(Handoff::RoomCreated { room: room.to_string(), created });
            }
        }
    }

    /// The live slot of `room`, making it live (and loading its history) if needed.
    fn live_room(&mut self, name: &str) -> usize {
        if let Some(&slot) = self.index.get(name) {
            return slot;
        }
        self.ensure_directory(name);
        let (messages, last_id) = self.directory.get(name).map(|r| (r.messages, r.last_id)).unwrap_or((0, 0));
        // Shared rooms may have messages from other processes: always read.
        let has_history = messages > 0 || self.mode == Mode::Shared;
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
        conn: (usize, u64),
        room: &str,
        name: Option<&str>,
        since: Option<u64>,
        now: Instant,
    ) -> Option<Membership> {
        self.join_as(conn, room, Who::Guest { name, read_only: false }, since, now)
    }

    /// [`Chat::join`] for anyone: a guest, or a verified user, who joins
    /// under the token's name; a guest holding that name in the room is
    /// renamed (a guest never holds a verified user's name).
    pub fn join_as(
        &mut self,
        (key, serial): (usize, u64),
        room: &str,
        who: Who<'_>,
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
        let (name, sub, read_only, moderator) = match who {
            Who::Guest { name, read_only } => (name, None, read_only, false),
            Who::Verified { name, sub, moderator } => (Some(name), Some(Rc::new(sub.to_string())), false, moderator),
        };
        let verified = sub.is_some();
        let (wanted, named_by_server, bad_name) = match name.map(clean_name) {
            Some(Some(clean)) => (clean, false, false),
            Some(None) => (self.guest_name(), true, true),
            None => (self.guest_name(), true, false),
        };
        let r = self.live.get_mut(slot_room)?;
        if verified && let Some((from, to)) = r.displace_guest(&wanted) {
            let json: Rc<str> = protocol::rename_json(&r.name, &from, &to).into();
            self.out.push(Outgoing::Room { room: slot_room, json, is_message: false, except: None, author: None });
        }
        // A guest also avoids the names members on other processes hold
        // (with Redis): a verified user's there among them.
        let elsewhere = if verified { &[][..] } else { self.elsewhere.names(room) };
        let (slot, got) = r.add(key, &wanted, since, sub, elsewhere);
        if let Some(m) = r.members.get_mut(slot) {
            m.serial = serial;
            m.moderator = moderator;
        }
        r.joined.push((got, key));
        if r.members.len() == 1 && self.mode == Mode::Shared {
            self.handoffs.push(Handoff::FirstMember { room: room.to_string() });
        }
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
            named_by_server: named_by_server && !verified,
            posted: false,
            serial,
            tokens: self.settings.rate_burst,
            refilled: now,
            read_only,
            moderator,
        })
    }

    fn guest_name(&mut self) -> String {
        self.guests += 1;
        format!("guest-{}", self.guests)
    }

    /// A member's text frame: post it, or answer with an error event.
    pub fn on_text(&mut self, key: usize, m: &mut Membership, text: &str, now: Instant) {
        if m.read_only {
            if let Some(command) = protocol::parse_command(text) {
                return self.on_command(key, m, command);
            }
            let json = protocol::error_json("read_only", "guests may read this chat but not post; sign in to post");
            return self.out.push(Outgoing::To { key, json });
        }
        let post = match protocol::parse_post(text, self.settings.max_text) {
            Ok(post) => post,
            Err(PostError::BadJson) => {
                if let Some(command) = protocol::parse_command(text) {
                    return self.on_command(key, m, command);
                }
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
                    if let Some((from, to)) = room.rename(m.slot, &clean, self.elsewhere.names(&room.name)) {
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
        // In flight until stored (or, shared, until Redis answers).
        self.flights.begin(m.serial, m.room);
        if self.mode == Mode::Shared {
            // The sharer hands out the id; the message comes back through
            // `accept_ordered` like everyone else's.
            let known_last = self.directory.get(&*room.name).map_or(0, |r| r.last_id);
            let mut suffix = String::with_capacity(48 + member.name.len() + post.message.len());
            protocol::push_message_suffix(&mut suffix, &member.name, &post.message, now_ms());
            if member.verified() {
                protocol::push_verified(&mut suffix);
            }
            let room = room.name.clone();
            self.handoffs.push(Handoff::Post(PostIntent { room, suffix, known_last, author: (key, m.serial) }));
            return;
        }
        room.last_id += 1;
        let (id, ts) = (room.last_id, now_ms());
        // The directory learns the id now, not at commit: if the room empties
        // and comes back before the commit, it must not hand out `id` again.
        if let Some(record) = self.directory.get_mut(&*room.name) {
            record.last_id = record.last_id.max(id);
        }
        let (username, text, verified) = (member.name.to_string(), post.message.into_owned(), member.verified());
        let msg = StoredMessage { id, ts, username, text, verified };
        let json: Rc<str> = protocol::stored_json(&room.name, &msg).into();
        let name = room.name.clone();
        self.enqueue_commit(name, msg, json, Some((key, m.serial)));
    }

    /// Hands a message to storage; it is broadcast when the commit is done.
    fn enqueue_commit(&mut self, room: Rc<str>, msg: StoredMessage, json: Rc<str>, sender: Option<(usize, u64)>) {
        let (id, ts) = (msg.id, msg.ts);
        self.requests.push(Request::Append { room: room.to_string(), msg });
        self.appended += 1;
        self.pending.push_back(Pending::Post(PendingPost { seq: self.appended, room, id, ts, json, sender }));
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
        while self.pending.front().is_some_and(|p| p.seq() <= upto) {
            let post = match self.pending.pop_front() {
                Some(Pending::Post(post)) => post,
                Some(Pending::Delete { room, id, author, .. }) => {
                    self.on_delete_committed(&room, id, author, result);
                    continue;
                }
                None => break,
            };
            // A shared post's flight ended when Redis answered it.
            if self.mode == Mode::Local
                && let Some((_, serial)) = post.sender
            {
                self.flights.end(serial);
            }
            match result {
                Ok(()) => {
                    committed += 1;
                    let PendingPost { room, id, ts, json, mut sender, .. } = post;
                    // An API request is answered now; members' copies
                    // are theirs only.
                    if sender.is_some_and(|author| self.api_outcome(author, Ok((&room, Some(id))))) {
                        sender = None;
                    }
                    self.broadcast(&room, Ordered { id, ts, json, sender });
                }
                Err(reason) => {
                    log::error!("history commit failed: {reason}");
                    if let Some((key, serial)) = post.sender
                        && !self.api_outcome((key, serial), Err(NotSent::NotStored))
                    {
                        let json = protocol::error_json("unavailable", NotSent::NotStored.text());
                        self.out.push(Outgoing::ToSerial { key, serial, json });
                    }
                }
            }
        }
        committed
    }

    /// A message is stored (or needs no storing): it joins its room's
    /// recent history and goes out to the members.
    fn broadcast(&mut self, room_name: &str, post: Ordered) {
        if let Some(record) = self.directory.get_mut(room_name) {
            // Shared ids run 1, 2, 3... over every process, so
            // the newest is the count (see `Chat::learn_activity`).
            record.messages = match self.mode {
                Mode::Local => record.messages + 1,
                Mode::Shared => record.messages.max(post.id),
            };
            record.last_id = record.last_id.max(post.id);
            record.last_post = Some(post.ts);
        }
        // Commits come in id order: a room whose history
        // already holds this id had it from a read that
        // overtook the commit (a shared room's welcome read),
        // and its members had it in their welcome.
        if let Some(&slot) = self.index.get(room_name)
            && let Some(room) = self.live.get_mut(slot)
            && room.recent.back().is_none_or(|(newest, _)| *newest < post.id)
        {
            room.remember(post.id, post.json.clone());
            let author = post.sender;
            self.out.push(Outgoing::Room { room: slot, json: post.json, is_message: true, except: None, author });
        }
    }

    /// A member's connection closed.
    pub fn leave(&mut self, m: Membership) {
        self.flights.forget(m.serial);
        let Some(room) = self.live.get_mut(m.room) else { return };
        if let Some(name) = room.remove(m.slot) {
            room.left.push(name);
            if room.members.is_empty() && self.mode == Mode::Shared {
                self.handoffs.push(Handoff::LastMemberLeft { room: room.name.to_string() });
            }
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
            // still committing; a shared room always rereads the shared history.
            if self.mode == Mode::Local && room.loaded && room.committed_id == room.last_id {
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
        // Shared mode: each of these rooms with the names of its local members.
        let mut changed = HashMap::new();
        for slot in std::mem::take(&mut self.presence_dirty) {
            let Some(room) = self.live.get_mut(slot) else { continue };
            room.presence_queued = false;
            let joined = std::mem::take(&mut room.joined);
            let left = std::mem::take(&mut room.left);
            let count = room.members.len() + self.elsewhere.names(&room.name).len();
            if self.mode == Mode::Shared {
                let names = room.members.iter().map(|(_, m)| m.name.to_string()).collect();
                changed.insert(room.name.to_string(), names);
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
        if !changed.is_empty() {
            self.handoffs.push(Handoff::Presence { rooms: changed });
        }
    }

    /// How many more messages member `m` may send before its connection
    /// must not be read (0: leave it unread until some posts complete).
    /// Every message counts, not only posts: the bound on what is decoded
    /// ahead must hold whatever the messages turn out to be.
    pub fn read_allowance(&self, m: &Membership) -> usize {
        self.flights.allowance(m.serial, m.room)
    }

    /// Members of live room `slot` that receive broadcasts: (key) of each welcomed member.
    pub fn recipients(&self, slot: usize) -> impl Iterator<Item = usize> + '_ {
        self.live.get(slot).into_iter().flat_map(|r| r.members.iter().filter(|(_, m)| m.welcomed).map(|(_, m)| m.key))
    }

    /// Whether something is waiting for the end of a turn (presence frames,
    /// storage requests, deliveries, handoffs): the loop must not sleep on it.
    pub fn has_work(&self) -> bool {
        !self.presence_dirty.is_empty()
            || !self.requests.is_empty()
            || !self.out.is_empty()
            || !self.handoffs.is_empty()
    }

    /// Live rooms and their members, for the gauges.
    pub fn counts(&self) -> (usize, usize) {
        (self.live.len(), self.live.iter().map(|(_, r)| r.members.len()).sum())
    }

    /// The online count and names of `room`: its members here (none when
    /// it is not live) and those elsewhere.
    pub fn online(&self, room: &str, limit: usize) -> (usize, Vec<String>) {
        let mut names: Vec<String> = match self.index.get(room).and_then(|&s| self.live.get(s)) {
            Some(r) => r.online_names(limit).into_iter().map(str::to_string).collect(),
            None => Vec::new(),
        };
        let local = self.index.get(room).and_then(|&s| self.live.get(s)).map_or(0, |r| r.members.len());
        let elsewhere = self.elsewhere.names(room);
        names.extend(elsewhere.iter().take(limit.saturating_sub(names.len())).cloned());
        (local + elsewhere.len(), names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Chat {
        Chat::new(&Config::defaults(), Vec::new(), Mode::Local)
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
    fn posts_in_flight_stop_reading_until_their_commit() {
        let mut cfg = Config::defaults();
        cfg.max_posts_in_flight = 2;
        cfg.rate_limit = 0;
        let mut chat = Chat::new(&cfg, Vec::new(), Mode::Local);
        let now = Instant::now();
        let mut a = chat.join((1, 1), "r", Some("a"), None, now).unwrap();
        let b = chat.join((2, 2), "r", Some("b"), None, now).unwrap();
        assert_eq!(chat.read_allowance(&a), 2);
        chat.on_text(1, &mut a, "not json", now);
        assert_eq!(chat.read_allowance(&a), 2, "a refused message is not in flight");
        chat.on_text(1, &mut a, r#"{"message": "1"}"#, now);
        chat.on_text(1, &mut a, r#"{"message": "2"}"#, now);
        assert_eq!(chat.read_allowance(&a), 0, "two posts wait for storage: not read");
        assert_eq!(chat.read_allowance(&b), 2, "another member is read as before");
        chat.on_committed(1, &Ok(()));
        assert_eq!(chat.read_allowance(&a), 1, "one committed: one more may come");
        chat.on_committed(2, &Err("disk full".into()));
        assert_eq!(chat.read_allowance(&a), 2, "a failed commit completes the post too");
        // A leaver's posts stop counting; their late commit changes nothing.
        chat.on_text(1, &mut a, r#"{"message": "3"}"#, now);
        chat.leave(a);
        chat.on_committed(3, &Ok(()));
        assert_eq!(chat.read_allowance(&b), 2);
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
