//! Fleet consistency and roster timing: nodes whose shared settings differ
//! are flagged (Go entries are "unknown", not a mismatch), and the roster's
//! heartbeat and alive window follow the config.

use std::time::{Duration, Instant};

use crate::support::{tempdir, BinaryNode, RedisServer, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_other_settings_is_flagged_and_a_go_node_is_unknown() {
    let redis = RedisServer::start();
    let base = format!(
        "redis_url: \"{}\"\nroster:\n  heartbeat: 500ms\n  alive_window: 5s\n",
        redis.url()
    );
    let a = TestNode::start(&format!("{base}topic_ttl: 1h\nnode_name: a")).await;
    let b = TestNode::start(&format!("{base}topic_ttl: 1h\nnode_name: b")).await;
    let odd = TestNode::start(&format!("{base}topic_ttl: 2h\nnode_name: odd")).await;
    // A Go 0.3.0 node's entry: no fingerprint.
    let mut conn = redis.client().await;
    let seen = skywave::roster::rfc3339(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    let go = format!(
        r#"{{"id":"00000000000000aa","name":"go-node","version":"0.3.0","started_at":"{seen}","seen_at":"{seen}","active_topics":0,"connected_clients":0,"connected_sockets":0,"alive":true,"uptime":"1s","uptime_seconds":1}}"#
    );
    let () = redis::cmd("HSET")
        .arg("wavelog:nodes")
        .arg("00000000000000aa")
        .arg(go)
        .query_async(&mut conn)
        .await
        .unwrap();
    let status = a
        .wait_status(Duration::from_secs(10), "four nodes listed", |s| {
            s["nodes"].as_array().is_some_and(|n| n.len() == 4)
        })
        .await;
    let by_name = |name: &str| {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    assert_eq!(by_name("b")["config_match"], "same");
    assert_eq!(by_name("odd")["config_match"], "different");
    assert_eq!(by_name("go-node")["config_match"], "unknown");
    assert!(by_name("b")["fingerprint"]
        .as_str()
        .is_some_and(|f| f.len() == 16));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = a.get("/metrics", None).await;
        if metrics.contains("skywave_fleet_config_mismatches 1") {
            break;
        }
        assert!(Instant::now() < deadline, "one mismatch counted: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((b, odd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alive_window_follows_the_config() {
    let redis = RedisServer::start();
    let dir = tempdir("roster-timing");
    let extra = format!(
        "redis_url: \"{}\"\nroster:\n  heartbeat: 250ms\n  alive_window: 1s\n",
        redis.url()
    );
    let a = BinaryNode::start(&dir, "a", &format!("{extra}node_name: a")).await;
    let b = BinaryNode::start(&dir, "b", &format!("{extra}node_name: b")).await;
    a.wait_status(Duration::from_secs(10), "b alive", |s| {
        s["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|e| e["name"] == "b" && e["alive"] == true))
    })
    .await;
    // A crash (no clean leave): with a 1 s alive window it shows dead soon.
    drop(b);
    let started = Instant::now();
    a.wait_status(Duration::from_secs(5), "b dead", |s| {
        s["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|e| e["name"] == "b" && e["alive"] == false))
    })
    .await;
    eprintln!("b shown dead {:?} after its crash", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_wide_connect_rate_counts_every_node_and_falls_back_to_each_node() {
    use crate::support::raw_upgrade;
    let mut redis = RedisServer::start();
    let extra = format!(
        "redis_url: \"{}\"\nlimits:\n  cluster_connect_rate_per_ip: 4\n",
        redis.url()
    );
    let a = TestNode::start(&extra).await;
    let b = TestNode::start(&extra).await;
    for n in [&a, &b] {
        n.wait_status(Duration::from_secs(10), "cluster", |s| {
            s["cluster_nodes"] == 2
        })
        .await;
    }
    a.register("rated", false).await;
    let mut held = Vec::new();
    // Upgrades taking turns over `nodes`: (accepted, refused by a limit).
    let mut upgrades = async |nodes: &[&TestNode], count: usize| {
        let (mut accepted, mut refused) = (0, 0);
        for i in 0..count {
            let (code, stream) = raw_upgrade(nodes[i % nodes.len()].ws, "rated").await;
            match code {
                101 => accepted += 1,
                429 => refused += 1,
                other => panic!("upgrade answered {other}"),
            }
            held.push(stream);
        }
        (accepted, refused)
    };
    let (accepted, refused) = upgrades(&[&a, &b], 16).await;
    // 4 per second over both nodes: at most 8 if the test spans two seconds.
    assert!(
        accepted <= 8 && refused >= 8,
        "accepted {accepted}, refused {refused}"
    );

    // Redis away: each node counts alone, with the same limit.
    redis.kill9();
    a.wait_status(Duration::from_secs(10), "degraded", |s| {
        s["mode"] == "degraded"
    })
    .await;
    let (accepted, refused) = upgrades(&[&a], 12).await;
    assert!(
        accepted <= 8 && refused >= 4,
        "alone: accepted {accepted}, refused {refused}"
    );
}
