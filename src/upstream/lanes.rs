//! Pooled upstream clients ("lanes"), each with at most one HTTP/2 connection, and the requests
//! in flight on each.
//!
//! hyper-util's client keeps one HTTP/2 connection per host and never opens a second: once the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS` is reached (100 to 256 on common servers), every
//! further request waits on that connection for a stream to end. Model answers stream for
//! minutes, so a busy proxy's requests would wait minutes, or until the header timeout, for a
//! slot. Here a request takes a slot on a lane that has fewer requests in flight than its
//! connection allows: the limit its server announced ([`super::settings`]), or
//! `max_streams` (`upstream_h2_max_streams`) if that is smaller. When every lane is full another
//! lane (another connection) is opened. A slot is held until the answer's body has been read to
//! the end or dropped.
//!
//! Until a lane's first connection is up and its server's first frame read, the lane carries one
//! request (the one that opens the connection) and the requests that find every other lane full
//! wait for that frame (at most the connect timeout), instead of queueing on a connection that
//! may take fewer streams than they are.
//!
//! Lanes are only ever added (a lane's idle connection closes after the pool's idle timeout and
//! costs nothing more); taking a slot is a few atomic operations, without a lock, unless a lane
//! has to be added. Over HTTP/1.1 (a TLS upstream that does not offer HTTP/2) each lane's pool
//! opens the connections it needs, and the lanes only split them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use tokio::sync::Notify;

use super::ReqBody;
use super::settings::LaneConnector;
use crate::http::UpstreamConnector;

/// Lanes an h2c upstream starts with: one connection is one task on one thread demultiplexing
/// every stream's frames; a few spread that work (and a connection's loss) over the runtime's
/// threads.
const H2C_START: usize = 8;

/// At most this many lanes (at 100 streams each, 102 400 requests in flight); past it a request
/// waits on the next lane in turn.
const MAX_LANES: usize = 1024;

pub(super) type LaneClient = Client<LaneConnector, ReqBody>;

struct Lane {
    client: LaneClient,
    state: Arc<LaneState>,
}

/// [`LaneState::limit`] before the lane's first connection has said anything.
const PENDING: usize = usize::MAX;
/// [`LaneState::limit`] of a server that announced no limit (or of an HTTP/1.1 connection).
const UNLIMITED: usize = usize::MAX - 1;

/// A lane's requests in flight, and the limit its server announced.
pub(super) struct LaneState {
    in_flight: AtomicUsize,
    /// [`PENDING`], [`UNLIMITED`], or the server's `SETTINGS_MAX_CONCURRENT_STREAMS`.
    limit: AtomicUsize,
    /// Wakes the requests waiting for the limit (or for the lane's one pending slot).
    known: Notify,
}

impl Default for LaneState {
    fn default() -> LaneState {
        LaneState {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(PENDING),
            known: Notify::new(),
        }
    }
}

impl LaneState {
    /// The server announced `n` streams per connection.
    pub(super) fn learn(&self, n: u32) {
        let n = usize::try_from(n).unwrap_or(UNLIMITED).min(UNLIMITED);
        self.limit.store(n, Ordering::Release);
        self.known.notify_waiters();
    }

    /// The lane's connection will not say (HTTP/1.1, no limit announced, failed, or too slow):
    /// the configured limit applies, unless a server's limit is known already.
    pub(super) fn settle(&self) {
        let _ =
            self.limit
                .compare_exchange(PENDING, UNLIMITED, Ordering::AcqRel, Ordering::Acquire);
        self.known.notify_waiters();
    }

    /// `None` while pending; `Some(None)` without a limit of the server's.
    #[cfg(test)]
    pub(super) fn server_limit(&self) -> Option<Option<u32>> {
        match self.limit.load(Ordering::Acquire) {
            PENDING => None,
            UNLIMITED => Some(None),
            n => Some(u32::try_from(n).ok()),
        }
    }

    /// Waits, at most `wait`, until the lane's limit is known or its pending slot is free.
    async fn known(&self, wait: Duration) {
        let notified = self.known.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.limit.load(Ordering::Acquire) != PENDING
            || self.in_flight.load(Ordering::Acquire) == 0
        {
            return;
        }
        if tokio::time::timeout(wait, notified).await.is_err() {
            // Connected, and no first frame all this time: go by the configured limit.
            self.settle();
        }
    }
}

pub(super) struct Lanes {
    /// Boxed: a slot not taken yet costs a pointer, not a client.
    lanes: Box<[OnceLock<Box<Lane>>]>,
    /// Lanes `0..count` are set.
    count: AtomicUsize,
    /// Where the next request starts looking, so that requests spread over the lanes.
    next: AtomicUsize,
    /// Held while a lane is added.
    grow: Mutex<()>,
    connector: UpstreamConnector,
    h2c: bool,
    max_streams: usize,
    /// The longest a request waits for a new lane's server to announce its limit.
    wait: Duration,
}

