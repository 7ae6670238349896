//! An h2c lane's connection, driven on `h2` directly.
//!
//! Through hyper's HTTP/2 client a request's head changes tasks five times between the handler
//! and the socket and back: the handler hands it to the client's dispatch task, which opens the
//! stream in h2 and wakes the connection's task to write it; the answer's head, read by the
//! connection's task, wakes a task hyper spawns for each request (to pipe its body), which hands
//! the head to the handler through a channel. Here the handler opens the stream itself and
//! awaits h2's answer: the connection's task writes the head, reads the answer and wakes the
//! handler. A body of whole bytes is handed to h2 with the head; only a streamed upload has a
//! task of its own, which feeds it as the server's flow control allows. That is about a tenth
//! fewer instructions per request (`scripts/bench/changes.md`, seventeenth round). The headers
//! come from `super::request_headers`, without the connection-specific ones h2 would refuse.
//!
//! One lane keeps one connection (opened by the first request that finds none, through the
//! lane's connector, so that the lane learns its server's stream limit as before), and opens the
//! next when it has ended. A connection no request used for about [`IDLE_TIMEOUT`] is let go.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::{HeaderValue, Method, Request, Response, Uri, header};
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either};
use hyper_util::rt::TokioIo;
use tower::Service;

use super::lanes::LaneState;
use super::settings::LaneConnector;
use super::{BoxError, ReqBody, StreamBody};

/// An idle connection (no stream open) is closed after this long, as hyper-util's pool does.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// As hyper's HTTP/2 client: 2 MiB a stream, 16 KiB frames, 16 KiB of response headers, 1 MiB
/// buffered per stream for sending. The connection's window is 64 MiB (`crate::http`'s client
/// says why: thousands of event streams' small frames on one connection).
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
const MAX_FRAME: u32 = 16 << 10;
const MAX_HEADER_LIST: u32 = 16 << 10;
const MAX_SEND_BUFFER: usize = 1 << 20;

