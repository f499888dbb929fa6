//! Posting through Redis: the posts of one loop turn leave together, one
//! [`POST_SCRIPT`] call per room (up to `--redis-batch` posts each), all of
//! them pipelined in one write; each post is applied exactly once, whatever
//! happens to the connection on the way.
//!
//! Why batch: a script call has a fixed cost in Redis (parsing, the Lua
//! call, the stream entry, a PUBLISH that every subscriber must read), and
//! a call's posts share all of it: they are one stream entry and one
//! message (`layout.rs`), so a post in a batch costs Redis little more
//! than its bytes, and every subscriber reads one message per call
//! instead of one per post.
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
//! With `--redis-wait N` the script stores without publishing, each call
//! leaves as a chain with a `WAIT N` behind it, and the posts are
//! published from here once it answers ([`Posts::on_reply`]).
//!
//! In a Redis Cluster (`--redis-cluster`) the script publishes with
//! SPUBLISH on the room's sharded channel, and a room has one script call
//! in flight at a time: a call that is redirected (MOVED, ASK) or told to
//! try again goes again later than it first went, and a later call of the
//! same room must not overtake it (the room would take the later posts'
//! numbers first, and answer the earlier ones as repeats). Posts that come
//! meanwhile wait, and leave together in the next call.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use data_encoding::HEXLOWER;
use sha1::{Digest, Sha1};

use super::layout::{
    MIGRATE_SCRIPT, SEQ_TTL_S, STREAM_MAXLEN, batch_payload, id_key, log_key, post_script, room_channel, route, seq_key,
};
use super::{Commands, TAG_INTERNAL, TAG_KIND, TAG_POST, TAG_SCRIPT};
use crate::bus::Value;
use crate::chat::PostIntent;
use crate::chat::protocol::unconfirmed_json;

/// How long, in milliseconds, a `WAIT` (`--redis-wait`) waits for the
/// replicas. A replica that keeps up acknowledges within a round trip
/// (well under a millisecond on one network), so this is only reached
/// when a replica is away or far behind; and a `WAIT` holds its
/// connection (every command pipelined behind it, other rooms' too) for
/// as long as it waits, so the bound is short: a tenth of a second per
/// call, flagged `unconfirmed` after it, rather than a stalled chat. A
/// constant rather than a setting: a longer wait buys nothing that the
/// flag does not already tell.
pub(super) const WAIT_TIMEOUT_MS: u64 = 100;

/// `lines` joined by newlines: a call's posts, as the script takes them.
fn join_lines<'a>(lines: impl Iterator<Item = &'a str> + Clone) -> String {
    let mut out = String::with_capacity(lines.clone().map(|l| l.len() + 1).sum());
    for (i, line) in lines.enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(line);
    }
    out
}

