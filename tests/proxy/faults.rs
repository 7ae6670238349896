//! Upstream and client faults, and the request limits, through real sockets:
//! each test asserts exactly what the client sees, in both dialects where the
//! fault applies, one named case per mode × dialect (`anthropic_min`,
//! `openai_full`, …). Faults come from the simulated upstream's fault markers
//! (`src/sim/faults.rs`) or from a dead / mute upstream port.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The (path, body, dialect-is-openai) of a request with `text` under `base`:
/// `""`, `/min`, `/pt` are the Anthropic modes (`/v1/messages`); `/openai`,
/// `/min/openai`, `/pt/openai` the OpenAI ones (`/v1/chat/completions`).
fn route(base: &str, text: &str, stream: bool) -> (String, Value, bool) {
    if base.ends_with("/openai") {
        (
            format!("{base}/v1/chat/completions"),
            chat(text, stream),
            true,
        )
    } else {
        (format!("{base}/v1/messages"), message(text, stream), false)
    }
}

// ---------------------------------------------------------------- connection faults

async fn refused_connection_is_502_in_the_clients_dialect(base: &str) {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(format!("http://{dead}")),
        ..Opts::default()
    })
    .await;
    for stream in [false, true] {
        let (path, body, openai) = route(base, "hi", stream);
        let t0 = Instant::now();
        let resp = env.post(&path, None, &body).await;
        assert_eq!(resp.status(), 502, "{path}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{path}");
        let v = json_of(resp).await;
        if openai {
            assert_openai_error(&v, "server_error");
            assert_eq!(v["error"]["code"], "upstream_unreachable");
        } else {
            assert_anthropic_error(&v, "api_error");
        }
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("upstream unreachable"),
            "{v}"
        );
    }
}

cases!(refused_connection_is_502_in_the_clients_dialect {
    anthropic_full: (""),
    anthropic_min: ("/min"),
    anthropic_pt: ("/pt"),
    openai_full: ("/openai"),
    openai_min: ("/min/openai"),
    openai_pt: ("/pt/openai"),
});

/// `streams`: whether the delayed request is sent without and with `stream`.
async fn upstream_that_never_sends_headers_is_504(base: &str, streams: &[bool]) {
    // Two kinds of mute upstream: the simulated one waiting before its head, and
    // a socket that accepts connections and never answers at all.
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_timeout: Some(Duration::from_millis(300)),
        ..Opts::default()
    })
    .await;
    for &stream in streams {
        let (path, body, openai) = route(base, "[sim:delay=5000]", stream);
        let t0 = Instant::now();
        let resp = env.post(&path, None, &body).await;
        assert_eq!(resp.status(), 504, "{path}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{path}");
        let v = json_of(resp).await;
        if openai {
            assert_openai_error(&v, "server_error");
            assert_eq!(v["error"]["code"], "upstream_timeout");
        } else {
            assert_anthropic_error(&v, "api_error");
        }
    }
    // The abandoned upstream requests were cancelled, not left running.
    let n = env.upstream_messages() as u64;
    let cancelled = &env.sim_state().requests_cancelled;
    assert!(
        wait_until(Duration::from_secs(2), || cancelled.load(Ordering::SeqCst)
            == n)
        .await
        .is_some(),
        "{} of {n} delayed upstream requests cancelled",
        cancelled.load(Ordering::SeqCst)
    );

    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            conns.push(s);
        }
    });
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_timeout: Some(Duration::from_millis(300)),
        upstream_url: Some(format!("http://{mute_addr}")),
        ..Opts::default()
    })
    .await;
    let (path, body, openai) = route(base, "hi", true);
    let resp = env.post(&path, None, &body).await;
    assert_eq!(resp.status(), 504, "{path}");
    let v = json_of(resp).await;
    assert!(
        if openai {
            is_openai_envelope(&v)
        } else {
            is_anthropic_envelope(&v)
        },
        "{path}: {v}"
    );
    held.abort();
}

