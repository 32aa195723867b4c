//! The `encodings` scenario: what each `--kv-store-encoding` costs in quality, size and
//! speed. For each encoding it starts the server with a fresh store folder, sends every
//! case once with an agent id (cold: its blocks go to disk), restarts the server and sends
//! every case again (warm: its full blocks come back from disk, decoded from that
//! encoding). The cases are the greedy reference prompts
//! (`tests/fixtures/smollm2_greedy_reference.json`), each followed by its reference answer
//! as a returning agent's context, and all of them concatenated as one long context.
//!
//! Quality is measured against the lossless warm run, which restores the same prefix and
//! prefills the same suffix, so the only difference is the encoding: the share of greedy
//! tokens equal to it up to the first divergence (and the reference's top-2 margin there),
//! and the largest difference of a chosen token's logprob before it. The lossless warm run
//! is itself compared with its cold run (a full prefill: other batch shapes) to show the
//! noise floor. Pass criterion: every warm request reports all full blocks of its prompt
//! but the last token's as cached, and the lossless warm run agrees with its cold run but
//! at near-ties (top-2 margin < 0.02).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::server::{Server, metric};

const BLOCK: usize = 16;
/// Top-2 margins below this are near-ties, where batch shapes may flip greedy choices.
const NEAR_TIE: f64 = 0.02;

#[derive(Debug, Clone, Args)]
pub struct EncodingsArgs {
    /// The server binary (`mlx-serve`).
    #[arg(long, default_value = "target/release/mlx-serve")]
    binary: PathBuf,
    /// Extra `serve` arguments (e.g. `--model path`), space-separated.
    #[arg(long, default_value = "")]
    serve_args: String,
    /// Port to serve on.
    #[arg(long, default_value_t = 18081)]
    port: u16,
    /// The KV store folder: emptied before each encoding, removed at the end.
    #[arg(long, default_value = "target/stress-encodings-kv")]
    store_dir: PathBuf,
    /// KV pool size for the server, MiB.
    #[arg(long, default_value_t = 256)]
    kv_cache_mb: u64,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// The encodings to measure (lossless always runs: it is the reference).
    #[arg(long, value_delimiter = ',', default_value = "f16,q8,q4")]
    encodings: Vec<String>,
    /// The greedy reference fixture whose prompts and answers make the cases.
    #[arg(long, default_value = "tests/fixtures/smollm2_greedy_reference.json")]
    fixture: PathBuf,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One case: a name and its prompt token ids.
struct Case {
    name: String,
    prompt: Vec<u32>,
}

/// A greedy completion: its tokens, their logprobs, and the top-2 margin per token.
#[derive(Debug, Clone)]
struct Completion {
    tokens: Vec<String>,
    logprobs: Vec<f64>,
    margins: Vec<f64>,
    cached_tokens: u64,
}

/// How one completion compares with a reference one.
#[derive(Debug, Clone, Serialize)]
struct Agreement {
    /// Tokens equal to the reference's up to the first divergence.
    matched: usize,
    total: usize,
    /// The reference's top-2 margin where they part (`None`: they never do).
    margin_at_divergence: Option<f64>,
    /// Largest |logprob difference| of the chosen token before the divergence.
    max_logprob_diff: f64,
}

fn compare(reference: &Completion, other: &Completion) -> Agreement {
    let total = reference.tokens.len().min(other.tokens.len());
    let matched = (0..total)
        .find(|&i| reference.tokens[i] != other.tokens[i])
        .unwrap_or(total);
    let max_logprob_diff = (0..matched)
        .map(|i| (reference.logprobs[i] - other.logprobs[i]).abs())
        .fold(0.0, f64::max);
    Agreement {
        matched,
        total,
        margin_at_divergence: (matched < total).then(|| reference.margins[matched]),
        max_logprob_diff,
    }
}

/// One encoding's results.
#[derive(Debug, Clone, Serialize)]
struct Row {
    encoding: String,
    /// Per case, against the lossless warm run.
    cases: Vec<Agreement>,
    cases_identical: usize,
    /// Mean share of tokens matched before the first divergence.
    mean_agreement: f64,
    max_logprob_diff: f64,
    /// Bytes of one block file.
    bytes_per_block: f64,
    /// Writer time per block (encode, write, fsync, rename), ms.
    write_ms_per_block: f64,
    /// Reader time per restored block (read, verify, decode), ms.
    restore_ms_per_block: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    cases: Vec<String>,
    rows: Vec<Row>,
    /// Lossless warm against lossless cold, per case: the noise floor of batch shapes.
    lossless_warm_vs_cold: Vec<Agreement>,
    passed: bool,
}

fn load_cases(fixture: &PathBuf) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(fixture)
        .map_err(|e| format!("cannot read {}: {e}", fixture.display()))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| format!("bad fixture: {e}"))?;
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect()
    };
    let mut cases: Vec<Case> = json["prompts"]
        .as_array()
        .ok_or("the fixture has no prompts")?
        .iter()
        .map(|p| Case {
            name: p["name"].as_str().unwrap_or("?").to_owned(),
            prompt: ids(&p["prompt_ids"])
                .into_iter()
                .chain(ids(&p["output_ids"]))
                .collect(),
        })
        .collect();
    let all: Vec<u32> = cases.iter().flat_map(|c| c.prompt.clone()).collect();
    cases.push(Case {
        name: "all_concatenated".to_owned(),
        prompt: all,
    });
    Ok(cases)
}

