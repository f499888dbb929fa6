//! Members of a room who are connected to other processes, by name.
//!
//! When rooms are shared (see `shared.rs`), a room's online count and list
//! include the members other processes serve. The sharer tells the chat who
//! joined and left there ([`super::Chat::on_members_elsewhere`]); this is
//! where the chat keeps the result, for every room, live here or not (the
//! room API counts them too).
//!
//! Two processes may each have an `alice` in one room, so a room's names are
//! a multiset: a join adds one copy, a leave removes one.

use std::collections::HashMap;

/// Names of members elsewhere, per room.
#[derive(Debug, Default)]
pub(super) struct Roster {
    /// Room → names, in the order they joined. No empty lists are kept.
    rooms: HashMap<String, Vec<String>>,
}

impl Roster {
    /// The names elsewhere in `room` (none for a room nobody reported).
    pub(super) fn names(&self, room: &str) -> &[String] {
        self.rooms.get(room).map_or(&[], Vec::as_slice)
    }

    /// Adds one copy of each of `joined` and removes one of each of `left`.
    pub(super) fn update(&mut self, room: &str, joined: &[String], left: &[String]) {
        let names = self.rooms.entry(room.to_string()).or_default();
        names.extend(joined.iter().cloned());
        for name in left {
            if let Some(at) = names.iter().position(|n| n == name) {
                names.remove(at);
            }
        }
        if names.is_empty() {
            self.rooms.remove(room);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_name_twice_elsewhere_leaves_once_at_a_time() {
        let mut roster = Roster::default();
        roster.update("r", &names(&["alice", "bob"]), &[]);
        roster.update("r", &names(&["alice"]), &[]);
        assert_eq!(roster.names("r"), names(&["alice", "bob", "alice"]));
        roster.update("r", &[], &names(&["alice", "carol"]));
        assert_eq!(roster.names("r"), names(&["bob", "alice"]));
        roster.update("r", &[], &names(&["bob", "alice"]));
        assert!(roster.names("r").is_empty());
        assert!(roster.rooms.is_empty(), "an emptied room is forgotten");
    }
}