// (The simulated OpenAI endpoint behind /pt/openai is not asked to stream a delayed answer.)
cases!(upstream_that_never_sends_headers_is_504 {
    anthropic_full: ("", &[false, true]),
    anthropic_min: ("/min", &[false, true]),
    anthropic_pt: ("/pt", &[false, true]),
    openai_full: ("/openai", &[false, true]),
    openai_min: ("/min/openai", &[false, true]),
    openai_pt: ("/pt/openai", &[false]),
});

async fn reset_mid_body(base: &str) {
    let env = TestEnv::with_api_key().await;
    // Streams: what came is relayed, then an error event (full and minimal,
    // Anthropic) or an error chunk without [DONE] (OpenAI); the body then ends
    // cleanly. Passthrough invents nothing: the client's response is cut too.
    let (path, body, openai) = route(base, "[sim:reset-midstream]", true);
    let resp = env.post(&path, None, &body).await;
    assert_eq!(resp.status(), 200, "{path}");
    if base == "/pt" {
        let (got, cut) = body_until_cut(resp).await;
        let text = String::from_utf8_lossy(&got);
        assert!(cut, "{path}: the client's response was not cut: {text}");
        assert!(text.contains("content_block_delta"), "{path}: {text}");
        assert!(
            !text.contains("event: error"),
            "{path}: bytes were invented: {text}"
        );
    } else if openai {
        let text = resp.text().await.expect("the client's stream ends cleanly");
        let (chunks, _) = openai_chunks(&text);
        let err = openai_stream_error(&text);
        assert_eq!(err["error"]["type"], "server_error", "{text}");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("upstream connection lost"),
            "{text}"
        );
        assert!(
            !openai_text(&chunks).is_empty(),
            "the first delta was relayed"
        );
    } else {
        let text = resp.text().await.expect("the client's stream ends cleanly");
        let events = parse_sse(&text);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "error"
            ],
            "{path}"
        );
        let (_, err) = events.last().unwrap();
        assert_eq!(err["type"], "error");
        assert_eq!(err["error"]["type"], "api_error");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("upstream connection lost"),
            "{err}"
        );
    }
    let (path, body, openai) = route(base, "[sim:reset-midstream]", false);
    let resp = env.post(&path, None, &body).await;
    assert_eq!(resp.status(), 502, "{path}");
    let v = json_of(resp).await;
    if openai {
        // Non-stream, converted (OpenAI): the proxy reads the whole body first → 502.
        assert_openai_error(&v, "server_error");
    } else {
        // Non-stream, relayed (Anthropic): the proxy reads the whole answer before
        // it answers, so a break mid-body is a clean 502, never a truncated 200.
        assert_eq!(v["type"], "error", "{path}: {v}");
        assert_eq!(v["error"]["type"], "api_error", "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("broke"),
            "{path}: {v}"
        );
    }
    // The proxy is unharmed.
    let resp = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(resp.status(), 200);
}

cases!(reset_mid_body {
    anthropic_full: (""),
    anthropic_min: ("/min"),
    anthropic_pt: ("/pt"),
    openai_full: ("/openai"),
    openai_min: ("/min/openai"),
});

// ---------------------------------------------------------------- stream content faults

async fn silent_upstream_mid_stream_hits_the_idle_timeout(base: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.upstream.stream_idle_timeout = Duration::from_millis(400)),
        ..Opts::default()
    })
    .await;
    let (path, body, openai) = route(base, "[sim:silent=5000]", true);
    let t0 = Instant::now();
    let resp = env.post(&path, None, &body).await;
    assert_eq!(resp.status(), 200, "{path}");
    let (got, cut) = body_until_cut(resp).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{path}: ended after {took:?}"
    );
    // Passthrough cuts the client's response; the other modes end it cleanly
    // with the error of the client's dialect.
    assert_eq!(cut, base == "/pt", "{path}: {text}");
    if base == "/pt" {
        assert!(
            !text.contains("event: error"),
            "{path}: bytes were invented: {text}"
        );
        assert!(text.contains("content_block_delta"), "{path}: {text}");
    } else if openai {
        let err = openai_stream_error(&text);
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains("sent nothing for 0.4 s"), "{msg}");
    } else {
        let events = parse_sse(&text);
        let (name, err) = events.last().unwrap();
        assert_eq!(name, "error", "{text}");
        assert_eq!(err["error"]["type"], "api_error");
        assert!(
            err["error"]["message"]
                .as_str()
                .unwrap()
                .contains("sent nothing for 0.4 s"),
            "{err}"
        );
        assert!(events.iter().any(|(n, _)| n == "content_block_delta"));
    }
    // Silence shorter than the limit is tolerated: the stream completes.
    let (path, body, openai) = route(base, "[sim:silent=150]", true);
    let text = env.post(&path, None, &body).await.text().await.unwrap();
    if openai {
        let (chunks, done) = openai_chunks(&text);
        assert!(
            done && chunks.iter().all(|c| c.get("error").is_none()),
            "{text}"
        );
    } else {
        assert_eq!(parse_sse(&text).last().unwrap().0, "message_stop", "{path}");
    }
}

