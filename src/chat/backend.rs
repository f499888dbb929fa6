//! Posts from a site's backend (the server API's `POST
//! /api/rooms/<room>/messages`), rather than from a member.
//!
//! Such a post goes the way a member's does (numbered here or by the
//! sharer, stored, broadcast in id order, `"verified": true` since only a
//! holder of an API key can make one), with two differences: its room need
//! not be live (nobody has to be listening), and its author is an HTTP
//! request parked until the outcome, not a member whose copy of the
//! message is its acknowledgement. The request's connection (key, serial)
//! stands as the author all the way through, and [`Chat::api_outcome`]
//! turns the outcome into the request's answer: 201 with the id, or 503.

use std::rc::Rc;

use serde_json::json;

use super::{Chat, Handoff, Membership, Mode, NotSent, Outgoing, Pending, PostIntent, now_ms, protocol};
use crate::auth::bans::Ban;
use crate::storage::{BanRecord, Request, StoredMessage};

/// Whom a kick names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KickTarget {
    /// Every member shown under this name.
    #[serde(rename = "username")]
    Name(String),
    /// Every member whose token's `sub` is this.
    #[serde(rename = "user")]
    User(String),
}

impl Chat {
    /// The members of `room` connected here that `target` names: each
    /// one's connection (key, serial) and token `sub` (`None`: a guest).
    pub fn kick_targets(&self, room: &str, target: &KickTarget) -> Vec<(usize, u64, Option<Rc<String>>)> {
        let Some(live) = self.index.get(room).and_then(|&slot| self.live.get(slot)) else { return Vec::new() };
        live.members
            .iter()
            .map(|(_, m)| m)
            .filter(|m| match target {
                KickTarget::Name(name) => *m.name == **name,
                KickTarget::User(sub) => m.sub.as_deref() == Some(sub),
            })
            .map(|m| (m.key, m.serial, m.sub.clone()))
            .collect()
    }

    /// The members of `room` connected here: (key, serial, token `sub`).
    pub fn members_of(&self, room: &str) -> Vec<(usize, u64, Option<Rc<String>>)> {
        let Some(live) = self.index.get(room).and_then(|&slot| self.live.get(slot)) else { return Vec::new() };
        live.members.iter().map(|(_, m)| (m.key, m.serial, m.sub.clone())).collect()
    }

    /// A kick made here (the server API), which has closed the members it
    /// names here: with Redis, the other processes close theirs.
    pub fn kick_elsewhere(&mut self, room: &str, target: KickTarget, reason: &str, until: Option<u64>) {
        if self.mode == Mode::Shared {
            self.handoffs.push(Handoff::Kick { room: room.to_string(), target, reason: reason.to_string(), until });
        }
    }

    /// A kick made on another process: the members it names here go
    /// (the reactor closes them, [`Outgoing::Kick`]).
    pub fn kick_here(&mut self, room: &str, target: &KickTarget, reason: &str, until: Option<u64>) {
        for (key, serial, sub) in self.kick_targets(room, target) {
            let (room, reason) = (room.to_string(), reason.to_string());
            self.out.push(Outgoing::Kick { key, serial, sub, room, reason, until });
        }
    }

    /// Bans `who` from `room` until `ban.until`: in the table every join
    /// is checked against, and where bans are kept (SQLite; with Redis,
    /// Redis, which tells the other processes).
    pub fn ban(&mut self, room: &str, who: &str, ban: Ban) {
        self.bans.insert(room, who, ban.clone());
        let (room, who) = (room.to_string(), who.to_string());
        match self.mode {
            Mode::Local => {
                let record = BanRecord { room, who, until: ban.until, reason: ban.reason };
                self.requests.push(Request::Ban(record));
            }
            Mode::Shared => self.handoffs.push(Handoff::Ban { room, who, ban }),
        }
    }

    /// Lifts `who`'s ban from `room`; whether there was one here.
    pub fn unban(&mut self, room: &str, who: &str) -> bool {
        let lifted = self.bans.lift(room, who);
        let (room, who) = (room.to_string(), who.to_string());
        match self.mode {
            Mode::Local if lifted => self.requests.push(Request::Unban { room, who }),
            Mode::Local => {}
            Mode::Shared => self.handoffs.push(Handoff::Unban { room, who }),
        }
        lifted
    }

    /// The sharer read `room`'s bans (as this process started to hear
    /// the room): they join the table, and the members who came in before
    /// they were known are checked against them.
    pub fn bans_loaded(&mut self, room: &str, bans: Vec<(String, Ban)>) {
        for (who, ban) in bans {
            self.bans.insert(room, &who, ban);
        }
        self.out.push(Outgoing::CheckBans { room: room.to_string() });
    }

