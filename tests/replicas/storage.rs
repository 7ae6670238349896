//! One storage suite, run against both backends: the response store's `Backend` and the
//! client keys' table (`KeyDb`).

use std::sync::Arc;

use ccproxy::db::Link;
use ccproxy::keys::store::KeyDb;
use ccproxy::keys::{Budget, Limits, Period};
use ccproxy::response_store::{Backend, StoredResponse};

use super::Cluster;

fn row(id: &str, expires_at_ms: i64) -> StoredResponse {
    StoredResponse {
        id: id.into(),
        created_at: 7,
        expires_at_ms,
        input_items: r#"[{"id":"msg_1"}]"#.into(),
        response: r#"{"id":"x"}"#.into(),
    }
}

fn responses_suite(b: &dyn Backend) {
    b.put(&row("resp_a", 1_000)).unwrap();
    b.put(&row("resp_b", 10)).unwrap();
    assert_eq!(b.get("resp_a", 500).unwrap(), Some(row("resp_a", 1_000)));
    assert_eq!(b.get("resp_b", 500).unwrap(), None, "expired");
    assert_eq!(b.get("resp_c", 0).unwrap(), None);
    assert!(!b.delete("resp_b", 500).unwrap(), "expired counts as gone");
    b.put(&row("resp_b", 10)).unwrap();
    assert_eq!(b.prune(500).unwrap(), 1);
    // A put replaces.
    let mut changed = row("resp_a", 2_000);
    changed.response = r#"{"id":"y"}"#.into();
    b.put(&changed).unwrap();
    assert_eq!(b.get("resp_a", 1_500).unwrap(), Some(changed));
    assert!(b.delete("resp_a", 500).unwrap());
    assert!(!b.delete("resp_a", 500).unwrap());
}

fn keys_suite(db: &mut KeyDb) {
    let now = 1_700_000_000_000;
    let limits = Limits {
        models: vec!["claude-haiku-*".into()],
        rpm: Some(5),
        budget: Some(Budget {
            usd: 2.5,
            period: Period::Week,
        }),
        ..Limits::default()
    };
    let secret = db.create("team-a", &limits, now).unwrap();
    assert!(secret.starts_with("ccp-"));
    assert!(db.create("team-a", &limits, now).is_err(), "exists");
    let all = db.all().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].limits, limits);
    assert_eq!(
        all[0].digest,
        ccproxy::keys::digest(&secret),
        "only the digest is kept"
    );
    let rotated = db.rotate("team-a").unwrap();
    assert_ne!(rotated, secret);
    assert_eq!(db.all().unwrap()[0].digest, ccproxy::keys::digest(&rotated));
    db.revoke("team-a", now + 1).unwrap();
    assert_eq!(db.all().unwrap()[0].revoked_at_ms, Some(now + 1));
    assert!(db.rotate("team-a").is_err(), "revoked");
    assert!(db.revoke("nobody", now).is_err());
    let listed = db.list(now + 2).unwrap();
    assert_eq!(listed[0].status, "revoked");
    assert_eq!(listed[0].spend_usd, 0.0);
    // A revoked name may be used again.
    db.create("team-a", &Limits::default(), now + 3).unwrap();
    assert_eq!(db.all().unwrap()[0].revoked_at_ms, None);
}

#[test]
fn sqlite_backend_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let b = ccproxy::response_store::sqlite::SqliteBackend::open(&path).unwrap();
    responses_suite(&b);
    keys_suite(&mut KeyDb::open(&path).unwrap());
}

#[test]
fn postgres_backend_passes_the_storage_suite() {
    let pg = Cluster::start();
    let link = Arc::new(Link::default());
    let b = ccproxy::response_store::pg::PgBackend::new(&pg.url(), link.clone());
    responses_suite(&b);
    let mut db = KeyDb::open_db(&ccproxy::db::Database::Postgres(pg.url()), &link).unwrap();
    keys_suite(&mut db);
    // Migrations are versioned and run once.
    let mut c = pg.client();
    let (from, to) = ccproxy::db::pg::migrate(&mut c, &pg.url()).unwrap();
    assert_eq!(
        (from, to),
        (
            ccproxy::db::pg::SCHEMA_VERSION,
            ccproxy::db::pg::SCHEMA_VERSION
        )
    );
}

