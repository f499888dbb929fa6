//! `--data none`: the storage contract kept in memory, for tests, demos and
//! a server that should forget everything when it stops.
//!
//! It runs inline on the reactor's thread (a `VecDeque` push needs no
//! thread to keep the loop from waiting) but answers with the same replies,
//! through the same batch code, so the reactor's code path (send, wait for
//! `Committed`, then broadcast) is the same with or without a disk; only
//! the durability differs. Each room keeps its newest `keep_per_room` messages in a ring
//! (`VecDeque`), so memory stays bounded however long the server runs,
//! and `oldest_id` tells a client asking for older history that it is gone.

use std::collections::{HashMap, VecDeque};

use super::{ReadRange, Store, StoredMessage, Write};

/// One room's slice of history.
#[derive(Debug, Default)]
struct MemoryRoom {
    /// The newest messages, ascending by id (appends arrive in id order).
    recent: VecDeque<StoredMessage>,
    /// Newest id ever appended (0 before the first), to keep ids increasing
    /// even after the message itself was trimmed.
    last_id: u64,
}

/// The in-memory backend.
#[derive(Debug)]
pub(super) struct MemoryStore {
    rooms: HashMap<String, MemoryRoom>,
    keep_per_room: usize,
}

impl MemoryStore {
    /// An empty store keeping at most `keep_per_room` messages in each room.
    pub(super) fn new(keep_per_room: usize) -> MemoryStore {
        MemoryStore { rooms: HashMap::new(), keep_per_room }
    }

    /// Refuse an Append that SQLite would refuse (a duplicate id), or that
    /// would break the ascending order the reads rely on, before changing
    /// anything: a batch applies whole or not at all, as a transaction does.
    fn check(&self, writes: &[Write]) -> Result<(), String> {
        let mut last_ids: HashMap<&str, u64> = HashMap::new();
        for write in writes {
            if let Write::Append { room, msg } = write {
                let last = last_ids.entry(room).or_insert_with(|| self.rooms.get(room).map_or(0, |r| r.last_id));
                if msg.id <= *last {
                    return Err(format!("message id {} in room {room:?} is not after the last id {last}", msg.id));
                }
                *last = msg.id;
            }
        }
        Ok(())
    }
}

impl Store for MemoryStore {
    fn write_batch(&mut self, writes: &[Write]) -> Result<(), String> {
        self.check(writes)?;
        for write in writes {
            match write {
                // Rooms come into being on first use; `created` only matters
                // to the directory, which a memory store does not outlive.
                Write::CreateRoom { room, .. } => {
                    self.rooms.entry(room.clone()).or_default();
                }
                // Bans live in the reactor's table; memory keeps no copy.
                Write::Ban(_) | Write::Unban { .. } => {}
                Write::Delete { room, id } => {
                    if let Some(entry) = self.rooms.get_mut(room) {
                        let at = entry.recent.partition_point(|m| m.id < *id);
                        if let Some(msg) = entry.recent.get_mut(at).filter(|m| m.id == *id) {
                            *msg = StoredMessage::tombstone(msg.id, msg.ts);
                        }
                    }
                }
                Write::Append { room, msg } => {
                    let entry = self.rooms.entry(room.clone()).or_default();
                    entry.last_id = msg.id;
                    entry.recent.push_back(msg.clone());
                    // Trim to the cap: the ring never holds more than
                    // `keep_per_room`, so the oldest goes first.
                    while entry.recent.len() > self.keep_per_room {
                        entry.recent.pop_front();
                    }
                }
            }
        }
        Ok(())
    }

    fn read(&mut self, range: &ReadRange) -> Result<(Vec<StoredMessage>, Option<u64>), String> {
        let ReadRange { room, after, before, limit, newest } = range;
        let Some(entry) = self.rooms.get(room) else {
            return Ok((Vec::new(), None));
        };
        let recent = &entry.recent;
        // Ids ascend, so both bounds are binary searches.
        let start = recent.partition_point(|m| m.id <= *after);
        // `max(start)` keeps the range well-formed when after >= before.
        let end = recent.partition_point(|m| m.id < *before).max(start);
        let count = (end - start).min(*limit);
        let (start, end) = if *newest { (end - count, end) } else { (start, start + count) };
        let messages = recent.range(start..end).cloned().collect();
        Ok((messages, recent.front().map(|m| m.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(room: &str, id: u64) -> Write {
        Write::Append {
            room: room.to_string(),
            msg: StoredMessage {
                id,
                ts: 1_000 + id,
                username: "alice".to_string(),
                text: format!("message {id}"),
                verified: false,
            },
        }
    }

    fn ids(found: &(Vec<StoredMessage>, Option<u64>)) -> Vec<u64> {
        found.0.iter().map(|m| m.id).collect()
    }

    #[test]
    fn trims_to_keep_per_room_and_reports_oldest() -> Result<(), String> {
        let mut store = MemoryStore::new(3);
        let writes: Vec<Write> = (1..=5).map(|id| append("r", id)).collect();
        store.write_batch(&writes)?;
        let found = store.read(&ReadRange::newest("r", 10))?;
        assert_eq!(ids(&found), vec![3, 4, 5]);
        assert_eq!(found.1, Some(3));
        Ok(())
    }

    #[test]
    fn refuses_a_batch_whose_ids_go_backwards_and_applies_none_of_it() -> Result<(), String> {
        let mut store = MemoryStore::new(10);
        store.write_batch(&[append("r", 1)])?;
        let refused = store.write_batch(&[append("r", 2), append("r", 2)]);
        assert!(refused.is_err());
        assert_eq!(ids(&store.read(&ReadRange::newest("r", 10))?), vec![1]);
        Ok(())
    }

    #[test]
    fn empty_and_inverted_ranges_read_as_nothing() -> Result<(), String> {
        let mut store = MemoryStore::new(10);
        store.write_batch(&[append("r", 1), append("r", 2)])?;
        assert_eq!(
            ids(&store.read(&ReadRange { after: 2, ..ReadRange::newest("r", 10).before(1) })?),
            Vec::<u64>::new()
        );
        assert_eq!(ids(&store.read(&ReadRange::after("r", 0, 0))?), Vec::<u64>::new());
        assert_eq!(store.read(&ReadRange::newest("nowhere", 10))?, (Vec::new(), None));
        Ok(())
    }

    #[test]
    fn keep_zero_keeps_nothing() -> Result<(), String> {
        let mut store = MemoryStore::new(0);
        store.write_batch(&[append("r", 1)])?;
        assert_eq!(store.read(&ReadRange::newest("r", 10))?, (Vec::new(), None));
        Ok(())
    }
}
