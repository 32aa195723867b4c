//! MLX really computes: core kernels through mlx-rs checked against plain Rust loops.
//!
//! Inputs come from a fixed-seed generator, so every run checks the same numbers.

mod common;

use mlx_rs::fast::{ScaledDotProductAttentionMask, rms_norm, scaled_dot_product_attention};
use mlx_rs::ops::{dequantize, matmul, quantize, quantized_matmul};
use mlx_rs::{Array, Dtype};

/// Deterministic values in [-1, 1) (64-bit LCG, top bits).
fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn to_vec(array: &Array) -> Vec<f32> {
    array.eval().expect("eval");
    assert_eq!(array.dtype(), Dtype::Float32);
    array.as_slice::<f32>().to_vec()
}

fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tolerance * scale,
            "{what}: element {i} is {g}, expected {w}"
        );
    }
}

/// Row-major (m×k)·(k×n).
fn reference_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    out
}

#[test]
fn matmul_matches_plain_loops() {
    common::use_test_device();
    // Odd sizes on purpose: no kernel gets to assume aligned tiles.
    let (m, k, n) = (37, 53, 29);
    let a = values(1, m * k);
    let b = values(2, k * n);
    let product = matmul(
        Array::from_slice(&a, &[m as i32, k as i32]),
        Array::from_slice(&b, &[k as i32, n as i32]),
    )
    .expect("matmul");
    assert_eq!(product.shape(), &[m as i32, n as i32]);
    assert_close(
        &to_vec(&product),
        &reference_matmul(&a, &b, m, k, n),
        1e-5,
        "matmul",
    );
}

#[test]
fn large_matmul_through_blas_matches_plain_loops() {
    common::use_test_device();
    // Big enough that MLX hands it to BLAS (OpenBLAS on Linux); spot-check rows.
    let n = 256;
    let a = values(3, n * n);
    let b = values(4, n * n);
    let product = to_vec(
        &matmul(
            Array::from_slice(&a, &[n as i32, n as i32]),
            Array::from_slice(&b, &[n as i32, n as i32]),
        )
        .expect("matmul"),
    );
    for row in [0, 1, 127, 255] {
        let want = reference_matmul(&a[row * n..(row + 1) * n], &b, 1, n, n);
        assert_close(&product[row * n..(row + 1) * n], &want, 1e-4, "matmul row");
    }
}

#[test]
fn causal_gqa_attention_matches_plain_softmax() {
    common::use_test_device();
    // 4 query heads share 2 KV heads (grouped-query attention), causal over 6 positions.
    let (heads, kv_heads, len, dim) = (4usize, 2usize, 6usize, 16usize);
    let q = values(5, heads * len * dim);
    let k = values(6, kv_heads * len * dim);
    let v = values(7, kv_heads * len * dim);
    let scale = 1.0 / (dim as f32).sqrt();

    let out = scaled_dot_product_attention(
        Array::from_slice(&q, &[1, heads as i32, len as i32, dim as i32]),
        Array::from_slice(&k, &[1, kv_heads as i32, len as i32, dim as i32]),
        Array::from_slice(&v, &[1, kv_heads as i32, len as i32, dim as i32]),
        scale,
        ScaledDotProductAttentionMask::Causal,
        None,
    )
    .expect("attention");
    assert_eq!(out.shape(), &[1, heads as i32, len as i32, dim as i32]);

    let mut want = vec![0f32; heads * len * dim];
    for h in 0..heads {
        let kv = h / (heads / kv_heads);
        for i in 0..len {
            let qi = &q[(h * len + i) * dim..][..dim];
            // Position i sees keys 0..=i.
            let scores: Vec<f32> = (0..=i)
                .map(|j| {
                    let kj = &k[(kv * len + j) * dim..][..dim];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f32 = exps.iter().sum();
            for (j, e) in exps.iter().enumerate() {
                let vj = &v[(kv * len + j) * dim..][..dim];
                for d in 0..dim {
                    want[(h * len + i) * dim + d] += e / total * vj[d];
                }
            }
        }
    }
    assert_close(&to_vec(&out), &want, 1e-5, "attention");
}

#[test]
fn rms_norm_matches_definition() {
    common::use_test_device();
    let (rows, dim) = (3, 24);
    let x = values(8, rows * dim);
    let weight = values(9, dim);
    let eps = 1e-5;
    let out = rms_norm(
        Array::from_slice(&x, &[rows as i32, dim as i32]),
        Some(&Array::from_slice(&weight, &[dim as i32])),
        eps,
    )
    .expect("rms_norm");
    let mut want = Vec::with_capacity(rows * dim);
    for row in x.chunks(dim) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (mean_square + eps).sqrt();
        want.extend(row.iter().zip(&weight).map(|(v, w)| v * inv * w));
    }
    assert_close(&to_vec(&out), &want, 1e-5, "rms_norm");
}

#[test]
fn quantized_matmul_matches_unpacked_weights() {
    common::use_test_device();
    let (out_features, in_features, batch) = (48usize, 128usize, 3usize);
    let (group, bits) = (64usize, 4usize);
    let w = values(10, out_features * in_features);
    let x = values(11, batch * in_features);

    let (packed, scales, biases) = quantize(
        Array::from_slice(&w, &[out_features as i32, in_features as i32]),
        group as i32,
        bits as i32,
    )
    .expect("quantize");
    packed.eval().expect("eval packed");
    assert_eq!(packed.dtype(), Dtype::Uint32);
    let words = packed.as_slice::<u32>().to_vec();
    let scales_v = to_vec(&scales);
    let biases_v = to_vec(&biases);

    // Unpack by hand: each u32 holds 32/bits values, lowest bits first; one scale and bias
    // per group of `group` inputs in a row.
    let per_word = 32 / bits;
    let words_per_row = in_features / per_word;
    let groups_per_row = in_features / group;
    let mut unpacked = vec![0f32; out_features * in_features];
    for r in 0..out_features {
        for c in 0..in_features {
            let word = words[r * words_per_row + c / per_word];
            let q = (word >> ((c % per_word) * bits)) & ((1 << bits) - 1);
            let g = r * groups_per_row + c / group;
            unpacked[r * in_features + c] = scales_v[g] * q as f32 + biases_v[g];
        }
    }
    // Our unpacking agrees with MLX's own, and the quantization is sane: every weight
    // within one quantization step of the original (MLX nudges the scale so that zero is
    // exactly representable, so the error can exceed half a step).
    let mlx_unpacked =
        dequantize(&packed, &scales, &biases, group as i32, bits as i32).expect("dequantize");
    assert_close(&to_vec(&mlx_unpacked), &unpacked, 1e-6, "dequantize");
    for (i, (u, o)) in unpacked.iter().zip(&w).enumerate() {
        let step = scales_v[(i / in_features) * groups_per_row + (i % in_features) / group];
        assert!((u - o).abs() <= step.abs() + 1e-6, "weight {i}: {u} vs {o}");
    }

    let got = quantized_matmul(
        Array::from_slice(&x, &[batch as i32, in_features as i32]),
        &packed,
        &scales,
        &biases,
        true,
        group as i32,
        bits as i32,
    )
    .expect("quantized_matmul");
    assert_eq!(got.shape(), &[batch as i32, out_features as i32]);

    // x · unpackedᵀ
    let mut want = vec![0f32; batch * out_features];
    for b in 0..batch {
        for r in 0..out_features {
            want[b * out_features + r] = (0..in_features)
                .map(|c| x[b * in_features + c] * unpacked[r * in_features + c])
                .sum();
        }
    }
    assert_close(&to_vec(&got), &want, 1e-4, "quantized_matmul");
}
