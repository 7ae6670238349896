//! Command-line argument definitions only (no logic).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ccproxy",
    version,
    about = "Use Claude from any Anthropic or OpenAI API client, through a Claude subscription or an API key"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Server options, also accepted without the `serve` subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy server (the default command).
    Serve(ServeArgs),
    /// Run the simulated Anthropic upstream on its own.
    Sim(SimArgs),
    /// Write or show the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Claude subscription (OAuth) credentials.
    Auth(AuthArgs),
    /// Report recorded usage and cost.
    Usage(UsageArgs),
    Status(StatusArgs),
    /// Client keys: one per client, with its own limits and budget.
    Keys(KeysArgs),
    /// The model list the running server serves on /v1/models.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// The configured store (`database_url`): migrate it, import a SQLite history into it.
    Db(DbArgs),
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Fetch the model list from the upstream again now (through the running server, with its
    /// credentials) and print it. Exits 1 when the upstream gave none.
    Refresh(StatusArgs),
}

#[derive(Debug, Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub action: DbCommand,
    /// Configuration file (TOML). Default: config.toml in ccproxy's configuration directory.
    #[arg(long, env = "CCPROXY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Bring the configured store's schema up to date (servers also do it at startup).
    Migrate,
    /// Copy a SQLite usage database (usage rows, client keys, stored responses) into the
    /// configured PostgreSQL store.
    Import {
        /// The SQLite database: sqlite://PATH (or a plain path).
        #[arg(long)]
        from: String,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Output format (`table` or `json`).
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysCommand,
    /// Configuration file (TOML). Default: config.toml in ccproxy's configuration directory.
    #[arg(long, env = "CCPROXY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Usage database holding the keys. Default: `usage_db` from the configuration file, else
    /// usage.db in ccproxy's data directory.
    #[arg(long, env = "CCPROXY_USAGE_DB", global = true)]
    pub db: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (once: only its digest is kept).
    Create(KeyCreateArgs),
    /// List the keys: name, key prefix, limits, spend this period, last use, expiry.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: KeysFormat,
    },
    /// Revoke a key (a running server refuses it within a second).
    Revoke { name: String },
    /// Give a key a new secret with the same settings (the old one stops working).
    Rotate { name: String },
}

#[derive(Debug, Args, Clone)]
pub struct KeyCreateArgs {
    /// The key's name (letters, digits, '-', '_', '.', '@'), shown in usage and logs.
    pub name: String,
    /// Models the key may use: comma-separated patterns, `*` matching anything
    /// (e.g. `claude-haiku-*,claude-sonnet-*`).
    #[arg(long)]
    pub models: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u32>,
    /// Tokens per minute (input and output of finished requests).
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests at once.
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Spending limit in USD per period.
    #[arg(long)]
    pub budget: Option<f64>,
    /// The budget's period: day, week or month (default month).
    #[arg(long)]
    pub period: Option<String>,
    /// Expiry: a duration from now (30d, 12h, 2w) or a date (2026-12-31, UTC).
    #[arg(long)]
    pub expires: Option<String>,
    /// Modes the key may use: comma-separated full, min, pt.
    #[arg(long)]
    pub modes: Option<String>,
}

/// Output format of `ccproxy keys list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeysFormat {
    Table,
    Json,
}

#[derive(Debug, Args, Clone)]
pub struct UsageArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only requests newer than this (e.g. 30m, 24h, 7d, 4w), or `all`.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Group rows by this.
    #[arg(long, value_enum, default_value = "model")]
    pub by: UsageGrouping,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Usage database to read. Default: `usage_db` from the configuration file, else usage.db
    /// in ccproxy's data directory.
    #[arg(long, env = "CCPROXY_USAGE_DB")]
    pub db: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

/// How `ccproxy usage` groups its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsageGrouping {
    Model,
    Day,
    Hour,
    Mode,
    /// The upstream credential that served each request.
    Credential,
    /// What each request was billed to: a subscription's plan, its extra usage, an API key.
    Bucket,
    /// Client key name.
    Key,
}

/// Output format of `ccproxy usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

/// The configuration file, for commands that need no other common setting.
/// (Help texts naming a default path are filled in with the resolved path by
/// `commands::cli_command`.)
#[derive(Debug, Args, Clone, Default)]
pub struct ConfigArg {
    /// Configuration file (TOML). Default: config.toml in ccproxy's configuration directory.
    #[arg(long, env = "CCPROXY_CONFIG")]
    pub config: Option<PathBuf>,
}

