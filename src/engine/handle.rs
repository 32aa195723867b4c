//! `EngineHandle`: the async side's view of the engine. Cheap to clone. Queueing and
//! refusing happen on the caller's thread under the admission lock (see
//! [`super::admission`]); everything else is a message to the thread that owns the model
//! (MLX arrays never leave it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::admission::{Admission, Book, Pending, Queued};
use super::block_pool::BlockHash;
use super::config::{EngineConfig, StorePolicy};
use super::persistence::PersistReport;
use super::priority;
use super::sampling::SamplingError;
use super::scheduler::{AdmitError, Busy, CacheScope, Persist, RoomId};
use super::sequence::{Event, GenerationRequest};
use super::served_model::ServedModel;
use super::step_profile::StepProfile;
use super::worker::{Command, Worker};
use crate::cache_store::KvStore;
use crate::metrics::engine::{EngineMetrics, Rejection};
use crate::model::ModelError;
use crate::model::loader::LoadedModel;

/// Why a request was not started. Each maps to one HTTP status in the API layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The prompt (or the request's number of prompts) can never be served.
    #[error(transparent)]
    Invalid(AdmitError),
    /// A prompt token id the model does not have.
    #[error("prompt token id {token} is outside the vocabulary of {vocab} ids")]
    TokenOutOfVocabulary { token: u32, vocab: usize },
    /// Sampling settings out of range; names the field.
    #[error(transparent)]
    InvalidSampling(SamplingError),
    /// The queue bound: the request cannot wait (see [`Busy`] for why).
    #[error("the server is at capacity: {0}")]
    Busy(Busy),
    /// Waited longer than the queue timeout for a batch slot and KV blocks.
    #[error("timed out after {waited:?} waiting for a batch slot and KV cache blocks")]
    QueueTimeout { waited: Duration },
    /// The engine is draining for shutdown.
    #[error("the server is shutting down")]
    Draining,
    /// The engine thread is gone (it failed or was stopped).
    #[error("the inference engine is not running")]
    Stopped,
}

/// What a drain did, counting each generation once by how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// In-flight generations that finished on their own (`stop` or `length`).
    pub completed: usize,
    /// Generations the engine ended with finish reason `aborted`: at the drain deadline,
    /// or earlier (a stalled client, a failed step, a preempted one past its deadline).
    pub aborted: usize,
    /// Generations whose client left during the drain.
    pub cancelled: usize,
    /// Queued requests refused with `Draining`.
    pub rejected: usize,
    pub elapsed: Duration,
}

/// A snapshot of the engine, refreshed every step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineStats {
    /// Sequences holding a batch slot (paused ones included).
    pub running: usize,
    /// Running sequences whose client is behind (they run no tokens).
    pub paused: usize,
    /// Generations waiting for admission (new and preempted).
    pub waiting: usize,
    /// Sequences that gave up their slot while their client was behind.
    pub parked: usize,
    /// Every batch slot is busy with an unpaused sequence and generations wait for one.
    pub batch_saturated: bool,
    pub blocks_total: usize,
    pub blocks_in_use: usize,
    pub blocks_cached: usize,
    pub generated_tokens: u64,
    /// Generated tokens per second over the last step.
    pub tokens_per_second: f64,
    /// Sequences preempted for blocks (recomputed later).
    pub preemptions: u64,
    /// Paused sequences that gave up their slot and blocks to others.
    pub paused_preemptions: u64,
    pub draining: bool,
    /// Where the engine thread's step time went, by kind of step and phase.
    pub profile: StepProfile,
}

impl EngineStats {
    /// Blocks in use over all blocks (0 for an empty pool): what readiness compares with
    /// `--ready-max-kv-usage`. Cached blocks are free to take, so they do not count.
    pub fn kv_usage_ratio(&self) -> f64 {
        if self.blocks_total == 0 {
            0.0
        } else {
            self.blocks_in_use as f64 / self.blocks_total as f64
        }
    }
}

