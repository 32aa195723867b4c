//! Shared fixtures for integration tests that need the real default model.
//!
//! MLX arrays belong to the thread that created them, and cargo runs each test on its own
//! thread. So each test binary loads the model once, on one dedicated thread, and tests hand
//! that thread closures to run; only plain data crosses back.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use serde::Deserialize;
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

use mlx_rs::io::GgufFile;
use mlx_serve::model::ModelError;
use mlx_serve::model::gguf;
use mlx_serve::model::hub::HubOptions;
use mlx_serve::model::llama::LlamaModel;
use mlx_serve::model::loader::{self, LoadOptions, LoadedModel, ModelSource};
use mlx_serve::model::weights::WeightMode;

/// The longest any single step of a test may take before it counts as hung.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

pub fn default_model_path() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(mlx_serve::config::DEFAULT_MODEL);
    assert!(
        path.is_file(),
        "the default model is missing at {}: run `make setup` (scripts/setup.sh) to install it",
        path.display()
    );
    path
}

/// Loads the default model as `serve` would, with f32 weights (for engine and server tests;
/// call it on the thread that will use the model).
pub fn load_default_model() -> Result<LoadedModel, ModelError> {
    use_test_device();
    let options = LoadOptions {
        weights: WeightMode::F32,
        served_name: None,
        hub: HubOptions::default(),
    };
    loader::load(&ModelSource::Gguf(default_model_path()), &options)
}

/// Puts this test binary on the device `MLX_SERVE_DEVICE` names (`auto` when unset; the
/// hosted macOS CI job sets `cpu`). MLX's device is process-wide, so every test that computes
/// calls this before its first MLX operation; the model helpers here do it themselves.
pub fn use_test_device() {
    if let Err(message) = mlx_serve::device::apply_from_env() {
        panic!("{message}");
    }
}

pub fn fixture_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    assert!(
        path.is_file(),
        "fixture {} is missing: regenerate with `make reference`",
        path.display()
    );
    path
}

type Job = Box<dyn FnOnce(&LlamaModel) + Send>;

/// Runs `job` on the thread that owns the default model (loaded once per test binary, f32
/// weights) and returns its result.
pub fn with_model<R: Send + 'static>(job: impl FnOnce(&LlamaModel) -> R + Send + 'static) -> R {
    static MODEL_THREAD: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();
    let sender = MODEL_THREAD
        .get_or_init(|| {
            let (tx, rx) = channel::<Job>();
            std::thread::spawn(move || {
                use_test_device();
                let path = default_model_path();
                let file = GgufFile::load(&path).expect("load default model");
                let config = gguf::model_config(&file, &path).expect("model config");
                let mut tensors = gguf::tensors(&file, &config, &path).expect("tensors");
                let model = LlamaModel::from_tensors(config, &mut tensors, WeightMode::F32)
                    .expect("build model");
                drop(tensors);
                drop(file);
                for job in rx {
                    // Keep serving the other tests when one job panics; that test fails
                    // through its dropped result channel.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&model)));
                }
            });
            Mutex::new(tx)
        })
        .lock()
        .expect("model thread sender")
        .clone();
    let (result_tx, result_rx) = channel();
    sender
        .send(Box::new(move |model| {
            // A panicking job drops `result_tx`; the test then fails below with the message
            // already printed by the model thread.
            let _ = result_tx.send(job(model));
        }))
        .expect("model thread is gone");
    result_rx
        .recv()
        .expect("the job panicked on the model thread (see its message above)")
}

/// The project's numerics rule: a reference margin below this is a near-tie, where shape-
/// dependent f32 rounding may legitimately pick the runner-up (docs/model-runtime.md).
pub const NEAR_TIE: f32 = 0.02;

/// mlx-lm's greedy choices for one prompt, as the fixtures record them.
pub struct ReferenceRun<'a> {
    pub name: &'a str,
    pub ids: &'a [u32],
    pub runner_ups: &'a [u32],
    pub margins: &'a [f32],
}

/// Asserts `got` follows the reference under the numerics rule: identical up to the first
/// divergence, which is allowed only at a near-tie and only onto the reference's runner-up.
/// Returns how many leading tokens are identical.
pub fn assert_follows_reference(what: &str, got: &[u32], reference: &ReferenceRun<'_>) -> usize {
    let len = got.len();
    assert!(
        len <= reference.ids.len(),
        "{what}: {len} tokens, the reference has fewer"
    );
    let expected = &reference.ids[..len];
    let Some(step) = got.iter().zip(expected).position(|(a, b)| a != b) else {
        return len;
    };
    let margin = reference.margins[step];
    assert!(
        margin < NEAR_TIE && got[step] == reference.runner_ups[step],
        "{what} ({}): token {step} is {} but mlx-lm chose {} (runner-up {}) with a margin of \
         {margin:.4}; divergence is allowed only onto the runner-up below {NEAR_TIE}; ours so \
         far {:?}, reference {:?}",
        reference.name,
        got[step],
        expected[step],
        reference.runner_ups[step],
        &got[..=step],
        &expected[..=step],
    );
    step
}

/// A temporary folder removed on drop (`name` keeps concurrent tests apart).
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mlx-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tests/fixtures/smollm2_greedy_reference.json`: mlx-lm's greedy decoding of the default
/// model (made by `scripts/reference/make_fixtures.py`).
#[derive(Deserialize)]
pub struct GreedyFixture {
    pub gguf_sha256: String,
    pub prompts: Vec<ReferencePrompt>,
}

#[derive(Deserialize, Clone)]
pub struct ReferencePrompt {
    pub name: String,
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub runner_up_ids: Vec<u32>,
    pub margins: Vec<f32>,
}

impl ReferencePrompt {
    pub fn reference(&self) -> ReferenceRun<'_> {
        ReferenceRun {
            name: &self.name,
            ids: &self.output_ids,
            runner_ups: &self.runner_up_ids,
            margins: &self.margins,
        }
    }
}

pub fn greedy_fixture() -> GreedyFixture {
    let text = std::fs::read_to_string(fixture_path("smollm2_greedy_reference.json"))
        .expect("read fixture");
    serde_json::from_str(&text).expect("parse fixture (regenerate with `make reference`)")
}
