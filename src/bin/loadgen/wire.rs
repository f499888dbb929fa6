//! What loadgen posts and how it reads what comes back: a self-describing message text (who
//! sent it, its sequence number, when), the post frame around it, and a parser for server
//! frames fast enough to run on every delivery.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

/// The kinds of text loadgen posts, told apart by their first word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// `lg`: a measured room message.
    Measured,
    /// `lw`: a warm-up room message (order-checked by nobody, latency recorded nowhere).
    Warmup,
    /// `lc`: a churn cycle's message.
    Churn,
    /// `le`: an echo mode payload.
    Echo,
}

impl Tag {
    fn word(self) -> &'static str {
        match self {
            Tag::Measured => "lg",
            Tag::Warmup => "lw",
            Tag::Churn => "lc",
            Tag::Echo => "le",
        }
    }
}

/// The fields a message text carries: `TAG RUN A B SENT_NS xxxx...`. `RUN` tells this run's
/// messages from anything else in the room; `A` is the sender (or client) index, `B` the
/// sequence number (or cycle); `SENT_NS` the send time on this process's `Clock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    /// What kind of message this is.
    pub tag: Tag,
    /// The run tag (`run_tag`).
    pub run: &'a str,
    /// The sender index (room), client index (echo) or slot (churn).
    pub a: u32,
    /// The sequence number (room, echo) or cycle (churn).
    pub b: u64,
    /// Send time on this process's `Clock` (the scheduled time in open loop).
    pub sent_ns: u64,
}

/// `--filler words`: pad texts with words instead of 'x' (see [`Payload::compose`]).
static FILLER_WORDS: AtomicBool = AtomicBool::new(false);

/// Pads every text from now on with words (`--filler words`).
pub fn use_word_filler() {
    FILLER_WORDS.store(true, Ordering::Relaxed);
}

/// Common English words, for a filler that compresses about as chat does.
const WORDS: [&str; 64] = [
    "the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with", "his",
    "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what", "all", "were",
    "we", "when", "your", "can", "said", "there", "use", "each", "which", "she", "do", "how", "their", "if", "will",
    "up", "other", "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make", "like",
    "him", "into",
];

impl Payload<'_> {
    /// The text, padded to `size` bytes (or longer when the fields need more): with 'x', or
    /// with words picked by a small random generator seeded from the fields (`--filler
    /// words`: runs of 'x' compress a hundredfold, English words about threefold). It is
    /// plain ASCII without quotes or backslashes, so it needs no JSON escaping.
    pub fn compose(&self, size: usize) -> String {
        let mut text = format!("{} {} {} {} {} ", self.tag.word(), self.run, self.a, self.b, self.sent_ns);
        if text.len() < size {
            if FILLER_WORDS.load(Ordering::Relaxed) {
                let mut x = (u64::from(self.a) << 32 ^ self.b).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                while text.len() < size {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    text.push_str(WORDS.get((x % WORDS.len() as u64) as usize).copied().unwrap_or("x"));
                    text.push(' ');
                }
                text.truncate(size);
            } else {
                text.extend(std::iter::repeat_n('x', size - text.len()));
            }
        }
        text
    }
}

/// Reads a text written by `Payload::compose`; `None` for anything else (another client's
/// chat, a server notice), which the caller counts as foreign rather than as an error.
pub fn decode_payload(text: &str) -> Option<Payload<'_>> {
    let mut words = text.splitn(6, ' ');
    let tag = match words.next()? {
        "lg" => Tag::Measured,
        "lw" => Tag::Warmup,
        "lc" => Tag::Churn,
        "le" => Tag::Echo,
        _ => return None,
    };
    Some(Payload {
        tag,
        run: words.next()?,
        a: words.next()?.parse().ok()?,
        b: words.next()?.parse().ok()?,
        sent_ns: words.next()?.parse().ok()?,
    })
}

/// The chat post frame: `{"message": TEXT, "username": NAME}`. Both strings come from
/// `Payload::compose` and our own `c<N>` names, so they need no escaping.
pub fn compose_post(text: &str, username: &str) -> String {
    let mut post = String::with_capacity(text.len() + username.len() + 32);
    post.push_str("{\"message\":\"");
    post.push_str(text);
    post.push_str("\",\"username\":\"");
    post.push_str(username);
    post.push_str("\"}");
    post
}

/// A run tag that tells this run's messages from any earlier run's (or anyone else's).
pub fn run_tag() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{:08x}", std::process::id().rotate_left(16) ^ nanos)
}

