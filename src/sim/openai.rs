//! The simulated upstream's OpenAI-compatible `POST /v1/chat/completions`, answering like
//! Anthropic's own compatibility endpoint. Clients reach it through ccproxy's passthrough route
//! (`/pt/openai/…`: the tests and the conformance suite), and the benchmark calls it directly as
//! the baseline of that route.
//!
//! It shares no code with the proxy's converter (`convert`): it reads the request on its own
//! (only what the generator needs, with the checks the real endpoint makes), answers with the same
//! generator as the Messages API ([`super::generate`]), and writes OpenAI's shapes itself. So a
//! test that compares the proxy's conversions with this endpoint compares two implementations.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::SimState;
use super::generate::{self, Block, Directives, SimMessage2};
use super::tools::{Choice, Offer, Schema, Tool};
use crate::api::anthropic::Tokens;

pub async fn chat_completions(state: Arc<SimState>, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Err(e) = super::authorize(&state, headers) {
        return error(e.status, &e.message);
    }
    let call = match read_request(body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let dir = Directives::from_turn(call.user_text, call.tool_result);
    if dir.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(dir.delay_ms)).await;
    }
    if let Some(status) = dir.status {
        return error(status, &format!("Simulated error {status}"));
    }
    let offer = Offer {
        tools: call
            .tools
            .iter()
            .map(|(name, schema)| Tool {
                name,
                schema: Schema::Parsed(schema),
            })
            .collect(),
        choice: call.choice.clone(),
        parallel: call.parallel,
    };
    let calls = offer.calls(dir.tools, dir.tool_result.is_some());
    let id = super::next_id(&state);
    let message = generate::respond(Some(&call.model), &calls, &dir, body.len(), id);
    let created = crate::util::time::now_secs();
    let answer = Answer {
        m: &message,
        id: completion_id(&message.id),
        model: &call.model,
        created,
        legacy: call.legacy,
    };
    if call.stream {
        let chunks = answer.chunks(call.include_usage, dir.error_midstream);
        super::sse_response(state, chunks, dir.gap_ms)
    } else {
        let mut resp = Response::new(Body::from(answer.completion().to_string()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

// ---------------------------------------------------------------------------------------------
// The request.

/// What the generator needs from a chat request.
struct ChatCall {
    model: String,
    stream: bool,
    include_usage: bool,
    /// Declared tools (or legacy functions), in order: name and parameters schema.
    tools: Vec<(String, Value)>,
    /// `tool_choice`, else legacy `function_call`.
    choice: Choice,
    /// False with `parallel_tool_calls: false`.
    parallel: bool,
    /// Legacy `functions` and no `tools`: answer with `function_call` (the first call only).
    legacy: bool,
    /// Text of the last user turn (user messages and the tool results that follow them).
    user_text: String,
    tool_result: Option<String>,
}

/// A request the endpoint refuses with a 400.
struct Invalid {
    message: String,
    param: Option<String>,
    code: Option<&'static str>,
}

impl Invalid {
    fn new(param: impl Into<String>, code: &'static str, what: &str) -> Self {
        let param = param.into();
        Invalid {
            message: format!("{param}: {what}"),
            param: Some(param),
            code: Some(code),
        }
    }
}

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        let body = envelope(
            &self.message,
            "invalid_request_error",
            self.param.as_deref(),
            self.code,
        );
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

fn read_request(body: &[u8]) -> Result<ChatCall, Invalid> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Invalid {
        message: format!("the request body is not valid JSON: {e}"),
        param: None,
        code: Some("invalid_json"),
    })?;
    let Some(obj) = v.as_object() else {
        return Err(Invalid {
            message: "the request body must be a JSON object".to_owned(),
            param: None,
            code: Some("invalid_type"),
        });
    };
    let Some(model) = obj.get("model").and_then(Value::as_str) else {
        return Err(Invalid::new(
            "model",
            "missing_required_parameter",
            "a model name is required",
        ));
    };
    if obj.get("n").is_some_and(|n| !n.is_null() && n != 1) {
        return Err(Invalid::new(
            "n",
            "unsupported_value",
            "only n=1 is supported",
        ));
    }
    let (user_text, tool_result) = last_user_turn(obj)?;
    let tools = declared_tools(obj);
    let choice = tool_choice(obj, &tools)?;
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(ChatCall {
        model: model.to_owned(),
        stream,
        include_usage: stream
            && obj
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
        tools,
        choice,
        parallel: obj.get("parallel_tool_calls").and_then(Value::as_bool) != Some(false),
        legacy: obj.contains_key("functions") && !obj.contains_key("tools"),
        user_text,
        tool_result,
    })
}

/// `tools[].function` (name, parameters), else legacy `functions[]`.
fn declared_tools(obj: &Map<String, Value>) -> Vec<(String, Value)> {
    let read = |key: &str, function: &str| -> Vec<(String, Value)> {
        obj.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.pointer(function))
            .filter_map(|f| {
                let name = f.get("name")?.as_str()?.to_owned();
                Some((name, f.get("parameters").cloned().unwrap_or(Value::Null)))
            })
            .collect()
    };
    let tools = read("tools", "/function");
    if tools.is_empty() {
        read("functions", "")
    } else {
        tools
    }
}

