//! The engine thread: owns the model and the KV pool, and runs forward steps for as long as
//! there is work, planning each under the admission lock (see [`super::admission`]) and
//! running it without.
//!
//! The thread never blocks on a client: events go into a per-request bounded channel with
//! `try_send`; what does not fit waits in that request's small outbox, and a request with a
//! non-empty outbox is **paused** (it runs no tokens, and gives up its batch slot and
//! blocks first when others need them) until its client catches up. A client that has
//! taken nothing for `stall_timeout` is ended (`aborted`); one that goes away is noticed
//! at the next step.
//!
//! **One retirement path.** Every admitted request ends in [`Worker::retire`], whatever the
//! cause ([`End`]): it leaves the scheduler, its finish reason is counted once, its drain
//! bookkeeping is updated and its last event queued for the client.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, Once, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::admission::{Admission, Book, Queued};
use super::config::{ARRIVAL_GATHER_MAX_WINDOWS, EngineConfig};
use super::handle::{DrainReport, EngineStats, EventStream, SubmitError};
use super::persistence::{PersistReport, Persistence};
use super::scheduler::{Phase, RestoreOrder, ScheduledChunk, Scheduler, SchedulerConfig, SeqId};
use super::sequence::{Event, FinishReason, SequenceState};
use super::served_model::ServedModel;
use super::step_cost::StepCost;
use super::step_profile::{StepKind, StepPhase, StepTimer};
use crate::cache_store::{KvDtype, KvLayout, KvStore, ReadOutcome, StoreIdentity, StoredBlocks};
use crate::metrics::engine::{AbortCause, EngineLatency, EngineMetrics, Rejection};
use crate::model::ModelError;
use crate::model::batch::SequenceChunk;
use crate::model::kv_cache::{KvCacheConfig, PagedKvCache};
use crate::model::loader::LoadedModel;

pub(crate) enum Command {
    /// Work was queued: plan a step.
    Wake,
    Drain {
        timeout: Duration,
        reply: oneshot::Sender<DrainReport>,
    },
    /// The disk store read the blocks of a restore (on its reader thread).
    Restored {
        id: SeqId,
        ticket: u64,
        outcome: ReadOutcome,
    },
    /// Shutdown: write what is only in the pool to disk; `None` without a store.
    Persist {
        timeout: Duration,
        reply: oneshot::Sender<Option<PersistReport>>,
    },
}

/// How an admitted request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// By itself (`stop` or `length`); its `Finished` event is already queued.
    Finished(FinishReason),
    /// It outgrew the whole pool while running alone: finish reason `length`.
    OutOfBlocks,
    /// The client went away.
    Cancelled,
    /// The engine ended it: finish reason `aborted`.
    Aborted(AbortCause),
}

impl End {
    fn reason(self) -> FinishReason {
        match self {
            End::Finished(reason) => reason,
            End::OutOfBlocks => FinishReason::Length,
            End::Cancelled => FinishReason::Cancelled,
            End::Aborted(_) => FinishReason::Aborted,
        }
    }
}

/// An admitted request: its generation state and what its client has not taken yet.
struct Live {
    state: SequenceState,
    sender: mpsc::Sender<Event>,
    outbox: VecDeque<Event>,
    timing: Timing,
    /// Retired: its last event is queued and its blocks are released; it leaves once the
    /// client has taken everything (or left).
    ended: bool,
    /// Since when events wait for a client that takes nothing.
    stalled_since: Option<Instant>,
    /// Since when it waits for re-admission after a preemption.
    requeued_since: Option<Instant>,
    /// Its agent: a manifest of its context is kept.
    agent: Option<String>,
}

