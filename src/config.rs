//! Effective settings: flag > environment > TOML file > default.
//!
//! clap already resolves "flag > environment" for each option; this module fills
//! what is still unset from the TOML file and then from defaults. The file keys
//! stay flat (`port = 8000`, `retries = 2`); in memory the settings are grouped
//! by concern, and each group's `Default` is the one place its defaults live.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum as _;
use serde::{Deserialize, Serialize};

use crate::cli::{CommonArgs, ServeArgs};
use crate::credentials::{
    CredentialsConfig, DEFAULT_CLIENT_ID, DEFAULT_REFRESH_SKEW, DEFAULT_TOKEN_URL,
};

pub use crate::cli::LogFormat;

pub const DEFAULT_UPSTREAM: &str = "https://api.anthropic.com";
/// The Claude Code version ccproxy identifies as in full mode (`user-agent`).
pub const DEFAULT_CLI_VERSION: &str = "2.1.197";
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;
/// 512 MiB: above the Files API's 500 MB per file and the 256 MB of a message batch.
pub const DEFAULT_MAX_UPLOAD: usize = 512 * 1024 * 1024;
/// The usage database's file name inside the data directory.
pub const USAGE_DB_FILE: &str = "usage.db";
/// The usage database of runs against the simulated upstream (`upstream_url =
/// "sim"`), beside the real one, so simulated traffic never counts as real usage.
pub const USAGE_SIM_DB_FILE: &str = "usage-sim.db";

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

/// One `[prices."<prefix>"]` table of the config file. Fields left out keep the
/// built-in price of the longest built-in prefix that matches `<prefix>`; for
/// a prefix with no built-in match, `input` and `output` are required and the
/// cache prices default to 1.25× (write) and 0.1× (read) the input price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    pub input: Option<f64>,
    pub output: Option<f64>,
    pub cache_write: Option<f64>,
    pub cache_read: Option<f64>,
    /// 1-hour cache writes (default: twice `input`).
    pub cache_write_1h: Option<f64>,
    /// Fast mode's multiplier of every rate (default: the built-in one, else none).
    pub fast_multiplier: Option<f64>,
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
    pub max_upload_bytes: Option<usize>,
    pub cli_version: Option<String>,
    pub default_max_tokens: Option<u32>,
    pub models_cache_secs: Option<u64>,
    pub openai_prompt_caching: Option<bool>,
    pub connect_timeout_secs: Option<u64>,
    pub upstream_timeout_secs: Option<u64>,
    pub upstream_h2c: Option<bool>,
    pub upstream_h2_max_streams: Option<usize>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub allow_open: Option<bool>,
    pub require_client_keys: Option<bool>,
    #[serde(default)]
    pub cors_origins: Vec<String>,
    pub max_concurrent_requests: Option<usize>,
    pub max_connections: Option<usize>,
    pub header_read_timeout_secs: Option<u64>,
    pub body_read_timeout_secs: Option<u64>,
    pub stream_idle_timeout_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub workers: Option<usize>,
    pub retries: Option<u32>,
    pub retry_429: Option<bool>,
    pub retry_max_wait_secs: Option<u64>,
    pub usage: Option<bool>,
    pub usage_db: Option<PathBuf>,
    /// `postgres://…` (shared by replicas) or `sqlite://PATH`.
    pub database_url: Option<String>,
    /// Seals the OAuth tokens kept in a shared database.
    pub database_secret: Option<String>,
    pub responses_ttl_secs: Option<u64>,
    #[serde(default)]
    pub model_aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub prices: BTreeMap<String, PriceOverride>,
    /// How requests are spread over the `[[credentials]]` pool.
    pub credential_routing: Option<String>,
    /// Never let a subscription serve from extra usage (default true; per credential too).
    pub plan_limits_only: Option<bool>,
    /// The upstream credential pool (`[[credentials]]`); empty: the implicit pool.
    #[serde(default)]
    pub credentials: Vec<CredentialEntry>,
}

/// One `[[credentials]]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialEntry {
    pub name: String,
    pub oauth_file: Option<PathBuf>,
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    pub modes: Option<Vec<String>>,
    pub models: Option<Vec<String>>,
    pub plan_limits_only: Option<bool>,
}

pub use crate::credentials::Routing;

/// Where a pool member's secret comes from.
#[derive(Debug, Clone)]
pub enum PoolSecret {
    /// A Claude Code credentials file (subscription OAuth tokens, refreshed in place).
    OAuthFile(PathBuf),
    ApiKey(Secret),
    /// An API key read from this environment variable when the server starts.
    ApiKeyEnv(String),
}

impl PoolSecret {
    /// The API key, for the key kinds (`Err` names an unset variable).
    pub fn api_key(&self) -> Option<Result<Secret, String>> {
        match self {
            PoolSecret::OAuthFile(_) => None,
            PoolSecret::ApiKey(k) => Some(Ok(k.clone())),
            PoolSecret::ApiKeyEnv(var) => Some(
                env_nonempty(var)
                    .map(|k| Secret::new(k.trim()))
                    .ok_or_else(|| {
                        format!("the environment variable {var} (api_key_env) is not set")
                    }),
            ),
        }
    }
}

