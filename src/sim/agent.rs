//! The coding-agent scenario (`[sim:agent]` anywhere in a user turn of the conversation): the
//! simulated model works through a small task with the request's own tools, one step per
//! request, as a coding agent (Codex CLI, an Agents SDK loop) drives it:
//!
//! 1. when the request declares a shell-like tool ([`SHELL_TOOLS`]), it runs [`COMMAND`] with it;
//! 2. when it declares a patch tool ([`PATCH_TOOLS`]), it creates [`PATCH_FILE`] with [`PATCH`]
//!    (the `apply_patch` grammar: `*** Begin Patch` / `*** Add File:` / `*** End Patch`);
//! 3. then, with the results in the conversation, a final text answer that quotes them.
//!
//! Each answer starts with a signed thinking block when the request turns thinking on, as the
//! real model's do: a client must send it back unchanged with the tool results.
//!
//! The step is read from the conversation itself (which of these tools earlier assistant turns
//! called), so the scenario needs no state. Arguments fit the tool's own schema: the command goes
//! into its `cmd` / `command` / `script` property (an argv array `["bash", "-lc", …]` when the
//! schema asks for an array), the patch into its only string property (`input` for a freeform
//! tool the client offered through a proxy, `patch`, …); other required properties get values
//! that fit their schema and optional ones are left out, as a careful model does.

use serde_json::{Map, Value, json};

use super::generate::SimRequest;
use super::tools::{self, Call, Calls, Choice, Offer, Schema, Tool};

/// The marker that starts the scenario.
pub const MARKER: &str = "[sim:agent]";
/// Tool names taken for a shell.
pub const SHELL_TOOLS: &[&str] = &[
    "exec_command",
    "shell_command",
    "shell",
    "bash",
    "run_shell_command",
    "run_command",
];
/// Tool names taken for a patch tool.
pub const PATCH_TOOLS: &[&str] = &["apply_patch"];
/// The command step 1 runs. Its output (`sim-agent-42`) appears nowhere in the request before
/// the command has really run.
pub const COMMAND: &str = "echo sim-agent-$((6*7))";
/// The file step 2 creates, relative to the agent's working directory.
pub const PATCH_FILE: &str = "sim-agent.txt";
/// The patch of step 2.
pub const PATCH: &str = "*** Begin Patch\n*** Add File: sim-agent.txt\n+written by the simulated upstream\n+through apply_patch\n*** End Patch\n";
/// The content of [`PATCH_FILE`] once [`PATCH`] is applied.
pub const PATCH_CONTENT: &str = "written by the simulated upstream\nthrough apply_patch\n";

/// One answer of the scenario: its text and its calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub text: String,
    pub calls: Calls,
}

/// Whether the conversation asks for the scenario (the marker in a user turn's text).
pub fn asked(req: &SimRequest<'_>) -> bool {
    req.messages.iter().flatten().any(|m| {
        m.role == "user" && m.content.get().contains(MARKER) && {
            let v: Value = serde_json::from_str(m.content.get()).unwrap_or(Value::Null);
            user_text(&v).contains(MARKER)
        }
    })
}

/// The text parts of a content value (tool results left out).
fn user_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// Whether the request turns thinking on (`enabled` or `adaptive`).
pub fn thinking_on(req: &SimRequest<'_>) -> bool {
    req.thinking
        .and_then(|t| serde_json::from_str::<Value>(t.get()).ok())
        .is_some_and(|t| t["type"] == "enabled" || t["type"] == "adaptive")
}

