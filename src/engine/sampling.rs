//! Choosing the next token from a sequence's logits, per request and reproducibly.
//!
//! Order of processing (as vLLM and mlx-lm do): penalties, then temperature (0, or anything
//! below [`MIN_TEMPERATURE`], is greedy: the arg-max after penalties), then top-k, top-p
//! and min-p filtering, then a draw from the request's own random stream. A seeded request
//! draws from a ChaCha8 stream seeded with its seed, so the same seed, prompt and settings
//! give the same tokens — also inside a batch, since no randomness is shared between
//! sequences. Unseeded requests get a seed from the engine.
//!
//! Penalties follow OpenAI's definitions for `presence_penalty` and `frequency_penalty`
//! (over the tokens generated so far) and the common `repetition_penalty` (over prompt and
//! generated tokens: positive logits divided, negative ones multiplied).
//!
//! **Cost.** This runs on the engine thread for every sequence of every step, over the
//! whole vocabulary, so nothing sorts the vocabulary: greedy is one pass; a plain draw is
//! one pass of `exp`; the candidates of top-k / top-p / min-p and the alternatives of
//! `top_logprobs` come from a bounded selection of the best few, widened only while top-p
//! needs more mass. Log-probabilities cost one more pass, and only when asked for.
//!
//! **No NaN path.** A NaN logit counts as impossible (`-inf`), `+inf` as the largest finite
//! value; temperatures too small to divide by are greedy; a distribution whose mass is
//! not a positive finite number falls back to the arg-max. Every call returns an id in the
//! vocabulary.

use std::collections::{HashMap, HashSet};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Sampling settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token; higher flattens the distribution. Below
    /// [`MIN_TEMPERATURE`] it is greedy.
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
    /// Report log-probabilities: the chosen token's, and this many most likely
    /// alternatives (at most [`MAX_TOP_LOGPROBS`]). `None`: none are computed.
    pub logprobs: Option<usize>,
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
            logprobs: None,
        }
    }
}

/// Most alternatives `top_logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Temperatures below this are greedy (as in vLLM): dividing logits by less overflows f32
/// and would make every token equally impossible.
pub const MIN_TEMPERATURE: f32 = 1e-5;

/// A sampling setting out of range: `field` is the request field (OpenAI's name), the
/// message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct SamplingError {
    pub field: &'static str,
    pub problem: String,
}

impl SamplingError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        SamplingError {
            field,
            problem: problem.into(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0).
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Whether this picks the arg-max (temperature 0 or below [`MIN_TEMPERATURE`]).
    pub fn is_greedy(&self) -> bool {
        self.temperature < MIN_TEMPERATURE
    }

    /// Checks the ranges OpenAI accepts; the error names the field.
    pub fn validate(&self) -> Result<(), SamplingError> {
        for (field, value) in [
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("min_p", self.min_p),
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
            ("repetition_penalty", self.repetition_penalty),
        ] {
            if !value.is_finite() {
                return Err(SamplingError::new(field, "must be a finite number"));
            }
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(SamplingError::new(
                "temperature",
                format!("must be between 0 and 2, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::new(
                "top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        if self.top_k == Some(0) {
            return Err(SamplingError::new("top_k", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplingError::new(
                "min_p",
                format!("must be between 0 and 1, got {}", self.min_p),
            ));
        }
        for (field, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(SamplingError::new(
                    field,
                    format!("must be between -2 and 2, got {value}"),
                ));
            }
        }
        if self.repetition_penalty <= 0.0 {
            return Err(SamplingError::new(
                "repetition_penalty",
                format!("must be positive, got {}", self.repetition_penalty),
            ));
        }
        if self.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(SamplingError::new(
                "top_logprobs",
                format!("must be at most {MAX_TOP_LOGPROBS}"),
            ));
        }
        Ok(())
    }
}

/// The model's log-probabilities around a chosen token (before penalties and
/// temperature, as OpenAI reports them).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// Of the chosen token.
    pub logprob: f32,
    /// The most likely tokens with theirs, best first.
    pub top: Vec<(u32, f32)>,
}

/// A chosen token, with its log-probabilities when the request asked for them.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token: u32,
    pub logprobs: Option<TokenLogprobs>,
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

