//! Several upstream credentials (`[[credentials]]`): failover before the first byte (never
//! after), cooldowns that end by themselves, affinity of a conversation, all-benched 429s, 401
//! marks, model patterns, the plan-limits guard on subscriptions, and what `/health` and
//! `/metrics` show — against the simulated upstream's per-credential scripts.

use std::time::Duration;

use ccproxy::config::{PoolEntry, PoolSecret, Routing, Secret, Settings};
use ccproxy::routes::Mode;
use ccproxy::sim::{Account, UnifiedScript};
use serde_json::{Value, json};

use crate::support::*;

const KEY_A: &str = "sk-ant-api03-pool-member-a-0123456789";
const KEY_B: &str = "sk-ant-api03-pool-member-b-0123456789";

fn entry(name: &str, key: &str) -> PoolEntry {
    PoolEntry {
        name: name.to_owned(),
        secret: PoolSecret::ApiKey(Secret::new(key)),
        modes: vec![Mode::Full, Mode::Minimal, Mode::Passthrough],
        models: Vec::new(),
        plan_limits_only: true,
    }
}

fn two_keys(s: &mut Settings) {
    s.credentials.pool = vec![entry("a", KEY_A), entry("b", KEY_B)];
}

fn two_keys_round_robin(s: &mut Settings) {
    two_keys(s);
    s.credentials.routing = Routing::RoundRobin;
}

async fn pool_env(tweak: fn(&mut Settings)) -> TestEnv {
    TestEnv::start(Opts {
        tweak: Some(tweak),
        ..Opts::default()
    })
    .await
}

/// The credential of each Messages request the upstream received, in order.
fn used(env: &TestEnv) -> Vec<String> {
    env.sim_state()
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .map(|r| {
            let h = |n: &str| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.clone())
            };
            h("x-api-key")
                .or_else(|| h("authorization").map(|a| a.trim_start_matches("Bearer ").to_owned()))
                .unwrap_or_default()
        })
        .collect()
}

fn until(secs: u64) -> Option<u64> {
    Some(ccproxy::util::time::now_secs() + secs)
}

fn body(path: &str, text: &str) -> Value {
    if path.contains("/openai/") {
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]})
    } else {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 50,
               "messages": [{"role": "user", "content": text}]})
    }
}

async fn health(env: &TestEnv) -> Value {
    json_of(env.client.get(env.url("/health")).send().await.unwrap()).await
}

fn member<'a>(h: &'a Value, name: &str) -> &'a Value {
    h["credentials"]["pool"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {h}"))
}

