//! Construction of the one pooled outbound HTTP client (and its TLS provider).

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
