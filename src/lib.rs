//! # chatroom
//!
//! A real-time group chat server built the low-level way: one thread, one
//! `mio` event loop, HTTP/1.1 parsed with `httparse`, the WebSocket handshake
//! done by hand, frames decoded by `tungstenite` over our own buffers, and
//! history in SQLite on a storage thread that never makes the loop wait.
//!
//! # Layout
//!
//! Read it in the order a byte travels:
//!
//! | file | what it does |
//! |---|---|
//! | [`server`] | the reactor: poll, accept, read, flush, timers, reap |
//! | [`conn`] | a connection and its phases (HTTP → WebSocket) |
//! | [`http`] | request-head parsing with httparse, its limits, and framing (bodies, pipelining) |
//! | [`service`] | what each HTTP request gets (page, API, upgrade) |
//! | [`site`] | the static site: embedded `www/`, safe paths, ETags |
//! | [`response`] | building HTTP responses |
//! | [`handshake`] | the WebSocket opening handshake (RFC 6455 §4) |
//! | [`ws`] | a WebSocket session: tungstenite over our buffers |
//! | [`frame`] | encoding server frames once, to share |
//! | [`outbuf`] | a connection's output queue, sent with one `sendmsg` |
//! | [`pacing`] | when a broadcast may wait to share a write (coalescing) |
//! | [`endpoints`] | echo, echo room, chat, inspector, stats |
//! | [`chat`] | rooms, members, posts, presence, history, resume |
//! | [`storage`] | the SQLite (or memory) storage thread |
//! | [`timer`] | deadlines without scanning connections |
//! | [`route`] | which endpoint a path names; query values |
//! | [`config`] | every setting: flags, environment, config file |
//! | [`limits`] | descriptor limits and the listening socket |
//! | [`metrics`] | counters, rendered for Prometheus |
//! | [`inspect`] | the frame inspector of the learn page |
//!
//! Pure pieces (`http`, `handshake`, `site`, `route`, `frame`, `outbuf`,
//! `pacing`, `chat::protocol`, `chat::room`) know nothing about sockets and are tested
//! on their own; `server` is the only file that touches a socket.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
#![warn(missing_docs)]

pub mod bus;
pub mod chat;
pub mod cluster;
pub mod config;
pub(crate) mod conn;
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
pub mod ws;

pub use config::Config;
pub use server::{Handle, Server};
