//! Rooms shared by several processes through Redis (`--redis`).
//!
//! With Redis, a room's members may sit on any process, so one process can
//! no longer hand out ids by itself. The order of the conversation comes from
//! Redis instead: a post runs one Lua script ([`POST_SCRIPT`]) that takes the
//! room's next id (INCR), appends the message to the room's stream (XADD
//! with the id as the entry id, capped by MAXLEN), and PUBLISHes it. Redis
//! runs scripts one at a time, so every process receives every message in
//! the same order, with the same gapless ids. Each process then treats a
//! published message exactly as the embedded mode treats a local post: it
//! stores it in its own `--data`, and broadcasts it to its local members once
//! that commit is done.
//!
//! What can go wrong, and what happens:
//!
//! - Redis is away when a member posts: the post waits in a bounded backlog
//!   (`--redis-buffer`) and is sent when Redis is back; past the bound the
//!   sender gets an `unavailable` error event. Never silently dropped.
//! - The connection drops with a post in flight: the outcome is unknown, so
//!   the post is sent again. The script remembers each post's unique id for
//!   an hour and answers a repeat with the id it already gave, so a retry
//!   never publishes twice.
//! - The subscription drops: messages published meanwhile were missed. On
//!   resubscribing, every live room reads its stream from the last id it
//!   delivered, so members catch up without a gap. A message that arrives
//!   with a gap at any other time triggers the same catch-up.
//! - Redis restarts empty: the script is given the highest id this process
//!   knows for the room and never hands out an id at or below it.
//!
//! History (welcome, `?since=`, scroll-back) is read from the room's stream,
//! so it is the same whichever process a client lands on, including one
//! started after the messages were sent.
//!
//! This file knows the Redis data layout and the chat, but no sockets: it
//! produces packed commands (tagged) for the reactor's [`crate::bus::Bus`]
//! and consumes its replies and messages.

use std::collections::{HashMap, VecDeque};

use data_encoding::HEXLOWER;
use sha1::{Digest, Sha1};

use crate::bus::Value;
use crate::storage::{ReadRange, StoredMessage};

/// The channel every process publishes messages on and subscribes to.
pub const MESSAGES_CHANNEL: &[u8] = b"chatroom:messages";

/// The channel for presence (joins, leaves, and periodic snapshots).
pub const PRESENCE_CHANNEL: &[u8] = b"chatroom:presence";

/// Entries kept in each room's stream (approximately: MAXLEN ~).
pub const STREAM_MAXLEN: u64 = 10_000;

/// How long a post's unique id is remembered for deduplication, in seconds.
const DEDUPE_TTL_S: u64 = 3600;

/// Tags are the reactor-wide names of bus commands; the top two bits say
/// what a reply is for.
const TAG_POST: u64 = 1 << 62;
const TAG_READ: u64 = 2 << 62;
/// Tag of commands whose replies nobody waits for.
pub const TAG_INTERNAL: u64 = 3 << 62;
const TAG_KIND: u64 = 3 << 62;
/// With `TAG_READ`: the stream's first entry, asked just before a read (see `Cluster::read`).
const TAG_OLDEST: u64 = 1 << 61;

/// Tag of the SCRIPT LOAD sent after every (re)connect.
const TAG_SCRIPT: u64 = TAG_INTERNAL | 1;
/// Tag of the HGETALL that learns rooms other processes created.
const TAG_ROOMS: u64 = TAG_INTERNAL | 2;

/// INCR + XADD + PUBLISH, atomically, at most once per post.
///
/// KEYS: 1 = the room's id counter, 2 = the room's stream, 3 = the post's
/// dedupe key. ARGV: 1 = channel, 2 = highest id the caller knows,
/// 3/4 = the JSON event before/after the id, 5 = MAXLEN, 6 = dedupe TTL.
pub const POST_SCRIPT: &str = r#"
local done = redis.call('GET', KEYS[3])
if done then return tonumber(done) end
local id = redis.call('INCR', KEYS[1])
local known = tonumber(ARGV[2])
if id <= known then
  id = known + 1
  redis.call('SET', KEYS[1], id)
end
local json = ARGV[3] .. id .. ARGV[4]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], id .. '-0', 'm', json)
redis.call('PUBLISH', ARGV[1], json)
redis.call('SET', KEYS[3], id, 'EX', ARGV[6])
return id
"#;

/// A post on its way to Redis.
#[derive(Debug, Clone)]
pub struct Post {
    /// Unique over all processes and restarts: process id + counter.
    uid: String,
    /// The room.
    pub room: String,
    /// JSON before the id.
    prefix: String,
    /// JSON after the id.
    suffix: String,
    /// The sender's connection key and serial (for error events).
    pub sender: (usize, u64),
    /// The highest id the process knew for the room when it was posted.
    known_last: u64,
}

