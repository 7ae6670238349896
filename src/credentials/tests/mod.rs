//! Tests of the credential lifecycle against a loopback mock token endpoint.

pub(crate) mod mock;

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::manager::Tuning;
use super::store::{self, parse_document};
use super::*;
use mock::{CLIENT_ID, MockTokenServer};

pub(crate) const OLD_ACCESS: &str = "sk-ant-oat01-original-access-token-0123456789abcdefWXYZ";
const OLD_REFRESH: &str = "sk-ant-ort01-original-refresh-token-0123456789abcdef";

pub(crate) fn http() -> reqwest::Client {
    crate::http::client_builder().build().expect("client")
}

fn fast_tuning() -> Tuning {
    Tuning {
        request_timeout: Duration::from_secs(5),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        expired_retry: Duration::from_millis(100),
        bg_min_sleep: Duration::from_millis(20),
        bg_max_sleep: Duration::from_millis(500),
        reread_retries: 1,
        reread_delay: Duration::from_millis(10),
        max_grace: Duration::from_secs(10),
    }
}

pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) cfg: CredentialsConfig,
}

impl Env {
    pub(crate) fn new(token_url: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let cfg = CredentialsConfig {
            credentials_file: None,
            own_store: dir
                .path()
                .join("xdg")
                .join("ccproxy")
                .join("credentials.json"),
            home_dir: Some(home),
            token_url: token_url.to_owned(),
            client_id: CLIENT_ID.to_owned(),
            refresh_skew: Duration::from_secs(300),
            use_keychain: false,
        };
        Self { dir, cfg }
    }

    pub(crate) fn claude_file(&self) -> PathBuf {
        self.cfg.claude_code_files()[0].clone()
    }

    fn manager(&self) -> Arc<OAuthManager> {
        self.manager_with(fast_tuning())
    }

    fn manager_with(&self, tuning: Tuning) -> Arc<OAuthManager> {
        OAuthManager::discover_tuned(self.cfg.clone(), http(), tuning)
            .expect("discover")
            .expect("credentials present")
    }
}

/// A Claude Code style document with unknown keys at both levels.
pub(crate) fn doc(access: &str, refresh: Option<&str>, expires_at_ms: i64) -> Value {
    let mut oauth = json!({
        "accessToken": access,
        "expiresAt": expires_at_ms,
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max",
        "rateLimitTier": "default_claude_max_20x",
    });
    if let Some(r) = refresh {
        oauth["refreshToken"] = json!(r);
    }
    json!({
        "claudeAiOauth": oauth,
        "mcpOAuth": {"server|abc": {"accessToken": "mcp-secret-keep", "expiresAt": 1}},
        "zzOther": [1, 2, 3],
    })
}

pub(crate) fn write_json(path: &Path, v: &Value) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, serde_json::to_vec(v).expect("json")).expect("write");
    set_mode(path, 0o600);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o777
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("valid json")
}

/// Writes the Claude Code file with a token expiring at `expires_at` whose refresh token the mock
/// accepts.
pub(crate) fn setup_claude(env: &Env, mock: &MockTokenServer, expires_at: i64) {
    mock.allow_refresh(OLD_REFRESH);
    write_json(
        &env.claude_file(),
        &doc(OLD_ACCESS, Some(OLD_REFRESH), expires_at),
    );
}

pub(crate) fn secs(n: i64) -> i64 {
    n * 1000
}

// ---------- pure helpers ----------

#[test]
fn masks_secrets() {
    assert_eq!(mask_secret(OLD_ACCESS), "sk-ant-oat01-…WXYZ");
    assert_eq!(mask_secret("sk-ant-oat01-short"), "sk-ant-oat01-…");
    assert_eq!(mask_secret("abc"), "…");
    assert_eq!(mask_secret(""), "…");
    assert_eq!(mask_secret("sk-ant-"), "sk-ant-…");
    assert_eq!(mask_secret("ünïcödé-ünïcödé-ünïcödé-ünïcödé"), "…cödé");
    let t = AccessToken::new(OLD_ACCESS);
    assert!(!format!("{t:?}").contains("original"));
    assert!(!format!("{t}").contains("original"));
    assert_eq!(t, AccessToken::new(OLD_ACCESS));
    assert_ne!(t, AccessToken::new("sk-ant-oat01-other"));
}

