//! Agent memory across restarts, on the real binary and model: an agent's blocks are
//! written to disk while it runs and at shutdown, a restarted server restores them (disk
//! tier) with output identical to the same prefix served from memory, tenants (API keys)
//! never share blocks, and damaged or torn files are counted misses, never wrong output.

mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/prometheus.rs"]
mod prometheus;
#[path = "common/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use common::DEADLINE;
use process::{Served, start};
use server::{MODEL, client};

const BLOCK: usize = 16;

/// One server at a time: the machine has two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A store folder of its own, removed at the end.
struct StoreDir(PathBuf);

impl StoreDir {
    fn new(name: &str) -> StoreDir {
        let dir = std::env::temp_dir().join(format!("mlx-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StoreDir(dir)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }

    /// Every file under the folder whose name ends with `suffix`.
    fn files(&self, suffix: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, suffix: &str, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, suffix, out);
                } else if path.to_string_lossy().ends_with(suffix) {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, suffix, &mut out);
        out.sort();
        out
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ids(first: u32, len: usize) -> Vec<u32> {
    (first..first + len as u32).collect()
}

/// A greedy completion of token ids with the top-2 alternatives per token.
async fn complete(
    served: &Served,
    key: &str,
    agent: Option<&str>,
    prompt: &[u32],
    max_tokens: u64,
) -> Value {
    let mut request = client()
        .post(format!("{}/v1/completions", served.base))
        .bearer_auth(key)
        .json(
            &json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                      "ignore_eos": true, "temperature": 0, "logprobs": 2}),
        );
    if let Some(agent) = agent {
        request = request.header("x-agent-id", agent);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn cached_tokens(body: &Value) -> u64 {
    body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cached_tokens in {body}"))
}

async fn metrics(served: &Served) -> String {
    client()
        .get(format!("{}/metrics", served.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// `/metrics` once the store's writer has nothing queued (blocks are queued in the step
/// that fills them, so everything a finished request filled is then on disk).
async fn settled_metrics(served: &Served) -> String {
    let started = std::time::Instant::now();
    loop {
        let text = metrics(served).await;
        if sample(&text, "mlx_serve_kv_store_write_queue_blocks") == 0.0 {
            return text;
        }
        assert!(started.elapsed() < DEADLINE, "the store never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the sample `line_start` (name and labels) in `metrics`.
fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
}

/// Greedy tokens of `reference` and `other` agree up to the first divergence, and there
/// the reference's top-2 margin is a near-tie (< 0.02), as docs/model-runtime.md allows.
fn assert_greedy_agrees(reference: &Value, other: &Value) {
    let tokens = |b: &Value| b["choices"][0]["logprobs"]["tokens"].as_array().cloned();
    let (reference_tokens, other_tokens) = (tokens(reference).unwrap(), tokens(other).unwrap());
    let Some(at) = reference_tokens
        .iter()
        .zip(&other_tokens)
        .position(|(a, b)| a != b)
    else {
        return;
    };
    let top = reference["choices"][0]["logprobs"]["top_logprobs"][at]
        .as_object()
        .unwrap();
    let mut values: Vec<f64> = top.values().filter_map(Value::as_f64).collect();
    values.sort_by(|a, b| b.total_cmp(a));
    assert!(
        values.len() == 2 && values[0] - values[1] < 0.02,
        "outputs part at token {at} without a near-tie: {top:?}"
    );
}

fn store_args(dir: &StoreDir) -> Vec<&str> {
    vec![
        "--kv-store-dir",
        dir.arg(),
        "--api-key",
        "tenant-one",
        "--api-key",
        "tenant-two",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_comes_back_warm_from_disk_after_a_restart() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = StoreDir::new("restart");
    // Turn 1: 100 prompt tokens and 20 generated ones leave 119 tokens of KV, 7 full
    // blocks, all written behind the agent's back.
    let first_turn = ids(1000, 100);
    let second_turn: Vec<u32> = first_turn.iter().copied().chain(ids(3000, 40)).collect();
    let mut served = start(&store_args(&dir));
    let turn = complete(&served, "tenant-one", Some("alice"), &first_turn, 20).await;
    assert_eq!(cached_tokens(&turn), 0);
    // The second turn's prompt from memory (no agent: nothing more is written): 6 shared
    // blocks, 96 tokens.
    let hot = complete(&served, "tenant-one", None, &second_turn, 16).await;
    assert_eq!(cached_tokens(&hot), 6 * BLOCK as u64);
    // Another tenant sees none of it.
    let other_tenant = complete(&served, "tenant-two", None, &second_turn, 16).await;
    assert_eq!(cached_tokens(&other_tenant), 0);
    assert_greedy_agrees(&other_tenant, &hot);
    let before = settled_metrics(&served).await;
    served.signal("TERM");
    assert_eq!(served.wait(DEADLINE), Some(0));
    let logs: Vec<String> = served.logs.iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("hot KV blocks persisted")),
        "{logs:?}"
    );
    assert!(
        sample(&before, "mlx_serve_kv_store_blocks_written_total") >= 6.0,
        "{before}"
    );
    assert_eq!(dir.files(".safetensors").len(), 7);
    assert_eq!(dir.files("alice.json").len(), 1);
    assert!(dir.files(".tmp").is_empty());

    // After the restart: the agent's second turn gets its 6 blocks from disk and answers
    // exactly as from memory (the same KV bits, the same suffix to prefill).
    let served = start(&store_args(&dir));
    let warm = complete(&served, "tenant-one", Some("alice"), &second_turn, 16).await;
    assert_eq!(cached_tokens(&warm), 6 * BLOCK as u64);
    assert_eq!(warm["choices"][0]["text"], hot["choices"][0]["text"]);
    assert_eq!(
        warm["choices"][0]["logprobs"],
        hot["choices"][0]["logprobs"]
    );
    let after = settled_metrics(&served).await;
    prometheus::promtool_check(&after);
    assert_eq!(
        sample(
            &after,
            "mlx_serve_prefix_cache_hit_tokens_by_tier_total{tier=\"disk\"}"
        ),
        96.0
    );
    // The second turn's own blocks joined the first turn's 7: 155 tokens of KV, 9 full
    // blocks, 6 of them shared.
    assert_eq!(sample(&after, "mlx_serve_kv_store_blocks"), 10.0);
    assert_eq!(sample(&after, "mlx_serve_kv_store_blocks_read_total"), 6.0);
    // The other tenant still gets nothing from the first one's disk blocks.
    let other_tenant = complete(&served, "tenant-two", None, &second_turn, 4).await;
    assert_eq!(cached_tokens(&other_tenant), 0);
}

/// The largest difference of a chosen token's logprob between `reference` and `other`,
/// over the tokens before they first part (both greedy).
fn max_logprob_diff(reference: &Value, other: &Value) -> f64 {
    let logprobs = |b: &Value| b["choices"][0]["logprobs"].clone();
    let (reference, other) = (logprobs(reference), logprobs(other));
    let tokens = |l: &Value| l["tokens"].as_array().cloned().unwrap_or_default();
    let chosen = |l: &Value| -> Vec<f64> {
        l["token_logprobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    let agreeing = tokens(&reference)
        .iter()
        .zip(&tokens(&other))
        .take_while(|(a, b)| a == b)
        .count();
    assert!(agreeing > 0, "the first tokens differ: {reference} {other}");
    chosen(&reference)
        .iter()
        .zip(&chosen(&other))
        .take(agreeing)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// The quantized encodings through the real binary: an agent's blocks are written in
/// MLX's 8- and 4-bit layouts (files the expected size), come back from disk after a
/// restart, and give logprobs close to the exact KV's. The bounds are several times what
/// `stress encodings` measured on the reference prompts (q8: 0.031, q4: 0.47 before the
/// first divergence); a decoding mistake (a wrong scale, bias or bit order) is far off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantized_encodings_restore_smaller_blocks_close_to_the_exact_kv() {
    let _one = ONE_AT_A_TIME.lock().await;
    let first_turn = ids(1000, 100);
    let second_turn: Vec<u32> = first_turn.iter().copied().chain(ids(3000, 40)).collect();
    // The default model's block: 30 layers x 3 KV heads x 16 tokens x 64 values, f32.
    let elements = 30 * 3 * BLOCK * 64;
    for (encoding, bits, bound) in [("q8", 8, 0.15), ("q4", 4, 1.5)] {
        let dir = StoreDir::new(encoding);
        let mut args = store_args(&dir);
        args.extend(["--kv-store-encoding", encoding]);
        let mut served = start(&args);
        complete(&served, "tenant-one", Some("alice"), &first_turn, 20).await;
        // The exact KV, from memory.
        let hot = complete(&served, "tenant-one", None, &second_turn, 8).await;
        settled_metrics(&served).await;
        served.signal("TERM");
        assert_eq!(served.wait(DEADLINE), Some(0));
        // Keys and values: `bits` per value, and an f32 scale and bias per 64 values.
        let data = 2 * (elements * bits / 8 + 2 * 4 * elements / 64);
        let files = dir.files(".safetensors");
        assert_eq!(files.len(), 7);
        for file in &files {
            let len = std::fs::metadata(file).unwrap().len() as usize;
            assert!(
                (data..data + 4096).contains(&len),
                "{encoding}: {len} bytes, {data} of data"
            );
        }

        let served = start(&args);
        let warm = complete(&served, "tenant-one", Some("alice"), &second_turn, 8).await;
        assert_eq!(cached_tokens(&warm), 6 * BLOCK as u64);
        let after = metrics(&served).await;
        assert_eq!(
            sample(
                &after,
                "mlx_serve_prefix_cache_hit_tokens_by_tier_total{tier=\"disk\"}"
            ),
            96.0
        );
        let diff = max_logprob_diff(&hot, &warm);
        eprintln!("{encoding}: largest logprob difference {diff:.4}");
        assert!(diff < bound, "{encoding}: {diff} against the exact KV");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_torn_files_are_misses_never_wrong_output() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = StoreDir::new("damage");
    let prompt = ids(5000, 70);
    let longer: Vec<u32> = prompt.iter().copied().chain(ids(6000, 10)).collect();
    let mut served = start(&store_args(&dir));
    let cold = complete(&served, "tenant-one", Some("bob"), &prompt, 8).await;
    served.signal("TERM");
    assert_eq!(served.wait(DEADLINE), Some(0));
    // 77 tokens of KV: 4 full blocks.
    let mut files = dir.files(".safetensors");
    assert_eq!(files.len(), 4);
    // Order the files by their block's position: damage the third block's data, and leave
    // a torn temporary beside them as a crash would.
    files.sort_by_key(|f| {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let tokens = text.split("\"tokens\":\"").nth(1).unwrap().to_owned();
        tokens.split(',').next().unwrap().parse::<u32>().unwrap()
    });
    let mut bytes = std::fs::read(&files[2]).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&files[2], bytes).unwrap();
    let torn = files[0].with_file_name(".torn.safetensors.1.1.tmp");
    std::fs::write(&torn, b"half a file").unwrap();

    let served = start(&store_args(&dir));
    assert!(
        !torn.exists(),
        "leftover temporaries are removed at start-up"
    );
    let (status, _) = admin(
        &served,
        reqwest::Method::GET,
        "/admin/agents",
        Some("tenant-one"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no admin key: no admin API");
    // Two good blocks come back; the damaged third is a checksum miss and is prefilled.
    let again = complete(&served, "tenant-one", Some("bob"), &longer, 8).await;
    assert_eq!(cached_tokens(&again), 2 * BLOCK as u64);
    let reference = complete(&served, "tenant-two", None, &longer, 8).await;
    assert_greedy_agrees(&reference, &again);
    let after = metrics(&served).await;
    assert_eq!(
        sample(
            &after,
            "mlx_serve_kv_store_misses_total{reason=\"checksum\"}"
        ),
        1.0
    );
    assert_eq!(
        dir.files("")
            .iter()
            .filter(|p| p.to_string_lossy().contains("quarantine"))
            .count(),
        1
    );
    assert!(cold["choices"][0]["text"].is_string());
}

/// A store budget smaller than an agent's context: the least recently used files are
/// evicted to stay within it, a budget smaller than one block drops (and counts) every
/// write, a shrunken budget is applied at start-up, and requests are answered as without
/// a store all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_budget_evicts_and_drops_but_never_fails_a_request() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = StoreDir::new("budget");
    let prompt = ids(9000, 100);
    let longer: Vec<u32> = prompt.iter().copied().chain(ids(9500, 40)).collect();
    // 0.0015 GiB holds two of the default model's 738 KB block files, not three.
    let mut args = store_args(&dir);
    args.extend(["--kv-store-max-gb", "0.0015"]);
    let mut served = start(&args);
    complete(&served, "tenant-one", Some("carol"), &prompt, 20).await;
    // 119 tokens of KV: 7 full blocks written, the 5 oldest evicted again.
    let written = settled_metrics(&served).await;
    assert_eq!(
        sample(&written, "mlx_serve_kv_store_blocks_written_total"),
        7.0
    );
    assert_eq!(
        sample(&written, "mlx_serve_kv_store_evicted_files_total"),
        5.0
    );
    assert_eq!(sample(&written, "mlx_serve_kv_store_files"), 2.0);
    assert!(
        sample(&written, "mlx_serve_kv_store_bytes")
            <= sample(&written, "mlx_serve_kv_store_budget_bytes")
    );
    assert_eq!(dir.files(".safetensors").len(), 2);
    served.signal("TERM");
    assert_eq!(served.wait(DEADLINE), Some(0));

    // Less than one block: start-up evicts everything, and every write is dropped.
    let mut args = store_args(&dir);
    args.extend(["--kv-store-max-gb", "0.0005"]);
    let served = start(&args);
    assert!(dir.files(".safetensors").is_empty());
    let again = complete(&served, "tenant-one", Some("carol"), &longer, 8).await;
    assert_eq!(cached_tokens(&again), 0, "start-up evicted every block");
    let after = settled_metrics(&served).await;
    // 147 tokens of KV: 9 full blocks, none of which fits.
    assert_eq!(
        sample(
            &after,
            "mlx_serve_kv_store_writes_dropped_total{reason=\"over_budget\"}"
        ),
        9.0
    );
    assert!(dir.files(".safetensors").is_empty());
    let reference = complete(&served, "tenant-two", None, &longer, 8).await;
    assert_greedy_agrees(&reference, &again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_leaves_only_whole_files() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = StoreDir::new("kill");
    let mut served = start(&store_args(&dir));
    // Eight agents write blocks while the process is killed.
    let base = served.base.clone();
    let mut requests = Vec::new();
    for agent in 0..8u32 {
        let base = base.clone();
        requests.push(tokio::spawn(async move {
            let _ = client()
                .post(format!("{base}/v1/completions"))
                .bearer_auth("tenant-one")
                .header("x-agent-id", format!("agent-{agent}"))
                .json(
                    &json!({"model": MODEL, "prompt": ids(7000 + 200 * agent, 150),
                              "max_tokens": 4, "temperature": 0}),
                )
                .send()
                .await;
        }));
    }
    let started = std::time::Instant::now();
    while dir.files(".safetensors").len() < 9 {
        assert!(started.elapsed() < DEADLINE, "no blocks were written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    served.signal("KILL");
    served.wait(DEADLINE);
    for request in requests {
        let _ = request.await;
    }
    // The restarted server is ready, loads only whole files, and serves from them.
    let served = start(&store_args(&dir));
    assert!(dir.files(".tmp").is_empty());
    let after = metrics(&served).await;
    assert_eq!(
        sample(
            &after,
            "mlx_serve_kv_store_misses_total{reason=\"malformed\"}"
        ),
        0.0
    );
    assert_eq!(
        sample(&after, "mlx_serve_kv_store_quarantined_files_total"),
        0.0
    );
    // Whatever of agent-0's context reached the disk comes back and answers as a cold
    // run does.
    let again = complete(&served, "tenant-one", Some("agent-0"), &ids(7000, 150), 4).await;
    let cold = complete(&served, "tenant-two", None, &ids(7000, 150), 4).await;
    assert_eq!(cached_tokens(&cold), 0);
    assert_greedy_agrees(&cold, &again);
    let restored = sample(&after, "mlx_serve_kv_store_blocks_read_total");
    assert_eq!(restored, 0.0, "nothing is read before a request asks");
}

async fn admin(
    served: &Served,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = client().request(method, format!("{}{path}", served.base));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_and_deletes_agents() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = StoreDir::new("admin");
    let served = start(&["--kv-store-dir", dir.arg(), "--admin-key", "the-admin"]);
    let get = reqwest::Method::GET;
    let delete = reqwest::Method::DELETE;
    // The admin key and nothing else opens /admin.
    for key in [None, Some("wrong")] {
        let (status, body) = admin(&served, get.clone(), "/admin/agents", key).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        server::assert_envelope(&body);
    }
    // alice: 3 full blocks; bob shares her first two and adds one.
    let alice = ids(8000, 48);
    let bob: Vec<u32> = ids(8000, 32).into_iter().chain(ids(9000, 16)).collect();
    complete(&served, "any", Some("alice"), &alice, 1).await;
    let turn = complete(&served, "any", Some("bob"), &bob, 1).await;
    assert_eq!(cached_tokens(&turn), 2 * BLOCK as u64);
    settled_metrics(&served).await;
    // The writer works in order: bob's manifest, queued last, means alice's is there too.
    manifest_of(&dir, "bob").await;
    assert_eq!(dir.files(".safetensors").len(), 4);

    let (status, list) = admin(&served, get.clone(), "/admin/agents", Some("the-admin")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids_listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids_listed, ["alice", "bob"]);
    let (status, one) = admin(
        &served,
        get.clone(),
        "/admin/agents/alice",
        Some("the-admin"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(
        (
            &one["tokens"],
            &one["blocks"],
            &one["blocks_on_disk"],
            &one["blocks_in_memory"]
        ),
        (&json!(48), &json!(3), &json!(3), &json!(3)),
        "{one}"
    );
    let (status, body) = admin(
        &served,
        get.clone(),
        "/admin/agents/nobody",
        Some("the-admin"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(server::assert_envelope(&body)["code"], "agent_not_found");
    // Hostile ids never reach the file system.
    // (A bare `..` segment never arrives: clients resolve it away.)
    for hostile in ["..%2F..%2Fetc", "x%2F..%2F..%2Fescape", "a%20b", "%C3%A9"] {
        let path = format!("/admin/agents/{hostile}");
        let (status, body) = admin(&served, delete.clone(), &path, Some("the-admin")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hostile}: {body}");
    }

    // Deleting alice removes only the block bob does not share.
    let (status, deleted) = admin(
        &served,
        delete.clone(),
        "/admin/agents/alice",
        Some("the-admin"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted["blocks_removed"], 1, "{deleted}");
    assert_eq!(dir.files(".safetensors").len(), 3);
    assert_eq!(dir.files("alice.json").len(), 0);
    let (status, _) = admin(
        &served,
        get.clone(),
        "/admin/agents/alice",
        Some("the-admin"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, store) = admin(&served, get.clone(), "/admin/kv-store", Some("the-admin")).await;
    assert_eq!(
        (&store["enabled"], &store["blocks"]),
        (&json!(true), &json!(3)),
        "{store}"
    );
    // Her prompt now finds only what bob keeps.
    let again = complete(&served, "any", Some("alice"), &alice, 1).await;
    assert_eq!(cached_tokens(&again), 2 * BLOCK as u64);
    settled_metrics(&served).await;

    // Everything goes.
    let (status, cleared) =
        admin(&served, delete.clone(), "/admin/caches", Some("the-admin")).await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["manifests_removed"], 2, "{cleared}");
    assert!(dir.files(".safetensors").is_empty());
    let (_, list) = admin(&served, get.clone(), "/admin/agents", Some("the-admin")).await;
    assert_eq!(list["data"], json!([]));
    let fresh = complete(&served, "any", Some("alice"), &alice, 1).await;
    assert_eq!(
        cached_tokens(&fresh),
        0,
        "nothing is left in the pool either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_agent_write_each_block_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = StoreDir::new("concurrent");
    let served = start(&["--kv-store-dir", dir.arg()]);
    let prompt = ids(12000, 64);
    let answers = futures_util::future::join_all(
        (0..4).map(|_| complete(&served, "any", Some("same"), &prompt, 4)),
    )
    .await;
    for answer in &answers[1..] {
        assert_greedy_agrees(&answers[0], answer);
    }
    let metrics = settled_metrics(&served).await;
    // 67 tokens of KV: 4 full blocks, each written once however many requests filled it.
    assert_eq!(
        sample(&metrics, "mlx_serve_kv_store_blocks_written_total"),
        4.0
    );
    assert_eq!(dir.files(".safetensors").len(), 4);
    let manifest = manifest_of(&dir, "same").await;
    assert_eq!(manifest["block_hashes"].as_array().map(Vec::len), Some(4));
}

/// `agent`'s manifest once it is on disk. The store's writer thread writes it after the
/// agent's blocks, so an empty block queue ([`settled_metrics`]) can still have it in
/// flight: a request's manifest is queued when it ends, after its last block.
async fn manifest_of(dir: &StoreDir, agent: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let found = dir.files(&format!("{agent}.json"));
        if let Some(bytes) = found.first().and_then(|path| std::fs::read(path).ok()) {
            return serde_json::from_slice(&bytes).expect("a manifest is JSON");
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no manifest for {agent} was written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
