//! The WebSocket opening handshake, by hand (RFC 6455 §4.2).
//!
//! A WebSocket starts life as an HTTP GET. [`validate`] checks that request
//! the way §4.2.1 lists the server's duties, and either returns an
//! [`Upgrade`] (the endpoint and the `Sec-WebSocket-Accept` value) or a
//! [`Refusal`] that becomes an ordinary HTTP error response, so a refused
//! client learns why instead of seeing a dropped connection. [`response_101`]
//! writes the "101 Switching Protocols" head; from the byte after it, both
//! sides speak WebSocket frames.
//!
//! Pure code: no sockets, so every refusal is unit-tested below.

use data_encoding::BASE64;

use crate::http::{Head, Method};
use crate::route::{Endpoint, NoEndpoint, endpoint};

/// An accepted upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// Where the WebSocket goes.
    pub endpoint: Endpoint,
    /// The client's `Sec-WebSocket-Key`, as sent.
    pub key: String,
    /// `base64(sha1(key + GUID))`, the `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// permessage-deflate as agreed, and the `Sec-WebSocket-Extensions`
    /// answer (set by the server, which knows its settings).
    pub extension: Option<(crate::deflate::Agreed, String)>,
}

/// Why an upgrade was refused: an HTTP status, a reason for the body and
/// the log, and the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status to answer with.
    pub status: u16,
    /// One line for the response body.
    pub reason: &'static str,
    /// Short label for `chatroom_handshakes_rejected_total{reason=...}`.
    pub label: &'static str,
}

const fn refuse(status: u16, label: &'static str, reason: &'static str) -> Refusal {
    Refusal { status, reason, label }
}

/// Whether this request asks for a WebSocket (`Upgrade: websocket`).
pub fn wants_upgrade(head: &Head) -> bool {
    head.has_token("upgrade", "websocket")
}

