//! The SQLite usage store and its writer thread.
//!
//! The request path only ever calls [`UsageWriter::record`], which is a
//! `try_send` on a bounded `std::sync::mpsc::sync_channel`: it never waits for
//! the disk, a lock held by the writer, or a busy database. One dedicated OS
//! thread owns the write connection, drains whatever is queued (up to
//! [`MAX_BATCH`] rows) and commits it in one transaction.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::UsageError;
use crate::observability::UsageRecord;
use crate::util::time::now_ms;

/// Most rows written in one transaction.
pub const MAX_BATCH: usize = 512;

/// How long opening and each write wait for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// The page size of a new store file. Each WAL frame is one page and costs two `pwrite`s (its
/// header, its page), so the system time of a batch follows the number of pages it dirties:
/// 16 KiB pages take a quarter of the calls of SQLite's default 4 KiB for the same rows.
const PAGE_SIZE: i64 = 16384;

/// The page cache of a store's connection: 512 KiB (SQLite reads a negative `cache_size` as KiB).
const PAGE_CACHE_KIB: i64 = -512;

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
    // 2: the Responses API store (response_store::sqlite).
    "CREATE TABLE responses (
        id            TEXT    PRIMARY KEY,
        created_at    INTEGER NOT NULL,
        expires_at_ms INTEGER NOT NULL,
        input_items   TEXT    NOT NULL,
        response      TEXT    NOT NULL
    );
    CREATE INDEX responses_expiry ON responses (expires_at_ms);",
    // 3: client keys (keys::store; the digest, never the key) and the key of each request.
    "CREATE TABLE client_keys (
        name           TEXT    PRIMARY KEY,
        digest         BLOB    NOT NULL UNIQUE,
        prefix         TEXT    NOT NULL,
        models         TEXT    NOT NULL DEFAULT '',
        modes          TEXT    NOT NULL DEFAULT '',
        rpm            INTEGER,
        tpm            INTEGER,
        max_concurrent INTEGER,
        budget_usd     REAL,
        period         TEXT,
        expires_at_ms  INTEGER,
        created_at_ms  INTEGER NOT NULL,
        revoked_at_ms  INTEGER
    );
    ALTER TABLE requests ADD COLUMN client_key TEXT;
    CREATE INDEX requests_client_key ON requests (client_key, ts_ms);",
    // 4: what each request was billed to (a subscription's plan or extra usage, an API key).
    "ALTER TABLE requests ADD COLUMN bucket TEXT;",
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
            std::fs::create_dir_all(dir).map_err(|cause| UsageError::CreateDir {
                path: path.to_owned(),
                cause,
            })?;
        }
        let err = |cause| UsageError::Sqlite {
            path: path.to_owned(),
            cause,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
        // A new file gets pages of PAGE_SIZE (an existing one keeps its own): a batch of rows
        // is fewer, larger page writes, to the WAL and again at checkpoint.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(err)?;
        // Reading the header here is what detects a corrupt or foreign file.
        let _mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // Rows are appended (ids and times only grow; the keys table is small), so a write
        // touches the last pages of the table and of each index: 512 KiB of page cache holds
        // them. SQLite's default (2 MiB per connection) stayed resident after a burst of writes.
        conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)
            .map_err(err)?;
        migrate(&mut conn, path)?;
        partial_client_key_index(&conn).map_err(err)?;
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

    /// The open, migrated connection (the response store keeps its own).
    pub fn into_connection(self) -> Connection {
        self.conn
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
        let db = crate::db::Database::Sqlite(self.path.clone());
        spawn_sink(Box::new(self), db, capacity)
    }
}

/// Where the writer thread puts rows: the SQLite file, or PostgreSQL
/// (`observability::usage::pg`).
pub trait Sink: Send + 'static {
    /// Writes `records` in one transaction; the error names the store.
    fn insert(&mut self, records: &[UsageRecord]) -> Result<(), String>;
    /// Whether rows of a failed write are kept and retried (a shared database that may come
    /// back) rather than dropped.
    fn retries(&self) -> bool {
        false
    }
}

impl Sink for UsageStore {
    fn insert(&mut self, records: &[UsageRecord]) -> Result<(), String> {
        UsageStore::insert(self, records).map_err(|e| e.to_string())
    }
}

