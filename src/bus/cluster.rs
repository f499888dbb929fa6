//! The bus over a Redis Cluster (`--redis-cluster`): one [`Bus`] per node,
//! each command sent to the master of its key's slot.
//!
//! ```text
//!   caller ──command(packed, tag, slot)──▶ ClusterBus ──slot map──▶ node's Bus ──▶ master
//!   caller ◀──Reply{tag}───────────────── ClusterBus ◀─MOVED/ASK/TRYAGAIN: again, elsewhere
//!   caller ──subscribe(channel)──────────▶ ClusterBus ──SSUBSCRIBE at the slot's master
//! ```
//!
//! The caller sees the same events as from one [`Bus`]; what a cluster
//! adds stays in here:
//!
//! - **The slot map.** `CLUSTER SLOTS`, asked of a node as soon as one is
//!   up, then every [`REFRESH_EVERY`] ([`REFRESH_DEGRADED`] while a
//!   master is away) and after every redirect or lost node
//!   ([`super::slots`] reads it). Until the first map, commands wait.
//! - **Redirects.** A command answered `-MOVED` goes again to the master
//!   named (the map learns the slot at once, and a refresh follows);
//!   `-ASK` goes once to the node named, after `ASKING`; `-TRYAGAIN` (a
//!   multi-key script meeting a slot half migrated) and `-CLUSTERDOWN`
//!   go again after [`RETRY_AFTER`]. Each command keeps its packed bytes
//!   until its answer, so it can go again; after [`MAX_ATTEMPTS`] the
//!   error reaches the caller.
//! - **Order.** Replies come back by tag, so a command that went again
//!   may be answered after one sent later. A caller that needs order (a
//!   room's posts) keeps one command of that kind in flight at a time.
//! - **Nodes, on demand.** A node's pair of connections (commands, and
//!   sharded subscriptions) is opened the first time the map or a
//!   redirect names it; its tokens come from the range the reactor keeps
//!   for Redis, two per node, and a node is never dropped (so a token
//!   never changes hands). A command for a node whose connection is not
//!   up waits (parked, up to [`MAX_PARKED`]) instead of failing: a
//!   failover moves its slots within seconds, and the next refresh sends
//!   the command to the new master.
//! - **Sharded subscriptions.** A channel is subscribed at the master of
//!   its slot. When the map moves the slot, or the master ends the
//!   subscription itself (an unasked `sunsubscribe`: the slot migrated),
//!   the channel is subscribed at the new owner, and its confirmation
//!   ([`BusEvent::Subscribed`]) tells the caller to catch up from the
//!   stream what was published in between.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::{Registry, Token};

use super::slots::{Redirect, SlotMap, key_slot};
use super::{Bus, BusEvent, RedisUrl, Value, Which};

/// How often the slot map is read again when nothing prompted it: a
/// failover or a resharding shows itself by redirects anyway, so this only
/// bounds how long a quiet process keeps a stale map.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// How often the map is read while the cluster is degraded (a master's
/// link down, or slots without a master): a failover completes about a
/// second after the node timeout, and commands for the lost master's slots
/// wait until the map names its successor.
pub const REFRESH_DEGRADED: Duration = Duration::from_millis(250);

/// The wait before a command answered `TRYAGAIN` or `CLUSTERDOWN` goes
/// again: a slot's keys move in milliseconds, a failover takes about the
/// node timeout.
const RETRY_AFTER: Duration = Duration::from_millis(50);

/// Tries per command (redirects and retries) before its last error reaches
/// the caller: a healthy cluster needs two at most (MOVED, then ASK); 40
/// tries of 50 ms ride out a failover of about two seconds.
const MAX_ATTEMPTS: u32 = 40;

/// Commands that may wait for a node to come up (or for the map to name
/// one) before new ones fail at once (a post's call then goes back to the
/// caller's bounded backlog): `--redis-buffer`'s default, in commands.
const MAX_PARKED: usize = 10_000;

/// Tags of the cluster bus's own commands (CLUSTER SLOTS, ASKING) on a
/// node's bus; the caller's commands get tags below this.
const OWN: u64 = 1 << 63;

/// Where to start, from `--redis-cluster`: seed nodes, and how to log in.
#[derive(Clone, Debug)]
pub struct SeedList {
    /// The seeds, parsed and resolved (each with the credentials it gave).
    pub seeds: Vec<RedisUrl>,
}

