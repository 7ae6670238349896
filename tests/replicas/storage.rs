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
