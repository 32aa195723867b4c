//! The engine thread: owns the model, the KV pool and the scheduler, and runs forward steps
//! for as long as there is work, taking commands between steps.
//!
//! The thread never blocks on a client: events go into a per-request bounded channel with
//! `try_send`; what does not fit waits in that request's small outbox, and a request with a
//! non-empty outbox is paused (keeps its blocks, runs no tokens) until its client catches
//! up, while the rest of the batch proceeds. A client that goes away (its stream dropped)
//! is noticed at the next step and its blocks are freed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::handle::{DrainReport, EngineStats, EventStream, ServedModel, SubmitError};
use super::scheduler::{AdmitError, Scheduler, SchedulerConfig, SeqId, Step};
use super::sequence::{Event, FinishReason, GenerationRequest, SequenceState};
use crate::metrics::engine::{EngineLatency, EngineMetrics, Rejection};
use crate::model::ModelError;
use crate::model::batch::SequenceChunk;
use crate::model::kv_cache::{KvCacheConfig, PagedKvCache};
use crate::model::loader::LoadedModel;

/// Engine settings (from `ServeSettings` in the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub kv_cache_bytes: usize,
    pub block_size: usize,
    /// Sequences per step.
    pub max_batch: usize,
    /// Tokens per step (prefill chunks plus one per decode).
    pub max_step_tokens: usize,
    /// Prompt tokens one sequence prefills per step.
    pub prefill_chunk: usize,
    /// Requests that may wait for blocks; 0 = refuse what cannot start at once.
    pub max_queue: usize,
    /// Blocks kept free beyond a new prompt's at admission (room to grow).
    pub watermark_blocks: usize,
    /// Longest a request waits for admission.
    pub queue_timeout: Duration,
    /// Events buffered per request before it is paused.
    pub event_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kv_cache_bytes: 512 << 20,
            block_size: 16,
            max_batch: 16,
            max_step_tokens: 512,
            prefill_chunk: 256,
            max_queue: 64,
            watermark_blocks: 4,
            queue_timeout: Duration::from_secs(30),
            event_buffer: 64,
        }
    }
}

pub(crate) enum Command {
    Submit {
        request: GenerationRequest,
        reply: oneshot::Sender<Result<EventStream, SubmitError>>,
    },
    Drain {
        timeout: Duration,
        reply: oneshot::Sender<DrainReport>,
    },
}

/// Submitted, not admitted yet.
struct Pending {
    request: GenerationRequest,
    reply: oneshot::Sender<Result<EventStream, SubmitError>>,
    /// When it was submitted.
    since: Instant,
}

/// Admitted and streaming.
struct Active {
    state: SequenceState,
    sender: mpsc::Sender<Event>,
    outbox: VecDeque<Event>,
    /// Its `Finished` event is in the outbox; its blocks are already released.
    done: bool,
    timing: Timing,
}

/// When a sequence passed each point of its life, for the latency metrics.
struct Timing {
    submitted: Instant,
    admitted: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl Timing {
    /// Records a token generated at `now`: the time to it (first) or since the last one.
    fn token(&mut self, now: Instant, observations: &mut Vec<(EngineLatency, Duration)>) {
        match self.last_token {
            None => {
                observations.push((EngineLatency::TimeToFirstToken, now - self.submitted));
                observations.push((EngineLatency::Prefill, now - self.admitted));
                self.first_token = Some(now);
            }
            Some(last) => observations.push((EngineLatency::InterToken, now - last)),
        }
        self.last_token = Some(now);
    }
}

struct Drain {
    deadline: Instant,
    started: Instant,
    replies: Vec<oneshot::Sender<DrainReport>>,
    report: DrainReport,
}

pub(crate) struct Worker {
    loaded: LoadedModel,
    cache: PagedKvCache,
    scheduler: Scheduler,
    config: EngineConfig,
    stats: Arc<Mutex<EngineStats>>,
    metrics: Arc<EngineMetrics>,
    next_id: SeqId,
    pending: HashMap<SeqId, Pending>,
    active: HashMap<SeqId, Active>,
    drain: Option<Drain>,
    /// Set by the first drain: new requests are refused from then on.
    draining: bool,
    counters: EngineStats,
    /// Mixed into the seed of requests without one, so unseeded requests differ between
    /// runs (OpenAI semantics) while staying independent of each other.
    seed_base: u64,
}

impl Worker {
    pub(crate) fn new(
        load: impl FnOnce() -> Result<LoadedModel, ModelError>,
        config: EngineConfig,
        stats: Arc<Mutex<EngineStats>>,
        metrics: Arc<EngineMetrics>,
    ) -> Result<Self, ModelError> {
        let loaded = load()?;
        let model_config = loaded.model.config().clone();
        let dtype = loaded.model.mode().compute_dtype();
        let kv = KvCacheConfig::from_budget(
            config.kv_cache_bytes,
            config.block_size,
            &model_config,
            dtype,
        )
        .map_err(ModelError::KvCache)?;
        let cache = PagedKvCache::new(kv, &model_config, dtype)?;
        let scheduler = Scheduler::new(SchedulerConfig {
            block_size: kv.block_size,
            num_blocks: kv.num_blocks,
            context_length: model_config.context_length,
            max_batch: config.max_batch.max(1),
            max_step_tokens: config.max_step_tokens.max(1),
            prefill_chunk: config.prefill_chunk.max(1),
            max_queue: config.max_queue,
            watermark_blocks: config.watermark_blocks,
        });
        Ok(Worker {
            loaded,
            cache,
            scheduler,
            config,
            stats,
            metrics,
            next_id: 0,
            pending: HashMap::new(),
            active: HashMap::new(),
            drain: None,
            draining: false,
            counters: EngineStats::default(),
            seed_base: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5EED, |d| d.as_nanos() as u64),
        })
    }

