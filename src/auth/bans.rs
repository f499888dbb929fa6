//! Bans: who may not join a room, until when, and why.
//!
//! The server API's kick with `ban_seconds` bans the kicked: a user with a
//! token by their `sub`, a guest by the client address (the only thing a
//! guest keeps from one connection to the next). A ban is named by a
//! *who* that says which: `user:<sub>` or `address:<ip>`. The table is
//! checked at every chat handshake ([`Bans::find`]); a ban lapses by
//! itself at its time, and [`Bans::sweep`] drops lapsed ones.
//!
//! The table lives in memory; storage (SQLite, or Redis in Redis mode)
//! keeps a copy so that bans outlive a restart.

use std::collections::HashMap;
use std::net::IpAddr;

/// One ban in one room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// Until when, in milliseconds since the epoch.
    pub until: u64,
    /// Why, as the moderator said (may be empty).
    pub reason: String,
}

/// The *who* of a user with a token.
pub fn user_who(sub: &str) -> String {
    format!("user:{sub}")
}

/// The *who* of a guest.
pub fn address_who(ip: IpAddr) -> String {
    format!("address:{ip}")
}

/// Whether `who` is a *who* ([`user_who`], [`address_who`]).
pub fn valid_who(who: &str) -> bool {
    match who.split_once(':') {
        Some(("user", sub)) => !sub.is_empty(),
        Some(("address", ip)) => ip.parse::<IpAddr>().is_ok(),
        _ => false,
    }
}

/// Every room's bans.
#[derive(Debug, Default)]
pub struct Bans {
    rooms: HashMap<String, HashMap<String, Ban>>,
}

impl Bans {
    /// Bans `who` from `room` (replacing an earlier ban of theirs there).
    pub fn insert(&mut self, room: &str, who: &str, ban: Ban) {
        self.rooms.entry(room.to_string()).or_default().insert(who.to_string(), ban);
    }

    /// Lifts `who`'s ban from `room`; whether there was one.
    pub fn lift(&mut self, room: &str, who: &str) -> bool {
        let Some(bans) = self.rooms.get_mut(room) else { return false };
        let lifted = bans.remove(who).is_some();
        if bans.is_empty() {
            self.rooms.remove(room);
        }
        lifted
    }

    /// The ban that keeps any of `whos` out of `room` at `now` (ms), if
    /// one does.
    pub fn find(&self, room: &str, whos: &[&str], now: u64) -> Option<&Ban> {
        let bans = self.rooms.get(room)?;
        whos.iter().find_map(|who| bans.get(*who).filter(|ban| ban.until > now))
    }

    /// Drops the bans lapsed at `now` (ms), so the table holds only bans
    /// in force (called now and then; a lapsed ban is never obeyed).
    pub fn sweep(&mut self, now: u64) {
        self.rooms.retain(|_, bans| {
            bans.retain(|_, ban| ban.until > now);
            !bans.is_empty()
        });
    }

    /// `room`'s bans in force at `now`, by who.
    pub fn list(&self, room: &str, now: u64) -> Vec<(&str, &Ban)> {
        let mut list: Vec<(&str, &Ban)> = self
            .rooms
            .get(room)
            .map(|bans| bans.iter().filter(|(_, ban)| ban.until > now).map(|(who, ban)| (who.as_str(), ban)).collect())
            .unwrap_or_default();
        list.sort_by(|a, b| a.0.cmp(b.0));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_holds_until_its_time_and_can_be_lifted() {
        let mut bans = Bans::default();
        bans.insert("r", &user_who("u-1"), Ban { until: 100, reason: "spam".into() });
        bans.insert("r", &address_who("10.0.0.1".parse().unwrap()), Ban { until: 50, reason: String::new() });
        assert_eq!(bans.find("r", &["user:u-1"], 99).map(|b| b.reason.as_str()), Some("spam"));
        assert!(bans.find("other", &["user:u-1"], 99).is_none(), "one room only");
        assert!(bans.find("r", &["user:u-2", "address:10.0.0.2"], 10).is_none());
        assert!(bans.find("r", &["user:u-2", "address:10.0.0.1"], 10).is_some());
        assert_eq!(bans.list("r", 60).len(), 1, "the address ban lapsed");
        bans.sweep(60);
        assert_eq!(bans.rooms["r"].len(), 1, "and is swept");
        assert!(bans.find("r", &["user:u-1"], 100).is_none(), "lapsed at its time");
        bans.insert("r", "user:u-3", Ban { until: 500, reason: String::new() });
        assert!(bans.lift("r", "user:u-3") && !bans.lift("r", "user:u-3"));
        assert!(bans.list("r", 100).is_empty());
    }

    #[test]
    fn whos_say_what_they_name() {
        assert!(valid_who("user:auth0|123") && valid_who("address:::1") && valid_who("address:10.1.2.3"));
        assert!(!valid_who("user:") && !valid_who("address:nope") && !valid_who("u-1") && !valid_who("ip:1.2.3.4"));
    }
}
