//! Where the shared state lives: `database_url` (issue 14).
//!
//! - `sqlite://PATH` (or no setting: the usage database file) is the embedded default for one
//!   machine; every store keeps using its own SQLite code (`observability::usage::store`,
//!   `keys::store`, `response_store::sqlite`).
//! - `postgres://…` is the store several replicas share: [`pg`] holds the connection helpers, the
//!   versioned migrations (run at startup and by `ccproxy db migrate`), the replica heartbeat and
//!   the [`Link`] that says whether the database is reachable (`/health`, `/metrics`).
//!
//! This module imports nothing of the crate but `util`: the stores above point down to it.

pub mod pg;
pub mod seal;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A PostgreSQL connection string. Shown with its password hidden.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl(Arc<str>);

impl PgUrl {
    pub fn new(url: &str) -> PgUrl {
        PgUrl(Arc::from(url))
    }

    /// The connection string itself (never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`; key/value strings lose
/// their `password=…`.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (auth, host) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let host = host.split('?').next().unwrap_or(host);
        return match auth {
            Some(a) => {
                let user = a.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            None => format!("{scheme}://{host}"),
        };
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The configured store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by replicas.
    Postgres(PgUrl),
}

impl Database {
    /// `postgres://…`, `postgresql://…`, `sqlite://PATH` (or `sqlite:PATH`).
    pub fn parse(s: &str) -> Result<Database, String> {
        let t = s.trim();
        if t.starts_with("postgres://") || t.starts_with("postgresql://") {
            return Ok(Database::Postgres(PgUrl::new(t)));
        }
        if let Some(path) = t
            .strip_prefix("sqlite://")
            .or_else(|| t.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(
                    "database_url sqlite:// needs a path (sqlite:///var/lib/ccproxy/usage.db)"
                        .into(),
                );
            }
            return Ok(Database::Sqlite(PathBuf::from(path)));
        }
        Err(format!(
            "invalid database_url {:?}: expected postgres://… or sqlite://PATH",
            redact(t)
        ))
    }

    /// What and where, without secrets (`sqlite /path`, `postgres postgres://u:***@h/db`).
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(p) => format!("sqlite {}", p.display()),
            Database::Postgres(u) => format!("postgres {u}"),
        }
    }

    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Database::Sqlite(p) => Some(p),
            Database::Postgres(_) => None,
        }
    }

    pub fn postgres(&self) -> Option<&PgUrl> {
        match self {
            Database::Sqlite(_) => None,
            Database::Postgres(u) => Some(u),
        }
    }
}

/// Whether the shared database answers, as the stores that use it saw it last: one per
/// server, shared by the usage writer, the keys, the response store and the heartbeat.
pub struct Link {
    up: AtomicBool,
    /// Failures seen (each failed operation counts once).
    failures: AtomicU64,
    /// Reconnections after a failure.
    reconnects: AtomicU64,
    last_error: Mutex<Option<(String, i64)>>,
    /// Replicas that sent a heartbeat recently (this one included; 1 until known).
    replicas: std::sync::atomic::AtomicU32,
    /// This replica's id (random per server): its heartbeat row, its budget leases, the
    /// `replica` column of its usage rows.
    id: String,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            up: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            replicas: std::sync::atomic::AtomicU32::new(1),
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        }
    }
}

impl Link {
    pub fn new() -> Arc<Link> {
        metrics::gauge!("ccproxy_database_up").set(1.0);
        Arc::new(Link::default())
    }

    /// An operation succeeded.
    pub fn ok(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            metrics::gauge!("ccproxy_database_up").set(1.0);
            tracing::info!("the database is reachable again");
        }
    }

    /// An operation failed with `error` (its message must carry no secret).
    pub fn failed(&self, error: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("ccproxy_database_errors_total").increment(1);
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!("ccproxy_database_up").set(0.0);
            tracing::warn!(
                error,
                "the database is unreachable; serving from what is cached"
            );
        }
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((error.to_owned(), crate::util::time::now_ms()));
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.id
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Replicas seen alive in the heartbeat table (at least 1).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Acquire).max(1)
    }

    pub fn set_replicas(&self, n: u32) {
        self.replicas.store(n.max(1), Ordering::Release);
        metrics::gauge!("ccproxy_replicas").set(f64::from(n.max(1)));
    }

    /// For `/health`.
    pub fn health(&self) -> serde_json::Value {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        serde_json::json!({
            "up": self.is_up(),
            "replica": self.id,
            "replicas": self.replicas(),
            "failures": self.failures.load(Ordering::Relaxed),
            "reconnects": self.reconnects.load(Ordering::Relaxed),
            "last_error": last.as_ref().map(|l| l.0.clone()),
            "last_error_ms": last.map(|l| l.1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_hide_passwords() {
        let d =
            Database::parse("postgres://ccproxy:hunter2@db.internal:5432/ccproxy?sslmode=disable")
                .unwrap();
        assert_eq!(
            d.describe(),
            "postgres postgres://ccproxy:***@db.internal:5432/ccproxy"
        );
        assert!(!format!("{d:?}").contains("hunter2"));
        assert_eq!(
            Database::parse("sqlite:///tmp/u.db").unwrap(),
            Database::Sqlite("/tmp/u.db".into())
        );
        assert!(Database::parse("mysql://x").is_err());
        assert!(Database::parse("sqlite://").is_err());
        assert_eq!(
            redact("host=/tmp user=x password=s3cret"),
            "host=/tmp user=x password=***"
        );
    }
}
