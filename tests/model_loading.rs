//! Every way to point at a model loads the same model, and broken model files are clear
//! errors, never panics.
//!
//! The Hugging Face folders here are written from the default GGUF by this test (dense f32,
//! and MLX-community style quantized with per-module bit widths), so they hold exactly the
//! GGUF's weights and must decode exactly the same tokens. No network is used: the hub
//! tests run against a cache folder the test builds, and a download attempt goes to a
//! closed port on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::ScratchDir;
use mlx_rs::io::GgufFile;
use mlx_rs::ops::dequantize;
use mlx_rs::{Array, Dtype};
use mlx_serve::model::ModelError;
use mlx_serve::model::chat_template::ChatMessage;
use mlx_serve::model::config::ModelConfig;
use mlx_serve::model::gguf;
use mlx_serve::model::greedy::{self, GreedyOptions, GreedyRequest};
use mlx_serve::model::hub::HubOptions;
use mlx_serve::model::kv_cache::{KvCacheConfig, PagedKvCache};
use mlx_serve::model::loader::{self, LoadOptions, LoadedModel, ModelSource};
use mlx_serve::model::weights::WeightMode;
use serde_json::json;

fn options(hub: HubOptions) -> LoadOptions {
    LoadOptions {
        weights: WeightMode::F32,
        served_name: None,
        hub,
    }
}

fn offline_hub() -> HubOptions {
    HubOptions {
        offline: true,
        ..HubOptions::default()
    }
}

/// 12 greedy tokens for a chat prompt, rendered and tokenized by the model's own template
/// and tokenizer.
fn greedy_answer(loaded: &LoadedModel) -> Vec<u32> {
    let prompt = loaded
        .chat_template
        .render(
            &[ChatMessage::new("user", "What is the capital of France?")],
            true,
            None,
        )
        .expect("render");
    let ids = loaded.tokenizer.encode(&prompt, false).expect("encode");
    let config = KvCacheConfig {
        block_size: 16,
        num_blocks: 8,
    };
    let mut cache =
        PagedKvCache::new(config, loaded.model.config(), Dtype::Float32).expect("cache");
    let request = GreedyRequest {
        prompt: ids,
        max_tokens: 12,
        join_step: 0,
    };
    greedy::generate(
        &loaded.model,
        &mut cache,
        &[request],
        GreedyOptions::default(),
    )
    .expect("generate")
    .remove(0)
    .tokens
}

fn config_json(config: &ModelConfig, quantization: Option<serde_json::Value>) -> serde_json::Value {
    let mut value = json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.context_length,
        "tie_word_embeddings": config.tie_word_embeddings,
    });
    if let Some(quantization) = quantization {
        value["quantization"] = quantization;
    }
    value
}

/// Writes the default GGUF as a Hugging Face folder: `quantized` keeps MLX's quantized
/// triples (like mlx-community checkpoints), otherwise everything is dequantized to f32.
/// Weights go into two shards with an index, like large checkpoints.
fn write_hf_folder(dir: &Path, quantized: bool) {
    let path = common::default_model_path();
    let file = GgufFile::load(&path).expect("load GGUF");
    let config = gguf::model_config(&file, &path).expect("config");
    let tensors = gguf::tensors(&file, &config, &path).expect("tensors");
    let mut arrays: HashMap<String, Array> = HashMap::new();
    let mut bits_by_module = serde_json::Map::new();
    for (name, tensor) in tensors.iter() {
        let prefix = name.rsplit_once('.').map(|(p, _)| p).unwrap_or(name);
        match tensors.quant_spec(prefix) {
            Some(spec) if quantized => {
                if name.ends_with(".weight") {
                    bits_by_module.insert(
                        prefix.to_owned(),
                        json!({"group_size": spec.group_size, "bits": spec.bits}),
                    );
                }
                arrays.insert(name.clone(), tensor.clone());
            }
            Some(spec) => {
                if let Some(prefix) = name.strip_suffix(".weight") {
                    let scales = tensors
                        .iter()
                        .find(|(n, _)| **n == format!("{prefix}.scales"))
                        .map(|(_, a)| a.as_dtype(Dtype::Float32).unwrap())
                        .unwrap();
                    let biases = tensors
                        .iter()
                        .find(|(n, _)| **n == format!("{prefix}.biases"))
                        .map(|(_, a)| a.as_dtype(Dtype::Float32).unwrap())
                        .unwrap();
                    let dense =
                        dequantize(tensor, &scales, &biases, spec.group_size, spec.bits).unwrap();
                    arrays.insert(name.clone(), dense);
                }
            }
            None => {
                arrays.insert(name.clone(), tensor.as_dtype(Dtype::Float32).unwrap());
            }
        }
    }
    let quantization = quantized.then(|| {
        let mut q = bits_by_module;
        q.insert("group_size".into(), json!(32));
        q.insert("bits".into(), json!(4));
        serde_json::Value::Object(q)
    });
    std::fs::write(
        dir.join("config.json"),
        config_json(&config, quantization).to_string(),
    )
    .unwrap();

    let mut names: Vec<String> = arrays.keys().cloned().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, names) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let part: Vec<(&str, &Array)> = names.iter().map(|n| (n.as_str(), &arrays[n])).collect();
        Array::save_safetensors(part, None, dir.join(shard)).expect("save shard");
        for name in names {
            weight_map.insert(name.clone(), json!(shard));
        }
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();

    let tokenizer = mlx_serve::model::Tokenizer::from_gguf(&file, &path).expect("tokenizer");
    tokenizer
        .save_hf_tokenizer_json(&dir.join("tokenizer.json"))
        .expect("tokenizer.json");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({
            "chat_template": tokenizer.chat_template(),
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "add_bos_token": false,
        })
        .to_string(),
    )
    .unwrap();
}

