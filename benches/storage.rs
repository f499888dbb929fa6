//! What storing costs per message: `storage/append_batch`.
//!
//! Each iteration does what the reactor does in one turn with `n` new
//! messages: send `n` Appends through the real [`Storage`] API, then sleep
//! in `mio::Poll` until the storage thread's `Committed { upto }` covers the
//! last one. So the figure includes the channel hops, the wake-up and the
//! transaction, on a SQLite file in the temp dir (WAL, synchronous=NORMAL)
//! and on the memory backend (`--data none`) for comparison. Throughput is
//! in messages, so criterion prints messages per second; divide to get the
//! cost of one.
//!
//! The thread may start on the first Appends before the last is sent, so
//! "a batch of 1,000" can commit as a few transactions: that is how the
//! server behaves too.
//!
//! Run with `cargo bench --bench storage` (add `-- --quick` for a rough pass).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatroom::storage::{Backend, Reply, Request, Storage, StoredMessage};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mio::{Events, Poll, Token, Waker};

/// Messages per iteration: one (a quiet server), 100 (a busy turn), 1,000
/// (a burst).
const BATCH_SIZES: [u64; 3] = [1, 100, 1_000];

/// Bytes of text per message, about a line of chat.
const TEXT_BYTES: usize = 100;

/// A wait longer than this means the storage thread is stuck; stop the bench
/// rather than hang.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// One backend under test, with the Poll that its Waker wakes.
struct Bench {
    poll: Poll,
    events: Events,
    storage: Option<Storage>,
    next_id: u64,
    text: String,
}

impl Bench {
    fn new(backend: Backend) -> Bench {
        let poll = Poll::new().unwrap_or_else(|e| panic!("mio::Poll: {e}"));
        let waker = Waker::new(poll.registry(), Token(0)).map(Arc::new).unwrap_or_else(|e| panic!("mio::Waker: {e}"));
        let (storage, _directory) = Storage::open(backend, waker).unwrap_or_else(|e| panic!("opening storage: {e}"));
        Bench {
            poll,
            events: Events::with_capacity(8),
            storage: Some(storage),
            next_id: 1,
            text: "x".repeat(TEXT_BYTES),
        }
    }

    /// Send `n` Appends, then wait until all of them are durable.
    fn append_batch(&mut self, n: u64) {
        let Some(storage) = self.storage.as_mut() else {
            return;
        };
        let mut seq = 0;
        for _ in 0..n {
            seq = storage.send_all(vec![Request::Append {
                room: "bench".to_string(),
                msg: StoredMessage {
                    id: self.next_id,
                    ts: 1_764_000_000_000 + self.next_id,
                    username: "bench".to_string(),
                    text: self.text.clone(),
                    verified: false,
                },
            }]);
            self.next_id += 1;
        }
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        loop {
            while let Some(reply) = storage.try_recv() {
                if let Reply::Committed { upto, result } = reply {
                    if let Err(reason) = result {
                        panic!("commit failed: {reason}");
                    }
                    if upto >= seq {
                        return;
                    }
                }
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no Committed within {COMMIT_TIMEOUT:?}"));
            if let Err(e) = self.poll.poll(&mut self.events, Some(left)) {
                panic!("poll: {e}");
            }
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(storage) = self.storage.take()
            && let Err(e) = storage.shutdown()
        {
            eprintln!("storage shutdown: {e}");
        }
    }
}

/// A fresh folder for this run's data file, removed afterwards.
fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("chatroom-storage-bench-{}", std::process::id()))
}

fn append_batch(c: &mut Criterion) {
    let dir = temp_dir();
    let _ = std::fs::remove_dir_all(&dir);

    let mut group = c.benchmark_group("storage/append_batch");
    for n in BATCH_SIZES {
        group.throughput(Throughput::Elements(n));

        // A new file per size, so one size's rows do not slow the next.
        let mut sqlite = Bench::new(Backend::sqlite(dir.join(format!("{n}.db"))));
        group.bench_with_input(BenchmarkId::new("sqlite", n), &n, |b, &n| {
            b.iter(|| sqlite.append_batch(n));
        });
        drop(sqlite);

        let mut memory = Bench::new(Backend::Memory { keep_per_room: 1_000 });
        group.bench_with_input(BenchmarkId::new("memory", n), &n, |b, &n| {
            b.iter(|| memory.append_batch(n));
        });
    }
    group.finish();

    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, append_batch);
criterion_main!(benches);
