//! The storage thread's loop: one drained batch of requests becomes one
//! transaction, then the answers, then one wake-up of the reactor.
//!
//! This is where "broadcast only after commit" is made cheap. The reactor
//! sends each of its turns' requests as one message; we take all of them
//! (and whatever else arrived meanwhile) in one go and pay for one commit,
//! the same idea as uWebSockets committing its pub/sub batches once per loop
//! iteration. Under light load a batch is a single turn and commits at once;
//! under heavy load batches grow by themselves, because turns pile up in the
//! mailbox while the previous commit runs.
//!
//! [`Batch`] is the unit of work. The thread runs it for SQLite; the memory
//! backend runs the very same code inline, on the reactor's thread, because
//! a `VecDeque` push needs no thread to keep the loop from waiting.

use std::sync::Arc;
use std::time::Duration;

use super::mailbox::{Receiver, RecvTimeoutError, Sender};
use super::{ReadRange, Reply, Request, StorageError, Store, Write};

/// Most requests taken into one batch. A bound keeps one transaction (and
/// the wait of the reads queued behind it) short even when the reactor
/// outruns the disk; 10,000 messages of chat commit in a few milliseconds.
const MAX_BATCH_REQUESTS: usize = 10_000;

/// How long the thread waits, after writing, for more work before it calls
/// `Store::idle` (the checkpoint). Short enough that a pause in a
/// conversation is enough; long enough that a busy room never waits on it.
const IDLE_AFTER: Duration = Duration::from_millis(250);

/// Requests gathered for one transaction.
#[derive(Default)]
pub(super) struct Batch {
    writes: Vec<Write>,
    /// Reads (ticket, range) waiting for the batch's commit, so they see the
    /// writes before them.
    reads: Vec<(u64, ReadRange)>,
    /// Sequenced writes taken (Appends and Deletes).
    appends: u64,
    /// Requests taken (for `MAX_BATCH_REQUESTS`).
    taken: usize,
    /// A Shutdown was among them: nothing after it is taken.
    pub(super) stop: bool,
    /// What `Store::file_problem` said last (reported when it changes).
    file_problem: Option<String>,
}

impl Batch {
    /// Adds one turn's requests.
    pub(super) fn add(&mut self, turn: Vec<Request>) {
        for request in turn {
            self.taken += 1;
            match request {
                Request::CreateRoom { room, created } => self.writes.push(Write::CreateRoom { room, created }),
                Request::Append { room, msg } => {
                    self.appends += 1;
                    self.writes.push(Write::Append { room, msg });
                }
                Request::Delete { room, id } => {
                    self.appends += 1;
                    self.writes.push(Write::Delete { room, id });
                }
                Request::Ban(ban) => self.writes.push(Write::Ban(ban)),
                Request::Unban { room, who } => self.writes.push(Write::Unban { room, who }),
                Request::Read { ticket, range } => self.reads.push((ticket, range)),
                Request::Shutdown => {
                    // The handle sends nothing after Shutdown; stop taking.
                    self.stop = true;
                    return;
                }
            }
        }
    }

    /// Whether more turns may join this batch.
    fn has_room(&self) -> bool {
        !self.stop && self.taken < MAX_BATCH_REQUESTS
    }