/// What a bus reply meant for the chat.
#[derive(Debug)]
pub enum ReplyFor {
    /// A post was published with this id (its message arrives through the
    /// subscription, perhaps before this reply).
    Posted {
        /// The room.
        room: String,
        /// The id Redis gave it.
        id: u64,
        /// The poster's connection key and serial.
        sender: (usize, u64),
    },
    /// A post failed for good: tell its sender.
    PostFailed {
        /// Connection key and serial.
        sender: (usize, u64),
        /// Why.
        reason: String,
    },
    /// A history read came back: (ticket, messages ascending).
    Read(u64, Vec<StoredMessage>, Option<u64>),
    /// Rooms known to the cluster: (name, created ms).
    Rooms(Vec<(String, u64)>),
    /// Nothing for the chat to do.
    Nothing,
}

/// Redis-mode state of the chat.
#[derive(Debug)]
pub struct Cluster {
    /// This process's id, for post uids and presence.
    pub proc_id: String,
    next_post: u64,
    script_sha: String,
    /// Posts sent and not yet answered, by tag.
    in_flight: HashMap<u64, Post>,
    /// Posts waiting for Redis, oldest first (bounded by `--redis-buffer`).
    backlog: VecDeque<Post>,
    backlog_cap: usize,
    /// Packed commands for the bus, with their tags.
    pub commands: Vec<(Vec<u8>, u64)>,
    /// The command connection is up.
    pub up: bool,
    /// History reads sent and not answered, by tag (to resend on failure).
    reads: HashMap<u64, Vec<u8>>,
    /// Reads that failed for lack of a connection, sent again on `CommandUp`.
    deferred_reads: Vec<(Vec<u8>, u64)>,
    /// The stream's oldest id as answered just before a read, by ticket.
    oldest: HashMap<u64, Option<u64>>,
}

impl Cluster {
    /// Redis-mode state; `backlog_cap` is `--redis-buffer`.
    pub fn new(backlog_cap: usize) -> Cluster {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
                ^ u128::from(std::process::id()) << 64;
        Cluster {
            proc_id: format!("{:x}", seed & 0xffff_ffff_ffff_ffff_ffff),
            next_post: 0,
            script_sha: HEXLOWER.encode(&Sha1::digest(POST_SCRIPT.as_bytes())),
            in_flight: HashMap::new(),
            backlog: VecDeque::new(),
            backlog_cap,
            commands: Vec::new(),
            up: false,
            reads: HashMap::new(),
            deferred_reads: Vec::new(),
            oldest: HashMap::new(),
        }
    }

    /// The command connection came up: load the script, learn the rooms,
    /// then send what waited.
    pub fn on_command_up(&mut self) {
        self.up = true;
        let load = redis::cmd("SCRIPT").arg("LOAD").arg(POST_SCRIPT).get_packed_command();
        self.commands.push((load, TAG_SCRIPT));
        self.commands.push((redis::cmd("HGETALL").arg("chatroom:rooms").get_packed_command(), TAG_ROOMS));
        while let Some(post) = self.backlog.pop_front() {
            self.send(post);
        }
        for (cmd, tag) in std::mem::take(&mut self.deferred_reads) {
            self.reads.insert(tag, cmd.clone());
            self.commands.push((cmd, tag));
        }
    }

    /// The command connection went down.
    pub fn on_down(&mut self) {
        self.up = false;
    }

    /// Records a new room in the cluster-wide room list.
    pub fn create_room(&mut self, room: &str, created: u64) {
        let cmd = redis::cmd("HSETNX").arg("chatroom:rooms").arg(room).arg(created).get_packed_command();
        self.commands.push((cmd, TAG_INTERNAL));
    }

