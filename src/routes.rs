//! What a request URL means: the mode (by prefix), the endpoint (route), and the
//! dialect the client speaks. The route × mode table is data, read by the router
//! and by the tests; this module imports nothing of the crate.

/// The three ways ccproxy relays a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Claude Code shaping; OAuth subscription or API key.
    Full,
    /// Only what the upstream needs; API key.
    Minimal,
    /// Bytes in, bytes out; API key.
    Passthrough,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Minimal => "minimal",
            Mode::Passthrough => "passthrough",
        }
    }
}

/// Which API the client speaks on a route: decides conversion and the error envelope.
///
/// Adding a dialect: a variant here, its routes in [`ROUTES`], a converter module
/// under `convert/`, and its renderer in `error.rs` (see docs/ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    Anthropic,
    OpenAi,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Anthropic => "anthropic",
            Dialect::OpenAi => "openai",
        }
    }

    /// The dialect of a path that matched no route (for its 404/405 envelope).
    pub fn of_path(path: &str) -> Dialect {
        if path.contains("/openai/") {
            Dialect::OpenAi
        } else {
            Dialect::Anthropic
        }
    }
}

/// Which endpoint the client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Messages,
    CountTokens,
    Models,
    ChatCompletions,
    /// OpenAI Responses API: create.
    Responses,
    /// A stored response: `GET` (retrieve) and `DELETE`.
    StoredResponse,
    /// A stored response's input items (`GET`, a list).
    ResponseInputItems,
    /// A create body's input token count (`POST`).
    ResponseInputTokens,
    OpenAiModels,
    /// Any other `/v1/*` path (Files, Message Batches, Skills, `/v1/models/{id}`, …): relayed
    /// with the mode's credentials and headers, bodies and answers streamed.
    Relay,
}

impl Route {
    pub fn name(self) -> &'static str {
        match self {
            Route::Messages => "messages",
            Route::CountTokens => "count_tokens",
            Route::Models => "models",
            Route::ChatCompletions => "chat_completions",
            Route::Responses => "responses",
            Route::StoredResponse => "stored_response",
            Route::ResponseInputItems => "response_input_items",
            Route::ResponseInputTokens => "response_input_tokens",
            Route::OpenAiModels => "openai_models",
            Route::Relay => "relay",
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Route::ChatCompletions
            | Route::Responses
            | Route::StoredResponse
            | Route::ResponseInputItems
            | Route::ResponseInputTokens
            | Route::OpenAiModels => Dialect::OpenAi,
            Route::Messages | Route::CountTokens | Route::Models | Route::Relay => {
                Dialect::Anthropic
            }
        }
    }
}

/// HTTP method a route answers (any other gets 405 in the route's dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
    /// `GET` and `DELETE`.
    GetDelete,
    /// Every method (the passthrough relay).
    Any,
    /// POST, and GET with a WebSocket upgrade (the Responses API's WebSocket mode: one
    /// `response.create` message per response, answered with the stream's events).
    PostOrSocket,
}

/// One entry of the route table: a path below a mode prefix.
#[derive(Debug, Clone, Copy)]
pub struct RouteEntry {
    pub path: &'static str,
    pub route: Route,
    pub verb: Verb,
    /// The modes that serve it.
    pub modes: &'static [Mode],
}

const ALL_MODES: &[Mode] = &[Mode::Full, Mode::Minimal, Mode::Passthrough];

/// The mode prefixes and the mode each selects.
pub const PREFIXES: &[(&str, Mode)] = &[
    ("", Mode::Full),
    ("/full", Mode::Full),
    ("/min", Mode::Minimal),
    ("/pt", Mode::Passthrough),
];

