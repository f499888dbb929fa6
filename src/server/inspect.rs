//! The reactor's side of the inspector: sending what it describes, and
//! carrying out the learn page's commands (ping, fragmented message, close).

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::endpoints::Next;
use crate::frame;
use crate::inspect::{Command, fragments, hex};
use crate::server::Server;

impl Server {
    /// Queues one frame for an inspected connection (its inspector notes
    /// the frame's header, shown with the next description).
    fn inspector_push(&mut self, key: usize, bytes: Vec<u8>) {
        if self.conns.get_mut(key).is_some_and(|conn| conn.send_inspected(bytes)) {
            self.mark_dirty(key);
        }
    }

    /// Sends a JSON text to an inspected connection (compressed, when
    /// it agreed to that and the text is long enough: the page then shows
    /// a server frame with RSV1 set).
    pub(super) fn inspector_send(&mut self, key: usize, json: &[u8]) {
        let text = OpCode::Data(Data::Text);
        let Some(frame) = self.conns.get_mut(key).map(|c| c.data_frame(text, json, &self.cfg.compression)) else {
            return;
        };
        self.inspector_push(key, frame);
    }

    /// Does what the learn page asked.
    pub(super) fn inspector_command(&mut self, key: usize, command: Command) -> Next {
        match command {
            Command::Ping(payload) => {
                let ping = frame::encode(OpCode::Control(Control::Ping), &payload);
                let note = serde_json::json!({"type": "server_frame", "what": "ping", "frame_hex": hex(&ping)});
                self.inspector_send(key, note.to_string().as_bytes());
                self.inspector_push(key, ping);
            }
            Command::Fragmented { text, parts } => {
                let frames = fragments(&text, parts);
                let note = serde_json::json!({
                    "type": "server_frame",
                    "what": "fragmented",
                    "frames_hex": frames.iter().map(|f| hex(f)).collect::<Vec<_>>(),
                });
                self.inspector_send(key, note.to_string().as_bytes());
                for f in frames {
                    self.inspector_push(key, f);
                }
            }
            Command::Close { code, reason } => {
                let close = crate::ws::close_frame(code, &reason);
                let note = serde_json::json!({"type": "server_frame", "what": "close", "code": code, "frame_hex": hex(&close)});
                self.inspector_send(key, note.to_string().as_bytes());
                return Next::Close(code, reason.into());
            }
        }
        Next::Continue
    }
}
