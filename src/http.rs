//! Construction of the outbound HTTP clients (and their TLS provider): hyper's pooled client
//! for the upstream leg, `reqwest` for the OAuth endpoints.

use std::sync::{Arc, Once, OnceLock};
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
/// upstreams through rustls ([`tls_config`]), offering HTTP/2 and HTTP/1.1 by ALPN. Built once
/// and cloned into each [`upstream_client`] (each lane of `upstream::lanes`).
pub type UpstreamConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The TLS settings of the upstream leg and its OAuth client: rustls with the platform's
/// verifier (the system's CA certificates, or the PEM bundle named by `SSL_CERT_FILE`), which
/// loads them when the first server is verified: a process that never makes an HTTPS request (a
/// plain `http://` upstream with an API key) never parses the ~150 root certificates, and a
/// machine without any still starts; its first HTTPS handshake fails, saying why.
/// [`check_ca_certificates`] loads them now, for an upstream that needs them.
pub fn tls_config() -> rustls::ClientConfig {
    let provider = crypto_provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(LazyVerifier { provider }))
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this is not reached.
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

/// The process-wide crypto provider (ring), installed if need be.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    install_crypto_provider();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Loads the platform's CA certificates now (what [`tls_config`]'s verifier does on first use):
/// an error when there are none.
pub fn check_ca_certificates() -> Result<(), rustls::Error> {
    platform_verifier().map(|_| ())
}

fn platform_verifier() -> Result<Arc<rustls_platform_verifier::Verifier>, rustls::Error> {
    static VERIFIER: OnceLock<Result<Arc<rustls_platform_verifier::Verifier>, rustls::Error>> =
        OnceLock::new();
    VERIFIER
        .get_or_init(|| rustls_platform_verifier::Verifier::new(crypto_provider()).map(Arc::new))
        .clone()
}

/// The platform's verifier, created on the first certificate to verify (shared by every
/// client); signatures are checked with the provider's algorithms as the platform verifier's
/// own WebPKI verifier does.
#[derive(Debug)]
struct LazyVerifier {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for LazyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        platform_verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
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

/// One pooled client of the upstream leg over TLS (hyper-util's legacy client, driven directly:
/// none of reqwest's per-request layers) over `connector` (an [`UpstreamConnector`], wrapped):
/// idle connections kept 90 s (up to 1024 per host), no redirects, no proxy; HTTP/2 when the
/// server offers it by ALPN, HTTP/1.1 otherwise. Over HTTP/2 the client keeps one connection;
/// `upstream::Upstream` keeps several clients to have several. (An h2c upstream's connections
/// are driven on h2 directly, `upstream::h2c`; a plain `http://` one's by `upstream::h1`.)
pub fn upstream_client<C, B>(connector: C) -> hyper_util::client::legacy::Client<C, B>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
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
        // One HTTP/2 connection carries many streams: h2 refuses a connection (GOAWAY
        // ENHANCE_YOUR_CALM, "too_many_data_frames") whose small DATA frames wait unread past a
        // budget of half its window, which thousands of event streams on a busy proxy reach at
        // the default 5 MiB; the upstream is the one configured, not a stranger.
        .http2_initial_connection_window_size(Some(64 << 20))
        .build(connector)
}
