//! Durable chat history: the storage thread and the handle the reactor holds.
//!
//! # Where this sits in the flow
//!
//! A message's bytes arrive on a socket, the reactor parses the frame, gives
//! the message its room sequence number, and then, instead of broadcasting
//! it straight away, hands it to us with [`Storage::send_all`] (all of one
//! turn's requests together). The reactor never waits on the disk: SQLite
//! lives on one *storage thread*, and the two sides talk through a pair of
//! one-way mailboxes. When a batch of messages has
//! committed, the storage thread queues a [`Reply::Committed`] and pokes the
//! reactor's `mio::Waker`; on its next turn the reactor drains
//! [`Storage::try_recv`] and only then broadcasts what is now durable. That
//! ordering is the whole point: if the server is killed with `kill -9` right
//! after a client received message `k`, messages `1..=k` are in the history
//! when it starts again.
//!
//! ```text
//!  reactor thread                      storage thread
//!  ──────────────                      ──────────────
//!  send_all([Append, ┐                 recv() blocks for the first turn
//!           Append,  ├─ requests ────▶ drain the turns already queued
//!           Read])   ┘                 BEGIN; every write; COMMIT
//!                                      answer the reads (they see the commit)
//!  try_recv() ◀────── replies ──────── Committed{upto}, Messages{ticket}
//!  (woken by the Waker) ◀──── wake() ─ once per batch
//! ```
//!
//! # Layout
//!
//! - `mod.rs` (this file): the types the reactor speaks ([`Request`],
//!   [`Reply`], [`StoredMessage`], [`RoomRecord`]), the [`Storage`] handle,
//!   and [`StorageError`].
//! - `worker.rs`: the storage thread's loop, which turns a drained batch of
//!   requests into one transaction and a handful of replies.
//! - `sqlite.rs`: the durable backend (schema, PRAGMAs, the batched write,
//!   the range read, the room directory).
//! - `memory.rs`: `--data none`, the same contract kept in a `HashMap`.
//! - `mailbox.rs`: the queues between the two threads, which wake the
//!   other side only after letting go of their lock.
//! - `lock.rs`: the advisory file lock that keeps two processes off one file.
//! - `checkpointer.rs`: the SQLite backend's second thread, which copies
//!   the write-ahead log into the file so that no commit waits for it.
//!
//! Both backends implement the small `Store` trait, so the thread loop,
//! and the reactor above it, cannot tell them apart.

mod checkpointer;
mod lock;
mod mailbox;
mod memory;
mod sqlite;
mod worker;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use mailbox::{Receiver, Sender};

/// One stored chat message (the room is carried alongside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The room's sequence number: 1, 2, 3, ... without gaps, assigned by the reactor.
    pub id: u64,
    /// When the server accepted the message, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// Who posted it, as the room showed the name at the time.
    pub username: String,
    /// The message text (at most 4,096 characters, checked by the reactor).
    pub text: String,
    /// Posted by a user whose signed token the server checked (its event
    /// carries `"verified": true`).
    pub verified: bool,
}

impl StoredMessage {
    /// What is left of message `id` once deleted: its id and time, no
    /// name and no text. The empty name marks it (a posted message always
    /// has a name), in memory and in SQLite alike, so a tombstone needs no
    /// column of its own.
    pub fn tombstone(id: u64, ts: u64) -> StoredMessage {
        StoredMessage { id, ts, username: String::new(), text: String::new(), verified: false }
    }

    /// Whether this is a deleted message's tombstone.
    pub fn is_deleted(&self) -> bool {
        self.username.is_empty()
    }
}

/// A ban as storage keeps it (see `auth::bans`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanRecord {
    /// The room.
    pub room: String,
    /// Whom it names: `user:<sub>` or `address:<ip>`.
    pub who: String,
    /// Until when, in milliseconds since the epoch.
    pub until: u64,
    /// Why.
    pub reason: String,
}

