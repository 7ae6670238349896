//! The simulated Anthropic upstream: an in-process imitation of the Messages API
//! (JSON and SSE with the real event order and usage), count_tokens, models, and
//! the OAuth token endpoint with rotating tokens.
//!
//! It enforces what the real service enforces and the tests rely on: a key or
//! token is required; an OAuth token needs the `oauth-2025-04-20` beta and the
//! Claude Code identity block; at most 4 `cache_control` blocks; every `tool_use` is answered by a
//! `tool_result` in the next turn, and every `tool_result` answers a `tool_use` of the turn before;
//! `output_config.format` must have the structured-outputs shape, and then the answer's text is
//! JSON fitting its schema (see [`structured`]).
//!
//! Beside messages: a prompt cache per account (breakpoints, automatic caching, 5-minute and
//! 1-hour entries: [`cache`]), the Models API (paged, with limits and capabilities), Files
//! ([`files`]), Message Batches ([`batches`]) and Skills ([`skills`]).
//!
//! Scenarios are chosen by markers in the last user message's text:
//!
//! | marker | effect |
//! |---|---|
//! | `[sim:agent]` (in any user turn) | a coding agent's task, one step per request, with the request's own tools: a shell command, then an `apply_patch` creating a file, then a final answer quoting the results (see [`agent`]) |
//! | `[sim:tools]` | calls to the first two tools the request declares, in parallel (JSON arguments that fit each tool's schema, split mid-token when streamed); `tool_choice` is honoured with or without the marker (see [`tools`]) |
//! | `[sim:thinking]` | a thinking block with a signature before the text |
//! | `[sim:status=NNN]` | an error response with that status and the real error type |
//! | `[sim:error-midstream]` | HTTP 200 stream that breaks with an `overloaded_error` event |
//! | `[sim:delay=MS]` | wait before sending response headers |
//! | `[sim:gap=MS]` | wait between stream events |
//! | `[sim:deltas=N]` | N text deltas |
//! | `[sim:cache]` | fixed cache read/write usage (instead of the prompt cache's) |
//! | `[sim:search]` | a web search and a cited answer first, when the web search tool is offered (see [`search`]) |
//! | `[sim:stop=REASON]` | that stop_reason (e.g. max_tokens, refusal) |
//! | `[sim:unknown-event]` | an event type the client has never seen, mid-stream |
//! | `[sim:no-stop]` | the stream ends without `message_stop` |
//! | `[sim:flaky=N:STATUS]` | the first N requests with this text get STATUS (`retry-after: 0`) |
//! | `[sim:reset-midstream]` | the connection is aborted mid-body (stream: after the first text delta; JSON: after half the announced bytes) |
//! | `[sim:silent=MS]` | nothing is sent for MS ms in the middle of the body, then it goes on |
//! | `[sim:malformed-sse]` | a broken SSE frame (a line that is no field, an event without data) mid-stream |
//! | `[sim:bad-json-event]` | a `content_block_delta` event whose data is invalid JSON, mid-stream |
//! | `[sim:endless]` | text deltas forever after the first one (one per `[sim:gap=MS]`) |
//! | `[sim:delta-size=N]` | every text delta carries N bytes of text |
//!
//! The fault markers (the last six) apply to `/v1/messages`; see [`faults`].

pub mod accounts;
pub mod agent;
pub mod batches;
pub mod cache;
pub mod faults;
pub mod files;
pub mod generate;
#[cfg(test)]
mod http_tests;
mod model_info;
mod openai;
pub mod search;
pub mod skills;
pub mod structured;
pub mod tools;

pub use accounts::{Account, UnifiedScript};

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::claude_code::{BETA_OAUTH, IDENTITY};
use generate::{Directives, SimRequest};

/// Identity lines the real service accepts for OAuth requests.
const ACCEPTED_IDENTITIES: &[&str] = &[
    IDENTITY,
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
    "You are Claude Code, Anthropic's official CLI for Claude, running within the Claude Agent SDK.",
];

/// One request as the simulated upstream received it.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    #[serde(serialize_with = "ser_body")]
    pub body: Bytes,
}

