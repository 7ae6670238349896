//! [`OAuthManager`]: one per server. Hands out access tokens, refreshing them ahead of expiry.
//!
//! Invariants:
//! - Single flight: refreshes run under one async mutex. Callers that queued behind an attempt use its
//!   outcome instead of starting their own, so N concurrent callers at expiry cause one POST.
//! - A token that is still valid is never held up by a refresh in progress: callers get it at once.
//! - Before every refresh the source is re-read; a token someone else (Claude Code) refreshed is
//!   adopted without a POST. A refresh rejected with `invalid_grant` re-reads once more (the other
//!   party may have rotated the refresh token in between) and a refresh token the endpoint rejected is
//!   never sent again.
//! - Refreshed credentials are written back atomically (0600, unknown keys kept), because refresh
//!   tokens rotate: not writing them back would log Claude Code out. They are written the moment they
//!   arrive, and an attempt runs in its own task: once the refresh token is sent, a caller that goes
//!   away (a client disconnecting mid-request) cannot cancel the write of its successor.
//! - Failures back off exponentially (honouring `Retry-After`); until expiry the current token is used.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tracing::{debug, error, info, warn};

use super::endpoint::{EndpointError, EndpointErrorKind, Grant, TokenEndpoint};
use super::store::{Loaded, OAuthCreds, Source, remove_stale_temps};
use super::{
    AccessToken, CredentialError, CredentialsConfig, OAuthStatus, SourceInfo, SourceKind,
    TOKEN_REQUEST_TIMEOUT, format_utc, keychain, now_ms, store,
};

/// Timing knobs (defaults for production; tests shrink them).
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    pub request_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Once the token has expired, requests may retry a failed refresh this often despite backoff.
    pub expired_retry: Duration,
    pub bg_min_sleep: Duration,
    pub bg_max_sleep: Duration,
    /// Re-reads of a source that looks torn (a non-atomic writer mid-write) before giving up.
    pub reread_retries: u32,
    pub reread_delay: Duration,
    /// A token valid for less than this is "about to expire": callers wait for a refresh in flight.
    pub max_grace: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            request_timeout: TOKEN_REQUEST_TIMEOUT,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(5 * 60),
            expired_retry: Duration::from_secs(2),
            bg_min_sleep: Duration::from_secs(1),
            bg_max_sleep: Duration::from_secs(60),
            reread_retries: 2,
            reread_delay: Duration::from_millis(50),
            max_grace: Duration::from_secs(10),
        }
    }
}

/// The credentials in use.
struct Current {
    creds: OAuthCreds,
    /// The last document read from (or written to) the source, for write-back when it is torn.
    root: Arc<Map<String, Value>>,
    /// Lifetime of a token we obtained ourselves (from `expires_in`): caps the skew at half of it.
    lifetime_ms: Option<i64>,
}

/// State of the refresh machinery, guarded by the single-flight mutex.
#[derive(Default)]
struct Flight {
    failures: u32,
    retry_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<CredentialError>,
    /// A refresh token the endpoint answered `invalid_grant` for.
    dead_refresh_token: Option<super::Secret>,
}

#[derive(Default)]
struct Report {
    last_refresh_at_ms: Option<i64>,
    last_error: Option<String>,
    /// The last attempt's refresh token was answered `invalid_grant`.
    refresh_token_rejected: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Refresh because the token is within the refresh window (request path, background).
    Ahead,
    /// Refresh because the upstream rejected a token.
    Rejected,
    /// Refresh unconditionally (`ccproxy auth refresh`).
    Forced,
}

enum Reread {
    Found {
        root: Map<String, Value>,
        creds: OAuthCreds,
    },
    Gone,
    Unreadable(CredentialError),
}

/// Hands out OAuth access tokens for one credentials source.
pub struct OAuthManager {
    source: Source,
    info: SourceInfo,
    endpoint: TokenEndpoint,
    skew: Duration,
    tuning: Tuning,
    state: RwLock<Arc<Current>>,
    attempts: AtomicU64,
    flight: Arc<tokio::sync::Mutex<Flight>>,
    report: Mutex<Report>,
    /// This manager, for the task an attempt runs in (managers live in an `Arc`).
    me: Weak<Self>,
    /// The fleet sharing this credential through PostgreSQL (one refresh for all replicas).
    fleet: std::sync::OnceLock<super::fleet::Fleet>,
    /// The runtime the manager was made on (the server's main one), where refresh attempts run:
    /// not a serving thread's, which ends with its connections at shutdown.
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for OAuthManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthManager")
            .field("source", &self.info.description)
            .field("token_url", &self.endpoint.url())
            .finish_non_exhaustive()
    }
}

