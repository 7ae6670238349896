//! Number formatting on the request path without `core::fmt`'s exact float machinery.

use std::fmt::Write as _;

/// Appends `v` with exactly `decimals` digits after the point (as `{v:.decimals$}` does, but
/// rounding `v × 10^decimals` half away from zero instead of the exact binary value: they differ
/// only on ties, in the last digit). Non-finite values and huge ones go through `core::fmt`.
pub fn push_fixed(out: &mut String, v: f64, decimals: u32) {
    if v.is_finite() && decimals <= 9 {
        let scale = 10u64.pow(decimals);
        let scaled = (v.abs() * scale as f64).round();
        if scaled < 1e18 {
            // In range: the cast is exact for the integer `scaled` is.
            let n = scaled as u64;
            if v.is_sign_negative() && n != 0 {
                out.push('-');
            }
            let mut digits = itoa::Buffer::new();
            out.push_str(digits.format(n / scale));
            if decimals > 0 {
                out.push('.');
                let frac = digits.format(n % scale);
                for _ in frac.len()..decimals as usize {
                    out.push('0');
                }
                out.push_str(frac);
            }
            return;
        }
    }
    let _ = write!(out, "{v:.prec$}", prec = decimals as usize);
}

/// Appends `bytes` in lowercase hex, two digits each.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Appends `v` in decimal, zero-padded to at least `width` digits (`{v:0width$}`).
pub fn push_padded(out: &mut String, v: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(v);
    for _ in text.len()..width {
        out.push('0');
    }
    out.push_str(text);
}

/// Appends `v` in lowercase hex, zero-padded to at least `width` digits (`{v:0width$x}`).
pub fn push_hex_padded(out: &mut String, v: u64, width: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let len = ((64 - v.leading_zeros()).div_ceil(4) as usize).max(1);
    for _ in len..width {
        out.push('0');
    }
    for i in (0..len).rev() {
        out.push(char::from(DIGITS[((v >> (i * 4)) & 0xf) as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_matches_core_fmt() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut s = String::from("x");
        push_hex(&mut s, &bytes);
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(s, format!("x{want}"));
    }

    #[test]
    fn padded_matches_core_fmt() {
        for &(v, w) in &[
            (0, 0),
            (0, 2),
            (7, 2),
            (42, 2),
            (123, 2),
            (5, 6),
            (999_999, 6),
            (u64::MAX, 4),
        ] {
            let mut s = String::new();
            push_padded(&mut s, v, w);
            assert_eq!(s, format!("{v:0w$}"));
        }
    }

    #[test]
    fn hex_padded_matches_core_fmt() {
        let values = (0..=0x1100u64)
            .chain((0..64).map(|b| 1u64 << b))
            .chain((0..64).map(|b| (1u64 << b) - 1))
            .chain([u64::MAX, 0xdead_beef, 0x0123_4567_89ab_cdef]);
        for v in values {
            for w in [0, 1, 3, 5, 17, 20] {
                let mut s = String::from("x");
                push_hex_padded(&mut s, v, w);
                assert_eq!(s, format!("x{v:0w$x}"), "{v} {w}");
            }
        }
    }

    fn fixed(v: f64, d: u32) -> String {
        let mut s = String::new();
        push_fixed(&mut s, v, d);
        s
    }

    #[test]
    fn matches_core_fmt_away_from_ties() {
        for &(v, d) in &[
            (0.0, 3),
            (1.5, 0),
            (12.3456, 2),
            (0.000123, 6),
            (0.1, 6),
            (123456.789012, 3),
            (-2.25001, 2),
            (-0.0001, 2),
            (7.0, 9),
            (0.0000004, 6),
        ] {
            let want = format!("{v:.prec$}", prec = d as usize);
            // `-0.00` from core::fmt for a tiny negative: we print `0.00`.
            let want = if want
                .trim_start_matches('-')
                .bytes()
                .all(|b| b == b'0' || b == b'.')
            {
                want.trim_start_matches('-').to_owned()
            } else {
                want
            };
            assert_eq!(fixed(v, d), want, "{v} with {d} decimals");
        }
    }

    #[test]
    fn falls_back_for_what_it_cannot_hold() {
        assert_eq!(fixed(f64::NAN, 2), "NaN");
        assert_eq!(fixed(1e30, 2), format!("{:.2}", 1e30));
        assert_eq!(fixed(1.0, 12), "1.000000000000");
    }
}
