//! Load generation: one arm (a target URL with its request), driven by N workers at fixed
//! concurrency (closed loop) or at a fixed rate (open loop, latency counted from the
//! scheduled send time), each worker keeping its own keep-alive connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::bodies::BodyKind;
use crate::http1::{BodySink, Conn, Target, request_bytes};
use crate::sse::{PlainSink, SseTrack, responses_answer_ok};

/// One target of a run.
pub struct Arm {
    pub name: String,
    /// The arm this one is compared with (its direct-to-upstream baseline).
    pub base: Option<String>,
    pub kind: BodyKind,
    pub url: String,
    pub target: Target,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub h2: bool,
    /// The process whose CPU time and memory are metered (with its descendants).
    pub pid: Option<u32>,
    /// The whole HTTP/1.1 request, serialized once.
    pub req: Vec<u8>,
    pub body: Bytes,
    pub headers: reqwest::header::HeaderMap,
}

impl Arm {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        base: Option<String>,
        kind: BodyKind,
        url: String,
        h2: bool,
        pid: Option<u32>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<Arm> {
        let target = Target::parse(&url)?;
        let req = request_bytes(&target, &headers, &body);
        let mut hm = reqwest::header::HeaderMap::new();
        for (k, v) in &headers {
            hm.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes())?,
                reqwest::header::HeaderValue::from_str(v)?,
            );
        }
        Ok(Arm {
            name,
            base,
            kind,
            url,
            target,
            h2,
            pid,
            req,
            body: Bytes::from(body),
            headers: hm,
        })
    }
}

/// How one segment of load is driven.
#[derive(Clone)]
pub struct Plan {
    pub concurrency: usize,
    /// Total requests of the segment (closed loop), or the rate's ticket count.
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    /// Requests per second (open loop).
    pub rate: Option<f64>,
    /// Workers start evenly spread over this time.
    pub ramp: Duration,
    pub stream: bool,
    /// Benchmark tokens each stream must deliver.
    pub deltas: Option<u32>,
    pub stall: Duration,
    pub timeout: Duration,
}

/// What a segment measured (all durations in nanoseconds).
#[derive(Default)]
pub struct Seg {
    pub latency: Vec<u64>,
    pub ttfb: Vec<u64>,
    pub ttft: Vec<u64>,
    pub gaps: Vec<u64>,
    pub events: Vec<u32>,
    pub requests: u64,
    pub ok: u64,
    pub err_io: u64,
    pub err_status: u64,
    pub err_timeout: u64,
    /// Streams that ended without all their tokens or without their end marker.
    pub lost: u64,
    pub reordered: u64,
    /// Streams with a gap between content events longer than the stall limit.
    pub stalled: u64,
    pub error_events: u64,
    pub first_error: Option<String>,
    pub wall: Duration,
}

