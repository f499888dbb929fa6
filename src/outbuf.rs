//! A connection's output: one queue of byte chunks, sent with one vectored write.
//!
//! Everything a connection sends goes through here, in order: HTTP response
//! heads and bodies, the 101 of the handshake, tungstenite's pongs and close
//! frames, and broadcast frames. Three kinds of chunk let each of those avoid
//! a copy:
//!
//! - [`Chunk::Static`]: bytes that live as long as the program, such as the
//!   embedded `www/` files: a file body is sent straight from the binary.
//! - [`Chunk::Shared`]: one encoded broadcast frame, shared by every member of
//!   a room. Server frames are unmasked (RFC 6455 §5.1), so the bytes are the
//!   same for everyone: a delivery costs a reference count, not a copy.
//! - [`Chunk::Owned`]: bytes for this connection only.
//!
//! The reactor calls [`OutQueue::write_to`] once per loop turn for each
//! connection that has output ("before sleep", as redis's `ae.c` does), so
//! whatever one turn queued leaves in a single `sendmsg` syscall
//! (uWebSockets calls this corking). [`OutQueue::len`] is the backlog that
//! `--max-pending` caps: a client that stops reading shows itself by
//! passing it.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Where a queue's bytes go. Several slices leave in one `send_vectored`,
/// which is `write_vectored` (writev(2)) unless the writer knows better: a
/// TCP socket sends them with sendmsg(2), straight into the socket layer,
/// skipping writev's detour through the file layer (perf showed it at a few
/// percent of a broadcast, as `vfs_writev` and `fdget_pos`).
pub trait Outlet: Write {
    /// Writes from several slices in one call; returns the bytes taken.
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored(bufs)
    }
}

impl Outlet for mio::net::TcpStream {
    fn send_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(&*self).send_vectored(bufs)
    }
}

/// One piece of pending output.
#[derive(Clone, Debug)]
pub enum Chunk {
    /// Bytes embedded in the binary.
    Static(&'static [u8]),
    /// A frame shared with other connections.
    Shared(Rc<[u8]>),
    /// Bytes for this connection alone.
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Static(b) => b,
            Chunk::Shared(b) => b,
            Chunk::Owned(b) => b,
        }
    }
}

/// Slices handed to one vectored write: Linux takes up to 1024 (IOV_MAX); 64 is
/// plenty per turn and keeps the array on the stack small.
const MAX_IOV: usize = 64;

/// Small owned writes (pongs, small frames) are appended to the last owned
/// chunk instead of becoming chunks of their own, up to this size in bytes.
/// This keeps the iovec count low when tungstenite writes a frame in pieces.
const COALESCE_LIMIT: usize = 4096;

/// Slots a flushed queue keeps for the next turn: 64 × 24 bytes. Under
/// load a member gets several frames per turn; keeping the slots avoids
/// three reallocations per member per turn (measured by benches/broadcast.rs).
const KEEP_SLOTS: usize = 64;

/// What [`OutQueue::write_to`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The socket took part of it and would block: wait for writable.
    Partial,
}

/// A connection's pending output, in order.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// The first chunk, kept inline. Most deliveries are one frame to a
    /// member per turn, and with the first chunk here they allocate
    /// nothing; the ring below is only for the second chunk on.
    head: Option<Chunk>,
    /// The chunks after `head` (always empty when `head` is `None`).
    rest: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Bytes queued and not yet written.
    len: usize,
}

impl OutQueue {
    /// An empty queue (allocates nothing until used).
    pub fn new() -> OutQueue {
        OutQueue::default()
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `chunk` after everything already queued.
    pub fn push(&mut self, chunk: Chunk) {
        let n = chunk.bytes().len();
        if n == 0 {
            return;
        }
        self.len += n;
        if self.head.is_none() {
            self.head = Some(chunk);
        } else {
            self.rest.push_back(chunk);
        }
    }

    /// The queued chunks, in order.
    fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.head.iter().chain(self.rest.iter())
    }

