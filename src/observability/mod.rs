//! Observability: the per-request record, structured logs, Prometheus metrics,
//! and the usage store (off the request path).

pub mod usage;

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// One finished request, as the usage store keeps it. Contains no secrets.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    /// Start time, epoch milliseconds.
    pub ts_ms: i64,
    pub request_id: String,
    /// `full`, `minimal` or `passthrough`.
    pub mode: String,
    /// `anthropic` or `openai`.
    pub dialect: String,
    /// The Claude model billed (for OpenAI requests, the model it was mapped to).
    pub model: Option<String>,
    pub stream: bool,
    /// Status sent to the client.
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub tokens: Tokens,
    /// Estimated cost in USD; `None` when the model's price is unknown.
    pub cost_usd: Option<f64>,
    pub duration_ms: f64,
    /// Time to the first content event (streams) or to the response (non-stream).
    pub ttft_ms: Option<f64>,
    /// Time the proxy itself added before the response head.
    pub proxy_ms: f64,
    /// The client went away before the end: tokens are what was delivered.
    pub abandoned: bool,
    pub error: Option<String>,
    /// `server_oauth`, `client` or `server_api_key`.
    pub credential: Option<String>,
}

pub mod prom;
mod reqlog;
pub mod tap;

pub use reqlog::LogStyle;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use metrics::{counter, gauge};

use tap::{Metered, Tap};

/// Computes a request's cost from its model and tokens.
pub type CostFn = Box<dyn Fn(&str, &Tokens) -> Option<f64> + Send>;
/// Receives finished records (the usage store).
pub type SinkFn = Box<dyn FnMut(UsageRecord) + Send>;

enum Msg {
    Finished(Box<Finished>),
    /// Answer once everything sent before has been handled.
    Flush(SyncSender<()>),
}

/// A finished request, on its way to the observer thread.
pub struct Finished {
    pub record: UsageRecord,
    pub route: &'static str,
    pub upstream_request_id: Option<String>,
}

/// Logs, meters and stores finished requests on its own thread, so the request
/// path only pays for one non-blocking channel send.
pub struct Observer {
    tx: SyncSender<Msg>,
    pub dropped: AtomicU64,
}

