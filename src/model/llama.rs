//! The Llama-family transformer (Llama 2/3, SmolLM2, Mistral, Qwen2, Qwen3) over the paged
//! KV cache.
//!
//! One forward step takes [`SequenceChunk`]s — sequences prefilling prompt chunks and
//! sequences decoding one token, mixed — and returns next-token logits for each sequence.
//! Projections and MLP run on all new tokens packed together (that is where batching pays).
//! Attention never lets a sequence see another's history:
//! - decoders of similar lengths are attended in one call per layer, over their keys copied
//!   into one padded batch with the padding masked (one call instead of one per sequence:
//!   far fewer operations to build and dispatch);
//! - every other sequence (a prefill chunk, a lone decoder) is attended over exactly its own
//!   keys — read in place from the pool when its blocks are consecutive — in the shapes
//!   mlx-lm uses for a lone sequence (causal mask for a chunk, none for one token), so
//!   single-stream outputs match the reference.

use std::cell::RefCell;
use std::f32::consts::LOG2_E;
use std::time::{Duration, Instant};

use mlx_rs::error::Exception;
use mlx_rs::fast::{rms_norm, rope_dynamic};
use mlx_rs::ops::indexing::{TryIndexOp, take_axis};
use mlx_rs::ops::{add, concatenate, divide, multiply, power};
use mlx_rs::transforms::compile::compile;
use mlx_rs::{Array, Dtype};

use super::ModelError;
use super::attention::{AttentionKernel, Mask, causal_mask};
use super::batch::{Attention, BatchPlan, SequenceChunk};
use super::config::ModelConfig;
use super::kv_cache::PagedKvCache;
use super::weights::{Linear, TensorMap, WeightMode};

struct DecoderLayer {
    input_norm: Array,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3: per-head RMSNorm of queries and keys.
    q_norm: Option<Array>,
    k_norm: Option<Array>,
    post_attention_norm: Array,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// A loaded Llama-family model. Its arrays belong to the thread that loaded it.
pub struct LlamaModel {
    config: ModelConfig,
    mode: WeightMode,
    /// Activations, float weights and the KV cache ([`WeightMode::compute_dtype`]).
    dtype: Dtype,
    embed_tokens: Linear,
    layers: Vec<DecoderLayer>,
    norm: Array,
    /// `None` when the output projection is tied to the embedding.
    lm_head: Option<Linear>,
    /// Llama-3 scaled RoPE periods; `None` = plain `rope_theta`.
    rope_freqs: Option<Array>,
    attention: AttentionKernel,
    /// [`swiglu`], compiled once for the model's lifetime.
    activation: Compiled2,
}

/// A compiled function of two arrays, kept so MLX traces it once (shapeless) instead of
/// once per call.
type Compiled2 =
    RefCell<Box<dyn for<'a> FnMut((&'a Array, &'a Array)) -> Result<Array, Exception>>>;

impl LlamaModel {
    /// Builds the model from Hugging Face-named tensors, converting them per `mode`, and
    /// materialises every weight (so load errors surface here, not in the first request).
    pub fn from_tensors(
        config: ModelConfig,
        tensors: &mut TensorMap,
        mode: WeightMode,
    ) -> Result<Self, ModelError> {
        let c = &config;
        let dtype = mode.compute_dtype(tensors.stored_dtype("model.norm.weight")?);
        let (hidden, heads, kv_heads, head_dim) =
            (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim);
        let embed_tokens = tensors.linear(
            "model.embed_tokens",
            c.vocab_size,
            hidden,
            false,
            mode,
            dtype,
        )?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let attn = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            let bias = c.attention_bias;
            let layer = DecoderLayer {
                input_norm: tensors.vector(
                    &format!("{p}.input_layernorm.weight"),
                    hidden,
                    dtype,
                )?,
                q_proj: tensors.linear(
                    &format!("{attn}.q_proj"),
                    heads * head_dim,
                    hidden,
                    bias,
                    mode,
                    dtype,
                )?,
                k_proj: tensors.linear(
                    &format!("{attn}.k_proj"),
                    kv_heads * head_dim,
                    hidden,
                    bias,
                    mode,
                    dtype,
                )?,
                v_proj: tensors.linear(
                    &format!("{attn}.v_proj"),
                    kv_heads * head_dim,
                    hidden,
                    bias,
                    mode,
                    dtype,
                )?,
                o_proj: tensors.linear(
                    &format!("{attn}.o_proj"),
                    hidden,
                    heads * head_dim,
                    c.output_bias,
                    mode,
                    dtype,
                )?,
                q_norm: c
                    .qk_norm
                    .then(|| tensors.vector(&format!("{attn}.q_norm.weight"), head_dim, dtype))
                    .transpose()?,
                k_norm: c
                    .qk_norm
                    .then(|| tensors.vector(&format!("{attn}.k_norm.weight"), head_dim, dtype))
                    .transpose()?,
                post_attention_norm: tensors.vector(
                    &format!("{p}.post_attention_layernorm.weight"),
                    hidden,
                    dtype,
                )?,
                gate_proj: tensors.linear(
                    &format!("{mlp}.gate_proj"),
                    c.intermediate_size,
                    hidden,
                    false,
                    mode,
                    dtype,
                )?,
                up_proj: tensors.linear(
                    &format!("{mlp}.up_proj"),
                    c.intermediate_size,
                    hidden,
                    false,
                    mode,
                    dtype,
                )?,
                down_proj: tensors.linear(
                    &format!("{mlp}.down_proj"),
                    hidden,
                    c.intermediate_size,
                    false,
                    mode,
                    dtype,
                )?,
            };
            layers.push(layer);
        }
        let norm = tensors.vector("model.norm.weight", hidden, dtype)?;
        let lm_head = if c.tie_word_embeddings {
            // Tied means tied, as in transformers and mlx-lm: a stored copy is ignored.
            tensors.discard("lm_head");
            None
        } else {
            Some(tensors.linear("lm_head", c.vocab_size, hidden, false, mode, dtype)?)
        };
        // Every stored weight must have been used: a leftover means the config describes
        // another model (e.g. biases it does not mention) and outputs would be wrong.
        tensors.expect_all_used()?;
        let rope_freqs = config
            .rope_freqs()
            .map(|freqs| Array::from_slice(&freqs, &[freqs.len() as i32]));

