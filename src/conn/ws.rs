//! A connection's WebSocket phase: tungstenite's session over our output
//! queue, the endpoint and its per-connection role, and the heartbeat.

use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use super::{Connection, Phase};
use crate::chat::Membership;
use crate::deflate::{self, Extension};
use crate::inspect::Inspector;
use crate::outbuf::Chunk;
use crate::route::Endpoint;
use crate::ws::{Closing, Session};

/// The WebSocket phase.
#[derive(Debug)]
pub(crate) struct WsState {
    /// tungstenite's protocol state over our buffers.
    pub(super) session: Session,
    /// Which endpoint this socket was upgraded to.
    endpoint: Endpoint,
    /// A ping is outstanding since this instant (`--ping-timeout` runs).
    ping_sent: Option<Instant>,
    /// Per-endpoint state (chat membership, inspector...).
    role: Role,
    /// Bytes read but not decoded: the chat member had too many posts in
    /// flight (`--max-posts-in-flight`). Fed again before the socket is.
    held: Vec<u8>,
    /// Not read until its posts in flight complete: the reactor resumes it.
    paused: bool,
}

impl WsState {
    /// A fresh session on `endpoint`, accepting messages up to
    /// `max_message` bytes, with permessage-deflate if it was agreed.
    pub(crate) fn new(endpoint: Endpoint, max_message: usize, extension: Option<Extension>) -> WsState {
        WsState {
            session: Session::new(max_message, extension),
            endpoint,
            ping_sent: None,
            role: Role::None,
            held: Vec::new(),
            paused: false,
        }
    }

    /// What the endpoint kept for this connection (given back at reap).
    pub(crate) fn into_role(self) -> Role {
        self.role
    }
}

/// What an endpoint keeps per connection.
#[derive(Debug, Default)]
pub(crate) enum Role {
    /// Nothing (echo endpoints).
    #[default]
    None,
    /// A member of a chat room.
    Member(Membership),
    /// Receiving the stats feed.
    StatsViewer,
    /// Being inspected: the raw bytes of this socket are described.
    Inspected(Box<Inspector>),
}

/// What the heartbeat found (see [`Connection::heartbeat`]).
#[derive(Debug)]
pub(crate) enum Heartbeat {
    /// Not a WebSocket.
    None,
    /// Check again then.
    Next(Instant),
    /// A ping was queued: flush it; check again then.
    Pinged(Instant),
    /// The ping went unanswered: drop the connection.
    Unanswered,
}

impl Connection {
    /// Runs `bytes` (or the end of the stream) through the WebSocket
    /// session; complete messages go to `messages` (`max` at most),
    /// protocol answers (pongs, close replies) to the output queue. Returns
    /// how many bytes were taken (see [`Session::feed`]).
    pub(crate) fn feed_ws(&mut self, bytes: &[u8], eof: bool, messages: &mut Vec<Message>, max: usize) -> usize {
        match &mut self.phase {
            Phase::WebSocket(ws) => ws.session.feed(bytes, eof, &mut self.out, messages, max),
            Phase::Http(_) => bytes.len(),
        }
    }

    /// Keeps bytes read but not decoded, for [`Connection::take_held`].
    pub(crate) fn hold_input(&mut self, bytes: &[u8]) {
        if let Phase::WebSocket(ws) = &mut self.phase {
            ws.held.extend_from_slice(bytes);
        }
    }

