//! The durable backend: chat history in one SQLite file.
//!
//! Opened on the caller's thread by [`Storage::open`] (so a bad `--data`
//! stops `main` with a message), then moved onto the storage thread, which
//! is the only place that touches it. The worker hands us one batch of
//! writes per turn and we make it one transaction; reads come after.
//!
//! Four tables, keyed the way they are written and read:
//!
//! - `messages(room, id, ...)` is `WITHOUT ROWID` with `PRIMARY KEY(room,
//!   id)`: the rows of one room sit together in id order inside the primary
//!   key's b-tree, so "the 50 messages before id 1,000" is one seek and a
//!   short walk, and there is no second index to keep up to date.
//! - `inbox(seq, room, id, ...)` is where a message is first written, in
//!   arrival order. Filing it straight into `messages` would dirty the
//!   newest page of its room's run of rows: with posts spread over 100
//!   rooms, a commit of 100 messages writes 100 pages (400 KB) to the log
//!   and the checkpoint writes them again. Appended to `inbox` they fill
//!   one or two pages. Every `MERGE_ROWS` messages (and whenever the thread
//!   is idle) the inbox is filed into `messages` sorted by room, in the same
//!   transaction as the batch that fills it, so each room's page is written
//!   once per merge instead of once per message: an LSM tree's two levels,
//!   in SQL. Reads look in both; the inbox is small, so scanning it is cheap.
//! - `rooms(name, created)` is the directory the reactor loads at startup.
//! - `users(name, first_seen, last_seen)`, the original app's user model,
//!   kept up to date so names can be listed later. It is brought up to date
//!   from the inbox's `username`s when the inbox is filed, not per batch: a
//!   chat where every visitor is new would otherwise dirty a page of it per
//!   message. Nothing is lost to a crash, since the inbox is durable.
//!
//! Durability: `journal_mode=WAL` with `synchronous=NORMAL`. A commit
//! appends to the write-ahead log and returns without `fsync`; the log is
//! synced at checkpoints, which a thread of their own runs
//! (`checkpointer.rs`). A process crash (`kill -9`) loses nothing that
//! committed, because the data is in the OS's page cache and the WAL is
//! replayed on the next open; a power cut can lose the last transactions
//! since the previous checkpoint, but never corrupts the file. That is the
//! trade chosen: crash-safe history at a price per message that the
//! bench in `benches/storage.rs` measures.
//!
//! [`Storage::open`]: super::Storage::open

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::checkpointer::Checkpointer;
use super::lock::DataLock;
use super::{BanRecord, ReadRange, RoomRecord, StorageError, Store, StoredMessage, Write};

/// Pages in the write-ahead log before the storage connection checkpoints
/// it itself (see `open`): about 16 MiB.
pub(super) const WAL_BACKSTOP_PAGES: i64 = 4_000;

/// The size a write-ahead log file is cut back to when it starts over.
const WAL_KEEP_BYTES: i64 = 16 << 20;

/// The schema this build writes, kept in `PRAGMA user_version`. A file with
/// a higher number was made by a newer chatroom, and we refuse it rather
/// than write rows it would not expect.
pub(super) const SCHEMA_VERSION: i64 = 3;

/// How long a statement waits for a lock held by another connection. We
/// hold the only writer's lock file, so the other connections are our
/// checkpoint thread's (whose locks are brief) and perhaps a person's
/// `sqlite3` shell; a short wait, then an error we log, beats stalling
/// every message behind it.
const BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// Schema version 2 added the inbox (see the module docs), version 3 the
/// `verified` column (a message of a user with a signed token). A macro so
/// that `CREATE_SCHEMA` can include it with `concat!`.
macro_rules! create_inbox {
    () => {
        "
        CREATE TABLE IF NOT EXISTS inbox(
            seq      INTEGER PRIMARY KEY,
            room     TEXT NOT NULL,
            id       INTEGER NOT NULL,
            ts       INTEGER NOT NULL,
            username TEXT NOT NULL,
            text     TEXT NOT NULL,
            verified INTEGER NOT NULL DEFAULT 0
        );
        "
    };
}

