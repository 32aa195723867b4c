//! Greedy decoding of a fixed set of sequences straight on the model: the harness that
//! reference tests, equivalence tests and benchmarks drive, and the CLI's smoke generation.
//!
//! It exercises the same forward path the engine uses (mixed prefill/decode steps over the
//! paged cache) with the simplest possible policy: each sequence gets its blocks for its
//! whole length up front (one consecutive run each, or interleaved with the other
//! sequences' blocks to exercise scattered block tables), joins the batch at a chosen step,
//! prefills its prompt in chunks and then decodes one token per step. Scheduling, admission
//! and sampling proper belong to the engine.

use super::ModelError;
use super::batch::SequenceChunk;
use super::kv_cache::PagedKvCache;
use super::llama::LlamaModel;

/// One sequence to decode.
#[derive(Debug, Clone)]
pub struct GreedyRequest {
    pub prompt: Vec<u32>,
    /// Tokens to generate (EOS does not stop it: the harness compares fixed-length runs).
    pub max_tokens: usize,
    /// The step at which this sequence joins the batch.
    pub join_step: usize,
}

/// What a sequence produced.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyOutput {
    pub tokens: Vec<u32>,
    /// Per generated token, the log-probability gap between the best and second-best
    /// token: small values mark near-ties, where numerically equivalent computations may
    /// legitimately pick different tokens.
    pub margins: Vec<f32>,
}

/// How the harness lays out the sequences' blocks in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLayout {
    /// Each sequence one consecutive run (attention reads the pool in place).
    Consecutive,
    /// Round-robin across sequences, so no table is consecutive (attention gathers).
    Interleaved,
}

/// Schedule knobs of the harness.
#[derive(Debug, Clone, Copy)]
pub struct GreedyOptions {
    /// At most this many prompt tokens per sequence per step.
    pub prefill_chunk: usize,
    pub layout: BlockLayout,
}

impl Default for GreedyOptions {
    /// Whole prompts in one step, consecutive blocks: mlx-lm's own schedule.
    fn default() -> Self {
        GreedyOptions {
            prefill_chunk: usize::MAX,
            layout: BlockLayout::Consecutive,
        }
    }
}

/// Decodes every request to `max_tokens`.
pub fn generate(
    model: &LlamaModel,
    cache: &mut PagedKvCache,
    requests: &[GreedyRequest],
    options: GreedyOptions,
) -> Result<Vec<GreedyOutput>, ModelError> {
    let kv = cache.config();
    let prefill_chunk = options.prefill_chunk;
    let needs: Vec<usize> = requests
        .iter()
        .map(|r| (r.prompt.len() + r.max_tokens).div_ceil(kv.block_size))
        .collect();
    let total: usize = needs.iter().sum();
    let mut tables: Vec<Vec<u32>> = needs.iter().map(|&n| Vec::with_capacity(n)).collect();
    let mut next_block = 0u32;
    match options.layout {
        BlockLayout::Consecutive => {
            for (table, &need) in tables.iter_mut().zip(&needs) {
                table.extend(next_block..next_block + need as u32);
                next_block += need as u32;
            }
        }
        BlockLayout::Interleaved => {
            while (next_block as usize) < total {
                for (table, &need) in tables.iter_mut().zip(&needs) {
                    if table.len() < need {
                        table.push(next_block);
                        next_block += 1;
                    }
                }
            }
        }
    }
    if next_block as usize > kv.num_blocks {
        return Err(ModelError::KvCache(format!(
            "{} sequences need {next_block} blocks, the pool has {}",
            requests.len(),
            kv.num_blocks
        )));
    }

    let mut outputs = vec![
        GreedyOutput {
            tokens: Vec::new(),
            margins: Vec::new(),
        };
        requests.len()
    ];
    // Tokens of each sequence already in the cache.
    let mut cached = vec![0usize; requests.len()];
    let mut step = 0;
    loop {
        let mut active = Vec::new();
        let mut inputs: Vec<Vec<u32>> = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            if step < request.join_step || outputs[i].tokens.len() >= request.max_tokens {
                continue;
            }
            let input = if cached[i] < request.prompt.len() {
                let end = (cached[i] + prefill_chunk.max(1)).min(request.prompt.len());
                request.prompt[cached[i]..end].to_vec()
            } else {
                vec![*outputs[i].tokens.last().unwrap_or(&0)]
            };
            active.push(i);
            inputs.push(input);
        }
        if active.is_empty() {
            if requests
                .iter()
                .zip(&outputs)
                .all(|(r, o)| o.tokens.len() >= r.max_tokens)
            {
                return Ok(outputs);
            }
            step += 1;
            continue;
        }
        let chunks: Vec<SequenceChunk<'_>> = active
            .iter()
            .zip(&inputs)
            .map(|(&i, input)| SequenceChunk {
                tokens: input,
                cached: cached[i],
                block_table: &tables[i],
            })
            .collect();
        let logits = model.forward(&chunks, cache)?;
        let logits = logits.as_slice::<f32>();
        let vocab = model.config().vocab_size;
        for (row, (&i, input)) in active.iter().zip(&inputs).enumerate() {
            cached[i] += input.len();
            // A prefill chunk that does not finish the prompt predicts nothing yet.
            if cached[i] < requests[i].prompt.len() {
                continue;
            }
            let (token, margin) = top_two(&logits[row * vocab..(row + 1) * vocab]);
            outputs[i].tokens.push(token);
            outputs[i].margins.push(margin);
        }
        step += 1;
    }
}

/// The arg-max token and its logit gap to the runner-up (equal to the log-probability gap).
fn top_two(logits: &[f32]) -> (u32, f32) {
    let (mut best, mut second) = (0usize, f32::NEG_INFINITY);
    for (i, &value) in logits.iter().enumerate().skip(1) {
        if value > logits[best] {
            second = logits[best];
            best = i;
        } else if value > second {
            second = value;
        }
    }
    (best as u32, logits[best] - second)
}

#[cfg(test)]
mod tests {
    use super::top_two;

    #[test]
    fn top_two_finds_best_and_gap() {
        assert_eq!(top_two(&[0.5, 2.0, 1.5, -1.0]), (1, 0.5));
        assert_eq!(top_two(&[3.0, 1.0, 2.5]), (0, 0.5));
    }
}
