//! Incremental Server-Sent Events parser (no I/O), per the WHATWG event-stream rules that matter
//! for API streams: `\n`, `\r\n` and `\r` line ends (also split across chunks), `event:` and `data:`
//! fields with one optional space after the colon, multi-line data joined with `\n`, comment lines
//! (`:...`) ignored, `id:`/`retry:` ignored, a leading UTF-8 BOM skipped, an event dispatched at a
//! blank line only if it had a `data` field. An unterminated event at end of input is not dispatched.
//!
//! Memory: the parser holds at most one partial line and one event's data; callers that want a
//! bound check [`SseParser::buffered_len`] after each push.

/// See the module docs.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Partial line carried over from the previous chunk.
    line: Vec<u8>,
    event: EventName,
    /// The name of an [`EventName::Other`] event (the buffer is kept from event to event).
    other: String,
    data: Vec<u8>,
    has_data: bool,
    /// Which events' data the caller reads (`None`: every event's). The data of the others is
    /// not kept: they are dispatched with empty data.
    wanted: Option<fn(&str) -> bool>,
    /// The event being assembled is one whose data is not kept.
    skipping: bool,
    /// Data of the event being assembled was dropped: it stays skipped, whatever it is renamed.
    skipped: bool,
    /// A line or an event went past [`MAX_EVENT`]: nothing more is read.
    too_long: bool,
    /// Inside a data line of a skipped event, split across chunks: its bytes are dropped as
    /// they come, up to its end.
    discarding: bool,
    /// The previous chunk ended with `\r`: a `\n` starting the next chunk belongs to that line end.
    pending_cr: bool,
    /// Past the possible BOM at the very start of the stream.
    started: bool,
    /// Bytes of the BOM matched so far (held back until we know).
    bom_matched: usize,
}