impl SeedList {
    /// Parses `HOST:PORT[,HOST:PORT…]`; each seed may also be a URL
    /// `redis://[user:pass@]HOST:PORT` (a cluster has no databases: no
    /// `/DB`). Resolves the hosts, once, here (call it at startup).
    pub fn parse(list: &str) -> Result<SeedList, String> {
        let mut seeds = Vec::new();
        for seed in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let url = if seed.contains("://") { seed.to_string() } else { format!("redis://{seed}") };
            let url = RedisUrl::parse(&url)?;
            if url.db != 0 {
                return Err(format!("{seed:?}: a cluster has only database 0"));
            }
            seeds.push(url);
        }
        if seeds.is_empty() {
            return Err("expected HOST:PORT[,HOST:PORT...]".to_string());
        }
        Ok(SeedList { seeds })
    }
}

/// A command on its way, kept until its answer so it can go again.
#[derive(Debug)]
struct Pending {
    /// The packed command.
    packed: Vec<u8>,
    /// The caller's tag.
    tag: u64,
    /// The slot it routes by; `None` for a command without a key (any
    /// master will do).
    slot: Option<u16>,
    /// Sends so far.
    attempts: u32,
    /// Where an `ASK` sent it (once), instead of the slot's owner.
    ask: Option<SocketAddr>,
    /// Replies it takes: 1, or a chain's length.
    replies: usize,
}

/// One node: its address, its bus, and what it counted.
#[derive(Debug)]
struct Node {
    addr: SocketAddr,
    bus: Bus,
    /// Whether its bus was started (its tokens registered).
    started: bool,
    /// Redirects (MOVED, ASK) this node answered.
    redirects: u64,
    /// TRYAGAIN and CLUSTERDOWN answers: commands sent again later.
    retries: u64,
    /// Channels subscribed here again after a slot moved.
    resubscribes: u64,
    /// Whether the map says it is a master.
    master: bool,
    /// A Down of its command link was logged and no CommandUp since.
    down: bool,
}

/// What `/metrics` shows of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    /// `host:port`.
    pub addr: String,
    /// Whether the last map names it a master.
    pub master: bool,
    /// Both its links up.
    pub up: bool,
    /// Redirects it answered.
    pub redirects: u64,
    /// TRYAGAIN and CLUSTERDOWN answers it gave.
    pub retries: u64,
    /// Channels subscribed at it again after a slot moved.
    pub resubscribes: u64,
    /// The caller's per-slot counts (posts, script calls) added up over
    /// the slots it serves now: batching per shard.
    pub posts: (u64, u64),
}

/// The bus over a Redis Cluster. See the module documentation.
#[derive(Debug)]
pub struct ClusterBus {
    /// The credentials every node is logged in with: the first seed's (a
    /// cluster's nodes share their users).
    login: RedisUrl,
    seeds: Vec<SocketAddr>,
    reply_timeout: Duration,
    /// Nodes by index; the index decides the tokens.
    nodes: Vec<Node>,
    /// The first token of the range the reactor keeps for the nodes; node
    /// `i` has `first + 2i` (commands) and `first + 2i + 1` (subscriptions).
    first_token: usize,
    /// Nodes at most (the range's size / 2).
    max_nodes: usize,
    map: Option<SlotMap>,
    /// Commands sent, by the tag given to the node's bus.
    pending: HashMap<u64, (usize, Pending)>,
    /// Commands waiting for a map, or for their node to come up.
    parked: VecDeque<Pending>,
    /// Commands answered TRYAGAIN, and when they go again.
    retries: Vec<(Instant, Pending)>,
    /// Every channel asked for, and the node it is subscribed at (`None`:
    /// to be placed once the map says where).
    channels: BTreeMap<Vec<u8>, Option<usize>>,
    /// Channels a master ended unasked (their slot migrated), to be placed
    /// again: each counts as a resubscription once it is.
    displaced: BTreeSet<Vec<u8>>,
    next_tag: u64,
    /// The CLUSTER SLOTS asked, and of which node.
    refreshing: Option<(u64, usize)>,
    /// When the next refresh is due (at once after a redirect).
    refresh_at: Instant,
    events: Vec<BusEvent>,
    started: bool,
    /// Whether the caller was told `CommandUp` (the map is known).
    announced: bool,
    /// Whether the caller was told `Down` for commands: no master's
    /// command link is up (until one is again).
    all_down: bool,
}

