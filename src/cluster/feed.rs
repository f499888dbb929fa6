//! The published messages, handed to the chat in id order without gaps.
//!
//! A process receives the messages of the rooms it subscribes to (those
//! with members here, see `channels.rs`), its own posts included, and
//! gives each room's messages to the chat strictly in id order
//! ([`Chat::accept_ordered`]). A message that arrives with a gap before it
//! means some were missed (the subscription dropped, say): the room reads
//! the stream from its last id, holding what arrives meanwhile, then hands
//! over the merge of both.
//!
//! A room whose subscription has just been confirmed catches up the same
//! way ([`Feed::catch_up`]): on a resubscribe, anything published while
//! the subscription was down was missed; on a first subscribe, anything
//! published between the room's welcome read and the subscription. Its
//! last id may be long out of date then (nobody here heard the room for a
//! while), and only the welcome read's answer brings it up to date
//! ([`Chat::learn_newest`]). That read may still be on its way, so a
//! catch-up first asks for the stream's newest entry: replies on the
//! command connection come in order, so when that answer arrives the
//! welcome's has been handled, and the range is read from the last id as
//! it is then, not as it was.
//!
//! The gap rule is also what keeps order with `--redis-wait`, where a
//! process publishes its posts itself after the replicas confirm: a later
//! post confirmed sooner, or a post whose process died between storing and
//! publishing it, shows up as a gap at the room's next message, and the
//! stream fills it.
//!
//! [`Chat::learn_newest`]: crate::chat::Chat
//! A post's author learns the post's id from the script's reply, which may
//! come before or after the message itself: the author's copy of its
//! message is its acknowledgement, so the feed remembers whose post an id
//! is until the message comes through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use super::Commands;
use super::reads::{Reader, Reads};
use crate::chat::{Chat, OrderedMessage, RESUME_MAX};
use crate::storage::{ReadRange, StoredMessage};

/// Posts answered but not yet seen back remembered at most (a bound
/// against a subscription that lost them; they are only a hint), and
/// the same for the flags of unconfirmed messages.
const OWN_POSTS_MAX: usize = 10_000;

/// Messages read at most when catching a room up (the most a `?since=`
/// resume replays, too): further behind, members get a `gap` event.
const CATCH_UP_MAX: usize = RESUME_MAX as usize;

/// What stands between the subscription and the chat.
#[derive(Debug, Default)]
pub(super) struct Feed {
    /// Our own posts Redis has answered for, by room and id, until they
    /// come back through the subscription (their poster is its author).
    own_posts: HashMap<Rc<str>, BTreeMap<u64, (usize, u64)>>,
    /// How many posts `own_posts` holds.
    own_count: usize,
    /// Messages published flagged `unconfirmed` (`--redis-wait`), by
    /// (room, id), until they are handed over: a held message, or the
    /// stream's copy of one (the stream has no flag), keeps its flag.
    unconfirmed: HashSet<(String, u64)>,
    /// Messages held, by room, while the room catches up.
    held: HashMap<String, Vec<OrderedMessage>>,
    /// Messages deleted lately, by (room, id): one held, or read by a
    /// catch-up that ran before the delete, becomes its tombstone when it
    /// is handed over (a delete record and a read's answer come on
    /// different connections, in no set order).
    deleted: HashSet<(String, u64)>,
    /// Rooms whose subscription came (back) while they were catching up:
    /// the read on its way may have run before the subscription took
    /// effect, so they read once more before handing anything over.
    again: HashSet<String>,
}

impl Feed {
    /// Messages of `room` from its channel, in the order published (by
    /// any process, ours included): one payload's worth, so the room is
    /// looked up once for all of them.
    pub(super) fn on_published(
        &mut self,
        room: &str,
        batch: Vec<OrderedMessage>,
        chat: &mut Chat,
        reads: &mut Reads,
        commands: &mut Commands,
    ) {
        if batch.is_empty() || !crate::route::valid_room_name(room) {
            return;
        }
        for msg in batch.iter().filter(|m| m.flagged) {
            if self.unconfirmed.len() >= OWN_POSTS_MAX {
                self.unconfirmed.clear();
            }
            self.unconfirmed.insert((room.to_string(), msg.id));
        }
        if let Some(held) = self.held.get_mut(room) {
            held.extend(batch);
            return;
        }
        chat.ensure_room(room);
        let mut last = chat.last_id(room);
        let mut batch = batch.into_iter();
        while let Some(msg) = batch.next() {
            if msg.id <= last {
                continue; // already delivered (a catch-up overlapped the live feed)
            }
            if msg.id > last + 1 {
                // A gap: this message and the rest wait for the stream.
                let mut held = vec![msg];
                held.extend(batch);
                self.held.insert(room.to_string(), held);
                reads.read(Reader::CatchUp(room.to_string()), &ReadRange::after(room, last, CATCH_UP_MAX), commands);
                return;
            }
            last = msg.id;
            self.accept(room, msg, chat);
        }
    }

