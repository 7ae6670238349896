//! Read side of the usage store: totals and groups with percentiles, recent
//! rows, and the text renderings of `ccproxy usage` (table and CSV).
//!
//! Every read goes through a [`UsageReader`]: a fresh read-only connection
//! (WAL lets it read while the writer thread writes).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Row as SqlRow};
use serde::Serialize;

use super::UsageError;
use crate::observability::{Tokens, UsageRecord};

/// How the report groups requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Model,
    /// Local calendar day (`YYYY-MM-DD`).
    Day,
    /// Local hour (`YYYY-MM-DD HH:00`).
    Hour,
    /// Proxy mode (`full`, `minimal`, `passthrough`).
    Mode,
    /// The upstream credential that served the request (its pool name, or `client`).
    Credential,
    /// What the request was billed to (`plan`, `extra_usage`, `api`).
    Bucket,
    /// Client key name (`(none)` for requests without one).
    Key,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Model => "model",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
            GroupBy::Mode => "mode",
            GroupBy::Credential => "credential",
            GroupBy::Bucket => "bucket",
            GroupBy::Key => "key",
        }
    }

    /// SQL expression giving the group key of a row.
    pub(crate) fn key_sql(self) -> &'static str {
        match self {
            GroupBy::Model => "COALESCE(model, '(unknown)')",
            GroupBy::Mode => "mode",
            GroupBy::Credential => "COALESCE(credential, '(none)')",
            GroupBy::Bucket => "COALESCE(bucket, '(unknown)')",
            GroupBy::Key => "COALESCE(client_key, '(none)')",
            GroupBy::Day => "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch', 'localtime')",
            GroupBy::Hour => "strftime('%Y-%m-%d %H:00', ts_ms / 1000, 'unixepoch', 'localtime')",
        }
    }

    fn is_time(self) -> bool {
        matches!(self, GroupBy::Day | GroupBy::Hour)
    }
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" => Ok(GroupBy::Model),
            "day" => Ok(GroupBy::Day),
            "hour" => Ok(GroupBy::Hour),
            "mode" => Ok(GroupBy::Mode),
            "credential" => Ok(GroupBy::Credential),
            "bucket" => Ok(GroupBy::Bucket),
            "key" => Ok(GroupBy::Key),
            other => Err(format!(
                "invalid grouping {other:?}: expected model, day, hour, mode, credential, bucket or key"
            )),
        }
    }
}

/// A `--since` / `?since=` value that is not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid --since value {0:?}: expected a positive number followed by m, h, d or w (e.g. 30m, 24h, 7d, 4w), or `all`"
)]
pub struct SinceError(pub String);

/// Parses `30m`, `24h`, `7d`, `4w` (also `90s`) into a duration; `all` → `None`.
pub fn parse_since(s: &str) -> Result<Option<Duration>, SinceError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let bad = || SinceError(s.to_owned());
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(secs_per) {
        Some(secs) if n > 0 && secs <= 100 * 365 * 86_400 => Ok(Some(Duration::from_secs(secs))),
        _ => Err(bad()),
    }
}

/// `now_ms - since`, or `None` for "all".
pub fn since_ms(since: Option<Duration>, now_ms: i64) -> Option<i64> {
    since.map(|d| now_ms.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

/// Aggregates over a set of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub tokens: Tokens,
    /// Sum of the known costs, USD.
    pub cost_usd: f64,
    /// Requests with a model and tokens but no known price for that model: not
    /// in `cost_usd`. (Model listings and requests that failed before using any
    /// token cost nothing and are not counted.)
    pub cost_unknown: u64,
    /// Requests answered with status >= 400.
    pub errors: u64,
    /// Streams the client abandoned before the end.
    pub abandoned: u64,
    pub streams: u64,
    /// Whole-request duration percentiles, ms.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Median time to first token, ms.
    pub ttft_p50_ms: Option<f64>,
    /// Time the proxy itself added, ms.
    pub proxy_p50_ms: Option<f64>,
    pub proxy_p95_ms: Option<f64>,
}

impl Stats {
    /// Errors per request (0 when there are none).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// One group of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub key: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// The result of [`query`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Lower bound (epoch ms, inclusive); `None` = everything.
    pub since_ms: Option<i64>,
    pub by: GroupBy,
    pub totals: Stats,
    pub groups: Vec<Group>,
}

/// One stored row, as the aggregations need it.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub key: String,
    /// The request named a model.
    pub has_model: bool,
    pub ts_ms: i64,
    pub mode: String,
    pub status: u16,
    pub stream: bool,
    pub tokens: Tokens,
    pub cost_usd: Option<f64>,
    pub duration_ms: f64,
    pub ttft_ms: Option<f64>,
    pub proxy_ms: f64,
    pub abandoned: bool,
}

