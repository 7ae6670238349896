//! Reading an SSE answer as it arrives: events, time to the first content event, gaps
//! between content events, and whether the simulated upstream's benchmark tokens
//! (`tok0 tok1 …`, one per text delta) all arrived, in order.
//!
//! Works for every dialect: Anthropic `content_block_delta` events and OpenAI
//! `chat.completion.chunk` data lines both carry the tokens in their text; the stream is
//! complete at `message_stop` (Anthropic) or `data: [DONE]` (OpenAI). A Responses stream
//! ([`SseTrack::responses`]) repeats the whole text in its `*.done` and `response.completed`
//! events, so there only `response.output_text.delta` events are read for tokens (and are its
//! content events, TTFT included); it is complete at `response.completed`.

use std::time::Instant;

use crate::http1::BodySink;

pub struct SseTrack {
    partial: Vec<u8>,
    /// Whether the event being read so far carried a token / is an error / ends the stream.
    ev_lines: u32,
    ev_tokens: u32,
    ev_error: bool,
    /// Responses stream: the event being read is a `response.output_text.delta`.
    ev_delta: bool,
    /// Read as an OpenAI Responses stream (kept across [`SseTrack::reset`]).
    pub responses: bool,
    pub events: u32,
    pub content_events: u32,
    pub first_content: Option<Instant>,
    last_content: Option<Instant>,
    /// Gaps between consecutive content events, in nanoseconds.
    pub gaps_ns: Vec<u64>,
    pub max_gap_ns: u64,
    /// Tokens seen, and the index the next one should carry.
    pub tokens: u32,
    next_tok: u64,
    pub reordered: bool,
    pub done: bool,
    pub error_event: bool,
}

impl Default for SseTrack {
    fn default() -> Self {
        Self::new()
    }
}

impl SseTrack {
    /// A tracker for a Responses stream.
    pub fn responses() -> Self {
        SseTrack {
            responses: true,
            ..SseTrack::new()
        }
    }

    pub fn new() -> Self {
        SseTrack {
            partial: Vec::with_capacity(1024),
            ev_lines: 0,
            ev_tokens: 0,
            ev_error: false,
            ev_delta: false,
            responses: false,
            events: 0,
            content_events: 0,
            first_content: None,
            last_content: None,
            gaps_ns: Vec::new(),
            max_gap_ns: 0,
            tokens: 0,
            next_tok: 0,
            reordered: false,
            done: false,
            error_event: false,
        }
    }

    /// Reuses the allocations for the next stream.
    pub fn reset(&mut self) {
        let mut gaps = std::mem::take(&mut self.gaps_ns);
        gaps.clear();
        let mut partial = std::mem::take(&mut self.partial);
        partial.clear();
        *self = SseTrack {
            responses: self.responses,
            ..SseTrack::new()
        };
        self.gaps_ns = gaps;
        self.partial = partial;
    }

