//! Client keys (issue 13): one key per client, each with its own limits.
//!
//! - A key is `ccp-` followed by 40 random alphanumeric characters from the
//!   thread's CSPRNG. It is shown once; the usage database keeps its SHA-256
//!   digest and a short prefix (`ccp-AbCd`) to recognise it by (`client_keys`,
//!   migration 3 of the usage store).
//! - [`ClientKeys`] is the request path's view: every key in memory, looked up by
//!   the digest of the presented token (and compared in constant time), with
//!   each key's live counters (requests and tokens of the last minute, requests
//!   in flight, spend this period). No database round trip per request.
//! - Changes made through the HTTP API take effect at once; changes made by
//!   `ccproxy keys` in another process are picked up by a reload of the table
//!   every [`RELOAD_EVERY`] (so a revoke reaches a running server within a second).
//! - Tokens and spend come from finished requests ([`ClientKeys::finished`], fed by
//!   the observer thread once the cost is known); at startup (and when a key
//!   appears) they are read back from the usage rows, which carry the key's name,
//!   so they survive a restart.

pub mod pg;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ErrorKind, Origin, ProxyError, RateLimitInfo, RateWindow};
use crate::routes::Mode;
use crate::util::time::{civil_from_days, days_from_civil, format_utc};

/// How often a running server re-reads the keys table (changes made by the CLI).
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// The prefix of every client key.
pub const KEY_PREFIX: &str = "ccp-";

const MINUTE_MS: i64 = 60_000;

/// A new random key: `ccp-` and 40 alphanumeric characters (about 238 bits).
pub fn generate_secret() -> String {
    let mut rng = rand::rng();
    let tail: String = (0..40)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect();
    format!("{KEY_PREFIX}{tail}")
}

/// The SHA-256 digest of a key.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// What `keys list` shows of a key: `ccp-` and four characters.
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(KEY_PREFIX.len() + 4).collect()
}

/// The budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        match s.trim().to_ascii_lowercase().as_str() {
            "day" | "daily" => Some(Period::Day),
            "week" | "weekly" => Some(Period::Week),
            "month" | "monthly" => Some(Period::Month),
            _ => None,
        }
    }

    /// The period containing `now_ms` (UTC calendar: days, weeks from Monday,
    /// months), as `[start, end)` in epoch milliseconds.
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        const DAY: i64 = 86_400_000;
        let days = now_ms.div_euclid(DAY);
        match self {
            Period::Day => (days * DAY, (days + 1) * DAY),
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday is 3 days before.
                let start = days - (days + 3).rem_euclid(7);
                (start * DAY, (start + 7) * DAY)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                let start = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start * DAY, days_from_civil(ny, nm, 1) * DAY)
            }
        }
    }
}

/// A spending limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub usd: f64,
    pub period: Period,
}

/// What a key may do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Model patterns (`*` matches any run of characters); empty: any model.
    pub models: Vec<String>,
    /// Modes the key may use; empty: all.
    pub modes: Vec<Mode>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub budget: Option<Budget>,
    /// Epoch ms after which the key is refused.
    pub expires_at_ms: Option<i64>,
}

impl Limits {
    /// Whether `model` matches one of the key's patterns (any model when none).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|p| glob(p, model))
    }

    pub fn allows_mode(&self, mode: Mode) -> bool {
        self.modes.is_empty() || self.modes.contains(&mode)
    }
}

/// `*` matches any run of characters; everything else matches itself (ASCII case-insensitive).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The short names of modes in `--modes` (`full`, `min`, `pt`, or the long names).
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s.trim().to_ascii_lowercase().as_str() {
        "full" => Some(Mode::Full),
        "min" | "minimal" => Some(Mode::Minimal),
        "pt" | "passthrough" => Some(Mode::Passthrough),
        _ => None,
    }
}

/// `30d`, `12h`, `2w`, `90m` from now, or a date `YYYY-MM-DD` (its start, UTC), or an
/// RFC 3339 time; `never` is no expiry.
pub fn parse_expires(s: &str, now_ms: i64) -> Result<Option<i64>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("never") || t.is_empty() {
        return Ok(None);
    }
    let bad = || {
        format!("invalid expiry {s:?}: expected a duration (30d, 12h, 2w) or a date (2026-12-31)")
    };
    if let Some(split) = t.find(|c: char| !c.is_ascii_digit())
        && split > 0
    {
        let (num, unit) = t.split_at(split);
        let unit_ms: i64 = match unit {
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => 0,
        };
        if unit_ms > 0 {
            let n: i64 = num.parse().map_err(|_| bad())?;
            return n
                .checked_mul(unit_ms)
                .and_then(|d| now_ms.checked_add(d))
                .filter(|_| n > 0)
                .map(Some)
                .ok_or_else(bad);
        }
    }
    if t.len() == 10 {
        return crate::util::time::parse_rfc3339_secs(&format!("{t}T00:00:00Z"))
            .and_then(|s| i64::try_from(s).ok())
            .map(|s| Some(s * 1000))
            .ok_or_else(bad);
    }
    crate::util::time::parse_rfc3339_secs(t)
        .and_then(|s| i64::try_from(s).ok())
        .map(|s| Some(s * 1000))
        .ok_or_else(bad)
}

