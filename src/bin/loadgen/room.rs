//! Mode `room`: fan-out throughput and latency, and the delivery checks: loss, duplicates
//! and order per sender, the same interleaving at every receiver of a room, gapless ids.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::cli::{Flavour, Options};
use crate::drive::{Driver, SETTLE_MAX, SETTLE_QUIET, close_everything, detect_flavour, drive, settle};
use crate::measure::{Clock, Histogram, Problems, ServerProbe, rate_per_sec};
use crate::net::{Net, NetEvent, describe_close};
use crate::report::Report;
use crate::wire::{Payload, Tag, compose_post, decode_payload, parse_frame, run_tag};

/// Where the room run is; decides what a delivery means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Connecting,
    Warmup,
    Measuring,
    Closing,
}

/// One client as a receiver: what it has seen so far.
struct Receiver {
    room: usize,
    ready: bool,
    /// Its deliveries are all in, or it died (what is missing then counts as lost).
    finished: bool,
    alive: bool,
    /// Next sequence number expected from each sender of the room (by local sender index).
    next_seq: Vec<u32>,
    delivered: u64,
    expected: u64,
    order_hash: u64,
    /// Last message id seen (chatroom only; the welcome frame's `last_id` starts it).
    last_id: Option<u64>,
}

/// One client as a sender.
struct Sender {
    client: usize,
    room: usize,
    /// Index among the senders of its room (the receivers' `next_seq` index).
    local: usize,
    next_seq: u32,
    in_flight: u32,
    /// Warm-up messages posted and come back (the warm-up is closed loop).
    warm_sent: u32,
    warm_back: u32,
}