#[test]
fn formats_times() {
    assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(format_utc(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
    assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    assert_eq!(format_utc(-1000), "1969-12-31 23:59:59 UTC");
    assert!(format_utc(i64::MAX).contains("ms since the epoch"));
    assert!(format_utc(i64::MIN).contains("ms since the epoch"));
    assert_eq!(format_relative(secs(7 * 3600 + 59 * 60 + 30)), "in 7h 59m");
    assert_eq!(format_relative(-secs(190)), "3m 10s ago");
    assert_eq!(format_relative(secs(3 * 86_400 + 3600)), "in 3d 1h");
    assert_eq!(format_relative(i64::MIN), format_relative(i64::MIN));
}

#[test]
fn default_own_store_follows_xdg() {
    assert_eq!(
        CredentialsConfig::default_own_store(Some(Path::new("/x")), Some(Path::new("/h"))),
        Some(PathBuf::from("/x/ccproxy/credentials.json"))
    );
    assert_eq!(
        CredentialsConfig::default_own_store(Some(Path::new("rel")), Some(Path::new("/h"))),
        Some(PathBuf::from("/h/.config/ccproxy/credentials.json"))
    );
    assert_eq!(CredentialsConfig::default_own_store(None, None), None);
}

#[test]
fn parses_claude_code_documents_tolerantly() {
    let d = parse_document(
        br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":null,"expiresAt":1.7e12,"scopes":"x y","subscriptionType":null}}"#,
    )
    .expect("valid");
    let c = d.creds.expect("creds");
    assert_eq!(c.expires_at_ms, Some(1_700_000_000_000));
    assert!(c.refresh_token.is_none());
    assert_eq!(c.scopes, vec!["x", "y"]);
    assert!(
        parse_document(br#"{"other":1}"#)
            .expect("valid")
            .creds
            .is_none()
    );
    assert!(
        parse_document(br#"{"claudeAiOauth":null}"#)
            .expect("valid")
            .creds
            .is_none()
    );
    for bad in [
        &b""[..],
        b"   ",
        b"{",
        b"[]",
        b"null",
        b"{\"claudeAiOauth\":\"x\"}",
        b"{\"claudeAiOauth\":{}}",
        b"{\"claudeAiOauth\":{\"accessToken\":1}}",
        b"{\"claudeAiOauth\":{\"accessToken\":\"\"}}",
        b"{\"claudeAiOauth\":{\"accessToken\":\"a\",\"refreshToken\":5}}",
        b"{\"claudeAiOauth\":{\"accessToken\":\"a\",\"expiresAt\":\"soon\"}}",
        b"{\"claudeAiOauth\":{\"accessToken\":\"a\",\"expiresAt\":{}}}",
        b"\xff\xfe\x00garbage",
    ] {
        assert!(
            parse_document(bad).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn apply_creds_keeps_unknown_keys_and_order() {
    let original = doc(OLD_ACCESS, Some(OLD_REFRESH), 5);
    let mut root = match original.clone() {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let mut creds = parse_document(&serde_json::to_vec(&original).expect("json"))
        .expect("valid")
        .creds
        .expect("creds");
    creds.access_token = AccessToken::new("new-access");
    creds.refresh_token = Some(Secret("new-refresh".into()));
    creds.expires_at_ms = Some(99);
    store::apply_creds(&mut root, &creds);
    let v = Value::Object(root);
    assert_eq!(v["claudeAiOauth"]["accessToken"], "new-access");
    assert_eq!(v["claudeAiOauth"]["refreshToken"], "new-refresh");
    assert_eq!(v["claudeAiOauth"]["expiresAt"], 99);
    assert_eq!(
        v["claudeAiOauth"]["rateLimitTier"],
        "default_claude_max_20x"
    );
    assert_eq!(v["claudeAiOauth"]["subscriptionType"], "max");
    assert_eq!(v["mcpOAuth"], original["mcpOAuth"]);
    assert_eq!(v["zzOther"], original["zzOther"]);
    let keys: Vec<_> = v.as_object().expect("obj").keys().cloned().collect();
    assert_eq!(keys, ["claudeAiOauth", "mcpOAuth", "zzOther"]);
    let inner: Vec<_> = v["claudeAiOauth"]
        .as_object()
        .expect("obj")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        inner,
        [
            "accessToken",
            "expiresAt",
            "scopes",
            "subscriptionType",
            "rateLimitTier",
            "refreshToken"
        ]
    );
}

proptest::proptest! {
    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
        let _ = parse_document(&bytes);
    }

    #[test]
    fn parsing_arbitrary_oauth_values_never_panics(
        access in proptest::option::of(".{0,20}"),
        exp in proptest::option::of(proptest::num::f64::ANY),
        n in proptest::num::i64::ANY,
        scopes in proptest::collection::vec(".{0,8}", 0..4),
    ) {
        let mut o = serde_json::Map::new();
        if let Some(a) = access { o.insert("accessToken".into(), json!(a)); }
        if let Some(e) = exp.and_then(serde_json::Number::from_f64) { o.insert("expiresAt".into(), Value::Number(e)); }
        o.insert("n".into(), json!(n));
        o.insert("scopes".into(), json!(scopes));
        let v = json!({"claudeAiOauth": o});
        if let Ok(d) = parse_document(&serde_json::to_vec(&v).expect("json"))
            && let Some(c) = d.creds { let _ = (mask_secret(c.access_token.secret()), c.expires_at_ms.map(format_utc)); }
    }
}

// ---------- discovery ----------

#[tokio::test]
async fn missing_sources_give_none() {
    let env = Env::new("http://127.0.0.1:9/v1/oauth/token");
    assert!(
        OAuthManager::discover(env.cfg.clone(), http())
            .expect("ok")
            .is_none()
    );
    // A document without claudeAiOauth (e.g. only MCP tokens) is not a source either.
    write_json(&env.claude_file(), &json!({"mcpOAuth": {}}));
    assert!(
        OAuthManager::discover(env.cfg.clone(), http())
            .expect("ok")
            .is_none()
    );
}

#[tokio::test]
async fn discovery_follows_the_documented_order() {
    let env = Env::new("http://127.0.0.1:9/v1/oauth/token");
    let far = now_ms() + secs(3600);
    let second = env.cfg.claude_code_files()[1].clone();
    write_json(&second, &doc("sk-ant-oat01-config-claude", None, far));
    let m = env.manager();
    assert_eq!(m.source().kind, SourceKind::ClaudeCode);
    assert_eq!(m.source().path.as_deref(), Some(second.as_path()));

    write_json(
        &env.claude_file(),
        &doc("sk-ant-oat01-dot-claude", None, far),
    );
    let m = env.manager();
    assert_eq!(
        m.source().path.as_deref(),
        Some(env.claude_file().as_path())
    );

    write_json(&env.cfg.own_store, &doc("sk-ant-oat01-own", None, far));
    let m = env.manager();
    assert_eq!(m.source().kind, SourceKind::OwnStore);
    assert!(m.source().description.contains("ccproxy credentials store"));

    let explicit = env.dir.path().join("explicit.json");
    write_json(&explicit, &doc("sk-ant-oat01-explicit", None, far));
    let mut cfg = env.cfg.clone();
    cfg.credentials_file = Some(explicit.clone());
    let m = OAuthManager::discover(cfg.clone(), http())
        .expect("ok")
        .expect("some");
    assert_eq!(m.source().kind, SourceKind::CredentialsFile);
    assert_eq!(
        m.access_token().await.expect("token").secret(),
        "sk-ant-oat01-explicit"
    );

    // An explicit file that is missing is an error naming it, not a silent fallback.
    cfg.credentials_file = Some(env.dir.path().join("nope.json"));
    let err = OAuthManager::discover(cfg.clone(), http()).expect_err("missing explicit file");
    assert!(matches!(err, CredentialError::MissingFile { .. }));
    assert!(err.to_string().contains("nope.json"), "{err}");
    assert!(err.to_string().contains("ccproxy auth login"), "{err}");

    // An explicit file without the entry is invalid.
    let empty = env.dir.path().join("empty.json");
    write_json(&empty, &json!({}));
    cfg.credentials_file = Some(empty);
    let err = OAuthManager::discover(cfg, http()).expect_err("no entry");
    assert!(err.to_string().contains("empty.json") && err.to_string().contains("claudeAiOauth"));
}

#[tokio::test]
async fn torn_or_invalid_file_is_an_error_naming_the_path() {
    let env = Env::new("http://127.0.0.1:9/v1/oauth/token");
    let full = serde_json::to_vec(&doc(OLD_ACCESS, Some(OLD_REFRESH), now_ms())).expect("json");
    let path = env.claude_file();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    // Every truncation of a valid document (a torn write) is reported, never a panic.
    for cut in 0..full.len() {
        std::fs::write(&path, &full[..cut]).expect("write");
        let err = OAuthManager::discover(env.cfg.clone(), http()).expect_err("torn file");
        let msg = err.to_string();
        assert!(matches!(err, CredentialError::Invalid { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(
            !msg.contains("original-access") && !msg.contains("original-refresh"),
            "{msg}"
        );
    }
    std::fs::write(&path, br#"{"claudeAiOauth":{"accessToken":42}}"#).expect("write");
    let msg = OAuthManager::discover(env.cfg.clone(), http())
        .expect_err("invalid")
        .to_string();
    assert!(
        msg.contains("accessToken") && msg.contains(".credentials.json"),
        "{msg}"
    );

    // A directory where the file should be.
    std::fs::remove_file(&path).expect("rm");
    std::fs::create_dir(&path).expect("mkdir");
    let msg = OAuthManager::discover(env.cfg.clone(), http())
        .expect_err("dir")
        .to_string();
    assert!(msg.contains(".credentials.json"), "{msg}");

    // An earlier invalid source stops discovery (it is not silently skipped).
    std::fs::remove_dir(&path).expect("rmdir");
    write_json(&path, &doc(OLD_ACCESS, None, now_ms() + secs(60)));
    std::fs::create_dir_all(env.cfg.own_store.parent().expect("p")).expect("mkdir");
    std::fs::write(&env.cfg.own_store, b"{not json").expect("write");
    let msg = OAuthManager::discover(env.cfg.clone(), http())
        .expect_err("own store invalid")
        .to_string();
    assert!(
        msg.contains("credentials.json") && msg.contains("malformed JSON"),
        "{msg}"
    );
}

// ---------- refresh ----------

#[tokio::test]
async fn token_expiring_during_a_run_is_refreshed_ahead() {
    let mock = MockTokenServer::start().await;
    let mut env = Env::new(&mock.url);
    env.cfg.refresh_skew = Duration::from_millis(1000);
    setup_claude(&env, &mock, now_ms() + 1600);
    let m = env.manager();
    // Well before expiry - skew: the current token, no POST.
    assert_eq!(m.access_token().await.expect("token").secret(), OLD_ACCESS);
    assert_eq!(mock.refresh_calls(), 0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Inside the skew window: refreshed, once.
    let t = m.access_token().await.expect("token");
    assert_ne!(t.secret(), OLD_ACCESS);
    assert!(mock.is_valid_access(t.secret(), now_ms()));
    assert_eq!(mock.refresh_calls(), 1);
    assert_eq!(m.access_token().await.expect("token"), t);
    assert_eq!(mock.refresh_calls(), 1);
    let st = m.status();
    assert!(!st.expired && !st.refresh_due && st.last_refresh_at_ms.is_some());
    assert_eq!(st.subscription_type.as_deref(), Some("max"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_callers_at_expiry_share_one_refresh() {
    let mock = MockTokenServer::start().await;
    mock.set_delay(Duration::from_millis(300));
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    let m = env.manager();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let m = m.clone();
        set.spawn(async move { m.access_token().await });
    }
    let mut tokens = Vec::new();
    while let Some(r) = set.join_next().await {
        tokens.push(r.expect("join").expect("no caller fails"));
    }
    assert_eq!(tokens.len(), 200);
    assert_eq!(mock.refresh_calls(), 1, "exactly one refresh POST");
    let first = tokens[0].clone();
    assert_ne!(first.secret(), OLD_ACCESS);
    assert!(
        tokens.iter().all(|t| *t == first),
        "all callers got the refreshed token"
    );
    assert!(mock.is_valid_access(first.secret(), now_ms()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_with_a_valid_token_do_not_wait_for_a_slow_refresh() {
    let mock = MockTokenServer::start().await;
    mock.set_delay(Duration::from_millis(400));
    let env = Env::new(&mock.url);
    // Valid for another minute, but inside the 5-minute skew.
    setup_claude(&env, &mock, now_ms() + secs(60));
    let m = env.manager();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let m = m.clone();
        set.spawn(async move {
            let t0 = Instant::now();
            let r = m.access_token().await;
            (r, t0.elapsed())
        });
    }
    let mut quick = 0;
    while let Some(r) = set.join_next().await {
        let (tok, took) = r.expect("join");
        tok.expect("no caller fails");
        if took < Duration::from_millis(200) {
            quick += 1;
        }
    }
    assert!(
        quick >= 199,
        "only the refreshing caller waits ({quick} quick)"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(mock.refresh_calls(), 1);
    assert_ne!(m.access_token().await.expect("token").secret(), OLD_ACCESS);
}

#[tokio::test]
async fn adopts_a_token_another_process_wrote_without_posting() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    let m = env.manager();
    // Claude Code refreshes the same file between our reads.
    let newer = "sk-ant-oat01-written-by-claude-code-0123456789";
    let mut v = doc(
        newer,
        Some("sk-ant-ort01-claude-code-new"),
        now_ms() + secs(8 * 3600),
    );
    v["claudeAiOauth"]["newField"] = json!("from a newer Claude Code");
    write_json(&env.claude_file(), &v);
    let t = m.access_token().await.expect("adopted");
    assert_eq!(t.secret(), newer);
    assert_eq!(mock.refresh_calls(), 0, "no refresh POST");
    // The file was not rewritten by us.
    assert_eq!(read_json(&env.claude_file()), v);

    // Same on the 401 path: the rejected token is replaced by what the file now holds.
    let newest = "sk-ant-oat01-written-again-0123456789abcdef";
    write_json(
        &env.claude_file(),
        &doc(newest, Some("sk-ant-ort01-x"), now_ms() + secs(8 * 3600)),
    );
    let t2 = m.force_refresh(&t).await.expect("adopted on 401");
    assert_eq!(t2.secret(), newest);
    assert_eq!(mock.refresh_calls(), 0);
}

#[tokio::test]
async fn older_credentials_in_the_file_are_not_adopted() {
    let mock = MockTokenServer::start().await;
    let mut env = Env::new(&mock.url);
    env.cfg.refresh_skew = Duration::from_millis(500);
    setup_claude(&env, &mock, now_ms() + 200);
    let m = env.manager();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = m.access_token().await.expect("refreshed");
    assert_eq!(mock.refresh_calls(), 1);
    // Someone restores an old backup of the file.
    write_json(
        &env.claude_file(),
        &doc(OLD_ACCESS, Some(OLD_REFRESH), now_ms() - 5000),
    );
    let again = m
        .force_refresh(&AccessToken::new("sk-ant-oat01-some-other"))
        .await
        .expect("ok");
    assert_eq!(again, fresh);
    let t = m.force_refresh(&fresh).await.expect("forced refresh");
    assert_ne!(t, fresh);
    assert_ne!(t.secret(), OLD_ACCESS);
}

#[tokio::test]
async fn refresh_token_rotated_by_another_process_during_our_refresh() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    let m = env.manager();
    // Claude Code already used our refresh token (the endpoint no longer knows it) and writes the
    // rotated pair, with a still-expired access token, while our POST is in flight.
    mock.state_revoke(OLD_REFRESH);
    let rotated = "sk-ant-ort01-rotated-by-claude-code-0123456789";
    mock.allow_refresh(rotated);
    let path = env.claude_file();
    let mut done = false;
    mock.set_hook(move |rt| {
        if rt == OLD_REFRESH && !done {
            done = true;
            write_json(
                &path,
                &doc(
                    "sk-ant-oat01-cc-expired-0123456789abcdef",
                    Some(rotated),
                    now_ms() - 10,
                ),
            );
        }
    });
    let before = mock.refresh_calls();
    let t = m
        .access_token()
        .await
        .expect("recovered with the rotated refresh token");
    assert_eq!(
        mock.refresh_calls() - before,
        2,
        "rejected once, then refreshed with the new token"
    );
    assert!(mock.is_valid_access(t.secret(), now_ms()));
    assert_eq!(mock.presented().last().map(String::as_str), Some(rotated));
    let on_disk = read_json(&env.claude_file());
    assert_eq!(on_disk["claudeAiOauth"]["accessToken"], t.secret());
}

#[tokio::test]
async fn invalid_grant_before_expiry_keeps_the_current_token() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    // The mock does not know this refresh token.
    write_json(
        &env.claude_file(),
        &doc(OLD_ACCESS, Some(OLD_REFRESH), now_ms() + secs(60)),
    );
    let m = env.manager();
    let t = m.access_token().await.expect("current token kept");
    assert_eq!(t.secret(), OLD_ACCESS);
    assert_eq!(mock.refresh_calls(), 1);
    let st = m.status();
    let err = st.last_refresh_error.expect("error recorded");
    assert!(err.contains("invalid_grant"), "{err}");
    // A rejected refresh token is never sent again; callers keep getting the current token.
    for _ in 0..20 {
        assert_eq!(m.access_token().await.expect("kept").secret(), OLD_ACCESS);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(m.access_token().await.expect("kept").secret(), OLD_ACCESS);
    assert_eq!(mock.refresh_calls(), 1);
}

#[tokio::test]
async fn invalid_grant_after_expiry_is_an_expired_error_with_the_fix() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    write_json(
        &env.claude_file(),
        &doc(OLD_ACCESS, Some(OLD_REFRESH), now_ms() - 1000),
    );
    let m = env.manager();
    let err = m.access_token().await.expect_err("expired");
    assert!(matches!(err, CredentialError::Expired { .. }), "{err:?}");
    assert!(err.needs_login());
    let msg = err.to_string();
    assert!(
        msg.contains("`ccproxy auth login`") && msg.contains("`claude`"),
        "{msg}"
    );
    assert!(
        msg.contains("invalid_grant") && msg.contains(".credentials.json"),
        "{msg}"
    );
    assert!(
        !msg.contains("original-access") && !msg.contains("original-refresh"),
        "{msg}"
    );
    assert!(!format!("{err:?}").contains("original-refresh"));
    for _ in 0..10 {
        assert!(m.access_token().await.is_err());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(m.access_token().await.is_err());
    assert_eq!(
        mock.refresh_calls(),
        1,
        "a rejected refresh token is not retried"
    );
    // The user logs in again with `claude`: picked up without restarting.
    let relogin = "sk-ant-oat01-after-relogin-0123456789abcdef";
    write_json(
        &env.claude_file(),
        &doc(relogin, Some("sk-ant-ort01-relogin"), now_ms() + secs(3600)),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        m.access_token().await.expect("relogin adopted").secret(),
        relogin
    );
    assert_eq!(mock.refresh_calls(), 1);
    assert!(m.status().last_refresh_error.is_none());
}

#[tokio::test]
async fn force_refresh_after_a_401() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() + secs(3600));
    let m = env.manager();
    let t0 = m.access_token().await.expect("token");
    assert_eq!(mock.refresh_calls(), 0);
    // Upstream rejected t0: one refresh, concurrent 401s share it.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (m, t0) = (m.clone(), t0.clone());
        set.spawn(async move { m.force_refresh(&t0).await });
    }
    let mut got = Vec::new();
    while let Some(r) = set.join_next().await {
        got.push(r.expect("join").expect("refreshed"));
    }
    assert_eq!(mock.refresh_calls(), 1);
    assert!(got.iter().all(|t| *t == got[0] && *t != t0));
    // A stale 401 (for a token already replaced) does not refresh again.
    assert_eq!(m.force_refresh(&t0).await.expect("current"), got[0]);
    assert_eq!(mock.refresh_calls(), 1);
    // If the forced refresh fails, the rejected token is not handed out again.
    mock.force(500, json!({"error": "server_error"}), None);
    let err = m.force_refresh(&got[0]).await.expect_err("refresh failed");
    assert!(matches!(err, CredentialError::Expired { .. }), "{err}");
    assert!(
        err.to_string().contains("rejected") && err.to_string().contains("HTTP 500"),
        "{err}"
    );
    // Requests that were not rejected keep using the (unexpired) current token.
    assert_eq!(m.access_token().await.expect("still valid"), got[0]);
}

#[tokio::test]
async fn refreshed_file_has_rotated_tokens_other_keys_and_mode_0600() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    let path = env.claude_file();
    set_mode(&path, 0o644);
    let original = read_json(&path);
    let m = env.manager();
    let t = m.access_token().await.expect("refreshed");
    let v = read_json(&path);
    let o = &v["claudeAiOauth"];
    assert_eq!(o["accessToken"], t.secret());
    let rt = o["refreshToken"].as_str().expect("refresh token");
    assert_ne!(rt, OLD_REFRESH);
    assert_eq!(
        mock.valid_refresh_tokens(),
        vec![rt.to_owned()],
        "the file holds the live refresh token"
    );
    let exp = o["expiresAt"].as_i64().expect("expiresAt");
    assert!((exp - (now_ms() + secs(28_800))).abs() < 5000);
    assert_eq!(o["scopes"], json!(["user:inference", "user:profile"]));
    assert_eq!(o["subscriptionType"], "max");
    assert_eq!(
        o["rateLimitTier"],
        original["claudeAiOauth"]["rateLimitTier"]
    );
    assert_eq!(v["mcpOAuth"], original["mcpOAuth"]);
    assert_eq!(v["zzOther"], original["zzOther"]);
    assert_eq!(mode_of(&path), 0o600);
    // Only the credentials file remains in the directory (no temporary files).
    let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(".credentials.json")]);
}

#[tokio::test]
async fn a_refresh_is_saved_even_when_its_caller_goes_away() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    mock.set_delay(Duration::from_millis(300));
    let m = env.manager();
    // The caller (a request whose client disconnected) is dropped while the POST is in flight;
    // the endpoint rotates the refresh token anyway.
    let dropped = tokio::time::timeout(Duration::from_millis(50), m.access_token()).await;
    assert!(dropped.is_err(), "the caller was cut off mid-refresh");
    let path = env.claude_file();
    let deadline = Instant::now() + Duration::from_secs(10);
    let rt = loop {
        let v = read_json(&path);
        let rt = v["claudeAiOauth"]["refreshToken"]
            .as_str()
            .expect("refresh token")
            .to_owned();
        if rt != OLD_REFRESH {
            break rt;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated tokens were never saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(mock.refresh_calls(), 1);
    assert_eq!(
        mock.valid_refresh_tokens(),
        vec![rt],
        "the file holds the live refresh token"
    );
    // The next caller uses the saved token without another POST.
    mock.set_delay(Duration::ZERO);
    let t = m.access_token().await.expect("token");
    assert_eq!(read_json(&path)["claudeAiOauth"]["accessToken"], t.secret());
    assert_eq!(mock.refresh_calls(), 1);
}

/// Makes `path` look `age` old.
fn age_file(path: &Path, age: Duration) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(std::time::SystemTime::now() - age)
        .expect("set mtime");
}

#[tokio::test]
async fn stale_temporary_files_of_ours_are_removed_at_startup() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() + secs(3600));
    write_json(&env.cfg.own_store, &json!({"other": 1}));
    let old = Duration::from_secs(120);
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    for target in [env.claude_file(), env.cfg.own_store.clone()] {
        let dir = target.parent().expect("dir").to_path_buf();
        let name = target
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // Left by a killed write: ours, old.
        let stale = dir.join(format!(".{name}.tmp-4242-00ff00ff00ff00ff"));
        std::fs::write(&stale, b"{\"claudeAiOauth\":{}}").expect("write");
        age_file(&stale, old);
        removed.push(stale);
        // A write in progress (recent), and files that are not ours (old too).
        let fresh = dir.join(format!(".{name}.tmp-4243-00ff00ff00ff00ff"));
        std::fs::write(&fresh, b"x").expect("write");
        kept.push(fresh);
        for other in [
            format!(".{name}.tmp-4242-00ff00ff00ff00f"),
            format!(".{name}.tmp-4242-00FF00FF00FF00FF"),
            format!(".{name}.tmp-abc-00ff00ff00ff00ff"),
            format!("{name}.tmp-4242-00ff00ff00ff00ff"),
            format!(".{name}.tmp-4242-00ff00ff00ff00ff.bak"),
            ".other.json.tmp-4242-00ff00ff00ff00ff".to_owned(),
            "notes.txt".to_owned(),
        ] {
            let p = dir.join(other);
            std::fs::write(&p, b"x").expect("write");
            age_file(&p, old);
            kept.push(p);
        }
        // A directory with our name is not ours to remove.
        let d = dir.join(format!(".{name}.tmp-4244-00ff00ff00ff00ff"));
        std::fs::create_dir(&d).expect("mkdir");
        kept.push(d);
    }
    let m = env.manager();
    assert_eq!(m.status().source.kind, SourceKind::ClaudeCode);
    for p in &removed {
        assert!(!p.exists(), "{} was left", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} was removed", p.display());
    }
    // The pure check, and an explicit --credentials-file (the only file then used).
    assert!(store::is_temp_name(
        ".c.json.tmp-1-0123456789abcdef",
        "c.json"
    ));
    assert!(!store::is_temp_name(
        ".c.json.tmp--0123456789abcdef",
        "c.json"
    ));
    let explicit = env.dir.path().join("elsewhere").join("c.json");
    write_json(
        &explicit,
        &doc(OLD_ACCESS, Some(OLD_REFRESH), now_ms() + secs(3600)),
    );
    let stale = explicit.with_file_name(".c.json.tmp-7-0123456789abcdef");
    std::fs::write(&stale, b"x").expect("write");
    age_file(&stale, old);
    let mut cfg = env.cfg.clone();
    cfg.credentials_file = Some(explicit);
    OAuthManager::discover(cfg, http())
        .expect("discover")
        .expect("credentials");
    assert!(!stale.exists());
}

#[tokio::test]
async fn refresh_writes_through_a_symlink() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    mock.allow_refresh(OLD_REFRESH);
    let real = env.dir.path().join("dotfiles").join("creds.json");
    write_json(&real, &doc(OLD_ACCESS, Some(OLD_REFRESH), now_ms() - 1000));
    std::fs::create_dir_all(env.claude_file().parent().expect("p")).expect("mkdir");
    std::os::unix::fs::symlink(&real, env.claude_file()).expect("symlink");
    let m = env.manager();
    let t = m.access_token().await.expect("refreshed");
    assert!(
        std::fs::symlink_metadata(env.claude_file())
            .expect("meta")
            .file_type()
            .is_symlink()
    );
    assert_eq!(read_json(&real)["claudeAiOauth"]["accessToken"], t.secret());
}

#[tokio::test]
async fn torn_file_at_refresh_time_is_repaired_from_memory() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    let m = env.manager();
    std::fs::write(env.claude_file(), b"{\"claudeAiOauth\":{\"accessTo").expect("tear");
    let t = m.access_token().await.expect("refreshed from memory");
    let v = read_json(&env.claude_file());
    assert_eq!(v["claudeAiOauth"]["accessToken"], t.secret());
    assert_eq!(
        v["mcpOAuth"]["server|abc"]["accessToken"],
        "mcp-secret-keep"
    );
}

#[tokio::test]
async fn removed_source_is_not_refreshed_or_recreated() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    let m = env.manager();
    std::fs::remove_file(env.claude_file()).expect("rm");
    let err = m.access_token().await.expect_err("logged out");
    assert!(err.to_string().contains("removed"), "{err}");
    assert!(err.to_string().contains("ccproxy auth login"), "{err}");
    assert_eq!(mock.refresh_calls(), 0);
    assert!(!env.claude_file().exists());
}

#[tokio::test]
async fn endpoint_errors_are_classified_and_survived_before_expiry() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() + secs(60));
    let mut tuning = fast_tuning();
    tuning.request_timeout = Duration::from_millis(300);
    let m = env.manager_with(tuning);

    mock.force(429, json!({"error": "rate_limited"}), Some(1));
    assert_eq!(m.access_token().await.expect("kept").secret(), OLD_ACCESS);
    let e = m.status().last_refresh_error.expect("err");
    assert!(
        e.contains("HTTP 429") && e.contains("rate limited") && e.contains("retry after 1s"),
        "{e}"
    );
    // Retry-After is honoured: no new attempt for a second.
    let calls = mock.refresh_calls();
    m.access_token().await.expect("kept");
    assert_eq!(mock.refresh_calls(), calls);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    mock.force(
        503,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
        None,
    );
    assert_eq!(m.access_token().await.expect("kept").secret(), OLD_ACCESS);
    let e = m.status().last_refresh_error.expect("err");
    assert!(
        e.contains("HTTP 503") && e.contains("overloaded_error"),
        "{e}"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    mock.unforce();
    mock.set_delay(Duration::from_millis(1500));
    assert_eq!(m.access_token().await.expect("kept").secret(), OLD_ACCESS);
    let e = m.status().last_refresh_error.expect("err");
    assert!(e.contains("timed out"), "{e}");

    // Recovery once the endpoint behaves.
    mock.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = m.access_token().await.expect("refreshed");
    assert_ne!(t.secret(), OLD_ACCESS);
    assert!(m.status().last_refresh_error.is_none());
}

#[tokio::test]
async fn expired_token_with_a_failing_endpoint_reports_the_cause() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    let mut tuning = fast_tuning();
    tuning.request_timeout = Duration::from_millis(200);
    let m = env.manager_with(tuning);
    mock.set_delay(Duration::from_millis(1000));
    let err = m.access_token().await.expect_err("expired");
    assert!(
        err.to_string().contains("timed out") && err.to_string().contains("ccproxy auth login"),
        "{err}"
    );
    // Once the endpoint recovers, the next request (after the short expired-retry interval) works.
    mock.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t = m.access_token().await.expect("recovered");
    assert!(mock.is_valid_access(t.secret(), now_ms()));
}

#[tokio::test]
async fn no_refresh_token() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    write_json(
        &env.claude_file(),
        &doc(OLD_ACCESS, None, now_ms() + secs(60)),
    );
    let m = env.manager();
    assert_eq!(m.access_token().await.expect("kept").secret(), OLD_ACCESS);
    assert!(
        m.status()
            .last_refresh_error
            .expect("err")
            .contains("no refresh token")
    );
    write_json(&env.claude_file(), &doc(OLD_ACCESS, None, now_ms() - 60));
    let m = env.manager();
    let err = m.access_token().await.expect_err("expired");
    assert!(
        err.to_string().contains("no refresh token")
            && err.to_string().contains("ccproxy auth login")
    );
    assert_eq!(mock.refresh_calls(), 0);
}

