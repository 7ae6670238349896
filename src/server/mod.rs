//! The HTTP server: the router (from the route table), admission (Host/Origin
//! guard, concurrency limit), operational endpoints, and serving with graceful
//! shutdown. Application state lives in `state.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::access::{self, Verdict};
use crate::config::{Settings, UpstreamTarget};
use crate::error::{ErrorKind, Origin, ProxyError};
use crate::observability::prom;
use crate::observability::usage::{UsageHealth, dashboard};
use crate::pipeline;
use crate::routes::{self, Dialect, Mode, Route, Verb};
use crate::sim::SimHandle;
pub use crate::state::{AppState, credentials_config};

mod conn;
mod socket;
mod workers;
pub use conn::ConnLimits;

/// A server ready to accept connections, and the simulated upstream it may own.
pub struct Server {
    pub state: Arc<AppState>,
    pub listener: TcpListener,
    pub sim: Option<SimHandle>,
    /// Limits on client connections (timeouts, how many).
    pub limits: ConnLimits,
}

impl Server {
    /// Binds the listener, starts the simulated upstream if asked, loads credentials.
    pub async fn bind(mut settings: Settings) -> anyhow::Result<Server> {
        let (base, sim) = match &settings.upstream.target {
            UpstreamTarget::Url(u) => (u.clone(), None),
            UpstreamTarget::Sim => {
                let sim = crate::sim::start(SocketAddr::from(([127, 0, 0, 1], 0)), false).await?;
                // The try-it path works without any account: the simulated
                // upstream accepts any well-formed key, so provide one.
                if settings.credentials.api_key.is_none() {
                    settings.credentials.api_key =
                        Some(crate::config::Secret::new(crate::state::SIM_API_KEY));
                }
                (sim.url(), Some(sim))
            }
        };
        if !access::is_loopback_host(&settings.server.host)
            && settings.server.auth_token.is_none()
            && !settings.server.allow_open
        {
            anyhow::bail!(
                "refusing to listen on {} without a proxy token: anyone who can reach it could use \
                 your Claude account. Set --auth-token (or CCPROXY_AUTH_TOKEN), or pass --allow-open \
                 to run an open proxy on purpose",
                settings.server.host
            );
        }
        // Credentials are loaded (and stale temporary files swept) before the port opens: a
        // client that can connect sees a server that is fully set up.
        let host = settings.server.host.clone();
        let port = settings.server.port;
        let limits = ConnLimits {
            header_read_timeout: settings.limits.header_read_timeout,
            max_connections: settings.limits.max_connections,
        };
        let state = crate::state::build_state(settings, base)?;
        let listener = crate::util::net::listen(host.as_str(), port)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {host}:{port}: {e}",))?;
        conn::raise_open_file_limit(limits.max_connections);
        Ok(Server {
            state: {
                let state = Arc::new(state);
                crate::state::share_credential_state(&state);
                state
            },
            listener,
            sim,
            limits,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting, lets in-flight
    /// requests and streams finish within the grace period, ends the streams still
    /// open with an error event, and returns.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        for member in self.state.pool.get().members() {
            if let crate::credentials::MemberKind::OAuth(mgr) = &member.kind {
                mgr.spawn_background_refresh();
            }
        }
        let state = self.state.clone();
        let app = router(self.state.clone());
        let _sim = self.sim;
        let limits = self.limits.clone();
        let graceful = GracefulShutdown::new();
        let workers = workers::Workers::start(&state.connections, &app, &limits).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot start the serving threads: {e}"))
        })?;
        conn::accept_loop(self.listener, &workers, &limits, &graceful, shutdown).await;
        state.draining.send_replace(true);
        tracing::info!("shutting down: no new connections; waiting for in-flight requests");
        let all_closed = graceful.shutdown();
        tokio::pin!(all_closed);
        let grace = state.settings.server.shutdown_grace;
        if tokio::time::timeout(grace, &mut all_closed).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs_f64(),
                "grace period over: ending open streams"
            );
            state.end_streams.end();
            // Give the error events a moment to reach the clients.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut all_closed).await;
        }
        workers.stop().await;
        flush_records(&state).await;
        Ok(())
    }
}

/// Writes out what the observer and the usage store still hold (at shutdown).
async fn flush_records(state: &Arc<AppState>) {
    let state = state.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let timeout = std::time::Duration::from_secs(5);
        state.observer.flush(timeout);
        if let Some(w) = &state.usage {
            w.flush_timeout(timeout);
        }
        state.responses.flush(timeout);
    })
    .await;
}

