//! What the processes keep in Redis, and how it reads back.
//!
//! | key or channel | what it holds |
//! |---|---|
//! | `chatroom:rooms` | hash: every room ever created → created (ms); in a cluster, [`ROOM_LISTS`] hashes `chatroom:rooms:{rN}` instead ([`rooms_key`]) |
//! | `chatroom:{ROOM}:id` | the room's last id (INCR) |
//! | `chatroom:{ROOM}:log` | stream: the room's messages, entry id `<id>-0`, field `m` = the JSON event |
//! | `chatroom:{ROOM}:seq` | hash: process id → the sequence number of its last post applied to the room (retries apply once) |
//! | `chatroom:{ROOM}:msgs` | channel: the room's messages, one or more JSON events per message, one per line ([`room_channel`]) |
//! | [`PRESENCE_CHANNEL`] | each process's members (see `presence.rs`) |
//!
//! Every key of a room carries the room's name in braces, the *hash tag*:
//! Redis Cluster places a key by the part between the first `{` and `}`,
//! so a room's keys share one slot, which is what lets one script touch
//! them all. (Room names hold no braces: `route::valid_room_name`.)
//!
//! A message is the same JSON event everywhere: in the stream, on the
//! channel, and on the WebSocket to a client. [`POST_SCRIPT`] puts the id
//! into it, so the event is built once, by the process that took the post.
//! One payload on a room's channel may carry several events, one per line
//! ([`decode_batch`]): a batch of posts published together.
//!
//! The braces in a room channel's name are a Redis Cluster hash tag: only
//! the `{<room>}` part is hashed, so every key of a room can share one slot.

use std::rc::Rc;

use crate::bus::Value;
use crate::chat::{OrderedMessage, protocol};
use crate::storage::StoredMessage;

/// The channel for presence (joins, leaves, and periodic snapshots).
pub const PRESENCE_CHANNEL: &[u8] = b"chatroom:presence";

/// Entries kept in each room's stream (approximately: MAXLEN ~).
pub const STREAM_MAXLEN: u64 = 10_000;

/// How long a room's sequence marks outlive its last post, in seconds: a
/// retry comes within seconds of its first try, and an hour keeps the hash
/// from collecting the marks of processes long gone.
pub(super) const SEQ_TTL_S: u64 = 3600;

/// The hash of every room ever created: name → created (ms).
pub(super) const ROOMS_KEY: &str = "chatroom:rooms";

/// In a Redis Cluster the room list is split into this many hashes, each
/// with a hash tag of its own, so that no master holds all of it (and
/// takes every room's creation and every directory read): with 16, three
/// masters get about five each. A room's entry is in list
/// `CRC16(room) mod 16`.
pub(super) const ROOM_LISTS: u16 = 16;

/// The hash that lists `room`: [`ROOMS_KEY`] with one Redis, one of
/// [`ROOM_LISTS`] hashes in a cluster.
pub(super) fn rooms_key(room: &str, sharded: bool) -> String {
    if sharded {
        format!("chatroom:rooms:{{r{}}}", crate::bus::slots::crc16(room.as_bytes()) % ROOM_LISTS)
    } else {
        ROOMS_KEY.to_string()
    }
}

/// Every hash of the room list: one with one Redis, [`ROOM_LISTS`] in a
/// cluster.
pub(super) fn rooms_keys(sharded: bool) -> Vec<String> {
    if sharded {
        (0..ROOM_LISTS).map(|n| format!("chatroom:rooms:{{r{n}}}")).collect()
    } else {
        vec![ROOMS_KEY.to_string()]
    }
}

/// The hash slot a command on `key` routes by (a Redis Cluster sends it to
/// that slot's master; a single Redis has every slot).
pub(super) fn route(key: &str) -> Option<u16> {
    Some(crate::bus::key_slot(key.as_bytes()))
}

/// The key of a room's id counter.
pub(super) fn id_key(room: &str) -> String {
    format!("chatroom:{{{room}}}:id")
}

/// The key of a room's stream.
pub(super) fn log_key(room: &str) -> String {
    format!("chatroom:{{{room}}}:log")
}

/// The key of a room's sequence marks.
pub(super) fn seq_key(room: &str) -> String {
    format!("chatroom:{{{room}}}:seq")
}

/// The key of a room's online list in a Redis Cluster: one field per
/// process with members there (see `presence.rs`).
pub(super) fn online_key(room: &str) -> String {
    format!("chatroom:{{{room}}}:online")
}

/// The channel a room's messages are published on: a process subscribes to
/// it while the room has members there (see `channels.rs`).
pub(super) fn room_channel(room: &str) -> String {
    format!("chatroom:{{{room}}}:msgs")
}

/// The room whose channel `channel` is, if it is a room channel.
pub(super) fn channel_room(channel: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(channel).ok()?;
    name.strip_prefix("chatroom:{")?.strip_suffix("}:msgs")
}

