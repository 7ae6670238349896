//! The dashboard page and `/api/usage`, over a seeded usage database: JSON
//! checks over HTTP, and the page rendered by a real headless Chromium.
//!
//! The browser test needs Debian's `chromium` (`apt-get install -y chromium`)
//! or `$CHROMIUM` pointing at a Chromium binary. Without one it is skipped with
//! a message, except under CI (`CI` set), where it fails.
//! `CCPROXY_DASHBOARD_SCREENSHOT=/tmp/dash.png` also saves a screenshot.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ccproxy::observability::usage::{PriceTable, UsageStore};
use ccproxy::observability::{Tokens, UsageRecord};
use serde_json::Value;

const MIN: i64 = 60_000;
const TOKEN: &str = "dashboard-test-token-5b1e";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[allow(clippy::too_many_arguments)]
fn rec(
    id: &str,
    ago_min: i64,
    model: &str,
    mode: &str,
    status: u16,
    input: u64,
    output: u64,
    abandoned: bool,
) -> UsageRecord {
    let tokens = Tokens {
        input,
        output,
        cache_read: input * 4,
        cache_write: input / 2,
        cache_write_1h: 0,
        fast: false,
        batch: false,
    };
    UsageRecord {
        ts_ms: now_ms() - ago_min * MIN,
        request_id: id.into(),
        mode: mode.into(),
        dialect: "anthropic".into(),
        model: Some(model.into()),
        stream: true,
        status,
        upstream_status: Some(status),
        tokens,
        cost_usd: PriceTable::built_in().cost(model, &tokens),
        duration_ms: 900.0 + ago_min as f64,
        ttft_ms: (status < 400).then_some(250.0),
        proxy_ms: 0.4,
        abandoned,
        error: (status >= 400).then(|| "upstream overloaded <script>alert(1)</script>".into()),
        credential: Some("server_oauth".into()),
        bucket: Some("plan".into()),
        client_key: None,
    }
}

/// Six requests in the last few hours: three models, one error, one abandoned.
fn seed(path: &Path) -> Vec<UsageRecord> {
    let rows = vec![
        rec(
            "req_browser_001",
            200,
            "claude-sonnet-4-5-20250929",
            "full",
            200,
            1200,
            300,
            false,
        ),
        rec(
            "req_browser_002",
            150,
            "claude-sonnet-4-5-20250929",
            "full",
            200,
            800,
            900,
            false,
        ),
        rec(
            "req_browser_003",
            90,
            "claude-haiku-4-5-20251001",
            "minimal",
            200,
            400,
            100,
            false,
        ),
        rec(
            "req_browser_004",
            60,
            "claude-haiku-4-5-20251001",
            "passthrough",
            529,
            0,
            0,
            false,
        ),
        rec(
            "req_browser_005",
            20,
            "claude-opus-4-5-20251101",
            "full",
            200,
            3000,
            1200,
            true,
        ),
        rec(
            "req_browser_006",
            5,
            "claude-sonnet-4-5-20250929",
            "full",
            200,
            500,
            50,
            false,
        ),
    ];
    let mut store = UsageStore::open(path).unwrap();
    store.insert(&rows).unwrap();
    rows
}

/// Starts the real server (on the simulated upstream) with its usage store at
/// `db` (`None`: usage recording off) on 127.0.0.1:0; with `with_token`, the
/// proxy token guards the dashboard and `/api/usage`, as in production.
async fn serve(db: Option<PathBuf>, with_token: bool) -> SocketAddr {
    let dir = tempfile::tempdir().unwrap().keep();
    let config = dir.join("config.toml");
    std::fs::write(&config, "").unwrap();
    let mut args = ccproxy::cli::ServeArgs {
        host: Some("127.0.0.1".into()),
        port: Some(0),
        upstream_url: Some("sim".into()),
        ..ccproxy::cli::ServeArgs::default()
    };
    args.common.config = Some(config);
    let mut settings = ccproxy::config::Settings::resolve(&args).unwrap();
    settings.paths.home_dir = Some(dir.join("home"));
    settings.paths.config_dir = dir.join("config");
    settings.server.auth_token = with_token.then(|| ccproxy::config::Secret::new(TOKEN));
    match db {
        Some(path) => settings.usage.db = path,
        None => settings.usage.enabled = false,
    }
    let server = ccproxy::server::Server::bind(settings).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    addr
}

