//! `GET /metrics` (Prometheus) and `GET /v1/stats` (JSON for people), plus the timer that
//! samples the process. Both answer while loading and draining; with
//! `--metrics-require-api-key` they are behind the API keys.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::state::AppState;
use crate::metrics::exposition::{self, CONTENT_TYPE};
use crate::metrics::sampled::SAMPLE_INTERVAL;
use crate::metrics::stats::{self, StatsView};

/// `GET /metrics`.
pub async fn prometheus(State(state): State<AppState>) -> Response {
    let text = exposition::render(state.metrics().snapshot(state.server_state()));
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// `GET /v1/stats`.
pub async fn stats(State(state): State<AppState>) -> Json<StatsView> {
    let model = state
        .engine()
        .ok()
        .map(|engine| engine.model().identity.served_name.clone());
    Json(stats::view(
        state.metrics().snapshot(state.server_state()),
        model,
    ))
}

/// Samples the process and the token rate every [`SAMPLE_INTERVAL`], for as long as the
/// server runs.
pub async fn sample_forever(state: AppState) {
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        ticks.tick().await;
        let generated = state
            .engine()
            .ok()
            .map(|engine| engine.stats().generated_tokens);
        state.metrics().sampler.sample(generated);
    }
}
