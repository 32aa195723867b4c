//! The real binary's threads on Linux: after a generation (so every compute thread exists,
//! OpenBLAS's pool, started before `main`, and the matrix-product helpers among them), only
//! the main thread and the async runtime's threads run at the process's priority; every
//! other thread runs at least 10 nice steps lower, so refusals and health checks never
//! wait for a core behind a prefill (docs/engine.md).

#![cfg(target_os = "linux")]

mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/server.rs"]
mod server;

use reqwest::StatusCode;
use serde_json::json;
use server::{MODEL, client};

/// A thread of the server: its name and nice value, read from `/proc`.
#[derive(Debug)]
struct Thread {
    tid: u32,
    name: String,
    nice: i32,
}

fn threads(pid: u32) -> Vec<Thread> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list the threads");
    tasks
        .filter_map(|task| {
            let tid: u32 = task.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            // The name is in parentheses and may hold spaces: the fields after it count
            // from the last `)`; nice is the 19th field of the line, the 17th after it.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_owned();
            let nice = rest.split_whitespace().nth(16)?.parse().ok()?;
            Some(Thread { tid, name, nice })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_thread_but_the_front_end_runs_ten_nice_steps_lower() {
    let served = process::start(&[]);
    let response = client()
        .post(format!("{}/v1/completions", served.base))
        .json(
            &json!({"model": MODEL, "prompt": "The capital of France is",
                      "max_tokens": 4, "temperature": 0}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let pid = served.child.id();
    let threads = threads(pid);
    let main = threads
        .iter()
        .find(|t| t.tid == pid)
        .expect("the main thread");
    let front_end = |t: &Thread| t.tid == pid || t.name == "tokio-rt-worker";
    let (front, compute): (Vec<&Thread>, Vec<&Thread>) = threads.iter().partition(|t| front_end(t));
    assert!(
        front.iter().all(|t| t.nice == main.nice),
        "the async threads run at the process's priority: {front:?}"
    );
    assert!(
        compute.iter().any(|t| t.name == "mlx-engine"),
        "the engine thread exists: {threads:?}"
    );
    // With 2 cores or more (and no `OPENBLAS_NUM_THREADS=1`) OpenBLAS starts a worker
    // while it is loaded, before `main`: a thread of neither the engine nor the runtime,
    // named like the process. It is the case this test is about.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores > 1 && std::env::var("OPENBLAS_NUM_THREADS").as_deref() != Ok("1") {
        assert!(
            compute.iter().any(|t| t.name == main.name),
            "OpenBLAS's worker, started before main: {threads:?}"
        );
        // The helpers that share matrix products (src/core_pool.rs), started by MLX's
        // stream thread on the first product.
        assert!(
            compute.iter().any(|t| t.name.starts_with("mlx-serve-gemm")),
            "the matrix-product helper: {threads:?}"
        );
    }
    let expected = (main.nice + 10).min(19);
    let at_front_priority: Vec<_> = compute.iter().filter(|t| t.nice < expected).collect();
    assert!(
        at_front_priority.is_empty(),
        "threads that compute for the engine must run at nice {expected} or lower: \
         {at_front_priority:?}"
    );
}
