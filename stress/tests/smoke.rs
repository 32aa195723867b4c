//! The stress smoke `make test` runs: the real `stress` binary against the real server on
//! the default model, at a small scale — a flood of a small pool (scenario 1: only 200s
//! and 429s with `Retry-After`, a full recovery) and a short soak (scenario 7: no failed
//! request; RSS and latency drift within loose bounds, since a minute says little about
//! an hour). The full-size runs are `make stress` and `make soak` (stress/README.md).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The repository root: the server finds its default model from there.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("stress/ lives in the repository")
        .to_path_buf()
}

/// A server on a free port, killed when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Served {
    let binary = Path::new(env!("CARGO_BIN_EXE_stress")).with_file_name("mlx-serve");
    assert!(
        binary.is_file(),
        "{} is missing: build the server first (`cargo build --release`, or run `make test`)",
        binary.display()
    );
    let mut child = Command::new(&binary)
        .current_dir(root())
        .args(["serve", "--port", "0", "--no-kv-store"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mlx-serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut base = None;
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(300))
            .expect("mlx-serve did not get ready within 300 s");
        if let Some(address) = line.strip_prefix("listening on ") {
            base = Some(address.trim().to_owned());
        }
        if line.starts_with("ready:") {
            break;
        }
    }
    Served {
        child,
        base: base.expect("a `listening on` line before `ready:`"),
    }
}

/// Runs `stress args...` from the repository root; its stdout, and whether it passed.
fn stress(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_stress"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("run stress");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.success(), format!("{stdout}\n{stderr}"))
}

#[test]
fn a_small_flood_and_a_short_soak_pass() {
    // Scenario 1, small: 24 requests at once on a 16 MiB pool with a queue of 4. The
    // refusal-time bound is left loose here: it is measured by the full run on an idle
    // machine (BENCHMARK_REPORT.md), not by a smoke sharing two cores with its server.
    let served = serve(&["--kv-cache-mb", "16", "--max-queue", "4"]);
    let (passed, output) = stress(&[
        "flood",
        "--url",
        &served.base,
        "--concurrency",
        "24",
        "--prompt-words",
        "100",
        "--max-tokens",
        "4",
        "--max-refusal-p99-ms",
        "2000",
        "--recovery",
        "3",
    ]);
    assert!(passed, "{output}");
    assert!(output.contains("| 200 |"), "{output}");
    drop(served);

    // Scenario 7, short: arrivals every 2 s (0.5 requests/s) for 40 s, streamed, short
    // prompts (about half of what this machine serves).
    let served = serve(&["--kv-cache-mb", "64"]);
    let pid = served.child.id().to_string();
    let (passed, output) = stress(&[
        "soak",
        "--url",
        &served.base,
        "--pid",
        &pid,
        "--rate",
        "0.5",
        "--duration-secs",
        "40",
        "--window-secs",
        "10",
        "--warmup-secs",
        "10",
        "--compare-secs",
        "10",
        "--rss-interval-secs",
        "5",
        "--prompt-words",
        "30",
        "--max-tokens",
        "8",
        "--max-rss-growth",
        "0.25",
        "--max-p95-drift",
        "1.0",
    ]);
    assert!(passed, "{output}");
    assert!(output.contains("RSS growth after warm-up"), "{output}");
    // The server's own percentiles of the same requests, read from its /metrics.
    assert!(output.contains("as the server recorded it"), "{output}");
}
