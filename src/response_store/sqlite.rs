//! The response store in the usage database: its `responses` table (migration 2 of
//! [`crate::observability::usage::store`]), one row per response.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Backend, StoreError, StoredResponse};
use crate::observability::usage::{UsageError, UsageStore};

/// The `responses` table of a usage database, through one connection.
pub struct SqliteBackend {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl SqliteBackend {
    /// Opens (creating and migrating if need be) the usage database at `path`.
    pub fn open(path: &Path) -> Result<SqliteBackend, UsageError> {
        let conn = UsageStore::open(path)?.into_connection();
        Ok(SqliteBackend {
            conn: Mutex::new(conn),
            path: path.to_owned(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |e| StoreError(format!("{}: {e}", self.path.display()))
    }
}

const INSERT: &str = "INSERT OR REPLACE INTO responses
    (id, created_at, expires_at_ms, input_items, response) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Writes `rs` with one statement (taking a cached statement and handing it back cost 1.2k
/// instructions a row).
fn insert<'a>(
    conn: &Connection,
    rs: impl IntoIterator<Item = &'a StoredResponse>,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(INSERT)?;
    for r in rs {
        stmt.execute(params![
            r.id,
            i64::try_from(r.created_at).unwrap_or(i64::MAX),
            r.expires_at_ms,
            r.input_items,
            r.response
        ])?;
    }
    Ok(())
}

impl Backend for SqliteBackend {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    fn put(&self, r: &StoredResponse) -> Result<(), StoreError> {
        insert(&self.conn(), [r]).map_err(self.err())
    }

    /// One transaction for all: a commit per response was most of a put's cost (callgrind:
    /// 31k instructions per response on the `full-responses` profile).
    fn put_all(&self, rs: &[Arc<StoredResponse>]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.err())?;
        insert(&tx, rs.iter().map(|r| &**r)).map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    fn get(&self, id: &str, now_ms: i64) -> Result<Option<StoredResponse>, StoreError> {
        self.conn()
            .prepare_cached(
                "SELECT id, created_at, expires_at_ms, input_items, response FROM responses
                 WHERE id = ?1 AND expires_at_ms > ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![id, now_ms], |row| {
                    Ok(StoredResponse {
                        id: row.get(0)?,
                        created_at: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                        expires_at_ms: row.get(2)?,
                        input_items: row.get(3)?,
                        response: row.get(4)?,
                    })
                })
                .optional()
            })
            .map_err(self.err())
    }

    fn delete(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let conn = self.conn();
        let live = conn
            .execute(
                "DELETE FROM responses WHERE id = ?1 AND expires_at_ms > ?2",
                params![id, now_ms],
            )
            .map_err(self.err())?;
        // An expired row goes too (it would be pruned anyway).
        conn.execute("DELETE FROM responses WHERE id = ?1", params![id])
            .map_err(self.err())?;
        Ok(live > 0)
    }

    fn prune(&self, now_ms: i64) -> Result<u64, StoreError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM responses WHERE expires_at_ms <= ?1",
                params![now_ms],
            )
            .map_err(self.err())?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, expires_at_ms: i64) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            created_at: 7,
            expires_at_ms,
            input_items: r#"[{"id":"msg_1"}]"#.into(),
            response: r#"{"id":"x"}"#.into(),
        }
    }

    #[test]
    fn put_all_writes_every_row_in_one_transaction_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBackend::open(&dir.path().join("usage.db")).unwrap();
        let rows: Vec<Arc<StoredResponse>> = (0..50)
            .map(|i| Arc::new(row(&format!("resp_{i}"), 1_000)))
            .collect();
        b.put_all(&rows).unwrap();
        for r in &rows {
            assert_eq!(b.get(&r.id, 500).unwrap().as_ref(), Some(&**r));
        }
        // A row that cannot be written (a trigger refuses it) takes its batch with it.
        b.conn()
            .execute_batch(
                "CREATE TRIGGER no_bad BEFORE INSERT ON responses WHEN NEW.id = 'resp_bad'
                 BEGIN SELECT RAISE(ABORT, 'bad row'); END;",
            )
            .unwrap();
        let batch = vec![
            Arc::new(row("resp_x", 1_000)),
            Arc::new(row("resp_bad", 1_000)),
        ];
        assert!(b.put_all(&batch).unwrap_err().0.contains("bad row"));
        assert_eq!(b.get("resp_x", 500).unwrap(), None);
        b.put_all(&batch[..1]).unwrap();
        assert!(b.get("resp_x", 500).unwrap().is_some());
    }

    #[test]
    fn put_get_delete_prune() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.db");
        let b = SqliteBackend::open(&path).unwrap();
        assert!(b.describe().contains("usage.db"));
        b.put(&row("resp_a", 1_000)).unwrap();
        b.put(&row("resp_b", 10)).unwrap();
        assert_eq!(b.get("resp_a", 500).unwrap(), Some(row("resp_a", 1_000)));
        assert_eq!(b.get("resp_b", 500).unwrap(), None, "expired");
        assert_eq!(b.get("resp_c", 0).unwrap(), None);
        assert!(!b.delete("resp_b", 500).unwrap(), "expired counts as gone");
        b.put(&row("resp_b", 10)).unwrap();
        assert_eq!(b.prune(500).unwrap(), 1);
        assert!(b.delete("resp_a", 500).unwrap());
        assert!(!b.delete("resp_a", 500).unwrap());
        // Reopening keeps rows (and migrates nothing twice).
        b.put(&row("resp_k", i64::MAX)).unwrap();
        drop(b);
        let b = SqliteBackend::open(&path).unwrap();
        assert!(b.get("resp_k", 0).unwrap().is_some());
    }
}