/// A key as asked for by `keys create` or `POST /api/keys` (strings as typed).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    pub name: String,
    /// Comma-separated patterns, or a list.
    #[serde(default)]
    pub models: Option<StrOrList>,
    #[serde(default)]
    pub modes: Option<StrOrList>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u32>,
    #[serde(alias = "budget")]
    pub budget_usd: Option<f64>,
    pub period: Option<String>,
    pub expires: Option<String>,
}

/// `"a,b"` or `["a", "b"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StrOrList {
    Str(String),
    List(Vec<String>),
}

impl StrOrList {
    fn items(&self) -> Vec<String> {
        let all: Vec<String> = match self {
            StrOrList::Str(s) => s.split(',').map(str::to_owned).collect(),
            StrOrList::List(l) => l.clone(),
        };
        all.into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Names: 1–64 characters of letters, digits, `-`, `_`, `.`, `@`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

impl KeyRequest {
    /// The limits asked for, checked.
    pub fn limits(&self, now_ms: i64) -> Result<Limits, String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "invalid key name {:?}: use 1 to 64 letters, digits, '-', '_', '.' or '@'",
                self.name
            ));
        }
        let models = self
            .models
            .as_ref()
            .map(StrOrList::items)
            .unwrap_or_default();
        if let Some(bad) = models.iter().find(|m| m.len() > 200) {
            return Err(format!("model pattern too long: {bad:?}"));
        }
        let mut modes = Vec::new();
        for m in self
            .modes
            .as_ref()
            .map(StrOrList::items)
            .unwrap_or_default()
        {
            let mode = parse_mode(&m).ok_or_else(|| {
                format!("invalid mode {m:?}: expected full, min (minimal) or pt (passthrough)")
            })?;
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        let budget = match (self.budget_usd, self.period.as_deref()) {
            (None, None) => None,
            (None, Some(_)) => return Err("--period needs --budget".to_owned()),
            (Some(usd), period) => {
                if !usd.is_finite() || usd <= 0.0 {
                    return Err(format!(
                        "invalid budget {usd}: expected a positive amount in USD"
                    ));
                }
                let period = match period {
                    None => Period::Month,
                    Some(p) => Period::parse(p).ok_or_else(|| {
                        format!("invalid period {p:?}: expected day, week or month")
                    })?,
                };
                Some(Budget { usd, period })
            }
        };
        let expires_at_ms = match self.expires.as_deref() {
            None => None,
            Some(e) => parse_expires(e, now_ms)?,
        };
        for (what, v) in [
            ("rpm", self.rpm.map(u64::from)),
            ("tpm", self.tpm),
            ("max-concurrent", self.max_concurrent.map(u64::from)),
        ] {
            if v == Some(0) {
                return Err(format!("--{what} must be at least 1"));
            }
        }
        Ok(Limits {
            models,
            modes,
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            budget,
            expires_at_ms,
        })
    }
}

/// A key as the database keeps it (never the secret).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub name: String,
    pub digest: [u8; 32],
    /// `ccp-AbCd`.
    pub prefix: String,
    pub limits: Limits,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A key's live counters (kept across reloads and rotations, by name).
#[derive(Default)]
pub struct Live {
    in_flight: AtomicU32,
    /// Admitted requests whose cost is not counted yet (until their record has been through
    /// the observer: a little after they end).
    uncounted: AtomicU32,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Start times of the requests admitted in the last minute.
    requests: VecDeque<i64>,
    /// Tokens of the requests finished in the last minute (finish time, tokens).
    tokens: VecDeque<(i64, u64)>,
    token_sum: u64,
    /// Spend in the period starting at `period_start` (ms).
    period_start: i64,
    spend: f64,
    /// PostgreSQL: this replica's spend lease on the budget for the period (what it may
    /// spend in total), its spend under it, and whether the fleet has leased (or spent) the
    /// whole budget, as of the last renewal.
    lease_granted: f64,
    lease_used: f64,
    fleet_full: bool,
    /// The largest cost of one request of this key seen by this process, and whether any of
    /// its requests has been counted yet: what an admitted request not yet counted may cost.
    max_cost: f64,
    counted_any: bool,
    /// When a request of this key last wanted budget on this replica (admitted, or waiting for
    /// a lease): a replica that has not for [`IDLE_LEASE_MS`] gives its unused lease back.
    wanted_ms: i64,
    /// Models this key used at no known cost that were warned of (a few at most).
    unpriced_warned: Vec<String>,
    last_used_ms: Option<i64>,
}

impl Window {
    fn prune(&mut self, now: i64) {
        while self.requests.front().is_some_and(|&t| t <= now - MINUTE_MS) {
            self.requests.pop_front();
        }
        while let Some(&(t, n)) = self.tokens.front() {
            if t > now - MINUTE_MS {
                break;
            }
            self.tokens.pop_front();
            self.token_sum = self.token_sum.saturating_sub(n);
        }
    }

    fn roll(&mut self, budget: Option<&Budget>, now: i64) {
        if let Some(b) = budget {
            let (start, _) = b.period.bounds(now);
            if start != self.period_start {
                self.period_start = start;
                self.spend = 0.0;
                self.lease_granted = 0.0;
                self.lease_used = 0.0;
                self.fleet_full = false;
            }
        }
    }
}

/// A key in memory.
struct Entry {
    record: KeyRecord,
    live: Arc<Live>,
}

