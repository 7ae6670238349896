//! Scenario 5 of the benchmark suite: the pure conversions on the proxy's hot path.
//!
//! - OpenAI request → Anthropic request (`convert::chat_to_messages`), small and ~80 KB;
//! - Anthropic SSE → OpenAI chunks (`convert::SseParser` + `convert::ChatStreamConverter`),
//!   fed one event per network chunk as the simulated upstream paces them; events/s;
//! - full-mode shaping of the ~80 KB Claude Code request (`claude_code::shape_request`);
//! - Anthropic response → `chat.completion` (`convert::messages_to_chat`).
//!
//! `cargo bench -p ccproxy-bench --bench convert` (or `scripts/bench/run.sh`, which records the figures).
//! Under `cargo test` every benchmark runs once, as a smoke test.

use std::fmt::Write as _;

use ccproxy::convert::{self, ChatStreamConverter, ConvertOptions, ModelAliases, SseParser};
use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};

use ccproxy_bench::bodies;

fn main() {
    divan::main();
}

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/clients/claude_code_api_key.request.json"
);

fn spec(size: &str) -> bodies::BodySpec {
    bodies::BodySpec {
        size: size.to_owned(),
        cc_fixture: FIXTURE.to_owned(),
        model: "claude-sonnet-4-5".to_owned(),
        stream: true,
        deltas: None,
        gap_ms: 0,
        delay_ms: 0,
    }
}

/// The request body of that size and dialect; the ~80 KB one needs the shared fixtures
/// (`../shared/fixtures`), and falls back to the small one without them.
fn body(size: &str, kind: bodies::BodyKind) -> Vec<u8> {
    spec(size)
        .build(kind)
        .or_else(|_| spec("small").build(kind))
        .expect("small bodies always build")
}

#[divan::bench(args = ["small", "cc"])]
fn openai_request_to_anthropic(b: Bencher, size: &str) {
    let body = body(size, bodies::BodyKind::OpenAi);
    let aliases = ModelAliases::with_defaults();
    let opts = ConvertOptions {
        default_max_tokens: 4096,
        aliases: &aliases,
        auto_cache: true,
    };
    b.counter(BytesCount::of_slice(&body)).bench(|| {
        convert::chat_to_messages(black_box(&body), &opts)
            .map(|c| c.body.len())
            .unwrap_or(0)
    });
}

#[divan::bench(args = ["small", "cc"])]
fn full_mode_shape_request(b: Bencher, size: &str) {
    let body = body(size, bodies::BodyKind::Anthropic);
    b.counter(BytesCount::of_slice(&body)).bench(|| {
        ccproxy::claude_code::shape_request(black_box(&body))
            .map(|(v, _)| v.len())
            .unwrap_or(0)
    });
}

/// An Anthropic stream as the simulated upstream sends it: one `Vec` per event.
fn anthropic_events(deltas: usize) -> Vec<Vec<u8>> {
    let mut ev = Vec::with_capacity(deltas + 6);
    let mut push =
        |name: &str, data: &str| ev.push(format!("event: {name}\ndata: {data}\n\n").into_bytes());
    push(
        "message_start",
        r#"{"type":"message_start","message":{"id":"msg_sim0000000000000001","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":60,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}"#,
    );
    push(
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    );
    push("ping", r#"{"type": "ping"}"#);
    for i in 0..deltas {
        let mut d = String::new();
        let _ = write!(
            d,
            r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"tok{i} "}}}}"#
        );
        push("content_block_delta", &d);
    }
    push(
        "content_block_stop",
        r#"{"type":"content_block_stop","index":0}"#,
    );
    push(
        "message_delta",
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":60,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":65}}"#,
    );
    push("message_stop", r#"{"type":"message_stop"}"#);
    ev
}

#[divan::bench(args = [64, 1024])]
fn anthropic_stream_to_openai_chunks(b: Bencher, deltas: usize) {
    let events = anthropic_events(deltas);
    b.counter(ItemsCount::new(events.len())).bench(|| {
        let mut parser = SseParser::new();
        let mut conv =
            ChatStreamConverter::new("claude-sonnet-4-5".to_owned(), true, 1_700_000_000);
        let mut total = 0;
        // One network chunk per event, each converted and flushed on its own, as on the proxy.
        for ev in &events {
            let mut out = Vec::new();
            parser.push(black_box(ev), |name, data| {
                conv.on_event(name, data, &mut out)
            });
            total += out.len();
        }
        let mut out = Vec::new();
        conv.finish(&mut out);
        total + out.len()
    });
}

#[divan::bench]
fn anthropic_response_to_openai(b: Bencher) {
    let body = br#"{"id":"msg_sim0000000000000001","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello! This is the ccproxy simulated upstream. You said: Say hello to the benchmark."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":60,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":16}}"#;
    b.counter(BytesCount::of_slice(body)).bench(|| {
        convert::messages_to_chat(black_box(body), "claude-sonnet-4-5", 1_700_000_000)
            .map(|v| v.len())
            .unwrap_or(0)
    });
}

/// A coding agent's turn as the Responses API carries it without `previous_response_id`: the
/// whole conversation resent, `turns` rounds of a user message (two parts), an assistant
/// message, a function call and its output.
fn agent_conversation(turns: usize) -> Vec<u8> {
    let mut input = Vec::with_capacity(turns * 4);
    for t in 0..turns {
        input.push(serde_json::json!({"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": format!("Step {t}: look at src/lib.rs and fix the failing test.")},
            {"type": "input_text", "text": "<environment_context>cwd=/work</environment_context>"},
        ]}));
        input.push(
            serde_json::json!({"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": format!("Reading the file for step {t}.")},
            ]}),
        );
        input.push(serde_json::json!({"type": "function_call", "call_id": format!("call_{t}"),
            "name": "shell", "arguments": format!("{{\"command\":[\"cat\",\"src/lib.rs\"],\"step\":{t}}}")}));
        input.push(
            serde_json::json!({"type": "function_call_output", "call_id": format!("call_{t}"),
            "output": format!("fn main() {{ println!(\"step {t}\"); }}")}),
        );
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "claude-sonnet-4-5",
        "instructions": "You are a coding agent.",
        "input": input,
        "tools": [{"type": "function", "name": "shell", "description": "Runs a command",
            "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}}],
        "stream": true,
    }))
    .expect("serializable")
}

/// Responses request → Anthropic request (`convert::responses::responses_to_messages`): the
/// small request, the ~80 KB Claude Code request as Responses input, and a 50-round agent
/// conversation (200 input items).
#[divan::bench(args = ["small", "cc", "agent50"])]
fn responses_request_to_anthropic(b: Bencher, size: &str) {
    let body = if size == "agent50" {
        agent_conversation(50)
    } else {
        body(size, bodies::BodyKind::Responses)
    };
    let aliases = ModelAliases::with_defaults();
    let opts = ConvertOptions {
        default_max_tokens: 4096,
        aliases: &aliases,
        auto_cache: true,
    };
    let run = |body: &[u8]| {
        convert::responses::responses_to_messages(
            body,
            &[],
            &convert::responses::NoStore,
            &opts,
            1_700_000_000,
        )
    };
    // Measure the conversion, not its error path.
    if let Err(e) = run(&body) {
        panic!("the {size} body does not convert: {e}");
    }
    b.counter(BytesCount::of_slice(&body))
        .bench(|| run(black_box(&body)).map(|c| c.body.len()).unwrap_or(0));
}
