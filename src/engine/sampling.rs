//! Choosing the next token from a sequence's logits, per request and reproducibly.
//!
//! Order of processing (as vLLM and mlx-lm do): penalties, then temperature (0 = greedy,
//! the arg-max after penalties), then top-k, top-p and min-p filtering, then a draw from
//! the request's own random stream. A seeded request draws from a ChaCha8 stream seeded
//! with its seed, so the same seed, prompt and settings give the same tokens — also inside
//! a batch, since no randomness is shared between sequences. Unseeded requests get a seed
//! from the engine.
//!
//! Penalties follow OpenAI's definitions for `presence_penalty` and `frequency_penalty`
//! (over the tokens generated so far) and the common `repetition_penalty` (over prompt and
//! generated tokens: positive logits divided, negative ones multiplied).

use std::collections::{HashMap, HashSet};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token; higher flattens the distribution.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probabilities sum to at least this.
    pub top_p: f32,
    /// Keep only the k most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Drop tokens less likely than `min_p` times the most likely one.
    pub min_p: f32,
    pub seed: Option<u64>,
    /// Subtracted once from the logit of every token generated so far (OpenAI).
    pub presence_penalty: f32,
    /// Subtracted per occurrence among the generated tokens (OpenAI).
    pub frequency_penalty: f32,
    /// > 1 discourages tokens of the prompt and the output (1 = off).
    pub repetition_penalty: f32,
    /// Also report this many most likely alternatives per token.
    pub top_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    /// OpenAI's defaults: temperature 1, no filtering, no penalties.
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: None,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            top_logprobs: None,
        }
    }
}

/// Most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Checks the ranges OpenAI accepts; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, value: f32| {
            if value.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a finite number"))
            }
        };
        finite("temperature", self.temperature)?;
        finite("top_p", self.top_p)?;
        finite("min_p", self.min_p)?;
        finite("presence_penalty", self.presence_penalty)?;
        finite("frequency_penalty", self.frequency_penalty)?;
        finite("repetition_penalty", self.repetition_penalty)?;
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(format!(
                "temperature must be between 0 and 2, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if self.top_k == Some(0) {
            return Err("top_k must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be between 0 and 1, got {}", self.min_p));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(format!("{name} must be between -2 and 2, got {value}"));
            }
        }
        if self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty must be positive, got {}",
                self.repetition_penalty
            ));
        }
        if self.top_logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(format!("top_logprobs must be at most {MAX_TOP_LOGPROBS}"));
        }
        Ok(())
    }
}

/// A chosen token and what the client may ask to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    /// Log-probability of the token under the model's distribution (before penalties and
    /// temperature, as OpenAI reports it).
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens with their log-probabilities, best first.
    pub top: Vec<(u32, f32)>,
}

/// The sampling state of one sequence: its settings, its random stream and what it has
/// produced so far (for penalties).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Occurrences of each generated token.
    generated: HashMap<u32, u32>,
    /// Prompt and generated tokens (for the repetition penalty).
    seen: HashSet<u32>,
}

