//! HTTP/1.1 message framing: where one request ends and the next begins.
//!
//! A TCP read returns whatever bytes happen to have arrived: half a head, a
//! head and part of its body, three pipelined requests, or an upgrade head
//! with the client's first WebSocket frames glued behind it. A
//! [`RequestReader`] owns those bytes for one connection and cuts them into
//! whole [`Request`]s, head and body. It never sees a socket: the reactor
//! [`push`](RequestReader::push)es what a read returned, then calls
//! [`next`](RequestReader::next) until it says [`Framed::Incomplete`],
//! answering each outcome on the way. That keeps every framing rule here,
//! where it is unit-tested and fuzzed without a network.
//!
//! The rules are RFC 9112 §6.3's, for requests: a Transfer-Encoding wins over
//! a Content-Length and we do not decode chunks (411); a bad or doubled
//! Content-Length is an error (400); otherwise the body is exactly
//! Content-Length bytes, or none. Limits keep a client from making us hold
//! more than one head ([`MAX_HEAD`]) and one body (`max_body`) at a time.

use super::{Body, Head, HeadError, MAX_HEAD, body_of, parse_head};

/// What the bytes received so far amount to. Returned by
/// [`RequestReader::next`]; call it again until [`Framed::Incomplete`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    /// Not a whole request yet: read more. Not an error.
    Incomplete,
    /// The client sent `Expect: 100-continue` for a body that fits and has not
    /// started sending it: send `HTTP/1.1 100 Continue\r\n\r\n` now, then keep
    /// feeding. Returned at most once per request.
    Continue,
    /// One whole request: its head and its body (empty when it has none).
    Request(Request),
    /// These bytes cannot be served: answer `status` with `reason` and close.
    /// The reader stays refused: the bytes behind a refused head cannot be
    /// told apart from a body, so nothing after it is ever a request.
    Reject {
        /// 400, 411, 413, 417 or 431 (see [`RequestReader::next`]).
        status: u16,
        /// A short text for the answer's body.
        reason: &'static str,
    },
}

/// One whole request, as the client sent it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The parsed head; `head.len` is its length in bytes on the wire, and
    /// `head.raw` holds those bytes only if the reader was asked to keep them
    /// (see [`RequestReader::with_raw_head`]).
    pub head: Head,
    /// The body, exactly Content-Length bytes (empty without one).
    pub body: Vec<u8>,
}

/// Bytes received on one HTTP connection, cut into requests.
///
/// The input buffer is consumed from the front by moving `start`, not by
/// shifting the bytes, so answering a batch of pipelined requests costs no
/// copy per request; [`push`](Self::push) moves the unread rest to the front
/// once, before it appends.
#[derive(Debug)]
pub struct RequestReader {
    /// Bytes received; those before `start` are done with: returned in a
    /// request, or parsed into the head whose body is due.
    buf: Vec<u8>,
    /// Where the unread bytes start in `buf`.
    start: usize,
    /// What the unread bytes are: a head, a body, or nothing we will serve.
    stage: Stage,
    /// Which heads get a copy of their raw bytes in `head.raw`.
    keep_raw: fn(&Head) -> bool,
    /// Which requests' bodies are read and handed out; the others' are
    /// skipped (see [`RequestReader::with_bodies`]).
    keep_body: fn(&Head) -> bool,
}

/// Where the reader is inside the current request.
#[derive(Debug)]
enum Stage {
    /// Waiting for (the rest of) a head; also the idle state between requests.
    Head,
    /// The head is parsed; `len` body bytes are due, counted from `start`.
    Body {
        /// The head, handed out with the body once it is whole.
        head: Head,
        /// The body's length (Content-Length), already known to fit `max_body`.
        len: usize,
        /// The client waits for a 100 Continue that we have not sent yet.
        continue_due: bool,
    },
    /// The request was handed out at its head; `left` bytes of its body are
    /// still to come, and are thrown away as they arrive.
    Skip {
        /// Body bytes not arrived yet.
        left: usize,
    },
    /// A request was refused: every later call says so again.
    Rejected {
        /// The status given.
        status: u16,
        /// Its reason.
        reason: &'static str,
    },
}

