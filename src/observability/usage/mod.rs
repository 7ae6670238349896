//! The usage store: every finished request as one row in an embedded SQLite
//! database, written off the request path; the price table that estimates
//! cost; the report behind `ccproxy usage`; the dashboard page and its JSON API.
//!
//! - [`store`]: [`UsageStore::open`] (directories, WAL, versioned migrations) and
//!   [`UsageStore::spawn_writer`] → [`UsageWriter`], a cheap, cloneable handle
//!   whose [`UsageWriter::record`] never blocks: a bounded queue feeds one
//!   writer thread that batches rows into transactions; a full queue drops the
//!   record and counts it (`ccproxy_usage_dropped_total`). A store that cannot
//!   be opened or written is reported, not hidden: [`UsageWriter::health`]
//!   (rows written and dropped, failed writes, the last error) feeds `/health`,
//!   `/api/usage` and the `ccproxy_usage_*` metrics.
//! - [`prices`]: [`PriceTable`], USD per million tokens by model-name prefix,
//!   overridable from the config file (`[prices."<prefix>"]`).
//! - [`report`]: read-only queries (totals, groups, percentiles, recent rows).
//! - [`dashboard`]: `GET /dashboard` (one self-contained HTML page) and
//!   `GET /api/usage` (JSON). Both read the database through a fresh
//!   read-only connection per call, so they need only the database path.

pub mod dashboard;
pub mod pg;
pub mod prices;
pub mod report;
pub mod store;

use std::path::PathBuf;

pub use prices::{Price, PriceError, PriceOverride, PriceTable};
pub use report::{GroupBy, Report};
pub use store::{UsageHealth, UsageStore, UsageWriter};

/// File name of the usage database inside ccproxy's data directory.
pub use crate::config::USAGE_DB_FILE as DB_FILE_NAME;

/// Default queue capacity of a [`UsageWriter`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 8192;

/// `$XDG_DATA_HOME/ccproxy/usage.db` (else `~/.local/share/ccproxy/usage.db`).
pub fn default_db_path() -> PathBuf {
    crate::config::UsageSettings::default().db
}

/// Why the usage database could not be opened, migrated, written or read.
/// Every variant names the database file.
/// The cause is part of the message and deliberately not the error's `source`:
/// a printed chain would say it twice (rusqlite's own source repeats it again).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot create the directory of usage database {path}: {cause}")]
    CreateDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("usage database {path}: {cause}")]
    Sqlite {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    /// A PostgreSQL operation failed (the message names the database, password hidden).
    #[error("usage {0}")]
    Database(String),
    #[error(
        "usage database {path} has schema version {found}, newer than this ccproxy knows ({known}); \
         upgrade ccproxy or point it at another database"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
}

impl UsageError {
    pub(crate) fn sqlite(path: &std::path::Path) -> impl FnOnce(rusqlite::Error) -> UsageError {
        let path = path.to_owned();
        move |cause| UsageError::Sqlite { path, cause }
    }
}