impl Sampler {
    /// `fallback_seed` is used when the request has no seed of its own.
    pub fn new(params: SamplingParams, prompt: &[u32], fallback_seed: u64) -> Self {
        let seed = params.seed.unwrap_or(fallback_seed);
        Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            generated: HashMap::new(),
            seen: prompt.iter().copied().collect(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from `logits` (one entry per vocabulary id) and records it.
    pub fn sample(&mut self, logits: &[f32]) -> SampledToken {
        let logprobs = log_softmax(logits);
        let mut scores = logits.to_vec();
        self.apply_penalties(&mut scores);

        let token = if self.params.temperature == 0.0 {
            argmax(&scores)
        } else {
            self.draw(&scores)
        };
        let top = self
            .params
            .top_logprobs
            .map(|n| top_n(&logprobs, n))
            .unwrap_or_default();
        *self.generated.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
        SampledToken {
            token,
            logprob: logprobs[token as usize],
            top,
        }
    }

    fn apply_penalties(&self, scores: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &token in &self.seen {
                if let Some(score) = scores.get_mut(token as usize) {
                    *score = if *score > 0.0 {
                        *score / p.repetition_penalty
                    } else {
                        *score * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&token, &count) in &self.generated {
                if let Some(score) = scores.get_mut(token as usize) {
                    *score -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
    }

    /// Draws from the temperature-scaled distribution restricted by top-k, top-p, min-p.
    fn draw(&mut self, scores: &[f32]) -> u32 {
        let p = &self.params;
        let scaled: Vec<f32> = scores.iter().map(|s| s / p.temperature).collect();
        let probs = softmax(&scaled);
        if p.top_k.is_none() && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // No filtering: draw over the whole vocabulary without sorting it.
            let all: Vec<u32> = (0..probs.len() as u32).collect();
            return self.draw_among(&all, &probs, 1.0);
        }
        // Candidates, most likely first (ties by id, for determinism).
        let mut order: Vec<u32> = (0..probs.len() as u32).collect();
        order.sort_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        if let Some(k) = p.top_k {
            order.truncate(k.max(1));
        }
        let best = probs[order[0] as usize];
        let mut kept = Vec::with_capacity(order.len());
        let mut mass = 0.0f32;
        for &token in &order {
            let prob = probs[token as usize];
            if !kept.is_empty() && (mass >= p.top_p || prob < p.min_p * best) {
                break;
            }
            kept.push(token);
            mass += prob;
        }
        self.draw_among(&kept, &probs, mass)
    }

    /// A uniform draw in `[0, mass)` walked over `candidates` (non-empty), whose
    /// probabilities sum to `mass`.
    fn draw_among(&mut self, candidates: &[u32], probs: &[f32], mass: f32) -> u32 {
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut target = unit * f64::from(mass);
        for &token in candidates {
            target -= f64::from(probs[token as usize]);
            if target < 0.0 {
                return token;
            }
        }
        // Rounding left a sliver: the last candidate.
        candidates.last().copied().unwrap_or(0)
    }
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, value) in values.iter().enumerate() {
        if *value > values[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = values.iter().map(|v| (v - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

fn log_softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_total = values.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
    values.iter().map(|v| v - log_total).collect()
}

fn top_n(logprobs: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut order: Vec<u32> = (0..logprobs.len() as u32).collect();
    order.sort_by(|&a, &b| {
        logprobs[b as usize]
            .total_cmp(&logprobs[a as usize])
            .then(a.cmp(&b))
    });
    order
        .into_iter()
        .take(n)
        .map(|t| (t, logprobs[t as usize]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.0, 2.9]
    }

    fn draws(params: SamplingParams, n: usize) -> Vec<u32> {
        let mut sampler = Sampler::new(params, &[], 7);
        (0..n).map(|_| sampler.sample(&logits()).token).collect()
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_logprobs() {
        let mut sampler = Sampler::new(
            SamplingParams {
                top_logprobs: Some(2),
                ..SamplingParams::greedy()
            },
            &[],
            0,
        );
        let out = sampler.sample(&logits());
        assert_eq!(out.token, 1);
        let expected = log_softmax(&logits());
        assert!((out.logprob - expected[1]).abs() < 1e-6);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 5]);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        let seeded = |seed| SamplingParams {
            seed: Some(seed),
            ..SamplingParams::default()
        };
        assert_eq!(draws(seeded(42), 64), draws(seeded(42), 64));
        assert_ne!(draws(seeded(42), 64), draws(seeded(43), 64));
    }

    #[test]
    fn filters_restrict_the_candidates() {
        let only = |params: SamplingParams| {
            let mut tokens = draws(params, 2000);
            tokens.sort_unstable();
            tokens.dedup();
            tokens
        };
        let top_k = SamplingParams {
            top_k: Some(2),
            ..SamplingParams::default()
        };
        assert_eq!(only(top_k), vec![1, 5]);
        // p(1) ≈ 0.37, p(5) ≈ 0.34: top_p 0.5 keeps exactly those two.
        let top_p = SamplingParams {
            top_p: 0.5,
            ..SamplingParams::default()
        };
        assert_eq!(only(top_p), vec![1, 5]);
        // min_p 0.5 keeps tokens with at least half the best probability: 1, 5, 2.
        let min_p = SamplingParams {
            min_p: 0.5,
            ..SamplingParams::default()
        };
        assert_eq!(only(min_p), vec![1, 2, 5]);
        // All tokens are possible with plain sampling.
        assert_eq!(only(SamplingParams::default()).len(), 6);
    }

    #[test]
    fn penalties_follow_their_definitions() {
        let params = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        // Token 3 was in the prompt; token 1 was generated twice.
        let mut sampler = Sampler::new(params, &[3], 0);
        sampler.generated.insert(1, 2);
        sampler.seen.insert(1);
        let mut scores = logits();
        sampler.apply_penalties(&mut scores);
        assert_eq!(scores[3], -2.0); // negative logit multiplied by 2
        assert_eq!(scores[1], 3.0 / 2.0 - 0.5 - 0.25 * 2.0);
        assert_eq!(scores[5], 2.9); // untouched
        // Greedy now picks 5 over the penalised 1.
        assert_eq!(sampler.sample(&logits()).token, 5);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = |params: SamplingParams| params.validate().unwrap_err();
        assert!(
            bad(SamplingParams {
                temperature: 2.5,
                ..Default::default()
            })
            .contains("temperature")
        );
        assert!(
            bad(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            })
            .contains("top_p")
        );
        assert!(
            bad(SamplingParams {
                top_k: Some(0),
                ..Default::default()
            })
            .contains("top_k")
        );
        assert!(
            bad(SamplingParams {
                presence_penalty: f32::NAN,
                ..Default::default()
            })
            .contains("presence_penalty")
        );
        assert!(
            bad(SamplingParams {
                top_logprobs: Some(21),
                ..Default::default()
            })
            .contains("top_logprobs")
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
