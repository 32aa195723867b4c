//! Text <-> token ids, built from a GGUF file's embedded vocabulary or from a Hugging Face
//! `tokenizer.json` folder.
//!
//! The heavy lifting (BPE merges, pre-tokenizer regexes, added-token matching, byte-level
//! decoding) is done by the `tokenizers` crate, so that ids agree with Hugging Face
//! `transformers` for the same `tokenizer.json`. What this module adds:
//!
//! - building that `tokenizer.json` equivalent from GGUF metadata (`tokenizer.ggml.*`), with
//!   the pre-tokenizer chosen by `tokenizer.ggml.pre` the way llama.cpp names them;
//! - the facts around the vocabulary that serving needs: BOS, the set of ids that end a
//!   generation, whether BOS is prepended, the chat template source.
//!
//! A [`Tokenizer`] is plain data (no MLX arrays), `Send + Sync`, and cheap to share behind an
//! `Arc` between the HTTP side (prompt encoding) and the engine thread (decoding).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use mlx_rs::io::GgufFile;
use tokenizers::AddedToken;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;

use super::gguf_metadata::{GgufMetadata, MetadataError};
use super::pre_tokenizer::{SUPPORTED_PRE_TYPES, pre_tokenizer_spec};
use super::tokenizer_config::TokenizerConfig;

/// GGUF token type of a control token (`<|im_start|>`, `<|endoftext|>`): matched whole in
/// text, skipped when decoding with `skip_special`.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token: matched whole in text, kept when decoding.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Spellings of end-of-turn / end-of-text tokens in common model families. Each one that is
/// an added (control or user-defined) token of the vocabulary also ends a generation (see
/// [`Tokenizer::eos_ids`]); llama.cpp builds its end-of-generation set the same way.
const END_OF_GENERATION_MARKERS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
];

/// Errors building or using a tokenizer. Messages name the file and metadata key involved.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A tokenizer metadata key of a GGUF file is absent, unreadable or unusable.
    #[error("{0} (the file carries no usable tokenizer)")]
    Metadata(#[from] MetadataError),
    /// `tokenizer.ggml.model` names a tokenizer family we do not implement.
    #[error(
        "GGUF file {path}: tokenizer.ggml.model is `{model}`, but only `gpt2` (byte-level BPE) \
         tokenizers are supported"
    )]
    UnsupportedModel { path: PathBuf, model: String },
    /// `tokenizer.ggml.pre` names a pre-tokenizer we cannot reproduce exactly.
    #[error(
        "GGUF file {path}: tokenizer.ggml.pre is `{pre}`, which is not supported (supported: {})",
        SUPPORTED_PRE_TYPES.join(", ")
    )]
    UnsupportedPreTokenizer { path: PathBuf, pre: String },
    /// The `tokenizers` crate refused the vocabulary, merges or a tokenizer.json.
    #[error("cannot build the tokenizer from {path}: {message}")]
    Build { path: PathBuf, message: String },
    /// A file of a Hugging Face folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `tokenizer_config.json` is not valid JSON or has a field of the wrong shape.
    #[error("{path}: {problem}")]
    BadConfig { path: PathBuf, problem: String },
    /// Encoding text failed inside the `tokenizers` crate.
    #[error("cannot encode text: {0}")]
    Encode(String),
    /// Decoding ids failed inside the `tokenizers` crate.
    #[error("cannot decode token ids: {0}")]
    Decode(String),
}

/// A text tokenizer plus the special-token facts serving needs.
///
/// Invariants: every id it hands out is below [`Tokenizer::vocab_size`]; `eos_ids` is never
/// empty when the source declared an end-of-sequence token; the chat template, when present,
/// is the model's own (compile it with [`crate::model::chat_template::ChatTemplate`]).
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Where it was built from, for messages.
    source: PathBuf,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eos_ids: BTreeSet<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether a normalizer only ever keeps or lengthens text: prepending, replacing a string
