//! Scaled dot-product attention for one call of a forward step: MLX's fused kernel on a
//! GPU, and on the CPU the same arithmetic written out around a faster exponential.
//!
//! Why two forms: on Metal `fast::scaled_dot_product_attention` is one fused kernel, and
//! nothing written out of separate operations can beat it. MLX has no such kernel for the
//! CPU: there it evaluates a fallback (matmul, mask, softmax, matmul) whose softmax
//! computes `exp` one value at a time through out-of-line libm calls (`floorf`, `fmaf`)
//! in the x86-64 wheel. A prefill wave of 8 prompts of 140 tokens spent about 0.85 s of
//! its 3.4 s there. Here the exponential is `2^(x · log2 e)`, one libm `powf` per value in
//! a compiled kernel, with the softmax's scale folded into that factor and its division
//! moved after the values are summed (a `[T, head_dim]` division instead of `[T, keys]`):
//! a third of the softmax's time, agreeing with it to about 1e-7 (docs/performance.md).

use std::cell::RefCell;
use std::f32::consts::LOG2_E;

use mlx_rs::Array;
use mlx_rs::error::Exception;
use mlx_rs::fast::ScaledDotProductAttentionMask;
use mlx_rs::ops::{le, matmul, max_axis, multiply, power, select, subtract, sum_axis};
use mlx_rs::transforms::compile::compile;

use crate::device::ComputeDevice;

/// Which keys each query may see.
#[derive(Clone, Copy)]
pub(super) enum Mask<'a> {
    /// Every key.
    All,
    /// A prompt chunk's causal mask from [`causal_mask`], `[queries, keys]`.
    Causal(&'a Array),
    /// Padded decode batches: `[batch, 1, 1, keys]`, `true` where a key is real.
    Valid(&'a Array),
}

/// A compiled function of three arrays, kept for the model's lifetime: MLX traces it once
/// (shapeless, so every shape reuses the trace) instead of once per call.
type Compiled3 =
    RefCell<Box<dyn for<'a> FnMut((&'a Array, &'a Array, &'a Array)) -> Result<Array, Exception>>>;

/// How attention is evaluated on the device MLX computes on; chosen once per model load.
/// Its arrays and compiled function belong to the thread that made it, like the model's.
pub(super) struct AttentionKernel {
    fused: bool,
    scale: f32,
    /// `scale · log2 e`, the exponent factor of the written-out softmax.
    factor: Array,
    exponentials: Compiled3,
}

impl AttentionKernel {
    /// The fused kernel where MLX computes on a GPU, the written-out form on the CPU.
    pub(super) fn for_current_device(scale: f32) -> Self {
        Self::new(ComputeDevice::current() == ComputeDevice::Gpu, scale)
    }

    fn new(fused: bool, scale: f32) -> Self {
        Self {
            fused,
            scale,
            factor: Array::from_f32(scale * LOG2_E),
            exponentials: RefCell::new(Box::new(compile(exponentials, true))),
        }
    }

    /// Attention of `queries` `[B, heads, T, D]` over `keys` and `values` `[B, kv_heads,
    /// S, D]` (`heads` a multiple of `kv_heads`), returning `[B, heads, T, D]`.
    pub(super) fn attend(
        &self,
        queries: &Array,
        keys: &Array,
        values: &Array,
        mask: Mask<'_>,
    ) -> Result<Array, Exception> {
        if self.fused {
            let mask = match mask {
                Mask::All => None,
                Mask::Causal(_) => Some(ScaledDotProductAttentionMask::Causal),
                Mask::Valid(valid) => Some(ScaledDotProductAttentionMask::Array(valid)),
            };
            return mlx_rs::fast::scaled_dot_product_attention(
                queries, keys, values, self.scale, mask, None,
            );
        }
        let shape = queries.shape();
        let (batch, heads, len, dim) = (shape[0], shape[1], shape[2], shape[3]);
        let kv_heads = keys.shape()[1];
        // Queries grouped by the KV head they share: [B, kv_heads, group, T, D] against
        // keys [B, kv_heads, 1, D, S], so no key is copied per query head.
        let grouped = queries.reshape(&[batch, kv_heads, heads / kv_heads, len, dim])?;
        let keys = keys.expand_dims(2)?.swap_axes(-1, -2)?;
        let values = values.expand_dims(2)?;
        let scores = matmul(&grouped, &keys)?;
        let scores = match mask {
            Mask::All => scores,
            Mask::Causal(causal) => select(causal, &scores, Array::from_f32(f32::NEG_INFINITY))?,
            Mask::Valid(valid) => select(
                valid.expand_dims(2)?,
                &scores,
                Array::from_f32(f32::NEG_INFINITY),
            )?,
        };
        let max = max_axis(&scores, -1, true)?;
        let weights = self.exponentials.borrow_mut()((&scores, &max, &self.factor))?;
        let total = sum_axis(&weights, -1, true)?;
        matmul(&weights, &values)?
            .divide(&total)?
            .reshape(&[batch, heads, len, dim])
    }
}

