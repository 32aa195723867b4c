//! The scheduling policy: which sequences run in the next forward step, with which tokens,
//! over which blocks. Pure Rust (no MLX, no channels), so every decision is unit-testable;
//! the engine thread drives it.
//!
//! Policy, per step:
//! 1. **Decode first.** Every running sequence that has finished its prompt decodes one token.
//!    One crossing into a new block gets that block now; when none is available the newest
//!    running sequence is **preempted** (its blocks released, it goes back to the front of
//!    the queue and is recomputed from its prompt plus what it generated), until the older
//!    ones fit. Preemption never touches another sequence's blocks.
//! 2. **Then prefill**, oldest first, in chunks of at most `prefill_chunk` tokens, while the
//!    step has room (`max_batch` sequences, `max_step_tokens` tokens): long prompts are
//!    interleaved with decodes so running streams keep flowing.
//! 3. **Then admit** waiting sequences, oldest first, while the pool has blocks for the
//!    prompt plus a small growth watermark (not prompt + max_tokens), except in a step that
//!    had to preempt. Admission reuses cached
//!    blocks holding the same prompt prefix (refcounted) and reports them as cached tokens.
//!
//! A sequence whose prompt can never fit (longer than the context, or more blocks than the
//! whole pool) is refused when it is submitted; a full queue refuses at once. A sequence
//! that outgrows the whole pool is reported in [`Step::out_of_blocks`]; stopping at
//! `max_tokens` or the context length is the engine's job.

use std::collections::{HashMap, HashSet, VecDeque};

use super::block_pool::{BlockHash, BlockId, BlockPool};

/// Identifies a sequence to the scheduler (the engine's request id).
pub type SeqId = u64;

/// Limits of the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    /// Longest prompt + completion, in tokens.
    pub context_length: usize,
    /// Sequences per step.
    pub max_batch: usize,
    /// Tokens per step (decodes count one each).
    pub max_step_tokens: usize,
    /// Prompt tokens one sequence may prefill per step.
    pub prefill_chunk: usize,
    /// Sequences allowed to wait for admission; 0 = refuse whatever cannot start at once.
    pub max_queue: usize,
    /// Free blocks kept beyond a new prompt's own at admission, so running sequences can
    /// grow without immediate preemption.
    pub watermark_blocks: usize,
}

/// Why a sequence is refused at submission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the prompt has {tokens} tokens; the context holds {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("the prompt needs {needed} KV blocks; the whole pool has {total}")]
    PromptLargerThanPool { needed: usize, total: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("{waiting} requests are already waiting for KV blocks")]
    QueueFull { waiting: usize },
}

/// One sequence's part of the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledChunk {
    pub id: SeqId,
    /// Tokens to run: a prompt chunk, or the last generated token.
    pub tokens: Vec<u32>,
    /// Tokens already in the KV cache.
    pub cached: usize,
    pub block_table: Vec<BlockId>,
    /// Whether the step yields this sequence's next token (its prompt is complete).
    pub samples: bool,
}

/// The next step, and what the scheduler did to make room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    pub chunks: Vec<ScheduledChunk>,
    /// Sequences sent back to the queue (their KV dropped) to free blocks.
    pub preempted: Vec<SeqId>,
    /// Sequences admitted this step, with how many prompt tokens came from cached blocks.
    pub admitted: Vec<(SeqId, usize)>,
    /// Sequences that need another block while running alone in a pool with none left:
    /// they cannot continue and must be finished by the engine.
    pub out_of_blocks: Vec<SeqId>,
}

#[derive(Debug, Clone)]
struct Sequence {
    /// Prompt, then every generated token (the recompute input after a preemption).
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Tokens whose KV is in the cache.
    cached: usize,
    blocks: Vec<BlockId>,
    /// Full blocks already registered in the prefix cache.
    registered: usize,
}

impl Sequence {
    fn prefilling(&self) -> bool {
        self.cached + 1 < self.tokens.len()
    }
}