/// The events of one generation. Dropping it cancels the generation: the engine frees its
/// blocks within one step.
#[derive(Debug)]
pub struct EventStream {
    pub(crate) receiver: mpsc::Receiver<Event>,
}

impl EventStream {
    /// The next event; `None` after `Finished` (or if the engine stopped).
    pub async fn next(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }
}

/// Room in the queue held for a request whose prompts are still being prepared
/// ([`EngineHandle::reserve`]): later arrivals are judged as if it were queued already.
/// Handed to [`EngineHandle::submit_all`], it becomes the request's place; dropped (the
/// request failed or its client left), it is given back. The engine gives it up itself
/// when earlier requests' prompts leave it no chance ([`Room::revoked`]).
pub struct Room {
    admission: Arc<Admission>,
    /// The room held; `None` once handed over (or when none was needed).
    held: Option<RoomId>,
    /// Answers, with the refusal, if the engine gives the room up.
    revocation: Option<oneshot::Receiver<Busy>>,
}

impl Room {
    /// Resolves when the engine gives this room up, with the refusal its request would
    /// get at submission: prompts submitted since it was granted turned out larger than
    /// counted, and now even the smallest prompts would overfill the queue. Race it
    /// against preparing the prompts, so that such a request is refused at once instead
    /// of after its turn at tokenization. Never resolves while the room holds (or when
    /// none was held).
    pub async fn revoked(&mut self) -> SubmitError {
        let Some(revocation) = self.revocation.as_mut() else {
            return std::future::pending().await;
        };
        let Ok(busy) = revocation.await else {
            // Only dropped with the room, once given back or handed over.
            return std::future::pending().await;
        };
        self.revocation = None;
        self.held = None;
        self.admission
            .metrics
            .record_rejection(Rejection::from(busy));
        SubmitError::Busy(busy)
    }
}

impl Room {
    /// Takes the room out for its request's submission, under the admission lock: the id
    /// to submit in, or the refusal if the engine gave it up, or `None` if none was held.
    fn hand_over(&mut self, book: &mut Book) -> Option<Result<RoomId, Busy>> {
        let revoked = self.revocation.take().and_then(|mut r| r.try_recv().ok());
        let held = self.held.take()?;
        book.revocations.remove(&held);
        Some(revoked.map_or(Ok(held), Err))
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some(room) = self.held.take() {
            let mut book = self.admission.lock();
            book.scheduler.release_room(room);
            book.revocations.remove(&room);
        }
    }
}

/// Handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    commands: std::sync::mpsc::Sender<Command>,
    admission: Arc<Admission>,
    stats: Arc<Mutex<EngineStats>>,
    model: Arc<ServedModel>,
    thread: Arc<std::thread::JoinHandle<()>>,
    persist: PersistScopes,
    store: Option<Arc<KvStore>>,
}

/// What goes to disk for requests with and without an agent id.
#[derive(Debug, Clone, Copy)]
struct PersistScopes {
    agent: Persist,
    non_agent: Persist,
}

