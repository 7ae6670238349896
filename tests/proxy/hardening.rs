//! Requests an attacker or a broken client sends, through real sockets: Host
//! headers of every wrong shape, absurdly nested JSON, a body over the limit
//! written whole before the answer is read, wrong methods on operational routes.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

async fn env() -> TestEnv {
    TestEnv::start(Opts {
        api_key: Some(API_KEY),
        max_body_bytes: Some(64 * 1024),
        ..Opts::default()
    })
    .await
}

/// A raw request with exactly the given head (no Host added), off the runtime.
async fn send_raw(env: &TestEnv, head: &str, body: &[u8]) -> RawResponse {
    let mut req = head.as_bytes().to_vec();
    req.extend_from_slice(body);
    let addr = env.addr.to_string();
    tokio::task::spawn_blocking(move || raw_http(&addr, &req, Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("an answer")
}

fn envelope_of(path: &str, r: &RawResponse, kind: &str) {
    let v = r.json();
    if path.contains("/openai/") {
        assert_openai_error(&v, kind);
    } else {
        assert_anthropic_error(&v, kind);
    }
}

/// Host headers: a rebound name dressed as an IPv6 literal (403), two Host
/// headers (400), no Host on HTTP/1.1 (400); in the route's dialect.
async fn bad_host_headers_are_refused(path: &str) {
    let env = env().await;
    let body = serde_json::to_vec(&message("hi", false)).unwrap();
    let len = body.len();
    for (hosts, status, kind) in [
        (vec!["[::1].evil.com"], 403, "permission_error"),
        (vec!["[::1]evil.com:80"], 403, "permission_error"),
        (
            vec!["127.0.0.1", "evil.example"],
            400,
            "invalid_request_error",
        ),
        (vec![], 400, "invalid_request_error"),
    ] {
        let mut head = format!("POST {path} HTTP/1.1\r\n");
        for h in &hosts {
            head.push_str(&format!("host: {h}\r\n"));
        }
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        ));
        let r = send_raw(&env, &head, &body).await;
        assert_eq!(r.status, status, "{path} {hosts:?}: {}", r.text());
        envelope_of(path, &r, kind);
    }
    assert!(
        env.sim_state().requests().is_empty(),
        "nothing went upstream"
    );
}

cases!(bad_host_headers_are_refused {
    anthropic: ("/v1/messages"),
    openai: ("/openai/v1/chat/completions"),
});

/// A 10 000-deep object inside a field is a 400 naming the problem, on every
/// route and in every mode, and never reaches the upstream.
async fn deep_nesting_is_refused(path: &str) {
    let env = env().await;
    let deep = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let body = if path.contains("/openai/") {
        format!(
            r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi"}}],"metadata":{deep}}}"#
        )
    } else {
        format!(
            r#"{{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}],"metadata":{deep}}}"#
        )
    };
    let resp = env
        .client
        .post(env.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "{path}");
    let v: Value = resp.json().await.unwrap();
    let message = if path.contains("/openai/") {
        assert_openai_error(&v, "invalid_request_error");
        v["error"]["message"].as_str().unwrap().to_owned()
    } else {
        assert_anthropic_error(&v, "invalid_request_error");
        v["error"]["message"].as_str().unwrap().to_owned()
    };
    assert!(message.contains("deeper than 128"), "{message}");
    assert!(
        env.sim_state().requests().is_empty(),
        "nothing went upstream"
    );
}

cases!(deep_nesting_is_refused {
    full: ("/v1/messages"),
    min: ("/min/v1/messages"),
    pt: ("/pt/v1/messages"),
    count_tokens: ("/min/v1/messages/count_tokens"),
    openai_full: ("/openai/v1/chat/completions"),
    openai_min: ("/min/openai/v1/chat/completions"),
    openai_pt: ("/pt/openai/v1/chat/completions"),
    relay: ("/pt/v1/messages/batches"),
});

/// A client that writes its whole (too large) body before reading gets the
/// 413, not a broken pipe.
async fn oversized_body_written_whole_gets_its_413(path: &str) {
    let env = env().await;
    let body = vec![b' '; 1024 * 1024];
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    let addr = env.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(head.as_bytes())?;
        s.write_all(&body)?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok::<_, std::io::Error>(got)
    })
    .await
    .unwrap();
    let got = answer.unwrap_or_else(|e| panic!("{path}: the client got {e} instead of a 413"));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{path}: {text}");
}

cases!(oversized_body_written_whole_gets_its_413 {
    anthropic: ("/v1/messages"),
    openai: ("/openai/v1/chat/completions"),
});

#[tokio::test]
async fn operational_routes_answer_a_wrong_method_with_a_json_405() {
    let env = env().await;
    for path in ["/health", "/metrics", "/dashboard", "/api/usage"] {
        for method in ["POST", "DELETE", "PUT"] {
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let r = send_raw(&env, &head, b"").await;
            assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_anthropic_error(&r.json(), "invalid_request_error");
        }
    }
}
