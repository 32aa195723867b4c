//! `POST /v1/chat/completions` request body: parsing OpenAI's JSON and checking it, before
//! anything reaches the engine. Fields we recognise but do not support are refused by name;
//! unknown fields are ignored (as OpenAI-compatible servers do).

use serde::Deserialize;
use serde_json::Value;

use crate::engine::sampling::{MAX_TOP_LOGPROBS, SamplingParams};
use crate::model::chat_template::ChatMessage;

/// OpenAI allows at most this many stop strings.
pub const MAX_STOP_STRINGS: usize = 4;

/// A client error in the request body: `param` names the offending field (OpenAI's
/// `error.param`), `message` says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub param: Option<String>,
    pub message: String,
}

impl RequestError {
    fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
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

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestMessage {
    pub role: String,
    pub content: Option<MessageContent>,
}

/// The request body as sent. Every field is optional except `model` and `messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub n: Option<u64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Recognised but unsupported: refused by name when used.
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<Value>,
}

/// A checked request, in the engine's and the template's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPlan {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub sampling: SamplingParams,
    /// `None`: the rest of the context (OpenAI's default).
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Log-probabilities requested (`logprobs: true`), with this many alternatives.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

impl ChatCompletionRequest {
    /// Checks every field and converts the request; the error names the field at fault.
    pub fn plan(self) -> Result<ChatPlan, RequestError> {
        if let Some(tools) = &self.tools
            && !tools.is_null()
            && tools.as_array().is_none_or(|t| !t.is_empty())
        {
            return Err(RequestError::new(
                "tools",
                "tools (function calling) are not supported by this server",
            ));
        }
        if let Some(choice) = &self.tool_choice
            && !choice.is_null()
            && choice.as_str() != Some("none")
        {
            return Err(RequestError::new(
                "tool_choice",
                "tool_choice is not supported by this server (only \"none\")",
            ));
        }
        if let Some(format) = &self.response_format
            && !format.is_null()
            && format.get("type").and_then(Value::as_str) != Some("text")
        {
            return Err(RequestError::new(
                "response_format",
                "only response_format {\"type\": \"text\"} is supported",
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(RequestError::new("n", "only n = 1 is supported"));
        }
        if self.messages.is_empty() {
            return Err(RequestError::new("messages", "messages must not be empty"));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, message)| convert_message(i, message))
            .collect::<Result<Vec<_>, _>>()?;

        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => Some(("max_completion_tokens", n)),
            (None, Some(n)) => Some(("max_tokens", n)),
            (None, None) => None,
        };
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
        if stop.len() > MAX_STOP_STRINGS {
            return Err(RequestError::new(
                "stop",
                format!("at most {MAX_STOP_STRINGS} stop sequences are allowed"),
            ));
        }

        let logprobs = match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (false, Some(_)) => {
                return Err(RequestError::new(
                    "top_logprobs",
                    "top_logprobs requires logprobs: true",
                ));
            }
            (false, None) => None,
            (true, top) => Some(usize::try_from(top.unwrap_or(0)).unwrap_or(usize::MAX)),
        };
        let defaults = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: match self.top_k {
                // 0 (and -1 in some clients, not representable here) mean "off".
                Some(0) | None => None,
                Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX)),
            },
            min_p: self.min_p.unwrap_or(defaults.min_p),
            seed: self.seed.map(|s| s as u64),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            top_logprobs: logprobs.filter(|&n| n > 0),
        };
        if let Err(message) = sampling.validate() {
            let param = message
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            return Err(RequestError::new(param, message));
        }
        if logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(RequestError::new(
                "top_logprobs",
                format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"),
            ));
        }
        let stream = self.stream.unwrap_or(false);
        Ok(ChatPlan {
            model: self.model,
            messages,
            sampling,
            max_tokens,
            stop,
            logprobs,
            stream,
            include_usage: stream && self.stream_options.is_some_and(|o| o.include_usage),
        })
    }
}