/// Mixes one delivery (sender, seq) into a receiver's order hash. Order matters: xor then
/// multiply by an odd constant then rotate does not commute, so two receivers that saw the
/// same deliveries in different orders end with different hashes.
fn fold_order(hash: u64, sender: u32, seq: u32) -> u64 {
    let word = (u64::from(sender) << 32) | u64::from(seq);
    (hash ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

struct RoomRun {
    clock: Clock,
    typed: bool,
    run: String,
    size: usize,
    messages: u32,
    window: u32,
    /// Warm-up messages per sender.
    warm_goal: u32,
    /// Open loop: nanoseconds between two scheduled posts (over all senders).
    interval_ns: Option<f64>,
    stage: Stage,
    tokens: Vec<usize>,
    usernames: Vec<String>,
    receivers: Vec<Receiver>,
    senders: Vec<Sender>,
    /// Closed loop: senders whose own message came back, so they post again.
    due: Vec<usize>,
    /// Open loop: index of the next post in the global schedule, and the schedule's start.
    next_post: u64,
    schedule_start_ns: u64,
    /// (receiver, sender, seq) that were skipped: a later arrival of one is a reorder,
    /// anything else already seen is a duplicate. Empty when all is well.
    missing: HashSet<(u32, u32, u32)>,
    latency: Histogram,
    ready: usize,
    finished: usize,
    warm_done: usize,
    sent: u64,
    delivered: u64,
    duplicates: u64,
    reordered: u64,
    id_errors: u64,
    misrouted: u64,
    foreign: u64,
    bad_frames: u64,
    /// Error frames from the server, by code (a rate limit shows up here).
    server_errors: Problems,
    first_send_ns: u64,
    last_delivery_ns: u64,
    /// When the last frame of any kind arrived (for the quiet period before measuring).
    last_frame_ns: u64,
    problems: Problems,
}

impl RoomRun {
    fn new(o: &Options, typed: bool, clock: Clock) -> Self {
        let rooms = o.rooms;
        let messages = o.messages.unwrap_or(100).min(u64::from(u32::MAX)) as u32;
        // Client i is in room i % R, so rooms differ in size by at most one. Sender j is
        // client j: it sits in room j % R and is that room's (j / R)-th sender.
        let senders: Vec<Sender> = (0..o.senders)
            .map(|j| Sender {
                client: j,
                room: j % rooms,
                local: j / rooms,
                next_seq: 0,
                in_flight: 0,
                warm_sent: 0,
                warm_back: 0,
            })
            .collect();
        let senders_in = |room: usize| (o.senders + rooms - 1 - room) / rooms;
        let receivers = (0..o.clients)
            .map(|i| {
                let room = i % rooms;
                Receiver {
                    room,
                    ready: false,
                    finished: false,
                    alive: true,
                    next_seq: vec![0; senders_in(room)],
                    delivered: 0,
                    expected: senders_in(room) as u64 * u64::from(messages),
                    order_hash: 0,
                    last_id: None,
                }
            })
            .collect();
        RoomRun {
            clock,
            typed,
            run: run_tag(),
            size: o.size,
            messages,
            window: o.window,
            warm_goal: o.warmup,
            interval_ns: o.rate.map(|r| 1e9 / r),
            stage: Stage::Connecting,
            tokens: Vec::with_capacity(o.clients),
            usernames: (0..o.clients).map(|i| format!("c{i}")).collect(),
            receivers,
            senders,
            due: Vec::new(),
            next_post: 0,
            schedule_start_ns: 0,
            missing: HashSet::new(),
            latency: Histogram::new(),
            ready: 0,
            finished: 0,
            warm_done: 0,
            sent: 0,
            delivered: 0,
            duplicates: 0,
            reordered: 0,
            id_errors: 0,
            misrouted: 0,
            foreign: 0,
            bad_frames: 0,
            server_errors: Problems::default(),
            first_send_ns: 0,
            last_delivery_ns: 0,
            last_frame_ns: clock.ns(),
            problems: Problems::default(),
        }
    }

    fn expected(&self) -> u64 {
        self.receivers.iter().map(|r| r.expected).sum()
    }

    /// Posts one message of `sender`; `sent_ns` is the send time it carries (now, or the
    /// scheduled time in open loop).
    fn post(&mut self, net: &mut Net, sender: usize, tag: Tag, seq: u32, sent_ns: u64) -> bool {
        let Some(s) = self.senders.get(sender) else {
            return false;
        };
        let text = Payload { tag, run: &self.run, a: sender as u32, b: u64::from(seq), sent_ns }.compose(self.size);
        let Some(username) = self.usernames.get(s.client) else {
            return false;
        };
        let post = compose_post(&text, username);
        let Some(&token) = self.tokens.get(s.client) else {
            return false;
        };
        net.queue_text(token, post)
    }

    /// Closed loop: queue the next measured message of `sender` if it has any left.
    fn post_next(&mut self, net: &mut Net, sender: usize) {
        let Some(s) = self.senders.get_mut(sender) else {
            return;
        };
        if s.next_seq >= self.messages {
            return;
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.in_flight += 1;
        let now = self.clock.ns();
        if self.post(net, sender, Tag::Measured, seq, now) {
            self.sent += 1;
        }
    }

    fn start_warmup(&mut self, net: &mut Net) {
        self.stage = Stage::Warmup;
        for j in 0..self.senders.len() {
            for _ in 0..self.window {
                self.post_warmup(net, j);
            }
        }
    }

    fn post_warmup(&mut self, net: &mut Net, sender: usize) {
        let Some(s) = self.senders.get_mut(sender) else {
            return;
        };
        if s.warm_sent >= self.warm_goal {
            return;
        }
        let seq = s.warm_sent;
        s.warm_sent += 1;
        let now = self.clock.ns();
        self.post(net, sender, Tag::Warmup, seq, now);
    }

    fn start_measuring(&mut self, net: &mut Net) {
        self.stage = Stage::Measuring;
        self.first_send_ns = self.clock.ns();
        self.schedule_start_ns = self.first_send_ns;
        // Receivers in a room without senders expect nothing: they are done already.
        for r in &mut self.receivers {
            if r.expected == 0 && !r.finished {
                r.finished = true;
                self.finished += 1;
            }
        }
        if self.interval_ns.is_none() {
            for j in 0..self.senders.len() {
                for _ in 0..self.window {
                    self.post_next(net, j);
                }
            }
        }
    }

    /// A client is ready: open (peers), or welcomed (chatroom).
    fn mark_ready(&mut self, client: usize) {
        if let Some(r) = self.receivers.get_mut(client)
            && !r.ready
        {
            r.ready = true;
            self.ready += 1;
        }
    }

    /// A client's connection ended. Its missing deliveries will count as lost; if it was
    /// a sender, so will the messages it could not send.
    fn on_lost(&mut self, client: usize, reason: &str) {
        if self.stage == Stage::Closing {
            return;
        }
        self.problems.note(reason);
        if let Some(r) = self.receivers.get_mut(client) {
            r.alive = false;
            if !r.finished {
                r.finished = true;
                self.finished += 1;
            }
        }
    }

    fn on_text(&mut self, client: usize, text: &str) {
        let now_ns = self.clock.ns();
        self.last_frame_ns = now_ns;
        let Some(frame) = parse_frame(text) else {
            self.bad_frames += 1;
            return;
        };
        if frame.typed {
            match frame.kind.as_deref() {
                Some("message") => {}
                Some("welcome") => {
                    if let Some(r) = self.receivers.get_mut(client) {
                        r.last_id = frame.last_id;
                    }
                    self.mark_ready(client);
                    return;
                }
                Some("error") => {
                    self.server_errors.note(frame.code.as_deref().unwrap_or("no code"));
                    return;
                }
                // join, leave, presence, rename...: not deliveries.
                _ => return,
            }
        }
        let Some(receiver) = self.receivers.get_mut(client) else {
            return;
        };
        // Ids count every message of the room, ours or not: they must climb by one.
        if let Some(id) = frame.id {
            if let Some(last) = receiver.last_id
                && id != last + 1
            {
                self.id_errors += 1;
            }
            receiver.last_id = Some(id);
        }
        let Some(message) = frame.message.as_deref() else {
            return;
        };
        let Some(payload) = decode_payload(message).filter(|p| p.run == self.run) else {
            self.foreign += 1;
            return;
        };
        match payload.tag {
            Tag::Measured => self.on_delivery(client, payload, now_ns),
            Tag::Warmup => {
                // Only the sender's own copy matters: it frees a place in its window.
                if let Some(s) = self.senders.get_mut(payload.a as usize)
                    && s.client == client
                {
                    s.warm_back += 1;
                    if s.warm_back == self.warm_goal {
                        self.warm_done += 1;
                    } else {
                        self.due.push(payload.a as usize);
                    }
                }
            }
            _ => self.foreign += 1,
        }
    }

    /// Checks one measured delivery against everything this receiver saw before.
    fn on_delivery(&mut self, client: usize, payload: Payload<'_>, now_ns: u64) {
        let sender_index = payload.a as usize;
        let (Some(sender), Some(receiver)) = (self.senders.get_mut(sender_index), self.receivers.get_mut(client))
        else {
            self.bad_frames += 1;
            return;
        };
        // A message from another room's sender: the server mixed rooms up.
        if sender.room != receiver.room {
            self.misrouted += 1;
            return;
        }
        let Ok(seq) = u32::try_from(payload.b) else {
            self.bad_frames += 1;
            return;
        };
        let Some(next) = receiver.next_seq.get_mut(sender.local) else {
            self.bad_frames += 1;
            return;
        };
        let key = (client as u32, payload.a, seq);
        if seq == *next {
            *next += 1;
        } else if seq > *next && seq < self.messages {
            // Skipped some: remember them, so a late one counts as reordered, not duplicate.
            for missing in *next..seq {
                self.missing.insert((client as u32, payload.a, missing));
            }
            *next = seq + 1;
        } else if self.missing.remove(&key) {
            self.reordered += 1;
        } else {
            self.duplicates += 1;
            return;
        }
        receiver.delivered += 1;
        receiver.order_hash = fold_order(receiver.order_hash, payload.a, seq);
        if receiver.delivered == receiver.expected && !receiver.finished {
            receiver.finished = true;
            self.finished += 1;
        }
        self.delivered += 1;
        self.latency.record(now_ns.saturating_sub(payload.sent_ns));
        self.last_delivery_ns = now_ns;
        // Its own message came back: in closed loop, that frees a place in its window.
        if sender.client == client && self.interval_ns.is_none() {
            sender.in_flight = sender.in_flight.saturating_sub(1);
            self.due.push(sender_index);
        }
    }

    /// Receivers that got every delivery but in another interleaving than most complete
    /// receivers of their room. Incomplete receivers are left out: their count differs
    /// anyway, and what they miss is already reported as lost.
    fn order_mismatches(&self) -> u64 {
        let mut per_room: HashMap<usize, HashMap<u64, u64>> = HashMap::new();
        for r in self.receivers.iter().filter(|r| r.expected > 0 && r.delivered == r.expected) {
            *per_room.entry(r.room).or_default().entry(r.order_hash).or_default() += 1;
        }
        per_room
            .values()
            .map(|pairs| {
                let total: u64 = pairs.values().sum();
                total - pairs.values().max().copied().unwrap_or(0)
            })
            .sum()
    }
}

impl Driver for RoomRun {
    fn on_event(&mut self, client: usize, event: NetEvent<'_>) {
        match event {
            NetEvent::Opened => {
                if !self.typed {
                    self.mark_ready(client);
                }
            }
            NetEvent::Text(text) => self.on_text(client, text),
            NetEvent::Binary(_) => self.bad_frames += 1,
            NetEvent::Closed { code, clean } => self.on_lost(client, &describe_close(code, clean)),
            NetEvent::Failed(reason) => self.on_lost(client, reason),
        }
    }

    fn has_work(&self) -> bool {
        !self.due.is_empty()
    }

    fn after_turn(&mut self, net: &mut Net) -> Option<Instant> {
        match (self.stage, self.interval_ns) {
            (Stage::Warmup, _) => {
                let due = std::mem::take(&mut self.due);
                for &j in &due {
                    self.post_warmup(net, j);
                }
                self.due = due;
                self.due.clear();
                None
            }
            (Stage::Measuring, None) => {
                let due = std::mem::take(&mut self.due);
                for &j in &due {
                    self.post_next(net, j);
                }
                self.due = due;
                self.due.clear();
                None
            }
            (Stage::Measuring, Some(interval)) => {
                // Post everything whose scheduled time has come; each carries its
                // scheduled time, so a late post (our lateness or the server's backlog)
                // shows up in the latency instead of silently thinning the load.
                let senders = self.senders.len() as u64;
                let total = senders * u64::from(self.messages);
                let due_ns = |k: u64, start: u64| start + (k as f64 * interval) as u64;
                let now = self.clock.ns();
                while self.next_post < total && due_ns(self.next_post, self.schedule_start_ns) <= now {
                    let k = self.next_post;
                    let sender = (k % senders) as usize;
                    let seq = (k / senders) as u32;
                    if self.post(net, sender, Tag::Measured, seq, due_ns(k, self.schedule_start_ns)) {
                        self.sent += 1;
                    }
                    self.next_post += 1;
                }
                (self.next_post < total).then(|| self.clock.at(due_ns(self.next_post, self.schedule_start_ns)))
            }
            _ => None,
        }
    }
}

/// Runs mode `room` and reports.
pub fn run_room(o: &Options, probe: Option<&ServerProbe>) -> Result<Report, String> {
    let clock = Clock::new();
    let mut net = Net::new(o.target.clone())?;
    let flavour = match o.flavour {
        Flavour::Auto => {
            let path = net.room_path(&o.path_prefix, &format!("{}-0", o.room_prefix), "probe");
            detect_flavour(&mut net, &path, o.timeout)?
        }
        f => f,
    };
    let mut run = RoomRun::new(o, flavour == Flavour::Typed, clock);
    for i in 0..o.clients {
        let room = format!("{}-{}", o.room_prefix, i % o.rooms);
        let path = net.room_path(&o.path_prefix, &room, &format!("c{i}"));
        run.tokens.push(net.open(i, &path));
    }

    // 1. Everyone connected (and welcomed).
    let connect_start = Instant::now();
    drive(&mut net, &mut run, connect_start + o.timeout, |r, _, _| r.ready + r.finished >= r.receivers.len())?;
    if run.ready < o.clients {
        let why = if run.problems.total() > 0 {
            run.problems.summary()
        } else {
            format!("not done within --timeout {} s", o.timeout.as_secs_f64())
        };
        return Err(format!("only {} of {} clients connected: {why}", run.ready, o.clients));
    }
    let connect_secs = connect_start.elapsed().as_secs_f64();
    settle(&mut net, &mut run, |r| r.clock.at(r.last_frame_ns), SETTLE_QUIET, SETTLE_MAX)?;

    // 2. Warm-up: closed loop, not measured.
    if o.warmup > 0 {
        run.start_warmup(&mut net);
        let senders = run.senders.len();
        let done = drive(&mut net, &mut run, Instant::now() + o.timeout, |r, _, _| r.warm_done >= senders)?;
        if !done {
            return Err("the warm-up did not complete within --timeout".into());
        }
        settle(&mut net, &mut run, |r| r.clock.at(r.last_frame_ns), SETTLE_QUIET, SETTLE_MAX)?;
    }

    // 3. Measure: from the first post until every delivery arrived or the timeout.
    let cpu_before = probe.and_then(ServerProbe::cpu_seconds);
    run.start_measuring(&mut net);
    let clients = run.receivers.len();
    drive(&mut net, &mut run, Instant::now() + o.timeout, |r, _, _| r.finished >= clients)?;
    let cpu_after = probe.and_then(ServerProbe::cpu_seconds);
    let rss = probe.and_then(ServerProbe::rss_kib);

    run.stage = Stage::Closing;
    close_everything(&mut net, &mut run)?;

    // 4. Report.
    let expected = run.expected();
    let lost = expected.saturating_sub(run.delivered);
    let mismatches = run.order_mismatches();
    let window_ns = run.last_delivery_ns.saturating_sub(run.first_send_ns);
    let per_sec = rate_per_sec(run.delivered, window_ns);
    let loop_kind = match o.rate {
        Some(r) => format!("open loop at {r} msg/s"),
        None => format!("closed loop, window {}", o.window),
    };
    let mut report = Report::new(format!(
        "loadgen room: {} clients in {} room(s), {} senders × {} messages of {} B, {}, {} server",
        o.clients,
        o.rooms,
        o.senders,
        run.messages,
        o.size,
        loop_kind,
        if run.typed { "typed (chatroom)" } else { "plain (peer)" }
    ));
    report.text("mode", "mode", "room");
    report.text("flavour", "server flavour", if run.typed { "typed" } else { "plain" });
    report.int("clients", "clients", o.clients as u64);
    report.int("rooms", "rooms", o.rooms as u64);
    report.int("senders", "senders", o.senders as u64);
    report.int("messages", "messages per sender", u64::from(run.messages));
    report.int("size", "message size (B)", o.size as u64);
    report.real("connect_s", "connect time (s)", connect_secs, 3);
    report.int("connect_retries", "connect retries", net.retried);
    report.int("sent", "messages sent", run.sent);
    report.int("expected", "deliveries expected", expected);
    report.int("delivered", "deliveries received", run.delivered);
    report.int("lost", "lost", lost);
    report.int("duplicates", "duplicates", run.duplicates);
    report.int("reordered", "reordered", run.reordered);
    report.int("order_mismatch", "order mismatches", mismatches);
    report.int("id_errors", "id errors", run.id_errors);
    report.int("misrouted", "misrouted", run.misrouted);
    report.int("bad_frames", "bad frames", run.bad_frames);
    report.int("server_errors", "server error frames", run.server_errors.total());
    report.int("foreign", "foreign messages", run.foreign);
    report.real("elapsed_s", "measurement window (s)", window_ns as f64 / 1e9, 3);
    report.real("deliveries_per_sec", "deliveries/s", per_sec, 0);
    report.latencies(&run.latency);
    report.server(cpu_before, cpu_after, run.delivered, "delivery", rss);
    for (bad, what) in [
        (lost, "lost deliveries"),
        (run.duplicates, "duplicates"),
        (run.reordered, "reordered deliveries"),
        (mismatches, "receivers disagreeing on the order"),
        (run.id_errors, "id gaps"),
        (run.misrouted, "deliveries to the wrong room"),
        (run.bad_frames, "frames that are not valid chat JSON"),
    ] {
        if bad > 0 {
            report.fail(format!("{bad} {what}"));
        }
    }
    if run.problems.total() > 0 {
        report.fail(format!("connections lost: {}", run.problems.summary()));
    }
    if run.server_errors.total() > 0 {
        report.fail(format!("server error frames: {}", run.server_errors.summary()));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse_args};

    /// A room run of `clients` receivers and `senders` senders (clients 0..) of `messages`.
    fn room_run(clients: &str, senders: &str, messages: &str, typed: bool) -> RoomRun {
        let args = ["--url", "ws://127.0.0.1:1", "--clients", clients, "--senders", senders, "--messages", messages];
        let Ok(Command::Run(options)) = parse_args(args.into_iter().map(String::from)) else {
            panic!("test arguments must parse");
        };
        let mut run = RoomRun::new(&options, typed, Clock::new());
        run.stage = Stage::Measuring;
        run
    }

    fn plain_frame(run: &str, sender: u32, seq: u64) -> String {
        let text = Payload { tag: Tag::Measured, run, a: sender, b: seq, sent_ns: 0 }.compose(40);
        format!(r#"{{"username": "c{sender}", "message": "{text}"}}"#)
    }

    #[test]
    fn room_checks_catch_losses_duplicates_reorders_and_disagreement() {
        let mut run = room_run("2", "1", "4", false);
        let tag = run.run.clone();
        for seq in [0, 1, 2, 3] {
            run.on_text(0, &plain_frame(&tag, 0, seq));
        }
        // Receiver 1: 2 before 1 (a reorder), 1 again (a duplicate), 3 never (a loss).
        for seq in [0, 2, 1, 1] {
            run.on_text(1, &plain_frame(&tag, 0, seq));
        }
        assert_eq!(run.delivered, 7);
        assert_eq!(run.expected() - run.delivered, 1);
        assert_eq!(run.reordered, 1);
        assert_eq!(run.duplicates, 1);
        // The incomplete receiver is reported as a loss, not as an order mismatch.
        assert_eq!(run.order_mismatches(), 0);
        assert_eq!(run.foreign, 0);
        run.on_text(1, r#"{"username": "someone", "message": "hello"}"#);
        assert_eq!(run.foreign, 1);
        run.on_text(1, "not json");
        assert_eq!(run.bad_frames, 1);
    }

    #[test]
    fn room_checks_catch_receivers_that_disagree_on_the_interleaving() {
        let mut run = room_run("3", "2", "1", false);
        let tag = run.run.clone();
        for (receiver, order) in [(0, [0, 1]), (1, [0, 1]), (2, [1, 0])] {
            for sender in order {
                run.on_text(receiver, &plain_frame(&tag, sender, 0));
            }
        }
        assert_eq!(run.expected(), run.delivered);
        assert_eq!(run.order_mismatches(), 1);
    }

    #[test]
    fn room_checks_follow_ids_from_the_welcome() {
        let mut run = room_run("1", "1", "3", true);
        let tag = run.run.clone();
        run.on_text(0, r#"{"type":"welcome","room":"bench-0","history":[{"id":9}],"last_id":9}"#);
        assert_eq!(run.ready, 1);
        for (id, seq) in [(10, 0), (11, 1), (13, 2)] {
            let text = Payload { tag: Tag::Measured, run: &tag, a: 0, b: seq, sent_ns: 0 }.compose(40);
            run.on_text(
                0,
                &format!(
                    r#"{{"type":"message","room":"bench-0","id":{id},"username":"c0","message":"{text}","ts":1}}"#
                ),
            );
        }
        run.on_text(0, r#"{"type":"error","code":"rate_limited","message":"slow down"}"#);
        assert_eq!(run.delivered, 3);
        assert_eq!(run.id_errors, 1);
        assert_eq!(run.server_errors.summary(), "rate_limited ×1");
    }

    #[test]
    fn order_hash_depends_on_order() {
        let ab = fold_order(fold_order(0, 1, 0), 2, 0);
        let ba = fold_order(fold_order(0, 2, 0), 1, 0);
        assert_ne!(ab, ba);
    }
}