/// What one step ran, for the step profile.
#[derive(Debug, Clone, Copy)]
struct StepRan {
    kind: StepKind,
    sequences: usize,
    /// New tokens run (prompt and decoded).
    tokens: usize,
    /// Tokens generated (sampled).
    generated: usize,
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

/// The memory this process may use, in bytes, which an automatically sized KV pool takes a
/// share of: the machine's, or its container's (cgroup) limit when that is lower. 0 when
/// neither is known.
fn machine_memory() -> u64 {
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    let total = system.total_memory();
    match system.cgroup_limits() {
        Some(limits) if limits.total_memory > 0 => limits.total_memory.min(total),
        _ => total,
    }
}

/// Read-held by every engine thread for each step. The process-exit hook takes it for
/// writing, for good, so C++ static destructors (MLX's allocator among them) never run
/// under a forward step when a process that embeds engines (a test binary) exits normally.
static STEP_GATE: RwLock<()> = RwLock::new(());
static EXIT_HOOK: Once = Once::new();

extern "C" fn stop_engines_at_exit() {
    // Waits for a step in progress; never released, so no thread enters MLX again.
    std::mem::forget(STEP_GATE.write().unwrap_or_else(|p| p.into_inner()));
}

/// Registers [`stop_engines_at_exit`] after MLX's first use, so it runs before MLX's
/// destructors (exit handlers run in reverse order of registration).
fn register_exit_hook() {
    #[cfg(unix)]
    EXIT_HOOK.call_once(|| {
        // SAFETY: registers a plain function with no captured state.
        unsafe {
            libc::atexit(stop_engines_at_exit);
        }
    });
}

pub(crate) struct Worker {
    loaded: LoadedModel,
    cache: PagedKvCache,
    admission: Arc<Admission>,
    config: EngineConfig,
    stats: Arc<Mutex<EngineStats>>,
    metrics: Arc<EngineMetrics>,
    live: HashMap<SeqId, Live>,
    drain: Option<Drain>,
    counters: EngineStats,
    /// Mixed into the seed of requests without one, so unseeded requests differ between
    /// runs (OpenAI semantics) while staying independent of each other.
    seed_base: u64,
    /// The disk tier, when configured.
    persistence: Option<Persistence>,
    /// The engine's own inbox, for the store's reader thread to answer restores.
    commands: std::sync::mpsc::Sender<Command>,
    /// Measured step costs, which size the prompt tokens of steps that also decode.
    step_cost: StepCost,
}

impl Worker {
    pub(crate) fn new(
        load: impl FnOnce() -> Result<LoadedModel, ModelError>,
        config: EngineConfig,
        stats: Arc<Mutex<EngineStats>>,
        metrics: Arc<EngineMetrics>,
        commands: std::sync::mpsc::Sender<Command>,
    ) -> Result<Self, ModelError> {
        let loaded = load()?;
        register_exit_hook();
        let model_config = loaded.model.config().clone();
        let dtype = loaded.model.compute_dtype();
        let budget = config
            .kv_pool
            .budget(
                KvCacheConfig::bytes_per_block(1, &model_config, dtype),
                config.max_batch.max(1),
                model_config.context_length,
                machine_memory(),
            )
            .map_err(ModelError::KvCache)?;
        let kv = KvCacheConfig::from_budget(budget, config.block_size, &model_config, dtype)
            .map_err(ModelError::KvCache)?;
        let cache = PagedKvCache::new(kv, &model_config, dtype)?;
        let reserved =
            kv.num_blocks * KvCacheConfig::bytes_per_block(kv.block_size, &model_config, dtype);
        tracing::info!(
            size = ?config.kv_pool,
            reserved_mib = reserved >> 20,
            tokens = kv.total_tokens(),
            "KV pool reserved; memory becomes resident as blocks fill"
        );
        let store = match &config.kv_store {
            Some(store_config) => {
                let identity = StoreIdentity {
                    fingerprint: loaded.identity.fingerprint.clone(),
                    layout: KvLayout {
                        layers: model_config.num_layers,
                        kv_heads: model_config.num_kv_heads,
                        head_dim: model_config.head_dim,
                        block_size: kv.block_size,
                        dtype: match dtype {
                            mlx_rs::Dtype::Float16 => KvDtype::F16,
                            mlx_rs::Dtype::Bfloat16 => KvDtype::BF16,
                            _ => KvDtype::F32,
                        },
                    },
                };
                let store = KvStore::open(store_config.clone(), identity).map_err(|e| {
                    ModelError::KvCache(if e.kind() == std::io::ErrorKind::InvalidInput {
                        e.to_string()
                    } else {
                        format!(
                            "cannot open the KV store in {}: {e} (set --kv-store-dir to a \
                             writable folder)",
                            store_config.root.display()
                        )
                    })
                })?;
                Some(Arc::new(store))
            }
            None => None,
        };
        let stored = store
            .as_ref()
            .map_or_else(StoredBlocks::default, |s| s.stored());
        metrics.attach_store(store.clone());
        let scheduler = Scheduler::new(
            SchedulerConfig {
                block_size: kv.block_size,
                num_blocks: kv.num_blocks,
                context_length: model_config.context_length,
                max_batch: config.max_batch.max(1),
                max_step_tokens: config.max_step_tokens.max(1),
                prefill_chunk: config.prefill_chunk.max(1),
                max_queue: config.max_queue,
                watermark_blocks: config.watermark_blocks,
            },
            stored,
        );
        let admission = Arc::new(Admission::new(
            Book::new(scheduler),
            Arc::clone(&metrics),
            config.queue_timeout,
        ));
        Ok(Worker {
            loaded,
            cache,
            admission,
            config,
            stats,
            metrics,
            live: HashMap::new(),
            drain: None,
            counters: EngineStats::default(),
            seed_base: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5EED, |d| d.as_nanos() as u64),
            persistence: store.map(Persistence::new),
            commands,
            step_cost: StepCost::default(),
        })
    }

