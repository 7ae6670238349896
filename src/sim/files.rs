//! The Files API of the simulated upstream: multipart upload, list (paginated), metadata,
//! content download, delete — validated as the real service validates (a key, the
//! `anthropic-version` header, a multipart body with a `file` part, known ids).
//!
//! One simplification: every file is `downloadable` (the real service allows downloading only
//! the files that skills and code execution create), so a client's download can be tested.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{SimError, SimState, bodyless, check_auth, record_request, sim_err};

/// The largest file the service accepts (500 MB).
pub const MAX_FILE_BYTES: usize = 500 * 1000 * 1000;

/// One stored file.
struct StoredFile {
    id: String,
    filename: String,
    mime_type: String,
    created_at: u64,
    content: Bytes,
}

impl StoredFile {
    fn metadata(&self) -> Value {
        json!({
            "id": self.id,
            "type": "file",
            "filename": self.filename,
            "mime_type": self.mime_type,
            "size_bytes": self.content.len(),
            "created_at": rfc3339(self.created_at),
            "downloadable": true,
        })
    }
}

/// The files uploaded so far, by their order of creation.
#[derive(Default)]
pub struct Files {
    by_seq: Mutex<BTreeMap<u64, Arc<StoredFile>>>,
}

impl Files {
    fn find(&self, id: &str) -> Option<(u64, Arc<StoredFile>)> {
        let files = self.by_seq.lock().ok()?;
        files
            .iter()
            .find(|(_, f)| f.id == id)
            .map(|(k, f)| (*k, f.clone()))
    }

    /// How many files are stored.
    pub fn len(&self) -> usize {
        self.by_seq.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `2026-05-01T12:00:00Z` for seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let secs = secs as i64;
    let (y, m, d) = crate::util::time::civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// The common checks of every Files and Batches call.
pub(super) fn admit_call(state: &SimState, headers: &HeaderMap) -> Result<(), SimError> {
    check_auth(state, headers)?;
    if headers.get("anthropic-version").is_none() {
        return Err(sim_err(400, "anthropic-version: header is required"));
    }
    Ok(())
}

/// `limit`, `after_id`, `before_id` of a list call.
#[derive(serde::Deserialize, Default)]
pub struct PageQuery {
    limit: Option<String>,
    after_id: Option<String>,
    before_id: Option<String>,
}

/// One page of `items` (newest first), as the service lists: `data`, `first_id`, `last_id`,
/// `has_more`.
pub(super) fn page(items: Vec<(String, Value)>, q: &PageQuery) -> Result<Value, SimError> {
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(sim_err(
                    400,
                    "limit: Input should be greater than or equal to 1 and less than or equal to 1000",
                ));
            }
        },
    };
    if q.after_id.is_some() && q.before_id.is_some() {
        return Err(sim_err(
            400,
            "Only one of after_id and before_id may be given",
        ));
    }
    let position = |id: &str| items.iter().position(|(i, _)| i == id);
    let (from, to) = match (&q.after_id, &q.before_id) {
        (Some(a), _) => {
            let at =
                position(a).ok_or_else(|| sim_err(400, &format!("after_id: unknown id {a}")))?;
            (at + 1, (at + 1 + limit).min(items.len()))
        }
        (_, Some(b)) => {
            let at =
                position(b).ok_or_else(|| sim_err(400, &format!("before_id: unknown id {b}")))?;
            (at.saturating_sub(limit), at)
        }
        _ => (0, limit.min(items.len())),
    };
    let has_more = match &q.before_id {
        Some(_) => from > 0,
        None => to < items.len(),
    };
    let slice = &items[from.min(to)..to];
    Ok(json!({
        "data": slice.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
        "first_id": slice.first().map(|(i, _)| i.clone()),
        "last_id": slice.last().map(|(i, _)| i.clone()),
        "has_more": has_more,
    }))
}

