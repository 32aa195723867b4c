//! OpenAI response bodies: chat completions and their stream chunks, text completions and
//! theirs, usage and log-probabilities. One [`ResponseContext`] per request holds what every
//! object of the response repeats (id, created, model, fingerprint).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::api::state::unix_now;
use crate::engine::ServedModel;
use crate::engine::sampling::{SampledToken, TokenLogprobs};
use crate::engine::sequence::{FinishReason, Usage};

/// Which API a response belongs to; decides the object names and the choice shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

impl Endpoint {
    /// The request field that carries the prompt (OpenAI's `param` for prompt errors).
    pub fn prompt_param(self) -> &'static str {
        match self {
            Endpoint::Chat => "messages",
            Endpoint::Completions => "prompt",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// `usage` as OpenAI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsageBody {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl UsageBody {
    /// The sum over the generations of one request (one per prompt).
    pub fn total(usages: impl IntoIterator<Item = Usage>) -> UsageBody {
        let mut sum = Usage::default();
        for usage in usages {
            sum.prompt_tokens += usage.prompt_tokens;
            sum.completion_tokens += usage.completion_tokens;
            sum.cached_tokens += usage.cached_tokens;
        }
        UsageBody {
            prompt_tokens: sum.prompt_tokens,
            completion_tokens: sum.completion_tokens,
            total_tokens: sum.prompt_tokens + sum.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: sum.cached_tokens,
            },
        }
    }
}

/// A finished generation, as collected for a non-streaming response.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub text: String,
    /// The sampled tokens with their log-probabilities (kept only when asked for).
    pub tokens: Vec<SampledToken>,
    pub reason: FinishReason,
    pub usage: Usage,
}

/// OpenAI's `finish_reason` for an ended generation. `Aborted` and `Cancelled` never reach
/// a client as a finish reason (they become an error or a closed connection).
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled | FinishReason::Aborted => "abort",
    }
}

/// What one stream chunk carries for its choice.
#[derive(Debug, Default)]
pub struct Delta<'a> {
    /// Chat's first chunk names the role.
    pub role: bool,
    pub text: Option<&'a str>,
    /// The tokens that produced `text`, for their log-probabilities.
    pub tokens: &'a [SampledToken],
    /// Where `text` starts in the choice's output (legacy logprobs report offsets).
    pub text_offset: usize,
    pub finish: Option<FinishReason>,
}

/// What every object of one response repeats.
pub struct ResponseContext {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    /// `Some(n)`: log-probabilities were asked for, with `n` alternatives per token.
    pub logprobs: Option<usize>,
    /// Streams end with a usage chunk (and carry `usage: null` before it).
    pub include_usage: bool,
    served: Arc<ServedModel>,
}

