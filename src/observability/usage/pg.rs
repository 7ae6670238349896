//! The usage store in PostgreSQL (`database_url = "postgres://…"`): the writer thread's
//! [`PgSink`] and the read side of `ccproxy usage`, `/api/usage` and the dashboard.
//!
//! The sink keeps the rows of a failed write ([`Sink::retries`]): the writer thread holds them
//! (bounded by `store::BACKLOG_CAPACITY`, older ones dropped and counted) and writes them when
//! the database is back, reconnecting with backoff.

use std::sync::{Arc, Mutex};

use postgres::Client;
use postgres::types::ToSql;

use super::UsageError;
use super::report::{GroupBy, Row};
use super::store::Sink;
use crate::db::pg::{Conn, DbError};
use crate::db::{Link, PgUrl};
use crate::observability::{Tokens, UsageRecord};

/// One statement for a whole batch: each column travels as one array parameter and
/// `UNNEST` turns them back into rows (the replica's name is one value for all). A batch of
/// 512 rows is two round trips (parse, then bind and execute) where a statement per row took
/// 515 (`scripts/bench/pg-rows.sh`: BENCHMARKS.md).
const INSERT: &str = "INSERT INTO requests (ts_ms, request_id, mode, dialect, model, stream,
    status, upstream_status, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    cost_usd, duration_ms, ttft_ms, proxy_ms, abandoned, error, credential, bucket, client_key,
    replica)
    SELECT r.*, $22::text FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[],
        $5::text[], $6::boolean[], $7::integer[], $8::integer[], $9::bigint[], $10::bigint[],
        $11::bigint[], $12::bigint[], $13::float8[], $14::float8[], $15::float8[],
        $16::float8[], $17::boolean[], $18::text[], $19::text[], $20::text[], $21::text[]) AS r";

const RECORD_COLUMNS: &str = "ts_ms, request_id, mode, dialect, model, stream, status, \
    upstream_status, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
    cost_usd, duration_ms, ttft_ms, proxy_ms, abandoned, error, credential, bucket, client_key";

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// PostgreSQL's text cannot hold NUL (a client can put `\u0000` in a model name): it is
/// replaced, so that one row cannot fail its whole batch again and again.
fn text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn opt_text(s: &Option<String>) -> Option<std::borrow::Cow<'_, str>> {
    s.as_deref().map(text)
}

/// Writes `records` (and which replica wrote them) in one statement, so all or none.
pub fn insert(
    client: &mut Client,
    records: &[UsageRecord],
    replica: &str,
) -> Result<(), postgres::Error> {
    insert_prepared(client, &mut None, records, replica)
}