/// `tool_choice` (`auto`, `none`, `required`, `{"type":"function","function":{"name"}}`), else
/// legacy `function_call` (`auto`, `none`, `{"name"}`); refused when it is none of these, forces a
/// tool with none declared, or names a tool that is not declared.
fn tool_choice(obj: &Map<String, Value>, tools: &[(String, Value)]) -> Result<Choice, Invalid> {
    let (param, v) = match (obj.get("tool_choice"), obj.get("function_call")) {
        (Some(v), _) if !v.is_null() => ("tool_choice", v),
        (_, Some(v)) if !v.is_null() => ("function_call", v),
        _ => return Ok(Choice::Auto),
    };
    let (choice, name_param) = match (param, v) {
        (_, Value::String(s)) if s == "auto" => (Choice::Auto, ""),
        (_, Value::String(s)) if s == "none" => (Choice::None, ""),
        ("tool_choice", Value::String(s)) if s == "required" => (Choice::Any, ""),
        ("tool_choice", v) if v["type"] == "function" && v["function"]["name"].is_string() => (
            Choice::Tool(v["function"]["name"].as_str().unwrap_or("").to_owned()),
            "tool_choice.function.name",
        ),
        ("function_call", v) if v["name"].is_string() => (
            Choice::Tool(v["name"].as_str().unwrap_or("").to_owned()),
            "function_call.name",
        ),
        _ => {
            return Err(Invalid::new(
                param,
                "invalid_value",
                "must be 'auto', 'none', 'required' or a named function",
            ));
        }
    };
    if choice.forces() && tools.is_empty() {
        return Err(Invalid::new(
            param,
            "invalid_value",
            &format!("'{param}' is only allowed when 'tools' are specified"),
        ));
    }
    match &choice {
        Choice::Tool(name) if !tools.iter().any(|(n, _)| n == name) => Err(Invalid::new(
            name_param,
            "invalid_value",
            &super::tools::not_declared(name),
        )),
        _ => Ok(choice),
    }
}

/// Checks the messages and returns the text of the last user turn and of its tool results.
fn last_user_turn(obj: &Map<String, Value>) -> Result<(String, Option<String>), Invalid> {
    let messages = match obj.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m,
        Some(_) => {
            return Err(Invalid::new(
                "messages",
                "invalid_value",
                "at least one message is required",
            ));
        }
        None => {
            return Err(Invalid::new(
                "messages",
                "missing_required_parameter",
                "an array of messages is required",
            ));
        }
    };
    let mut call_ids: Vec<&str> = Vec::new();
    let mut turn = (String::new(), None::<String>);
    let mut in_user_turn = false;
    for (i, m) in messages.iter().enumerate() {
        let content = m.get("content").unwrap_or(&Value::Null);
        let text = text_of(content).ok_or_else(|| {
            Invalid::new(
                format!("messages[{i}].content"),
                "invalid_type",
                "must be a string or an array of content parts",
            )
        })?;
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "system" | "developer" => continue,
            "assistant" => {
                let ids = m.get("tool_calls").and_then(Value::as_array);
                call_ids.extend(ids.into_iter().flatten().filter_map(|c| c["id"].as_str()));
                in_user_turn = false;
                continue;
            }
            "tool" => check_tool_call_id(m, i, &call_ids)?,
            "user" | "function" => {}
            other => {
                return Err(Invalid::new(
                    format!("messages[{i}].role"),
                    "invalid_value",
                    &format!("unknown role {other:?}"),
                ));
            }
        }
        if !in_user_turn {
            turn = (String::new(), None);
            in_user_turn = true;
        }
        match role {
            "user" => turn.0.push_str(&text),
            _ => turn.1.get_or_insert_with(String::new).push_str(&text),
        }
    }
    Ok(turn)
}

