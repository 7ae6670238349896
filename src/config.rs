//! Effective settings: flag > environment > TOML file > default.
//!
//! clap already resolves "flag > environment" for each option; this module fills
//! what is still unset from the TOML file and then from defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{CommonArgs, ServeArgs};

pub const DEFAULT_UPSTREAM: &str = "https://api.anthropic.com";
pub const DEFAULT_TOKEN_URL: &str = "https://platform.claude.com/v1/oauth/token";
pub const DEFAULT_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
/// The Claude Code version ccproxy identifies as in full mode (`user-agent`).
pub const DEFAULT_CLI_VERSION: &str = "2.1.197";
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;

/// A secret string: never printed by Debug or Display.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// A masked form safe to show: a known prefix and the last four characters at most.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks a secret for display: keeps a recognisable `sk-ant-xxx` prefix and the
/// last 4 characters when the secret is long enough that this reveals little.
pub fn mask(s: &str) -> String {
    let n = s.chars().count();
    if n < 16 {
        return format!("**** ({n} chars)");
    }
    let prefix: String = if s.starts_with("sk-ant-") {
        s.chars().take(10).collect()
    } else {
        String::new()
    };
    let tail: String = s.chars().skip(n - 4).collect();
    format!("{prefix}…{tail}")
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// Where requests go upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    Url(String),
    /// The built-in simulated upstream, started in-process.
    Sim,
}

/// The TOML configuration file. Unknown keys are an error, so typos are caught.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub upstream_url: Option<String>,
    pub auth_token: Option<String>,
    pub api_key: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub oauth_token_url: Option<String>,
    pub oauth_client_id: Option<String>,
    pub refresh_skew_secs: Option<u64>,
    pub max_body_bytes: Option<usize>,
    pub cli_version: Option<String>,
    pub default_max_tokens: Option<u32>,
    pub connect_timeout_secs: Option<u64>,
    pub upstream_timeout_secs: Option<u64>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub allow_open: Option<bool>,
    #[serde(default)]
    pub cors_origins: Vec<String>,
    pub max_concurrent_requests: Option<usize>,
    pub stream_idle_timeout_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub retries: Option<u32>,
    pub retry_429: Option<bool>,
    pub retry_max_wait_secs: Option<u64>,
    pub usage: Option<bool>,
    pub usage_db: Option<PathBuf>,
    #[serde(default)]
    pub model_aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub prices: BTreeMap<String, crate::observability::usage::PriceOverride>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub upstream: UpstreamTarget,
    pub auth_token: Option<Secret>,
    pub api_key: Option<Secret>,
    pub credentials_file: Option<PathBuf>,
    pub oauth_token_url: String,
    pub oauth_client_id: String,
    pub refresh_skew: Duration,
    pub max_body_bytes: usize,
    pub cli_version: String,
    pub default_max_tokens: u32,
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers.
    pub upstream_timeout: Duration,
    pub log_format: String,
    pub log_level: String,
    /// Listen on a non-loopback address without a proxy token.
    pub allow_open: bool,
    /// Browser origins allowed to call the proxy (CORS allow-list).
    pub cors_origins: Vec<String>,
    /// Requests served at once; more get 503 with `retry-after` (0 = unlimited).
    pub max_concurrent_requests: usize,
    /// Longest silence tolerated from the upstream in the middle of a stream.
    pub stream_idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// Retries before the first byte reaches the client (connection failures, 529,
    /// and 429 when `retry_429`); 0 = one upstream request per client request.
    pub retries: u32,
    pub retry_429: bool,
    /// A `retry-after` longer than this is not waited for: the error goes to the client.
    pub retry_max_wait: Duration,
    /// Record usage in the SQLite store.
    pub usage_enabled: bool,
    pub usage_db: PathBuf,
    pub model_aliases: BTreeMap<String, String>,
    pub prices: BTreeMap<String, crate::observability::usage::PriceOverride>,
    /// The configuration file that was (or would be) read.
    pub config_path: PathBuf,
    /// ccproxy's own configuration directory (own credentials store lives here).
    pub config_dir: PathBuf,
    pub home_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn home_dir() -> Option<PathBuf> {
    env_nonempty("HOME").map(PathBuf::from)
}

/// `$XDG_CONFIG_HOME/ccproxy`, else `~/.config/ccproxy`.
pub fn config_dir() -> PathBuf {
    let base = env_nonempty("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home_dir().map(|h| h.join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ccproxy")
}

