//! `--device` / `MLX_SERVE_DEVICE` on the real binary: the CPU serves and says so, a GPU
//! that this MLX build lacks is refused at start-up with what to do, a bad value is a usage
//! error. Plus the GPU smoke test, `#[ignore]`d here because it needs a GPU backend; the
//! macOS CI job runs it with `cargo test --release --test device -- --ignored`.

mod common;
#[path = "common/process.rs"]
mod process;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::DEADLINE;
use serde_json::Value;

/// Starts `mlx-serve serve` with `args` and the environment `env`, on a free port, and
/// returns the child with its stdout lines up to and including the first one `until`
/// accepts (or every line, when the process ends first), and its standard error.
fn run_until(
    args: &[&str],
    env: &[(&str, &str)],
    until: impl Fn(&str) -> bool,
) -> (std::process::Child, Vec<String>) {
    let mut command =
        process::serve_command(&["--no-kv-store", "--served-model-name", "device-test"]);
    command.args(args).env_remove("MLX_SERVE_DEVICE");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("start mlx-serve");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = Vec::new();
    for line in stdout.lines().map_while(Result::ok) {
        let done = until(&line);
        lines.push(line);
        if done {
            break;
        }
    }
    (child, lines)
}

/// Waits for the child's exit (panics after the deadline) and returns its code and
/// standard error.
fn exit_of(mut child: std::process::Child) -> (Option<i32>, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "mlx-serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.code(), stderr)
}

/// One greedy chat completion of up to 8 tokens over plain HTTP/1.1; returns the status
/// code and the JSON body.
fn complete(base: &str) -> (u16, Value) {
    let address = base.trim_start_matches("http://");
    let body = r#"{"model":"device-test","max_tokens":8,"temperature":0,"messages":[{"role":"user","content":"Name a colour."}]}"#;
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let json = response.split_once("\r\n\r\n").expect("a body").1;
    (status, serde_json::from_str(json).expect("a JSON body"))
}

/// Kills the server when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn runtime_line<'a>(lines: &'a [String], prefix: &str) -> &'a str {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:#?}"))
        .trim()
}

#[test]
fn the_cpu_chosen_through_the_environment_serves_and_says_so() {
    let (child, lines) = run_until(&[], &[("MLX_SERVE_DEVICE", "cpu")], |line| {
        line.starts_with("ready:")
    });
    let served = Running(child);
    assert_eq!(runtime_line(&lines, "device:"), "cpu");
    // `--weights auto` resolves for the device chosen, not for MLX's initial default.
    let architecture = runtime_line(&lines, "architecture:");
    assert!(
        architecture.ends_with("weights as F32, computing in Float32"),
        "{architecture}"
    );
    let base = runtime_line(&lines, "listening on");
    let (status, body) = complete(base);
    assert_eq!(status, 200, "{body}");
    assert!(
        body["usage"]["completion_tokens"].as_u64() >= Some(1),
        "{body}"
    );
    drop(served);
}

#[test]
fn a_gpu_this_mlx_build_lacks_is_refused_with_what_to_do() {
    let (child, lines) = run_until(&["--device", "gpu"], &[], |line| {
        line.starts_with("device:")
    });
    if mlx_serve::device::gpu_available() {
        // A GPU build (macOS): the GPU is taken; what it computes is the smoke test's job.
        drop(Running(child));
        assert_eq!(runtime_line(&lines, "device:"), "gpu");
        return;
    }
    let (code, stderr) = exit_of(child);
    assert_eq!(code, Some(1), "stdout {lines:#?}, stderr {stderr}");
    assert!(
        stderr.contains("--device gpu") && stderr.contains("--device cpu"),
        "{stderr}"
    );
    assert!(
        !lines.iter().any(|line| line.starts_with("listening on")),
        "refused before it listened: {lines:#?}"
    );
}

#[test]
fn an_unknown_device_is_a_usage_error() {
    let (child, lines) = run_until(&[], &[("MLX_SERVE_DEVICE", "tpu")], |_| false);
    let (code, stderr) = exit_of(child);
    assert_eq!(code, Some(2), "stdout {lines:#?}, stderr {stderr}");
    assert!(
        stderr.contains("tpu") && stderr.contains("cpu") && stderr.contains("gpu"),
        "{stderr}"
    );
}

/// The GPU smoke test: the default model served on the GPU with `--weights auto` (weights
/// kept quantized, bf16 activations for a GGUF) answers a completion. Needs a GPU backend
/// (the mlx-metal wheel on Apple Silicon); the macOS CI jobs run it.
#[test]
#[ignore = "needs a GPU backend; run with `cargo test --release --test device -- --ignored`"]
fn gpu_smoke() {
    assert!(
        mlx_serve::device::gpu_available(),
        "this MLX build has no GPU backend: run the GPU smoke test on Apple Silicon with the \
         mlx-metal wheel (`make setup` on macOS)"
    );
    let (child, lines) = run_until(&["--device", "gpu"], &[], |line| line.starts_with("ready:"));
    let served = Running(child);
    assert_eq!(runtime_line(&lines, "device:"), "gpu");
    let architecture = runtime_line(&lines, "architecture:");
    assert!(
        architecture.ends_with("weights as Quantized, computing in Bfloat16"),
        "{architecture}"
    );
    let (status, body) = complete(runtime_line(&lines, "listening on"));
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(!content.trim().is_empty(), "{body}");
    drop(served);
}
