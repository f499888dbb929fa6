//! HTTP/1.1 request heads: parsing, with the limits a public server needs.
//!
//! This is the first thing a new connection's bytes meet. [`parse_head`] runs
//! `httparse` over the connection's input buffer and copies out only what the
//! rest of the server uses: method, target, version and the headers it reads.
//! It never sees a socket: "not enough bytes yet" is `Ok(None)`, just as in
//! mini-redis's `parse_frame`, and the reactor calls it again when more
//! arrive.
//!
//! httparse is a push parser over a buffer we own, which is why it can be
//! fast; its docs warn that retrying `Partial` forever lets a client hold us
//! with a never-ending head, so the caller caps the head at [`MAX_HEAD`]
//! bytes (431) and a deadline (`--header-timeout`, 408).
//!
//! What comes after a head (a body, the next pipelined request, the first
//! WebSocket frames) is [`framing`]'s business: its [`RequestReader`] is fed
//! the bytes a connection reads and cuts them into whole requests.

pub mod framing;

pub use framing::{Framed, Request, RequestReader};

/// Largest request head we accept, in bytes: browsers send 1–2 KiB, and a
/// head beyond 8 KiB is an attack or a bug (answered with 431).
pub const MAX_HEAD: usize = 8 * 1024;

/// Headers we parse at most. httparse needs a fixed array; 64 is more than
/// any browser sends. More headers is answered like a too-large head.
const MAX_HEADERS: usize = 64;

/// The request method, reduced to what we serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET: the only method for pages and upgrades.
    Get,
    /// HEAD: GET without the body.
    Head,
    /// POST: the server API's writes (a JSON body).
    Post,
    /// DELETE: the server API's removals.
    Delete,
    /// OPTIONS: a browser's CORS preflight.
    Options,
    /// Anything else (answered with 405).
    Other,
}

/// A parsed request head, owning copies of the parts we use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// GET, HEAD or other.
    pub method: Option<Method>,
    /// The request target exactly as sent, e.g. `/room/welcome?x=1`.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Headers in order, names lowercased. Values are bytes: they need not be UTF-8.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes the head took in the buffer (the body or next request starts here).
    pub len: usize,
    /// The head's raw bytes, kept only where someone wants to see them (the
    /// frame inspector shows a learner the request exactly as received).
    pub raw: Vec<u8>,
}

/// Why a head was refused before routing. Each maps to one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Syntax error (400).
    Malformed,
    /// Head larger than [`MAX_HEAD`] or too many headers (431).
    TooLarge,
}

impl Head {
    /// The first value of header `name` (lowercase), as bytes.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name` as text, if it is UTF-8.
    pub(crate) fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok()).map(str::trim)
    }

    /// Every value of header `name` that is text, in order (a list may be
    /// split over several lines).
    pub(crate) fn header_strs<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).filter_map(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// How many times header `name` appears (a request with two
    /// Content-Length headers is refused: RFC 9112 §6.3).
    pub(crate) fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    /// Whether comma-separated header `name` contains `token`, compared
    /// case-insensitively (`Connection: keep-alive, Upgrade` has `upgrade`).
    /// Every occurrence of the header counts, as RFC 9110 §5.3 allows a list
    /// to be split over several lines.
    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .any(|(_, v)| v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes())))
    }

    /// Whether the connection stays open after the response: HTTP/1.1
    /// defaults to keep-alive, HTTP/1.0 to close (RFC 9112 §9.3).
    pub fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        self.minor_version >= 1 || self.has_token("connection", "keep-alive")
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query part of the target (after `?`), or "".
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}

/// What follows a head: nothing, or a body the caller must skip or refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body: the next byte starts the next request.
    None,
    /// `Content-Length: n`: n bytes of body follow.
    Length(u64),
    /// `Transfer-Encoding: chunked` (or an unparseable length): we refuse it
    /// (400 and close) instead of decoding chunks we would throw away.
    /// ([`RequestReader`] tells the two apart: 411 and 400.)
    Unsupported,
}