fn ser_body<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Shared state of a simulated upstream, also the tests' handle on it.
#[derive(Default)]
pub struct SimState {
    counter: AtomicU64,
    record: bool,
    recorded: Mutex<VecDeque<RecordedRequest>>,
    /// Refresh tokens already used (rotation: each works once).
    used_refresh: Mutex<HashSet<String>>,
    /// Access tokens the service no longer accepts.
    revoked: Mutex<HashSet<String>>,
    /// Milliseconds the token endpoint waits before answering.
    pub token_delay_ms: AtomicU64,
    /// Token endpoint calls so far.
    pub token_calls: AtomicU64,
    /// Seconds of validity of issued access tokens.
    pub token_expires_in: AtomicU64,
    /// Streams whose client went away before the end.
    pub streams_cancelled: AtomicU64,
    pub streams_completed: AtomicU64,
    /// Bytes that fault-mode bodies (see [`faults`]) have handed to the connection.
    pub stream_bytes_sent: AtomicU64,
    /// Requests whose client went away while the response head was delayed.
    pub requests_cancelled: AtomicU64,
    /// Failures served so far per `[sim:flaky]` request text.
    flaky: Mutex<std::collections::HashMap<String, u32>>,
    /// Scripted per-credential states (see [`accounts`]).
    accounts: Mutex<std::collections::HashMap<String, Account>>,
    /// The Files API's files (see [`files`]).
    pub files: files::Files,
    /// Message batches (see [`batches`]).
    pub batches: batches::Batches,
    /// Skills (see [`skills`]).
    pub skills: skills::Skills,
    /// The prompt cache (see [`cache`]).
    pub prompt_cache: cache::PromptCache,
    /// When not 0, `GET /v1/models` answers this status (an outage of the Models API).
    pub models_status: std::sync::atomic::AtomicU16,
}

const RECORD_LIMIT: usize = 256;

impl SimState {
    pub fn new(record: bool) -> Self {
        SimState {
            record,
            token_expires_in: AtomicU64::new(28_800),
            ..SimState::default()
        }
    }

    /// Requests received so far (oldest first), when recording is on.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.recorded
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.recorded.lock().ok().and_then(|r| r.back().cloned())
    }

    pub fn clear_requests(&self) {
        if let Ok(mut r) = self.recorded.lock() {
            r.clear();
        }
    }

    /// Makes the service reject this access token with 401 from now on.
    pub fn revoke(&self, access_token: &str) {
        if let Ok(mut r) = self.revoked.lock() {
            r.insert(access_token.to_owned());
        }
    }

    fn next_id(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, req: RecordedRequest) {
        if let Ok(mut r) = self.recorded.lock() {
            if r.len() == RECORD_LIMIT {
                r.pop_front();
            }
            r.push_back(req);
        }
    }
}

/// A running simulated upstream.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How many streams one HTTP/2 connection to the sim may carry at once, by default: like a real
/// server, which advertises a limit in `SETTINGS_MAX_CONCURRENT_STREAMS` (RFC 9113 recommends no
/// fewer than 100; hyper's default is 200), so that a client that puts every request on one
/// connection meets the queueing it would meet upstream.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;

/// Starts a simulated upstream on `addr` (use port 0 for a free port).
pub async fn start(addr: SocketAddr, record: bool) -> std::io::Result<SimHandle> {
    start_with(addr, record, Some(DEFAULT_H2_MAX_STREAMS)).await
}

/// [`start`], with a limit on the concurrent streams of one HTTP/2 connection (`None`: none).
pub async fn start_with(
    addr: SocketAddr,
    record: bool,
    h2_max_streams: Option<u32>,
) -> std::io::Result<SimHandle> {
    let listener = crate::util::net::listen(&addr.ip().to_string(), addr.port()).await?;
    serve_on(listener, record, h2_max_streams)
}

pub fn start_on(listener: TcpListener, record: bool) -> std::io::Result<SimHandle> {
    serve_on(listener, record, Some(DEFAULT_H2_MAX_STREAMS))
}

fn serve_on(
    listener: TcpListener,
    record: bool,
    h2_max_streams: Option<u32>,
) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let state = Arc::new(SimState::new(record));
    let app = router(state.clone());
    let task = tokio::spawn(serve(listener, app, h2_max_streams));
    Ok(SimHandle { addr, state, task })
}