#[test]
fn gguf_and_hf_folders_decode_identically() {
    let dense_dir = ScratchDir::new("hf-dense");
    let quant_dir = ScratchDir::new("hf-quant");
    let (dense, quant) = (dense_dir.0.clone(), quant_dir.0.clone());
    common::with_model(move |_| {
        let gguf_source =
            ModelSource::parse(common::default_model_path().to_str().unwrap()).unwrap();
        assert!(matches!(gguf_source, ModelSource::Gguf(_)));
        let from_gguf = loader::load(&gguf_source, &options(offline_hub())).expect("load GGUF");
        assert_eq!(from_gguf.identity.served_name, "SmolLM2-135M-Instruct.Q4_1");
        assert_eq!(from_gguf.identity.context_length, 8192);
        assert!(
            from_gguf
                .identity
                .fingerprint
                .starts_with("sha256:b179c952")
        );
        let reference = greedy_answer(&from_gguf);
        let text = from_gguf.tokenizer.decode(&reference, true).unwrap();
        assert!(text.contains("Paris"), "{text}");
        drop(from_gguf);

        write_hf_folder(&dense, false);
        // generation_config.json adds end-of-generation ids (as Llama 3.x uses it).
        std::fs::write(
            dense.join("generation_config.json"),
            r#"{"eos_token_id": [2, 7]}"#,
        )
        .unwrap();
        let source = ModelSource::parse(dense.to_str().unwrap()).unwrap();
        assert!(matches!(source, ModelSource::Folder(_)));
        let from_dense = loader::load(&source, &options(offline_hub())).expect("load dense folder");
        assert_eq!(greedy_answer(&from_dense), reference, "dense f32 folder");
        assert!(from_dense.tokenizer.is_eos(7) && from_dense.tokenizer.is_eos(2));
        assert!(!from_dense.tokenizer.is_eos(8));
        drop(from_dense);

        write_hf_folder(&quant, true);
        let source = ModelSource::Folder(quant.clone());
        let from_quant =
            loader::load(&source, &options(offline_hub())).expect("load quantized folder");
        assert_eq!(
            greedy_answer(&from_quant),
            reference,
            "quantized folder, dequantized to f32"
        );
        assert_ne!(
            from_quant.identity.fingerprint,
            loader::load(&ModelSource::Folder(dense.clone()), &options(offline_hub()))
                .expect("reload dense")
                .identity
                .fingerprint,
            "different weight files, different fingerprints"
        );
    });
}

#[test]
fn hub_ids_resolve_from_the_cache_and_fail_clearly_offline() {
    let cache = ScratchDir::new("hf-cache");
    let cache_dir = cache.0.clone();
    common::with_model(move |_| {
        // The cache layout hf-hub and huggingface_hub share.
        let repo = cache_dir.join("models--test-org--smollm2");
        let snapshot = repo.join("snapshots").join("0123abcd");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
        write_hf_folder(&snapshot, true);

        let source = ModelSource::parse("test-org/smollm2").unwrap();
        assert_eq!(source, ModelSource::Hub("test-org/smollm2".into()));
        let hub = HubOptions {
            cache_dir: Some(cache_dir.clone()),
            endpoint: None,
            offline: true,
        };
        let loaded = loader::load(&source, &options(hub)).expect("load from the cache");
        assert_eq!(loaded.identity.served_name, "test-org/smollm2");
        assert!(loaded.identity.answers_to("smollm2"));
        let text = loaded
            .tokenizer
            .decode(&greedy_answer(&loaded), true)
            .unwrap();
        assert!(text.contains("Paris"), "{text}");

        // Not cached and offline: refused without touching the network.
        let offline = HubOptions {
            cache_dir: Some(cache_dir.clone()),
            endpoint: None,
            offline: true,
        };
        let err = loader::load(&ModelSource::Hub("other/model".into()), &options(offline))
            .err()
            .expect("offline miss must fail");
        assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");

        // Not cached, online, hub unreachable (a closed local port): a clear error.
        let unreachable = HubOptions {
            cache_dir: Some(cache_dir.clone()),
            endpoint: Some("http://127.0.0.1:9".into()),
            offline: false,
        };
        let err = loader::load(
            &ModelSource::Hub("other/model".into()),
            &options(unreachable),
        )
        .err()
        .expect("download must fail");
        let message = err.to_string();
        assert!(
            message.contains("could not download config.json") && message.contains("--model"),
            "{message}"
        );
    });
}