/// The names of the tools earlier assistant turns called.
fn called(req: &SimRequest<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for m in req
        .messages
        .iter()
        .flatten()
        .filter(|m| m.role == "assistant")
    {
        let v: Value = serde_json::from_str(m.content.get()).unwrap_or(Value::Null);
        for b in v.as_array().into_iter().flatten() {
            if b["type"] == "tool_use"
                && let Some(name) = b["name"].as_str()
            {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// The text of every tool result in the conversation, in order.
fn results(req: &SimRequest<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for m in req.messages.iter().flatten().filter(|m| m.role == "user") {
        let v: Value = serde_json::from_str(m.content.get()).unwrap_or(Value::Null);
        for b in v.as_array().into_iter().flatten() {
            if b["type"] != "tool_result" {
                continue;
            }
            match &b["content"] {
                Value::String(s) => out.push(s.clone()),
                Value::Array(parts) => out.push(
                    parts
                        .iter()
                        .filter_map(|p| p["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(""),
                ),
                _ => out.push(String::new()),
            }
        }
    }
    out
}

/// The next step of the scenario for this request.
pub fn step(req: &SimRequest<'_>, offer: &Offer<'_>) -> Step {
    let done = called(req);
    let allowed = |t: &Tool<'_>| match &offer.choice {
        Choice::None => false,
        Choice::Tool(name) => name == t.name,
        Choice::Auto | Choice::Any => true,
    };
    let shell = offer
        .tools
        .iter()
        .find(|t| SHELL_TOOLS.contains(&t.name) && allowed(t));
    let patch = offer
        .tools
        .iter()
        .find(|t| PATCH_TOOLS.contains(&t.name) && allowed(t));
    let forced = offer.choice.forces();
    let call = |text: &str, name: &str, input: Value| Step {
        text: text.to_owned(),
        calls: Calls {
            calls: vec![Call {
                name: name.to_owned(),
                input: input.to_string(),
            }],
            forced,
        },
    };
    if let Some(t) = shell.filter(|t| !done.iter().any(|d| d == t.name)) {
        return call(
            "I'll run a command first.",
            t.name,
            shell_arguments(t.schema),
        );
    }
    if let Some(t) = patch.filter(|t| !done.iter().any(|d| d == t.name)) {
        return call(
            &format!("Now I'll create {PATCH_FILE}."),
            t.name,
            patch_arguments(t.schema),
        );
    }
    let results = results(req);
    let text = if results.is_empty() {
        "I have no shell or patch tool to work with, so I am done.".to_owned()
    } else {
        let quoted: Vec<String> = results
            .iter()
            .map(|r| format!("- {}", r.trim().replace('\n', " | ")))
            .collect();
        format!("Done. The tools returned:\n{}", quoted.join("\n"))
    };
    Step {
        text,
        calls: Calls::default(),
    }
}

fn parsed(schema: Schema<'_>) -> Value {
    match schema {
        Schema::Raw(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
        Schema::Parsed(v) => v.clone(),
        Schema::Absent => Value::Null,
    }
}

/// The schema's properties and its required names.
fn shape(schema: &Value) -> (Map<String, Value>, Vec<String>) {
    let props = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let required = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    (props, required)
}

/// Values for the required properties other than `skip` (fitting their schemas).
fn required_values(schema: &Value, skip: &str) -> Map<String, Value> {
    let (props, required) = shape(schema);
    let mut sub = Map::new();
    let mut names = Vec::new();
    for name in required.iter().filter(|n| *n != skip) {
        sub.insert(
            name.clone(),
            props.get(name).cloned().unwrap_or_else(|| json!({})),
        );
        names.push(Value::from(name.as_str()));
    }
    let reduced = json!({"type": "object", "properties": sub, "required": names});
    match serde_json::from_str(&tools::arguments(Schema::Parsed(&reduced))) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// The arguments of the shell call: [`COMMAND`] in the command property.
fn shell_arguments(schema: Schema<'_>) -> Value {
    let schema = parsed(schema);
    let (props, required) = shape(&schema);
    let key = ["cmd", "command", "script"]
        .into_iter()
        .find(|k| props.contains_key(*k) || required.iter().any(|r| r == k))
        .unwrap_or("command");
    let mut args = required_values(&schema, key);
    let value = if props.get(key).and_then(|p| p["type"].as_str()) == Some("array") {
        json!(["bash", "-lc", COMMAND])
    } else {
        Value::from(COMMAND)
    };
    args.insert(key.to_owned(), value);
    Value::Object(args)
}

/// The arguments of the patch call: [`PATCH`] in the schema's string property.
fn patch_arguments(schema: Schema<'_>) -> Value {
    let schema = parsed(schema);
    let (props, required) = shape(&schema);
    let is_string = |k: &str| props.get(k).is_some_and(|p| p["type"] == "string");
    let key = ["input", "patch"]
        .into_iter()
        .find(|k| is_string(k))
        .map(str::to_owned)
        .or_else(|| required.iter().find(|k| is_string(k)).cloned())
        .or_else(|| props.keys().find(|k| is_string(k)).cloned())
        .unwrap_or_else(|| "input".to_owned());
    let mut args = required_values(&schema, &key);
    args.insert(key, Value::from(PATCH));
    Value::Object(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::generate::offer;

    fn request(messages: Value, tools: Value) -> String {
        json!({"model": "m", "max_tokens": 100, "messages": messages, "tools": tools}).to_string()
    }

    fn codex_tools() -> Value {
        json!([
            {"name": "exec_command", "input_schema": {"type": "object", "properties": {
                "cmd": {"type": "string"}, "workdir": {"type": "string"}, "login": {"type": "boolean"},
                "shell": {"type": "string"}}, "required": ["cmd"], "additionalProperties": false}},
            {"name": "view_image", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
            {"name": "apply_patch", "input_schema": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}
        ])
    }

    fn step_for(body: &str) -> Step {
        let r: SimRequest = serde_json::from_str(body).unwrap();
        assert!(asked(&r));
        step(&r, &offer(&r).unwrap())
    }

    #[test]
    fn runs_a_command_then_patches_then_answers() {
        let first = json!([{"role": "user", "content": "do it [sim:agent]"}]);
        let s = step_for(&request(first.clone(), codex_tools()));
        assert_eq!(s.calls.calls.len(), 1);
        assert_eq!(s.calls.calls[0].name, "exec_command");
        let args: Value = serde_json::from_str(&s.calls.calls[0].input).unwrap();
        // Only the command: optional properties (shell, workdir, …) are left out.
        assert_eq!(args, json!({"cmd": COMMAND}));

        let mut second = first.as_array().unwrap().clone();
        second.push(json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "exec_command", "input": args}]}));
        second.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "Output:\nsim-agent-42\n"}]}));
        let s = step_for(&request(Value::from(second.clone()), codex_tools()));
        assert_eq!(s.calls.calls[0].name, "apply_patch");
        let args: Value = serde_json::from_str(&s.calls.calls[0].input).unwrap();
        assert_eq!(args, json!({"input": PATCH}));

        second.push(json!({"role": "assistant", "content": [{"type": "tool_use", "id": "t2", "name": "apply_patch", "input": args}]}));
        second.push(json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "Success. Updated: A sim-agent.txt"}]}]}));
        let s = step_for(&request(Value::from(second), codex_tools()));
        assert!(s.calls.calls.is_empty());
        assert!(s.text.contains("sim-agent-42"), "{}", s.text);
        assert!(s.text.contains("A sim-agent.txt"), "{}", s.text);
    }

    #[test]
    fn an_argv_shell_gets_an_argv_and_required_properties() {
        let tools = json!([{"name": "shell", "input_schema": {"type": "object", "properties": {
            "command": {"type": "array", "items": {"type": "string"}}, "timeout_ms": {"type": "integer", "minimum": 1}},
            "required": ["command", "timeout_ms"]}}]);
        let s = step_for(&request(
            json!([{"role": "user", "content": "[sim:agent]"}]),
            tools,
        ));
        let args: Value = serde_json::from_str(&s.calls.calls[0].input).unwrap();
        assert_eq!(args["command"], json!(["bash", "-lc", COMMAND]));
        assert!(args["timeout_ms"].as_i64().is_some_and(|n| n >= 1));
    }

    #[test]
    fn without_tools_it_answers_and_a_tool_result_never_starts_it() {
        let s = step_for(&request(
            json!([{"role": "user", "content": "[sim:agent]"}]),
            json!([]),
        ));
        assert!(s.calls.calls.is_empty());
        let body = request(
            json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": "[sim:agent]"}]}]),
            codex_tools(),
        );
        let r: SimRequest = serde_json::from_str(&body).unwrap();
        assert!(!asked(&r));
    }
}
