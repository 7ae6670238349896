//! Application state: everything a request needs, shared by all requests, and
//! its construction from the settings. Points only down (config, upstream,
//! credentials, observability, access); the server and the pipeline read it.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::access::{Guard, ProxyToken};
use crate::config::Settings;
use crate::config::{PoolEntry, PoolSecret};
use crate::convert::models::ModelAliases;
use crate::credentials::{
    AccessToken, CredentialsConfig, Member, MemberKind, OAuthManager, Pool, PoolCell,
};
use crate::keys::ClientKeys;
use crate::observability::usage::{DEFAULT_QUEUE_CAPACITY, PriceTable, UsageStore, UsageWriter};
use crate::observability::{LogStyle, Observer, SinkFn, prom};
use crate::response_store::{MEMORY_CAPACITY, ResponseStore, sqlite::SqliteBackend};
use crate::routes::Mode;
use crate::upstream::{StreamLimits, Upstream};

/// The API key used with `--upstream-url sim` when none is configured.
pub const SIM_API_KEY: &str = "sk-ant-api03-simulated-upstream-key";

/// Everything a request needs, shared by all requests.
pub struct AppState {
    pub settings: Settings,
    pub upstream: Upstream,
    pub oauth: Option<Arc<OAuthManager>>,
    /// The server's upstream credentials, in order (see `credentials::pool`); replaced whole by
    /// [`reload_pool`].
    pub pool: PoolCell,
    /// Why subscription credentials could not be loaded, if they could not.
    pub oauth_error: Option<String>,
    pub aliases: ModelAliases,
    /// The proxy token (its digest), when one is configured.
    pub proxy_token: Option<ProxyToken>,
    /// Logs, meters and stores finished requests off the request path.
    pub observer: Arc<Observer>,
    /// Host/Origin policy.
    pub guard: Guard,
    /// At most this many requests at once (`None`: unlimited).
    pub limiter: Option<Arc<Semaphore>>,
    /// Idle timeout and shutdown signal for relayed streams.
    pub stream_limits: StreamLimits,
    /// Ends the relayed streams when the shutdown grace period is over.
    pub end_streams: crate::upstream::StreamEnder,
    /// Set when shutdown begins (no new connections): a WebSocket session closes at its next idle
    /// point instead of waiting for another request.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// The client connections open on each serving thread (`server::workers`).
    pub connections: Arc<crate::util::worker::Connections>,
    /// The usage store's writer (`None` when disabled; when the store could not
    /// be opened, a writer that drops every record and reports why).
    pub usage: Option<UsageWriter>,
    /// Stored Responses API responses (`previous_response_id`, `GET /openai/v1/responses/{id}`).
    pub responses: Arc<ResponseStore>,
    /// Client keys (in memory, kept in sync with the usage database's `client_keys`).
    pub keys: Arc<ClientKeys>,
    /// The upstream's model list, cached.
    pub models: crate::model_catalog::ModelCatalog,
    /// The shared database (`database_url = "postgres://…"`): whether it answers, how many
    /// replicas share it. `None` with SQLite.
    pub database: Option<Arc<crate::db::Link>>,
}

/// The credentials configuration implied by the settings.
pub fn credentials_config(settings: &Settings) -> CredentialsConfig {
    settings.credentials_config()
}

