//! The simulated upstream's prompt cache, as the Messages API describes it.
//!
//! A request's prompt is the sequence tools → system → messages, block by block. A block with
//! `cache_control` is a breakpoint; a top-level `cache_control` (automatic caching) puts one on
//! the last block, so it moves forward with the conversation. Per account (the API key or OAuth
//! token): a breakpoint's prefix is looked up at the breakpoint and up to 20 blocks before it;
//! the longest prefix found is read from the cache, and the prefix up to the last breakpoint is
//! written (`cache_creation`, split by TTL: `5m` or `1h`), when it is at least 1024 tokens.
//! Entries live for their TTL, renewed by each read. Tokens are estimated as bytes / 4, as the
//! rest of the simulator does, so the three counts add up to the request's input.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The smallest prefix that is cached, in tokens.
pub const MIN_TOKENS: u64 = 1024;
/// How far before a breakpoint earlier entries are looked for, in blocks.
const LOOKBACK: usize = 20;

/// What a request read from and wrote to the cache, in tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheUse {
    pub read: u64,
    pub write_5m: u64,
    pub write_1h: u64,
}

#[derive(Debug, Default)]
pub struct PromptCache {
    /// (account, prefix hash) → expiry.
    entries: Mutex<HashMap<(u64, u64), Instant>>,
}

/// One block of the prompt: its running hash and token count, and whether it is a breakpoint.
struct Point {
    hash: u64,
    tokens: u64,
    ttl: Option<Duration>,
}

fn ttl_of(cache_control: Option<&Value>) -> Option<Duration> {
    let c = cache_control.filter(|c| !c.is_null())?;
    Some(match c.get("ttl").and_then(Value::as_str) {
        Some("1h") => Duration::from_secs(3600),
        _ => Duration::from_secs(300),
    })
}

/// The prompt's blocks, in order.
fn points(req: &Value) -> Vec<Point> {
    let mut blocks: Vec<(Value, Option<Duration>)> = Vec::new();
    let mut push = |b: &Value| {
        let ttl = ttl_of(b.get("cache_control"));
        let mut b = b.clone();
        if let Some(o) = b.as_object_mut() {
            o.remove("cache_control");
        }
        blocks.push((b, ttl));
    };
    let content = |v: &Value, push: &mut dyn FnMut(&Value)| match v {
        Value::Array(items) => items.iter().for_each(push),
        other => push(other),
    };
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        tools.iter().for_each(&mut push);
    }
    if let Some(system) = req.get("system") {
        content(system, &mut push);
    }
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // The role is part of the prefix.
        push(&Value::from(
            m.get("role").and_then(Value::as_str).unwrap_or(""),
        ));
        if let Some(c) = m.get("content") {
            content(c, &mut push);
        }
    }
    if let (Some(ttl), Some(last)) = (ttl_of(req.get("cache_control")), blocks.last_mut()) {
        last.1 = Some(last.1.map_or(ttl, |t| t.max(ttl)));
    }
    let mut h = DefaultHasher::new();
    let mut bytes = 0u64;
    blocks
        .into_iter()
        .map(|(b, ttl)| {
            let text = b.to_string();
            text.hash(&mut h);
            bytes += text.len() as u64;
            Point {
                hash: h.finish(),
                tokens: bytes / 4,
                ttl,
            }
        })
        .collect()
}

impl PromptCache {
    /// Looks the request up and writes its breakpoints, for `account`; `total` is the request's
    /// input tokens (reads and writes never exceed it). `None` when the prompt has no breakpoint.
    pub fn apply(&self, account: &str, req: &Value, total: u64, now: Instant) -> Option<CacheUse> {
        let points = points(req);
        let breaks: Vec<usize> = (0..points.len())
            .filter(|&i| points[i].ttl.is_some())
            .collect();
        let last = *breaks.last()?;
        let mut a = DefaultHasher::new();
        account.hash(&mut a);
        let account = a.finish();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, expiry| *expiry > now);
        // The longest prefix cached at a breakpoint or within the lookback before one.
        let mut hit: Option<usize> = None;
        for &b in &breaks {
            for i in (b.saturating_sub(LOOKBACK)..=b).rev() {
                if entries.contains_key(&(account, points[i].hash)) {
                    if hit.is_none_or(|h| i > h) {
                        hit = Some(i);
                    }
                    break;
                }
            }
        }
        let read = hit.map_or(0, |i| points[i].tokens.min(total));
        if let Some(i) = hit
            && let Some(e) = entries.get_mut(&(account, points[i].hash))
        {
            *e = (*e).max(now + Duration::from_secs(300));
        }
        let mut out = CacheUse {
            read,
            ..CacheUse::default()
        };
        let end = points[last].tokens.min(total);
        if end >= MIN_TOKENS && end > read {
            let ttl = points[last].ttl.unwrap_or_default();
            if ttl > Duration::from_secs(300) {
                out.write_1h = end - read;
            } else {
                out.write_5m = end - read;
            }
        }
        for &b in &breaks {
            if points[b].tokens >= MIN_TOKENS {
                let expiry = now + points[b].ttl.unwrap_or_default();
                let e = entries.entry((account, points[b].hash)).or_insert(expiry);
                *e = (*e).max(expiry);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn long(n: usize) -> String {
        "word ".repeat(n)
    }

    #[test]
    fn automatic_caching_moves_forward_with_the_conversation() {
        let c = PromptCache::default();
        let now = Instant::now();
        let mut req = json!({"cache_control": {"type": "ephemeral"}, "system": long(1200),
            "messages": [{"role": "user", "content": "one"}]});
        let first = c.apply("k", &req, 100_000, now).unwrap();
        assert_eq!(first.read, 0);
        assert!(first.write_5m >= 1500, "{first:?}");
        req["messages"] = json!([{"role": "user", "content": "one"},
            {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}]);
        let second = c.apply("k", &req, 100_000, now).unwrap();
        assert_eq!(
            second.read, first.write_5m,
            "the whole first prompt is read"
        );
        assert!(second.write_5m > 0 && second.write_5m < 10, "{second:?}");
        // Another account shares nothing.
        assert_eq!(c.apply("other", &req, 100_000, now).unwrap().read, 0);
        // After five minutes without a read, it is gone.
        let later = now + Duration::from_secs(301);
        assert_eq!(c.apply("k", &req, 100_000, later).unwrap().read, 0);
    }

    #[test]
    fn short_prompts_and_prompts_without_breakpoints() {
        let c = PromptCache::default();
        let now = Instant::now();
        let short = json!({"cache_control": {"type": "ephemeral"},
            "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(c.apply("k", &short, 10, now), Some(CacheUse::default()));
        let none = json!({"system": long(2000), "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(c.apply("k", &none, 10_000, now), None);
    }

    #[test]
    fn one_hour_breakpoints_write_the_1h_bucket() {
        let c = PromptCache::default();
        let now = Instant::now();
        let req = json!({"system": [{"type": "text", "text": long(1200),
            "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": "hi"}]});
        let u = c.apply("k", &req, 100_000, now).unwrap();
        assert!(u.write_1h > 0 && u.write_5m == 0, "{u:?}");
        let written = u.write_1h;
        let u = c
            .apply("k", &req, 100_000, now + Duration::from_secs(1800))
            .unwrap();
        assert_eq!(u.read, written, "still there after 30 minutes");
    }
}