/// Checks an upgrade request against RFC 6455 §4.2.1 and our policy.
///
/// `allow_origin` holds extra Origin `host[:port]` values besides the
/// request's own Host (lowercase).
pub fn validate(head: &Head, allow_origin: &[String]) -> Result<Upgrade, Refusal> {
    // §4.2.1 (1): "An HTTP/1.1 or higher GET request".
    if head.method != Some(Method::Get) {
        return Err(refuse(405, "method", "a WebSocket upgrade must be a GET"));
    }
    if head.minor_version < 1 {
        return Err(refuse(400, "http_version", "a WebSocket upgrade needs HTTP/1.1"));
    }
    // (3) and (4): `Upgrade: websocket` and `Connection: Upgrade`, both
    // case-insensitive tokens that may sit among others ("keep-alive, Upgrade").
    if !wants_upgrade(head) || !head.has_token("connection", "upgrade") {
        return Err(refuse(400, "not_upgrade", "expected `Upgrade: websocket` and `Connection: Upgrade`"));
    }
    let endpoint = endpoint(head.path()).map_err(|e| match e {
        NoEndpoint::NotFound => refuse(404, "not_found", "no WebSocket endpoint at this path"),
        NoEndpoint::BadRoomName => refuse(400, "bad_room", "room names are 1-64 characters of A-Z a-z 0-9 _ -"),
    })?;
    // (6): version 13 only; anything else gets 426 with the version we speak
    // (§4.4), so the client can retry with it.
    if head.header_str("sec-websocket-version") != Some("13") {
        return Err(refuse(426, "version", "only Sec-WebSocket-Version 13 is supported"));
    }
    // (5): "a base64-encoded value that, when decoded, is 16 bytes in length".
    let key = head.header_str("sec-websocket-key").unwrap_or("");
    if head.header_count("sec-websocket-key") != 1 || BASE64.decode(key.as_bytes()).map(|k| k.len()) != Ok(16) {
        return Err(refuse(400, "bad_key", "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    check_origin(head, allow_origin)?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Ok(Upgrade { endpoint, key: key.to_string(), accept, extension: None })
}

/// Cross-site WebSocket hijacking defence (OWASP): a browser always sends
/// `Origin`, so a page on another site can be told apart from ours. The
/// origin's host[:port] must equal the request's `Host` or be listed in
/// `--allow-origin`; the scheme is ignored, since a TLS proxy in front turns
/// `https://` pages into plain requests here. No `Origin` at all means a
/// non-browser client, which no other site can drive: allowed.
fn check_origin(head: &Head, allow_origin: &[String]) -> Result<(), Refusal> {
    let Some(origin) = head.header_str("origin") else { return Ok(()) };
    let forbidden = refuse(403, "origin", "this Origin may not open WebSockets here");
    let host_port = origin.split_once("://").map(|(_, rest)| rest).ok_or(forbidden)?;
    let host_port = host_port.trim_end_matches('/').to_ascii_lowercase();
    let own_host = head.header_str("host").map(str::to_ascii_lowercase);
    let same_host = own_host.as_deref().is_some_and(|h| strip_default_port(h) == strip_default_port(&host_port));
    if same_host || allow_origin.iter().any(|a| strip_default_port(a) == strip_default_port(&host_port)) {
        Ok(())
    } else {
        Err(forbidden)
    }
}

/// The `Origin` of a cross-origin request that `--allow-origin` lists
/// (its host[:port]), for the CORS headers of its answer: a page of that
/// site may read the API and load the client module. `None` for a request
/// without `Origin`, from the server's own host, or from a site not listed.
pub fn cors_origin<'h>(head: &'h Head, allow_origin: &[String]) -> Option<&'h str> {
    let origin = head.header_str("origin")?;
    let host_port = origin.split_once("://")?.1.trim_end_matches('/').to_ascii_lowercase();
    let listed = allow_origin.iter().any(|a| strip_default_port(a) == strip_default_port(&host_port));
    // A value that could break a header line never goes back out.
    (listed && !origin.bytes().any(|b| b.is_ascii_control())).then_some(origin)
}

/// `example.com:80` and `example.com:443` compare equal to `example.com`:
/// a browser omits the default port in `Origin` but a client may send it in `Host`.
fn strip_default_port(host: &str) -> &str {
    host.strip_suffix(":80").or_else(|| host.strip_suffix(":443")).unwrap_or(host)
}

/// The `101 Switching Protocols` head that completes the handshake
/// (§4.2.2), with the extension we took, if any (§9.1).
pub fn response_101(accept: &str, extensions: Option<&str>) -> Vec<u8> {
    let extensions = extensions.map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn head(extra: &str) -> Head {
        let text = format!("GET /ws/echo HTTP/1.1\r\nHost: localhost:8000\r\n{extra}\r\n");
        parse_head(text.as_bytes()).unwrap().unwrap()
    }

    const GOOD: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn rfc6455_sample_key() {
        // RFC 6455 §1.3: key "dGhlIHNhbXBsZSBub25jZQ==" → "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".
        let up = validate(&head(GOOD), &[]).unwrap();
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.endpoint, Endpoint::Echo);
        let text = String::from_utf8(response_101(&up.accept, None)).unwrap();
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let h = head(
            "upgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
        assert!(validate(&h, &[]).is_ok());
    }

    #[test]
    fn each_bad_header_is_refused() {
        let status = |extra: &str| validate(&head(extra), &[]).unwrap_err().status;
        assert_eq!(status(&GOOD.replace("Upgrade: websocket\r\n", "")), 400);
        assert_eq!(status(&GOOD.replace("Connection: Upgrade", "Connection: keep-alive")), 400);
        assert_eq!(status(&GOOD.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(status(&GOOD.replace("Sec-WebSocket-Version: 13\r\n", "")), 426);
        assert_eq!(status(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "dG9vc2hvcnQ=")), 400);
        assert_eq!(status(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!!notbase64!!!!!!!!!!!=")), 400);
        assert_eq!(status(&GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")), 400);
    }

    #[test]
    fn paths_and_methods() {
        let req = |first_line: &str| {
            let text = format!("{first_line}\r\nHost: h\r\n{GOOD}\r\n");
            validate(&parse_head(text.as_bytes()).unwrap().unwrap(), &[]).map_err(|r| r.status)
        };
        assert_eq!(req("GET /ws/nope HTTP/1.1").unwrap_err(), 404);
        assert_eq!(req("GET /ws/chatroom/bad.name HTTP/1.1").unwrap_err(), 400);
        assert_eq!(req("POST /ws/echo HTTP/1.1").unwrap_err(), 405);
        assert_eq!(req("GET /ws/echo HTTP/1.0").unwrap_err(), 400);
        assert_eq!(req("GET /ws/chatroom/welcome/ HTTP/1.1").unwrap().endpoint, Endpoint::Room("welcome".into()));
    }

    #[test]
    fn origin_policy() {
        let with_origin = |origin: &str| head(&format!("{GOOD}Origin: {origin}\r\n"));
        assert!(validate(&with_origin("http://localhost:8000"), &[]).is_ok());
        assert!(validate(&with_origin("https://LOCALHOST:8000"), &[]).is_ok(), "scheme and case are ignored");
        assert_eq!(validate(&with_origin("http://evil.example"), &[]).unwrap_err().status, 403);
        assert_eq!(validate(&with_origin("null"), &[]).unwrap_err().status, 403);
        assert!(validate(&with_origin("https://chat.example.org"), &["chat.example.org".into()]).is_ok());
        assert!(validate(&head(GOOD), &[]).is_ok(), "no Origin: a non-browser client");
    }
}
