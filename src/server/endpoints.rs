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

use tungstenite::Message;

use crate::conn::{Phase, Role, WsState};
use crate::frame;
use crate::handshake::Upgrade;
use crate::http::Head;
use crate::outbuf::Chunk;
use crate::route::{Endpoint, query_value};
use crate::server::Server;

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
