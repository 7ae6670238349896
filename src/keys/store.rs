//! The `client_keys` table of the usage database (migration 3): one row per key,
//! with the key's SHA-256 digest and display prefix, never the key. Spend and last
//! use are read from the usage rows, which carry the key's name.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

use super::{Budget, KeyRecord, Limits, Period, display_prefix, generate_secret, parse_mode};
use crate::observability::usage::{UsageError, UsageStore};

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error("client keys in {path}: {cause}")]
    Sqlite {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error("no client key named {0:?}")]
    NotFound(String),
    #[error("a client key named {0:?} already exists; revoke it first or choose another name")]
    Exists(String),
    #[error("client key {0:?} was revoked; create it again to use the name")]
    Revoked(String),
    #[error("{0}")]
    Invalid(String),
    #[error("client keys need the usage database, and usage recording is off")]
    NoDatabase,
    /// A PostgreSQL operation failed (the message names the database, password hidden).
    #[error("client keys: {0}")]
    Database(String),
}

impl From<crate::db::pg::DbError> for KeyError {
    fn from(e: crate::db::pg::DbError) -> KeyError {
        KeyError::Database(e.to_string())
    }
}

impl KeyError {
    /// The HTTP status this error answers with on `/api/keys`.
    pub fn status(&self) -> u16 {
        match self {
            KeyError::NotFound(_) => 404,
            KeyError::Exists(_) | KeyError::Revoked(_) => 409,
            KeyError::Invalid(_) => 400,
            KeyError::NoDatabase => 503,
            KeyError::Usage(_) | KeyError::Sqlite { .. } | KeyError::Database(_) => 500,
        }
    }
}

/// A key as listed (`keys list`, `GET /api/keys`): never the key itself.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub name: String,
    /// `ccp-AbCd…`.
    pub prefix: String,
    /// `active`, `revoked` or `expired`.
    pub status: &'static str,
    pub models: Vec<String>,
    pub modes: Vec<&'static str>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub budget_usd: Option<f64>,
    pub period: Option<&'static str>,
    /// Spend in the current budget period (this month without a budget).
    pub spend_usd: f64,
    pub period_start_ms: i64,
    pub period_reset_ms: i64,
    pub requests: u64,
    pub last_used_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A connection to the keys table: the SQLite usage database, or PostgreSQL.
pub struct KeyDb(Inner);

enum Inner {
    Sqlite(SqliteKeys),
    Pg(Box<crate::db::pg::Conn>),
}

/// The keys table of a SQLite usage database.
struct SqliteKeys {
    conn: Connection,
    path: PathBuf,
}

pub(super) fn join_modes(l: &Limits) -> String {
    l.modes
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(",")
}

fn opt_u32(v: Option<i64>) -> Option<u32> {
    v.and_then(|n| u32::try_from(n).ok())
}

/// Whether the store provably holds no client key, for a store that could not be opened:
/// nothing at the SQLite path (or a directory), or a file that SQLite reads without
/// a `client_keys` table or with an empty one (read-only, without migrating: a database of a
/// newer schema still answers). Anything else (a file that is not a database, a lock held past the busy timeout,
/// PostgreSQL out of reach) may hide keys, and the proxy then refuses requests until the keys
/// can be read ([`super::ClientKeys::enforced`]).
pub fn holds_no_keys(db: &crate::db::Database) -> bool {
    let Some(path) = db.sqlite_path() else {
        return false;
    };
    // Nothing there (or a parent that is not a directory), or a directory: no database. A
    // path that cannot even be looked at (no permission, a dangling link) may hide one.
    match std::fs::symlink_metadata(path) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return true;
        }
        Ok(m) if m.is_dir() => return true,
        Ok(_) => {}
        Err(_) => return false,
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = Connection::open_with_flags(path, flags) else {
        return false;
    };
    match conn
        .query_row("SELECT 1 FROM client_keys LIMIT 1", [], |_| Ok(()))
        .optional()
    {
        Ok(found) => found.is_none(),
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) => msg.starts_with("no such table"),
        Err(_) => false,
    }
}

impl KeyDb {
    /// Opens (creating and migrating) the usage database at `path`.
    pub fn open(path: &Path) -> Result<KeyDb, KeyError> {
        let conn = UsageStore::open(path)?.into_connection();
        Ok(KeyDb(Inner::Sqlite(SqliteKeys {
            conn,
            path: path.to_owned(),
        })))
    }

