//! The `body` phase: the request body, read within its limits (size, stalls),
//! and checked for absurd JSON nesting before anything parses it — or, on the relay
//! routes (Files uploads, large batches), streamed through to the upstream within the
//! upload limit, never held whole.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;

use crate::error::{ErrorKind, Origin, ProxyError};

/// The deepest JSON nesting accepted in a request body, on every route and in
/// every mode (serde_json's own recursion limit is the same).
pub const MAX_JSON_DEPTH: usize = 128;

/// Whether a relay route's body is streamed through rather than read whole: any body but
/// JSON declared within `max_body` bytes (multipart uploads, binary content, a batch larger
/// than `max_body`). A JSON body sent without a length is read whole (within `max_body`).
pub fn streams(headers: &HeaderMap, max_body: usize) -> bool {
    let declared = declared_length(headers);
    let has_body = declared.map_or(headers.contains_key(header::TRANSFER_ENCODING), |n| n > 0);
    if !has_body {
        return false;
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start().to_ascii_lowercase();
            v.starts_with("application/json")
        });
    !json || declared.is_some_and(|n| n > max_body as u64)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Why a streamed body stopped early: the pipeline answers with it (413, 408, 400)
/// rather than with the upstream's broken request.
pub type Fault = std::sync::Arc<std::sync::Mutex<Option<ProxyError>>>;

/// Takes the fault a streamed body recorded, if any.
pub fn take_fault(fault: &Fault) -> Option<ProxyError> {
    fault.lock().ok().and_then(|mut f| f.take())
}

/// A client's body streamed through: its declared length goes upstream as the exact size
/// (so the upstream sees `content-length`, not chunks); more than `limit` bytes, or no bytes
/// for `stall`, ends it with an error recorded in its [`Fault`].
pub async fn stream(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    stall: Duration,
) -> Result<
    (
        impl http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
        Fault,
    ),
    ProxyError,
> {
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(upload_too_large(limit));
    }
    let fault = Fault::default();
    let streamed = Streamed {
        body,
        limit: limit as u64,
        seen: 0,
        declared,
        stall,
        timer: Box::pin(tokio::time::sleep(stall)),
        started: false,
        fault: fault.clone(),
    };
    Ok((streamed, fault))
}

fn upload_too_large(limit: usize) -> ProxyError {
    ProxyError::new(
        ErrorKind::TooLarge,
        Origin::Client,
        format!("request body exceeds the upload limit of {limit} bytes (max_upload_bytes)"),
    )
}

/// See [`stream`].
struct Streamed {
    body: Body,
    limit: u64,
    seen: u64,
    declared: Option<u64>,
    stall: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The stall timer starts when the upstream first asks for the body.
    started: bool,
    fault: Fault,
}

impl Streamed {
    fn fail(&mut self, e: ProxyError) -> std::io::Error {
        let io = std::io::Error::other(e.message().into_owned());
        if let Ok(mut f) = self.fault.lock() {
            f.get_or_insert(e);
        }
        io
    }
}

