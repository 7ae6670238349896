//! The response object and its items as JSON, written by hand: the same bytes as serde's derive
//! (members in declaration order, `None` as `null` unless the derive skips it), with the keys
//! written as literals instead of escaped at run time. serde's encoding of a small response
//! took ~15k instructions, one third of what a Responses request adds over a Chat one.

use super::{
    EventBody, IncompleteDetails, ItemStatus, OutputContent, OutputItem, Response, ResponseError,
    Status, SummaryText, Usage,
};
use crate::api::json::{self, Sink};

impl Response {
    /// The object's JSON text (what `serde_json::to_string` writes).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(1024);
        self.write_json(&mut out);
        out
    }

    pub fn write_json(&self, out: &mut impl Sink) {
        member(out, "{\"id\":", &self.id);
        member(out, ",\"object\":", &self.object);
        out.put(",\"created_at\":");
        json::uint(out, self.created_at);
        out.put(",\"status\":\"");
        out.put(self.status.as_str());
        member(out, "\",\"model\":", &self.model);
        out.put(",\"output\":");
        json::array(out, &self.output, |out, item| item.write_json(out));
        out.put(",\"usage\":");
        match &self.usage {
            Some(u) => u.write_json(out),
            None => out.put("null"),
        }
        out.put(",\"incomplete_details\":");
        match &self.incomplete_details {
            Some(IncompleteDetails { reason }) => {
                member(out, "{\"reason\":", reason);
                out.put("}");
            }
            None => out.put("null"),
        }
        out.put(",\"error\":");
        match &self.error {
            Some(ResponseError { code, message }) => {
                member(out, "{\"code\":", code);
                member(out, ",\"message\":", message);
                out.put("}");
            }
            None => out.put("null"),
        }
        out.put(",\"instructions\":");
        json::opt_string(out, self.instructions.as_deref());
        out.put(",\"previous_response_id\":");
        json::opt_string(out, self.previous_response_id.as_deref());
        out.put(",\"metadata\":");
        json::value(out, &self.metadata);
        out.put(",\"tools\":");
        json::value(out, &self.tools);
        out.put(",\"tool_choice\":");
        json::value(out, &self.tool_choice);
        out.put(",\"parallel_tool_calls\":");
        out.put(bool_str(self.parallel_tool_calls));
        out.put(",\"temperature\":");
        opt_float(out, self.temperature);
        out.put(",\"top_p\":");
        opt_float(out, self.top_p);
        out.put(",\"max_output_tokens\":");
        match self.max_output_tokens {
            Some(n) => json::uint(out, u64::from(n)),
            None => out.put("null"),
        }
        out.put(",\"reasoning\":");
        json::value(out, &self.reasoning);
        out.put(",\"text\":");
        json::value(out, &self.text);
        out.put(",\"store\":");
        out.put(bool_str(self.store));
        member(out, ",\"truncation\":", &self.truncation);
        out.put(",\"background\":");
        out.put(bool_str(self.background));
        out.put(",\"user\":");
        json::opt_string(out, self.user.as_deref());
        out.put("}");
    }
}

impl OutputItem {
    pub fn write_json(&self, out: &mut impl Sink) {
        match self {
            OutputItem::Message {
                id,
                status,
                role,
                content,
            } => {
                head(out, "message", id, Some(*status));
                member(out, ",\"role\":", role);
                out.put(",\"content\":");
                json::array(out, content, |out, c| c.write_json(out));
            }
            OutputItem::FunctionCall {
                id,
                status,
                call_id,
                namespace,
                name,
                arguments,
            } => {
                head(out, "function_call", id, Some(*status));
                member(out, ",\"call_id\":", call_id);
                if let Some(ns) = namespace {
                    member(out, ",\"namespace\":", ns);
                }
                member(out, ",\"name\":", name);
                member(out, ",\"arguments\":", arguments);
            }
            OutputItem::CustomToolCall {
                id,
                status,
                call_id,
                name,
                input,
            } => {
                head(out, "custom_tool_call", id, Some(*status));
                member(out, ",\"call_id\":", call_id);
                member(out, ",\"name\":", name);
                member(out, ",\"input\":", input);
            }
            OutputItem::Reasoning {
                id,
                summary,
                encrypted_content,
            } => {
                head(out, "reasoning", id, None);
                out.put(",\"summary\":");
                json::array(out, summary, |out, s| s.write_json(out));
                if let Some(e) = encrypted_content {
                    member(out, ",\"encrypted_content\":", e);
                }
            }
            OutputItem::WebSearchCall { id, status, action } => {
                head(out, "web_search_call", id, Some(*status));
                out.put(",\"action\":");
                json::value(out, action);
            }
        }
        out.put("}");
    }
}

