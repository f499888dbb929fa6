//! Where a key lives in a Redis Cluster: its hash slot, and which master
//! serves each slot.
//!
//! A cluster splits the key space into 16384 *hash slots* and gives each
//! master a share of them. The Redis Cluster specification fixes the
//! mapping, and every client computes it itself:
//!
//! > HASH_SLOT = CRC16(key) mod 16384
//!
//! with the CRC16 of XMODEM (polynomial 0x1021, initial value 0). A key
//! with a *hash tag*, a non-empty `{...}` part, is hashed on that part
//! alone: "if the key contains a `{` character and if there is a `}`
//! character to the right of `{` and if there are one or more characters
//! between the first occurrence of `{` and the first occurrence of `}`,
//! then instead of hashing the key, only what is between \[them\] is
//! hashed". That is what puts a room's keys and channel in one slot.
//!
//! Which master serves which slots comes from `CLUSTER SLOTS`, asked of any
//! node: [`SlotMap::from_cluster_slots`]. A command sent to the wrong
//! master is answered `-MOVED <slot> <host>:<port>` (the slot has a new
//! owner for good) or `-ASK <slot> <host>:<port>` (the slot is being
//! migrated and this key has gone already): [`Redirect::parse`].

use std::net::{IpAddr, SocketAddr};

use super::Value;

/// Hash slots in a Redis Cluster (fixed by the specification).
pub const SLOTS: u16 = 16384;

/// The CRC16 the specification names: XMODEM (poly 0x1021, init 0, no
/// reflection, no final xor). Bitwise rather than table-driven: a key is a
/// few dozen bytes, hashed once per command.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The hash slot of `key` (or of a shard channel's name), its hash tag
/// respected.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % SLOTS
}

/// The part of `key` that is hashed: what lies between the first `{` and
/// the first `}` after it, if that is not empty; else the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else { return key };
    let after = key.get(open + 1..).unwrap_or_default();
    match after.iter().position(|&b| b == b'}') {
        Some(close) if close > 0 => after.get(..close).unwrap_or(key),
        _ => key,
    }
}

/// Which master serves each slot, and the masters' addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotMap {
    /// `(first slot, last slot, master)`, sorted by first slot, not
    /// overlapping. Slots no range covers have no owner (a cluster with
    /// `cluster-require-full-coverage no` can be like that for a while).
    ranges: Vec<(u16, u16, SocketAddr)>,
}

