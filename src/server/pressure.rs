//! Backpressure: a chat member with `--max-posts-in-flight` posts not yet
//! stored (or acknowledged by Redis) is not read, and what was read but not
//! decoded waits, until some of its posts complete.
//!
//! The chat counts the posts ([`crate::chat::Chat::read_allowance`]); this
//! file asks it before each read and each decode, keeps the list of paused
//! connections, and puts them back on the read list once they may go on.
//!
//! Edge-triggered epoll will not announce the bytes that arrived while a
//! connection was paused a second time: its edge came and went. So a
//! paused connection is resumed through [`Server::read_again`], which reads
//! it until `WouldBlock` without waiting for an event, the rule mio's
//! `Poll` docs give ("operations **must** be performed on the `Source`
//! until `WouldBlock` is returned").

use crate::conn::Role;

use super::Server;

impl Server {
    /// How many more messages `key` may have decoded now: a chat member's
    /// allowance, unbounded for any other connection.
    pub(super) fn read_allowance(&self, key: usize) -> usize {
        match self.conns.get(key).and_then(|c| c.role()) {
            Some(Role::Member(m)) => self.chat.read_allowance(m),
            _ => usize::MAX,
        }
    }

    /// Stops reading `key` until its posts in flight complete (counted
    /// once per pause in `chatroom_reads_paused_total`).
    pub(super) fn pause_reads(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.set_reads_paused(true) {
            self.paused.push((key, conn.serial()));
            self.metrics.reads_paused += 1;
        }
    }

    /// Paused connections that may be read again go back on the read list
    /// (held bytes first, then the socket). Runs after commits and Redis
    /// answers may have come in: before the turn's reads and before sleep.
    pub(super) fn resume_paused(&mut self) {
        if self.paused.is_empty() {
            return;
        }
        for (key, serial) in std::mem::take(&mut self.paused) {
            if !self.conns.get(key).is_some_and(|c| c.serial() == serial && !c.is_dead()) {
                continue;
            }
            if self.read_allowance(key) == 0 {
                self.paused.push((key, serial));
                continue;
            }
            if let Some(conn) = self.conns.get_mut(key) {
                conn.set_reads_paused(false);
            }
            self.read_again(key);
        }
    }
}
