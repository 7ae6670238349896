//! The upstream leg to a plain `http://` upstream over HTTP/1.1, without a connection task.
//!
//! hyper-util's pooled client runs every connection as a task of its own and spawns one more
//! per request to put the connection back in its pool: each request crosses three tasks (the
//! client's connection, ccproxy's request, the pool's return), and each hand-over is a wake-up
//! and another trip through the scheduler (on a multi-threaded runtime, often to another thread:
//! a futex call, a context switch, caches moved).
//! Here a connection is driven by whoever waits on it: the request's own task polls hyper's
//! HTTP/1 [`Connection`] while it waits for the response head, and the response body polls it
//! while the client's connection reads the body, so the whole exchange stays in the task that
//! serves the client. A connection goes back to the pool when its response has been read to the
//! end and it is ready for the next request; an answer abandoned half-way closes it.
//!
//! Wake-ups that the exchange sends itself while it is being polled (hyper's own channels between
//! the connection and the response) are caught by a [`Gate`] and turned into one more turn of
//! the same poll, instead of rescheduling the task (another trip through the scheduler), whoever
//! polls the body. Idle connections are checked when they are taken (one that the upstream closed is
//! dropped, and a request it could not send goes to another connection) and dropped after
//! [`IDLE_TIMEOUT`]; beyond the [`WARM`] most recently used, after [`SPARE_TIMEOUT`], so a burst's
//! connections do not hold memory long after it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, Request, Response};
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ReqBody;
use crate::util::gate::Gate;

/// Idle connections are closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept up to [`IDLE_TIMEOUT`] (per serving thread, as the limits below but
/// [`MAX_CONNECTING`]); those beyond are closed after [`SPARE_TIMEOUT`].
pub const WARM: usize = 64;
/// How long an idle connection beyond the [`WARM`] most recent is kept.
pub const SPARE_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many idle connections.
pub const MAX_IDLE: usize = 1024;
/// Connection attempts in flight at once, over all serving threads; more wait their turn.
pub const MAX_CONNECTING: usize = 256;
/// How often idle connections are looked over.
const REAP_EVERY: Duration = Duration::from_secs(5);

type Conn = http1::Connection<TokioIo<TcpStream>, ReqBody>;

/// Why a request could not be sent or answered.
pub enum SendError {
    /// Connecting failed (refused, unreachable, timed out).
    Connect(std::io::Error),
    /// The connection failed while sending or before the response head.
    Http(hyper::Error),
}

/// A pool of HTTP/1.1 connections to one `host:port`.
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    /// The `host` header of every request.
    authority: HeaderValue,
    connect_timeout: Duration,
    /// Most recently used last.
    idle: Mutex<Vec<Idle>>,
    reaper: AtomicBool,
    /// Connection attempts in flight, at most [`MAX_CONNECTING`].
    connecting: Arc<tokio::sync::Semaphore>,
}

struct Idle {
    link: Box<Link>,
    since: Instant,
}

impl Pool {
    /// `connecting`: the connection attempts in flight at once, shared by the serving threads'
    /// pools ([`MAX_CONNECTING`]).
    pub fn new(
        host: &str,
        port: u16,
        authority: &str,
        connect_timeout: Duration,
        connecting: Arc<tokio::sync::Semaphore>,
    ) -> Option<Pool> {
        let authority = HeaderValue::from_str(authority).ok()?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Some(Pool {
            inner: Arc::new(Inner {
                host,
                port,
                authority,
                connect_timeout,
                idle: Mutex::new(Vec::new()),
                reaper: AtomicBool::new(false),
                connecting,
            }),
        })
    }

