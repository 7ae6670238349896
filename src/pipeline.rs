//! The request flow, top to bottom, in one place:
//!
//! ```text
//! access check → read body → credentials → prepare (mode policy, conversion)
//!   → upstream send (one request; one retry after a forced OAuth refresh)
//!   → response: relay bytes | convert JSON | convert stream
//! error at any phase → rendered once, in the client's dialect
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::claude_code;
use crate::convert;
use crate::credentials::AccessToken;
use crate::error::{Dialect, ErrorKind, ErrorSource, ProxyError};
use crate::observability::tap::Tap;
use crate::observability::{InFlight, MeteredBody};
use crate::server::AppState;
use crate::upstream::{self, StreamLimits, StreamNext, StreamWatch, UpstreamAuth};

/// The three ways ccproxy relays a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Claude Code shaping; OAuth subscription or API key.
    Full,
    /// Only what the upstream needs; API key.
    Minimal,
    /// Bytes in, bytes out; API key.
    Passthrough,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Minimal => "minimal",
            Mode::Passthrough => "passthrough",
        }
    }
}

/// Which endpoint the client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Messages,
    CountTokens,
    Models,
    ChatCompletions,
    OpenAiModels,
    /// Any other `/v1/*` path (passthrough only).
    Relay,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Messages => "messages",
            Route::CountTokens => "count_tokens",
            Route::Models => "models",
            Route::ChatCompletions => "chat_completions",
            Route::OpenAiModels => "openai_models",
            Route::Relay => "relay",
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Route::ChatCompletions | Route::OpenAiModels => Dialect::OpenAi,
            _ => Dialect::Anthropic,
        }
    }
}

/// Per-request context carried through the phases.
pub struct RequestCtx {
    pub mode: Mode,
    pub route: Route,
    pub dialect: Dialect,
    pub t0: Instant,
}

/// Where the upstream credential of a request came from (for logs and /health).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    ServerOAuth,
    Client,
    ServerApiKey,
}

impl CredentialSource {
    pub fn name(self) -> &'static str {
        match self {
            CredentialSource::ServerOAuth => "server_oauth",
            CredentialSource::Client => "client",
            CredentialSource::ServerApiKey => "server_api_key",
        }
    }
}

/// The entry point for every proxied route.
pub async fn handle(state: Arc<AppState>, mode: Mode, route: Route, req: Request) -> Response {
    let ctx = RequestCtx {
        mode,
        route,
        dialect: route.dialect(),
        t0: Instant::now(),
    };
    let request_id = request_id(req.headers());
    let mut flight = Some(InFlight::new(
        state.observer.clone(),
        request_id.clone(),
        mode.name(),
        ctx.dialect.name(),
        route.name(),
    ));
    let mut head = HeadTiming::default();
    // When the shutdown grace period ends, a request still waiting for the
    // upstream gets a clean 503 rather than a closed connection.
    let mut shutdown = state.stream_limits.shutdown.clone();
    let ended = async move {
        if shutdown.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        biased;
        r = run(&state, &ctx, req, &mut flight, &mut head) => r,
        () = ended => {
            let mut e = ProxyError::new(
                ErrorKind::Overloaded,
                ErrorSource::Internal,
                "ccproxy is shutting down; retry the request",
            );
            e.retry_after = Some(1);
            Err(e)
        }
    };
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(f) = flight.as_mut() {
                f.record.status = e.kind.status().as_u16();
                f.record.error = Some(e.message.clone());
                f.completed = true;
            }
            e.into_response(ctx.dialect)
        }
    };
    if let Some(f) = flight.as_mut() {
        f.record.status = resp.status().as_u16();
        f.record.proxy_ms = f.proxy_ms();
    }
    // Whatever was not handed to a streaming body finishes here.
    drop(flight);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    let total = ctx.t0.elapsed();
    let timing = match head.upstream {
        Some(up) => format!(
            "upstream;dur={:.3}, proxy;dur={:.3}",
            up.as_secs_f64() * 1000.0,
            total.saturating_sub(up).as_secs_f64() * 1000.0
        ),
        None => format!("proxy;dur={:.3}", total.as_secs_f64() * 1000.0),
    };
    if let Ok(v) = HeaderValue::from_str(&timing) {
        h.insert("server-timing", v);
    }
    resp
}

