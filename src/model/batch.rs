//! Planning one forward step over a batch of sequences, in plain Rust.
//!
//! A step mixes sequences at different points: some prefill a chunk of their prompt, some
//! decode one token. The projections and MLP run on all new tokens packed together
//! (`[N, hidden]`, no padding); attention runs per sequence, over exactly that sequence's
//! keys, in the same shapes a single sequence would use. This module computes the slots,
//! positions and key locations that needs, so the MLX side only reads and writes, and so the
//! bookkeeping can be tested without MLX.

use std::collections::{HashMap, HashSet};

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
    #[error("the block size must be at least one token")]
    ZeroBlockSize,
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
    #[error("sequence {seq} writes into block {block}, which sequence {reader} also reads")]
    SharedWriteBlock {
        seq: usize,
        block: u32,
        reader: usize,
    },
    #[error("sequence {seq} has token id {token}, outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        seq: usize,
        token: u32,
        vocab: usize,
    },
    #[error("sequence {seq} would reach position {len}, past the context length {context}")]
    PastContext {
        seq: usize,
        len: usize,
        context: usize,
    },
}

impl BatchError {
    /// The index of the chunk at fault, when one is: the step can run without it.
    pub fn sequence(&self) -> Option<usize> {
        match *self {
            BatchError::Empty | BatchError::ZeroBlockSize => None,
            BatchError::EmptyChunk { seq }
            | BatchError::BlockTableTooShort { seq, .. }
            | BatchError::BlockOutOfRange { seq, .. }
            | BatchError::SharedWriteSlot { seq, .. }
            | BatchError::SharedWriteBlock { seq, .. }
            | BatchError::TokenOutOfRange { seq, .. }
            | BatchError::PastContext { seq, .. } => Some(seq),
        }
    }
}

/// A sequence whose blocks form at most this many runs of consecutive blocks is read run by
/// run (a slice each, then one concatenation); one with more is gathered block by block.
/// Slices copy whole runs at memory speed, while the gather walks the pool element by
/// element, so a few runs (a shared prompt prefix, then the sequence's own blocks) cost a
/// fraction of a gather.
pub const MAX_RUNS: usize = 8;

/// Where one sequence's keys and values live in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// Its blocks are consecutive: the history is the slot range starting here, read in
    /// place (no copy).
    Run { first_slot: usize },
    /// Its blocks form 2 to [`MAX_RUNS`] runs of consecutive blocks: `(first slot, tokens)`
    /// of each, in order, concatenated into a contiguous copy.
    Runs(Vec<(usize, usize)>),
    /// Its blocks are scattered: these blocks are gathered, in order, into a contiguous copy.
    Blocks(Vec<i32>),
}

impl KeyLocation {
    /// The location of the first `len` tokens of a sequence whose blocks are `table`
    /// (which covers them).
    fn of(table: &[u32], len: usize, block_size: usize) -> KeyLocation {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut left = len;
        for &block in table {
            let tokens = block_size.min(left);
            left -= tokens;
            let slot = block as usize * block_size;
            // Only the last block can be partial, so a run that reaches this slot ends
            // with the block before it.
            match runs.last_mut() {
                Some((first, run)) if *first + *run == slot => *run += tokens,
                _ => runs.push((slot, tokens)),
            }
        }
        match runs.len() {
            1 => KeyLocation::Run {
                first_slot: runs[0].0,
            },
            n if n <= MAX_RUNS => KeyLocation::Runs(runs),
            _ => KeyLocation::Blocks(table.iter().map(|&b| b as i32).collect()),
        }
    }
}

/// One sequence's part of the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencePlan {
    /// Index of its first new token in the packed tokens.
    pub token_offset: usize,
    /// New tokens this step.
    pub chunk_len: usize,
    /// Tokens it holds after this step (`cached + chunk_len`): the keys it attends over.
    pub kv_len: usize,
    pub keys: KeyLocation,
}

/// Every index a forward step needs, derived once from the chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    /// `[N]` the new tokens, sequence after sequence.
    pub token_ids: Vec<u32>,
    /// `[N]` each new token's position in its sequence (its RoPE offset).
    pub positions: Vec<i32>,
    /// `[N]` the pool slot (`block * block_size + offset`) each new token's K/V goes to.
    pub slots: Vec<i32>,
    /// Per sequence, in input order.
    pub sequences: Vec<SequencePlan>,
}

impl BatchPlan {
    /// Plans a step over a pool of `num_blocks` blocks of `block_size` tokens, for a model
    /// with `context` positions and `vocab` token ids.
    pub fn new(
        chunks: &[SequenceChunk<'_>],
        block_size: usize,
        num_blocks: usize,
        context: usize,
        vocab: usize,
    ) -> Result<Self, BatchError> {
        if chunks.is_empty() {
            return Err(BatchError::Empty);
        }
        if block_size == 0 {
            return Err(BatchError::ZeroBlockSize);
        }
        let total: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let mut token_ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut slots = Vec::with_capacity(total);
        let mut sequences = Vec::with_capacity(chunks.len());
        let mut written = HashSet::with_capacity(total);
        // Which sequence writes into each block this step.
        let mut writers: HashMap<u32, usize> = HashMap::new();

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
            let table = &chunk.block_table[..needed];
            if let Some(&block) = table.iter().find(|&&b| b as usize >= num_blocks) {
                return Err(BatchError::BlockOutOfRange {
                    seq,
                    block,
                    num_blocks,
                });
            }
            if let Some(&token) = chunk.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(BatchError::TokenOutOfRange { seq, token, vocab });
            }
            let token_offset = token_ids.len();
            for (i, &token) in chunk.tokens.iter().enumerate() {
                let position = chunk.cached + i;
                writers.insert(table[position / block_size], seq);
                let block = table[position / block_size] as usize;
                let slot = block * block_size + position % block_size;
                if !written.insert(slot) {
                    return Err(BatchError::SharedWriteSlot { seq, slot });
                }
                token_ids.push(token);
                positions.push(position as i32);
                slots.push(slot as i32);
            }
            sequences.push(SequencePlan {
                token_offset,
                chunk_len: chunk.tokens.len(),
                kv_len: len,
                keys: KeyLocation::of(table, len, block_size),
            });
        }

