//! Soak test driver: runs the built `ccproxy` against `ccproxy sim` (two child
//! processes) with mixed traffic for a bounded time, samples the proxy's RSS,
//! open file descriptors and threads from `/proc`, and fails (exit 1) when they
//! grow. Linux only. See `scripts/soak.sh`.
//!
//! ```text
//! ccproxy-soak [--ccproxy PATH] [--duration SECS] [--concurrency N]
//!              [--sample-every SECS] [--warmup SECS] [--csv FILE]
//!              [--proxy-arg ARG]... [--proxy-env KEY=VALUE]... [--scrape-metrics]
//! ```
//!
//! `--proxy-arg`/`--proxy-env` pass extra arguments and environment to
//! `ccproxy serve` (e.g. `--proxy-arg --no-usage` to see what usage recording
//! costs in memory). `--scrape-metrics` fetches `/metrics` at every sample, as a
//! Prometheus server would (the default is no scraper, like most installs).
//!
//! The traffic: the three modes in both dialects, JSON and streams, tools,
//! thinking, upstream errors (400/429/500/529), mid-stream errors, resets,
//! malformed and invalid events, streams without `message_stop`, idle
//! timeouts, header timeouts, client disconnects mid-stream, slow readers,
//! refusals (400/403/404/405/413), the concurrency limit (503), count_tokens
//! and models.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use serde_json::{Value, json};

const API_KEY: &str = "sk-ant-api03-soak-test-key-000000000000";
const MAX_BODY: usize = 1024 * 1024;

struct Args {
    ccproxy: PathBuf,
    duration: u64,
    concurrency: usize,
    sample_every: u64,
    warmup: u64,
    csv: Option<PathBuf>,
    /// Extra arguments and environment for `ccproxy serve` (attribution runs).
    proxy_args: Vec<String>,
    proxy_env: Vec<(String, String)>,
    /// Fetch `/metrics` at every sample (a Prometheus scraper).
    scrape: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: ccproxy-soak [--ccproxy PATH] [--duration SECS] [--concurrency N] \
         [--sample-every SECS] [--warmup SECS] [--csv FILE] [--proxy-arg ARG]... \
         [--proxy-env KEY=VALUE]... [--scrape-metrics]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("ccproxy")))
        .unwrap_or_else(|| PathBuf::from("ccproxy"));
    let mut a = Args {
        ccproxy: sibling,
        duration: 60,
        concurrency: 16,
        sample_every: 2,
        warmup: 10,
        csv: None,
        proxy_args: Vec::new(),
        proxy_env: Vec::new(),
        scrape: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        let num = |s: String| s.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--ccproxy" => a.ccproxy = PathBuf::from(val()),
            "--duration" => a.duration = num(val()),
            "--concurrency" => a.concurrency = num(val()).max(1) as usize,
            "--sample-every" => a.sample_every = num(val()).max(1),
            "--warmup" => a.warmup = num(val()),
            "--csv" => a.csv = Some(PathBuf::from(val())),
            "--proxy-arg" => a.proxy_args.push(val()),
            "--scrape-metrics" => a.scrape = true,
            "--proxy-env" => {
                let kv = val();
                let (k, v) = kv.split_once('=').unwrap_or_else(|| usage());
                a.proxy_env.push((k.to_owned(), v.to_owned()));
            }
            _ => usage(),
        }
    }
    a
}

/// A child process that is terminated when dropped.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// One sample of the proxy process.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    t: f64,
    rss_kb: u64,
    fds: u64,
    threads: u64,
    requests: u64,
}

fn sample(pid: u32, t0: Instant, requests: u64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        t: t0.elapsed().as_secs_f64(),
        rss_kb: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
        requests,
    })
}

/// What the traffic did, by outcome.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    expected_errors: AtomicU64,
    limited: AtomicU64,
    disconnects: AtomicU64,
    /// Requests that failed because the proxy closed the connection while the
    /// client was still sending (see `transport_error`).
    stale: AtomicU64,
    unexpected: AtomicU64,
}

