//! Who is online on the other processes.
//!
//! Each process publishes its members on [`PRESENCE_CHANNEL`]: after a turn
//! in which presence changed, the rooms that changed, each with its full
//! list of local names; and every third of `--presence-ttl`, a snapshot of
//! every room it has. Every process keeps what each other process last
//! said, and turns the difference into joins and leaves for the chat
//! ([`Chat::on_members_elsewhere`]). A process silent for `--presence-ttl`
//! (killed with `kill -9`, say) is presumed dead: its members leave.
//!
//! Lists, not deltas: a note that is lost costs nothing once the next one
//! (or the next snapshot) arrives.
//!
//! In a Redis Cluster one channel that every process hears would put all
//! presence on one shard (and a plain PUBLISH there is copied to every
//! node). So there each room's presence travels on the room's own sharded
//! channel (SPUBLISH, the channel its messages use): one note per room,
//! never `full`, heard by the processes that serve the room, which are the
//! ones that show its members. The snapshot is one such note per local
//! room. A process hears those notes only for the rooms it listens to; a
//! process that starts listening to a room says so (a note that *asks*),
//! and every process with members there answers at once with its list.
//!
//! For the rooms it does not listen to, `/api/rooms` still needs their
//! online counts. So in a cluster each note is also written to the room's
//! online hash (`chatroom:{<room>}:online`, in the room's slot: field =
//! process, value = when and who), and a directory refresh reads that hash
//! for each room not served here ([`Presence::on_online`]). A field older
//! than `--presence-ttl` is a process presumed dead and is not counted;
//! the hash expires when every process with members there has gone quiet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::layout::{PRESENCE_CHANNEL, online_key, room_channel, route};
use super::{Commands, TAG_INTERNAL};
use crate::bus::Value;
use crate::chat::{Chat, now_ms};

/// The presence message a process publishes: its members per room.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct PresenceNote {
    /// The publishing process.
    pub proc: String,
    /// `true`: `rooms` is everything it has (a snapshot); `false`: only the
    /// rooms that changed, each with its full member list.
    pub full: bool,
    /// Room → names of that process's members there.
    pub rooms: HashMap<String, Vec<String>>,
    /// In a cluster: the sender just started listening to these rooms;
    /// whoever has members there answers with its list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ask: bool,
}

/// A process's entry in a room's online hash (cluster only).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct OnlineEntry {
    /// When it was written, in milliseconds since the epoch.
    at: u64,
    /// That process's members in the room.
    names: Vec<String>,
}

/// What another process last said about its members.
#[derive(Debug, Default)]
struct RemoteProcess {
    seen: Option<Instant>,
    rooms: HashMap<String, Vec<String>>,
}

impl RemoteProcess {
    /// This process's members in `room` are now `new`: the difference
    /// from what it said before becomes join and leave events in the chat.
    fn set_room(&mut self, room: String, new: Vec<String>, chat: &mut Chat) {
        let old = self.rooms.remove(&room).unwrap_or_default();
        let joined: Vec<String> = new.iter().filter(|n| !old.contains(n)).cloned().collect();
        let left: Vec<String> = old.iter().filter(|n| !new.contains(n)).cloned().collect();
        if !new.is_empty() {
            self.rooms.insert(room.clone(), new);
        }
        if !joined.is_empty() || !left.is_empty() {
            chat.on_members_elsewhere(&room, joined, left);
        }
    }
}

/// Our view of the other processes' members, and our snapshot clock.
#[derive(Debug)]
pub(super) struct Presence {
    /// This process's id: our own notes come back, and are ignored.
    proc_id: String,
    /// The other processes, by id.
    remote: HashMap<String, RemoteProcess>,
    /// When to publish our next full snapshot.
    next_snapshot: Option<Instant>,
    /// `--presence-ttl`: a process silent this long is presumed dead.
    ttl: Duration,
    /// In a cluster: one note per room, SPUBLISHed on the room's channel.
    sharded: bool,
}