/// Running sums of a group; percentiles are computed at the end.
#[derive(Debug, Default)]
pub(crate) struct Acc {
    stats: Stats,
    durations: Vec<f64>,
    ttfts: Vec<f64>,
    proxies: Vec<f64>,
}

impl Acc {
    pub fn add(&mut self, r: &Row) {
        let s = &mut self.stats;
        s.requests += 1;
        s.tokens.input = s.tokens.input.saturating_add(r.tokens.input);
        s.tokens.output = s.tokens.output.saturating_add(r.tokens.output);
        s.tokens.cache_read = s.tokens.cache_read.saturating_add(r.tokens.cache_read);
        s.tokens.cache_write = s.tokens.cache_write.saturating_add(r.tokens.cache_write);
        match r.cost_usd {
            Some(c) => s.cost_usd += c,
            None if r.has_model && (r.tokens.prompt() > 0 || r.tokens.output > 0) => {
                s.cost_unknown += 1;
            }
            None => {}
        }
        if r.status >= 400 {
            s.errors += 1;
        }
        if r.abandoned {
            s.abandoned += 1;
        }
        if r.stream {
            s.streams += 1;
        }
        self.durations.push(r.duration_ms);
        if let Some(t) = r.ttft_ms {
            self.ttfts.push(t);
        }
        self.proxies.push(r.proxy_ms);
    }

    pub fn finish(mut self) -> Stats {
        let mut s = self.stats;
        s.latency_p50_ms = percentile(&mut self.durations, 0.50);
        s.latency_p95_ms = percentile(&mut self.durations, 0.95);
        s.ttft_p50_ms = percentile(&mut self.ttfts, 0.50);
        s.proxy_p50_ms = percentile(&mut self.proxies, 0.50);
        s.proxy_p95_ms = percentile(&mut self.proxies, 0.95);
        s
    }
}

/// The `p` quantile (0..=1) with linear interpolation between closest ranks;
/// `None` for no values. Sorts `values`.
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let pos = p.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let (a, b) = (values[lo], values[hi]);
    Some(a + (b - a) * (pos - lo as f64))
}

/// Aggregates `rows` into totals and groups keyed by `key` (in first-seen order).
pub(crate) fn aggregate<'a>(
    rows: impl IntoIterator<Item = &'a Row>,
    key: impl Fn(&Row) -> String,
) -> (Stats, Vec<Group>) {
    let mut total = Acc::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(String, Acc)> = Vec::new();
    for r in rows {
        total.add(r);
        let k = key(r);
        let i = match index.get(&k) {
            Some(&i) => i,
            None => {
                index.insert(k.clone(), groups.len());
                groups.push((k, Acc::default()));
                groups.len() - 1
            }
        };
        groups[i].1.add(r);
    }
    let groups = groups
        .into_iter()
        .map(|(key, acc)| Group {
            key,
            stats: acc.finish(),
        })
        .collect();
    (total.finish(), groups)
}

/// The reader's connection: the SQLite file, or PostgreSQL.
enum ReaderConn {
    Sqlite(Connection),
    Pg(Box<super::pg::PgReader>),
}

