//! `EngineHandle`: the async side's view of the engine thread. Cheap to clone; every call
//! is a message to the thread that owns the model (MLX arrays never leave it).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::scheduler::AdmitError;
use super::sequence::{Event, GenerationRequest};
use super::worker::{Command, EngineConfig, Worker};
use crate::metrics::engine::EngineMetrics;
use crate::model::ModelError;
use crate::model::chat_template::ChatTemplate;
use crate::model::identity::ModelIdentity;
use crate::model::loader::LoadedModel;
use crate::model::tokenizer::Tokenizer;

/// Why a request was not started. Each maps to one HTTP status in the API layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The prompt can never be served (too long for the context or the whole pool, empty).
    #[error(transparent)]
    Invalid(AdmitError),
    /// Sampling settings out of range; the message names the field.
    #[error("invalid sampling parameters: {0}")]
    InvalidSampling(String),
    /// The wait queue is full (or disabled) and the pool cannot take the request now.
    #[error("the server is at capacity: {reason}")]
    Busy { reason: String },
    /// Waited longer than the queue timeout for KV blocks.
    #[error("timed out after {waited:?} waiting for KV cache blocks")]
    QueueTimeout { waited: Duration },
    /// The engine is draining for shutdown.
    #[error("the server is shutting down")]
    Draining,
    /// The engine thread is gone (it failed or was stopped).
    #[error("the inference engine is not running")]
    Stopped,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// In-flight generations that finished on their own during the drain.
    pub completed: usize,
    /// Generations ended with finish reason `aborted` at the timeout.
    pub aborted: usize,
    /// Queued requests refused with `Draining`.
    pub rejected: usize,
    pub elapsed: Duration,
}

/// A snapshot of the engine, refreshed every step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub blocks_total: usize,
    pub blocks_in_use: usize,
    pub blocks_cached: usize,
    pub steps: u64,
    pub generated_tokens: u64,
    /// Generated tokens per second over the last step.
    pub tokens_per_second: f64,
    pub preemptions: u64,
    pub draining: bool,
    /// Seconds spent in steps in total, and the part of it inside the model's forward pass:
    /// the difference is the engine's own overhead (scheduling, sampling, detokenizing).
    pub step_seconds: f64,
    pub forward_seconds: f64,
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

/// What the async side knows about the loaded model: the parts it needs to turn requests
/// into token ids and to name the model. No MLX inside; shared, read-only.
#[derive(Debug)]
pub struct ServedModel {
    pub identity: ModelIdentity,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Arc<ChatTemplate>,
}

/// Handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    commands: std::sync::mpsc::Sender<Command>,
    stats: Arc<Mutex<EngineStats>>,
    model: Arc<ServedModel>,
    thread: Arc<std::thread::JoinHandle<()>>,
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
        let thread = std::thread::Builder::new()
            .name("mlx-engine".to_owned())
            .spawn(
                move || match Worker::new(load, config, worker_stats, metrics) {
                    Ok(mut worker) => {
                        // Stats are valid from the moment `start` returns.
                        worker.publish_stats(0.0);
                        let _ = ready_tx.send(Ok(worker.served_model()));
                        worker.run(inbox);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                },
            )
            .map_err(|e| ModelError::KvCache(format!("cannot start the engine thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(model)) => Ok(EngineHandle {
                commands,
                stats,
                model: Arc::new(model),
                thread: Arc::new(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ModelError::KvCache(
                "the engine thread died while loading the model".to_owned(),
            )),
        }
    }

    /// Starts a generation. Resolves when it is admitted (the stream then carries its
    /// events) or refused: at once for impossible prompts, a full queue or a drain; after
    /// the queue timeout when no blocks freed up in time.
    pub async fn submit(&self, request: GenerationRequest) -> Result<EventStream, SubmitError> {
        request
            .sampling
            .validate()
            .map_err(SubmitError::InvalidSampling)?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Submit { request, reply })
            .map_err(|_| SubmitError::Stopped)?;
        answer.await.unwrap_or(Err(SubmitError::Stopped))
    }

    /// Stops admitting, lets in-flight generations finish for up to `timeout`, aborts the
    /// rest and frees every block. Idempotent: a second call reports what is left.
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

    /// The model this engine serves.
    pub fn model(&self) -> &ServedModel {
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
