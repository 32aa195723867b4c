//! The `bad-input` scenario: `--requests` (default 10,000) generated hostile requests
//! against a running server, each invalid by construction — malformed or truncated JSON,
//! wrong types and out-of-range values for every field, unknown models, bad messages,
//! hostile agent ids (path traversal, separators, over-long) in headers and bodies, wrong
//! content types, empty and oversized bodies — sent `--concurrency` at a time. Pass
//! criteria: every one is answered with a 4xx whose body is the OpenAI error envelope
//! (`{"error": {"message": string, "type": string, ...}}`), none times out or breaks the
//! connection, and afterwards the server is healthy and gives the same greedy answer to
//! a reference request as before.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use futures_util::StreamExt;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};

#[derive(Debug, Clone, Args)]
pub struct BadInputArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The model name valid requests use.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Hostile requests to send.
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The server's `--max-body-bytes` (oversized bodies are a little larger).
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Seed of the generator (the same seed sends the same requests).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Per-request deadline in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One hostile request: what kind it is, where it goes, its headers and body bytes.
struct Hostile {
    kind: &'static str,
    path: &'static str,
    content_type: &'static str,
    agent: Option<&'static [u8]>,
    body: Vec<u8>,
}

/// Values `field` never accepts, by field: wrong types, out-of-range numbers, bad shapes.
fn invalid_values(field: &str) -> Vec<Value> {
    let not_a_number = [json!("12"), json!([1]), json!({"a": 1}), json!(true)];
    let not_a_string = [json!(42), json!([1]), json!({"a": 1}), json!(true)];
    let (base, extra): (&[Value], Vec<Value>) = match field {
        "model" => (
            &not_a_string,
            vec![json!(null), json!("no-such-model"), json!("")],
        ),
        "messages" => (
            &[
                json!("hello"),
                json!([1]),
                json!({"a": 1}),
                json!(true),
                json!(null),
            ],
            vec![
                json!([]),
                json!([{"role": "wizard", "content": "hi"}]),
                json!([{"content": "hi"}]),
                json!([{"role": "user", "content": 5}]),
                json!([{"role": "user", "content": [{"type": "image_url"}]}]),
                json!([null]),
            ],
        ),
        "prompt" => (
            &[json!({"a": 1}), json!(true), json!(null), json!(3.5)],
            vec![json!([-1]), json!([1e12]), json!([true]), json!([{"a": 1}])],
        ),
        "max_tokens" | "max_completion_tokens" => (
            &not_a_number,
            vec![json!(-1), json!(0), json!(1.5), json!(1e30)],
        ),
        "temperature" => (&not_a_number, vec![json!(-0.5), json!(2.5), json!(1e300)]),
        "top_p" => (&not_a_number, vec![json!(-0.1), json!(1.5)]),
        "n" => (&not_a_number, vec![json!(0), json!(-3), json!(100_000)]),
        "logprobs" => (&not_a_number, vec![json!(-1), json!(1000)]),
        "top_logprobs" => (&not_a_number, vec![json!(-1), json!(1000)]),
        "stop" => (
            &[json!(42), json!({"a": 1}), json!(true)],
            vec![json!([1, 2])],
        ),
        "seed" => (&not_a_number, vec![json!(1.5)]),
        "presence_penalty" | "frequency_penalty" => (&not_a_number, vec![json!(-3), json!(3)]),
        "stream" => (
            &[json!("12"), json!([1]), json!({"a": 1}), json!(2)],
            Vec::new(),
        ),
        "agent_id" => (
            &[json!(42), json!([1]), json!({"a": 1}), json!(true)],
            vec![
                json!("../../etc/passwd"),
                json!("a/b"),
                json!(".."),
                json!("x".repeat(300)),
                json!("with space"),
                json!(""),
            ],
        ),
        _ => (&[], Vec::new()),
    };
    base.iter().cloned().chain(extra).collect()
}

