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
}

#[derive(Debug, Args, Clone)]
pub struct UsageArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Only requests newer than this (e.g. 30m, 24h, 7d, 4w), or `all`.
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Group rows by this.
    #[arg(long, value_enum, default_value = "model")]
    pub by: UsageGrouping,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: ReportFormat,
    /// Usage database (default: the configured one).
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
}

/// Output format of `ccproxy usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

/// Settings shared by every command that reads the configuration.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonArgs {
    /// Configuration file (TOML). Default: $XDG_CONFIG_HOME/ccproxy/config.toml
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

    /// Usage database. Default: $XDG_DATA_HOME/ccproxy/usage.db
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
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a commented configuration file.
    Init {
        #[command(flatten)]
        common: CommonArgs,
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

/// [`CommonArgs`] accepted before or after the `auth` subcommand.
#[derive(Debug, Args, Clone, Default)]
pub struct AuthCommonArgs {
    /// Configuration file (TOML). Default: $XDG_CONFIG_HOME/ccproxy/config.toml
    #[arg(long, env = "CCPROXY_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Claude Code credentials file to use (and, for login, to write).
    #[arg(long, env = "CCPROXY_CREDENTIALS_FILE", global = true)]
    pub credentials_file: Option<PathBuf>,

    /// OAuth token endpoint used to refresh subscription credentials.
    #[arg(long, env = "CCPROXY_OAUTH_TOKEN_URL", global = true)]
    pub oauth_token_url: Option<String>,
}

impl From<AuthCommonArgs> for CommonArgs {
    fn from(a: AuthCommonArgs) -> Self {
        CommonArgs {
            config: a.config,
            credentials_file: a.credentials_file,
            oauth_token_url: a.oauth_token_url,
        }
    }
}

#[derive(Debug, Subcommand, Clone, Copy)]
pub enum AuthCommand {
    /// Log in with your Claude subscription (PKCE); saves credentials for ccproxy.
    Login {
        /// Do not try to open a browser; just print the URL.
        #[arg(long)]
        no_browser: bool,
    },
    /// Show which credentials are in use and when they expire.
    Status,
    /// Refresh the access token now.
    Refresh,
    /// Remove ccproxy's own stored credentials (never Claude Code's).
    Logout,
}
