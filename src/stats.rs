//! Live numbers: the gauges behind `/metrics`, `/readyz` and `/ws/stats`.

use crate::conn::Phase;
use crate::metrics::Gauges;
use crate::server::Server;

impl Server {
    /// Samples the gauges (a scan of connections: only on cold paths).
    pub(crate) fn gauges(&self) -> Gauges {
        let websockets = self.conns.iter().filter(|(_, c)| matches!(c.phase, Phase::WebSocket(_))).count();
        let (rooms, members) = self.chat.counts();
        Gauges {
            http_connections: self.conns.len() - websockets,
            websockets,
            rooms,
            members,
            queued_bytes: self.conns.iter().map(|(_, c)| c.out.len()).sum(),
            redis_up: None,
            redis_pipeline: 0,
            ready: self.is_ready(),
        }
    }

    /// One snapshot for the stats page.
    pub(crate) fn stats_json(&self) -> String {
        let g = self.gauges();
        serde_json::json!({
            "type": "stats",
            "connections": g.http_connections + g.websockets,
            "websockets": g.websockets,
            "rooms": g.rooms,
            "members": g.members,
            "messages_received": self.metrics.messages_received,
            "messages_delivered": self.metrics.messages_delivered,
            "bytes_in": self.metrics.bytes_in,
            "bytes_out": self.metrics.bytes_out,
        })
        .to_string()
    }

    /// Sends an inspector's reply.
    pub(crate) fn inspector_reply(&mut self, key: usize, reply: String) {
        self.send_text(key, reply.as_bytes());
    }
}
