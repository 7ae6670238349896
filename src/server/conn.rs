//! Client connections: the accept loop and the limits that keep slow, idle or
//! too many clients from holding the server.
//!
//! - A request head must arrive complete within `header_read_timeout` of the
//!   moment the connection waits for it — whether the client sends it slowly or
//!   idles between keep-alive requests; the connection is closed otherwise.
//! - At most `max_connections` client connections are open at once; one over the
//!   limit is closed at once (and logged, rate-limited).
//! - Accept errors (out of descriptors, say) are logged, rate-limited, and the
//!   loop keeps accepting once descriptors return.
//! - Every connection is watched for graceful shutdown.
//! - Each connection is served by one of the serving threads (`workers`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::workers::Workers;

/// Limits on client connections (from `settings.limits`).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// The longest a connection may wait for a complete request head.
    pub header_read_timeout: Duration,
    /// Client connections open at once (`0`: unlimited).
    pub max_connections: usize,
}

/// Raises the soft open-file limit to the hard limit (each proxied request may
/// hold a client and an upstream connection); warns when it is still too low
/// for `max_connections`.
pub fn raise_open_file_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let wanted = 2 * max_connections as u64 + 64;
            if max_connections > 0 && limit < wanted {
                tracing::warn!(
                    open_file_limit = limit,
                    max_connections,
                    "the open-file limit is below what max_connections may need (2 per connection); \
                     raise it (ulimit -n) or lower max_connections"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Accepts connections until `stop` completes, handing each to a serving thread of `workers`
/// under `graceful`'s watch. Returns when it stops accepting.
pub(super) async fn accept_loop(
    listener: TcpListener,
    workers: &Workers,
    limits: &ConnLimits,
    graceful: &GracefulShutdown,
    stop: impl std::future::Future<Output = ()>,
) {
    let slots =
        (limits.max_connections > 0).then(|| Arc::new(Semaphore::new(limits.max_connections)));
    let mut errors = RateLimitedLog::default();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => return,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                errors
                    .note(|n| tracing::error!(error = %e, errors = n, "cannot accept connections"));
                // Out of descriptors: give in-flight requests a moment to return some.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match &slots {
            None => None,
            Some(s) => match s.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    errors.note(|n| {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            refused = n,
                            "connection limit reached: new connections are closed"
                        )
                    });
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        workers.dispatch(tcp, [graceful.watcher(), graceful.watcher()], permit);
    }
}

/// How client connections are served (HTTP/1.1 or HTTP/2, by what the client speaks).
pub(super) fn builder(limits: &ConnLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

/// Logs at most one line per interval, with the number of events it stands for.
struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    count: u64,
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        RateLimitedLog {
            interval: Duration::from_secs(5),
            last: None,
            count: 0,
        }
    }
}

impl RateLimitedLog {
    fn note(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        if self.last.is_none_or(|t| t.elapsed() >= self.interval) {
            log(self.count);
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_log_counts_what_it_left_out() {
        let mut log = RateLimitedLog::default();
        let mut lines = Vec::new();
        for _ in 0..5 {
            log.note(|n| lines.push(n));
        }
        assert_eq!(lines, [1], "one line per interval");
        log.last = Some(Instant::now() - Duration::from_secs(6));
        log.note(|n| lines.push(n));
        assert_eq!(
            lines,
            [1, 5],
            "the next line counts the four left out and itself"
        );
    }
}
