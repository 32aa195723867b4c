//! The queue bound: which requests may join the queue at all. A request's generations
//! (one per prompt) are taken all or none, and refused at once when, predicted against the
//! current state, more than `max_queue` of the queue's generations would be left waiting
//! after the next step's admissions (see the parent module's docs).

use super::{CacheScope, Need, Scheduler, SeqId, Sequence};

/// Room held in the queue by [`Scheduler::reserve_room`], numbered in order of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomId(u64);

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

impl Scheduler {
    pub(super) fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.config.block_size)
    }

    /// Queues a request's prompts (one generation each, ids given) all or none. Refuses a
    /// prompt that can never fit, a request larger than the batch plus the queue, and —
    /// when more than `max_queue` generations would be left waiting after the next step's
    /// predicted admissions — a busy engine.
    pub fn submit(
        &mut self,
        prompts: Vec<(SeqId, Vec<u32>)>,
        scope: CacheScope,
    ) -> Result<(), AdmitError> {
        self.enqueue(prompts, scope, None)
    }

    /// [`Scheduler::submit`] for a request that holds `room` ([`Scheduler::reserve_room`]):
    /// the room is given back, and only the room held for requests that arrived before
    /// this one counts against it (a later arrival never crowds out an earlier one).
    pub fn submit_in_room(
        &mut self,
        prompts: Vec<(SeqId, Vec<u32>)>,
        scope: CacheScope,
        room: RoomId,
    ) -> Result<(), AdmitError> {
        self.release_room(room);
        self.enqueue(prompts, scope, Some(room))
    }

    /// Queues `prompts` if the queue bound allows, counting the room held before
    /// `arrived` (all of it when `None`: the request arrives now).
    fn enqueue(
        &mut self,
        prompts: Vec<(SeqId, Vec<u32>)>,
        scope: CacheScope,
        arrived: Option<RoomId>,
    ) -> Result<(), AdmitError> {
        let limit = self.config.max_batch + self.config.max_queue;
        if prompts.len() > limit {
            return Err(AdmitError::TooManyGenerations {
                requested: prompts.len(),
                limit,
            });
        }
        let mut new = Vec::with_capacity(prompts.len());
        for (id, prompt) in prompts {
            new.push((id, self.new_sequence(prompt, scope)?));
        }
        let needs: Vec<Need> = new.iter().map(|(_, seq)| self.need(seq)).collect();
        self.queue_verdict(&needs, arrived)?;
        for (id, seq) in new {
            self.sequences.insert(id, seq);
            self.waiting.push_back(id);
        }
        Ok(())
    }

    fn new_sequence(&self, prompt: Vec<u32>, scope: CacheScope) -> Result<Sequence, AdmitError> {
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
            scope,
            restoring: None,
        };
        seq.hash_full_blocks(self.config.block_size);
        Ok(seq)
    }

    /// What admitting `seq` now takes: its cached prefix, the blocks for the rest, and how
    /// many of those continue the prefix from disk.
    pub(super) fn need(&self, seq: &Sequence) -> Need {
        let reusable = seq.reusable_hashes(self.config.block_size);
        let prefix = self.pool.lookup_prefix(reusable);
        let restore = self.stored.leading_run(&reusable[prefix.len()..]);
        let fresh = self.blocks_for(seq.tokens.len()) - prefix.len();
        Need {
            prefix,
            fresh,
            restore,
        }
    }

    /// Whether an admission costing `cost` blocks fits `available` ones: with the
    /// watermark to spare, or without it when nothing else runs.
    pub(super) fn fits(&self, cost: usize, available: usize, alone: bool) -> bool {
        cost + self.config.watermark_blocks.min(self.config.num_blocks) <= available
            || (alone && cost <= available)
    }

    /// Blocks only `id` holds: what parking or preempting it gives back.
    pub(super) fn exclusive_blocks(&self, id: SeqId) -> usize {
        self.sequences[&id]
            .blocks
            .iter()
            .filter(|&&b| self.pool.refcount(b) == 1)
            .count()
    }

    /// Refuses, before a request's prompts are even prepared, what [`Scheduler::submit`]
    /// would refuse whatever the prompts: `generations` of the cheapest possible prompts
    /// (one fresh block each) would already leave more than `max_queue` waiting. Otherwise
    /// holds room for them, counted in every later verdict as such prompts, until the
    /// request is submitted in it ([`Scheduler::submit_in_room`]) or gives it back
    /// ([`Scheduler::release_room`]). Without the hold, a burst of requests arriving
    /// together would all pass this check while none of them is queued yet, and each
    /// refusal would wait for the prompts ahead of it to be tokenized. Holds nothing
    /// (`None`) for a request with more generations than the batch and queue can hold,
    /// left to `submit` to refuse.
    pub fn reserve_room(&mut self, generations: usize) -> Result<Option<RoomId>, Busy> {
        if generations > self.config.max_batch + self.config.max_queue {
            return Ok(None);
        }
        let unknown: Vec<Need> = (0..generations).map(|_| CHEAPEST).collect();
        self.queue_verdict(&unknown, None)?;
        let room = RoomId(self.next_room);
        self.next_room += 1;
        self.rooms.insert(room, generations);
        Ok(Some(room))
    }

    /// Gives back room held by [`Scheduler::reserve_room`] (nothing if already given).
    pub fn release_room(&mut self, room: RoomId) {
        self.rooms.remove(&room);
    }

    /// Gives up, in order of arrival, every held room that [`Scheduler::reserve_room`]
    /// would now refuse: the prompts submitted since it was granted turned out larger
    /// than the one block each it counted them at, and with them even the cheapest prompts
    /// for this room would leave more than `max_queue` waiting. Its request could only be
    /// refused at submission, after its prompts were prepared in vain; revoked, it is
    /// refused as soon as it learns of it. Returns the rooms given up and why. Call it
    /// after every submission; nothing else makes a held room's verdict worse.
    pub fn revoke_rooms(&mut self) -> Vec<(RoomId, Busy)> {
        // One replay of the queue, extended room by room with the rooms that stay: each
        // room is judged as `queue_verdict` would judge it, behind the queue and the rooms
        // before it that stay, at the cost of one verdict for them all.
        let mut replay = self.replay_queue();
        let mut held = 0;
        let mut revoked = Vec::new();
        for (&room, &generations) in &self.rooms {
            let mut with_room = replay.clone();
            with_room.push_cheapest(self, generations);
            match self.verdict(&with_room, held) {
                Ok(()) => {
                    replay = with_room;
                    held += generations;
                }
                Err(busy) => revoked.push((room, busy)),
            }
        }
        for (room, _) in &revoked {
            self.rooms.remove(room);
        }
        revoked
    }

    /// Generations of the room held for requests that arrived before `arrived` (all
    /// held room when `None`).
    fn held_before(&self, arrived: Option<RoomId>) -> usize {
        match arrived {
            Some(room) => self.rooms.range(..room).map(|(_, &g)| g).sum(),
            None => self.rooms.values().sum(),
        }
    }

    /// Whether `new` may join the queue: not when more than `max_queue` generations would
    /// be left waiting after the next step's admissions, replayed over the queue, then the
    /// room held for requests still being prepared (as the cheapest prompts), then `new`.
    /// `arrived` says which held room counts ([`Scheduler::held_before`]).
    fn queue_verdict(&self, new: &[Need], arrived: Option<RoomId>) -> Result<(), Busy> {
        let held = self.held_before(arrived);
        let mut replay = self.replay_queue();
        replay.push_cheapest(self, held);
        for need in new {
            replay.push(self, need);
        }
        self.verdict(&replay, held)
    }

    /// The verdict on a replay that ends with the request being judged, behind `held`
    /// generations of room.
    fn verdict(&self, replay: &Replay, held: usize) -> Result<(), Busy> {
        if replay.waiting() <= self.config.max_queue {
            return Ok(());
        }
        Err(match replay.blocked_by {
            Some(reason) if self.config.max_queue == 0 => reason,
            _ => Busy::QueueFull {
                waiting: self.waiting.len() + held,
                limit: self.config.max_queue,
            },
        })
    }

    /// The next step's admissions replayed over the queue, counting paused sequences'
    /// slots and blocks as free (they are parked on demand).
    fn replay_queue(&self) -> Replay {
        let paused: Vec<SeqId> = self
            .running
            .iter()
            .copied()
            .filter(|id| self.sequences[id].paused)
            .collect();
        let active = self.running.len() - paused.len();
        let reclaimable: usize = paused.iter().map(|&id| self.exclusive_blocks(id)).sum();
        let mut replay = Replay {
            slots: self.config.max_batch.saturating_sub(active),
            available: self.pool.available() + reclaimable,
            alone: active == 0,
            considered: 0,
            started: 0,
            blocked_by: None,
        };
        for id in &self.waiting {
            replay.push(self, &self.need(&self.sequences[id]));
        }
        replay
    }
}