    /// Opens the configured store (PostgreSQL: connects and migrates; failures later reconnect
    /// with backoff and are reported to `link`).
    pub fn open_db(
        db: &crate::db::Database,
        link: &std::sync::Arc<crate::db::Link>,
    ) -> Result<KeyDb, KeyError> {
        match db {
            crate::db::Database::Sqlite(p) => KeyDb::open(p),
            crate::db::Database::Postgres(url) => {
                let client =
                    crate::db::pg::open(url).inspect_err(|e| link.failed(&e.to_string()))?;
                Ok(KeyDb(Inner::Pg(Box::new(crate::db::pg::Conn::new(
                    url.clone(),
                    link.clone(),
                    Some(client),
                )))))
            }
        }
    }

    /// Every key, revoked ones included, by name.
    pub fn all(&mut self) -> Result<Vec<KeyRecord>, KeyError> {
        match &mut self.0 {
            Inner::Sqlite(s) => s.all(),
            Inner::Pg(c) => Ok(c.with(super::pg::all)?),
        }
    }

    fn state(&mut self, name: &str) -> Result<Option<Option<i64>>, KeyError> {
        match &mut self.0 {
            Inner::Sqlite(s) => s.state(name),
            Inner::Pg(c) => Ok(c.with(|c| super::pg::state(c, name))?),
        }
    }

    /// Creates key `name` with `limits`; returns the key (the only time it is seen).
    /// A revoked key's name may be used again.
    pub fn create(&mut self, name: &str, limits: &Limits, now: i64) -> Result<String, KeyError> {
        if let Some(None) = self.state(name)? {
            return Err(KeyError::Exists(name.to_owned()));
        }
        let secret = generate_secret();
        let digest = super::digest(&secret);
        let prefix = display_prefix(&secret);
        match &mut self.0 {
            Inner::Sqlite(s) => s.create(name, &digest, &prefix, limits, now)?,
            Inner::Pg(c) => {
                c.with(|c| super::pg::create(c, name, &digest, &prefix, limits, now))?;
            }
        }
        Ok(secret)
    }

    /// Revokes key `name` (takes effect on a running server's next request, or within a
    /// second when changed from another process or replica).
    pub fn revoke(&mut self, name: &str, now: i64) -> Result<(), KeyError> {
        match self.state(name)? {
            None => Err(KeyError::NotFound(name.to_owned())),
            Some(Some(_)) => Ok(()),
            Some(None) => match &mut self.0 {
                Inner::Sqlite(s) => s.revoke(name, now),
                Inner::Pg(c) => Ok(c.with(|c| super::pg::revoke(c, name, now))?),
            },
        }
    }

    /// A new key for `name`, same settings; the old one stops working.
    pub fn rotate(&mut self, name: &str) -> Result<String, KeyError> {
        match self.state(name)? {
            None => return Err(KeyError::NotFound(name.to_owned())),
            Some(Some(_)) => return Err(KeyError::Revoked(name.to_owned())),
            Some(None) => {}
        }
        let secret = generate_secret();
        let digest = super::digest(&secret);
        let prefix = display_prefix(&secret);
        match &mut self.0 {
            Inner::Sqlite(s) => s.rotate(name, &digest, &prefix)?,
            Inner::Pg(c) => c.with(|c| super::pg::rotate(c, name, &digest, &prefix))?,
        }
        Ok(secret)
    }

    /// Key `name`'s finished requests since `since_ms`: (time, tokens, cost).
    pub fn rows_of(
        &mut self,
        name: &str,
        since_ms: i64,
    ) -> Result<Vec<(i64, u64, Option<f64>)>, KeyError> {
        match &mut self.0 {
            Inner::Sqlite(s) => s.rows_of(name, since_ms),
            Inner::Pg(c) => Ok(c.with(|c| super::pg::rows_of(c, name, since_ms))?),
        }
    }

    /// When key `name` last made a request.
    pub fn last_used(&mut self, name: &str) -> Result<Option<i64>, KeyError> {
        match &mut self.0 {
            Inner::Sqlite(s) => s.last_used(name),
            Inner::Pg(c) => Ok(c.with(|c| super::pg::last_used(c, name))?),
        }
    }

    /// PostgreSQL: reports this replica's spend under key `name`'s budget lease and renews it
    /// (`keys::pg::lease`); `None` with SQLite (one process: no lease).
    #[allow(clippy::too_many_arguments)]
    pub fn lease(
        &mut self,
        name: &str,
        period_start: i64,
        budget: f64,
        used: f64,
        lease: f64,
        now: i64,
    ) -> Result<Option<super::pg::Lease>, KeyError> {
        match &mut self.0 {
            Inner::Sqlite(_) => Ok(None),
            Inner::Pg(c) => {
                let replica = c.link().replica_id().to_owned();
                Ok(Some(c.with(|c| {
                    super::pg::lease(c, name, period_start, &replica, budget, used, lease, now)
                })?))
            }
        }
    }