/// Builds the state for an upstream at `upstream_base`.
pub fn build_state(settings: Settings, upstream_base: String) -> anyhow::Result<AppState> {
    let upstream = Upstream::new(
        upstream_base,
        settings.upstream.connect_timeout,
        settings.upstream.timeout,
        settings.upstream.h2c,
        settings.upstream.h2_max_streams,
        settings.server.worker_threads(),
    )?;
    let (oauth, oauth_error) =
        match OAuthManager::discover(credentials_config(&settings), upstream.client().clone()) {
            Ok(m) => (m, None),
            Err(e) => {
                tracing::warn!(error = %e, "Claude subscription credentials are not usable");
                (None, Some(e.to_string()))
            }
        };
    let (pool, oauth) = build_pool(&settings, oauth, upstream.client(), &[])?;
    let link = crate::db::Link::new();
    if let Some(url) = &settings.usage.postgres {
        share_refreshes(&settings, &pool, url, &link);
    }
    let pool = PoolCell::new(pool);
    let aliases = ModelAliases::with_defaults().with_overrides(
        settings
            .model_aliases
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    // Keys live in the usage database; with usage recording off, an existing database's keys
    // still apply (their spend is then counted in memory only).
    let pg = settings.usage.postgres.clone();
    let (keys, observer, usage) = match &pg {
        None => {
            let db = &settings.usage.db;
            // A database that cannot even be looked for may hold keys: opened (and then
            // failing closed) rather than skipped.
            let keys_db = (settings.usage.enabled || !matches!(db.try_exists(), Ok(false)))
                .then(|| db.clone());
            let keys = ClientKeys::open(keys_db, settings.server.require_client_keys);
            let (observer, usage) = start_observer(&settings, keys.clone(), None)?;
            (keys, observer, usage)
        }
        // PostgreSQL's blocking client must not run on the async runtime's threads: the
        // first connections (migrations, the keys' first read) are made on a thread of their
        // own.
        Some(url) => std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<_> {
                    let keys = ClientKeys::open_db(
                        Some(crate::db::Database::Postgres(url.clone())),
                        settings.server.require_client_keys,
                        link.clone(),
                    );
                    let sink = crate::observability::usage::pg::PgSink::open(url, link.clone());
                    let (observer, usage) = start_observer(&settings, keys.clone(), Some(sink))?;
                    crate::db::pg::spawn_heartbeat(url.clone(), link.clone());
                    Ok((keys, observer, usage))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("opening the database panicked"))?
        })?,
    };
    let responses = Arc::new(match &pg {
        Some(url) => {
            let backend = crate::response_store::pg::PgBackend::new(url, link.clone());
            let store = ResponseStore::durable(Arc::new(backend), settings.responses.ttl).shared();
            tracing::info!(store = %store.describe(), ttl_secs = settings.responses.ttl.as_secs(), "Responses API store");
            store
        }
        None => open_response_store(&settings, usage.as_ref()),
    });
    let guard = Guard {
        loopback_only: crate::access::is_loopback_host(&settings.server.host),
        cors_origins: settings.server.cors_origins.clone(),
    };
    let limiter = (settings.limits.max_concurrent_requests > 0)
        .then(|| Arc::new(Semaphore::new(settings.limits.max_concurrent_requests)));
    let (end_streams, stream_limits) =
        crate::upstream::stream_limits(settings.upstream.stream_idle_timeout);
    let models = crate::model_catalog::ModelCatalog::new(settings.upstream.models_cache);
    let connections = Arc::new(crate::util::worker::Connections::new(
        settings.server.worker_threads(),
    ));
    Ok(AppState {
        models,
        proxy_token: settings
            .server
            .auth_token
            .as_ref()
            .map(|t| ProxyToken::new(t.expose())),
        settings,
        upstream,
        oauth,
        pool,
        oauth_error,
        aliases,
        observer,
        guard,
        limiter,
        stream_limits,
        end_streams,
        draining: tokio::sync::watch::Sender::new(false),
        connections,
        usage,
        responses,
        keys,
        database: pg.map(|_| link),
    })
}

