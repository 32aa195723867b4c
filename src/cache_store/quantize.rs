//! Affine quantization of stored KV in MLX's own layout, so a block written here is what
//! `mlx.core.quantize` would have produced from the same values (a test checks it against
//! MLX) and a Metal build could hand the tensors to `mlx.core.dequantize` unchanged.
//!
//! Values are split into groups of `group_size` consecutive elements along the last axis
//! (the head dimension). Each group keeps a scale `s` and a bias `b`, and each value
//! becomes an integer `q` in `0..2^bits` with `value ≈ s * q + b`. As in MLX, the range is
//! stretched so that the group's value farthest from zero is exactly representable, and
//! the `32 / bits` integers of consecutive values are packed into one little-endian `u32`,
//! the first value in the lowest bits.
//!
//! This runs on the store's writer and reader threads, in plain Rust: MLX arrays may not
//! leave the engine thread, and the engine must not spend its steps encoding for disk.

/// The group sizes MLX supports, preferred first: 64 (MLX's default) when the head
/// dimension allows it, else 32.
pub const GROUP_SIZES: [usize; 2] = [64, 32];

/// A quantized tensor: `packed` holds `len * bits / 32` words, `scales` and `biases` one
/// value per group.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub packed: Vec<u32>,
    pub scales: Vec<f32>,
    pub biases: Vec<f32>,
}

/// The group size for rows of `head_dim` values, or `None` when none of MLX's fits.
pub fn group_size_for(head_dim: usize) -> Option<usize> {
    GROUP_SIZES
        .into_iter()
        .find(|g| head_dim.is_multiple_of(*g))
}

/// Quantizes `values` (a multiple of `group_size` long) to `bits` (4 or 8) per value.
pub fn quantize(values: &[f32], group_size: usize, bits: u32) -> Quantized {
    debug_assert!(bits == 4 || bits == 8, "only 4 and 8 bits are stored");
    debug_assert!(group_size > 0 && values.len().is_multiple_of(group_size));
    let levels = ((1u32 << bits) - 1) as f32;
    let per_word = (32 / bits) as usize;
    let groups = values.len() / group_size;
    let mut out = Quantized {
        packed: Vec::with_capacity(values.len() / per_word),
        scales: Vec::with_capacity(groups),
        biases: Vec::with_capacity(groups),
    };
    for group in values.chunks_exact(group_size) {
        let (low, high) = group
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        // Anchor the grid at the extreme farthest from zero, so it is exact; the scale's
        // sign makes that extreme land on level 0 or on the top level.
        let low_is_farther = low.abs() > high.abs();
        let step = ((high - low) / levels).max(1e-7);
        let mut scale = if low_is_farther { step } else { -step };
        let edge = if low_is_farther { low } else { high };
        let edge_level = (edge / scale).round_ties_even();
        let mut bias = 0.0;
        if edge_level != 0.0 {
            scale = edge / edge_level;
            bias = edge;
        }
        for word in group.chunks_exact(per_word) {
            let packed = word.iter().enumerate().fold(0u32, |acc, (k, &v)| {
                let level = ((v - bias) / scale).round_ties_even().clamp(0.0, levels);
                acc | (level as u32) << (k as u32 * bits)
            });
            out.packed.push(packed);
        }
        out.scales.push(scale);
        out.biases.push(bias);
    }
    out
}

