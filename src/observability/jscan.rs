//! A hand-written reader of the few JSON values the usage tap reads out of every non-stream
//! answer (the `usage` object and the `model` string), about five times cheaper than serde for
//! them. It reads only the plain shapes Anthropic sends; anything else (an escape in a key, a
//! number that is not a plain unsigned integer, a repeated field) is `None`, and the caller
//! falls back to serde, so both readers agree on every well-formed input (the members this
//! reader skips are checked only as far as finding their end needs).

use crate::api::anthropic::{CacheCreation, WireUsage};

/// Reads a `usage` object at the start of `s` (after optional whitespace): the usage and how
/// many bytes it took.
pub fn usage(s: &[u8]) -> Option<(WireUsage, usize)> {
    let mut r = Reader { s, i: 0 };
    let mut u = WireUsage::default();
    let mut seen = 0u8;
    r.object(|r, key| {
        let bit = match key {
            b"input_tokens" => 1,
            b"output_tokens" => 2,
            b"cache_read_input_tokens" => 4,
            b"cache_creation_input_tokens" => 8,
            b"cache_creation" => 16,
            b"speed" => 32,
            _ => return r.skip_value(),
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match key {
            b"input_tokens" => u.input_tokens = r.opt_u64()?,
            b"output_tokens" => u.output_tokens = r.opt_u64()?,
            b"cache_read_input_tokens" => u.cache_read_input_tokens = r.opt_u64()?,
            b"cache_creation_input_tokens" => u.cache_creation_input_tokens = r.opt_u64()?,
            b"cache_creation" => u.cache_creation = r.cache_creation()?,
            _ => u.fast = r.opt_str()?.map(|s| s == b"fast"),
        }
        Some(())
    })?;
    Some((u, r.i))
}

/// Reads a JSON string without escapes at the start of `s` (after optional whitespace): its
/// text and how many bytes it took.
pub fn string(s: &[u8]) -> Option<(&str, usize)> {
    let mut r = Reader { s, i: 0 };
    let text = std::str::from_utf8(r.plain_str()?).ok()?;
    Some((text, r.i))
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    /// The next non-whitespace byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        self.s[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// An object, each member's value read by `member` (which is given the raw key).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.plain_str()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The raw bytes of a string with no escape and no control character (else `None`). A byte
    /// loop: the keys and values read here are too short for a vectorised search to pay its
    /// setup. Not checked for UTF-8 (see [`string`]).
    fn plain_str(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match *self.s.get(self.i)? {
                b'"' => break,
                b'\\' | 0..0x20 => return None,
                _ => self.i += 1,
            }
        }
        let raw = &self.s[start..self.i];
        self.i += 1;
        Some(raw)
    }

    fn opt_str(&mut self) -> Option<Option<&'a [u8]>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        self.plain_str().map(Some)
    }

    /// `null` or a plain unsigned integer that fits a `u64` (no sign, fraction or exponent).
    fn opt_u64(&mut self) -> Option<Option<u64>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.s.get(self.i) {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        let leading_zero = digits > 1 && self.s[start] == b'0';
        let more = matches!(
            self.s.get(self.i),
            Some(b'.' | b'e' | b'E' | b'-' | b'+' | b'0'..=b'9')
        );
        (digits > 0 && !leading_zero && !more).then_some(Some(v))
    }

    fn cache_creation(&mut self) -> Option<Option<CacheCreation>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(None);
        }
        let mut c = CacheCreation::default();
        let mut seen = false;
        self.object(|r, key| {
            if key != b"ephemeral_1h_input_tokens" {
                return r.skip_value();
            }
            if std::mem::replace(&mut seen, true) {
                return None;
            }
            c.ephemeral_1h_input_tokens = r.opt_u64()?;
            Some(())
        })?;
        Some(Some(c))
    }

    /// Any value of a member the reader does not keep, checked for shape only as far as
    /// finding its end needs (strings with escapes, nested objects and arrays included).
    fn skip_value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    loop {
                        // `get`: an escape as the input's last byte leaves `i` past its end.
                        let at = memchr::memchr2(b'"', b'\\', self.s.get(self.i..)?)?;
                        self.i += at + 1;
                        if self.s[self.i - 1] == b'"' {
                            break;
                        }
                        // An escape: skip the escaped byte.
                        self.i += 1;
                    }
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.i += 1;
                    continue;
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    self.i += 1;
                }
                b',' | b':' if depth > 0 => {
                    self.i += 1;
                    continue;
                }
                b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                    while let Some(b'-' | b'+' | b'.' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z') =
                        self.s.get(self.i)
                    {
                        self.i += 1;
                    }
                }
                _ => return None,
            }
            if depth == 0 {
                return Some(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What serde reads from `s`, in the shape [`usage`] answers.
    fn serde_usage(s: &[u8]) -> Option<(WireUsage, usize)> {
        let mut it = serde_json::Deserializer::from_slice(s).into_iter::<WireUsage>();
        let u = it.next()?.ok()?;
        Some((u, it.byte_offset()))
    }

    #[test]
    fn reads_what_anthropic_sends() {
        let s = br#" {"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":7,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":3},"output_tokens":40,"service_tier":"standard","server_tool_use":{"web_search_requests":1},"speed":"fast"}}"#;
        let (u, n) = usage(s).unwrap();
        assert_eq!(u.input_tokens, Some(12));
        assert_eq!(u.output_tokens, Some(40));
        assert_eq!(u.cache_read_input_tokens, Some(7));
        assert_eq!(u.cache_creation_input_tokens, Some(0));
        assert_eq!(u.cache_creation.unwrap().ephemeral_1h_input_tokens, Some(3));
        assert_eq!(u.fast, Some(true));
        assert_eq!(&s[n..], b"}");
        assert_eq!(serde_usage(s), Some((u, n)));
    }

    #[test]
    fn leaves_to_serde_what_it_does_not_read_plainly() {
        for s in [
            &br#"{"input_tokens":1.0}"#[..],
            br#"{"input_tokens":-1}"#,
            br#"{"input_tokens":01}"#,
            br#"{"input_tokens":1e3}"#,
            br#"{"input_tokens":1,"input_tokens":2}"#,
            br#"{"in\u0070ut_tokens":1}"#,
            br#"{"speed":"f\u0061st"}"#,
            br#"{"input_tokens":99999999999999999999}"#,
            br#"{"input_tokens":1"#,
            br#"{"input_tokens":1,}"#,
            br#"["input_tokens"]"#,
            // Cut short inside a skipped string, on an escape.
            br#"{"x":"\"#,
            br#"{"a":{"b":"\"#,
            br#"{"x":"a\"#,
            br#"{"x":"#,
            br#"{"x":[1,"#,
        ] {
            assert_eq!(usage(s), None, "{}", String::from_utf8_lossy(s));
        }
        assert_eq!(string(br#""a\"b""#), None);
        assert_eq!(string(b"\""), None);
        assert_eq!(string(b""), None);
        assert_eq!(string(br#" "claude-x" ,"#), Some(("claude-x", 11)));
    }

    fn member() -> impl Strategy<Value = String> {
        let num = prop_oneof![
            (0u64..100_000).prop_map(|n| n.to_string()),
            Just("null".to_owned()),
            Just("1.5".to_owned()),
            Just("-3".to_owned()),
        ];
        let other = prop_oneof![
            Just(r#""standard""#.to_owned()),
            Just(r#"{"a":[1,{"b":"x\"}"}],"c":null}"#.to_owned()),
            Just("[]".to_owned()),
            Just("true".to_owned()),
            Just(r#""fast""#.to_owned()),
            Just(r#"{"ephemeral_1h_input_tokens":5,"ephemeral_5m_input_tokens":2}"#.to_owned()),
            Just("null".to_owned()),
        ];
        let key = prop_oneof![
            Just("input_tokens"),
            Just("output_tokens"),
            Just("cache_read_input_tokens"),
            Just("cache_creation_input_tokens"),
            Just("cache_creation"),
            Just("speed"),
            Just("service_tier"),
            Just("server_tool_use"),
        ];
        (key, num, other, any::<bool>())
            .prop_map(|(k, n, o, pick_num)| format!("\"{k}\" : {}", if pick_num { n } else { o }))
    }

    #[test]
    fn every_prefix_of_an_answer_is_read_without_panic() {
        let s = br#"{"x":"a\"b\\","input_tokens":12,"cache_creation":{"ephemeral_1h_input_tokens":3,"y":[1,{"z":"\u0041"}]},"speed":"fast","output_tokens":40}"#;
        for n in 0..s.len() {
            assert_eq!(usage(&s[..n]), None, "{n}");
            let _ = string(&s[n..]);
        }
        assert!(usage(s).is_some());
    }

    proptest! {
        /// Any bytes at all: an answer, never a panic.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = usage(&bytes);
            let _ = string(&bytes);
        }

        /// Wherever the hand reader answers, serde answers the same; where serde reads a
        /// usage and the hand reader does not, the caller's fallback is serde anyway.
        #[test]
        fn agrees_with_serde(members in proptest::collection::vec(member(), 0..8), tail in "[ }]{0,3}") {
            let s = format!("{{{}}}{tail}", members.join(","));
            if let Some(fast) = usage(s.as_bytes()) {
                prop_assert_eq!(Some(fast), serde_usage(s.as_bytes()), "{}", s);
            }
        }
    }
}