/// The name of the event being assembled. The Messages API's names are held as the static
/// strings they are, so that an event of a stream touches no name buffer on the heap (with
/// thousands of streams, each buffer touched per event is a likely cache miss).
#[derive(Debug, Default)]
enum EventName {
    #[default]
    None,
    Known(&'static str),
    /// In [`SseParser::other`].
    Other,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The most a parser holds of one line, or of one event's data: an upstream that sends more
/// without a line end, or without the blank line that ends an event, is broken (or hostile).
/// Past it the parser drops what it held, reads nothing more, and [`SseParser::too_long`] says
/// so.
pub const MAX_EVENT: usize = 16 * 1024 * 1024;

/// The Messages API's event names, matched as bytes: UTF-8 validation of a short name
/// (`core::str::from_utf8`) cost ~160 instructions per streamed event, 1.3 % of a relayed
/// 64-delta stream (callgrind, `scripts/bench/profile.sh`); a match on the length and bytes
/// costs a fraction. Other names are validated as before.
fn known_event(name: &[u8]) -> Option<&'static str> {
    Some(match name {
        b"content_block_delta" => "content_block_delta",
        b"content_block_start" => "content_block_start",
        b"content_block_stop" => "content_block_stop",
        b"message_start" => "message_start",
        b"message_delta" => "message_delta",
        b"message_stop" => "message_stop",
        b"ping" => "ping",
        b"error" => "error",
        _ => return None,
    })
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser for a caller that reads the data of only the events `wanted` says yes to: the
    /// others are still dispatched, with empty data, and their data is not copied from the
    /// `event:` line on. An unnamed event (no name, or an empty one) is read whole. An event
    /// renamed by a later `event:` line goes by its last name, unless data of it was already
    /// dropped: then it stays skipped (dispatched with empty data).
    pub fn reading_only(wanted: fn(&str) -> bool) -> Self {
        SseParser {
            wanted: Some(wanted),
            ..Self::default()
        }
    }

    /// Feeds bytes; calls `f(event, data)` for each complete event (event is `""` when the event had
    /// no `event:` field).
    pub fn push(&mut self, mut chunk: &[u8], mut f: impl FnMut(&str, &[u8])) {
        if self.too_long {
            return;
        }
        if !self.started {
            let mut i = 0;
            while i < chunk.len()
                && self.bom_matched < BOM.len()
                && chunk[i] == BOM[self.bom_matched]
            {
                self.bom_matched += 1;
                i += 1;
            }
            if self.bom_matched == BOM.len() {
                self.started = true;
                chunk = &chunk[i..];
            } else if i == chunk.len() {
                return; // still a possible BOM prefix: wait for more bytes
            } else {
                // Not a BOM: what was held back is ordinary data.
                self.started = true;
                let held = self.bom_matched;
                self.feed(&BOM[..held], &mut f);
                chunk = &chunk[i..];
            }
        }
        self.feed(chunk, &mut f);
    }

    fn feed(&mut self, mut chunk: &[u8], f: &mut impl FnMut(&str, &[u8])) {
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while !chunk.is_empty() {
            match memchr::memchr2(b'\n', b'\r', chunk) {
                None => {
                    if self.discarding {
                        break;
                    }
                    if self.line.len() + chunk.len() > MAX_EVENT {
                        self.give_up();
                        return;
                    }
                    self.line.extend_from_slice(chunk);
                    if self.skipping && self.line.starts_with(b"data:") {
                        // A data line of an event whose data is not kept: it counts as data,
                        // and its bytes are not held (an event's length does not matter then).
                        self.line.clear();
                        self.discarding = true;
                        self.has_data = true;
                        self.skipped = true;
                    }
                    break;
                }
                Some(pos) => {
                    if self.discarding {
                        self.discarding = false;
                    } else if self.line.is_empty() {
                        self.process_line(&chunk[..pos], f);
                    } else if self.line.len() + pos > MAX_EVENT {
                        self.give_up();
                    } else {
                        let mut line = std::mem::take(&mut self.line);
                        line.extend_from_slice(&chunk[..pos]);
                        self.process_line(&line, f);
                        if !self.too_long {
                            line.clear();
                            self.line = line;
                        }
                    }
                    if self.too_long {
                        return;
                    }
                    let mut next = pos + 1;
                    if chunk[pos] == b'\r' {
                        if next < chunk.len() {
                            if chunk[next] == b'\n' {
                                next += 1;
                            }
                        } else {
                            self.pending_cr = true;
                        }
                    }
                    chunk = &chunk[next..];
                }
            }
        }
    }

    /// A line or an event went past [`MAX_EVENT`]: the parser dropped what it held and reads
    /// nothing more.
    pub fn too_long(&self) -> bool {
        self.too_long
    }

    fn give_up(&mut self) {
        self.too_long = true;
        self.line = Vec::new();
        self.data = Vec::new();
        self.has_data = false;
        self.discarding = false;
        self.event = EventName::None;
    }

    /// Bytes held for the partial line and the event being assembled.
    pub fn buffered_len(&self) -> usize {
        self.line.len() + self.data.len() + self.event_name().len()
    }

    fn event_name(&self) -> &str {
        match self.event {
            EventName::None => "",
            EventName::Known(name) => name,
            EventName::Other => &self.other,
        }
    }

    fn process_line(&mut self, line: &[u8], f: &mut impl FnMut(&str, &[u8])) {
        if line.is_empty() {
            if self.has_data {
                f(self.event_name(), &self.data);
            }
            self.event = EventName::None;
            self.data.clear();
            self.has_data = false;
            self.skipping = false;
            self.skipped = false;
            self.discarding = false;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" => {
                if self.skipping {
                    self.skipped = true;
                } else if self.data.len() + usize::from(self.has_data) + value.len() > MAX_EVENT {
                    self.give_up();
                    return;
                } else {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
                self.has_data = true;
            }
            b"event" => {
                self.event = match known_event(value) {
                    Some(name) => EventName::Known(name),
                    None => {
                        self.other.clear();
                        match std::str::from_utf8(value) {
                            Ok(name) => self.other.push_str(name),
                            Err(_) => self.other.push_str(&String::from_utf8_lossy(value)),
                        }
                        EventName::Other
                    }
                };
                if let Some(wanted) = self.wanted {
                    let name = self.event_name();
                    let skip = self.skipped || (!name.is_empty() && !wanted(name));
                    if skip && !self.skipping && self.has_data {
                        // Data of it read under another name (or none) is dropped now.
                        self.skipped = true;
                        self.data.clear();
                    }
                    self.skipping = skip;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, |e, d| {
                out.push((e.to_owned(), String::from_utf8_lossy(d).into_owned()))
            });
        }
        out
    }

    fn ev(e: &str, d: &str) -> (String, String) {
        (e.to_owned(), d.to_owned())
    }

    #[test]
    fn basic_and_line_endings() {
        let want = vec![ev("a", "1"), ev("", "2\n3")];
        for sep in ["\n", "\r\n", "\r"] {
            let s = format!("event: a{sep}data: 1{sep}{sep}data:2{sep}data: 3{sep}{sep}");
            assert_eq!(parse_chunks(&[s.as_bytes()]), want, "{sep:?}");
        }
    }

    #[test]
    fn comments_ids_and_no_data() {
        let s =
            b": keepalive\n\nid: 7\nretry: 10\nevent: x\n\nevent: y\ndata\n\ndata:  two spaces\n\n";
        assert_eq!(
            parse_chunks(&[s]),
            vec![ev("y", ""), ev("", " two spaces")],
            "an event without data is not dispatched and its name does not leak"
        );
    }

    #[test]
    fn event_names_known_or_not_come_out_as_sent() {
        let names = [
            "content_block_delta",
            "content_block_start",
            "content_block_stop",
            "message_start",
            "message_delta",
            "message_stop",
            "ping",
            "error",
            "errors",
            "message_start2",
            "Ping",
            "response.output_text.delta",
            "événement",
        ];
        for name in names {
            let s = format!("event: {name}\ndata: {{}}\n\n");
            assert_eq!(
                parse_chunks(&[s.as_bytes()]),
                vec![ev(name, "{}")],
                "{name}"
            );
            assert!(known_event(name.as_bytes()).is_none_or(|k| k == name));
        }
        // Not UTF-8: replaced, as before.
        assert_eq!(
            parse_chunks(&[b"event: a\xFFb\ndata: 1\n\n"]),
            vec![ev("a\u{FFFD}b", "1")]
        );
    }

    #[test]
    fn data_of_unwanted_events_is_not_kept() {
        let mut p = SseParser::reading_only(|e| e == "keep");
        let mut out = Vec::new();
        let s = "event: skip\ndata: 1\ndata: 2\n\ndata: 0\nevent: skip\ndata: 3\n\n\
                 event: keep\ndata: 4\n\ndata: 5\n\nevent: other\n\n";
        p.push(s.as_bytes(), |e, d| {
            out.push((e.to_owned(), String::from_utf8_lossy(d).into_owned()))
        });
        assert_eq!(
            out,
            vec![ev("skip", ""), ev("skip", ""), ev("keep", "4"), ev("", "5")],
            "skipped events still come (empty); an unnamed one is read; one without data does not come"
        );
        // Renamed: the last name counts, unless data was already dropped.
        out.clear();
        let s = "event: skip\nevent: keep\ndata: 6\n\nevent: keep\ndata: 7\nevent: skip\n\n\
                 event: skip\ndata: 8\nevent: keep\ndata: 9\n\nevent: skip\nevent:\ndata: 10\n\n";
        p.push(s.as_bytes(), |e, d| {
            out.push((e.to_owned(), String::from_utf8_lossy(d).into_owned()))
        });
        assert_eq!(
            out,
            vec![
                ev("keep", "6"),
                ev("skip", ""),
                ev("keep", ""),
                ev("", "10")
            ]
        );
        // While an unwanted event is assembled, nothing of it is held but its name, not even
        // the start of a data line.
        p.push(b"event: skip\ndata: 123456789", |_, _| {});
        assert_eq!(p.buffered_len(), "skip".len());
        p.push(b"0\n", |_, _| {});
        assert_eq!(p.buffered_len(), "skip".len());
    }

    #[test]
    fn a_line_or_an_event_past_the_limit_ends_the_reading() {
        let big = vec![b'x'; MAX_EVENT / 2 + 1];
        // One line that never ends, in pieces.
        let mut p = SseParser::new();
        let mut n = 0;
        p.push(b"data: 1\n\ndata: ", |_, _| n += 1);
        p.push(&big, |_, _| n += 1);
        assert!(!p.too_long());
        p.push(&big, |_, _| n += 1);
        assert!(p.too_long());
        assert_eq!(p.buffered_len(), 0, "what it held is dropped");
        p.push(b"\n\ndata: 2\n\n", |_, _| n += 1);
        assert_eq!(n, 1, "nothing more is read");
        // Lines that end, of one event that does not.
        let mut p = SseParser::new();
        let mut line = b"data: ".to_vec();
        line.extend_from_slice(&big);
        line.push(b'\n');
        p.push(&line, |_, _| n += 1);
        assert!(!p.too_long());
        p.push(&line, |_, _| n += 1);
        assert!(p.too_long());
        assert_eq!(p.buffered_len(), 0);
        // The data of a skipped event is not held, so it does not count, even split in pieces.
        let mut p = SseParser::reading_only(|e| e == "keep");
        let mut got = Vec::new();
        p.push(b"event: e\n", |_, _| {});
        for _ in 0..3 {
            for piece in line.chunks(16 * 1024) {
                p.push(piece, |e, d| got.push((e.to_owned(), d.len())));
                assert!(p.buffered_len() <= 16 * 1024, "{}", p.buffered_len());
            }
        }
        assert!(!p.too_long());
        p.push(b"\nevent: keep\ndata: 5\n\n", |e, d| {
            got.push((e.to_owned(), d.len()))
        });
        assert_eq!(got, [("e".to_owned(), 0), ("keep".to_owned(), 1)]);
    }

    #[test]
    fn incomplete_event_not_dispatched() {
        assert_eq!(parse_chunks(&[b"data: 1\n"]), vec![]);
        assert_eq!(parse_chunks(&[b"data: 1"]), vec![]);
    }

    #[test]
    fn bom_is_skipped_even_when_split() {
        let s = b"\xEF\xBB\xBFdata: x\n\n";
        for i in 0..s.len() {
            assert_eq!(
                parse_chunks(&[&s[..i], &s[i..]]),
                vec![ev("", "x")],
                "split {i}"
            );
        }
        let s = b"\xEF\xBB\xBFdata: x\n\n";
        let chunks: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(parse_chunks(&chunks), vec![ev("", "x")]);
    }

    #[test]
    fn crlf_split_between_chunks() {
        assert_eq!(
            parse_chunks(&[b"data: a\r", b"\n\r", b"\n"]),
            vec![ev("", "a")]
        );
        // A lone CR followed by an empty chunk then LF is still one line end.
        assert_eq!(
            parse_chunks(&[b"data: a\r", b"", b"\n\r\n"]),
            vec![ev("", "a")]
        );
    }

    #[test]
    fn buffered_len_tracks_partial_data() {
        let mut p = SseParser::new();
        p.push(b"event: e\ndata: 12345", |_, _| {});
        assert_eq!(p.buffered_len(), "12345".len() + "data: ".len() + 1);
        p.push(b"\n\n", |_, _| {});
        assert_eq!(p.buffered_len(), 0);
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../shared/fixtures/anthropic/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    proptest! {
        #[test]
        fn any_split_same_events(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
                                 crlf in any::<bool>()) {
            let mut s = fixture("messages_tools_stream.sse");
            if crlf {
                let t = String::from_utf8(s).unwrap().replace('\n', "\r\n");
                s = t.into_bytes();
            }
            let whole = parse_chunks(&[&s]);
            prop_assert_eq!(whole.len(), 22);
            let chunks = crate::convert::test_support::split(&s, &cuts);
            prop_assert_eq!(parse_chunks(&chunks), whole.clone());
            // A parser that reads only some events' data: the same events, in the same order,
            // with the data of those and none of the others.
            let mut p = SseParser::reading_only(|e| e == "message_delta" || e == "message_start");
            let mut only = Vec::new();
            for c in &chunks {
                p.push(c, |e, d| only.push((e.to_owned(), String::from_utf8_lossy(d).into_owned())));
            }
            let want: Vec<(String, String)> = whole
                .into_iter()
                .map(|(e, d)| {
                    let keep = e == "message_delta" || e == "message_start";
                    (e, if keep { d } else { String::new() })
                })
                .collect();
            prop_assert_eq!(only, want);
        }

        /// Events named (once, several times, or not at all) before their data, any line ends,
        /// split anywhere: a parser that reads some events' data gives what a full parser gives,
        /// with the data of the others (by their last name; unnamed ones read) empty.
        #[test]
        fn reading_only_is_a_full_parse_with_the_unwanted_data_blanked(
            events in proptest::collection::vec(
                (proptest::collection::vec(0usize..6, 0..3), proptest::collection::vec("[a-z{}\":0-9 ]{0,12}", 0..3)),
                0..8),
            end in 0usize..3,
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            const NAMES: [&str; 6] = ["ping", "message_delta", "message_start", "content_block_delta", "", "custom"];
            fn wanted(e: &str) -> bool {
                e == "message_delta" || e == "message_start"
            }
            let eol = ["\n", "\r\n", "\r"][end];
            let mut text = String::new();
            for (names, datas) in &events {
                for &n in names {
                    text.push_str(&format!("event: {}{eol}", NAMES[n]));
                }
                for d in datas {
                    text.push_str(&format!("data: {d}{eol}"));
                }
                text.push_str(eol);
            }
            let s = text.as_bytes();
            let chunks = crate::convert::test_support::split(s, &cuts);
            let want: Vec<(String, String)> = parse_chunks(&chunks)
                .into_iter()
                .map(|(e, d)| {
                    let keep = e.is_empty() || wanted(&e);
                    (e, if keep { d } else { String::new() })
                })
                .collect();
            let mut p = SseParser::reading_only(wanted);
            let mut got = Vec::new();
            for c in &chunks {
                p.push(c, |e, d| got.push((e.to_owned(), String::from_utf8_lossy(d).into_owned())));
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let cut = cut.min(data.len());
            let _ = parse_chunks(&[&data[..cut], &data[cut..]]);
        }
    }
}
