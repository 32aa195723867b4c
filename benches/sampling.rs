//! Cost of choosing the next token, per sequence, at the default model's vocabulary size
//! (49,152): greedy, and the expensive case of filtered sampling (top-p) with
//! log-probabilities (5 alternatives), for a batch of 8 sequences as the engine runs them.
//! Throughput is per sequence, so the reported time is µs per token per sequence.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mlx_serve::engine::sampling::{Sampler, SamplingParams};

const VOCAB: usize = 49_152;
const BATCH: usize = 8;

/// Logits shaped like a language model's: a long flat tail and a few strong candidates,
/// different per sequence.
fn logits(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..VOCAB)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state % 1000) as f32 / 250.0 - 2.0;
            if i % 4093 == 0 { 12.0 + noise } else { noise }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let batch: Vec<Vec<f32>> = (0..BATCH as u64).map(logits).collect();
    let mut group = c.benchmark_group("sample");
    group.throughput(Throughput::Elements(BATCH as u64));
    let cases = [
        ("greedy", SamplingParams::greedy()),
        (
            "top_p_0.9_logprobs_5",
            SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                logprobs: Some(5),
                ..SamplingParams::default()
            },
        ),
        (
            "top_k_40_min_p_0.05",
            SamplingParams {
                top_k: Some(40),
                min_p: 0.05,
                ..SamplingParams::default()
            },
        ),
    ];
    for (name, params) in cases {
        let mut samplers: Vec<Sampler> = (0..BATCH as u64)
            .map(|seed| Sampler::new(params.clone(), &[], seed))
            .collect();
        group.bench_function(format!("{name}/batch_{BATCH}"), |b| {
            b.iter(|| {
                for (sampler, logits) in samplers.iter_mut().zip(&batch) {
                    std::hint::black_box(sampler.sample(logits));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
