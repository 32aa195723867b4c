//! Loading a model from wherever the user points: a GGUF file, a Hugging Face folder, or a
//! hub id — weights, tokenizer, chat template and identity together.
//!
//! Must run on the thread that will use the model (MLX arrays are thread-bound).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mlx_rs::io::GgufFile;

use super::ModelError;
use super::chat_template::ChatTemplate;
use super::gguf;
use super::hf::HfFolder;
use super::hub::{self, HubOptions};
use super::identity::{self, ModelIdentity};
use super::llama::LlamaModel;
use super::tokenizer::Tokenizer;
use super::weights::WeightMode;

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A `.gguf` file.
    Gguf(PathBuf),
    /// A Hugging Face model folder (`config.json`, `*.safetensors`, tokenizer files).
    Folder(PathBuf),
    /// A Hugging Face Hub id, `org/name`.
    Hub(String),
}

impl ModelSource {
    /// Interprets a `--model` value: an existing file or folder wins; otherwise an
    /// `org/name` id, unless it looks like a path (a file extension such as `.gguf`, a
    /// leading `.` or `/`, or a first component that is an existing folder, like the
    /// default `models/...`); otherwise it is a missing path.
    pub fn parse(spec: &str) -> Result<Self, ModelError> {
        let path = Path::new(spec);
        if path.is_file() {
            return Ok(ModelSource::Gguf(path.to_path_buf()));
        }
        if path.is_dir() {
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        let path_like = spec.starts_with('.')
            || spec.starts_with('/')
            || [".gguf", ".safetensors", ".json", ".bin"]
                .iter()
                .any(|ext| spec.ends_with(ext))
            || spec
                .split('/')
                .next()
                .is_some_and(|first| Path::new(first).is_dir());
        if !path_like && hub::is_model_id(spec) {
            Ok(ModelSource::Hub(spec.to_owned()))
        } else {
            Err(ModelError::NotFound {
                path: path.to_path_buf(),
            })
        }
    }
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub weights: WeightMode,
    /// Overrides the served name derived from the source.
    pub served_name: Option<String>,
    pub hub: HubOptions,
}

/// A model ready to run: weights on this thread, tokenizer, template, identity.
pub struct LoadedModel {
    pub identity: ModelIdentity,
    pub model: LlamaModel,
    /// Shared with the streaming detokenizers of in-flight requests.
    pub tokenizer: Arc<Tokenizer>,
    /// Shared with the HTTP layer, which renders chat prompts off the engine thread.
    pub chat_template: Arc<ChatTemplate>,
}

/// Loads `source`. Errors name the file, key or tensor at fault.
pub fn load(source: &ModelSource, options: &LoadOptions) -> Result<LoadedModel, ModelError> {
    let (model, tokenizer, weight_files, derived_name, aliases) = match source {
        ModelSource::Gguf(path) => {
            let file = GgufFile::load(path).map_err(|source| ModelError::Gguf {
                path: path.clone(),
                source,
            })?;
            let config = gguf::model_config(&file, path)?;
            let tokenizer = Tokenizer::from_gguf(&file, path)?;
            let mut tensors = gguf::tensors(&file, &config, path)?;
            let model = LlamaModel::from_tensors(config, &mut tensors, options.weights)?;
            let stem = file_stem(path);
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (model, tokenizer, vec![path.clone()], stem, vec![file_name])
        }
        ModelSource::Folder(dir) => {
            let (model, tokenizer, files) = load_folder(dir, options.weights)?;
            (model, tokenizer, files, file_stem(dir), Vec::new())
        }
        ModelSource::Hub(id) => {
            let dir = hub::resolve(id, &options.hub)?;
            let (model, tokenizer, files) = load_folder(&dir, options.weights)?;
            let short = id.rsplit('/').next().unwrap_or(id).to_owned();
            (model, tokenizer, files, id.clone(), vec![short])
        }
    };

    let config = model.config();
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(ModelError::InvalidConfig {
            path: tokenizer.source().to_path_buf(),
            problem: format!(
                "the tokenizer has {} tokens but the model's embedding only {} rows",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        });
    }
    let chat_template =
        ChatTemplate::for_tokenizer(&tokenizer).map_err(|source| ModelError::ChatTemplate {
            path: tokenizer.source().to_path_buf(),
            source,
        })?;
    let files: Vec<&Path> = weight_files.iter().map(PathBuf::as_path).collect();
    let fingerprint = identity::fingerprint(&files).map_err(|source| ModelError::Io {
        path: weight_files.first().cloned().unwrap_or_default(),
        source,
    })?;
    let served_name = options.served_name.clone().unwrap_or(derived_name.clone());
    let mut aliases: Vec<String> = std::iter::once(derived_name)
        .chain(aliases)
        .filter(|alias| *alias != served_name)
        .collect();
    aliases.dedup();
    Ok(LoadedModel {
        identity: ModelIdentity {
            served_name,
            aliases,
            context_length: config.context_length,
            fingerprint,
        },
        model,
        tokenizer: Arc::new(tokenizer),
        chat_template: Arc::new(chat_template),
    })
}

impl LoadedModel {
    /// A few lines describing the model, for start-up output.
    pub fn summary(&self) -> String {
        let c = self.model.config();
        let identity = &self.identity;
        let mut lines = vec![
            format!("model:          {}", identity.served_name),
            format!("source:         {}", self.tokenizer.source().display()),
            format!("fingerprint:    {}", identity.fingerprint),
            format!(
                "architecture:   {:?}, {:.1}M parameters, weights as {:?}, computing in {:?}",
                c.architecture,
                c.parameter_count() as f64 / 1e6,
                self.model.mode(),
                self.model.compute_dtype()
            ),
            format!(
                "layers:         {} (hidden {}, feed-forward {})",
                c.num_layers, c.hidden_size, c.intermediate_size
            ),
            format!(
                "attention:      {} heads, {} KV heads, head dim {}",
                c.num_heads, c.num_kv_heads, c.head_dim
            ),
            format!("context:        {} tokens", c.context_length),
            format!("vocabulary:     {} tokens", self.tokenizer.vocab_size()),
            format!(
                "chat template:  {}",
                if self.chat_template.is_fallback() {
                    "none in the model, using ChatML"
                } else {
                    "from the model"
                }
            ),
        ];
        if !identity.aliases.is_empty() {
            lines.insert(
                1,
                format!("aliases:        {}", identity.aliases.join(", ")),
            );
        }
        lines.join("\n")
    }
}

fn load_folder(
    dir: &Path,
    weights: WeightMode,
) -> Result<(LlamaModel, Tokenizer, Vec<PathBuf>), ModelError> {
    let folder = HfFolder::open(dir)?;
    let tokenizer_config = dir.join("tokenizer_config.json");
    let mut tokenizer = Tokenizer::from_hf_files(
        &dir.join("tokenizer.json"),
        tokenizer_config
            .is_file()
            .then_some(tokenizer_config.as_path()),
    )?;
    // generation_config.json can name further end-of-generation ids (Llama 3.x lists
    // <|eot_id|> and <|end_of_text|> there).
    tokenizer.add_eos_ids(generation_eos_ids(&dir.join("generation_config.json"))?);
    let (config, mut tensors) = folder.load()?;
    let model = LlamaModel::from_tensors(config, &mut tensors, weights)?;
    Ok((model, tokenizer, folder.weight_files))
}

/// `eos_token_id` (a number or a list) of a `generation_config.json`; none when the file
/// is absent.
fn generation_eos_ids(path: &Path) -> Result<Vec<u32>, ModelError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let bad = |problem: String| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let ids = match value.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items.iter().collect(),
        Some(single) => vec![single],
    };
    ids.into_iter()
        .map(|id| {
            id.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| bad(format!("eos_token_id {id} is not a token id")))
        })
        .collect()
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
