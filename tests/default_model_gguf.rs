//! The default model's GGUF loads through MLX and declares what MODELS.md says it is.

use std::path::PathBuf;

use mlx_rs::io::{GgufFile, GgufMetadataValue};
use mlx_serve::model::{GgufSummary, ModelError, gguf::WeightFormat};

fn default_model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "the default model is missing at {}: run `make setup` (scripts/setup.sh) to install it",
        path.display()
    );
    path
}

#[test]
fn raw_gguf_metadata_and_tensors_load_through_mlx() {
    let file = GgufFile::load(default_model()).expect("load GGUF");
    match file.get_metadata("general.architecture").expect("metadata") {
        Some(GgufMetadataValue::String(arch)) => assert_eq!(arch, "llama"),
        other => panic!("general.architecture: {other:?}"),
    }
    let layers = file
        .get_metadata_array("llama.block_count")
        .expect("metadata")
        .expect("llama.block_count present");
    assert_eq!(layers.item_cast::<i64>(), 30);
    let template = file
        .get_metadata_string("tokenizer.chat_template")
        .expect("metadata")
        .expect("chat template present");
    assert!(template.contains("<|im_start|>"), "{template}");
    assert_eq!(
        file.get_metadata_string("tokenizer.ggml.pre")
            .expect("metadata")
            .as_deref(),
        Some("smollm")
    );

    // Q4_1 weights arrive in MLX's quantized layout: packed u32 + scales + biases.
    let q = file
        .get_array("blk.0.attn_q.weight")
        .expect("tensor")
        .expect("blk.0.attn_q.weight present");
    let scales = file
        .get_array("blk.0.attn_q.scales")
        .expect("tensor")
        .expect("blk.0.attn_q.scales present");
    assert_eq!(q.shape(), &[576, 576 * 4 / 32]);
    assert_eq!(scales.shape(), &[576, 576 / 32]);
}

#[test]
fn summary_matches_the_published_architecture() {
    let summary = GgufSummary::read(default_model()).expect("summary");
    assert_eq!(summary.architecture, "llama");
    assert_eq!(summary.layers, 30);
    assert_eq!(summary.hidden_size, 576);
    assert_eq!(summary.feed_forward_size, 1536);
    assert_eq!(summary.attention_heads, 9);
    assert_eq!(summary.kv_heads, 3);
    assert_eq!(summary.context_length, 8192);
    assert_eq!(summary.vocab_size, 49152);
    assert_eq!(summary.rope_theta, Some(100000.0));
    assert!(
        (134_000_000..135_000_000).contains(&summary.parameters),
        "{} parameters",
        summary.parameters
    );
    // 30 layers × 7 projections in Q4_1, the token embedding in Q8_0, norms in f32.
    assert_eq!(
        summary
            .tensor_formats
            .get(&WeightFormat::Quantized { bits: 4 }),
        Some(&210)
    );
    assert_eq!(
        summary
            .tensor_formats
            .get(&WeightFormat::Quantized { bits: 8 }),
        Some(&1)
    );
    assert_eq!(
        summary.tensor_formats.get(&WeightFormat::Float("f32")),
        Some(&61)
    );
    let text = summary.to_string();
    assert!(text.contains("9 heads, 3 KV heads, head dim 64"), "{text}");
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    let missing = GgufSummary::read("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(missing, ModelError::NotFound { .. }), "{missing}");

    let corrupt =
        std::env::temp_dir().join(format!("mlx-serve-corrupt-{}.gguf", std::process::id()));
    std::fs::write(&corrupt, b"this is not a GGUF file at all").expect("write temp file");
    let err = GgufSummary::read(&corrupt).unwrap_err();
    std::fs::remove_file(&corrupt).ok();
    assert!(matches!(err, ModelError::Gguf { .. }), "{err}");
    assert!(err.to_string().contains("mlx-serve-corrupt"), "{err}");
}
