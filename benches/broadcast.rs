//! What a room broadcast costs: `broadcast/one_message` and `broadcast/turn`.
//!
//! Each iteration does what the reactor does for a chat message (see
//! `deliver_chat` in `src/endpoints.rs` and `flush` in `src/server.rs`),
//! minus the sockets:
//!
//! 1. serialise the event once, [`chatroom::chat::protocol::message_json`];
//! 2. frame it once, [`chatroom::frame::shared_text`];
//! 3. for each of the N members, push `Chunk::Shared(frame.clone())` onto
//!    its [`OutQueue`] and mark it dirty (the first time this turn);
//! 4. for each dirty member, [`OutQueue::write_to`] into an in-memory socket
//!    that counts bytes (it does not copy them, so the kernel's memcpy is not
//!    in these figures).
//!
//! `broadcast/one_message` sends one message to 1, 100 and 10,000 members:
//! `flush_all` with a socket that takes everything; `partial_then_writable`
//! with one that takes half a frame per flush and then says WouldBlock (a
//! slow reader: `write_to` returns `Partial`), followed by a second flush as
//! the writable event would trigger, so the queues are empty again for the
//! next iteration.
//!
//! `broadcast/turn` is a busy room: 10 messages, each serialised and framed
//! once, are queued before one flush, so each member gets 10 deliveries in
//! one `writev` (corking), for 100 and 1,000 members.
//!
//! Throughput is deliveries (members × messages) and the bytes they carry,
//! so criterion prints deliveries per second. Before each size, the bench
//! prints (outside the timed loop) what one delivery leaves per member: the
//! queued bytes ([`OutQueue::len`], the shared frame's length: no copy), the
//! size of the queue slot it takes (`size_of::<Chunk>()`, the only per-member
//! heap cost, besides the reference count), and the heap a counting allocator
//! saw the push phase take, on fresh queues and on reused ones.
//!
//! Run with `cargo bench --bench broadcast` (add `-- --quick` for a rough pass).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

use chatroom::chat::protocol::message_json;
use chatroom::frame::shared_text;
use chatroom::outbuf::{Chunk, Flushed, OutQueue, Outlet};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Room sizes for one message.
const ROOM_SIZES: [usize; 3] = [1, 100, 10_000];

/// Room sizes and messages per turn for the busy-room group.
const TURN_ROOM_SIZES: [usize; 2] = [100, 1_000];
const MESSAGES_PER_TURN: usize = 10;

/// Characters of text per message, about a line of chat.
const TEXT_CHARS: usize = 100;

