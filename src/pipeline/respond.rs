//! The `respond` phase: the upstream's answer to the client. Event streams are
//! relayed (or converted) event by event, never buffered whole; other answers
//! are read whole first, so a connection that breaks mid-body is an error, not a
//! truncated success.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;

use super::ctx::RequestCtx;
use std::sync::Arc;

use super::prepare::{ChatInfo, Conversion, Meter, RelayKind, ResponsesInfo};
use crate::convert;
use crate::convert::models::ModelAliases;
use crate::convert::responses::ResponsesStreamConverter;
use crate::error::{ErrorKind, Origin, ProxyError};
use crate::model_catalog::{self, ModelCatalog, Source};
use crate::observability::InFlight;
use crate::observability::tap::Tap;
use crate::response_store::ResponseStore;
use crate::routes::{Dialect, Mode};
use crate::upstream::{self, StreamLimits, StreamNext, StreamWatch};

/// What the respond phase needs besides the upstream's answer.
pub struct Respond<'a> {
    pub mode: Mode,
    pub limits: &'a StreamLimits,
    pub aliases: &'a ModelAliases,
    /// Non-stream answers must be complete by then.
    pub deadline: tokio::time::Instant,
    pub sent: std::time::Instant,
    /// Where Responses answers are stored.
    pub responses: &'a Arc<ResponseStore>,
    /// Where a model list fetched with one of the server's credentials is kept (`None`: the
    /// client's own credential fetched it, and it is not shared).
    pub catalog: Option<&'a ModelCatalog>,
}

pub async fn respond(
    ctx: &mut RequestCtx,
    r: Respond<'_>,
    resp: crate::upstream::UpResponse,
    conversion: Conversion,
    meter: Meter,
) -> Result<Response, ProxyError> {
    let sse = is_event_stream(resp.headers());
    match conversion {
        Conversion::None if sse => {
            let status = resp.status();
            let headers = upstream::response_headers(r.mode, resp.headers(), false);
            let record = ctx.stream_started(status.as_u16()).map(|mut rec| {
                rec.meter_with(meter.tap(true));
                rec
            });
            let relay = if r.mode == Mode::Passthrough {
                Relay::Passthrough
            } else {
                Relay::Raw
            };
            let body = relay_stream(resp, r.limits.watch(), record, relay);
            Ok(response(status, headers, body))
        }
        Conversion::None => relay_whole(ctx, &r, resp, meter).await,
        Conversion::Chat(chat) if resp.status().is_success() && sse => {
            Ok(chat_stream(ctx, &r, resp, chat))
        }
        Conversion::Chat(chat) => chat_whole(ctx, &r, resp, chat).await,
        Conversion::Responses(info) if resp.status().is_success() && sse => {
            Ok(responses_stream(ctx, &r, resp, *info))
        }
        Conversion::Responses(info) => responses_whole(ctx, &r, resp, *info).await,
        Conversion::InputTokens => input_tokens(ctx, &r, resp).await,
        Conversion::Models => models(ctx, &r, resp).await,
        Conversion::Relay(RelayKind::Batch { origin })
            if resp.status().is_success() && !sse && is_json(resp.headers()) =>
        {
            batch_object(ctx, &r, resp, &origin).await
        }
        Conversion::Relay(_) => Ok(relay_any(ctx, &r, resp, meter, sse)),
    }
}

/// An answer on a relay route, streamed as it comes whatever its type (a file download, a
/// batch's JSONL results), with its length; if the upstream breaks, the client's body is cut
/// (an event stream gets the error event first, except in passthrough).
fn relay_any(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
    meter: Meter,
    sse: bool,
) -> Response {
    let status = resp.status();
    let headers = upstream::response_headers(r.mode, resp.headers(), !sse);
    let record = ctx.stream_started(status.as_u16()).map(|mut rec| {
        rec.meter_with(meter.tap(sse));
        rec
    });
    let relay = if sse && r.mode != Mode::Passthrough {
        Relay::Raw
    } else {
        Relay::Passthrough
    };
    let body = relay_stream(resp, r.limits.watch(), record, relay);
    response(status, headers, body)
}

