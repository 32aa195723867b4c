//! The forward pass reproduces mlx-lm, and batching and paging change nothing.
//!
//! `tests/fixtures/smollm2_greedy_reference.json` holds mlx-lm's greedy token ids and
//! per-step top-2 log-probability margins for the default model (f32 weights dequantized
//! from the same GGUF by an independent Python script; `make reference` regenerates it).
//!
//! Numerics rule (docs/model-runtime.md): ids must match up to the first divergence, and a
//! divergence is accepted only where the reference's margin at that step is < 0.02.

mod common;

use mlx_serve::model::greedy::{self, BlockLayout, GreedyOptions, GreedyOutput, GreedyRequest};
use mlx_serve::model::kv_cache::{KvCacheConfig, PagedKvCache};

use common::{GreedyFixture as Fixture, ReferencePrompt};

fn fixture() -> Fixture {
    common::greedy_fixture()
}

/// `got` (of length `len`) against the fixture under the numerics rule.
fn assert_follows_reference(
    what: &str,
    got: &[u32],
    reference: &ReferencePrompt,
    len: usize,
) -> usize {
    assert_eq!(
        got.len(),
        len,
        "{what}: generated {} tokens, expected {len}",
        got.len()
    );
    common::assert_follows_reference(what, got, &reference.reference())
}

fn run(
    requests: Vec<GreedyRequest>,
    block_size: usize,
    options: GreedyOptions,
) -> Vec<GreedyOutput> {
    common::with_model(move |model| {
        let tokens: usize = requests.iter().map(|r| r.prompt.len() + r.max_tokens).sum();
        let config = KvCacheConfig {
            block_size,
            // Room for every sequence's rounding to whole blocks.
            num_blocks: tokens.div_ceil(block_size) + requests.len(),
        };
        let mut cache =
            PagedKvCache::new(config, model.config(), mlx_rs::Dtype::Float32).expect("cache");
        greedy::generate(model, &mut cache, &requests, options).expect("generate")
    })
}

fn request(prompt: &ReferencePrompt, max_tokens: usize, join_step: usize) -> GreedyRequest {
    GreedyRequest {
        prompt: prompt.prompt_ids.clone(),
        max_tokens,
        join_step,
    }
}

#[test]
fn fixture_was_made_from_the_installed_model() {
    let fixture = fixture();
    let fingerprint = mlx_serve::model::identity::file_sha256(&common::default_model_path())
        .expect("hash the model");
    assert_eq!(
        fixture.gguf_sha256, fingerprint,
        "regenerate the fixture (`make reference`)"
    );
    assert!(fixture.prompts.len() >= 5);
    for prompt in &fixture.prompts {
        assert!(prompt.output_ids.len() >= 48 && prompt.margins.len() == prompt.output_ids.len());
    }
}

#[test]
fn greedy_single_sequences_match_mlx_lm() {
    let fixture = fixture();
    for prompt in &fixture.prompts {
        let len = prompt.output_ids.len();
        // Whole prompt in one step, then one token per step: mlx-lm's own schedule.
        let output = run(vec![request(prompt, len, 0)], 16, GreedyOptions::default()).remove(0);
        let matched = assert_follows_reference("single", &output.tokens, prompt, len);
        eprintln!(
            "{}: {matched}/{len} tokens identical to mlx-lm",
            prompt.name
        );
    }
}

#[test]
fn batched_decoding_matches_one_at_a_time() {
    let fixture = fixture();
    let len = 48;
    // All prompts in one batch: two start at once, the others join while those decode and
    // prefill in 7-token chunks, so steps mix prefill chunks of different lengths with
    // decodes; blocks interleaved, so every sequence's keys are gathered from scattered
    // blocks.
    let requests = fixture
        .prompts
        .iter()
        .enumerate()
        .map(|(i, p)| request(p, len, [0, 0, 3, 5, 6][i % 5]))
        .collect();
    let options = GreedyOptions {
        prefill_chunk: 7,
        layout: BlockLayout::Interleaved,
    };
    let outputs = run(requests, 16, options);
    for (prompt, output) in fixture.prompts.iter().zip(&outputs) {
        let matched = assert_follows_reference("batched", &output.tokens, prompt, len);
        eprintln!(
            "{}: {matched}/{len} tokens identical in the batch",
            prompt.name
        );
    }
}

#[test]
fn block_size_does_not_change_tokens() {
    let fixture = fixture();
    let len = 48;
    let prompts = &fixture.prompts[..2];
    // Two sequences decoded together, their blocks consecutive (read in place) or
    // interleaved (gathered), at three block sizes: attention sees the same keys either way.
    let mut runs = Vec::new();
    for block_size in [1, 16, 256] {
        for layout in [BlockLayout::Consecutive, BlockLayout::Interleaved] {
            let requests = prompts.iter().map(|p| request(p, len, 0)).collect();
            let options = GreedyOptions {
                prefill_chunk: usize::MAX,
                layout,
            };
            runs.push((
                format!("block size {block_size}, {layout:?}"),
                run(requests, block_size, options),
            ));
        }
    }
    let (_, baseline) = &runs[2]; // block size 16, consecutive
    for (i, prompt) in prompts.iter().enumerate() {
        assert_follows_reference("block size 16", &baseline[i].tokens, prompt, len);
        for (name, outputs) in &runs {
            assert_eq!(
                outputs[i].tokens, baseline[i].tokens,
                "{name} vs block size 16"
            );
        }
    }
}
