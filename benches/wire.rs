//! What the WebSocket side costs per frame and per event: `wire/decode`,
//! `wire/message_json`, `wire/parse_post`, `wire/welcome_json` and `wire/deflate`.
//!
//! - `decode`: [`chatroom::ws::Session::feed`] on masked client frames, as
//!   the reactor calls it after a read: one 100-byte text frame, one 16 KiB
//!   binary frame, and 100 small text frames in one buffer (a pipelining
//!   client, or a backlog after a stall). The last two again split into
//!   1460-byte chunks (one TCP segment's payload each, MSS on Ethernet), fed
//!   one `feed` per chunk, as when each read returns one segment.
//!   tungstenite unmasks, reassembles and checks UTF-8. One session serves
//!   every iteration: each feeds whole frames, so the session is idle again
//!   afterwards.
//! - `message_json`: serialising one chat message event (100-character text),
//!   which the server does once per message, not per recipient.
//! - `parse_post`: decoding a client's post frame,
//!   `{"message": "...", "username": "alice"}`, with a 100-character text.
//! - `welcome_json`: a welcome frame with 20 names online and 50 messages of
//!   history (already JSON, concatenated).
//! - `deflate`: that welcome frame compressed alone, as `--compression
//!   shared` sends it (`deflate::frame_alone`, at each level), and inflated
//!   back (`deflate::inflate`, what a client that compresses its posts
//!   costs the server per message).
//!
//! Throughput is bytes of input (decode, parse) or elements and bytes of
//! output (the events), so criterion prints MiB/s and events per second.
//!
//! Run with `cargo bench --bench wire` (add `-- --quick` for a rough pass).

use std::hint::black_box;

use chatroom::chat::protocol::{message_json, parse_post, welcome_json};
use chatroom::deflate;
use chatroom::outbuf::OutQueue;
use chatroom::ws::{Closing, Session};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tungstenite::Message;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// The session's message limit: the server's default `--max-message`.
const MAX_MESSAGE: usize = 64 * 1024;

/// One TCP segment's payload on Ethernet (1500 MTU - 20 IP - 20 TCP).
const MSS: usize = 1460;

/// Frames in the batch input, and the payload of each.
const BATCH_FRAMES: usize = 100;
const BATCH_PAYLOAD: usize = 32;

/// The server's default `--max-text`, in characters.
const MAX_TEXT: usize = 4096;

/// A masked client frame, as a browser sends it (RFC 6455 §5.3).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    chatroom::testutil::masked_frame(0x80 | opcode, payload)
}

/// `len` bytes of printable ASCII chat text (valid UTF-8, not one repeated byte).
fn chat_text(len: usize) -> String {
    const WORDS: &str = "the quick brown fox jumps over the lazy dog and then goes home for tea ";
    WORDS.chars().cycle().take(len).collect()
}