impl ClusterBus {
    /// A bus for the cluster the seeds belong to; nodes get tokens from
    /// `first_token` on, two each, `max_nodes` nodes at most. No I/O
    /// happens until [`ClusterBus::start`].
    pub fn new(seeds: SeedList, reply_timeout: Duration, first_token: usize, max_nodes: usize) -> ClusterBus {
        let login = seeds.seeds.first().cloned().unwrap_or_else(|| RedisUrl {
            addr: SocketAddr::from(([127, 0, 0, 1], 6379)),
            username: None,
            password: None,
            db: 0,
        });
        ClusterBus {
            login,
            seeds: seeds.seeds.iter().map(|s| s.addr).collect(),
            reply_timeout,
            nodes: Vec::new(),
            first_token,
            max_nodes,
            map: None,
            pending: HashMap::new(),
            parked: VecDeque::new(),
            retries: Vec::new(),
            channels: BTreeMap::new(),
            displaced: BTreeSet::new(),
            next_tag: 0,
            refreshing: None,
            refresh_at: Instant::now(),
            events: Vec::new(),
            started: false,
            announced: false,
            all_down: false,
        }
    }

    /// Connects to the seeds; the first to answer gives the slot map.
    pub fn start(&mut self, registry: &Registry, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        for addr in self.seeds.clone() {
            self.node_for(addr);
        }
        self.start_nodes(registry, now);
    }

