//! `POST /v1/completions` (the legacy text completion API) request body: a prompt as a
//! string, a list of strings, a list of token ids or a list of such lists. Each prompt is
//! its own generation and its own choice (`index` = position in the list).

use serde::Deserialize;
use serde_json::Value;

use super::params::{GenerationFields, GenerationPlan, RequestError, refuse_unless};

/// Most prompts one request may carry; each becomes a concurrent generation.
pub const MAX_PROMPTS: usize = 32;

/// Largest `logprobs` the legacy API accepts (OpenAI: 5; we allow the engine's limit).
pub use crate::engine::sampling::MAX_TOP_LOGPROBS as MAX_LOGPROBS;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

/// One prompt, as text (tokenized with the model's BOS rule) or as token ids (used as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptField,
    /// The legacy form: how many alternatives to report per token (0 = only the chosen).
    pub logprobs: Option<u64>,
    /// The fields both endpoints share.
    #[serde(flatten)]
    pub fields: GenerationFields,
    /// Recognised but unsupported: refused when they ask for something.
    pub echo: Option<bool>,
    pub suffix: Option<Value>,
    pub best_of: Option<u64>,
}

/// A checked completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionPlan {
    pub model: String,
    pub prompts: Vec<PromptInput>,
    pub logprobs: Option<usize>,
    pub generation: GenerationPlan,
}

impl CompletionRequest {
    pub fn plan(self) -> Result<CompletionPlan, RequestError> {
        if self.echo == Some(true) {
            return Err(RequestError::new("echo", "echo is not supported"));
        }
        refuse_unless(
            "suffix",
            &self.suffix,
            |s| s.as_str().is_some_and(str::is_empty),
            "suffix (insertion) is not supported",
        )?;
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(RequestError::new(
                "best_of",
                "only best_of = 1 is supported",
            ));
        }
        let prompts = match self.prompt {
            PromptField::Text(text) => vec![PromptInput::Text(text)],
            PromptField::Tokens(ids) => vec![PromptInput::Tokens(ids)],
            PromptField::Texts(texts) => texts.into_iter().map(PromptInput::Text).collect(),
            PromptField::TokenLists(lists) => lists.into_iter().map(PromptInput::Tokens).collect(),
        };
        let empty = |p: &PromptInput| matches!(p, PromptInput::Tokens(ids) if ids.is_empty());
        if prompts.is_empty() || prompts.iter().any(empty) {
            return Err(RequestError::new("prompt", "prompt must not be empty"));
        }
        if prompts.len() > MAX_PROMPTS {
            return Err(RequestError::new(
                "prompt",
                format!("at most {MAX_PROMPTS} prompts per request"),
            ));
        }
        let logprobs = self
            .logprobs
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        if logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
            return Err(RequestError::new(
                "logprobs",
                format!("logprobs must be at most {MAX_LOGPROBS}"),
            ));
        }
        let max_tokens = self.fields.max_tokens.map(|n| ("max_tokens", n));
        let generation = self.fields.plan(max_tokens, logprobs)?;
        Ok(CompletionPlan {
            model: self.model,
            prompts,
            logprobs,
            generation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<CompletionPlan, RequestError> {
        serde_json::from_str::<CompletionRequest>(body)
            .expect("valid JSON shape")
            .plan()
    }

    #[test]
    fn every_prompt_form_converts() {
        let prompts = |prompt: &str| parse(&format!(r#"{{"model": "m", "prompt": {prompt}}}"#));
        assert_eq!(
            prompts(r#""Hi""#).unwrap().prompts,
            vec![PromptInput::Text("Hi".into())]
        );
        assert_eq!(
            prompts(r#"["a", "b"]"#).unwrap().prompts,
            vec![PromptInput::Text("a".into()), PromptInput::Text("b".into())]
        );
        assert_eq!(
            prompts("[1, 2]").unwrap().prompts,
            vec![PromptInput::Tokens(vec![1, 2])]
        );
        assert_eq!(
            prompts("[[1], [2, 3]]").unwrap().prompts,
            vec![
                PromptInput::Tokens(vec![1]),
                PromptInput::Tokens(vec![2, 3])
            ]
        );
        assert_eq!(prompts("[]").unwrap_err().param.as_deref(), Some("prompt"));
    }

    #[test]
    fn legacy_fields_are_checked() {
        let param = |extra: &str| {
            parse(&format!(r#"{{"model": "m", "prompt": "x", {extra}}}"#))
                .unwrap_err()
                .param
                .unwrap_or_default()
        };
        assert_eq!(param(r#""echo": true"#), "echo");
        assert_eq!(param(r#""suffix": "end""#), "suffix");
        assert_eq!(param(r#""best_of": 3"#), "best_of");
        assert_eq!(param(r#""logprobs": 21"#), "logprobs");
        assert_eq!(param(r#""max_tokens": 0"#), "max_tokens");
        let plan = parse(r#"{"model": "m", "prompt": "x", "logprobs": 2, "echo": false}"#).unwrap();
        assert_eq!(plan.logprobs, Some(2));
        assert_eq!(plan.generation.sampling.logprobs, Some(2));
    }
}