/// Version 3's column, added to files of versions 1 and 2.
const ADD_VERIFIED_TO_MESSAGES: &str = "ALTER TABLE messages ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;";
const ADD_VERIFIED_TO_INBOX: &str = "ALTER TABLE inbox ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;";

/// The schema, created once in a fresh file.
const CREATE_SCHEMA: &str = concat!(
    "
    CREATE TABLE IF NOT EXISTS users(
        name       TEXT PRIMARY KEY,
        first_seen INTEGER,
        last_seen  INTEGER
    );
    CREATE TABLE IF NOT EXISTS rooms(
        name    TEXT PRIMARY KEY,
        created INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS messages(
        room     TEXT NOT NULL,
        id       INTEGER NOT NULL,
        ts       INTEGER NOT NULL,
        username TEXT NOT NULL,
        text     TEXT NOT NULL,
        verified INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(room, id)
    ) WITHOUT ROWID;
",
    create_inbox!()
);

/// One row per room with its message count, newest id and newest time.
///
/// The grouped subquery reads every message once, walking the primary key
/// in (room, id) order, so startup is O(messages). That is fine for a chat
/// server's history (a million messages take well under a second) and
/// keeps the schema free of counters that every batch would have to keep
/// in step. If history grows into the hundreds of millions, the fix is a
/// `rooms.last_id / messages / last_post` kept by `write_batch`, making
/// this O(rooms).
const LOAD_DIRECTORY: &str = "
    SELECT r.name, r.created, m.last_post, m.messages, m.last_id
    FROM rooms AS r
    LEFT JOIN (
        SELECT room, MAX(ts) AS last_post, COUNT(*) AS messages, MAX(id) AS last_id
        FROM messages
        GROUP BY room
    ) AS m ON m.room = r.name
    ORDER BY r.name
";

/// A room row for a first join, or for the first message of a batch in a
/// room; an existing row keeps its original `created`.
const UPSERT_ROOM: &str = "
    INSERT INTO rooms(name, created) VALUES (?1, ?2)
    ON CONFLICT(name) DO NOTHING
";

/// The message itself, appended to the inbox.
const INSERT_MESSAGE: &str = "
    INSERT INTO inbox(room, id, ts, username, text, verified) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
";

/// Bans that outlive a restart (`auth::bans`). Created in any file, of
/// any schema version, when missing: a table an older chatroom does not
/// know changes nothing for it, so it needs no new version.
const CREATE_BANS: &str = "
    CREATE TABLE IF NOT EXISTS bans(
        room   TEXT NOT NULL,
        who    TEXT NOT NULL,
        until  INTEGER NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY(room, who)
    ) WITHOUT ROWID;
";
const UPSERT_BAN: &str = "INSERT OR REPLACE INTO bans(room, who, until, reason) VALUES (?1, ?2, ?3, ?4)";
const DELETE_BAN: &str = "DELETE FROM bans WHERE room = ?1 AND who = ?2";

/// A deleted message's tombstone ([`StoredMessage::tombstone`]): its
/// name and text emptied where the row is, the inbox or `messages`.
/// `secure_delete = FAST` (set at open) zeroes the old bytes in the pages
/// it rewrites, so the text does not linger in the page's free space.
const DELETE_MESSAGE: &str = "
    UPDATE messages SET username = '', text = '', verified = 0 WHERE room = ?1 AND id = ?2;
";
const DELETE_INBOX_MESSAGE: &str = "
    UPDATE inbox SET username = '', text = '', verified = 0 WHERE room = ?1 AND id = ?2;
";

/// Files the inbox into `messages`, sorted so each room's rows go in as
/// one run, and its posters into `users` (not a tombstone's empty name;
/// a WHERE is also SQLite's way of telling an upsert's ON from a join's).
const MERGE_INBOX: &str = "
    INSERT INTO users(name, first_seen, last_seen)
        SELECT username, min(ts), max(ts) FROM inbox WHERE username <> '' GROUP BY username
        ON CONFLICT(name) DO UPDATE SET
            first_seen = min(first_seen, excluded.first_seen),
            last_seen = max(last_seen, excluded.last_seen);
    INSERT INTO messages(room, id, ts, username, text, verified)
        SELECT room, id, ts, username, text, verified FROM inbox ORDER BY room, id;
    DELETE FROM inbox;
";

/// Whether (room, id) is stored already: asked only when an id is not
/// above the room's newest, so the inbox scan is off the common path.
const ALREADY_STORED: &str = "
    SELECT EXISTS(SELECT 1 FROM messages WHERE room = ?1 AND id = ?2)
        OR EXISTS(SELECT 1 FROM inbox WHERE room = ?1 AND id = ?2)
";

/// Messages in the inbox before it is filed into `messages`.
pub(super) const MERGE_ROWS: usize = 2_000;

/// The newest `?4` messages in `(?2, ?3)`: the newest `?4` filed ones
/// (walked backwards from `?3`) and the inbox's, newest first.
const READ_NEWEST: &str = "
    SELECT id, ts, username, text, verified FROM (
        SELECT * FROM (
            SELECT id, ts, username, text, verified FROM messages
            WHERE room = ?1 AND id > ?2 AND id < ?3
            ORDER BY id DESC LIMIT ?4
        )
        UNION ALL
        SELECT id, ts, username, text, verified FROM inbox
        WHERE room = ?1 AND id > ?2 AND id < ?3
    )
    ORDER BY id DESC LIMIT ?4
";

/// The oldest `?4` messages in `(?2, ?3)`, from both places.
const READ_OLDEST: &str = "
    SELECT id, ts, username, text, verified FROM (
        SELECT * FROM (
            SELECT id, ts, username, text, verified FROM messages
            WHERE room = ?1 AND id > ?2 AND id < ?3
            ORDER BY id ASC LIMIT ?4
        )
        UNION ALL
        SELECT id, ts, username, text, verified FROM inbox
        WHERE room = ?1 AND id > ?2 AND id < ?3
    )
    ORDER BY id ASC LIMIT ?4
";

/// The room's oldest id: the first key of its run in `messages` (one seek),
/// or, for a room whose messages are all still in the inbox, the inbox's.
const OLDEST_ID: &str = "
    SELECT coalesce(
        (SELECT id FROM messages WHERE room = ?1 ORDER BY id ASC LIMIT 1),
        (SELECT min(id) FROM inbox WHERE room = ?1)
    )
";

/// The SQLite backend, living on the storage thread.
pub(super) struct SqliteStore {
    // Field order is drop order: the checkpoint thread stops, then the
    // connection closes (the last one: it checkpoints the WAL and removes
    // it), then the lock is released for the next process.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    _lock: DataLock,
    /// Each room's newest stored id: an append above it cannot be a
    /// duplicate, which is what lets the inbox go without a unique index.
    /// (A room in here has its row in `rooms`, too.)
    last_ids: HashMap<String, u64>,
    /// Rows in the inbox now.
    inbox_rows: usize,
    /// The data file's path, and the file it named when it was opened
    /// (device, inode): see [`Store::file_problem`].
    path: std::path::PathBuf,
    identity: (u64, u64),
}

/// The (device, inode) `path` names now.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

impl SqliteStore {
    /// Lock, open and prepare `path`, and load the room directory.
    pub(super) fn open(
        path: &Path,
        max_size: Option<u64>,
    ) -> Result<(SqliteStore, Vec<RoomRecord>, Vec<BanRecord>), StorageError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StorageError::Io {
                context: format!(
                    "cannot create folder {} for data file {}; choose a writable --data \
                     (or --data none to keep history in memory only)",
                    parent.display(),
                    path.display()
                ),
                source,
            })?;
        }

        // Lock before SQLite opens anything, so a second process never even
        // replays the first one's WAL.
        let lock = DataLock::acquire(path)?;

        let fail = |step: &str| {
            let path = path.to_path_buf();
            let step = step.to_string();
            move |source: rusqlite::Error| sqlite_error(&path, &step, source)
        };

        let mut conn = Connection::open(path).map_err(fail("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail("set busy_timeout"))?;
        // Normal locking (not `locking_mode=EXCLUSIVE`): the checkpoint
        // thread's connection shares the file (see `checkpointer.rs`), and
        // a sqlite3 shell can read it while the server runs.
        //
        // The first statement that reads the file: "file is not a database"
        // shows up here.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(fail("switch to WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Some file systems (no shared memory) cannot do WAL; SQLite
            // stays in its rollback journal, which is slower but still safe.
            log::warn!("storage: {} runs in journal_mode={mode}, not WAL; commits will be slower", path.display());
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(fail("set synchronous=NORMAL"))?;
        if let Some(max_size) = max_size {
            // SQLite counts pages, and never sets the limit below the file's
            // current size: a file already past it opens and cannot grow.
            let page: i64 =
                conn.pragma_query_value(None, "page_size", |row| row.get(0)).map_err(fail("read page_size"))?;
            let pages = i64::try_from(max_size / page.max(1) as u64).unwrap_or(i64::MAX).max(1);
            conn.pragma_update(None, "max_page_count", pages).map_err(fail("set max_page_count"))?;
        }
        // Checkpoints (copying the log's pages into the file, then fsync)
        // are the checkpoint thread's (`checkpointer.rs`), so no commit
        // waits for one. But the log only starts over from its beginning
        // when a commit finds every page of it copied, and while commits
        // never pause one always lands behind the thread's checkpoint: the
        // log would grow until the first quiet moment. So this connection
        // still checkpoints, as a backstop, once the log reaches
        // `WAL_BACKSTOP_PAGES`: by then the thread has copied nearly all of
        // it, this checkpoint copies the rest (a short wait), and the next
        // commit starts the log over. A log file left longer than
        // `WAL_KEEP_BYTES` is cut back when it starts over.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES).map_err(fail("set wal_autocheckpoint"))?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES).map_err(fail("set journal_size_limit"))?;
        // A deleted message's text is overwritten with zeros where SQLite
        // rewrites its page anyway (FAST: no extra I/O), not left in the
        // page's free space.
        conn.pragma_update(None, "secure_delete", "FAST").map_err(fail("set secure_delete"))?;

        let version: i64 =
            conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(fail("read the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(StorageError::Schema { path: path.to_path_buf(), found: version });
        }
        if version == 0 {
            // A fresh file. Migrations of older versions follow, one step
            // per version.
            let tx = conn.transaction().map_err(fail("create the schema"))?;
            tx.execute_batch(CREATE_SCHEMA).map_err(fail("create the schema"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(fail("record the schema version"))?;
            tx.commit().map_err(fail("create the schema"))?;
        }

        if version > 0 && version < SCHEMA_VERSION {
            // An older file: every step from its version up, in one
            // transaction (SQLite's schema changes are transactional), so a
            // crash mid-upgrade leaves the old version whole.
            let tx = conn.transaction().map_err(fail("upgrade the schema"))?;
            upgrade(&tx, version).map_err(fail("upgrade the schema"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(fail("record the schema version"))?;
            tx.commit().map_err(fail("upgrade the schema"))?;
        }
        // File what the last run left in the inbox, so the directory below
        // (and every read until the next merge) has one place to look.
        file_inbox(&conn).map_err(fail("file the inbox"))?;

        let directory = load_directory(&conn).map_err(fail("load the room directory"))?;
        conn.execute_batch(CREATE_BANS).map_err(fail("add the bans table"))?;
        let bans = load_bans(&conn, crate::chat::now_ms()).map_err(fail("load the bans"))?;
        let last_ids = directory.iter().map(|r| (r.name.clone(), r.last_id)).collect();
        let identity = identity(path).map_err(|source| StorageError::Io {
            context: format!("cannot read data file {}", path.display()),
            source,
        })?;
        // Without WAL (see above) a commit writes the file itself: there
        // is no log to checkpoint.
        let checkpointer = if mode.eq_ignore_ascii_case("wal") { Some(Checkpointer::start(path)?) } else { None };
        let store = SqliteStore {
            checkpointer,
            conn,
            _lock: lock,
            last_ids,
            inbox_rows: 0,
            path: path.to_path_buf(),
            identity,
        };
        Ok((store, directory, bans))
    }
}

impl Store for SqliteStore {
    fn write_batch(&mut self, writes: &[Write]) -> Result<(), String> {
        let appends = writes.iter().filter(|w| matches!(w, Write::Append { .. })).count();
        let merge = self.inbox_rows + appends >= MERGE_ROWS;
        write_batch(&self.conn, writes, &mut self.last_ids, merge).map_err(|e| e.to_string())?;
        self.inbox_rows = if merge { 0 } else { self.inbox_rows + appends };
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.wrote(appends);
        }
        Ok(())
    }

    fn read(&mut self, range: &ReadRange) -> Result<(Vec<StoredMessage>, Option<u64>), String> {
        read(&self.conn, range).map_err(|e| e.to_string())
    }

    /// The open connection keeps writing to the file it opened even after
    /// someone deletes it or moves another file in its place: history
    /// would go to a file nobody will ever read. One `stat` per batch
    /// notices.
    fn file_problem(&mut self) -> Option<String> {
        match identity(&self.path) {
            Ok(now) if now == self.identity => None,
            Ok(_) => Some(format!("data file {} was replaced by another file", self.path.display())),
            Err(e) => Some(format!("data file {} is gone ({e})", self.path.display())),
        }
    }

    /// Files the inbox and asks for a checkpoint while nobody waits on a
    /// commit: with no commit behind it, it copies everything, and the
    /// next commit starts the log over from its beginning.
    fn idle(&mut self) {
        if self.inbox_rows > 0 {
            match file_inbox(&self.conn) {
                Ok(()) => self.inbox_rows = 0,
                Err(e) => {
                    // Harmless: the rows stay in the inbox, where reads find them.
                    let _ = self.conn.execute_batch("ROLLBACK;");
                    log::warn!("storage: filing the inbox failed (retried later): {e}");
                }
            }
        }
        if let Some(checkpointer) = &mut self.checkpointer {
            checkpointer.nudge();
        }
    }
}

/// One transaction for the whole batch, with statements prepared once per
/// connection (`prepare_cached`) and reused for every row; `BEGIN` and
/// `COMMIT` too, since parsing them anew was a tenth of the storage thread's
/// time when every chat message is a batch of its own.
fn write_batch(
    conn: &Connection,
    writes: &[Write],
    last_ids: &mut HashMap<String, u64>,
    merge: bool,
) -> rusqlite::Result<()> {
    // IMMEDIATE takes the write lock at BEGIN, so if someone's sqlite3
    // shell holds it we fail here, before doing any work.
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    // Newest ids this batch stores, applied to `last_ids` only if it commits.
    let mut newest: HashMap<&str, u64> = HashMap::new();
    let written = write_rows(conn, writes, last_ids, &mut newest)
        .and_then(|()| if merge { conn.execute_batch(MERGE_INBOX) } else { Ok(()) })
        .and_then(|()| conn.prepare_cached("COMMIT")?.execute([]).map(drop));
    if let Err(e) = written {
        // Undo the batch. SQLite may have rolled it back already (a failed
        // COMMIT, a full disk or an I/O error mid-batch end the transaction
        // by themselves); then there is nothing to undo.
        if !conn.is_autocommit()
            && let Err(rollback) = conn.execute_batch("ROLLBACK")
        {
            // Every later BEGIN will fail and say so; this says why.
            log::error!("storage: rolling back a failed batch failed too: {rollback}");
        }
        return Err(e);
    }
    // Only a committed batch updates what we believe is stored.
    for (room, id) in newest {
        last_ids.insert(room.to_string(), id);
    }
    Ok(())
}

/// The rows of one batch, inside its transaction.
fn write_rows<'a>(
    conn: &Connection,
    writes: &'a [Write],
    last_ids: &HashMap<String, u64>,
    newest: &mut HashMap<&'a str, u64>,
) -> rusqlite::Result<()> {
    let mut upsert_room = conn.prepare_cached(UPSERT_ROOM)?;
    let mut insert_message = conn.prepare_cached(INSERT_MESSAGE)?;
    let mut already_stored = conn.prepare_cached(ALREADY_STORED)?;

    // A busy room sends many messages per batch; its row needs touching
    // once, and not at all once we know it is there.
    let mut rooms_seen: HashSet<&str> = HashSet::new();

    for write in writes {
        match write {
            Write::CreateRoom { room, created } => {
                if rooms_seen.insert(room) {
                    upsert_room.execute((room, to_sql(*created)))?;
                }
            }
            Write::Ban(ban) => {
                conn.prepare_cached(UPSERT_BAN)?.execute((&ban.room, &ban.who, to_sql(ban.until), &ban.reason))?;
            }
            Write::Unban { room, who } => {
                conn.prepare_cached(DELETE_BAN)?.execute((room, who))?;
            }
            Write::Delete { room, id } => {
                conn.prepare_cached(DELETE_MESSAGE)?.execute((room, to_sql(*id)))?;
                conn.prepare_cached(DELETE_INBOX_MESSAGE)?.execute((room, to_sql(*id)))?;
            }
            Write::Append { room, msg } => {
                if !last_ids.contains_key(room) && rooms_seen.insert(room) {
                    upsert_room.execute((room, to_sql(msg.ts)))?;
                }
                let last = newest.get(room.as_str()).or(last_ids.get(room)).copied().unwrap_or(0);
                if msg.id <= last && already_stored.query_row((room, to_sql(msg.id)), |row| row.get(0))? {
                    return Err(duplicate(room, msg.id));
                }
                newest.insert(room, last.max(msg.id));
                insert_message.execute((
                    room,
                    to_sql(msg.id),
                    to_sql(msg.ts),
                    &msg.username,
                    &msg.text,
                    msg.verified,
                ))?;
            }
        }
    }
    Ok(())
}

/// Brings a file of schema `version` (1 or 2) up to `SCHEMA_VERSION`, one
/// step per version, inside the caller's transaction.
fn upgrade(tx: &rusqlite::Transaction, version: i64) -> rusqlite::Result<()> {
    if version < 2 {
        // Version 1 had no inbox: add it with this version's columns.
        tx.execute_batch(create_inbox!())?;
    } else {
        tx.execute_batch(ADD_VERIFIED_TO_INBOX)?;
    }
    tx.execute_batch(ADD_VERIFIED_TO_MESSAGES)
}

/// Files the inbox in a transaction of its own (at open and when idle; a
/// full inbox is filed inside the batch that fills it instead).
fn file_inbox(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {MERGE_INBOX} COMMIT;"))
}

/// The error a duplicate (room, id) gets: a constraint failure, as the
/// primary key would have raised it had the message gone straight there.
fn duplicate(room: &str, id: u64) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY),
        Some(format!("UNIQUE constraint failed: message {id} of room {room:?} is already stored")),
    )
}