/// The sources `discover` looks at, in order (for messages).
pub fn candidate_sources(cfg: &CredentialsConfig) -> Vec<SourceInfo> {
    sources(cfg).iter().map(Source::info).collect()
}

fn sources(cfg: &CredentialsConfig) -> Vec<Source> {
    let mut out = Vec::new();
    if let Some(p) = &cfg.credentials_file {
        out.push(Source::File {
            kind: SourceKind::CredentialsFile,
            path: p.clone(),
        });
        return out;
    }
    out.push(Source::File {
        kind: SourceKind::OwnStore,
        path: cfg.own_store.clone(),
    });
    for path in cfg.claude_code_files() {
        out.push(Source::File {
            kind: SourceKind::ClaudeCode,
            path,
        });
    }
    if cfg.use_keychain && cfg!(target_os = "macos") {
        out.push(Source::Keychain {
            service: keychain::SERVICE.to_owned(),
        });
    }
    out
}

impl OAuthManager {
    /// Finds the first source that holds credentials, in the order: `credentials_file` (when set it
    /// is the only source, and a missing or entry-less file is an error), the own store, Claude
    /// Code's `~/.claude/.credentials.json`, `~/.config/claude/.credentials.json`, the macOS
    /// Keychain. Missing sources and documents without `claudeAiOauth` are skipped; `Ok(None)` when
    /// none has credentials. A source that exists but is torn or invalid is an error naming it.
    pub fn discover(
        cfg: CredentialsConfig,
        http: reqwest::Client,
    ) -> Result<Option<Arc<Self>>, CredentialError> {
        Self::discover_tuned(cfg, http, Tuning::default())
    }

    pub(crate) fn discover_tuned(
        cfg: CredentialsConfig,
        http: reqwest::Client,
        tuning: Tuning,
    ) -> Result<Option<Arc<Self>>, CredentialError> {
        let explicit = cfg.credentials_file.is_some();
        let sources = sources(&cfg);
        for source in &sources {
            if let Some(path) = source.path() {
                remove_stale_temps(path);
            }
        }
        for source in sources {
            match source.load()? {
                Loaded::Found { root, creds } => {
                    return Ok(Some(Arc::new_cyclic(|me| {
                        Self::new(source, root, creds, &cfg, http, tuning, me.clone())
                    })));
                }
                Loaded::Missing if explicit => {
                    return Err(CredentialError::MissingFile {
                        path: source.path().map(Into::into).unwrap_or_default(),
                    });
                }
                Loaded::NoEntry if explicit => {
                    return Err(CredentialError::Invalid {
                        path: source.path().map(Into::into).unwrap_or_default(),
                        reason: format!("it has no `{}` entry", store::OAUTH_KEY),
                    });
                }
                Loaded::Missing | Loaded::NoEntry => {
                    debug!(source = %source.info(), "no Claude credentials here");
                }
            }
        }
        Ok(None)
    }

