//! What the processes keep in Redis, and how it reads back.
//!
//! | key or channel | what it holds |
//! |---|---|
//! | `chatroom:rooms` | hash: every room ever created → created (ms); in a cluster, [`ROOM_LISTS`] hashes `chatroom:rooms:{rN}` instead ([`rooms_key`]) |
//! | `chatroom:{ROOM}:id` | the room's last id (INCR) |
//! | `chatroom:{ROOM}:log` | stream: the room's messages, one entry per batch of posts, entry id `<last id>-0`, field `b` = the batch ([`batch_payload`]); entries of earlier builds hold one message each, field `m` = its JSON event |
//! | `chatroom:{ROOM}:seq` | hash: process id → the sequence number of its last post applied to the room (retries apply once) |
//! | `chatroom:{ROOM}:msgs` | channel: the room's messages, one batch per message ([`room_channel`]) |
//! | [`PRESENCE_CHANNEL`] | each process's members (see `presence.rs`) |
//!
//! Every key of a room carries the room's name in braces, the *hash tag*:
//! Redis Cluster places a key by the part between the first `{` and `}`,
//! so a room's keys share one slot, which is what lets one script touch
//! them all. (Room names hold no braces: `route::valid_room_name`.)
//!
//! A message is one JSON event, built once by the process that took the
//! post in two halves around its id (`protocol::push_message_prefix` and
//! `push_message_suffix`). Redis keeps and carries the second halves of a
//! batch of posts under the batch's first id, as one record: the same
//! bytes in the stream and on the channel. A process that reads a batch
//! puts each event back together, and its members receive exactly the
//! bytes the poster built ([`decode_batch`]).
//!
//! The braces in a room channel's name are a Redis Cluster hash tag: only
//! the `{<room>}` part is hashed, so every key of a room can share one slot.

use std::rc::Rc;

use crate::bus::Value;
use crate::chat::{OrderedMessage, protocol};
use crate::storage::StoredMessage;

/// The channel for presence (joins, leaves, and periodic snapshots).
pub const PRESENCE_CHANNEL: &[u8] = b"chatroom:presence";

/// Messages kept in each room's stream (about: the trim drops whole
/// nodes of entries, and an entry holds a batch).
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

/// The key of a room's deleted ids: a sorted set (score = member = the
/// id). A stream entry cannot be rewritten, so a deleted message stays in
/// the stream and every read applies this set, turning it into its
/// tombstone before anyone sees it (`reads.rs`).
pub(super) fn deleted_key(room: &str) -> String {
    format!("chatroom:{{{room}}}:deleted")
}

/// The key of a room's bans: a hash, who → `{"until", "reason"}`
/// (`auth::bans`). Lapsed bans are dropped when a process reads them.
pub(super) fn bans_key(room: &str) -> String {
    format!("chatroom:{{{room}}}:bans")
}

/// A moderation record on a room's channel, after the room's messages
/// published before it: `k` a kick ([`KickRecord`]), `b` a ban
/// ([`BanNote`]), `u<who>` a ban lifted. (A batch starts with a digit, a
/// delete with `d`, a presence note with `{`.)
#[derive(Debug, PartialEq, Eq)]
pub enum Moderation {
    /// Close the members it names, and ban them when it says so.
    Kick(KickRecord),
    /// Keep this ban.
    Ban(BanNote),
    /// Lift this who's ban.
    Unban(String),
}

/// A kick as published (`k` + JSON).
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KickRecord {
    /// Whom.
    pub target: crate::chat::KickTarget,
    /// The close frame's reason (may be empty).
    pub reason: String,
    /// Ban the kicked until then (ms since the epoch).
    pub until: Option<u64>,
}

/// A ban as published (`b` + JSON) and as the bans hash holds it (the
/// hash's field is `who`, its value the rest).
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BanNote {
    /// Whom (`auth::bans`); not in the hash's value.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub who: String,
    /// Until when (ms since the epoch).
    pub until: u64,
    /// Why.
    pub reason: String,
}

