//! Claude subscription (OAuth) credentials: discovery, safe refresh, login and status.
//!
//! Layout:
//! - [`store`]: the `claudeAiOauth` document (unknown keys preserved), atomic 0600 writes, the sources.
//! - [`keychain`]: the macOS Keychain item `Claude Code-credentials` (through the `security` tool).
//! - [`endpoint`]: the OAuth token endpoint (refresh and authorization-code grants, JSON bodies).
//! - [`manager`]: [`OAuthManager`], one per server: refresh ahead of expiry, single flight, adoption of
//!   tokens refreshed by someone else (Claude Code), background refresh.
//! - [`login`]: PKCE S256 login driven through any `BufRead`/`Write` pair.
//!
//! Secrets never leave this module in `Debug`/`Display` output or logs: [`AccessToken`] prints a masked
//! form, errors carry paths, status codes and OAuth error codes only.

pub mod endpoint;
pub mod fleet;
pub mod keychain;
pub mod login;
pub mod manager;
pub mod pool;
pub mod store;

#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::util::time::{format_relative, format_utc, now_ms};

use subtle::ConstantTimeEq;

pub use endpoint::{EndpointError, EndpointErrorKind};
pub use login::{LoginOptions, LoginOutcome, Pkce, authorize_url, login};
pub use manager::{OAuthManager, candidate_sources};
pub use pool::{Member, MemberKind, Pool, PoolCell, Routing};

/// The token endpoint Claude Code uses today.
pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";
/// Claude Code's public OAuth client id.
pub const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// How long before expiry a token is refreshed.
pub const DEFAULT_REFRESH_SKEW: Duration = Duration::from_secs(5 * 60);
/// Where the browser is sent to log in (overridable with `CCPROXY_OAUTH_AUTHORIZE_URL`).
pub const DEFAULT_AUTHORIZE_URL: &str = "https://claude.ai/oauth/authorize";
/// Environment variable overriding [`DEFAULT_AUTHORIZE_URL`] (used by tests).
pub const AUTHORIZE_URL_ENV: &str = "CCPROXY_OAUTH_AUTHORIZE_URL";
/// The redirect URI registered for Claude Code's client: a page that shows `code#state`.
pub const REDIRECT_URI: &str = "https://console.anthropic.com/oauth/code/callback";
/// Scopes requested at login.
pub const LOGIN_SCOPES: &str = "org:create_api_key user:profile user:inference";
/// Timeout of one token endpoint request.
pub const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The command that fixes missing/expired credentials, quoted in every such error.
pub const FIX_COMMAND: &str = "run `ccproxy auth login` (or `claude` to log in again)";

/// Where credentials come from and how they are refreshed.
#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    /// `--credentials-file` / `CCPROXY_CREDENTIALS_FILE`: when set, the only file source considered
    /// first; a missing explicit file is an error rather than a silent fallback.
    pub credentials_file: Option<PathBuf>,
    /// ccproxy's own store, `$XDG_CONFIG_HOME/ccproxy/credentials.json`.
    pub own_store: PathBuf,
    /// The home directory, for `~/.claude/.credentials.json` and `~/.config/claude/.credentials.json`.
    pub home_dir: Option<PathBuf>,
    /// OAuth token endpoint.
    pub token_url: String,
    /// OAuth client id.
    pub client_id: String,
    /// Refresh this long before expiry (capped at half the token lifetime when it is known).
    pub refresh_skew: Duration,
    /// Consult the macOS Keychain (ignored on other systems).
    pub use_keychain: bool,
}

impl CredentialsConfig {
    /// A configuration with the default token URL, client id, skew and Keychain use.
    pub fn new(own_store: PathBuf, home_dir: Option<PathBuf>) -> Self {
        Self {
            credentials_file: None,
            own_store,
            home_dir,
            token_url: DEFAULT_TOKEN_URL.to_owned(),
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            refresh_skew: DEFAULT_REFRESH_SKEW,
            use_keychain: cfg!(target_os = "macos"),
        }
    }

    /// `$XDG_CONFIG_HOME/ccproxy/credentials.json`, or `~/.config/ccproxy/credentials.json` when
    /// `XDG_CONFIG_HOME` is unset, empty or relative (as the XDG spec requires).
    pub fn default_own_store(
        xdg_config_home: Option<&Path>,
        home: Option<&Path>,
    ) -> Option<PathBuf> {
        let base = match xdg_config_home {
            Some(x) if x.is_absolute() => x.to_path_buf(),
            _ => home?.join(".config"),
        };
        Some(base.join("ccproxy").join("credentials.json"))
    }

    /// Claude Code's credential files, in lookup order.
    pub fn claude_code_files(&self) -> Vec<PathBuf> {
        match &self.home_dir {
            Some(home) => vec![
                home.join(".claude").join(".credentials.json"),
                home.join(".config")
                    .join("claude")
                    .join(".credentials.json"),
            ],
            None => Vec::new(),
        }
    }