/// `$XDG_DATA_HOME/ccproxy`, else `~/.local/share/ccproxy`.
pub fn data_dir() -> PathBuf {
    let base = env_nonempty("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| home_dir().map(|h| h.join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ccproxy")
}

/// Reads the TOML file; a missing file is an empty config unless it was named explicitly.
pub fn read_file_config(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

impl Settings {
    /// Resolves the settings for a command that only needs the common options.
    pub fn from_common(common: &CommonArgs) -> Result<Settings, ConfigError> {
        Self::resolve(&ServeArgs {
            common: common.clone(),
            ..ServeArgs::default()
        })
    }

    pub fn resolve(args: &ServeArgs) -> Result<Settings, ConfigError> {
        let config_dir = config_dir();
        let (config_path, explicit) = match &args.common.config {
            Some(p) => (p.clone(), true),
            None => (config_dir.join("config.toml"), false),
        };
        let file = read_file_config(&config_path, explicit)?;
        Self::merge(args, file, config_path, config_dir)
    }

    fn merge(
        args: &ServeArgs,
        file: FileConfig,
        config_path: PathBuf,
        config_dir: PathBuf,
    ) -> Result<Settings, ConfigError> {
        let upstream_raw = args
            .upstream_url
            .clone()
            .or(file.upstream_url)
            .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned());
        let upstream = parse_upstream(&upstream_raw)?;
        let log_format = args
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "pretty".to_owned());
        if log_format != "pretty" && log_format != "json" {
            return Err(ConfigError::Invalid {
                name: "log_format",
                message: format!("{log_format:?} (expected pretty or json)"),
            });
        }
        let max_body_bytes = file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
        if max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                name: "max_body_bytes",
                message: "must be greater than 0".into(),
            });
        }
        Ok(Settings {
            host: args
                .host
                .clone()
                .or(file.host)
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
            port: args.port.or(file.port).unwrap_or(8000),
            upstream,
            auth_token: args
                .auth_token
                .clone()
                .or_else(|| env_nonempty("AUTH_TOKEN"))
                .or(file.auth_token)
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            api_key: env_nonempty("ANTHROPIC_API_KEY")
                .or(file.api_key)
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            credentials_file: args
                .common
                .credentials_file
                .clone()
                .or(file.credentials_file),
            oauth_token_url: args
                .common
                .oauth_token_url
                .clone()
                .or(file.oauth_token_url)
                .unwrap_or_else(|| DEFAULT_TOKEN_URL.to_owned()),
            oauth_client_id: env_nonempty("CCPROXY_OAUTH_CLIENT_ID")
                .or(file.oauth_client_id)
                .unwrap_or_else(|| DEFAULT_CLIENT_ID.to_owned()),
            refresh_skew: Duration::from_secs(file.refresh_skew_secs.unwrap_or(300)),
            max_body_bytes,
            cli_version: file
                .cli_version
                .unwrap_or_else(|| DEFAULT_CLI_VERSION.to_owned()),
            default_max_tokens: file.default_max_tokens.unwrap_or(4096),
            connect_timeout: Duration::from_secs(file.connect_timeout_secs.unwrap_or(10)),
            upstream_timeout: Duration::from_secs(file.upstream_timeout_secs.unwrap_or(600)),
            log_format,
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .or_else(|| env_nonempty("RUST_LOG"))
                .unwrap_or_else(|| "info".to_owned()),
            allow_open: args.allow_open || file.allow_open.unwrap_or(false),
            cors_origins: env_nonempty("CCPROXY_CORS_ORIGINS")
                .map(|v| {
                    v.split(',')
                        .map(|o| o.trim().to_owned())
                        .filter(|o| !o.is_empty())
                        .collect()
                })
                .unwrap_or(file.cors_origins),
            max_concurrent_requests: file.max_concurrent_requests.unwrap_or(4096),
            stream_idle_timeout: Duration::from_secs(file.stream_idle_timeout_secs.unwrap_or(300)),
            shutdown_grace: Duration::from_secs(file.shutdown_grace_secs.unwrap_or(30)),
            retries: file.retries.unwrap_or(0).min(10),
            retry_429: file.retry_429.unwrap_or(false),
            retry_max_wait: Duration::from_secs(file.retry_max_wait_secs.unwrap_or(30)),
            usage_enabled: !args.no_usage && file.usage.unwrap_or(true),
            usage_db: args
                .usage_db
                .clone()
                .or(file.usage_db)
                .unwrap_or_else(|| data_dir().join("usage.db")),
            model_aliases: file.model_aliases,
            prices: file.prices,
            config_path,
            config_dir,
            home_dir: home_dir(),
        })
    }

    /// The upstream base URL as text (for display).
    pub fn upstream_display(&self) -> &str {
        match &self.upstream {
            UpstreamTarget::Url(u) => u,
            UpstreamTarget::Sim => "sim",
        }
    }

    /// The effective settings as TOML-like text, secrets masked.
    pub fn show(&self) -> String {
        let opt_secret = |s: &Option<Secret>| match s {
            Some(s) => format!("{:?}", s.masked()),
            None => "(not set)".to_owned(),
        };
        let mut out = String::new();
        let mut line = |k: &str, v: String| {
            out.push_str(&format!("{k:<22} = {v}\n"));
        };
        line(
            "config_file",
            format!("{:?}", self.config_path.display().to_string()),
        );
        line("host", format!("{:?}", self.host));
        line("port", self.port.to_string());
        line("upstream_url", format!("{:?}", self.upstream_display()));
        line("auth_token", opt_secret(&self.auth_token));
        line("api_key", opt_secret(&self.api_key));
        line(
            "credentials_file",
            match &self.credentials_file {
                Some(p) => format!("{:?}", p.display().to_string()),
                None => "(auto-discover)".to_owned(),
            },
        );
        line("oauth_token_url", format!("{:?}", self.oauth_token_url));
        line("oauth_client_id", format!("{:?}", self.oauth_client_id));
        line("refresh_skew_secs", self.refresh_skew.as_secs().to_string());
        line("max_body_bytes", self.max_body_bytes.to_string());
        line("cli_version", format!("{:?}", self.cli_version));
        line("default_max_tokens", self.default_max_tokens.to_string());
        line(
            "connect_timeout_secs",
            self.connect_timeout.as_secs().to_string(),
        );
        line(
            "upstream_timeout_secs",
            self.upstream_timeout.as_secs().to_string(),
        );
        line("log_format", format!("{:?}", self.log_format));
        line("log_level", format!("{:?}", self.log_level));
        line("allow_open", self.allow_open.to_string());
        line("cors_origins", format!("{:?}", self.cors_origins));
        line(
            "max_concurrent_requests",
            self.max_concurrent_requests.to_string(),
        );
        line(
            "stream_idle_timeout_secs",
            self.stream_idle_timeout.as_secs().to_string(),
        );
        line(
            "shutdown_grace_secs",
            self.shutdown_grace.as_secs().to_string(),
        );
        line("usage", self.usage_enabled.to_string());
        line(
            "usage_db",
            format!("{:?}", self.usage_db.display().to_string()),
        );
        if !self.model_aliases.is_empty() {
            out.push_str("\n[model_aliases]\n");
            for (k, v) in &self.model_aliases {
                out.push_str(&format!("{k:?} = {v:?}\n"));
            }
        }
        out
    }
}