/// One configured upstream credential.
#[derive(Debug, Clone)]
pub struct PoolEntry {
    pub name: String,
    pub secret: PoolSecret,
    /// The modes that may use it (OAuth: full only).
    pub modes: Vec<crate::routes::Mode>,
    /// Model patterns it may serve (`*` matches any run); empty: all.
    pub models: Vec<String>,
    pub plan_limits_only: bool,
}

/// All effective settings, grouped by concern.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub credentials: CredentialSettings,
    pub limits: Limits,
    pub retries: RetrySettings,
    pub logging: LogSettings,
    pub usage: UsageSettings,
    pub responses: ResponsesSettings,
    /// OpenAI model names mapped to Claude models.
    pub model_aliases: BTreeMap<String, String>,
    /// Price overrides by model-name prefix.
    pub prices: BTreeMap<String, PriceOverride>,
    pub paths: Paths,
}

/// The listening socket and who may use it.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// The proxy token clients must present.
    pub auth_token: Option<Secret>,
    /// Listen on a non-loopback address without a proxy token.
    pub allow_open: bool,
    /// Browser origins allowed to call the proxy (CORS allow-list).
    pub cors_origins: Vec<String>,
    /// Every proxied request needs a client key (or the proxy token), even before any
    /// key exists (with keys, this is always so).
    pub require_client_keys: bool,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// Threads that serve client connections, each with a runtime of its own (0: one per core;
    /// see `server::workers`).
    pub workers: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: "127.0.0.1".to_owned(),
            port: 8000,
            auth_token: None,
            allow_open: false,
            cors_origins: Vec::new(),
            require_client_keys: false,
            shutdown_grace: Duration::from_secs(30),
            workers: 0,
        }
    }
}

/// The upstream and how requests to it are made.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub target: UpstreamTarget,
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers.
    pub timeout: Duration,
    /// Longest silence tolerated from the upstream in the middle of a stream.
    pub stream_idle_timeout: Duration,
    /// The Claude Code version full mode identifies as.
    pub cli_version: String,
    /// `max_tokens` for OpenAI requests that do not set one.
    pub default_max_tokens: u32,
    /// How long the upstream's model list is served from the cache (`models_cache_secs`).
    pub models_cache: Duration,
    /// Automatic prompt caching for OpenAI-dialect requests (`openai_prompt_caching`).
    pub openai_prompt_caching: bool,
    /// HTTP/2 with prior knowledge (h2c) to an `http://` upstream: one connection carries many
    /// requests (an `https://` upstream negotiates HTTP/2 by ALPN regardless).
    pub h2c: bool,
    /// Most requests in flight on one HTTP/2 upstream connection (`upstream_h2_max_streams`), or
    /// fewer if the server announces fewer: past it, another connection is opened instead of
    /// queueing behind streams that may last minutes.
    pub h2_max_streams: usize,
}

/// RFC 9113 §6.5.2 recommends that a server allow at least this many concurrent streams.
pub const DEFAULT_H2_MAX_STREAMS: usize = 100;

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            target: UpstreamTarget::Url(DEFAULT_UPSTREAM.to_owned()),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(300),
            cli_version: DEFAULT_CLI_VERSION.to_owned(),
            default_max_tokens: 4096,
            models_cache: Duration::from_secs(3600),
            openai_prompt_caching: true,
            h2c: false,
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
        }
    }
}

/// Server-side credentials: an API key, or a Claude subscription's OAuth tokens.
#[derive(Debug, Clone)]
pub struct CredentialSettings {
    pub api_key: Option<Secret>,
    pub credentials_file: Option<PathBuf>,
    pub oauth_token_url: String,
    pub oauth_client_id: String,
    pub refresh_skew: Duration,
    /// The `[[credentials]]` pool, in order; empty: the implicit pool (the discovered
    /// subscription, then `api_key`).
    pub pool: Vec<PoolEntry>,
    pub routing: Routing,
    /// The default of each credential's `plan_limits_only`.
    pub plan_limits_only: bool,
}

impl Default for CredentialSettings {
    fn default() -> Self {
        CredentialSettings {
            api_key: None,
            credentials_file: None,
            oauth_token_url: DEFAULT_TOKEN_URL.to_owned(),
            oauth_client_id: DEFAULT_CLIENT_ID.to_owned(),
            refresh_skew: DEFAULT_REFRESH_SKEW,
            pool: Vec::new(),
            routing: Routing::Priority,
            plan_limits_only: true,
        }
    }
}

/// The most serving threads `workers` may ask for.
pub const MAX_WORKERS: usize = 1024;

/// Bounds on what one request and the whole server may take.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Largest body streamed through a relay route (Files uploads, large batches): such
    /// bodies are never held whole, so they are bounded by this, not `max_body_bytes`.
    pub max_upload_bytes: usize,
    /// Requests served at once; more get 503 with `retry-after` (0 = unlimited).
    pub max_concurrent_requests: usize,
    /// Client connections open at once; more are closed at once (0 = unlimited).
    pub max_connections: usize,
    /// The longest a connection may wait for a complete request head: a client
    /// sending it slowly, or idling between keep-alive requests, is disconnected.
    pub header_read_timeout: Duration,
    /// The longest a request body may stall (no bytes) before the request fails with 408.
    pub body_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY,
            max_upload_bytes: DEFAULT_MAX_UPLOAD,
            max_concurrent_requests: 4096,
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Retries before the first byte reaches the client (connection failures, 529,
/// and 429 when `on_429`); `max_retries = 0` = one upstream request per client request.
#[derive(Debug, Clone)]
pub struct RetrySettings {
    pub max_retries: u32,
    pub on_429: bool,
    /// A `retry-after` longer than this is not waited for: the error goes to the client.
    pub max_wait: Duration,
}

impl RetrySettings {
    /// The most retries the configuration may ask for.
    pub const CAP: u32 = 10;
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            max_retries: 0,
            on_429: false,
            max_wait: Duration::from_secs(30),
        }
    }
}