/// [`insert`] with its statement prepared once per connection and kept in `prepared`: a batch
/// is then one round trip, and PostgreSQL plans it once. A statement whose connection is gone
/// (the caller reconnected) is prepared again.
pub fn insert_prepared(
    client: &mut Client,
    prepared: &mut Option<postgres::Statement>,
    records: &[UsageRecord],
    replica: &str,
) -> Result<(), postgres::Error> {
    if records.is_empty() {
        return Ok(());
    }
    fn col<'a, T>(records: &'a [UsageRecord], f: impl Fn(&'a UsageRecord) -> T) -> Vec<T> {
        records.iter().map(f).collect()
    }
    let ts = col(records, |r| r.ts_ms);
    let request_id = col(records, |r| text(&r.request_id));
    let mode = col(records, |r| text(&r.mode));
    let dialect = col(records, |r| text(&r.dialect));
    let model = col(records, |r| opt_text(&r.model));
    let stream = col(records, |r| r.stream);
    let status = col(records, |r| i32::from(r.status));
    let upstream_status = col(records, |r| r.upstream_status.map(i32::from));
    let input = col(records, |r| int(r.tokens.input));
    let output = col(records, |r| int(r.tokens.output));
    let cache_read = col(records, |r| int(r.tokens.cache_read));
    let cache_write = col(records, |r| int(r.tokens.cache_write));
    let cost = col(records, |r| r.cost_usd.filter(|c| c.is_finite()));
    let duration = col(records, |r| finite(r.duration_ms));
    let ttft = col(records, |r| r.ttft_ms.filter(|t| t.is_finite()));
    let proxy = col(records, |r| finite(r.proxy_ms));
    let abandoned = col(records, |r| r.abandoned);
    let error = col(records, |r| opt_text(&r.error));
    let credential = col(records, |r| opt_text(&r.credential));
    let bucket = col(records, |r| opt_text(&r.bucket));
    let client_key = col(records, |r| opt_text(&r.client_key));
    let replica = text(replica);
    let params: [&(dyn ToSql + Sync); 22] = [
        &ts,
        &request_id,
        &mode,
        &dialect,
        &model,
        &stream,
        &status,
        &upstream_status,
        &input,
        &output,
        &cache_read,
        &cache_write,
        &cost,
        &duration,
        &ttft,
        &proxy,
        &abandoned,
        &error,
        &credential,
        &bucket,
        &client_key,
        &replica,
    ];
    let stmt = match prepared.take() {
        Some(s) => s,
        None => client.prepare(INSERT)?,
    };
    match client.execute(&stmt, &params) {
        Ok(_) => {
            *prepared = Some(stmt);
            Ok(())
        }
        Err(e) if e.code() == Some(&postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME) => {
            let stmt = client.prepare(INSERT)?;
            client.execute(&stmt, &params)?;
            *prepared = Some(stmt);
            Ok(())
        }
        // Any other failure may have come with a new connection: prepared again next time.
        Err(e) => Err(e),
    }
}

/// The writer thread's way into PostgreSQL.
pub struct PgSink {
    conn: Conn,
    /// The insert, prepared on the current connection.
    prepared: Option<postgres::Statement>,
}

impl PgSink {
    /// Connects and migrates; a database that cannot be reached at startup is not an error
    /// (the sink keeps rows until it can), only logged.
    pub fn open(url: &PgUrl, link: Arc<Link>) -> PgSink {
        let client = match crate::db::pg::open(url) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "the database cannot be used yet; usage rows are kept until it can");
                link.failed(&e.to_string());
                None
            }
        };
        PgSink {
            conn: Conn::new(url.clone(), link, client),
            prepared: None,
        }
    }
}

impl Sink for PgSink {
    fn insert(&mut self, records: &[UsageRecord]) -> Result<(), String> {
        let replica = self.conn.link().replica_id().to_owned();
        self.conn
            .with(|c| insert_prepared(c, &mut self.prepared, records, &replica))
            .map_err(|e| e.to_string())
    }

    fn retries(&self) -> bool {
        true
    }
}

/// A read connection (the report, the dashboard).
pub struct PgReader {
    client: Mutex<Client>,
    url: PgUrl,
}

impl PgReader {
    /// Connects; `Ok(None)` when the schema was never created.
    pub fn open(url: &PgUrl) -> Result<Option<PgReader>, UsageError> {
        let err = |e: DbError| UsageError::Database(e.to_string());
        let mut client = crate::db::pg::connect(url).map_err(err)?;
        let exists: bool = client
            .query_one("SELECT to_regclass('public.requests') IS NOT NULL", &[])
            .map_err(|e| err(DbError::of(url)(e)))?
            .get(0);
        if !exists {
            return Ok(None);
        }
        // Day and hour groups are in the time zone of `TZ` when set, else the server's.
        if let Ok(tz) = std::env::var("TZ")
            && !tz.is_empty()
            && tz
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+-:".contains(&b))
        {
            let _ = client.batch_execute(&format!("SET TIME ZONE '{tz}'"));
        }
        Ok(Some(PgReader {
            client: Mutex::new(client),
            url: url.clone(),
        }))
    }

