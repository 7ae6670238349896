//! The upstream credential pool: several named credentials (subscriptions and API keys), which
//! of them may serve a request, in which order, and what the upstream said about each.
//!
//! - **Eligibility** (static): a member serves the modes it lists (OAuth: full only) and the model
//!   patterns it lists.
//! - **Availability** (dynamic): a member is benched while it *cools down* (after a 429, 529, 5xx
//!   or connection failure, until the upstream's reset time or a bounded default), while it is
//!   *failed* (401/403, re-tried after [`FAILED_RECHECK`]), and, with `plan_limits_only`, while
//!   its subscription is serving from *extra usage* (until the plan window resets). Every bench
//!   ends by itself when its time passes: nothing stays benched after its quota returns.
//! - **Order**: a conversation stays on the member that served it while that member is available
//!   (prompt caches belong to one organisation); new conversations follow the routing strategy.
//! - **Subscription limits**: the `anthropic-ratelimit-unified-*` headers of each OAuth response
//!   are kept per member ([`Unified`]) and shown by `/health`, `ccproxy status` and `/metrics`.
//!
//! No I/O here: the pipeline reports outcomes, and reads snapshots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::HeaderMap;
use serde::Serialize;

use super::{AccessToken, OAuthManager};
use crate::routes::Mode;

/// A failed (401/403) member is tried again after this long: a key may be re-enabled, a
/// subscription re-logged-in.
pub const FAILED_RECHECK: Duration = Duration::from_secs(300);
/// Cooldown after a 429 that names no reset time.
pub const DEFAULT_RATE_LIMIT_COOLDOWN: Duration = Duration::from_secs(60);
/// Cooldown after a 529, a 5xx or a connection failure.
pub const DEFAULT_FAILURE_COOLDOWN: Duration = Duration::from_secs(10);
/// No cooldown lasts longer than this, whatever the upstream says.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(8 * 24 * 3600);
/// Conversations remembered for affinity (the oldest half is dropped past this).
const AFFINITY_CAPACITY: usize = 50_000;

/// How a request picks among the credentials that may serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// The first available, in the configured order.
    #[default]
    Priority,
    /// Each new conversation on the next one.
    RoundRobin,
    /// The one with the fewest requests in flight.
    LeastLoaded,
}

impl Routing {
    pub fn name(self) -> &'static str {
        match self {
            Routing::Priority => "priority",
            Routing::RoundRobin => "round-robin",
            Routing::LeastLoaded => "least-loaded",
        }
    }
}

/// What a member holds.
pub enum MemberKind {
    /// A subscription: OAuth tokens kept fresh by their manager.
    OAuth(Arc<OAuthManager>),
    /// An API key (held like a token: its `Debug` is masked).
    ApiKey(AccessToken),
}

impl MemberKind {
    pub fn name(&self) -> &'static str {
        match self {
            MemberKind::OAuth(_) => "oauth",
            MemberKind::ApiKey(_) => "api_key",
        }
    }
}

/// The subscription limits an OAuth response reported (`anthropic-ratelimit-unified-*`),
/// parsed leniently: anything absent or unknown is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Unified {
    /// `allowed`, `allowed_warning`, `rejected`.
    pub status: Option<String>,
    /// Epoch seconds when the representative limit resets.
    pub reset: Option<u64>,
    pub five_hour_utilization: Option<f64>,
    pub five_hour_reset: Option<u64>,
    pub seven_day_utilization: Option<f64>,
    pub seven_day_reset: Option<u64>,
    /// `five_hour`, `seven_day`, `seven_day_opus`, `seven_day_sonnet`, `overage`.
    pub representative_claim: Option<String>,
    pub overage_status: Option<String>,
    pub overage_reset: Option<u64>,
    /// When these were seen (epoch seconds).
    pub seen_at: u64,
}

impl Unified {
    /// The headers' values, when the response carried any unified header.
    pub fn from_headers(h: &HeaderMap, now: u64) -> Option<Unified> {
        const P: &str = "anthropic-ratelimit-unified-";
        if !h.keys().any(|k| k.as_str().starts_with(P)) {
            return None;
        }
        let text = |name: &str| {
            h.get(format!("{P}{name}"))
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let secs = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let frac = |name: &str| {
            text(name)
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|f| f.is_finite() && *f >= 0.0)
        };
        Some(Unified {
            status: text("status"),
            reset: secs("reset"),
            five_hour_utilization: frac("5h-utilization"),
            five_hour_reset: secs("5h-reset"),
            seven_day_utilization: frac("7d-utilization"),
            seven_day_reset: secs("7d-reset"),
            representative_claim: text("representative-claim"),
            overage_status: text("overage-status"),
            overage_reset: secs("overage-reset"),
            seen_at: now,
        })
    }

