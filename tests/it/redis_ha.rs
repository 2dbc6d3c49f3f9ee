//! Redis that survives its own failures and outgrows one server, against
//! real servers: a Sentinel set (a master, a replica, three sentinels) with
//! `SENTINEL FAILOVER` and a SIGKILL of the master under a publish stream,
//! and a Redis Cluster (three masters, sharded and classic pub/sub) with a
//! master killed and its replica promoted.
//!
//! Timelines are printed (`failover timeline:`), never asserted as
//! performance; the bounds asserted are the issue's recovery bounds.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    ask, binary_pair, eventually, tempdir, NodeClient, RedisCluster, Secured, SentinelSet,
    TestNode, TlsFiles, Ws,
};

const PUBLISH_EVERY: Duration = Duration::from_millis(50); // 20/s

async fn ha_node(url: &str, extra: &str) -> TestNode {
    TestNode::start(&format!("redis_url: \"{url}\"\ntopic_ttl: 1h\n{extra}")).await
}

/// What a socket got: push sequence numbers with their arrival times.
type Arrivals = Vec<(u64, Instant)>;

type Stop = tokio::sync::watch::Receiver<bool>;

/// Reads until told to stop, then until a quiet second (the tail).
fn collect(mut socket: Ws, stop: Stop) -> tokio::task::JoinHandle<Arrivals> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let stopping = *stop.borrow();
            let wait = if stopping { 1000 } else { 200 };
            match socket.recv_json(Duration::from_millis(wait)).await {
                Some(frame) if frame["type"] == "push" => {
                    got.push((frame["payload"]["seq"].as_u64().unwrap(), Instant::now()))
                }
                Some(_) => {}
                None if stopping => return got,
                None => {}
            }
        }
    })
}

type Sent = Vec<(u64, Instant, u16)>;

/// A 20/s publish stream on `node` to `topic` until told to stop: each
/// publish's sequence number, send time and HTTP status.
fn stream(node: NodeClient, topic: &'static str, stop: Stop) -> tokio::task::JoinHandle<Sent> {
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        let mut seq = 0;
        while !*stop.borrow() {
            tick.tick().await;
            let at = Instant::now();
            let code = node.publish(topic, &json!({"seq": seq})).await;
            sent.push((seq, at, code));
            seq += 1;
        }
        sent
    })
}

type Health = Vec<(Instant, u16, String)>;

/// Samples `/readyz` and the status mode of `node` every 100 ms.
fn sample_health(node: NodeClient, stop: Stop) -> tokio::task::JoinHandle<Health> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while !*stop.borrow() {
            let (ready, _) = node.get("/readyz", None).await;
            let mode = node.status("").await["mode"]
                .as_str()
                .unwrap_or("")
                .to_string();
            samples.push((Instant::now(), ready, mode));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    })
}

/// A publish stream on A with a socket on A and one on B, and both nodes'
/// health sampled, until `finish`.
struct Run {
    stop: tokio::sync::watch::Sender<bool>,
    sent: tokio::task::JoinHandle<Sent>,
    local: tokio::task::JoinHandle<Arrivals>,
    remote: tokio::task::JoinHandle<Arrivals>,
    health: Vec<tokio::task::JoinHandle<Health>>,
}

impl Run {
    async fn start(a: &NodeClient, b: &NodeClient, topic: &'static str) -> Run {
        a.register(topic, true).await;
        let local = a.socket(topic, 1).await;
        let remote = b.socket(topic, 2).await;
        let (stop, rx) = tokio::sync::watch::channel(false);
        Run {
            sent: stream(*a, topic, rx.clone()),
            local: collect(local, rx.clone()),
            remote: collect(remote, rx.clone()),
            health: vec![sample_health(*a, rx.clone()), sample_health(*b, rx)],
            stop,
        }
    }

    async fn finish(self) -> Outcome {
        let _ = self.stop.send(true);
        let mut health = Vec::new();
        for sampler in self.health {
            health.push(sampler.await.unwrap());
        }
        Outcome {
            sent: self.sent.await.unwrap(),
            local: self.local.await.unwrap(),
            remote: self.remote.await.unwrap(),
            health,
        }
    }
}

/// What a failure did to a run.
struct Outcome {
    sent: Sent,
    local: Arrivals,
    remote: Arrivals,
    /// A's samples, then B's.
    health: Vec<Health>,
}