impl SlotMap {
    /// Reads a `CLUSTER SLOTS` reply: one entry per range of slots,
    /// `[start, end, [ip, port, id, ...], replica...]`, the master first.
    /// `asked` is the node that answered: an empty ip means "the address
    /// you reached me at" (the spec's words for a node that does not know
    /// its own). Entries that cannot be used (a host name, which the
    /// reactor cannot resolve without blocking; `?` for an unknown
    /// endpoint) are skipped, and those slots stay without an owner until
    /// the next refresh. `None` if the reply is not a `CLUSTER SLOTS` reply.
    pub fn from_cluster_slots(reply: &Value, asked: SocketAddr) -> Option<SlotMap> {
        let Value::Array(entries) = reply else { return None };
        let mut ranges = Vec::new();
        for entry in entries {
            let Value::Array(parts) = entry else { return None };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return None;
            };
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else { return None };
            if start > end || end >= SLOTS {
                return None;
            }
            let (Some(ip), Some(Value::Int(port))) = (master.first().and_then(Value::as_bytes), master.get(1)) else {
                return None;
            };
            let Ok(port) = u16::try_from(*port) else { return None };
            let ip = match std::str::from_utf8(ip).ok() {
                Some("") => Some(asked.ip()),
                Some(text) => text.parse::<IpAddr>().ok(),
                None => None,
            };
            if let Some(ip) = ip {
                ranges.push((start, end, SocketAddr::new(ip, port)));
            }
        }
        ranges.sort_by_key(|&(start, _, _)| start);
        Some(SlotMap { ranges })
    }

    /// The master that serves `slot`, if any does.
    pub fn owner(&self, slot: u16) -> Option<SocketAddr> {
        let after = self.ranges.partition_point(|&(start, _, _)| start <= slot);
        let &(_, end, addr) = self.ranges.get(after.checked_sub(1)?)?;
        (slot <= end).then_some(addr)
    }

    /// Every master, each once, in slot order.
    pub fn masters(&self) -> Vec<SocketAddr> {
        let mut masters: Vec<SocketAddr> = Vec::new();
        for &(_, _, addr) in &self.ranges {
            if !masters.contains(&addr) {
                masters.push(addr);
            }
        }
        masters
    }

    /// Whether some slot has no owner.
    pub fn has_gaps(&self) -> bool {
        let covered: u32 = self.ranges.iter().map(|&(start, end, _)| u32::from(end - start) + 1).sum();
        covered < u32::from(SLOTS)
    }

    /// Records what a `MOVED` said: `slot` is served by `addr` from now on
    /// (until the next full refresh says more).
    pub fn set_owner(&mut self, slot: u16, addr: SocketAddr) {
        let mut ranges = Vec::with_capacity(self.ranges.len() + 2);
        for &(start, end, owner) in &self.ranges {
            if slot < start || slot > end {
                ranges.push((start, end, owner));
                continue;
            }
            if start < slot {
                ranges.push((start, slot - 1, owner));
            }
            if slot < end {
                ranges.push((slot + 1, end, owner));
            }
        }
        ranges.push((slot, slot, addr));
        ranges.sort_by_key(|&(start, _, _)| start);
        self.ranges = ranges;
    }
}

/// What a redirect error tells a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// `-MOVED slot addr`: the slot is served by `addr` now; update the
    /// map and send this command, and later ones for the slot, there.
    Moved {
        /// The slot.
        slot: u16,
        /// Its new master.
        addr: SocketAddr,
    },
    /// `-ASK slot addr`: the slot is migrating and this key has moved;
    /// send this one command to `addr`, preceded by `ASKING`, and keep the
    /// map as it is.
    Ask {
        /// The slot.
        slot: u16,
        /// Where the key is now.
        addr: SocketAddr,
    },
}

