//! The engine end to end on the default model: aggregate decode throughput at 1/4/8/16
//! concurrent requests (compare with `model_step`'s `batched_decode`, the model runtime
//! alone), and the engine's own overhead per step (step time minus forward time), printed
//! per concurrency level.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mlx_serve::config::DEFAULT_MODEL;
use mlx_serve::engine::sampling::SamplingParams;
use mlx_serve::engine::sequence::{Event, GenerationRequest};
use mlx_serve::engine::{EngineConfig, EngineHandle, EngineStats, StepPhase};
use mlx_serve::model::hub::HubOptions;
use mlx_serve::model::loader::{self, LoadOptions, ModelSource};
use mlx_serve::model::weights::WeightMode;

const PROMPT_TOKENS: u32 = 32;
const NEW_TOKENS: usize = 32;

fn engine() -> EngineHandle {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
    assert!(
        path.is_file(),
        "{} is missing: run `make setup`",
        path.display()
    );
    mlx_serve::device::apply_from_env().unwrap_or_else(|e| panic!("{e}"));
    EngineHandle::start(
        move || {
            let options = LoadOptions {
                weights: WeightMode::F32,
                served_name: None,
                hub: HubOptions::default(),
            };
            loader::load(&ModelSource::Gguf(path), &options)
        },
        EngineConfig {
            max_batch: 16,
            ..EngineConfig::default()
        },
        Default::default(),
    )
    .expect("start the engine")
}

/// Runs `concurrency` requests to completion; distinct prompts, so no prefix sharing.
async fn run_batch(engine: &EngineHandle, concurrency: usize, round: u32) {
    let mut tasks = Vec::new();
    for i in 0..concurrency as u32 {
        let first = 1000 + (round * 16 + i) * PROMPT_TOKENS % 40000;
        let request = GenerationRequest {
            prompt: (first..first + PROMPT_TOKENS).collect(),
            sampling: SamplingParams::greedy(),
            max_tokens: NEW_TOKENS,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: true,
            agent: None,
            cache_salt: None,
        };
        let mut stream = engine.submit(request).await.expect("submit");
        tasks.push(tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if matches!(event, Event::Finished { .. }) {
                    break;
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("join");
    }
}

fn engine_throughput(c: &mut Criterion) {
    // The OpenBLAS kernels the server runs (src/openblas_core.rs); may start the bench again.
    #[cfg(target_os = "linux")]
    mlx_serve::openblas_core::restart_with_kernels_for_this_cpu();
    let engine = engine();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("engine_decode");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for concurrency in [1usize, 4, 8, 16] {
        let before = engine.stats();
        let mut round = 0;
        group.throughput(Throughput::Elements((concurrency * NEW_TOKENS) as u64));
        group.bench_function(BenchmarkId::from_parameter(concurrency), |b| {
            b.iter(|| {
                round += 1;
                runtime.block_on(run_batch(&engine, concurrency, round));
            })
        });
        let after = engine.stats();
        let forward = |stats: &EngineStats| {
            stats.profile.phase(StepPhase::Build) + stats.profile.phase(StepPhase::Evaluate)
        };
        let step = after.profile.total_seconds() - before.profile.total_seconds();
        let forward = forward(&after) - forward(&before);
        eprintln!(
            "engine overhead at {concurrency} concurrent: {:.2}% of step time \
             ({:.1} ms per step outside the forward pass over {} steps)",
            100.0 * (step - forward) / step.max(f64::EPSILON),
            1000.0 * (step - forward)
                / (after.profile.steps() - before.profile.steps()).max(1) as f64,
            after.profile.steps() - before.profile.steps()
        );
    }
    group.finish();
}

criterion_group!(benches, engine_throughput);
criterion_main!(benches);
