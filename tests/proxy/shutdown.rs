//! Graceful shutdown of the built binary on SIGTERM/SIGINT: stop accepting, let
//! in-flight requests and streams finish within `shutdown_grace_secs`, then end
//! the streams still open with an error event, and exit 0; Responses WebSocket sessions close
//! when idle. Also: a client that disconnects mid-stream is still recorded (the request log
//! line).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// Starts `ccproxy serve --upstream-url sim` with this config file content.
fn serve(dir: &Path, config: &str, extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let file = dir.join("config.toml");
    std::fs::write(&file, config).unwrap();
    let mut c = cmd(dir);
    c.args([
        "serve",
        "--port",
        &port.to_string(),
        "--upstream-url",
        "sim",
    ])
    .arg("--config")
    .arg(&file)
    .args(extra);
    let mut p = spawn(c, dir, "serve");
    wait_port(port, &mut p);
    (p, port)
}

/// An open streaming request on a raw connection, its chunked body decoded.
struct OpenStream {
    reader: BufReader<TcpStream>,
    body: String,
    ended: bool,
}

impl OpenStream {
    fn start(port: u16, path: &str, body: &serde_json::Value) -> OpenStream {
        let body = serde_json::to_vec(body).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            if l == "\r\n" {
                break;
            }
            assert!(
                !l.to_ascii_lowercase().starts_with("content-length"),
                "a stream is chunked"
            );
        }
        OpenStream {
            reader,
            body: String::new(),
            ended: false,
        }
    }

    /// Reads one chunk into `body`; false at the terminating chunk.
    fn next_chunk(&mut self) -> bool {
        let mut size = String::new();
        if self.reader.read_line(&mut size).unwrap() == 0 {
            panic!("connection closed without the last chunk: {}", self.body);
        }
        let n = usize::from_str_radix(size.trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size {size:?} after {}", self.body));
        let mut chunk = vec![0u8; n + 2];
        self.reader.read_exact(&mut chunk).unwrap();
        self.body.push_str(&String::from_utf8_lossy(&chunk[..n]));
        if n == 0 {
            self.ended = true;
        }
        n > 0
    }

    /// Reads until `needle` appears in the body.
    fn read_until(&mut self, needle: &str) {
        while !self.body.contains(needle) {
            assert!(self.next_chunk(), "the stream ended before {needle:?}");
        }
    }

    /// Reads to the end of the body; returns all of it.
    fn read_to_end(mut self) -> String {
        while !self.ended && self.next_chunk() {}
        self.body
    }
}

#[test]
fn sigterm_lets_streams_and_requests_finish_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, port) = serve(dir.path(), "shutdown_grace_secs = 10\n", &[]);
    // A stream of about 1.5 s, an OpenAI one, and a non-streaming request
    // whose answer takes 1 s.
    let mut a = OpenStream::start(
        port,
        "/v1/messages",
        &message("[sim:gap=75] [sim:deltas=20]", true),
    );
    let mut o = OpenStream::start(
        port,
        "/openai/v1/chat/completions",
        &chat("[sim:gap=75] [sim:deltas=20]", true),
    );
    a.read_until("content_block_delta");
    o.read_until("chat.completion.chunk");
    let slow = std::thread::spawn(move || {
        let body = serde_json::to_vec(&message("[sim:delay=1000]", false)).unwrap();
        raw_http(
            &format!("127.0.0.1:{port}"),
            &raw_request("POST", "/v1/messages", "127.0.0.1", &[], &body),
            Duration::from_secs(15),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    p.signal("TERM");
    // New connections are refused soon after the signal.
    let refused = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    assert!(refused, "still accepting connections after SIGTERM");
    // Everything in flight completes normally.
    let events = parse_sse(&a.read_to_end());
    assert_eq!(events.last().unwrap().0, "message_stop");
    assert!(events.iter().all(|(n, _)| n != "error"));
    let text = o.read_to_end();
    let (chunks, done) = openai_chunks(&text);
    assert!(
        done && chunks.iter().all(|c| c.get("error").is_none()),
        "{text}"
    );
    let r = slow.join().unwrap().expect("the slow request completed");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message");
    let st = p.wait_exit(Duration::from_secs(8)).expect("exits");
    assert_eq!(st.code(), Some(0), "{}", p.logs());
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "it waited for the work, not the whole grace period: {:?}",
        t0.elapsed()
    );
    let logs = p.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(!logs.contains("grace period over"), "{logs}");
}

#[test]
fn after_the_grace_period_open_streams_end_with_an_error_event() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, port) = serve(dir.path(), "shutdown_grace_secs = 1\n", &[]);
    let mut a = OpenStream::start(
        port,
        "/v1/messages",
        &message("[sim:endless] [sim:gap=50]", true),
    );
    let mut o = OpenStream::start(
        port,
        "/openai/v1/chat/completions",
        &chat("[sim:endless] [sim:gap=50]", true),
    );
    a.read_until("content_block_delta");
    o.read_until("chat.completion.chunk");
    let t0 = Instant::now();
    p.signal("TERM");
    let text = a.read_to_end();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "the stream ended {took:?} after SIGTERM"
    );
    let events = parse_sse(&text);
    let (name, err) = events.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert_eq!(err["error"]["type"], "api_error");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down")
    );
    let text = o.read_to_end();
    let err = openai_stream_error(&text);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{text}"
    );
    let st = p.wait_exit(Duration::from_secs(8)).expect("exits");
    assert_eq!(st.code(), Some(0), "{}", p.logs());
    assert!(p.logs().contains("grace period over"));
}

