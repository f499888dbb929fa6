//! The original site's echo room (`/ws/chatroom/echo`): what it greets a
//! newcomer with and how it answers, byte for byte as the Django consumer
//! did. Pure: the reactor's `server/endpoints.rs` frames and sends it.

/// The echo room's greeting.
pub(crate) const GREETING: &str = r#"{"message": "You are connected to the Echo Room!", "status": "connected"}"#;

/// The echo room's answer to one text frame: `{"message": X}` for a JSON
/// object with a `message`, else an error event (the connection stays open).
pub fn reply(text: &str) -> String {
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
        assert_eq!(reply(r#"{"message": "hi"}"#), r#"{"message": "hi"}"#);
        assert_eq!(reply(r#"{"message": {"a": [1, 2]}}"#), r#"{"message": {"a":[1,2]}}"#);
        assert!(reply("nope").contains(r#""code":"bad_json""#));
        assert!(reply(r#"{"text": "hi"}"#).contains("bad_json"));
    }
}
