//! Where the engine thread's time goes, phase by phase, for the two kinds of step.
//!
//! Every step is timed from the engine thread's side: planning and admission, building the
//! MLX graph, evaluating it, sampling, detokenizing (with stop matching), the scheduler's
//! bookkeeping, and handing events to the clients' channels. The totals are exported as
//! counters (`mlx_serve_engine_profile_*`), so a scrape before and after a load gives the
//! breakdown of exactly that load (`scripts/profile_server.sh`, docs/performance.md). The
//! timers cost a few `Instant::now()` calls per step against steps of tens of milliseconds.

use std::time::Instant;

/// Whether a step carries prompt tokens. A step that prefills costs more than a decode
/// step of the same batch, so the two are profiled apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Every sequence decodes one token.
    Decode,
    /// At least one sequence runs a chunk of its prompt.
    Prefill,
}

impl StepKind {
    pub const ALL: [StepKind; 2] = [StepKind::Decode, StepKind::Prefill];

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Decode => "decode",
            StepKind::Prefill => "prefill",
        }
    }
}

/// A phase of a step, in the order the engine runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPhase {
    /// Scheduling: admissions, refusals, restores, preemptions, the persistence offer.
    Schedule,
    /// Planning the batch and building the lazy MLX graph of the forward pass.
    Build,
    /// Evaluating the graph: every kernel of the forward pass (matmuls, attention, KV
    /// writes) runs here.
    Evaluate,
    /// Turning each sequence's logits into a token (penalties, top-k/p, log-probs).
    Sample,
    /// Detokenizing the new tokens and matching stop sequences.
    Detokenize,
    /// The scheduler's accounting of the step (block hashing, growth) and retirements.
    Bookkeeping,
    /// Publishing the engine's stats and putting events into the clients' channels (a
    /// step's delivery shows in the stats snapshot after the one that counts the step).
    Deliver,
}

impl StepPhase {
    pub const ALL: [StepPhase; 7] = [
        StepPhase::Schedule,
        StepPhase::Build,
        StepPhase::Evaluate,
        StepPhase::Sample,
        StepPhase::Detokenize,
        StepPhase::Bookkeeping,
        StepPhase::Deliver,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepPhase::Schedule => "schedule",
            StepPhase::Build => "build",
            StepPhase::Evaluate => "evaluate",
            StepPhase::Sample => "sample",
            StepPhase::Detokenize => "detokenize",
            StepPhase::Bookkeeping => "bookkeeping",
            StepPhase::Deliver => "deliver",
        }
    }
}

/// Totals for one kind of step since start.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KindProfile {
    pub steps: u64,
    /// Sequences run, summed over steps (divided by `steps`: the mean batch).
    pub sequences: u64,
    /// New tokens run (prompt and decoded), summed over steps.
    pub tokens: u64,
    /// Seconds per phase, indexed like [`StepPhase::ALL`].
    pub seconds: [f64; StepPhase::ALL.len()],
}

impl KindProfile {
    pub fn phase(&self, phase: StepPhase) -> f64 {
        self.seconds[phase as usize]
    }

    pub fn total_seconds(&self) -> f64 {
        self.seconds.iter().sum()
    }
}

/// Totals for both kinds of step since start.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepProfile {
    kinds: [KindProfile; StepKind::ALL.len()],
}

impl StepProfile {
    pub fn kind(&self, kind: StepKind) -> &KindProfile {
        &self.kinds[kind as usize]
    }

    /// Forward steps run, both kinds together.
    pub fn steps(&self) -> u64 {
        self.kinds.iter().map(|k| k.steps).sum()
    }

    /// Seconds in `phase`, both kinds together.
    pub fn phase(&self, phase: StepPhase) -> f64 {
        self.kinds.iter().map(|k| k.phase(phase)).sum()
    }

    /// Seconds in steps, every phase and kind.
    pub fn total_seconds(&self) -> f64 {
        self.kinds.iter().map(KindProfile::total_seconds).sum()
    }

    /// Adds `seconds` to `phase` of the latest step of `kind`: for delivery, which happens
    /// after the step's stats are published (so it shows in the next snapshot).
    pub(crate) fn add_phase(&mut self, kind: StepKind, phase: StepPhase, seconds: f64) {
        self.kinds[kind as usize].seconds[phase as usize] += seconds;
    }

    /// Adds one step's `timer` as a step of `kind` with `sequences` sequences and `tokens`
    /// new tokens.
    pub(crate) fn add(
        &mut self,
        kind: StepKind,
        sequences: usize,
        tokens: usize,
        timer: &StepTimer,
    ) {
        let totals = &mut self.kinds[kind as usize];
        totals.steps += 1;
        totals.sequences += sequences as u64;
        totals.tokens += tokens as u64;
        for (total, seconds) in totals.seconds.iter_mut().zip(timer.seconds) {
            *total += seconds;
        }
    }
}

/// One step's phase times, taken as consecutive laps: each [`StepTimer::lap`] charges the
/// time since the previous lap to a phase, so the phases add up to the step's wall time.
#[derive(Debug, Clone)]
pub(crate) struct StepTimer {
    last: Instant,
    seconds: [f64; StepPhase::ALL.len()],
}

impl StepTimer {
    pub(crate) fn start() -> Self {
        StepTimer {
            last: Instant::now(),
            seconds: [0.0; StepPhase::ALL.len()],
        }
    }

    /// Charges the time since the last lap (or the start) to `phase`.
    pub(crate) fn lap(&mut self, phase: StepPhase) {
        let now = Instant::now();
        self.seconds[phase as usize] += (now - self.last).as_secs_f64();
        self.last = now;
    }

    /// Seconds since the last lap (or the start).
    pub(crate) fn since_last_lap(&self) -> f64 {
        self.last.elapsed().as_secs_f64()
    }

    /// Charges `seconds` measured elsewhere to `phase`, taking them out of the next lap
    /// (whose phase contains them).
    pub(crate) fn move_into(&mut self, phase: StepPhase, seconds: f64, from: StepPhase) {
        self.seconds[phase as usize] += seconds;
        self.seconds[from as usize] -= seconds;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_per_kind_and_phase() {
        let mut timer = StepTimer::start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        timer.lap(StepPhase::Schedule);
        std::thread::sleep(std::time::Duration::from_millis(3));
        timer.lap(StepPhase::Evaluate);
        timer.move_into(StepPhase::Build, 0.001, StepPhase::Evaluate);
        let mut profile = StepProfile::default();
        profile.add(StepKind::Prefill, 3, 40, &timer);
        profile.add(StepKind::Decode, 2, 2, &StepTimer::start());
        profile.add_phase(StepKind::Decode, StepPhase::Deliver, 0.25);

        let prefill = profile.kind(StepKind::Prefill);
        assert_eq!(
            (prefill.steps, prefill.sequences, prefill.tokens),
            (1, 3, 40)
        );
        assert!(prefill.phase(StepPhase::Schedule) >= 0.002);
        assert!(prefill.phase(StepPhase::Evaluate) >= 0.002);
        assert!((prefill.phase(StepPhase::Build) - 0.001).abs() < 1e-9);
        // Moving time between phases keeps the step's total.
        assert!(prefill.total_seconds() >= 0.005);
        assert_eq!(profile.kind(StepKind::Decode).steps, 1);
        assert_eq!(profile.steps(), 2);
        assert_eq!(profile.kind(StepKind::Decode).total_seconds(), 0.25);
        assert!((profile.total_seconds() - prefill.total_seconds() - 0.25).abs() < 1e-12);
    }
}
