//! Header names the request path looks up or sets on every request, parsed at compile time:
//! a `&str` name is parsed (and, to insert, hashed) on every use.

use axum::http::HeaderName;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The upstream's id of a request (Anthropic's `request-id`).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
pub const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
pub const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
pub const X_APP: HeaderName = HeaderName::from_static("x-app");
pub const DIRECT_BROWSER_ACCESS: HeaderName =
    HeaderName::from_static("anthropic-dangerous-direct-browser-access");
pub const X_CLAUDE_CODE_SESSION_ID: HeaderName =
    HeaderName::from_static("x-claude-code-session-id");
