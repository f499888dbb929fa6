//! Rooms shared with other processes: what the chat hands out, and what it
//! takes back, when it does not number its own posts.
//!
//! On its own ([`Mode::Local`]) the chat gives each post the room's next
//! id, stores it, and broadcasts it once the commit is done. When several
//! processes serve the same rooms ([`Mode::Shared`]), a room's order must
//! be one order for all of them, so something outside the chat keeps it:
//! the *sharer* (with `--redis`, the `cluster` module). The chat then
//!
//! - hands each post out as a [`PostIntent`] (no id yet), and takes every
//!   message back, ours and the other processes', numbered and in order,
//!   through [`Chat::accept_ordered`]; from there a message goes the usual
//!   way: stored, then broadcast after the commit (or at once when the
//!   chat keeps no copies, [`Chat::without_copies`]);
//! - reads history from the sharer instead of its own storage
//!   ([`Handoff::Read`], answered with [`Chat::on_messages`]), so a welcome
//!   or a scroll-back is the same on every process;
//! - counts the members the other processes report
//!   ([`Chat::on_members_elsewhere`]) in each room's presence, and hands out
//!   its own ([`Handoff::Presence`], [`Chat::local_members`]).
//!
//! The sharer takes the handoffs ([`Chat::take_handoffs`]) at least once per
//! loop turn, in the order the chat made them. The chat knows nothing of
//! how the sharer talks to the other processes.

use std::collections::HashMap;
use std::rc::Rc;

use super::{Chat, Ordered, Outgoing, protocol};
use crate::storage::{ReadRange, RoomRecord, StoredMessage};

/// Who numbers the posts of the chat's rooms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// This process alone: the chat gives ids and reads its own storage.
    Local,
    /// Shared with other processes: ids and history come from the sharer.
    Shared,
}

/// A member's post that the chat has checked (length, rate, name) but
/// cannot number: the sharer gives it its id and hands it back through
/// [`Chat::accept_ordered`], or calls [`Chat::refuse_post`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostIntent {
    /// The room.
    pub room: Rc<str>,
    /// The message event after its id ([`protocol::push_message_suffix`]:
    /// the poster's name in the room, the text, when it was posted): the
    /// sharer puts the room and the id in front
    /// ([`protocol::push_message_prefix`]).
    pub suffix: String,
    /// The highest id this process knew for the room when it was posted:
    /// the post's id must be above it.
    pub known_last: u64,
    /// The poster's connection (key, serial): its copy of the message is
    /// its acknowledgement.
    pub author: (usize, u64),
}

/// What the chat tells the sharer, in the order it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// A room entered the directory here (a first join, or a message for a
    /// room this process had not seen).
    RoomCreated {
        /// The room.
        room: String,
        /// When, in milliseconds since the epoch.
        created: u64,
    },
    /// A room got its first local member: it is live here from now on.
    FirstMember {
        /// The room.
        room: String,
    },
    /// A room's last local member left: it is no longer live here.
    LastMemberLeft {
        /// The room.
        room: String,
    },
    /// A post waiting for its id.
    Post(PostIntent),
    /// The server API deletes message `id` of `room`: the sharer checks
    /// the id exists, records the deletion and tells every process
    /// ([`Chat::apply_delete`]); `author` (the API request) is answered
    /// through [`Chat::api_deleted`].
    Delete {
        /// The room.
        room: String,
        /// The message's id.
        id: u64,
        /// The API request's connection (key, serial).
        author: (usize, u64),
    },
    /// A kick, for the members of `room` on the other processes.
    Kick {
        /// The room.
        room: String,
        /// Whom.
        target: super::KickTarget,
        /// The close frame's reason.
        reason: String,
        /// Ban the kicked until then (ms since the epoch).
        until: Option<u64>,
    },
    /// A ban to keep, and to tell the other processes.
    Ban {
        /// The room.
        room: String,
        /// Whom (`auth::bans`).
        who: String,
        /// The ban.
        ban: crate::auth::bans::Ban,
    },
    /// A ban lifted.
    Unban {
        /// The room.
        room: String,
        /// Whom.
        who: String,
    },
    /// History to read; the answer goes to [`Chat::on_messages`] with the
    /// same ticket.
    Read {
        /// Matches the answer to whoever asked.
        ticket: u64,
        /// Which messages.
        range: ReadRange,
    },
    /// Presence frames went out this turn for these rooms (their members
    /// here or elsewhere changed): each with the names of its local
    /// members now, for the other processes.
    Presence {
        /// Room → names of its local members.
        rooms: HashMap<String, Vec<String>>,
    },
}

