//! Local fan-out: topic -> the sockets subscribed to it on this node.
//!
//! The hub never awaits. A publish is one shared frame (`Frame`, a
//! reference-counted buffer) handed to each subscriber's [`Outbox`]: written
//! straight into the socket when the socket is idle and takes it whole (one
//! non-blocking `send` of header and payload, built once per publish, no
//! task woken: write-through), queued for the socket's own session task
//! otherwise. A full outbox
//! drops its *oldest* frame and counts it, so one slow socket costs a bounded
//! amount of memory and never delays the publisher or any other socket.
//! A frame older than `limits.max_frame_age` (from when the dispatcher
//! queued the publish; less [`delivery_allowance`], the time a frame may
//! take from its last check into the client's socket, so that frames
//! arrive within the bound) is dropped by the session's next pop and reported
//! in the same `lagged` notice; a publish the dispatcher finds stale is not
//! delivered but counted as missed by every socket of its topic
//! ([`Hub::miss`]), and one that goes stale during its fan-out by the
//! sockets it has not reached.
//!
//! A topic's sockets are visited in the order they subscribed (see
//! `Hub::topics`): the memory of consecutive sockets is then adjacent.
//!
//! The hub also keeps the per-node counts the status endpoint reports; the
//! outbox itself is `outbox.rs`.

mod outbox;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

pub use self::outbox::{Outbox, Outgoing, Pushed, Staleness, Taken};
pub use crate::frames::Frame;

pub struct Hub {
    /// Each topic's sockets by subscription id, which only grows: a fan-out
    /// visits them in the order they subscribed, which is the order their
    /// outboxes, streams and the kernel's socket structures were allocated
    /// in, so one socket's memory is next to the previous one's. A hash
    /// map visited them in hash order, a cache miss per object per socket:
    /// 10k × 1 topic at 10/s, server and floor sender on one CPU, 1.27–1.34×
    /// → 1.06–1.10× the floor's CPU per write (three alternating pairs).
    topics: DashMap<Arc<str>, BTreeMap<u64, Arc<Outbox>>>,
    users: DashMap<i64, usize>,
    sockets: AtomicUsize,
    anonymous: AtomicUsize,
    next_id: AtomicU64,
    queue_capacity: usize,
    /// How long a frame is handed out after its publish was accepted:
    /// `limits.max_frame_age` less [`delivery_allowance`].
    fresh_for: Duration,
}

pub use crate::config::DEFAULT_MAX_FRAME_AGE;

/// The counts `/internal/status` reports for this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubCounts {
    pub active_topics: usize,
    pub connected_sockets: usize,
    pub connected_clients: usize,
}

/// What one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    pub recipients: usize,
    /// Older frames pushed out of full outboxes by this delivery.
    pub dropped: usize,
    /// Recipients the frame was written to directly (write-through), no
    /// session woken.
    pub written: usize,
    /// Frames counted as missed instead: the publish went stale while it
    /// was being fanned out (it, and the older frames queued before it, for
    /// each socket it had not reached yet).
    pub stale: u64,
}

impl Delivery {
    fn count(&mut self, pushed: Pushed) {
        self.recipients += 1;
        self.dropped += usize::from(pushed.dropped);
        self.written += usize::from(pushed.written);
    }
}

/// Sockets served between two clock reads of a fan-out.
const CLOCK_EVERY: usize = 64;

/// The part of `limits.max_frame_age` kept for a frame's way from its last
/// age check into the client's socket, so that frames *arrive* within the
/// bound: 1/50 of it, at most 20 ms. The node checks a frame's age before
/// it writes it, but cannot see the time after the check (the write of a
/// batch, the fan-out thread losing its CPU for a moment, up to 64 sockets
/// between two clock reads) nor what the publisher's request took to be
/// read. Under overload the delivered frames crowd up to the bound (p90
/// 955 ms), so without this a few milliseconds past the check put the p99
/// over it: `skywave-loadgen overload`, 10,000 sockets, bound 1 s,
/// arrival p99 1000.96 ms, max 1005.3 ms, the late frames mostly of
/// publishes whose own call took 2–5 ms.
pub fn delivery_allowance(max_frame_age: Duration) -> Duration {
    (max_frame_age / 50).min(Duration::from_millis(20))
}