/// Starts the writer thread over `sink`, the store `db`.
pub fn spawn_sink(sink: Box<dyn Sink>, db: crate::db::Database, capacity: usize) -> UsageWriter {
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let shared = Arc::new(Shared::new(None));
    let path = Arc::new(shown_path(&db));
    let db = Arc::new(db);
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("ccproxy-usage-writer".into())
        .spawn(move || writer_loop(sink, rx, &thread_shared));
    let thread = match spawned {
        Ok(handle) => Some(handle.thread().clone()),
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "cannot start the usage writer thread; usage will not be recorded");
            shared.fail(format!("cannot start the usage writer thread: {e}"));
            None
        }
    };
    UsageWriter {
        tx: Some(tx),
        thread,
        shared,
        path,
        db,
    }
}

/// What `/health` names as the store: the file, or the URL without its password.
fn shown_path(db: &crate::db::Database) -> PathBuf {
    match db {
        crate::db::Database::Sqlite(p) => p.clone(),
        crate::db::Database::Postgres(u) => PathBuf::from(u.to_string()),
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

/// Makes the client-key index hold only rows that have a key: a lookup by key is its only use
/// (`client_key = ?` implies `IS NOT NULL`, so SQLite still uses it), and a row without a key,
/// the common case, no longer pays for an index insert. Not a versioned migration: it changes
/// nothing an older build relies on, and a version bump would make older builds refuse the
/// file (and, with it, the client keys it holds). Idempotent; safe against another process
/// doing the same at once (an immediate transaction, `IF EXISTS`).
fn partial_client_key_index(conn: &Connection) -> rusqlite::Result<()> {
    const PARTIAL: &str = "CREATE INDEX requests_client_key ON requests (client_key, ts_ms) \
                           WHERE client_key IS NOT NULL";
    let current: Option<String> = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'requests_client_key'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if current.as_deref() == Some(PARTIAL) {
        return Ok(());
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         DROP INDEX IF EXISTS requests_client_key;
         {PARTIAL};
         COMMIT;"
    ))
}

/// Saturating conversion for SQLite's signed integers.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The columns of a usage row, in the order [`bind_row`] binds them.
const COLUMNS: &str = "ts_ms, request_id, mode, dialect, model, stream, status, upstream_status,
    input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd, duration_ms,
    ttft_ms, proxy_ms, abandoned, error, credential, bucket, client_key";
const COLUMN_COUNT: usize = 21;

/// Rows per `INSERT` statement, largest first: a batch is written as statements of these
/// sizes, so the per-statement work (opening the table and its indexes, halting, resetting)
/// is shared by eight rows. Larger statements cost more than they save: their bound texts
/// no longer fit the connection's lookaside memory and each copy goes to `malloc`
/// (callgrind, passthrough, instructions per request: 102.0k with one row per statement and
/// the full client-key index; with the partial index, 8 rows 99.2k, 16 rows 100.0k, 64 rows
/// 102.3k).
const ROWS_PER_STATEMENT: [usize; 2] = [8, 1];

/// `INSERT OR ROLLBACK INTO requests (…) VALUES (?, …), …` for `rows` rows.
///
/// `OR ROLLBACK`: a batch is written whole or not at all (a failed statement fails its
/// transaction, which is then dropped), so a statement need not be undone alone. With the
/// default `ABORT`, SQLite kept a statement journal for every multi-row statement, a copy of
/// each page it changed: 3.6k instructions per row with 16 KiB pages.
fn insert_sql(rows: usize) -> String {
    let tuple = format!("({})", vec!["?"; COLUMN_COUNT].join(","));
    format!(
        "INSERT OR ROLLBACK INTO requests ({COLUMNS}) VALUES {}",
        vec![tuple; rows].join(",")
    )
}

fn insert(conn: &mut Connection, records: &[UsageRecord]) -> rusqlite::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut rest = records;
    for size in ROWS_PER_STATEMENT {
        if rest.len() < size {
            continue;
        }
        let mut stmt = tx.prepare_cached(&insert_sql(size))?;
        while rest.len() >= size {
            let (now, later) = rest.split_at(size);
            for (i, r) in now.iter().enumerate() {
                bind_row(&mut stmt, i * COLUMN_COUNT, r)?;
            }
            stmt.raw_execute()?;
            rest = later;
        }
    }
    tx.commit()
}

