//! Black-box tests of the built binary: config init/show, sim, serve.

use crate::support::*;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stdout_of(c: &mut Command) -> (bool, String, String) {
    let out = c.output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn wait_health(port: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(body) = http_get(port, "/health") {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal blocking HTTP/1.1 client (keeps this test free of async setup).
fn http(port: u16, request: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request.as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub(crate) fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let (status, body) = http(
        port,
        &format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"),
    )?;
    if status == 200 {
        Ok(body)
    } else {
        Err(std::io::Error::other(format!("status {status}")))
    }
}

pub(crate) fn post_json(port: u16, path: &str, body: &str) -> (u16, String) {
    http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap()
}

#[test]
fn config_init_writes_a_commented_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, _) = stdout_of(cmd(dir.path()).args(["config", "init"]));
    assert!(ok);
    let path = dir.path().join("config/ccproxy/config.toml");
    assert!(out.contains(path.to_str().unwrap()));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("# upstream_url"));
    let (ok, _, err) = stdout_of(cmd(dir.path()).args(["config", "init"]));
    assert!(!ok);
    assert!(err.contains("--force"));
    let (ok, _, _) = stdout_of(cmd(dir.path()).args(["config", "init", "--force"]));
    assert!(ok);
}

#[test]
fn config_show_applies_precedence_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "port = 9000\nhost = \"127.0.0.2\"\napi_key = \"sk-ant-api03-from-file-secret-000\"\n[model_aliases]\n\"gpt-x\" = \"claude-haiku-4-5\"\n",
    )
    .unwrap();
    let show = |extra_env: &[(&str, &str)], args: &[&str]| {
        let mut c = cmd(dir.path());
        c.args(["config", "show", "--config", file.to_str().unwrap()])
            .args(args);
        for (k, v) in extra_env {
            c.env(k, v);
        }
        let (ok, out, err) = stdout_of(&mut c);
        assert!(ok, "{err}");
        out
    };
    let out = show(&[], &[]);
    assert!(out.contains("port                     = 9000"), "{out}");
    assert!(out.contains("\"127.0.0.2\""));
    assert!(out.contains("\"gpt-x\" = \"claude-haiku-4-5\""));
    assert!(!out.contains("from-file-secret"), "{out}");
    let out = show(&[("CCPROXY_PORT", "9100")], &[]);
    assert!(out.contains("= 9100"), "{out}");
    let out = show(&[("CCPROXY_PORT", "9100")], &["--port", "9200"]);
    assert!(out.contains("= 9200"), "{out}");
    let secret_env = [
        ("CCPROXY_AUTH_TOKEN", "proxy-secret-token-abcdefgh"),
        ("ANTHROPIC_API_KEY", "sk-ant-api03-env-secret-key-zzzz"),
    ];
    let out = show(&secret_env, &[]);
    assert!(!out.contains("proxy-secret-token-abcdefgh"));
    assert!(!out.contains("env-secret-key"));
    assert!(out.contains("sk-ant-api…zzzz"), "{out}");
    // AUTH_TOKEN is accepted too.
    let out = show(&[("AUTH_TOKEN", "another-proxy-secret-1234")], &[]);
    assert!(out.contains("…1234") && !out.contains("another-proxy-secret"));
}

