//! The weight formula of the tiny test models (`scripts/reference/tiny_models.py` documents
//! it): integer hashing and IEEE basic operations only, so Rust and Python agree bit for bit.
//! Shared by `tests/tiny_models.rs` and `tests/gguf_types.rs` (included with `#[path]`).

#![allow(dead_code)] // each test binary uses its own subset

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

pub fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |h, byte| {
        (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// `count` 64-bit hashes derived from `name` (SplitMix64 over the name's FNV-1a seed).
pub fn hashes(name: &str, count: usize) -> impl Iterator<Item = u64> {
    let seed = fnv1a64(name);
    (0..count as u64).map(move |i| {
        let mut z = seed.wrapping_add((i + 1).wrapping_mul(GOLDEN));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Float64 values in [-1, 1), exactly.
pub fn unit(name: &str, count: usize) -> Vec<f64> {
    hashes(name, count)
        .map(|h| (h >> 11) as f64 * (2.0 / 9_007_199_254_740_992.0) - 1.0)
        .collect()
}
