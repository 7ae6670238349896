//! Tool use of the simulated upstream, as the real service does it: only the request's own tools
//! are called, `tool_choice` is honoured, and every call's arguments fit its tool's JSON schema.
//!
//! | choice | Anthropic | OpenAI | calls |
//! |---|---|---|---|
//! | auto (the default) | `{"type":"auto"}` | `"auto"` | with `[sim:tools]` (and no tool results in the turn): the first two declared tools, after a text block; else none |
//! | any | `{"type":"any"}` | `"required"` | the first declared tool (the first two with `[sim:tools]`), no text |
//! | one tool | `{"type":"tool","name":N}` | `{"type":"function","function":{"name":N}}` | N once, no text |
//! | none | `{"type":"none"}` | `"none"` | none |
//!
//! `disable_parallel_tool_use: true` (OpenAI: `parallel_tool_calls: false`) keeps it to one call.
//! A forced choice answers without text, as the real service does (it prefills the turn). The
//! dialects read their request on their own (the Messages API in [`super::admit`], the
//! compatibility endpoint in `super::openai`); this module is what they share: the choice, which
//! tools are called, and the generated arguments.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Choice {
    #[default]
    Auto,
    Any,
    Tool(String),
    None,
}

impl Choice {
    /// Whether the model must call a tool.
    pub fn forces(&self) -> bool {
        matches!(self, Choice::Any | Choice::Tool(_))
    }
}

/// A declared tool's schema: raw (parsed only when the tool is called) or parsed.
#[derive(Debug, Clone, Copy)]
pub enum Schema<'r> {
    Raw(&'r RawValue),
    Parsed(&'r Value),
    Absent,
}

/// A tool the request declares.
#[derive(Debug, Clone, Copy)]
pub struct Tool<'r> {
    pub name: &'r str,
    pub schema: Schema<'r>,
}

/// The request's tools and what it asks of them.
#[derive(Debug, Default)]
pub struct Offer<'r> {
    pub tools: Vec<Tool<'r>>,
    pub choice: Choice,
    /// False when the request allows at most one call.
    pub parallel: bool,
}

/// One tool call of the answer: the tool's name and its arguments (a JSON object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub input: String,
}

/// The tool calls of an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calls {
    pub calls: Vec<Call>,
    /// The choice forced tool use: the answer carries no text.
    pub forced: bool,
}

/// The message the real service gives for a named tool that is not declared.
pub fn not_declared(name: &str) -> String {
    format!("Tool '{name}' not found in provided tools")
}

impl Offer<'_> {
    /// The names of the declared tools, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.iter().map(|t| t.name)
    }

    /// Whether a tool by this name is declared.
    pub fn declares(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// The calls the answer makes. `asked`: the `[sim:tools]` marker; `answering`: the turn
    /// carries tool results (then only a forced choice calls again).
    pub fn calls(&self, asked: bool, answering: bool) -> Calls {
        let most = if self.parallel { 2 } else { 1 };
        let first = |n: usize| -> Vec<&Tool<'_>> { self.tools.iter().take(n.min(most)).collect() };
        let chosen: Vec<&Tool<'_>> = match &self.choice {
            Choice::None => Vec::new(),
            Choice::Auto if asked && !answering => first(2),
            Choice::Auto => Vec::new(),
            Choice::Any => first(if asked { 2 } else { 1 }),
            Choice::Tool(name) => self
                .tools
                .iter()
                .filter(|t| t.name == name)
                .take(1)
                .collect(),
        };
        Calls {
            calls: chosen
                .into_iter()
                .map(|t| Call {
                    name: t.name.to_owned(),
                    input: arguments(t.schema),
                })
                .collect(),
            forced: self.choice.forces(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments that fit a schema.

/// Values the sample tools of the tests and examples get (a string unless the schema says
/// otherwise); any other property gets a value made from its name and type.
const EXAMPLES: &[(&str, &str)] = &[
    ("location", "New York, NY"),
    ("city", "Paris"),
    ("unit", "celsius"),
    ("lat1", "40.7128"),
    ("lon1", "-74.0060"),
    ("lat2", "34.0522"),
    ("lon2", "-118.2437"),
    ("note", "ünïcode ✓"),
];

/// Nesting followed into a schema (deeper objects and arrays are left empty).
const MAX_DEPTH: usize = 16;
/// Values generated per call, at most: an adversarial schema cannot make the answer explode.
const MAX_VALUES: usize = 512;
/// Items per generated array, at most.
const MAX_ITEMS: usize = 8;
/// Characters per generated string, at most.
const MAX_STRING: usize = 4096;

/// The arguments of a call to a tool with this schema: a JSON object that fits it.
pub fn arguments(schema: Schema<'_>) -> String {
    let parsed;
    let schema = match schema {
        Schema::Raw(raw) => {
            parsed = serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null);
            &parsed
        }
        Schema::Parsed(v) => v,
        Schema::Absent => &Value::Null,
    };
    let mut g = Generator {
        root: schema,
        budget: MAX_VALUES,
    };
    match g.value("", schema, 0) {
        v @ Value::Object(_) => v.to_string(),
        _ => "{}".to_owned(),
    }
}

struct Generator<'s> {
    root: &'s Value,
    budget: usize,
}

fn example(name: &str) -> Option<&'static str> {
    EXAMPLES.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// The schema's type: its `type` (the first that is not `null` of a list), else what its
/// keywords imply.
fn type_of(s: &Map<String, Value>) -> &str {
    match s.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(ts)) => {
            let mut names = ts.iter().filter_map(Value::as_str);
            let all: Vec<&str> = names.by_ref().collect();
            all.iter()
                .copied()
                .find(|t| *t != "null")
                .unwrap_or(if all.is_empty() { "string" } else { "null" })
        }
        _ if s.contains_key("properties") || s.contains_key("required") => "object",
        _ if s.contains_key("items") || s.contains_key("prefixItems") => "array",
        _ => "string",
    }
}

