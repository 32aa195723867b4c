//! Planning one forward step over a batch of sequences, in plain Rust.
//!
//! A step mixes sequences at different points: some prefill a chunk of their prompt, some
//! decode one token. The projections and MLP run on all new tokens packed together
//! (`[N, hidden]`, no padding); attention runs per sequence over its own history, padded to
//! a `[B, T_max]` query grid and a `[B, L]` key grid gathered block-wise from the pool. This
//! module computes every index and mask that layout needs, so the MLX side only gathers and
//! never decides, and so the bookkeeping can be tested without MLX.

use std::collections::HashSet;

/// One sequence's share of a forward step.
#[derive(Debug, Clone, Copy)]
pub struct SequenceChunk<'a> {
    /// The tokens to run this step: a prompt chunk, or the one token being decoded.
    pub tokens: &'a [u32],
    /// How many of this sequence's tokens are already in the KV cache; `tokens[0]` sits at
    /// this position.
    pub cached: usize,
    /// The pool blocks holding this sequence's KV, in order. Must cover
    /// `cached + tokens.len()` positions. Blocks the step writes into must not be shared
    /// with any other sequence in the batch.
    pub block_table: &'a [u32],
}

/// Why a batch cannot be run; each is a bug in the caller (the scheduler), reported
/// instead of corrupting the cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("a forward step needs at least one sequence")]
    Empty,
    #[error("sequence {seq} has no tokens to run")]
    EmptyChunk { seq: usize },
    #[error("sequence {seq} needs {needed} blocks for {len} tokens but its table has {have}")]
    BlockTableTooShort {
        seq: usize,
        len: usize,
        needed: usize,
        have: usize,
    },
    #[error("sequence {seq} references block {block}, but the pool has {num_blocks}")]
    BlockOutOfRange {
        seq: usize,
        block: u32,
        num_blocks: usize,
    },
    #[error(
        "sequence {seq} would write KV slot {slot}, which another sequence in the step also writes"
    )]
    SharedWriteSlot { seq: usize, slot: usize },
    #[error("sequence {seq} would reach position {len}, past the context length {context}")]
    PastContext {
        seq: usize,
        len: usize,
        context: usize,
    },
}

/// Every index a forward step needs, derived once from the chunks.
///
/// Shapes: `N` new tokens in total, `B` sequences, `T` = longest chunk, `L` =
/// `blocks_per_seq * block_size` gathered key positions per sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    /// `[N]` the new tokens, sequence after sequence.
    pub token_ids: Vec<u32>,
    /// `[N]` each new token's position in its sequence (its RoPE offset).
    pub positions: Vec<i32>,
    /// `[N]` the pool slot (`block * block_size + offset`) each new token's K/V goes to.
    pub slots: Vec<i32>,
    /// `B`
    pub batch: usize,
    /// `T`: the longest chunk in the step.
    pub max_chunk: usize,
    /// Blocks gathered per sequence (the longest table the step needs).
    pub blocks_per_seq: usize,
    pub block_size: usize,
    /// `[B * blocks_per_seq]` blocks to gather; short tables are padded with their own
    /// first block (masked out).
    pub block_ids: Vec<i32>,
    /// `[B]` tokens each sequence holds after this step (`cached + chunk`).
    pub kv_lens: Vec<usize>,
    /// `[B]` chunk length per sequence.
    pub chunk_lens: Vec<usize>,
    /// `[B]` index into the packed tokens of each sequence's last new token: the row its
    /// next-token logits come from.
    pub last_token: Vec<i32>,
    /// `[B * T]` packed-token index feeding each cell of the padded query grid (padding
    /// cells repeat the sequence's last token; their output is discarded).
    pub pad_index: Vec<i32>,
    /// `[N]` where each packed token sits in the padded `[B * T]` grid.
    pub unpad_index: Vec<i32>,
}