#[tokio::test]
async fn unknown_expiry_is_never_refreshed_ahead() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    mock.allow_refresh(OLD_REFRESH);
    let mut v = doc(OLD_ACCESS, Some(OLD_REFRESH), 0);
    v["claudeAiOauth"]
        .as_object_mut()
        .expect("obj")
        .remove("expiresAt");
    write_json(&env.claude_file(), &v);
    let m = env.manager();
    assert_eq!(m.access_token().await.expect("token").secret(), OLD_ACCESS);
    assert_eq!(mock.refresh_calls(), 0);
    assert!(!m.status().expired);
    let t = m
        .force_refresh(&AccessToken::new(OLD_ACCESS))
        .await
        .expect("refresh on 401");
    assert_ne!(t.secret(), OLD_ACCESS);
    assert_eq!(mock.refresh_calls(), 1);
}

// ---------- background refresh ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_keeps_serving_for_many_token_lifetimes() {
    let mock = MockTokenServer::start().await;
    // Tokens live 1 s: the background task refreshes at half-life, over and over.
    mock.set_expires_in(1);
    let mut env = Env::new(&mock.url);
    env.cfg.refresh_skew = Duration::from_millis(400);
    setup_claude(&env, &mock, now_ms() + 700);
    let m = env.manager();
    let bg = m.spawn_background_refresh();
    let until = Instant::now() + Duration::from_millis(4500);
    let mut served = 0;
    let mut distinct = std::collections::HashSet::new();
    while Instant::now() < until {
        let t0 = Instant::now();
        let t = m.access_token().await.expect("a request never fails");
        assert!(
            t0.elapsed() < Duration::from_millis(200),
            "requests are not held up"
        );
        let valid = t.secret() == OLD_ACCESS || mock.is_valid_access(t.secret(), now_ms());
        assert!(valid, "the token handed out is valid upstream");
        distinct.insert(t.secret().to_owned());
        served += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refreshes = mock.refresh_calls();
    assert!(refreshes >= 6, "background refreshed {refreshes} times");
    assert!(refreshes <= 12, "no refresh storm: {refreshes}");
    assert!(distinct.len() >= 6);
    assert!(served > 100);
    // The task ends when the manager is dropped.
    drop(m);
    tokio::time::timeout(Duration::from_secs(3), bg)
        .await
        .expect("ends")
        .expect("join");
    // Once no refresh is under way, the file holds the live refresh token, so
    // Claude Code keeps working. (Read while a refresh is in flight, it may still
    // hold the token just rotated away, for the moment until the write.)
    let rt = read_json(&env.claude_file())["claudeAiOauth"]["refreshToken"]
        .as_str()
        .expect("rt")
        .to_owned();
    assert!(mock.valid_refresh_tokens().contains(&rt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_backs_off_on_failures_then_recovers() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() + secs(60));
    let m = env.manager();
    mock.force(503, json!({"error": "temporarily_unavailable"}), None);
    let bg = m.spawn_background_refresh();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failures = mock.refresh_calls();
    // 100, 200, 400, 400, … ms backoff: a handful of attempts, never a spin.
    assert!((2..=8).contains(&failures), "{failures} attempts in 1.5 s");
    assert_eq!(
        m.access_token().await.expect("current kept").secret(),
        OLD_ACCESS
    );
    mock.unforce();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let t = m.access_token().await.expect("token");
    assert_ne!(t.secret(), OLD_ACCESS, "the background task recovered");
    assert!(m.status().last_refresh_error.is_none());
    bg.abort();
}

// ---------- secrets in logs ----------

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Runs [`secrets_never_appear_in_logs_alone`] in a process of its own: tracing
/// caches each log call site's interest process-wide, and another test thread
/// that reaches the same call site while this test installs its capturing
/// subscriber can leave it cached as "not interested" (so the capture misses
/// lines, and the test fails for reasons that are not the code's).
#[test]
fn secrets_never_appear_in_logs() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "credentials::tests::secrets_never_appear_in_logs_alone",
            "--include-ignored",
            "--test-threads=1",
        ])
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "run by secrets_never_appear_in_logs in a process of its own"]
async fn secrets_never_appear_in_logs_alone() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    setup_claude(&env, &mock, now_ms() - 1000);
    set_mode(&env.claude_file(), 0o644);
    let mut tuning = fast_tuning();
    tuning.request_timeout = Duration::from_millis(200);
    let m = env.manager_with(tuning);
    let t1 = m.access_token().await.expect("refresh ok");
    let t2 = m.force_refresh(&t1).await.expect("forced ok");
    mock.force(
        429,
        json!({"error": "rate_limited", "error_description": "token sk-ant-ort01-echoed-back"}),
        Some(0),
    );
    let _ = m.force_refresh(&t2).await;
    mock.unforce();
    mock.set_delay(Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = m.refresh_now().await;
    mock.set_delay(Duration::ZERO);
    // invalid_grant with an unknown refresh token, before and after expiry
    let env2 = Env::new(&mock.url);
    write_json(
        &env2.claude_file(),
        &doc(OLD_ACCESS, Some(OLD_REFRESH), now_ms() + 60_000),
    );
    let _ = env2.manager().access_token().await;
    write_json(
        &env2.claude_file(),
        &doc(OLD_ACCESS, Some(OLD_REFRESH), now_ms() - 60_000),
    );
    let e = env2.manager().access_token().await.expect_err("expired");
    tracing::error!(error = %e, debug = ?e, "as the server would log it");
    tracing::info!(status = ?m.status(), manager = ?m, token = ?t2, "status");
    // A login.
    let env3 = Env::new(&mock.url);
    mock.allow_code("the-auth-code-secret");
    let out = drive_login(&env3.cfg, "the-auth-code-secret", None)
        .await
        .expect("login");
    tracing::info!(?out, "login outcome");

    let logs = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf8");
    assert!(logs.contains("refreshed the Claude OAuth token"), "{logs}");
    assert!(logs.contains("chmod 600"), "{logs}");
    assert!(logs.contains("invalid_grant"), "{logs}");
    let mut secrets = mock.issued_tokens();
    secrets.extend(mock.presented());
    secrets.extend(mock.valid_refresh_tokens());
    secrets.extend([OLD_ACCESS.to_owned(), OLD_REFRESH.to_owned()]);
    secrets.push("sk-ant-ort01-echoed-back".to_owned());
    secrets.push("the-auth-code-secret".to_owned());
    for ex in mock.exchanges() {
        secrets.push(ex["code_verifier"].as_str().expect("verifier").to_owned());
    }
    assert!(secrets.len() >= 8);
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "secret {} leaked into logs:\n{logs}",
            mask_secret(s)
        );
    }
}

