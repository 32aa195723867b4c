//! What a forward step costs, learned from the steps the engine runs, so that a step that
//! carries prompt tokens while other sequences decode can be sized to stall them only a
//! bounded time.
//!
//! The model is linear: a step costs about one pure decode step of the running batch plus
//! a fixed time per prompt token. Both terms are moving averages of measured forward times
//! (planning, building and evaluating the graph), so they follow the machine, the model,
//! the batch size and the context as those change. Pure Rust: the engine feeds it seconds.

/// Weight of the newest observation in each moving average.
const SMOOTHING: f64 = 0.2;

/// The fewest prompt tokens a decode-carrying step takes, however slow prompts are
/// measured to be: prompts must progress even beside a large decoding batch.
pub const MIN_PROMPT_TOKENS: usize = 16;

/// Moving averages of a pure decode step and of one prompt token's share of a step.
#[derive(Debug, Clone, Default)]
pub struct StepCost {
    decode_seconds: Option<f64>,
    prompt_token_seconds: Option<f64>,
}

impl StepCost {
    /// Records one step that ran `prompt_tokens` prompt tokens (0 for a pure decode step)
    /// in `seconds`. A prompt-carrying step counts only once a decode step is known: its
    /// prompt tokens are charged what it took beyond one.
    pub fn observe(&mut self, prompt_tokens: usize, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        if prompt_tokens == 0 {
            average(&mut self.decode_seconds, seconds);
        } else if let Some(decode) = self.decode_seconds {
            let per_token = (seconds - decode).max(0.0) / prompt_tokens as f64;
            average(&mut self.prompt_token_seconds, per_token);
        }
    }

    /// How many prompt tokens a step that also decodes may carry so that it takes about
    /// `stall_factor` pure decode steps: `(stall_factor - 1)` decode steps' worth of
    /// prompt, at least [`MIN_PROMPT_TOKENS`]. `None` (no limit) while either cost is
    /// still unmeasured, or with a factor of 0.
    pub fn prompt_budget(&self, stall_factor: usize) -> Option<usize> {
        if stall_factor == 0 {
            return None;
        }
        let (decode, per_token) = (self.decode_seconds?, self.prompt_token_seconds?);
        let spare = decode * stall_factor.saturating_sub(1) as f64;
        let tokens = if per_token > 0.0 {
            (spare / per_token).floor().min(usize::MAX as f64) as usize
        } else {
            usize::MAX
        };
        Some(tokens.max(MIN_PROMPT_TOKENS))
    }
}

fn average(mean: &mut Option<f64>, value: f64) {
    *mean = Some(match *mean {
        Some(m) => m + SMOOTHING * (value - m),
        None => value,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_a_prompt_step_within_the_factor() {
        let mut cost = StepCost::default();
        assert_eq!(cost.prompt_budget(2), None, "nothing measured yet");
        // A prompt step before any decode step teaches nothing.
        cost.observe(100, 1.0);
        assert_eq!(cost.prompt_budget(2), None);
        cost.observe(0, 0.1);
        assert_eq!(cost.prompt_budget(2), None, "no prompt cost yet");
        // 100 prompt tokens took 0.4 s beyond a 0.1 s decode step: 4 ms per token.
        cost.observe(100, 0.5);
        // Factor 2 leaves one decode step (0.1 s) for prompt: 25 tokens.
        assert_eq!(cost.prompt_budget(2), Some(25));
        assert_eq!(cost.prompt_budget(3), Some(50));
        // Factor 1 leaves no room, but prompts still progress.
        assert_eq!(cost.prompt_budget(1), Some(MIN_PROMPT_TOKENS));
        assert_eq!(cost.prompt_budget(0), None, "0 turns the limit off");
    }

    #[test]
    fn averages_follow_the_machine() {
        let mut cost = StepCost::default();
        cost.observe(0, 0.1);
        cost.observe(50, 0.3);
        let before = cost.prompt_budget(4).unwrap();
        // Decode steps get twice as slow (a bigger batch): the room for prompt grows.
        for _ in 0..50 {
            cost.observe(0, 0.2);
        }
        let after = cost.prompt_budget(4).unwrap();
        assert!(after > before, "{after} <= {before}");
        // Nonsense timings are ignored.
        cost.observe(0, f64::NAN);
        cost.observe(10, -1.0);
        assert_eq!(cost.prompt_budget(4), Some(after));
    }
}
