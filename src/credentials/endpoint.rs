//! The OAuth token endpoint: refresh-token and authorization-code grants with JSON bodies.
//!
//! Successful answers carry secrets and are never logged or echoed. Error answers are reduced to the
//! HTTP status, the OAuth `error` code and a short, redacted `error_description`.

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

use super::Secret;

/// What went wrong at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointErrorKind {
    /// `invalid_grant`: the refresh token (or code) is unknown, used or revoked. Retrying the same
    /// grant cannot succeed.
    InvalidGrant,
    /// Another 4xx answer (bad client id, malformed request, …).
    Rejected,
    /// 429.
    RateLimited,
    /// 5xx.
    Server,
    /// No answer within the request timeout.
    Timeout,
    /// Connection failures.
    Network,
    /// A 2xx answer without a usable token.
    BadResponse,
}

/// A token endpoint failure (no secrets inside).
#[derive(Debug, Clone, thiserror::Error)]
pub struct EndpointError {
    pub kind: EndpointErrorKind,
    pub url: String,
    pub status: Option<u16>,
    /// The OAuth `error` code, e.g. `invalid_grant`.
    pub code: Option<String>,
    /// A short, redacted `error_description` or transport detail.
    pub detail: Option<String>,
    /// From a `Retry-After` header.
    pub retry_after: Option<Duration>,
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.url;
        match self.kind {
            EndpointErrorKind::InvalidGrant => {
                write!(f, "token endpoint {url} rejected the grant")?
            }
            EndpointErrorKind::Rejected
            | EndpointErrorKind::RateLimited
            | EndpointErrorKind::Server => write!(
                f,
                "token endpoint {url} answered HTTP {}",
                self.status.unwrap_or(0)
            )?,
            EndpointErrorKind::Timeout => write!(f, "token endpoint {url} timed out")?,
            EndpointErrorKind::Network => write!(f, "token endpoint {url} is unreachable")?,
            EndpointErrorKind::BadResponse => {
                write!(f, "token endpoint {url} answered without a usable token")?
            }
        }
        let mut parts: Vec<String> = Vec::new();
        if self.kind == EndpointErrorKind::RateLimited {
            parts.push("rate limited".to_owned());
        }
        parts.extend(self.code.iter().cloned());
        parts.extend(self.detail.iter().cloned());
        if let Some(r) = self.retry_after {
            parts.push(format!("retry after {}s", r.as_secs()));
        }
        if parts.is_empty() {
            Ok(())
        } else {
            write!(f, " ({})", parts.join("; "))
        }
    }
}

impl EndpointError {
    fn new(kind: EndpointErrorKind, url: &str) -> Self {
        Self {
            kind,
            url: url.to_owned(),
            status: None,
            code: None,
            detail: None,
            retry_after: None,
        }
    }
}

/// A successful token answer.
#[derive(Clone)]
pub(crate) struct Grant {
    pub access_token: String,
    pub refresh_token: Option<Secret>,
    pub expires_in: Option<Duration>,
    pub scopes: Option<Vec<String>>,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("access_token", &super::mask_secret(&self.access_token))
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// The token endpoint client.
#[derive(Clone, Debug)]
pub(crate) struct TokenEndpoint {
    http: reqwest::Client,
    url: String,
    client_id: String,
    timeout: Duration,
}

impl TokenEndpoint {
    pub(crate) fn new(
        http: reqwest::Client,
        url: String,
        client_id: String,
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            url,
            client_id,
            timeout,
        }
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The refresh-token grant.
    pub(crate) async fn refresh(&self, refresh_token: &Secret) -> Result<Grant, EndpointError> {
        let body = json!({
            "grant_type": "refresh_token",
            "refresh_token": refresh_token.expose(),
            "client_id": self.client_id,
        });
        self.post(&body, &[refresh_token.expose()]).await
    }

    /// The authorization-code grant (PKCE).
    pub(crate) async fn exchange_code(
        &self,
        code: &str,
        state: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<Grant, EndpointError> {
        let body = json!({
            "grant_type": "authorization_code",
            "code": code,
            "state": state,
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        });
        self.post(&body, &[code, verifier]).await
    }

    async fn post(&self, body: &Value, secrets: &[&str]) -> Result<Grant, EndpointError> {
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(3600)));
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if status.is_success() {
            return parse_grant(&bytes).map_err(|what| {
                let mut e = EndpointError::new(EndpointErrorKind::BadResponse, &self.url);
                e.status = Some(status.as_u16());
                e.detail = Some(what.to_owned());
                e
            });
        }
        let (code, description) = parse_error_body(&bytes);
        let kind = if code.as_deref() == Some("invalid_grant") {
            EndpointErrorKind::InvalidGrant
        } else if status.as_u16() == 429 {
            EndpointErrorKind::RateLimited
        } else if status.is_server_error() {
            EndpointErrorKind::Server
        } else {
            EndpointErrorKind::Rejected
        };
        let mut e = EndpointError::new(kind, &self.url);
        e.status = Some(status.as_u16());
        e.code = code.map(|c| sanitize(&c, secrets, 64));
        e.detail = description.map(|d| sanitize(&d, secrets, 200));
        e.retry_after = retry_after;
        Err(e)
    }

