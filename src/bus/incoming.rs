//! What comes back from Redis: reading a link, giving each value its
//! meaning (a reply, matched to its command by the FIFO of tags; a push on
//! the subscription link), and timing the answers, so a Redis that stays
//! connected but stops answering is failed like one that dropped.

use std::time::Instant;

use log::debug;
use mio::Registry;

use super::*;

impl Bus {
    /// Reads what `which` has and handles each value in order; a failure
    /// (read error, EOF, protocol error, a reply that makes no sense) takes
    /// the link down after the values that came before it are handled.
    pub(super) fn read(&mut self, registry: &Registry, which: Which, now: Instant) {
        let mut values = std::mem::take(&mut self.values);
        let heard_before = self.link(which).bytes_read;
        let outcome = self.link_mut(which).read(&mut values);
        if which == Which::Subscription && self.sub.bytes_read != heard_before {
            self.sub_heard_at = now;
        }
        let mut failure = None;
        for value in values.drain(..) {
            if let Err(reason) = self.on_value(which, value, now) {
                failure = Some(reason);
                break;
            }
        }
        values.clear();
        self.values = values;
        if let Some(reason) = failure.or(outcome.err()) {
            self.fail(registry, which, reason, now);
        }
    }

    /// Gives one value from Redis its meaning.
    pub(super) fn on_value(&mut self, which: Which, value: Value, now: Instant) -> Result<(), String> {
        // The command link's handshake ends with a PING (see `connect`).
        let hello_count = self.hello_names.len() + usize::from(which == Which::Command);
        let link = self.link_mut(which);
        if link.hello_left > 0 {
            // AUTH, SELECT (and PING) were sent first, so the first replies
            // are theirs.
            let index = hello_count.saturating_sub(link.hello_left);
            link.hello_left -= 1;
            let name = self.hello_names.get(index).copied().unwrap_or("PING");
            if let Value::Error(e) = value {
                return Err(format!("redis refused {name}: {e}"));
            }
            self.check_up(which);
            return Ok(());
        }
        match which {
            Which::Command => {
                let Some(&(tag, replies)) = self.tags.front() else {
                    return Err(format!("unexpected reply with no command waiting: {value:?}"));
                };
                self.on_answered();
                let mut value = value;
                if replies > 1 {
                    // A chain answers as a whole, with its last reply.
                    self.chain.push(value);
                    if self.chain.len() < replies {
                        return Ok(());
                    }
                    value = Value::Array(std::mem::take(&mut self.chain));
                    // Its last command (a WAIT) may have held the
                    // connection up to its own timeout, on purpose: Redis
                    // is alive, and what was pipelined behind it starts
                    // its clock now, so that several WAITs in a row do not
                    // add up to `--redis-timeout`.
                    if let Some(batch) = self.batches.front_mut() {
                        batch.sent_at = batch.sent_at.max(now);
                    }
                }
                self.tags.pop_front();
                self.events.push(BusEvent::Reply { tag, value });
                Ok(())
            }
            Which::Subscription => self.on_push(value),
        }
    }

    /// A value on the subscribed connection: a message, or the confirmation
    /// of a subscription. In RESP2 both are arrays whose first element names
    /// the kind: `[message, channel, payload]`, `[pmessage, pattern, channel,
    /// payload]`, `[subscribe, channel, count]`.
    pub(super) fn on_push(&mut self, value: Value) -> Result<(), String> {
        let items = match value {
            Value::Array(items) => items,
            // PING on a connection with no subscriptions (yet) is answered
            // like on any other connection, not with a push.
            Value::Simple(s) if s.eq_ignore_ascii_case("PONG") => {
                self.ping_sent_at = None;
                return Ok(());
            }
            // A refused SUBSCRIBE (an ACL without that channel, say): the
            // link cannot deliver what was asked, so retrying is the honest
            // course; the reason goes to the log through Down.
            Value::Error(e) => return Err(format!("redis refused a subscription: {e}")),
            other => return Err(format!("unexpected value on the subscription link: {other:?}")),
        };
        let mut items = items.into_iter();
        let kind = items.next();
        match kind.as_ref().and_then(Value::as_bytes) {
            Some(b"message" | b"smessage") => {
                let (Some(Value::Bulk(channel)), Some(Value::Bulk(payload))) = (items.next(), items.next()) else {
                    return Err("malformed message push".into());
                };
                self.events.push(BusEvent::Message { channel, payload });
            }
            Some(b"pmessage") => {
                let (Some(_pattern), Some(Value::Bulk(channel)), Some(Value::Bulk(payload))) =
                    (items.next(), items.next(), items.next())
                else {
                    return Err("malformed pmessage push".into());
                };
                self.events.push(BusEvent::Message { channel, payload });
            }
            Some(b"subscribe" | b"psubscribe" | b"ssubscribe") => {
                self.sub_pending = self.sub_pending.saturating_sub(1);
                if self.sub.is_up() {
                    // Asked for after the handshake: the caller learns that
                    // this one channel is in place (it may have to catch up
                    // on what was published before it was).
                    let Some(Value::Bulk(channel)) = items.next() else {
                        return Err("malformed subscribe confirmation".into());
                    };
                    self.events.push(BusEvent::Subscribed { channel });
                } else {
                    self.check_up(Which::Subscription);
                }
            }
            // The answer to our keepalive PING: Redis is alive.
            Some(b"pong") => self.ping_sent_at = None,
            // The confirmation of an UNSUBSCRIBE: nothing more to do.
            Some(b"unsubscribe" | b"punsubscribe") => {}
            // A sharded channel's end: asked for (it is forgotten already),
            // or not: the slot moved to another master, which says so to
            // every subscriber of the slot's channels.
            Some(b"sunsubscribe") => {
                let Some(Value::Bulk(channel)) = items.next() else {
                    return Err("malformed sunsubscribe push".into());
                };
                if self.channels.remove(&channel) {
                    debug!("redis: {} ended by the server (slot moved)", String::from_utf8_lossy(&channel));
                    self.events.push(BusEvent::Unsubscribed { channel });
                }
            }
            _ => return Err(format!("unexpected push on the subscription link: {kind:?}")),
        }
        Ok(())
    }

