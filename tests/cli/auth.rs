//! `ccproxy auth …` through the built binary against a standalone simulated
//! upstream, and a grep of everything the server logs for secrets.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const ACCESS: &str = "sk-ant-oat01-cli-test-access-token-QWERTY";
const REFRESH: &str = "sk-ant-ort01-cli-test-refresh-token-ASDFGH";

fn write_creds(path: &Path, expires_in_ms: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        serde_json::to_vec(&serde_json::json!({"claudeAiOauth": {
            "accessToken": ACCESS, "refreshToken": REFRESH, "expiresAt": now + expires_in_ms,
            "scopes": ["user:inference", "user:profile"], "subscriptionType": "pro"}}))
        .unwrap(),
    )
    .unwrap();
}

fn run(c: &mut Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_reports_source_expiry_and_masks_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("home/.claude/.credentials.json");
    write_creds(&claude, 3 * 3_600_000);
    let (code, out, err) = run(cmd(dir.path()).args(["auth", "status"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(".claude/.credentials.json"), "{out}");
    assert!(out.contains("pro"), "{out}");
    assert!(out.contains("user:inference"), "{out}");
    assert!(!out.contains(ACCESS) && !err.contains(ACCESS));
    assert!(!out.contains(REFRESH) && !err.contains(REFRESH));
    assert!(out.contains("…"), "masked token shown: {out}");
}

#[test]
fn status_without_credentials_fails_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(cmd(dir.path()).args(["auth", "status"]));
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("ccproxy auth login"),
        "{out}{err}"
    );
}

#[test]
fn torn_file_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creds.json");
    std::fs::write(
        &path,
        b"{\"claudeAiOauth\": {\"accessToken\": \"sk-ant-oat01-tor",
    )
    .unwrap();
    let (code, out, err) = run(cmd(dir.path())
        .args(["auth", "status", "--credentials-file"])
        .arg(&path));
    assert_ne!(code, 0);
    let all = format!("{out}{err}");
    assert!(all.contains(path.to_str().unwrap()), "{all}");
    assert!(!all.contains("sk-ant-oat01-tor"), "{all}");
}

#[test]
fn expired_token_is_refreshed_by_status_and_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, url) = start_sim(dir.path());
    let path = dir.path().join("creds.json");
    write_creds(&path, -60_000);
    let token_url = format!("{url}/v1/oauth/token");
    let (code, out, err) = run(cmd(dir.path())
        .args([
            "auth",
            "refresh",
            "--oauth-token-url",
            &token_url,
            "--credentials-file",
        ])
        .arg(&path));
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(
        v["claudeAiOauth"]["accessToken"]
            .as_str()
            .unwrap()
            .starts_with("sk-ant-oat01-sim-")
    );
    let (code, out, _) = run(cmd(dir.path())
        .args([
            "auth",
            "status",
            "--oauth-token-url",
            &token_url,
            "--credentials-file",
        ])
        .arg(&path));
    assert_eq!(code, 0, "{out}");
    // The old refresh token was used up by the rotation: a copy of the old file cannot refresh.
    let stale = dir.path().join("stale.json");
    write_creds(&stale, -60_000);
    let (code, out, err) = run(cmd(dir.path())
        .args([
            "auth",
            "refresh",
            "--oauth-token-url",
            &token_url,
            "--credentials-file",
        ])
        .arg(&stale));
    assert_ne!(code, 0, "{out}{err}");
    assert!(!format!("{out}{err}").contains(REFRESH));
}

