//! Health endpoints for load balancers and orchestrators: `live` (the process answers),
//! `startup` (the model has loaded), `ready` (send traffic: loaded, engine running, not
//! shutting down, KV cache not above `--ready-max-kv-usage`); `/health` is `ready`. Never
//! behind API keys, never refused.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::error::RETRY_AFTER_UNAVAILABLE_SECS;
use super::state::{AppState, NotReady};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(ready))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/startup", get(startup))
}

async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn startup(State(state): State<AppState>) -> Response {
    match state.engine() {
        Ok(_) => Json(json!({"status": "ok"})).into_response(),
        Err(_) => unavailable(NotReady::Loading),
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    match state.readiness() {
        Ok(()) => Json(json!({"status": "ok"})).into_response(),
        Err(reason) => unavailable(reason),
    }
}

fn unavailable(reason: NotReady) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "unavailable", "reason": reason.as_str()})),
    )
        .into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER_UNAVAILABLE_SECS),
    );
    response
}
