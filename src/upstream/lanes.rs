//! Pooled upstream clients ("lanes"), each with at most one HTTP/2 connection, and the requests
//! in flight on each.
//!
//! An HTTP/2 client keeps one connection per host (hyper-util's never opens a second): once the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS` is reached (100 to 256 on common servers), every
//! further request waits on that connection for a stream to end. Model answers stream for
//! minutes, so a busy proxy's requests would wait minutes, or until the header timeout, for a
//! slot. Here a request takes a slot on a lane that has fewer requests in flight than its
//! connection allows: the limit its server announced ([`super::settings`]), or
//! `max_streams` (`upstream_h2_max_streams`) if that is smaller. When every lane is full another
//! lane (another connection) is opened. A slot is held until the answer's body has been read to
//! the end or dropped.
//!
//! Until a server has spoken, a lane not connected yet carries one request (the one that opens
//! its connection), and the requests that find every other lane full wait for the first word
//! from any lane's server (at most the connect timeout in all), instead of queueing on a
//! connection that may take fewer streams than they are. Once a server has spoken, a lane not
//! connected yet goes by the smallest limit heard (the same upstream), so a burst opens its
//! lanes at once; each lane's own server then has the last word. Over TLS (an HTTP/2 server),
//! the requests a new lane takes beyond the first wait, their places held, for the connection
//! the first opens: hyper-util cannot tell before the handshake that an `https://` connection
//! will be HTTP/2 and shared, so each would open one of its own, all but one closed again.
//!
//! Lanes are only ever added (a lane's idle connection closes after the pool's idle timeout and
//! costs nothing more); taking a slot is a few atomic operations, without a lock, unless a lane
//! has to be added. Over HTTP/1.1 (a TLS upstream that does not offer HTTP/2) each lane's pool
//! opens the connections it needs, and the lanes only split them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ReqBody;
use super::settings::LaneConnector;
use crate::http::UpstreamConnector;

/// Lanes an h2c upstream starts with, on each serving thread (each has lanes of its own): one
/// connection is one task demultiplexing every stream's frames. Fewer, each carrying more streams,
/// measured worse at 10 000 streams (`scripts/bench/changes.md`, fifteenth round: 4 a thread
/// against 8 on two threads, added TTFT p99 404 / 409 ms against 325 / 317 ms).
const H2C_START: usize = 8;

/// At most this many lanes on each serving thread (at 100 streams each, 102 400 requests in
/// flight); past it a request waits on a lane in turn.
const MAX_LANES: usize = 1024;

pub(super) type LaneClient = Client<LaneConnector, ReqBody>;

/// A lane's client: hyper-util's pool (TLS: HTTP/2 by ALPN, or HTTP/1.1), or, for h2c, one
/// connection driven on h2 directly ([`super::h2c`]).
#[allow(clippy::large_enum_variant)] // one per lane, boxed with it: nothing is saved by a box
pub(super) enum LaneConn {
    Pooled(LaneClient),
    H2c(super::h2c::H2cLane),
}

struct Lane {
    client: LaneConn,
    state: Arc<LaneState>,
}

/// [`LaneState::limit`] before the lane's first connection has said anything.
const PENDING: usize = usize::MAX;
/// [`LaneState::limit`] of a server that announced no limit.
const UNLIMITED: usize = usize::MAX - 1;
/// [`LaneState::limit`] of a lane whose connections are HTTP/1.1 (one request each): the
/// configured limit splits the requests over the lanes.
const HTTP1: usize = usize::MAX - 2;

/// A lane's requests in flight, and the limit its server announced.
pub(super) struct LaneState {
    in_flight: AtomicUsize,
    /// [`PENDING`], [`UNLIMITED`], [`HTTP1`], or the server's `SETTINGS_MAX_CONCURRENT_STREAMS`.
    limit: AtomicUsize,
    /// The request opening this TLS lane's connection while the others on the lane wait for
    /// it (see [`Lanes::take`]): its [`Slot::opener`] number; 0 when none is.
    opening: AtomicU64,
    shared: Arc<Shared>,
}

/// What the lanes share.
struct Shared {
    /// The smallest limit a lane's server announced (not 0): what a lane not connected yet
    /// goes by. [`PENDING`] until one has spoken.
    hint: AtomicUsize,
    /// Wakes the requests waiting for a lane's limit (or for a lane's one pending slot).
    changed: Notify,
}

