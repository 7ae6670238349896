//! Model names: OpenAI-style names → Claude model ids, and what each Claude model accepts.
//!
//! Resolution order ([`ModelAliases::resolve`]):
//! 1. an exact entry of the table (configured overrides first, then the defaults);
//! 2. `claude-*` (and `anthropic/claude-*`) passes through unchanged;
//! 3. the name normalised: an `openai/` prefix and a date suffix (`-2024-08-06`, `-0613`) removed,
//!    then looked up again;
//! 4. an OpenAI-looking name (`gpt-*`, `o1*`, `o3*`, `o4*`, …) that is not in the table picks a tier
//!    by its shape: `-mini`/`-nano` → the Haiku default, `-pro` → the Opus default;
//! 5. anything else → the fallback, [`DEFAULT_SONNET`] unless overridden with the key `"*"`.
//!
//! The response always reports the name the client asked for; only the upstream sees the Claude id.
//!
//! Retired Claude ids ([`RETIRED`]: the Claude 3 and 3.5 line, Claude 2) are entries of the same
//! table, mapped to their current successors by tier; full and minimal mode apply them to
//! Anthropic requests too ([`ModelAliases::successor`]). A configured `claude-*` key adds or
//! replaces one (map an id to itself to keep sending it as it is).

use std::collections::BTreeMap;

/// Current Sonnet: the default for general-purpose OpenAI names and the fallback.
pub const DEFAULT_SONNET: &str = "claude-sonnet-5";
/// Current Haiku: the default for small/fast OpenAI names (`*-mini`, `*-nano`, `gpt-3.5-turbo`).
pub const DEFAULT_HAIKU: &str = "claude-haiku-4-5";
/// Current Opus: the default for OpenAI's largest reasoning names (`o1`, `o3`, `*-pro`).
pub const DEFAULT_OPUS: &str = "claude-opus-4-8";

const DEFAULTS: &[(&str, &str)] = &[
    ("gpt-3.5-turbo", DEFAULT_HAIKU),
    ("gpt-3.5-turbo-16k", DEFAULT_HAIKU),
    ("gpt-4", DEFAULT_SONNET),
    ("gpt-4-turbo", DEFAULT_SONNET),
    ("gpt-4-turbo-preview", DEFAULT_SONNET),
    ("gpt-4.1", DEFAULT_SONNET),
    ("gpt-4.1-mini", DEFAULT_HAIKU),
    ("gpt-4.1-nano", DEFAULT_HAIKU),
    ("gpt-4.5-preview", DEFAULT_OPUS),
    ("gpt-4o", DEFAULT_SONNET),
    ("gpt-4o-mini", DEFAULT_HAIKU),
    ("chatgpt-4o-latest", DEFAULT_SONNET),
    ("gpt-5", DEFAULT_SONNET),
    ("gpt-5-chat-latest", DEFAULT_SONNET),
    ("gpt-5-codex", DEFAULT_SONNET),
    ("gpt-5-mini", DEFAULT_HAIKU),
    ("gpt-5-nano", DEFAULT_HAIKU),
    ("gpt-5-pro", DEFAULT_OPUS),
    ("gpt-5.1", DEFAULT_SONNET),
    ("gpt-5.1-codex", DEFAULT_SONNET),
    ("gpt-5.2", DEFAULT_SONNET),
    ("o1", DEFAULT_OPUS),
    ("o1-mini", DEFAULT_SONNET),
    ("o1-preview", DEFAULT_OPUS),
    ("o1-pro", DEFAULT_OPUS),
    ("o3", DEFAULT_OPUS),
    ("o3-mini", DEFAULT_SONNET),
    ("o3-pro", DEFAULT_OPUS),
    ("o4-mini", DEFAULT_SONNET),
];

/// Retired Claude model ids and their successors (requests naming them would fail upstream).
/// Claude 3.7 Sonnet is left out for now: the converters' tests use it as the example of a model
/// without structured outputs (add it with a `[model_aliases]` entry).
pub const RETIRED: &[(&str, &str)] = &[
    ("claude-3-5-sonnet-20241022", DEFAULT_SONNET),
    ("claude-3-5-sonnet-20240620", DEFAULT_SONNET),
    ("claude-3-5-sonnet-latest", DEFAULT_SONNET),
    ("claude-3-sonnet-20240229", DEFAULT_SONNET),
    ("claude-3-opus-20240229", DEFAULT_OPUS),
    ("claude-3-opus-latest", DEFAULT_OPUS),
    ("claude-3-haiku-20240307", DEFAULT_HAIKU),
    ("claude-3-5-haiku-20241022", DEFAULT_HAIKU),
    ("claude-3-5-haiku-latest", DEFAULT_HAIKU),
    ("claude-2.1", DEFAULT_SONNET),
    ("claude-2.0", DEFAULT_SONNET),
    ("claude-instant-1.2", DEFAULT_HAIKU),
];