    /// Sends `req` (its URI in origin form) and waits for the response head; the body is read
    /// through the returned response (which drives the connection).
    pub async fn send(&self, mut req: Request<ReqBody>) -> Result<Response<InlineBody>, SendError> {
        req.headers_mut()
            .insert(axum::http::header::HOST, self.inner.authority.clone());
        loop {
            let (mut link, reused) = match self.inner.checkout() {
                Some(link) => (link, true),
                None => (self.inner.connect().await?, false),
            };
            let mut answer = std::pin::pin!(link.sender.try_send_request(req));
            let result = std::future::poll_fn(|cx| {
                let Link { conn, gate, .. } = &mut *link;
                gate.drive(cx, |gcx| {
                    poll_conn(conn, gcx);
                    answer.as_mut().poll(gcx)
                })
            })
            .await;
            match result {
                Ok(resp) => {
                    let (head, body) = resp.into_parts();
                    let body = InlineBody {
                        body,
                        link: Some(link),
                        pool: Arc::downgrade(&self.inner),
                    };
                    return Ok(Response::from_parts(head, body));
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection the upstream had closed: the request was not sent.
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that is still open and ready.
    fn checkout(&self) -> Option<Box<Link>> {
        loop {
            let Idle { mut link, since } = self.lock().pop()?;
            if since.elapsed() < IDLE_TIMEOUT && link.still_open() {
                return Some(link);
            }
        }
    }

    fn checkin(self: &Arc<Self>, link: Box<Link>) {
        link.gate.park();
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            link,
            since: Instant::now(),
        });
        drop(idle);
        if !self.reaper.load(Ordering::Relaxed)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
            && !self.reaper.swap(true, Ordering::Relaxed)
        {
            runtime.spawn(reap(Arc::downgrade(self)));
        }
    }

    async fn connect(&self) -> Result<Box<Link>, SendError> {
        // A burst of new streams would otherwise open thousands of connections at once and
        // overflow the upstream's accept queue (SYNs dropped, retried after seconds).
        let _turn = self.connecting.acquire().await;
        let stream = tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| {
                SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {}:{} took over {} s",
                        self.host,
                        self.port,
                        self.connect_timeout.as_secs_f64()
                    ),
                ))
            })??;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        Ok(Box::new(Link::new(sender, conn)))
    }

    /// A TCP connection to the first address that answers, with `TCP_NODELAY` and keep-alive.
    async fn open(&self) -> Result<TcpStream, SendError> {
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(SendError::Connect)?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new()
                        .with_time(Duration::from_secs(15))
                        .with_interval(Duration::from_secs(15))
                        .with_retries(3);
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(SendError::Connect(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} has no address", self.host),
            )
        })))
    }

    /// Closes idle connections past their time.
    fn reap(&self) {
        let now = Instant::now();
        let mut idle = self.lock();
        let spare = idle.len().saturating_sub(WARM);
        let mut i = 0;
        idle.retain(|entry| {
            let age = now.saturating_duration_since(entry.since);
            let keep = age < IDLE_TIMEOUT && (i >= spare || age < SPARE_TIMEOUT);
            i += 1;
            keep
        });
    }
}

/// Looks over the pool's idle connections every [`REAP_EVERY`] while the pool exists.
async fn reap(pool: Weak<Inner>) {
    let mut every = tokio::time::interval(REAP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.reap();
    }
}

/// Polls the connection; once it completes (closed, or failed) it is dropped, which ends what
/// still waited on it (the response head or body gets hyper's error).
fn poll_conn(conn: &mut Option<Conn>, cx: &mut Context<'_>) {
    if let Some(c) = conn
        && Pin::new(c).poll(cx).is_ready()
    {
        *conn = None;
    }
}

/// One connection: the request side, the connection itself, and its gate.
struct Link {
    sender: http1::SendRequest<ReqBody>,
    /// `None` once it completed.
    conn: Option<Conn>,
    gate: Gate,
}

impl Link {
    fn new(sender: http1::SendRequest<ReqBody>, conn: Conn) -> Link {
        Link {
            sender,
            conn: Some(conn),
            gate: Gate::new(),
        }
    }

    /// Polls the idle connection once (no waker: nobody waits on an idle connection): one the
    /// upstream closed completes, and is not taken.
    fn still_open(&mut self) -> bool {
        poll_conn(&mut self.conn, &mut Context::from_waker(Waker::noop()));
        self.conn.is_some() && self.sender.is_ready()
    }
}

/// A response body read from a connection the reader drives; at its end the connection goes
/// back to the pool.
pub struct InlineBody {
    body: Incoming,
    /// `None` once the connection went back to the pool (or closed).
    link: Option<Box<Link>>,
    pool: Weak<Inner>,
}

impl InlineBody {
    /// The body was read to its end: the connection goes back to the pool if it is ready for
    /// another request.
    fn finish(&mut self) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        if let Some(pool) = self.pool.upgrade()
            && link.still_open()
        {
            pool.checkin(link);
        }
    }
}

impl hyper::body::Body for InlineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match this.link.as_mut() {
            // The connection is closed: what it left in the body's channel.
            None => return Pin::new(&mut this.body).poll_frame(cx),
            Some(link) if link.conn.is_none() => Pin::new(&mut this.body).poll_frame(cx),
            Some(link) => {
                let Link { conn, gate, .. } = &mut **link;
                let body = &mut this.body;
                // The body first (a frame already in its channel is taken without touching the
                // connection; polling it asks the connection for more), then the connection
                // (which reads and hands the next frame over), then the body again.
                gate.drive(cx, |gcx| {
                    if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(gcx) {
                        return Poll::Ready(frame);
                    }
                    poll_conn(conn, gcx);
                    Pin::new(&mut *body).poll_frame(gcx)
                })
            }
        };
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.link = None,
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for InlineBody {
    fn drop(&mut self) {
        // Read to its end without a last poll (a known length): still reusable. Abandoned
        // half-way: dropping the link closes the connection.
        if hyper::body::Body::is_end_stream(&self.body) {
            self.finish();
        }
    }
}
