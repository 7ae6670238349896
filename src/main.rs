#![forbid(unsafe_code)]
//! The `ccproxy` binary: parses arguments and hands over to `commands`.

use clap::FromArgMatches as _;

/// jemalloc instead of glibc's malloc: fewer instructions per allocation on the request path,
/// and, with its background thread (started in `main`), freed memory goes back to the system
/// after a burst (glibc kept what a burst of streams had used; mimalloc, measured too, returned
/// less of it: `scripts/bench/changes.md`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One jemalloc background thread purges unused memory (decay) even while the request threads
/// are idle; without it, memory freed after a burst is returned only when allocating again.
fn start_memory_purging() {
    let _ = tikv_jemalloc_ctl::max_background_threads::write(1);
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}

fn main() -> std::process::ExitCode {
    start_memory_purging();
    let matches = ccproxy::commands::cli_command().get_matches();
    let cli = match ccproxy::cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // The main runtime: commands, background work, the acceptor and the in-process simulated
    // upstream. `serve` serves client connections on threads of its own (`server::workers`), so
    // its main runtime needs one worker; the other commands (the standalone `sim` among them)
    // get one per core.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, None | Some(ccproxy::cli::Command::Serve(_))) {
        builder.worker_threads(1);
    }
    let runtime = match builder
        .enable_all()
        // A worker about to sleep hands a burst's cached memory back when asked.
        .on_thread_park(ccproxy::util::memory::release_if_asked)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccproxy: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(ccproxy::commands::run(cli));
    // Blocking work still running (a stuck call of a request that is gone) does not hold the
    // exit: what must be written was flushed before `run` returned.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            // The error and its causes, each once (a cause already in a message is not repeated).
            eprintln!("ccproxy: {}", ccproxy::error::chain(e.as_ref()));
            std::process::ExitCode::from(1)
        }
    }
}
