//! Fuzz target: a request head, from the first byte a client sends to the
//! file or endpoint it names.
//!
//! Runs everything the server does with a head before it touches a socket or
//! the storage thread: `http::parse_head`, `http::body_of`, `route::endpoint`,
//! `site::page_for`, `site::safe_relative_path` (and the embedded-site
//! lookup behind it) and `route::query_value` for the two keys the chat
//! endpoint reads. None of them may panic on any bytes.
//!
//! The invariant that matters most is the traversal guard: whatever
//! `safe_relative_path` lets through is joined to the `--www` folder, so it
//! must hold no `..` segment (nor `.`, nor any segment starting with a dot,
//! nor an empty one), no backslash, no `%` (nothing is decoded later), no NUL
//! and no leading `/`. (A `..` inside a name, as in `a..b.css`, is only a
//! name, and may pass.)
//!
//! Then the same bytes go through `http::RequestReader`, as a connection's
//! reads would: once in one push, once cut into pieces whose sizes come from
//! the first byte (which also picks the body limit). TCP may cut a stream
//! anywhere, so both must give the same requests and refusals; no request
//! may carry a body over the limit or other than its Content-Length; the
//! buffer never holds more than one head or one body (plus one push); a
//! 100 Continue comes at most once per request and is never followed by a
//! refusal; and every byte is accounted for (heads + bodies + the rest).
#![no_main]

use chatroom::http::{self, Body, Framed, Head, MAX_HEAD, RequestReader};
use chatroom::route::{self, Endpoint};
use chatroom::site::{self, Site};
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// The embedded site, built once: `Site::embedded()` hashes every file.
    /// (Thread-local because its chunks are `Rc`s; libFuzzer runs one thread.)
    static SITE: Site = Site::embedded();
}

fuzz_target!(|data: &[u8]| {
    check_head(data);
    check_framing(data);
});

/// Everything done with a head before routing, and routing itself.
fn check_head(data: &[u8]) {
    let head = match http::parse_head(data) {
        Ok(Some(head)) => head,
        // Partial: only possible while the buffer still fits in MAX_HEAD;
        // past that the parser must say TooLarge instead.
        Ok(None) => {
            assert!(data.len() <= MAX_HEAD, "partial head of {} bytes not refused", data.len());
            return;
        }
        Err(_) => return,
    };
    assert!(head.len <= data.len(), "head.len {} beyond the {} bytes given", head.len, data.len());
    assert!(head.len <= MAX_HEAD, "accepted a head of {} bytes", head.len);
    assert!(
        head.headers.iter().all(|(n, _)| !n.bytes().any(|b| b.is_ascii_uppercase())),
        "header names not lowercased"
    );

    match http::body_of(&head) {
        Body::None | Body::Unsupported => {}
        Body::Length(n) => assert!(n > 0, "Content-Length: 0 must be Body::None"),
    }
    let _ = head.keep_alive();

    let path = head.path();
    let query = head.query();
    assert!(!path.contains('?'), "path {path:?} still holds the query");

    if let Ok(Endpoint::Room(name)) = route::endpoint(path) {
        assert!(route::valid_room_name(&name), "endpoint accepted room name {name:?}");
    }

    if let Some(page) = site::page_for(path) {
        assert!(page.ends_with(".html"), "page_for({path:?}) = {page:?}");
    }

    if let Ok(rel) = site::safe_relative_path(path) {
        // `..` as a segment is traversal; inside a name (`a..b.css`) it is
        // just a name. No segment may start with a dot at all (hidden files).
        for segment in rel.split('/') {
            assert!(!segment.is_empty(), "safe_relative_path({path:?}) = {rel:?} has an empty segment");
            assert!(!segment.starts_with('.'), "safe_relative_path({path:?}) = {rel:?} has a dot segment");
        }
        assert!(!rel.contains('\\'), "safe_relative_path({path:?}) = {rel:?} has a backslash");
        assert!(!rel.contains('%'), "safe_relative_path({path:?}) = {rel:?} has a %");
        assert!(!rel.contains('\0'), "safe_relative_path({path:?}) = {rel:?} has a NUL");
        assert!(!rel.starts_with('/'), "safe_relative_path({path:?}) = {rel:?} is absolute");
        assert!(!rel.is_empty(), "safe_relative_path({path:?}) is empty");
        SITE.with(|site| {
            let _ = site.file(rel);
        });
    }

    for key in ["username", "since"] {
        if let Some(value) = route::query_value(query, key) {
            // Decoding never makes a value longer than its encoded form.
            assert!(value.len() <= query.len(), "query_value({query:?}, {key:?}) = {value:?} grew");
        }
    }
}

/// Body limits the framing check uses, picked by the first byte's low two
/// bits: none at all, tiny (so 413 and split bodies are cheap to reach),
/// and two that fit most inputs.
const BODY_LIMITS: [usize; 4] = [0, 7, 300, 64 * 1024];