impl Seg {
    pub fn merge(&mut self, o: Seg) {
        self.latency.extend(o.latency);
        self.ttfb.extend(o.ttfb);
        self.ttft.extend(o.ttft);
        self.gaps.extend(o.gaps);
        self.events.extend(o.events);
        self.requests += o.requests;
        self.ok += o.ok;
        self.err_io += o.err_io;
        self.err_status += o.err_status;
        self.err_timeout += o.err_timeout;
        self.lost += o.lost;
        self.reordered += o.reordered;
        self.stalled += o.stalled;
        self.error_events += o.error_events;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    pub fn errors(&self) -> u64 {
        self.err_io + self.err_status + self.err_timeout
    }

    fn note_error(&mut self, e: String) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// A worker's connection.
pub enum Link {
    H1(Option<Conn>),
    H2(reqwest::Client),
}

/// The connections of an arm, kept across rounds (keep-alive).
pub struct Pool {
    pub links: Vec<Option<Link>>,
    h2_clients: Vec<reqwest::Client>,
}

impl Pool {
    pub fn new(arm: &Arm, concurrency: usize, streams_per_conn: usize) -> Result<Pool> {
        let mut h2_clients = Vec::new();
        if arm.h2 {
            let n = concurrency.div_ceil(streams_per_conn.max(1)).max(1);
            for _ in 0..n {
                h2_clients.push(
                    reqwest::Client::builder()
                        .http2_prior_knowledge()
                        .tcp_nodelay(true)
                        .no_proxy()
                        .pool_idle_timeout(None)
                        .build()?,
                );
            }
        }
        let mut p = Pool {
            links: Vec::new(),
            h2_clients,
        };
        p.resize(arm, concurrency);
        Ok(p)
    }

    /// Drops the open connections (HTTP/1.1); they reopen on next use.
    pub fn close(&mut self) {
        for l in &mut self.links {
            if let Some(Link::H1(c)) = l {
                *c = None;
            }
        }
    }

    fn resize(&mut self, arm: &Arm, concurrency: usize) {
        while self.links.len() < concurrency {
            let i = self.links.len();
            self.links.push(Some(if arm.h2 {
                Link::H2(self.h2_clients[i % self.h2_clients.len()].clone())
            } else {
                Link::H1(None)
            }));
        }
    }
}

struct Shared {
    remaining: AtomicI64,
    ticket: AtomicU64,
    start: Instant,
    deadline: Option<Instant>,
}

/// Runs one segment of load against an arm.
pub async fn run_segment(arm: &Arc<Arm>, plan: &Plan, pool: &mut Pool) -> Seg {
    pool.resize(arm, plan.concurrency);
    let start = Instant::now() + Duration::from_millis(2);
    let shared = Arc::new(Shared {
        remaining: AtomicI64::new(plan.requests.map(|n| n as i64).unwrap_or(i64::MAX)),
        ticket: AtomicU64::new(0),
        start,
        deadline: plan.duration.map(|d| start + plan.ramp + d),
    });
    let mut handles = Vec::with_capacity(plan.concurrency);
    for i in 0..plan.concurrency {
        let link = pool.links[i].take();
        let arm = arm.clone();
        let plan = plan.clone();
        let shared = shared.clone();
        let offset = if plan.concurrency > 1 {
            plan.ramp.mul_f64(i as f64 / plan.concurrency as f64)
        } else {
            Duration::ZERO
        };
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until((shared.start + offset).into()).await;
            worker(&arm, &plan, &shared, link).await
        }));
    }
    let mut seg = Seg::default();
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok((s, link)) => {
                seg.merge(s);
                pool.links[i] = link;
            }
            Err(e) => seg.note_error(format!("worker panicked: {e}")),
        }
    }
    // Throughput is counted over the whole segment, ramp included.
    seg.wall = start.elapsed();
    seg
}

