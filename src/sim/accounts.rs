//! Per-credential behaviour of the simulated service: each API key or OAuth token can be given
//! a scripted state — rate-limited until a time, overloaded, revoked, a subscription whose
//! third-party use needs extra usage, and the `anthropic-ratelimit-unified-*` headers its
//! responses carry (utilisation, representative claim, overage) — as the real service has
//! different accounts in different states.
//!
//! Set in-process with [`SimState::set_account`], or over HTTP with
//! `POST /_sim/accounts {"<secret>": {…}}` (the standalone `ccproxy sim`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{SimState, error_response};

/// The scripted state of one credential.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Account {
    /// Until this epoch second: 429 with `retry-after` and exhausted request-limit headers.
    pub rate_limited_until: Option<u64>,
    /// 529 on every request.
    pub overloaded: bool,
    /// 401 on every request.
    pub revoked: bool,
    /// 400 "Third-party apps now draw from your extra usage…" (a subscription without extra usage).
    pub extra_usage_required: bool,
    /// Unified rate-limit headers added to every response (subscriptions).
    pub unified: Option<UnifiedScript>,
}

/// The `anthropic-ratelimit-unified-*` values to send.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UnifiedScript {
    pub status: Option<String>,
    pub reset: Option<u64>,
    pub five_hour_utilization: Option<f64>,
    pub five_hour_reset: Option<u64>,
    pub seven_day_utilization: Option<f64>,
    pub seven_day_reset: Option<u64>,
    pub representative_claim: Option<String>,
    pub overage_status: Option<String>,
}

impl SimState {
    /// Scripts the credential `secret` (an API key or an OAuth access token).
    pub fn set_account(&self, secret: &str, account: Account) {
        if let Ok(mut a) = self.accounts.lock() {
            a.insert(secret.to_owned(), account);
        }
    }

    fn account(&self, secret: &str) -> Option<Account> {
        self.accounts.lock().ok()?.get(secret).cloned()
    }
}

/// The secret a request presented.
fn secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(k) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(k);
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// What the account's script says about this request: a refusal to send instead of serving it,
/// and the headers to add to whatever is sent.
pub(super) fn check(state: &SimState, headers: &HeaderMap) -> (Option<Response>, HeaderMap) {
    let now = crate::util::time::now_secs();
    let oauth = headers.contains_key(header::AUTHORIZATION) && !headers.contains_key("x-api-key");
    let Some(acct) = secret(headers).and_then(|s| state.account(s)) else {
        // As the real service: every subscription response says where its limits stand.
        let plain = UnifiedScript {
            status: Some("allowed".into()),
            reset: Some(now + 5 * 3600),
            five_hour_reset: Some(now + 5 * 3600),
            representative_claim: Some("five_hour".into()),
            ..UnifiedScript::default()
        };
        let extra = if oauth {
            unified_headers(&plain)
        } else {
            HeaderMap::new()
        };
        return (None, extra);
    };
    let extra = acct
        .unified
        .as_ref()
        .map(unified_headers)
        .unwrap_or_default();
    let refusal = if acct.revoked {
        Some(error_response(401, "invalid x-api-key"))
    } else if let Some(until) = acct.rate_limited_until.filter(|u| *u > now) {
        let mut r = error_response(429, "Number of requests has exceeded your rate limit");
        let h = r.headers_mut();
        let wait = (until - now).to_string();
        let reset = crate::util::time::format_utc(i64::try_from(until).unwrap_or(0) * 1000);
        for (k, v) in [
            ("retry-after", wait),
            ("anthropic-ratelimit-requests-limit", "50".to_owned()),
            ("anthropic-ratelimit-requests-remaining", "0".to_owned()),
            ("anthropic-ratelimit-requests-reset", reset),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        Some(r)
    } else if acct.overloaded {
        Some(error_response(529, "Overloaded"))
    } else if acct.extra_usage_required {
        Some(error_response(
            400,
            "Third-party apps now draw from your extra usage, not your plan limits. \
             Turn on extra usage to continue.",
        ))
    } else {
        None
    };
    (refusal, extra)
}

fn unified_headers(u: &UnifiedScript) -> HeaderMap {
    let mut h = HeaderMap::new();
    let p = "anthropic-ratelimit-unified-";
    let text = |v: &Option<String>| v.clone();
    let num = |v: Option<u64>| v.map(|n| n.to_string());
    let frac = |v: Option<f64>| v.map(|f| f.to_string());
    for (name, value) in [
        ("status", text(&u.status)),
        ("reset", num(u.reset)),
        ("5h-utilization", frac(u.five_hour_utilization)),
        ("5h-reset", num(u.five_hour_reset)),
        ("7d-utilization", frac(u.seven_day_utilization)),
        ("7d-reset", num(u.seven_day_reset)),
        ("representative-claim", text(&u.representative_claim)),
        ("overage-status", text(&u.overage_status)),
    ] {
        if let (Some(v), Ok(name)) = (
            value.and_then(|v| HeaderValue::from_str(&v).ok()),
            axum::http::HeaderName::from_bytes(format!("{p}{name}").as_bytes()),
        ) {
            h.insert(name, v);
        }
    }
    h
}

/// `POST /_sim/accounts`: scripts several credentials at once.
pub(super) async fn set(
    State(state): State<Arc<SimState>>,
    Json(accounts): Json<HashMap<String, Account>>,
) -> Response {
    for (secret, acct) in accounts {
        state.set_account(&secret, acct);
    }
    axum::http::StatusCode::NO_CONTENT.into_response()
}
