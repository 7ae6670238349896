//! The access phase's cost with client keys (issue 13): the check with no key configured
//! (the proxy token only) beside the check of a valid client key among 1 000 (digest,
//! lookup, the key's windows and its concurrency slot), and a refused unknown key.
//!
//! `cargo bench -p ccproxy-bench --bench keys`. Under `cargo test` every benchmark runs
//! once, as a smoke test.

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderValue};
use ccproxy::access::{ProxyToken, check_caller};
use ccproxy::keys::store::KeyDb;
use ccproxy::keys::{ClientKeys, Limits};
use ccproxy::routes::Mode;
use divan::{Bencher, black_box};

fn main() {
    divan::main();
}

const TOKEN: &str = "bench-proxy-token-0123456789";

fn headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "x-api-key",
        HeaderValue::from_str(key).expect("a header value"),
    );
    h
}

/// 1 000 keys (a third with rpm, tpm and concurrency limits) and one of them.
fn thousand() -> &'static (Arc<ClientKeys>, String) {
    static KEYS: OnceLock<(Arc<ClientKeys>, String)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ccproxy-bench-keys-{}", std::process::id()));
        let db = dir.join("usage.db");
        let mut kdb = KeyDb::open(&db).expect("the database opens");
        let now = ccproxy::util::time::now_ms();
        let mut last = String::new();
        for i in 0..1000 {
            let limits = if i % 3 == 0 {
                Limits {
                    rpm: Some(u32::MAX),
                    tpm: Some(u64::MAX),
                    max_concurrent: Some(1_000_000),
                    ..Limits::default()
                }
            } else {
                Limits::default()
            };
            last = kdb
                .create(&format!("key-{i}"), &limits, now)
                .expect("created");
        }
        let keys = ClientKeys::open(Some(db), false);
        let _ = std::fs::remove_dir_all(&dir);
        (keys, last)
    })
}

#[divan::bench]
fn access_without_keys(b: Bencher) {
    let keys = ClientKeys::none();
    let token = ProxyToken::new(TOKEN);
    let h = headers(TOKEN);
    b.bench(|| black_box(check_caller(Some(&token), &keys, Mode::Full, black_box(&h)).is_ok()));
}

#[divan::bench]
fn access_with_1000_keys(b: Bencher) {
    let (keys, key) = thousand();
    let token = ProxyToken::new(TOKEN);
    let h = headers(key);
    b.bench(|| black_box(check_caller(Some(&token), keys, Mode::Full, black_box(&h)).is_ok()));
}

#[divan::bench]
fn access_with_1000_keys_unknown_key(b: Bencher) {
    let (keys, _) = thousand();
    let token = ProxyToken::new(TOKEN);
    let h = headers("ccp-not-one-of-the-thousand-keys-000000000000");
    b.bench(|| black_box(check_caller(Some(&token), keys, Mode::Full, black_box(&h)).is_err()));
}