    /// The unsent bytes, chunk by chunk: the front chunk from `offset`
    /// (always within it, see `consume`), the others whole.
    fn unsent(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks()
            .enumerate()
            .map(|(i, chunk)| if i == 0 { chunk.bytes().get(self.offset..).unwrap_or(&[]) } else { chunk.bytes() })
    }

    /// Queues a copy of `bytes`, appending to the last owned chunk when small.
    pub(crate) fn push_copy(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // Append to the tail only if it is owned, not yet partly written
        // (the offset refers to the front chunk), and stays small.
        let tail_is_front = self.rest.is_empty() && self.offset > 0;
        let tail = if self.rest.is_empty() { self.head.as_mut() } else { self.rest.back_mut() };
        if let Some(Chunk::Owned(tail)) = tail
            && !tail_is_front
            && tail.len() + bytes.len() <= COALESCE_LIMIT
        {
            tail.extend_from_slice(bytes);
            self.len += bytes.len();
            return;
        }
        self.push(Chunk::Owned(bytes.to_vec()));
    }

    /// Drops everything queued (a connection being torn down).
    pub fn clear(&mut self) {
        *self = OutQueue::default();
    }

    /// Drops everything not yet started, but keeps the rest of a chunk the
    /// peer already has the beginning of: cutting that short would leave the
    /// stream mid-frame, and whatever is queued next (a close frame) would
    /// be read as the rest of that frame's payload.
    pub(crate) fn drop_unsent(&mut self) {
        if self.offset == 0 {
            return self.clear();
        }
        self.rest.clear();
        self.len = self.head.as_ref().map_or(0, |c| c.bytes().len().saturating_sub(self.offset));
    }

