//! Reading an SSE answer as it arrives: events, time to the first content event, gaps
//! between content events, and whether the simulated upstream's benchmark tokens
//! (`tok0 tok1 …`, one per text delta) all arrived, in order.
//!
//! Works for both dialects: Anthropic `content_block_delta` events and OpenAI
//! `chat.completion.chunk` data lines both carry the tokens in their text; the stream is
//! complete at `message_stop` (Anthropic) or `data: [DONE]` (OpenAI).

use std::time::Instant;

use crate::http1::BodySink;

pub struct SseTrack {
    partial: Vec<u8>,
    /// Whether the event being read so far carried a token / is an error / ends the stream.
    ev_lines: u32,
    ev_tokens: u32,
    ev_error: bool,
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
    pub fn new() -> Self {
        SseTrack {
            partial: Vec::with_capacity(1024),
            ev_lines: 0,
            ev_tokens: 0,
            ev_error: false,
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
        *self = SseTrack::new();
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
        if let Some(name) = line.strip_prefix(b"event:") {
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
        if self.ev_tokens > 0 {
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

/// A sink for non-streaming answers: counts bytes, keeps the start for error messages.
#[derive(Default)]
pub struct PlainSink {
    pub bytes: usize,
    pub start: Vec<u8>,
}

impl BodySink for PlainSink {
    fn data(&mut self, bytes: &[u8], _at: Instant) {
        self.bytes += bytes.len();
        if self.start.len() < 300 {
            let take = (300 - self.start.len()).min(bytes.len());
            self.start.extend_from_slice(&bytes[..take]);
        }
    }
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
}