/// What a prompt not yet known needs at the least: one fresh block.
const CHEAPEST: Need = Need {
    prefix: Vec::new(),
    fresh: 1,
    restore: 0,
};

/// A prediction of the next step's admissions, one need at a time in queue order. Every
/// need after the first that cannot start waits, as in the step itself.
#[derive(Debug, Clone)]
struct Replay {
    slots: usize,
    available: usize,
    /// Nothing runs, so an admission may take the watermark too.
    alone: bool,
    /// Needs replayed, and how many of them would start.
    considered: usize,
    started: usize,
    /// What stopped the admissions.
    blocked_by: Option<Busy>,
}

impl Replay {
    fn push(&mut self, scheduler: &Scheduler, need: &Need) {
        self.considered += 1;
        if self.blocked_by.is_some() {
            return;
        }
        let cost = scheduler.pool.admission_cost(&need.prefix, need.fresh);
        if self.slots == 0 {
            self.blocked_by = Some(Busy::BatchFull);
        } else if !scheduler.fits(cost, self.available, self.alone) {
            self.blocked_by = Some(Busy::PoolExhausted);
        } else {
            self.slots -= 1;
            self.available -= cost;
            self.alone = false;
            self.started += 1;
        }
    }

    /// `generations` prompts not yet known, at the least they need ([`CHEAPEST`]).
    fn push_cheapest(&mut self, scheduler: &Scheduler, generations: usize) {
        for _ in 0..generations {
            self.push(scheduler, &CHEAPEST);
        }
    }

    /// Generations that would be left waiting.
    fn waiting(&self) -> usize {
        self.considered - self.started
    }
}
