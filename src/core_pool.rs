//! The threads that share the CPU's cores among the parts of one matrix product.
//!
//! A decode step makes about 210 matrix products of a few milliseconds or less, with other
//! work in between. A part handed to a sleeping thread waits for it to be woken and
//! scheduled, about 0.2 ms here, which costs more than splitting gains. So, as OpenBLAS
//! does with its own, the helpers spin between products for [`SPIN`] and sleep only after
//! that. Two spinning pools cannot share a small machine: the one that spins holds the core
//! the other needs (docs/performance.md, "Tried and not kept"). So this pool is the only
//! one: the executable's `cblas_sgemm` (`src/sgemm_forward.rs`) runs every large product
//! on it, and OpenBLAS itself is kept to one thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper keeps watching for the next product before it sleeps: longer
/// than the gaps inside and between decode steps, short enough that an idle server does
/// not hold a core for long.
const SPIN: Duration = Duration::from_millis(20);

/// One chunk of a product: `work(chunk)` for `chunk` in `0..chunks`.
type Work<'a> = dyn Fn(usize) + Sync + 'a;

#[derive(Clone, Copy)]
struct Job {
    /// The work, its lifetime erased: valid while the product is open (see `CorePool::run`).
    work: *const Work<'static>,
    chunks: usize,
}
// SAFETY: the pointee is `Sync`; `CorePool::run` keeps it alive while any helper holds a
// seat.
unsafe impl Send for Job {}

/// What a caller publishes for the helpers.
///
/// Protocol: the caller sets `job`, `next` and `finished`, opens `seats` (one per helper),
/// then bumps `generation`. A helper that sees a new generation takes a seat if one is
/// left, and only then reads the job; it takes chunks from `next` until none are left and
/// counts itself in `finished`. The caller takes chunks too, and when none are left it
/// closes the seats and waits only for the helpers that took one. A helper that comes
/// late (still waking, or preempted) finds the seats closed and costs the caller nothing.
struct Shared {
    generation: AtomicU64,
    job: Mutex<Option<Job>>,
    seats: AtomicUsize,
    next: AtomicUsize,
    finished: AtomicUsize,
    /// Per helper: it is asleep (or about to be) and must be unparked.
    asleep: Vec<AtomicBool>,
}

/// The calling thread plus `threads - 1` helpers.
pub struct CorePool {
    shared: Arc<Shared>,
    helpers: Vec<Thread>,
    /// Set while a caller owns the pool; a second concurrent caller computes alone.
    busy: AtomicBool,
}

impl CorePool {
    /// A pool of `threads` threads in all (the caller counts as one); at least one.
    pub fn new(threads: usize) -> CorePool {
        let helpers_wanted = threads.max(1) - 1;
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            seats: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            asleep: (0..helpers_wanted)
                .map(|_| AtomicBool::new(false))
                .collect(),
        });
        let helpers = (0..helpers_wanted)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("mlx-serve-gemm-{}", index + 1))
                    .spawn(move || helper(&shared, index))
                    .expect("cannot start a matmul helper thread")
                    .thread()
                    .clone()
            })
            .collect();
        CorePool {
            shared,
            helpers,
            busy: AtomicBool::new(false),
        }
    }

    /// How many threads share a product (the caller included).
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `work(chunk)` once for every `chunk` in `0..chunks`, spread over the calling
    /// thread and whichever helpers join in time, and returns when all are done. A caller
    /// that finds the pool in use by another thread runs every chunk itself, in order.
    pub fn run(&self, chunks: usize, work: &Work<'_>) {
        if chunks <= 1
            || self.helpers.is_empty()
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            (0..chunks).for_each(work);
            return;
        }
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased; this function does not return before every
        // helper holding a seat has finished with the pointer.
        let erased: *const Work<'static> = unsafe { std::mem::transmute(work as *const Work<'_>) };
        *shared.job.lock().expect("matmul pool lock") = Some(Job {
            work: erased,
            chunks,
        });
        shared.next.store(0, Ordering::SeqCst);
        shared.finished.store(0, Ordering::SeqCst);
        shared.seats.store(self.helpers.len(), Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        for (helper, asleep) in self.helpers.iter().zip(&shared.asleep) {
            if asleep.load(Ordering::SeqCst) {
                helper.unpark();
            }
        }
        take_chunks(shared, chunks, work);
        let unclaimed = shared.seats.swap(0, Ordering::SeqCst);
        let joined = self.helpers.len() - unclaimed;
        while shared.finished.load(Ordering::Acquire) != joined {
            std::hint::spin_loop();
        }
        *shared.job.lock().expect("matmul pool lock") = None;
        self.busy.store(false, Ordering::Release);
    }
}