/// The first credential is rate-limited: the request moves to the second before any byte
/// reached the client, which sees a normal answer; the next request goes straight to the second.
async fn failover_before_the_first_byte(path: &str) {
    let env = pool_env(two_keys).await;
    env.sim_state().set_account(
        KEY_A,
        Account {
            rate_limited_until: until(60),
            ..Account::default()
        },
    );
    let r = env.post(path, None, &body(path, "hello")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(used(&env), [KEY_A, KEY_B]);
    let r = env
        .post(path, None, &body(path, "another conversation"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(used(&env), [KEY_A, KEY_B, KEY_B], "a cools down");
    let rows = crate::usage::rows(&env, 2).await;
    assert!(
        rows.iter().all(|r| r.credential.as_deref() == Some("b")),
        "{rows:?}"
    );
    let h = health(&env).await;
    let a = member(&h, "a");
    assert_eq!(a["state"], "cooling", "{a}");
    let now = ccproxy::util::time::now_secs();
    let end = a["until"].as_u64().unwrap();
    assert!(
        end > now + 50 && end <= now + 61,
        "cooling until the upstream's reset: {a}"
    );
    assert_eq!(member(&h, "b")["state"], "available");
    assert!(!h.to_string().contains(KEY_A) && !h.to_string().contains(KEY_B));
}

cases!(failover_before_the_first_byte {
    anthropic: ("/v1/messages"),
    anthropic_min: ("/min/v1/messages"),
    openai: ("/openai/v1/chat/completions"),
});

/// 529, 5xx and 401 move the request on too; a 401 marks the credential failed.
#[tokio::test]
async fn overloaded_and_revoked_credentials_are_skipped() {
    let env = pool_env(two_keys).await;
    env.sim_state().set_account(
        KEY_A,
        Account {
            overloaded: true,
            ..Account::default()
        },
    );
    let r = env.post("/v1/messages", None, &body("", "x")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(used(&env), [KEY_A, KEY_B]);
    assert_eq!(member(&health(&env).await, "a")["state"], "cooling");

    let env = pool_env(two_keys).await;
    env.sim_state().set_account(
        KEY_A,
        Account {
            revoked: true,
            ..Account::default()
        },
    );
    let r = env.post("/v1/messages", None, &body("", "x")).await;
    assert_eq!(r.status(), 200);
    let h = health(&env).await;
    assert_eq!(member(&h, "a")["state"], "failed", "{h}");
    env.post("/v1/messages", None, &body("", "y")).await;
    assert_eq!(used(&env), [KEY_A, KEY_B, KEY_B]);
}

/// Once bytes went to the client, a broken stream is not retried on another credential.
#[tokio::test]
async fn no_failover_after_the_first_byte() {
    let env = pool_env(two_keys).await;
    let mut b = body("", "[sim:error-midstream]");
    b["stream"] = json!(true);
    let text = env
        .post("/v1/messages", None, &b)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert_eq!(used(&env), [KEY_A], "one upstream request");
}

/// A cooldown ends when its reset time passes: the first credential serves again.
#[tokio::test]
async fn a_cooldown_ends_by_itself() {
    let env = pool_env(two_keys).await;
    env.sim_state().set_account(
        KEY_A,
        Account {
            rate_limited_until: until(1),
            ..Account::default()
        },
    );
    env.post("/v1/messages", None, &body("", "one")).await;
    assert_eq!(used(&env), [KEY_A, KEY_B]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    env.post("/v1/messages", None, &body("", "two")).await;
    assert_eq!(used(&env), [KEY_A, KEY_B, KEY_A], "back on the first");
}

/// Every credential benched: a 429 in the client's dialect with the earliest reset and the
/// names (never the secrets), without asking the upstream.
async fn all_benched_is_a_429(path: &str) {
    let env = pool_env(two_keys).await;
    env.sim_state().set_account(
        KEY_A,
        Account {
            rate_limited_until: until(40),
            ..Account::default()
        },
    );
    env.sim_state().set_account(
        KEY_B,
        Account {
            rate_limited_until: until(20),
            ..Account::default()
        },
    );
    let r = env.post(path, None, &body(path, "first")).await;
    assert_eq!(r.status(), 429, "the last credential's own answer");
    assert_eq!(used(&env).len(), 2);
    let r = env.post(path, None, &body(path, "second")).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((15..=21).contains(&wait), "the earliest reset: {wait}");
    let v = json_of(r).await;
    if path.contains("/openai/") {
        assert_openai_error(&v, "rate_limit_error");
    } else {
        assert_anthropic_error(&v, "rate_limit_error");
    }
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("a is rate-limited until") && msg.contains("b is"),
        "{msg}"
    );
    assert!(!msg.contains("sk-ant"), "{msg}");
    assert_eq!(used(&env).len(), 2, "nothing more went upstream");
}

cases!(all_benched_is_a_429 {
    anthropic: ("/v1/messages"),
    openai: ("/openai/v1/chat/completions"),
});

/// The requests of one conversation stay on one credential (round-robin spreads new ones);
/// when it cools down, the conversation moves.
#[tokio::test]
async fn a_conversation_keeps_its_credential() {
    let env = pool_env(two_keys_round_robin).await;
    let turn = |texts: &[&str]| {
        let msgs: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": t})
            })
            .collect();
        json!({"model": "claude-sonnet-4-5", "max_tokens": 20, "system": "S",
               "messages": msgs})
    };
    for n in 1..=3 {
        let texts = ["plan a trip", "ok", "to Rome", "sure", "in May"];
        let r = env
            .post("/v1/messages", None, &turn(&texts[..2 * n - 1]))
            .await;
        assert_eq!(r.status(), 200);
        // Another conversation in between takes the other credential.
        env.post("/v1/messages", None, &turn(&[&format!("other {n}")]))
            .await;
    }
    let u = used(&env);
    let convo: Vec<&String> = u.iter().step_by(2).collect();
    assert!(convo.iter().all(|k| *k == convo[0]), "{u:?}");
    // Round-robin gives the new conversations in between the other credential.
    assert!(u.iter().skip(1).step_by(2).all(|k| k != convo[0]), "{u:?}");
    let first = convo[0].clone();
    // Its credential cools down: the conversation moves, and succeeds.
    env.sim_state().set_account(
        &first,
        Account {
            rate_limited_until: until(30),
            ..Account::default()
        },
    );
    let texts = [
        "plan a trip",
        "ok",
        "to Rome",
        "sure",
        "in May",
        "fine",
        "go",
    ];
    let r = env.post("/v1/messages", None, &turn(&texts)).await;
    assert_eq!(r.status(), 200);
    assert_ne!(used(&env).last().unwrap(), &first);
}

fn haiku_only_first(s: &mut Settings) {
    let mut a = entry("haiku", KEY_A);
    a.models = vec!["claude-haiku-*".to_owned()];
    s.credentials.pool = vec![a, entry("b", KEY_B)];
}

fn haiku_only(s: &mut Settings) {
    let mut a = entry("haiku", KEY_A);
    a.models = vec!["claude-haiku-*".to_owned()];
    s.credentials.pool = vec![a];
}

/// Model patterns: a credential serves only the models it lists; none left → 403.
#[tokio::test]
async fn model_patterns_choose_the_credential() {
    let env = pool_env(haiku_only_first).await;
    let ask = |model: &str| json!({"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]});
    env.post("/v1/messages", None, &ask("claude-haiku-4-5"))
        .await;
    env.post("/v1/messages", None, &ask("claude-sonnet-4-5"))
        .await;
    assert_eq!(used(&env), [KEY_A, KEY_B]);

    let env = pool_env(haiku_only).await;
    let r = env
        .post("/v1/messages", None, &ask("claude-sonnet-4-5"))
        .await;
    assert_eq!(r.status(), 403);
    let v = json_of(r).await;
    assert_anthropic_error(&v, "permission_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-haiku-*"),
        "{v}"
    );
    assert!(used(&env).is_empty());
}

async fn subscription_env(tweak: Option<fn(&mut Settings)>, api_key: bool) -> TestEnv {
    TestEnv::start(Opts {
        api_key: api_key.then_some(API_KEY),
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 3_600_000)),
        tweak,
        ..Opts::default()
    })
    .await
}

fn overage(reset_in: u64) -> Account {
    Account {
        unified: Some(UnifiedScript {
            status: Some("allowed".into()),
            representative_claim: Some("overage".into()),
            five_hour_utilization: Some(1.0),
            seven_day_utilization: Some(0.4),
            five_hour_reset: until(reset_in),
            overage_status: Some("allowed".into()),
            ..UnifiedScript::default()
        }),
        ..Account::default()
    }
}

/// plan_limits_only (the default): once the subscription reports serving from extra usage, it
/// serves nothing more until its plan window resets — the API key takes over; with no other
/// credential, a 429 names the reset and the setting.
#[tokio::test]
async fn plan_limits_guard_stops_extra_usage() {
    let env = subscription_env(None, true).await;
    env.sim_state().set_account(OAUTH_TOKEN, overage(3000));
    assert_eq!(
        env.post("/v1/messages", None, &body("", "one"))
            .await
            .status(),
        200
    );
    assert_eq!(
        env.post("/v1/messages", None, &body("", "two"))
            .await
            .status(),
        200
    );
    assert_eq!(used(&env), [OAUTH_TOKEN, API_KEY]);
    // Each usage row says what it was billed to.
    let rows = crate::usage::rows(&env, 2).await;
    let buckets: Vec<_> = rows.iter().map(|r| r.bucket.as_deref()).collect();
    assert_eq!(buckets, [Some("extra_usage"), Some("api")], "{rows:?}");
    let h = health(&env).await;
    let sub = member(&h, "server_oauth");
    assert_eq!(sub["state"], "extra_usage", "{sub}");
    assert_eq!(sub["unified"]["five_hour_utilization"], 1.0);
    assert_eq!(sub["unified"]["representative_claim"], "overage");

    let env = subscription_env(None, false).await;
    env.sim_state().set_account(OAUTH_TOKEN, overage(3000));
    env.post("/v1/messages", None, &body("", "one")).await;
    let r = env.post("/v1/messages", None, &body("", "two")).await;
    assert_eq!(r.status(), 429);
    let v = json_of(r).await;
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("plan_limits_only"), "{msg}");
    assert_eq!(
        used(&env),
        [OAUTH_TOKEN],
        "the second never reached the upstream"
    );
}

