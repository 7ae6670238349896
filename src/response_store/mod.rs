//! The Responses API store: what `previous_response_id`, `item_reference`, `GET/DELETE
//! /openai/v1/responses/{id}` and `/input_items` read.
//!
//! A stored response is its id, its creation time, when it expires, the conversation's input
//! items (those of the responses it continues first, so a chain of `previous_response_id` needs
//! one lookup) and the response object, both as JSON text.
//!
//! [`ResponseStore`] is what the request path uses. It never waits for a disk on the async
//! runtime:
//!
//! - [`ResponseStore::put`] keeps the response in a small in-memory map of recent puts (so the
//!   next request, which clients send as soon as `response.completed` arrives, always finds it)
//!   and queues it for the durable [`Backend`], whose writes run on one writer thread, in order
//!   with deletes;
//! - [`ResponseStore::get`] reads the map, then the backend on a blocking thread;
//! - [`ResponseStore::delete`] goes through the writer thread too (so a queued put cannot bring a
//!   deleted response back) and waits for it off the runtime.
//!
//! Without a backend (usage recording off, or its database unusable) the map is the store: the
//! last [`MEMORY_CAPACITY`] responses, lost at exit. Expired responses are never returned; the
//! writer prunes the backend periodically.
//!
//! [`Backend`] is the whole interface a durable store implements ([`sqlite::SqliteBackend`],
//! the usage database's `responses` table; PostgreSQL later).

pub mod pg;
pub mod sqlite;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::time::now_ms;

/// Responses kept when there is no durable backend.
pub const MEMORY_CAPACITY: usize = 1000;

/// Recent puts kept in memory in front of a durable backend.
pub const CACHE_CAPACITY: usize = 64;

/// Puts waiting for the writer thread; more are kept in memory only (and counted).
const QUEUE_CAPACITY: usize = 1024;

/// Puts kept after a failed write (the database went away), retried every [`RETRY_EVERY`];
/// older ones are dropped (and counted as write errors) past this.
const PENDING_CAPACITY: usize = 10_000;

const RETRY_EVERY: Duration = Duration::from_millis(500);
/// The most responses written in one transaction.
const BATCH: usize = 256;

/// How long the writer gathers puts into one transaction after the first: a busy proxy commits
/// once per window, not once per response (a commit cost as much as the row's insert), and a
/// put does not wake the writer. Until written, a response is found in [`Durable::unwritten`].
/// A store shared by replicas has no window: another replica may look the response up (or
/// delete it) as soon as its client has it, so it is written at once (the puts already queued
/// still go together).
const WINDOW: Duration = Duration::from_millis(50);
/// The longest the writer sleeps within a window before it looks at the queue again (a delete or
/// a flush unparks it at once).
const SLICE: Duration = Duration::from_millis(10);

/// One stored response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// `resp_…`.
    pub id: String,
    /// Unix seconds (the response's `created_at`).
    pub created_at: u64,
    /// Epoch ms after which the response is gone.
    pub expires_at_ms: i64,
    /// The conversation's input items, a JSON array (each item has an `id`).
    pub input_items: String,
    /// The response object, JSON.
    pub response: String,
}

impl StoredResponse {
    fn live(&self, now_ms: i64) -> bool {
        self.expires_at_ms > now_ms
    }
}

/// A backend failed; the message names what (and, for a file, which).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("response store: {0}")]
pub struct StoreError(pub String);

/// A durable response store. Calls block (they run on the writer thread or a blocking thread);
/// `now_ms` is passed in so expiry is decided in one place and testable.
pub trait Backend: Send + Sync + 'static {
    /// What and where, for `/health` and the log (`sqlite /path/usage.db`).
    fn describe(&self) -> String;
    /// Inserts or replaces `r`.
    fn put(&self, r: &StoredResponse) -> Result<(), StoreError>;
    /// Inserts or replaces all of `rs`, in order (on an error some may be written: a put is
    /// idempotent, so the caller puts them all again).
    fn put_all(&self, rs: &[Arc<StoredResponse>]) -> Result<(), StoreError> {
        rs.iter().try_for_each(|r| self.put(r))
    }
    /// The response `id`, unless unknown or expired at `now_ms`.
    fn get(&self, id: &str, now_ms: i64) -> Result<Option<StoredResponse>, StoreError>;
    /// Deletes `id`; whether a live (unexpired) response was deleted.
    fn delete(&self, id: &str, now_ms: i64) -> Result<bool, StoreError>;
    /// Deletes what expired by `now_ms`; how many.
    fn prune(&self, now_ms: i64) -> Result<u64, StoreError>;
}

