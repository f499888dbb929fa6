//! Mode `soak`: a mixed load for a long time, against chatroom only, and the checks that a
//! long run can make: no message lost or duplicated, memory that does not creep, and
//! descriptors that all come back.
//!
//! The mix, all on one `mio::Poll` (the scroll-back reader is a thread of its own):
//!
//! - **chatters** stay in the chat rooms all run and post on a schedule (`--rate` in total);
//!   their deliveries are the latency the samples report;
//! - **visitors** join a room, maybe post, leave after a few seconds, and come back, half of
//!   the time resuming where they left with `?since=`;
//! - **slow readers** stop reading for seconds at a time, so output piles up at the server
//!   (most in the flood room; one the server drops as a slow consumer resumes);
//! - **resetters** join, post, and end with a TCP reset mid-conversation;
//! - a **flooder** posts bursts as fast as its window allows into a room of its own, reading
//!   its own copies (the server runs with `--rate-limit 0`);
//! - a **scroll-back reader** pages through the chat rooms' history over HTTP.
//!
//! Every connection judges only the span it was connected: its welcome's `last_id` (or the
//! `since` it resumed from, and then the welcome's history) starts it, and every message
//! after must carry the next id of the room. Every post of a chatter, visitor and flooder
//! must come back to its sender while it stays connected. Posts in flight when a
//! connection is reset or dropped are not judged: nobody can say whether they arrived.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::cli::Options;
use crate::drive::{Driver, close_everything, drive};
use crate::measure::{Clock, Histogram, Problems, ServerProbe};
use crate::net::{Net, NetEvent, describe_close};
use crate::report::Report;
use crate::rng::Rng;
use crate::sampler::{Sampler, rss_slope_kib_per_10min};
use crate::scrollback::ScrollReader;
use crate::wire::{Payload, Tag, compose_post, decode_payload, parse_frame, run_tag};

/// How often the server is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Visitors, slow readers (over the chat rooms, plus `FLOOD_SLOW_READERS` in the flood
/// room) and resetters: a few dozen connections that come and go next to the chatters.
const VISITORS: usize = 20;
const SLOW_READERS: usize = 10;
const FLOOD_SLOW_READERS: usize = 1;
const RESETTERS: usize = 10;

/// A visitor stays this long (ms, a random point between) and is away this long.
const VISIT_MS: (u64, u64) = (1_000, 5_000);
const AWAY_MS: (u64, u64) = (300, 2_000);

/// A slow reader reads for `READ_MS`, then stops for `PAUSE_MS`: at the chat rooms' rates a
/// pause leaves a few KiB behind, in the flood room up to megabytes (past `--max-pending`).
const READ_MS: u64 = 500;
const PAUSE_MS: u64 = 3_000;

/// A resetter resets this long after its welcome, and rejoins this long after.
const RESET_AFTER_MS: (u64, u64) = (50, 1_500);
const REJOIN_MS: (u64, u64) = (100, 700);

/// The flood: a burst of `FLOOD_BURST` posts with `FLOOD_WINDOW` in flight every
/// `FLOOD_PERIOD`. Bursts rather than a flood without end keep the SQLite file of a
/// 30-minute run to a few hundred MB on a shared machine, and the time between bursts
/// shows whether the server's memory returns to where it was.
const FLOOD_BURST: u64 = 5_000;
const FLOOD_WINDOW: usize = 200;
const FLOOD_PERIOD: Duration = Duration::from_secs(20);

/// After the run: how long posts still in flight may take to come back.
const DRAIN: Duration = Duration::from_secs(10);

/// A connection dropped by the server is reopened (resuming) after this pause.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// How often `after_turn` walks every client's timers.
const TICK: Duration = Duration::from_millis(2);

/// How long the server has, once every client is gone, to be back at its descriptor
/// baseline: closes in progress (the server's half of each close handshake, the reaper of
/// connections marked closing) finish within a loop turn or two.
const FD_DEADLINE: Duration = Duration::from_secs(15);

/// Unlinked files the server may have opened for good during the run: SQLite opens an
/// unlinked temporary file when it first needs one (here during the first flood burst)
/// and keeps it open afterwards, so it is one descriptor, not a leak.
const LAZY_TEMP_FILES: u64 = 1;

/// Runs at least this long have their RSS slope judged; shorter ones are all warm-up.
const SLOPE_JUDGED_FROM: Duration = Duration::from_secs(600);