    /// The disk store, if configured (the handle's admin views use it).
    pub(crate) fn store(&self) -> Option<Arc<KvStore>> {
        self.persistence.as_ref().map(|p| Arc::clone(p.store()))
    }

    pub(crate) fn served_model(&self) -> ServedModel {
        ServedModel::new(
            self.loaded.identity.clone(),
            Arc::clone(&self.loaded.tokenizer),
            Arc::clone(&self.loaded.chat_template),
            self.loaded.model.config().vocab_size,
        )
    }

    pub(crate) fn admission(&self) -> Arc<Admission> {
        Arc::clone(&self.admission)
    }

    fn idle(&self) -> bool {
        self.live.is_empty() && self.drain.is_none() && self.admission.lock().queued.is_empty()
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
            self.gather_arrivals(&inbox);
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
            self.expire();
            self.check_drain();
            let started = Instant::now();
            let mut timer = StepTimer::start();
            let ran = {
                let _gate = STEP_GATE.read().unwrap_or_else(|p| p.into_inner());
                self.step(&mut timer)
            };
            let generated = ran.map_or(0, |ran| ran.generated);
            let elapsed = started.elapsed().as_secs_f64();
            let rate = if elapsed > 0.0 {
                generated as f64 / elapsed
            } else {
                0.0
            };
            if let Some(ran) = ran {
                self.counters
                    .profile
                    .add(ran.kind, ran.sequences, ran.tokens, &timer);
            }
            // Before the step's events go out: a client that has its last event sees stats
            // in which its blocks are already back (and this step in the profile).
            self.publish_stats(rate);
            self.flush_outboxes();
            if let Some(ran) = ran {
                self.counters.profile.add_phase(
                    ran.kind,
                    StepPhase::Deliver,
                    timer.since_last_lap(),
                );
            }
            if generated == 0 && !self.idle() {
                // Only paused or waiting work: wait briefly for a command or a client.
                match inbox.recv_timeout(Duration::from_millis(2)) {
                    Ok(command) => self.handle(command),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
            }
        }
    }

    /// Before an engine with nothing running starts on the requests queued, takes the
    /// requests sent with them: it waits until none has come for `arrival_gather`, and no
    /// longer than [`ARRIVAL_GATHER_MAX_WINDOWS`] windows after the oldest was queued.
    /// Requests sent together (a client's parallel calls, the streams of a closed loop
    /// that ended in one step) then prefill in one step and decode in step; started one by
    /// one, the later ones' prefills would stall the earlier ones' streams.
    fn gather_arrivals(&mut self, inbox: &Receiver<Command>) {
        let window = self.config.arrival_gather;
        if window.is_zero() || !self.live.is_empty() {
            return;
        }
        let oldest = self
            .admission
            .lock()
            .queued
            .values()
            .map(|q| q.submitted)
            .min();
        let Some(oldest) = oldest else {
            return;
        };
        let started = Instant::now();
        let until = oldest + window * ARRIVAL_GATHER_MAX_WINDOWS;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match inbox.recv_timeout(window.min(left)) {
                Ok(command) => self.handle(command),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        tracing::debug!(
            waited_us = started.elapsed().as_micros() as u64,
            queued = self.admission.lock().queued.len(),
            "gathered arrivals"
        );
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Wake => {}
            Command::Drain { timeout, reply } => self.start_drain(timeout, reply),
            Command::Restored {
                id,
                ticket,
                outcome,
            } => self.apply_restore(id, ticket, outcome),
            Command::Persist { timeout, reply } => {
                let report = self.persistence.as_mut().map(|p| {
                    let book = self.admission.lock();
                    p.persist_all(&self.cache, &book.scheduler, timeout)
                });
                let _ = reply.send(report);
            }
        }
    }

