//! A panicking cluster task is restarted, counted and shown.

use std::sync::atomic::AtomicU32;

use super::*;

static RUNS: AtomicU32 = AtomicU32::new(0);

/// Panics on its first run, returns on its second.
fn flaky(
    _: Arc<Cluster>,
    _: CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(async {
        if RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("boom");
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_is_counted_shown_and_restarted() {
    let config = crate::config::Config::from_yaml(
        "worker_secret: \"0123456789abcdef0123456789abcdef\"\n\
         redis_url: \"redis://127.0.0.1:1/0\"\n",
    )
    .expect("config")
    .config;
    let broker = Broker::from_config(&config).expect("broker");
    let broker = Arc::new(broker.expect("a redis_url"));
    let health = Arc::new(Health::default());
    let hub = Hub::new(4);
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let token = CancellationToken::new();
    let (dispatcher, _fanout) = Dispatcher::new(
        Arc::clone(&hub),
        metrics,
        token.clone(),
        Duration::from_secs(1),
    );
    let cluster = Cluster::new(Parts {
        registry: Registry::new(
            config.topic_ttl,
            Some((Arc::clone(&broker), Arc::clone(&health))),
        ),
        broker,
        health: Arc::clone(&health),
        dispatcher,
        hub,
        identity: Arc::new(Identity::new(&config)),
    });
    health.set_connected(true);
    Arc::clone(&cluster)
        .restarting("redis subscriber", flaky, token)
        .await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 2, "restarted after the panic");
    assert_eq!(cluster.counters().task_panics.load(Ordering::SeqCst), 1);
    let shown = cluster.last_error().unwrap_or_default();
    assert!(shown.contains("panicked: boom"), "{shown}");
    assert_eq!(
        cluster.mode(),
        Mode::Degraded,
        "a panicked subscriber is not in the cluster"
    );
}
