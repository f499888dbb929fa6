//! Posts in flight: how many of each connection's posts, and of each
//! room's, are not yet complete, and so whether a connection may be read.
//!
//! A post is in flight from the moment the chat accepts it (`on_text`)
//! until it is done with: committed by storage, or refused (`on_committed`);
//! in shared mode, answered by Redis, posted or refused. Without a bound,
//! a client writing as fast as its socket allows (`--rate-limit 0`) queues
//! posts ahead of every other room's on their way to storage, and the
//! server's memory grows with the queue. With one, the reactor stops
//! reading a connection that has `--max-posts-in-flight` posts in flight,
//! and the kernel's socket buffers, then TCP's flow control, make the
//! client wait instead of the other rooms.
//!
//! A room is bounded too, at [`ROOM_SHARE`] times a connection's bound:
//! many connections flooding one room together cannot queue more than that
//! ahead of a quiet room's post either.
//!
//! Connections are known by their serial, unique over the server's life.

use std::collections::HashMap;

/// A room's posts in flight at most, in connections' worth: enough for a
/// few busy members to keep storage's batches full together, small enough
/// that a quiet room's post waits behind a bounded number of a hot room's.
pub const ROOM_SHARE: usize = 4;

/// One connection's posts in flight.
#[derive(Debug)]
struct Flight {
    /// The live room's slot (a connection stays in one room).
    room: usize,
    /// Posts not yet complete.
    posts: usize,
}

/// Posts in flight by connection and by room.
#[derive(Debug)]
pub(super) struct Flights {
    /// `--max-posts-in-flight`.
    max: usize,
    /// By connection serial; absent when none are in flight.
    conns: HashMap<u64, Flight>,
    /// By live room slot; absent when none are in flight.
    rooms: HashMap<usize, usize>,
}

impl Flights {
    /// No posts in flight; a connection may have `max` (at least 1).
    pub(super) fn new(max: usize) -> Flights {
        Flights { max: max.max(1), conns: HashMap::new(), rooms: HashMap::new() }
    }

    /// Connection `serial`, a member of live room `room`, posted.
    pub(super) fn begin(&mut self, serial: u64, room: usize) {
        self.conns.entry(serial).or_insert(Flight { room, posts: 0 }).posts += 1;
        *self.rooms.entry(room).or_insert(0) += 1;
    }

    /// One post of connection `serial` is complete. A connection that
    /// already left (see [`Flights::forget`]) is not counted any more.
    pub(super) fn end(&mut self, serial: u64) {
        let Some(flight) = self.conns.get_mut(&serial) else { return };
        flight.posts = flight.posts.saturating_sub(1);
        let room = flight.room;
        if flight.posts == 0 {
            self.conns.remove(&serial);
        }
        self.room_done(room, 1);
    }

    /// Connection `serial` left: its posts still in flight no longer hold
    /// its room back (their commits or answers come later, uncounted).
    pub(super) fn forget(&mut self, serial: u64) {
        if let Some(flight) = self.conns.remove(&serial) {
            self.room_done(flight.room, flight.posts);
        }
    }

    fn room_done(&mut self, room: usize, posts: usize) {
        if let Some(count) = self.rooms.get_mut(&room) {
            *count = count.saturating_sub(posts);
            if *count == 0 {
                self.rooms.remove(&room);
            }
        }
    }

    /// How many more messages connection `serial`, in live room `room`,
    /// may send before it must wait (0: do not read it now).
    pub(super) fn allowance(&self, serial: u64, room: usize) -> usize {
        let own = self.conns.get(&serial).map_or(0, |f| f.posts);
        let shared = self.rooms.get(&room).copied().unwrap_or(0);
        let room_left = (self.max * ROOM_SHARE).saturating_sub(shared);
        self.max.saturating_sub(own).min(room_left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_waits_at_its_bound_and_resumes_as_posts_complete() {
        let mut f = Flights::new(2);
        assert_eq!(f.allowance(1, 0), 2);
        f.begin(1, 0);
        f.begin(1, 0);
        assert_eq!(f.allowance(1, 0), 0, "two in flight: not read");
        assert_eq!(f.allowance(2, 0), 2, "another member is not held by it");
        f.end(1);
        assert_eq!(f.allowance(1, 0), 1);
        f.end(1);
        f.end(1);
        assert_eq!(f.allowance(1, 0), 2, "a stray completion does not go below zero");
        assert!(f.conns.is_empty() && f.rooms.is_empty());
    }

    #[test]
    fn a_room_is_bounded_at_its_share_and_a_leaver_frees_it() {
        let mut f = Flights::new(1);
        for serial in 0..ROOM_SHARE as u64 {
            f.begin(serial, 7);
        }
        assert_eq!(f.allowance(99, 7), 0, "the room has its share in flight");
        assert_eq!(f.allowance(99, 8), 1, "other rooms are not held");
        f.forget(0);
        assert_eq!(f.allowance(99, 7), 1);
        f.end(0);
        assert_eq!(f.rooms.get(&7), Some(&(ROOM_SHARE - 1)), "a leaver's late commit is not counted twice");
    }
}
