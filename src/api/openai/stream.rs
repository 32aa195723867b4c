//! Server-sent events for `stream: true`, exactly as OpenAI sends them: chat's first chunk
//! carries the role, then content deltas, then a chunk with the finish reason (per choice);
//! a usage chunk with no choices only when `stream_options.include_usage` is set; then
//! `data: [DONE]`.
//!
//! The body pulls events from the engine's bounded per-request channels only as fast as the
//! connection takes them, so a slow reader pauses its own sequence in the engine and
//! nothing grows. When the client goes away, the body (and with it the event streams) is
//! dropped, which cancels the generations and frees their blocks.
//!
//! A failure after the response started (generation aborted by the server, engine gone) is
//! sent as an `{"error": ...}` event before `[DONE]`, never as a silently short stream.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};

use super::response::{Delta, Endpoint, ResponseContext};
use crate::api::error::ApiError;
use crate::api::latency::RequestRecord;
use crate::engine::EventStream;
use crate::engine::sampling::SampledToken;
use crate::engine::sequence::{Event, FinishReason, Usage};

/// A generation's events once it is admitted, or why it was refused.
pub type Submission = BoxFuture<'static, Result<EventStream, ApiError>>;

/// The SSE response for the generations of one request (choice `i` = `submissions[i]`).
/// Each generation's usage goes into `record` as it ends.
pub fn sse_response(
    context: ResponseContext,
    record: RequestRecord,
    submissions: Vec<Submission>,
) -> Response {
    let choices = submissions.len();
    let mut merged = SelectAll::new();
    for (index, submission) in submissions.into_iter().enumerate() {
        merged.push(choice_events(index, submission));
    }
    let mut state = StreamState {
        context,
        record,
        merged,
        queue: VecDeque::new(),
        choices: (0..choices).map(|_| ChoiceState::default()).collect(),
        failed: false,
        ended: false,
    };
    if state.context.endpoint == Endpoint::Chat {
        for index in 0..choices {
            let chunk = state.context.chunk(
                index,
                Delta {
                    role: true,
                    text: Some(""),
                    ..Delta::default()
                },
            );
            state.queue.push_back(data(chunk.to_string()));
        }
    }
    let body = stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok::<_, Infallible>(event), state))
    });
    Sse::new(body).into_response()
}

/// What one choice contributes to the merged stream.
enum Item {
    Event(Event),
    Refused(ApiError),
}

fn choice_events(index: usize, submission: Submission) -> BoxStream<'static, (usize, Item)> {
    stream::once(submission)
        .flat_map(move |admitted| match admitted {
            Ok(events) => stream::unfold(events, move |mut events| async move {
                let event = events.next().await?;
                Some(((index, Item::Event(event)), events))
            })
            .boxed(),
            Err(error) => stream::once(async move { (index, Item::Refused(error)) }).boxed(),
        })
        .boxed()
}

fn data(payload: String) -> SseEvent {
    SseEvent::default().data(payload)
}

/// A chunk with `text` and the log-probabilities of the tokens held for it.
fn text_chunk(
    context: &ResponseContext,
    index: usize,
    choice: &mut ChoiceState,
    text: &str,
) -> SseEvent {
    let tokens = std::mem::take(&mut choice.held);
    let chunk = context.chunk(
        index,
        Delta {
            text: Some(text),
            tokens: &tokens,
            text_offset: choice.sent,
            ..Delta::default()
        },
    );
    choice.sent += text.len();
    data(chunk.to_string())
}

#[derive(Default)]
struct ChoiceState {
    /// Bytes of text sent so far.
    sent: usize,
    /// Tokens whose text is still held back (their logprobs go with it).
    held: Vec<SampledToken>,
    usage: Option<Usage>,
}

struct StreamState {
    context: ResponseContext,
    record: RequestRecord,
    merged: SelectAll<BoxStream<'static, (usize, Item)>>,
    queue: VecDeque<SseEvent>,
    choices: Vec<ChoiceState>,
    /// An error event was sent: no usage chunk follows.
    failed: bool,
    ended: bool,
}

impl StreamState {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match self.merged.next().await {
                Some((index, Item::Event(event))) => self.on_event(index, event),
                Some((_, Item::Refused(error))) => self.fail(error),
                None => self.on_end(),
            }
        }
    }

    fn on_event(&mut self, index: usize, event: Event) {
        let keep_tokens = self.context.logprobs.is_some();
        let choice = &mut self.choices[index];
        match event {
            Event::Token { sampled, text } => {
                if keep_tokens {
                    choice.held.push(sampled);
                }
                if !text.is_empty() {
                    self.queue
                        .push_back(text_chunk(&self.context, index, choice, &text));
                }
            }
            Event::Finished {
                text,
                reason,
                usage,
            } => {
                choice.usage = Some(usage);
                self.record
                    .add_usage(usage.prompt_tokens, usage.completion_tokens);
                if reason == FinishReason::Aborted || reason == FinishReason::Cancelled {
                    self.fail(ApiError::aborted(usage.completion_tokens));
                    return;
                }
                if !text.is_empty() || !choice.held.is_empty() {
                    self.queue
                        .push_back(text_chunk(&self.context, index, choice, &text));
                }
                let last = self.context.chunk(
                    index,
                    Delta {
                        finish: Some(reason),
                        ..Delta::default()
                    },
                );
                self.queue.push_back(data(last.to_string()));
            }
        }
    }

    fn on_end(&mut self) {
        if !self.failed && self.choices.iter().any(|c| c.usage.is_none()) {
            self.fail(ApiError::internal(
                "the inference engine stopped before the generation finished",
            ));
        }
        if !self.failed && self.context.include_usage {
            let usages = self.choices.iter().filter_map(|c| c.usage);
            let chunk = self.context.usage_chunk(usages);
            self.queue.push_back(data(chunk.to_string()));
        }
        self.queue.push_back(data("[DONE]".to_owned()));
        self.ended = true;
    }

    fn fail(&mut self, error: ApiError) {
        if !self.failed {
            tracing::warn!(error = %error.message, "stream ended with an error event");
            self.queue.push_back(data(error.body().to_string()));
            self.failed = true;
        }
    }
}
