//! Structured outputs of the simulated upstream (`output_config.format`), as the real service does
//! them: the shape is checked (a 400 with the service's message on a bad one), and the answer's
//! text is a JSON value that fits the schema (its required properties always present), generated
//! by the same code as tool arguments ([`super::tools::arguments`]).
//!
//! | `output_config` | answer |
//! |---|---|
//! | absent, or without `format` | as usual |
//! | `{"format": {"type": "json_schema", "schema": {…}}}` | the text block is JSON fitting the schema |
//! | not an object; `format` not an object, without `type`, of another type, without `schema`, or with a schema that is not an object | 400 |

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::tools::{self, Schema};

/// Only `output_config` is read (the rest of the body is read elsewhere).
#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    output_config: Option<&'a RawValue>,
}

/// The schema the answer must fit, when the request asks for structured output; `Err` with the
/// service's message on a malformed `output_config`.
pub fn format(body: &[u8]) -> Result<Option<Value>, String> {
    // Most requests have none: skip the second parse.
    if memchr::memmem::find(body, b"\"output_config\"").is_none() {
        return Ok(None);
    }
    let Ok(Body {
        output_config: Some(raw),
    }) = serde_json::from_slice::<Body<'_>>(body)
    else {
        return Ok(None);
    };
    let config: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    if config.is_null() {
        return Ok(None);
    }
    let Some(config) = config.as_object() else {
        return Err("output_config: Input should be a valid dictionary".to_owned());
    };
    let format = match config.get("format") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(f)) => f,
        Some(_) => {
            return Err("output_config.format: Input should be a valid dictionary".to_owned());
        }
    };
    check_format(format).map(Some)
}

fn check_format(format: &Map<String, Value>) -> Result<Value, String> {
    match format.get("type") {
        None => {
            return Err(
                "output_config.format: Unable to extract tag using discriminator 'type'".to_owned(),
            );
        }
        Some(Value::String(t)) if t == "json_schema" => {}
        Some(t) => {
            let shown = t.as_str().map_or_else(|| t.to_string(), str::to_owned);
            return Err(format!(
                "output_config.format: Input tag '{shown}' found using 'type' does not match any of the expected tags: 'json_schema'"
            ));
        }
    }
    match format.get("schema") {
        None => Err("output_config.format.schema: Field required".to_owned()),
        Some(s @ Value::Object(_)) => Ok(s.clone()),
        Some(_) => {
            Err("output_config.format.schema: Input should be a valid dictionary".to_owned())
        }
    }
}

/// The answer's text for `schema`: a compact JSON value that fits it.
pub fn answer(schema: &Value) -> String {
    tools::arguments(Schema::Parsed(schema))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value) -> Result<Option<Value>, String> {
        format(body.to_string().as_bytes())
    }

    #[test]
    fn shapes_are_checked_as_the_service_does() {
        let schema =
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]});
        assert_eq!(check(json!({"model": "m"})), Ok(None));
        assert_eq!(
            check(json!({"output_config": {"effort": "high"}})),
            Ok(None)
        );
        assert_eq!(
            check(json!({"output_config": {"format": {"type": "json_schema", "schema": schema}}})),
            Ok(Some(schema.clone()))
        );
        for (bad, needle) in [
            (
                json!("x"),
                "output_config: Input should be a valid dictionary",
            ),
            (
                json!({"format": "json"}),
                "output_config.format: Input should be a valid dictionary",
            ),
            (json!({"format": {"schema": {}}}), "discriminator 'type'"),
            (
                json!({"format": {"type": "json_object"}}),
                "Input tag 'json_object'",
            ),
            (
                json!({"format": {"type": "json_schema"}}),
                "output_config.format.schema: Field required",
            ),
            (
                json!({"format": {"type": "json_schema", "schema": "object"}}),
                "output_config.format.schema: Input should be a valid dictionary",
            ),
        ] {
            let e = check(json!({"output_config": bad})).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn the_answer_has_the_required_properties() {
        let schema = json!({"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["name", "age", "city"], "additionalProperties": false});
        let v: Value = serde_json::from_str(&answer(&schema)).unwrap();
        for k in ["name", "age", "city"] {
            assert!(v.get(k).is_some(), "{k}: {v}");
        }
        assert!(v["age"].is_i64(), "{v}");
    }
}