/// Log output.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A level or an `EnvFilter` directive (RUST_LOG syntax).
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

/// Usage recording.
#[derive(Debug, Clone)]
pub struct UsageSettings {
    /// Record usage in the store.
    pub enabled: bool,
    /// The SQLite file (the store without `database_url = "postgres://…"`).
    pub db: PathBuf,
    /// `database_url = "postgres://…"` (`CCPROXY_DATABASE_URL`): the shared store instead.
    pub postgres: Option<crate::db::PgUrl>,
    /// `database_secret` (`CCPROXY_DATABASE_SECRET`): seals OAuth tokens shared in PostgreSQL.
    pub secret: Option<Secret>,
}

impl UsageSettings {
    /// The store in effect.
    pub fn database(&self) -> crate::db::Database {
        match &self.postgres {
            Some(u) => crate::db::Database::Postgres(u.clone()),
            None => crate::db::Database::Sqlite(self.db.clone()),
        }
    }
}

impl Default for UsageSettings {
    fn default() -> Self {
        UsageSettings {
            enabled: true,
            db: data_dir().join(USAGE_DB_FILE),
            postgres: None,
            secret: None,
        }
    }
}

/// The Responses API store (kept in the usage database; in memory without it).
#[derive(Debug, Clone)]
pub struct ResponsesSettings {
    /// How long a stored response is kept (`responses_ttl_secs`).
    pub ttl: Duration,
}

/// Thirty days, as OpenAI keeps responses.
pub const DEFAULT_RESPONSES_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for ResponsesSettings {
    fn default() -> Self {
        ResponsesSettings {
            ttl: DEFAULT_RESPONSES_TTL,
        }
    }
}

impl ResponsesSettings {
    fn merge(file: &FileConfig) -> Result<Self, ConfigError> {
        let ttl = match file.responses_ttl_secs {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    name: "responses_ttl_secs",
                    message: "must be greater than 0 (send store: false to keep nothing)".into(),
                });
            }
            Some(n) => Duration::from_secs(n),
            None => DEFAULT_RESPONSES_TTL,
        };
        Ok(ResponsesSettings { ttl })
    }

    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![("responses_ttl_secs", self.ttl.as_secs().to_string())]
    }
}

/// Where ccproxy's files are.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// The configuration file that was (or would be) read.
    pub config_file: PathBuf,
    /// ccproxy's own configuration directory (own credentials store lives here).
    pub config_dir: PathBuf,
    pub home_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is the `source` (printed once by whoever prints the chain), never in the message.
    #[error("cannot read config file {path}")]
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
    xdg_dir("XDG_CONFIG_HOME", ".config")
}

/// `$XDG_DATA_HOME/ccproxy`, else `~/.local/share/ccproxy`.
pub fn data_dir() -> PathBuf {
    xdg_dir("XDG_DATA_HOME", ".local/share")
}

fn xdg_dir(var: &str, under_home: &str) -> PathBuf {
    let base = env_nonempty(var)
        .map(PathBuf::from)
        .or_else(|| home_dir().map(|h| h.join(under_home)))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("ccproxy")
}

/// The configuration file: `--config` / `CCPROXY_CONFIG` (explicit: `true`), else
/// `config.toml` in [`config_dir`]. Nothing is read.
pub fn config_file_path(common: &CommonArgs) -> (PathBuf, bool) {
    match &common.config {
        Some(p) => (p.clone(), true),
        None => (config_dir().join("config.toml"), false),
    }
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

fn secs(v: Option<u64>, default: Duration) -> Duration {
    v.map_or(default, Duration::from_secs)
}

fn secret(v: Option<String>) -> Option<Secret> {
    v.filter(|t| !t.is_empty()).map(Secret::new)
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
        let (config_file, explicit) = config_file_path(&args.common);
        let file = read_file_config(&config_file, explicit)?;
        let paths = Paths {
            config_file,
            config_dir: config_dir(),
            home_dir: home_dir(),
        };
        Self::merge(args, file, paths)
    }

    /// Fills each group from the flags (clap has already applied the
    /// environment), then the file, then the group's defaults.
    fn merge(
        args: &ServeArgs,
        mut file: FileConfig,
        paths: Paths,
    ) -> Result<Settings, ConfigError> {
        let upstream = UpstreamSettings::merge(args, &mut file)?;
        let server = ServerSettings::merge(args, &mut file);
        if server.workers > MAX_WORKERS {
            return Err(ConfigError::Invalid {
                name: "workers",
                message: format!(
                    "{} serving threads asked for; at most {MAX_WORKERS} (0 = one per CPU core)",
                    server.workers
                ),
            });
        }
        Ok(Settings {
            server,
            logging: LogSettings::merge(args, &mut file)?,
            limits: Limits::merge(&file)?,
            credentials: CredentialSettings::merge(args, &mut file, &paths)?,
            retries: RetrySettings::merge(&file),
            usage: UsageSettings::merge(args, &mut file, &upstream.target)?,
            responses: ResponsesSettings::merge(&file)?,
            upstream,
            model_aliases: std::mem::take(&mut file.model_aliases),
            prices: std::mem::take(&mut file.prices),
            paths,
        })
    }

    /// The upstream base URL as text (for display).
    pub fn upstream_display(&self) -> &str {
        match &self.upstream.target {
            UpstreamTarget::Url(u) => u,
            UpstreamTarget::Sim => "sim",
        }
    }

    /// The credentials configuration implied by the settings.
    pub fn credentials_config(&self) -> CredentialsConfig {
        let mut cfg = CredentialsConfig::new(
            self.paths.config_dir.join("credentials.json"),
            self.paths.home_dir.clone(),
        );
        let c = &self.credentials;
        cfg.credentials_file = c.credentials_file.clone();
        cfg.token_url = c.oauth_token_url.clone();
        cfg.client_id = c.oauth_client_id.clone();
        cfg.refresh_skew = c.refresh_skew;
        cfg
    }
}