/// Whether a sub-schema only allows `null` (skipped when choosing among `anyOf`/`oneOf`).
fn is_null_schema(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("null")
}

impl Generator<'_> {
    /// A value for property `name` that fits `schema`.
    fn value(&mut self, name: &str, schema: &Value, depth: usize) -> Value {
        let Some(s) = schema.as_object() else {
            // `true`, or no schema: anything goes.
            return string_for(name, &Map::new());
        };
        self.budget = self.budget.saturating_sub(1);
        let exhausted = self.budget == 0 || depth >= MAX_DEPTH;
        let target = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|pointer| self.root.pointer(pointer));
        if let (Some(target), false) = (target, exhausted) {
            return self.value(name, target, depth + 1);
        }
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array) {
            let known = example(name).map(Value::from);
            if let Some(v) = known.filter(|k| options.contains(k)) {
                return v;
            }
            if let Some(first) = options.first() {
                return first.clone();
            }
        }
        if !exhausted {
            for key in ["anyOf", "oneOf"] {
                if let Some(options) = s.get(key).and_then(Value::as_array) {
                    let pick = options
                        .iter()
                        .find(|o| !is_null_schema(o))
                        .or(options.first());
                    if let Some(o) = pick {
                        return self.value(name, o, depth + 1);
                    }
                }
            }
            if let Some(parts) = s.get("allOf").and_then(Value::as_array) {
                return self.value(name, &merged(parts), depth + 1);
            }
        }
        match type_of(s) {
            "object" if exhausted => Value::Object(Map::new()),
            "object" => self.object(s, depth),
            "array" if exhausted => Value::Array(Vec::new()),
            "array" => self.array(name, s, depth),
            "integer" => integer(name, s),
            "number" => number(name, s),
            "boolean" => Value::Bool(true),
            "null" => Value::Null,
            _ => string_for(name, s),
        }
    }

    fn object(&mut self, s: &Map<String, Value>, depth: usize) -> Value {
        let mut out = Map::new();
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (key, sub) in props {
                if self.budget == 0 {
                    break;
                }
                let v = self.value(key, sub, depth + 1);
                out.insert(key.clone(), v);
            }
        }
        // Required properties the schema does not describe still get a value.
        for key in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !out.contains_key(key) {
                let v = match s.get("properties").and_then(|p| p.get(key)) {
                    Some(sub) => simple(key, sub),
                    None => string_for(key, &Map::new()),
                };
                out.insert(key.to_owned(), v);
            }
        }
        Value::Object(out)
    }

    fn array(&mut self, name: &str, s: &Map<String, Value>, depth: usize) -> Value {
        let count = |k: &str| s.get(k).and_then(Value::as_u64).map(|n| n as usize);
        if let Some(prefix) = s.get("prefixItems").and_then(Value::as_array) {
            return prefix
                .iter()
                .take(MAX_ITEMS)
                .map(|p| self.value(name, p, depth + 1))
                .collect();
        }
        let max = count("maxItems").unwrap_or(MAX_ITEMS);
        let n = count("minItems")
            .unwrap_or(1)
            .max(1)
            .min(max)
            .min(MAX_ITEMS);
        let item_name = name.strip_suffix('s').unwrap_or(name);
        match s.get("items") {
            Some(items) => (0..n)
                .map(|_| self.value(item_name, items, depth + 1))
                .collect(),
            None => (0..n).map(|_| string_for(item_name, &Map::new())).collect(),
        }
    }
}