/// What the directory knows about a room.
///
/// [`Storage::open`] returns one of these per stored room so the reactor can
/// answer `/api/rooms` and continue each room's id sequence after a restart
/// without asking the storage thread anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomRecord {
    /// The room name (1–64 chars of `[A-Za-z0-9_-]`, checked by the router).
    pub name: String,
    /// When the room was first joined, in ms since the epoch.
    pub created: u64,
    /// When the newest stored message was posted (`None` for a room nobody has spoken in).
    pub last_post: Option<u64>,
    /// How many messages the room has stored.
    pub messages: u64,
    /// The newest message id (0 when there is none): the next message gets `last_id + 1`.
    pub last_id: u64,
}

/// A slice of one room's history: up to `limit` messages with
/// `after < id < before`, the NEWEST `limit` of them when `newest` is true
/// (scroll-back, last-N history) or the OLDEST `limit` when false (resume
/// with `?since=`, catching up), always returned sorted by id ascending.
///
/// The storage thread and the Redis stream answer the same ranges, so the
/// chat asks for history the same way wherever it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRange {
    /// The room to read.
    pub room: String,
    /// Exclusive lower bound on ids (0 for "from the start").
    pub after: u64,
    /// Exclusive upper bound on ids (`u64::MAX` for "up to the newest").
    pub before: u64,
    /// At most this many messages come back.
    pub limit: usize,
    /// Keep the newest `limit` of the range (true) or the oldest (false).
    pub newest: bool,
}

impl ReadRange {
    /// The newest `limit` messages of `room` (narrow it with [`ReadRange::before`]).
    pub fn newest(room: &str, limit: usize) -> ReadRange {
        ReadRange { room: room.to_string(), after: 0, before: u64::MAX, limit, newest: true }
    }

    /// The oldest `limit` messages of `room` with ids above `after`.
    pub fn after(room: &str, after: u64, limit: usize) -> ReadRange {
        ReadRange { room: room.to_string(), after, before: u64::MAX, limit, newest: false }
    }

    /// The same range, cut to ids below `before`.
    pub fn before(self, before: u64) -> ReadRange {
        ReadRange { before, ..self }
    }
}

/// What the reactor asks of the storage thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Make sure a room row exists (first join). Idempotent.
    CreateRoom {
        /// The room's name.
        room: String,
        /// When it was created, in ms since the epoch (ignored if the row exists).
        created: u64,
    },
    /// Append one message (id already assigned by the reactor, ids per room
    /// strictly increasing). Appends that arrive together are committed in
    /// ONE transaction; each Append gets a sequence number in arrival order
    /// (1, 2, 3, ... over the life of the handle) and the reactor learns they
    /// are durable through [`Reply::Committed`].
    Append {
        /// The room the message was posted in.
        room: String,
        /// The message itself.
        msg: StoredMessage,
    },
    /// Take a message's text and name out of the history, keeping its id
    /// and time as a tombstone ([`StoredMessage::tombstone`]), so ids stay
    /// gapless. Deleting a tombstone, or an id no longer stored, changes
    /// nothing. Numbered with the Appends (a *sequenced write*): the
    /// reactor learns it is durable through the same [`Reply::Committed`].
    Delete {
        /// The room.
        room: String,
        /// The message's id.
        id: u64,
    },
    /// Keep a ban (replacing the same who's earlier ban in the room), so
    /// that it outlives a restart until it lapses.
    Ban(BanRecord),
    /// Forget a ban.
    Unban {
        /// The room.
        room: String,
        /// Whom it named (`auth::bans`).
        who: String,
    },
    /// Read the messages `range` names. `ticket` is echoed back.
    Read {
        /// Chosen by the reactor to match the answer to whoever asked.
        ticket: u64,
        /// Which messages.
        range: ReadRange,
    },
    /// Commit what is pending and stop the thread.
    Shutdown,
}

impl Request {
    /// Whether it takes a sequence number (Append, Delete): the writes
    /// whose durability the reactor waits for.
    pub fn is_sequenced(&self) -> bool {
        matches!(self, Request::Append { .. } | Request::Delete { .. })
    }
}