    /// Picks the next token from `logits` (one entry per vocabulary id, at least one) and
    /// records it.
    pub fn sample(&mut self, logits: &[f32]) -> SampledToken {
        let penalized;
        let scores = if self.has_penalties() {
            let mut scores: Vec<f32> = logits.iter().copied().map(sanitize).collect();
            self.apply_penalties(&mut scores);
            penalized = scores;
            &penalized[..]
        } else {
            logits
        };
        let token = if self.params.is_greedy() {
            argmax(scores)
        } else {
            self.draw(scores)
        };
        let logprobs = self.params.logprobs.map(|n| {
            let total = log_sum_exp(logits);
            TokenLogprobs {
                logprob: sanitize(logits[token as usize]) - total,
                top: best(logits, n)
                    .into_iter()
                    .map(|id| (id, sanitize(logits[id as usize]) - total))
                    .collect(),
            }
        });
        *self.generated.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
        SampledToken { token, logprobs }
    }

    fn has_penalties(&self) -> bool {
        let p = &self.params;
        p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
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
        let max = max_score(scores);
        if max == f32::NEG_INFINITY {
            return argmax(scores);
        }
        // Relative to the best, so nothing overflows: every weight is in [0, 1].
        let weights: Vec<f32> = scores
            .iter()
            .map(|&s| ((sanitize(s) - max) / p.temperature).exp())
            .collect();
        let total: f32 = weights.iter().sum();
        if !(total.is_finite() && total > 0.0) {
            return argmax(scores);
        }
        let filtered = p.top_k.is_some() || p.top_p < 1.0 || p.min_p > 0.0;
        if !filtered {
            return self.draw_among(0..weights.len() as u32, &weights, total);
        }
        let (kept, mass) = self.candidates(&weights, total);
        self.draw_among(kept.iter().copied(), &weights, mass)
    }

    /// The tokens top-k, top-p and min-p keep, most likely first, and their total weight.
    /// `weights` are the temperature-scaled probabilities relative to the best (which has
    /// weight 1), summing to `total`.
    fn candidates(&self, weights: &[f32], total: f32) -> (Vec<u32>, f32) {
        let p = &self.params;
        let limit = p.top_k.unwrap_or(weights.len()).min(weights.len());
        let wanted = p.top_p * total;
        // Widen the selection until it holds top-p's mass (or everything allowed).
        let mut take = limit.min(64);
        loop {
            let candidates = best(weights, take);
            let mut kept = Vec::with_capacity(candidates.len());
            let mut mass = 0.0f32;
            for &token in &candidates {
                let weight = weights[token as usize];
                // The best weight is 1, so min-p is a plain threshold.
                if !kept.is_empty() && (mass >= wanted || weight < p.min_p) {
                    break;
                }
                kept.push(token);
                mass += weight;
            }
            if kept.len() < candidates.len() || take == limit {
                return (kept, mass);
            }
            take = (take * 4).min(limit);
        }
    }

    /// A uniform draw in `[0, mass)` walked over `candidates` (non-empty), whose weights
    /// sum to `mass`.
    fn draw_among(
        &mut self,
        candidates: impl Iterator<Item = u32> + Clone,
        weights: &[f32],
        mass: f32,
    ) -> u32 {
        let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut target = unit * f64::from(mass);
        let mut last = 0;
        for token in candidates {
            last = token;
            target -= f64::from(weights[token as usize]);
            if target < 0.0 {
                return token;
            }
        }
        // Rounding left a sliver: the last candidate.
        last
    }
}

/// A logit as sampling treats it: NaN is impossible, `+inf` the largest finite value.
fn sanitize(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit.min(f32::MAX)
    }
}

/// The largest score (sanitized).
fn max_score(values: &[f32]) -> f32 {
    values
        .iter()
        .copied()
        .map(sanitize)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// The first index of the largest (sanitized) value; 0 when all are `-inf` or NaN.
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &value) in values.iter().enumerate() {
        let value = sanitize(value);
        if value > best_value {
            best = i;
            best_value = value;
        }
    }
    best as u32
}

