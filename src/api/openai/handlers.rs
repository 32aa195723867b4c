//! The two generation endpoints: parse and check the body, find the model, prepare the
//! prompts, submit to the engine, and answer with one JSON object or an SSE stream.

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
use crate::api::error::ApiError;
use crate::api::json::JsonBody;
use crate::api::latency::RequestRecord;
use crate::api::state::AppState;
use crate::engine::EngineHandle;
use crate::engine::sequence::GenerationRequest;

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(record): Extension<RequestRecord>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let plan = request.plan()?;
    check_request(engine, &record, &headers, &plan.model, &plan.generation)?;
    let prompt = chat_prompt(engine, plan.messages).await?;
    let context_length = engine.model().identity.context_length;
    let request = generation_request(prompt, &plan.generation, context_length, "messages")?;
    respond(
        engine,
        record,
        Endpoint::Chat,
        plan.logprobs,
        &plan.generation,
        vec![request],
    )
    .await
}

pub async fn completions(
    State(state): State<AppState>,
    Extension(record): Extension<RequestRecord>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let plan = request.plan()?;
    check_request(engine, &record, &headers, &plan.model, &plan.generation)?;
    let prompts = completion_prompts(engine, plan.prompts).await?;
    let context_length = engine.model().identity.context_length;
    let requests = prompts
        .into_iter()
        .map(|prompt| generation_request(prompt, &plan.generation, context_length, "prompt"))
        .collect::<Result<Vec<_>, _>>()?;
    respond(
        engine,
        record,
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
    record: &RequestRecord,
    headers: &HeaderMap,
    model: &str,
    plan: &GenerationPlan,
) -> Result<(), ApiError> {
    if !engine.model().identity.answers_to(model) {
        return Err(ApiError::model_not_found(model));
    }
    if let Some(agent) = AgentId::from_request(headers, plan.agent_id.as_deref())? {
        tracing::Span::current().record("agent_id", agent.as_str());
        record.set_agent_id(agent.as_str());
    }
    Ok(())
}

async fn respond(
    engine: &EngineHandle,
    record: RequestRecord,
    endpoint: Endpoint,
    logprobs: Option<usize>,
    plan: &GenerationPlan,
    requests: Vec<GenerationRequest>,
) -> Result<Response, ApiError> {
    let context = ResponseContext::new(endpoint, engine.model(), logprobs, plan.include_usage);
    if plan.stream {
        return stream_response(engine, record, context, requests).await;
    }
    // Each generation is read while the others wait for admission: admitted ones must not
    // stall on full channels while holding the batch slots the rest are waiting for.
    let keep_tokens = logprobs.is_some();
    let generations = requests.into_iter().map(|request| {
        let engine = engine.clone();
        async move {
            let events = engine.submit(request).await?;
            generation::collect(events, keep_tokens).await
        }
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

/// A single generation is admitted before the response starts, so a refusal is a plain
/// HTTP error (429, 503). With several prompts, each is submitted inside the stream and
/// read as soon as it is admitted; a refusal then arrives as an error event.
async fn stream_response(
    engine: &EngineHandle,
    record: RequestRecord,
    context: ResponseContext,
    mut requests: Vec<GenerationRequest>,
) -> Result<Response, ApiError> {
    if requests.len() == 1 {
        let events = engine.submit(requests.remove(0)).await?;
        return Ok(sse_response(
            context,
            record,
            vec![ready(Ok(events)).boxed()],
        ));
    }
    let submissions = requests
        .into_iter()
        .map(|request| {
            let engine = engine.clone();
            async move { engine.submit(request).await.map_err(ApiError::from) }.boxed()
        })
        .collect();
    Ok(sse_response(context, record, submissions))
}
