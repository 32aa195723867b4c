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

/// Decoding sequences (one new token each) attended together in one call per layer: their
/// keys are copied, whole blocks at a time, into one padded batch, and a mask hides each
/// sequence's padding. Their tokens are consecutive packed rows.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeBatch {
    /// Packed row of the first sequence's token; the others follow.
    pub first_row: usize,
    /// Sequences in the batch (`B`).
    pub batch: usize,
    /// Blocks per sequence once padded (`M`): the longest table in the batch.
    pub blocks_per_sequence: usize,
    /// `[B * M]` each sequence's blocks, its last block repeated as padding.
    pub blocks: Vec<i32>,
    /// `[B * M * block_size]` whether each key position holds one of the sequence's tokens.
    pub valid: Vec<bool>,
}

impl DecodeBatch {
    /// The batch of sequences with these `(block table, tokens held)`, each table covering
    /// exactly its tokens, whose tokens are packed from `first_row` on.
    fn new(first_row: usize, sequences: &[(&[u32], usize)], block_size: usize) -> DecodeBatch {
        let batch = sequences.len();
        let blocks_per_sequence = sequences.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
        let padded_len = blocks_per_sequence * block_size;
        let mut blocks = Vec::with_capacity(batch * blocks_per_sequence);
        let mut valid = Vec::with_capacity(batch * padded_len);
        for &(table, len) in sequences {
            let last = *table.last().expect("a decoding sequence holds a block");
            blocks.extend(table.iter().map(|&b| b as i32));
            blocks.resize(
                blocks.len() + blocks_per_sequence - table.len(),
                last as i32,
            );
            valid.extend((0..padded_len).map(|position| position < len));
        }
        DecodeBatch {
            first_row,
            batch,
            blocks_per_sequence,
            blocks,
            valid,
        }
    }
}

/// One attention call of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Attention {
    /// Decoders of similar lengths, together.
    Batched(DecodeBatch),
    /// One sequence (index into [`BatchPlan::sequences`]) over exactly its keys, in the
    /// shapes mlx-lm uses for a lone sequence: causal within a prefill chunk.
    Alone(usize),
}

/// A decode batch may hold at most this many key positions per real one: padding to the
/// longest sequence costs attention work (the softmax, the matmuls), so decoders of very
/// different lengths go into different batches.
pub const MAX_PADDING_FACTOR: usize = 2;

/// Decoders holding more key positions than this (whole blocks) are attended alone. The
/// batch's copy of the keys grows with the context while the calls it saves do not: on the
/// CPU build, batching 8 decoders saved 17 % of a step at 192 tokens of context, broke even
/// at 512 and cost 5 % at 1024 (`cargo bench --bench model_step -- batched_decode`).
pub const MAX_BATCHED_KEYS: usize = 512;

/// Groups decoders, given as `(sequence, blocks)` sorted by blocks, into runs whose padded
/// size (members x longest) stays within [`MAX_PADDING_FACTOR`] of their real size.
fn group_by_length(sorted: &[(usize, usize)]) -> Vec<&[(usize, usize)]> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut real = 0;
    for (i, &(_, blocks)) in sorted.iter().enumerate() {
        let members = i + 1 - start;
        if members > 1 && members * blocks > MAX_PADDING_FACTOR * (real + blocks) {
            groups.push(&sorted[start..i]);
            start = i;
            real = 0;
        }
        real += blocks;
    }
    if start < sorted.len() {
        groups.push(&sorted[start..]);
    }
    groups
}