    /// Sends a restore's blocks to the store's reader; the answer comes back as
    /// [`Command::Restored`].
    fn start_restore(&self, order: RestoreOrder) {
        let Some(persistence) = &self.persistence else {
            return;
        };
        let commands = self.commands.clone();
        let (id, ticket) = (order.id, order.ticket);
        persistence.store().read(order.wants, move |outcome| {
            let _ = commands.send(Command::Restored {
                id,
                ticket,
                outcome,
            });
        });
    }

    /// Writes the blocks a restore read into the sequence's pool blocks; the sequence
    /// then prefills only what is left. Blocks that did not come back are prefilled.
    fn apply_restore(&mut self, id: SeqId, ticket: u64, outcome: ReadOutcome) {
        let Some(blocks) = self.admission.lock().scheduler.restore_blocks(id, ticket) else {
            return;
        };
        let count = outcome.records.len().min(blocks.len());
        let data: Vec<(&[u8], &[u8])> = outcome.records[..count]
            .iter()
            .map(|r| (r.keys.as_slice(), r.values.as_slice()))
            .collect();
        let loaded = if count == 0 {
            0
        } else {
            match self.cache.write_blocks(&blocks[..count], &data) {
                Ok(()) => count,
                Err(e) => {
                    tracing::warn!(request = id, error = %e, "cannot write restored KV blocks; prefilling instead");
                    0
                }
            }
        };
        let cached = self.admission.lock().scheduler.restored(id, ticket, loaded);
        let restored_tokens = loaded * self.cache.config().block_size;
        self.metrics
            .record_restore(restored_tokens, outcome.elapsed);
        if let Some(live) = self.live.get_mut(&id) {
            live.state.set_cached_tokens(cached);
        }
        let _ = self.commands.send(Command::Wake);
    }