/// A read-only connection to the usage database.
pub struct UsageReader {
    conn: ReaderConn,
    path: PathBuf,
    /// The database has no `requests` table yet (never migrated).
    empty: bool,
    /// The `requests` table has the `client_key` column (schema 3 and later).
    has_key: bool,
    /// Only the requests of this client key (the dashboard's `?key=`).
    only_key: Option<String>,
}

impl std::fmt::Debug for UsageReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageReader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

const RECORD_COLUMNS: &str = "ts_ms, request_id, mode, dialect, model, stream, status, \
    upstream_status, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, \
    cost_usd, duration_ms, ttft_ms, proxy_ms, abandoned, error, credential, bucket, client_key";

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn status(v: i64) -> u16 {
    u16::try_from(v).unwrap_or(0)
}

fn record_from_row(row: &SqlRow<'_>) -> rusqlite::Result<UsageRecord> {
    Ok(UsageRecord {
        ts_ms: row.get(0)?,
        request_id: row.get(1)?,
        mode: row.get(2)?,
        dialect: row.get(3)?,
        model: row.get(4)?,
        stream: row.get(5)?,
        status: status(row.get(6)?),
        upstream_status: row.get::<_, Option<i64>>(7)?.map(status),
        tokens: Tokens {
            input: count(row.get(8)?),
            output: count(row.get(9)?),
            cache_read: count(row.get(10)?),
            cache_write: count(row.get(11)?),
            cache_write_1h: 0,
            fast: false,
            batch: false,
        },
        cost_usd: row.get(12)?,
        duration_ms: row.get(13)?,
        ttft_ms: row.get(14)?,
        proxy_ms: row.get(15)?,
        abandoned: row.get(16)?,
        error: row.get(17)?,
        credential: row.get(18)?,
        bucket: row.get(19)?,
        client_key: row.get(20)?,
    })
}

impl UsageReader {
    /// Opens the configured store: [`UsageReader::open`] for SQLite; for PostgreSQL,
    /// `Ok(None)` when its schema was never created.
    pub fn open_db(db: &crate::db::Database) -> Result<Option<UsageReader>, UsageError> {
        match db {
            crate::db::Database::Sqlite(p) => UsageReader::open(p),
            crate::db::Database::Postgres(url) => {
                Ok(super::pg::PgReader::open(url)?.map(|r| UsageReader {
                    conn: ReaderConn::Pg(Box::new(r)),
                    path: PathBuf::from(url.to_string()),
                    empty: false,
                    has_key: true,
                    only_key: None,
                }))
            }
        }
    }

