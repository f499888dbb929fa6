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
#![no_main]

use chatroom::http::{self, Body, MAX_HEAD};
use chatroom::route::{self, Endpoint};
use chatroom::site::{self, Site};
use libfuzzer_sys::fuzz_target;

thread_local! {
    /// The embedded site, built once: `Site::embedded()` hashes every file.
    /// (Thread-local because its chunks are `Rc`s; libFuzzer runs one thread.)
    static SITE: Site = Site::embedded();
}

fuzz_target!(|data: &[u8]| {
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
    assert!(head.headers.iter().all(|(n, _)| !n.bytes().any(|b| b.is_ascii_uppercase())), "header names not lowercased");

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
});