/// Posts to one room, in order, atomically; each at most once.
///
/// KEYS: 1 = the room's id counter, 2 = its stream, 3 = its sequence
/// marks. ARGV: 1 = channel, 2 = highest id the caller knows (a Redis that
/// restarted empty never hands out an id at or below it), 3 = the caller's
/// process id, 4 = MAXLEN, 5 = the marks' TTL, 6 = the first post's
/// sequence number (the others follow it one by one), 7 = the JSON event
/// before the id (the same for every post to the room, `event_prefix`),
/// then one per post: its event after the id.
///
/// A process numbers its posts to a room 1, 2, 3… and sends them in that
/// order, retries included; the room remembers the last number it applied
/// from each process, so a post sent again after a lost reply is answered
/// 0 ("applied before") instead of being posted twice. The posts that are
/// new leave in one PUBLISH, one event per line. Returns each post's id
/// (0 for a repeat), in order.
///
/// The per-post work is one XADD and one string: the counter is read and
/// written once per call, and the stream trimmed once (MAXLEN ~ trims
/// whole nodes, so the trim is cheap and the stream stays close to its
/// cap). That is why a post costs Redis several times less in a batch
/// than alone (`bench/redis-batch.md`).
pub const POST_SCRIPT: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0')
local id = tonumber(redis.call('GET', KEYS[1]) or '0')
local known = tonumber(ARGV[2])
if id < known then
  id = known
end
local seq = tonumber(ARGV[6]) - 1
local prefix = ARGV[7]
local ids = {}
local events = {}
for i = 8, #ARGV do
  seq = seq + 1
  if seq <= last then
    ids[#ids + 1] = 0
  else
    id = id + 1
    local json = prefix .. id .. ARGV[i]
    redis.call('XADD', KEYS[2], id .. '-0', 'm', json)
    events[#events + 1] = json
    ids[#ids + 1] = id
  end
end
if #events > 0 then
  redis.call('SET', KEYS[1], id)
  redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[4])
  redis.call('PUBLISH', ARGV[1], table.concat(events, '\n'))
  redis.call('HSET', KEYS[3], ARGV[3], seq)
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return ids
"#;

/// A room's message events up to the id ([`protocol::push_message_prefix`]).
pub(super) fn event_prefix(room: &str) -> String {
    let mut prefix = String::with_capacity(32 + room.len());
    protocol::push_message_prefix(&mut prefix, room);
    prefix
}

/// The line of [`POST_SCRIPT`] that publishes.
const PUBLISH_LINE: &str = "  redis.call('PUBLISH', ARGV[1], table.concat(events, '\\n'))\n";

/// The post script as a process runs it: [`POST_SCRIPT`]; in a Redis
/// Cluster its SPUBLISH variant (on the room's sharded channel, in the
/// room's slot like its keys); and with `--redis-wait` (`publish`
/// false) without the publishing line: the script only stores, because
/// `WAIT` cannot run inside a script, and the process publishes once the
/// replicas have confirmed (`posts.rs`). Same keys and arguments either way.
pub(super) fn post_script(sharded: bool, publish: bool) -> String {
    match (publish, sharded) {
        (false, _) => POST_SCRIPT.replace(PUBLISH_LINE, ""),
        (true, true) => POST_SCRIPT.replace("'PUBLISH'", "'SPUBLISH'"),
        (true, false) => POST_SCRIPT.to_string(),
    }
}

/// Moves every room's keys from the names without a hash tag
/// (`chatroom:room:ROOM:id`, `…:log`) to today's, once per Redis: a
/// single Redis that served an earlier chatroom keeps its history. Runs
/// before any post of the process (same connection, in order), marks the
/// Redis as done (`chatroom:layout` = 2), and costs one GET after that.
/// Only for a single Redis: in a cluster the old and new names of a room
/// may sit on different nodes, and a cluster never held the old layout.
pub const MIGRATE_SCRIPT: &str = r#"
if redis.call('GET', 'chatroom:layout') == '2' then return 0 end
local moved = 0
for _, room in ipairs(redis.call('HKEYS', 'chatroom:rooms')) do
  for _, part in ipairs({'id', 'log'}) do
    local old = 'chatroom:room:' .. room .. ':' .. part
    if redis.call('EXISTS', old) == 1 then
      redis.call('RENAMENX', old, 'chatroom:{' .. room .. '}:' .. part)
      moved = moved + 1
    end
  end
end
redis.call('SET', 'chatroom:layout', '2')
return moved
"#;

/// Reads one message event of `room` from its channel: the message
/// keeps the event's bytes, which members receive as they are, when the
/// event is exactly what this build writes; otherwise (fields it does not
/// know) it is rebuilt from the fields it knows.
pub(super) fn decode_message(room: &str, line: &[u8]) -> Option<OrderedMessage> {
    let event = protocol::parse_message_event(line)?;
    if event.room != room {
        return None;
    }
    let json: Rc<str> = match std::str::from_utf8(line) {
        Ok(json) if event.exact && json.ends_with('}') => Rc::from(json),
        _ => {
            let json = protocol::message_json(room, event.id, &event.username, &event.message, event.ts);
            if event.unconfirmed { protocol::unconfirmed_json(&json) } else { json }.into()
        }
    };
    Some(OrderedMessage { id: event.id, ts: event.ts, json, flagged: event.unconfirmed })
}

/// Decodes a payload from `room`'s channel: one or more JSON events, one
/// per line (a batch of posts published together). Lines that are empty,
/// do not decode, or are another room's are skipped; the rest keep their
/// order.
pub(super) fn decode_batch(room: &str, payload: &[u8]) -> Vec<OrderedMessage> {
    payload
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| decode_message(room, line))
        .collect()
}

/// XRANGE/XREVRANGE reply → messages in ascending id order.
/// Each entry is `[entry-id, [field, value, ...]]` with field `m` = the JSON event.
pub(super) fn stream_messages(value: &Value) -> Vec<StoredMessage> {
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
            let event = protocol::parse_message_event(json)?;
            Some(StoredMessage {
                id: event.id,
                ts: event.ts,
                username: event.username.into_owned(),
                text: event.message.into_owned(),
            })
        })
        .collect();
    out.sort_by_key(|m| m.id);
    out
}