#[test]
fn broken_model_files_are_errors_not_panics() {
    let scratch = ScratchDir::new("broken");
    let dir = scratch.0.clone();
    common::with_model(move |_| {
        let load = |source: ModelSource| {
            loader::load(&source, &options(offline_hub()))
                .err()
                .expect("must fail")
        };

        // Truncated GGUF: the first megabyte of the real file.
        let truncated = dir.join("truncated.gguf");
        let bytes = std::fs::read(common::default_model_path()).unwrap();
        std::fs::write(&truncated, &bytes[..1 << 20]).unwrap();
        let err = load(ModelSource::Gguf(truncated));
        assert!(matches!(err, ModelError::Gguf { .. }), "{err}");

        // GGUF of an architecture we do not implement.
        let gpt2 = dir.join("gpt2.gguf");
        let mut file = GgufFile::new().unwrap();
        file.insert_metadata("general.architecture", "gpt2")
            .unwrap();
        file.insert_array("token_embd.weight", &Array::from_slice(&[0f32; 4], &[2, 2]))
            .unwrap();
        file.save(&gpt2).unwrap();
        let err = load(ModelSource::Gguf(gpt2));
        assert!(
            matches!(&err, ModelError::UnsupportedArchitecture { name, .. } if name == "gpt2"),
            "{err}"
        );

        // A folder missing a tensor, one with wrong shapes, one of an unknown family.
        let folder = dir.join("folder");
        std::fs::create_dir_all(&folder).unwrap();
        write_hf_folder(&folder, false);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap())
                .unwrap();
        let write_config = |value: &serde_json::Value| {
            std::fs::write(folder.join("config.json"), value.to_string()).unwrap()
        };

        let mut wider = config.clone();
        wider["intermediate_size"] = json!(1600);
        write_config(&wider);
        let err = load(ModelSource::Folder(folder.clone()));
        assert!(
            matches!(&err, ModelError::TensorShape { name, .. } if name.contains("mlp")),
            "{err}"
        );

        let mut gemma = config.clone();
        gemma["model_type"] = json!("gemma3");
        write_config(&gemma);
        let err = load(ModelSource::Folder(folder.clone()));
        assert!(
            err.to_string().contains("`gemma3` is not supported"),
            "{err}"
        );

        let mut deeper = config.clone();
        deeper["num_hidden_layers"] = json!(31);
        write_config(&deeper);
        let err = load(ModelSource::Folder(folder.clone()));
        assert!(
            matches!(&err, ModelError::MissingTensor { name, .. } if name.contains("layers.30")),
            "{err}"
        );

        // A weight the configuration does not account for (here: an MLP bias) is refused
        // rather than silently ignored.
        write_config(&config);
        let index_path = folder.join("model.safetensors.index.json");
        let mut index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
        let bias = Array::from_slice(&[0f32; 1536], &[1536]);
        Array::save_safetensors(
            [("model.layers.0.mlp.up_proj.bias", &bias)],
            None,
            folder.join("extra.safetensors"),
        )
        .unwrap();
        index["weight_map"]["model.layers.0.mlp.up_proj.bias"] = json!("extra.safetensors");
        std::fs::write(&index_path, index.to_string()).unwrap();
        let err = load(ModelSource::Folder(folder.clone()));
        assert!(
            matches!(&err, ModelError::UnusedTensors { examples, .. } if examples.contains("up_proj.bias")),
            "{err}"
        );

        // Quantization settings MLX cannot unpack, or another quantization method.
        let quant = dir.join("quant");
        std::fs::create_dir_all(&quant).unwrap();
        write_hf_folder(&quant, true);
        let quant_config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(quant.join("config.json")).unwrap())
                .unwrap();
        let mut zero_group = quant_config.clone();
        zero_group["quantization"] = json!({"group_size": 0, "bits": 4});
        std::fs::write(quant.join("config.json"), zero_group.to_string()).unwrap();
        let err = load(ModelSource::Folder(quant.clone()));
        assert!(err.to_string().contains("no usable"), "{err}");
        let mut awq = quant_config.clone();
        awq["quantization"] = json!({"quant_method": "awq", "group_size": 128, "bits": 4});
        std::fs::write(quant.join("config.json"), awq.to_string()).unwrap();
        let err = load(ModelSource::Folder(quant.clone()));
        assert!(err.to_string().contains("`awq` is not supported"), "{err}");

        std::fs::write(folder.join("config.json"), "{ not json").unwrap();
        let err = load(ModelSource::Folder(folder.clone()));
        assert!(err.to_string().contains("not valid JSON"), "{err}");

        // Missing paths stay paths: the default model's relative path (models/ exists) and
        // anything with a model-file extension are never taken for Hub ids.
        for missing in [
            "/definitely/not/here.gguf",
            "models/does-not-exist.gguf",
            "nowhere/model.safetensors",
            "./org/name",
        ] {
            let err = ModelSource::parse(missing).unwrap_err();
            assert!(
                matches!(err, ModelError::NotFound { .. }),
                "{missing}: {err}"
            );
        }
    });
}
