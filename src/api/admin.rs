//! The admin API over agents' KV caches and the disk store (`--admin-key`; without it
//! these routes do not exist and answer 404). Agent ids are validated exactly as on the
//! OpenAI routes before anything looks them up; files are read and deleted off the async
//! threads.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{delete, get};
use serde::Serialize;
use serde_json::{Value, json};

use super::agent::AgentId;
use super::error::ApiError;
use super::state::AppState;
use crate::cache_store::{AgentManifest, KvStore};
use crate::engine::EngineHandle;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/agents", get(list_agents))
        .route("/admin/agents/{id}", get(get_agent).delete(delete_agent))
        .route("/admin/caches", delete(clear_caches))
        .route("/admin/kv-store", get(kv_store))
}

/// One agent's kept context.
#[derive(Debug, Serialize)]
struct AgentView {
    id: String,
    /// Tokens of its latest context's full blocks.
    tokens: usize,
    blocks: usize,
    blocks_in_memory: usize,
    blocks_on_disk: usize,
    /// Bytes its blocks on disk take in the pool's dtype.
    bytes_on_disk: u64,
    /// Unix seconds.
    last_used: u64,
}

fn view(engine: &EngineHandle, store: &KvStore, manifest: AgentManifest) -> AgentView {
    let hashes = manifest.hashes();
    let on_disk = store.count_on_disk(&hashes);
    AgentView {
        tokens: manifest.token_ids.len(),
        blocks: hashes.len(),
        blocks_in_memory: engine.blocks_in_memory(&hashes),
        blocks_on_disk: on_disk,
        bytes_on_disk: on_disk as u64 * manifest.block_bytes,
        last_used: manifest.last_used_ms / 1000,
        id: manifest.agent_id,
    }
}

/// The engine and its store; without a store no agent has anything kept.
fn store(state: &AppState) -> Result<(EngineHandle, Option<std::sync::Arc<KvStore>>), ApiError> {
    let engine = state.engine()?.clone();
    let store = engine.store().cloned();
    Ok((engine, store))
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("admin task failed: {e}")))
}

async fn list_agents(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (engine, store) = store(&state)?;
    let agents = blocking(move || match store {
        Some(store) => store
            .agents()
            .into_iter()
            .map(|m| view(&engine, &store, m))
            .collect(),
        None => Vec::new(),
    })
    .await?;
    Ok(Json(json!({"object": "list", "data": agents})))
}

async fn get_agent(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    let id = AgentId::parse(&id, "id")?;
    let (engine, store) = store(&state)?;
    let agent = id.as_str().to_owned();
    let found = blocking(move || {
        let store = store?;
        let manifest = store.agent(&agent)?;
        Some(view(&engine, &store, manifest))
    })
    .await?;
    found
        .map(Json)
        .ok_or_else(|| ApiError::agent_not_found(id.as_str()))
}

/// Removes the agent's manifest and the disk blocks no other agent lists, and forgets its
/// blocks' content in the pool where no running request holds them.
async fn delete_agent(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = AgentId::parse(&id, "id")?;
    let (engine, store) = store(&state)?;
    let agent = id.as_str().to_owned();
    let deleted = blocking(move || {
        let store = store?;
        let manifest = store.agent(&agent)?;
        let removed = store.delete_agent(&agent)?;
        Some((removed, engine.forget_cached(Some(&manifest.hashes()))))
    })
    .await?;
    let (blocks_removed, pool_blocks_forgotten) =
        deleted.ok_or_else(|| ApiError::agent_not_found(id.as_str()))?;
    Ok(Json(json!({
        "id": id.as_str(),
        "deleted": true,
        "blocks_removed": blocks_removed,
        "pool_blocks_forgotten": pool_blocks_forgotten,
    })))
}

/// Everything: this model's blocks and manifests on disk, and every cached (unreferenced)
/// prefix in the pool.
async fn clear_caches(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (engine, store) = store(&state)?;
    let (cleared, forgotten) = blocking(move || {
        let cleared = store.map(|s| s.clear()).unwrap_or_default();
        (cleared, engine.forget_cached(None))
    })
    .await?;
    Ok(Json(json!({
        "blocks_removed": cleared.blocks,
        "manifests_removed": cleared.manifests,
        "pool_blocks_forgotten": forgotten,
    })))
}

async fn kv_store(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (_, store) = store(&state)?;
    let Some(store) = store else {
        return Ok(Json(json!({"enabled": false})));
    };
    let snapshot = blocking(move || store.snapshot()).await?;
    Ok(Json(json!({
        "enabled": true,
        "root": snapshot.root,
        "encoding": snapshot.encoding.name(),
        "bytes": snapshot.bytes,
        "budget_bytes": snapshot.budget,
        "files": snapshot.files,
        "blocks": snapshot.blocks,
        "quarantined_files": snapshot.quarantined_files,
    })))
}
