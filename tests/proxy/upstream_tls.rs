//! The upstream leg over TLS, as to the real API: the built binary against an `https://`
//! upstream (a TLS terminator written here, with a certificate from a test CA the proxy trusts
//! through `SSL_CERT_FILE`, in front of the simulated upstream). HTTP/2 is negotiated by ALPN,
//! streams past the stream limit the server announces go on another connection, a server that
//! offers only HTTP/1.1 gets a connection per request, and a certificate the proxy does not
//! trust is a clear 502, not an answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::support::*;

/// A new CA: its certificate (PEM), and what signs with it.
fn test_ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    (ca.pem(), Issuer::new(ca_params, ca_key))
}

/// A test CA's certificate (PEM) and a server configuration for `127.0.0.1` signed by it,
/// offering HTTP/2 and HTTP/1.1.
fn tls_material() -> (String, Arc<rustls::ServerConfig>) {
    tls_material_offering(&[b"h2", b"http/1.1"])
}

/// [`tls_material`] with the protocols the server offers by ALPN.
fn tls_material_offering(alpn: &[&[u8]]) -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{CertificateParams, KeyPair};
    let (ca_pem, issuer) = test_ca();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (ca_pem, Arc::new(config))
}

/// A TLS terminator on a loopback port in front of `backend`: each connection's bytes are
/// relayed as they are (the sim tells HTTP/2 from HTTP/1.1 itself). Records the protocol ALPN
/// chose for each connection.
async fn tls_front(config: Arc<rustls::ServerConfig>, backend: SocketAddr) -> (u16, Alpns) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let alpns: Alpns = Arc::default();
    let seen = alpns.clone();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                seen.lock().unwrap().push(alpn);
                let Ok(mut back) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut back).await;
            });
        }
    });
    (port, alpns)
}

type Alpns = Arc<Mutex<Vec<Option<Vec<u8>>>>>;

/// `ccproxy serve` on `port`, upstream `https://127.0.0.1:{upstream_port}`, trusting only the
/// CA certificates in `ca_pem` (`SSL_CERT_FILE`); `upstream_h2_max_streams` left at its default
/// (100).
fn serve(dir: &std::path::Path, port: u16, upstream_port: u16, ca_pem: &str) -> Proc {
    let config = dir.join("ccproxy.toml");
    // A long connect timeout: a request waiting for a server's word that never comes (an
    // HTTP/1.1 connection has none) would wait past the tests' own time limits. One serving
    // thread: its lanes are all the proxy's (each thread has lanes of its own).
    std::fs::write(
        &config,
        "upstream_timeout_secs = 20\nconnect_timeout_secs = 60\nworkers = 1\n",
    )
    .unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let mut c = cmd(dir);
    c.env("SSL_CERT_FILE", &ca)
        .env("ANTHROPIC_API_KEY", API_KEY)
        .args(["serve", "--port", &port.to_string(), "--config"])
        .arg(&config)
        .args([
            "--upstream-url",
            &format!("https://127.0.0.1:{upstream_port}"),
        ]);
    spawn(c, dir, "ccproxy")
}

/// [`serve`] on a free port, once it accepts connections.
fn proxy(dir: &std::path::Path, upstream_port: u16, ca_pem: &str) -> (Proc, u16) {
    let port = free_port();
    let mut p = serve(dir, port, upstream_port, ca_pem);
    wait_port(port, &mut p);
    (p, port)
}

