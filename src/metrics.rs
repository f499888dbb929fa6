//! Counters and gauges, rendered in the Prometheus text format.
//!
//! Everything here is a plain `u64` field on one struct owned by the reactor
//! thread: updating a counter on the hot path is an add, with no atomic, no
//! lock and no allocation. Only `/metrics` (a cold path) formats them.

use std::fmt::Write as _;

/// Bucket upper bounds of the loop-turn histogram, in microseconds.
pub const TURN_BUCKETS_US: [u64; 12] = [10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 250_000];

/// The server's counters.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused at accept (over --max-connections or --max-per-ip).
    pub refused: u64,
    /// Successful WebSocket upgrades.
    pub upgrades: u64,
    /// Refused upgrades by reason label.
    pub rejected: Vec<(&'static str, u64)>,
    /// HTTP requests answered.
    pub http_requests: u64,
    /// Chat messages received from clients (accepted posts).
    pub messages_received: u64,
    /// Chat message frames delivered into member queues.
    pub messages_delivered: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Connection flushes that had output (each one `send`/`sendmsg`, or a few when
    /// more than 64 chunks were queued): deliveries ÷ flushes is the batching.
    pub flushes: u64,
    /// Loop turns that held listeners' output back to share a later write
    /// (see `pacing`).
    pub held_turns: u64,
    /// History rows committed.
    pub history_writes: u64,
    /// Sum of commit latencies in microseconds (for the average).
    pub history_latency_us_sum: u64,
    /// Commit replies received.
    pub history_batches: u64,
    /// Batches timed from queueing to commit (the latency count).
    pub history_latency_count: u64,
    /// Clients dropped as slow consumers.
    pub slow_consumers: u64,
    /// TLS handshake reads put off to the next loop turn (the turn's
    /// share, `HANDSHAKES_PER_TURN`, was spent).
    pub tls_handshakes_deferred: u64,
    /// Posts refused by the rate limiter.
    pub rate_limited: u64,
    /// Times a connection was left unread for its posts in flight.
    pub reads_paused: u64,
    /// Loop turns by duration bucket (last bucket = +Inf).
    pub turn_buckets: [u64; TURN_BUCKETS_US.len() + 1],
    /// Sum of loop-turn durations in microseconds.
    pub turn_us_sum: u64,
    /// Loop turns.
    pub turns: u64,
    /// Redis reconnects.
    pub redis_reconnects: u64,
    /// Chat messages received on Redis room channels.
    pub redis_messages_received: u64,
    /// Posts of this process published unconfirmed (`--redis-wait`).
    pub redis_unconfirmed_posts: u64,
    /// Room channels subscribed to (SUBSCRIBE), resubscriptions included.
    pub redis_subscribes: u64,
    /// UNSUBSCRIBE commands sent.
    pub redis_unsubscribes: u64,
}

/// Gauges sampled when `/metrics` is rendered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Open connections in the HTTP phase.
    pub http_connections: usize,
    /// Open WebSockets.
    pub websockets: usize,
    /// Live rooms.
    pub rooms: usize,
    /// Room members.
    pub members: usize,
    /// Bytes queued for clients.
    pub queued_bytes: usize,
    /// 1 while Redis is connected (or not configured), 0 while it is away.
    pub redis_up: Option<bool>,
    /// Redis commands sent and not yet answered.
    pub redis_pipeline: usize,
    /// Posts sent to Redis, and the script calls that carried them.
    pub redis_posts: (u64, u64),
    /// 1 while ready for traffic.
    pub ready: bool,
}

