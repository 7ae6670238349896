//! The text delta, read without a JSON parser.
//!
//! Most events of a streamed answer are text deltas, and the Messages API writes them in one
//! layout: `{"type":"content_block_delta","index":N,"delta":{"type":"text_delta","text":"…"}}`.
//! Decoding each into a [`StreamEvent`](crate::api::anthropic::StreamEvent) with serde_json was
//! about three quarters of the stream converters' instructions per event (callgrind,
//! `scripts/bench/profile.sh`, `full-openai-stream64`). [`text_delta`] matches that layout byte
//! for byte and hands back the text's JSON string literal as it came.
//!
//! It takes only what serde_json itself would write for the same text: the escapes `\"`, `\\`,
//! `\b`, `\f`, `\n`, `\r`, `\t` and no others (no `\u`, no `\/`), no raw control character, valid
//! UTF-8. So the literal can be copied into the converted event and comes out byte for byte as
//! re-encoding the decoded text would. Anything else — another field order, whitespace, another
//! escape, a number that is not plain — is `None`, and the caller decodes the event with serde
//! as before: both paths give the same output for every input (the tests check it).

use std::borrow::Cow;

/// A text delta: the content block's index and the text as a JSON string literal (quotes
/// included), in serde_json's own escaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextDelta<'a> {
    pub index: u64,
    pub literal: &'a [u8],
}

impl<'a> TextDelta<'a> {
    /// True when the text is empty.
    pub fn is_empty(&self) -> bool {
        self.literal.len() == 2
    }

    /// The text, decoded.
    pub fn text(&self) -> Cow<'a, str> {
        let inner = &self.literal[1..self.literal.len() - 1];
        if !inner.contains(&b'\\') {
            // Checked to be UTF-8 by `text_delta`.
            return Cow::Borrowed(std::str::from_utf8(inner).unwrap_or_default());
        }
        let mut out = Vec::with_capacity(inner.len());
        let mut i = 0;
        while i < inner.len() {
            let b = inner[i];
            if b == b'\\' {
                i += 1;
                out.push(match inner[i] {
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    other => other, // `"` and `\`, the only others `text_delta` takes
                });
            } else {
                out.push(b);
            }
            i += 1;
        }
        // Escapes of ASCII bytes in UTF-8 text leave UTF-8 text.
        Cow::Owned(String::from_utf8(out).unwrap_or_default())
    }
}

const HEAD: &[u8] = br#"{"type":"content_block_delta","index":"#;
const MID: &[u8] = br#","delta":{"type":"text_delta","text":"#;
const TAIL: &[u8] = b"}}";

/// The text delta in `data`, when `data` is one in the Messages API's own layout (see the
/// module docs); `None` for anything else.
pub fn text_delta(data: &[u8]) -> Option<TextDelta<'_>> {
    let rest = data.strip_prefix(HEAD)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    // A plain number: no leading zero, and small enough not to overflow.
    if digits == 0 || digits > 18 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let index = rest[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let rest = rest[digits..].strip_prefix(MID)?;
    let len = literal_len(rest)?;
    if &rest[len..] != TAIL {
        return None;
    }
    let literal = &rest[..len];
    std::str::from_utf8(&literal[1..len - 1]).ok()?;
    Some(TextDelta { index, literal })
}

/// The length of the string literal at the start of `s` (quotes included), when it uses only
/// the escapes serde_json writes and no raw control character.
fn literal_len(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    loop {
        match *s.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match s.get(i + 1)? {
                b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                _ => return None,
            },
            0..0x20 => return None,
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(index: u64, text: &str) -> Vec<u8> {
        let mut v = format!(r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":"#).into_bytes();
        serde_json::to_writer(&mut v, text).unwrap();
        v.extend_from_slice(b"}}");
        v
    }

    #[test]
    fn reads_the_messages_api_layout() {
        let d = br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello! It"}}"#;
        let t = text_delta(d).unwrap();
        assert_eq!(t.index, 0);
        assert_eq!(t.literal, br#""Hello! It""#);
        assert_eq!(t.text(), "Hello! It");
        let text = "a \"quoted\"\n\ttab \\ back\u{8}\u{c}\r é 😀";
        let d = canonical(12, text);
        let t = text_delta(&d).unwrap();
        assert_eq!(t.index, 12);
        assert_eq!(t.text(), text);
        assert!(!t.is_empty());
        assert!(text_delta(&canonical(3, "")).unwrap().is_empty());
    }

    #[test]
    fn leaves_everything_else_to_serde() {
        for d in [
            // serde_json writes `\u0001` for U+0001: not taken (the caller decodes it).
            canonical(0, "\u{1}"),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\u0041"}}"#.to_vec(),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\/b"}}"#.to_vec(),
            br#"{"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"a"}}"#.to_vec(),
            br#"{"type":"content_block_delta","index":-1,"delta":{"type":"text_delta","text":"a"}}"#.to_vec(),
            br#"{"type":"content_block_delta","index":1.0,"delta":{"type":"text_delta","text":"a"}}"#.to_vec(),
            br#"{"type":"content_block_delta","index":99999999999999999999,"delta":{"type":"text_delta","text":"a"}}"#.to_vec(),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}} "#.to_vec(),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"},"x":1}"#.to_vec(),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a","x":1}}"#.to_vec(),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a}}"#.to_vec(),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a\"#.to_vec(),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"a"}}"#.to_vec(),
            br#"{"index":0,"type":"content_block_delta","delta":{"type":"text_delta","text":"a"}}"#.to_vec(),
            b"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\tb\"}}".to_vec(),
            b"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\xff\"}}".to_vec(),
            b"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"\xed\xa0\x80\"}}".to_vec(),
        ] {
            assert_eq!(text_delta(&d), None, "{}", String::from_utf8_lossy(&d));
        }
    }

    proptest! {
        /// Whatever it takes, the literal is what serde_json writes for the text it decodes to,
        /// and serde_json decodes the event to the same index and text.
        #[test]
        fn agrees_with_serde(index in 0u64..1_000_000_000, text in ".*", raw in proptest::collection::vec(any::<u8>(), 0..24)) {
            for d in [canonical(index, &text), [HEAD, b"0", MID, b"\"", &raw, b"\"", TAIL].concat()] {
                let Some(t) = text_delta(&d) else { continue };
                let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
                prop_assert_eq!(v["index"].as_u64(), Some(t.index));
                let decoded = v["delta"]["text"].as_str().unwrap();
                prop_assert_eq!(t.text(), decoded);
                prop_assert_eq!(serde_json::to_vec(decoded).unwrap(), t.literal);
            }
            // serde_json's own output of a text without other control characters is taken.
            if !text.chars().any(|c| c < ' ' && !"\u{8}\u{c}\n\r\t".contains(c)) {
                prop_assert!(text_delta(&canonical(index, &text)).is_some());
            }
        }
    }
}
