//! The default model's GGUF loads through MLX and declares what MODELS.md says it is.

mod common;

use mlx_rs::io::{GgufFile, GgufMetadataValue};
use mlx_serve::model::config::Architecture;
use mlx_serve::model::gguf;

#[test]
fn raw_gguf_metadata_and_tensors_load_through_mlx() {
    common::use_test_device();
    let file = GgufFile::load(common::default_model_path()).expect("load GGUF");
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
fn model_config_matches_the_published_architecture() {
    common::use_test_device();
    let path = common::default_model_path();
    let file = GgufFile::load(&path).expect("load GGUF");
    let config = gguf::model_config(&file, &path).expect("config");
    assert_eq!(config.architecture, Architecture::Llama);
    assert_eq!(config.num_layers, 30);
    assert_eq!(config.hidden_size, 576);
    assert_eq!(config.intermediate_size, 1536);
    assert_eq!(
        (config.num_heads, config.num_kv_heads, config.head_dim),
        (9, 3, 64)
    );
    assert_eq!(config.context_length, 8192);
    assert_eq!(config.vocab_size, 49152);
    assert_eq!(config.rope_theta, 100000.0);
    assert_eq!(config.rms_norm_eps, 1e-5);
    assert!(config.tie_word_embeddings && !config.attention_bias && !config.qk_norm);
    assert_eq!(config.rope_scaling, None);
    assert_eq!(config.parameter_count(), 134_515_008);

    // Q4_1 projections (4-bit) and the Q8_0 embedding (8-bit) keep their bit widths.
    let tensors = gguf::tensors(&file, &config, &path).expect("tensors");
    let spec = |prefix: &str| tensors.quant_spec(prefix).map(|s| (s.group_size, s.bits));
    assert_eq!(spec("model.layers.0.self_attn.q_proj"), Some((32, 4)));
    assert_eq!(spec("model.layers.29.mlp.down_proj"), Some((32, 4)));
    assert_eq!(spec("model.embed_tokens"), Some((32, 8)));
    assert_eq!(spec("model.norm"), None);
    assert_eq!(tensors.iter().count(), 61 + 3 * (30 * 7 + 1));
}
