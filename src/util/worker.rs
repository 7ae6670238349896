//! Which serving thread the current thread is (see `server::workers`): state that a request
//! uses with its connection's I/O (the upstream's pooled connections) is kept per serving
//! thread and picked by this index, so a request never waits on another thread's connection.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The serving thread's index; 0 on any other thread.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Marks the current thread as serving thread `i`.
pub fn set_index(i: usize) {
    INDEX.with(|c| c.set(i));
}

/// The client connections open on each serving thread (for the acceptor's choice, `/health`
/// and `/metrics`).
pub struct Connections {
    open: Box<[std::sync::atomic::AtomicUsize]>,
}

impl Connections {
    /// Counters for `threads` serving threads (at least one).
    pub fn new(threads: usize) -> Connections {
        Connections {
            open: (0..threads.max(1))
                .map(|_| std::sync::atomic::AtomicUsize::new(0))
                .collect(),
        }
    }

    /// The number of serving threads.
    pub fn threads(&self) -> usize {
        self.open.len()
    }

    /// The connections open on each thread.
    pub fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }

    /// The thread with the fewest open connections (the first of equals).
    pub fn least_busy(&self) -> usize {
        let mut best = 0;
        let mut fewest = usize::MAX;
        for (i, n) in self.open.iter().enumerate() {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            if n < fewest {
                best = i;
                fewest = n;
            }
        }
        best
    }

    /// A connection opened on thread `i`.
    pub fn opened(&self, i: usize) {
        self.open[i % self.open.len()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A connection on thread `i` closed.
    pub fn closed(&self, i: usize) {
        self.open[i % self.open.len()].fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