/// HGETALL chatroom:rooms → (name, created).
pub(super) fn room_list(value: &Value) -> Vec<(String, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn batches_decode_in_order_and_skip_what_is_not_a_message() {
        let one = |id: u64| crate::chat::protocol::message_json("r", id, "u", "line\nbreak", 5);
        // A text's newline is escaped in its JSON, so it never splits an event.
        let payload = format!("{}\n\n{}\nnot json\n{}\n", one(3), one(4), one(5));
        let ids: Vec<u64> = decode_batch("r", payload.as_bytes()).iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        let seven = decode_batch("r", one(7).as_bytes());
        assert_eq!(seven.first().map(|p| &*p.json), Some(one(7).as_str()), "the event as published");
        // Fields this build does not know are not passed on.
        let more = one(8).replace(r#""ts":5"#, r#""ts":5,"extra":"<b>""#);
        let eight = decode_batch("r", more.as_bytes());
        assert_eq!(eight.first().map(|p| &*p.json), Some(one(8).as_str()), "rebuilt");
        assert!(decode_batch("r", b"").is_empty());
        assert!(decode_batch("other", one(7).as_bytes()).is_empty(), "another room's");
    }

    #[test]
    fn a_room_s_keys_and_channel_share_its_hash_tag() {
        for key in [id_key("team-a"), log_key("team-a"), seq_key("team-a"), room_channel("team-a")] {
            assert!(key.starts_with("chatroom:{team-a}:"), "{key}");
        }
        assert_eq!(room_channel("lobby"), "chatroom:{lobby}:msgs");
        assert_eq!(channel_room(room_channel("a-b_c").as_bytes()), Some("a-b_c"));
        assert_eq!(channel_room(PRESENCE_CHANNEL), None);
        assert_eq!(channel_room(b"chatroom:{x}:other"), None);
    }

    #[test]
    fn a_cluster_s_room_list_is_spread_over_its_masters() {
        assert_eq!(rooms_keys(false), vec![ROOMS_KEY]);
        assert_eq!(rooms_key("lobby", false), ROOMS_KEY);
        let keys = rooms_keys(true);
        assert_eq!(keys.len(), usize::from(ROOM_LISTS));
        assert!(keys.contains(&rooms_key("lobby", true)));
        // The lists land on different slots, spread over the key space.
        let slots: std::collections::BTreeSet<u16> = keys.iter().map(|k| crate::bus::key_slot(k.as_bytes())).collect();
        assert_eq!(slots.len(), keys.len());
        let thirds = |s: &u16| usize::from(*s / (crate::bus::slots::SLOTS / 3 + 1));
        let mut per_third = [0; 3];
        slots.iter().for_each(|s| per_third[thirds(s)] += 1);
        assert!(per_third.iter().all(|&n| n >= 2), "{per_third:?}");
    }

    #[test]
    fn the_store_only_script_is_the_post_script_without_its_publish() {
        assert_eq!(post_script(false, true), POST_SCRIPT);
        assert!(post_script(true, true).contains("'SPUBLISH'"));
        for sharded in [false, true] {
            let store = post_script(sharded, false);
            assert!(!store.contains("PUBLISH") && store.contains("'XADD'"), "{store}");
            assert_eq!(store.len() + PUBLISH_LINE.len(), POST_SCRIPT.len());
        }
    }

    #[test]
    fn room_lists_decode() {
        let list = Value::Array(vec![
            Value::Bulk(b"a".to_vec()),
            Value::Bulk(b"17".to_vec()),
            Value::Bulk(b"b".to_vec()),
            Value::Bulk(b"not a number".to_vec()),
        ]);
        assert_eq!(room_list(&list), vec![("a".to_string(), 17)]);
    }
}
