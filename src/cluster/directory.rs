//! What `/api/rooms` says about rooms this process does not hear.
//!
//! The API answers from the chat's directory: every room, when it was
//! created, its message count and last post. A process learns those
//! figures from the messages it handles, which are only those of its own
//! rooms (see `channels.rs`); for the others it asks Redis, at most once
//! every [`DIRECTORY_MAX_AGE`] and only when someone asks the API. The
//! request waits (parked, as scroll-back does) while the refresh runs:
//!
//! - `HGETALL chatroom:rooms`: every room, and when it was created (in a
//!   cluster, one HGETALL per hash of the spread list: `layout.rs`);
//! - then, pipelined, one `XREVRANGE <room's stream> + - COUNT 1` per room:
//!   its newest message, whose id is the room's message count (shared ids
//!   run 1, 2, 3...) and whose `ts` is its last post.
//!
//! Nothing is written per post for this: the stream the post script
//! appends to already holds the answer, and each command touches one key
//! (Redis Cluster routes each to its room's slot; there is no global key
//! that every post would hit). The cost is one small read per room per
//! refresh, paid only while someone watches the rooms list.
//!
//! Online counts: with one Redis, presence is published to every process
//! (`presence.rs`), so they need none of this. In a cluster presence
//! travels on each room's own channel, heard only where the room is
//! served, so the refresh also reads each other room's online hash
//! (`HGETALL chatroom:{<room>}:online`), which presence reads.

use std::time::{Duration, Instant};

use super::layout::{log_key, online_key, room_list, route, stream_messages};
use super::{Commands, TAG_DIRECTORY};
use crate::bus::Value;
use crate::chat::Chat;

/// How old the directory may be when `/api/rooms` answers from it: the
/// rooms page asks every few seconds, so two seconds is as fresh as anyone
/// sees, while a crowd of viewers still costs one refresh per two seconds.
pub(super) const DIRECTORY_MAX_AGE: Duration = Duration::from_secs(2);

/// The low 32 bits of a directory tag: 0 for the room list, `i + 1` for
/// the `i`th room's newest entry. Above them, the refresh's number.
const INDEX_BITS: u32 = 32;

/// Set in a tag's index for a room's online hash (the rest of the index
/// is the room's, as for its newest entry).
const ONLINE_BIT: u64 = 1 << (INDEX_BITS - 1);

/// A refresh's number, as its tags carry it: the bits between the index
/// and the bits of [`TAG_DIRECTORY`] (bit 61 and up).
const NUMBER_MASK: u64 = ((1 << 61) - 1) >> INDEX_BITS;

/// A refresh in flight.
#[derive(Debug)]
struct Refresh {
    /// Its number (the high bits of its tags).
    number: u64,
    /// The rooms whose newest entries were asked for, by index.
    rooms: Vec<String>,
    /// Replies still to come.
    left: usize,
}

/// When the directory was last refreshed from Redis, and the refresh on
/// its way.
#[derive(Debug, Default)]
pub(super) struct Directory {
    refreshed_at: Option<Instant>,
    refresh: Option<Refresh>,
    /// Refreshes started: numbers them.
    started: u64,
    /// A refresh ended (done, or given up) since [`Directory::take_settled`].
    settled: bool,
    /// In a cluster: read the online hash of each room not served here.
    read_online: bool,
}

impl Directory {
    /// The same for a Redis Cluster: a refresh also reads online hashes.
    pub(super) fn sharded(mut self) -> Directory {
        self.read_online = true;
        self
    }

    /// Whether the directory was refreshed less than [`DIRECTORY_MAX_AGE`] ago.
    pub(super) fn is_fresh(&self, now: Instant) -> bool {
        self.refreshed_at.is_some_and(|at| now < at + DIRECTORY_MAX_AGE)
    }

