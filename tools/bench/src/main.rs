#![forbid(unsafe_code)]
#![recursion_limit = "256"]
//! `ccproxy-bench`: the load client of ccproxy's benchmark suite (`scripts/bench/run.sh`).
//!
//! It drives one or more *arms* — a URL with its request — in interleaved rounds (A B A B …,
//! the order reversed every other round), at fixed concurrency or fixed rate, over keep-alive
//! connections with `TCP_NODELAY`. For each arm it records latency, time to response headers,
//! time to the first content event, gaps between content events, events per stream, errors,
//! and streams that lost or reordered events; it reads the metered process's CPU time
//! (`/proc/PID/stat`) and resident memory around each segment. An arm with a `base` (its
//! direct-to-upstream baseline, run in the same rounds) also gets its *added* figures: the
//! per-round difference, reported as the median of round values with its spread.
//!
//! Output: one JSON line per arm (appended to `--out`) and a human summary on stdout.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use ccproxy_bench::bodies::{BodyKind, BodySpec};
use ccproxy_bench::load::{Arm, Plan, Pool, Seg};
use ccproxy_bench::{load, procfs, stats};

const DEFAULT_KEY: &str = "sk-ant-api03-bench-key";

#[derive(Parser)]
#[command(
    name = "ccproxy-bench",
    about = "Load client for benchmarking ccproxy and its peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run load against one or more arms in interleaved rounds.
    Run(Box<RunArgs>),
    /// A reference L4 relay (TCP in, TCP out, no HTTP): the floor of what one extra loopback
    /// hop costs on this machine, to read the proxies' added latency against.
    Relay {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        upstream: std::net::SocketAddr,
        /// Busy-spin this many microseconds after every read that brings bytes (either way): a
        /// relay made to spend a proxy's CPU per stream, to tell what a middle box's CPU alone
        /// costs the others sharing the machine's cores (`scripts/bench/findings.md`).
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
    },
    /// Usage rows into PostgreSQL as a replica's writer thread writes them
    /// (`observability::usage::pg::insert_prepared`, batches of `--batch`): rows per second, and the CPU
    /// of this process and of its database backend per row.
    PgRows {
        /// The database (`postgres://…`; migrated if needed). Rows are added to `requests`.
        #[arg(long, env = "DATABASE_URL")]
        url: String,
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// Print the memory and CPU time of a process (and its descendants) as JSON.
    Proc {
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value = "")]
        label: String,
        /// Append the JSON line to this file too.
        #[arg(long)]
        out: Option<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario name, copied into the output.
    #[arg(long, default_value = "run")]
    scenario: String,
    /// An arm: `name=N,url=http://IP:PORT/PATH[,body=anthropic|openai|converted|responses][,base=ARM]
    /// [,pid=PID][,auth=x-api-key:KEY|bearer:KEY|none][,h2=true][,hdr=NAME:VALUE]`.
    #[arg(long = "arm", required = true)]
    arms: Vec<String>,
    /// Request size: `small` or `cc` (the ~80 KB Claude Code request).
    #[arg(long, default_value = "small")]
    body_size: String,
    #[arg(
        long,
        default_value = "../shared/fixtures/clients/claude_code_api_key.request.json"
    )]
    cc_fixture: String,
    #[arg(long, default_value = "claude-sonnet-4-5")]
    model: String,
    /// Ask for SSE (`"stream": true`).
    #[arg(long)]
    stream: bool,
    /// Text deltas the simulated upstream sends (`[sim:deltas=N]`), checked on arrival.
    #[arg(long)]
    deltas: Option<u32>,
    /// Milliseconds between the simulated upstream's events (`[sim:gap=MS]`).
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
    /// Milliseconds before the simulated upstream's response head (`[sim:delay=MS]`).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Concurrent workers (connections for HTTP/1.1; streams for h2).
    #[arg(short = 'c', long, default_value_t = 1)]
    concurrency: usize,
    /// Fixed rate in requests per second (open loop) instead of closed-loop concurrency.
    #[arg(long)]
    rate: Option<f64>,
    /// Requests per arm per round.
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds per arm per round (after the ramp).
    #[arg(long)]
    seconds: Option<f64>,
    /// Unrecorded requests per arm before the first round.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Spread the workers' starts over this many seconds.
    #[arg(long, default_value_t = 0.0)]
    ramp_secs: f64,
    /// A stream whose content events are further apart than this has stalled.
    #[arg(long, default_value_t = 500)]
    stall_ms: u64,
    #[arg(long, default_value_t = 60.0)]
    timeout_secs: f64,
    /// Streams per HTTP/2 connection (arms with h2=true).
    #[arg(long, default_value_t = 100)]
    h2_streams_per_conn: usize,
    /// The simulated upstream's PID, to report its CPU time per request too.
    #[arg(long)]
    sim_pid: Option<u32>,
    /// Append the JSON lines here.
    #[arg(long)]
    out: Option<String>,
    /// Print only the summary line of each arm.
    #[arg(long)]
    quiet: bool,
    /// Close an arm's connections after each of its segments (for thousands of connections:
    /// the arms' pools would otherwise add up against the open-file limit).
    #[arg(long)]
    close_between: bool,
}

