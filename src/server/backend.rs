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

use serde_json::json;

use super::Server;
use crate::api_body::{self, BodyError};
use crate::auth::Identity;
use crate::auth::bans::{self, Ban};
use crate::chat::KickTarget;
use crate::conn::Role;
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

/// What a kicked member's close frame says when the moderator gave no reason.
const KICKED: &str = "kicked by a moderator";

/// The close frame's reason for a kick with `reason`.
pub(super) fn close_reason(reason: &str) -> &str {
    if reason.is_empty() { KICKED } else { reason }
}

/// An error answer: `{"error": code, "message": …}`.
fn error(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, json!({"error": code, "message": message}).to_string().into_bytes())
}

/// The answer to a refused body.
fn refused(e: BodyError) -> Response {
    error(e.status, e.code, &e.message)
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
    /// even when not connected). With Redis the other processes do the
    /// same with theirs. 200 `{"closed": k, "banned": [who…]}`, counting
    /// this process's members.
    fn api_kick(&mut self, head: &Head, room: &str, body: &[u8]) -> Response {
        if !api_body::is_json(head.header_str("content-type")) {
            return refused(api_body::not_json());
        }
        let kick = match api_body::kick(body) {
            Ok(kick) => kick,
            Err(e) => return refused(e),
        };
        if !valid_room_name(room) {
            return error(400, "bad_room", "room names are 1-64 characters of A-Z, a-z, 0-9, _ and -");
        }
        let target = kick.target;
        let reason = kick.reason;
        let until = kick
            .ban_seconds
            .filter(|&seconds| seconds > 0)
            .map(|seconds| crate::chat::now_ms().saturating_add(seconds.saturating_mul(1000)));
        let mut whos: Vec<String> = Vec::new();
        if let KickTarget::User(sub) = &target {
            whos.push(bans::user_who(sub));
        }
        let targets = self.chat.kick_targets(room, &target);
        let closed = targets.len();
        for (key, serial, sub) in targets {
            whos.extend(self.kick_member(key, serial, sub.as_deref().map(String::as_str), close_reason(&reason)));
        }
        whos.sort();
        whos.dedup();
        self.chat.kick_elsewhere(room, target, &reason, until);
        let banned = match until {
            Some(until) => {
                for who in &whos {
                    self.chat.ban(room, who, Ban { until, reason: reason.clone() });
                }
                whos
            }
            None => Vec::new(),
        };
        Response::json(200, json!({"closed": closed, "banned": banned}).to_string().into_bytes())
    }

    /// Closes member connection `key` (if still `serial`) with 4001 and
    /// `reason`, and takes it out of its room at once (no more messages
    /// for it, and its name is free). Returns whom a ban would name.
    pub(super) fn kick_member(&mut self, key: usize, serial: u64, sub: Option<&str>, reason: &str) -> Option<String> {
        let conn = self.conns.get_mut(key).filter(|c| c.serial() == serial)?;
        let who = match sub {
            Some(sub) => bans::user_who(sub),
            None => bans::address_who(conn.ip().0),
        };
        conn.close_ws(4001, reason);
        let role = conn.role_mut().map(|role| std::mem::replace(role, Role::None));
        if let Some(role) = role {
            self.on_ws_closed(role);
        }
        self.mark_dirty(key);
        Some(who)
    }

    /// `DELETE /api/rooms/<room>/bans/<who>`: 204, or 404 for no such ban.
    fn api_unban(&mut self, room: &str, who: &str) -> Response {
        let who = percent_encoding::percent_decode_str(who).decode_utf8_lossy();
        if !bans::valid_who(&who) || !self.chat.unban(room, &who) {
            return error(404, "not_found", "no such ban");
        }
        Response::new(204)
    }

    /// Bans were loaded for `room` (with Redis, as this process started to
    /// hear it): members who joined before then and are banned go, as at
    /// a join (an error frame, then 4403).
    pub(super) fn enforce_bans(&mut self, room: &str) {
        let now = crate::chat::now_ms();
        for (key, serial, sub) in self.chat.members_of(room) {
            let Some(conn) = self.conns.get(key).filter(|c| c.serial() == serial) else { continue };
            let who = match &sub {
                Some(sub) => bans::user_who(sub),
                None => bans::address_who(conn.ip().0),
            };
            let Some(ban) = self.chat.bans.find(room, &[&who], now) else { continue };
            let refused = super::endpoints::Refused::banned(room, ban);
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let role = conn.role_mut().map(|role| std::mem::replace(role, Role::None));
            if let Some(role) = role {
                self.on_ws_closed(role);
            }
            self.refuse_member(key, refused);
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
        if !api_body::is_json(head.header_str("content-type")) {
            return Some(refused(api_body::not_json()));
        }
        let new = match api_body::new_message(body, self.cfg.max_text) {
            Ok(new) => new,
            Err(e) => return Some(refused(e)),
        };
        if !valid_room_name(room) {
            return Some(error(400, "bad_room", "room names are 1-64 characters of A-Z, a-z, 0-9, _ and -"));
        }
        if self.is_draining() {
            return Some(error(503, "unavailable", "the server is shutting down").header("Retry-After", "1"));
        }
        let serial = self.conns.get(key).map_or(0, |c| c.serial());
        self.chat.post_from_api(room, &new.username, &new.message, (key, serial));
        None
    }
}