/// The router: operational endpoints, then every proxied route of the table in
/// [`crate::routes`], each answering its method (any other gets 405 in the
/// route's dialect); anything else is a 404 in the dialect its path suggests.
pub fn router(state: Arc<AppState>) -> Router {
    let ops_405 = |req: Request| async move { method_not_allowed(Dialect::Anthropic, req) };
    let mut r = Router::new()
        .route("/health", get(health).fallback(ops_405))
        .route("/metrics", get(metrics).fallback(ops_405))
        .route("/dashboard", get(dashboard_page).fallback(ops_405))
        .route("/dashboard/keys", get(keys_page).fallback(ops_405))
        .route("/api/usage", get(api_usage).fallback(ops_405))
        .route(
            "/api/keys",
            get(api_keys_list).post(api_keys_create).fallback(ops_405),
        )
        .route(
            "/api/keys/{name}",
            axum::routing::delete(api_keys_revoke).fallback(ops_405),
        )
        .route(
            "/api/keys/{name}/rotate",
            post(api_keys_rotate).fallback(ops_405),
        )
        .route(
            "/api/models/refresh",
            post(api_models_refresh).fallback(ops_405),
        );
    for (path, mode, entry) in routes::table() {
        r = r.route(&path, endpoint(mode, entry.route, entry.verb));
    }
    r.fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admission,
        ))
        .with_state(state)
}

/// Before routing: the Host/Origin guard (and CORS preflight), then the
/// concurrency limit, held until the response body is done.
async fn admission(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let dialect = Dialect::of_path(req.uri().path());
    let cors = match state
        .guard
        .check(req.method(), req.version(), req.headers())
    {
        Ok(Verdict::Allow(cors)) => cors,
        Ok(Verdict::Respond(resp)) => return resp,
        Err(e) => {
            tracing::warn!(error = %e.message(), "request refused by the guard");
            return e.into_response(dialect);
        }
    };
    let permit = match &state.limiter {
        None => None,
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                return ProxyError::unavailable(
                    format!(
                        "ccproxy is serving its maximum of {} concurrent requests; retry shortly",
                        state.settings.limits.max_concurrent_requests
                    ),
                    1,
                )
                .into_response(dialect);
            }
        },
    };
    let mut resp = next.run(req).await;
    access::add_cors(&mut resp, cors);
    if let Some(permit) = permit {
        // Moved into the body by the serving thread ([`Permitted::new`]).
        resp.extensions_mut().insert(HeldPermit {
            _permit: Arc::new(permit),
        });
    }
    resp
}

/// A concurrency permit, in a response's extensions on its way out of the router.
#[derive(Clone)]
struct HeldPermit {
    _permit: Arc<tokio::sync::OwnedSemaphorePermit>,
}

/// A response body that holds its request's concurrency permit until it is done. It wraps the
/// router's body outside the router, at the connection, so that a streamed body is one box
/// deep, not two (each box an event goes through is a likely cache miss with thousands of
/// streams).
pub(super) struct Permitted {
    body: Body,
    _permit: Option<HeldPermit>,
}

impl Permitted {
    /// The router's response, its permit (if it holds one) moved into its body.
    pub(super) fn new(resp: Response) -> axum::http::Response<Permitted> {
        let (mut parts, body) = resp.into_parts();
        let permit = parts.extensions.remove::<HeldPermit>();
        axum::http::Response::from_parts(
            parts,
            Permitted {
                body,
                _permit: permit,
            },
        )
    }
}

impl http_body::Body for Permitted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// One proxied endpoint: its method goes to the pipeline, any other gets 405.
fn endpoint(mode: Mode, route: Route, verb: Verb) -> MethodRouter<Arc<AppState>> {
    let handler = move |State(state): State<Arc<AppState>>, req: Request| {
        pipeline::handle(state, mode, route, req)
    };
    let dialect = route.dialect();
    let mr = match verb {
        Verb::Get => get(handler),
        Verb::Post => post(handler),
        Verb::GetDelete => get(handler).delete(handler),
        Verb::Any => return any(handler),
        Verb::PostOrSocket => {
            post(handler).get(move |State(state): State<Arc<AppState>>, req: Request| {
                socket::upgrade(state, mode, req)
            })
        }
    };
    mr.fallback(move |req: Request| async move { method_not_allowed(dialect, req) })
}