fn allow_extra_usage(s: &mut Settings) {
    s.credentials.plan_limits_only = false;
}

/// With plan_limits_only = false, the subscription keeps serving from extra usage.
#[tokio::test]
async fn extra_usage_allowed_when_asked() {
    let env = subscription_env(Some(allow_extra_usage), true).await;
    env.sim_state().set_account(OAUTH_TOKEN, overage(3000));
    env.post("/v1/messages", None, &body("", "one")).await;
    env.post("/v1/messages", None, &body("", "two")).await;
    assert_eq!(used(&env), [OAUTH_TOKEN, OAUTH_TOKEN]);
}

/// Within its plan's limits a subscription's requests are billed to the plan.
#[tokio::test]
async fn subscription_requests_are_billed_to_the_plan() {
    let env = subscription_env(None, true).await;
    env.post("/v1/messages", None, &body("", "one")).await;
    let rows = crate::usage::rows(&env, 1).await;
    assert_eq!(rows[0].credential.as_deref(), Some("server_oauth"));
    assert_eq!(rows[0].bucket.as_deref(), Some("plan"), "{rows:?}");
}

/// A subscription whose third-party use needs extra usage (400) hands the request to the API key.
#[tokio::test]
async fn extra_usage_refusal_moves_to_the_api_key() {
    let env = subscription_env(None, true).await;
    env.sim_state().set_account(
        OAUTH_TOKEN,
        Account {
            extra_usage_required: true,
            ..Account::default()
        },
    );
    let r = env
        .post("/openai/v1/chat/completions", None, &body("/openai/", "hi"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(used(&env), [OAUTH_TOKEN, API_KEY]);
    assert_eq!(
        member(&health(&env).await, "server_oauth")["state"],
        "extra_usage"
    );
}

/// `/metrics` has a gauge per credential; `/health` and `/metrics` carry no secret.
#[tokio::test]
async fn metrics_per_credential() {
    let env = subscription_env(None, true).await;
    let mut a = overage(3000);
    a.unified.as_mut().unwrap().representative_claim = Some("five_hour".into());
    env.sim_state().set_account(OAUTH_TOKEN, a);
    env.post("/v1/messages", None, &body("", "one")).await;
    let text = env
        .client
        .get(env.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"ccproxy_credential_available{credential="server_oauth"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ccproxy_credential_utilization{credential="server_oauth",window="5h"} 1"#)
    );
    assert!(text.contains(r#"ccproxy_credential_available{credential="server_api_key"} 1"#));
    for secret in [OAUTH_TOKEN, API_KEY, REFRESH_TOKEN] {
        assert!(!text.contains(secret));
        assert!(!health(&env).await.to_string().contains(secret));
    }
}

fn two_keys_least_loaded(s: &mut Settings) {
    two_keys(s);
    s.credentials.routing = Routing::LeastLoaded;
}

/// least-loaded: a credential busy with a stream is passed over for a new conversation; the
/// stream counts as in flight until it ends.
#[tokio::test]
async fn least_loaded_counts_streams_in_flight() {
    let env = pool_env(two_keys_least_loaded).await;
    let mut slow = body("", "slow [sim:gap=30] [sim:deltas=40]");
    slow["stream"] = json!(true);
    let resp = env.post("/v1/messages", None, &slow).await;
    assert_eq!(resp.status(), 200);
    let h = health(&env).await;
    assert_eq!(member(&h, "a")["in_flight"], 1, "{h}");
    env.post("/v1/messages", None, &body("", "quick")).await;
    assert_eq!(used(&env), [KEY_A, KEY_B]);
    resp.text().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(member(&health(&env).await, "a")["in_flight"], 0);
}

/// The implicit pool (subscription + `api_key`, no `[[credentials]]`) keeps today's precedence:
/// the subscription's own 429 is the answer, and the paid key never silently replaces it.
#[tokio::test]
async fn the_implicit_pool_does_not_fail_over_to_the_paid_key() {
    let env = subscription_env(None, true).await;
    env.sim_state().set_account(
        OAUTH_TOKEN,
        Account {
            rate_limited_until: until(60),
            ..Account::default()
        },
    );
    for text in ["one", "two"] {
        let r = env.post("/v1/messages", None, &body("", text)).await;
        assert_eq!(r.status(), 429);
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (58..=60).contains(&wait),
            "the upstream's own retry-after: {wait}"
        );
    }
    assert_eq!(used(&env), [OAUTH_TOKEN, OAUTH_TOKEN]);
    // Minimal mode uses the key as always.
    let r = env.post("/min/v1/messages", None, &body("", "three")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(used(&env).last().unwrap(), API_KEY);
}