/// A client post as the site's script sends it.
fn post_json(text: &str) -> String {
    format!(r#"{{"message": "{text}", "username": "alice"}}"#)
}

/// Feeds `chunks` one by one, as successive reads would deliver them.
fn feed_all(session: &mut Session, chunks: &[&[u8]], out: &mut OutQueue, messages: &mut Vec<Message>) {
    for chunk in chunks {
        session.feed(chunk, false, out, messages, usize::MAX);
    }
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire/decode");

    let text_100 = client_frame(0x1, chat_text(100).as_bytes());
    let binary_16k = client_frame(0x2, &vec![0xa5u8; 16 * 1024]);
    let batch: Vec<u8> =
        (0..BATCH_FRAMES).flat_map(|_| client_frame(0x1, chat_text(BATCH_PAYLOAD).as_bytes())).collect();

    // (name, input, messages in it, bytes per read)
    let cases: [(&str, &[u8], usize, usize); 5] = [
        ("text_100B", &text_100, 1, text_100.len()),
        ("binary_16KiB", &binary_16k, 1, binary_16k.len()),
        ("binary_16KiB_mss_chunks", &binary_16k, 1, MSS),
        ("batch_100x32B", &batch, BATCH_FRAMES, batch.len()),
        ("batch_100x32B_mss_chunks", &batch, BATCH_FRAMES, MSS),
    ];

    for (name, input, frames, read_size) in cases {
        let chunks: Vec<&[u8]> = input.chunks(read_size).collect();
        let mut session = Session::new(MAX_MESSAGE, None);
        let mut out = OutQueue::new();
        let mut messages = Vec::with_capacity(frames);

        // A sanity check, so the bench measures successful decodes, and a
        // warm-up of the session's read buffer.
        feed_all(&mut session, &chunks, &mut out, &mut messages);
        assert_eq!(messages.len(), frames, "{name}: wrong number of messages");
        assert!(out.is_empty() && session.closing() == Closing::No, "{name}: the session answered or closed");

        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                messages.clear();
                feed_all(&mut session, black_box(&chunks), &mut out, &mut messages);
                black_box(messages.len())
            })
        });
        assert!(out.is_empty() && session.closing() == Closing::No, "{name}: the session ended up closed");
    }
    group.finish();
}

fn events(c: &mut Criterion) {
    let text = chat_text(100);
    let ts = 1_764_000_000_000;

    let mut group = c.benchmark_group("wire/message_json");
    let sample = message_json("welcome", 123_456, "alice", &text, ts);
    group.throughput(Throughput::ElementsAndBytes { elements: 1, bytes: sample.len() as u64 });
    group.bench_function("100_chars", |b| {
        b.iter(|| message_json(black_box("welcome"), black_box(123_456), black_box("alice"), black_box(&text), ts))
    });
    group.finish();

    let mut group = c.benchmark_group("wire/parse_post");
    let post = post_json(&text);
    assert!(parse_post(&post, MAX_TEXT).is_ok_and(|p| p.message == text), "the post does not parse");
    group.throughput(Throughput::Bytes(post.len() as u64));
    group.bench_function("100_chars", |b| b.iter(|| parse_post(black_box(&post), MAX_TEXT)));
    group.finish();

    let mut group = c.benchmark_group("wire/welcome_json");
    let history: Vec<String> =
        (0..50).map(|i| message_json("welcome", 1_000 + i, &format!("user{}", i % 7), &text, ts + i)).collect();
    let history: Vec<&str> = history.iter().map(String::as_str).collect();
    let names: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    let online: Vec<&str> = names.iter().map(String::as_str).collect();
    let sample = welcome_json("welcome", "alice", &online, online.len(), &history, 1_049);
    assert!(serde_json::from_str::<serde_json::Value>(&sample).is_ok(), "the welcome frame is not JSON");
    group.throughput(Throughput::ElementsAndBytes { elements: 1, bytes: sample.len() as u64 });
    group.bench_function("50_history_20_online", |b| {
        b.iter(|| welcome_json("welcome", "alice", black_box(&online), online.len(), black_box(&history), 1_049))
    });
    group.finish();

    let mut group = c.benchmark_group("wire/deflate");
    let text_op = OpCode::Data(Data::Text);
    group.throughput(Throughput::Bytes(sample.len() as u64));
    for level in [1u8, 6] {
        group.bench_function(format!("welcome_alone_level_{level}"), |b| {
            b.iter(|| deflate::frame_alone(text_op, black_box(sample.as_bytes()), 15, level))
        });
    }
    let frame = deflate::frame_alone(text_op, sample.as_bytes(), 15, 1).expect("a welcome compresses");
    let payload = frame.get(4..).expect("a 16-bit length header").to_vec();
    group.bench_function("welcome_inflate", |b| {
        b.iter(|| deflate::inflate(&mut black_box(payload.clone()), None, 1 << 20))
    });
    group.finish();
}

criterion_group!(benches, decode, events);
criterion_main!(benches);