/// The few fields of a server frame the checks look at.
#[derive(Debug, Default, PartialEq)]
pub struct FrameFields<'a> {
    /// The frame has a `type` key at all (chatroom's frames do, the peers' do not).
    pub typed: bool,
    /// The `type` value: "message", "welcome", "join", ...
    pub kind: Option<Cow<'a, str>>,
    /// A message's room sequence number.
    pub id: Option<u64>,
    /// A welcome frame's last message id.
    pub last_id: Option<u64>,
    /// The `message` text.
    pub message: Option<Cow<'a, str>>,
    /// An error frame's `code` ("rate_limited", ...).
    pub code: Option<Cow<'a, str>>,
}

/// The `type` of a frame that starts with it (`{"type":"welcome",...`, as chatroom's frames
/// do), without reading the rest: for a mode that needs only the kind of most frames, this
/// spares it parsing a welcome's whole history. `None` when the frame does not start so;
/// then `parse_frame` decides.
pub fn peek_kind(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(r#"{"type":""#)?;
    let end = rest.find(['"', '\\'])?;
    (rest.as_bytes().get(end) == Some(&b'"')).then(|| rest.get(..end)).flatten()
}

/// Parses a server frame. Every delivery goes through here, up to millions per second, and a
/// general JSON parse into `serde_json::Value` costs ~0.75 µs for a chatroom message frame
/// (six allocations): enough to make the load generator, not the server, the bottleneck.
/// So a flat object of escape-free strings and integers, which is every message frame,
/// takes a zero-allocation path; anything else (nested history, escapes, fractions) is
/// handed to serde_json, which is strict. `None` means the frame is not a JSON object.
pub fn parse_frame(text: &str) -> Option<FrameFields<'_>> {
    if let Some(fields) = scan_flat_object(text) {
        return Some(fields);
    }
    // Into the few fields we read, not into a `Value`: serde skips the rest (a welcome's
    // 50-message history, its member list) without building it, which is what keeps
    // the load generator from being the bottleneck when every join brings a welcome.
    // A derived struct would also accept an array of its fields: only objects qualify.
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let fields: SlowFields<'_> = serde_json::from_str(text).ok()?;
    Some(FrameFields {
        typed: fields.kind.is_some(),
        kind: fields.kind.and_then(Field::string),
        id: fields.id.and_then(Field::int),
        last_id: fields.last_id.and_then(Field::int),
        message: fields.message.and_then(Field::string),
        code: fields.code.and_then(Field::string),
    })
}

/// The fields `parse_frame` reads, for the serde path; unknown keys are skipped.
#[derive(serde::Deserialize)]
struct SlowFields<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Field<'a>>,
    #[serde(borrow, default)]
    id: Option<Field<'a>>,
    #[serde(borrow, default)]
    last_id: Option<Field<'a>>,
    #[serde(borrow, default)]
    message: Option<Field<'a>>,
    #[serde(borrow, default)]
    code: Option<Field<'a>>,
}

/// A field of any JSON type: strings and integers are kept, anything else is only
/// checked (walked without being built: a derived untagged enum would buffer it).
enum Field<'a> {
    Int(u64),
    Str(Cow<'a, str>),
    Other,
}

impl<'a> Field<'a> {
    fn string(self) -> Option<Cow<'a, str>> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }

    fn int(self) -> Option<u64> {
        match self {
            Field::Int(n) => Some(n),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Field<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor(std::marker::PhantomData))
    }
}

struct FieldVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for FieldVisitor<'a> {
    type Value = Field<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_u64<E>(self, n: u64) -> Result<Field<'a>, E> {
        Ok(Field::Int(n))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }
    fn visit_unit<E>(self) -> Result<Field<'a>, E> {
        Ok(Field::Other)
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Field<'a>, E> {
        Ok(Field::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Field<'a>, E> {
        Ok(Field::Str(Cow::Owned(s.to_string())))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'a>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Field<'a>, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(Field::Other)
    }
}

