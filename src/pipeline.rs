//! The request flow, top to bottom, in one place:
//!
//! ```text
//! access check → read body → credentials → prepare (mode policy, conversion)
//!   → upstream send (one request; one retry after a forced OAuth refresh)
//!   → response: relay bytes | convert JSON | convert stream
//! error at any phase → rendered once, in the client's dialect
//! ```

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::claude_code;
use crate::convert;
use crate::credentials::AccessToken;
use crate::error::{Dialect, ErrorKind, ErrorSource, ProxyError};
use crate::server::AppState;
use crate::upstream::{self, UpstreamAuth};

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

/// The entry point for every proxied route.
pub async fn handle(state: Arc<AppState>, mode: Mode, route: Route, req: Request) -> Response {
    let ctx = RequestCtx {
        mode,
        route,
        dialect: route.dialect(),
        t0: Instant::now(),
    };
    match run(&state, &ctx, req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::info!(
                mode = mode.name(),
                route = ?route,
                status = e.kind.status().as_u16(),
                source = ?e.source,
                error = %e.message,
                "request failed"
            );
            e.into_response(ctx.dialect)
        }
    }
}

async fn run(state: &AppState, ctx: &RequestCtx, req: Request) -> Result<Response, ProxyError> {
    let (parts, body) = req.into_parts();

    // 1. Access: the proxy token, when one is configured.
    let client_token = check_access(state, &parts.headers)?;

    // 2. Body, within the configured limit.
    let body = read_body(body, &parts.headers, state.settings.max_body_bytes).await?;

    // 3. Credentials for the upstream.
    let (auth, source, oauth_token) = resolve_credential(state, ctx.mode, client_token).await?;

    // 4. Prepare the upstream request by mode and route.
    let prepared = prepare(state, ctx, &parts.method, parts.uri.path(), body)?;
    let query = if prepared.keep_query {
        parts.uri.query()
    } else {
        None
    };
    let has_body = !prepared.body.is_empty();
    let headers = upstream::request_headers(
        ctx.mode,
        &parts.headers,
        &auth,
        has_body,
        &state.settings.cli_version,
    );

    // 5. Send: one upstream request; after a 401 with the server's OAuth token,
    //    one forced refresh and one retry.
    let path = prepared.path.as_str();
    let mut resp = state
        .upstream
        .send(
            prepared.method.clone(),
            path,
            query,
            headers,
            prepared.body.clone(),
        )
        .await?;
    if resp.status() == StatusCode::UNAUTHORIZED {
        if let (Some(used), Some(mgr)) = (oauth_token.as_ref(), state.oauth.as_ref()) {
            match mgr.force_refresh(used).await {
                Ok(fresh) => {
                    tracing::info!(
                        "upstream rejected the OAuth token; retrying once with a refreshed one"
                    );
                    let auth = UpstreamAuth::OAuth(fresh.secret().to_owned());
                    let headers = upstream::request_headers(
                        ctx.mode,
                        &parts.headers,
                        &auth,
                        has_body,
                        &state.settings.cli_version,
                    );
                    resp = state
                        .upstream
                        .send(prepared.method, path, query, headers, prepared.body)
                        .await?;
                }
                Err(e) => tracing::warn!(error = %e, "forced OAuth refresh failed"),
            }
        }
    }
    tracing::debug!(
        mode = ctx.mode.name(),
        credential = ?source,
        status = resp.status().as_u16(),
        upstream_ms = ctx.t0.elapsed().as_secs_f64() * 1000.0,
        "upstream answered"
    );

    // 6. Respond.
    match prepared.conversion {
        Conversion::None => Ok(relay(ctx.mode, resp)),
        Conversion::Chat(chat) => Ok(convert_chat_response(resp, chat).await),
        Conversion::Models => Ok(convert_models_response(state, resp).await),
    }
}

/// Checks the proxy token. Returns the client's own credential candidate
/// (its x-api-key or bearer value) when the proxy is open.
fn check_access(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ProxyError> {
    let presented = presented_token(headers);
    match state.auth_token_digest {
        None => Ok(presented.map(str::to_owned)),
        Some(expected) => {
            let ok = presented.is_some_and(|p| {
                let got: [u8; 32] = Sha256::digest(p.as_bytes()).into();
                bool::from(got.ct_eq(&expected))
            });
            if ok {
                Ok(None)
            } else {
                Err(ProxyError::auth(
                    "invalid or missing proxy token: send the token ccproxy was started with as x-api-key or Authorization: Bearer",
                ))
            }
        }
    }
}

/// The token a client presented: `x-api-key`, else `Authorization: Bearer`.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
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
    stream: bool,
    include_usage: bool,
}