/// The first fifth of a run is warm-up for the slope: SQLite's page cache, the allocator's
/// arenas and every connection's buffers reach their working size there.
const WARMUP_FRACTION: f64 = 0.2;

/// The bound on the RSS slope after warm-up: 1 MiB per 10 minutes. A leak of one small
/// allocation per message (a few hundred posts and deliveries a second) would show as
/// tens of MiB per 10 minutes; allocator noise stays well under this.
const SLOPE_BOUND_KIB_PER_10MIN: f64 = 1024.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Chatter,
    Visitor,
    SlowReader,
    Resetter,
    Flooder,
}

impl Role {
    /// Whether this role's own posts must all come back while it is connected.
    fn checks_own_posts(self) -> bool {
        matches!(self, Role::Chatter | Role::Visitor | Role::Flooder)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    /// No connection; a new one opens at `wake`.
    Away,
    /// Connecting, upgrading, waiting for the welcome.
    Joining,
    /// Welcomed: its messages are checked.
    Live,
    /// Close frame sent; waiting for the server's.
    Leaving,
}

/// One client of the mix: at most one connection at a time.
struct Client {
    role: Role,
    /// Index into the rooms (the last is the flood room).
    room: usize,
    token: usize,
    stage: Stage,
    /// The next id this connection must see (set by the welcome).
    next_id: Option<u64>,
    /// The last id any of its connections saw in `room`: where a resume starts.
    seen_id: Option<u64>,
    /// This connection resumed with `?since=` this id.
    resumed_from: Option<u64>,
    /// A `gap` frame before the welcome moved the resume's start here.
    gap_oldest: Option<u64>,
    /// Sequence numbers of own posts not yet back, oldest first.
    in_flight: VecDeque<u64>,
    next_seq: u64,
    /// Posts the server refused with an error frame on this connection.
    refused: u64,
    /// The role's next timed action (a post, a pause toggle, a leave, a reset, a rejoin).
    wake: Instant,
    paused: bool,
    /// A visitor or resetter decided whether this connection posts (right after its welcome).
    opened_talk: bool,
    /// The flooder: posts left to send in the current burst.
    burst_left: u64,
}

struct SoakRun {
    clock: Clock,
    rng: Rng,
    run: String,
    size: usize,
    prefix: String,
    rooms: Vec<String>,
    /// The flood room's index in `rooms`.
    flood_room: usize,
    /// Time between two posts of one chatter.
    chat_interval: Duration,
    clients: Vec<Client>,
    usernames: Vec<String>,
    stopping: bool,
    next_tick: Instant,
    /// The flooder has room in its window: refill it on the next `after_turn`.
    flood_due: bool,
    next_burst: Instant,
    burst_started: Option<Instant>,
    flood_busy: Duration,
    flood_posts: u64,
    /// Chat deliveries of this sample interval, and of the whole run.
    interval_latency: Histogram,
    interval_deliveries: u64,
    latency: Histogram,
    /// Message frames whose id was checked.
    ids_checked: u64,
    lost: u64,
    duplicates: u64,
    /// Own posts that came back to their sender, and those that never did.
    confirmed: u64,
    unconfirmed_lost: u64,
    own_duplicates: u64,
    /// Own posts in flight when a connection was reset or dropped: not judged.
    unjudged: u64,
    welcomes: u64,
    resumes: u64,
    /// Welcomes whose history did not match what the connection resumed from.
    history_errors: u64,
    gaps: u64,
    connections: u64,
    resets: u64,
    leaves: u64,
    pauses: u64,
    slow_consumer_drops: u64,
    unexpected: Problems,
    server_errors: Problems,
    bad_frames: u64,
}

/// The history ids and `last_id` of a welcome frame.
fn welcome_ids(text: &str) -> Option<(Vec<u64>, u64)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let ids = v.get("history")?.as_array()?.iter().filter_map(|m| m.get("id")?.as_u64()).collect();
    Some((ids, v.get("last_id")?.as_u64()?))
}