/// Binds one row's values to parameters `base + 1 ..= base + COLUMN_COUNT`.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    base: usize,
    r: &UsageRecord,
) -> rusqlite::Result<()> {
    let mut n = base;
    let mut bind = |value: &dyn rusqlite::ToSql| {
        n += 1;
        stmt.raw_bind_parameter(n, value)
    };
    bind(&r.ts_ms)?;
    bind(&r.request_id)?;
    bind(&r.mode)?;
    bind(&r.dialect)?;
    bind(&r.model)?;
    bind(&r.stream)?;
    bind(&r.status)?;
    bind(&r.upstream_status)?;
    bind(&int(r.tokens.input))?;
    bind(&int(r.tokens.output))?;
    bind(&int(r.tokens.cache_read))?;
    bind(&int(r.tokens.cache_write))?;
    bind(&r.cost_usd.filter(|c| c.is_finite()))?;
    bind(&finite(r.duration_ms))?;
    bind(&r.ttft_ms.filter(|t| t.is_finite()))?;
    bind(&finite(r.proxy_ms))?;
    bind(&r.abandoned)?;
    bind(&r.error)?;
    bind(&r.credential)?;
    bind(&r.bucket)?;
    bind(&r.client_key)?;
    debug_assert_eq!(n - base, COLUMN_COUNT);
    Ok(())
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

struct Shared {
    /// Rows committed.
    written: AtomicU64,
    /// Rows lost: queue full, writer gone, a failed write, or no store at all.
    dropped: AtomicU64,
    /// Transactions that failed.
    write_errors: AtomicU64,
    /// Rows kept after a failed write, waiting for the database to come back.
    queued: AtomicU64,
    /// The last write succeeded (and the store opened).
    healthy: AtomicBool,
    /// The store could not be opened: every record is dropped.
    open_error: Option<String>,
    /// The last failure and when it happened (epoch ms).
    last_error: Mutex<Option<(String, i64)>>,
    stalled: Mutex<bool>,
    unstalled: Condvar,
}

impl Shared {
    fn new(open_error: Option<String>) -> Shared {
        // Registered at zero, so `/metrics` shows them before anything happens.
        metrics::counter!("ccproxy_usage_rows_written_total").increment(0);
        metrics::counter!("ccproxy_usage_dropped_total").increment(0);
        metrics::counter!("ccproxy_usage_write_errors_total").increment(0);
        metrics::gauge!("ccproxy_usage_rows_queued").set(0.0);
        let healthy = open_error.is_none();
        metrics::gauge!("ccproxy_usage_store_healthy").set(if healthy { 1.0 } else { 0.0 });
        let last_error = Mutex::new(open_error.clone().map(|e| (e, now_ms())));
        Shared {
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            healthy: AtomicBool::new(healthy),
            open_error,
            last_error,
            stalled: Mutex::new(false),
            unstalled: Condvar::new(),
        }
    }

    fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("ccproxy_usage_dropped_total").increment(n);
    }

    fn count_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("ccproxy_usage_rows_written_total").increment(n);
        if !self.healthy.swap(true, Ordering::Relaxed) {
            metrics::gauge!("ccproxy_usage_store_healthy").set(1.0);
        }
    }

    /// A failed write (or a writer that could not start).
    fn fail(&self, message: String) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ccproxy_usage_write_errors_total").increment(1);
        self.healthy.store(false, Ordering::Relaxed);
        metrics::gauge!("ccproxy_usage_store_healthy").set(0.0);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((message, now_ms()));
    }

    fn set_queued(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        if self.queued.swap(n, Ordering::Relaxed) != n {
            metrics::gauge!("ccproxy_usage_rows_queued").set(n as f64);
        }
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
    /// `None`: the store could not be opened ([`UsageWriter::unavailable`]).
    tx: Option<SyncSender<Msg>>,
    /// The writer thread, unparked by a flush (records wait for the batch window's end).
    thread: Option<std::thread::Thread>,
    shared: Arc<Shared>,
    path: Arc<PathBuf>,
    db: Arc<crate::db::Database>,
}

/// The state of a usage store, as `/health` and `/api/usage` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageHealth {
    /// Usage recording is on (`false`: `usage = false` or `--no-usage`).
    pub enabled: bool,
    /// The database in effect.
    pub path: PathBuf,
    /// The store opened and its last write succeeded.
    pub healthy: bool,
    /// The last failure (opening or writing), naming the database.
    pub last_error: Option<String>,
    /// When it happened, epoch ms.
    pub last_error_ms: Option<i64>,
    pub rows_written: u64,
    /// Rows lost: queue full, failed writes, or a store that could not be opened.
    pub rows_dropped: u64,
    /// Failed write transactions.
    pub write_errors: u64,
    /// Rows kept while the (shared) database is unreachable, written when it is back.
    pub rows_queued: u64,
}