fn method_not_allowed(dialect: Dialect, req: Request) -> Response {
    ProxyError::new(
        ErrorKind::MethodNotAllowed,
        Origin::Client,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response(dialect)
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    let dialect = Dialect::of_path(path);
    ProxyError::not_found(format!(
        "no route for {} {path}; see the README for the routes of each mode",
        req.method()
    ))
    .into_response(dialect)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let oauth = state.oauth.as_ref().map(|m| {
        let s = m.status();
        serde_json::json!({
            "source": s.source.description,
            "expires_at_ms": s.expires_at_ms,
            "expired": s.expired,
            "subscription_type": s.subscription_type,
            "last_refresh_error": s.last_refresh_error,
        })
    });
    let active = match (&oauth, &state.settings.credentials.api_key) {
        (Some(o), _) if o["expired"] == false => "oauth",
        (_, Some(_)) => "api_key",
        (Some(_), None) => "oauth_expired",
        (None, None) => "client",
    };
    let usage = match &state.usage {
        Some(w) => w.health(),
        None => UsageHealth::disabled(&state.settings.usage.db),
    };
    let keys_error = state.keys.unreadable();
    let healthy =
        usage.healthy && keys_error.is_none() && state.database.as_ref().is_none_or(|l| l.is_up());
    let body = serde_json::json!({
        // Degraded: the proxy serves, but something it owns (the usage store, the shared
        // database) fails, or it refuses requests because its client keys cannot be read.
        "status": if healthy { "ok" } else { "degraded" },
        "database": state.database.as_ref().map(|l| l.health()),
        "version": env!("CARGO_PKG_VERSION"),
        "upstream": state.settings.upstream_display(),
        "upstream_base": state.upstream.base(),
        "auth_required": state.proxy_token.is_some() || state.keys.enforced(),
        "client_keys": state.keys.count(),
        // The threads serving client connections, and the connections open on each.
        "serving": {
            "threads": state.connections.threads(),
            "connections": state.connections.open(),
        },
        // Why every client key is refused (503), while the keys cannot be read.
        "client_keys_error": keys_error,
        "credentials": {
            "active": active,
            "oauth": oauth,
            "oauth_error": state.oauth_error,
            "server_api_key": state.settings.credentials.api_key.is_some(),
            "routing": state.pool.get().routing().name(),
            "pool": state.pool.get().snapshot(crate::util::time::now_secs()),
        },
        "usage": usage,
        "responses": state.responses.health(),
    });
    axum::Json(body).into_response()
}

/// The proxy token on operational endpoints (metrics, usage, dashboard).
fn ops_access(state: &AppState, req: &Request) -> Result<(), ProxyError> {
    let query_token =
        axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri())
            .ok()
            .and_then(|q| q.0.get("token").cloned());
    access::refuse_client_key(&state.keys, req.headers(), query_token.as_deref())?;
    access::check_ops(
        state.proxy_token.as_ref(),
        req.headers(),
        query_token.as_deref(),
    )
}

/// `/api/keys`: the admin token; without one, only on a loopback-only server (whoever can
/// reach it can also run `ccproxy keys` there).
fn keys_access(state: &AppState, req: &Request) -> Result<(), ProxyError> {
    ops_access(state, req)?;
    if state.proxy_token.is_none() && !state.guard.loopback_only {
        return Err(ProxyError::new(
            ErrorKind::Forbidden,
            Origin::Client,
            "managing client keys over HTTP needs an admin token on a server that is not              loopback-only: set auth_token",
        ));
    }
    Ok(())
}

fn key_error(e: &crate::keys::store::KeyError) -> Response {
    let status =
        axum::http::StatusCode::from_u16(e.status()).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let kind = match e.status() {
        404 => "not_found_error",
        409 | 400 => "invalid_request_error",
        _ => "api_error",
    };
    let body =
        serde_json::json!({"type": "error", "error": {"type": kind, "message": e.to_string()}});
    (status, axum::Json(body)).into_response()
}

/// Runs a key operation off the runtime; its answer as JSON.
async fn key_op<T: serde::Serialize + Send + 'static>(
    state: &Arc<AppState>,
    status: axum::http::StatusCode,
    f: impl FnOnce(&mut crate::keys::store::KeyDb) -> Result<T, crate::keys::store::KeyError>
    + Send
    + 'static,
) -> Response {
    let keys = state.keys.clone();
    match tokio::task::spawn_blocking(move || keys.change(f)).await {
        Ok(Ok(v)) => (status, axum::Json(v)).into_response(),
        Ok(Err(e)) => key_error(&e),
        Err(e) => ProxyError::new(
            ErrorKind::Internal,
            Origin::Proxy,
            format!("key operation failed: {e}"),
        )
        .into_response(Dialect::Anthropic),
    }
}

async fn api_keys_list(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if let Err(e) = keys_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    let now = crate::util::time::now_ms();
    key_op(&state, axum::http::StatusCode::OK, move |db| {
        Ok(serde_json::json!({"keys": db.list(now)?}))
    })
    .await
}

