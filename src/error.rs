//! The error boundary: one error type for everything that stops a request, and
//! the one place that renders it in the client's dialect (as a response, or as
//! the error event of a stream that already started).
//!
//! An error knows its [`Origin`] (client, upstream or proxy), its [`ErrorKind`]
//! (which decides the status and the type/code of each dialect through one table
//! per dialect), whether it may be retried, and its cause. Upstream error
//! *responses* on OpenAI routes come through here too
//! ([`ProxyError::from_upstream_response`]), so both dialects share one table.
//!
//! Adding a dialect means adding its arm to [`ProxyError::body`] and
//! [`ProxyError::stream_event`]; nothing else.

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use crate::routes::Dialect;

/// Who caused an error (pingora's `ErrorSource`): logged, and counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something we cannot serve.
    Client,
    /// The upstream could not be reached, misbehaved, or answered with an error.
    Upstream,
    /// Something inside the proxy (configuration, credentials, shutdown, limits).
    Proxy,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Upstream => "upstream",
            Origin::Proxy => "proxy",
        }
    }
}

/// What went wrong, as far as the client's answer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// The client did not send its request in time.
    RequestTimeout,
    TooLarge,
    RateLimited,
    /// A client key's budget for its period is spent (429; OpenAI `insufficient_quota`).
    BudgetExceeded,
    /// The account has no credit left (Anthropic `billing_error`).
    Billing,
    BadGateway,
    GatewayTimeout,
    Internal,
    Overloaded,
}

/// The table: kind → (status, Anthropic `error.type`, OpenAI `error.type`, OpenAI `code`).
const fn table(kind: ErrorKind) -> (u16, &'static str, &'static str, Option<&'static str>) {
    use ErrorKind::*;
    match kind {
        InvalidRequest => (400, "invalid_request_error", "invalid_request_error", None),
        Authentication => (
            401,
            "authentication_error",
            "authentication_error",
            Some("invalid_api_key"),
        ),
        Forbidden => (
            403,
            "permission_error",
            "permission_error",
            Some("forbidden"),
        ),
        NotFound => (
            404,
            "not_found_error",
            "invalid_request_error",
            Some("not_found"),
        ),
        MethodNotAllowed => (
            405,
            "invalid_request_error",
            "invalid_request_error",
            Some("method_not_allowed"),
        ),
        RequestTimeout => (
            408,
            "invalid_request_error",
            "invalid_request_error",
            Some("request_timeout"),
        ),
        TooLarge => (
            413,
            "request_too_large",
            "invalid_request_error",
            Some("request_too_large"),
        ),
        RateLimited => (
            429,
            "rate_limit_error",
            "rate_limit_error",
            Some("rate_limit_exceeded"),
        ),
        BudgetExceeded => (
            429,
            "rate_limit_error",
            "insufficient_quota",
            Some("insufficient_quota"),
        ),
        Billing => (
            400,
            "billing_error",
            "insufficient_quota",
            Some("insufficient_quota"),
        ),
        BadGateway => (
            502,
            "api_error",
            "server_error",
            Some("upstream_unreachable"),
        ),
        GatewayTimeout => (504, "api_error", "server_error", Some("upstream_timeout")),
        Internal => (500, "api_error", "server_error", None),
        Overloaded => (503, "overloaded_error", "server_error", Some("overloaded")),
    }
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(table(self).0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The Anthropic `error.type` for this kind.
    pub fn anthropic_type(self) -> &'static str {
        table(self).1
    }

    /// The OpenAI `error.type` and default `code` for this kind.
    pub fn openai_type(self) -> (&'static str, Option<&'static str>) {
        let (_, _, t, code) = table(self);
        (t, code)
    }

    /// Whether a client may retry the same request later with a chance of success.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::BadGateway
                | ErrorKind::GatewayTimeout
                | ErrorKind::Overloaded
                | ErrorKind::Internal
        )
    }

    /// The kind of an Anthropic error (`error.type`), falling back on the status
    /// when the type is unknown or missing.
    pub fn from_anthropic(kind: &str, status: u16) -> ErrorKind {
        match kind {
            "invalid_request_error" => ErrorKind::InvalidRequest,
            "authentication_error" => ErrorKind::Authentication,
            "permission_error" => ErrorKind::Forbidden,
            "not_found_error" => ErrorKind::NotFound,
            "request_too_large" => ErrorKind::TooLarge,
            "rate_limit_error" => ErrorKind::RateLimited,
            "billing_error" => ErrorKind::Billing,
            "overloaded_error" => ErrorKind::Overloaded,
            "timeout_error" => ErrorKind::GatewayTimeout,
            "api_error" => ErrorKind::Internal,
            _ => match status {
                401 => ErrorKind::Authentication,
                403 => ErrorKind::Forbidden,
                404 => ErrorKind::NotFound,
                413 => ErrorKind::TooLarge,
                429 => ErrorKind::RateLimited,
                529 => ErrorKind::Overloaded,
                400..=499 => ErrorKind::InvalidRequest,
                _ => ErrorKind::Internal,
            },
        }
    }
}

