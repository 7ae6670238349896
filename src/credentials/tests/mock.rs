//! A loopback mock of the OAuth token endpoint with the simulated upstream's contract: refresh tokens
//! rotate (a used one is revoked), unknown ones get 400 `invalid_grant`. Knobs: delay, forced
//! answers, `expires_in`, a hook run before a refresh is answered; counters of calls.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "test-client-id";

type Hook = Box<dyn FnMut(&str) + Send>;

#[derive(Default)]
struct Inner {
    /// Refresh tokens that may be used (once).
    valid_refresh: HashSet<String>,
    /// Every access token issued, with its expiry (epoch ms).
    issued: HashMap<String, i64>,
    /// Authorization codes that may be exchanged (once).
    codes: HashSet<String>,
    /// Bodies of authorization-code exchanges.
    exchanges: Vec<Value>,
    /// Every refresh token ever presented.
    presented: Vec<String>,
}

pub struct MockState {
    inner: Mutex<Inner>,
    pub calls: AtomicUsize,
    pub refresh_calls: AtomicUsize,
    pub delay_ms: AtomicU64,
    pub expires_in: AtomicU64,
    forced: Mutex<Option<(u16, Value, Option<u64>)>>,
    hook: Mutex<Option<Hook>>,
}

pub struct MockTokenServer {
    pub url: String,
    pub state: Arc<MockState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockTokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockTokenServer {
    pub async fn start() -> Self {
        let state = Arc::new(MockState {
            inner: Mutex::new(Inner::default()),
            calls: AtomicUsize::new(0),
            refresh_calls: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            expires_in: AtomicU64::new(28_800),
            forced: Mutex::new(None),
            hook: Mutex::new(None),
        });
        let app = axum::Router::new()
            .route("/v1/oauth/token", post(token))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/v1/oauth/token"),
            state,
            task,
        }
    }

    pub fn allow_refresh(&self, rt: &str) {
        self.state.lock().valid_refresh.insert(rt.to_owned());
    }

    pub fn state_revoke(&self, rt: &str) {
        self.state.lock().valid_refresh.remove(rt);
    }

    pub fn allow_code(&self, code: &str) {
        self.state.lock().codes.insert(code.to_owned());
    }

    pub fn refresh_calls(&self) -> usize {
        self.state.refresh_calls.load(Ordering::SeqCst)
    }

    pub fn set_delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_expires_in(&self, secs: u64) {
        self.state.expires_in.store(secs, Ordering::SeqCst);
    }

    pub fn force(&self, status: u16, body: Value, retry_after: Option<u64>) {
        *self.state.forced.lock().expect("lock") = Some((status, body, retry_after));
    }

    pub fn unforce(&self) {
        *self.state.forced.lock().expect("lock") = None;
    }

    pub fn set_hook(&self, hook: impl FnMut(&str) + Send + 'static) {
        *self.state.hook.lock().expect("lock") = Some(Box::new(hook));
    }

    /// Whether `access` was issued by this server and is valid at `now_ms`.
    pub fn is_valid_access(&self, access: &str, now_ms: i64) -> bool {
        self.state
            .lock()
            .issued
            .get(access)
            .is_some_and(|exp| now_ms < *exp)
    }

    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().issued.keys().cloned().collect()
    }

    pub fn presented(&self) -> Vec<String> {
        self.state.lock().presented.clone()
    }

    pub fn exchanges(&self) -> Vec<Value> {
        self.state.lock().exchanges.clone()
    }

    /// The refresh tokens currently valid.
    pub fn valid_refresh_tokens(&self) -> Vec<String> {
        self.state.lock().valid_refresh.iter().cloned().collect()
    }
}

impl MockState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("mock lock")
    }

    fn issue(&self) -> Value {
        let access = format!("sk-ant-oat01-sim-{}", uuid::Uuid::new_v4().simple());
        let refresh = format!("sk-ant-ort01-sim-{}", uuid::Uuid::new_v4().simple());
        let expires_in = self.expires_in.load(Ordering::SeqCst);
        let mut inner = self.lock();
        inner.valid_refresh.insert(refresh.clone());
        inner.issued.insert(
            access.clone(),
            crate::credentials::now_ms() + (expires_in as i64) * 1000,
        );
        json!({
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": expires_in,
            "scope": "user:inference user:profile",
            "token_type": "Bearer",
        })
    }
}

fn invalid_grant() -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid"})),
    )
        .into_response()
}

async fn token(State(st): State<Arc<MockState>>, Json(body): Json<Value>) -> Response {
    st.calls.fetch_add(1, Ordering::SeqCst);
    let grant = body["grant_type"].as_str().unwrap_or_default().to_owned();
    if grant == "refresh_token" {
        st.refresh_calls.fetch_add(1, Ordering::SeqCst);
    }
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let forced = st.forced.lock().expect("lock").clone();
    if let Some((status, body, retry_after)) = forced {
        let mut headers = HeaderMap::new();
        if let Some(r) = retry_after {
            headers.insert("retry-after", HeaderValue::from(r));
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, headers, Json(body)).into_response();
    }
    if body["client_id"] != CLIENT_ID {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_client", "error_description": "unknown client"})),
        )
            .into_response();
    }
    match grant.as_str() {
        "refresh_token" => {
            let rt = body["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if let Some(hook) = st.hook.lock().expect("lock").as_mut() {
                hook(&rt);
            }
            let ok = {
                let mut inner = st.lock();
                inner.presented.push(rt.clone());
                inner.valid_refresh.remove(&rt)
            };
            if ok {
                (StatusCode::OK, Json(st.issue())).into_response()
            } else {
                invalid_grant()
            }
        }
        "authorization_code" => {
            let code = body["code"].as_str().unwrap_or_default().to_owned();
            let ok = {
                let mut inner = st.lock();
                inner.exchanges.push(body.clone());
                inner.codes.remove(&code)
            };
            if ok
                && body["code_verifier"].is_string()
                && body["state"].is_string()
                && body["redirect_uri"] == crate::credentials::REDIRECT_URI
            {
                (StatusCode::OK, Json(st.issue())).into_response()
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "invalid_grant", "error_description": "Invalid code"})),
                )
                    .into_response()
            }
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response(),
    }
}