/// Serves HTTP/1.1 and HTTP/2 (h2c with prior knowledge), at most `h2_max_streams` concurrent
/// streams on one HTTP/2 connection.
async fn serve(listener: TcpListener, app: Router, h2_max_streams: Option<u32>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(h2_max_streams);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors, say: give open connections a moment.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            |req: axum::http::Request<hyper::body::Incoming>| req.map(Body::new),
        ));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route("/v1/oauth/token", post(oauth_token))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models/{id}", get(model_info::retrieve))
        .route(
            "/v1/files",
            get(files::list)
                .post(files::upload)
                .fallback(files::method_not_allowed),
        )
        .route(
            "/v1/files/{id}",
            get(files::one)
                .delete(files::one)
                .fallback(files::method_not_allowed),
        )
        .route(
            "/v1/skills",
            get(skills::list)
                .post(skills::create)
                .fallback(files::method_not_allowed),
        )
        .route(
            "/v1/skills/{id}",
            get(skills::one)
                .delete(skills::one)
                .fallback(files::method_not_allowed),
        )
        .route(
            "/v1/files/{id}/content",
            get(files::content).fallback(files::method_not_allowed),
        )
        .route(
            "/v1/messages/batches",
            get(batches::list)
                .post(batches::create)
                .fallback(files::method_not_allowed),
        )
        .route(
            "/v1/messages/batches/{id}",
            get(batches::one)
                .delete(batches::one)
                .fallback(files::method_not_allowed),
        )
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(batches::cancel).fallback(files::method_not_allowed),
        )
        .route(
            "/v1/messages/batches/{id}/results",
            get(batches::results).fallback(files::method_not_allowed),
        )
        .route("/_sim/requests", get(recorded))
        .route("/_sim/accounts", post(accounts::set))
        .fallback(not_found)
        .with_state(state)
}

pub fn error_type_for(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An Anthropic error response, as the real service shapes it.
pub fn error_response(status: u16, message: &str) -> Response {
    let body = serde_json::json!({
        "type": "error",
        "error": {"type": error_type_for(status), "message": message},
        "request_id": "req_sim_error",
    });
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    resp.headers_mut()
        .insert("request-id", HeaderValue::from_static("req_sim_error"));
    if status == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        resp.headers_mut().insert(
            "anthropic-ratelimit-requests-remaining",
            HeaderValue::from_static("0"),
        );
    }
    if status == 529 || status >= 500 {
        resp.headers_mut()
            .insert("x-should-retry", HeaderValue::from_static("true"));
    }
    resp
}

async fn not_found(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    record_request(&state, &parts.method, &parts.uri, &parts.headers, &body);
    error_response(404, &format!("Not found: {}", parts.uri.path()))
}

async fn recorded(State(state): State<Arc<SimState>>) -> Response {
    axum::Json(state.requests()).into_response()
}

/// An error the simulated service answers with (rendered by [`error_response`]).
pub struct SimError {
    status: u16,
    message: String,
}

fn sim_err(status: u16, message: &str) -> SimError {
    SimError {
        status,
        message: message.to_owned(),
    }
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        error_response(self.status, &self.message)
    }
}

/// The credential a request presented.
enum Cred {
    ApiKey,
    OAuth,
}

fn check_auth(state: &SimState, headers: &HeaderMap) -> Result<Cred, SimError> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return if key.starts_with("sk-ant-api") {
            Ok(Cred::ApiKey)
        } else {
            Err(sim_err(401, "invalid x-api-key"))
        };
    }
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let token = auth.strip_prefix("Bearer ").unwrap_or("");
        let revoked = state
            .revoked
            .lock()
            .map(|r| r.contains(token))
            .unwrap_or(false);
        if !token.starts_with("sk-ant-oat") || revoked || token.contains("revoked") {
            return Err(sim_err(401, "Invalid bearer token"));
        }
        let beta_ok = headers
            .get_all("anthropic-beta")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == BETA_OAUTH);
        if !beta_ok {
            return Err(sim_err(
                401,
                "OAuth authentication is currently not supported.",
            ));
        }
        return Ok(Cred::OAuth);
    }
    Err(sim_err(401, "x-api-key header is required"))
}

