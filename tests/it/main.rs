//! The integration tests, one crate: the real app in-process on port 0 or
//! the built binary, real WebSocket clients, and a real `redis-server` on a
//! free loopback port. One `mod` per area; `support` starts everything.
#![allow(clippy::unwrap_used)]

mod cluster_chaos;
mod connection_logs;
mod dashboard;
mod failures;
mod fleet;
mod health;
mod layers;
mod nats_broker;
mod operator_paths;
mod props;
mod redis_ha;
mod shutdown;
mod single_node;
mod slow_sockets;
mod support;
