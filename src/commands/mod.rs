//! Command implementations (glue between the CLI and the library).

pub mod auth;
pub mod db;
pub mod keys;
pub mod models;
pub mod status;
pub mod usage;

use std::net::SocketAddr;

use anyhow::Context;

use std::path::Path;

use clap::CommandFactory as _;

use crate::cli::{
    AuthCommand, Cli, Command, CommonArgs, ConfigCommand, LogFormat, ServeArgs, SimArgs,
    TokenUrlArg,
};
use crate::config::UpstreamTarget;
use crate::config::{CONFIG_TEMPLATE, Settings};
use crate::server::Server;
use crate::state::AppState;

/// Runs the command; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Sim(args)) => sim(args).await,
        Some(Command::Config(ConfigCommand::Show { serve })) => {
            let settings = Settings::resolve(&serve)?;
            print!("{}", settings.show());
            Ok(0)
        }
        Some(Command::Config(ConfigCommand::Init { config, force })) => {
            // Only the path: the file is not read (it usually does not exist yet).
            let (path, _) = crate::config::config_file_path(&config.into());
            if path.exists() && !force {
                anyhow::bail!(
                    "{} already exists; pass --force to overwrite it",
                    path.display()
                );
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&path, CONFIG_TEMPLATE)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
            Ok(0)
        }
        Some(Command::Models(crate::cli::ModelsCommand::Refresh(args))) => {
            let settings = Settings::resolve(&args.serve)?;
            models::refresh(&settings, args.format).await
        }
        Some(Command::Status(args)) => {
            let settings = Settings::resolve(&args.serve)?;
            status::run(&settings, args.format).await
        }
        Some(Command::Usage(args)) => {
            let settings = Settings::from_common(&args.config.clone().into())?;
            let db = settings.usage.database();
            // PostgreSQL's blocking client must not run on the async runtime's threads.
            let code = tokio::task::spawn_blocking(move || usage::run(&args, db)).await??;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Some(Command::Keys(args)) => {
            let common = CommonArgs {
                config: args.config.clone(),
                ..CommonArgs::default()
            };
            let settings = Settings::from_common(&common)?;
            let db = args
                .db
                .clone()
                .map_or_else(|| settings.usage.database(), crate::db::Database::Sqlite);
            tokio::task::spawn_blocking(move || keys::run(args.action, &db)).await?
        }
        Some(Command::Db(args)) => {
            let common = CommonArgs {
                config: args.config.clone(),
                ..CommonArgs::default()
            };
            let settings = Settings::from_common(&common)?;
            let db = settings.usage.database();
            tokio::task::spawn_blocking(move || db::run(args.action, &db)).await?
        }
        Some(Command::Auth(args)) => {
            let (action, endpoint) = match args.action {
                AuthCommand::Login {
                    no_browser,
                    endpoint,
                } => (auth::AuthAction::Login { no_browser }, endpoint),
                AuthCommand::Status { endpoint } => (auth::AuthAction::Status, endpoint),
                AuthCommand::Refresh { endpoint } => (auth::AuthAction::Refresh, endpoint),
                AuthCommand::Logout => (auth::AuthAction::Logout, TokenUrlArg::default()),
            };
            let common = CommonArgs {
                config: args.common.config,
                credentials_file: args.common.credentials_file,
                oauth_token_url: endpoint.oauth_token_url,
            };
            let settings = Settings::from_common(&common)?;
            let code = auth::run(action, settings.credentials_config()).await?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// The command-line definition with the default paths in help texts resolved
/// for this environment (`--config`, `--usage-db`, `usage --db`).
pub fn cli_command() -> clap::Command {
    let config = crate::config::config_dir().join("config.toml");
    let usage_db = crate::config::UsageSettings::default().db;
    resolve_help(Cli::command(), &config, &usage_db)
}

fn resolve_help(cmd: clap::Command, config: &Path, usage_db: &Path) -> clap::Command {
    cmd.mut_args(|a| {
        let help = match a.get_id().as_str() {
            "config" => format!("Configuration file (TOML). Default: {}", config.display()),
            "usage_db" => format!(
                "Usage database. Default: {} (with --upstream-url sim: {} beside it)",
                usage_db.display(),
                crate::config::USAGE_SIM_DB_FILE
            ),
            "db" => format!(
                "Usage database to read. Default: `usage_db` from the configuration file, else {}",
                usage_db.display()
            ),
            _ => return a,
        };
        a.help(help)
    })
    .mut_subcommands(|sc| resolve_help(sc, config, usage_db))
}

/// Installs the tracing subscriber (pretty or JSON lines on stderr).
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let settings = Settings::resolve(&args)?;
    init_logging(settings.logging.format, &settings.logging.level);
    let server = Server::bind(settings).await?;
    let addr = server.local_addr()?;
    let state = server.state.clone();
    tracing::info!(
        listen = %addr,
        oauth = state.oauth.is_some(),
        server_api_key = state.settings.credentials.api_key.is_some(),
        auth_required = state.proxy_token.is_some(),
        "{}",
        startup_line(&state, addr)
    );
    if let Some(warning) = no_credential_warning(&state) {
        tracing::warn!("{warning}");
    }
    for m in state.pool.get().members() {
        if m.is_oauth() && !m.plan_limits_only {
            tracing::warn!(
                credential = %m.name,
                "plan_limits_only is off: this subscription may serve requests from extra usage, \
                 billed beyond the plan"
            );
        }
    }
    reload_on_hangup(state.clone());
    crate::util::memory::spawn_release_timer();
    server.run(shutdown_signal()).await?;
    tracing::info!("ccproxy stopped");
    Ok(0)
}

/// `SIGHUP` re-reads the configuration file's credential pool; requests in flight finish on the
/// pool they started with.
fn reload_on_hangup(state: std::sync::Arc<AppState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the credential pool cannot be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            // It reads files (the configuration, credentials): off the main runtime's one
            // worker, which also accepts connections.
            let s = state.clone();
            match tokio::task::spawn_blocking(move || crate::state::reload_pool(&s)).await {
                Ok(Ok(n)) => tracing::info!(credentials = n, "credential pool reloaded"),
                Ok(Err(e)) => tracing::error!(
                    error = %crate::error::chain(e.as_ref()),
                    "credential pool not reloaded (the previous pool stays)"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "credential pool not reloaded (the previous pool stays)"
                ),
            }
        }
    });
    #[cfg(not(unix))]
    drop(state);
}