async fn post(port: u16, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/pt/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

/// `n` endless streams at once through the proxy on `port`: all of them start. Returns them,
/// open.
async fn endless_streams_start(port: u16, n: usize) -> Vec<reqwest::Response> {
    let endless = message("[sim:endless] [sim:gap=50]", true);
    let (started, open) =
        streams_started(n, Duration::from_secs(15), || post(port, &endless)).await;
    assert_eq!(
        started, n,
        "streams that started while the others were open"
    );
    open
}

/// A small request through the proxy on `port` gets its message.
async fn answers(port: u16) {
    let resp = post(port, &message("hi", false)).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
}

/// The sim (HTTP/2 streams per connection: `max_streams`) behind a TLS terminator offering
/// HTTP/2, and the proxy in front of it: the proxy's directory, the sim, the terminator's
/// record of connections, the proxy and its port.
async fn behind_tls(
    max_streams: u32,
) -> (tempfile::TempDir, ccproxy::sim::SimHandle, Alpns, Proc, u16) {
    let dir = tempfile::tempdir().unwrap();
    let sim = ccproxy::sim::start_with("127.0.0.1:0".parse().unwrap(), true, Some(max_streams))
        .await
        .unwrap();
    let (ca, config) = tls_material();
    let (tls_port, alpns) = tls_front(config, sim.addr).await;
    let (proxy, port) = proxy(dir.path(), tls_port, &ca);
    (dir, sim, alpns, proxy, port)
}

#[tokio::test]
async fn https_upstream_speaks_http2_and_follows_the_servers_stream_limit() {
    let (_dir, sim, alpns, _proxy, port) = behind_tls(2).await;

    answers(port).await;

    // Five endless streams on connections that allow two each (the server's SETTINGS say so;
    // the proxy's own cap is 100): all five start.
    let n = 5;
    let _open = endless_streams_start(port, n).await;
    let alpns = alpns.lock().unwrap().clone();
    assert!(
        alpns.iter().all(|a| a.as_deref() == Some(&b"h2"[..])),
        "{alpns:?}"
    );
    // One connection for the first answer, then at least three for five streams, two each.
    assert!(alpns.len() >= 3, "{} connections", alpns.len());
    let (metrics, gauge) = scrape(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(gauge("ccproxy_upstream_lanes"), Some(3.0), "{metrics}");
    assert_eq!(
        gauge("ccproxy_upstream_streams_per_connection"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        gauge("ccproxy_upstream_lane_requests"),
        Some(5.0),
        "{metrics}"
    );
    // HTTP/2 carries the authority in its pseudo-header: no `host` header reached the sim.
    for r in sim.state.requests() {
        assert!(
            !r.headers.iter().any(|(k, _)| k == "host"),
            "{:?}",
            r.headers
        );
    }
}

/// A burst that needs a new lane opens one TLS connection for it: the lane's requests wait for
/// the one that opens it, instead of each opening a connection of its own (hyper-util cannot
/// know before the handshake that an `https://` connection will be HTTP/2, shared), of which
/// one would be kept and the others closed.
#[tokio::test]
async fn a_burst_on_a_new_tls_lane_opens_one_connection_for_it() {
    let (_dir, _sim, alpns, _proxy, port) = behind_tls(3).await;

    // The first lane's connection, and the server's word: three streams each.
    answers(port).await;
    assert_eq!(alpns.lock().unwrap().len(), 1);
    // Six streams at once: three on that connection, three on a second lane's.
    let _open = endless_streams_start(port, 6).await;
    let alpns = alpns.lock().unwrap().clone();
    assert_eq!(alpns.len(), 2, "TLS connections opened: {alpns:?}");
    let (metrics, gauge) = scrape(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(gauge("ccproxy_upstream_lanes"), Some(2.0), "{metrics}");
    assert_eq!(
        gauge("ccproxy_upstream_lane_requests"),
        Some(6.0),
        "{metrics}"
    );
}

/// A TLS upstream that offers only HTTP/1.1 (some corporate gateways): each request has a
/// connection of its own, all on the one lane, and no stream limit is waited for.
#[tokio::test]
async fn https_upstream_without_http2_gets_a_connection_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let sim = ccproxy::sim::start_with("127.0.0.1:0".parse().unwrap(), true, Some(2))
        .await
        .unwrap();
    let (ca, config) = tls_material_offering(&[b"http/1.1"]);
    let (tls_port, alpns) = tls_front(config, sim.addr).await;
    let (_proxy, port) = proxy(dir.path(), tls_port, &ca);

    let n = 5;
    let _open = endless_streams_start(port, n).await;
    answers(port).await;

    let alpns = alpns.lock().unwrap().clone();
    assert!(
        alpns.iter().all(|a| a.as_deref() == Some(&b"http/1.1"[..])),
        "{alpns:?}"
    );
    assert!(alpns.len() > n, "{} connections", alpns.len());
    let (metrics, gauge) = scrape(&format!("http://127.0.0.1:{port}/metrics")).await;
    assert_eq!(gauge("ccproxy_upstream_lanes"), Some(1.0), "{metrics}");
    // No HTTP/2 connection, so no streams-per-connection figure.
    assert_eq!(
        gauge("ccproxy_upstream_streams_per_connection"),
        None,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_upstream_certificate_not_trusted_is_a_502_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let sim = ccproxy::sim::start_with("127.0.0.1:0".parse().unwrap(), true, None)
        .await
        .unwrap();
    let (_, config) = tls_material();
    let (tls_port, _) = tls_front(config, sim.addr).await;
    // The proxy trusts another CA, not the one that signed the upstream's certificate.
    let (other_ca, _) = test_ca();
    let (proxy, port) = proxy(dir.path(), tls_port, &other_ca);

    let resp = post(port, &message("hi", false)).await;
    assert_eq!(resp.status(), 502);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("upstream"), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    assert!(sim.state.requests().is_empty());
    assert!(!proxy.logs().contains(API_KEY));
}

#[tokio::test]
async fn no_ca_certificates_at_all_is_a_startup_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = serve(dir.path(), free_port(), 9, "");
    let status = p.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    let logs = p.logs();
    assert!(logs.contains("HTTPS for the upstream"), "{logs}");
    assert!(logs.contains("SSL_CERT_FILE"), "{logs}");
    assert!(!logs.contains(API_KEY));
}
