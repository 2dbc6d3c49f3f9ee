//! The NATS broker against real `nats-server`s with JetStream (Debian's
//! package): fan-out across nodes, the key-value registry (TTL, unregister,
//! counts) and roster, a server killed under a publish stream (with and
//! without its store), a three-server cluster losing the server a node is
//! on, and the real binary with a password-protected server.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::cluster_chaos::drain;
use crate::support::{
    binary_pair, eventually, tempdir, BinaryNode, NatsCluster, NatsServer, TestNode,
};

async fn nats_node(url: &str, extra: &str) -> TestNode {
    TestNode::start(&format!("nats_url: \"{url}\"\n{extra}")).await
}

/// Two nodes on `url` with `extra`, both in cluster mode with two nodes.
async fn joined_pair(url: &str, extra: &str) -> (TestNode, TestNode) {
    let a = nats_node(url, extra).await;
    let b = nats_node(url, extra).await;
    a.wait_cluster(2, Duration::from_secs(15)).await;
    b.wait_cluster(2, Duration::from_secs(15)).await;
    (a, b)
}

/// Registered on `a`, a socket on `b`: a publish on `a` reaches it.
async fn crosses(a: &TestNode, b: &TestNode, topic: &str, require_token: bool, what: &str) {
    a.register(topic, require_token).await;
    let mut socket = b.socket(topic, 1).await;
    assert_eq!(a.publish(topic, &json!({"seq": 1})).await, 200);
    socket.expect_push(&json!({"seq": 1}), what).await;
}