impl UsageHealth {
    /// The state shown when usage recording is turned off.
    pub fn disabled(path: &Path) -> UsageHealth {
        UsageHealth {
            enabled: false,
            path: path.to_owned(),
            healthy: true,
            last_error: None,
            last_error_ms: None,
            rows_written: 0,
            rows_dropped: 0,
            write_errors: 0,
            rows_queued: 0,
        }
    }
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
    /// The handle of a store that could not be opened: it writes nothing,
    /// counts every record as dropped, and reports `error` as unhealthy.
    pub fn unavailable(path: &Path, error: &UsageError) -> UsageWriter {
        UsageWriter {
            tx: None,
            thread: None,
            shared: Arc::new(Shared::new(Some(error.to_string()))),
            path: Arc::new(path.to_owned()),
            db: Arc::new(crate::db::Database::Sqlite(path.to_owned())),
        }
    }

    /// Why the store could not be opened (`None`: it is open).
    pub fn open_error(&self) -> Option<&str> {
        self.shared.open_error.as_deref()
    }

    /// Counters and the last failure, for `/health` and `/api/usage`.
    pub fn health(&self) -> UsageHealth {
        let last = self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (last_error, last_error_ms) = match last {
            Some((e, at)) => (Some(e), Some(at)),
            None => (None, None),
        };
        UsageHealth {
            enabled: true,
            path: self.path.to_path_buf(),
            healthy: self.shared.healthy.load(Ordering::Relaxed),
            last_error,
            last_error_ms,
            rows_written: self.shared.written.load(Ordering::Relaxed),
            rows_dropped: self.dropped(),
            write_errors: self.shared.write_errors.load(Ordering::Relaxed),
            rows_queued: self.shared.queued.load(Ordering::Relaxed),
        }
    }

    /// Queues `record` for writing. Never blocks: when the queue is full (or
    /// the writer thread is gone, or the store never opened) the record is
    /// dropped and counted in [`UsageWriter::dropped`] and `ccproxy_usage_dropped_total`.
    pub fn record(&self, record: UsageRecord) {
        let Some(tx) = &self.tx else {
            self.shared.count_dropped(1);
            return;
        };
        match tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.count_dropped(1);
            }
        }
    }

    fn unpark(&self) {
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }

    /// Records dropped so far: queue full, writer gone, or a failed write.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The database file (the dashboard and report open it read-only); for PostgreSQL, its
    /// URL without the password.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store the rows go to.
    pub fn database(&self) -> &crate::db::Database {
        &self.db
    }

    /// Blocks until everything queued before this call is committed (or has
    /// failed and been counted as dropped). Blocks while the writer is stalled.
    /// Do not call it on an async runtime thread; use `spawn_blocking`.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (ack_tx, ack_rx) = mpsc::channel();
        if tx.send(Msg::Flush(ack_tx)).is_ok() {
            self.unpark();
            let _ = ack_rx.recv();
        }
    }

    /// Like [`UsageWriter::flush`], but gives up after `timeout`; returns
    /// whether the flush completed. For shutdown.
    pub fn flush_timeout(&self, timeout: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let deadline = Instant::now() + timeout;
        let (ack_tx, ack_rx) = mpsc::channel();
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = back;
                    self.unpark();
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        self.unpark();
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
            let Some(tx) = &self.tx else { return };
            let (ack_tx, ack_rx) = mpsc::channel();
            if tx.send(Msg::Stall(ack_tx)).is_ok() {
                self.unpark();
                let _ = ack_rx.recv();
            }
        } else {
            self.shared.unstalled.notify_all();
        }
    }
}

/// How long the writer gathers records into one transaction.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

/// The longest the writer sleeps before it looks at the queue again within a window.
const BATCH_SLICE: Duration = Duration::from_millis(25);

/// Rows kept while a retrying sink's database is unreachable; older ones are dropped (and
/// counted) past this.
pub const BACKLOG_CAPACITY: usize = 100_000;

/// How often a retrying sink with rows kept tries again.
const RETRY_EVERY: Duration = Duration::from_millis(500);