        // A block one sequence writes must not be read by another in the same step: the
        // write lands before the read.
        for (reader, chunk) in chunks.iter().enumerate() {
            let needed = (chunk.cached + chunk.tokens.len()).div_ceil(block_size);
            for &block in &chunk.block_table[..needed] {
                if let Some(&seq) = writers.get(&block).filter(|&&w| w != reader) {
                    return Err(BatchError::SharedWriteBlock { seq, block, reader });
                }
            }
        }

        Ok(BatchPlan {
            token_ids,
            positions,
            slots,
            sequences,
        })
    }

    /// Number of sequences (`B`).
    pub fn batch(&self) -> usize {
        self.sequences.len()
    }

    /// `[B]` index into the packed tokens of each sequence's last new token: the rows the
    /// next-token logits come from.
    pub fn last_tokens(&self) -> Vec<i32> {
        self.sequences
            .iter()
            .map(|s| (s.token_offset + s.chunk_len - 1) as i32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_prefill_and_decode_step() {
        // Sequence 0 decodes its 6th token (5 cached) from scattered blocks; sequence 1
        // prefills 3 tokens into one block; sequence 2 decodes from a consecutive run.
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
            SequenceChunk {
                tokens: &[8],
                cached: 4,
                block_table: &[5, 6, 7],
            },
        ];
        let plan = BatchPlan::new(&chunks, 4, 16, 100, 10).unwrap();
        assert_eq!(plan.token_ids, vec![7, 1, 2, 3, 8]);
        assert_eq!(plan.positions, vec![5, 0, 1, 2, 4]);
        // Position 5 lives in the second block (2) at offset 1; position 4 of sequence 2
        // opens its second block (6).
        assert_eq!(plan.slots, vec![2 * 4 + 1, 36, 37, 38, 24]);
        assert_eq!(plan.batch(), 3);
        assert_eq!(plan.last_tokens(), vec![0, 3, 4]);
        assert_eq!(
            plan.sequences,
            vec![
                SequencePlan {
                    token_offset: 0,
                    chunk_len: 1,
                    kv_len: 6,
                    // Two runs: all of block 4, then the first 2 slots of block 2.
                    keys: KeyLocation::Runs(vec![(16, 4), (8, 2)]),
                },
                SequencePlan {
                    token_offset: 1,
                    chunk_len: 3,
                    kv_len: 3,
                    keys: KeyLocation::Run { first_slot: 36 },
                },
                // Only the blocks the 5 tokens need (5, 6) count, not the spare 7.
                SequencePlan {
                    token_offset: 4,
                    chunk_len: 1,
                    kv_len: 5,
                    keys: KeyLocation::Run { first_slot: 20 },
                },
            ]
        );
    }

    #[test]
    fn many_runs_are_gathered_block_by_block() {
        // Every other block: as many runs as blocks.
        let table: Vec<u32> = (0..=MAX_RUNS as u32).map(|b| 2 * b).collect();
        let len = 4 * table.len() - 1;
        let tokens = [5];
        let chunk = SequenceChunk {
            tokens: &tokens,
            cached: len - 1,
            block_table: &table,
        };
        let plan = BatchPlan::new(&[chunk], 4, 64, 1000, 10).unwrap();
        let gathered: Vec<i32> = table.iter().map(|&b| b as i32).collect();
        assert_eq!(plan.sequences[0].keys, KeyLocation::Blocks(gathered));
        // One run fewer is read run by run, the last run cut at the sequence's length.
        let chunk = SequenceChunk {
            block_table: &table[..MAX_RUNS],
            cached: 4 * MAX_RUNS - 2,
            ..chunk
        };
        let plan = BatchPlan::new(&[chunk], 4, 64, 1000, 10).unwrap();
        let KeyLocation::Runs(runs) = &plan.sequences[0].keys else {
            panic!("expected runs, got {:?}", plan.sequences[0].keys);
        };
        assert_eq!(runs.len(), MAX_RUNS);
        assert_eq!(runs[0], (0, 4));
        assert_eq!(runs[MAX_RUNS - 1], (8 * (MAX_RUNS - 1), 3));
    }

    #[test]
    fn refuses_inconsistent_batches() {
        let plan = |chunks: &[SequenceChunk<'_>]| BatchPlan::new(chunks, 4, 8, 16, 100);
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
        // Sequence 1 appends into block 3, which sequence 0 (sharing the prefix) reads.
        let reader = SequenceChunk {
            tokens: &[1],
            cached: 4,
            block_table: &[3, 5],
        };
        let writer = SequenceChunk {
            tokens: &[2],
            cached: 3,
            block_table: &[3],
        };
        assert!(matches!(
            plan(&[reader, writer]).unwrap_err(),
            BatchError::SharedWriteBlock {
                seq: 1,
                block: 3,
                reader: 0
            }
        ));
        let unknown_token = SequenceChunk {
            tokens: &[100],
            cached: 0,
            block_table: &[0],
        };
        assert!(matches!(
            plan(&[unknown_token]).unwrap_err(),
            BatchError::TokenOutOfRange { token: 100, .. }
        ));
        assert_eq!(
            BatchPlan::new(&[unknown_token], 0, 8, 16, 1000).unwrap_err(),
            BatchError::ZeroBlockSize
        );
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