#[test]
fn login_with_pasted_code_then_logout() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, url) = start_sim(dir.path());
    let token_url = format!("{url}/v1/oauth/token");
    let mut child = cmd(dir.path())
        .args([
            "auth",
            "login",
            "--no-browser",
            "--oauth-token-url",
            &token_url,
        ])
        .env(
            "CCPROXY_OAUTH_AUTHORIZE_URL",
            "http://127.0.0.1:9/oauth/authorize",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    // Read until the authorize URL appears; take its state.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut state = None;
    let mut seen = String::new();
    while state.is_none() && Instant::now() < deadline {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(start) = line.find("http://127.0.0.1:9/oauth/authorize?") {
            let url = reqwest::Url::parse(line[start..].trim()).unwrap();
            let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
            assert_eq!(q["code_challenge_method"], "S256");
            assert_eq!(q["response_type"], "code");
            assert!(q["scope"].contains("user:inference"));
            state = Some(q["state"].clone());
        }
    }
    let state = state.unwrap_or_else(|| panic!("no authorize URL in: {seen}"));
    writeln!(stdin, "sim-auth-code-123#{state}").unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{seen}{rest}{err}");

    let store = dir.path().join("config/ccproxy/credentials.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    let access = v["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(access.starts_with("sk-ant-oat01-sim-"));
    assert!(
        !format!("{seen}{rest}{err}").contains(&access),
        "token printed"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (code, out, _) = run(cmd(dir.path()).args(["auth", "status"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("credentials.json"));

    // A wrong state is refused.
    let mut child = cmd(dir.path())
        .args([
            "auth",
            "login",
            "--no-browser",
            "--oauth-token-url",
            &token_url,
        ])
        .env(
            "CCPROXY_OAUTH_AUTHORIZE_URL",
            "http://127.0.0.1:9/oauth/authorize",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "code#not-the-state").unwrap();
    assert!(!child.wait().unwrap().success());

    // Logout removes ccproxy's own store only.
    let claude = dir.path().join("home/.claude/.credentials.json");
    write_creds(&claude, 3_600_000);
    let (code, out, err) = run(cmd(dir.path()).args(["auth", "logout"]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!store.exists());
    assert!(claude.exists(), "Claude Code's file is never removed");
}

#[test]
fn server_logs_never_contain_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, url) = start_sim(dir.path());
    let path = dir.path().join("creds.json");
    // Expired: the first request refreshes through the simulated endpoint.
    write_creds(&path, -1_000);
    let api_key = "sk-ant-api03-server-key-LOGGREP-123456";
    let proxy_token = "proxy-token-LOGGREP-987654";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("server.log");
    let child = cmd(dir.path())
        .args(["serve", "--port", &port.to_string(), "--upstream-url", &url])
        .args(["--oauth-token-url", &format!("{url}/v1/oauth/token")])
        .args([
            "--auth-token",
            proxy_token,
            "--log-level",
            "trace",
            "--credentials-file",
        ])
        .arg(&path)
        .env("ANTHROPIC_API_KEY", api_key)
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("out.log")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let client = ccproxy::http::client_builder().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let base = format!("http://127.0.0.1:{port}");
        for (path, key) in [
            ("/v1/messages", proxy_token),
            ("/min/v1/messages", proxy_token),
            ("/v1/messages", "wrong-token"),
        ] {
            let _ = client
                .post(format!("{base}{path}"))
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .body(r#"{"model":"claude-sonnet-4-5","max_tokens":9,"messages":[{"role":"user","content":"hi"}]}"#)
                .send()
                .await
                .unwrap()
                .bytes()
                .await;
        }
        let _ = client.get(format!("{base}/health")).send().await.unwrap().bytes().await;
    });
    std::thread::sleep(Duration::from_millis(200));
    let refreshed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let new_access = refreshed["claudeAiOauth"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_refresh = refreshed["claudeAiOauth"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_access, ACCESS, "the token was refreshed during the run");
    let logs = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.path().join("out.log")).unwrap();
    assert!(logs.len() > 100, "trace logs were captured: {logs}");
    for secret in [
        ACCESS,
        REFRESH,
        api_key,
        proxy_token,
        &new_access,
        &new_refresh,
    ] {
        assert!(!logs.contains(secret), "a secret appears in the logs");
    }
}

#[test]
fn status_says_when_the_refresh_token_was_rejected_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, url) = start_sim(dir.path());
    let path = dir.path().join("creds.json");
    // The simulated endpoint answers `invalid_grant` for this refresh token.
    let revoked = "sk-ant-ort01-revoked-invalid-ZXCVBN";
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({"claudeAiOauth": {
            "accessToken": ACCESS, "refreshToken": revoked, "expiresAt": 1_000}}))
        .unwrap(),
    )
    .unwrap();
    let (code, out, err) = run(cmd(dir.path())
        .args(["auth", "status", "--oauth-token-url"])
        .arg(format!("{url}/v1/oauth/token"))
        .arg("--credentials-file")
        .arg(&path));
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("Refresh token:  rejected (invalid_grant)"),
        "{out}"
    );
    assert!(
        out.contains(
            "not usable: the refresh token was rejected by the token endpoint (invalid_grant)"
        ),
        "{out}"
    );
    assert!(
        err.contains("log in again with `ccproxy auth login` (or Claude Code's `claude`)"),
        "{err}"
    );
    for secret in [ACCESS, revoked] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "a secret was printed"
        );
    }
}

/// Makes `path` look `secs` seconds old.
fn age(path: &Path, secs: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn stale_temporary_credentials_files_are_removed_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("home/.claude/.credentials.json");
    write_creds(&claude, 3 * 3_600_000);
    let own = dir.path().join("config/ccproxy/credentials.json");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    let temp = |target: &Path, pid: u32| {
        let name = target.file_name().unwrap().to_str().unwrap();
        target.with_file_name(format!(".{name}.tmp-{pid}-0123456789abcdef"))
    };
    // Left by writes killed between write and rename: live tokens, ours, old.
    let stale = [temp(&claude, 11), temp(&own, 12)];
    for p in &stale {
        std::fs::write(p, b"{\"claudeAiOauth\":{}}").unwrap();
        age(p, 300);
    }
    // A write in progress, and a file that only looks similar: kept.
    let fresh = temp(&claude, 13);
    std::fs::write(&fresh, b"x").unwrap();
    let similar = claude.with_file_name(".credentials.json.tmp-11-0123456789abcdef.keep");
    std::fs::write(&similar, b"x").unwrap();
    age(&similar, 300);

    let port = free_port();
    let mut c = cmd(dir.path());
    c.args([
        "serve",
        "--upstream-url",
        "sim",
        "--no-usage",
        "--port",
        &port.to_string(),
    ]);
    let mut server = spawn(c, dir.path(), "serve");
    wait_port(port, &mut server);
    for p in &stale {
        assert!(!p.exists(), "{} was left", p.display());
    }
    assert!(fresh.exists() && similar.exists());
    assert!(claude.exists());
    let logs = server.logs();
    assert!(
        logs.contains("removed a temporary credentials file"),
        "{logs}"
    );
    assert!(
        !logs.contains(ACCESS) && !logs.contains(REFRESH),
        "a secret was logged"
    );
}
