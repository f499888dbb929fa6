//! # chatroom
//!
//! A real-time group chat server built the low-level way: one thread, one
//! `mio` event loop, HTTP/1.1 parsed with `httparse`, the WebSocket handshake
//! done by hand, frames decoded by `tungstenite` over our own buffers, TLS
//! by rustls on the same loop when it is on, and history in SQLite on a
//! storage thread that never makes the loop wait.
//!
//! # Layout
//!
//! Read it in the order a byte travels, from `accept()` to every member of
//! a room:
//!
//! | module | what it does |
//! |---|---|
//! | [`server`] | the reactor: the loop, accept, read, requests, endpoints, delivery, flush, timers, shutdown (one file each) |
//! | `conn` | a connection: its socket, its output, its phase (HTTP → WebSocket) and its life (open → closing → lingering → dead) |
//! | [`tls`] | TLS between the socket and a connection's buffers: rustls's unbuffered state machine; certificates and their reload; the redirect listener |
//! | [`http`] | request heads with httparse; [`http::framing`] cuts a connection's bytes into requests (bodies, pipelining, limits) |
//! | [`route`] | which endpoint a path names; query values |
//! | [`api_body`] | the server API's request bodies (a site's backend posts, kicks) |
//! | [`site`] | the static site: embedded `www/`, safe paths, ETags |
//! | `response` | building HTTP responses |
//! | [`handshake`] | the WebSocket opening handshake (RFC 6455 §4) |
//! | [`auth`] | who a chat connection is: signed JWT identities, checked at the handshake; the server API's keys |
//! | [`ws`] | a WebSocket session: tungstenite over our buffers |
//! | [`deflate`] | permessage-deflate (RFC 7692): the offer, inflating what clients send, compressing what we send |
//! | [`frame`] | encoding server frames once, to share |
//! | [`echo_room`] | the original site's echo room: greeting and replies |
//! | [`chat`] | rooms, members, posts, presence, history and resume |
//! | [`storage`] | the SQLite (or memory) storage thread and its mailbox |
//! | [`cluster`] | rooms shared by several processes through Redis: ordering, catch-up, presence |
//! | [`bus`] | non-blocking Redis connections: RESP, pub/sub, reconnects; a Redis Cluster's slots, redirects and sharded pub/sub |
//! | [`outbuf`] | a connection's output queue, sent with one `sendmsg` |
//! | `pacing` | when a broadcast may wait to share a write (coalescing) |
//! | `timer` | deadlines without scanning connections |
//! | `inspect` | the frame inspector behind the learn page |
//! | `metrics` | counters, rendered for Prometheus |
//! | `limits` | descriptor limits, the listening socket, `--max-per-ip` |
//! | [`config`] | every setting: flags, environment, config file |
//!
//! Pure pieces (`http`, `route`, `api_body`, `site`, `response`, `handshake`, `ws`,
//! `deflate`, `frame`, `echo_room`, `outbuf`, `pacing`, `timer`, `inspect`,
//! `chat`, `auth`, the data layout in `cluster`) know nothing about sockets and
//! are tested on their own. Clients' sockets are read and written only in
//! `server/` and `conn/` (through `tls/` when TLS is on); Redis's only in `bus/`; the data file only on the
//! storage thread (`storage/`), which a checkpoint thread helps by copying
//! SQLite's write-ahead log into the file beside it.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
#![warn(missing_docs)]

pub mod api_body;
pub mod auth;
pub mod bus;
pub mod chat;
pub mod cluster;
pub mod config;
pub(crate) mod conn;
pub mod deflate;
pub mod echo_room;
pub mod frame;
pub mod handshake;
pub mod http;
pub(crate) mod inspect;
pub(crate) mod limits;
pub(crate) mod metrics;
pub mod outbuf;
pub(crate) mod pacing;
pub(crate) mod response;
pub mod route;
pub mod server;
pub mod site;
pub mod storage;
#[doc(hidden)]
pub mod testutil;
pub(crate) mod timer;
pub mod tls;
pub mod ws;

pub use config::Config;
pub use server::{Handle, Server};
