//! The h2c upstream leg (`upstream_h2c`, `upstream::h2c`: HTTP/2 with prior knowledge, driven on
//! h2 directly): a streamed upload goes through with its length, a stream the client abandons
//! is reset upstream and its connection carries on, connections the upstream ends are replaced,
//! and an upstream that is not there is a 502 in the client's dialect.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::api2026::{multipart, upload};
use crate::support::*;

fn h2c(s: &mut ccproxy::config::Settings) {
    s.upstream.h2c = true;
}

/// A multipart upload larger than the body limit (so it is streamed through) and than the
/// simulator's HTTP/2 windows (hyper's 1 MiB: the upload waits on the server's flow control).
#[tokio::test]
async fn a_streamed_upload_goes_through_whole_and_with_its_length() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| {
            h2c(s);
            s.limits.max_body_bytes = 64 * 1024;
        }),
        ..Opts::default()
    })
    .await;
    let data: Vec<u8> = (0..1536 * 1024).map(|i| (i * 7 % 253) as u8).collect();
    let body = multipart("big.bin", "application/octet-stream", &data);
    for prefix in ["", "/pt"] {
        env.sim_state().clear_requests();
        let resp = upload(&env, prefix, body.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{prefix}");
        let meta: Value = resp.json().await.unwrap();
        assert_eq!(meta["size_bytes"], data.len(), "{prefix}: {meta}");
        let up = env.sim_state().last_request().unwrap();
        assert_eq!(up.body.as_ref(), body.as_slice(), "{prefix}");
        assert_eq!(
            up.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{prefix}"
        );
    }
}

/// A client that goes away mid-stream: the upstream stream is reset (the simulator sees it
/// cancelled, not completed), and the next requests go through on the leg as before.
#[tokio::test]
async fn an_abandoned_stream_is_reset_upstream_and_the_leg_carries_on() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| {
            h2c(s);
            s.server.workers = 1;
        }),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post(
            "/pt/v1/messages",
            None,
            &message("[sim:gap=50] [sim:deltas=200]", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let state = env.sim_state();
    let cancelled = wait_until(Duration::from_secs(5), || {
        state.streams_cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(cancelled.is_some(), "the upstream stream was not cancelled");
    assert_eq!(state.streams_completed.load(Ordering::SeqCst), 0);
    // Every lane of the one serving thread (8) and more: all answered.
    for i in 0..12 {
        let resp = env
            .post("/pt/v1/messages", None, &message("hi", i % 2 == 0))
            .await;
        assert_eq!(resp.status(), 200, "request {i}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("message"), "request {i}: {text}");
    }
}

/// An h2c upstream written here that answers one request on each connection and then ends it
/// (GOAWAY, then close): the proxy's next requests open new connections instead of failing on
/// ended ones.
#[tokio::test]
async fn connections_the_upstream_ends_are_replaced() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                if let Some(Ok((req, mut respond))) = conn.accept().await {
                    let mut body = req.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let resp = axum::http::Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(())
                        .unwrap();
                    if let Ok(mut send) = respond.send_response(resp, false) {
                        let _ = send.send_data(Bytes::from_static(ANSWER.as_bytes()), true);
                    }
                }
                conn.graceful_shutdown();
                while conn.accept().await.is_some() {}
            });
        }
    });
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(url),
        tweak: Some(|s| {
            h2c(s);
            s.server.workers = 1;
        }),
        ..Opts::default()
    })
    .await;
    // More requests than the serving thread's lanes (8): the later ones find their lane's
    // connection ended.
    for i in 0..12 {
        let resp = env
            .post("/pt/v1/messages", None, &message("hi", false))
            .await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(json_of(resp).await["id"], "msg_h2", "request {i}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 12);
    server.abort();
}

const ANSWER: &str = r#"{"id":"msg_h2","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}"#;

/// Nothing listens where the upstream should be: a 502 in each dialect, not a hang.
#[tokio::test]
async fn an_upstream_that_is_not_there_is_a_502_in_the_clients_dialect() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(format!("http://127.0.0.1:{port}")),
        tweak: Some(h2c),
        ..Opts::default()
    })
    .await;
    for stream in [false, true] {
        let resp = env.post("/v1/messages", None, &message("hi", stream)).await;
        assert_eq!(resp.status(), 502);
        let v = json_of(resp).await;
        assert_anthropic_error(&v, "api_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("upstream unreachable"), "{v}");
        let resp = env
            .post("/openai/v1/chat/completions", None, &chat("hi", stream))
            .await;
        assert_eq!(resp.status(), 502);
        let v = json_of(resp).await;
        assert_openai_error(&v, "server_error");
        assert_eq!(v["error"]["code"], "upstream_unreachable");
    }
}

/// A streamed upload whose answer's head does not come within the header timeout: the client
/// gets its 504, and the upstream sees the stream reset (CANCEL) instead of an upload that goes
/// on, waiting on flow control, with no one left to read its answer. The upstream here never
/// answers and never gives back window, so the upload stops at its first window.
#[tokio::test]
async fn an_upload_whose_answer_times_out_is_reset_upstream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((req, respond))) = conn.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let _held = respond;
                        let mut body = req.into_body();
                        let mut got = 0;
                        let end = loop {
                            match body.data().await {
                                Some(Ok(chunk)) => got += chunk.len(),
                                Some(Err(e)) => break e.reason(),
                                None => break None,
                            }
                        };
                        let _ = seen.send((got, end));
                    });
                }
            });
        }
    });
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(url),
        upstream_timeout: Some(Duration::from_secs(1)),
        tweak: Some(h2c),
        ..Opts::default()
    })
    .await;
    let data = vec![7u8; 2 << 20];
    let resp = upload(
        &env,
        "/pt",
        multipart("big.bin", "application/octet-stream", &data),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 504);
    let (got, end) = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
        .await
        .expect("the upstream stream was neither reset nor ended")
        .unwrap();
    assert_eq!(end, Some(h2::Reason::CANCEL), "after {got} bytes");
    assert!(got < data.len(), "{got}");
    server.abort();
}