cases!(silent_upstream_mid_stream_hits_the_idle_timeout {
    anthropic_full: (""),
    anthropic_min: ("/min"),
    anthropic_pt: ("/pt"),
    openai_full: ("/openai"),
    openai_min: ("/min/openai"),
});

async fn stream_without_message_stop(base: &str) {
    let env = TestEnv::with_api_key().await;
    let (path, body, openai) = route(base, "[sim:no-stop]", true);
    let resp = env.post(&path, None, &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    if openai {
        // What came is relayed (the finish reason included), then an error
        // chunk and no [DONE]: the client must not take it for a whole answer.
        let (chunks, _) = openai_chunks(&text);
        let err = openai_stream_error(&text);
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains("message_stop"), "{msg}");
        let finish: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, [&Value::from("stop")], "{text}");
    } else {
        // Relayed as it came: ends after message_delta, nothing invented.
        let events = parse_sse(&text);
        let (name, last) = events.last().unwrap();
        assert_eq!(name, "message_delta", "{path}");
        assert_eq!(last["delta"]["stop_reason"], "end_turn");
        assert!(
            events
                .iter()
                .all(|(n, _)| n != "message_stop" && n != "error")
        );
    }
}

cases!(stream_without_message_stop {
    anthropic_full: (""),
    anthropic_min: ("/min"),
    anthropic_pt: ("/pt"),
    openai_full: ("/openai"),
    openai_min: ("/min/openai"),
});

#[tokio::test]
async fn stream_without_message_stop_still_sends_the_usage_chunk() {
    let env = TestEnv::with_api_key().await;
    // With include_usage: the usage chunk still comes, before the error chunk.
    let mut body = chat("[sim:no-stop]", true);
    body["stream_options"] = serde_json::json!({"include_usage": true});
    let text = env
        .post("/openai/v1/chat/completions", None, &body)
        .await
        .text()
        .await
        .unwrap();
    let (chunks, _) = openai_chunks(&text);
    openai_stream_error(&text);
    let usage = &chunks[chunks.len() - 2]["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{text}");
}

async fn malformed_sse_and_invalid_json_events(base: &str) {
    let env = TestEnv::with_api_key().await;
    for (marker, injected) in [
        ("[sim:malformed-sse]", ccproxy::sim::faults::MALFORMED_SSE),
        ("[sim:bad-json-event]", ccproxy::sim::faults::BAD_JSON_EVENT),
    ] {
        // (The OpenAI request says more after the marker: its text is checked.)
        let text = if base.ends_with("/openai") {
            format!("{marker} hello")
        } else {
            marker.to_owned()
        };
        let (path, body, openai) = route(base, &text, true);
        let resp = env.post(&path, None, &body).await;
        assert_eq!(resp.status(), 200);
        if openai {
            // OpenAI conversion skips what it cannot read and ends properly.
            let text = resp.text().await.unwrap();
            let (chunks, done) = openai_chunks(&text);
            assert!(done, "{text}");
            assert!(chunks.iter().all(|c| c.get("error").is_none()), "{text}");
            assert!(openai_text(&chunks).contains("You said:"), "{text}");
            assert!(!openai_text(&chunks).contains("unterminated"));
            let last_choice = chunks
                .iter()
                .rev()
                .find(|c| !c["choices"][0]["finish_reason"].is_null())
                .unwrap();
            assert_eq!(last_choice["choices"][0]["finish_reason"], "stop");
        } else {
            // Anthropic routes relay the bytes unchanged, in every mode.
            let body = resp.bytes().await.unwrap();
            assert!(
                memchr::memmem::find(&body, injected).is_some(),
                "{path} {marker}: the broken frame was not relayed byte for byte"
            );
            let text = String::from_utf8_lossy(&body);
            assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
        }
    }
    assert_eq!(
        env.post("/v1/messages", None, &message("hi", false))
            .await
            .status(),
        200
    );
}

