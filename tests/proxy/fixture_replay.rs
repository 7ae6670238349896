//! Replays real recorded Anthropic exchanges (`../shared/fixtures/anthropic/`)
//! from a loopback upstream and checks that the proxy relays them byte for byte.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::support::*;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::Value;

const NAMES: &[&str] = &[
    "messages",
    "messages_stream",
    "messages_tools",
    "messages_tools_stream",
];

fn fixture_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/anthropic/").to_owned()
}

struct Fixture {
    request: Value,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn load(name: &str) -> Fixture {
    let dir = fixture_dir();
    let request: Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}{name}.request.json")).unwrap())
            .unwrap();
    let meta: Value =
        serde_json::from_slice(&std::fs::read(format!("{dir}{name}.meta.json")).unwrap()).unwrap();
    let body = std::fs::read(format!("{dir}{name}.sse"))
        .or_else(|_| std::fs::read(format!("{dir}{name}.response.json")))
        .unwrap();
    let headers = meta["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| !["transfer-encoding", "connection"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    Fixture {
        request,
        status: meta["status"].as_u64().unwrap() as u16,
        headers,
        body,
    }
}

/// An upstream that answers each request with the recorded response whose
/// request body matches, sent in small pieces to exercise chunk boundaries.
async fn replay_upstream() -> SocketAddr {
    let fixtures: Arc<Vec<Fixture>> = Arc::new(NAMES.iter().map(|n| load(n)).collect());
    async fn handler(State(fx): State<Arc<Vec<Fixture>>>, req: Request) -> Response {
        let body = axum::body::to_bytes(req.into_body(), 1 << 24)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // Full mode adds a system block: compare without it.
        let mut v2 = v.clone();
        if let Some(o) = v2.as_object_mut() {
            o.remove("system");
        }
        let Some(f) = fx.iter().find(|f| f.request == v || f.request == v2) else {
            return Response::builder().status(418).body(Body::empty()).unwrap();
        };
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
            f.body.chunks(37).map(|c| Ok(c.to_vec())).collect();
        let mut resp = Response::new(Body::from_stream(futures_util::stream::iter(pieces)));
        *resp.status_mut() = StatusCode::from_u16(f.status).unwrap();
        for (k, v) in &f.headers {
            resp.headers_mut().insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        resp
    }
    let app = axum::Router::new()
        .route("/v1/messages", axum::routing::post(handler))
        .with_state(fixtures);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn recorded_exchanges_relay_byte_for_byte_in_every_mode(mode: &str) {
    let upstream = replay_upstream().await;
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(format!("http://{upstream}")),
        ..Opts::default()
    })
    .await;
    for name in NAMES {
        let f = load(name);
        let resp = env
            .post(&format!("{mode}/v1/messages"), None, &f.request)
            .await;
        assert_eq!(resp.status().as_u16(), f.status, "{name} {mode}");
        for (k, v) in &f.headers {
            if k.starts_with("anthropic-ratelimit") || k == "content-type" {
                assert_eq!(resp.headers()[k.as_str()], v.as_str(), "{name} {mode} {k}");
            }
        }
        // Read it as the stream it is, then compare the bytes.
        let mut got = Vec::new();
        let mut s = resp.bytes_stream();
        while let Some(chunk) = s.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&f.body),
            "{name} through {mode:?}"
        );
    }
}

cases!(recorded_exchanges_relay_byte_for_byte_in_every_mode {
    pt: ("/pt"),
    min: ("/min"),
    full: ("")
});
