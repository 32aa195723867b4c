//! The KV pool is reserved whole at start-up (its size bounds memory), yet it takes resident
//! memory only for the blocks written into it, and writes stay in place: filling part of
//! the pool makes about that part resident, never a copy of the whole. One test in its own
//! binary, so that no other test's allocations move the process's resident size meanwhile.
#![cfg(target_os = "linux")]

mod common;

use mlx_rs::Dtype;
use mlx_serve::model::config::{Architecture, ModelConfig};
use mlx_serve::model::kv_cache::{KvCacheConfig, PagedKvCache};

/// This process's resident memory, from `/proc/self/statm` (pages).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("a resident page count");
    // SAFETY: sysconf only reads a constant.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

/// The default model's KV geometry (SmolLM2-135M: 30 layers, 3 KV heads of 64).
fn smollm2() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        rope_scaling: None,
        context_length: 8192,
        tie_word_embeddings: true,
        attention_bias: false,
        output_bias: false,
        qk_norm: false,
    }
}

#[test]
fn the_pool_becomes_resident_only_where_blocks_are_written() {
    common::use_test_device();
    const MIB: usize = 1 << 20;
    let model = smollm2();
    let config = KvCacheConfig::from_budget(256 * MIB, 16, &model, Dtype::Float32).unwrap();
    let pool = config.num_blocks * KvCacheConfig::bytes_per_block(16, &model, Dtype::Float32);

    let before = resident_bytes();
    let mut cache = PagedKvCache::new(config, &model, Dtype::Float32).expect("the pool");
    let reserved = resident_bytes().saturating_sub(before);
    assert!(
        reserved < pool / 16,
        "a fresh pool of {} MiB made {} MiB resident",
        pool / MIB,
        reserved / MIB
    );
    // Unwritten blocks read as zeros.
    let untouched = cache.read_blocks(&[0, 1]).unwrap();
    assert!(
        untouched
            .iter()
            .all(|block| block.keys.iter().chain(&block.values).all(|&b| b == 0))
    );

    // Fill the first half of the blocks, a few at a time, with a pattern.
    let half: Vec<u32> = (0..config.num_blocks as u32 / 2).collect();
    let per_block = KvCacheConfig::bytes_per_block(16, &model, Dtype::Float32) / 2;
    let keys: Vec<u8> = (0..per_block).map(|i| (i % 251) as u8).collect();
    let values: Vec<u8> = (0..per_block).map(|i| (i % 241) as u8).collect();
    for blocks in half.chunks(8) {
        let data = vec![(keys.as_slice(), values.as_slice()); blocks.len()];
        cache.write_blocks(blocks, &data).unwrap();
    }
    let written = resident_bytes().saturating_sub(before);
    // The first half of the blocks is the first half of each head's slots in each layer's
    // arrays, so about half the pool's pages. A write that copied the pool would have made
    // all of it resident.
    assert!(
        written > pool * 2 / 5 && written < pool * 3 / 4,
        "writing half of a {} MiB pool made {} MiB resident",
        pool / MIB,
        written / MIB
    );
    let last = config.num_blocks as u32 - 1;
    let read = cache.read_blocks(&[half[1], last]).unwrap();
    assert_eq!(
        (read[0].keys.as_slice(), read[0].values.as_slice()),
        (keys.as_slice(), values.as_slice())
    );
    assert!(read[1].keys.iter().chain(&read[1].values).all(|&b| b == 0));
}
