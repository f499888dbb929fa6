//! The chat wire format: what clients send, and the JSON events they receive.
//!
//! Clients speak the original site's format: a text frame
//! `{"message": "...", "username": "..."}` posts a message. Everything the
//! server sends is a JSON object with a `"type"` (see the README's "Wire
//! format" for every frame). Serialising happens once per event, never per
//! recipient: the caller frames the bytes once and shares them.
//!
//! Pure functions over bytes and strings; fuzzed by `fuzz_targets/chat_frame.rs`.

use std::borrow::Cow;

use serde::Deserialize;

/// A client's post, decoded; its strings borrowed from the frame where
/// they hold no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post<'a> {
    /// The text to broadcast.
    pub message: Cow<'a, str>,
    /// The name the client put in the frame, if any.
    pub username: Option<Cow<'a, str>>,
}

/// Why a client frame was not a post. Each is answered with an error event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostError {
    /// Not JSON, not an object, or no string `message`.
    BadJson,
    /// Longer than `--max-text` characters.
    TooLong,
}

#[derive(Deserialize)]
struct RawPost<'a> {
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "string_or_nothing")]
    username: Option<Cow<'a, str>>,
}

/// A field that counts only if it is a string (anything else reads as
/// `None`, and is skipped without being kept).
fn string_or_nothing<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct StringOrNothing;
    impl<'de> serde::de::Visitor<'de> for StringOrNothing {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    de.deserialize_any(StringOrNothing)
}

/// A moderator's frame: a member whose token's `moderate` claim names the
/// room may delete a message or kick a member, as the server API does.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Command {
    /// `{"type":"delete","id":N}`.
    Delete {
        /// The message's id.
        id: u64,
    },
    /// `{"type":"kick","username":…}`, optionally `"ban_seconds"` and `"reason"`.
    Kick {
        /// Whom, by the name the room shows.
        username: String,
        /// Ban for this long.
        #[serde(default)]
        ban_seconds: Option<u64>,
        /// Why.
        #[serde(default)]
        reason: Option<String>,
    },
}

/// Decodes a frame that is not a post as a moderator's command, if it is
/// one (asked only after [`parse_post`] refused the frame, so posts pay
/// nothing for it).
pub fn parse_command(text: &str) -> Option<Command> {
    serde_json::from_str(text).ok()
}

/// Marks a welcome frame: its member moderates the room (the page shows
/// delete and kick actions).
pub fn push_moderator(welcome: &mut String) {
    if welcome.ends_with('}') {
        welcome.pop();
        welcome.push_str(r#","moderator":true}"#);
    }
}

/// Decodes a client text frame into a [`Post`].
///
/// `message` must be a string (the original client always sends one); a
/// non-string `username` is ignored rather than refused, since the server
/// names members itself.
pub fn parse_post(text: &str, max_chars: usize) -> Result<Post<'_>, PostError> {
    let RawPost { message, username } = serde_json::from_str(text).map_err(|_| PostError::BadJson)?;
    // Count characters only when the byte length could exceed the limit.
    if message.len() > max_chars && message.chars().count() > max_chars {
        return Err(PostError::TooLong);
    }
    Ok(Post { message, username })
}

/// Cleans a requested display name: trimmed, 1–32 characters, no control
/// characters. `None` if nothing acceptable remains.
pub fn clean_name(name: &str) -> Option<String> {
    let name = name.trim();
    let count = name.chars().count();
    if count == 0 || count > 32 || name.chars().any(char::is_control) {
        return None;
    }
    Some(name.to_string())
}

/// A chat message event, as read back from JSON: what [`message_json`]
/// writes, the strings borrowed from the input where they hold no escapes.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MessageEvent<'a> {
    /// Always "message".
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// The room.
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    /// The room's sequence number.
    pub id: u64,
    /// The sender's name, stamped by the server (empty in a tombstone).
    #[serde(borrow, default)]
    pub username: Cow<'a, str>,
    /// The text (empty in a tombstone).
    #[serde(borrow, default)]
    pub message: Cow<'a, str>,
    /// Milliseconds since the epoch.
    pub ts: u64,
    /// A deleted message's tombstone ([`tombstone_json`]).
    #[serde(default)]
    pub deleted: bool,
    /// Posted by a verified user ([`push_verified`]).
    #[serde(default)]
    pub verified: bool,
    /// Published although fewer replicas than `--redis-wait` asked for
    /// confirmed it in time (see [`unconfirmed_json`]).
    #[serde(default)]
    pub unconfirmed: bool,
    /// Whether the input held these fields and no others (as this build
    /// writes them), so that it can be sent on as it is.
    #[serde(skip, default = "exactly")]
    pub exact: bool,
}