fn parse_upstream(raw: &str) -> Result<UpstreamTarget, ConfigError> {
    if raw == "sim" {
        return Ok(UpstreamTarget::Sim);
    }
    let trimmed = raw.trim_end_matches('/');
    match reqwest::Url::parse(trimmed) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
            Ok(UpstreamTarget::Url(trimmed.to_owned()))
        }
        _ => Err(ConfigError::Invalid {
            name: "upstream_url",
            message: format!("{raw:?} is not an http(s) URL or `sim`"),
        }),
    }
}

/// The commented file that `ccproxy config init` writes.
pub const CONFIG_TEMPLATE: &str = r#"# ccproxy configuration.
# Precedence: command-line flag > environment variable > this file > default.

# Address and port to listen on (--host/--port, CCPROXY_HOST/CCPROXY_PORT).
# host = "127.0.0.1"
# port = 8000

# Upstream base URL (--upstream-url, CCPROXY_UPSTREAM_URL).
# "sim" runs the built-in simulated Anthropic upstream: no network, no account.
# upstream_url = "https://api.anthropic.com"

# Token that clients must present as x-api-key or Authorization: Bearer
# (--auth-token, CCPROXY_AUTH_TOKEN or AUTH_TOKEN). Unset: the proxy is open.
# auth_token = ""

