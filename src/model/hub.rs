//! `org/name` model ids: resolved through the Hugging Face cache, downloaded into it when
//! missing (with `hf-hub`, the same cache layout and environment variables as Python's
//! `huggingface_hub`: `HF_HOME`, `HF_ENDPOINT`, `HF_HUB_OFFLINE`).

use std::path::PathBuf;

use hf_hub::Cache;
use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};

use super::ModelError;
use super::hf::HfFolder;

/// Where to look for and fetch models.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The hub cache directory (`$HF_HOME/hub` by default).
    pub cache_dir: Option<PathBuf>,
    /// The hub's base URL (`HF_ENDPOINT`; the public hub by default).
    pub endpoint: Option<String>,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
}

impl HubOptions {
    /// The options Python's `huggingface_hub` would use in this environment.
    pub fn from_env() -> Self {
        HubOptions {
            cache_dir: None,
            endpoint: std::env::var("HF_ENDPOINT").ok(),
            offline: std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }),
        }
    }
}

/// Whether `spec` looks like a hub id (`org/name`) rather than a path.
pub fn is_model_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let valid = |part: &str| {
        !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(org), Some(name), None) if valid(org) && valid(name))
}

/// The local folder (a cache snapshot) holding model `id`, downloading what is missing.
pub fn resolve(id: &str, options: &HubOptions) -> Result<PathBuf, ModelError> {
    let cache = options
        .cache_dir
        .clone()
        .map(Cache::new)
        .unwrap_or_else(Cache::from_env);
    let cache_path = cache.path().clone();
    let hub_error = |problem: String| ModelError::Hub {
        id: id.to_owned(),
        problem,
    };

    if let Some(config) = cache.model(id.to_owned()).get("config.json") {
        let dir = config
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_path.clone());
        if dir.join("tokenizer.json").is_file() && HfFolder::open(&dir).is_ok() {
            return Ok(dir);
        }
    }
    if options.offline {
        return Err(hub_error(format!(
            "not (completely) in the Hugging Face cache at {} and HF_HUB_OFFLINE is set",
            cache_path.display()
        )));
    }

    let mut builder = ApiBuilder::from_cache(cache).with_progress(false);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder
        .build()
        .map_err(|e| hub_error(format!("cannot set up the hub client: {e}")))?;
    let repo = api.model(id.to_owned());
    let fetch = |file: &str| -> Result<PathBuf, ModelError> {
        repo.get(file).map_err(|e| {
            hub_error(format!(
                "could not download {file} ({e}). Without network access, put the model into \
                 the Hugging Face cache ({}) or pass a local folder or GGUF file to --model",
                cache_path.display()
            ))
        })
    };
    let config = fetch("config.json")?;
    fetch("tokenizer.json")?;
    // Optional files: absent in some repositories (404), but a failed download must not
    // silently cost the model its chat template and special tokens.
    for optional in [
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        match repo.get(optional) {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(hub_error(format!(
                    "could not download {optional} ({e}); retry, or put the model into the \
                     Hugging Face cache ({})",
                    cache_path.display()
                )));
            }
        }
    }
    fetch_weights(&repo, &fetch)?;
    Ok(config.parent().map(PathBuf::from).unwrap_or(cache_path))
}

/// Whether the hub answered "no such file" (HTTP 404), as opposed to failing.
fn is_not_found(error: &ApiError) -> bool {
    match error {
        ApiError::RequestError(e) => matches!(e.as_ref(), ureq::Error::Status(404, _)),
        _ => false,
    }
}

/// Fetches the shards named in `model.safetensors.index.json`, or the single
/// `model.safetensors` when the repository has no index.
fn fetch_weights(
    repo: &ApiRepo,
    fetch: &dyn Fn(&str) -> Result<PathBuf, ModelError>,
) -> Result<(), ModelError> {
    let index = match repo.get("model.safetensors.index.json") {
        Ok(index) => index,
        Err(e) if is_not_found(&e) => {
            fetch("model.safetensors")?;
            return Ok(());
        }
        Err(_) => return fetch("model.safetensors.index.json").map(|_| ()),
    };
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::InvalidConfig {
        path: index.clone(),
        problem: format!("cannot read: {e}"),
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig {
            path: index.clone(),
            problem: format!("not valid JSON: {e}"),
        })?;
    let mut shards: Vec<&str> = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| m.values().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    shards.sort_unstable();
    shards.dedup();
    for shard in shards {
        fetch(shard)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_model_id;

    #[test]
    fn model_ids_are_org_slash_name() {
        assert!(is_model_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(is_model_id("mlx-community/Llama-3.2-1B-Instruct-4bit"));
        assert!(!is_model_id("models/x.gguf/extra"));
        assert!(!is_model_id("../etc"));
        assert!(!is_model_id("name"));
        assert!(!is_model_id("org/"));
        assert!(!is_model_id("a b/c"));
    }
}
