//! The Responses API's WebSocket mode: `GET /openai/v1/responses` with an upgrade.
//!
//! The client sends `response.create` messages whose payload is the HTTP create body; each is
//! answered with the same events the HTTP stream carries, one JSON text frame each, ending with
//! `response.completed`, `response.incomplete` or `response.failed` (or an `error` event when the
//! request is refused before it starts). Responses run one after another; a message that arrives
//! while one runs waits its turn.
//!
//! Each `response.create` goes through the same pipeline as `POST …/responses` (access, credential,
//! conversion, usage record), as a request made in-process with the upgrade request's headers. The
//! socket keeps its last response's items, so a continuation with `previous_response_id` works with
//! `store: false` too (as OpenAI's connection-local cache); an id the socket does not hold is looked
//! up as over HTTP. `generate: false` prepares a continuation without calling the model.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::Request;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::access;
use crate::convert::responses as r;
use crate::error::{ErrorKind, Origin, ProxyError};
use crate::pipeline::{self, Prior};
use crate::routes::{Dialect, Mode, Route};
use crate::state::AppState;

/// How long one socket may serve (OpenAI closes its sockets after 60 minutes too); the client
/// is told with `websocket_connection_limit_reached` and reconnects.
const MAX_SOCKET_AGE: Duration = Duration::from_secs(60 * 60);

/// Headers of the upgrade request that describe the upgrade, not the requests made on it.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "content-length",
    "transfer-encoding",
];

/// `GET …/openai/v1/responses`: the upgrade, or a clear error for anything else.
pub(super) async fn upgrade(state: Arc<AppState>, mode: Mode, req: Request) -> Response {
    if mode == Mode::Passthrough {
        // The pipeline answers /pt's Responses requests (404 naming the routes that serve it).
        return pipeline::handle(state, mode, Route::Responses, req).await;
    }
    let (mut parts, _body) = req.into_parts();
    if let Err(e) = access::check_upgrade(state.proxy_token.as_ref(), &state.keys, &parts.headers) {
        return e.into_response(Dialect::OpenAi);
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws,
        Err(rejection) => {
            // A plain GET (no upgrade asked): this path creates responses with POST.
            let kind = if !parts.headers.contains_key(header::UPGRADE) {
                ErrorKind::MethodNotAllowed
            } else {
                ErrorKind::InvalidRequest
            };
            return ProxyError::new(
                kind,
                Origin::Client,
                format!(
                    "GET {} is the Responses API's WebSocket mode and needs a WebSocket upgrade \
                     ({}); create a response over HTTP with POST",
                    parts.uri.path(),
                    rejection.body_text()
                ),
            )
            .into_response(Dialect::OpenAi);
        }
    };
    let mut headers = parts.headers;
    for name in UPGRADE_HEADERS {
        headers.remove(*name);
    }
    let limit = state.settings.limits.max_body_bytes;
    let session = Session {
        state,
        mode,
        path: parts.uri.path().to_owned(),
        headers,
        last: None,
        queued: VecDeque::new(),
        opened: Instant::now(),
        served: Served::default(),
    };
    // The connection's place on its serving thread stays taken while the session lasts.
    let hold = parts
        .extensions
        .remove::<Arc<super::workers::ConnectionHold>>();
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            session.run(socket).await;
            drop(hold);
        })
        .into_response()
}

/// One socket's state.
struct Session {
    state: Arc<AppState>,
    mode: Mode,
    /// The upgrade's path: each response is made as a POST to it.
    path: String,
    /// The upgrade request's headers (credentials, identity), for every response.
    headers: HeaderMap,
    /// The last response made on this socket, for `previous_response_id`.
    last: Option<Prior>,
    /// Messages that arrived while a response was running.
    queued: VecDeque<Utf8Bytes>,
    opened: Instant,
    /// What the socket served (logged when it closes).
    served: Served,
}