/// When the upstream answered with its head, relative to the request's start.
#[derive(Default)]
struct HeadTiming {
    /// Time spent waiting for the upstream's response head.
    upstream: Option<Duration>,
}

/// The client's `x-request-id` when it is reasonable, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) {
            return v.to_owned();
        }
    }
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random);
    format!(
        "req_{prefix:08x}{:012x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn run(
    state: &AppState,
    ctx: &RequestCtx,
    req: Request,
    flight: &mut Option<InFlight>,
    head: &mut HeadTiming,
) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();

    // 1. Access: the proxy token, when one is configured.
    let client_token = check_access(state, &parts.headers)?;

    // 2. Body, within the configured limit.
    let body = read_body(body, &parts.headers, state.settings.limits.max_body_bytes).await?;

    // 3. Credentials for the upstream.
    let (auth, source, oauth_token) = resolve_credential(state, ctx.mode, client_token).await?;

    // 4. Prepare the upstream request by mode and route.
    let prepared = prepare(state, ctx, &parts.method, parts.uri.path(), body)?;
    if let Some(f) = flight.as_mut() {
        f.record.credential = Some(source.name().to_owned());
        f.record.model = prepared.model.clone();
        f.record.stream = prepared.stream;
    }
    let query = if prepared.keep_query {
        parts.uri.query()
    } else {
        None
    };
    let has_body = !prepared.body.is_empty();
    let headers_for = |auth: &UpstreamAuth| {
        upstream::request_headers(
            ctx.mode,
            &parts.headers,
            auth,
            has_body,
            &state.settings.upstream.cli_version,
        )
    };
    let headers = headers_for(&auth);

    // 5. Send: one upstream request; after a 401 with the server's OAuth token,
    //    one forced refresh and one retry.
    let path = prepared.path.as_str();
    let sent = Instant::now();
    // Non-stream answers must be complete by then (streams have their idle timeout).
    let deadline = tokio::time::Instant::from_std(sent) + state.settings.upstream.timeout;
    let mut attempt = 0;
    let mut pending_headers = Some(headers);
    let mut resp = loop {
        // Clone the headers only while another attempt may follow.
        let headers = if attempt < state.settings.retries.max_retries {
            pending_headers.clone().unwrap_or_default()
        } else {
            pending_headers.take().unwrap_or_default()
        };
        let result = state
            .upstream
            .send(
                prepared.method.clone(),
                path,
                query,
                headers,
                prepared.body.clone(),
            )
            .await;
        match retry_delay(&state.settings, attempt, &result) {
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
    if resp.status() == StatusCode::UNAUTHORIZED {
        if let (Some(used), Some(mgr)) = (oauth_token.as_ref(), state.oauth.as_ref()) {
            match mgr.force_refresh(used).await {
                Ok(fresh) => {
                    tracing::info!(
                        "upstream rejected the OAuth token; retrying once with a refreshed one"
                    );
                    let headers = headers_for(&UpstreamAuth::OAuth(fresh.secret().to_owned()));
                    resp = state
                        .upstream
                        .send(prepared.method, path, query, headers, prepared.body)
                        .await?;
                }
                Err(e) => tracing::warn!(error = %e, "forced OAuth refresh failed"),
            }
        }
    }
    let waited = sent.elapsed();
    head.upstream = Some(waited);
    if let Some(f) = flight.as_mut() {
        f.upstream_head = Some(waited);
        f.record.upstream_status = Some(resp.status().as_u16());
        f.record.status = resp.status().as_u16();
        f.upstream_request_id = resp
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }

    // 6. Respond.
    match prepared.conversion {
        Conversion::None if !is_event_stream(resp.headers()) => {
            // Non-stream answers are read whole first (they are small): a
            // connection that breaks mid-body becomes a 502, not a truncated 200.
            let status = resp.status();
            let mut headers = upstream::response_headers(ctx.mode, resp.headers(), false);
            let body = read_upstream_body(resp, deadline).await?;
            let waited = sent.elapsed();
            head.upstream = Some(waited);
            if let Some(f) = flight.as_mut() {
                f.upstream_head = Some(waited);
                let mut tap = prepared.tap.tap(false);
                f.observe(&mut tap, &body);
                f.end(&mut tap);
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            let mut out = Response::new(Body::from(body));
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        }
        Conversion::None => Ok(relay(
            ctx.mode,
            resp,
            prepared.tap,
            flight,
            state.stream_limits.clone(),
        )),
        Conversion::Chat(chat) => {
            Ok(
                convert_chat_response(resp, chat, flight, state.stream_limits.clone(), deadline)
                    .await,
            )
        }
        Conversion::Models => {
            if let Some(f) = flight.as_mut() {
                f.completed = true;
            }
            Ok(convert_models_response(state, resp, deadline).await)
        }
    }
}

/// Whether (and after how long) to retry an upstream attempt. Only before any
/// byte went to the client: connection failures, 529, and 429 when enabled;
/// never other statuses. Honours `retry-after` up to the configured maximum.
fn retry_delay(
    settings: &crate::config::Settings,
    attempt: u32,
    result: &Result<reqwest::Response, ProxyError>,
) -> Option<Duration> {
    if attempt >= settings.retries.max_retries {
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

/// Checks the proxy token. Returns the client's own credential candidate
/// (its x-api-key or bearer value) when the proxy is open.
fn check_access(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ProxyError> {
    let presented = presented_token(headers);
    match state.auth_token_digest {
        None => Ok(presented.map(str::to_owned)),
        Some(expected) if token_matches(presented, &expected) => Ok(None),
        Some(_) => Err(ProxyError::auth(
            "invalid or missing proxy token: send the token ccproxy was started with as x-api-key or Authorization: Bearer",
        )),
    }
}

/// Compares a presented token with the configured one in constant time: both
/// are hashed first, so neither the content nor the length leaks through timing.
pub fn token_matches(presented: Option<&str>, expected_digest: &[u8; 32]) -> bool {
    presented.is_some_and(|p| {
        let got: [u8; 32] = Sha256::digest(p.as_bytes()).into();
        bool::from(got.ct_eq(expected_digest))
    })
}

/// The token a client presented: `x-api-key`, else `Authorization: Bearer`.
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
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

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ProxyError> {
    let too_large = || {
        ProxyError::new(
            ErrorKind::TooLarge,
            ErrorSource::Downstream,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return too_large();
            }
            src = s.source();
        }
        ProxyError::invalid(format!("could not read the request body: {e}"))
    })
}

/// Chooses the upstream credential (see README "Credentials").
async fn resolve_credential(
    state: &AppState,
    mode: Mode,
    client_token: Option<String>,
) -> Result<(UpstreamAuth, CredentialSource, Option<AccessToken>), ProxyError> {
    // Only real Anthropic credentials from clients count; placeholders never go upstream.
    let client = client_token.and_then(|t| {
        if t.starts_with("sk-ant-oat") {
            Some(UpstreamAuth::OAuth(t))
        } else if t.starts_with("sk-ant-") {
            Some(UpstreamAuth::ApiKey(t))
        } else {
            None
        }
    });
    let server_key = || {
        state
            .settings
            .credentials
            .api_key
            .as_ref()
            .map(|k| UpstreamAuth::ApiKey(k.expose().to_owned()))
    };
    match mode {
        Mode::Full => {
            let mut oauth_failure = None;
            if let Some(mgr) = &state.oauth {
                match mgr.access_token().await {
                    Ok(tok) => {
                        let auth = UpstreamAuth::OAuth(tok.secret().to_owned());
                        return Ok((auth, CredentialSource::ServerOAuth, Some(tok)));
                    }
                    Err(e) => oauth_failure = Some(e.to_string()),
                }
            }
            if let Some(c) = client {
                return Ok((c, CredentialSource::Client, None));
            }
            if let Some(k) = server_key() {
                return Ok((k, CredentialSource::ServerApiKey, None));
            }
            Err(ProxyError::auth(match oauth_failure {
                Some(why) => format!("Claude subscription credentials are not usable: {why}"),
                None => "no credentials: log in with `ccproxy auth login` (or Claude Code's `claude`), \
                         set ANTHROPIC_API_KEY for the server, or send an Anthropic API key (sk-ant-api…) \
                         as x-api-key"
                    .to_owned(),
            }))
        }
        Mode::Minimal | Mode::Passthrough => match client {
            Some(k @ UpstreamAuth::ApiKey(_)) => Ok((k, CredentialSource::Client, None)),
            _ => match server_key() {
                Some(k) => Ok((k, CredentialSource::ServerApiKey, None)),
                None => Err(ProxyError::auth(format!(
                    "{} mode needs an Anthropic API key: send one (sk-ant-api…) as x-api-key or \
                     Authorization: Bearer, or set ANTHROPIC_API_KEY for the server. Claude \
                     subscription (OAuth) credentials work only in full mode (/v1 or /full/v1).",
                    mode.name()
                ))),
            },
        },
    }
}

/// What to do with the upstream's answer.
enum Conversion {
    None,
    Chat(ChatInfo),
    Models,
}

struct ChatInfo {
    client_model: String,
    include_usage: bool,
    legacy_functions: bool,
}

/// Which usage tap reads the relayed body.
#[derive(Clone, Copy)]
enum Meter {
    None,
    Anthropic,
    OpenAi,
}

impl Meter {
    fn tap(self, is_sse: bool) -> Tap {
        match self {
            Meter::None => Tap::None,
            Meter::Anthropic => Tap::anthropic(is_sse),
            Meter::OpenAi => Tap::openai(is_sse),
        }
    }
}

struct Prepared {
    /// The model the request names (when it was read), for usage records.
    model: Option<String>,
    stream: bool,
    tap: Meter,
    method: Method,
    /// Upstream path.
    path: String,
    keep_query: bool,
    body: Bytes,
    conversion: Conversion,
}

fn prepare(
    state: &AppState,
    ctx: &RequestCtx,
    method: &Method,
    client_path: &str,
    body: Bytes,
) -> Result<Prepared, ProxyError> {
    let upstream_path = |p: &str| p.to_owned();
    let plain = |path: String, body: Bytes, tap: Meter| Prepared {
        model: None,
        stream: false,
        tap,
        method: method.clone(),
        path,
        keep_query: true,
        body,
        conversion: Conversion::None,
    };
    Ok(match (ctx.route, ctx.mode) {
        (Route::Messages | Route::CountTokens, mode) => {
            let path = if ctx.route == Route::Messages {
                "/v1/messages"
            } else {
                "/v1/messages/count_tokens"
            };
            let tap = if ctx.route == Route::Messages {
                Meter::Anthropic
            } else {
                Meter::None
            };
            match mode {
                Mode::Full => {
                    let (shaped, info) = claude_code::shape_request(&body).map_err(shape_error)?;
                    let mut p = plain(upstream_path(path), Bytes::from(shaped), tap);
                    p.model = info.model;
                    p.stream = info.stream;
                    p
                }
                Mode::Minimal => {
                    let head = read_head(&body)?;
                    let mut p = plain(upstream_path(path), body, tap);
                    p.model = head.model;
                    p.stream = head.stream.unwrap_or(false);
                    p
                }
                Mode::Passthrough => plain(upstream_path(path), body, tap),
            }
        }
        (Route::Models, _) => plain(upstream_path("/v1/models"), Bytes::new(), Meter::None),
        (Route::Relay, _) => {
            // Passthrough of any other /v1/* path: strip the mode prefix.
            let path = client_path.strip_prefix("/pt").unwrap_or(client_path);
            plain(upstream_path(path), body, Meter::None)
        }
        (Route::ChatCompletions, Mode::Passthrough) => {
            plain(upstream_path("/v1/chat/completions"), body, Meter::OpenAi)
        }
        (Route::OpenAiModels, Mode::Passthrough) => {
            plain(upstream_path("/v1/models"), Bytes::new(), Meter::None)
        }
        (Route::ChatCompletions, mode) => {
            let opts = convert::request::ConvertOptions {
                default_max_tokens: state.settings.upstream.default_max_tokens,
                aliases: &state.aliases,
            };
            let converted = convert::request::chat_to_messages(&body, &opts).map_err(|e| {
                let mut pe = ProxyError::invalid(e.message.clone());
                pe.param = e.param.clone();
                pe.code = e.code;
                pe
            })?;
            let out = if mode == Mode::Full {
                let (shaped, _) =
                    claude_code::shape_request(&converted.body).map_err(shape_error)?;
                Bytes::from(shaped)
            } else {
                Bytes::from(converted.body)
            };
            Prepared {
                model: Some(converted.upstream_model),
                stream: converted.stream,
                tap: Meter::Anthropic,
                method: Method::POST,
                path: upstream_path("/v1/messages"),
                keep_query: false,
                body: out,
                conversion: Conversion::Chat(ChatInfo {
                    client_model: converted.client_model,
                    include_usage: converted.include_usage,
                    legacy_functions: converted.legacy_functions,
                }),
            }
        }
        (Route::OpenAiModels, _) => Prepared {
            model: None,
            stream: false,
            tap: Meter::None,
            method: Method::GET,
            path: upstream_path("/v1/models"),
            keep_query: false,
            body: Bytes::new(),
            conversion: Conversion::Models,
        },
    })
}

fn shape_error(e: claude_code::ShapeError) -> ProxyError {
    ProxyError::invalid(e.to_string())
}

/// The few top-level fields minimal mode reads (the rest is validated and skipped).
#[derive(serde::Deserialize)]
struct RequestHead {
    model: Option<String>,
    stream: Option<bool>,
}

fn read_head(body: &[u8]) -> Result<RequestHead, ProxyError> {
    match serde_json::from_slice::<RequestHead>(body) {
        Ok(h) => Ok(h),
        // Valid JSON that is not an object of this shape: the upstream judges it.
        Err(e) if e.is_data() => Ok(RequestHead {
            model: None,
            stream: None,
        }),
        Err(e) => Err(ProxyError::invalid(format!("invalid JSON body: {e}"))),
    }
}

/// Relays an upstream event stream: status, the headers the mode keeps, and the
/// events as they arrive (never buffered whole), through a usage tap.
fn relay(
    mode: Mode,
    resp: reqwest::Response,
    meter: Meter,
    flight: &mut Option<InFlight>,
    limits: StreamLimits,
) -> Response {
    let status = resp.status();
    let headers = upstream::response_headers(mode, resp.headers(), false);
    let body = match flight.take() {
        Some(mut f) => {
            f.begin_stream();
            f.record.stream = true;
            f.record.status = status.as_u16();
            f.record.proxy_ms = f.proxy_ms();
            Body::from_stream(MeteredBody::new(
                Box::pin(sse_relay(resp, limits)),
                meter.tap(true),
                f,
            ))
        }
        None => Body::from_stream(sse_relay(resp, limits)),
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

fn is_event_stream(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// An SSE body relayed as is; if the upstream breaks, goes silent, or the server
/// is ending its streams, the client gets an Anthropic `error` event instead of a
/// silently cut stream.
fn sse_relay(
    resp: reqwest::Response,
    limits: StreamLimits,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let upstream = resp.bytes_stream();
    futures_util::stream::unfold(Some((upstream, limits.watch())), |st| async move {
        let (mut up, mut watch) = st?;
        match watch.next(&mut up).await {
            StreamNext::Chunk(chunk) => Some((Ok(chunk), Some((up, watch)))),
            StreamNext::Broken(why) => {
                tracing::warn!(reason = %why, "stream ended early");
                let frame = format!(
                    "event: error\ndata: {}\n\n",
                    serde_json::json!({"type":"error","error":{"type":"api_error","message": why}})
                );
                Some((Ok(Bytes::from(frame)), None))
            }
            StreamNext::End => None,
        }
    })
}

/// Reads a whole (non-streaming) upstream body. A connection that breaks
/// before the end is a 502 (a timeout, 504).
async fn read_upstream_body(
    resp: reqwest::Response,
    deadline: tokio::time::Instant,
) -> Result<Bytes, ProxyError> {
    let Ok(read) = tokio::time::timeout_at(deadline, resp.bytes()).await else {
        return Err(ProxyError::new(
            ErrorKind::GatewayTimeout,
            ErrorSource::Upstream,
            "the upstream did not finish its response in time (upstream_timeout_secs)",
        ));
    };
    read.map_err(|e| {
        let mut err = upstream::map_send_error(&e);
        if err.kind == ErrorKind::BadGateway {
            err.message = format!(
                "the upstream connection broke before the end of its response: {}",
                err.message.trim_start_matches("upstream unreachable: ")
            );
        }
        err
    })
}

fn json_response(status: StatusCode, upstream_headers: &HeaderMap, body: Vec<u8>) -> Response {
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    let h = out.headers_mut();
    for name in ["request-id", "retry-after"] {
        if let Some(v) = upstream_headers.get(name) {
            h.insert(name, v.clone());
        }
    }
    for (k, v) in upstream_headers {
        if k.as_str().starts_with("anthropic-ratelimit-") {
            h.append(k.clone(), v.clone());
        }
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}

async fn convert_chat_response(
    resp: reqwest::Response,
    chat: ChatInfo,
    flight: &mut Option<InFlight>,
    limits: StreamLimits,
    deadline: tokio::time::Instant,
) -> Response {
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    if !status.is_success() {
        return match read_upstream_body(resp, deadline).await {
            Ok(body) => {
                if let Some(f) = flight.as_mut() {
                    f.completed = true;
                }
                let (code, body) = convert::response::error_to_openai(status.as_u16(), &body);
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                json_response(code, &upstream_headers, body)
            }
            Err(e) => e.into_response(Dialect::OpenAi),
        };
    }
    let created = crate::util::time::now_secs();
    if is_event_stream(&upstream_headers) {
        let conv = convert::stream::ChatStreamConverter::new(
            chat.client_model,
            chat.include_usage,
            created,
        )
        .legacy_functions(chat.legacy_functions);
        let mut f = flight.take();
        if let Some(f) = f.as_mut() {
            f.begin_stream();
            f.record.stream = true;
            f.record.status = status.as_u16();
            f.record.proxy_ms = f.proxy_ms();
        }
        let body = Body::from_stream(chat_stream(resp, conv, f, limits));
        let mut out = Response::new(body);
        let h = out.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if let Some(v) = upstream_headers.get("request-id") {
            h.insert("request-id", v.clone());
        }
        return out;
    }
    match read_upstream_body(resp, deadline).await {
        Ok(body) => {
            if let Some(f) = flight.as_mut() {
                let mut tap = Tap::anthropic(false);
                f.observe(&mut tap, &body);
                f.end(&mut tap);
            }
            match convert::response::messages_to_chat_with(
                &body,
                &chat.client_model,
                created,
                chat.legacy_functions,
            ) {
                Ok(json) => json_response(status, &upstream_headers, json),
                Err(e) => ProxyError::new(
                    ErrorKind::BadGateway,
                    ErrorSource::Upstream,
                    format!("upstream sent a response that is not a valid message: {e}"),
                )
                .into_response(Dialect::OpenAi),
            }
        }
        Err(e) => e.into_response(Dialect::OpenAi),
    }
}

struct ChatStreamState<S> {
    upstream: S,
    watch: StreamWatch,
    parser: convert::SseParser,
    conv: convert::stream::ChatStreamConverter,
    flight: Option<InFlight>,
    done: bool,
}

/// Converts the upstream Anthropic SSE into OpenAI chunks as events arrive.
fn chat_stream(
    resp: reqwest::Response,
    conv: convert::stream::ChatStreamConverter,
    flight: Option<InFlight>,
    limits: StreamLimits,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let st = ChatStreamState {
        upstream: resp.bytes_stream(),
        watch: limits.watch(),
        parser: convert::SseParser::new(),
        conv,
        flight,
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let mut out = Vec::new();
            match st.watch.next(&mut st.upstream).await {
                StreamNext::Chunk(chunk) => {
                    let conv = &mut st.conv;
                    let mut metered = st.flight.as_mut().map(|f| &mut f.metered);
                    st.parser.push(&chunk, |event, data| {
                        if let Some(m) = metered.as_deref_mut() {
                            crate::observability::tap::on_anthropic_event(event, data, m);
                        }
                        conv.on_event(event, data, &mut out)
                    });
                    if let Some(f) = st.flight.as_mut() {
                        f.note_content();
                    }
                    if conv.is_done() {
                        st.done = true;
                        if let Some(f) = st.flight.as_mut() {
                            f.completed = true;
                        }
                        st.flight = None;
                    }
                }
                StreamNext::Broken(message) => {
                    tracing::warn!(reason = %message, "stream ended early");
                    if let Some(f) = st.flight.as_mut() {
                        f.record.error = Some(message.clone());
                        f.completed = true;
                    }
                    st.conv.fail(&message, &mut out);
                    st.done = true;
                    st.flight = None;
                }
                StreamNext::End => {
                    st.conv.finish(&mut out);
                    st.done = true;
                    if let Some(f) = st.flight.as_mut() {
                        f.completed = true;
                    }
                    st.flight = None;
                }
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), st));
            }
        }
    })
}

/// `/openai/v1/models` in full and minimal modes: the upstream's models in
/// OpenAI's list shape, plus the configured aliases.
async fn convert_models_response(
    state: &AppState,
    resp: reqwest::Response,
    deadline: tokio::time::Instant,
) -> Response {
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    let body = match read_upstream_body(resp, deadline).await {
        Ok(b) => b,
        Err(e) => return e.into_response(Dialect::OpenAi),
    };
    if !status.is_success() {
        let (code, body) = convert::response::error_to_openai(status.as_u16(), &body);
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        return json_response(code, &upstream_headers, body);
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut data: Vec<serde_json::Value> = Vec::new();
    let created = crate::util::time::now_secs();
    if let Some(items) = v["data"].as_array() {
        for m in items {
            if let Some(id) = m["id"].as_str() {
                let created = m["created_at"]
                    .as_str()
                    .and_then(parse_rfc3339_seconds)
                    .unwrap_or(created);
                data.push(serde_json::json!({"id": id, "object": "model", "created": created, "owned_by": "anthropic"}));
            }
        }
    }
    for (alias, target) in state.aliases.list() {
        data.push(
            serde_json::json!({"id": alias, "object": "model", "created": created,
            "owned_by": "ccproxy", "root": target}),
        );
    }
    let out = serde_json::json!({"object": "list", "data": data});
    json_response(
        StatusCode::OK,
        &upstream_headers,
        out.to_string().into_bytes(),
    )
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2025-09-29T00:00:00Z`,
/// fractions and offsets ignored beyond the seconds).
fn parse_rfc3339_seconds(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = crate::util::time::days_from_civil(y, mo, d);
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(
            parse_rfc3339_seconds("2025-09-29T00:00:00Z"),
            Some(1_759_104_000)
        );
        assert_eq!(parse_rfc3339_seconds("1970-01-01T00:00:01Z"), Some(1));
        assert_eq!(
            parse_rfc3339_seconds("2024-02-29T12:30:00.5Z"),
            Some(1_709_209_800)
        );
        assert_eq!(parse_rfc3339_seconds("nope"), None);
    }
}
