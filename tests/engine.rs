//! The engine end to end on the default model: continuous batching, admission and
//! refusal, cancellation, backpressure, drain and reproducible sampling. Every wait is
//! bounded by a deadline, so a hang fails the test instead of stalling the suite.

mod common;

use std::time::Duration;

use mlx_serve::engine::sampling::SamplingParams;
use mlx_serve::engine::scheduler::Busy;
use mlx_serve::engine::sequence::{Event, FinishReason, GenerationRequest, Usage};
use mlx_serve::engine::{EngineConfig, EngineHandle, EventStream, PoolSize, StepKind, SubmitError};

use common::DEADLINE;

fn start(config: EngineConfig) -> EngineHandle {
    EngineHandle::start(common::load_default_model, config, Default::default())
        .expect("start the engine")
}

fn small_config() -> EngineConfig {
    EngineConfig {
        kv_pool: PoolSize::Bytes(32 << 20),
        ..EngineConfig::default()
    }
}

use common::{ReferencePrompt, greedy_fixture as fixture};

fn request(prompt: &[u32], max_tokens: usize, sampling: SamplingParams) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.to_vec(),
        sampling,
        max_tokens,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: true,
        agent: None,
        cache_salt: None,
    }
}

/// Everything a stream produced.
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    reason: FinishReason,
    usage: Usage,
}

async fn collect(mut stream: EventStream) -> Outcome {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let read = async {
        while let Some(event) = stream.next().await {
            match event {
                Event::Token { sampled, text: t } => {
                    tokens.push(sampled.token);
                    text.push_str(&t);
                }
                Event::Finished {
                    text: t,
                    reason,
                    usage,
                } => {
                    text.push_str(&t);
                    return (reason, usage);
                }
            }
        }
        panic!("stream ended without Finished");
    };
    let (reason, usage) = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("generation did not finish in time");
    Outcome {
        tokens,
        text,
        reason,
        usage,
    }
}

