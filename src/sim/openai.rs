//! The simulated upstream's OpenAI-compatible `POST /v1/chat/completions`,
//! answering like Anthropic's own compatibility endpoint: the request is read
//! as OpenAI, answered by the same generator as the Messages API, and written
//! back in OpenAI's shapes.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::SimState;
use super::generate::{self, Directives, SimRequest};
use crate::convert;
use crate::convert::models::ModelAliases;

fn aliases() -> &'static ModelAliases {
    static ALIASES: OnceLock<ModelAliases> = OnceLock::new();
    ALIASES.get_or_init(ModelAliases::with_defaults)
}

fn openai_error(status: u16, body: Vec<u8>) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The same error as the Messages API gives, in the OpenAI envelope, keeping
/// its useful headers (`retry-after`, `request-id`, rate limits).
async fn to_openai_error(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let (status, body) = convert::response::error_to_openai(parts.status.as_u16(), &body);
    let mut out = openai_error(status, body);
    for (k, v) in &parts.headers {
        let n = k.as_str();
        if n == "retry-after"
            || n == "request-id"
            || n == "x-should-retry"
            || n.starts_with("anthropic-ratelimit-")
        {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

pub async fn chat_completions(state: Arc<SimState>, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Err(e) = super::authorize(&state, headers) {
        return to_openai_error(e.into_response()).await;
    }
    let opts = convert::request::ConvertOptions {
        default_max_tokens: 4096,
        aliases: aliases(),
    };
    let converted = match convert::request::chat_to_messages(body, &opts) {
        Ok(c) => c,
        Err(e) => {
            return openai_error(
                400,
                convert::response::openai_error_body(
                    &e.message,
                    "invalid_request_error",
                    e.param.as_deref(),
                    e.code,
                ),
            );
        }
    };
    let Ok(req) = serde_json::from_slice::<SimRequest>(&converted.body) else {
        return openai_error(
            500,
            convert::response::openai_error_body("conversion failed", "api_error", None, None),
        );
    };
    let dir = Directives::from_request(&req);
    if dir.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(dir.delay_ms)).await;
    }
    if let Some(status) = dir.status {
        return to_openai_error(super::error_response(
            status,
            &format!("Simulated error {status}"),
        ))
        .await;
    }
    let id = super::next_id(&state);
    let message = generate::respond(&req, &dir, body.len(), id);
    let created = crate::util::time::now_secs();
    if converted.stream {
        let mut conv = convert::stream::ChatStreamConverter::new(
            converted.client_model.clone(),
            converted.include_usage,
            created,
        )
        .legacy_functions(converted.legacy_functions);
        let mut parser = convert::SseParser::new();
        let mut chunks = Vec::new();
        for ev in generate::sse_events(&message, &dir) {
            let mut out = Vec::new();
            parser.push(&ev, |name, data| conv.on_event(name, data, &mut out));
            if !out.is_empty() {
                chunks.push(Bytes::from(out));
            }
        }
        let mut out = Vec::new();
        conv.finish(&mut out);
        if !out.is_empty() {
            chunks.push(Bytes::from(out));
        }
        super::sse_response(state, chunks, dir.gap_ms)
    } else {
        match convert::response::messages_to_chat_with(
            message.to_json().as_bytes(),
            &converted.client_model,
            created,
            converted.legacy_functions,
        ) {
            Ok(json) => {
                let mut resp = Response::new(axum::body::Body::from(json));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => openai_error(
                500,
                convert::response::openai_error_body(&e.to_string(), "api_error", None, None),
            ),
        }
    }
}