/// Insertion-ordered, bounded map of recent responses.
struct Recent {
    map: HashMap<String, Arc<StoredResponse>>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Recent {
    fn new(capacity: usize) -> Recent {
        Recent {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn insert(&mut self, r: Arc<StoredResponse>, now_ms: i64) {
        if self.map.insert(r.id.clone(), r.clone()).is_none() {
            self.order.push_back(r.id.clone());
        }
        // The oldest first: expired ones, then past the capacity.
        while let Some(front) = self.order.front() {
            let expired = self.map.get(front).is_none_or(|x| !x.live(now_ms));
            if !expired && self.map.len() <= self.capacity {
                break;
            }
            if let Some(id) = self.order.pop_front() {
                self.map.remove(&id);
            }
        }
    }

    fn get(&self, id: &str, now_ms: i64) -> Option<Arc<StoredResponse>> {
        self.map.get(id).filter(|r| r.live(now_ms)).cloned()
    }

    fn remove(&mut self, id: &str, now_ms: i64) -> bool {
        let Some(r) = self.map.remove(id) else {
            return false;
        };
        self.order.retain(|x| x != id);
        r.live(now_ms)
    }
}

enum Op {
    Put(Arc<StoredResponse>),
    Delete(
        String,
        tokio::sync::oneshot::Sender<Result<bool, StoreError>>,
    ),
    Flush(mpsc::Sender<()>),
}

struct Durable {
    backend: Arc<dyn Backend>,
    tx: SyncSender<Op>,
    /// The writer thread, unparked when an operation must not wait for the window to end.
    writer: std::thread::Thread,
    /// Puts queued, being written or kept after a failed write: a lookup finds them here until
    /// the backend has them (the recent map keeps only the last [`CACHE_CAPACITY`]).
    unwritten: Arc<Unwritten>,
    /// The backend is shared: puts are written without a [`WINDOW`].
    no_window: Arc<AtomicBool>,
}

/// Responses not in the backend yet, by id.
type Unwritten = Mutex<HashMap<String, Arc<StoredResponse>>>;

fn lock(u: &Unwritten) -> std::sync::MutexGuard<'_, HashMap<String, Arc<StoredResponse>>> {
    u.lock().unwrap_or_else(|e| e.into_inner())
}

/// `written` are in the backend now: no longer looked up in memory (unless put again since).
fn forget<'a>(u: &Unwritten, written: impl IntoIterator<Item = &'a Arc<StoredResponse>>) {
    let mut map = lock(u);
    for r in written {
        if map.get(&r.id).is_some_and(|x| Arc::ptr_eq(x, r)) {
            map.remove(&r.id);
        }
    }
}

/// The request path's store: in-memory recent puts in front of an optional durable backend.
pub struct ResponseStore {
    ttl: Duration,
    recent: Mutex<Recent>,
    durable: Option<Durable>,
    /// Why there is no durable backend (`None`: there is one, or none was wanted).
    memory_reason: Option<String>,
    /// Puts the writer could not take (queue full or gone): kept in memory only.
    unqueued: AtomicU64,
    /// Backend writes that failed.
    write_errors: Arc<AtomicU64>,
    /// The backend is shared by replicas: a miss may be a response another replica is still
    /// writing, so it is looked up again (see [`SHARED_MISS_RETRIES`]).
    shared: bool,
}

/// A miss in a shared backend is looked up again after each of these pauses (another replica's
/// writer commits within milliseconds of the response's last event: a shared store has no
/// write window).
pub const SHARED_MISS_RETRIES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(150),
];

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStore")
            .field("ttl", &self.ttl)
            .field(
                "durable",
                &self.durable.as_ref().map(|d| d.backend.describe()),
            )
            .finish_non_exhaustive()
    }
}

