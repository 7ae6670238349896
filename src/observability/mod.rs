//! Observability: the per-request record, structured logs, Prometheus metrics,
//! and the usage store (off the request path).

pub mod usage;

/// Token counts of one request (the crate's one usage type).
pub use crate::api::anthropic::Tokens;

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
    /// The pool credential's name (`server_oauth` / `server_api_key` for the implicit pool), or
    /// `client` for the client's own key.
    pub credential: Option<String>,
    /// What the request was billed to: `plan` (a subscription within its plan's limits),
    /// `extra_usage` (a subscription's overage), `api` (an API key), or unknown.
    pub bucket: Option<String>,
    /// The client key's name (never the key), when the request came with one.
    #[serde(default)]
    pub client_key: Option<String>,
}

mod jscan;
pub mod prom;
mod reqlog;
pub mod tap;

pub use reqlog::LogStyle;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

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
    /// Dropped once the sink has taken the record (see [`InFlight::hold_until_counted`]).
    pub held: Vec<Box<dyn Send + Sync>>,
    /// A whole body whose usage and model the observer reads (see [`Tap::Whole`]).
    pub deferred: Option<Tap>,
}

impl Finished {
    /// Reads the deferred body, if any, into the record: its tokens, and its model when the
    /// request named none.
    fn read_deferred(&mut self) {
        let Some(mut tap) = self.deferred.take() else {
            return;
        };
        let mut m = Metered::default();
        // The body is the upstream's: whatever it holds must not take the observer thread down
        // with it (every later record would be lost).
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tap.finish(&mut m)));
        if read.is_err() {
            tracing::error!(request_id = %self.record.request_id, "could not read the answer's usage");
            return;
        }
        self.record.tokens = m.tokens;
        if self.record.model.is_none() {
            self.record.model = m.model;
        }
    }
}

/// Logs, meters and stores finished requests on its own thread, so the request
/// path only pays for one non-blocking channel send.
pub struct Observer {
    tx: SyncSender<Msg>,
    /// The observer thread, unparked by what must not wait for its next round (a flush).
    thread: Option<std::thread::Thread>,
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
        let thread = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the observer thread; requests will not be logged");
                None
            }
        };
        Arc::new(Observer {
            tx,
            thread,
            dropped: AtomicU64::new(0),
        })
    }

    /// Hands a finished request over; never blocks (drops and counts when full).
    pub fn submit(&self, f: Finished) {
        // Something waits for this record to be counted (a budget's last request): no need to
        // wait for the observer's next round.
        let urgent = !f.held.is_empty();
        match self.tx.try_send(Msg::Finished(Box::new(f))) {
            Ok(()) => {
                if urgent {
                    self.unpark();
                }
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                counter!("ccproxy_observer_dropped_total").increment(1);
            }
        }
    }
}

impl Observer {
    fn unpark(&self) {
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }

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
                    self.unpark();
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        self.unpark();
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// How long the observer sleeps between rounds while requests keep finishing.
const ROUND: Duration = Duration::from_millis(2);
/// Empty rounds before it goes back to waiting on the channel.
const QUIET_ROUNDS: u32 = 5;

/// Handles finished requests. The first record after a quiet spell wakes the thread (a blocking
/// receive); while requests keep finishing it takes them in rounds every [`ROUND`], asleep in
/// between, so a request's send never wakes it (no futex call and no context switch per request
/// on the request path); after [`QUIET_ROUNDS`] empty rounds it waits on the channel again. A
/// round's request log lines go to stderr in one write.
fn observer_loop(rx: Receiver<Msg>, cost: CostFn, mut sink: Option<SinkFn>, log: LogStyle) {
    let mut metrics = reqlog::MetricCache::default();
    let mut line = String::with_capacity(512);
    // The round's request log lines, written with one call before the thread sleeps (a write
    // per line was a system call per request).
    let mut lines = String::with_capacity(LOG_BATCH);
    let mut handle = |msg: Msg, lines: &mut String| {
        let mut f = match msg {
            Msg::Finished(f) => f,
            Msg::Flush(done) => {
                write_lines(lines);
                let _ = done.send(());
                return;
            }
        };
        f.read_deferred();
        let r = &mut f.record;
        if let Some(model) = r.model.as_deref() {
            r.cost_usd = cost(model, &r.tokens);
        }
        metrics.record(r);
        if tracing::enabled!(target: "ccproxy::request", tracing::Level::INFO) {
            reqlog::write_line(&mut line, &f, log);
            lines.push_str(&line);
            if lines.len() >= LOG_BATCH {
                write_lines(lines);
            }
        }
        if let Some(sink) = sink.as_mut() {
            sink(f.record);
        }
        // What waited for the record to be counted (a client key's uncounted request).
        drop(f.held);
    };
    while let Ok(msg) = crate::util::memory::recv(&rx) {
        handle(msg, &mut lines);
        let mut quiet = 0;
        while quiet < QUIET_ROUNDS {
            let mut took = false;
            loop {
                match rx.try_recv() {
                    Ok(msg) => {
                        handle(msg, &mut lines);
                        took = true;
                    }
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        write_lines(&mut lines);
                        return;
                    }
                }
            }
            write_lines(&mut lines);
            quiet = if took { 0 } else { quiet + 1 };
            std::thread::park_timeout(ROUND);
        }
    }
    write_lines(&mut lines);
}