/// How a note on a room's channel starts (the fields in declaration
/// order): it tells presence from messages on a cluster's room channels.
pub(super) const NOTE_START: &[u8] = br#"{"proc":"#;

impl Presence {
    /// Nobody seen yet; the first snapshot goes out on the first tick.
    pub(super) fn new(proc_id: &str, ttl: Duration) -> Presence {
        Presence { proc_id: proc_id.to_string(), remote: HashMap::new(), next_snapshot: None, ttl, sharded: false }
    }

    /// The same for a Redis Cluster: notes per room, on its channel.
    pub(super) fn sharded(mut self) -> Presence {
        self.sharded = true;
        self
    }

    /// A presence note from any process (ours is ignored). The difference
    /// from what that process said before becomes join and leave events in
    /// the chat.
    pub(super) fn on_note(&mut self, payload: &[u8], now: Instant, chat: &mut Chat, commands: &mut Commands) {
        let Ok(note) = serde_json::from_slice::<PresenceNote>(payload) else { return };
        if note.proc == self.proc_id {
            return;
        }
        if note.ask && self.sharded {
            let mut ours = chat.local_members();
            for room in note.rooms.keys() {
                if let Some(names) = ours.remove(room).filter(|names| !names.is_empty()) {
                    self.publish_room(room.clone(), names, false, commands);
                }
            }
        }
        let process = self.remote.entry(note.proc.clone()).or_default();
        process.seen = Some(now);
        let mut rooms: Vec<String> = note.rooms.keys().cloned().collect();
        if note.full {
            rooms.extend(process.rooms.keys().filter(|r| !note.rooms.contains_key(*r)).cloned());
        }
        for room in rooms {
            let new = note.rooms.get(&room).cloned().unwrap_or_default();
            process.set_room(room, new, chat);
        }
    }

