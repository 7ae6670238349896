//! Several upstream credentials from the configuration file, through the built binary: the
//! `[[credentials]]` tables (an inline key and one from the environment), failover when the
//! first is rate-limited at a standalone simulated upstream, and what `ccproxy status`,
//! `ccproxy models refresh`, `config show` and `usage --by credential` then say (never a secret).

use std::process::Stdio;

use crate::commands::{post_json, wait_health};
use crate::support::*;

const KEY_A: &str = "sk-ant-api03-cli-pool-a-0123456789abcdef";
const KEY_B: &str = "sk-ant-api03-cli-pool-b-0123456789abcdef";

fn run(c: &mut std::process::Command) -> (bool, String) {
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_pool_from_the_config_file_fails_over_and_status_shows_why() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, sim_url) = start_sim(dir.path());
    // The first key is rate-limited for ten minutes at the upstream.
    let until = ccproxy::util::time::now_secs() + 600;
    let script = format!(r#"{{"{KEY_A}": {{"rate_limited_until": {until}}}}}"#);
    let port = sim_url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let (status, body) = post_json(port, "/_sim/accounts", &script);
    assert_eq!(status, 204, "{body}");

    let config = dir.path().join("ccproxy.toml");
    std::fs::write(
        &config,
        format!(
            r#"credential_routing = "priority"

[[credentials]]
name = "first"
api_key = "{KEY_A}"

[[credentials]]
name = "team"
api_key_env = "TEAM_ANTHROPIC_KEY"
modes = ["full", "min"]
"#
        ),
    )
    .unwrap();
    let proxy_port = free_port();
    let mut c = cmd(dir.path());
    c.env("TEAM_ANTHROPIC_KEY", KEY_B).args([
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--upstream-url",
        &sim_url,
        "--port",
        &proxy_port.to_string(),
    ]);
    let mut server = spawn(c, dir.path(), "serve");
    wait_port(proxy_port, &mut server);
    wait_health(proxy_port);

    for text in ["one", "two"] {
        let (status, body) = post_json(
            proxy_port,
            "/v1/messages",
            &format!(
                r#"{{"model":"claude-sonnet-4-5","max_tokens":20,"messages":[{{"role":"user","content":"{text}"}}]}}"#
            ),
        );
        assert_eq!(status, 200, "{body}");
    }

    let status_cmd = |extra: &[&str]| {
        let mut c = cmd(dir.path());
        c.args([
            "status",
            "--config",
            config.to_str().unwrap(),
            "--port",
            &proxy_port.to_string(),
        ])
        .args(extra)
        .stdin(Stdio::null());
        run(&mut c)
    };
    let (ok, table) = status_cmd(&[]);
    assert!(ok, "{table}");
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}: {table}"))
            .to_owned()
    };
    assert!(line("first").contains("cooling until"), "{table}");
    let first = line("first");
    assert!(
        first.contains("(in 9m") || first.contains("(in 10m"),
        "the upstream's reset: {table}"
    );
    assert!(line("team").contains("available"), "{table}");
    let (ok, json) = status_cmd(&["--format", "json"]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pool"][0]["state"], "cooling");
    assert_eq!(
        v["pool"][1]["modes"],
        serde_json::json!(["full", "minimal"])
    );

    // `ccproxy models refresh`: the server fetches the list with its pool (the first key is
    // rate-limited, the team key answers) and the table shows the upstream's limits.
    let mut refresh = cmd(dir.path());
    refresh
        .args([
            "models",
            "refresh",
            "--config",
            config.to_str().unwrap(),
            "--port",
            &proxy_port.to_string(),
        ])
        .stdin(Stdio::null());
    let (ok, models) = run(&mut refresh);
    assert!(ok, "{models}");
    assert!(
        models.starts_with("5 models from the upstream\n"),
        "{models}"
    );
    let sonnet = models
        .lines()
        .find(|l| l.starts_with("claude-sonnet-5 "))
        .unwrap_or_else(|| panic!("{models}"));
    assert!(
        sonnet.contains("1000000") && sonnet.contains("128000"),
        "{models}"
    );

    let mut show = cmd(dir.path());
    show.env("TEAM_ANTHROPIC_KEY", KEY_B).args([
        "config",
        "show",
        "--config",
        config.to_str().unwrap(),
    ]);
    let (ok, shown) = run(&mut show);
    assert!(ok, "{shown}");
    assert!(shown.contains("first (api key sk-ant-api…cdef"), "{shown}");
    assert!(shown.contains("credential_routing"), "{shown}");

    // A clean stop writes every usage row.
    server.signal("TERM");
    assert!(
        server
            .wait_exit(std::time::Duration::from_secs(10))
            .is_some()
    );
    let mut usage = cmd(dir.path());
    usage.args([
        "usage",
        "--config",
        config.to_str().unwrap(),
        "--by",
        "credential",
        "--format",
        "json",
    ]);
    let (ok, report) = run(&mut usage);
    assert!(ok, "{report}");
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{report}");
    assert_eq!(groups[0]["key"], "team", "{report}");
    // Two messages and the model list.
    assert_eq!(groups[0]["requests"], 3, "{report}");

    for out in [&table, &json, &shown, &report, &models] {
        assert!(!out.contains(KEY_A) && !out.contains(KEY_B), "{out}");
    }
}

