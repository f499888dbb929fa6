//! What each WebSocket endpoint does with a connection's frames.
//!
//! Bytes read from a WebSocket come here ([`Server::feed_ws`]): the
//! session (tungstenite over our buffers) turns them into messages, and the
//! endpoint the socket was upgraded to decides what each one gets
//! ([`Server::on_ws_message`]):
//!
//! - `/ws/echo`: sends each text or binary message back, byte for byte.
//! - `/ws/chatroom/echo`: the original site's JSON echo room ([`crate::echo_room`]).
//! - `/ws/chatroom/<room>`: the chat (see `chat/`): posts, presence, history.
//! - `/ws/inspect` and `/ws/stats`: the learn and stats pages' feeds.
//!
//! Replies are queued on the connection's output, never written here.

use std::borrow::Cow;
use std::net::IpAddr;

use tungstenite::Message;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::Server;
use super::backend::Viewer;
use crate::auth::Identity;
use crate::auth::bans::{self, Ban};
use crate::chat::Who;
use crate::config::Guests;
use crate::conn::Role;
use crate::handshake::Upgrade;
use crate::http::Head;
use crate::route::{Endpoint, query_value};

/// Why a chat handshake was refused, and how the client is told.
pub(super) struct Refused {
    /// The close code: 4401 (no valid token) or 4403 (not allowed here).
    close: u16,
    /// The error frame's code.
    code: &'static str,
    /// What the client is told (never the token).
    message: String,
}

impl Refused {
    fn unauthorized(message: &str) -> Refused {
        Refused { close: 4401, code: "unauthorized", message: message.to_string() }
    }

    fn forbidden(message: String) -> Refused {
        Refused { close: 4403, code: "forbidden", message }
    }

    /// Banned from `room` (the server API's kick with `ban_seconds`).
    pub(super) fn banned(room: &str, ban: &Ban) -> Refused {
        let until = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ban.until);
        let mut message = format!("you are banned from room {room} until {}", httpdate::fmt_http_date(until));
        if !ban.reason.is_empty() {
            message.push_str(": ");
            message.push_str(&ban.reason);
        }
        Refused { close: 4403, code: "banned", message }
    }
}

/// Whether `user`'s token names `room` in its `rooms` claim (a token
/// without one allows every public room, and no private one).
fn names_room(user: &Identity, room: &str) -> bool {
    user.rooms.as_ref().is_some_and(|rooms| rooms.matches(room))
}