cases!(malformed_sse_and_invalid_json_events {
    anthropic_full: (""),
    anthropic_min: ("/min"),
    anthropic_pt: ("/pt"),
    openai_full: ("/openai"),
    openai_min: ("/min/openai"),
});

/// `upstream`: the upstream messages the simulated service records for the 6
/// requests (its OpenAI endpoint, behind /pt/openai, records none).
async fn upstream_error_statuses_429_529_500(base: &str, upstream: usize) {
    let env = TestEnv::with_api_key().await;
    for (status, kind, openai_status) in [
        (429u16, "rate_limit_error", 429u16),
        (529, "overloaded_error", 503),
        (500, "api_error", 500),
    ] {
        for stream in [false, true] {
            let (path, body, openai) = route(base, &format!("[sim:status={status}]"), stream);
            let resp = env.post(&path, None, &body).await;
            let want = if openai { openai_status } else { status };
            assert_eq!(resp.status().as_u16(), want, "{path} stream={stream}");
            assert!(
                resp.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "an error before the stream is JSON, not SSE"
            );
            // (The simulated upstream's own OpenAI endpoint, behind /pt/openai,
            // does not send retry-after.)
            if status == 429 && !path.starts_with("/pt/openai") {
                assert_eq!(resp.headers()["retry-after"], "7", "{path}");
            }
            let v = json_of(resp).await;
            if openai {
                let (want_type, want_code) = match status {
                    429 => ("rate_limit_error", Value::from("rate_limit_exceeded")),
                    529 => ("server_error", Value::from("overloaded")),
                    _ => ("server_error", Value::Null),
                };
                assert_openai_error(&v, want_type);
                assert_eq!(v["error"]["code"], want_code, "{path}: {v}");
            } else {
                assert_anthropic_error(&v, kind);
                assert_eq!(v["error"]["message"], format!("Simulated error {status}"));
            }
        }
    }
    // Exactly one upstream request each: no hidden retries by default.
    assert_eq!(env.upstream_messages(), upstream);
}

cases!(upstream_error_statuses_429_529_500 {
    anthropic_full: ("", 3 * 2),
    anthropic_min: ("/min", 3 * 2),
    anthropic_pt: ("/pt", 3 * 2),
    openai_full: ("/openai", 3 * 2),
    openai_min: ("/min/openai", 3 * 2),
    openai_pt: ("/pt/openai", 0),
});

// ---------------------------------------------------------------- client faults

async fn client_disconnect_cancels_the_upstream_within_100ms(base: &str) {
    let env = TestEnv::with_api_key().await;
    // Short gaps (the upstream writes often) and long ones (it is silent when
    // the client leaves): the proxy must notice the client either way. On a
    // loaded machine one attempt may be late; a real delay fails all three.
    for gap in [20, 1000] {
        let (path, body, _) = route(base, &format!("[sim:gap={gap}] [sim:endless]"), true);
        let mut times = Vec::new();
        for _ in 0..3 {
            let cancelled = &env.sim_state().streams_cancelled;
            let before = cancelled.load(Ordering::SeqCst);
            let resp = env.post(&path, None, &body).await;
            assert_eq!(resp.status(), 200);
            let mut stream = resp.bytes_stream();
            stream.next().await.unwrap().unwrap();
            drop(stream);
            let took = wait_until(Duration::from_secs(3), || {
                cancelled.load(Ordering::SeqCst) > before
            })
            .await
            .unwrap_or_else(|| panic!("{path} gap={gap}: upstream never cancelled"));
            times.push(took);
            if took <= Duration::from_millis(100) {
                break;
            }
        }
        assert!(
            times.iter().any(|t| *t <= Duration::from_millis(100)),
            "{path} gap={gap}: upstream cancelled after {times:?}"
        );
    }
}