    /// Plans and runs one forward step, timing its phases on `timer`; says what ran, or
    /// `None` when no forward pass did.
    fn step(&mut self, timer: &mut StepTimer) -> Option<StepRan> {
        let now = Instant::now();
        let (mut step, admitted, refused) = {
            let mut book = self.admission.lock();
            for (&id, live) in &self.live {
                if !live.ended {
                    book.scheduler.set_paused(id, !live.outbox.is_empty());
                }
            }
            book.scheduler.set_prompt_budget_while_decoding(
                self.step_cost
                    .prompt_budget(self.config.decode_stall_factor),
            );
            let step = book.scheduler.schedule();
            let admitted: Vec<(SeqId, usize, Queued)> = step
                .admitted
                .iter()
                .filter_map(|&(id, cached)| book.queued.remove(&id).map(|q| (id, cached, q)))
                .collect();
            let refused: Vec<(Queued, Rejection, SubmitError)> = step
                .refused
                .iter()
                .filter_map(|&(id, busy)| {
                    let queued = book.queued.remove(&id)?;
                    Some((queued, Rejection::from(busy), SubmitError::Busy(busy)))
                })
                .collect();
            // Sequences back in the queue wait under the queue deadline.
            for (&id, live) in &mut self.live {
                let waiting = book.scheduler.phase(id) == Some(Phase::Waiting);
                live.requeued_since = match (waiting, live.requeued_since) {
                    (true, None) => Some(now),
                    (true, since) => since,
                    (false, _) => None,
                };
            }
            (step, admitted, refused)
        };
        for (queued, rejection, error) in refused {
            self.answer_refused(queued, rejection, error);
        }
        self.counters.preemptions += step.preempted.len() as u64;
        self.counters.paused_preemptions += step.parked.len() as u64;
        for (id, cached, queued) in admitted {
            self.start(id, cached, queued);
        }
        for order in step.restores.iter().cloned() {
            if self.live.contains_key(&order.id) {
                self.start_restore(order);
            }
        }
        if let Some(persistence) = &mut self.persistence {
            persistence.offer(std::mem::take(&mut step.persist), &self.cache);
        }
        for &id in &step.out_of_blocks {
            tracing::warn!(
                request = id,
                "a generation outgrew the whole KV pool; ending it with finish reason `length`"
            );
            self.retire(id, End::OutOfBlocks);
        }
        let chunks: Vec<&ScheduledChunk> = step
            .chunks
            .iter()
            .filter(|c| self.live.get(&c.id).is_some_and(|l| !l.ended))
            .collect();
        timer.lap(StepPhase::Schedule);
        let (chunks, logits, build) = self.forward(chunks)?;
        let prompt_tokens: usize = chunks
            .iter()
            .filter(|c| !c.decodes())
            .map(|c| c.tokens.len())
            .sum();
        // The forward pass is this lap: planning, building and evaluating.
        self.step_cost
            .observe(prompt_tokens, timer.since_last_lap());
        timer.lap(StepPhase::Evaluate);
        timer.move_into(StepPhase::Build, build.as_secs_f64(), StepPhase::Evaluate);
        let ran = StepRan {
            kind: if chunks.iter().all(|c| c.decodes()) {
                StepKind::Decode
            } else {
                StepKind::Prefill
            },
            sequences: chunks.len(),
            tokens: chunks.iter().map(|c| c.tokens.len()).sum(),
            generated: 0,
        };
        let logits = logits.as_slice::<f32>();
        let vocab = self.loaded.model.config().vocab_size;
        let now = Instant::now();
        let mut observations = Vec::new();
        let mut generated = 0;
        let mut ended = Vec::new();
        let mut completions = Vec::with_capacity(chunks.len());
        for (row, chunk) in chunks.iter().enumerate() {
            if !chunk.samples {
                completions.push((chunk.id, chunk.tokens.len(), None));
                continue;
            }
            let Some(live) = self.live.get_mut(&chunk.id) else {
                continue;
            };
            timer.lap(StepPhase::Bookkeeping);
            let sampled = live.state.sample(&logits[row * vocab..(row + 1) * vocab]);
            timer.lap(StepPhase::Sample);
            let accepted = live.state.accept(sampled);
            timer.lap(StepPhase::Detokenize);
            match accepted {
                Ok((token, events)) => {
                    generated += 1;
                    live.timing.token(now, &mut observations);
                    completions.push((chunk.id, chunk.tokens.len(), Some(token)));
                    if let Some(reason) = events.iter().find_map(|e| match e {
                        Event::Finished { reason, .. } => Some(*reason),
                        Event::Token { .. } => None,
                    }) {
                        ended.push((chunk.id, End::Finished(reason)));
                    }
                    live.outbox.extend(events);
                }
                Err(e) => {
                    tracing::error!(request = chunk.id, error = %e, "detokenization failed");
                    ended.push((chunk.id, End::Aborted(AbortCause::Detokenizer)));
                }
            }
        }
        {
            let mut book = self.admission.lock();
            let mut full = Vec::new();
            for (id, computed, sampled) in completions {
                full.extend(book.scheduler.complete(id, computed, sampled));
            }
            if let Some(persistence) = &mut self.persistence {
                persistence.retry(&self.cache, &book.scheduler);
                persistence.offer(full, &self.cache);
            }
        }
        self.metrics.record(observations);
        for (id, end) in ended {
            self.retire(id, end);
        }
        self.counters.generated_tokens += generated as u64;
        timer.lap(StepPhase::Bookkeeping);
        Some(StepRan { generated, ..ran })
    }

