//! Every error the HTTP layer returns, as OpenAI's envelope
//! `{"error": {"message", "type", "param", "code"}}` with its status. Engine errors are
//! mapped to HTTP here and nowhere else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::openai::params::RequestError;
use crate::api::openai::response::Endpoint;
use crate::engine::scheduler::{AdmitError, Busy};
use crate::engine::{PromptError, SubmitError};

/// Seconds a client should wait before retrying a 429 (the pool frees blocks as soon as
/// any running request finishes, typically within seconds).
pub const RETRY_AFTER_BUSY_SECS: u64 = 1;
/// Seconds before retrying a 503: a loading model or a restart takes longer.
pub const RETRY_AFTER_UNAVAILABLE_SECS: u64 = 5;

/// An error response. `kind` is OpenAI's `error.type`, `code` its `error.code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
    /// Sent as `Retry-After` (seconds).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request is malformed or asks for something impossible.
    pub fn invalid_request(param: Option<String>, message: impl Into<String>) -> Self {
        let mut error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        error.param = param;
        error
    }

    /// 400 with code `context_length_exceeded`.
    pub fn context_length_exceeded(param: &str, message: impl Into<String>) -> Self {
        ApiError::invalid_request(Some(param.to_owned()), message).code("context_length_exceeded")
    }

    /// 401: no API key, or not one of the configured keys.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .code("invalid_api_key")
    }

    /// 404 for a `model` no loaded model answers to.
    pub fn model_not_found(model: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist; GET /v1/models lists the served model"),
        )
        .code("model_not_found")
        .param("model")
    }

    /// 404 for an agent the store keeps nothing for.
    pub fn agent_not_found(agent: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No KV cache is stored for the agent `{agent}`; GET /admin/agents lists them"),
        )
        .code("agent_not_found")
    }

    /// 404 for a path no route serves.
    pub fn route_not_found(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {method} {path}"),
        )
        .code("unknown_url")
    }

    /// 405: the path exists, the method does not.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{method} is not allowed on {path}"),
        )
        .code("method_not_allowed")
    }

    /// 415: a POST body not declared as JSON.
    pub fn unsupported_media_type(content_type: Option<&str>) -> Self {
        let got = match content_type {
            Some(value) => format!("`{value}`"),
            None => "no Content-Type".to_owned(),
        };
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            format!(
                "request bodies must be JSON with the header `Content-Type: application/json` \
                 (got {got}; with curl add -H 'Content-Type: application/json')"
            ),
        )
        .code("unsupported_media_type")
    }

    /// 403: the `Host` header names a host this server does not answer to (DNS-rebinding
    /// defence while bound to loopback).
    pub fn host_not_allowed(host: &str) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            format!(
                "the Host `{host}` is not allowed: this server is bound to a loopback address \
                 and answers only to loopback names; start it with --allowed-host {host} to \
                 allow it"
            ),
        )
        .code("host_not_allowed")
    }

    /// 413: the body is over `--max-body-bytes`.
    pub fn body_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )
        .code("request_too_large")
    }

    /// 503 while the model is still loading.
    pub fn loading() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model is still loading; retry shortly",
        )
        .code("model_loading")
        .retry_after(RETRY_AFTER_UNAVAILABLE_SECS)
    }

    /// 503 once shutdown has begun.
    pub fn draining() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down and accepts no new requests",
        )
        .code("server_shutting_down")
        .retry_after(RETRY_AFTER_UNAVAILABLE_SECS)
    }

    /// 503 for a generation the engine ended early (shutdown deadline, engine failure).
    pub fn aborted(generated: usize) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            format!(
                "the server aborted the generation after {generated} tokens (shutdown deadline \
                 or engine failure); retry the request"
            ),
        )
        .code("generation_aborted")
        .retry_after(RETRY_AFTER_UNAVAILABLE_SECS)
    }

    /// 500: a bug or a dead engine thread; the message says which.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
            .code("internal_error")
    }

    /// The envelope as JSON (also the payload of an SSE error event).
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        ApiError::invalid_request(error.param, error.message)
    }
}

