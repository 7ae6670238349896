//! ccproxy started in process on a loopback port against the simulated upstream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ccproxy::cli::ServeArgs;
use ccproxy::config::{Secret, Settings, UpstreamTarget};
use ccproxy::server::{AppState, Server};
use ccproxy::sim::{SimHandle, SimState};

pub const API_KEY: &str = "sk-ant-api03-test-server-key-0123456789";
pub const CLIENT_KEY: &str = "sk-ant-api03-test-client-key-9876543210";
pub const OAUTH_TOKEN: &str = "sk-ant-oat01-test-access-token-abcdef";
pub const REFRESH_TOKEN: &str = "sk-ant-ort01-test-refresh-token-abcdef";
pub const PROXY_TOKEN: &str = "proxy-token-for-tests-7f3a9c";

#[derive(Default)]
pub struct Opts {
    pub api_key: Option<&'static str>,
    pub auth_token: Option<&'static str>,
    /// Contents of a Claude Code credentials file to use.
    pub credentials: Option<serde_json::Value>,
    pub max_body_bytes: Option<usize>,
    pub upstream_timeout: Option<Duration>,
    /// Overrides the upstream (e.g. a dead port); the sim still runs.
    pub upstream_url: Option<String>,
    pub refresh_skew: Option<Duration>,
    /// The usage database (default: `usage.db` in the test's directory), e.g. one that
    /// outlives a server.
    pub usage_db: Option<PathBuf>,
    /// Adjusts any other setting before the server starts.
    pub tweak: Option<fn(&mut Settings)>,
}

pub struct TestEnv {
    pub sim: SimHandle,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: Arc<AppState>,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A credentials file in Claude Code's format, expiring in `expires_in_ms`.
pub fn claude_credentials(access: &str, refresh: &str, expires_in_ms: i64) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    serde_json::json!({
        "claudeAiOauth": {
            "accessToken": access,
            "refreshToken": refresh,
            "expiresAt": now + expires_in_ms,
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max"
        },
        "otherTool": {"keep": true}
    })
}

impl TestEnv {
    pub async fn start(opts: Opts) -> TestEnv {
        let sim = ccproxy::sim::start(SocketAddr::from(([127, 0, 0, 1], 0)), true)
            .await
            .expect("sim starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        let args = ServeArgs {
            host: Some("127.0.0.1".into()),
            port: Some(0),
            upstream_url: Some(sim.url()),
            ..ServeArgs::default()
        };
        let mut args = args;
        args.common.config = Some(config);
        let mut settings = Settings::resolve(&args).expect("settings");
        // Hermetic: no credentials from the real environment.
        settings.paths.home_dir = Some(dir.path().join("home"));
        settings.paths.config_dir = dir.path().join("config");
        settings.credentials.api_key = opts.api_key.map(Secret::new);
        settings.server.auth_token = opts.auth_token.map(Secret::new);
        settings.credentials.oauth_token_url = format!("{}/v1/oauth/token", sim.url());
        if let Some(skew) = opts.refresh_skew {
            settings.credentials.refresh_skew = skew;
        }
        if let Some(creds) = &opts.credentials {
            let path = dir.path().join("credentials.json");
            std::fs::write(&path, serde_json::to_vec_pretty(creds).unwrap()).unwrap();
            settings.credentials.credentials_file = Some(path);
        }
        if let Some(n) = opts.max_body_bytes {
            settings.limits.max_body_bytes = n;
        }
        if let Some(t) = opts.upstream_timeout {
            settings.upstream.timeout = t;
        }
        if let Some(u) = &opts.upstream_url {
            settings.upstream.target = UpstreamTarget::Url(u.clone());
        }
        settings.usage.db = opts
            .usage_db
            .clone()
            .unwrap_or_else(|| dir.path().join("usage.db"));
        // Two serving threads, whatever the machine's cores: tests that count connections see
        // the same spread everywhere.
        settings.server.workers = 2;
        if let Some(tweak) = opts.tweak {
            tweak(&mut settings);
        }
        let server = Server::bind(settings).await.expect("server binds");
        let addr = server.local_addr().unwrap();
        let state = server.state.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestEnv {
            sim,
            addr,
            client: ccproxy::http::client_builder().build().unwrap(),
            state,
            dir,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn sim_state(&self) -> &SimState {
        &self.sim.state
    }

    pub fn credentials_path(&self) -> PathBuf {
        self.dir.path().join("credentials.json")
    }

    /// `/health`'s view of the serving threads: their number, and the client connections open
    /// on each.
    pub async fn serving(&self) -> (u64, Vec<u64>) {
        let v: serde_json::Value = self
            .client
            .get(self.url("/health"))
            .send()
            .await
            .expect("health answers")
            .json()
            .await
            .expect("health is JSON");
        let threads = v["serving"]["threads"].as_u64().expect("serving.threads");
        let open = v["serving"]["connections"]
            .as_array()
            .expect("serving.connections")
            .iter()
            .map(|n| n.as_u64().expect("a count"))
            .collect();
        (threads, open)
    }

    /// POSTs JSON with an optional x-api-key.
    pub async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        let mut rb = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .body(serde_json::to_vec(body).unwrap());
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        rb.send().await.expect("request reaches the proxy")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestEnv {
    /// A server with an API key and default settings.
    pub async fn with_api_key() -> TestEnv {
        TestEnv::start(Opts {
            api_key: Some(API_KEY),
            ..Opts::default()
        })
        .await
    }

    /// How many requests reached the upstream's `/v1/messages`.
    pub fn upstream_messages(&self) -> usize {
        self.sim_state()
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/messages")
            .count()
    }
}