/// Counts of what one socket served.
#[derive(Debug, Default)]
struct Served {
    /// `response.create` messages that called the model.
    responses: u32,
    /// `generate: false` preparations.
    warm_ups: u32,
    /// Responses that continued one this socket holds (`previous_response_id`).
    continued: u32,
}

/// The socket is gone (closed by the client, or broken): stop serving it.
struct Gone;

impl Session {
    /// Serves the socket; its opening and closing are logged (target `ccproxy::socket`), so a
    /// client's use of the WebSocket mode shows in the log next to its requests.
    async fn run(mut self, socket: WebSocket) {
        let mode = self.mode.name();
        tracing::info!(target: "ccproxy::socket", mode, path = %self.path, "responses websocket opened");
        self.serve(socket).await;
        let s = &self.served;
        tracing::info!(
            target: "ccproxy::socket",
            mode,
            path = %self.path,
            responses = s.responses,
            warm_ups = s.warm_ups,
            continued = s.continued,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            "responses websocket closed"
        );
    }

    async fn serve(&mut self, mut socket: WebSocket) {
        // Shutdown has begun: a session closes when it is idle (a response in progress is
        // finished first, or ended with the streams when the grace period is over).
        let shutdown = shutting_down(self.state.draining.subscribe());
        tokio::pin!(shutdown);
        loop {
            let text = match self.queued.pop_front() {
                Some(t) => t,
                None => {
                    let msg = tokio::select! {
                        m = socket.recv() => m,
                        () = &mut shutdown => {
                            close(&mut socket, close_code::AWAY, "ccproxy is shutting down").await;
                            return;
                        }
                    };
                    match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Binary(_))) => {
                            let e = ProxyError::invalid(
                                "binary frames are not supported: send response.create as JSON text",
                            );
                            if send_error(&mut socket, &e, None).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        // Pings are answered by the socket itself, on its next read or write.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        // The close reply the socket queued goes out with the flush.
                        Some(Ok(Message::Close(_))) => {
                            let _ = futures_util::SinkExt::flush(&mut socket).await;
                            return;
                        }
                        Some(Err(_)) | None => return,
                    }
                }
            };
            if self.opened.elapsed() >= MAX_SOCKET_AGE {
                let e = ProxyError::invalid(
                    "this WebSocket has reached its 60-minute limit: open a new one to continue",
                )
                .with_code("websocket_connection_limit_reached");
                let _ = send_error(&mut socket, &e, None).await;
                close(&mut socket, close_code::NORMAL, "connection limit reached").await;
                return;
            }
            if self.message(&mut socket, &text).await.is_err() {
                return;
            }
        }
    }

    /// One client message.
    async fn message(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), Gone> {
        let mut body: Map<String, Value> = match serde_json::from_str(text) {
            Ok(b) => b,
            Err(e) => {
                let e = ProxyError::invalid(format!(
                    "a client message must be a JSON object with a `type`: {e}"
                ));
                return send_error(socket, &e, None).await;
            }
        };
        match body.remove("type") {
            Some(Value::String(t)) if t == "response.create" => {}
            // Codex acknowledges each response it has processed: nothing to do.
            Some(Value::String(t)) if t == "response.processed" => return Ok(()),
            other => {
                let e = ProxyError::invalid(format!(
                    "unsupported client event type {}: this server accepts response.create",
                    other.unwrap_or(Value::Null)
                ))
                .with_param("type");
                return send_error(socket, &e, None).await;
            }
        }
        let generate = body.remove("generate");
        body.insert("stream".to_owned(), Value::Bool(true));
        let Ok(bytes) = serde_json::to_vec(&body) else {
            let e = ProxyError::invalid("the message could not be re-encoded");
            return send_error(socket, &e, None).await;
        };
        let continues = body
            .get("previous_response_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if generate == Some(Value::Bool(false)) {
            self.served.warm_ups = self.served.warm_ups.saturating_add(1);
            return self.warm_up(socket, &bytes, continues.as_deref()).await;
        }
        self.served.responses = self.served.responses.saturating_add(1);
        self.create(socket, Bytes::from(bytes), continues).await
    }

    /// The items of the response this request continues, when this socket holds it.
    fn prior_for(&self, continues: Option<&str>) -> Option<&Prior> {
        self.last
            .as_ref()
            .filter(|p| continues.is_some_and(|id| id == p.id))
    }

    /// `generate: false`: a response with no output whose input a continuation can build on.
    async fn warm_up(
        &mut self,
        socket: &mut WebSocket,
        body: &[u8],
        continues: Option<&str>,
    ) -> Result<(), Gone> {
        let prior: &[Box<RawValue>] = self.prior_for(continues).map_or(&[], |p| &p.items[..]);
        let opts = crate::convert::request::ConvertOptions {
            default_max_tokens: self.state.settings.upstream.default_max_tokens,
            aliases: &self.state.aliases,
            auto_cache: self.state.settings.upstream.openai_prompt_caching,
        };
        let now = crate::util::time::now_secs();
        let checked = r::responses_to_messages(body, prior, &r::NoStore, &opts, now)
            .map_err(ProxyError::from)
            .and_then(|c| {
                if c.previous_response_id.is_some() && prior.is_empty() {
                    return Err(previous_not_found(continues.unwrap_or_default()));
                }
                Ok(c)
            })
            .and_then(|c| Ok((c, r::input_items(body)?)));
        let (converted, input) = match checked {
            Ok(v) => v,
            Err(e) => return send_error(socket, &e, continues).await,
        };
        let ctx = converted.context;
        let mut items: Vec<Box<RawValue>> = prior.to_vec();
        items.extend(input);
        self.last = Some(Prior {
            id: ctx.id.clone(),
            items: items.into(),
        });
        let created = ctx.response(crate::api::responses::Status::InProgress);
        let done = ctx.response(crate::api::responses::Status::Completed);
        for (seq, (kind, resp)) in [("response.created", created), ("response.completed", done)]
            .into_iter()
            .enumerate()
        {
            let event = serde_json::json!({"type": kind, "sequence_number": seq, "response": resp});
            send(socket, Utf8Bytes::from(event.to_string())).await?;
        }
        Ok(())
    }

    /// One response through the pipeline, its events relayed as frames.
    async fn create(
        &mut self,
        socket: &mut WebSocket,
        body: Bytes,
        continues: Option<String>,
    ) -> Result<(), Gone> {
        let input = r::input_items(&body).unwrap_or_default();
        let prior = self.prior_for(continues.as_deref()).cloned();
        if prior.is_some() {
            self.served.continued = self.served.continued.saturating_add(1);
        }
        let mut req = Request::new(Body::from(body.clone()));
        *req.method_mut() = Method::POST;
        if let Ok(uri) = self.path.parse() {
            *req.uri_mut() = uri;
        }
        *req.headers_mut() = self.headers.clone();
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Some(p) = &prior {
            req.extensions_mut().insert(p.clone());
        }
        let resp = pipeline::handle(self.state.clone(), self.mode, Route::Responses, req).await;
        if !resp.status().is_success() {
            return relay_refusal(socket, resp, continues.as_deref()).await;
        }
        let mut done = None;
        let mut events = resp.into_body().into_data_stream();
        let mut buf = BytesMut::new();
        loop {
            tokio::select! {
                chunk = events.next() => match chunk {
                    Some(Ok(bytes)) => {
                        buf.extend_from_slice(&bytes);
                        while let Some((kind, data)) = next_event(&mut buf) {
                            if kind == "response.completed" || kind == "response.incomplete" {
                                done = Some(data.clone());
                            }
                            send(socket, data).await?;
                        }
                    }
                    Some(Err(e)) => {
                        let e = ProxyError::new(ErrorKind::BadGateway, Origin::Upstream, format!("the response stream broke: {e}"));
                        send_error(socket, &e, None).await?;
                        break;
                    }
                    None => break,
                },
                // The client may close, ping, or send its next request while this one runs.
                msg = socket.recv() => match msg {
                    Some(Ok(Message::Text(t))) => self.queued.push_back(t),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Binary(_))) => {}
                    Some(Ok(Message::Close(_))) => {
                        let _ = futures_util::SinkExt::flush(socket).await;
                        return Err(Gone);
                    }
                    Some(Err(_)) | None => return Err(Gone),
                },
            }
        }
        if let Some(done) = done {
            self.remember(prior, input, &done);
        }
        Ok(())
    }

    /// Keeps the finished response's items for a continuation on this socket.
    fn remember(&mut self, prior: Option<Prior>, input: Vec<Box<RawValue>>, done: &str) {
        #[derive(serde::Deserialize)]
        struct Done<'a> {
            #[serde(borrow)]
            response: Finished<'a>,
        }
        #[derive(serde::Deserialize)]
        struct Finished<'a> {
            id: String,
            #[serde(borrow)]
            output: Vec<&'a RawValue>,
        }
        let Ok(d) = serde_json::from_str::<Done>(done) else {
            return;
        };
        let mut items: Vec<Box<RawValue>> = prior.map(|p| p.items.to_vec()).unwrap_or_default();
        items.extend(input);
        items.extend(d.response.output.into_iter().map(ToOwned::to_owned));
        self.last = Some(Prior {
            id: d.response.id,
            items: items.into(),
        });
    }
}

