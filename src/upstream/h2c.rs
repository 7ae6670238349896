//! An h2c lane's connection, driven on `h2` directly.
//!
//! Through hyper's HTTP/2 client a request's head changes tasks five times between the handler
//! and the socket and back: the handler hands it to the client's dispatch task, which opens the
//! stream in h2 and wakes the connection's task to write it; the answer's head, read by the
//! connection's task, wakes a task hyper spawns for each request (to pipe its body), which hands
//! the head to the handler through a channel. At 10 000 streams every change waits its turn in
//! a run queue thousands of tasks long: most of the added time to the first token was there
//! (`scripts/bench/changes.md`, sixteenth round). Here the handler opens the stream itself and
//! awaits h2's answer: the connection's task writes the head, reads the answer and wakes the
//! handler. A body of whole bytes is handed to h2 with the head; only a streamed upload has a
//! task of its own, which feeds it as the server's flow control allows.
//!
//! One lane keeps one connection (opened by the first request that finds none, through the
//! lane's connector, so that the lane learns its server's stream limit as before), and opens the
//! next when it has ended. A connection that carried nothing for [`IDLE_TIMEOUT`] is let go.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
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

/// Why a request got no answer head.
#[derive(Debug, thiserror::Error)]
pub(super) enum SendError {
    #[error("connecting to the upstream failed")]
    Connect(#[source] BoxError),
    #[error(transparent)]
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
}

#[derive(Clone)]
struct Live {
    send: SendRequest<Bytes>,
    /// Set by the connection's task when it ends.
    ended: Arc<AtomicBool>,
}

impl H2cLane {
    pub(super) fn new(connector: LaneConnector) -> H2cLane {
        H2cLane {
            connector,
            live: Arc::new(Mutex::new(None)),
            opening: tokio::sync::Mutex::new(()),
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
        let _opening = self.opening.lock().await;
        if let Some(live) = self.current() {
            return Ok(live);
        }
        let io = self
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(SendError::Connect)?;
        let (send, conn) = h2::client::Builder::new()
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
        strip_connection_headers(&mut parts.headers);
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH))
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
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let (answer, body_left) = match body {
            Either::Left(full) => {
                let bytes = full
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let (answer, mut stream) = send
                    .send_request(head, bytes.is_empty())
                    .inspect_err(|_| self.forget(live))?;
                if !bytes.is_empty() {
                    // Buffered by h2, and sent as the server's windows allow.
                    stream.send_data(bytes, true)?;
                }
                (answer, None)
            }
            Either::Right(streamed) => {
                let end = streamed.is_end_stream();
                let (answer, stream) = send
                    .send_request(head, end)
                    .inspect_err(|_| self.forget(live))?;
                (answer, (!end).then_some((streamed, stream)))
            }
        };
        if let Some((body, stream)) = body_left {
            tokio::spawn(pipe(body, stream));
        }
        let resp = answer.await?;
        Ok(resp.map(|recv| H2Body {
            recv,
            data_done: false,
        }))
    }
}

/// Drives a connection until it ends, or until it has been idle (no stream open) for
/// [`IDLE_TIMEOUT`]: then the lane forgets it, and h2 closes it once its last handle is gone.
async fn drive<T>(
    conn: h2::client::Connection<T, Bytes>,
    live: Live,
    lane: std::sync::Weak<Mutex<Option<Live>>>,
    state: Arc<LaneState>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Live { send, ended } = live;
    // The connection ends once its last handle is gone (and its last stream): this one goes
    // when the connection is let go.
    let mut kept = Some(send);
    tokio::pin!(conn);
    let period = IDLE_TIMEOUT / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut idle_ticks = 0u32;
    loop {
        tokio::select! {
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "upstream h2c connection ended");
                }
                break;
            }
            _ = tick.tick(), if kept.is_some() => {
                // The lane's requests are this connection's streams.
                let idle = state.in_flight() == 0;
                idle_ticks = if idle { idle_ticks + 1 } else { 0 };
                if idle_ticks >= 3 {
                    ended.store(true, Ordering::Release);
                    if let Some(lane) = lane.upgrade() {
                        let mut slot = lane.lock().unwrap_or_else(|e| e.into_inner());
                        if slot.as_ref().is_some_and(|l| Arc::ptr_eq(&l.ended, &ended)) {
                            *slot = None;
                        }
                    }
                    kept = None;
                }
            }
        }
    }
    ended.store(true, Ordering::Release);
}

/// Feeds a streamed upload to its stream, as the server's flow control allows; a body that
/// fails resets the stream (the answer then says it was cancelled).
async fn pipe(mut body: StreamBody, mut stream: SendStream<Bytes>) {
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(error = %e, "the streamed upload failed; upstream stream reset");
                stream.send_reset(Reason::CANCEL);
                return;
            }
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
            let room = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                // The stream was reset or ended: nothing more goes.
                Some(Err(_)) | None => return,
            };
            if room == 0 {
                continue;
            }
            let piece = data.split_to(room.min(data.len()));
            if stream.send_data(piece, false).is_err() {
                return;
            }
        }
    }
    let _ = stream.send_data(Bytes::new(), true);
}

/// Connection-specific headers are not HTTP/2's (RFC 9113 §8.2.2): h2 refuses a request with
/// one. The header policy sends none; a caller's own go here, as hyper's client drops them.
fn strip_connection_headers(h: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(name);
    }
    if h.get(header::TE).is_some_and(|te| te != "trailers") {
        h.remove(header::TE);
    }
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