/// What [`Lanes::load`] reports (`/metrics`).
pub struct Load {
    pub lanes: usize,
    pub in_flight: usize,
    /// The most requests one connection carries: the configured limit, or the server's if
    /// smaller (the smallest over the lanes whose server has spoken).
    pub per_connection: Option<usize>,
}

/// A request's place on a lane; given back when dropped.
pub(super) struct Slot(Arc<LaneState>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
        if self.0.limit.load(Ordering::Acquire) == PENDING {
            // The lane's one slot before its limit is known: the next waiting request's turn.
            self.0.known.notify_waiters();
        }
    }
}

impl Lanes {
    /// `wait`: how long requests wait for a new lane's server to announce its stream limit
    /// (the connect timeout).
    pub(super) fn new(
        connector: UpstreamConnector,
        h2c: bool,
        max_streams: usize,
        wait: Duration,
    ) -> Lanes {
        let lanes = Lanes {
            lanes: (0..MAX_LANES).map(|_| OnceLock::new()).collect(),
            count: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            grow: Mutex::new(()),
            connector,
            h2c,
            max_streams: max_streams.max(1),
            wait,
        };
        for _ in 0..if h2c { H2C_START } else { 1 } {
            lanes.add(lanes.count.load(Ordering::Acquire));
        }
        lanes
    }

    /// The number of lanes (each at most one HTTP/2 connection).
    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// How many lanes there are, the requests in flight on them, and the most requests one
    /// carries (the smallest limit of the lanes whose server has spoken; `None` before any has).
    pub(super) fn load(&self) -> Load {
        let n = self.len();
        let mut load = Load {
            lanes: n,
            in_flight: 0,
            per_connection: None,
        };
        for i in 0..n {
            let state = &self.lane(i).state;
            load.in_flight += state.in_flight.load(Ordering::Relaxed);
            let limit = state.limit.load(Ordering::Relaxed);
            if limit != PENDING {
                let cap = limit.min(self.max_streams);
                load.per_connection = Some(load.per_connection.map_or(cap, |c: usize| c.min(cap)));
            }
        }
        load
    }