/// with one at least as long, byte-level mapping, or a sequence of those.
fn never_shortens(normalizer: &tokenizers::NormalizerWrapper) -> bool {
    use tokenizers::NormalizerWrapper as N;
    match normalizer {
        N::Prepend(_) | N::ByteLevel(_) => true,
        N::Sequence(sequence) => sequence.as_ref().iter().all(never_shortens),
        N::Replace(replace) => {
            // The pattern is private; its serialized form names it.
            let pattern = serde_json::to_value(replace)
                .ok()
                .and_then(|v| v["pattern"]["String"].as_str().map(str::len));
            pattern.is_some_and(|len| replace.content.len() >= len)
        }
        _ => false,
    }
}

impl Tokenizer {
    /// Builds the byte-level BPE tokenizer a GGUF file embeds (`tokenizer.ggml.*`).
    ///
    /// `path` is only used in error messages. Reads the metadata on the calling thread and
    /// keeps no MLX array.
    ///
    /// Control tokens (token type 3) become special added tokens: they are matched whole in
    /// text and dropped by `decode(.., skip_special = true)`. User-defined tokens (type 4)
    /// are matched whole too but are kept when decoding.
    pub fn from_gguf(file: &GgufFile, path: &Path) -> Result<Tokenizer, TokenizerError> {
        let meta = GgufMetadata::new(file, path);

        let model = meta.required_string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel {
                path: path.to_path_buf(),
                model,
            });
        }
        let pre = match meta.string("tokenizer.ggml.pre")? {
            Some(pre) => pre,
            None => {
                tracing::warn!(
                    path = %path.display(),
                    "GGUF file has no tokenizer.ggml.pre; using the GPT-2 pre-tokenizer"
                );
                "default".to_owned()
            }
        };
        let spec = pre_tokenizer_spec(&pre)
            .map_err(|message| TokenizerError::Build {
                path: path.to_path_buf(),
                message,
            })?
            .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer {
                path: path.to_path_buf(),
                pre: pre.clone(),
            })?;

        let tokens = meta.required_strings("tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(meta.bad("tokenizer.ggml.tokens", "is empty").into());
        }
        let vocab_len = u32::try_from(tokens.len())
            .map_err(|_| meta.bad("tokenizer.ggml.tokens", "has more than 2^32 entries"))?;
        let merges = meta
            .required_strings("tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(i, merge)| {
                // Two vocabulary entries separated by one space. Searching from the second
                // character keeps a (user-defined) token that starts with a space intact.
                let split = merge
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| c == ' ')
                    .map(|(at, _)| at);
                match split {
                    Some(at) => Ok((merge[..at].to_owned(), merge[at + 1..].to_owned())),
                    None => Err(meta.bad(
                        "tokenizer.ggml.merges",
                        format!("entry {i} ({merge:?}) is not two tokens separated by a space"),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token_types = match meta.i32_array("tokenizer.ggml.token_type")? {
            Some(types) if types.len() != tokens.len() => {
                return Err(meta
                    .bad(
                        "tokenizer.ggml.token_type",
                        format!(
                            "has {} entries but tokenizer.ggml.tokens has {}",
                            types.len(),
                            tokens.len()
                        ),
                    )
                    .into());
            }
            Some(types) => types,
            None => vec![1; tokens.len()],
        };

        // Later duplicates win, as in llama.cpp's and transformers' own maps.
        let mut vocab = tokenizers::models::bpe::Vocab::default();
        for (id, token) in (0..vocab_len).zip(&tokens) {
            if vocab.insert(token.clone(), id).is_some() {
                tracing::warn!(token = %token, id, "duplicate token in tokenizer.ggml.tokens");
            }
        }
        let build_err = |message: String| TokenizerError::Build {
            path: path.to_path_buf(),
            message,
        };
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| build_err(format!("invalid vocabulary or merges: {e}")))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        if let Some(normalizer) = spec.normalizer {
            inner
                .with_normalizer(Some(normalizer))
                .map_err(|e| build_err(format!("cannot set the normalizer: {e}")))?;
        }
        inner.with_pre_tokenizer(Some(spec.pre_tokenizer));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
            false, true, true,
        ))));
        inner.with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::new(
            false, true, true,
        ))));
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter_map(|(token, &kind)| match kind {
                TOKEN_TYPE_CONTROL => Some(AddedToken::from(token.clone(), true)),
                TOKEN_TYPE_USER_DEFINED => {
                    Some(AddedToken::from(token.clone(), false).normalized(false))
                }
                _ => None,
            })
            .collect();
        // Added tokens already in the vocabulary keep their ids.
        inner
            .add_tokens(added)
            .map_err(|e| build_err(format!("cannot register special tokens: {e}")))?;

        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match meta.optional_u32(key)? {
                Some(id) if id >= vocab_len => Err(meta
                    .bad(
                        key,
                        format!("is {id}, outside the vocabulary of {vocab_len} tokens"),
                    )
                    .into()),
                other => Ok(other),
            }
        };
        let bos_id = id("tokenizer.ggml.bos_token_id")?;
        let eos_id = id("tokenizer.ggml.eos_token_id")?;
        let pad_id = id("tokenizer.ggml.padding_token_id")?;
        let mut extra_eos = Vec::new();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            extra_eos.extend(id(key)?);
        }
        let add_bos = meta
            .optional_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(spec.default_add_bos);
        let add_eos = meta
            .optional_bool("tokenizer.ggml.add_eos_token")?
            .unwrap_or(false);
        let chat_template = meta.string("tokenizer.chat_template")?;

        Ok(Tokenizer::assemble(Parts {
            inner,
            source: path.to_path_buf(),
            bos_id,
            eos_id,
            extra_eos,
            pad_id,
            add_bos,
            add_eos,
            chat_template,
        }))
    }

    /// Loads a Hugging Face tokenizer: `tokenizer.json` plus, optionally,
    /// `tokenizer_config.json` for BOS/EOS, `add_bos_token` and the chat template.
    ///
    /// Without a config there is no BOS, no EOS and no chat template. `add_bos_token` absent
    /// from the config means "whatever tokenizer.json's post-processor does". When the config
    /// has no `chat_template`, a `chat_template.jinja` beside it is used (newer HF folders).
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config_json: Option<&Path>,
    ) -> Result<Tokenizer, TokenizerError> {
        let bytes = std::fs::read(tokenizer_json).map_err(|source| TokenizerError::Io {
            path: tokenizer_json.to_path_buf(),
            source,
        })?;
        let inner =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Build {
                path: tokenizer_json.to_path_buf(),
                message: format!("not a valid Hugging Face tokenizer.json: {e}"),
            })?;

        let config = match tokenizer_config_json {
            Some(path) => Some(TokenizerConfig::read(path)?),
            None => None,
        };
        let config_path = tokenizer_config_json.unwrap_or(tokenizer_json);
        let resolve =
            |token: Option<&String>, field: &str| -> Result<Option<u32>, TokenizerError> {
                let Some(token) = token else {
                    return Ok(None);
                };
                inner
                    .token_to_id(token)
                    .map(Some)
                    .ok_or_else(|| TokenizerError::BadConfig {
                        path: config_path.to_path_buf(),
                        problem: format!(
                            "`{field}` is {token:?}, which is not in the vocabulary of {}",
                            tokenizer_json.display()
                        ),
                    })
            };
        let bos_id = resolve(config.as_ref().and_then(|c| c.bos.as_ref()), "bos_token")?;
        let eos_id = resolve(config.as_ref().and_then(|c| c.eos.as_ref()), "eos_token")?;
        let pad_id = resolve(config.as_ref().and_then(|c| c.pad.as_ref()), "pad_token")?;

        let add_bos = match config.as_ref().and_then(|c| c.add_bos) {
            Some(add_bos) => add_bos,
            // Does the post-processor put BOS in front of an empty input?
            None => match bos_id {
                Some(bos) => inner
                    .encode("", true)
                    .map(|enc| enc.get_ids().first() == Some(&bos))
                    .unwrap_or(false),
                None => false,
            },
        };
        let add_eos = config.as_ref().and_then(|c| c.add_eos).unwrap_or(false);
        let mut chat_template = config.as_ref().and_then(|c| c.chat_template.clone());
        if chat_template.is_none()
            && let Some(dir) = tokenizer_config_json.and_then(Path::parent)
        {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                chat_template =
                    Some(
                        std::fs::read_to_string(&jinja).map_err(|source| TokenizerError::Io {
                            path: jinja.clone(),
                            source,
                        })?,
                    );
            }
        }

        Ok(Tokenizer::assemble(Parts {
            inner,
            source: tokenizer_json.to_path_buf(),
            bos_id,
            eos_id,
            extra_eos: Vec::new(),
            pad_id,
            add_bos,
            add_eos,
            chat_template,
        }))
    }

    fn assemble(parts: Parts) -> Tokenizer {
        let Parts {
            inner,
            source,
            bos_id,
            eos_id,
            extra_eos,
            pad_id,
            add_bos,
            add_eos,
            chat_template,
        } = parts;
        let mut eos_ids: BTreeSet<u32> = eos_id.into_iter().chain(extra_eos).collect();
        // Only added tokens count: a plain BPE piece spelled like a marker is just text.
        let added = inner.get_added_vocabulary().get_vocab();
        eos_ids.extend(
            END_OF_GENERATION_MARKERS
                .iter()
                .filter_map(|marker| added.get(*marker).copied()),
        );
        Tokenizer {
            inner,
            source,
            bos_id,
            eos_id,
            eos_ids,
            pad_id,
            add_bos,
            add_eos,
            chat_template,
        }
    }

    /// Encodes text. Special tokens written in the text (`<|im_start|>`) are recognised as
    /// single tokens; chat templates rely on this.
    ///
    /// With `add_special`, the tokenizer's post-processor runs (a tokenizer.json may add BOS
    /// there) and BOS is prepended when [`Tokenizer::add_bos`] says so and it is not already
    /// the first id (EOS likewise appended when the source asks for it). Encode a rendered
    /// chat prompt with `add_special = false`: the template writes its own BOS.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if add_special {
            if let (true, Some(bos)) = (self.add_bos, self.bos_id)
                && ids.first() != Some(&bos)
            {
                ids.insert(0, bos);
            }
            if let (true, Some(eos)) = (self.add_eos, self.eos_id)
                && ids.last() != Some(&eos)
            {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    /// Decodes ids to text. With `skip_special`, special (control) tokens produce nothing.
    /// Bytes that do not form valid UTF-8 become U+FFFD. Ids outside the vocabulary are
    /// ignored.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The id of the beginning-of-sequence token, when the source declares one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The declared end-of-sequence id (GGUF `eos_token_id`, HF `eos_token`).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Every id that ends a generation.
    ///
    /// The rule: the declared EOS; GGUF `tokenizer.ggml.eot_token_id` and `eom_token_id` when
    /// present; and every well-known end-of-turn / end-of-text token (`<|im_end|>`,
    /// `<|eot_id|>`, `<|eom_id|>`, `<|end|>`, `<end_of_turn>`, `<|endoftext|>`, `<EOT>`,
    /// DeepSeek's end of sentence) that the vocabulary has as an added token, as llama.cpp
    /// does. A chat model whose declared EOS is `<|im_end|>` therefore also stops at
    /// `<|endoftext|>`, and one that declares its base model's `<|endoftext|>` still stops at
    /// the end of its turn. For SmolLM2-Instruct this is {0, 2}.
    pub fn eos_ids(&self) -> &BTreeSet<u32> {
        &self.eos_ids
    }

    /// Adds ids that also end a generation (e.g. `eos_token_id` of a Hugging Face
    /// `generation_config.json`); ids outside the vocabulary are ignored.
    pub fn add_eos_ids(&mut self, ids: impl IntoIterator<Item = u32>) {
        let vocab = self.vocab_size();
        self.eos_ids
            .extend(ids.into_iter().filter(|&id| (id as usize) < vocab));
    }

    /// Whether `id` ends a generation (member of [`Tokenizer::eos_ids`]).
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The padding id, when declared.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether [`Tokenizer::encode`] with `add_special` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of ids, added tokens included: every id `encode` returns is below it.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The most bytes of input text one token can stand for, so that a text of `n` bytes
    /// has at least `n / max` tokens: the longest spelling in the vocabulary (added tokens
    /// included). Byte-level spellings are never shorter than the bytes they encode and
    /// SentencePiece's `▁` is longer than the space it replaces. `None` when the tokenizer
    /// normalizes text in a way that can shorten it (Unicode composition, lowercasing,
    /// stripping), where no such bound holds.
    pub fn max_text_bytes_per_token(&self) -> Option<usize> {
        if !self.inner.get_normalizer().is_none_or(never_shortens) {
            return None;
        }
        self.inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .filter(|&longest| longest > 0)
    }

    /// The id of a token, given as it is spelled in the vocabulary (byte-level form, e.g.
    /// `Ġworld`) or as an added token's content (`<|im_end|>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of an id (byte-level form for ordinary tokens).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special (control) token, i.e. one `decode` skips on request.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|token| self.inner.get_added_vocabulary().is_special_token(&token))
    }

    /// The model's Jinja chat template, if its files carry one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The BOS token's text, for chat templates (`bos_token`).
    pub fn bos_token(&self) -> Option<String> {
        self.bos_id.and_then(|id| self.id_to_token(id))
    }

    /// The EOS token's text, for chat templates (`eos_token`).
    pub fn eos_token(&self) -> Option<String> {
        self.eos_id.and_then(|id| self.id_to_token(id))
    }

    /// The file this tokenizer was built from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json` (e.g. to turn a GGUF into a
    /// HF folder for a reference implementation). BOS/EOS and the chat template belong in
    /// `tokenizer_config.json`, which this does not write.
    pub fn save_hf_tokenizer_json(&self, path: &Path) -> Result<(), TokenizerError> {
        self.inner
            .save(path, true)
            .map_err(|e| TokenizerError::Build {
                path: path.to_path_buf(),
                message: format!("cannot write tokenizer.json: {e}"),
            })
    }
}