    /// Runs the model over `chunks`. A chunk the model refuses to plan (an inconsistent
    /// block table or token) ends only its own request, and the step runs without it; a
    /// failure of the step itself ends every request in it. Returns the chunks that ran
    /// and their logits, `[chunks, vocab]`, with the time it took to build the graph.
    fn forward<'a>(
        &mut self,
        mut chunks: Vec<&'a ScheduledChunk>,
    ) -> Option<(Vec<&'a ScheduledChunk>, mlx_rs::Array, Duration)> {
        loop {
            if chunks.is_empty() {
                return None;
            }
            let plan: Vec<SequenceChunk<'_>> = chunks
                .iter()
                .map(|c| SequenceChunk {
                    tokens: &c.tokens,
                    cached: c.cached,
                    block_table: &c.block_table,
                })
                .collect();
            match self.loaded.model.forward_timed(&plan, &mut self.cache) {
                Ok((logits, build)) => return Some((chunks, logits, build)),
                Err(ModelError::Batch(error)) if error.sequence().is_some() => {
                    let index = error.sequence().unwrap_or_default();
                    let id = chunks[index].id;
                    tracing::error!(request = id, %error, "the step's plan refused a sequence; aborting it");
                    chunks.remove(index);
                    self.retire(id, End::Aborted(AbortCause::StepFailed));
                }
                Err(error) => {
                    tracing::error!(%error, "forward step failed; aborting its sequences");
                    let ids: Vec<SeqId> = chunks.iter().map(|c| c.id).collect();
                    for id in ids {
                        self.retire(id, End::Aborted(AbortCause::StepFailed));
                    }
                    return None;
                }
            }
        }
    }

    /// Opens the stream of a request admitted for the first time.
    fn start(&mut self, id: SeqId, cached: usize, queued: Queued) {
        let (sender, receiver) = mpsc::channel(self.config.event_buffer.max(2));
        let seed = self.seed_base ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut state =
            SequenceState::new(&queued.request, Arc::clone(&self.loaded.tokenizer), seed);
        state.set_cached_tokens(cached);
        if queued.reply.send(Ok(EventStream { receiver })).is_err() {
            // The client left while its request waited; nothing was computed for it.
            self.admission.lock().scheduler.finish(id);
            self.metrics.record_finish(FinishReason::Cancelled.label());
            return;
        }
        let now = Instant::now();
        self.metrics
            .record_admission(queued.request.prompt.len(), cached);
        self.metrics
            .record([(EngineLatency::QueueWait, now - queued.submitted)]);
        self.live.insert(
            id,
            Live {
                state,
                sender,
                outbox: VecDeque::new(),
                timing: Timing {
                    submitted: queued.submitted,
                    admitted: now,
                    first_token: None,
                    last_token: None,
                },
                ended: false,
                stalled_since: None,
                requeued_since: None,
                agent: queued.request.agent.clone(),
            },
        );
    }

    /// Answers a queued request that will not run.
    fn answer_refused(&mut self, queued: Queued, rejection: Rejection, error: SubmitError) {
        if queued.reply.send(Err(error)).is_ok() {
            self.metrics.record_rejection(rejection);
        } else {
            self.metrics.record_finish(FinishReason::Cancelled.label());
        }
    }

    /// Ends admitted request `id` for good: it leaves the scheduler (its blocks go back),
    /// its finish reason is counted, the drain report learns how it ended, and its client
    /// gets the `Finished` event (unless it left).
    fn retire(&mut self, id: SeqId, end: End) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        if live.ended {
            return;
        }
        live.ended = true;
        {
            let mut book = self.admission.lock();
            if let (Some(agent), Some(persistence)) = (&live.agent, &self.persistence) {
                let (hashes, tokens) = book.scheduler.computed_blocks(id);
                persistence.write_manifest(agent, &hashes, tokens);
            }
            book.scheduler.finish(id);
        }
        let reason = end.reason();
        self.metrics.record_finish(reason.label());
        match end {
            End::Finished(_) => {}
            End::Cancelled => {
                self.live.remove(&id);
            }
            End::OutOfBlocks | End::Aborted(_) => match live.state.finish(reason) {
                Ok(event) => live.outbox.push_back(event),
                Err(e) => tracing::error!(request = id, error = %e, "detokenization failed"),
            },
        }
        if let End::Aborted(cause) = end {
            tracing::warn!(request = id, cause = cause.as_str(), "generation aborted");
            self.metrics.record_abort(cause);
        }
        if matches!(reason, FinishReason::Stop | FinishReason::Length)
            && let Some(live) = self.live.get(&id)
        {
            let now = Instant::now();
            let timing = &live.timing;
            let first = timing.first_token.unwrap_or(now);
            self.metrics.record([
                (
                    EngineLatency::Decode,
                    timing.last_token.unwrap_or(now) - first,
                ),
                (EngineLatency::EndToEnd, now - timing.submitted),
            ]);
        }
        if let Some(drain) = &mut self.drain {
            match reason {
                FinishReason::Stop | FinishReason::Length => drain.report.completed += 1,
                FinishReason::Aborted => drain.report.aborted += 1,
                FinishReason::Cancelled => drain.report.cancelled += 1,
            }
        }
    }

    /// Delivers what fits into each client's channel; notices clients that left and those
    /// that stopped taking events; drops requests whose last event was delivered.
    fn flush_outboxes(&mut self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut delivered_all = Vec::new();
        for (&id, live) in &mut self.live {
            let before = live.outbox.len();
            while let Some(event) = live.outbox.pop_front() {
                match live.sender.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(event)) => {
                        live.outbox.push_front(event);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        live.outbox.clear();
                        break;
                    }
                }
            }
            if live.sender.is_closed() {
                gone.push(id);
                continue;
            }
            live.stalled_since = match (live.outbox.is_empty(), live.outbox.len() < before) {
                (true, _) => None,
                // The client took something: it is reading, only behind.
                (false, true) => Some(now),
                (false, false) => live.stalled_since.or(Some(now)),
            };
            if live.ended && live.outbox.is_empty() {
                delivered_all.push(id);
            }
        }
        for id in gone {
            self.retire(id, End::Cancelled);
            self.live.remove(&id);
        }
        for id in delivered_all {
            self.live.remove(&id);
        }
    }

    /// Ends requests whose client took nothing for the stall timeout, and preempted ones
    /// that waited longer than the queue timeout to run again.
    fn expire(&mut self) {
        let expired: Vec<(SeqId, AbortCause)> = self
            .live
            .iter()
            .filter(|(_, live)| !live.ended)
            .filter_map(|(&id, live)| {
                if live
                    .stalled_since
                    .is_some_and(|since| since.elapsed() >= self.config.stall_timeout)
                {
                    Some((id, AbortCause::Stalled))
                } else if live
                    .requeued_since
                    .is_some_and(|since| since.elapsed() >= self.config.queue_timeout)
                {
                    Some((id, AbortCause::QueueTimeout))
                } else {
                    None
                }
            })
            .collect();
        for (id, cause) in expired {
            self.retire(id, End::Aborted(cause));
        }
    }

    fn start_drain(&mut self, timeout: Duration, reply: oneshot::Sender<DrainReport>) {
        if let Some(drain) = &mut self.drain {
            drain.replies.push(reply);
            return;
        }
        let now = Instant::now();
        let refused: Vec<Queued> = {
            let mut book = self.admission.lock();
            book.draining = true;
            let ids: Vec<SeqId> = book.queued.keys().copied().collect();
            ids.into_iter().filter_map(|id| book.withdraw(id)).collect()
        };
        let mut report = DrainReport::default();
        // Queued requests computed nothing: refuse them at once.
        for queued in refused {
            report.rejected += 1;
            self.answer_refused(queued, Rejection::Draining, SubmitError::Draining);
        }
        self.counters.draining = true;
        self.drain = Some(Drain {
            deadline: now + timeout,
            started: now,
            replies: vec![reply],
            report,
        });
        self.check_drain();
    }

    /// Reports the drain once nothing runs; at the deadline, aborts what still does.
    fn check_drain(&mut self) {
        let Some(drain) = &self.drain else {
            return;
        };
        let running: Vec<SeqId> = self
            .live
            .iter()
            .filter(|(_, live)| !live.ended)
            .map(|(&id, _)| id)
            .collect();
        if !running.is_empty() && Instant::now() < drain.deadline {
            return;
        }
        for id in running {
            self.retire(id, End::Aborted(AbortCause::DrainTimeout));
        }
        self.flush_outboxes();
        // What the report says (nothing runs, every block is back) is what stats say.
        self.publish_stats(0.0);
        if let Some(mut drain) = self.drain.take() {
            drain.report.elapsed = drain.started.elapsed();
            for reply in drain.replies {
                let _ = reply.send(drain.report);
            }
        }
    }

    pub(crate) fn publish_stats(&mut self, tokens_per_second: f64) {
        let snapshot = {
            let book = self.admission.lock();
            let scheduler = &book.scheduler;
            let pool = scheduler.pool();
            EngineStats {
                running: scheduler.running(),
                paused: scheduler.paused(),
                waiting: scheduler.waiting(),
                parked: scheduler.parked(),
                batch_saturated: scheduler.batch_saturated(),
                blocks_total: pool.total(),
                blocks_in_use: pool.in_use(),
                blocks_cached: pool.cached(),
                tokens_per_second,
                ..self.counters
            }
        };
        if let Ok(mut stats) = self.stats.lock() {
            *stats = snapshot;
        }
    }
}

impl Drop for Worker {
    /// The thread is ending (all handles gone, or a panic): nothing queued will ever be
    /// admitted, so every waiting request is answered now.
    fn drop(&mut self) {
        let mut book = self.admission.lock();
        book.stopped = true;
        let ids: Vec<SeqId> = book.queued.keys().copied().collect();
        for id in ids {
            if let Some(queued) = book.withdraw(id) {
                let _ = queued.reply.send(Err(SubmitError::Stopped));
            }
        }
    }
}