impl SoakRun {
    fn new(o: &Options, clock: Clock) -> Self {
        let run = run_tag();
        let seed = u64::from_str_radix(&run, 16).unwrap_or(1);
        let mut rooms: Vec<String> = (0..o.rooms).map(|r| format!("soak-{r}")).collect();
        rooms.push("soak-flood".to_string());
        let flood_room = o.rooms;
        let now = Instant::now();
        let mut roles = vec![Role::Chatter; o.clients];
        roles.extend([Role::Visitor; VISITORS]);
        roles.extend([Role::SlowReader; SLOW_READERS + FLOOD_SLOW_READERS]);
        roles.extend([Role::Resetter; RESETTERS]);
        roles.push(Role::Flooder);
        let mut slow = 0;
        let clients = roles
            .iter()
            .enumerate()
            .map(|(i, &role)| {
                let room = match role {
                    Role::Flooder => flood_room,
                    Role::SlowReader => {
                        slow += 1;
                        if slow > SLOW_READERS { flood_room } else { slow % o.rooms }
                    }
                    _ => i % o.rooms,
                };
                Client {
                    role,
                    room,
                    token: usize::MAX,
                    stage: Stage::Away,
                    next_id: None,
                    seen_id: None,
                    resumed_from: None,
                    gap_oldest: None,
                    in_flight: VecDeque::new(),
                    next_seq: 0,
                    refused: 0,
                    wake: now,
                    paused: false,
                    opened_talk: false,
                    burst_left: 0,
                }
            })
            .collect::<Vec<_>>();
        let chatters = o.clients as f64;
        let rate = o.rate.unwrap_or(chatters * 2.0);
        SoakRun {
            clock,
            rng: Rng::new(seed),
            run,
            size: o.size,
            prefix: o.path_prefix.clone(),
            flood_room,
            chat_interval: Duration::from_secs_f64(chatters / rate),
            usernames: (0..clients.len()).map(|i| format!("s{i}")).collect(),
            clients,
            rooms,
            stopping: false,
            next_tick: now,
            flood_due: false,
            next_burst: now + FLOOD_PERIOD / 4,
            burst_started: None,
            flood_busy: Duration::ZERO,
            flood_posts: 0,
            interval_latency: Histogram::new(),
            interval_deliveries: 0,
            latency: Histogram::new(),
            ids_checked: 0,
            lost: 0,
            duplicates: 0,
            confirmed: 0,
            unconfirmed_lost: 0,
            own_duplicates: 0,
            unjudged: 0,
            welcomes: 0,
            resumes: 0,
            history_errors: 0,
            gaps: 0,
            connections: 0,
            resets: 0,
            leaves: 0,
            pauses: 0,
            slow_consumer_drops: 0,
            unexpected: Problems::default(),
            server_errors: Problems::default(),
            bad_frames: 0,
        }
    }

    /// Chat connections open now (welcomed).
    fn live(&self) -> usize {
        self.clients.iter().filter(|c| c.stage == Stage::Live).count()
    }

