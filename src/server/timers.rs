//! Deadlines: the slow-request timeout (408), idle keep-alive, the
//! WebSocket heartbeat and lingering closes. Each timer carries the
//! connection's serial, and checks when it fires whether it still applies.

use log::debug;

use super::Server;
use crate::conn::{Heartbeat, HttpDeadline};
use crate::response::Response;
use crate::timer::{Timer, TimerKind};

impl Server {
    /// Due timers: each checks whether it still applies.
    pub(super) fn run_timers(&mut self) {
        while let Some(timer) = self.timers.pop_due(self.now) {
            let Some(conn) = self.conns.get(timer.key) else { continue };
            if conn.serial() != timer.serial || conn.is_dead() {
                continue;
            }
            match timer.kind {
                TimerKind::Linger => self.kill(timer.key),
                TimerKind::Http => self.on_http_timer(timer.key),
                TimerKind::Heartbeat => self.on_heartbeat(timer.key),
            }
        }
    }

    /// Slowloris (408) and idle keep-alive (close) deadlines.
    fn on_http_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let serial = conn.serial();
        match conn.http_deadline(self.now, self.cfg.header_timeout, self.cfg.idle_timeout) {
            HttpDeadline::None => {}
            HttpDeadline::Later(at) => self.timers.arm(Timer { at, key, serial, kind: TimerKind::Http }),
            HttpDeadline::SlowRequest => {
                debug!("#{serial}: request not complete in time (408)");
                self.respond(key, Response::text(408, "request head not received in time").close(true));
            }
            HttpDeadline::Idle => {
                debug!("#{serial}: idle keep-alive closed");
                self.kill(key);
            }
        }
    }

    /// The WebSocket heartbeat: ping when quiet, close when the ping goes
    /// unanswered (any bytes from the client count as an answer).
    fn on_heartbeat(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let serial = conn.serial();
        let at = match conn.heartbeat(self.now, self.cfg.ping_interval, self.cfg.ping_timeout) {
            Heartbeat::None => return,
            Heartbeat::Next(at) => at,
            Heartbeat::Pinged(at) => {
                self.mark_dirty(key);
                at
            }
            Heartbeat::Unanswered => {
                debug!("#{serial}: no answer to ping; closing");
                return self.kill(key);
            }
        };
        self.timers.arm(Timer { at, key, serial, kind: TimerKind::Heartbeat });
    }
}
