//! The request fields `/v1/chat/completions` and `/v1/completions` share (sampling, length,
//! stop, streaming), and their checks. Each endpoint flattens [`GenerationFields`] into its
//! own body type and adds what is its own (messages or prompt, the logprobs flavour).

use serde::Deserialize;
use serde_json::Value;

use crate::engine::sampling::{MAX_TOP_LOGPROBS, SamplingParams};
use crate::engine::stop;

/// A client error in the request body: `param` names the offending field (OpenAI's
/// `error.param`), `message` says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub param: Option<String>,
    pub message: String,
}

impl RequestError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            param: Some(param.into()),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields both endpoints accept. Every one is optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationFields {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 or negative: off (vLLM clients send -1).
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub n: Option<u64>,
    /// Accepted and logged; OpenAI uses it for abuse monitoring.
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// The agent this request belongs to (also the `X-Agent-Id` header).
    pub agent_id: Option<String>,
    /// Recognised but unsupported: refused when not empty.
    pub logit_bias: Option<Value>,
    /// Extension (as in vLLM): keep generating past end-of-sequence tokens, up to
    /// `max_tokens`; for benchmarks that need outputs of a fixed length.
    pub ignore_eos: Option<bool>,
}

/// The shared part of a checked request, in engine terms.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationPlan {
    pub sampling: SamplingParams,
    /// `None`: the rest of the context (OpenAI's default).
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub agent_id: Option<String>,
    pub ignore_eos: bool,
}

impl GenerationFields {
    /// Checks the shared fields. `max_tokens` is the length limit the endpoint settled on
    /// (chat prefers `max_completion_tokens`), with the name of the field it came from;
    /// `top_logprobs` the alternatives asked for per token, if any.
    pub fn plan(
        self,
        max_tokens: Option<(&'static str, u64)>,
        top_logprobs: Option<usize>,
    ) -> Result<GenerationPlan, RequestError> {
        refuse_unless(
            "logit_bias",
            &self.logit_bias,
            |bias| bias.as_object().is_some_and(|b| b.is_empty()),
            "logit_bias is not supported by this server",
        )?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(RequestError::new("n", "only n = 1 is supported"));
        }
        if let Some((param, 0)) = max_tokens {
            return Err(RequestError::new(
                param,
                format!("{param} must be at least 1"),
            ));
        }
        let max_tokens = max_tokens.map(|(_, n)| usize::try_from(n).unwrap_or(usize::MAX));

        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(stop)) => vec![stop],
            Some(StopField::Many(stops)) => stops,
        };
        stop::check(&stop).map_err(|e| RequestError::new("stop", e.to_string()))?;
        if top_logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(RequestError::new(
                "top_logprobs",
                format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"),
            ));
        }

        let defaults = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: match self.top_k {
                Some(k) if k > 0 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
                _ => None,
            },
            min_p: self.min_p.unwrap_or(defaults.min_p),
            seed: self.seed.map(|s| s as u64),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            logprobs: top_logprobs,
        };
        sampling
            .validate()
            .map_err(|e| RequestError::new(e.field, e.to_string()))?;
        let stream = self.stream.unwrap_or(false);
        Ok(GenerationPlan {
            sampling,
            max_tokens,
            stop,
            stream,
            include_usage: stream && self.stream_options.is_some_and(|o| o.include_usage),
            agent_id: self.agent_id,
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

/// Refuses a recognised field that is present with a value other than its harmless default.
pub fn refuse_unless(
    field: &'static str,
    value: &Option<Value>,
    harmless: impl Fn(&Value) -> bool,
    message: &str,
) -> Result<(), RequestError> {
    match value {
        Some(value) if !value.is_null() && !harmless(value) => {
            Err(RequestError::new(field, message))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openai::completions::CompletionRequest;

    fn plan(body: &str) -> Result<GenerationPlan, RequestError> {
        let mut body: Value = serde_json::from_str(body).expect("valid JSON");
        body["model"] = "m".into();
        body["prompt"] = "p".into();
        serde_json::from_value::<CompletionRequest>(body)
            .expect("valid JSON shape")
            .plan()
            .map(|plan| plan.generation)
    }

    #[test]
    fn shared_fields_convert_and_check() {
        let p = plan(
            r#"{"temperature": 0, "top_k": -1, "seed": 3, "stop": "END", "stream": true,
                "stream_options": {"include_usage": true}, "agent_id": "a"}"#,
        )
        .unwrap();
        assert_eq!(p.sampling.temperature, 0.0);
        assert_eq!(p.sampling.top_k, None);
        assert_eq!(p.sampling.seed, Some(3));
        assert_eq!(p.stop, vec!["END".to_owned()]);
        assert!(p.stream && p.include_usage);
        assert_eq!(p.agent_id.as_deref(), Some("a"));
        let p = plan(r#"{"stream_options": {"include_usage": true}}"#).unwrap();
        assert!(!p.include_usage, "usage chunks only exist in streams");

        let param = |body: &str| plan(body).unwrap_err().param.unwrap_or_default();
        assert_eq!(param(r#"{"temperature": 3}"#), "temperature");
        assert_eq!(param(r#"{"top_p": 0}"#), "top_p");
        assert_eq!(param(r#"{"n": 2}"#), "n");
        assert_eq!(param(r#"{"stop": ["a","b","c","d","e"]}"#), "stop");
        assert_eq!(param(r#"{"stop": ""}"#), "stop");
        let long = format!(r#"{{"stop": "{}"}}"#, "x".repeat(stop::MAX_STOP_BYTES + 1));
        assert_eq!(param(&long), "stop");
        assert_eq!(param(r#"{"logit_bias": {"50256": -100}}"#), "logit_bias");
        assert!(plan(r#"{"logit_bias": {}, "n": 1, "user": "u"}"#).is_ok());
        let zero = GenerationFields::default()
            .plan(Some(("max_tokens", 0)), None)
            .unwrap_err();
        assert_eq!(zero.param.as_deref(), Some("max_tokens"));
        let many = GenerationFields::default()
            .plan(None, Some(21))
            .unwrap_err();
        assert_eq!(many.param.as_deref(), Some("top_logprobs"));
    }
}