    /// Key `name`'s spend and request count since `since_ms`.
    fn spend(&mut self, name: &str, since_ms: i64) -> Result<(f64, i64), KeyError> {
        match &mut self.0 {
            Inner::Sqlite(s) => s.spend(name, since_ms),
            Inner::Pg(c) => Ok(c.with(|c| super::pg::spend(c, name, since_ms))?),
        }
    }
}

impl SqliteKeys {
    fn err(&self) -> impl FnOnce(rusqlite::Error) -> KeyError + '_ {
        |cause| KeyError::Sqlite {
            path: self.path.clone(),
            cause,
        }
    }

    fn all(&mut self) -> Result<Vec<KeyRecord>, KeyError> {
        let read = || -> rusqlite::Result<Vec<KeyRecord>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT name, digest, prefix, models, modes, rpm, tpm, max_concurrent, budget_usd,
                    period, expires_at_ms, created_at_ms, revoked_at_ms
                 FROM client_keys ORDER BY name",
            )?;
            let rows = stmt.query_map([], |row| {
                let digest: Vec<u8> = row.get(1)?;
                let models: String = row.get(3)?;
                let modes: String = row.get(4)?;
                let budget_usd: Option<f64> = row.get(8)?;
                let period: Option<String> = row.get(9)?;
                let budget = budget_usd.map(|usd| Budget {
                    usd,
                    period: period
                        .as_deref()
                        .and_then(Period::parse)
                        .unwrap_or(Period::Month),
                });
                Ok(KeyRecord {
                    name: row.get(0)?,
                    digest: <[u8; 32]>::try_from(digest.as_slice()).unwrap_or([0; 32]),
                    prefix: row.get(2)?,
                    limits: Limits {
                        models: models
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                        modes: modes.split(',').filter_map(parse_mode).collect(),
                        rpm: opt_u32(row.get(5)?),
                        tpm: row
                            .get::<_, Option<i64>>(6)?
                            .and_then(|n| u64::try_from(n).ok()),
                        max_concurrent: opt_u32(row.get(7)?),
                        budget,
                        expires_at_ms: row.get(10)?,
                    },
                    created_at_ms: row.get(11)?,
                    revoked_at_ms: row.get(12)?,
                })
            })?;
            rows.collect()
        };
        let r = read();
        r.map_err(self.err())
    }

    fn state(&self, name: &str) -> Result<Option<Option<i64>>, KeyError> {
        self.conn
            .query_row(
                "SELECT revoked_at_ms FROM client_keys WHERE name = ?1",
                [name],
                |row| row.get::<_, Option<i64>>(0),
            )
            .optional()
            .map_err(self.err())
    }

    /// Creates key `name` with `limits`; returns the key (the only time it is seen).
    /// A revoked key's name may be used again.
    fn create(
        &mut self,
        name: &str,
        digest: &[u8; 32],
        prefix: &str,
        limits: &Limits,
        now: i64,
    ) -> Result<(), KeyError> {
        let budget = limits.budget;
        let r = self.conn.execute(
            "INSERT OR REPLACE INTO client_keys (name, digest, prefix, models, modes, rpm, tpm,
                max_concurrent, budget_usd, period, expires_at_ms, created_at_ms, revoked_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL)",
            params![
                name,
                digest.as_slice(),
                prefix,
                limits.models.join(","),
                join_modes(limits),
                limits.rpm,
                limits.tpm.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                limits.max_concurrent,
                budget.map(|b| b.usd),
                budget.map(|b| b.period.name()),
                limits.expires_at_ms,
                now,
            ],
        );
        r.map_err(self.err())?;
        Ok(())
    }

    fn revoke(&mut self, name: &str, now: i64) -> Result<(), KeyError> {
        let r = self.conn.execute(
            "UPDATE client_keys SET revoked_at_ms = ?2 WHERE name = ?1",
            params![name, now],
        );
        r.map_err(self.err())?;
        Ok(())
    }

    fn rotate(&mut self, name: &str, digest: &[u8; 32], prefix: &str) -> Result<(), KeyError> {
        let r = self.conn.execute(
            "UPDATE client_keys SET digest = ?2, prefix = ?3 WHERE name = ?1",
            params![name, digest.as_slice(), prefix],
        );
        r.map_err(self.err())?;
        Ok(())
    }

    fn spend(&mut self, name: &str, since_ms: i64) -> Result<(f64, i64), KeyError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(cost_usd), 0), COUNT(*) FROM requests
                 WHERE client_key = ?1 AND ts_ms >= ?2",
                params![name, since_ms],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(self.err())
    }

    fn rows_of(
        &mut self,
        name: &str,
        since_ms: i64,
    ) -> Result<Vec<(i64, u64, Option<f64>)>, KeyError> {
        let read = || -> rusqlite::Result<Vec<(i64, u64, Option<f64>)>> {
            let mut stmt = self.conn.prepare_cached(
                "SELECT ts_ms, input_tokens + output_tokens + cache_read_tokens + cache_write_tokens,
                    cost_usd
                 FROM requests WHERE client_key = ?1 AND ts_ms >= ?2
                    AND (upstream_status IS NOT NULL OR status < 400)
                 ORDER BY ts_ms",
            )?;
            let rows = stmt.query_map(params![name, since_ms], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    row.get::<_, Option<f64>>(2)?,
                ))
            })?;
            rows.collect()
        };
        let r = read();
        r.map_err(self.err())
    }

    fn last_used(&mut self, name: &str) -> Result<Option<i64>, KeyError> {
        let r = self.conn.query_row(
            "SELECT MAX(ts_ms) FROM requests WHERE client_key = ?1",
            [name],
            |row| row.get::<_, Option<i64>>(0),
        );
        r.map_err(self.err())
    }
}