/// `POST /v1/files`: a multipart body with a `file` part.
pub async fn upload(State(state): State<Arc<SimState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_FILE_BYTES + 64 * 1024).await else {
        return sim_err(413, "File exceeds the maximum size of 500 MB").into_response();
    };
    record_request(&state, &parts.method, &parts.uri, &parts.headers, &body);
    match store_upload(&state, &parts.headers, &body) {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn store_upload(state: &SimState, headers: &HeaderMap, body: &Bytes) -> Result<Value, SimError> {
    admit_call(state, headers)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(boundary) = boundary(ct) else {
        return Err(sim_err(
            400,
            "Invalid content type: expected multipart/form-data with a boundary",
        ));
    };
    let parts = parse_multipart(body, boundary)
        .ok_or_else(|| sim_err(400, "The multipart body could not be parsed"))?;
    let Some(file) = parts.into_iter().find(|p| p.name == "file") else {
        return Err(sim_err(400, "file: Field required"));
    };
    let Some(filename) = file.filename.filter(|f| !f.is_empty()) else {
        return Err(sim_err(400, "file: a filename is required"));
    };
    if file.content.len() > MAX_FILE_BYTES {
        return Err(sim_err(413, "File exceeds the maximum size of 500 MB"));
    }
    let seq = state.next_id();
    let stored = StoredFile {
        id: format!("file_011Sim{seq:016x}"),
        filename,
        mime_type: file
            .content_type
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        created_at: crate::util::time::now_secs(),
        content: body.slice_ref(file.content),
    };
    let meta = stored.metadata();
    if let Ok(mut files) = state.files.by_seq.lock() {
        files.insert(seq, Arc::new(stored));
    }
    Ok(meta)
}

/// `GET /v1/files`: newest first.
pub async fn list(
    State(state): State<Arc<SimState>>,
    Query(q): Query<PageQuery>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    let result = admit_call(&state, &parts.headers).and_then(|()| {
        let items: Vec<(String, Value)> = state
            .files
            .by_seq
            .lock()
            .map(|f| {
                f.values()
                    .rev()
                    .map(|f| (f.id.clone(), f.metadata()))
                    .collect()
            })
            .unwrap_or_default();
        page(items, &q)
    });
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn lookup(
    state: &SimState,
    headers: &HeaderMap,
    id: &str,
) -> Result<(u64, Arc<StoredFile>), SimError> {
    admit_call(state, headers)?;
    state
        .files
        .find(id)
        .ok_or_else(|| sim_err(404, &format!("File not found: {id}")))
}

/// `GET /v1/files/{id}` (metadata) and `DELETE /v1/files/{id}`.
pub async fn one(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    let (seq, file) = match lookup(&state, &parts.headers, &id) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    if parts.method == axum::http::Method::DELETE {
        if let Ok(mut files) = state.files.by_seq.lock() {
            files.remove(&seq);
        }
        return axum::Json(json!({"id": file.id, "type": "file_deleted"})).into_response();
    }
    axum::Json(file.metadata()).into_response()
}

/// `GET /v1/files/{id}/content`: the bytes, in pieces (as a download arrives).
pub async fn content(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    let file = match lookup(&state, &parts.headers, &id) {
        Ok((_, f)) => f,
        Err(e) => return e.into_response(),
    };
    let len = file.content.len();
    let pieces: Vec<Result<Bytes, std::convert::Infallible>> = (0..len)
        .step_by(64 * 1024)
        .map(|at| Ok(file.content.slice(at..(at + 64 * 1024).min(len))))
        .collect();
    let mut resp = Response::new(Body::from_stream(futures_util::stream::iter(pieces)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&file.mime_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let safe: String = file
        .filename
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' || *c == ' ')
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// Any other method on a Files or Batches path: a 405 in the service's envelope.
pub async fn method_not_allowed(req: Request) -> Response {
    super::error_response(
        405,
        &format!(
            "Method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub(super) fn boundary(content_type: &str) -> Option<&str> {
    let mut it = content_type.split(';');
    let kind = it.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    it.filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|b| !b.is_empty())
}

pub(super) struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub content: &'a [u8],
}

/// The parts of a multipart body (RFC 7578); `None` when it is malformed.
pub(super) fn parse_multipart<'a>(body: &'a [u8], boundary: &str) -> Option<Vec<Part<'a>>> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut at = memchr::memmem::find(body, delim)? + delim.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        let rest = rest.strip_prefix(b"\r\n")?;
        let head_end = memchr::memmem::find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        let content_start = head_end + 4;
        let mut closing = b"\r\n".to_vec();
        closing.extend_from_slice(delim);
        let content_len = memchr::memmem::find(&rest[content_start..], &closing)?;
        let content = &rest[content_start..content_start + content_len];
        let mut part = Part {
            name: String::new(),
            filename: None,
            content_type: None,
            content,
        };
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                for p in v.split(';').skip(1) {
                    if let Some((pk, pv)) = p.trim().split_once('=') {
                        let pv = pv.trim().trim_matches('"').to_owned();
                        match pk.trim() {
                            "name" => part.name = pv,
                            "filename" => part.filename = Some(pv),
                            _ => {}
                        }
                    }
                }
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                part.content_type = Some(v.trim().to_owned());
            }
        }
        parts.push(part);
        at = at + 2 + content_start + content_len + closing.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_parts_are_read() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nx\r\n--xyz--\r\n";
        let parts = parse_multipart(body, "xyz").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "file");
        assert_eq!(parts[0].filename.as_deref(), Some("a.txt"));
        assert_eq!(parts[0].content_type.as_deref(), Some("text/plain"));
        assert_eq!(parts[0].content, b"hello");
        assert_eq!(parts[1].content, b"x");
        assert!(parse_multipart(b"--xyz\r\nbroken", "xyz").is_none());
        assert_eq!(boundary("multipart/form-data; boundary=\"q\""), Some("q"));
        assert_eq!(boundary("application/json"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
