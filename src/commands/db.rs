//! `ccproxy db`: the configured store's schema (`migrate`) and moving a SQLite history into
//! PostgreSQL (`import --from sqlite://PATH`). Blocking: run off the async runtime.

use std::collections::HashSet;

use anyhow::Context as _;

use crate::cli::DbCommand;
use crate::db::Database;
use crate::observability::usage::UsageStore;
use crate::observability::usage::report::UsageReader;

/// Runs one `db` action on the store `db`; returns the exit code.
pub fn run(action: DbCommand, db: &Database) -> anyhow::Result<u8> {
    match action {
        DbCommand::Migrate => {
            match db {
                Database::Sqlite(path) => {
                    let store = UsageStore::open(path)?;
                    println!(
                        "{}: schema version {}",
                        db.describe(),
                        store.schema_version()?
                    );
                }
                Database::Postgres(url) => {
                    let mut c = crate::db::pg::connect(url)?;
                    let (from, to) = crate::db::pg::migrate(&mut c, url)?;
                    if from == to {
                        println!("{}: schema version {to} (up to date)", db.describe());
                    } else {
                        println!("{}: schema version {from} → {to}", db.describe());
                    }
                }
            }
            Ok(0)
        }
        DbCommand::Import { from } => {
            let Database::Postgres(url) = db else {
                anyhow::bail!(
                    "ccproxy db import copies into PostgreSQL: set database_url = \"postgres://…\" (or CCPROXY_DATABASE_URL) first"
                );
            };
            let source = match Database::parse(&from) {
                Ok(Database::Sqlite(p)) => p,
                Ok(Database::Postgres(_)) => anyhow::bail!("--from must be a SQLite database"),
                Err(_) => std::path::PathBuf::from(&from),
            };
            anyhow::ensure!(source.exists(), "{} does not exist", source.display());
            let summary = import(&source, url)?;
            println!("{summary}");
            Ok(0)
        }
    }
}

/// Copies usage rows (skipping request ids already there, so a second run adds nothing),
/// client keys (a name already there is kept) and live stored responses.
fn import(source: &std::path::Path, url: &crate::db::PgUrl) -> anyhow::Result<String> {
    let mut pg = crate::db::pg::open(url)?;
    let err = crate::db::pg::DbError::of(url);
    // Usage rows.
    let reader = UsageReader::open(source)?.context("the SQLite database has no usage table")?;
    let mut rows = reader.recent(None, usize::MAX)?;
    rows.reverse();
    let existing: HashSet<String> = match (rows.first(), rows.last()) {
        (Some(a), Some(b)) => pg
            .query(
                "SELECT request_id FROM requests WHERE ts_ms >= $1 AND ts_ms <= $2",
                &[&a.ts_ms, &b.ts_ms],
            )
            .map_err(&err)?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        _ => HashSet::new(),
    };
    let total = rows.len();
    let fresh: Vec<_> = rows
        .into_iter()
        .filter(|r| !existing.contains(&r.request_id))
        .collect();
    for chunk in fresh.chunks(1000) {
        crate::observability::usage::pg::insert(&mut pg, chunk, "import").map_err(&err)?;
    }
    // Client keys.
    let mut kdb = crate::keys::store::KeyDb::open(source)?;
    let mut keys = 0;
    for k in kdb.all()? {
        if crate::keys::pg::import(&mut pg, &k).map_err(&err)? {
            keys += 1;
        }
    }
    // Stored responses that have not expired.
    let conn =
        rusqlite::Connection::open_with_flags(source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", source.display()))?;
    let now = crate::util::time::now_ms();
    let mut stmt = conn.prepare(
        "SELECT id, created_at, expires_at_ms, input_items, response FROM responses
         WHERE expires_at_ms > ?1",
    )?;
    let mut responses = 0;
    let mut q = stmt.query([now])?;
    while let Some(r) = q.next()? {
        let (id, created, expires, input, response): (String, i64, i64, String, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        responses += pg
            .execute(
                "INSERT INTO responses (id, created_at, expires_at_ms, input_items, response)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&id, &created, &expires, &input, &response],
            )
            .map_err(&err)?;
    }
    Ok(format!(
        "imported {} usage rows ({} already there), {keys} client keys, {responses} stored responses from {} into {url}",
        fresh.len(),
        total - fresh.len(),
        source.display()
    ))
}
