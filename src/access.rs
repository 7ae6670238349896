//! Access: who may talk to a proxy that holds a subscription token.
//!
//! - The proxy token: when configured, every proxied and operational request must
//!   present it (`x-api-key` or `Authorization: Bearer`); only its SHA-256 digest
//!   is kept, and presented tokens are compared with it in constant time.
//! - DNS rebinding: when bound to loopback, a request whose `Host` is not a
//!   loopback name or address is refused (a rebound name still carries the
//!   attacker's host name).
//! - Drive-by requests from web pages: browsers send `Origin` on cross-origin
//!   requests; any origin not on the configured allow-list is refused, so a page
//!   cannot spend the subscription even with a "simple" request that skips CORS
//!   preflight. CORS headers are only ever sent to allow-listed origins.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ErrorKind, Origin, ProxyError};
use crate::keys::{Admitted, ClientKeys, Refused};
use crate::routes::Mode;

/// The proxy token, kept only as its SHA-256 digest.
#[derive(Clone)]
pub struct ProxyToken {
    digest: [u8; 32],
}

impl ProxyToken {
    pub fn new(token: &str) -> ProxyToken {
        ProxyToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Compares a presented token in constant time: both are hashed first, so
    /// neither the content nor the length leaks through timing.
    pub fn matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| {
            let got: [u8; 32] = Sha256::digest(p.as_bytes()).into();
            bool::from(got.ct_eq(&self.digest))
        })
    }
}

impl std::fmt::Debug for ProxyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyToken(****)")
    }
}

/// The token a client presented: `x-api-key`, else `Authorization: Bearer`.
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(crate::util::names::X_API_KEY)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if !v.is_empty() {
            return Some(v);
        }
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Checks the proxy token of a proxied request. Returns the client's own
/// credential candidate (its `x-api-key` or bearer value) when the proxy is open;
/// with a proxy token, the presented value is the token and is never forwarded.
pub fn check_proxied(
    token: Option<&ProxyToken>,
    headers: &HeaderMap,
) -> Result<Option<String>, ProxyError> {
    let presented = presented_token(headers);
    match token {
        None => Ok(presented.map(str::to_owned)),
        Some(t) if t.matches(presented) => Ok(None),
        Some(_) => Err(ProxyError::auth(
            "invalid or missing proxy token: send the token ccproxy was started with as x-api-key or Authorization: Bearer",
        )),
    }
}

/// Who a proxied request is.
pub struct Caller {
    /// The client's own credential candidate (only on an open proxy without client keys).
    pub client_token: Option<String>,
    /// The client key it came with, admitted (`None`: no keys, or the admin token).
    pub key: Option<Admitted>,
}

/// The access phase: without client keys, [`check_proxied`]; with them (at least one
/// key, or `require_client_keys`), the proxy token (admin) or a valid client key within
/// its mode, budget and limits. The presented value is then never forwarded.
pub fn check_caller(
    token: Option<&ProxyToken>,
    keys: &ClientKeys,
    mode: Mode,
    headers: &HeaderMap,
) -> Result<Caller, Refused> {
    if !keys.enforced() {
        return Ok(Caller {
            client_token: check_proxied(token, headers)?,
            key: None,
        });
    }
    let presented = presented_token(headers);
    if token.is_some_and(|t| t.matches(presented)) {
        return Ok(Caller {
            client_token: None,
            key: None,
        });
    }
    let key = keys.admit(presented, mode, crate::util::time::now_ms())?;
    Ok(Caller {
        client_token: None,
        key: Some(key),
    })
}

/// The WebSocket upgrade (`server/socket.rs`): with client keys, the admin token or a key
/// that is known, not revoked and not expired (each `response.create` then goes through
/// [`check_caller`] with the upgrade's headers, so the key's limits apply per response);
/// without them, [`check_proxied`].
pub fn check_upgrade(
    token: Option<&ProxyToken>,
    keys: &ClientKeys,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    if !keys.enforced() {
        return check_proxied(token, headers).map(|_| ());
    }
    let presented = presented_token(headers);
    if token.is_some_and(|t| t.matches(presented)) {
        return Ok(());
    }
    keys.usable(presented, crate::util::time::now_ms())
}

