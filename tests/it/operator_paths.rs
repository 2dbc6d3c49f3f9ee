//! The paths a new operator walks, through the real binary: the Go image's
//! layout (`./config.yaml`, no flags), start-up refusals with their messages,
//! `check-config` in scripts, Redis over TLS, on a unix socket, `/readyz`
//! and `nodes` while Redis comes and goes, and a Prometheus scrape checked
//! by `promtool`.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    free_port, tempdir, two_free_ports, BinaryNode, NodeClient, Process, RedisServer, TlsFiles,
    SECRET,
};

const WITHIN: Duration = Duration::from_secs(10);

async fn wait_cluster(node: &NodeClient, nodes: i64) -> Value {
    node.wait_status(WITHIN, "joins the cluster", |s| {
        s["mode"] == "cluster" && s["cluster_nodes"] == nodes
    })
    .await
}

/// A publish on `from` reaches a socket on `to` (topic registered via `from`).
async fn publish_crosses(from: &NodeClient, to: &NodeClient, topic: &str) {
    from.register(topic, true).await;
    let mut socket = to.socket(topic, 7).await;
    assert_eq!(from.publish(topic, &json!({"via": topic})).await, 200);
    socket
        .expect_push(&json!({"via": topic}), "publish crosses nodes")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_layout_config_yaml_in_the_working_directory_is_read_without_flags() {
    let dir = tempdir("golayout");
    let node = BinaryNode::start(&dir, "app", "topic_ttl: 1h").await;
    let status = node.status("").await;
    assert_eq!(status["mode"], "single");
    let (code, _) = node.get("/internal/status", Some("wrong-secret")).await;
    assert_eq!(code, 403, "only the secret of ./config.yaml is accepted");
    let log = node
        .process
        .wait_for_output("skywave listening", WITHIN)
        .await;
    let file = node.dir.join("config.yaml");
    assert!(
        log.contains(&format!("config={}", file.display())),
        "the start-up line names the file it read: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_and_no_terminal_refuses_to_start_naming_the_key_and_the_paths() {
    let dir = tempdir("nosecret");
    let mut command = Process::command(&dir);
    let (ws, internal) = two_free_ports();
    command
        .env("SKYWAVE_WS_PORT", ws.to_string())
        .env("SKYWAVE_INTERNAL_PORT", internal.to_string());
    let mut process = Process::spawn(command, &dir, "skywave");
    let status = process.wait_exit(WITHIN).await.expect("exits by itself");
    assert!(!status.success());
    let output = process.output();
    for needle in [
        "worker_secret",
        "SKYWAVE_WORKER_SECRET",
        &dir.join("config.yaml").display().to_string(),
        "--generate-secret",
    ] {
        assert!(output.contains(needle), "{needle:?} in: {output}");
    }
    assert!(!output.contains("panicked"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_secret_only_on_request_or_in_a_terminal() {
    let dir = tempdir("gensecret");
    let (ws, internal) = two_free_ports();
    let mut command = Process::command(&dir);
    command
        .arg("--generate-secret")
        .env("SKYWAVE_WS_PORT", ws.to_string())
        .env("SKYWAVE_WS_BIND", "127.0.0.1")
        .env("SKYWAVE_INTERNAL_PORT", internal.to_string());
    let mut process = Process::spawn(command, &dir, "flag");
    process.expect_listening(&[internal]).await;
    let output = process.wait_for_output("*** worker_secret: ", WITHIN).await;
    assert!(output.contains("WARNING: no worker_secret configured"));
    drop(process);

    // The README's first command, from a terminal: `script` gives the
    // binary a pseudo-terminal as its stdin and stderr.
    let (ws, internal) = two_free_ports();
    let binary = env!("CARGO_BIN_EXE_skywave");
    // `script` runs the command through $SHELL (or /bin/sh, dash on
    // Debian); `exec` makes the worker the shell's replacement, so Ctrl-C
    // reaches the worker alone and not a non-interactive dash that dies of
    // it and takes `script` down with status 130 before the worker exits.
    let exec = format!("exec '{binary}'");
    let mut command = Command::new("script");
    command
        .current_dir(&dir)
        .args(["-q", "-e", "-c", &exec, "/dev/null"])
        .env("SKYWAVE_WS_PORT", ws.to_string())
        .env("SKYWAVE_WS_BIND", "127.0.0.1")
        .env("SKYWAVE_INTERNAL_PORT", internal.to_string())
        .env_remove("SKYWAVE_WORKER_SECRET")
        .stdin(Stdio::piped());
    let mut terminal = Process::spawn(command, &dir, "terminal");
    terminal.expect_listening(&[internal]).await;
    let output = terminal
        .wait_for_output("*** worker_secret: ", WITHIN)
        .await;
    let secret = output
        .lines()
        .find_map(|l| l.split("*** worker_secret: ").nth(1))
        .map(str::trim)
        .unwrap_or_default();
    assert_eq!(secret.len(), 64, "{output}");
    let node = NodeClient {
        ws: format!("127.0.0.1:{ws}").parse().unwrap(),
        internal: format!("127.0.0.1:{internal}").parse().unwrap(),
    };
    let (code, _) = node.get("/internal/status", Some(secret)).await;
    assert_eq!(code, 200, "the printed secret is the one in force");

    // Ctrl-C in that terminal (the pseudo-terminal turns it into SIGINT
    // for the worker): it shuts down and exits, and `script -e` passes its
    // status on. Killing `script` alone could leave the worker running.
    terminal.type_in(b"\x03");
    let status = terminal.wait_exit(WITHIN).await;
    let output = terminal.output();
    assert!(
        status.is_some_and(|status| status.success()),
        "Ctrl-C ends the worker cleanly ({status:?}):\n{output}"
    );
    assert!(output.contains("shutting down"), "{output}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", internal)).is_err(),
        "the internal port is closed once it has exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_of_config_mistakes_name_the_key() {
    let dir = tempdir("refusals");
    let example = include_str!("../../config.example.yaml");
    let port = free_port();
    let cases = [
        ("example", example.to_string(), "worker_secret"),
        (
            "sameport",
            format!("worker_secret: \"{SECRET}\"\nws_port: {port}\ninternal_port: {port}\n"),
            "internal_port",
        ),
    ];
    for (name, config, key) in cases {
        let case = dir.join(name);
        std::fs::create_dir_all(&case).unwrap();
        std::fs::write(case.join("config.yaml"), config).unwrap();
        let mut process = Process::spawn(Process::command(&case), &case, "skywave");
        let status = process.wait_exit(WITHIN).await.expect("exits");
        assert!(!status.success(), "{name}");
        let output = process.output();
        assert!(output.contains(&format!("`{key}`")), "{name}: {output}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_typos_never_silence_the_log() {
    let dir = tempdir("loglevel");
    let verbose = BinaryNode::start(&dir, "verbose", "log_level: verbose").await;
    verbose
        .process
        .wait_for_output("skywave listening", WITHIN)
        .await;
    let typo = BinaryNode::start(&dir, "typo", "log_level: loud").await;
    let output = typo
        .process
        .wait_for_output("skywave listening", WITHIN)
        .await;
    assert!(
        output.contains("`log_level`") && output.contains("WARN"),
        "{output}"
    );
}

#[test]
fn check_config_strict_fails_on_warnings_and_survives_a_closed_pipe() {
    let dir = tempdir("checkconfig");
    let file = dir.join("typo.yaml");
    std::fs::write(
        &file,
        format!("worker_secret: \"{SECRET}\"\nredis_ulr: x\n"),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Process::command(&dir)
            .arg("check-config")
            .args(args)
            .arg(&file)
            .output()
            .unwrap()
    };
    assert!(run(&[]).status.success(), "warnings alone pass by default");
    let strict = run(&["--strict"]);
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("--strict"));

    // `skywave check-config F | head`: stdout is a pipe whose reader is gone.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Process::command(&dir)
        .arg("check-config")
        .arg(&file)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);

    // Without a path, check-config finds ./config.yaml like the worker does.
    std::fs::write(
        dir.join("config.yaml"),
        format!("worker_secret: \"{SECRET}\"\n"),
    )
    .unwrap();
    let out = Process::command(&dir).arg("check-config").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.yaml: OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_node_logs_its_first_join_as_a_join() {
    let redis = RedisServer::start();
    let dir = tempdir("firstjoin");
    let node = BinaryNode::start(&dir, "a", &format!("redis_url: \"{}\"", redis.url())).await;
    let output = node
        .process
        .wait_for_output("joined the cluster", WITHIN)
        .await;
    assert!(!output.contains("rejoined"), "{output}");
    let first = output
        .lines()
        .find(|l| l.contains("skywave listening"))
        .unwrap();
    assert!(!first.contains("degraded"), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_file_forms_a_cluster_and_a_wrong_ca_says_why() {
    let dir = tempdir("tls");
    let redis = RedisServer::start_tls(TlsFiles::generate(&dir.join("certs")), false);
    let certs = redis.tls().unwrap();
    let tls = |ca: &std::path::Path| {
        format!(
            "redis_url: \"{}\"\nredis:\n  tls_ca_file: \"{}\"",
            redis.url(),
            ca.display()
        )
    };
    let a = BinaryNode::start(&dir, "a", &tls(&certs.ca)).await;
    let b = BinaryNode::start(&dir, "b", &tls(&certs.ca)).await;
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    publish_crosses(&a, &b, "tls-room").await;
    let (code, body) = a.get("/readyz", None).await;
    assert_eq!((code, body.trim()), (200, "ok"));

    // A CA that did not sign the server's certificate: degraded, and the
    // log and the status say why.
    let wrong = certs.unrelated_ca();
    let c = BinaryNode::start(&dir, "c", &tls(&wrong)).await;
    let status = c
        .wait_status(WITHIN, "degraded with a reason", |s| {
            s["mode"] == "degraded" && s["redis_error"].is_string()
        })
        .await;
    assert_eq!(status["nodes"], Value::Null);
    let output = c.process.wait_for_output("WARN", WITHIN).await;
    assert!(
        output.to_lowercase().contains("certificate"),
        "the warning names the certificate problem: {output}"
    );
    let (code, body) = c.get("/readyz", None).await;
    assert_eq!((code, body.trim()), (503, "redis not connected"));

    // Fixed CA, restarted in the same directory: joins.
    c.process.signal("-TERM");
    let mut c = c;
    assert!(c.process.wait_exit(WITHIN).await.is_some());
    let fixed = BinaryNode::start(&dir, "c-fixed", &tls(&certs.ca)).await;
    wait_cluster(&fixed, 3).await;

    // No CA file: the system's roots, here made to hold the test CA through
    // SSL_CERT_FILE (as a managed Redis's public CA is in the real roots).
    let mut command = Process::command(&dir);
    let (ws, internal) = two_free_ports();
    command
        .env("SSL_CERT_FILE", &certs.ca)
        .env("SKYWAVE_REDIS_URL", redis.url())
        .env("SKYWAVE_WORKER_SECRET", SECRET)
        .env("SKYWAVE_WS_BIND", "127.0.0.1")
        .env("SKYWAVE_WS_PORT", ws.to_string())
        .env("SKYWAVE_INTERNAL_PORT", internal.to_string());
    let mut roots_node = Process::spawn(command, &dir, "system-roots");
    roots_node.expect_listening(&[internal]).await;
    let roots = NodeClient {
        ws: format!("127.0.0.1:{ws}").parse().unwrap(),
        internal: format!("127.0.0.1:{internal}").parse().unwrap(),
    };
    wait_cluster(&roots, 4).await;

    // `#insecure`: no verification at all (testing only), still TLS.
    let insecure = BinaryNode::start(
        &dir,
        "insecure",
        &format!("redis_url: \"{}#insecure\"", redis.url()),
    )
    .await;
    wait_cluster(&insecure, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate() {
    let dir = tempdir("mtls");
    let redis = RedisServer::start_tls(TlsFiles::generate(&dir.join("certs")), true);
    let certs = redis.tls().unwrap();
    let (cert, key) = certs.client_cert();
    let with_cert = format!(
        "redis_url: \"{}\"\nredis:\n  tls_ca_file: \"{}\"\n  tls_cert_file: \"{}\"\n  tls_key_file: \"{}\"",
        redis.url(),
        certs.ca.display(),
        cert.display(),
        key.display()
    );
    let a = BinaryNode::start(&dir, "a", &with_cert).await;
    let b = BinaryNode::start(&dir, "b", &with_cert).await;
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    publish_crosses(&a, &b, "mtls-room").await;
    // The same server without a client certificate: refused, and it says so.
    let without = format!(
        "redis_url: \"{}\"\nredis:\n  tls_ca_file: \"{}\"",
        redis.url(),
        certs.ca.display()
    );
    let c = BinaryNode::start(&dir, "c", &without).await;
    c.wait_status(WITHIN, "degraded without a client certificate", |s| {
        s["mode"] == "degraded" && s["redis_error"].is_string()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_redis_forms_a_cluster_on_the_db_of_the_url() {
    let dir = tempdir("unix");
    let redis = RedisServer::start_unix(&dir.join("redis"));
    let url = redis.url().replace("?db=0", "?db=3");
    let a = BinaryNode::start(&dir, "a", &format!("redis_url: \"{url}\"")).await;
    let b = BinaryNode::start(&dir, "b", &format!("redis_url: \"redis+{url}\"")).await;
    wait_cluster(&a, 2).await;
    wait_cluster(&b, 2).await;
    publish_crosses(&a, &b, "unix-room").await;
    let socket = url
        .trim_start_matches("unix://")
        .trim_end_matches("?db=3")
        .to_string();
    let exists = Command::new("redis-cli")
        .args([
            "-s",
            &socket,
            "-n",
            "3",
            "EXISTS",
            "wavelog:topic:unix-room",
        ])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&exists.stdout).trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_nodes_follow_redis_down_and_up() {
    let mut redis = RedisServer::reserved();
    let dir = tempdir("readyz");
    let node = BinaryNode::start(
        &dir,
        "a",
        &format!("redis_url: \"{}\"\nnode_name: logbook-1", redis.url()),
    )
    .await;
    let client = node.client;
    let down = || async move {
        client
            .wait_status(WITHIN, "degraded: nodes null", |s| {
                s["mode"] == "degraded" && s["nodes"].is_null()
            })
            .await;
        let (code, body) = client.get("/readyz", None).await;
        assert_eq!((code, body.trim()), (503, "redis not connected"));
    };
    down().await;

    redis.restart();
    let status = wait_cluster(&node, 1).await;
    let nodes = status["nodes"].as_array().expect("nodes listed");
    assert_eq!(nodes.len(), 1, "{status}");
    assert_eq!(nodes[0]["id"], status["node_id"]);
    assert_eq!(nodes[0]["name"], "logbook-1", "node_name names the entry");
    assert_eq!(nodes[0]["alive"], true);
    let (code, body) = node.get("/readyz", None).await;
    assert_eq!((code, body.trim()), (200, "ok"));

    redis.kill9();
    down().await;
    redis.restart();
    wait_cluster(&node, 1).await;
    let (code, _) = node.get("/readyz", None).await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_no_secret_and_pass_promtool() {
    let redis = RedisServer::start();
    let dir = tempdir("metrics");
    let single = BinaryNode::start(&dir, "single", "").await;
    let cluster =
        BinaryNode::start(&dir, "cluster", &format!("redis_url: \"{}\"", redis.url())).await;
    wait_cluster(&cluster, 1).await;
    for node in [&single, &cluster] {
        let (code, text) = node.get("/metrics", None).await;
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("skywave_sockets "), "{text}");
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool must be installed (scripts/test installs Debian's prometheus)");
        use std::io::Write;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (code, _) = node.get("/internal/status", None).await;
        assert_eq!(code, 403, "the API itself still needs the secret");
    }
}