    /// Opens `path` read-only; `Ok(None)` when the file does not exist.
    pub fn open(path: &Path) -> Result<Option<UsageReader>, UsageError> {
        if !path.exists() {
            return Ok(None);
        }
        let err = UsageError::sqlite(path);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        let err = UsageError::sqlite(path);
        conn.busy_timeout(Duration::from_secs(2)).map_err(err)?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'requests'",
                [],
                |row| row.get(0),
            )
            .map_err(UsageError::sqlite(path))?;
        let has_key = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('requests') WHERE name = 'client_key'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(UsageError::sqlite(path))?
            > 0;
        Ok(Some(UsageReader {
            conn: ReaderConn::Sqlite(conn),
            path: path.to_owned(),
            empty: tables == 0,
            has_key,
            only_key: None,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads only the requests of client key `key` (all with `None`).
    pub fn only_key(mut self, key: Option<String>) -> UsageReader {
        self.only_key = key;
        self
    }

    /// The SQL condition of [`UsageReader::only_key`], its parameter numbered `n`.
    fn key_condition(&self, n: usize) -> String {
        match (&self.only_key, self.has_key) {
            (None, _) => String::new(),
            (Some(_), true) => format!(" AND client_key = ?{n}"),
            (Some(_), false) => " AND 0".to_owned(),
        }
    }

    /// Rows since `since_ms` (all when `None`), oldest first, keyed by `by`.
    pub(crate) fn rows(&self, since_ms: Option<i64>, by: GroupBy) -> Result<Vec<Row>, UsageError> {
        if self.empty {
            return Ok(Vec::new());
        }
        let conn = match &self.conn {
            ReaderConn::Sqlite(c) => c,
            ReaderConn::Pg(pg) => return pg.rows(since_ms, by, self.only_key.as_ref()),
        };
        let sql = format!(
            "SELECT {key}, ts_ms, mode, status, stream, input_tokens, output_tokens, \
             cache_read_tokens, cache_write_tokens, cost_usd, duration_ms, ttft_ms, proxy_ms, \
             abandoned, model IS NOT NULL FROM requests WHERE ts_ms >= ?1{only} ORDER BY ts_ms, id",
            only = self.key_condition(2),
            key = if by == GroupBy::Key && !self.has_key {
                "'(none)'"
            } else {
                by.key_sql()
            }
        );
        let read = || -> rusqlite::Result<Vec<Row>> {
            let mut stmt = conn.prepare(&sql)?;
            let since = since_ms.unwrap_or(i64::MIN);
            let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&since];
            if let (Some(k), true) = (&self.only_key, self.has_key) {
                bound.push(k);
            }
            let rows = stmt.query_map(bound.as_slice(), |row| {
                Ok(Row {
                    key: row
                        .get::<_, Option<String>>(0)?
                        .unwrap_or_else(|| "(unknown)".into()),
                    ts_ms: row.get(1)?,
                    mode: row.get(2)?,
                    status: status(row.get(3)?),
                    stream: row.get(4)?,
                    tokens: Tokens {
                        input: count(row.get(5)?),
                        output: count(row.get(6)?),
                        cache_read: count(row.get(7)?),
                        cache_write: count(row.get(8)?),
                        cache_write_1h: 0,
                        fast: false,
                        batch: false,
                    },
                    cost_usd: row.get(9)?,
                    duration_ms: row.get(10)?,
                    ttft_ms: row.get(11)?,
                    proxy_ms: row.get(12)?,
                    abandoned: row.get(13)?,
                    has_model: row.get(14)?,
                })
            })?;
            rows.collect()
        };
        read().map_err(UsageError::sqlite(&self.path))
    }

    /// The report: totals and one group per key. Model and mode groups are
    /// sorted by request count (descending), time groups chronologically.
    pub fn report(&self, since_ms: Option<i64>, by: GroupBy) -> Result<Report, UsageError> {
        let rows = self.rows(since_ms, by)?;
        let (totals, mut groups) = aggregate(&rows, |r| r.key.clone());
        if by.is_time() {
            groups.sort_by(|a, b| a.key.cmp(&b.key));
        } else {
            groups.sort_by(|a, b| {
                b.stats
                    .requests
                    .cmp(&a.stats.requests)
                    .then_with(|| a.key.cmp(&b.key))
            });
        }
        Ok(Report {
            since_ms,
            by,
            totals,
            groups,
        })
    }

    /// The newest `limit` records (newest first), optionally only since `since_ms`.
    pub fn recent(
        &self,
        since_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<UsageRecord>, UsageError> {
        if self.empty {
            return Ok(Vec::new());
        }
        let conn = match &self.conn {
            ReaderConn::Sqlite(c) => c,
            ReaderConn::Pg(pg) => return pg.recent(since_ms, Some(limit), self.only_key.as_ref()),
        };
        let sql = format!(
            "SELECT {RECORD_COLUMNS}, {key} FROM requests WHERE ts_ms >= ?1{only} \
             ORDER BY ts_ms DESC, id DESC LIMIT ?2",
            only = self.key_condition(3),
            key = if self.has_key { "client_key" } else { "NULL" }
        );
        let read = || -> rusqlite::Result<Vec<UsageRecord>> {
            let mut stmt = conn.prepare(&sql)?;
            let since = since_ms.unwrap_or(i64::MIN);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&since, &limit];
            if let (Some(k), true) = (&self.only_key, self.has_key) {
                bound.push(k);
            }
            let rows = stmt.query_map(bound.as_slice(), record_from_row)?;
            rows.collect()
        };
        read().map_err(UsageError::sqlite(&self.path))
    }
}

/// Opens `path` read-only and builds the report; `Ok(None)` when the database
/// file does not exist.
pub fn query(
    path: &Path,
    since_ms: Option<i64>,
    by: GroupBy,
) -> Result<Option<Report>, UsageError> {
    query_db(&crate::db::Database::Sqlite(path.to_owned()), since_ms, by)
}

/// [`query`] of the configured store.
pub fn query_db(
    db: &crate::db::Database,
    since_ms: Option<i64>,
    by: GroupBy,
) -> Result<Option<Report>, UsageError> {
    match UsageReader::open_db(db)? {
        Some(reader) => reader.report(since_ms, by).map(Some),
        None => Ok(None),
    }
}

// ---- text renderings ----

/// `s` with every control character (C0, DEL, C1: ESC among them) written as
/// `\u{1b}`, so a client-chosen string (a model name) cannot drive the terminal
/// that shows the table or a spreadsheet that opens the CSV.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The cost cell: `*` marks a sum that leaves out requests of unknown price;
/// when any row is marked, the others get a space so the digits stay aligned.
fn cost_text(s: &Stats, any_unknown: bool) -> String {
    let mark = match (s.cost_unknown > 0, any_unknown) {
        (true, _) => "*",
        (false, true) => " ",
        (false, false) => "",
    };
    if s.requests > 0 && s.cost_unknown == s.requests {
        format!("unknown{mark}")
    } else {
        format!("{:.4}{mark}", s.cost_usd)
    }
}

fn ms_text(v: Option<f64>) -> String {
    match v {
        Some(ms) if ms >= 100.0 => thousands(ms.round() as u64),
        Some(ms) => format!("{ms:.1}"),
        None => "-".into(),
    }
}

fn proxy_text(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |ms| format!("{ms:.2}"))
}

const TABLE_HEADERS: [&str; 13] = [
    "REQUESTS",
    "ERRORS",
    "ABANDONED",
    "INPUT",
    "OUTPUT",
    "CACHE READ",
    "CACHE WRITE",
    "COST USD",
    "P50 MS",
    "P95 MS",
    "TTFT P50",
    "PROXY P50",
    "PROXY P95",
];

fn table_cells(key: &str, s: &Stats, any_unknown: bool) -> Vec<String> {
    vec![
        escape_control(key).into_owned(),
        thousands(s.requests),
        thousands(s.errors),
        thousands(s.abandoned),
        thousands(s.tokens.input),
        thousands(s.tokens.output),
        thousands(s.tokens.cache_read),
        thousands(s.tokens.cache_write),
        cost_text(s, any_unknown),
        ms_text(s.latency_p50_ms),
        ms_text(s.latency_p95_ms),
        ms_text(s.ttft_p50_ms),
        proxy_text(s.proxy_p50_ms),
        proxy_text(s.proxy_p95_ms),
    ]
}

/// The aligned table of `ccproxy usage`: a title line, a header, one line per
/// group, a rule and the totals; keys left-aligned, numbers right-aligned.
/// Costs marked `*` leave out requests whose price is unknown. Control
/// characters in the keys and the title are escaped ([`escape_control`]).
pub fn render_table(report: &Report, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", escape_control(title));
    if report.totals.requests == 0 {
        let _ = writeln!(out, "no requests in this period");
        return out;
    }
    let mut header = vec![report.by.as_str().to_ascii_uppercase()];
    header.extend(TABLE_HEADERS.iter().map(|s| (*s).to_owned()));
    let mut lines: Vec<Vec<String>> = vec![header];
    let any_unknown = report.totals.cost_unknown > 0;
    for g in &report.groups {
        lines.push(table_cells(&g.key, &g.stats, any_unknown));
    }
    let total = table_cells("TOTAL", &report.totals, any_unknown);
    let cols = total.len();
    let mut widths = vec![0usize; cols];
    for line in lines.iter().chain(std::iter::once(&total)) {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let fmt_line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(s, "{cell:<w$}");
            } else {
                let _ = write!(s, "  {cell:>w$}");
            }
        }
        s.trim_end().to_owned()
    };
    for line in &lines {
        let _ = writeln!(out, "{}", fmt_line(line));
    }
    let rule_len = widths.iter().sum::<usize>() + 2 * (cols - 1);
    let _ = writeln!(out, "{}", "-".repeat(rule_len));
    let _ = writeln!(out, "{}", fmt_line(&total));
    let t = &report.totals;
    let _ = writeln!(
        out,
        "\nerror rate {:.1}%; latency and TTFT in ms; PROXY = time ccproxy added before the response head (ms)",
        t.error_rate() * 100.0
    );
    if t.cost_unknown > 0 {
        let _ = writeln!(
            out,
            "* cost leaves out {} request(s) whose model has no known price (see [prices] in the config file)",
            thousands(t.cost_unknown)
        );
    }
    out
}