/// The cause of an error, kept as the error itself (walked with [`chain`]).
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// An error that stops a request.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub origin: Origin,
    /// What happened, in words for the client (without the cause).
    message: String,
    cause: Option<Cause>,
    /// The request field at fault, when known (OpenAI `param`).
    pub param: Option<String>,
    /// Seconds the client should wait (sets `retry-after`).
    pub retry_after: Option<u64>,
    /// A more specific OpenAI `code` than the kind's default.
    pub code: Option<&'static str>,
    /// The status to answer with when not the kind's (an upstream's own status).
    status: Option<StatusCode>,
    /// A client key's rate-limit windows (rendered as the dialect's rate-limit headers).
    pub rate_limits: Option<Arc<RateLimitInfo>>,
}

/// One rate-limit window of a client key, for the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window has room again.
    pub reset_secs: u64,
}

/// A client key's request and token windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitInfo {
    pub requests: Option<RateWindow>,
    pub tokens: Option<RateWindow>,
}

impl RateLimitInfo {
    /// The headers of `dialect`: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`
    /// (reset as an RFC 3339 time) or OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
    /// (reset as a duration, `12s`).
    pub fn headers(&self, dialect: Dialect, now_ms: i64) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (what, w) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(w) = w else { continue };
            match dialect {
                Dialect::Anthropic => {
                    let at = now_ms.saturating_add(i64::try_from(w.reset_secs).unwrap_or(0) * 1000);
                    out.push((
                        format!("anthropic-ratelimit-{what}-limit"),
                        w.limit.to_string(),
                    ));
                    out.push((
                        format!("anthropic-ratelimit-{what}-remaining"),
                        w.remaining.to_string(),
                    ));
                    out.push((
                        format!("anthropic-ratelimit-{what}-reset"),
                        crate::util::time::format_rfc3339(at),
                    ));
                }
                Dialect::OpenAi => {
                    out.push((format!("x-ratelimit-limit-{what}"), w.limit.to_string()));
                    out.push((
                        format!("x-ratelimit-remaining-{what}"),
                        w.remaining.to_string(),
                    ));
                    out.push((
                        format!("x-ratelimit-reset-{what}"),
                        format!("{}s", w.reset_secs),
                    ));
                }
            }
        }
        out
    }
}

