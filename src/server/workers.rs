//! The serving threads: each client connection is served, from its first byte to its last, by
//! one thread that runs a single-threaded runtime of its own, together with the upstream
//! connections its requests use (`upstream` keeps its pools per serving thread, picked by
//! [`crate::util::worker::index`]).
//!
//! With one runtime whose workers share every task, a stream's events crossed threads: an
//! upstream HTTP/2 connection read on one worker woke requests that a worker may have stolen
//! onto the other, which then woke their client's connection task, wherever it last ran. Every
//! hand-over moved the connection's shared state (h2's locked stream store, the task's header)
//! between the cores' caches. Here nothing a request touches on its way through is shared with
//! another serving thread, except the server-wide state behind `AppState` (limits, credentials,
//! keys, the observer's channel).
//!
//! The acceptor (on the main runtime) hands each new connection to the serving thread with the
//! fewest open connections (the first such: on an idle server, a client opening one connection
//! after another finds the thread, and the upstream connections, it used before), so that
//! long-lived connections (HTTP/2 clients, keep-alive pools) spread evenly whatever order they
//! come and go in. A connection stays on its thread: all the streams of one HTTP/2 client
//! connection share one core, as in other servers built this way.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::conn::{self, ConnLimits};
use crate::util::worker::Connections;

/// How long [`Workers::stop`] waits for the serving threads.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A connection the acceptor took, on its way to a serving thread.
struct Accepted {
    tcp: std::net::TcpStream,
    /// Graceful shutdown's watches, taken before the acceptor stopped (so shutdown waits for
    /// them): one for the HTTP connection, one held by its [`ConnectionHold`] (so shutdown also
    /// waits for a WebSocket session it was upgraded to).
    watchers: [Watcher; 2],
    /// The connection's place under `max_connections`, held until it closes.
    permit: Option<OwnedSemaphorePermit>,
}

/// A client connection's place on its serving thread, under `max_connections` and in what
/// graceful shutdown waits for; given back when the last holder drops it: the connection's task,
/// and a WebSocket session the connection was upgraded to (`socket.rs` takes it from the upgrade
/// request's extensions), which outlives the HTTP connection it came from.
pub(super) struct ConnectionHold {
    open: Arc<Connections>,
    index: usize,
    _permit: Option<OwnedSemaphorePermit>,
    _watcher: Watcher,
}

impl Drop for ConnectionHold {
    fn drop(&mut self) {
        self.open.closed(self.index);
    }
}

/// The serving threads.
pub(super) struct Workers {
    workers: Vec<Worker>,
    open: Arc<Connections>,
}

struct Worker {
    tx: mpsc::UnboundedSender<Accepted>,
    /// Ends the thread once its connections are done (or the grace period is over).
    exit: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Workers {
    /// Starts a serving thread for each of `open`'s counters, each serving the connections it is
    /// handed with `app`.
    pub(super) fn start(
        open: &Arc<Connections>,
        app: &Router,
        limits: &ConnLimits,
    ) -> std::io::Result<Workers> {
        let n = open.threads();
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // A thread about to sleep hands a burst's cached memory back when asked.
                .on_thread_park(crate::util::memory::release_if_asked)
                .build()?;
            let (tx, rx) = mpsc::unbounded_channel();
            let (exit, exit_rx) = oneshot::channel();
            let serve = serve(rx, exit_rx, app.clone(), limits.clone(), open.clone(), i);
            let thread = std::thread::Builder::new()
                .name(format!("ccproxy-serve-{i}"))
                .spawn(move || {
                    crate::util::worker::set_index(i);
                    runtime.block_on(serve);
                    // Blocking work still running (a slow database call of a request that is
                    // gone) is left to finish on its own: shutdown does not wait for it.
                    runtime.shutdown_timeout(Duration::from_millis(100));
                })?;
            workers.push(Worker { tx, exit, thread });
        }
        Ok(Workers {
            workers,
            open: open.clone(),
        })
    }

    /// Hands a new connection to the serving thread with the fewest open connections.
    pub(super) fn dispatch(
        &self,
        tcp: tokio::net::TcpStream,
        watchers: [Watcher; 2],
        permit: Option<OwnedSemaphorePermit>,
    ) {
        // Off this runtime's poller; the serving thread registers it with its own.
        let Ok(tcp) = tcp.into_std() else {
            return;
        };
        let i = self.open.least_busy();
        self.open.opened(i);
        let accepted = Accepted {
            tcp,
            watchers,
            permit,
        };
        if self.workers[i].tx.send(accepted).is_err() {
            // The thread is gone (it cannot be, before `stop`): the connection closes.
            self.open.closed(i);
            tracing::error!(
                thread = i,
                "a serving thread has stopped; a connection was closed"
            );
        }
    }

    /// Ends the serving threads, and the connections still open on them, and waits for them.
    pub(super) async fn stop(self) {
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|w| {
                let _ = w.exit.send(());
                w.thread
            })
            .collect();
        // Joined on a thread of its own, not the runtime's blocking pool: a stuck serving thread
        // must not keep the process from exiting (the runtime waits for its blocking tasks).
        let (done, joined) = oneshot::channel();
        let joiner = std::thread::Builder::new()
            .name("ccproxy-serve-join".into())
            .spawn(move || {
                for t in threads {
                    let _ = t.join();
                }
                let _ = done.send(());
            });
        if joiner.is_err() || tokio::time::timeout(STOP_WAIT, joined).await.is_err() {
            tracing::warn!("the serving threads did not stop in time; going on without them");
        }
    }
}

/// A serving thread: serves each connection it is handed until the acceptor stops, then keeps
/// running them until told to exit.
async fn serve(
    mut rx: mpsc::UnboundedReceiver<Accepted>,
    exit: oneshot::Receiver<()>,
    app: Router,
    limits: ConnLimits,
    open: Arc<Connections>,
    index: usize,
) {
    let builder = conn::builder(&limits);
    // A quiet thread may not park for a long time after a burst: it hands its allocator cache
    // back when asked at least this often (`util::memory`).
    tokio::spawn(async {
        let mut every = tokio::time::interval(crate::util::memory::RELEASE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            crate::util::memory::release_if_asked();
        }
    });
    let accept = async {
        while let Some(a) = rx.recv().await {
            let [watcher, held] = a.watchers;
            let hold = Arc::new(ConnectionHold {
                open: open.clone(),
                index,
                _permit: a.permit,
                _watcher: held,
            });
            let Ok(tcp) = tokio::net::TcpStream::from_std(a.tcp) else {
                continue;
            };
            let upgrades = hold.clone();
            let svc = TowerToHyperService::new(tower::ServiceExt::map_response(
                tower::ServiceExt::map_request(
                    app.clone(),
                    move |req: axum::http::Request<Incoming>| {
                        let mut req = req.map(Body::new);
                        // Only a request asking to upgrade carries the hold: a plain request
                        // pays one header lookup.
                        if req.headers().contains_key(axum::http::header::UPGRADE) {
                            req.extensions_mut().insert(upgrades.clone());
                        }
                        req
                    },
                ),
                super::Permitted::new,
            ));
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                .into_owned();
            // The connection's own wake-ups (hyper's dispatcher and the handler feeding each
            // other through channels) are absorbed instead of rescheduling the task:
            // `util::gate`.
            let conn = crate::util::gate::Coalesced::new(watcher.watch(conn));
            tokio::spawn(async move {
                // Errors here are the client's (reset, timeout, bad request line).
                let _ = conn.await;
                drop(hold);
            });
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = accept => {}
        _ = exit => {}
    }
}
