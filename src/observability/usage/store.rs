//! The SQLite usage store and its writer thread.
//!
//! The request path only ever calls [`UsageWriter::record`], which is a
//! `try_send` on a bounded `std::sync::mpsc::sync_channel`: it never waits for
//! the disk, a lock held by the writer, or a busy database. One dedicated OS
//! thread owns the write connection, drains whatever is queued (up to
//! [`MAX_BATCH`] rows) and commits it in one transaction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};

use super::UsageError;
use crate::observability::UsageRecord;

/// Most rows written in one transaction.
pub const MAX_BATCH: usize = 512;

/// How long opening and each write wait for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// Schema migrations, in order; step `i` brings `PRAGMA user_version` to `i + 1`.
/// Append new steps; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: one row per finished request.
    "CREATE TABLE requests (
        id                 INTEGER PRIMARY KEY,
        ts_ms              INTEGER NOT NULL,
        request_id         TEXT    NOT NULL,
        mode               TEXT    NOT NULL,
        dialect            TEXT    NOT NULL,
        model              TEXT,
        stream             INTEGER NOT NULL,
        status             INTEGER NOT NULL,
        upstream_status    INTEGER,
        input_tokens       INTEGER NOT NULL,
        output_tokens      INTEGER NOT NULL,
        cache_read_tokens  INTEGER NOT NULL,
        cache_write_tokens INTEGER NOT NULL,
        cost_usd           REAL,
        duration_ms        REAL    NOT NULL,
        ttft_ms            REAL,
        proxy_ms           REAL    NOT NULL,
        abandoned          INTEGER NOT NULL,
        error              TEXT,
        credential         TEXT
    );
    CREATE INDEX requests_ts ON requests (ts_ms);",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// An open, migrated usage database (the write connection).
pub struct UsageStore {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for UsageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl UsageStore {
    /// Creates the parent directories, opens (or creates) the database in WAL
    /// mode and brings its schema up to date. A corrupt file, a file that is
    /// not a database, a database locked by another process for longer than
    /// the busy timeout, or one from a newer ccproxy is an error naming `path`.
    pub fn open(path: &Path) -> Result<UsageStore, UsageError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| UsageError::CreateDir {
                path: path.to_owned(),
                source,
            })?;
        }
        let err = |source| UsageError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // Reading the header here is what detects a corrupt or foreign file.
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        migrate(&mut conn, path)?;
        // A cheap structural check, so a damaged table is reported at startup
        // rather than on the first write.
        conn.query_row("SELECT count(*) FROM requests WHERE id < 0", [], |row| {
            row.get::<_, i64>(0)
        })
        .map_err(err)?;
        Ok(UsageStore {
            conn,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, UsageError> {
        user_version(&self.conn).map_err(UsageError::sqlite(&self.path))
    }

    /// Writes `records` in one transaction.
    pub fn insert(&mut self, records: &[UsageRecord]) -> Result<(), UsageError> {
        let err = UsageError::sqlite(&self.path);
        insert(&mut self.conn, records).map_err(err)
    }

    /// Moves the connection to a dedicated writer thread and returns the
    /// handle the request path uses. `capacity` bounds the queue (at least 1).
    ///
    /// If the thread cannot be started, the error is logged and the returned
    /// writer drops (and counts) every record.
    pub fn spawn_writer(self, capacity: usize) -> UsageWriter {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let shared = Arc::new(Shared::default());
        let path = Arc::new(self.path.clone());
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ccproxy-usage-writer".into())
            .spawn(move || writer_loop(self, rx, &thread_shared));
        if let Err(e) = spawned {
            tracing::error!(error = %e, path = %path.display(), "cannot start the usage writer thread; usage will not be recorded");
        }
        UsageWriter { tx, shared, path }
    }
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies the missing migration steps, each in its own immediate transaction
/// (so two processes opening the same new database do not both apply a step).
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), UsageError> {
    let err = UsageError::sqlite(path);
    let found = user_version(conn).map_err(UsageError::sqlite(path))?;
    if found > SCHEMA_VERSION {
        return Err(UsageError::TooNew {
            path: path.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let apply = |conn: &mut Connection| -> rusqlite::Result<()> {
        loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version = user_version(&tx)?;
            let Some(step) = usize::try_from(version)
                .ok()
                .and_then(|v| MIGRATIONS.get(v))
            else {
                return Ok(());
            };
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", version + 1)?;
            tx.commit()?;
        }
    };
    apply(conn).map_err(err)
}

/// Saturating conversion for SQLite's signed integers.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn insert(conn: &mut Connection, records: &[UsageRecord]) -> rusqlite::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO requests (ts_ms, request_id, mode, dialect, model, stream, status,
                upstream_status, input_tokens, output_tokens, cache_read_tokens,
                cache_write_tokens, cost_usd, duration_ms, ttft_ms, proxy_ms, abandoned,
                error, credential)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                ?17, ?18, ?19)",
        )?;
        for r in records {
            stmt.execute(params![
                r.ts_ms,
                r.request_id,
                r.mode,
                r.dialect,
                r.model,
                r.stream,
                r.status,
                r.upstream_status,
                int(r.tokens.input),
                int(r.tokens.output),
                int(r.tokens.cache_read),
                int(r.tokens.cache_write),
                r.cost_usd.filter(|c| c.is_finite()),
                finite(r.duration_ms),
                r.ttft_ms.filter(|t| t.is_finite()),
                finite(r.proxy_ms),
                r.abandoned,
                r.error,
                r.credential,
            ])?;
        }
    }
    tx.commit()
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