# Server-side Anthropic API key, used when a client sends none (ANTHROPIC_API_KEY).
# api_key = "sk-ant-api03-..."

# Claude Code credentials file to use first (--credentials-file,
# CCPROXY_CREDENTIALS_FILE). Otherwise ccproxy's own store, then
# ~/.claude/.credentials.json and ~/.config/claude/.credentials.json are tried.
# credentials_file = "/home/me/.claude/.credentials.json"

# OAuth token endpoint and client id used to refresh subscription tokens
# (--oauth-token-url, CCPROXY_OAUTH_TOKEN_URL).
# oauth_token_url = "https://platform.claude.com/v1/oauth/token"
# oauth_client_id = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"

# Refresh subscription tokens this many seconds before they expire.
# refresh_skew_secs = 300

# Largest accepted request body in bytes (larger gets 413).
# max_body_bytes = 33554432

# Claude Code version that full mode identifies as (user-agent claude-cli/<v>).
# cli_version = "2.1.197"

# max_tokens for OpenAI requests that do not set one.
# default_max_tokens = 4096

# Seconds to wait for a TCP connection / for the upstream's response headers.
# connect_timeout_secs = 10
# upstream_timeout_secs = 600

# Logging: "pretty" or "json" (--log-format); level or RUST_LOG filter (--log-level).
# log_format = "pretty"
# log_level = "info"

# Listening on a non-loopback address without auth_token is refused unless
# this is true (--allow-open): anyone who can reach the port spends your account.
# allow_open = false

# Browser origins allowed to call ccproxy (CORS). Empty: browsers are refused.
# cors_origins = ["http://localhost:3000"]

# Requests served at once; more get 503 with retry-after (0 = unlimited).
# max_concurrent_requests = 4096

# Longest silence from the upstream in the middle of a stream before the client
# gets an error event and the stream ends.
# stream_idle_timeout_secs = 300

# On SIGTERM/SIGINT, how long in-flight requests and streams may take to finish.
# shutdown_grace_secs = 30

# Retries before any byte reaches the client: connection failures and 529
# (and 429 when retry_429 = true), with jittered exponential backoff that honours
# retry-after (up to retry_max_wait_secs). Never after bytes were sent, never for
# other 4xx. 0 (the default) sends exactly one upstream request per client request.
# retries = 0
# retry_429 = false
# retry_max_wait_secs = 30

# Usage and cost recording (`ccproxy usage`, /dashboard). --no-usage disables it.
# usage = true
# usage_db = "/home/me/.local/share/ccproxy/usage.db"

# Price overrides in USD per million tokens, by model-name prefix.
# [prices."claude-sonnet-4"]
# input = 3.0
# output = 15.0
# cache_write = 3.75
# cache_read = 0.30

# OpenAI model names mapped to Claude models (claude-* names always pass through).
[model_aliases]
# "gpt-4o" = "claude-sonnet-4-5"
# "gpt-4o-mini" = "claude-haiku-4-5"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_parses() {
        let f: FileConfig = toml::from_str(CONFIG_TEMPLATE).unwrap();
        assert!(f.model_aliases.is_empty());
    }

    #[test]
    fn flag_beats_file() {
        let file: FileConfig = toml::from_str("port = 9000\nhost = \"0.0.0.0\"").unwrap();
        let args = ServeArgs {
            port: Some(9100),
            ..ServeArgs::default()
        };
        let s = Settings::merge(&args, file, "x".into(), "d".into()).unwrap();
        assert_eq!(s.port, 9100);
        assert_eq!(s.host, "0.0.0.0");
    }

    #[test]
    fn unknown_key_is_rejected() {
        assert!(toml::from_str::<FileConfig>("prot = 1").is_err());
    }

    #[test]
    fn masks_secrets() {
        let m = mask("sk-ant-api03-abcdefghijklmnopqrstuvwxyz");
        assert_eq!(m, "sk-ant-api…wxyz");
        assert!(!mask("short").contains("short"));
    }

    #[test]
    fn upstream_parsing() {
        assert_eq!(parse_upstream("sim").unwrap(), UpstreamTarget::Sim);
        assert_eq!(
            parse_upstream("http://127.0.0.1:9/").unwrap(),
            UpstreamTarget::Url("http://127.0.0.1:9".into())
        );
        assert!(parse_upstream("ftp://x").is_err());
    }
}