/// Streams a connection may open before its server's SETTINGS say how many it takes (hyper's).
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// Why a request got no answer head.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error("connecting to the upstream failed")]
    Connect(#[source] BoxError),
    /// In the chain (not transparent), so that `super::is_timeout` finds an I/O timeout in it.
    #[error("the upstream HTTP/2 connection failed")]
    H2(#[from] h2::Error),
}

/// A lane's connection: the one open now, if any.
pub(super) struct H2cLane {
    connector: LaneConnector,
    /// Shared with the connection's task, which empties it when it lets an idle one go.
    live: Arc<Mutex<Option<Live>>>,
    /// Held while a connection is opened, so that the requests which find none wait for the
    /// one being opened instead of each opening their own.
    opening: tokio::sync::Mutex<()>,
    /// Openings that ended (succeeded or failed), and the last failure: the requests that
    /// waited on a failed opening share its answer instead of each connecting in turn (k
    /// connect timeouts for the k-th, against an upstream that does not answer).
    opened: AtomicU64,
    failed: Mutex<Option<Failure>>,
}

/// A failed opening, as its waiters report it.
#[derive(Clone)]
struct Failure {
    kind: std::io::ErrorKind,
    what: Arc<str>,
}

#[derive(Clone)]
struct Live {
    send: SendRequest<Bytes>,
    /// Set by the connection's task when it ends.
    ended: Arc<AtomicBool>,
    /// Requests sent on the connection, for its task's idle check.
    sent: Arc<AtomicU64>,
}

impl H2cLane {
    pub(super) fn new(connector: LaneConnector) -> H2cLane {
        H2cLane {
            connector,
            live: Arc::new(Mutex::new(None)),
            opening: tokio::sync::Mutex::new(()),
            opened: AtomicU64::new(0),
            failed: Mutex::new(None),
        }
    }

    fn current(&self) -> Option<Live> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.as_ref()
            .filter(|l| !l.ended.load(Ordering::Acquire))
            .cloned()
    }

    /// Forgets `gone` if it is still the lane's connection.
    fn forget(&self, gone: &Live) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.ended, &gone.ended))
        {
            *live = None;
        }
    }

    /// The lane's connection, opened if there is none.
    async fn connection(&self, uri: &Uri) -> Result<Live, SendError> {
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let before = self.opened.load(Ordering::Acquire);
        let _opening = self.opening.lock().await;
        if let Some(live) = self.current() {
            return Ok(live);
        }
        if self.opened.load(Ordering::Acquire) != before {
            // An opening ended while this request waited for it, and left no connection.
            let failed = self
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(f) = failed {
                return Err(SendError::Connect(Box::new(std::io::Error::new(
                    f.kind,
                    f.what.to_string(),
                ))));
            }
        }
        let opened = self.open(uri).await;
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
            opened.as_ref().err().map(|e| Failure {
                kind: if super::is_timeout(e) {
                    std::io::ErrorKind::TimedOut
                } else {
                    std::io::ErrorKind::Other
                },
                what: crate::error::chain(e).into(),
            });
        self.opened.fetch_add(1, Ordering::Release);
        opened
    }

    /// Connects, shakes hands and starts the connection's task.
    async fn open(&self, uri: &Uri) -> Result<Live, SendError> {
        let io = self
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(SendError::Connect)?;
        let (send, conn) = h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(TokioIo::new(io))
            .await?;
        let live = Live {
            send,
            ended: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(drive(
            conn,
            live.clone(),
            Arc::downgrade(&self.live),
            self.connector.lane.clone(),
        ));
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.clone());
        Ok(live)
    }

    /// Sends `req`; its answer's head, or why there is none. A request that finds its lane's
    /// connection ended before it went out on it goes on a new one.
    pub(super) async fn send(&self, req: Request<ReqBody>) -> Result<Response<H2Body>, SendError> {
        let (mut parts, body) = req.into_parts();
        if let Some(len) = body.size_hint().exact()
            // As hyper: a length for every method whose body means something, even 0.
            && (len != 0
                || !matches!(
                    parts.method,
                    Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
                ))
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        let uri = parts.uri.clone();
        let req = Request::from_parts(parts, body);
        let mut again = true;
        loop {
            let live = self.connection(&uri).await?;
            match live.send.clone().ready().await {
                Ok(send) => return self.once(send, req, &live).await,
                Err(e) => {
                    self.forget(&live);
                    if !std::mem::take(&mut again) {
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// Opens the stream on `send` and waits for the answer's head.
    async fn once(
        &self,
        mut send: SendRequest<Bytes>,
        req: Request<ReqBody>,
        live: &Live,
    ) -> Result<Response<H2Body>, SendError> {
        live.sent.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        // A connection that fails a request's opening is not the lane's any more (one that
        // refuses a request as malformed still is).
        let gone = |e: &h2::Error| {
            if e.is_io() || e.is_go_away() {
                self.forget(live);
            }
        };
        let (answer, upload) = match body {
            Either::Left(full) => {
                let bytes = full
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let (answer, mut stream) = send
                    .send_request(head, bytes.is_empty())
                    .inspect_err(gone)?;
                if !bytes.is_empty() {
                    // Buffered by h2, and sent as the server's windows allow.
                    stream.send_data(bytes, true)?;
                }
                (answer, None)
            }
            Either::Right(streamed) => {
                let end = streamed.is_end_stream();
                let (answer, stream) = send.send_request(head, end).inspect_err(gone)?;
                if end {
                    (answer, None)
                } else {
                    // Until the head arrives, dropping this request (the header timeout, the
                    // client gone) drops `armed`, and the upload's task resets the stream.
                    let (armed, disarm) = tokio::sync::oneshot::channel();
                    tokio::spawn(pipe(streamed, stream, disarm));
                    (answer, Some(armed))
                }
            }
        };
        let resp = answer.await?;
        if let Some(armed) = upload {
            let _ = armed.send(());
        }
        Ok(resp.map(|recv| H2Body {
            recv,
            data_done: false,
        }))
    }
}

/// Drives a connection until it ends, or until no request has used it for about
/// [`IDLE_TIMEOUT`] (three checks a third of it apart): then the lane forgets it, and h2 closes
/// it once its last handle and its last stream are gone.
async fn drive<T>(
    conn: h2::client::Connection<T, Bytes>,
    live: Live,
    lane: std::sync::Weak<Mutex<Option<Live>>>,
    state: Arc<LaneState>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Live { send, ended, sent } = live;
    // The connection ends once its last handle is gone (and its last stream): this one goes
    // when the connection is let go.
    let mut kept = Some(send);
    tokio::pin!(conn);
    let period = IDLE_TIMEOUT / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut idle_ticks = 0u32;
    let mut seen = 0;
    loop {
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "upstream h2c connection ended");
                }
                break;
            }
            _ = tick.tick(), if kept.is_some() => {
                let now = sent.load(Ordering::Relaxed);
                // The lane's requests in flight are this connection's streams (or wait for
                // the lane's next connection).
                let idle = now == seen && state.in_flight() == 0;
                seen = now;
                idle_ticks = if idle { idle_ticks + 1 } else { 0 };
                let Some(lane) = lane.upgrade() else {
                    // The lane is gone (the proxy is stopping): nothing will use this one.
                    kept = None;
                    continue;
                };
                if idle_ticks >= 3 {
                    ended.store(true, Ordering::Release);
                    let mut slot = lane.lock().unwrap_or_else(|e| e.into_inner());
                    if slot.as_ref().is_some_and(|l| Arc::ptr_eq(&l.ended, &ended)) {
                        *slot = None;
                    }
                    kept = None;
                }
            }
        }
    }
    ended.store(true, Ordering::Release);
}