/// What a person starting the server needs to know: the bases, the upstream
/// (simulated or not), where usage goes, and the dashboard (never the token).
fn startup_line(state: &AppState, addr: SocketAddr) -> String {
    let settings = &state.settings;
    let upstream = match &settings.upstream.target {
        UpstreamTarget::Sim => {
            "SIMULATED (built in: no network, no account; answers are made up)".to_owned()
        }
        UpstreamTarget::Url(url) => url.clone(),
    };
    let usage = match &state.usage {
        Some(w) if w.open_error().is_some() => format!(
            "not recorded ({} cannot be used, see above)",
            w.path().display()
        ),
        Some(w) => format!("recorded in {}", w.path().display()),
        None => "not recorded (usage recording is off)".to_owned(),
    };
    let token_hint = if state.proxy_token.is_some() {
        "?token=<your proxy token>"
    } else {
        ""
    };
    format!(
        "ccproxy listening: Anthropic base http://{addr}/v1, OpenAI base http://{addr}/openai/v1; \
         upstream: {upstream}; usage: {usage}; dashboard: http://{addr}/dashboard{token_hint}"
    )
}

/// With no server-side credential at all, every request needs the client's own
/// key: say so at startup rather than with the first request's 401.
fn no_credential_warning(state: &AppState) -> Option<String> {
    if state.oauth.is_some() || state.settings.credentials.api_key.is_some() {
        return None;
    }
    let why = if state.oauth_error.is_some() {
        "the Claude subscription credentials are not usable (see above)"
    } else {
        "no Claude subscription credentials were found"
    };
    Some(format!(
        "no upstream credential: {why} and no server API key is set (ANTHROPIC_API_KEY or \
         `api_key`), so each request needs the client's own Anthropic API key (x-api-key: \
         sk-ant-api…) or it gets 401. To use your Claude subscription, log in with \
         `ccproxy auth login` (or Claude Code's `claude`) and restart ccproxy"
    ))
}

async fn sim(args: SimArgs) -> anyhow::Result<u8> {
    init_logging(LogFormat::Pretty, "info");
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid address {}:{}", args.host, args.port))?;
    let max_streams = (args.h2_max_streams > 0).then_some(args.h2_max_streams);
    let handle = crate::sim::start_with(addr, args.record, max_streams).await?;
    println!("simulated Anthropic upstream listening on {}", handle.url());
    shutdown_signal().await;
    Ok(0)
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
