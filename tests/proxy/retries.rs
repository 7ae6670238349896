//! Optional retries: only before the first byte, only for connection failures,
//! 529 and (when enabled) 429, honouring retry-after.

use crate::support::*;

#[tokio::test]
async fn no_retries_by_default() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post("/v1/messages", None, &message("[sim:flaky=1:529]", false))
        .await;
    assert_eq!(resp.status(), 529);
    assert_eq!(env.upstream_messages(), 1);
}

async fn retries_529_then_succeeds(mode: &str, stream: bool) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.retries.max_retries = 2),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(
            &format!("{mode}/v1/messages"),
            None,
            &message("[sim:flaky=2:529] 0", stream),
        )
        .await;
    assert_eq!(resp.status(), 200, "{mode}");
    resp.bytes().await.unwrap();
    assert_eq!(env.upstream_messages(), 3, "two failures and a success");
    // More failures than retries: the last error reaches the client.
    let resp = env
        .post("/v1/messages", None, &message("[sim:flaky=5:529] x", false))
        .await;
    assert_eq!(resp.status(), 529);
    assert_eq!(env.upstream_messages(), 6);
}

cases!(retries_529_then_succeeds {
    full: ("", false),
    min_stream: ("/min", true),
    pt: ("/pt", false),
});

#[tokio::test]
async fn never_retries_other_4xx_and_429_only_when_enabled() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.retries.max_retries = 3),
        ..Opts::default()
    })
    .await;
    for status in [400, 401, 403, 404, 429] {
        let resp = env
            .post(
                "/v1/messages",
                None,
                &message(&format!("[sim:flaky=1:{status}]"), false),
            )
            .await;
        assert_eq!(resp.status().as_u16(), status);
    }
    assert_eq!(env.upstream_messages(), 5);

    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| {
            s.retries.max_retries = 3;
            s.retries.on_429 = true;
            s.retries.max_wait = std::time::Duration::from_secs(2);
        }),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post("/v1/messages", None, &message("[sim:flaky=1:429]", false))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(env.upstream_messages(), 2);
    // retry-after (7 s) longer than the maximum wait: not retried.
    let resp = env
        .post("/v1/messages", None, &message("[sim:status=429]", false))
        .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(env.upstream_messages(), 3);
}

#[tokio::test]
async fn connection_failures_are_retried_then_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(format!("http://{dead}")),
        tweak: Some(|s| s.retries.max_retries = 2),
        ..Opts::default()
    })
    .await;
    let t0 = std::time::Instant::now();
    let resp = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(resp.status(), 502);
    // Two backoffs of at least 125 ms and 250 ms happened.
    assert!(t0.elapsed() >= std::time::Duration::from_millis(375));
}