        let model = LlamaModel {
            config,
            mode,
            dtype,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope_freqs,
            attention: AttentionKernel::for_current_device((head_dim as f32).powf(-0.5)),
            activation: RefCell::new(Box::new(compile(swiglu, true))),
        };
        mlx_rs::transforms::eval(model.arrays())?;
        Ok(model)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn mode(&self) -> WeightMode {
        self.mode
    }

    /// The dtype of activations, float weights and the KV cache.
    pub fn compute_dtype(&self) -> Dtype {
        self.dtype
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut arrays = self.embed_tokens.arrays();
        for layer in &self.layers {
            arrays.push(&layer.input_norm);
            arrays.push(&layer.post_attention_norm);
            arrays.extend(layer.q_norm.iter().chain(layer.k_norm.iter()));
            for linear in [
                &layer.q_proj,
                &layer.k_proj,
                &layer.v_proj,
                &layer.o_proj,
                &layer.gate_proj,
                &layer.up_proj,
                &layer.down_proj,
            ] {
                arrays.extend(linear.arrays());
            }
        }
        arrays.push(&self.norm);
        if let Some(head) = &self.lm_head {
            arrays.extend(head.arrays());
        }
        arrays.extend(self.rope_freqs.iter());
        arrays
    }

    /// Runs one step over `chunks` (each sequence's new tokens, cached length and block
    /// table): plans it against this model and `cache` (refusing inconsistent chunks, see
    /// [`BatchPlan::new`]), writes the new tokens' K/V into their slots and returns f32 logits
    /// `[B, vocab]` for the last new token of each chunk, in order. The step is evaluated
    /// before returning (together with the cache, which keeps its writes in place).
    pub fn forward(
        &self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut PagedKvCache,
    ) -> Result<Array, ModelError> {
        self.forward_timed(chunks, cache).map(|(logits, _)| logits)
    }