/// Usage rows in PostgreSQL, as a replica's writer thread writes them: a batch is one
/// statement and every field reads back as written (a NUL, which PostgreSQL's text cannot
/// hold, is replaced instead of failing the batch); the statement prepared on a connection that
/// is gone (the database restarted) is prepared again on the next one, and no row is lost.
#[test]
fn usage_rows_go_in_a_batch_per_statement_and_after_a_database_restart() {
    use ccproxy::observability::usage::pg::insert_prepared;
    use ccproxy::observability::{Tokens, UsageRecord};
    let mut pg = Cluster::start();
    let url = pg.url();
    let rec = |i: i64| UsageRecord {
        ts_ms: 1_790_000_000_000 + i,
        request_id: format!("req_{i:03}"),
        mode: ["full", "minimal", "passthrough"][i as usize % 3].into(),
        dialect: if i % 2 == 0 { "anthropic" } else { "openai" }.into(),
        model: (i % 5 != 0).then(|| format!("claude-sonnet-4-{i}")),
        stream: i % 2 == 1,
        status: if i % 7 == 0 { 429 } else { 200 },
        upstream_status: (i % 11 != 0).then_some(200),
        tokens: Tokens {
            input: 1000 + i as u64,
            output: 2 * i as u64,
            cache_read: 3 * i as u64,
            cache_write: 4 * i as u64,
            ..Tokens::default()
        },
        cost_usd: (i % 5 != 0).then_some(i as f64 / 1000.0),
        duration_ms: 100.0 + i as f64,
        ttft_ms: (i % 2 == 1).then_some(50.0 + i as f64),
        proxy_ms: 0.25,
        abandoned: i % 13 == 0,
        error: (i % 7 == 0).then(|| "rate_limit_error: slow down".to_owned()),
        credential: Some(format!("cred-{}", i % 3)),
        bucket: Some(if i % 2 == 0 { "api" } else { "plan" }.into()),
        client_key: (i % 4 == 0).then(|| "team".to_owned()),
    };
    let mut batch: Vec<UsageRecord> = (0..100).map(rec).collect();
    batch[8].model = Some("claude\0evil".into());
    batch[9].error = Some("upstream said \0".into());
    let mut client = ccproxy::db::pg::open(&url).unwrap();
    let mut prepared = None;
    insert_prepared(&mut client, &mut prepared, &batch, "replica-1").unwrap();
    assert!(
        prepared.is_some(),
        "the statement is kept for the next batch"
    );

    // Read back as `ccproxy usage` reads them (newest first).
    let reader = ccproxy::observability::usage::pg::PgReader::open(&url)
        .unwrap()
        .unwrap();
    let mut back = reader.recent(None, None, None).unwrap();
    back.reverse();
    let nul = |s: &Option<String>| s.as_ref().map(|s| s.replace('\0', "\u{FFFD}"));
    let want: Vec<UsageRecord> = batch
        .iter()
        .map(|r| UsageRecord {
            model: nul(&r.model),
            error: nul(&r.error),
            ..r.clone()
        })
        .collect();
    assert_eq!(back, want);
    assert_eq!(back[8].model.as_deref(), Some("claude\u{FFFD}evil"));
    let replicas: Vec<String> = client
        .query("SELECT DISTINCT replica FROM requests", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(replicas, ["replica-1"]);

    // The database restarts: the kept statement belongs to a connection that is gone.
    drop(client);
    pg.stop();
    pg.run();
    let mut client = ccproxy::db::pg::open(&url).unwrap();
    let more: Vec<UsageRecord> = (100..103).map(rec).collect();
    insert_prepared(&mut client, &mut prepared, &more, "replica-1").unwrap();
    insert_prepared(&mut client, &mut prepared, &[], "replica-1").unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM requests", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 103);
}