impl Outcome {
    /// Every publish answered 200; the socket on the publishing node got
    /// every one, in order.
    fn assert_local_complete(&self) {
        for (seq, _, code) in &self.sent {
            assert_eq!(*code, 200, "publish {seq} answered {code}");
        }
        let local: Vec<u64> = self.local.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = self.sent.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(local, expected, "local delivery lost or reordered frames");
    }

    /// The first publish sent at or after `from` that reached B, and when
    /// it arrived.
    fn first_remote_after(&self, from: Instant) -> Option<(u64, Instant)> {
        let first_seq = self.sent.iter().find(|(_, at, _)| *at >= from)?.0;
        self.remote
            .iter()
            .filter(|(seq, _)| *seq >= first_seq)
            .min_by_key(|(_, at)| *at)
            .copied()
    }

    /// The publishes sent after `from` all reached B, in order.
    fn assert_remote_tail(&self, from: Instant) {
        let tail: Vec<u64> = self
            .sent
            .iter()
            .filter(|(_, at, _)| *at >= from)
            .map(|(s, _, _)| *s)
            .collect();
        assert!(
            tail.len() >= 10,
            "too short a tail to judge: {}",
            tail.len()
        );
        let remote: Vec<u64> = self
            .remote
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s >= tail[0])
            .collect();
        assert_eq!(remote, tail, "cross-node delivery after recovery");
    }

    fn remote_missing(&self) -> usize {
        let got: std::collections::HashSet<u64> = self.remote.iter().map(|(s, _)| *s).collect();
        self.sent
            .iter()
            .filter(|(s, _, _)| !got.contains(s))
            .count()
    }

    /// On both nodes, readiness and mode agreed in every sample (a sample
    /// is two requests, so one taken across a change may disagree once per
    /// change), and both were ready at the end.
    fn assert_health_honest(&self) {
        for (node, samples) in ["A", "B"].iter().zip(&self.health) {
            let disagree = samples
                .iter()
                .filter(|(_, ready, mode)| (*ready == 200) != (mode == "cluster"))
                .count();
            let changes = samples.windows(2).filter(|w| w[0].2 != w[1].2).count();
            assert!(
                disagree <= changes,
                "node {node}: /readyz and the mode disagreed in {disagree} samples over \
                 {changes} changes: {:?}",
                samples.iter().map(|(_, r, m)| (r, m)).collect::<Vec<_>>()
            );
            assert_eq!(
                samples.last().map(|h| h.1),
                Some(200),
                "node {node} ready at the end"
            );
        }
    }

    /// The checks of a failure at `origin` (what and when) that the
    /// sentinels answered with a switch at `switched`, and the printed
    /// timeline: every publish 200 and local delivery complete; a publish
    /// after the switch on B within 5 s, everything from 5 s after it in
    /// order; health honest.
    fn judge(&self, what: &str, origin: (&str, Instant), switched: Instant) {
        self.assert_local_complete();
        let (seq, at) = self
            .first_remote_after(switched)
            .expect("a publish after the switch reached node B");
        println!(
            "failover timeline ({what}): {} -> sentinels switched {} ms, switched -> first \
             cross-node delivery {} ms (seq {seq}), {} -> first cross-node delivery of a later \
             publish {} ms; B missed {} of {} publishes; not ready A/B {:?} ms",
            origin.0,
            (switched - origin.1).as_millis(),
            at.saturating_duration_since(switched).as_millis(),
            origin.0,
            at.saturating_duration_since(origin.1).as_millis(),
            self.remote_missing(),
            self.sent.len(),
            self.unready_ms(),
        );
        assert!(
            at.saturating_duration_since(switched) <= Duration::from_secs(5),
            "cross-node delivery back within 5 s"
        );
        self.assert_remote_tail(switched + Duration::from_secs(5));
        self.assert_health_honest();
    }

    /// How long each node was not ready, in ms (printed).
    fn unready_ms(&self) -> Vec<u128> {
        self.health
            .iter()
            .map(|samples| {
                let first = samples.iter().find(|s| s.1 != 200).map(|s| s.0);
                let back = first.and_then(|f| samples.iter().find(|s| s.0 > f && s.1 == 200));
                match (first, back) {
                    (Some(f), Some(b)) => (b.0 - f).as_millis(),
                    _ => 0,
                }
            })
            .collect()
    }
}

/// The skywave subscriptions on the Redis at `port` (`PUBSUB NUMSUB`).
async fn numsub(port: u16) -> i64 {
    let (_, count): (String, i64) = ask(
        port,
        redis::cmd("PUBSUB").arg("NUMSUB").arg("wavelog:events"),
    )
    .await
    .unwrap_or_default();
    count
}