/// Request log lines are written once this many bytes are waiting, even mid-round.
const LOG_BATCH: usize = 32 * 1024;

/// Writes the waiting request log lines to stderr in one call, and empties them.
fn write_lines(lines: &mut String) {
    if lines.is_empty() {
        return;
    }
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(lines.as_bytes());
    lines.clear();
}

/// How a request ended, as far as its record is concerned. A record is in
/// exactly one of these states, so it cannot say both "abandoned" and "failed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Still going; a record dropped in this state was abandoned by the client.
    Pending,
    /// The upstream's answer reached its end (whatever its status).
    Completed,
    /// The request failed with an error (recorded with its message).
    Failed,
}

/// The usage record of one request in flight, changed only through named
/// transitions. Dropping it finishes it (the one place records are finished):
/// logged, metered and stored, also when the client went away mid-stream
/// (recorded as abandoned, with the tokens of what was delivered).
///
/// `repr(C)`: what a streamed event touches comes first, on as few cache lines as it fits (see
/// `pipeline::respond`'s `StreamState`): the tap, the time to the first content once noted,
/// and what the tap meters. rustc keeps the `None` of an `Option<InFlight>` in the first
/// field with the most invalid values, an `Option<f64>`'s tag: `first_content_ms`, here, rather
/// than the record's `cost_usd`, a line of its own read at every event (`perf annotate`,
/// 10 000 streams).
#[repr(C)]
pub struct InFlight {
    tap: Tap,
    /// Milliseconds to the first content event, once noted (then also in `record.ttft_ms`):
    /// read per event, beside the tap.
    first_content_ms: Option<f64>,
    metered: Metered,
    t0: Instant,
    observer: Arc<Observer>,
    record: UsageRecord,
    route: &'static str,
    upstream_request_id: Option<String>,
    /// How long the upstream took to answer with its head (or whole body).
    upstream_wait: Option<Duration>,
    outcome: Outcome,
    streaming: bool,
    /// Held until the record finishes (a credential's in-flight count, a client key's
    /// concurrency slot), whatever they are.
    held: Vec<Box<dyn Send + Sync>>,
    /// Handed to the observer with the record (dropped after the sink).
    held_until_counted: Vec<Box<dyn Send + Sync>>,
}

impl InFlight {
    pub fn new(
        observer: Arc<Observer>,
        request_id: String,
        mode: &str,
        dialect: &str,
        route: &'static str,
    ) -> InFlight {
        InFlight {
            observer,
            record: UsageRecord {
                ts_ms: now_ms(),
                request_id,
                mode: mode.to_owned(),
                dialect: dialect.to_owned(),
                ..UsageRecord::default()
            },
            route,
            t0: Instant::now(),
            upstream_request_id: None,
            upstream_wait: None,
            tap: Tap::None,
            first_content_ms: None,
            metered: Metered::default(),
            outcome: Outcome::Pending,
            streaming: false,
            held: Vec::new(),
            held_until_counted: Vec::new(),
        }
    }

    /// The request was read and prepared: what it asks for, and whose credential goes upstream.
    pub fn identified(&mut self, model: Option<String>, stream: bool, credential: &str) {
        self.record.model = model;
        self.record.stream = stream;
        self.record.credential = Some(credential.to_owned());
    }

    /// Keeps `value` until the request is over (its stream included).
    pub fn hold(&mut self, value: Box<dyn Send + Sync>) {
        self.held.push(value);
    }

    /// Holds `value` until the record has been through the sink (its cost counted), not only
    /// until the request ends: a shared budget's "one request at a time" near its end.
    pub fn hold_until_counted(&mut self, value: Box<dyn Send + Sync>) {
        self.held_until_counted.push(value);
    }

    /// The request came with client key `name`; `hold` (its concurrency slot) is
    /// released when the record is finished (the stream's end for streams).
    pub fn client_key(&mut self, name: String, hold: Option<Box<dyn Send + Sync>>) {
        self.record.client_key = Some(name);
        self.held.extend(hold);
    }

    /// The credential that served the request (its pool name, or `client`).
    pub fn served_by(&mut self, credential: &str) {
        if self.record.credential.as_deref() != Some(credential) {
            self.record.credential = Some(credential.to_owned());
        }
    }

    /// What the upstream said the request is billed to (see [`UsageRecord::bucket`]).
    pub fn billed_to(&mut self, bucket: &'static str) {
        self.record.bucket = Some(bucket.to_owned());
    }

    /// The upstream answered with its head after `waited`.
    pub fn upstream_answered(&mut self, status: u16, waited: Duration, request_id: Option<String>) {
        self.upstream_wait = Some(waited);
        self.record.upstream_status = Some(status);
        self.record.status = status;
        self.upstream_request_id = request_id;
    }

