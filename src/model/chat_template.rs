//! Chat templates: turning a list of chat messages into the prompt text a model was trained
//! on, by rendering its Hugging Face Jinja template with `minijinja`.
//!
//! The environment mirrors what `transformers` gives a template, so that a prompt renders
//! byte for byte as it does there:
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the template dropped;
//! - Python string/dict/list methods (`.strip()`, `.startswith()`, `.split()`, `.items()`,
//!   ...) through `minijinja-contrib`'s pycompat;
//! - variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` (none
//!   when the request has no tools), `documents` (none);
//! - functions `raise_exception(msg)` (becomes [`ChatTemplateError::Raised`]) and
//!   `strftime_now(format)` (local time);
//! - a `tojson` filter that writes JSON as Python's `json.dumps` does (`", "` and `": "`
//!   separators, non-ASCII kept, optional `indent`);
//! - the `{% generation %}` block of transformers' assistant-mask extension, rendered as its
//!   plain content.
//!
//! A model without a template gets ChatML ([`CHATML_TEMPLATE`]) and a warning at load.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Rest, Serde, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};
use serde::{Deserialize, Serialize};

use crate::model::tokenizer::Tokenizer;

/// The template used when a model has none: ChatML, as SmolLM2 and Qwen use it.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Name of the one template in a [`ChatTemplate`]'s environment (shows up in error messages).
const TEMPLATE_NAME: &str = "chat_template";

/// One chat message as the template sees it (`message['role']`, `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...: passed through unchanged.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Errors compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template is not valid Jinja (reported at load time).
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    /// The template called `raise_exception(message)`: the messages are not something this
    /// model's format can express (e.g. roles not alternating). A client error.
    #[error("the chat template rejected the conversation: {0}")]
    Raised(String),
    /// Rendering failed for another reason (a filter or method the template uses is
    /// missing, a type error on the given messages, ...).
    #[error("cannot render the chat template: {0}")]
    Render(String),
}

/// What `raise_exception` leaves in a render error's source chain.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// A compiled chat template plus the special-token strings it is rendered with.
///
/// Compiling happens in [`ChatTemplate::new`], so a broken template fails at model load,
/// not at the first request. Rendering is `&self` and thread-safe.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `template`, or the ChatML fallback (with a warning) when it is `None`.
    /// `bos_token`/`eos_token` are the strings the template sees (empty when unknown).
    pub fn new(
        template: Option<&str>,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<ChatTemplate, ChatTemplateError> {
        let (source, fallback) = match template {
            Some(template) => (rewrite_generation_blocks(template), false),
            None => {
                tracing::warn!(
                    "the model has no chat template; formatting chat prompts as ChatML \
                     (<|im_start|>role ... <|im_end|>)"
                );
                (CHATML_TEMPLATE.to_owned(), true)
            }
        };
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatTemplateError::Compile(describe(&e)))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| ChatTemplateError::Compile(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_owned(),
            eos_token: eos_token.unwrap_or_default().to_owned(),
            fallback,
        })
    }

    /// The template a tokenizer carries (or ChatML), with its BOS/EOS strings.
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Result<ChatTemplate, ChatTemplateError> {
        ChatTemplate::new(
            tokenizer.chat_template(),
            tokenizer.bos_token().as_deref(),
            tokenizer.eos_token().as_deref(),
        )
    }

    /// Whether this is the ChatML fallback rather than the model's own template.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Renders a conversation. `add_generation_prompt` appends the opening of the assistant's
    /// turn; `tools` (OpenAI-style tool definitions) is passed through as `tools`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, ChatTemplateError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(describe(&e)))?;
        let tools = match tools {
            Some(tools) => Value::from(Serde(tools)),
            None => Value::from(()),
        };
        let context = minijinja::context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => tools,
            documents => Value::from(()),
        };
        template
            .render(context)
            .map_err(|e| match raised_message(&e) {
                Some(message) => ChatTemplateError::Raised(message),
                None => ChatTemplateError::Render(describe(&e)),
            })
    }
}

/// The message a template passed to `raise_exception`, if that is what ended the render.
fn raised_message(error: &Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(raised) = err.downcast_ref::<RaisedByTemplate>() {
            return Some(raised.0.clone());
        }
        current = err.source();
    }
    None
}

/// A one-line description of a minijinja error with its template line.
fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(err) = source {
        let _ = write!(text, ": {err}");
        source = err.source();
    }
    text
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedByTemplate(message)))
}

fn strftime_now(format: String) -> Result<Value, Error> {
    let now = jiff::ZonedDateTime::now();
    jiff::fmt::strtime::format(format.as_bytes(), &now)
        .map(Value::from)
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now({format:?}) failed: {e}"),
            )
        })
}