/// `[queries, keys]`: query `i` of a chunk of `queries` tokens that ends the first `keys`
/// of its sequence sees keys `0 ..= keys - queries + i` (the chunk's own earlier tokens and
/// everything cached before it), as MLX's causal mask does.
pub(super) fn causal_mask(queries: i32, keys: i32) -> Result<Array, Exception> {
    let key = Array::arange::<_, i32>(None, keys, None)?.reshape(&[1, keys])?;
    let last_seen = Array::arange::<_, i32>(keys - queries, keys, None)?.reshape(&[queries, 1])?;
    le(&key, &last_seen)
}

/// `2^((scores − max) · factor)`, with `factor = scale · log2 e`: the softmax's
/// unnormalised weights, compiled into one kernel. Masked scores (`−∞`) give exactly 0.
fn exponentials((scores, max, factor): (&Array, &Array, &Array)) -> Result<Array, Exception> {
    power(
        Array::from_f32(2.0),
        multiply(subtract(scores, max)?, factor)?,
    )
}

#[cfg(test)]
mod tests {
    use mlx_rs::ops::{abs, max, subtract};
    use mlx_rs::random::normal;

    use super::*;

    /// The largest absolute difference between the written-out form and MLX's fused
    /// attention (on the CPU, MLX's own fallback with its softmax) for the same inputs.
    fn difference(queries: &Array, keys: &Array, values: &Array, mask: Mask<'_>) -> f32 {
        let scale = 0.125;
        let fused = AttentionKernel::new(true, scale);
        let written = AttentionKernel::new(false, scale);
        let expected = fused.attend(queries, keys, values, mask).unwrap();
        let got = written.attend(queries, keys, values, mask).unwrap();
        assert_eq!(got.shape(), expected.shape());
        max(abs(subtract(&got, &expected).unwrap()).unwrap(), None)
            .unwrap()
            .item_exact::<f32>()
    }

    fn random(shape: &[i32], spread: f32) -> Array {
        normal::<f32>(shape, None, None, None).unwrap() * spread
    }

    #[test]
    fn a_prompt_chunk_after_cached_keys_sees_only_its_past() {
        crate::device::use_test_device();
        // 6 query heads sharing 2 KV heads; 5 new tokens after 4 cached ones.
        let queries = random(&[1, 6, 5, 8], 2.0);
        let (keys, values) = (random(&[1, 2, 9, 8], 2.0), random(&[1, 2, 9, 8], 1.0));
        let causal = causal_mask(5, 9).unwrap();
        let expected: Vec<bool> = (0..5)
            .flat_map(|i| (0..9).map(move |j| j <= 4 + i))
            .collect();
        assert_eq!(causal.as_slice::<bool>(), expected.as_slice());
        let diff = difference(&queries, &keys, &values, Mask::Causal(&causal));
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn padded_decode_batches_ignore_their_padding() {
        crate::device::use_test_device();
        let queries = random(&[3, 6, 1, 8], 2.0);
        let (keys, values) = (random(&[3, 2, 7, 8], 2.0), random(&[3, 2, 7, 8], 1.0));
        let lengths = [7, 3, 1];
        let valid: Vec<bool> = lengths
            .iter()
            .flat_map(|&len| (0..7).map(move |j| j < len))
            .collect();
        let valid = Array::from_slice(&valid, &[3, 1, 1, 7]);
        let diff = difference(&queries, &keys, &values, Mask::Valid(&valid));
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn one_token_over_all_its_keys_and_extreme_scores_stay_finite() {
        crate::device::use_test_device();
        let (keys, values) = (random(&[1, 2, 5, 8], 2.0), random(&[1, 2, 5, 8], 1.0));
        let diff = difference(&random(&[1, 6, 1, 8], 2.0), &keys, &values, Mask::All);
        assert!(diff < 1e-5, "{diff}");
        // Scores in the thousands: the max is subtracted before the exponential.
        let diff = difference(&random(&[1, 6, 1, 8], 400.0), &keys, &values, Mask::All);
        assert!(diff < 1e-5, "{diff}");
    }
}
