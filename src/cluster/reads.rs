//! History reads from a room's stream, for the chat (welcome, `?since=`,
//! scroll-back) and for catching up on missed messages.
//!
//! A read is two commands: the stream's first entry, then the range.
//! Replies come back in order, so when the range arrives we already know
//! where history starts (the answer's `oldest_id`), not only where this
//! page does. A read that never reached Redis is not an empty stream:
//! answering "nothing" would skip messages still there, so it waits for the
//! command connection and goes again.

use std::collections::HashMap;

use super::layout::{log_key, route, stream_messages};
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

/// Reads sent and not answered.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// Numbers the reads (the low bits of their tags).
    next: u64,
    /// Range commands sent and not answered, by tag: who asked, and the
    /// packed command to send again on failure.
    pending: HashMap<u64, (Reader, Vec<u8>, Option<u16>)>,
    /// Reads that failed for lack of a connection, sent again on `CommandUp`.
    deferred: Vec<(u64, Reader, Vec<u8>, Option<u16>)>,
    /// The stream's oldest id as answered just before a read, by tag.
    oldest: HashMap<u64, Option<u64>>,
}

impl Reads {
    /// Reads `room`'s newest stream entry (its answer's `messages` hold
    /// it, or nothing for an empty stream). Replies come in order, so when
    /// this one arrives every read sent before it has been answered.
    pub(super) fn newest(&mut self, room: &str, commands: &mut Commands) {
        let tag = self.next_tag();
        let cmd = redis::cmd("XREVRANGE").arg(log_key(room)).arg("+").arg("-").arg("COUNT").arg(1).get_packed_command();
        let slot = route(&log_key(room));
        commands.push((cmd.clone(), tag, slot));
        self.pending.insert(tag, (Reader::Newest(room.to_string()), cmd, slot));
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
        let cmd = if *newest {
            let end = if *before == u64::MAX { "+".to_string() } else { format!("({before}-0") };
            redis::cmd("XREVRANGE").arg(key).arg(end).arg("-").arg("COUNT").arg(limit).get_packed_command()
        } else {
            redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("({after}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(limit)
                .get_packed_command()
        };
        commands.push((cmd.clone(), tag, slot));
        self.pending.insert(tag, (reader, cmd, slot));
    }

    /// The command connection is up: reads that failed go again.
    pub(super) fn send_deferred(&mut self, commands: &mut Commands) {
        for (tag, reader, cmd, slot) in std::mem::take(&mut self.deferred) {
            commands.push((cmd.clone(), tag, slot));
            self.pending.insert(tag, (reader, cmd, slot));
        }
    }

    /// A read's command failed without an answer: the range waits for the
    /// connection (its first-entry half is not sent again; see `on_reply`).
    pub(super) fn on_failed(&mut self, tag: u64) {
        if let Some((reader, cmd, slot)) = self.pending.remove(&tag) {
            self.deferred.push((tag, reader, cmd, slot));
        }
    }

    /// Redis answered one of a read's commands: the answer, once the range is in.
    pub(super) fn on_reply(&mut self, tag: u64, value: &Value) -> Option<Answer> {
        if tag & TAG_OLDEST != 0 {
            self.oldest.insert(tag & !TAG_OLDEST, stream_messages(value).first().map(|m| m.id));
            return None;
        }
        let (reader, _, _) = self.pending.remove(&tag)?;
        let messages = stream_messages(value);
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
    use super::*;

    fn entries(ids: &[u64]) -> Value {
        Value::Array(
            ids.iter()
                .map(|&id| {
                    Value::Array(vec![
                        Value::Bulk(format!("{id}-0").into_bytes()),
                        Value::Array(vec![
                            Value::Bulk(b"m".to_vec()),
                            Value::Bulk(crate::chat::protocol::message_json("r", id, "u", "t", 5).into_bytes()),
                        ]),
                    ])
                })
                .collect(),
        )
    }

    #[test]
    fn a_page_says_where_the_stream_starts() {
        let mut reads = Reads::default();
        let mut commands = Commands::new();
        reads.read(Reader::Chat(9), &ReadRange::newest("r", 2).before(5), &mut commands);
        let [(_, first, _), (_, range, _)] = commands.as_slice() else { panic!("two commands: {commands:?}") };
        assert_eq!(reads.on_reply(*first, &entries(&[1])), None);
        let answer = reads.on_reply(*range, &entries(&[4, 3])).unwrap();
        assert_eq!(answer.reader, Reader::Chat(9));
        assert_eq!(answer.messages.iter().map(|m| m.id).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(answer.oldest, Some(1));
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
        let answer = reads.on_reply(range, &entries(&[5, 4])).unwrap();
        assert_eq!((answer.reader, answer.oldest), (Reader::CatchUp("r".into()), Some(4)));
    }
}