/// What a reader made of some bytes: its requests and refusals in order
/// (not `Incomplete`, and not `Continue`, which depends on the cut), then
/// what it still held.
#[derive(Debug, PartialEq)]
struct Framing {
    outcomes: Vec<Framed>,
    in_request: bool,
    rest: Vec<u8>,
}

/// Feeds `data` to a `RequestReader` in `pieces`, checking the invariants
/// that hold for any cut.
fn frame<'a>(data: &[u8], pieces: impl Iterator<Item = &'a [u8]>, max_body: usize, keep_raw: bool) -> Framing {
    let mut reader = if keep_raw { RequestReader::with_raw_head(|_| true) } else { RequestReader::new() };
    let bound = MAX_HEAD.max(max_body);
    let mut outcomes = Vec::new();
    let mut continued = false;
    let mut used = 0;
    for piece in pieces {
        if matches!(outcomes.last(), Some(Framed::Reject { .. })) {
            // The server answers a refusal and closes: nothing more is read.
            break;
        }
        reader.push(piece);
        assert!(reader.buffered() <= bound + piece.len(), "{} bytes buffered", reader.buffered());
        loop {
            match reader.next(max_body) {
                Framed::Incomplete => break,
                Framed::Continue => {
                    assert!(!continued, "two 100 Continues for one request");
                    continued = true;
                }
                Framed::Request(mut request) => {
                    continued = false;
                    check_request(&request, max_body, keep_raw);
                    used += request.head.len + request.body.len();
                    request.head.raw = Vec::new();
                    outcomes.push(Framed::Request(request));
                }
                reject @ Framed::Reject { .. } => {
                    assert!(!continued, "refused after a 100 Continue: {reject:?}");
                    assert!(reader.is_empty() && !reader.in_request(), "a refused reader holds bytes");
                    outcomes.push(reject);
                    break;
                }
            }
        }
        assert!(reader.buffered() <= bound, "{} bytes buffered after Incomplete", reader.buffered());
    }
    let in_request = reader.in_request();
    let refused = matches!(outcomes.last(), Some(Framed::Reject { .. }));
    let rest = reader.into_rest();
    if !refused {
        // Every byte is in a request handed out or in the rest, except the
        // head of a request whose body is still due (the reader keeps it
        // parsed, not as bytes): then the gap is exactly one whole head.
        let unreturned = data.get(used..).unwrap_or_else(|| panic!("{used} bytes returned of {}", data.len()));
        assert!(unreturned.ends_with(&rest), "the rest is not the input's tail");
        let gap = unreturned.len() - rest.len();
        if gap > 0 {
            let head = http::parse_head(unreturned).ok().flatten();
            assert_eq!(head.map(|h| h.len), Some(gap), "{gap} bytes lost: not a head whose body is due");
            assert!(in_request, "a body is due, yet not in a request");
        }
    }
    Framing { outcomes, in_request, rest }
}

/// One request as the reader handed it out.
fn check_request(request: &http::Request, max_body: usize, keep_raw: bool) {
    let head = &request.head;
    assert!(request.body.len() <= max_body, "a body of {} bytes passed the {max_body}-byte limit", request.body.len());
    assert!(head.len > 0 && head.len <= MAX_HEAD, "head of {} bytes", head.len);
    let length = match http::body_of(head) {
        Body::None => 0,
        Body::Length(n) => n,
        Body::Unsupported => panic!("served a request whose framing is refused"),
    };
    assert_eq!(request.body.len() as u64, length, "the body is not Content-Length bytes");
    assert!(head.header("transfer-encoding").is_none(), "served a Transfer-Encoding");
    if keep_raw {
        // The raw bytes are exactly the head: parsed again, the same head.
        assert_eq!(head.raw.len(), head.len, "raw head of the wrong length");
        let again = http::parse_head(&head.raw).ok().flatten().map(|h| Head { raw: head.raw.clone(), ..h });
        assert_eq!(again.as_ref(), Some(head), "the raw head parses differently");
    } else {
        assert!(head.raw.is_empty(), "raw head kept unasked");
    }
}

/// The same bytes framed whole and cut, which must agree.
fn check_framing(data: &[u8]) {
    let Some(&first) = data.first() else { return };
    let max_body = BODY_LIMITS.get(usize::from(first & 3)).copied().unwrap_or(0);
    // Pieces alternate between 1–8 bytes and 1–680 bytes: byte by byte when
    // both are 1, heads cut inside a line, bodies cut anywhere.
    let small = 1 + usize::from((first >> 2) & 7);
    let large = 1 + usize::from(first >> 5) * 97;
    let mut pieces = Vec::new();
    let mut rest = data;
    for size in [small, large].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    let whole = frame(data, std::iter::once(data), max_body, false);
    let cut = frame(data, pieces.into_iter(), max_body, true);
    assert_eq!(whole, cut, "cutting the stream changed what it means");
}