    /// `room`'s subscription is (back) in place and may have missed
    /// messages: holds what is published from now on, and asks for the
    /// stream's newest entry ([`Feed::on_newest`] goes on from there).
    pub(super) fn catch_up(&mut self, room: &str, reads: &mut Reads, commands: &mut Commands) {
        if self.held.contains_key(room) {
            self.again.insert(room.to_string());
            return;
        }
        self.held.insert(room.to_string(), Vec::new());
        reads.newest(room, commands);
    }

    /// The stream's newest id came back for a catch-up: every read sent
    /// before has been answered, so `room`'s last id is as current as it
    /// gets. Reads on from it if the stream has more, else hands over
    /// what was held.
    pub(super) fn on_newest(
        &mut self,
        room: &str,
        newest: Option<u64>,
        chat: &mut Chat,
        reads: &mut Reads,
        commands: &mut Commands,
    ) {
        let last = chat.last_id(room);
        match newest {
            Some(newest) if newest > last => {
                reads.read(Reader::CatchUp(room.to_string()), &ReadRange::after(room, last, CATCH_UP_MAX), commands);
            }
            _ => self.on_caught_up(room, Vec::new(), chat, reads, commands),
        }
    }

    /// A catch-up read came back: its messages and the held ones, merged,
    /// go to the chat in order.
    pub(super) fn on_caught_up(
        &mut self,
        room: &str,
        messages: Vec<StoredMessage>,
        chat: &mut Chat,
        reads: &mut Reads,
        commands: &mut Commands,
    ) {
        if self.again.remove(room) {
            // Keep what this read found with the held messages (the merge
            // drops doubles), and read on once more.
            let read = messages.iter().map(|m| OrderedMessage::from_stored(room, m));
            self.held.entry(room.to_string()).or_default().extend(read);
            reads.newest(room, commands);
            return;
        }
        let held = self.held.remove(room).unwrap_or_default();
        let last = chat.last_id(room);
        let read = messages.iter().filter(|m| m.id > last).map(|m| OrderedMessage::from_stored(room, m));
        // Held first: a message both held and read keeps the copy that came
        // first (the event as published, unless a read before a second
        // one found it first; either way the same bytes for events of
        // this version, and the flag comes from `unconfirmed`).
        let mut all: Vec<OrderedMessage> = held.into_iter().filter(|m| m.id > last).chain(read).collect();
        all.sort_by_key(|m| m.id);
        all.dedup_by_key(|m| m.id);
        let mut next = last;
        for msg in all {
            if msg.id != next + 1 {
                // The stream no longer has what we missed (trimmed or lost):
                // members are told, then live delivery resumes.
                chat.announce_gap(room, msg.id);
            }
            next = msg.id;
            self.accept(room, msg, chat);
        }
    }

    /// Redis gave our post `id`: remember its author until the message
    /// comes through, unless it came already.
    pub(super) fn on_posted(&mut self, room: Rc<str>, id: u64, author: (usize, u64), chat: &Chat) {
        if chat.last_id(&room) >= id {
            return;
        }
        if self.own_count >= OWN_POSTS_MAX {
            self.own_posts.clear();
            self.own_count = 0;
        }
        if self.own_posts.entry(room).or_default().insert(id, author).is_none() {
            self.own_count += 1;
        }
    }

    /// Message `id` of `room` was deleted (its channel said so).
    pub(super) fn on_deleted(&mut self, room: &str, id: u64) {
        if self.deleted.len() >= OWN_POSTS_MAX {
            self.deleted.clear();
        }
        self.deleted.insert((room.to_string(), id));
    }

