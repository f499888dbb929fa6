//! Posting through Redis: the posts of one loop turn leave together, one
//! [`POST_SCRIPT`] call per room (up to `--redis-batch` posts each), all of
//! them pipelined in one write; each post is applied exactly once, whatever
//! happens to the connection on the way.
//!
//! Why batch: a script call has a fixed cost in Redis (parsing, the Lua
//! call, a PUBLISH that every subscriber must read) far above the cost of
//! one more XADD inside it, so a busy room's posts are much cheaper
//! together, and every subscriber reads one message per call instead of
//! one per post.
//!
//! Exactly once: a process numbers its posts to each room 1, 2, 3… and
//! always sends them in that order; the script remembers the last number
//! it applied from this process, and answers a post sent again (after a
//! lost reply) with 0 instead of posting it twice. So a post waits in a
//! bounded backlog while the command connection is down (`--redis-buffer`),
//! and goes again if the connection drops before the answer. Only a full
//! backlog, or Redis refusing the script, makes a post fail, and then its
//! author is told.
//!
//! In a Redis Cluster (`--redis-cluster`) the script publishes with
//! SPUBLISH on the room's sharded channel, and a room has one script call
//! in flight at a time: a call that is redirected (MOVED, ASK) or told to
//! try again goes again later than it first went, and a later call of the
//! same room must not overtake it (the room would take the later posts'
//! numbers first, and answer the earlier ones as repeats). Posts that come
//! meanwhile wait, and leave together in the next call.

use std::collections::{HashMap, HashSet, VecDeque};

use data_encoding::HEXLOWER;
use sha1::{Digest, Sha1};

use super::layout::{
    MIGRATE_SCRIPT, POST_SCRIPT, SEQ_TTL_S, STREAM_MAXLEN, id_key, log_key, room_channel, route, seq_key,
};
use super::{Commands, TAG_INTERNAL, TAG_KIND, TAG_POST, TAG_SCRIPT};
use crate::bus::Value;
use crate::chat::PostIntent;

/// A post on its way to Redis.
#[derive(Debug, Clone)]
struct Post {
    /// The room.
    room: String,
    /// Its number among this process's posts to the room (from 1).
    seq: u64,
    /// JSON before the id.
    prefix: String,
    /// JSON after the id.
    suffix: String,
    /// The author's connection key and serial.
    author: (usize, u64),
    /// The highest id the process knew for the room when it was posted.
    known_last: u64,
}

/// What a reply to a script call means for one of its posts.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// Published with this id (its message arrives through the
    /// subscription, perhaps before this reply).
    Posted {
        /// The room.
        room: String,
        /// The id Redis gave it.
        id: u64,
        /// The author's connection key and serial.
        author: (usize, u64),
    },
    /// Applied by an earlier try whose answer was lost: its message came
    /// (or comes) through the subscription; the author's wait is over.
    Repeated {
        /// The author's connection key and serial.
        author: (usize, u64),
    },
    /// The post failed for good: its author is to be told.
    Failed {
        /// The author's connection key and serial.
        author: (usize, u64),
        /// Why, for the log.
        reason: String,
    },
}

/// Posts waiting for the turn's end, for Redis, or for its answer.
#[derive(Debug)]
pub(super) struct Posts {
    /// This process's id: the script keeps a sequence mark per process.
    proc_id: String,
    /// The script: [`POST_SCRIPT`], or in a cluster its SPUBLISH variant.
    script: String,
    /// Its SHA1, for EVALSHA.
    script_sha: String,
    /// In a cluster: SPUBLISH, and one call in flight per room.
    sharded: bool,
    /// In a cluster: the rooms with a call in flight.
    busy: HashSet<String>,
    /// Counts script calls, for their tags.
    calls: u64,
    /// The number of this process's last post to each room.
    seqs: HashMap<String, u64>,
    /// Posts waiting to be sent: this turn's, and those that waited for
    /// Redis or must go again, in the order they were first sent.
    waiting: VecDeque<Post>,
    /// Script calls sent and not answered yet, by tag.
    in_flight: HashMap<u64, Vec<Post>>,
    /// `--redis-buffer`: posts that may wait while Redis is away.
    backlog_cap: usize,
    /// `--redis-batch`: posts per script call at most.
    batch: usize,
    /// Posts sent, and script calls that carried them (for `/metrics`).
    sent: (u64, u64),
    /// In a cluster, the same by hash slot: `/metrics` adds them up by
    /// the master that serves each slot (batching per shard).
    sent_by_slot: HashMap<u16, (u64, u64)>,
}

