//! Construction of the outbound HTTP clients (and their TLS provider): hyper's pooled client
//! for the upstream leg, `reqwest` for the OAuth endpoints.

use std::sync::Once;
use std::time::Duration;

/// Installs the process-wide rustls crypto provider (ring) exactly once.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error only means another provider was installed first, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client builder with the settings every outbound client of ccproxy shares:
/// TCP_NODELAY, connection pooling, rustls, no system proxy surprises.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .no_proxy()
}

/// The upstream leg's connector: `TCP_NODELAY`, TCP keep-alive, the connect timeout; `https://`
/// upstreams through rustls with the platform's verifier, offering HTTP/2 and HTTP/1.1 by ALPN.
/// Built once (loading the platform's roots is slow) and cloned into each [`upstream_client`].
pub type UpstreamConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The TLS settings of the upstream leg and its OAuth client: rustls with the platform's
/// verifier (the system's CA certificates, or the PEM bundle named by `SSL_CERT_FILE`). An error
/// when there are none to load.
pub fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    use rustls_platform_verifier::ConfigVerifierExt;
    install_crypto_provider();
    rustls::ClientConfig::with_platform_verifier()
}

/// TLS settings that trust no server: for a plain `http://` upstream on a machine without CA
/// certificates, where HTTPS is needed only for an OAuth refresh, which then fails its handshake
/// (unknown issuer) instead of the whole server failing to start.
pub fn tls_config_trusting_nothing() -> rustls::ClientConfig {
    install_crypto_provider();
    rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// See [`UpstreamConnector`]; `tls` from [`tls_config`].
pub fn upstream_connector(
    connect_timeout: Duration,
    tls: rustls::ClientConfig,
) -> UpstreamConnector {
    use hyper_util::client::legacy::connect::HttpConnector;

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// One pooled client of the upstream leg (hyper-util's legacy client, driven directly: none of
/// reqwest's per-request layers) over `connector`: idle connections kept 90 s (up to 1024 per
/// host), no redirects, no proxy; HTTP/2 when a TLS server offers it by ALPN; `h2c`: every
/// connection HTTP/2 with prior knowledge (only for an `http://` upstream). Over HTTP/2 the
/// client keeps one connection; `upstream::Upstream` keeps several clients to have several.
pub fn upstream_client<B>(
    connector: UpstreamConnector,
    h2c: bool,
) -> hyper_util::client::legacy::Client<UpstreamConnector, B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::{TokioExecutor, TokioTimer};

    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http2_only(h2c)
        // One HTTP/2 connection carries many streams: h2 refuses a connection (GOAWAY
        // ENHANCE_YOUR_CALM, "too_many_data_frames") whose small DATA frames wait unread past a
        // budget of half its window, which thousands of event streams on a busy proxy reach at
        // the default 5 MiB; the upstream is the one configured, not a stranger.
        .http2_initial_connection_window_size(Some(64 << 20))
        .build(connector)
}