/// `ln(sum(exp(values)))` of the sanitized values, computed without overflow.
fn log_sum_exp(values: &[f32]) -> f32 {
    let max = max_score(values);
    if max == f32::NEG_INFINITY {
        return max;
    }
    values
        .iter()
        .map(|&v| (sanitize(v) - max).exp())
        .sum::<f32>()
        .ln()
        + max
}

/// The ids of the `n` largest values, largest first (ties: lower id first), without
/// sorting everything: one pass keeping the best `n` while `n` is small, a selection
/// otherwise.
fn best(values: &[f32], n: usize) -> Vec<u32> {
    let n = n.min(values.len());
    // The total order: sanitized value descending, then id ascending.
    let before = |a: u32, b: u32| {
        sanitize(values[a as usize])
            .total_cmp(&sanitize(values[b as usize]))
            .reverse()
            .then(a.cmp(&b))
    };
    if n == 0 {
        return Vec::new();
    }
    if n <= 256 {
        let mut top: Vec<u32> = Vec::with_capacity(n + 1);
        for id in 0..values.len() as u32 {
            if top.len() == n && before(id, top[n - 1]).is_ge() {
                continue;
            }
            let at = top.partition_point(|&t| before(t, id).is_lt());
            top.insert(at, id);
            top.truncate(n);
        }
        return top;
    }
    let mut ids: Vec<u32> = (0..values.len() as u32).collect();
    if n < ids.len() {
        ids.select_nth_unstable_by(n - 1, |&a, &b| before(a, b));
        ids.truncate(n);
    }
    ids.sort_unstable_by(|&a, &b| before(a, b));
    ids
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

    /// The reference: log-softmax of the whole vocabulary.
    fn log_softmax(values: &[f32]) -> Vec<f32> {
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_total = values.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
        values.iter().map(|v| v - log_total).collect()
    }

    /// A small deterministic generator for the randomized tests.
    struct Xorshift(u64);

    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_logprobs() {
        let mut sampler = Sampler::new(
            SamplingParams {
                logprobs: Some(2),
                ..SamplingParams::greedy()
            },
            &[],
            0,
        );
        let out = sampler.sample(&logits());
        assert_eq!(out.token, 1);
        let expected = log_softmax(&logits());
        let logprobs = out.logprobs.expect("asked for");
        assert!((logprobs.logprob - expected[1]).abs() < 1e-6);
        assert_eq!(
            logprobs.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![1, 5]
        );
        assert!((logprobs.top[1].1 - expected[5]).abs() < 1e-6);
        // Not asked for: none computed.
        let mut plain = Sampler::new(SamplingParams::greedy(), &[], 0);
        assert_eq!(plain.sample(&logits()).logprobs, None);
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

    /// The bounded selection keeps exactly what sorting the whole vocabulary keeps.
    #[test]
    fn partial_selection_equals_a_full_sort() {
        let mut rng = Xorshift(0x5EED_1234);
        for round in 0..200 {
            let vocab = 1 + rng.below(3000) as usize;
            // Few distinct values, so ties are common.
            let values: Vec<f32> = (0..vocab).map(|_| rng.below(50) as f32 / 7.0).collect();
            let mut sorted: Vec<u32> = (0..vocab as u32).collect();
            sorted.sort_by(|&a, &b| {
                values[b as usize]
                    .total_cmp(&values[a as usize])
                    .then(a.cmp(&b))
            });
            let n = rng.below(vocab as u64 + 1) as usize;
            assert_eq!(best(&values, n), sorted[..n], "round {round}, n {n}");

            let params = SamplingParams {
                top_k: (rng.below(2) == 0).then(|| 1 + rng.below(vocab as u64) as usize),
                top_p: 0.05 + 0.95 * rng.unit(),
                min_p: if rng.below(2) == 0 { 0.0 } else { rng.unit() },
                ..SamplingParams::default()
            };
            let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = values.iter().map(|v| (v - max).exp()).collect();
            let total: f32 = weights.iter().sum();
            let (kept, mass) = Sampler::new(params.clone(), &[], 0).candidates(&weights, total);
            // Reference: walk the full sort.
            let mut expected = Vec::new();
            let mut expected_mass = 0.0f32;
            for &token in &sorted[..params.top_k.unwrap_or(vocab)] {
                let weight = weights[token as usize];
                if !expected.is_empty()
                    && (expected_mass >= params.top_p * total || weight < params.min_p)
                {
                    break;
                }
                expected.push(token);
                expected_mass += weight;
            }
            assert_eq!(kept, expected, "round {round}: {params:?}");
            assert_eq!(mass, expected_mass);
        }
    }

    #[test]
    fn temperatures_below_the_minimum_are_greedy() {
        for temperature in [1e-39, 1e-30, f32::MIN_POSITIVE, MIN_TEMPERATURE / 2.0] {
            let params = SamplingParams {
                temperature,
                ..SamplingParams::default()
            };
            assert!(params.validate().is_ok());
            assert!(params.is_greedy());
            assert_eq!(draws(params, 50), vec![1; 50], "temperature {temperature}");
        }
        // Just above it: a real (if very sharp) draw, still the arg-max here.
        let sharp = SamplingParams {
            temperature: MIN_TEMPERATURE,
            ..SamplingParams::default()
        };
        assert!(!sharp.is_greedy());
        assert_eq!(draws(sharp, 50), vec![1; 50]);
    }

    /// Whatever the logits (NaN, infinities, huge values) and settings, a token of the
    /// vocabulary comes out and no reported log-probability is NaN.
    #[test]
    fn no_input_makes_a_nan_or_an_out_of_range_token() {
        let mut rng = Xorshift(0xBAD_5EED);
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            1e30,
            -1e30,
            0.0,
        ];
        for round in 0..500 {
            let vocab = 1 + rng.below(200) as usize;
            let logits: Vec<f32> = (0..vocab)
                .map(|_| match rng.below(4) {
                    0 => specials[rng.below(specials.len() as u64) as usize],
                    _ => rng.unit() * 40.0 - 20.0,
                })
                .collect();
            let temperatures = [0.0, 1e-39, 1e-6, MIN_TEMPERATURE, 0.5, 1.0, 2.0];
            let params = SamplingParams {
                temperature: temperatures[rng.below(temperatures.len() as u64) as usize],
                top_p: 0.01 + 0.99 * rng.unit(),
                top_k: (rng.below(2) == 0).then(|| 1 + rng.below(vocab as u64) as usize),
                min_p: if rng.below(2) == 0 { 0.0 } else { rng.unit() },
                presence_penalty: rng.unit() * 4.0 - 2.0,
                frequency_penalty: rng.unit() * 4.0 - 2.0,
                repetition_penalty: 0.1 + rng.unit() * 3.0,
                logprobs: Some(rng.below(21) as usize),
                seed: Some(round),
            };
            assert!(params.validate().is_ok(), "{params:?}");
            let mut sampler = Sampler::new(params.clone(), &[0, 1, 2], round);
            for _ in 0..3 {
                let out = sampler.sample(&logits);
                assert!((out.token as usize) < vocab, "round {round}: {out:?}");
                let logprobs = out.logprobs.expect("asked for");
                assert!(
                    !logprobs.logprob.is_nan(),
                    "round {round}: {logits:?} {params:?}"
                );
                assert!(
                    logprobs
                        .top
                        .iter()
                        .all(|(id, lp)| !lp.is_nan() && (*id as usize) < vocab)
                );
            }
        }
        // Nothing possible at all: still an id.
        let mut sampler = Sampler::new(SamplingParams::default(), &[], 0);
        assert_eq!(sampler.sample(&[f32::NAN, f32::NAN]).token, 0);
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
        let field = |params: SamplingParams| params.validate().unwrap_err().field;
        assert_eq!(
            field(SamplingParams {
                temperature: 2.5,
                ..Default::default()
            }),
            "temperature"
        );
        assert_eq!(
            field(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            }),
            "top_p"
        );
        assert_eq!(
            field(SamplingParams {
                top_k: Some(0),
                ..Default::default()
            }),
            "top_k"
        );
        assert_eq!(
            field(SamplingParams {
                presence_penalty: f32::NAN,
                ..Default::default()
            }),
            "presence_penalty"
        );
        assert_eq!(
            field(SamplingParams {
                logprobs: Some(21),
                ..Default::default()
            }),
            "top_logprobs"
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