impl http_body::Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if !this.started {
            this.started = true;
            let next = tokio::time::Instant::now() + this.stall;
            this.timer.as_mut().reset(next);
        }
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if this.seen > this.limit {
                    let e = upload_too_large(this.limit as usize);
                    return Poll::Ready(Some(Err(this.fail(e))));
                }
                let next = tokio::time::Instant::now() + this.stall;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = ProxyError::invalid("could not read the request body").with_cause(e);
                Poll::Ready(Some(Err(this.fail(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    let e = stalled(this.stall);
                    return Poll::Ready(Some(Err(this.fail(e))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.declared {
            Some(n) => http_body::SizeHint::with_exact(n),
            None => http_body::SizeHint::default(),
        }
    }
}

/// Reads the request body within `limit` bytes (413 past it, also when the
/// declared length already says so). A body that stalls — no bytes for `stall` —
/// is a 408 (the connection closes, and the request's concurrency slot frees).
pub async fn read(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
    stall: Duration,
) -> Result<Bytes, ProxyError> {
    let too_large = || {
        ProxyError::new(
            ErrorKind::TooLarge,
            Origin::Client,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(too_large());
    }
    let mut gathered = Gathered::default();
    loop {
        // A timer is armed only when the next piece is not there yet.
        let next = match body.frame().now_or_never() {
            Some(next) => next,
            None => tokio::time::timeout(stall, body.frame())
                .await
                .map_err(|_| stalled(stall))?,
        };
        let Some(frame) = next else {
            return Ok(gathered.finish());
        };
        let frame = frame
            .map_err(|e| ProxyError::invalid("could not read the request body").with_cause(e))?;
        if let Ok(data) = frame.into_data() {
            if gathered.len + data.len() > limit {
                drain(body).await;
                return Err(too_large());
            }
            gathered.push(data, declared);
        }
    }
}

fn stalled(stall: Duration) -> ProxyError {
    ProxyError::new(
        ErrorKind::RequestTimeout,
        Origin::Client,
        format!(
            "the request body stalled: nothing arrived for {} s",
            stall.as_secs_f64()
        ),
    )
}

/// A body's pieces: one piece (the usual case) is kept as it is, without a copy.
#[derive(Default)]
struct Gathered {
    first: Option<Bytes>,
    more: Option<bytes::BytesMut>,
    len: usize,
}

impl Gathered {
    fn push(&mut self, data: Bytes, declared: Option<u64>) {
        self.len += data.len();
        match (&mut self.more, self.first.take()) {
            (Some(b), _) => b.extend_from_slice(&data),
            (None, None) => self.first = Some(data),
            (None, Some(head)) => {
                let mut b = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
                b.extend_from_slice(&head);
                b.extend_from_slice(&data);
                self.more = Some(b);
            }
        }
    }

    fn finish(self) -> Bytes {
        match self.more {
            Some(b) => b.freeze(),
            None => self.first.unwrap_or_default(),
        }
    }
}

/// Reads and discards what a refused body still sends — at most [`DRAIN_BYTES`]
/// within [`DRAIN_TIME`] — so that a client writing its whole body before it
/// reads gets the 413 rather than a broken pipe when the connection closes.
async fn drain(mut body: Body) {
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// How much of a refused body is read (and discarded) before the refusal.
const DRAIN_BYTES: usize = 8 << 20;
/// How long a refused body is read before the refusal.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Refuses a JSON body (one starting with `{` or `[`) nested deeper than
/// [`MAX_JSON_DEPTH`]: a 400, before any converter or upstream sees it.
pub fn check_nesting(body: &[u8]) -> Result<(), ProxyError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if !matches!(first, Some(b'{' | b'[')) {
        return Ok(());
    }
    if json_depth_exceeds(body, MAX_JSON_DEPTH) {
        return Err(ProxyError::invalid(format!(
            "the request body nests JSON objects or arrays deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Whether brackets outside strings nest deeper than `max` (one pass, no
/// parsing). String contents — most of a large body — are skipped with memchr
/// (an 80 KB Claude Code request takes about 10 µs).
fn json_depth_exceeds(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => match string_end(body, i + 1) {
                Some(end) => i = end,
                None => return false,
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// The index of the quote that closes the string whose content starts at `from`:
/// the next quote not escaped (preceded by an even number of backslashes).
fn string_end(body: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr(b'"', &body[from..])?;
        let backslashes = body[..at].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(at);
        }
        from = at + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert!(!json_depth_exceeds(nested(128).as_bytes(), 128));
        assert!(json_depth_exceeds(nested(129).as_bytes(), 128));
        let in_string = format!(r#"{{"a":"{}"}}"#, "[{".repeat(500));
        assert!(!json_depth_exceeds(in_string.as_bytes(), 128));
        let escaped_quote = format!(r#"{{"a":"\"{}"}}"#, "[".repeat(500));
        assert!(!json_depth_exceeds(escaped_quote.as_bytes(), 128));
        let deep_object = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert!(json_depth_exceeds(deep_object.as_bytes(), 128));
    }

    /// The scan agrees with the real depth of parsed JSON (strings with brackets,
    /// escaped quotes and backslashes included).
    #[test]
    fn depth_matches_parsed_json() {
        fn depth(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
                serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        for text in [
            r#"{"a":[1,{"b":"]]]}}}\"[[["}],"c":"\\"}"#,
            r#"[[["x\\\"{{{"]],{}]"#,
            r#"{"s":"\u005b[","t":[[[]]]}"#,
            r#""just a string [[[""#,
        ] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let d = depth(&v);
            assert!(!json_depth_exceeds(text.as_bytes(), d), "{text}");
            if d > 0 {
                assert!(json_depth_exceeds(text.as_bytes(), d - 1), "{text}");
            }
        }
    }

    #[test]
    fn only_json_bodies_are_checked() {
        assert!(check_nesting(b"").is_ok());
        assert!(check_nesting(format!("--boundary{}", nested(500)).as_bytes()).is_ok());
        let e = check_nesting(format!("  {}", nested(500)).as_bytes()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        assert!(e.message().contains("128"));
    }
}
