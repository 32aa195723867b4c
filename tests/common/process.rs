//! The real binary as a child process: started on a free port, signalled, waited for;
//! its stdout and logs read on threads.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::DEADLINE;

pub struct Served {
    pub child: Child,
    pub base: String,
    /// The rest of stdout, read on a thread.
    pub output: std::sync::mpsc::Receiver<String>,
    /// Standard error (the logs), read on a thread.
    pub logs: std::sync::mpsc::Receiver<String>,
}

/// Sends each line of `reader` into a channel, from a thread.
fn lines_of(reader: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `mlx-serve serve` of the default model on a free port with a 64 MiB KV pool, then
/// `extra`; stdout and stderr piped. Not started.
pub fn serve_command(extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mlx-serve"));
    command
        .args(["serve", "--port", "0", "--kv-cache-mb", "64", "--model"])
        .arg(crate::common::default_model_path())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts `mlx-serve serve` on a free port and waits until the model is ready. Without
/// `--kv-store-dir` in `extra` the disk tier is off (nothing is written into the user's
/// cache folder).
pub fn start(extra: &[&str]) -> Served {
    let store = if extra.contains(&"--kv-store-dir") {
        None
    } else {
        Some("--no-kv-store")
    };
    let mut child = serve_command(extra)
        .args(store)
        .spawn()
        .expect("start mlx-serve");
    let rx = lines_of(child.stdout.take().unwrap());
    let logs = lines_of(child.stderr.take().unwrap());
    let started = Instant::now();
    let mut base = None;
    loop {
        let line = rx
            .recv_timeout(DEADLINE.saturating_sub(started.elapsed()))
            .expect("mlx-serve did not get ready in time");
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
        output: rx,
        logs,
    }
}

impl Served {
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the exit (panics after `deadline`) and returns the exit code.
    pub fn wait(&mut self, deadline: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                started.elapsed() < deadline,
                "mlx-serve did not exit in {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