impl ResponseStore {
    /// A store in memory only: the last `capacity` responses. `reason` says why (for `/health`).
    pub fn memory(ttl: Duration, capacity: usize, reason: impl Into<String>) -> ResponseStore {
        ResponseStore {
            ttl,
            recent: Mutex::new(Recent::new(capacity)),
            durable: None,
            memory_reason: Some(reason.into()),
            unqueued: AtomicU64::new(0),
            write_errors: Arc::new(AtomicU64::new(0)),
            shared: false,
        }
    }

    /// Marks the backend as shared by several replicas (PostgreSQL): no write window.
    pub fn shared(mut self) -> ResponseStore {
        self.shared = true;
        if let Some(d) = &self.durable {
            d.no_window.store(true, Ordering::Relaxed);
        }
        self
    }

    /// A store that keeps responses in `backend`, written by a dedicated thread that also prunes
    /// expired ones. If the thread cannot start, the store is memory-only and says why.
    pub fn durable(backend: Arc<dyn Backend>, ttl: Duration) -> ResponseStore {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
        let write_errors = Arc::new(AtomicU64::new(0));
        let unwritten = Arc::new(Unwritten::default());
        let no_window = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            backend: backend.clone(),
            rx,
            prune_every: (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(600)),
            errors: write_errors.clone(),
            unwritten: unwritten.clone(),
            no_window: no_window.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("ccproxy-responses-writer".into())
            .spawn(move || writer.run());
        let writer = match spawned {
            Ok(handle) => handle.thread().clone(),
            Err(e) => {
                let reason = format!("cannot start the response store's writer thread: {e}");
                tracing::error!(%reason, "responses are kept in memory only");
                return ResponseStore::memory(ttl, MEMORY_CAPACITY, reason);
            }
        };
        ResponseStore {
            ttl,
            recent: Mutex::new(Recent::new(CACHE_CAPACITY)),
            durable: Some(Durable {
                backend,
                tx,
                writer,
                unwritten,
                no_window,
            }),
            memory_reason: None,
            unqueued: AtomicU64::new(0),
            write_errors,
            shared: false,
        }
    }