/// The values `q` stands for (`scale * level + bias`), `group_size` per scale.
pub fn dequantize(q: &Quantized, group_size: usize, bits: u32) -> Vec<f32> {
    let per_word = (32 / bits) as usize;
    let words_per_group = group_size / per_word;
    let mask = (1u32 << bits) - 1;
    let mut values = Vec::with_capacity(q.packed.len() * per_word);
    for ((words, &scale), &bias) in q
        .packed
        .chunks_exact(words_per_group)
        .zip(&q.scales)
        .zip(&q.biases)
    {
        for &word in words {
            for k in 0..per_word as u32 {
                let level = (word >> (k * bits)) & mask;
                values.push(scale * level as f32 + bias);
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values with a spread of magnitudes and signs, like KV rows.
    fn sample(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let unit = state as f32 / u32::MAX as f32 - 0.5;
                unit * if i % 7 == 0 { 12.0 } else { 2.5 }
            })
            .collect()
    }

    /// Anchoring the grid at the far extreme can shrink the step a little, so values at
    /// the other end may be clipped: every value is still within one step of the group's
    /// range divided by its levels, and most within half of one.
    #[test]
    fn every_value_comes_back_within_one_step() {
        for bits in [4, 8] {
            for group_size in GROUP_SIZES {
                let values = sample(4 * group_size, bits + group_size as u32);
                let q = quantize(&values, group_size, bits);
                assert_eq!(q.packed.len(), values.len() * bits as usize / 32);
                assert_eq!(q.scales.len(), 4);
                let back = dequantize(&q, group_size, bits);
                let mut within_half = 0;
                for (i, (v, b)) in values.iter().zip(&back).enumerate() {
                    let group = &values[i / group_size * group_size..][..group_size];
                    let (lo, hi) = group
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                    let step = (hi - lo) / ((1 << bits) - 1) as f32;
                    assert!((v - b).abs() <= step + 1e-5, "{bits} bits, {i}: {v} {b}");
                    within_half += usize::from((v - b).abs() <= step * 0.5 + 1e-5);
                }
                assert!(
                    within_half * 10 >= values.len() * 9,
                    "{bits}: {within_half}"
                );
            }
        }
    }

    #[test]
    fn the_extreme_farthest_from_zero_is_exact() {
        let mut values = sample(64, 3);
        values[10] = -20.0;
        let back = dequantize(&quantize(&values, 64, 4), 64, 4);
        assert_eq!(back[10], -20.0);
        let mut values = sample(64, 4);
        values[20] = 30.0;
        let back = dequantize(&quantize(&values, 64, 8), 64, 8);
        assert_eq!(back[20], 30.0);
    }

    #[test]
    fn constant_groups_and_zeros_survive() {
        for bits in [4, 8] {
            for value in [0.0, 1.5, -3.25] {
                let values = vec![value; 64];
                let back = dequantize(&quantize(&values, 64, bits), 64, bits);
                assert!(
                    back.iter().all(|b| (b - value).abs() < 1e-6),
                    "{value}: {back:?}"
                );
            }
        }
    }

    #[test]
    fn group_sizes_follow_the_head_dimension() {
        assert_eq!(group_size_for(64), Some(64));
        assert_eq!(group_size_for(128), Some(64));
        assert_eq!(group_size_for(96), Some(32));
        assert_eq!(group_size_for(80), None);
    }

    /// The same bits as MLX's own `quantize` on the CPU, and its `dequantize` gives the
    /// same values back from our tensors.
    #[test]
    fn the_layout_is_mlx_s_own() {
        crate::device::use_test_device();
        use mlx_rs::Array;
        for bits in [4u32, 8] {
            for group_size in GROUP_SIZES {
                let (rows, head_dim) = (6usize, 128usize);
                let values = sample(rows * head_dim, 11 * bits);
                let ours = quantize(&values, group_size, bits);
                let input = Array::from_slice(&values, &[rows as i32, head_dim as i32]);
                let (packed, scales, biases) =
                    mlx_rs::ops::quantize(&input, group_size as i32, bits as i32).unwrap();
                assert_eq!(
                    packed.as_slice::<u32>(),
                    ours.packed.as_slice(),
                    "{bits}/{group_size}"
                );
                assert_eq!(scales.as_slice::<f32>(), ours.scales.as_slice());
                assert_eq!(biases.as_slice::<f32>(), ours.biases.as_slice());
                let words = (head_dim * bits as usize / 32) as i32;
                let groups = (head_dim / group_size) as i32;
                let biases = Array::from_slice(&ours.biases, &[rows as i32, groups]);
                let theirs = mlx_rs::ops::dequantize(
                    Array::from_slice(&ours.packed, &[rows as i32, words]),
                    Array::from_slice(&ours.scales, &[rows as i32, groups]),
                    &biases,
                    group_size as i32,
                    bits as i32,
                )
                .unwrap();
                let back = dequantize(&ours, group_size, bits);
                for (a, b) in theirs.as_slice::<f32>().iter().zip(&back) {
                    assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} {b}");
                }
            }
        }
    }
}