impl ApiError {
    /// An engine refusal for a request to `endpoint` (which names the prompt field).
    pub fn from_submit(error: SubmitError, endpoint: Endpoint) -> Self {
        let prompt = endpoint.prompt_param();
        match error {
            SubmitError::Invalid(AdmitError::PromptTooLong { tokens, limit }) => {
                ApiError::context_length_exceeded(
                    prompt,
                    format!(
                        "the prompt has {tokens} tokens, but this model's context holds at most \
                         {limit} prompt tokens"
                    ),
                )
            }
            SubmitError::Invalid(AdmitError::PromptLargerThanPool { needed, total }) => {
                ApiError::invalid_request(
                    Some(prompt.to_owned()),
                    format!(
                        "the prompt needs {needed} KV-cache blocks but the whole pool has \
                         {total}; shorten it or start the server with a larger --kv-cache-mb"
                    ),
                )
                .code("prompt_exceeds_kv_cache")
            }
            SubmitError::Invalid(error @ AdmitError::TooManyGenerations { .. }) => {
                ApiError::invalid_request(Some(prompt.to_owned()), error.to_string())
                    .code("too_many_prompts")
            }
            SubmitError::Invalid(error) => {
                ApiError::invalid_request(Some(prompt.to_owned()), error.to_string())
            }
            SubmitError::TokenOutOfVocabulary { .. } => {
                ApiError::invalid_request(Some(prompt.to_owned()), error.to_string())
            }
            SubmitError::InvalidSampling(error) => {
                ApiError::invalid_request(Some(error.field.to_owned()), error.to_string())
            }
            SubmitError::Busy(busy) => {
                let code = match busy {
                    Busy::QueueFull { .. } => "queue_full",
                    Busy::PoolExhausted => "kv_cache_exhausted",
                    Busy::BatchFull => "batch_full",
                };
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_exceeded",
                    format!("the server is at capacity: {busy}; retry shortly"),
                )
                .code(code)
                .retry_after(RETRY_AFTER_BUSY_SECS)
            }
            SubmitError::QueueTimeout { waited } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!(
                    "waited {:.1} s for a batch slot and KV-cache blocks without getting them; \
                     retry shortly",
                    waited.as_secs_f64()
                ),
            )
            .code("queue_timeout")
            .retry_after(RETRY_AFTER_BUSY_SECS),
            SubmitError::Draining => ApiError::draining(),
            SubmitError::Stopped => ApiError::internal("the inference engine is not running"),
        }
    }

    /// A prompt that could not be prepared for a request to `endpoint`.
    pub fn from_prompt(error: PromptError, endpoint: Endpoint) -> Self {
        let prompt = endpoint.prompt_param();
        match error {
            PromptError::TooManyMessages { .. } | PromptError::TooLong { .. } => {
                ApiError::context_length_exceeded(prompt, error.to_string())
            }
            PromptError::Template(error) => ApiError::invalid_request(
                Some(prompt.to_owned()),
                format!("the model's chat template cannot render these messages: {error}"),
            ),
            PromptError::Tokenizer(error) => {
                ApiError::internal(format!("tokenizing the prompt failed: {error}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn engine_errors_map_to_statuses() {
        let chat = |e: SubmitError| ApiError::from_submit(e, Endpoint::Chat);
        assert_eq!(
            chat(SubmitError::Invalid(AdmitError::EmptyPrompt)).status,
            StatusCode::BAD_REQUEST
        );
        let busy = chat(SubmitError::Busy(Busy::PoolExhausted));
        assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(busy.retry_after, Some(RETRY_AFTER_BUSY_SECS));
        assert_eq!(busy.kind, "rate_limit_exceeded");
        assert_eq!(busy.code, Some("kv_cache_exhausted"));
        let full = chat(SubmitError::Busy(Busy::QueueFull {
            waiting: 3,
            limit: 3,
        }));
        assert_eq!(full.code, Some("queue_full"));
        assert_eq!(
            chat(SubmitError::Busy(Busy::BatchFull)).code,
            Some("batch_full")
        );
        let timeout = chat(SubmitError::QueueTimeout {
            waited: Duration::from_secs(3),
        });
        assert_eq!(timeout.status, StatusCode::TOO_MANY_REQUESTS);
        let draining = chat(SubmitError::Draining);
        assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(draining.retry_after.is_some());
        assert_eq!(
            chat(SubmitError::Stopped).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        // The prompt's field is named per endpoint.
        let long = SubmitError::Invalid(AdmitError::PromptTooLong {
            tokens: 9000,
            limit: 8191,
        });
        let error = chat(long.clone());
        assert_eq!(error.code, Some("context_length_exceeded"));
        assert_eq!(error.param.as_deref(), Some("messages"));
        let error = ApiError::from_submit(long, Endpoint::Completions);
        assert_eq!(error.param.as_deref(), Some("prompt"));
        let vocab = ApiError::from_submit(
            SubmitError::TokenOutOfVocabulary {
                token: 99999,
                vocab: 49152,
            },
            Endpoint::Completions,
        );
        assert_eq!(vocab.param.as_deref(), Some("prompt"));
        assert!(vocab.message.contains("vocabulary"), "{}", vocab.message);
    }

    #[test]
    fn the_envelope_has_every_field() {
        let body = ApiError::model_not_found("gpt-4").body();
        let error = &body["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "model_not_found");
        assert_eq!(error["param"], "model");
        assert!(error["message"].as_str().unwrap().contains("gpt-4"));
        let body = ApiError::internal("x").body();
        assert!(body["error"]["param"].is_null());
    }
}