/// Parses one request head at the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet (httparse's `Partial`): read
/// more. The caller checks [`MAX_HEAD`] itself, because it knows whether more
/// bytes can still arrive.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        // Partial: the head has not ended yet. Not an error; wait for more.
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        Some("DELETE") => Method::Delete,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("").to_string();
    let head = Head {
        method: Some(method),
        target,
        minor_version: req.version.unwrap_or(1),
        headers: req.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec())).collect(),
        len,
        raw: Vec::new(),
    };
    Ok(Some(head))
}

/// Decides what body follows `head` (RFC 9112 §6.3: Transfer-Encoding wins
/// over Content-Length, and two different lengths are an error).
pub fn body_of(head: &Head) -> Body {
    if head.header("transfer-encoding").is_some() {
        return Body::Unsupported;
    }
    match head.header_count("content-length") {
        0 => Body::None,
        1 => match head.header_str("content-length").map(content_length) {
            Some(Some(0)) => Body::None,
            Some(Some(n)) => Body::Length(n),
            Some(None) | None => Body::Unsupported,
        },
        _ => Body::Unsupported,
    }
}

/// Reads a Content-Length value: `Content-Length = 1*DIGIT` (RFC 9110 §8.6).
///
/// Only digits: Rust's `u64::from_str` would also take `+5`, which a proxy in
/// front of us might read differently (the start of request smuggling). A
/// length too long for a u64 is a real length, just a huge one: RFC 9110
/// §8.6 asks recipients to "anticipate potentially large decimal numerals and
/// prevent parsing errors due to integer conversion overflows", so it becomes
/// `u64::MAX`, which every body limit refuses (413, not 400).
fn content_length(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Table-driven, in the style of httparse's own `req!` tests.
    macro_rules! head {
        ($bytes:expr) => {
            parse_head($bytes).expect("parse error").expect("partial")
        };
    }

    #[test]
    fn simple_get() {
        let h = head!(b"GET /room/x?a=1 HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, Upgrade\r\n\r\nrest");
        assert_eq!(h.method, Some(Method::Get));
        assert_eq!(h.path(), "/room/x");
        assert_eq!(h.query(), "a=1");
        assert_eq!(h.len, 70);
        assert!(h.has_token("connection", "upgrade"));
        assert!(h.keep_alive());
        assert_eq!(h.header_str("host"), Some("h"));
    }

    #[test]
    fn partial_and_errors() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost:").unwrap().is_none());
        assert!(parse_head(b"").unwrap().is_none());
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").unwrap_err(), HeadError::Malformed);
        assert_eq!(parse_head(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n").unwrap_err(), HeadError::Malformed);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_head(&big).unwrap_err(), HeadError::TooLarge);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..70 {
            many.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!head!(b"GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(head!(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
        assert!(!head!(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
    }

    #[test]
    fn bodies() {
        assert_eq!(body_of(&head!(b"GET / HTTP/1.1\r\n\r\n")), Body::None);
        assert_eq!(body_of(&head!(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")), Body::Length(5));
        assert_eq!(body_of(&head!(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")), Body::None);
        assert_eq!(body_of(&head!(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")), Body::Unsupported);
        assert_eq!(
            body_of(&head!(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")),
            Body::Unsupported
        );
        assert_eq!(body_of(&head!(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")), Body::Unsupported);
    }

    #[test]
    fn content_length_values() {
        for (value, want) in [
            ("0", Some(0)),
            ("5", Some(5)),
            ("007", Some(7)),
            ("18446744073709551615", Some(u64::MAX)),
            // Longer than a u64: huge, not malformed (refused as too large).
            ("99999999999999999999999", Some(u64::MAX)),
            ("", None),
            ("+5", None),
            ("-1", None),
            ("5 5", None),
            ("5, 5", None),
            ("0x10", None),
        ] {
            assert_eq!(content_length(value), want, "{value:?}");
        }
    }
}