impl OutputContent {
    pub fn write_json(&self, out: &mut impl Sink) {
        match self {
            OutputContent::OutputText { text, annotations } => {
                member(out, "{\"type\":\"output_text\",\"text\":", text);
                out.put(",\"annotations\":");
                json::array(out, annotations, json::value);
                out.put("}");
            }
            OutputContent::Refusal { refusal } => {
                member(out, "{\"type\":\"refusal\",\"refusal\":", refusal);
                out.put("}");
            }
        }
    }
}

impl SummaryText {
    pub fn write_json(&self, out: &mut impl Sink) {
        member(out, "{\"type\":", &self.kind);
        member(out, ",\"text\":", &self.text);
        out.put("}");
    }
}

impl Usage {
    pub fn write_json(&self, out: &mut impl Sink) {
        out.put("{\"input_tokens\":");
        json::uint(out, self.input_tokens);
        out.put(",\"input_tokens_details\":{\"cached_tokens\":");
        json::uint(out, self.input_tokens_details.cached_tokens);
        out.put("},\"output_tokens\":");
        json::uint(out, self.output_tokens);
        out.put(",\"output_tokens_details\":{\"reasoning_tokens\":");
        json::uint(out, self.output_tokens_details.reasoning_tokens);
        out.put("},\"total_tokens\":");
        json::uint(out, self.total_tokens);
        out.put("}");
    }
}