impl Posts {
    /// No posts yet; `backlog_cap` is `--redis-buffer`, `batch` is `--redis-batch`.
    pub(super) fn new(proc_id: &str, backlog_cap: usize, batch: usize) -> Posts {
        Posts {
            proc_id: proc_id.to_string(),
            script: POST_SCRIPT.to_string(),
            script_sha: HEXLOWER.encode(&Sha1::digest(POST_SCRIPT.as_bytes())),
            sharded: false,
            busy: HashSet::new(),
            calls: 0,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            in_flight: HashMap::new(),
            backlog_cap,
            batch: batch.max(1),
            sent: (0, 0),
            sent_by_slot: HashMap::new(),
        }
    }

    /// The same for a Redis Cluster: the script publishes with SPUBLISH
    /// (on the room's sharded channel, in the room's slot like its keys),
    /// and each room has one call in flight at a time.
    pub(super) fn sharded(mut self) -> Posts {
        self.script = POST_SCRIPT.replace("'PUBLISH'", "'SPUBLISH'");
        self.script_sha = HEXLOWER.encode(&Sha1::digest(self.script.as_bytes()));
        self.sharded = true;
        self
    }

    /// After every connect: moves keys of an older layout (a single Redis
    /// only: a cluster's masters each hold part of the keys, and a cluster
    /// never held the old layout), then loads the script; both before any
    /// post on the connection. In a cluster this load reaches one master;
    /// a post to another is answered NOSCRIPT once, and goes again with
    /// the script itself (see `on_reply`).
    pub(super) fn on_connected(&self, commands: &mut Commands) {
        if !self.sharded {
            let migrate = redis::cmd("EVAL").arg(MIGRATE_SCRIPT).arg(0).get_packed_command();
            commands.push((migrate, TAG_INTERNAL, None));
        }
        let load = redis::cmd("SCRIPT").arg("LOAD").arg(&self.script).get_packed_command();
        commands.push((load, TAG_SCRIPT, None));
    }

