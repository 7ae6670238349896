//! `GET /v1/models/{id}` of the simulated upstream: one model of [`super::MODELS`], or 404.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};

use super::{MODELS, SimState, bodyless, check_auth, sim_err};

pub async fn retrieve(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    if let Err(e) = check_auth(&state, &parts.headers) {
        return e.into_response();
    }
    match MODELS.iter().find(|(m, _)| *m == id) {
        Some((m, name)) => axum::Json(serde_json::json!({
            "type": "model", "id": m, "display_name": name,
            "created_at": "2025-09-29T00:00:00Z"
        }))
        .into_response(),
        None => sim_err(404, &format!("model: {id}")).into_response(),
    }
}
