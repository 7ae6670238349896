//! Helpers for the reliability and security suites (faults, security, shutdown,
//! fuzz): envelopes, SSE/OpenAI chunk parsing, a raw HTTP/1.1 client, and the
//! built binary run as a child process.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_ccproxy");

/// Anthropic mode prefixes (full, minimal, passthrough).
pub const ANTHROPIC_MODES: [&str; 3] = ["", "/min", "/pt"];
/// OpenAI bases that convert to the Messages API (full, minimal).
pub const OPENAI_CONVERTING: [&str; 2] = ["/openai", "/min/openai"];

/// An OpenAI chat request whose user text is `text`.
pub fn chat(text: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": "gpt-4o",
        "stream": stream,
        "messages": [{"role": "user", "content": text}]
    })
}

/// Asserts the Anthropic error envelope with this `error.type`.
pub fn assert_anthropic_error(v: &Value, kind: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

/// Asserts the OpenAI error envelope with this `error.type` (all four keys present).
pub fn assert_openai_error(v: &Value, kind: &str) {
    let e = v["error"].as_object().unwrap_or_else(|| panic!("{v}"));
    for k in ["message", "type", "param", "code"] {
        assert!(e.contains_key(k), "{k} missing: {v}");
    }
    assert_eq!(e["type"], kind, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// Whether `v` is an error envelope of either dialect.
pub fn is_anthropic_envelope(v: &Value) -> bool {
    v["type"] == "error" && v["error"]["type"].is_string() && v["error"]["message"].is_string()
}

pub fn is_openai_envelope(v: &Value) -> bool {
    v["error"]["message"].is_string()
        && v["error"]["type"].is_string()
        && v["error"]
            .as_object()
            .is_some_and(|e| e.contains_key("param") && e.contains_key("code"))
}

/// The JSON of each `data:` line of an OpenAI stream, and whether `[DONE]` ended it
/// (nothing may follow `[DONE]`).
pub fn openai_chunks(body: &str) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut done = false;
    for line in body.lines() {
        if let Some(d) = line.strip_prefix("data: ") {
            assert!(!done, "data after [DONE]: {body}");
            if d == "[DONE]" {
                done = true;
            } else {
                out.push(
                    serde_json::from_str(d).unwrap_or_else(|_| panic!("bad chunk {d}: {body}")),
                );
            }
        }
    }
    (out, done)
}

/// The text content of OpenAI chunks, concatenated.
pub fn openai_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns the time it took.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if cond() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A raw HTTP/1.1 response.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Decodes a chunked body (best effort; stops at the first malformed size line).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Sends `request` as is over a new connection and reads until the server
/// closes it (send `connection: close`) or `timeout` passes. `Err` when nothing
/// parseable came back.
pub fn raw_http(addr: &str, request: &[u8], timeout: Duration) -> std::io::Result<RawResponse> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // The server may answer (and close) before the whole request was written.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                break;
            }
            Err(e) => {
                if buf.is_empty() {
                    return Err(e);
                }
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(std::io::Error::other(format!(
            "no response head: {:?}",
            String::from_utf8_lossy(&buf)
        )));
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let raw_body = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// A request with `connection: close`, the given extra header lines and body.
pub fn raw_request(
    method: &str,
    path: &str,
    host: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        r.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut out = r.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A command running the built binary in a hermetic environment rooted at `dir`.
pub fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"));
    c
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by its own pid) when dropped; stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Spawns `c` with stdout and stderr captured into `dir/<name>.log`.
pub fn spawn(mut c: Command, dir: &Path, name: &str) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = c
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .expect("binary starts");
    Proc { child, log }
}

/// Waits until something accepts connections on `port`.
pub fn wait_port(port: u16, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = proc.child.try_wait() {
            panic!("exited early ({st}): {}", proc.logs());
        }
        assert!(Instant::now() < deadline, "did not start: {}", proc.logs());
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Starts `ccproxy sim --port 0 [--record]`; returns it and its base URL.
pub fn start_sim(dir: &Path) -> (Proc, String) {
    let log = dir.join("sim.log");
    let mut child = cmd(dir)
        .args(["sim", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    (Proc { child, log }, url)
}
