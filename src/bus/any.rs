//! The one face the server sees of Redis: a single Redis ([`Bus`],
//! `--redis`) or a cluster ([`ClusterBus`], `--redis-cluster`). Each call
//! goes to whichever it is; the events are the same.

use std::time::{Duration, Instant};

use mio::{Registry, Token};

use super::{Bus, BusEvent, ClusterBus, NodeState};

/// A single Redis or a cluster (each boxed: the server keeps one, and
/// the two differ in size).
#[derive(Debug)]
pub enum AnyBus {
    /// `--redis`: one Redis, two connections.
    Single(Box<Bus>),
    /// `--redis-cluster`: two connections to each master.
    Cluster(Box<ClusterBus>),
}

impl AnyBus {
    /// Whether events on `token` are the bus's: `single` is the pair of
    /// tokens a single Redis uses.
    pub fn owns(&self, token: Token, single: [Token; 2]) -> bool {
        match self {
            AnyBus::Single(_) => single.contains(&token),
            AnyBus::Cluster(bus) => bus.owns(token),
        }
    }

    /// See [`Bus::on_event`].
    pub fn on_event(&mut self, registry: &Registry, token: Token, event: &mio::event::Event, now: Instant) {
        match self {
            AnyBus::Single(bus) => bus.on_event(registry, token, event, now),
            AnyBus::Cluster(bus) => bus.on_event(registry, token, event, now),
        }
    }

    /// Queues a command, or a chain of `replies` commands that go
    /// together ([`Bus::command_chain`]); `slot` is the hash slot of the
    /// key it touches (a cluster sends it to that slot's master; one Redis
    /// has them all).
    pub fn command(&mut self, packed: Vec<u8>, tag: u64, slot: Option<u16>, replies: usize) {
        match self {
            AnyBus::Single(bus) => bus.command_chain(packed, tag, replies),
            AnyBus::Cluster(bus) => bus.command_chain(packed, tag, slot, replies),
        }
    }

    /// Subscribes to `channel` (sharded, at its slot's master, in a cluster).
    pub fn subscribe(&mut self, channel: &[u8]) {
        match self {
            AnyBus::Single(bus) => bus.subscribe(channel),
            AnyBus::Cluster(bus) => bus.subscribe(channel),
        }
    }

    /// Forgets `channel`.
    pub fn unsubscribe(&mut self, channel: &[u8]) {
        match self {
            AnyBus::Single(bus) => bus.unsubscribe(channel),
            AnyBus::Cluster(bus) => bus.unsubscribe(channel),
        }
    }

    /// See [`Bus::flush`].
    pub fn flush(&mut self, registry: &Registry) {
        match self {
            AnyBus::Single(bus) => bus.flush(registry),
            AnyBus::Cluster(bus) => bus.flush(registry),
        }
    }

    /// See [`Bus::on_timer`].
    pub fn on_timer(&mut self, registry: &Registry, now: Instant) {
        match self {
            AnyBus::Single(bus) => bus.on_timer(registry, now),
            AnyBus::Cluster(bus) => bus.on_timer(registry, now),
        }
    }

    /// See [`Bus::next_timeout`].
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        match self {
            AnyBus::Single(bus) => bus.next_timeout(now),
            AnyBus::Cluster(bus) => bus.next_timeout(now),
        }
    }

    /// See [`Bus::drain_events`].
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, BusEvent> {
        match self {
            AnyBus::Single(bus) => bus.drain_events(),
            AnyBus::Cluster(bus) => bus.drain_events(),
        }
    }

    /// Whether Redis is fully reachable (a cluster: every master, every slot).
    pub fn is_up(&self) -> bool {
        match self {
            AnyBus::Single(bus) => bus.is_up(),
            AnyBus::Cluster(bus) => bus.is_up(),
        }
    }

    /// The cluster's state for `/readyz` (`ok`, `degraded`, `down`);
    /// `None` for a single Redis.
    pub fn cluster_state(&self) -> Option<&'static str> {
        match self {
            AnyBus::Single(_) => None,
            AnyBus::Cluster(bus) => Some(bus.state()),
        }
    }

    /// Each node's state for `/metrics` (empty for a single Redis), with
    /// the caller's per-slot counts added up by node.
    pub fn node_states(&self, by_slot: &std::collections::HashMap<u16, (u64, u64)>) -> Vec<NodeState> {
        match self {
            AnyBus::Single(_) => Vec::new(),
            AnyBus::Cluster(bus) => bus.node_states(by_slot),
        }
    }

    /// Commands waiting for their answers.
    pub fn pipeline_depth(&self) -> usize {
        match self {
            AnyBus::Single(bus) => bus.pipeline_depth(),
            AnyBus::Cluster(bus) => bus.pipeline_depth(),
        }
    }

    /// Reconnect attempts.
    pub fn reconnects(&self) -> u64 {
        match self {
            AnyBus::Single(bus) => bus.reconnects(),
            AnyBus::Cluster(bus) => bus.reconnects(),
        }
    }

    /// Channels sent in (S)SUBSCRIBE commands.
    pub fn subscribes_sent(&self) -> u64 {
        match self {
            AnyBus::Single(bus) => bus.subscribes_sent(),
            AnyBus::Cluster(bus) => bus.subscribes_sent(),
        }
    }

    /// (S)UNSUBSCRIBE commands sent.
    pub fn unsubscribes_sent(&self) -> u64 {
        match self {
            AnyBus::Single(bus) => bus.unsubscribes_sent(),
            AnyBus::Cluster(bus) => bus.unsubscribes_sent(),
        }
    }
}