impl Metrics {
    /// Counts a refused handshake under `label`.
    pub fn reject(&mut self, label: &'static str) {
        match self.rejected.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => self.rejected.push((label, 1)),
        }
    }

    /// Records one loop turn's duration.
    pub fn record_turn(&mut self, micros: u64) {
        let bucket = TURN_BUCKETS_US.iter().position(|&b| micros <= b).unwrap_or(TURN_BUCKETS_US.len());
        if let Some(b) = self.turn_buckets.get_mut(bucket) {
            *b += 1;
        }
        self.turn_us_sum += micros;
        self.turns += 1;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        };
        metric("chatroom_http_connections", "gauge", "Open connections in the HTTP phase.", g.http_connections as u64);
        metric("chatroom_websocket_connections", "gauge", "Open WebSocket connections.", g.websockets as u64);
        metric("chatroom_rooms", "gauge", "Live rooms (rooms with members).", g.rooms as u64);
        metric("chatroom_room_members", "gauge", "Members of live rooms.", g.members as u64);
        metric("chatroom_queued_bytes", "gauge", "Bytes queued for clients, not yet written.", g.queued_bytes as u64);
        metric("chatroom_ready", "gauge", "1 while the server accepts traffic (see /readyz).", u64::from(g.ready));
        metric("chatroom_connections_accepted_total", "counter", "Connections accepted.", self.accepted);
        metric(
            "chatroom_connections_refused_total",
            "counter",
            "Connections refused at accept (limits).",
            self.refused,
        );
        metric("chatroom_websocket_upgrades_total", "counter", "Successful WebSocket handshakes.", self.upgrades);
        metric("chatroom_http_requests_total", "counter", "HTTP requests answered.", self.http_requests);
        metric(
            "chatroom_messages_received_total",
            "counter",
            "Chat messages accepted from clients.",
            self.messages_received,
        );
        metric(
            "chatroom_messages_delivered_total",
            "counter",
            "Chat message frames queued for room members.",
            self.messages_delivered,
        );
        metric("chatroom_bytes_in_total", "counter", "Bytes read from clients.", self.bytes_in);
        metric("chatroom_bytes_out_total", "counter", "Bytes written to clients.", self.bytes_out);
        metric(
            "chatroom_flushes_total",
            "counter",
            "Connection flushes with output (send/sendmsg calls).",
            self.flushes,
        );
        metric(
            "chatroom_held_turns_total",
            "counter",
            "Loop turns that held listeners' output back to share a later write.",
            self.held_turns,
        );
        metric("chatroom_history_writes_total", "counter", "Messages committed to history.", self.history_writes);
        metric(
            "chatroom_history_commits_total",
            "counter",
            "History commit replies from storage.",
            self.history_batches,
        );
        metric("chatroom_slow_consumers_total", "counter", "Clients dropped for unread output.", self.slow_consumers);
        metric(
            "chatroom_tls_handshakes_deferred_total",
            "counter",
            "TLS handshake reads put off to the next loop turn (per-turn share spent).",
            self.tls_handshakes_deferred,
        );
        metric("chatroom_rate_limited_total", "counter", "Posts refused by the rate limiter.", self.rate_limited);
        metric(
            "chatroom_reads_paused_total",
            "counter",
            "Times a connection was left unread because of its posts in flight (--max-posts-in-flight).",
            self.reads_paused,
        );
        metric("chatroom_redis_reconnects_total", "counter", "Reconnections to Redis.", self.redis_reconnects);
        metric(
            "chatroom_redis_messages_received_total",
            "counter",
            "Chat messages received from Redis (the channels of rooms with members here).",
            self.redis_messages_received,
        );
        metric(
            "chatroom_redis_unconfirmed_posts_total",
            "counter",
            "Posts published flagged unconfirmed: fewer replicas than --redis-wait confirmed them in time.",
            self.redis_unconfirmed_posts,
        );
        metric(
            "chatroom_redis_subscribes_total",
            "counter",
            "Redis channels subscribed to, resubscriptions after a reconnect included.",
            self.redis_subscribes,
        );
        metric(
            "chatroom_redis_unsubscribes_total",
            "counter",
            "Redis channels unsubscribed from.",
            self.redis_unsubscribes,
        );
        metric("chatroom_redis_pipeline_depth", "gauge", "Redis commands awaiting replies.", g.redis_pipeline as u64);
        metric("chatroom_redis_posts_total", "counter", "Posts sent to Redis.", g.redis_posts.0);
        metric(
            "chatroom_redis_post_calls_total",
            "counter",
            "Script calls that carried them (posts per call: the batching).",
            g.redis_posts.1,
        );
        if let Some(up) = g.redis_up {
            metric("chatroom_redis_up", "gauge", "1 while Redis is connected.", u64::from(up));
        }
        let _ = write!(
            out,
            "# HELP chatroom_history_commit_seconds Time from queueing a batch of messages to its commit.\n# TYPE chatroom_history_commit_seconds summary\nchatroom_history_commit_seconds_sum {}\nchatroom_history_commit_seconds_count {}\n",
            self.history_latency_us_sum as f64 / 1e6,
            self.history_latency_count
        );
        let _ = write!(
            out,
            "# HELP chatroom_handshakes_rejected_total Refused WebSocket handshakes by reason.\n# TYPE chatroom_handshakes_rejected_total counter\n"
        );
        for (label, n) in &self.rejected {
            let _ = writeln!(out, "chatroom_handshakes_rejected_total{{reason=\"{label}\"}} {n}");
        }
        let _ = write!(
            out,
            "# HELP chatroom_loop_turn_seconds Duration of one reactor loop turn.\n# TYPE chatroom_loop_turn_seconds histogram\n"
        );
        let mut cumulative = 0;
        for (count, bound) in self.turn_buckets.iter().zip(TURN_BUCKETS_US.iter()) {
            cumulative += count;
            let _ = writeln!(out, "chatroom_loop_turn_seconds_bucket{{le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
        }
        cumulative += self.turn_buckets.last().copied().unwrap_or(0);
        let _ = writeln!(out, "chatroom_loop_turn_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "chatroom_loop_turn_seconds_sum {}", self.turn_us_sum as f64 / 1e6);
        let _ = writeln!(out, "chatroom_loop_turn_seconds_count {}", self.turns);
        out
    }
}

