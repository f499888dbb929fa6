//! The storage thread's loop: one drained batch of requests becomes one
//! transaction, then the answers, then one wake-up of the reactor.
//!
//! This is where "broadcast only after commit" is made cheap. The reactor
//! may queue hundreds of messages in one of its turns; we take all of them
//! (and whatever else arrived meanwhile) in one go and pay for one commit,
//! the same idea as uWebSockets committing its pub/sub batches once per loop
//! iteration. Under light load a batch is a single message and commits at
//! once; under heavy load batches grow by themselves, because requests pile
//! up in the channel while the previous commit runs.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use super::{Reply, Request, StorageError, Store, Write};

/// Most requests taken into one batch. A bound keeps one transaction (and
/// the wait of the reads queued behind it) short even when the reactor
/// outruns the disk; 10,000 messages of chat commit in a few milliseconds.
const MAX_BATCH_REQUESTS: usize = 10_000;

/// A Read waiting for its batch's commit, so it sees the writes before it.
struct PendingRead {
    ticket: u64,
    room: String,
    after: u64,
    before: u64,
    limit: usize,
    newest: bool,
}

/// Runs on the storage thread until Shutdown or until the handle is dropped;
/// returns the last commit's failure, if the very last batch failed.
pub(super) fn run(
    mut store: Box<dyn Store>,
    requests: Receiver<Request>,
    replies: Sender<Reply>,
    waker: Arc<mio::Waker>,
) -> Result<(), StorageError> {
    // Counts Appends exactly as `Storage::send` does: the channel keeps them
    // in order, so the n-th Append we receive is the one that got number n.
    let mut appends_received: u64 = 0;
    let mut writes: Vec<Write> = Vec::new();
    let mut reads: Vec<PendingRead> = Vec::new();

    loop {
        // Sleep until there is work. An error here means the handle is gone
        // and nothing more will come; everything earlier was handled by the
        // previous turn, so there is nothing left to commit.
        let Ok(first) = requests.recv() else {
            return Ok(());
        };

        // Then take everything already waiting, without blocking again.
        let mut stop = false;
        let mut next = Some(first);
        let mut taken = 0;
        let mut appends_in_batch = 0;
        while let Some(request) = next.take() {
            taken += 1;
            match request {
                Request::CreateRoom { room, created } => {
                    writes.push(Write::CreateRoom { room, created });
                }
                Request::Append { room, msg } => {
                    appends_in_batch += 1;
                    writes.push(Write::Append { room, msg });
                }
                Request::Read { ticket, room, after, before, limit, newest } => {
                    reads.push(PendingRead { ticket, room, after, before, limit, newest })
                }
                Request::Shutdown => {
                    // The handle sends nothing after Shutdown; stop taking.
                    stop = true;
                    break;
                }
            }
            if taken < MAX_BATCH_REQUESTS {
                // Empty: the batch is complete. Disconnected: the handle was
                // dropped; finish this batch, and the next recv() ends us.
                next = requests.try_recv().ok();
            }
        }

        // One transaction for every write of the batch. Its outcome is the
        // outcome of each Append in it: a failure (disk full, a duplicate id
        // from a reactor bug) fails them all, and the reactor tells each
        // sender rather than broadcasting something that is not stored.
        let result = if writes.is_empty() { Ok(()) } else { store.write_batch(&writes) };
        if let Err(reason) = &result {
            log::error!("storage: a batch of {} writes failed: {reason}", writes.len());
        }
        writes.clear();

        let mut queued = false;
        if appends_in_batch > 0 {
            appends_received += appends_in_batch;
            queued |= replies.send(Reply::Committed { upto: appends_received, result: result.clone() }).is_ok();
        }

        // Reads run after the commit, so a read sees every append sent
        // before it (and, harmlessly, any later one of the same batch: the
        // reactor's bounds decide what it wants).
        for read in reads.drain(..) {
            let (messages, oldest_id) = match store.read(&read.room, read.after, read.before, read.limit, read.newest) {
                Ok(found) => found,
                // There is no error in `Reply::Messages`; an empty answer
                // keeps the asker moving, and the log says what broke.
                Err(reason) => {
                    log::error!("storage: reading room {:?} failed: {reason}", read.room);
                    (Vec::new(), None)
                }
            };
            queued |= replies.send(Reply::Messages { ticket: read.ticket, messages, oldest_id }).is_ok();
        }

        // One wake-up per batch, not per reply: the reactor drains them all
        // on its next turn anyway. (A failed send above means the handle is
        // gone, so there is no one to wake.)
        if queued && let Err(e) = waker.wake() {
            log::error!("storage: could not wake the reactor: {e}");
        }

        if stop {
            return result
                .map_err(|reason| StorageError::Thread(format!("the last commit before shutdown failed: {reason}")));
        }
    }
}