impl Default for LaneState {
    fn default() -> LaneState {
        LaneState::new(Arc::new(Shared {
            hint: AtomicUsize::new(PENDING),
            changed: Notify::new(),
        }))
    }
}

impl LaneState {
    fn new(shared: Arc<Shared>) -> LaneState {
        LaneState {
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(PENDING),
            opening: AtomicU64::new(0),
            shared,
        }
    }

    /// The lane's requests in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The server announced `n` streams per connection.
    pub(super) fn learn(&self, n: u32) {
        let n = usize::try_from(n).unwrap_or(UNLIMITED).min(UNLIMITED);
        self.set(n);
    }

    /// The lane's server announced no limit: the configured one applies.
    pub(super) fn unlimited(&self) {
        self.set(UNLIMITED);
    }

    /// The lane's connection is HTTP/1.1 (one request each): the configured limit applies.
    pub(super) fn http1(&self) {
        self.set(HTTP1);
    }

    fn set(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
        // The server spoke: the opening is over, whether or not its request is still going.
        self.opening.store(0, Ordering::Release);
        if limit > 0 {
            // The smallest word wins: a lane that takes too few requests only opens another
            // lane, one that takes too many queues them behind streams that may not end.
            self.shared.hint.fetch_min(limit, Ordering::AcqRel);
        }
        self.wake();
    }

    /// The lane's connection failed, or ended, before its server spoke: a waiting request may
    /// take the lane's slot and connect itself.
    pub(super) fn wake(&self) {
        self.shared.changed.notify_waiters();
    }

    /// A connection of the lane closed: one whose server allowed no streams at all (0) leaves
    /// the lane to the next connection's word, instead of shut for good.
    pub(super) fn closed(&self) {
        if self
            .limit
            .compare_exchange(0, PENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake();
        }
    }

    /// A slot, if fewer than `cap` requests are in flight (a full lane is only read).
    fn try_take(self: &Arc<Self>, cap: usize) -> Option<Slot> {
        let mut n = self.in_flight.load(Ordering::Acquire);
        while n < cap {
            match self.in_flight.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Slot::new(self.clone())),
                Err(now) => n = now,
            }
        }
        None
    }

    /// What [`LaneState::known`] waits on.
    #[cfg(test)]
    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.changed.notified()
    }

    /// `None` while pending; `Some(None)` without a limit of the server's.
    #[cfg(test)]
    pub(super) fn server_limit(&self) -> Option<Option<u32>> {
        match self.limit.load(Ordering::Acquire) {
            PENDING => None,
            UNLIMITED | HTTP1 => Some(None),
            n => Some(u32::try_from(n).ok()),
        }
    }

    /// Waits, until `deadline` at most, for this lane's (or any lane's) limit, or for this
    /// lane's pending slot to be free; false if the deadline passed.
    async fn known(&self, deadline: Instant) -> bool {
        let notified = self.shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.limit.load(Ordering::Acquire) != PENDING
            || self.shared.hint.load(Ordering::Acquire) != PENDING
            || self.in_flight.load(Ordering::Acquire) == 0
        {
            return true;
        }
        tokio::time::timeout_at(deadline, notified).await.is_ok()
    }

    /// For a request with a slot on this lane while its connection is not open yet: waits,
    /// until `deadline` at most, for the lane's server to speak, or for the lane to have no
    /// request opening its connection (then this one opens it: `slot` says so). False if the
    /// server's word leaves no room for the slot (the lane went by another lane's limit, and
    /// its own server allows fewer): the request should take another place.
    async fn opened(&self, slot: &mut Slot, max: usize, deadline: Instant) -> bool {
        let mut waited = false;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let limit = self.limit.load(Ordering::Acquire);
            if limit != PENDING {
                if waited {
                    // The lane hears its server in the connection's own task, which can happen
                    // just before hyper-util pools the connection (it does once that task has
                    // run): one turn of the scheduler lets it, so that this request finds the
                    // connection instead of opening one of its own.
                    tokio::task::yield_now().await;
                }
                return self.in_flight.load(Ordering::Acquire) <= limit.min(max);
            }
            let me = OPENERS.fetch_add(1, Ordering::Relaxed) + 1;
            if self
                .opening
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if self.limit.load(Ordering::Acquire) == PENDING {
                    slot.opener = me;
                    return true;
                }
                // The server spoke in between (which ended the opening): no opener after all.
                let _ = self
                    .opening
                    .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Acquire);
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // Nothing heard in time: the request goes ahead (and connects, if it must).
                return true;
            }
            waited = true;
        }
    }
}