#[derive(Default)]
struct Table {
    by_digest: HashMap<[u8; 32], Arc<Entry>>,
    by_name: HashMap<String, Arc<Entry>>,
}

/// Holds one of a key's concurrent-request slots until dropped (with the request's record).
pub struct Slot {
    live: Arc<Live>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted request whose cost is not counted yet, until dropped (after the observer's sink
/// has counted its record: `InFlight::hold_until_counted`).
pub struct Uncounted {
    live: Arc<Live>,
}

impl Drop for Uncounted {
    fn drop(&mut self) {
        self.live.uncounted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request admitted under a client key.
pub struct Admitted {
    pub name: String,
    pub limits: Limits,
    pub slot: Slot,
    pub uncounted: Uncounted,
    /// The key's windows after this request (for the response's rate-limit headers), when
    /// it has an rpm or tpm limit.
    pub rate_limits: Option<RateLimitInfo>,
}

/// The model check, once the model is known (after `prepare`): 403 naming the patterns.
pub fn check_model(name: &str, limits: &Limits, model: Option<&str>) -> Result<(), ProxyError> {
    match model {
        Some(m) if !limits.allows_model(m) => {
            reject(name, "model");
            Err(ProxyError::new(
                ErrorKind::Forbidden,
                Origin::Client,
                format!(
                    "client key {name:?} may not use model {m:?}; allowed: {}",
                    limits.models.join(", ")
                ),
            )
            .with_param("model"))
        }
        _ => Ok(()),
    }
}

/// A request refused at the access phase, and the key it came with (if it was one).
#[derive(Debug)]
pub struct Refused {
    pub key: Option<String>,
    pub error: Box<ProxyError>,
}

impl From<ProxyError> for Refused {
    fn from(error: ProxyError) -> Refused {
        Refused {
            key: None,
            error: Box::new(error),
        }
    }
}

/// The client keys of a running server.
pub struct ClientKeys {
    table: RwLock<Arc<Table>>,
    /// The store that holds the keys (`None`: keys are unavailable).
    db: Option<crate::db::Database>,
    /// Whether the shared database answers; how many replicas share the limits.
    link: Arc<crate::db::Link>,
    /// Wakes the reload thread early (a budget lease ran low).
    poke: (Mutex<bool>, std::sync::Condvar),
    /// Why the keys table could not be read, if it could not.
    error: Mutex<Option<String>>,
    /// The reload's connection (also serialises reloads).
    conn: Mutex<Option<store::KeyDb>>,
    /// `require_client_keys`: enforce even with no key configured.
    required: bool,
    /// At least one key is configured, or `unread` (the hot path's one load when there are
    /// none).
    any: std::sync::atomic::AtomicBool,
    /// The keys could not be read at startup and may exist: every key is refused until a
    /// reload reads them (fail closed: a table that cannot be read never opens the proxy).
    unread: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys")
            .field("keys", &self.snapshot().by_name.len())
            .finish_non_exhaustive()
    }
}

impl ClientKeys {
    /// Loads the keys from the usage database at `db` (created and migrated if needed)
    /// and starts the reload thread. With `db` `None`, there are no keys.
    pub fn open(db: Option<PathBuf>, required: bool) -> Arc<ClientKeys> {
        Self::open_db(
            db.map(crate::db::Database::Sqlite),
            required,
            crate::db::Link::new(),
        )
    }

    /// [`ClientKeys::open`] on the configured store. With PostgreSQL a listener thread reloads
    /// the moment any replica changes a key (`LISTEN ccproxy_keys`), the reload every
    /// [`RELOAD_EVERY`] stays as the safety net, and rate limits are shared by the replicas
    /// alive (`link`).
    pub fn open_db(
        db: Option<crate::db::Database>,
        required: bool,
        link: Arc<crate::db::Link>,
    ) -> Arc<ClientKeys> {
        let pg = db.as_ref().and_then(|d| d.postgres().cloned());
        let keys = Arc::new(ClientKeys {
            table: RwLock::new(Arc::new(Table::default())),
            db,
            link,
            poke: (Mutex::new(false), std::sync::Condvar::new()),
            error: Mutex::new(None),
            conn: Mutex::new(None),
            required,
            any: std::sync::atomic::AtomicBool::new(false),
            unread: std::sync::atomic::AtomicBool::new(false),
        });
        if let Some(db) = &keys.db {
            // Unread until the first read succeeds (before the reload thread starts, and
            // before the server serves anything).
            keys.unread.store(true, Ordering::Release);
            keys.reload();
            if keys.unread.load(Ordering::Acquire) {
                if store::holds_no_keys(db) {
                    keys.unread.store(false, Ordering::Release);
                    tracing::warn!(
                        "the client keys cannot be read, and the database holds none: the proxy runs without client keys"
                    );
                } else {
                    keys.any.store(true, Ordering::Release);
                    tracing::error!(
                        "the client keys cannot be read: proxied requests are refused (503) until they can; the admin token still works"
                    );
                }
            }
            let weak = Arc::downgrade(&keys);
            let spawned = std::thread::Builder::new()
                .name("ccproxy-keys".into())
                .spawn(move || reload_loop(&weak));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the client-keys reload thread; keys changed by the CLI need a restart");
            }
        }
        if let Some(url) = pg {
            let weak = Arc::downgrade(&keys);
            let spawned = std::thread::Builder::new()
                .name("ccproxy-keys-listen".into())
                .spawn(move || listen_loop(&url, &weak));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the client-keys listener; changes arrive with the periodic reload");
            }
        }
        keys
    }

    /// No keys, never enforced (tests and tools).
    pub fn none() -> Arc<ClientKeys> {
        Arc::new(ClientKeys {
            table: RwLock::new(Arc::new(Table::default())),
            db: None,
            link: Arc::new(crate::db::Link::default()),
            poke: (Mutex::new(false), std::sync::Condvar::new()),
            error: Mutex::new(None),
            conn: Mutex::new(None),
            required: false,
            any: std::sync::atomic::AtomicBool::new(false),
            unread: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn snapshot(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The SQLite database holding the keys, if that is where they are.
    pub fn db(&self) -> Option<&std::path::Path> {
        self.db.as_ref().and_then(|d| d.sqlite_path())
    }

    /// Whether proxied requests need a client key (or the admin token): with at least one
    /// key (revoked ones count: revoking the last key does not open the proxy), or with
    /// `require_client_keys`, or while a table that could not be read at startup may hold
    /// keys (every key is then refused with a 503 until a reload reads the table; the admin
    /// token still works). A store that provably holds no key ([`store::holds_no_keys`]: the
    /// file does not exist, or has no key in it) leaves the proxy open; on a later read error
    /// the keys last read stay in force.
    pub fn enforced(&self) -> bool {
        self.required || self.any.load(Ordering::Acquire)
    }

    /// Why the keys are not read yet, while requests are refused for it.
    pub fn unreadable(&self) -> Option<String> {
        if !self.unread.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.last_error()
                .unwrap_or_else(|| "not read yet".to_owned()),
        )
    }

    /// The last error reading the keys, until a read succeeds.
    fn last_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The refusal while the keys cannot be read: the cause (with its path) is in the log and
    /// on `/health`, not in the client's answer.
    fn check_read(&self) -> Result<(), ProxyError> {
        if !self.unread.load(Ordering::Acquire) {
            return Ok(());
        }
        // Retry-After: the table is read again every second.
        Err(ProxyError::unavailable(
            "ccproxy cannot read its client keys, and refuses requests until it can (its log and /health say why)",
            RELOAD_EVERY.as_secs().max(1),
        ))
    }

    /// How many keys are configured (revoked ones included).
    pub fn count(&self) -> usize {
        self.snapshot().by_name.len()
    }

    /// Whether `token` is a known client key (any state): admin routes refuse those by name.
    pub fn is_client_key(&self, token: &str) -> bool {
        self.find(token).is_some()
    }

    fn find(&self, token: &str) -> Option<Arc<Entry>> {
        let d = digest(token);
        let table = self.snapshot();
        let e = table.by_digest.get(&d)?;
        bool::from(e.record.digest.ct_eq(&d)).then(|| e.clone())
    }

    /// Whether `token` is a key that is neither revoked nor expired (no limit is counted).
    pub fn usable(&self, token: Option<&str>, now: i64) -> Result<(), ProxyError> {
        self.check_read()?;
        let e = token
            .and_then(|t| self.find(t))
            .ok_or_else(|| ProxyError::auth("invalid or missing client key"))?;
        let l = &e.record.limits;
        if e.record.revoked_at_ms.is_some() || l.expires_at_ms.is_some_and(|x| now >= x) {
            return Err(ProxyError::auth(format!(
                "client key {:?} was revoked or has expired",
                e.record.name
            )));
        }
        Ok(())
    }

    /// The access check of a proxied request under key enforcement: the presented
    /// token is a client key that is valid, allowed this mode, under its budget and
    /// its limits. Counts the request (rpm) and takes a concurrency slot.
    /// A refusal names the key (for the usage row and the log line) when it was one.
    pub fn admit(&self, token: Option<&str>, mode: Mode, now: i64) -> Result<Admitted, Refused> {
        self.check_read()?;
        let Some(entry) = token.and_then(|t| self.find(t)) else {
            return Err(ProxyError::auth(
                "invalid or missing client key: send your ccproxy client key (ccp-…) as x-api-key or Authorization: Bearer",
            )
            .into());
        };
        self.admit_entry(&entry, mode, now)
            .map_err(|error| Refused {
                key: Some(entry.record.name.clone()),
                error: Box::new(error),
            })
    }

    fn admit_entry(&self, entry: &Entry, mode: Mode, now: i64) -> Result<Admitted, ProxyError> {
        let rec = &entry.record;
        let name = &rec.name;
        if rec.revoked_at_ms.is_some() {
            reject(name, "revoked");
            return Err(ProxyError::auth(format!("client key {name:?} was revoked")));
        }
        if let Some(exp) = rec.limits.expires_at_ms
            && now >= exp
        {
            reject(name, "expired");
            return Err(ProxyError::auth(format!(
                "client key {name:?} expired at {}",
                format_utc(exp)
            )));
        }
        // Several replicas: each enforces its share of rpm, tpm and max-concurrent.
        let shared;
        let limits = if self.link.replicas() > 1 {
            let l = &rec.limits;
            shared = Limits {
                rpm: l
                    .rpm
                    .map(|n| u32::try_from(self.share(u64::from(n))).unwrap_or(n)),
                tpm: l.tpm.map(|n| self.share(n)),
                max_concurrent: l
                    .max_concurrent
                    .map(|n| u32::try_from(self.share(u64::from(n))).unwrap_or(n)),
                ..l.clone()
            };
            &shared
        } else {
            &rec.limits
        };
        if !limits.allows_mode(mode) {
            reject(name, "mode");
            let allowed: Vec<&str> = limits.modes.iter().map(|m| m.name()).collect();
            return Err(ProxyError::new(
                ErrorKind::Forbidden,
                Origin::Client,
                format!(
                    "client key {name:?} may not use {} mode; allowed: {}",
                    mode.name(),
                    allowed.join(", ")
                ),
            ));
        }
        let live = &entry.live;
        let mut w = live.window.lock().unwrap_or_else(|e| e.into_inner());
        w.prune(now);
        w.roll(limits.budget.as_ref(), now);
        // The budget. With PostgreSQL it is shared through leases: a replica spends only under
        // its own lease, and the budget is spent when this replica's lease is used up and the
        // fleet has nothing left to grant (what other replicas hold, they still spend).
        let spent = match &limits.budget {
            Some(b) if self.leased() => {
                w.wanted_ms = now;
                let left = w.lease_granted - w.lease_used;
                // Spent: this replica's lease is used up, no lease is left to grant, and the
                // fleet's recorded spend has reached the budget. While other replicas still
                // hold some of it (in flight, or idle for less than `IDLE_LEASE_MS`), the key
                // waits for its share instead.
                if left <= 0.0 && w.fleet_full && w.spend >= b.usd * (1.0 - 1e-9) {
                    true
                } else {
                    // Requests admitted but not counted yet are reserved at the largest cost
                    // seen. Near the lease's end (less than half a lease left), or before any
                    // cost is known, one request at a time: the next only once the previous
                    // one's cost is counted. So a replica spends at most its lease and one
                    // request.
                    let pending = live.uncounted.load(Ordering::Acquire);
                    let free = left - f64::from(pending) * w.max_cost;
                    let low = !w.counted_any
                        || free < lease_size(b.usd, f64::from(self.link.replicas())) / 2.0;
                    // No lease left, but the fleet has budget to grant (a replica the key has
                    // not used lately holds none): one request, while the lease is asked for.
                    // It takes the replica past its lease by itself at most.
                    let unleased = left >= 0.0 && pending == 0 && !w.fleet_full;
                    if (free <= 0.0 && !unleased) || (low && pending > 0) {
                        self.poke();
                        reject(name, "budget_lease");
                        let mut e = rate_limited(
                            format!(
                                "client key {name:?} is waiting for its share of the budget on this replica"
                            ),
                            rate_info(limits, &w, now),
                        );
                        e.retry_after = Some(1);
                        return Err(e);
                    }
                    if low {
                        self.poke();
                    }
                    false
                }
            }
            Some(b) => w.spend >= b.usd,
            None => false,
        };
        if spent && let Some(b) = &limits.budget {
            reject(name, "budget");
            let (_, end) = b.period.bounds(now);
            let mut e = ProxyError::new(
                ErrorKind::BudgetExceeded,
                Origin::Client,
                format!(
                    "client key {name:?} has spent ${:.4} of its ${:.2} budget for this {}; it resets at {}",
                    w.spend,
                    b.usd,
                    b.period.name(),
                    format_utc(end)
                ),
            );
            e.retry_after = Some(secs_until(now, end));
            return Err(e);
        }
        let info = |w: &Window| rate_info(limits, w, now);
        if let Some(rpm) = limits.rpm
            && w.requests.len() >= rpm as usize
        {
            reject(name, "rpm");
            let e = rate_limited(
                format!("client key {name:?} is limited to {rpm} requests per minute"),
                info(&w),
            );
            return Err(e);
        }
        if let Some(tpm) = limits.tpm
            && w.token_sum >= tpm
        {
            reject(name, "tpm");
            return Err(rate_limited(
                format!("client key {name:?} is limited to {tpm} tokens per minute"),
                info(&w),
            ));
        }
        if let Some(max) = limits.max_concurrent {
            let taken = live
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                });
            if taken.is_err() {
                reject(name, "max_concurrent");
                let mut e = rate_limited(
                    format!("client key {name:?} is limited to {max} concurrent requests"),
                    info(&w),
                );
                e.retry_after = Some(1);
                return Err(e);
            }
        } else {
            live.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        w.requests.push_back(now);
        w.last_used_ms = Some(now);
        let rate_limits = (limits.rpm.is_some() || limits.tpm.is_some()).then(|| info(&w));
        drop(w);
        live.uncounted.fetch_add(1, Ordering::AcqRel);
        Ok(Admitted {
            name: name.clone(),
            limits: limits.clone(),
            slot: Slot { live: live.clone() },
            uncounted: Uncounted { live: live.clone() },
            rate_limits,
        })
    }

    /// A finished request of key `name`: its tokens (tpm) and cost (budget). A budgeted key's
    /// request that used `model` at no known cost is counted in
    /// `ccproxy_client_key_unpriced_total` and warned of once per key and model.
    pub fn finished(
        &self,
        name: &str,
        at_ms: i64,
        tokens: u64,
        cost_usd: Option<f64>,
        model: Option<&str>,
    ) {
        let table = self.snapshot();
        let Some(entry) = table.by_name.get(name) else {
            return;
        };
        let now = crate::util::time::now_ms();
        let mut w = entry.live.window.lock().unwrap_or_else(|e| e.into_inner());
        w.prune(now);
        w.roll(entry.record.limits.budget.as_ref(), now);
        if tokens > 0 {
            w.tokens.push_back((now, tokens));
            w.token_sum = w.token_sum.saturating_add(tokens);
        }
        if let Some(c) = cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
            w.max_cost = w.max_cost.max(c);
            w.counted_any = true;
            if at_ms >= w.period_start {
                w.spend += c;
                w.lease_used += c;
            }
        } else if tokens > 0 {
            // The model was used and its cost is not known (no price): nothing to reserve. A
            // refused or failed request (no tokens) tells nothing.
            w.counted_any = true;
            if cost_usd.is_none() && entry.record.limits.budget.is_some() {
                // The budget cannot count it: say so, rather than let it spend unseen.
                metrics::counter!("ccproxy_client_key_unpriced_total", "key" => name.to_owned())
                    .increment(1);
                let model = model.unwrap_or("(unknown)");
                if !w.unpriced_warned.iter().any(|m| m == model) && w.unpriced_warned.len() < 16 {
                    w.unpriced_warned.push(model.to_owned());
                    tracing::warn!(
                        key = %name,
                        model = %model,
                        "a request of this budgeted client key has no known cost (no price for its model): it does not count toward the budget; give the model a price in [prices]"
                    );
                }
            }
        }
        metrics::counter!("ccproxy_client_key_requests_total", "key" => name.to_owned())
            .increment(1);
    }

    /// The key's spend in its current period and its requests in flight (for listings).
    pub fn live_of(&self, name: &str) -> Option<(f64, u32)> {
        let table = self.snapshot();
        let e = table.by_name.get(name)?;
        let w = e.live.window.lock().unwrap_or_else(|e| e.into_inner());
        Some((w.spend, e.live.in_flight.load(Ordering::Acquire)))
    }

    /// Runs `f` on the keys table (blocking: call it off the runtime), then reloads, so a
    /// change made here applies to the next request.
    pub fn change<T>(
        &self,
        f: impl FnOnce(&mut store::KeyDb) -> Result<T, store::KeyError>,
    ) -> Result<T, store::KeyError> {
        let db = self.db.as_ref().ok_or(store::KeyError::NoDatabase)?;
        let out = {
            let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            let kdb = match conn.take() {
                Some(c) => conn.insert(c),
                None => conn.insert(store::KeyDb::open_db(db, &self.link)?),
            };
            f(kdb)?
        };
        self.reload();
        Ok(out)
    }

    /// Re-reads the keys table; keeps the live counters of keys that stay.
    pub fn reload(&self) {
        let Some(db) = &self.db else { return };
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let report = |e: store::KeyError| {
            let msg = e.to_string();
            let mut last = self.error.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_deref() != Some(msg.as_str()) {
                if self.unread.load(Ordering::Acquire) {
                    tracing::error!(error = %msg, "cannot read the client keys");
                } else {
                    tracing::error!(error = %msg, "cannot read the client keys; the keys last read stay in force");
                }
                *last = Some(msg);
            }
        };
        let mut kdb = match conn.take() {
            Some(c) => c,
            None => match store::KeyDb::open_db(db, &self.link) {
                Ok(k) => k,
                Err(e) => return report(e),
            },
        };
        let records = match kdb.all() {
            Ok(r) => r,
            Err(e) => {
                *conn = Some(kdb);
                return report(e);
            }
        };
        let kdb = conn.insert(kdb);
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let current = self.snapshot();
        let unchanged = records.len() == current.by_name.len()
            && records
                .iter()
                .all(|r| current.by_name.get(&r.name).is_some_and(|e| e.record == *r));
        if unchanged {
            if self.unread.load(Ordering::Acquire) {
                // `any` first: the refusal lifts onto the table's own enforcement.
                self.any
                    .store(!current.by_name.is_empty(), Ordering::Release);
                self.unread.store(false, Ordering::Release);
            }
            if self.leased() {
                self.sync_leases(kdb);
            }
            return;
        }
        let now = crate::util::time::now_ms();
        let mut table = Table::default();
        for r in records {
            let live = match current.by_name.get(&r.name) {
                Some(e) => e.live.clone(),
                None => Arc::new(restore_live(kdb, &r, now)),
            };
            let entry = Arc::new(Entry { record: r, live });
            table.by_digest.insert(entry.record.digest, entry.clone());
            table.by_name.insert(entry.record.name.clone(), entry);
        }
        let any = !table.by_name.is_empty();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.any.store(any, Ordering::Release);
        // After the table: a key read now is enforced before the refusal lifts.
        self.unread.store(false, Ordering::Release);
        if self.leased() {
            self.sync_leases(kdb);
        }
    }
}

impl ClientKeys {
    /// Shared budgets (PostgreSQL): reports this replica's spend under each budgeted key's
    /// lease and renews the lease when less than half of it is left (`keys::pg::lease`).
    fn sync_leases(&self, kdb: &mut store::KeyDb) {
        let table = self.snapshot();
        let now = crate::util::time::now_ms();
        let replicas = f64::from(self.link.replicas());
        for e in table.by_name.values() {
            let Some(b) = e.record.limits.budget else {
                continue;
            };
            // A replica the key has not used lately (and with nothing of it in flight) holds
            // no lease: it gives back what it did not spend, so that the replicas serving the
            // key can spend the whole budget (a balancer may keep a client on one replica).
            // Given back here first, under the lock an admission takes, so that no request is
            // admitted against it meanwhile.
            let (start, used, idle) = {
                let mut w = e.live.window.lock().unwrap_or_else(|e| e.into_inner());
                w.roll(Some(&b), now);
                let idle = now - w.wanted_ms > IDLE_LEASE_MS
                    && e.live.uncounted.load(Ordering::Acquire) == 0;
                if idle {
                    w.lease_granted = w.lease_granted.min(w.lease_used);
                }
                (w.period_start, w.lease_used, idle)
            };
            let size = if idle {
                0.0
            } else {
                lease_size(b.usd, replicas)
            };
            let Ok(Some(lease)) = kdb.lease(&e.record.name, start, b.usd, used, size, now) else {
                return;
            };
            let mut w = e.live.window.lock().unwrap_or_else(|e| e.into_inner());
            if w.period_start == start {
                w.lease_granted = lease.granted;
                w.fleet_full = lease.committed >= b.usd;
                w.spend = lease.spent.max(w.spend);
            }
        }
    }

    /// Budgets are shared through leases (PostgreSQL).
    fn leased(&self) -> bool {
        self.db.as_ref().is_some_and(|d| d.postgres().is_some())
    }

    /// Asks the reload thread to renew leases now.
    fn poke(&self) {
        *self.poke.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.poke.1.notify_one();
    }

    /// Waits for a poke or `RELOAD_EVERY`.
    fn wait_poke(&self) {
        let mut poked = self.poke.0.lock().unwrap_or_else(|e| e.into_inner());
        if !*poked {
            poked = self
                .poke
                .1
                .wait_timeout(poked, RELOAD_EVERY)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *poked = false;
    }

    /// This replica's share of a fleet-wide limit: the limit divided by the replicas alive
    /// (at least 1).
    fn share(&self, limit: u64) -> u64 {
        (limit / u64::from(self.link.replicas())).max(1)
    }
}

/// Reloads the keys the moment a replica announces a change (`NOTIFY ccproxy_keys`);
/// reconnects with backoff when the database goes away.
fn listen_loop(url: &crate::db::PgUrl, keys: &Weak<ClientKeys>) {
    use postgres::fallible_iterator::FallibleIterator as _;
    let mut backoff = Duration::from_millis(250);
    loop {
        if keys.strong_count() == 0 {
            return;
        }
        let mut client = match crate::db::pg::connect(url) {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if client
            .batch_execute(&format!("LISTEN {}", crate::db::pg::KEYS_CHANNEL))
            .is_err()
        {
            std::thread::sleep(backoff);
            continue;
        }
        backoff = Duration::from_millis(250);
        // A change made while we were not listening.
        if let Some(k) = keys.upgrade() {
            k.reload();
        }
        loop {
            let mut got = false;
            let mut failed = false;
            {
                let mut n = client.notifications();
                let mut it = n.timeout_iter(Duration::from_secs(2));
                loop {
                    match it.next() {
                        Ok(Some(_)) => got = true,
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                    if got {
                        break;
                    }
                }
            }
            let Some(k) = keys.upgrade() else { return };
            if got {
                k.reload();
            }
            if failed || client.is_closed() {
                break;
            }
        }
    }
}

/// A key's counters from the usage rows: requests and tokens of the last minute,
/// spend this period, last use.
fn restore_live(kdb: &mut store::KeyDb, r: &KeyRecord, now: i64) -> Live {
    let mut w = Window::default();
    let since = r.limits.budget.map_or(now - MINUTE_MS, |b| {
        b.period.bounds(now).0.min(now - MINUTE_MS)
    });
    if let Some(b) = &r.limits.budget {
        w.period_start = b.period.bounds(now).0;
    }
    match kdb.rows_of(&r.name, since) {
        Ok(rows) => {
            for (ts, tokens, cost) in rows {
                if ts > now - MINUTE_MS {
                    w.requests.push_back(ts);
                    w.tokens.push_back((ts, tokens));
                    w.token_sum = w.token_sum.saturating_add(tokens);
                }
                if r.limits.budget.is_some() && ts >= w.period_start {
                    w.spend += cost.unwrap_or(0.0);
                }
                w.max_cost = w.max_cost.max(cost.unwrap_or(0.0));
                w.counted_any |= w.max_cost > 0.0 || tokens > 0;
            }
        }
        Err(e) => tracing::warn!(key = %r.name, error = %e, "cannot read the key's past usage"),
    }
    w.last_used_ms = kdb.last_used(&r.name).ok().flatten();
    Live {
        in_flight: AtomicU32::new(0),
        uncounted: AtomicU32::new(0),
        window: Mutex::new(w),
    }
}

fn reload_loop(keys: &Weak<ClientKeys>) {
    loop {
        {
            let Some(k) = keys.upgrade() else { return };
            k.wait_poke();
        }
        let Some(k) = keys.upgrade() else { return };
        k.reload();
    }
}

/// How long a replica keeps a budget lease the key does not use there (ms).
pub const IDLE_LEASE_MS: i64 = 5_000;

/// The spend a replica leases at a time: a quarter of the budget's share per replica.
fn lease_size(budget: f64, replicas: f64) -> f64 {
    budget / (4.0 * replicas.max(1.0))
}

fn reject(name: &str, reason: &'static str) {
    metrics::counter!("ccproxy_client_key_rejected_total", "key" => name.to_owned(), "reason" => reason)
        .increment(1);
}

fn secs_until(now: i64, then: i64) -> u64 {
    u64::try_from((then - now + 999) / 1000).unwrap_or(0).max(1)
}

fn rate_limited(message: String, info: RateLimitInfo) -> ProxyError {
    let mut e = ProxyError::new(ErrorKind::RateLimited, Origin::Client, message);
    let reset = [info.requests, info.tokens]
        .iter()
        .flatten()
        .filter(|w| w.remaining == 0)
        .map(|w| w.reset_secs)
        .max()
        .unwrap_or(1);
    e.retry_after = Some(reset.max(1));
    e.rate_limits = Some(Arc::new(info));
    e
}

/// The key's windows, as rate-limit headers describe them.
fn rate_info(limits: &Limits, w: &Window, now: i64) -> RateLimitInfo {
    let reset_of = |oldest: Option<i64>| oldest.map_or(1, |t| secs_until(now, t + MINUTE_MS));
    RateLimitInfo {
        requests: limits.rpm.map(|rpm| RateWindow {
            limit: u64::from(rpm),
            remaining: u64::from(rpm).saturating_sub(w.requests.len() as u64),
            reset_secs: reset_of(w.requests.front().copied()),
        }),
        tokens: limits.tpm.map(|tpm| RateWindow {
            limit: tpm,
            remaining: tpm.saturating_sub(w.token_sum),
            reset_secs: reset_of(w.tokens.front().map(|t| t.0)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_long() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("ccp-") && a.len() == 44);
        assert_eq!(display_prefix(&a).len(), 8);
    }

    #[test]
    fn globs() {
        assert!(glob("claude-sonnet-*", "claude-sonnet-4-5"));
        assert!(glob("*haiku*", "claude-haiku-4-5"));
        assert!(glob("claude-opus-4-1", "Claude-Opus-4-1"));
        assert!(!glob("claude-sonnet-*", "claude-opus-4"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "acbd"));
        assert!(glob("a*b*", "acbd"));
    }

    #[test]
    fn periods() {
        // 2024-02-29 12:30 UTC, a Thursday.
        let t = 1_709_209_800_000;
        let (s, e) = Period::Day.bounds(t);
        assert_eq!(format_utc(s), "2024-02-29 00:00:00 UTC");
        assert_eq!(format_utc(e), "2024-03-01 00:00:00 UTC");
        let (s, e) = Period::Week.bounds(t);
        assert_eq!(format_utc(s), "2024-02-26 00:00:00 UTC");
        assert_eq!(format_utc(e), "2024-03-04 00:00:00 UTC");
        let (s, e) = Period::Month.bounds(t);
        assert_eq!(format_utc(s), "2024-02-01 00:00:00 UTC");
        assert_eq!(format_utc(e), "2024-03-01 00:00:00 UTC");
        let (_, e) = Period::Month.bounds(1_735_000_000_000); // December 2024
        assert_eq!(format_utc(e), "2025-01-01 00:00:00 UTC");
    }

    #[test]
    fn expiry_and_requests_parse() {
        let now = 1_000_000;
        assert_eq!(parse_expires("30d", now), Ok(Some(now + 30 * 86_400_000)));
        assert_eq!(parse_expires("never", now), Ok(None));
        assert_eq!(
            parse_expires("2026-12-31", now).map(|t| t.map(format_utc)),
            Ok(Some("2026-12-31 00:00:00 UTC".to_owned()))
        );
        for bad in ["0d", "3x", "tomorrow", "99999999999999999d", "2026-13-01"] {
            assert!(parse_expires(bad, now).is_err(), "{bad}");
        }
        let req = KeyRequest {
            name: "bot".into(),
            models: Some(StrOrList::Str("claude-haiku-*, claude-sonnet-*".into())),
            modes: Some(StrOrList::Str("min,pt".into())),
            budget_usd: Some(5.0),
            period: Some("week".into()),
            ..KeyRequest::default()
        };
        let l = req.limits(now).unwrap();
        assert_eq!(l.models, ["claude-haiku-*", "claude-sonnet-*"]);
        assert_eq!(l.modes, [Mode::Minimal, Mode::Passthrough]);
        assert_eq!(l.budget.unwrap().period, Period::Week);
        for bad in [
            KeyRequest {
                name: "a b".into(),
                ..KeyRequest::default()
            },
            KeyRequest {
                name: "x".into(),
                rpm: Some(0),
                ..KeyRequest::default()
            },
            KeyRequest {
                name: "x".into(),
                budget_usd: Some(-1.0),
                ..KeyRequest::default()
            },
            KeyRequest {
                name: "x".into(),
                period: Some("day".into()),
                ..KeyRequest::default()
            },
            KeyRequest {
                name: "x".into(),
                modes: Some(StrOrList::Str("max".into())),
                ..KeyRequest::default()
            },
        ] {
            assert!(bad.limits(now).is_err(), "{bad:?}");
        }
    }
}
