//! Header names the request path looks up or sets on every request, parsed at compile time:
//! a `&str` name is parsed (and, to insert, hashed) on every use.

use axum::http::HeaderName;

pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The upstream's id of a request (Anthropic's `request-id`).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
pub const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
