//! The HTTP API over rooms: `/api/rooms`, `/api/rooms/<room>`,
//! `/api/rooms/<room>/messages?before=<id>&limit=<n>`.
//!
//! The first two are answered from memory (the room directory and the live
//! rooms). Scroll-back reads older messages, which lives on disk, so the
//! request goes to the storage thread and the connection is parked until
//! the answer comes back; pipelined requests behind it wait their turn.
//!
//! With `--redis`, this process knows the figures of the rooms it serves,
//! but not those of rooms served elsewhere (it does not hear their
//! messages): the directory is refreshed from Redis when it is more than a
//! couple of seconds old, and the request is parked the same way until the
//! refresh is in (see `cluster/directory.rs`).

use serde_json::{Value, json};

use crate::chat::ONLINE_LIST_MAX;
use crate::response::Response;
use crate::route::{query_value, valid_room_name};
use crate::server::Server;
use crate::server::backend::Viewer;
use crate::storage::RoomRecord;

/// Rooms per page by default, and at most.
const PAGE_DEFAULT: usize = 50;
const PAGE_MAX: usize = 200;

/// Messages per scroll-back page by default, and at most: a page of 200
/// is about 40 KiB of JSON, enough to fill any screen several times.
const SCROLLBACK_DEFAULT: usize = 50;
const SCROLLBACK_MAX: usize = 200;

/// An API answer: status and JSON body.
type Json = (u16, Vec<u8>);

/// An API request waiting for the directory refresh (with `--redis`).
#[derive(Debug)]
pub(super) struct ApiWaiter {
    key: usize,
    serial: u64,
    path: String,
    query: String,
    /// The user the request's bearer token names, if any.
    viewer: Viewer,
}

fn not_found() -> Json {
    (404, br#"{"error":"not_found"}"#.to_vec())
}

fn bad_request(what: &str) -> Json {
    (400, json!({"error": "bad_request", "message": what}).to_string().into_bytes())
}

/// A number from the query, or the default; `Err` if present but not a number.
fn number(query: &str, key: &str, default: u64) -> Result<u64, Json> {
    match query_value(query, key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| bad_request(&format!("`{key}` must be a whole number"))),
    }
}

fn room_json(record: &RoomRecord, online: usize) -> Value {
    json!({
        "name": record.name,
        "created": record.created,
        "last_post": record.last_post,
        "messages": record.messages,
        "online": online,
        "status": if online > 0 { "active" } else { "idle" },
    })
}

impl Server {
    /// Answers `/api/<path>`; `None` when the answer waits (for storage, or
    /// for the directory's refresh from Redis).
    /// Private rooms (`--private-rooms`) are left out for a `viewer`
    /// whose token does not name them, as if they did not exist.
    pub(super) fn on_api(&mut self, key: usize, path: &str, query: &str, viewer: Viewer) -> Option<Response> {
        if self.needs_directory(path) && !self.directory_ready() {
            let serial = self.conns.get(key)?.serial();
            let (path, query) = (path.to_string(), query.to_string());
            self.directory_waiters.push(ApiWaiter { key, serial, path, query, viewer });
            return None;
        }
        self.api_answer(key, path, query, &viewer).map(|(status, body)| Response::json(status, body))
    }

    /// The directory was refreshed: answers a request that waited for it
    /// (unless its connection is gone).
    pub(super) fn answer_waiter(&mut self, waiter: ApiWaiter) {
        let ApiWaiter { key, serial, path, query, viewer } = waiter;
        if self.conns.get(key).is_none_or(|c| c.serial() != serial) {
            return;
        }
        // `None`: a scroll-back read went out, and its answer unparks the connection.
        if let Some((status, body)) = self.api_answer(key, &path, &query, &viewer) {
            self.answer_parked(key, serial, status, body);
        }
    }

    /// Whether answering `path` needs what only the directory knows: the
    /// rooms and their figures, or whether a room exists at all.
    fn needs_directory(&self, path: &str) -> bool {
        match split(path).as_slice() {
            ["rooms"] | ["rooms", _] => true,
            ["rooms", room, "messages"] => !self.chat.directory.contains_key(*room),
            _ => false,
        }
    }