/// The fast path of `parse_frame`: `Some` only for a complete, flat JSON object whose
/// strings have no escapes and whose numbers are integers; `None` means "let serde_json
/// decide", never "invalid". Every step is a bounds-checked `get`: these are network bytes.
fn scan_flat_object(text: &str) -> Option<FrameFields<'_>> {
    let bytes = text.as_bytes();
    let mut fields = FrameFields::default();
    let mut i = skip_whitespace(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_whitespace(bytes, i + 1);
    if bytes.get(i) == Some(&b'}') {
        return only_whitespace_after(bytes, i + 1).then_some(fields);
    }
    loop {
        let (key, next) = scan_plain_string(text, i)?;
        i = skip_whitespace(bytes, next);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        i = skip_whitespace(bytes, i + 1);
        if key == "type" {
            fields.typed = true;
        }
        match bytes.get(i)? {
            b'"' => {
                let (value, next) = scan_plain_string(text, i)?;
                i = next;
                match key {
                    "type" => fields.kind = Some(Cow::Borrowed(value)),
                    "message" => fields.message = Some(Cow::Borrowed(value)),
                    "code" => fields.code = Some(Cow::Borrowed(value)),
                    _ => {}
                }
            }
            b'0'..=b'9' => {
                let start = i;
                while matches!(bytes.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
                // Fractions, exponents and leading zeros: serde_json's business.
                if matches!(bytes.get(i), Some(b'.' | b'e' | b'E'))
                    || (i - start > 1 && bytes.get(start) == Some(&b'0'))
                {
                    return None;
                }
                let number: u64 = text.get(start..i)?.parse().ok()?;
                match key {
                    "id" => fields.id = Some(number),
                    "last_id" => fields.last_id = Some(number),
                    _ => {}
                }
            }
            b't' | b'f' | b'n' => {
                let word = ["true", "false", "null"].into_iter().find(|w| text.get(i..i + w.len()) == Some(w))?;
                i += word.len();
            }
            // Nested objects and arrays, negative numbers: serde_json's business.
            _ => return None,
        }
        i = skip_whitespace(bytes, i);
        match bytes.get(i)? {
            b',' => i = skip_whitespace(bytes, i + 1),
            b'}' => return only_whitespace_after(bytes, i + 1).then_some(fields),
            _ => return None,
        }
    }
}

/// A JSON string starting at `start` (the opening quote) with no escapes or control
/// characters: returns its contents and the index after the closing quote.
fn scan_plain_string(text: &str, start: usize) -> Option<(&str, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let body = start + 1;
    // Two passes that vectorise beat one byte-at-a-time pass on ~100-byte texts: `find`
    // locates the closing quote with memchr, then a branch-free fold checks the contents.
    let len = text.get(body..)?.find('"')?;
    let end = body + len;
    let contents = bytes.get(body..end)?;
    let needs_unescaping = contents.iter().fold(false, |any, &b| any | (b == b'\\') | (b < 0x20));
    if needs_unescaping {
        return None;
    }
    Some((text.get(body..end)?, end + 1))
}

fn skip_whitespace(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

fn only_whitespace_after(bytes: &[u8], i: usize) -> bool {
    skip_whitespace(bytes, i) == bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_flat_frames_without_serde() {
        let typed = r#"{"type":"message","room":"r","id":42,"username":"a","message":"hi","ts":1}"#;
        let f = scan_flat_object(typed).expect("flat");
        assert!(f.typed);
        assert_eq!(f.kind.as_deref(), Some("message"));
        assert_eq!(f.id, Some(42));
        assert_eq!(f.message.as_deref(), Some("hi"));
        let plain = r#"{"username": "c1", "message": "lg x 1 2 3 xx"}"#;
        let f = scan_flat_object(plain).expect("flat");
        assert!(!f.typed);
        assert_eq!(f.message.as_deref(), Some("lg x 1 2 3 xx"));
    }

    #[test]
    fn peeks_at_a_leading_type_only() {
        assert_eq!(peek_kind(r#"{"type":"welcome","history":[{"id":1}]}"#), Some("welcome"));
        assert_eq!(peek_kind(r#"{"type":"message","id":3}"#), Some("message"));
        assert_eq!(peek_kind(r#"{"username":"a","message":"b"}"#), None);
        assert_eq!(peek_kind(r#"{"type":"we\"x"}"#), None);
        assert_eq!(peek_kind(r#"{"type":"unterminated"#), None);
    }

    #[test]
    fn hands_the_rest_to_serde() {
        let nested = r#"{"type":"welcome","history":[{"id":1}],"last_id":7}"#;
        assert!(scan_flat_object(nested).is_none());
        let f = parse_frame(nested).expect("valid JSON");
        assert_eq!(f.kind.as_deref(), Some("welcome"));
        assert_eq!(f.last_id, Some(7));
        let escaped = r#"{"message":"a\"b"}"#;
        assert!(scan_flat_object(escaped).is_none());
        assert_eq!(parse_frame(escaped).and_then(|f| f.message).as_deref(), Some("a\"b"));
        for bad in ["", "{", "{\"a\":}", "{\"a\":1,}", "[1]", "{\"a\":1} x", "{\"a\":tru}"] {
            assert!(parse_frame(bad).is_none(), "{bad:?} is not a JSON object");
        }
    }

    #[test]
    fn payload_round_trip() {
        let p = Payload { tag: Tag::Measured, run: "abc", a: 7, b: 99, sent_ns: 123_456 };
        let text = p.compose(100);
        assert_eq!(text.len(), 100);
        assert_eq!(decode_payload(&text), Some(p));
        assert_eq!(decode_payload("hello world"), None);
    }
}