/// Waiting and running sequences over a [`BlockPool`].
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: BlockPool,
    sequences: HashMap<SeqId, Sequence>,
    /// Submitted, not admitted; oldest first (preempted ones go back to the front).
    waiting: VecDeque<SeqId>,
    /// Admitted, in admission order (the last is the newest, preempted first).
    running: Vec<SeqId>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            pool: BlockPool::new(config.num_blocks),
            config,
            sequences: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Waiting sequences, oldest first.
    pub fn waiting_ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.waiting.iter().copied()
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_size)
    }

    /// Queues a new sequence, or refuses it: a prompt that can never fit, or a full queue.
    /// With `max_queue` 0 a sequence is refused unless it can be admitted right away.
    pub fn submit(&mut self, id: SeqId, prompt: Vec<u32>) -> Result<(), AdmitError> {
        if prompt.is_empty() {
            return Err(AdmitError::EmptyPrompt);
        }
        // The prompt plus at least one generated token must fit the context.
        if prompt.len() >= self.config.context_length {
            return Err(AdmitError::PromptTooLong {
                tokens: prompt.len(),
                limit: self.config.context_length.saturating_sub(1),
            });
        }
        let needed = self.blocks_for(prompt.len() + 1);
        if needed > self.config.num_blocks {
            return Err(AdmitError::PromptLargerThanPool {
                needed,
                total: self.config.num_blocks,
            });
        }
        let can_start_now = self.fits_behind_waiting(&prompt);
        if !can_start_now && self.waiting.len() >= self.config.max_queue {
            return Err(AdmitError::QueueFull {
                waiting: self.waiting.len(),
            });
        }
        self.sequences.insert(
            id,
            Sequence {
                prompt_len: prompt.len(),
                tokens: prompt,
                cached: 0,
                blocks: Vec::new(),
                registered: 0,
            },
        );
        self.waiting.push_back(id);
        Ok(())
    }

    /// Whether a new prompt will be admitted at the next step: the pool can take it after
    /// the sequences already waiting (admitted first, in order) took their blocks. Counts
    /// the waiting ones without prefix reuse, so it errs towards refusing.
    fn fits_behind_waiting(&self, tokens: &[u32]) -> bool {
        if self.waiting.is_empty() {
            return self.fits(tokens);
        }
        let ahead: usize = self
            .waiting
            .iter()
            .map(|id| self.blocks_for(self.sequences[id].tokens.len()))
            .sum();
        let reusable = self.reusable_prefix(tokens).len();
        let needed = self.blocks_for(tokens.len()) - reusable;
        ahead + needed + self.config.watermark_blocks.min(self.config.num_blocks)
            <= self.pool.available()
    }

    /// Whether a prompt can be admitted now (its uncached blocks plus the watermark).
    fn fits(&self, tokens: &[u32]) -> bool {
        let reusable = self.reusable_prefix(tokens).len();
        let needed = self.blocks_for(tokens.len()) - reusable;
        needed + self.config.watermark_blocks.min(self.config.num_blocks) <= self.pool.available()
            || (self.running.is_empty() && needed <= self.pool.available())
    }

    /// Cached blocks holding a prefix of `tokens`; at least one token is always left to
    /// compute (its logits are needed).
    fn reusable_prefix(&self, tokens: &[u32]) -> Vec<BlockId> {
        let full = (tokens.len() - 1) / self.config.block_size;
        let hashes = BlockHash::chain_all(
            &tokens[..full * self.config.block_size],
            self.config.block_size,
        );
        self.pool.lookup_prefix(&hashes)
    }

    /// Plans the next step (see the module docs for the policy). Sequences in `paused`
    /// (their client is not keeping up) keep their blocks but run no tokens this step.
    pub fn schedule(&mut self, paused: &HashSet<SeqId>) -> Step {
        let mut step = Step::default();
        let mut budget = self.config.max_step_tokens.max(1);

        // 1. Decodes, making room by preempting the newest.
        let mut index = 0;
        while index < self.running.len() {
            let id = self.running[index];
            let seq = &self.sequences[&id];
            if seq.prefilling() || paused.contains(&id) {
                index += 1;
                continue;
            }
            let position = seq.cached;
            if position / self.config.block_size >= seq.blocks.len() && !self.grow(id, &mut step) {
                if self.running.len() == 1 {
                    // Alone and still no block: the pool cannot hold this sequence any
                    // longer. The engine ends it (finish reason `length`).
                    step.out_of_blocks.push(id);
                    index += 1;
                } else {
                    // Older sequences hold the blocks: wait for them.
                    self.preempt(id, &mut step);
                }
                continue;
            }
            index += 1;
        }
        for &id in &self.running {
            if step.chunks.len() >= self.config.max_batch || budget == 0 {
                break;
            }
            let seq = &self.sequences[&id];
            if seq.prefilling() || paused.contains(&id) || step.out_of_blocks.contains(&id) {
                continue;
            }
            step.chunks.push(ScheduledChunk {
                id,
                tokens: vec![seq.tokens[seq.cached]],
                cached: seq.cached,
                block_table: seq.blocks.clone(),
                samples: true,
            });
            budget -= 1;
        }

        // 3 before 2: admit first, so a new sequence's first chunk runs this step. Not in a
        // step that had to preempt: the freed blocks are for the older sequences' growth.
        while let Some(&id) = self.waiting.front() {
            if !step.preempted.is_empty()
                || self.running.len() >= self.config.max_batch
                || !self.fits(&self.sequences[&id].tokens)
            {
                break;
            }
            self.waiting.pop_front();
            let cached = self.admit(id);
            step.admitted.push((id, cached));
        }

        // 2. Prefill chunks, oldest first.
        for &id in &self.running {
            if step.chunks.len() >= self.config.max_batch || budget == 0 {
                break;
            }
            let seq = &self.sequences[&id];
            if !seq.prefilling() || paused.contains(&id) {
                continue;
            }
            let remaining = seq.tokens.len() - seq.cached;
            let take = remaining.min(self.config.prefill_chunk.max(1)).min(budget);
            let end = seq.cached + take;
            step.chunks.push(ScheduledChunk {
                id,
                tokens: seq.tokens[seq.cached..end].to_vec(),
                cached: seq.cached,
                block_table: seq.blocks.clone(),
                samples: end == seq.tokens.len(),
            });
            budget -= take;
        }
        step
    }

    /// Gives a decoding sequence its next block, preempting newer sequences if needed.
    /// False when even that does not free a block (the sequence itself is the newest).
    fn grow(&mut self, id: SeqId, step: &mut Step) -> bool {
        loop {
            let after = self.sequences[&id].blocks.last().copied();
            if let Ok(blocks) = self.pool.allocate(1, after) {
                if let Some(seq) = self.sequences.get_mut(&id) {
                    seq.blocks.extend(blocks);
                }
                return true;
            }
            match self.running.last() {
                Some(&newest) if newest != id => self.preempt(newest, step),
                _ => return false,
            }
        }
    }

    fn preempt(&mut self, id: SeqId, step: &mut Step) {
        if let Some(seq) = self.sequences.get_mut(&id) {
            seq.blocks.iter().for_each(|&b| self.pool.release(b));
            seq.blocks.clear();
            seq.cached = 0;
            seq.registered = 0;
        }
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        step.preempted.push(id);
    }

    /// Moves `id` into the running set, sharing cached prefix blocks and allocating the
    /// rest of its prompt. Returns the prompt tokens found in the cache.
    fn admit(&mut self, id: SeqId) -> usize {
        let tokens = &self.sequences[&id].tokens;
        let total_blocks = self.blocks_for(tokens.len());
        let mut blocks = self.reusable_prefix(tokens);
        let shared = blocks.len();
        blocks.iter().for_each(|&b| self.pool.retain(b));
        // `fits` checked that the pool has these blocks.
        if let Ok(more) = self
            .pool
            .allocate(total_blocks - shared, blocks.last().copied())
        {
            blocks.extend(more);
        }
        let cached = shared * self.config.block_size;
        if let Some(seq) = self.sequences.get_mut(&id) {
            seq.registered = shared;
            seq.cached = cached;
            seq.blocks = blocks;
        }
        self.running.push(id);
        cached
    }

    /// Records a step's outcome for one sequence: its chunk's KV is now cached, and
    /// `sampled` is the token it produced (if its chunk completed the prompt). Full blocks
    /// are registered in the prefix cache.
    pub fn complete(&mut self, id: SeqId, computed: usize, sampled: Option<u32>) {
        let block_size = self.config.block_size;
        let Some(seq) = self.sequences.get_mut(&id) else {
            return;
        };
        seq.cached = (seq.cached + computed).min(seq.tokens.len());
        if let Some(token) = sampled {
            seq.tokens.push(token);
        }
        let full = seq.cached / block_size;
        if full > seq.registered {
            let hashes = BlockHash::chain_all(&seq.tokens[..full * block_size], block_size);
            for (index, hash) in hashes.iter().enumerate().skip(seq.registered) {
                self.pool.register(seq.blocks[index], *hash);
            }
            seq.registered = full;
        }
    }

    /// Tokens generated so far by `id` (after its prompt).
    pub fn generated(&self, id: SeqId) -> &[u32] {
        self.sequences
            .get(&id)
            .map_or(&[][..], |s| &s.tokens[s.prompt_len..])
    }

    /// Ends a sequence (finished, cancelled or aborted) and releases its blocks; cached
    /// full blocks stay available for prefix reuse.
    pub fn finish(&mut self, id: SeqId) {
        if let Some(seq) = self.sequences.remove(&id) {
            seq.blocks.iter().for_each(|&b| self.pool.release(b));
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SchedulerConfig {
        SchedulerConfig {
            block_size: 4,
            num_blocks: 16,
            context_length: 64,
            max_batch: 8,
            max_step_tokens: 64,
            prefill_chunk: 6,
            max_queue: 4,
            watermark_blocks: 1,
        }
    }

    /// Runs a step as the engine would: every chunk computes, sampling ones produce
    /// `token`.
    fn run(scheduler: &mut Scheduler, step: &Step, token: u32) {
        for chunk in &step.chunks {
            let sampled = chunk.samples.then_some(token);
            scheduler.complete(chunk.id, chunk.tokens.len(), sampled);
        }
        scheduler.pool().check().unwrap();
    }

    #[test]
    fn long_prompts_prefill_in_chunks_while_others_decode() {
        let mut s = Scheduler::new(config());
        s.submit(1, vec![1, 2, 3]).unwrap();
        let step = s.schedule(&HashSet::new());
        assert_eq!(step.admitted, vec![(1, 0)]);
        assert_eq!(step.chunks.len(), 1);
        assert!(step.chunks[0].samples && step.chunks[0].tokens == vec![1, 2, 3]);
        run(&mut s, &step, 10);

        s.submit(2, (0..14).collect()).unwrap();
        let step = s.schedule(&HashSet::new());
        // Sequence 1 decodes its token 10; sequence 2 starts with a 6-token chunk.
        assert_eq!(step.chunks[0].tokens, vec![10]);
        assert_eq!((step.chunks[1].id, step.chunks[1].tokens.len()), (2, 6));
        assert!(!step.chunks[1].samples);
        run(&mut s, &step, 11);
        let step = s.schedule(&HashSet::new());
        assert_eq!(step.chunks[0].tokens, vec![11]);
        assert_eq!((step.chunks[1].cached, step.chunks[1].tokens.len()), (6, 6));
        run(&mut s, &step, 12);
        let step = s.schedule(&HashSet::new());
        assert_eq!(step.chunks[1].tokens, vec![12, 13]);
        assert!(step.chunks[1].samples);
        run(&mut s, &step, 13);
        assert_eq!(s.generated(1), &[10, 11, 12, 13]);
        assert_eq!(s.generated(2), &[13]);
        s.finish(1);
        s.finish(2);
        assert_eq!(s.pool().in_use(), 0);
    }

    #[test]
    fn paused_sequences_keep_their_blocks_but_do_not_run() {
        let mut s = Scheduler::new(config());
        s.submit(1, vec![1, 2, 3]).unwrap();
        s.submit(2, vec![4, 5, 6]).unwrap();
        let step = s.schedule(&HashSet::new());
        run(&mut s, &step, 7);
        let in_use = s.pool().in_use();
        let step = s.schedule(&HashSet::from([1]));
        assert_eq!(
            step.chunks.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(s.pool().in_use(), in_use);
    }

    #[test]
    fn step_limits_are_respected() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch: 2,
            max_step_tokens: 5,
            ..config()
        });
        for id in 0..3 {
            s.submit(id, vec![1, 2, 3, 4]).unwrap();
        }
        let step = s.schedule(&HashSet::new());
        assert_eq!(step.admitted.len(), 2, "max_batch sequences admitted");
        let tokens: usize = step.chunks.iter().map(|c| c.tokens.len()).sum();
        assert!(tokens <= 5, "{tokens} tokens in one step");
        assert_eq!(s.waiting(), 1);
    }

    #[test]
    fn impossible_prompts_and_full_queues_are_refused() {
        let mut s = Scheduler::new(config());
        assert_eq!(s.submit(1, vec![]), Err(AdmitError::EmptyPrompt));
        assert!(matches!(
            s.submit(1, vec![0; 64]),
            Err(AdmitError::PromptTooLong { tokens: 64, .. })
        ));
        let mut small = Scheduler::new(SchedulerConfig {
            num_blocks: 2,
            ..config()
        });
        assert!(matches!(
            small.submit(1, vec![0; 9]),
            Err(AdmitError::PromptLargerThanPool {
                needed: 3,
                total: 2
            })
        ));
        // Fill the pool, then the queue.
        let mut full = Scheduler::new(SchedulerConfig {
            num_blocks: 4,
            max_queue: 1,
            ..config()
        });
        full.submit(1, vec![0; 12]).unwrap();
        full.schedule(&HashSet::new());
        full.submit(2, vec![0; 12]).unwrap();
        assert_eq!(
            full.submit(3, vec![0; 12]),
            Err(AdmitError::QueueFull { waiting: 1 })
        );
        // With no queue, what cannot start at once is refused.
        let mut no_queue = Scheduler::new(SchedulerConfig {
            num_blocks: 4,
            max_queue: 0,
            ..config()
        });
        no_queue.submit(1, vec![0; 12]).unwrap();
        no_queue.schedule(&HashSet::new());
        assert!(matches!(
            no_queue.submit(2, vec![0; 12]),
            Err(AdmitError::QueueFull { .. })
        ));
        // Requests arriving together are all taken while the pool has room for them.
        let mut together = Scheduler::new(SchedulerConfig {
            num_blocks: 16,
            max_queue: 0,
            watermark_blocks: 2,
            ..config()
        });
        together.submit(1, vec![1; 12]).unwrap();
        together.submit(2, vec![2; 12]).unwrap();
        together.submit(3, vec![3; 12]).unwrap();
        together.submit(4, vec![4; 12]).unwrap();
        // 4 x 3 blocks ahead, 3 more + 2 watermark > 16 free.
        assert!(matches!(
            together.submit(5, vec![5; 12]),
            Err(AdmitError::QueueFull { .. })
        ));
        let step = together.schedule(&HashSet::new());
        assert_eq!(step.admitted.len(), 4);
    }

    #[test]
    fn running_out_of_blocks_preempts_the_newest_and_recomputes_it() {
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks: 4,
            watermark_blocks: 0,
            ..config()
        });
        s.submit(1, vec![1, 2, 3, 4]).unwrap();
        s.submit(2, vec![5, 6, 7, 8]).unwrap();
        let step = s.schedule(&HashSet::new());
        assert_eq!(step.admitted.len(), 2);
        run(&mut s, &step, 20);
        // Both need a second block for position 4: 2 blocks left, fine.
        let step = s.schedule(&HashSet::new());
        assert!(step.preempted.is_empty());
        run(&mut s, &step, 21);
        // Decode until the pool (4 blocks) cannot hold both past 8 tokens each.
        let mut preempted = Vec::new();
        for t in 30..40 {
            let step = s.schedule(&HashSet::new());
            preempted.extend(step.preempted.iter().copied());
            run(&mut s, &step, t);
        }
        assert_eq!(preempted.first(), Some(&2), "the newest goes back first");
        assert!(s.generated(1).len() > s.generated(2).len());
        // Once 1 finishes, 2 is recomputed (prompt + what it had generated) and resumes.
        let before = s.generated(2).to_vec();
        s.finish(1);
        let step = s.schedule(&HashSet::new());
        let chunk = step.chunks.iter().find(|c| c.id == 2).unwrap();
        assert_eq!(chunk.cached, 0);
        assert_eq!(&chunk.tokens[4..], &before[..chunk.tokens.len() - 4]);
        s.finish(2);
        assert_eq!(s.pool().in_use(), 0);
        s.pool().check().unwrap();
    }

    /// Many sequences of random lengths through a small pool: whatever the interleaving of
    /// preemptions, every sequence ends with exactly its requested tokens, the pool stays
    /// consistent, and everything is returned at the end.
    #[test]
    fn random_workloads_complete_without_leaks() {
        for seed in 0..20u64 {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = |bound: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % bound
            };
            let mut s = Scheduler::new(SchedulerConfig {
                num_blocks: 12,
                max_queue: 64,
                ..config()
            });
            let mut wanted = HashMap::new();
            for id in 0..12u64 {
                let prompt: Vec<u32> = (0..1 + next(16) as u32).collect();
                s.submit(id, prompt).unwrap();
                wanted.insert(id, 1 + next(12) as usize);
            }
            let mut steps = 0;
            while !wanted.is_empty() {
                steps += 1;
                assert!(steps < 2000, "seed {seed}: no progress");
                let step = s.schedule(&HashSet::new());
                run(&mut s, &step, steps as u32);
                let done: Vec<u64> = wanted
                    .iter()
                    .filter(|(id, n)| s.generated(**id).len() >= **n)
                    .map(|(id, _)| *id)
                    .collect();
                for id in done {
                    assert_eq!(s.generated(id).len(), wanted[&id], "seed {seed}, seq {id}");
                    s.finish(id);
                    wanted.remove(&id);
                }
            }
            assert_eq!((s.running(), s.waiting(), s.pool().in_use()), (0, 0, 0));
            s.pool().check().unwrap();
        }
    }

    #[test]
    fn a_sequence_outgrowing_the_whole_pool_is_reported_not_spun() {
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks: 2,
            watermark_blocks: 0,
            ..config()
        });
        s.submit(1, vec![1, 2, 3, 4, 5]).unwrap();
        let mut step = s.schedule(&HashSet::new());
        for t in 0..10 {
            run(&mut s, &step, t);
            step = s.schedule(&HashSet::new());
            if !step.out_of_blocks.is_empty() {
                break;
            }
        }
        assert_eq!(step.out_of_blocks, vec![1]);
        assert!(step.chunks.is_empty());
        // 8 slots: 5 prompt tokens + 3 generated fill them; the 4th needs a third block.
        assert_eq!(s.generated(1).len(), 4);
        s.finish(1);
        assert_eq!(s.pool().in_use(), 0);
    }

    #[test]
    fn identical_prompt_prefixes_reuse_cached_blocks() {
        let mut s = Scheduler::new(config());
        let prompt: Vec<u32> = (0..10).collect();
        s.submit(1, prompt.clone()).unwrap();
        let step = s.schedule(&HashSet::new());
        run(&mut s, &step, 99);
        let step = s.schedule(&HashSet::new());
        run(&mut s, &step, 98);
        s.finish(1);
        assert_eq!(s.pool().in_use(), 0);
        assert!(s.pool().cached() >= 2);
        // Same prompt: its two full blocks (8 tokens) come from the cache.
        s.submit(2, prompt.clone()).unwrap();
        let step = s.schedule(&HashSet::new());
        assert_eq!(step.admitted, vec![(2, 8)]);
        assert_eq!(step.chunks[0].tokens, vec![8, 9]);
        assert_eq!(step.chunks[0].cached, 8);
        // A prompt of exactly two blocks still computes its last token.
        s.submit(3, (0..8).collect()).unwrap();
        let step = s.schedule(&HashSet::new());
        let admitted = step.admitted.iter().find(|a| a.0 == 3).unwrap();
        assert_eq!(admitted.1, 4);
        s.finish(2);
        s.finish(3);
        assert_eq!(s.pool().in_use(), 0);
    }
}