impl Moderation {
    /// The record's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, json) = match self {
            Moderation::Kick(kick) => (b'k', serde_json::to_vec(kick)),
            Moderation::Ban(ban) => (b'b', serde_json::to_vec(ban)),
            Moderation::Unban(who) => return [b"u", who.as_bytes()].concat(),
        };
        let mut out = vec![tag];
        out.extend(json.unwrap_or_default());
        out
    }

    /// Reads a record; `None` for anything else (a batch, a delete, a
    /// presence note, or a record that does not parse).
    pub fn decode(payload: &[u8]) -> Option<Moderation> {
        let (&tag, rest) = payload.split_first()?;
        match tag {
            b'k' => serde_json::from_slice(rest).ok().map(Moderation::Kick),
            b'b' => serde_json::from_slice::<BanNote>(rest).ok().filter(|b| !b.who.is_empty()).map(Moderation::Ban),
            b'u' => std::str::from_utf8(rest).ok().map(|who| Moderation::Unban(who.to_string())),
            _ => None,
        }
    }
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
/// process id, 4 = messages the stream keeps ([`STREAM_MAXLEN`]), 5 = the
/// marks' TTL, 6 = the first post's sequence number (the others follow it
/// one by one), 7 = how many posts, 8 = the posts' events after the id
/// (`push_message_suffix`), one per line.
///
/// A process numbers its posts to a room 1, 2, 3… and sends them in that
/// order, retries included; the room remembers the last number it applied
/// from each process, so posts sent again after a lost reply are skipped
/// instead of being posted twice. Repeats can only lead a call (numbers
/// rise through it), so they are its first `skip` lines. Returns `{skip,
/// first}`: the posts after the first `skip` took ids `first`, `first + 1`…
///
/// The new posts are one record, a *batch* (`batch_payload`): the first
/// id, then their lines as they came. It is one stream entry (entry id =
/// the batch's last id) and one PUBLISH, whatever the number of posts. So
/// Redis's work per call hardly grows with the posts in it: no per-post
/// command, no per-post string built in Lua (turning a Lua number into a
/// string is a `printf`, which dominated the per-post cost when every post
/// was an entry of its own). Each process puts the id into each event when
/// it reads a batch ([`decode_batch`]). The stream is trimmed by id,
/// keeping about `ARGV[4]` messages (`MINID ~` drops whole nodes only, so
/// the trim is cheap).
///
/// Numbers become strings through `%d`: Lua's own number format is `%.14g`,
/// which would write id 10^14 as `1e+14`. The id is SET only after the
/// XADD succeeded, because Redis keeps the writes a failing script made
/// before its error: a refused entry must not leave the id counter ahead.
pub const POST_SCRIPT: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0')
local seq = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local posts = ARGV[8]
local skip = last - seq + 1
if skip >= n then
  return {n, 0}
elseif skip > 0 then
  local at = 0
  for _ = 1, skip do
    at = string.find(posts, '\n', at + 1, true)
  end
  posts = string.sub(posts, at + 1)
else
  skip = 0
end
local id = tonumber(redis.call('GET', KEYS[1]) or '0')
local known = tonumber(ARGV[2])
if id < known then
  id = known
end
local first = id + 1
id = id + n - skip
local batch = string.format('%d\n', first) .. posts
local entry = string.format('%d-0', id)
local floor = id - tonumber(ARGV[4])
if floor > 0 then
  redis.call('XADD', KEYS[2], 'MINID', '~', string.format('%d', floor), entry, 'b', batch)
else
  redis.call('XADD', KEYS[2], entry, 'b', batch)
end
redis.call('SET', KEYS[1], string.format('%d', id))
redis.call('PUBLISH', ARGV[1], batch)
redis.call('HSET', KEYS[3], ARGV[3], seq + n - 1)
redis.call('EXPIRE', KEYS[3], ARGV[5])
return {skip, first}
"#;