    /// Opens client `i`'s next connection; `resume` reconnects where it left off.
    fn join(&mut self, net: &mut Net, i: usize, resume: bool) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        let (Some(room), Some(name)) = (self.rooms.get(c.room), self.usernames.get(i)) else {
            return;
        };
        let mut path = net.room_path(&self.prefix, room, name);
        c.resumed_from = if resume { c.seen_id } else { None };
        if let Some(since) = c.resumed_from {
            path.push_str(&format!("&since={since}"));
        }
        c.token = net.open(i, &path);
        c.stage = Stage::Joining;
        c.next_id = None;
        c.gap_oldest = None;
        c.in_flight.clear();
        c.refused = 0;
        c.paused = false;
        c.opened_talk = false;
        self.connections += 1;
    }

    /// Posts one message of client `i`.
    fn post(&mut self, net: &mut Net, i: usize) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        let sent_ns = self.clock.ns();
        let text =
            Payload { tag: Tag::Measured, run: &self.run, a: i as u32, b: c.next_seq, sent_ns }.compose(self.size);
        let Some(name) = self.usernames.get(i) else {
            return;
        };
        if net.queue_text(c.token, compose_post(&text, name)) {
            c.in_flight.push_back(c.next_seq);
            c.next_seq += 1;
        }
    }

    /// The connection of client `i` ended; `expected` if we ended it (leave or reset).
    fn on_gone(&mut self, i: usize, expected: bool, reason: &str) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        if !expected {
            self.unexpected.note(reason);
        }
        // Posts still in flight: a reset or drop leaves their fate unknown, and a visitor
        // leaves only once its posts came back.
        self.unjudged += c.in_flight.len() as u64;
        c.in_flight.clear();
        c.stage = Stage::Away;
        let now = Instant::now();
        c.wake = match (expected, c.role) {
            (false, _) => now + RECONNECT_PAUSE,
            (true, Role::Resetter) => now + self.rng.millis(REJOIN_MS.0, REJOIN_MS.1),
            (true, _) => now + self.rng.millis(AWAY_MS.0, AWAY_MS.1),
        };
    }

    fn on_welcome(&mut self, i: usize, text: &str) {
        let now = Instant::now();
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        let Some((history, last_id)) = welcome_ids(text) else {
            self.bad_frames += 1;
            return;
        };
        self.welcomes += 1;
        // The history must climb by one and end at last_id; after `?since=S` it must hold
        // exactly S+1..=last_id (from `oldest_id` on if a gap frame came first).
        let climbs = history.windows(2).all(|w| matches!(w, [a, b] if *b == *a + 1));
        let ends_right = history.last().is_none_or(|&id| id == last_id);
        let starts_right = match c.resumed_from {
            Some(since) if last_id > since => {
                self.resumes += 1;
                history.first() == Some(&c.gap_oldest.unwrap_or(since + 1).max(since + 1))
            }
            Some(since) => {
                self.resumes += 1;
                // Nothing new since: an empty history (or history going back: a restart).
                history.is_empty() || last_id < since
            }
            None => true,
        };
        if !(climbs && ends_right && starts_right) {
            self.history_errors += 1;
        }
        c.next_id = Some(last_id + 1);
        c.seen_id = Some(last_id);
        c.stage = Stage::Live;
        c.wake = match c.role {
            Role::Chatter => now + self.rng.millis(0, self.chat_interval.as_millis() as u64 + 1),
            Role::Visitor => now + self.rng.millis(VISIT_MS.0, VISIT_MS.1),
            Role::SlowReader => now + Duration::from_millis(READ_MS),
            // Half of the resets come right after the post (the next tick), while its copies
            // are still on their way: a reset in the middle of a conversation.
            Role::Resetter if self.rng.below(2) == 0 => now,
            Role::Resetter => now + self.rng.millis(RESET_AFTER_MS.0, RESET_AFTER_MS.1),
            Role::Flooder => now,
        };
    }

    fn on_text(&mut self, i: usize, text: &str) {
        let now_ns = self.clock.ns();
        let Some(frame) = parse_frame(text) else {
            self.bad_frames += 1;
            return;
        };
        match frame.kind.as_deref() {
            Some("message") => {}
            Some("welcome") => return self.on_welcome(i, text),
            Some("gap") => {
                self.gaps += 1;
                let oldest =
                    serde_json::from_str::<serde_json::Value>(text).ok().and_then(|v| v.get("oldest_id")?.as_u64());
                if let Some(c) = self.clients.get_mut(i) {
                    c.gap_oldest = oldest;
                }
                return;
            }
            Some("error") => {
                self.server_errors.note(frame.code.as_deref().unwrap_or("no code"));
                if let Some(c) = self.clients.get_mut(i) {
                    c.refused += 1;
                }
                return;
            }
            // join, leave, presence, rename: not messages.
            _ => return,
        }
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        // The room's ids: the next one, or a loss (skipped) or a duplicate (seen before).
        if let (Some(id), Some(next)) = (frame.id, c.next_id) {
            self.ids_checked += 1;
            if id == next {
                c.next_id = Some(id + 1);
            } else if id > next {
                self.lost += id - next;
                c.next_id = Some(id + 1);
            } else {
                self.duplicates += 1;
            }
            c.seen_id = c.seen_id.max(Some(id));
        }
        let Some(payload) = frame.message.as_deref().and_then(decode_payload).filter(|p| p.run == self.run) else {
            return;
        };
        let sender = payload.a as usize;
        if sender == i {
            // Own posts come back in the order they were sent; one missing from the front
            // was accepted and never broadcast, unless the server refused it.
            match c.in_flight.iter().position(|&seq| seq == payload.b) {
                Some(skipped) => {
                    let refused = c.refused.min(skipped as u64);
                    c.refused -= refused;
                    self.unconfirmed_lost += skipped as u64 - refused;
                    c.in_flight.drain(..=skipped);
                    self.confirmed += 1;
                }
                None => self.own_duplicates += 1,
            }
            if c.role == Role::Flooder {
                self.flood_due = true;
            }
        }
        // Chatters' posts, as received by anyone who reads at once: a slow reader's pauses
        // are its own doing, not the server's.
        let reads_at_once = c.role != Role::SlowReader;
        if reads_at_once && self.clients.get(sender).is_some_and(|s| s.role == Role::Chatter) {
            let ns = now_ns.saturating_sub(payload.sent_ns);
            self.latency.record(ns);
            self.interval_latency.record(ns);
            self.interval_deliveries += 1;
        }
    }

    /// The flooder's window: keep `FLOOD_WINDOW` posts in flight while a burst lasts.
    fn feed_flood(&mut self, net: &mut Net) {
        self.flood_due = false;
        let Some(i) = self.clients.iter().position(|c| c.role == Role::Flooder) else {
            return;
        };
        let now = Instant::now();
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        if c.stage != Stage::Live {
            return;
        }
        if self.stopping {
            c.burst_left = 0;
        }
        if c.burst_left == 0 && c.in_flight.is_empty() {
            if let Some(started) = self.burst_started.take() {
                self.flood_busy += now - started;
            }
            if self.stopping || now < self.next_burst {
                return;
            }
            c.burst_left = FLOOD_BURST;
            self.burst_started = Some(now);
            self.next_burst = now + FLOOD_PERIOD;
        }
        let room = FLOOD_WINDOW.saturating_sub(c.in_flight.len()) as u64;
        let posts = room.min(c.burst_left);
        if let Some(c) = self.clients.get_mut(i) {
            c.burst_left -= posts;
        }
        for _ in 0..posts {
            self.post(net, i);
        }
        self.flood_posts += posts;
    }

    /// Every client's timed action that is due.
    fn tick(&mut self, net: &mut Net, now: Instant) {
        for i in 0..self.clients.len() {
            let Some(c) = self.clients.get_mut(i) else {
                continue;
            };
            if c.wake > now || c.stage == Stage::Joining || c.stage == Stage::Leaving {
                continue;
            }
            match (c.stage, c.role) {
                (Stage::Away, _) if self.stopping => {}
                (Stage::Away, role) => {
                    // Visitors resume half of the time (if they ever saw the room) and
                    // otherwise pick a chat room afresh; everyone else comes back resuming.
                    let resume = match role {
                        Role::Visitor => self.rng.below(2) == 0,
                        Role::Resetter => false,
                        _ => true,
                    };
                    if !resume && role != Role::Flooder && self.flood_room > 0 {
                        c.room = self.rng.below(self.flood_room as u64) as usize;
                        c.seen_id = None;
                    }
                    self.join(net, i, resume);
                }
                (Stage::Live, Role::Chatter) if !self.stopping => {
                    c.wake += self.chat_interval;
                    if c.wake < now {
                        c.wake = now + self.chat_interval;
                    }
                    self.post(net, i);
                }
                // A visitor leaves once its post came back (or, at the latest, after DRAIN).
                (Stage::Live, Role::Visitor) if c.in_flight.is_empty() || now >= c.wake + DRAIN => {
                    c.stage = Stage::Leaving;
                    self.leaves += 1;
                    if !net.close(c.token) {
                        self.on_gone(i, true, "");
                    }
                }
                (Stage::Live, Role::SlowReader) => {
                    c.paused = !c.paused && !self.stopping;
                    net.set_paused(c.token, c.paused);
                    c.wake = now + Duration::from_millis(if c.paused { PAUSE_MS } else { READ_MS });
                    if c.paused {
                        self.pauses += 1;
                    }
                }
                (Stage::Live, Role::Resetter) if c.opened_talk => {
                    net.reset(c.token);
                    self.resets += 1;
                    self.on_gone(i, true, "");
                }
                _ => {}
            }
        }
        // Visitors post once, right after their welcome, half of the time; resetters always
        // (their post is mid-conversation when the reset comes).
        let fresh: Vec<usize> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.stage == Stage::Live && !c.opened_talk)
            .filter(|(_, c)| matches!(c.role, Role::Visitor | Role::Resetter))
            .map(|(i, _)| i)
            .collect();
        for i in fresh {
            if let Some(c) = self.clients.get_mut(i) {
                c.opened_talk = true;
            }
            let talks = self.clients.get(i).is_some_and(|c| c.role == Role::Resetter) || self.rng.below(2) == 0;
            if talks && !self.stopping {
                self.post(net, i);
            }
        }
    }
}