/// A post on its way to Redis.
#[derive(Debug, Clone)]
struct Post {
    /// The room.
    room: Rc<str>,
    /// Its number among this process's posts to the room (from 1).
    seq: u64,
    /// Its JSON event after the id (before it: `layout::event_prefix`).
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
        room: Rc<str>,
        /// The id Redis gave it.
        id: u64,
        /// The author's connection key and serial.
        author: (usize, u64),
    },
    /// A post Redis says it applied before (an earlier try whose answer
    /// was lost): its message came (or comes) through the subscription,
    /// and its author's wait is over. With `--redis-wait` that try may
    /// have stored it without publishing it: the room reads its stream to
    /// make sure (`reread`).
    Repeated {
        /// The room.
        room: Rc<str>,
        /// The author's connection key and serial.
        author: (usize, u64),
        /// Whether the room must read its stream (`--redis-wait`).
        reread: bool,
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
    /// The script: [`super::POST_SCRIPT`], or its SPUBLISH or store-only
    /// variant (`layout::post_script`).
    script: String,
    /// Its SHA1, for EVALSHA.
    script_sha: String,
    /// In a cluster: SPUBLISH, and one call in flight per room.
    sharded: bool,
    /// `--redis-wait`: replicas that must confirm a post before it is
    /// published (0: the script publishes).
    wait: usize,
    /// Posts published unconfirmed: fewer than `wait` replicas had them
    /// when the `WAIT` ended (for `/metrics`).
    unconfirmed: u64,
    /// In a cluster: the rooms with a call in flight.
    busy: HashSet<Rc<str>>,
    /// Counts script calls, for their tags.
    calls: u64,
    /// The number of this process's last post to each room.
    seqs: HashMap<Rc<str>, u64>,
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
            script: post_script(false, true),
            script_sha: HEXLOWER.encode(&Sha1::digest(post_script(false, true).as_bytes())),
            sharded: false,
            wait: 0,
            unconfirmed: 0,
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
        self.sharded = true;
        self.pick_script();
        self
    }

    /// The same with `--redis-wait` `replicas` (0 changes nothing): the
    /// script only stores, each script call goes in a chain with a `WAIT`
    /// behind it, and the posts are published once it answers (see
    /// [`Posts::on_reply`]).
    pub(super) fn waiting_for(mut self, replicas: usize) -> Posts {
        self.wait = replicas;
        self.pick_script();
        self
    }

    /// The script for this mode, and its SHA1.
    fn pick_script(&mut self) {
        self.script = post_script(self.sharded, self.wait == 0);
        self.script_sha = HEXLOWER.encode(&Sha1::digest(self.script.as_bytes()));
    }

    /// Replies a command tagged `tag` takes: a script call with its
    /// `WAIT` behind it is a chain of two (`Bus::command_chain`).
    pub(super) fn replies(&self, tag: u64) -> usize {
        if tag & TAG_KIND == TAG_POST && self.wait > 0 { 2 } else { 1 }
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
        let PostIntent { room, suffix, known_last, author } = intent;
        let seq = self.seqs.entry(room.clone()).or_insert(0);
        *seq += 1;
        self.waiting.push_back(Post { room, seq: *seq, suffix, author, known_last });
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
        let mut order: Vec<Rc<str>> = Vec::new();
        let mut by_room: HashMap<Rc<str>, Vec<Post>> = HashMap::new();
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
            // A call's numbers run on one by one (the script is given the
            // first): a run of retries and the posts after it do, but a
            // retry may meet posts after a call still out.
            let run =
                posts.windows(2).position(|w| matches!(w, [a, b] if b.seq != a.seq + 1)).map_or(posts.len(), |i| i + 1);
            let rest = posts.split_off(self.batch.min(run));
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
            .arg(SEQ_TTL_S)
            .arg(first.seq)
            .arg(posts.len())
            .arg(join_lines(posts.iter().map(|p| p.suffix.as_str())));
        let mut packed = cmd.get_packed_command();
        if self.wait > 0 {
            // Right behind the script, on its connection: WAIT counts the
            // replicas that have this connection's last write. A chain
            // (see `replies`), so a cluster redirects both together.
            packed.extend(redis::cmd("WAIT").arg(self.wait).arg(WAIT_TIMEOUT_MS).get_packed_command());
        }
        commands.push((packed, tag, slot));
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
    /// of a post applied before: see [`Answer::Repeated`]).
    ///
    /// With `--redis-wait N` the answer is the chain's: the script's ids,
    /// then how many replicas `WAIT` counted. The posts are published
    /// now, from here, in id order (one PUBLISH, or SPUBLISH, one event
    /// per line, as the script would have), flagged `unconfirmed` when
    /// fewer than N replicas confirmed in time: they are in the stream
    /// already, so "not sent" would be false, but a failover may lose
    /// them. Published from here, a room's messages may reach the other
    /// processes out of order (another process's later post, confirmed
    /// sooner) or not at all (this process dies between the store and
    /// the publish): either way a listener meets a gap at the room's next
    /// message, or a catch-up when it resubscribes, and reads what it
    /// missed from the stream (`feed.rs`), so every member still gets
    /// every message once, in id order. The other side of that: a read of
    /// the stream (a welcome, a catch-up) made while a post's WAIT is
    /// still out, a window of at most [`WAIT_TIMEOUT_MS`], hands that post
    /// over before it is confirmed, and without the flag.
    pub(super) fn on_reply(&mut self, tag: u64, value: Value, commands: &mut Commands) -> Vec<Answer> {
        let Some(posts) = self.in_flight.remove(&tag) else { return Vec::new() };
        self.release(&posts);
        let (value, confirmed) = self.split_wait(value);
        match value {
            Value::Array(reply) => {
                let (skip, first) = match reply.as_slice() {
                    [Value::Int(skip), Value::Int(first)] if *skip >= 0 && *first >= 0 => {
                        (*skip as usize, *first as u64)
                    }
                    _ => {
                        return posts
                            .into_iter()
                            .map(|post| Answer::Failed {
                                author: post.author,
                                reason: format!("unexpected answer to a post: {reply:?}"),
                            })
                            .collect();
                    }
                };
                // One call's posts are all to one room.
                let room = posts.first().map_or_else(|| Rc::from(""), |p| p.room.clone());
                let mut published = Vec::new();
                let mut answers = Vec::with_capacity(posts.len());
                for (i, post) in posts.into_iter().enumerate() {
                    if i < skip {
                        // Applied by an earlier try whose answer was lost:
                        // its message came (or comes) through the
                        // subscription; with `--redis-wait`, that try may
                        // have stored it and never published it.
                        answers.push(Answer::Repeated { room: post.room, author: post.author, reread: self.wait > 0 });
                        continue;
                    }
                    let id = first.saturating_add((i - skip) as u64);
                    if self.wait > 0 {
                        published.push(if confirmed { post.suffix } else { unconfirmed_json(&post.suffix) });
                    }
                    answers.push(Answer::Posted { room: post.room, id, author: post.author });
                }
                if !published.is_empty() {
                    if !confirmed {
                        self.unconfirmed += published.len() as u64;
                    }
                    let channel = room_channel(&room);
                    let name = if self.sharded { "SPUBLISH" } else { "PUBLISH" };
                    let batch = batch_payload(first, published.iter().map(String::as_str));
                    let publish = redis::cmd(name).arg(&channel).arg(batch).get_packed_command();
                    commands.push((publish, TAG_INTERNAL, route(&channel)));
                }
                answers
            }
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

    /// With `--redis-wait N`, a chain's answer `[script's, WAIT's]` →
    /// the script's, and whether N replicas confirmed. Without, the
    /// answer as it is, confirmed. A chain that did not run as one
    /// (its script refused, say) is not confirmed.
    fn split_wait(&self, value: Value) -> (Value, bool) {
        if self.wait == 0 {
            return (value, true);
        }
        match value {
            Value::Array(mut replies) if replies.len() == 2 => {
                let acks = replies.pop();
                let script = replies.pop().unwrap_or(Value::Nil);
                let confirmed = matches!(acks, Some(Value::Int(n)) if n >= self.wait as i64);
                (script, confirmed)
            }
            other => (other, false),
        }
    }

    /// Posts published unconfirmed since the start (`--redis-wait`).
    pub(super) fn unconfirmed(&self) -> u64 {
        self.unconfirmed
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
        intent_by(room, "a", text, 0)
    }

    fn intent_by(room: &str, username: &str, text: &str, ts: u64) -> PostIntent {
        let mut suffix = String::new();
        crate::chat::protocol::push_message_suffix(&mut suffix, username, text, ts);
        PostIntent { room: room.into(), suffix, known_last: 0, author: (1, 1) }
    }

    /// The (tag, room, sequence numbers) of each call in `commands`.
    fn calls(posts: &Posts, commands: &Commands) -> Vec<(u64, String, Vec<u64>)> {
        commands
            .iter()
            .filter_map(|(_, tag, _)| {
                let call = posts.in_flight.get(tag)?;
                let room = call.first()?.room.to_string();
                Some((*tag, room, call.iter().map(|p| p.seq).collect()))
            })
            .collect()
    }

    /// The last argument of a packed command.
    fn last_arg(packed: &[u8]) -> &[u8] {
        let body = packed.strip_suffix(b"\r\n").unwrap();
        let start = body.windows(2).rposition(|w| w == b"\r\n").unwrap() + 2;
        &body[start..]
    }

    #[test]
    fn post_json_halves_make_a_message_event() {
        let mut posts = Posts::new("p", 10, 100);
        let mut commands = Commands::new();
        let post = PostIntent { known_last: 3, ..intent_by("r", "al\"ice", "hi <b>", 17) };
        assert!(posts.post(post, true));
        posts.send(&mut commands);
        let post = posts.in_flight.values().next().and_then(|c| c.first()).unwrap();
        let json = format!("{}{}{}", super::super::layout::event_prefix("r"), 42, post.suffix);
        assert_eq!(json, crate::chat::protocol::message_json("r", 42, "al\"ice", "hi <b>", 17));
        let p = super::super::layout::decode_message("r", &json).unwrap();
        assert_eq!((p.id, p.ts), (42, 17));
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
    fn a_call_s_numbers_run_on_one_by_one_and_the_script_is_told_the_first() {
        let mut posts = Posts::new("p", 100, 10);
        let mut commands = Commands::new();
        let seqs = |posts: &Posts, commands: &Commands| -> Vec<Vec<u64>> {
            calls(posts, commands).into_iter().map(|(_, _, s)| s).collect()
        };
        // Two turns, two calls.
        for text in ["1", "2"] {
            assert!(posts.post(intent("r", text), true));
        }
        posts.send(&mut commands);
        assert!(posts.post(intent("r", "3"), true));
        posts.send(&mut commands);
        assert_eq!(seqs(&posts, &commands), vec![vec![1, 2], vec![3]]);
        // The first call fails while the second is still out: its retry
        // and a newer post cannot go as one call.
        let first = commands[0].1;
        commands.clear();
        posts.on_failed(first);
        assert!(posts.post(intent("r", "4"), true));
        posts.send(&mut commands);
        assert_eq!(seqs(&posts, &commands), vec![vec![1, 2], vec![4]]);
        let second = String::from_utf8_lossy(&commands[1].0);
        assert!(second.contains(&format!("\r\n{SEQ_TTL_S}\r\n$1\r\n4\r\n")), "first number after the TTL: {second}");
    }

    /// `--redis-wait 1`: the script only stores and a WAIT rides behind
    /// it; the posts are published by the process once the WAIT answers,
    /// flagged when no replica confirmed; a repeat asks for a catch-up.
    #[test]
    fn with_a_wait_the_process_publishes_after_the_replicas_answer() {
        let mut posts = Posts::new("p", 10, 100).waiting_for(1);
        let mut commands = Commands::new();
        assert!(posts.post(intent("r", "1"), true));
        assert!(posts.post(intent("r", "2"), true));
        posts.send(&mut commands);
        let (packed, tag, _) = commands.remove(0);
        let text = String::from_utf8_lossy(&packed);
        assert!(text.starts_with("*") && text.ends_with("\r\nWAIT\r\n$1\r\n1\r\n$3\r\n100\r\n"), "{text}");
        assert_eq!(posts.replies(tag), 2);
        assert_eq!(posts.script_sha, HEXLOWER.encode(&Sha1::digest(post_script(false, false).as_bytes())));

        // One replica confirmed: published as the script would have.
        let ids = Value::Array(vec![Value::Int(0), Value::Int(7)]);
        let answers = posts.on_reply(tag, Value::Array(vec![ids, Value::Int(1)]), &mut commands);
        assert_eq!(answers.len(), 2);
        let (publish, publish_tag, slot) = commands.remove(0);
        assert_eq!((publish_tag, slot), (TAG_INTERNAL, route("chatroom:{r}:msgs")));
        assert_eq!(posts.replies(publish_tag), 1);
        let text = String::from_utf8_lossy(&publish);
        assert!(text.contains("\r\nPUBLISH\r\n") && !text.contains("unconfirmed"), "{text}");
        let events: Vec<u64> =
            super::super::layout::decode_batch("r", last_arg(&publish)).iter().map(|p| p.id).collect();
        assert_eq!(events, vec![7, 8]);
        assert_eq!(posts.unconfirmed(), 0);

        // None confirmed in time: published all the same, flagged, counted.
        assert!(posts.post(intent("r", "3"), true));
        posts.send(&mut commands);
        let (_, tag, _) = commands.remove(0);
        let ids = Value::Array(vec![Value::Int(0), Value::Int(9)]);
        posts.on_reply(tag, Value::Array(vec![ids, Value::Int(0)]), &mut commands);
        let (publish, _, _) = commands.remove(0);
        let published = super::super::layout::decode_batch("r", last_arg(&publish));
        assert_eq!(published.iter().map(|p| (p.id, p.flagged)).collect::<Vec<_>>(), vec![(9, true)]);
        assert_eq!(posts.unconfirmed(), 1);

        // A repeat (stored by a try whose answer was lost): a catch-up.
        assert!(posts.post(intent("r", "4"), true));
        posts.send(&mut commands);
        let (_, tag, _) = commands.remove(0);
        let answers = posts.on_reply(
            tag,
            Value::Array(vec![Value::Array(vec![Value::Int(1), Value::Int(0)]), Value::Int(1)]),
            &mut commands,
        );
        assert_eq!(answers, vec![Answer::Repeated { room: "r".into(), author: (1, 1), reread: true }]);
        assert!(commands.is_empty(), "nothing to publish");
    }

    #[test]
    fn without_a_wait_the_script_publishes_and_the_call_is_one_command() {
        let mut posts = Posts::new("p", 10, 100);
        assert!(posts.post(intent("r", "1"), true));
        let mut commands = Commands::new();
        posts.send(&mut commands);
        let (packed, tag, _) = commands.remove(0);
        assert_eq!(posts.replies(tag), 1);
        assert!(!String::from_utf8_lossy(&packed).contains("WAIT"));
        assert_eq!(posts.script, super::super::POST_SCRIPT);
        let answers = posts.on_reply(tag, Value::Array(vec![Value::Int(0), Value::Int(3)]), &mut commands);
        assert_eq!(answers, vec![Answer::Posted { room: "r".into(), id: 3, author: (1, 1) }]);
        assert!(commands.is_empty(), "the script published");
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
        let answers = posts.on_reply(tag, Value::Array(vec![Value::Int(1), Value::Int(5)]), &mut commands);
        assert_eq!(
            answers,
            vec![
                Answer::Repeated { room: "r".into(), author: (1, 1), reread: false },
                Answer::Posted { room: "r".into(), id: 5, author: (1, 1) }
            ]
        );
    }
}