fn client() -> reqwest::Client {
    ccproxy::http::client_builder().build().unwrap()
}

async fn get_json(addr: SocketAddr, query: &str) -> (StatusCode, Value) {
    let res = client()
        .get(format!("http://{addr}/api/usage{query}"))
        .send()
        .await
        .unwrap();
    let status = res.status();
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    (status, res.json().await.unwrap())
}

#[tokio::test]
async fn page_is_self_contained() {
    let addr = serve(None, false).await;
    let res = client()
        .get(format!("http://{addr}/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let headers = res.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let html = res.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    // No external resource of any kind: the only URL is the SVG namespace name.
    let svg_ns = "http://www.w3.org/2000/svg";
    assert_eq!(
        html.matches("http").count(),
        html.matches(svg_ns).count(),
        "unexpected URL in the page"
    );
    for needle in [
        " src=", " href=", "@import", "url(", "//cdn", "<link", "<iframe",
    ] {
        assert!(!html.contains(needle), "page contains {needle:?}");
    }
    assert!(html.contains("'/api/usage?since='"));
    assert!(html.contains("'Authorization'"));
}

#[tokio::test]
async fn api_usage_reports_totals_series_models_and_recent() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let rows = seed(&db);
    // Plus 60 old rows, outside the default 24 hours.
    let old: Vec<UsageRecord> = (0..60)
        .map(|i| {
            rec(
                &format!("req_old_{i:03}"),
                3 * 24 * 60 + i,
                "claude-3-haiku-20240307",
                "full",
                200,
                10,
                10,
                false,
            )
        })
        .collect();
    UsageStore::open(&db).unwrap().insert(&old).unwrap();
    let addr = serve(Some(db.clone()), false).await;

    let (status, d) = get_json(addr, "?since=24h&tz_offset=0").await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["recorded"], true);
    assert_eq!(d["since"], "24h");
    assert_eq!(d["bucket"], "hour");
    let t = &d["totals"];
    assert_eq!(t["requests"], 6);
    assert_eq!(t["errors"], 1);
    assert_eq!(t["abandoned"], 1);
    let want_input: u64 = rows.iter().map(|r| r.tokens.input).sum();
    assert_eq!(t["tokens"]["input"], want_input);
    let want_cost: f64 = rows.iter().filter_map(|r| r.cost_usd).sum();
    assert!((t["cost_usd"].as_f64().unwrap() - want_cost).abs() < 1e-12);
    assert!((d["error_rate"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-12);

    // The series covers the whole period, hour by hour, and adds up.
    let series = d["series"].as_array().unwrap();
    assert!((24..=25).contains(&series.len()), "{}", series.len());
    let sum = |f: &dyn Fn(&Value) -> u64| series.iter().map(f).sum::<u64>();
    assert_eq!(sum(&|p| p["requests"].as_u64().unwrap()), 6);
    assert_eq!(sum(&|p| p["errors"].as_u64().unwrap()), 1);
    assert_eq!(sum(&|p| p["tokens"]["output"].as_u64().unwrap()), 2550);
    for w in series.windows(2) {
        assert_eq!(
            w[1]["start_ms"].as_i64().unwrap() - w[0]["start_ms"].as_i64().unwrap(),
            3_600_000
        );
    }

    let models: Vec<(&str, u64)> = d["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].as_str().unwrap(), g["requests"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        models,
        [
            ("claude-sonnet-4-5-20250929", 3),
            ("claude-haiku-4-5-20251001", 2),
            ("claude-opus-4-5-20251101", 1)
        ]
    );
    let modes: Vec<&str> = d["by_mode"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["full", "minimal", "passthrough"]);

    // Recent: newest first, every field.
    let recent = d["recent"].as_array().unwrap();
    let ids: Vec<&str> = recent
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "req_browser_006",
            "req_browser_005",
            "req_browser_004",
            "req_browser_003",
            "req_browser_002",
            "req_browser_001"
        ]
    );
    let newest: UsageRecord = serde_json::from_value(recent[0].clone()).unwrap();
    assert_eq!(&newest, rows.last().unwrap());

    // Everything: 66 requests, by day; recent is capped at 50 by default.
    let (_, all) = get_json(addr, "?since=all").await;
    assert_eq!(all["totals"]["requests"], 66);
    assert_eq!(all["bucket"], "hour");
    assert_eq!(all["recent"].as_array().unwrap().len(), 50);
    let (_, all) = get_json(addr, "?since=all&by=day&recent=3").await;
    assert_eq!(all["bucket"], "day");
    assert_eq!(all["recent"].as_array().unwrap().len(), 3);
    // A short period gets 5-minute buckets.
    let (_, hour) = get_json(addr, "?since=1h").await;
    assert_eq!(hour["bucket"], "5m");
    assert_eq!(hour["totals"]["requests"], 2);

    let (status, err) = get_json(addr, "?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("yesterday")
    );
    let (status, _) = get_json(addr, "?by=fortnight").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// `/api/usage`'s handler called directly over a store path no server opened.
async fn direct_api(db: PathBuf) -> (StatusCode, Value) {
    use ccproxy::observability::usage::dashboard::{ApiQuery, api_usage};
    let resp = api_usage(Some(db), ApiQuery::default()).await;
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn api_usage_without_a_store() {
    let dir = tempfile::tempdir().unwrap();
    // Disabled: 503 with a message.
    let addr = serve(None, false).await;
    let (status, body) = get_json(addr, "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["type"], "usage_disabled");
    // A store path with no database yet (the API reading a store no server has
    // opened): empty, and the file is not created.
    let db = dir.path().join("later.db");
    let (status, body) = direct_api(db.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["recorded"], false);
    assert_eq!(body["totals"]["requests"], 0);
    assert!(!db.exists());
    // Enabled in a running server, nothing recorded yet: empty totals.
    let addr = serve(Some(db.clone()), false).await;
    let (status, body) = get_json(addr, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["totals"]["requests"], 0);
    // Corrupt: 500 naming the file.
    let bad = dir.path().join("corrupt.db");
    std::fs::write(&bad, vec![0x5A; 4096]).unwrap();
    let (status, body) = direct_api(bad).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("corrupt.db")
    );
}

// ---- the page in a real browser ----

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Runs headless Chromium on `url` and returns the DOM after scripts ran.
fn chromium_dump_dom(chromium: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=5000",
        "--window-size=1440,1900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(png) => cmd.arg(format!("--screenshot={}", png.display())),
        None => cmd.arg("--dump-dom"),
    };
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// Text content of the element with `id` (its direct text; no nested tags).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in DOM"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    &rest[start..end]
}

/// The inner HTML of the first `<tag ... id="id" ...>` up to its closing tag.
fn section<'a>(dom: &'a str, id: &str, close: &str) -> &'a str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in DOM"));
    let end = dom[at..].find(close).unwrap() + at;
    &dom[at..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_in_headless_chromium() {
    let Some(chromium) = find_chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is required in CI: apt-get install -y chromium");
        }
        // Straight to stderr, past the test harness's capture, so it is seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED dashboard_renders_in_headless_chromium: chromium is not installed \
             (apt-get install -y chromium, or set CHROMIUM=/path/to/chromium)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let rows = seed(&db);
    let addr = serve(Some(db), true).await;

    // With the token in the page URL, the page sends it and renders the data.
    let url = format!("http://{addr}/dashboard?token={TOKEN}");
    let chromium2 = chromium.clone();
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&chromium2, &url, None))
        .await
        .unwrap();
    assert!(
        dom.contains("<body data-state=\"ready\""),
        "page did not finish loading:\n{dom}"
    );
    assert_eq!(text_of(&dom, "total-requests"), "6");
    // The server's credentials, from /health.
    assert_eq!(text_of(&dom, "cred-server_api_key-name"), "server_api_key");
    assert_eq!(text_of(&dom, "cred-server_api_key-state"), "available");
    assert_eq!(text_of(&dom, "total-errors"), "1");
    assert_eq!(text_of(&dom, "error-rate"), "16.7% error rate");
    assert!(text_of(&dom, "total-cost").starts_with('$'));
    assert_eq!(
        text_of(&dom, "total-requests-sub"),
        "6 streamed · 1 abandoned"
    );
    assert!(
        dom.contains("id=\"banner\" role=\"alert\" hidden"),
        "banner shown"
    );

    // The model table: one row per model with its request count.
    let models = section(&dom, "by-model", "</table>");
    for (model, n) in [
        ("claude-sonnet-4-5-20250929", 3),
        ("claude-haiku-4-5-20251001", 2),
        ("claude-opus-4-5-20251101", 1),
    ] {
        let row_at = models
            .find(&format!("data-model=\"{model}\""))
            .unwrap_or_else(|| panic!("{model} missing from the model table"));
        let row = &models[row_at..models[row_at..].find("</tr>").unwrap() + row_at];
        assert!(row.contains(&format!("<td>{n}</td>")), "{model}: {row}");
    }

    // The recent table: every request, newest first, the error text escaped.
    let recent = section(&dom, "recent", "</table>");
    let mut last = 0;
    for r in rows.iter().rev() {
        let at = recent
            .find(&format!("data-request-id=\"{}\"", r.request_id))
            .unwrap_or_else(|| panic!("{} missing from recent requests", r.request_id));
        assert!(at >= last, "recent requests out of order");
        last = at;
    }
    assert!(recent.contains(">abandoned</span>"));
    assert!(recent.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!dom.contains("<script>alert(1)"));

    // The charts drew bars.
    for chart in [
        "chart-requests",
        "chart-tokens",
        "chart-cost",
        "chart-models",
    ] {
        let svg = section(&dom, chart, "</svg>");
        assert!(svg.contains("<rect"), "{chart} has no bars");
    }
    let models_chart = section(&dom, "chart-models", "</svg>");
    assert!(models_chart.contains("claude-opus-4-5-20251101"));

    // Without the token the server refuses the page, and says how to fix it.
    let url = format!("http://{addr}/dashboard");
    let chromium2 = chromium.clone();
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&chromium2, &url, None))
        .await
        .unwrap();
    assert!(!dom.contains("data-state=\"ready\""), "{dom}");
    assert!(
        dom.contains("authentication_error") && dom.contains("?token="),
        "{dom}"
    );

    if let Some(png) = std::env::var_os("CCPROXY_DASHBOARD_SCREENSHOT") {
        let png = PathBuf::from(png);
        let url = format!("http://{addr}/dashboard?token={TOKEN}");
        let png2 = png.clone();
        tokio::task::spawn_blocking(move || chromium_dump_dom(&chromium, &url, Some(&png2)))
            .await
            .unwrap();
        assert!(png.exists());
        eprintln!("screenshot saved to {}", png.display());
    }
}