    fn transport_error(&self, err: &reqwest::Error) -> EndpointError {
        let kind = if err.is_timeout() {
            EndpointErrorKind::Timeout
        } else {
            EndpointErrorKind::Network
        };
        let mut e = EndpointError::new(kind, &self.url);
        e.detail = Some(if err.is_timeout() {
            format!("no answer within {}s", self.timeout.as_secs_f32())
        } else {
            error_chain(err)
        });
        e
    }
}

/// What lies under a transport error (its causes), trimmed and cleaned for logs.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    match err.source() {
        Some(cause) => sanitize(&crate::error::chain(cause), &[], 200),
        None => "connection failed".to_owned(),
    }
}

fn parse_grant(bytes: &[u8]) -> Result<Grant, &'static str> {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(bytes) else {
        return Err("the answer is not a JSON object");
    };
    let access_token = match o.get("access_token") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        _ => return Err("the answer has no access_token"),
    };
    let refresh_token = match o.get("refresh_token") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(Secret(s.trim().to_owned())),
        _ => None,
    };
    let expires_in = match o.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .map(|s| Duration::from_secs(s.min(10 * 365 * 86_400)));
    let scopes = match o.get("scope") {
        Some(Value::String(s)) => Some(s.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    };
    Ok(Grant {
        access_token,
        refresh_token,
        expires_in,
        scopes,
    })
}

/// `(error, error_description)` of an OAuth error body, also accepting the Anthropic API envelope
/// `{"type":"error","error":{"type":…,"message":…}}`.
fn parse_error_body(bytes: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(bytes) else {
        return (None, None);
    };
    match o.get("error") {
        Some(Value::String(code)) => (
            Some(code.clone()),
            o.get("error_description")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        Some(Value::Object(inner)) => (
            inner.get("type").and_then(Value::as_str).map(str::to_owned),
            inner
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        _ => (None, None),
    }
}

/// Shortens `text`, removes control characters and redacts the given secrets and anything that
/// looks like an Anthropic token.
pub(crate) fn sanitize(text: &str, secrets: &[&str], max_chars: usize) -> String {
    let mut s = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        s = s.replace(secret, "[redacted]");
    }
    let mut out = String::with_capacity(s.len().min(max_chars * 4));
    let mut rest = s.as_str();
    while let Some(i) = rest.find("sk-ant-") {
        out.push_str(&rest[..i]);
        out.push_str("[redacted]");
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    let cleaned: String = out
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.chars().count() > max_chars {
        let mut t: String = cleaned.chars().take(max_chars).collect();
        t.push('…');
        t
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_redacts_tokens_and_truncates() {
        let s = sanitize(
            "bad token sk-ant-ort01-abcdef_XYZ, and secretvalue\nnext",
            &["secretvalue"],
            200,
        );
        assert_eq!(s, "bad token [redacted], and [redacted] next");
        assert_eq!(sanitize("abcdef", &[], 3), "abc…");
    }

    #[test]
    fn parses_grants_and_errors() {
        let g = parse_grant(br#"{"access_token":"a","refresh_token":"r","expires_in":28800,"scope":"user:inference user:profile","token_type":"Bearer"}"#)
            .expect("grant");
        assert_eq!(g.access_token, "a");
        assert_eq!(g.expires_in, Some(Duration::from_secs(28800)));
        assert_eq!(
            g.scopes.as_deref(),
            Some(&["user:inference".to_owned(), "user:profile".to_owned()][..])
        );
        assert!(parse_grant(b"{}").is_err());
        assert!(parse_grant(b"<html>").is_err());
        assert_eq!(
            parse_error_body(br#"{"error":"invalid_grant","error_description":"nope"}"#),
            (Some("invalid_grant".into()), Some("nope".into()))
        );
        assert_eq!(
            parse_error_body(
                br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}"#
            ),
            (Some("rate_limit_error".into()), Some("slow".into()))
        );
    }
}
