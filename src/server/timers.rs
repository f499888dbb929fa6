//! Deadlines: the slow-request timeout (408), idle keep-alive, the
//! WebSocket heartbeat and lingering closes. Each timer carries the
//! connection's serial, and checks when it fires whether it still applies.

use log::debug;

use super::*;

impl Server {
    /// Due timers: each checks whether it still applies.
    pub(super) fn run_timers(&mut self) {
        while let Some(timer) = self.timers.pop_due(self.now) {
            let Some(conn) = self.conns.get_mut(timer.key) else { continue };
            if conn.serial != timer.serial || conn.dead {
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
    pub(super) fn on_http_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::Http(http) = &conn.phase else { return };
        if http.parked.is_some() || conn.close_after_flush {
            return;
        }
        let serial = conn.serial;
        let deadline = match http.head_started {
            Some(started) => started + self.cfg.header_timeout,
            // Nothing received yet since accept (last_read starts at accept).
            None if http.served == 0 => conn.last_read + self.cfg.header_timeout,
            None => conn.last_read + self.cfg.idle_timeout,
        };
        if deadline > self.now {
            self.timers.arm(Timer { at: deadline, key, serial, kind: TimerKind::Http });
            return;
        }
        if http.head_started.is_some() || http.served == 0 {
            debug!("#{serial}: request head not complete in time (408)");
            if let Phase::Http(http) = &mut conn.phase {
                http.buf.clear();
            }
            self.respond(key, Response::text(408, "request head not received in time").close(true));
        } else {
            debug!("#{serial}: idle keep-alive closed");
            self.kill(key);
        }
    }

    /// The WebSocket heartbeat: ping when quiet, close when the ping goes
    /// unanswered (any bytes from the client count as an answer).
    pub(super) fn on_heartbeat(&mut self, key: usize) {
        let now = self.now;
        let (interval, timeout) = (self.cfg.ping_interval, self.cfg.ping_timeout);
        let Some(conn) = self.conns.get_mut(key) else { return };
        let serial = conn.serial;
        let last_read = conn.last_read;
        let Phase::WebSocket(ws) = &mut conn.phase else { return };
        let next = match ws.ping_sent {
            Some(sent) if last_read >= sent => {
                ws.ping_sent = None;
                last_read + interval
            }
            Some(sent) if now >= sent + timeout => {
                debug!("#{serial}: no answer to ping; closing");
                return self.kill(key);
            }
            Some(sent) => sent + timeout,
            None if now >= last_read + interval => {
                conn.out.shrink();
                ws.session.ping(b"chatroom", &mut conn.out);
                ws.ping_sent = Some(now);
                self.mark_dirty(key);
                now + timeout
            }
            None => last_read + interval,
        };
        self.timers.arm(Timer { at: next, key, serial, kind: TimerKind::Heartbeat });
    }
}