/// A batch as the post script stores and publishes it: `first` (the first
/// post's id), then each post's event after its id, one per line. (An
/// event's JSON escapes its newlines, so a line is always one event.)
pub(super) fn batch_payload<'a>(first: u64, suffixes: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = itoa::Buffer::new().format(first).to_string();
    for suffix in suffixes {
        out.push('\n');
        out.push_str(suffix);
    }
    out
}

/// A room's message events up to the id ([`protocol::push_message_prefix`]).
pub(super) fn event_prefix(room: &str) -> String {
    let mut prefix = String::with_capacity(32 + room.len());
    protocol::push_message_prefix(&mut prefix, room);
    prefix
}

/// Deletes message `ARGV[2]` of a room. KEYS: 1 = the room's id
/// counter, 2 = its deleted ids ([`deleted_key`]); ARGV: 1 = the room's
/// channel, 2 = the id. Returns 0 for an id the room never handed out,
/// else records the id and publishes a delete record ([`delete_record`])
/// after every message up to it (a channel keeps its order), so each
/// process applies it after the message. Deleting twice records and
/// publishes it again, harmlessly.
pub const DELETE_SCRIPT: &str = r#"
local id = tonumber(ARGV[2])
if id == nil or id < 1 or id > tonumber(redis.call('GET', KEYS[1]) or '0') then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
redis.call('PUBLISH', ARGV[1], 'd' .. ARGV[2])
return 1
"#;

/// The delete script as a process runs it: in a Redis Cluster on the
/// room's sharded channel.
pub(super) fn delete_script(sharded: bool) -> String {
    if sharded { DELETE_SCRIPT.replace("'PUBLISH'", "'SPUBLISH'") } else { DELETE_SCRIPT.to_string() }
}

/// The id a payload on a room's channel deletes, if it is a delete
/// record (`d<id>`), not a batch (which starts with a digit, or `{` in the
/// layout an earlier build published).
pub fn delete_record(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload.strip_prefix(b"d")?).ok()?.parse().ok()
}

/// The line of [`POST_SCRIPT`] that publishes.
const PUBLISH_LINE: &str = "redis.call('PUBLISH', ARGV[1], batch)\n";

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

/// Reads one message event of `room`: the message keeps the event's
/// bytes, which members receive as they are, when the event is exactly
/// what this build writes; otherwise (fields it does not know) it is
/// rebuilt from the fields it knows.
pub(super) fn decode_message(room: &str, json: &str) -> Option<OrderedMessage> {
    let event = protocol::parse_message_event(json.as_bytes())?;
    if event.room != room {
        return None;
    }
    let json: Rc<str> = if event.exact && json.ends_with('}') {
        Rc::from(json)
    } else if event.deleted {
        protocol::tombstone_json(room, event.id, event.ts).into()
    } else {
        let mut json = protocol::message_json(room, event.id, &event.username, &event.message, event.ts);
        if event.verified {
            protocol::push_verified(&mut json);
        }
        if event.unconfirmed { protocol::unconfirmed_json(&json) } else { json }.into()
    };
    Some(OrderedMessage { id: event.id, ts: event.ts, json, flagged: event.unconfirmed })
}

/// Calls `each(id, event)` for the events of a payload of `room`'s, in
/// order. A payload is a batch ([`batch_payload`]), each line of which
/// becomes an event with the room's prefix and its id put back in (`id`
/// is that id); or, as an earlier build stored each message (a stream
/// entry's field `m`), whole events, one per line (`id` is `None`). Lines
/// that are not UTF-8 are skipped, and so is a batch whose first line is
/// not an id. One buffer serves every event of a batch.
fn for_each_event(room: &str, payload: &[u8], mut each: impl FnMut(Option<u64>, &str)) {
    let mut lines = payload.split(|&b| b == b'\n').map(|line| std::str::from_utf8(line).ok());
    if !payload.first().is_some_and(u8::is_ascii_digit) {
        lines.flatten().filter(|line| !line.is_empty()).for_each(|line| each(None, line));
        return;
    }
    let Some(first) = lines.next().flatten().and_then(|line| line.parse::<u64>().ok()) else { return };
    let mut json = event_prefix(room);
    let prefix = json.len();
    for (line, i) in lines.zip(0u64..) {
        let (Some(line), Some(id)) = (line, first.checked_add(i)) else { continue };
        json.truncate(prefix);
        json.push_str(itoa::Buffer::new().format(id));
        json.push_str(line);
        each(Some(id), &json);
    }
}