    /// The request was served from extra usage (overage), not the plan's limits.
    pub fn served_from_extra_usage(&self) -> bool {
        self.representative_claim.as_deref() == Some("overage")
    }

    /// When the plan's own window resets (the earliest reset it names), if it says.
    pub fn plan_reset(&self) -> Option<u64> {
        [self.five_hour_reset, self.seven_day_reset, self.reset]
            .into_iter()
            .flatten()
            .filter(|r| *r > self.seen_at)
            .min()
    }
}

/// A member's state as replicas share it (`credentials::fleet::sync_state`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct SharedHealth {
    /// A cooldown (until, epoch seconds; reason).
    pub cooling: Option<(u64, String)>,
    /// The extra-usage hold (until; reason).
    pub extra_usage: Option<(u64, String)>,
    pub unified: Option<Unified>,
}

/// Why a member is not taking requests now, and until when (epoch seconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bench {
    /// `cooling`, `failed`, `extra_usage`.
    pub state: &'static str,
    pub until: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Health {
    cooling: Option<Bench>,
    failed: Option<Bench>,
    extra_usage: Option<Bench>,
    unified: Option<Unified>,
    last_used: Option<u64>,
    last_error: Option<String>,
}

impl Health {
    /// The bench that lasts longest among those still running at `now`.
    fn bench(&self, now: u64, plan_limits_only: bool) -> Option<&Bench> {
        let guard = self.extra_usage.as_ref().filter(|_| plan_limits_only);
        [self.failed.as_ref(), self.cooling.as_ref(), guard]
            .into_iter()
            .flatten()
            .filter(|b| b.until > now)
            .max_by_key(|b| b.until)
    }
}

/// One named credential of the pool.
pub struct Member {
    pub name: String,
    pub kind: MemberKind,
    modes: Vec<Mode>,
    models: Vec<String>,
    pub plan_limits_only: bool,
    in_flight: AtomicUsize,
    served: AtomicU64,
    health: Mutex<Health>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("kind", &self.kind.name())
            .finish_non_exhaustive()
    }
}

