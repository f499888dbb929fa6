//! Storage through its public API, the way the reactor uses it: a real
//! `mio::Poll` and `Waker`, requests in, replies out after the wake-up.
//! Every wait is bounded, so a bug fails a test instead of hanging it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use super::*;

/// How long any single reply may take before the test fails.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

const WAKER: Token = Token(0);

/// A folder under the system temp dir, unique to this process and test,
/// removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("chatroom-storage-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    /// A data file in a sub-folder that does not exist yet, so `open`
    /// has to create it.
    fn db(&self) -> PathBuf {
        self.0.join("data").join("chatroom.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The reactor's side in miniature: a Poll, its Waker, and the Storage.
struct Reactor {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
}

impl Reactor {
    fn new() -> Reactor {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        Reactor { poll, events: Events::with_capacity(8), waker }
    }

    fn open(&self, backend: Backend) -> Result<(Storage, Vec<RoomRecord>), StorageError> {
        Storage::open(backend, Arc::clone(&self.waker))
    }

    /// The next reply, sleeping in `poll` until the storage thread wakes us.
    fn next_reply(&mut self, storage: &mut Storage) -> Reply {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(reply) = storage.try_recv() {
                return reply;
            }
            let left =
                deadline.checked_duration_since(Instant::now()).expect("no reply from the storage thread in time");
            self.poll.poll(&mut self.events, Some(left)).unwrap();
        }
    }

    /// Wait until every Append up to `seq` is reported, returning each
    /// Committed seen (other replies are not expected meanwhile).
    fn wait_committed(&mut self, storage: &mut Storage, seq: u64) -> Vec<(u64, Result<(), String>)> {
        let mut seen = Vec::new();
        loop {
            match self.next_reply(storage) {
                Reply::Committed { upto, result } => {
                    seen.push((upto, result));
                    if upto >= seq {
                        return seen;
                    }
                }
                other => panic!("expected Committed, got {other:?}"),
            }
        }
    }

    /// Send a Read and wait for its answer.
    fn read(&mut self, storage: &mut Storage, range: ReadRange) -> (Vec<u64>, Option<u64>) {
        let (messages, oldest_id) = self.read_messages(storage, range);
        (messages.iter().map(|m| m.id).collect(), oldest_id)
    }

    fn read_messages(&mut self, storage: &mut Storage, range: ReadRange) -> (Vec<StoredMessage>, Option<u64>) {
        static TICKETS: AtomicUsize = AtomicUsize::new(1);
        let ticket = TICKETS.fetch_add(1, Ordering::Relaxed) as u64;
        storage.send_all(vec![Request::Read { ticket, range }]);
        loop {
            match self.next_reply(storage) {
                Reply::Messages { ticket: got, messages, oldest_id } => {
                    assert_eq!(got, ticket);
                    return (messages, oldest_id);
                }
                // A Committed from an earlier batch may still be queued.
                Reply::Committed { .. } | Reply::DataFile { .. } => {}
            }
        }
    }
}

fn message(id: u64, username: &str) -> StoredMessage {
    StoredMessage {
        id,
        ts: 1_764_000_000_000 + id,
        username: username.to_string(),
        text: format!("message {id} from {username}"),
        verified: false,
    }
}

fn append(room: &str, id: u64) -> Request {
    Request::Append { room: room.to_string(), msg: message(id, "alice") }
}

/// The same checks on both backends: the reactor must not be able to tell.
fn appends_then_reads(backend: Backend) {
    let mut reactor = Reactor::new();
    let (mut storage, _) = reactor.open(backend).unwrap();

    storage.send_all(vec![Request::CreateRoom { room: "r".to_string(), created: 1 }]);
    let mut last = 0;
    for id in 1..=10 {
        last = storage.send_all(vec![append("r", id)]);
    }
    assert_eq!(last, 10);
    reactor.wait_committed(&mut storage, last);

    let all: Vec<u64> = (1..=10).collect();
    // Last-N history: the newest 3, ascending.
    assert_eq!(reactor.read(&mut storage, ReadRange::newest("r", 3)), (vec![8, 9, 10], Some(1)));
    // Resume with ?since=4: the oldest 3 after 4.
    assert_eq!(reactor.read(&mut storage, ReadRange::after("r", 4, 3)), (vec![5, 6, 7], Some(1)));
    // Scroll-back: the 4 before id 6.
    assert_eq!(reactor.read(&mut storage, ReadRange::newest("r", 4).before(6)), (vec![2, 3, 4, 5], Some(1)));
    // Both bounds are exclusive.
    assert_eq!(reactor.read(&mut storage, ReadRange::after("r", 3, 10).before(5)), (vec![4], Some(1)));
    // A limit larger than the range returns the range.
    assert_eq!(reactor.read(&mut storage, ReadRange::newest("r", 100)), (all.clone(), Some(1)));
    assert_eq!(reactor.read(&mut storage, ReadRange::after("r", 0, 100)), (all, Some(1)));
    // Nothing left after the newest; an empty range; an unknown room.
    assert_eq!(reactor.read(&mut storage, ReadRange::after("r", 10, 5)), (vec![], Some(1)));
    assert_eq!(
        reactor.read(&mut storage, ReadRange { after: 5, ..ReadRange::newest("r", 5).before(5) }),
        (vec![], Some(1))
    );
    assert_eq!(reactor.read(&mut storage, ReadRange::newest("nowhere", 5)), (vec![], None));

    storage.shutdown().unwrap();
}

#[test]
fn sqlite_appends_then_reads() {
    let dir = TempDir::new();
    appends_then_reads(Backend::sqlite(dir.db()));
}

#[test]
fn memory_appends_then_reads() {
    appends_then_reads(Backend::Memory { keep_per_room: 1_000 });
}

/// A delete leaves a tombstone (id and time, no name, no text), counts as
/// a sequenced write, is idempotent, and ignores ids never stored. With
/// SQLite it holds in the inbox and in the filed table, and after a
/// restart; the tombstone's empty name never reaches `users`.
fn deletes_leave_tombstones(backend: Backend) {
    let mut reactor = Reactor::new();
    let (mut storage, _) = reactor.open(backend.clone()).unwrap();
    for id in 1..=4 {
        storage.send_all(vec![append("r", id)]);
    }
    let delete = |id| Request::Delete { room: "r".into(), id };
    let seq =
        storage.send_all(vec![delete(2), delete(2), delete(99), Request::Delete { room: "nowhere".into(), id: 1 }]);
    assert_eq!(seq, 8, "a delete takes a sequence number, as an append does");
    assert!(reactor.wait_committed(&mut storage, seq).iter().all(|(_, r)| r.is_ok()));
    let expect = |reactor: &mut Reactor, storage: &mut Storage| {
        let (messages, oldest) = reactor.read_messages(storage, ReadRange::newest("r", 10));
        assert_eq!(oldest, Some(1));
        let tombstone = StoredMessage::tombstone(2, message(2, "alice").ts);
        assert_eq!(messages, vec![message(1, "alice"), tombstone, message(3, "alice"), message(4, "alice")]);
        assert!(messages[1].is_deleted() && !messages[0].is_deleted());
    };
    expect(&mut reactor, &mut storage);
    storage.shutdown().unwrap();
    if let Backend::Sqlite { path, .. } = &backend {
        // Reopening files the inbox; the tombstone stays one.
        let (mut storage, directory) = reactor.open(backend.clone()).unwrap();
        assert_eq!((directory[0].messages, directory[0].last_id), (4, 4), "ids stay gapless");
        expect(&mut reactor, &mut storage);
        let seq = storage.send_all(vec![delete(3)]);
        assert!(reactor.wait_committed(&mut storage, seq).iter().all(|(_, r)| r.is_ok()));
        storage.shutdown().unwrap();
        let conn = rusqlite::Connection::open(path).unwrap();
        let texts: Vec<String> = conn
            .prepare("SELECT text FROM messages UNION ALL SELECT text FROM inbox ORDER BY 1")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(texts, ["", "", "message 1 from alice", "message 4 from alice"], "filed and inbox rows");
        let blank: i64 = conn.query_row("SELECT count(*) FROM users WHERE name = ''", [], |r| r.get(0)).unwrap();
        assert_eq!(blank, 0);
    }
}

#[test]
fn sqlite_deletes_leave_tombstones() {
    let dir = TempDir::new();
    deletes_leave_tombstones(Backend::sqlite(dir.db()));
}

#[test]
fn memory_deletes_leave_tombstones() {
    deletes_leave_tombstones(Backend::Memory { keep_per_room: 10 });
}

/// A read sent right after appends, without waiting, still sees them: reads
/// run after their batch commits, and Committed is queued before Messages.
fn read_sees_earlier_appends(backend: Backend) {
    let mut reactor = Reactor::new();
    let (mut storage, _) = reactor.open(backend).unwrap();
    for id in 1..=5 {
        storage.send_all(vec![append("r", id)]);
    }
    storage.send_all(vec![Request::Read { ticket: 77, range: ReadRange::newest("r", 50) }]);
    let mut committed = 0;
    loop {
        match reactor.next_reply(&mut storage) {
            Reply::Committed { upto, result } => {
                assert_eq!(result, Ok(()));
                assert!(upto > committed, "upto must grow");
                committed = upto;
            }
            Reply::Messages { ticket, messages, .. } => {
                assert_eq!(ticket, 77);
                assert_eq!(committed, 5, "Committed{{upto: 5}} comes before the read's answer");
                assert_eq!(messages, (1..=5).map(|id| message(id, "alice")).collect::<Vec<_>>());
                break;
            }
            Reply::DataFile { problem } => panic!("the data file is where it was: {problem:?}"),
        }
    }
    storage.shutdown().unwrap();
}

#[test]
fn sqlite_read_sees_earlier_appends() {
    let dir = TempDir::new();
    read_sees_earlier_appends(Backend::sqlite(dir.db()));
}

#[test]
fn memory_read_sees_earlier_appends() {
    read_sees_earlier_appends(Backend::Memory { keep_per_room: 10 });
}

#[test]
fn committed_upto_counts_every_append_once_in_order() {
    let dir = TempDir::new();
    let mut reactor = Reactor::new();
    let (mut storage, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();

    // Non-appends do not take a sequence number.
    assert_eq!(storage.send_all(vec![Request::CreateRoom { room: "a".to_string(), created: 1 }]), 0);
    let mut seqs = Vec::new();
    for id in 1..=300 {
        seqs.push(storage.send_all(vec![append("a", id)]));
        seqs.push(storage.send_all(vec![append("b", id)]));
    }
    assert_eq!(seqs, (1..=600).collect::<Vec<u64>>());

    // However the thread split them into batches, the uptos rise strictly,
    // all succeed, and the last one is 600.
    let seen = reactor.wait_committed(&mut storage, 600);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert!(seen.iter().all(|(_, result)| result.is_ok()));
    assert_eq!(seen.last().map(|s| s.0), Some(600));

    // The numbering continues across batches.
    assert_eq!(storage.send_all(vec![append("a", 301)]), 601);
    assert_eq!(reactor.wait_committed(&mut storage, 601), vec![(601, Ok(()))]);
    storage.shutdown().unwrap();
}

#[test]
fn a_failed_batch_reports_err_and_the_next_one_commits() {
    let dir = TempDir::new();
    let mut reactor = Reactor::new();
    let (mut storage, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    let seq = storage.send_all(vec![append("r", 1)]);
    reactor.wait_committed(&mut storage, seq);

    // Id 2, then id 1 again: the duplicate fails the batch, and the whole
    // batch rolls back, the good row before it included.
    let seq = storage.send_all(vec![append("r", 2), append("r", 1)]);
    let seen = reactor.wait_committed(&mut storage, seq);
    let (upto, result) = seen.last().cloned().unwrap();
    assert_eq!(upto, 3);
    assert!(result.unwrap_err().contains("UNIQUE"), "a constraint error");

    // The connection is usable afterwards, and id 2 was not kept (storing
    // it now would be a duplicate otherwise).
    let seq = storage.send_all(vec![append("r", 2)]);
    assert_eq!(reactor.wait_committed(&mut storage, seq), vec![(4, Ok(()))]);
    assert_eq!(reactor.read(&mut storage, ReadRange::after("r", 0, 10)), (vec![1, 2], Some(1)));
    storage.shutdown().unwrap();
}

#[test]
fn directory_survives_a_restart() {
    let dir = TempDir::new();
    let mut reactor = Reactor::new();

    let (mut storage, directory) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    assert_eq!(directory, vec![]);
    storage.send_all(vec![Request::CreateRoom { room: "quiet".to_string(), created: 5 }]);
    storage.send_all(vec![Request::CreateRoom { room: "busy".to_string(), created: 7 }]);
    // CreateRoom is idempotent: the first `created` stays.
    storage.send_all(vec![Request::CreateRoom { room: "busy".to_string(), created: 9 }]);
    let mut seq = 0;
    for id in 1..=4 {
        seq = storage.send_all(vec![Request::Append {
            room: "busy".to_string(),
            msg: message(id, if id % 2 == 0 { "bob" } else { "alice" }),
        }]);
    }
    // A room first seen through a message gets a row too.
    seq = seq.max(storage.send_all(vec![append("implicit", 1)]));
    reactor.wait_committed(&mut storage, seq);
    storage.shutdown().unwrap();

    let (mut storage, directory) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    assert_eq!(
        directory,
        vec![
            RoomRecord {
                name: "busy".to_string(),
                created: 7,
                last_post: Some(message(4, "bob").ts),
                messages: 4,
                last_id: 4,
            },
            RoomRecord {
                name: "implicit".to_string(),
                created: message(1, "alice").ts,
                last_post: Some(message(1, "alice").ts),
                messages: 1,
                last_id: 1,
            },
            RoomRecord { name: "quiet".to_string(), created: 5, last_post: None, messages: 0, last_id: 0 },
        ]
    );
    assert_eq!(reactor.read(&mut storage, ReadRange::newest("busy", 10)), (vec![1, 2, 3, 4], Some(1)));
    storage.shutdown().unwrap();

    // And the users table followed the posters.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let users: Vec<(String, i64, i64)> = conn
        .prepare("SELECT name, first_seen, last_seen FROM users ORDER BY name")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let ts = |id| message(id, "").ts as i64;
    assert_eq!(users, vec![("alice".to_string(), ts(1), ts(3)), ("bob".to_string(), ts(2), ts(4))]);
}

#[test]
fn shutdown_commits_what_is_pending() {
    let dir = TempDir::new();
    let reactor = Reactor::new();
    let (mut storage, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    // Queue and leave at once, without waiting for any reply.
    for id in 1..=1_000 {
        storage.send_all(vec![append("r", id)]);
    }
    storage.shutdown().unwrap();

    let (storage, directory) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    assert_eq!(directory.len(), 1);
    assert_eq!(directory[0].messages, 1_000);
    assert_eq!(directory[0].last_id, 1_000);
    storage.shutdown().unwrap();
}

#[test]
fn dropping_the_handle_also_commits() {
    let dir = TempDir::new();
    let reactor = Reactor::new();
    let (mut storage, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    for id in 1..=100 {
        storage.send_all(vec![append("r", id)]);
    }
    drop(storage);

    let (storage, directory) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    assert_eq!(directory[0].last_id, 100);
    storage.shutdown().unwrap();
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let dir = TempDir::new();
    let reactor = Reactor::new();
    let (first, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();

    let Err(err) = reactor.open(Backend::sqlite(dir.db())) else {
        panic!("a second open of a locked file must fail");
    };
    assert!(matches!(err, StorageError::InUse { .. }), "{err:?}");
    let text = err.to_string();
    let db = dir.db().display().to_string();
    assert!(text.contains(&format!("data file {db} is in use")), "{text}");
    assert!(text.contains(&format!("lock {db}.lock is held")), "{text}");
    assert!(text.contains("give each process its own --data"), "{text}");

    // Once the first lets go, the file opens again.
    first.shutdown().unwrap();
    let (again, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    again.shutdown().unwrap();
}

#[test]
fn memory_keeps_the_newest_per_room_and_says_where_history_starts() {
    let mut reactor = Reactor::new();
    let (mut storage, directory) = reactor.open(Backend::Memory { keep_per_room: 4 }).unwrap();
    assert_eq!(directory, vec![]);
    let mut seq = 0;
    for id in 1..=10 {
        seq = storage.send_all(vec![append("r", id)]);
    }
    storage.send_all(vec![append("other", 1)]);
    seq += 1;
    reactor.wait_committed(&mut storage, seq);

    assert_eq!(reactor.read(&mut storage, ReadRange::newest("r", 100)), (vec![7, 8, 9, 10], Some(7)));
    // Asking for what was trimmed: nothing older than 7 comes back, and
    // oldest_id tells the reactor to send a gap frame.
    assert_eq!(reactor.read(&mut storage, ReadRange::after("r", 2, 3)), (vec![7, 8, 9], Some(7)));
    assert_eq!(reactor.read(&mut storage, ReadRange::newest("r", 10).before(7)), (vec![], Some(7)));
    // Rooms are trimmed separately.
    assert_eq!(reactor.read(&mut storage, ReadRange::newest("other", 10)), (vec![1], Some(1)));
    storage.shutdown().unwrap();
}

#[test]
fn a_newer_schema_is_refused_with_a_way_out() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.db().parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);

    let reactor = Reactor::new();
    let Err(err) = reactor.open(Backend::sqlite(dir.db())) else {
        panic!("a newer schema must be refused");
    };
    let text = err.to_string();
    assert!(text.contains("schema version 99"), "{text}");
    assert!(text.contains("--data"), "{text}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused_with_its_name() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.db().parent().unwrap()).unwrap();
    std::fs::write(dir.db(), vec![b'x'; 4096]).unwrap();

    let reactor = Reactor::new();
    let Err(err) = reactor.open(Backend::sqlite(dir.db())) else {
        panic!("garbage must be refused");
    };
    let text = err.to_string();
    assert!(text.contains(&dir.db().display().to_string()), "{text}");
    assert!(text.contains("choose another --data"), "{text}");
}

#[test]
fn an_unwritable_folder_is_refused_with_its_name() {
    let dir = TempDir::new();
    // A file where the data folder should be: create_dir_all must fail,
    // even when the tests run as root.
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join("data"), b"not a folder").unwrap();

    let reactor = Reactor::new();
    let Err(err) = reactor.open(Backend::sqlite(dir.db())) else {
        panic!("an impossible folder must be refused");
    };
    let text = err.to_string();
    assert!(text.contains("cannot create folder"), "{text}");
    assert!(text.contains("--data none"), "{text}");
}

/// Past `MERGE_ROWS` messages the inbox is filed into `messages`: reads,
/// the duplicate check and the directory see one history, whichever table
/// holds each message.
#[test]
fn history_spans_the_inbox_and_the_filed_messages() {
    let dir = TempDir::new();
    let mut reactor = Reactor::new();
    let (mut storage, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    let rooms = ["a", "b", "c"];
    let per_room = (sqlite::MERGE_ROWS / rooms.len() + 50) as u64;
    // Enough to be filed at least once, then a few that stay in the inbox.
    for ids in [1..=per_room - 10, per_room - 9..=per_room] {
        let mut seq = 0;
        for id in ids {
            for room in rooms {
                seq = storage.send_all(vec![append(room, id)]);
            }
        }
        assert!(reactor.wait_committed(&mut storage, seq).iter().all(|(_, r)| r.is_ok()));
    }
    let all: Vec<u64> = (1..=per_room).collect();
    let check = |reactor: &mut Reactor, storage: &mut Storage| {
        for room in rooms {
            assert_eq!(
                reactor.read(storage, ReadRange::newest(room, 5)),
                ((per_room - 4..=per_room).collect(), Some(1))
            );
            assert_eq!(reactor.read(storage, ReadRange::after(room, 0, 3)), (vec![1, 2, 3], Some(1)));
            assert_eq!(reactor.read(storage, ReadRange::after(room, 0, 10_000)), (all.clone(), Some(1)));
            // Ranges across the boundary between the two tables, both ways.
            let (after, before) = (per_room - 15, per_room - 2);
            let middle: Vec<u64> = (after + 1..before).collect();
            assert_eq!(
                reactor.read(storage, ReadRange { after, ..ReadRange::newest(room, 100).before(before) }).0,
                middle
            );
            assert_eq!(reactor.read(storage, ReadRange::after(room, after, 100).before(before)).0, middle);
        }
    };
    check(&mut reactor, &mut storage);

    // A second copy is refused whether the first is filed or in the inbox.
    for id in [1, per_room] {
        let seq = storage.send_all(vec![append("a", id)]);
        let (_, result) = reactor.wait_committed(&mut storage, seq).pop().unwrap();
        assert!(result.unwrap_err().contains("UNIQUE"), "id {id} twice");
    }
    storage.shutdown().unwrap();

    let (mut storage, directory) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    for record in &directory {
        assert_eq!((record.messages, record.last_id), (per_room, per_room), "{record:?}");
    }
    assert_eq!(directory.len(), rooms.len());
    check(&mut reactor, &mut storage);
    storage.shutdown().unwrap();
}

/// The tables of a schema version 1 file.
const VERSION_1_TABLES: &str = "
    CREATE TABLE users(name TEXT PRIMARY KEY, first_seen INTEGER, last_seen INTEGER);
    CREATE TABLE rooms(name TEXT PRIMARY KEY, created INTEGER NOT NULL);
    CREATE TABLE messages(room TEXT NOT NULL, id INTEGER NOT NULL, ts INTEGER NOT NULL,
        username TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY(room, id)) WITHOUT ROWID;
";

/// A file written by schema version 1 (no inbox) opens, keeps its history
/// and takes new messages.
#[test]
fn a_version_1_file_is_upgraded_in_place() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.db().parent().unwrap()).unwrap();
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(VERSION_1_TABLES).unwrap();
        conn.execute_batch(
            "INSERT INTO rooms VALUES ('old', 1);
             INSERT INTO messages VALUES ('old', 1, 10, 'alice', 'hi'), ('old', 2, 20, 'bob', 'hello');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let mut reactor = Reactor::new();
    let (mut storage, directory) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    assert_eq!((directory[0].messages, directory[0].last_id), (2, 2));
    let seq = storage.send_all(vec![append("old", 3)]);
    assert_eq!(reactor.wait_committed(&mut storage, seq), vec![(1, Ok(()))]);
    assert_eq!(reactor.read(&mut storage, ReadRange::newest("old", 10)), (vec![1, 2, 3], Some(1)));
    storage.shutdown().unwrap();
    let version: i64 =
        rusqlite::Connection::open(dir.db()).unwrap().query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    assert_eq!(version, sqlite::SCHEMA_VERSION);
}

/// A file written by schema version 2 (no `verified` column) opens, its
/// messages read as unverified, and a verified message keeps its mark
/// through the inbox and into `messages`.
#[test]
fn a_version_2_file_gets_the_verified_column() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.db().parent().unwrap()).unwrap();
    {
        let conn = rusqlite::Connection::open(dir.db()).unwrap();
        conn.execute_batch(VERSION_1_TABLES).unwrap();
        conn.execute_batch(
            "CREATE TABLE inbox(seq INTEGER PRIMARY KEY, room TEXT NOT NULL, id INTEGER NOT NULL,
                 ts INTEGER NOT NULL, username TEXT NOT NULL, text TEXT NOT NULL);
             INSERT INTO rooms VALUES ('old', 1);
             INSERT INTO messages VALUES ('old', 1, 10, 'alice', 'hi');
             INSERT INTO inbox(room, id, ts, username, text) VALUES ('old', 2, 20, 'bob', 'hello');
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let mut reactor = Reactor::new();
    let (mut storage, directory) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    assert_eq!(directory[0].last_id, 2);
    let msg = StoredMessage { verified: true, ..message(3, "carol") };
    let seq = storage.send_all(vec![Request::Append { room: "old".into(), msg }]);
    assert_eq!(reactor.wait_committed(&mut storage, seq), vec![(1, Ok(()))]);
    let read = |reactor: &mut Reactor, storage: &mut Storage| {
        let (messages, _) = reactor.read_messages(storage, ReadRange::newest("old", 10));
        messages.iter().map(|m| (m.id, m.verified)).collect::<Vec<_>>()
    };
    assert_eq!(read(&mut reactor, &mut storage), vec![(1, false), (2, false), (3, true)], "from the inbox");
    storage.shutdown().unwrap();
    let (mut storage, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    assert_eq!(read(&mut reactor, &mut storage), vec![(1, false), (2, false), (3, true)], "filed into messages");
    storage.shutdown().unwrap();
}

/// An upgrade that fails part way leaves the file as it was: here a
/// version 2 file whose `messages` table already has the column version 3
/// adds, so the second step fails after the first (the inbox's column)
/// succeeded. The open fails, and the inbox has no new column.
#[test]
fn a_failed_upgrade_changes_nothing() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.db().parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.execute_batch(VERSION_1_TABLES).unwrap();
    conn.execute_batch(
        "CREATE TABLE inbox(seq INTEGER PRIMARY KEY, room TEXT NOT NULL, id INTEGER NOT NULL,
             ts INTEGER NOT NULL, username TEXT NOT NULL, text TEXT NOT NULL);
         ALTER TABLE messages ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
         PRAGMA user_version = 2;",
    )
    .unwrap();
    let reactor = Reactor::new();
    assert!(reactor.open(Backend::sqlite(dir.db())).is_err(), "the second step fails");
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
    let inbox_columns: i64 =
        conn.query_row("SELECT count(*) FROM pragma_table_info('inbox')", [], |row| row.get(0)).unwrap();
    assert_eq!((version, inbox_columns), (2, 6), "the version and the inbox as they were");
}

#[test]
fn the_log_is_gone_after_the_server_stops() {
    let dir = TempDir::new();
    let mut reactor = Reactor::new();
    let (mut storage, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    let wal = dir.db().with_extension("db-wal");
    for id in 1..=100 {
        let seq = storage.send_all(vec![append("r", id)]);
        reactor.wait_committed(&mut storage, seq);
    }
    assert!(wal.exists(), "the log is in use while the server runs");
    storage.shutdown().unwrap();
    assert!(!wal.exists(), "the last connection to close copies the log into the file and removes it");

    let (storage, directory) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    assert_eq!(directory[0].last_id, 100);
    storage.shutdown().unwrap();
}

#[test]
fn the_log_stays_bounded_while_writes_never_pause() {
    let dir = TempDir::new();
    let mut reactor = Reactor::new();
    let (mut storage, _) = reactor.open(Backend::sqlite(dir.db())).unwrap();
    let wal = dir.db().with_extension("db-wal");
    let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
    // One commit per message and never idle: each commit adds at least one
    // page to the log, and the checkpoint thread always has a commit
    // landing behind it, so only the backstop lets the log start over.
    let commits = 3 * sqlite::WAL_BACKSTOP_PAGES as u64;
    let mut longest = 0;
    for id in 1..=commits {
        let seq = storage.send_all(vec![append("r", id)]);
        reactor.wait_committed(&mut storage, seq);
        longest = longest.max(wal_len());
    }
    let page = 4096 + 24; // a log frame: a page and its header
    assert!(
        longest < 2 * sqlite::WAL_BACKSTOP_PAGES as u64 * page,
        "the log reached {longest} bytes over {commits} commits"
    );
    storage.shutdown().unwrap();
}