    /// Starts a refresh, unless one is on its way: reads every hash of the
    /// room list (`lists`).
    pub(super) fn refresh(&mut self, lists: &[String], commands: &mut Commands) {
        if self.refresh.is_some() {
            return;
        }
        self.started += 1;
        let number = self.started & NUMBER_MASK;
        for key in lists {
            commands.push((redis::cmd("HGETALL").arg(key).get_packed_command(), tag_of(number, 0), route(key)));
        }
        self.refresh = Some(Refresh { number, rooms: Vec::new(), left: lists.len() });
    }

    /// A reply to one of our commands (`tag` has [`TAG_DIRECTORY`]). A
    /// room's online hash is returned with the room's name, for presence
    /// to read.
    pub(super) fn on_reply<'v>(
        &mut self,
        tag: u64,
        value: &'v Value,
        chat: &mut Chat,
        commands: &mut Commands,
        now: Instant,
    ) -> Option<(String, &'v Value)> {
        let refresh = self.refresh.as_mut().filter(|r| tag_number(tag) == r.number)?;
        let mut online = None;
        match tag_index(tag) {
            0 => {
                // One hash of the list (of one, or of 16 in a cluster): its
                // rooms are numbered on from those of the hashes before.
                let list = room_list(value);
                let first = refresh.rooms.len();
                refresh.rooms.extend(list.iter().map(|(name, _)| name.clone()));
                chat.learn_rooms(list);
                let mut asked = 0;
                for (i, room) in refresh.rooms.iter().enumerate().skip(first) {
                    let newest = redis::cmd("XREVRANGE")
                        .arg(log_key(room))
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .get_packed_command();
                    commands.push((newest, tag_of(refresh.number, i as u64 + 1), route(&log_key(room))));
                    asked += 1;
                    if self.read_online && !chat.is_live(room) {
                        let key = online_key(room);
                        let read = redis::cmd("HGETALL").arg(&key).get_packed_command();
                        commands.push((read, tag_of(refresh.number, (i as u64 + 1) | ONLINE_BIT), route(&key)));
                        asked += 1;
                    }
                }
                refresh.left = refresh.left.saturating_sub(1) + asked;
            }
            index => {
                let room = usize::try_from((index & !ONLINE_BIT) - 1).ok().and_then(|i| refresh.rooms.get(i));
                if index & ONLINE_BIT != 0 {
                    online = room.map(|room| (room.clone(), value));
                } else if let Some((room, newest)) =
                    room.and_then(|room| Some((room, stream_messages(room, value).pop()?)))
                {
                    chat.learn_activity(room, newest.id, newest.ts);
                }
                refresh.left = refresh.left.saturating_sub(1);
            }
        }
        if refresh.left == 0 {
            self.refresh = None;
            self.refreshed_at = Some(now);
            self.settled = true;
        }
        online
    }

    /// One of our commands failed (Redis went away): the refresh is given
    /// up, and whoever waits is answered from what the directory has.
    pub(super) fn on_failed(&mut self, tag: u64) {
        if self.refresh.as_ref().is_some_and(|r| tag_number(tag) == r.number) {
            self.refresh = None;
            self.settled = true;
        }
    }

    /// Whether a refresh ended since the last call: the requests waiting
    /// for it can be answered.
    pub(super) fn take_settled(&mut self) -> bool {
        std::mem::take(&mut self.settled)
    }
}

fn tag_of(number: u64, index: u64) -> u64 {
    TAG_DIRECTORY | number << INDEX_BITS | index
}

fn tag_number(tag: u64) -> u64 {
    (tag >> INDEX_BITS) & NUMBER_MASK
}