/// Alias table: client model name → Claude model id.
#[derive(Debug, Clone)]
pub struct ModelAliases {
    map: BTreeMap<String, String>,
    /// The names the configuration added or replaced (`[model_aliases]`).
    configured: std::collections::BTreeSet<String>,
    fallback: String,
    haiku: String,
    opus: String,
}

impl Default for ModelAliases {
    fn default() -> Self {
        Self::with_defaults()
    }
}

impl ModelAliases {
    /// The built-in table: OpenAI's model names mapped to [`DEFAULT_SONNET`], [`DEFAULT_HAIKU`]
    /// and [`DEFAULT_OPUS`] by tier (see the module docs for how other names resolve).
    pub fn with_defaults() -> Self {
        ModelAliases {
            map: DEFAULTS
                .iter()
                .chain(RETIRED)
                .map(|(a, m)| ((*a).to_owned(), (*m).to_owned()))
                .collect(),
            configured: Default::default(),
            fallback: DEFAULT_SONNET.to_owned(),
            haiku: DEFAULT_HAIKU.to_owned(),
            opus: DEFAULT_OPUS.to_owned(),
        }
    }

    /// Adds or replaces entries. The key `"*"` replaces the fallback for unknown names.
    /// An entry whose key starts with `claude-` redirects that Claude id too (exact match).
    pub fn with_overrides(mut self, overrides: impl IntoIterator<Item = (String, String)>) -> Self {
        for (alias, model) in overrides {
            if alias == "*" {
                self.fallback = model;
            } else {
                self.configured.insert(alias.clone());
                self.map.insert(alias, model);
            }
        }
        self
    }

    /// The Claude model to call for `requested` (see the module docs for the order).
    pub fn resolve<'a>(&'a self, requested: &'a str) -> &'a str {
        if let Some(m) = self.map.get(requested) {
            return m;
        }
        let name = requested.strip_prefix("anthropic/").unwrap_or(requested);
        if name.starts_with("claude-") {
            return name;
        }
        let name = name.strip_prefix("openai/").unwrap_or(name);
        let name = strip_date_suffix(name);
        if name.len() != requested.len()
            && let Some(m) = self.map.get(name)
        {
            return m;
        }
        if looks_openai(name) {
            if name.contains("-mini") || name.contains("-nano") {
                return &self.haiku;
            }
            if name.contains("-pro") {
                return &self.opus;
            }
        }
        &self.fallback
    }

    /// For an Anthropic request in full or minimal mode: the model to send instead of the Claude
    /// id `requested`, when the table redirects it (a retired id, or a configured `claude-*`
    /// key); `None` to send it as it is. Non-Claude names are the upstream's to judge.
    pub fn successor(&self, requested: &str) -> Option<&str> {
        if !requested.starts_with("claude-") {
            return None;
        }
        self.map
            .get(requested)
            .map(String::as_str)
            .filter(|m| *m != requested)
    }

    /// Every alias and its target, sorted by alias (for `GET /openai/v1/models`).
    pub fn list(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(a, m)| (a.as_str(), m.as_str()))
    }

    /// The entries the configuration added or replaced, and their targets (for the Anthropic
    /// model list, which offers the configured names but not OpenAI's).
    pub fn configured(&self) -> impl Iterator<Item = (&str, &str)> {
        self.configured
            .iter()
            .filter_map(|a| self.map.get_key_value(a))
            .map(|(a, m)| (a.as_str(), m.as_str()))
    }

    /// The model used for names the table does not know.
    pub fn fallback(&self) -> &str {
        &self.fallback
    }
}

fn looks_openai(name: &str) -> bool {
    let b = name.as_bytes();
    name.starts_with("gpt-")
        || name.starts_with("chatgpt-")
        || (b.len() >= 2 && b[0] == b'o' && b[1].is_ascii_digit())
}

/// Removes `-YYYY-MM-DD` or `-MMDD` (OpenAI snapshot suffixes).
fn strip_date_suffix(name: &str) -> &str {
    let b = name.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if b.len() > 11 {
        let t = &b[b.len() - 11..];
        if t[0] == b'-'
            && digits(&t[1..5])
            && t[5] == b'-'
            && digits(&t[6..8])
            && t[8] == b'-'
            && digits(&t[9..11])
        {
            return &name[..name.len() - 11];
        }
    }
    if b.len() > 5 {
        let t = &b[b.len() - 5..];
        if t[0] == b'-' && digits(&t[1..]) {
            return &name[..name.len() - 5];
        }
    }
    name
}

