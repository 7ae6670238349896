//! The usage store (round trip, migrations, corrupt and locked files, the
//! non-blocking queue), the price table, and the `ccproxy usage` report run
//! through the built binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ccproxy::observability::usage::report::{self, GroupBy, UsageReader};
use ccproxy::observability::usage::store::SCHEMA_VERSION;
use ccproxy::observability::usage::{
    PriceError, PriceOverride, PriceTable, UsageError, UsageStore, UsageWriter,
};
use ccproxy::observability::{Tokens, UsageRecord};

use crate::support::{cmd, free_port, raw_http, raw_request, spawn, wait_port};

fn record(i: i64) -> UsageRecord {
    UsageRecord {
        ts_ms: 1_740_000_000_000 + i,
        request_id: format!("req_{i:04}"),
        mode: "full".into(),
        dialect: "anthropic".into(),
        model: Some("claude-sonnet-4-5-20250929".into()),
        stream: false,
        status: 200,
        upstream_status: Some(200),
        tokens: Tokens {
            input: 10,
            output: 20,
            cache_read: 0,
            cache_write: 0,
            cache_write_1h: 0,
            fast: false,
            batch: false,
        },
        cost_usd: Some(0.000_33),
        duration_ms: 100.0,
        ttft_ms: Some(90.0),
        proxy_ms: 0.25,
        abandoned: false,
        error: None,
        credential: Some("server_api_key".into()),
        bucket: Some("api".into()),
        client_key: None,
    }
}

fn count_rows(path: &Path) -> usize {
    UsageReader::open(path)
        .unwrap()
        .expect("database exists")
        .recent(None, 1_000_000)
        .unwrap()
        .len()
}

fn open_writer(path: &Path, capacity: usize) -> UsageWriter {
    UsageStore::open(path)
        .expect("store opens")
        .spawn_writer(capacity)
}

#[test]
fn round_trip_keeps_every_field() {
    let dir = tempfile::tempdir().unwrap();
    // Parent directories are created.
    let path = dir.path().join("nested/data/usage.db");
    let writer = open_writer(&path, 16);

    let full = UsageRecord {
        ts_ms: 1_740_000_123_456,
        request_id: "req_0123456789abcdef".into(),
        mode: "minimal".into(),
        dialect: "openai".into(),
        model: Some("claude-opus-4-5-20251101".into()),
        stream: true,
        status: 200,
        upstream_status: Some(200),
        tokens: Tokens {
            input: 1234,
            output: 5678,
            cache_read: 91_011,
            cache_write: 1213,
            cache_write_1h: 0,
            fast: false,
            batch: false,
        },
        cost_usd: Some(0.123_456_789),
        duration_ms: 4321.125,
        ttft_ms: Some(321.5),
        proxy_ms: 0.0625,
        abandoned: true,
        error: Some("client disconnected; line 2 \"quoted\" ünïcode".into()),
        credential: Some("server_oauth".into()),
        bucket: Some("plan".into()),
        client_key: None,
    };
    let sparse = UsageRecord {
        ts_ms: 1_740_000_200_000,
        request_id: "req_sparse".into(),
        mode: "passthrough".into(),
        dialect: "anthropic".into(),
        model: None,
        stream: false,
        status: 502,
        upstream_status: None,
        tokens: Tokens::default(),
        cost_usd: None,
        duration_ms: 12.0,
        ttft_ms: None,
        proxy_ms: 0.5,
        abandoned: false,
        error: None,
        credential: None,
        bucket: None,
        client_key: None,
    };
    writer.record(full.clone());
    writer.record(sparse.clone());
    writer.flush();
    assert_eq!(writer.dropped(), 0);

    let reader = UsageReader::open(&path).unwrap().expect("exists");
    let got = reader.recent(None, 10).unwrap();
    // Newest first.
    assert_eq!(got, vec![sparse, full]);
}

