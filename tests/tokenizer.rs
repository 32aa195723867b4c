//! The tokenizer layer on the default model (SmolLM2-135M-Instruct GGUF), checked against
//! `tests/fixtures/smollm2_tokenizer_reference.json`: ids, decodings and chat renderings that
//! Hugging Face `transformers`/`tokenizers` produce for the same vocabulary
//! (`scripts/reference/`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use common::ScratchDir;
use mlx_rs::Array;
use mlx_rs::io::GgufFile;
use mlx_serve::model::{
    ChatMessage, ChatTemplate, ChatTemplateError, IncrementalDecoder, Tokenizer, TokenizerError,
};
use serde::Deserialize;

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
const FIXTURE: &str = "tests/fixtures/smollm2_tokenizer_reference.json";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The default model's tokenizer, built once per test binary.
fn tokenizer() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let path = repo_path(MODEL);
            assert!(
                path.is_file(),
                "the default model is missing at {}: run `make setup` (scripts/setup.sh) to install it",
                path.display()
            );
            let file = GgufFile::load(&path)
                .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()));
            let tokenizer = Tokenizer::from_gguf(&file, &path)
                .unwrap_or_else(|e| panic!("cannot build the tokenizer: {e}"));
            Arc::new(tokenizer)
        })
        .clone()
}

#[derive(Debug, Deserialize)]
struct Reference {
    gguf_sha256: String,
    bos_token: String,
    eos_token: String,
    add_bos_token: bool,
    special_tokens: std::collections::BTreeMap<String, u32>,
    encodings: Vec<Encoding>,
    decodings: Vec<Decoding>,
    chat: Vec<ChatCase>,
}

#[derive(Debug, Deserialize)]
struct Encoding {
    text: String,
    ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct Decoding {
    ids: Vec<u32>,
    skip_special_tokens: bool,
    text: String,
}

#[derive(Debug, Deserialize)]
struct ChatCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: String,
    ids: Vec<u32>,
}

fn reference() -> Reference {
    let path = repo_path(FIXTURE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (regenerate it with `make reference`)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is malformed: {e}", path.display()))
}

/// Strings beyond the fixture's: emoji split over several byte-level tokens, CJK, combining
/// marks, special tokens inside text.
const EXTRA_TEXTS: &[&str] = &[
    "Hello world",
    "2026",
    "🦀 Rust 🦀🦀 — ✨✨✨ 👨‍👩‍👧‍👦",
    "漢字かなカナ한글 ไทย العربية עברית",
    "e\u{301}te\u{301} (combining accents)",
    "<|im_start|>assistant\nSure! 😀<|im_end|>\n<|endoftext|>",
];

#[test]
fn fixture_is_for_the_installed_model() {
    let reference = reference();
    let setup = std::fs::read_to_string(repo_path("scripts/setup.sh")).expect("scripts/setup.sh");
    assert!(
        setup.contains(&format!("MODEL_SHA256={}", reference.gguf_sha256)),
        "the fixture was generated from a GGUF (sha256 {}) other than the one `make setup` \
         installs: regenerate it with `make reference`",
        reference.gguf_sha256
    );
}

#[test]
fn special_tokens_match_the_gguf_and_the_reference() {
    let tok = tokenizer();
    let reference = reference();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.pad_id(), Some(2));
    assert_eq!(
        tok.bos_token().as_deref(),
        Some(reference.bos_token.as_str())
    );
    assert_eq!(
        tok.eos_token().as_deref(),
        Some(reference.eos_token.as_str())
    );
    assert_eq!(tok.add_bos(), reference.add_bos_token);
    // <|im_end|> (declared EOS) and <|endoftext|> (an added end-of-text token).
    assert_eq!(*tok.eos_ids(), BTreeSet::from([0, 2]));
    assert!(tok.is_eos(2) && tok.is_eos(0) && !tok.is_eos(1));
    for (token, id) in &reference.special_tokens {
        assert_eq!(tok.token_to_id(token), Some(*id), "{token}");
        assert_eq!(tok.id_to_token(*id).as_deref(), Some(token.as_str()));
        assert!(tok.is_special(*id), "{token} must be special");
    }
    let template = tok.chat_template().expect("the GGUF has a chat template");
    assert!(template.contains("<|im_start|>"), "{template}");
}