/// Runs chunks from `shared.next` until none are left.
fn take_chunks(shared: &Shared, chunks: usize, work: &Work<'_>) {
    loop {
        let chunk = shared.next.fetch_add(1, Ordering::Relaxed);
        if chunk >= chunks {
            return;
        }
        work(chunk);
    }
}

/// A helper's life: wait for a new generation (spinning, then asleep), join the product if
/// a seat is left, take chunks.
fn helper(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            if shared.generation.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && started.elapsed() >= SPIN {
                // Announce the sleep, then look once more: a caller that published a product
                // before seeing the flag is caught here, one after it will unpark us.
                shared.asleep[index].store(true, Ordering::SeqCst);
                if shared.generation.load(Ordering::SeqCst) == seen {
                    std::thread::park();
                }
                shared.asleep[index].store(false, Ordering::SeqCst);
            } else {
                std::hint::spin_loop();
            }
        }
        seen = shared.generation.load(Ordering::Acquire);
        let seated = shared
            .seats
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |seats| {
                seats.checked_sub(1)
            })
            .is_ok();
        if !seated {
            continue;
        }
        let job = *shared.job.lock().expect("matmul pool lock");
        if let Some(job) = job {
            // SAFETY: the caller keeps the work alive until every seated helper has counted
            // itself in `finished`, which this one does only below.
            take_chunks(shared, job.chunks, unsafe { &*job.work });
        }
        shared.finished.fetch_add(1, Ordering::Release);
    }
}

/// The process's pool, sized from OpenBLAS's thread count (its default is one per core,
/// `OPENBLAS_NUM_THREADS` overrides it), which it then takes over: OpenBLAS is set to one
/// thread, so its workers stay asleep and leave the cores to this pool.
pub fn global() -> &'static CorePool {
    static POOL: OnceLock<CorePool> = OnceLock::new();
    POOL.get_or_init(|| {
        unsafe extern "C" {
            fn openblas_get_num_threads() -> std::ffi::c_int;
            fn openblas_set_num_threads(threads: std::ffi::c_int);
        }
        // SAFETY: OpenBLAS's own thread-count calls, without pointers.
        let threads = unsafe {
            let threads = openblas_get_num_threads().max(1) as usize;
            openblas_set_num_threads(1);
            threads
        };
        tracing::info!(
            threads,
            "matrix products share this many threads; OpenBLAS keeps one"
        );
        CorePool::new(threads)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_once_per_product_even_after_the_helpers_slept() {
        let pool = CorePool::new(3);
        for round in 0..200u32 {
            let chunks = 1 + round as usize % 40;
            let counts: Vec<AtomicU32> = (0..chunks).map(|_| AtomicU32::new(0)).collect();
            pool.run(chunks, &|chunk| {
                counts[chunk].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts
                    .iter()
                    .all(|count| count.load(Ordering::Relaxed) == 1),
                "round {round}: chunks ran {:?} times",
                counts
                    .iter()
                    .map(|count| count.load(Ordering::Relaxed))
                    .collect::<Vec<_>>()
            );
            if round % 50 == 49 {
                // Long enough for the helpers to fall asleep; the next product wakes them.
                std::thread::sleep(SPIN * 2);
            }
        }
    }

    #[test]
    fn concurrent_callers_each_get_every_chunk() {
        let pool = Arc::new(CorePool::new(2));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        let total = AtomicU32::new(0);
                        pool.run(5, &|chunk| {
                            total.fetch_add(chunk as u32 + 1, Ordering::Relaxed);
                        });
                        assert_eq!(
                            total.load(Ordering::Relaxed),
                            15,
                            "chunks 0 to 4 ran once each"
                        );
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
    }
}
