//! The server API: what a site's backend may do (`--api-key`).
//!
//! `POST /api/rooms/<room>/messages` posts as the backend, and
//! `DELETE /api/rooms/<room>/messages/<id>` takes a message down. The request
//! carries `Authorization: Bearer KEY` (one of `--api-key`'s keys) and a
//! JSON body (`Content-Type: application/json`, at most `--max-body`
//! bytes, read by the same framing as every request: in pieces, bounded
//! by `--header-timeout`, pipelining kept). The answer waits for the post's
//! outcome: the connection is parked, and the chat answers it once the
//! post or the delete is committed (201 with the id, 204) or refused
//! (503); see `chat/backend.rs`.
//!
//! The same header may instead carry a user's JWT, for the read API of
//! private rooms ([`Viewer`]); a key is tried first, in constant time.

use serde::Deserialize;
use serde_json::json;

use super::Server;
use crate::auth::Identity;
use crate::chat::protocol::clean_name;
use crate::http::{Head, Method};
use crate::response::Response;
use crate::route::valid_room_name;

/// Who an API request says it is (`Authorization: Bearer`).
#[derive(Debug)]
pub(super) enum Viewer {
    /// Nobody in particular: public rooms only.
    Anyone,
    /// A user, by a valid token: public rooms and the private ones it names.
    User(Identity),
    /// The site's backend, by an API key: everything.
    Backend,
}

/// The body of `POST /api/rooms/<room>/messages`.
#[derive(Deserialize)]
struct NewMessage {
    message: String,
    username: String,
}

/// An error answer: `{"error": code, "message": …}`.
fn error(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, json!({"error": code, "message": message}).to_string().into_bytes())
}

/// Whether the request says its body is JSON (`application/json`, any
/// parameters such as `charset` allowed).
fn is_json(head: &Head) -> bool {
    head.header_str("content-type")
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

impl Server {
    /// A POST or DELETE under `/api/` (`path` without the prefix): the
    /// answer, or `None` when it waits (the connection is parked).
    pub(super) fn on_backend(&mut self, key: usize, head: &Head, path: &str, body: &[u8]) -> Option<Response> {
        if self.api_keys.is_none() {
            return Some(error(404, "not_found", "the server API is off: start the server with --api-key-file"));
        }
        if !matches!(self.viewer(head), Viewer::Backend) {
            let r = error(401, "unauthorized", "send one of the server's API keys as Authorization: Bearer KEY");
            return Some(r.header("WWW-Authenticate", "Bearer"));
        }
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let (post, delete) = (head.method == Some(Method::Post), head.method == Some(Method::Delete));
        match segments.as_slice() {
            ["rooms", room, "messages"] if post => self.api_post(key, head, room, body),
            ["rooms", _, "messages"] => Some(error(405, "method_not_allowed", "POST a message here")),
            ["rooms", room, "messages", id] if delete => self.api_delete(key, room, id),
            ["rooms", _, "messages", _] => Some(error(405, "method_not_allowed", "DELETE a message here")),
            _ => Some(error(404, "not_found", "no such route")),
        }
    }

    /// `DELETE /api/rooms/<room>/messages/<id>`: 204 once the message is
    /// a tombstone everywhere it is kept, 404 for an id the room never
    /// had (see `chat/backend.rs`).
    fn api_delete(&mut self, key: usize, room: &str, id: &str) -> Option<Response> {
        let not_found = || Some(error(404, "not_found", "no such message"));
        let Ok(id) = id.parse::<u64>() else { return not_found() };
        if !valid_room_name(room) {
            return not_found();
        }
        if self.is_draining() {
            return Some(error(503, "unavailable", "the server is shutting down").header("Retry-After", "1"));
        }
        let serial = self.conns.get(key).map_or(0, |c| c.serial());
        if !self.chat.delete_from_api(room, id, (key, serial)) {
            return not_found();
        }
        None
    }

    /// `POST /api/rooms/<room>/messages` `{"message": …, "username": …}`.
    fn api_post(&mut self, key: usize, head: &Head, room: &str, body: &[u8]) -> Option<Response> {
        if !is_json(head) {
            return Some(error(415, "unsupported_media_type", "send the body as Content-Type: application/json"));
        }
        let new: NewMessage = match serde_json::from_slice(body) {
            Ok(new) => new,
            Err(e) => {
                return Some(error(
                    400,
                    "bad_json",
                    &format!("the body must be {{\"message\": …, \"username\": …}}: {e}"),
                ));
            }
        };
        if !valid_room_name(room) {
            return Some(error(400, "bad_room", "room names are 1-64 characters of A-Z, a-z, 0-9, _ and -"));
        }
        let max = self.cfg.max_text;
        if new.message.len() > max && new.message.chars().count() > max {
            return Some(error(400, "too_long", &format!("messages are at most {max} characters")));
        }
        let Some(name) = clean_name(&new.username) else {
            return Some(error(400, "bad_name", "names are 1-32 characters without control characters"));
        };
        if self.is_draining() {
            return Some(error(503, "unavailable", "the server is shutting down").header("Retry-After", "1"));
        }
        let serial = self.conns.get(key).map_or(0, |c| c.serial());
        self.chat.post_from_api(room, &name, &new.message, (key, serial));
        None
    }
}