    /// A reply took the front tag: one command fewer waits in the oldest
    /// batch, which leaves the queue with its last reply.
    pub(super) fn on_answered(&mut self) {
        match self.batches.front_mut() {
            Some(batch) => {
                batch.waiting = batch.waiting.saturating_sub(1);
                if batch.waiting == 0 {
                    self.batches.pop_front();
                }
            }
            // A reply to a command not flushed yet: only a confused server
            // sends one. Keep the counts honest; the tag order already paired it.
            None => self.unstamped = self.unstamped.saturating_sub(1),
        }
    }

    /// When `which` next has to hear from Redis, if it is up: the reply to
    /// its oldest unanswered command (command link); the pong to its PING,
    /// or, with no PING out, the moment a silence calls for one
    /// (subscription link). `None` when there is nothing to time.
    pub(super) fn answer_deadline(&self, which: Which) -> Option<Instant> {
        if !self.link(which).is_up() {
            return None;
        }
        let since = match which {
            Which::Command => self.batches.front()?.sent_at,
            Which::Subscription => self.ping_sent_at.unwrap_or(self.sub_heard_at),
        };
        // `None` (a timeout past the end of time) means never.
        since.checked_add(self.reply_timeout)
    }

    /// Whether `which` has waited for Redis past its deadline.
    pub(super) fn overdue(&self, which: Which, now: Instant) -> bool {
        self.answer_deadline(which).is_some_and(|deadline| now >= deadline)
    }

    /// Runs every turn for each link: is Redis still answering? On the
    /// subscription link, a silence as long as the timeout sends a PING (it
    /// leaves with this turn's flush). A link whose reply or pong is overdue
    /// is failed like a dropped connection: `Failed` for each unanswered
    /// command, `Down` (whose reason the caller logs as a warning), and a
    /// reconnect after the backoff.
    pub(super) fn check_answers(&mut self, registry: &Registry, which: Which, now: Instant) {
        if !self.overdue(which, now) {
            return;
        }
        if which == Which::Subscription && self.ping_sent_at.is_none() {
            debug!("redis Subscription link: silent for {:?}; sending PING", self.reply_timeout);
            self.sub.queue(PING);
            self.ping_sent_at = Some(now);
            return;
        }
        // Before giving up, read what the socket holds: the answer may have
        // come while this turn was busy with other sockets. (Edge-triggered:
        // an extra read that meets `WouldBlock` is always safe.)
        self.read(registry, which, now);
        if !self.overdue(which, now) {
            return;
        }
        let what = match which {
            Which::Command => "no reply",
            Which::Subscription => "no answer to PING",
        };
        let reason = format!("{what} in {:?}; reconnecting", self.reply_timeout);
        self.fail(registry, which, reason, now);
    }

    /// Takes `which` down: every unanswered command fails (first, so the
    /// caller sees the outcome of each before the outage), then `Down` once
    /// per outage, and the retry is scheduled by the link's backoff.
    pub(super) fn fail(&mut self, registry: &Registry, which: Which, reason: String, now: Instant) {
        let link = self.link_mut(which);
        let delay = link.fail(registry, now);
        let first = !link.down_reported;
        link.down_reported = true;
        if which == Which::Command {
            self.events.extend(self.tags.drain(..).map(|(tag, _)| BusEvent::Failed { tag }));
            self.chain.clear();
            self.batches.clear();
            self.unstamped = 0;
        } else {
            self.sub_pending = 0;
            self.ping_sent_at = None;
        }
        // The caller logs the Down event; the retries are ours to log.
        debug!("redis {which:?} link down: {reason}; retrying in {} ms", delay.as_millis());
        if first {
            self.events.push(BusEvent::Down { which, reason });
        }
    }
}