cases!(client_disconnect_cancels_the_upstream_within_100ms {
    anthropic_full: (""),
    anthropic_min: ("/min"),
    anthropic_pt: ("/pt"),
    openai_full: ("/openai"),
    openai_min: ("/min/openai"),
});

/// Reads from a raw connection until `n` body bytes or more arrived.
async fn read_at_least(s: &mut tokio::net::TcpStream, n: usize) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < n {
        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the stream keeps flowing")
            .unwrap();
        assert!(k > 0, "the stream ended");
        got += k;
    }
    got
}

async fn slow_client_backpressure_reaches_the_upstream(base: &str) {
    let env = TestEnv::with_api_key().await;
    // An endless stream of 16 KiB deltas. The client reads 256 KiB, then stops.
    let (path, body, _) = route(base, "[sim:endless] [sim:delta-size=16384]", true);
    let sent = || env.sim_state().stream_bytes_sent.load(Ordering::SeqCst);
    let start = sent();
    let body = serde_json::to_vec(&body).unwrap();
    let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let read = read_at_least(&mut s, 256 * 1024).await;
    // The client stalls: the upstream must stall too, soon and for good.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let a = sent() - start;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let b = sent() - start;
    assert!(
        b - a <= 2 * 16 * 1024,
        "{path}: the upstream kept sending while the client read nothing ({a} → {b} bytes)"
    );
    assert!(
        b < 48 * 1024 * 1024,
        "{path}: {b} bytes in flight for a client that read {read}: unbounded buffering"
    );
    eprintln!("{path}: client read {read} B; upstream sent {a} B, then {b} B");
    // Reading again resumes the upstream: read more than it had sent.
    read_at_least(&mut s, b as usize + 1024 * 1024 - read).await;
    assert!(sent() - start > b, "{path}: the upstream resumed");
    drop(s);
    // The endless stream was cancelled once its client left.
    let cancelled = &env.sim_state().streams_cancelled;
    assert!(
        wait_until(Duration::from_secs(2), || cancelled.load(Ordering::SeqCst)
            == 1)
        .await
        .is_some()
    );
}

cases!(slow_client_backpressure_reaches_the_upstream {
    anthropic_full: (""),
    openai_full: ("/openai"),
});

// ---------------------------------------------------------------- limits

async fn concurrency_limit_refuses_the_third_request_in_the_clients_dialect(base: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.limits.max_concurrent_requests = 2),
        ..Opts::default()
    })
    .await;
    let (path, body, openai) = route(base, "[sim:delay=700]", false);
    let sends = (0..3).map(|i| {
        let env = &env;
        let path = &path;
        let body = body.clone();
        async move {
            // Stagger so that the two first are surely in flight.
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            env.post(path, None, &body).await
        }
    });
    let resps = futures_util::future::join_all(sends).await;
    let statuses: Vec<u16> = resps.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 200, 503], "{path}");
    let refused = resps.into_iter().nth(2).unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    let v = json_of(refused).await;
    if openai {
        assert_openai_error(&v, "server_error");
        assert_eq!(v["error"]["code"], "overloaded");
    } else {
        assert_anthropic_error(&v, "overloaded_error");
    }
}

cases!(
    concurrency_limit_refuses_the_third_request_in_the_clients_dialect {
        anthropic_full: (""),
        openai_full: ("/openai"),
    }
);

#[tokio::test]
async fn streams_hold_their_concurrency_permit_until_the_body_ends() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.limits.max_concurrent_requests = 2),
        ..Opts::default()
    })
    .await;
    // Streams hold their permit until the body ends; leaving frees it.
    let s1 = env
        .post(
            "/v1/messages",
            None,
            &message("[sim:endless] [sim:gap=50]", true),
        )
        .await;
    let s2 = env
        .post(
            "/v1/messages",
            None,
            &message("[sim:endless] [sim:gap=50]", true),
        )
        .await;
    assert_eq!((s1.status().as_u16(), s2.status().as_u16()), (200, 200));
    let third = env.post("/v1/messages", None, &message("hi", false)).await;
    assert_eq!(third.status(), 503);
    drop(s1);
    let mut ok = false;
    for _ in 0..50 {
        let r = env.post("/v1/messages", None, &message("hi", false)).await;
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the permit of the abandoned stream came back");
    drop(s2);
}