fn check_tool_call_id(m: &Value, i: usize, call_ids: &[&str]) -> Result<(), Invalid> {
    let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
    if call_ids.contains(&id) {
        return Ok(());
    }
    Err(Invalid::new(
        format!("messages[{i}].tool_call_id"),
        "invalid_value",
        &format!("{id:?} answers no tool call of an earlier assistant message"),
    ))
}

/// The text of a message's content (a string, or the text of its parts); `None` for other types.
fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect(),
        ),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The answer.

/// Anthropic stop reasons and the finish reasons the compatibility endpoint reports for them;
/// anything else finishes as `stop`.
const FINISH_REASONS: &[(&str, &str)] = &[
    ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"),
    ("tool_use", "tool_calls"),
    ("refusal", "content_filter"),
];

fn finish_reason_for(stop_reason: &str) -> &'static str {
    FINISH_REASONS
        .iter()
        .find(|(s, _)| *s == stop_reason)
        .map_or("stop", |(_, f)| f)
}

fn completion_id(message_id: &str) -> String {
    format!(
        "chatcmpl-{}",
        message_id.strip_prefix("msg_").unwrap_or(message_id)
    )
}

fn usage_json(t: &Tokens) -> Value {
    let prompt = t.input + t.cache_read + t.cache_write;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": t.output,
        "total_tokens": prompt + t.output,
        "prompt_tokens_details": {"cached_tokens": t.cache_read},
    })
}

/// A generated message, written in OpenAI's shapes.
struct Answer<'a> {
    m: &'a SimMessage2,
    id: String,
    model: &'a str,
    created: u64,
    legacy: bool,
}

