//! Errors that the proxy itself produces, and the one place that renders them
//! in the client's dialect (Anthropic or OpenAI envelope).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Which API the client speaks on this route: decides the error envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Anthropic,
    OpenAi,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Anthropic => "anthropic",
            Dialect::OpenAi => "openai",
        }
    }
}

/// Who caused an error (pingora's ErrorSource): useful for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something we cannot serve.
    Downstream,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// Something inside the proxy (configuration, credentials).
    Internal,
}

/// The kinds of error the proxy makes itself. Each maps to one status and one
/// Anthropic error type; the OpenAI rendering derives from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    TooLarge,
    RateLimited,
    BadGateway,
    GatewayTimeout,
    Internal,
    Overloaded,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Authentication => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The Anthropic `error.type` for this kind.
    pub fn anthropic_type(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::MethodNotAllowed => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::Forbidden => "permission_error",
            ErrorKind::NotFound => "not_found_error",
            ErrorKind::TooLarge => "request_too_large",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout | ErrorKind::Internal => "api_error",
            ErrorKind::Overloaded => "overloaded_error",
        }
    }

    /// The OpenAI `error.type` (and a `code`) for this kind.
    pub fn openai_type(self) -> (&'static str, Option<&'static str>) {
        match self {
            ErrorKind::InvalidRequest => ("invalid_request_error", None),
            ErrorKind::MethodNotAllowed => ("invalid_request_error", Some("method_not_allowed")),
            ErrorKind::Authentication => ("authentication_error", Some("invalid_api_key")),
            ErrorKind::Forbidden => ("permission_error", Some("forbidden")),
            ErrorKind::NotFound => ("invalid_request_error", Some("not_found")),
            ErrorKind::TooLarge => ("invalid_request_error", Some("request_too_large")),
            ErrorKind::RateLimited => ("rate_limit_error", Some("rate_limit_exceeded")),
            ErrorKind::BadGateway => ("api_error", Some("upstream_unreachable")),
            ErrorKind::GatewayTimeout => ("api_error", Some("upstream_timeout")),
            ErrorKind::Internal => ("api_error", None),
            ErrorKind::Overloaded => ("api_error", Some("overloaded")),
        }
    }
}

/// An error made by the proxy (not an upstream error response, which is relayed).
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub kind: ErrorKind,
    pub source: ErrorSource,
    pub message: String,
    /// The request field at fault, when known (OpenAI `param`).
    pub param: Option<String>,
    /// Seconds the client should wait (sets `retry-after`).
    pub retry_after: Option<u64>,
    /// A more specific OpenAI `code` than the kind's default.
    pub code: Option<&'static str>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, source: ErrorSource, message: impl Into<String>) -> Self {
        ProxyError {
            kind,
            source,
            message: message.into(),
            param: None,
            retry_after: None,
            code: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, ErrorSource::Downstream, message)
    }

    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Authentication, ErrorSource::Downstream, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, ErrorSource::Downstream, message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The response body in the given dialect.
    pub fn body(&self, dialect: Dialect) -> Vec<u8> {
        match dialect {
            Dialect::Anthropic => serde_json::to_vec(&serde_json::json!({
                "type": "error",
                "error": {"type": self.kind.anthropic_type(), "message": self.message},
            })),
            Dialect::OpenAi => {
                let (kind, default_code) = self.kind.openai_type();
                let code = self.code.or(default_code);
                serde_json::to_vec(&serde_json::json!({
                    "error": {
                        "message": self.message,
                        "type": kind,
                        "param": self.param,
                        "code": code,
                    }
                }))
            }
        }
        .unwrap_or_default()
    }

    /// Renders the error as an HTTP response in the client's dialect.
    pub fn into_response(self, dialect: Dialect) -> Response {
        let mut resp = (self.kind.status(), self.body(dialect)).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // Refusals may come before the request body was read: the connection
        // then cannot be reused, and saying so keeps pooling clients from
        // sending their next request into a closing connection.
        if matches!(
            self.kind,
            ErrorKind::Authentication
                | ErrorKind::Forbidden
                | ErrorKind::TooLarge
                | ErrorKind::Overloaded
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}/{:?}: {}", self.source, self.kind, self.message)
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_envelope() {
        let e = ProxyError::invalid("bad json");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "bad json");
    }

    #[test]
    fn openai_envelope_names_param() {
        let e = ProxyError::invalid("messages is required").with_param("messages");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        assert!(v["error"]["code"].is_null());
    }
}
