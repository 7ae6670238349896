//! The `credential` phase: which upstream credential a request uses (see README
//! "Credentials"). Full mode prefers the server's subscription, then a real
//! Anthropic credential from the client, then the server's API key; minimal and
//! passthrough use an API key (the client's, else the server's). Placeholders
//! sent by clients (anything not `sk-ant-…`) never go upstream.

use crate::credentials::AccessToken;
use crate::error::ProxyError;
use crate::routes::Mode;
use crate::state::AppState;
use crate::upstream::UpstreamAuth;

/// Where the upstream credential of a request came from (for logs and usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    ServerOAuth,
    Client,
    ServerApiKey,
}

impl CredentialSource {
    pub fn name(self) -> &'static str {
        match self {
            CredentialSource::ServerOAuth => "server_oauth",
            CredentialSource::Client => "client",
            CredentialSource::ServerApiKey => "server_api_key",
        }
    }
}

/// The credential chosen for one request.
pub struct Chosen {
    pub auth: UpstreamAuth,
    pub source: CredentialSource,
    /// The server's OAuth token when that is what goes upstream (for the
    /// refresh-and-retry after a 401).
    pub oauth: Option<AccessToken>,
}

impl Chosen {
    fn new(auth: UpstreamAuth, source: CredentialSource) -> Chosen {
        Chosen {
            auth,
            source,
            oauth: None,
        }
    }
}

/// Chooses the upstream credential for a request in `mode`, given the token
/// the client presented (only when the proxy has no token of its own).
pub async fn choose(
    state: &AppState,
    mode: Mode,
    client_token: Option<String>,
) -> Result<Chosen, ProxyError> {
    let client = client_token.and_then(|t| {
        if t.starts_with("sk-ant-oat") {
            Some(UpstreamAuth::OAuth(t))
        } else if t.starts_with("sk-ant-") {
            Some(UpstreamAuth::ApiKey(t))
        } else {
            None
        }
    });
    match mode {
        Mode::Full => full_mode(state, client).await,
        Mode::Minimal | Mode::Passthrough => match client {
            Some(k @ UpstreamAuth::ApiKey(_)) => Ok(Chosen::new(k, CredentialSource::Client)),
            _ => server_key(state)
                .map(|k| Chosen::new(k, CredentialSource::ServerApiKey))
                .ok_or_else(|| {
                    ProxyError::auth(format!(
                        "{} mode needs an Anthropic API key: send one (sk-ant-api…) as x-api-key or \
                         Authorization: Bearer, or set ANTHROPIC_API_KEY for the server. Claude \
                         subscription (OAuth) credentials work only in full mode (/v1 or /full/v1).",
                        mode.name()
                    ))
                }),
        },
    }
}

async fn full_mode(state: &AppState, client: Option<UpstreamAuth>) -> Result<Chosen, ProxyError> {
    let mut oauth_failure = None;
    if let Some(mgr) = &state.oauth {
        match mgr.access_token().await {
            Ok(tok) => {
                let mut c = Chosen::new(
                    UpstreamAuth::OAuth(tok.secret().to_owned()),
                    CredentialSource::ServerOAuth,
                );
                c.oauth = Some(tok);
                return Ok(c);
            }
            Err(e) => oauth_failure = Some(e.to_string()),
        }
    }
    if let Some(c) = client {
        return Ok(Chosen::new(c, CredentialSource::Client));
    }
    if let Some(k) = server_key(state) {
        return Ok(Chosen::new(k, CredentialSource::ServerApiKey));
    }
    Err(ProxyError::auth(match oauth_failure {
        Some(why) => format!("Claude subscription credentials are not usable: {why}"),
        None => "no credentials: log in with `ccproxy auth login` (or Claude Code's `claude`), \
                 set ANTHROPIC_API_KEY for the server, or send an Anthropic API key (sk-ant-api…) \
                 as x-api-key"
            .to_owned(),
    }))
}

fn server_key(state: &AppState) -> Option<UpstreamAuth> {
    state
        .settings
        .api_key
        .as_ref()
        .map(|k| UpstreamAuth::ApiKey(k.expose().to_owned()))
}
