//! The built binary against PostgreSQL: `ccproxy db migrate`, `ccproxy db import --from
//! sqlite://PATH` (twice: nothing is copied twice), then `ccproxy usage` and `ccproxy keys list`
//! reading the configured store.

use ccproxy::keys::Limits;
use ccproxy::keys::store::KeyDb;
use ccproxy::observability::usage::UsageStore;
use ccproxy::observability::{Tokens, UsageRecord};
use serde_json::Value;

use super::Cluster;
use crate::support;

fn record(i: i64) -> UsageRecord {
    UsageRecord {
        ts_ms: 1_740_000_000_000 + i,
        request_id: format!("req_{i:04}"),
        mode: "full".into(),
        dialect: "anthropic".into(),
        model: Some("claude-sonnet-4-5".into()),
        stream: false,
        status: 200,
        upstream_status: Some(200),
        tokens: Tokens {
            input: 10,
            output: 20,
            cache_read: 0,
            cache_write: 0,
            ..Tokens::default()
        },
        cost_usd: Some(0.25),
        duration_ms: 100.0,
        ttft_ms: Some(90.0),
        proxy_ms: 0.25,
        abandoned: false,
        error: None,
        credential: Some("server_api_key".into()),
        bucket: Some("api".into()),
        client_key: Some("old-team".into()),
    }
}

fn run(dir: &std::path::Path, url: &str, args: &[&str]) -> (bool, String, String) {
    let out = support::cmd(dir)
        .env("CCPROXY_DATABASE_URL", url)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn db_migrate_then_import_a_sqlite_history_then_usage_and_keys_read_postgres() {
    let pg = Cluster::start();
    let url = pg.url().expose().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(dir.path(), &url, &["db", "migrate"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "schema version 0 → {}",
            ccproxy::db::pg::SCHEMA_VERSION
        )),
        "{out}"
    );
    let (ok, out, _) = run(dir.path(), &url, &["db", "migrate"]);
    assert!(ok && out.contains("up to date"), "{out}");

    // A SQLite history: 40 rows, a key.
    let sqlite = dir.path().join("old.db");
    let mut store = UsageStore::open(&sqlite).unwrap();
    store
        .insert(&(0..40).map(record).collect::<Vec<_>>())
        .unwrap();
    drop(store);
    KeyDb::open(&sqlite)
        .unwrap()
        .create("old-team", &Limits::default(), 1_740_000_000_000)
        .unwrap();

    let from = format!("sqlite://{}", sqlite.display());
    let (ok, out, err) = run(dir.path(), &url, &["db", "import", "--from", &from]);
    assert!(ok, "{err}");
    assert!(
        out.contains("imported 40 usage rows (0 already there), 1 client keys"),
        "{out}"
    );
    let (ok, out, err) = run(dir.path(), &url, &["db", "import", "--from", &from]);
    assert!(ok, "{err}");
    assert!(
        out.contains("imported 0 usage rows (40 already there), 0 client keys"),
        "{out}"
    );

    let (ok, out, err) = run(
        dir.path(),
        &url,
        &["usage", "--since", "all", "--format", "json"],
    );
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["totals"]["requests"], 40, "{report:#}");
    assert!((report["totals"]["cost_usd"].as_f64().unwrap() - 10.0).abs() < 1e-9);
    let (ok, out, err) = run(
        dir.path(),
        &url,
        &["usage", "--since", "all", "--by", "day"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("2025-02-19"), "{out}");

    let (ok, out, err) = run(dir.path(), &url, &["keys", "list", "--format", "json"]);
    assert!(ok, "{err}");
    let keys: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(keys[0]["name"], "old-team");
    assert_eq!(keys[0]["requests"], 0, "this month's requests: {keys:#}");
}
