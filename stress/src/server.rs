//! A server process the scenarios start themselves (those that restart it to measure the
//! disk tier), and the few `/metrics` samples they read from it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `mlx-serve serve` on 127.0.0.1; killed if dropped without [`Server::stop`].
pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Starts `binary serve --port port args...` and waits (at most 300 s) for its
    /// `ready:` line.
    pub fn start(binary: &Path, port: u16, args: &[String]) -> Result<Server, String> {
        let mut child = Command::new(binary)
            .args(["serve", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready:") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(300))
            .map_err(|_| "the server did not get ready within 300 s".to_owned())?;
        Ok(Server { child, port })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends the signal `name` (`TERM`, `KILL`, ...).
    pub fn signal(&self, name: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{name} failed"))
        }
    }

    /// Waits for the process to end; its exit code (`None`: killed by a signal).
    pub fn wait(&mut self) -> Result<Option<i32>, String> {
        self.child
            .wait()
            .map(|status| status.code())
            .map_err(|e| format!("waiting for the server: {e}"))
    }

    /// SIGTERM (drain, persist hot blocks, exit) and wait for a clean exit.
    pub fn stop(mut self) -> Result<(), String> {
        self.signal("TERM")?;
        match self.wait()? {
            Some(0) => Ok(()),
            code => Err(format!("the server exited with {code:?}")),
        }
    }

    /// POSTs `body` to `/v1/completions` with the agent id `agent`; the response's JSON
    /// when it succeeded, else its status and body.
    pub async fn complete(
        &self,
        client: &reqwest::Client,
        agent: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let response = client
            .post(self.url("/v1/completions"))
            .header("x-agent-id", agent)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("bad response: {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }

    /// The `/metrics` text.
    pub async fn scrape(&self, client: &reqwest::Client) -> Result<String, String> {
        scrape(client, &self.url("")).await
    }

    /// The `/metrics` text once the KV store's writer has nothing queued (its counters
    /// then cover every block written so far).
    pub async fn settled_metrics(&self, client: &reqwest::Client) -> Result<String, String> {
        loop {
            let text = self.scrape(client).await?;
            if metric(&text, "mlx_serve_kv_store_write_queue_blocks") == 0.0 {
                return Ok(text);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `/metrics` text of the server at `base`.
pub async fn scrape(client: &reqwest::Client, base: &str) -> Result<String, String> {
    client
        .get(format!("{}/metrics", base.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| format!("metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("metrics: {e}"))
}

/// The value of the sample written exactly `name` (with its labels, if any, e.g.
/// `x_total{reason="a"}`) in a Prometheus text; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}
