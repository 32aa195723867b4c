//! The two generation endpoints: parse and check the body, find the model, prepare the
//! prompts, submit to the engine, and answer with one JSON object or an SSE stream.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::chat::ChatCompletionRequest;
use super::completions::CompletionRequest;
use super::generation::{self, chat_prompt, completion_prompts, generation_request, submit_all};
use super::params::GenerationPlan;
use super::response::{Endpoint, ResponseContext};
use super::stream::sse_response;
use crate::api::agent::AgentId;
use crate::api::error::ApiError;
use crate::api::json::JsonBody;
use crate::api::state::AppState;
use crate::engine::EngineHandle;

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let plan = request.plan()?;
    check_request(engine, &headers, &plan.model, &plan.generation)?;
    let prompt = chat_prompt(engine, plan.messages).await?;
    let context_length = engine.model().identity.context_length;
    let request = generation_request(prompt, &plan.generation, context_length, "messages")?;
    respond(
        engine,
        Endpoint::Chat,
        plan.logprobs,
        &plan.generation,
        vec![request],
    )
    .await
}

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let plan = request.plan()?;
    check_request(engine, &headers, &plan.model, &plan.generation)?;
    let prompts = completion_prompts(engine, plan.prompts).await?;
    let context_length = engine.model().identity.context_length;
    let requests = prompts
        .into_iter()
        .map(|prompt| generation_request(prompt, &plan.generation, context_length, "prompt"))
        .collect::<Result<Vec<_>, _>>()?;
    respond(
        engine,
        Endpoint::Completions,
        plan.logprobs,
        &plan.generation,
        requests,
    )
    .await
}

/// The model must be ours; the agent id, if any, must be valid (it is logged with the
/// request; per-agent caches use it).
fn check_request(
    engine: &EngineHandle,
    headers: &HeaderMap,
    model: &str,
    plan: &GenerationPlan,
) -> Result<(), ApiError> {
    if !engine.model().identity.answers_to(model) {
        return Err(ApiError::model_not_found(model));
    }
    if let Some(agent) = AgentId::from_request(headers, plan.agent_id.as_deref())? {
        tracing::Span::current().record("agent_id", agent.as_str());
    }
    Ok(())
}

async fn respond(
    engine: &EngineHandle,
    endpoint: Endpoint,
    logprobs: Option<usize>,
    plan: &GenerationPlan,
    requests: Vec<crate::engine::sequence::GenerationRequest>,
) -> Result<Response, ApiError> {
    let streams = submit_all(engine, requests).await?;
    let context = ResponseContext::new(endpoint, engine.model(), logprobs, plan.include_usage);
    if plan.stream {
        return Ok(sse_response(context, streams));
    }
    let keep_tokens = logprobs.is_some();
    let collected = futures_util::future::join_all(
        streams
            .into_iter()
            .map(|events| generation::collect(events, keep_tokens)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(context.response(&collected)).into_response())
}
