//! Helpers shared by the converters' property tests.

use proptest::sample::Index;

/// Splits `s` at the byte offsets `cuts` picks (any offset: SSE must parse the same).
pub fn split<'a>(s: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(s.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points {
        chunks.push(&s[last..p]);
        last = p;
    }
    chunks.push(&s[last..]);
    chunks
}

/// Splits `s` at the char boundaries `cuts` picks (streamed text or argument fragments).
pub fn fragments(s: &str, cuts: &[Index]) -> Vec<String> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|i| i.index(s.len() + 1))
        .filter(|p| s.is_char_boundary(*p))
        .collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(s[last..p].to_owned());
        last = p;
    }
    out.push(s[last..].to_owned());
    out
}