    /// Where `auth login` saves: the explicit file when given, else the own store.
    pub fn login_target(&self) -> &Path {
        self.credentials_file.as_deref().unwrap_or(&self.own_store)
    }
}

/// An OAuth access token. `Debug` and `Display` print a masked form only; equality is constant time.
#[derive(Clone)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(Arc::from(secret.into()))
    }

    /// The secret itself, for the `Authorization` header and nothing else.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// `sk-ant-oat01-…abcd`: at most the type prefix and the last four characters.
    pub fn masked(&self) -> String {
        mask_secret(&self.0)
    }
}

impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for AccessToken {}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AccessToken").field(&self.masked()).finish()
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// A secret that is not an access token (refresh tokens): never printed.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Masks a secret: keeps a `sk-ant-xxx01-` style prefix and, when at least 16 characters remain
/// hidden, the last four characters.
pub fn mask_secret(secret: &str) -> String {
    let prefix = match secret.strip_prefix("sk-ant-") {
        Some(rest) => match rest.find('-') {
            Some(i) if i <= 8 => &secret[..7 + i + 1],
            _ => "sk-ant-",
        },
        None => "",
    };
    let rest = &secret[prefix.len()..];
    let hidden = rest.chars().count();
    if hidden >= 20 {
        let tail: String = {
            let mut t: Vec<char> = rest.chars().rev().take(4).collect();
            t.reverse();
            t.into_iter().collect()
        };
        format!("{prefix}…{tail}")
    } else {
        format!("{prefix}…")
    }
}

/// Which kind of place the credentials were found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `--credentials-file` / `CCPROXY_CREDENTIALS_FILE`.
    CredentialsFile,
    /// ccproxy's own store.
    OwnStore,
    /// Claude Code's `.credentials.json`.
    ClaudeCode,
    /// The macOS Keychain item `Claude Code-credentials`.
    Keychain,
}

/// A printable description of a source (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    pub path: Option<PathBuf>,
    /// e.g. `Claude Code credentials file /home/me/.claude/.credentials.json`.
    pub description: String,
}

impl fmt::Display for SourceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// What `auth status` and the status endpoint show. Contains no secrets.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OAuthStatus {
    pub source: SourceInfo,
    /// e.g. `sk-ant-oat01-…abcd`.
    pub masked_token: String,
    /// Epoch milliseconds; `None` when the credentials do not say.
    pub expires_at_ms: Option<i64>,
    pub expired: bool,
    /// The token is within the refresh window (or expired).
    pub refresh_due: bool,
    pub has_refresh_token: bool,
    pub subscription_type: Option<String>,
    pub scopes: Vec<String>,
    /// When this process last refreshed or adopted a token (epoch ms).
    pub last_refresh_at_ms: Option<i64>,
    /// The last refresh failure, if the last attempt failed.
    pub last_refresh_error: Option<String>,
    /// The token endpoint answered `invalid_grant` for the refresh token (revoked, or already
    /// used by another copy of these credentials): only a new login helps.
    pub refresh_token_rejected: bool,
}

/// Errors of the credential lifecycle. Messages are user-facing and never contain secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    #[error("no Claude credentials found (looked in {searched}); {FIX_COMMAND}")]
    NotFound { searched: String },
    #[error("credentials file {} does not exist; {FIX_COMMAND}", path.display())]
    MissingFile { path: PathBuf },
    #[error("cannot read credentials file {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error(
        "credentials file {} is invalid: {reason}; fix or remove it, or {FIX_COMMAND}",
        path.display()
    )]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write credentials file {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("macOS Keychain item `{service}`: {reason}")]
    Keychain { service: String, reason: String },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("the credentials in {origin} have no refresh token")]
    NoRefreshToken { origin: String },
    #[error("the credentials in {origin} were removed")]
    Removed { origin: String },
    #[error(
        "the Claude subscription token from {origin} {} and could not be refreshed ({reason}); {FIX_COMMAND}",
        describe_expiry(*expired_at_ms)
    )]
    Expired {
        origin: String,
        expired_at_ms: Option<i64>,
        reason: String,
    },
    #[error("login failed: {0}")]
    Login(String),
    #[error("refreshing the credentials in {origin} was interrupted: {reason}")]
    Interrupted {
        origin: String,
        reason: &'static str,
    },
}

impl CredentialError {
    /// True when only a new login (or a fixed credentials file) helps; the proxy answers 401.
    pub fn needs_login(&self) -> bool {
        matches!(
            self,
            Self::NotFound { .. } | Self::MissingFile { .. } | Self::Expired { .. }
        )
    }
}

fn describe_expiry(expired_at_ms: Option<i64>) -> String {
    match expired_at_ms {
        Some(ms) if ms <= now_ms() => format!("expired at {}", format_utc(ms)),
        Some(ms) => format!("(valid until {}) was rejected", format_utc(ms)),
        None => "was rejected".to_owned(),
    }
}
