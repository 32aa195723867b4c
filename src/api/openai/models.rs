//! `GET /v1/models` and `GET /v1/models/{id}`: the served model, under its served name (an
//! alias finds it too), with its context length.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::state::AppState;

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({"object": "list", "data": [model_object(&state)?]}),
    ))
}

pub async fn retrieve(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.engine()?.model().identity.answers_to(&id) {
        return Err(ApiError::model_not_found(&id));
    }
    Ok(Json(model_object(&state)?))
}

fn model_object(state: &AppState) -> Result<Value, ApiError> {
    let identity = &state.engine()?.model().identity;
    Ok(json!({
        "id": identity.served_name,
        "object": "model",
        "created": state.created().unwrap_or_default(),
        "owned_by": "mlx-serve",
        "context_length": identity.context_length,
        "aliases": identity.aliases,
    }))
}