    fn line(&mut self, line: &[u8], at: Instant) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(at);
            return;
        }
        self.ev_lines += 1;
        if self.responses {
            self.responses_line(line);
        } else if let Some(name) = line.strip_prefix(b"event:") {
            let name = name.trim_ascii();
            match name {
                b"message_stop" => self.done = true,
                b"error" => self.ev_error = true,
                _ => {}
            }
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.trim_ascii();
            if data == b"[DONE]" {
                self.done = true;
                return;
            }
            self.scan_tokens(data);
        }
    }

    /// A non-empty line of a Responses stream: tokens only from `response.output_text.delta`
    /// data (the `event:` line comes first, as OpenAI and ccproxy send it).
    fn responses_line(&mut self, line: &[u8]) {
        if let Some(name) = line.strip_prefix(b"event:") {
            match name.trim_ascii() {
                b"response.output_text.delta" => self.ev_delta = true,
                b"response.completed" => self.done = true,
                b"response.failed" | b"error" => self.ev_error = true,
                _ => {}
            }
        } else if let Some(data) = line.strip_prefix(b"data:")
            && self.ev_delta
        {
            self.scan_tokens(data.trim_ascii());
        }
    }

    fn scan_tokens(&mut self, data: &[u8]) {
        let mut i = 0;
        while let Some(off) = memchr::memmem::find(&data[i..], b"tok") {
            let mut j = i + off + 3;
            let start = j;
            let mut n: u64 = 0;
            while j < data.len() && data[j].is_ascii_digit() {
                n = n
                    .saturating_mul(10)
                    .saturating_add(u64::from(data[j] - b'0'));
                j += 1;
            }
            if j > start && j < data.len() && data[j] == b' ' {
                if n != self.next_tok {
                    self.reordered = true;
                }
                self.next_tok = n + 1;
                self.tokens += 1;
                self.ev_tokens += 1;
            }
            i = j.max(i + off + 3);
        }
    }

    fn dispatch(&mut self, at: Instant) {
        if self.ev_lines == 0 {
            return;
        }
        self.events += 1;
        if self.ev_error {
            self.error_event = true;
        }
        let content = if self.responses {
            self.ev_delta
        } else {
            self.ev_tokens > 0
        };
        if content {
            self.content_events += 1;
            if self.first_content.is_none() {
                self.first_content = Some(at);
            }
            if let Some(prev) = self.last_content {
                let g = at.saturating_duration_since(prev).as_nanos() as u64;
                self.gaps_ns.push(g);
                self.max_gap_ns = self.max_gap_ns.max(g);
            }
            self.last_content = Some(at);
        }
        self.ev_lines = 0;
        self.ev_tokens = 0;
        self.ev_error = false;
        self.ev_delta = false;
    }

    /// Ends the body: an event not closed by a blank line still counts.
    pub fn finish(&mut self, at: Instant) {
        if !self.partial.is_empty() {
            let p = std::mem::take(&mut self.partial);
            self.line(&p, at);
        }
        self.dispatch(at);
    }
}

impl BodySink for SseTrack {
    fn data(&mut self, mut bytes: &[u8], at: Instant) {
        while let Some(i) = memchr::memchr(b'\n', bytes) {
            if self.partial.is_empty() {
                self.line(&bytes[..i], at);
            } else {
                let mut p = std::mem::take(&mut self.partial);
                p.extend_from_slice(&bytes[..i]);
                self.line(&p, at);
                p.clear();
                self.partial = p;
            }
            bytes = &bytes[i + 1..];
        }
        self.partial.extend_from_slice(bytes);
    }
}

/// A sink for non-streaming answers: counts bytes, keeps the start for error messages (and
/// the whole body when `whole` is set, for answers that are checked).
#[derive(Default)]
pub struct PlainSink {
    pub bytes: usize,
    pub start: Vec<u8>,
    pub whole: Option<Vec<u8>>,
}

impl BodySink for PlainSink {
    fn data(&mut self, bytes: &[u8], _at: Instant) {
        self.bytes += bytes.len();
        if self.start.len() < 300 {
            let take = (300 - self.start.len()).min(bytes.len());
            self.start.extend_from_slice(&bytes[..take]);
        }
        if let Some(w) = &mut self.whole {
            w.extend_from_slice(bytes);
        }
    }
}

