//! From a checked request to engine generations and back: rendering and tokenizing the
//! prompt (off the async threads: a large prompt takes milliseconds), fitting the
//! completion length into the context as OpenAI does, and collecting a generation for a
//! non-streaming response.

use std::sync::Arc;

use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::engine::sequence::{Event, FinishReason, GenerationRequest};
use crate::engine::{EventStream, PromptError, ServedModel};
use crate::model::chat_template::ChatMessage;

use super::completions::PromptInput;
use super::params::GenerationPlan;
use super::response::{Completed, Endpoint};

/// Renders `messages` with the model's chat template and tokenizes the result: refused at
/// once when its size alone cannot fit the context, then prepared off the async threads.
pub async fn chat_prompt(
    state: &AppState,
    model: &Arc<ServedModel>,
    messages: Vec<ChatMessage>,
) -> Result<Vec<u32>, ApiError> {
    let error = |e| ApiError::from_prompt(e, Endpoint::Chat);
    model.check_chat_size(&messages).map_err(error)?;
    let model = Arc::clone(model);
    prepare(state, move || model.chat_prompt(&messages))
        .await?
        .map_err(error)
}

/// Tokenizes the prompts of a completion request (text with the model's BOS rule; token
/// ids as given), refusing at once a text that cannot fit the context.
pub async fn completion_prompts(
    state: &AppState,
    model: &Arc<ServedModel>,
    prompts: Vec<PromptInput>,
) -> Result<Vec<Vec<u32>>, ApiError> {
    let error = |e| ApiError::from_prompt(e, Endpoint::Completions);
    for prompt in &prompts {
        if let PromptInput::Text(text) = prompt {
            model.check_text_size(text).map_err(error)?;
        }
    }
    let model = Arc::clone(model);
    prepare(state, move || {
        prompts
            .into_iter()
            .map(|prompt| match prompt {
                PromptInput::Tokens(ids) => Ok(ids),
                PromptInput::Text(text) => model.text_prompt(&text),
            })
            .collect::<Result<Vec<_>, PromptError>>()
    })
    .await?
    .map_err(error)
}

/// Runs prompt preparation on the blocking pool, at most as many at once as the server has
/// preparation permits (one per core), so a flood of large prompts queues here instead of
/// occupying every thread.
async fn prepare<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = state.prompt_permit().await?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| ApiError::internal(format!("prompt preparation failed: {e}")))
}

/// The engine request for one prompt. Like OpenAI: without `max_tokens` the completion may
/// use the rest of the context; a prompt that leaves no room, or an explicit `max_tokens`
/// that does not fit beside the prompt, is a 400 `context_length_exceeded`.
pub fn generation_request(
    prompt: Vec<u32>,
    plan: &GenerationPlan,
    context_length: usize,
    prompt_param: &str,
) -> Result<GenerationRequest, ApiError> {
    let prompt_tokens = prompt.len();
    if prompt_tokens >= context_length {
        return Err(ApiError::context_length_exceeded(
            prompt_param,
            format!(
                "This model's maximum context length is {context_length} tokens. However, \
                 your prompt has {prompt_tokens} tokens, leaving no room for a completion. \
                 Please shorten the prompt."
            ),
        ));
    }
    let room = context_length - prompt_tokens;
    let max_tokens = match plan.max_tokens {
        Some(requested) if requested > room => {
            return Err(ApiError::context_length_exceeded(
                "max_tokens",
                format!(
                    "This model's maximum context length is {context_length} tokens. However, \
                     you requested {} tokens ({prompt_tokens} in the prompt, {requested} for \
                     the completion). Please reduce the prompt or the completion length.",
                    prompt_tokens.saturating_add(requested)
                ),
            ));
        }
        Some(requested) => requested,
        None => room,
    };
    Ok(GenerationRequest {
        prompt,
        sampling: plan.sampling.clone(),
        max_tokens,
        stop: plan.stop.clone(),
        stop_token_ids: Vec::new(),
        ignore_eos: plan.ignore_eos,
        agent: None,
        cache_salt: None,
    })
}

/// Waits for the whole generation. Dropping this future (the client went away) drops the
/// stream, which cancels the generation in the engine.
pub async fn collect(mut events: EventStream, keep_tokens: bool) -> Result<Completed, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Event::Token {
                sampled,
                text: delta,
            } => {
                text.push_str(&delta);
                if keep_tokens {
                    tokens.push(sampled);
                }
            }
            Event::Finished {
                text: tail,
                reason,
                usage,
            } => {
                if matches!(reason, FinishReason::Aborted | FinishReason::Cancelled) {
                    return Err(ApiError::aborted(usage.completion_tokens));
                }
                text.push_str(&tail);
                return Ok(Completed {
                    text,
                    tokens,
                    reason,
                    usage,
                });
            }
        }
    }
    Err(ApiError::internal(
        "the inference engine stopped before the generation finished",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::params::GenerationFields;

    fn plan(max_tokens: Option<u64>) -> GenerationPlan {
        GenerationFields::default()
            .plan(max_tokens.map(|n| ("max_tokens", n)), None)
            .unwrap()
    }

    #[test]
    fn completion_length_fits_the_context() {
        let request = generation_request(vec![1; 10], &plan(None), 100, "prompt").unwrap();
        assert_eq!(request.max_tokens, 90, "default: the rest of the context");
        let request = generation_request(vec![1; 10], &plan(Some(90)), 100, "prompt").unwrap();
        assert_eq!(request.max_tokens, 90);
        let error = generation_request(vec![1; 10], &plan(Some(91)), 100, "prompt").unwrap_err();
        assert_eq!(error.code, Some("context_length_exceeded"));
        assert_eq!(error.param.as_deref(), Some("max_tokens"));
        let error = generation_request(vec![1; 100], &plan(None), 100, "prompt").unwrap_err();
        assert_eq!(error.param.as_deref(), Some("prompt"));
    }
}