/// Admin routes (`/api/keys`, `/api/usage`, `/metrics`, the dashboard) refuse client keys
/// by name, whatever else is configured.
pub fn refuse_client_key(
    keys: &ClientKeys,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), ProxyError> {
    match presented_token(headers).or(query_token) {
        Some(t) if keys.is_client_key(t) => Err(forbidden(
            "client keys cannot use admin routes: send the proxy (admin) token".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// Checks the proxy token on operational endpoints (metrics, usage, dashboard):
/// the headers of [`presented_token`], or `?token=` (percent-decoded) for browsers.
pub fn check_ops(
    token: Option<&ProxyToken>,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), ProxyError> {
    let Some(t) = token else {
        return Ok(());
    };
    if t.matches(presented_token(headers).or(query_token)) {
        Ok(())
    } else {
        Err(ProxyError::auth(
            "invalid or missing proxy token: send it as x-api-key, Authorization: Bearer, or ?token=",
        ))
    }
}

/// The request-admission policy derived from the settings.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Enforce loopback `Host` names (the server listens on loopback only).
    pub loopback_only: bool,
    /// Origins allowed to call the proxy from a browser (exact match, e.g.
    /// `http://localhost:3000`); `*` allows any.
    pub cors_origins: Vec<String>,
}

/// Whether a listen address is loopback (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]`,
/// `[v6]:port`); `None` when the value has any other shape (`[::1].evil.com`,
/// `[::1]evil.com:80`, an empty or non-numeric port).
fn host_name(value: &str) -> Option<&str> {
    let is_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            None if after.is_empty() => Some(inside),
            Some(port) if is_port(port) => Some(inside),
            _ => None,
        };
    }
    match value.split_once(':') {
        None => Some(value),
        Some((h, port)) if is_port(port) && !h.is_empty() => Some(h),
        Some(_) => None,
    }
}

/// What the guard decided.
pub enum Verdict {
    /// Go on; add these CORS headers to the response (if any).
    Allow(Option<HeaderValue>),
    /// Answer now (refusal or CORS preflight).
    Respond(Response),
}

impl Guard {
    fn origin_allowed(&self, origin: &str) -> bool {
        self.cors_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }

    /// Checks a request's `Host` and `Origin`. Errors render in the route's dialect
    /// by the caller; preflights are answered here.
    pub fn check(
        &self,
        method: &Method,
        version: Version,
        headers: &HeaderMap,
    ) -> Result<Verdict, ProxyError> {
        let host = one_host(version, headers)?;
        if self.loopback_only
            && let Some(h) = host
            && !host_name(h).is_some_and(is_loopback_host)
        {
            return Err(forbidden(format!(
                "Host {h:?} is not a loopback name: ccproxy listens on loopback and refuses other \
                         host names (DNS rebinding protection)"
            )));
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(Verdict::Allow(None));
        };
        let origin_str = origin.to_str().unwrap_or("");
        // The dashboard served by ccproxy itself calls its own API: same origin.
        let same_origin = host.is_some_and(|h| {
            origin_str
                .strip_prefix("http://")
                .or_else(|| origin_str.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(h))
        });
        if same_origin {
            return Ok(Verdict::Allow(None));
        }
        if !self.origin_allowed(origin_str) {
            return Err(forbidden(format!(
                "cross-origin request from {origin_str:?} refused; allow it with cors_origins in the config file"
            )));
        }
        if method == Method::OPTIONS {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            let requested = headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("*"));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            return Ok(Verdict::Respond(resp));
        }
        Ok(Verdict::Allow(Some(origin.clone())))
    }
}

/// The request's one `Host`: two are refused, and so is none on HTTP/1.1
/// (RFC 9112 §3.2); HTTP/2 carries the authority in the request line instead.
fn one_host(version: Version, headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    let mut all = headers.get_all(header::HOST).iter();
    let first = all.next();
    if all.next().is_some() {
        return Err(ProxyError::invalid(
            "the request has more than one Host header",
        ));
    }
    match first {
        None if version == Version::HTTP_11 => Err(ProxyError::invalid(
            "the request has no Host header (required in HTTP/1.1)",
        )),
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ProxyError::invalid("the Host header is not visible ASCII")),
    }
}

fn forbidden(message: String) -> ProxyError {
    ProxyError::new(ErrorKind::Forbidden, Origin::Client, message)
}