/// How long after its publish was accepted a frame is still handed out.
fn fresh_for(max_frame_age: Duration) -> Duration {
    max_frame_age - delivery_allowance(max_frame_age)
}

impl Hub {
    /// A hub whose frames go stale after [`DEFAULT_MAX_FRAME_AGE`].
    pub fn new(queue_capacity: usize) -> Arc<Self> {
        Self::with_limits(queue_capacity, DEFAULT_MAX_FRAME_AGE)
    }

    /// Outboxes of `queue_capacity` frames, each dropped once it waited
    /// `max_frame_age` (see [`Outbox::pop_batch`]).
    pub fn with_limits(queue_capacity: usize, max_frame_age: Duration) -> Arc<Self> {
        Arc::new(Hub {
            topics: DashMap::new(),
            users: DashMap::new(),
            sockets: AtomicUsize::new(0),
            anonymous: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            queue_capacity: queue_capacity.max(1),
            // A year is "never" and keeps the deadline arithmetic in range.
            fresh_for: fresh_for(max_frame_age.min(Duration::from_secs(365 * 86_400))),
        })
    }

    /// Subscribes a socket that passed auth. Dropping the returned
    /// subscription unsubscribes it and updates the counts.
    pub fn subscribe(self: &Arc<Self>, topic: &str, user_id: i64) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new());
        let topic: Arc<str> = match self.topics.get(topic) {
            Some(entry) => Arc::clone(entry.key()),
            None => Arc::from(topic),
        };
        self.topics
            .entry(Arc::clone(&topic))
            .or_default()
            .insert(id, Arc::clone(&outbox));
        self.sockets.fetch_add(1, Ordering::Relaxed);
        if user_id > 0 {
            *self.users.entry(user_id).or_insert(0) += 1;
        } else {
            self.anonymous.fetch_add(1, Ordering::Relaxed);
        }
        Subscription {
            hub: Arc::clone(self),
            topic,
            id,
            user_id,
            outbox,
        }
    }

    /// Queues `frame` for every socket on `topic`, accepted now.
    pub fn deliver(&self, topic: &str, frame: &Frame) -> Delivery {
        self.deliver_accepted(topic, frame, Instant::now())
    }

    /// Queues `frame` for every socket on `topic`; it goes stale
    /// `limits.max_frame_age` after `accepted` (when the node took the
    /// publish), so its age counts from there, the fan-out queue included.
    pub fn deliver_accepted(&self, topic: &str, frame: &Frame, accepted: Instant) -> Delivery {
        self.deliver_clocked(topic, frame, accepted, usize::MAX, Instant::now)
            .unwrap_or_default()
    }

    /// [`deliver_accepted`](Self::deliver_accepted) if `topic` has at most
    /// `max` sockets here (none: nothing to do); `None` if it has more.
    pub fn deliver_small(
        &self,
        topic: &str,
        frame: &Frame,
        accepted: Instant,
        max: usize,
    ) -> Option<Delivery> {
        self.deliver_clocked(topic, frame, accepted, max, Instant::now)
    }

    /// [`deliver_small`](Self::deliver_small) reading the time from
    /// `clock` (a test moves it half-way through a fan-out).
    fn deliver_clocked(
        &self,
        topic: &str,
        frame: &Frame,
        accepted: Instant,
        max: usize,
        clock: impl FnMut() -> Instant,
    ) -> Option<Delivery> {
        let Some(members) = self.topics.get(topic) else {
            return Some(Delivery::default());
        };
        if members.len() > max {
            return None;
        }
        let mut delivery = Delivery::default();
        let mut fan_out = FanOut::new(self, frame, accepted, clock);
        for outbox in members.values() {
            fan_out.push(outbox, &mut delivery);
        }
        Some(delivery)
    }

    /// Queues `frame` for every socket on this node (a notice for all).
    pub fn deliver_all(&self, frame: &Frame) -> Delivery {
        self.deliver_all_accepted(frame, Instant::now())
    }

    /// [`deliver_all`](Self::deliver_all) for a frame accepted at `accepted`.
    pub fn deliver_all_accepted(&self, frame: &Frame, accepted: Instant) -> Delivery {
        let mut delivery = Delivery::default();
        let mut fan_out = FanOut::new(self, frame, accepted, Instant::now);
        self.for_each_outbox(|outbox| fan_out.push(outbox, &mut delivery));
        delivery
    }

    /// Wakes every socket's session (shutdown: each then finds the node's
    /// drain deadline set, see `ws::session`).
    pub fn wake_all(&self) {
        self.for_each_outbox(Outbox::nudge);
    }

    /// Every socket's outbox on this node, topic by topic.
    fn for_each_outbox(&self, mut each: impl FnMut(&Outbox)) {
        for members in self.topics.iter() {
            members.values().for_each(|outbox| each(outbox));
        }
    }

    /// `n` publishes to `topic` that are not delivered (they went stale
    /// before the fan-out took them) are counted as missed by every socket
    /// on it, in its next lag notice, with the (older, so stale) frames
    /// still queued for it; how many frames that is in all.
    pub fn miss(&self, topic: &str, n: u64) -> u64 {
        self.topics
            .get(topic)
            .map_or(0, |members| miss_each(&members, n))
    }

    /// [`miss`](Self::miss) for notices to every socket on this node.
    pub fn miss_all(&self, n: u64) -> u64 {
        self.topics
            .iter()
            .map(|members| miss_each(&members, n))
            .sum()
    }

    /// Whether a publish accepted at `accepted` is still delivered at
    /// `now` (younger than `limits.max_frame_age`).
    pub fn is_fresh(&self, accepted: Instant, now: Instant) -> bool {
        now < self.stale_at(accepted)
    }

    /// When a frame accepted at `accepted` goes stale.
    fn stale_at(&self, accepted: Instant) -> Instant {
        accepted.checked_add(self.fresh_for).unwrap_or(accepted)
    }

    pub fn counts(&self) -> HubCounts {
        HubCounts {
            active_topics: self.topics.len(),
            connected_sockets: self.sockets.load(Ordering::Relaxed),
            connected_clients: self.users.len() + self.anonymous.load(Ordering::Relaxed),
        }
    }

    /// Topics with at least one socket on this node, sorted.
    pub fn active_topics(&self) -> Vec<String> {
        let mut list: Vec<String> = self.topics.iter().map(|e| e.key().to_string()).collect();
        list.sort();
        list
    }

    fn unsubscribe(&self, topic: &str, id: u64, user_id: i64) {
        // Takes the member out, and the topic too once it is empty.
        self.topics.remove_if_mut(topic, |_, members| {
            members.remove(&id);
            members.is_empty()
        });
        self.sockets.fetch_sub(1, Ordering::Relaxed);
        if user_id > 0 {
            self.users.remove_if_mut(&user_id, |_, count| {
                *count -= 1;
                *count == 0
            });
        } else {
            self.anonymous.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// `n` missed publishes for each of `members`; the frames that makes.
fn miss_each(members: &BTreeMap<u64, Arc<Outbox>>, n: u64) -> u64 {
    members.values().map(|outbox| n + outbox.miss(n)).sum()
}

/// One publish on its way to the sockets of a topic (or all of them).
///
/// Its age is checked again every [`CLOCK_EVERY`] sockets: a fan-out to
/// thousands of sockets takes long enough under load for a publish that was
/// fresh when the dispatcher took it to pass `max_frame_age` half-way. From
/// then on the sockets it has not reached count it as missed (with what is
/// still queued for them, older still), so no socket is handed a frame older
/// than the bound, the last one of a big topic included.
struct FanOut<'a, C> {
    frame: &'a Frame,
    wire: bytes::Bytes,
    stale_at: Instant,
    capacity: usize,
    served: usize,
    stale: bool,
    clock: C,
}

impl<'a, C: FnMut() -> Instant> FanOut<'a, C> {
    fn new(hub: &Hub, frame: &'a Frame, accepted: Instant, clock: C) -> Self {
        FanOut {
            frame,
            wire: crate::frames::wire(frame),
            stale_at: hub.stale_at(accepted),
            capacity: hub.queue_capacity,
            served: 0,
            stale: false,
            clock,
        }
    }

    fn push(&mut self, outbox: &Outbox, delivery: &mut Delivery) {
        if self.served % CLOCK_EVERY == 0 && !self.stale {
            self.stale = (self.clock)() >= self.stale_at;
        }
        self.served += 1;
        if self.stale {
            delivery.stale += 1 + outbox.miss(1);
        } else {
            delivery.count(outbox.push(self.frame, &self.wire, self.stale_at, self.capacity));
        }
    }
}

/// A socket's place in the hub. Unsubscribes on drop.
pub struct Subscription {
    hub: Arc<Hub>,
    topic: Arc<str>,
    id: u64,
    user_id: i64,
    outbox: Arc<Outbox>,
}

impl Subscription {
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The topic's name as the hub keeps it, shared by its sockets.
    pub fn shared_topic(&self) -> Arc<str> {
        Arc::clone(&self.topic)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.topic, self.id, self.user_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Frame {
        Frame::from(text.to_string())
    }

    #[test]
    fn counts_follow_subscriptions() {
        let hub = Hub::new(8);
        let a1 = hub.subscribe("a", 7);
        let a2 = hub.subscribe("a", 7);
        let b = hub.subscribe("b", 7);
        let anon1 = hub.subscribe("p", 0);
        let anon2 = hub.subscribe("p", 0);
        assert_eq!(
            hub.counts(),
            HubCounts {
                active_topics: 3,
                connected_sockets: 5,
                connected_clients: 3
            }
        );
        drop(a1);
        drop(anon1);
        assert_eq!(
            hub.counts(),
            HubCounts {
                active_topics: 3,
                connected_sockets: 3,
                connected_clients: 2
            }
        );
        drop((a2, b, anon2));
        assert_eq!(hub.counts(), HubCounts::default());
        assert!(hub.active_topics().is_empty());
    }

    #[test]
    fn delivers_the_same_buffer_to_every_subscriber() {
        let hub = Hub::new(8);
        let s1 = hub.subscribe("t", 1);
        let s2 = hub.subscribe("t", 2);
        let other = hub.subscribe("u", 3);
        let f = frame("{\"type\":\"push\",\"payload\":1}");
        assert_eq!(hub.deliver("t", &f).recipients, 2);
        for s in [&s1, &s2] {
            match s.outbox().pop(Staleness::Keep) {
                Some(Outgoing::Frame(got)) => {
                    assert_eq!(got.as_ptr(), f.as_ptr())
                }
                other => panic!("expected the frame, got {other:?}"),
            }
        }
        assert!(other.outbox().is_empty());
        assert_eq!(hub.deliver("nobody", &f), Delivery::default());
    }

    #[test]
    fn full_outbox_drops_the_oldest_and_reports_the_gap() {
        let hub = Hub::new(3);
        let s = hub.subscribe("t", 1);
        let mut dropped = 0;
        for i in 0..5 {
            dropped += hub.deliver("t", &frame(&i.to_string())).dropped;
        }
        assert_eq!(dropped, 2);
        assert!(s.outbox().is_lagging());
        assert_eq!(
            s.outbox().pop(Staleness::Keep),
            Some(Outgoing::Lagged { missed: 2 })
        );
        assert!(!s.outbox().is_lagging(), "reported once");
        for want in ["2", "3", "4"] {
            assert_eq!(
                s.outbox().pop(Staleness::Keep),
                Some(Outgoing::Frame(frame(want)))
            );
        }
        assert_eq!(s.outbox().pop(Staleness::Keep), None);
    }

    #[test]
    fn a_batch_is_the_lag_notice_then_the_oldest_frames_kept() {
        let hub = Hub::new(3);
        let s = hub.subscribe("t", 1);
        for i in 0..5 {
            hub.deliver("t", &frame(&i.to_string()));
        }
        let mut got = Vec::new();
        assert_eq!(
            s.outbox()
                .pop_batch(3, Staleness::Keep, |item| got.push(item))
                .items,
            3
        );
        assert_eq!(
            got,
            [
                Outgoing::Lagged { missed: 2 },
                Outgoing::Frame(frame("2")),
                Outgoing::Frame(frame("3"))
            ]
        );
        got.clear();
        assert_eq!(
            s.outbox()
                .pop_batch(3, Staleness::Keep, |item| got.push(item))
                .items,
            1
        );
        assert_eq!(got, [Outgoing::Frame(frame("4"))]);
        assert_eq!(
            s.outbox()
                .pop_batch(3, Staleness::Keep, |_| unreachable!())
                .items,
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn frames_that_waited_too_long_are_dropped_and_reported_then_fresh_ones_follow() {
        let hub = Hub::with_limits(100, Duration::from_secs(1));
        let s = hub.subscribe("t", 1);
        for i in 0..3 {
            hub.deliver("t", &frame(&i.to_string()));
        }
        tokio::time::advance(Duration::from_millis(600)).await;
        for i in 3..5 {
            hub.deliver("t", &frame(&i.to_string()));
        }
        // 0..3 waited 1.1 s, 3..5 only 0.5 s.
        tokio::time::advance(Duration::from_millis(500)).await;
        let mut got = Vec::new();
        let taken = s
            .outbox()
            .pop_batch(10, Staleness::DropAt(Instant::now()), |item| got.push(item));
        assert_eq!(taken, Taken { items: 3, stale: 3 });
        assert_eq!(
            got,
            [
                Outgoing::Lagged { missed: 3 },
                Outgoing::Frame(frame("3")),
                Outgoing::Frame(frame("4"))
            ]
        );
        assert!(s.outbox().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_is_not_handed_out_within_the_delivery_allowance_of_the_bound() {
        assert_eq!(
            delivery_allowance(Duration::from_secs(1)),
            Duration::from_millis(20)
        );
        assert_eq!(
            delivery_allowance(Duration::from_millis(100)),
            Duration::from_millis(2)
        );
        assert_eq!(
            delivery_allowance(Duration::from_secs(60)),
            Duration::from_millis(20),
            "at most 20 ms"
        );
        let hub = Hub::with_limits(100, Duration::from_secs(1));
        let s = hub.subscribe("t", 1);
        hub.deliver("t", &frame("0"));
        tokio::time::advance(Duration::from_millis(15)).await;
        hub.deliver("t", &frame("1"));
        // 0 is 985 ms old: less than the allowance from the bound. 1 is 970 ms.
        tokio::time::advance(Duration::from_millis(970)).await;
        let mut got = Vec::new();
        s.outbox()
            .pop_batch(10, Staleness::DropAt(Instant::now()), |item| got.push(item));
        assert_eq!(
            got,
            [Outgoing::Lagged { missed: 1 }, Outgoing::Frame(frame("1"))]
        );
        let accepted = Instant::now();
        assert!(hub.is_fresh(accepted, accepted + Duration::from_millis(979)));
        assert!(!hub.is_fresh(accepted, accepted + Duration::from_millis(980)));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_and_overflowed_frames_make_one_lag_notice() {
        let hub = Hub::with_limits(3, Duration::from_secs(1));
        let s = hub.subscribe("t", 1);
        // 0, 1 and 2 are pushed out of the full queue (by 3, 4 and 5);
        // 3 and 4 go stale; 5 is fresh.
        for i in 0..5 {
            hub.deliver("t", &frame(&i.to_string()));
        }
        tokio::time::advance(Duration::from_millis(1_500)).await;
        hub.deliver("t", &frame("5"));
        assert_eq!(
            s.outbox().pop(Staleness::DropAt(Instant::now())),
            Some(Outgoing::Lagged { missed: 5 }),
            "3 pushed out of the full queue and 2 stale, in one notice"
        );
        assert_eq!(
            s.outbox().pop(Staleness::DropAt(Instant::now())),
            Some(Outgoing::Frame(frame("5")))
        );
        assert_eq!(s.outbox().pop(Staleness::DropAt(Instant::now())), None);
    }

    #[test]
    fn a_publish_that_goes_stale_half_way_through_a_fan_out_is_missed_by_the_rest() {
        let hub = Hub::with_limits(8, Duration::from_secs(1));
        let sockets: Vec<Subscription> = (0..200).map(|_| hub.subscribe("t", 1)).collect();
        let accepted = Instant::now();
        hub.deliver("t", &frame("0"));
        // The clock is read before sockets 0, 64, 128 and 192: fresh twice,
        // then past the bound.
        let mut reads = 0;
        let clock = || {
            reads += 1;
            if reads <= 2 {
                accepted
            } else {
                accepted + Duration::from_secs(2)
            }
        };
        let delivery = hub
            .deliver_clocked("t", &frame("1"), accepted, usize::MAX, clock)
            .expect("no limit");
        assert_eq!(delivery.recipients, 2 * CLOCK_EVERY);
        let late = 200 - 2 * CLOCK_EVERY;
        assert_eq!(
            delivery.stale,
            2 * late as u64,
            "the publish and the older queued frame, per socket not reached"
        );
        let mut got = (0, 0);
        for s in &sockets {
            let mut items = Vec::new();
            while let Some(item) = s.outbox().pop(Staleness::Keep) {
                items.push(item);
            }
            if items == [Outgoing::Frame(frame("0")), Outgoing::Frame(frame("1"))] {
                got.0 += 1;
            } else {
                assert_eq!(items, [Outgoing::Lagged { missed: 2 }]);
                got.1 += 1;
            }
        }
        assert_eq!(got, (2 * CLOCK_EVERY, late));
    }

    #[test]
    fn an_outbox_stays_small() {
        // One per socket, idle or not: with its Arc's counts, 96 bytes (a
        // jemalloc size class); a regression guard.
        let size = std::mem::size_of::<Outbox>();
        assert!(size <= 80, "the outbox grew to {size} bytes");
    }

    #[test]
    fn a_missed_publish_takes_the_older_queued_frames_with_it() {
        let hub = Hub::new(100);
        let s = hub.subscribe("t", 1);
        hub.deliver("t", &frame("0"));
        hub.deliver("t", &frame("1"));
        // 2 and 3 went stale before the fan-out took them: 0 and 1, older,
        // must not come after the notice.
        assert_eq!(hub.miss("t", 2), 4, "two publishes and two queued frames");
        hub.deliver("t", &frame("4"));
        assert_eq!(
            s.outbox().pop(Staleness::Keep),
            Some(Outgoing::Lagged { missed: 4 })
        );
        assert_eq!(
            s.outbox().pop(Staleness::Keep),
            Some(Outgoing::Frame(frame("4")))
        );
        assert_eq!(s.outbox().pop(Staleness::Keep), None);
        assert_eq!(hub.miss("nobody", 3), 0);
    }

    #[tokio::test]
    async fn wake_all_wakes_every_session_with_nothing_queued() {
        let hub = Hub::new(8);
        let sockets: Vec<Subscription> = ["a", "a", "b"]
            .iter()
            .map(|topic| hub.subscribe(topic, 1))
            .collect();
        let waiting =
            |s: &Subscription| futures_util::FutureExt::now_or_never(s.outbox().ready()).is_none();
        assert!(sockets.iter().all(waiting), "nothing to wake for yet");
        hub.wake_all();
        for s in &sockets {
            assert!(!waiting(s), "woken");
            assert!(s.outbox().is_empty(), "and nothing queued");
        }
        assert!(sockets.iter().all(waiting), "once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_flush_keeps_stale_frames() {
        let hub = Hub::with_limits(8, Duration::from_secs(1));
        let s = hub.subscribe("t", 1);
        hub.deliver("t", &frame("0"));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            s.outbox().pop(Staleness::Keep),
            Some(Outgoing::Frame(frame("0")))
        );
    }

    /// A connected pair: the server side shared as the session shares it.
    async fn socket_pair() -> (Arc<tokio::net::TcpStream>, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (Arc::new(server), client)
    }

    #[tokio::test]
    async fn once_released_an_idle_socket_is_written_to_directly_in_order() {
        use tokio::io::AsyncReadExt;
        let hub = Hub::new(8);
        let s = hub.subscribe("t", 1);
        let (server, mut client) = socket_pair().await;
        s.outbox().attach(server);
        // Until the session releases it (after auth_ok), pushes are queued.
        assert_eq!(hub.deliver("t", &frame("0")).written, 0);
        assert_eq!(
            s.outbox().pop(Staleness::Keep),
            Some(Outgoing::Frame(frame("0")))
        );
        assert_eq!(s.outbox().pop(Staleness::Keep), None, "the session is done");
        // The empty pop released it: now the hub writes through.
        for text in ["1", "22"] {
            let delivery = hub.deliver("t", &frame(text));
            assert_eq!((delivery.recipients, delivery.written), (1, 1));
        }
        assert!(s.outbox().is_empty(), "nothing queued, nothing to wake");
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"\x81\x011\x81\x0222", "header + payload, in order");
        // A session write of its own: the hub queues meanwhile.
        assert_eq!(s.outbox().claim(), None);
        assert_eq!(hub.deliver("t", &frame("3")).written, 0);
        s.outbox().release();
        assert_eq!(
            hub.deliver("t", &frame("4")).written,
            0,
            "behind a queued frame"
        );
        assert_eq!(
            s.outbox().pop(Staleness::Keep),
            Some(Outgoing::Frame(frame("3")))
        );
    }

    #[tokio::test]
    async fn a_full_socket_makes_the_hub_queue_and_a_cut_frame_goes_first() {
        let hub = Hub::new(1_000);
        let s = hub.subscribe("t", 1);
        let (server, _client) = socket_pair().await;
        s.outbox().attach(Arc::clone(&server));
        assert_eq!(s.outbox().pop(Staleness::Keep), None);
        // The client never reads: the kernel fills, and then a frame is cut
        // or refused; either way nothing after it is written through.
        let big = Frame::from("x".repeat(64 * 1024));
        let mut written = 0;
        while hub.deliver("t", &big).written == 1 {
            written += 1;
            assert!(written < 10_000, "the kernel's queue is bounded");
        }
        assert_eq!(hub.deliver("t", &frame("after")).written, 0);
        let mut items = Vec::new();
        s.outbox()
            .pop_batch(10, Staleness::Keep, |item| items.push(item));
        let frames: Vec<_> = items
            .iter()
            .filter(|item| !matches!(item, Outgoing::Rest(_)))
            .collect();
        match items.first() {
            // Cut: the rest first, then the big frame was not queued again.
            Some(Outgoing::Rest(rest)) => {
                assert!(!rest.is_empty() && rest.len() < big.len() + 4);
                assert_eq!(frames, [&Outgoing::Frame(frame("after"))]);
            }
            // Refused whole: it was queued, then the next one.
            _ => assert_eq!(
                frames,
                [
                    &Outgoing::Frame(big.clone()),
                    &Outgoing::Frame(frame("after"))
                ]
            ),
        }
    }

    #[test]
    fn the_wire_form_is_header_then_payload() {
        let payload = Frame::from("abcdef".to_string());
        assert_eq!(&crate::frames::wire(&payload)[..], b"\x81\x06abcdef");
    }
}
