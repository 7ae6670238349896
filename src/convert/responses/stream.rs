//! Anthropic Messages SSE → Responses stream events.
