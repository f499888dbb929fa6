//! Which rooms' channels this process listens to: those with members here.
//!
//! Each room has its own channel (`room_channel` in `layout.rs`), so a
//! process hears only the rooms it serves, not every post of every room:
//! a process whose members sit in quiet rooms stays idle however busy the
//! others are. A room is subscribed when it gets its first local member,
//! and unsubscribed once it has had none for the grace period
//! (`--room-grace`): a member who reconnects, or a page reload, finds the
//! subscription still there, with no UNSUBSCRIBE and SUBSCRIBE in between,
//! and no catch-up.
//!
//! This file only decides; the requests wait in a queue that
//! `server/redis.rs` hands to the bus once per turn
//! ([`crate::bus::Bus::subscribe`], [`crate::bus::Bus::unsubscribe`]).
//! What a new subscription may have missed is the feed's to catch up
//! (`feed.rs`), once the bus says it is in place.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::layout::room_channel;

/// A change of subscription for the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// Subscribe to this channel.
    Subscribe(Vec<u8>),
    /// Unsubscribe from this channel.
    Unsubscribe(Vec<u8>),
}

/// The rooms subscribed to, the ones on their way out, and the requests
/// for the bus.
#[derive(Debug)]
pub(super) struct RoomChannels {
    /// Rooms whose channel is subscribed (or asked for): those with local
    /// members, and those within their grace.
    heard: BTreeSet<String>,
    /// Rooms with no local member left, and when their grace ends.
    leaving: BTreeMap<String, Instant>,
    /// Requests for the bus, oldest first.
    requests: Vec<Subscription>,
    /// `--room-grace`.
    grace: Duration,
}

impl RoomChannels {
    /// No rooms yet; an emptied room stays subscribed for `grace`.
    pub(super) fn new(grace: Duration) -> RoomChannels {
        RoomChannels { heard: BTreeSet::new(), leaving: BTreeMap::new(), requests: Vec::new(), grace }
    }

    /// `room` got its first local member: subscribe, unless it still is
    /// (it emptied less than the grace ago).
    pub(super) fn on_first_member(&mut self, room: &str) {
        if self.leaving.remove(room).is_some() {
            return;
        }
        if self.heard.insert(room.to_string()) {
            self.requests.push(Subscription::Subscribe(room_channel(room).into_bytes()));
        }
    }

    /// `room`'s last local member left: unsubscribe once the grace is over.
    pub(super) fn on_last_member_left(&mut self, room: &str, now: Instant) {
        if self.heard.contains(room) {
            self.leaving.insert(room.to_string(), now + self.grace);
        }
    }

    /// Unsubscribes the rooms whose grace is over (run about once a second).
    pub(super) fn on_tick(&mut self, now: Instant) {
        let over: Vec<String> = self.leaving.iter().filter(|(_, at)| now >= **at).map(|(r, _)| r.clone()).collect();
        for room in over {
            self.leaving.remove(&room);
            self.heard.remove(&room);
            self.requests.push(Subscription::Unsubscribe(room_channel(&room).into_bytes()));
        }
    }

    /// When the next grace ends, if any room is leaving.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.leaving.values().min().copied()
    }

    /// Whether `room`'s channel is subscribed (or asked for).
    pub(super) fn hears(&self, room: &str) -> bool {
        self.heard.contains(room)
    }

    /// Every room whose channel is subscribed (or asked for).
    pub(super) fn rooms(&self) -> impl Iterator<Item = &String> {
        self.heard.iter()
    }

    /// The requests for the bus, oldest first.
    pub(super) fn drain(&mut self) -> std::vec::Drain<'_, Subscription> {
        self.requests.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(room: &str) -> Subscription {
        Subscription::Subscribe(room_channel(room).into_bytes())
    }

    fn unsub(room: &str) -> Subscription {
        Subscription::Unsubscribe(room_channel(room).into_bytes())
    }

    #[test]
    fn a_room_is_heard_while_it_has_members_and_for_the_grace_after() {
        let grace = Duration::from_secs(10);
        let mut channels = RoomChannels::new(grace);
        let t0 = Instant::now();
        channels.on_first_member("r");
        assert_eq!(channels.drain().collect::<Vec<_>>(), [sub("r")]);
        channels.on_last_member_left("r", t0);
        assert_eq!(channels.next_deadline(), Some(t0 + grace));

        // Back within the grace: nothing changes on the bus.
        channels.on_tick(t0 + grace / 2);
        channels.on_first_member("r");
        channels.on_tick(t0 + grace * 2);
        assert_eq!(channels.drain().count(), 0);
        assert!(channels.hears("r"));
        assert_eq!(channels.next_deadline(), None);

        // Empty for the whole grace: unsubscribed, and subscribed anew later.
        let t1 = t0 + grace * 3;
        channels.on_last_member_left("r", t1);
        channels.on_tick(t1 + grace - Duration::from_millis(1));
        assert!(channels.hears("r"));
        channels.on_tick(t1 + grace);
        assert!(!channels.hears("r"));
        channels.on_first_member("r");
        assert_eq!(channels.drain().collect::<Vec<_>>(), [unsub("r"), sub("r")]);
    }
}