/// Decodes a payload from `room`'s channel (`batch_payload`). Lines that
/// do not decode, or are another room's, are skipped; the rest keep their
/// order.
pub fn decode_batch(room: &str, payload: &[u8]) -> Vec<OrderedMessage> {
    let mut out = Vec::new();
    for_each_event(room, payload, |id, json| {
        out.extend(decode_message(room, json).filter(|m| id.is_none_or(|id| m.id == id)));
    });
    out
}

/// XRANGE/XREVRANGE reply on `room`'s stream → its messages in ascending
/// id order. Each entry is `[entry-id, [field, value, ...]]`, with field
/// `b` = a batch (`batch_payload`; the entry id is its last id), or `m`
/// = one JSON event (the entries of earlier builds).
pub fn stream_messages(room: &str, value: &Value) -> Vec<StoredMessage> {
    let Value::Array(entries) = value else { return Vec::new() };
    let mut out: Vec<StoredMessage> = Vec::new();
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let Some(Value::Array(fields)) = parts.get(1) else { continue };
        let payload = fields.chunks(2).find_map(|kv| match kv {
            [k, v] if matches!(k.as_bytes(), Some(b"b" | b"m")) => v.as_bytes(),
            _ => None,
        });
        for_each_event(room, payload.unwrap_or_default(), |id, json| {
            let Some(event) = protocol::parse_message_event(json.as_bytes()) else { return };
            if event.room == room && id.is_none_or(|id| id == event.id) {
                out.push(StoredMessage {
                    id: event.id,
                    ts: event.ts,
                    username: event.username.into_owned(),
                    text: event.message.into_owned(),
                    verified: event.verified,
                });
            }
        });
    }
    out.sort_by_key(|m| m.id);
    out.dedup_by_key(|m| m.id);
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

/// Test data: message `id` of `room`, by "u", saying `m<id>`, at ts 5.
#[cfg(test)]
pub(super) fn test_message(room: &str, id: u64) -> String {
    protocol::message_json(room, id, "u", &format!("m{id}"), 5)
}

/// Test data: a stream reply (XRANGE or XREVRANGE) holding `batches` of
/// messages ([`test_message`]: a batch holds no room, its stream's key
/// says which), one entry per batch, filed under its last id, in the
/// order given.
#[cfg(test)]
pub(super) fn stream_reply(batches: &[std::ops::RangeInclusive<u64>]) -> Value {
    let entry = |batch: &std::ops::RangeInclusive<u64>| {
        let suffixes: Vec<String> = batch
            .clone()
            .map(|id| {
                let mut suffix = String::new();
                protocol::push_message_suffix(&mut suffix, "u", &format!("m{id}"), 5);
                suffix
            })
            .collect();
        Value::Array(vec![
            Value::Bulk(format!("{}-0", batch.end()).into_bytes()),
            Value::Array(vec![
                Value::Bulk(b"b".to_vec()),
                Value::Bulk(batch_payload(*batch.start(), suffixes.iter().map(String::as_str)).into_bytes()),
            ]),
        ])
    };
    Value::Array(batches.iter().map(entry).collect())
}