/// Adds the CORS response headers for an allowed origin.
pub fn add_cors(resp: &mut Response, origin: Option<HeaderValue>) {
    if let Some(o) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("x-request-id, request-id, retry-after, server-timing"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn proxy_token_compares_digests() {
        let t = ProxyToken::new("secret-token");
        assert!(t.matches(Some("secret-token")));
        assert!(!t.matches(Some("secret-token ")));
        assert!(!t.matches(None));
        assert!(!format!("{t:?}").contains("secret"));
        let h = headers(&[("authorization", "Bearer secret-token")]);
        assert_eq!(check_proxied(Some(&t), &h).unwrap(), None);
        assert!(check_proxied(Some(&t), &HeaderMap::new()).is_err());
        let open = check_proxied(None, &headers(&[("x-api-key", "sk-ant-api-x")]));
        assert_eq!(open.unwrap().as_deref(), Some("sk-ant-api-x"));
        assert!(check_ops(Some(&t), &HeaderMap::new(), Some("secret-token")).is_ok());
        assert!(check_ops(Some(&t), &HeaderMap::new(), Some("nope")).is_err());
    }

    #[test]
    fn loopback_names() {
        for h in [
            "127.0.0.1",
            "localhost",
            "::1",
            "[::1]",
            "127.8.9.10",
            "app.localhost",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "0.0.0.0",
            "example.com",
            "192.168.1.2",
            "localhost.evil.com",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert_eq!(host_name("[::1]:8000"), Some("::1"));
        assert_eq!(host_name("[::1]"), Some("::1"));
        assert_eq!(host_name("localhost:8000"), Some("localhost"));
        assert_eq!(host_name("localhost"), Some("localhost"));
        for bad in [
            "[::1].evil.com",
            "[::1]evil.com:80",
            "[::1]:",
            "[::1",
            "localhost:",
            "localhost:80x",
            ":80",
            "a:1:2",
        ] {
            assert_eq!(host_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_headers_must_be_one_and_well_formed() {
        let g = Guard {
            loopback_only: true,
            cors_origins: vec![],
        };
        let get = Method::GET;
        for bad in ["[::1].evil.com", "[::1]evil.com:80"] {
            let e = g
                .check(&get, Version::HTTP_11, &headers(&[("host", bad)]))
                .err()
                .unwrap_or_else(|| panic!("{bad} passed"));
            assert_eq!(e.kind, ErrorKind::Forbidden, "{bad}");
        }
        let mut two = HeaderMap::new();
        two.append(header::HOST, HeaderValue::from_static("127.0.0.1"));
        two.append(header::HOST, HeaderValue::from_static("evil.example"));
        let e = g.check(&get, Version::HTTP_11, &two).err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let e = g
            .check(&get, Version::HTTP_11, &HeaderMap::new())
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        // HTTP/2 names the authority in the request line.
        assert!(g.check(&get, Version::HTTP_2, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn rebinding_and_drive_by_are_refused() {
        let g = Guard {
            loopback_only: true,
            cors_origins: vec!["http://localhost:3000".into()],
        };
        let get = Method::GET;
        assert!(
            g.check(
                &get,
                Version::HTTP_11,
                &headers(&[("host", "127.0.0.1:8000")])
            )
            .is_ok()
        );
        assert!(
            g.check(
                &get,
                Version::HTTP_11,
                &headers(&[("host", "evil.example:8000")])
            )
            .is_err()
        );
        assert!(
            g.check(
                &get,
                Version::HTTP_11,
                &headers(&[
                    ("host", "localhost:8000"),
                    ("origin", "https://evil.example")
                ])
            )
            .is_err()
        );
        assert!(matches!(
            g.check(
                &get,
                Version::HTTP_11,
                &headers(&[
                    ("host", "localhost:8000"),
                    ("origin", "http://localhost:3000")
                ])
            ),
            Ok(Verdict::Allow(Some(_)))
        ));
        assert!(matches!(
            g.check(
                &get,
                Version::HTTP_11,
                &headers(&[
                    ("host", "localhost:8000"),
                    ("origin", "http://localhost:8000")
                ])
            ),
            Ok(Verdict::Allow(None))
        ));
        assert!(matches!(
            g.check(
                &Method::OPTIONS,
                Version::HTTP_11,
                &headers(&[
                    ("host", "localhost:8000"),
                    ("origin", "http://localhost:3000")
                ])
            ),
            Ok(Verdict::Respond(_))
        ));
    }
}