/// What the upload's task waits on next.
enum Next<T> {
    Ready(T),
    /// The request went before its answer's head came: the stream is reset.
    Cancelled,
    /// The server reset the stream (or it ended): nothing more goes.
    Reset,
}

/// Polls `f`, unless the request went before its head came (`disarm` dropped; a message on it
/// means the head came, and the upload goes on by itself) or the server reset the stream.
async fn watched<T>(
    stream: &mut SendStream<Bytes>,
    disarm: &mut Option<tokio::sync::oneshot::Receiver<()>>,
    mut f: impl FnMut(&mut SendStream<Bytes>, &mut Context<'_>) -> Poll<T>,
) -> Next<T> {
    poll_fn(|cx| {
        if let Some(rx) = disarm.as_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(())) => *disarm = None,
                Poll::Ready(Err(_)) => return Poll::Ready(Next::Cancelled),
                Poll::Pending => {}
            }
        }
        if let Poll::Ready(r) = f(stream, cx) {
            return Poll::Ready(Next::Ready(r));
        }
        if stream.poll_reset(cx).is_ready() {
            return Poll::Ready(Next::Reset);
        }
        Poll::Pending
    })
    .await
}

/// Feeds a streamed upload to its stream, as the server's flow control allows. A body that
/// fails, or a request that goes before its answer's head, resets the stream; a server that
/// resets it ends the upload.
async fn pipe(
    mut body: StreamBody,
    mut stream: SendStream<Bytes>,
    disarm: tokio::sync::oneshot::Receiver<()>,
) {
    let mut disarm = Some(disarm);
    loop {
        let frame = match watched(&mut stream, &mut disarm, |_, cx| {
            Pin::new(&mut body).poll_frame(cx)
        })
        .await
        {
            Next::Ready(Some(Ok(frame))) => frame,
            Next::Ready(None) => break,
            Next::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "the streamed upload failed; upstream stream reset");
                stream.send_reset(Reason::CANCEL);
                return;
            }
            Next::Cancelled => {
                stream.send_reset(Reason::CANCEL);
                return;
            }
            Next::Reset => return,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                }
                return;
            }
        };
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let room = match watched(&mut stream, &mut disarm, |s, cx| s.poll_capacity(cx)).await {
                Next::Ready(Some(Ok(n))) => n,
                Next::Cancelled => {
                    stream.send_reset(Reason::CANCEL);
                    return;
                }
                // The stream was reset or ended: nothing more goes.
                Next::Ready(Some(Err(_)) | None) | Next::Reset => return,
            };
            let piece = data.split_to(room.min(data.len()));
            if stream.send_data(piece, false).is_err() {
                return;
            }
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
}

/// An answer's body read from its h2 stream; what is read is given back to the server's window
/// at once (the proxy's own buffers are what bound it).
pub(super) struct H2Body {
    recv: RecvStream,
    data_done: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        Poll::Ready(match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