impl Observer {
    pub fn start(
        capacity: usize,
        cost: CostFn,
        sink: Option<SinkFn>,
        log: LogStyle,
    ) -> Arc<Observer> {
        let (tx, rx) = sync_channel(capacity);
        let spawned = std::thread::Builder::new()
            .name("ccproxy-observer".into())
            .spawn(move || observer_loop(rx, cost, sink, log));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the observer thread; requests will not be logged");
        }
        Arc::new(Observer {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Hands a finished request over; never blocks (drops and counts when full).
    pub fn submit(&self, f: Finished) {
        match self.tx.try_send(Msg::Finished(Box::new(f))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                counter!("ccproxy_observer_dropped_total").increment(1);
            }
        }
    }
}

impl Observer {
    /// Waits (up to `timeout`) until everything submitted so far was logged and
    /// handed to the sink. For shutdown and tests.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

fn observer_loop(rx: Receiver<Msg>, cost: CostFn, mut sink: Option<SinkFn>, log: LogStyle) {
    let mut metrics = reqlog::MetricCache::default();
    let mut line = String::with_capacity(512);
    while let Ok(msg) = rx.recv() {
        let mut f = match msg {
            Msg::Finished(f) => f,
            Msg::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let r = &mut f.record;
        if let Some(model) = r.model.as_deref() {
            r.cost_usd = cost(model, &r.tokens);
        }
        metrics.record(r);
        if tracing::enabled!(target: "ccproxy::request", tracing::Level::INFO) {
            reqlog::write_line(&mut line, &f, log);
            use std::io::Write as _;
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        if let Some(sink) = sink.as_mut() {
            sink(f.record);
        }
    }
}

/// One request in flight. Dropping it finishes it: logged, metered and stored,
/// also when the client went away mid-stream (marked abandoned).
pub struct InFlight {
    observer: Arc<Observer>,
    pub record: UsageRecord,
    pub route: &'static str,
    pub t0: Instant,
    pub upstream_request_id: Option<String>,
    /// How long the upstream took to answer with its head.
    pub upstream_head: Option<Duration>,
    pub metered: Metered,
    /// The body (or the whole response) completed.
    pub completed: bool,
    streaming: bool,
}

impl InFlight {
    pub fn new(
        observer: Arc<Observer>,
        request_id: String,
        mode: &str,
        dialect: &str,
        route: &'static str,
    ) -> InFlight {
        let ts_ms = crate::util::time::now_ms();
        InFlight {
            observer,
            record: UsageRecord {
                ts_ms,
                request_id,
                mode: mode.to_owned(),
                dialect: dialect.to_owned(),
                ..UsageRecord::default()
            },
            route,
            t0: Instant::now(),
            upstream_request_id: None,
            upstream_head: None,
            metered: Metered::default(),
            completed: false,
            streaming: false,
        }
    }

    /// Milliseconds since the request started.
    pub fn elapsed_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    /// The proxy's own time so far: everything but the wait for the upstream's head.
    pub fn proxy_ms(&self) -> f64 {
        let upstream = self
            .upstream_head
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        (self.elapsed_ms() - upstream).max(0.0)
    }

    /// Marks the start of a relayed stream (counted in the active-streams gauge).
    pub fn begin_stream(&mut self) {
        if !self.streaming {
            self.streaming = true;
            gauge!("ccproxy_active_streams").increment(1.0);
        }
    }

    /// Notes the first content event now, if not yet noted.
    pub fn note_content(&mut self) {
        if self.record.ttft_ms.is_none() && self.metered.first_content {
            self.record.ttft_ms = Some(self.elapsed_ms());
        }
    }

    /// Feeds a chunk of the upstream body through a tap.
    pub fn observe(&mut self, tap: &mut Tap, chunk: &[u8]) {
        tap.push(chunk, &mut self.metered);
        self.note_content();
    }

    /// The upstream body ended.
    pub fn end(&mut self, tap: &mut Tap) {
        tap.finish(&mut self.metered);
        self.note_content();
        self.completed = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.streaming {
            gauge!("ccproxy_active_streams").decrement(1.0);
        }
        let mut record = std::mem::take(&mut self.record);
        record.duration_ms = self.elapsed_ms();
        record.tokens = self.metered.tokens;
        if let Some(m) = self.metered.model.take() {
            if record.model.is_none() {
                record.model = Some(m);
            }
        }
        if record.error.is_none() {
            record.error = self.metered.stream_error.take();
        }
        record.abandoned = !self.completed;
        self.observer.submit(Finished {
            record,
            route: self.route,
            upstream_request_id: self.upstream_request_id.take(),
        });
    }
}

/// A relayed body that feeds a tap and finishes its request when it ends or is dropped.
pub struct MeteredBody<S> {
    inner: S,
    tap: Tap,
    flight: Option<InFlight>,
}

impl<S> MeteredBody<S> {
    pub fn new(inner: S, tap: Tap, flight: InFlight) -> Self {
        MeteredBody {
            inner,
            tap,
            flight: Some(flight),
        }
    }
}

impl<S> Drop for MeteredBody<S> {
    fn drop(&mut self) {
        if let Some(mut flight) = self.flight.take() {
            // Dropped before its end: the client went away (abandoned); keep
            // what the tap read of what was delivered.
            self.tap.finish(&mut flight.metered);
            flight.note_content();
            flight.completed = false;
        }
    }
}

impl<S, E> Stream for MeteredBody<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    type Item = Result<Bytes, E>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_next(cx);
        if let std::task::Poll::Ready(item) = &polled {
            if let Some(flight) = this.flight.as_mut() {
                match item {
                    Some(Ok(chunk)) => flight.observe(&mut this.tap, chunk),
                    Some(Err(e)) => flight.record.error = Some(e.to_string()),
                    None => {
                        flight.end(&mut this.tap);
                        // Finish now rather than when the body is dropped.
                        this.flight = None;
                    }
                }
            }
        }
        polled
    }
}