    fn err(&self) -> impl Fn(postgres::Error) -> UsageError + '_ {
        move |e| UsageError::Database(DbError::of(&self.url)(e).to_string())
    }

    fn key_sql(by: GroupBy) -> &'static str {
        match by {
            GroupBy::Day => "to_char(to_timestamp(ts_ms / 1000.0), 'YYYY-MM-DD')",
            GroupBy::Hour => "to_char(to_timestamp(ts_ms / 1000.0), 'YYYY-MM-DD HH24:00')",
            other => other.key_sql(),
        }
    }

    /// Rows since `since_ms`, oldest first, keyed by `by`, optionally of one client key.
    pub(crate) fn rows(
        &self,
        since_ms: Option<i64>,
        by: GroupBy,
        only_key: Option<&String>,
    ) -> Result<Vec<Row>, UsageError> {
        let sql = format!(
            "SELECT {key}, ts_ms, mode, status, stream, input_tokens, output_tokens, \
             cache_read_tokens, cache_write_tokens, cost_usd, duration_ms, ttft_ms, proxy_ms, \
             abandoned, model IS NOT NULL FROM requests WHERE ts_ms >= $1{only} ORDER BY ts_ms, id",
            key = Self::key_sql(by),
            only = if only_key.is_some() {
                " AND client_key = $2"
            } else {
                ""
            },
        );
        let rows = self.query_since(&sql, since_ms, only_key)?;
        Ok(rows
            .iter()
            .map(|row| Row {
                key: row
                    .get::<_, Option<String>>(0)
                    .unwrap_or_else(|| "(unknown)".into()),
                ts_ms: row.get(1),
                mode: row.get(2),
                status: status(row.get(3)),
                stream: row.get(4),
                tokens: Tokens {
                    input: count(row.get(5)),
                    output: count(row.get(6)),
                    cache_read: count(row.get(7)),
                    cache_write: count(row.get(8)),
                    ..Tokens::default()
                },
                cost_usd: row.get(9),
                duration_ms: row.get(10),
                ttft_ms: row.get(11),
                proxy_ms: row.get(12),
                abandoned: row.get(13),
                has_model: row.get(14),
            })
            .collect())
    }

    /// Runs `sql` with `$1` = `since_ms` (none: from the start) and, with a key, `$2` = the key.
    fn query_since(
        &self,
        sql: &str,
        since_ms: Option<i64>,
        only_key: Option<&String>,
    ) -> Result<Vec<postgres::Row>, UsageError> {
        let since = since_ms.unwrap_or(i64::MIN);
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since];
        if let Some(k) = only_key {
            params.push(k);
        }
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .query(sql, &params)
            .map_err(self.err())
    }

    /// The newest `limit` records (newest first) since `since_ms`, optionally of one key.
    pub fn recent(
        &self,
        since_ms: Option<i64>,
        limit: Option<usize>,
        only_key: Option<&String>,
    ) -> Result<Vec<UsageRecord>, UsageError> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM requests WHERE ts_ms >= $1{only} \
             ORDER BY ts_ms DESC, id DESC{limit}",
            only = if only_key.is_some() {
                " AND client_key = $2"
            } else {
                ""
            },
            limit = limit.map_or(String::new(), |n| format!(" LIMIT {n}")),
        );
        let rows = self.query_since(&sql, since_ms, only_key)?;
        Ok(rows.iter().map(record_of).collect())
    }
}

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn status(v: i32) -> u16 {
    u16::try_from(v).unwrap_or(0)
}

fn record_of(row: &postgres::Row) -> UsageRecord {
    UsageRecord {
        ts_ms: row.get(0),
        request_id: row.get(1),
        mode: row.get(2),
        dialect: row.get(3),
        model: row.get(4),
        stream: row.get(5),
        status: status(row.get(6)),
        upstream_status: row.get::<_, Option<i32>>(7).map(status),
        tokens: Tokens {
            input: count(row.get(8)),
            output: count(row.get(9)),
            cache_read: count(row.get(10)),
            cache_write: count(row.get(11)),
            ..Tokens::default()
        },
        cost_usd: row.get(12),
        duration_ms: row.get(13),
        ttft_ms: row.get(14),
        proxy_ms: row.get(15),
        abandoned: row.get(16),
        error: row.get(17),
        credential: row.get(18),
        bucket: row.get(19),
        client_key: row.get(20),
    }
}