/// A value for a schema without following anything (a leaf, or an object left empty).
fn simple(name: &str, schema: &Value) -> Value {
    let Some(s) = schema.as_object() else {
        return string_for(name, &Map::new());
    };
    if let Some(c) = s.get("const") {
        return c.clone();
    }
    if let Some(first) = s
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|o| o.first())
    {
        return first.clone();
    }
    match type_of(s) {
        "object" => Value::Object(Map::new()),
        "array" => Value::Array(Vec::new()),
        "integer" => integer(name, s),
        "number" => number(name, s),
        "boolean" => Value::Bool(true),
        "null" => Value::Null,
        _ => string_for(name, s),
    }
}

/// The `allOf` parts merged into one schema (their properties, required names and type).
fn merged(parts: &[Value]) -> Value {
    let mut props = Map::new();
    let mut required: Vec<Value> = Vec::new();
    let mut ty: Option<Value> = None;
    for p in parts.iter().filter_map(Value::as_object) {
        if let Some(ps) = p.get("properties").and_then(Value::as_object) {
            props.extend(ps.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(r) = p.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
        if ty.is_none() {
            ty = p.get("type").cloned();
        }
    }
    let mut out = Map::new();
    out.insert(
        "type".to_owned(),
        ty.unwrap_or_else(|| Value::from("object")),
    );
    out.insert("properties".to_owned(), Value::Object(props));
    out.insert("required".to_owned(), Value::Array(required));
    Value::Object(out)
}

fn string_for(name: &str, s: &Map<String, Value>) -> Value {
    let base = match (example(name), s.get("format").and_then(Value::as_str)) {
        (Some(e), _) => e.to_owned(),
        (None, Some("date-time")) => "2025-01-01T12:00:00Z".to_owned(),
        (None, Some("date")) => "2025-01-01".to_owned(),
        (None, Some("time")) => "12:00:00".to_owned(),
        (None, Some("email")) => "user@example.com".to_owned(),
        (None, Some("uri" | "url" | "uri-reference")) => "https://example.com/".to_owned(),
        (None, Some("uuid")) => "123e4567-e89b-42d3-a456-426614174000".to_owned(),
        (None, Some("ipv4")) => "192.0.2.1".to_owned(),
        (None, Some("ipv6")) => "2001:db8::1".to_owned(),
        _ if name.is_empty() => "example".to_owned(),
        _ => format!("example {name}"),
    };
    let len = |k: &str| {
        s.get(k)
            .and_then(Value::as_u64)
            .map(|n| (n as usize).min(MAX_STRING))
    };
    let mut out: String = match len("maxLength") {
        Some(max) => base.chars().take(max).collect(),
        None => base,
    };
    if let Some(min) = len("minLength") {
        let have = out.chars().count();
        out.extend(std::iter::repeat_n('x', min.saturating_sub(have)));
    }
    Value::String(out)
}

/// A bound of a number schema and whether it is exclusive.
type Bound = Option<(f64, bool)>;

/// The bounds of a number schema: (lowest, highest).
fn bounds(s: &Map<String, Value>) -> (Bound, Bound) {
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    let lo = num("minimum")
        .map(|v| (v, false))
        .or(num("exclusiveMinimum").map(|v| (v, true)));
    let hi = num("maximum")
        .map(|v| (v, false))
        .or(num("exclusiveMaximum").map(|v| (v, true)));
    (lo, hi)
}

fn fits(v: f64, lo: Bound, hi: Bound) -> bool {
    let above = lo.is_none_or(|(b, x)| if x { v > b } else { v >= b });
    let below = hi.is_none_or(|(b, x)| if x { v < b } else { v <= b });
    above && below
}

/// A number within the schema's bounds: the example or 42 when it fits, else the midpoint of
/// the bounds, else next to the one bound.
fn bounded(preferred: f64, s: &Map<String, Value>, step: f64) -> f64 {
    let (lo, hi) = bounds(s);
    if fits(preferred, lo, hi) {
        return preferred;
    }
    match (lo, hi) {
        (Some((a, _)), Some((b, _))) => (a + b) / 2.0,
        (Some((a, x)), None) => a + if x { step } else { 0.0 },
        (None, Some((b, x))) => b - if x { step } else { 0.0 },
        (None, None) => preferred,
    }
}

fn number(name: &str, s: &Map<String, Value>) -> Value {
    let preferred = example(name)
        .and_then(|e| e.parse::<f64>().ok())
        .unwrap_or(42.5);
    let v = bounded(preferred, s, 1.0);
    serde_json::Number::from_f64(v).map_or(Value::from(42), Value::Number)
}

fn integer(name: &str, s: &Map<String, Value>) -> Value {
    let preferred = example(name)
        .and_then(|e| e.parse::<i64>().ok())
        .unwrap_or(42);
    let v = bounded(preferred as f64, s, 1.0);
    let (lo, hi) = bounds(s);
    // The midpoint of integer bounds may fall between integers: take the fitting neighbour.
    let candidates = [v.floor(), v.ceil(), v.floor() + 1.0, v.ceil() - 1.0];
    let v = candidates
        .into_iter()
        .find(|c| fits(*c, lo, hi))
        .unwrap_or_else(|| v.round());
    if v.is_finite() && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        Value::from(preferred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(schema: Value) -> Value {
        serde_json::from_str(&arguments(Schema::Parsed(&schema))).unwrap()
    }

    #[test]
    fn every_type_gets_a_value_that_fits() {
        let schema = json!({
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["fahrenheit", "celsius"]},
                "mode": {"enum": ["fast", "slow"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "at": {"type": "string", "format": "date-time"},
                "code": {"type": "string", "minLength": 3, "maxLength": 3},
                "urgent": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "owner": {"type": "object", "properties": {"id": {"type": "integer"}},
                          "required": ["id", "email"]},
                "maybe": {"type": ["null", "number"]},
                "either": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
                "fixed": {"const": "v1"},
                "ref": {"$ref": "#/$defs/Point"},
            },
            "required": ["location", "extra"],
            "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}}},
        });
        let v = args(schema);
        assert_eq!(v["location"], "New York, NY");
        assert_eq!(v["unit"], "celsius", "a known value the enum allows");
        assert_eq!(v["mode"], "fast");
        assert_eq!(v["days"], 4);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["at"], "2025-01-01T12:00:00Z");
        assert_eq!(v["code"], "exa");
        assert_eq!(v["urgent"], true);
        assert_eq!(v["tags"], json!(["example tag", "example tag"]));
        assert_eq!(v["owner"], json!({"id": 42, "email": "example email"}));
        assert_eq!(v["maybe"], 42.5);
        assert_eq!(v["either"], true);
        assert_eq!(v["fixed"], "v1");
        assert_eq!(v["ref"], json!({"x": 42.5}));
        assert_eq!(v["extra"], "example extra", "required, undescribed");
        // Declared order is kept.
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys[..3], ["location", "unit", "mode"]);
    }

    #[test]
    fn odd_schemas_still_give_an_object() {
        for schema in [
            json!(null),
            json!(true),
            json!("string"),
            json!({"type": "string"}),
            json!({"type": "object"}),
            json!({"allOf": [{"properties": {"a": {"type": "integer"}}}, {"required": ["b"]}]}),
        ] {
            let v = args(schema.clone());
            assert!(v.is_object(), "{schema} → {v}");
        }
        assert_eq!(
            args(
                json!({"allOf": [{"properties": {"a": {"type": "integer"}}}, {"required": ["b"]}]})
            ),
            json!({"a": 42, "b": "example b"})
        );
        // A self-referencing, wide schema stays small.
        let mut props = Map::new();
        for i in 0..64 {
            props.insert(format!("p{i}"), json!({"$ref": "#"}));
        }
        let wide = Value::Object(
            [
                ("type".to_owned(), json!("object")),
                ("properties".to_owned(), Value::Object(props)),
            ]
            .into_iter()
            .collect(),
        );
        let out = arguments(Schema::Parsed(&wide));
        assert!(out.len() < 64 * 1024, "{} bytes", out.len());
    }

    fn offer(choice: Choice, parallel: bool) -> Offer<'static> {
        Offer {
            tools: vec![
                Tool {
                    name: "a",
                    schema: Schema::Absent,
                },
                Tool {
                    name: "b",
                    schema: Schema::Absent,
                },
                Tool {
                    name: "c",
                    schema: Schema::Absent,
                },
            ],
            choice,
            parallel,
        }
    }

    fn names(c: &Calls) -> Vec<&str> {
        c.calls.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn the_choice_decides_the_calls() {
        type Case = (Choice, bool, bool, bool, &'static [&'static str], bool);
        let cases: &[Case] = &[
            // choice, parallel, asked, answering → calls, forced
            (Choice::Auto, true, false, false, &[], false),
            (Choice::Auto, true, true, false, &["a", "b"], false),
            (Choice::Auto, false, true, false, &["a"], false),
            (Choice::Auto, true, true, true, &[], false),
            (Choice::Any, true, false, false, &["a"], true),
            (Choice::Any, true, true, false, &["a", "b"], true),
            (Choice::Any, false, true, true, &["a"], true),
            (Choice::Tool("c".into()), true, true, false, &["c"], true),
            (Choice::None, true, true, false, &[], false),
        ];
        for (choice, parallel, asked, answering, want, forced) in cases {
            let c = offer(choice.clone(), *parallel).calls(*asked, *answering);
            assert_eq!(
                names(&c),
                *want,
                "{choice:?} {parallel} {asked} {answering}"
            );
            assert_eq!(c.forced, *forced);
            assert!(c.calls.iter().all(|c| c.input == "{}"));
        }
    }
}