/// A request whose body the service ignores: recorded (without a body), its head returned.
pub(crate) fn bodyless(state: &SimState, req: Request) -> axum::http::request::Parts {
    let (parts, _) = req.into_parts();
    record_request(
        state,
        &parts.method,
        &parts.uri,
        &parts.headers,
        &Bytes::new(),
    );
    parts
}

fn record_request(
    state: &SimState,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &Bytes,
) {
    if !state.record {
        return;
    }
    state.record(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
    });
}

/// The checks every Messages-shaped request goes through, in the service's order.
fn admit<'a>(
    state: &SimState,
    headers: &HeaderMap,
    body: &'a [u8],
    require_max_tokens: bool,
) -> Result<SimRequest<'a>, SimError> {
    let cred = check_auth(state, headers)?;
    if headers.get("anthropic-version").is_none() {
        return Err(sim_err(400, "anthropic-version: header is required"));
    }
    let req: SimRequest = serde_json::from_slice(body).map_err(|e| {
        sim_err(
            400,
            &format!("There was an error parsing the body of your request: {e}"),
        )
    })?;
    if req.model.is_none() {
        return Err(sim_err(400, "model: Field required"));
    }
    if require_max_tokens && req.max_tokens.is_none() {
        return Err(sim_err(400, "max_tokens: Field required"));
    }
    if req.messages.is_none() {
        return Err(sim_err(400, "messages: Field required"));
    }
    if matches!(cred, Cred::OAuth) && !has_identity(req.system) {
        return Err(sim_err(
            400,
            "This credential is only authorized for use with Claude Code and cannot be used for other API requests.",
        ));
    }
    let n = memchr::memmem::find_iter(body, b"\"cache_control\"").count();
    if n > 4 {
        return Err(sim_err(
            400,
            &format!("A maximum of 4 blocks with cache_control may be provided. Found {n}."),
        ));
    }
    generate::offer(&req).map_err(|m| sim_err(400, &m))?;
    structured::format(body).map_err(|m| sim_err(400, &m))?;
    if let Some(messages) = &req.messages {
        check_tool_pairing(messages).map_err(|m| sim_err(400, &m))?;
    }
    Ok(req)
}

/// The ids of the blocks of type `kind` in a content value (`id` of `tool_use`, `tool_use_id`
/// of `tool_result`), and whether it has any `tool_result`.
fn block_ids(content: &serde_json::value::RawValue, kind: &str, key: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(content.get()).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == kind)
        .filter_map(|b| b[key].as_str().map(str::to_owned))
        .collect()
}

/// The service's pairing rule: every `tool_use` of an assistant turn is answered by a
/// `tool_result` in the next (user) turn, and every `tool_result` answers a `tool_use` of the
/// turn before. The messages are the service's.
fn check_tool_pairing(messages: &[generate::SimMessage<'_>]) -> Result<(), String> {
    for (i, m) in messages.iter().enumerate() {
        if m.role == "assistant" && m.content.get().contains("\"tool_use\"") {
            let uses = block_ids(m.content, "tool_use", "id");
            let Some(next) = messages.get(i + 1) else {
                continue;
            };
            let answered = if next.role == "user" {
                block_ids(next.content, "tool_result", "tool_use_id")
            } else {
                Vec::new()
            };
            let missing: Vec<&str> = uses
                .iter()
                .filter(|u| !answered.contains(u))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                    missing.join(", ")
                ));
            }
        }
        if m.role == "user" && m.content.get().contains("\"tool_result\"") {
            let results = block_ids(m.content, "tool_result", "tool_use_id");
            let uses = match i.checked_sub(1).map(|p| &messages[p]) {
                Some(prev) if prev.role == "assistant" => block_ids(prev.content, "tool_use", "id"),
                _ => Vec::new(),
            };
            let unexpected: Vec<&str> = results
                .iter()
                .filter(|r| !uses.contains(r))
                .map(String::as_str)
                .collect();
            if !unexpected.is_empty() {
                return Err(format!(
                    "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message.",
                    unexpected.join(", ")
                ));
            }
        }
    }
    Ok(())
}

