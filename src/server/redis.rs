//! The reactor's side of Redis (`--redis`): the bus's events become chat
//! events, and the chat's commands leave through the bus once per turn.
//!
//! The bus ([`crate::bus`]) moves bytes and knows nothing of rooms; the
//! chat's cluster mode ([`crate::cluster`]) knows rooms and the Redis
//! data layout but no sockets. This file is the small piece between them.

use log::{info, warn};

use crate::bus::{BusEvent, Which};
use crate::cluster::{MESSAGES_CHANNEL, PRESENCE_CHANNEL, decode_published};
use crate::server::Server;

impl Server {
    /// Handles everything the bus produced since the last call.
    pub(crate) fn on_bus_events(&mut self) {
        let Some(bus) = &mut self.bus else { return };
        self.metrics.redis_reconnects = bus.reconnects();
        let events: Vec<BusEvent> = bus.drain_events().collect();
        if events.is_empty() {
            return;
        }
        for event in events {
            match event {
                BusEvent::CommandUp => {
                    info!("redis: command connection up");
                    if let Some(cluster) = &mut self.chat.cluster {
                        cluster.on_command_up();
                    }
                }
                BusEvent::SubscribedUp => {
                    info!("redis: subscribed");
                    self.chat.on_subscribed();
                }
                BusEvent::Down { which, reason } => {
                    warn!(
                        "redis: {} connection down: {reason}",
                        if which == Which::Command { "command" } else { "subscription" }
                    );
                    if which == Which::Command
                        && let Some(cluster) = &mut self.chat.cluster
                    {
                        cluster.on_down();
                    }
                }
                BusEvent::Reply { tag, value } => {
                    if let Some(cluster) = &mut self.chat.cluster {
                        let reply = cluster.on_reply(tag, value);
                        self.chat.on_bus_reply(reply);
                    }
                }
                BusEvent::Failed { tag } => {
                    if let Some(cluster) = &mut self.chat.cluster {
                        let reply = cluster.on_failed(tag);
                        self.chat.on_bus_reply(reply);
                    }
                }
                BusEvent::Message { channel, payload } => {
                    if channel == MESSAGES_CHANNEL {
                        if let Some(p) = decode_published(&payload) {
                            self.chat.on_published(p);
                        }
                    } else if channel == PRESENCE_CHANNEL {
                        self.chat.on_presence(&payload, self.now);
                    }
                }
            }
        }
        self.deliver_chat();
    }

    /// Sends the chat's queued Redis commands and flushes the bus (once per turn).
    pub(crate) fn flush_bus(&mut self) {
        let Some(bus) = &mut self.bus else { return };
        if let Some(cluster) = &mut self.chat.cluster {
            for (packed, tag) in cluster.commands.drain(..) {
                bus.command(packed, tag);
            }
        }
        bus.flush(self.poll.registry());
        // Commands refused because the bus is down come back as Failed now.
        self.on_bus_events();
    }
}
