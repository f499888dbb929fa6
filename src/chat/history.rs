//! Reading history: the welcome frame's recent messages, resumes with
//! `?since=`, and the scroll-back API.
//!
//! A live room keeps its newest messages in memory ([`Room::recent`]), so
//! most welcomes and resumes are answered from there. Anything older is
//! read from where history lives: the storage thread, or the sharer when
//! the rooms are shared (see `shared.rs`). A read gets a ticket, and
//! [`Chat::on_messages`] finds out from the ticket why it was made.
//!
//! [`Room::recent`]: super::room::Room::recent

use std::rc::Rc;

use super::{Chat, Handoff, Mode, ONLINE_LIST_MAX, Outgoing, RESUME_MAX, protocol};
use crate::storage::{ReadRange, Request, StoredMessage};

/// Why a history read was made.
#[derive(Debug)]
pub(super) enum PendingRead {
    /// Filling a newly live room's recent history.
    RoomCache { room: Rc<str> },
    /// A member resuming with `?since=` from further back than the cache.
    Resume { room: Rc<str>, key: usize, serial: u64, slot: usize, since: u64 },
    /// `GET /api/rooms/<room>/messages`.
    Http { key: usize, serial: u64, room: String },
}

impl Chat {
    /// Reads history from where it lives: the storage thread, or, when the
    /// rooms are shared, the shared history (the same for every process).
    pub(super) fn read_request(&mut self, ticket: u64, range: ReadRange) {
        match self.mode {
            Mode::Local => self.requests.push(Request::Read { ticket, range }),
            Mode::Shared => self.handoffs.push(Handoff::Read { ticket, range }),
        }
    }

    /// Remembers why a read is made; its answer comes back with the ticket.
    pub(super) fn ticket(&mut self, read: PendingRead) -> u64 {
        self.next_ticket += 1;
        self.reads.insert(self.next_ticket, read);
        self.next_ticket
    }

    /// Sends a member its welcome if the room's history is at hand; else
    /// reads the history and sends it when the answer comes.
    pub(super) fn try_welcome(&mut self, room_slot: usize, slot: usize) {
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
                // Further back than the cache: read the history, at most RESUME_MAX.
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

    /// The welcome frame: who is here (and elsewhere), and `history`.
    fn send_welcome(&mut self, room_slot: usize, slot: usize, history: Vec<Rc<str>>) {
        let Some(room) = self.live.get_mut(room_slot) else { return };
        let Some(member) = room.members.get(slot) else { return };
        let key = member.key;
        let mut online = room.online_names(ONLINE_LIST_MAX);
        let elsewhere = self.elsewhere.names(&room.name);
        let count = room.members.len() + elsewhere.len();
        online.extend(elsewhere.iter().take(ONLINE_LIST_MAX.saturating_sub(online.len())).map(|s| s.as_str()));
        let history: Vec<&str> = history.iter().map(|h| &**h).collect();
        let mut json = protocol::welcome_json(&room.name, &member.name, &online, count, &history, room.committed_id);
        if member.moderator {
            protocol::push_moderator(&mut json);
        }
        if let Some(m) = room.members.get_mut(slot) {
            m.welcomed = true;
            m.since = None;
            m.awaiting_read = false;
        }
        self.out.push(Outgoing::To { key, json });
    }

    /// A history read came back (from storage, or from the sharer).
    pub fn on_messages(&mut self, ticket: u64, messages: Vec<StoredMessage>, oldest_id: Option<u64>) {
        let Some(read) = self.reads.remove(&ticket) else { return };
        match read {
            PendingRead::RoomCache { room } => {
                let Some(&slot) = self.index.get(&room) else { return };
                if self.mode == Mode::Shared
                    && let Some(newest) = messages.last()
                {
                    // The welcome comes from this read, so the room's
                    // shared order carries on from its newest message: a
                    // process that stopped hearing the room (no members
                    // here for a while) must neither replay nor skip what
                    // was posted meanwhile (see `Chat::learn_newest`).
                    self.learn_newest(&room, newest.id, newest.ts);
                }
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
                // History may have lost what was asked for (memory mode keeps
                // the last 1,000 per room): say so before replaying.
                if oldest_id.is_some_and(|oldest| oldest > since + 1) {
                    let oldest = oldest_id.unwrap_or(0);
                    self.out.push(Outgoing::To { key, json: protocol::gap_json(&room, oldest) });
                }
                let mut history: Vec<Rc<str>> = messages.iter().map(|m| event_json(&room, m)).collect();
                // Messages committed while the read was in flight are in the
                // cache, newer than anything the read returned.
                let newest = messages.last().map(|m| m.id).unwrap_or(since);
                history.extend(r.recent.iter().filter(|(id, _)| *id > newest).map(|(_, j)| j.clone()));
                self.send_welcome(room_slot, slot, history);
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

    /// Starts a scroll-back read for the HTTP API.
    pub fn read_for_http(&mut self, key: usize, serial: u64, room: &str, before: u64, limit: usize) {
        let ticket = self.ticket(PendingRead::Http { key, serial, room: room.to_string() });
        self.read_request(ticket, ReadRange::newest(room, limit).before(before));
    }
}

/// The JSON event of a stored message.
pub(super) fn event_json(room: &str, m: &StoredMessage) -> Rc<str> {
    protocol::stored_json(room, m).into()
}
