#![forbid(unsafe_code)]
//! The `ccproxy` binary: parses arguments and hands over to `commands`.

use clap::FromArgMatches as _;

/// mimalloc instead of glibc's malloc: fewer instructions per allocation on the request path,
/// and freed memory goes back to the system (glibc kept what a burst of streams had used).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let matches = ccproxy::commands::cli_command().get_matches();
    let cli = match ccproxy::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
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
            // The error and its causes, each once (a cause already in a message is not repeated).
            eprintln!("ccproxy: {}", ccproxy::error::chain(e.as_ref()));
            std::process::ExitCode::from(1)
        }
    }
}