/// A message in its shared order, as the sharer hands it back: numbered,
/// and already the JSON event members receive (every process sends a
/// message's event as its author's process built it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderedMessage {
    /// Its id in the room.
    pub id: u64,
    /// When it was posted, in milliseconds since the epoch.
    pub ts: u64,
    /// The message event ([`protocol::message_json`]).
    pub json: Rc<str>,
    /// Whether `json` is already flagged `"unconfirmed":true`.
    pub flagged: bool,
}

impl OrderedMessage {
    /// The event for a stored message of `room`.
    pub fn from_stored(room: &str, msg: &StoredMessage) -> OrderedMessage {
        let json = protocol::stored_json(room, msg);
        OrderedMessage { id: msg.id, ts: msg.ts, json: json.into(), flagged: false }
    }
}

/// Why a post handed out as a [`PostIntent`] was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotSent {
    /// The sharer cannot reach the others and has no room left to wait.
    Unreachable,
    /// The sharer tried, and the post was refused.
    Refused,
    /// Storage could not commit it (a post numbered here).
    NotStored,
}

impl NotSent {
    /// What the author is told.
    pub fn text(self) -> &'static str {
        match self {
            NotSent::Unreachable => "the chat backend is unreachable; this message was not sent",
            NotSent::Refused => "the chat backend refused this message; it was not sent",
            NotSent::NotStored => "the message could not be stored and was not sent",
        }
    }
}

impl Chat {
    /// Takes what the chat handed out since the last call, oldest first
    /// (always empty in [`Mode::Local`]).
    pub fn take_handoffs(&mut self) -> Vec<Handoff> {
        std::mem::take(&mut self.handoffs)
    }

    /// Makes sure `room` is in the directory (and in storage): a room
    /// another process created, say, whose message has just come.
    pub fn ensure_room(&mut self, room: &str) {
        self.ensure_directory(room);
    }

    /// Rooms the other processes know, as (name, created ms): listed in the
    /// directory, without a storage row until a message arrives. Names
    /// that are not valid room names are skipped.
    pub fn learn_rooms(&mut self, rooms: Vec<(String, u64)>) {
        for (name, created) in rooms {
            if crate::route::valid_room_name(&name) && !self.directory.contains_key(&name) {
                self.directory
                    .insert(name.clone(), RoomRecord { name, created, last_post: None, messages: 0, last_id: 0 });
            }
        }
    }

    /// The highest id accepted for `room` so far (0 for none): the sharer
    /// hands over the room's messages from the next one on.
    pub fn last_id(&self, room: &str) -> u64 {
        self.directory.get(room).map_or(0, |r| r.last_id)
    }

    /// The room's newest message in the shared history, as another
    /// process may have posted it (for `/api/rooms`): `id` is also the
    /// room's message count, since shared ids run 1, 2, 3... over every
    /// process, and `ts` its last post. Never moves the figures back, and
    /// leaves [`Chat::last_id`] alone: what has been handed over is a
    /// different question from what exists.
    pub fn learn_activity(&mut self, room: &str, id: u64, ts: u64) {
        if let Some(record) = self.directory.get_mut(room) {
            record.messages = record.messages.max(id);
            record.last_post = record.last_post.max(Some(ts));
        }
    }

    /// A room's welcome history was read up to its newest message `id`:
    /// its order carries on from there. While a room has no members here
    /// the sharer may stop handing over its messages, so [`Chat::last_id`]
    /// falls behind; the members' history now comes from the read, so the
    /// messages up to `id` must not be handed over (again) after it.
    pub(super) fn learn_newest(&mut self, room: &str, id: u64, ts: u64) {
        self.learn_activity(room, id, ts);
        if let Some(record) = self.directory.get_mut(room) {
            record.last_id = record.last_id.max(id);
        }
        if let Some(&slot) = self.index.get(room)
            && let Some(live) = self.live.get_mut(slot)
        {
            live.last_id = live.last_id.max(id);
        }
    }

