//! The server process's resident memory and CPU, sampled with sysinfo by pid: what the
//! soak's memory-growth criterion and the side-by-side peak-RSS figures are made of.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// One sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since sampling began.
    pub at_s: f64,
    pub rss_bytes: u64,
    /// CPU use since the previous sample, in percent of one core.
    pub cpu_percent: f64,
}

/// Samples a process every `interval` on a thread of its own until dropped.
pub struct ProcessSampler {
    pid: Pid,
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
}

/// One sample of `pid` (CPU use since `system`'s previous refresh).
fn sample(system: &mut System, pid: Pid, started: Instant) -> Option<Sample> {
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_memory().with_cpu(),
    );
    system.process(pid).map(|process| Sample {
        at_s: started.elapsed().as_secs_f64(),
        rss_bytes: process.memory(),
        cpu_percent: f64::from(process.cpu_usage()),
    })
}

impl ProcessSampler {
    /// Starts sampling `pid` now and then every `interval`.
    pub fn start(pid: u32, interval: Duration) -> ProcessSampler {
        let pid = Pid::from_u32(pid);
        let started = Instant::now();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (out, halt) = (Arc::clone(&samples), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut system = System::new();
            let mut next = started;
            while !halt.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    if let (Some(taken), Ok(mut samples)) =
                        (sample(&mut system, pid, started), out.lock())
                    {
                        samples.push(taken);
                    }
                    next += interval;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        ProcessSampler {
            pid,
            started,
            samples,
            stop,
        }
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops sampling and returns every sample, with one more taken now.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = self.samples();
        let mut system = System::new();
        // CPU use needs two refreshes some time apart.
        let _ = sample(&mut system, self.pid, self.started);
        std::thread::sleep(Duration::from_millis(500));
        samples.extend(sample(&mut system, self.pid, self.started));
        samples
    }
}

impl Drop for ProcessSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
