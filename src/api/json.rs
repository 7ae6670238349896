//! JSON text written by hand, byte for byte what `serde_json::to_string` writes.
//!
//! serde_json escapes every string it writes one byte at a time through a table, keys included
//! (a small Responses object has 50 of them): ~140 instructions per string, 9k per request.
//! Here a string is scanned eight bytes at a time, and a writer that knows its keys writes them
//! as literals.

use serde_json::Value;

/// Where JSON text goes: a byte buffer or a `String` (escapes split a string only at ASCII
/// bytes, so every piece is valid UTF-8).
pub trait Sink {
    fn put(&mut self, s: &str);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

impl Sink for String {
    #[inline]
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `w` is a control character, `"` or `\`. Exact when it says no; a yes may
/// be wrong only above a byte that does need escaping (the borrow of the subtraction), and the
/// caller then looks at the bytes one by one.
#[inline]
fn needs_escape(w: u64) -> bool {
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    (control | zero(quote) | zero(backslash)) & HIGHS != 0
}

/// The escape serde_json writes for byte `b`, if it writes one.
#[inline]
fn escape(b: u8) -> Option<&'static str> {
    const CONTROL: [&str; 32] = [
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011",
        "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019",
        "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    ];
    match b {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        0..0x20 => Some(CONTROL[usize::from(b)]),
        _ => None,
    }
}

/// Appends `s` as a JSON string literal (quotes included).
pub fn string(out: &mut impl Sink, s: &str) {
    out.put("\"");
    let b = s.as_bytes();
    let mut plain = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(chunk) = b.get(i..i + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            if !needs_escape(u64::from_le_bytes(w)) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(b.len());
        while i < end {
            if let Some(e) = escape(b[i]) {
                out.put(&s[plain..i]);
                out.put(e);
                plain = i + 1;
            }
            i += 1;
        }
    }
    out.put(&s[plain..]);
    out.put("\"");
}

/// Appends `"key":`; `key` is a literal that needs no escaping.
#[inline]
pub fn key(out: &mut impl Sink, key: &str) {
    out.put("\"");
    out.put(key);
    out.put("\":");
}

/// Appends an unsigned integer.
#[inline]
pub fn uint(out: &mut impl Sink, n: u64) {
    out.put(itoa::Buffer::new().format(n));
}

/// Appends a float as serde_json does (shortest round-trip form; `null` when not finite).
pub fn float(out: &mut impl Sink, f: f64) {
    match serde_json::Number::from_f64(f) {
        Some(n) => out.put(&n.to_string()),
        None => out.put("null"),
    }
}

/// Appends a number as serde_json does (integers through `itoa`, as its serializer).
fn number(out: &mut impl Sink, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        uint(out, u);
    } else if let Some(i) = n.as_i64() {
        out.put(itoa::Buffer::new().format(i));
    } else {
        out.put(&n.to_string());
    }
}

/// Appends `s`, or `null`.
pub fn opt_string(out: &mut impl Sink, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.put("null"),
    }
}

/// Appends `[…]`, each element written by `write`.
pub fn array<S: Sink, T>(out: &mut S, items: &[T], write: impl Fn(&mut S, &T)) {
    out.put("[");
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.put(",");
        }
        write(out, x);
    }
    out.put("]");
}

/// Appends any JSON value, compact, keys in the map's order.
pub fn value(out: &mut impl Sink, v: &Value) {
    match v {
        Value::Null => out.put("null"),
        Value::Bool(true) => out.put("true"),
        Value::Bool(false) => out.put("false"),
        Value::Number(n) => number(out, n),
        Value::String(s) => string(out, s),
        Value::Array(a) => array(out, a, value),
        Value::Object(m) => {
            out.put("{");
            for (i, (k, v)) in m.iter().enumerate() {
                if i > 0 {
                    out.put(",");
                }
                string(out, k);
                out.put(":");
                value(out, v);
            }
            out.put("}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ours(s: &str) -> String {
        let mut out = String::new();
        string(&mut out, s);
        let mut bytes = Vec::new();
        string(&mut bytes, s);
        assert_eq!(out.as_bytes(), bytes, "the two sinks differ");
        out
    }

    #[test]
    fn every_byte_and_position_is_escaped_as_serde_does() {
        for b in 0u8..0x80 {
            for pad in 0..10 {
                let s = format!("{}{}é{}", "a".repeat(pad), char::from(b), "z".repeat(pad));
                assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "byte {b:#x}");
            }
        }
        assert_eq!(ours(""), "\"\"");
        assert_eq!(ours("\u{7f}/\u{2028}"), "\"\u{7f}/\u{2028}\"");
    }

    #[test]
    fn numbers_are_serde_jsons() {
        for f in [
            0.0,
            -0.0,
            1.0,
            0.1,
            1e21,
            1.5e-7,
            123456.789,
            f64::NAN,
            f64::INFINITY,
        ] {
            let mut out = String::new();
            float(&mut out, f);
            assert_eq!(out, serde_json::to_string(&f).unwrap(), "{f}");
        }
        let mut out = String::new();
        uint(&mut out, u64::MAX);
        assert_eq!(out, u64::MAX.to_string());
    }

    #[test]
    fn values_are_serde_jsons() {
        let v = json!({"b": [1, -2, 2.5, null, true, false, "x\"\n"], "a": {"": {}, "k\t": []},
                       "big": 18446744073709551615u64, "neg": -9223372036854775808i64});
        let mut out = Vec::new();
        value(&mut out, &v);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            serde_json::to_string(&v).unwrap()
        );
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_does(s in "\\PC{0,40}", raw in "[\\x00-\\x7f]{0,40}",
                                               mixed in "(\\\\|\"|\\x01|é|a|\\n|ü){0,30}") {
            for s in [&s, &raw, &mixed] {
                prop_assert_eq!(ours(s), serde_json::to_string(s).unwrap());
            }
        }
    }
}
