//! Posting through Redis: every post runs [`POST_SCRIPT`] once, whatever
//! happens to the connection on the way.
//!
//! A post waits in a bounded backlog while the command connection is down
//! (`--redis-buffer`), and is sent again if the connection drops before the
//! answer: the outcome is unknown then, and the script answers a repeat of
//! the same uid with the id it already gave, so a retry never publishes
//! twice. Only a full backlog, or Redis refusing the script, makes a post
//! fail, and then its author is told.

use std::collections::{HashMap, VecDeque};

use data_encoding::HEXLOWER;
use sha1::{Digest, Sha1};

use super::layout::{DEDUPE_TTL_S, POST_SCRIPT, STREAM_MAXLEN, id_key, log_key, post_key, room_channel};
use super::{Commands, TAG_KIND, TAG_POST, TAG_SCRIPT};
use crate::bus::Value;
use crate::chat::PostIntent;

/// A post on its way to Redis.
#[derive(Debug, Clone)]
struct Post {
    /// Unique over all processes and restarts: process id + counter.
    uid: String,
    /// The room.
    room: String,
    /// JSON before the id.
    prefix: String,
    /// JSON after the id.
    suffix: String,
    /// The author's connection key and serial.
    author: (usize, u64),
    /// The highest id the process knew for the room when it was posted.
    known_last: u64,
}

/// What a reply to a post means.
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
    /// The post failed for good: its author is to be told.
    Failed {
        /// The author's connection key and serial.
        author: (usize, u64),
        /// Why, for the log.
        reason: String,
    },
    /// Nothing to do (sent again, or not a post of ours).
    Nothing,
}

/// Posts waiting for Redis and posts waiting for its answer.
#[derive(Debug)]
pub(super) struct Posts {
    /// This process's id: the first half of every uid.
    proc_id: String,
    /// Counts posts (the second half of their uids) and their tags.
    next: u64,
    /// SHA1 of [`POST_SCRIPT`], for EVALSHA.
    script_sha: String,
    /// Posts sent and not yet answered, by tag.
    in_flight: HashMap<u64, Post>,
    /// Posts waiting for Redis, oldest first (bounded by `--redis-buffer`).
    backlog: VecDeque<Post>,
    backlog_cap: usize,
}

impl Posts {
    /// No posts yet; `backlog_cap` is `--redis-buffer`.
    pub(super) fn new(proc_id: &str, backlog_cap: usize) -> Posts {
        Posts {
            proc_id: proc_id.to_string(),
            next: 0,
            script_sha: HEXLOWER.encode(&Sha1::digest(POST_SCRIPT.as_bytes())),
            in_flight: HashMap::new(),
            backlog: VecDeque::new(),
            backlog_cap,
        }
    }

    /// Loads the script into Redis's cache (after every connect, and when
    /// Redis says it lost it).
    pub(super) fn load_script(commands: &mut Commands) {
        let load = redis::cmd("SCRIPT").arg("LOAD").arg(POST_SCRIPT).get_packed_command();
        commands.push((load, TAG_SCRIPT));
    }

