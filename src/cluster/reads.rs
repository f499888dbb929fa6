//! History reads from a room's stream, for the chat (welcome, `?since=`,
//! scroll-back) and for catching up on missed messages.
//!
//! A read is two commands: the stream's first entry, then the range.
//! Replies come back in order, so when the range arrives we already know
//! where history starts (the answer's `oldest_id`), not only where this
//! page does. A read that never reached Redis is not an empty stream:
//! answering "nothing" would skip messages still there, so it waits for the
//! command connection and goes again.
//!
//! An entry holds a batch of messages and is filed under the batch's last
//! id (`layout.rs`), so a range by id is read in whole entries and cut
//! here. Reading on from an id (`XRANGE (X +`) finds every entry with a
//! message after it. Reading back from an id `B` (`XREVRANGE (B -`)
//! misses the entry that holds both `B - 1` and `B`: a second command
//! (`XRANGE B +  COUNT 1`, the first entry filed at `B` or after) rides in
//! a chain with it (`Bus::command_chain`), so the two go, and go again,
//! together. `COUNT` counts entries, each at least one message, so a
//! range of `limit` entries holds at least `limit` messages.
//!
//! Last in the chain comes the range's deleted ids (`ZRANGEBYSCORE` on
//! the room's deleted set): a deleted message is still in the stream, and
//! becomes its tombstone here, before any reader sees it.

use std::collections::{HashMap, HashSet};

use super::layout::{deleted_key, log_key, route, stream_messages};
use super::{Commands, TAG_KIND, TAG_READ};
use crate::bus::Value;
use crate::storage::{ReadRange, StoredMessage};

/// With `TAG_READ`: the stream's first entry, asked just before a range.
const TAG_OLDEST: u64 = 1 << 61;

/// Who a read is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Reader {
    /// The chat, with its ticket.
    Chat(u64),
    /// Catching a live room up on what the subscription missed.
    CatchUp(String),
    /// The first step of a catch-up: the stream's newest entry, read after
    /// every read sent before it has been answered (see `feed.rs`).
    Newest(String),
}

/// An answered read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer {
    /// Who asked.
    pub(super) reader: Reader,
    /// The messages, ascending by id.
    pub(super) messages: Vec<StoredMessage>,
    /// The stream's oldest id, as near as we know it.
    pub(super) oldest: Option<u64>,
}

/// A range command sent and not answered.
#[derive(Debug)]
struct Pending {
    /// Who asked.
    reader: Reader,
    /// What was asked.
    range: ReadRange,
    /// The packed command (a chain of `replies`), to send again on failure.
    cmd: Vec<u8>,
    /// How many replies it takes: 2 for a read back from an id.
    replies: usize,
    /// The hash slot it routes by.
    slot: Option<u16>,
}

/// Reads sent and not answered.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// Numbers the reads (the low bits of their tags).
    next: u64,
    /// Range commands sent and not answered, by tag.
    pending: HashMap<u64, Pending>,
    /// Reads that failed for lack of a connection, sent again on `CommandUp`.
    deferred: Vec<(u64, Pending)>,
    /// The stream's oldest id as answered just before a read, by tag.
    oldest: HashMap<u64, Option<u64>>,
}

impl Reads {
    /// Reads `room`'s newest stream entry (its answer's `messages` end
    /// with the newest message, or are empty for an empty stream). Replies
    /// come in order, so when this one arrives every read sent before it
    /// has been answered.
    pub(super) fn newest(&mut self, room: &str, commands: &mut Commands) {
        let tag = self.next_tag();
        let cmd = redis::cmd("XREVRANGE").arg(log_key(room)).arg("+").arg("-").arg("COUNT").arg(1).get_packed_command();
        let slot = route(&log_key(room));
        commands.push((cmd.clone(), tag, slot));
        let range = ReadRange::newest(room, usize::MAX);
        self.pending.insert(tag, Pending { reader: Reader::Newest(room.to_string()), range, cmd, replies: 1, slot });
    }

    fn next_tag(&mut self) -> u64 {
        self.next += 1;
        TAG_READ | (self.next & !(TAG_KIND | TAG_OLDEST))
    }

