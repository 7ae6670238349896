//! `GET /dashboard` and `GET /api/usage`.
//!
//! The page is one self-contained HTML document (inline CSS, JS and SVG; no
//! external URL, enforced by its Content-Security-Policy). It polls
//! `/api/usage` every 5 seconds and, when its own URL has `?token=…`, sends
//! that token as `Authorization: Bearer …` (the router enforces the proxy
//! token on both routes).
//!
//! The API handler needs only the database path: each call opens a fresh
//! read-only connection on a blocking thread (WAL readers never block the
//! writer thread, and the request path is not involved). Mounting, with an
//! `AppState` that holds the path of an enabled store:
//!
//! ```ignore
//! .route("/dashboard", get(|| async { usage::dashboard::page() }))
//! .route("/api/usage", get(|State(s): State<Arc<AppState>>, Query(q): Query<ApiQuery>| async move {
//!     usage::dashboard::api_usage(s.usage_db.clone(), q).await
//! }))
//! ```

use std::path::PathBuf;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::report::{self, Group, GroupBy, Row, Stats, UsageReader};
use super::store::UsageHealth;
use super::{UsageError, UsageWriter};
use crate::observability::{Tokens, UsageRecord};
use crate::util::time::now_ms;

/// The page, compiled in.
pub const PAGE_HTML: &str = include_str!("dashboard.html");

/// The client keys page (`GET /dashboard/keys`), compiled in.
pub const KEYS_HTML: &str = include_str!("keys.html");

/// The page's Content-Security-Policy: nothing may be loaded from anywhere
/// but inline code and this origin's `/api/usage`.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Most buckets in one time series.
const MAX_BUCKETS: i64 = 2000;
/// Recent requests returned by default, and at most.
pub const DEFAULT_RECENT: usize = 50;
const MAX_RECENT: usize = 500;
/// Error messages in `recent` are cut to this many characters.
const MAX_ERROR_CHARS: usize = 300;

/// `GET /dashboard`: the HTML page.
pub fn page() -> Response {
    html(PAGE_HTML)
}

/// `GET /dashboard/keys`: the client keys page (it reads and changes `/api/keys`).
pub fn keys_page() -> Response {
    html(KEYS_HTML)
}

fn html(body: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_CSP),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Query string of `GET /api/usage`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiQuery {
    /// `30m`, `24h`, `7d`, `4w`, `all`; default `24h`.
    pub since: Option<String>,
    /// Time-series bucket: `5m`, `hour`, `day` or `auto` (default: by span).
    pub by: Option<String>,
    /// The viewer's offset from UTC in minutes east (JS: `-getTimezoneOffset()`),
    /// so hour and day buckets start at local boundaries. Default 0.
    pub tz_offset: Option<i32>,
    /// How many recent requests to return (default 50, at most 500).
    pub recent: Option<usize>,
    /// Only the requests of this client key.
    pub key: Option<String>,
}

/// One bucket of the time series.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Bucket start, epoch ms.
    pub start_ms: i64,
    pub requests: u64,
    pub errors: u64,
    pub abandoned: u64,
    pub tokens: Tokens,
    pub cost_usd: f64,
}

/// The body of `GET /api/usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageData {
    pub generated_ms: i64,
    /// The `since` that was applied (normalised), and its lower bound.
    pub since: String,
    pub since_ms: Option<i64>,
    /// `5m`, `hour` or `day`.
    pub bucket: &'static str,
    pub bucket_ms: i64,
    /// The database exists (false: nothing recorded yet).
    pub recorded: bool,
    pub totals: Stats,
    /// Errors per request over the period.
    pub error_rate: f64,
    pub series: Vec<SeriesPoint>,
    /// Sorted by request count, descending.
    pub by_model: Vec<Group>,
    pub by_mode: Vec<Group>,
    /// Newest first.
    pub recent: Vec<UsageRecord>,
    /// The store's state (failed writes, dropped rows, the last error), when a
    /// running proxy answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<UsageHealth>,
}

/// Why `/api/usage` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("usage recording is disabled on this ccproxy")]
    Disabled,
    /// The store could not be opened when the proxy started.
    #[error("usage recording is off: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] UsageError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            ApiError::Disabled => (StatusCode::SERVICE_UNAVAILABLE, "usage_disabled"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "usage_store_error"),
            ApiError::Db(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "usage_store_error")
            }
        };
        let body = serde_json::json!({
            "type": "error",
            "error": {"type": kind, "message": self.to_string()},
        });
        let mut res = (status, Json(body)).into_response();
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

