//! The `send` phase: the request to the upstream, on the plan's credentials in order. Before
//! any byte reaches the client, a 429, 529, 5xx, connection failure, 401/403, or a
//! subscription's "draws from extra usage" refusal moves the request to the next credential
//! (each tried at most once) and benches the one that failed (`credentials::pool`). On the last
//! credential, the optional retries apply (connection failures, 529, 429 when enabled), and one
//! retry after a forced OAuth refresh when the upstream rejects the server's token.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};

use super::credential::{self, Candidate, Chosen, Plan};
use super::prepare::Prepared;
use crate::config::Settings;
use crate::credentials::pool::cooldown_until;
use crate::error::{ErrorKind, ProxyError};
use crate::state::AppState;
use crate::upstream::UpstreamAuth;

/// Sends `prepared` upstream; `headers_for` builds the headers for a credential. Returns the
/// answer and the credential that got it.
pub async fn send(
    state: &AppState,
    prepared: &Prepared,
    query: Option<&str>,
    plan: &Plan,
    headers_for: impl Fn(&UpstreamAuth) -> HeaderMap,
) -> Result<(crate::upstream::UpResponse, Chosen), ProxyError> {
    let n = plan.candidates.len();
    let mut last = None;
    for (i, candidate) in plan.candidates.iter().enumerate() {
        let more = i + 1 < n;
        let chosen = match credential::resolve(candidate).await {
            Ok(c) => c,
            Err(e) => {
                if let Candidate::Member(m) = candidate {
                    m.fail(crate::util::time::now_secs(), e.message().into_owned());
                }
                last = Some(Err(e));
                continue;
            }
        };
        let result = attempt(state, prepared, query, &chosen, &headers_for, !more).await;
        let result = match judge(&chosen, result).await {
            // The implicit pool keeps today's precedence: the upstream's refusal is the answer.
            Judged::Next(r) if plan.pool.is_implicit() && r.is_ok() => Judged::Keep(r),
            Judged::Next(Err(e))
                if plan.pool.is_implicit()
                    && matches!(e.kind, ErrorKind::BadGateway | ErrorKind::GatewayTimeout) =>
            {
                Judged::Keep(Err(e))
            }
            j => j,
        };
        match result {
            Judged::Keep(r) => return r.map(|resp| (resp, chosen)),
            Judged::Next(r) if more => {
                tracing::info!(
                    credential = %chosen.name(),
                    next = %plan.candidates[i + 1].name(),
                    "moving the request to the next credential"
                );
                last = Some(r.map(|resp| (resp, chosen)));
            }
            Judged::Next(r) => return r.map(|resp| (resp, chosen)),
        }
    }
    last.unwrap_or_else(|| Err(ProxyError::auth("no upstream credential could be used")))
}

enum Judged {
    /// The answer goes to the client.
    Keep(Result<crate::upstream::UpResponse, ProxyError>),
    /// Another credential should be tried, if there is one.
    Next(Result<crate::upstream::UpResponse, ProxyError>),
}

/// What an answer says about the credential that got it: successes clear failure marks and
/// report subscription limits; refusals and failures bench it.
async fn judge(chosen: &Chosen, result: Result<crate::upstream::UpResponse, ProxyError>) -> Judged {
    let Some(member) = &chosen.member else {
        return Judged::Keep(result);
    };
    let now = crate::util::time::now_secs();
    let resp = match result {
        Ok(r) => r,
        Err(e) if matches!(e.kind, ErrorKind::BadGateway | ErrorKind::GatewayTimeout) => {
            member.cool_down(cooldown_until(None, None, now), e.message().into_owned());
            return Judged::Next(Err(e));
        }
        Err(e) => return Judged::Keep(Err(e)),
    };
    let status = resp.status();
    if member.is_oauth() && member.observe(resp.headers(), now) {
        tracing::warn!(credential = %member.name, "the subscription served this request from extra usage");
    }
    match status.as_u16() {
        200..=299 => {
            member.succeeded(now);
            Judged::Keep(Ok(resp))
        }
        429 | 500..=599 => {
            let until = cooldown_until(Some(status.as_u16()), Some(resp.headers()), now);
            member.cool_down(until, format!("upstream answered {status}"));
            Judged::Next(Ok(resp))
        }
        401 | 403 => {
            member.fail(now, format!("upstream answered {status}"));
            Judged::Next(Ok(resp))
        }
        400 if member.is_oauth() => extra_usage_refusal(member, resp, now).await,
        _ => Judged::Keep(Ok(resp)),
    }
}

