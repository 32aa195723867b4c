//! Admission control, shared by the async side and the engine thread.
//!
//! The scheduler (with the block pool) and the requests waiting for their first admission
//! live behind one mutex. [`EngineHandle`](super::EngineHandle) locks it to queue or refuse
//! a request at once — a full queue is answered while the engine thread is inside a forward
//! step, not after it — and the engine thread locks it to plan each step, then releases it
//! for the forward pass. Neither side holds it for longer than a scheduling decision.
//!
//! A queued request's [`Pending`] ticket resolves when the engine thread admits it (its
//! event stream) or refuses it, when its queue deadline passes (checked by the ticket
//! itself, so a timeout does not wait for a step either), or withdraws it when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::handle::{EventStream, SubmitError};
use super::scheduler::{Busy, RoomId, Scheduler, SeqId};
use super::sequence::{FinishReason, GenerationRequest};
use crate::metrics::engine::{EngineMetrics, Rejection};

/// A request queued for its first admission.
pub(crate) struct Queued {
    pub request: GenerationRequest,
    pub reply: oneshot::Sender<Result<EventStream, SubmitError>>,
    pub submitted: Instant,
}

/// Everything behind the admission lock.
pub(crate) struct Book {
    pub scheduler: Scheduler,
    /// Queued, never admitted: the engine thread takes them out when it admits or refuses
    /// them; a ticket takes its own out on timeout or drop.
    pub queued: HashMap<SeqId, Queued>,
    /// How to tell each request holding room that its room was given up
    /// ([`Book::revoke_rooms`]).
    pub revocations: HashMap<RoomId, oneshot::Sender<Busy>>,
    /// Set by the first drain: from then on every request is refused.
    pub draining: bool,
    /// The engine thread has ended: nothing will be admitted any more.
    pub stopped: bool,
    next_id: SeqId,
}

impl Book {
    pub fn new(scheduler: Scheduler) -> Book {
        Book {
            scheduler,
            queued: HashMap::new(),
            revocations: HashMap::new(),
            draining: false,
            stopped: false,
            next_id: 0,
        }
    }

    /// Fresh ids for `count` sequences.
    pub fn ids(&mut self, count: usize) -> Vec<SeqId> {
        let first = self.next_id;
        self.next_id += count as SeqId;
        (first..self.next_id).collect()
    }

    /// Gives up the held rooms that a submission crowded out
    /// ([`Scheduler::revoke_rooms`]) and tells their requests why.
    pub fn revoke_rooms(&mut self) {
        for (room, busy) in self.scheduler.revoke_rooms() {
            if let Some(revocation) = self.revocations.remove(&room) {
                // The request may be gone already; its `Room` then gives back nothing.
                let _ = revocation.send(busy);
            }
        }
    }

    /// Removes a queued request that will never be admitted, with its sequence.
    pub fn withdraw(&mut self, id: SeqId) -> Option<Queued> {
        let queued = self.queued.remove(&id)?;
        self.scheduler.finish(id);
        Some(queued)
    }
}

/// The admission lock with what both sides need around it.
pub(crate) struct Admission {
    book: Mutex<Book>,
    pub metrics: Arc<EngineMetrics>,
    pub queue_timeout: Duration,
}

impl Admission {
    pub fn new(book: Book, metrics: Arc<EngineMetrics>, queue_timeout: Duration) -> Admission {
        Admission {
            book: Mutex::new(book),
            metrics,
            queue_timeout,
        }
    }

    /// Locks the book. A panic while it was held leaves plain data behind, so a poisoned
    /// lock is taken over rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One queued generation: resolves to its event stream once the engine admits it.
/// Dropping it before then withdraws the generation from the queue.
pub struct Pending {
    id: SeqId,
    answer: Option<oneshot::Receiver<Result<EventStream, SubmitError>>>,
    deadline: Instant,
    admission: Arc<Admission>,
}

impl Pending {
    pub(crate) fn new(
        id: SeqId,
        answer: oneshot::Receiver<Result<EventStream, SubmitError>>,
        submitted: Instant,
        admission: Arc<Admission>,
    ) -> Pending {
        Pending {
            id,
            answer: Some(answer),
            deadline: submitted + admission.queue_timeout,
            admission,
        }
    }

    /// Waits for admission: the event stream, or why the generation will not run
    /// (`QueueTimeout` once the queue deadline passes, `Busy` when a step could not start
    /// it with `--max-queue 0`, `Draining` when a drain began, `Stopped`).
    pub async fn admitted(mut self) -> Result<EventStream, SubmitError> {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let Some(answer) = self.answer.as_mut() else {
            return Err(SubmitError::Stopped);
        };
        // `answer` stays in `self` while waiting, so dropping this future withdraws.
        let reply = match tokio::time::timeout_at(deadline, answer).await {
            Ok(reply) => reply,
            Err(_) => {
                let withdrawn = self.admission.lock().withdraw(self.id);
                if let Some(queued) = withdrawn {
                    self.answer = None;
                    self.admission
                        .metrics
                        .record_rejection(Rejection::QueueTimeout);
                    return Err(SubmitError::QueueTimeout {
                        waited: queued.submitted.elapsed(),
                    });
                }
                // The engine thread took it a moment ago: its answer is on the way.
                match self.answer.as_mut() {
                    Some(answer) => answer.await,
                    None => return Err(SubmitError::Stopped),
                }
            }
        };
        self.answer = None;
        reply.unwrap_or(Err(SubmitError::Stopped))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.answer.is_none() {
            return;
        }
        // The client left while its generation waited: nothing was computed for it.
        if self.admission.lock().withdraw(self.id).is_some() {
            self.admission
                .metrics
                .record_finish(FinishReason::Cancelled.label());
        }
    }
}