async fn worker(
    arm: &Arm,
    plan: &Plan,
    shared: &Shared,
    mut link: Option<Link>,
) -> (Seg, Option<Link>) {
    let mut seg = Seg::default();
    let responses = arm.kind == BodyKind::Responses;
    let mut track = if responses {
        SseTrack::responses()
    } else {
        SseTrack::new()
    };
    let mut plain = PlainSink::default();
    if responses && !plan.stream {
        // A Responses answer is checked whole: a completed `response` with message text.
        plain.whole = Some(Vec::with_capacity(4096));
    }
    while let Some(due) = next_due(plan, shared).await {
        seg.requests += 1;
        let sink: &mut dyn BodySink = if plan.stream {
            track.reset();
            &mut track
        } else {
            plain.bytes = 0;
            plain.start.clear();
            if let Some(w) = &mut plain.whole {
                w.clear();
            }
            &mut plain
        };
        let fut = exchange(arm, &mut link, sink);
        let res = tokio::time::timeout(plan.timeout, fut).await;
        let end = Instant::now();
        let (t0, head) = match res {
            Err(_) => {
                seg.err_timeout += 1;
                seg.note_error(format!("{}: timed out after {:?}", arm.name, plan.timeout));
                link = reset_link(arm, link);
                continue;
            }
            Ok(Err(e)) => {
                seg.err_io += 1;
                seg.note_error(format!("{}: {e:#}", arm.name));
                link = reset_link(arm, link);
                // No hot loop on a refused or failed connection.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Ok(Ok(x)) => x,
        };
        let t0 = due.unwrap_or(t0);
        if plan.stream {
            track.finish(end);
        }
        if head.0 != 200 {
            seg.err_status += 1;
            let body = String::from_utf8_lossy(&plain.start).into_owned();
            seg.note_error(format!("{}: HTTP {} {}", arm.name, head.0, body));
            continue;
        }
        if let Some(w) = &plain.whole
            && !responses_answer_ok(w)
        {
            // A 200 that is not a completed response with text: an error, as a non-200 is.
            seg.err_status += 1;
            let body = String::from_utf8_lossy(&plain.start).into_owned();
            seg.note_error(format!(
                "{}: HTTP 200 without a completed response: {}",
                arm.name, body
            ));
            continue;
        }
        seg.ok += 1;
        seg.latency
            .push(end.saturating_duration_since(t0).as_nanos() as u64);
        seg.ttfb
            .push(head.1.saturating_duration_since(t0).as_nanos() as u64);
        if plan.stream {
            record_stream(&mut seg, arm, plan, &track, t0);
        }
    }
    (seg, link)
}

/// Takes the next request, if any is left: `Some(Some(due))` at a fixed rate (after sleeping
/// until it is due; latency counts from then), `Some(None)` in a closed loop, `None` when done.
async fn next_due(plan: &Plan, shared: &Shared) -> Option<Option<Instant>> {
    if let Some(rate) = plan.rate {
        let k = shared.ticket.fetch_add(1, Ordering::Relaxed);
        if plan.requests.is_some_and(|n| k >= n) {
            return None;
        }
        let due = shared.start + Duration::from_secs_f64(k as f64 / rate);
        if shared.deadline.is_some_and(|d| due >= d) {
            return None;
        }
        tokio::time::sleep_until(due.into()).await;
        Some(Some(due))
    } else {
        if shared.remaining.fetch_sub(1, Ordering::Relaxed) <= 0 {
            return None;
        }
        if shared.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        Some(None)
    }
}

/// Records what a complete stream delivered (first content, gaps, events) and what went wrong.
fn record_stream(seg: &mut Seg, arm: &Arm, plan: &Plan, track: &SseTrack, t0: Instant) {
    if let Some(f) = track.first_content {
        seg.ttft
            .push(f.saturating_duration_since(t0).as_nanos() as u64);
    }
    seg.gaps.extend_from_slice(&track.gaps_ns);
    seg.events.push(track.events);
    let want = plan.deltas.unwrap_or(0);
    if !track.done || track.tokens < want || track.first_content.is_none() {
        seg.lost += 1;
        seg.note_error(format!(
            "{}: stream lost events: {} of {want} tokens, end seen: {}",
            arm.name, track.tokens, track.done
        ));
    }
    if track.reordered {
        seg.reordered += 1;
    }
    if track.max_gap_ns > plan.stall.as_nanos() as u64 {
        seg.stalled += 1;
    }
    if track.error_event {
        seg.error_events += 1;
    }
}

fn reset_link(arm: &Arm, link: Option<Link>) -> Option<Link> {
    match link {
        Some(Link::H2(c)) => Some(Link::H2(c)),
        _ if !arm.h2 => Some(Link::H1(None)),
        other => other,
    }
}

/// One request: returns when it was sent, and the status and head time.
async fn exchange(
    arm: &Arm,
    link: &mut Option<Link>,
    sink: &mut dyn BodySink,
) -> Result<(Instant, (u16, Instant))> {
    match link {
        Some(Link::H1(slot)) => {
            // A reused connection the server closed while idle fails before any byte of
            // answer: reconnect once, as every HTTP client does.
            for attempt in 0..2 {
                let reused = slot.is_some();
                let conn = match slot {
                    Some(c) => c,
                    None => slot.insert(Conn::connect(arm.target.addr).await?),
                };
                let t0 = Instant::now();
                match conn.roundtrip(&arm.req, sink).await {
                    Ok(head) => {
                        if conn.closed {
                            *slot = None;
                        }
                        return Ok((t0, (head.status, head.at)));
                    }
                    Err(e) => {
                        *slot = None;
                        let retry = reused
                            && attempt == 0
                            && matches!(
                                e.kind(),
                                std::io::ErrorKind::UnexpectedEof
                                    | std::io::ErrorKind::ConnectionReset
                                    | std::io::ErrorKind::BrokenPipe
                            );
                        if !retry {
                            return Err(e.into());
                        }
                    }
                }
            }
            Err(anyhow!("unreachable"))
        }
        Some(Link::H2(client)) => {
            let t0 = Instant::now();
            let resp = client
                .post(&arm.url)
                .headers(arm.headers.clone())
                .body(arm.body.clone())
                .send()
                .await?;
            let head_at = Instant::now();
            let status = resp.status().as_u16();
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                sink.data(&chunk, Instant::now());
            }
            Ok((t0, (status, head_at)))
        }
        None => Err(anyhow!("no connection slot")),
    }
}