fn has_identity(system: Option<&serde_json::value::RawValue>) -> bool {
    let Some(raw) = system else { return false };
    if let Ok(s) = serde_json::from_str::<String>(raw.get()) {
        return ACCEPTED_IDENTITIES.iter().any(|id| s.starts_with(id));
    }
    #[derive(serde::Deserialize)]
    struct B {
        text: Option<String>,
    }
    let Ok(blocks) = serde_json::from_str::<Vec<B>>(raw.get()) else {
        return false;
    };
    let texts: Vec<&str> = blocks.iter().filter_map(|b| b.text.as_deref()).collect();
    let is_id = |t: &&str| ACCEPTED_IDENTITIES.contains(t);
    match texts.as_slice() {
        [first, ..] if is_id(first) => true,
        [billing, second, ..] if billing.starts_with("x-anthropic-billing-header") => is_id(second),
        _ => false,
    }
}

async fn messages(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return error_response(413, "Request too large");
    };
    record_request(&state, &parts.method, &parts.uri, &parts.headers, &body);
    let req = match admit(&state, &parts.headers, &body, true) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // The credential's own scripted state, then the request's directives.
    let (refusal, extra) = accounts::check(&state, &parts.headers);
    let mut resp = match refusal {
        Some(r) => r,
        None => answer(&state, req, &body, &account_of(&parts.headers)).await,
    };
    resp.headers_mut().extend(extra);
    resp
}

/// The credential a request carries (the prompt cache is per account).
fn account_of(headers: &HeaderMap) -> String {
    headers
        .get("x-api-key")
        .or_else(|| headers.get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A Messages answer, as the request's directives ask.
async fn answer(
    state: &Arc<SimState>,
    req: SimRequest<'_>,
    body: &Bytes,
    account: &str,
) -> Response {
    let state = state.clone();
    let dir = Directives::from_request(&req);
    if dir.delay_ms > 0 {
        // Dropped (client gone) before the delay ends: counted as cancelled.
        struct Pending<'a>(&'a SimState, bool);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.requests_cancelled.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        let mut pending = Pending(&state, false);
        tokio::time::sleep(Duration::from_millis(dir.delay_ms)).await;
        pending.1 = true;
    }
    if let Some(status) = dir.status {
        return error_response(status, &format!("Simulated error {status}"));
    }
    if let Some((n, status)) = dir.flaky {
        let served = state.flaky.lock().map(|mut m| {
            let c = m.entry(dir.user_text.clone()).or_insert(0);
            *c += 1;
            *c
        });
        if served.is_ok_and(|c| c <= n) {
            let mut resp = error_response(status, &format!("Simulated flaky error {status}"));
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
            return resp;
        }
    }
    let mut dir = dir;
    let calls = match generate::offer(&req) {
        Ok(offer) if agent::asked(&req) => {
            let step = agent::step(&req, &offer);
            dir.text = Some(step.text);
            // As the real model does, it thinks first whenever thinking is on.
            dir.thinking |= agent::thinking_on(&req);
            step.calls
        }
        Ok(offer) => offer.calls(dir.tools, dir.tool_result.is_some()),
        Err(m) => return error_response(400, &m),
    };
    // Structured output: the text is JSON fitting the schema (the shape was checked on admission).
    if let Ok(Some(schema)) = structured::format(body) {
        dir.text = Some(structured::answer(&schema));
    }
    let id = state.next_id();
    let mut message = generate::respond(req.model.as_deref(), &calls, &dir, body.len(), id);
    let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
    // Fast mode, on the models that have it (others run at standard speed, as the service does).
    message.fast = parsed.as_ref().is_some_and(|v| v["speed"] == "fast")
        && [
            "claude-opus-4-6",
            "claude-opus-4-7",
            "claude-opus-4-8",
            "claude-opus-5",
        ]
        .iter()
        .any(|m| message.model.starts_with(m));
    if dir.search
        && let Some(v) = &parsed
    {
        search::apply(&mut message, v, &dir.user_text, id);
    }
    if !dir.cache
        && let Some(v) = &parsed
        && let Some(u) =
            state
                .prompt_cache
                .apply(account, v, message.tokens.input, std::time::Instant::now())
    {
        message.cached(u);
    }
    if dir.faults.active() {
        return if req.stream.unwrap_or(false) {
            let events = generate::sse_events(&message, &dir);
            faults::stream_response(state, events, &dir.faults, dir.gap_ms)
        } else {
            faults::json_response(state, message.to_json(), &dir.faults, id)
        };
    }
    if req.stream.unwrap_or(false) {
        stream_response(state, generate::sse_events(&message, &dir), dir.gap_ms)
    } else {
        let mut resp = (
            [(header::CONTENT_TYPE, "application/json")],
            message.to_json(),
        )
            .into_response();
        add_common_headers(resp.headers_mut(), id);
        resp
    }
}

fn add_common_headers(h: &mut HeaderMap, id: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("req_sim_{id:016x}")) {
        h.insert("request-id", v);
    }
    h.insert(
        "anthropic-ratelimit-unified-status",
        HeaderValue::from_static("allowed"),
    );
    h.insert(
        "anthropic-ratelimit-unified-5h-status",
        HeaderValue::from_static("allowed"),
    );
}