    /// Whether frames read before are still waiting to be decoded (posts
    /// in flight): a connection closing after the client's FIN finishes
    /// only once they are handled.
    pub(crate) fn has_held_input(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket(ws) if !ws.held.is_empty())
    }

    /// The bytes kept by [`Connection::hold_input`], oldest first.
    pub(crate) fn take_held(&mut self) -> Vec<u8> {
        match &mut self.phase {
            Phase::WebSocket(ws) => std::mem::take(&mut ws.held),
            Phase::Http(_) => Vec::new(),
        }
    }

    /// Marks the connection as not read (or read again); whether that
    /// changed anything.
    pub(crate) fn set_reads_paused(&mut self, paused: bool) -> bool {
        match &mut self.phase {
            Phase::WebSocket(ws) if ws.paused != paused => {
                ws.paused = paused;
                true
            }
            _ => false,
        }
    }

    /// After input was handled: a finished or failed close handshake, or
    /// the client's FIN, closes the connection. `true` if it can be
    /// dropped at once (nothing left to send).
    pub(crate) fn after_ws_input(&mut self, eof: bool) -> bool {
        let Phase::WebSocket(ws) = &self.phase else { return false };
        let over = matches!(ws.session.closing(), Closing::Done | Closing::Failed);
        if over && eof && self.out_is_empty() {
            return true;
        }
        if over || eof {
            self.close_after_flush();
        }
        false
    }

    /// Whether data frames may still be sent (upgraded, no close frame sent).
    pub(crate) fn ws_open(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket(ws) if ws.session.is_open())
    }

    /// The endpoint this WebSocket serves.
    pub(crate) fn endpoint(&self) -> Option<&Endpoint> {
        match &self.phase {
            Phase::WebSocket(ws) => Some(&ws.endpoint),
            Phase::Http(_) => None,
        }
    }

    /// Gives the WebSocket its endpoint role. A chat member's room name
    /// lives in the room: the endpoint forgets its copy (10,000 idle
    /// members would each carry one).
    pub(crate) fn set_role(&mut self, role: Role) {
        if let Phase::WebSocket(ws) = &mut self.phase {
            if let (Role::Member(_), Endpoint::Room(name)) = (&role, &mut ws.endpoint) {
                *name = String::new();
            }
            ws.role = role;
        }
    }

    /// The endpoint role.
    pub(crate) fn role(&self) -> Option<&Role> {
        match &self.phase {
            Phase::WebSocket(ws) => Some(&ws.role),
            Phase::Http(_) => None,
        }
    }

    /// The endpoint role, to act on it.
    pub(crate) fn role_mut(&mut self) -> Option<&mut Role> {
        match &mut self.phase {
            Phase::WebSocket(ws) => Some(&mut ws.role),
            Phase::Http(_) => None,
        }
    }

    /// Whether it receives the stats feed.
    pub(crate) fn is_stats_viewer(&self) -> bool {
        matches!(&self.phase, Phase::WebSocket(ws) if matches!(ws.role, Role::StatsViewer))
    }

    /// A pong arrived: the outstanding ping is answered.
    pub(crate) fn on_pong(&mut self) {
        if let Phase::WebSocket(ws) = &mut self.phase {
            ws.ping_sent = None;
        }
    }

    /// Queues a text frame if data may still be sent; whether it was.
    pub(crate) fn send_text(&mut self, payload: &[u8], settings: &deflate::Settings) -> bool {
        self.send_data(OpCode::Data(Data::Text), payload, settings)
    }

    /// Queues a data frame (compressed if this client agreed to it and it
    /// pays) if data may still be sent; whether it was.
    pub(crate) fn send_data(&mut self, opcode: OpCode, payload: &[u8], settings: &deflate::Settings) -> bool {
        let Phase::WebSocket(ws) = &mut self.phase else { return false };
        if !ws.session.is_open() {
            return false;
        }
        let frame = ws.session.data_frame(opcode, payload, settings);
        self.out.push(Chunk::Owned(frame));
        true
    }

    /// The frame that carries data `payload` to this client (compressed
    /// if agreed and it pays); a plain frame for a connection that is not
    /// a WebSocket.
    pub(crate) fn data_frame(&mut self, opcode: OpCode, payload: &[u8], settings: &deflate::Settings) -> Vec<u8> {
        match &mut self.phase {
            Phase::WebSocket(ws) => ws.session.data_frame(opcode, payload, settings),
            Phase::Http(_) => crate::frame::encode(opcode, payload),
        }
    }

    /// Queues a room's broadcast frame: the shared plain copy, the shared
    /// copy compressed for this client's window, or, with a compressor of
    /// its own, a frame compressed for it alone. The caller has checked
    /// that it takes broadcasts.
    pub(crate) fn push_broadcast(&mut self, copies: &mut deflate::Copies<'_>) {
        let chunk = match &mut self.phase {
            Phase::WebSocket(ws) => match ws.session.agreed() {
                None => Chunk::Shared(copies.plain()),
                Some(agreed) if agreed.server_no_context_takeover => {
                    Chunk::Shared(copies.compressed(agreed.server_max_window_bits))
                }
                Some(_) => {
                    let (opcode, payload, settings) = copies.parts();
                    Chunk::Owned(ws.session.data_frame(opcode, payload, settings))
                }
            },
            Phase::Http(_) => return,
        };
        self.out.push(chunk);
    }

    /// Queues a frame to an inspected connection and lets its inspector
    /// note the header (shown with the next description). Whether it was queued.
    pub(crate) fn send_inspected(&mut self, frame: Vec<u8>) -> bool {
        let Phase::WebSocket(ws) = &mut self.phase else { return false };
        if !ws.session.is_open() {
            return false;
        }
        if let Role::Inspected(inspector) = &mut ws.role {
            inspector.sent(&frame);
        }
        self.out.push(Chunk::Owned(frame));
        true
    }

    /// Starts the closing handshake with `code`; the connection closes once
    /// the handshake is done or the output is flushed.
    pub(crate) fn close_ws(&mut self, code: u16, reason: &str) {
        if let Phase::WebSocket(ws) = &mut self.phase {
            ws.session.close(code, reason, &mut self.out);
            self.close_after_flush();
        }
    }

    /// The WebSocket heartbeat: ping when quiet, give up when the ping goes
    /// unanswered (any bytes from the client count as an answer). A
    /// connection whose reads are paused cannot be heard answering: its
    /// ping is sent again instead of counted as unanswered.
    pub(crate) fn heartbeat(&mut self, now: Instant, interval: Duration, timeout: Duration) -> Heartbeat {
        let last_read = self.last_read;
        let Phase::WebSocket(ws) = &mut self.phase else { return Heartbeat::None };
        match ws.ping_sent {
            Some(sent) if last_read >= sent => {
                ws.ping_sent = None;
                Heartbeat::Next(last_read + interval)
            }
            Some(sent) if now >= sent + timeout && ws.paused => {
                // Its pong may well be waiting in the socket, unread by us.
                ws.session.ping(b"chatroom", &mut self.out);
                ws.ping_sent = Some(now);
                Heartbeat::Pinged(now + timeout)
            }
            Some(sent) if now >= sent + timeout => Heartbeat::Unanswered,
            Some(sent) => Heartbeat::Next(sent + timeout),
            None if now >= last_read + interval => {
                // A quiet connection: give back the queue's spare capacity too.
                self.out.shrink();
                ws.session.ping(b"chatroom", &mut self.out);
                ws.ping_sent = Some(now);
                Heartbeat::Pinged(now + timeout)
            }
            None => Heartbeat::Next(last_read + interval),
        }
    }

    /// The WebSocket state, taken at reap (its role has cleaning up to do).
    pub(crate) fn into_ws(self) -> Option<WsState> {
        match self.phase {
            Phase::WebSocket(ws) => Some(*ws),
            Phase::Http(_) => None,
        }
    }
}