/// The system allocator, counting what it hands out while [`COUNTING`] is on
/// (off during the timed loops: then the cost is one relaxed load).
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` with the allocator counting; returns its result, the change in
/// live heap bytes and the number of (re)allocations.
fn counted<T>(f: impl FnOnce() -> T) -> (T, isize, usize) {
    let (bytes, allocs) = (LIVE_BYTES.load(Ordering::Relaxed), ALLOCATIONS.load(Ordering::Relaxed));
    COUNTING.store(true, Ordering::Relaxed);
    let result = f();
    COUNTING.store(false, Ordering::Relaxed);
    (result, LIVE_BYTES.load(Ordering::Relaxed) - bytes, ALLOCATIONS.load(Ordering::Relaxed) - allocs)
}

/// A non-blocking socket in memory: takes up to `budget` bytes per flush,
/// then says WouldBlock, and only counts what it is given.
struct Sink {
    written: u64,
    left: usize,
}

impl Outlet for Sink {}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        let n = offered.min(self.left);
        self.left -= n;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A member as far as delivery is concerned.
#[derive(Default)]
struct Member {
    out: OutQueue,
    dirty: bool,
}

/// A room's members, the reactor's dirty list and the socket.
struct Room {
    members: Vec<Member>,
    dirty: Vec<usize>,
    sink: Sink,
    text: String,
    next_id: u64,
}

impl Room {
    fn new(n: usize) -> Room {
        Room {
            members: (0..n).map(|_| Member::default()).collect(),
            dirty: Vec::with_capacity(n),
            sink: Sink { written: 0, left: usize::MAX },
            text: "x".repeat(TEXT_CHARS),
            // Ten digits from the start, so every frame has the same length.
            next_id: 1_000_000_000,
        }
    }

    /// One message event, serialised and framed once.
    fn frame(&mut self) -> Rc<[u8]> {
        let id = self.next_id;
        self.next_id += 1;
        let json = message_json("welcome", id, "alice", &self.text, 1_764_000_000_000 + id);
        shared_text(json.as_bytes())
    }

    /// Queues `frame` for every member, as `deliver_chat` does.
    fn push(&mut self, frame: &Rc<[u8]>) {
        for (key, member) in self.members.iter_mut().enumerate() {
            member.out.push(Chunk::Shared(frame.clone()));
            if !member.dirty {
                member.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Flushes every dirty member, each with a socket that takes `budget`
    /// bytes; returns how many flushes came back `Partial`.
    fn flush(&mut self, budget: usize) -> usize {
        let mut partial = 0;
        for key in self.dirty.drain(..) {
            let Some(member) = self.members.get_mut(key) else { continue };
            member.dirty = false;
            self.sink.left = budget;
            match member.out.write_to(&mut self.sink) {
                Ok(Flushed::All) => {}
                Ok(Flushed::Partial) => partial += 1,
                Err(e) => panic!("in-memory write failed: {e}"),
            }
        }
        partial
    }

    /// Marks every member with output dirty again (their writable event).
    fn writable(&mut self) {
        for (key, member) in self.members.iter_mut().enumerate() {
            if !member.out.is_empty() && !member.dirty {
                member.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// One turn: `messages` messages to every member, then one flush each.
    fn turn(&mut self, messages: usize) {
        for _ in 0..messages {
            let frame = self.frame();
            self.push(&frame);
        }
        self.flush(usize::MAX);
    }

    /// One message to a slow room: a partial flush, then the writable flush.
    fn turn_partial(&mut self, budget: usize) -> usize {
        let frame = self.frame();
        self.push(&frame);
        let partial = self.flush(budget);
        self.writable();
        self.flush(usize::MAX);
        partial
    }

    fn all_empty(&self) -> bool {
        self.members.iter().all(|m| m.out.is_empty()) && self.dirty.is_empty()
    }
}

/// Prints what `messages` deliveries leave per member of an `n`-member room,
/// measured outside the timed loop; returns the frame's length in bytes.
fn report_per_member(group: &str, n: usize, messages: usize) -> usize {
    let mut room = Room::new(n);
    let frames: Vec<Rc<[u8]>> = (0..messages).map(|_| room.frame()).collect();
    let frame_len = frames.first().map_or(0, |f| f.len());
    let push_all = |room: &mut Room| {
        for frame in &frames {
            room.push(frame);
        }
    };

    // Fresh queues: the first delivery allocates each member's deque.
    let ((), fresh_bytes, fresh_allocs) = counted(|| push_all(&mut room));
    let queued = room.members.first().map_or(0, |m| m.out.len());
    room.flush(usize::MAX);
    // Reused queues: what a steady stream of turns costs.
    let ((), reused_bytes, reused_allocs) = counted(|| push_all(&mut room));
    room.flush(usize::MAX);
    assert!(room.all_empty(), "{group}/{n}: output left over");

    let per = |x: isize| x as f64 / n as f64;
    eprintln!(
        "{group}/{n}: {messages} × {frame_len}-byte frame; per member: {queued} bytes queued (shared, not copied), \
         {} bytes of queue slot (size_of::<Chunk>() × {messages}); heap taken by the pushes per member: \
         {:.1} B in {:.2} allocations on fresh queues, {:.1} B in {:.2} allocations on reused ones",
        std::mem::size_of::<Chunk>() * messages,
        per(fresh_bytes),
        fresh_allocs as f64 / n as f64,
        per(reused_bytes),
        reused_allocs as f64 / n as f64,
    );
    frame_len
}

fn one_message(c: &mut Criterion) {
    let mut group = c.benchmark_group("broadcast/one_message");
    for n in ROOM_SIZES {
        let frame_len = report_per_member("broadcast/one_message", n, 1);
        group.throughput(Throughput::ElementsAndBytes { elements: n as u64, bytes: (n * frame_len) as u64 });

        let mut room = Room::new(n);
        room.turn(1);
        assert_eq!(room.sink.written, (n * frame_len) as u64, "not every member got the frame");
        group.bench_with_input(BenchmarkId::new("flush_all", n), &n, |b, _| b.iter(|| room.turn(black_box(1))));
        assert!(room.all_empty(), "output left over");

        let mut room = Room::new(n);
        let budget = frame_len / 2;
        assert_eq!(room.turn_partial(budget), n, "every first flush should be partial");
        assert_eq!(room.sink.written, (n * frame_len) as u64, "not every member got the frame");
        group.bench_with_input(BenchmarkId::new("partial_then_writable", n), &n, |b, _| {
            b.iter(|| room.turn_partial(black_box(budget)))
        });
        assert!(room.all_empty(), "output left over");
    }
    group.finish();
}

fn busy_turn(c: &mut Criterion) {
    let mut group = c.benchmark_group("broadcast/turn");
    for n in TURN_ROOM_SIZES {
        let frame_len = report_per_member("broadcast/turn", n, MESSAGES_PER_TURN);
        let deliveries = n * MESSAGES_PER_TURN;
        group.throughput(Throughput::ElementsAndBytes {
            elements: deliveries as u64,
            bytes: (deliveries * frame_len) as u64,
        });

        let mut room = Room::new(n);
        room.turn(MESSAGES_PER_TURN);
        assert_eq!(room.sink.written, (deliveries * frame_len) as u64, "not every member got every frame");
        group.bench_with_input(BenchmarkId::new("10_messages", n), &n, |b, _| {
            b.iter(|| room.turn(black_box(MESSAGES_PER_TURN)))
        });
        assert!(room.all_empty(), "output left over");
    }
    group.finish();
}

criterion_group!(benches, one_message, busy_turn);
criterion_main!(benches);