    /// Sends a member's post now if `up`, else keeps it in the backlog.
    /// `false` means the backlog is full: the post was not taken.
    pub(super) fn post(&mut self, intent: PostIntent, up: bool, commands: &mut Commands) -> bool {
        self.next += 1;
        let PostIntent { room, username, text, ts, known_last, author } = intent;
        let mut prefix = String::from(r#"{"type":"message","room":"#);
        prefix.push_str(&serde_json::Value::from(room.as_str()).to_string());
        prefix.push_str(r#","id":"#);
        let suffix = format!(
            r#","username":{},"message":{},"ts":{ts}}}"#,
            serde_json::Value::from(username),
            serde_json::Value::from(text)
        );
        let post = Post { uid: format!("{}:{}", self.proc_id, self.next), room, prefix, suffix, author, known_last };
        if up {
            self.send(post, commands);
            true
        } else if self.backlog.len() < self.backlog_cap {
            self.backlog.push_back(post);
            true
        } else {
            false
        }
    }

    /// The command connection is up: sends what waited, oldest first.
    pub(super) fn send_backlog(&mut self, commands: &mut Commands) {
        while let Some(post) = self.backlog.pop_front() {
            self.send(post, commands);
        }
    }

    fn send(&mut self, post: Post, commands: &mut Commands) {
        self.next += 1;
        let tag = TAG_POST | (self.next & !TAG_KIND);
        let cmd = redis::cmd("EVALSHA")
            .arg(&self.script_sha)
            .arg(3)
            .arg(id_key(&post.room))
            .arg(log_key(&post.room))
            .arg(post_key(&post.uid))
            .arg(room_channel(&post.room))
            .arg(post.known_last)
            .arg(&post.prefix)
            .arg(&post.suffix)
            .arg(STREAM_MAXLEN)
            .arg(DEDUPE_TTL_S)
            .get_packed_command();
        commands.push((cmd, tag));
        self.in_flight.insert(tag, post);
    }

    /// A post's command failed without an answer (the connection dropped,
    /// or the bus was down): it goes back to the backlog, to be sent again
    /// (the script makes that safe). Returns its author if the backlog is
    /// full and the post is given up.
    pub(super) fn on_failed(&mut self, tag: u64) -> Option<(usize, u64)> {
        let post = self.in_flight.remove(&tag)?;
        if self.backlog.len() < self.backlog_cap {
            self.backlog.push_back(post);
            return None;
        }
        Some(post.author)
    }

    /// Redis answered a post.
    pub(super) fn on_reply(&mut self, tag: u64, value: Value, commands: &mut Commands) -> Answer {
        let Some(post) = self.in_flight.remove(&tag) else { return Answer::Nothing };
        match value {
            Value::Int(id) => Answer::Posted { room: post.room, id: id.max(0) as u64, author: post.author },
            // The script cache was emptied (Redis restarted between our
            // SCRIPT LOAD and this call): load it and go again.
            Value::Error(e) if e.starts_with("NOSCRIPT") => {
                Posts::load_script(commands);
                self.send(post, commands);
                Answer::Nothing
            }
            other => Answer::Failed { author: post.author, reason: format!("Redis refused the post: {other:?}") },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(text: &str) -> PostIntent {
        PostIntent { room: "r".into(), username: "a".into(), text: text.into(), ts: 0, known_last: 0, author: (1, 1) }
    }

    #[test]
    fn post_json_halves_make_a_message_event() {
        let mut posts = Posts::new("p", 10);
        let mut commands = Commands::new();
        let post = PostIntent { username: "al\"ice".into(), ts: 17, known_last: 3, ..intent("hi <b>") };
        assert!(posts.post(post, true, &mut commands));
        let post = posts.in_flight.values().next().unwrap();
        let json = format!("{}{}{}", post.prefix, 42, post.suffix);
        assert_eq!(json, crate::chat::protocol::message_json("r", 42, "al\"ice", "hi <b>", 17));
        let p = super::super::layout::decode_published(json.as_bytes()).unwrap();
        assert_eq!((p.id, p.username.as_str()), (42, "al\"ice"));
    }

    #[test]
    fn backlog_is_bounded_and_failed_posts_are_retried() {
        let mut posts = Posts::new("p", 2);
        let mut commands = Commands::new();
        assert!(posts.post(intent("1"), false, &mut commands));
        assert!(posts.post(intent("2"), false, &mut commands));
        assert!(!posts.post(intent("3"), false, &mut commands), "backlog full: the author is told");
        assert!(commands.is_empty());
        posts.send_backlog(&mut commands);
        assert_eq!((posts.backlog.len(), posts.in_flight.len(), commands.len()), (0, 2, 2));
        let (_, tag) = commands[0];
        assert_eq!(posts.on_failed(tag), None);
        assert_eq!(posts.backlog.len(), 1, "an unanswered post is sent again");
        // The backlog full again: a post that fails now is given up.
        assert!(posts.post(intent("4"), false, &mut commands));
        let (_, tag) = commands[1];
        assert_eq!(posts.on_failed(tag), Some((1, 1)));
    }

    #[test]
    fn a_lost_script_is_loaded_again_and_the_post_resent() {
        let mut posts = Posts::new("p", 2);
        let mut commands = Commands::new();
        assert!(posts.post(intent("1"), true, &mut commands));
        let (_, tag) = commands.remove(0);
        let answer = posts.on_reply(tag, Value::Error("NOSCRIPT No matching script".into()), &mut commands);
        assert_eq!(answer, Answer::Nothing);
        assert_eq!(
            commands.iter().map(|(_, t)| *t & TAG_KIND).collect::<Vec<_>>(),
            vec![TAG_SCRIPT & TAG_KIND, TAG_POST]
        );
        let (_, tag) = commands[1];
        let posted = posts.on_reply(tag, Value::Int(5), &mut commands);
        assert_eq!(posted, Answer::Posted { room: "r".into(), id: 5, author: (1, 1) });
    }
}