/// The topics in the registry bucket, read with a NATS client of its own.
async fn bucket_keys(url: &str, bucket: &str) -> Result<Vec<String>, String> {
    let run = async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let jetstream = async_nats::jetstream::new(client);
        let store = jetstream
            .get_key_value(bucket)
            .await
            .map_err(|e| e.to_string())?;
        let mut keys: Vec<String> = store
            .keys()
            .await
            .map_err(|e| e.to_string())?
            .filter_map(|key| async move { key.ok() })
            .collect()
            .await;
        keys.sort();
        Ok(keys)
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap_or(Err("timed out".to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_nats_server_fan_out_in_order_with_registry_and_roster() {
    let nats = NatsServer::start(&tempdir("nats-two-nodes"));
    let a = nats_node(&nats.url(), "topic_ttl: 1h\nnode_name: nats-a").await;
    let b = nats_node(&nats.url(), "topic_ttl: 1h\nnode_name: nats-b").await;
    a.wait_cluster(2, Duration::from_secs(15)).await;
    let status = b.wait_cluster(2, Duration::from_secs(15)).await;
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes roster")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert!(
        names.contains(&"nats-a") && names.contains(&"nats-b"),
        "roster {names:?}"
    );

    // Registered on A, a socket on B, published on A: B gets all, in order.
    a.register("qso:contest.7", true).await;
    let mut on_b = b.socket("qso:contest.7", 1).await;
    let mut on_a = a.socket("qso:contest.7", 2).await;
    for seq in 0..50 {
        assert_eq!(a.publish("qso:contest.7", &json!({"seq": seq})).await, 200);
    }
    for seq in 0..50 {
        on_b.expect_push(&json!({"seq": seq}), "cross-node, in order")
            .await;
        on_a.expect_push(&json!({"seq": seq}), "local, in order")
            .await;
    }
    on_b.expect_silence(Duration::from_millis(300), "each publish once")
        .await;
    // The key is escaped for the bucket, and read back as the topic.
    let keys = bucket_keys(&nats.url(), "wavelog_topics").await.unwrap();
    assert!(keys.contains(&"qso=3Acontest=2E7".to_string()), "{keys:?}");
    let status = b.status("?topics=1").await;
    assert!(
        status["topic_list"]
            .as_array()
            .unwrap()
            .contains(&json!("qso:contest.7")),
        "{status}"
    );
    let registered = status["registered_topics"].as_u64().unwrap();

    // Unregister on A: B refuses publishes to it soon after, and the count
    // (the bucket's message count) goes down by one.
    a.unregister("qso:contest.7").await;
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(50),
        "B sees the unregister",
        || async {
            match b.publish("qso:contest.7", &json!("late")).await {
                404 => Ok(()),
                code => Err(format!("publish answered {code}")),
            }
        },
    )
    .await;
    let status = b.status("").await;
    assert_eq!(
        status["registered_topics"].as_u64().unwrap(),
        registered - 1,
        "{status}"
    );

    // A node that leaves is gone from the roster and the count.
    a.stop().await;
    b.wait_cluster(1, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_expire_with_the_topic_ttl_and_a_reregister_refreshes() {
    let nats = NatsServer::start(&tempdir("nats-ttl"));
    let (a, b) = joined_pair(&nats.url(), "topic_ttl: 3s").await;
    a.register("short", false).await;
    a.register("kept", false).await;
    assert_eq!(b.publish("short", &json!(1)).await, 200);
    let started = Instant::now();
    // "kept" is registered again every second; "short" is left to expire.
    let mut expired_after = None;
    while started.elapsed() < Duration::from_secs(8) {
        a.register("kept", false).await;
        if expired_after.is_none() && b.publish("short", &json!(2)).await == 404 {
            expired_after = Some(started.elapsed());
        }
        assert_eq!(b.publish("kept", &json!(3)).await, 200, "re-registered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let expired_after = expired_after.expect("the unrefreshed topic expired");
    eprintln!("a 3 s topic expired after {expired_after:?} on the other node");
    assert!(expired_after >= Duration::from_secs(2), "{expired_after:?}");
    let keys = bucket_keys(&nats.url(), "wavelog_topics").await.unwrap();
    assert!(
        keys.contains(&"kept".to_string()) && !keys.contains(&"short".to_string()),
        "{keys:?}"
    );
}

/// Kill -9 the server for 5 s under 20 publishes/s on A, then start it again
/// (with its store or a fresh one).
async fn chaos(keep_store: bool) {
    let mut nats = NatsServer::start(&tempdir("nats-chaos"));
    let (a, b) = joined_pair(&nats.url(), "topic_ttl: 1h").await;
    a.register("stream", true).await;
    let mut on_a = a.socket("stream", 1).await;
    let mut on_b = b.socket("stream", 2).await;

    let (mut sent, mut killed_at, mut restarted_at) = (0u64, None, None);
    let mut outage_registered = false;
    let mut restart_time = None;
    let mut sent_at = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if killed_at.is_none() && started.elapsed() >= Duration::from_secs(1) {
            nats.kill9();
            killed_at = Some(sent);
        }
        if restarted_at.is_none() && started.elapsed() >= Duration::from_secs(6) {
            nats.restart(keep_store);
            restarted_at = Some(sent);
            restart_time = Some(Instant::now());
        }
        if killed_at.is_some() && restarted_at.is_none() && !outage_registered {
            a.register("during-outage", false).await;
            outage_registered = true;
        }
        sent_at.push(Instant::now());
        let code = a.publish("stream", &json!({"seq": sent})).await;
        assert_eq!(code, 200, "publish {sent} answered {code}");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both rejoined (on a loaded machine a rejoin may still be under way
    // when the stream ends; the drains read until half a second of quiet).
    for node in [&a, &b] {
        node.wait_status(Duration::from_secs(10), "rejoined after the restart", |s| {
            s["mode"] == "cluster"
        })
        .await;
    }
    let (local, local_resyncs) = drain(&mut on_a).await;
    assert_eq!(local, (0..sent).collect::<Vec<_>>(), "node A's own socket");
    assert_eq!(local_resyncs, 1, "one resync notice on A after its rejoin");
    let (remote, remote_resyncs) = drain(&mut on_b).await;
    assert_eq!(
        remote_resyncs, 1,
        "B's socket is told it may have missed events: {remote:?}"
    );
    assert_eq!(remote.last().copied(), Some(sent - 1), "B got {remote:?}");
    assert!(
        remote.windows(2).all(|w| w[0] < w[1]),
        "in order: {remote:?}"
    );
    let (killed, restarted) = (killed_at.unwrap(), restarted_at.unwrap());
    let resumed = remote.iter().copied().find(|seq| *seq >= killed).unwrap();
    // The first publish made after the restart that reached B, and when.
    let first_after = remote
        .iter()
        .copied()
        .find(|seq| *seq >= restarted)
        .unwrap();
    let back = sent_at[first_after as usize].saturating_duration_since(restart_time.unwrap());
    eprintln!(
        "nats chaos (keep_store {keep_store}): B missed {} of {sent} publishes (50 ms apart); \
         down from #{killed} to #{restarted}, B's first after the kill #{resumed}, \
         its first made after the restart #{first_after}, published {back:?} after it",
        sent - remote.len() as u64,
    );
    assert!(
        back <= Duration::from_secs(5),
        "cross-node back within 5 s of the restart"
    );
    a.wait_status(Duration::from_secs(5), "rejoined", |s| {
        s["mode"] == "cluster"
    })
    .await;
    // The registration made while NATS was away is in the bucket; without
    // a store, so is everything registered before (written back).
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(100),
        "registrations restored",
        || async {
            let keys = bucket_keys(&nats.url(), "wavelog_topics").await?;
            if keys.contains(&"during-outage".to_string()) && keys.contains(&"stream".to_string()) {
                Ok(())
            } else {
                Err(format!("{keys:?}"))
            }
        },
    )
    .await;
    assert_eq!(b.publish("during-outage", &json!(1)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_under_publish_load_and_restarted_with_its_store() {
    chaos(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_under_publish_load_and_restarted_without_its_store() {
    chaos(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_server_nats_cluster_loses_the_server_a_node_is_on() {
    let mut cluster = NatsCluster::start(&tempdir("nats-cluster")).await;
    let extra = |name: &str| format!("topic_ttl: 1h\nnode_name: {name}\nnats:\n  kv_replicas: 3");
    let a = nats_node(&cluster.url(), &extra("nats-a")).await;
    let b = nats_node(&cluster.url(), &extra("nats-b")).await;
    a.wait_cluster(2, Duration::from_secs(20)).await;
    b.wait_cluster(2, Duration::from_secs(20)).await;
    a.register("moving", true).await;
    // Just after the cluster formed JetStream may still be electing the
    // buckets' leaders: A then keeps the registration pending (and answers
    // 200) until its write-back, and B's reads may fail and fall back to
    // what it knows. The subject here is losing a server, so the set-up
    // waits until B knows the topic.
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "B knows the topic registered on A",
        || async {
            match crate::support::raw_upgrade(b.client.ws, "moving").await.0 {
                101 => Ok(()),
                code => Err(format!("upgrade answered {code}")),
            }
        },
    )
    .await;
    let mut on_b = b.socket("moving", 1).await;
    assert_eq!(a.publish("moving", &json!({"seq": 0})).await, 200);
    on_b.expect_push(&json!({"seq": 0}), "cross-node on the cluster")
        .await;

    let mut on = None;
    for (i, server) in cluster.servers.iter().enumerate() {
        if server.clients().await.iter().any(|c| c == "skywave nats-a") {
            on = Some(i);
        }
    }
    let on = on.expect("A is connected to one of the servers");
    cluster.servers[on].kill9();
    let killed = Instant::now();
    // Both nodes are in cluster mode again (the one on the killed server
    // moved; JetStream elects new leaders for the buckets meanwhile).
    eventually(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "both nodes in cluster mode after the kill",
        || async {
            let (sa, sb) = (a.status("").await, b.status("").await);
            let moved = a
                .node
                .snapshot()
                .cluster
                .map_or(0, |c| c.subscriber_restarts)
                > 0;
            if moved && sa["mode"] == "cluster" && sb["mode"] == "cluster" {
                Ok(())
            } else {
                Err(format!("A {sa} B {sb}"))
            }
        },
    )
    .await;
    let rejoined = killed.elapsed();
    let mut now_on = None;
    for (i, server) in cluster.servers.iter().enumerate() {
        if i != on && server.clients().await.iter().any(|c| c == "skywave nats-a") {
            now_on = Some(i);
        }
    }
    assert!(now_on.is_some(), "A moved to another server");
    // Cross-node delivery is back within 5 s, then every publish arrives.
    let mut seq = 1;
    let back = 'back: loop {
        assert_eq!(a.publish("moving", &json!({"seq": seq})).await, 200);
        while let Some(frame) = on_b.recv_json(Duration::from_millis(200)).await {
            if frame["type"] == "push" {
                break 'back killed.elapsed();
            }
        }
        if killed.elapsed() > rejoined + Duration::from_secs(5) {
            panic!(
                "cross-node back within 5 s: A {} B {}",
                a.status("").await,
                b.status("").await
            );
        }
        seq += 1;
    };
    eprintln!(
        "nats cluster: server {on} killed; both nodes in cluster mode after {rejoined:?}, \
         cross-node back after {back:?}"
    );
    for next in seq + 1..seq + 21 {
        assert_eq!(a.publish("moving", &json!({"seq": next})).await, 200);
    }
    let mut got = Vec::new();
    while let Some(frame) = on_b.recv_json(Duration::from_millis(500)).await {
        if frame["type"] == "push" {
            got.push(frame["payload"]["seq"].as_u64().unwrap());
        }
    }
    assert!(
        got.ends_with(&(seq + 1..seq + 21).collect::<Vec<_>>()),
        "{got:?}"
    );
    // The registry (three copies) kept the topic.
    let alive = cluster
        .servers
        .iter()
        .find(|s| s.proc.running())
        .unwrap()
        .url();
    // JetStream elects a new leader for each bucket whose leader went
    // (NATS 2.9: seconds; up to ~20 s seen on a loaded 2-core machine).
    eventually(
        Duration::from_secs(40),
        Duration::from_millis(200),
        "the registry kept the topic",
        || async {
            let keys = bucket_keys(&alive, "wavelog_topics").await?;
            match keys.contains(&"moving".to_string()) {
                true => Ok(()),
                false => Err(format!("{keys:?}")),
            }
        },
    )
    .await;
    let registry_back = killed.elapsed();
    eprintln!("nats cluster: the registry bucket answered again {registry_back:?} after the kill");
    // A registration made now is taken (once JetStream answers), and the
    // other node sees it.
    a.register("after-move", false).await;
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        "a registration after the move reaches the other node",
        || async {
            match b.publish("after-move", &json!(1)).await {
                200 => Ok(()),
                code => Err(format!("publish answered {code}")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_on_a_password_protected_nats_from_its_config_file() {
    let dir = tempdir("nats-binary");
    let port = crate::support::free_port();
    let _server = crate::support::Process::spawn(
        {
            let mut command = std::process::Command::new("nats-server");
            command.args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "-sd",
                &dir.join("store").display().to_string(),
                "--user",
                "skywave",
                "--pass",
                "s3cr3t-pw",
            ]);
            command
        },
        &dir,
        "nats-server",
    );
    crate::support::wait_port(port).await;
    let extra = format!("nats_url: \"nats://skywave:s3cr3t-pw@127.0.0.1:{port}\"\nlog_level: info");
    let (a, _b) = binary_pair(&dir, &extra, "cross-node through the binary").await;
    let log = a.process.output();
    assert!(log.contains("nats://skywave:***@127.0.0.1"), "{log}");
    assert!(
        !log.contains("s3cr3t-pw"),
        "the password is never logged: {log}"
    );

    // A wrong password: the node runs alone and says why.
    let wrong = format!("nats_url: \"nats://skywave:wrong@127.0.0.1:{port}\"");
    let c = BinaryNode::start(&dir, "c", &wrong).await;
    let status = c
        .client
        .wait_degraded("nats", "degraded with a reason")
        .await;
    eprintln!("wrong password: {}", status["redis_error"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_wide_connect_rate_is_counted_in_the_connects_bucket() {
    use crate::support::raw_upgrade;
    let nats = NatsServer::start(&tempdir("nats-connect-rate"));
    let extra = "limits:\n  cluster_connect_rate_per_ip: 4";
    let (a, b) = joined_pair(&nats.url(), extra).await;
    a.register("rated", false).await;
    let (mut accepted, mut refused, mut held) = (0, 0, Vec::new());
    for i in 0..16 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (code, stream) = raw_upgrade(node.ws, "rated").await;
        match code {
            101 => accepted += 1,
            429 => refused += 1,
            other => panic!("upgrade answered {other}"),
        }
        held.push(stream);
    }
    // 4 per second over both nodes (each alone would take 4 of its own):
    // at most 8 if the upgrades span two seconds.
    assert!(
        accepted <= 8 && refused >= 8,
        "accepted {accepted}, refused {refused}"
    );
    let keys = bucket_keys(&nats.url(), "wavelog_connects").await.unwrap();
    assert!(
        keys.iter().any(|k| k.starts_with("127=2E0=2E0=2E1.")),
        "{keys:?}"
    );
}

/// A `nats-server` with `args`, its JetStream store in `dir`; waits for its port.
async fn nats_with(
    dir: &std::path::Path,
    name: &str,
    args: &[String],
) -> (u16, crate::support::Process) {
    let port = crate::support::free_port();
    let mut command = std::process::Command::new("nats-server");
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join(format!("{name}-store")))
        .args(args);
    let server = crate::support::Process::spawn(command, dir, name);
    crate::support::wait_port(port).await;
    (port, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_a_token_and_a_wrong_ca_says_why() {
    let dir = tempdir("nats-tls");
    let certs = crate::support::TlsFiles::generate(&dir.join("certs"));
    let (client_cert, client_key) = certs.client_cert();
    let path = |p: &std::path::Path| p.display().to_string();
    let (port, _server) = nats_with(
        &dir,
        "nats-tls",
        &[
            "--tlsverify".into(),
            "--tlscacert".into(),
            path(&certs.ca),
            "--tlscert".into(),
            path(&certs.cert),
            "--tlskey".into(),
            path(&certs.key),
            "--auth".into(),
            "t0ken-for-tests".into(),
        ],
    )
    .await;
    let settings = |ca: &str| {
        format!(
            "nats:\n  token: t0ken-for-tests\n  tls_ca_file: \"{ca}\"\n  \
             tls_cert_file: \"{}\"\n  tls_key_file: \"{}\"",
            path(&client_cert),
            path(&client_key)
        )
    };
    let url = format!("tls://127.0.0.1:{port}");
    let (a, b) = joined_pair(&url, &settings(&path(&certs.ca))).await;
    crosses(&a, &b, "tls-topic", true, "cross-node over mutual TLS").await;

    // A CA that did not sign the server's certificate: degraded, and why.
    let wrong = nats_node(&url, &settings(&path(&certs.unrelated_ca()))).await;
    let status = wrong.wait_degraded("nats", "degraded with a reason").await;
    eprintln!("wrong CA: {}", status["redis_error"]);
    assert!(
        status["redis_error"]
            .as_str()
            .unwrap()
            .contains("certificate")
            || status["redis_error"].as_str().unwrap().contains("tls"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file_authenticates() {
    let dir = tempdir("nats-nkey");
    let user = nkeys::KeyPair::new_user();
    let seed_file = dir.join("user.nk");
    std::fs::write(&seed_file, format!("{}\n", user.seed().unwrap())).unwrap();
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            user.public_key()
        ),
    )
    .unwrap();
    let (port, _server) = nats_with(
        &dir,
        "nats-nkey",
        &["-c".into(), conf.display().to_string()],
    )
    .await;
    let url = format!("nats://127.0.0.1:{port}");
    let extra = format!("nats:\n  nkey_seed_file: \"{}\"", seed_file.display());
    let (a, b) = joined_pair(&url, &extra).await;
    crosses(&a, &b, "nkey-topic", false, "cross-node with an NKey user").await;
    // Without the seed the server refuses the node.
    let refused = nats_node(&url, "").await;
    let status = refused
        .wait_degraded("authorization", "refused without the NKey")
        .await;
    eprintln!("without the NKey: {}", status["redis_error"]);
}
