//! The one per-request context (pingora's `CTX`): what the request is, and its
//! usage record, which changes only through the named transitions below.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;

use crate::error::ProxyError;
use crate::observability::{InFlight, Observer};
use crate::routes::{Dialect, Mode, Route};
use crate::util::names;

/// Carried through every phase of one request.
pub struct RequestCtx {
    pub mode: Mode,
    pub route: Route,
    pub dialect: Dialect,
    pub request_id: String,
    t0: Instant,
    /// The usage record, until a streaming body takes it over.
    record: Option<InFlight>,
    /// Time spent waiting for the upstream (for `server-timing`).
    upstream_wait: Option<Duration>,
    /// The client key's rate-limit windows, sent as the dialect's rate-limit headers.
    rate_limits: Option<crate::error::RateLimitInfo>,
}

impl RequestCtx {
    pub fn new(observer: Arc<Observer>, mode: Mode, route: Route, headers: &HeaderMap) -> Self {
        let dialect = route.dialect();
        let request_id = request_id(headers);
        let record = InFlight::new(
            observer,
            request_id.clone(),
            mode.name(),
            dialect.name(),
            route.name(),
        );
        RequestCtx {
            mode,
            route,
            dialect,
            request_id,
            t0: Instant::now(),
            record: Some(record),
            upstream_wait: None,
            rate_limits: None,
        }
    }

    fn record(&mut self) -> Option<&mut InFlight> {
        self.record.as_mut()
    }

    /// The request was prepared: model, stream, and whose credential goes upstream.
    pub fn identified(&mut self, model: Option<String>, stream: bool, credential: &str) {
        if let Some(r) = self.record() {
            r.identified(model, stream, credential);
        }
    }

    /// The request was admitted under a client key: the record names it and holds its
    /// concurrency slot (released with the record, at the end of a stream); the response
    /// gets its rate-limit headers. Returns the name and limits (for the model check).
    pub fn client_key(&mut self, k: crate::keys::Admitted) -> (String, crate::keys::Limits) {
        self.rate_limits = k.rate_limits;
        let (name, slot) = (k.name, k.slot);
        if let Some(r) = self.record() {
            r.client_key(name.clone(), Some(Box::new(slot)));
            r.hold_until_counted(Box::new(k.uncounted));
        }
        (name, k.limits)
    }

    /// The access phase refused the request; the record names the key if it was one.
    pub fn refused(&mut self, refused: crate::keys::Refused) -> ProxyError {
        if let (Some(name), Some(r)) = (refused.key, self.record()) {
            r.client_key(name, None);
        }
        *refused.error
    }

    /// The credential that got the upstream's answer (after any failover); `guard` (its
    /// in-flight count) is held until the request is over, stream included.
    pub fn served_by(&mut self, credential: &str, guard: Option<Box<dyn Send + Sync>>) {
        if let Some(r) = self.record() {
            r.served_by(credential);
            if let Some(g) = guard {
                r.hold(g);
            }
        }
    }

    /// What the request is billed to (`plan`, `extra_usage`, `api`).
    pub fn billed_to(&mut self, bucket: Option<&'static str>) {
        if let (Some(r), Some(b)) = (self.record(), bucket) {
            r.billed_to(b);
        }
    }

    /// The upstream answered with its head.
    pub fn upstream_answered(&mut self, resp: &crate::upstream::UpResponse, waited: Duration) {
        self.upstream_wait = Some(waited);
        let id = resp
            .headers()
            .get(names::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(r) = self.record() {
            r.upstream_answered(resp.status().as_u16(), waited, id);
        }
    }

    /// The upstream's whole body was read after `waited` (non-stream answers).
    pub fn upstream_read(&mut self, waited: Duration) {
        self.upstream_wait = Some(waited);
        if let Some(r) = self.record() {
            r.upstream_read(waited);
        }
    }

    /// A whole body passed: metered with `tap` (a small JSON body is read by the observer, after
    /// the answer went out), and the answer complete.
    pub fn completed_with(&mut self, tap: crate::observability::tap::Tap, body: &[u8]) {
        if let Some(r) = self.record() {
            r.observe_whole(tap, body);
            r.completed();
        }
    }

    /// The answer is complete: a Messages answer the pipeline parsed (usage and model read
    /// from it).
    pub fn completed_with_message(&mut self, msg: &crate::api::anthropic::Message<'_>) {
        if let Some(r) = self.record() {
            r.observe_message(msg);
            r.completed();
        }
    }

    /// The answer is complete (nothing to meter).
    pub fn completed(&mut self) {
        if let Some(r) = self.record() {
            r.completed();
        }
    }

    /// The request failed with `e`.
    pub fn failed(&mut self, e: &ProxyError) {
        if let Some(r) = self.record() {
            r.failed(e);
        }
    }

    /// A stream starts: the record goes with the body, which finishes it.
    pub fn stream_started(&mut self, status: u16) -> Option<InFlight> {
        let mut r = self.record.take()?;
        r.stream_started(status);
        Some(r)
    }

    /// The response head leaves: the record (unless a stream took it) is
    /// finished here, and the response gets `x-request-id` and `server-timing`.
    pub fn finish(mut self, resp: &mut Response) {
        if let Some(mut r) = self.record.take() {
            r.responded(resp.status().as_u16());
        }
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            h.insert(names::X_REQUEST_ID, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.server_timing()) {
            h.insert(names::SERVER_TIMING, v);
        }
        // A refusal carries its own (taken when it was refused).
        if let Some(info) = &self.rate_limits
            && !resp.status().is_client_error()
        {
            let now = crate::util::time::now_ms();
            let h = resp.headers_mut();
            for (k, v) in info.headers(self.dialect, now) {
                if let (Ok(k), Ok(v)) = (
                    axum::http::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    h.insert(k, v);
                }
            }
        }
    }

    fn server_timing(&self) -> String {
        let total = self.t0.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut s = String::with_capacity(48);
        if let Some(up) = self.upstream_wait {
            s.push_str("upstream;dur=");
            crate::util::fmt::push_fixed(&mut s, ms(up), 3);
            s.push_str(", ");
        }
        s.push_str("proxy;dur=");
        crate::util::fmt::push_fixed(
            &mut s,
            ms(total.saturating_sub(self.upstream_wait.unwrap_or_default())),
            3,
        );
        s
    }
}

/// The client's `x-request-id` when it is reasonable, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers
        .get(names::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_graphic())
    {
        return v.to_owned();
    }
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random);
    let mut id = String::with_capacity(24);
    id.push_str("req_");
    push_hex(&mut id, u64::from(prefix), 8);
    push_hex(&mut id, COUNTER.fetch_add(1, Ordering::Relaxed), 12);
    id
}

/// Appends the low `digits` hex digits of `v`, zero-padded (`{v:0digits$x}` for values that fit).
fn push_hex(out: &mut String, v: u64, digits: u32) {
    for i in (0..digits).rev() {
        let nibble = (v >> (i * 4)) & 0xf;
        out.push(char::from(b"0123456789abcdef"[nibble as usize]));
    }
}
