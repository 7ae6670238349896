//! Who may use the proxy, and what it may reveal: the non-loopback refusal,
//! DNS-rebinding (Host) and drive-by (Origin/CORS) protection, the proxy token
//! (wrong lengths), secrets in every output, and credentials-file permissions.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

// ---------------------------------------------------------------- listening address

#[test]
fn non_loopback_bind_needs_a_token_or_allow_open() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let serve = |extra: &[&str]| {
        let mut c = cmd(dir.path());
        c.args(["serve", "--host", "0.0.0.0", "--port", &port.to_string()])
            .args(["--upstream-url", "sim"])
            .args(extra);
        c
    };
    // Refused, with the way out in the message, before anything listens.
    let out = serve(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0 without a proxy token"),
        "{err}"
    );
    assert!(
        err.contains("--auth-token") && err.contains("--allow-open"),
        "{err}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    // --allow-open (or CCPROXY_ALLOW_OPEN): starts, open.
    for (args, env) in [
        (vec!["--allow-open"], None),
        (vec![], Some(("CCPROXY_ALLOW_OPEN", "true"))),
    ] {
        let mut c = serve(&args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let mut p = spawn(c, dir.path(), "open");
        wait_port(port, &mut p);
        let r = raw_http(
            &format!("127.0.0.1:{port}"),
            &raw_request("GET", "/health", "127.0.0.1", &[], b""),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["auth_required"], false);
        p.signal("TERM");
        assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
    }

    // A proxy token is enough, and then it is required.
    let mut p = spawn(
        serve(&["--auth-token", "non-loopback-token-123456"]),
        dir.path(),
        "token",
    );
    wait_port(port, &mut p);
    let body = serde_json::to_vec(&message("hi", false)).unwrap();
    let r = raw_http(
        &format!("127.0.0.1:{port}"),
        &raw_request("POST", "/v1/messages", "127.0.0.1", &[], &body),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 401);
    let r = raw_http(
        &format!("127.0.0.1:{port}"),
        &raw_request(
            "POST",
            "/v1/messages",
            "127.0.0.1",
            &[("x-api-key", "non-loopback-token-123456")],
            &body,
        ),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---------------------------------------------------------------- Host and Origin

/// Sends a raw request (blocking, off the runtime) to the test server.
async fn raw(env: &TestEnv, req: Vec<u8>) -> RawResponse {
    let addr = env.addr.to_string();
    tokio::task::spawn_blocking(move || raw_http(&addr, &req, Duration::from_secs(5)))
        .await
        .unwrap()
        .expect("a response")
}

fn cors_headers(r: &RawResponse) -> Vec<&(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.starts_with("access-control-"))
        .collect()
}

/// The body a page could send with `method` to `path` (a route it could reach).
fn page_body(method: &str, path: &str) -> Vec<u8> {
    if method == "GET" {
        vec![]
    } else if path.ends_with("/chat/completions") {
        serde_json::to_vec(&chat("hi", false)).unwrap()
    } else {
        serde_json::to_vec(&message("hi", false)).unwrap()
    }
}

fn assert_forbidden(r: &RawResponse, openai: bool, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.text());
    let v = r.json();
    if openai {
        assert_openai_error(&v, "permission_error");
        assert_eq!(v["error"]["code"], "forbidden");
    } else {
        assert_anthropic_error(&v, "permission_error");
    }
}

/// `openai`: whether the route answers in OpenAI's dialect.
async fn foreign_host_names_are_refused(method: &str, path: &str, openai: bool) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let port = env.addr.port();
    let body = page_body(method, path);
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
        format!("127.0.0.1.nip.io:{port}"),
        "192.168.1.10".into(),
    ] {
        let r = raw(&env, raw_request(method, path, &host, &[], &body)).await;
        assert_forbidden(&r, openai, &format!("Host {host} {path}"));
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("DNS rebinding")
        );
    }
    assert!(
        env.sim_state().requests().is_empty(),
        "nothing went upstream"
    );
}

// The routes a page could reach.
cases!(foreign_host_names_are_refused {
    anthropic_full: ("POST", "/v1/messages", false),
    anthropic_min: ("POST", "/min/v1/messages", false),
    anthropic_pt: ("POST", "/pt/v1/messages", false),
    openai_full: ("POST", "/openai/v1/chat/completions", true),
    openai_pt: ("POST", "/pt/openai/v1/chat/completions", true),
    anthropic_models: ("GET", "/v1/models", false),
    openai_models: ("GET", "/openai/v1/models", true),
    health: ("GET", "/health", false),
    metrics: ("GET", "/metrics", false),
});