impl ProxyError {
    pub fn new(kind: ErrorKind, origin: Origin, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            origin,
            message: message.into(),
            cause: None,
            param: None,
            retry_after: None,
            code: None,
            status: None,
            rate_limits: None,
        }
    }

    /// The client sent an invalid request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, Origin::Client, message)
    }

    /// The client presented no valid credential.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Authentication, Origin::Client, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, Origin::Client, message)
    }

    /// The proxy cannot take the request now (shutdown, concurrency limit).
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = Self::new(ErrorKind::Overloaded, Origin::Proxy, message);
        e.retry_after = Some(retry_after);
        e
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_cause(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Arc::new(cause));
        self
    }

    /// An upstream error response (status and body) as an error of the proxy's
    /// table: its kind from the Anthropic `error.type` (or the status), its
    /// message the upstream's, its status the upstream's (529 becomes 503: see
    /// README "Errors"). A body that is not Anthropic's error JSON becomes the
    /// message, trimmed to 500 bytes.
    pub fn from_upstream_response(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: Option<Inner>,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            #[serde(rename = "type")]
            kind: Option<String>,
            message: Option<String>,
        }
        let parsed = serde_json::from_slice::<Envelope>(body).ok();
        let (kind, message) = match parsed.and_then(|p| p.error) {
            Some(e) => (
                e.kind.unwrap_or_default(),
                e.message.unwrap_or_else(|| "upstream error".to_owned()),
            ),
            None => (String::new(), body_text(status, body)),
        };
        let mut e = Self::from_upstream_error(&kind, message, status);
        let out = if status == 529 { 503 } else { status };
        e.status = StatusCode::from_u16(out).ok();
        e
    }

    /// An upstream error of Anthropic type `kind` (from a response answered with
    /// `status`, or an `error` event of a stream, where `status` is the stream's).
    pub fn from_upstream_error(kind: &str, message: impl Into<String>, status: u16) -> Self {
        Self::new(
            ErrorKind::from_anthropic(kind, status),
            Origin::Upstream,
            message,
        )
    }

    /// The message the client reads: what happened, then its cause.
    pub fn message(&self) -> Cow<'_, str> {
        match &self.cause {
            None => Cow::Borrowed(&self.message),
            Some(c) => Cow::Owned(format!("{}: {}", self.message, chain(c.as_ref()))),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.kind.status())
    }

    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }

    /// The JSON error body in the given dialect.
    pub fn body(&self, dialect: Dialect) -> Vec<u8> {
        let message = self.message();
        let v = match dialect {
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.kind.anthropic_type(), "message": message},
            }),
            Dialect::OpenAi => {
                let (kind, default_code) = self.kind.openai_type();
                serde_json::json!({
                    "error": {
                        "message": message,
                        "type": kind,
                        "param": self.param,
                        "code": self.code.or(default_code),
                    }
                })
            }
        };
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// The bytes that end a stream already under way with this error:
    /// Anthropic's `event: error` frame; OpenAI's error chunk, without `[DONE]`
    /// (which would tell the client the answer is complete).
    pub fn stream_event(&self, dialect: Dialect) -> Bytes {
        let body = self.body(dialect);
        let mut out = Vec::with_capacity(body.len() + 32);
        match dialect {
            Dialect::Anthropic => {
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\n\n");
            }
            Dialect::OpenAi => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&body);
                out.extend_from_slice(b"\n\n");
            }
        }
        Bytes::from(out)
    }

    /// Renders the error as an HTTP response in the client's dialect.
    pub fn into_response(self, dialect: Dialect) -> Response {
        let mut resp = Response::new(Body::from(self.body(dialect)));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(info) = &self.rate_limits {
            for (k, v) in info.headers(dialect, crate::util::time::now_ms()) {
                if let (Ok(k), Ok(v)) = (
                    header::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    headers.insert(k, v);
                }
            }
        }
        // Proxy-made refusals may come before the request body was read: the
        // connection then cannot be reused, and saying so keeps pooling clients
        // from sending their next request into a closing connection.
        if self.origin != Origin::Upstream
            && matches!(
                self.kind,
                ErrorKind::Authentication
                    | ErrorKind::Forbidden
                    | ErrorKind::TooLarge
                    | ErrorKind::RequestTimeout
                    | ErrorKind::Overloaded
            )
        {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?}: {}",
            self.origin.name(),
            self.kind,
            self.message()
        )
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_ref()
            .map(|c| c.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// An error and its causes, joined with `: ` (repeats left out): the text a
/// person needs, where a library's own top-level message is too vague.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Whether `e` or any of its causes is a `T`.
pub fn caused_by<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(s) = cur {
        if s.is::<T>() {
            return true;
        }
        cur = s.source();
    }
    false
}

