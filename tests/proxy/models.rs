//! `/v1/models` and `/openai/v1/models` in full and minimal mode: the upstream's list fetched
//! with the server's credential, cached, merged with the aliases and known limits; the cached or
//! built-in list when the upstream fails; `POST /api/models/refresh`.

use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::support::*;

/// `/v1/models` requests the simulated upstream received so far.
fn upstream_lists(env: &TestEnv) -> Vec<Option<String>> {
    env.sim_state()
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/models")
        .map(|r| r.query)
        .collect()
}

async fn get(env: &TestEnv, path: &str) -> (u16, String, Value) {
    let resp = env.client.get(env.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    let source = resp
        .headers()
        .get("x-ccproxy-models-source")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, source, json_of(resp).await)
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn fetched_once_then_served_from_the_cache(mode: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| {
            s.model_aliases
                .insert("fast".into(), "claude-haiku-4-5-20251001".into());
        }),
        ..Opts::default()
    })
    .await;
    let (status, source, list) = get(&env, &format!("{mode}/v1/models")).await;
    assert_eq!((status, source.as_str()), (200, "upstream"), "{list}");
    // All of it in one page (the service's default page is 20).
    assert_eq!(upstream_lists(&env), vec![Some("limit=1000".to_owned())]);
    let data = list["data"].as_array().unwrap();
    assert_eq!(data[0]["id"], "claude-sonnet-5");
    assert_eq!(
        data[0]["max_input_tokens"], 1_000_000,
        "the upstream's own figure"
    );
    assert!(data[0]["capabilities"].is_object(), "upstream fields kept");
    assert_eq!(list["has_more"], false);
    // The configured alias is offered, with the limits of the model it stands for; OpenAI's
    // names are not.
    let fast = data.iter().find(|m| m["id"] == "fast").unwrap();
    assert_eq!(fast["max_tokens"], 64_000);
    assert!(!ids(&list).contains(&"gpt-4o".to_owned()));

    // Again, in both dialects: from the cache, nothing upstream.
    let (_, source, again) = get(&env, &format!("{mode}/v1/models")).await;
    assert_eq!(source, "cache");
    assert_eq!(ids(&again), ids(&list));
    let (status, source, openai) = get(&env, &format!("{mode}/openai/v1/models")).await;
    assert_eq!((status, source.as_str()), (200, "cache"));
    let sonnet = openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "claude-sonnet-5")
        .unwrap();
    assert_eq!(sonnet["context_length"], 1_000_000);
    assert_eq!(sonnet["max_completion_tokens"], 128_000);
    assert!(
        ids(&openai).contains(&"gpt-4o".to_owned()),
        "aliases listed"
    );
    assert_eq!(upstream_lists(&env).len(), 1);
}

cases!(fetched_once_then_served_from_the_cache {
    full: (""),
    min: ("/min")
});

#[tokio::test]
async fn upstream_outage_serves_the_last_list_then_the_built_in_one() {
    // Nothing fetched yet: the built-in list.
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.upstream.models_cache = std::time::Duration::ZERO),
        ..Opts::default()
    })
    .await;
    env.sim_state().models_status.store(529, Ordering::Relaxed);
    let (status, source, list) = get(&env, "/v1/models").await;
    assert_eq!((status, source.as_str()), (200, "built-in"), "{list}");
    assert!(ids(&list).contains(&ccproxy::convert::models::DEFAULT_SONNET.to_owned()));
    let (status, source, _) = get(&env, "/openai/v1/models").await;
    assert_eq!((status, source.as_str()), (200, "built-in"));

    // The service is back: its list, fetched every time (no cache).
    env.sim_state().models_status.store(0, Ordering::Relaxed);
    let (_, source, fetched) = get(&env, "/v1/models").await;
    assert_eq!(source, "upstream");
    assert_eq!(ids(&fetched).len(), 5);
    let (_, source, _) = get(&env, "/v1/models").await;
    assert_eq!(source, "upstream");

    // Down again: the last list fetched.
    env.sim_state().models_status.store(500, Ordering::Relaxed);
    let (status, source, list) = get(&env, "/min/v1/models").await;
    assert_eq!((status, source.as_str()), (200, "cache"));
    assert_eq!(ids(&list), ids(&fetched));
}

#[tokio::test]
async fn unreachable_upstream_serves_the_built_in_list() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some("http://127.0.0.1:9".into()),
        ..Opts::default()
    })
    .await;
    let (status, source, list) = get(&env, "/openai/v1/models").await;
    assert_eq!((status, source.as_str()), (200, "built-in"), "{list}");
    assert_eq!(list["object"], "list");
}

#[tokio::test]
async fn a_refused_credential_is_the_answer_not_a_fallback() {
    let env = TestEnv::start(Opts {
        api_key: Some("sk-ant-admin01-not-an-inference-key"),
        ..Opts::default()
    })
    .await;
    let (status, source, body) = get(&env, "/v1/models").await;
    assert_eq!((status, source.as_str()), (401, ""), "{body}");
    assert_eq!(body["type"], "error");
    let (status, _, body) = get(&env, "/openai/v1/models").await;
    assert_eq!(status, 401);
    assert!(is_openai_envelope(&body), "{body}");
}

#[tokio::test]
async fn a_clients_own_key_fetches_its_own_list_every_time() {
    // Minimal mode with no server key: the client's key, and its list is not kept for others.
    let env = TestEnv::start(Opts::default()).await;
    for _ in 0..2 {
        let resp = env
            .client
            .get(env.url("/min/v1/models"))
            .header("x-api-key", CLIENT_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-ccproxy-models-source"], "upstream");
    }
    let lists = env.sim_state().requests();
    let keys: Vec<_> = lists
        .iter()
        .filter(|r| r.path == "/v1/models")
        .map(|r| r.header("x-api-key"))
        .collect();
    assert_eq!(keys, vec![Some(CLIENT_KEY), Some(CLIENT_KEY)]);
}

#[tokio::test]
async fn passthrough_relays_the_upstream_page_as_it_is() {
    let env = TestEnv::with_api_key().await;
    let (status, source, list) = get(&env, "/pt/v1/models?limit=2").await;
    assert_eq!((status, source.as_str()), (200, ""));
    assert_eq!(ids(&list).len(), 2);
    assert_eq!(list["has_more"], true);
    assert_eq!(upstream_lists(&env), vec![Some("limit=2".to_owned())]);
}

#[tokio::test]
async fn api_refresh_fetches_again_and_needs_the_admin_token() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Opts::default()
    })
    .await;
    let refresh = |token: Option<&'static str>| {
        let mut req = env.client.post(env.url("/api/models/refresh"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(refresh(None).await.unwrap().status(), 401);
    assert!(upstream_lists(&env).is_empty());
    for n in 1..=2 {
        let resp = refresh(Some(PROXY_TOKEN)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-ccproxy-models-source"], "upstream");
        assert_eq!(ids(&json_of(resp).await).len(), 5);
        assert_eq!(upstream_lists(&env).len(), n, "fetched again each time");
    }
    // Proxied requests then use the refreshed cache.
    let resp = env
        .client
        .get(env.url("/v1/models"))
        .bearer_auth(PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-ccproxy-models-source"], "cache");
    let resp = env
        .client
        .get(env.url("/api/models/refresh"))
        .bearer_auth(PROXY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}