    /// Takes a member's post; it leaves at the turn's end ([`Posts::send`])
    /// or, while Redis is away (`up` false), when it is back. `false` means
    /// Redis is away and too many posts wait already: the post was not taken.
    pub(super) fn post(&mut self, intent: PostIntent, up: bool) -> bool {
        if !up && self.waiting.len() >= self.backlog_cap {
            return false;
        }
        let PostIntent { room, username, text, ts, known_last, author } = intent;
        let mut prefix = String::from(r#"{"type":"message","room":"#);
        prefix.push_str(&serde_json::Value::from(room.as_str()).to_string());
        prefix.push_str(r#","id":"#);
        let suffix = format!(
            r#","username":{},"message":{},"ts":{ts}}}"#,
            serde_json::Value::from(username),
            serde_json::Value::from(text)
        );
        let seq = self.seqs.entry(room.clone()).or_insert(0);
        *seq += 1;
        self.waiting.push_back(Post { room, seq: *seq, prefix, suffix, author, known_last });
        true
    }

    /// Sends every waiting post, one script call per room and per
    /// `--redis-batch` posts, each room's posts in their order. The calls
    /// are pipelined: the bus writes them all in one go.
    pub(super) fn send(&mut self, commands: &mut Commands) {
        if self.waiting.is_empty() {
            return;
        }
        // Group by room, keeping each room's order (rooms in order of
        // their first waiting post, so the oldest post leaves first).
        let mut order: Vec<String> = Vec::new();
        let mut by_room: HashMap<String, Vec<Post>> = HashMap::new();
        let mut held = VecDeque::new();
        for post in self.waiting.drain(..) {
            // A cluster's room with a call in flight: wait for its answer.
            if self.busy.contains(&post.room) {
                held.push_back(post);
                continue;
            }
            let posts = by_room.entry(post.room.clone()).or_insert_with(|| {
                order.push(post.room.clone());
                Vec::new()
            });
            posts.push(post);
        }
        // Rooms take turns, one call each per round: a hot room's many
        // calls do not all go ahead of a quiet room's one. Each room's calls
        // still leave in its order, and Redis runs a pipeline in order.
        let mut rooms: VecDeque<Vec<Post>> = VecDeque::new();
        for room in order {
            let Some(mut posts) = by_room.remove(&room) else { continue };
            // A retried post and a newer one may meet here: numbers in order.
            posts.sort_by_key(|p| p.seq);
            rooms.push_back(posts);
        }
        while let Some(mut posts) = rooms.pop_front() {
            let rest = posts.split_off(self.batch.min(posts.len()));
            self.send_call(posts, false, commands);
            if rest.is_empty() {
                continue;
            }
            if self.sharded {
                // One call at a time: the rest wait for its answer.
                held.extend(rest);
            } else {
                rooms.push_back(rest);
            }
        }
        self.waiting = held;
    }

    /// One script call for `posts`, all to one room, in order: EVALSHA, or
    /// with `body` EVAL with the whole script (which also caches it there).
    fn send_call(&mut self, posts: Vec<Post>, body: bool, commands: &mut Commands) {
        let Some(first) = posts.first() else { return };
        self.calls += 1;
        let tag = TAG_POST | (self.calls & !TAG_KIND);
        let known_last = posts.iter().map(|p| p.known_last).max().unwrap_or(0);
        if self.sharded {
            self.busy.insert(first.room.clone());
        }
        let slot = route(&id_key(&first.room));
        let mut cmd = if body { redis::cmd("EVAL") } else { redis::cmd("EVALSHA") };
        cmd.arg(if body { &self.script } else { &self.script_sha })
            .arg(3)
            .arg(id_key(&first.room))
            .arg(log_key(&first.room))
            .arg(seq_key(&first.room))
            .arg(room_channel(&first.room))
            .arg(known_last)
            .arg(&self.proc_id)
            .arg(STREAM_MAXLEN)
            .arg(SEQ_TTL_S);
        for post in &posts {
            cmd.arg(post.seq).arg(&post.prefix).arg(&post.suffix);
        }
        commands.push((cmd.get_packed_command(), tag, slot));
        self.sent.0 += posts.len() as u64;
        self.sent.1 += 1;
        if let Some(slot) = slot.filter(|_| self.sharded) {
            let by_slot = self.sent_by_slot.entry(slot).or_default();
            by_slot.0 += posts.len() as u64;
            by_slot.1 += 1;
        }
        self.in_flight.insert(tag, posts);
    }

    /// A script call failed without an answer (the connection dropped, or
    /// the bus was down): its posts wait to go again (the sequence marks
    /// make that safe). Returns the authors of those given up because too
    /// many posts wait already.
    pub(super) fn on_failed(&mut self, tag: u64) -> Vec<(usize, u64)> {
        let Some(posts) = self.in_flight.remove(&tag) else { return Vec::new() };
        self.release(&posts);
        let mut given_up = Vec::new();
        for post in posts {
            if self.waiting.len() < self.backlog_cap {
                self.waiting.push_back(post);
            } else {
                given_up.push(post.author);
            }
        }
        given_up
    }

    /// Redis answered a script call: one answer per post of it (a repeat
    /// of a post applied before only ends its author's wait).
    pub(super) fn on_reply(&mut self, tag: u64, value: Value, commands: &mut Commands) -> Vec<Answer> {
        let Some(posts) = self.in_flight.remove(&tag) else { return Vec::new() };
        self.release(&posts);
        match value {
            Value::Array(ids) => posts
                .into_iter()
                .zip(ids.into_iter().map(Some).chain(std::iter::repeat(None)))
                .map(|(post, id)| match id {
                    Some(Value::Int(id)) if id > 0 => {
                        Answer::Posted { room: post.room, id: id as u64, author: post.author }
                    }
                    // Applied by an earlier try whose answer was lost: its
                    // message came (or comes) through the subscription.
                    Some(Value::Int(_)) => Answer::Repeated { author: post.author },
                    other => Answer::Failed {
                        author: post.author,
                        reason: format!("unexpected answer to a post: {other:?}"),
                    },
                })
                .collect(),
            // The script cache was emptied (Redis restarted, or a replica
            // took over, since our SCRIPT LOAD), or in a cluster this
            // master never had it: the call goes again as EVAL, with the
            // script itself, which runs it and caches it wherever the call
            // ends up (even through an ASK redirect, which a separate
            // SCRIPT LOAD would not follow). Later calls pipelined behind
            // this one fail the same way and come back here in order, so
            // each room's posts keep their order.
            Value::Error(e) if e.starts_with("NOSCRIPT") => {
                self.send_call(posts, true, commands);
                Vec::new()
            }
            other => posts
                .into_iter()
                .map(|post| Answer::Failed {
                    author: post.author,
                    reason: format!("Redis refused the post: {other:?}"),
                })
                .collect(),
        }
    }

    /// A call of a cluster's room was answered (or failed): the room's
    /// next call may go.
    fn release(&mut self, posts: &[Post]) {
        if let Some(post) = posts.first() {
            self.busy.remove(&post.room);
        }
    }

    /// Posts sent and script calls that carried them, since the start.
    pub(super) fn sent(&self) -> (u64, u64) {
        self.sent
    }

    /// The same by hash slot (in a cluster; empty with one Redis).
    pub(super) fn sent_by_slot(&self) -> &HashMap<u16, (u64, u64)> {
        &self.sent_by_slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(room: &str, text: &str) -> PostIntent {
        PostIntent { room: room.into(), username: "a".into(), text: text.into(), ts: 0, known_last: 0, author: (1, 1) }
    }

    /// The (tag, room, sequence numbers) of each call in `commands`.
    fn calls(posts: &Posts, commands: &Commands) -> Vec<(u64, String, Vec<u64>)> {
        commands
            .iter()
            .filter_map(|(_, tag, _)| {
                let call = posts.in_flight.get(tag)?;
                let room = call.first()?.room.clone();
                Some((*tag, room, call.iter().map(|p| p.seq).collect()))
            })
            .collect()
    }

    #[test]
    fn post_json_halves_make_a_message_event() {
        let mut posts = Posts::new("p", 10, 100);
        let mut commands = Commands::new();
        let post = PostIntent { username: "al\"ice".into(), ts: 17, known_last: 3, ..intent("r", "hi <b>") };
        assert!(posts.post(post, true));
        posts.send(&mut commands);
        let post = posts.in_flight.values().next().and_then(|c| c.first()).unwrap();
        let json = format!("{}{}{}", post.prefix, 42, post.suffix);
        assert_eq!(json, crate::chat::protocol::message_json("r", 42, "al\"ice", "hi <b>", 17));
        let p = super::super::layout::decode_published(json.as_bytes()).unwrap();
        assert_eq!((p.id, p.username.as_str()), (42, "al\"ice"));
    }

    #[test]
    fn a_turn_s_posts_leave_one_call_per_room_and_batch_rooms_in_turn() {
        let mut posts = Posts::new("p", 100, 2);
        let mut commands = Commands::new();
        for (room, text) in [("a", "1"), ("b", "1"), ("a", "2"), ("a", "3"), ("b", "2")] {
            assert!(posts.post(intent(room, text), true));
        }
        posts.send(&mut commands);
        let got: Vec<(String, Vec<u64>)> = calls(&posts, &commands).into_iter().map(|(_, r, s)| (r, s)).collect();
        assert_eq!(
            got,
            vec![("a".into(), vec![1, 2]), ("b".into(), vec![1, 2]), ("a".into(), vec![3])],
            "rooms take turns, in order of their first post; at most 2 posts a call"
        );
        assert_eq!(posts.sent(), (5, 3));
    }

    #[test]
    fn a_failed_call_goes_again_in_order_and_the_backlog_is_bounded() {
        let mut posts = Posts::new("p", 3, 100);
        let mut commands = Commands::new();
        assert!(posts.post(intent("r", "1"), true));
        assert!(posts.post(intent("r", "2"), true));
        posts.send(&mut commands);
        let (_, tag, _) = commands.remove(0);
        // A newer post waits while the first call fails.
        assert!(posts.post(intent("r", "3"), true));
        assert_eq!(posts.on_failed(tag), Vec::<(usize, u64)>::new());
        posts.send(&mut commands);
        let got: Vec<Vec<u64>> = calls(&posts, &commands).into_iter().map(|(_, _, s)| s).collect();
        assert_eq!(got, vec![vec![1, 2, 3]], "the retried posts first, numbers in order");
        // Three wait now: a fourth is refused, and a failed call's posts
        // beyond the bound are given up (their authors told).
        let (_, tag, _) = commands.remove(0);
        assert!(posts.post(intent("r", "4"), false));
        assert_eq!(posts.on_failed(tag).len(), 1);
        assert!(!posts.post(intent("r", "5"), false), "Redis away and too many posts wait: the author is told");
        assert!(posts.post(intent("r", "6"), true), "while Redis is up a turn's posts are all taken");
    }

    #[test]
    fn repeats_only_end_the_wait_and_a_lost_script_goes_again_with_the_call() {
        let mut posts = Posts::new("p", 10, 100);
        let mut commands = Commands::new();
        assert!(posts.post(intent("r", "1"), true));
        assert!(posts.post(intent("r", "2"), true));
        posts.send(&mut commands);
        let (_, tag, _) = commands.remove(0);
        let answer = posts.on_reply(tag, Value::Error("NOSCRIPT No matching script".into()), &mut commands);
        assert!(answer.is_empty());
        assert_eq!(commands.iter().map(|(_, t, _)| *t & TAG_KIND).collect::<Vec<_>>(), vec![TAG_POST]);
        let (packed, tag, _) = &commands[0];
        assert!(
            packed.starts_with(b"*") && String::from_utf8_lossy(packed).contains("\r\nEVAL\r\n"),
            "the script itself"
        );
        let tag = *tag;
        let answers = posts.on_reply(tag, Value::Array(vec![Value::Int(0), Value::Int(5)]), &mut commands);
        assert_eq!(
            answers,
            vec![Answer::Repeated { author: (1, 1) }, Answer::Posted { room: "r".into(), id: 5, author: (1, 1) }]
        );
    }
}