async fn body_over_the_limit_is_413_with_or_without_content_length(base: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        max_body_bytes: Some(1024),
        ..Opts::default()
    })
    .await;
    let big = "x".repeat(4096);
    let (path, body, openai) = route(base, &big, false);
    let bytes = serde_json::to_vec(&body).unwrap();
    // Declared length.
    let resp = env
        .client
        .post(env.url(&path))
        .header("content-type", "application/json")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "{path}");
    let v = json_of(resp).await;
    if openai {
        assert_openai_error(&v, "invalid_request_error");
        assert_eq!(v["error"]["code"], "request_too_large");
    } else {
        assert_anthropic_error(&v, "request_too_large");
    }
    // Chunked, no length: counted as it arrives.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(512).map(|c| Ok(c.to_vec())).collect();
    let resp = env
        .client
        .post(env.url(&path))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "{path} (chunked)");
    assert_eq!(
        env.upstream_messages(),
        0,
        "nothing oversized went upstream"
    );
}

cases!(body_over_the_limit_is_413_with_or_without_content_length {
    anthropic_full: (""),
    anthropic_min: ("/min"),
    anthropic_pt: ("/pt"),
    openai_full: ("/openai"),
    openai_min: ("/min/openai"),
    openai_pt: ("/pt/openai"),
});

#[tokio::test]
async fn oversized_headers_are_refused_cleanly() {
    let env = TestEnv::with_api_key().await;
    let addr = env.addr.to_string();
    let body = serde_json::to_vec(&message("hi", false)).unwrap();
    let cases: Vec<Vec<(String, String)>> = vec![
        // One huge header value.
        vec![("x-big".into(), "a".repeat(1024 * 1024))],
        // Very many headers.
        (0..2000)
            .map(|i| (format!("x-h{i}"), "v".to_owned()))
            .collect(),
    ];
    let result = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for headers in cases {
            let extra: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let req = raw_request("POST", "/v1/messages", "127.0.0.1", &extra, &body);
            let t0 = Instant::now();
            let r = raw_http(&addr, &req, Duration::from_secs(5));
            out.push((r.map(|r| r.status).ok(), t0.elapsed()));
        }
        out
    })
    .await
    .unwrap();
    for (status, took) in result {
        assert!(took < Duration::from_secs(4), "refusal took {took:?}");
        // 431 Request Header Fields Too Large, or the connection closed without an answer.
        assert!(matches!(status, Some(431) | None), "got {status:?}");
    }
    assert_eq!(env.upstream_messages(), 0);
    assert_eq!(
        env.post("/v1/messages", None, &message("hi", false))
            .await
            .status(),
        200
    );
}

/// Issue 7 "total request time for non-streaming calls": a non-streaming answer
/// whose body stalls after the head is bounded by `upstream_timeout` (504).
async fn stalled_non_stream_body_is_bounded(base: &str) {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_timeout: Some(Duration::from_millis(500)),
        tweak: Some(|s| s.upstream.stream_idle_timeout = Duration::from_millis(500)),
        ..Opts::default()
    })
    .await;
    let (path, body, openai) = route(base, "[sim:silent=8000]", false);
    let t0 = Instant::now();
    let resp = env.post(&path, None, &body).await;
    let status = resp.status().as_u16();
    let body = resp.bytes().await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "{path}: a stalled non-stream body held the client for {:?}",
        t0.elapsed()
    );
    if openai {
        assert_eq!(status, 504, "{path}");
        assert!(is_openai_envelope(
            &serde_json::from_slice(&body.unwrap()).unwrap()
        ));
    } else {
        assert!(status == 504 || body.is_err(), "{path}");
    }
}

cases!(stalled_non_stream_body_is_bounded {
    anthropic_full: (""),
    anthropic_min: ("/min"),
    anthropic_pt: ("/pt"),
    openai_full: ("/openai"),
    openai_min: ("/min/openai"),
});

