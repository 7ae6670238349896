//! The `credential` phase: which upstream credentials a request may use, in which order (see
//! README "Credentials" and "Several credentials").
//!
//! The server's credentials form a pool (`credentials::pool`): the members that serve the
//! request's mode and model, available ones first in the routing order, the conversation's own
//! member first while it is available. Full mode tries the pool's subscriptions, then a real
//! Anthropic credential the client sent, then the pool's API keys; minimal and passthrough use
//! the client's API key when it sent one, else the pool's API keys. Placeholders sent by clients
//! (anything not `sk-ant-…`) never go upstream. `send` walks the list, moving to the next
//! candidate before the first byte when one is refused or fails.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::value::RawValue;

use crate::credentials::{AccessToken, Member, MemberKind};
use crate::error::{ErrorKind, Origin, ProxyError};
use crate::routes::Mode;
use crate::state::AppState;
use crate::upstream::UpstreamAuth;

/// The name usage rows and logs give the client's own credential.
pub const CLIENT: &str = "client";

/// One credential a request may try.
#[derive(Debug, Clone)]
pub enum Candidate {
    /// A member of the server's pool.
    Member(Arc<Member>),
    /// The client's own Anthropic credential.
    Client(UpstreamAuth),
}

impl Candidate {
    /// The name usage rows, logs and metrics show.
    pub fn name(&self) -> &str {
        match self {
            Candidate::Member(m) => &m.name,
            Candidate::Client(_) => CLIENT,
        }
    }
}

/// The credentials a request may try, in order.
#[derive(Debug)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    /// The pool they came from (a reload does not change a request's plan).
    pub pool: Arc<crate::credentials::Pool>,
    /// The conversation's key, for affinity (only computed when there is a choice).
    pub conversation: Option<u64>,
}

/// The credential chosen for one attempt.
pub struct Chosen {
    pub auth: UpstreamAuth,
    /// The server's OAuth token when that is what goes upstream (for the
    /// refresh-and-retry after a 401).
    pub oauth: Option<AccessToken>,
    /// The pool member it belongs to (none for the client's own credential).
    pub member: Option<Arc<Member>>,
}

impl Chosen {
    pub fn name(&self) -> &str {
        self.member.as_ref().map_or(CLIENT, |m| &m.name)
    }
}

/// What the upstream billed the request to: a subscription's plan or its extra usage (from the
/// unified rate-limit headers), or an API key.
pub fn bucket(chosen: &Chosen, headers: &HeaderMap) -> Option<&'static str> {
    match &chosen.auth {
        UpstreamAuth::ApiKey(_) => Some("api"),
        UpstreamAuth::OAuth(_) => {
            crate::credentials::pool::Unified::from_headers(headers, 0).map(|u| {
                if u.served_from_extra_usage() {
                    "extra_usage"
                } else {
                    "plan"
                }
            })
        }
    }
}