#[test]
fn migrations_are_versioned_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let mut store = UsageStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    store.insert(&[record(1), record(2)]).unwrap();
    drop(store);

    // Opening again applies nothing and keeps the data.
    let store = UsageStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    drop(store);
    let store = UsageStore::open(&path).unwrap();
    drop(store);
    assert_eq!(count_rows(&path), 2);

    // WAL mode was set.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn one_batch_of_many_rows_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let mut store = UsageStore::open(&path).unwrap();
    // 19 rows: written as two statements of eight rows and three of one.
    let rows: Vec<UsageRecord> = (0..19)
        .map(|i| {
            let mut r = record(i);
            r.tokens.input = 100 + i as u64;
            r.status = if i % 5 == 0 { 429 } else { 200 };
            r.client_key = (i % 3 == 0).then(|| format!("team-{}", i % 2));
            r.error = (i % 7 == 0).then(|| format!("error of row {i}"));
            r.ttft_ms = (i % 4 != 0).then_some(i as f64);
            r
        })
        .collect();
    store.insert(&rows).unwrap();
    drop(store);
    let got = UsageReader::open(&path)
        .unwrap()
        .expect("exists")
        .recent(None, 100)
        .unwrap();
    let mut want = rows;
    want.reverse();
    assert_eq!(got, want);
}

fn assert_partial_key_index(conn: &rusqlite::Connection) {
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE name = 'requests_client_key'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.contains("WHERE client_key IS NOT NULL"), "{sql}");
}

#[test]
fn the_client_key_index_holds_only_keyed_rows_and_serves_key_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    drop(UsageStore::open(&path).unwrap());
    // A database from an earlier build: the index over every row.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP INDEX requests_client_key;
         CREATE INDEX requests_client_key ON requests (client_key, ts_ms);",
    )
    .unwrap();
    drop(conn);
    let mut store = UsageStore::open(&path).unwrap();
    // Not a versioned migration: the version an earlier build knows is kept.
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let mut keyed = record(2);
    keyed.client_key = Some("team-a".into());
    store.insert(&[record(1), keyed]).unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_partial_key_index(&conn);
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT SUM(input_tokens) FROM requests
             WHERE client_key = ?1 AND ts_ms >= ?2",
        )
        .unwrap()
        .query_map(rusqlite::params!["team-a", 0], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|p| p.contains("requests_client_key")),
        "{plan:?}"
    );
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM requests INDEXED BY requests_client_key
             WHERE client_key IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);

    // An index removed by hand comes back (partial) at the next start; a start with the
    // partial index in place changes nothing.
    conn.execute_batch("DROP INDEX requests_client_key;")
        .unwrap();
    drop(conn);
    drop(UsageStore::open(&path).unwrap());
    drop(UsageStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_partial_key_index(&conn);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    drop(UsageStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 7)
        .unwrap();
    drop(conn);
    let err = UsageStore::open(&path).unwrap_err();
    assert!(matches!(err, UsageError::TooNew { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn a_corrupt_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let garbage: Vec<u8> = (0..16_384u32).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&path, garbage).unwrap();

    let err = UsageStore::open(&path).expect_err("garbage is not a database");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");

    // The report side says the same instead of panicking.
    let err = report::query(&path, None, GroupBy::Model).expect_err("corrupt");
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn a_locked_database_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    // Another process holds an exclusive lock on a (rollback-journal) database.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
        .unwrap();
    let t0 = Instant::now();
    let err = UsageStore::open(&path).expect_err("locked");
    let waited = t0.elapsed();
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("locked"), "{msg}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    drop(other);
    // Once released, it opens.
    UsageStore::open(&path).expect("opens after the lock is gone");
}

#[test]
fn a_full_queue_drops_without_blocking() {
    const CAPACITY: usize = 64;
    const EXTRA: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let writer = open_writer(&path, CAPACITY);
    writer.set_stalled(true);

    let mut slowest = Duration::ZERO;
    let t0 = Instant::now();
    for i in 0..(CAPACITY + EXTRA) {
        let t = Instant::now();
        writer.record(record(i as i64));
        slowest = slowest.max(t.elapsed());
    }
    let total = t0.elapsed();
    assert!(
        total < Duration::from_millis(50),
        "record() blocked: {total:?} in total, slowest call {slowest:?}"
    );
    assert_eq!(writer.dropped(), EXTRA as u64);
    // Nothing is written while stalled, and a bounded flush gives up.
    assert!(!writer.flush_timeout(Duration::from_millis(50)));

    writer.set_stalled(false);
    writer.flush();
    assert_eq!(count_rows(&path), CAPACITY);
    assert_eq!(writer.dropped(), EXTRA as u64);
}

#[test]
fn writer_batches_many_rows_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let writer = open_writer(&path, 100_000);
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let w = writer.clone();
            s.spawn(move || {
                for i in 0..1500 {
                    w.record(record(t * 10_000 + i));
                }
            });
        }
    });
    assert!(writer.flush_timeout(Duration::from_secs(30)));
    assert_eq!(writer.dropped(), 0);
    assert_eq!(count_rows(&path), 6000);
}

