//! The one support module of the integration test binaries (`tests/proxy`,
//! `tests/cli`, `tests/metrics`), split by concern:
//! - [`server`]: ccproxy started in process on loopback against the simulated upstream;
//! - [`envelopes`]: request bodies, SSE / OpenAI chunk parsing, error-envelope assertions;
//! - [`raw`]: a raw HTTP/1.1 client;
//! - [`bin`]: the built binary run as a child process;
//! - [`cases!`]: one named test per mode × dialect case.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod bin;
pub mod envelopes;
pub mod raw;
pub mod server;

use std::time::{Duration, Instant};

pub use bin::*;
pub use envelopes::*;
pub use raw::*;
pub use server::*;

/// Anthropic mode prefixes (full, minimal, passthrough).
pub const ANTHROPIC_MODES: [&str; 3] = ["", "/min", "/pt"];
/// OpenAI bases that convert to the Messages API (full, minimal).
pub const OPENAI_CONVERTING: [&str; 2] = ["/openai", "/min/openai"];

/// `/metrics` at `url`: its text, and a reader of one unlabelled gauge or counter in it.
pub async fn scrape(url: &str) -> (String, impl Fn(&str) -> Option<f64> + use<>) {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let lines = text.clone();
    let value = move |name: &str| {
        lines
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    (text, value)
}

/// Polls `cond` every 5 ms until it holds or `limit` passes; returns the time it took.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if cond() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Generates one named test per case from a function taking the case's arguments,
/// so a failure names its case (`module::function::case`):
///
/// ```ignore
/// async fn streams(mode: &str, openai: bool) { … }
/// cases!(streams {
///     anthropic_full: ("", false),
///     openai_min: ("/min/openai", true),
/// });
/// ```
///
/// Each case becomes `streams::anthropic_full`, `streams::openai_min`, … (a module
/// beside the function); name a case by its mode and dialect. The arguments are
/// any expressions, evaluated in the test. Async functions run under `#[tokio::test]` (pass
/// `#[tokio::test(flavor = "multi_thread")]` first to change it); write `sync` before
/// the name for a plain `#[test]`.
macro_rules! cases {
    (sync $f:ident { $($case:ident: ($($arg:expr),* $(,)?)),+ $(,)? }) => {
        mod $f {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    super::$f($($arg),*)
                }
            )+
        }
    };
    (#[$attr:meta] $f:ident { $($case:ident: ($($arg:expr),* $(,)?)),+ $(,)? }) => {
        mod $f {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[$attr]
                async fn $case() {
                    super::$f($($arg),*).await
                }
            )+
        }
    };
    ($f:ident { $($case:ident: ($($arg:expr),* $(,)?)),+ $(,)? }) => {
        mod $f {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $case() {
                    super::$f($($arg),*).await
                }
            )+
        }
    };
}
pub(crate) use cases;