/// How often a replica exchanges credential state (cooldowns, holds, unified limits) through
/// the shared database.
pub const CREDENTIAL_STATE_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// With a shared database: starts the thread that shares the pool's credential state with the
/// other replicas every [`CREDENTIAL_STATE_EVERY`] (`credentials::fleet::sync_state`).
pub fn share_credential_state(state: &Arc<AppState>) {
    let (Some(url), Some(link)) = (
        state.settings.usage.postgres.clone(),
        state.database.clone(),
    ) else {
        return;
    };
    let weak = Arc::downgrade(state);
    let spawned = std::thread::Builder::new()
        .name("ccproxy-credential-state".into())
        .spawn(move || {
            let mut conn = crate::db::pg::Conn::new(url, link, None);
            loop {
                std::thread::sleep(CREDENTIAL_STATE_EVERY);
                let Some(state) = weak.upgrade() else { return };
                let pool = state.pool.get();
                drop(state);
                crate::credentials::fleet::sync_state(
                    &mut conn,
                    &pool,
                    crate::util::time::now_secs(),
                );
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the credential-state thread; cooldowns are not shared");
    }
}

/// With a shared database, each subscription refreshes once for the whole fleet
/// (`credentials::fleet`).
fn share_refreshes(
    settings: &Settings,
    pool: &Pool,
    url: &crate::db::PgUrl,
    link: &Arc<crate::db::Link>,
) {
    let secret = settings
        .usage
        .secret
        .as_ref()
        .map(|s| s.expose().to_owned());
    for m in pool.members() {
        if let MemberKind::OAuth(mgr) = &m.kind {
            if secret.is_none() {
                tracing::warn!(credential = %m.name, "database_secret is not set: refreshed OAuth tokens are not shared through the database; replicas must share the credentials file");
            }
            mgr.share_with(crate::credentials::fleet::Fleet::new(
                url.clone(),
                &m.name,
                secret.as_deref(),
                link.clone(),
            ));
        }
    }
}

/// The credential pool: the `[[credentials]]` tables, or the implicit pool of today's single
/// settings (the discovered subscription as `server_oauth`, then `api_key` as `server_api_key`).
/// Returns it with the subscription `/health` and `ccproxy auth` describe (the first OAuth member).
fn build_pool(
    settings: &Settings,
    discovered: Option<Arc<OAuthManager>>,
    http: &reqwest::Client,
    keep: &[Arc<Member>],
) -> anyhow::Result<(Pool, Option<Arc<OAuthManager>>)> {
    let c = &settings.credentials;
    let all_modes = vec![Mode::Full, Mode::Minimal, Mode::Passthrough];
    let mut members = Vec::new();
    if c.pool.is_empty() {
        if let Some(mgr) = &discovered {
            let kind = MemberKind::OAuth(mgr.clone());
            members.push(Member::new(
                "server_oauth",
                kind,
                vec![Mode::Full],
                Vec::new(),
                c.plan_limits_only,
            ));
        }
        if let Some(key) = &c.api_key {
            let kind = MemberKind::ApiKey(AccessToken::new(key.expose()));
            members.push(Member::new(
                "server_api_key",
                kind,
                all_modes,
                Vec::new(),
                c.plan_limits_only,
            ));
        }
        return Ok((Pool::implicit(members, c.routing), discovered));
    }
    let mut first_oauth = None;
    for entry in &c.pool {
        // A subscription kept by name keeps its token manager (one refresher per login).
        let kept = keep.iter().find_map(|m| match &m.kind {
            MemberKind::OAuth(mgr) if m.name == entry.name => Some(mgr.clone()),
            _ => None,
        });
        let kind = match (kept, &entry.secret) {
            (Some(mgr), PoolSecret::OAuthFile(_)) => Some(MemberKind::OAuth(mgr)),
            _ => member_kind(settings, entry, http)?,
        };
        let Some(kind) = kind else {
            continue;
        };
        if let (MemberKind::OAuth(m), None) = (&kind, &first_oauth) {
            first_oauth = Some(m.clone());
        }
        members.push(Member::new(
            entry.name.clone(),
            kind,
            entry.modes.clone(),
            entry.models.clone(),
            entry.plan_limits_only,
        ));
    }
    Ok((Pool::new(members, c.routing), first_oauth))
}

/// Re-reads the configuration file's credential pool (`[[credentials]]`, `credential_routing`,
/// `plan_limits_only`) and installs it; requests in flight finish on the pool they started with.
/// Returns how many credentials the new pool has. An invalid file changes nothing.
pub fn reload_pool(state: &AppState) -> anyhow::Result<usize> {
    let path = &state.settings.paths.config_file;
    let file = crate::config::read_file_config(path, false)?;
    let mut settings = state.settings.clone();
    crate::config::apply_pool_settings(&mut settings, file)?;
    let old = state.pool.get();
    let discovered = state.oauth.clone();
    let (pool, _) = build_pool(
        &settings,
        discovered,
        state.upstream.client(),
        old.members(),
    )?;
    for m in pool.members() {
        let new_manager = matches!(&m.kind, MemberKind::OAuth(mgr)
            if !old.members().iter().any(|o| matches!(&o.kind, MemberKind::OAuth(k) if Arc::ptr_eq(k, mgr))));
        if let (true, MemberKind::OAuth(mgr)) = (new_manager, &m.kind) {
            mgr.spawn_background_refresh();
        }
    }
    if let (Some(url), Some(link)) = (&state.settings.usage.postgres, &state.database) {
        share_refreshes(&settings, &pool, url, link);
    }
    let n = pool.members().len();
    state.pool.replace(pool);
    Ok(n)
}

/// The credential of one `[[credentials]]` table; a subscription whose file cannot be used is
/// left out of the pool, with a warning naming it.
fn member_kind(
    settings: &Settings,
    entry: &PoolEntry,
    http: &reqwest::Client,
) -> anyhow::Result<Option<MemberKind>> {
    if let Some(key) = entry.secret.api_key() {
        let key = key.map_err(|why| anyhow::anyhow!("credential {:?}: {why}", entry.name))?;
        return Ok(Some(MemberKind::ApiKey(AccessToken::new(key.expose()))));
    }
    Ok(match &entry.secret {
        PoolSecret::ApiKey(_) | PoolSecret::ApiKeyEnv(_) => None,
        PoolSecret::OAuthFile(path) => {
            let mut cfg = credentials_config(settings);
            cfg.credentials_file = Some(path.clone());
            match OAuthManager::discover(cfg, http.clone()) {
                Ok(Some(m)) => Some(MemberKind::OAuth(m)),
                Ok(None) => {
                    tracing::warn!(credential = %entry.name, path = %path.display(), "no subscription credentials in this file; the credential is left out");
                    None
                }
                Err(e) => {
                    tracing::warn!(credential = %entry.name, error = %e, "subscription credentials are not usable; the credential is left out");
                    None
                }
            }
        }
    })
}

/// The response store: the usage database's `responses` table when usage recording is on and
/// its database opened, else memory (the last [`MEMORY_CAPACITY`]); the log says which.
fn open_response_store(settings: &Settings, usage: Option<&UsageWriter>) -> ResponseStore {
    let ttl = settings.responses.ttl;
    let memory = |reason: String| {
        tracing::warn!(%reason, capacity = MEMORY_CAPACITY, "stored responses are kept in memory only and lost at exit");
        ResponseStore::memory(ttl, MEMORY_CAPACITY, reason)
    };
    let store = match usage {
        None => memory("usage recording is off (--no-usage or usage = false)".to_owned()),
        Some(w) if w.open_error().is_some() => {
            memory("the usage database cannot be used".to_owned())
        }
        Some(_) => match SqliteBackend::open(&settings.usage.db) {
            Ok(b) => ResponseStore::durable(Arc::new(b), ttl),
            Err(e) => memory(format!("the usage database cannot be used: {e}")),
        },
    };
    tracing::info!(store = %store.describe(), ttl_secs = ttl.as_secs(), "Responses API store");
    store
}

/// The observer thread (logs, metrics, cost) and the usage store it feeds.
fn start_observer(
    settings: &Settings,
    keys: Arc<ClientKeys>,
    pg: Option<crate::observability::usage::pg::PgSink>,
) -> anyhow::Result<(Arc<Observer>, Option<UsageWriter>)> {
    // Installs the process-wide metrics recorder before any request is metered.
    let _ = prom::handle();
    let prices = PriceTable::with_overrides(&settings.prices)
        .map_err(|e| anyhow::anyhow!("invalid [prices] in the config file: {e}"))?;
    let usage = if let Some(sink) = pg {
        // Usage rows are always recorded in a shared database (the keys' spend needs them).
        Some(crate::observability::usage::store::spawn_sink(
            Box::new(sink),
            settings.usage.database(),
            DEFAULT_QUEUE_CAPACITY,
        ))
    } else if settings.usage.enabled {
        match UsageStore::open(&settings.usage.db) {
            Ok(store) => Some(store.spawn_writer(DEFAULT_QUEUE_CAPACITY)),
            Err(e) => {
                tracing::error!(error = %e, "usage recording is off: the usage database cannot be used");
                // Kept, so /health, /api/usage and the metrics say so.
                Some(UsageWriter::unavailable(&settings.usage.db, &e))
            }
        }
    } else {
        None
    };
    // Finished requests feed their client key's counters (tokens, spend), then the store.
    let writer = usage.clone();
    let sink: Option<SinkFn> = Some(Box::new(move |r| {
        if let Some(name) = r.client_key.as_deref() {
            let t = &r.tokens;
            let tokens = t.input + t.output + t.cache_read + t.cache_write;
            keys.finished(name, r.ts_ms, tokens, r.cost_usd, r.model.as_deref());
        }
        if let Some(w) = &writer {
            w.record(r);
        }
    }));
    let log_style = if settings.logging.format == crate::config::LogFormat::Json {
        LogStyle::Json
    } else {
        LogStyle::Pretty
    };
    let observer = Observer::start(
        16 * 1024,
        Box::new(move |model, tokens| prices.cost(model, tokens)),
        sink,
        log_style,
    );
    Ok((observer, usage))
}