async fn wait_until(engine: &EngineHandle, what: &str, done: impl Fn(&EngineHandle) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done(engine) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn greedy_through_the_engine_matches_the_reference_alone_and_batched() {
    let engine = start(small_config());
    let fixture = fixture();
    let len = 24;
    // Alone.
    let first = &fixture.prompts[0];
    let stream = engine
        .submit(request(&first.prompt_ids, len, SamplingParams::greedy()))
        .await
        .expect("submit");
    let alone = collect(stream).await;
    assert_eq!(alone.reason, FinishReason::Length);
    // Eight requests at once: the five prompts (mixed lengths) and three of them again.
    let batch: Vec<&ReferencePrompt> = fixture.prompts.iter().cycle().take(8).collect();
    let mut streams = Vec::new();
    for prompt in &batch {
        let stream = engine
            .submit(request(&prompt.prompt_ids, len, SamplingParams::greedy()))
            .await
            .expect("submit");
        streams.push(tokio::spawn(collect(stream)));
    }
    let mut batched = Vec::new();
    for stream in streams {
        batched.push(stream.await.expect("join"));
    }
    for (outcome, prompt) in std::iter::once(&alone)
        .chain(&batched)
        .zip(std::iter::once(first).chain(batch.iter().copied()))
    {
        assert_eq!(outcome.tokens.len(), len);
        assert_eq!(outcome.usage.completion_tokens, len);
        assert_eq!(outcome.usage.prompt_tokens, prompt.prompt_ids.len());
        common::assert_follows_reference("engine", &outcome.tokens, &prompt.reference());
    }
    // The repeated first prompt found its full blocks in the prefix cache.
    assert!(
        batched[0].usage.cached_tokens >= 16,
        "{:?}",
        batched[0].usage
    );
    wait_until(&engine, "blocks back to zero", |e| {
        e.stats().blocks_in_use == 0
    })
    .await;
}

#[tokio::test]
async fn exhausted_pool_refuses_at_once_and_keeps_serving() {
    // Room for about 220 tokens, no queue.
    let engine = start(EngineConfig {
        kv_pool: PoolSize::Bytes(10 << 20),
        max_queue: 0,
        watermark_blocks: 0,
        ..EngineConfig::default()
    });
    let blocks = engine.stats().blocks_total;
    assert!(blocks > 4, "{blocks} blocks");
    let prompt: Vec<u32> = (100..100 + 16 * (blocks as u32 - 2)).collect();
    let long = engine
        .submit(request(&prompt, 16, SamplingParams::greedy()))
        .await
        .expect("the first request fits");
    // A different prompt of the same size (an identical one would share the first's
    // cached prefix blocks and fit).
    let other: Vec<u32> = prompt.iter().map(|t| t + 5000).collect();
    let started = std::time::Instant::now();
    let refused = engine
        .submit(request(&other, 16, SamplingParams::greedy()))
        .await
        .expect_err("the pool cannot hold a second one");
    assert!(matches!(refused, SubmitError::Busy { .. }), "{refused}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusal must not wait"
    );
    let served = collect(long).await;
    assert_eq!(served.usage.completion_tokens, 16);
    // Served again once blocks are back.
    let again = engine
        .submit(request(&prompt[..32], 4, SamplingParams::greedy()))
        .await
        .expect("served after the pool freed up");
    assert_eq!(collect(again).await.usage.completion_tokens, 4);
    // A prompt over the whole pool is invalid, not busy.
    let huge: Vec<u32> = (0..16 * (blocks as u32 + 1))
        .map(|i| 100 + i % 1000)
        .collect();
    let err = engine
        .submit(request(&huge, 4, SamplingParams::greedy()))
        .await
        .expect_err("larger than the pool");
    assert!(matches!(err, SubmitError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn room_held_while_prompts_are_prepared_is_handed_over_or_given_back() {
    // One runs and one may wait: two requests whose prompts are still being prepared hold
    // all the room there is.
    let engine = start(EngineConfig {
        max_batch: 1,
        max_queue: 1,
        ..small_config()
    });
    let first = engine.reserve(1).expect("room for the first");
    let second = engine.reserve(1).expect("room for the second");
    let Err(refused) = engine.reserve(1) else {
        panic!("a third arrival found room although two rooms fill the batch and the queue");
    };
    assert!(matches!(refused, SubmitError::Busy(_)), "{refused}");
    // A request arriving now with its prompt ready is judged behind both rooms.
    let Err(refused) =
        engine.submit_all(vec![request(&[7, 8, 9], 1, SamplingParams::greedy())], None)
    else {
        panic!("a request was queued behind a full batch and queue of held room");
    };
    assert!(matches!(refused, SubmitError::Busy(_)), "{refused}");
    // The second's client leaves before its prompt is ready: its room comes back.
    drop(second);
    let third = engine.reserve(1).expect("the room given back");
    // The first is queued in its own room, which is not counted against it a second time.
    let mut pending = engine
        .submit_all(
            vec![request(&[1, 2, 3, 4], 4, SamplingParams::greedy())],
            Some(first),
        )
        .expect("queued in its room");
    let stream = pending
        .pop()
        .expect("one ticket")
        .admitted()
        .await
        .expect("admitted");
    assert_eq!(collect(stream).await.usage.completion_tokens, 4);
    // Once the last room is dropped too, the batch and queue are free again.
    drop(third);
    let rooms = (engine.reserve(1), engine.reserve(1));
    assert!(rooms.0.is_ok() && rooms.1.is_ok(), "room left held");
}

#[tokio::test]
async fn held_room_is_revoked_once_an_earlier_prompt_leaves_it_no_chance() {
    // Two may run and none wait: two requests arriving together both get room, each
    // counted at one block. The first's prompt then takes 41 of the 45 blocks, and the
    // second could not start beside it (one block plus the watermark of four): it is
    // refused before its prompt is ready, not after.
    let engine = start(EngineConfig {
        max_batch: 2,
        max_queue: 0,
        ..small_config()
    });
    assert_eq!(engine.stats().blocks_total, 45);
    let first = engine.reserve(1).expect("room for the first");
    let mut second = engine.reserve(1).expect("room for the second");
    let long: Vec<u32> = (100..100 + 41 * 16).collect();
    let mut pending = engine
        .submit_all(
            vec![request(&long, 2, SamplingParams::greedy())],
            Some(first),
        )
        .expect("the first is taken");
    let refused = tokio::time::timeout(DEADLINE, second.revoked())
        .await
        .expect("the second's room was not given up");
    assert!(
        matches!(refused, SubmitError::Busy(Busy::PoolExhausted)),
        "{refused}"
    );
    // Had its client gone on to submit anyway, it is refused.
    let Err(again) = engine.submit_all(
        vec![request(&[5, 6, 7], 1, SamplingParams::greedy())],
        Some(second),
    ) else {
        panic!("a revoked room still took its request");
    };
    assert!(matches!(again, SubmitError::Busy(_)), "{again}");
    let stream = pending
        .pop()
        .expect("one ticket")
        .admitted()
        .await
        .expect("admitted");
    assert_eq!(collect(stream).await.usage.completion_tokens, 2);
}

#[tokio::test]
async fn preempted_requests_are_recomputed_and_finish_correctly() {
    // 45 blocks of 16 tokens; two requests that each grow to 25 blocks cannot both fit:
    // the newer one is preempted, recomputed later, and must still produce exactly what it
    // produces alone.
    let engine = start(EngineConfig {
        watermark_blocks: 0,
        ..small_config()
    });
    assert_eq!(engine.stats().blocks_total, 45);
    let first: Vec<u32> = (1000..1250).collect();
    let second: Vec<u32> = (3000..3250).collect();
    let a = engine
        .submit(request(&first, 150, SamplingParams::greedy()))
        .await
        .expect("submit");
    let b = engine
        .submit(request(&second, 150, SamplingParams::greedy()))
        .await
        .expect("submit");
    let (a, b) = (tokio::spawn(collect(a)), tokio::spawn(collect(b)));
    let (a, b) = (a.await.expect("join"), b.await.expect("join"));
    assert!(engine.stats().preemptions >= 1, "{:?}", engine.stats());
    assert_eq!(
        (a.usage.completion_tokens, b.usage.completion_tokens),
        (150, 150)
    );
    let alone = collect(
        engine
            .submit(request(&second, 150, SamplingParams::greedy()))
            .await
            .expect("submit"),
    )
    .await;
    assert_eq!(
        b.tokens, alone.tokens,
        "recomputed output equals the uninterrupted one"
    );
    wait_until(&engine, "blocks freed", |e| e.stats().blocks_in_use == 0).await;
}

#[tokio::test]
async fn waiting_too_long_for_blocks_times_out() {
    let engine = start(EngineConfig {
        kv_pool: PoolSize::Bytes(10 << 20),
        max_queue: 4,
        watermark_blocks: 0,
        queue_timeout: Duration::from_millis(300),
        ..EngineConfig::default()
    });
    let blocks = engine.stats().blocks_total as u32;
    let prompt: Vec<u32> = (100..100 + 16 * (blocks - 2)).collect();
    let running = engine
        .submit(request(&prompt, 64, SamplingParams::greedy()))
        .await
        .expect("fits");
    let other: Vec<u32> = prompt.iter().map(|t| t + 5000).collect();
    let waited = engine
        .submit(request(&other, 4, SamplingParams::greedy()))
        .await
        .expect_err("cannot get blocks in time");
    assert!(
        matches!(waited, SubmitError::QueueTimeout { .. }),
        "{waited}"
    );
    drop(running);
    wait_until(&engine, "blocks freed", |e| e.stats().blocks_in_use == 0).await;
}

#[tokio::test]
async fn dropping_a_stream_cancels_it_and_frees_its_blocks() {
    let engine = start(small_config());
    let prompt: Vec<u32> = (200..264).collect();
    let mut stream = engine
        .submit(request(&prompt, 500, SamplingParams::greedy()))
        .await
        .expect("submit");
    for _ in 0..2 {
        tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("a token in time")
            .expect("an event");
    }
    assert!(engine.stats().blocks_in_use > 0);
    drop(stream);
    wait_until(&engine, "cancelled blocks freed", |e| {
        let s = e.stats();
        s.blocks_in_use == 0 && s.running == 0
    })
    .await;
}

#[tokio::test]
async fn a_slow_reader_does_not_hold_up_the_others() {
    let engine = start(EngineConfig {
        event_buffer: 2,
        ..small_config()
    });
    let prompt: Vec<u32> = (300..340).collect();
    // Never read: its buffer fills after two events and it is paused.
    let stalled = engine
        .submit(request(&prompt, 200, SamplingParams::greedy()))
        .await
        .expect("submit");
    let other = engine
        .submit(request(&prompt[..20], 24, SamplingParams::greedy()))
        .await
        .expect("submit");
    let done = collect(other).await;
    assert_eq!(done.usage.completion_tokens, 24);
    // The stalled request keeps its place (and its blocks) but did not advance.
    wait_until(&engine, "only the stalled request running", |e| {
        e.stats().running == 1
    })
    .await;
    assert!(engine.stats().blocks_in_use > 0);
    drop(stalled);
    wait_until(&engine, "everything freed", |e| {
        e.stats().blocks_in_use == 0
    })
    .await;
}

#[tokio::test]
async fn drain_finishes_short_requests_aborts_long_ones_and_refuses_new_ones() {
    let engine = start(small_config());
    let prompt: Vec<u32> = (400..430).collect();
    let short = engine
        .submit(request(&prompt, 3, SamplingParams::greedy()))
        .await
        .expect("submit");
    let long = engine
        .submit(request(&prompt, 2000, SamplingParams::greedy()))
        .await
        .expect("submit");
    let short = tokio::spawn(collect(short));
    let long = tokio::spawn(collect(long));
    let report = engine.drain(Duration::from_secs(3)).await;
    assert_eq!(report.aborted, 1, "{report:?}");
    assert!(report.completed >= 1, "{report:?}");
    assert_eq!(short.await.expect("join").reason, FinishReason::Length);
    let long = long.await.expect("join");
    assert_eq!(long.reason, FinishReason::Aborted);
    assert!(long.usage.completion_tokens < 2000);
    let refused = engine
        .submit(request(&prompt, 3, SamplingParams::greedy()))
        .await
        .expect_err("draining");
    assert_eq!(refused, SubmitError::Draining);
    // Idempotent.
    let again = engine.drain(Duration::from_secs(1)).await;
    assert_eq!(again.aborted, 0);
    assert_eq!(engine.stats().blocks_in_use, 0);
}

#[tokio::test]
async fn seeded_sampling_is_reproducible_also_in_a_batch() {
    let engine = start(small_config());
    let fixture = fixture();
    let prompt = &fixture.prompts[1].prompt_ids;
    let seeded = |seed| SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let alone = collect(engine.submit(request(prompt, 16, seeded(7))).await.unwrap()).await;
    let a = engine.submit(request(prompt, 16, seeded(7))).await.unwrap();
    let b = engine.submit(request(prompt, 16, seeded(8))).await.unwrap();
    let (a, b) = (tokio::spawn(collect(a)), tokio::spawn(collect(b)));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(
        alone.tokens, a.tokens,
        "same seed, same tokens (alone vs batched)"
    );
    assert_ne!(a.tokens, b.tokens, "another seed, another sample");
    assert!(!a.text.is_empty());
}

#[tokio::test]
async fn stop_strings_end_the_generation_without_emitting_them() {
    let engine = start(small_config());
    let fixture = fixture();
    // The reference answer of the first chat prompt, decoded by the engine itself first.
    let prompt = &fixture.prompts[0].prompt_ids;
    let full = collect(
        engine
            .submit(request(prompt, 24, SamplingParams::greedy()))
            .await
            .unwrap(),
    )
    .await;
    // Stop at a word in the middle of the text (likely spanning tokens).
    let words: Vec<&str> = full.text.split_whitespace().collect();
    assert!(words.len() > 6, "{:?}", full.text);
    let stop = format!("{} {}", words[3], words[4]);
    let cut = full.text.find(&stop).expect("stop string in the text");
    let stopped = collect(
        engine
            .submit(GenerationRequest {
                stop: vec![stop.clone()],
                ..request(prompt, 24, SamplingParams::greedy())
            })
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stopped.reason, FinishReason::Stop);
    assert_eq!(stopped.text, full.text[..cut], "stop string {stop:?}");
}

#[tokio::test]
async fn a_preempted_request_waits_no_longer_than_the_queue_timeout() {
    // 14 blocks of 16 tokens: two 80-token prompts (5 blocks each) leave 4 blocks of
    // growth; the newer one is preempted when they run out, and cannot come back while the
    // older one runs.
    let metrics = std::sync::Arc::new(mlx_serve::metrics::engine::EngineMetrics::default());
    let engine = EngineHandle::start(
        common::load_default_model,
        EngineConfig {
            kv_pool: PoolSize::Bytes(10 << 20),
            watermark_blocks: 0,
            queue_timeout: Duration::from_secs(1),
            ..EngineConfig::default()
        },
        std::sync::Arc::clone(&metrics),
    )
    .expect("start the engine");
    assert_eq!(engine.stats().blocks_total, 14);
    let older: Vec<u32> = (5000..5080).collect();
    let newer: Vec<u32> = (7000..7080).collect();
    // Queued together, so both start in the first step.
    let mut pending = engine
        .submit_all(
            vec![
                request(&older, 2000, SamplingParams::greedy()),
                request(&newer, 2000, SamplingParams::greedy()),
            ],
            None,
        )
        .expect("submit");
    let newer = pending.pop().unwrap().admitted().await.expect("admitted");
    let older = pending.pop().unwrap().admitted().await.expect("admitted");
    let older = tokio::spawn(collect(older));
    let newer = collect(newer).await;
    assert_eq!(newer.reason, FinishReason::Aborted);
    assert!(newer.usage.completion_tokens > 0, "{:?}", newer.usage);
    assert!(engine.stats().preemptions >= 1, "{:?}", engine.stats());
    let aborted = metrics.counters().aborted;
    assert_eq!(
        aborted.get(&mlx_serve::metrics::engine::AbortCause::QueueTimeout),
        Some(&1),
        "{aborted:?}"
    );
    // The older one runs on until it is dropped.
    assert!(!older.is_finished());
    older.abort();
    wait_until(&engine, "blocks freed", |e| e.stats().blocks_in_use == 0).await;
}

#[tokio::test]
async fn requests_sent_together_to_an_idle_engine_prefill_in_one_step() {
    // A window far longer than the 30 ms between the submissions below, even on a machine
    // busy with the other tests; without the gather, the first prefill starts alone.
    let window = Duration::from_secs(2);
    let engine = start(EngineConfig {
        arrival_gather: window,
        ..small_config()
    });
    let fixture = fixture();
    let mut streams = Vec::new();
    for prompt in fixture.prompts.iter().take(4) {
        // `submit` resolves at admission, so each request is sent from its own task.
        let (engine, prompt) = (engine.clone(), prompt.prompt_ids.clone());
        streams.push(tokio::spawn(async move {
            let stream = engine
                .submit(request(&prompt, 4, SamplingParams::greedy()))
                .await
                .expect("submit");
            collect(stream).await
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for stream in streams {
        assert_eq!(stream.await.expect("join").usage.completion_tokens, 4);
    }
    let prefill = *engine.stats().profile.kind(StepKind::Prefill);
    assert_eq!(
        (prefill.steps, prefill.sequences),
        (1, 4),
        "the four prompts prefill in one step: {prefill:?}"
    );
}
