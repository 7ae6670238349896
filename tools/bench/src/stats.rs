//! Exact percentiles over recorded samples, and the spread of per-round figures.

use serde_json::{Value, json};

/// Nearest-rank percentile of sorted samples (`q` in 0..=1).
pub fn pct(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// p50/p90/p99/p99.9/max/mean in microseconds (one decimal) of nanosecond samples.
pub fn dist(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / samples.len() as f64;
    json!({
        "n": samples.len(),
        "p50": us(pct(samples, 0.50).unwrap_or(0)),
        "p90": us(pct(samples, 0.90).unwrap_or(0)),
        "p99": us(pct(samples, 0.99).unwrap_or(0)),
        "p999": us(pct(samples, 0.999).unwrap_or(0)),
        "max": us(*samples.last().unwrap_or(&0)),
        "mean": (mean / 100.0).round() / 10.0,
    })
}

/// The median of values, and their spread across rounds (min, quartiles, max).
pub fn spread(values: &[f64]) -> Value {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| -> f64 {
        // Linear interpolation between closest ranks.
        let pos = p * (v.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = pos.ceil() as usize;
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    let r = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "median": r(q(0.5)),
        "min": r(v[0]),
        "q1": r(q(0.25)),
        "q3": r(q(0.75)),
        "max": r(v[v.len() - 1]),
        "rounds": v.len(),
    })
}

/// A percentile in microseconds, for per-round figures.
pub fn pct_us(sorted: &[u64], q: f64) -> f64 {
    pct(sorted, q)
        .map(|x| x as f64 / 1000.0)
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pct(&v, 0.5), Some(50));
        assert_eq!(pct(&v, 0.99), Some(99));
        assert_eq!(pct(&v, 1.0), Some(100));
        assert_eq!(pct(&[7], 0.99), Some(7));
    }

    #[test]
    fn spread_median() {
        let s = spread(&[3.0, 1.0, 2.0]);
        assert_eq!(s["median"], 2.0);
        assert_eq!(s["min"], 1.0);
        assert_eq!(s["max"], 3.0);
    }
}