    /// A member's post. `known_last` is the highest id this process knows
    /// for the room (the re-seed floor). `false` means the backlog is full.
    pub fn post(
        &mut self,
        room: &str,
        username: &str,
        text: &str,
        ts: u64,
        known_last: u64,
        sender: (usize, u64),
    ) -> bool {
        self.next_post += 1;
        let mut prefix = String::from(r#"{"type":"message","room":"#);
        prefix.push_str(&serde_json::Value::from(room).to_string());
        prefix.push_str(r#","id":"#);
        let suffix = format!(
            r#","username":{},"message":{},"ts":{ts}}}"#,
            serde_json::Value::from(username),
            serde_json::Value::from(text)
        );
        let post = Post {
            uid: format!("{}:{}", self.proc_id, self.next_post),
            room: room.to_string(),
            prefix,
            suffix,
            sender,
            known_last,
        };
        if self.up {
            self.send(post);
            true
        } else if self.backlog.len() < self.backlog_cap {
            self.backlog.push_back(post);
            true
        } else {
            false
        }
    }

    fn send(&mut self, post: Post) {
        let tag = TAG_POST | self.next_tag();
        let cmd = redis::cmd("EVALSHA")
            .arg(&self.script_sha)
            .arg(3)
            .arg(format!("chatroom:room:{}:id", post.room))
            .arg(format!("chatroom:room:{}:log", post.room))
            .arg(format!("chatroom:post:{}", post.uid))
            .arg(MESSAGES_CHANNEL)
            .arg(post.known_last)
            .arg(&post.prefix)
            .arg(&post.suffix)
            .arg(STREAM_MAXLEN)
            .arg(DEDUPE_TTL_S)
            .get_packed_command();
        self.commands.push((cmd, tag));
        self.in_flight.insert(tag, post);
    }

    fn next_tag(&mut self) -> u64 {
        self.next_post += 1;
        self.next_post & !TAG_KIND
    }

    /// A history read of `range` from the room's stream. The reply comes back as [`ReplyFor::Read`].
    pub fn read(&mut self, ticket: u64, range: &ReadRange) {
        let ReadRange { room, after, before, limit, newest } = range;
        let key = format!("chatroom:room:{room}:log");
        // First the stream's first entry: replies come back in order, so when
        // the range arrives we can say where history starts (the answer's
        // `oldest_id`), not only where this page does.
        let first = redis::cmd("XRANGE").arg(&key).arg("-").arg("+").arg("COUNT").arg(1).get_packed_command();
        self.commands.push((first, TAG_READ | TAG_OLDEST | ticket));
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
        self.commands.push((cmd.clone(), TAG_READ | ticket));
        self.reads.insert(TAG_READ | ticket, cmd);
    }

    /// A command failed without an answer (the connection dropped, or the
    /// bus was down): a post is retried (the script makes that safe).
    pub fn on_failed(&mut self, tag: u64) -> ReplyFor {
        if tag & TAG_KIND == TAG_POST
            && let Some(post) = self.in_flight.remove(&tag)
        {
            if self.backlog.len() < self.backlog_cap {
                self.backlog.push_back(post);
                return ReplyFor::Nothing;
            }
            return ReplyFor::PostFailed { sender: post.sender, reason: "Redis is unavailable".into() };
        }
        // A read that never reached Redis is not an empty stream: answering
        // "nothing" would skip messages still there. It waits for the
        // command connection and goes again.
        if tag & TAG_KIND == TAG_READ
            && let Some(cmd) = self.reads.remove(&tag)
        {
            self.deferred_reads.push((cmd, tag));
        }
        ReplyFor::Nothing
    }

    /// A reply from Redis.
    pub fn on_reply(&mut self, tag: u64, value: Value) -> ReplyFor {
        match tag & TAG_KIND {
            TAG_POST => {
                let Some(post) = self.in_flight.remove(&tag) else { return ReplyFor::Nothing };
                match value {
                    Value::Int(id) => ReplyFor::Posted { room: post.room, id: id.max(0) as u64, sender: post.sender },
                    // The script cache was emptied (Redis restarted between
                    // our SCRIPT LOAD and this call): load it and go again.
                    Value::Error(e) if e.starts_with("NOSCRIPT") => {
                        let load = redis::cmd("SCRIPT").arg("LOAD").arg(POST_SCRIPT).get_packed_command();
                        self.commands.push((load, TAG_SCRIPT));
                        self.send(post);
                        ReplyFor::Nothing
                    }
                    other => ReplyFor::PostFailed {
                        sender: post.sender,
                        reason: format!("Redis refused the post: {other:?}"),
                    },
                }
            }
            TAG_READ if tag & TAG_OLDEST != 0 => {
                let ticket = tag & !(TAG_KIND | TAG_OLDEST);
                self.oldest.insert(ticket, stream_messages(&value).first().map(|m| m.id));
                ReplyFor::Nothing
            }
            TAG_READ => {
                self.reads.remove(&tag);
                let ticket = tag & !TAG_KIND;
                let messages = stream_messages(&value);
                let page_first = messages.first().map(|m| m.id);
                // Without the first-entry answer (a read sent again after a
                // reconnect), the page's own first id is the best we know.
                let oldest = match self.oldest.remove(&ticket) {
                    Some(Some(first)) => Some(page_first.map_or(first, |page| page.min(first))),
                    Some(None) => page_first,
                    None => page_first,
                };
                ReplyFor::Read(ticket, messages, oldest)
            }
            _ if tag == TAG_ROOMS => ReplyFor::Rooms(room_list(&value)),
            _ => {
                if let Value::Error(e) = value {
                    log::warn!("redis: {e}");
                }
                ReplyFor::Nothing
            }
        }
    }

    /// Posts waiting for Redis.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Posts sent and not answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// A published message, decoded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Published {
    /// The room.
    pub room: String,
    /// Its id.
    pub id: u64,
    /// The sender's name.
    pub username: String,
    /// The text.
    pub message: String,
    /// Milliseconds since the epoch.
    pub ts: u64,
}

/// Decodes a message from the channel (or a stream entry).
pub fn decode_published(payload: &[u8]) -> Option<Published> {
    serde_json::from_slice(payload).ok()
}

/// XRANGE/XREVRANGE reply → messages in ascending id order.
/// Each entry is `[entry-id, [field, value, ...]]` with field `m` = the JSON event.
fn stream_messages(value: &Value) -> Vec<StoredMessage> {
    let Value::Array(entries) = value else { return Vec::new() };
    let mut out: Vec<StoredMessage> = entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let Some(Value::Array(fields)) = parts.get(1) else { return None };
            let json = fields.chunks(2).find_map(|kv| match kv {
                [k, v] if k.as_bytes() == Some(b"m") => v.as_bytes(),
                _ => None,
            })?;
            let p = decode_published(json)?;
            Some(StoredMessage { id: p.id, ts: p.ts, username: p.username, text: p.message })
        })
        .collect();
    out.sort_by_key(|m| m.id);
    out
}