#[test]
fn dropping_every_writer_still_writes_what_was_queued() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let writer = open_writer(&path, 1000);
    for i in 0..100 {
        writer.record(record(i));
    }
    drop(writer);
    // The writer thread drains and exits on its own; wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_rows(&path) < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count_rows(&path), 100);
}

// ---- prices ----

fn tokens(input: u64, output: u64, cache_write: u64, cache_read: u64) -> Tokens {
    Tokens {
        input,
        output,
        cache_read,
        cache_write,
        cache_write_1h: 0,
        fast: false,
        batch: false,
    }
}

fn approx(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[test]
fn built_in_prices_by_family() {
    let t = PriceTable::built_in();
    // 50k of each (a 150k prompt, under the long-context threshold), scaled to a million.
    let m = tokens(50_000, 50_000, 50_000, 50_000);
    let cases = [
        ("claude-opus-4-5-20251101", 5.0 + 25.0 + 6.25 + 0.50),
        ("claude-opus-4-5", 5.0 + 25.0 + 6.25 + 0.50),
        ("claude-opus-4-1-20250805", 15.0 + 75.0 + 18.75 + 1.50),
        ("claude-opus-4-20250514", 15.0 + 75.0 + 18.75 + 1.50),
        ("claude-sonnet-4-5-20250929", 3.0 + 15.0 + 3.75 + 0.30),
        ("claude-sonnet-4-20250514", 3.0 + 15.0 + 3.75 + 0.30),
        ("claude-3-7-sonnet-20250219", 3.0 + 15.0 + 3.75 + 0.30),
        ("claude-3-5-sonnet-latest", 3.0 + 15.0 + 3.75 + 0.30),
        ("claude-haiku-4-5-20251001", 1.0 + 5.0 + 1.25 + 0.10),
        ("claude-3-5-haiku-20241022", 0.80 + 4.0 + 1.0 + 0.08),
        ("claude-3-haiku-20240307", 0.25 + 1.25 + 0.30 + 0.03),
        ("Claude-Sonnet-4-5", 3.0 + 15.0 + 3.75 + 0.30),
    ];
    for (model, want) in cases {
        assert!(
            approx(t.cost(model, &m).map(|c| c * 20.0), want),
            "{model}: {:?}",
            t.cost(model, &m).map(|c| c * 20.0)
        );
    }
    // Each kind at its own price.
    let sonnet = "claude-sonnet-4-5";
    assert!(approx(t.cost(sonnet, &tokens(1000, 0, 0, 0)), 0.003));
    assert!(approx(t.cost(sonnet, &tokens(0, 1000, 0, 0)), 0.015));
    assert!(approx(t.cost(sonnet, &tokens(0, 0, 1000, 0)), 0.003_75));
    assert!(approx(t.cost(sonnet, &tokens(0, 0, 0, 1000)), 0.000_3));
    assert!(approx(t.cost(sonnet, &Tokens::default()), 0.0));
    // Unknown models have unknown cost.
    for unknown in ["gpt-4o", "claude-2.1", "claude-opus-40", "", "opus"] {
        assert_eq!(t.cost(unknown, &m).map(|c| c * 20.0), None, "{unknown}");
    }
}

#[test]
fn price_overrides_from_the_config_file() {
    let text = r#"
        [prices."claude-sonnet-4-5"]
        input = 2.0
        [prices."claude-opus-4"]
        input = 10
        output = 50
        cache_write = 12.5
        cache_read = 1
        [prices."my-custom-model"]
        input = 1.0
        output = 2.0
    "#;
    #[derive(serde::Deserialize)]
    struct File {
        prices: BTreeMap<String, PriceOverride>,
    }
    let file: File = toml::from_str(text).unwrap();
    let t = PriceTable::with_overrides(&file.prices).unwrap();
    // 50k of each (a 150k prompt, under the long-context threshold), scaled to a million.
    let m = tokens(50_000, 50_000, 50_000, 50_000);
    // A new, longer prefix inherits the fields it leaves out from sonnet-4.
    assert!(approx(
        t.cost("claude-sonnet-4-5-20250929", &m).map(|c| c * 20.0),
        2.0 + 15.0 + 3.75 + 0.30
    ));
    // sonnet-4 itself is unchanged.
    assert!(approx(
        t.cost("claude-sonnet-4-20250514", &m).map(|c| c * 20.0),
        3.0 + 15.0 + 3.75 + 0.30
    ));
    // A full replacement; opus-4-5 keeps its own longer entry.
    assert!(approx(
        t.cost("claude-opus-4-20250514", &m).map(|c| c * 20.0),
        10.0 + 50.0 + 12.5 + 1.0
    ));
    assert!(approx(
        t.cost("claude-opus-4-5", &m).map(|c| c * 20.0),
        5.0 + 25.0 + 6.25 + 0.50
    ));
    // A new family: cache prices default to 1.25x and 0.1x input.
    assert!(approx(
        t.cost("my-custom-model-v2", &m).map(|c| c * 20.0),
        1.0 + 2.0 + 1.25 + 0.1
    ));

    let bad: File = toml::from_str("[prices.\"new-model\"]\ninput = 1.0\n").unwrap();
    assert_eq!(
        PriceTable::with_overrides(&bad.prices),
        Err(PriceError::Incomplete {
            prefix: "new-model".into()
        })
    );
    let neg: File = toml::from_str("[prices.\"claude-3-haiku\"]\noutput = -1\n").unwrap();
    assert!(matches!(
        PriceTable::with_overrides(&neg.prices),
        Err(PriceError::Invalid {
            field: "output",
            ..
        })
    ));
    assert!(toml::from_str::<File>("[prices.x]\ninputs = 1.0\n").is_err());
}

// ---- report ----

const H: i64 = 3_600_000;
/// 2025-03-01T00:00:00Z
const DAY0: i64 = 1_740_787_200_000;

#[allow(clippy::too_many_arguments)]
fn row(
    id: &str,
    ts_ms: i64,
    model: Option<&str>,
    mode: &str,
    status: u16,
    t: Tokens,
    duration_ms: f64,
    ttft_ms: Option<f64>,
    abandoned: bool,
) -> UsageRecord {
    let prices = PriceTable::built_in();
    UsageRecord {
        ts_ms,
        request_id: id.into(),
        mode: mode.into(),
        dialect: if mode == "minimal" {
            "openai"
        } else {
            "anthropic"
        }
        .into(),
        model: model.map(Into::into),
        stream: ttft_ms.is_some() && duration_ms > 1000.0,
        status,
        upstream_status: Some(status),
        tokens: t,
        cost_usd: model.and_then(|m| prices.cost(m, &t)),
        duration_ms,
        ttft_ms,
        proxy_ms: 0.5,
        abandoned,
        error: (status >= 400).then(|| "overloaded".to_owned()),
        credential: Some("server_api_key".into()),
        bucket: Some("api".into()),
        client_key: None,
    }
}

/// Five requests over two days and three hours (UTC).
fn seed(path: &Path) {
    let sonnet = Some("claude-sonnet-4-5-20250929");
    let rows = [
        row(
            "r1",
            DAY0 + 10 * H + 15 * 60_000,
            sonnet,
            "full",
            200,
            tokens(1000, 500, 100, 2000),
            1200.0,
            Some(300.0),
            false,
        ),
        row(
            "r2",
            DAY0 + 10 * H + 45 * 60_000,
            sonnet,
            "minimal",
            200,
            tokens(2000, 100, 0, 0),
            800.0,
            Some(800.0),
            false,
        ),
        row(
            "r3",
            DAY0 + 11 * H + 5 * 60_000,
            Some("claude-haiku-4-5"),
            "passthrough",
            529,
            tokens(0, 0, 0, 0),
            100.0,
            None,
            false,
        ),
        row(
            "r4",
            DAY0 + 33 * H,
            Some("claude-opus-4-5"),
            "full",
            200,
            tokens(300, 40, 0, 0),
            5000.0,
            Some(400.0),
            true,
        ),
        row(
            "r5",
            DAY0 + 33 * H + 30 * 60_000,
            Some("mystery-model"),
            "full",
            200,
            tokens(10, 10, 0, 0),
            600.0,
            Some(600.0),
            false,
        ),
    ];
    let mut store = UsageStore::open(path).unwrap();
    store.insert(&rows).unwrap();
}

#[test]
fn report_totals_groups_and_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    seed(&path);
    let r = report::query(&path, None, GroupBy::Model).unwrap().unwrap();
    let t = &r.totals;
    assert_eq!(t.requests, 5);
    assert_eq!(t.errors, 1);
    assert_eq!(t.abandoned, 1);
    assert_eq!(t.cost_unknown, 1);
    assert_eq!(t.tokens, tokens(3310, 650, 100, 2000));
    let sonnet =
        (1000.0 * 3.0 + 500.0 * 15.0 + 100.0 * 3.75 + 2000.0 * 0.3 + 2000.0 * 3.0 + 100.0 * 15.0)
            / 1e6;
    let opus = (300.0 * 5.0 + 40.0 * 25.0) / 1e6;
    assert!(
        (t.cost_usd - (sonnet + opus)).abs() < 1e-12,
        "{}",
        t.cost_usd
    );
    // Durations 100, 600, 800, 1200, 5000.
    assert_eq!(t.latency_p50_ms, Some(800.0));
    assert!((t.latency_p95_ms.unwrap() - 4240.0).abs() < 1e-9);
    // TTFTs 300, 400, 600, 800 (r3 has none).
    assert_eq!(t.ttft_p50_ms, Some(500.0));
    assert_eq!(t.proxy_p50_ms, Some(0.5));

    let keys: Vec<(&str, u64)> = r
        .groups
        .iter()
        .map(|g| (g.key.as_str(), g.stats.requests))
        .collect();
    assert_eq!(
        keys,
        [
            ("claude-sonnet-4-5-20250929", 2),
            ("claude-haiku-4-5", 1),
            ("claude-opus-4-5", 1),
            ("mystery-model", 1)
        ]
    );
    let mystery = &r.groups[3].stats;
    assert_eq!((mystery.cost_usd, mystery.cost_unknown), (0.0, 1));

    // Since filters by start time.
    let r = report::query(&path, Some(DAY0 + 24 * H), GroupBy::Mode)
        .unwrap()
        .unwrap();
    assert_eq!(r.totals.requests, 2);
    assert_eq!(r.groups.len(), 1);
    assert_eq!(r.groups[0].key, "full");

    // A database that does not exist is "nothing recorded", not an error.
    assert!(
        report::query(&dir.path().join("none.db"), None, GroupBy::Model)
            .unwrap()
            .is_none()
    );
}

