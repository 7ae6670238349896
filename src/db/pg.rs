//! PostgreSQL: connections, the versioned schema, the replica heartbeat.
//!
//! Two clients of the same driver (`tokio-postgres`): the blocking `postgres` wrapper on the
//! stores' own threads (the usage writer, the keys' reload and listener, the response store's
//! writer and blocking reads: never on an async worker thread), and `tokio-postgres` itself where
//! the caller is async (the fleet-wide OAuth refresh lock).
//!
//! The schema is versioned in `ccproxy_schema`; each step runs in its own transaction under an
//! advisory lock, so replicas starting together apply each step once.

use std::sync::Arc;
use std::time::Duration;

use postgres::{Client, NoTls};

use super::{Link, PgUrl};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A replica is alive while its heartbeat is younger than this.
pub const REPLICA_TTL_MS: i64 = 10_000;

/// How often a replica writes its heartbeat (and re-counts the live replicas).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The notification channel of client-key changes.
pub const KEYS_CHANNEL: &str = "ccproxy_keys";

/// Advisory lock of the migrations.
const MIGRATION_LOCK: i64 = 0x6363_7072_6f78_7901; // "ccproxy" 01

/// Schema steps, in order; step `i` brings `ccproxy_schema.version` to `i + 1`. Append only.
pub const MIGRATIONS: &[&str] = &[
    // 1: the usage rows, stored responses and client keys (the SQLite schema at version 4).
    "CREATE TABLE requests (
        id                 BIGSERIAL PRIMARY KEY,
        ts_ms              BIGINT   NOT NULL,
        request_id         TEXT     NOT NULL,
        mode               TEXT     NOT NULL,
        dialect            TEXT     NOT NULL,
        model              TEXT,
        stream             BOOLEAN  NOT NULL,
        status             INTEGER  NOT NULL,
        upstream_status    INTEGER,
        input_tokens       BIGINT   NOT NULL,
        output_tokens      BIGINT   NOT NULL,
        cache_read_tokens  BIGINT   NOT NULL,
        cache_write_tokens BIGINT   NOT NULL,
        cost_usd           DOUBLE PRECISION,
        duration_ms        DOUBLE PRECISION NOT NULL,
        ttft_ms            DOUBLE PRECISION,
        proxy_ms           DOUBLE PRECISION NOT NULL,
        abandoned          BOOLEAN  NOT NULL,
        error              TEXT,
        credential         TEXT,
        client_key         TEXT,
        bucket             TEXT,
        replica            TEXT
    );
    CREATE INDEX requests_ts ON requests (ts_ms);
    CREATE INDEX requests_client_key ON requests (client_key, ts_ms);
    CREATE TABLE responses (
        id            TEXT   PRIMARY KEY,
        created_at    BIGINT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        input_items   TEXT   NOT NULL,
        response      TEXT   NOT NULL
    );
    CREATE INDEX responses_expiry ON responses (expires_at_ms);
    CREATE TABLE client_keys (
        name           TEXT    PRIMARY KEY,
        digest         BYTEA   NOT NULL UNIQUE,
        prefix         TEXT    NOT NULL,
        models         TEXT    NOT NULL DEFAULT '',
        modes          TEXT    NOT NULL DEFAULT '',
        rpm            BIGINT,
        tpm            BIGINT,
        max_concurrent BIGINT,
        budget_usd     DOUBLE PRECISION,
        period         TEXT,
        expires_at_ms  BIGINT,
        created_at_ms  BIGINT  NOT NULL,
        revoked_at_ms  BIGINT
    );",
    // 2: replicas (heartbeat), budget leases, shared credential state, sealed OAuth tokens.
    "CREATE TABLE replicas (
        id         TEXT   PRIMARY KEY,
        host       TEXT   NOT NULL,
        started_ms BIGINT NOT NULL,
        seen_ms    BIGINT NOT NULL
    );
    CREATE TABLE budget_leases (
        name         TEXT   NOT NULL,
        period_start BIGINT NOT NULL,
        replica      TEXT   NOT NULL,
        granted      DOUBLE PRECISION NOT NULL,
        used         DOUBLE PRECISION NOT NULL,
        updated_ms   BIGINT NOT NULL,
        PRIMARY KEY (name, period_start, replica)
    );
    CREATE TABLE credential_state (
        name              TEXT   PRIMARY KEY,
        cooldown_until_ms BIGINT,
        unified           TEXT,
        updated_ms        BIGINT NOT NULL
    );
    CREATE TABLE oauth_tokens (
        name          TEXT   PRIMARY KEY,
        sealed        BYTEA  NOT NULL,
        expires_at_ms BIGINT,
        version       BIGINT NOT NULL,
        updated_ms    BIGINT NOT NULL
    );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// A database operation failed; the message names the database (password hidden).
