//! One live room: its members, their names, and its recent history.
//!
//! A room knows nothing about sockets: a member is a connection key and a
//! name. The reactor delivers what the room decides (see `chat/mod.rs`).
//! Recent history is kept as ready-made JSON, so a welcome frame is built by
//! concatenation, never by re-serialising old messages.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

use slab::Slab;

/// A member of a room.
#[derive(Debug)]
pub struct Member {
    /// The connection's slab key.
    pub key: usize,
    /// The connection's serial: a slab key is reused after a close, so an
    /// answer that comes back later checks both.
    pub serial: u64,
    /// The display name, unique in the room (shared with the room's name
    /// set: one allocation per member, not two).
    pub name: Rc<str>,
    /// Has received its welcome frame (and so receives broadcasts).
    pub welcomed: bool,
    /// The `sub` of the verified token it joined with (`None`: a guest).
    /// No guest may hold a verified member's name here. (An `Rc<String>`,
    /// a thin pointer: a guest pays 8 bytes for it, not 16.)
    pub sub: Option<Rc<String>>,
    /// Its token's `moderate` claim names this room.
    pub moderator: bool,
    /// `?since=` asked at the handshake, until the welcome is sent.
    pub since: Option<u64>,
    /// Waiting for a storage read before its welcome.
    pub awaiting_read: bool,
}

impl Member {
    /// Joined with a verified token.
    pub fn verified(&self) -> bool {
        self.sub.is_some()
    }
}

/// A room with at least one member (or one loading).
#[derive(Debug)]
pub struct Room {
    /// The room's name.
    pub name: Rc<str>,
    /// Members by slot.
    pub members: Slab<Member>,
    /// Names in use, for uniqueness.
    names: HashSet<Rc<str>>,
    /// The newest committed messages: (id, event JSON), oldest first.
    pub recent: VecDeque<(u64, Rc<str>)>,
    /// How many messages `recent` keeps.
    recent_cap: usize,
    /// The highest id handed out (messages may still be committing).
    pub last_id: u64,
    /// The highest id committed and broadcast.
    pub committed_id: u64,
    /// `recent` has been filled from storage.
    pub loaded: bool,
    /// Joins of this loop turn (name, connection key), to coalesce into one frame.
    pub joined: Vec<(String, usize)>,
    /// Names that left this loop turn.
    pub left: Vec<String>,
    /// Already queued for the presence pass of this turn.
    pub presence_queued: bool,
}

impl Room {
    /// A new live room whose ids continue after `last_id`.
    pub fn new(name: &str, last_id: u64, recent_cap: usize, loaded: bool) -> Room {
        Room {
            name: Rc::from(name),
            members: Slab::new(),
            names: HashSet::new(),
            recent: VecDeque::with_capacity(recent_cap.min(64)),
            recent_cap,
            last_id,
            committed_id: last_id,
            loaded,
            joined: Vec::new(),
            left: Vec::new(),
            presence_queued: false,
        }
    }

    /// Adds a member under a unique version of `name` (`alice`, `alice-2`,
    /// ...). Returns its slot and the name it got. A user with a token
    /// already here under `name` (another tab of theirs) keeps it: one
    /// person, one name, however many connections.
    /// `elsewhere` are names members on other processes hold in the room
    /// (a guest avoids them too).
    pub fn add(
        &mut self,
        key: usize,
        name: &str,
        since: Option<u64>,
        sub: Option<Rc<String>>,
        elsewhere: &[String],
    ) -> (usize, String) {
        let same_user = sub.as_ref().and_then(|sub| {
            self.members
                .iter()
                .find(|(_, m)| m.sub.as_ref() == Some(sub) && *m.name == *name)
                .map(|(_, m)| m.name.clone())
        });
        let shared = match same_user {
            Some(held) => held,
            None => {
                let shared: Rc<str> = Rc::from(self.unique_name(name, elsewhere).as_str());
                self.names.insert(shared.clone());
                shared
            }
        };
        let name = shared.to_string();
        let member = Member {
            key,
            serial: 0,
            name: shared,
            sub,
            moderator: false,
            welcomed: false,
            since,
            awaiting_read: false,
        };
        (self.members.insert(member), name)
    }