#[tokio::test]
async fn local_host_names_are_accepted() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let port = env.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "LOCALHOST".into(),
        "app.localhost".into(),
    ] {
        let r = raw(&env, raw_request("GET", "/health", &host, &[], b"")).await;
        assert_eq!(r.status, 200, "Host {host}");
    }
    let body = serde_json::to_vec(&message("hi", false)).unwrap();
    let r = raw(
        &env,
        raw_request(
            "POST",
            "/v1/messages",
            &format!("localhost:{port}"),
            &[],
            &body,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
}

/// `openai`: whether the route answers in OpenAI's dialect.
async fn foreign_origins_are_refused_without_cors_headers(method: &str, path: &str, openai: bool) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let host = format!("127.0.0.1:{}", env.addr.port());
    let body = page_body(method, path);
    for origin in ["https://evil.example", "null", "http://localhost:3000"] {
        // A "simple" request a page can send without a preflight.
        let r = raw(
            &env,
            raw_request(
                method,
                path,
                &host,
                &[("origin", origin), ("content-type", "text/plain")],
                &body,
            ),
        )
        .await;
        assert_forbidden(&r, openai, &format!("Origin {origin} {path}"));
        assert!(
            cors_headers(&r).is_empty(),
            "{origin} {path}: {:?}",
            r.headers
        );
        // The preflight gets nothing a browser would accept either.
        let r = raw(
            &env,
            raw_request(
                "OPTIONS",
                path,
                &host,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", "content-type,x-api-key"),
                ],
                b"",
            ),
        )
        .await;
        assert_eq!(r.status, 403, "preflight {origin} {path}");
        assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    }
    assert!(
        env.sim_state().requests().is_empty(),
        "nothing went upstream"
    );
}

// The routes a page could reach.
cases!(foreign_origins_are_refused_without_cors_headers {
    anthropic_full: ("POST", "/v1/messages", false),
    anthropic_min: ("POST", "/min/v1/messages", false),
    anthropic_pt: ("POST", "/pt/v1/messages", false),
    openai_full: ("POST", "/openai/v1/chat/completions", true),
    openai_pt: ("POST", "/pt/openai/v1/chat/completions", true),
    anthropic_models: ("GET", "/v1/models", false),
    openai_models: ("GET", "/openai/v1/models", true),
    health: ("GET", "/health", false),
    metrics: ("GET", "/metrics", false),
});

#[tokio::test]
async fn same_origin_pages_still_work_without_cors_headers() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let host = format!("127.0.0.1:{}", env.addr.port());
    // The proxy's own pages (same origin) still work.
    let r = raw(
        &env,
        raw_request(
            "GET",
            "/health",
            &host,
            &[("origin", &format!("http://{host}"))],
            b"",
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(cors_headers(&r).is_empty());
}

async fn allowed_origin_gets_cors_headers_and_a_working_preflight(
    path: &str,
    body: Value,
    openai: bool,
) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        tweak: Some(|s| s.server.cors_origins = vec!["http://localhost:3000".into()]),
        ..Opts::default()
    })
    .await;
    let host = format!("127.0.0.1:{}", env.addr.port());
    let origin = "http://localhost:3000";
    // Preflight: no credentials, answered by the proxy itself.
    let r = raw(
        &env,
        raw_request(
            "OPTIONS",
            path,
            &host,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type,x-api-key,anthropic-version",
                ),
            ],
            b"",
        ),
    )
    .await;
    assert_eq!(r.status, 204, "{path}");
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert!(
        r.header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type,x-api-key,anthropic-version")
    );
    assert_eq!(r.header("vary"), Some("Origin"));
    // The actual request, with and without the proxy token.
    let bytes = serde_json::to_vec(&body).unwrap();
    for (token, status) in [(PROXY_TOKEN, 200u16), ("wrong-token", 401)] {
        let r = raw(
            &env,
            raw_request(
                "POST",
                path,
                &host,
                &[
                    ("origin", origin),
                    ("content-type", "application/json"),
                    ("anthropic-version", "2023-06-01"),
                    ("x-api-key", token),
                ],
                &bytes,
            ),
        )
        .await;
        assert_eq!(r.status, status, "{path} {}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        assert!(
            r.header("access-control-expose-headers")
                .unwrap()
                .contains("request-id")
        );
        if status == 401 {
            let v = r.json();
            if openai {
                assert_openai_error(&v, "authentication_error");
            } else {
                assert_anthropic_error(&v, "authentication_error");
            }
        }
    }
    // Another origin is still refused.
    let r = raw(
        &env,
        raw_request(
            "POST",
            "/v1/messages",
            &host,
            &[("origin", "http://localhost:3001")],
            b"{}",
        ),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(cors_headers(&r).is_empty());
}