#[derive(Debug, Clone, thiserror::Error)]
#[error("database {url}: {cause}")]
pub struct DbError {
    pub url: String,
    pub cause: String,
}

impl DbError {
    pub fn of(url: &PgUrl) -> impl Fn(postgres::Error) -> DbError + '_ {
        move |e| DbError {
            url: url.to_string(),
            cause: cause_text(&e),
        }
    }
}

/// The error and its source (tokio-postgres puts the server's message in the source).
fn cause_text(e: &postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

fn config(url: &PgUrl) -> Result<postgres::Config, DbError> {
    let mut c: postgres::Config = url.expose().parse().map_err(DbError::of(url))?;
    c.connect_timeout(CONNECT_TIMEOUT);
    if c.get_application_name().is_none() {
        c.application_name("ccproxy");
    }
    Ok(c)
}

/// A blocking connection (call it off the async runtime).
pub fn connect(url: &PgUrl) -> Result<Client, DbError> {
    config(url)?.connect(NoTls).map_err(DbError::of(url))
}

/// An async connection; its driver runs as a task until the client is dropped.
pub async fn connect_async(url: &PgUrl) -> Result<tokio_postgres::Client, DbError> {
    let cfg: tokio_postgres::Config = url.expose().parse().map_err(DbError::of(url))?;
    let mut cfg = cfg;
    cfg.connect_timeout(CONNECT_TIMEOUT);
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(DbError::of(url))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Brings the schema up to date; returns (version found, version now).
pub fn migrate(client: &mut Client, url: &PgUrl) -> Result<(i64, i64), DbError> {
    let err = DbError::of(url);
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS ccproxy_schema (version BIGINT NOT NULL)")
        .map_err(&err)?;
    let found = version(client).map_err(&err)?;
    if found > SCHEMA_VERSION {
        return Err(DbError {
            url: url.to_string(),
            cause: format!(
                "schema version {found} is newer than this ccproxy knows ({SCHEMA_VERSION}); upgrade ccproxy"
            ),
        });
    }
    loop {
        let mut tx = client.transaction().map_err(&err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(&err)?;
        let v: i64 = tx
            .query_opt("SELECT version FROM ccproxy_schema", &[])
            .map_err(&err)?
            .map_or(0, |r| r.get(0));
        let Some(step) = usize::try_from(v).ok().and_then(|v| MIGRATIONS.get(v)) else {
            tx.commit().map_err(&err)?;
            return Ok((found, v));
        };
        tx.batch_execute(step).map_err(&err)?;
        tx.execute("DELETE FROM ccproxy_schema", &[])
            .map_err(&err)?;
        tx.execute(
            "INSERT INTO ccproxy_schema (version) VALUES ($1)",
            &[&(v + 1)],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        tracing::info!(database = %url, version = v + 1, "database schema migrated");
    }
}

fn version(client: &mut Client) -> Result<i64, postgres::Error> {
    Ok(client
        .query_opt("SELECT version FROM ccproxy_schema", &[])?
        .map_or(0, |r| r.get(0)))
}

/// Connects and migrates.
pub fn open(url: &PgUrl) -> Result<Client, DbError> {
    let mut c = connect(url)?;
    migrate(&mut c, url)?;
    Ok(c)
}

/// An advisory-lock key for `what` (a stable hash).
pub fn lock_key(what: &str) -> i64 {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(what.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// A blocking connection that reconnects when it is lost (with backoff), reporting to the
/// [`Link`]. For the stores' threads.
pub struct Conn {
    url: PgUrl,
    link: Arc<Link>,
    client: Option<Client>,
    next_try: Option<std::time::Instant>,
    backoff: Duration,
}

/// Backoff between reconnection attempts: doubles from this…
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// …up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl Conn {
    pub fn new(url: PgUrl, link: Arc<Link>, client: Option<Client>) -> Conn {
        Conn {
            url,
            link,
            client,
            next_try: None,
            backoff: BACKOFF_MIN,
        }
    }

    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Runs `f` on the connection (connecting first if need be). A failure drops the connection,
    /// so the next call reconnects (not before the backoff has passed).
    pub fn with<T>(
        &mut self,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        // A connection the server closed while idle fails on its first use: then once more on
        // a fresh one.
        let mut retry = true;
        loop {
            if self.client.as_ref().is_some_and(Client::is_closed) {
                self.client = None;
            }
            if self.client.is_none() {
                retry = false;
                self.reconnect()?;
            }
            let Some(client) = self.client.as_mut() else {
                return Err(DbError {
                    url: self.url.to_string(),
                    cause: "not connected".into(),
                });
            };
            match f(client) {
                Ok(v) => {
                    self.backoff = BACKOFF_MIN;
                    self.next_try = None;
                    self.link.ok();
                    return Ok(v);
                }
                Err(e) => {
                    let err = DbError::of(&self.url)(e);
                    // A lost connection is retried later; an SQL error keeps the connection.
                    let lost = self.client.as_ref().is_none_or(Client::is_closed)
                        || err.cause.contains("connection");
                    if !lost {
                        return Err(err);
                    }
                    self.client = None;
                    if retry {
                        retry = false;
                        continue;
                    }
                    self.next_try = Some(std::time::Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    self.link.failed(&err.to_string());
                    return Err(err);
                }
            }
        }
    }

    /// Connects (and migrates), unless waiting out the backoff after a failure.
    fn reconnect(&mut self) -> Result<(), DbError> {
        // Another store of this server reaching the database again ends the wait.
        if let Some(t) = self.next_try
            && std::time::Instant::now() < t
            && !self.link.is_up()
        {
            return Err(DbError {
                url: self.url.to_string(),
                cause: "unreachable (waiting to reconnect)".into(),
            });
        }
        match open(&self.url) {
            Ok(c) => {
                self.client = Some(c);
                Ok(())
            }
            Err(e) => {
                self.next_try = Some(std::time::Instant::now() + self.backoff);
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                self.link.failed(&e.to_string());
                Err(e)
            }
        }
    }
}

/// Starts the heartbeat thread: every [`HEARTBEAT_EVERY`] it upserts this replica's row and
/// counts the replicas alive ([`Link::replicas`], used to share rate limits).
pub fn spawn_heartbeat(url: PgUrl, link: Arc<Link>) {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    let started = crate::util::time::now_ms();
    let weak = Arc::downgrade(&link);
    drop(link);
    let spawned = std::thread::Builder::new()
        .name("ccproxy-heartbeat".into())
        .spawn(move || {
            let mut conn: Option<Conn> = None;
            loop {
                let Some(link) = weak.upgrade() else { return };
                let c = conn.get_or_insert_with(|| Conn::new(url.clone(), link.clone(), None));
                let now = crate::util::time::now_ms();
                let id = link.replica_id().to_owned();
                let r = c.with(|client| {
                    client.execute(
                        "INSERT INTO replicas (id, host, started_ms, seen_ms) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms",
                        &[&id, &host, &started, &now],
                    )?;
                    let n: i64 = client
                        .query_one(
                            "SELECT count(*) FROM replicas WHERE seen_ms > $1",
                            &[&(now - REPLICA_TTL_MS)],
                        )?
                        .get(0);
                    Ok(n)
                });
                if let Ok(n) = r {
                    link.set_replicas(u32::try_from(n).unwrap_or(1));
                }
                drop(link);
                std::thread::sleep(HEARTBEAT_EVERY);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the heartbeat thread; rate limits are not shared");
    }
}
