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

use super::{Chat, Handoff, Mode, NotSent, Outgoing, PostIntent, now_ms, protocol};
use crate::storage::StoredMessage;

impl Chat {
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

    /// If `author` is a parked API request, answers it: posted in a room
    /// as an id (`None`: posted before, by a retry whose answer was lost,
    /// id unknown), or not sent. Returns whether it was one (a member's
    /// post is acknowledged by its copy of the message instead).
    pub(super) fn api_outcome(
        &mut self,
        (key, serial): (usize, u64),
        outcome: Result<(&str, Option<u64>), NotSent>,
    ) -> bool {
        if !self.api_authors.remove(&serial) {
            return false;
        }
        let (status, body) = match outcome {
            Ok((room, id)) => (201, json!({"room": room, "id": id})),
            Err(why) => (503, json!({"error": "unavailable", "message": why.text()})),
        };
        self.out.push(Outgoing::Http { key, serial, status, body: body.to_string().into_bytes() });
        true
    }

    /// The sharer stored a post as `id` (`None`: stored before, id
    /// unknown). Returns whether the post was an API request's, now
    /// answered; a member's post is acknowledged by its copy instead.
    pub fn api_posted(&mut self, author: (usize, u64), room: &str, id: Option<u64>) -> bool {
        self.api_outcome(author, Ok((room, id)))
    }
}
