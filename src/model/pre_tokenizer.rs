//! llama.cpp's tokenizer pre-types (`tokenizer.ggml.pre`) rebuilt from `tokenizers`
//! building blocks, so a GGUF's embedded vocabulary splits text exactly as its model's own
//! `tokenizer.json` does.

use tokenizers::SplitDelimiterBehavior;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};

/// The pre-tokenizer split used by Llama 3 (llama.cpp `llama-bpe`): case-insensitive English
/// contractions, letters with one optional leading non-letter, numbers in groups of up to
/// three digits, punctuation runs with trailing newlines, newline runs, other whitespace.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer split used by Qwen2 (llama.cpp `qwen2`): as Llama 3's, but every digit
/// on its own.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values [`Tokenizer::from_gguf`](super::Tokenizer::from_gguf) accepts (llama.cpp's names).
pub const SUPPORTED_PRE_TYPES: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "smollm",
    "starcoder",
    "refact",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "qwen2",
    "deepseek-r1-qwen",
];

/// How one llama.cpp pre-tokenizer type is reproduced with `tokenizers` building blocks.
pub(crate) struct PreTokenizerSpec {
    pub normalizer: Option<NormalizerWrapper>,
    pub pre_tokenizer: PreTokenizerWrapper,
    /// A whole pre-tokenized word found in the vocabulary is used as is, without applying
    /// merges (Llama 3's tokenizer.json sets this, llama.cpp does the same for `llama-bpe`).
    pub ignore_merges: bool,
    /// `add_bos_token` when the file does not say (llama.cpp's default for the type).
    pub default_add_bos: bool,
}

/// Maps a `tokenizer.ggml.pre` value to the Hugging Face pre-tokenizer that produces the same
/// splits, or `None` when the type is unknown.
pub(crate) fn pre_tokenizer_spec(pre: &str) -> Result<Option<PreTokenizerSpec>, String> {
    // GPT-2's own regex, applied by the ByteLevel step (use_regex = true).
    let byte_level_gpt2 = ByteLevel::new(false, true, true);
    // Byte mapping only; the split comes from a preceding regex.
    let byte_level_only = ByteLevel::new(false, true, false);
    let split = |regex: &str| -> Result<PreTokenizerWrapper, String> {
        Split::new(
            SplitPattern::Regex(regex.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map(PreTokenizerWrapper::Split)
        .map_err(|e| format!("pre-tokenizer regex does not compile: {e}"))
    };
    let spec = match pre {
        "default" | "gpt2" | "gpt-2" => PreTokenizerSpec {
            normalizer: None,
            pre_tokenizer: byte_level_gpt2.into(),
            ignore_merges: false,
            default_add_bos: false,
        },
        // llama.cpp: "\p{N}" isolated, then GPT-2's regex = HF Digits(individual) + ByteLevel.
        "smollm" | "starcoder" | "refact" => PreTokenizerSpec {
            normalizer: None,
            pre_tokenizer: Sequence::new(vec![Digits::new(true).into(), byte_level_gpt2.into()])
                .into(),
            ignore_merges: false,
            default_add_bos: false,
        },
        "llama3" | "llama-v3" | "llama-bpe" => PreTokenizerSpec {
            normalizer: None,
            pre_tokenizer: Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level_only.into()]).into(),
            ignore_merges: true,
            default_add_bos: true,
        },
        // Qwen2's tokenizer.json also NFC-normalizes its input (llama.cpp does not).
        "qwen2" | "deepseek-r1-qwen" => PreTokenizerSpec {
            normalizer: Some(NFC.into()),
            pre_tokenizer: Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level_only.into()]).into(),
            ignore_merges: false,
            default_add_bos: false,
        },
        _ => return Ok(None),
    };
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_pre_type_builds() {
        for pre in SUPPORTED_PRE_TYPES {
            let spec = pre_tokenizer_spec(pre);
            assert!(matches!(spec, Ok(Some(_))), "{pre} does not build");
        }
        assert!(matches!(pre_tokenizer_spec("falcon"), Ok(None)));
    }
}