    /// Writes as much as `w` takes, in vectored writes of up to `MAX_IOV`
    /// chunks, until the queue is empty or `w` would block.
    ///
    /// Errors other than WouldBlock and Interrupted are returned: the peer is
    /// gone, and the caller closes this connection only.
    pub fn write_to<W: Outlet>(&mut self, w: &mut W) -> io::Result<Flushed> {
        let chunks_this_turn = usize::from(self.head.is_some()) + self.rest.len();
        while self.head.is_some() {
            let mut slices: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut count = 0;
            for (slot, bytes) in slices.iter_mut().zip(self.unsent()) {
                *slot = IoSlice::new(bytes);
                count += 1;
            }
            // One slice goes out with `write`, which std turns into send(2);
            // several with sendmsg(2) (see `Outlet`): both are socket calls.
            let written = match slices.get(..count).unwrap_or_default() {
                [one] => w.write(one),
                many => w.send_vectored(many),
            };
            match written {
                // A zero-length write with data pending means the peer can
                // take no more: treat it as a broken connection.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                // The kernel's send buffer is full: come back when writable.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Partial),
                // A signal arrived mid-call: nothing was written, try again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // Keep a busy connection's slots (re-growing them every turn would
        // cost allocations on the hot path), but not an unusually large
        // backlog's; quiet connections give them back in `shrink`.
        // A connection that got one or two chunks this turn is not busy:
        // it keeps nothing, so an idle socket holds no slot memory.
        if self.rest.capacity() > KEEP_SLOTS || chunks_this_turn <= 2 {
            self.rest = VecDeque::new();
        }
        Ok(Flushed::All)
    }

    /// Returns the slot memory of an empty queue (called for quiet
    /// connections by the heartbeat timer, so idle sockets hold nothing).
    pub fn shrink(&mut self) {
        if self.rest.is_empty() {
            self.rest = VecDeque::new();
        }
    }

    /// The queue's first unsent bytes, as they lie in its first chunk.
    pub(crate) fn front(&self) -> &[u8] {
        self.unsent().next().unwrap_or(&[])
    }

    /// Copies the queue's first bytes into `buf` (as many as fit) without
    /// taking them: TLS gathers them into a record, then [`OutQueue::advance`]s.
    pub(crate) fn copy_front(&self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for bytes in self.unsent() {
            let take = bytes.len().min(buf.len() - n);
            if let (Some(dst), Some(src)) = (buf.get_mut(n..n + take), bytes.get(..take)) {
                dst.copy_from_slice(src);
            }
            n += take;
            if n == buf.len() {
                break;
            }
        }
        n
    }

    /// Forgets the first `n` bytes, sent some other way (encrypted by TLS).
    pub(crate) fn advance(&mut self, n: usize) {
        self.consume(n);
        if self.is_empty() && self.rest.capacity() > KEEP_SLOTS {
            self.rest = VecDeque::new();
        }
    }

    /// Forgets the first `n` written bytes.
    fn consume(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = &self.head else { break };
            let remaining = front.bytes().len() - self.offset;
            if n >= remaining {
                n -= remaining;
                self.offset = 0;
                self.head = self.rest.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
    }

    /// All queued bytes, copied out (for tests and the in-memory benches).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for bytes in self.unsent() {
            out.extend_from_slice(bytes);
        }
        out
    }
}

/// tungstenite writes its pongs and close frames through `Write`; this
/// appends them to the queue and never blocks, so they stay in order with
/// everything else the connection sends. The real socket write happens once
/// per loop turn in [`OutQueue::write_to`].
impl Write for OutQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push_copy(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `budget` bytes, then says WouldBlock.
    struct Trickle {
        taken: Vec<u8>,
        budget: usize,
        calls: usize,
    }

    impl Outlet for Trickle {}

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.budget);
                self.taken.extend_from_slice(&b[..take]);
                self.budget -= take;
                n += take;
                if self.budget == 0 {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn order_is_kept_across_partial_writes() {
        let shared: Rc<[u8]> = Rc::from(&b"shared"[..]);
        let mut q = OutQueue::new();
        q.push(Chunk::Static(b"static-"));
        q.push(Chunk::Shared(shared.clone()));
        q.push_copy(b"-owned");
        q.push_copy(b"+more");
        assert_eq!(q.len(), 24);
        let mut sock = Trickle { taken: vec![], budget: 10, calls: 0 };
        assert_eq!(q.write_to(&mut sock).unwrap(), Flushed::Partial);
        assert_eq!(q.len(), 14);
        sock.budget = 100;
        assert_eq!(q.write_to(&mut sock).unwrap(), Flushed::All);
        assert_eq!(sock.taken, b"static-shared-owned+more");
        assert!(q.is_empty());
    }

    #[test]
    fn one_writev_for_a_whole_turn() {
        let frame: Rc<[u8]> = Rc::from(vec![7u8; 100]);
        let mut q = OutQueue::new();
        for _ in 0..50 {
            q.push(Chunk::Shared(frame.clone()));
        }
        let mut sock = Trickle { taken: vec![], budget: usize::MAX, calls: 0 };
        q.write_to(&mut sock).unwrap();
        assert_eq!(sock.calls, 1);
        assert_eq!(sock.taken.len(), 5000);
    }

    #[test]
    fn one_chunk_a_turn_allocates_no_ring() {
        let frame: Rc<[u8]> = Rc::from(vec![7u8; 100]);
        let mut q = OutQueue::new();
        let mut sock = Trickle { taken: vec![], budget: usize::MAX, calls: 0 };
        for _ in 0..3 {
            q.push(Chunk::Shared(frame.clone()));
            assert_eq!(q.rest.capacity(), 0, "the first chunk waits inline");
            assert_eq!(q.write_to(&mut sock).unwrap(), Flushed::All);
        }
        assert_eq!(sock.taken.len(), 300);
        // A second chunk goes to the ring, in order, and a partial write of
        // the head leaves the rest queued behind it.
        q.push(Chunk::Static(b"ab"));
        q.push(Chunk::Static(b"cd"));
        let mut slow = Trickle { taken: vec![], budget: 1, calls: 0 };
        assert_eq!(q.write_to(&mut slow).unwrap(), Flushed::Partial);
        q.drop_unsent();
        assert_eq!(q.to_vec(), b"b");
    }

    #[test]
    fn small_copies_coalesce() {
        let mut q = OutQueue::new();
        for _ in 0..10 {
            q.push_copy(b"abc");
        }
        assert_eq!(q.chunks().count(), 1);
        assert_eq!(q.to_vec(), b"abc".repeat(10));
    }
}
