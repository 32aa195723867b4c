//! Values sampled on a timer rather than per request: the process's memory and CPU (from
//! `sysinfo`) and the generation throughput over the last interval. Sampling costs a few
//! reads of `/proc` (or the macOS equivalent), so it never runs on a request's path.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// How often the server samples.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// The process as last sampled.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct ProcessSample {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    /// CPU use over the last interval, in percent of one core (200 = two busy cores).
    pub cpu_usage_percent: f64,
    /// CPU time used since the process started.
    pub cpu_seconds_total: f64,
    /// Unix seconds when the process started.
    pub start_time_seconds: u64,
}

/// The latest samples.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SampledValues {
    pub process: ProcessSample,
    /// Generated tokens per second over the last interval.
    pub generation_tokens_per_second: f64,
}

/// Takes samples and keeps the latest.
#[derive(Debug)]
pub struct Sampler {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    system: System,
    pid: Option<Pid>,
    latest: SampledValues,
    /// The generated-token count at the previous sample.
    previous_tokens: Option<(Instant, u64)>,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler {
            state: Mutex::new(State {
                system: System::new(),
                pid: sysinfo::get_current_pid().ok(),
                latest: SampledValues::default(),
                previous_tokens: None,
            }),
        }
    }
}

impl Sampler {
    /// Takes a sample; `generated_tokens` is the engine's running total (`None` while no
    /// model is loaded).
    pub fn sample(&self, generated_tokens: Option<u64>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let state = &mut *state;
        if let Some(pid) = state.pid {
            state.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_memory().with_cpu(),
            );
            if let Some(process) = state.system.process(pid) {
                state.latest.process = ProcessSample {
                    resident_memory_bytes: process.memory(),
                    virtual_memory_bytes: process.virtual_memory(),
                    cpu_usage_percent: f64::from(process.cpu_usage()),
                    cpu_seconds_total: process.accumulated_cpu_time() as f64 / 1e3,
                    start_time_seconds: process.start_time(),
                };
            }
        }
        let now = Instant::now();
        if let Some(tokens) = generated_tokens {
            if let Some((then, before)) = state.previous_tokens {
                let seconds = now.duration_since(then).as_secs_f64();
                if seconds > 0.0 {
                    state.latest.generation_tokens_per_second =
                        tokens.saturating_sub(before) as f64 / seconds;
                }
            }
            state.previous_tokens = Some((now, tokens));
        }
    }

    /// The most recent samples (zeros before the first).
    pub fn latest(&self) -> SampledValues {
        self.state.lock().map(|s| s.latest).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process_and_the_token_rate() {
        let sampler = Sampler::default();
        sampler.sample(Some(100));
        std::thread::sleep(Duration::from_millis(20));
        sampler.sample(Some(150));
        let latest = sampler.latest();
        assert!(latest.process.resident_memory_bytes > 0);
        assert!(latest.process.start_time_seconds > 0);
        // 50 tokens in at least 20 ms: at most 2500/s, and more than nothing.
        let rate = latest.generation_tokens_per_second;
        assert!(rate > 0.0 && rate <= 2500.0, "{rate}");
    }
}