    /// Reads `range` from the room's stream for `reader`.
    pub(super) fn read(&mut self, reader: Reader, range: &ReadRange, commands: &mut Commands) {
        let tag = self.next_tag();
        let ReadRange { room, after, before, limit, newest } = range;
        let key = log_key(room);
        let slot = route(&key);
        let first = redis::cmd("XRANGE").arg(&key).arg("-").arg("+").arg("COUNT").arg(1).get_packed_command();
        commands.push((first, tag | TAG_OLDEST, slot));
        let mut cmd = Vec::new();
        let replies = match (newest, *before) {
            (true, u64::MAX) => {
                cmd = redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(limit).get_packed_command();
                1
            }
            (true, before) => {
                // The entry that may hold ids on both sides of `before`, then the entries below it.
                cmd.extend(
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg(format!("{before}-0"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(1)
                        .get_packed_command(),
                );
                cmd.extend(
                    redis::cmd("XREVRANGE")
                        .arg(&key)
                        .arg(format!("({before}-0"))
                        .arg("-")
                        .arg("COUNT")
                        .arg(limit)
                        .get_packed_command(),
                );
                2
            }
            (false, _) => {
                cmd = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(format!("({after}-0"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .get_packed_command();
                1
            }
        };
        // The deleted ids in the range ride last in the chain.
        let bound = |id: u64| if id == u64::MAX { "+inf".to_string() } else { format!("({id}") };
        cmd.extend(
            redis::cmd("ZRANGEBYSCORE")
                .arg(deleted_key(room))
                .arg(bound(*after))
                .arg(bound(*before))
                .get_packed_command(),
        );
        let replies = replies + 1;
        commands.push((cmd.clone(), tag, slot));
        self.pending.insert(tag, Pending { reader, range: range.clone(), cmd, replies, slot });
    }

    /// How many replies the command tagged `tag` takes, if it is a read's.
    pub(super) fn replies(&self, tag: u64) -> usize {
        self.pending.get(&tag).map_or(1, |p| p.replies)
    }

    /// The command connection is up: reads that failed go again.
    pub(super) fn send_deferred(&mut self, commands: &mut Commands) {
        for (tag, pending) in std::mem::take(&mut self.deferred) {
            commands.push((pending.cmd.clone(), tag, pending.slot));
            self.pending.insert(tag, pending);
        }
    }

    /// A read's command failed without an answer: the range waits for the
    /// connection (its first-entry half is not sent again; see `on_reply`).
    pub(super) fn on_failed(&mut self, tag: u64) {
        if let Some(pending) = self.pending.remove(&tag) {
            self.deferred.push((tag, pending));
        }
    }

    /// Redis answered one of a read's commands: the answer, once the range is in.
    pub(super) fn on_reply(&mut self, tag: u64, value: &Value) -> Option<Answer> {
        if tag & TAG_OLDEST != 0 {
            let tag = tag & !TAG_OLDEST;
            let room = &self.pending.get(&tag)?.range.room;
            self.oldest.insert(tag, stream_messages(room, value).first().map(|m| m.id));
            return None;
        }
        let Pending { reader, range, replies, .. } = self.pending.remove(&tag)?;
        // A chain's replies: the stream's ranges, then the deleted ids (a
        // newest-entry read is one command, with no deleted ids to apply).
        let (ranges, deleted) = match value {
            _ if replies == 1 => (std::slice::from_ref(value), &[][..]),
            Value::Array(parts) if parts.len() == replies => parts.split_at(replies - 1),
            _ => (&[][..], &[][..]),
        };
        let mut messages: Vec<StoredMessage> = ranges.iter().flat_map(|v| stream_messages(&range.room, v)).collect();
        messages.sort_by_key(|m| m.id);
        messages.dedup_by_key(|m| m.id);
        let deleted: HashSet<u64> = match deleted.first() {
            Some(Value::Array(ids)) => {
                ids.iter().filter_map(|id| std::str::from_utf8(id.as_bytes()?).ok()?.parse().ok()).collect()
            }
            _ => HashSet::new(),
        };
        for m in messages.iter_mut().filter(|m| deleted.contains(&m.id)) {
            *m = StoredMessage::tombstone(m.id, m.ts);
        }
        // Whole entries came: keep the range asked for.
        messages.retain(|m| m.id > range.after && m.id < range.before);
        if range.newest {
            messages.drain(..messages.len().saturating_sub(range.limit));
        } else {
            messages.truncate(range.limit);
        }
        let page_first = messages.first().map(|m| m.id);
        // Without the first-entry answer (a read sent again after a
        // reconnect), the page's own first id is the best we know.
        let oldest = match self.oldest.remove(&tag) {
            Some(Some(first)) => Some(page_first.map_or(first, |page| page.min(first))),
            Some(None) | None => page_first,
        };
        Some(Answer { reader, messages, oldest })
    }
}

#[cfg(test)]
mod tests {
    use super::super::layout::{read_reply, stream_reply};
    use super::*;

    fn ids(answer: &Answer) -> Vec<u64> {
        answer.messages.iter().map(|m| m.id).collect()
    }

    #[test]
    fn a_page_says_where_the_stream_starts() {
        let mut reads = Reads::default();
        let mut commands = Commands::new();
        reads.read(Reader::Chat(9), &ReadRange::newest("r", 2), &mut commands);
        let [(_, first, _), (_, range, _)] = commands.as_slice() else { panic!("two commands: {commands:?}") };
        assert_eq!(reads.replies(*range), 2, "the range, then its deleted ids");
        assert_eq!(reads.on_reply(*first, &stream_reply(&[(1..=2)])), None);
        let answer = reads.on_reply(*range, &read_reply(vec![stream_reply(&[(5..=5), (3..=4)])], &[])).unwrap();
        assert_eq!(answer.reader, Reader::Chat(9));
        assert_eq!(ids(&answer), vec![4, 5], "the newest 2 of whole entries");
        assert_eq!(answer.oldest, Some(1));
    }

    /// An entry holds a batch and is filed under its last id: reading back
    /// from an id inside one needs that entry too, and reading on from an
    /// id inside one cuts it.
    #[test]
    fn ranges_are_cut_from_whole_entries() {
        let mut reads = Reads::default();
        let mut commands = Commands::new();
        reads.read(Reader::Chat(1), &ReadRange::newest("r", 3).before(5), &mut commands);
        let (chain, tag) = (String::from_utf8_lossy(&commands[1].0).into_owned(), commands[1].1);
        assert_eq!(reads.replies(tag), 3, "a chain: {chain}");
        assert!(chain.contains("XRANGE\r\n$16\r\nchatroom:{r}:log\r\n$3\r\n5-0\r\n"), "{chain}");
        assert!(chain.contains("XREVRANGE\r\n$16\r\nchatroom:{r}:log\r\n$4\r\n(5-0\r\n"), "{chain}");
        // Entries 1–3 and 4–6: the one at or after 5 is 4–6, those below 5 are 1–3.
        let both = read_reply(vec![stream_reply(&[(4..=6)]), stream_reply(&[(1..=3)])], &[]);
        let answer = reads.on_reply(tag, &both).unwrap();
        assert_eq!(ids(&answer), vec![2, 3, 4]);

        commands.clear();
        reads.read(Reader::CatchUp("r".into()), &ReadRange::after("r", 2, 3), &mut commands);
        let tag = commands[1].1;
        assert_eq!(reads.replies(tag), 2);
        let answer = reads.on_reply(tag, &read_reply(vec![stream_reply(&[(1..=3), (4..=6)])], &[])).unwrap();
        assert_eq!(ids(&answer), vec![3, 4, 5]);
    }

    /// A deleted message is still in the stream: the range's deleted ids,
    /// last in the chain, turn it into its tombstone (same id and time).
    #[test]
    fn deleted_ids_become_tombstones() {
        let mut reads = Reads::default();
        let mut commands = Commands::new();
        reads.read(Reader::Chat(1), &ReadRange::after("r", 1, 10).before(6), &mut commands);
        let chain = String::from_utf8_lossy(&commands[1].0).into_owned();
        assert!(chain.contains("ZRANGEBYSCORE\r\n$20\r\nchatroom:{r}:deleted\r\n$2\r\n(1\r\n$2\r\n(6\r\n"), "{chain}");
        let answer = reads.on_reply(commands[1].1, &read_reply(vec![stream_reply(&[(1..=6)])], &[3, 5])).unwrap();
        let shown: Vec<(u64, bool, u64)> = answer.messages.iter().map(|m| (m.id, m.is_deleted(), m.ts)).collect();
        assert_eq!(shown, [(2, false, 5), (3, true, 5), (4, false, 5), (5, true, 5)]);
        assert!(answer.messages[1].text.is_empty() && answer.messages[1].username.is_empty());
    }

    #[test]
    fn a_failed_read_waits_for_the_connection_and_goes_again() {
        let mut reads = Reads::default();
        let mut commands = Commands::new();
        reads.read(Reader::CatchUp("r".into()), &ReadRange::after("r", 3, 10), &mut commands);
        let (first, range) = (commands[0].1, commands[1].1);
        reads.on_failed(first);
        reads.on_failed(range);
        commands.clear();
        reads.send_deferred(&mut commands);
        assert_eq!(commands.iter().map(|(_, t, _)| *t).collect::<Vec<_>>(), vec![range], "only the range goes again");
        let answer = reads.on_reply(range, &read_reply(vec![stream_reply(&[(5..=5), (4..=4)])], &[])).unwrap();
        assert_eq!((answer.reader, answer.oldest), (Reader::CatchUp("r".into()), Some(4)));
    }
}