impl KeyDb {
    /// Every key as listed, with its spend this period and last use, at `now`.
    pub fn list(&mut self, now: i64) -> Result<Vec<KeyView>, KeyError> {
        let records = self.all()?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let period = r.limits.budget.map_or(Period::Month, |b| b.period);
            let (start, reset) = period.bounds(now);
            let (spend, requests) = self.spend(&r.name, start)?;
            let last_used_ms = self.last_used(&r.name)?;
            let status = if r.revoked_at_ms.is_some() {
                "revoked"
            } else if r.limits.expires_at_ms.is_some_and(|e| now >= e) {
                "expired"
            } else {
                "active"
            };
            out.push(KeyView {
                prefix: format!("{}…", r.prefix),
                status,
                models: r.limits.models.clone(),
                modes: r.limits.modes.iter().map(|m| m.name()).collect(),
                rpm: r.limits.rpm,
                tpm: r.limits.tpm,
                max_concurrent: r.limits.max_concurrent,
                budget_usd: r.limits.budget.map(|b| b.usd),
                period: r.limits.budget.map(|b| b.period.name()),
                spend_usd: spend,
                period_start_ms: start,
                period_reset_ms: reset,
                requests: u64::try_from(requests).unwrap_or(0),
                last_used_ms,
                expires_at_ms: r.limits.expires_at_ms,
                created_at_ms: r.created_at_ms,
                revoked_at_ms: r.revoked_at_ms,
                name: r.name,
            });
        }
        Ok(out)
    }
}

/// `keys list` as a table.
pub fn render_table(keys: &[KeyView], now: i64) -> String {
    use crate::util::time::{format_relative, format_utc};
    let mut rows = vec![[
        "NAME".to_owned(),
        "KEY".to_owned(),
        "STATUS".to_owned(),
        "LIMITS".to_owned(),
        "SPEND".to_owned(),
        "LAST USED".to_owned(),
        "EXPIRES".to_owned(),
    ]];
    for k in keys {
        let mut limits = Vec::new();
        if !k.models.is_empty() {
            limits.push(format!("models {}", k.models.join(",")));
        }
        if !k.modes.is_empty() {
            limits.push(format!("modes {}", k.modes.join(",")));
        }
        if let Some(n) = k.rpm {
            limits.push(format!("rpm {n}"));
        }
        if let Some(n) = k.tpm {
            limits.push(format!("tpm {n}"));
        }
        if let Some(n) = k.max_concurrent {
            limits.push(format!("concurrent {n}"));
        }
        let spend = match (k.budget_usd, k.period) {
            (Some(b), Some(p)) => format!("${:.4} of ${b:.2}/{p}", k.spend_usd),
            _ => format!("${:.4} this month", k.spend_usd),
        };
        rows.push([
            k.name.clone(),
            k.prefix.clone(),
            k.status.to_owned(),
            if limits.is_empty() {
                "-".to_owned()
            } else {
                limits.join("; ")
            },
            spend,
            k.last_used_ms
                .map_or_else(|| "never".to_owned(), |t| format_relative(t - now)),
            k.expires_at_ms
                .map_or_else(|| "never".to_owned(), format_utc),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