    /// A client with a free slot, and the slot.
    pub(super) async fn take(&self) -> (&LaneClient, Slot) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        loop {
            let n = self.len();
            let mut pending = None;
            for k in 0..n {
                let lane = self.lane((start + k) % n);
                let cap = match lane.state.limit.load(Ordering::Acquire) {
                    PENDING => {
                        pending.get_or_insert(lane);
                        1
                    }
                    limit => limit.min(self.max_streams),
                };
                if lane.state.in_flight.fetch_add(1, Ordering::AcqRel) < cap {
                    return (&lane.client, Slot(lane.state.clone()));
                }
                lane.state.in_flight.fetch_sub(1, Ordering::Release);
            }
            if let Some(lane) = pending {
                // A lane is connecting: its server's limit decides whether it takes this request.
                lane.state.known(self.wait).await;
                continue;
            }
            if n >= MAX_LANES {
                // Every lane is full: wait on one in turn (HTTP/2 queues the request).
                let lane = self.lane(start % n);
                lane.state.in_flight.fetch_add(1, Ordering::AcqRel);
                return (&lane.client, Slot(lane.state.clone()));
            }
            self.add(n);
        }
    }

    fn lane(&self, i: usize) -> &Lane {
        // `i < count`, and lanes below `count` are set before `count` moves past them.
        self.lanes[i].get().expect("a lane below the count is set")
    }

    /// Adds a lane if there are still `seen` (another request may have added one meanwhile).
    fn add(&self, seen: usize) {
        let _held = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.count.load(Ordering::Acquire);
        if n != seen || n >= MAX_LANES {
            return;
        }
        let state = Arc::new(LaneState::default());
        let connector = LaneConnector {
            inner: self.connector.clone(),
            lane: state.clone(),
            h2c: self.h2c,
        };
        let _ = self.lanes[n].set(Box::new(Lane {
            client: crate::http::upstream_client(connector, self.h2c),
            state,
        }));
        self.count.store(n + 1, Ordering::Release);
        if n > 0 {
            tracing::debug!(
                lanes = n + 1,
                max_streams = self.max_streams,
                "every upstream connection carries its most requests: opening another"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes_waiting(h2c: bool, max: usize, wait: Duration) -> Lanes {
        crate::http::install_crypto_provider();
        let connector =
            crate::http::upstream_connector(Duration::from_secs(1), crate::http::tls_config());
        Lanes::new(connector, h2c, max, wait)
    }

    fn lanes(h2c: bool, max: usize) -> Lanes {
        lanes_waiting(h2c, max, Duration::from_secs(5))
    }

    fn in_flight(l: &Lanes) -> Vec<usize> {
        (0..l.len())
            .map(|i| l.lane(i).state.in_flight.load(Ordering::Acquire))
            .collect()
    }

    /// `f` is still waiting 50 ms on.
    async fn assert_waits(f: &mut (impl Future + Unpin)) {
        let waited = tokio::time::timeout(Duration::from_millis(50), f).await;
        assert!(waited.is_err(), "did not wait");
    }

    /// Takes a slot as if every lane's server had spoken without a limit of its own.
    async fn take_settled(l: &Lanes) -> (&LaneClient, Slot) {
        for i in 0..l.len() {
            l.lane(i).state.settle();
        }
        l.take().await
    }

    #[tokio::test]
    async fn a_lane_is_added_when_every_lane_is_full_and_slots_come_back_on_drop() {
        let l = lanes(false, 2);
        assert_eq!(l.len(), 1);
        let a = take_settled(&l).await;
        let b = take_settled(&l).await;
        assert_eq!(in_flight(&l), [2]);
        let c = take_settled(&l).await;
        assert_eq!(in_flight(&l), [2, 1]);
        drop((a, b));
        assert_eq!(in_flight(&l), [0, 1]);
        // A free slot on an existing lane is taken before any lane is added.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(take_settled(&l).await);
        }
        assert_eq!(l.len(), 2);
        assert_eq!(in_flight(&l), [2, 2]);
        drop((held, c));
        assert_eq!(in_flight(&l), [0, 0]);
    }

    #[tokio::test]
    async fn h2c_starts_with_lanes_to_spread_requests_over() {
        let l = lanes(true, 100);
        assert_eq!(l.len(), H2C_START);
        let mut held = Vec::new();
        for _ in 0..H2C_START {
            held.push(l.take().await);
        }
        assert_eq!(in_flight(&l), [1; H2C_START]);
    }

    #[tokio::test]
    async fn past_the_last_lane_requests_wait_on_a_lane_in_turn() {
        let l = lanes(false, 1);
        let mut held = Vec::new();
        for _ in 0..MAX_LANES + 3 {
            held.push(take_settled(&l).await);
        }
        assert_eq!(l.len(), MAX_LANES);
        assert_eq!(in_flight(&l).iter().sum::<usize>(), MAX_LANES + 3);
        assert!(in_flight(&l).iter().all(|&n| n == 1 || n == 2));
        drop(held);
        assert!(in_flight(&l).iter().all(|&n| n == 0));
    }

    #[tokio::test]
    async fn requests_wait_for_a_new_lanes_limit_and_follow_it() {
        let l = lanes(false, 100);
        let a = l.take().await;
        assert_eq!(l.load().per_connection, None);
        let b = l.take();
        tokio::pin!(b);
        // The lane is connecting: the second request waits for what its server allows.
        assert_waits(&mut b).await;
        assert_eq!(in_flight(&l), [1]);
        l.lane(0).state.learn(2);
        let b = b.await;
        assert_eq!(in_flight(&l), [2]);
        assert_eq!(l.load().per_connection, Some(2));
        // The server's 2, not the configured 100: the third request opens another lane.
        let c = l.take().await;
        assert_eq!(in_flight(&l), [2, 1]);
        drop((a, b, c));
    }

    #[tokio::test]
    async fn a_lane_whose_server_says_nothing_goes_by_the_configured_limit() {
        let l = lanes_waiting(false, 3, Duration::from_millis(30));
        let _a = l.take().await;
        // Nothing from the server within the wait: the configured 3 apply.
        let _b = l.take().await;
        let _c = l.take().await;
        assert_eq!(in_flight(&l), [3]);
        assert_eq!(l.load().per_connection, Some(3));
        // A server's limit read later (the lane's next connection) still counts.
        l.lane(0).state.learn(1);
        assert_eq!(l.load().per_connection, Some(1));
    }

    #[tokio::test]
    async fn a_freed_pending_slot_goes_to_a_waiting_request() {
        let l = lanes(false, 100);
        let a = l.take().await;
        let b = l.take();
        tokio::pin!(b);
        assert_waits(&mut b).await;
        // The first request ended (say its connection failed before its server spoke): the
        // waiting one takes the lane's slot and opens the connection itself.
        drop(a);
        let _b = tokio::time::timeout(Duration::from_secs(1), b)
            .await
            .expect("the freed slot was handed on");
        assert_eq!(in_flight(&l), [1]);
        assert_eq!(l.len(), 1);
    }

    #[tokio::test]
    async fn a_limit_of_zero_sends_requests_to_another_lane() {
        let l = lanes(false, 100);
        let _a = l.take().await;
        l.lane(0).state.learn(0);
        let _b = l.take().await;
        assert_eq!(in_flight(&l), [1, 1]);
    }
}