const CHAT_FIELDS: [&str; 14] = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "top_logprobs",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "stream",
    "agent_id",
];
const COMPLETION_FIELDS: [&str; 9] = [
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "logprobs",
    "stop",
    "seed",
];
const HOSTILE_AGENT_IDS: [&[u8]; 7] = [
    b"../../../etc/passwd",
    b"..",
    b"a/b/c",
    b"%2e%2e%2fsecret",
    b"back\\slash",
    b"caf\xc3\xa9",
    b"\xff\xfe",
];

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[(rng.next_u64() % items.len() as u64) as usize]
}

fn valid_chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "Say hi."}],
           "max_tokens": 1, "temperature": 0})
}

fn valid_completion(model: &str) -> Value {
    json!({"model": model, "prompt": "Say hi.", "max_tokens": 1, "temperature": 0})
}

/// The `index`-th hostile request.
fn generate(rng: &mut ChaCha8Rng, args: &BadInputArgs) -> Hostile {
    let chat = rng.next_u64().is_multiple_of(2);
    let (path, mut body, fields): (&'static str, Value, &[&str]) = if chat {
        (
            "/v1/chat/completions",
            valid_chat(&args.model),
            &CHAT_FIELDS,
        )
    } else {
        (
            "/v1/completions",
            valid_completion(&args.model),
            &COMPLETION_FIELDS,
        )
    };
    let json_body = |body: &Value| serde_json::to_vec(body).unwrap_or_default();
    let hostile = |kind, body: Vec<u8>| Hostile {
        kind,
        path,
        content_type: "application/json",
        agent: None,
        body,
    };
    match rng.next_u64() % 8 {
        // A field given a value it never accepts.
        0..=2 => {
            let field = *pick(rng, fields);
            let values = invalid_values(field);
            body[field] = pick(rng, &values).clone();
            hostile("invalid field", json_body(&body))
        }
        // A required field missing.
        3 => {
            let field = if chat { "messages" } else { "prompt" };
            if let Some(object) = body.as_object_mut() {
                object.remove(if rng.next_u64().is_multiple_of(2) {
                    "model"
                } else {
                    field
                });
            }
            hostile("missing field", json_body(&body))
        }
        // Broken JSON: cut short, or a byte flipped into something JSON cannot be.
        4 => {
            let mut bytes = json_body(&body);
            if rng.next_u64().is_multiple_of(2) {
                let cut = (rng.next_u64() as usize % bytes.len().max(2)).max(1);
                bytes.truncate(cut);
            } else {
                let at = rng.next_u64() as usize % bytes.len();
                bytes[at] = *pick(rng, &[b'{', b'}', b'"', 0xff, 0xc3, b'\\']);
                bytes.insert(0, b'[');
            }
            hostile("malformed json", bytes)
        }
        // A hostile agent id in a header (the body is valid).
        5 => Hostile {
            agent: Some(*pick(rng, &HOSTILE_AGENT_IDS)),
            ..hostile("hostile agent header", json_body(&body))
        },
        // Not JSON at all, or declared as something else.
        6 => {
            let (content_type, bytes): (&'static str, Vec<u8>) = match rng.next_u64() % 4 {
                0 => ("application/json", Vec::new()),
                1 => ("text/plain", json_body(&body)),
                2 => ("application/json", b"null".to_vec()),
                _ => (
                    "application/json",
                    json!([1, 2, 3]).to_string().into_bytes(),
                ),
            };
            Hostile {
                content_type,
                ..hostile("not a request object", bytes)
            }
        }
        // Too large: a prompt over the body limit (rarely: they are expensive to send).
        _ => {
            if rng.next_u64().is_multiple_of(50) {
                let text = "a ".repeat(args.max_body_bytes / 2 + 1024);
                if chat {
                    body["messages"][0]["content"] = json!(text);
                } else {
                    body["prompt"] = json!(text);
                }
                hostile("oversized body", json_body(&body))
            } else {
                // Deeply nested JSON.
                // Beyond serde_json's recursion limit (128).
                let depth = 200 + (rng.next_u64() % 2000) as usize;
                let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
                let text = json_body(&body);
                let mut bytes = text[..text.len() - 1].to_vec();
                bytes.extend_from_slice(format!(",\"extra\":{nested}}}").as_bytes());
                hostile("deeply nested", bytes)
            }
        }
    }
}

