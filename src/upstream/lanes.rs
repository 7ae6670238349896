//! Pooled upstream clients ("lanes"), each with at most one HTTP/2 connection, and the requests
//! in flight on each.
//!
//! hyper-util's client keeps one HTTP/2 connection per host and never opens a second: once the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS` is reached (100 to 256 on common servers), every
//! further request waits on that connection for a stream to end. Model answers stream for
//! minutes, so a busy proxy's requests would wait minutes, or until the header timeout, for a
//! slot. Here a request takes a slot on a lane that has fewer than `max_streams` requests in
//! flight, and when every lane is full another lane (another connection) is opened. A slot is
//! held until the answer's body has been read to the end or dropped.
//!
//! Lanes are only ever added (a lane's idle connection closes after the pool's idle timeout and
//! costs nothing more); taking a slot is a few atomic operations, without a lock, unless a lane
//! has to be added. Over HTTP/1.1 (a TLS upstream that does not offer HTTP/2) each lane's pool
//! opens the connections it needs, and the lanes only split them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hyper_util::client::legacy::Client;

use super::ReqBody;
use crate::http::UpstreamConnector;

/// Lanes an h2c upstream starts with: one connection is one task on one thread demultiplexing
/// every stream's frames; a few spread that work (and a connection's loss) over the runtime's
/// threads.
const H2C_START: usize = 8;

/// At most this many lanes (at 100 streams each, 102 400 requests in flight); past it a request
/// waits on the next lane in turn.
const MAX_LANES: usize = 1024;

pub(super) type LaneClient = Client<UpstreamConnector, ReqBody>;

struct Lane {
    client: LaneClient,
    in_flight: Arc<AtomicUsize>,
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
}

/// A request's place on a lane; given back when dropped.
pub(super) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl Lanes {
    pub(super) fn new(connector: UpstreamConnector, h2c: bool, max_streams: usize) -> Lanes {
        let lanes = Lanes {
            lanes: (0..MAX_LANES).map(|_| OnceLock::new()).collect(),
            count: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            grow: Mutex::new(()),
            connector,
            h2c,
            max_streams: max_streams.max(1),
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

    /// How many lanes there are, and the requests in flight on them.
    pub(super) fn load(&self) -> (usize, usize) {
        let n = self.len();
        let in_flight = (0..n)
            .map(|i| self.lane(i).in_flight.load(Ordering::Relaxed))
            .sum();
        (n, in_flight)
    }

    /// A client with a free slot, and the slot.
    pub(super) fn take(&self) -> (&LaneClient, Slot) {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        loop {
            let n = self.len();
            for k in 0..n {
                let lane = self.lane((start + k) % n);
                if lane.in_flight.fetch_add(1, Ordering::AcqRel) < self.max_streams {
                    return (&lane.client, Slot(lane.in_flight.clone()));
                }
                lane.in_flight.fetch_sub(1, Ordering::Release);
            }
            if n >= MAX_LANES {
                // Every lane is full: wait on one in turn (HTTP/2 queues the request).
                let lane = self.lane(start % n);
                lane.in_flight.fetch_add(1, Ordering::AcqRel);
                return (&lane.client, Slot(lane.in_flight.clone()));
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
        let _ = self.lanes[n].set(Box::new(Lane {
            client: crate::http::upstream_client(self.connector.clone(), self.h2c),
            in_flight: Arc::new(AtomicUsize::new(0)),
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

    fn lanes(h2c: bool, max: usize) -> Lanes {
        crate::http::install_crypto_provider();
        let connector = crate::http::upstream_connector(
            std::time::Duration::from_secs(1),
            crate::http::tls_config(),
        );
        Lanes::new(connector, h2c, max)
    }

    fn in_flight(l: &Lanes) -> Vec<usize> {
        (0..l.len())
            .map(|i| l.lane(i).in_flight.load(Ordering::Acquire))
            .collect()
    }

    #[tokio::test]
    async fn a_lane_is_added_when_every_lane_is_full_and_slots_come_back_on_drop() {
        let l = lanes(false, 2);
        assert_eq!(l.len(), 1);
        let a = l.take();
        let b = l.take();
        assert_eq!(in_flight(&l), [2]);
        let c = l.take();
        assert_eq!(in_flight(&l), [2, 1]);
        drop((a, b));
        assert_eq!(in_flight(&l), [0, 1]);
        // A free slot on an existing lane is taken before any lane is added.
        let held: Vec<_> = (0..3).map(|_| l.take()).collect();
        assert_eq!(l.len(), 2);
        assert_eq!(in_flight(&l), [2, 2]);
        drop((held, c));
        assert_eq!(in_flight(&l), [0, 0]);
    }

    #[tokio::test]
    async fn h2c_starts_with_lanes_to_spread_requests_over() {
        let l = lanes(true, 100);
        assert_eq!(l.len(), H2C_START);
        let held: Vec<_> = (0..H2C_START).map(|_| l.take()).collect();
        assert_eq!(in_flight(&l), [1; H2C_START]);
        drop(held);
    }

    #[tokio::test]
    async fn past_the_last_lane_requests_wait_on_a_lane_in_turn() {
        let l = lanes(false, 1);
        let held: Vec<_> = (0..MAX_LANES + 3).map(|_| l.take()).collect();
        assert_eq!(l.len(), MAX_LANES);
        assert_eq!(in_flight(&l).iter().sum::<usize>(), MAX_LANES + 3);
        assert!(in_flight(&l).iter().all(|&n| n == 1 || n == 2));
        drop(held);
        assert!(in_flight(&l).iter().all(|&n| n == 0));
    }
}