impl Answer<'_> {
    /// The `chat.completion` body.
    fn completion(&self) -> Value {
        let mut message = json!({"role": "assistant", "content": null, "refusal": null});
        let mut calls = Vec::new();
        for b in &self.m.blocks {
            match b {
                Block::Text(t) => message["content"] = Value::from(t.as_str()),
                Block::Thinking { thinking, .. } => {
                    message["reasoning_content"] = Value::from(thinking.as_str());
                }
                Block::ToolUse { id, name, input } => calls.push((id, name, input)),
                // Anthropic's server tools are not offered on this endpoint.
                Block::ServerToolUse { .. } | Block::ServerResult(_) | Block::CitedText { .. } => {}
            }
        }
        if self.legacy {
            if let Some((_, name, input)) = calls.first() {
                message["function_call"] = json!({"name": name, "arguments": input});
            }
        } else if !calls.is_empty() {
            let calls = calls.iter().map(|(id, name, input)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": input}})
            });
            message["tool_calls"] = calls.collect();
        }
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": null,
                         "finish_reason": self.finish_reason()}],
            "usage": usage_json(&self.m.tokens),
        })
    }

    /// The finish reason; a legacy answer finishes its call as `function_call`.
    fn finish_reason(&self) -> &'static str {
        match finish_reason_for(&self.m.stop_reason) {
            "tool_calls" if self.legacy => "function_call",
            f => f,
        }
    }

    /// One `chat.completion.chunk` frame.
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        frame(&json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null,
                         "finish_reason": finish_reason}],
        }))
    }

    /// The stream: role, reasoning, text, tool calls, finish, the usage chunk when asked, `[DONE]`.
    /// `error_midstream`: an error frame after the first text delta ends it.
    fn chunks(&self, include_usage: bool, error_midstream: bool) -> Vec<Bytes> {
        let mut out = vec![self.chunk(json!({"role": "assistant", "content": ""}), None)];
        let mut tool_index = 0;
        for b in &self.m.blocks {
            match b {
                Block::Thinking { thinking, .. } => {
                    for piece in generate::thinking_pieces(thinking) {
                        out.push(self.chunk(json!({ "reasoning_content": piece }), None));
                    }
                }
                Block::Text(t) => {
                    for piece in generate::text_pieces(t, self.m.deltas) {
                        out.push(self.chunk(json!({ "content": piece }), None));
                        if error_midstream {
                            out.push(frame(&envelope(
                                "Overloaded",
                                "server_error",
                                None,
                                Some("overloaded"),
                            )));
                            return out;
                        }
                    }
                }
                Block::ToolUse { id, name, input } => {
                    self.push_tool_call(&mut out, tool_index, (id, name, input));
                    tool_index += 1;
                }
                Block::ServerToolUse { .. } | Block::ServerResult(_) | Block::CitedText { .. } => {}
            }
        }
        out.push(self.chunk(json!({}), Some(self.finish_reason())));
        if include_usage {
            out.push(frame(&json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage_json(&self.m.tokens),
            })));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
        out
    }

    /// The call's head (id, name, empty arguments), then its argument fragments. A legacy answer
    /// streams only its first call, as `function_call` deltas.
    fn push_tool_call(&self, out: &mut Vec<Bytes>, index: usize, call: (&str, &str, &str)) {
        let (id, name, input) = call;
        type Fragment = fn(usize, &str) -> Value;
        let (head, fragment): (Value, Fragment) = if self.legacy {
            if index > 0 {
                return;
            }
            let head = json!({"function_call": {"name": name, "arguments": ""}});
            (head, |_, p| json!({"function_call": {"arguments": p}}))
        } else {
            let head = json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                              "function": {"name": name, "arguments": ""}}]});
            (
                head,
                |k, p| json!({"tool_calls": [{"index": k, "function": {"arguments": p}}]}),
            )
        };
        out.push(self.chunk(head, None));
        for piece in generate::input_pieces(input) {
            out.push(self.chunk(fragment(index, piece), None));
        }
    }
}

fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// `{"error":{"message","type","param","code"}}`.
fn envelope(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// The error the Messages API gives for `status` (with its headers: `retry-after`, `request-id`,
/// rate limits), in OpenAI's envelope; 529 becomes 503, as the compatibility endpoint answers.
fn error(status: u16, message: &str) -> Response {
    let (kind, code) = match status {
        401 => ("authentication_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("invalid_request_error", Some("not_found")),
        413 => ("invalid_request_error", Some("request_too_large")),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        529 => ("server_error", Some("overloaded")),
        400..=499 => ("invalid_request_error", None),
        _ => ("server_error", None),
    };
    let mut resp = super::error_response(status, message);
    *resp.body_mut() = Body::from(envelope(message, kind, None, code).to_string());
    if status == 529 {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: Value) -> Result<ChatCall, Invalid> {
        read_request(body.to_string().as_bytes())
    }

    fn param_of(body: Value) -> Option<String> {
        call(body).err().and_then(|e| e.param)
    }

    #[test]
    fn refuses_what_the_endpoint_refuses_naming_the_field() {
        let user = json!({"role": "user", "content": "hi"});
        assert_eq!(
            param_of(json!({"messages": [user]})).as_deref(),
            Some("model")
        );
        assert_eq!(param_of(json!({"model": "m"})).as_deref(), Some("messages"));
        assert_eq!(
            param_of(json!({"model": "m", "messages": []})).as_deref(),
            Some("messages")
        );
        let n2 = json!({"model": "m", "messages": [user], "n": 2});
        assert_eq!(param_of(n2).as_deref(), Some("n"));
        let bad_role = json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]});
        assert_eq!(param_of(bad_role).as_deref(), Some("messages[0].role"));
        let bad_content = json!({"model": "m", "messages": [{"role": "user", "content": 42}]});
        assert_eq!(
            param_of(bad_content).as_deref(),
            Some("messages[0].content")
        );
        let orphan = json!({"model": "m", "messages": [user,
            {"role": "tool", "tool_call_id": "call_nope", "content": "x"}]});
        assert_eq!(
            param_of(orphan).as_deref(),
            Some("messages[1].tool_call_id")
        );
        assert!(read_request(b"{\"model\": ").is_err());
        assert!(read_request(b"[1]").is_err());
    }

    #[test]
    fn reads_the_last_user_turn_with_its_tool_results() {
        let c = call(json!({"model": "gpt-4o", "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "a"}},
                      {"type": "function", "function": {"name": "b"}}],
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first [sim:tools]"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1"}, {"id": "c2"}]},
                {"role": "tool", "tool_call_id": "c1", "content": "22°C"},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": " / 3 km"}]},
            ]}))
        .ok()
        .unwrap();
        assert_eq!(c.user_text, "");
        assert_eq!(c.tool_result.as_deref(), Some("22°C / 3 km"));
        let names: Vec<&str> = c.tools.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(c.stream && c.include_usage);
    }

    fn answer_for(text: &str) -> (SimMessage2, Directives) {
        let dir = Directives::from_turn(text.to_owned(), None);
        let schema = json!({"type": "object", "properties": {"location": {"type": "string"}}});
        let offer = Offer {
            tools: ["get_weather", "calculate_distance"]
                .into_iter()
                .map(|name| Tool {
                    name,
                    schema: Schema::Parsed(&schema),
                })
                .collect(),
            choice: Choice::Auto,
            parallel: true,
        };
        let calls = offer.calls(dir.tools, false);
        (generate::respond(Some("gpt-4o"), &calls, &dir, 400, 7), dir)
    }

    fn answer(m: &SimMessage2) -> Answer<'_> {
        Answer {
            m,
            id: completion_id(&m.id),
            model: "gpt-4o",
            created: 1,
            legacy: false,
        }
    }

    fn data(frames: &[Bytes]) -> Vec<Value> {
        frames
            .iter()
            .filter_map(|f| std::str::from_utf8(f).ok()?.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    }

    #[test]
    fn completion_and_stream_say_the_same() {
        let (m, dir) = answer_for("hi [sim:thinking] [sim:tools] [sim:cache]");
        let a = answer(&m);
        let c = a.completion();
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["usage"]["prompt_tokens_details"]["cached_tokens"], 8192);
        let chunks = a.chunks(true, dir.error_midstream);
        assert_eq!(chunks.last().unwrap().as_ref(), b"data: [DONE]\n\n");
        let frames = data(&chunks);
        let deltas = || frames.iter().filter_map(|f| f["choices"][0].get("delta"));
        let joined =
            |field: &str| -> String { deltas().filter_map(|d| d[field].as_str()).collect() };
        let msg = &c["choices"][0]["message"];
        assert_eq!(joined("content"), msg["content"].as_str().unwrap());
        assert_eq!(
            joined("reasoning_content"),
            msg["reasoning_content"].as_str().unwrap()
        );
        for (k, call) in msg["tool_calls"].as_array().unwrap().iter().enumerate() {
            let args: String = deltas()
                .filter_map(|d| d["tool_calls"].as_array())
                .flatten()
                .filter(|t| t["index"] == k)
                .filter_map(|t| t["function"]["arguments"].as_str())
                .collect();
            assert_eq!(args, call["function"]["arguments"].as_str().unwrap());
        }
        assert_eq!(frames.last().unwrap()["usage"], c["usage"]);
    }

    #[test]
    fn midstream_error_ends_the_stream() {
        let (m, dir) = answer_for("hi [sim:error-midstream]");
        let a = answer(&m);
        let frames = data(&a.chunks(false, dir.error_midstream));
        assert_eq!(frames.last().unwrap()["error"]["code"], "overloaded");
        assert_eq!(frames.len(), 3);
    }
}
