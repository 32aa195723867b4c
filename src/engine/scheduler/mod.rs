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
//!    A prompt's prefix is found in the pool first, then continued from the disk store:
//!    the blocks for that continuation are allocated with the rest, the sequence is
//!    **restoring** (it runs nothing) until the engine has written them from disk
//!    ([`Step::restores`], [`Scheduler::restored`]), and only the remaining suffix is
//!    prefilled.
//! 3. **Then prefill**, oldest first, in chunks of at most `prefill_chunk` tokens, while the
//!    step has room (`max_batch` sequences, `max_step_tokens` tokens). In a step where
//!    sequences decode, prompt tokens are also limited to the budget the engine sets from
//!    measured step costs ([`Scheduler::set_prompt_budget_while_decoding`]), so that step
//!    stalls the decoding streams only a bounded time.
//!
//! **The queue bound** (`max_queue`) counts generations. [`Scheduler::submit`] takes a
//! request's generations all or none: it predicts, against the current state, which
//! queued generations the next step admits; if more than `max_queue` would be left waiting
//! the request is refused at once. [`Scheduler::reserve_room`] makes the same prediction
//! before a request's prompts are prepared and holds its room meanwhile, so requests that
//! arrive together are refused at once rather than after the others' tokenization. With
//! `max_queue` 0 a request is taken only if it is
//! predicted to start in the next step, and a step refuses ([`Step::refused`]) any
//! never-started sequence it did not admit after all. A sequence that outgrows the whole
//! pool (running alone, or preempted with more tokens than the pool holds) is reported in
//! [`Step::out_of_blocks`]; stopping at `max_tokens` or the context length is the
//! engine's job.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::block_pool::{BlockHash, BlockId, BlockPool};
use crate::cache_store::{BlockWant, StoredBlocks};

mod queue;
#[cfg(test)]
mod tests;

pub use queue::{AdmitError, Busy, RoomId};

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

impl ScheduledChunk {
    /// Whether this is one decode: a single token that yields the next one. Anything else
    /// runs prompt tokens.
    pub fn decodes(&self) -> bool {
        self.tokens.len() == 1 && self.samples
    }
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
    /// Sequences that need another block while running alone in a pool with none left, or
    /// that wait for re-admission with more tokens than the whole pool holds: they cannot
    /// continue and must be finished by the engine.
    pub out_of_blocks: Vec<SeqId>,
    /// Disk blocks to read into sequences admitted this step.
    pub restores: Vec<RestoreOrder>,
    /// Full blocks in the pool that should be on disk (shared prefixes of persisting
    /// sequences admitted this step).
    pub persist: Vec<FullBlock>,
}

/// Which prefix cache a sequence belongs to, and what of it goes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheScope {
    /// Root of the hash chain: blocks are shared only among sequences with the same salt
    /// (one per API key), so one tenant cannot probe another's prompts.
    pub salt: Option<BlockHash>,
    pub persist: Persist,
}

/// Which of a sequence's full blocks are written to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persist {
    #[default]
    Nothing,
    /// Prefix blocks it reused from the pool (a prefix seen twice).
    Reused,
    /// Every full block (an agent's context).
    All,
}

/// A full block whose content is known: what the disk store needs to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullBlock {
    pub block: BlockId,
    pub hash: BlockHash,
    pub parent: Option<BlockHash>,
    pub tokens: Vec<u32>,
}

/// Blocks to read from disk for a sequence admitted this step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOrder {
    pub id: SeqId,
    /// Names this restore in [`Scheduler::restore_blocks`] and [`Scheduler::restored`].
    pub ticket: u64,
    pub wants: Vec<BlockWant>,
}

/// A restore in progress: blocks `first..first + count` of the table wait for disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restore {
    ticket: u64,
    first: usize,
    count: usize,
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
    scope: CacheScope,
    /// Waiting for blocks from disk: it runs nothing until they are written.
    restoring: Option<Restore>,
}

impl Sequence {
    fn prefilling(&self) -> bool {
        self.cached + 1 < self.tokens.len()
    }

    /// The hash the chain of block `index` continues from.
    fn parent(&self, index: usize) -> Option<BlockHash> {
        match index {
            0 => self.scope.salt,
            i => self.hashes.get(i - 1).copied(),
        }
    }