fn convert_message(index: usize, message: &RequestMessage) -> Result<ChatMessage, RequestError> {
    let role = match message.role.as_str() {
        // OpenAI's newer name for system instructions.
        "developer" => "system",
        role @ ("system" | "user" | "assistant" | "tool") => role,
        other => {
            return Err(RequestError::new(
                format!("messages[{index}].role"),
                format!(
                    "role `{other}` is not supported (system, developer, user, assistant, tool)"
                ),
            ));
        }
    };
    let content = match &message.content {
        None => String::new(),
        Some(MessageContent::Text(text)) => text.clone(),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(piece)) => text.push_str(piece),
                    ("text", None) => {
                        return Err(RequestError::new(
                            format!("messages[{index}].content[{j}].text"),
                            "a text content part needs `text`",
                        ));
                    }
                    (other, _) => {
                        return Err(RequestError::new(
                            format!("messages[{index}].content[{j}].type"),
                            format!(
                                "content parts of type `{other}` are not supported (only text)"
                            ),
                        ));
                    }
                }
            }
            text
        }
    };
    Ok(ChatMessage::new(role, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatPlan, RequestError> {
        serde_json::from_str::<ChatCompletionRequest>(body)
            .expect("valid JSON shape")
            .plan()
    }

    #[test]
    fn a_typical_request_converts() {
        let plan = parse(
            r#"{"model": "m", "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                              {"type": "text", "text": "there"}]}],
                "max_completion_tokens": 20, "max_tokens": 99, "temperature": 0,
                "stop": "END", "seed": 3, "logprobs": true, "top_logprobs": 2,
                "stream": true, "stream_options": {"include_usage": true},
                "some_future_field": {"ignored": true}}"#,
        )
        .unwrap();
        assert_eq!(
            plan.messages,
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "Hi there")
            ]
        );
        assert_eq!(plan.max_tokens, Some(20), "max_completion_tokens wins");
        assert_eq!(plan.sampling.temperature, 0.0);
        assert_eq!(plan.sampling.seed, Some(3));
        assert_eq!(plan.sampling.top_logprobs, Some(2));
        assert_eq!(
            (plan.logprobs, plan.stop),
            (Some(2), vec!["END".to_owned()])
        );
        assert!(plan.stream && plan.include_usage);

        let defaults =
            parse(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#).unwrap();
        assert_eq!(defaults.max_tokens, None);
        assert_eq!(defaults.sampling, SamplingParams::default());
        assert!(!defaults.stream && !defaults.include_usage);
    }

    #[test]
    fn unsupported_features_are_refused_by_name() {
        let param = |body: &str| parse(body).unwrap_err().param.unwrap_or_default();
        let with = |extra: &str| {
            format!(
                r#"{{"model": "m", "messages": [{{"role": "user", "content": "x"}}], {extra}}}"#
            )
        };
        assert_eq!(param(&with(r#""tools": [{"type": "function"}]"#)), "tools");
        assert_eq!(param(&with(r#""tool_choice": "auto""#)), "tool_choice");
        assert_eq!(
            param(&with(r#""response_format": {"type": "json_object"}"#)),
            "response_format"
        );
        assert_eq!(param(&with(r#""n": 2"#)), "n");
        assert_eq!(param(&with(r#""max_tokens": 0"#)), "max_tokens");
        assert_eq!(param(&with(r#""temperature": 3"#)), "temperature");
        assert_eq!(param(&with(r#""top_logprobs": 3"#)), "top_logprobs");
        assert_eq!(param(&with(r#""stop": ["a","b","c","d","e"]"#)), "stop");
        // Harmless forms of the recognised fields pass.
        assert!(parse(&with(r#""tools": [], "tool_choice": "none""#)).is_ok());
        assert!(parse(&with(r#""response_format": {"type": "text"}, "n": 1"#)).is_ok());
        let image = r#"{"model": "m", "messages": [{"role": "user", "content":
            [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#;
        assert_eq!(param(image), "messages[0].content[0].type");
        let role = r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#;
        assert_eq!(param(role), "messages[0].role");
        assert_eq!(param(r#"{"model": "m", "messages": []}"#), "messages");
    }
}