    /// Shared rooms keep no copy of their messages here: with no data
    /// file the copy would be in memory, and history is read from the
    /// sharer anyway, so nothing would ever read it. A message is then
    /// broadcast as soon as it is accepted.
    pub fn without_copies(&mut self) {
        self.copies = false;
    }

    /// A message in its shared order: the caller hands each room's
    /// messages over once each, in id order (above [`Chat::last_id`]).
    /// `author` is the poster's connection when it is ours. The message is
    /// stored, then broadcast once the commit is done (at once without
    /// copies); `unconfirmed` flags it so (`--redis-wait`: fewer replicas
    /// than asked have it).
    pub fn accept_ordered(&mut self, room: &str, msg: OrderedMessage, author: Option<(usize, u64)>, unconfirmed: bool) {
        let OrderedMessage { id, ts, mut json, flagged } = msg;
        // What to store, before anything moves: a message that cannot be
        // stored must not advance the room either.
        let stored = if self.copies {
            let Some(event) = protocol::parse_message_event(json.as_bytes()) else {
                log::error!("room {room}: message {id} is not a message event; not stored");
                return;
            };
            let (username, text) = (event.username.into_owned(), event.message.into_owned());
            Some(StoredMessage { id, ts, username, text, verified: event.verified })
        } else {
            None
        };
        if let Some(record) = self.directory.get_mut(room) {
            record.last_id = record.last_id.max(id);
        }
        if let Some(&slot) = self.index.get(room)
            && let Some(live) = self.live.get_mut(slot)
        {
            live.last_id = live.last_id.max(id);
        }
        if unconfirmed && !flagged {
            json = protocol::unconfirmed_json(&json).into();
        }
        match stored {
            Some(stored) => self.enqueue_commit(Rc::from(room), stored, json, author),
            None => self.broadcast(room, Ordered { id, ts, json, sender: author }),
        }
    }

    /// Tells the members of `room` (if it is live here) that the messages
    /// before `resumes_at` that they have not seen are lost.
    pub fn announce_gap(&mut self, room: &str, resumes_at: u64) {
        if let Some(&slot) = self.index.get(room) {
            let json: Rc<str> = protocol::gap_json(room, resumes_at).into();
            self.out.push(Outgoing::Room { room: slot, json, is_message: false, except: None, author: None });
        }
    }

    /// Redis answered a post of `author` (posted, or applied before): it
    /// no longer counts against the author's `--max-posts-in-flight`.
    pub fn post_acknowledged(&mut self, (_, serial): (usize, u64)) {
        self.flights.end(serial);
    }

    /// Tells a post's author that it was not sent (which also ends its flight).
    pub fn refuse_post(&mut self, (key, serial): (usize, u64), why: NotSent) {
        self.flights.end(serial);
        if self.api_outcome((key, serial), Err(why)) {
            return;
        }
        let json = protocol::error_json("unavailable", why.text());
        self.out.push(Outgoing::ToSerial { key, serial, json });
    }

    /// Members of `room` on other processes joined or left. They count in
    /// the room's online figures; in a room live here they also become
    /// join and leave events in this turn's presence frame.
    pub fn on_members_elsewhere(&mut self, room: &str, joined: Vec<String>, left: Vec<String>) {
        self.elsewhere.update(room, &joined, &left);
        let Some(&slot) = self.index.get(room) else { return };
        let Some(live) = self.live.get_mut(slot) else { return };
        // A guest avoids names held elsewhere as it joins, so a name that
        // arrives held by a guest here is a signed-in user's (or, rarely,
        // two guests joined at once): the guest here takes a suffix.
        for name in &joined {
            if let Some((from, to)) = live.displace_guest(name) {
                let json: Rc<str> = protocol::rename_json(&live.name, &from, &to).into();
                self.out.push(Outgoing::Room { room: slot, json, is_message: false, except: None, author: None });
            }
        }
        // usize::MAX: no local connection to spare from its own join event.
        live.joined.extend(joined.into_iter().map(|n| (n, usize::MAX)));
        live.left.extend(left);
        self.queue_presence(slot);
    }

    /// Whether `room` is live here (it has members on this process, or had
    /// lately).
    pub fn is_live(&self, room: &str) -> bool {
        self.index.contains_key(room)
    }

