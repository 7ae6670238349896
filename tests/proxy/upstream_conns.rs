//! The upstream leg's own connections (`upstream::h1`, a plain `http://` upstream): kept and
//! reused across requests and streams, an idle one the upstream closed is not used (the request
//! goes on a fresh one), and one whose answer a client abandoned is closed, not reused. Against a
//! raw HTTP/1.1 upstream written here, which counts the connections it accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const ANSWER: &str = r#"{"id":"msg_raw","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}"#;

/// A 200 answer that is not a message (`content` is not a list) but carries usage.
const MALFORMED: &str = r#"{"id":"msg_raw","type":"message","model":"claude-sonnet-4-5","content":"oops","usage":{"input_tokens":7,"output_tokens":4}}"#;

/// How the raw upstream treats a connection after an answer.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Keeps it open for the next request.
    KeepAlive,
    /// Closes it after this long without a request (no `Connection: close`: the proxy learns of
    /// it only from the socket).
    CloseIdleAfter(Duration),
}

struct RawUpstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    /// Connections closed by their peer (the proxy) while the upstream was still sending.
    cut: Arc<AtomicUsize>,
}

/// An HTTP/1.1 upstream: `POST /v1/messages` answers [`ANSWER`] ([`MALFORMED`] when the body
/// contains `malformed-answer`); with a body containing
/// `short-stream`, a whole chunked event stream; with `slow-stream`, one SSE event and then
/// nothing for 30 s.
async fn raw_upstream(after: AfterAnswer) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let cut = Arc::new(AtomicUsize::new(0));
    let (a, c) = (accepted.clone(), cut.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s, after, c.clone()));
        }
    });
    RawUpstream { url, accepted, cut }
}

async fn serve(mut s: TcpStream, after: AfterAnswer, cut: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then `content-length` bytes.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = match after {
                AfterAnswer::CloseIdleAfter(d) => {
                    match tokio::time::timeout(d, s.read(&mut chunk)).await {
                        Ok(r) => r,
                        Err(_) => return, // idle too long: closed
                    }
                }
                AfterAnswer::KeepAlive => s.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
        buf.drain(..head_end + len);
        if body.contains("slow-stream") {
            let event = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_raw\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n";
            let out = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                event.len()
            );
            if s.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            // Nothing more; a peer that goes away is seen as a read of 0 (or an error).
            let mut chunk = [0u8; 64];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_secs(30), s.read(&mut chunk)).await
            {
                cut.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        if body.contains("short-stream") {
            let events = [
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_raw\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":1}}\n\n",
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ];
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for e in events {
                out.push_str(&format!("{:x}\r\n{e}\r\n", e.len()));
            }
            out.push_str("0\r\n\r\n");
            if s.write_all(out.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let answer = if body.contains("malformed-answer") {
            MALFORMED
        } else {
            ANSWER
        };
        let out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nrequest-id: req_raw\r\n\r\n{answer}",
            answer.len()
        );
        if s.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn proxy_to(upstream: &RawUpstream) -> TestEnv {
    TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(upstream.url.clone()),
        ..Opts::default()
    })
    .await
}

fn message(text: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 16,
        "stream": stream,
        "messages": [{"role": "user", "content": text}]
    })
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let up = raw_upstream(AfterAnswer::KeepAlive).await;
    let env = proxy_to(&up).await;
    for base in ["/pt", "/min", ""] {
        for i in 0..10 {
            let resp = env
                .post(&format!("{base}/v1/messages"), None, &message("hi", false))
                .await;
            assert_eq!(resp.status(), 200, "{base} request {i}");
            let v = json_of(resp).await;
            assert_eq!(v["id"], "msg_raw", "{base} request {i}: {v}");
        }
    }
    for base in ["/pt", ""] {
        for i in 0..5 {
            let resp = env
                .post(
                    &format!("{base}/v1/messages"),
                    None,
                    &message("short-stream", true),
                )
                .await;
            assert_eq!(resp.status(), 200, "{base} stream {i}");
            let text = resp.text().await.unwrap();
            assert!(text.contains("message_stop"), "{base} stream {i}: {text}");
        }
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "30 sequential requests and 10 streams should share one upstream connection"
    );
    // Concurrent requests open more, and those go back to the pool too.
    let hi = message("hi", false);
    let all = (0..8).map(|_| env.post("/pt/v1/messages", None, &hi));
    for resp in futures_util::future::join_all(all).await {
        assert_eq!(resp.status(), 200);
        json_of(resp).await;
    }
    let after_burst = up.accepted.load(Ordering::SeqCst);
    assert!((2..=8).contains(&after_burst), "{after_burst} connections");
    for _ in 0..10 {
        let resp = env
            .post("/pt/v1/messages", None, &message("hi", false))
            .await;
        assert_eq!(resp.status(), 200);
        json_of(resp).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), after_burst);
}