impl BatchPlan {
    /// Plans a step. `num_blocks` is the pool size, `context` the model's context length.
    pub fn new(
        chunks: &[SequenceChunk<'_>],
        block_size: usize,
        num_blocks: usize,
        context: usize,
    ) -> Result<Self, BatchError> {
        if chunks.is_empty() {
            return Err(BatchError::Empty);
        }
        let batch = chunks.len();
        let total: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let max_chunk = chunks.iter().map(|c| c.tokens.len()).max().unwrap_or(0);
        let mut blocks_per_seq = 0;
        let mut token_ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut slots = Vec::with_capacity(total);
        let mut kv_lens = Vec::with_capacity(batch);
        let mut chunk_lens = Vec::with_capacity(batch);
        let mut last_token = Vec::with_capacity(batch);
        let mut written = HashSet::with_capacity(total);

        for (seq, chunk) in chunks.iter().enumerate() {
            if chunk.tokens.is_empty() {
                return Err(BatchError::EmptyChunk { seq });
            }
            let len = chunk.cached + chunk.tokens.len();
            if len > context {
                return Err(BatchError::PastContext { seq, len, context });
            }
            let needed = len.div_ceil(block_size);
            if chunk.block_table.len() < needed {
                return Err(BatchError::BlockTableTooShort {
                    seq,
                    len,
                    needed,
                    have: chunk.block_table.len(),
                });
            }
            if let Some(&block) = chunk.block_table[..needed]
                .iter()
                .find(|&&b| b as usize >= num_blocks)
            {
                return Err(BatchError::BlockOutOfRange {
                    seq,
                    block,
                    num_blocks,
                });
            }
            blocks_per_seq = blocks_per_seq.max(needed);
            for (i, &token) in chunk.tokens.iter().enumerate() {
                let position = chunk.cached + i;
                let block = chunk.block_table[position / block_size] as usize;
                let slot = block * block_size + position % block_size;
                if !written.insert(slot) {
                    return Err(BatchError::SharedWriteSlot { seq, slot });
                }
                token_ids.push(token);
                positions.push(position as i32);
                slots.push(slot as i32);
            }
            kv_lens.push(len);
            chunk_lens.push(chunk.tokens.len());
            last_token.push((token_ids.len() - 1) as i32);
        }

        let mut block_ids = Vec::with_capacity(batch * blocks_per_seq);
        let mut pad_index = Vec::with_capacity(batch * max_chunk);
        let mut unpad_index = Vec::with_capacity(total);
        let mut start = 0;
        for (seq, chunk) in chunks.iter().enumerate() {
            let needed = kv_lens[seq].div_ceil(block_size);
            let table = &chunk.block_table[..needed];
            block_ids.extend(table.iter().map(|&b| b as i32));
            block_ids.extend(std::iter::repeat_n(
                table[0] as i32,
                blocks_per_seq - needed,
            ));
            let n = chunk_lens[seq];
            for t in 0..max_chunk {
                pad_index.push((start + t.min(n - 1)) as i32);
            }
            unpad_index.extend((0..n).map(|t| (seq * max_chunk + t) as i32));
            start += n;
        }

        Ok(BatchPlan {
            token_ids,
            positions,
            slots,
            batch,
            max_chunk,
            blocks_per_seq,
            block_size,
            block_ids,
            kv_lens,
            chunk_lens,
            last_token,
            pad_index,
            unpad_index,
        })
    }

    /// Gathered key positions per sequence (`L`).
    pub fn key_len(&self) -> usize {
        self.blocks_per_seq * self.block_size
    }

    /// Whether every chunk is one token (a pure decode step: no query padding needed).
    pub fn is_decode_only(&self) -> bool {
        self.max_chunk == 1
    }

    /// `[B * T * L]` attention mask: query `t` of sequence `b` may see key `k` iff `k` is
    /// at or before the query's position (causal) and inside the sequence's history.
    /// Padding queries copy the row of the sequence's last real query, so no row is
    /// empty (an all-masked row would turn into NaNs).
    pub fn attention_mask(&self) -> Vec<bool> {
        let key_len = self.key_len();
        let mut mask = Vec::with_capacity(self.batch * self.max_chunk * key_len);
        for seq in 0..self.batch {
            let n = self.chunk_lens[seq];
            let first_position = self.kv_lens[seq] - n;
            for t in 0..self.max_chunk {
                let visible = first_position + t.min(n - 1) + 1;
                mask.extend((0..key_len).map(|k| k < visible));
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_prefill_and_decode_step() {
        // Sequence 0 decodes its 6th token (5 cached); sequence 1 prefills 3 tokens.
        let chunks = [
            SequenceChunk {
                tokens: &[7],
                cached: 5,
                block_table: &[4, 2],
            },
            SequenceChunk {
                tokens: &[1, 2, 3],
                cached: 0,
                block_table: &[9],
            },
        ];
        let plan = BatchPlan::new(&chunks, 4, 16, 100).unwrap();
        assert_eq!(plan.token_ids, vec![7, 1, 2, 3]);
        assert_eq!(plan.positions, vec![5, 0, 1, 2]);
        // Position 5 lives in the second block (2) at offset 1.
        assert_eq!(plan.slots, vec![2 * 4 + 1, 36, 37, 38]);
        assert_eq!((plan.batch, plan.max_chunk, plan.blocks_per_seq), (2, 3, 2));
        assert_eq!(plan.block_ids, vec![4, 2, 9, 9]);
        assert_eq!(plan.kv_lens, vec![6, 3]);
        assert_eq!(plan.last_token, vec![0, 3]);
        assert_eq!(plan.pad_index, vec![0, 0, 0, 1, 2, 3]);
        assert_eq!(plan.unpad_index, vec![0, 3, 4, 5]);

        let mask = plan.attention_mask();
        let row = |b: usize, t: usize| -> Vec<bool> {
            let l = plan.key_len();
            mask[(b * plan.max_chunk + t) * l..][..l].to_vec()
        };
        let visible = |n: usize| (0..8).map(|k| k < n).collect::<Vec<_>>();
        assert_eq!(row(0, 0), visible(6)); // decode sees all 6 of its tokens
        assert_eq!(row(0, 2), visible(6)); // padding copies the last real row
        assert_eq!(row(1, 0), visible(1)); // causal inside the prefill chunk
        assert_eq!(row(1, 2), visible(3));
    }

    #[test]
    fn refuses_inconsistent_batches() {
        let plan = |chunks: &[SequenceChunk<'_>]| BatchPlan::new(chunks, 4, 8, 16);
        assert_eq!(plan(&[]).unwrap_err(), BatchError::Empty);
        let short = SequenceChunk {
            tokens: &[1, 2],
            cached: 3,
            block_table: &[0],
        };
        assert!(matches!(
            plan(&[short]).unwrap_err(),
            BatchError::BlockTableTooShort { needed: 2, .. }
        ));
        let out_of_range = SequenceChunk {
            tokens: &[1],
            cached: 0,
            block_table: &[8],
        };
        assert!(matches!(
            plan(&[out_of_range]).unwrap_err(),
            BatchError::BlockOutOfRange { block: 8, .. }
        ));
        let a = SequenceChunk {
            tokens: &[1],
            cached: 2,
            block_table: &[3],
        };
        assert!(matches!(
            plan(&[a, a]).unwrap_err(),
            BatchError::SharedWriteSlot { seq: 1, slot: 14 }
        ));
        let long = SequenceChunk {
            tokens: &[1; 5],
            cached: 12,
            block_table: &[0, 1, 2, 3, 4],
        };
        assert!(matches!(
            plan(&[long]).unwrap_err(),
            BatchError::PastContext { len: 17, .. }
        ));
        let empty = SequenceChunk {
            tokens: &[],
            cached: 0,
            block_table: &[0],
        };
        assert_eq!(
            plan(&[empty]).unwrap_err(),
            BatchError::EmptyChunk { seq: 0 }
        );
    }
}