/// Whether a non-streaming Responses answer is a completed `response` whose `output` holds a
/// message with text. ccproxy's field order is checked first without parsing (`object`, then
/// the top-level `status` before `output`, then a non-empty `output_text`); any other body is
/// parsed and checked field by field.
pub fn responses_answer_ok(body: &[u8]) -> bool {
    use memchr::memmem::find;
    let fast = || -> Option<()> {
        let o = find(body, br#""object":"response""#)?;
        let rest = &body[o..];
        let s = find(rest, br#""status":""#)?;
        let out = find(rest, br#""output":["#)?;
        if s > out || !rest[s + 10..].starts_with(b"completed\"") {
            return None;
        }
        let rest = &rest[out..];
        let t = find(rest, br#"{"type":"output_text","text":""#)?;
        let after = rest.get(t + 30)?;
        (*after != b'"').then_some(())
    };
    if fast().is_some() {
        return true;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    v["object"] == "response"
        && v["status"] == "completed"
        && v["output"].as_array().is_some_and(|items| {
            items.iter().any(|item| {
                item["type"] == "message"
                    && item["content"].as_array().is_some_and(|parts| {
                        parts.iter().any(|p| {
                            p["type"] == "output_text"
                                && p["text"].as_str().is_some_and(|t| !t.is_empty())
                        })
                    })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut SseTrack, s: &str, split: usize) {
        let now = Instant::now();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let e = (i + split).min(b.len());
            t.data(&b[i..e], now);
            i = e;
        }
        t.finish(now);
    }

    const ANTHROPIC: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"usage\":{\"input_tokens\":3}}\n\n\
event: content_block_delta\ndata: {\"delta\":{\"text\":\"tok0 \"}}\n\n\
event: content_block_delta\ndata: {\"delta\":{\"text\":\"tok1 \"}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    #[test]
    fn anthropic_stream_complete_at_any_split() {
        for split in 1..40 {
            let mut t = SseTrack::new();
            feed(&mut t, ANTHROPIC, split);
            assert_eq!(t.events, 4, "split {split}");
            assert_eq!(t.tokens, 2);
            assert_eq!(t.content_events, 2);
            assert!(t.done && !t.reordered && !t.error_event);
            assert_eq!(t.gaps_ns.len(), 1);
        }
    }

    #[test]
    fn openai_reordered_and_done() {
        let s = "data: {\"choices\":[{\"delta\":{\"content\": \"tok1 \"}}]}\r\n\r\n\
data: {\"choices\":[{\"delta\":{\"content\":\"tok0 \"}}]}\r\n\r\ndata: [DONE]\r\n\r\n";
        let mut t = SseTrack::new();
        feed(&mut t, s, 7);
        assert_eq!(t.tokens, 2);
        assert!(t.reordered && t.done);
    }

    const RESPONSES: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"object\":\"response\",\"output\":[]}}\n\n\
event: response.output_item.added\ndata: {\"type\":\"response.output_item.added\"}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"tok0 \",\"logprobs\":[]}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"tok1 \",\"logprobs\":[]}\n\n\
event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"text\":\"tok0 tok1 \"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"output\":[{\"content\":[{\"text\":\"tok0 tok1 \"}]}]}}\n\n";

    #[test]
    fn responses_stream_counts_only_deltas() {
        for split in 1..40 {
            let mut t = SseTrack::responses();
            feed(&mut t, RESPONSES, split);
            assert_eq!(t.events, 6, "split {split}");
            assert_eq!(t.tokens, 2);
            assert_eq!(t.content_events, 2);
            assert!(t.done && !t.reordered && !t.error_event);
            assert_eq!(t.gaps_ns.len(), 1);
            t.reset();
            assert!(t.responses && !t.done && t.tokens == 0);
        }
        // Read as another dialect, the repeated text would count again, out of order.
        let mut t = SseTrack::new();
        feed(&mut t, RESPONSES, 5);
        assert!(t.reordered && !t.done);
    }

    #[test]
    fn responses_stream_failed_is_not_done() {
        let s = RESPONSES.replace("response.completed", "response.failed");
        let mut t = SseTrack::responses();
        feed(&mut t, &s, 9);
        assert!(!t.done && t.error_event);
    }

    #[test]
    fn responses_answer_checked() {
        let ok = r#"{"id":"resp_1","object":"response","created_at":1,"status":"completed","model":"m","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello!","annotations":[]}]}],"usage":{}}"#;
        assert!(responses_answer_ok(ok.as_bytes()));
        // Other field orders and whitespace go the parsed path.
        let v: serde_json::Value = serde_json::from_str(ok).unwrap();
        assert!(responses_answer_ok(
            serde_json::to_string_pretty(&v).unwrap().as_bytes()
        ));
        let reordered = r#"{"output":[{"content":[{"text":"Hi","type":"output_text"}],"type":"message"}],"status":"completed","object":"response"}"#;
        assert!(responses_answer_ok(reordered.as_bytes()));
        for bad in [
            ok.replace(
                r#""status":"completed","model""#,
                r#""status":"incomplete","model""#,
            ),
            ok.replace(r#""text":"Hello!""#, r#""text":"""#),
            ok.replace(r#""object":"response""#, r#""object":"chat.completion""#),
            ok.replace("output_text", "refusal"),
            ok[..ok.len() / 2].to_owned(),
            r#"{"error":{"message":"x"}}"#.to_owned(),
            String::new(),
        ] {
            assert!(!responses_answer_ok(bad.as_bytes()), "{bad}");
        }
    }
}
