//! Fault modes of the simulated upstream, chosen by markers in the last user
//! message of a `/v1/messages` request (see the table in the module docs of
//! [`crate::sim`]):
//!
//! | marker | effect |
//! |---|---|
//! | `[sim:reset-midstream]` | the connection is aborted in the middle of the body (stream: after the first text delta; JSON: after half the bytes, with the full `content-length` announced) |
//! | `[sim:silent=MS]` | the upstream sends nothing for MS ms in the middle of the body, then goes on |
//! | `[sim:malformed-sse]` | a broken SSE frame (a line that is not a field, an event without data) after the first text delta |
//! | `[sim:bad-json-event]` | a `content_block_delta` event whose data is not valid JSON, after the first text delta |
//! | `[sim:endless]` | after the first text delta, text deltas forever (every `[sim:gap=MS]`) |
//! | `[sim:delta-size=N]` | every text delta carries N bytes of text (slow-client and memory tests) |
//!
//! A fault stream is played lazily, one piece per poll, so a client that stops
//! reading stops the simulated upstream too (backpressure); the bytes it has
//! handed to the connection so far are counted in
//! [`SimState::stream_bytes_sent`](super::SimState::stream_bytes_sent).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;

use super::SimState;

/// The fault switches of one request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Faults {
    pub reset_midstream: bool,
    pub silent_ms: Option<u64>,
    pub malformed_sse: bool,
    pub bad_json_event: bool,
    pub endless: bool,
    pub delta_size: Option<usize>,
}

/// The wait before a reset, so that the bytes before it leave the sender.
const FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// Largest text per delta `[sim:delta-size]` accepts.
const MAX_DELTA_SIZE: usize = 1 << 20;

/// A frame that is not valid SSE for an API stream: a line that is no field,
/// then an event that never gets a `data` line.
pub const MALFORMED_SSE: &[u8] =
    b"this line is not server-sent events\nevent: content_block_delta\n:\n\n";

/// An event whose data is cut in the middle of a JSON string.
pub const BAD_JSON_EVENT: &[u8] = b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"unterminated\n\n";

impl Faults {
    /// Reads one marker (`key`, `value` of `[sim:key=value]`); unknown keys are ignored.
    pub fn parse(&mut self, key: &str, value: &str) {
        match key {
            "reset-midstream" => self.reset_midstream = true,
            "silent" => self.silent_ms = value.parse::<u64>().ok().map(|ms| ms.min(600_000)),
            "malformed-sse" => self.malformed_sse = true,
            "bad-json-event" => self.bad_json_event = true,
            "endless" => self.endless = true,
            "delta-size" => {
                self.delta_size = value
                    .parse::<usize>()
                    .ok()
                    .map(|n| n.clamp(1, MAX_DELTA_SIZE));
            }
            _ => {}
        }
    }

    /// Whether any fault is set (the response then goes through this module).
    pub fn active(&self) -> bool {
        *self != Faults::default()
    }
}

/// One step of a fault stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    /// Send nothing for this long.
    Pause(Duration),
    /// Abort the connection.
    Reset,
    /// Send this event again and again, forever.
    Repeat(Bytes),
}

fn is_text_delta(ev: &[u8]) -> bool {
    ev.starts_with(b"event: content_block_delta")
        && memchr::memmem::find(ev, b"\"text_delta\"").is_some()
}

/// A text delta event with its text replaced by exactly `size` bytes.
fn padded(ev: &Bytes, size: usize) -> Bytes {
    let text = std::str::from_utf8(ev).ok().and_then(|s| {
        let data = s.lines().find_map(|l| l.strip_prefix("data: "))?;
        let mut v: serde_json::Value = serde_json::from_str(data).ok()?;
        let t = v["delta"]["text"].as_str()?.to_owned();
        let mut t: String = t.chars().take(size).collect();
        while t.len() > size {
            t.pop();
        }
        while t.len() < size {
            t.push('x');
        }
        v["delta"]["text"] = serde_json::Value::String(t);
        Some(format!("event: content_block_delta\ndata: {v}\n\n"))
    });
    text.map(Bytes::from).unwrap_or_else(|| ev.clone())
}

/// The pieces of a stream: `events` (in the real order) with the faults applied
/// after the first text delta.
pub fn plan(events: Vec<Bytes>, f: &Faults) -> Vec<Piece> {
    let events: Vec<Bytes> = match f.delta_size {
        Some(size) => events
            .into_iter()
            .map(|e| {
                if is_text_delta(&e) {
                    padded(&e, size)
                } else {
                    e
                }
            })
            .collect(),
        None => events,
    };
    let at = events
        .iter()
        .position(|e| is_text_delta(e))
        .map_or(events.len(), |i| i + 1);
    let repeat = events.get(at.wrapping_sub(1)).cloned();
    let mut out: Vec<Piece> = Vec::with_capacity(events.len() + 4);
    let mut rest = events.into_iter();
    out.extend(rest.by_ref().take(at).map(Piece::Data));
    if f.malformed_sse {
        out.push(Piece::Data(Bytes::from_static(MALFORMED_SSE)));
    }
    if f.bad_json_event {
        out.push(Piece::Data(Bytes::from_static(BAD_JSON_EVENT)));
    }
    if let Some(ms) = f.silent_ms {
        out.push(Piece::Pause(Duration::from_millis(ms)));
    }
    if f.reset_midstream {
        // A moment for what came before to be flushed: the reset is mid-body.
        out.push(Piece::Pause(FLUSH_PAUSE));
        out.push(Piece::Reset);
        return out;
    }
    if f.endless {
        if let Some(ev) = repeat {
            out.push(Piece::Repeat(ev));
        }
        return out;
    }
    out.extend(rest.map(Piece::Data));
    out
}

