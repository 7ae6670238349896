//! The response store in PostgreSQL (`database_url = "postgres://…"`): the `responses` table
//! every replica reads, so `previous_response_id` works whichever replica stored the response.

use std::sync::{Arc, Mutex};

use super::{Backend, StoreError, StoredResponse};
use crate::db::pg::Conn;
use crate::db::{Link, PgUrl};

/// The `responses` table through one reconnecting connection.
pub struct PgBackend {
    conn: Mutex<Conn>,
    shown: String,
}

impl PgBackend {
    /// Connects lazily: an unreachable database at startup is retried on use.
    pub fn new(url: &PgUrl, link: Arc<Link>) -> PgBackend {
        PgBackend {
            conn: Mutex::new(Conn::new(url.clone(), link, None)),
            shown: url.to_string(),
        }
    }

    fn with<T>(
        &self,
        f: impl FnMut(&mut postgres::Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .with(f)
            .map_err(|e| StoreError(e.to_string()))
    }
}

fn upsert(c: &mut impl postgres::GenericClient, r: &StoredResponse) -> Result<(), postgres::Error> {
    let created = i64::try_from(r.created_at).unwrap_or(i64::MAX);
    c.execute(
        "INSERT INTO responses (id, created_at, expires_at_ms, input_items, response)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at,
            expires_at_ms = EXCLUDED.expires_at_ms, input_items = EXCLUDED.input_items,
            response = EXCLUDED.response",
        &[
            &r.id,
            &created,
            &r.expires_at_ms,
            &r.input_items,
            &r.response,
        ],
    )
    .map(|_| ())
}

impl Backend for PgBackend {
    fn describe(&self) -> String {
        format!("postgres {}", self.shown)
    }

    fn put(&self, r: &StoredResponse) -> Result<(), StoreError> {
        self.with(|c| upsert(c, r))
    }

    /// One transaction for all (one commit, not one per response).
    fn put_all(&self, rs: &[Arc<StoredResponse>]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            for r in rs {
                upsert(&mut tx, r)?;
            }
            tx.commit()
        })
    }

    fn get(&self, id: &str, now_ms: i64) -> Result<Option<StoredResponse>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT id, created_at, expires_at_ms, input_items, response FROM responses
                 WHERE id = $1 AND expires_at_ms > $2",
                &[&id, &now_ms],
            )
        })
        .map(|row| {
            row.map(|row| StoredResponse {
                id: row.get(0),
                created_at: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                expires_at_ms: row.get(2),
                input_items: row.get(3),
                response: row.get(4),
            })
        })
    }

    fn delete(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            let live = c.query_opt(
                "DELETE FROM responses WHERE id = $1 RETURNING expires_at_ms > $2",
                &[&id, &now_ms],
            )?;
            Ok(live.is_some_and(|r| r.get::<_, bool>(0)))
        })
    }

    fn prune(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM responses WHERE expires_at_ms <= $1",
                &[&now_ms],
            )
        })
    }
}