fn bucket_named(name: &str) -> Option<(&'static str, i64)> {
    match name {
        "5m" => Some(("5m", 5 * MINUTE_MS)),
        "hour" => Some(("hour", HOUR_MS)),
        "day" => Some(("day", DAY_MS)),
        _ => None,
    }
}

/// Start of the bucket containing `ts`, aligned to local boundaries (`off` ms east of UTC).
fn bucket_start(ts: i64, size: i64, off: i64) -> i64 {
    (ts.saturating_add(off)).div_euclid(size) * size - off
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Builds the `/api/usage` body from the database at `path` (a missing file
/// gives an empty result with `recorded: false`). Synchronous: call it on a
/// blocking thread.
pub fn usage_data(db: &crate::db::Database, q: &ApiQuery, now: i64) -> Result<UsageData, ApiError> {
    let since_text = q.since.as_deref().unwrap_or("24h").trim().to_owned();
    let since =
        report::parse_since(&since_text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let since_ms = report::since_ms(since, now);
    let requested = requested_bucket(q.by.as_deref().unwrap_or("auto"))?;
    let tz = i64::from(q.tz_offset.unwrap_or(0).clamp(-14 * 60, 14 * 60)) * MINUTE_MS;
    let recent_limit = q.recent.unwrap_or(DEFAULT_RECENT).min(MAX_RECENT);

    let key = q.key.clone().filter(|k| !k.is_empty());
    let reader = UsageReader::open_db(db)?.map(|r| r.only_key(key));
    let (rows, recent) = read_rows(reader.as_ref(), since_ms, recent_limit)?;

    // The series spans [since, now]; for `all`, from the first row.
    let first = since_ms
        .or_else(|| rows.first().map(|r| r.ts_ms))
        .unwrap_or(now)
        .min(now);
    let (bucket, size) = pick_bucket(requested, now - first);
    let series = time_series(&rows, first, now, size, tz);
    let (totals, by_model, by_mode) = groups(&rows);
    Ok(UsageData {
        generated_ms: now,
        since: if since.is_none() {
            "all".into()
        } else {
            since_text
        },
        since_ms,
        bucket,
        bucket_ms: size,
        recorded: reader.is_some(),
        error_rate: totals.error_rate(),
        totals,
        series,
        by_model,
        by_mode,
        recent,
        store: None,
    })
}

/// The `by` parameter: `None` for `auto` (or empty), else a named bucket.
fn requested_bucket(by: &str) -> Result<Option<(&'static str, i64)>, ApiError> {
    match by {
        "auto" | "" => Ok(None),
        other => Ok(Some(bucket_named(other).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid by {other:?}: expected 5m, hour, day or auto"
            ))
        })?)),
    }
}