/// What [`Tokenizer::assemble`] needs from either loader.
struct Parts {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    extra_eos: Vec<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

/// A tiny byte-level tokenizer built through [`Tokenizer::from_gguf`] from an in-memory GGUF,
/// for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use mlx_rs::Array;

    /// GPT-2's byte -> printable character table (each byte gets a visible stand-in so BPE
    /// tokens are printable strings).
    pub(crate) fn byte_chars() -> Vec<char> {
        let printable = |b: u32| {
            (u32::from(b'!')..=u32::from(b'~')).contains(&b)
                || (0xA1..=0xAC).contains(&b)
                || (0xAE..=0xFF).contains(&b)
        };
        let mut next = 256;
        (0u32..256)
            .map(|b| {
                if printable(b) {
                    char::from_u32(b).unwrap_or('?')
                } else {
                    let c = char::from_u32(next).unwrap_or('?');
                    next += 1;
                    c
                }
            })
            .collect()
    }

    /// Metadata of a tiny GGUF tokenizer: three control tokens, the 256 bytes, and merges
    /// spelling "Hello" and " world".
    pub(crate) fn tiny_gguf(pre: Option<&str>, model: &str) -> GgufFile {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        tokens.extend(byte_chars().iter().map(|c| c.to_string()));
        let merges = [
            "\u{120} w",
            "o r",
            "l d",
            "\u{120}w or",
            "\u{120}wor ld",
            "H e",
            "l l",
            "He ll",
            "Hell o",
        ];
        for merge in merges {
            tokens.push(merge.replace(' ', ""));
        }
        let mut types = vec![1i32; tokens.len()];
        types[..3].fill(3);
        let n = i32::try_from(types.len()).unwrap_or(i32::MAX);
        let mut file = GgufFile::new().expect("empty gguf");
        file.insert_metadata("tokenizer.ggml.model", model)
            .expect("model");
        if let Some(pre) = pre {
            file.insert_metadata("tokenizer.ggml.pre", pre)
                .expect("pre");
        }
        file.insert_metadata("tokenizer.ggml.tokens", tokens)
            .expect("tokens");
        file.insert_metadata(
            "tokenizer.ggml.merges",
            merges.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        )
        .expect("merges");
        file.insert_metadata("tokenizer.ggml.token_type", Array::from_slice(&types, &[n]))
            .expect("types");
        file.insert_metadata(
            "tokenizer.ggml.bos_token_id",
            Array::from_slice(&[1u32], &[1]),
        )
        .expect("bos");
        file.insert_metadata(
            "tokenizer.ggml.eos_token_id",
            Array::from_slice(&[0u32], &[1]),
        )
        .expect("eos");
        file.insert_metadata(
            "tokenizer.ggml.add_bos_token",
            Array::from_slice(&[true], &[1]),
        )
        .expect("add_bos");
        file
    }