#[test]
fn sigint_on_an_idle_server_exits_0_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, port) = serve(dir.path(), "", &[]);
    // An idle keep-alive connection does not hold the shutdown.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let _ = idle.read(&mut buf).unwrap();
    let t0 = Instant::now();
    p.signal("INT");
    let st = p.wait_exit(Duration::from_secs(5)).expect("exits");
    assert_eq!(st.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn a_client_that_leaves_mid_stream_is_still_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, port) = serve(dir.path(), "", &["--log-format", "json"]);
    for (path, body) in [
        ("/v1/messages", message("[sim:endless] [sim:gap=20]", true)),
        (
            "/openai/v1/chat/completions",
            chat("[sim:endless] [sim:gap=20]", true),
        ),
    ] {
        let mut s = OpenStream::start(port, path, &body);
        s.read_until("delta");
        drop(s);
    }
    let find = |logs: &str| -> Vec<serde_json::Value> {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "request" && v["fields"]["abandoned"] == true)
            .collect()
    };
    let t0 = Instant::now();
    while find(&p.logs()).len() < 2 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let records = find(&p.logs());
    assert_eq!(records.len(), 2, "{}", p.logs());
    for r in records {
        let f = &r["fields"];
        assert_eq!(f["status"], 200, "{r}");
        assert_eq!(f["stream"], true, "{r}");
        assert!(f["input_tokens"].as_u64().unwrap() > 0, "{r}");
        assert!(f["output_tokens"].as_u64().unwrap() > 0, "{r}");
    }
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(5)).unwrap().code(), Some(0));
}

/// After the grace period a non-streaming request still waiting for the
/// upstream should get an error response in its dialect, not a closed connection.
#[test]
fn after_the_grace_period_pending_requests_get_an_error_response() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, port) = serve(dir.path(), "shutdown_grace_secs = 1\n", &[]);
    let pending: Vec<_> = [
        ("/v1/messages", message("[sim:delay=20000]", false), false),
        (
            "/openai/v1/chat/completions",
            chat("[sim:delay=20000]", false),
            true,
        ),
    ]
    .into_iter()
    .map(|(path, body, openai)| {
        std::thread::spawn(move || {
            let body = serde_json::to_vec(&body).unwrap();
            let r = raw_http(
                &format!("127.0.0.1:{port}"),
                &raw_request("POST", path, "127.0.0.1", &[], &body),
                Duration::from_secs(15),
            );
            (r, openai)
        })
    })
    .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    p.signal("TERM");
    for h in pending {
        let (r, openai) = h.join().unwrap();
        let r = r.expect("an HTTP response, not a closed connection");
        assert!(t0.elapsed() < Duration::from_secs(4));
        assert_eq!(r.status, 503, "{}", r.text());
        let v = r.json();
        assert!(
            if openai {
                is_openai_envelope(&v)
            } else {
                is_anthropic_envelope(&v)
            },
            "{v}"
        );
    }
    assert_eq!(p.wait_exit(Duration::from_secs(8)).unwrap().code(), Some(0));
}

/// The next message on a Responses WebSocket, within 10 s.
async fn next_message(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> tokio_tungstenite::tungstenite::Message {
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .expect("the socket is open")
        .expect("a message, not an error")
}

/// On SIGTERM, a Responses WebSocket session that is idle is closed at once ("going away",
/// 1001); one in the middle of a response gets the whole response first, then the close; the
/// process waits for it and exits 0.
#[tokio::test]
async fn sigterm_closes_idle_sockets_and_lets_a_socket_finish_its_response() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let (mut p, port) = serve(dir.path(), "shutdown_grace_secs = 20\n", &[]);
    let url = format!("ws://127.0.0.1:{port}/openai/v1/responses");
    let (mut idle, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let (mut busy, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // A response of 20 deltas 100 ms apart: about 2 s.
    let create = serde_json::json!({
        "type": "response.create",
        "model": "gpt-4o",
        "input": "[sim:deltas=20] [sim:gap=100] tell me a story",
    });
    busy.send(Message::Text(create.to_string().into()))
        .await
        .unwrap();
    // Its first event: the response is under way.
    assert!(matches!(next_message(&mut busy).await, Message::Text(_)));
    let t0 = Instant::now();
    p.signal("TERM");
    match next_message(&mut idle).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001, "{f:?}"),
        other => panic!("the idle socket got {other:?}, not a close"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the idle socket was closed {:?} after SIGTERM",
        t0.elapsed()
    );
    let mut types = Vec::new();
    loop {
        match next_message(&mut busy).await {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                types.push(v["type"].as_str().unwrap_or_default().to_owned());
            }
            Message::Close(Some(f)) => {
                assert_eq!(u16::from(f.code), 1001, "{f:?}");
                break;
            }
            other => panic!("the busy socket got {other:?}"),
        }
    }
    assert_eq!(
        types.last().map(String::as_str),
        Some("response.completed"),
        "{types:?}"
    );
    assert!(
        types
            .iter()
            .filter(|t| *t == "response.output_text.delta")
            .count()
            >= 15,
        "{types:?}"
    );
    let st = p.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(st.success(), "{st:?}\n{}", p.logs());
}
