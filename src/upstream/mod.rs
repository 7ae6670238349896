//! The upstream leg: one pooled client, header policy per mode, error mapping.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::watch;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

use crate::claude_code::{self, DEFAULT_ANTHROPIC_VERSION};
use crate::error::{ErrorKind, Origin, ProxyError};
use crate::routes::Mode;
use crate::util::names;

mod h1;
mod h2c;
mod lanes;
mod settings;

pub use lanes::Load as LaneLoad;

/// The credential that goes upstream with one request.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// Sent as `x-api-key`.
    ApiKey(String),
    /// Sent as `Authorization: Bearer`.
    OAuth(String),
}

impl UpstreamAuth {
    pub fn is_oauth(&self) -> bool {
        matches!(self, UpstreamAuth::OAuth(_))
    }
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamAuth::ApiKey(_) => "ApiKey(****)",
            UpstreamAuth::OAuth(_) => "OAuth(****)",
        })
    }
}

/// A streamed upload's body, boxed (the client's body with its limits, `pipeline::body`).
pub type StreamBody = UnsyncBoxBody<Bytes, BoxError>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What goes to the upstream client: whole bytes, or a streamed upload.
type ReqBody = Either<Full<Bytes>, StreamBody>;

/// The body of an upstream request: bytes (sent again as they are on a retry or on the next
/// credential), or a client's body streamed through, which can be sent only once.
#[derive(Clone, Debug)]
pub enum UpBody {
    Bytes(Bytes),
    /// Taken by the first attempt; a later attempt finds it empty and fails with a 503 that
    /// says why (the upstream already consumed the upload).
    Stream(std::sync::Arc<std::sync::Mutex<Option<StreamBody>>>),
}

impl UpBody {
    /// A body streamed through once.
    pub fn streamed<B>(body: B) -> UpBody
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let boxed = UnsyncBoxBody::new(body.map_err(Into::into));
        UpBody::Stream(std::sync::Arc::new(std::sync::Mutex::new(Some(boxed))))
    }

    /// Whether it is known to be empty (a streamed body never is).
    pub fn is_empty(&self) -> bool {
        matches!(self, UpBody::Bytes(b) if b.is_empty())
    }

    /// The bytes, unless the body is streamed.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            UpBody::Bytes(b) => Some(b),
            UpBody::Stream(_) => None,
        }
    }

    fn take(self) -> Option<ReqBody> {
        match self {
            UpBody::Bytes(b) => Some(Either::Left(Full::new(b))),
            UpBody::Stream(slot) => slot
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .map(Either::Right),
        }
    }
}

impl From<Bytes> for UpBody {
    fn from(b: Bytes) -> UpBody {
        UpBody::Bytes(b)
    }
}

impl Default for UpBody {
    fn default() -> UpBody {
        UpBody::Bytes(Bytes::new())
    }
}

/// The body of an upstream answer: from hyper-util's pool (TLS) or an h2c stream ([`h2c`]),
/// the request holding its lane's slot until the body is read or dropped; or from a connection
/// the reader drives itself (plain HTTP/1.1, [`h1`]).
enum RespBody {
    Pooled {
        body: Incoming,
        _slot: lanes::Slot,
    },
    H2c {
        body: h2c::H2Body,
        _slot: lanes::Slot,
    },
    Inline(h1::InlineBody),
}

/// Reading an upstream body failed: the HTTP/1.1 or pooled connection's error, or the h2c
/// stream's.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    H2(#[from] h2::Error),
}

impl http_body::Body for RespBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RespBody::Pooled { body, .. } => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BodyError::Http),
            RespBody::H2c { body, .. } => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BodyError::H2),
            RespBody::Inline(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(BodyError::Http),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Pooled { body, .. } => body.is_end_stream(),
            RespBody::H2c { body, .. } => body.is_end_stream(),
            RespBody::Inline(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RespBody::Pooled { body, .. } => body.size_hint(),
            RespBody::H2c { body, .. } => body.size_hint(),
            RespBody::Inline(b) => b.size_hint(),
        }
    }
}

/// The upstream's answer: its head, and its body still to be read.
pub struct UpResponse(axum::http::Response<RespBody>);

impl UpResponse {
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.0.headers()
    }

    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, BodyError> {
        Ok(self.0.into_body().collect().await?.to_bytes())
    }

    /// The body, piece by piece as it arrives.
    pub fn bytes_stream(self) -> UpStream {
        UpStream(self.0.into_body())
    }
}