/// Test data: a read's reply as the bus gives a chain's, one value per
/// command: the stream's `ranges`, then the range's `deleted` ids.
#[cfg(test)]
pub(super) fn read_reply(ranges: Vec<Value>, deleted: &[u64]) -> Value {
    let deleted = deleted.iter().map(|id| Value::Bulk(id.to_string().into_bytes())).collect();
    Value::Array(ranges.into_iter().chain([Value::Array(deleted)]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moderation_records_read_back_and_nothing_else_reads_as_one() {
        let records = [
            Moderation::Kick(KickRecord {
                target: crate::chat::KickTarget::User("u-1".into()),
                reason: "spam".into(),
                until: Some(5),
            }),
            Moderation::Kick(KickRecord {
                target: crate::chat::KickTarget::Name("amy".into()),
                reason: String::new(),
                until: None,
            }),
            Moderation::Ban(BanNote { who: "address:::1".into(), until: 9, reason: "x".into() }),
            Moderation::Unban("user:u-1".into()),
        ];
        for record in records {
            assert_eq!(Moderation::decode(&record.encode()), Some(record));
        }
        let batch = batch_payload(3, ["x"]);
        for other in [batch.as_bytes(), b"d7", br#"{"proc":"p"}"#, b"k{", br#"b{"until":1,"reason":""}"#, b""] {
            assert_eq!(Moderation::decode(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    /// An entry as earlier builds stored a message: one event, field `m`.
    fn old_entry(room: &str, id: u64) -> Value {
        Value::Array(vec![
            Value::Bulk(format!("{id}-0").into_bytes()),
            Value::Array(vec![Value::Bulk(b"m".to_vec()), Value::Bulk(test_message(room, id).into_bytes())]),
        ])
    }

    #[test]
    fn stream_replies_decode_batches_and_single_events() {
        let ids = |reply: &Value| stream_messages("r", reply).iter().map(|m| m.id).collect::<Vec<_>>();
        // XREVRANGE order, batches of several, and one entry of an earlier build.
        let Value::Array(mut entries) = stream_reply(&[(7..=9), (4..=6)]) else { unreachable!() };
        entries.push(old_entry("r", 3));
        assert_eq!(ids(&Value::Array(entries)), (3..=9).collect::<Vec<_>>());
        let msgs = stream_messages("r", &stream_reply(&[(4..=5)]));
        assert_eq!((msgs[1].username.as_str(), msgs[1].text.as_str(), msgs[1].ts), ("u", "m5", 5));
        assert!(stream_messages("r", &Value::Nil).is_empty());
    }

    #[test]
    fn batches_decode_in_order_and_skip_what_is_not_a_message() {
        let suffix = |id: u64| {
            let json = protocol::message_json("r", id, "u", "line\nbreak", 5);
            json[event_prefix("r").len() + id.to_string().len()..].to_string()
        };
        // A text's newline is escaped in its JSON, so it never splits an event.
        let payload =
            batch_payload(3, [suffix(3), suffix(4), "not json".to_string(), suffix(6)].iter().map(String::as_str));
        let ids: Vec<u64> = decode_batch("r", payload.as_bytes()).iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![3, 4, 6], "a line that does not decode keeps its id");
        let seven = decode_batch("r", batch_payload(7, [suffix(7).as_str()]).as_bytes());
        let json = protocol::message_json("r", 7, "u", "line\nbreak", 5);
        assert_eq!(seven.first().map(|p| &*p.json), Some(json.as_str()), "the event as its poster built it");
        // Fields this build does not know are not passed on.
        let more = suffix(8).replace(r#""ts":5"#, r#""ts":5,"extra":"<b>""#);
        let eight = decode_batch("r", batch_payload(8, [more.as_str()]).as_bytes());
        let json = protocol::message_json("r", 8, "u", "line\nbreak", 5);
        assert_eq!(eight.first().map(|p| &*p.json), Some(json.as_str()), "rebuilt");
        // Whole events, one per line, as earlier builds published them.
        let lines = format!("{}\n\n{}\n", test_message("r", 1), test_message("r", 2));
        assert_eq!(decode_batch("r", lines.as_bytes()).iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(decode_batch("r", b"").is_empty());
        assert!(decode_batch("r", b"12x\n,\"ts\":5}").is_empty(), "no first id");
        let last = decode_batch("r", format!("{}\n{}\n{}", u64::MAX, suffix(1), suffix(1)).as_bytes());
        assert_eq!(last.iter().map(|p| p.id).collect::<Vec<_>>(), vec![u64::MAX], "no id past the last");
        assert!(decode_batch("other", test_message("r", 7).as_bytes()).is_empty(), "another room's");
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