async fn complete(
    client: &reqwest::Client,
    server: &Server,
    args: &EncodingsArgs,
    agent: &str,
    prompt: &[u32],
) -> Result<Completion, String> {
    let request = json!({"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens,
                         "temperature": 0, "logprobs": 2, "ignore_eos": true});
    let body = server.complete(client, agent, &request).await?;
    let logprobs = &body["choices"][0]["logprobs"];
    let tokens = logprobs["tokens"]
        .as_array()
        .ok_or("no logprobs in the response")?
        .iter()
        .map(|t| t.as_str().unwrap_or_default().to_owned())
        .collect();
    let chosen = logprobs["token_logprobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    let margins = logprobs["top_logprobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|top| {
            let mut values: Vec<f64> = top
                .as_object()
                .into_iter()
                .flat_map(|o| o.values().filter_map(Value::as_f64))
                .collect();
            values.sort_by(|a, b| b.total_cmp(a));
            match values[..] {
                [first, second, ..] => first - second,
                _ => f64::INFINITY,
            }
        })
        .collect();
    Ok(Completion {
        tokens,
        logprobs: chosen,
        margins,
        cached_tokens: body["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    })
}

/// What one encoding's cold and warm runs gave.
struct Run {
    cold: Vec<Completion>,
    warm: Vec<Completion>,
    bytes_per_block: f64,
    write_ms_per_block: f64,
    restore_ms_per_block: f64,
}

fn start(args: &EncodingsArgs, encoding: &str) -> Result<Server, String> {
    let mut serve_args = vec![
        "--kv-cache-mb".to_owned(),
        args.kv_cache_mb.to_string(),
        "--kv-store-dir".to_owned(),
        args.store_dir.display().to_string(),
        "--kv-store-encoding".to_owned(),
        encoding.to_owned(),
    ];
    serve_args.extend(args.serve_args.split_whitespace().map(str::to_owned));
    Server::start(&args.binary, args.port, &serve_args)
}

async fn run_encoding(
    client: &reqwest::Client,
    args: &EncodingsArgs,
    encoding: &str,
    cases: &[Case],
) -> Result<Run, String> {
    let _ = std::fs::remove_dir_all(&args.store_dir);
    let agent = |i: usize| format!("encodings-{i}");
    let server = start(args, encoding)?;
    let mut cold = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        cold.push(complete(client, &server, args, &agent(i), &case.prompt).await?);
    }
    let written = server.settled_metrics(client).await?;
    server.stop()?;
    let server = start(args, encoding)?;
    let mut warm = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        warm.push(complete(client, &server, args, &agent(i), &case.prompt).await?);
    }
    let read = server.scrape(client).await?;
    server.stop()?;
    let _ = std::fs::remove_dir_all(&args.store_dir);
    let per_block = |text: &str, value: &str, blocks: &str, scale: f64| {
        let blocks = metric(text, blocks);
        if blocks > 0.0 {
            metric(text, value) * scale / blocks
        } else {
            f64::NAN
        }
    };
    Ok(Run {
        cold,
        warm,
        bytes_per_block: per_block(
            &written,
            "mlx_serve_kv_store_written_bytes_total",
            "mlx_serve_kv_store_blocks_written_total",
            1.0,
        ),
        write_ms_per_block: per_block(
            &written,
            "mlx_serve_kv_store_write_seconds_total",
            "mlx_serve_kv_store_blocks_written_total",
            1e3,
        ),
        restore_ms_per_block: per_block(
            &read,
            "mlx_serve_kv_store_restore_time_seconds_sum",
            "mlx_serve_kv_store_blocks_read_total",
            1e3,
        ),
    })
}

fn row(encoding: &str, reference: &[Completion], run: &Run) -> Row {
    let cases: Vec<Agreement> = reference
        .iter()
        .zip(&run.warm)
        .map(|(r, w)| compare(r, w))
        .collect();
    let share = |a: &Agreement| a.matched as f64 / a.total.max(1) as f64;
    Row {
        encoding: encoding.to_owned(),
        cases_identical: cases.iter().filter(|a| a.matched == a.total).count(),
        mean_agreement: cases.iter().map(share).sum::<f64>() / cases.len().max(1) as f64,
        max_logprob_diff: cases.iter().map(|a| a.max_logprob_diff).fold(0.0, f64::max),
        cases,
        bytes_per_block: run.bytes_per_block,
        write_ms_per_block: run.write_ms_per_block,
        restore_ms_per_block: run.restore_ms_per_block,
    }
}

/// Runs the scenario; `Ok(false)` when the pass criterion failed.
pub async fn run(args: EncodingsArgs) -> Result<bool, String> {
    let cases = load_cases(&args.fixture)?;
    let client = crate::report::http_client(600)?;
    let mut passed = true;
    let mut runs = Vec::new();
    let encodings: Vec<String> = std::iter::once("lossless".to_owned())
        .chain(args.encodings.iter().filter(|e| *e != "lossless").cloned())
        .collect();
    for encoding in &encodings {
        let run = run_encoding(&client, &args, encoding, &cases).await?;
        for (case, warm) in cases.iter().zip(&run.warm) {
            let expected = ((case.prompt.len() - 1) / BLOCK * BLOCK) as u64;
            if warm.cached_tokens != expected {
                eprintln!(
                    "{encoding}, {}: {} cached tokens, expected {expected}",
                    case.name, warm.cached_tokens
                );
                passed = false;
            }
        }
        eprintln!("{encoding}: done");
        runs.push(run);
    }
    let reference = &runs[0];
    let floor: Vec<Agreement> = reference
        .cold
        .iter()
        .zip(&reference.warm)
        .map(|(c, w)| compare(c, w))
        .collect();
    for (case, agreement) in cases.iter().zip(&floor) {
        if agreement
            .margin_at_divergence
            .is_some_and(|margin| margin >= NEAR_TIE)
        {
            eprintln!(
                "lossless warm and cold part without a near-tie in {}",
                case.name
            );
            passed = false;
        }
    }
    let rows: Vec<Row> = encodings
        .iter()
        .zip(&runs)
        .map(|(encoding, run)| row(encoding, &reference.warm, run))
        .collect();
    println!(
        "cases: {} ({} tokens each at most), {} generated tokens each",
        cases.len(),
        cases.iter().map(|c| c.prompt.len()).max().unwrap_or(0),
        args.max_tokens
    );
    println!(
        "| encoding | identical cases | greedy agreement | max logprob diff | bytes per block | write ms/block | restore ms/block |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {}/{} | {:.1}% | {:.4} | {:.0} | {:.2} | {:.2} |",
            row.encoding,
            row.cases_identical,
            row.cases.len(),
            row.mean_agreement * 100.0,
            row.max_logprob_diff,
            row.bytes_per_block,
            row.write_ms_per_block,
            row.restore_ms_per_block
        );
    }
    for row in &rows {
        for (case, agreement) in cases.iter().zip(&row.cases) {
            if let Some(margin) = agreement.margin_at_divergence {
                println!(
                    "{}: {} parts from lossless at token {} of {} (reference top-2 margin {margin:.4})",
                    row.encoding, case.name, agreement.matched, agreement.total
                );
            }
        }
    }
    let floor_diff = floor.iter().map(|a| a.max_logprob_diff).fold(0.0, f64::max);
    println!(
        "noise floor, lossless warm vs cold: {}/{} cases identical, max logprob diff {floor_diff:.4}",
        floor.iter().filter(|a| a.matched == a.total).count(),
        floor.len()
    );
    println!("{}", if passed { "PASS" } else { "FAIL" });
    if let Some(path) = &args.json {
        let results = Results {
            cases: cases.iter().map(|c| c.name.clone()).collect(),
            rows,
            lossless_warm_vs_cold: floor,
            passed,
        };
        crate::report::write_json(path, &results)?;
    }
    Ok(passed)
}