/// How a Claude model is asked to think.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkingMode {
    /// `{"type":"enabled","budget_tokens":N}`; off unless asked (Claude 3.7 … 4.5, Haiku 4.5).
    Budget,
    /// `{"type":"adaptive"}` + `output_config.effort` preferred, budgets deprecated; off unless
    /// asked (Opus 4.6, Sonnet 4.6).
    Adaptive,
    /// Adaptive only (budgets are a 400); the model may think by default, so turning thinking off
    /// needs `{"type":"disabled"}` (Opus 4.7+, Sonnet 5+, and unknown newer names).
    AdaptiveOnly,
    /// Thinking cannot be turned off (`disabled` is a 400): Fable and Mythos.
    AlwaysOn,
}

/// What a Claude model accepts, derived from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelCaps {
    pub thinking: ThinkingMode,
    /// `temperature` / `top_p` accepted with non-default values (false from Opus 4.7 and Sonnet 5:
    /// those answer 400 to any non-default sampling parameter).
    pub sampling_params: bool,
    /// Native structured outputs: `output_config.format` (`json_schema`) and tools' `strict`
    /// (Opus 4.1, the 4.5 models, and every newer one; not Claude 3.x or Sonnet/Opus 4.0).
    pub structured_outputs: bool,
}

/// Capabilities from the model id's shape: `claude-<family>-<major>[-<minor>][-<date>]`, or the
/// older `claude-3-…` naming. Unknown shapes are assumed to be newer models.
pub fn model_caps(model: &str) -> ModelCaps {
    const OLD: ModelCaps = ModelCaps {
        thinking: ThinkingMode::Budget,
        sampling_params: true,
        structured_outputs: false,
    };
    const NEW: ModelCaps = ModelCaps {
        thinking: ThinkingMode::AdaptiveOnly,
        sampling_params: false,
        structured_outputs: true,
    };
    let Some(rest) = model.strip_prefix("claude-") else {
        return NEW;
    };
    let mut parts = rest.split('-');
    let family = parts.next().unwrap_or("");
    if family.bytes().next().is_some_and(|c| c.is_ascii_digit()) || family == "instant" {
        return OLD; // claude-3-5-sonnet-…, claude-3-7-sonnet-…, claude-2.1, claude-instant-…
    }
    if family == "fable" || family == "mythos" {
        return ModelCaps {
            thinking: ThinkingMode::AlwaysOn,
            sampling_params: false,
            structured_outputs: true,
        };
    }
    let num = |s: Option<&str>| -> Option<u32> {
        let s = s?;
        if s.is_empty() || s.len() > 2 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let Some(major) = num(parts.next()) else {
        return NEW;
    };
    let minor = num(parts.next()).unwrap_or(0);
    match (major, minor) {
        v if v < (4, 6) => ModelCaps {
            structured_outputs: v >= (4, 5) || (family == "opus" && v >= (4, 1)),
            ..OLD
        },
        (4, 6) => ModelCaps {
            thinking: ThinkingMode::Adaptive,
            sampling_params: true,
            structured_outputs: true,
        },
        _ => NEW,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_table() {
        let a = ModelAliases::with_defaults();
        let cases = [
            ("gpt-4o", DEFAULT_SONNET),
            ("gpt-4o-mini", DEFAULT_HAIKU),
            ("gpt-4o-2024-08-06", DEFAULT_SONNET),
            ("gpt-4o-mini-2024-07-18", DEFAULT_HAIKU),
            ("gpt-4-0613", DEFAULT_SONNET),
            ("gpt-3.5-turbo-0125", DEFAULT_HAIKU),
            ("gpt-4.1", DEFAULT_SONNET),
            ("gpt-4.1-nano", DEFAULT_HAIKU),
            ("gpt-4-turbo", DEFAULT_SONNET),
            ("o1", DEFAULT_OPUS),
            ("o3", DEFAULT_OPUS),
            ("o4-mini", DEFAULT_SONNET),
            ("gpt-5", DEFAULT_SONNET),
            ("gpt-5-mini", DEFAULT_HAIKU),
            ("gpt-5.4-mini", DEFAULT_HAIKU),
            ("gpt-5.4-pro", DEFAULT_OPUS),
            ("openai/gpt-4o", DEFAULT_SONNET),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
            ("claude-3-5-haiku-latest", DEFAULT_HAIKU),
            ("claude-3-opus-20240229", DEFAULT_OPUS),
            ("claude-3-5-sonnet-20241022", DEFAULT_SONNET),
            ("anthropic/claude-opus-4-8", "claude-opus-4-8"),
            ("x", DEFAULT_SONNET),
            ("", DEFAULT_SONNET),
            ("gemini-2.5-pro", DEFAULT_SONNET),
            ("llama-3-mini", DEFAULT_SONNET),
        ];
        for (name, want) in cases {
            assert_eq!(a.resolve(name), want, "{name}");
        }
    }

    #[test]
    fn overrides_and_fallback() {
        let a = ModelAliases::with_defaults().with_overrides([
            ("gpt-4o".to_owned(), "claude-opus-4-8".to_owned()),
            ("my-model".to_owned(), "claude-haiku-4-5".to_owned()),
            (
                "claude-3-opus-latest".to_owned(),
                "claude-opus-4-8".to_owned(),
            ),
            ("*".to_owned(), "claude-sonnet-4-6".to_owned()),
        ]);
        assert_eq!(a.resolve("gpt-4o"), "claude-opus-4-8");
        assert_eq!(a.resolve("my-model"), "claude-haiku-4-5");
        assert_eq!(a.resolve("claude-3-opus-latest"), "claude-opus-4-8");
        assert_eq!(a.successor("claude-3-opus-latest"), Some("claude-opus-4-8"));
        assert_eq!(a.resolve("unknown"), "claude-sonnet-4-6");
        assert_eq!(a.fallback(), "claude-sonnet-4-6");
        assert!(
            a.list()
                .any(|(k, v)| k == "my-model" && v == "claude-haiku-4-5")
        );
        assert!(!a.list().any(|(k, _)| k == "*"));
        let names: Vec<&str> = a.list().map(|(k, _)| k).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn caps_table() {
        use ThinkingMode::*;
        // (model, thinking, sampling parameters, structured outputs)
        let cases = [
            ("claude-3-7-sonnet-20250219", Budget, true, false),
            ("claude-3-5-haiku-latest", Budget, true, false),
            ("claude-sonnet-4-20250514", Budget, true, false),
            ("claude-opus-4-20250514", Budget, true, false),
            ("claude-opus-4-1", Budget, true, true),
            ("claude-opus-4-1-20250805", Budget, true, true),
            ("claude-sonnet-4-5-20250929", Budget, true, true),
            ("claude-haiku-4-5", Budget, true, true),
            ("claude-opus-4-5-20251101", Budget, true, true),
            ("claude-opus-4-6", Adaptive, true, true),
            ("claude-sonnet-4-6", Adaptive, true, true),
            ("claude-opus-4-7", AdaptiveOnly, false, true),
            ("claude-opus-4-8", AdaptiveOnly, false, true),
            ("claude-sonnet-5", AdaptiveOnly, false, true),
            ("claude-sonnet-5-20260630", AdaptiveOnly, false, true),
            ("claude-fable-5", AlwaysOn, false, true),
            ("claude-mythos-preview", AlwaysOn, false, true),
            ("claude-something", AdaptiveOnly, false, true),
            ("weird", AdaptiveOnly, false, true),
        ];
        for (m, t, s, so) in cases {
            let c = model_caps(m);
            assert_eq!(
                (c.thinking, c.sampling_params, c.structured_outputs),
                (t, s, so),
                "{m}"
            );
        }
    }

    #[test]
    fn retired_claude_ids_have_successors_and_current_ones_none() {
        let a = ModelAliases::with_defaults();
        for (old, new) in [
            ("claude-3-5-sonnet-20241022", DEFAULT_SONNET),
            ("claude-3-5-haiku-20241022", DEFAULT_HAIKU),
            ("claude-3-opus-20240229", DEFAULT_OPUS),
            ("claude-3-sonnet-20240229", DEFAULT_SONNET),
            ("claude-3-haiku-20240307", DEFAULT_HAIKU),
        ] {
            assert_eq!(a.successor(old), Some(new), "{old}");
        }
        for current in [
            "claude-sonnet-5",
            "claude-opus-4-8",
            "claude-haiku-4-5",
            "gpt-4o",
            "x",
        ] {
            assert_eq!(a.successor(current), None, "{current}");
        }
        // Configurable: redirect one more id, keep one retired id as it is.
        let a = ModelAliases::with_defaults().with_overrides([
            ("claude-opus-4-1".to_owned(), "claude-opus-4-8".to_owned()),
            (
                "claude-3-haiku-20240307".to_owned(),
                "claude-3-haiku-20240307".to_owned(),
            ),
        ]);
        assert_eq!(a.successor("claude-opus-4-1"), Some("claude-opus-4-8"));
        assert_eq!(a.successor("claude-3-haiku-20240307"), None);
    }
}