/// `tojson` as transformers defines it: Python's `json.dumps(value, ensure_ascii=False,
/// indent=indent)`. Keyword arguments other than `indent` are accepted and ignored.
fn tojson(_state: &State, value: Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match (kwargs.get::<Option<Value>>("indent")?, args.first()) {
        (Some(indent), _) => indent_width(&indent)?,
        (None, Some(indent)) => indent_width(indent)?,
        (None, None) => None,
    };
    for key in kwargs.args() {
        if !["indent", "ensure_ascii", "separators", "sort_keys"].contains(&key) {
            return Err(Error::new(
                ErrorKind::TooManyArguments,
                format!("tojson got an unexpected keyword argument {key:?}"),
            ));
        }
    }
    let _ = kwargs.get::<Option<Value>>("ensure_ascii")?;
    let _ = kwargs.get::<Option<Value>>("separators")?;
    let _ = kwargs.get::<Option<Value>>("sort_keys")?;
    let mut out = String::new();
    write_json(&mut out, &value, indent.as_deref(), 0)?;
    Ok(Value::from_safe_string(out))
}

fn indent_width(indent: &Value) -> Result<Option<String>, Error> {
    match indent.kind() {
        ValueKind::None | ValueKind::Undefined => Ok(None),
        ValueKind::String => Ok(indent.as_str().map(str::to_owned)),
        ValueKind::Number => {
            let width = indent.as_i64().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson indent must be an integer",
                )
            })?;
            Ok(Some(" ".repeat(usize::try_from(width).unwrap_or(0))))
        }
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson indent must be an integer or a string",
        )),
    }
}

/// Writes `value` as Python's `json.dumps` would (see [`tojson`]).
fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<&str>,
    depth: usize,
) -> Result<(), Error> {
    // Python: compact form uses ", " and ": "; with an indent, items go one per line and the
    // item separator loses its trailing space.
    let newline = |out: &mut String, depth: usize| {
        if let Some(unit) = indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    };
    let item_separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_separator);
                }
                newline(out, depth + 1);
                match key.as_str() {
                    Some(text) => write_json_string(out, text),
                    None => write_json_string(out, &key.to_string()),
                }
                out.push_str(": ");
                write_json(out, &value.get_item(key)?, indent, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::BadSerialization,
                format!("tojson cannot serialize a {} value", value.kind()),
            ));
        }
    }
    Ok(())
}

fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    match f64::try_from(value.clone()) {
        // Python writes floats with a fractional part ("1.0") and spells specials out.
        Ok(f) if f.is_nan() => out.push_str("NaN"),
        Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
        Ok(f) if f.fract() == 0.0 && f.abs() < 1e16 => {
            let _ = write!(out, "{f:.1}");
        }
        Ok(f) => {
            let _ = write!(out, "{f}");
        }
        Err(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

fn write_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Replaces transformers' `{% generation %}` / `{% endgeneration %}` tags (an extension that
/// marks assistant tokens for training masks) with `{% if true %}` / `{% endif %}`, keeping
/// their whitespace-control markers, so the content renders unchanged.
fn rewrite_generation_blocks(template: &str) -> String {
    if !template.contains("generation") {
        return template.to_owned();
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let tag = &rest[start..];
        let Some(end) = tag.find("%}") else {
            break;
        };
        let inner = &tag[2..end];
        let open_marker = inner
            .chars()
            .next()
            .filter(|c| *c == '-' || *c == '+')
            .map(String::from)
            .unwrap_or_default();
        let close_marker = inner
            .chars()
            .last()
            .filter(|c| (*c == '-' || *c == '+') && inner.len() > open_marker.len())
            .map(String::from)
            .unwrap_or_default();
        let word = inner
            .trim_start_matches(['-', '+'])
            .trim_end_matches(['-', '+'])
            .trim();
        let replacement = match word {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(replacement) => {
                let _ = write!(out, "{{%{open_marker} {replacement} {close_marker}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi!"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "What is 2+2?"),
        ]
    }

    #[test]
    fn chatml_fallback_renders_chatml() -> Result<(), ChatTemplateError> {
        let template = ChatTemplate::new(None, None, None)?;
        assert!(template.is_fallback());
        let text = template.render(&conversation()[1..2], true, None)?;
        assert_eq!(
            text,
            "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = template.render(&conversation()[..2], false, None)?;
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        );
        Ok(())
    }

    #[test]
    fn hand_written_template_with_python_methods_and_block_trimming()
    -> Result<(), ChatTemplateError> {
        // Block tags on their own lines must vanish entirely (trim_blocks + lstrip_blocks).
        let source = "{{ bos_token }}
{% for message in messages %}
    {% if message.role == 'system' %}
[SYS] {{ message['content'].strip().upper() }}
    {% elif message['role'].startswith('us') %}
[U] {{ message.content.split('+') | join(' plus ') }}
    {% else %}
[A] {{ message.content }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}[A]{% endif %}
";
        let template = ChatTemplate::new(Some(source), Some("<s>"), Some("</s>"))?;
        assert!(!template.is_fallback());
        let text = template.render(&conversation(), true, None)?;
        assert_eq!(
            text,
            "<s>\n[SYS] BE BRIEF.\n[U] Hi!\n[A] Hello.</s>\n[U] What is 2 plus 2?\n[A]"
        );
        Ok(())
    }

    #[test]
    fn raise_exception_is_a_typed_error() -> Result<(), ChatTemplateError> {
        let source = "{% for m in messages %}{% if m.role == 'system' %}\
{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}";
        let template = ChatTemplate::new(Some(source), None, None)?;
        assert_eq!(
            template.render(&conversation()[1..], false, None)?,
            "Hi!Hello.What is 2+2?"
        );
        match template.render(&conversation(), false, None) {
            Err(ChatTemplateError::Raised(message)) => {
                assert_eq!(message, "System role not supported")
            }
            other => panic!("expected Raised, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn compile_errors_are_reported_at_construction() {
        let err = ChatTemplate::new(Some("{% for m in messages %}{{ m.content }}"), None, None)
            .expect_err("unclosed for loop must not compile");
        assert!(matches!(err, ChatTemplateError::Compile(_)), "{err:?}");
        assert!(err.to_string().contains("does not compile"), "{err}");
    }

    #[test]
    fn unknown_filter_is_a_render_error_not_a_panic() -> Result<(), ChatTemplateError> {
        let template = ChatTemplate::new(Some("{{ messages | no_such_filter }}"), None, None);
        match template {
            // minijinja may resolve filters at compile time or at render time.
            Err(ChatTemplateError::Compile(_)) => Ok(()),
            Ok(template) => {
                let err = template
                    .render(&conversation(), false, None)
                    .expect_err("unknown filter");
                assert!(matches!(err, ChatTemplateError::Render(_)), "{err:?}");
                Ok(())
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn tools_are_passed_through_and_tojson_matches_python() -> Result<(), ChatTemplateError> {
        let source = "{% if tools is not none %}{% for t in tools %}{{ t | tojson }}\n{% endfor %}\
{% else %}no tools{% endif %}";
        let template = ChatTemplate::new(Some(source), None, None)?;
        assert_eq!(template.render(&[], false, None)?, "no tools");
        let tools = serde_json::json!([{
            "type": "function",
            "function": {"name": "get_weather", "description": "Météo <now> \"quoted\"\n",
                         "parameters": {"required": ["city"], "n": 1.0, "k": 3, "ok": true, "x": null}}
        }]);
        let text = template.render(&[], false, Some(&tools))?;
        assert_eq!(
            text,
            "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \
\"description\": \"Météo <now> \\\"quoted\\\"\\n\", \"parameters\": {\"required\": \
[\"city\"], \"n\": 1.0, \"k\": 3, \"ok\": true, \"x\": null}}}\n"
        );
        let pretty = ChatTemplate::new(Some("{{ tools[0] | tojson(indent=2) }}"), None, None)?
            .render(
                &[],
                false,
                Some(&serde_json::json!([{"a": [1, 2], "b": {}}])),
            )?;
        assert_eq!(pretty, "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}");
        Ok(())
    }

    #[test]
    fn strftime_now_formats_the_date() -> Result<(), ChatTemplateError> {
        let template = ChatTemplate::new(Some("{{ strftime_now('%Y') }}"), None, None)?;
        let year = template.render(&[], false, None)?;
        assert_eq!(year.len(), 4, "{year}");
        assert!(year.chars().all(|c| c.is_ascii_digit()), "{year}");
        Ok(())
    }

    #[test]
    fn generation_blocks_render_their_content() -> Result<(), ChatTemplateError> {
        let source = "{% for m in messages %}{% if m.role == 'assistant' %}\
{%- generation -%} <{{ m.content }}> {%- endgeneration -%}{% else %}{{ m.content }}{% endif %}\
{% endfor %}";
        let template = ChatTemplate::new(Some(source), None, None)?;
        assert_eq!(
            template.render(&conversation()[1..3], false, None)?,
            "Hi!<Hello.>"
        );
        Ok(())
    }

    #[test]
    fn loop_controls_and_namespace_work() -> Result<(), ChatTemplateError> {
        let source = "{% set ns = namespace(n=0) %}{% for m in messages %}\
{% if m.role == 'assistant' %}{% break %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}";
        let template = ChatTemplate::new(Some(source), None, None)?;
        assert_eq!(template.render(&conversation(), false, None)?, "2");
        Ok(())
    }
}
