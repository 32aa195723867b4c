//! Forward-step speed of the default model over the paged KV cache, in the shapes
//! `scripts/reference/bench_mlx_lm.py` measures for mlx-lm (f32 weights on the CPU):
//!
//! - `prefill/P`: one forward pass over a fresh P-token prompt (throughput = P tokens);
//! - `decode_1k`: one decode step of a single sequence at 1024 tokens of context;
//! - `batched_decode/B`: one decode step of B sequences at 512 tokens of context each
//!   (throughput = B tokens); `batched_decode_192/B` and `batched_decode_1024/B` the same
//!   at 192 tokens (about the context of the side-by-side load) and at 1024;
//! - `decode_1k_block_size/S`: `decode_1k` with S-token blocks, for the block-size choice;
//! - `decode_1k_scattered`: `decode_1k` with non-consecutive blocks (keys gathered);
//! - `decode_1k_shared_prefix`: `decode_1k` with the first block elsewhere (two runs).
//!
//! Criterion's `elem/s` is tokens/s. A benchmark's cache is prefilled on its first sample
//! only, and not at all when a filter leaves it out. Each iteration rewrites the same cache
//! slots, so the context length stays fixed. `scripts/bench_model.sh` runs this and the
//! mlx-lm baseline in one go.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mlx_rs::Dtype;
use mlx_rs::io::GgufFile;
use mlx_serve::config::DEFAULT_MODEL;
use mlx_serve::model::batch::SequenceChunk;
use mlx_serve::model::gguf;
use mlx_serve::model::kv_cache::{KvCacheConfig, PagedKvCache};
use mlx_serve::model::llama::LlamaModel;
use mlx_serve::model::weights::WeightMode;

fn load_model() -> LlamaModel {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
    assert!(
        path.is_file(),
        "{} is missing: run `make setup`",
        path.display()
    );
    let file = GgufFile::load(&path).expect("load GGUF");
    let config = gguf::model_config(&file, &path).expect("config");
    let mut tensors = gguf::tensors(&file, &config, &path).expect("tensors");
    LlamaModel::from_tensors(config, &mut tensors, WeightMode::F32).expect("model")
}

/// Deterministic ordinary (non-special) token ids.
fn tokens(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            17 + (state % (vocab as u64 - 17)) as u32
        })
        .collect()
}

/// A cache for `sequences` sequences of up to `len` tokens, each in its own block run.
struct Setup {
    cache: PagedKvCache,
    tables: Vec<Vec<u32>>,
}

impl Setup {
    fn new(model: &LlamaModel, sequences: usize, len: usize, block_size: usize) -> Self {
        let per_seq = len.div_ceil(block_size);
        let config = KvCacheConfig {
            block_size,
            num_blocks: per_seq * sequences,
        };
        let cache = PagedKvCache::new(config, model.config(), Dtype::Float32).expect("cache");
        let tables = (0..sequences)
            .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
            .collect();
        Setup { cache, tables }
    }

    /// Runs one step: each entry is (sequence, new tokens, tokens already cached).
    fn step(&mut self, model: &LlamaModel, entries: &[(usize, &[u32], usize)]) {
        let chunks: Vec<SequenceChunk<'_>> = entries
            .iter()
            .map(|&(seq, tokens, cached)| SequenceChunk {
                tokens,
                cached,
                block_table: &self.tables[seq],
            })
            .collect();
        model.forward(&chunks, &mut self.cache).expect("forward");
    }
}