/// A usage database that fails while the proxy runs (its table dropped by another
/// process): the page says so in its banner, with the error and the rows lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_failing_usage_store() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI: apt-get install -y chromium"
        );
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED dashboard_shows_a_failing_usage_store: chromium is not installed"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    seed(&db);
    let addr = serve(Some(db.clone()), false).await;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TABLE requests")
        .unwrap();
    let r = client()
        .post(format!("http://{addr}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(
            &serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = get_json(addr, "").await;
        if body["store"]["write_errors"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let url = format!("http://{addr}/dashboard");
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&chromium, &url, None))
        .await
        .unwrap();
    assert!(dom.contains("<body data-state=\"ready\""), "{dom}");
    let banner = section(&dom, "banner", "</div>");
    assert!(!banner.contains("hidden"), "{banner}");
    assert!(
        banner.contains("Usage is not being recorded")
            && banner.contains("no such table: requests")
            && banner.contains("1 request(s) lost"),
        "{banner}"
    );
}

/// The keys page lists the keys (never a key), with spend and status, and the usage
/// dashboard filters by key (`?key=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_page_renders_in_headless_chromium() {
    let Some(chromium) = find_chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is required in CI: apt-get install -y chromium");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED keys_page_renders_in_headless_chromium: chromium is not installed"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let rows = seed(&db);
    let now = now_ms();
    let mut kdb = ccproxy::keys::store::KeyDb::open(&db).unwrap();
    let spec = ccproxy::keys::KeyRequest {
        name: "n8n".into(),
        rpm: Some(30),
        budget_usd: Some(5.0),
        period: Some("week".into()),
        ..ccproxy::keys::KeyRequest::default()
    };
    let n8n = kdb.create("n8n", &spec.limits(now).unwrap(), now).unwrap();
    let old = kdb
        .create("old-bot", &ccproxy::keys::Limits::default(), now)
        .unwrap();
    kdb.revoke("old-bot", now).unwrap();
    // Two of the seeded requests were made with n8n's key.
    let mut store = UsageStore::open(&db).unwrap();
    let keyed: Vec<UsageRecord> = rows[..2]
        .iter()
        .map(|r| UsageRecord {
            request_id: format!("{}-key", r.request_id),
            ts_ms: now - MIN,
            client_key: Some("n8n".into()),
            ..r.clone()
        })
        .collect();
    store.insert(&keyed).unwrap();
    drop(store);
    let addr = serve(Some(db), true).await;

    let url = format!("http://{addr}/dashboard/keys?token={TOKEN}");
    let chromium2 = chromium.clone();
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&chromium2, &url, None))
        .await
        .unwrap();
    assert!(dom.contains("<body data-state=\"ready\""), "{dom}");
    assert!(
        !dom.contains(&n8n) && !dom.contains(&old),
        "a key is on the page"
    );
    let table = section(&dom, "keys-body", "</tbody>");
    let row_of = |name: &str| {
        let at = table
            .find(&format!("data-key=\"{name}\""))
            .unwrap_or_else(|| panic!("{name} missing: {table}"));
        &table[at..table[at..].find("</tr>").unwrap() + at]
    };
    let row = row_of("n8n");
    assert!(row.contains(&format!("{}…", &n8n[..8])), "{row}");
    assert!(row.contains(">active<") && row.contains("rpm 30"), "{row}");
    assert!(row.contains("/week") && row.contains(">2<"), "{row}");
    assert!(row.contains("Revoke") && row.contains("Rotate"), "{row}");
    let row = row_of("old-bot");
    assert!(
        row.contains(">revoked<") && !row.contains("Revoke"),
        "{row}"
    );
    assert_eq!(text_of(&dom, "summary"), "2 keys, 1 active");

    // Without the admin token: refused.
    let r = client()
        .get(format!("http://{addr}/dashboard/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // With a client key: refused.
    let r = client()
        .get(format!("http://{addr}/dashboard/keys?token={n8n}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The usage dashboard, filtered by key.
    let url = format!("http://{addr}/dashboard?key=n8n&token={TOKEN}");
    let dom = tokio::task::spawn_blocking(move || chromium_dump_dom(&chromium, &url, None))
        .await
        .unwrap();
    assert!(dom.contains("<body data-state=\"ready\""), "{dom}");
    assert_eq!(text_of(&dom, "total-requests"), "2");
    assert_eq!(text_of(&dom, "key-filter"), "key: n8n");
}