    /// [`Self::forward`], also returning how long planning and building the lazy graph took
    /// (the rest of the call is its evaluation): the engine's step profile splits the two.
    pub fn forward_timed(
        &self,
        chunks: &[SequenceChunk<'_>],
        cache: &mut PagedKvCache,
    ) -> Result<(Array, Duration), ModelError> {
        let started = Instant::now();
        let pool = cache.config();
        let plan = BatchPlan::new(
            chunks,
            pool.block_size,
            pool.num_blocks,
            self.config.context_length,
            self.config.vocab_size,
        )?;
        cache.populate_before_writes(&plan.slots);
        let logits = self.forward_lazy(&plan, cache)?;
        let build = started.elapsed();
        let mut outputs = cache.arrays();
        outputs.push(&logits);
        mlx_rs::transforms::eval(outputs)?;
        Ok((logits, build))
    }

    fn forward_lazy(&self, plan: &BatchPlan, cache: &mut PagedKvCache) -> Result<Array, Exception> {
        let c = &self.config;
        let n = plan.token_ids.len() as i32;
        let batch = plan.batch() as i32;
        let (heads, kv_heads, head_dim) =
            (c.num_heads as i32, c.num_kv_heads as i32, c.head_dim as i32);
        let eps = c.rms_norm_eps;

        let ids = Array::from_slice(&plan.token_ids, &[n]);
        let positions = Array::from_slice(&plan.positions, &[n]);
        let slots = Array::from_slice(&plan.slots, &[n]);

        // Each decode batch's key index and padding mask, shared by every layer.
        let batch_reads = plan
            .attention
            .iter()
            .filter_map(|call| match call {
                Attention::Batched(batch) => Some(batch),
                Attention::Alone(_) => None,
            })
            .map(|batch| {
                let padded = (batch.valid.len() / batch.batch) as i32;
                let mask = Array::from_slice(&batch.valid, &[batch.batch as i32, 1, 1, padded]);
                (cache.batch_index(batch), mask)
            })
            .collect::<Vec<_>>();
        // Each prompt chunk's causal mask, likewise shared (one token needs none).
        let causal_masks = plan
            .attention
            .iter()
            .filter_map(|call| match call {
                Attention::Alone(seq) => Some(&plan.sequences[*seq]),
                Attention::Batched(_) => None,
            })
            .map(|seq| {
                let (len, keys) = (seq.chunk_len as i32, seq.kv_len as i32);
                (len > 1).then(|| causal_mask(len, keys)).transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut h = self.embed_tokens.rows(&ids)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let x = rms_norm(&h, Some(&layer.input_norm), eps)?;
            let mut q = layer
                .q_proj
                .forward(&x)?
                .reshape(&[n, heads, 1, head_dim])?;
            let mut k = layer
                .k_proj
                .forward(&x)?
                .reshape(&[n, kv_heads, 1, head_dim])?;
            let v = layer
                .v_proj
                .forward(&x)?
                .reshape(&[n, kv_heads, head_dim])?;
            if let (Some(q_norm), Some(k_norm)) = (&layer.q_norm, &layer.k_norm) {
                q = rms_norm(&q, Some(q_norm), eps)?;
                k = rms_norm(&k, Some(k_norm), eps)?;
            }
            // Each packed token is its own RoPE "batch" row with its own position.
            let q = self.rope(&q, &positions)?.reshape(&[n, heads, head_dim])?;
            let k = self.rope(&k, &positions)?;
            cache.write(index, &slots, &k, &v)?;

            let mut attended = Vec::with_capacity(plan.attention.len());
            let mut reads = batch_reads.iter();
            let mut causal = causal_masks.iter();
            for call in &plan.attention {
                let out = match call {
                    // Queries [B, H, 1, D] over the batch's padded keys, the padding masked.
                    Attention::Batched(batch) => {
                        let (gather, valid) = reads.next().expect("one read per batch");
                        let (first, b) = (batch.first_row as i32, batch.batch as i32);
                        let queries = q.try_index(first..first + b)?.expand_dims(2)?;
                        let (keys, values) = cache.batched(index, batch, gather)?;
                        self.attention
                            .attend(&queries, &keys, &values, Mask::Valid(valid))?
                            .reshape(&[b, heads * head_dim])?
                    }
                    // Queries [1, H, T, D] over exactly its keys, causal within a chunk.
                    Attention::Alone(seq) => {
                        let seq = &plan.sequences[*seq];
                        let (offset, len) = (seq.token_offset as i32, seq.chunk_len as i32);
                        let queries = q
                            .try_index(offset..offset + len)?
                            .transpose_axes(&[1, 0, 2])?
                            .expand_dims(0)?;
                        let (keys, values) = cache.sequence(index, &seq.keys, seq.kv_len)?;
                        let mask = match causal.next().expect("one mask per lone call") {
                            Some(causal) => Mask::Causal(causal),
                            None => Mask::All,
                        };
                        // [1, H, T, D] -> [T, H * D]
                        self.attention
                            .attend(&queries, &keys, &values, mask)?
                            .transpose_axes(&[0, 2, 1, 3])?
                            .reshape(&[len, heads * head_dim])?
                    }
                };
                attended.push(out);
            }
            let attended = match attended.len() {
                1 => attended.remove(0),
                _ => concatenate(&attended, 0)?,
            };
            h = add(&h, layer.o_proj.forward(&attended)?)?;

            let x = rms_norm(&h, Some(&layer.post_attention_norm), eps)?;
            let (gate, up) = (layer.gate_proj.forward(&x)?, layer.up_proj.forward(&x)?);
            let gated = self.activation.borrow_mut()((&gate, &up))?;
            let mlp = layer.down_proj.forward(&gated)?;
            h = add(&h, &mlp)?;
        }

        // Each sequence's last row, in input order (packing may have reordered them).
        let last_rows = plan.last_tokens();
        let last = if last_rows.iter().copied().eq(0..n) {
            h
        } else {
            take_axis(&h, Array::from_slice(&last_rows, &[batch]), 0)?
        };
        let last = rms_norm(&last, Some(&self.norm), eps)?;
        let logits = match &self.lm_head {
            Some(head) => head.forward(&last)?,
            None => self.embed_tokens.forward(&last)?,
        };
        logits.as_dtype(Dtype::Float32)
    }

    /// Rotary embedding of `[N, heads, 1, head_dim]` rows at per-row `positions`.
    fn rope(&self, x: &Array, positions: &Array) -> Result<Array, Exception> {
        let dims = self.config.head_dim as i32;
        match &self.rope_freqs {
            Some(freqs) => rope_dynamic(x, dims, false, None, 1.0, positions, freqs),
            None => rope_dynamic(x, dims, false, self.config.rope_theta, 1.0, positions, None),
        }
    }
}

/// The feed-forward's gated activation, `silu(gate) · up`, with the SiLU written
/// `gate / (1 + 2^(−gate · log2 e))` and compiled into one kernel. MLX's CPU build for
/// x86-64 computes `exp` (and so `sigmoid` and `nn::silu`) one value at a time through
/// out-of-line libm calls; this is one libm `powf` per value. On a prefill-sized
/// `[1120, 1536]` input it takes the activation from about 43 to 12 ms (docs/performance.md);
/// on Metal it is one fused kernel either way. The forms agree to about 1e-7, and reach
/// `-0` and `gate` at the extremes.
fn swiglu((gate, up): (&Array, &Array)) -> Result<Array, Exception> {
    let exponential = power(
        Array::from_f32(2.0),
        multiply(gate, Array::from_f32(-LOG2_E))?,
    )?;
    divide(gate, add(exponential, Array::from_f32(1.0))?)?.multiply(up)
}

#[cfg(test)]
mod tests {
    use mlx_rs::nn::silu;
    use mlx_rs::ops::{abs, maximum};

    use super::*;

    #[test]
    fn swiglu_equals_silu_times_up_at_every_magnitude() {
        crate::device::use_test_device();
        let mut compiled = compile(swiglu, true);
        // Two shapes through the same compiled function: the shapeless trace is reused.
        for len in [7, 1536] {
            let gate: Vec<f32> = (0..len)
                .map(|i| -120.0 + 240.0 * i as f32 / (len - 1) as f32)
                .collect();
            let gate = Array::from_slice(&gate, &[1, len]);
            let up = Array::from_f32(1.5);
            let up = mlx_rs::ops::broadcast_to(&up, &[1, len]).unwrap();
            let got = compiled((&gate, &up)).unwrap();
            let expected = silu(&gate).unwrap().multiply(&up).unwrap();
            let error = divide(
                abs(got.subtract(&expected).unwrap()).unwrap(),
                maximum(abs(&expected).unwrap(), Array::from_f32(1e-30)).unwrap(),
            )
            .unwrap();
            let worst = mlx_rs::ops::max(&error, None).unwrap().item_exact::<f32>();
            assert!(worst < 1e-5, "relative error {worst} at {len} values");
        }
        let extremes = Array::from_slice(&[-200.0f32, 0.0, 200.0], &[3]);
        let got = compiled((&extremes, &Array::from_f32(1.0))).unwrap();
        let bits: Vec<u32> = got.as_slice::<f32>().iter().map(|x| x.to_bits()).collect();
        let expected: Vec<u32> = [-0.0f32, 0.0, 200.0].iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, expected, "{:?}", got.as_slice::<f32>());
    }
}