/// What the storage thread answers.
///
/// Within one batch the thread queues `Committed` before any `Messages`, so
/// by the time the reactor handles a read's answer it already knows which
/// appends are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// All Appends with sequence number `<= upto` are durable (`Ok`) or
    /// failed (`Err(reason)`): the reactor then broadcasts them, or tells
    /// their senders.
    Committed {
        /// The highest Append sequence number this reply covers.
        upto: u64,
        /// Whether the transaction holding them committed.
        result: Result<(), String>,
    },
    /// Answer to [`Request::Read`]; `oldest_id` = the smallest id still
    /// stored for that room (`None` if the room has no messages), so the
    /// reactor can tell a client history no longer reaches back.
    ///
    /// If the read itself fails (a damaged file, say), the thread logs the
    /// error and answers with no messages and `oldest_id: None`, so that
    /// whoever waits on `ticket` is never left hanging.
    Messages {
        /// The ticket of the Read this answers.
        ticket: u64,
        /// The messages found, sorted by id ascending.
        messages: Vec<StoredMessage>,
        /// The smallest id still stored for the room.
        oldest_id: Option<u64>,
    },
    /// The data file's state changed: `Some(why)` when it was deleted or
    /// replaced underneath (writes are refused from then on, and the
    /// server is not ready), `None` when it is back.
    DataFile {
        /// What is wrong, or `None`.
        problem: Option<String>,
    },
}

/// Where history lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (`--data PATH`, default `./data/chatroom.db`); its
    /// parent folder is created if missing.
    Sqlite {
        /// The file.
        path: PathBuf,
        /// `--max-data-size`: the size the file may grow to, in bytes; past
        /// it a batch fails as on a full disk (SQLite's `max_page_count`).
        max_size: Option<u64>,
    },
    /// Memory only (`--data none`): the last `keep_per_room` messages of
    /// each room, gone when the process exits.
    Memory {
        /// How many of each room's newest messages to keep.
        keep_per_room: usize,
    },
}

impl Backend {
    /// A SQLite file with no size limit of its own.
    pub fn sqlite(path: PathBuf) -> Backend {
        Backend::Sqlite { path, max_size: None }
    }
}

/// What a backend must do; the storage thread drives one of these.
///
/// `Send` because the backend is opened on the caller's thread (so errors
/// reach `main`) and then moved onto the storage thread.
trait Store: Send {
    /// Apply one batch of writes ([`Write`]s, in arrival order) atomically:
    /// all of them or none.
    fn write_batch(&mut self, writes: &[Write]) -> Result<(), String>;

    /// The messages `range` names, ascending by id, plus the room's oldest
    /// stored id.
    fn read(&mut self, range: &ReadRange) -> Result<(Vec<StoredMessage>, Option<u64>), String>;

    /// Why writes must stop, if they must: the data file was deleted or
    /// replaced underneath the open connection. Checked before each batch
    /// of writes; a batch is refused while this says so.
    fn file_problem(&mut self) -> Option<String> {
        None
    }

    /// Called when no request has come for a while after some writes: the
    /// moment for housekeeping that would otherwise delay a commit (SQLite
    /// checkpoints its write-ahead log here).
    fn idle(&mut self) {}
}

/// One write inside a batch: the parts of [`Request`] that change the store.
///
/// The worker moves them out of the requests, so nothing is cloned on the
/// way to the disk.
#[derive(Debug)]
enum Write {
    /// See [`Request::CreateRoom`].
    CreateRoom { room: String, created: u64 },
    /// See [`Request::Append`].
    Append { room: String, msg: StoredMessage },
    /// See [`Request::Delete`].
    Delete { room: String, id: u64 },
    /// See [`Request::Ban`].
    Ban(BanRecord),
    /// See [`Request::Unban`].
    Unban { room: String, who: String },
}

