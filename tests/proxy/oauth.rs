//! Subscription credentials through the running proxy: refresh ahead of expiry,
//! single flight under load, forced refresh after an upstream 401, and a long
//! run across many token lifetimes, all against the simulated token endpoint.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

fn read_creds(env: &TestEnv) -> Value {
    serde_json::from_slice(&std::fs::read(env.credentials_path()).unwrap()).unwrap()
}

fn bearer(up: &ccproxy::sim::RecordedRequest) -> String {
    up.header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn token_about_to_expire_is_refreshed_and_written_back() {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 60_000)),
        ..Opts::default()
    })
    .await;
    // Still valid for a minute: served at once while the refresh runs.
    let resp = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(resp.status(), 200);
    for _ in 0..100 {
        if read_creds(&env)["claudeAiOauth"]["accessToken"] != OAUTH_TOKEN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(env.sim_state().token_calls.load(Ordering::SeqCst), 1);
    let up = env.sim_state().last_request().unwrap();
    let used = bearer(&up);
    assert!(
        used.starts_with("sk-ant-oat01-sim-"),
        "used the refreshed token"
    );

    let creds = read_creds(&env);
    let oauth = &creds["claudeAiOauth"];
    assert_eq!(oauth["accessToken"], used.as_str());
    assert_ne!(oauth["refreshToken"], REFRESH_TOKEN);
    assert!(
        oauth["refreshToken"]
            .as_str()
            .unwrap()
            .starts_with("sk-ant-ort01-sim-")
    );
    assert_eq!(oauth["subscriptionType"], "max");
    assert_eq!(creds["otherTool"]["keep"], true, "unknown keys survive");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(env.credentials_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn two_hundred_requests_at_expiry_share_one_refresh() {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, -1_000)),
        ..Opts::default()
    })
    .await;
    env.sim_state().token_delay_ms.store(300, Ordering::SeqCst);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = env.client.clone();
        let url = env.url("/v1/messages");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .header("anthropic-version", "2023-06-01")
                .json(&message(&format!("request {i}"), i % 2 == 0))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(env.sim_state().token_calls.load(Ordering::SeqCst), 1);
    let tokens: std::collections::HashSet<String> = env
        .sim_state()
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .map(bearer)
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "every request used the one refreshed token"
    );
}

#[tokio::test]
async fn upstream_401_forces_one_refresh_and_one_retry() {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 3_600_000)),
        ..Opts::default()
    })
    .await;
    env.sim_state().revoke(OAUTH_TOKEN);
    for stream in [false, true] {
        env.sim_state().clear_requests();
        let resp = env.post("/v1/messages", None, &message("hi", stream)).await;
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert!(body.contains("simulated upstream") || body.contains("message_stop"));
        let msgs: Vec<_> = env
            .sim_state()
            .requests()
            .into_iter()
            .filter(|r| r.path == "/v1/messages")
            .collect();
        if !stream {
            assert_eq!(msgs.len(), 2, "the rejected request and one retry");
            assert_eq!(bearer(&msgs[0]), OAUTH_TOKEN);
            assert_ne!(bearer(&msgs[1]), OAUTH_TOKEN);
        } else {
            assert_eq!(msgs.len(), 1, "the refreshed token is used from then on");
        }
    }
    assert_eq!(env.sim_state().token_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refresh_rejected_before_expiry_keeps_serving_with_current_token() {
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(
            OAUTH_TOKEN,
            "sk-ant-ort01-invalid-for-sure",
            60_000,
        )),
        ..Opts::default()
    })
    .await;
    for _ in 0..3 {
        let resp = env.post("/v1/messages", None, &message("hi", false)).await;
        assert_eq!(resp.status(), 200);
    }
    let used: Vec<String> = env
        .sim_state()
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .map(bearer)
        .collect();
    assert_eq!(used, vec![OAUTH_TOKEN.to_owned(); 3]);
}

#[tokio::test]
async fn long_run_across_many_token_lifetimes_never_fails() {
    // Each issued token lives 2 s; refresh ahead by (at most half the lifetime).
    let env = TestEnv::start(Opts {
        credentials: Some(claude_credentials(OAUTH_TOKEN, REFRESH_TOKEN, 1_500)),
        refresh_skew: Some(Duration::from_secs(1)),
        ..Opts::default()
    })
    .await;
    env.sim_state().token_expires_in.store(2, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    let mut n = 0;
    while tokio::time::Instant::now() < deadline {
        let resp = env
            .post("/v1/messages", None, &message("tick", n % 3 == 0))
            .await;
        assert_eq!(resp.status(), 200, "request {n} failed");
        let _ = resp.bytes().await.unwrap();
        n += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let refreshes = env.sim_state().token_calls.load(Ordering::SeqCst);
    assert!(
        refreshes >= 4,
        "only {refreshes} refreshes in 9 s of 2 s tokens"
    );
    let tokens: std::collections::HashSet<String> = env
        .sim_state()
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/messages")
        .map(bearer)
        .collect();
    assert!(tokens.len() >= 4);
}
