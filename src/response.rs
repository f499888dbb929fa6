//! HTTP responses: a status, headers and a body, written into an [`OutQueue`].
//!
//! Every response the server sends is built here, so the headers every
//! response must carry (Date, Content-Length, and on pages
//! `X-Content-Type-Options` and the Content-Security-Policy) cannot be
//! forgotten by one route. The head is formatted into one owned chunk; the
//! body follows as a separate chunk, so an embedded file is never copied.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::outbuf::{Chunk, OutQueue};

/// The Content-Security-Policy of every page: our own scripts, styles,
/// images and WebSockets only, no inline code, no framing. User text can
/// then never run as script even if a page had a bug that inserted it as HTML.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// A response under construction.
#[derive(Debug)]
pub struct Response {
    status: u16,
    headers: String,
    body: Chunk,
    body_len: usize,
    /// HEAD: send the head (with the body's Content-Length) but not the body.
    head_only: bool,
    /// Adds `Connection: close`; the connection closes after sending.
    close: bool,
}

impl Response {
    /// A response with `status` and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: String::new(),
            body: Chunk::Static(b""),
            body_len: 0,
            head_only: false,
            close: false,
        }
    }

    /// A plain-text response, e.g. an error explained in one line.
    pub fn text(status: u16, text: &str) -> Response {
        let mut r = Response::new(status).header("Content-Type", "text/plain; charset=utf-8");
        r.set_body(Chunk::Owned(format!("{text}\n").into_bytes()));
        r
    }

    /// A JSON response (API, health).
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        let mut r =
            Response::new(status).header("Content-Type", "application/json").header("Cache-Control", "no-store");
        r.set_body(Chunk::Owned(body));
        r
    }

    /// Adds a header line. Names and values come from our code, never from
    /// the request, so no CR/LF can be smuggled in here.
    pub fn header(mut self, name: &str, value: &str) -> Response {
        let _ = write!(self.headers, "{name}: {value}\r\n");
        self
    }

    /// Lets a page of `origin` (a site `--allow-origin` lists) read this
    /// answer (CORS).
    pub fn cors(self, origin: Option<&str>) -> Response {
        match origin {
            Some(origin) => self.header("Access-Control-Allow-Origin", origin).header("Vary", "Origin"),
            None => self,
        }
    }

    /// Adds the security headers a page (HTML) carries.
    pub fn page_headers(self) -> Response {
        self.header("Content-Security-Policy", CSP)
            .header("X-Content-Type-Options", "nosniff")
            .header("Referrer-Policy", "same-origin")
    }

    /// Sets the body.
    pub fn set_body(&mut self, body: Chunk) {
        self.body_len = match &body {
            Chunk::Static(b) => b.len(),
            Chunk::Shared(b) => b.len(),
            Chunk::Owned(b) => b.len(),
        };
        self.body = body;
    }

    /// Sends the head only (for HEAD requests), keeping Content-Length.
    pub fn head_only(mut self, yes: bool) -> Response {
        self.head_only = yes;
        self
    }

    /// Marks the response as the connection's last.
    pub fn close(mut self, yes: bool) -> Response {
        self.close = yes;
        self
    }

    /// Whether the connection must close after this response.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// Formats the response into `out`. `date` is the cached Date value.
    pub fn write_into(self, out: &mut OutQueue, date: &str) {
        let mut head = String::with_capacity(160 + self.headers.len());
        let _ =
            write!(head, "HTTP/1.1 {} {}\r\nDate: {date}\r\nServer: chatroom\r\n", self.status, reason(self.status));
        // 1xx and 304 responses carry no body and no Content-Length of one
        // (RFC 9110 §8.6); everything else states its length so keep-alive works.
        if self.status >= 200 && self.status != 204 && self.status != 304 {
            let _ = write!(head, "Content-Length: {}\r\n", self.body_len);
        }
        head.push_str(&self.headers);
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.push(Chunk::Owned(head.into_bytes()));
        if !self.head_only && self.status != 304 && self.status >= 200 {
            out.push(self.body);
        }
    }
}

/// A whole plain-text answer, sent once as it is where no connection (or
/// no HTTP) exists to queue a [`Response`] on: a refusal at accept, plain
/// HTTP on the TLS port. It closes the connection.
pub fn closing_text(status: u16, extra_headers: &str, text: &str) -> String {
    format!(
        "HTTP/1.1 {status} {}\r\n{extra_headers}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
        reason(status),
        text.len() + 1
    )
}

/// The reason phrase of the statuses we send.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The `Date` header value, formatted at most once per second.
///
/// Formatting a date costs more than the rest of a small response; the
/// reactor asks for it once per turn and this cache answers from a string
/// until the second changes (as nginx and uWebSockets do).
#[derive(Debug, Default)]
pub struct DateCache {
    second: u64,
    text: String,
}

impl DateCache {
    /// The current `Date` value.
    pub fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let second = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_the_server_sends_has_its_reason_phrase() {
        for status in [
            101, 200, 201, 204, 304, 308, 400, 401, 403, 404, 405, 408, 409, 411, 413, 415, 422, 426, 429, 431, 500,
            503,
        ] {
            assert_ne!(reason(status), "Unknown", "{status}");
        }
    }

    #[test]
    fn head_and_body() {
        let mut out = OutQueue::new();
        let mut r = Response::new(200).header("Content-Type", "text/plain; charset=utf-8");
        r.set_body(Chunk::Static(b"hello"));
        r.write_into(&mut out, "Thu, 01 Jan 1970 00:00:00 GMT");
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\n"));
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\nhello"));
    }

    #[test]
    fn head_request_keeps_length_and_drops_body() {
        let mut out = OutQueue::new();
        let mut r = Response::new(200).head_only(true).close(true);
        r.set_body(Chunk::Static(b"hello"));
        r.write_into(&mut out, "D");
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("Content-Length: 5\r\nConnection: close\r\n\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn not_modified_has_no_body() {
        let mut out = OutQueue::new();
        let mut r = Response::new(304);
        r.set_body(Chunk::Static(b"hello"));
        r.write_into(&mut out, "D");
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(!text.contains("Content-Length"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