fn model_steps(c: &mut Criterion) {
    // The OpenBLAS kernels the server runs (src/openblas_core.rs); may start the bench again.
    #[cfg(target_os = "linux")]
    mlx_serve::openblas_core::restart_with_kernels_for_this_cpu();
    mlx_serve::device::apply_from_env().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", mlx_serve::runtime::RuntimeInfo::detect());
    let model = load_model();
    let vocab = model.config().vocab_size;

    let mut group = c.benchmark_group("prefill");
    group.sample_size(10);
    for len in [128, 512, 1024] {
        group.throughput(Throughput::Elements(len as u64));
        let mut state = None;
        group.bench_function(BenchmarkId::from_parameter(len), |b| {
            let (setup, prompt) = state
                .get_or_insert_with(|| (Setup::new(&model, 1, len, 16), tokens(1, len, vocab)));
            b.iter(|| setup.step(&model, &[(0, prompt, 0)]))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decode_1k_block_size");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    for block_size in [1, 16, 64, 256] {
        let context = 1024;
        let name = if block_size == 16 {
            // The shipped default, reported under its own name too.
            "decode_1k".to_owned()
        } else {
            format!("{block_size}")
        };
        let mut state = None;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let setup = state.get_or_insert_with(|| {
                let mut setup = Setup::new(&model, 1, context + 1, block_size);
                setup.step(&model, &[(0, &tokens(2, context, vocab), 0)]);
                setup
            });
            let next = tokens(3, 1, vocab);
            b.iter(|| setup.step(&model, &[(0, &next, context)]))
        });
    }
    group.finish();

    // The same decode step when the sequence's blocks are scattered (every other block), so
    // attention gathers them instead of reading the pool in place.
    let mut group = c.benchmark_group("decode_1k_scattered");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    let context = 1024;
    let mut state = None;
    group.bench_function("16", |b| {
        let setup = state.get_or_insert_with(|| {
            let mut setup = Setup::new(&model, 2, context + 1, 16);
            let blocks = (context + 1).div_ceil(16) as u32;
            setup.tables[0] = (0..blocks).map(|b| 2 * b).collect();
            setup.step(&model, &[(0, &tokens(2, context, vocab), 0)]);
            setup
        });
        let next = tokens(3, 1, vocab);
        b.iter(|| setup.step(&model, &[(0, &next, context)]))
    });
    group.finish();

    // The same decode step when the sequence's first block sits elsewhere (a prompt prefix
    // shared with another sequence) and the rest is its own run: read as two runs.
    let mut group = c.benchmark_group("decode_1k_shared_prefix");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    let mut state = None;
    group.bench_function("16", |b| {
        let setup = state.get_or_insert_with(|| {
            let mut setup = Setup::new(&model, 2, context + 1, 16);
            let blocks = (context + 1).div_ceil(16) as u32;
            setup.tables[0] = std::iter::once(2 * blocks - 1)
                .chain(0..blocks - 1)
                .collect();
            setup.step(&model, &[(0, &tokens(2, context, vocab), 0)]);
            setup
        });
        let next = tokens(3, 1, vocab);
        b.iter(|| setup.step(&model, &[(0, &next, context)]))
    });
    group.finish();

    // Batched decode at 512 tokens of context (mlx-lm's benchmark), at 192 (about the context
    // of the side-by-side load: ~120-token prompts, 64 new tokens) and at 1024.
    for (name, context) in [
        ("batched_decode", 512),
        ("batched_decode_192", 192),
        ("batched_decode_1024", 1024),
    ] {
        let mut group = c.benchmark_group(name);
        group.sample_size(20);
        for batch in [1, 4, 8] {
            group.throughput(Throughput::Elements(batch as u64));
            let mut state = None;
            group.bench_function(BenchmarkId::from_parameter(batch), |b| {
                let setup = state.get_or_insert_with(|| {
                    let mut setup = Setup::new(&model, batch, context + 1, 16);
                    for seq in 0..batch {
                        // Prefill each sequence alone, as the engine would before it joins
                        // decoding.
                        setup.step(
                            &model,
                            &[(seq, &tokens(10 + seq as u64, context, vocab), 0)],
                        );
                    }
                    setup
                });
                let next: Vec<Vec<u32>> = (0..batch)
                    .map(|s| tokens(100 + s as u64, 1, vocab))
                    .collect();
                let entries: Vec<(usize, &[u32], usize)> = next
                    .iter()
                    .enumerate()
                    .map(|(seq, token)| (seq, token.as_slice(), context))
                    .collect();
                b.iter(|| setup.step(&model, &entries))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, model_steps);
criterion_main!(benches);