/// Counts a fault stream as completed, cancelled (the client went away), or
/// neither (the simulated upstream aborted it on purpose).
struct Outcome {
    state: Arc<SimState>,
    counted: bool,
}

impl Outcome {
    fn finish(&mut self, completed: bool) {
        if !self.counted {
            self.counted = true;
            if completed {
                self.state.streams_completed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        if !self.counted {
            self.state.streams_cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn reset_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "simulated upstream reset the connection",
    )
}

/// Plays `pieces` lazily: one piece per poll, `gap` between data pieces.
fn play(
    state: Arc<SimState>,
    pieces: Vec<Piece>,
    gap: Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let outcome = Outcome {
        state,
        counted: false,
    };
    let queue: VecDeque<Piece> = pieces.into();
    futures_util::stream::unfold(
        (queue, outcome, true),
        move |(mut queue, mut outcome, first)| async move {
            loop {
                match queue.pop_front() {
                    None => {
                        outcome.finish(true);
                        return None;
                    }
                    Some(Piece::Pause(d)) => tokio::time::sleep(d).await,
                    Some(Piece::Reset) => {
                        outcome.finish(false);
                        queue.clear();
                        return Some((Err(reset_error()), (queue, outcome, false)));
                    }
                    Some(piece @ (Piece::Data(_) | Piece::Repeat(_))) => {
                        if !first && !gap.is_zero() {
                            tokio::time::sleep(gap).await;
                        }
                        let b = match piece {
                            Piece::Repeat(b) => {
                                queue.push_front(Piece::Repeat(b.clone()));
                                b
                            }
                            Piece::Data(b) => b,
                            _ => Bytes::new(),
                        };
                        outcome
                            .state
                            .stream_bytes_sent
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        return Some((Ok(b), (queue, outcome, false)));
                    }
                }
            }
        },
    )
}

/// The SSE response of a request with faults.
pub fn stream_response(
    state: Arc<SimState>,
    events: Vec<Bytes>,
    faults: &Faults,
    gap_ms: u64,
) -> Response {
    let id = state.next_id();
    let pieces = plan(events, faults);
    let body = Body::from_stream(play(state, pieces, Duration::from_millis(gap_ms)));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    super::add_common_headers(h, id);
    resp
}

/// The JSON response of a non-streaming request with faults: the full
/// `content-length` is announced, then half the body, then the fault.
pub fn json_response(state: Arc<SimState>, json: String, faults: &Faults, id: u64) -> Response {
    let len = json.len();
    let bytes = Bytes::from(json);
    let half = len / 2;
    let mut pieces = vec![Piece::Data(bytes.slice(..half))];
    if let Some(ms) = faults.silent_ms {
        pieces.push(Piece::Pause(Duration::from_millis(ms)));
    }
    if faults.reset_midstream {
        pieces.push(Piece::Pause(FLUSH_PAUSE));
        pieces.push(Piece::Reset);
    } else {
        pieces.push(Piece::Data(bytes.slice(half..)));
    }
    let body = Body::from_stream(play(state, pieces, Duration::ZERO));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    super::add_common_headers(h, id);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    fn events() -> Vec<Bytes> {
        vec![
            ev("event: message_start\ndata: {}\n\n"),
            ev(
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"ab\"}}\n\n",
            ),
            ev("event: message_stop\ndata: {}\n\n"),
        ]
    }

    #[test]
    fn markers_parse() {
        let mut f = Faults::default();
        assert!(!f.active());
        for (k, v) in [
            ("reset-midstream", ""),
            ("silent", "250"),
            ("malformed-sse", ""),
            ("bad-json-event", ""),
            ("endless", ""),
            ("delta-size", "99999999"),
            ("unknown", "x"),
        ] {
            f.parse(k, v);
        }
        assert!(
            f.active() && f.reset_midstream && f.malformed_sse && f.bad_json_event && f.endless
        );
        assert_eq!(f.silent_ms, Some(250));
        assert_eq!(f.delta_size, Some(MAX_DELTA_SIZE));
    }

    #[test]
    fn faults_go_after_the_first_text_delta() {
        let f = Faults {
            malformed_sse: true,
            silent_ms: Some(5),
            reset_midstream: true,
            ..Faults::default()
        };
        let p = plan(events(), &f);
        assert_eq!(p.len(), 6);
        assert_eq!(p[2], Piece::Data(Bytes::from_static(MALFORMED_SSE)));
        assert_eq!(p[3], Piece::Pause(Duration::from_millis(5)));
        assert_eq!(p[4], Piece::Pause(FLUSH_PAUSE));
        assert_eq!(p[5], Piece::Reset);
        let endless = plan(
            events(),
            &Faults {
                endless: true,
                ..Faults::default()
            },
        );
        assert!(matches!(endless.last(), Some(Piece::Repeat(b)) if is_text_delta(b)));
    }

    #[test]
    fn deltas_are_padded_to_size() {
        let p = plan(
            events(),
            &Faults {
                delta_size: Some(1000),
                ..Faults::default()
            },
        );
        let Piece::Data(b) = &p[1] else { panic!() };
        let s = std::str::from_utf8(b).unwrap();
        let data = s.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        let t = v["delta"]["text"].as_str().unwrap();
        assert_eq!(t.len(), 1000);
        assert!(t.starts_with("ab"));
        assert_eq!(p.len(), 3);
    }
}