/// Whether `text` is the OpenAI error envelope.
fn is_envelope(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .is_ok_and(|v| v["error"]["message"].is_string() && v["error"]["type"].is_string())
}

/// What happened to one hostile request.
async fn send(client: &reqwest::Client, base: &str, hostile: Hostile) -> (&'static str, String) {
    let mut request = client
        .post(format!("{base}{}", hostile.path))
        .header("content-type", hostile.content_type)
        .body(hostile.body);
    if let Some(agent) = hostile.agent {
        match reqwest::header::HeaderValue::from_bytes(agent) {
            Ok(value) => request = request.header("x-agent-id", value),
            Err(_) => return (hostile.kind, "unsendable header".to_owned()),
        }
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) if error.is_timeout() => return (hostile.kind, "timeout".to_owned()),
        Err(_) => return (hostile.kind, "connection error".to_owned()),
    };
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let verdict = if (400..500).contains(&status) && is_envelope(&text) {
        format!("{status}")
    } else if (400..500).contains(&status) {
        format!("{status} without the error envelope")
    } else {
        format!("{status} (not a 4xx)")
    };
    (hostile.kind, verdict)
}

async fn reference_answer(client: &reqwest::Client, args: &BadInputArgs) -> Result<String, String> {
    let body = json!({"model": args.model, "prompt": "The capital of France is",
                      "max_tokens": 8, "temperature": 0});
    let response = client
        .post(format!("{}/v1/completions", args.url.trim_end_matches('/')))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("reference request: {e}"))?;
    let value: Value = response
        .json()
        .await
        .map_err(|e| format!("reference: {e}"))?;
    value["choices"][0]["text"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("reference request failed: {value}"))
}

/// Runs the scenario; `Ok(false)` when a pass criterion failed.
pub async fn run(args: BadInputArgs) -> Result<bool, String> {
    let client = crate::report::http_client(args.timeout_secs)?;
    let base = args.url.trim_end_matches('/').to_owned();
    let before = reference_answer(&client, &args).await?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let requests: Vec<Hostile> = (0..args.requests)
        .map(|_| generate(&mut rng, &args))
        .collect();
    let base = Arc::new(base);
    let verdicts: Vec<(&'static str, String)> = futures_util::stream::iter(requests)
        .map(|hostile| {
            let (client, base) = (client.clone(), Arc::clone(&base));
            async move { send(&client, &base, hostile).await }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut table: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for (kind, verdict) in &verdicts {
        *table.entry((kind, verdict.clone())).or_default() += 1;
    }
    let healthy = client
        .get(format!("{base}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let after = reference_answer(&client, &args).await?;

    println!(
        "## bad input: {} hostile requests, {} at a time\n",
        args.requests, args.concurrency
    );
    println!("| kind | answer | count |\n|---|---|---|");
    for ((kind, verdict), count) in &table {
        println!("| {kind} | {verdict} | {count} |");
    }
    let mut failures: Vec<String> = table
        .iter()
        .filter(|((_, verdict), _)| verdict.parse::<u16>().is_err())
        .map(|((kind, verdict), count)| format!("{count} x {kind}: {verdict}"))
        .collect();
    if !healthy {
        failures.push("the server is not healthy afterwards".to_owned());
    }
    if before != after {
        failures.push(format!(
            "the reference answer changed: {before:?} -> {after:?}"
        ));
    }
    println!("\nreference answer before and after: {before:?} / {after:?}; healthy: {healthy}");
    crate::report::verdict(&failures);
    if let Some(path) = &args.json {
        let rows: Vec<Value> = table
            .iter()
            .map(
                |((kind, verdict), count)| json!({"kind": kind, "answer": verdict, "count": count}),
            )
            .collect();
        let report = json!({
            "scenario": "bad-input",
            "requests": args.requests,
            "answers": rows,
            "healthy_after": healthy,
            "reference_before": before,
            "reference_after": after,
            "failures": failures,
        });
        crate::report::write_json(path, &report)?;
    }
    Ok(failures.is_empty())
}