async fn api_keys_create(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if let Err(e) = keys_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    let limit = 64 * 1024;
    let bytes = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(b) => b,
        Err(_) => {
            return ProxyError::invalid("the request body is too large or unreadable")
                .into_response(Dialect::Anthropic);
        }
    };
    let request: crate::keys::KeyRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return ProxyError::invalid(format!("invalid key request: {e}"))
                .into_response(Dialect::Anthropic);
        }
    };
    let now = crate::util::time::now_ms();
    let limits = match request.limits(now) {
        Ok(l) => l,
        Err(e) => return ProxyError::invalid(e).into_response(Dialect::Anthropic),
    };
    let name = request.name;
    key_op(&state, axum::http::StatusCode::CREATED, move |db| {
        let key = db.create(&name, &limits, now)?;
        let view = db.list(now)?.into_iter().find(|k| k.name == name);
        Ok(serde_json::json!({"name": name, "key": key, "details": view}))
    })
    .await
}

async fn api_keys_revoke(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    req: Request,
) -> Response {
    if let Err(e) = keys_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    let now = crate::util::time::now_ms();
    key_op(&state, axum::http::StatusCode::OK, move |db| {
        db.revoke(&name, now)?;
        Ok(serde_json::json!({"name": name, "revoked": true}))
    })
    .await
}

async fn api_keys_rotate(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    req: Request,
) -> Response {
    if let Err(e) = keys_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    key_op(&state, axum::http::StatusCode::OK, move |db| {
        let key = db.rotate(&name)?;
        Ok(serde_json::json!({"name": name, "key": key}))
    })
    .await
}

async fn metrics(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if let Err(e) = ops_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    credential_gauges(&state);
    for (i, n) in state.connections.open().into_iter().enumerate() {
        metrics::gauge!("ccproxy_client_connections", "thread" => i.to_string()).set(n as f64);
    }
    if let Some(load) = state.upstream.lanes() {
        metrics::gauge!("ccproxy_upstream_lanes").set(load.lanes as f64);
        metrics::gauge!("ccproxy_upstream_lane_requests").set(load.in_flight as f64);
        if let Some(n) = load.per_connection {
            metrics::gauge!("ccproxy_upstream_streams_per_connection").set(n as f64);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prom::render(),
    )
        .into_response()
}

/// Per-credential gauges, read from the pool when metrics are scraped.
fn credential_gauges(state: &AppState) {
    for m in state.pool.get().snapshot(crate::util::time::now_secs()) {
        let name = m.name.clone();
        let available = if m.state == "available" { 1.0 } else { 0.0 };
        metrics::gauge!("ccproxy_credential_available", "credential" => name.clone())
            .set(available);
        metrics::gauge!("ccproxy_credential_in_flight", "credential" => name.clone())
            .set(m.in_flight as f64);
        let until = m.until.unwrap_or(0) as f64;
        metrics::gauge!("ccproxy_credential_unavailable_until_seconds", "credential" => name.clone())
            .set(until);
        if let Some(u) = &m.unified {
            for (window, v) in [
                ("5h", u.five_hour_utilization),
                ("7d", u.seven_day_utilization),
            ] {
                if let Some(v) = v {
                    metrics::gauge!("ccproxy_credential_utilization", "credential" => name.clone(), "window" => window)
                        .set(v);
                }
            }
        }
    }
}

async fn dashboard_page(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if let Err(e) = ops_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    dashboard::page()
}

async fn keys_page(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if let Err(e) = keys_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    dashboard::keys_page()
}

/// `POST /api/models/refresh` (`ccproxy models refresh`): fetches the upstream's model list
/// again now, with the server's credentials (full mode's, else minimal mode's), and answers it in
/// the Anthropic shape with its `x-ccproxy-models-source`.
async fn api_models_refresh(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if let Err(e) = ops_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    state.models.invalidate();
    let pool = state.pool.get();
    let mode = if pool.members().iter().any(|m| m.serves(Mode::Full, None)) {
        Mode::Full
    } else {
        Mode::Minimal
    };
    let (mut parts, _) = req.into_parts();
    parts.method = axum::http::Method::GET;
    parts.uri = axum::http::Uri::from_static("/v1/models");
    let req = Request::from_parts(parts, axum::body::Body::empty());
    crate::pipeline::handle(state, mode, routes::Route::Models, req).await
}

async fn api_usage(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<dashboard::ApiQuery>,
    req: Request,
) -> Response {
    if let Err(e) = ops_access(&state, &req) {
        return e.into_response(Dialect::Anthropic);
    }
    dashboard::api_usage_of(state.usage.as_ref(), query).await
}
