//! The frame inspector behind `/ws/inspect` and the learn page.
//!
//! (Placeholder until the "teach the wire" work: it describes the handshake.)

use crate::handshake::Upgrade;
use crate::http::Head;

/// Per-connection inspector state.
#[derive(Debug, Default)]
pub struct Inspector {
    handshake: String,
}

impl Inspector {
    /// Starts inspecting a connection upgraded with `head`.
    pub fn new(head: &Head, upgrade: &Upgrade) -> Inspector {
        let handshake = serde_json::json!({
            "type": "handshake",
            "path": head.target,
            "key": upgrade.key,
            "accept": upgrade.accept,
        })
        .to_string();
        Inspector { handshake }
    }

    /// The first frame: how the handshake went.
    pub fn handshake_json(&self) -> String {
        self.handshake.clone()
    }

    /// A JSON command from the learn page; returns a reply to send.
    pub fn on_command(&mut self, _text: &str) -> Option<String> {
        None
    }
}
