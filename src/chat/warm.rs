//! The recent history of rooms that emptied lately.
//!
//! A live room keeps its newest messages in memory ([`Room::recent`]), and
//! when its last member leaves the room is dropped. Without this, a room
//! that empties and fills again (visitors who come and go, one regular who
//! reconnects) would read its history back from storage at every visit:
//! a query that sorts the newest few hundred messages on the storage
//! thread, the costliest thing it does. So the last few rooms to empty
//! park their history here, tagged with the newest id it holds. A room
//! going live takes it back only if nothing was posted since (the room's
//! last id is still that one); else it reads from storage as before.
//!
//! [`Room::recent`]: super::room::Room::recent

use std::collections::VecDeque;
use std::rc::Rc;

/// Messages as a room caches them: (id, event JSON), oldest first.
pub type Recent = VecDeque<(u64, Rc<str>)>;

/// Histories of up to `cap` emptied rooms; the oldest parked goes first.
#[derive(Debug)]
pub struct WarmCaches {
    rooms: VecDeque<Parked>,
    cap: usize,
}

#[derive(Debug)]
struct Parked {
    name: Rc<str>,
    /// The newest id in `recent`, which is the room's last id when parked.
    newest: u64,
    recent: Recent,
}

impl WarmCaches {
    /// Room for `cap` histories (0 parks nothing).
    pub fn new(cap: usize) -> WarmCaches {
        WarmCaches { rooms: VecDeque::new(), cap }
    }

    /// Keeps the history of a room that just emptied, `newest` being the
    /// last id the room ever handed out.
    pub fn park(&mut self, name: Rc<str>, newest: u64, recent: Recent) {
        if self.cap == 0 || recent.is_empty() {
            return;
        }
        self.rooms.retain(|p| p.name != name);
        if self.rooms.len() == self.cap {
            self.rooms.pop_front();
        }
        self.rooms.push_back(Parked { name, newest, recent });
    }

    /// Drops the parked history of `name`, if any (a message in it was
    /// deleted).
    pub fn forget(&mut self, name: &str) {
        self.rooms.retain(|p| &*p.name != name);
    }

    /// The parked history of `name`, if it is still the whole truth: the
    /// room's last id is still `last_id`. Taken either way.
    pub fn take(&mut self, name: &str, last_id: u64) -> Option<Recent> {
        let at = self.rooms.iter().position(|p| &*p.name == name)?;
        let parked = self.rooms.remove(at)?;
        (parked.newest == last_id).then_some(parked.recent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recent(ids: &[u64]) -> Recent {
        ids.iter().map(|&id| (id, Rc::from(id.to_string()))).collect()
    }

    #[test]
    fn a_history_comes_back_only_if_nothing_was_posted_since() {
        let mut warm = WarmCaches::new(4);
        warm.park("a".into(), 3, recent(&[1, 2, 3]));
        warm.park("b".into(), 7, recent(&[7]));
        let back = warm.take("a", 3).map(|r| r.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        assert_eq!(back, Some(vec![1, 2, 3]));
        assert!(warm.take("a", 3).is_none(), "taken once");
        // A message was posted to b while it was empty: its history is stale.
        assert!(warm.take("b", 8).is_none());
        assert!(warm.rooms.is_empty(), "a stale history is dropped too");
    }

    #[test]
    fn the_oldest_parked_goes_first_and_empty_histories_are_not_kept() {
        let mut warm = WarmCaches::new(2);
        warm.park("a".into(), 1, recent(&[1]));
        warm.park("b".into(), 1, recent(&[1]));
        warm.park("none".into(), 0, recent(&[]));
        warm.park("c".into(), 1, recent(&[1]));
        assert_eq!(warm.rooms.len(), 2);
        assert!(warm.take("a", 1).is_none());
        assert!(warm.take("b", 1).is_some());
        assert!(warm.take("c", 1).is_some());
        // Parking the same room again replaces its entry.
        warm.park("d".into(), 1, recent(&[1]));
        warm.park("d".into(), 2, recent(&[1, 2]));
        assert_eq!(warm.rooms.len(), 1);
        assert_eq!(warm.take("d", 2).map(|r| r.len()), Some(2));
    }
}