/// A buffer larger than this is freed once it has been read to the end, so a
/// connection idling after a 64 KiB body does not keep 64 KiB; smaller ones
/// are kept, so a keep-alive connection does not allocate per request.
const KEEP_CAPACITY: usize = MAX_HEAD;

impl Default for RequestReader {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestReader {
    /// An empty reader, for a new connection. No head keeps its raw bytes.
    pub fn new() -> Self {
        Self::with_raw_head(|_| false)
    }

    /// An empty reader that copies a head's raw bytes into `head.raw` when
    /// `keep(&head)` says so, e.g. `|head| head.path() == "/ws/inspect"`.
    ///
    /// Why a predicate: the frame inspector shows a learner the request
    /// exactly as it arrived, and only the reader still has those bytes. But
    /// copying every head for one endpoint would cost every request an
    /// allocation, and naming that endpoint here would tie framing to
    /// routing. So the server says which heads, and only those are copied.
    pub fn with_raw_head(keep: fn(&Head) -> bool) -> Self {
        RequestReader { buf: Vec::new(), start: 0, stage: Stage::Head, keep_raw: keep, keep_body: |_| true }
    }

    /// Reads and hands out the body only of the requests `keep(&head)`
    /// names; any other request is handed out as soon as its head is in,
    /// with an empty body, and its body is thrown away as it arrives.
    ///
    /// Why: a body nobody reads should cost nothing. A server that serves
    /// GET pages holds no 64 KiB per connection for bodies it ignores, and
    /// answers at the head as a client expects; only the requests that
    /// take a body wait for it, bounded by `max_body` all the same.
    pub fn with_bodies(mut self, keep: fn(&Head) -> bool) -> Self {
        self.keep_body = keep;
        self
    }

    /// Appends what a read returned.
    ///
    /// Call [`next`](Self::next) until `Incomplete` between two pushes: that
    /// is what bounds the buffer (one head or one body, plus one push). After
    /// a `Reject` the bytes are dropped: nothing after it will be served.
    pub fn push(&mut self, bytes: &[u8]) {
        if let Stage::Rejected { .. } = self.stage {
            return;
        }
        if self.start > 0 {
            // One shift per read, for the bytes of a request not yet whole.
            self.buf.drain(..self.start.min(self.buf.len()));
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Cuts the next request off the bytes received so far.
    ///
    /// Call it until it returns [`Framed::Incomplete`]: one push can hold
    /// several pipelined requests, each returned by its own call, in order.
    ///
    /// `max_body` is the largest body accepted, in bytes; a longer
    /// Content-Length is refused (413) as soon as the head is read, before
    /// any body byte and without a 100 Continue, so the client learns early
    /// and we never hold it. The refusals, each followed by a close:
    ///
    /// - 400: a malformed head, a bad or repeated Content-Length, or a
    ///   Transfer-Encoding in an HTTP/1.0 request;
    /// - 411: any Transfer-Encoding (we need a Content-Length);
    /// - 413: a Content-Length over `max_body`;
    /// - 417: an `Expect` other than `100-continue`;
    /// - 431: a head over [`MAX_HEAD`] bytes or with too many headers.
    pub fn next(&mut self, max_body: usize) -> Framed {
        // Take the stage out (sozu's `take()` with a placeholder): each arm
        // puts back the stage it leaves the reader in.
        match std::mem::replace(&mut self.stage, Stage::Head) {
            Stage::Head => self.read_head(max_body),
            Stage::Body { head, len, continue_due } => self.read_body(head, len, continue_due),
            Stage::Skip { left } => self.skip_body(left, max_body),
            Stage::Rejected { status, reason } => self.reject(status, reason),
        }
    }

    /// Whether no unread byte is buffered: the connection is idle between
    /// requests, or waiting for a body that has not started.
    pub fn is_empty(&self) -> bool {
        self.buffered() == 0
    }

    /// How many bytes are buffered and not yet returned in a request.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// Whether a request has started arriving and is not whole yet: some of
    /// its head, or a head whose body is due (read or skipped). While this
    /// holds the request's deadline runs (the caller's header timeout); it
    /// is false when idle between requests and once refused.
    pub fn in_request(&self) -> bool {
        match self.stage {
            Stage::Head => !self.is_empty(),
            Stage::Body { .. } | Stage::Skip { .. } => true,
            Stage::Rejected { .. } => false,
        }
    }

    /// Drops every buffered byte and any request in progress, e.g. once a
    /// closing answer is queued and later pipelined requests will not be
    /// served. A refused reader stays refused.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        if let Stage::Body { .. } | Stage::Skip { .. } = self.stage {
            self.stage = Stage::Head;
        }
    }

