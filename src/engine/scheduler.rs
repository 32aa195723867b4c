//! The scheduling policy: which sequences run in the next forward step, with which tokens,
//! over which blocks, and which requests may queue at all. Pure Rust (no MLX, no channels,
//! no clocks), so every decision is unit-testable; the engine drives it.
//!
//! Every sequence is in exactly one phase: **waiting** (queued, oldest first; preempted
//! ones go back to the front), **running** (holds blocks and a batch slot, in admission
//! order) or **parked** (its client stopped reading and it gave up its slot and blocks;
//! it goes back to the front of the queue when the client catches up). A running sequence
//! may be **paused** (its client is behind): it keeps its blocks but runs no tokens, and it
//! is the first to give up its slot and blocks when someone needs them.
//!
//! Policy, per step:
//! 1. **Decode first.** Every running, unpaused sequence past its prompt decodes one token.
//!    One crossing into a new block gets that block now; when none is available a paused
//!    sequence is parked, else the newest running one is **preempted** (its blocks
//!    released, back to the front of the queue, recomputed later from its prompt plus what
//!    it generated), until the older ones fit.
//! 2. **Then admit** waiting sequences, oldest first, except in a step that had to preempt.
//!    A sequence is admitted when a batch slot is free and the pool can take it: its
//!    uncached blocks *plus the cached (unreferenced) blocks of its prefix that it takes
//!    back into use* plus a small growth watermark (not prompt + max_tokens). Paused
//!    sequences are parked to free a slot or blocks. Admission shares the prefix and
//!    allocates the rest in one all-or-nothing pool operation.
//! 3. **Then prefill**, oldest first, in chunks of at most `prefill_chunk` tokens, while the
//!    step has room (`max_batch` sequences, `max_step_tokens` tokens).
//!
//! **The queue bound** (`max_queue`) counts generations. [`Scheduler::submit`] takes a
//! request's generations all or none: it predicts, against the current state, which
//! queued generations the next step admits; if more than `max_queue` would be left waiting
//! the request is refused at once. With `max_queue` 0 a request is taken only if it is
//! predicted to start in the next step, and a step refuses ([`Step::refused`]) any
//! never-started sequence it did not admit after all. A sequence that outgrows the whole
//! pool is reported in [`Step::out_of_blocks`]; stopping at `max_tokens` or the context
//! length is the engine's job.

use std::collections::{HashMap, VecDeque};

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
    /// Generations allowed to wait for admission; 0 = refuse whatever cannot start in the
    /// next step.
    pub max_queue: usize,
    /// Free blocks kept beyond a new prompt's own at admission, so running sequences can
    /// grow without immediate preemption.
    pub watermark_blocks: usize,
}

/// Why a request is refused at submission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {tokens} tokens; the context holds {limit}")]
    PromptTooLong { tokens: usize, limit: usize },
    #[error("the prompt needs {needed} KV blocks; the whole pool has {total}")]
    PromptLargerThanPool { needed: usize, total: usize },
    /// More generations in one request than the batch and the queue can ever hold.
    #[error(
        "the request has {requested} prompts; at most {limit} can run or wait at once \
         (--max-batch plus --max-queue)"
    )]
    TooManyGenerations { requested: usize, limit: usize },
    #[error(transparent)]
    Busy(#[from] Busy),
}

/// Why a request cannot be queued now (the API's 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// With this request, more than `limit` generations would wait.
    #[error("{waiting} generations are already waiting (the queue holds {limit})")]
    QueueFull { waiting: usize, limit: usize },
    /// No queue, and the KV pool cannot take the request in the next step.
    #[error("the KV cache is full")]
    PoolExhausted,
    /// No queue, and every batch slot is taken.
    #[error("every batch slot is taken")]
    BatchFull,
}

/// Where a sequence is in its life (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Waiting,
    Running,
    Parked,
}

/// One sequence's part of the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledChunk {
    pub id: SeqId,
    /// Tokens to run: a prompt chunk, or the last generated token.
    pub tokens: Vec<u32>,
    /// Tokens already in the KV cache.
    pub cached: usize,
    /// Covers `cached + tokens.len()` positions (checked by [`Scheduler::check`]).
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
    /// Paused sequences that gave up their slot and blocks; they wait for their client.
    pub parked: Vec<SeqId>,
    /// Sequences admitted this step, with how many prompt tokens came from cached blocks.
    pub admitted: Vec<(SeqId, usize)>,
    /// Never-started sequences this step did not admit although `max_queue` is 0: removed,
    /// to be answered with the reason.
    pub refused: Vec<(SeqId, Busy)>,
    /// Sequences that need another block while running alone in a pool with none left:
    /// they cannot continue and must be finished by the engine.
    pub out_of_blocks: Vec<SeqId>,
}

#[derive(Debug, Clone)]
struct Sequence {
    /// Prompt, then every generated token (the recompute input after a preemption).
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Chained hashes of the full blocks of `tokens` (prefix lookup and registration).
    hashes: Vec<BlockHash>,
    /// Tokens whose KV is in the cache.
    cached: usize,
    blocks: Vec<BlockId>,
    /// Full blocks already registered in the prefix cache.
    registered: usize,
    /// Its client is behind: it runs no tokens and yields its slot and blocks first.
    paused: bool,
    /// It has been admitted at least once (it has streamed, so it is never refused).
    started: bool,
}