fn exactly() -> bool {
    true
}

/// Reads a message event ([`message_json`], perhaps flagged by
/// [`unconfirmed_json`]); `None` for anything else. An event with fields
/// this build does not know (written by another program, or a newer
/// chatroom sharing the Redis) reads too, with `exact` false: its known
/// fields are kept, and it should be rebuilt before it is sent on.
pub fn parse_message_event(json: &[u8]) -> Option<MessageEvent<'_>> {
    if let Ok(event) = serde_json::from_slice::<MessageEvent>(json) {
        return (event.kind == "message").then_some(event);
    }
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    let text = |key: &str| value.get(key).and_then(serde_json::Value::as_str).map(|s| Cow::Owned(s.to_string()));
    let number = |key: &str| value.get(key).and_then(serde_json::Value::as_u64);
    if text("type")? != "message" {
        return None;
    }
    Some(MessageEvent {
        kind: Cow::Borrowed("message"),
        room: text("room")?,
        id: number("id")?,
        username: text("username").unwrap_or_default(),
        message: text("message").unwrap_or_default(),
        ts: number("ts")?,
        deleted: value.get("deleted").and_then(serde_json::Value::as_bool).unwrap_or(false),
        verified: value.get("verified").and_then(serde_json::Value::as_bool).unwrap_or(false),
        unconfirmed: value.get("unconfirmed").and_then(serde_json::Value::as_bool).unwrap_or(false),
        exact: false,
    })
}

/// Serialises a message event to JSON, by hand: it is built once per
/// message on the busiest path, and the fields are always the same.
pub fn message_json(room: &str, id: u64, username: &str, message: &str, ts: u64) -> String {
    let mut out = String::with_capacity(64 + room.len() + username.len() + message.len());
    push_message_prefix(&mut out, room);
    out.push_str(itoa::Buffer::new().format(id));
    push_message_suffix(&mut out, username, message, ts);
    out
}