// ---- `ccproxy usage` through the binary ----

fn ccproxy(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ccproxy"))
        .args(args)
        .env("TZ", "UTC")
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("HOME", dir.join("home"))
        .env_remove("CCPROXY_USAGE_DB")
        .env_remove("CCPROXY_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("ccproxy runs")
}

struct Seeded {
    dir: tempfile::TempDir,
    db: PathBuf,
}

fn seeded() -> Seeded {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    seed(&db);
    Seeded { dir, db }
}

fn usage(s: &Seeded, by: &str, format: &str) -> String {
    let db = s.db.display().to_string();
    let out = ccproxy(
        s.dir.path(),
        &[
            "usage", "--db", &db, "--since", "all", "--by", by, "--format", format,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "usage --by {by} --format {format}: {stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

fn group_counts(json: &serde_json::Value) -> Vec<(String, u64)> {
    json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn owned(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

#[test]
fn cli_json_for_each_grouping() {
    let s = seeded();
    let expected: [(&str, Vec<(String, u64)>); 4] = [
        (
            "model",
            owned(&[
                ("claude-sonnet-4-5-20250929", 2),
                ("claude-haiku-4-5", 1),
                ("claude-opus-4-5", 1),
                ("mystery-model", 1),
            ]),
        ),
        ("day", owned(&[("2025-03-01", 3), ("2025-03-02", 2)])),
        (
            "hour",
            owned(&[
                ("2025-03-01 10:00", 2),
                ("2025-03-01 11:00", 1),
                ("2025-03-02 09:00", 2),
            ]),
        ),
        (
            "mode",
            owned(&[("full", 3), ("minimal", 1), ("passthrough", 1)]),
        ),
    ];
    for (by, groups) in expected {
        let out = usage(&s, by, "json");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["by"], by);
        assert_eq!(group_counts(&json), groups, "--by {by}");
        let t = &json["totals"];
        assert_eq!(t["requests"], 5);
        assert_eq!(t["errors"], 1);
        assert_eq!(t["abandoned"], 1);
        assert_eq!(t["cost_unknown"], 1);
        assert_eq!(t["tokens"]["input"], 3310);
        assert_eq!(t["tokens"]["cache_read"], 2000);
        assert_eq!(t["latency_p50_ms"], 800.0);
    }
}

#[test]
fn cli_table_for_each_grouping() {
    let s = seeded();
    for (by, header, keys) in [
        (
            "model",
            "MODEL",
            vec!["claude-sonnet-4-5-20250929", "mystery-model"],
        ),
        ("day", "DAY", vec!["2025-03-01", "2025-03-02"]),
        ("hour", "HOUR", vec!["2025-03-01 10:00", "2025-03-02 09:00"]),
        ("mode", "MODE", vec!["full", "passthrough"]),
    ] {
        let out = usage(&s, by, "table");
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].contains("all time") && lines[0].contains(&format!("by {by}")),
            "{out}"
        );
        let head = lines[1];
        assert!(head.starts_with(header), "{out}");
        for col in [
            "REQUESTS",
            "ERRORS",
            "INPUT",
            "OUTPUT",
            "CACHE READ",
            "CACHE WRITE",
            "COST USD",
            "P50 MS",
            "P95 MS",
        ] {
            assert!(head.contains(col), "{col} missing:\n{out}");
        }
        for key in keys {
            assert!(
                lines.iter().any(|l| l.starts_with(key)),
                "{key} missing:\n{out}"
            );
        }
        let total = lines
            .iter()
            .find(|l| l.starts_with("TOTAL"))
            .expect("TOTAL line");
        // Aligned: the header, every group and the total end at the same column.
        let width = head.chars().count();
        let n_groups = out
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('-'))
            .count();
        for l in lines.iter().skip(2).take(n_groups).chain([total]) {
            assert_eq!(l.chars().count(), width, "misaligned line {l:?}:\n{out}");
        }
        assert!(total.contains(" 5 "), "{out}");
        assert!(out.contains("* cost leaves out 1 request"), "{out}");
        assert!(out.contains("error rate 20.0%"), "{out}");
    }
}

#[test]
fn cli_csv_for_each_grouping() {
    let s = seeded();
    for (by, groups) in [("model", 4), ("day", 2), ("hour", 3), ("mode", 3)] {
        let out = usage(&s, by, "csv");
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with(&format!("{by},requests,errors,abandoned,")),
            "{out}"
        );
        assert_eq!(lines.len(), 1 + groups + 1, "{out}");
        let cols = lines[0].split(',').count();
        for l in &lines {
            assert_eq!(l.split(',').count(), cols, "{l}");
        }
        let total: Vec<&str> = lines.last().unwrap().split(',').collect();
        assert_eq!(&total[..4], ["TOTAL", "5", "1", "1"]);
    }
}

#[test]
fn cli_since_filters_and_rejects_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut old = record(1);
    old.ts_ms = now - 3 * 24 * H;
    let mut recent = record(2);
    recent.ts_ms = now - 2 * H;
    UsageStore::open(&db)
        .unwrap()
        .insert(&[old, recent])
        .unwrap();
    let dbs = db.display().to_string();
    for (since, n) in [("30m", 0), ("24h", 1), ("7d", 2), ("4w", 2), ("all", 2)] {
        let out = ccproxy(
            dir.path(),
            &["usage", "--db", &dbs, "--since", since, "--format", "json"],
        );
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["totals"]["requests"], n, "--since {since}");
    }
    // The default is the last 24 hours, as a table.
    let out = ccproxy(dir.path(), &["usage", "--db", &dbs]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("last 24h"), "{text}");

    let out = ccproxy(dir.path(), &["usage", "--db", &dbs, "--since", "yesterday"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid --since value \"yesterday\""), "{err}");
}