    fn accept(&mut self, room: &str, mut msg: OrderedMessage, chat: &mut Chat) {
        if !self.deleted.is_empty() && self.deleted.contains(&(room.to_string(), msg.id)) {
            msg.json = crate::chat::protocol::tombstone_json(room, msg.id, msg.ts).into();
        }
        let mut author = None;
        if let Some(ids) = self.own_posts.get_mut(room) {
            author = ids.remove(&msg.id);
            if author.is_some() {
                self.own_count -= 1;
            }
            if ids.is_empty() {
                self.own_posts.remove(room);
            }
        }
        let unconfirmed = !self.unconfirmed.is_empty() && self.unconfirmed.remove(&(room.to_string(), msg.id));
        chat.accept_ordered(room, msg, author, unconfirmed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::chat::{Mode, Outgoing};
    use crate::config::Config;
    use crate::storage::Request;

    fn message(id: u64) -> StoredMessage {
        StoredMessage { id, ts: 5, username: "u".into(), text: format!("m{id}"), verified: false }
    }

    /// Message `id` of room "r", one to a payload.
    fn published(id: u64) -> Vec<OrderedMessage> {
        vec![OrderedMessage::from_stored("r", &message(id))]
    }

    /// The ids the chat handed to storage since the last call.
    fn stored(chat: &mut Chat) -> Vec<u64> {
        chat.requests
            .drain(..)
            .filter_map(|r| match r {
                Request::Append { msg, .. } => Some(msg.id),
                _ => None,
            })
            .collect()
    }

    fn gaps(chat: &mut Chat) -> Vec<String> {
        chat.out
            .drain(..)
            .filter_map(|o| match o {
                Outgoing::Room { json, .. } if json.contains(r#""type":"gap""#) => Some(json.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_gap_is_filled_from_the_stream_before_anything_after_it() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), Mode::Shared);
        chat.join((1, 1), "r", Some("a"), None, Instant::now()).unwrap();
        chat.out.clear();
        let (mut feed, mut reads, mut commands) = (Feed::default(), Reads::default(), Commands::new());
        feed.on_published("r", published(1), &mut chat, &mut reads, &mut commands);
        feed.on_published("r", published(1), &mut chat, &mut reads, &mut commands);
        assert_eq!(stored(&mut chat), vec![1], "once each");
        assert!(commands.is_empty());

        // 2 and 3 were missed: 4 waits for them, and so does 5.
        feed.on_published("r", published(4), &mut chat, &mut reads, &mut commands);
        feed.on_published("r", published(5), &mut chat, &mut reads, &mut commands);
        assert_eq!(stored(&mut chat), Vec::<u64>::new());
        assert_eq!(commands.len(), 2, "one read of the stream after 1");

        // The stream has 2 (3 was trimmed), and 4 again.
        let from_stream = [2, 4].map(message).to_vec();
        feed.on_caught_up("r", from_stream, &mut chat, &mut reads, &mut commands);
        assert_eq!(stored(&mut chat), vec![2, 4, 5]);
        let gaps = gaps(&mut chat);
        assert_eq!(gaps, vec![crate::chat::protocol::gap_json("r", 4)]);
        feed.on_published("r", published(6), &mut chat, &mut reads, &mut commands);
        assert_eq!(stored(&mut chat), vec![6], "live delivery resumes");
    }

    #[test]
    fn a_subscription_that_comes_back_mid_catch_up_reads_once_more() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), Mode::Shared);
        chat.join((1, 1), "r", Some("a"), None, Instant::now()).unwrap();
        let (mut feed, mut reads, mut commands) = (Feed::default(), Reads::default(), Commands::new());
        feed.on_published("r", published(1), &mut chat, &mut reads, &mut commands);
        feed.on_published("r", published(4), &mut chat, &mut reads, &mut commands);
        stored(&mut chat);
        // The subscription is (re)confirmed while that read is out, and
        // 7 is heard: 5 and 6 came when nothing listened.
        feed.catch_up("r", &mut reads, &mut commands);
        feed.on_published("r", published(7), &mut chat, &mut reads, &mut commands);
        commands.clear();
        let first_read = [2, 3, 4].map(message).to_vec();
        feed.on_caught_up("r", first_read, &mut chat, &mut reads, &mut commands);
        assert_eq!(stored(&mut chat), Vec::<u64>::new(), "nothing yet: it reads again");
        assert_eq!(commands.len(), 1, "the stream's newest entry");
        feed.on_newest("r", Some(7), &mut chat, &mut reads, &mut commands);
        let second_read = (2..=7).map(message).collect();
        feed.on_caught_up("r", second_read, &mut chat, &mut reads, &mut commands);
        assert_eq!(stored(&mut chat), vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(gaps(&mut chat), Vec::<String>::new());
    }

    #[test]
    fn our_post_is_its_authors_whichever_comes_first() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), Mode::Shared);
        let (mut feed, mut reads, mut commands) = (Feed::default(), Reads::default(), Commands::new());
        // The reply first, then the message.
        feed.on_posted("r".into(), 1, (3, 9), &chat);
        feed.on_published("r", published(1), &mut chat, &mut reads, &mut commands);
        // The message first: the reply finds it delivered and forgets it.
        feed.on_published("r", published(2), &mut chat, &mut reads, &mut commands);
        feed.on_posted("r".into(), 2, (3, 9), &chat);
        assert!(feed.own_posts.is_empty());
        chat.join((3, 9), "r", Some("a"), None, Instant::now()).unwrap();
        chat.on_committed(u64::MAX, &Ok(()));
        let authors: Vec<Option<(usize, u64)>> = chat
            .out
            .iter()
            .filter_map(|o| match o {
                Outgoing::Room { is_message: true, author, .. } => Some(*author),
                _ => None,
            })
            .collect();
        assert_eq!(authors, vec![Some((3, 9)), None]);
    }
}
