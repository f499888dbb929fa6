//! Live numbers: the gauges behind `/metrics` and `/readyz`, and the
//! once-a-second feed of `/ws/stats` that the stats page draws.
//!
//! The feed is computed once per second for all viewers (rates are
//! differences of the counters since the last tick) and framed once.

use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::metrics::Gauges;
use crate::server::Server;

/// Busiest rooms listed in the feed.
const TOP_ROOMS: usize = 5;

/// Counters at one tick, to turn totals into per-second rates.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sample {
    received: u64,
    delivered: u64,
    bytes_in: u64,
    bytes_out: u64,
    turns: u64,
    turn_us: u64,
}

impl Server {
    /// Samples the gauges (a scan of connections: only on cold paths).
    pub(super) fn gauges(&self) -> Gauges {
        let websockets = self.conns.iter().filter(|(_, c)| c.is_websocket()).count();
        let (rooms, members) = self.chat.counts();
        Gauges {
            http_connections: self.conns.len() - websockets,
            websockets,
            rooms,
            members,
            queued_bytes: self.conns.iter().map(|(_, c)| c.out_len()).sum(),
            redis_up: self.bus.as_ref().map(|b| b.is_up()),
            redis_pipeline: self.bus.as_ref().map_or(0, |b| b.pipeline_depth()),
            redis_posts: self.cluster.as_ref().map_or((0, 0), |c| c.posts_sent()),
            ready: self.is_ready(),
        }
    }

    fn sample(&self) -> Sample {
        Sample {
            received: self.metrics.messages_received,
            delivered: self.metrics.messages_delivered,
            bytes_in: self.metrics.bytes_in,
            bytes_out: self.metrics.bytes_out,
            turns: self.metrics.turns,
            turn_us: self.metrics.turn_us_sum,
        }
    }

    /// The stats frame: totals now, and rates over the last second.
    pub(super) fn stats_json(&self) -> String {
        let g = self.gauges();
        let (now, then) = (self.sample(), self.last_tick);
        let turns = now.turns.saturating_sub(then.turns);
        let avg_turn_us = if turns > 0 { now.turn_us.saturating_sub(then.turn_us) as f64 / turns as f64 } else { 0.0 };
        // Private rooms are not named to anonymous viewers.
        let mut busiest: Vec<(&str, usize)> = self
            .chat
            .live
            .iter()
            .filter(|(_, r)| !self.private_rooms.matches(&r.name))
            .map(|(_, r)| (&*r.name, r.members.len()))
            .collect();
        busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        busiest.truncate(TOP_ROOMS);
        serde_json::json!({
            "type": "stats",
            "connections": g.http_connections + g.websockets,
            "websockets": g.websockets,
            "rooms": g.rooms,
            "members": g.members,
            "messages_received": now.received,
            "messages_delivered": now.delivered,
            "messages_per_sec": now.received.saturating_sub(then.received),
            "deliveries_per_sec": now.delivered.saturating_sub(then.delivered),
            "bytes_in_per_sec": now.bytes_in.saturating_sub(then.bytes_in),
            "bytes_out_per_sec": now.bytes_out.saturating_sub(then.bytes_out),
            "loop_turns_per_sec": turns,
            "loop_turn_avg_us": (avg_turn_us * 10.0).round() / 10.0,
            "busiest_rooms": busiest.iter().map(|(name, n)| serde_json::json!({"name": name, "members": n})).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// Once a second: send the stats frame to every viewer (framed once).
    pub(super) fn on_tick(&mut self) {
        self.on_cluster_tick();
        self.deliver_chat();
        if self.stats_viewers > 0 {
            let json = self.stats_json();
            let text = OpCode::Data(Data::Text);
            let mut copies = crate::deflate::Copies::new(text, json.as_bytes(), &self.cfg.compression);
            let viewers: Vec<usize> = self.conns.iter().filter(|(_, c)| c.is_stats_viewer()).map(|(k, _)| k).collect();
            for &key in &viewers {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.push_broadcast(&mut copies);
                }
            }
            for key in viewers {
                self.mark_dirty(key);
            }
        }
        self.last_tick = self.sample();
    }
}
