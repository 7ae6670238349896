//! A throwaway PostgreSQL cluster and three ccproxy replicas against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccproxy::cli::ServeArgs;
use ccproxy::config::{Secret, Settings};
use ccproxy::db::PgUrl;
use ccproxy::server::{AppState, Server};
use ccproxy::sim::SimHandle;

use crate::support;

/// The directory of `initdb` and `postgres`: on `PATH`, else Debian's versioned directory.
fn pg_bin() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(dir) = p.parent() {
            return dir.to_owned();
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|b| b.join("initdb").exists())
        .expect("PostgreSQL is not installed (initdb not found): .ci/run installs Debian's postgresql package")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when we are root (initdb and postgres refuse root).
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL cluster in a temporary directory, stopped (and removed) when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("ccproxy-pg-")
            .tempdir()
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown to the postgres user");
        }
        let out = as_pg_user(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                "ccproxy",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = support::free_port();
        let mut c = Cluster {
            dir,
            port,
            child: None,
        };
        c.run();
        c
    }

    /// Starts the server on the existing data directory and waits until it accepts.
    pub fn run(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("pg.log")).unwrap();
        let child = as_pg_user(&pg_bin().join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = self.url();
        // The blocking client must not run on an async runtime's thread: a thread of its own.
        let ready = || {
            std::thread::scope(|s| {
                s.spawn(|| postgres::Client::connect(url.expose(), postgres::NoTls).is_ok())
                    .join()
                    .unwrap_or(false)
            })
        };
        loop {
            if ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The postmaster's pid (the child may be `runuser`, which does not forward signals).
            let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
                .ok()
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| child.id().to_string());
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> PgUrl {
        PgUrl::new(&format!(
            "postgres://ccproxy@127.0.0.1:{}/postgres",
            self.port
        ))
    }

    /// A blocking client (run it off the async runtime: `blocking`).
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(self.url().expose(), postgres::NoTls).unwrap()
    }

    /// `SELECT count(*) …` on a thread of its own.
    pub async fn count(&self, sql: &str) -> i64 {
        let url = self.url();
        let sql = sql.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(url.expose(), postgres::NoTls).unwrap();
            c.query_one(&sql, &[]).unwrap().get::<_, i64>(0)
        })
        .await
        .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

pub const ADMIN: &str = "admin-token-for-replica-tests";

/// One ccproxy replica in process.
pub struct Replica {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Replica {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Options of a fleet.
#[derive(Default, Clone)]
pub struct FleetOpts {
    /// A Claude Code credentials file (each replica gets its own copy: separate machines).
    pub credentials: Option<serde_json::Value>,
    pub database_secret: Option<&'static str>,
    /// One credentials file for all three (one host, or a shared volume).
    pub shared_credentials_file: bool,
    pub refresh_skew: Option<Duration>,
}

/// The upstream, three replicas, and the client.
pub struct Fleet {
    pub sim: SimHandle,
    pub replicas: Vec<Replica>,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl Fleet {
    pub async fn start(pg: &Cluster, opts: FleetOpts) -> Fleet {
        let sim = ccproxy::sim::start(SocketAddr::from(([127, 0, 0, 1], 0)), true)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut replicas = Vec::new();
        for i in 0..3 {
            replicas.push(start_replica(pg, &sim, dir.path(), i, &opts).await);
        }
        Fleet {
            sim,
            replicas,
            client: ccproxy::http::client_builder().build().unwrap(),
            dir,
        }
    }

    /// POSTs JSON to replica `i` with an optional key.
    pub async fn post(
        &self,
        i: usize,
        path: &str,
        key: Option<&str>,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        let mut rb = self
            .client
            .post(self.replicas[i].url(path))
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .json(body);
        if let Some(k) = key {
            rb = rb.header("x-api-key", k);
        }
        rb.send().await.unwrap()
    }

    pub async fn health(&self, i: usize) -> serde_json::Value {
        self.client
            .get(self.replicas[i].url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

async fn start_replica(
    pg: &Cluster,
    sim: &SimHandle,
    dir: &Path,
    i: usize,
    opts: &FleetOpts,
) -> Replica {
    let home = dir.join(format!("replica{i}"));
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join("config.toml");
    std::fs::write(&config, "").unwrap();
    let mut args = ServeArgs {
        host: Some("127.0.0.1".into()),
        port: Some(0),
        upstream_url: Some(sim.url()),
        ..ServeArgs::default()
    };
    args.common.config = Some(config);
    let mut settings = Settings::resolve(&args).unwrap();
    settings.paths.home_dir = Some(home.join("home"));
    settings.paths.config_dir = home.join("config");
    settings.server.auth_token = Some(Secret::new(ADMIN));
    settings.credentials.oauth_token_url = format!("{}/v1/oauth/token", sim.url());
    settings.usage.db = home.join("unused.db");
    settings.usage.postgres = Some(pg.url());
    settings.usage.secret = opts.database_secret.map(Secret::new);
    if let Some(skew) = opts.refresh_skew {
        settings.credentials.refresh_skew = skew;
    }
    match &opts.credentials {
        Some(creds) => {
            let path = if opts.shared_credentials_file {
                dir.join("shared-credentials.json")
            } else {
                home.join("credentials.json")
            };
            // A shared file is written once (a replica may have refreshed it already).
            if !path.exists() {
                std::fs::write(&path, serde_json::to_vec_pretty(creds).unwrap()).unwrap();
            }
            settings.credentials.credentials_file = Some(path);
        }
        None => settings.credentials.api_key = Some(Secret::new(support::API_KEY)),
    }
    let server = Server::bind(settings).await.unwrap();
    let addr = server.local_addr().unwrap();
    let state = server.state.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Replica {
        addr,
        state,
        shutdown: Some(tx),
    }
}