impl From<ConfigArg> for CommonArgs {
    fn from(a: ConfigArg) -> Self {
        CommonArgs {
            config: a.config,
            ..CommonArgs::default()
        }
    }
}

/// Settings shared by the commands that use the configuration and the credentials.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonArgs {
    /// Configuration file (TOML). Default: config.toml in ccproxy's configuration directory.
    #[arg(long, env = "CCPROXY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Claude Code credentials file to use first.
    #[arg(long, env = "CCPROXY_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,

    /// OAuth token endpoint used to refresh subscription credentials.
    #[arg(long, env = "CCPROXY_OAUTH_TOKEN_URL")]
    pub oauth_token_url: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Address to listen on.
    #[arg(long, env = "CCPROXY_HOST")]
    pub host: Option<String>,

    /// Port to listen on.
    #[arg(long, env = "CCPROXY_PORT")]
    pub port: Option<u16>,

    /// Upstream base URL; `sim` runs the built-in simulated upstream.
    #[arg(long, env = "CCPROXY_UPSTREAM_URL")]
    pub upstream_url: Option<String>,

    /// Token that clients must present (x-api-key or Authorization: Bearer).
    /// Also read from AUTH_TOKEN.
    #[arg(long, env = "CCPROXY_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,

    /// Log format.
    #[arg(long, env = "CCPROXY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log level or filter (RUST_LOG syntax).
    #[arg(long, env = "CCPROXY_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Allow listening on a non-loopback address without --auth-token (an open proxy).
    #[arg(long, env = "CCPROXY_ALLOW_OPEN")]
    pub allow_open: bool,

    /// Do not record usage.
    #[arg(long)]
    pub no_usage: bool,

    /// Usage database. Default: usage.db in ccproxy's data directory (usage-sim.db beside it
    /// with --upstream-url sim).
    #[arg(long, env = "CCPROXY_USAGE_DB")]
    pub usage_db: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8001)]
    pub port: u16,
    /// Keep the last requests received, for inspection at GET /_sim/requests.
    #[arg(long)]
    pub record: bool,
    /// Most concurrent streams on one HTTP/2 connection (its SETTINGS_MAX_CONCURRENT_STREAMS,
    /// as a real server advertises one); 0 for no limit.
    #[arg(long, default_value_t = crate::sim::DEFAULT_H2_MAX_STREAMS)]
    pub h2_max_streams: u32,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a commented configuration file.
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the effective settings (secrets masked).
    Show {
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub action: AuthCommand,
    #[command(flatten)]
    pub common: AuthCommonArgs,
}

/// Options of every `auth` action, accepted before or after it.
#[derive(Debug, Args, Clone, Default)]
pub struct AuthCommonArgs {
    /// Configuration file (TOML). Default: config.toml in ccproxy's configuration directory.
    #[arg(long, env = "CCPROXY_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Claude Code credentials file to use (and, for login, to write).
    #[arg(long, env = "CCPROXY_CREDENTIALS_FILE", global = true)]
    pub credentials_file: Option<PathBuf>,
}

/// The token endpoint, for the `auth` actions that call it.
#[derive(Debug, Args, Clone, Default)]
pub struct TokenUrlArg {
    /// OAuth token endpoint used to obtain and refresh subscription credentials.
    #[arg(long, env = "CCPROXY_OAUTH_TOKEN_URL")]
    pub oauth_token_url: Option<String>,
}

#[derive(Debug, Subcommand, Clone)]
pub enum AuthCommand {
    /// Log in with your Claude subscription (PKCE); saves credentials for ccproxy.
    Login {
        /// Do not try to open a browser; just print the URL.
        #[arg(long)]
        no_browser: bool,
        #[command(flatten)]
        endpoint: TokenUrlArg,
    },
    /// Show which credentials are in use and when they expire.
    Status {
        #[command(flatten)]
        endpoint: TokenUrlArg,
    },
    /// Refresh the access token now.
    Refresh {
        #[command(flatten)]
        endpoint: TokenUrlArg,
    },
    /// Remove ccproxy's own stored credentials (never Claude Code's).
    Logout,
}