/// Why storage could not start or stop cleanly. Its `Display` says what
/// went wrong *and* what the person running the server can do about it.
#[derive(Debug)]
pub enum StorageError {
    /// Another process (or another `Storage` in this one) holds the data file's lock.
    InUse {
        /// The data file asked for.
        path: PathBuf,
        /// The lock file beside it.
        lock: PathBuf,
    },
    /// A file-system step failed (creating the folder, opening or locking the lock file).
    Io {
        /// What we were doing, naming the path.
        context: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// SQLite refused the file (not a database, damaged, read-only, ...).
    Sqlite {
        /// What we were doing, naming the path.
        context: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file holds a schema this build does not know.
    Schema {
        /// The data file.
        path: PathBuf,
        /// The `PRAGMA user_version` found in it.
        found: i64,
    },
    /// The storage thread could not start, panicked, or failed its last commit.
    Thread(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::InUse { path, lock } => write!(
                f,
                "data file {} is in use by another chatroom process (lock {} is held); \
                 give each process its own --data",
                path.display(),
                lock.display()
            ),
            StorageError::Io { context, source } => write!(f, "{context}: {source}"),
            StorageError::Sqlite { context, source } => write!(f, "{context}: {source}"),
            StorageError::Schema { path, found } => write!(
                f,
                "data file {} has schema version {found}, but this build of chatroom knows \
                 version {}; run a newer chatroom on it or choose another --data",
                path.display(),
                sqlite::SCHEMA_VERSION
            ),
            StorageError::Thread(reason) => write!(f, "storage thread: {reason}"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            StorageError::Sqlite { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The reactor's end of the storage thread.
///
/// Every method returns at once: requests go into an unbounded mailbox, and
/// replies are picked up with [`Storage::try_recv`] when the `Waker` given to
/// [`Storage::open`] says some are ready.
pub struct Storage {
    /// `None` only while dropping, so the thread sees the mailbox close.
    /// Each message is one reactor turn's requests, so a turn's appends
    /// arrive together and land in one transaction.
    requests: Option<Sender<Vec<Request>>>,
    replies: Receiver<Reply>,
    /// `None` once joined (by [`Storage::shutdown`] or `Drop`).
    thread: Option<JoinHandle<Result<(), StorageError>>>,
    /// How many Appends were sent so far: the last sequence number handed out.
    appends_sent: u64,
    /// Replies made up on this side when the thread has gone (see `send_all`).
    orphans: VecDeque<Reply>,
    /// To wake the reactor for those made-up replies too.
    waker: Arc<mio::Waker>,
    /// The memory backend runs inline, on the caller's thread: pushing to a
    /// `VecDeque` needs no thread to keep the reactor from waiting, and the
    /// handoff (two context switches and a wake-up per turn) would cost more
    /// than the work. Its replies wait in `orphans` for [`Storage::try_recv`].
    inline: Option<(Box<dyn Store>, u64)>,
    /// The bans in force found at open, until taken.
    bans: Vec<BanRecord>,
}

impl Storage {
    /// Opens the backend on the calling thread (so errors such as a locked or
    /// unwritable file reach `main` with a clear message: they name the path
    /// and what to do), creates the schema, loads the whole room directory,
    /// then spawns the storage thread. `waker` is called (`waker.wake()`)
    /// after each batch of replies is queued.
    pub fn open(backend: Backend, waker: Arc<mio::Waker>) -> Result<(Storage, Vec<RoomRecord>), StorageError> {
        let backend_is_memory = matches!(backend, Backend::Memory { .. });
        let (store, directory, bans): (Box<dyn Store>, Vec<RoomRecord>, Vec<BanRecord>) = match backend {
            Backend::Sqlite { path, max_size } => {
                let (store, directory, bans) = sqlite::SqliteStore::open(&path, max_size)?;
                log::info!("storage: {} opened, {} rooms in the directory", path.display(), directory.len());
                (Box::new(store), directory, bans)
            }
            Backend::Memory { keep_per_room } => {
                log::info!("storage: in memory only, keeping the last {keep_per_room} messages per room");
                (Box::new(memory::MemoryStore::new(keep_per_room)), Vec::new(), Vec::new())
            }
        };

        let (request_tx, request_rx) = mailbox::mailbox();
        let (reply_tx, reply_rx) = mailbox::mailbox();
        if backend_is_memory {
            // No thread: see `Storage::inline`.
            drop((request_rx, reply_tx));
            let storage = Storage {
                requests: None,
                replies: reply_rx,
                thread: None,
                appends_sent: 0,
                orphans: VecDeque::new(),
                waker,
                inline: Some((store, 0)),
                bans,
            };
            return Ok((storage, directory));
        }
        let thread_waker = Arc::clone(&waker);
        let thread = std::thread::Builder::new()
            .name("storage".to_string())
            .spawn(move || worker::run(store, request_rx, reply_tx, thread_waker))
            .map_err(|e| StorageError::Thread(format!("could not start: {e}")))?;

        let storage = Storage {
            requests: Some(request_tx),
            replies: reply_rx,
            thread: Some(thread),
            appends_sent: 0,
            orphans: VecDeque::new(),
            waker,
            inline: None,
            bans,
        };
        Ok((storage, directory))
    }

    /// Queues several requests as one message (a whole reactor turn's), so
    /// the storage thread cannot wake up halfway through them and commit a
    /// turn in pieces. Returns the sequence number of the last Append (0 if
    /// there is none).
    pub fn send_all(&mut self, reqs: Vec<Request>) -> u64 {
        let mut seq = 0;
        for req in &reqs {
            if req.is_sequenced() {
                self.appends_sent += 1;
                seq = self.appends_sent;
            }
        }
        if reqs.is_empty() {
            return seq;
        }
        if let Some((store, appends_done)) = &mut self.inline {
            let mut batch = worker::Batch::default();
            batch.add(reqs);
            let (replies, _) = batch.run(store.as_mut(), appends_done);
            self.orphans.extend(replies);
            return seq;
        }
        let first_seq = self.appends_sent - reqs.iter().filter(|r| r.is_sequenced()).count() as u64;
        let Some(requests) = &self.requests else {
            return seq;
        };
        // The mailbox only refuses when the storage thread has gone, which
        // means it panicked: it never leaves on its own while we hold the
        // sender. Nobody will ever answer, so answer here, with a failure,
        // rather than leave the reactor waiting on a reply that never comes.
        if let Err(reqs) = requests.send(reqs) {
            log::error!("storage: the storage thread has stopped; request refused");
            let mut n = first_seq;
            for req in reqs {
                match req {
                    Request::Append { .. } | Request::Delete { .. } => {
                        n += 1;
                        self.orphans.push_back(Reply::Committed {
                            upto: n,
                            result: Err("the storage thread has stopped".to_string()),
                        })
                    }
                    Request::Read { ticket, .. } => {
                        self.orphans.push_back(Reply::Messages { ticket, messages: Vec::new(), oldest_id: None })
                    }
                    Request::CreateRoom { .. } | Request::Ban(_) | Request::Unban { .. } | Request::Shutdown => {}
                }
            }
            if let Err(e) = self.waker.wake() {
                log::error!("storage: could not wake the reactor: {e}");
            }
        }
        seq
    }

    /// The bans in force the data file held at open (once; empty after).
    pub fn take_bans(&mut self) -> Vec<BanRecord> {
        std::mem::take(&mut self.bans)
    }

    /// Take one reply if any is ready (never blocks).
    pub fn try_recv(&mut self) -> Option<Reply> {
        if let Some(reply) = self.orphans.pop_front() {
            return Some(reply);
        }
        // Empty is "nothing yet". Closed means the thread has gone; `send_all`
        // makes up the replies from then on, so both read as None.
        self.replies.try_recv().ok().flatten()
    }

    /// Send Shutdown and join the thread (used at graceful shutdown, after
    /// which all appends are durable).
    pub fn shutdown(mut self) -> Result<(), StorageError> {
        if let Some(requests) = self.requests.take() {
            // A refusal means the thread is already gone; join says why.
            let _ = requests.send(vec![Request::Shutdown]);
        }
        self.join()
    }

    /// Wait for the storage thread to finish and turn a panic into an error.
    fn join(&mut self) -> Result<(), StorageError> {
        match self.thread.take() {
            Some(thread) => {
                thread.join().map_err(|_| StorageError::Thread("panicked; see the log above".to_string()))?
            }
            None => Ok(()),
        }
    }
}

impl Drop for Storage {
    /// Dropping the handle without [`Storage::shutdown`] (an early return in
    /// `main`, say) still commits what was queued: closing the mailbox tells
    /// the thread to finish, and we wait for it so the process does not exit
    /// under a half-written batch.
    fn drop(&mut self) {
        self.requests = None;
        if let Err(e) = self.join() {
            log::error!("storage: {e}");
        }
    }
}