/// A non-JSON error body as a message (trimmed to 500 bytes on a char boundary).
fn body_text(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    if t.is_empty() {
        return format!("upstream answered HTTP {status}");
    }
    let mut end = t.len().min(500);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    t[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(b: &[u8]) -> serde_json::Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn anthropic_envelope() {
        let v = json(&ProxyError::invalid("bad json").body(Dialect::Anthropic));
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "bad json");
    }

    #[test]
    fn openai_envelope_names_param() {
        let e = ProxyError::invalid("messages is required").with_param("messages");
        let v = json(&e.body(Dialect::OpenAi));
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn cause_is_kept_and_rendered_after_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let e = ProxyError::new(ErrorKind::BadGateway, Origin::Upstream, "upstream broke")
            .with_cause(io);
        assert_eq!(e.message(), "upstream broke: connection reset");
        assert!(caused_by::<std::io::Error>(&e));
        assert!(e.retryable());
    }

    #[test]
    fn proxy_made_and_upstream_made_5xx_share_one_openai_type() {
        let made = ProxyError::new(ErrorKind::BadGateway, Origin::Upstream, "x");
        let relayed = ProxyError::from_upstream_response(
            500,
            br#"{"type":"error","error":{"type":"api_error","message":"boom"}}"#,
        );
        let a = json(&made.body(Dialect::OpenAi));
        let b = json(&relayed.body(Dialect::OpenAi));
        assert_eq!(a["error"]["type"], b["error"]["type"]);
        assert_eq!(b["error"]["message"], "boom");
        assert_eq!(relayed.status(), 500);
    }

    /// Anthropic error type (and status) → OpenAI status, type and code.
    #[test]
    fn upstream_errors_in_the_openai_envelope() {
        #[rustfmt::skip]
        let cases: [(u16, &str, u16, &str, Option<&str>); 12] = [
            (400, "invalid_request_error", 400, "invalid_request_error", None),
            (401, "authentication_error", 401, "authentication_error", Some("invalid_api_key")),
            (403, "permission_error", 403, "permission_error", Some("forbidden")),
            (404, "not_found_error", 404, "invalid_request_error", Some("not_found")),
            (413, "request_too_large", 413, "invalid_request_error", Some("request_too_large")),
            (429, "rate_limit_error", 429, "rate_limit_error", Some("rate_limit_exceeded")),
            (500, "api_error", 500, "server_error", None),
            (529, "overloaded_error", 503, "server_error", Some("overloaded")),
            (402, "billing_error", 402, "insufficient_quota", Some("insufficient_quota")),
            (504, "timeout_error", 504, "server_error", Some("upstream_timeout")),
            (418, "teapot_error", 418, "invalid_request_error", None),
            (502, "weird", 502, "server_error", None),
        ];
        for (status, atype, want_status, otype, code) in cases {
            let body =
                serde_json::json!({"type": "error", "error": {"type": atype, "message": "boom"}});
            let e = ProxyError::from_upstream_response(status, body.to_string().as_bytes());
            assert_eq!(e.status(), want_status, "{atype}");
            assert_eq!(
                json(&e.body(Dialect::OpenAi)),
                serde_json::json!({"error": {"message": "boom", "type": otype, "param": null, "code": code}}),
                "{atype}"
            );
        }
        let long = "é".repeat(400);
        let e = ProxyError::from_upstream_response(500, long.as_bytes());
        assert!(e.message().len() <= 500);
    }

    #[test]
    fn upstream_529_is_503_overloaded() {
        let e = ProxyError::from_upstream_response(529, b"");
        assert_eq!(e.status(), 503);
        let v = json(&e.body(Dialect::OpenAi));
        assert_eq!(v["error"]["code"], "overloaded");
        assert_eq!(v["error"]["message"], "upstream answered HTTP 529");
    }

    #[test]
    fn upstream_html_body_becomes_the_message_with_its_status() {
        let e = ProxyError::from_upstream_response(502, "<html>bad gateway é</html>".as_bytes());
        assert_eq!(e.status(), 502);
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(e.message().contains("bad gateway é"));
    }

    #[test]
    fn stream_events_per_dialect() {
        let e = ProxyError::new(ErrorKind::BadGateway, Origin::Upstream, "lost");
        let a = e.stream_event(Dialect::Anthropic);
        assert!(a.starts_with(b"event: error\ndata: {"));
        assert!(a.ends_with(b"}\n\n"));
        let o = e.stream_event(Dialect::OpenAi);
        assert!(o.starts_with(b"data: {\"error\""));
        assert!(o.ends_with(b"}\n\n"));
        assert!(!o.windows(6).any(|w| w == b"[DONE]"));
    }
}
