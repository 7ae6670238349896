#![forbid(unsafe_code)]
//! The `ccproxy` binary: parses arguments and hands over to `commands`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = ccproxy::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccproxy: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(ccproxy::commands::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("ccproxy: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
