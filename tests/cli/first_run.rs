//! What a newcomer meets first, through the built binary: `config init` with a
//! named file, error messages that state their cause once, subcommand help, and
//! the startup line (simulated upstream, usage store, dashboard, no credential).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn output(c: &mut Command) -> (bool, String, String) {
    let out = c.output().expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_init_creates_the_named_file_and_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let by_flag = dir.path().join("new/dir/by-flag.toml");
    let (ok, out, err) = output(
        cmd(dir.path())
            .args(["config", "init", "--config"])
            .arg(&by_flag),
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains(by_flag.to_str().unwrap()), "{out}");
    assert!(
        std::fs::read_to_string(&by_flag)
            .unwrap()
            .contains("# upstream_url")
    );

    let by_env = dir.path().join("other/by-env.toml");
    let (ok, out, err) = output(
        cmd(dir.path())
            .args(["config", "init"])
            .env("CCPROXY_CONFIG", &by_env),
    );
    assert!(ok, "{out}{err}");
    assert!(by_env.is_file(), "{out}");
    // Not written to the default place.
    assert!(!dir.path().join("config/ccproxy/config.toml").exists());

    // The written file is a valid configuration for the other commands.
    let (ok, out, err) = output(
        cmd(dir.path())
            .args(["config", "show", "--config"])
            .arg(&by_env),
    );
    assert!(ok, "{err}");
    assert!(out.contains(by_env.to_str().unwrap()), "{out}");

    // A second init refuses to overwrite it.
    let (ok, _, err) = output(
        cmd(dir.path())
            .args(["config", "init", "--config"])
            .arg(&by_flag),
    );
    assert!(!ok);
    assert!(err.contains("--force"), "{err}");
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn error_messages_state_their_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    // A config file named but missing.
    let missing = dir.path().join("missing.toml");
    for args in [vec!["config", "show"], vec!["serve"], vec!["usage"]] {
        let (ok, _, err) = output(cmd(dir.path()).args(&args).arg("--config").arg(&missing));
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("cannot read config file") && err.contains("missing.toml"),
            "{args:?}: {err}"
        );
        assert_eq!(
            count(&err, "No such file or directory"),
            1,
            "{args:?}: {err}"
        );
    }
    // A directory that cannot be created (a file is in the way).
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let (ok, _, err) = output(
        cmd(dir.path())
            .args(["config", "init", "--config"])
            .arg(dir.path().join("file/c.toml")),
    );
    assert!(!ok);
    assert!(err.contains("cannot create"), "{err}");
    assert_eq!(count(&err, "(os error"), 1, "{err}");
    // A file that is not a usage database (rusqlite's error repeats its own text in its source).
    let not_db = dir.path().join("not.db");
    std::fs::write(&not_db, [b'x'; 4096]).unwrap();
    let (ok, _, err) = output(cmd(dir.path()).args(["usage", "--db"]).arg(&not_db));
    assert!(!ok);
    assert!(err.contains("not.db"), "{err}");
    assert_eq!(count(&err, "not a database"), 1, "{err}");
    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (ok, _, err) = output(cmd(dir.path()).args([
        "serve",
        "--upstream-url",
        "sim",
        "--no-usage",
        "--port",
        &port,
    ]));
    assert!(!ok);
    assert!(err.contains("cannot listen on"), "{err}");
    assert_eq!(count(&err, "(os error"), 1, "{err}");
}

fn help(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = output(cmd(dir).args(args).arg("--help"));
    assert!(ok, "{args:?}: {err}");
    out
}