impl Redirect {
    /// Reads `MOVED 3999 127.0.0.1:6381` or `ASK 3999 127.0.0.1:6381` (an
    /// error reply's text). `None` for any other error, and for a redirect
    /// to a host name (not resolvable in the loop: a refresh of the map
    /// follows instead). An empty host, `:6381`, means the same host as
    /// `asked`, as the spec says for a node that does not know its address.
    pub fn parse(error: &str, asked: SocketAddr) -> Option<Redirect> {
        let mut words = error.split(' ');
        let kind = words.next()?;
        let slot: u16 = words.next()?.parse().ok().filter(|&s| s < SLOTS)?;
        let (host, port) = words.next()?.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let ip = if host.is_empty() { asked.ip() } else { host.trim_matches(['[', ']']).parse().ok()? };
        let addr = SocketAddr::new(ip, port);
        match kind {
            "MOVED" => Some(Redirect::Moved { slot, addr }),
            "ASK" => Some(Redirect::Ask { slot, addr }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn crc16_and_slots_match_the_specification() {
        // The spec's reference: CRC16("123456789") = 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        // Examples known from the spec and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn hash_tags_follow_the_spec_s_rules() {
        // The spec's examples.
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}", "an empty first tag: the whole key");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar", "from the first {{ to the first }}");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar", "only the first tag");
        assert_eq!(hash_tag(b"foo}bar{"), b"foo}bar{");
        // A room's keys and its channel share its slot.
        let slot = key_slot(b"chatroom:{lobby}:id");
        for key in ["chatroom:{lobby}:log", "chatroom:{lobby}:seq", "chatroom:{lobby}:msgs"] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
        assert_eq!(slot, key_slot(b"lobby"));
    }

    fn node(ip: &str, port: i64) -> Value {
        Value::Array(vec![Value::Bulk(ip.into()), Value::Int(port), Value::Bulk(b"id".to_vec())])
    }

    fn entry(start: i64, end: i64, master: Value, replica: Value) -> Value {
        Value::Array(vec![Value::Int(start), Value::Int(end), master, replica])
    }

    #[test]
    fn a_cluster_slots_reply_becomes_a_map() {
        let asked: SocketAddr = "10.0.0.9:7000".parse().unwrap();
        let reply = Value::Array(vec![
            entry(10923, 16383, node("127.0.0.1", 7002), node("127.0.0.1", 7005)),
            entry(0, 5460, node("127.0.0.1", 7000), node("127.0.0.1", 7003)),
            entry(5461, 10922, node("", 7001), node("127.0.0.1", 7004)),
        ]);
        let map = SlotMap::from_cluster_slots(&reply, asked).unwrap();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(map.owner(0), Some(addr("127.0.0.1:7000")));
        assert_eq!(map.owner(5460), Some(addr("127.0.0.1:7000")));
        assert_eq!(map.owner(5461), Some(addr("10.0.0.9:7001")), "an empty ip: the node asked");
        assert_eq!(map.owner(16383), Some(addr("127.0.0.1:7002")));
        assert_eq!(map.masters().len(), 3);
        assert!(!map.has_gaps());

        // A MOVED for one slot splits its range.
        let mut moved = map.clone();
        moved.set_owner(100, addr("127.0.0.1:7002"));
        assert_eq!(moved.owner(99), Some(addr("127.0.0.1:7000")));
        assert_eq!(moved.owner(100), Some(addr("127.0.0.1:7002")));
        assert_eq!(moved.owner(101), Some(addr("127.0.0.1:7000")));
        assert!(!moved.has_gaps());

        // Slots no master serves, and replies that are not CLUSTER SLOTS.
        let partial = Value::Array(vec![entry(0, 99, node("127.0.0.1", 7000), Value::Nil)]);
        let map = SlotMap::from_cluster_slots(&partial, asked).unwrap();
        assert_eq!(map.owner(100), None);
        assert!(map.has_gaps());
        assert_eq!(SlotMap::from_cluster_slots(&Value::Error("ERR".into()), asked), None);
        let bad = Value::Array(vec![entry(5, 2, node("127.0.0.1", 7000), Value::Nil)]);
        assert_eq!(SlotMap::from_cluster_slots(&bad, asked), None);
        let empty = SlotMap::from_cluster_slots(&Value::Array(vec![]), asked).unwrap();
        assert_eq!(empty.owner(0), None);
    }

    #[test]
    fn redirects_parse() {
        let asked: SocketAddr = "10.0.0.9:7000".parse().unwrap();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            Redirect::parse("MOVED 3999 127.0.0.1:6381", asked),
            Some(Redirect::Moved { slot: 3999, addr: addr("127.0.0.1:6381") })
        );
        assert_eq!(
            Redirect::parse("ASK 3999 127.0.0.1:6381", asked),
            Some(Redirect::Ask { slot: 3999, addr: addr("127.0.0.1:6381") })
        );
        assert_eq!(
            Redirect::parse("MOVED 1 :6390", asked),
            Some(Redirect::Moved { slot: 1, addr: addr("10.0.0.9:6390") })
        );
        assert_eq!(
            Redirect::parse("MOVED 7 [::1]:6390", asked),
            Some(Redirect::Moved { slot: 7, addr: addr("[::1]:6390") })
        );
        for other in ["TRYAGAIN Multiple keys request during rehashing of slot", "MOVED 20000 1.2.3.4:1", "ERR x"] {
            assert_eq!(Redirect::parse(other, asked), None, "{other}");
        }
        assert_eq!(Redirect::parse("MOVED 1 redis-a:6379", asked), None, "a host name");
    }
}