    /// Posts `text` to `room` under `name` for the API request on
    /// connection `author`; the room is created if it does not exist. The
    /// caller has checked the room name, the text's length and the name.
    pub fn post_from_api(&mut self, room: &str, name: &str, text: &str, author: (usize, u64)) {
        self.ensure_directory(room);
        self.api_authors.insert(author.1);
        if self.mode == Mode::Shared {
            let known_last = self.directory.get(room).map_or(0, |r| r.last_id);
            let mut suffix = String::with_capacity(48 + name.len() + text.len());
            protocol::push_message_suffix(&mut suffix, name, text, now_ms());
            protocol::push_verified(&mut suffix);
            let room = Rc::from(room);
            self.handoffs.push(Handoff::Post(PostIntent { room, suffix, known_last, author }));
            return;
        }
        // The next id: the live room's if it is live, else the directory's
        // (which a room going live starts from).
        let live = self.index.get(room).and_then(|&slot| self.live.get_mut(slot));
        let id = match live {
            Some(live) => {
                live.last_id += 1;
                live.last_id
            }
            None => self.directory.get(room).map_or(0, |r| r.last_id) + 1,
        };
        if let Some(record) = self.directory.get_mut(room) {
            record.last_id = record.last_id.max(id);
        }
        let msg =
            StoredMessage { id, ts: now_ms(), username: name.to_string(), text: text.to_string(), verified: true };
        let json: Rc<str> = protocol::stored_json(room, &msg).into();
        self.enqueue_commit(Rc::from(room), msg, json, Some(author));
    }

    /// A moderator's frame ([`protocol::Command`]) from member `key`: the
    /// server API's delete or kick, in the member's room. Anyone whose
    /// token does not moderate the room gets a `forbidden` error.
    pub(super) fn on_command(&mut self, key: usize, m: &Membership, command: protocol::Command) {
        if !m.moderator {
            let json = protocol::error_json("forbidden", "only this room's moderators may delete messages or kick");
            return self.out.push(Outgoing::To { key, json });
        }
        let Some(room) = self.live.get(m.room).map(|r| r.name.to_string()) else { return };
        match command {
            protocol::Command::Delete { id } => {
                let author = (key, m.serial);
                if self.mode == Mode::Shared {
                    self.handoffs.push(Handoff::Delete { room, id, author });
                } else if self.directory.get(&room).is_some_and(|r| (1..=r.last_id).contains(&id)) {
                    self.enqueue_delete(Rc::from(room.as_str()), id, None);
                } else {
                    self.api_deleted(author, Ok(false));
                }
            }
            protocol::Command::Kick { username, ban_seconds, reason } => {
                let until = ban_seconds.filter(|&s| s > 0).map(|s| now_ms().saturating_add(s.saturating_mul(1000)));
                let (target, reason) = (KickTarget::Name(username), reason.unwrap_or_default());
                self.kick_here(&room, &target, &reason, until);
                self.kick_elsewhere(&room, target, &reason, until);
            }
        }
    }

    /// The server API deletes message `id` of `room` for the request on
    /// connection `author`. Returns false when there is no such message
    /// here to delete (404); with Redis the sharer decides, and answers
    /// through [`Chat::api_deleted`]. Deleting a message twice is fine.
    pub fn delete_from_api(&mut self, room: &str, id: u64, author: (usize, u64)) -> bool {
        if self.mode == Mode::Shared {
            self.api_authors.insert(author.1);
            self.handoffs.push(Handoff::Delete { room: room.to_string(), id, author });
            return true;
        }
        if !self.directory.get(room).is_some_and(|r| (1..=r.last_id).contains(&id)) {
            return false;
        }
        self.api_authors.insert(author.1);
        self.enqueue_delete(Rc::from(room), id, Some(author));
        true
    }

    /// Hands a delete to storage, numbered like a post (`on_committed`
    /// then calls [`Chat::apply_delete`] and answers its author).
    pub(super) fn enqueue_delete(&mut self, room: Rc<str>, id: u64, author: Option<(usize, u64)>) {
        self.requests.push(Request::Delete { room: room.to_string(), id });
        self.appended += 1;
        self.pending.push_back(Pending::Delete { seq: self.appended, room, id, author });
    }

    /// Storage committed (or failed) a delete. Here (`Mode::Local`) that
    /// is when it takes effect; a shared copy's delete took effect when
    /// the sharer said so.
    pub(super) fn on_delete_committed(
        &mut self,
        room: &str,
        id: u64,
        author: Option<(usize, u64)>,
        result: &Result<(), String>,
    ) {
        match result {
            Ok(()) => {
                if self.mode == Mode::Local {
                    self.apply_delete(room, id);
                }
                if let Some(author) = author {
                    self.api_deleted(author, Ok(true));
                }
            }
            Err(reason) => {
                log::error!("room {room}: deleting message {id} failed: {reason}");
                if let Some(author) = author {
                    self.api_deleted(author, Err(NotSent::NotStored));
                }
            }
        }
    }

