//! Stopping: SIGTERM/SIGINT (or a [`Handle`]) start a graceful shutdown;
//! the loop ends when every client has gone or the grace period is over,
//! and the storage thread commits what it holds.

use log::info;
use mio::Interest;

use super::{RunState, SHUTDOWN_GRACE, SIGNALS, Server, StartError};
use crate::conn::ShutdownStep;

impl Server {
    /// Routes SIGTERM and SIGINT into the poll (for the binary; tests stop
    /// the server through a [`Handle`](super::Handle) instead).
    pub fn handle_signals(&mut self) -> Result<(), StartError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGTERM, SIGINT])
            .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| StartError(format!("cannot register signals: {e}")))?;
        self.signals = Some(signals);
        Ok(())
    }

    /// SIGTERM or SIGINT.
    pub(super) fn on_signal(&mut self) {
        let mut got = false;
        if let Some(signals) = &mut self.signals {
            for signal in signals.pending() {
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