/// The candidates for a request in `mode` for `model`, given the token the client presented
/// (only when the proxy has no token of its own). No candidate at all is an error in the
/// client's dialect: 401 when nothing is configured, 429 when everything is benched.
pub fn plan(
    state: &AppState,
    mode: Mode,
    model: Option<&str>,
    client_token: Option<String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Plan, ProxyError> {
    let client = client_token.and_then(|t| {
        if t.starts_with("sk-ant-oat") {
            Some(UpstreamAuth::OAuth(t))
        } else if t.starts_with("sk-ant-") {
            Some(UpstreamAuth::ApiKey(t))
        } else {
            None
        }
    });
    let members = state.pool.get();
    if mode != Mode::Full
        && let Some(k @ UpstreamAuth::ApiKey(_)) = client
    {
        return Ok(Plan {
            candidates: vec![Candidate::Client(k)],
            pool: members,
            conversation: None,
        });
    }
    let now = crate::util::time::now_secs();
    let mut pool = members.candidates(mode, model, now);
    let conversation = (pool.ready.len() > 1).then(|| conversation_key(headers, body));
    if let Some(key) = conversation {
        members.prefer_conversation(&mut pool.ready, key);
    }
    let (subs, keys): (Vec<_>, Vec<_>) = pool.ready.into_iter().partition(|m| m.is_oauth());
    let mut candidates: Vec<Candidate> = subs.into_iter().map(Candidate::Member).collect();
    if mode == Mode::Full
        && let Some(c) = client
    {
        candidates.push(Candidate::Client(c));
    }
    candidates.extend(keys.into_iter().map(Candidate::Member));
    if !candidates.is_empty() {
        return Ok(Plan {
            candidates,
            pool: members,
            conversation,
        });
    }
    Err(match pool.benched.iter().map(|(_, b)| b.until).min() {
        Some(earliest) => all_benched(&pool.benched, earliest, now),
        None => no_credentials(state, &members, mode, model),
    })
}

/// Every credential that may serve the request is benched: 429 with the earliest time one
/// comes back, naming them (names only) and why.
fn all_benched(
    benched: &[(Arc<Member>, crate::credentials::pool::Bench)],
    earliest: u64,
    now: u64,
) -> ProxyError {
    let list: Vec<String> = benched
        .iter()
        .map(|(m, b)| {
            let when =
                crate::util::time::format_utc(i64::try_from(b.until).unwrap_or(i64::MAX) * 1000);
            let what = match b.state {
                "extra_usage" => "would draw from extra usage (plan_limits_only) until",
                "failed" => "was refused by the upstream; rechecked at",
                _ => "is rate-limited until",
            };
            format!("{} {what} {when}", m.name)
        })
        .collect();
    let mut e = ProxyError::new(
        ErrorKind::RateLimited,
        Origin::Proxy,
        format!(
            "every upstream credential that may serve this request is unavailable: {}",
            list.join("; ")
        ),
    );
    e.retry_after = Some(earliest.saturating_sub(now).max(1));
    e
}

fn no_credentials(
    state: &AppState,
    pool: &crate::credentials::Pool,
    mode: Mode,
    model: Option<&str>,
) -> ProxyError {
    if !pool.is_empty()
        && pool
            .members()
            .iter()
            .any(|m| m.serves(mode, None) && !m.serves(mode, model))
    {
        let allowed: Vec<String> = pool
            .members()
            .iter()
            .filter(|m| m.serves(mode, None))
            .flat_map(|m| m.models().to_vec())
            .collect();
        return ProxyError::new(
            ErrorKind::Forbidden,
            Origin::Client,
            format!(
                "no upstream credential of this server serves the model {:?} in {} mode (allowed: {})",
                model.unwrap_or_default(),
                mode.name(),
                allowed.join(", ")
            ),
        )
        .with_param("model");
    }
    if mode != Mode::Full {
        return ProxyError::auth(format!(
            "{} mode needs an Anthropic API key: send one (sk-ant-api…) as x-api-key or \
             Authorization: Bearer, or set ANTHROPIC_API_KEY for the server. Claude \
             subscription (OAuth) credentials work only in full mode (/v1 or /full/v1).",
            mode.name()
        ));
    }
    ProxyError::auth(match &state.oauth_error {
        Some(why) => format!("Claude subscription credentials are not usable: {why}"),
        None => "no credentials: log in with `ccproxy auth login` (or Claude Code's `claude`), \
                 set ANTHROPIC_API_KEY for the server, or send an Anthropic API key (sk-ant-api…) \
                 as x-api-key"
            .to_owned(),
    })
}

/// The credential of one candidate, ready to send (a subscription's token refreshed if due).
pub async fn resolve(candidate: &Candidate) -> Result<Chosen, ProxyError> {
    match candidate {
        Candidate::Client(auth) => Ok(Chosen {
            auth: auth.clone(),
            oauth: None,
            member: None,
        }),
        Candidate::Member(m) => match &m.kind {
            MemberKind::ApiKey(k) => Ok(Chosen {
                auth: UpstreamAuth::ApiKey(k.secret().to_owned()),
                oauth: None,
                member: Some(m.clone()),
            }),
            MemberKind::OAuth(mgr) => match mgr.access_token().await {
                Ok(tok) => Ok(Chosen {
                    auth: UpstreamAuth::OAuth(tok.secret().to_owned()),
                    oauth: Some(tok),
                    member: Some(m.clone()),
                }),
                Err(e) => Err(ProxyError::auth(format!(
                    "Claude subscription credentials are not usable: {e}"
                ))),
            },
        },
    }
}

/// The conversation a request belongs to, for affinity: Claude Code's session header, else the
/// session in `metadata.user_id`, `prompt_cache_key`, `previous_response_id`, else a hash of the
/// system prompt and the first message (or input item).
pub fn conversation_key(headers: &HeaderMap, body: &[u8]) -> u64 {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Keys<'a> {
        #[serde(borrow)]
        metadata: Option<Metadata<'a>>,
        #[serde(borrow)]
        prompt_cache_key: Option<&'a RawValue>,
        #[serde(borrow)]
        previous_response_id: Option<&'a RawValue>,
        #[serde(borrow)]
        system: Option<&'a RawValue>,
        #[serde(borrow)]
        instructions: Option<&'a RawValue>,
        #[serde(borrow)]
        messages: Option<Vec<&'a RawValue>>,
        #[serde(borrow)]
        input: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Metadata<'a> {
        #[serde(borrow)]
        user_id: Option<&'a RawValue>,
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(s) = headers
        .get("x-claude-code-session-id")
        .and_then(|v| v.to_str().ok())
    {
        ("session", s).hash(&mut h);
        return h.finish();
    }
    let k: Keys = serde_json::from_slice(body).unwrap_or_default();
    let explicit = [
        ("user", k.metadata.and_then(|m| m.user_id)),
        ("cache", k.prompt_cache_key),
        ("previous", k.previous_response_id),
    ];
    if let Some((tag, v)) = explicit.into_iter().find_map(|(t, v)| v.map(|v| (t, v))) {
        (tag, v.get()).hash(&mut h);
        return h.finish();
    }
    let first = k
        .messages
        .as_ref()
        .and_then(|m| m.first())
        .map(|r| r.get())
        .or_else(|| k.input.map(|i| first_item(i.get())));
    (
        "prefix",
        k.system.map(RawValue::get),
        k.instructions.map(RawValue::get),
        first,
    )
        .hash(&mut h);
    h.finish()
}

/// The first item of a JSON array's text (or the text itself when not an array).
fn first_item(json: &str) -> &str {
    serde_json::from_str::<Vec<&RawValue>>(json)
        .ok()
        .and_then(|v| v.first().map(|r| r.get()))
        .map_or(json, |first| {
            // `first` borrows from `json`: find its place to return a slice of the input.
            json.find(first).map_or(json, |i| &json[i..i + first.len()])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(headers: &[(&'static str, &str)], body: &str) -> u64 {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        conversation_key(&h, body.as_bytes())
    }

    #[test]
    fn one_conversation_one_key() {
        let turn1 = r#"{"system":"S","messages":[{"role":"user","content":"a"}]}"#;
        let turn2 = r#"{"system":"S","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}"#;
        assert_eq!(key(&[], turn1), key(&[], turn2));
        let other = r#"{"system":"S","messages":[{"role":"user","content":"z"}]}"#;
        assert_ne!(key(&[], turn1), key(&[], other));
        // The session header wins over the body.
        let s = [("x-claude-code-session-id", "abc")];
        assert_eq!(key(&s, turn1), key(&s, other));
        // Explicit keys.
        let a = r#"{"metadata":{"user_id":"user_x_session_1"},"messages":[{"role":"user","content":"a"}]}"#;
        let b = r#"{"metadata":{"user_id":"user_x_session_1"},"messages":[{"role":"user","content":"q"}]}"#;
        assert_eq!(key(&[], a), key(&[], b));
        let r1 = r#"{"input":[{"type":"message","role":"user","content":"a"},{"type":"x"}]}"#;
        let r2 = r#"{"input":[{"type":"message","role":"user","content":"a"}]}"#;
        assert_eq!(key(&[], r1), key(&[], r2));
        // Garbage never panics.
        key(&[], "{not json");
        key(&[], r#"{"input":"#);
    }
}