impl ServerSettings {
    /// The threads that serve client connections: `workers`, or one per core when it is 0.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(MAX_WORKERS),
            n => n,
        }
    }

    fn merge(args: &ServeArgs, file: &mut FileConfig) -> Self {
        let d = Self::default();
        ServerSettings {
            host: args.host.clone().or(file.host.take()).unwrap_or(d.host),
            port: args.port.or(file.port).unwrap_or(d.port),
            auth_token: secret(
                args.auth_token
                    .clone()
                    .or_else(|| env_nonempty("AUTH_TOKEN"))
                    .or(file.auth_token.take()),
            ),
            allow_open: args.allow_open || file.allow_open.unwrap_or(d.allow_open),
            cors_origins: env_nonempty("CCPROXY_CORS_ORIGINS")
                .map(|v| split_list(&v))
                .unwrap_or_else(|| std::mem::take(&mut file.cors_origins)),
            require_client_keys: file.require_client_keys.unwrap_or(d.require_client_keys),
            shutdown_grace: secs(file.shutdown_grace_secs, d.shutdown_grace),
            workers: file.workers.unwrap_or(d.workers),
        }
    }
}

/// `a, b,,c` → `["a", "b", "c"]`.
fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

impl UpstreamSettings {
    fn merge(args: &ServeArgs, file: &mut FileConfig) -> Result<Self, ConfigError> {
        let d = Self::default();
        let target = match args.upstream_url.clone().or(file.upstream_url.take()) {
            Some(raw) => parse_upstream(&raw)?,
            None => d.target,
        };
        Ok(UpstreamSettings {
            target,
            connect_timeout: secs(file.connect_timeout_secs, d.connect_timeout),
            timeout: secs(file.upstream_timeout_secs, d.timeout),
            stream_idle_timeout: secs(file.stream_idle_timeout_secs, d.stream_idle_timeout),
            cli_version: file.cli_version.take().unwrap_or(d.cli_version),
            default_max_tokens: file.default_max_tokens.unwrap_or(d.default_max_tokens),
            models_cache: secs(file.models_cache_secs, d.models_cache),
            openai_prompt_caching: file
                .openai_prompt_caching
                .unwrap_or(d.openai_prompt_caching),
            h2c: file.upstream_h2c.unwrap_or(d.h2c),
            h2_max_streams: match file.upstream_h2_max_streams {
                Some(0) => {
                    return Err(ConfigError::Invalid {
                        name: "upstream_h2_max_streams",
                        message: "must be greater than 0".into(),
                    });
                }
                Some(n) => n,
                None => d.h2_max_streams,
            },
        })
    }
}

impl CredentialSettings {
    fn merge(args: &ServeArgs, file: &mut FileConfig, paths: &Paths) -> Result<Self, ConfigError> {
        let d = Self::default();
        let plan_limits_only = file.plan_limits_only.unwrap_or(d.plan_limits_only);
        let routing = match file.credential_routing.as_deref() {
            None | Some("priority") => Routing::Priority,
            Some("round-robin") => Routing::RoundRobin,
            Some("least-loaded") => Routing::LeastLoaded,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "credential_routing",
                    message: format!(
                        "{other:?} is not one of \"priority\", \"round-robin\", \"least-loaded\""
                    ),
                });
            }
        };
        let pool = pool_entries(
            std::mem::take(&mut file.credentials),
            plan_limits_only,
            paths,
        )?;
        Ok(CredentialSettings {
            api_key: secret(env_nonempty("ANTHROPIC_API_KEY").or(file.api_key.take())),
            credentials_file: args
                .common
                .credentials_file
                .clone()
                .or(file.credentials_file.take()),
            oauth_token_url: args
                .common
                .oauth_token_url
                .clone()
                .or(file.oauth_token_url.take())
                .unwrap_or(d.oauth_token_url),
            oauth_client_id: env_nonempty("CCPROXY_OAUTH_CLIENT_ID")
                .or(file.oauth_client_id.take())
                .unwrap_or(d.oauth_client_id),
            refresh_skew: secs(file.refresh_skew_secs, d.refresh_skew),
            pool,
            routing,
            plan_limits_only,
        })
    }
}