struct ArmSpec {
    name: String,
    url: String,
    body: BodyKind,
    base: Option<String>,
    pid: Option<u32>,
    auth: Option<(String, String)>,
    h2: bool,
    headers: Vec<(String, String)>,
}

fn parse_arm(s: &str) -> Result<ArmSpec> {
    let mut a = ArmSpec {
        name: String::new(),
        url: String::new(),
        body: BodyKind::Anthropic,
        base: None,
        pid: None,
        auth: None,
        h2: false,
        headers: Vec::new(),
    };
    let mut auth: Option<String> = None;
    for kv in s.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("arm field {kv:?} is not KEY=VALUE"))?;
        match k {
            "name" => a.name = v.to_owned(),
            "url" => a.url = v.to_owned(),
            "body" => a.body = BodyKind::parse(v)?,
            "base" => a.base = Some(v.to_owned()).filter(|b| !b.is_empty()),
            "pid" => a.pid = Some(v.parse().context("pid")?).filter(|&p| p != 0),
            "auth" => auth = Some(v.to_owned()),
            "h2" => a.h2 = v == "true" || v == "1",
            "hdr" => {
                let (hk, hv) = v
                    .split_once(':')
                    .ok_or_else(|| anyhow!("hdr={v:?} is not NAME:VALUE"))?;
                a.headers.push((hk.to_owned(), hv.to_owned()));
            }
            _ => return Err(anyhow!("unknown arm field {k:?}")),
        }
    }
    if a.name.is_empty() || a.url.is_empty() {
        return Err(anyhow!("an arm needs name= and url=: {s}"));
    }
    let default_auth = if a.body.is_openai() {
        format!("bearer:{DEFAULT_KEY}")
    } else {
        format!("x-api-key:{DEFAULT_KEY}")
    };
    let auth = auth.unwrap_or(default_auth);
    a.auth = if auth == "none" {
        None
    } else if let Some(k) = auth.strip_prefix("bearer:") {
        Some(("authorization".to_owned(), format!("Bearer {k}")))
    } else if let Some(k) = auth.strip_prefix("x-api-key:") {
        Some(("x-api-key".to_owned(), k.to_owned()))
    } else {
        return Err(anyhow!(
            "auth={auth:?}: use x-api-key:KEY, bearer:KEY or none"
        ));
    };
    Ok(a)
}

/// Per-round figures of one arm (microseconds unless named otherwise).
#[derive(Clone, Copy)]
struct RoundFig {
    p50: f64,
    p99: f64,
    ttfb_p50: f64,
    ttft_p50: f64,
    ttft_p99: f64,
    gap_p99: f64,
    rps: f64,
    cpu_us_per_req: f64,
}

struct ArmRun {
    arm: Arc<Arm>,
    pool: Pool,
    rounds: Vec<RoundFig>,
    all: Seg,
    cpu_ticks: u64,
    sim_ticks: u64,
    rss_peak_kb: u64,
    rss_before_kb: u64,
    wall: Duration,
}