#[test]
fn subcommand_help_shows_its_own_options_and_resolved_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config/ccproxy/config.toml");
    let usage_db = dir.path().join("data/ccproxy/usage.db");
    let cases: &[(&[&str], &[&str], &[&str])] = &[
        (
            &["usage"],
            &["--config", "--since", "--by", "--format", "--db"],
            &[
                "--credentials-file",
                "--oauth-token-url",
                "--host",
                "--port",
            ],
        ),
        (
            &["config", "init"],
            &["--config", "--force"],
            &["--credentials-file", "--oauth-token-url", "--host"],
        ),
        (
            &["auth", "logout"],
            &["--config", "--credentials-file"],
            &["--oauth-token-url", "--host"],
        ),
        (
            &["auth", "status"],
            &["--config", "--credentials-file", "--oauth-token-url"],
            &["--host", "--no-browser"],
        ),
        (
            &["auth", "login"],
            &["--no-browser", "--oauth-token-url", "--credentials-file"],
            &["--host", "--port"],
        ),
        (
            &["serve"],
            &["--config", "--credentials-file", "--host", "--usage-db"],
            &["--force", "--since"],
        ),
        (
            &["sim"],
            &["--port", "--record"],
            &["--config", "--credentials-file"],
        ),
    ];
    for (args, present, absent) in cases {
        let out = help(dir.path(), args);
        for opt in *present {
            assert!(
                out.contains(&format!("{opt} ")) || out.contains(&format!("{opt}\n")),
                "{args:?} lacks {opt}:\n{out}"
            );
        }
        for opt in *absent {
            assert!(!out.contains(opt), "{args:?} shows {opt}:\n{out}");
        }
        assert!(!out.contains("$XDG"), "{args:?}:\n{out}");
        if present.contains(&"--config") {
            assert!(out.contains(config.to_str().unwrap()), "{args:?}:\n{out}");
        }
    }
    for args in [&["serve"][..], &["usage"][..]] {
        let out = help(dir.path(), args);
        assert!(out.contains(usage_db.to_str().unwrap()), "{args:?}:\n{out}");
    }
    // The options still work where they are accepted (before or after the auth action).
    let (_, out, err) = output(cmd(dir.path()).args([
        "auth",
        "--credentials-file",
        "/nonexistent/c.json",
        "status",
    ]));
    assert!(
        format!("{out}{err}").contains("/nonexistent/c.json"),
        "{out}{err}"
    );
}

/// Starts `ccproxy serve` with `args` and returns its log once the startup line is in it.
fn startup_log(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let port = free_port();
    let mut c = cmd(dir);
    c.args(["serve", "--port", &port.to_string()]).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut proc = spawn(c, dir, &format!("serve-{port}"));
    wait_port(port, &mut proc);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proc.logs().contains("ccproxy listening") {
        assert!(
            Instant::now() < deadline,
            "no startup line: {}",
            proc.logs()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    // A warning, when there is one, is written right after the startup line.
    std::thread::sleep(Duration::from_millis(200));
    proc.logs()
}

fn startup_line(logs: &str) -> &str {
    logs.lines()
        .find(|l| l.contains("ccproxy listening"))
        .unwrap_or_default()
}

#[test]
fn startup_line_names_upstream_usage_and_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    let token = "startup-line-proxy-token-5678";
    let logs = startup_log(
        dir.path(),
        &["--upstream-url", "sim", "--auth-token", token],
        &[],
    );
    let line = startup_line(&logs);
    assert!(line.contains("upstream: SIMULATED"), "{line}");
    // Simulated traffic has its own database.
    let db = dir.path().join("data/ccproxy/usage-sim.db");
    assert!(
        line.contains(&format!("usage: recorded in {}", db.display())),
        "{line}"
    );
    assert!(
        line.contains("/dashboard?token=<your proxy token>"),
        "{line}"
    );
    assert!(!logs.contains(token), "the proxy token was logged");
    assert!(
        !logs.contains("upstream credential"),
        "sim needs no credential: {logs}"
    );

    let logs = startup_log(dir.path(), &["--upstream-url", "sim", "--no-usage"], &[]);
    let line = startup_line(&logs);
    assert!(
        line.contains("usage: not recorded (usage recording is off)"),
        "{line}"
    );
    assert!(
        line.contains("/dashboard") && !line.contains("?token="),
        "{line}"
    );

    // A database that cannot be opened: said so, with its path.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let db = blocker.join("usage.db");
    let logs = startup_log(
        dir.path(),
        &["--upstream-url", "sim", "--usage-db", db.to_str().unwrap()],
        &[],
    );
    let line = startup_line(&logs);
    assert!(
        line.contains(&format!(
            "usage: not recorded ({} cannot be used",
            db.display()
        )),
        "{line}"
    );
}

#[test]
fn startup_warns_when_there_is_no_credential_at_all() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: the upstream is never contacted.
    let logs = startup_log(
        dir.path(),
        &["--upstream-url", "http://127.0.0.1:9", "--no-usage"],
        &[],
    );
    let line = startup_line(&logs);
    assert!(line.contains("upstream: http://127.0.0.1:9"), "{line}");
    let warning = logs
        .lines()
        .find(|l| l.contains("upstream credential"))
        .unwrap_or_else(|| panic!("no warning: {logs}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("x-api-key") && warning.contains("ccproxy auth login"),
        "{warning}"
    );

    // With a server API key there is nothing to warn about.
    let key = "sk-ant-api03-startup-warning-key-0000";
    let logs = startup_log(
        dir.path(),
        &["--upstream-url", "http://127.0.0.1:9", "--no-usage"],
        &[("ANTHROPIC_API_KEY", key)],
    );
    assert!(!logs.contains("upstream credential"), "{logs}");
    assert!(!logs.contains(key), "the API key was logged");
}