fn msg(text: &str, stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 256, "stream": stream,
           "messages": [{"role": "user", "content": text}]})
}

fn chat(text: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o", "stream": stream,
           "stream_options": {"include_usage": true},
           "messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": text}]})
}

/// The request scenarios chosen by weight: (marker, expected statuses when not
/// streaming, weight). The remaining weight goes to [`other`].
const SCENARIOS: &[(&str, &[u16], u32)] = &[
    ("hello", &[200], 30),
    ("[sim:tools]", &[200], 8),
    ("[sim:thinking]", &[200], 5),
    ("[sim:cache] [sim:deltas=64]", &[200], 5),
    ("[sim:status=400]", &[400], 3),
    ("[sim:status=429]", &[429], 3),
    ("[sim:status=500]", &[500], 2),
    ("[sim:status=529]", &[529, 503], 3),
    ("[sim:error-midstream]", &[200], 3),
    ("[sim:reset-midstream]", &[200, 502], 3),
    ("[sim:malformed-sse]", &[200], 2),
    ("[sim:bad-json-event]", &[200], 2),
    ("[sim:no-stop]", &[200], 2),
    ("[sim:unknown-event]", &[200], 2),
    ("[sim:silent=1500]", &[200], 1),
    ("[sim:delay=2500]", &[504], 1),
    ("[sim:deltas=300] [sim:delta-size=2048]", &[200], 2),
];
/// The weight of the scenarios in [`other`].
const OTHER_WEIGHT: u32 = 14;

/// What every request of one call to [`one`] shares.
#[derive(Clone, Copy)]
struct Pick {
    mode: &'static str,
    openai: bool,
    stream: bool,
}

impl Pick {
    fn path(self) -> String {
        if self.openai {
            format!("{}/openai/v1/chat/completions", self.mode)
        } else {
            format!("{}/v1/messages", self.mode)
        }
    }

    fn body(self, text: &str, stream: bool) -> Value {
        if self.openai {
            chat(text, stream)
        } else {
            msg(text, stream)
        }
    }
}

/// Counts a response status against the expected ones.
fn record(c: &Counters, status: u16, expected: &[u16]) {
    if status == 503 && !expected.contains(&503) {
        c.limited.fetch_add(1, Ordering::Relaxed);
    } else if !expected.contains(&status) {
        c.unexpected.fetch_add(1, Ordering::Relaxed);
        eprintln!("unexpected status {status} (expected {expected:?})");
    } else if status == 200 {
        c.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        c.expected_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request of a random scenario; counts whether its outcome was expected.
async fn one(client: &reqwest::Client, base: &str, rng: &mut rand::rngs::StdRng, c: &Counters) {
    let p = Pick {
        mode: ["", "/min", "/pt"][rng.random_range(0..3)],
        openai: rng.random_bool(0.4),
        stream: rng.random_bool(0.5),
    };
    let total: u32 = SCENARIOS.iter().map(|s| s.2).sum::<u32>() + OTHER_WEIGHT;
    let mut pick = rng.random_range(0..total);
    c.requests.fetch_add(1, Ordering::Relaxed);
    for (marker, expected, weight) in SCENARIOS {
        if pick >= *weight {
            pick -= weight;
            continue;
        }
        return marked(client, base, p, marker, expected, c).await;
    }
    other(client, base, rng, p, pick % OTHER_WEIGHT, c).await;
}

/// A message request carrying a simulated-upstream marker.
async fn marked(
    client: &reqwest::Client,
    base: &str,
    p: Pick,
    marker: &str,
    expected: &[u16],
    c: &Counters,
) {
    let (openai, stream) = (p.openai, p.stream);
    let (path, body) = (p.path(), p.body(marker, stream));
    let resp = client
        .post(format!("{base}{path}"))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            transport_error(c, &e, &format!("{path} {marker}"));
            return;
        }
    };
    let status = resp.status().as_u16();
    // Streams answer 200 and carry their errors inside; a reset
    // non-stream Anthropic body is cut (that is its expected outcome).
    let slow = marker.contains("delta-size");
    let mut body = resp.bytes_stream();
    let mut broken = false;
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            broken = true;
            break;
        }
        if slow {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let cut_expected = marker.contains("reset") && !openai && !stream;
    if broken && !cut_expected {
        c.unexpected.fetch_add(1, Ordering::Relaxed);
        eprintln!("broken body on {path} {marker}");
        return;
    }
    // A stream request that got its head answers 200 (errors come inside).
    let expected: Vec<u16> = if stream && expected.contains(&200) {
        vec![200]
    } else {
        expected.to_vec()
    };
    record(c, status, &expected);
}