    /// The upstream's whole (non-stream) body was read after `waited`.
    pub fn upstream_read(&mut self, waited: Duration) {
        self.upstream_wait = Some(waited);
    }

    /// How long the upstream took (head, or whole body when read whole).
    pub fn upstream_wait(&self) -> Option<Duration> {
        self.upstream_wait
    }

    /// Meters the upstream's body with `tap` from now on.
    pub fn meter_with(&mut self, tap: Tap) {
        self.tap = tap;
    }

    /// The response head goes to the client with `status`.
    pub fn responded(&mut self, status: u16) {
        self.record.status = status;
        self.record.proxy_ms = self.proxy_ms();
    }

    /// A stream starts relaying to the client (counted in the active-streams gauge).
    pub fn stream_started(&mut self, status: u16) {
        if !self.streaming {
            self.streaming = true;
            gauge!("ccproxy_active_streams").increment(1.0);
        }
        self.record.stream = true;
        self.responded(status);
    }

    /// The whole upstream body passed, metered with `tap`: a small JSON body is read on the
    /// observer thread, after the answer went out (see [`Tap::Whole`]).
    pub fn observe_whole(&mut self, tap: Tap, body: &[u8]) {
        self.tap = tap.over_whole(body, &mut self.metered);
        self.note_content();
    }

    /// A whole Messages answer the pipeline parsed itself (to convert it): its usage and
    /// model, without a tap reading the body again. Unlike the tap, which only counts an
    /// answer over `MAX_JSON_TAP` as content, this reads the usage of any size; the first
    /// content is noted once the answer is parsed.
    pub fn observe_message(&mut self, msg: &crate::api::anthropic::Message<'_>) {
        self.metered.first_content = true;
        tap::on_anthropic_message(msg, &mut self.metered);
        self.note_content();
    }

    /// A chunk of the upstream body passed (fed to the tap; notes the first content).
    pub fn observe(&mut self, chunk: &[u8]) {
        self.tap.push(chunk, &mut self.metered);
        self.note_content();
    }

    /// One parsed Anthropic event passed (for streams the pipeline parses itself).
    pub fn observe_event(&mut self, event: &str, data: &[u8]) {
        tap::on_anthropic_event(event, data, &mut self.metered);
    }

    /// Notes the first content event now, if it came and was not yet noted.
    pub fn note_content(&mut self) {
        if self.first_content_ms.is_none() && self.metered.first_content {
            let ms = self.elapsed_ms();
            self.first_content_ms = Some(ms);
            self.record.ttft_ms.get_or_insert(ms);
        }
    }

    /// The upstream's answer reached its end.
    pub fn completed(&mut self) {
        self.finish_tap();
        if self.outcome == Outcome::Pending {
            self.outcome = Outcome::Completed;
        }
    }

    /// The request failed: the error's status and message are recorded, and its
    /// origin counted (`ccproxy_errors_total`).
    pub fn failed(&mut self, e: &crate::error::ProxyError) {
        self.finish_tap();
        self.outcome = Outcome::Failed;
        self.record.status = e.status().as_u16();
        self.record.error = Some(e.message().into_owned());
        counter!("ccproxy_errors_total", "origin" => e.origin.name()).increment(1);
    }

    fn finish_tap(&mut self) {
        if self.tap.is_deferred() {
            // Read by the observer; the body is all there, so its content came.
            self.metered.first_content = true;
            self.note_content();
            return;
        }
        let mut tap = std::mem::replace(&mut self.tap, Tap::None);
        tap.finish(&mut self.metered);
        self.note_content();
    }

    /// Milliseconds since the request started.
    fn elapsed_ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    /// The proxy's own time so far: everything but the wait for the upstream.
    fn proxy_ms(&self) -> f64 {
        let upstream = self
            .upstream_wait
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        (self.elapsed_ms() - upstream).max(0.0)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.streaming {
            gauge!("ccproxy_active_streams").decrement(1.0);
        }
        self.held.clear();
        // A body cut short keeps what the tap read of what was delivered.
        self.finish_tap();
        let mut record = std::mem::take(&mut self.record);
        record.duration_ms = self.elapsed_ms();
        record.tokens = self.metered.tokens;
        if let Some(m) = self.metered.model.take()
            && record.model.is_none()
        {
            record.model = Some(m);
        }
        if record.error.is_none() {
            record.error = self.metered.stream_error.take();
        }
        record.abandoned = self.outcome == Outcome::Pending;
        let deferred = match std::mem::replace(&mut self.tap, Tap::None) {
            tap @ Tap::Whole(..) => Some(tap),
            _ => None,
        };
        self.observer.submit(Finished {
            record,
            route: self.route,
            upstream_request_id: self.upstream_request_id.take(),
            held: std::mem::take(&mut self.held_until_counted),
            deferred,
        });
    }
}

use crate::util::time::now_ms;