/// Until `PUBSUB NUMSUB` on the Redis at `port` is `count` (at most 5 s).
async fn wait_numsub(port: u16, count: i64) {
    let what = format!("{count} subscribers on {port}");
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        &what,
        || async {
            match numsub(port).await {
                now if now == count => Ok(()),
                now => Err(format!("got {now}")),
            }
        },
    )
    .await;
}

async fn sentinel_pair(set: &SentinelSet) -> (TestNode, TestNode) {
    let a = ha_node(&set.url(), "").await;
    let b = ha_node(&set.url(), "").await;
    a.wait_cluster(2, Duration::from_secs(10)).await;
    b.wait_cluster(2, Duration::from_secs(10)).await;
    (a, b)
}

/// After a switch: both nodes in cluster mode, subscribed on the new master
/// (and not on the old one, if it still runs), the topic still registered.
async fn assert_on_new_master(
    set: &SentinelSet,
    a: &TestNode,
    b: &TestNode,
    old: u16,
    topic: &str,
) {
    a.wait_cluster(2, Duration::from_secs(5)).await;
    b.wait_cluster(2, Duration::from_secs(5)).await;
    let new = set.master_port().await.expect("a master");
    assert_ne!(new, old);
    assert_eq!(
        numsub(new).await,
        2,
        "both nodes subscribed on the new master"
    );
    if set.servers.iter().any(|s| s.port == old && s.running()) {
        assert_eq!(numsub(old).await, 0, "nobody left on the demoted master");
    }
    let key: Option<String> = ask(new, redis::cmd("GET").arg(format!("wavelog:topic:{topic}")))
        .await
        .unwrap();
    assert_eq!(
        key.as_deref(),
        Some(r#"{"require_token":true}"#),
        "topic still registered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_loses_no_publish_and_moves_both_nodes() {
    let set = SentinelSet::start(&tempdir("sentinel-failover")).await;
    let (a, b) = sentinel_pair(&set).await;
    let old = set.master_port().await.expect("master");
    let run = Run::start(&a, &b, "contest-failover").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let trigger = Instant::now();
    let switched = set.failover().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let outcome = run.finish().await;

    outcome.judge("SENTINEL FAILOVER", ("trigger", trigger), switched);
    assert_on_new_master(&set, &a, &b, old, "contest-failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_loses_no_local_delivery_and_recovers() {
    let mut set = SentinelSet::start(&tempdir("sentinel-kill")).await;
    let (a, b) = sentinel_pair(&set).await;
    let run = Run::start(&a, &b, "contest-kill").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (killed, old) = set.kill_master().await;
    // A registration while no master answers: taken locally (200), written
    // to the new master once the node rejoins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.register("registered-during-failover", false).await;
    let switched = set.wait_switch(old, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let outcome = run.finish().await;

    outcome.judge("SIGKILL of the master", ("kill", killed), switched);
    assert_on_new_master(&set, &a, &b, old, "contest-kill").await;
    let new = set.master_port().await.expect("a master");
    let key: Option<String> = ask(
        new,
        redis::cmd("GET").arg("wavelog:topic:registered-during-failover"),
    )
    .await
    .unwrap();
    assert_eq!(
        key.as_deref(),
        Some(r#"{"require_token":false}"#),
        "written back to the new master"
    );
}

/// Topics spread over many slots (and so over every master).
fn topics(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("contest-{i}-{}", i * 7919))
        .collect()
}

/// One publish on `from` per topic; every socket on `to` gets its own.
async fn every_topic_crosses(from: &NodeClient, sockets: &mut [(String, Ws)], round: u64) -> usize {
    for (topic, _) in sockets.iter() {
        let payload = json!({"seq": round, "topic": topic});
        assert_eq!(from.publish(topic, &payload).await, 200, "publish {topic}");
    }
    let mut delivered = 0;
    // One deadline for the whole round.
    let deadline = Instant::now() + Duration::from_secs(3);
    for (topic, socket) in sockets.iter_mut() {
        while Instant::now() < deadline {
            match socket.recv_json(Duration::from_millis(100)).await {
                Some(frame) if frame["type"] == "push" => {
                    let on = &frame["payload"]["topic"];
                    assert_eq!(on, topic.as_str(), "a frame on its own topic only");
                    if frame["payload"]["seq"] == round {
                        delivered += 1;
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    delivered
}

async fn cluster_fleet(cluster: &RedisCluster, extra: &str, count: usize) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for _ in 0..count {
        nodes.push(ha_node(&cluster.url(), extra).await);
    }
    for node in &nodes {
        node.wait_cluster(count as i64, Duration::from_secs(15))
            .await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_sharded_fanout_survives_a_master_failover() {
    let mut cluster = RedisCluster::start(&tempdir("redis-cluster"), 3, 1).await;
    let nodes = cluster_fleet(&cluster, "", 3).await;
    let topics = topics(40);
    for topic in &topics {
        nodes[0].register(topic, true).await;
    }
    // The registry is spread over the masters, and listed from all of them.
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    let mut holding = 0;
    for port in &masters {
        let keys: i64 = ask(*port, &redis::cmd("DBSIZE")).await.unwrap();
        holding += usize::from(keys > 0);
    }
    assert_eq!(holding, 3, "registry keys on every master");
    // `registered_topics` counts the status topic too
    let status = nodes[2].status("").await;
    assert_eq!(
        status["registered_topics"],
        topics.len() as u64 + 1,
        "{status}"
    );
    let mut sockets = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        sockets.push((
            topic.clone(),
            nodes[1 + i % 2].socket(topic, i as i64 + 1).await,
        ));
    }
    assert_eq!(
        every_topic_crosses(&nodes[0], &mut sockets, 0).await,
        topics.len()
    );

    // Kill a master; its replica takes over after the node timeout.
    let victim = masters[1];
    let killed = Instant::now();
    cluster.kill(victim);
    let mut first_full_round = None;
    for round in 1..15 {
        let delivered = every_topic_crosses(&nodes[0], &mut sockets, round).await;
        println!(
            "round {round} at {} ms: {delivered} of {}",
            killed.elapsed().as_millis(),
            topics.len()
        );
        if delivered == topics.len() {
            first_full_round = Some((round, killed.elapsed()));
            break;
        }
    }
    let (round, after) = first_full_round.expect("delivery to every topic resumed");
    println!(
        "failover timeline (Redis Cluster, SIGKILL of a master): kill -> first round \
         delivered to all {} topics {} ms (round {round})",
        topics.len(),
        after.as_millis()
    );
    cluster.wait_ok(Duration::from_secs(30)).await;
    for node in &nodes {
        node.wait_cluster(3, Duration::from_secs(10)).await;
    }
    let status = nodes[1].status("").await;
    assert_eq!(
        status["registered_topics"],
        topics.len() as u64 + 1,
        "{status}"
    );
    assert_eq!(
        every_topic_crosses(&nodes[2], &mut sockets, 100).await,
        topics.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_classic_pubsub_for_mixed_fleets() {
    let cluster = RedisCluster::start(&tempdir("redis-cluster-classic"), 3, 0).await;
    let nodes = cluster_fleet(&cluster, "redis:\n  cluster_pubsub: classic", 2).await;
    let topics = topics(12);
    for topic in &topics {
        nodes[1].register(topic, false).await;
    }
    let mut sockets = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        sockets.push((topic.clone(), nodes[0].socket(topic, i as i64 + 1).await));
    }
    assert_eq!(
        every_topic_crosses(&nodes[1], &mut sockets, 0).await,
        topics.len()
    );
    // Classic events are on the Go channel, which a plain subscriber on any
    // Redis node of the cluster sees.
    let any = cluster.nodes[2].port;
    let client = redis::Client::open(format!("redis://127.0.0.1:{any}/")).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("wavelog:events").await.unwrap();
    assert_eq!(nodes[1].publish(&topics[0], &json!({"seq": 1})).await, 200);
    // (earlier envelopes may still be on their way across the cluster bus)
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut messages = pubsub.on_message();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, futures_util::StreamExt::next(&mut messages))
            .await
            .expect("the envelope on wavelog:events within 5 s")
            .unwrap();
        let envelope: Value = serde_json::from_slice(message.get_payload_bytes()).unwrap();
        if envelope["topic"] == topics[0] && envelope["payload"]["seq"] == 1 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_on_a_sentinel_set_from_its_config_file() {
    let set = SentinelSet::start(&tempdir("sentinel-binary-redis")).await;
    let dir = tempdir("sentinel-binary");
    let extra = format!(
        "redis_url: \"{}\"\nredis:\n  key_prefix: \"wavelog:\"",
        set.url()
    );
    let (a, b) = binary_pair(&dir, &extra, "cross-node on a Sentinel set").await;
    let old = set.master_port().await.unwrap();
    set.failover().await;
    a.client.wait_cluster(2, Duration::from_secs(10)).await;
    b.client.wait_cluster(2, Duration::from_secs(10)).await;
    let new = set.master_port().await.unwrap();
    assert_ne!(old, new);
    wait_numsub(new, 2).await;
    let log = a.process.output();
    assert!(log.contains("the sentinels name this master"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_with_passwords_follows_a_failover() {
    let dir = tempdir("sentinel-tls");
    let certs = TlsFiles::generate(&dir.join("certs"));
    let ca = certs.ca.display().to_string();
    let secured = Secured {
        tls: Some(certs),
        master_password: Some("data-pa55".to_string()),
        sentinel_password: Some("watch-pa55".to_string()),
    };
    let set = SentinelSet::start_secured(&dir.join("redis"), secured).await;
    assert!(
        set.url().starts_with("rediss+sentinel://:data-pa55@"),
        "{}",
        set.url()
    );
    let extra = format!("redis:\n  tls_ca_file: \"{ca}\"\n  sentinel_password: watch-pa55");
    let a = ha_node(&set.url(), &extra).await;
    let b = ha_node(&set.url(), &extra).await;
    a.wait_cluster(2, Duration::from_secs(15)).await;
    b.wait_cluster(2, Duration::from_secs(15)).await;
    a.register("tls-contest", true).await;
    let mut socket = b.socket("tls-contest", 3).await;
    assert_eq!(a.publish("tls-contest", &json!({"seq": 1})).await, 200);
    socket
        .expect_push(&json!({"seq": 1}), "cross-node over TLS")
        .await;

    let old = set.master_port().await.expect("master");
    set.failover().await;
    a.wait_cluster(2, Duration::from_secs(10)).await;
    b.wait_cluster(2, Duration::from_secs(10)).await;
    let new = set.master_port().await.expect("master");
    assert_ne!(old, new);
    let numsub = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("wavelog:events")
        .clone();
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        "both nodes on the new master, over TLS",
        || async {
            let (_, subscribed): (String, i64) = set.ask(new, false, &numsub).await.unwrap();
            if subscribed == 2 {
                Ok(())
            } else {
                Err(format!("{subscribed} subscribed"))
            }
        },
    )
    .await;
    // B was away from the cluster for a moment: it says so first.
    let notice = socket.recv_json(Duration::from_secs(3)).await;
    assert_eq!(
        notice,
        Some(json!({"type": "resync", "reason": "cluster_rejoin"}))
    );
    assert_eq!(a.publish("tls-contest", &json!({"seq": 2})).await, 200);
    socket
        .expect_push(&json!({"seq": 2}), "cross-node after the failover")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_resharding_moves_a_shard_channel_and_nodes_follow() {
    let cluster = RedisCluster::start(&tempdir("redis-cluster-reshard"), 3, 0).await;
    let nodes = cluster_fleet(&cluster, "", 2).await;
    let topics = topics(24);
    for topic in &topics {
        nodes[0].register(topic, false).await;
    }
    let mut sockets = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        sockets.push((topic.clone(), nodes[1].socket(topic, i as i64 + 1).await));
    }
    assert_eq!(
        every_topic_crosses(&nodes[0], &mut sockets, 0).await,
        topics.len()
    );

    // Move the slot of every shard channel one master owns to another.
    let slot = skywave::broker::key_slot(b"wavelog:events:0");
    let from = cluster.owner(slot).await.expect("an owner");
    let to = *cluster
        .masters()
        .await
        .iter()
        .find(|p| **p != from)
        .expect("another master");
    let moved = Instant::now();
    cluster.move_slot(slot, from, to).await;
    assert_eq!(cluster.owner(slot).await, Some(to));
    // The nodes hear `sunsubscribe` from the old owner and subscribe anew.
    let shard_subscribers = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg("wavelog:events:0")
        .clone();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "both nodes resubscribed on the new owner",
        || async {
            let (_, count): (String, i64) = ask(to, &shard_subscribers).await.unwrap();
            if count == 2 {
                Ok(())
            } else {
                Err(format!("{count} subscribed"))
            }
        },
    )
    .await;
    println!(
        "resharding: slot {slot} moved {from} -> {to}; both nodes subscribed on the new owner after {} ms",
        moved.elapsed().as_millis()
    );
    let mut delivered = 0;
    for round in 1..6 {
        delivered = every_topic_crosses(&nodes[0], &mut sockets, round).await;
        if delivered == topics.len() {
            break;
        }
    }
    assert_eq!(
        delivered,
        topics.len(),
        "every topic crosses after the resharding"
    );
    for node in &nodes {
        node.wait_cluster(2, Duration::from_secs(5)).await;
    }
}