/// Disconnects, refusals and the other routes.
async fn other(
    client: &reqwest::Client,
    base: &str,
    rng: &mut rand::rngs::StdRng,
    p: Pick,
    which: u32,
    c: &Counters,
) {
    let mode = p.mode;
    match which {
        0..=3 => leave_mid_stream(client, base, rng, p, c).await,
        4..=8 => refusal(client, base, mode, which, c).await,
        9 => {
            let r = client
                .post(format!("{base}{mode}/v1/messages/count_tokens"))
                .header("anthropic-version", "2023-06-01")
                .json(&msg("count me", false))
                .send()
                .await;
            outcome(r, &[200], c).await;
        }
        10 => {
            let path = if p.openai {
                "/openai/v1/models"
            } else {
                "/v1/models"
            };
            let r = client.get(format!("{base}{mode}{path}")).send().await;
            outcome(r, &[200], c).await;
        }
        11 => {
            // A burst over the concurrency limit: some get 503 + retry-after.
            let sends = (0..6).map(|_| {
                client
                    .post(format!("{base}{mode}/v1/messages"))
                    .header("anthropic-version", "2023-06-01")
                    .json(&msg("[sim:delay=200]", false))
                    .send()
            });
            c.requests.fetch_add(5, Ordering::Relaxed);
            for r in futures_util::future::join_all(sends).await {
                match r {
                    Err(e) => transport_error(c, &e, "burst request"),
                    r => outcome(r, &[200], c).await,
                }
            }
        }
        12 => {
            // A raw connection that sends half a request head and leaves.
            if let Ok(mut s) =
                tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await
            {
                use tokio::io::AsyncWriteExt;
                let _ = s
                    .write_all(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n")
                    .await;
            }
            c.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            // Client leaves while the upstream has not answered yet.
            let r = tokio::time::timeout(
                Duration::from_millis(100),
                client
                    .post(format!("{base}{mode}/v1/messages"))
                    .header("anthropic-version", "2023-06-01")
                    .json(&msg("[sim:delay=1000]", false))
                    .send(),
            )
            .await;
            match r {
                Err(_) => {
                    c.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                Ok(r) => outcome(r, &[200], c).await,
            }
        }
    }
}

/// Client leaves mid-stream.
async fn leave_mid_stream(
    client: &reqwest::Client,
    base: &str,
    rng: &mut rand::rngs::StdRng,
    p: Pick,
    c: &Counters,
) {
    let path = p.path();
    let body = p.body("[sim:endless] [sim:gap=5]", true);
    match client
        .post(format!("{base}{path}"))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
    {
        Ok(r) if r.status() == 200 => {
            let mut s = r.bytes_stream();
            for _ in 0..rng.random_range(1..20) {
                if s.next().await.is_none() {
                    break;
                }
            }
            c.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        Ok(r) => record(c, r.status().as_u16(), &[200]),
        Err(e) => transport_error(c, &e, &path),
    }
}

/// Requests the proxy refuses (400, 404, 405, 403, 413).
async fn refusal(client: &reqwest::Client, base: &str, mode: &str, which: u32, c: &Counters) {
    match which {
        4 => {
            let r = client
                .post(format!("{base}{mode}/v1/messages"))
                .body("{not json")
                .send()
                .await;
            outcome(r, &[400], c).await;
        }
        5 => {
            let r = client.get(format!("{base}/v1/nothing-here")).send().await;
            outcome(r, &[404], c).await;
        }
        6 => {
            let r = client
                .delete(format!("{base}{mode}/v1/messages"))
                .send()
                .await;
            outcome(r, &[405], c).await;
        }
        7 => {
            let r = client
                .post(format!("{base}/v1/messages"))
                .header("origin", "https://evil.example")
                .json(&msg("hi", false))
                .send()
                .await;
            outcome(r, &[403], c).await;
        }
        8 => {
            // Refused before the body is read: the proxy closes the connection
            // without saying so (reported), so this one is not pooled.
            let big = "x".repeat(MAX_BODY + 1024);
            let Ok(once) = ccproxy::http::client_builder()
                .pool_max_idle_per_host(0)
                .build()
            else {
                return;
            };
            let r = once
                .post(format!("{base}{mode}/v1/messages"))
                .json(&msg(&big, false))
                .send()
                .await;
            outcome(r, &[413], c).await;
        }
        _ => {}
    }
}

async fn outcome(r: reqwest::Result<reqwest::Response>, want: &[u16], c: &Counters) {
    let what = format!("request expecting {want:?}");
    match r {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            let body = r.bytes().await;
            if status == 503 && !want.contains(&503) && retry_after {
                c.limited.fetch_add(1, Ordering::Relaxed);
            } else if !want.contains(&status) || body.is_err() {
                c.unexpected.fetch_add(1, Ordering::Relaxed);
                eprintln!("unexpected status {status} (expected {want:?})");
            } else if status == 200 {
                c.ok.fetch_add(1, Ordering::Relaxed);
            } else {
                c.expected_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(e) => transport_error(c, &e, &what),
    }
}

/// Counts a transport error. A request the proxy refused before reading its
/// body and whose connection it closed while the client was still sending
/// (under load, a few of the 1 MiB bodies answered 413: reported; a lingering
/// close would let the client read the 413), or a pooled connection closed
/// under a new request, is counted apart.
fn transport_error(c: &Counters, e: &reqwest::Error, what: &str) {
    let text = chain(e);
    if text.contains("error writing a body to connection")
        || text.contains("connection closed before message completed")
    {
        c.stale.fetch_add(1, Ordering::Relaxed);
        if std::env::var_os("SOAK_VERBOSE").is_some() {
            eprintln!("stale connection on {what}: {text}");
        }
    } else {
        c.unexpected.fetch_add(1, Ordering::Relaxed);
        eprintln!("transport error on {what}: {text}");
    }
}

/// An error with its causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Least-squares slope of `y` over `t`, per minute.
fn slope_per_min(s: &[Sample], y: impl Fn(&Sample) -> f64) -> f64 {
    let n = s.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mt = s.iter().map(|x| x.t).sum::<f64>() / n;
    let my = s.iter().map(&y).sum::<f64>() / n;
    let num: f64 = s.iter().map(|x| (x.t - mt) * (y(x) - my)).sum();
    let den: f64 = s.iter().map(|x| (x.t - mt).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den * 60.0 }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn main() -> std::process::ExitCode {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("ccproxy-soak: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Environment for a child `ccproxy`: nothing from ours but `PATH`, and its own
/// home, config and data directories under `dir`.
fn hermetic(c: &mut Command, dir: &Path) {
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"));
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("ccproxy-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (_sim, upstream) = start_sim(&args, &dir)?;
    let proxy = start_proxy(&args, &dir, &upstream).await?;
    let t0 = Instant::now();
    let pid = proxy.pid;
    let start = sample(pid, t0, 0).ok_or_else(|| anyhow::anyhow!("cannot read /proc/{pid}"))?;
    println!(
        "soak: ccproxy {} pid {pid}, {} s, {} clients, limit {}, samples every {} s (warm-up {} s)",
        args.ccproxy.display(),
        args.duration,
        args.concurrency,
        args.concurrency,
        args.sample_every,
        args.warmup
    );
    println!(
        "at start: rss {} KiB, fds {}, threads {}",
        start.rss_kb, start.fds, start.threads
    );
    let counters = Arc::new(Counters::default());
    let samples = load(&args, &proxy, t0, start, &counters).await?;
    let after = aftermath(proxy, t0, &counters).await?;
    if let Some(path) = &args.csv {
        write_csv(path, &samples, &after.idle)?;
    }
    let ok = verdict(&args, &start, &samples, &after, &counters)?;
    if ok {
        println!("PASS");
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("logs kept in {}", dir.display());
    }
    Ok(ok)
}

/// The simulated upstream, in its own process; returns it and its URL.
fn start_sim(args: &Args, dir: &Path) -> anyhow::Result<(Kid, String)> {
    let mut c = Command::new(&args.ccproxy);
    hermetic(&mut c, dir);
    let mut sim = c
        .args(["sim", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", args.ccproxy.display()))?;
    let mut line = String::new();
    let stdout = sim
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let sim = Kid(sim);
    BufReader::new(stdout).read_line(&mut line)?;
    let upstream = line.trim().rsplit(' ').next().unwrap_or("").to_owned();
    anyhow::ensure!(upstream.starts_with("http://"), "sim did not start: {line}");
    Ok((sim, upstream))
}

/// The proxy under test, listening.
struct Proxy {
    kid: Kid,
    pid: u32,
    base: String,
    log: PathBuf,
}

async fn start_proxy(args: &Args, dir: &Path, upstream: &str) -> anyhow::Result<Proxy> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("config.toml");
    // The clients alone stay within the limit; bursts go over it.
    let limit = args.concurrency;
    std::fs::write(
        &config,
        format!(
            "stream_idle_timeout_secs = 1\nupstream_timeout_secs = 2\nshutdown_grace_secs = 2\n\
             max_body_bytes = {MAX_BODY}\nmax_concurrent_requests = {limit}\n"
        ),
    )?;
    let log = dir.join("proxy.log");
    let mut c = Command::new(&args.ccproxy);
    hermetic(&mut c, dir);
    let proxy = c
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--upstream-url",
            upstream,
        ])
        .arg("--config")
        .arg(&config)
        .args(["--log-level", "warn"])
        .args(&args.proxy_args)
        .envs(args.proxy_env.iter().map(|(k, v)| (k, v)))
        .env("ANTHROPIC_API_KEY", API_KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log)?))
        .spawn()?;
    let pid = proxy.id();
    let kid = Kid(proxy);
    let t_start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            t_start.elapsed() < Duration::from_secs(20),
            "proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(Proxy {
        kid,
        pid,
        base: format!("http://127.0.0.1:{port}"),
        log,
    })
}

/// Runs the clients for the duration, sampling the proxy; returns the samples.
async fn load(
    args: &Args,
    proxy: &Proxy,
    t0: Instant,
    start: Sample,
    counters: &Arc<Counters>,
) -> anyhow::Result<Vec<Sample>> {
    let stop = Arc::new(AtomicBool::new(false));
    let client = ccproxy::http::client_builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            tokio::spawn(client_loop(
                i,
                client.clone(),
                proxy.base.clone(),
                counters.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let mut samples = vec![start];
    let end = t0 + Duration::from_secs(args.duration);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(args.sample_every)).await;
        if args.scrape
            && let Ok(r) = client.get(format!("{}/metrics", proxy.base)).send().await
        {
            let _ = r.bytes().await;
        }
        let Some(s) = sample(proxy.pid, t0, counters.requests.load(Ordering::Relaxed)) else {
            anyhow::bail!(
                "the proxy died: {}",
                std::fs::read_to_string(&proxy.log).unwrap_or_default()
            );
        };
        println!(
            "t={:6.1}s rss={:7} KiB fds={:4} threads={:3} requests={}",
            s.t, s.rss_kb, s.fds, s.threads, s.requests
        );
        samples.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(40), w).await;
    }
    Ok(samples)
}

/// One client: requests until `stop`.
async fn client_loop(
    i: usize,
    client: reqwest::Client,
    base: String,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(i as u64 + 1);
    while !stop.load(Ordering::Relaxed) {
        let limited = counters.limited.load(Ordering::Relaxed);
        one(&client, &base, &mut rng, &counters).await;
        // Refused by the concurrency limit: back off a little, as a
        // client honouring retry-after would (without waiting 1 s).
        if counters.limited.load(Ordering::Relaxed) > limited {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// What the proxy looks like once the load is over.
struct After {
    idle: Sample,
    active_streams: f64,
    exit: Option<std::process::ExitStatus>,
}

/// The idle sample, the active-streams gauge, then SIGTERM and the exit status.
async fn aftermath(mut proxy: Proxy, t0: Instant, counters: &Counters) -> anyhow::Result<After> {
    // Idle: client connections closed, streams over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = proxy.pid;
    let idle = sample(pid, t0, counters.requests.load(Ordering::Relaxed))
        .ok_or_else(|| anyhow::anyhow!("the proxy died"))?;
    let metrics = ccproxy::http::client_builder()
        .build()?
        .get(format!("{}/metrics", proxy.base))
        .send()
        .await?
        .text()
        .await?;
    let active_streams = metric(&metrics, "ccproxy_active_streams").unwrap_or(0.0);

    // SIGTERM under the aftermath of load: must exit 0.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut exit = None;
    for _ in 0..200 {
        if let Ok(Some(st)) = proxy.kid.0.try_wait() {
            exit = Some(st);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(After {
        idle,
        active_streams,
        exit,
    })
}

fn write_csv(path: &Path, samples: &[Sample], idle: &Sample) -> std::io::Result<()> {
    let mut csv = String::from("t_s,rss_kb,fds,threads,requests\n");
    for s in samples.iter().chain([idle]) {
        csv.push_str(&format!(
            "{:.1},{},{},{},{}\n",
            s.t, s.rss_kb, s.fds, s.threads, s.requests
        ));
    }
    std::fs::write(path, csv)
}

/// The samples after the warm-up, halved: medians and maxima of each half.
#[derive(Clone, Copy)]
struct Halves {
    rss1: u64,
    rss2: u64,
    fd1: u64,
    fd2: u64,
    th1: u64,
    th2: u64,
    /// Least-squares RSS slope over the steady samples, KiB/min.
    rss_slope: f64,
}

fn halves(samples: &[Sample], warmup: u64) -> anyhow::Result<Halves> {
    // Verdict over the samples after the warm-up: second half vs first half.
    let steady: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.t >= warmup as f64)
        .collect();
    anyhow::ensure!(
        steady.len() >= 4,
        "too few samples after the warm-up: run longer"
    );
    let (w1, w2) = steady.split_at(steady.len() / 2);
    Ok(Halves {
        rss1: median(w1.iter().map(|s| s.rss_kb).collect()),
        rss2: median(w2.iter().map(|s| s.rss_kb).collect()),
        fd1: w1.iter().map(|s| s.fds).max().unwrap_or(0),
        fd2: w2.iter().map(|s| s.fds).max().unwrap_or(0),
        th1: w1.iter().map(|s| s.threads).max().unwrap_or(0),
        th2: w2.iter().map(|s| s.threads).max().unwrap_or(0),
        rss_slope: slope_per_min(&steady, |s| s.rss_kb as f64),
    })
}

/// Prints the summary and the failures; true when the run passes.
fn verdict(
    args: &Args,
    start: &Sample,
    samples: &[Sample],
    after: &After,
    counters: &Counters,
) -> anyhow::Result<bool> {
    let h = halves(samples, args.warmup)?;
    print_summary(args, start, &h, after, counters);
    let Halves {
        rss1,
        rss2,
        fd1,
        fd2,
        th1,
        th2,
        rss_slope,
    } = h;
    let (idle, active_streams, exit) = (&after.idle, after.active_streams, after.exit);
    // Allocator noise is about ±1.5 MiB between samples; medians over halves
    // and the least-squares slope see through it. A leak of even 0.3 MiB/min
    // (0.4 GiB a day) fails.
    let rss_slack = (rss1 / 20).max(2 * 1024);
    let max_slope = 300.0;
    let fd_slack = 8 + args.concurrency as u64 / 4;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut ok = true;
    let mut fail = |why: String| {
        println!("FAIL: {why}");
        ok = false;
    };
    if rss2 > rss1 + rss_slack {
        fail(format!(
            "RSS grew from {rss1} to {rss2} KiB (slack {rss_slack})"
        ));
    }
    if rss_slope > max_slope {
        fail(format!(
            "RSS grows by {rss_slope:.0} KiB/min (limit {max_slope:.0})"
        ));
    }
    if fd2 > fd1 + fd_slack {
        fail(format!(
            "open descriptors grew from {fd1} to {fd2} (slack {fd_slack})"
        ));
    }
    if idle.fds > fd1.max(fd2) {
        fail(format!(
            "{} descriptors open when idle, more than under load",
            idle.fds
        ));
    }
    if th2 > th1 + 4 {
        fail(format!("threads grew from {th1} to {th2}"));
    }
    if active_streams != 0.0 {
        fail(format!(
            "{active_streams} streams still counted as active when idle"
        ));
    }
    if n(&counters.unexpected) > 0 {
        fail(format!("{} unexpected outcomes", n(&counters.unexpected)));
    }
    if !exit.is_some_and(|e| e.success()) {
        fail("the proxy did not exit 0 on SIGTERM".into());
    }
    Ok(ok)
}

fn print_summary(args: &Args, start: &Sample, h: &Halves, after: &After, counters: &Counters) {
    let Halves {
        rss1,
        rss2,
        fd1,
        fd2,
        th1,
        th2,
        rss_slope,
    } = *h;
    let (idle, active_streams, exit) = (&after.idle, after.active_streams, after.exit);
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let secs = args.duration as f64;
    println!();
    println!(
        "traffic: {} requests ({:.0}/s): {} ok, {} expected errors, {} refused by the concurrency limit, \
         {} deliberate disconnects, {} closed while the client was still sending (reported), {} unexpected",
        n(&counters.requests),
        n(&counters.requests) as f64 / secs,
        n(&counters.ok),
        n(&counters.expected_errors),
        n(&counters.limited),
        n(&counters.disconnects),
        n(&counters.stale),
        n(&counters.unexpected),
    );
    println!(
        "rss: start {} KiB, steady first half median {rss1} KiB, second half {rss2} KiB \
         (slope {:+.0} KiB/min), idle {} KiB",
        start.rss_kb, rss_slope, idle.rss_kb
    );
    println!(
        "fds: start {}, max first half {fd1}, second half {fd2}, idle {}",
        start.fds, idle.fds
    );
    println!(
        "threads: start {}, max first half {th1}, second half {th2}, idle {}",
        start.threads, idle.threads
    );
    println!("active streams after the run: {active_streams}");
    println!(
        "exit after SIGTERM: {}",
        exit.map(|e| e.to_string())
            .unwrap_or_else(|| "did not exit".into())
    );
}
