//! Slow, idle and too many clients, through raw sockets: a half-sent head, an
//! idle keep-alive connection, a stalled upload, the connection cap, and running
//! out of descriptors (the built binary under a low open-file limit).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Reads until the peer closes (or `limit` passes); returns what came and when it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + limit).into(), s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(t0.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn one_second_heads(s: &mut ccproxy::config::Settings) {
    s.limits.header_read_timeout = Duration::from_secs(1);
}

#[tokio::test]
async fn partial_request_head_is_dropped() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(one_second_heads),
        ..Opts::default()
    })
    .await;
    let mut s = TcpStream::connect(env.addr).await.unwrap();
    s.write_all(b"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let after = closed.expect("the connection with a partial head was still open after 10 s");
    assert!(
        after >= Duration::from_millis(900),
        "closed too early: {after:?}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(one_second_heads),
        ..Opts::default()
    })
    .await;
    let mut s = TcpStream::connect(env.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        closed.is_some(),
        "an idle keep-alive connection was still open after 10 s"
    );
}

#[tokio::test]
async fn stalled_upload_is_a_408_and_frees_its_slot() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| {
            s.limits.body_read_timeout = Duration::from_secs(1);
            s.limits.max_concurrent_requests = 1;
        }),
        ..Opts::default()
    })
    .await;
    for (path, openai) in [
        ("/v1/messages", false),
        ("/openai/v1/chat/completions", true),
    ] {
        let mut s = TcpStream::connect(env.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             content-length: 100\r\n\r\n{{\"model\":"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(closed.is_some(), "{path}: the stalled upload was kept open");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        let body: serde_json::Value =
            serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
        if openai {
            assert_openai_error(&body, "invalid_request_error");
            assert_eq!(body["error"]["code"], "request_timeout");
        } else {
            assert_anthropic_error(&body, "invalid_request_error");
        }
        assert!(body.to_string().contains("stalled"), "{body}");
        // The only concurrency slot is free again.
        let r = env.post("/v1/messages", None, &message("hi", false)).await;
        assert_eq!(r.status(), 200, "{path}: the slot was not freed");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.limits.max_connections = 2),
        ..Opts::default()
    })
    .await;
    let held = [
        TcpStream::connect(env.addr).await.unwrap(),
        TcpStream::connect(env.addr).await.unwrap(),
    ];
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(env.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await;
    let (got, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the third connection was not closed");
    assert!(got.is_empty(), "the third connection was served");
    drop(held);
    // Slots return when connections close.
    let mut ok = false;
    for _ in 0..50 {
        let r = env.client.get(env.url("/health")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "no connection was served after the held ones closed");
}

/// Out of descriptors: accept errors are logged, and the server serves again
/// once descriptors return.
#[tokio::test]
async fn out_of_descriptors_is_logged_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Two serving threads, whatever the machine's cores (each runtime takes a few descriptors).
    let config = dir.path().join("ccproxy.toml");
    std::fs::write(&config, "workers = 2\n").unwrap();
    let script = format!(
        "ulimit -n 64 && exec {BIN} serve --port {port} --upstream-url sim --no-usage --config {}",
        config.display()
    );
    let mut c = std::process::Command::new("bash");
    c.args(["-c", &script])
        .env("HOME", dir.path().join("home"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"));
    let mut proc = spawn(c, dir.path(), "ccproxy");
    wait_port(port, &mut proc);
    // Hold more connections than the process has descriptors.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            held.push(s);
        }
    }
    let logged = wait_until(Duration::from_secs(10), || {
        proc.logs().contains("cannot accept connections")
    })
    .await;
    assert!(
        logged.is_some(),
        "no accept error was logged: {}",
        proc.logs()
    );
    drop(held);
    let client = ccproxy::http::client_builder().build().unwrap();
    let mut served = false;
    for _ in 0..100 {
        let r = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "not serving after descriptors returned: {}",
        proc.logs()
    );
    assert!(
        proc.logs().contains("open-file limit is below"),
        "the low limit was not warned about: {}",
        proc.logs()
    );
}

/// Client connections are served by `workers` threads, each new one by the thread with the
/// fewest open; `/health` and `/metrics` count them per thread, and a closed one is uncounted.
#[tokio::test]
async fn connections_spread_over_the_serving_threads() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.server.workers = 3),
        ..Opts::default()
    })
    .await;
    let held = [
        TcpStream::connect(env.addr).await.unwrap(),
        TcpStream::connect(env.addr).await.unwrap(),
        TcpStream::connect(env.addr).await.unwrap(),
    ];
    // The three held connections and the client's own, once all are accepted.
    let mut open = Vec::new();
    for _ in 0..100 {
        let (threads, now) = env.serving().await;
        assert_eq!(threads, 3);
        if now.iter().sum::<u64>() == 4 {
            open = now;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open.sort_unstable();
    assert_eq!(open, [1, 1, 2], "four connections over three threads");
    let (text, _) = scrape(&env.url("/metrics")).await;
    for t in 0..3 {
        assert!(
            text.contains(&format!("ccproxy_client_connections{{thread=\"{t}\"}}")),
            "no gauge for thread {t}: {text}"
        );
    }
    // Requests on each thread are served.
    for mut s in held {
        s.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        assert!(closed.is_some());
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    // Closed connections are no longer counted: only the client's own is left.
    let mut left = Vec::new();
    for _ in 0..100 {
        left = env.serving().await.1;
        if left.iter().sum::<u64>() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left.iter().sum::<u64>(), 1, "{left:?}");
}

/// Unset (0), `workers` is one thread per core.
#[tokio::test]
async fn by_default_one_serving_thread_per_core() {
    let env = TestEnv::start(Opts {
        api_key: Some(API_KEY),
        tweak: Some(|s| s.server.workers = 0),
        ..Opts::default()
    })
    .await;
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(env.serving().await.0, cores);
}
