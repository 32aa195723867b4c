//! The OpenAI-compatible API end to end: a real server on 127.0.0.1 with the default model,
//! driven over HTTP. Chat and completions (plain and streaming), models, every error
//! status in OpenAI's envelope, stop strings, seeds, usage chunks, client disconnects,
//! hostile bodies, and the README's curl examples. Every request has a deadline.

mod common;
#[path = "common/server.rs"]
mod server;

use std::sync::OnceLock;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{MODEL, TestServer, assert_envelope, client, sse_data};
use tokio::sync::RwLock;

/// Small limits keep the tests fast: 1 MiB bodies, a 64 MiB pool (1,456 tokens), batches
/// of at most 4 sequences.
const MAX_BODY_BYTES: usize = 1 << 20;
use common::DEADLINE;

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER
        .get_or_init(|| TestServer::start(&["--kv-cache-mb", "64", "--max-body-bytes", "1048576"]))
}

/// Tests that look at engine-wide stats take it for writing; the others share it.
static ENGINE_STATS: RwLock<()> = RwLock::const_new(());

async fn post(path: &str, body: &Value) -> (StatusCode, Value) {
    let response = client()
        .post(server().url(path))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body = response.json().await.expect("JSON body");
    (status, body)
}

async fn post_raw(path: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(server().url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request")
}

/// The `data:` payloads of a streaming request, parsed (`[DONE]` kept as a string).
async fn stream(path: &str, body: &Value) -> Vec<Value> {
    let response = client()
        .post(server().url(path))
        .json(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = response.text().await.expect("SSE body");
    sse_data(&text)
        .into_iter()
        .map(|d| serde_json::from_str(&d).unwrap_or(Value::String(d)))
        .collect()
}

fn chat(content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

const QUESTION: &str = "What is the capital of France?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_has_the_openai_shape() {
    let _shared = ENGINE_STATS.read().await;
    let response = client()
        .post(server().url("/v1/chat/completions"))
        .header("x-request-id", "test-request-42")
        .json(&chat(QUESTION, json!({"max_tokens": 12, "temperature": 0})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-request-id"], "test-request-42");
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert!(
        body["system_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("fp_")
    );
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.contains("Paris"), "{content}");
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &body["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 20 && (1..=12).contains(&completion), "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            <= prompt
    );

    // A generated request id when the client sends none.
    let response = client()
        .get(server().url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["x-request-id"].to_str().unwrap().len() >= 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_chat_follows_openai_and_matches_the_plain_response() {
    let _shared = ENGINE_STATS.read().await;
    let request = chat(QUESTION, json!({"max_tokens": 10, "temperature": 0}));
    let (_, plain) = post("/v1/chat/completions", &request).await;

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let events = stream("/v1/chat/completions", &streaming).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = &events[..events.len() - 1];
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for chunk in chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert!(
            chunk.get("usage").is_none(),
            "no usage without include_usage"
        );
        text.push_str(
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or(""),
        );
    }
    let last = &chunks[chunks.len() - 1]["choices"][0];
    assert_eq!(last["finish_reason"], plain["choices"][0]["finish_reason"]);
    assert!(
        chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // With include_usage: `usage: null` on every chunk, then one usage chunk.
    streaming["stream_options"] = json!({"include_usage": true});
    let events = stream("/v1/chat/completions", &streaming).await;
    let chunks = &events[..events.len() - 1];
    let (usage_chunk, content) = chunks.split_last().unwrap();
    assert!(
        content
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some())
    );
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"],
        plain["usage"]["prompt_tokens"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_take_every_prompt_form() {
    let _shared = ENGINE_STATS.read().await;
    let body = |prompt: Value, extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 6,
                              "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let (status, one) = post(
        "/v1/completions",
        &body(json!("The capital of France is"), json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["object"], "text_completion");
    assert!(one["id"].as_str().unwrap().starts_with("cmpl-"));
    let text = one["choices"][0]["text"].as_str().unwrap().to_owned();
    assert!(!text.is_empty());

    // Two prompts: two choices in order; the first equals the single-prompt answer.
    let (_, two) = post(
        "/v1/completions",
        &body(
            json!(["The capital of France is", "1, 2, 3, 4,"]),
            json!({}),
        ),
    )
    .await;
    let choices = two["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(
        (choices[0]["index"].as_u64(), choices[1]["index"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(choices[0]["text"], text.as_str());
    assert!(two["usage"]["prompt_tokens"].as_u64() > one["usage"]["prompt_tokens"].as_u64());

    // Token ids: the same prompt as ids gives the same text.
    let ids = server()
        .engine()
        .model()
        .text_prompt("The capital of France is")
        .unwrap();
    let (_, by_ids) = post("/v1/completions", &body(json!(ids), json!({}))).await;
    assert_eq!(by_ids["choices"][0]["text"], text.as_str());

    // Legacy logprobs.
    let (_, lp) = post(
        "/v1/completions",
        &body(json!("The capital of France is"), json!({"logprobs": 2})),
    )
    .await;
    let logprobs = &lp["choices"][0]["logprobs"];
    let n = lp["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), n);
    assert_eq!(logprobs["token_logprobs"].as_array().unwrap().len(), n);
    assert_eq!(logprobs["text_offset"][0], 0);
    assert!(
        logprobs["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.as_object().unwrap().len() <= 2)
    );

    // Streaming two prompts: both indices, both finished, then [DONE].
    let events = stream(
        "/v1/completions",
        &body(
            json!(["The capital of France is", "1, 2, 3, 4,"]),
            json!({"stream": true}),
        ),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let mut texts = [String::new(), String::new()];
    let mut finished = [false, false];
    for chunk in &events[..events.len() - 1] {
        assert_eq!(chunk["object"], "text_completion");
        let choice = &chunk["choices"][0];
        let index = choice["index"].as_u64().unwrap() as usize;
        texts[index].push_str(choice["text"].as_str().unwrap());
        finished[index] |= !choice["finish_reason"].is_null();
    }
    assert_eq!(finished, [true, true]);
    assert_eq!(texts[0], text);
}

/// More prompts than batch slots, each longer than its event channel: the admitted ones are
/// read while the rest wait, so all finish (plain and streamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_prompts_than_the_batch_all_finish() {
    let _shared = ENGINE_STATS.read().await;
    let prompts: Vec<String> = (0..5).map(|i| format!("Story number {i}:")).collect();
    let body = json!({"model": MODEL, "prompt": prompts, "max_tokens": 66, "ignore_eos": true,
                      "temperature": 0});
    let (status, plain) = post("/v1/completions", &body).await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    assert_eq!(plain["choices"].as_array().unwrap().len(), 5);
    assert_eq!(plain["usage"]["completion_tokens"], 5 * 66);

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let events = stream("/v1/completions", &streaming).await;
    let usage = &events[events.len() - 2];
    assert_eq!(usage["usage"]["completion_tokens"], 5 * 66, "{usage}");
    let mut texts = vec![String::new(); 5];
    for chunk in &events[..events.len() - 2] {
        let choice = &chunk["choices"][0];
        texts[choice["index"].as_u64().unwrap() as usize]
            .push_str(choice["text"].as_str().unwrap());
    }
    // Texts are not compared with the plain run: 66 greedy tokens in different batch
    // compositions may part at a near-tie (docs/model-runtime.md).
    assert!(texts.iter().all(|t| !t.is_empty()), "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_report_the_chosen_token_and_alternatives() {
    let _shared = ENGINE_STATS.read().await;
    let (status, body) = post(
        "/v1/chat/completions",
        &chat(
            QUESTION,
            json!({"max_tokens": 5, "temperature": 0, "logprobs": true, "top_logprobs": 3}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(
        content.len() as u64,
        body["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let chosen = entry["logprob"].as_f64().unwrap();
        assert!(chosen <= 0.0);
        // Greedy: the chosen token is the most likely one.
        assert!(
            (top[0]["logprob"].as_f64().unwrap() - chosen).abs() < 1e-5,
            "{entry}"
        );
        assert_eq!(top[0]["token"], entry["token"]);
        assert!(entry["bytes"].is_array());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_and_found_by_name_or_alias() {
    let list: Value = client()
        .get(server().url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    let model = &list["data"][0];
    assert_eq!(model["id"], MODEL);
    assert_eq!(model["object"], "model");
    assert_eq!(model["context_length"], 8192);
    for name in [MODEL, "SmolLM2-135M-Instruct.Q4_1.gguf"] {
        let response = client()
            .get(server().url(&format!("/v1/models/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let found: Value = response.json().await.unwrap();
        assert_eq!(found["id"], MODEL);
    }
    let response = client()
        .get(server().url("/v1/models/org/gpt-5"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(assert_envelope(&body)["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_end_the_text_before_them() {
    let _shared = ENGINE_STATS.read().await;
    let request = chat(QUESTION, json!({"max_tokens": 12, "temperature": 0}));
    let (_, plain) = post("/v1/chat/completions", &request).await;
    let full = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    // Stop at the first occurrence of a piece from the middle of the answer.
    let at = full.find("Paris").expect("the greedy answer names Paris");
    let mut stopped = request.clone();
    stopped["stop"] = json!(["Paris", "never-appears"]);
    let (_, body) = post("/v1/chat/completions", &stopped).await;
    assert_eq!(body["choices"][0]["message"]["content"], &full[..at]);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    stopped["stream"] = json!(true);
    let events = stream("/v1/chat/completions", &stopped).await;
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, &full[..at]);
    assert_eq!(
        events[events.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_reproduces_sampled_text() {
    let _shared = ENGINE_STATS.read().await;
    let request = |seed: u64| {
        chat(
            "Tell me a short story.",
            json!({"max_tokens": 12, "temperature": 1.0, "seed": seed}),
        )
    };
    let text = |body: &Value| {
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (_, first) = post("/v1/chat/completions", &request(7)).await;
    let (_, again) = post("/v1/chat/completions", &request(7)).await;
    assert_eq!(text(&first), text(&again));
    // Streaming with the same seed gives the same text too.
    let mut streaming = request(7);
    streaming["stream"] = json!(true);
    let streamed: String = stream("/v1/chat/completions", &streaming)
        .await
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text(&first));
    // Other seeds do not all give the same text.
    let mut others = Vec::new();
    for seed in [1, 2, 3] {
        others.push(text(&post("/v1/chat/completions", &request(seed)).await.1));
    }
    assert!(others.iter().any(|t| *t != text(&first)), "{others:?}");
}

/// Path, body, expected status, `error.param` and `error.code` (when they matter).
type ErrorCase = (
    &'static str,
    Vec<u8>,
    StatusCode,
    Option<&'static str>,
    Option<&'static str>,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_an_envelope_with_the_right_status() {
    let _shared = ENGINE_STATS.read().await;
    let long_prompt = "hello ".repeat(9000);
    let chat_with = |extra: Value| chat("x", extra).to_string().into_bytes();
    let cases: Vec<ErrorCase> = vec![
        (
            "/v1/chat/completions",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            None,
            None,
        ),
        (
            "/v1/chat/completions",
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            None,
            None,
        ),
        (
            "/v1/chat/completions",
            br#"{"model": "m", "messages": "hi"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
            None,
        ),
        (
            "/v1/chat/completions",
            br#"{"messages": [{"role": "user", "content": "x"}]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            Some("model"),
            None,
        ),
        (
            "/v1/chat/completions",
            format!(r#"{{"model": "{MODEL}", "messages": []}}"#).into_bytes(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
            None,
        ),
        (
            "/v1/chat/completions",
            chat_with(json!({"max_tokens": "ten"})),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
            None,
        ),
        (
            "/v1/chat/completions",
            chat_with(json!({"temperature": -1})),
            StatusCode::BAD_REQUEST,
            Some("temperature"),
            None,
        ),
        (
            "/v1/chat/completions",
            chat_with(json!({"tools": [{"type": "function"}]})),
            StatusCode::BAD_REQUEST,
            Some("tools"),
            None,
        ),
        (
            "/v1/chat/completions",
            chat_with(json!({"n": 3})),
            StatusCode::BAD_REQUEST,
            Some("n"),
            None,
        ),
        (
            "/v1/chat/completions",
            chat_with(json!({"agent_id": "../../etc/passwd"})),
            StatusCode::BAD_REQUEST,
            Some("agent_id"),
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": long_prompt}]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/chat/completions",
            chat_with(json!({"max_tokens": 9000})),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
                .to_string()
                .into_bytes(),
            StatusCode::NOT_FOUND,
            Some("model"),
            Some("model_not_found"),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": [999_999]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
            None,
        ),
        // More blocks than the whole 64 MiB pool (1,456 tokens): named as the prompt.
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": vec![100; 2000], "max_tokens": 1})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
            Some("prompt_exceeds_kv_cache"),
        ),
        // Bounded cost: stop strings, message count, text size.
        (
            "/v1/chat/completions",
            chat_with(json!({"stop": "x".repeat(257)})),
            StatusCode::BAD_REQUEST,
            Some("stop"),
            None,
        ),
        (
            "/v1/chat/completions",
            chat_with(json!({"stop": ["a".repeat(200), "b".repeat(200), "c".repeat(200)]})),
            StatusCode::BAD_REQUEST,
            Some("stop"),
            None,
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": vec![json!({"role": "user", "content": "hi"}); 9000]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "a ".repeat(400_000)})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            Some("prompt"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "echo": true})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            Some("echo"),
            None,
        ),
        (
            "/v1/completions",
            vec![b'x'; MAX_BODY_BYTES + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            Some("request_too_large"),
        ),
        (
            "/v1/nothing-here",
            b"{}".to_vec(),
            StatusCode::NOT_FOUND,
            None,
            Some("unknown_url"),
        ),
    ];
    for (path, body, status, param, code) in cases {
        let response = post_raw(path, body).await;
        assert_eq!(response.status(), status, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let body: Value = response.json().await.unwrap();
        let error = assert_envelope(&body);
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{body}");
        }
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{body}");
        }
    }
    // Wrong method; hostile agent header.
    let response = client()
        .get(server().url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_envelope(&response.json().await.unwrap());
    let response = client()
        .post(server().url("/v1/chat/completions"))
        .header("x-agent-id", "a/../../b")
        .json(&chat("x", json!({"max_tokens": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(assert_envelope(&body)["param"], "x-agent-id");
    // A valid agent id is accepted.
    let response = client()
        .post(server().url("/v1/chat/completions"))
        .header("x-agent-id", "agent-7.a_b")
        .json(&chat("x", json!({"max_tokens": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// A temperature too small to divide by is greedy, not a draw from an overflowed
/// distribution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_temperatures_are_greedy() {
    let _shared = ENGINE_STATS.read().await;
    let text = |temperature: f64| async move {
        let (status, body) = post(
            "/v1/chat/completions",
            &chat(
                QUESTION,
                json!({"max_tokens": 12, "temperature": temperature}),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let greedy = text(0.0).await;
    for tiny in [1e-39, 1e-30, 1e-6] {
        assert_eq!(text(tiny).await, greedy, "temperature {tiny}");
    }
}

/// What a browser attack or a log forger sends is refused or neutralised: POST bodies not
/// declared as JSON (415), a `Host` that is not a loopback name (403, DNS rebinding), a
/// request id with spaces or `=` or of 100 KB (replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_edges_refuse_foreign_hosts_undeclared_bodies_and_forged_ids() {
    let _shared = ENGINE_STATS.read().await;
    let body = chat("x", json!({"max_tokens": 1})).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = client()
            .post(server().url("/v1/chat/completions"))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        let body: Value = response.json().await.unwrap();
        let error = assert_envelope(&body);
        assert_eq!(error["code"], "unsupported_media_type");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("Content-Type: application/json")
        );
    }
    // The test server listens on 127.0.0.1: only loopback names are answered.
    for (host, status) in [
        ("evil.example", StatusCode::FORBIDDEN),
        ("evil.example:8000", StatusCode::FORBIDDEN),
        ("localhost:8000", StatusCode::OK),
        ("127.0.0.1", StatusCode::OK),
    ] {
        let response = client()
            .get(server().url("/v1/models"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{host}");
        if status == StatusCode::FORBIDDEN {
            let body: Value = response.json().await.unwrap();
            assert_eq!(assert_envelope(&body)["code"], "host_not_allowed");
        }
    }
    // Request ids: kept when short and plain, replaced otherwise.
    let long = "x".repeat(1000);
    for (sent, kept) in [
        ("client-id_1.2:3", true),
        ("a b=forged", false),
        (long.as_str(), false),
    ] {
        let response = client()
            .get(server().url("/health/live"))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(echoed == sent, kept, "{}", &sent[..sent.len().min(20)]);
        if !kept {
            assert_eq!(echoed.len(), 36, "a generated UUID: {echoed}");
        }
    }
    // Headers beyond the connection's buffer are refused before any request exists.
    let response = client()
        .get(server().url("/health/live"))
        .header("x-request-id", "x".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let response = client()
        .get(server().url("/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Waits until the engine is generating, returning the generated-token counter then.
async fn wait_running() -> u64 {
    let started = std::time::Instant::now();
    loop {
        let stats = server().stats();
        if stats.running > 0 && stats.generated_tokens > 0 {
            return stats.generated_tokens;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the request never started: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a disconnect: the engine goes idle soon, well before the 2,000 tokens the request
/// asked for (`before`: tokens generated when it was seen running).
async fn assert_cancelled(before: u64) {
    let idle = server().wait_idle(Duration::from_secs(20)).await;
    assert!(
        idle.generated_tokens - before < 1000,
        "the generation ran on after the disconnect: {idle:?}"
    );
}

/// A request that would run for minutes: 2,000 tokens past any end-of-sequence.
fn endless(stream: bool) -> Value {
    chat(
        "Write a long essay.",
        json!({"max_tokens": 2000, "ignore_eos": true, "stream": stream}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_cancels_and_frees_blocks() {
    let _exclusive = ENGINE_STATS.write().await;
    server().wait_idle(DEADLINE).await;
    let mut response = client()
        .post(server().url("/v1/chat/completions"))
        .json(&endless(true))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        response.chunk().await.unwrap().expect("a chunk");
    }
    let before = wait_running().await;
    assert!(server().stats().blocks_in_use > 0);
    drop(response);
    assert_cancelled(before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_plain_request_cancels_and_frees_blocks() {
    let _exclusive = ENGINE_STATS.write().await;
    server().wait_idle(DEADLINE).await;
    let request = tokio::spawn(
        client()
            .post(server().url("/v1/chat/completions"))
            .json(&endless(false))
            .send(),
    );
    let before = wait_running().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    request.abort();
    let _ = request.await;
    assert_cancelled(before).await;
}

/// Random hostile bodies: each is broken in at least one way, so each must get a 4xx in
/// the envelope; the server must serve normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_4xx_envelopes_and_the_server_lives() {
    let _shared = ENGINE_STATS.read().await;
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    for round in 0..300 {
        let body = hostile_body(&mut rng, round);
        let path = if round % 2 == 0 {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let response = post_raw(path, body.clone()).await;
        let status = response.status();
        assert!(
            status.is_client_error(),
            "round {round}: {status} for {:?}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
        let envelope: Value = response.json().await.expect("JSON envelope");
        assert_envelope(&envelope);
    }
    let (status, _) = post(
        "/v1/chat/completions",
        &chat("Hi", json!({"max_tokens": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

fn random_value(rng: &mut ChaCha8Rng, depth: usize) -> Value {
    match rng.next_u32() % if depth > 3 { 5 } else { 7 } {
        0 => Value::Null,
        1 => json!(rng.next_u32().is_multiple_of(2)),
        2 => json!(rng.next_u64() as i64),
        3 => json!(f64::from(rng.next_u32()) / 7.0 - 1e5),
        4 => json!("x".repeat((rng.next_u32() % 40) as usize)),
        5 => Value::Array(
            (0..rng.next_u32() % 4)
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for i in 0..rng.next_u32() % 4 {
                map.insert(format!("k{i}"), random_value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// A request body that is wrong in at least one way.
fn hostile_body(rng: &mut ChaCha8Rng, round: usize) -> Vec<u8> {
    let fields = [
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "n",
        "seed",
        "stream",
        "logprobs",
        "tools",
        "stream_options",
        "presence_penalty",
    ];
    // A plausible base with random extra or replaced fields.
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                          "prompt": "hi", "max_tokens": 1});
    for _ in 0..rng.next_u32() % 4 {
        let field = fields[(rng.next_u32() as usize) % fields.len()];
        body[field] = random_value(rng, 0);
    }
    // Then break it for sure.
    match round % 10 {
        0 => body["model"] = random_non_string(rng),
        1 => {
            body["messages"] = json!("not a list");
            body["prompt"] = json!([[1, 2], "mixed"]);
        }
        2 => {
            body["prompt"] = json!({"nested": true});
            body["messages"] = json!(42);
        }
        3 => {
            // Deep nesting, beyond any parser's recursion limit.
            let depth = 1000 + (rng.next_u32() % 5000) as usize;
            return format!(
                r#"{{"model": "{MODEL}", "x": {}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
            .into_bytes();
        }
        4 => {
            // Invalid UTF-8 inside a string.
            let mut bytes = br#"{"model": ""#.to_vec();
            bytes.extend([0xff, 0xfe, 0xc3, 0x28]);
            bytes.extend(br#"", "messages": [], "prompt": []}"#);
            return bytes;
        }
        5 => {
            // Truncated JSON.
            let text = body.to_string();
            let cut = 1 + (rng.next_u32() as usize) % (text.len() - 1);
            return text.as_bytes()[..cut].to_vec();
        }
        6 => {
            // Random bytes.
            let mut bytes = vec![0u8; 1 + (rng.next_u32() % 2000) as usize];
            rng.fill_bytes(&mut bytes);
            bytes[0] = b'#';
            return bytes;
        }
        7 => {
            // A huge string where a small number belongs.
            body["max_tokens"] = json!("9".repeat(200_000));
        }
        8 => body["temperature"] = json!(1e30),
        _ => {
            // A prompt far over the context.
            body["messages"] = json!([{"role": "user", "content": "word ".repeat(60_000)}]);
            body["prompt"] = json!("word ".repeat(60_000));
        }
    }
    body.to_string().into_bytes()
}

fn random_non_string(rng: &mut ChaCha8Rng) -> Value {
    loop {
        let value = random_value(rng, 0);
        if !value.is_string() {
            return value;
        }
    }
}

/// The README's curl examples, run against this server: each must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_examples_work() {
    let _shared = ENGINE_STATS.read().await;
    let curl = std::process::Command::new("curl").arg("--version").output();
    assert!(
        curl.is_ok_and(|o| o.status.success()),
        "curl is missing: install it (`make setup` does, or apt-get install curl)"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let examples: Vec<String> = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.contains("curl ") && block.contains("127.0.0.1:8000"))
        .map(|block| block.replace("http://127.0.0.1:8000", &server().url("")))
        .collect();
    assert!(
        examples.len() >= 3,
        "expected curl examples in README.md, found {}",
        examples.len()
    );
    for example in examples {
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("set -e\n{example}"))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{example}\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !stdout.trim().is_empty() && !stdout.contains("\"error\""),
            "{example}\n{stdout}"
        );
    }
}
