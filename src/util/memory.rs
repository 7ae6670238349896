//! Giving a burst's memory back: threads release their allocator caches when asked.
//!
//! jemalloc keeps a cache of freed blocks per thread, and it trims a thread's cache only while
//! that thread allocates. After a burst the threads go quiet with full caches, and each cached
//! block keeps its whole slab (a page or more) resident. [`ask_threads_to_release`] raises an
//! epoch; each thread, at its next idle point ([`release_if_asked`]: the runtime's workers when
//! they park, ccproxy's own threads when they wait), hands its cache back once per epoch.
//! When jemalloc is not the allocator (the library's tests), the call changes nothing.
//!
//! A worker asleep when the epoch moves keeps its cache until it next has work and parks again;
//! the timer's own worker releases at once, and each serving thread (`server::workers`) wakes to
//! check every [`RELEASE_EVERY`]. The figure this serves (memory 30 s after a burst,
//! `scripts/bench/streams.sh`) is measured with that.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvError, RecvTimeoutError};
use std::time::Duration;

use tikv_jemalloc_ctl::{Access as _, AsName as _};

/// How often the threads are asked to release their caches.
pub const RELEASE_EVERY: Duration = Duration::from_secs(10);

static EPOCH: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static SEEN: Cell<u32> = const { Cell::new(0) };
}

/// Asks every thread to release its allocator cache at its next idle point.
pub fn ask_threads_to_release() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
}

/// At an idle point of the calling thread: releases its allocator cache if asked since the
/// thread last did. One atomic load when there is nothing to do.
pub fn release_if_asked() {
    let epoch = EPOCH.load(Ordering::Relaxed);
    if SEEN.with(|seen| seen.replace(epoch)) != epoch {
        release_thread_cache();
    }
}

/// Turning the thread's cache off flushes it; it is back on (empty) at once. (Turning it on
/// allocates the cache's bins; jemalloc itself being out of memory is the one way that fails.)
fn release_thread_cache() {
    let name = b"thread.tcache.enabled\0".name();
    if matches!(name.read(), Ok(true)) {
        let _ = name.write(false);
        let _ = name.write(true);
    }
}

/// `rx.recv()` for a thread of ccproxy's own: while it waits, it releases its allocator cache
/// when asked (checked every [`RELEASE_EVERY`]).
pub fn recv<T>(rx: &Receiver<T>) -> Result<T, RecvError> {
    loop {
        match rx.recv_timeout(RELEASE_EVERY) {
            Ok(m) => return Ok(m),
            Err(RecvTimeoutError::Timeout) => release_if_asked(),
            Err(RecvTimeoutError::Disconnected) => return Err(RecvError),
        }
    }
}

/// Asks the threads to release their caches every [`RELEASE_EVERY`], for as long as the
/// runtime runs; the task's own worker releases when it parks after the tick.
pub fn spawn_release_timer() {
    tokio::spawn(async {
        let mut every = tokio::time::interval(RELEASE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            ask_threads_to_release();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_enabled() -> bool {
        b"thread.tcache.enabled\0".name().read().unwrap()
    }

    #[test]
    fn a_thread_releases_once_per_epoch_and_keeps_its_cache_on() {
        // jemalloc is linked (not the tests' allocator): its controls answer.
        assert!(cache_enabled());
        // The epoch seen by this thread follows the global one after an idle point.
        release_if_asked();
        let before = SEEN.with(Cell::get);
        ask_threads_to_release();
        assert_ne!(SEEN.with(Cell::get), EPOCH.load(Ordering::Relaxed));
        release_if_asked();
        assert_eq!(SEEN.with(Cell::get), EPOCH.load(Ordering::Relaxed));
        assert_ne!(SEEN.with(Cell::get), before);
        assert!(cache_enabled(), "the cache is back on after the release");
    }
}
