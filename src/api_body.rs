//! The server API's request bodies: what a site's backend may send, read
//! and checked. Pure functions over bytes, like the other parsers, so the
//! fuzzer can run them (`fuzz/fuzz_targets/api_body.rs`); the reactor's
//! side is `server/backend.rs`.

use serde::Deserialize;

use crate::chat::KickTarget;
use crate::chat::protocol::clean_name;

/// Why a body was refused: the HTTP status, the error's code and what the
/// backend is told.
#[derive(Debug, PartialEq, Eq)]
pub struct BodyError {
    /// 400 or 415.
    pub status: u16,
    /// `bad_json`, `bad_name`, `too_long`, `unsupported_media_type`.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
}

fn bad(code: &'static str, message: impl Into<String>) -> BodyError {
    BodyError { status: 400, code, message: message.into() }
}

/// `POST /api/rooms/<room>/messages`, checked: a text within `--max-text`
/// characters and a clean name.
#[derive(Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// The text.
    pub message: String,
    /// The name it is shown under, cleaned ([`clean_name`]).
    pub username: String,
}

/// `POST /api/rooms/<room>/kick`, checked: exactly one target.
#[derive(Debug, PartialEq, Eq)]
pub struct Kick {
    /// Whom.
    pub target: KickTarget,
    /// Ban for this long (`None` or 0: no ban).
    pub ban_seconds: Option<u64>,
    /// Why (may be empty).
    pub reason: String,
}

/// Whether a request's `Content-Type` says JSON (`application/json`, any
/// parameters such as `charset` allowed). Anything else is 415.
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The 415 a body that is not JSON gets.
pub fn not_json() -> BodyError {
    BodyError {
        status: 415,
        code: "unsupported_media_type",
        message: "send the body as Content-Type: application/json".into(),
    }
}

/// Reads `{"message": …, "username": …}`.
pub fn new_message(body: &[u8], max_text: usize) -> Result<NewMessage, BodyError> {
    #[derive(Deserialize)]
    struct Raw {
        message: String,
        username: String,
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| bad("bad_json", format!("the body must be {{\"message\": …, \"username\": …}}: {e}")))?;
    if raw.message.len() > max_text && raw.message.chars().count() > max_text {
        return Err(bad("too_long", format!("messages are at most {max_text} characters")));
    }
    let username = clean_name(&raw.username)
        .ok_or_else(|| bad("bad_name", "names are 1-32 characters without control characters"))?;
    Ok(NewMessage { message: raw.message, username })
}

/// Reads `{"username": …}` or `{"user": …}`, with optional
/// `"ban_seconds"` and `"reason"`; nothing else.
pub fn kick(body: &[u8]) -> Result<Kick, BodyError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        username: Option<String>,
        user: Option<String>,
        ban_seconds: Option<u64>,
        reason: Option<String>,
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| bad("bad_json", format!("the body must be {{\"username\" or \"user\": …}}: {e}")))?;
    let target = match (raw.username, raw.user) {
        (Some(name), None) if !name.is_empty() => KickTarget::Name(name),
        (None, Some(sub)) if !sub.is_empty() => KickTarget::User(sub),
        _ => return Err(bad("bad_json", "name the member with exactly one of \"username\" and \"user\"")),
    };
    Ok(Kick { target, ban_seconds: raw.ban_seconds, reason: raw.reason.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(is_json(Some("application/json")) && is_json(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json(None) && !is_json(Some("text/plain")) && !is_json(Some("application/jsonx")));
    }

    #[test]
    fn messages_and_kicks() {
        let m = new_message(br#"{"message":"hi","username":"  ops "}"#, 10).unwrap();
        assert_eq!((m.message.as_str(), m.username.as_str()), ("hi", "ops"));
        assert_eq!(new_message(br#"{"message":"hi"}"#, 10).unwrap_err().code, "bad_json");
        assert_eq!(new_message(br#"{"message":"0123456789x","username":"a"}"#, 10).unwrap_err().code, "too_long");
        assert_eq!(new_message(br#"{"message":"x","username":"\u0007"}"#, 10).unwrap_err().code, "bad_name");
        let k = kick(br#"{"user":"u-1","ban_seconds":5}"#).unwrap();
        assert_eq!((k.target, k.ban_seconds, k.reason.as_str()), (KickTarget::User("u-1".into()), Some(5), ""));
        for body in
            [&br#"{"username":"a","user":"b"}"#[..], br#"{}"#, br#"{"username":""}"#, br#"{"username":"a","x":1}"#]
        {
            assert_eq!(kick(body).unwrap_err().code, "bad_json", "{}", String::from_utf8_lossy(body));
        }
    }
}
