//! `GET /v1/models/{id}` of the simulated upstream: one model of [`super::MODELS`], or 404.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};

use super::{MODELS, SimState, bodyless, check_auth, model_object, sim_err};

pub async fn retrieve(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let parts = bodyless(&state, req);
    if let Err(e) = check_auth(&state, &parts.headers) {
        return e.into_response();
    }
    match MODELS.iter().find(|m| m.0 == id) {
        Some(m) => axum::Json(model_object(m)).into_response(),
        None => sim_err(404, &format!("model: {id}")).into_response(),
    }
}