/// See [`Store::read`].
fn read(conn: &Connection, range: &ReadRange) -> rusqlite::Result<(Vec<StoredMessage>, Option<u64>)> {
    let ReadRange { room, after, before, limit, newest } = range;
    let sql = if *newest { READ_NEWEST } else { READ_OLDEST };
    let mut stmt = conn.prepare_cached(sql)?;
    let limit = i64::try_from(*limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map((room, to_sql(*after), to_sql(*before), limit), |row| {
        Ok(StoredMessage {
            id: from_sql(row.get(0)?),
            ts: from_sql(row.get(1)?),
            username: row.get(2)?,
            text: row.get(3)?,
            verified: row.get(4)?,
        })
    })?;
    let mut messages = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    if *newest {
        // Fetched newest first to stop after `limit`; the contract is ascending.
        messages.reverse();
    }

    // NULL when the room has no messages at all.
    let oldest_id = conn
        .prepare_cached(OLDEST_ID)?
        .query_row([room], |row| row.get::<_, Option<i64>>(0))
        .optional()?
        .flatten()
        .map(from_sql);
    Ok((messages, oldest_id))
}

/// The grouped query behind [`RoomRecord`]s (see [`LOAD_DIRECTORY`]).
/// The bans in force at `now` (ms); lapsed ones are deleted on the way.
fn load_bans(conn: &Connection, now: u64) -> rusqlite::Result<Vec<BanRecord>> {
    conn.execute("DELETE FROM bans WHERE until <= ?1", [to_sql(now)])?;
    let mut stmt = conn.prepare("SELECT room, who, until, reason FROM bans ORDER BY room, who")?;
    let rows = stmt.query_map([], |row| {
        Ok(BanRecord { room: row.get(0)?, who: row.get(1)?, until: from_sql(row.get(2)?), reason: row.get(3)? })
    })?;
    rows.collect()
}

fn load_directory(conn: &Connection) -> rusqlite::Result<Vec<RoomRecord>> {
    let mut stmt = conn.prepare(LOAD_DIRECTORY)?;
    let rows = stmt.query_map([], |row| {
        Ok(RoomRecord {
            name: row.get(0)?,
            created: from_sql(row.get(1)?),
            last_post: row.get::<_, Option<i64>>(2)?.map(from_sql),
            messages: row.get::<_, Option<i64>>(3)?.map_or(0, from_sql),
            last_id: row.get::<_, Option<i64>>(4)?.map_or(0, from_sql),
        })
    })?;
    rows.collect()
}

/// SQLite integers are signed 64-bit. Ids and millisecond times stay far
/// below 2^63, and `u64::MAX` (used as "no upper bound" by readers) maps to
/// the largest value SQLite can hold, which means the same thing.
fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The way back: nothing we write is negative, so a negative value can
/// only come from someone editing the file by hand; it reads as 0.
fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// An error from SQLite while opening, naming the file and the way out.
fn sqlite_error(path: &Path, step: &str, source: rusqlite::Error) -> StorageError {
    StorageError::Sqlite {
        context: format!(
            "cannot use data file {} ({step} failed); check that it is a chatroom database on \
             a writable disk, or choose another --data",
            path.display()
        ),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory query should not scan `messages` once per room: ask
    /// SQLite for its plan and check the grouped subquery runs once.
    #[test]
    fn directory_query_plan_scans_messages_once() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(CREATE_SCHEMA)?;
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {LOAD_DIRECTORY}"))?;
        let plan: Vec<String> = stmt.query_map([], |row| row.get::<_, String>(3))?.collect::<rusqlite::Result<_>>()?;
        let scans = plan.iter().filter(|step| step.contains("messages")).count();
        assert_eq!(scans, 1, "plan: {plan:#?}");
        Ok(())
    }

    /// A room with no messages (or no room at all) reads as nothing, not
    /// as an error: its oldest id is NULL.
    #[test]
    fn a_room_without_messages_reads_as_empty() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(CREATE_SCHEMA)?;
        assert_eq!(read(&conn, &ReadRange::newest("empty", 5))?, (Vec::new(), None));
        Ok(())
    }

    #[test]
    fn integers_round_trip_and_saturate() {
        assert_eq!(from_sql(to_sql(1_764_000_000_000)), 1_764_000_000_000);
        assert_eq!(to_sql(u64::MAX), i64::MAX);
        assert_eq!(from_sql(-5), 0);
    }
}