/// The token of an `Authorization: Bearer <token>` header, if any.
pub(super) fn bearer(head: &Head) -> Option<String> {
    let value = std::str::from_utf8(head.header("authorization")?).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// What a message means for its connection.
pub(super) enum Next {
    /// Carry on.
    Continue,
    /// Start the closing handshake with this code and reason.
    Close(u16, Cow<'static, str>),
}

impl Server {
    /// A WebSocket has just been accepted on `key`; `identity` is what
    /// [`Server::identify`] said of a chat member (`Ok(None)` elsewhere).
    pub(super) fn on_ws_open(
        &mut self,
        key: usize,
        head: &Head,
        upgrade: &Upgrade,
        identity: Result<Option<Identity>, Refused>,
    ) {
        match &upgrade.endpoint {
            Endpoint::Echo => {}
            Endpoint::EchoRoom => self.send_text(key, crate::echo_room::GREETING.as_bytes()),
            Endpoint::Room(room) => {
                let name = query_value(head.query(), "username");
                let since = query_value(head.query(), "since").and_then(|s| s.parse::<u64>().ok());
                let serial = self.conns.get(key).map_or(0, |c| c.serial());
                let identity = match identity {
                    Ok(identity) => identity,
                    Err(refused) => return self.refuse_member(key, refused),
                };
                let who = match &identity {
                    Some(user) => {
                        Who::Verified { name: &user.name, sub: &user.sub, moderator: user.moderate.matches(room) }
                    }
                    None => Who::Guest { name: name.as_deref(), read_only: self.cfg.guests == Guests::ReadOnly },
                };
                let membership = self.chat.join_as((key, serial), room, who, since, self.now);
                if let (Some(m), Some(conn)) = (membership, self.conns.get_mut(key)) {
                    conn.set_role(Role::Member(m));
                }
                self.deliver_chat();
            }
            Endpoint::Inspect => {
                let inspector = crate::inspect::Inspector::new(head, upgrade);
                let intro = inspector.handshake_json();
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.set_role(Role::Inspected(Box::new(inspector)));
                }
                self.inspector_send(key, intro.as_bytes());
            }
            Endpoint::Stats => {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.set_role(Role::StatsViewer);
                }
                self.stats_viewers += 1;
                let snapshot = self.stats_json();
                self.send_text(key, snapshot.as_bytes());
            }
        }
    }

    /// Who a chat handshake from address `ip` says it is: a verified user
    /// (a token that checks out and allows `room`), a guest (no token, or
    /// no keys configured, while `--guests` admits guests), or refused
    /// (a bad token, a room not allowed, a ban).
    pub(super) fn identify(&self, head: &Head, room: &str, ip: IpAddr) -> Result<Option<Identity>, Refused> {
        let token = query_value(head.query(), "token").map(Cow::into_owned).or_else(|| bearer(head));
        let user = match (&self.auth, token) {
            (Some(auth), Some(token)) => {
                let user = auth.verify(&token).map_err(|why| Refused::unauthorized(why.reason()))?;
                if user.rooms.as_ref().is_some_and(|rooms| !rooms.matches(room)) {
                    return Err(Refused::forbidden(format!("your token does not allow room {room}")));
                }
                Some(user)
            }
            _ if self.cfg.guests == Guests::Off => {
                return Err(Refused::unauthorized("this chat is for signed-in users: connect with ?token="));
            }
            _ => None,
        };
        // A private room takes only those whose token names it.
        if self.private_rooms.matches(room) && !user.as_ref().is_some_and(|u| names_room(u, room)) {
            return Err(Refused::forbidden(format!("room {room} is private: your token must name it in its rooms")));
        }
        // A banned user, by token; a guest, by address.
        let who = match &user {
            Some(user) => bans::user_who(&user.sub),
            None => bans::address_who(ip),
        };
        if let Some(ban) = self.chat.bans.find(room, &[&who], crate::chat::now_ms()) {
            return Err(Refused::banned(room, ban));
        }
        Ok(user)
    }

    /// Whether `viewer` (an HTTP request's `Authorization: Bearer`) may
    /// see `room`: a public room, anyone; a private one, a user whose
    /// token names it, or the site's backend (an API key).
    pub(super) fn may_see(&self, viewer: &Viewer, room: &str) -> bool {
        !self.private_rooms.matches(room)
            || match viewer {
                Viewer::Backend => true,
                Viewer::User(user) => names_room(user, room),
                Viewer::Anyone => false,
            }
    }

    /// Who an HTTP request's `Authorization: Bearer` says it is: an API
    /// key is the site's backend; else a valid token names a user.
    pub(super) fn viewer(&self, head: &Head) -> Viewer {
        let Some(bearer) = bearer(head) else { return Viewer::Anyone };
        if self.api_keys.as_ref().is_some_and(|keys| keys.check(&bearer)) {
            return Viewer::Backend;
        }
        match self.auth.as_ref().map(|auth| auth.verify(&bearer)) {
            Some(Ok(user)) => Viewer::User(user),
            _ => Viewer::Anyone,
        }
    }

    /// A WebSocket that failed its identity checks: a browser cannot read
    /// the status of a refused upgrade (it only sees 1006), so it was
    /// upgraded, and now gets one error frame and a close frame that say
    /// why.
    pub(super) fn refuse_member(&mut self, key: usize, refused: Refused) {
        let Refused { close, code, message } = refused;
        self.send_text(key, crate::chat::protocol::error_json(code, &message).as_bytes());
        if let Some(conn) = self.conns.get_mut(key) {
            conn.close_ws(close, &message);
        }
        self.mark_dirty(key);
    }

    /// Runs `bytes` (or the end of the stream) through the connection's
    /// WebSocket session and handles the messages that complete. Returns
    /// false if some bytes were left undecoded because the connection has
    /// too many posts in flight: they are kept, and the connection is
    /// paused until [`Server::resume_paused`] finds it may go on.
    pub(super) fn feed_ws(&mut self, key: usize, bytes: &[u8], eof: bool) -> bool {
        // The inspector sees the raw bytes first (tee), then the session.
        let descriptions = match self.conns.get_mut(key).and_then(|c| c.role_mut()) {
            Some(Role::Inspected(inspector)) => inspector.observe(bytes),
            _ => Vec::new(),
        };
        for description in descriptions {
            self.inspector_send(key, description.as_bytes());
        }
        self.decode_ws(key, bytes, eof)
    }

    /// The session's part of [`Server::feed_ws`], also for bytes held back
    /// from an earlier read (the inspector saw them then).
    pub(super) fn decode_ws(&mut self, key: usize, bytes: &[u8], eof: bool) -> bool {
        let mut messages = std::mem::take(&mut self.incoming);
        let mut input = bytes;
        loop {
            // Decode no more messages than the chat may take now: each post
            // handled below counts against the next round's allowance.
            let max = self.read_allowance(key);
            let Some(conn) = self.conns.get_mut(key) else { return true };
            let taken = conn.feed_ws(input, eof, &mut messages, max);
            input = input.get(taken..).unwrap_or_default();
            for message in messages.drain(..) {
                if let Next::Close(code, reason) = self.on_ws_message(key, message)
                    && let Some(conn) = self.conns.get_mut(key)
                {
                    conn.close_ws(code, &reason);
                }
            }
            if input.is_empty() || self.read_allowance(key) == 0 {
                break;
            }
        }
        self.incoming = messages;
        let Some(conn) = self.conns.get_mut(key) else { return true };
        let all_taken = input.is_empty();
        if !all_taken {
            conn.hold_input(input);
            self.pause_reads(key);
        } else if conn.after_ws_input(eof) {
            self.kill(key);
            return true;
        }
        self.mark_dirty(key);
        all_taken
    }

    /// One complete message from connection `key`.
    fn on_ws_message(&mut self, key: usize, message: Message) -> Next {
        let Some(conn) = self.conns.get_mut(key) else { return Next::Continue };
        if let Message::Pong(_) = message {
            conn.on_pong();
            return Next::Continue;
        }
        // After we sent a close frame, data is read but not answered (§5.5.1).
        if !conn.ws_open() {
            return Next::Continue;
        }
        let Some(endpoint) = conn.endpoint() else { return Next::Continue };
        match (endpoint, message) {
            (_, Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {}
            (Endpoint::Echo, Message::Text(text)) => {
                conn.send_data(OpCode::Data(Data::Text), text.as_bytes(), &self.cfg.compression);
                self.mark_dirty(key);
            }
            (Endpoint::Echo, Message::Binary(bytes)) => {
                conn.send_data(OpCode::Data(Data::Binary), &bytes, &self.cfg.compression);
                self.mark_dirty(key);
            }
            (Endpoint::EchoRoom, Message::Text(text)) => {
                let reply = crate::echo_room::reply(text.as_str());
                self.send_text(key, reply.as_bytes());
            }
            (Endpoint::Room(_), Message::Text(text)) => {
                if let Some(Role::Member(m)) = conn.role_mut() {
                    self.metrics.messages_received += 1;
                    self.chat.on_text(key, m, text.as_str(), self.now);
                    self.metrics.rate_limited = self.chat.rate_limited;
                    self.deliver_chat();
                }
            }
            (Endpoint::Inspect, Message::Text(text)) => {
                let command = match conn.role_mut() {
                    Some(Role::Inspected(inspector)) => inspector.on_command(text.as_str()),
                    _ => Ok(None),
                };
                match command {
                    Ok(Some(command)) => return self.inspector_command(key, command),
                    Ok(None) => {}
                    Err(why) => {
                        let json = serde_json::json!({"type": "error", "code": "bad_command", "message": why});
                        self.inspector_send(key, json.to_string().as_bytes());
                    }
                }
            }
            (Endpoint::Inspect | Endpoint::Stats, _) => {}
            // RFC 6455 §7.4.1: 1003 "received a type of data it cannot accept".
            (Endpoint::EchoRoom | Endpoint::Room(_), Message::Binary(_)) => {
                return Next::Close(1003, "binary frames are not accepted here".into());
            }
        }
        Next::Continue
    }

    /// A WebSocket connection is gone (reaped): its endpoint role cleans up.
    pub(super) fn on_ws_closed(&mut self, role: Role) {
        match role {
            Role::Member(m) => {
                self.chat.leave(m);
                self.deliver_chat();
            }
            Role::StatsViewer => self.stats_viewers = self.stats_viewers.saturating_sub(1),
            Role::None | Role::Inspected(_) => {}
        }
    }

    /// Queues a text frame for one connection.
    pub(super) fn send_text(&mut self, key: usize, payload: &[u8]) {
        if self.conns.get_mut(key).is_some_and(|conn| conn.send_text(payload, &self.cfg.compression)) {
            self.mark_dirty(key);
        }
    }
}