fn fig(seg: &mut Seg, cpu_ticks: Option<u64>) -> RoundFig {
    seg.latency.sort_unstable();
    seg.ttfb.sort_unstable();
    seg.ttft.sort_unstable();
    seg.gaps.sort_unstable();
    let secs = seg.wall.as_secs_f64();
    RoundFig {
        p50: stats::pct_us(&seg.latency, 0.5),
        p99: stats::pct_us(&seg.latency, 0.99),
        ttfb_p50: stats::pct_us(&seg.ttfb, 0.5),
        ttft_p50: stats::pct_us(&seg.ttft, 0.5),
        ttft_p99: stats::pct_us(&seg.ttft, 0.99),
        gap_p99: stats::pct_us(&seg.gaps, 0.99),
        rps: if secs > 0.0 {
            seg.ok as f64 / secs
        } else {
            f64::NAN
        },
        cpu_us_per_req: match cpu_ticks {
            Some(t) if seg.requests > 0 => {
                t as f64 * 1e6 / procfs::CLK_TCK as f64 / seg.requests as f64
            }
            _ => f64::NAN,
        },
    }
}

/// Samples the RSS of `pids` every 50 ms until stopped; returns the peak.
fn rss_sampler(pids: Vec<u32>) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(procfs::rss_kb(&pids)));
    let (s, p) = (stop.clone(), peak.clone());
    let h = tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            p.fetch_max(procfs::rss_kb(&pids), Ordering::Relaxed);
        }
    });
    (stop, peak, h)
}

async fn run(args: RunArgs) -> Result<()> {
    ccproxy::http::install_crypto_provider();
    let spec = body_spec(&args);
    if args.requests.is_none() && args.seconds.is_none() {
        return Err(anyhow!("give --requests or --seconds"));
    }
    let plan = plan_of(&args);
    let mut runs: Vec<ArmRun> = Vec::new();
    for s in &args.arms {
        runs.push(arm_run(&args, &spec, &plan, parse_arm(s)?)?);
    }
    check_bases(&runs)?;
    for r in &mut runs {
        r.rss_before_kb = r
            .arm
            .pid
            .map(|p| procfs::rss_kb(&procfs::tree(p)))
            .unwrap_or(0);
    }
    warm_up(args.warmup, &plan, &mut runs).await?;
    let n = runs.len();
    for round in 0..args.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..n).collect()
        } else {
            (0..n).rev().collect()
        };
        for i in order {
            let r = &mut runs[i];
            let (seg, f) = measure_segment(r, &plan, args.sim_pid).await;
            if !args.quiet {
                print_round(round, &r.arm.name, &seg, &f, plan.stream);
            }
            r.rounds.push(f);
            r.all.merge(seg);
            if args.close_between {
                r.pool.close();
            }
        }
    }
    report(&args, &plan, &mut runs)
}

fn body_spec(args: &RunArgs) -> BodySpec {
    BodySpec {
        size: args.body_size.clone(),
        cc_fixture: args.cc_fixture.clone(),
        model: args.model.clone(),
        stream: args.stream,
        deltas: args.deltas,
        gap_ms: args.gap_ms,
        delay_ms: args.delay_ms,
    }
}

fn plan_of(args: &RunArgs) -> Plan {
    Plan {
        concurrency: args.concurrency.max(1),
        requests: args.requests,
        duration: args.seconds.map(Duration::from_secs_f64),
        rate: args.rate,
        ramp: Duration::from_secs_f64(args.ramp_secs),
        stream: args.stream,
        deltas: if args.stream { args.deltas } else { None },
        stall: Duration::from_millis(args.stall_ms),
        timeout: Duration::from_secs_f64(args.timeout_secs),
    }
}

/// An arm ready to run: its request built and its connections set up.
fn arm_run(args: &RunArgs, spec: &BodySpec, plan: &Plan, a: ArmSpec) -> Result<ArmRun> {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if !a.body.is_openai() {
        headers.push(("anthropic-version".to_owned(), "2023-06-01".to_owned()));
    }
    headers.push((
        "accept".to_owned(),
        if args.stream {
            "text/event-stream"
        } else {
            "application/json"
        }
        .to_owned(),
    ));
    headers.extend(a.auth.clone());
    headers.extend(a.headers.clone());
    let body = spec.build(a.body)?;
    let arm = Arc::new(Arm::new(
        a.name, a.base, a.body, a.url, a.h2, a.pid, headers, body,
    )?);
    let pool = Pool::new(&arm, plan.concurrency, args.h2_streams_per_conn)?;
    Ok(ArmRun {
        arm,
        pool,
        rounds: Vec::new(),
        all: Seg::default(),
        cpu_ticks: 0,
        sim_ticks: 0,
        rss_peak_kb: 0,
        rss_before_kb: 0,
        wall: Duration::ZERO,
    })
}

