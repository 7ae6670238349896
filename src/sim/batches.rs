//! Message Batches in the simulated upstream: create, retrieve, list, cancel, delete, and the
//! results as JSONL — validated as the real service validates.
//!
//! The batch object and its life: a new batch is `in_progress`; the simulated service has
//! processed it by the next call, which sees it `ended` with its `results_url` (a batch one of
//! whose requests says `[sim:batch-slow]` stays `in_progress` until it is canceled). Each
//! request's `params` are checked when the batch is processed, as the real service does: an
//! invalid one is an `errored` result, a valid one a `succeeded` message generated as
//! `/v1/messages` would answer it.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::files::{PageQuery, admit_call, page, rfc3339};
use super::generate::{self, Directives, SimRequest};
use super::{
    Cred, SimError, SimState, bodyless, check_auth, has_identity, record_request, sim_err,
};

/// How many requests one batch may hold.
const MAX_REQUESTS: usize = 100_000;
/// How long a batch may take before it expires, and how long results are kept.
const DAY: u64 = 86_400;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    InProgress,
    Canceling,
    Ended,
}

struct Batch {
    id: String,
    created_at: u64,
    /// Set by the first call after the one that created it (unless slow).
    ended_at: Option<u64>,
    cancel_initiated_at: Option<u64>,
    slow: bool,
    status: Status,
    /// One entry per request: its custom id and its result (the JSON of `result`).
    results: Vec<(String, Value)>,
    /// The host the batch was created through (for `results_url`).
    host: String,
}

impl Batch {
    /// The processing the simulated service did since the last call.
    fn advance(&mut self, now: u64) {
        match self.status {
            Status::InProgress if !self.slow => {
                self.status = Status::Ended;
                self.ended_at = Some(now);
            }
            Status::Canceling => {
                for (_, r) in &mut self.results {
                    *r = json!({"type": "canceled"});
                }
                self.status = Status::Ended;
                self.ended_at = Some(now);
            }
            _ => {}
        }
    }

    fn object(&self) -> Value {
        let count = |kind: &str| {
            self.results
                .iter()
                .filter(|(_, r)| r["type"] == kind)
                .count()
        };
        let ended = self.status == Status::Ended;
        let counts = if ended {
            json!({
                "processing": 0,
                "succeeded": count("succeeded"),
                "errored": count("errored"),
                "canceled": count("canceled"),
                "expired": count("expired"),
            })
        } else {
            json!({"processing": self.results.len(), "succeeded": 0, "errored": 0,
                   "canceled": 0, "expired": 0})
        };
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": match self.status {
                Status::InProgress => "in_progress",
                Status::Canceling => "canceling",
                Status::Ended => "ended",
            },
            "request_counts": counts,
            "ended_at": self.ended_at.map(rfc3339),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.created_at + DAY),
            "archived_at": null,
            "cancel_initiated_at": self.cancel_initiated_at.map(rfc3339),
            "results_url": ended.then(|| format!(
                "http://{}/v1/messages/batches/{}/results", self.host, self.id
            )),
        })
    }
}

/// The batches created so far, by their order of creation.
#[derive(Default)]
pub struct Batches {
    by_seq: Mutex<BTreeMap<u64, Batch>>,
}

#[derive(serde::Deserialize)]
struct CreateBody<'a> {
    #[serde(borrow)]
    requests: Option<Vec<BatchRequest<'a>>>,
}

#[derive(serde::Deserialize)]
struct BatchRequest<'a> {
    custom_id: Option<String>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

fn json_response(v: Value) -> Response {
    axum::Json(v).into_response()
}

/// `POST /v1/messages/batches`.
pub async fn create(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 256 * 1000 * 1000).await else {
        return sim_err(413, "Batch exceeds the maximum size of 256 MB").into_response();
    };
    record_request(&state, &parts.method, &parts.uri, &parts.headers, &body);
    match create_batch(&state, &parts.headers, &body) {
        Ok(v) => json_response(v),
        Err(e) => e.into_response(),
    }
}

fn create_batch(state: &SimState, headers: &HeaderMap, body: &[u8]) -> Result<Value, SimError> {
    admit_call(state, headers)?;
    let oauth = matches!(check_auth(state, headers)?, Cred::OAuth);
    let parsed: CreateBody = serde_json::from_slice(body).map_err(|e| {
        sim_err(
            400,
            &format!("There was an error parsing the body of your request: {e}"),
        )
    })?;
    let requests = parsed
        .requests
        .ok_or_else(|| sim_err(400, "requests: Field required"))?;
    if requests.is_empty() {
        return Err(sim_err(400, "requests: List should have at least 1 item"));
    }
    if requests.len() > MAX_REQUESTS {
        return Err(sim_err(
            400,
            &format!("requests: List should have at most {MAX_REQUESTS} items"),
        ));
    }
    let mut seen = HashSet::new();
    let mut results = Vec::with_capacity(requests.len());
    let mut slow = false;
    for (i, r) in requests.iter().enumerate() {
        let Some(custom_id) = r.custom_id.as_deref() else {
            return Err(sim_err(
                400,
                &format!("requests.{i}.custom_id: Field required"),
            ));
        };
        let valid = (1..=64).contains(&custom_id.len())
            && custom_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(sim_err(
                400,
                &format!(
                    "requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
                ),
            ));
        }
        if !seen.insert(custom_id) {
            return Err(sim_err(
                400,
                &format!("requests.{i}.custom_id: Duplicate custom_id {custom_id:?}"),
            ));
        }
        let Some(params) = r.params else {
            return Err(sim_err(
                400,
                &format!("requests.{i}.params: Field required"),
            ));
        };
        slow |= params.get().contains("[sim:batch-slow]");
        let n = state.next_id();
        results.push((custom_id.to_owned(), process(params, oauth, n)));
    }
    let seq = state.next_id();
    let now = crate::util::time::now_secs();
    let batch = Batch {
        id: format!("msgbatch_011Sim{seq:016x}"),
        created_at: now,
        ended_at: None,
        cancel_initiated_at: None,
        slow,
        status: Status::InProgress,
        results,
        host: headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("api.anthropic.com")
            .to_owned(),
    };
    let object = batch.object();
    if let Ok(mut all) = state.batches.by_seq.lock() {
        all.insert(seq, batch);
    }
    Ok(object)
}

