//! The two generation endpoints: parse and check the body, find the model, refuse at once
//! when the engine's queue is full whatever the prompts, prepare the prompts, submit to the
//! engine, and answer with one JSON object or an SSE stream.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::chat::ChatCompletionRequest;
use super::completions::CompletionRequest;
use futures_util::FutureExt;
use futures_util::future::ready;

use super::generation::{self, chat_prompt, completion_prompts, generation_request};
use super::params::GenerationPlan;
use super::response::{Endpoint, ResponseContext};
use super::stream::sse_response;
use crate::api::agent::AgentId;
use crate::api::auth::CacheSalt;
use crate::api::error::ApiError;
use crate::api::json::JsonBody;
use crate::api::latency::RequestRecord;
use crate::api::state::AppState;
use crate::engine::sequence::GenerationRequest;
use crate::engine::{EngineHandle, Room};

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(record): Extension<RequestRecord>,
    salt: Option<Extension<CacheSalt>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let plan = request.plan()?;
    let agent = check_request(engine, &record, &headers, &plan.model, &plan.generation)?;
    let mut room = engine
        .reserve(1)
        .map_err(|e| ApiError::from_submit(e, Endpoint::Chat))?;
    let preparing = chat_prompt(&state, engine.model(), plan.messages);
    let prompt = unless_revoked(&mut room, Endpoint::Chat, preparing).await?;
    let context_length = engine.model().identity.context_length;
    let mut request = generation_request(prompt, &plan.generation, context_length, "messages")?;
    scope(&mut request, agent.as_ref(), salt);
    respond(
        engine,
        record,
        Endpoint::Chat,
        plan.logprobs,
        &plan.generation,
        vec![request],
        room,
    )
    .await
}

pub async fn completions(
    State(state): State<AppState>,
    Extension(record): Extension<RequestRecord>,
    salt: Option<Extension<CacheSalt>>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let plan = request.plan()?;
    let agent = check_request(engine, &record, &headers, &plan.model, &plan.generation)?;
    let mut room = engine
        .reserve(plan.prompts.len())
        .map_err(|e| ApiError::from_submit(e, Endpoint::Completions))?;
    let preparing = completion_prompts(&state, engine.model(), plan.prompts);
    let prompts = unless_revoked(&mut room, Endpoint::Completions, preparing).await?;
    let context_length = engine.model().identity.context_length;
    let mut requests = prompts
        .into_iter()
        .map(|prompt| generation_request(prompt, &plan.generation, context_length, "prompt"))
        .collect::<Result<Vec<_>, _>>()?;
    for request in &mut requests {
        scope(request, agent.as_ref(), salt);
    }
    respond(
        engine,
        record,
        Endpoint::Completions,
        plan.logprobs,
        &plan.generation,
        requests,
        room,
    )
    .await
}

/// Prepares the prompts in the request's room, or refuses the request as soon as the
/// engine gives its room up: a 429 answered at once, not after its turn at tokenization
/// behind the prompts that crowded it out.
async fn unless_revoked<T>(
    room: &mut Room,
    endpoint: Endpoint,
    preparing: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::select! {
        prepared = preparing => prepared,
        refused = room.revoked() => Err(ApiError::from_submit(refused, endpoint)),
    }
}

/// The model must be ours; the agent id, if any, must be valid (it is logged with the
/// request, and its KV is kept on disk). Returns the agent.
fn check_request(
    engine: &EngineHandle,
    record: &RequestRecord,
    headers: &HeaderMap,
    model: &str,
    plan: &GenerationPlan,
) -> Result<Option<AgentId>, ApiError> {
    if !engine.model().identity.answers_to(model) {
        return Err(ApiError::model_not_found(model));
    }
    let agent = AgentId::from_request(headers, plan.agent_id.as_deref())?;
    if let Some(agent) = &agent {
        tracing::Span::current().record("agent_id", agent.as_str());
        record.set_agent_id(agent.as_str());
    }
    Ok(agent)
}

/// Whose prefix cache a generation uses (the key's salt) and whether it is an agent's.
fn scope(
    request: &mut GenerationRequest,
    agent: Option<&AgentId>,
    salt: Option<Extension<CacheSalt>>,
) {
    request.agent = agent.map(|a| a.as_str().to_owned());
    request.cache_salt = salt.map(|Extension(CacheSalt(salt))| salt);
}

/// Queues the request's generations (all or none, answered at once when the engine is
/// busy), then answers with one JSON object or an SSE stream.
async fn respond(
    engine: &EngineHandle,
    record: RequestRecord,
    endpoint: Endpoint,
    logprobs: Option<usize>,
    plan: &GenerationPlan,
    requests: Vec<GenerationRequest>,
    room: Room,
) -> Result<Response, ApiError> {
    let context = ResponseContext::new(endpoint, engine.model(), logprobs, plan.include_usage);
    let engine_error = move |e| ApiError::from_submit(e, endpoint);
    let mut pending = engine
        .submit_all(requests, Some(room))
        .map_err(engine_error)?;
    if plan.stream {
        // A single generation is admitted before the response starts, so a refusal after
        // queueing (a queue timeout) is still a plain HTTP error. With several, each is
        // read as soon as it is admitted and a late refusal arrives as an error event.
        let submissions = if pending.len() == 1 {
            let events = pending.remove(0).admitted().await.map_err(engine_error)?;
            vec![ready(Ok(events)).boxed()]
        } else {
            pending
                .into_iter()
                .map(|p| async move { p.admitted().await.map_err(engine_error) }.boxed())
                .collect()
        };
        return Ok(sse_response(context, record, submissions));
    }
    // Each generation is read while the others wait for admission: admitted ones must not
    // stall on full channels while holding the batch slots the rest are waiting for.
    let keep_tokens = logprobs.is_some();
    let generations = pending.into_iter().map(|pending| async move {
        let events = pending.admitted().await.map_err(engine_error)?;
        generation::collect(events, keep_tokens).await
    });
    let collected = futures_util::future::try_join_all(generations).await?;
    for completed in &collected {
        record.add_usage(
            completed.usage.prompt_tokens,
            completed.usage.completion_tokens,
        );
    }
    Ok(Json(context.response(&collected)).into_response())
}