impl EngineHandle {
    /// Starts the engine thread, which runs `load` (the model must be created on the thread
    /// that uses it) and then serves, recording into `metrics`. Returns once the model is
    /// loaded, or with its error.
    pub fn start(
        load: impl FnOnce() -> Result<LoadedModel, ModelError> + Send + 'static,
        config: EngineConfig,
        metrics: Arc<EngineMetrics>,
    ) -> Result<EngineHandle, ModelError> {
        let (commands, inbox) = std::sync::mpsc::channel();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let worker_stats = Arc::clone(&stats);
        let worker_commands = commands.clone();
        let non_agent = if config.kv_store.is_some() {
            match config.store_policy {
                StorePolicy::Agents => Persist::Nothing,
                StorePolicy::Reused => Persist::Reused,
                StorePolicy::All => Persist::All,
            }
        } else {
            Persist::Nothing
        };
        let agent = if config.kv_store.is_some() {
            Persist::All
        } else {
            Persist::Nothing
        };
        let thread = std::thread::Builder::new()
            .name("mlx-engine".to_owned())
            .spawn(move || {
                priority::yield_to_front_end();
                match Worker::new(load, config, worker_stats, metrics, worker_commands) {
                    Ok(mut worker) => {
                        // Stats are valid from the moment `start` returns.
                        worker.publish_stats(0.0);
                        let _ = ready_tx.send(Ok((
                            worker.served_model(),
                            worker.admission(),
                            worker.store(),
                        )));
                        worker.run(inbox);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| ModelError::KvCache(format!("cannot start the engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok((model, admission, store))) => Ok(EngineHandle {
                commands,
                admission,
                stats,
                model: Arc::new(model),
                thread: Arc::new(thread),
                persist: PersistScopes { agent, non_agent },
                store,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ModelError::KvCache(
                "the engine thread died while loading the model".to_owned(),
            )),
        }
    }

    /// Queues one generation and waits for its admission: the event stream, or why it was
    /// refused (at once for invalid requests and a full queue; after the queue timeout when
    /// it could not start in time).
    pub async fn submit(&self, request: GenerationRequest) -> Result<EventStream, SubmitError> {
        match self.submit_all(vec![request], None)?.pop() {
            Some(pending) => pending.admitted().await,
            None => Err(SubmitError::Stopped),
        }
    }

    /// Queues the generations of one request, all or none, and answers at once: a ticket
    /// per generation (in order) that resolves on admission, or why none was queued —
    /// invalid input, a drain, or [`SubmitError::Busy`] when more generations than
    /// `max_queue` would be left waiting (each prompt counts). The request's `room`, if it
    /// reserved one, is given back as its generations take their place. Never waits for
    /// the engine thread.
    pub fn submit_all(
        &self,
        mut requests: Vec<GenerationRequest>,
        room: Option<Room>,
    ) -> Result<Vec<Pending>, SubmitError> {
        let context = self.model.identity.context_length;
        let vocab = self.model.vocab_size();
        for request in &mut requests {
            request
                .sampling
                .validate()
                .map_err(SubmitError::InvalidSampling)?;
            if let Some(&token) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(SubmitError::TokenOutOfVocabulary { token, vocab });
            }
            // Never generate past the context; the scheduler refuses a prompt that fills it.
            request.max_tokens = request
                .max_tokens
                .min(context.saturating_sub(request.prompt.len()))
                .max(1);
        }
        let metrics = &self.admission.metrics;
        let submitted = Instant::now();
        // On the early returns below, `room` (a parameter) is dropped after `book` (a
        // local), so its `Drop` takes the lock only once it is free.
        let mut book = self.admission.lock();
        if book.stopped {
            return Err(SubmitError::Stopped);
        }
        if book.draining {
            metrics.record_rejection(Rejection::Draining);
            return Err(SubmitError::Draining);
        }
        let ids = book.ids(requests.len());
        let prompts = ids
            .iter()
            .zip(&requests)
            .map(|(&id, request)| (id, request.prompt.clone()))
            .collect();
        // One request's generations share its agent and key.
        let scope = requests
            .first()
            .map_or_else(CacheScope::default, |r| CacheScope {
                salt: r.cache_salt,
                persist: if r.agent.is_some() {
                    self.persist.agent
                } else {
                    self.persist.non_agent
                },
            });
        // Taken under the lock, so that the room passes to the prompts in one verdict.
        let queued = match room.and_then(|mut room| room.hand_over(&mut book)) {
            Some(Ok(held)) => book.scheduler.submit_in_room(prompts, scope, held),
            Some(Err(busy)) => Err(AdmitError::Busy(busy)),
            None => book.scheduler.submit(prompts, scope),
        };
        queued.map_err(|error| match error {
            AdmitError::Busy(busy) => {
                metrics.record_rejection(Rejection::from(busy));
                SubmitError::Busy(busy)
            }
            invalid => SubmitError::Invalid(invalid),
        })?;
        // Prompts larger than their room's estimate may leave later rooms no chance.
        book.revoke_rooms();
        let mut pending = Vec::with_capacity(requests.len());
        for (id, request) in ids.into_iter().zip(requests) {
            let (reply, answer) = oneshot::channel();
            book.queued.insert(
                id,
                Queued {
                    request,
                    reply,
                    submitted,
                },
            );
            pending.push(Pending::new(
                id,
                answer,
                submitted,
                Arc::clone(&self.admission),
            ));
        }
        drop(book);
        // Wakes the engine thread if it is idle; it plans the next step at once otherwise.
        let _ = self.commands.send(Command::Wake);
        Ok(pending)
    }

    /// Refuses at once a request of `generations` prompts that [`EngineHandle::submit_all`]
    /// would refuse whatever its prompts (a full queue, a drain), so an overloaded server
    /// answers before spending time on preparing the prompts; otherwise holds room for
    /// them in the queue while they are prepared (see [`Room`]). Passing this is no
    /// promise: `submit_all` decides with the prompts.
    pub fn reserve(&self, generations: usize) -> Result<Room, SubmitError> {
        let metrics = &self.admission.metrics;
        let mut book = self.admission.lock();
        if book.stopped {
            return Err(SubmitError::Stopped);
        }
        if book.draining {
            metrics.record_rejection(Rejection::Draining);
            return Err(SubmitError::Draining);
        }
        let held = book.scheduler.reserve_room(generations).map_err(|busy| {
            metrics.record_rejection(Rejection::from(busy));
            SubmitError::Busy(busy)
        })?;
        let revocation = held.map(|room| {
            let (revoke, revocation) = oneshot::channel();
            book.revocations.insert(room, revoke);
            revocation
        });
        Ok(Room {
            admission: Arc::clone(&self.admission),
            held,
            revocation,
        })
    }

    /// Stops admitting, lets in-flight generations finish for up to `timeout`, aborts the
    /// rest and frees every block. Idempotent: a second call waits for the same drain or
    /// reports at once.
    pub async fn drain(&self, timeout: Duration) -> DrainReport {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Drain { timeout, reply })
            .is_err()
        {
            return DrainReport::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Writes to disk every block that should be there and is only in the pool (after a
    /// drain, before exit), waiting at most `timeout` for the writer. `None` without a
    /// disk store.
    pub async fn persist(&self, timeout: Duration) -> Option<PersistReport> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Persist { timeout, reply })
            .ok()?;
        answer.await.ok().flatten()
    }

    /// The disk store, when configured.
    pub fn store(&self) -> Option<&Arc<KvStore>> {
        self.store.as_ref()
    }

    /// How many of `hashes` the pool holds (in use or cached).
    pub fn blocks_in_memory(&self, hashes: &[BlockHash]) -> usize {
        self.admission.lock().scheduler.pool().count_held(hashes)
    }

    /// Forgets cached pool blocks holding `hashes` (`None`: every cached block), so no
    /// later prompt reuses them; blocks in use keep their content. Returns how many.
    pub fn forget_cached(&self, hashes: Option<&[BlockHash]>) -> usize {
        let mut book = self.admission.lock();
        let pool = book.scheduler.pool_mut();
        match hashes {
            Some(hashes) => pool.forget(hashes),
            None => pool.forget_all_cached(),
        }
    }

    /// The model this engine serves.
    pub fn model(&self) -> &Arc<ServedModel> {
        &self.model
    }

    /// Whether the engine thread is still serving (it ends only when every handle is gone,
    /// so `false` means it failed).
    pub fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// The latest snapshot (updated every step).
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }
}

impl From<Busy> for Rejection {
    fn from(busy: Busy) -> Rejection {
        match busy {
            Busy::QueueFull { .. } => Rejection::QueueFull,
            Busy::PoolExhausted => Rejection::KvCacheExhausted,
            Busy::BatchFull => Rejection::BatchFull,
        }
    }
}