    /// Full block `index` of the table, as the disk store wants it.
    fn full_block(&self, index: usize, block_size: usize) -> FullBlock {
        FullBlock {
            block: self.blocks[index],
            hash: self.hashes[index],
            parent: self.parent(index),
            tokens: self.tokens[index * block_size..(index + 1) * block_size].to_vec(),
        }
    }

    /// Extends `hashes` over the full blocks of `tokens`.
    fn hash_full_blocks(&mut self, block_size: usize) {
        let full = self.tokens.len() / block_size;
        while self.hashes.len() < full {
            let start = self.hashes.len() * block_size;
            let block = &self.tokens[start..start + block_size];
            let parent = self.parent(self.hashes.len());
            self.hashes.push(BlockHash::chain(parent, block));
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
    /// Of those, how many continue the prefix from disk.
    restore: usize,
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
    /// What the disk store holds (empty without one).
    stored: StoredBlocks,
    next_ticket: u64,
    /// Room held by requests that passed [`Scheduler::reserve_room`] and are still being
    /// prepared, in order of arrival: generations, counted in queue verdicts as the
    /// cheapest prompts.
    rooms: BTreeMap<RoomId, usize>,
    next_room: u64,
    /// Most prompt tokens a step takes while sequences decode in it; `None` = only the
    /// step budget. Set by the engine from measured step costs
    /// ([`Scheduler::set_prompt_budget_while_decoding`]).
    prompt_budget_while_decoding: Option<usize>,
}

impl Scheduler {
    /// A scheduler whose prefixes continue from `stored` blocks on disk.
    pub fn new(config: SchedulerConfig, stored: StoredBlocks) -> Self {
        Scheduler {
            pool: BlockPool::new(config.num_blocks),
            config,
            sequences: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            parked: Vec::new(),
            stored,
            next_ticket: 0,
            rooms: BTreeMap::new(),
            next_room: 0,
            prompt_budget_while_decoding: None,
        }
    }

    /// Limits the prompt tokens of a step in which sequences decode, so that such a step
    /// stalls their streams only so long; a step where nobody decodes still prefills up to
    /// `max_step_tokens`. `None` lifts the limit.
    pub fn set_prompt_budget_while_decoding(&mut self, tokens: Option<usize>) {
        self.prompt_budget_while_decoding = tokens;
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
            if !self.running.contains(&id)
                || seq.prefilling()
                || seq.paused
                || seq.restoring.is_some()
                || !needs_block
            {
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

        // 3. Prefill chunks, oldest first. While others decode, the first prompt still gets
        // its whole chunk (splitting one arrival only turns one stall into several), and
        // further prompts join only within the budget.
        let mut prompt_left = self
            .prompt_budget_while_decoding
            .filter(|_| !step.chunks.is_empty());
        let mut first_prompt = true;
        for &id in &self.running {
            if step.chunks.len() >= self.config.max_batch || budget == 0 {
                break;
            }
            let seq = &self.sequences[&id];
            if !seq.prefilling() || seq.paused || seq.restoring.is_some() {
                continue;
            }
            let remaining = seq.tokens.len() - seq.cached;
            let mut take = remaining.min(self.config.prefill_chunk.max(1)).min(budget);
            if let Some(left) = prompt_left.as_mut() {
                if !first_prompt {
                    take = take.min(*left);
                    if take == 0 {
                        break;
                    }
                }
                *left = left.saturating_sub(take);
            }
            first_prompt = false;
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
            if self.blocks_for(self.sequences[&id].tokens.len()) > self.config.num_blocks {
                // Preempted after it outgrew the whole pool: it can never run again, and
                // at the front it would hold up everyone behind it.
                self.remove(id);
                step.out_of_blocks.push(id);
                continue;
            }
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
            let block_size = self.config.block_size;
            let cached = need.prefix.len() * block_size;
            let ticket = self.next_ticket;
            self.next_ticket += 1;
            if let Some(seq) = self.sequences.get_mut(&id) {
                seq.registered = need.prefix.len();
                seq.cached = cached;
                seq.blocks = blocks;
                seq.started = true;
                if seq.scope.persist != Persist::Nothing {
                    step.persist
                        .extend((0..need.prefix.len()).map(|i| seq.full_block(i, block_size)));
                }
                if need.restore > 0 {
                    let first = need.prefix.len();
                    seq.restoring = Some(Restore {
                        ticket,
                        first,
                        count: need.restore,
                    });
                    let wants = (first..first + need.restore)
                        .map(|i| {
                            let block = seq.full_block(i, block_size);
                            BlockWant {
                                hash: block.hash,
                                parent: block.parent,
                                tokens: block.tokens,
                            }
                        })
                        .collect();
                    step.restores.push(RestoreOrder { id, ticket, wants });
                }
            }
            self.running.push(id);
            step.admitted.push((id, cached));
        }
    }

    /// The blocks waiting for restore `ticket` of `id`, in order; `None` when that restore
    /// is no longer wanted (the sequence ended, or was preempted and admitted again).
    pub fn restore_blocks(&self, id: SeqId, ticket: u64) -> Option<Vec<BlockId>> {
        let seq = self.sequences.get(&id)?;
        let restore = seq.restoring.filter(|r| r.ticket == ticket)?;
        Some(seq.blocks[restore.first..restore.first + restore.count].to_vec())
    }

    /// Ends restore `ticket` of `id` with its first `loaded` blocks written: they count as
    /// computed and join the prefix cache; the rest of the prompt is prefilled. Returns the
    /// sequence's cached prompt tokens (0 if the restore was no longer wanted).
    pub fn restored(&mut self, id: SeqId, ticket: u64, loaded: usize) -> usize {
        let block_size = self.config.block_size;
        let Some(seq) = self.sequences.get_mut(&id) else {
            return 0;
        };
        let Some(restore) = seq.restoring.filter(|r| r.ticket == ticket) else {
            return 0;
        };
        seq.restoring = None;
        let loaded = loaded.min(restore.count);
        let full = restore.first + loaded;
        for index in seq.registered..full {
            self.pool.register(seq.blocks[index], seq.hashes[index]);
        }
        seq.registered = seq.registered.max(full);
        seq.cached = seq.cached.max(full * block_size);
        seq.cached
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
            seq.restoring = None;
        }
    }

    /// Records a step's outcome for one sequence: its chunk's KV is now cached, and
    /// `sampled` is the token it produced (if its chunk completed the prompt). Full blocks
    /// are registered in the prefix cache; those of a sequence that persists everything
    /// are returned for the disk store.
    pub fn complete(&mut self, id: SeqId, computed: usize, sampled: Option<u32>) -> Vec<FullBlock> {
        let block_size = self.config.block_size;
        let Some(seq) = self.sequences.get_mut(&id) else {
            return Vec::new();
        };
        seq.cached = (seq.cached + computed).min(seq.tokens.len());
        if let Some(token) = sampled {
            seq.tokens.push(token);
            seq.hash_full_blocks(block_size);
        }
        let full = (seq.cached / block_size).min(seq.blocks.len());
        let mut new = Vec::new();
        for index in seq.registered..full {
            self.pool.register(seq.blocks[index], seq.hashes[index]);
            if seq.scope.persist == Persist::All {
                new.push(seq.full_block(index, block_size));
            }
        }
        seq.registered = seq.registered.max(full);
        new
    }

    /// The chain hashes and tokens of `id`'s computed full blocks (an agent's manifest).
    pub fn computed_blocks(&self, id: SeqId) -> (Vec<BlockHash>, Vec<u32>) {
        let Some(seq) = self.sequences.get(&id) else {
            return (Vec::new(), Vec::new());
        };
        let full = (seq.cached / self.config.block_size).min(seq.hashes.len());
        (
            seq.hashes[..full].to_vec(),
            seq.tokens[..full * self.config.block_size].to_vec(),
        )
    }

    /// The pool, for the admin API's views and deletions of prefix content.
    pub fn pool_mut(&mut self) -> &mut BlockPool {
        &mut self.pool
    }

    /// Whether `block` still holds the content hashed `hash` (a deferred disk write may
    /// still copy it).
    pub fn holds(&self, block: BlockId, hash: BlockHash) -> bool {
        self.pool.holds(block, hash)
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