#[test]
fn config_show_prints_every_setting_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "retries = 3\nretry_429 = true\nmax_body_bytes = 1000\nstream_idle_timeout_secs = 7\n\
         upstream_h2_max_streams = 50\n[prices.\"claude-x\"]\ninput = 1.5\noutput = 2.0\n",
    )
    .unwrap();
    let (ok, out, err) = stdout_of(
        cmd(dir.path())
            .args(["config", "show", "--config", file.to_str().unwrap()])
            .args(["--log-format", "json", "--upstream-url", "sim"])
            .env("CCPROXY_AUTH_TOKEN", "proxy-secret-token-abcdefgh"),
    );
    assert!(ok, "{err}");
    let settings: Vec<&str> = out.lines().take_while(|l| !l.is_empty()).collect();
    // Every key of the config file (tables aside) appears, with its value.
    for key in [
        "host",
        "port",
        "upstream_url",
        "auth_token",
        "api_key",
        "credentials_file",
        "oauth_token_url",
        "oauth_client_id",
        "refresh_skew_secs",
        "max_body_bytes",
        "cli_version",
        "default_max_tokens",
        "connect_timeout_secs",
        "upstream_timeout_secs",
        "log_format",
        "log_level",
        "allow_open",
        "cors_origins",
        "max_concurrent_requests",
        "stream_idle_timeout_secs",
        "shutdown_grace_secs",
        "retries",
        "retry_429",
        "retry_max_wait_secs",
        "usage",
        "usage_db",
    ] {
        assert!(
            settings
                .iter()
                .any(|l| l.split(" = ").next().map(str::trim_end) == Some(key)),
            "{key} missing from:\n{out}"
        );
    }
    // Aligned: every `=` in the same column.
    let columns: Vec<usize> = settings.iter().filter_map(|l| l.find(" = ")).collect();
    assert_eq!(columns.len(), settings.len(), "{out}");
    assert!(columns.windows(2).all(|w| w[0] == w[1]), "{out}");
    let value = |key: &str| {
        settings
            .iter()
            .find(|l| l.split(" = ").next().map(str::trim_end) == Some(key))
            .and_then(|l| l.split_once(" = "))
            .map(|(_, v)| v.to_owned())
            .unwrap()
    };
    assert_eq!(value("retries"), "3");
    assert_eq!(value("retry_429"), "true");
    assert_eq!(value("retry_max_wait_secs"), "30");
    assert_eq!(value("max_body_bytes"), "1000");
    assert_eq!(value("stream_idle_timeout_secs"), "7");
    assert_eq!(value("upstream_h2_max_streams"), "50");
    assert_eq!(value("log_format"), "\"json\"");
    assert_eq!(value("upstream_url"), "\"sim\"");
    assert_eq!(value("api_key"), "(not set)");
    assert!(!out.contains("proxy-secret-token"), "{out}");
    assert!(value("auth_token").contains("…efgh"), "{out}");
    assert!(
        out.contains("[prices.\"claude-x\"]\ninput           = 1.5\noutput          = 2\n"),
        "{out}"
    );
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "prot = 9000\n").unwrap();
    let (ok, _, err) =
        stdout_of(cmd(dir.path()).args(["config", "show", "--config", file.to_str().unwrap()]));
    assert!(!ok);
    assert!(err.contains("c.toml") && err.contains("prot"), "{err}");
    let (ok, _, err) =
        stdout_of(cmd(dir.path()).args(["config", "show", "--upstream-url", "ftp://x"]));
    assert!(!ok);
    assert!(err.contains("upstream_url"), "{err}");
    std::fs::write(&file, "upstream_h2_max_streams = 0\n").unwrap();
    let (ok, _, err) =
        stdout_of(cmd(dir.path()).args(["config", "show", "--config", file.to_str().unwrap()]));
    assert!(!ok);
    assert!(
        err.contains("upstream_h2_max_streams") && err.contains("greater than 0"),
        "{err}"
    );
    std::fs::write(&file, "workers = 5000\n").unwrap();
    let (ok, _, err) =
        stdout_of(cmd(dir.path()).args(["config", "show", "--config", file.to_str().unwrap()]));
    assert!(!ok);
    assert!(
        err.contains("workers") && err.contains("at most 1024"),
        "{err}"
    );
    let (ok, _, err) =
        stdout_of(cmd(dir.path()).args(["config", "show", "--config", "/nonexistent/c.toml"]));
    assert!(!ok);
    assert!(err.contains("/nonexistent/c.toml"), "{err}");
}

