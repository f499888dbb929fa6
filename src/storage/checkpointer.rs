//! The checkpointer: copies the write-ahead log into the data file beside
//! the storage thread, so that no commit waits for it.
//!
//! In WAL mode a commit appends pages to `<file>-wal`; a *checkpoint*
//! later copies them into the file itself and `fsync`s both. That copy and
//! sync take time in proportion to what was written since the last one: a
//! few milliseconds after a quiet minute, a few hundred with tens of
//! megabytes behind it (one client flooding a room with `--rate-limit 0`
//! writes that much in seconds). Run on the storage thread, as SQLite's
//! automatic checkpoint does, every commit queued behind it waits, and so
//! does every room's broadcast, since a message goes out only once
//! committed: one flooded room would stall them all.
//!
//! So this thread, with a connection of its own, runs `PRAGMA
//! wal_checkpoint(PASSIVE)` whenever the storage thread nudges it (every
//! [`NUDGE_EVERY_ROWS`] messages written, and when it goes idle). A
//! passive checkpoint takes no lock a writer needs: commits carry on
//! appending to the log while it copies, and what it did not reach it
//! copies next time. (The storage thread checkpoints only as a backstop,
//! when the log has grown long with commits that never paused; by then
//! nearly all of it is copied: see `sqlite.rs`.) This thread touches
//! nothing else: the reactor still talks to the storage thread alone, and
//! the storage thread still does every read and write of chat data.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use rusqlite::Connection;

use super::StorageError;

/// Messages written between two nudges. A checkpoint then has about this
/// many messages' pages to copy (well under a megabyte), and a busy
/// server checkpoints a few times a second, each time briefly.
pub(super) const NUDGE_EVERY_ROWS: usize = 2_000;

/// The handle the storage thread keeps. Dropping it stops the thread
/// (after the checkpoint it may be running) and waits for it, so the
/// storage thread's connection closes last: the last connection to close
/// checkpoints what is left and removes the log.
pub(super) struct Checkpointer {
    nudges: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Messages written since the last nudge.
    written: usize,
}

impl Checkpointer {
    /// Opens a second connection to `path` (already in WAL mode) and
    /// starts the thread.
    pub(super) fn start(path: &Path) -> Result<Checkpointer, StorageError> {
        let sqlite = |source| StorageError::Sqlite {
            context: format!("cannot open data file {} for checkpoints", path.display()),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        // A passive checkpoint never waits for a lock (it copies what it
        // can); this is for the reads of the file's header and schema
        // that come with the connection's first statement.
        conn.busy_timeout(std::time::Duration::from_millis(50)).map_err(sqlite)?;
        // A first checkpoint now, before the server serves anyone: it copies
        // what an earlier run left in the log, and opens the log's file, so
        // the process's descriptors are all open from the start (a server
        // whose descriptor count grows after its first checkpoint would look
        // like one leaking them).
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(sqlite)?;
        // One nudge waiting is enough: it means "checkpoint once more".
        let (nudges, rx) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("chatroom-checkpoint".into())
            .spawn(move || run(&conn, &rx))
            .map_err(|e| StorageError::Thread(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { nudges: Some(nudges), thread: Some(thread), written: 0 })
    }

    /// `rows` messages were committed: nudges the thread every
    /// [`NUDGE_EVERY_ROWS`] of them.
    pub(super) fn wrote(&mut self, rows: usize) {
        self.written += rows;
        if self.written >= NUDGE_EVERY_ROWS {
            self.nudge();
        }
    }

    /// Asks for a checkpoint now (the storage thread is idle). Never
    /// blocks: if one is asked for already, that one will do.
    pub(super) fn nudge(&mut self) {
        self.written = 0;
        if let Some(nudges) = &self.nudges
            && let Err(TrySendError::Disconnected(())) = nudges.try_send(())
        {
            log::error!("storage: the checkpoint thread has stopped; the write-ahead log will grow");
            self.nudges = None;
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.nudges = None; // the thread's recv() ends
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("storage: the checkpoint thread panicked");
        }
    }
}

/// The thread: one passive checkpoint per nudge, until the handle goes.
///
/// When a pass leaves a long log behind (the disk is slower than the
/// commits), the next nudge is let go: two checkpoints cannot run at once,
/// and with this thread always copying, the storage thread's backstop
/// (`sqlite.rs`) would find it in the way at every commit, and the log
/// would never start over. Left alone for one round, the backstop copies
/// the little that is left and the log starts over.
fn run(conn: &Connection, nudges: &Receiver<()>) {
    let mut leave_to_backstop = false;
    while nudges.recv().is_ok() {
        if std::mem::take(&mut leave_to_backstop) {
            continue;
        }
        // (busy, frames in the log, frames copied)
        match conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?)))
        {
            Ok((log, copied)) => leave_to_backstop = log >= super::sqlite::WAL_BACKSTOP_PAGES && copied < log,
            Err(e) => log::warn!("storage: checkpoint failed (tried again at the next nudge): {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A WAL-mode file in a folder of its own, and a connection to it
    /// that never checkpoints.
    fn wal_file(name: &str) -> (std::path::PathBuf, Connection) {
        let dir = std::env::temp_dir().join(format!("chatroom-checkpoint-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("test.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t(x TEXT)").unwrap();
        (path, conn)
    }

    /// Writes 200 rows of 1 KB to the log, none copied into the file yet.
    fn log_rows(writer: &Connection) {
        for _ in 0..200 {
            writer.execute("INSERT INTO t VALUES (?1)", [&"x".repeat(1000)]).unwrap();
        }
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_nudge_copies_the_log_into_the_file() {
        let (path, writer) = wal_file("nudge");
        let mut checkpointer = Checkpointer::start(&path).unwrap();
        log_rows(&writer);
        let before = file_len(&path);
        checkpointer.nudge();
        // Dropping waits for the thread, which takes the nudge first.
        drop(checkpointer);
        assert!(file_len(&path) > before + 100_000, "{} bytes, {before} before", file_len(&path));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn what_an_earlier_run_left_in_the_log_is_copied_at_start() {
        let (path, writer) = wal_file("start");
        log_rows(&writer);
        let before = file_len(&path);
        drop(Checkpointer::start(&path).unwrap());
        assert!(file_len(&path) > before + 100_000, "{} bytes, {before} before", file_len(&path));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn writes_nudge_once_every_so_many_rows() {
        let (path, writer) = wal_file("rows");
        let mut checkpointer = Checkpointer::start(&path).unwrap();
        log_rows(&writer);
        let before = file_len(&path);
        checkpointer.wrote(NUDGE_EVERY_ROWS - 1);
        drop(checkpointer);
        assert_eq!(file_len(&path), before, "not yet");
        let mut checkpointer = Checkpointer::start(&path).unwrap();
        log_rows(&writer);
        let before = file_len(&path);
        checkpointer.wrote(NUDGE_EVERY_ROWS - 1);
        checkpointer.wrote(1);
        drop(checkpointer);
        assert!(file_len(&path) > before + 100_000, "{} bytes, {before} before", file_len(&path));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
