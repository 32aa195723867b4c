//! One generation request as the engine sees it: what was asked, and the per-sequence state
//! that turns each step's logits into events (sampling, streaming detokenization, stop
//! conditions, finish reason, usage). Plain Rust data: no MLX arrays, no HTTP types.

use std::collections::HashSet;
use std::sync::Arc;

use super::block_pool::BlockHash;
use super::sampling::{SampledToken, Sampler, SamplingParams};
use super::stop::{StopMatcher, StopOutcome};
use crate::model::detokenizer::IncrementalDecoder;
use crate::model::tokenizer::{Tokenizer, TokenizerError};

/// What a client asks the engine to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The prompt, already tokenized (chat template applied by the caller).
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate (the caller resolves OpenAI's "rest of the context").
    pub max_tokens: usize,
    /// Text that ends the generation (not emitted).
    pub stop: Vec<String>,
    /// Token ids that end the generation, besides the model's end-of-generation ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past the model's end-of-generation ids.
    pub ignore_eos: bool,
    /// The agent the request belongs to: its full blocks go to disk and its manifest is
    /// kept (validated by the caller: `[A-Za-z0-9_.-]`, at most 128 characters).
    pub agent: Option<String>,
    /// Root of the prefix cache's hash chain (one per API key): prefixes are shared only
    /// among requests with the same salt.
    pub cache_salt: Option<BlockHash>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token, a stop token id or a stop string.
    Stop,
    /// `max_tokens` reached, or no room left in the context or the KV pool.
    Length,
    /// The client went away or cancelled.
    Cancelled,
    /// Ended by the engine (drain timeout, shutdown).
    Aborted,
}

impl FinishReason {
    /// The reason's name in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Aborted => "aborted",
        }
    }
}

/// Token counts of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

/// What a generation streams to its client.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (possibly empty: text that could start
    /// a stop string, or an incomplete UTF-8 character, is held back).
    Token { sampled: SampledToken, text: String },
    /// The end: held-back text released, the reason and the usage.
    Finished {
        text: String,
        reason: FinishReason,
        usage: Usage,
    },
}

/// The per-sequence state between steps.
pub struct SequenceState {
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    stop_ids: HashSet<u32>,
    max_tokens: usize,
    usage: Usage,
}

