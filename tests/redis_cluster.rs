//! Several processes sharing rooms through a real Redis Cluster (three
//! masters, three replicas) that the tests start on free ports.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A process on the cluster.
fn node(cluster: &RedisCluster) -> TestServer {
    let mut cfg = config();
    cfg.redis_cluster = vec![cluster.seeds()];
    cfg.rate_limit = 0;
    cfg.presence_ttl = Duration::from_secs(2);
    TestServer::with(cfg)
}

/// Waits until the process has the slot map and every master's links.
fn wait_up(server: &TestServer) {
    let ok = eventually(IO_TIMEOUT, || {
        let ready = get(server.addr, "/readyz").json();
        ready["redis"] == "up" && ready["redis_cluster"] == "ok"
    });
    assert!(ok, "the cluster never came up: {}", get(server.addr, "/readyz").json());
}

/// Joins, and waits for the welcome.
fn join(server: &TestServer, room: &str, query: &str) -> (Client, Value) {
    let mut c = ws(server.addr, &format!("/ws/chatroom/{room}{query}"));
    let w = recv_type(&mut c, "welcome");
    (c, w)
}

/// `per_master` rooms on each master, named `<prefix>N`.
fn rooms_on_every_master(cluster: &RedisCluster, prefix: &str, per_master: usize) -> Vec<String> {
    let mut by_master: HashMap<u16, Vec<String>> = HashMap::new();
    for n in 0.. {
        let room = format!("{prefix}{n}");
        let owner = cluster.owner_of(&format!("chatroom:{{{room}}}:id")).port;
        let rooms = by_master.entry(owner).or_default();
        if rooms.len() < per_master {
            rooms.push(room);
        }
        if by_master.len() == 3 && by_master.values().all(|r| r.len() == per_master) {
            break;
        }
    }
    by_master.into_values().flatten().collect()
}

/// The harness the other tests stand on: six nodes, three of them
/// masters, every node saying `cluster_state:ok`, and a room's keys all
/// on one master.
#[test]
fn a_cluster_of_three_masters_starts() {
    let cluster = RedisCluster::start();
    let info = cluster.nodes[0].cli(&["cluster", "info"]);
    assert!(info.contains("cluster_size:3"), "{info}");
    assert!(info.contains("cluster_known_nodes:6"), "{info}");
    let owner = cluster.owner_of("chatroom:{lobby}:id").port;
    assert_eq!(cluster.owner_of("chatroom:{lobby}:log").port, owner);
}

/// Three processes, six rooms (two on each master), one member per room
/// on each process; everyone posts. Every member sees every message of its
/// room once, in one order shared by the room, with ids 1, 2, 3... and the
/// processes' metrics show each master.
#[test]
fn three_processes_many_rooms_over_three_masters() {
    let cluster = RedisCluster::start();
    let nodes: Vec<TestServer> = (0..3).map(|_| node(&cluster)).collect();
    nodes.iter().for_each(wait_up);
    let rooms = rooms_on_every_master(&cluster, "talk", 2);
    let mut members: Vec<(String, Vec<Client>)> = rooms
        .iter()
        .map(|room| {
            let clients = nodes.iter().enumerate().map(|(i, n)| join(n, room, &format!("?username=u{i}")).0).collect();
            (room.clone(), clients)
        })
        .collect();
    const ROUNDS: usize = 8;
    for round in 0..ROUNDS {
        for (room, clients) in members.iter_mut() {
            for (i, c) in clients.iter_mut().enumerate() {
                send_text(c, &format!(r#"{{"message": "{room}-r{round}-u{i}"}}"#));
            }
        }
    }
    let total = ROUNDS * nodes.len();
    for (room, clients) in members.iter_mut() {
        let mut orders = Vec::new();
        for c in clients.iter_mut() {
            let mut seen = Vec::new();
            while seen.len() < total {
                let m = recv_type(c, "message");
                assert_eq!(m["room"], room.as_str());
                seen.push((m["id"].as_u64().unwrap(), m["message"].as_str().unwrap().to_string()));
            }
            let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, (1..=total as u64).collect::<Vec<_>>(), "{room}: gapless, in order");
            assert_eq!(seen.iter().map(|(_, t)| t).collect::<HashSet<_>>().len(), total, "{room}: no duplicates");
            assert!(seen.iter().all(|(_, t)| t.starts_with(&format!("{room}-"))), "{room}: only its own messages");
            orders.push(seen);
        }
        assert!(orders.windows(2).all(|w| w[0] == w[1]), "{room}: one order everywhere");
    }
    // The rooms' channels are sharded: each process is subscribed at the
    // room's master (SSUBSCRIBE), and nobody uses the cluster-wide PUBLISH.
    for room in &rooms {
        let channel = format!("chatroom:{{{room}}}:msgs");
        let owner = cluster.owner_of(&channel);
        assert_eq!(owner.cli(&["pubsub", "shardnumsub", &channel]), format!("{channel}\n3"));
        assert_eq!(owner.cli(&["pubsub", "numsub", &channel]), format!("{channel}\n0"));
    }
    // Each process talks to all three masters.
    let metrics = get(nodes[0].addr, "/metrics").text();
    let up = metrics.lines().filter(|l| l.starts_with("chatroom_redis_node_up{") && l.contains("role=\"master\""));
    assert_eq!(up.filter(|l| l.ends_with(" 1")).count(), 3, "{metrics}");
}