    /// In a cluster: the online hash of `room` (an `HGETALL` reply), read
    /// by a directory refresh for a room this process does not listen to.
    /// It says, for every process with members there, who they are: what
    /// we knew of the room is replaced by it. A room we listen to is left
    /// to its notes, which are newer.
    pub(super) fn on_online(&mut self, room: &str, value: &Value, now: Instant, chat: &mut Chat) {
        if chat.is_live(room) {
            return;
        }
        let Value::Array(items) = value else { return };
        let (now_ms, ttl_ms) = (now_ms(), u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        let mut heard: HashMap<String, Vec<String>> = HashMap::new();
        for pair in items.chunks_exact(2) {
            let [Value::Bulk(proc), Value::Bulk(entry)] = pair else { continue };
            let (Ok(proc), Ok(entry)) = (String::from_utf8(proc.clone()), serde_json::from_slice::<OnlineEntry>(entry))
            else {
                continue;
            };
            let age = now_ms.saturating_sub(entry.at);
            if proc == self.proc_id || age >= ttl_ms {
                continue;
            }
            // Written `age` ago: the process was alive then, and is
            // presumed dead `--presence-ttl` after it unless heard again.
            let written = now.checked_sub(Duration::from_millis(age)).unwrap_or(now);
            let process = self.remote.entry(proc.clone()).or_default();
            process.seen = Some(process.seen.map_or(written, |seen| seen.max(written)));
            heard.insert(proc, entry.names);
        }
        for (proc, process) in &mut self.remote {
            let names = heard.remove(proc).unwrap_or_default();
            process.set_room(room.to_string(), names, chat);
        }
    }

    /// Publishes our members in `rooms`: every room we have (`full`), or
    /// the rooms that changed.
    pub(super) fn publish(&self, rooms: HashMap<String, Vec<String>>, full: bool, commands: &mut Commands) {
        if self.sharded {
            for (room, names) in rooms {
                self.publish_room(room, names, false, commands);
            }
            return;
        }
        let note = PresenceNote { proc: self.proc_id.clone(), full, rooms, ask: false };
        let Ok(json) = serde_json::to_vec(&note) else { return };
        let cmd = redis::cmd("PUBLISH").arg(PRESENCE_CHANNEL).arg(json).get_packed_command();
        commands.push((cmd, TAG_INTERNAL, None));
    }

    /// In a cluster: our members in `room`, on the room's channel; `ask`
    /// asks the others to answer with theirs.
    fn publish_room(&self, room: String, names: Vec<String>, ask: bool, commands: &mut Commands) {
        let channel = room_channel(&room);
        let online = online_key(&room);
        let entry = (!names.is_empty()).then(|| OnlineEntry { at: now_ms(), names: names.clone() });
        let rooms = HashMap::from([(room, names)]);
        let note = PresenceNote { proc: self.proc_id.clone(), full: false, rooms, ask };
        let Ok(json) = serde_json::to_vec(&note) else { return };
        let cmd = redis::cmd("SPUBLISH").arg(&channel).arg(json).get_packed_command();
        commands.push((cmd, TAG_INTERNAL, route(&channel)));
        // The same list in the room's online hash, for the processes that
        // do not listen to the room (see the module's header).
        let slot = route(&online);
        match entry.as_ref().and_then(|e| serde_json::to_vec(e).ok()) {
            Some(entry) => {
                let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
                let hset = redis::cmd("HSET").arg(&online).arg(&self.proc_id).arg(entry).get_packed_command();
                commands.push((hset, TAG_INTERNAL, slot));
                let expire = redis::cmd("PEXPIRE").arg(&online).arg(ttl_ms).get_packed_command();
                commands.push((expire, TAG_INTERNAL, slot));
            }
            None => {
                let hdel = redis::cmd("HDEL").arg(&online).arg(&self.proc_id).get_packed_command();
                commands.push((hdel, TAG_INTERNAL, slot));
            }
        }
    }

    /// In a cluster, once this process listens to `room`: our members
    /// there, and a request for everyone else's.
    pub(super) fn ask(&self, room: &str, chat: &Chat, commands: &mut Commands) {
        if self.sharded {
            let names = chat.local_members().remove(room).unwrap_or_default();
            self.publish_room(room.to_string(), names, true, commands);
        }
    }

    /// Once a second: publish a full snapshot every third of
    /// `--presence-ttl`, and forget processes silent for longer than it
    /// (their members leave).
    pub(super) fn on_tick(&mut self, now: Instant, chat: &mut Chat, commands: &mut Commands) {
        if self.next_snapshot.is_none_or(|t| now >= t) {
            self.next_snapshot = Some(now + self.ttl / 3);
            self.publish(chat.local_members(), true, commands);
        }
        let ttl = self.ttl;
        let dead: Vec<String> = self
            .remote
            .iter()
            .filter(|(_, p)| p.seen.is_none_or(|s| now >= s + ttl))
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            if let Some(process) = self.remote.remove(&id) {
                log::info!("presence: process {id} silent for {ttl:?}; its members leave");
                for (room, names) in process.rooms {
                    chat.on_members_elsewhere(&room, Vec::new(), names);
                }
            }
        }
    }