impl Member {
    pub fn new(
        name: impl Into<String>,
        kind: MemberKind,
        modes: Vec<Mode>,
        models: Vec<String>,
        plan_limits_only: bool,
    ) -> Member {
        Member {
            name: name.into(),
            kind,
            modes,
            models,
            plan_limits_only,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_oauth(&self) -> bool {
        matches!(self.kind, MemberKind::OAuth(_))
    }

    /// Whether it may serve `mode` and `model` (its static settings).
    pub fn serves(&self, mode: Mode, model: Option<&str>) -> bool {
        if !self.modes.contains(&mode) || (self.is_oauth() && mode != Mode::Full) {
            return false;
        }
        match model {
            _ if self.models.is_empty() => true,
            None => true,
            Some(m) => self.models.iter().any(|p| glob(p, m)),
        }
    }

    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Why it is benched at `now` (epoch seconds), if it is.
    pub fn bench(&self, now: u64) -> Option<Bench> {
        self.health().bench(now, self.plan_limits_only).cloned()
    }

    /// Benched until `until` after the upstream refused or failed.
    pub fn cool_down(&self, until: u64, reason: impl Into<String>) {
        let reason = reason.into();
        let mut h = self.health();
        h.last_error = Some(reason.clone());
        if h.cooling.as_ref().is_none_or(|b| b.until < until) {
            h.cooling = Some(Bench {
                state: "cooling",
                until,
                reason,
            });
        }
    }

    /// Benched after a 401/403 (rechecked after [`FAILED_RECHECK`]).
    pub fn fail(&self, now: u64, reason: impl Into<String>) {
        let reason = reason.into();
        let mut h = self.health();
        h.last_error = Some(reason.clone());
        h.failed = Some(Bench {
            state: "failed",
            until: now + FAILED_RECHECK.as_secs(),
            reason,
        });
    }

    /// The upstream answered with a success: any failure mark is over.
    pub fn succeeded(&self, now: u64) {
        self.served.fetch_add(1, Ordering::Relaxed);
        let mut h = self.health();
        h.failed = None;
        h.last_used = Some(now);
    }

    /// Reads the unified headers of a response this member got. Returns whether the request was
    /// served from extra usage; then, with `plan_limits_only`, the member is benched until its
    /// plan window resets.
    pub fn observe(&self, headers: &HeaderMap, now: u64) -> bool {
        let Some(u) = Unified::from_headers(headers, now) else {
            return false;
        };
        let extra = u.served_from_extra_usage();
        let mut h = self.health();
        if extra {
            let until = u.plan_reset().unwrap_or(now + 3600);
            h.extra_usage = Some(Bench {
                state: "extra_usage",
                until,
                reason: "the subscription reported serving from extra usage (overage)".to_owned(),
            });
        }
        h.unified = Some(u);
        extra
    }

    /// The upstream said this subscription's third-party use draws from extra usage that is not
    /// enabled (a 400): benched like extra usage, until `until`.
    pub fn needs_extra_usage(&self, until: u64, reason: impl Into<String>) {
        let mut h = self.health();
        let reason = reason.into();
        h.last_error = Some(reason.clone());
        h.extra_usage = Some(Bench {
            state: "extra_usage",
            until,
            reason,
        });
    }

    pub fn unified(&self) -> Option<Unified> {
        self.health().unified.clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    /// What `/health` and `ccproxy status` show (no secret).
    pub fn snapshot(&self, now: u64) -> MemberSnapshot {
        let h = self.health();
        let bench = h.bench(now, self.plan_limits_only).cloned();
        MemberSnapshot {
            name: self.name.clone(),
            kind: self.kind.name(),
            modes: self.modes.iter().map(|m| m.name()).collect(),
            models: self.models.clone(),
            plan_limits_only: self.plan_limits_only,
            state: bench.as_ref().map_or("available", |b| b.state),
            until: bench.as_ref().map(|b| b.until),
            reason: bench.map(|b| b.reason),
            in_flight: self.in_flight(),
            served: self.served.load(Ordering::Relaxed),
            last_used: h.last_used,
            last_error: h.last_error.clone(),
            unified: h.unified.clone(),
        }
    }
}

impl Member {
    /// Takes over what the upstream said about `old` (benches, limits, last use): a reload keeps
    /// what is known about a credential it keeps.
    /// What other replicas should know (a shared database): the cooldown and the extra-usage
    /// hold still running at `now` (until, reason), and the latest unified limits.
    pub fn shareable(&self, now: u64) -> SharedHealth {
        let h = self.health();
        let running = |b: &Option<Bench>| {
            b.as_ref()
                .filter(|b| b.until > now)
                .map(|b| (b.until, b.reason.clone()))
        };
        SharedHealth {
            cooling: running(&h.cooling),
            extra_usage: running(&h.extra_usage),
            unified: h.unified.clone(),
        }
    }

    /// Takes what another replica saw: a longer cooldown or extra-usage hold, newer unified
    /// limits.
    pub fn adopt_shared(&self, s: SharedHealth) {
        let mut h = self.health();
        if let Some((until, reason)) = s.cooling
            && h.cooling.as_ref().is_none_or(|b| b.until < until)
        {
            h.cooling = Some(Bench {
                state: "cooling",
                until,
                reason,
            });
        }
        if let Some((until, reason)) = s.extra_usage
            && h.extra_usage.as_ref().is_none_or(|b| b.until < until)
        {
            h.extra_usage = Some(Bench {
                state: "extra_usage",
                until,
                reason,
            });
        }
        if let Some(u) = s.unified
            && h.unified.as_ref().is_none_or(|l| l.seen_at < u.seen_at)
        {
            h.unified = Some(u);
        }
    }

    pub fn adopt_health(&self, old: &Member) {
        let o = old.health();
        let mut h = self.health();
        h.cooling = o.cooling.clone();
        h.failed = o.failed.clone();
        h.extra_usage = o.extra_usage.clone();
        h.unified = o.unified.clone();
        h.last_used = o.last_used;
        h.last_error = o.last_error.clone();
        self.served
            .store(old.served.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The pool in use, replaced whole by a reload (`SIGHUP`); requests in flight keep the pool
/// (and members) they started with.
pub struct PoolCell(std::sync::RwLock<Arc<Pool>>);

impl PoolCell {
    pub fn new(pool: Pool) -> PoolCell {
        PoolCell(std::sync::RwLock::new(Arc::new(pool)))
    }

    pub fn get(&self) -> Arc<Pool> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Installs `pool`, carrying over what is known about the members it keeps (by name).
    pub fn replace(&self, pool: Pool) {
        let old = self.get();
        for m in pool.members() {
            if let Some(o) = old.members().iter().find(|o| o.name == m.name) {
                m.adopt_health(o);
            }
        }
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pool);
    }
}

/// Keeps a member's in-flight count while a request uses it.
pub struct InFlightGuard(Arc<Member>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A member as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberSnapshot {
    pub name: String,
    pub kind: &'static str,
    pub modes: Vec<&'static str>,
    pub models: Vec<String>,
    pub plan_limits_only: bool,
    /// `available`, `cooling`, `failed`, `extra_usage`.
    pub state: &'static str,
    /// Epoch seconds when the state ends.
    pub until: Option<u64>,
    pub reason: Option<String>,
    pub in_flight: usize,
    pub served: u64,
    pub last_used: Option<u64>,
    pub last_error: Option<String>,
    pub unified: Option<Unified>,
}

/// The pool.
#[derive(Debug)]
pub struct Pool {
    members: Vec<Arc<Member>>,
    routing: Routing,
    /// Built from the single settings (no `[[credentials]]`): today's precedence is kept — the
    /// subscription is not benched or failed over from for the upstream's refusals (the paid key
    /// never silently replaces it); only the plan-limits guard holds it back.
    implicit: bool,
    next: AtomicUsize,
    /// Conversation key → the member name that serves it.
    affinity: Mutex<HashMap<u64, (Arc<str>, u64)>>,
}

/// The members a request may try, in order, and those that may serve it but are benched.
#[derive(Debug, Default)]
pub struct Candidates {
    pub ready: Vec<Arc<Member>>,
    pub benched: Vec<(Arc<Member>, Bench)>,
}

impl Pool {
    pub fn new(members: Vec<Member>, routing: Routing) -> Pool {
        Pool {
            members: members.into_iter().map(Arc::new).collect(),
            routing,
            implicit: false,
            next: AtomicUsize::new(0),
            affinity: Mutex::new(HashMap::new()),
        }
    }

    /// The implicit pool of the single settings (see [`Pool::is_implicit`]).
    pub fn implicit(members: Vec<Member>, routing: Routing) -> Pool {
        Pool {
            implicit: true,
            ..Pool::new(members, routing)
        }
    }

    /// Whether this is the implicit pool: no failover on the upstream's refusals, benches shown
    /// but not acted on (except the plan-limits guard).
    pub fn is_implicit(&self) -> bool {
        self.implicit
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    pub fn routing(&self) -> Routing {
        self.routing
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members that may serve (`mode`, `model`) in the order to try them (the routing
    /// strategy; [`Pool::prefer_conversation`] then puts a conversation's member first).
    ///
    /// A request that only one member may serve always goes to it (the upstream's own answer
    /// is the truest), unless the plan-limits guard holds it back: benches exist to choose. The
    /// implicit pool acts on no bench but that guard either.
    pub fn candidates(&self, mode: Mode, model: Option<&str>, now: u64) -> Candidates {
        let mut out = Candidates::default();
        let eligible: Vec<&Arc<Member>> = self
            .members
            .iter()
            .filter(|m| m.serves(mode, model))
            .collect();
        let lenient = eligible.len() == 1 || self.implicit;
        for m in eligible {
            let bench = m
                .bench(now)
                .filter(|b| !lenient || b.state == "extra_usage");
            match bench {
                Some(b) => out.benched.push((m.clone(), b)),
                None => out.ready.push(m.clone()),
            }
        }
        if out.ready.len() > 1 {
            self.order(&mut out.ready);
        }
        out
    }

    /// Puts the member serving `conversation` first among `ready`, when it is there.
    pub fn prefer_conversation(&self, ready: &mut [Arc<Member>], conversation: u64) {
        if let Some(name) = self.affinity_of(conversation)
            && let Some(i) = ready.iter().position(|m| *m.name == *name)
        {
            ready[..=i].rotate_right(1);
        }
    }

    fn order(&self, ready: &mut [Arc<Member>]) {
        match self.routing {
            Routing::Priority => {}
            Routing::RoundRobin => {
                let k = self.next.fetch_add(1, Ordering::Relaxed) % ready.len();
                ready.rotate_left(k);
            }
            Routing::LeastLoaded => ready.sort_by_key(|m| m.in_flight()),
        }
    }

    fn affinity_of(&self, key: u64) -> Option<Arc<str>> {
        let map = self.affinity.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&key).map(|(name, _)| name.clone())
    }

    /// The conversation `key` is now served by `member`.
    pub fn remember(&self, key: u64, member: &Member, now: u64) {
        let mut map = self.affinity.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= AFFINITY_CAPACITY && !map.contains_key(&key) {
            // Drop the older half (by last use).
            let mut ages: Vec<u64> = map.values().map(|(_, t)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            map.retain(|_, (_, t)| *t > cut);
        }
        match map.get_mut(&key) {
            Some((name, t)) if **name == *member.name => *t = now,
            _ => {
                map.insert(key, (Arc::from(member.name.as_str()), now));
            }
        }
    }

    pub fn snapshot(&self, now: u64) -> Vec<MemberSnapshot> {
        self.members.iter().map(|m| m.snapshot(now)).collect()
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// How long to cool a member down after a refusal or failure with these response headers
/// (`None`: a connection failure): `retry-after`, else the latest `anthropic-ratelimit-*-reset`
/// time of an exhausted limit (or the unified reset when the subscription said `rejected`), else
/// the defaults; never more than [`MAX_COOLDOWN`]. Returns the epoch second it ends.
pub fn cooldown_until(status: Option<u16>, headers: Option<&HeaderMap>, now: u64) -> u64 {
    let default = match status {
        Some(429) => DEFAULT_RATE_LIMIT_COOLDOWN,
        _ => DEFAULT_FAILURE_COOLDOWN,
    };
    let said = headers.and_then(|h| reset_from_headers(h, now));
    let until = said.unwrap_or(now + default.as_secs());
    until.clamp(now + 1, now + MAX_COOLDOWN.as_secs())
}

fn reset_from_headers(h: &HeaderMap, now: u64) -> Option<u64> {
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(secs) = text("retry-after").and_then(|v| v.parse::<f64>().ok())
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(now + secs.ceil() as u64);
    }
    if text("anthropic-ratelimit-unified-status") == Some("rejected")
        && let Some(r) = text("anthropic-ratelimit-unified-reset").and_then(|v| v.parse().ok())
    {
        return Some(r);
    }
    let mut latest = None;
    for kind in ["requests", "tokens", "input-tokens", "output-tokens"] {
        let exhausted = text(&format!("anthropic-ratelimit-{kind}-remaining"))
            .and_then(|v| v.parse::<u64>().ok())
            == Some(0);
        let reset = text(&format!("anthropic-ratelimit-{kind}-reset"))
            .and_then(crate::util::time::parse_rfc3339_secs);
        if let (true, Some(r)) = (exhausted, reset) {
            latest = Some(latest.map_or(r, |l: u64| l.max(r)));
        }
    }
    latest
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn key(name: &str) -> Member {
        Member::new(
            name,
            MemberKind::ApiKey(AccessToken::new(format!("sk-ant-api03-{name}"))),
            vec![Mode::Full, Mode::Minimal],
            Vec::new(),
            true,
        )
    }

    #[test]
    fn globs() {
        assert!(glob("claude-sonnet-*", "claude-sonnet-4-5"));
        assert!(glob("*", "anything"));
        assert!(glob("claude-*-4-5", "claude-opus-4-5"));
        assert!(!glob("claude-sonnet-*", "claude-opus-4-5"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXbY"));
    }

    #[test]
    fn unified_headers_parse_leniently() {
        let h = headers(&[
            ("anthropic-ratelimit-unified-status", "allowed_warning"),
            ("anthropic-ratelimit-unified-5h-utilization", "0.82"),
            ("anthropic-ratelimit-unified-7d-utilization", "bogus"),
            ("anthropic-ratelimit-unified-5h-reset", "2000"),
            (
                "anthropic-ratelimit-unified-representative-claim",
                "overage",
            ),
            ("anthropic-ratelimit-unified-new-thing", "x"),
        ]);
        let u = Unified::from_headers(&h, 1000).unwrap();
        assert_eq!(u.status.as_deref(), Some("allowed_warning"));
        assert_eq!(u.five_hour_utilization, Some(0.82));
        assert_eq!(u.seven_day_utilization, None);
        assert!(u.served_from_extra_usage());
        assert_eq!(u.plan_reset(), Some(2000));
        assert_eq!(Unified::from_headers(&HeaderMap::new(), 1), None);
    }

    #[test]
    fn cooldowns_follow_the_upstream_and_are_bounded() {
        let now = 1_000;
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(cooldown_until(Some(429), Some(&h), now), 1_007);
        let h = headers(&[
            ("anthropic-ratelimit-tokens-remaining", "0"),
            ("anthropic-ratelimit-tokens-reset", "1970-01-01T00:20:00Z"),
            ("anthropic-ratelimit-requests-remaining", "5"),
            ("anthropic-ratelimit-requests-reset", "1970-01-01T05:00:00Z"),
        ]);
        assert_eq!(cooldown_until(Some(429), Some(&h), now), 1_200);
        assert_eq!(cooldown_until(Some(429), None, now), now + 60);
        assert_eq!(cooldown_until(None, None, now), now + 10);
        let h = headers(&[("retry-after", "99999999")]);
        assert_eq!(
            cooldown_until(Some(429), Some(&h), now),
            now + MAX_COOLDOWN.as_secs()
        );
    }

    #[test]
    fn benches_end_by_themselves() {
        let m = key("a");
        assert!(m.bench(100).is_none());
        m.cool_down(110, "429");
        assert_eq!(m.bench(100).unwrap().state, "cooling");
        assert!(m.bench(110).is_none(), "over when its reset time passes");
        m.fail(200, "401");
        assert_eq!(m.bench(201).unwrap().state, "failed");
        m.succeeded(202);
        assert!(m.bench(203).is_none());
    }

    #[test]
    fn extra_usage_benches_only_with_plan_limits_only() {
        let h = headers(&[
            (
                "anthropic-ratelimit-unified-representative-claim",
                "overage",
            ),
            ("anthropic-ratelimit-unified-reset", "5000"),
        ]);
        let guarded = key("a");
        assert!(guarded.observe(&h, 1000));
        let b = guarded.bench(1001).unwrap();
        assert_eq!((b.state, b.until), ("extra_usage", 5000));
        let mut open = key("b");
        open.plan_limits_only = false;
        assert!(open.observe(&h, 1000));
        assert!(open.bench(1001).is_none());
    }

    #[test]
    fn order_affinity_and_routing() {
        let pool = Pool::new(vec![key("a"), key("b"), key("c")], Routing::Priority);
        let names = |c: &Candidates| c.ready.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        let with_affinity = |now| {
            let mut c = pool.candidates(Mode::Full, None, now);
            pool.prefer_conversation(&mut c.ready, 7);
            c
        };
        assert_eq!(names(&with_affinity(0)), ["a", "b", "c"]);
        pool.remember(7, &pool.members()[1], 0);
        assert_eq!(names(&with_affinity(0)), ["b", "a", "c"]);
        pool.members()[2].cool_down(50, "429");
        pool.remember(7, &pool.members()[2], 0);
        assert_eq!(
            names(&with_affinity(10)),
            ["a", "b"],
            "a benched member is not preferred"
        );
        pool.members()[1].cool_down(50, "429");
        let c = with_affinity(10);
        assert_eq!(names(&c), ["a"]);
        assert_eq!(c.benched.len(), 2);
        // Passthrough is not among their modes.
        assert!(pool.candidates(Mode::Passthrough, None, 0).ready.is_empty());

        let rr = Pool::new(vec![key("a"), key("b")], Routing::RoundRobin);
        let firsts: Vec<String> = (0..4)
            .map(|_| rr.candidates(Mode::Full, None, 0).ready[0].name.clone())
            .collect();
        assert_eq!(firsts, ["a", "b", "a", "b"]);

        let ll = Pool::new(vec![key("a"), key("b")], Routing::LeastLoaded);
        let _busy = ll.members()[0].start();
        assert_eq!(ll.candidates(Mode::Full, None, 0).ready[0].name, "b");
    }

    #[test]
    fn model_patterns_limit_a_member() {
        let mut m = key("a");
        m.models = vec!["claude-haiku-*".to_owned()];
        assert!(m.serves(Mode::Full, Some("claude-haiku-4-5")));
        assert!(!m.serves(Mode::Full, Some("claude-opus-4-5")));
        assert!(!m.serves(Mode::Passthrough, Some("claude-haiku-4-5")));
    }
}