/// Every proxied route, below each prefix of the modes it lists.
pub const ROUTES: &[RouteEntry] = &[
    RouteEntry {
        path: "/v1/messages",
        route: Route::Messages,
        verb: Verb::Post,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/v1/messages/count_tokens",
        route: Route::CountTokens,
        verb: Verb::Post,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/v1/models",
        route: Route::Models,
        verb: Verb::Get,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/openai/v1/chat/completions",
        route: Route::ChatCompletions,
        verb: Verb::Post,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/openai/v1/responses",
        route: Route::Responses,
        verb: Verb::PostOrSocket,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/openai/v1/responses/input_tokens",
        route: Route::ResponseInputTokens,
        verb: Verb::Post,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/openai/v1/responses/{id}",
        route: Route::StoredResponse,
        verb: Verb::GetDelete,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/openai/v1/responses/{id}/input_items",
        route: Route::ResponseInputItems,
        verb: Verb::Get,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/openai/v1/models",
        route: Route::OpenAiModels,
        verb: Verb::Get,
        modes: ALL_MODES,
    },
    RouteEntry {
        path: "/v1/{*rest}",
        route: Route::Relay,
        verb: Verb::Any,
        modes: ALL_MODES,
    },
];

/// The client path without its mode prefix (`/min/v1/files` → `/v1/files`).
pub fn strip_mode_prefix(path: &str) -> &str {
    PREFIXES
        .iter()
        .filter(|(p, _)| !p.is_empty())
        .find_map(|(p, _)| path.strip_prefix(p).filter(|rest| rest.starts_with('/')))
        .unwrap_or(path)
}

/// The mode prefix a client path starts with (`""` for none).
pub fn mode_prefix(path: &str) -> &str {
    let rest = strip_mode_prefix(path);
    &path[..path.len() - rest.len()]
}

/// Every (full path, mode, entry) the router serves.
pub fn table() -> impl Iterator<Item = (String, Mode, &'static RouteEntry)> {
    PREFIXES.iter().flat_map(|&(prefix, mode)| {
        ROUTES
            .iter()
            .filter(move |e| e.modes.contains(&mode))
            .map(move |e| (format!("{prefix}{}", e.path), mode, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_prefix_and_relay_in_every_mode() {
        let paths: Vec<(String, Mode)> = table().map(|(p, m, _)| (p, m)).collect();
        assert!(paths.contains(&("/v1/messages".into(), Mode::Full)));
        assert!(paths.contains(&("/full/openai/v1/chat/completions".into(), Mode::Full)));
        assert!(paths.contains(&("/min/v1/models".into(), Mode::Minimal)));
        assert!(paths.contains(&("/pt/v1/{*rest}".into(), Mode::Passthrough)));
        assert!(paths.contains(&("/min/v1/{*rest}".into(), Mode::Minimal)));
        assert!(paths.contains(&("/v1/{*rest}".into(), Mode::Full)));
        assert!(paths.contains(&("/full/v1/{*rest}".into(), Mode::Full)));
        assert_eq!(paths.len(), 4 * 10);
    }

    #[test]
    fn prefixes_come_off() {
        assert_eq!(strip_mode_prefix("/min/v1/files"), "/v1/files");
        assert_eq!(strip_mode_prefix("/full/v1/files/x"), "/v1/files/x");
        assert_eq!(strip_mode_prefix("/pt/v1/skills"), "/v1/skills");
        assert_eq!(strip_mode_prefix("/v1/files"), "/v1/files");
        assert_eq!(strip_mode_prefix("/minimal/v1"), "/minimal/v1");
        assert_eq!(mode_prefix("/min/v1/files"), "/min");
        assert_eq!(mode_prefix("/v1/files"), "");
    }

    #[test]
    fn dialects() {
        assert_eq!(Route::ChatCompletions.dialect(), Dialect::OpenAi);
        assert_eq!(Route::Relay.dialect(), Dialect::Anthropic);
        assert_eq!(Dialect::of_path("/min/openai/v1/x"), Dialect::OpenAi);
        assert_eq!(Dialect::of_path("/v1/x"), Dialect::Anthropic);
    }
}