struct Prepared {
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
    let plain = |path: String, body: Bytes| Prepared {
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
            let body = match mode {
                Mode::Full => {
                    let (shaped, _) = claude_code::shape_request(&body).map_err(shape_error)?;
                    Bytes::from(shaped)
                }
                Mode::Minimal => {
                    validate_json(&body)?;
                    body
                }
                Mode::Passthrough => body,
            };
            plain(upstream_path(path), body)
        }
        (Route::Models, _) => plain(upstream_path("/v1/models"), Bytes::new()),
        (Route::Relay, _) => {
            // Passthrough of any other /v1/* path: strip the mode prefix.
            let path = client_path.strip_prefix("/pt").unwrap_or(client_path);
            plain(upstream_path(path), body)
        }
        (Route::ChatCompletions, Mode::Passthrough) => {
            plain(upstream_path("/v1/chat/completions"), body)
        }
        (Route::OpenAiModels, Mode::Passthrough) => {
            plain(upstream_path("/v1/models"), Bytes::new())
        }
        (Route::ChatCompletions, mode) => {
            let opts = convert::request::ConvertOptions {
                default_max_tokens: state.settings.default_max_tokens,
                aliases: &state.aliases,
            };
            let converted = convert::request::chat_to_messages(&body, &opts).map_err(|e| {
                let mut pe = ProxyError::invalid(e.message.clone());
                pe.param = e.param.clone();
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
                method: Method::POST,
                path: upstream_path("/v1/messages"),
                keep_query: false,
                body: out,
                conversion: Conversion::Chat(ChatInfo {
                    client_model: converted.client_model,
                    stream: converted.stream,
                    include_usage: converted.include_usage,
                }),
            }
        }
        (Route::OpenAiModels, _) => Prepared {
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

fn validate_json(body: &[u8]) -> Result<(), ProxyError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| ())
        .map_err(|e| ProxyError::invalid(format!("invalid JSON body: {e}")))
}

/// Relays the upstream response: status, the headers the mode keeps, and the body
/// chunk by chunk as it arrives (never buffered whole).
fn relay(mode: Mode, resp: reqwest::Response) -> Response {
    let status = resp.status();
    let is_sse = is_event_stream(resp.headers());
    let headers = upstream::response_headers(mode, resp.headers(), !is_sse);
    let body = if is_sse {
        Body::from_stream(sse_relay(resp))
    } else {
        Body::from_stream(resp.bytes_stream())
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

/// An SSE body relayed as is; if the upstream connection breaks mid-stream, the
/// client gets an Anthropic `error` event instead of a silently cut stream.
fn sse_relay(
    resp: reqwest::Response,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let upstream = resp.bytes_stream();
    futures_util::stream::unfold(Some(upstream), |st| async move {
        let mut up = st?;
        match up.next().await {
            Some(Ok(chunk)) => Some((Ok(chunk), Some(up))),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "upstream stream broke");
                let frame = format!(
                    "event: error\ndata: {}\n\n",
                    serde_json::json!({"type":"error","error":{"type":"api_error",
                        "message": format!("upstream connection lost: {e}")}})
                );
                Some((Ok(Bytes::from(frame)), None))
            }
            None => None,
        }
    })
}

/// Reads a whole (non-streaming) upstream body, bounded.
async fn read_upstream_body(resp: reqwest::Response) -> Result<Bytes, ProxyError> {
    resp.bytes().await.map_err(|e| upstream::map_send_error(&e))
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

async fn convert_chat_response(resp: reqwest::Response, chat: ChatInfo) -> Response {
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    if !status.is_success() {
        return match read_upstream_body(resp).await {
            Ok(body) => {
                let (code, body) = convert::response::error_to_openai(status.as_u16(), &body);
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                json_response(code, &upstream_headers, body)
            }
            Err(e) => e.into_response(Dialect::OpenAi),
        };
    }
    let created = unix_now();
    if is_event_stream(&upstream_headers) {
        let conv = convert::stream::ChatStreamConverter::new(
            chat.client_model,
            chat.include_usage,
            created,
        );
        let body = Body::from_stream(chat_stream(resp, conv));
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
    let _ = chat.stream;
    match read_upstream_body(resp).await {
        Ok(body) => match convert::response::messages_to_chat(&body, &chat.client_model, created) {
            Ok(json) => json_response(status, &upstream_headers, json),
            Err(e) => ProxyError::new(
                ErrorKind::BadGateway,
                ErrorSource::Upstream,
                format!("upstream sent a response that is not a valid message: {e}"),
            )
            .into_response(Dialect::OpenAi),
        },
        Err(e) => e.into_response(Dialect::OpenAi),
    }
}

struct ChatStreamState<S> {
    upstream: S,
    parser: convert::SseParser,
    conv: convert::stream::ChatStreamConverter,
    done: bool,
}

/// Converts the upstream Anthropic SSE into OpenAI chunks as events arrive.
fn chat_stream(
    resp: reqwest::Response,
    conv: convert::stream::ChatStreamConverter,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let st = ChatStreamState {
        upstream: resp.bytes_stream(),
        parser: convert::SseParser::new(),
        conv,
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            let mut out = Vec::new();
            match st.upstream.next().await {
                Some(Ok(chunk)) => {
                    let conv = &mut st.conv;
                    st.parser
                        .push(&chunk, |event, data| conv.on_event(event, data, &mut out));
                    if conv.is_done() {
                        st.done = true;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "upstream stream broke");
                    let data = serde_json::json!({"type":"error","error":{"type":"api_error",
                        "message": format!("upstream connection lost: {e}")}})
                    .to_string();
                    st.conv.on_event("error", data.as_bytes(), &mut out);
                    st.conv.finish(&mut out);
                    st.done = true;
                }
                None => {
                    st.conv.finish(&mut out);
                    st.done = true;
                }
            }
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), st));
            }
        }
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `/openai/v1/models` in full and minimal modes: the upstream's models in
/// OpenAI's list shape, plus the configured aliases.
async fn convert_models_response(state: &AppState, resp: reqwest::Response) -> Response {
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    let body = match read_upstream_body(resp).await {
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
    let created = unix_now();
    if let Some(items) = v["data"].as_array() {
        for m in items {
            if let Some(id) = m["id"].as_str() {
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
