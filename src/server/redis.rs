//! The reactor's side of Redis (`--redis`): the bus's events and the chat's
//! handoffs go to the cluster, and the cluster's commands and changes of
//! subscription leave through the bus once per turn.
//!
//! The bus ([`crate::bus`]) moves bytes and knows nothing of rooms; the chat
//! ([`crate::chat`]) knows rooms but not Redis; the cluster
//! ([`crate::cluster`]) knows the Redis data layout and the chat, but no
//! sockets. This file is the small piece that carries things between them,
//! and every Redis call of the reactor goes through it.

use std::time::{Duration, Instant};

use mio::Registry;

use crate::bus::{AnyBus, Bus, BusEvent, ClusterBus, RedisUrl, SeedList};
use crate::cluster::{CHANNELS, Cluster, Subscription};
use crate::config::Config;
use crate::server::{REDIS_CMD, REDIS_NODE_TOKENS, REDIS_NODES, REDIS_SUB, Server, StartError};

impl Server {
    /// With `--redis` or `--redis-cluster`: the bus, connecting from now
    /// on, and the cluster state. The addresses are resolved once, here;
    /// every (re)connect after that is non-blocking, inside the loop.
    pub(super) fn open_redis(
        cfg: &Config,
        registry: &Registry,
    ) -> Result<(Option<AnyBus>, Option<Cluster>), StartError> {
        let cluster = || {
            Cluster::new(cfg.redis_buffer, cfg.redis_batch, cfg.presence_ttl, cfg.room_grace)
                .waiting_for(cfg.redis_wait)
        };
        if !cfg.redis_cluster.is_empty() {
            let seeds = SeedList::parse(&cfg.redis_cluster.join(","))
                .map_err(|e| StartError(format!("--redis-cluster: {e}")))?;
            let mut bus = ClusterBus::new(seeds, cfg.redis_timeout, REDIS_NODE_TOKENS, REDIS_NODES);
            bus.start(registry, Instant::now());
            return Ok((Some(AnyBus::Cluster(Box::new(bus))), Some(cluster().sharded())));
        }
        let Some(url) = &cfg.redis else { return Ok((None, None)) };
        let url = RedisUrl::parse(url).map_err(|e| StartError(format!("--redis: {e}")))?;
        let mut bus = Bus::new(url, cfg.redis_timeout);
        for channel in CHANNELS {
            bus.subscribe(channel);
        }
        bus.start(registry, REDIS_CMD, REDIS_SUB, Instant::now());
        Ok((Some(AnyBus::Single(Box::new(bus))), Some(cluster())))
    }

    /// Handles everything the bus produced since the last call.
    pub(super) fn on_bus_events(&mut self) {
        let (Some(bus), Some(cluster)) = (&mut self.bus, &mut self.cluster) else { return };
        self.metrics.redis_reconnects = bus.reconnects();
        self.metrics.redis_subscribes = bus.subscribes_sent();
        self.metrics.redis_unsubscribes = bus.unsubscribes_sent();
        let events: Vec<BusEvent> = bus.drain_events().collect();
        if events.is_empty() {
            return;
        }
        // The chat's handoffs first: a resubscribe catches up the rooms
        // listened to, so the cluster must know them all.
        cluster.take_handoffs(&mut self.chat, self.now);
        for event in events {
            cluster.on_event(event, &mut self.chat, self.now);
        }
        let counts = cluster.counts();
        self.metrics.redis_messages_received = counts.received;
        self.metrics.redis_unconfirmed_posts = counts.unconfirmed;
        let settled = cluster.take_directory_settled();
        self.deliver_chat();
        if settled {
            self.answer_directory_waiters();
        }
    }

    /// Hands the chat's handoffs to the cluster, sends the cluster's
    /// commands, and flushes the bus (once per turn).
    pub(super) fn flush_bus(&mut self) {
        let (Some(bus), Some(cluster)) = (&mut self.bus, &mut self.cluster) else { return };
        cluster.take_handoffs(&mut self.chat, self.now);
        for change in cluster.drain_subscriptions() {
            match change {
                Subscription::Subscribe(channel) => bus.subscribe(&channel),
                Subscription::Unsubscribe(channel) => bus.unsubscribe(&channel),
            }
        }
        for (packed, tag, slot, replies) in cluster.drain_commands() {
            bus.command(packed, tag, slot, replies);
        }
        bus.flush(self.poll.registry());
        // A post refused for want of Redis is told to its author this turn.
        self.deliver_chat();
        // Commands refused because the bus is down come back as Failed now.
        self.on_bus_events();
    }

    /// Once a second: the cluster's presence snapshots, silent processes,
    /// and rooms whose grace is over (their unsubscriptions leave with this
    /// turn's flush).
    pub(super) fn on_cluster_tick(&mut self) {
        if let Some(cluster) = &mut self.cluster {
            cluster.on_tick(self.now, &mut self.chat);
        }
    }

    /// When the cluster needs the loop to wake without I/O.
    pub(super) fn cluster_wakeup(&self) -> Option<Duration> {
        self.cluster.as_ref().and_then(|c| c.next_wakeup(self.now))
    }
}

impl Server {
    /// Whether `/api/rooms` may answer from the chat's directory now. With
    /// Redis, the figures of rooms served elsewhere are read from it first
    /// when they are older than a couple of seconds (see
    /// `cluster/directory.rs`): then this is false, and the request waits.
    pub(super) fn directory_ready(&mut self) -> bool {
        let now = self.now;
        self.cluster.as_mut().is_none_or(|c| c.directory_ready(now))
    }

    /// The directory refresh ended: answers the API requests that waited.
    fn answer_directory_waiters(&mut self) {
        for waiter in std::mem::take(&mut self.directory_waiters) {
            self.answer_waiter(waiter);
        }
    }
}
