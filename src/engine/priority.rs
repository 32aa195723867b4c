//! Scheduling priority of the threads that compute. A prefill keeps every core busy for
//! seconds; at equal priority the async threads that read requests and answer refusals,
//! health checks and streamed tokens get a core only in turn with it, a scheduler slice
//! or more later on a machine with few cores (BENCHMARK_REPORT.md, the flood with the
//! engine thread yielding). Those threads need little CPU, so on Linux every thread that computes for the
//! engine runs [`NICE_STEPS`] below them: the engine loses almost nothing, and nothing at
//! all while they are idle. Linux keeps the nice value per thread, and a thread starts
//! with its creator's, so lowering a thread also lowers every thread it starts afterwards.
//! A system that forbids the change gets a warning in the log and nothing else; macOS
//! keeps the process's priority.

/// How far below the async threads the engine's threads run, in nice steps (Linux weighs
/// a thread at nice 10 about a tenth of one at nice 0 when both want a core).
#[cfg(target_os = "linux")]
const NICE_STEPS: libc::c_int = 10;

/// Lowers the calling thread, the engine thread, and so every thread it starts afterwards
/// (MLX's CPU stream thread, which runs every operation, and the KV store's reader and
/// writer).
pub(crate) fn yield_to_front_end() {
    #[cfg(target_os = "linux")]
    if let Err(error) = lower(0) {
        tracing::warn!(
            %error,
            "cannot lower the engine thread's priority; refusals may wait behind a prefill"
        );
    }
}

/// Lowers every thread that libraries started before `main` ran: OpenBLAS's worker pool,
/// which its constructor starts while the library is loaded. The workers split each
/// matrix product with MLX's stream thread and spin, yielding, between products; they are
/// not the engine thread's children, so they would otherwise keep the front end's
/// priority and take a core from it on every prefill. Call it first thing in `main`,
/// while no thread of ours exists yet: every thread but the calling one is then a
/// library's.
pub fn lower_library_threads() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: a plain system call without arguments.
        let own = unsafe { libc::gettid() };
        let tasks = match std::fs::read_dir("/proc/self/task") {
            Ok(tasks) => tasks,
            Err(error) => {
                eprintln!("warning: cannot list this process's threads: {error}");
                return;
            }
        };
        let library_threads = tasks
            .filter_map(|task| task.ok()?.file_name().to_str()?.parse::<libc::id_t>().ok())
            .filter(|&tid| tid as libc::pid_t != own);
        for tid in library_threads {
            if let Err(error) = lower(tid) {
                eprintln!(
                    "warning: cannot lower the priority of library thread {tid}: {error}; \
                     refusals may wait behind a prefill"
                );
            }
        }
    }
}

/// Moves thread `tid` (0: the calling thread) [`NICE_STEPS`] lower, at most to 19.
#[cfg(target_os = "linux")]
fn lower(tid: libc::id_t) -> std::io::Result<()> {
    // SAFETY: plain system calls; errno is thread-local, and getpriority can return -1
    // as a valid value, so errno is cleared first to tell an error apart.
    unsafe {
        *libc::__errno_location() = 0;
        let current = libc::getpriority(libc::PRIO_PROCESS, tid);
        if *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let lowered = (current + NICE_STEPS).min(19);
        if libc::setpriority(libc::PRIO_PROCESS, tid, lowered) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of thread `tid` (0: the calling thread).
    fn nice(tid: libc::id_t) -> libc::c_int {
        // SAFETY: as in `lower`.
        unsafe {
            *libc::__errno_location() = 0;
            let value = libc::getpriority(libc::PRIO_PROCESS, tid);
            assert_eq!(*libc::__errno_location(), 0, "getpriority failed");
            value
        }
    }

    #[test]
    fn the_engine_thread_and_what_it_starts_run_lower() {
        let (before, after, child) = std::thread::spawn(|| {
            let before = nice(0);
            yield_to_front_end();
            let after = nice(0);
            let child = std::thread::spawn(|| nice(0)).join().unwrap();
            (before, after, child)
        })
        .join()
        .unwrap();
        assert_eq!(after, (before + NICE_STEPS).min(19));
        assert_eq!(
            child, after,
            "a thread starts with its creator's nice value"
        );
    }

    #[test]
    fn another_thread_can_be_lowered_by_id() {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            // SAFETY: a plain system call without arguments.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            done_rx.recv().unwrap();
            nice(0)
        });
        let tid = tid_rx.recv().unwrap() as libc::id_t;
        let before = nice(tid);
        lower(tid).unwrap();
        done_tx.send(()).unwrap();
        assert_eq!(worker.join().unwrap(), (before + NICE_STEPS).min(19));
    }
}