/// A CSV field, control characters escaped ([`escape_control`]), quoted when needed.
fn csv_field(s: &str) -> String {
    let s = escape_control(s);
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(String::new, |x| format!("{x:.3}"))
}

/// CSV with a header, one line per group and a last line keyed `TOTAL`.
pub fn render_csv(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{},requests,errors,abandoned,streams,input_tokens,output_tokens,cache_read_tokens,\
         cache_write_tokens,cost_usd,cost_unknown_requests,latency_p50_ms,latency_p95_ms,\
         ttft_p50_ms,proxy_p50_ms,proxy_p95_ms",
        report.by.as_str()
    );
    let rows = report
        .groups
        .iter()
        .map(|g| (g.key.as_str(), &g.stats))
        .chain(std::iter::once(("TOTAL", &report.totals)));
    for (key, s) in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{:.6},{},{},{},{},{},{}",
            csv_field(key),
            s.requests,
            s.errors,
            s.abandoned,
            s.streams,
            s.tokens.input,
            s.tokens.output,
            s.tokens.cache_read,
            s.tokens.cache_write,
            s.cost_usd,
            s.cost_unknown,
            opt(s.latency_p50_ms),
            opt(s.latency_p95_ms),
            opt(s.ttft_p50_ms),
            opt(s.proxy_p50_ms),
            opt(s.proxy_p95_ms),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_values() {
        assert_eq!(parse_since("30m"), Ok(Some(Duration::from_secs(1800))));
        assert_eq!(parse_since("24h"), Ok(Some(Duration::from_secs(86_400))));
        assert_eq!(parse_since("7d"), Ok(Some(Duration::from_secs(7 * 86_400))));
        assert_eq!(
            parse_since("4w"),
            Ok(Some(Duration::from_secs(28 * 86_400)))
        );
        assert_eq!(parse_since("all"), Ok(None));
        for bad in [
            "",
            "h",
            "24",
            "0h",
            "-1h",
            "1y",
            "1.5h",
            "99999999999999999999d",
            "24 h",
        ] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
        let msg = parse_since("yesterday").unwrap_err().to_string();
        assert!(
            msg.contains("\"yesterday\"") && msg.contains("24h"),
            "{msg}"
        );
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&mut [], 0.5), None);
        assert_eq!(percentile(&mut [7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&mut [4.0, 1.0, 3.0, 2.0], 0.5), Some(2.5));
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p95 = percentile(&mut v, 0.95).unwrap();
        assert!((p95 - 95.05).abs() < 1e-9, "{p95}");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a"), "a");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        assert_eq!(csv_field("a\nb"), "a\\u{a}b");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(escape_control("claude-é"), Cow::Borrowed(_)));
        assert_eq!(
            escape_control("a\u{1b}]0;t\u{7}\u{7f}\u{9b}z\t"),
            "a\\u{1b}]0;t\\u{7}\\u{7f}\\u{9b}z\\u{9}"
        );
    }
}