    pub(crate) fn served_model(&self) -> ServedModel {
        ServedModel {
            identity: self.loaded.identity.clone(),
            tokenizer: Arc::clone(&self.loaded.tokenizer),
            chat_template: Arc::clone(&self.loaded.chat_template),
        }
    }

    fn idle(&self) -> bool {
        self.active.is_empty() && self.pending.is_empty() && self.drain.is_none()
    }

    pub(crate) fn run(mut self, inbox: Receiver<Command>) {
        loop {
            if self.idle() {
                self.publish_stats(0.0);
                match inbox.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => return, // every handle is gone and nothing is running
                }
            }
            loop {
                match inbox.try_recv() {
                    Ok(command) => self.handle(command),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if self.idle() {
                            return;
                        }
                        break;
                    }
                }
            }
            self.flush_outboxes();
            self.expire_waiting();
            self.check_drain();
            let started = Instant::now();
            let generated = self.step();
            self.flush_outboxes();
            let elapsed = started.elapsed().as_secs_f64();
            self.counters.step_seconds += elapsed;
            let rate = if elapsed > 0.0 {
                generated as f64 / elapsed
            } else {
                0.0
            };
            self.publish_stats(rate);
            if generated == 0 && !self.idle() {
                // Only paused or waiting work: wait briefly for a command or a client.
                match inbox.recv_timeout(Duration::from_millis(2)) {
                    Ok(command) => self.handle(command),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        if self.active.is_empty() && self.pending.is_empty() {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit { request, reply } => self.submit(request, reply),
            Command::Drain { timeout, reply } => self.start_drain(timeout, reply),
        }
    }

    fn submit(
        &mut self,
        mut request: GenerationRequest,
        reply: oneshot::Sender<Result<EventStream, SubmitError>>,
    ) {
        if self.draining {
            self.metrics.record_rejection(Rejection::Draining);
            let _ = reply.send(Err(SubmitError::Draining));
            return;
        }
        // Never generate past the context.
        let context = self.loaded.model.config().context_length;
        request.max_tokens = request
            .max_tokens
            .min(context.saturating_sub(request.prompt.len()));
        if request.max_tokens == 0 {
            let _ = reply.send(Err(SubmitError::Invalid(AdmitError::PromptTooLong {
                tokens: request.prompt.len(),
                limit: context.saturating_sub(1),
            })));
            return;
        }
        if let Some(&token) = request
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.loaded.model.config().vocab_size)
        {
            let _ = reply.send(Err(SubmitError::InvalidSampling(format!(
                "prompt token id {token} is outside the vocabulary"
            ))));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        match self.scheduler.submit(id, request.prompt.clone()) {
            Ok(()) => {
                self.pending.insert(
                    id,
                    Pending {
                        request,
                        reply,
                        since: Instant::now(),
                    },
                );
            }
            Err(AdmitError::QueueFull { waiting }) => {
                self.metrics
                    .record_rejection(if self.config.max_queue == 0 {
                        Rejection::KvCacheExhausted
                    } else {
                        Rejection::QueueFull
                    });
                let _ = reply.send(Err(SubmitError::Busy {
                    reason: format!(
                        "the KV cache is full and {waiting} requests are already waiting"
                    ),
                }));
            }
            Err(e) => {
                let _ = reply.send(Err(SubmitError::Invalid(e)));
            }
        }
    }

    /// Runs one forward step; returns the number of tokens generated.
    fn step(&mut self) -> usize {
        let paused: HashSet<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| !a.outbox.is_empty())
            .map(|(&id, _)| id)
            .collect();
        let step = self.scheduler.schedule(&paused);
        self.counters.preemptions += step.preempted.len() as u64;
        self.start_admitted(&step);
        for &id in &step.out_of_blocks {
            self.finish(id, FinishReason::Length);
        }
        let chunks: Vec<_> = step
            .chunks
            .iter()
            .filter(|c| self.active.get(&c.id).is_some_and(|a| !a.done))
            .collect();
        if chunks.is_empty() {
            return 0;
        }
        let model = &self.loaded.model;
        let plan_chunks: Vec<SequenceChunk<'_>> = chunks
            .iter()
            .map(|c| SequenceChunk {
                tokens: &c.tokens,
                cached: c.cached,
                block_table: &c.block_table,
            })
            .collect();
        let forward_started = Instant::now();
        let logits = model.forward(&plan_chunks, &mut self.cache);
        self.counters.forward_seconds += forward_started.elapsed().as_secs_f64();
        let logits = match logits {
            Ok(logits) => logits,
            Err(e) => {
                tracing::error!(error = %e, "forward step failed; aborting its sequences");
                let ids: Vec<SeqId> = chunks.iter().map(|c| c.id).collect();
                for id in ids {
                    self.finish(id, FinishReason::Aborted);
                }
                return 0;
            }
        };
        let logits = logits.as_slice::<f32>();
        let vocab = model.config().vocab_size;
        let now = Instant::now();
        let mut observations = Vec::new();
        let mut generated = 0;
        let mut finished = Vec::new();
        for (row, chunk) in chunks.iter().enumerate() {
            if !chunk.samples {
                self.scheduler.complete(chunk.id, chunk.tokens.len(), None);
                continue;
            }
            let Some(active) = self.active.get_mut(&chunk.id) else {
                continue;
            };
            match active
                .state
                .advance(&logits[row * vocab..(row + 1) * vocab])
            {
                Ok((token, events)) => {
                    generated += 1;
                    active.timing.token(now, &mut observations);
                    self.scheduler
                        .complete(chunk.id, chunk.tokens.len(), Some(token));
                    if let Some(reason) = events.iter().find_map(|e| match e {
                        Event::Finished { reason, .. } => Some(*reason),
                        Event::Token { .. } => None,
                    }) {
                        finished.push((chunk.id, reason));
                    }
                    active.outbox.extend(events);
                }
                Err(e) => {
                    tracing::error!(error = %e, "detokenization failed; aborting the sequence");
                    finished.push((chunk.id, FinishReason::Aborted));
                    if let Ok(event) = active.state.finish(FinishReason::Aborted) {
                        active.outbox.push_back(event);
                    }
                }
            }
        }
        self.metrics.record(observations);
        for (id, reason) in finished {
            self.release(id, reason);
        }
        self.counters.generated_tokens += generated as u64;
        self.counters.steps += 1;
        generated
    }