impl ResponseContext {
    pub fn new(
        endpoint: Endpoint,
        model: &Arc<ServedModel>,
        logprobs: Option<usize>,
        include_usage: bool,
    ) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completions => "cmpl",
        };
        // OpenAI's fingerprints look like `fp_` + 10 hex digits; ours name the weights.
        let digest = model.identity.fingerprint.trim_start_matches("sha256:");
        ResponseContext {
            endpoint,
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: unix_now(),
            model: model.identity.served_name.clone(),
            system_fingerprint: format!("fp_{}", &digest[..digest.len().min(10)]),
            logprobs,
            include_usage,
            served: Arc::clone(model),
        }
    }

    fn object(&self, streaming: bool) -> &'static str {
        match (self.endpoint, streaming) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn envelope(&self, streaming: bool, choices: Vec<Value>) -> Map<String, Value> {
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("object".into(), json!(self.object(streaming)));
        object.insert("created".into(), json!(self.created));
        object.insert("model".into(), json!(self.model));
        object.insert("system_fingerprint".into(), json!(self.system_fingerprint));
        object.insert("choices".into(), Value::Array(choices));
        object
    }

    /// The whole response of a non-streaming request (one choice per generation).
    pub fn response(&self, completed: &[Completed]) -> Value {
        let choices = completed
            .iter()
            .enumerate()
            .map(|(index, done)| {
                let logprobs = self.logprobs_json(&done.tokens, 0);
                let reason = finish_reason(done.reason);
                match self.endpoint {
                    Endpoint::Chat => json!({
                        "index": index,
                        "message": {"role": "assistant", "content": done.text, "refusal": null},
                        "logprobs": logprobs,
                        "finish_reason": reason,
                    }),
                    Endpoint::Completions => json!({
                        "index": index,
                        "text": done.text,
                        "logprobs": logprobs,
                        "finish_reason": reason,
                    }),
                }
            })
            .collect();
        let mut object = self.envelope(false, choices);
        let usage = UsageBody::total(completed.iter().map(|c| c.usage));
        object.insert("usage".into(), json!(usage));
        Value::Object(object)
    }

    /// A stream chunk for choice `index`.
    pub fn chunk(&self, index: usize, delta: Delta<'_>) -> Value {
        let logprobs = self.logprobs_json(delta.tokens, delta.text_offset);
        let reason = delta.finish.map(finish_reason);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut content = Map::new();
                if delta.role {
                    content.insert("role".into(), json!("assistant"));
                }
                if let Some(text) = delta.text {
                    content.insert("content".into(), json!(text));
                }
                json!({"index": index, "delta": content, "logprobs": logprobs,
                       "finish_reason": reason})
            }
            Endpoint::Completions => json!({
                "index": index, "text": delta.text.unwrap_or_default(), "logprobs": logprobs,
                "finish_reason": reason,
            }),
        };
        let mut object = self.envelope(true, vec![choice]);
        if self.include_usage {
            // With include_usage, OpenAI sends `usage: null` on every chunk but the last.
            object.insert("usage".into(), Value::Null);
        }
        Value::Object(object)
    }

    /// The last chunk of a stream with `include_usage`: no choices, the usage of all.
    pub fn usage_chunk(&self, usages: impl IntoIterator<Item = Usage>) -> Value {
        let mut object = self.envelope(true, Vec::new());
        object.insert("usage".into(), json!(UsageBody::total(usages)));
        Value::Object(object)
    }

    /// `logprobs` of a choice: `null` unless asked for; chat's `{"content": [...]}` or the
    /// legacy `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`.
    fn logprobs_json(&self, tokens: &[SampledToken], text_offset: usize) -> Value {
        if self.logprobs.is_none() {
            return Value::Null;
        }
        // Every token carries them when they were asked for.
        let tokens: Vec<(u32, &TokenLogprobs)> = tokens
            .iter()
            .filter_map(|t| t.logprobs.as_ref().map(|l| (t.token, l)))
            .collect();
        match self.endpoint {
            Endpoint::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|&(token, logprobs)| {
                        let mut entry = self.token_json(token, logprobs.logprob);
                        let top: Vec<Value> = logprobs
                            .top
                            .iter()
                            .map(|&(id, logprob)| Value::Object(self.token_json(id, logprob)))
                            .collect();
                        entry.insert("top_logprobs".into(), Value::Array(top));
                        Value::Object(entry)
                    })
                    .collect();
                json!({"content": content})
            }
            Endpoint::Completions => {
                let mut offset = text_offset;
                let mut texts = Vec::with_capacity(tokens.len());
                let mut offsets = Vec::with_capacity(tokens.len());
                for &(token, _) in &tokens {
                    let text = self.served.token_text(token);
                    offsets.push(offset);
                    offset += text.len();
                    texts.push(text);
                }
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|(_, logprobs)| {
                        let map: Map<String, Value> = logprobs
                            .top
                            .iter()
                            .map(|&(id, logprob)| (self.served.token_text(id), json!(logprob)))
                            .collect();
                        Value::Object(map)
                    })
                    .collect();
                json!({
                    "tokens": texts,
                    "token_logprobs": tokens.iter().map(|(_, l)| l.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    fn token_json(&self, id: u32, logprob: f32) -> Map<String, Value> {
        let text = self.served.token_text(id);
        let mut entry = Map::new();
        entry.insert("token".into(), json!(text));
        entry.insert("logprob".into(), json!(logprob));
        entry.insert("bytes".into(), json!(text.as_bytes()));
        entry
    }
}