#[test]
fn sim_runs_standalone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = cmd(dir.path())
        .args(["sim", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hello"}]}"#;
    let (status, body) = http(
        port,
        &format!(
            "POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: sk-ant-api03-x\r\nanthropic-version: 2023-06-01\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"type\":\"message\""));
}

#[test]
fn default_command_serves_on_the_simulated_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = cmd(dir.path())
        .args(["--upstream-url", "sim", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let health = wait_health(port);
    assert_eq!(health["upstream"], "sim");
    // The try-it path: no key at all.
    let (status, body) = post_json(
        port,
        "/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("simulated upstream"));
    let (status, _) = post_json(
        port,
        "/pt/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(status, 200);
}

/// The try-it path needs no HTTPS: on a machine without CA certificates (an empty bundle in
/// `SSL_CERT_FILE`) it still starts and answers (the certificates are loaded only for a server to
/// verify).
#[test]
fn try_it_path_runs_on_a_machine_without_ca_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let bundle = dir.path().join("empty.pem");
    std::fs::write(&bundle, "").unwrap();
    let mut c = cmd(dir.path());
    c.env("SSL_CERT_FILE", &bundle)
        .args(["--upstream-url", "sim", "--port", &port.to_string()]);
    let mut p = spawn(c, dir.path(), "ccproxy");
    wait_port(port, &mut p);
    let (status, body) = post_json(
        port,
        "/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(!p.logs().contains("CA certificates"), "{}", p.logs());
}

#[test]
fn serve_subcommand_accepts_env_settings() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = cmd(dir.path())
        .arg("serve")
        .env("CCPROXY_UPSTREAM_URL", "sim")
        .env("CCPROXY_PORT", port.to_string())
        .env("CCPROXY_AUTH_TOKEN", "serve-test-token-123456")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let health = wait_health(port);
    assert_eq!(health["auth_required"], true);
    let (status, body) = post_json(port, "/v1/messages", "{}");
    assert_eq!(status, 401, "{body}");
}

/// `ccproxy serve` on the simulated upstream with JSON logs to a file: the process, its port
/// and the log's path.
fn serve_json_logs(dir: &std::path::Path) -> (Killed, u16, std::path::PathBuf) {
    let port = free_port();
    let log = dir.join("stderr.log");
    let child = cmd(dir)
        .args([
            "--upstream-url",
            "sim",
            "--port",
            &port.to_string(),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let guard = Killed(child);
    wait_health(port);
    (guard, port, log)
}

/// The request log lines in `log` once there are `want` of them (or after 10 s); every one
/// must be a whole JSON line.
fn request_lines(log: &std::path::Path, want: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| l.contains("\"ccproxy::request\""))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The request log lines of a round go out together: under a burst every request still gets
/// exactly one whole line, with its own usage.
#[test]
fn json_logs_stay_whole_lines_under_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let (guard, port, log) = serve_json_logs(dir.path());
    const THREADS: usize = 8;
    const EACH: usize = 40;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let body = format!(
                        r#"{{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{{"role":"user","content":"burst {t} {i}"}}]}}"#
                    );
                    let (status, _) = post_json(port, "/pt/v1/messages", &body);
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let want = THREADS * EACH;
    let lines = request_lines(&log, want);
    drop(guard);
    assert_eq!(lines.len(), want, "{lines:?}");
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l["fields"]["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), want);
    for l in &lines {
        assert_eq!(l["fields"]["status"], 200);
        assert!(l["fields"]["input_tokens"].as_u64().unwrap() > 0, "{l}");
        assert!(l["fields"]["output_tokens"].as_u64().unwrap() > 0, "{l}");
    }
}

#[test]
fn json_logs_have_one_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let (guard, port, log) = serve_json_logs(dir.path());
    let (status, _) = post_json(
        port,
        "/min/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"hi [sim:cache]"}]}"#,
    );
    assert_eq!(status, 200);
    let (status, _) = post_json(port, "/v1/messages", "{bad");
    assert_eq!(status, 400);
    let lines = request_lines(&log, 2);
    drop(guard);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ok = &lines[0]["fields"];
    assert_eq!(ok["mode"], "minimal");
    assert_eq!(ok["dialect"], "anthropic");
    assert_eq!(ok["model"], "claude-sonnet-4-5");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["cache_read_tokens"], 8192);
    assert_eq!(ok["credential"], "server_api_key");
    assert!(ok["request_id"].as_str().unwrap().starts_with("req_"));
    assert!(
        ok["upstream_request_id"]
            .as_str()
            .unwrap()
            .starts_with("req_sim_")
    );
    assert!(ok["duration_ms"].is_string() || ok["duration_ms"].is_number());
    let bad = &lines[1]["fields"];
    assert_eq!(bad["status"], 400);
    assert!(bad["error"].as_str().unwrap().contains("JSON"));
}