// ---------------------------------------------------------------- retries (lead's keys)

#[tokio::test]
async fn retries_never_after_bytes_nor_for_500_or_timeouts() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_timeout: Some(Duration::from_millis(300)),
        tweak: Some(|s| {
            s.retries.max_retries = 3;
            s.retries.on_429 = true;
        }),
        ..Opts::default()
    })
    .await;
    let cases: [(&str, bool, u16); 5] = [
        ("[sim:reset-midstream] a", true, 200),
        ("[sim:error-midstream] b", true, 200),
        ("[sim:silent=200] [sim:reset-midstream] c", false, 502),
        ("[sim:status=500] d", false, 500),
        ("[sim:delay=2000] e", false, 504),
    ];
    for (text, stream, status) in cases {
        env.sim_state().clear_requests();
        let resp = env.post("/v1/messages", None, &message(text, stream)).await;
        assert_eq!(resp.status().as_u16(), status, "{text}");
        let _ = resp.bytes().await;
        assert_eq!(env.upstream_messages(), 1, "{text}: retried");
    }
    // OpenAI routes retry too (before the first byte): 529 twice, then success.
    env.sim_state().clear_requests();
    let resp = env
        .post(
            "/openai/v1/chat/completions",
            None,
            &chat("[sim:flaky=2:529] f", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let (_, done) = openai_chunks(&resp.text().await.unwrap());
    assert!(done);
    assert_eq!(env.upstream_messages(), 3);
}

/// A request refused before its body was read must either say
/// `connection: close` or leave the connection usable: otherwise a pooling
/// client reuses a connection the proxy is closing, and an unrelated request
/// fails (seen in the soak as "connection closed before message completed").
#[tokio::test]
async fn early_refusals_say_connection_close_or_keep_the_connection() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        max_body_bytes: Some(1024 * 1024),
        tweak: Some(|s| s.limits.max_concurrent_requests = 1),
        ..Opts::default()
    })
    .await;
    let token = format!("x-api-key: {PROXY_TOKEN}\r\n");
    let small = serde_json::to_vec(&message("hi", false)).unwrap();
    let big = vec![b'x'; 2 * 1024 * 1024];
    let mut problems = Vec::new();
    // (headers, body, want)
    let cases: Vec<(String, &[u8], u16)> = vec![
        ("x-api-key: wrong\r\n".into(), &big, 401),
        (
            format!("{token}origin: https://evil.example\r\n"),
            &big,
            403,
        ),
        (token.clone(), &big, 413),
        // With the only permit taken (below): a small body, sent after the head.
        (token.clone(), &small, 503),
        (token.clone(), &big, 503),
    ];
    let mut held = None;
    for (extra, body, want) in cases {
        if want == 503 && held.is_none() {
            let r = env
                .post(
                    "/v1/messages",
                    Some(PROXY_TOKEN),
                    &message("[sim:endless] [sim:gap=50]", true),
                )
                .await;
            assert_eq!(r.status(), 200);
            held = Some(r);
        }
        let mut s = tokio::net::TcpStream::connect(env.addr).await.unwrap();
        let head = format!(
            "POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             anthropic-version: 2023-06-01\r\n{extra}content-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // The whole body goes out (it may not all be accepted).
        let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(body)).await;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        let resp = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(resp.starts_with(&format!("http/1.1 {want}")), "{resp}");
        if resp.contains("\r\nconnection: close\r\n") {
            continue;
        }
        // No close announced: the connection must serve the next request.
        let next = format!("GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n{token}\r\n");
        let _ = s.write_all(next.as_bytes()).await;
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .map(|r| r.unwrap_or(0))
            .unwrap_or(0);
        let resp = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        // (/health is not limited: a live connection answers it even now.)
        if !resp.starts_with("http/1.1 200") {
            problems.push(format!(
                "{want} ({} B body): no `connection: close`, yet the connection was closed ({:?})",
                body.len(),
                resp.lines().next()
            ));
        }
    }
    drop(held);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A client whose body is still on its way when the proxy refuses the request