#[tokio::test]
async fn idle_connections_the_upstream_closed_are_not_used() {
    let up = raw_upstream(AfterAnswer::CloseIdleAfter(Duration::from_millis(100))).await;
    let env = proxy_to(&up).await;
    for i in 0..5 {
        let resp = env.post("/v1/messages", None, &message("hi", false)).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(json_of(resp).await["id"], "msg_raw");
        // The upstream closes the idle connection meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_connection_whose_answer_was_abandoned_is_closed_not_reused() {
    let up = raw_upstream(AfterAnswer::KeepAlive).await;
    let env = proxy_to(&up).await;
    for base in ["/pt", ""] {
        let mut resp = env
            .post(
                &format!("{base}/v1/messages"),
                None,
                &message("slow-stream", true),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.unwrap().expect("the first event");
        assert!(
            String::from_utf8_lossy(&first).contains("message_start"),
            "{first:?}"
        );
        drop(resp);
    }
    // Each abandoned answer's upstream connection is closed (the upstream sees its peer go)...
    let cut = &up.cut;
    assert!(
        wait_until(Duration::from_secs(5), || cut.load(Ordering::SeqCst) == 2)
            .await
            .is_some(),
        "{} of 2 abandoned upstream connections closed",
        cut.load(Ordering::SeqCst)
    );
    // ... and the next request opens a fresh one.
    let resp = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json_of(resp).await["id"], "msg_raw");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

/// A converted answer is metered from the message the proxy read to convert it (no tap reads
/// the body again); one that is not a message is still metered from its bytes (the upstream
/// billed it), and the client gets a 502 in its dialect.
#[tokio::test]
async fn converted_answers_are_metered_even_when_they_cannot_be_converted() {
    let up = raw_upstream(AfterAnswer::KeepAlive).await;
    let env = proxy_to(&up).await;
    let chat = |text: &str| serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]});
    let responses = |text: &str| serde_json::json!({"model": "gpt-4o", "input": text});
    let cases = [
        ("/openai/v1/chat/completions", chat("hi"), 200, (3, 1)),
        ("/openai/v1/responses", responses("hi"), 200, (3, 1)),
        (
            "/openai/v1/chat/completions",
            chat("malformed-answer"),
            502,
            (7, 4),
        ),
        (
            "/openai/v1/responses",
            responses("malformed-answer"),
            502,
            (7, 4),
        ),
    ];
    for (i, (path, body, status, _)) in cases.iter().enumerate() {
        let resp = env.post(path, None, body).await;
        assert_eq!(resp.status(), *status, "{path}");
        let v = json_of(resp).await;
        if *status == 200 {
            let text = v.to_string();
            assert!(
                text.contains(r#""text":"hi""#) || text.contains(r#""content":"hi""#),
                "{v}"
            );
        } else {
            // OpenAI's envelope: `error.type`, no top-level `type` (Anthropic's).
            assert!(
                v["error"]["type"].is_string() && v.get("type").is_none(),
                "{v}"
            );
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("not a valid message"),
                "{path}: {v}"
            );
        }
        let rows = crate::usage::rows(&env, i + 1).await;
        let row = &rows[i];
        assert_eq!(row.status, *status, "{path}: {row:?}");
        assert_eq!(
            (row.tokens.input, row.tokens.output),
            cases[i].3,
            "{path}: {row:?}"
        );
        assert!(row.ttft_ms.is_some(), "{path}: {row:?}");
    }
}