    /// The bytes not yet returned in a request: after an upgrade request,
    /// the WebSocket frames the client sent right behind its head, which the
    /// WebSocket phase must read first. (Empty after a `Reject`.)
    pub fn into_rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.start.min(self.buf.len()));
        self.buf
    }

    /// Stage::Head: parses a head, then decides what body follows it.
    fn read_head(&mut self, max_body: usize) -> Framed {
        let unread = self.buf.get(self.start..).unwrap_or_default();
        if unread.is_empty() {
            return Framed::Incomplete;
        }
        // Show httparse at most one byte more than a head may take: enough
        // to tell a head over the limit (431), and the same verdict however
        // the bytes were cut, since a big push behind the head is never
        // scanned for an error that byte-by-byte arrival would not see first.
        let window = unread.get(..MAX_HEAD + 1).unwrap_or(unread);
        let mut head = match parse_head(window) {
            Ok(Some(head)) => head,
            // httparse's Partial within MAX_HEAD: the head has not ended yet.
            Ok(None) => return Framed::Incomplete,
            // Not HTTP: there is no way to find where a next request would start.
            Err(HeadError::Malformed) => return self.reject(400, "malformed request"),
            // Past MAX_HEAD (or too many headers): an attack or a bug, not a browser.
            Err(HeadError::TooLarge) => return self.reject(431, "request head too large (8 KiB at most)"),
        };
        if (self.keep_raw)(&head) {
            head.raw = window.get(..head.len).unwrap_or_default().to_vec();
        }
        self.start += head.len;
        let len = match body_length(&head, max_body) {
            Ok(len) => len,
            Err((status, reason)) => return self.reject(status, reason),
        };
        let continue_due = match expects_continue(&head) {
            // RFC 9110 §10.1.1: "A server that receives a 100-continue
            // expectation in an HTTP/1.0 request MUST ignore that
            // expectation." And with no body there is nothing to wait for.
            Ok(expects) => expects && len > 0 && head.minor_version >= 1,
            Err((status, reason)) => return self.reject(status, reason),
        };
        // A client waiting for 100 Continue is answered the way it asked
        // (its body read, bounded by `max_body`): answered at the head, it
        // could not tell whether to send the body or close (RFC 9110 §10.1.1
        // leaves it either), and a body arriving late would be read as the
        // next request.
        if len > 0 && !continue_due && !(self.keep_body)(&head) {
            // Answered now; its body is thrown away as it comes.
            let left = self.discard(len);
            self.stage = if left > 0 { Stage::Skip { left } } else { Stage::Head };
            return Framed::Request(Request { head, body: Vec::new() });
        }
        self.read_body(head, len, continue_due)
    }

    /// Stage::Skip: throws away what arrived of a body nobody reads, then
    /// goes on with the next request once the body is over.
    fn skip_body(&mut self, left: usize, max_body: usize) -> Framed {
        let left = self.discard(left);
        if left > 0 {
            self.stage = Stage::Skip { left };
            return Framed::Incomplete;
        }
        self.read_head(max_body)
    }

    /// Throws away up to `left` buffered bytes; how many are still to come.
    fn discard(&mut self, left: usize) -> usize {
        let taken = left.min(self.buffered());
        self.start += taken;
        self.release_if_read();
        left - taken
    }

    /// Stage::Body: hands out the request once its `len` body bytes are in.
    fn read_body(&mut self, head: Head, len: usize, continue_due: bool) -> Framed {
        let unread = self.buf.get(self.start..).unwrap_or_default();
        if let Some(body) = unread.get(..len) {
            let body = body.to_vec();
            self.start += len;
            self.release_if_read();
            return Framed::Request(Request { head, body });
        }
        // RFC 9110 §10.1.1: a server "MAY omit sending a 100 (Continue)
        // response if it has already received some or all of the content":
        // a client already sending needs no go-ahead, so it is due only while
        // no body byte is here, and once.
        let send_continue = continue_due && unread.is_empty();
        self.stage = Stage::Body { head, len, continue_due: false };
        if send_continue { Framed::Continue } else { Framed::Incomplete }
    }

    /// Refuses for good: drops the bytes and remembers the answer.
    fn reject(&mut self, status: u16, reason: &'static str) -> Framed {
        self.buf = Vec::new();
        self.start = 0;
        self.stage = Stage::Rejected { status, reason };
        Framed::Reject { status, reason }
    }

    /// Everything buffered has been returned: start over at the front, and
    /// give a large buffer's memory back while the connection idles.
    fn release_if_read(&mut self) {
        if self.start < self.buf.len() {
            return;
        }
        self.start = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

/// The body length that follows `head`, or the refusal (status, reason).
///
/// RFC 9112 §6.3, for requests, in its order:
///
/// 3. "If a message is received with both a Transfer-Encoding and a
///    Content-Length header field, the Transfer-Encoding overrides the
///    Content-Length. Such a message might indicate an attempt to perform
///    request smuggling [...] and ought to be handled as an error."
///    We decode no transfer coding at all, so any Transfer-Encoding is
///    refused, Content-Length or not: 411 (Length Required), which RFC 9112
///    §6.1 allows ("A server MAY reject a request that contains a message
///    body but not a Content-Length by responding with 411").
/// 5. "If a message is received without Transfer-Encoding and with an
///    invalid Content-Length header field, then the message framing is
///    invalid [...] the server MUST respond with a 400 (Bad Request) status
///    code and then close the connection." Two Content-Length lines count as
///    invalid here (RFC 9110 §8.6 lets a recipient reject them).
/// 6. "If a valid Content-Length header field is present without
///    Transfer-Encoding, its decimal value defines the expected message body
///    length in octets."
/// 7. "If this is a request message and none of the above are true, then
///    the message body length is zero."
fn body_length(head: &Head, max_body: usize) -> Result<usize, (u16, &'static str)> {
    if head.header("transfer-encoding").is_some() {
        // RFC 9112 §6.1: "A server or client that receives an HTTP/1.0
        // message containing a Transfer-Encoding header field MUST treat the
        // message as if the framing is faulty".
        if head.minor_version == 0 {
            return Err((400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        return Err((411, "Transfer-Encoding is not supported: send a Content-Length"));
    }
    match body_of(head) {
        Body::None => Ok(0),
        Body::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= max_body => Ok(n),
            // Decided from the header alone: no body byte is read for nothing.
            _ => Err((413, "request body too large")),
        },
        Body::Unsupported => Err((400, "bad Content-Length")),
    }
}

/// Whether `head` expects a 100 Continue, or the refusal for an expectation
/// we cannot meet.
///
/// RFC 9110 §10.1.1: "The only expectation defined by this specification is
/// '100-continue'", compared case-insensitively, and "A server that receives
/// an Expect field value containing a member other than 100-continue MAY
/// respond with a 417 (Expectation Failed) status code". Expect is a list
/// (`Expect = #expectation`), possibly over several lines, whose empty
/// members a recipient must accept and skip (RFC 9110 §5.6.1).
fn expects_continue(head: &Head) -> Result<bool, (u16, &'static str)> {
    let mut expects = false;
    for (_, value) in head.headers.iter().filter(|(name, _)| name == "expect") {
        for member in value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|m| !m.is_empty()) {
            if !member.eq_ignore_ascii_case(b"100-continue") {
                return Err((417, "only Expect: 100-continue is supported"));
            }
            expects = true;
        }
    }
    Ok(expects)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit small enough to test 413 with short bodies.
    const LIMIT: usize = 16;

    /// Feeds `pieces` one push at a time and collects every outcome but
    /// `Incomplete`, checking the buffer bound after each round.
    fn frame(reader: &mut RequestReader, pieces: &[&[u8]], max_body: usize) -> Vec<Framed> {
        let mut out = Vec::new();
        for piece in pieces {
            reader.push(piece);
            loop {
                match reader.next(max_body) {
                    Framed::Incomplete => break,
                    framed @ Framed::Reject { .. } => {
                        out.push(framed);
                        break;
                    }
                    framed => out.push(framed),
                }
            }
            assert!(reader.buffered() <= MAX_HEAD.max(max_body), "buffer of {} kept", reader.buffered());
        }
        out
    }

    /// All of `bytes` in one push.
    fn frame_all(bytes: &[u8]) -> Vec<Framed> {
        frame(&mut RequestReader::new(), &[bytes], LIMIT)
    }

    /// The target of a `Framed::Request`, and its body as text (for tables).
    fn summary(framed: &Framed) -> String {
        match framed {
            Framed::Incomplete => "incomplete".into(),
            Framed::Continue => "continue".into(),
            Framed::Request(r) => format!("{} {}", r.head.target, String::from_utf8_lossy(&r.body)),
            Framed::Reject { status, .. } => status.to_string(),
        }
    }

    /// Table-driven, like httparse's `req!` tests: `bytes in one push =>
    /// outcomes`, each outcome summarised as "target body", "continue" or a
    /// refusal's status.
    macro_rules! framing {
        ($($name:ident: $bytes:expr => [$($want:expr),* $(,)?];)*) => {$(
            #[test]
            fn $name() {
                let got: Vec<String> = frame_all($bytes).iter().map(summary).collect();
                let want: Vec<&str> = vec![$($want),*];
                assert_eq!(got, want);
            }
        )*};
    }

    framing! {
        get_without_body: b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n" => ["/a "];
        get_with_small_body_stays_aligned:
            b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /GET /b HTTP/1.1\r\n\r\n" => ["/a GET /", "/b "];
        pipelined_three:
            b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz"
            => ["/a ", "/b ", "/c xyz"];
        content_length_zero: b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /b HTTP/1.1\r\n\r\n" => ["/a ", "/b "];
        body_at_the_limit: b"POST /a HTTP/1.1\r\nContent-Length: 16\r\n\r\n0123456789abcdef" => ["/a 0123456789abcdef"];
        body_over_the_limit_is_413: b"POST /a HTTP/1.1\r\nContent-Length: 17\r\n\r\n0123456789abcdefg" => ["413"];
        huge_content_length_is_413: b"POST /a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n" => ["413"];
        chunked_is_411: b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n" => ["411"];
        any_transfer_encoding_is_411: b"GET /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n" => ["411"];
        transfer_encoding_wins_over_content_length:
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nxyz" => ["411"];
        transfer_encoding_in_http_1_0_is_400: b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" => ["400"];
        two_content_lengths_are_400:
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nxyzw" => ["400"];
        same_content_length_twice_is_400:
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nxyz" => ["400"];
        unparseable_content_length_is_400: b"POST /a HTTP/1.1\r\nContent-Length: abc\r\n\r\n" => ["400"];
        signed_content_length_is_400: b"POST /a HTTP/1.1\r\nContent-Length: +3\r\n\r\nxyz" => ["400"];
        negative_content_length_is_400: b"POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n" => ["400"];
        malformed_head_is_400: b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n" => ["400"];
        binary_is_400: b"\x00\x01\x02 / HTTP/1.1\r\n\r\n" => ["400"];
        nothing_after_a_refusal: b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nGET /b HTTP/1.1\r\n\r\n" => ["411"];
        served_then_refused: b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nX\r\n\r\nGET /c HTTP/1.1\r\n\r\n" => ["/a ", "400"];
        other_expectation_is_417: b"POST /a HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n" => ["417"];
        expectation_list_with_another_is_417:
            b"POST /a HTTP/1.1\r\nExpect: 100-continue, x\r\nContent-Length: 3\r\n\r\n" => ["417"];
        expect_without_body_gets_no_continue: b"GET /a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n" => ["/a "];
        expect_with_body_there_gets_no_continue:
            b"POST /a HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\nxyz" => ["/a xyz"];
        expect_with_body_due_gets_continue:
            b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n" => ["continue"];
        empty_expect_is_no_expectation: b"POST /a HTTP/1.1\r\nExpect:\r\nContent-Length: 3\r\n\r\n" => [];
        expect_in_http_1_0_is_ignored: b"POST /a HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n" => [];
        expect_over_the_limit_is_413_not_continue:
            b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 17\r\n\r\n" => ["413"];
        partial_head_is_incomplete: b"GET /a HTTP/1.1\r\nHost: h\r\n" => [];
        empty_input: b"" => [];
    }

    #[test]
    fn head_split_byte_by_byte() {
        let bytes = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\n\r\n";
        let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
        let mut reader = RequestReader::new();
        let got = frame(&mut reader, &pieces, LIMIT);
        assert_eq!(got, frame_all(bytes));
        assert_eq!(got.iter().map(summary).collect::<Vec<_>>(), ["/a?x=1 hi", "/b "]);
        let Some(Framed::Request(first)) = got.first() else { panic!("{got:?}") };
        assert_eq!(first.head.len, bytes.len() - 2 - "GET /b HTTP/1.1\r\n\r\n".len());
        assert_eq!(first.head.header_str("host"), Some("h"));
        assert!(reader.is_empty() && !reader.in_request());
    }

    #[test]
    fn every_cut_gives_the_same_requests() {
        let bytes: &[u8] =
            b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET /c HTTP/1.1\r\n\r\n";
        let whole = frame_all(bytes);
        assert_eq!(whole.len(), 3);
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(frame(&mut RequestReader::new(), &[a, b], LIMIT), whole, "cut at {cut}");
        }
    }

    #[test]
    fn body_split_in_pieces() {
        let mut reader = RequestReader::new();
        reader.push(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n01");
        assert_eq!(reader.next(LIMIT), Framed::Incomplete);
        assert!(reader.in_request());
        for piece in [&b"234"[..], b"", b"5", b"67"] {
            reader.push(piece);
            assert_eq!(reader.next(LIMIT), Framed::Incomplete);
        }
        reader.push(b"89GET /b");
        let Framed::Request(request) = reader.next(LIMIT) else { panic!("no request") };
        assert_eq!(request.body, b"0123456789");
        assert_eq!(request.head.target, "/a");
        assert_eq!(reader.next(LIMIT), Framed::Incomplete);
        assert_eq!(reader.buffered(), b"GET /b".len());
    }

    #[test]
    fn continue_once_then_the_body() {
        let mut reader = RequestReader::new();
        reader.push(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(reader.next(LIMIT), Framed::Continue);
        assert_eq!(reader.next(LIMIT), Framed::Incomplete, "100 Continue asked for twice");
        reader.push(b"he");
        assert_eq!(reader.next(LIMIT), Framed::Incomplete);
        reader.push(b"llo");
        let Framed::Request(request) = reader.next(LIMIT) else { panic!("no request") };
        assert_eq!(request.body, b"hello");
        // The next request gets its own 100 Continue.
        reader.push(b"POST /b HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(reader.next(LIMIT), Framed::Continue);
    }

    #[test]
    fn no_continue_once_the_body_has_started() {
        let mut reader = RequestReader::new();
        reader.push(b"POST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nh");
        assert_eq!(reader.next(LIMIT), Framed::Incomplete);
        reader.push(b"ello");
        assert!(matches!(reader.next(LIMIT), Framed::Request(_)));
    }

    #[test]
    fn too_large_body_is_refused_before_it_arrives() {
        let mut reader = RequestReader::new();
        // Only the head: the verdict cannot wait for a body we will not read.
        reader.push(b"POST /a HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n");
        assert_eq!(reader.next(LIMIT), Framed::Reject { status: 413, reason: "request body too large" });
        // Refused for good: the body that follows is dropped, not buffered.
        reader.push(&[b'x'; 4096]);
        assert!(reader.is_empty());
        assert!(matches!(reader.next(LIMIT), Framed::Reject { status: 413, .. }));
        assert!(!reader.in_request());
    }

    #[test]
    fn oversized_heads_are_431() {
        // A head that never ends, fed in pieces: refused once past MAX_HEAD.
        let mut reader = RequestReader::new();
        reader.push(b"GET / HTTP/1.1\r\nX-Pad: ");
        let mut got = Framed::Incomplete;
        for _ in 0..MAX_HEAD {
            reader.push(b"aaaa");
            got = reader.next(LIMIT);
            if got != Framed::Incomplete {
                break;
            }
            assert!(reader.buffered() <= MAX_HEAD);
        }
        assert!(matches!(got, Framed::Reject { status: 431, .. }), "{got:?}");
        // A complete head over the limit, in one push.
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_HEAD + 100, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(frame_all(&big).iter().map(summary).collect::<Vec<_>>(), ["431"]);
        // Too many headers.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(frame_all(&many).iter().map(summary).collect::<Vec<_>>(), ["431"]);
        // Just under the limit is served, even with a big body pipelined behind.
        let mut fits = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        fits.resize(MAX_HEAD - 4, b'a');
        fits.extend_from_slice(b"\r\n\r\n");
        let head_len = fits.len();
        fits.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let got = frame_all(&fits);
        assert_eq!(got.len(), 2, "{:?}", got.iter().map(summary).collect::<Vec<_>>());
        assert!(matches!(got.first(), Some(Framed::Request(r)) if r.head.len == head_len));
    }

    #[test]
    fn into_rest_after_an_upgrade_head() {
        let mut reader = RequestReader::new();
        let head = b"GET /ws/echo HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let frames = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        reader.push(&[&head[..], &frames[..4]].concat());
        let Framed::Request(request) = reader.next(LIMIT) else { panic!("no request") };
        assert_eq!(request.head.len, head.len());
        // The server would now stop reading requests and switch phase.
        reader.push(&frames[4..]);
        assert_eq!(reader.into_rest(), frames);
    }

    #[test]
    fn in_request_follows_the_request() {
        let mut reader = RequestReader::new();
        assert!(!reader.in_request() && reader.is_empty());
        reader.push(b"GET");
        assert_eq!(reader.next(LIMIT), Framed::Incomplete);
        assert!(reader.in_request(), "a head has started");
        reader.push(b" / HTTP/1.1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(reader.next(LIMIT), Framed::Incomplete);
        assert!(reader.in_request() && reader.is_empty(), "the body is due");
        reader.push(b"ok");
        assert!(matches!(reader.next(LIMIT), Framed::Request(_)));
        assert!(!reader.in_request() && reader.is_empty(), "idle between requests");
        reader.push(b"GET /b HTTP/1.1\r\n\r\nGE");
        assert!(matches!(reader.next(LIMIT), Framed::Request(_)));
        assert!(reader.in_request(), "the next head has started");
        reader.clear();
        assert!(!reader.in_request() && reader.is_empty());
    }

    #[test]
    fn a_body_nobody_reads_is_answered_at_its_head_and_skipped() {
        let path = |f: &Framed| match f {
            Framed::Request(r) => format!("{} {}", r.head.path(), String::from_utf8_lossy(&r.body)),
            other => format!("{other:?}"),
        };
        let mut reader = RequestReader::new().with_bodies(|head| head.path() == "/keep");
        reader.push(b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe");
        assert_eq!(path(&reader.next(LIMIT)), "/a ", "handed out at the head");
        assert_eq!(reader.next(LIMIT), Framed::Incomplete);
        assert!(reader.in_request() && reader.is_empty(), "its body is still due");
        reader.push(b"lloGET /keep HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET /b HTTP/1.1\r\n\r\n");
        assert_eq!(path(&reader.next(LIMIT)), "/keep ok");
        assert_eq!(path(&reader.next(LIMIT)), "/b ");
        assert!(!reader.in_request() && reader.is_empty());
        // A client that waits for 100 Continue gets it, and its body is read.
        reader.push(b"GET /d HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
        assert_eq!(reader.next(LIMIT), Framed::Continue);
        reader.push(b"hi");
        assert_eq!(path(&reader.next(LIMIT)), "/d hi");
        // The limit still holds for a skipped body: refused before it comes.
        reader.push(b"GET /c HTTP/1.1\r\nContent-Length: 17\r\n\r\n");
        assert!(matches!(reader.next(LIMIT), Framed::Reject { status: 413, .. }));
        // Every cut of the same bytes gives the same requests.
        let bytes = b"GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /b HTTP/1.1\r\n\r\n";
        for cut in 0..=bytes.len() {
            let mut reader = RequestReader::new().with_bodies(|_| false);
            let mut got = Vec::new();
            for piece in [&bytes[..cut], &bytes[cut..]] {
                reader.push(piece);
                loop {
                    match reader.next(LIMIT) {
                        Framed::Incomplete => break,
                        other => got.push(path(&other)),
                    }
                }
            }
            assert_eq!(got, ["/a ", "/b "], "cut at {cut}");
        }
    }

    #[test]
    fn raw_head_only_where_asked() {
        let bytes = b"GET /ws/inspect HTTP/1.1\r\nHost: h\r\n\r\nGET /other HTTP/1.1\r\n\r\n";
        let mut reader = RequestReader::with_raw_head(|head| head.path() == "/ws/inspect");
        reader.push(bytes);
        let Framed::Request(inspect) = reader.next(LIMIT) else { panic!("no request") };
        assert_eq!(inspect.head.raw, b"GET /ws/inspect HTTP/1.1\r\nHost: h\r\n\r\n");
        let Framed::Request(other) = reader.next(LIMIT) else { panic!("no request") };
        assert!(other.head.raw.is_empty());
        // The default keeps none.
        let Some(Framed::Request(plain)) = frame_all(bytes).into_iter().next() else { panic!("no request") };
        assert!(plain.head.raw.is_empty());
    }

    #[test]
    fn a_big_body_does_not_stay_allocated() {
        let mut reader = RequestReader::new();
        let body = vec![b'x'; 60 * 1024];
        reader.push(b"POST / HTTP/1.1\r\nContent-Length: 61440\r\n\r\n");
        reader.push(&body);
        let Framed::Request(request) = reader.next(64 * 1024) else { panic!("no request") };
        assert_eq!(request.body, body);
        assert!(reader.buf.capacity() <= KEEP_CAPACITY);
    }
}
