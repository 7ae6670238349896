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

/// A stream of upstream events (the data of each), built from `ops`: text, thinking and tool
/// blocks at indexes 0–2, deltas (also for blocks never started or of another kind), stops, in
/// any order; text deltas in the Messages API's byte layout or, when `plain` is false for one,
/// in another field order. For checking that a converter's text-delta fast path and its serde
/// path agree.
pub fn upstream_events(ops: &[(u8, u8, String, bool)]) -> Vec<Vec<u8>> {
    use serde_json::json;
    let mut evs = vec![
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "usage": {"input_tokens": 5, "output_tokens": 1}}})
            .to_string()
            .into_bytes(),
    ];
    for (op, index, text, plain) in ops {
        let i = index % 3;
        let ev = match op % 7 {
            0 => {
                json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
            }
            1 => {
                json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}})
            }
            2 => {
                json!({"type": "content_block_start", "index": i, "content_block": {"type": "thinking", "thinking": ""}})
            }
            3 => {
                json!({"type": "content_block_delta", "index": i, "delta": {"type": "thinking_delta", "thinking": text}})
            }
            4 => {
                json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": text}})
            }
            5 => json!({"type": "content_block_stop", "index": i}),
            _ if *plain => {
                let mut v = format!(
                    r#"{{"type":"content_block_delta","index":{i},"delta":{{"type":"text_delta","text":"#
                )
                .into_bytes();
                serde_json::to_writer(&mut v, text).unwrap();
                v.extend_from_slice(b"}}");
                evs.push(v);
                continue;
            }
            _ => {
                json!({"delta": {"text": text, "type": "text_delta"}, "index": i, "type": "content_block_delta"})
            }
        };
        evs.push(ev.to_string().into_bytes());
    }
    evs.push(
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}})
            .to_string()
            .into_bytes(),
    );
    evs.push(br#"{"type":"message_stop"}"#.to_vec());
    evs
}

/// Feeds `events` to two converters, `fast` through `on_event` and `slow` through the serde
/// path, finishes both, and gives both outputs.
pub fn both_paths<C>(
    events: &[Vec<u8>],
    (mut fast, mut slow): (C, C),
    on_event: impl Fn(&mut C, &[u8], &mut Vec<u8>),
    on_decoded: impl Fn(&mut C, &[u8], &mut Vec<u8>),
    finish: impl Fn(&mut C, &mut Vec<u8>),
) -> (String, String) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for e in events {
        on_event(&mut fast, e, &mut a);
        on_decoded(&mut slow, e, &mut b);
    }
    finish(&mut fast, &mut a);
    finish(&mut slow, &mut b);
    (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap())
}