/// The Redis Cluster's nodes (`--redis-cluster`), one labelled sample per
/// node and metric: whether its links are up, the redirects and retries it
/// answered, the channels subscribed at it again after their slot moved,
/// and the posts and script calls to the rooms it serves (posts per call
/// per shard). Empty without a cluster.
pub fn render_cluster_nodes(nodes: &[crate::bus::NodeState]) -> String {
    let mut out = String::new();
    if nodes.is_empty() {
        return out;
    }
    type Field = fn(&crate::bus::NodeState) -> u64;
    let families: [(&str, &str, &str, Field); 6] = [
        ("chatroom_redis_node_up", "gauge", "1 while both links to the cluster node are up.", |n| u64::from(n.up)),
        ("chatroom_redis_node_redirects_total", "counter", "MOVED and ASK answers from the node.", |n| n.redirects),
        (
            "chatroom_redis_node_retries_total",
            "counter",
            "TRYAGAIN and CLUSTERDOWN answers from the node (the command went again later).",
            |n| n.retries,
        ),
        (
            "chatroom_redis_node_resubscribes_total",
            "counter",
            "Channels subscribed at the node again after their slot moved.",
            |n| n.resubscribes,
        ),
        ("chatroom_redis_node_posts_total", "counter", "Posts sent to rooms the node serves.", |n| n.posts.0),
        (
            "chatroom_redis_node_post_calls_total",
            "counter",
            "Script calls that carried them (posts per call: the batching, per shard).",
            |n| n.posts.1,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for node in nodes {
            let role = if node.master { "master" } else { "other" };
            let _ = writeln!(out, "{name}{{node=\"{}\",role=\"{role}\"}} {}", node.addr, value(node));
        }
    }
    out
}