/// Counts a stream as cancelled unless it reached its end.
struct StreamGuard {
    state: Arc<SimState>,
    done: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.state.streams_completed
        } else {
            &self.state.streams_cancelled
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn stream_response(state: Arc<SimState>, events: Vec<Bytes>, gap_ms: u64) -> Response {
    let id = state.next_id();
    let guard = StreamGuard { state, done: false };
    let body = if gap_ms == 0 {
        // Everything at once, in one write: the fastest path for benchmarks.
        let total: usize = events.iter().map(Bytes::len).sum();
        let mut all = Vec::with_capacity(total);
        for e in &events {
            all.extend_from_slice(e);
        }
        let mut guard = guard;
        guard.done = true;
        drop(guard);
        Body::from(all)
    } else {
        let gap = Duration::from_millis(gap_ms);
        let stream = futures_util::stream::unfold(
            (events.into_iter(), guard, true),
            move |(mut it, mut guard, first)| async move {
                if !first {
                    tokio::time::sleep(gap).await;
                }
                match it.next() {
                    Some(ev) => Some((Ok::<_, std::convert::Infallible>(ev), (it, guard, false))),
                    None => {
                        guard.done = true;
                        drop(guard);
                        None
                    }
                }
            },
        );
        Body::from_stream(stream)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    add_common_headers(h, id);
    resp
}

async fn count_tokens(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return error_response(413, "Request too large");
    };
    record_request(&state, &parts.method, &parts.uri, &parts.headers, &body);
    if let Err(e) = admit(&state, &parts.headers, &body, false) {
        return e.into_response();
    }
    let tokens = generate::estimate_tokens(body.len());
    let mut resp = axum::Json(serde_json::json!({ "input_tokens": tokens })).into_response();
    add_common_headers(resp.headers_mut(), state.next_id());
    resp
}

/// Models the simulated upstream lists.
/// The service's models: id, display name, context window, largest `max_tokens`.
pub const MODELS: &[(&str, &str, u64, u64)] = &[
    ("claude-sonnet-5", "Claude Sonnet 5", 1_000_000, 128_000),
    ("claude-opus-4-8", "Claude Opus 4.8", 1_000_000, 128_000),
    (
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        200_000,
        64_000,
    ),
    (
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        200_000,
        64_000,
    ),
    (
        "claude-opus-4-1-20250805",
        "Claude Opus 4.1",
        200_000,
        32_000,
    ),
];

/// One model object, as the Models API describes it.
pub(crate) fn model_object(m: &(&str, &str, u64, u64)) -> serde_json::Value {
    let (id, name, input, output) = *m;
    let yes = serde_json::json!({"supported": true});
    serde_json::json!({
        "type": "model", "id": id, "display_name": name, "created_at": "2025-09-29T00:00:00Z",
        "max_input_tokens": input, "max_tokens": output,
        "capabilities": {"batch": yes, "citations": yes, "image_input": yes, "pdf_input": yes,
            "structured_outputs": {"supported": !id.starts_with("claude-3")}}
    })
}

/// `GET /v1/models`: pages of `limit` (1–1000, default 20) after `after_id` / before
/// `before_id`; `models_status` (when set) is the answer's status instead.
async fn models(
    State(state): State<Arc<SimState>>,
    axum::extract::Query(q): axum::extract::Query<files::PageQuery>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    if let Err(e) = check_auth(&state, &parts.headers) {
        return e.into_response();
    }
    let forced = state.models_status.load(Ordering::Relaxed);
    if forced != 0 {
        return sim_err(forced, "models are unavailable").into_response();
    }
    let items = MODELS
        .iter()
        .map(|m| (m.0.to_owned(), model_object(m)))
        .collect();
    match files::page(items, &q) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn oauth_token(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return error_response(413, "Request too large");
    };
    record_request(&state, &parts.method, &parts.uri, &parts.headers, &body);
    state.token_calls.fetch_add(1, Ordering::SeqCst);
    let delay = state.token_delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let oauth_error = |status: StatusCode, error: &str, desc: &str| {
        (
            status,
            axum::Json(serde_json::json!({"error": error, "error_description": desc})),
        )
            .into_response()
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid JSON body",
        );
    };
    let grant = v["grant_type"].as_str().unwrap_or("");
    let valid = match grant {
        "refresh_token" => {
            let rt = v["refresh_token"].as_str().unwrap_or("");
            let fresh = state
                .used_refresh
                .lock()
                .map(|mut used| used.insert(rt.to_owned()))
                .unwrap_or(false);
            rt.starts_with("sk-ant-ort") && !rt.contains("invalid") && fresh
        }
        "authorization_code" => {
            let code = v["code"].as_str().unwrap_or("");
            !code.is_empty()
                && !code.contains("invalid")
                && v["code_verifier"].as_str().is_some_and(|c| c.len() >= 43)
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "Unsupported grant type",
            );
        }
    };
    if !valid {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Refresh token not found or invalid",
        );
    }
    let n = state.next_id();
    let nonce: u64 = rand::random();
    axum::Json(serde_json::json!({
        "access_token": format!("sk-ant-oat01-sim-{n}-{nonce:016x}"),
        "refresh_token": format!("sk-ant-ort01-sim-{n}-{nonce:016x}"),
        "expires_in": state.token_expires_in.load(Ordering::Relaxed),
        "scope": "user:inference user:profile",
        "token_type": "Bearer",
    }))
    .into_response()
}