    /// The answer to `/api/<path>` from what is known now; `None` when it
    /// waits for storage.
    fn api_answer(&mut self, key: usize, path: &str, query: &str, viewer: &Viewer) -> Option<Json> {
        let result = match split(path).as_slice() {
            ["rooms"] => self.api_rooms(query, viewer),
            ["rooms", room] | ["rooms", room, "messages"] if !self.may_see(viewer, room) => Err(not_found()),
            ["rooms", room] => self.api_room(room),
            ["rooms", room, "messages"] => return self.api_messages(key, room, query),
            ["rooms", room, "bans"] => self.api_bans(room, viewer),
            _ => Err(not_found()),
        };
        Some(result.unwrap_or_else(|e| e))
    }

    /// `GET /api/rooms/<room>/bans` (the server API: an API key only):
    /// the bans in force, `{"room", "bans": [{"who", "until", "reason"}]}`.
    fn api_bans(&mut self, room: &str, viewer: &Viewer) -> Result<Json, Json> {
        if !matches!(viewer, Viewer::Backend) {
            let body = json!({"error": "unauthorized", "message": "send one of the server's API keys as Authorization: Bearer KEY"});
            return Err((401, body.to_string().into_bytes()));
        }
        let now = crate::chat::now_ms();
        self.chat.bans.sweep(now);
        let bans: Vec<Value> = self
            .chat
            .bans
            .list(room, now)
            .into_iter()
            .map(|(who, ban)| json!({"who": who, "until": ban.until, "reason": ban.reason}))
            .collect();
        Ok((200, json!({"room": room, "bans": bans}).to_string().into_bytes()))
    }

    fn api_rooms(&self, query: &str, viewer: &Viewer) -> Result<Json, Json> {
        let offset = number(query, "offset", 0)? as usize;
        let limit = (number(query, "limit", PAGE_DEFAULT as u64)? as usize).clamp(1, PAGE_MAX);
        let mut rooms: Vec<(&RoomRecord, usize)> = self
            .chat
            .directory
            .values()
            .filter(|r| self.may_see(viewer, &r.name))
            .map(|r| (r, self.chat.online(&r.name, 0).0))
            .collect();
        // Busy rooms first, then the most recently active, then by name (stable pages).
        rooms.sort_by(|(a, ao), (b, bo)| {
            bo.cmp(ao).then(b.last_post.cmp(&a.last_post)).then_with(|| a.name.cmp(&b.name))
        });
        let page: Vec<Value> = rooms.iter().skip(offset).take(limit).map(|(r, online)| room_json(r, *online)).collect();
        let body = json!({"rooms": page, "total": rooms.len(), "offset": offset, "limit": limit});
        Ok((200, body.to_string().into_bytes()))
    }

    fn api_room(&self, room: &str) -> Result<Json, Json> {
        let record = self.chat.directory.get(room).ok_or_else(not_found)?;
        let (online, names) = self.chat.online(room, ONLINE_LIST_MAX);
        let mut body = room_json(record, online);
        if let Some(obj) = body.as_object_mut() {
            obj.insert("online_names".into(), json!(names));
        }
        Ok((200, body.to_string().into_bytes()))
    }

    fn api_messages(&mut self, key: usize, room: &str, query: &str) -> Option<Json> {
        if !valid_room_name(room) || !self.chat.directory.contains_key(room) {
            return Some(not_found());
        }
        let before = match number(query, "before", u64::MAX) {
            Ok(b) => b,
            Err(r) => return Some(r),
        };
        let limit = match number(query, "limit", SCROLLBACK_DEFAULT as u64) {
            Ok(l) => (l as usize).clamp(1, SCROLLBACK_MAX),
            Err(r) => return Some(r),
        };
        let serial = self.conns.get(key)?.serial();
        self.chat.read_for_http(key, serial, room, before, limit);
        None
    }
}

/// `rooms/<room>/messages/` → `["rooms", "<room>", "messages"]`.
fn split(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').collect()
}