enum Msg {
    Record(Box<UsageRecord>),
    /// Acknowledged once everything queued before it is committed.
    Flush(mpsc::Sender<()>),
    /// Test hook: acknowledged, then the thread waits until unstalled.
    Stall(mpsc::Sender<()>),
}

#[derive(Default)]
struct Shared {
    dropped: AtomicU64,
    stalled: Mutex<bool>,
    unstalled: Condvar,
}

impl Shared {
    fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("ccproxy_usage_dropped_total").increment(n);
    }

    fn wait_unstalled(&self) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|e| e.into_inner());
        while *stalled {
            stalled = self
                .unstalled
                .wait(stalled)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The request path's handle on the usage store: cheap to clone, `Send + Sync`.
///
/// When every clone is dropped the writer thread writes what is queued and
/// exits. Call [`UsageWriter::flush_timeout`] at shutdown to wait for that.
#[derive(Clone)]
pub struct UsageWriter {
    tx: SyncSender<Msg>,
    shared: Arc<Shared>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for UsageWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageWriter")
            .field("path", &self.path)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl UsageWriter {
    /// Queues `record` for writing. Never blocks: when the queue is full (or
    /// the writer thread is gone) the record is dropped and counted in
    /// [`UsageWriter::dropped`] and `ccproxy_usage_dropped_total`.
    pub fn record(&self, record: UsageRecord) {
        match self.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.count_dropped(1);
            }
        }
    }

    /// Records dropped so far: queue full, writer gone, or a failed write.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The database file (the dashboard and report open it read-only).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks until everything queued before this call is committed (or has
    /// failed and been counted as dropped). Blocks while the writer is stalled.
    /// Do not call it on an async runtime thread; use `spawn_blocking`.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
    }

    /// Like [`UsageWriter::flush`], but gives up after `timeout`; returns
    /// whether the flush completed. For shutdown.
    pub fn flush_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::channel();
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        !matches!(
            ack_rx.recv_timeout(left),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    /// Test hook: `true` makes the writer thread stop taking records off the
    /// queue (returns once it has stopped, with the queue empty of earlier
    /// messages); `false` lets it go on.
    #[doc(hidden)]
    pub fn set_stalled(&self, stalled: bool) {
        {
            let mut flag = self
                .shared
                .stalled
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *flag == stalled {
                return;
            }
            *flag = stalled;
        }
        if stalled {
            let (ack_tx, ack_rx) = mpsc::channel();
            if self.tx.send(Msg::Stall(ack_tx)).is_ok() {
                let _ = ack_rx.recv();
            }
        } else {
            self.shared.unstalled.notify_all();
        }
    }
}

/// How long the writer gathers records into one transaction.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

fn writer_loop(mut store: UsageStore, rx: Receiver<Msg>, shared: &Shared) {
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(64);
    let mut acks: Vec<mpsc::Sender<()>> = Vec::new();
    while let Ok(first) = rx.recv() {
        // Collect for a short window so a busy proxy writes one transaction per
        // window, not one per request; a flush request ends the window at once.
        let deadline = std::time::Instant::now() + BATCH_WINDOW;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => batch.push(*r),
                Msg::Flush(ack) => acks.push(ack),
                Msg::Stall(ack) => {
                    write_batch(&mut store, &mut batch, &mut acks, shared);
                    let _ = ack.send(());
                    shared.wait_unstalled();
                }
            }
            if batch.len() >= MAX_BATCH || !acks.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            next = rx.recv_timeout(left).ok();
        }
        write_batch(&mut store, &mut batch, &mut acks, shared);
    }
    tracing::debug!(path = %store.path.display(), "usage writer stopped");
}

fn write_batch(
    store: &mut UsageStore,
    batch: &mut Vec<UsageRecord>,
    acks: &mut Vec<mpsc::Sender<()>>,
    shared: &Shared,
) {
    if !batch.is_empty() {
        if let Err(e) = store.insert(batch) {
            tracing::warn!(error = %e, rows = batch.len(), "cannot write usage records; dropping them");
            shared.count_dropped(u64::try_from(batch.len()).unwrap_or(u64::MAX));
        }
        batch.clear();
    }
    for ack in acks.drain(..) {
        let _ = ack.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<UsageWriter>();
    }

    #[test]
    fn zero_capacity_is_one() {
        let dir = tempfile::tempdir().unwrap();
        let w = UsageStore::open(&dir.path().join("u.db"))
            .unwrap()
            .spawn_writer(0);
        w.flush();
        assert_eq!(w.dropped(), 0);
    }
}