/// Replaces the pool settings (`[[credentials]]`, `credential_routing`, `plan_limits_only`) with
/// the file's (a reload); the rest of the settings stay as the server started with them.
pub fn apply_pool_settings(
    settings: &mut Settings,
    mut file: FileConfig,
) -> Result<(), ConfigError> {
    let c = CredentialSettings::merge(&ServeArgs::default(), &mut file, &settings.paths)?;
    settings.credentials.pool = c.pool;
    settings.credentials.routing = c.routing;
    settings.credentials.plan_limits_only = c.plan_limits_only;
    Ok(())
}

/// Checks and resolves the `[[credentials]]` tables: unique names, exactly one secret source
/// (an `api_key_env` must be set), known modes (OAuth: full only).
fn pool_entries(
    entries: Vec<CredentialEntry>,
    plan_limits_only: bool,
    paths: &Paths,
) -> Result<Vec<PoolEntry>, ConfigError> {
    use crate::routes::Mode;
    let invalid = |message: String| ConfigError::Invalid {
        name: "credentials",
        message,
    };
    let mut out: Vec<PoolEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        let name = e.name.trim().to_owned();
        if name.is_empty() || name.chars().any(|c| c.is_control() || c == '"') {
            return Err(invalid(format!(
                "credential name {:?} must be non-empty printable text",
                e.name
            )));
        }
        if out.iter().any(|p| p.name == name) {
            return Err(invalid(format!(
                "two credentials are named {name:?}: names are unique"
            )));
        }
        let secret = match (e.oauth_file, e.api_key, e.api_key_env) {
            (Some(f), None, None) => PoolSecret::OAuthFile(expand_home(&f, paths)),
            (None, Some(k), None) if !k.trim().is_empty() => {
                PoolSecret::ApiKey(Secret::new(k.trim()))
            }
            (None, None, Some(var)) if !var.trim().is_empty() => PoolSecret::ApiKeyEnv(var),
            _ => {
                return Err(invalid(format!(
                    "credential {name:?} needs exactly one of oauth_file, api_key, api_key_env"
                )));
            }
        };
        let oauth = matches!(secret, PoolSecret::OAuthFile(_));
        let modes = match e.modes {
            None if oauth => vec![Mode::Full],
            None => vec![Mode::Full, Mode::Minimal, Mode::Passthrough],
            Some(list) => {
                let mut modes = Vec::new();
                for m in &list {
                    let mode = match m.as_str() {
                        "full" => Mode::Full,
                        "min" | "minimal" => Mode::Minimal,
                        "pt" | "passthrough" => Mode::Passthrough,
                        other => {
                            return Err(invalid(format!(
                                "credential {name:?}: unknown mode {other:?} (full, min, pt)"
                            )));
                        }
                    };
                    if oauth && mode != Mode::Full {
                        return Err(invalid(format!(
                            "credential {name:?}: subscription (OAuth) credentials serve full mode only"
                        )));
                    }
                    if !modes.contains(&mode) {
                        modes.push(mode);
                    }
                }
                modes
            }
        };
        out.push(PoolEntry {
            name,
            secret,
            modes,
            models: e.models.unwrap_or_default(),
            plan_limits_only: e.plan_limits_only.unwrap_or(plan_limits_only),
        });
    }
    Ok(out)
}

/// `~/x` relative to the home directory.
fn expand_home(p: &Path, paths: &Paths) -> PathBuf {
    match (p.strip_prefix("~"), &paths.home_dir) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p.to_owned(),
    }
}

impl Limits {
    fn merge(file: &FileConfig) -> Result<Self, ConfigError> {
        let d = Self::default();
        let max_body_bytes = file.max_body_bytes.unwrap_or(d.max_body_bytes);
        if max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                name: "max_body_bytes",
                message: "must be greater than 0".into(),
            });
        }
        let secs = |v: Option<u64>, name: &'static str, default: Duration| match v {
            Some(0) => Err(ConfigError::Invalid {
                name,
                message: "must be greater than 0".into(),
            }),
            Some(n) => Ok(Duration::from_secs(n)),
            None => Ok(default),
        };
        let max_upload_bytes = file.max_upload_bytes.unwrap_or(d.max_upload_bytes);
        if max_upload_bytes == 0 {
            return Err(ConfigError::Invalid {
                name: "max_upload_bytes",
                message: "must be greater than 0".into(),
            });
        }
        Ok(Limits {
            max_body_bytes,
            max_upload_bytes,
            max_concurrent_requests: file
                .max_concurrent_requests
                .unwrap_or(d.max_concurrent_requests),
            max_connections: file.max_connections.unwrap_or(d.max_connections),
            header_read_timeout: secs(
                file.header_read_timeout_secs,
                "header_read_timeout_secs",
                d.header_read_timeout,
            )?,
            body_read_timeout: secs(
                file.body_read_timeout_secs,
                "body_read_timeout_secs",
                d.body_read_timeout,
            )?,
        })
    }
}

impl RetrySettings {
    fn merge(file: &FileConfig) -> Self {
        let d = Self::default();
        RetrySettings {
            max_retries: file.retries.unwrap_or(d.max_retries).min(Self::CAP),
            on_429: file.retry_429.unwrap_or(d.on_429),
            max_wait: secs(file.retry_max_wait_secs, d.max_wait),
        }
    }
}