    fn new(
        source: Source,
        root: Map<String, Value>,
        creds: OAuthCreds,
        cfg: &CredentialsConfig,
        http: reqwest::Client,
        tuning: Tuning,
        me: Weak<Self>,
    ) -> Self {
        let info = source.info();
        if let Some(path) = source.path()
            && let Some(mode) = store::loose_mode(path)
        {
            warn!(
                path = %path.display(),
                mode = format!("{mode:03o}"),
                "the credentials file is accessible to other users; run `chmod 600 {}`",
                path.display()
            );
        }
        debug!(source = %info, "using Claude subscription credentials");
        Self {
            endpoint: TokenEndpoint::new(
                http,
                cfg.token_url.clone(),
                cfg.client_id.clone(),
                tuning.request_timeout,
            ),
            source,
            info,
            skew: cfg.refresh_skew,
            tuning,
            state: RwLock::new(Arc::new(Current {
                creds,
                root: Arc::new(root),
                lifetime_ms: None,
            })),
            attempts: AtomicU64::new(0),
            flight: Arc::new(tokio::sync::Mutex::new(Flight::default())),
            report: Mutex::new(Report::default()),
            me,
            fleet: std::sync::OnceLock::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Where the credentials come from.
    /// Shares this credential's refresh with the replicas of `fleet` (set once).
    pub fn share_with(&self, fleet: super::fleet::Fleet) {
        let _ = self.fleet.set(fleet);
    }

    pub fn source(&self) -> &SourceInfo {
        &self.info
    }

    /// A usable access token, refreshed ahead of expiry (single flight). While a refresh is in
    /// flight, callers whose token is still comfortably valid get it without waiting. If a refresh
    /// fails before expiry the current token is returned (a warning is logged); after expiry the
    /// error is [`CredentialError::Expired`], whose message names the command that fixes it.
    pub async fn access_token(&self) -> Result<AccessToken, CredentialError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let cur = self.snapshot();
        if !self.needs_refresh(&cur, now_ms()) {
            return Ok(cur.creds.access_token.clone());
        }
        self.refresh_flow(Mode::Ahead, None, seen).await
    }

    /// After the upstream answered 401 for `rejected`: when the current token differs (someone
    /// already refreshed) it is returned, otherwise one refresh is forced (single flight as well).
    pub async fn force_refresh(
        &self,
        rejected: &AccessToken,
    ) -> Result<AccessToken, CredentialError> {
        let seen = self.attempts.load(Ordering::Acquire);
        let cur = self.snapshot();
        if cur.creds.access_token != *rejected {
            return self.access_token().await;
        }
        self.refresh_flow(Mode::Rejected, Some(rejected), seen)
            .await
    }

    /// Refreshes now, whatever the expiry (`ccproxy auth refresh`). Errors are returned as they are.
    pub async fn refresh_now(&self) -> Result<AccessToken, CredentialError> {
        self.refresh_flow(Mode::Forced, None, 0).await
    }

    /// Starts the background refresher: it wakes before `expiry - skew`, refreshes, and sleeps again;
    /// after a failure it waits for the backoff (never spins). It holds only a weak reference and
    /// ends when the manager is dropped.
    pub fn spawn_background_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let delay = match weak.upgrade() {
                    Some(manager) => manager.background_tick().await,
                    None => return,
                };
                tokio::time::sleep(delay).await;
            }
        })
    }

    /// A snapshot for `auth status` and the status endpoint (no secrets).
    pub fn status(&self) -> OAuthStatus {
        let cur = self.snapshot();
        let now = now_ms();
        let report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        OAuthStatus {
            source: self.info.clone(),
            masked_token: cur.creds.access_token.masked(),
            expires_at_ms: cur.creds.expires_at_ms,
            expired: self.expired(&cur, now),
            refresh_due: self.needs_refresh(&cur, now),
            has_refresh_token: cur.creds.refresh_token.is_some(),
            subscription_type: cur.creds.subscription_type.clone(),
            scopes: cur.creds.scopes.clone(),
            last_refresh_at_ms: report.last_refresh_at_ms,
            last_refresh_error: report.last_error.clone(),
            refresh_token_rejected: report.refresh_token_rejected,
        }
    }

    // ---- time arithmetic ----

    fn snapshot(&self) -> Arc<Current> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, next: Current) -> Arc<Current> {
        let next = Arc::new(next);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        next
    }

    fn effective_skew_ms(&self, cur: &Current) -> i64 {
        let skew = i64::try_from(self.skew.as_millis()).unwrap_or(i64::MAX);
        match cur.lifetime_ms {
            Some(l) => skew.min(l / 2),
            None => skew,
        }
    }

    /// When the token should be refreshed (epoch ms); `None` when its expiry is unknown.
    fn refresh_at(&self, cur: &Current) -> Option<i64> {
        let exp = cur.creds.expires_at_ms?;
        Some(exp.saturating_sub(self.effective_skew_ms(cur)))
    }

    fn needs_refresh(&self, cur: &Current, now: i64) -> bool {
        self.refresh_at(cur).is_some_and(|at| now >= at)
    }

    fn expired(&self, cur: &Current, now: i64) -> bool {
        cur.creds.expires_at_ms.is_some_and(|e| now >= e)
    }

    /// Valid for less than the grace period: worth waiting for a refresh in flight.
    fn expiring(&self, cur: &Current, now: i64) -> bool {
        let grace = i64::try_from(self.tuning.max_grace.as_millis())
            .unwrap_or(i64::MAX)
            .min(self.effective_skew_ms(cur) / 2);
        cur.creds
            .expires_at_ms
            .is_some_and(|e| now.saturating_add(grace) >= e)
    }

    fn usable(&self, cur: &Current, now: i64, rejected: Option<&AccessToken>) -> bool {
        !self.needs_refresh(cur, now) && rejected.is_none_or(|r| cur.creds.access_token != *r)
    }

    // ---- the refresh machinery ----

    async fn refresh_flow(
        &self,
        mode: Mode,
        rejected: Option<&AccessToken>,
        seen: u64,
    ) -> Result<AccessToken, CredentialError> {
        let mut flight = {
            let cur = self.snapshot();
            if mode == Mode::Ahead && !self.expiring(&cur, now_ms()) {
                // Still valid: do not wait for somebody else's refresh.
                match self.flight.clone().try_lock_owned() {
                    Ok(guard) => guard,
                    Err(_) => return Ok(cur.creds.access_token.clone()),
                }
            } else {
                self.flight.clone().lock_owned().await
            }
        };
        let cur = self.snapshot();
        let now = now_ms();
        if mode != Mode::Forced {
            if self.usable(&cur, now, rejected) {
                return Ok(cur.creds.access_token.clone());
            }
            if self.attempts.load(Ordering::Acquire) != seen {
                // An attempt finished while we waited and left no fresh token: share its outcome.
                if let Some(err) = flight.last_error.clone() {
                    return self.fallback(&cur, now, mode, rejected, err);
                }
                if !self.expired(&cur, now) && rejected.is_none_or(|r| cur.creds.access_token != *r)
                {
                    return Ok(cur.creds.access_token.clone());
                }
            }
            if let (Some(retry_at), Some(err)) = (flight.retry_at, flight.last_error.clone()) {
                let t = Instant::now();
                let expired_retry_due = self.expired(&cur, now)
                    && flight
                        .last_attempt
                        .is_none_or(|a| t.duration_since(a) >= self.tuning.expired_retry);
                if t < retry_at && !expired_retry_due {
                    return self.fallback(&cur, now, mode, rejected, err);
                }
            }
        }
        let Some(me) = self.me.upgrade() else {
            // Not in an `Arc` (cannot happen: `discover` makes every manager): attempt inline.
            let result = self.attempt(&mut flight, mode, rejected).await;
            self.attempts.fetch_add(1, Ordering::AcqRel);
            return result;
        };
        // The attempt (POST, then the write of the rotated tokens) runs in its own task, holding
        // the single-flight lock: if this caller is dropped, the attempt still completes.
        let rejected = rejected.cloned();
        let attempt = async move {
            let result = me.attempt(&mut flight, mode, rejected.as_ref()).await;
            me.attempts.fetch_add(1, Ordering::AcqRel);
            drop(flight);
            result
        };
        let task = match &self.runtime {
            Some(rt) => rt.spawn(attempt),
            None => tokio::spawn(attempt),
        };
        task.await.unwrap_or_else(|e| {
            Err(CredentialError::Interrupted {
                origin: self.info.description.clone(),
                reason: if e.is_panic() {
                    "the refresh task panicked"
                } else {
                    "the refresh task was cancelled (shutting down)"
                },
            })
        })
    }

    async fn attempt(
        &self,
        flight: &mut Flight,
        mode: Mode,
        rejected: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        flight.last_attempt = Some(Instant::now());
        // One replica of a fleet at a time (held until this attempt ends).
        let fleet_lock = match self.fleet.get() {
            Some(f) => f.lock().await.map(|l| (f, l)),
            None => None,
        };
        let mut cur = match self.reread().await {
            Reread::Found { root, creds } => self.merge_from_source(root, creds, false),
            Reread::Gone => return self.source_removed(flight, mode, rejected),
            Reread::Unreadable(e) => {
                warn!(error = %e, "cannot re-read the credentials; refreshing the copy in memory");
                self.snapshot()
            }
        };
        if let Some((f, lock)) = &fleet_lock
            && let Some(shared) = f.load(lock).await
            && !shared.same_tokens(&cur.creds)
            && match (shared.expires_at_ms, cur.creds.expires_at_ms) {
                (Some(s), Some(m)) => s > m,
                _ => true,
            }
        {
            cur = self.adopt_shared(&cur, shared).await;
        }
        if mode != Mode::Forced && self.usable(&cur, now_ms(), rejected) {
            debug!(source = %self.info, "another process already refreshed the token");
            self.record_success(flight);
            return Ok(cur.creds.access_token.clone());
        }
        let mut reread_after_rejection = true;
        loop {
            let refresh_token = match self.refresh_token_to_send(flight, &cur, mode, rejected) {
                ControlFlow::Continue(token) => token,
                ControlFlow::Break(result) => return result,
            };
            let e = match self.post_refresh(&refresh_token).await {
                Ok(grant) => {
                    let token = self.on_grant(flight, &cur, grant).await;
                    if let Some((f, lock)) = &fleet_lock {
                        f.store(lock, &self.snapshot().creds).await;
                    }
                    return Ok(token);
                }
                Err(e) => e,
            };
            if e.kind == EndpointErrorKind::InvalidGrant && reread_after_rejection {
                reread_after_rejection = false;
                if let Some(rotated) = self.rotated_elsewhere(&refresh_token).await {
                    cur = rotated;
                    if mode != Mode::Forced && self.usable(&cur, now_ms(), rejected) {
                        self.record_success(flight);
                        return Ok(cur.creds.access_token.clone());
                    }
                    continue;
                }
            }
            return self.refresh_failed(flight, &cur, mode, rejected, refresh_token, e);
        }
    }

    /// Takes the tokens another replica refreshed (newer than ours) and writes them to our
    /// source, so a restart does not send the refresh token they replaced.
    async fn adopt_shared(&self, cur: &Current, shared: OAuthCreds) -> Arc<Current> {
        info!(source = %self.info, "using the token another replica refreshed");
        self.lock_report().last_refresh_at_ms = Some(now_ms());
        let next = self.replace(Current {
            creds: shared,
            root: cur.root.clone(),
            lifetime_ms: None,
        });
        let source = self.source.clone();
        let (creds, root) = (next.creds.clone(), next.root.clone());
        match tokio::task::spawn_blocking(move || source.save(&creds, &root)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(source = %self.info, error = %e, "could not save the shared token"),
            Err(e) => warn!(source = %self.info, error = %e, "could not save the shared token"),
        }
        next
    }

    /// The source no longer holds credentials: refreshing them would resurrect a logout.
    fn source_removed(
        &self,
        flight: &mut Flight,
        mode: Mode,
        rejected: Option<&AccessToken>,
    ) -> Result<AccessToken, CredentialError> {
        let err = CredentialError::Removed {
            origin: self.info.description.clone(),
        };
        warn!(source = %self.info, "the credentials were removed; not refreshing them");
        self.record_failure(flight, &err, None);
        self.fallback(&self.snapshot(), now_ms(), mode, rejected, err)
    }

    /// The refresh token to POST, or (`Break`) the attempt's result when there is none worth
    /// sending: no refresh token at all, or one the endpoint already rejected.
    fn refresh_token_to_send(
        &self,
        flight: &mut Flight,
        cur: &Current,
        mode: Mode,
        rejected: Option<&AccessToken>,
    ) -> ControlFlow<Result<AccessToken, CredentialError>, super::Secret> {
        let Some(refresh_token) = cur.creds.refresh_token.clone() else {
            let err = CredentialError::NoRefreshToken {
                origin: self.info.description.clone(),
            };
            self.record_failure(flight, &err, None);
            return ControlFlow::Break(self.fallback(cur, now_ms(), mode, rejected, err));
        };
        if mode != Mode::Forced
            && flight.dead_refresh_token.as_ref() == Some(&refresh_token)
            && let Some(err) = flight.last_error.clone()
        {
            // The endpoint already rejected this refresh token; only a new login helps.
            self.bump_backoff(flight, None);
            return ControlFlow::Break(self.fallback(cur, now_ms(), mode, rejected, err));
        }
        ControlFlow::Continue(refresh_token)
    }

    /// One POST to the token endpoint, counted in `ccproxy_oauth_refreshes_total`.
    async fn post_refresh(&self, refresh_token: &super::Secret) -> Result<Grant, EndpointError> {
        debug!(source = %self.info, url = %self.endpoint.url(), "refreshing the Claude OAuth token");
        let outcome = self.endpoint.refresh(refresh_token).await;
        let result_label = match &outcome {
            Ok(_) => "ok",
            Err(e) if e.kind == EndpointErrorKind::InvalidGrant => "invalid_grant",
            Err(_) => "error",
        };
        metrics::counter!("ccproxy_oauth_refreshes_total", "result" => result_label).increment(1);
        outcome
    }

    /// After `invalid_grant`: Claude Code may have rotated the refresh token since we read it.
    /// The credentials adopted from the source when it now holds a different refresh token.
    async fn rotated_elsewhere(&self, rejected_token: &super::Secret) -> Option<Arc<Current>> {
        if let Reread::Found { root, creds } = self.reread().await
            && creds.refresh_token.as_ref() != Some(rejected_token)
        {
            info!(source = %self.info, "the refresh token was rotated by another process; using the new one");
            return Some(self.merge_from_source(root, creds, true));
        }
        None
    }

    /// The endpoint refused the refresh: remember a rejected refresh token, log, back off, fall back.
    fn refresh_failed(
        &self,
        flight: &mut Flight,
        cur: &Current,
        mode: Mode,
        rejected: Option<&AccessToken>,
        refresh_token: super::Secret,
        e: EndpointError,
    ) -> Result<AccessToken, CredentialError> {
        if e.kind == EndpointErrorKind::InvalidGrant {
            flight.dead_refresh_token = Some(refresh_token);
            self.lock_report().refresh_token_rejected = true;
        }
        let retry_after = e.retry_after;
        let err = CredentialError::Endpoint(e);
        let now = now_ms();
        match cur.creds.expires_at_ms {
            Some(exp) if now < exp && mode == Mode::Ahead => warn!(
                source = %self.info,
                error = %err,
                "could not refresh the Claude OAuth token; using the current one until it expires at {}",
                format_utc(exp)
            ),
            _ => {
                error!(source = %self.info, error = %err, "could not refresh the Claude OAuth token")
            }
        }
        self.record_failure(flight, &err, retry_after);
        self.fallback(cur, now, mode, rejected, err)
    }

    async fn on_grant(&self, flight: &mut Flight, cur: &Current, grant: Grant) -> AccessToken {
        let now = now_ms();
        let lifetime_ms = grant
            .expires_in
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let creds = OAuthCreds {
            access_token: AccessToken::new(grant.access_token),
            refresh_token: grant
                .refresh_token
                .or_else(|| cur.creds.refresh_token.clone()),
            expires_at_ms: lifetime_ms.map(|l| now.saturating_add(l)),
            scopes: grant.scopes.unwrap_or_else(|| cur.creds.scopes.clone()),
            subscription_type: cur.creds.subscription_type.clone(),
        };
        let next = self.replace(Current {
            creds,
            root: cur.root.clone(),
            lifetime_ms,
        });
        let source = self.source.clone();
        let (creds, root) = (next.creds.clone(), next.root.clone());
        let saved = tokio::task::spawn_blocking(move || source.save(&creds, &root))
            .await
            .unwrap_or_else(|e| {
                Err(CredentialError::Write {
                    path: self.source.path().map(Into::into).unwrap_or_default(),
                    reason: e.to_string(),
                })
            });
        self.record_success(flight);
        match (&saved, next.creds.expires_at_ms) {
            (Ok(()), Some(exp)) => info!(
                source = %self.info,
                expires_at = %format_utc(exp),
                "refreshed the Claude OAuth token"
            ),
            (Ok(()), None) => info!(source = %self.info, "refreshed the Claude OAuth token"),
            (Err(e), _) => {
                error!(
                    source = %self.info,
                    error = %e,
                    "refreshed the Claude OAuth token but could not save it; the new refresh token only lives in this process"
                );
                self.lock_report().last_error =
                    Some(format!("saving the refreshed token failed: {e}"));
            }
        }
        next.creds.access_token.clone()
    }

    /// Takes what the source holds now. Credentials that differ from ours are adopted when they are
    /// not older (or always, with `force`); either way the document is kept for write-back.
    fn merge_from_source(
        &self,
        root: Map<String, Value>,
        disk: OAuthCreds,
        force: bool,
    ) -> Arc<Current> {
        let cur = self.snapshot();
        let root = Arc::new(root);
        if disk.same_tokens(&cur.creds) {
            return self.replace(Current {
                creds: disk,
                root,
                lifetime_ms: cur.lifetime_ms,
            });
        }
        let newer = match (disk.expires_at_ms, cur.creds.expires_at_ms) {
            (Some(d), Some(m)) => d >= m,
            _ => true,
        };
        if force || newer {
            info!(source = %self.info, "using credentials refreshed by another process");
            self.lock_report().last_refresh_at_ms = Some(now_ms());
            self.replace(Current {
                creds: disk,
                root,
                lifetime_ms: None,
            })
        } else {
            debug!(source = %self.info, "the source holds older credentials than ours; keeping ours");
            self.replace(Current {
                creds: cur.creds.clone(),
                root,
                lifetime_ms: cur.lifetime_ms,
            })
        }
    }

    async fn reread(&self) -> Reread {
        let mut last = None;
        for round in 0..=self.tuning.reread_retries {
            if round > 0 {
                tokio::time::sleep(self.tuning.reread_delay).await;
            }
            let source = self.source.clone();
            match tokio::task::spawn_blocking(move || source.load()).await {
                Ok(Ok(Loaded::Found { root, creds })) => return Reread::Found { root, creds },
                Ok(Ok(Loaded::Missing | Loaded::NoEntry)) => return Reread::Gone,
                Ok(Err(e)) => last = Some(e),
                Err(e) => {
                    last = Some(CredentialError::Read {
                        path: self.source.path().map(Into::into).unwrap_or_default(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Reread::Unreadable(last.unwrap_or_else(|| CredentialError::Read {
            path: self.source.path().map(Into::into).unwrap_or_default(),
            reason: "unreadable".to_owned(),
        }))
    }

    /// After a failed attempt: the current token while it is valid (and was not rejected), else an
    /// error telling the user how to log in again. `Forced` returns the failure as it is.
    fn fallback(
        &self,
        cur: &Current,
        now: i64,
        mode: Mode,
        rejected: Option<&AccessToken>,
        err: CredentialError,
    ) -> Result<AccessToken, CredentialError> {
        if mode == Mode::Forced {
            return Err(err);
        }
        let was_rejected = rejected.is_some_and(|r| cur.creds.access_token == *r);
        if !was_rejected && !self.expired(cur, now) {
            return Ok(cur.creds.access_token.clone());
        }
        Err(CredentialError::Expired {
            origin: self.info.description.clone(),
            expired_at_ms: cur.creds.expires_at_ms,
            reason: err.to_string(),
        })
    }

    fn bump_backoff(&self, flight: &mut Flight, retry_after: Option<Duration>) {
        flight.failures = flight.failures.saturating_add(1);
        let exp = flight.failures.saturating_sub(1).min(20);
        let mut wait = self
            .tuning
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.tuning.backoff_max);
        if let Some(ra) = retry_after {
            wait = wait.max(ra.min(self.tuning.backoff_max));
        }
        flight.retry_at = Some(Instant::now() + wait);
    }

    fn record_failure(
        &self,
        flight: &mut Flight,
        err: &CredentialError,
        retry_after: Option<Duration>,
    ) {
        self.bump_backoff(flight, retry_after);
        flight.last_error = Some(err.clone());
        self.lock_report().last_error = Some(err.to_string());
    }

    fn record_success(&self, flight: &mut Flight) {
        *flight = Flight::default();
        let mut report = self.lock_report();
        report.last_refresh_at_ms = Some(now_ms());
        report.last_error = None;
        report.refresh_token_rejected = false;
    }

    fn lock_report(&self) -> std::sync::MutexGuard<'_, Report> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One step of the background refresher; returns how long to sleep.
    async fn background_tick(&self) -> Duration {
        let t = &self.tuning;
        let clamp = |d: Duration| d.clamp(Duration::from_millis(1), t.bg_max_sleep);
        let cur = self.snapshot();
        let now = now_ms();
        let Some(at) = self.refresh_at(&cur) else {
            return t.bg_max_sleep;
        };
        if now < at {
            return clamp(Duration::from_millis(
                u64::try_from(at - now).unwrap_or(u64::MAX),
            ));
        }
        let seen = self.attempts.load(Ordering::Acquire);
        // Errors are logged by the attempt; the request path keeps using the current token.
        let _ = self.refresh_flow(Mode::Ahead, None, seen).await;
        let cur = self.snapshot();
        let now = now_ms();
        match self.refresh_at(&cur) {
            None => t.bg_max_sleep,
            Some(at) if now < at => clamp(Duration::from_millis(
                u64::try_from(at - now).unwrap_or(u64::MAX),
            )),
            Some(_) => {
                let retry_at = self.flight.lock().await.retry_at;
                let wait = retry_at
                    .map(|r| r.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::ZERO);
                wait.clamp(t.bg_min_sleep, t.bg_max_sleep.max(t.bg_min_sleep))
            }
        }
    }
}