impl SequenceState {
    /// `fallback_seed` seeds requests that have none of their own.
    pub fn new(request: &GenerationRequest, tokenizer: Arc<Tokenizer>, fallback_seed: u64) -> Self {
        let mut stop_ids: HashSet<u32> = request.stop_token_ids.iter().copied().collect();
        if !request.ignore_eos {
            stop_ids.extend(tokenizer.eos_ids().iter().copied());
        }
        SequenceState {
            sampler: Sampler::new(request.sampling.clone(), &request.prompt, fallback_seed),
            decoder: IncrementalDecoder::new(tokenizer),
            stop: StopMatcher::new(request.stop.iter().cloned()),
            stop_ids,
            max_tokens: request.max_tokens,
            usage: Usage {
                prompt_tokens: request.prompt.len(),
                ..Usage::default()
            },
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Records how many prompt tokens came from the prefix cache.
    pub fn set_cached_tokens(&mut self, cached: usize) {
        self.usage.cached_tokens = cached;
    }

    /// Samples the next token from `logits`; [`Self::accept`] then takes it into the text.
    /// Two calls so the engine can time sampling and detokenizing apart.
    pub fn sample(&mut self, logits: &[f32]) -> SampledToken {
        self.sampler.sample(logits)
    }

    /// Detokenizes `sampled` (from [`Self::sample`]) and matches stop sequences; returns
    /// the token with the events to send. A `Finished` event is always last and means the
    /// sequence is over.
    pub fn accept(&mut self, sampled: SampledToken) -> Result<(u32, Vec<Event>), TokenizerError> {
        let token = sampled.token;
        self.usage.completion_tokens += 1;
        let mut events = Vec::with_capacity(2);

        if self.stop_ids.contains(&token) {
            // The end-of-generation token itself produces no text.
            events.push(Event::Token {
                sampled,
                text: String::new(),
            });
            events.push(self.finish(FinishReason::Stop)?);
            return Ok((token, events));
        }
        let delta = self.decoder.push(token)?.unwrap_or_default();
        match self.stop.push(&delta) {
            StopOutcome::Stop(text) => {
                events.push(Event::Token { sampled, text });
                events.push(Event::Finished {
                    text: String::new(),
                    reason: FinishReason::Stop,
                    usage: self.usage,
                });
            }
            StopOutcome::Continue(text) => {
                events.push(Event::Token { sampled, text });
                if self.usage.completion_tokens >= self.max_tokens {
                    events.push(self.finish(FinishReason::Length)?);
                }
            }
        }
        Ok((token, events))
    }

    /// Ends the sequence for `reason`, releasing held-back text (unless a stop string ended
    /// it, which [`SequenceState::advance`] handles).
    pub fn finish(&mut self, reason: FinishReason) -> Result<Event, TokenizerError> {
        let tail = self.decoder.flush()?;
        let mut text = match self.stop.push(&tail) {
            StopOutcome::Continue(text) | StopOutcome::Stop(text) => text,
        };
        text.push_str(&self.stop.flush());
        Ok(Event::Finished {
            text,
            reason,
            usage: self.usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::testing::tiny_tokenizer;

    /// Logits that make greedy sampling pick `token`.
    fn pick(token: u32, vocab: usize) -> Vec<f32> {
        let mut logits = vec![0.0; vocab];
        logits[token as usize] = 10.0;
        logits
    }

    fn request(max_tokens: usize, stop: &[&str]) -> GenerationRequest {
        GenerationRequest {
            prompt: vec![1, 2],
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop: stop.iter().map(|s| s.to_string()).collect(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            agent: None,
            cache_salt: None,
        }
    }

    /// Feeds `tokens` (as greedy picks) until the sequence finishes; returns the streamed
    /// text, the finish reason and the usage.
    fn generate(request: &GenerationRequest, tokens: &[u32]) -> (String, FinishReason, Usage) {
        let tokenizer = Arc::new(tiny_tokenizer());
        let vocab = tokenizer.vocab_size();
        let mut state = SequenceState::new(request, tokenizer, 0);
        let mut text = String::new();
        for &token in tokens {
            let sampled = state.sample(&pick(token, vocab));
            let (chosen, events) = state.accept(sampled).unwrap();
            assert_eq!(chosen, token);
            for event in events {
                match event {
                    Event::Token { text: delta, .. } => text.push_str(&delta),
                    Event::Finished {
                        text: tail,
                        reason,
                        usage,
                    } => {
                        text.push_str(&tail);
                        return (text, reason, usage);
                    }
                }
            }
        }
        panic!("no Finished event after {} tokens", tokens.len());
    }

    fn ids(text: &str) -> Vec<u32> {
        tiny_tokenizer().encode(text, false).unwrap()
    }

    #[test]
    fn max_tokens_ends_with_length_and_all_text() {
        let tokens = ids("Hello world");
        let (text, reason, usage) = generate(&request(tokens.len(), &[]), &tokens);
        assert_eq!(text, "Hello world");
        assert_eq!(reason, FinishReason::Length);
        assert_eq!(
            (usage.prompt_tokens, usage.completion_tokens),
            (2, tokens.len())
        );
    }

    #[test]
    fn eos_ends_with_stop_and_emits_no_text_for_it() {
        // Token 0 (<|endoftext|>) is the tiny tokenizer's EOS.
        let mut tokens = ids("Hello");
        tokens.push(0);
        tokens.extend(ids(" world"));
        let (text, reason, usage) = generate(&request(10, &[]), &tokens);
        assert_eq!((text.as_str(), reason), ("Hello", FinishReason::Stop));
        assert_eq!(usage.completion_tokens, ids("Hello").len() + 1);
    }

    #[test]
    fn stop_strings_split_over_tokens_are_not_emitted() {
        // "o wor" spans the tokens of "Hello" and " world".
        let tokens = ids("Hello world");
        let (text, reason, _) = generate(&request(20, &["o wor"]), &tokens);
        assert_eq!((text.as_str(), reason), ("Hell", FinishReason::Stop));
    }

    #[test]
    fn ignore_eos_keeps_going() {
        let mut tokens = ids("Hello");
        tokens.push(0);
        tokens.extend(ids(" world"));
        let request = GenerationRequest {
            ignore_eos: true,
            agent: None,
            cache_salt: None,
            ..request(tokens.len(), &[])
        };
        let (_, reason, usage) = generate(&request, &tokens);
        assert_eq!(reason, FinishReason::Length);
        assert_eq!(usage.completion_tokens, tokens.len());
    }
}
