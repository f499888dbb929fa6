//! Routing: which WebSocket endpoint a path names, and the query values we read.
//!
//! Page routes live in [`crate::site::page_for`]; this file covers the
//! `/ws/...` paths that may be upgraded and the small query language of the
//! chat endpoint (`?username=alice&since=41`). Pure functions over strings.

use std::borrow::Cow;

/// A WebSocket endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws/echo`: raw echo, every text and binary message sent back verbatim.
    Echo,
    /// `/ws/chatroom/echo`: the original site's JSON echo room.
    EchoRoom,
    /// `/ws/chatroom/<room>`: a group chat room.
    Room(String),
    /// `/ws/inspect`: the frame inspector behind the learn page.
    Inspect,
    /// `/ws/stats`: live numbers for the stats page.
    Stats,
}

/// Why a `/ws/` path cannot be upgraded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoint {
    /// No such endpoint: 404.
    NotFound,
    /// `/ws/chatroom/<name>` with a name outside `[A-Za-z0-9_-]{1,64}`: 400.
    BadRoomName,
}

/// Maps a request path to its WebSocket endpoint. A trailing slash is
/// optional everywhere, as in the original's URL `/ws/chatroom/welcome/`.
pub fn endpoint(path: &str) -> Result<Endpoint, NoEndpoint> {
    let path = path.strip_suffix('/').unwrap_or(path);
    match path {
        "/ws/echo" => return Ok(Endpoint::Echo),
        "/ws/chatroom/echo" => return Ok(Endpoint::EchoRoom),
        "/ws/inspect" => return Ok(Endpoint::Inspect),
        "/ws/stats" => return Ok(Endpoint::Stats),
        _ => {}
    }
    let name = path.strip_prefix("/ws/chatroom/").ok_or(NoEndpoint::NotFound)?;
    if valid_room_name(name) { Ok(Endpoint::Room(name.to_string())) } else { Err(NoEndpoint::BadRoomName) }
}

/// Room names are 1–64 characters of `[A-Za-z0-9_-]`: safe in URLs, file
/// names and Redis keys without any escaping.
pub fn valid_room_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The first value of `key` in a query string, percent-decoded (`+` is a
/// space, as browsers encode forms). `None` if absent or not UTF-8.
pub fn query_value<'q>(query: &'q str, key: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != key {
            return None;
        }
        if v.contains('+') {
            let spaced = v.replace('+', " ");
            return percent_encoding::percent_decode_str(&spaced)
                .decode_utf8()
                .ok()
                .map(|s| Cow::Owned(s.into_owned()));
        }
        percent_encoding::percent_decode_str(v).decode_utf8().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("/ws/echo"), Ok(Endpoint::Echo));
        assert_eq!(endpoint("/ws/echo/"), Ok(Endpoint::Echo));
        assert_eq!(endpoint("/ws/chatroom/echo/"), Ok(Endpoint::EchoRoom));
        assert_eq!(endpoint("/ws/chatroom/welcome/"), Ok(Endpoint::Room("welcome".into())));
        assert_eq!(endpoint("/ws/chatroom/a-b_C9"), Ok(Endpoint::Room("a-b_C9".into())));
        assert_eq!(endpoint("/ws/chatroom/"), Err(NoEndpoint::NotFound));
        assert_eq!(endpoint("/ws/chatroom/a.b"), Err(NoEndpoint::BadRoomName));
        assert_eq!(endpoint("/ws/chatroom/a/b"), Err(NoEndpoint::BadRoomName));
        assert_eq!(endpoint(&format!("/ws/chatroom/{}", "x".repeat(65))), Err(NoEndpoint::BadRoomName));
        assert_eq!(endpoint("/ws/nope"), Err(NoEndpoint::NotFound));
        assert_eq!(endpoint("/room/x"), Err(NoEndpoint::NotFound));
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("username=al%C3%AFce&since=4", "username").as_deref(), Some("alïce"));
        assert_eq!(query_value("username=a+b", "username").as_deref(), Some("a b"));
        assert_eq!(query_value("since=4", "since").as_deref(), Some("4"));
        assert_eq!(query_value("since=4", "username"), None);
        assert_eq!(query_value("username=%FF", "username"), None);
        assert_eq!(query_value("", "username"), None);
    }
}