cases!(allowed_origin_gets_cors_headers_and_a_working_preflight {
    anthropic_full: ("/v1/messages", message("hi", false), false),
    openai_full: ("/openai/v1/chat/completions", chat("hi", false), true),
});

// ---------------------------------------------------------------- proxy token

/// Proxy tokens that are wrong in every way, most of them of another length.
fn wrong_tokens() -> Vec<String> {
    let mut same_length = PROXY_TOKEN.to_owned();
    same_length.pop();
    same_length.push('!');
    vec![
        "x".into(),
        PROXY_TOKEN[..PROXY_TOKEN.len() - 1].into(),
        format!("{PROXY_TOKEN}x"),
        format!("{PROXY_TOKEN} extra"),
        same_length,
        PROXY_TOKEN.to_uppercase(),
        PROXY_TOKEN.repeat(200),
        "\u{e9}".repeat(40),
    ]
}

async fn proxy_token_of_any_wrong_length_is_401(path: &str, body: Value, openai: bool) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Opts::default()
    })
    .await;
    for token in &wrong_tokens() {
        for header in ["x-api-key", "authorization"] {
            let value = if header == "authorization" {
                format!("Bearer {token}")
            } else {
                token.clone()
            };
            let resp = env
                .client
                .post(env.url(path))
                .header("content-type", "application/json")
                .header(header, value)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 401, "{path} {header} len={}", token.len());
            let v: Value = resp.json().await.unwrap();
            if openai {
                assert_openai_error(&v, "authentication_error");
                assert_eq!(v["error"]["code"], "invalid_api_key");
            } else {
                assert_anthropic_error(&v, "authentication_error");
            }
        }
    }
    // Missing entirely, or empty.
    for headers in [
        vec![],
        vec![("x-api-key", "")],
        vec![("authorization", "Bearer ")],
    ] {
        let mut rb = env.client.post(env.url(path)).json(&body);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        assert_eq!(rb.send().await.unwrap().status(), 401, "{path}");
    }
    // The right token works both ways.
    for (k, v) in [
        ("x-api-key", PROXY_TOKEN.to_owned()),
        ("authorization", format!("Bearer {PROXY_TOKEN}")),
    ] {
        let resp = env
            .client
            .post(env.url(path))
            .header(k, v)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} {k}");
        resp.bytes().await.unwrap();
    }
    // Two accepted requests went upstream, none carrying the proxy token.
    let reqs = env.sim_state().requests();
    assert_eq!(reqs.len(), 2);
    for r in reqs {
        assert!(r.headers.iter().all(|(_, v)| !v.contains(PROXY_TOKEN)));
    }
}

cases!(proxy_token_of_any_wrong_length_is_401 {
    anthropic_full: ("/v1/messages", message("hi", false), false),
    anthropic_pt_stream: ("/pt/v1/messages", message("hi", true), false),
    openai_full: ("/openai/v1/chat/completions", chat("hi", false), true),
});

#[test]
fn proxy_token_comparison_refuses_every_wrong_token() {
    let token = ccproxy::access::ProxyToken::new(PROXY_TOKEN);
    assert!(token.matches(Some(PROXY_TOKEN)));
    for t in &wrong_tokens() {
        assert!(!token.matches(Some(t)));
    }
    assert!(!token.matches(None));
    assert!(!token.matches(Some("")));
}

// ---------------------------------------------------------------- secrets in outputs

const LEAK_API_KEY: &str = "sk-ant-api03-LEAKCHECK-serverkey-Zq81x";
const LEAK_ACCESS: &str = "sk-ant-oat01-LEAKCHECK-access-Kp55x";
const LEAK_REFRESH: &str = "sk-ant-ort01-LEAKCHECK-refresh-Wm23x";
const LEAK_PROXY: &str = "LEAKCHECK-proxy-token-Hx77x";
const LEAK_CLIENT_KEY: &str = "sk-ant-api03-LEAKCHECK-clientkey-Vb09x";
const LEAK_CLIENT_OAUTH: &str = "sk-ant-oat01-LEAKCHECK-clientoauth-Nn41x";