    /// Every room live here with the names of its local members.
    pub fn local_members(&self) -> HashMap<String, Vec<String>> {
        self.live
            .iter()
            .map(|(_, r)| (r.name.to_string(), r.online_names(usize::MAX).into_iter().map(str::to_string).collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::config::Config;

    fn chat(mode: Mode) -> Chat {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), mode);
        chat.take_handoffs();
        chat
    }

    /// The FirstMember and LastMemberLeft handoffs, in order.
    fn live_changes(chat: &mut Chat) -> Vec<Handoff> {
        chat.take_handoffs()
            .into_iter()
            .filter(|h| matches!(h, Handoff::FirstMember { .. } | Handoff::LastMemberLeft { .. }))
            .collect()
    }

    #[test]
    fn first_and_last_local_members_are_handed_out_exactly_then() {
        let mut chat = chat(Mode::Shared);
        let now = Instant::now();
        let first = Handoff::FirstMember { room: "r".into() };
        let last = Handoff::LastMemberLeft { room: "r".into() };
        let a = chat.join((1, 1), "r", Some("a"), None, now).unwrap();
        assert_eq!(live_changes(&mut chat), vec![first.clone()]);
        let b = chat.join((2, 2), "r", Some("b"), None, now).unwrap();
        chat.leave(a);
        assert_eq!(live_changes(&mut chat), vec![], "the room had a member all along");
        chat.leave(b);
        assert_eq!(live_changes(&mut chat), vec![last.clone()]);
        // The room comes back: a new first member.
        let c = chat.join((3, 3), "r", Some("c"), None, now).unwrap();
        chat.leave(c);
        assert_eq!(live_changes(&mut chat), vec![first, last]);

        // A join refused for a full room never made the room live.
        let mut cfg = Config::defaults();
        cfg.max_room_members = 0;
        let mut full = Chat::new(&cfg, Vec::new(), Mode::Shared);
        assert!(full.join((1, 1), "r", Some("a"), None, now).is_none());
        assert_eq!(live_changes(&mut full), vec![]);
    }

    #[test]
    fn a_local_chat_hands_out_nothing() {
        let mut chat = chat(Mode::Local);
        let now = Instant::now();
        let mut a = chat.join((1, 1), "r", Some("a"), None, now).unwrap();
        chat.on_text(1, &mut a, r#"{"message": "hi"}"#, now);
        chat.flush_presence();
        chat.leave(a);
        assert_eq!(chat.take_handoffs(), vec![]);
    }

    #[test]
    fn a_shared_post_is_an_intent_until_it_comes_back_in_order() {
        let mut chat = chat(Mode::Shared);
        let now = Instant::now();
        let mut a = chat.join((1, 7), "r", Some("a"), None, now).unwrap();
        chat.take_handoffs();
        chat.requests.clear();
        chat.on_text(1, &mut a, r#"{"message": "hi"}"#, now);
        let intent = match chat.take_handoffs().as_slice() {
            [Handoff::Post(intent)] => intent.clone(),
            other => panic!("expected one post, got {other:?}"),
        };
        assert_eq!((&*intent.room, intent.author), ("r", (1, 7)));
        assert!(chat.requests.is_empty(), "nothing is stored before it has an id");

        let mut json = String::new();
        protocol::push_message_prefix(&mut json, "r");
        json.push('1');
        json.push_str(&intent.suffix);
        let event = protocol::parse_message_event(json.as_bytes()).expect("the halves make an event");
        assert_eq!((&*event.username, &*event.message), ("a", "hi"));
        let msg = StoredMessage { id: 1, ts: event.ts, username: "a".into(), text: "hi".into(), verified: false };
        chat.accept_ordered("r", OrderedMessage::from_stored("r", &msg), Some(intent.author), false);
        assert_eq!(chat.last_id("r"), 1);
        assert!(
            matches!(chat.requests.as_slice(), [crate::storage::Request::Append { msg: stored, .. }] if *stored == msg),
            "stored as posted: {:?}",
            chat.requests
        );
        assert_eq!(messages_out(&mut chat), vec![], "broadcast only once stored");
        chat.on_committed(1, &Ok(()));
        assert_eq!(messages_out(&mut chat), vec![Some((1, 7))], "the author's copy is its acknowledgement");
    }

    /// The authors of the messages broadcast since the last call.
    fn messages_out(chat: &mut Chat) -> Vec<Option<(usize, u64)>> {
        chat.out
            .drain(..)
            .filter_map(|o| match o {
                Outgoing::Room { is_message: true, author, .. } => Some(author),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn without_copies_a_shared_message_is_broadcast_as_it_came_and_stored_nowhere() {
        let mut chat = chat(Mode::Shared);
        chat.without_copies();
        let now = Instant::now();
        chat.join((1, 7), "r", Some("a"), None, now).unwrap();
        chat.out.clear();
        chat.requests.clear();
        let json: Rc<str> = protocol::message_json("r", 1, "b", "as published", 5).into();
        chat.accept_ordered("r", OrderedMessage { id: 1, ts: 5, json: json.clone(), flagged: false }, None, false);
        let out: Vec<Rc<str>> = chat
            .out
            .drain(..)
            .filter_map(|o| match o {
                Outgoing::Room { is_message: true, json, .. } => Some(json),
                _ => None,
            })
            .collect();
        assert!(matches!(out.as_slice(), [sent] if Rc::ptr_eq(sent, &json)), "the very event that came: {out:?}");
        assert!(chat.requests.is_empty());
        assert_eq!(chat.last_id("r"), 1);
        // Flagged on the way in, once.
        let flagged = OrderedMessage { id: 2, ts: 6, json: protocol::unconfirmed_json(&json).into(), flagged: true };
        chat.accept_ordered("r", flagged.clone(), None, true);
        chat.accept_ordered("r", OrderedMessage { id: 3, ..OrderedMessage::from_stored("r", &stored(3)) }, None, true);
        for o in chat.out.drain(..) {
            if let Outgoing::Room { is_message: true, json, .. } = o {
                assert_eq!(json.matches("unconfirmed").count(), 1, "{json}");
            }
        }
    }

    fn stored(id: u64) -> StoredMessage {
        StoredMessage { id, ts: 1, username: "a".into(), text: "hi".into(), verified: false }
    }

    #[test]
    fn a_shared_post_is_in_flight_until_redis_answers_or_refuses_it() {
        let mut cfg = Config::defaults();
        cfg.max_posts_in_flight = 1;
        let mut chat = Chat::new(&cfg, Vec::new(), Mode::Shared);
        let now = Instant::now();
        let mut a = chat.join((1, 7), "r", Some("a"), None, now).unwrap();
        chat.on_text(1, &mut a, r#"{"message": "hi"}"#, now);
        assert_eq!(chat.read_allowance(&a), 0, "waiting for Redis");
        chat.post_acknowledged((1, 7));
        assert_eq!(chat.read_allowance(&a), 1, "Redis answered: the storage commit is not waited for");
        chat.accept_ordered("r", OrderedMessage::from_stored("r", &stored(1)), Some((1, 7)), false);
        chat.on_committed(1, &Ok(()));
        chat.on_text(1, &mut a, r#"{"message": "again"}"#, now);
        assert_eq!(chat.read_allowance(&a), 0, "the commit above did not count twice");
        chat.refuse_post((1, 7), NotSent::Unreachable);
        assert_eq!(chat.read_allowance(&a), 1, "a refused post is complete");
    }

    #[test]
    fn members_elsewhere_count_in_the_room_and_in_its_presence() {
        let mut chat = chat(Mode::Shared);
        let now = Instant::now();
        chat.on_members_elsewhere("quiet", vec!["x".into()], vec![]);
        assert_eq!(chat.online("quiet", 10), (1, vec!["x".to_string()]), "not live here, still counted");

        chat.join((1, 1), "r", Some("a"), None, now).unwrap();
        chat.flush_presence();
        chat.out.clear();
        chat.take_handoffs();
        chat.on_members_elsewhere("r", vec!["b".into(), "c".into()], vec![]);
        chat.flush_presence();
        let frames: Vec<serde_json::Value> = chat
            .out
            .drain(..)
            .filter_map(|o| match o {
                Outgoing::Room { json, .. } => serde_json::from_str(&json).ok(),
                _ => None,
            })
            .collect();
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["joined"], serde_json::json!(["b", "c"]));
        assert_eq!(frames[0]["online_count"], 3);
        let presence = chat.take_handoffs();
        let rooms = HashMap::from([("r".to_string(), vec!["a".to_string()])]);
        assert_eq!(presence, vec![Handoff::Presence { rooms }], "our own members, for the others");
    }
}