impl EventBody<'_> {
    /// The event's JSON object (what `serde_json::to_string` writes: `type` first, then the
    /// members in declaration order). serde took ~15k instructions a stream for the few events
    /// of a streamed answer that are not text deltas (those are written by the converter).
    pub fn write_json(&self, out: &mut impl Sink) {
        out.put("{\"type\":\"");
        out.put(self.kind());
        out.put("\"");
        match self {
            EventBody::Created { response }
            | EventBody::InProgress { response }
            | EventBody::Completed { response }
            | EventBody::Incomplete { response }
            | EventBody::Failed { response } => {
                out.put(",\"response\":");
                response.write_json(out);
            }
            EventBody::OutputItemAdded { output_index, item }
            | EventBody::OutputItemDone { output_index, item } => {
                index(out, ",\"output_index\":", *output_index);
                out.put(",\"item\":");
                item.write_json(out);
            }
            EventBody::ContentPartAdded {
                item_id,
                output_index,
                content_index,
                part,
            }
            | EventBody::ContentPartDone {
                item_id,
                output_index,
                content_index,
                part,
            } => {
                member(out, ",\"item_id\":", item_id);
                index(out, ",\"output_index\":", *output_index);
                index(out, ",\"content_index\":", *content_index);
                out.put(",\"part\":");
                part.write_json(out);
            }
            EventBody::OutputTextDelta {
                item_id,
                output_index,
                content_index,
                delta: text,
                ..
            }
            | EventBody::OutputTextDone {
                item_id,
                output_index,
                content_index,
                text,
                ..
            } => {
                member(out, ",\"item_id\":", item_id);
                index(out, ",\"output_index\":", *output_index);
                index(out, ",\"content_index\":", *content_index);
                let key = if matches!(self, EventBody::OutputTextDelta { .. }) {
                    ",\"delta\":"
                } else {
                    ",\"text\":"
                };
                member(out, key, text);
                out.put(",\"logprobs\":[]");
            }
            EventBody::FunctionCallArgumentsDelta {
                item_id,
                output_index,
                delta,
            }
            | EventBody::CustomToolCallInputDelta {
                item_id,
                output_index,
                delta,
            } => {
                member(out, ",\"item_id\":", item_id);
                index(out, ",\"output_index\":", *output_index);
                member(out, ",\"delta\":", delta);
            }
            EventBody::FunctionCallArgumentsDone {
                item_id,
                output_index,
                name,
                arguments,
            } => {
                member(out, ",\"item_id\":", item_id);
                index(out, ",\"output_index\":", *output_index);
                member(out, ",\"name\":", name);
                member(out, ",\"arguments\":", arguments);
            }
            EventBody::CustomToolCallInputDone {
                item_id,
                output_index,
                input,
            } => {
                member(out, ",\"item_id\":", item_id);
                index(out, ",\"output_index\":", *output_index);
                member(out, ",\"input\":", input);
            }
            EventBody::ReasoningSummaryPartAdded {
                item_id,
                output_index,
                summary_index,
                part,
            }
            | EventBody::ReasoningSummaryPartDone {
                item_id,
                output_index,
                summary_index,
                part,
            } => {
                member(out, ",\"item_id\":", item_id);
                index(out, ",\"output_index\":", *output_index);
                index(out, ",\"summary_index\":", *summary_index);
                out.put(",\"part\":");
                part.write_json(out);
            }
            EventBody::ReasoningSummaryTextDelta {
                item_id,
                output_index,
                summary_index,
                delta: text,
            }
            | EventBody::ReasoningSummaryTextDone {
                item_id,
                output_index,
                summary_index,
                text,
            } => {
                member(out, ",\"item_id\":", item_id);
                index(out, ",\"output_index\":", *output_index);
                index(out, ",\"summary_index\":", *summary_index);
                let key = if matches!(self, EventBody::ReasoningSummaryTextDelta { .. }) {
                    ",\"delta\":"
                } else {
                    ",\"text\":"
                };
                member(out, key, text);
            }
        }
        out.put("}");
    }
}

impl Status {
    /// The wire name (`in_progress`, `completed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
        }
    }
}

impl ItemStatus {
    /// The wire name (`in_progress`, `completed`, `incomplete`).
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::InProgress => "in_progress",
            ItemStatus::Completed => "completed",
            ItemStatus::Incomplete => "incomplete",
        }
    }
}

/// `{"type":KIND,"id":ID` and the status, if the item has one.
fn head<S: Sink>(out: &mut S, kind: &str, id: &str, status: Option<ItemStatus>) {
    out.put("{\"type\":\"");
    out.put(kind);
    member(out, "\",\"id\":", id);
    if let Some(s) = status {
        out.put(",\"status\":\"");
        out.put(s.as_str());
        out.put("\"");
    }
}

/// `prefix` (`,"key":`), then `s` as a string.
fn member<S: Sink>(out: &mut S, prefix: &str, s: &str) {
    out.put(prefix);
    json::string(out, s);
}