/// One request of a batch, processed: a `succeeded` message or an `errored` result.
fn process(params: &RawValue, oauth: bool, n: u64) -> Value {
    let errored = |message: &str| {
        json!({"type": "errored", "error": {"type": "error", "error": {
            "type": "invalid_request_error", "message": message}}})
    };
    let req: SimRequest = match serde_json::from_str(params.get()) {
        Ok(r) => r,
        Err(e) => return errored(&format!("params: {e}")),
    };
    if req.model.is_none() {
        return errored("model: Field required");
    }
    if req.max_tokens.is_none() {
        return errored("max_tokens: Field required");
    }
    if req.messages.is_none() {
        return errored("messages: Field required");
    }
    if req.stream == Some(true) {
        return errored("stream: Streaming is not supported in batches");
    }
    if oauth && !has_identity(req.system) {
        return errored(
            "This credential is only authorized for use with Claude Code and cannot be used for other API requests.",
        );
    }
    let offer = match generate::offer(&req) {
        Ok(o) => o,
        Err(m) => return errored(&m),
    };
    let dir = Directives::from_request(&req);
    let calls = offer.calls(dir.tools, dir.tool_result.is_some());
    let message = generate::respond(req.model.as_deref(), &calls, &dir, params.get().len(), n);
    let message: Value = serde_json::from_str(&message.to_json()).unwrap_or_default();
    json!({"type": "succeeded", "message": message})
}

/// Finds batch `id`, after the processing done since the last call.
fn with_batch<T>(
    state: &SimState,
    headers: &HeaderMap,
    id: &str,
    f: impl FnOnce(&mut BTreeMap<u64, Batch>, u64) -> Result<T, SimError>,
) -> Result<T, SimError> {
    admit_call(state, headers)?;
    let mut all = state
        .batches
        .by_seq
        .lock()
        .map_err(|_| sim_err(500, "batches unavailable"))?;
    let now = crate::util::time::now_secs();
    let seq = all
        .iter()
        .find(|(_, b)| b.id == id)
        .map(|(k, _)| *k)
        .ok_or_else(|| sim_err(404, &format!("Batch not found: {id}")))?;
    if let Some(b) = all.get_mut(&seq) {
        b.advance(now);
    }
    f(&mut all, seq)
}

fn missing() -> SimError {
    sim_err(500, "batch vanished")
}

/// `GET /v1/messages/batches/{id}` and `DELETE` (only once it ended).
pub async fn one(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    let delete = parts.method == axum::http::Method::DELETE;
    let result = with_batch(&state, &parts.headers, &id, |all, seq| {
        let b = all.get(&seq).ok_or_else(missing)?;
        if !delete {
            return Ok(b.object());
        }
        if b.status != Status::Ended {
            return Err(sim_err(
                400,
                &format!("Batch {id} cannot be deleted while it is in progress: cancel it first"),
            ));
        }
        all.remove(&seq);
        Ok(json!({"id": id, "type": "message_batch_deleted"}))
    });
    match result {
        Ok(v) => json_response(v),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/messages/batches/{id}/cancel`.
pub async fn cancel(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    let result = with_batch(&state, &parts.headers, &id, |all, seq| {
        let b = all.get_mut(&seq).ok_or_else(missing)?;
        if b.status == Status::InProgress {
            b.status = Status::Canceling;
            b.cancel_initiated_at = Some(crate::util::time::now_secs());
        }
        Ok(b.object())
    });
    match result {
        Ok(v) => json_response(v),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/messages/batches/{id}/results`: one JSON line per request, in pieces.
pub async fn results(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    let result = with_batch(&state, &parts.headers, &id, |all, seq| {
        let b = all.get(&seq).ok_or_else(missing)?;
        if b.status != Status::Ended {
            return Err(sim_err(
                404,
                &format!("Batch {id} has not ended: its results are not available yet"),
            ));
        }
        Ok(b.results
            .iter()
            .map(|(custom_id, r)| {
                let mut line = json!({"custom_id": custom_id, "result": r}).to_string();
                line.push('\n');
                Ok::<_, std::convert::Infallible>(Bytes::from(line))
            })
            .collect::<Vec<_>>())
    });
    match result {
        Ok(lines) => {
            let body = axum::body::Body::from_stream(futures_util::stream::iter(lines));
            let mut resp = Response::new(body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/binary"),
            );
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/messages/batches`: newest first.
pub async fn list(
    State(state): State<Arc<SimState>>,
    Query(q): Query<PageQuery>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    let result = admit_call(&state, &parts.headers).and_then(|()| {
        let now = crate::util::time::now_secs();
        let items: Vec<(String, Value)> = state
            .batches
            .by_seq
            .lock()
            .map(|mut all| {
                all.values_mut()
                    .rev()
                    .map(|b| {
                        b.advance(now);
                        (b.id.clone(), b.object())
                    })
                    .collect()
            })
            .unwrap_or_default();
        page(items, &q)
    });
    match result {
        Ok(v) => json_response(v),
        Err(e) => e.into_response(),
    }
}