/// Every `base=` names an arm of this run.
fn check_bases(runs: &[ArmRun]) -> Result<()> {
    for r in runs {
        if let Some(b) = &r.arm.base
            && !runs.iter().any(|x| &x.arm.name == b)
        {
            return Err(anyhow!(
                "arm {}: base {b} is not an arm of this run",
                r.arm.name
            ));
        }
    }
    Ok(())
}

/// Warm-up: connections opened, caches and allocators warm; nothing recorded.
async fn warm_up(warmup: u64, plan: &Plan, runs: &mut [ArmRun]) -> Result<()> {
    if warmup == 0 {
        return Ok(());
    }
    let mut wp = plan.clone();
    wp.requests = Some(warmup);
    wp.duration = None;
    wp.rate = None;
    wp.ramp = Duration::ZERO;
    for r in runs {
        let seg = load::run_segment(&r.arm, &wp, &mut r.pool).await;
        if seg.ok == 0 {
            return Err(anyhow!(
                "arm {}: warm-up failed: {}",
                r.arm.name,
                seg.first_error.unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// One segment of an arm, metered: its CPU time, the simulator's, peak RSS and wall time are
/// added to the arm's totals. Returns the segment and its round figures.
async fn measure_segment(r: &mut ArmRun, plan: &Plan, sim_pid: Option<u32>) -> (Seg, RoundFig) {
    let pids = r.arm.pid.map(procfs::tree).unwrap_or_default();
    let sim_pids = sim_pid.map(procfs::tree).unwrap_or_default();
    let (stop, peak, h) = rss_sampler(pids.clone());
    let cpu0 = procfs::cpu_ticks(&pids);
    let sim0 = procfs::cpu_ticks(&sim_pids);
    let mut seg = load::run_segment(&r.arm, plan, &mut r.pool).await;
    let cpu = procfs::cpu_ticks(&pids).saturating_sub(cpu0);
    let sim = procfs::cpu_ticks(&sim_pids).saturating_sub(sim0);
    stop.store(true, Ordering::Relaxed);
    let _ = h.await;
    r.rss_peak_kb = r.rss_peak_kb.max(peak.load(Ordering::Relaxed));
    r.cpu_ticks += cpu;
    r.sim_ticks += sim;
    r.wall += seg.wall;
    let f = fig(&mut seg, (!pids.is_empty()).then_some(cpu));
    (seg, f)
}

fn print_round(round: usize, name: &str, seg: &Seg, f: &RoundFig, stream: bool) {
    println!(
        "  round {:>2} {:<22} n={:<6} err={:<4} p50={:>9.1}µs p99={:>9.1}µs{} rps={:>8.0}",
        round + 1,
        name,
        seg.requests,
        seg.errors() + seg.lost,
        f.p50,
        f.p99,
        if stream {
            format!(" ttft50={:>9.1}µs gap99={:>9.1}µs", f.ttft_p50, f.gap_p99)
        } else {
            String::new()
        },
        f.rps
    );
}

fn report(args: &RunArgs, plan: &Plan, runs: &mut [ArmRun]) -> Result<()> {
    let mut lines = Vec::new();
    let base_p50 = pooled_medians(runs);
    let rounds_of: Vec<(String, Vec<RoundFig>)> = runs
        .iter()
        .map(|r| (r.arm.name.clone(), r.rounds.clone()))
        .collect();
    println!(
        "{:<22} {:>7} {:>5} {:>5} {:>10} {:>10} {:>16} {:>16} {:>9} {:>9}",
        "arm",
        "ok",
        "err",
        // Streams that lost an event, came reordered or stalled (each is on the arm's second
        // line): not only lost ones.
        "bad",
        "p50 µs",
        "p99 µs",
        "added p50 µs",
        "added p99 µs",
        "req/s",
        "cpu µs/rq"
    );
    for r in runs.iter_mut() {
        let vs_base = compare_with_base(r, plan, &rounds_of, &base_p50);
        let line = arm_line(args, plan, r, vs_base);
        print_arm(&r.arm.name, &r.all, &line, plan.stream);
        lines.push(line);
    }
    if let Some(path) = &args.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {path}"))?;
        for l in &lines {
            writeln!(f, "{l}")?;
        }
    }
    Ok(())
}

/// Pooled medians (latency, ttft) of each arm, for the slow-sample (Nagle) check.
fn pooled_medians(runs: &[ArmRun]) -> Vec<(String, f64, f64)> {
    runs.iter()
        .map(|r| {
            let mut l = r.all.latency.clone();
            let mut t = r.all.ttft.clone();
            l.sort_unstable();
            t.sort_unstable();
            (
                r.arm.name.clone(),
                stats::pct_us(&l, 0.5),
                stats::pct_us(&t, 0.5),
            )
        })
        .collect()
}

/// An arm's figures against its base: the per-round added figures, the slow-sample count and
/// the per-round throughput ratio (null without a base).
struct VsBase {
    added: Value,
    slow35: Value,
    rps_ratio: Value,
}

fn compare_with_base(
    r: &ArmRun,
    plan: &Plan,
    rounds_of: &[(String, Vec<RoundFig>)],
    base_p50: &[(String, f64, f64)],
) -> VsBase {
    let mut vs = VsBase {
        added: json!({}),
        slow35: Value::Null,
        rps_ratio: Value::Null,
    };
    let Some(base) = &r.arm.base else {
        return vs;
    };
    let rounds = &r.rounds;
    if let Some((_, b)) = rounds_of.iter().find(|(n, _)| n == base) {
        let diff = |f: fn(&RoundFig) -> f64| -> Value {
            let d: Vec<f64> = rounds.iter().zip(b).map(|(x, y)| f(x) - f(y)).collect();
            stats::spread(&d)
        };
        vs.added = json!({
            "p50_us": diff(|f| f.p50),
            "p99_us": diff(|f| f.p99),
            "ttfb_p50_us": diff(|f| f.ttfb_p50),
            "ttft_p50_us": diff(|f| f.ttft_p50),
            "ttft_p99_us": diff(|f| f.ttft_p99),
            "gap_p99_us": diff(|f| f.gap_p99),
        });
        let ratio: Vec<f64> = rounds.iter().zip(b).map(|(x, y)| x.rps / y.rps).collect();
        vs.rps_ratio = stats::spread(&ratio);
    }
    if let Some((_, lp50, tp50)) = base_p50.iter().find(|(n, _, _)| n == base) {
        // Samples 35 ms or more above the baseline's median: the signature of a
        // delayed-ACK/Nagle stall (40 ms on Linux).
        let (samples, m) = if plan.stream {
            (&r.all.ttft, *tp50)
        } else {
            (&r.all.latency, *lp50)
        };
        let limit = ((m + 35_000.0) * 1000.0) as u64;
        vs.slow35 = json!(samples.iter().filter(|&&x| x >= limit).count());
    }
    vs
}

/// Mean events per stream, to one decimal (null without streams).
fn events_mean(events: &[u32]) -> Value {
    let events: Vec<f64> = events.iter().map(|&e| e as f64).collect();
    if events.is_empty() {
        Value::Null
    } else {
        json!((events.iter().sum::<f64>() / events.len() as f64 * 10.0).round() / 10.0)
    }
}

/// CPU microseconds per request from clock ticks (null when not metered or no requests).
fn cpu_us_per_req(metered: bool, ticks: u64, requests: u64) -> Value {
    if metered && requests > 0 {
        json!((ticks as f64 * 1e6 / procfs::CLK_TCK as f64 / requests as f64).round())
    } else {
        Value::Null
    }
}

/// The per-round columns of an arm.
fn round_columns(rounds: &[RoundFig]) -> Value {
    let col = |f: fn(&RoundFig) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
    json!({
        "p50_us": col(|f| f.p50), "p99_us": col(|f| f.p99),
        "ttft_p50_us": col(|f| f.ttft_p50), "ttft_p99_us": col(|f| f.ttft_p99),
        "gap_p99_us": col(|f| f.gap_p99), "rps": col(|f| f.rps),
        "cpu_us_per_req": col(|f| f.cpu_us_per_req),
    })
}

/// The JSON line of one arm (sorts its pooled samples).
fn arm_line(args: &RunArgs, plan: &Plan, r: &mut ArmRun, vs: VsBase) -> Value {
    let rounds = &r.rounds;
    let col = |f: fn(&RoundFig) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
    let seg = &mut r.all;
    let ev_mean = events_mean(&seg.events);
    let cpu_us = cpu_us_per_req(r.arm.pid.is_some(), r.cpu_ticks, seg.requests);
    let sim_cpu_us = cpu_us_per_req(args.sim_pid.is_some(), r.sim_ticks, seg.requests);
    json!({
        "kind": "arm",
        "scenario": args.scenario,
        "arm": r.arm.name,
        "base": r.arm.base,
        "url": r.arm.url,
        "body": r.arm.kind.name(),
        "body_size": args.body_size,
        "request_bytes": r.arm.body.len(),
        "h2": r.arm.h2,
        "stream": plan.stream,
        "deltas": plan.deltas,
        "gap_ms": args.gap_ms,
        "concurrency": plan.concurrency,
        "rate": plan.rate,
        "rounds": args.rounds,
        "requests": seg.requests,
        "ok": seg.ok,
        "errors": {"io": seg.err_io, "status": seg.err_status, "timeout": seg.err_timeout},
        "first_error": seg.first_error,
        "lost": seg.lost,
        "reordered": seg.reordered,
        "stalled": seg.stalled,
        "error_events": seg.error_events,
        "latency_us": stats::dist(&mut seg.latency),
        "ttfb_us": stats::dist(&mut seg.ttfb),
        "ttft_us": stats::dist(&mut seg.ttft),
        "gap_us": stats::dist(&mut seg.gaps),
        "events_per_stream_mean": ev_mean,
        "round": round_columns(rounds),
        "p50_us": stats::spread(&col(|f| f.p50)),
        "p99_us": stats::spread(&col(|f| f.p99)),
        "ttft_p50_us": stats::spread(&col(|f| f.ttft_p50)),
        "ttft_p99_us": stats::spread(&col(|f| f.ttft_p99)),
        "gap_p99_us": stats::spread(&col(|f| f.gap_p99)),
        "rps": stats::spread(&col(|f| f.rps)),
        "rps_ratio_to_base": vs.rps_ratio,
        "cpu_us_per_req": cpu_us,
        "cpu_us_per_req_rounds": stats::spread(&col(|f| f.cpu_us_per_req)),
        "sim_cpu_us_per_req": sim_cpu_us,
        "rss_before_kb": r.rss_before_kb,
        "rss_peak_kb": r.rss_peak_kb,
        "wall_s": (r.wall.as_secs_f64() * 100.0).round() / 100.0,
        "added": vs.added,
        "slow35": vs.slow35,
    })
}

/// The human summary of one arm.
fn print_arm(name: &str, seg: &Seg, line: &Value, stream: bool) {
    let a = |k: &str| -> String {
        let v = &line["added"][k];
        if v.is_null() {
            "-".to_owned()
        } else {
            format!("{} [{}..{}]", v["median"], v["min"], v["max"])
        }
    };
    println!(
        "{:<22} {:>7} {:>5} {:>5} {:>10} {:>10} {:>16} {:>16} {:>9} {:>9}",
        name,
        seg.ok,
        seg.errors(),
        seg.lost + seg.reordered + seg.stalled,
        line["p50_us"]["median"].to_string(),
        line["p99_us"]["median"].to_string(),
        a("p50_us"),
        a("p99_us"),
        line["rps"]["median"].to_string(),
        line["cpu_us_per_req"].to_string(),
    );
    if stream {
        println!(
            "{:<22} ttft p50 {} p99 {} (added p50 {} p99 {}); gap p99 {} (added {}); events/stream {}; lost {} reordered {} stalled {}",
            "",
            line["ttft_p50_us"]["median"],
            line["ttft_p99_us"]["median"],
            a("ttft_p50_us"),
            a("ttft_p99_us"),
            line["gap_p99_us"]["median"],
            a("gap_p99_us"),
            line["events_per_stream_mean"],
            seg.lost,
            seg.reordered,
            seg.stalled
        );
    }
    if let Some(e) = &seg.first_error {
        println!(
            "{:<22} first error: {}",
            "",
            e.chars().take(300).collect::<String>()
        );
    }
}

fn pg_rows(url: &str, rows: usize, batch: usize) -> Result<()> {
    use ccproxy::observability::{Tokens, UsageRecord};
    let url = ccproxy::db::PgUrl::new(url);
    let mut client = ccproxy::db::pg::open(&url).map_err(|e| anyhow!("{e}"))?;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .map_err(|e| anyhow!("{e}"))?
        .get(0);
    let record = |i: usize| UsageRecord {
        ts_ms: 1_790_000_000_000 + i as i64,
        request_id: format!("req_bench_{i:08}"),
        mode: "full".into(),
        dialect: if i.is_multiple_of(2) {
            "anthropic"
        } else {
            "openai"
        }
        .into(),
        model: Some("claude-sonnet-4-5".into()),
        stream: i.is_multiple_of(3),
        status: 200,
        upstream_status: Some(200),
        tokens: Tokens {
            input: 1200 + i as u64 % 97,
            output: 300,
            cache_read: 4096,
            ..Tokens::default()
        },
        cost_usd: Some(0.0123),
        duration_ms: 812.5,
        ttft_ms: i.is_multiple_of(3).then_some(140.0),
        proxy_ms: 0.05,
        credential: Some("server_api_key".into()),
        bucket: Some("api".into()),
        client_key: i.is_multiple_of(4).then(|| "team".to_owned()),
        ..UsageRecord::default()
    };
    let batches: Vec<Vec<UsageRecord>> = (0..rows)
        .collect::<Vec<_>>()
        .chunks(batch.max(1))
        .map(|c| c.iter().map(|&i| record(i)).collect())
        .collect();
    let pids = [std::process::id(), u32::try_from(backend).unwrap_or(0)];
    let cpu0 = [procfs::cpu_ticks(&pids[..1]), procfs::cpu_ticks(&pids[1..])];
    let t0 = std::time::Instant::now();
    let mut prepared = None;
    for b in &batches {
        ccproxy::observability::usage::pg::insert_prepared(&mut client, &mut prepared, b, "bench")
            .map_err(|e| anyhow!("{e}"))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = [
        procfs::cpu_ticks(&pids[..1]) - cpu0[0],
        procfs::cpu_ticks(&pids[1..]) - cpu0[1],
    ];
    // Clock ticks are 10 ms.
    let per_row = |ticks: u64| ticks as f64 * 10_000.0 / rows as f64;
    let line = json!({
        "kind": "pg_rows",
        "rows": rows,
        "batch": batch,
        "seconds": secs,
        "rows_per_sec": rows as f64 / secs,
        "client_cpu_us_per_row": per_row(cpu[0]),
        "backend_cpu_us_per_row": per_row(cpu[1]),
    });
    println!("{line}");
    Ok(())
}

fn proc_info(pid: u32, label: &str, out: Option<&str>) -> Result<()> {
    let pids = procfs::tree(pid);
    if pids.is_empty() {
        return Err(anyhow!("no process {pid}"));
    }
    let line = json!({
        "kind": "proc",
        "label": label,
        "pid": pid,
        "processes": pids.len(),
        "rss_kb": procfs::rss_kb(&pids),
        "hwm_kb": procfs::hwm_kb(&pids),
        "threads": procfs::threads(&pids),
        "cpu_ticks": procfs::cpu_ticks(&pids),
    });
    println!("{line}");
    if let Some(path) = out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

async fn relay(
    listen: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    spin_us: u64,
) -> Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    let spin = std::time::Duration::from_micros(spin_us);
    loop {
        let (down, _) = l.accept().await?;
        tokio::spawn(async move {
            let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            if spin.is_zero() {
                let (mut down, mut up) = (down, up);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            } else {
                let mut down = Spinning { io: down, spin };
                let mut up = Spinning { io: up, spin };
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            }
        });
    }
}

/// A socket that busy-spins `spin` after every read that brings bytes (`relay --spin-us`).
struct Spinning {
    io: tokio::net::TcpStream,
    spin: std::time::Duration,
}

impl tokio::io::AsyncRead for Spinning {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let t = std::time::Instant::now();
            while t.elapsed() < self.spin {
                std::hint::spin_loop();
            }
        }
        r
    }
}

impl tokio::io::AsyncWrite for Spinning {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Proc { pid, label, out } => proc_info(pid, &label, out.as_deref()),
        Cmd::PgRows { url, rows, batch } => pg_rows(&url, rows, batch),
        Cmd::Relay {
            listen,
            upstream,
            spin_us,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(relay(listen, upstream, spin_us))),
        Cmd::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(*args))),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccproxy-bench: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