/// An upstream body read as it arrives (data frames; trailers are dropped).
pub struct UpStream(RespBody);

impl Stream for UpStream {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            return match std::task::ready!(http_body::Body::poll_frame(
                std::pin::Pin::new(&mut self.0),
                cx
            )) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Some(Err(e)) => Poll::Ready(Some(Err(e))),
                None => Poll::Ready(None),
            };
        }
    }
}

/// The upstream leg: a plain `http://` upstream's connections driven by the requests ([`h1`]);
/// a TLS upstream's through hyper-util's pooled client (HTTP/2 when the server offers it by
/// ALPN, HTTP/1.1 otherwise); an h2c upstream's on h2 directly ([`h2c`]). `TCP_NODELAY`, no
/// redirects, no proxy; HTTP/2 spread over [`lanes`] so that no connection carries more than
/// `upstream_h2_max_streams` requests. And a `reqwest` client on the same settings for the
/// OAuth endpoints.
pub struct Upstream {
    /// A plain `http://` upstream without h2c: connections driven by the requests' own tasks.
    /// One pool per serving thread ([`crate::util::worker`]): a connection's I/O is handled by
    /// the thread that opened it, so a request uses only its own thread's connections.
    h1: Option<Box<[h1::Pool]>>,
    /// Every other upstream: pooled clients, each with at most one HTTP/2 connection; one set per
    /// serving thread, as `h1` (an HTTP/2 connection's task runs on the thread that opened it).
    lanes: Box<[lanes::Lanes]>,
    oauth: reqwest::Client,
    base: String,
    /// `scheme://authority` and the base's path without its trailing `/`, joined with each
    /// request's path and query.
    origin: String,
    base_path: String,
    header_timeout: Duration,
}