    /// Whether `token` is one of the nodes' (in the reserved range).
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.first_token && token.0 < self.first_token + 2 * self.max_nodes
    }

    /// An event on a node's token.
    pub fn on_event(&mut self, registry: &Registry, token: Token, event: &mio::event::Event, now: Instant) {
        let index = (token.0.wrapping_sub(self.first_token)) / 2;
        if let Some(node) = self.nodes.get_mut(index) {
            node.bus.on_event(registry, token, event, now);
        }
        self.collect(now);
    }

    /// Queues a command for the master of `slot` (any master if `None`);
    /// its answer comes back as `Reply { tag }`, after any redirects.
    pub fn command(&mut self, packed: Vec<u8>, tag: u64, slot: Option<u16>) {
        self.command_chain(packed, tag, slot, 1);
    }

    /// Queues a chain of `replies` commands ([`Bus::command_chain`]) for
    /// the master of `slot`: they go together, to one node, and a
    /// redirect of the first (the one with the key) sends them all again
    /// together, so a `WAIT` behind a script always waits where the
    /// script ran.
    pub fn command_chain(&mut self, packed: Vec<u8>, tag: u64, slot: Option<u16>, replies: usize) {
        let pending = Pending { packed, tag, slot, attempts: 0, ask: None, replies };
        self.route(pending);
    }

    /// Subscribes to the sharded channel `channel` at its slot's master.
    pub fn subscribe(&mut self, channel: &[u8]) {
        if self.channels.contains_key(channel) {
            return;
        }
        self.channels.insert(channel.to_vec(), None);
        self.place(channel);
    }

    /// Forgets `channel` (SUNSUBSCRIBE at the node that has it).
    pub fn unsubscribe(&mut self, channel: &[u8]) {
        if let Some(Some(index)) = self.channels.remove(channel)
            && let Some(node) = self.nodes.get_mut(index)
        {
            node.bus.unsubscribe(channel);
        }
    }

    /// Once per turn: starts nodes named since and flushes every node.
    /// (Parked commands go when a node comes up or the map changes, not
    /// here: a master that stays away would cost a pass over them every
    /// turn.)
    pub fn flush(&mut self, registry: &Registry) {
        let now = Instant::now();
        self.start_nodes(registry, now);
        for node in &mut self.nodes {
            node.bus.flush(registry);
        }
        self.collect(now);
    }

    /// Every turn: the nodes' timers, the retries due, and the refresh.
    pub fn on_timer(&mut self, registry: &Registry, now: Instant) {
        if !self.started {
            return;
        }
        for node in &mut self.nodes {
            node.bus.on_timer(registry, now);
        }
        let (due, later): (Vec<_>, Vec<_>) = self.retries.drain(..).partition(|(at, _)| *at <= now);
        self.retries = later;
        for (_, pending) in due {
            self.route(pending);
        }
        if now >= self.refresh_at && self.refreshing.is_none() {
            self.refresh(now);
        }
        self.collect(now);
    }

    /// How long the reactor may sleep.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.started {
            return None;
        }
        if !self.events.is_empty() {
            return Some(Duration::ZERO);
        }
        let retry = self.retries.iter().map(|(at, _)| *at).min();
        let refresh = self.refreshing.is_none().then_some(self.refresh_at);
        let own = [retry, refresh].into_iter().flatten().min().map(|at| at.saturating_duration_since(now));
        self.nodes.iter().filter_map(|n| n.bus.next_timeout(now)).chain(own).min()
    }

    /// The events since the last call, in order.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, BusEvent> {
        self.events.drain(..)
    }

    /// Whether the map is known, covers every slot, and every master's
    /// links are up.
    pub fn is_up(&self) -> bool {
        let Some(map) = &self.map else { return false };
        !map.has_gaps() && self.nodes.iter().filter(|n| n.master).all(|n| n.bus.is_up())
    }

    /// `ok`, `degraded` (a master away, or slots without one) or `down`
    /// (no map yet), for `/readyz`.
    pub fn state(&self) -> &'static str {
        match (&self.map, self.is_up()) {
            (None, _) => "down",
            (Some(_), true) => "ok",
            (Some(_), false) => "degraded",
        }
    }

    /// Commands sent or waiting, not answered yet.
    pub fn pipeline_depth(&self) -> usize {
        self.pending.len() + self.parked.len() + self.retries.len()
    }

    /// Reconnects over every node.
    pub fn reconnects(&self) -> u64 {
        self.nodes.iter().map(|n| n.bus.reconnects()).sum()
    }

    /// Channels sent in SSUBSCRIBE commands, over every node.
    pub fn subscribes_sent(&self) -> u64 {
        self.nodes.iter().map(|n| n.bus.subscribes_sent()).sum()
    }

    /// SUNSUBSCRIBE commands sent, over every node.
    pub fn unsubscribes_sent(&self) -> u64 {
        self.nodes.iter().map(|n| n.bus.unsubscribes_sent()).sum()
    }

    /// Each node's state, for `/metrics`; `by_slot` holds the caller's
    /// counts per hash slot (posts and script calls), added up here by the
    /// master that serves each slot now.
    pub fn node_states(&self, by_slot: &HashMap<u16, (u64, u64)>) -> Vec<NodeState> {
        let mut posts: HashMap<SocketAddr, (u64, u64)> = HashMap::new();
        for (slot, (items, calls)) in by_slot {
            if let Some(owner) = self.map.as_ref().and_then(|m| m.owner(*slot)) {
                let sum = posts.entry(owner).or_default();
                sum.0 += items;
                sum.1 += calls;
            }
        }
        self.nodes
            .iter()
            .map(|n| NodeState {
                posts: posts.get(&n.addr).copied().unwrap_or_default(),
                addr: n.addr.to_string(),
                master: n.master,
                up: n.bus.is_up(),
                redirects: n.redirects,
                retries: n.retries,
                resubscribes: n.resubscribes,
            })
            .collect()
    }

    /// The node at `addr`, made (not started yet) if new. `None` when the
    /// token range is used up.
    fn node_for(&mut self, addr: SocketAddr) -> Option<usize> {
        if let Some(index) = self.nodes.iter().position(|n| n.addr == addr) {
            return Some(index);
        }
        if self.nodes.len() >= self.max_nodes {
            warn!("redis cluster: more than {} nodes; {addr} is not used", self.max_nodes);
            return None;
        }
        let mut url = self.login.clone();
        url.addr = addr;
        let bus = Bus::new(url, self.reply_timeout).sharded();
        self.nodes.push(Node {
            addr,
            bus,
            started: false,
            redirects: 0,
            retries: 0,
            resubscribes: 0,
            master: false,
            down: false,
        });
        Some(self.nodes.len() - 1)
    }

    /// Starts the nodes made since the last call.
    fn start_nodes(&mut self, registry: &Registry, now: Instant) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if !node.started {
                node.started = true;
                let cmd = Token(self.first_token + 2 * i);
                let sub = Token(self.first_token + 2 * i + 1);
                node.bus.start(registry, cmd, sub, now);
            }
        }
    }

    /// Sends `pending` to its node if that node is up; else it waits.
    fn route(&mut self, mut pending: Pending) {
        let target = match (pending.ask, &self.map) {
            (Some(addr), _) => Some(addr),
            (None, None) => None,
            (None, Some(map)) => match pending.slot {
                Some(slot) => map.owner(slot),
                None => map.masters().first().copied(),
            },
        };
        let index = target.and_then(|addr| self.node_for(addr));
        let Some(index) = index.filter(|&i| self.nodes.get(i).is_some_and(|n| n.bus.command_is_up())) else {
            if self.parked.len() >= MAX_PARKED {
                self.events.push(BusEvent::Failed { tag: pending.tag });
            } else {
                self.parked.push_back(pending);
            }
            return;
        };
        let Some(node) = self.nodes.get_mut(index) else { return };
        if pending.ask.take().is_some() {
            node.bus.command(redis::cmd("ASKING").get_packed_command(), OWN | self.next_tag);
            self.next_tag += 1;
        }
        pending.attempts += 1;
        let tag = self.next_tag & !OWN;
        self.next_tag += 1;
        node.bus.command_chain(pending.packed.clone(), tag, pending.replies);
        self.pending.insert(tag, (index, pending));
    }

    /// Sends what waited, in order, where it can go now.
    fn unpark(&mut self) {
        if self.parked.is_empty() || self.map.is_none() {
            return;
        }
        for pending in std::mem::take(&mut self.parked) {
            self.route(pending);
        }
    }

    /// Subscribes `channel` at its slot's master, if the map says which.
    fn place(&mut self, channel: &[u8]) {
        let Some(owner) = self.map.as_ref().and_then(|m| m.owner(key_slot(channel))) else { return };
        let Some(index) = self.node_for(owner) else { return };
        if let Some(node) = self.nodes.get_mut(index) {
            node.bus.subscribe(channel);
        }
        self.channels.insert(channel.to_vec(), Some(index));
    }

    /// Asks a node that is up for `CLUSTER SLOTS` (a seed if none is).
    fn refresh(&mut self, now: Instant) {
        self.refresh_at = now + self.refresh_interval();
        // Prefer a master the map knows, then any node that is up.
        let up = |n: &Node| n.bus.command_is_up();
        let index = self.nodes.iter().position(|n| n.master && up(n)).or_else(|| self.nodes.iter().position(up));
        let Some(index) = index else { return };
        let tag = OWN | self.next_tag;
        self.next_tag += 1;
        if let Some(node) = self.nodes.get_mut(index) {
            node.bus.command(redis::cmd("CLUSTER").arg("SLOTS").get_packed_command(), tag);
            self.refreshing = Some((tag, index));
        }
    }

    /// Asks for a refresh as soon as the one in flight (if any) is done.
    fn refresh_soon(&mut self, now: Instant) {
        self.refresh_at = self.refresh_at.min(now);
    }

    /// Takes the nodes' events and gives the caller its own.
    fn collect(&mut self, now: Instant) {
        for index in 0..self.nodes.len() {
            let Some(node) = self.nodes.get_mut(index) else { continue };
            let events: Vec<BusEvent> = node.bus.drain_events().collect();
            for event in events {
                self.on_node_event(index, event, now);
            }
        }
        if self.refreshing.is_none() && now >= self.refresh_at {
            self.refresh(now);
        }
    }

    /// One event of node `index`'s bus.
    fn on_node_event(&mut self, index: usize, event: BusEvent, now: Instant) {
        let addr = self.nodes.get(index).map(|n| n.addr);
        match event {
            BusEvent::CommandUp => {
                if let Some(node) = self.nodes.get_mut(index) {
                    node.down = false;
                }
                self.all_down = false;
                if self.map.is_none() {
                    self.refresh_soon(now);
                } else {
                    // Something may wait for it; and the caller resends
                    // what it kept while a master was away.
                    self.unpark();
                    self.events.push(BusEvent::CommandUp);
                }
            }
            BusEvent::SubscribedUp => {
                // Each channel placed here is in place now: each may have
                // missed messages, so each is confirmed to the caller.
                let here: Vec<Vec<u8>> =
                    self.channels.iter().filter(|(_, at)| **at == Some(index)).map(|(c, _)| c.clone()).collect();
                self.events.extend(here.into_iter().map(|channel| BusEvent::Subscribed { channel }));
            }
            BusEvent::Subscribed { channel } => self.events.push(BusEvent::Subscribed { channel }),
            BusEvent::Unsubscribed { channel } => {
                if let Some(at) = self.channels.get_mut(&channel) {
                    *at = None;
                    self.displaced.insert(channel.clone());
                    debug!("redis cluster: {} ended at {addr:?}; placing it again", String::from_utf8_lossy(&channel));
                    self.refresh_soon(now);
                }
            }
            BusEvent::Down { which, reason } => {
                let reason = format!("{} ({})", reason, addr.map(|a| a.to_string()).unwrap_or_default());
                self.refresh_soon(now);
                if let Some((_, at)) = self.refreshing
                    && at == index
                    && which == Which::Command
                {
                    self.refreshing = None;
                }
                match which {
                    // A master's command link: its commands wait (parked)
                    // for it or for the replica that takes its slots.
                    Which::Command => {
                        if let Some(node) = self.nodes.get_mut(index)
                            && !node.down
                        {
                            node.down = true;
                            if node.master {
                                warn!("redis cluster: master down: {reason}");
                            } else {
                                debug!("redis cluster: node down: {reason}");
                            }
                        }
                        // No master left to send to: the caller keeps its
                        // posts in its own bounded backlog until one is back
                        // (and tells their authors when it is full).
                        let none_up = !self.nodes.iter().any(|n| n.master && n.bus.command_is_up());
                        if self.announced && none_up && !self.all_down {
                            self.all_down = true;
                            self.events
                                .push(BusEvent::Down { which, reason: format!("every master is away: {reason}") });
                        }
                    }
                    Which::Subscription => {
                        if self.nodes.get(index).is_some_and(|n| n.master) {
                            self.events.push(BusEvent::Down { which, reason });
                        }
                    }
                }
            }
            BusEvent::Reply { tag, value } if tag & OWN != 0 => {
                if self.refreshing.is_some_and(|(t, _)| t == tag) {
                    self.refreshing = None;
                    if let Some(addr) = addr {
                        self.on_slots(&value, addr, now);
                    }
                }
            }
            BusEvent::Reply { tag, value } => {
                let Some((_, pending)) = self.pending.remove(&tag) else { return };
                self.on_reply(index, pending, value, now);
            }
            BusEvent::Failed { tag } => {
                if tag & OWN != 0 {
                    if self.refreshing.is_some_and(|(t, _)| t == tag) {
                        self.refreshing = None;
                    }
                    return;
                }
                // Sent, and the link dropped: it may or may not have run,
                // which only the caller can judge (posts go again safely).
                if let Some((_, pending)) = self.pending.remove(&tag) {
                    self.events.push(BusEvent::Failed { tag: pending.tag });
                }
                self.refresh_soon(now);
            }
            BusEvent::Message { channel, payload } => self.events.push(BusEvent::Message { channel, payload }),
        }
    }

    /// A node answered one of the caller's commands.
    fn on_reply(&mut self, index: usize, mut pending: Pending, value: Value, now: Instant) {
        // A chain is redirected or retried by its first command's answer:
        // that is the one with the key.
        let error = match &value {
            Value::Error(error) => error,
            Value::Array(replies) if pending.replies > 1 => match replies.first() {
                Some(Value::Error(error)) => error,
                _ => return self.events.push(BusEvent::Reply { tag: pending.tag, value }),
            },
            _ => return self.events.push(BusEvent::Reply { tag: pending.tag, value }),
        };
        if pending.attempts >= MAX_ATTEMPTS {
            return self.events.push(BusEvent::Reply { tag: pending.tag, value });
        }
        let Some(node) = self.nodes.get_mut(index) else { return };
        match Redirect::parse(error, node.addr) {
            Some(Redirect::Moved { slot, addr }) => {
                node.redirects += 1;
                if let Some(map) = &mut self.map {
                    map.set_owner(slot, addr);
                }
                self.refresh_soon(now);
                self.route(pending);
            }
            Some(Redirect::Ask { addr, .. }) => {
                node.redirects += 1;
                pending.ask = Some(addr);
                self.route(pending);
            }
            None if error.starts_with("TRYAGAIN") || error.starts_with("CLUSTERDOWN") => {
                node.retries += 1;
                self.retries.push((now + RETRY_AFTER, pending));
            }
            // Any other error (NOSCRIPT included: the caller loads the
            // script at this slot's master and goes again) is the caller's.
            None => self.events.push(BusEvent::Reply { tag: pending.tag, value }),
        }
    }

    /// A `CLUSTER SLOTS` reply from `asked`: the new map; channels whose
    /// slot moved are subscribed where it is now.
    fn on_slots(&mut self, value: &Value, asked: SocketAddr, now: Instant) {
        let Some(map) = SlotMap::from_cluster_slots(value, asked) else {
            warn!("redis cluster: {asked} did not answer CLUSTER SLOTS: {value:?}");
            return;
        };
        let masters = map.masters();
        for addr in &masters {
            self.node_for(*addr);
        }
        for node in &mut self.nodes {
            node.master = masters.contains(&node.addr);
        }
        let changed = self.map.as_ref().is_some_and(|old| *old != map);
        if self.map.as_ref() != Some(&map) {
            info!("redis cluster: {} masters: {masters:?}", masters.len());
        }
        self.map = Some(map);
        self.refresh_at = now + self.refresh_interval();
        // Channels at a node that no longer owns their slot, or not placed.
        let moved: Vec<(Vec<u8>, Option<usize>)> = self
            .channels
            .iter()
            .filter(|(channel, at)| {
                let owner = self.map.as_ref().and_then(|m| m.owner(key_slot(channel)));
                at.and_then(|i| self.nodes.get(i)).map(|n| n.addr) != owner
            })
            .map(|(c, at)| (c.clone(), *at))
            .collect();
        for (channel, at) in moved {
            if let Some(old) = at.and_then(|i| self.nodes.get_mut(i)) {
                old.bus.unsubscribe(&channel);
            }
            self.place(&channel);
            let again = at.is_some() || self.displaced.remove(&channel);
            if again
                && let Some(Some(new)) = self.channels.get(&channel)
                && let Some(node) = self.nodes.get_mut(*new)
            {
                node.resubscribes += 1;
            }
        }
        if !self.announced && self.nodes.iter().any(|n| n.bus.command_is_up()) {
            self.announced = true;
            self.events.push(BusEvent::CommandUp);
        } else if changed && self.announced {
            // Slots moved (a failover, a resharding): what the caller kept
            // back after commands failed can go now, to the new owners,
            // even when no link came up again to say so.
            self.events.push(BusEvent::CommandUp);
        }
        self.unpark();
    }

    /// The wait until the next refresh: short while the cluster is
    /// degraded, so that commands parked for a lost master go to its
    /// successor soon after the failover.
    fn refresh_interval(&self) -> Duration {
        if self.is_up() { REFRESH_EVERY } else { REFRESH_DEGRADED }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn seeds_are_addresses_or_urls_with_credentials() {
        let list = SeedList::parse("127.0.0.1:7000, redis://app:pw@127.0.0.1:7001,").unwrap();
        assert_eq!(list.seeds.len(), 2);
        assert_eq!(list.seeds[0].addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(list.seeds[0].password, None);
        assert_eq!(list.seeds[1].username.as_deref(), Some("app"));
        assert_eq!(list.seeds[1].password.as_deref(), Some("pw"));
        let e = SeedList::parse("redis://127.0.0.1:7000/2").unwrap_err();
        assert!(e.contains("only database 0"), "{e}");
        assert!(SeedList::parse(" , ").is_err());
        assert!(SeedList::parse("rediss://127.0.0.1:7000").is_err());
    }

    #[test]
    fn a_bus_owns_its_range_of_tokens() {
        let list = SeedList::parse("127.0.0.1:7000").unwrap();
        let bus = ClusterBus::new(list, Duration::from_secs(1), 1000, 4);
        assert!(!bus.owns(Token(999)));
        assert!(bus.owns(Token(1000)) && bus.owns(Token(1007)));
        assert!(!bus.owns(Token(1008)));
        assert_eq!(bus.state(), "down", "no map before the first CLUSTER SLOTS");
    }
}