impl LogSettings {
    fn merge(args: &ServeArgs, file: &mut FileConfig) -> Result<Self, ConfigError> {
        let d = Self::default();
        let format = match (args.log_format, file.log_format.take()) {
            (Some(f), _) => f,
            (None, Some(s)) => {
                LogFormat::from_str(&s, false).map_err(|_| ConfigError::Invalid {
                    name: "log_format",
                    message: format!("{s:?} (expected pretty or json)"),
                })?
            }
            (None, None) => d.format,
        };
        Ok(LogSettings {
            format,
            level: args
                .log_level
                .clone()
                .or(file.log_level.take())
                .or_else(|| env_nonempty("RUST_LOG"))
                .unwrap_or(d.level),
        })
    }
}

impl UsageSettings {
    /// Without an explicit `usage_db`, runs against the simulated upstream
    /// record into [`USAGE_SIM_DB_FILE`] beside the default database.
    /// `database_url` (`CCPROXY_DATABASE_URL`, else the file) chooses the store: `sqlite://PATH`
    /// is the same as `usage_db = PATH`.
    fn merge(
        args: &ServeArgs,
        file: &mut FileConfig,
        upstream: &UpstreamTarget,
    ) -> Result<Self, ConfigError> {
        let d = Self::default();
        let default_db = match upstream {
            UpstreamTarget::Sim => d.db.with_file_name(USAGE_SIM_DB_FILE),
            UpstreamTarget::Url(_) => d.db,
        };
        let mut db = args
            .usage_db
            .clone()
            .or(file.usage_db.take())
            .unwrap_or(default_db);
        let mut postgres = None;
        let url = env_nonempty("CCPROXY_DATABASE_URL").or(file.database_url.take());
        if let Some(url) = url {
            match crate::db::Database::parse(&url) {
                Ok(crate::db::Database::Sqlite(p)) => db = p,
                Ok(crate::db::Database::Postgres(u)) => postgres = Some(u),
                Err(message) => {
                    return Err(ConfigError::Invalid {
                        name: "database_url",
                        message,
                    });
                }
            }
        }
        let secret = env_nonempty("CCPROXY_DATABASE_SECRET")
            .or(file.database_secret.take())
            .map(Secret::new);
        Ok(UsageSettings {
            enabled: !args.no_usage && file.usage.unwrap_or(d.enabled),
            db,
            postgres,
            secret,
        })
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn quoted_path(p: &Path) -> String {
    quoted(&p.display().to_string())
}

fn shown_secret(s: &Option<Secret>) -> String {
    match s {
        Some(s) => quoted(&s.masked()),
        None => "(not set)".to_owned(),
    }
}

impl Settings {
    /// Every effective setting as `(file key, value)`, values in TOML-like form, secrets masked.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("config_file", quoted_path(&self.paths.config_file))];
        v.extend(self.server.entries());
        v.push(("upstream_url", quoted(self.upstream_display())));
        v.extend(self.upstream.entries());
        v.extend(self.credentials.entries());
        v.extend(self.limits.entries());
        v.extend(self.retries.entries());
        v.extend(self.logging.entries());
        v.extend(self.usage.entries());
        v.extend(self.responses.entries());
        v
    }

    /// The effective settings as aligned TOML-like text, secrets masked.
    pub fn show(&self) -> String {
        let entries = self.entries();
        let width = entries.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &entries {
            out.push_str(&format!("{k:<width$} = {v}\n"));
        }
        if !self.model_aliases.is_empty() {
            out.push_str("\n[model_aliases]\n");
            for (k, v) in &self.model_aliases {
                out.push_str(&format!("{k:?} = {v:?}\n"));
            }
        }
        for (prefix, p) in &self.prices {
            out.push_str(&format!("\n[prices.{prefix:?}]\n"));
            let fields = [
                ("input", p.input),
                ("output", p.output),
                ("cache_write", p.cache_write),
                ("cache_read", p.cache_read),
                ("cache_write_1h", p.cache_write_1h),
                ("fast_multiplier", p.fast_multiplier),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    out.push_str(&format!("{k:<15} = {v}\n"));
                }
            }
        }
        out
    }
}

impl ServerSettings {
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("host", quoted(&self.host)),
            ("port", self.port.to_string()),
            ("auth_token", shown_secret(&self.auth_token)),
            ("allow_open", self.allow_open.to_string()),
            ("cors_origins", format!("{:?}", self.cors_origins)),
            ("require_client_keys", self.require_client_keys.to_string()),
            (
                "shutdown_grace_secs",
                self.shutdown_grace.as_secs().to_string(),
            ),
            ("workers", self.workers.to_string()),
        ]
    }
}

impl UpstreamSettings {
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "connect_timeout_secs",
                self.connect_timeout.as_secs().to_string(),
            ),
            ("upstream_timeout_secs", self.timeout.as_secs().to_string()),
            ("upstream_h2c", self.h2c.to_string()),
            ("upstream_h2_max_streams", self.h2_max_streams.to_string()),
            (
                "stream_idle_timeout_secs",
                self.stream_idle_timeout.as_secs().to_string(),
            ),
            ("cli_version", quoted(&self.cli_version)),
            ("default_max_tokens", self.default_max_tokens.to_string()),
            ("models_cache_secs", self.models_cache.as_secs().to_string()),
            (
                "openai_prompt_caching",
                self.openai_prompt_caching.to_string(),
            ),
        ]
    }
}