/// The next complete SSE event in `buf` (`event: <type>\ndata: <json>\n\n`, as the Responses
/// stream converter writes them): its type and its JSON.
fn next_event(buf: &mut BytesMut) -> Option<(String, Utf8Bytes)> {
    loop {
        let end = memchr::memmem::find(buf, b"\n\n")?;
        let frame = buf.split_to(end + 2);
        let frame = std::str::from_utf8(&frame[..end]).ok()?;
        let mut kind = "";
        let mut data = None;
        for line in frame.lines() {
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k;
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(d);
            }
        }
        if let Some(d) = data {
            return Some((kind.to_owned(), Utf8Bytes::from(d)));
        }
    }
}

/// An answer that is not an event stream (the request was refused, or failed before it
/// started), as an `error` event carrying its status, as OpenAI's WebSocket mode sends them.
async fn relay_refusal(
    socket: &mut WebSocket,
    resp: Response,
    continues: Option<&str>,
) -> Result<(), Gone> {
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    send(socket, error_event(status, &body, continues)).await
}

/// `{"type":"error","status":…,"error":{…}}` from an OpenAI error body.
fn error_event(status: StatusCode, body: &[u8], continues: Option<&str>) -> Utf8Bytes {
    let mut error = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("error").map(Value::take))
        .unwrap_or_else(|| {
            serde_json::json!({"type": "api_error", "code": null, "param": null,
                "message": String::from_utf8_lossy(body)})
        });
    if status == StatusCode::NOT_FOUND
        && continues.is_some()
        && error.get("param").and_then(Value::as_str) == Some("previous_response_id")
    {
        error["code"] = Value::from("previous_response_not_found");
    }
    let event = serde_json::json!({"type": "error", "status": status.as_u16(), "error": error});
    Utf8Bytes::from(event.to_string())
}

fn previous_not_found(id: &str) -> ProxyError {
    ProxyError::not_found(format!(
        "previous response {id:?} is not held by this connection or the store: send the whole \
         conversation in `input` without previous_response_id"
    ))
    .with_param("previous_response_id")
    .with_code("previous_response_not_found")
}

/// A proxy-made error as an `error` event.
async fn send_error(
    socket: &mut WebSocket,
    e: &ProxyError,
    continues: Option<&str>,
) -> Result<(), Gone> {
    send(
        socket,
        error_event(e.status(), &e.body(Dialect::OpenAi), continues),
    )
    .await
}

/// Completes when the server starts shutting down (never without a server).
async fn shutting_down(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    if shutdown.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn send(socket: &mut WebSocket, text: Utf8Bytes) -> Result<(), Gone> {
    socket.send(Message::Text(text)).await.map_err(|_| Gone)
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}