#[test]
fn cli_without_a_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nothing-here.db");
    let dbs = db.display().to_string();
    let out = ccproxy(dir.path(), &["usage", "--db", &dbs]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("no usage recorded yet at {dbs}")),
        "{text}"
    );
    assert!(!db.exists(), "the report must not create the database");

    // JSON stays parseable.
    let out = ccproxy(dir.path(), &["usage", "--db", &dbs, "--format", "json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["totals"]["requests"], 0);

    // The default database is under $XDG_DATA_HOME/ccproxy.
    let out = ccproxy(dir.path(), &["usage"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = dir.path().join("data/ccproxy/usage.db");
    assert!(text.contains(&expected.display().to_string()), "{text}");
}

#[test]
fn cli_reports_a_corrupt_database_as_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    std::fs::write(&db, vec![0xAB; 8192]).unwrap();
    let dbs = db.display().to_string();
    let out = ccproxy(dir.path(), &["usage", "--db", &dbs]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&dbs), "{err}");
}

/// A model name that sets the terminal's title and colour, among other
/// control characters (C0, DEL, C1).
const EVIL_MODEL: &str = "evil\u{1b}]0;pwned\u{7}\u{1b}[31mred\u{7f}\u{9b}2J\r\nx";

/// No control character but the line ends: nothing can drive a terminal.
fn assert_no_control(out: &str) {
    let bad: Vec<char> = out
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(bad.is_empty(), "control characters {bad:?} in:\n{out}");
}

/// Rows for the footnote: one request of an unpriced model with tokens (the only
/// one to count), a model listing, failures with and without a model, and a priced one.
fn seed_footnote(path: &Path) {
    let t = tokens(10, 5, 0, 0);
    let none = tokens(0, 0, 0, 0);
    let rows = [
        row(
            "u1",
            DAY0,
            Some(EVIL_MODEL),
            "full",
            200,
            t,
            100.0,
            None,
            false,
        ),
        row(
            "l1",
            DAY0 + 1,
            None,
            "passthrough",
            200,
            none,
            5.0,
            None,
            false,
        ),
        row(
            "f1",
            DAY0 + 2,
            Some("mystery-model"),
            "full",
            529,
            none,
            50.0,
            None,
            false,
        ),
        row("f2", DAY0 + 3, None, "full", 401, none, 1.0, None, false),
        row(
            "p1",
            DAY0 + 4,
            Some("claude-sonnet-4-5"),
            "full",
            200,
            t,
            100.0,
            None,
            false,
        ),
    ];
    assert!(rows[0].cost_usd.is_none() && rows[2].cost_usd.is_none());
    UsageStore::open(path).unwrap().insert(&rows).unwrap();
}

/// `ccproxy usage` escapes control characters of client-chosen strings in the
/// table and the CSV (JSON is escaped by serde and keeps the name as it was).
#[test]
fn usage_escapes_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    seed_footnote(&db);
    let s = Seeded { dir, db };
    let escaped = r"evil\u{1b}]0;pwned\u{7}\u{1b}[31mred\u{7f}\u{9b}2J\u{d}\u{a}x";
    for format in ["table", "csv"] {
        let out = usage(&s, "model", format);
        assert_no_control(&out);
        assert!(out.contains(escaped), "{format}:\n{out}");
    }
    let json: serde_json::Value = serde_json::from_str(&usage(&s, "model", "json")).unwrap();
    assert!(
        json["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["key"] == EVIL_MODEL),
        "{json:#}"
    );
}

/// The footnote counts only requests with a model and tokens but no price:
/// not model listings, not failed requests.
#[test]
fn usage_footnote_counts_only_unpriced_requests_with_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    seed_footnote(&db);
    let s = Seeded { dir, db };
    let table = usage(&s, "mode", "table");
    assert!(
        table.contains("* cost leaves out 1 request(s) whose model has no known price"),
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&usage(&s, "model", "json")).unwrap();
    assert_eq!(json["totals"]["requests"], 5);
    assert_eq!(json["totals"]["cost_unknown"], 1, "{json:#}");
    let csv = usage(&s, "model", "csv");
    let total = csv.lines().find(|l| l.starts_with("TOTAL,")).unwrap();
    assert_eq!(total.split(',').nth(10), Some("1"), "{csv}");
}