/// The rows since `since_ms` and the newest `recent_limit` requests (their errors shortened);
/// both empty without a database.
fn read_rows(
    reader: Option<&UsageReader>,
    since_ms: Option<i64>,
    recent_limit: usize,
) -> Result<(Vec<Row>, Vec<UsageRecord>), ApiError> {
    let (rows, mut recent) = match reader {
        Some(r) => (
            r.rows(since_ms, GroupBy::Model)?,
            r.recent(since_ms, recent_limit)?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    for r in &mut recent {
        if let Some(e) = &r.error {
            r.error = Some(truncate_chars(e, MAX_ERROR_CHARS));
        }
    }
    Ok((rows, recent))
}

/// The bucket for a series spanning `span` ms: the requested one, else chosen by the span; days
/// when a finer bucket would need [`MAX_BUCKETS`] or more.
fn pick_bucket(requested: Option<(&'static str, i64)>, span: i64) -> (&'static str, i64) {
    let (bucket, size) = requested.unwrap_or(if span <= 3 * HOUR_MS {
        ("5m", 5 * MINUTE_MS)
    } else if span <= 7 * DAY_MS {
        ("hour", HOUR_MS)
    } else {
        ("day", DAY_MS)
    });
    if span / size >= MAX_BUCKETS && size < DAY_MS {
        return ("day", DAY_MS);
    }
    (bucket, size)
}

/// One point per bucket from the one holding `first` to the one holding `now` (at most
/// [`MAX_BUCKETS`], the newest kept), with the rows added up into them.
fn time_series(rows: &[Row], first: i64, now: i64, size: i64, tz: i64) -> Vec<SeriesPoint> {
    let mut start = bucket_start(first, size, tz);
    let end = bucket_start(now, size, tz);
    if (end - start) / size >= MAX_BUCKETS {
        start = end - (MAX_BUCKETS - 1) * size;
    }
    let n = usize::try_from((end - start) / size + 1).unwrap_or(1);
    let mut series: Vec<SeriesPoint> = (0..n)
        .map(|i| SeriesPoint {
            start_ms: start + i64::try_from(i).unwrap_or(0) * size,
            ..SeriesPoint::default()
        })
        .collect();
    for r in rows {
        let b = bucket_start(r.ts_ms, size, tz);
        let Ok(i) = usize::try_from((b - start) / size) else {
            continue;
        };
        let Some(p) = series.get_mut(i) else { continue };
        add_to_point(p, r);
    }
    series
}

fn add_to_point(p: &mut SeriesPoint, r: &Row) {
    p.requests += 1;
    if r.status >= 400 {
        p.errors += 1;
    }
    if r.abandoned {
        p.abandoned += 1;
    }
    p.tokens.input = p.tokens.input.saturating_add(r.tokens.input);
    p.tokens.output = p.tokens.output.saturating_add(r.tokens.output);
    p.tokens.cache_read = p.tokens.cache_read.saturating_add(r.tokens.cache_read);
    p.tokens.cache_write = p.tokens.cache_write.saturating_add(r.tokens.cache_write);
    p.cost_usd += r.cost_usd.unwrap_or(0.0);
}

/// The totals, and the groups by model and by mode, most requests first.
fn groups(rows: &[Row]) -> (Stats, Vec<Group>, Vec<Group>) {
    let (totals, mut by_model) = report::aggregate(rows, |r| r.key.clone());
    let (_, mut by_mode) = report::aggregate(rows, |r| r.mode.clone());
    let by_requests = |a: &Group, b: &Group| {
        b.stats
            .requests
            .cmp(&a.stats.requests)
            .then_with(|| a.key.cmp(&b.key))
    };
    by_model.sort_by(by_requests);
    by_mode.sort_by(by_requests);
    (totals, by_model, by_mode)
}

/// `GET /api/usage`: `db_path` is the enabled store's database (`None` when
/// usage recording is disabled → 503).
pub async fn api_usage(db_path: Option<PathBuf>, query: ApiQuery) -> Response {
    match db_path {
        Some(path) => answer(crate::db::Database::Sqlite(path), None, query).await,
        None => ApiError::Disabled.into_response(),
    }
}

/// `GET /api/usage` of a running proxy: its store's writer (`None` when usage
/// recording is disabled → 503). A store that could not be opened is a 503
/// naming why; a database that cannot be read, a 500 naming it; otherwise the
/// body carries the store's state in `store`.
pub async fn api_usage_of(writer: Option<&UsageWriter>, query: ApiQuery) -> Response {
    let Some(w) = writer else {
        return ApiError::Disabled.into_response();
    };
    if let Some(e) = w.open_error() {
        return ApiError::Unavailable(e.to_owned()).into_response();
    }
    answer(w.database().clone(), Some(w.health()), query).await
}

async fn answer(db: crate::db::Database, store: Option<UsageHealth>, query: ApiQuery) -> Response {
    let now = now_ms();
    let result = tokio::task::spawn_blocking(move || usage_data(&db, &query, now)).await;
    match result {
        Ok(Ok(mut data)) => {
            data.store = store;
            let mut res = Json(data).into_response();
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "usage API failed");
            e.into_response()
        }
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_local_boundaries() {
        // 2024-01-01T00:30:00Z, viewer at UTC+2: the local day began at 2023-12-31T22:00Z.
        let ts = 1_704_069_000_000;
        let off = 120 * MINUTE_MS;
        assert_eq!(bucket_start(ts, DAY_MS, off), 1_704_060_000_000);
        assert_eq!(bucket_start(ts, HOUR_MS, 0), 1_704_067_200_000);
    }

    #[test]
    fn truncation() {
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars("abcdef", 3), "abc…");
        assert_eq!(truncate_chars("ééé", 2), "éé…");
    }
}