impl CredentialSettings {
    fn entries(&self) -> Vec<(&'static str, String)> {
        let file = match &self.credentials_file {
            Some(p) => quoted_path(p),
            None => "(auto-discover)".to_owned(),
        };
        vec![
            ("api_key", shown_secret(&self.api_key)),
            ("credentials_file", file),
            ("oauth_token_url", quoted(&self.oauth_token_url)),
            ("oauth_client_id", quoted(&self.oauth_client_id)),
            ("refresh_skew_secs", self.refresh_skew.as_secs().to_string()),
            ("credential_routing", quoted(self.routing.name())),
            ("plan_limits_only", self.plan_limits_only.to_string()),
            ("credentials", self.pool_summary()),
        ]
    }

    /// The pool, one `name (kind, modes)` per credential, secrets masked.
    fn pool_summary(&self) -> String {
        if self.pool.is_empty() {
            return "(implicit: the discovered subscription, then api_key)".to_owned();
        }
        let items: Vec<String> = self
            .pool
            .iter()
            .map(|e| {
                let kind = match &e.secret {
                    PoolSecret::OAuthFile(p) => format!("oauth {}", p.display()),
                    PoolSecret::ApiKey(k) => format!("api key {}", k.masked()),
                    PoolSecret::ApiKeyEnv(var) => match self::env_nonempty(var) {
                        Some(k) => format!("api key ${var} = {}", Secret::new(k).masked()),
                        None => format!("api key ${var}, not set"),
                    },
                };
                let modes: Vec<&str> = e.modes.iter().map(|m| m.name()).collect();
                let models = if e.models.is_empty() {
                    String::new()
                } else {
                    format!("; models {}", e.models.join(","))
                };
                format!("{} ({kind}; {}{models})", e.name, modes.join(","))
            })
            .collect();
        format!("[{}]", items.join(", "))
    }
}

impl Limits {
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("max_body_bytes", self.max_body_bytes.to_string()),
            ("max_upload_bytes", self.max_upload_bytes.to_string()),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests.to_string(),
            ),
            ("max_connections", self.max_connections.to_string()),
            (
                "header_read_timeout_secs",
                self.header_read_timeout.as_secs().to_string(),
            ),
            (
                "body_read_timeout_secs",
                self.body_read_timeout.as_secs().to_string(),
            ),
        ]
    }
}

impl RetrySettings {
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("retries", self.max_retries.to_string()),
            ("retry_429", self.on_429.to_string()),
            ("retry_max_wait_secs", self.max_wait.as_secs().to_string()),
        ]
    }
}

impl LogSettings {
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("log_format", quoted(self.format.as_str())),
            ("log_level", quoted(&self.level)),
        ]
    }
}

impl UsageSettings {
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("usage", self.enabled.to_string()),
            ("usage_db", quoted_path(&self.db)),
            (
                "database_url",
                self.postgres
                    .as_ref()
                    .map_or_else(|| "(not set)".to_owned(), |u| quoted(&u.to_string())),
            ),
            ("database_secret", shown_secret(&self.secret)),
        ]
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

# Largest body streamed through the other /v1/* routes (Files uploads, Skills, large
# message batches): these are relayed as they arrive, never held whole (413 past it).
# max_upload_bytes = 536870912

# Claude Code version that full mode identifies as (user-agent claude-cli/<v>).
# cli_version = "2.1.197"

# max_tokens for OpenAI requests that do not set one.
# default_max_tokens = 4096

# OpenAI clients cannot place cache breakpoints: their converted requests ask for automatic
# prompt caching (a top-level cache_control) unless they carry their own cache_control.
# openai_prompt_caching = true

# /v1/models and /openai/v1/models (full and minimal mode) serve the upstream's list from a cache
# this long; `ccproxy models refresh` fetches it again now.
# models_cache_secs = 3600

# Seconds to wait for a TCP connection / for the upstream's response headers.
# connect_timeout_secs = 10
# upstream_timeout_secs = 600

# HTTP/2 with prior knowledge (h2c) to an http:// upstream (a local upstream that speaks it):
# one connection carries many requests. An https:// upstream negotiates HTTP/2 by itself.
# upstream_h2c = false

# Most requests in flight on one HTTP/2 upstream connection; past it ccproxy opens another
# connection rather than queue requests behind streams that can last minutes. A server that
# announces a lower limit (SETTINGS_MAX_CONCURRENT_STREAMS) gets its own.
# upstream_h2_max_streams = 100

# Logging: "pretty" or "json" (--log-format); level or RUST_LOG filter (--log-level).
# log_format = "pretty"
# log_level = "info"

# Listening on a non-loopback address without auth_token is refused unless
# this is true (--allow-open): anyone who can reach the port spends your account.
# allow_open = false

# Browser origins allowed to call ccproxy (CORS). Empty: browsers are refused.
# cors_origins = ["http://localhost:3000"]

# Client keys (`ccproxy keys create NAME`): once one exists, every proxied request
# needs a client key (ccp-…) or the proxy token, which becomes the admin token
# (/api/keys, /api/usage, /metrics, the dashboard). true: require keys even before
# the first one exists.
# require_client_keys = false

# Requests served at once; more get 503 with retry-after (0 = unlimited).
# max_concurrent_requests = 4096

# Client connections open at once; more are closed at once (0 = unlimited).
# The soft open-file limit is raised to the hard limit at startup.
# max_connections = 16384

# Slow or idle clients: a request head must arrive complete within
# header_read_timeout_secs of the moment the connection waits for it (this is
# also how long an idle keep-alive connection stays open); a request body that
# sends nothing for body_read_timeout_secs fails with 408.
# header_read_timeout_secs = 30
# body_read_timeout_secs = 30