fn tag_index(tag: u64) -> u64 {
    tag & ((1 << INDEX_BITS) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Mode;
    use crate::config::Config;

    fn entry(room: &str, id: u64, ts: u64) -> Value {
        Value::Array(vec![Value::Array(vec![
            Value::Bulk(format!("{id}-0").into_bytes()),
            Value::Array(vec![
                Value::Bulk(b"m".to_vec()),
                Value::Bulk(crate::chat::protocol::message_json(room, id, "u", "t", ts).into_bytes()),
            ]),
        ])])
    }

    /// The room list of one Redis.
    fn one_list() -> Vec<String> {
        vec!["chatroom:rooms".to_string()]
    }

    #[test]
    fn a_refresh_of_a_spread_list_reads_every_hash_and_every_room() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), Mode::Shared);
        let mut directory = Directory::default();
        let mut commands = Commands::new();
        let now = Instant::now();
        directory.refresh(&["l1".to_string(), "l2".to_string()], &mut commands);
        let lists: Vec<u64> = commands.drain(..).map(|(_, tag, _)| tag).collect();
        assert_eq!(lists.len(), 2);
        let list = |names: &[&str]| {
            Value::Array(
                names.iter().flat_map(|n| [Value::Bulk(n.as_bytes().to_vec()), Value::Bulk(b"1".to_vec())]).collect(),
            )
        };
        directory.on_reply(lists[0], &list(&["a", "b"]), &mut chat, &mut commands, now);
        directory.on_reply(lists[1], &list(&["c"]), &mut chat, &mut commands, now);
        let reads: Vec<u64> = commands.drain(..).map(|(_, tag, _)| tag).collect();
        assert_eq!(reads.len(), 3, "one read per room of either hash");
        for (i, tag) in reads.into_iter().enumerate() {
            assert!(!directory.take_settled(), "settled before read {i}");
            directory.on_reply(tag, &Value::Array(Vec::new()), &mut chat, &mut commands, now);
        }
        assert!(directory.take_settled() && directory.is_fresh(now));
        assert!(["a", "b", "c"].iter().all(|r| chat.directory.contains_key(*r)));
    }

    #[test]
    fn a_refresh_learns_rooms_and_their_newest_messages() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), Mode::Shared);
        let mut directory = Directory::default();
        let mut commands = Commands::new();
        let now = Instant::now();
        assert!(!directory.is_fresh(now));
        directory.refresh(&one_list(), &mut commands);
        directory.refresh(&one_list(), &mut commands);
        assert_eq!(commands.len(), 1, "one refresh at a time");
        let (_, list_tag, _) = commands.remove(0);
        let rooms = Value::Array(["busy", "17", "quiet", "18"].map(|s| Value::Bulk(s.as_bytes().to_vec())).to_vec());
        directory.on_reply(list_tag, &rooms, &mut chat, &mut commands, now);
        assert_eq!(commands.len(), 2, "one read per room");
        let (busy, quiet) = (commands[0].1, commands[1].1);
        directory.on_reply(busy, &entry("busy", 40, 1234), &mut chat, &mut commands, now);
        assert!(!directory.take_settled());
        directory.on_reply(quiet, &Value::Array(Vec::new()), &mut chat, &mut commands, now);
        assert!(directory.take_settled() && directory.is_fresh(now));
        assert!(!directory.is_fresh(now + DIRECTORY_MAX_AGE));
        let busy = &chat.directory["busy"];
        assert_eq!((busy.created, busy.messages, busy.last_post), (17, 40, Some(1234)));
        assert_eq!(busy.last_id, 0, "what exists is not what was handed over");
        assert_eq!((chat.directory["quiet"].messages, chat.directory["quiet"].last_post), (0, None));
    }

    #[test]
    fn a_failed_refresh_settles_and_a_stale_reply_is_ignored() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), Mode::Shared);
        let mut directory = Directory::default();
        let mut commands = Commands::new();
        let now = Instant::now();
        directory.refresh(&one_list(), &mut commands);
        let (_, first, _) = commands.remove(0);
        directory.on_failed(first);
        assert!(directory.take_settled() && !directory.is_fresh(now));
        directory.refresh(&one_list(), &mut commands);
        directory.on_reply(first, &Value::Array(Vec::new()), &mut chat, &mut commands, now);
        assert!(!directory.take_settled(), "a reply of the refresh given up");
    }
}
