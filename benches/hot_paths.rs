//! Micro-benchmarks of the hot paths: token verification (hex and JWT), push
//! frame encoding, and hub fan-out into 10,000 outboxes. Run with
//! `cargo bench --bench hot_paths`; compare runs on the same machine.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::value::RawValue;
use skywave::auth;
use skywave::hub::{Hub, Staleness};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef";

fn tokens(c: &mut Criterion) {
    let now = auth::unix_now();
    let hex = auth::sign_hex_token(SECRET, 42, "qso/live:station-7", now + 3600);
    let jwt = auth::sign_jwt(SECRET, 42, "qso/live:station-7", now + 3600).expect("jwt");
    let mut group = c.benchmark_group("token_verify");
    group.bench_function("hex", |b| {
        b.iter(|| {
            auth::verify(
                SECRET,
                std::hint::black_box(&hex),
                "qso/live:station-7",
                now,
            )
        })
    });
    group.bench_function("jwt", |b| {
        b.iter(|| {
            auth::verify(
                SECRET,
                std::hint::black_box(&jwt),
                "qso/live:station-7",
                now,
            )
        })
    });
    group.finish();
}

fn frame_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("push_frame");
    for size in [100usize, 10_000] {
        let payload =
            RawValue::from_string(format!("{{\"blob\":\"{}\"}}", "x".repeat(size))).expect("raw");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| skywave::frames::push(std::hint::black_box(payload)))
        });
    }
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_deliver");
    for sockets in [10usize, 10_000] {
        let hub = Hub::new(256);
        let subscriptions: Vec<_> = (0..sockets)
            .map(|i| hub.subscribe("t", i as i64 + 1))
            .collect();
        let payload =
            RawValue::from_string(format!("{{\"x\":\"{}\"}}", "y".repeat(80))).expect("raw");
        let frame = skywave::frames::push(&payload);
        group.throughput(Throughput::Elements(sockets as u64));
        group.bench_with_input(BenchmarkId::from_parameter(sockets), &frame, |b, frame| {
            b.iter(|| {
                hub.deliver("t", frame);
                // Drain, as the sessions would, so queues stay at steady state.
                for s in &subscriptions {
                    while s.outbox().pop(Staleness::Keep).is_some() {}
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tokens, frame_encode, fanout);
criterion_main!(benches);