impl Driver for SoakRun {
    fn on_event(&mut self, i: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => {}
            NetEvent::Text(text) => self.on_text(i, text),
            NetEvent::Binary(_) => self.bad_frames += 1,
            NetEvent::Closed { code, clean } => {
                let expected = self.stopping || self.clients.get(i).is_some_and(|c| c.stage == Stage::Leaving);
                // 1008: the server dropped it as a slow consumer (RFC 6455 §7.4.1, "policy").
                if code == Some(1008) && !expected {
                    self.slow_consumer_drops += 1;
                }
                self.on_gone(i, expected, &describe_close(code, clean));
            }
            NetEvent::Failed(reason) => self.on_gone(i, self.stopping, reason),
        }
    }

    fn has_work(&self) -> bool {
        self.flood_due
    }

    fn after_turn(&mut self, net: &mut Net) -> Option<Instant> {
        let now = Instant::now();
        if self.flood_due || now >= self.next_tick {
            self.feed_flood(net);
        }
        if now >= self.next_tick {
            self.tick(net, now);
            self.next_tick = now + TICK;
        }
        Some(self.next_tick)
    }
}

/// Runs mode `soak` and reports.
pub fn run_soak(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let probe = probe.ok_or("--mode soak needs --server-pid (it samples the server's RSS and descriptors)")?;
    let fd_baseline = probe.fd_count().ok_or("cannot count the server's descriptors in /proc")?;
    let fds_at_start = probe.fd_targets();
    let rss_start = probe.rss_kib().unwrap_or(0);
    let clock = Clock::new();
    let mut net = Net::new(o.target.clone())?;
    let mut run = SoakRun::new(o, clock);
    let mut sampler = Sampler::new(o.target.clone(), o.csv.as_deref())?;
    let chat_rooms: Vec<String> = run.rooms.iter().take(run.flood_room).cloned().collect();
    let seed = run.rng.next_u64();
    let mut scroll = ScrollReader::start(o.target.clone(), chat_rooms, seed);

    // 1. The mix, for --duration, sampled every SAMPLE_EVERY.
    let start = Instant::now();
    let end = start + o.duration;
    let mut next_sample = start;
    loop {
        let now = Instant::now();
        if now >= next_sample {
            let t_s = now.duration_since(start).as_secs_f64();
            let live = run.live();
            sampler.sample(probe, t_s, &run.interval_latency, run.interval_deliveries, live);
            run.interval_latency = Histogram::new();
            run.interval_deliveries = 0;
            next_sample += SAMPLE_EVERY;
        }
        if now >= end {
            break;
        }
        drive(&mut net, &mut run, next_sample.min(end), |_, _, _| false)?;
    }

    // 2. Stop posting and joining; let what is in flight come back; then everyone leaves.
    run.stopping = true;
    for c in run.clients.iter_mut().filter(|c| c.paused) {
        c.paused = false;
        net.set_paused(c.token, false);
    }
    drive(&mut net, &mut run, Instant::now() + DRAIN, |r, _, _| {
        r.clients.iter().all(|c| c.in_flight.is_empty() || c.stage != Stage::Live)
    })?;
    for c in &run.clients {
        if c.stage == Stage::Live && c.role.checks_own_posts() {
            run.unconfirmed_lost += (c.in_flight.len() as u64).saturating_sub(c.refused);
        }
    }
    scroll.stop();
    close_everything(&mut net, &mut run)?;
    let elapsed = start.elapsed().as_secs_f64();
    sampler.sample(probe, elapsed, &run.interval_latency, run.interval_deliveries, 0);

    // 3. The server must give back every descriptor the run made it open.
    let fd_deadline = Instant::now() + FD_DEADLINE;
    let new_fds =
        || -> Vec<String> { probe.fd_targets().into_iter().filter(|fd| !fds_at_start.contains(fd)).collect() };
    let temp_files =
        |new: &[String]| (new.iter().filter(|fd| fd.ends_with("(deleted)")).count() as u64).min(LAZY_TEMP_FILES);
    let mut fds_end = probe.fd_count();
    let mut fd_allowance = temp_files(&new_fds());
    while fds_end.is_some_and(|n| n > fd_baseline + fd_allowance) && Instant::now() < fd_deadline {
        std::thread::sleep(Duration::from_millis(50));
        fds_end = probe.fd_count();
        fd_allowance = temp_files(&new_fds());
    }

    // 4. Report.
    let samples = &sampler.samples;
    let rss_end = probe.rss_kib();
    let rss_max = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let fds_max = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let judged = o.duration >= SLOPE_JUDGED_FROM;
    let warmup_s = o.duration.as_secs_f64() * WARMUP_FRACTION;
    let slope = rss_slope_kib_per_10min(samples, warmup_s);
    let stats = &scroll.stats;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let flood_rate = if run.flood_busy.is_zero() { 0.0 } else { run.flood_posts as f64 / run.flood_busy.as_secs_f64() };

    let mut report = Report::new(format!(
        "loadgen soak: {:.0} s; {} chatters in {} rooms at {:.0} msg/s, {VISITORS} visitors, {} slow readers, \
         {RESETTERS} resetters, a flooder ({FLOOD_BURST} posts every {} s), scroll-back",
        o.duration.as_secs_f64(),
        o.clients,
        o.rooms,
        o.clients as f64 / run.chat_interval.as_secs_f64(),
        SLOW_READERS + FLOOD_SLOW_READERS,
        FLOOD_PERIOD.as_secs()
    ));
    report.text("mode", "mode", "soak");
    report.real("elapsed_s", "elapsed (s)", elapsed, 1);
    report.int("samples", "samples", samples.len() as u64);
    report.int("connections", "connections opened", run.connections);
    report.int("leaves", "visits ended by a close", run.leaves);
    report.int("resets", "connections reset (RST)", run.resets);
    report.int("pauses", "slow-reader pauses", run.pauses);
    report.int("slow_consumer_drops", "dropped as slow consumers (1008)", run.slow_consumer_drops);
    report.int(
        "unexpected_closes",
        "other unexpected closes",
        run.unexpected.total().saturating_sub(run.slow_consumer_drops),
    );
    report.int("welcomes", "welcomes checked", run.welcomes);
    report.int("resumes", "resumes (?since=) checked", run.resumes);
    report.int("gaps", "gap frames", run.gaps);
    report.int("ids_checked", "messages checked (ids)", run.ids_checked);
    report.int("own_confirmed", "own posts confirmed", run.confirmed);
    report.int("unjudged", "posts in flight at a reset/drop", run.unjudged);
    report.int("flood_posts", "flood posts", run.flood_posts);
    report.real("flood_rate", "flood posts/s (in bursts)", flood_rate, 0);
    report.int("scroll_pages", "scroll-back pages checked", load(&stats.pages));
    report.int("scroll_messages", "scroll-back messages checked", load(&stats.messages));
    report.int("scroll_failed", "scroll-back requests failed", load(&stats.failed));
    report.int("lost", "lost (id gaps)", run.lost);
    report.int("duplicates", "duplicates (ids)", run.duplicates);
    report.int("own_lost", "own posts never back", run.unconfirmed_lost);
    report.int("own_duplicates", "own posts back twice", run.own_duplicates);
    report.int("history_errors", "welcome histories wrong", run.history_errors);
    report.int("scroll_bad", "scroll-back pages wrong", load(&stats.bad_pages));
    report.int("server_errors", "server error frames", run.server_errors.total());
    report.int("bad_frames", "bad frames", run.bad_frames);
    report.real("p50_us", "chat latency p50 (µs)", run.latency.quantile(0.5) as f64 / 1e3, 1);
    report.real("p99_us", "chat latency p99 (µs)", run.latency.quantile(0.99) as f64 / 1e3, 1);
    report.real("max_us", "chat latency max (µs)", run.latency.max as f64 / 1e3, 1);
    let worst = samples.iter().filter(|s| s.p99_us > 0.0);
    report.real("worst_interval_p50_us", "worst 5 s p50 (µs)", worst.clone().map(|s| s.p50_us).fold(0.0, f64::max), 1);
    report.real("worst_interval_p99_us", "worst 5 s p99 (µs)", worst.map(|s| s.p99_us).fold(0.0, f64::max), 1);
    report.int("rss_start_kib", "server RSS at start (KiB)", rss_start);
    report.int("rss_max_kib", "server RSS max (KiB)", rss_max);
    report.int("rss_end_kib", "server RSS at end (KiB)", rss_end.unwrap_or(0));
    match slope {
        Some(s) => report.real("rss_slope_kib_per_10min", "RSS slope after warm-up (KiB/10 min)", s, 1),
        None => report.absent("rss_slope_kib_per_10min", "RSS slope after warm-up (KiB/10 min)"),
    }
    report.real("rss_slope_bound", "RSS slope bound (KiB/10 min)", SLOPE_BOUND_KIB_PER_10MIN, 0);
    report.text("rss_slope_judged", "RSS slope judged", if judged { "yes" } else { "no (run < 10 min)" });
    report.int("fds_baseline", "server descriptors at start", fd_baseline);
    report.int("fds_max", "server descriptors max", fds_max);
    report.int("fds_end", "server descriptors after", fds_end.unwrap_or(0));
    report.int("fds_temp_files", "of which SQLite's temporary file", fd_allowance);
    if run.unexpected.total() > 0 {
        report.text("unexpected", "unexpected closes", &run.unexpected.summary());
    }
    if run.server_errors.total() > 0 {
        report.text("server_error_codes", "server error codes", &run.server_errors.summary());
    }

    // Only these fail the run: everything else above is there to be read.
    let lost = run.lost + run.unconfirmed_lost;
    let duplicated = run.duplicates + run.own_duplicates;
    if lost > 0 {
        report.fail(format!("{lost} messages lost"));
    }
    if duplicated > 0 {
        report.fail(format!("{duplicated} messages duplicated"));
    }
    if run.history_errors > 0 {
        report.fail(format!("{} welcome histories did not continue where the client left off", run.history_errors));
    }
    if load(&stats.bad_pages) > 0 {
        report.fail(format!("{} scroll-back pages with missing or extra messages", load(&stats.bad_pages)));
    }
    match fds_end {
        Some(n) if n <= fd_baseline + fd_allowance => {}
        Some(n) => report.fail(format!(
            "the server holds {n} descriptors {} s after every client left; it started with {fd_baseline} \
             (new: {})",
            FD_DEADLINE.as_secs(),
            new_fds().join(", ")
        )),
        None => report.fail("the server process is gone".into()),
    }
    if judged && let Some(s) = slope.filter(|&s| s > SLOPE_BOUND_KIB_PER_10MIN) {
        report
            .fail(format!("RSS grows {s:.0} KiB per 10 minutes after warm-up (bound {SLOPE_BOUND_KIB_PER_10MIN:.0})"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse_args};

    fn soak_run() -> SoakRun {
        let args = ["--url", "ws://127.0.0.1:1", "--mode", "soak", "--clients", "2", "--rooms", "1"];
        let Ok(Command::Run(options)) = parse_args(args.into_iter().map(String::from)) else {
            panic!("test arguments must parse");
        };
        SoakRun::new(&options, Clock::new())
    }

    fn message(id: u64, text: &str) -> String {
        format!(r#"{{"type":"message","room":"soak-0","id":{id},"username":"s1","message":"{text}","ts":1}}"#)
    }

    fn welcome(history: &[u64], last_id: u64) -> String {
        let items: Vec<String> = history.iter().map(|id| format!(r#"{{"type":"message","id":{id}}}"#)).collect();
        format!(r#"{{"type":"welcome","room":"soak-0","history":[{}],"last_id":{last_id}}}"#, items.join(","))
    }

    #[test]
    fn ids_after_the_welcome_must_climb_by_one() {
        let mut run = soak_run();
        run.on_text(0, &welcome(&[4, 5], 5));
        for id in [6, 7, 9, 9, 10] {
            run.on_text(0, &message(id, "hello"));
        }
        assert_eq!(run.ids_checked, 5);
        assert_eq!(run.lost, 1, "8 never came");
        assert_eq!(run.duplicates, 1, "9 came twice");
        assert_eq!(run.history_errors, 0);
    }

    #[test]
    fn a_resume_must_replay_exactly_what_came_after_since() {
        let mut run = soak_run();
        let c = run.clients.get_mut(0).unwrap();
        c.resumed_from = Some(3);
        run.on_text(0, &welcome(&[4, 5, 6], 6));
        assert_eq!((run.resumes, run.history_errors), (1, 0));
        run.clients.get_mut(0).unwrap().resumed_from = Some(3);
        run.on_text(0, &welcome(&[5, 6], 6));
        assert_eq!((run.resumes, run.history_errors), (2, 1), "4 is missing");
        run.clients.get_mut(0).unwrap().resumed_from = Some(3);
        run.on_text(0, &welcome(&[4, 6], 6));
        assert_eq!(run.history_errors, 2, "a hole in the history");
    }

    #[test]
    fn own_posts_must_come_back_once_and_in_order() {
        let mut run = soak_run();
        run.on_text(0, &welcome(&[], 0));
        run.clients.get_mut(0).unwrap().in_flight.extend([0, 1, 2]);
        let own = |seq: u64| Payload { tag: Tag::Measured, run: "", a: 0, b: seq, sent_ns: 0 };
        let tag = run.run.clone();
        for (id, seq) in [(1, 1), (2, 1), (3, 2)] {
            let text = Payload { run: &tag, ..own(seq) }.compose(40);
            run.on_text(0, &message(id, &text));
        }
        assert_eq!(run.confirmed, 2);
        assert_eq!(run.unconfirmed_lost, 1, "post 0 never came back");
        assert_eq!(run.own_duplicates, 1, "post 1 came back twice");
    }
}
