//! The parts of a Hugging Face `tokenizer_config.json` serving needs: special tokens, whether
//! BOS/EOS are added, and the chat template.

use std::path::Path;

use super::tokenizer::TokenizerError;

/// The fields of a Hugging Face `tokenizer_config.json` we use.
pub(crate) struct TokenizerConfig {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub pad: Option<String>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    pub(crate) fn read(path: &Path) -> Result<TokenizerConfig, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |problem: String| TokenizerError::BadConfig {
            path: path.to_path_buf(),
            problem,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let object = json
            .as_object()
            .ok_or_else(|| bad("expected a JSON object at the top level".to_owned()))?;

        // A special token is written as a string or as an AddedToken object {"content": ...}.
        let token = |field: &str| -> Result<Option<String>, TokenizerError> {
            match object.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(serde_json::Value::Object(o)) => match o.get("content") {
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(bad(format!(
                        "`{field}` is an object without a string `content`"
                    ))),
                },
                Some(other) => Err(bad(format!(
                    "`{field}` must be a string or {{\"content\": ...}}, found {other}"
                ))),
            }
        };
        let flag = |field: &str| -> Result<Option<bool>, TokenizerError> {
            match object.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => Err(bad(format!(
                    "`{field}` must be true or false, found {other}"
                ))),
            }
        };
        let chat_template = match object.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(named)) => {
                let mut templates = Vec::with_capacity(named.len());
                for entry in named {
                    let name = entry.get("name").and_then(serde_json::Value::as_str);
                    let template = entry.get("template").and_then(serde_json::Value::as_str);
                    match (name, template) {
                        (Some(name), Some(template)) => templates.push((name, template)),
                        _ => {
                            return Err(bad(
                                "`chat_template` list entries must be {\"name\": string, \
                                 \"template\": string}"
                                    .to_owned(),
                            ));
                        }
                    }
                }
                match templates.iter().find(|(name, _)| *name == "default") {
                    Some((_, template)) => Some((*template).to_owned()),
                    None => {
                        let names: Vec<&str> = templates.iter().map(|(name, _)| *name).collect();
                        return Err(bad(format!(
                            "`chat_template` is a list without a `default` entry (has: {})",
                            names.join(", ")
                        )));
                    }
                }
            }
            Some(other) => {
                return Err(bad(format!(
                    "`chat_template` must be a string or a list of named templates, found {}",
                    json_kind(other)
                )));
            }
        };
        Ok(TokenizerConfig {
            bos: token("bos_token")?,
            eos: token("eos_token")?,
            pad: token("pad_token")?,
            add_bos: flag("add_bos_token")?,
            add_eos: flag("add_eos_token")?,
            chat_template,
        })
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}