impl Upstream {
    pub fn new(
        base: String,
        connect_timeout: Duration,
        header_timeout: Duration,
        h2c: bool,
        h2_max_streams: usize,
        workers: usize,
    ) -> Result<Self, std::io::Error> {
        let workers = workers.max(1);
        let uri: Uri = base.parse().map_err(std::io::Error::other)?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(std::io::Error::other(format!(
                "upstream URL {base} needs a scheme and a host"
            )));
        };
        let tls = crate::http::tls_config();
        if scheme == "https" {
            // Every request needs them: say now if there are none, not on each request.
            crate::http::check_ca_certificates().map_err(tls_setup_error)?;
        }
        let oauth = crate::http::client_builder()
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_preconfigured(tls.clone())
            .build()
            .map_err(tls_setup_error)?;
        let origin = format!("{scheme}://{authority}");
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let h2c = h2c && scheme == "http";
        let h1 = if scheme == "http" && !h2c {
            let host = uri.host().unwrap_or_default();
            let connecting = Arc::new(tokio::sync::Semaphore::new(h1::MAX_CONNECTING));
            let pools = (0..workers).map(|_| {
                h1::Pool::new(
                    host,
                    uri.port_u16().unwrap_or(80),
                    authority.as_str(),
                    connect_timeout,
                    connecting.clone(),
                )
            });
            Some(pools.collect::<Option<Box<[_]>>>().ok_or_else(|| {
                std::io::Error::other(format!("upstream URL {base} has an invalid host"))
            })?)
        } else {
            None
        };
        let connector = crate::http::upstream_connector(connect_timeout, tls);
        let lanes = (0..workers)
            .map(|_| lanes::Lanes::new(connector.clone(), h2c, h2_max_streams, connect_timeout))
            .collect();
        Ok(Upstream {
            h1,
            lanes,
            oauth,
            base,
            origin,
            base_path,
            header_timeout,
        })
    }

    /// The pooled lanes of a TLS or h2c upstream (each at most one HTTP/2 connection), the
    /// requests in flight on them and the most one carries; `None` for a plain `http://`
    /// upstream, whose connections the requests drive themselves.
    pub fn lanes(&self) -> Option<LaneLoad> {
        self.h1.is_none().then(|| {
            let mut all = LaneLoad {
                lanes: 0,
                in_flight: 0,
                per_connection: None,
            };
            for l in &self.lanes {
                let load = l.load();
                all.lanes += load.lanes;
                all.in_flight += load.in_flight;
                all.per_connection = match (all.per_connection, load.per_connection) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            all
        })
    }

    /// The client for the OAuth endpoints (token refresh, login).
    pub fn client(&self) -> &reqwest::Client {
        &self.oauth
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request; waits at most the header timeout for the response head. `headers`
    /// are [`request_headers`]' (which leaves out the connection-specific ones HTTP/2 refuses).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: HeaderMap,
        body: UpBody,
    ) -> Result<UpResponse, ProxyError> {
        // Origin form (`/path?query`) for the connections driven here, absolute otherwise.
        let origin = if self.h1.is_some() {
            ""
        } else {
            self.origin.as_str()
        };
        let mut target = String::with_capacity(
            origin.len() + self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        target.push_str(origin);
        target.push_str(&self.base_path);
        target.push_str(path);
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        let uri = Uri::try_from(target).map_err(|e| {
            ProxyError::new(
                ErrorKind::InvalidRequest,
                Origin::Client,
                "the request's path cannot be sent upstream",
            )
            .with_cause(e)
        })?;
        let body = if method != Method::GET && method != Method::HEAD || !body.is_empty() {
            let Some(body) = body.take() else {
                // Not a 502: the request must not be retried or moved to another credential.
                return Err(ProxyError::unavailable(
                    "the request body was streamed to the upstream, which did not accept it; a \
                     streamed upload cannot be sent again: retry the request",
                    1,
                ));
            };
            body
        } else {
            Either::Left(Full::new(Bytes::new()))
        };
        let mut req = axum::http::Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        if !req.headers().contains_key(header::ACCEPT) {
            req.headers_mut()
                .insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        let timed_out = || {
            ProxyError::new(
                ErrorKind::GatewayTimeout,
                Origin::Upstream,
                format!(
                    "upstream did not answer within {} s",
                    self.header_timeout.as_secs_f64()
                ),
            )
        };
        if let Some(pools) = &self.h1 {
            let pool = &pools[crate::util::worker::index() % pools.len()];
            return match tokio::time::timeout(self.header_timeout, pool.send(req)).await {
                Ok(Ok(resp)) => Ok(UpResponse(resp.map(RespBody::Inline))),
                Ok(Err(h1::SendError::Connect(e))) => Err(map_send_error(e)),
                Ok(Err(h1::SendError::Http(e))) => Err(map_send_error(e)),
                Err(_) => Err(timed_out()),
            };
        }
        let lanes = &self.lanes[crate::util::worker::index() % self.lanes.len()];
        let (client, slot) = lanes.take().await;
        // Three near-copies of the timeout on purpose: one helper taking the sending future
        // measured 11.7k more instructions per h2c request (104k → 116k, callgrind), the
        // futures moved into it.
        match client {
            lanes::LaneConn::Pooled(client) => {
                match tokio::time::timeout(self.header_timeout, client.request(req)).await {
                    Ok(Ok(resp)) => Ok(UpResponse(
                        resp.map(|body| RespBody::Pooled { body, _slot: slot }),
                    )),
                    Ok(Err(e)) => Err(map_send_error(e)),
                    Err(_) => Err(timed_out()),
                }
            }
            lanes::LaneConn::H2c(lane) => {
                match tokio::time::timeout(self.header_timeout, lane.send(req)).await {
                    Ok(Ok(resp)) => Ok(UpResponse(
                        resp.map(|body| RespBody::H2c { body, _slot: slot }),
                    )),
                    Ok(Err(e)) => Err(map_send_error(e)),
                    Err(_) => Err(timed_out()),
                }
            }
        }
    }
}

/// Setting up the HTTPS clients failed (on a machine without CA certificates, say): says what
/// it was for, and how to give ccproxy the certificates.
fn tls_setup_error(e: impl std::error::Error + 'static) -> std::io::Error {
    let mut msg = format!(
        "cannot set up HTTPS for the upstream: {}",
        crate::error::chain(&e)
    );
    if msg.contains("CA certificates") {
        msg.push_str(
            " (ccproxy verifies servers with the system's CA certificates: install them, e.g. \
             the ca-certificates package, or name a PEM bundle in SSL_CERT_FILE)",
        );
    }
    std::io::Error::other(msg)
}

/// What waiting for the next piece of an upstream stream gave.
pub enum StreamNext {
    Chunk(Bytes),
    /// The stream cannot go on: the error says why (for the client's error event).
    Broken(ProxyError),
    End,
}

/// Limits on relaying a stream: the longest upstream silence, and the signal
/// that the server's shutdown grace period is over.
#[derive(Clone)]
pub struct StreamLimits {
    pub idle: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// The same signal as a flag, for the check at every poll of every relayed stream: a load
    /// of a line no one writes until shutdown. (A `watch` borrow takes a read lock: two atomic
    /// writes to one shared line per event, which the workers trade between their caches.)
    ending: Arc<AtomicBool>,
}

/// Ends the relayed streams of [`StreamLimits`] (when the shutdown grace period is over).
pub struct StreamEnder {
    tx: watch::Sender<bool>,
    ending: Arc<AtomicBool>,
}

impl StreamEnder {
    pub fn end(&self) {
        self.ending.store(true, Ordering::Release);
        let _ = self.tx.send(true);
    }
}

/// Stream limits with `idle` as the longest silence, and what ends their streams.
pub fn stream_limits(idle: Duration) -> (StreamEnder, StreamLimits) {
    let (tx, shutdown) = watch::channel(false);
    let ending = Arc::new(AtomicBool::new(false));
    let limits = StreamLimits {
        idle,
        shutdown,
        ending: ending.clone(),
    };
    (StreamEnder { tx, ending }, limits)
}

impl StreamLimits {
    /// The per-stream watcher that applies these limits.
    pub fn watch(&self) -> StreamWatch {
        let mut shutdown = self.shutdown.clone();
        let ended = Box::pin(async move {
            // A dropped sender (no server) never ends streams.
            if shutdown.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        let now = tokio::time::Instant::now();
        StreamWatch {
            ending: self.ending.clone(),
            last_chunk: now,
            timer_at: now + self.idle,
            armed: None,
            idle: self.idle,
            timer: Box::pin(tokio::time::sleep_until(now + self.idle)),
            ended,
        }
    }
}

/// One stream's idle timer and shutdown signal, with no timer work per chunk: the timer is not
/// re-armed per chunk (each chunk only notes its time, and a timer that fires early is pushed
/// to the real deadline), and neither the timer nor the shutdown signal is polled again while
/// they hold the stream task's waker and have not fired (a chunk costs a clock read and a look
/// at the shutdown flag). Whether the timer can have fired is told by the copy of its deadline
/// kept here: the timer itself lives on the heap, and with thousands of streams each line
/// touched per event is a likely cache miss.
///
/// `repr(C)`: the fields an event touches come first, on as few cache lines as they fit.
#[repr(C)]
pub struct StreamWatch {
    /// The same signal as `ended`, read at each poll.
    ending: Arc<AtomicBool>,
    last_chunk: tokio::time::Instant,
    /// `timer`'s deadline: it cannot have fired before.
    timer_at: tokio::time::Instant,
    /// The waker `timer` and `ended` were last polled with.
    armed: Option<std::task::Waker>,
    idle: Duration,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Completes when the server ends its streams; polled only to hold the task's waker.
    ended: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl StreamWatch {
    /// The next chunk of `up`, unless the upstream stays silent too long or the
    /// server is ending its streams.
    pub async fn next<S>(&mut self, up: &mut S) -> StreamNext
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Unpin,
    {
        std::future::poll_fn(|cx| self.poll_next(up, cx)).await
    }

    /// [`StreamWatch::next`] as a poll (for a body that relays the stream).
    pub fn poll_next<S>(&mut self, up: &mut S, cx: &mut std::task::Context<'_>) -> Poll<StreamNext>
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Unpin,
    {
        if self.ending.load(Ordering::Acquire) {
            return Poll::Ready(StreamNext::Broken(ProxyError::new(
                ErrorKind::Internal,
                Origin::Proxy,
                "ccproxy is shutting down",
            )));
        }
        match up.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.last_chunk = tokio::time::Instant::now();
                return Poll::Ready(StreamNext::Chunk(b));
            }
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(StreamNext::Broken(transport_error(
                    e,
                    "upstream connection lost",
                )));
            }
            Poll::Ready(None) => return Poll::Ready(StreamNext::End),
            Poll::Pending => {}
        }
        let armed = self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if armed && tokio::time::Instant::now() < self.timer_at {
            return Poll::Pending;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_chunk + self.idle;
            self.timer_at = deadline;
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(StreamNext::Broken(ProxyError::new(
                    ErrorKind::GatewayTimeout,
                    Origin::Upstream,
                    format!(
                        "the upstream sent nothing for {} s; the stream was ended",
                        self.idle.as_secs_f64()
                    ),
                )));
            }
            self.timer.as_mut().reset(deadline);
        }
        if !armed {
            if self.ended.as_mut().poll(cx).is_ready() {
                return Poll::Ready(StreamNext::Broken(ProxyError::new(
                    ErrorKind::Internal,
                    Origin::Proxy,
                    "ccproxy is shutting down",
                )));
            }
            self.armed = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A transport error sending upstream: 504 for timeouts (connecting included), 502 otherwise.
pub fn map_send_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> ProxyError {
    if is_timeout(&e) {
        ProxyError::new(
            ErrorKind::GatewayTimeout,
            Origin::Upstream,
            "upstream timed out",
        )
        .with_cause(e)
    } else {
        transport_error(e, "upstream unreachable")
    }
}

/// Whether a timeout is somewhere in the error's chain.
pub(super) fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && h.is_timeout()
        {
            return true;
        }
        if let Some(h) = err.downcast_ref::<h2::Error>()
            && h.get_io()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A broken upstream connection (502), with what was happening and its cause.
pub fn transport_error(
    e: impl std::error::Error + Send + Sync + 'static,
    doing: &str,
) -> ProxyError {
    ProxyError::new(ErrorKind::BadGateway, Origin::Upstream, doing).with_cause(e)
}

/// Headers never relayed in either direction (RFC 9110 §7.6.1) plus ones the
/// HTTP stack sets itself.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn put(h: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn client_value(client: &HeaderMap, name: HeaderName) -> Option<&str> {
    client.get(name).and_then(|v| v.to_str().ok())
}

fn set_auth(h: &mut HeaderMap, auth: &UpstreamAuth) {
    match auth {
        UpstreamAuth::ApiKey(k) => {
            if let Ok(mut v) = HeaderValue::from_str(k) {
                v.set_sensitive(true);
                h.insert(names::X_API_KEY, v);
            }
        }
        UpstreamAuth::OAuth(t) => {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                v.set_sensitive(true);
                h.insert(header::AUTHORIZATION, v);
            }
        }
    }
}

/// The headers of the upstream request, by mode.
///
/// - full: content type, the client's `accept`, `anthropic-version` (client's or
///   default), `anthropic-beta` merged with the tags full mode needs, and the
///   Claude CLI identity headers;
/// - minimal: only what the upstream needs (version, the client's beta tags);
/// - passthrough: every client header but hop-by-hop and auth ones.
///
/// In every mode the credential is the one the proxy chose.
pub fn request_headers(
    mode: Mode,
    client: &HeaderMap,
    auth: &UpstreamAuth,
    has_body: bool,
    cli_version: &str,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(12);
    match mode {
        Mode::Passthrough => {
            for (k, v) in client {
                // `accept-encoding` stays behind so responses arrive uncompressed and
                // their usage can be metered; their content is unchanged, and the
                // loopback leg gains nothing from compression.
                if is_hop_by_hop(k)
                    || k == "x-api-key"
                    || k == header::AUTHORIZATION
                    || k == header::ACCEPT_ENCODING
                {
                    continue;
                }
                h.append(k.clone(), v.clone());
            }
        }
        Mode::Full | Mode::Minimal => {
            if has_body {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            if let Some(v) = client.get(header::ACCEPT) {
                h.insert(header::ACCEPT, v.clone());
            }
            let version = client_value(client, names::ANTHROPIC_VERSION)
                .filter(|v| !v.is_empty())
                .unwrap_or(DEFAULT_ANTHROPIC_VERSION);
            put(&mut h, names::ANTHROPIC_VERSION, version);
            let client_beta = joined(client, names::ANTHROPIC_BETA);
            if mode == Mode::Full {
                put(
                    &mut h,
                    names::ANTHROPIC_BETA,
                    &claude_code::merge_beta(client_beta.as_deref(), auth.is_oauth()),
                );
                put(
                    &mut h,
                    header::USER_AGENT,
                    &["claude-cli/", cli_version, " (external, cli)"].concat(),
                );
                put(&mut h, names::X_APP, "cli");
                put(&mut h, names::DIRECT_BROWSER_ACCESS, "true");
                if let Some(v) = client.get(names::X_CLAUDE_CODE_SESSION_ID) {
                    h.insert(names::X_CLAUDE_CODE_SESSION_ID, v.clone());
                }
            } else if let Some(beta) = client_beta.filter(|b| !b.is_empty()) {
                put(&mut h, names::ANTHROPIC_BETA, &beta);
            }
        }
    }
    set_auth(&mut h, auth);
    h
}

/// Sets the upstream request's `content-type` to the client's (a multipart upload's boundary
/// included), or none when the client sent none.
pub fn keep_content_type(h: &mut HeaderMap, client: &HeaderMap) {
    match client.get(header::CONTENT_TYPE) {
        Some(v) => {
            h.insert(header::CONTENT_TYPE, v.clone());
        }
        None => {
            h.remove(header::CONTENT_TYPE);
        }
    }
}

/// All values of a header joined with commas (clients may repeat `anthropic-beta`).
fn joined(h: &HeaderMap, name: HeaderName) -> Option<String> {
    let mut it = h.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = it.next()?;
    let mut s = first.to_owned();
    for v in it {
        s.push(',');
        s.push_str(v);
    }
    Some(s)
}

/// Whether a response header is worth relaying to clients in full and minimal modes.
fn is_useful_response_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "content-type"
            | "content-disposition"
            | "request-id"
            | "retry-after"
            | "x-should-retry"
            | "cache-control"
    ) || n.starts_with("anthropic-")
}

/// The response headers relayed to the client, by mode.
pub fn response_headers(mode: Mode, upstream: &HeaderMap, keep_length: bool) -> HeaderMap {
    // Room for the headers the proxy adds (`x-request-id`, `server-timing`, rate limits)
    // without growing the map (a rehash of every entry, ~900 instructions).
    let mut h = HeaderMap::with_capacity(upstream.len() + 8);
    for (k, v) in upstream {
        let keep = match mode {
            Mode::Passthrough => !is_hop_by_hop(k),
            Mode::Full | Mode::Minimal => is_useful_response_header(k),
        };
        if keep {
            h.append(k.clone(), v.clone());
        }
    }
    if keep_length && let Some(v) = upstream.get(header::CONTENT_LENGTH) {
        h.insert(header::CONTENT_LENGTH, v.clone());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn full_mode_headers() {
        let c = client(&[
            ("anthropic-beta", "a"),
            ("anthropic-beta", "b,oauth-2025-04-20"),
            ("x-api-key", "sk-ant-api-client"),
            ("user-agent", "curl"),
        ]);
        let h = request_headers(
            Mode::Full,
            &c,
            &UpstreamAuth::OAuth("tok".into()),
            true,
            "9.9.9",
        );
        assert_eq!(
            h["anthropic-beta"],
            "a,b,oauth-2025-04-20,claude-code-20250219"
        );
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert_eq!(h["user-agent"], "claude-cli/9.9.9 (external, cli)");
        assert_eq!(h["x-app"], "cli");
        assert_eq!(h["authorization"], "Bearer tok");
        assert!(h.get("x-api-key").is_none());
    }

    #[test]
    fn minimal_mode_sets_only_needed() {
        let c = client(&[("anthropic-version", "2026-10-21"), ("user-agent", "curl")]);
        let h = request_headers(
            Mode::Minimal,
            &c,
            &UpstreamAuth::ApiKey("sk-ant-api-x".into()),
            true,
            "1",
        );
        assert_eq!(h["anthropic-version"], "2026-10-21");
        assert_eq!(h["x-api-key"], "sk-ant-api-x");
        assert!(h.get("user-agent").is_none());
        assert!(h.get("anthropic-beta").is_none());
    }

    #[test]
    fn passthrough_strips_hop_by_hop_and_auth() {
        let c = client(&[
            ("connection", "keep-alive"),
            ("authorization", "Bearer proxy-token"),
            ("x-custom", "1"),
            ("anthropic-beta", "x"),
            ("accept-encoding", "gzip, br"),
        ]);
        let h = request_headers(
            Mode::Passthrough,
            &c,
            &UpstreamAuth::ApiKey("sk-ant-api-s".into()),
            true,
            "1",
        );
        assert!(h.get("connection").is_none());
        assert!(h.get("authorization").is_none());
        assert!(h.get("accept-encoding").is_none());
        assert_eq!(h["x-custom"], "1");
        assert_eq!(h["anthropic-beta"], "x");
        assert_eq!(h["x-api-key"], "sk-ant-api-s");
    }

    #[test]
    fn debug_hides_secret() {
        let s = format!("{:?}", UpstreamAuth::ApiKey("sk-ant-api-secret".into()));
        assert!(!s.contains("secret"));
    }
}
