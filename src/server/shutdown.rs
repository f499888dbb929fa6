//! Stopping: SIGTERM/SIGINT (or a [`Handle`]) start a graceful shutdown;
//! the loop ends when every client has gone or the grace period is over,
//! and the storage thread commits what it holds. The signals that should
//! not stop a server do not: SIGHUP reloads the TLS certificate, SIGXFSZ
//! is ignored.

use log::info;
use mio::Interest;

use super::{RunState, SHUTDOWN_GRACE, SIGNALS, Server, StartError};
use crate::conn::ShutdownStep;

impl Server {
    /// Routes SIGTERM, SIGINT and SIGHUP into the poll, and ignores
    /// SIGXFSZ (for the binary; tests stop the server through a
    /// [`Handle`](super::Handle) instead).
    ///
    /// SIGXFSZ comes when a write passes the file-size limit
    /// (`RLIMIT_FSIZE`: systemd's `LimitFSIZE=`, a shell's `ulimit -f`), and
    /// by default it kills the process, every connection with it. Ignored,
    /// the write fails with EFBIG instead, and the storage thread answers
    /// that commit as it answers a full disk: the posts in it are refused
    /// with `unavailable`, and posting works again once the limit is raised.
    /// (SIGPIPE is ignored already: Rust's runtime does it at start, so a
    /// write to a reset socket is an EPIPE error for that peer alone.)
    pub fn handle_signals(&mut self) -> Result<(), StartError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGXFSZ};
        // SAFETY: SIG_IGN installs no handler code; nothing else in the
        // process relies on SIGXFSZ's default action.
        if unsafe { libc::signal(SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
            return Err(StartError("cannot ignore SIGXFSZ".into()));
        }
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| StartError(format!("cannot register signals: {e}")))?;
        self.signals = Some(signals);
        Ok(())
    }

    /// SIGTERM or SIGINT: shut down. SIGHUP (`systemctl reload`, a
    /// closed terminal): the TLS certificate and key are loaded again, and
    /// the server goes on.
    pub(super) fn on_signal(&mut self) {
        let mut got = false;
        if let Some(signals) = &mut self.signals {
            for signal in signals.pending() {
                if signal == signal_hook::consts::SIGHUP {
                    self.reload();
                    continue;
                }
                info!("received signal {signal}; shutting down");
                got = true;
            }
        }
        if got {
            self.begin_shutdown();
        }
    }

    /// Graceful shutdown: stop accepting WebSockets, say 1001 to every open
    /// one, let HTTP answers finish, and wait up to a few seconds for
    /// everyone to go. The listener stays open so that a load balancer can
    /// still read `/readyz` (503 from now on) and take us out of rotation;
    /// new connections get HTTP answers with `Connection: close`, and
    /// upgrades a 503.
    pub(super) fn begin_shutdown(&mut self) {
        if self.state != RunState::Serving {
            return;
        }
        self.state = RunState::Draining { deadline: self.now + SHUTDOWN_GRACE };
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match conn.on_shutdown() {
                ShutdownStep::Wait => {}
                ShutdownStep::Drop => self.kill(key),
                ShutdownStep::Flush => self.mark_dirty(key),
            }
        }
    }

    /// After the loop: commit the last history and stop the storage thread.
    pub(super) fn finish(mut self) -> Result<(), StartError> {
        if let Some(storage) = self.storage.take() {
            storage.shutdown().map_err(|e| StartError(format!("storage did not shut down cleanly: {e}")))?;
        }
        info!("chatroom stopped");
        Ok(())
    }
}

impl Server {
    /// SIGHUP: loads `--tls-cert` and `--tls-key` again. New connections
    /// get the new pair; open ones keep the one they started with, so no
    /// connection drops. A bad new pair (a file half-written by a renewal,
    /// a key of another certificate) is refused, logged, and the old one
    /// kept.
    pub(super) fn reload(&mut self) {
        let Some(certificates) = &mut self.tls else {
            info!("received SIGHUP; no TLS certificate to reload, still serving");
            return;
        };
        match certificates.reload() {
            Ok(()) => info!("received SIGHUP; TLS certificate and key reloaded"),
            Err(e) => log::error!("received SIGHUP; keeping the old TLS certificate: {e}"),
        }
    }
}