    /// Whether messages are copied to disk here (shared mode with a data
    /// file), so that deletions must reach the copies too.
    pub fn keeps_copies(&self) -> bool {
        self.mode == Mode::Shared && self.copies
    }

    /// The sharer's deleted ids of `room`: the copies on disk become
    /// tombstones (idempotent; nothing is sent to members, who read
    /// history from the sharer with the deletions applied).
    pub fn purge_copies(&mut self, room: &str, ids: &[u64]) {
        if self.keeps_copies() {
            for &id in ids {
                self.enqueue_delete(Rc::from(room), id, None);
            }
        }
    }

    /// Message `id` of `room` is deleted (committed here, or told by the
    /// sharer): every copy this process holds becomes its tombstone (the
    /// live room's recent history, a post still waiting for its commit,
    /// and, in shared mode, the local copy on disk), and the room's members
    /// here are told with a `delete` event.
    pub fn apply_delete(&mut self, room: &str, id: u64) {
        let tombstone = |json: &str| {
            let ts = protocol::parse_message_event(json.as_bytes()).map_or(0, |event| event.ts);
            Rc::<str>::from(protocol::tombstone_json(room, id, ts))
        };
        for pending in &mut self.pending {
            if let Pending::Post(post) = pending
                && post.id == id
                && &*post.room == room
            {
                post.json = tombstone(&post.json);
            }
        }
        self.warm.forget(room);
        if self.mode == Mode::Shared && self.copies {
            self.enqueue_delete(Rc::from(room), id, None);
        }
        let Some(&slot) = self.index.get(room) else { return };
        let Some(live) = self.live.get_mut(slot) else { return };
        if let Some((_, json)) = live.recent.iter_mut().find(|(cached, _)| *cached == id) {
            *json = tombstone(json);
        }
        let json: Rc<str> = protocol::delete_json(room, id).into();
        self.out.push(Outgoing::Room { room: slot, json, is_message: false, except: None, author: None });
    }

    /// If `author` is a parked API request, answers it with `status` and
    /// `body`. Returns whether it was one (a member's post is acknowledged
    /// by its copy of the message instead).
    fn answer_api(&mut self, (key, serial): (usize, u64), status: u16, body: Vec<u8>) -> bool {
        if !self.api_authors.remove(&serial) {
            return false;
        }
        self.out.push(Outgoing::Http { key, serial, status, body });
        true
    }

    /// If `author` is a parked API request, answers it: posted in a room
    /// as an id (`None`: posted before, by a retry whose answer was lost,
    /// id unknown), or not sent. Returns whether it was one.
    pub(super) fn api_outcome(&mut self, author: (usize, u64), outcome: Result<(&str, Option<u64>), NotSent>) -> bool {
        let (status, body) = match outcome {
            Ok((room, id)) => (201, json!({"room": room, "id": id})),
            Err(why) => (503, json!({"error": "unavailable", "message": why.text()})),
        };
        self.answer_api(author, status, body.to_string().into_bytes())
    }

    /// The sharer stored a post as `id` (`None`: stored before, id
    /// unknown). Returns whether the post was an API request's, now
    /// answered; a member's post is acknowledged by its copy instead.
    pub fn api_posted(&mut self, author: (usize, u64), room: &str, id: Option<u64>) -> bool {
        self.api_outcome(author, Ok((room, id)))
    }

    /// The outcome of a delete: done (204), no such message (404), or not
    /// done (503) for the server API; for a moderator's frame the `delete`
    /// event is the answer, and an error frame says what went wrong.
    pub fn api_deleted(&mut self, author: (usize, u64), outcome: Result<bool, NotSent>) {
        let (status, body) = match &outcome {
            Ok(true) => (204, Vec::new()),
            Ok(false) => (404, br#"{"error":"not_found","message":"no such message"}"#.to_vec()),
            Err(why) => (503, json!({"error": "unavailable", "message": why.text()}).to_string().into_bytes()),
        };
        if self.answer_api(author, status, body) {
            return;
        }
        let (key, serial) = author;
        let json = match outcome {
            Ok(true) => return,
            Ok(false) => protocol::error_json("not_found", "no such message in this room"),
            Err(why) => protocol::error_json("unavailable", why.text()),
        };
        self.out.push(Outgoing::ToSerial { key, serial, json });
    }
}