// ---- simulated traffic stays out of the real database ----

fn config_show(dir: &Path, args: &[&str]) -> String {
    let out = cmd(dir)
        .args(["config", "show"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn shows_usage_db(show: &str, path: &Path) -> bool {
    show.lines().any(|l| {
        l.starts_with("usage_db ") && l.ends_with(&format!("= {:?}", path.display().to_string()))
    })
}

fn health(port: u16) -> serde_json::Value {
    let addr = format!("127.0.0.1:{port}");
    let r = raw_http(
        &addr,
        &raw_request("GET", "/health", &addr, &[], b""),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// With `--upstream-url sim` the default usage database is `usage-sim.db` beside
/// `usage.db` (an explicit `usage_db` still wins); `config show` and `/health`
/// show it, and the simulated requests never reach the real database.
#[test]
fn simulated_traffic_goes_to_its_own_database() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data/ccproxy");
    let (real, sim) = (data.join("usage.db"), data.join("usage-sim.db"));

    let show = config_show(dir, &["--upstream-url", "sim"]);
    assert!(shows_usage_db(&show, &sim), "{show}");
    let show = config_show(dir, &[]);
    assert!(shows_usage_db(&show, &real), "{show}");
    let flag = dir.join("flag.db");
    let show = config_show(
        dir,
        &[
            "--upstream-url",
            "sim",
            "--usage-db",
            flag.to_str().unwrap(),
        ],
    );
    assert!(shows_usage_db(&show, &flag), "{show}");
    let file = dir.join("c.toml");
    let from_file = dir.join("file.db");
    std::fs::write(
        &file,
        format!(
            "upstream_url = \"sim\"\nusage_db = {:?}\n",
            from_file.display().to_string()
        ),
    )
    .unwrap();
    let show = config_show(dir, &["--config", file.to_str().unwrap()]);
    assert!(shows_usage_db(&show, &from_file), "{show}");

    let port = free_port();
    let mut c = cmd(dir);
    c.args([
        "serve",
        "--upstream-url",
        "sim",
        "--port",
        &port.to_string(),
    ]);
    let mut proc = spawn(c, dir, "serve");
    wait_port(port, &mut proc);
    let addr = format!("127.0.0.1:{port}");
    let body = br#"{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = raw_http(
        &addr,
        &raw_request(
            "POST",
            "/v1/messages",
            &addr,
            &[
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
            ],
            body,
        ),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = health(port);
        if h["usage"]["rows_written"] == 1 {
            break h;
        }
        assert!(Instant::now() < deadline, "{h:#}\n{}", proc.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(h["usage"]["path"], sim.display().to_string(), "{h:#}");
    assert_eq!(h["usage"]["healthy"], true, "{h:#}");
    proc.signal("TERM");
    assert!(
        proc.wait_exit(Duration::from_secs(20)).is_some(),
        "{}",
        proc.logs()
    );

    assert!(
        !real.exists(),
        "simulated traffic reached the real database"
    );
    let out = ccproxy(dir, &["usage", "--since", "all"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no usage recorded yet"), "{text}");
    let sim_db = sim.display().to_string();
    let out = ccproxy(
        dir,
        &[
            "usage", "--since", "all", "--db", &sim_db, "--format", "json",
        ],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["totals"]["requests"], 1, "{json:#}");
}