    /// How long responses are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a response created now (its expiry is now + the time to live). Never blocks.
    pub fn put(&self, id: String, created_at: u64, input_items: String, response: String) {
        let now = now_ms();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let r = Arc::new(StoredResponse {
            id,
            created_at,
            expires_at_ms: now.saturating_add(ttl_ms),
            input_items,
            response,
        });
        self.recent().insert(r.clone(), now);
        if let Some(d) = &self.durable {
            lock(&d.unwritten).insert(r.id.clone(), r.clone());
            if d.tx.try_send(Op::Put(r.clone())).is_err() {
                // Full, or the writer is gone.
                forget(&d.unwritten, [&r]);
                self.unqueued.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "the response store's queue is full: a response is kept in memory only"
                );
            }
        }
    }

    /// The response `id`, unless unknown, expired or deleted.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<StoredResponse>>, StoreError> {
        if let Some(r) = self.recent().get(id, now_ms()) {
            return Ok(Some(r));
        }
        let Some(d) = &self.durable else {
            return Ok(None);
        };
        if let Some(r) = lock(&d.unwritten).get(id).filter(|r| r.live(now_ms())) {
            return Ok(Some(r.clone()));
        }
        let pauses: &[Duration] = if self.shared {
            &SHARED_MISS_RETRIES
        } else {
            &[]
        };
        let mut pauses = pauses.iter();
        loop {
            let backend = d.backend.clone();
            let key = id.to_owned();
            let found = tokio::task::spawn_blocking(move || backend.get(&key, now_ms()))
                .await
                .map_err(|e| StoreError(format!("lookup task failed: {e}")))??;
            match (found, pauses.next()) {
                (Some(r), _) => return Ok(Some(Arc::new(r))),
                (None, Some(p)) => tokio::time::sleep(*p).await,
                (None, None) => return Ok(None),
            }
        }
    }

    /// Deletes `id`; whether it existed (and had not expired).
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut in_memory = self.recent().remove(id, now);
        let Some(d) = &self.durable else {
            return Ok(in_memory);
        };
        in_memory |= lock(&d.unwritten).remove(id).is_some_and(|r| r.live(now));
        let (ack, done) = tokio::sync::oneshot::channel();
        // Through the writer, after any queued put of the same id. `send` may wait for room in
        // the queue: off the runtime.
        let tx = d.tx.clone();
        let writer = d.writer.clone();
        let owned = id.to_owned();
        tokio::task::spawn_blocking(move || {
            let sent = tx.send(Op::Delete(owned, ack));
            writer.unpark();
            sent
        })
        .await
        .map_err(|e| StoreError(format!("delete task failed: {e}")))?
        .map_err(|_| StoreError("the writer thread is gone".to_owned()))?;
        let in_backend = done
            .await
            .map_err(|_| StoreError("the writer thread is gone".to_owned()))??;
        Ok(in_memory || in_backend)
    }

    /// Blocks until everything queued is written, for at most `timeout` (shutdown, tests).
    /// Do not call it on an async runtime thread.
    pub fn flush(&self, timeout: Duration) -> bool {
        let Some(d) = &self.durable else { return true };
        let (ack, done) = mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut op = Op::Flush(ack);
        loop {
            match d.tx.try_send(op) {
                Ok(()) => {
                    d.writer.unpark();
                    break;
                }
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    op = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        !matches!(
            done.recv_timeout(left),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    /// Where responses are kept, for `/health`.
    pub fn health(&self) -> serde_json::Value {
        let in_memory = self.recent().map.len();
        serde_json::json!({
            "backend": self.durable.as_ref().map_or_else(|| "memory".to_owned(), |d| d.backend.describe()),
            "durable": self.durable.is_some(),
            "memory_only_reason": self.memory_reason,
            "ttl_secs": self.ttl.as_secs(),
            "in_memory": in_memory,
            "kept_in_memory_only": self.unqueued.load(Ordering::Relaxed),
            "write_errors": self.write_errors.load(Ordering::Relaxed),
        })
    }

    /// A one-line description for the startup log.
    pub fn describe(&self) -> String {
        match (&self.durable, &self.memory_reason) {
            (Some(d), _) => d.backend.describe(),
            (None, Some(why)) => format!("memory (the last {MEMORY_CAPACITY}; {why})"),
            (None, None) => "memory".to_owned(),
        }
    }
}

/// The writer thread's state: puts written a window's batch at a time, deletes and flushes in
/// order with them, failed puts retried, expired responses pruned.
struct Writer {
    backend: Arc<dyn Backend>,
    rx: Receiver<Op>,
    prune_every: Duration,
    errors: Arc<AtomicU64>,
    unwritten: Arc<Unwritten>,
    no_window: Arc<AtomicBool>,
}

/// `try_recv` in `recv_timeout`'s terms (an empty queue is a timeout).
fn try_next(rx: &Receiver<Op>) -> Result<Op, mpsc::RecvTimeoutError> {
    rx.try_recv().map_err(|e| match e {
        mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
        mpsc::TryRecvError::Disconnected => mpsc::RecvTimeoutError::Disconnected,
    })
}

impl Writer {
    fn prune(&self) {
        if let Err(e) = self.backend.prune(now_ms()) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cannot prune expired responses");
        }
    }

    /// The puts that arrive within [`WINDOW`] of `first` (up to [`BATCH`]), and what ended the
    /// window: another operation (handled after them, in order), or a timeout.
    fn gather(
        &self,
        first: Result<Op, mpsc::RecvTimeoutError>,
    ) -> (Vec<Arc<StoredResponse>>, Result<Op, mpsc::RecvTimeoutError>) {
        let mut batch = Vec::new();
        let window = if self.no_window.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            WINDOW
        };
        let deadline = Instant::now() + window;
        let mut next = first;
        loop {
            match next {
                Ok(Op::Put(r)) => {
                    batch.push(r);
                    if batch.len() >= BATCH {
                        return (batch, Err(mpsc::RecvTimeoutError::Timeout));
                    }
                    next = try_next(&self.rx);
                }
                // Between drains the thread sleeps instead of waiting on the queue, so a put
                // does not wake it; a delete or a flush unparks it.
                Err(mpsc::RecvTimeoutError::Timeout) if !batch.is_empty() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return (batch, next);
                    }
                    std::thread::park_timeout(left.min(SLICE));
                    next = try_next(&self.rx);
                }
                other => return (batch, other),
            }
        }
    }

    fn run(self) {
        let backend = &*self.backend;
        self.prune();
        let mut last_prune = Instant::now();
        // Puts that failed (a shared database that went away), retried in order; bounded.
        let mut pending: VecDeque<Arc<StoredResponse>> = VecDeque::new();
        loop {
            let wait = if pending.is_empty() {
                self.prune_every.min(crate::util::memory::RELEASE_EVERY)
            } else {
                self.prune_every.min(RETRY_EVERY)
            };
            let (batch, next) = self.gather(self.rx.recv_timeout(wait));
            if !batch.is_empty() && !pending.is_empty() {
                pending.extend(batch);
            } else if !batch.is_empty() {
                match backend.put_all(&batch) {
                    Ok(()) => forget(&self.unwritten, &batch),
                    Err(e) => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot store responses; retrying");
                        pending.extend(batch);
                    }
                }
            }
            // Puts that failed before, again: before a flush is answered or a delete is done.
            while let Some(r) = pending.front() {
                if backend.put(r).is_err() {
                    break;
                }
                forget(&self.unwritten, [r]);
                pending.pop_front();
            }
            match next {
                // Not reached (`gather` takes every put); in order if it were.
                Ok(Op::Put(r)) => pending.push_back(r),
                Ok(Op::Delete(id, ack)) => {
                    // A put still waiting cannot bring the response back.
                    pending.retain(|p| p.id != id);
                    let _ = ack.send(backend.delete(&id, now_ms()));
                }
                Ok(Op::Flush(ack)) => {
                    let _ = ack.send(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => crate::util::memory::release_if_asked(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if pending.len() > PENDING_CAPACITY {
                let over = pending.len() - PENDING_CAPACITY;
                forget(
                    &self.unwritten,
                    pending.drain(..over).collect::<Vec<_>>().iter(),
                );
                self.errors.fetch_add(over as u64, Ordering::Relaxed);
            }
            if last_prune.elapsed() >= self.prune_every {
                self.prune();
                last_prune = Instant::now();
            }
        }
        tracing::debug!(backend = %backend.describe(), "response store writer stopped");
    }
}

/// The id of the response an item id of ours belongs to (`fc_<48 hex>…` → `resp_<48 hex>`).
pub fn response_of_item(item_id: &str) -> Option<String> {
    let (_, rest) = item_id.split_once('_')?;
    let base = rest.get(..48)?;
    base.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| format!("resp_{base}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, expires_at_ms: i64) -> Arc<StoredResponse> {
        Arc::new(StoredResponse {
            id: id.into(),
            created_at: 1,
            expires_at_ms,
            input_items: "[]".into(),
            response: "{}".into(),
        })
    }

    #[test]
    fn recent_is_bounded_and_drops_expired_first() {
        let mut m = Recent::new(2);
        m.insert(r("a", 100), 0);
        m.insert(r("b", 100), 0);
        m.insert(r("c", 100), 0);
        assert!(m.get("a", 0).is_none(), "the oldest went past the capacity");
        assert!(m.get("b", 0).is_some() && m.get("c", 0).is_some());
        assert!(m.get("b", 100).is_none(), "expired is never returned");
        m.insert(r("d", 500), 200);
        assert_eq!(m.map.len(), 1, "expired ones were pruned on insert");
        assert!(m.remove("d", 200));
        assert!(!m.remove("d", 200));
    }

    #[tokio::test]
    async fn memory_store_round_trip_and_ttl() {
        let s = ResponseStore::memory(Duration::from_secs(60), 10, "test");
        s.put("resp_1".into(), 5, "[1]".into(), "{}".into());
        let got = s.get("resp_1").await.unwrap().unwrap();
        assert_eq!(got.input_items, "[1]");
        assert!(s.get("resp_2").await.unwrap().is_none());
        assert!(s.delete("resp_1").await.unwrap());
        assert!(s.get("resp_1").await.unwrap().is_none());
        assert!(!s.delete("resp_1").await.unwrap());

        let s = ResponseStore::memory(Duration::from_millis(1), 10, "test");
        s.put("resp_x".into(), 5, "[]".into(), "{}".into());
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.get("resp_x").await.unwrap().is_none());
        assert!(!s.delete("resp_x").await.unwrap());
    }

    #[tokio::test]
    async fn durable_store_reads_back_after_the_cache_and_deletes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        let backend = Arc::new(sqlite::SqliteBackend::open(&path).unwrap());
        let s = ResponseStore::durable(backend.clone(), Duration::from_secs(60));
        for i in 0..(CACHE_CAPACITY + 5) {
            s.put(
                format!("resp_{i}"),
                1,
                "[]".into(),
                format!("{{\"n\":{i}}}"),
            );
        }
        // Deleted right after its put: the queued put cannot bring it back.
        s.put("resp_gone".into(), 1, "[]".into(), "{}".into());
        assert!(s.delete("resp_gone").await.unwrap());
        assert!(s.flush(Duration::from_secs(5)));
        // resp_0 left the in-memory map; it comes from SQLite.
        assert!(s.recent().get("resp_0", now_ms()).is_none());
        let got = s.get("resp_0").await.unwrap().unwrap();
        assert_eq!(got.response, "{\"n\":0}");
        assert!(s.get("resp_gone").await.unwrap().is_none());
        assert!(backend.get("resp_gone", now_ms()).unwrap().is_none());
        assert_eq!(s.health()["durable"], true);
        let d = s.durable.as_ref().unwrap();
        assert!(lock(&d.unwritten).is_empty(), "written ones are not kept");
    }

    /// A backend in memory that holds its first `put_all` until released, and fails the
    /// batches it is told to; it records the size of each `put_all`.
    #[derive(Default)]
    struct Gated {
        rows: Mutex<HashMap<String, String>>,
        batches: Mutex<Vec<usize>>,
        release: (Mutex<bool>, std::sync::Condvar),
        fail_batches: Mutex<Vec<usize>>,
    }

    impl Backend for Gated {
        fn describe(&self) -> String {
            "gated".into()
        }
        fn put(&self, r: &StoredResponse) -> Result<(), StoreError> {
            let mut rows = self.rows.lock().unwrap();
            rows.insert(r.id.clone(), r.response.clone());
            Ok(())
        }
        fn put_all(&self, rs: &[Arc<StoredResponse>]) -> Result<(), StoreError> {
            let n = {
                let mut b = self.batches.lock().unwrap();
                b.push(rs.len());
                b.len()
            };
            let mut open = self.release.0.lock().unwrap();
            while !*open {
                open = self.release.1.wait(open).unwrap();
            }
            drop(open);
            if self.fail_batches.lock().unwrap().contains(&n) {
                return Err(StoreError("down".into()));
            }
            rs.iter().try_for_each(|r| self.put(r))
        }
        fn get(&self, id: &str, _: i64) -> Result<Option<StoredResponse>, StoreError> {
            Ok(self
                .rows
                .lock()
                .unwrap()
                .get(id)
                .map(|resp| StoredResponse {
                    id: id.into(),
                    created_at: 1,
                    expires_at_ms: i64::MAX,
                    input_items: "[]".into(),
                    response: resp.clone(),
                }))
        }
        fn delete(&self, id: &str, _: i64) -> Result<bool, StoreError> {
            Ok(self.rows.lock().unwrap().remove(id).is_some())
        }
        fn prune(&self, _: i64) -> Result<u64, StoreError> {
            Ok(0)
        }
    }

    #[test]
    fn queued_puts_are_written_a_batch_at_a_time_and_a_failed_batch_again() {
        let backend = Arc::new(Gated::default());
        // The third batch fails: its responses are put again, one by one.
        backend.fail_batches.lock().unwrap().push(3);
        let s = ResponseStore::durable(backend.clone(), Duration::from_secs(60));
        s.put("resp_first".into(), 1, "[]".into(), "{}".into());
        // The writer holds the first batch (of one) while 300 more are queued.
        while backend.batches.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..300 {
            s.put(
                format!("resp_{i}"),
                1,
                "[]".into(),
                format!("{{\"n\":{i}}}"),
            );
        }
        release(&backend);
        assert!(s.flush(Duration::from_secs(5)));
        assert_eq!(*backend.batches.lock().unwrap(), [1, BATCH, 300 - BATCH]);
        let rows = backend.rows.lock().unwrap();
        assert_eq!(rows.len(), 301);
        assert_eq!(rows["resp_299"], "{\"n\":299}");
        assert_eq!(s.health()["write_errors"], 1);
    }

    fn release(backend: &Gated) {
        *backend.release.0.lock().unwrap() = true;
        backend.release.1.notify_all();
    }

    #[tokio::test]
    async fn a_response_not_written_yet_is_found_after_it_left_the_recent_map() {
        let backend = Arc::new(Gated::default());
        let s = ResponseStore::durable(backend.clone(), Duration::from_secs(60));
        s.put("resp_held".into(), 1, "[]".into(), "{\"held\":1}".into());
        while backend.batches.lock().unwrap().is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The writer is stuck on the first batch (a slow disk) while more than the recent map
        // holds are put behind it.
        for i in 0..(CACHE_CAPACITY * 3) {
            s.put(
                format!("resp_{i}"),
                1,
                "[]".into(),
                format!("{{\"n\":{i}}}"),
            );
        }
        assert!(s.recent().get("resp_0", now_ms()).is_none());
        assert!(s.recent().get("resp_held", now_ms()).is_none());
        assert_eq!(
            s.get("resp_0").await.unwrap().unwrap().response,
            "{\"n\":0}"
        );
        assert_eq!(
            s.get("resp_held").await.unwrap().unwrap().response,
            "{\"held\":1}"
        );
        assert!(backend.rows.lock().unwrap().is_empty());
        release(&backend);
        assert!(s.flush(Duration::from_secs(5)));
        assert!(lock(&s.durable.as_ref().unwrap().unwritten).is_empty());
        assert_eq!(backend.rows.lock().unwrap().len(), CACHE_CAPACITY * 3 + 1);
        assert_eq!(
            s.get("resp_0").await.unwrap().unwrap().response,
            "{\"n\":0}"
        );
    }

    #[test]
    fn puts_within_a_window_are_one_transaction() {
        let backend = Arc::new(Gated::default());
        release(&backend);
        let s = ResponseStore::durable(backend.clone(), Duration::from_secs(60));
        // A put 20 ms after the first is still in the first one's window.
        s.put("resp_first".into(), 1, "[]".into(), "{}".into());
        std::thread::sleep(Duration::from_millis(20));
        for i in 0..9 {
            s.put(format!("resp_{i}"), 1, "[]".into(), "{}".into());
        }
        assert!(s.flush(Duration::from_secs(5)));
        assert_eq!(*backend.batches.lock().unwrap(), [10]);
        // A shared store writes at once: the same puts are two transactions.
        let backend = Arc::new(Gated::default());
        release(&backend);
        let s = ResponseStore::durable(backend.clone(), Duration::from_secs(60)).shared();
        s.put("resp_first".into(), 1, "[]".into(), "{}".into());
        std::thread::sleep(Duration::from_millis(20));
        for i in 0..9 {
            s.put(format!("resp_{i}"), 1, "[]".into(), "{}".into());
        }
        assert!(s.flush(Duration::from_secs(5)));
        let batches = backend.batches.lock().unwrap().clone();
        assert_eq!(batches.first(), Some(&1), "{batches:?}");
        assert_eq!(batches.iter().sum::<usize>(), 10);
    }

    #[test]
    fn item_ids_name_their_response() {
        let base = "0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            response_of_item(&format!("fc_{base}001")),
            Some(format!("resp_{base}"))
        );
        assert_eq!(
            response_of_item(&format!("msg_{base}i000")),
            Some(format!("resp_{base}"))
        );
        assert_eq!(response_of_item("msg_short"), None);
        assert_eq!(response_of_item("nounderscore"), None);
        assert_eq!(response_of_item(&format!("fc_{}", "z".repeat(48))), None);
    }
}