fn write_creds(path: &std::path::Path, expires_in_ms: i64, mode: u32) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::fs::write(
        path,
        serde_json::to_vec(&serde_json::json!({"claudeAiOauth": {
            "accessToken": LEAK_ACCESS, "refreshToken": LEAK_REFRESH,
            "expiresAt": now + expires_in_ms,
            "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}}))
        .unwrap(),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// method, path, body, extra headers
type Call = (&'static str, String, Vec<u8>, Vec<(&'static str, String)>);

/// Every kind of request a client can make, with `key` as its credential;
/// returns everything the client saw (status lines, headers, bodies).
async fn exercise(base: &str, key: Option<&str>, host_port: u16) -> String {
    let client = ccproxy::http::client_builder().build().unwrap();
    let mut seen = String::new();
    let msg = |t: &str, s: bool| serde_json::to_vec(&message(t, s)).unwrap();
    let cht = |t: &str, s: bool| serde_json::to_vec(&chat(t, s)).unwrap();
    let mut calls: Vec<Call> = Vec::new();
    for mode in ["", "/min", "/pt"] {
        for (text, stream) in [
            ("hi", false),
            ("hi [sim:tools]", true),
            ("[sim:status=401]", false),
            ("[sim:status=429]", false),
            ("[sim:error-midstream]", true),
            ("[sim:reset-midstream]", true),
        ] {
            calls.push((
                "POST",
                format!("{mode}/v1/messages"),
                msg(text, stream),
                vec![],
            ));
            calls.push((
                "POST",
                format!("{mode}/openai/v1/chat/completions"),
                cht(text, stream),
                vec![],
            ));
        }
        calls.push((
            "POST",
            format!("{mode}/v1/messages"),
            b"{not json".to_vec(),
            vec![],
        ));
        calls.push((
            "POST",
            format!("{mode}/openai/v1/chat/completions"),
            b"{\"messages\":7}".to_vec(),
            vec![],
        ));
        calls.push((
            "POST",
            format!("{mode}/v1/messages/count_tokens"),
            msg("hi", false),
            vec![],
        ));
        calls.push(("GET", format!("{mode}/v1/models"), vec![], vec![]));
        calls.push(("GET", format!("{mode}/openai/v1/models"), vec![], vec![]));
        calls.push(("DELETE", format!("{mode}/v1/messages"), vec![], vec![]));
    }
    calls.push(("GET", "/nope".into(), vec![], vec![]));
    calls.push(("GET", "/health".into(), vec![], vec![]));
    calls.push(("GET", "/metrics".into(), vec![], vec![]));
    calls.push(("GET", "/dashboard".into(), vec![], vec![]));
    calls.push(("GET", "/api/usage".into(), vec![], vec![]));
    calls.push((
        "POST",
        "/v1/messages".into(),
        msg("hi", false),
        vec![("origin", "https://evil.example".into())],
    ));
    calls.push((
        "POST",
        "/v1/messages".into(),
        msg("hi", false),
        vec![("host", format!("evil.example:{host_port}"))],
    ));
    for (method, path, body, extra) in calls {
        let mut rb = client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(body);
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        for (k, v) in extra {
            rb = rb.header(k, v);
        }
        let Ok(resp) = rb.send().await else { continue };
        seen.push_str(&format!("\n{method} {path} -> {}\n", resp.status()));
        for (k, v) in resp.headers() {
            seen.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        let body = match resp.bytes().await {
            Ok(b) => b.to_vec(),
            Err(e) => format!("<body error: {e}>").into_bytes(),
        };
        seen.push_str(&String::from_utf8_lossy(&body));
    }
    // Wrong and missing proxy tokens, and the token in a dashboard URL.
    for k in ["wrong-token", ""] {
        if let Ok(r) = client
            .post(format!("{base}/v1/messages"))
            .header("x-api-key", k)
            .body(msg("hi", false))
            .send()
            .await
        {
            seen.push_str(&r.text().await.unwrap_or_default());
        }
    }
    if let Some(k) = key {
        for p in ["/dashboard", "/api/usage", "/metrics"] {
            if let Ok(r) = client.get(format!("{base}{p}?token={k}")).send().await {
                seen.push_str(&r.text().await.unwrap_or_default());
            }
        }
    }
    seen
}

fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} contains the secret {s}");
        // The distinctive middle, in case it appears cut or partly masked.
        let core = s.split("LEAKCHECK-").nth(1).unwrap_or(s);
        let core = &core[..core.len() - 5];
        assert!(
            !text.contains(core),
            "{what} contains part of the secret {s}: {core}"
        );
    }
}

#[test]
fn secrets_never_appear_in_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, url) = start_sim(dir.path());
    let creds = dir.path().join("creds.json");
    // Expired (so it is refreshed and rotated during the run) and group-readable.
    write_creds(&creds, -1_000, 0o640);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("auth_token = \"{LEAK_PROXY}\"\napi_key = \"{LEAK_API_KEY}\"\n"),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut secrets: Vec<String> = [
        LEAK_API_KEY,
        LEAK_ACCESS,
        LEAK_REFRESH,
        LEAK_PROXY,
        LEAK_CLIENT_KEY,
        LEAK_CLIENT_OAUTH,
    ]
    .map(str::to_owned)
    .to_vec();

    // Run A: proxy token, server API key and subscription credentials.
    let port = free_port();
    let mut c = cmd(dir.path());
    c.args(["serve", "--port", &port.to_string(), "--upstream-url", &url])
        .args(["--oauth-token-url", &format!("{url}/v1/oauth/token")])
        .args(["--log-level", "trace", "--config"])
        .arg(&config)
        .arg("--credentials-file")
        .arg(&creds);
    let mut a = spawn(c, dir.path(), "run-a");
    wait_port(port, &mut a);
    let seen = rt.block_on(exercise(
        &format!("http://127.0.0.1:{port}"),
        Some(LEAK_PROXY),
        port,
    ));
    assert!(seen.contains("-> 200 OK"), "{seen}");
    outputs.push(("responses (run A)".into(), seen));
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(10)).unwrap().success());
    let logs = a.logs();
    assert!(logs.contains("TRACE"), "trace logs were captured");
    // The group-readable credentials file was warned about, and written back 0600.
    assert!(
        logs.contains("the credentials file is accessible to other users")
            && logs.contains("chmod 600"),
        "no permission warning in: {}",
        &logs[..logs.len().min(3000)]
    );
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials written back 0600");
    let rotated: Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    let new_access = rotated["claudeAiOauth"]["accessToken"].as_str().unwrap();
    let new_refresh = rotated["claudeAiOauth"]["refreshToken"].as_str().unwrap();
    assert_ne!(
        new_access, LEAK_ACCESS,
        "the token was refreshed during the run"
    );
    secrets.push(new_access.to_owned());
    secrets.push(new_refresh.to_owned());
    outputs.push(("logs (run A)".into(), logs));

    // Run B: open proxy, the clients bring their own credentials.
    let port = free_port();
    let mut c = cmd(dir.path());
    c.args(["serve", "--port", &port.to_string(), "--upstream-url", &url])
        .args(["--log-level", "trace"]);
    let mut b = spawn(c, dir.path(), "run-b");
    wait_port(port, &mut b);
    let base = format!("http://127.0.0.1:{port}");
    let mut seen = rt.block_on(exercise(&base, Some(LEAK_CLIENT_KEY), port));
    seen.push_str(&rt.block_on(exercise(&base, Some(LEAK_CLIENT_OAUTH), port)));
    outputs.push(("responses (run B)".into(), seen));
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(10)).unwrap().success());
    outputs.push(("logs (run B)".into(), b.logs()));

    // The CLI: config show and auth status with the same settings.
    for args in [vec!["config", "show"], vec!["auth", "status"]] {
        let out = cmd(dir.path())
            .args(&args)
            .arg("--config")
            .arg(&config)
            .arg("--credentials-file")
            .arg(&creds)
            .env("ANTHROPIC_API_KEY", LEAK_API_KEY)
            .env("CCPROXY_AUTH_TOKEN", LEAK_PROXY)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!text.trim().is_empty(), "{args:?} printed nothing");
        outputs.push((args.join(" "), text));
    }

    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    for (what, text) in &outputs {
        eprintln!("checked {what}: {} bytes", text.len());
        // Refreshed tokens have no LEAKCHECK marker: checked whole.
        for s in &secrets {
            assert!(!text.contains(s), "{what} contains the secret {s}");
        }
        assert_no_secret(what, text, &secrets[..6]);
    }
}

// ---------------------------------------------------------------- credentials file

#[test]
fn private_credentials_file_gets_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds.json");
    write_creds(&creds, 3_600_000, 0o600);
    let port = free_port();
    let mut c = cmd(dir.path());
    c.args([
        "serve",
        "--port",
        &port.to_string(),
        "--upstream-url",
        "sim",
    ])
    .arg("--credentials-file")
    .arg(&creds);
    let mut p = spawn(c, dir.path(), "serve");
    wait_port(port, &mut p);
    let t0 = Instant::now();
    while !p.logs().contains("listening") && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).unwrap().success());
    let logs = p.logs();
    assert!(logs.contains("listening"), "{logs}");
    assert!(!logs.contains("accessible to other users"), "{logs}");
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