// ---------- login ----------

/// A `BufRead` that answers the prompt from what login printed: it reads the state from the
/// authorize URL in `output`, like a user copying `code#state` from the callback page.
struct PasteFromOutput {
    output: Arc<Mutex<Vec<u8>>>,
    code: String,
    state_override: Option<String>,
    buf: Vec<u8>,
    pos: usize,
    filled: bool,
}

impl Read for PasteFromOutput {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for PasteFromOutput {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if !self.filled {
            self.filled = true;
            let printed = String::from_utf8_lossy(&self.output.lock().expect("lock")).into_owned();
            let url = printed
                .split_whitespace()
                .find(|w| w.starts_with("http"))
                .expect("authorize URL printed");
            let url = reqwest::Url::parse(url).expect("url");
            let state = url
                .query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
                .expect("state");
            let state = self.state_override.clone().unwrap_or(state);
            self.buf = format!("\n{}#{}\n", self.code, state).into_bytes();
        }
        Ok(&self.buf[self.pos..])
    }
    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.buf.len());
    }
}

#[derive(Clone, Default)]
struct SharedOut(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn login_options() -> LoginOptions {
    LoginOptions {
        authorize_url: "https://claude.example/oauth/authorize".to_owned(),
        open_browser: false,
    }
}

async fn drive_login(
    cfg: &CredentialsConfig,
    code: &str,
    state_override: Option<&str>,
) -> Result<(LoginOutcome, String), CredentialError> {
    let out = SharedOut::default();
    let input = PasteFromOutput {
        output: out.0.clone(),
        code: code.to_owned(),
        state_override: state_override.map(str::to_owned),
        buf: Vec::new(),
        pos: 0,
        filled: false,
    };
    let outcome = login(cfg, http(), &login_options(), input, out.clone()).await?;
    let printed = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
    Ok((outcome, printed))
}

#[tokio::test]
async fn login_with_pkce_saves_to_the_own_store() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    mock.allow_code("code-123");
    let (outcome, printed) = drive_login(&env.cfg, "code-123", None)
        .await
        .expect("login");
    // The authorize URL.
    let url_text = printed
        .split_whitespace()
        .find(|w| w.starts_with("https://claude.example"))
        .expect("url");
    let url = reqwest::Url::parse(url_text).expect("url");
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(url.path(), "/oauth/authorize");
    assert_eq!(q["code"], "true");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], REDIRECT_URI);
    assert_eq!(q["scope"], "org:create_api_key user:profile user:inference");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(!url_text.contains(' '));
    // The exchange: PKCE verifier matches the challenge, state echoed.
    let ex = mock.exchanges();
    assert_eq!(ex.len(), 1);
    let ex = &ex[0];
    assert_eq!(ex["grant_type"], "authorization_code");
    assert_eq!(ex["code"], "code-123");
    assert_eq!(ex["state"], q["state"].as_str());
    assert_eq!(ex["client_id"], CLIENT_ID);
    assert_eq!(ex["redirect_uri"], REDIRECT_URI);
    let verifier = ex["code_verifier"].as_str().expect("verifier");
    assert!(verifier.len() >= 43);
    assert_eq!(
        Pkce::from_parts(verifier.to_owned(), String::new()).challenge,
        q["code_challenge"]
    );
    // Saved: own store, 0600, private directory, discoverable first.
    assert_eq!(outcome.path, env.cfg.own_store);
    assert_eq!(mode_of(&env.cfg.own_store), 0o600);
    assert_eq!(mode_of(env.cfg.own_store.parent().expect("dir")), 0o700);
    assert!(printed.contains("Logged in"));
    let saved = read_json(&env.cfg.own_store);
    assert!(
        saved["claudeAiOauth"]["accessToken"]
            .as_str()
            .expect("at")
            .starts_with("sk-ant-oat01-sim-")
    );
    assert_eq!(
        saved["claudeAiOauth"]["scopes"],
        json!(["user:inference", "user:profile"])
    );
    write_json(
        &env.claude_file(),
        &doc(OLD_ACCESS, None, now_ms() + secs(60)),
    );
    let m = env.manager();
    assert_eq!(m.source().kind, SourceKind::OwnStore);
    assert_eq!(
        m.access_token().await.expect("token").secret(),
        saved["claudeAiOauth"]["accessToken"]
    );
    assert!(!printed.contains(saved["claudeAiOauth"]["accessToken"].as_str().expect("at")));
}

