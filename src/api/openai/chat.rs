//! `POST /v1/chat/completions` request body: parsing OpenAI's JSON and checking it, before
//! anything reaches the engine. Fields we recognise but do not support are refused by name;
//! unknown fields are ignored (as OpenAI-compatible servers do).

use serde::Deserialize;
use serde_json::Value;

use super::params::{GenerationFields, GenerationPlan, RequestError, refuse_unless};
use crate::model::chat_template::ChatMessage;

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
    /// Wins over the older `max_tokens`.
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    /// The fields both endpoints share.
    #[serde(flatten)]
    pub fields: GenerationFields,
    /// Recognised but unsupported: refused by name when used.
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub response_format: Option<Value>,
}

/// A checked request, in the engine's and the template's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPlan {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Log-probabilities requested (`logprobs: true`), with this many alternatives.
    pub logprobs: Option<usize>,
    pub generation: GenerationPlan,
}

impl ChatCompletionRequest {
    /// Checks every field and converts the request; the error names the field at fault.
    pub fn plan(self) -> Result<ChatPlan, RequestError> {
        refuse_unless(
            "tools",
            &self.tools,
            |t| t.as_array().is_some_and(Vec::is_empty),
            "tools (function calling) are not supported by this server",
        )?;
        refuse_unless(
            "tool_choice",
            &self.tool_choice,
            |c| c.as_str() == Some("none"),
            "tool_choice is not supported by this server (only \"none\")",
        )?;
        refuse_unless(
            "functions",
            &self.functions,
            |f| f.as_array().is_some_and(Vec::is_empty),
            "functions (function calling) are not supported by this server",
        )?;
        refuse_unless(
            "function_call",
            &self.function_call,
            |c| c.as_str() == Some("none"),
            "function_call is not supported by this server (only \"none\")",
        )?;
        refuse_unless(
            "response_format",
            &self.response_format,
            |f| f.get("type").and_then(Value::as_str) == Some("text"),
            "only response_format {\"type\": \"text\"} is supported",
        )?;
        if self.messages.is_empty() {
            return Err(RequestError::new("messages", "messages must not be empty"));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, message)| convert_message(i, message))
            .collect::<Result<Vec<_>, _>>()?;

        let max_tokens = match (self.max_completion_tokens, self.fields.max_tokens) {
            (Some(n), _) => Some(("max_completion_tokens", n)),
            (None, Some(n)) => Some(("max_tokens", n)),
            (None, None) => None,
        };
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
        let generation = self.fields.plan(max_tokens, logprobs)?;
        Ok(ChatPlan {
            model: self.model,
            messages,
            logprobs,
            generation,
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
    use crate::engine::sampling::SamplingParams;

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
        let generation = &plan.generation;
        assert_eq!(
            generation.max_tokens,
            Some(20),
            "max_completion_tokens wins"
        );
        assert_eq!(generation.sampling.temperature, 0.0);
        assert_eq!(generation.sampling.seed, Some(3));
        assert_eq!(generation.sampling.logprobs, Some(2));
        assert_eq!(
            (plan.logprobs, &generation.stop),
            (Some(2), &vec!["END".to_owned()])
        );
        assert!(generation.stream && generation.include_usage);

        let defaults =
            parse(r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#).unwrap();
        assert_eq!(defaults.generation.max_tokens, None);
        assert_eq!(defaults.generation.sampling, SamplingParams::default());
        assert!(!defaults.generation.stream && !defaults.generation.include_usage);
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
        assert_eq!(param(&with(r#""functions": [{"name": "f"}]"#)), "functions");
        assert_eq!(
            param(&with(r#""response_format": {"type": "json_object"}"#)),
            "response_format"
        );
        assert_eq!(param(&with(r#""n": 2"#)), "n");
        assert_eq!(param(&with(r#""max_tokens": 0"#)), "max_tokens");
        assert_eq!(
            param(&with(r#""max_completion_tokens": 0"#)),
            "max_completion_tokens"
        );
        assert_eq!(param(&with(r#""top_logprobs": 3"#)), "top_logprobs");
        // Harmless forms of the recognised fields pass.
        assert!(parse(&with(r#""tools": [], "tool_choice": "none""#)).is_ok());
        assert!(parse(&with(r#""response_format": {"type": "text"}, "n": 1"#)).is_ok());
        assert!(parse(&with(r#""tools": null, "response_format": null"#)).is_ok());
        let image = r#"{"model": "m", "messages": [{"role": "user", "content":
            [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#;
        assert_eq!(param(image), "messages[0].content[0].type");
        let role = r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#;
        assert_eq!(param(role), "messages[0].role");
        assert_eq!(param(r#"{"model": "m", "messages": []}"#), "messages");
    }
}
