//! Delivery: what the chat decided becomes output. Storage requests leave
//! as one batch per turn, committed posts come back, and each broadcast is
//! framed once and the same bytes queued for every member.

use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::chat::Outgoing;
use crate::deflate;
use crate::outbuf::Chunk;
use crate::storage::Reply;

use super::Server;

impl Server {
    /// Carries out what the chat decided: frames to members, closes, and
    /// HTTP answers that waited for storage. A room broadcast is framed once
    /// and the same bytes are queued for every member.
    pub(super) fn deliver_chat(&mut self) {
        let mut out = std::mem::take(&mut self.chat.out);
        let mut over_cap = Vec::new();
        for item in out.drain(..) {
            match item {
                Outgoing::To { key, json } => self.send_text(key, json.as_bytes()),
                Outgoing::ToSerial { key, serial, json } => {
                    if self.conns.get(key).is_some_and(|c| c.serial() == serial) {
                        self.send_text(key, json.as_bytes());
                    }
                }
                Outgoing::Room { room, json, is_message, except, author } => {
                    let text = OpCode::Data(Data::Text);
                    let mut copies = deflate::Copies::new(text, json.as_bytes(), &self.cfg.compression);
                    // A chat message is under the compression threshold:
                    // every member gets the same plain frame.
                    let differ = copies.may_differ();
                    let max_pending = self.cfg.max_pending;
                    let mut delivered = 0;
                    for key in self.chat.recipients(room) {
                        if Some(key) == except {
                            continue;
                        }
                        let Some(conn) = self.conns.get_mut(key) else { continue };
                        if !conn.takes_broadcasts() {
                            continue;
                        }
                        if differ {
                            conn.push_broadcast(&mut copies);
                        } else {
                            conn.push(Chunk::Shared(copies.plain()));
                        }
                        delivered += 1;
                        if conn.mark_dirty() {
                            self.dirty.push(key);
                        }
                        // Only a socket that already refused bytes is slow: a
                        // reader keeping up gets this turn's flush first, even
                        // when one commit batch alone is larger than the cap.
                        if conn.is_stalled() && conn.out_len() > max_pending {
                            over_cap.push(key);
                        }
                    }
                    if is_message {
                        self.metrics.messages_delivered += delivered;
                    }
                    if let Some((key, serial)) = author
                        && let Some(conn) = self.conns.get_mut(key)
                        && conn.serial() == serial
                        && conn.is_dirty()
                    {
                        conn.set_urgent();
                        self.authors.push(key);
                    }
                }
                Outgoing::Close { key, code, reason } => {
                    let Some(conn) = self.conns.get_mut(key) else { continue };
                    conn.close_ws(code, reason);
                    self.mark_dirty(key);
                }
                Outgoing::Kick { key, serial, sub, room, reason, until } => {
                    let who = self.kick_member(
                        key,
                        serial,
                        sub.as_deref().map(String::as_str),
                        super::backend::close_reason(&reason),
                    );
                    if let (Some(who), Some(until)) = (who, until) {
                        self.chat.ban(&room, &who, crate::auth::bans::Ban { until, reason });
                    }
                }
                Outgoing::CheckBans { room } => self.enforce_bans(&room),
                Outgoing::Http { key, serial, status, body } => self.answer_parked(key, serial, status, body),
            }
        }
        // Keep the buffer; what the chat decided meanwhile (a kicked
        // member leaving, say) goes out too.
        let meanwhile = std::mem::replace(&mut self.chat.out, out);
        if !meanwhile.is_empty() {
            self.chat.out.extend(meanwhile);
            self.deliver_chat();
        }
        for key in over_cap {
            self.drop_slow_consumer(key);
        }
    }

    /// End of turn, before flushing: storage requests leave as one batch,
    /// and presence changes become one frame per room.
    pub(super) fn chat_before_flush(&mut self) {
        self.chat.flush_presence();
        self.deliver_chat();
        if let Some(storage) = &mut self.storage {
            // The whole turn goes as one message: one transaction.
            let last_append = storage.send_all(std::mem::take(&mut self.chat.requests));
            // Remember when this batch left, to time its commit.
            if last_append > 0 {
                self.commit_clock.push_back((last_append, self.now));
            }
        }
        // Deliver what is already committed in this same turn, without
        // waiting for the waker's event: memory mode answers inline, and
        // the storage thread, woken by the send above, usually preempts us
        // on a shared core and has committed by the time we get here. (Its
        // waker event still comes; by then it finds nothing, or the next
        // batch.)
        self.on_storage_replies();
    }

    /// The storage thread has answers (it woke us through the waker).
    pub(super) fn on_storage_replies(&mut self) {
        while let Some(reply) = self.storage.as_mut().and_then(|s| s.try_recv()) {
            match reply {
                Reply::Committed { upto, result } => {
                    let committed = self.chat.on_committed(upto, &result);
                    self.metrics.history_writes += committed as u64;
                    self.metrics.history_batches += 1;
                    let now = std::time::Instant::now();
                    while let Some(&(seq, sent)) = self.commit_clock.front()
                        && seq <= upto
                    {
                        self.commit_clock.pop_front();
                        self.metrics.history_latency_us_sum += now.duration_since(sent).as_micros() as u64;
                        self.metrics.history_latency_count += 1;
                    }
                }
                Reply::Messages { ticket, messages, oldest_id } => self.chat.on_messages(ticket, messages, oldest_id),
                Reply::DataFile { problem } => self.storage_problem = problem,
            }
        }
        self.deliver_chat();
    }
}
