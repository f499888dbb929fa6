//! What the HTTP side costs per request: `http/parse_head`, `http/framing`,
//! `http/handshake` and `frame/text`.
//!
//! - `parse_head`: [`chatroom::http::parse_head`] on a typical browser GET
//!   (about 500 bytes of headers) and on a WebSocket upgrade request: the
//!   work every request does before routing.
//! - `framing`: a [`chatroom::http::RequestReader`] cutting a pipelined batch
//!   of 16 browser GETs, every fourth with a 1 KiB body, out of one push:
//!   head parsing plus everything framing adds (Content-Length, bodies, the
//!   buffer's bookkeeping).
//! - `handshake`: parsing an upgrade head, then
//!   [`chatroom::handshake::validate`] (token checks, key decoding, SHA-1 of
//!   the accept key, Origin) and [`chatroom::handshake::response_101`].
//! - `frame/text`: encoding one server text frame, [`chatroom::frame::text`],
//!   for a chat-sized payload (100 B) and a large one (16 KiB, 4-byte header).
//! - `auth/verify`: checking a signed-in user's token at the chat
//!   handshake ([`chatroom::auth::Auth::verify`]): HS256 (`--auth-secret`),
//!   ES256 and EdDSA (`--auth-public-key`), each a token of typical claims.
//!
//! Throughput is the input's size in bytes, so criterion prints bytes per
//! second; the time per iteration is the cost of one request or frame.
//!
//! Run with `cargo bench --bench http` (add `-- --quick` for a rough pass).

use std::hint::black_box;

use chatroom::handshake::{response_101, validate};
use chatroom::http::{Framed, RequestReader, parse_head};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A page load as a current desktop browser sends it.
const BROWSER_GET: &[u8] = b"GET /room/welcome HTTP/1.1\r\n\
Host: chat.example.org\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-GB,en;q=0.7,fr;q=0.3\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: https://chat.example.org/room/\r\n\
Connection: keep-alive\r\n\
Cookie: theme=dark; lang=en\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\
Priority: u=0, i\r\n\
If-None-Match: \"8d2c6f1a4b3e9f70\"\r\n\
\r\n";

/// The upgrade a browser's `new WebSocket(...)` sends.
const UPGRADE: &[u8] = b"GET /ws/chatroom/welcome?username=alice HTTP/1.1\r\n\
Host: chat.example.org\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: */*\r\n\
Accept-Language: en-GB,en;q=0.7,fr;q=0.3\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Sec-WebSocket-Version: 13\r\n\
Origin: https://chat.example.org\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Connection: keep-alive, Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
Upgrade: websocket\r\n\
\r\n";

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("http/parse_head");
    for (name, head) in [("browser_get", BROWSER_GET), ("websocket_upgrade", UPGRADE)] {
        // A sanity check, so the bench measures a successful parse.
        assert!(matches!(parse_head(head), Ok(Some(h)) if h.len == head.len()), "{name} does not parse");
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(name, |b| b.iter(|| parse_head(black_box(head))));
    }
    group.finish();
}

fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("http/framing");
    let body = vec![b'x'; 1024];
    let mut batch = Vec::new();
    for i in 0..16 {
        if i % 4 == 3 {
            // BROWSER_GET ends with its empty line: put the length before it.
            let head = BROWSER_GET.strip_suffix(b"\r\n").unwrap_or(BROWSER_GET);
            batch.extend_from_slice(head);
            batch.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            batch.extend_from_slice(&body);
        } else {
            batch.extend_from_slice(BROWSER_GET);
        }
    }
    let frame_batch = |batch: &[u8]| {
        let mut reader = RequestReader::new();
        reader.push(batch);
        let mut requests = 0;
        while let Framed::Request(request) = reader.next(64 * 1024) {
            black_box(&request);
            requests += 1;
        }
        requests
    };
    assert_eq!(frame_batch(&batch), 16, "the batch does not frame");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("pipelined_16", |b| b.iter(|| frame_batch(black_box(&batch))));
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("http/handshake");
    let allow: Vec<String> = Vec::new();
    let head = parse_head(UPGRADE).ok().flatten().unwrap_or_else(|| panic!("the upgrade head does not parse"));
    assert!(validate(&head, &allow).is_ok(), "the upgrade is refused");
    group.throughput(Throughput::Bytes(UPGRADE.len() as u64));
    // The checks and the accept key alone, on a parsed head...
    group.bench_function("validate_and_101", |b| {
        b.iter(|| validate(black_box(&head), &allow).map(|up| response_101(&up.accept, None)))
    });
    // ...and from the raw bytes, as a new connection's first read.
    group.bench_function("parse_validate_and_101", |b| {
        b.iter(|| {
            let head = parse_head(black_box(UPGRADE)).ok().flatten()?;
            validate(&head, &allow).ok().map(|up| response_101(&up.accept, None))
        })
    });
    group.finish();
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame/text");
    for (name, size) in [("100B", 100), ("16KiB", 16 * 1024)] {
        let payload = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(name, |b| b.iter(|| chatroom::frame::text(black_box(&payload))));
    }
    group.finish();
}

fn tokens(c: &mut Criterion) {
    use chatroom::auth::Auth;
    use chatroom::testutil::{ed25519_key, es256_key, hs256_signer, jwt};
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = format!(r#"{{"sub":"u-1234","name":"Alice","exp":{exp},"rooms":["lobby","team-*"]}}"#);
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let (es_pem, es_sign) = es256_key().unwrap();
    let (ed_pem, ed_sign) = ed25519_key().unwrap();
    let dir = std::env::temp_dir();
    let (es_path, ed_path) = (
        dir.join(format!("chatroom-bench-{}-es.pem", std::process::id())),
        dir.join(format!("chatroom-bench-{}-ed.pem", std::process::id())),
    );
    std::fs::write(&es_path, es_pem).unwrap();
    std::fs::write(&ed_path, ed_pem).unwrap();
    let keys = [es_path.display().to_string(), ed_path.display().to_string()];
    let auth = Auth::new(&[(None, secret.clone())], &keys, None, None).unwrap().unwrap();
    let mut group = c.benchmark_group("auth/verify");
    for (name, token) in [
        ("hs256", jwt(r#"{"alg":"HS256","typ":"JWT"}"#, &claims, hs256_signer(&secret))),
        ("es256", jwt(r#"{"alg":"ES256","typ":"JWT"}"#, &claims, es_sign)),
        ("eddsa", jwt(r#"{"alg":"EdDSA","typ":"JWT"}"#, &claims, ed_sign)),
    ] {
        assert!(auth.verify(&token).is_ok(), "{name}");
        group.bench_function(name, |b| b.iter(|| auth.verify(black_box(&token)).is_ok()));
    }
    group.finish();
    let _ = std::fs::remove_file(es_path);
    let _ = std::fs::remove_file(ed_path);
}

criterion_group!(benches, parse, framing, handshake, frames, tokens);
criterion_main!(benches);