#[test]
fn own_expectations() -> Result<(), TokenizerError> {
    let tok = tokenizer();
    assert_eq!(tok.encode("<|im_start|>", false)?, vec![1]);
    assert_eq!(tok.encode("<|im_start|>", true)?, vec![1]);
    // smollm pre-tokenizer: one token per digit.
    let digits = tok.encode("2026", false)?;
    assert_eq!(digits.len(), 4, "{digits:?}");
    let ids = tok.encode("Hello world", false)?;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(tok.decode(&ids, true)?, "Hello world");
    // No BOS for this model even with add_special.
    assert_eq!(tok.encode("Hello world", true)?, ids);
    assert_eq!(tok.id_to_token(ids[1]).as_deref(), Some("\u{120}world"));
    Ok(())
}

#[test]
fn encodings_match_reference() -> Result<(), TokenizerError> {
    let tok = tokenizer();
    let reference = reference();
    assert!(!reference.encodings.is_empty());
    let mut mismatches = Vec::new();
    for case in &reference.encodings {
        let ids = tok.encode(&case.text, false)?;
        if ids != case.ids {
            mismatches.push(format!(
                "{:?}:\n  ours      {ids:?}\n  reference {:?}",
                case.text, case.ids
            ));
        }
        // add_bos_token is false: add_special changes nothing.
        assert_eq!(tok.encode(&case.text, true)?, ids, "{:?}", case.text);
        // Byte-level BPE is lossless.
        assert_eq!(tok.decode(&ids, false)?, case.text);
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    Ok(())
}

#[test]
fn decodings_match_reference() -> Result<(), TokenizerError> {
    let tok = tokenizer();
    let reference = reference();
    assert!(!reference.decodings.is_empty());
    for case in &reference.decodings {
        assert_eq!(
            tok.decode(&case.ids, case.skip_special_tokens)?,
            case.text,
            "{case:?}"
        );
    }
    Ok(())
}

#[test]
fn chat_renderings_match_reference() -> Result<(), Box<dyn std::error::Error>> {
    let tok = tokenizer();
    let reference = reference();
    let template = ChatTemplate::for_tokenizer(&tok)?;
    assert!(!template.is_fallback());
    assert!(!reference.chat.is_empty());
    for case in &reference.chat {
        let rendered = template.render(&case.messages, case.add_generation_prompt, None)?;
        assert_eq!(rendered, case.rendered, "{:?}", case.messages);
        // Chat prompts are encoded without added specials: the template wrote them.
        assert_eq!(
            tok.encode(&rendered, false)?,
            case.ids,
            "{:?}",
            case.messages
        );
    }
    Ok(())
}

/// Feeds ids one at a time and checks the deltas against the full decode.
fn check_streaming(tok: &Arc<Tokenizer>, ids: &[u32], skip_special: bool, label: &str) {
    let mut decoder = IncrementalDecoder::with_skip_special(tok.clone(), skip_special);
    let full = tok.decode(ids, skip_special).expect("decode");
    let mut streamed = String::new();
    for &id in ids {
        if let Some(delta) = decoder.push(id).expect("push") {
            assert!(
                !delta.contains(char::REPLACEMENT_CHARACTER) || full.contains('\u{FFFD}'),
                "{label}: delta {delta:?} holds a broken character"
            );
            streamed.push_str(&delta);
        }
        assert!(
            full.starts_with(&streamed),
            "{label}: {streamed:?} vs {full:?}"
        );
    }
    streamed.push_str(&decoder.flush().expect("flush"));
    assert_eq!(streamed, full, "{label} (skip_special = {skip_special})");
}

#[test]
fn streaming_decoder_matches_full_decode() -> Result<(), TokenizerError> {
    let tok = tokenizer();
    let reference = reference();
    let mut cases: Vec<(String, Vec<u32>)> = Vec::new();
    for case in &reference.encodings {
        cases.push((case.text.clone(), case.ids.clone()));
    }
    for case in &reference.decodings {
        cases.push((format!("decoding {:?}", case.text), case.ids.clone()));
    }
    for case in &reference.chat {
        cases.push((case.rendered.clone(), case.ids.clone()));
    }
    for text in EXTRA_TEXTS {
        cases.push((text.to_string(), tok.encode(text, false)?));
    }
    // Multi-token characters really occur (or the test proves nothing).
    let crab = tok.encode("🦀", false)?;
    assert!(crab.len() > 1, "{crab:?}");
    for (label, ids) in &cases {
        for skip_special in [true, false] {
            check_streaming(&tok, ids, skip_special, label);
        }
    }
    Ok(())
}

/// A scratch directory under the system temp dir, removed on drop.
#[test]
fn hf_folder_round_trip() -> Result<(), Box<dyn std::error::Error>> {
    let tok = tokenizer();
    let reference = reference();
    let dir = ScratchDir::new("tokenizer-hf");
    let tokenizer_json = dir.0.join("tokenizer.json");
    tok.save_hf_tokenizer_json(&tokenizer_json)?;
    let template = tok.chat_template().expect("template").to_owned();

    // Special tokens as plain strings, chat template as a string.
    let plain = dir.0.join("plain_config.json");
    std::fs::write(
        &plain,
        serde_json::json!({
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "add_bos_token": false,
            "chat_template": template,
        })
        .to_string(),
    )?;
    // Special tokens as AddedToken objects, chat template as a named list.
    let objects = dir.0.join("object_config.json");
    std::fs::write(
        &objects,
        serde_json::json!({
            "bos_token": {"content": "<|im_start|>", "special": true, "lstrip": false},
            "eos_token": {"content": "<|im_end|>", "special": true},
            "chat_template": [
                {"name": "tool_use", "template": "{{ raise_exception('wrong template') }}"},
                {"name": "default", "template": template},
            ],
        })
        .to_string(),
    )?;

    for config in [&plain, &objects] {
        let hf = Tokenizer::from_hf_files(&tokenizer_json, Some(config))?;
        assert_eq!(hf.vocab_size(), tok.vocab_size());
        assert_eq!(hf.bos_id(), Some(1));
        assert_eq!(hf.eos_id(), Some(2));
        assert_eq!(hf.eos_ids(), tok.eos_ids());
        assert!(!hf.add_bos());
        assert_eq!(hf.chat_template(), Some(template.as_str()));
        for case in &reference.encodings {
            assert_eq!(hf.encode(&case.text, true)?, case.ids, "{:?}", case.text);
        }
        let chat = ChatTemplate::for_tokenizer(&hf)?;
        for case in &reference.chat {
            let rendered = chat.render(&case.messages, case.add_generation_prompt, None)?;
            assert_eq!(rendered, case.rendered);
            assert_eq!(hf.encode(&rendered, false)?, case.ids);
        }
        for text in EXTRA_TEXTS {
            assert_eq!(
                hf.encode(text, false)?,
                tok.encode(text, false)?,
                "{text:?}"
            );
        }
    }

    // Without a config: no BOS/EOS declared, only the added end-of-text tokens, no template.
    let bare = Tokenizer::from_hf_files(&tokenizer_json, None)?;
    assert_eq!(bare.bos_id(), None);
    assert_eq!(*bare.eos_ids(), BTreeSet::from([0, 2]));
    assert!(bare.chat_template().is_none());
    assert!(ChatTemplate::for_tokenizer(&bare)?.is_fallback());
    Ok(())
}

#[test]
fn bad_hf_files_are_errors() -> Result<(), Box<dyn std::error::Error>> {
    let tok = tokenizer();
    let dir = ScratchDir::new("tokenizer-bad");
    let good_json = dir.0.join("tokenizer.json");
    tok.save_hf_tokenizer_json(&good_json)?;

    let missing = dir.0.join("nope.json");
    let err = Tokenizer::from_hf_files(&missing, None).expect_err("missing file");
    assert!(matches!(err, TokenizerError::Io { .. }), "{err}");
    assert!(err.to_string().contains("nope.json"), "{err}");

    let malformed = dir.0.join("malformed.json");
    std::fs::write(&malformed, r#"{"model": {"type": "BPE", "vocab": 3}}"#)?;
    let err = Tokenizer::from_hf_files(&malformed, None).expect_err("malformed tokenizer.json");
    assert!(matches!(err, TokenizerError::Build { .. }), "{err}");
    assert!(err.to_string().contains("malformed.json"), "{err}");

    let cases: &[(&str, serde_json::Value)] = &[
        ("not an object", serde_json::json!([1, 2])),
        (
            "unknown eos",
            serde_json::json!({"eos_token": "<|no_such_token|>"}),
        ),
        ("bad eos shape", serde_json::json!({"eos_token": 7})),
        ("bad flag", serde_json::json!({"add_bos_token": "yes"})),
        (
            "no default template",
            serde_json::json!({"chat_template": [{"name": "rag", "template": "x"}]}),
        ),
    ];
    for (label, config) in cases {
        let path = dir.0.join("config.json");
        std::fs::write(&path, config.to_string())?;
        let err = Tokenizer::from_hf_files(&good_json, Some(&path)).expect_err(label);
        assert!(
            matches!(err, TokenizerError::BadConfig { .. }),
            "{label}: {err}"
        );
        assert!(err.to_string().contains("config.json"), "{label}: {err}");
    }
    let path = dir.0.join("config.json");
    std::fs::write(&path, "{ not json")?;
    let err = Tokenizer::from_hf_files(&good_json, Some(&path)).expect_err("invalid JSON");
    assert!(matches!(err, TokenizerError::BadConfig { .. }), "{err}");

    // A template that does not compile loads as a tokenizer but fails at ChatTemplate load.
    std::fs::write(
        &path,
        serde_json::json!({"chat_template": "{% for m in messages %}{{ m.content }"}).to_string(),
    )?;
    let hf = Tokenizer::from_hf_files(&good_json, Some(&path))?;
    let err = ChatTemplate::for_tokenizer(&hf).expect_err("broken template");
    assert!(matches!(err, ChatTemplateError::Compile(_)), "{err}");
    Ok(())
}

#[test]
fn bad_gguf_metadata_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
    let path = Path::new("synthetic.gguf");
    let gguf = |model: &str, pre: Option<&str>, tokens: bool| -> GgufFile {
        let mut file = GgufFile::new().expect("empty gguf");
        file.insert_metadata("tokenizer.ggml.model", model)
            .expect("model");
        if let Some(pre) = pre {
            file.insert_metadata("tokenizer.ggml.pre", pre)
                .expect("pre");
        }
        if tokens {
            file.insert_metadata(
                "tokenizer.ggml.tokens",
                vec!["a".to_owned(), "b".to_owned(), "ab".to_owned()],
            )
            .expect("tokens");
            file.insert_metadata("tokenizer.ggml.merges", vec!["a b".to_owned()])
                .expect("merges");
        }
        file
    };

    let err =
        Tokenizer::from_gguf(&gguf("gpt2", Some("smollm"), false), path).expect_err("no tokens");
    assert!(
        matches!(&err, TokenizerError::Metadata(e) if e.key() == "tokenizer.ggml.tokens"),
        "{err}"
    );
    assert!(err.to_string().contains("synthetic.gguf"), "{err}");

    let err = Tokenizer::from_gguf(&gguf("gpt2", Some("jais"), true), path)
        .expect_err("unknown pre-tokenizer");
    assert!(err.to_string().contains("`jais`"), "{err}");

    let err = Tokenizer::from_gguf(&gguf("llama", Some("default"), true), path)
        .expect_err("SentencePiece");
    assert!(err.to_string().contains("`llama`"), "{err}");

    // Mismatched token types, out-of-range ids and bad merges.
    let mut file = gguf("gpt2", Some("smollm"), true);
    file.insert_metadata(
        "tokenizer.ggml.token_type",
        Array::from_slice(&[1i32, 1], &[2]),
    )?;
    let err = Tokenizer::from_gguf(&file, path).expect_err("token types");
    assert!(matches!(err, TokenizerError::Metadata(_)), "{err}");

    let mut file = gguf("gpt2", Some("smollm"), true);
    file.insert_metadata(
        "tokenizer.ggml.eos_token_id",
        Array::from_slice(&[7u32], &[1]),
    )?;
    let err = Tokenizer::from_gguf(&file, path).expect_err("eos out of range");
    assert!(err.to_string().contains("eos_token_id"), "{err}");

    let mut file = GgufFile::new()?;
    file.insert_metadata("tokenizer.ggml.model", "gpt2")?;
    file.insert_metadata("tokenizer.ggml.pre", "gpt2")?;
    file.insert_metadata("tokenizer.ggml.tokens", vec!["a".to_owned()])?;
    file.insert_metadata("tokenizer.ggml.merges", vec!["ab".to_owned()])?;
    let err = Tokenizer::from_gguf(&file, path).expect_err("merge without a space");
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");

    let mut file = GgufFile::new()?;
    file.insert_metadata("tokenizer.ggml.model", "gpt2")?;
    file.insert_metadata("tokenizer.ggml.pre", "gpt2")?;
    file.insert_metadata("tokenizer.ggml.tokens", vec!["a".to_owned()])?;
    file.insert_metadata("tokenizer.ggml.merges", vec!["a zz".to_owned()])?;
    let err = Tokenizer::from_gguf(&file, path).expect_err("merge of unknown tokens");
    assert!(matches!(err, TokenizerError::Build { .. }), "{err}");

    // A well-formed minimal one builds.
    let tok = Tokenizer::from_gguf(&gguf("gpt2", Some("gpt2"), true), path)?;
    assert_eq!(tok.encode("ab", false)?, vec![2]);
    assert!(tok.eos_ids().is_empty());
    Ok(())
}