impl Sequence {
    fn prefilling(&self) -> bool {
        self.cached + 1 < self.tokens.len()
    }

    /// Extends `hashes` over the full blocks of `tokens`.
    fn hash_full_blocks(&mut self, block_size: usize) {
        let full = self.tokens.len() / block_size;
        while self.hashes.len() < full {
            let start = self.hashes.len() * block_size;
            let block = &self.tokens[start..start + block_size];
            self.hashes
                .push(BlockHash::chain(self.hashes.last().copied(), block));
        }
    }

    /// Hashes of the blocks a prefix lookup may reuse: full blocks, leaving at least the
    /// last token to compute (its logits are needed).
    fn reusable_hashes(&self, block_size: usize) -> &[BlockHash] {
        let full = (self.tokens.len() - 1) / block_size;
        &self.hashes[..full.min(self.hashes.len())]
    }
}

/// What a prompt needs from the pool to be admitted now.
struct Need {
    /// Cached or in-use blocks holding its prefix, shared instead of computed.
    prefix: Vec<BlockId>,
    /// Blocks to allocate for the rest.
    fresh: usize,
}

/// Sequences in their phases over a [`BlockPool`].
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: BlockPool,
    sequences: HashMap<SeqId, Sequence>,
    /// Submitted, not running; oldest first (preempted ones go back to the front).
    waiting: VecDeque<SeqId>,
    /// Admitted, in admission order (the last is the newest, preempted first).
    running: Vec<SeqId>,
    /// Preempted while paused; back to the front of the queue once unpaused.
    parked: Vec<SeqId>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            pool: BlockPool::new(config.num_blocks),
            config,
            sequences: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            parked: Vec::new(),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Running sequences, paused ones included (they hold a slot until parked).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Running sequences whose client is behind.
    pub fn paused(&self) -> usize {
        self.running
            .iter()
            .filter(|id| self.sequences[id].paused)
            .count()
    }

    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// `id`'s phase, if the scheduler knows it.
    pub fn phase(&self, id: SeqId) -> Option<Phase> {
        if self.running.contains(&id) {
            Some(Phase::Running)
        } else if self.waiting.contains(&id) {
            Some(Phase::Waiting)
        } else if self.parked.contains(&id) {
            Some(Phase::Parked)
        } else {
            None
        }
    }

    /// Whether `id` has been admitted at least once.
    pub fn started(&self, id: SeqId) -> bool {
        self.sequences.get(&id).is_some_and(|s| s.started)
    }

    /// Every batch slot is taken by a sequence that is not paused, and generations wait
    /// for one: new work will queue (readiness reports it).
    pub fn batch_saturated(&self) -> bool {
        !self.waiting.is_empty() && self.running.len() - self.paused() >= self.config.max_batch
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_size)
    }

    /// Queues a request's prompts (one generation each, ids given) all or none. Refuses a
    /// prompt that can never fit, a request larger than the batch plus the queue, and —
    /// when more than `max_queue` generations would be left waiting after the next step's
    /// predicted admissions — a busy engine.
    pub fn submit(&mut self, prompts: Vec<(SeqId, Vec<u32>)>) -> Result<(), AdmitError> {
        let limit = self.config.max_batch + self.config.max_queue;
        if prompts.len() > limit {
            return Err(AdmitError::TooManyGenerations {
                requested: prompts.len(),
                limit,
            });
        }
        let mut new = Vec::with_capacity(prompts.len());
        for (id, prompt) in prompts {
            new.push((id, self.new_sequence(prompt)?));
        }
        let needs: Vec<Need> = new.iter().map(|(_, seq)| self.need(seq)).collect();
        self.queue_verdict(&needs)?;
        for (id, seq) in new {
            self.sequences.insert(id, seq);
            self.waiting.push_back(id);
        }
        Ok(())
    }

    fn new_sequence(&self, prompt: Vec<u32>) -> Result<Sequence, AdmitError> {
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
        let mut seq = Sequence {
            prompt_len: prompt.len(),
            tokens: prompt,
            hashes: Vec::new(),
            cached: 0,
            blocks: Vec::new(),
            registered: 0,
            paused: false,
            started: false,
        };
        seq.hash_full_blocks(self.config.block_size);
        Ok(seq)
    }

    /// What admitting `seq` now takes: its cached prefix and the blocks for the rest.
    fn need(&self, seq: &Sequence) -> Need {
        let prefix = self
            .pool
            .lookup_prefix(seq.reusable_hashes(self.config.block_size));
        let fresh = self.blocks_for(seq.tokens.len()) - prefix.len();
        Need { prefix, fresh }
    }

    /// Whether an admission costing `cost` blocks fits `available` ones: with the
    /// watermark to spare, or without it when nothing else runs.
    fn fits(&self, cost: usize, available: usize, alone: bool) -> bool {
        cost + self.config.watermark_blocks.min(self.config.num_blocks) <= available
            || (alone && cost <= available)
    }

    /// Blocks only `id` holds: what parking or preempting it gives back.
    fn exclusive_blocks(&self, id: SeqId) -> usize {
        self.sequences[&id]
            .blocks
            .iter()
            .filter(|&&b| self.pool.refcount(b) == 1)
            .count()
    }

    /// Refuses, before a request's prompts are even prepared, what [`Scheduler::submit`]
    /// would refuse whatever the prompts: `generations` of the cheapest possible prompts
    /// (one fresh block each) would already leave more than `max_queue` waiting. A request
    /// with more generations than the batch and queue can hold is left to `submit`.
    pub fn check_room(&self, generations: usize) -> Result<(), Busy> {
        if generations > self.config.max_batch + self.config.max_queue {
            return Ok(());
        }
        let cheapest: Vec<Need> = (0..generations)
            .map(|_| Need {
                prefix: Vec::new(),
                fresh: 1,
            })
            .collect();
        self.queue_verdict(&cheapest)
    }

    /// Whether `new` may join the queue: not when more than `max_queue` generations would
    /// be left waiting after the next step's admissions.
    fn queue_verdict(&self, new: &[Need]) -> Result<(), Busy> {
        let (left_waiting, blocked_by) = self.predict_waiting(new);
        if left_waiting <= self.config.max_queue {
            return Ok(());
        }
        Err(match blocked_by {
            Some(reason) if self.config.max_queue == 0 => reason,
            _ => Busy::QueueFull {
                waiting: self.waiting.len(),
                limit: self.config.max_queue,
            },
        })
    }

    /// Replays the next step's admission over the queue followed by `new`, counting paused
    /// sequences' slots and blocks as free (they are parked on demand). Returns how many
    /// generations would be left waiting, and what stopped the admissions (every one after
    /// the first that cannot start waits).
    fn predict_waiting(&self, new: &[Need]) -> (usize, Option<Busy>) {
        let paused: Vec<SeqId> = self
            .running
            .iter()
            .copied()
            .filter(|id| self.sequences[id].paused)
            .collect();
        let active = self.running.len() - paused.len();
        let mut slots = self.config.max_batch.saturating_sub(active);
        let reclaimable: usize = paused.iter().map(|&id| self.exclusive_blocks(id)).sum();
        let mut available = self.pool.available() + reclaimable;
        let mut alone = active == 0;
        let queued: Vec<Need> = self
            .waiting
            .iter()
            .map(|id| self.need(&self.sequences[id]))
            .collect();
        let mut started = 0;
        let mut blocked_by = None;
        for need in queued.iter().chain(new) {
            let cost = self.pool.admission_cost(&need.prefix, need.fresh);
            if slots == 0 {
                blocked_by = Some(Busy::BatchFull);
            } else if !self.fits(cost, available, alone) {
                blocked_by = Some(Busy::PoolExhausted);
            } else {
                slots -= 1;
                available -= cost;
                alone = false;
                started += 1;
                continue;
            }
            break;
        }
        (queued.len() + new.len() - started, blocked_by)
    }

    /// Marks `id`'s client as behind (`true`) or caught up. A parked sequence whose client
    /// caught up goes back to the front of the queue; a waiting one whose client is behind
    /// is parked.
    pub fn set_paused(&mut self, id: SeqId, paused: bool) {
        let Some(seq) = self.sequences.get_mut(&id) else {
            return;
        };
        seq.paused = paused;
        if !paused && let Some(at) = self.parked.iter().position(|&p| p == id) {
            self.parked.remove(at);
            self.waiting.push_front(id);
        } else if paused && let Some(at) = self.waiting.iter().position(|&w| w == id) {
            self.waiting.remove(at);
            self.parked.push(id);
        }
    }

    /// Plans the next step (see the module docs for the policy).
    pub fn schedule(&mut self) -> Step {
        let mut step = Step::default();
        let mut budget = self.config.max_step_tokens.max(1);

        // 1. Decodes, making room by parking paused sequences, then preempting the newest.
        for id in self.running.clone() {
            let Some(seq) = self.sequences.get(&id) else {
                continue;
            };
            let needs_block = seq.cached / self.config.block_size >= seq.blocks.len();
            if !self.running.contains(&id) || seq.prefilling() || seq.paused || !needs_block {
                continue;
            }
            if self.grow(id, &mut step) {
                continue;
            }
            if self.running.len() == 1 {
                // Alone and still no block: the pool cannot hold this sequence any
                // longer. The engine ends it (finish reason `length`).
                step.out_of_blocks.push(id);
            } else {
                // Older sequences hold the blocks: wait for them.
                self.preempt(id, &mut step);
            }
        }
        for &id in &self.running {
            if step.chunks.len() >= self.config.max_batch || budget == 0 {
                break;
            }
            let seq = &self.sequences[&id];
            if seq.prefilling() || seq.paused || step.out_of_blocks.contains(&id) {
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

        // 2. Admissions (before prefill, so a new sequence's first chunk runs this step).
        // Not in a step that had to preempt: the freed blocks are for the older sequences.
        if step.preempted.is_empty() {
            self.admit_waiting(&mut step);
        }
        if self.config.max_queue == 0 {
            let reason = if self.running.len() >= self.config.max_batch {
                Busy::BatchFull
            } else {
                Busy::PoolExhausted
            };
            for id in self.waiting.clone() {
                if !self.sequences[&id].started {
                    self.remove(id);
                    step.refused.push((id, reason));
                }
            }
        }

        // 3. Prefill chunks, oldest first.
        for &id in &self.running {
            if step.chunks.len() >= self.config.max_batch || budget == 0 {
                break;
            }
            let seq = &self.sequences[&id];
            if !seq.prefilling() || seq.paused {
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

    /// Admits waiting sequences in order while each gets a slot and its blocks, parking
    /// paused sequences to make room when that is enough.
    fn admit_waiting(&mut self, step: &mut Step) {
        while let Some(&id) = self.waiting.front() {
            if self.running.len() >= self.config.max_batch && !self.park_newest_paused(step) {
                return;
            }
            let need = self.need(&self.sequences[&id]);
            loop {
                let cost = self.pool.admission_cost(&need.prefix, need.fresh);
                let alone = self.running.is_empty();
                if self.fits(cost, self.pool.available(), alone) {
                    break;
                }
                // Parking every paused sequence must be able to make room, or none is.
                let reclaimable: usize = self
                    .running
                    .iter()
                    .filter(|r| self.sequences[r].paused)
                    .map(|&r| self.exclusive_blocks(r))
                    .sum();
                if reclaimable == 0
                    || !self.fits(cost, self.pool.available() + reclaimable, alone)
                    || !self.park_newest_paused(step)
                {
                    return;
                }
            }
            // Parking may have turned prefix blocks from shared into cached: ask again.
            let need = self.need(&self.sequences[&id]);
            let Ok(blocks) = self.pool.share_and_allocate(&need.prefix, need.fresh) else {
                return;
            };
            self.waiting.pop_front();
            let cached = need.prefix.len() * self.config.block_size;
            if let Some(seq) = self.sequences.get_mut(&id) {
                seq.registered = need.prefix.len();
                seq.cached = cached;
                seq.blocks = blocks;
                seq.started = true;
            }
            self.running.push(id);
            step.admitted.push((id, cached));
        }
    }

    /// Gives a decoding sequence its next block, parking paused sequences and then
    /// preempting newer ones if needed. False when even that frees no block (the sequence
    /// itself is the newest).
    fn grow(&mut self, id: SeqId, step: &mut Step) -> bool {
        loop {
            let after = self.sequences[&id].blocks.last().copied();
            if let Ok(blocks) = self.pool.allocate(1, after) {
                if let Some(seq) = self.sequences.get_mut(&id) {
                    seq.blocks.extend(blocks);
                }
                return true;
            }
            if self.park_newest_paused(step) {
                continue;
            }
            match self.running.last() {
                Some(&newest) if newest != id => self.preempt(newest, step),
                _ => return false,
            }
        }
    }

    /// Parks the newest paused running sequence; false when none is paused.
    fn park_newest_paused(&mut self, step: &mut Step) -> bool {
        let Some(id) = self
            .running
            .iter()
            .rev()
            .copied()
            .find(|id| self.sequences[id].paused)
        else {
            return false;
        };
        self.release_blocks(id);
        self.running.retain(|&r| r != id);
        self.parked.push(id);
        step.parked.push(id);
        true
    }

    fn preempt(&mut self, id: SeqId, step: &mut Step) {
        self.release_blocks(id);
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        step.preempted.push(id);
    }

    /// Drops `id`'s KV: it will be recomputed from its tokens.
    fn release_blocks(&mut self, id: SeqId) {
        if let Some(seq) = self.sequences.get_mut(&id) {
            seq.blocks.iter().for_each(|&b| self.pool.release(b));
            seq.blocks.clear();
            seq.cached = 0;
            seq.registered = 0;
        }
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
            seq.hash_full_blocks(block_size);
        }
        let full = (seq.cached / block_size).min(seq.blocks.len());
        for index in seq.registered..full {
            self.pool.register(seq.blocks[index], seq.hashes[index]);
        }
        seq.registered = seq.registered.max(full);
    }

    /// Tokens generated so far by `id` (after its prompt).
    pub fn generated(&self, id: SeqId) -> &[u32] {
        self.sequences
            .get(&id)
            .map_or(&[][..], |s| &s.tokens[s.prompt_len..])
    }

    /// Ends a sequence (finished, cancelled, aborted or refused) in whatever phase, and
    /// releases its blocks; cached full blocks stay available for prefix reuse.
    pub fn finish(&mut self, id: SeqId) {
        self.remove(id);
    }

    fn remove(&mut self, id: SeqId) {
        if let Some(seq) = self.sequences.remove(&id) {
            seq.blocks.iter().for_each(|&b| self.pool.release(b));
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        self.parked.retain(|&p| p != id);
    }

    /// Checks every invariant: each sequence is in exactly one phase; only running ones
    /// hold blocks, and enough for their cached tokens; each block's refcount is the number
    /// of sequences holding it; the pool's own invariants. A message names the first
    /// violation.
    pub fn check(&self) -> Result<(), String> {
        let mut holders: HashMap<BlockId, u32> = HashMap::new();
        for (&id, seq) in &self.sequences {
            let phases = usize::from(self.running.contains(&id))
                + usize::from(self.waiting.contains(&id))
                + usize::from(self.parked.contains(&id));
            if phases != 1 {
                return Err(format!("sequence {id} is in {phases} phases"));
            }
            let running = self.running.contains(&id);
            if !running && !seq.blocks.is_empty() {
                return Err(format!("sequence {id} holds blocks while not running"));
            }
            if running && seq.blocks.len() * self.config.block_size < seq.cached.max(1) {
                return Err(format!(
                    "sequence {id} has {} blocks for {} cached tokens",
                    seq.blocks.len(),
                    seq.cached
                ));
            }
            for &block in &seq.blocks {
                *holders.entry(block).or_default() += 1;
            }
        }
        if self.running.len() + self.waiting.len() + self.parked.len() != self.sequences.len() {
            return Err("a phase lists an unknown sequence".to_owned());
        }
        for block in 0..self.pool.total() as BlockId {
            let held = holders.get(&block).copied().unwrap_or(0);
            if self.pool.refcount(block) != held {
                return Err(format!(
                    "block {block} has refcount {} but {held} holders",
                    self.pool.refcount(block)
                ));
            }
        }
        self.pool.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Scheduler {
        fn submit1(&mut self, id: SeqId, prompt: Vec<u32>) -> Result<(), AdmitError> {
            self.submit(vec![(id, prompt)])
        }
    }

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
            assert!(
                chunk.block_table.len() * scheduler.config.block_size
                    >= chunk.cached + chunk.tokens.len(),
                "table of {} too short for {:?}",
                chunk.id,
                chunk
            );
            let sampled = chunk.samples.then_some(token);
            scheduler.complete(chunk.id, chunk.tokens.len(), sampled);
        }
        scheduler.check().unwrap();
    }

    fn ids(step: &Step) -> Vec<SeqId> {
        step.chunks.iter().map(|c| c.id).collect()
    }

    /// Runs steps until `id` has generated `n` tokens.
    fn run_until(scheduler: &mut Scheduler, id: SeqId, n: usize) {
        for token in 0..100 {
            if scheduler.generated(id).len() >= n {
                return;
            }
            let step = scheduler.schedule();
            run(scheduler, &step, 1000 + token);
        }
        panic!("{id} did not generate {n} tokens");
    }

    #[test]
    fn long_prompts_prefill_in_chunks_while_others_decode() {
        let mut s = Scheduler::new(config());
        s.submit1(1, vec![1, 2, 3]).unwrap();
        let step = s.schedule();
        assert_eq!(step.admitted, vec![(1, 0)]);
        assert_eq!(step.chunks.len(), 1);
        assert!(step.chunks[0].samples && step.chunks[0].tokens == vec![1, 2, 3]);
        run(&mut s, &step, 10);

        s.submit1(2, (0..14).collect()).unwrap();
        let step = s.schedule();
        // Sequence 1 decodes its token 10; sequence 2 starts with a 6-token chunk.
        assert_eq!(step.chunks[0].tokens, vec![10]);
        assert_eq!((step.chunks[1].id, step.chunks[1].tokens.len()), (2, 6));
        assert!(!step.chunks[1].samples);
        run(&mut s, &step, 11);
        let step = s.schedule();
        assert_eq!(step.chunks[0].tokens, vec![11]);
        assert_eq!((step.chunks[1].cached, step.chunks[1].tokens.len()), (6, 6));
        run(&mut s, &step, 12);
        let step = s.schedule();
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
    fn paused_sequences_run_nothing_and_give_up_their_slot_first() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch: 2,
            ..config()
        });
        s.submit1(1, vec![1, 2, 3]).unwrap();
        s.submit1(2, vec![4, 5, 6]).unwrap();
        let step = s.schedule();
        run(&mut s, &step, 7);
        // 1's client is behind: it keeps its blocks but does not run.
        s.set_paused(1, true);
        let in_use = s.pool().in_use();
        let step = s.schedule();
        assert_eq!(ids(&step), vec![2]);
        assert_eq!(s.pool().in_use(), in_use);
        run(&mut s, &step, 8);
        // A third sequence needs a slot: the paused one gives up its slot and blocks.
        s.submit1(3, vec![9, 9, 9]).unwrap();
        let step = s.schedule();
        assert_eq!(step.parked, vec![1]);
        assert_eq!(step.admitted, vec![(3, 0)]);
        assert_eq!((s.running(), s.parked()), (2, 1));
        run(&mut s, &step, 10);
        // Its client caught up: it queues again and is recomputed once a slot is free.
        s.set_paused(1, false);
        assert_eq!(s.waiting(), 1);
        s.finish(2);
        let step = s.schedule();
        let chunk = step.chunks.iter().find(|c| c.id == 1).unwrap();
        assert_eq!((chunk.cached, chunk.tokens.clone()), (0, vec![1, 2, 3, 7]));
        assert_eq!(s.generated(1), &[7]);
        s.finish(1);
        s.finish(3);
        assert_eq!(s.pool().in_use(), 0);
        s.check().unwrap();
    }

    #[test]
    fn paused_sequences_give_up_blocks_before_anyone_is_preempted() {
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks: 6,
            watermark_blocks: 0,
            ..config()
        });
        // Two sequences of 2 blocks each; 1 is paused.
        s.submit1(1, (0..8).collect()).unwrap();
        s.submit1(2, (10..18).collect()).unwrap();
        run_until(&mut s, 1, 1);
        run_until(&mut s, 2, 1);
        s.set_paused(1, true);
        // 2 grows into the last 2 free blocks, then needs one more: 1 is parked, not 2.
        for t in 0..12 {
            let step = s.schedule();
            assert!(step.preempted.is_empty(), "{step:?}");
            run(&mut s, &step, 30 + t);
        }
        assert_eq!(s.parked(), 1);
        assert!(s.generated(2).len() > 8, "{:?}", s.generated(2));
        s.check().unwrap();
        // A prompt that needs the paused sequence's blocks parks it too.
        let mut t = Scheduler::new(SchedulerConfig {
            num_blocks: 4,
            watermark_blocks: 0,
            ..config()
        });
        t.submit1(1, (0..8).collect()).unwrap();
        let step = t.schedule();
        run(&mut t, &step, 20);
        t.set_paused(1, true);
        t.submit1(2, (50..62).collect()).unwrap();
        let step = t.schedule();
        assert_eq!(step.parked, vec![1]);
        assert_eq!(step.admitted, vec![(2, 0)]);
        t.check().unwrap();
    }

    #[test]
    fn step_limits_are_respected() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch: 2,
            max_step_tokens: 5,
            ..config()
        });
        for id in 0..3 {
            s.submit1(id, vec![1, 2, 3, 4]).unwrap();
        }
        let step = s.schedule();
        assert_eq!(step.admitted.len(), 2, "max_batch sequences admitted");
        let tokens: usize = step.chunks.iter().map(|c| c.tokens.len()).sum();
        assert!(tokens <= 5, "{tokens} tokens in one step");
        assert_eq!(s.waiting(), 1);
    }

    #[test]
    fn impossible_prompts_are_refused() {
        let mut s = Scheduler::new(config());
        assert_eq!(s.submit1(1, vec![]), Err(AdmitError::EmptyPrompt));
        assert!(matches!(
            s.submit1(1, vec![0; 64]),
            Err(AdmitError::PromptTooLong { tokens: 64, .. })
        ));
        let mut small = Scheduler::new(SchedulerConfig {
            num_blocks: 2,
            ..config()
        });
        assert!(matches!(
            small.submit1(1, vec![0; 9]),
            Err(AdmitError::PromptLargerThanPool {
                needed: 3,
                total: 2
            })
        ));
        // More prompts than the batch and the queue can ever hold (8 + 4).
        let prompts = (0..13).map(|id| (id, vec![1, 2])).collect();
        assert_eq!(
            s.submit(prompts),
            Err(AdmitError::TooManyGenerations {
                requested: 13,
                limit: 12
            })
        );
        // One bad prompt refuses the whole request.
        assert_eq!(
            s.submit(vec![(1, vec![1]), (2, vec![])]),
            Err(AdmitError::EmptyPrompt)
        );
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn the_queue_bound_counts_generations_left_waiting() {
        // Two slots, two queue places: a request is refused when, with it, more than two
        // generations would wait after the next step's admissions.
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch: 2,
            max_queue: 2,
            ..config()
        });
        // Two start at the next step and two wait: accepted, all four.
        let four = (0..4).map(|id| (id, vec![id as u32; 3])).collect();
        s.submit(four).unwrap();
        assert_eq!(
            s.submit1(9, vec![9; 3]),
            Err(AdmitError::Busy(Busy::QueueFull {
                waiting: 4,
                limit: 2
            }))
        );
        let step = s.schedule();
        assert_eq!(step.admitted.len(), 2);
        assert!(step.refused.is_empty());
        // Still two waiting behind two running: still full, and a request of three is
        // refused whole.
        assert!(s.submit1(9, vec![9; 3]).is_err());
        s.finish(0);
        s.finish(1);
        let three: Vec<(SeqId, Vec<u32>)> = (5..8).map(|id| (id, vec![id as u32; 3])).collect();
        assert_eq!(
            s.submit(three),
            Err(AdmitError::Busy(Busy::QueueFull {
                waiting: 2,
                limit: 2
            }))
        );
        assert_eq!(s.waiting(), 2, "all or nothing");
        // Whatever its prompts, a request of three would wait: refused before they are
        // even tokenized. One might start.
        assert!(matches!(s.check_room(3), Err(Busy::QueueFull { .. })));
        assert_eq!(s.check_room(1), Ok(()));
        s.submit1(9, vec![9; 3]).unwrap();
        // Two start, 9 waits: room for one more waiting generation, not two.
        assert_eq!(s.check_room(1), Ok(()));
        assert!(s.check_room(2).is_err());
        s.check().unwrap();
    }

    #[test]
    fn without_a_queue_only_what_starts_next_step_is_taken() {
        // The pool: 4 blocks; one 3-block prompt runs.
        let mut pool = Scheduler::new(SchedulerConfig {
            num_blocks: 4,
            max_queue: 0,
            ..config()
        });
        pool.submit1(1, vec![0; 12]).unwrap();
        pool.schedule();
        assert_eq!(
            pool.submit1(2, vec![0; 12]),
            Err(AdmitError::Busy(Busy::PoolExhausted))
        );
        // The batch: two slots taken.
        let mut batch = Scheduler::new(SchedulerConfig {
            max_batch: 2,
            max_queue: 0,
            ..config()
        });
        batch.submit1(1, vec![1; 3]).unwrap();
        batch.submit1(2, vec![2; 3]).unwrap();
        assert_eq!(
            batch.submit1(3, vec![3; 3]),
            Err(AdmitError::Busy(Busy::BatchFull))
        );
        let step = batch.schedule();
        assert_eq!(step.admitted.len(), 2);
        // A paused sequence's slot counts as free: the request is taken and it is parked.
        batch.set_paused(1, true);
        batch.submit1(3, vec![3; 3]).unwrap();
        let step = batch.schedule();
        assert_eq!(
            (step.parked.clone(), step.admitted.clone()),
            (vec![1], vec![(3, 0)])
        );
        // Requests arriving together are all taken while the pool has room for them.
        let mut together = Scheduler::new(SchedulerConfig {
            num_blocks: 16,
            max_queue: 0,
            watermark_blocks: 2,
            ..config()
        });
        together.submit1(1, vec![1; 12]).unwrap();
        together.submit1(2, vec![2; 12]).unwrap();
        together.submit1(3, vec![3; 12]).unwrap();
        together.submit1(4, vec![4; 12]).unwrap();
        // 4 x 3 blocks ahead, 3 more + 2 watermark > 16 free.
        assert_eq!(
            together.submit1(5, vec![5; 12]),
            Err(AdmitError::Busy(Busy::PoolExhausted))
        );
        let step = together.schedule();
        assert_eq!(step.admitted.len(), 4);
        // A request predicted to start is refused by the step that cannot start it after
        // all: a running sequence's growth took the blocks first.
        let mut late = Scheduler::new(SchedulerConfig {
            num_blocks: 4,
            max_queue: 0,
            watermark_blocks: 0,
            ..config()
        });
        late.submit1(1, vec![1; 3]).unwrap();
        for token in 0..2 {
            let step = late.schedule();
            run(&mut late, &step, token);
        }
        // 1 needs its second block in the next step; 3 are free for now.
        late.submit1(2, vec![2; 12]).unwrap();
        let step = late.schedule();
        assert_eq!(step.refused, vec![(2, Busy::PoolExhausted)]);
        assert_eq!(late.waiting(), 0);
        late.check().unwrap();
    }

    #[test]
    fn running_out_of_blocks_preempts_the_newest_and_recomputes_it() {
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks: 4,
            watermark_blocks: 0,
            ..config()
        });
        s.submit1(1, vec![1, 2, 3, 4]).unwrap();
        s.submit1(2, vec![5, 6, 7, 8]).unwrap();
        let step = s.schedule();
        assert_eq!(step.admitted.len(), 2);
        run(&mut s, &step, 20);
        // Both need a second block for position 4: 2 blocks left, fine.
        let step = s.schedule();
        assert!(step.preempted.is_empty());
        run(&mut s, &step, 21);
        // Decode until the pool (4 blocks) cannot hold both past 8 tokens each.
        let mut preempted = Vec::new();
        for t in 30..40 {
            let step = s.schedule();
            preempted.extend(step.preempted.iter().copied());
            run(&mut s, &step, t);
        }
        assert_eq!(preempted.first(), Some(&2), "the newest goes back first");
        assert!(s.generated(1).len() > s.generated(2).len());
        // Once 1 finishes, 2 is recomputed (prompt + what it had generated) and resumes.
        let before = s.generated(2).to_vec();
        s.finish(1);
        let step = s.schedule();
        let chunk = step.chunks.iter().find(|c| c.id == 2).unwrap();
        assert_eq!(chunk.cached, 0);
        assert_eq!(&chunk.tokens[4..], &before[..chunk.tokens.len() - 4]);
        s.finish(2);
        assert_eq!(s.pool().in_use(), 0);
        s.pool().check().unwrap();
    }

    /// Random traffic through a small pool: arrivals over time, prompts that share prefixes
    /// and conversations that come back with their history, clients that pause and resume,
    /// tight queue bounds. At every step every block table covers its tokens and every
    /// invariant holds ([`Scheduler::check`]); every sequence that is not refused ends with
    /// exactly its requested tokens, and everything is returned at the end.
    #[test]
    fn random_workloads_complete_without_leaks() {
        for seed in 0..40u64 {
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = |bound: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % bound
            };
            let mut s = Scheduler::new(SchedulerConfig {
                num_blocks: 12,
                max_batch: 1 + next(4) as usize,
                max_queue: next(5) as usize,
                ..config()
            });
            let mut wanted: HashMap<SeqId, usize> = HashMap::new();
            let mut history: Vec<Vec<u32>> = Vec::new();
            let (mut submitted, mut steps) = (0u64, 0u32);
            while submitted < 30 || !wanted.is_empty() {
                steps += 1;
                assert!(steps < 5000, "seed {seed}: no progress");
                if submitted < 30 && next(3) == 0 {
                    let mut prompt: Vec<u32> = match history.len() {
                        0 => Vec::new(),
                        n => history[next(n as u64) as usize].clone(),
                    };
                    if next(2) == 0 {
                        prompt.clear();
                    }
                    prompt.truncate(28);
                    prompt.extend((0..1 + next(12) as u32).map(|t| 100 + t));
                    match s.submit1(submitted, prompt) {
                        Ok(()) => {
                            wanted.insert(submitted, 1 + next(12) as usize);
                        }
                        Err(AdmitError::Busy(_)) => {}
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                    submitted += 1;
                }
                // Clients fall behind and catch up; all have caught up once traffic ends.
                for &id in wanted.keys() {
                    let paused = submitted < 30 && next(5) == 0;
                    s.set_paused(id, paused);
                }
                let step = s.schedule();
                for &(id, _) in &step.refused {
                    assert!(!s.started(id));
                    wanted.remove(&id);
                }
                for &id in &step.out_of_blocks {
                    s.finish(id);
                    wanted.remove(&id);
                }
                run(&mut s, &step, steps);
                let done: Vec<SeqId> = wanted
                    .iter()
                    .filter(|(id, n)| s.generated(**id).len() >= **n)
                    .map(|(id, _)| *id)
                    .collect();
                for id in done {
                    assert_eq!(s.generated(id).len(), wanted[&id], "seed {seed}, seq {id}");
                    let seq = &s.sequences[&id];
                    history.push(seq.tokens.clone());
                    s.finish(id);
                    wanted.remove(&id);
                }
            }
            assert_eq!((s.running(), s.waiting(), s.parked()), (0, 0, 0));
            assert_eq!(s.pool().in_use(), 0);
            s.check().unwrap();
        }
    }

    /// A returning prompt whose prefix is cached (refcount 0) in a nearly full pool: taking
    /// those blocks back shrinks what is left for the rest of the prompt.
    #[test]
    fn a_cached_prefix_is_counted_as_taken_at_admission() {
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks: 16,
            watermark_blocks: 1,
            ..config()
        });
        let history: Vec<u32> = (100..112).collect();
        s.submit1(1, history.clone()).unwrap();
        run_until(&mut s, 1, 1);
        s.finish(1);
        assert_eq!((s.pool().cached(), s.pool().free()), (3, 13));
        // Another sequence takes 12 blocks: 1 free, 3 cached.
        s.submit1(2, (500..548).collect()).unwrap();
        let step = s.schedule();
        run(&mut s, &step, 8);
        assert_eq!((s.pool().cached(), s.pool().free()), (3, 1));
        // The history plus 8 tokens: 3 shared + 2 new blocks, 5 of the 4 available.
        let mut returning = history.clone();
        returning.extend(200..208);
        s.submit1(3, returning).unwrap();
        let step = s.schedule();
        assert!(step.admitted.iter().all(|&(id, _)| id != 3), "{step:?}");
        run(&mut s, &step, 9);
        // Once the other ends there is room, and the prefix is still shared.
        s.finish(2);
        let step = s.schedule();
        assert_eq!(step.admitted, vec![(3, 12)]);
        run(&mut s, &step, 10);
    }

    #[test]
    fn a_sequence_outgrowing_the_whole_pool_is_reported_not_spun() {
        let mut s = Scheduler::new(SchedulerConfig {
            num_blocks: 2,
            watermark_blocks: 0,
            ..config()
        });
        s.submit1(1, vec![1, 2, 3, 4, 5]).unwrap();
        let mut step = s.schedule();
        for t in 0..10 {
            run(&mut s, &step, t);
            step = s.schedule();
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
        s.submit1(1, prompt.clone()).unwrap();
        let step = s.schedule();
        run(&mut s, &step, 99);
        let step = s.schedule();
        run(&mut s, &step, 98);
        s.finish(1);
        assert_eq!(s.pool().in_use(), 0);
        assert!(s.pool().cached() >= 2);
        // Same prompt: its two full blocks (8 tokens) come from the cache.
        s.submit1(2, prompt.clone()).unwrap();
        let step = s.schedule();
        assert_eq!(step.admitted, vec![(2, 8)]);
        assert_eq!(step.chunks[0].tokens, vec![8, 9]);
        assert_eq!(step.chunks[0].cached, 8);
        // A prompt of exactly two blocks still computes its last token.
        s.submit1(3, (0..8).collect()).unwrap();
        let step = s.schedule();
        let admitted = step.admitted.iter().find(|a| a.0 == 3).unwrap();
        assert_eq!(admitted.1, 4);
        s.finish(2);
        s.finish(3);
        assert_eq!(s.pool().in_use(), 0);
    }
}