    /// How long until [`Presence::on_tick`] has work: the next snapshot,
    /// but at least once a second to notice silent processes.
    pub(super) fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        self.next_snapshot.map(|t| t.saturating_duration_since(now).min(Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Mode;
    use crate::config::Config;

    fn note(proc: &str, full: bool, rooms: &[(&str, &[&str])]) -> Vec<u8> {
        let rooms = rooms.iter().map(|(r, names)| (r.to_string(), names.iter().map(|n| n.to_string()).collect()));
        serde_json::to_vec(&PresenceNote { proc: proc.into(), full, rooms: rooms.collect(), ask: false }).unwrap()
    }

    /// An `HGETALL` reply of a room's online hash.
    fn online(entries: &[(&str, u64, &[&str])]) -> Value {
        let mut items = Vec::new();
        for (proc, at, names) in entries {
            let names = names.iter().map(|n| n.to_string()).collect();
            items.push(Value::Bulk(proc.as_bytes().to_vec()));
            items.push(Value::Bulk(serde_json::to_vec(&OnlineEntry { at: *at, names }).unwrap()));
        }
        Value::Array(items)
    }

    #[test]
    fn a_room_s_online_hash_replaces_what_was_known_of_it() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), Mode::Shared);
        let mut presence = Presence::new("us", Duration::from_secs(3)).sharded();
        let now = Instant::now();
        let fresh = now_ms();
        let stale = fresh - 3_000;
        let hash = online(&[("p1", fresh, &["a", "b"]), ("p2", stale, &["old"]), ("us", fresh, &["me"])]);
        presence.on_online("r", &hash, now, &mut chat);
        assert_eq!(chat.online("r", 10), (2, vec!["a".to_string(), "b".to_string()]), "fresh, not ours");
        presence.on_online("r", &online(&[("p1", fresh, &["b"])]), now, &mut chat);
        assert_eq!(chat.online("r", 10).0, 1, "a left");
        presence.on_online("r", &Value::Array(Vec::new()), now, &mut chat);
        assert_eq!(chat.online("r", 10).0, 0, "the hash expired: nobody");
        presence.on_online("r", &online(&[("p3", fresh - 2_500, &["c"])]), now, &mut chat);
        assert_eq!(chat.online("r", 10).0, 1, "written 2.5 s ago: still alive");
        presence.on_tick(now + Duration::from_millis(600), &mut chat, &mut Commands::new());
        assert_eq!(chat.online("r", 10).0, 0, "silent for the ttl since it was written");
    }

    #[test]
    fn a_cluster_note_writes_the_room_s_online_hash() {
        let presence = Presence::new("us", Duration::from_secs(3)).sharded();
        let mut commands = Commands::new();
        presence.publish(HashMap::from([("r".to_string(), vec!["a".to_string()])]), false, &mut commands);
        presence.publish(HashMap::from([("r".to_string(), Vec::new())]), false, &mut commands);
        let words: Vec<String> = commands.iter().map(|(cmd, _, _)| String::from_utf8_lossy(cmd).into_owned()).collect();
        let starts: Vec<&str> = words.iter().map(|w| w.split("\r\n").nth(2).unwrap()).collect();
        assert_eq!(starts, ["SPUBLISH", "HSET", "PEXPIRE", "SPUBLISH", "HDEL"]);
        assert!(words[1].contains("chatroom:{r}:online"));
    }

    #[test]
    fn notes_become_joins_and_leaves_and_silence_empties_a_process() {
        let mut chat = Chat::new(&Config::defaults(), Vec::new(), Mode::Shared);
        let mut presence = Presence::new("us", Duration::from_secs(3));
        let now = Instant::now();
        let mut commands = Commands::new();
        presence.on_note(&note("them", false, &[("r", &["a", "b"]), ("s", &["c"])]), now, &mut chat, &mut commands);
        presence.on_note(&note("us", false, &[("r", &["mine"])]), now, &mut chat, &mut commands);
        assert_eq!(chat.online("r", 10).0, 2, "our own note is not someone else's members");
        // A snapshot without room s: c left.
        presence.on_note(&note("them", true, &[("r", &["a"])]), now, &mut chat, &mut commands);
        assert_eq!((chat.online("r", 10).0, chat.online("s", 10).0), (1, 0));
        assert!(commands.is_empty(), "a single Redis never answers notes");

        presence.on_tick(now + Duration::from_secs(1), &mut chat, &mut commands);
        assert_eq!(commands.len(), 1, "the first tick publishes a snapshot");
        assert_eq!(chat.online("r", 10).0, 1, "still within the ttl");
        presence.on_tick(now + Duration::from_secs(3), &mut chat, &mut commands);
        assert_eq!(chat.online("r", 10).0, 0, "silent for the ttl: presumed dead");
    }
}