async fn chat_completions(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return error_response(413, "Request too large");
    };
    record_request(&state, &parts.method, &parts.uri, &parts.headers, &body);
    openai::chat_completions(state, &parts.headers, &body).await
}

/// Exposes check_auth to the OpenAI-compatible endpoint.
pub(crate) fn authorize(state: &SimState, headers: &HeaderMap) -> Result<(), SimError> {
    check_auth(state, headers).map(|_| ())
}

pub(crate) fn next_id(state: &SimState) -> u64 {
    state.next_id()
}

pub(crate) fn sse_response(state: Arc<SimState>, events: Vec<Bytes>, gap_ms: u64) -> Response {
    stream_response(state, events, gap_ms)
}

#[cfg(test)]
mod pairing_tests {
    use super::check_tool_pairing;
    use crate::sim::generate::SimRequest;

    fn check(messages: &str) -> Result<(), String> {
        let body = format!(r#"{{"model":"m","max_tokens":5,"messages":{messages}}}"#);
        let req: SimRequest = serde_json::from_str(&body).unwrap();
        check_tool_pairing(req.messages.as_deref().unwrap_or_default())
    }

    #[test]
    fn tool_uses_and_results_must_pair_across_adjacent_turns() {
        let use_t1 = r#"{"role":"assistant","content":[{"type":"text","text":"x"},{"type":"tool_use","id":"t1","name":"f","input":{}}]}"#;
        let result = |id: &str| {
            format!(
                r#"{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"{id}","content":"ok"}}]}}"#
            )
        };
        let hi = r#"{"role":"user","content":"hi"}"#;
        assert_eq!(check(&format!("[{hi},{use_t1},{}]", result("t1"))), Ok(()));
        // A trailing call (the client has not answered yet) is not checked.
        assert_eq!(check(&format!("[{hi},{use_t1}]")), Ok(()));
        let err = check(&format!("[{hi},{use_t1},{hi}]")).unwrap_err();
        assert!(err.starts_with("messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: t1."), "{err}");
        let err = check(&format!("[{hi},{use_t1},{}]", result("t2"))).unwrap_err();
        assert!(err.contains("t1"), "{err}");
        let err = check(&format!("[{}]", result("t9"))).unwrap_err();
        assert!(
            err.starts_with(
                "messages.0.content: unexpected `tool_use_id` found in `tool_result` blocks: t9."
            ),
            "{err}"
        );
    }
}