/// A subscription's 400 may say that third-party use draws from extra usage that is not
/// enabled: then it cannot serve (benched until its plan window resets) and the next credential
/// is tried. Any other 400 is the client's.
async fn extra_usage_refusal(
    member: &crate::credentials::Member,
    resp: crate::upstream::UpResponse,
    now: u64,
) -> Judged {
    let status = resp.status().as_u16();
    let reset = member
        .unified()
        .and_then(|u| u.plan_reset())
        .unwrap_or(now + 3600);
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return Judged::Keep(Err(ProxyError::new(
                ErrorKind::BadGateway,
                crate::error::Origin::Upstream,
                "the upstream's error answer broke off",
            )
            .with_cause(e)));
        }
    };
    let err = ProxyError::from_upstream_response(status, &body);
    let text = String::from_utf8_lossy(&body).to_ascii_lowercase();
    if text.contains("extra usage") {
        member.needs_extra_usage(reset, err.message().into_owned());
        return Judged::Next(Err(err));
    }
    Judged::Keep(Err(err))
}

/// One credential: the request, with the optional retries (only when `retries`) and one retry
/// after a forced OAuth refresh.
async fn attempt(
    state: &AppState,
    prepared: &Prepared,
    query: Option<&str>,
    chosen: &Chosen,
    headers_for: &impl Fn(&UpstreamAuth) -> HeaderMap,
    retries: bool,
) -> Result<crate::upstream::UpResponse, ProxyError> {
    let settings = &state.settings;
    let max_retries = if retries {
        settings.retries.max_retries
    } else {
        0
    };
    let mut pending_headers = Some(headers_for(&chosen.auth));
    let mut attempt = 0;
    let resp = loop {
        // Clone the headers only while another attempt may follow.
        let headers = if attempt < max_retries {
            pending_headers.clone().unwrap_or_default()
        } else {
            pending_headers.take().unwrap_or_default()
        };
        let result = once(state, prepared, query, headers).await;
        match retry_delay(settings, attempt, max_retries, &result) {
            Some(delay) => {
                tracing::info!(
                    attempt = attempt + 1,
                    delay_ms = delay.as_millis() as u64,
                    "retrying the upstream request"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            None => break result?,
        }
    };
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    let Some(used) = chosen.oauth.as_ref() else {
        return Ok(resp);
    };
    let Some(crate::credentials::MemberKind::OAuth(mgr)) = chosen.member.as_ref().map(|m| &m.kind)
    else {
        return Ok(resp);
    };
    match mgr.force_refresh(used).await {
        Ok(fresh) => {
            tracing::info!("upstream rejected the OAuth token; retrying once with a refreshed one");
            let headers = headers_for(&UpstreamAuth::OAuth(fresh.secret().to_owned()));
            once(state, prepared, query, headers).await
        }
        Err(e) => {
            tracing::warn!(error = %e, "forced OAuth refresh failed");
            Ok(resp)
        }
    }
}

async fn once(
    state: &AppState,
    p: &Prepared,
    query: Option<&str>,
    headers: HeaderMap,
) -> Result<crate::upstream::UpResponse, ProxyError> {
    state
        .upstream
        .send(p.method.clone(), &p.path, query, headers, p.body.clone())
        .await
}

/// Whether (and after how long) to retry an upstream attempt. Only before any
/// byte went to the client: connection failures, 529, and 429 when enabled;
/// never other statuses. Honours `retry-after` up to the configured maximum.
fn retry_delay(
    settings: &Settings,
    attempt: u32,
    max_retries: u32,
    result: &Result<crate::upstream::UpResponse, ProxyError>,
) -> Option<Duration> {
    if attempt >= max_retries {
        return None;
    }
    let retry_after = match result {
        Err(e) if e.kind == ErrorKind::BadGateway => None,
        Ok(r) if r.status().as_u16() == 529 || (r.status() == 429 && settings.retries.on_429) => r
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64),
        _ => return None,
    };
    if let Some(wait) = retry_after {
        return (wait <= settings.retries.max_wait).then_some(wait);
    }
    // Exponential backoff from 250 ms with full jitter in [50%, 100%].
    let base = Duration::from_millis(250).saturating_mul(1 << attempt.min(6));
    let jitter = 0.5 + rand::random::<f64>() * 0.5;
    Some(base.mul_f64(jitter).min(settings.retries.max_wait))
}