    /// The tokenizer of [`tiny_gguf`] with the `smollm` pre-tokenizer.
    pub(crate) fn tiny_tokenizer() -> Tokenizer {
        Tokenizer::from_gguf(&tiny_gguf(Some("smollm"), "gpt2"), Path::new("tiny.gguf"))
            .expect("tiny tokenizer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_tokenizer_encodes_and_decodes() -> Result<(), TokenizerError> {
        let tok = testing::tiny_tokenizer();
        assert_eq!(tok.vocab_size(), 3 + 256 + 9);
        let hello = tok.token_to_id("Hello").unwrap_or(u32::MAX);
        let world = tok.token_to_id("\u{120}world").unwrap_or(u32::MAX);
        let ids = tok.encode("<|im_start|>Hello world", false)?;
        assert_eq!(ids, vec![1, hello, world]);
        // add_bos is set in the metadata, and BOS is not doubled.
        assert_eq!(tok.encode("Hello", true)?, vec![1, hello]);
        assert_eq!(tok.encode("<|im_start|>Hello", true)?, vec![1, hello]);
        assert_eq!(tok.decode(&ids, false)?, "<|im_start|>Hello world");
        assert_eq!(tok.decode(&ids, true)?, "Hello world");
        assert!(tok.add_bos());
        assert_eq!(tok.bos_token().as_deref(), Some("<|im_start|>"));
        assert_eq!(tok.eos_token().as_deref(), Some("<|endoftext|>"));
        // No template: the ChatML fallback's end of turn also ends generation.
        assert_eq!(
            tok.eos_ids().iter().copied().collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert!(tok.is_special(2) && !tok.is_special(hello));
        // Digits are split one by one (smollm).
        assert_eq!(tok.encode("2026", false)?.len(), 4);
        Ok(())
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let path = Path::new("bad.gguf");
        let err = Tokenizer::from_gguf(&testing::tiny_gguf(Some("falcon"), "gpt2"), path)
            .expect_err("unknown pre-tokenizer");
        assert!(
            matches!(&err, TokenizerError::UnsupportedPreTokenizer { pre, .. } if pre == "falcon"),
            "{err}"
        );
        assert!(err.to_string().contains("falcon"), "{err}");
        let err = Tokenizer::from_gguf(&testing::tiny_gguf(Some("smollm"), "llama"), path)
            .expect_err("sentencepiece");
        assert!(
            matches!(&err, TokenizerError::UnsupportedModel { model, .. } if model == "llama"),
            "{err}"
        );
        assert!(err.to_string().contains("`llama`"), "{err}");
        // Missing pre-tokenizer: GPT-2 default, with a warning.
        let tok = Tokenizer::from_gguf(&testing::tiny_gguf(None, "gpt2"), path);
        assert!(tok.is_ok(), "{tok:?}");
        let empty = GgufFile::new().expect("empty gguf");
        let err = Tokenizer::from_gguf(&empty, path).expect_err("no tokenizer");
        assert!(
            matches!(&err, TokenizerError::Metadata(e) if e.key() == "tokenizer.ggml.model"),
            "{err}"
        );
    }
}