#[tokio::test]
async fn login_to_an_explicit_file_keeps_its_other_keys() {
    let mock = MockTokenServer::start().await;
    let mut env = Env::new(&mock.url);
    let file = env.dir.path().join("custom.json");
    write_json(&file, &doc(OLD_ACCESS, Some(OLD_REFRESH), 1));
    env.cfg.credentials_file = Some(file.clone());
    mock.allow_code("c2");
    let (outcome, _) = drive_login(&env.cfg, "c2", None).await.expect("login");
    assert_eq!(outcome.path, file);
    let v = read_json(&file);
    assert_ne!(v["claudeAiOauth"]["accessToken"], OLD_ACCESS);
    assert_eq!(
        v["mcpOAuth"]["server|abc"]["accessToken"],
        "mcp-secret-keep"
    );
    assert_eq!(
        v["claudeAiOauth"]["rateLimitTier"],
        "default_claude_max_20x"
    );
    assert!(
        v["claudeAiOauth"]
            .get("subscriptionType")
            .is_none_or(Value::is_null)
    );
    assert!(!env.cfg.own_store.exists());
}

#[tokio::test]
async fn login_rejects_a_wrong_state_bad_code_and_empty_input() {
    let mock = MockTokenServer::start().await;
    let env = Env::new(&mock.url);
    mock.allow_code("good");
    let err = drive_login(&env.cfg, "good", Some("forged-state"))
        .await
        .expect_err("state");
    assert!(err.to_string().contains("state"), "{err}");
    assert!(
        mock.exchanges().is_empty(),
        "no exchange with a wrong state"
    );
    let err = drive_login(&env.cfg, "bad-code", None)
        .await
        .expect_err("bad code");
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    assert!(!err.to_string().contains("bad-code"), "{err}");
    let err = login(
        &env.cfg,
        http(),
        &login_options(),
        std::io::Cursor::new(""),
        Vec::new(),
    )
    .await
    .expect_err("eof");
    assert!(err.to_string().contains("no code"), "{err}");
    let err = login(
        &env.cfg,
        http(),
        &login_options(),
        std::io::Cursor::new("just-a-code\n"),
        Vec::new(),
    )
    .await
    .expect_err("no state");
    assert!(err.to_string().contains("code#state"), "{err}");
    assert!(!env.cfg.own_store.exists());
}

#[test]
fn parses_pasted_codes() {
    assert_eq!(
        login::parse_pasted("  abc#def \n"),
        Some(("abc".into(), Some("def".into())))
    );
    assert_eq!(login::parse_pasted("abc"), Some(("abc".into(), None)));
    assert_eq!(login::parse_pasted("   \n"), None);
    assert_eq!(login::parse_pasted("#def"), None);
    assert_eq!(
        login::parse_pasted("https://console.anthropic.com/oauth/code/callback?code=a%2Bb&state=s"),
        Some(("a+b".into(), Some("s".into())))
    );
}