/// Every index a forward step needs, derived once from the chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    /// `[N]` the new tokens, in the order of [`Self::attention`].
    pub token_ids: Vec<u32>,
    /// `[N]` each new token's position in its sequence (its RoPE offset).
    pub positions: Vec<i32>,
    /// `[N]` the pool slot (`block * block_size + offset`) each new token's K/V goes to.
    pub slots: Vec<i32>,
    /// Per sequence, in input order.
    pub sequences: Vec<SequencePlan>,
    /// The attention calls, in packing order: batches of decoders first, then every other
    /// sequence alone, in input order.
    pub attention: Vec<Attention>,
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
        // Each chunk's table cut to the blocks its tokens need, checked in input order.
        let mut tables = Vec::with_capacity(chunks.len());
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
            tables.push(table);
        }

        // Decoders of similar lengths are attended together (a group of one is attended
        // alone); packing follows the attention calls.
        let mut decoders: Vec<(usize, usize)> = (0..chunks.len())
            .filter(|&seq| {
                chunks[seq].tokens.len() == 1 && tables[seq].len() * block_size <= MAX_BATCHED_KEYS
            })
            .map(|seq| (seq, tables[seq].len()))
            .collect();
        decoders.sort_by_key(|&(seq, blocks)| (blocks, seq));
        let groups: Vec<Vec<usize>> = group_by_length(&decoders)
            .into_iter()
            .filter(|group| group.len() > 1)
            .map(|group| group.iter().map(|&(seq, _)| seq).collect())
            .collect();
        let mut order: Vec<usize> = groups.iter().flatten().copied().collect();
        let alone: Vec<usize> = (0..chunks.len()).filter(|s| !order.contains(s)).collect();
        order.extend(&alone);

        let mut token_ids = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut slots = Vec::with_capacity(total);
        let mut written = HashSet::with_capacity(total);
        // Which sequence writes into each block this step.
        let mut writers: HashMap<u32, usize> = HashMap::new();
        let mut offsets = vec![0; chunks.len()];
        for &seq in &order {
            let (chunk, table) = (&chunks[seq], tables[seq]);
            offsets[seq] = token_ids.len();
            for (i, &token) in chunk.tokens.iter().enumerate() {
                let position = chunk.cached + i;
                let block = table[position / block_size];
                writers.insert(block, seq);
                let slot = block as usize * block_size + position % block_size;
                if !written.insert(slot) {
                    return Err(BatchError::SharedWriteSlot { seq, slot });
                }
                token_ids.push(token);
                positions.push(position as i32);
                slots.push(slot as i32);
            }
        }

        // A block one sequence writes must not be read by another in the same step: the
        // write lands before the read.
        for (reader, table) in tables.iter().enumerate() {
            for &block in table.iter() {
                if let Some(&seq) = writers.get(&block).filter(|&&w| w != reader) {
                    return Err(BatchError::SharedWriteBlock { seq, block, reader });
                }
            }
        }

        let sequences = chunks
            .iter()
            .zip(&tables)
            .zip(&offsets)
            .map(|((chunk, table), &token_offset)| {
                let kv_len = chunk.cached + chunk.tokens.len();
                SequencePlan {
                    token_offset,
                    chunk_len: chunk.tokens.len(),
                    kv_len,
                    keys: KeyLocation::of(table, kv_len, block_size),
                }
            })
            .collect();
        let mut attention: Vec<Attention> = groups
            .iter()
            .map(|group| {
                let members: Vec<(&[u32], usize)> = group
                    .iter()
                    .map(|&seq| (tables[seq], chunks[seq].cached + 1))
                    .collect();
                Attention::Batched(DecodeBatch::new(offsets[group[0]], &members, block_size))
            })
            .collect();
        attention.extend(alone.into_iter().map(Attention::Alone));

        Ok(BatchPlan {
            token_ids,
            positions,
            slots,
            sequences,
            attention,
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
        // The two decoders are packed first, as one batch; then the prefill chunk.
        assert_eq!(plan.token_ids, vec![7, 8, 1, 2, 3]);
        assert_eq!(plan.positions, vec![5, 4, 0, 1, 2]);
        // Position 5 lives in the second block (2) at offset 1; position 4 of sequence 2
        // opens its second block (6).
        assert_eq!(plan.slots, vec![2 * 4 + 1, 24, 36, 37, 38]);
        assert_eq!(plan.batch(), 3);
        // Logit rows stay in input order.
        assert_eq!(plan.last_tokens(), vec![0, 4, 1]);
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
                    token_offset: 2,
                    chunk_len: 3,
                    kv_len: 3,
                    keys: KeyLocation::Run { first_slot: 36 },
                },
                // Only the blocks the 5 tokens need (5, 6) count, not the spare 7.
                SequencePlan {
                    token_offset: 1,
                    chunk_len: 1,
                    kv_len: 5,
                    keys: KeyLocation::Run { first_slot: 20 },
                },
            ]
        );
        let batch = DecodeBatch {
            first_row: 0,
            batch: 2,
            blocks_per_sequence: 2,
            blocks: vec![4, 2, 5, 6],
            // 6 and 5 of the 8 padded key positions are real.
            valid: [[true; 6].as_slice(), &[false; 2], &[true; 5], &[false; 3]].concat(),
        };
        assert_eq!(
            plan.attention,
            vec![Attention::Batched(batch), Attention::Alone(1)]
        );
    }

    #[test]
    fn decoders_of_very_different_lengths_are_batched_apart() {
        // Decoders holding 1, 2, 2, 9 and 10 blocks (of 4 tokens), and a prefill chunk.
        let tables: Vec<Vec<u32>> = [1, 2, 2, 9, 10]
            .iter()
            .scan(0, |next, &blocks| {
                let table = (*next..*next + blocks).collect();
                *next += blocks;
                Some(table)
            })
            .collect();
        let mut chunks: Vec<SequenceChunk<'_>> = tables
            .iter()
            .rev()
            .map(|table| SequenceChunk {
                tokens: &[3],
                cached: 4 * table.len() - 1,
                block_table: table,
            })
            .collect();
        chunks.insert(
            2,
            SequenceChunk {
                tokens: &[1, 2],
                cached: 0,
                block_table: &[40],
            },
        );
        // Input order: 10 blocks, 9, prefill, 2, 2, 1.
        let plan = BatchPlan::new(&chunks, 4, 64, 100, 10).unwrap();
        let batches: Vec<(usize, Vec<i32>)> = plan
            .attention
            .iter()
            .filter_map(|call| match call {
                Attention::Batched(b) => Some((b.first_row, b.blocks.clone())),
                Attention::Alone(_) => None,
            })
            .collect();
        // Shortest first (ties in input order): 1, 2 and 2 blocks pad to 3 x 2 <= 2 x 5;
        // adding 9 would not.
        assert_eq!(
            batches,
            vec![
                (0, vec![0, 0, 3, 4, 1, 2]),
                (
                    3,
                    [
                        (5..14).chain([13]).collect::<Vec<i32>>(),
                        (14..24).collect()
                    ]
                    .concat()
                ),
            ]
        );
        assert_eq!(plan.attention.last(), Some(&Attention::Alone(2)));
        // Every sequence's last token, in input order, is the row its batch packed it at.
        assert_eq!(plan.last_tokens(), vec![4, 3, 6, 1, 2, 0]);
        for (seq, &row) in plan.last_tokens().iter().enumerate() {
            assert_eq!(
                plan.token_ids[row as usize],
                chunks[seq].tokens.last().copied().unwrap()
            );
        }
    }

    #[test]
    fn decoders_past_the_batched_context_are_attended_alone() {
        let long: Vec<u32> = (0..(MAX_BATCHED_KEYS / 16 + 1) as u32).collect();
        let short = [[100, 101], [102, 103]];
        let chunks: Vec<SequenceChunk<'_>> = [long.as_slice(), &short[0], &short[1]]
            .into_iter()
            .map(|table| SequenceChunk {
                tokens: &[5],
                cached: 16 * table.len() - 1,
                block_table: table,
            })
            .collect();
        let plan = BatchPlan::new(&chunks, 16, 200, 10_000, 10).unwrap();
        // The two short decoders together, the one past MAX_BATCHED_KEYS alone.
        assert!(matches!(
            plan.attention.as_slice(),
            [Attention::Batched(b), Attention::Alone(0)] if b.batch == 2
        ));
    }

    #[test]
    fn a_lone_decoder_is_attended_alone() {
        let chunks = [
            SequenceChunk {
                tokens: &[1, 2],
                cached: 0,
                block_table: &[0],
            },
            SequenceChunk {
                tokens: &[3],
                cached: 2,
                block_table: &[1],
            },
        ];
        let plan = BatchPlan::new(&chunks, 4, 8, 100, 10).unwrap();
        assert_eq!(
            plan.attention,
            vec![Attention::Alone(0), Attention::Alone(1)]
        );
        assert_eq!(plan.token_ids, vec![1, 2, 3]);
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