/// HGETALL chatroom:rooms → (name, created).
fn room_list(value: &Value) -> Vec<(String, u64)> {
    let Value::Array(items) = value else { return Vec::new() };
    items
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => {
                let name = String::from_utf8(k.as_bytes()?.to_vec()).ok()?;
                let created = std::str::from_utf8(v.as_bytes()?).ok()?.parse().ok()?;
                Some((name, created))
            }
            _ => None,
        })
        .collect()
}

/// The presence message a process publishes: its members per room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PresenceNote {
    /// The publishing process.
    pub proc: String,
    /// `true`: `rooms` is everything it has (a snapshot); `false`: only the
    /// rooms that changed, each with its full member list.
    pub full: bool,
    /// Room → names of that process's members there.
    pub rooms: HashMap<String, Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_json_halves_make_a_message_event() {
        let mut c = Cluster::new(10);
        c.up = true;
        assert!(c.post("r", "al\"ice", "hi <b>", 17, 3, (1, 1)));
        let post = c.in_flight.values().next().unwrap();
        let json = format!("{}{}{}", post.prefix, 42, post.suffix);
        assert_eq!(json, crate::chat::protocol::message_json("r", 42, "al\"ice", "hi <b>", 17));
        let p = decode_published(json.as_bytes()).unwrap();
        assert_eq!((p.id, p.username.as_str()), (42, "al\"ice"));
    }

    #[test]
    fn backlog_is_bounded_and_failed_posts_are_retried() {
        let mut c = Cluster::new(2);
        assert!(c.post("r", "a", "1", 0, 0, (1, 1)));
        assert!(c.post("r", "a", "2", 0, 0, (1, 1)));
        assert!(!c.post("r", "a", "3", 0, 0, (1, 1)), "backlog full: the sender is told");
        assert!(c.commands.is_empty());
        c.on_command_up();
        assert_eq!(c.backlog_len(), 0);
        assert_eq!(c.in_flight(), 2);
        let tag = *c.in_flight.keys().next().unwrap();
        assert!(matches!(c.on_failed(tag), ReplyFor::Nothing));
        assert_eq!(c.backlog_len(), 1, "an unanswered post is sent again");
    }

    #[test]
    fn stream_replies_decode() {
        let entry = |id: u64| {
            Value::Array(vec![
                Value::Bulk(format!("{id}-0").into_bytes()),
                Value::Array(vec![
                    Value::Bulk(b"m".to_vec()),
                    Value::Bulk(crate::chat::protocol::message_json("r", id, "u", "t", 5).into_bytes()),
                ]),
            ])
        };
        let msgs = stream_messages(&Value::Array(vec![entry(3), entry(2)]));
        assert_eq!(msgs.iter().map(|m| m.id).collect::<Vec<_>>(), vec![2, 3]);
        assert!(stream_messages(&Value::Nil).is_empty());
    }
}
