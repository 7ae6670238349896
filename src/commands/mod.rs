//! Command implementations (glue between the CLI and the library).

pub mod auth;
pub mod usage;

use std::net::SocketAddr;

use anyhow::Context;

use crate::cli::{AuthCommand, Cli, Command, ConfigCommand, ServeArgs, SimArgs};
use crate::config::{CONFIG_TEMPLATE, Settings};
use crate::server::Server;

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
        Some(Command::Config(ConfigCommand::Init { common, force })) => {
            let settings = Settings::from_common(&common)?;
            let path = settings.config_path;
            if path.exists() && !force {
                anyhow::bail!(
                    "{} already exists; pass --force to overwrite it",
                    path.display()
                );
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(&path, CONFIG_TEMPLATE)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
            Ok(0)
        }
        Some(Command::Usage(args)) => {
            let settings = Settings::from_common(&args.common)?;
            let code = usage::run(&args, settings.usage_db)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
        Some(Command::Auth(args)) => {
            let settings = Settings::from_common(&args.common.into())?;
            let cfg = crate::server::credentials_config(&settings);
            let action = match args.action {
                AuthCommand::Login { no_browser } => auth::AuthAction::Login { no_browser },
                AuthCommand::Status => auth::AuthAction::Status,
                AuthCommand::Refresh => auth::AuthAction::Refresh,
                AuthCommand::Logout => auth::AuthAction::Logout,
            };
            let code = auth::run(action, cfg).await?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

/// Installs the tracing subscriber (pretty or JSON lines on stderr).
pub fn init_logging(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let settings = Settings::resolve(&args)?;
    init_logging(&settings.log_format, &settings.log_level);
    let server = Server::bind(settings).await?;
    let addr = server.local_addr()?;
    let state = server.state.clone();
    tracing::info!(
        listen = %addr,
        upstream = state.upstream.base(),
        oauth = state.oauth.is_some(),
        server_api_key = state.settings.api_key.is_some(),
        auth_required = state.proxy_token.is_some(),
        "ccproxy listening: Anthropic base http://{addr}/v1, OpenAI base http://{addr}/openai/v1"
    );
    server.run(shutdown_signal()).await?;
    tracing::info!("ccproxy stopped");
    Ok(0)
}

async fn sim(args: SimArgs) -> anyhow::Result<u8> {
    init_logging("pretty", "info");
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid address {}:{}", args.host, args.port))?;
    let handle = crate::sim::start(addr, args.record).await?;
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