#[test]
fn a_bad_pool_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, want) in [
        (
            "[[credentials]]\nname = \"x\"\n",
            "needs exactly one of oauth_file, api_key, api_key_env",
        ),
        (
            "[[credentials]]\nname = \"x\"\napi_key = \"k\"\n[[credentials]]\nname = \"x\"\napi_key = \"k\"\n",
            "two credentials are named",
        ),
        (
            "[[credentials]]\nname = \"x\"\noauth_file = \"f.json\"\nmodes = [\"min\"]\n",
            "full mode only",
        ),
        ("credential_routing = \"random\"\n", "credential_routing"),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, toml).unwrap();
        let mut c = cmd(dir.path());
        c.args(["config", "show", "--config", config.to_str().unwrap()]);
        let (ok, out) = run(&mut c);
        assert!(!ok, "{toml}: {out}");
        assert!(out.contains(want), "{toml}: {out}");
    }
    // A key from an unset variable: shown as such, and the server refuses to start.
    let config = dir.path().join("env.toml");
    std::fs::write(
        &config,
        "[[credentials]]\nname = \"x\"\napi_key_env = \"NOT_SET_ANYWHERE\"\n",
    )
    .unwrap();
    let mut c = cmd(dir.path());
    c.args(["config", "show", "--config", config.to_str().unwrap()]);
    let (ok, out) = run(&mut c);
    assert!(ok && out.contains("$NOT_SET_ANYWHERE, not set"), "{out}");
    let mut c = cmd(dir.path());
    c.args([
        "serve",
        "--upstream-url",
        "sim",
        "--port",
        &free_port().to_string(),
    ])
    .args(["--config", config.to_str().unwrap()]);
    let (ok, out) = run(&mut c);
    assert!(!ok, "{out}");
    assert!(
        out.contains("credential \"x\": the environment variable NOT_SET_ANYWHERE"),
        "{out}"
    );
}

/// `SIGHUP` re-reads the pool from the configuration file: a stream in flight finishes on the
/// pool it started with, the next request uses the new one; an invalid file changes nothing.
#[test]
fn sighup_reloads_the_pool_without_dropping_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, sim_url) = start_sim(dir.path());
    let sim_port = sim_url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let until = ccproxy::util::time::now_secs() + 600;
    let script = format!(r#"{{"{KEY_A}": {{"rate_limited_until": {until}}}}}"#);
    assert_eq!(post_json(sim_port, "/_sim/accounts", &script).0, 204);

    let config = dir.path().join("ccproxy.toml");
    let one = format!("[[credentials]]\nname = \"team\"\napi_key = \"{KEY_B}\"\n");
    std::fs::write(&config, &one).unwrap();
    let port = free_port();
    let mut c = cmd(dir.path());
    c.args(["serve", "--config", config.to_str().unwrap()])
        .args(["--upstream-url", &sim_url, "--port", &port.to_string()]);
    let mut server = spawn(c, dir.path(), "serve");
    wait_port(port, &mut server);

    // A slow stream (about 2 s) starts on the first pool.
    let slow = std::thread::spawn(move || {
        post_json(
            port,
            "/v1/messages",
            r#"{"model":"claude-sonnet-4-5","max_tokens":200,"stream":true,"messages":[{"role":"user","content":"slow [sim:gap=40] [sim:deltas=50]"}]}"#,
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    // The new pool puts a rate-limited credential first.
    std::fs::write(
        &config,
        format!("[[credentials]]\nname = \"first\"\napi_key = \"{KEY_A}\"\n\n{one}"),
    )
    .unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.logs().contains("credential pool reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let (status, body) = slow.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("message_stop"),
        "the stream in flight finished: {body}"
    );
    let (status, body) = post_json(
        port,
        "/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":20,"messages":[{"role":"user","content":"after"}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    let health = wait_health(port);
    let names: Vec<&str> = health["credentials"]["pool"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first", "team"]);
    assert_eq!(health["credentials"]["pool"][0]["state"], "cooling");

    // An invalid file: the previous pool stays.
    std::fs::write(&config, "[[credentials]]\nname = \"broken\"\n").unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.logs().contains("credential pool not reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert_eq!(wait_health(port)["credentials"]["pool"][1]["name"], "team");
    assert!(!server.logs().contains(KEY_A) && !server.logs().contains(KEY_B));
}