# Longest silence from the upstream in the middle of a stream before the client
# gets an error event and the stream ends.
# stream_idle_timeout_secs = 300

# On SIGTERM/SIGINT, how long in-flight requests and streams may take to finish.
# shutdown_grace_secs = 30

# Threads that serve client connections, each with its own async runtime: a
# connection, its requests and their upstream connections stay on one thread
# (0 = one per CPU core).
# workers = 0

# Retries before any byte reaches the client: connection failures and 529
# (and 429 when retry_429 = true), with jittered exponential backoff that honours
# retry-after (up to retry_max_wait_secs). Never after bytes were sent, never for
# other 4xx. 0 (the default) sends exactly one upstream request per client request.
# retries = 0
# retry_429 = false
# retry_max_wait_secs = 30

# Usage and cost recording (`ccproxy usage`, /dashboard). --no-usage disables it.
# With upstream_url = "sim" the default database is usage-sim.db beside usage.db.
# usage = true
# usage_db = "/home/me/.local/share/ccproxy/usage.db"

# Shared state for several replicas (usage, client keys, stored responses, budgets, rate
# limits, credential state, the OAuth refresh): database_url = "postgres://user:pw@host/db"
# (CCPROXY_DATABASE_URL). "sqlite://PATH" is the same as usage_db = PATH. database_secret
# (CCPROXY_DATABASE_SECRET) seals the OAuth tokens shared through PostgreSQL; without it,
# refreshed tokens stay in each replica's credentials file only.
# database_url = "postgres://ccproxy@db.internal/ccproxy"
# database_secret = "a long random string, the same on every replica"

# Stored Responses API responses (previous_response_id, GET /openai/v1/responses/{id}) are
# kept in the usage database for this long (in memory, the last 1000, without it).
# responses_ttl_secs = 2592000

# Several upstream credentials (README "Several credentials"). Without [[credentials]] tables the
# pool is the discovered subscription, then api_key. `kill -HUP` reloads them.
# credential_routing = "priority"   # priority | round-robin | least-loaded
# plan_limits_only = true           # never let a subscription serve from extra usage
#
# [[credentials]]
# name = "me"
# oauth_file = "~/.claude/.credentials.json"   # or api_key = "sk-ant-api…", or api_key_env = "VAR"
# modes = ["full"]
# models = ["claude-sonnet-*"]

# Price overrides in USD per million tokens, by model-name prefix (cache_write: 5-minute writes;
# cache_write_1h defaults to twice input; built-in long-context rates are kept).
# [prices."claude-sonnet-4"]
# input = 3.0
# output = 15.0
# cache_write = 3.75
# cache_read = 0.30
# cache_write_1h = 6.0
# fast_multiplier = 2.0     # fast mode (usage.speed = "fast"): every rate times this

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
        let s = Settings::merge(&args, file, Paths::default()).unwrap();
        assert_eq!(s.server.port, 9100);
        assert_eq!(s.server.host, "0.0.0.0");
    }

    #[test]
    fn defaults_come_from_each_group() {
        let s = Settings::merge(
            &ServeArgs::default(),
            FileConfig::default(),
            Paths::default(),
        )
        .unwrap();
        assert_eq!(s.server.port, ServerSettings::default().port);
        assert_eq!(s.upstream.target, UpstreamSettings::default().target);
        assert_eq!(s.limits.max_body_bytes, DEFAULT_MAX_BODY);
        assert_eq!(s.retries.max_retries, 0);
        assert_eq!(s.logging.format, LogFormat::Pretty);
        assert_eq!(s.credentials.oauth_token_url, DEFAULT_TOKEN_URL);
        assert_eq!(s.credentials.refresh_skew, DEFAULT_REFRESH_SKEW);
    }

    #[test]
    fn file_values_are_checked_and_capped() {
        let file: FileConfig = toml::from_str("retries = 99\nlog_format = \"json\"").unwrap();
        let s = Settings::merge(&ServeArgs::default(), file, Paths::default()).unwrap();
        assert_eq!(s.retries.max_retries, RetrySettings::CAP);
        assert_eq!(s.logging.format, LogFormat::Json);
        let file: FileConfig = toml::from_str("log_format = \"xml\"").unwrap();
        let err = Settings::merge(&ServeArgs::default(), file, Paths::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid setting log_format: \"xml\" (expected pretty or json)"
        );
        let file: FileConfig = toml::from_str("max_body_bytes = 0").unwrap();
        assert!(Settings::merge(&ServeArgs::default(), file, Paths::default()).is_err());
    }

    #[test]
    fn responses_ttl() {
        let s = Settings::merge(
            &ServeArgs::default(),
            FileConfig::default(),
            Paths::default(),
        );
        assert_eq!(s.unwrap().responses.ttl, DEFAULT_RESPONSES_TTL);
        let file: FileConfig = toml::from_str("responses_ttl_secs = 60").unwrap();
        let s = Settings::merge(&ServeArgs::default(), file, Paths::default()).unwrap();
        assert_eq!(s.responses.ttl, Duration::from_secs(60));
        let file: FileConfig = toml::from_str("responses_ttl_secs = 0").unwrap();
        let err = Settings::merge(&ServeArgs::default(), file, Paths::default()).unwrap_err();
        assert!(err.to_string().contains("responses_ttl_secs"), "{err}");
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
