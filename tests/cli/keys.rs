//! `ccproxy keys` (create, list, rotate, revoke) run as the built binary, and a running
//! server enforcing the keys it writes, naming the key (never the secret) in its log.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn run(c: &mut Command) -> (bool, String, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keys(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let db = dir.join("usage.db");
    run(cmd(dir).arg("keys").args(args).arg("--db").arg(&db))
}

/// The key printed by `create` or `rotate` (the line that is the key).
fn key_in(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("ccp-"))
        .unwrap_or_else(|| panic!("no key in {out}"))
        .to_owned()
}

#[test]
fn keys_are_created_listed_rotated_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out, err) = keys(
        d,
        &[
            "create",
            "n8n",
            "--models",
            "claude-haiku-*,claude-sonnet-*",
            "--rpm",
            "30",
            "--tpm",
            "50000",
            "--max-concurrent",
            "3",
            "--budget",
            "5",
            "--period",
            "week",
            "--expires",
            "30d",
            "--modes",
            "full,min",
        ],
    );
    assert!(ok, "{err}");
    let key = key_in(&out);
    assert!(
        key.len() >= 36 && key[4..].bytes().all(|b| b.is_ascii_alphanumeric()),
        "{key}"
    );

    let (ok, table, _) = keys(d, &["list"]);
    assert!(ok);
    assert!(!table.contains(&key), "{table}");
    for want in [
        "n8n",
        &format!("{}…", &key[..8]),
        "active",
        "models claude-haiku-*,claude-sonnet-*",
        "rpm 30",
        "tpm 50000",
        "concurrent 3",
        "$0.0000 of $5.00/week",
        "never",
    ] {
        assert!(table.contains(want), "{want} missing:\n{table}");
    }
    let (ok, json, _) = keys(d, &["list", "--format", "json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["name"], "n8n");
    assert_eq!(v[0]["modes"], serde_json::json!(["full", "minimal"]));
    assert_eq!(v[0]["period"], "week");
    assert!(v[0]["expires_at_ms"].is_i64());
    assert!(!json.contains(&key));

    // Same name again: refused; rotate gives a new key; revoke marks it.
    let (ok, _, err) = keys(d, &["create", "n8n"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, _) = keys(d, &["rotate", "n8n"]);
    assert!(ok);
    let rotated = key_in(&out);
    assert_ne!(rotated, key);
    let (ok, _, _) = keys(d, &["revoke", "n8n"]);
    assert!(ok);
    let (_, table, _) = keys(d, &["list"]);
    assert!(table.contains("revoked"), "{table}");
    let (ok, _, err) = keys(d, &["revoke", "nobody"]);
    assert!(!ok && err.contains("nobody"), "{err}");
    let (ok, _, err) = keys(d, &["rotate", "n8n"]);
    assert!(!ok && err.contains("revoked"), "{err}");

    // Bad input: an error, never a panic.
    for bad in [
        vec!["create", "x", "--modes", "max"],
        vec!["create", "x", "--period", "day"],
        vec!["create", "x", "--budget", "-3"],
        vec!["create", "x", "--expires", "soon"],
        vec!["create", "bad name"],
        vec!["create", "x", "--rpm", "0"],
    ] {
        let (ok, _, err) = keys(d, &bad);
        assert!(!ok, "{bad:?}");
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
    }

    // The database file holds no key.
    for entry in std::fs::read_dir(d).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            for k in [&key, &rotated] {
                assert!(!bytes.windows(k.len()).any(|w| w == k.as_bytes()), "{p:?}");
            }
        }
    }
}

fn post(port: u16, path: &str, key: &str) -> (u16, String) {
    let body = br#"{"model":"claude-sonnet-4-5","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = raw_request(
        "POST",
        path,
        "127.0.0.1",
        &[
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
            ("x-api-key", key),
        ],
        body,
    );
    let r = raw_http(&format!("127.0.0.1:{port}"), &req, Duration::from_secs(10)).unwrap();
    (r.status, r.text())
}

#[test]
fn a_running_server_enforces_cli_keys_and_logs_their_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out, err) = keys(d, &["create", "ci-bot"]);
    assert!(ok, "{err}");
    let key = key_in(&out);
    let port = free_port();
    let mut c = cmd(d);
    c.args([
        "serve",
        "--upstream-url",
        "sim",
        "--port",
        &port.to_string(),
    ])
    .arg("--usage-db")
    .arg(d.join("usage.db"))
    .args(["--auth-token", "admin-token-123456"]);
    let mut proc = spawn(c, d, "server");
    wait_port(port, &mut proc);

    let (status, body) = post(port, "/v1/messages", &key);
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(port, "/v1/messages", "ccp-not-a-key");
    assert_eq!(status, 401);
    let (status, _) = post(port, "/v1/messages", "admin-token-123456");
    assert_eq!(status, 200);

    // A revoke from the CLI reaches the running server within about a second.
    let (ok, _, _) = keys(d, &["revoke", "ci-bot"]);
    assert!(ok);
    let t0 = Instant::now();
    while post(port, "/v1/messages", &key).0 != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "revoke not picked up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    proc.signal("TERM");
    proc.wait_exit(Duration::from_secs(10));
    let logs = proc.logs();
    assert!(logs.contains("ci-bot"), "{logs}");
    assert!(!logs.contains(&key), "the key is in the log:\n{logs}");

    // Usage by key.
    let (ok, out, err) = run(cmd(d)
        .args(["usage", "--by", "key", "--since", "all", "--db"])
        .arg(d.join("usage.db")));
    assert!(ok, "{err}");
    assert!(out.contains("ci-bot") && out.contains("(none)"), "{out}");
}