/// A message batch (or a list of them): every `results_url` made to lead back to the proxy
/// (`origin` is the proxy's address and the client's mode prefix); every other byte as it came.
async fn batch_object(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
    origin: &str,
) -> Result<Response, ProxyError> {
    let status = resp.status();
    let mut headers = upstream::response_headers(r.mode, resp.headers(), false);
    let body = read_whole(ctx, r, resp).await?;
    ctx.completed();
    let body = match redirect_results(&body, origin) {
        Some(changed) => Bytes::from(changed),
        None => body,
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(response(status, headers, Body::from(body)))
}

/// The body with the origin of every `"results_url": "…/v1/messages/batches/…"` replaced by
/// `origin` (the rest of the bytes untouched); `None` when there is none.
fn redirect_results(body: &[u8], origin: &str) -> Option<Vec<u8>> {
    const KEY: &[u8] = b"\"results_url\"";
    const PATH: &[u8] = b"/v1/messages/batches/";
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut done = 0;
    let mut changed = false;
    for at in memchr::memmem::find_iter(body, KEY) {
        let mut i = at + KEY.len();
        let skip_ws = |i: &mut usize| {
            while body.get(*i).is_some_and(u8::is_ascii_whitespace) {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        if body.get(i) != Some(&b':') {
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        if body.get(i) != Some(&b'"') {
            continue;
        }
        let start = i + 1;
        let Some(len) = memchr::memchr(b'"', &body[start..]) else {
            continue;
        };
        let url = &body[start..start + len];
        let Some(path_at) = memchr::memmem::find(url, PATH) else {
            continue;
        };
        out.extend_from_slice(&body[done..start]);
        out.extend_from_slice(origin.as_bytes());
        done = start + path_at;
        changed = true;
    }
    if !changed {
        return None;
    }
    out.extend_from_slice(&body[done..]);
    Some(out)
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// A non-stream answer relayed as it is (headers filtered by mode).
async fn relay_whole(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
    meter: Meter,
) -> Result<Response, ProxyError> {
    let status = resp.status();
    let mut headers = upstream::response_headers(r.mode, resp.headers(), false);
    let body = read_whole(ctx, r, resp).await?;
    ctx.completed_with(meter.tap(false), &body);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Ok(response(status, headers, Body::from(body)))
}

/// A Messages answer (or error) converted to Chat Completions JSON.
async fn chat_whole(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
    chat: ChatInfo,
) -> Result<Response, ProxyError> {
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    let body = read_whole(ctx, r, resp).await?;
    if !status.is_success() {
        ctx.completed();
        return Ok(upstream_error(status, &upstream_headers, &body));
    }
    let msg = read_message(ctx, &body)?;
    let json = convert::response::message_to_chat(
        &msg,
        body.len(),
        &chat.client_model,
        crate::util::time::now_secs(),
        chat.legacy_functions,
    );
    Ok(json_response(status, &upstream_headers, json))
}

/// A Messages 200 answer read to be converted; its usage and model go to the record from it.
/// One that cannot be read is metered from its bytes as a relayed answer would be (the upstream
/// billed it all the same), and the client gets a 502.
fn read_message<'b>(
    ctx: &mut RequestCtx,
    body: &'b [u8],
) -> Result<crate::api::anthropic::Message<'b>, ProxyError> {
    match crate::util::json::from_bytes(body) {
        Ok(msg) => {
            ctx.completed_with_message(&msg);
            Ok(msg)
        }
        Err(e) => {
            ctx.completed_with(Tap::anthropic(false), body);
            Err(ProxyError::new(
                ErrorKind::BadGateway,
                Origin::Upstream,
                format!("upstream sent a response that is not a valid message: {e}"),
            ))
        }
    }
}

/// A Messages event stream converted to Chat Completions chunks as events arrive.
fn chat_stream(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
    chat: ChatInfo,
) -> Response {
    let status = resp.status();
    let request_id = resp.headers().get(crate::util::names::REQUEST_ID).cloned();
    let conv = convert::stream::ChatStreamConverter::new(
        chat.client_model,
        chat.include_usage,
        crate::util::time::now_secs(),
    )
    .legacy_functions(chat.legacy_functions);
    let record = ctx.stream_started(status.as_u16());
    let relay = Relay::Chat(Box::new((convert::SseParser::new(), conv)));
    let body = relay_stream(resp, r.limits.watch(), record, relay);
    response(status, event_stream_headers(request_id), body)
}

/// The head of a converted event stream.
fn event_stream_headers(request_id: Option<HeaderValue>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Some(v) = request_id {
        headers.insert("request-id", v);
    }
    headers
}

/// A Messages answer (or error) converted to a Responses object.
async fn responses_whole(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
    info: ResponsesInfo,
) -> Result<Response, ProxyError> {
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    let body = read_whole(ctx, r, resp).await?;
    if !status.is_success() {
        ctx.completed();
        return Ok(upstream_error(status, &upstream_headers, &body));
    }
    let msg = read_message(ctx, &body)?;
    let object = convert::responses::message_to_response(&msg, info.context);
    let json = object.to_json();
    if let Some(items) = info.keep {
        // The stored copy is the answer's own JSON (encoding it again cost as much again).
        Keep {
            store: r.responses.clone(),
            items,
        }
        .store_json(&object, json.clone());
    }
    Ok(json_response(status, &upstream_headers, json.into_bytes()))
}

/// A Messages event stream converted to Responses events as they arrive.
fn responses_stream(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
    info: ResponsesInfo,
) -> Response {
    let status = resp.status();
    let request_id = resp.headers().get(crate::util::names::REQUEST_ID).cloned();
    let record = ctx.stream_started(status.as_u16());
    let conv = convert::responses::ResponsesStreamConverter::new(info.context);
    let keep = info.keep.map(|items| Keep {
        store: r.responses.clone(),
        items,
    });
    let relay = Relay::Responses(Box::new((convert::SseParser::new(), conv, keep)));
    let body = relay_stream(resp, r.limits.watch(), record, relay);
    response(status, event_stream_headers(request_id), body)
}

/// What a Responses answer is stored with, when the request said `store` (the default).
struct Keep {
    store: Arc<ResponseStore>,
    /// The conversation's input items, a JSON array.
    items: String,
}

impl Keep {
    /// Stores a stream's response when it completed or ended incomplete (as OpenAI, whose
    /// `previous_response_id` can continue either), as its terminal event encoded it; a failed
    /// one is not stored.
    fn store(self, conv: &mut ResponsesStreamConverter) {
        if let Some(json) = conv.take_response_json() {
            self.store_json(conv.response(), json);
        }
    }

    /// [`Keep::store`] with `response` already encoded as `json`.
    fn store_json(self, response: &crate::api::responses::Response, json: String) {
        use crate::api::responses::Status;
        if matches!(response.status, Status::Completed | Status::Incomplete) {
            self.store
                .put(response.id.clone(), response.created_at, self.items, json);
        }
    }
}

/// `POST /openai/v1/responses/input_tokens`: the upstream's count as `response.input_tokens`.
async fn input_tokens(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
) -> Result<Response, ProxyError> {
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    let body = read_whole(ctx, r, resp).await?;
    ctx.completed();
    if !status.is_success() {
        return Ok(upstream_error(status, &upstream_headers, &body));
    }
    #[derive(serde::Deserialize)]
    struct Count {
        input_tokens: u64,
    }
    let count: Count = serde_json::from_slice(&body).map_err(|e| {
        ProxyError::new(
            ErrorKind::BadGateway,
            Origin::Upstream,
            format!("upstream sent a token count that cannot be read: {e}"),
        )
    })?;
    let json =
        serde_json::json!({"object": "response.input_tokens", "input_tokens": count.input_tokens});
    Ok(json_response(
        StatusCode::OK,
        &upstream_headers,
        json.to_string().into_bytes(),
    ))
}

/// `/v1/models` and `/openai/v1/models` in full and minimal modes: the upstream's list (kept in
/// the catalog when a server credential fetched it), merged with the aliases and known limits,
/// in the client's dialect. When the upstream fails (unreadable, 5xx, 429), the catalog's last
/// list or the built-in one; a refusal of the credential (other 4xx) is the answer.
async fn models(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
) -> Result<Response, ProxyError> {
    let status = resp.status();
    let upstream_headers = resp.headers().clone();
    let body = match read_whole(ctx, r, resp).await {
        Ok(body) => body,
        Err(e) => return Ok(models_fallback(ctx, r.catalog, r.aliases, &e.message())),
    };
    ctx.completed();
    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        return Ok(upstream_error_in(
            ctx.dialect,
            status,
            &upstream_headers,
            &body,
        ));
    }
    match convert::model_list::parse_page(&body).filter(|_| status.is_success()) {
        Some((models, _, _)) => {
            let models = match r.catalog {
                Some(c) => c.store(models),
                None => Arc::new(models),
            };
            Ok(model_list(
                ctx.dialect,
                &models,
                r.aliases,
                Source::Upstream,
            ))
        }
        None => Ok(models_fallback(
            ctx,
            r.catalog,
            r.aliases,
            &format!("the upstream answered {status} without a model list"),
        )),
    }
}

/// The model list the catalog can give when the upstream gave none (`why`, logged).
pub fn models_fallback(
    ctx: &mut RequestCtx,
    catalog: Option<&ModelCatalog>,
    aliases: &ModelAliases,
    why: &str,
) -> Response {
    let (models, source) = match catalog {
        Some(c) => c.fallback(),
        None => (Arc::new(convert::model_list::built_in()), Source::BuiltIn),
    };
    tracing::warn!(
        request_id = %ctx.request_id,
        source = source.as_str(),
        "model list not fetched from the upstream ({why}); serving the {} list",
        source.as_str()
    );
    ctx.completed();
    model_list(ctx.dialect, &models, aliases, source)
}

/// A model list in `dialect`'s shape, saying where it came from.
pub fn model_list(
    dialect: Dialect,
    models: &[serde_json::Value],
    aliases: &ModelAliases,
    source: Source,
) -> Response {
    let body = match dialect {
        Dialect::OpenAi => {
            convert::model_list::openai_list(models, aliases, crate::util::time::now_secs())
        }
        Dialect::Anthropic => convert::model_list::anthropic_list(models, aliases),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        model_catalog::SOURCE_HEADER,
        HeaderValue::from_static(source.as_str()),
    );
    response(StatusCode::OK, headers, Body::from(body))
}

/// Reads a whole (non-streaming) upstream body. A connection that breaks
/// before the end is a 502; one that does not finish by the deadline, a 504.
async fn read_whole(
    ctx: &mut RequestCtx,
    r: &Respond<'_>,
    resp: crate::upstream::UpResponse,
) -> Result<Bytes, ProxyError> {
    let Ok(read) = tokio::time::timeout_at(r.deadline, resp.bytes()).await else {
        return Err(ProxyError::new(
            ErrorKind::GatewayTimeout,
            Origin::Upstream,
            "the upstream did not finish its response in time (upstream_timeout_secs)",
        ));
    };
    let body = read.map_err(|e| {
        upstream::transport_error(
            e,
            "the upstream connection broke before the end of its response",
        )
    })?;
    ctx.upstream_read(r.sent.elapsed());
    Ok(body)
}

/// An upstream error answer on an OpenAI route: the OpenAI envelope, with the
/// upstream's request id, `retry-after` and rate-limit headers.
fn upstream_error(status: StatusCode, upstream_headers: &HeaderMap, body: &[u8]) -> Response {
    upstream_error_in(Dialect::OpenAi, status, upstream_headers, body)
}

/// An upstream error answer in `dialect`'s envelope, with the upstream's request id,
/// `retry-after` and rate-limit headers.
fn upstream_error_in(
    dialect: Dialect,
    status: StatusCode,
    upstream_headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let e = ProxyError::from_upstream_response(status.as_u16(), body);
    let mut resp = e.into_response(dialect);
    copy_upstream_headers(upstream_headers, resp.headers_mut());
    resp
}

fn json_response(status: StatusCode, upstream_headers: &HeaderMap, body: Vec<u8>) -> Response {
    let mut headers = HeaderMap::new();
    copy_upstream_headers(upstream_headers, &mut headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response(status, headers, Body::from(body))
}

/// The upstream headers a converted answer keeps.
fn copy_upstream_headers(upstream: &HeaderMap, h: &mut HeaderMap) {
    for name in ["request-id", "retry-after"] {
        if let Some(v) = upstream.get(name) {
            h.insert(name, v.clone());
        }
    }
    for (k, v) in upstream {
        if k.as_str().starts_with("anthropic-ratelimit-") {
            h.append(k.clone(), v.clone());
        }
    }
}

fn response(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
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

/// An upstream stream event too long to convert (the events converted before it went out).
fn event_too_long() -> ProxyError {
    ProxyError::new(
        ErrorKind::BadGateway,
        Origin::Upstream,
        format!(
            "the upstream sent a stream event longer than {} MiB; the stream was ended",
            convert::sse::MAX_EVENT >> 20
        ),
    )
}

/// How a relayed stream's bytes reach the client.
enum Relay {
    /// As they are (the record's tap meters them); errors as Anthropic events.
    Raw,
    /// As they are, and nothing else: when the upstream breaks, the client's
    /// response is cut too (no final chunk), as it would be without the proxy.
    Passthrough,
    /// Parsed and converted to OpenAI chunks; errors as OpenAI error chunks.
    Chat(Box<(convert::SseParser, convert::stream::ChatStreamConverter)>),
    /// Parsed and converted to Responses events; errors as `response.failed`. The response is
    /// stored when it ends (if the request said `store`).
    Responses(Box<(convert::SseParser, ResponsesStreamConverter, Option<Keep>)>),
}

/// `repr(C)`: what an event touches (the flags, the watch, the upstream body, the record's tap)
/// comes first, on a few adjacent cache lines. With thousands of streams,
/// an event finds its stream's state out of the cache: laid out by size, as Rust does, the
/// fields an event reads were spread over the whole ~750 bytes, a miss for each line.
#[repr(C)]
struct StreamState<S> {
    done: bool,
    relay: Relay,
    watch: StreamWatch,
    upstream: S,
    /// The usage record, finished when the stream ends (or, if the client goes
    /// away first, when the body is dropped: abandoned).
    record: Option<InFlight>,
}

/// Relays an upstream event stream. If the upstream breaks, goes silent, or the
/// server is ending its streams, the client gets the error event of its dialect
/// and the record says why.
fn relay_stream(
    resp: upstream::UpResponse,
    watch: StreamWatch,
    record: Option<InFlight>,
    relay: Relay,
) -> Body {
    Body::new(StreamState {
        upstream: resp.bytes_stream(),
        watch,
        record,
        relay,
        done: false,
    })
}

/// The relayed stream is the response body itself: each poll waits for the upstream's next
/// chunk and hands on what it became (no stream adapter or future per chunk).
impl<S> http_body::Body for StreamState<S>
where
    S: Stream<Item = Result<Bytes, crate::upstream::BodyError>> + Unpin,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::task::Poll;
        let st = self.get_mut();
        loop {
            if st.done {
                return Poll::Ready(None);
            }
            let out = match std::task::ready!(st.watch.poll_next(&mut st.upstream, cx)) {
                StreamNext::Chunk(chunk) => st.on_chunk(chunk),
                StreamNext::Broken(e) => match st.on_broken(e) {
                    Ok(bytes) => bytes,
                    // Aborts the client's response: it sees an incomplete body.
                    Err(cut) => return Poll::Ready(Some(Err(cut))),
                },
                StreamNext::End => st.on_end(),
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl<S> StreamState<S> {
    /// The chunk's bytes for the client. A converted stream with an event longer than its
    /// parser holds ends there: what the chunk converted to before it, then the error.
    fn on_chunk(&mut self, chunk: Bytes) -> Bytes {
        // Room for what the chunk converts to at once: growing from empty, event by event, cost
        // ~2k instructions per Responses event in reallocations (callgrind). At most 16 KiB up
        // front: the buffer lives as long as the frame waits for a slow client.
        let mut out = match self.relay {
            Relay::Raw | Relay::Passthrough => Vec::new(),
            _ => Vec::with_capacity((chunk.len().saturating_mul(2) + 256).min(16 * 1024)),
        };
        let mut record = self.record.as_mut();
        // `cut`: an event past the parser's cap, before the converter finished.
        let (done, cut) = match &mut self.relay {
            Relay::Raw | Relay::Passthrough => {
                if let Some(r) = record {
                    r.observe(&chunk);
                }
                return chunk;
            }
            Relay::Chat(chat) => {
                let (parser, conv) = &mut **chat;
                parser.push(&chunk, |event, data| {
                    if let Some(r) = record.as_deref_mut() {
                        r.observe_event(event, data);
                    }
                    conv.on_event(event, data, &mut out)
                });
                (conv.is_done(), parser.too_long() && !conv.is_done())
            }
            Relay::Responses(resp) => {
                let (parser, conv, keep) = &mut **resp;
                parser.push(&chunk, |event, data| {
                    if let Some(r) = record.as_deref_mut() {
                        r.observe_event(event, data);
                    }
                    conv.on_event(event, data, &mut out)
                });
                let done = conv.is_done();
                if done && let Some(k) = keep.take() {
                    k.store(conv);
                }
                (done, parser.too_long() && !done)
            }
        };
        if cut {
            // What the chunk converted to before that event, then the error.
            let e = event_too_long();
            self.stop(&e);
            self.abort_into(&e, &mut out);
            return Bytes::from(out);
        }
        if let Some(r) = self.record.as_mut() {
            r.note_content();
        }
        if done {
            self.finish_ok();
        }
        Bytes::from(out)
    }

    /// The stream ends early with `e`: the record says so.
    fn stop(&mut self, e: &ProxyError) {
        tracing::warn!(reason = %e.message(), "stream ended early");
        self.done = true;
        if let Some(mut r) = self.record.take() {
            r.failed(e);
        }
    }

    /// A converted stream's ending with `e`, in its client's dialect (nothing for a relayed one).
    fn abort_into(&mut self, e: &ProxyError, out: &mut Vec<u8>) {
        match &mut self.relay {
            Relay::Chat(chat) => chat.1.abort(e, out),
            Relay::Responses(resp) => resp.1.abort(e, out),
            Relay::Raw | Relay::Passthrough => {}
        }
    }

    fn on_broken(&mut self, e: ProxyError) -> Result<Bytes, std::io::Error> {
        self.stop(&e);
        match self.relay {
            Relay::Raw => Ok(e.stream_event(Dialect::Anthropic)),
            Relay::Passthrough => Err(std::io::Error::other(e.message().into_owned())),
            Relay::Chat(_) | Relay::Responses(_) => {
                let mut out = Vec::new();
                self.abort_into(&e, &mut out);
                Ok(Bytes::from(out))
            }
        }
    }

    fn on_end(&mut self) -> Bytes {
        let mut out = Vec::new();
        match &mut self.relay {
            Relay::Chat(chat) => chat.1.finish(&mut out),
            Relay::Responses(resp) => {
                let (_, conv, keep) = &mut **resp;
                conv.finish(&mut out);
                if let Some(k) = keep.take() {
                    k.store(conv);
                }
            }
            Relay::Raw | Relay::Passthrough => {}
        }
        self.finish_ok();
        Bytes::from(out)
    }

    fn finish_ok(&mut self) {
        self.done = true;
        if let Some(mut r) = self.record.take() {
            r.completed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_event_past_the_cap_ends_a_chat_stream_after_what_its_chunk_converted_to() {
        let (_end, limits) = upstream::stream_limits(std::time::Duration::from_secs(60));
        let conv = convert::stream::ChatStreamConverter::with_id("chatcmpl-1", "m", false, 1);
        let mut st = StreamState {
            upstream: futures_util::stream::empty::<Result<Bytes, crate::upstream::BodyError>>(),
            watch: limits.watch(),
            record: None,
            relay: Relay::Chat(Box::new((convert::SseParser::new(), conv))),
            done: false,
        };
        let mut chunk = br#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,"output_tokens":1}}}

event: content_block_delta
data: "#
            .to_vec();
        chunk.resize(chunk.len() + convert::sse::MAX_EVENT + 1, b'x');
        let out = st.on_chunk(Bytes::from(chunk));
        let text = String::from_utf8_lossy(&out);
        let role = text.find(r#""role":"assistant""#).expect("the role chunk");
        let error = text.find("longer than 16 MiB").expect("the error chunk");
        assert!(role < error, "{text}");
        assert!(!text.contains("[DONE]"), "{text}");
        assert!(st.done);
    }

    #[test]
    fn results_urls_lead_back_to_the_proxy_and_nothing_else_changes() {
        let body = br#"{"data":[{"id":"b1","results_url" : "https://api.anthropic.com/v1/messages/batches/b1/results","z":1},{"id":"b2","results_url":null}],"has_more":false}"#;
        let out = redirect_results(body, "http://127.0.0.1:8082/min").unwrap();
        let want = br#"{"data":[{"id":"b1","results_url" : "http://127.0.0.1:8082/min/v1/messages/batches/b1/results","z":1},{"id":"b2","results_url":null}],"has_more":false}"#;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(want.to_vec()).unwrap()
        );
        assert!(redirect_results(br#"{"results_url":null}"#, "http://x").is_none());
        assert!(
            redirect_results(br#"{"results_url":"https://elsewhere/x"}"#, "http://x").is_none()
        );
        assert!(redirect_results(br#"{"results_url":"#, "http://x").is_none());
    }
}
