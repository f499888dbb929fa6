//! The hand-off between the reactor and the storage thread: a queue behind a
//! mutex, and a wake-up given only after the mutex is let go.
//!
//! Why not `std::sync::mpsc`: its sender wakes a sleeping receiver while it
//! still holds the channel's internal lock. On one core the woken storage
//! thread runs at once (the scheduler favours a thread that has slept),
//! commits, and comes back for more, only to find that lock still held by
//! the reactor it preempted: two more context switches and two futex calls
//! per message, on the path every chat message takes before its broadcast
//! (`strace -f -p <pid>` showed `FUTEX_WAIT_PRIVATE, 2` after each commit).
//! Here [`Sender::send`] pushes, unlocks, and only then wakes the receiver,
//! and only if it is asleep; a receiver that is awake (the reactor, which is
//! woken by its `mio::Waker` and polls with [`Receiver::try_recv`]) costs
//! the sender no futex call at all.
//!
//! One sender, one receiver. When the sender goes, the receiver still gets
//! what is queued, then `Closed`; when the receiver goes, each later `send`
//! returns its item. That is how each side learns the other has gone.

use std::cell::Cell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The receiving side has nothing more to wait for: the sender is gone and
/// the queue is empty.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Closed;

/// Why [`Receiver::recv_timeout`] came back empty.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RecvTimeoutError {
    /// Nothing arrived in time.
    Timeout,
    /// The sender is gone and the queue is empty.
    Closed,
}

struct State<T> {
    queue: VecDeque<T>,
    /// The receiver sleeps on `ready` and needs a notify.
    waiting: bool,
    /// One side was dropped.
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Shared<T> {
    /// Locks the state. Nothing panics while holding it (a push, a pop, a
    /// flag), so a poisoned lock still guards consistent data: take it.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        let waiting = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::replace(&mut state.waiting, false)
        };
        if waiting {
            self.ready.notify_one();
        }
    }
}

/// The sending half.
pub(super) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half. It may move to another thread but not be shared
/// (`!Sync`): `waiting` is one flag, so two threads waiting on it at once
/// could lose a wake-up.
pub(super) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    _one_thread: PhantomData<Cell<()>>,
}

/// A new, open mailbox.
pub(super) fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { queue: VecDeque::new(), waiting: false, closed: false }),
        ready: Condvar::new(),
    });
    (Sender { shared: Arc::clone(&shared) }, Receiver { shared, _one_thread: PhantomData })
}

impl<T> Sender<T> {
    /// Queues `item`, or gives it back if the receiver has gone.
    pub(super) fn send(&self, item: T) -> Result<(), T> {
        let waiting = {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(item);
            }
            state.queue.push_back(item);
            std::mem::replace(&mut state.waiting, false)
        };
        // The lock is released: if the receiver runs right now, on this
        // core, it finds the mutex free.
        if waiting {
            self.shared.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl<T> Receiver<T> {
    /// The oldest queued item, if there is one; `Err(Closed)` once the
    /// sender is gone and nothing is left.
    pub(super) fn try_recv(&self) -> Result<Option<T>, Closed> {
        let mut state = self.shared.lock();
        match state.queue.pop_front() {
            Some(item) => Ok(Some(item)),
            None if state.closed => Err(Closed),
            None => Ok(None),
        }
    }

    /// Waits for an item as long as it takes.
    pub(super) fn recv(&self) -> Result<T, Closed> {
        // Without a deadline the only way out empty-handed is Closed.
        self.wait(None).map_err(|_| Closed)
    }

    /// Waits for an item at most `timeout`.
    pub(super) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.wait(Some(Instant::now() + timeout))
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let mut state = self.shared.lock();
        loop {
            if let Some(item) = state.queue.pop_front() {
                state.waiting = false;
                return Ok(item);
            }
            if state.closed {
                return Err(RecvTimeoutError::Closed);
            }
            state.waiting = true;
            state = match deadline {
                None => self.shared.ready.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                        state.waiting = false;
                        return Err(RecvTimeoutError::Timeout);
                    };
                    self.shared.ready.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_in_order_and_closing_is_seen_after_the_last() {
        let (tx, rx) = mailbox();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        assert_eq!(rx.try_recv(), Ok(Some(1)));
        drop(tx);
        assert_eq!(rx.recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(Closed));
        assert_eq!(rx.recv_timeout(Duration::from_millis(1)), Err(RecvTimeoutError::Closed));
    }

    #[test]
    fn a_send_to_a_dropped_receiver_gives_the_item_back() {
        let (tx, rx) = mailbox();
        drop(rx);
        assert_eq!(tx.send(7), Err(7));
    }

    #[test]
    fn an_empty_open_mailbox_times_out() {
        let (tx, rx) = mailbox::<u8>();
        assert_eq!(rx.try_recv(), Ok(None));
        assert_eq!(rx.recv_timeout(Duration::from_millis(5)), Err(RecvTimeoutError::Timeout));
        drop(tx);
    }

    #[test]
    fn a_sleeping_receiver_is_woken_by_a_send_from_another_thread() {
        let (tx, rx) = mailbox();
        let receiver = std::thread::spawn(move || rx.recv());
        // Whether the thread is already asleep or not, it must get the item:
        // either it finds it queued, or the send wakes it.
        tx.send(42).unwrap();
        assert_eq!(receiver.join().unwrap(), Ok(42));
    }

    #[test]
    fn a_sleeping_receiver_is_woken_when_the_sender_goes() {
        let (tx, rx) = mailbox::<u8>();
        let receiver = std::thread::spawn(move || rx.recv());
        drop(tx);
        assert_eq!(receiver.join().unwrap(), Err(Closed));
    }
}