    /// A guest named `name` gets a suffixed name instead, so that a
    /// verified user can take it; returns (old, new), or `None` if no
    /// guest holds `name`.
    pub fn displace_guest(&mut self, name: &str) -> Option<(String, String)> {
        let (_, guest) = self.members.iter_mut().find(|(_, m)| !m.verified() && &*m.name == name)?;
        let old = guest.name.clone();
        let new = (2..).map(|n| format!("{name}-{n}")).find(|c| !self.names.contains(c.as_str())).unwrap_or_default();
        let shared: Rc<str> = Rc::from(new.as_str());
        guest.name = shared.clone();
        self.names.remove(&old);
        self.names.insert(shared);
        Some((old.to_string(), new))
    }

    /// Removes a member; returns its name.
    pub fn remove(&mut self, slot: usize) -> Option<String> {
        let member = self.members.try_remove(slot)?;
        // A name several tabs of one user share stays taken until the last goes.
        let shared = member.verified() && self.members.iter().any(|(_, m)| m.name == member.name);
        if !shared {
            self.names.remove(&member.name);
        }
        Some(member.name.to_string())
    }

    /// Renames a member to a unique version of `wanted`, avoiding the names
    /// held `elsewhere` too; returns (old, new).
    pub fn rename(&mut self, slot: usize, wanted: &str, elsewhere: &[String]) -> Option<(String, String)> {
        let old = self.members.get(slot)?.name.to_string();
        if old == wanted {
            return None;
        }
        self.names.remove(old.as_str());
        let new = self.unique_name(wanted, elsewhere);
        let shared: Rc<str> = Rc::from(new.as_str());
        self.names.insert(shared.clone());
        if let Some(m) = self.members.get_mut(slot) {
            m.name = shared;
        }
        Some((old, new))
    }

    fn unique_name(&self, name: &str, elsewhere: &[String]) -> String {
        let free = |candidate: &str| !self.names.contains(candidate) && !elsewhere.iter().any(|n| n == candidate);
        if free(name) {
            return name.to_string();
        }
        (2..).map(|n| format!("{name}-{n}")).find(|candidate| free(candidate)).unwrap_or_default()
    }

    /// Records a committed message in the recent history.
    pub fn remember(&mut self, id: u64, json: Rc<str>) {
        if self.recent_cap == 0 {
            return;
        }
        if self.recent.len() == self.recent_cap {
            self.recent.pop_front();
        }
        self.recent.push_back((id, json));
        self.committed_id = self.committed_id.max(id);
    }

    /// Puts messages loaded from storage (all older than what `recent` has) in front.
    pub fn prepend_loaded(&mut self, older: Vec<(u64, Rc<str>)>) {
        let first = self.recent.front().map(|(id, _)| *id).unwrap_or(u64::MAX);
        for (id, json) in older.into_iter().rev() {
            if id < first && self.recent.len() < self.recent_cap {
                self.recent.push_front((id, json));
            }
        }
        self.loaded = true;
    }

    /// The oldest id `recent` holds, if any.
    pub fn oldest_cached(&self) -> Option<u64> {
        self.recent.front().map(|(id, _)| *id)
    }

    /// Whether `recent` alone can answer "everything after `since`".
    pub fn cache_covers(&self, since: u64) -> bool {
        since >= self.committed_id || self.oldest_cached().is_some_and(|oldest| oldest <= since + 1)
    }

    /// Names of up to `limit` members, for welcome frames and the API.
    pub fn online_names(&self, limit: usize) -> Vec<&str> {
        self.members.iter().take(limit).map(|(_, m)| &*m.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_get_suffixes() {
        let mut room = Room::new("r", 0, 10, true);
        assert_eq!(room.add(1, "alice", None, None, &[]).1, "alice");
        assert_eq!(room.add(2, "alice", None, None, &[]).1, "alice-2");
        assert_eq!(room.add(3, "alice", None, None, &[]).1, "alice-3");
        let (slot, _) = room.add(4, "bob", None, None, &[]);
        assert_eq!(room.rename(slot, "alice", &[]), Some(("bob".into(), "alice-4".into())));
        assert_eq!(room.remove(slot), Some("alice-4".into()));
        assert_eq!(room.add(5, "alice", None, None, &[]).1, "alice-4");
    }

    #[test]
    fn recent_history_is_bounded_and_ordered() {
        let mut room = Room::new("r", 0, 3, false);
        room.remember(5, "5".into());
        room.remember(6, "6".into());
        room.prepend_loaded(vec![(2, "2".into()), (3, "3".into()), (4, "4".into())]);
        let ids: Vec<u64> = room.recent.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![4, 5, 6]);
        assert!(room.cache_covers(3));
        assert!(!room.cache_covers(2));
        assert!(room.cache_covers(6));
    }
}
