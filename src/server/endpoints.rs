//! What each WebSocket endpoint does with a connection's messages.
//!
//! The reactor hands every complete message here ([`Server::on_ws_message`]),
//! and the endpoint the socket was upgraded to decides:
//!
//! - `/ws/echo`: sends each text or binary message back, byte for byte.
//! - `/ws/chatroom/echo`: the original site's JSON echo room.
//! - `/ws/chatroom/<room>`: the chat (see `chat/`): posts, presence, history.
//! - `/ws/inspect` and `/ws/stats`: the learn and stats pages' feeds.
//!
//! Replies are queued on the connection's output, never written here.

use std::rc::Rc;

use tungstenite::Message;

use crate::chat::Outgoing;
use crate::conn::{Phase, Role, WsState};
use crate::frame;
use crate::handshake::Upgrade;
use crate::http::Head;
use crate::outbuf::Chunk;
use crate::response::Response;
use crate::route::{Endpoint, query_value};
use crate::server::Server;
use crate::storage::Reply;

/// The echo room's greeting, byte for byte as the original Django consumer sent it.
pub const ECHO_GREETING: &str = r#"{"message": "You are connected to the Echo Room!", "status": "connected"}"#;

impl Server {
    /// A WebSocket has just been accepted on `key`.
    pub(crate) fn on_ws_open(&mut self, key: usize, head: &Head, upgrade: &Upgrade) {
        match &upgrade.endpoint {
            Endpoint::Echo => {}
            Endpoint::EchoRoom => self.send_text(key, ECHO_GREETING.as_bytes()),
            Endpoint::Room(room) => {
                let name = query_value(head.query(), "username");
                let since = query_value(head.query(), "since").and_then(|s| s.parse::<u64>().ok());
                let serial = self.conns.get(key).map_or(0, |c| c.serial);
                let membership = self.chat.join((key, serial), room, name.as_deref(), since, self.now);
                if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws()) {
                    if let Some(m) = membership {
                        ws.role = Role::Member(m);
                    }
                    // The room keeps the name; an idle member should not
                    // carry its own copy (10,000 of them add up).
                    if let Endpoint::Room(name) = &mut ws.endpoint {
                        *name = String::new();
                    }
                }
                self.deliver_chat();
            }
            Endpoint::Inspect => {
                let inspector = crate::inspect::Inspector::new(head, upgrade);
                let intro = inspector.handshake_json();
                if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws()) {
                    ws.role = Role::Inspected(Box::new(inspector));
                }
                self.inspector_send(key, intro.as_bytes());
            }
            Endpoint::Stats => {
                if let Some(ws) = self.conns.get_mut(key).and_then(|c| c.ws()) {
                    ws.role = Role::StatsViewer;
                }
                self.stats_viewers += 1;
                let snapshot = self.stats_json();
                self.send_text(key, snapshot.as_bytes());
            }
        }
    }

    /// One complete message from connection `key`.
    pub(crate) fn on_ws_message(&mut self, key: usize, message: Message) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::WebSocket(ws) = &mut conn.phase else { return };
        if let Message::Pong(_) = message {
            ws.ping_sent = None;
            return;
        }
        // After we sent a close frame, data is read but not answered (§5.5.1).
        if !ws.session.is_open() {
            return;
        }
        match (&ws.endpoint, message) {
            (_, Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {}
            (Endpoint::Echo, Message::Text(text)) => {
                conn.out.push(Chunk::Owned(frame::text(text.as_bytes())));
                self.mark_dirty(key);
            }
            (Endpoint::Echo, Message::Binary(bytes)) => {
                conn.out.push(Chunk::Owned(frame::binary(&bytes)));
                self.mark_dirty(key);
            }
            (Endpoint::EchoRoom, Message::Text(text)) => {
                let reply = echo_room_reply(text.as_str());
                self.send_text(key, reply.as_bytes());
            }
            (Endpoint::Room(_), Message::Text(text)) => {
                let now = self.now;
                if let Role::Member(m) = &mut ws.role {
                    self.metrics.messages_received += 1;
                    self.chat.on_text(key, m, text.as_str(), now);
                    self.metrics.rate_limited = self.chat.rate_limited;
                    self.deliver_chat();
                }
            }
            (Endpoint::Inspect, Message::Text(text)) => {
                let command = match &mut ws.role {
                    Role::Inspected(inspector) => inspector.on_command(text.as_str()),
                    _ => Ok(None),
                };
                match command {
                    Ok(Some(command)) => self.inspector_command(key, command),
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
                ws.session.close(1003, "binary frames are not accepted here", &mut conn.out);
                conn.close_after_flush = true;
                self.mark_dirty(key);
            }
        }
    }

    /// A WebSocket connection is gone (reaped); clean up its endpoint state.
    pub(crate) fn on_ws_closed(&mut self, _key: usize, ws: WsState) {
        match ws.role {
            Role::Member(m) => {
                self.chat.leave(m);
                self.deliver_chat();
            }
            Role::StatsViewer => self.stats_viewers = self.stats_viewers.saturating_sub(1),
            Role::None | Role::Inspected(_) => {}
        }
    }

    /// Queues a text frame for one connection.
    pub(crate) fn send_text(&mut self, key: usize, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.ws().is_some_and(|ws| ws.session.is_open()) {
            conn.out.push(Chunk::Owned(frame::text(payload)));
            self.mark_dirty(key);
        }
    }

    /// Carries out what the chat decided: frames to members, closes, and
    /// HTTP answers that waited for storage. A room broadcast is framed once
    /// and the same bytes are queued for every member.
    pub(crate) fn deliver_chat(&mut self) {
        let mut out = std::mem::take(&mut self.chat.out);
        let mut over_cap = Vec::new();
        for item in out.drain(..) {
            match item {
                Outgoing::To { key, json } => self.send_text(key, json.as_bytes()),
                Outgoing::ToSerial { key, serial, json } => {
                    if self.conns.get(key).is_some_and(|c| c.serial == serial) {
                        self.send_text(key, json.as_bytes());
                    }
                }
                Outgoing::Room { room, json, is_message, except, author } => {
                    let shared: Rc<[u8]> = frame::shared_text(json.as_bytes());
                    let max_pending = self.cfg.max_pending;
                    let mut delivered = 0;
                    for key in self.chat.recipients(room) {
                        if Some(key) == except {
                            continue;
                        }
                        let Some(conn) = self.conns.get_mut(key) else { continue };
                        if conn.dead || conn.close_after_flush {
                            continue;
                        }
                        conn.out.push(Chunk::Shared(shared.clone()));
                        delivered += 1;
                        if !conn.dirty {
                            conn.dirty = true;
                            self.dirty.push(key);
                        }
                        // Only a socket that already refused bytes is slow: a
                        // reader keeping up gets this turn's flush first, even
                        // when one commit batch alone is larger than the cap.
                        if conn.writable_interest && conn.out.len() > max_pending {
                            over_cap.push(key);
                        }
                    }
                    if is_message {
                        self.metrics.messages_delivered += delivered;
                    }
                    if let Some((key, serial)) = author
                        && let Some(conn) = self.conns.get_mut(key)
                        && conn.serial == serial
                        && conn.dirty
                    {
                        conn.urgent = true;
                        self.authors.push(key);
                    }
                }
                Outgoing::Close { key, code, reason } => {
                    let Some(conn) = self.conns.get_mut(key) else { continue };
                    if let Phase::WebSocket(ws) = &mut conn.phase {
                        ws.session.close(code, reason, &mut conn.out);
                        conn.close_after_flush = true;
                    }
                    self.mark_dirty(key);
                }
                Outgoing::Http { key, serial, status, body } => self.answer_parked(key, serial, status, body),
            }
        }
        self.chat.out = out;
        for key in over_cap {
            self.drop_slow_consumer(key);
        }
    }

    /// Sends the answer a parked HTTP connection waited for, then serves
    /// whatever was pipelined behind it.
    fn answer_parked(&mut self, key: usize, serial: u64, status: u16, body: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.serial != serial {
            return;
        }
        let Phase::Http(http) = &mut conn.phase else { return };
        let Some(parked) = http.parked.take() else { return };
        let response = Response::json(status, body).head_only(parked.head_only).close(!parked.keep_alive);
        self.respond(key, response);
        self.resume_http(key);
    }

    /// End of turn, before flushing: storage requests leave as one batch,
    /// and presence changes become one frame per room.
    pub(crate) fn chat_before_flush(&mut self) {
        self.chat.flush_presence();
        self.deliver_chat();
        if let Some(storage) = &mut self.storage {
            // The whole turn goes as one message: one transaction.
            let last_append = storage.send_all(std::mem::take(&mut self.chat.requests));
            // Remember when this batch left, to time its commit.
            if last_append > 0 {
                self.commit_clock.push_back((last_append, self.now));
            }
        }
        // Deliver what is already committed in this same turn, without
        // waiting for the waker's event: memory mode answers inline, and
        // the storage thread, woken by the send above, usually preempts us
        // on a shared core and has committed by the time we get here. (Its
        // waker event still comes; by then it finds nothing, or the next
        // batch.)
        self.on_storage_replies();
    }

    /// The storage thread has answers (it woke us through the waker).
    pub(crate) fn on_storage_replies(&mut self) {
        while let Some(reply) = self.storage.as_mut().and_then(|s| s.try_recv()) {
            match reply {
                Reply::Committed { upto, result } => {
                    let committed = self.chat.on_committed(upto, &result);
                    self.metrics.history_writes += committed as u64;
                    self.metrics.history_batches += 1;
                    let now = std::time::Instant::now();
                    while let Some(&(seq, sent)) = self.commit_clock.front()
                        && seq <= upto
                    {
                        self.commit_clock.pop_front();
                        self.metrics.history_latency_us_sum += now.duration_since(sent).as_micros() as u64;
                        self.metrics.history_latency_count += 1;
                    }
                }
                Reply::Messages { ticket, messages, oldest_id } => self.chat.on_messages(ticket, messages, oldest_id),
            }
        }
        self.deliver_chat();
    }
}

/// The echo room's answer to one text frame: `{"message": X}` for a JSON
/// object with a `message`, else an error event (the connection stays open).
pub fn echo_room_reply(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(mut obj)) if obj.contains_key("message") => {
            let message = obj.remove("message").unwrap_or_default();
            format!(r#"{{"message": {message}}}"#)
        }
        _ => crate::chat::protocol::error_json("bad_json", r#"send {"message": ...} as a JSON object"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_room() {
        assert_eq!(echo_room_reply(r#"{"message": "hi"}"#), r#"{"message": "hi"}"#);
        assert_eq!(echo_room_reply(r#"{"message": {"a": [1, 2]}}"#), r#"{"message": {"a":[1,2]}}"#);
        assert!(echo_room_reply("nope").contains(r#""code":"bad_json""#));
        assert!(echo_room_reply(r#"{"text": "hi"}"#).contains("bad_json"));
    }
}