/// A message event up to its id: `{"type":"message","room":"ROOM","id":`.
/// With Redis the id is given by a script, which puts it between this and
/// [`push_message_suffix`]'s part.
pub fn push_message_prefix(out: &mut String, room: &str) {
    out.push_str(r#"{"type":"message","room":"#);
    push_json_str(out, room);
    out.push_str(r#","id":"#);
}

/// A message event after its id: `,"username":…,"message":…,"ts":…}`.
pub fn push_message_suffix(out: &mut String, username: &str, message: &str, ts: u64) {
    out.push_str(r#","username":"#);
    push_json_str(out, username);
    out.push_str(r#","message":"#);
    push_json_str(out, message);
    out.push_str(r#","ts":"#);
    out.push_str(itoa::Buffer::new().format(ts));
    out.push('}');
}

/// Marks a message event, or its part after the id, as posted by a
/// verified user: `"verified":true` goes before its closing brace.
pub fn push_verified(event: &mut String) {
    if event.ends_with('}') {
        event.pop();
        event.push_str(r#","verified":true}"#);
    }
}

/// The event of a stored message of `room` ([`message_json`], marked
/// [`push_verified`] if it was).
pub fn stored_json(room: &str, msg: &crate::storage::StoredMessage) -> String {
    if msg.is_deleted() {
        return tombstone_json(room, msg.id, msg.ts);
    }
    let mut json = message_json(room, msg.id, &msg.username, &msg.text, msg.ts);
    if msg.verified {
        push_verified(&mut json);
    }
    json
}

/// What history keeps of a deleted message, in place of its event:
/// `{"type":"message","room":…,"id":N,"deleted":true,"ts":…}`, no name
/// and no text. The id stays, so ids stay gapless and a client resuming
/// with `?since=` sees the message is gone.
pub fn tombstone_json(room: &str, id: u64, ts: u64) -> String {
    let mut out = String::with_capacity(64 + room.len());
    push_message_prefix(&mut out, room);
    out.push_str(itoa::Buffer::new().format(id));
    out.push_str(r#","deleted":true,"ts":"#);
    out.push_str(itoa::Buffer::new().format(ts));
    out.push('}');
    out
}

/// Tells a room's members that message `id` was deleted:
/// `{"type":"delete","room":…,"id":N}`.
pub fn delete_json(room: &str, id: u64) -> String {
    let mut out = String::with_capacity(40 + room.len());
    out.push_str(r#"{"type":"delete","room":"#);
    push_json_str(&mut out, room);
    out.push_str(r#","id":"#);
    out.push_str(itoa::Buffer::new().format(id));
    out.push('}');
    out
}

/// A message event (from [`message_json`]) flagged `"unconfirmed":true`:
/// with `--redis-wait N`, fewer than N replicas confirmed in time that
/// they have it, so a failover of its Redis master could still lose it
/// (it is in the room's stream, and was published all the same).
pub fn unconfirmed_json(message: &str) -> String {
    let body = message.strip_suffix('}').unwrap_or(message);
    format!(r#"{body},"unconfirmed":true}}"#)
}

/// The welcome frame: name, who is online, and history (already JSON).
pub fn welcome_json(
    room: &str,
    username: &str,
    online: &[&str],
    online_count: usize,
    history: &[&str],
    last_id: u64,
) -> String {
    let mut out = String::with_capacity(128 + history.iter().map(|h| h.len() + 1).sum::<usize>());
    out.push_str(r#"{"type":"welcome","room":"#);
    push_json_str(&mut out, room);
    out.push_str(r#","username":"#);
    push_json_str(&mut out, username);
    out.push_str(r#","online":["#);
    for (i, name) in online.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, name);
    }
    out.push_str(&format!(r#"],"online_count":{online_count},"history":["#));
    for (i, event) in history.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(event);
    }
    out.push_str(&format!(r#"],"last_id":{last_id}}}"#));
    out
}

/// A join or leave event for one member.
pub fn presence_one_json(kind: &str, room: &str, username: &str, online_count: usize) -> String {
    serde_json::json!({"type": kind, "room": room, "username": username, "online_count": online_count}).to_string()
}

/// Several joins and leaves of one loop turn in one frame; `None` lists mean
/// "counts only" (rooms above `--presence-limit`).
pub fn presence_many_json(
    room: &str,
    joined: Option<&[String]>,
    left: Option<&[String]>,
    online_count: usize,
) -> String {
    let mut v = serde_json::json!({"type": "presence", "room": room, "online_count": online_count});
    if let (Some(joined), Some(left), Some(obj)) = (joined, left, v.as_object_mut()) {
        obj.insert("joined".into(), serde_json::json!(joined));
        obj.insert("left".into(), serde_json::json!(left));
    }
    v.to_string()
}

/// A rename event.
pub fn rename_json(room: &str, from: &str, to: &str) -> String {
    serde_json::json!({"type": "rename", "room": room, "from": from, "to": to, "username": to}).to_string()
}

/// An error event; the connection stays open.
pub fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({"type": "error", "code": code, "message": message}).to_string()
}

/// A gap event: history no longer reaches back past `oldest_id`.
pub fn gap_json(room: &str, oldest_id: u64) -> String {
    serde_json::json!({"type": "gap", "room": room, "oldest_id": oldest_id}).to_string()
}

/// Appends `s` as a JSON string literal, escaped as `serde_json` escapes
/// (so either may write an event and the bytes are the same): `"` and `\`
/// with a backslash, the control characters below U+0020 as `\n`, `\t`…
/// or `\u00XX`, everything else as it is. Runs of plain characters are
/// copied whole.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on a char boundary.
        out.push_str(&s[plain..i]);
        if escaped.is_empty() {
            out.push_str("\\u00");
            for digit in [b >> 4, b & 0xf] {
                out.push(char::from_digit(u32::from(digit), 16).unwrap_or('0'));
            }
        } else {
            out.push_str(escaped);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts() {
        let p = parse_post(r#"{"message": "hi", "username": "alice"}"#, 10).unwrap();
        assert_eq!(p, Post { message: "hi".into(), username: Some("alice".into()) });
        assert!(matches!(p.message, Cow::Borrowed(_)), "borrowed from the frame");
        let escaped = parse_post(r#"{"message": "a\"b", "username": {"x": [1, {"y": 2}]}}"#, 10).unwrap();
        assert_eq!((&*escaped.message, escaped.username), ("a\"b", None));
        assert_eq!(parse_post(r#"{"message": "hi"}"#, 10).unwrap().username, None);
        assert_eq!(parse_post(r#"{"message": "hi", "username": 5}"#, 10).unwrap().username, None);
        assert_eq!(parse_post("not json", 10), Err(PostError::BadJson));
        assert_eq!(parse_post("[1,2]", 10), Err(PostError::BadJson));
        assert_eq!(parse_post(r#"{"text": "hi"}"#, 10), Err(PostError::BadJson));
        assert_eq!(parse_post(r#"{"message": 5}"#, 10), Err(PostError::BadJson));
        assert_eq!(parse_post(r#"{"message": "ééééé"}"#, 5).unwrap().message, "ééééé");
        assert_eq!(parse_post(r#"{"message": "éééééé"}"#, 5), Err(PostError::TooLong));
    }

    /// A message event as `serde_json` writes it, fields in the same order.
    #[derive(serde::Serialize)]
    struct BySerde<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        room: &'a str,
        id: u64,
        username: &'a str,
        message: &'a str,
        ts: u64,
    }

    #[test]
    fn message_events_are_written_as_serde_json_writes_them_and_read_back() {
        let mut every_control: String = (0u8..0x20).map(char::from).collect();
        every_control.push_str("\u{7f}\u{80}é\u{2028}😀");
        for text in ["", "plain", "\"quoted\" and \\", "tab\tnew\nline\r", &every_control, "}{\",\""] {
            let by_hand = message_json("r-1", 42, text, text, 1_700_000_000_000);
            let by_serde =
                BySerde { kind: "message", room: "r-1", id: 42, username: text, message: text, ts: 1_700_000_000_000 };
            assert_eq!(by_hand, serde_json::to_string(&by_serde).unwrap(), "{text:?}");
            let back = parse_message_event(by_hand.as_bytes()).unwrap();
            assert_eq!((&*back.room, back.id, &*back.username, &*back.message), ("r-1", 42, text, text));
            assert!(!back.unconfirmed);
        }
        let flagged = unconfirmed_json(&message_json("r", 1, "a", "b", 2));
        assert!(parse_message_event(flagged.as_bytes()).unwrap().unconfirmed);
        let with_more = br#"{"type":"message","room":"r","id":1,"username":"a","message":"b","ts":2,"color":"red"}"#;
        let read = parse_message_event(with_more).unwrap();
        assert_eq!((&*read.username, &*read.message, read.exact), ("a", "b", false));
        assert!(parse_message_event(flagged.as_bytes()).unwrap().exact);
        assert_eq!(parse_message_event(br#"{"type":"gap","room":"r","oldest_id":3}"#), None);
        assert_eq!(parse_message_event(b"not json"), None);
    }

    #[test]
    fn an_unconfirmed_message_is_the_message_with_a_flag() {
        let json = unconfirmed_json(&message_json("r", 3, "a", "}", 5));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (v["id"].as_u64(), v["message"].as_str(), v["unconfirmed"].as_bool()),
            (Some(3), Some("}"), Some(true))
        );
    }

    #[test]
    fn names() {
        assert_eq!(clean_name("  alice "), Some("alice".into()));
        assert_eq!(clean_name(""), None);
        assert_eq!(clean_name("   "), None);
        assert_eq!(clean_name("a\u{7}b"), None);
        assert_eq!(clean_name(&"x".repeat(33)), None);
        assert_eq!(clean_name(&"é".repeat(32)), Some("é".repeat(32)));
    }

    #[test]
    fn events_are_json_with_a_type() {
        let m = message_json("r", 3, "a\"b", "<img src=x>", 17);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["username"], "a\"b");
        assert_eq!(v["id"], 3);
        let w = welcome_json("r", "me", &["me", "you"], 2, &[&m], 3);
        let v: serde_json::Value = serde_json::from_str(&w).unwrap();
        assert_eq!(v["history"][0]["id"], 3);
        assert_eq!(v["online"][1], "you");
        assert_eq!(v["last_id"], 3);
        let p: serde_json::Value =
            serde_json::from_str(&presence_many_json("r", Some(&["a".into()]), Some(&[]), 1)).unwrap();
        assert_eq!(p["joined"][0], "a");
        let p: serde_json::Value = serde_json::from_str(&presence_many_json("r", None, None, 5000)).unwrap();
        assert!(p.get("joined").is_none());
        assert_eq!(p["online_count"], 5000);
    }

    #[test]
    fn a_tombstone_keeps_id_and_time_only_and_reads_back_as_one() {
        let stored = crate::storage::StoredMessage::tombstone(7, 1234);
        let json = stored_json("r\"1", &stored);
        assert_eq!(json, r#"{"type":"message","room":"r\"1","id":7,"deleted":true,"ts":1234}"#);
        let event = parse_message_event(json.as_bytes()).unwrap();
        assert!(event.deleted && event.exact && event.username.is_empty() && event.message.is_empty());
        assert_eq!((event.id, event.ts), (7, 1234));
        let live: serde_json::Value = serde_json::from_str(&delete_json("r\"1", 7)).unwrap();
        assert_eq!(live, serde_json::json!({"type": "delete", "room": "r\"1", "id": 7}));
    }
}