    /// Commits the writes in one transaction, then answers the reads;
    /// `appends_done` counts Appends over the life of the handle (the n-th
    /// one received is the one `Storage::send_all` numbered n). Returns the
    /// replies and the commit's outcome.
    pub(super) fn run(&mut self, store: &mut dyn Store, appends_done: &mut u64) -> (Vec<Reply>, Result<(), String>) {
        // One transaction for every write of the batch. Its outcome is the
        // outcome of each Append in it: a failure (disk full, a duplicate id
        // from a reactor bug) fails them all, and the reactor tells each
        // sender rather than broadcasting something that is not stored.
        let mut replies = Vec::with_capacity(1 + self.reads.len());
        let problem = if self.writes.is_empty() { None } else { store.file_problem() };
        if problem != self.file_problem && !self.writes.is_empty() {
            match &problem {
                Some(why) => log::error!("storage: {why}; posts are refused until it is back"),
                None => log::info!("storage: the data file is back; posts are stored again"),
            }
            self.file_problem = problem.clone();
            replies.push(Reply::DataFile { problem: problem.clone() });
        }
        let result = match problem {
            Some(why) => Err(why),
            None if self.writes.is_empty() => Ok(()),
            None => store.write_batch(&self.writes),
        };
        if let Err(reason) = &result
            && self.file_problem.is_none()
        {
            log::error!("storage: a batch of {} writes failed: {reason}", self.writes.len());
        }
        if self.appends > 0 {
            *appends_done += self.appends;
            replies.push(Reply::Committed { upto: *appends_done, result: result.clone() });
        }
        // Reads run after the commit, so a read sees every append sent
        // before it (and, harmlessly, any later one of the same batch: the
        // reactor's bounds decide what it wants).
        for (ticket, range) in self.reads.drain(..) {
            let (messages, oldest_id) = match store.read(&range) {
                Ok(found) => found,
                // There is no error in `Reply::Messages`; an empty answer
                // keeps the asker moving, and the log says what broke.
                Err(reason) => {
                    log::error!("storage: reading room {:?} failed: {reason}", range.room);
                    (Vec::new(), None)
                }
            };
            replies.push(Reply::Messages { ticket, messages, oldest_id });
        }
        self.writes.clear();
        self.appends = 0;
        self.taken = 0;
        (replies, result)
    }
}

/// Runs on the storage thread until Shutdown or until the handle is dropped;
/// returns the last commit's failure, if the very last batch failed.
pub(super) fn run(
    mut store: Box<dyn Store>,
    requests: Receiver<Vec<Request>>,
    replies: Sender<Reply>,
    waker: Arc<mio::Waker>,
) -> Result<(), StorageError> {
    let mut appends_done: u64 = 0;
    let mut batch = Batch::default();
    // Whether something was written since the last `idle`.
    let mut wrote = false;
    loop {
        // Sleep until there is work; after writes, only until the store is
        // due its housekeeping. An error here means the handle is gone
        // and nothing more will come; everything earlier was handled by the
        // previous turn, so there is nothing left to commit.
        let next = if wrote {
            match requests.recv_timeout(IDLE_AFTER) {
                Ok(turn) => Ok(turn),
                Err(RecvTimeoutError::Timeout) => {
                    store.idle();
                    wrote = false;
                    continue;
                }
                Err(RecvTimeoutError::Closed) => Err(()),
            }
        } else {
            requests.recv().map_err(|_| ())
        };
        let Ok(first) = next else {
            return Ok(());
        };
        batch.add(first);
        // Then take every turn already waiting, without blocking again.
        // Empty: the batch is complete. Closed: the handle was dropped;
        // finish this batch, and the next recv() ends us.
        while batch.has_room() {
            match requests.try_recv() {
                Ok(Some(turn)) => batch.add(turn),
                Ok(None) | Err(_) => break,
            }
        }

        wrote |= !batch.writes.is_empty();
        let (answers, result) = batch.run(store.as_mut(), &mut appends_done);
        let mut queued = false;
        for reply in answers {
            queued |= replies.send(reply).is_ok();
        }
        // One wake-up per batch, not per reply: the reactor drains them all
        // on its next turn anyway. (A failed send above means the handle is
        // gone, so there is no one to wake.)
        if queued && let Err(e) = waker.wake() {
            log::error!("storage: could not wake the reactor: {e}");
        }

        if batch.stop {
            // Leave a tidy file: the inbox filed, the log checkpointed.
            store.idle();
            return result
                .map_err(|reason| StorageError::Thread(format!("the last commit before shutdown failed: {reason}")));
        }
    }
}
