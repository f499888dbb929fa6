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
use crate::auth::bans::{self, Ban};
use crate::chat::KickTarget;
use crate::chat::protocol::clean_name;
use crate::conn::Role;
use crate::http::{Head, Method};
use crate::response::Response;
use crate::route::valid_room_name;
use crate::storage::{BanRecord, Request};

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

/// The body of `POST /api/rooms/<room>/kick`: whom (a name or a user),
/// and optionally a ban and its reason.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kick {
    username: Option<String>,
    user: Option<String>,
    ban_seconds: Option<u64>,
    reason: Option<String>,
}

/// What a kicked member's close frame says when the moderator gave no reason.
const KICKED: &str = "kicked by a moderator";

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
            ["rooms", room, "kick"] if post => Some(self.api_kick(head, room, body)),
            ["rooms", room, "bans", who] if delete => Some(self.api_unban(room, who)),
            _ => Some(error(404, "not_found", "no such route")),
        }
    }

    /// `POST /api/rooms/<room>/kick` `{"username"|"user", "ban_seconds"?,
    /// "reason"?}`: closes the members it names with 4001 and the reason;
    /// with `ban_seconds`, bans them from the room until then (a user by
    /// token `sub`, a guest by address; a user named by `user` is banned
    /// even when not connected). 200 `{"closed": k, "banned": [who…]}`.
    fn api_kick(&mut self, head: &Head, room: &str, body: &[u8]) -> Response {
        if !is_json(head) {
            return error(415, "unsupported_media_type", "send the body as Content-Type: application/json");
        }
        let kick: Kick = match serde_json::from_slice(body) {
            Ok(kick) => kick,
            Err(e) => return error(400, "bad_json", &format!("the body must be {{\"username\" or \"user\": …}}: {e}")),
        };
        if !valid_room_name(room) {
            return error(400, "bad_room", "room names are 1-64 characters of A-Z, a-z, 0-9, _ and -");
        }
        let target = match (&kick.username, &kick.user) {
            (Some(name), None) => KickTarget::Name(name),
            (None, Some(sub)) if !sub.is_empty() => KickTarget::User(sub),
            _ => return error(400, "bad_json", "name the member with exactly one of \"username\" and \"user\""),
        };
        let reason = kick.reason.as_deref().filter(|r| !r.is_empty()).unwrap_or(KICKED);
        let mut whos: Vec<String> = Vec::new();
        if let KickTarget::User(sub) = target {
            whos.push(bans::user_who(sub));
        }
        let targets = self.chat.kick_targets(room, target);
        let mut closed = 0;
        for (key, serial, sub) in targets {
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.serial() == serial) else { continue };
            whos.push(match sub {
                Some(sub) => bans::user_who(&sub),
                None => bans::address_who(conn.ip().0),
            });
            conn.close_ws(4001, reason);
            // Out of the room now, not when the close handshake is done:
            // no more messages for it, and its name is free.
            let role = conn.role_mut().map(|role| std::mem::replace(role, Role::None));
            if let Some(role) = role {
                self.on_ws_closed(role);
            }
            self.mark_dirty(key);
            closed += 1;
        }
        whos.sort();
        whos.dedup();
        let banned = match kick.ban_seconds {
            Some(seconds) if seconds > 0 => {
                let until = crate::chat::now_ms().saturating_add(seconds.saturating_mul(1000));
                let reason = kick.reason.unwrap_or_default();
                for who in &whos {
                    self.bans.insert(room, who, Ban { until, reason: reason.clone() });
                    let record = BanRecord { room: room.to_string(), who: who.clone(), until, reason: reason.clone() };
                    self.chat.requests.push(Request::Ban(record));
                }
                whos
            }
            _ => Vec::new(),
        };
        Response::json(200, json!({"closed": closed, "banned": banned}).to_string().into_bytes())
    }

    /// `DELETE /api/rooms/<room>/bans/<who>`: 204, or 404 for no such ban.
    fn api_unban(&mut self, room: &str, who: &str) -> Response {
        let who = percent_encoding::percent_decode_str(who).decode_utf8_lossy();
        if !bans::valid_who(&who) || !self.bans.lift(room, &who) {
            return error(404, "not_found", "no such ban");
        }
        self.chat.requests.push(Request::Unban { room: room.to_string(), who: who.into_owned() });
        Response::new(204)
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