/// An HTTP/2 upstream that allows 2 streams per connection (the sim's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`), and more endless streams at once than the h2c leg's first
/// connections can carry: every stream starts, on connections opened for them, instead of
/// waiting for a stream to end (which these never do). The proxy's own cap is left at its
/// default (100): the lanes follow what the server announced.
#[tokio::test]
async fn streams_past_an_h2_servers_stream_limit_go_on_another_connection() {
    endless_h2c_streams_all_start(Some(2), false).await;
}

/// The same with a server that announces no limit and `upstream_h2_max_streams = 2`: the
/// configured cap spreads the streams.
#[tokio::test]
async fn upstream_h2_max_streams_caps_the_streams_on_one_connection() {
    endless_h2c_streams_all_start(None, true).await;
}

/// `capped`: `upstream_h2_max_streams = 2` (else the default, 100).
async fn endless_h2c_streams_all_start(server_limit: Option<u32>, capped: bool) {
    let sim = ccproxy::sim::start_with("127.0.0.1:0".parse().unwrap(), true, server_limit)
        .await
        .unwrap();
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(sim.url()),
        upstream_timeout: Some(Duration::from_secs(30)),
        // One serving thread: its lanes are all the proxy's (each thread has 8 of its own).
        tweak: Some(if capped {
            |s| {
                s.server.workers = 1;
                s.upstream.h2c = true;
                s.upstream.h2_max_streams = 2;
            }
        } else {
            |s| {
                s.server.workers = 1;
                s.upstream.h2c = true;
            }
        }),
        ..Opts::default()
    })
    .await;
    // The h2c leg starts with 8 connections: 16 streams fill them.
    let n = 24;
    let endless = message("[sim:endless] [sim:gap=50]", true);
    let (started, _open) = streams_started(n, Duration::from_secs(20), || {
        env.post("/pt/v1/messages", None, &endless)
    })
    .await;
    assert_eq!(
        started, n,
        "streams that started while the others were open"
    );
    assert_eq!(sim.state.requests().len(), n);
    let (metrics, gauge) = scrape(&env.url("/metrics")).await;
    assert_eq!(
        gauge("ccproxy_upstream_streams_per_connection"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(gauge("ccproxy_upstream_lane_requests"), Some(n as f64));
    assert!(gauge("ccproxy_upstream_lanes").unwrap() >= (n / 2) as f64);
}

/// Each serving thread has its own upstream connections (their I/O is its own): two clients
/// served by two threads open one upstream connection each, and each client's next requests
/// reuse its thread's.
#[tokio::test]
async fn each_serving_thread_keeps_its_own_upstream_connections() {
    let up = raw_upstream(AfterAnswer::KeepAlive).await;
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(up.url.clone()),
        tweak: Some(|s| s.server.workers = 2),
        ..Opts::default()
    })
    .await;
    // Two clients, each with one connection: the second goes to the other, idle thread.
    let clients = [reqwest::Client::new(), reqwest::Client::new()];
    let url = env.url("/pt/v1/messages");
    for round in 0..5 {
        for (c, client) in clients.iter().enumerate() {
            let resp = client
                .post(&url)
                .header("anthropic-version", "2023-06-01")
                .json(&message("hi", false))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "client {c}, round {round}");
            assert_eq!(json_of(resp).await["id"], "msg_raw");
        }
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "two serving threads, one upstream connection each"
    );
}