/// Numbers the requests that open a lane's connection (0 is none).
static OPENERS: AtomicU64 = AtomicU64::new(0);

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
    shared: Arc<Shared>,
}

/// `wait` from now, or a year if that is past what a clock can say (a configured timeout of
/// any size).
fn far(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

/// What [`Lanes::load`] reports (`/metrics`).
pub struct Load {
    pub lanes: usize,
    pub in_flight: usize,
    /// The most requests one HTTP/2 connection carries: the configured limit, or the server's
    /// if smaller (the smallest over the lanes whose server has spoken).
    pub per_connection: Option<usize>,
}

/// A request's place on a lane; given back when dropped.
pub(super) struct Slot {
    state: Arc<LaneState>,
    /// Not 0: this request is opening (or opened) the lane's connection for the requests
    /// waiting on it, as [`LaneState::opening`]'s number.
    opener: u64,
}

impl Slot {
    fn new(state: Arc<LaneState>) -> Slot {
        Slot { state, opener: 0 }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Release);
        if self.opener != 0 {
            // Unless the opening is over, or another request's by now.
            let _ = self.state.opening.compare_exchange(
                self.opener,
                0,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        if self.state.limit.load(Ordering::Acquire) == PENDING {
            // The lane's one slot before its limit is known, or the request that was opening
            // its connection: the next waiting request's turn.
            self.state.wake();
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
            shared: Arc::new(Shared {
                hint: AtomicUsize::new(PENDING),
                changed: Notify::new(),
            }),
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
            // HTTP/1.1 connections carry one request each: not a figure for this gauge.
            if limit != PENDING && limit != HTTP1 {
                let cap = limit.min(self.max_streams);
                load.per_connection = Some(load.per_connection.map_or(cap, |c: usize| c.min(cap)));
            }
        }
        load
    }

    /// A client with a free slot, and the slot.
    pub(super) async fn take(&self) -> (&LaneConn, Slot) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Set when the request first waits for a lane's server: it waits until then in all.
        let mut deadline = None;
        let mut patient = true;
        'take: loop {
            let n = self.len();
            let hint = self.shared.hint.load(Ordering::Acquire);
            let mut pending = None;
            for k in 0..n {
                let lane = self.lane((start + k) % n);
                let mut follow = false;
                let cap = match lane.state.limit.load(Ordering::Acquire) {
                    // Not connected yet: as the lanes whose server spoke, if one did. Over TLS
                    // to an HTTP/2 server, the lane's requests then wait for the one that opens
                    // its connection: each would otherwise open a TLS connection of its own
                    // (hyper-util cannot know before the handshake that the connection will be
                    // shared), of which one is kept.
                    PENDING if hint != PENDING => {
                        follow = !self.h2c && hint != HTTP1;
                        hint.min(self.max_streams)
                    }
                    PENDING if patient => {
                        pending.get_or_insert(lane);
                        1
                    }
                    PENDING => self.max_streams,
                    limit => limit.min(self.max_streams),
                };
                if let Some(mut slot) = lane.state.try_take(cap) {
                    if follow {
                        let deadline = *deadline.get_or_insert_with(|| far(self.wait));
                        if !lane
                            .state
                            .opened(&mut slot, self.max_streams, deadline)
                            .await
                        {
                            // Look again, with what the lanes' servers have said since.
                            drop(slot);
                            continue 'take;
                        }
                    }
                    return (&lane.client, slot);
                }
            }
            if let Some(lane) = pending {
                // A lane is connecting: its server's limit decides whether it takes this request.
                let deadline = *deadline.get_or_insert_with(|| far(self.wait));
                patient = lane.state.known(deadline).await;
                continue;
            }
            if n >= MAX_LANES {
                // Every lane is full: wait on one in turn (HTTP/2 queues the request), not on
                // one whose server allows no streams.
                let lane = (0..n)
                    .map(|k| self.lane((start + k) % n))
                    .find(|l| l.state.limit.load(Ordering::Relaxed) != 0)
                    .unwrap_or_else(|| self.lane(start % n));
                lane.state.in_flight.fetch_add(1, Ordering::AcqRel);
                return (&lane.client, Slot::new(lane.state.clone()));
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
        let state = Arc::new(LaneState::new(self.shared.clone()));
        let connector = LaneConnector {
            inner: self.connector.clone(),
            lane: state.clone(),
            h2c: self.h2c,
        };
        let client = if self.h2c {
            LaneConn::H2c(super::h2c::H2cLane::new(connector))
        } else {
            LaneConn::Pooled(crate::http::upstream_client(connector))
        };
        let _ = self.lanes[n].set(Box::new(Lane { client, state }));
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
    async fn take_settled(l: &Lanes) -> (&LaneConn, Slot) {
        for i in 0..l.len() {
            l.lane(i).state.unlimited();
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

    /// Two lanes, the first full at its server's 2, the second connecting (one request, its
    /// opener, on it).
    async fn a_second_lane_opening(l: &Lanes) -> Vec<(&LaneConn, Slot)> {
        let a = l.take().await;
        l.lane(0).state.learn(2);
        let b = l.take().await;
        let c = l.take().await;
        assert!(c.1.opener != 0, "the first request on a new lane opens it");
        assert_eq!(in_flight(l), [2, 1]);
        vec![a, b, c]
    }

    #[tokio::test]
    async fn on_a_new_tls_lane_requests_wait_for_the_one_opening_its_connection() {
        let l = lanes(false, 100);
        let _held = a_second_lane_opening(&l).await;
        let d = l.take();
        tokio::pin!(d);
        // Its slot is taken (the lane goes by the 2 heard), but it waits for the connection.
        assert_waits(&mut d).await;
        assert_eq!(in_flight(&l), [2, 2]);
        l.lane(1).state.learn(2);
        let d = d.await;
        assert_eq!(d.1.opener, 0);
        assert_eq!(in_flight(&l), [2, 2]);
    }

    #[tokio::test]
    async fn when_the_opener_goes_a_waiting_request_opens_the_lane() {
        let l = lanes(false, 100);
        let mut held = a_second_lane_opening(&l).await;
        let d = l.take();
        tokio::pin!(d);
        assert_waits(&mut d).await;
        // The opener's connection failed and its request ended: the next one connects.
        drop(held.pop());
        let d = d.await;
        assert!(d.1.opener != 0);
        assert_eq!(in_flight(&l), [2, 1]);
    }

    #[tokio::test]
    async fn h2c_and_http1_lanes_take_requests_without_waiting_for_an_opener() {
        // h2c: a lane's requests share the one connection its first request opens (the others
        // wait for it in `h2c::H2cLane`).
        let l = lanes(true, 100);
        for i in 0..H2C_START {
            l.lane(i).state.learn(1);
        }
        let mut held = Vec::new();
        for _ in 0..H2C_START + 2 {
            held.push(l.take().await);
        }
        assert_eq!(in_flight(&l)[H2C_START..], [1, 1]);
        // HTTP/1.1 over TLS: each request needs a connection of its own anyway.
        let l = lanes(false, 2);
        let a = l.take().await;
        l.lane(0).state.http1();
        let b = l.take().await;
        let c = l.take().await;
        let d = tokio::time::timeout(Duration::from_secs(1), l.take()).await;
        assert!(d.is_ok(), "waited for an opener on an HTTP/1.1 lane");
        assert_eq!(in_flight(&l), [2, 2]);
        drop((a, b, c, d));
    }

    #[tokio::test]
    async fn a_request_waits_for_a_silent_server_no_longer_than_the_wait() {
        let l = lanes_waiting(false, 3, Duration::from_millis(30));
        let _a = l.take().await;
        // Nothing from the server within the wait: the configured 3 apply to these requests.
        let t0 = Instant::now();
        let _b = l.take().await;
        let _c = l.take().await;
        // Two requests, each waiting the 30 ms once (the second found the first's place taken).
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(60), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        assert_eq!(in_flight(&l), [3]);
        assert_eq!(l.load().per_connection, None);
        // A server's limit read later (the lane's next connection) counts.
        l.lane(0).state.learn(1);
        assert_eq!(l.load().per_connection, Some(1));
    }

    #[tokio::test]
    async fn wake_ups_that_bring_no_limit_do_not_extend_the_wait() {
        let l = lanes_waiting(false, 3, Duration::from_millis(100));
        let _a = l.take().await;
        let state = l.lane(0).state.clone();
        let poke = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                state.wake();
            }
        });
        let t0 = Instant::now();
        let _b = l.take().await;
        let waited = t0.elapsed();
        poke.abort();
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_secs(1), "{waited:?}");
    }

    #[tokio::test]
    async fn a_request_waiting_on_one_lane_takes_another_once_its_server_speaks() {
        let l = lanes(true, 100);
        let mut first = Vec::new();
        for _ in 0..H2C_START {
            first.push(l.take().await);
        }
        let next = l.take();
        tokio::pin!(next);
        assert_waits(&mut next).await;
        // Whichever lane it waits on, another lane's word lets it in.
        l.lane(H2C_START - 1).state.learn(2);
        tokio::time::timeout(Duration::from_secs(1), next)
            .await
            .expect("woken by another lane's limit");
    }

    #[tokio::test]
    async fn the_smallest_limit_heard_is_what_new_lanes_go_by() {
        let l = lanes(true, 100);
        l.lane(0).state.learn(2);
        l.lane(1).state.unlimited();
        l.lane(2).state.learn(50);
        // Lanes 3.. have not connected: they take 2 each, as the strictest server said.
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(l.take().await);
        }
        let loads = in_flight(&l);
        assert!(loads[3..].iter().all(|&n| n <= 2), "{loads:?}");
    }

    #[tokio::test]
    async fn once_a_server_has_spoken_new_lanes_start_with_its_limit() {
        let l = lanes(false, 100);
        let a = l.take().await;
        l.lane(0).state.learn(2);
        let b = l.take().await;
        // Lane 0 is full; lane 1 is not connected yet, and takes two at once: the second waits
        // for the connection the first opens, but its place is held, so a fifth request opens
        // lane 2 meanwhile (a burst opens its lanes at once, not one after another).
        let c = tokio::time::timeout(Duration::from_secs(1), l.take())
            .await
            .expect("the new lane's first request opens it at once");
        let d = l.take();
        tokio::pin!(d);
        assert_waits(&mut d).await;
        assert_eq!(in_flight(&l), [2, 2]);
        let e = tokio::time::timeout(Duration::from_secs(1), l.take())
            .await
            .expect("waited for lane 1's server before opening lane 2");
        assert_eq!(in_flight(&l), [2, 2, 1]);
        // Lane 1's own server has the last word: 1. The waiting request takes another place
        // (not a queue behind c's stream): lane 2 goes by the smallest word heard (1, taken by
        // e), so a fourth lane, which it opens.
        l.lane(1).state.learn(1);
        let d = d.await;
        assert!(d.1.opener != 0);
        assert_eq!(in_flight(&l), [2, 1, 1, 1]);
        drop((a, b, c, d, e));
    }

    #[tokio::test]
    async fn a_waiting_request_goes_ahead_at_the_deadline_and_gives_its_place_back_if_dropped() {
        let l = lanes_waiting(false, 100, Duration::from_millis(200));
        let _held = a_second_lane_opening(&l).await;
        {
            let d = l.take();
            tokio::pin!(d);
            assert_waits(&mut d).await;
            assert_eq!(in_flight(&l), [2, 2]);
        }
        // Given up while it waited: its place is free again.
        assert_eq!(in_flight(&l), [2, 1]);
        let t0 = Instant::now();
        let d = l.take().await;
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            d.1.opener, 0,
            "nothing heard: it goes ahead, not as the opener"
        );
        assert_eq!(in_flight(&l), [2, 2]);
    }

    #[tokio::test]
    async fn the_opening_ends_when_the_server_speaks_and_an_old_opener_does_not_end_a_new_one() {
        let l = lanes(false, 100);
        let mut held = a_second_lane_opening(&l).await;
        let c = held.pop().unwrap();
        let lane = l.lane(1).state.clone();
        // The server allows nothing on this connection, which then closes: the lane waits for
        // its next connection's word, with c's request (its stream) still going.
        lane.learn(0);
        lane.closed();
        let g = tokio::time::timeout(Duration::from_secs(1), l.take())
            .await
            .expect("no one is opening the lane: this request does");
        assert!(g.1.opener != 0 && g.1.opener != c.1.opener);
        drop(c);
        assert_eq!(lane.opening.load(Ordering::Acquire), g.1.opener);
        let h = l.take();
        tokio::pin!(h);
        assert_waits(&mut h).await;
        drop(g);
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