/// `prefix` (`,"key":`), then `n`.
fn index(out: &mut impl Sink, prefix: &str, n: usize) {
    out.put(prefix);
    json::uint(out, n as u64);
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

fn opt_float(out: &mut impl Sink, f: Option<f64>) {
    match f {
        Some(f) => json::float(out, f),
        None => out.put("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{InputTokensDetails, OutputTokensDetails};
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["\\PC{0,24}", "(a|\"|\\\\|\\n|\\x01|é|\\x7f){0,12}"]
    }

    fn status() -> impl Strategy<Value = ItemStatus> {
        prop_oneof![
            Just(ItemStatus::InProgress),
            Just(ItemStatus::Completed),
            Just(ItemStatus::Incomplete)
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn item() -> impl Strategy<Value = OutputItem> {
        let content = prop_oneof![
            (text(), prop::collection::vec(value(), 0..3))
                .prop_map(|(text, annotations)| OutputContent::OutputText { text, annotations }),
            text().prop_map(|refusal| OutputContent::Refusal { refusal }),
        ];
        prop_oneof![
            (
                text(),
                status(),
                text(),
                prop::collection::vec(content, 0..3)
            )
                .prop_map(|(id, status, role, content)| OutputItem::Message {
                    id,
                    status,
                    role,
                    content
                }),
            (
                text(),
                status(),
                text(),
                prop::option::of(text()),
                text(),
                text()
            )
                .prop_map(|(id, status, call_id, namespace, name, arguments)| {
                    OutputItem::FunctionCall {
                        id,
                        status,
                        call_id,
                        namespace,
                        name,
                        arguments,
                    }
                }),
            (text(), status(), text(), text(), text()).prop_map(
                |(id, status, call_id, name, input)| OutputItem::CustomToolCall {
                    id,
                    status,
                    call_id,
                    name,
                    input
                }
            ),
            (
                text(),
                prop::collection::vec(text().prop_map(SummaryText::new), 0..3),
                prop::option::of(text())
            )
                .prop_map(|(id, summary, encrypted_content)| OutputItem::Reasoning {
                    id,
                    summary,
                    encrypted_content
                }),
            (text(), status(), value())
                .prop_map(|(id, status, action)| OutputItem::WebSearchCall { id, status, action }),
        ]
    }

    fn usage() -> impl Strategy<Value = Usage> {
        any::<[u64; 5]>().prop_map(|n| Usage {
            input_tokens: n[0],
            input_tokens_details: InputTokensDetails {
                cached_tokens: n[1],
            },
            output_tokens: n[2],
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: n[3],
            },
            total_tokens: n[4],
        })
    }

    prop_compose! {
        fn response()(
            (id, object, model, truncation) in (text(), text(), text(), text()),
            (created_at, max_output_tokens) in (any::<u64>(), any::<Option<u32>>()),
            status in prop_oneof![Just(Status::InProgress), Just(Status::Completed),
                                  Just(Status::Incomplete), Just(Status::Failed)],
            output in prop::collection::vec(item(), 0..4),
            usage in prop::option::of(usage()),
            reason in prop::option::of(text()),
            error in prop::option::of((text(), text())),
            (instructions, previous_response_id, user) in
                (prop::option::of(text()), prop::option::of(text()), prop::option::of(text())),
            (metadata, tools, tool_choice, reasoning, text) in
                (value(), value(), value(), value(), value()),
            flags in any::<[bool; 3]>(),
            (temperature, top_p) in (any::<Option<f64>>(), any::<Option<f64>>()),
        ) -> Response {
            Response {
                id, object, created_at, status, model, output, usage,
                incomplete_details: reason.map(|reason| IncompleteDetails { reason }),
                error: error.map(|(code, message)| ResponseError { code, message }),
                instructions, previous_response_id, metadata, tools, tool_choice,
                parallel_tool_calls: flags[0], temperature, top_p, max_output_tokens,
                reasoning, text, store: flags[1], truncation, background: flags[2], user,
            }
        }
    }

    /// Every kind of stream event, over the same owned values.
    fn events<'e>(
        s: &'e [String; 4],
        n: &[usize; 3],
        item: &'e OutputItem,
        part: &'e OutputContent,
        summary: &'e SummaryText,
        response: &'e Response,
    ) -> Vec<EventBody<'e>> {
        let (a, b, c, d) = (&*s[0], &*s[1], &*s[2], &*s[3]);
        vec![
            EventBody::Created { response },
            EventBody::InProgress { response },
            EventBody::Completed { response },
            EventBody::Incomplete { response },
            EventBody::Failed { response },
            EventBody::OutputItemAdded {
                output_index: n[0],
                item,
            },
            EventBody::OutputItemDone {
                output_index: n[0],
                item,
            },
            EventBody::ContentPartAdded {
                item_id: a,
                output_index: n[0],
                content_index: n[1],
                part,
            },
            EventBody::ContentPartDone {
                item_id: a,
                output_index: n[0],
                content_index: n[1],
                part,
            },
            EventBody::OutputTextDelta {
                item_id: a,
                output_index: n[0],
                content_index: n[1],
                delta: b,
                logprobs: [],
            },
            EventBody::OutputTextDone {
                item_id: a,
                output_index: n[0],
                content_index: n[1],
                text: b,
                logprobs: [],
            },
            EventBody::FunctionCallArgumentsDelta {
                item_id: a,
                output_index: n[0],
                delta: b,
            },
            EventBody::FunctionCallArgumentsDone {
                item_id: a,
                output_index: n[0],
                name: c,
                arguments: d,
            },
            EventBody::CustomToolCallInputDelta {
                item_id: a,
                output_index: n[0],
                delta: b,
            },
            EventBody::CustomToolCallInputDone {
                item_id: a,
                output_index: n[0],
                input: d,
            },
            EventBody::ReasoningSummaryPartAdded {
                item_id: a,
                output_index: n[0],
                summary_index: n[2],
                part: summary,
            },
            EventBody::ReasoningSummaryPartDone {
                item_id: a,
                output_index: n[0],
                summary_index: n[2],
                part: summary,
            },
            EventBody::ReasoningSummaryTextDelta {
                item_id: a,
                output_index: n[0],
                summary_index: n[2],
                delta: b,
            },
            EventBody::ReasoningSummaryTextDone {
                item_id: a,
                output_index: n[0],
                summary_index: n[2],
                text: c,
            },
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn every_event_is_what_serde_writes(
            s in [text(), text(), text(), text()],
            n in any::<[usize; 3]>(),
            item in item(),
            part in prop_oneof![
                (text(), prop::collection::vec(value(), 0..3))
                    .prop_map(|(text, annotations)| OutputContent::OutputText { text, annotations }),
                text().prop_map(|refusal| OutputContent::Refusal { refusal }),
            ],
            (kind, summary_text) in (text(), text()),
            response in response(),
        ) {
            let summary = SummaryText { kind, text: summary_text };
            let all = events(&s, &n, &item, &part, &summary, &response);
            prop_assert_eq!(all.len(), 19);
            for e in all {
                let mut out = Vec::new();
                e.write_json(&mut out);
                prop_assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(&e).unwrap(),
                    "{}", e.kind()
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn a_response_is_what_serde_writes(r in response()) {
            prop_assert_eq!(r.to_json(), serde_json::to_string(&r).unwrap());
            let mut bytes = Vec::new();
            r.write_json(&mut bytes);
            prop_assert_eq!(bytes, serde_json::to_vec(&r).unwrap());
        }

        #[test]
        fn an_item_is_what_serde_writes(i in item()) {
            let mut out = String::new();
            i.write_json(&mut out);
            prop_assert_eq!(out, serde_json::to_string(&i).unwrap());
        }
    }

    #[test]
    fn a_typical_response_reads_back_as_itself() {
        let mut r: Response = serde_json::from_value(json!({
            "id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
            "model": "m", "output": [{"type": "message", "id": "msg_1", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": "Hi \"there\"\n",
            "annotations": []}]}], "usage": {"input_tokens": 3, "input_tokens_details":
            {"cached_tokens": 0}, "output_tokens": 2, "output_tokens_details":
            {"reasoning_tokens": 0}, "total_tokens": 5}, "incomplete_details": null,
            "error": null, "instructions": null, "previous_response_id": null, "metadata": {},
            "tools": [], "tool_choice": "auto", "parallel_tool_calls": true,
            "temperature": 0.7, "top_p": null, "max_output_tokens": 256,
            "reasoning": {"effort": null, "summary": null}, "text": {"format": {"type": "text"}},
            "store": true, "truncation": "disabled", "background": false, "user": null
        }))
        .unwrap();
        let back: Response = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(back, r);
        r.status = Status::Incomplete;
        assert!(r.to_json().contains(r#""status":"incomplete""#));
    }
}