    /// Opens streams for newly admitted requests (preempted ones coming back already
    /// have theirs).
    fn start_admitted(&mut self, step: &Step) {
        for &(id, cached) in &step.admitted {
            let Some(pending) = self.pending.remove(&id) else {
                continue;
            };
            let (sender, receiver) = mpsc::channel(self.config.event_buffer.max(2));
            let seed = self.seed_base ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut state =
                SequenceState::new(&pending.request, Arc::clone(&self.loaded.tokenizer), seed);
            state.set_cached_tokens(cached);
            if pending.reply.send(Ok(EventStream { receiver })).is_err() {
                // The client left while waiting.
                self.scheduler.finish(id);
                self.metrics.record_finish(FinishReason::Cancelled.label());
                continue;
            }
            let now = Instant::now();
            self.metrics
                .record_admission(pending.request.prompt.len(), cached);
            self.metrics
                .record([(EngineLatency::QueueWait, now - pending.since)]);
            self.active.insert(
                id,
                Active {
                    state,
                    sender,
                    outbox: VecDeque::new(),
                    done: false,
                    timing: Timing {
                        submitted: pending.since,
                        admitted: now,
                        first_token: None,
                        last_token: None,
                    },
                },
            );
        }
    }

    /// Ends `id` now with `reason` (its `Finished` event goes out through the outbox).
    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        if let Some(active) = self.active.get_mut(&id)
            && !active.done
        {
            if let Ok(event) = active.state.finish(reason) {
                active.outbox.push_back(event);
            }
            self.release(id, reason);
        }
    }

    /// Frees `id`'s blocks after it ended with `reason`; its stream stays until the outbox
    /// is delivered.
    fn release(&mut self, id: SeqId, reason: FinishReason) {
        self.scheduler.finish(id);
        self.metrics.record_finish(reason.label());
        if let Some(active) = self.active.get_mut(&id) {
            active.done = true;
            let timing = &active.timing;
            if matches!(reason, FinishReason::Stop | FinishReason::Length) {
                let now = Instant::now();
                let first = timing.first_token.unwrap_or(now);
                self.metrics.record([
                    (
                        EngineLatency::Decode,
                        timing.last_token.unwrap_or(now) - first,
                    ),
                    (EngineLatency::EndToEnd, now - timing.submitted),
                ]);
            }
        }
        if let Some(drain) = &mut self.drain {
            drain.report.completed += 1;
        }
    }

    /// Delivers what fits into each client's channel; drops finished and abandoned ones.
    fn flush_outboxes(&mut self) {
        let mut gone = Vec::new();
        for (&id, active) in &mut self.active {
            while let Some(event) = active.outbox.pop_front() {
                match active.sender.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        active.outbox.push_front(event);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        active.outbox.clear();
                        break;
                    }
                }
            }
            if active.sender.is_closed() || (active.done && active.outbox.is_empty()) {
                gone.push((id, active.done));
            }
        }
        for (id, done) in gone {
            if !done {
                // The client went away mid-generation: cancelled.
                self.scheduler.finish(id);
                self.metrics.record_finish(FinishReason::Cancelled.label());
            }
            self.active.remove(&id);
        }
    }

    /// Refuses requests that waited too long, and forgets those whose client left.
    fn expire_waiting(&mut self) {
        let timeout = self.config.queue_timeout;
        let expired: Vec<SeqId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= timeout || p.reply.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.scheduler.finish(id);
            if let Some(p) = self.pending.remove(&id) {
                if p.reply.is_closed() {
                    // The client left while waiting: nothing to answer, nothing refused.
                    self.metrics.record_finish(FinishReason::Cancelled.label());
                    continue;
                }
                self.metrics.record_rejection(Rejection::QueueTimeout);
                let _ = p.reply.send(Err(SubmitError::QueueTimeout {
                    waited: p.since.elapsed(),
                }));
            }
        }
    }

    fn start_drain(&mut self, timeout: Duration, reply: oneshot::Sender<DrainReport>) {
        if let Some(drain) = &mut self.drain {
            drain.replies.push(reply);
            return;
        }
        self.draining = true;
        let now = Instant::now();
        let mut report = DrainReport::default();
        // Queued requests computed nothing: refuse them at once.
        for (id, pending) in self.pending.drain() {
            self.scheduler.finish(id);
            if pending.reply.send(Err(SubmitError::Draining)).is_ok() {
                self.metrics.record_rejection(Rejection::Draining);
            } else {
                self.metrics.record_finish(FinishReason::Cancelled.label());
            }
            report.rejected += 1;
        }
        self.drain = Some(Drain {
            deadline: now + timeout,
            started: now,
            replies: vec![reply],
            report,
        });
        self.check_drain();
    }

    fn check_drain(&mut self) {
        let Some(drain) = &self.drain else {
            return;
        };
        let running = self.active.values().any(|a| !a.done);
        if running && Instant::now() < drain.deadline {
            return;
        }
        let ids: Vec<SeqId> = self
            .active
            .iter()
            .filter(|(_, a)| !a.done)
            .map(|(&id, _)| id)
            .collect();
        let aborted = ids.len();
        for id in ids {
            self.finish(id, FinishReason::Aborted);
        }
        self.flush_outboxes();
        if let Some(mut drain) = self.drain.take() {
            drain.report.completed -= aborted.min(drain.report.completed);
            drain.report.aborted = aborted;
            drain.report.elapsed = drain.started.elapsed();
            for reply in drain.replies {
                let _ = reply.send(drain.report);
            }
        }
    }

    pub(crate) fn publish_stats(&mut self, tokens_per_second: f64) {
        let pool = self.scheduler.pool();
        let snapshot = EngineStats {
            running: self.scheduler.running(),
            waiting: self.scheduler.waiting(),
            blocks_total: pool.total(),
            blocks_in_use: pool.in_use(),
            blocks_cached: pool.cached(),
            tokens_per_second,
            draining: self.draining,
            ..self.counters
        };
        if let Ok(mut stats) = self.stats.lock() {
            *stats = snapshot;
        }
    }
}