fn writer_loop(mut sink: Box<dyn Sink>, rx: Receiver<Msg>, shared: &Shared) {
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(64);
    let mut acks: Vec<mpsc::Sender<()>> = Vec::new();
    let mut backlog: std::collections::VecDeque<UsageRecord> = std::collections::VecDeque::new();
    loop {
        let first = if backlog.is_empty() {
            match crate::util::memory::recv(&rx) {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(RETRY_EVERY) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        // Collect for a short window so a busy proxy writes one transaction per window, not one
        // per request; a flush request (which unparks this thread) ends the window at once.
        // Between drains the thread sleeps in slices instead of waiting on the channel, so a
        // record's send never wakes it: one wake-up per slice, not one per request.
        let deadline = std::time::Instant::now() + BATCH_WINDOW;
        let mut next = first;
        'window: loop {
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Record(r) => batch.push(*r),
                    Msg::Flush(ack) => acks.push(ack),
                    Msg::Stall(ack) => {
                        write_batch(sink.as_mut(), &mut batch, &mut backlog, &mut acks, shared);
                        let _ = ack.send(());
                        shared.wait_unstalled();
                    }
                }
                if batch.len() >= MAX_BATCH || !acks.is_empty() {
                    break 'window;
                }
                next = rx.try_recv().ok();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::park_timeout(left.min(BATCH_SLICE));
            next = rx.try_recv().ok();
        }
        write_batch(sink.as_mut(), &mut batch, &mut backlog, &mut acks, shared);
    }
    if !backlog.is_empty() {
        write_batch(sink.as_mut(), &mut batch, &mut backlog, &mut acks, shared);
    }
    tracing::debug!("usage writer stopped");
}

fn write_batch(
    sink: &mut dyn Sink,
    batch: &mut Vec<UsageRecord>,
    backlog: &mut std::collections::VecDeque<UsageRecord>,
    acks: &mut Vec<mpsc::Sender<()>>,
    shared: &Shared,
) {
    // Rows kept from failed writes go first, in order, a batch at a time.
    while !backlog.is_empty() {
        let n = backlog.len().min(MAX_BATCH);
        let rows: Vec<UsageRecord> = backlog.iter().take(n).cloned().collect();
        match sink.insert(&rows) {
            Ok(()) => {
                backlog.drain(..n);
                shared.count_written(u64::try_from(n).unwrap_or(u64::MAX));
                shared.set_queued(backlog.len());
            }
            Err(e) => {
                shared.fail(e);
                backlog.extend(batch.drain(..));
                trim_backlog(backlog, shared);
                break;
            }
        }
    }
    if !batch.is_empty() {
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        match sink.insert(batch) {
            Ok(()) => shared.count_written(n),
            Err(e) if sink.retries() => {
                tracing::warn!(error = %e, rows = batch.len(), "cannot write usage records; keeping them until the database is back");
                shared.fail(e);
                backlog.extend(batch.drain(..));
                trim_backlog(backlog, shared);
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = batch.len(), "cannot write usage records; dropping them");
                shared.count_dropped(n);
                shared.fail(e);
            }
        }
        batch.clear();
    }
    for ack in acks.drain(..) {
        let _ = ack.send(());
    }
}

/// Drops the oldest kept rows past [`BACKLOG_CAPACITY`] (counted).
fn trim_backlog(backlog: &mut std::collections::VecDeque<UsageRecord>, shared: &Shared) {
    let over = backlog.len().saturating_sub(BACKLOG_CAPACITY);
    if over > 0 {
        backlog.drain(..over);
        shared.count_dropped(u64::try_from(over).unwrap_or(u64::MAX));
    }
    shared.set_queued(backlog.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<UsageWriter>();
    }

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.pragma_query_value(None, name, |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_store_has_large_pages_and_a_small_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = UsageStore::open(&dir.path().join("u.db")).unwrap();
        assert_eq!(pragma(&store.conn, "page_size"), PAGE_SIZE);
        assert_eq!(pragma(&store.conn, "cache_size"), PAGE_CACHE_KIB);
        let rows: Vec<UsageRecord> = (0..20)
            .map(|i| UsageRecord {
                ts_ms: 1_000 + i,
                ..UsageRecord::default()
            })
            .collect();
        store.insert(&rows).unwrap();
        let n: i64 = store
            .conn
            .query_row("SELECT count(*) FROM requests", [], |row| row.get(0))
            .unwrap();
        assert_eq!(n, 20);
    }

    #[test]
    fn a_store_made_with_small_pages_keeps_them_and_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "page_size", 4096).unwrap();
            let _: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .unwrap();
        }
        let mut store = UsageStore::open(&path).unwrap();
        store
            .insert(&[UsageRecord {
                ts_ms: 5,
                ..UsageRecord::default()
            }])
            .unwrap();
        drop(store);
        let store = UsageStore::open(&path).unwrap();
        assert_eq!(pragma(&store.conn, "page_size"), 4096);
        let n: i64 = store
            .conn
            .query_row("SELECT count(*) FROM requests WHERE ts_ms = 5", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(n, 1);
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