/// (401, 403) receives the refusal, not a broken pipe, although the proxy
/// answers (and closes) before reading the body.
#[tokio::test]
async fn early_refusal_reaches_a_client_still_sending_its_body() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        auth_token: Some(PROXY_TOKEN),
        ..Opts::default()
    })
    .await;
    let body = serde_json::to_vec(&message("hi", false)).unwrap();
    let mut failures = Vec::new();
    for (token, origin, want) in [
        ("wrong-token", None, 401u16),
        (PROXY_TOKEN, Some("https://evil.example"), 403),
    ] {
        for i in 0..5 {
            let (a, b) = body.split_at(body.len() / 2);
            let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(a.to_vec()), Ok(b.to_vec())];
            // The body comes 50 ms after the head, in two pieces.
            let slow = futures_util::stream::iter(parts).then(|p| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                p
            });
            let mut rb = env
                .client
                .post(env.url("/v1/messages"))
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .header("x-api-key", token)
                .body(reqwest::Body::wrap_stream(slow));
            if let Some(o) = origin {
                rb = rb.header("origin", o);
            }
            match rb.send().await {
                Ok(r) if r.status().as_u16() == want => {}
                Ok(r) => failures.push(format!("{want} #{i}: got {}", r.status())),
                Err(e) => failures.push(format!("{want} #{i}: {e:?}")),
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------- oversized stream events

/// An upstream whose stream has one event of 17 MiB (a data line with no end in sight for that
/// long), between ordinary ones; the body's length.
async fn upstream_with_a_huge_event() -> (std::net::SocketAddr, usize) {
    let mut body = Vec::new();
    body.extend_from_slice(
        b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n\
          event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
          event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"",
    );
    body.resize(body.len() + 17 * 1024 * 1024, b'x');
    body.extend_from_slice(
        b"\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
          event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n\
          event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let len = body.len();
    let body = bytes::Bytes::from(body);
    let app = axum::Router::new().route(
        "/v1/messages",
        axum::routing::post(move || {
            let body = body.clone();
            async move { ([("content-type", "text/event-stream")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, len)
}

/// Past 16 MiB in one event the proxy stops reading the stream's events (it holds no more of
/// it): a converted stream (Chat, Responses) ends with its dialect's error, saying why; the
/// passthrough still relays every byte as it came, and its usage is counted.
#[tokio::test]
async fn an_upstream_event_past_16_mib_ends_a_converted_stream_and_passes_through_raw() {
    let (upstream, len) = upstream_with_a_huge_event().await;
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        upstream_url: Some(format!("http://{upstream}")),
        ..Opts::default()
    })
    .await;
    let resp = env
        .post("/openai/v1/chat/completions", None, &chat("hi", true))
        .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.len() < 1024 * 1024, "{} bytes converted", text.len());
    let err = openai_stream_error(&text);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 16 MiB"),
        "{err}"
    );
    // The Responses API: the stream ends with response.failed, saying why.
    let body = serde_json::json!({"model": "claude-sonnet-4-5", "input": "hi", "stream": true});
    let resp = env.post("/openai/v1/responses", None, &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let last_event = text.lines().rfind(|l| l.starts_with("event: "));
    assert_eq!(last_event, Some("event: response.failed"), "{text}");
    assert!(!text.contains("response.completed"), "{text}");
    assert!(text.contains("longer than 16 MiB"), "{text}");
    let resp = env
        .post("/pt/v1/messages", None, &message("hi", true))
        .await;
    assert_eq!(resp.status(), 200);
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), len, "the passthrough relays the stream whole");
    assert!(got.ends_with(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    // The records: the converted stream failed, saying why; the passthrough's usage tap read
    // the stream to its end (it does not hold the text deltas it does not read), so its output
    // tokens are those of the final message_delta.
    let recs = crate::usage::rows(&env, 3).await;
    for r in &recs[..2] {
        assert_eq!(r.status, 502, "{r:?}");
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("longer than 16 MiB")),
            "{r:?}"
        );
    }
    assert_eq!(recs[2].status, 200, "{:?}", recs[2]);
    assert_eq!((recs[2].tokens.input, recs[2].tokens.output), (5, 9));
}
