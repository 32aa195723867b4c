//! Every GGUF tensor type the loader claims — F32, F16, Q4_0, Q4_1, Q8_0 — loads to exactly
//! the weights it encodes. The default model only has Q4_1, Q8_0 and F32, so this test writes
//! its own GGUF files (a minimal GGUF v3 writer and block encoders written from the format
//! specification, no network, no Python):
//!
//! 1. **Round trip.** One tensor of each type, read back through MLX's GGUF reader and
//!    dequantized the way the loader does (scales and biases cast to f32), equals this file's
//!    own decoding of the bytes bit for bit. That pins down the block layouts everything else
//!    relies on (Q4 nibble order, Q8 signedness, where scales and minimums sit).
//! 2. **A tiny llama written twice.** The formula weights of `tests/common/tiny.rs` (hidden
//!    64, 2 layers, 4 heads / 2 KV heads, vocabulary 128) go into a GGUF with a mix of all
//!    five types and llama.cpp's q/k row permutation, and into a dense f32 Hugging Face
//!    folder holding exactly the decoded values in Hugging Face layout. The GGUF's tensor map
//!    equals the folder's tensors bit for bit and reports the right bit width per tensor;
//!    both sources load to the same config, bit-identical first-step logits and identical
//!    greedy tokens. A folder with q/k rows left in GGUF order decodes differently, so the
//!    permutation really is exercised.
//! 3. **Wrong shapes.** An `attn_q` with the wrong row count is a `TensorShape` error naming
//!    the tensor, never a panic.

mod common;
#[path = "common/tiny.rs"]
mod tiny;

use std::path::Path;

use common::ScratchDir;
use mlx_rs::io::GgufFile;
use mlx_rs::ops::dequantize;
use mlx_rs::{Array, Dtype};
use mlx_serve::model::ModelError;
use mlx_serve::model::batch::SequenceChunk;
use mlx_serve::model::gguf;
use mlx_serve::model::greedy::{self, GreedyOptions, GreedyRequest};
use mlx_serve::model::hub::HubOptions;
use mlx_serve::model::kv_cache::{KvCacheConfig, PagedKvCache};
use mlx_serve::model::llama::LlamaModel;
use mlx_serve::model::loader::{self, LoadOptions, LoadedModel, ModelSource};
use mlx_serve::model::weights::{TensorMap, WeightMode};
use serde_json::json;

// ------------------------------------------------------------------------------ half floats
// Exact decoding (every f16 is an f32), and an encoder used only to pick block scales: what
// the tests compare is always the decoding of the bytes actually written.

fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits & 0x8000) << 16;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    match exponent {
        // Subnormal: mantissa · 2^-24 (exact in f32).
        0 => {
            let magnitude = mantissa as f32 * f32::from_bits((127 - 24) << 23);
            f32::from_bits(sign | magnitude.to_bits())
        }
        31 if mantissa == 0 => f32::from_bits(sign | 0x7f80_0000),
        31 => f32::NAN,
        _ => f32::from_bits(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13)),
    }
}

/// Round to nearest, ties to even (finite values below 65504 only).
fn f32_to_f16(value: f32) -> u16 {
    assert!(
        value.is_finite() && value.abs() < 65504.0,
        "{value} out of f16 range"
    );
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let magnitude = value.abs();
    if magnitude < f32::from_bits((127 - 14) << 23) {
        // Subnormal or zero: a count of 2^-24 units (1024 of them carry into the smallest
        // normal, whose encoding is the same number).
        let units = (magnitude * f32::from_bits((127 + 24) << 23)).round_ties_even() as u16;
        return sign | units;
    }
    let exponent = ((bits >> 23) & 0xff) - 127 + 15;
    let mantissa = bits & 0x7f_ffff;
    let mut half = (exponent << 10) | (mantissa >> 13);
    let rest = mantissa & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && half & 1 == 1) {
        half += 1; // a mantissa carry correctly bumps the exponent
    }
    sign | half as u16
}

// ------------------------------------------------------------------------------ ggml types

/// The GGUF tensor types MLX reads (ggml's names and type ids).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
}

use GgmlType::{F16, F32, Q4_0, Q4_1, Q8_0};

/// Weights per block of the quantized types.
const BLOCK: usize = 32;

impl GgmlType {
    const ALL: [GgmlType; 5] = [F32, F16, Q4_0, Q4_1, Q8_0];

    fn id(self) -> u32 {
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q8_0 => 8,
        }
    }

    /// Bytes holding `elements` values.
    fn size(self, elements: usize) -> usize {
        let (per_block, block_bytes) = match self {
            F32 => (1, 4),
            F16 => (1, 2),
            // f16 d + 32 nibbles
            Q4_0 => (BLOCK, 2 + 16),
            // f16 d + f16 m + 32 nibbles
            Q4_1 => (BLOCK, 2 + 2 + 16),
            // f16 d + 32 i8
            Q8_0 => (BLOCK, 2 + 32),
        };
        assert_eq!(elements % per_block, 0, "{self:?}: {elements} values");
        elements / per_block * block_bytes
    }

    /// The bit width MLX's reader gives the type (`None`: read as a float array).
    fn mlx_bits(self) -> Option<i32> {
        match self {
            F32 | F16 => None,
            Q4_0 | Q4_1 => Some(4),
            Q8_0 => Some(8),
        }
    }
}

/// `round(value / scale)` clamped to `lo..=hi` (0 when the scale is 0).
fn level(value: f32, scale: f32, lo: i32, hi: i32) -> i32 {
    if scale == 0.0 {
        return 0.clamp(lo, hi);
    }
    ((value / scale).round() as i32).clamp(lo, hi)
}

/// Q4 packing: weight `j < 16` in the low nibble of byte `j`, weight `j + 16` in its high
/// nibble.
fn pack_nibbles(levels: &[u8]) -> impl Iterator<Item = u8> + '_ {
    (0..16).map(|j| levels[j] | (levels[j + 16] << 4))
}

fn nibble(quants: &[u8], j: usize) -> u8 {
    if j < 16 {
        quants[j] & 0x0f
    } else {
        quants[j - 16] >> 4
    }
}

/// Our own quantizer (row-major values; rows are whole blocks, so blocks never span rows).
fn encode(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ty.size(values.len()));
    match ty {
        F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
        F16 => values
            .iter()
            .for_each(|&v| out.extend(f32_to_f16(v).to_le_bytes())),
        Q8_0 => {
            for block in values.chunks_exact(BLOCK) {
                let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = f32_to_f16(max / 127.0);
                let scale = f16_to_f32(d);
                out.extend(d.to_le_bytes());
                out.extend(
                    block
                        .iter()
                        .map(|&v| level(v, scale, -128, 127) as i8 as u8),
                );
            }
        }
        Q4_0 => {
            for block in values.chunks_exact(BLOCK) {
                // The value of largest magnitude becomes level 0 (d · -8), sign included.
                let extreme = block
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = f32_to_f16(extreme / -8.0);
                let scale = f16_to_f32(d);
                let levels: Vec<u8> = block
                    .iter()
                    .map(|&v| (level(v, scale, -8, 7) + 8) as u8)
                    .collect();
                out.extend(d.to_le_bytes());
                out.extend(pack_nibbles(&levels));
            }
        }
        Q4_1 => {
            for block in values.chunks_exact(BLOCK) {
                let min = block.iter().copied().fold(f32::INFINITY, f32::min);
                let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (d, m) = (f32_to_f16((max - min) / 15.0), f32_to_f16(min));
                let (scale, offset) = (f16_to_f32(d), f16_to_f32(m));
                let levels: Vec<u8> = block
                    .iter()
                    .map(|&v| level(v - offset, scale, 0, 15) as u8)
                    .collect();
                out.extend(d.to_le_bytes());
                out.extend(m.to_le_bytes());
                out.extend(pack_nibbles(&levels));
            }
        }
    }
    out
}

/// Our own dequantization to f32, by the block definitions:
/// Q8_0 `d · q` (q signed), Q4_0 `d · (q - 8)`, Q4_1 `d · q + m`.
///
/// Every product and sum here is exact in f32 (an 11-bit f16 mantissa times a level of at
/// most 8 bits), except Q4_1's final `+ m`, which rounds once, as MLX's `scale · q + bias`
/// does. The `+ 0.0` gives a zero the sign MLX's affine form produces (`d · 8 + (-8 · d)` is
/// +0.0 under any `d`, where `d · 0` with a negative `d` would be -0.0).
fn decode(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let half = |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    match ty {
        F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        F16 => bytes.chunks_exact(2).map(half).collect(),
        Q8_0 => bytes
            .chunks_exact(ty.size(BLOCK))
            .flat_map(|block| {
                let d = half(&block[..2]);
                block[2..]
                    .iter()
                    .map(move |&q| d * f32::from(q as i8) + 0.0)
            })
            .collect(),
        Q4_0 => bytes
            .chunks_exact(ty.size(BLOCK))
            .flat_map(|block| {
                let d = half(&block[..2]);
                (0..BLOCK).map(move |j| d * (f32::from(nibble(&block[2..], j)) - 8.0) + 0.0)
            })
            .collect(),
        Q4_1 => bytes
            .chunks_exact(ty.size(BLOCK))
            .flat_map(|block| {
                let (d, m) = (half(&block[..2]), half(&block[2..4]));
                (0..BLOCK).map(move |j| d * f32::from(nibble(&block[4..], j)) + m)
            })
            .collect(),
    }
}

// ------------------------------------------------------------------------------ GGUF writer
// GGUF v3: magic, version, tensor count, metadata count, metadata (key, type, value), tensor
// infos (name, dimension count, dimensions innermost first, type, offset into the data),
// padding to `general.alignment` (32 by default), then each tensor's data, aligned.

const GGUF_U32: u32 = 4;
const GGUF_I32: u32 = 5;
const GGUF_F32: u32 = 6;
const GGUF_BOOL: u32 = 7;
const GGUF_STRING: u32 = 8;
const GGUF_ARRAY: u32 = 9;

enum Meta {
    Str(String),
    U32(u32),
    F32(f32),
    Bool(bool),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

struct GgufTensor {
    name: String,
    /// Outermost first, as MLX and Hugging Face write shapes.
    shape: Vec<usize>,
    ty: GgmlType,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct GgufWriter {
    metadata: Vec<(String, Meta)>,
    tensors: Vec<GgufTensor>,
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend(value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend(value.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_u64(out, text.len() as u64);
    out.extend(text.as_bytes());
}

fn pad_to(out: &mut Vec<u8>, alignment: usize) {
    out.resize(out.len().next_multiple_of(alignment), 0);
}

impl GgufWriter {
    fn meta(&mut self, key: &str, value: Meta) {
        self.metadata.push((key.to_owned(), value));
    }

    fn tensor(&mut self, name: &str, shape: &[usize], ty: GgmlType, bytes: Vec<u8>) {
        let elements = shape.iter().product();
        assert_eq!(bytes.len(), ty.size(elements), "{name}: data size");
        self.tensors.push(GgufTensor {
            name: name.to_owned(),
            shape: shape.to_vec(),
            ty,
            bytes,
        });
    }

    fn alignment(&self) -> usize {
        self.metadata
            .iter()
            .find_map(|(key, value)| match value {
                Meta::U32(n) if key == "general.alignment" => Some(*n as usize),
                _ => None,
            })
            .unwrap_or(32)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        put_u32(&mut out, 3);
        put_u64(&mut out, self.tensors.len() as u64);
        put_u64(&mut out, self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            match value {
                Meta::Str(text) => {
                    put_u32(&mut out, GGUF_STRING);
                    put_str(&mut out, text);
                }
                Meta::U32(n) => {
                    put_u32(&mut out, GGUF_U32);
                    put_u32(&mut out, *n);
                }
                Meta::F32(x) => {
                    put_u32(&mut out, GGUF_F32);
                    out.extend(x.to_le_bytes());
                }
                Meta::Bool(b) => {
                    put_u32(&mut out, GGUF_BOOL);
                    out.push(u8::from(*b));
                }
                Meta::Strs(items) => {
                    put_u32(&mut out, GGUF_ARRAY);
                    put_u32(&mut out, GGUF_STRING);
                    put_u64(&mut out, items.len() as u64);
                    items.iter().for_each(|item| put_str(&mut out, item));
                }
                Meta::I32s(items) => {
                    put_u32(&mut out, GGUF_ARRAY);
                    put_u32(&mut out, GGUF_I32);
                    put_u64(&mut out, items.len() as u64);
                    items.iter().for_each(|n| out.extend(n.to_le_bytes()));
                }
            }
        }
        let alignment = self.alignment();
        let mut offset = 0usize;
        for tensor in &self.tensors {
            put_str(&mut out, &tensor.name);
            put_u32(&mut out, tensor.shape.len() as u32);
            for &dim in tensor.shape.iter().rev() {
                put_u64(&mut out, dim as u64);
            }
            put_u32(&mut out, tensor.ty.id());
            put_u64(&mut out, offset as u64);
            offset = (offset + tensor.bytes.len()).next_multiple_of(alignment);
        }
        pad_to(&mut out, alignment);
        for tensor in &self.tensors {
            out.extend(&tensor.bytes);
            pad_to(&mut out, alignment);
        }
        out
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.to_bytes()).expect("write GGUF");
    }
}

// ------------------------------------------------------------------------------ helpers

fn to_f32_vec(array: &Array) -> Vec<f32> {
    let array = array.as_dtype(Dtype::Float32).expect("as f32");
    array.eval().expect("eval");
    array.as_slice::<f32>().to_vec()
}

/// Indices of the elements whose bits differ (at most a few, for messages).
fn bit_differences(got: &[f32], want: &[f32]) -> Vec<(usize, f32, f32)> {
    assert_eq!(got.len(), want.len(), "element count");
    got.iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
        .map(|(i, (&g, &w))| (i, g, w))
        .take(4)
        .collect()
}

/// A GGUF tensor as the loader sees it, dequantized to f32 exactly as `weights.rs` does
/// (scales and biases cast to f32 first).
fn dequantized(
    arrays: &std::collections::HashMap<String, Array>,
    weight: &str,
    bits: Option<i32>,
) -> Array {
    let tensor = &arrays[weight];
    let Some(bits) = bits else {
        return tensor.as_dtype(Dtype::Float32).expect("as f32");
    };
    let prefix = weight.strip_suffix(".weight").expect(".weight");
    let part = |suffix: &str| {
        arrays[&format!("{prefix}.{suffix}")]
            .as_dtype(Dtype::Float32)
            .expect("as f32")
    };
    dequantize(tensor, part("scales"), &part("biases"), BLOCK as i32, bits).expect("dequantize")
}

// ------------------------------------------------------------------------------ round trip

#[test]
fn every_type_round_trips_through_mlx() {
    common::use_test_device();
    let scratch = ScratchDir::new("gguf-types-roundtrip");
    let (rows, cols) = (6, 96);
    let mut writer = GgufWriter::default();
    writer.meta("general.architecture", Meta::Str("test".into()));
    let mut expected = Vec::new();
    for ty in GgmlType::ALL {
        // Formula values (spread over several magnitudes so blocks get varied scales) ...
        let name = format!("encoded_{ty:?}.weight");
        let values: Vec<f32> = tiny::unit(&format!("gguf_types/roundtrip/{ty:?}"), rows * cols)
            .iter()
            .enumerate()
            .map(|(i, v)| (v * 0.1 * (1 + i / BLOCK % 5) as f64) as f32)
            .collect();
        let bytes = encode(ty, &values);
        expected.push((name.clone(), ty, decode(ty, &bytes)));
        writer.tensor(&name, &[rows, cols], ty, bytes);

        // ... and raw bytes: every nibble/byte value, scales of both signs (finite f16 with
        // exponents kept small so MLX's f16 bias `-8 · d` / `-128 · d` cannot overflow).
        if ty.mlx_bits().is_some() {
            let name = format!("raw_{ty:?}.weight");
            let mut bytes: Vec<u8> = tiny::hashes(&name, ty.size(rows * cols))
                .map(|h| (h >> 56) as u8)
                .collect();
            let block_bytes = ty.size(BLOCK);
            let halves = if ty == Q4_1 { 2 } else { 1 };
            for (b, block) in bytes.chunks_exact_mut(block_bytes).enumerate() {
                for k in 0..halves {
                    let h = tiny::hashes(&format!("{name}/{b}/{k}"), 1)
                        .next()
                        .unwrap_or(0);
                    let exponent = 8 + (h % 10) as u16; // 2^-7 .. 2^2
                    let bits =
                        ((h >> 8) as u16 & 0x8000) | (exponent << 10) | ((h >> 20) as u16 & 0x3ff);
                    block[2 * k..2 * k + 2].copy_from_slice(&bits.to_le_bytes());
                }
            }
            expected.push((name.clone(), ty, decode(ty, &bytes)));
            writer.tensor(&name, &[rows, cols], ty, bytes);
        }
        // ... and raw half floats: subnormals, signed zeros, every finite exponent.
        if ty == F16 {
            let name = "raw_F16.weight".to_owned();
            let bytes: Vec<u8> = tiny::hashes(&name, rows * cols)
                .enumerate()
                .map(|(i, h)| match i % 8 {
                    0 => (h as u16) & 0x83ff,                              // subnormal or zero
                    _ if (h >> 10) & 0x1f == 0x1f => (h as u16) & !0x4000, // no inf/NaN
                    _ => h as u16,
                })
                .flat_map(u16::to_le_bytes)
                .collect();
            expected.push((name.clone(), ty, decode(ty, &bytes)));
            writer.tensor(&name, &[rows, cols], ty, bytes);
        }
    }
    let path = scratch.0.join("types.gguf");
    writer.write(&path);

    let file = GgufFile::load(&path).expect("MLX reads our GGUF");
    let arrays = file.arrays().expect("arrays");
    for (name, ty, want) in &expected {
        let tensor = &arrays[name];
        match ty.mlx_bits() {
            None => {
                let dtype = if *ty == F32 {
                    Dtype::Float32
                } else {
                    Dtype::Float16
                };
                assert_eq!(tensor.dtype(), dtype, "{name}");
                assert_eq!(tensor.shape(), [rows as i32, cols as i32], "{name}");
            }
            Some(bits) => {
                let prefix = name.trim_end_matches(".weight");
                let packed = [rows as i32, cols as i32 * bits / 32];
                let groups = [rows as i32, (cols / BLOCK) as i32];
                assert_eq!(tensor.shape(), packed, "{name}: packed shape");
                assert_eq!(tensor.dtype(), Dtype::Uint32, "{name}");
                for part in ["scales", "biases"] {
                    let array = &arrays[&format!("{prefix}.{part}")];
                    assert_eq!(array.shape(), groups, "{prefix}.{part}");
                    assert_eq!(array.dtype(), Dtype::Float16, "{prefix}.{part}");
                }
            }
        }
        let got = to_f32_vec(&dequantized(&arrays, name, ty.mlx_bits()));
        let differences = bit_differences(&got, want);
        assert!(
            differences.is_empty(),
            "{name} ({ty:?}): MLX's reading differs from the block definition at \
             (index, MLX, ours) {differences:?}"
        );
    }
}

// ------------------------------------------------------------------------------ tiny llama

const HIDDEN: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const VOCAB: usize = 128;
const INTERMEDIATE: usize = 128;
const CONTEXT: usize = 256;
const RMS_EPS: f32 = 1e-5;
const ROPE_THETA: f32 = 10_000.0;
const STEPS: usize = 16;
const KV_BLOCK: usize = 16;

/// Per layer, the types of q, k, v, o, gate, up, down. The q/k permutation is exercised
/// on Q4_0, Q4_1 and Q8_0 rows; every type appears in a projection.
const LAYER_TYPES: [[GgmlType; 7]; LAYERS] = [
    [Q4_0, Q4_0, Q4_0, Q4_0, F16, F16, F16],
    [Q4_1, Q8_0, F16, F32, Q4_1, Q4_1, Q4_1],
];
const EMBEDDING_TYPE: GgmlType = Q8_0;
const OUTPUT_TYPE: GgmlType = F16;

#[derive(Clone, Copy)]
enum Kind {
    Embedding,
    Head,
    Linear,
    Norm,
}

/// One weight of the tiny model, in both layouts.
struct Weight {
    gguf: String,
    hf: String,
    ty: GgmlType,
    shape: Vec<usize>,
    /// Heads whose rows llama.cpp permutes (q: heads, k: KV heads).
    rope_heads: Option<usize>,
    /// Our decoding of the quantized bytes, Hugging Face row order.
    values: Vec<f32>,
    /// The encoded bytes, Hugging Face row order.
    bytes: Vec<u8>,
}

/// HF -> GGUF row order for RoPE'd projections: within each head, the rows viewed as
/// `(2, head_dim / 2)` are transposed to `(head_dim / 2, 2)`, i.e. GGUF row `2j + i` is
/// Hugging Face row `i · head_dim / 2 + j`. `row_len` is one row's length in `T`s.
fn permute_rows<T: Copy>(data: &[T], row_len: usize, heads: usize) -> Vec<T> {
    let rows = data.len() / row_len;
    assert_eq!(rows % (2 * heads), 0, "{rows} rows over {heads} heads");
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for head in 0..heads {
        for j in 0..half {
            for i in 0..2 {
                let row = head * head_dim + i * half + j;
                out.extend_from_slice(&data[row * row_len..(row + 1) * row_len]);
            }
        }
    }
    out
}

impl Weight {
    fn new(
        gguf: String,
        hf: String,
        ty: GgmlType,
        shape: &[usize],
        kind: Kind,
        rope_heads: Option<usize>,
    ) -> Self {
        let count = shape.iter().product();
        let inputs = *shape.last().expect("shape");
        let values: Vec<f32> = tiny::unit(&format!("gguf_types/{hf}"), count)
            .into_iter()
            .map(|v| match kind {
                Kind::Embedding => 0.25 * v,
                Kind::Head => v,
                Kind::Linear => v * (3.0 / inputs as f64).sqrt(),
                Kind::Norm => 1.0 + 0.2 * v,
            } as f32)
            .collect();
        let bytes = encode(ty, &values);
        Weight {
            values: decode(ty, &bytes),
            bytes,
            gguf,
            hf,
            ty,
            shape: shape.to_vec(),
            rope_heads,
        }
    }

    /// The bytes as llama.cpp's converter lays them out.
    fn gguf_bytes(&self) -> Vec<u8> {
        match self.rope_heads {
            Some(heads) => permute_rows(&self.bytes, self.ty.size(self.shape[1]), heads),
            None => self.bytes.clone(),
        }
    }

    fn hf_prefix(&self) -> &str {
        self.hf.strip_suffix(".weight").expect(".weight")
    }
}

/// Every weight of the tiny llama (untied output); `wrong_q` gives one layer's `attn_q`
/// another row count (layer, rows).
fn tiny_llama(wrong_q: Option<(usize, usize)>) -> Vec<Weight> {
    let mut weights = vec![Weight::new(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        EMBEDDING_TYPE,
        &[VOCAB, HIDDEN],
        Kind::Embedding,
        None,
    )];
    for (layer, types) in LAYER_TYPES.iter().enumerate() {
        let (blk, hf) = (format!("blk.{layer}"), format!("model.layers.{layer}"));
        let q_rows = match wrong_q {
            Some((wrong_layer, rows)) if wrong_layer == layer => rows,
            _ => HEADS * HEAD_DIM,
        };
        for (gguf, name) in [
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
        ] {
            weights.push(Weight::new(
                format!("{blk}.{gguf}.weight"),
                format!("{hf}.{name}.weight"),
                F32,
                &[HIDDEN],
                Kind::Norm,
                None,
            ));
        }
        let projections = [
            ("attn_q", "self_attn.q_proj", q_rows, HIDDEN, Some(HEADS)),
            (
                "attn_k",
                "self_attn.k_proj",
                KV_HEADS * HEAD_DIM,
                HIDDEN,
                Some(KV_HEADS),
            ),
            (
                "attn_v",
                "self_attn.v_proj",
                KV_HEADS * HEAD_DIM,
                HIDDEN,
                None,
            ),
            (
                "attn_output",
                "self_attn.o_proj",
                HIDDEN,
                HEADS * HEAD_DIM,
                None,
            ),
            ("ffn_gate", "mlp.gate_proj", INTERMEDIATE, HIDDEN, None),
            ("ffn_up", "mlp.up_proj", INTERMEDIATE, HIDDEN, None),
            ("ffn_down", "mlp.down_proj", HIDDEN, INTERMEDIATE, None),
        ];
        for ((gguf, name, rows, cols, heads), &ty) in projections.into_iter().zip(types) {
            // A q with a wrong row count (negative test) is written unpermuted.
            let heads = heads.filter(|&h| rows % (2 * h) == 0);
            weights.push(Weight::new(
                format!("{blk}.{gguf}.weight"),
                format!("{hf}.{name}.weight"),
                ty,
                &[rows, cols],
                Kind::Linear,
                heads,
            ));
        }
    }
    weights.push(Weight::new(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        F32,
        &[HIDDEN],
        Kind::Norm,
        None,
    ));
    weights.push(Weight::new(
        "output.weight".into(),
        "lm_head.weight".into(),
        OUTPUT_TYPE,
        &[VOCAB, HIDDEN],
        Kind::Head,
        None,
    ));
    weights
}

/// A 128-token byte-level BPE vocabulary: 3 control tokens, GPT-2's characters for the
/// printable ASCII bytes, space (`Ġ`) and newline (`Ċ`), 12 merges, and bytes 0xA1.. to fill.
fn vocabulary() -> (Vec<String>, Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    tokens.extend((b'!'..=b'~').map(|b| char::from(b).to_string()));
    tokens.extend(["\u{120}".to_owned(), "\u{10a}".to_owned()]);
    let merges: Vec<String> = [
        "H e",
        "l l",
        "He ll",
        "Hell o",
        "\u{120} w",
        "o r",
        "\u{120}w or",
        "l d",
        "\u{120}wor ld",
        "t h",
        "\u{120} th",
        "\u{120}th e",
    ]
    .map(String::from)
    .to_vec();
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let mut byte = 0xA1u32;
    while tokens.len() < VOCAB {
        tokens.push(char::from_u32(byte).expect("latin-1").to_string());
        byte += 1;
    }
    let mut types = vec![1; VOCAB];
    types[..3].fill(3);
    (tokens, merges, types)
}

fn write_gguf(path: &Path, weights: &[Weight]) {
    let mut writer = GgufWriter::default();
    let u32_of = |n: usize| Meta::U32(n as u32);
    writer.meta("general.architecture", Meta::Str("llama".into()));
    writer.meta("general.name", Meta::Str("tiny gguf types".into()));
    writer.meta("general.alignment", u32_of(32));
    writer.meta("llama.context_length", u32_of(CONTEXT));
    writer.meta("llama.embedding_length", u32_of(HIDDEN));
    writer.meta("llama.block_count", u32_of(LAYERS));
    writer.meta("llama.feed_forward_length", u32_of(INTERMEDIATE));
    writer.meta("llama.attention.head_count", u32_of(HEADS));
    writer.meta("llama.attention.head_count_kv", u32_of(KV_HEADS));
    writer.meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(RMS_EPS));
    writer.meta("llama.rope.freq_base", Meta::F32(ROPE_THETA));
    let (tokens, merges, types) = vocabulary();
    writer.meta("tokenizer.ggml.model", Meta::Str("gpt2".into()));
    writer.meta("tokenizer.ggml.pre", Meta::Str("default".into()));
    writer.meta("tokenizer.ggml.tokens", Meta::Strs(tokens));
    writer.meta("tokenizer.ggml.merges", Meta::Strs(merges));
    writer.meta("tokenizer.ggml.token_type", Meta::I32s(types));
    writer.meta("tokenizer.ggml.bos_token_id", u32_of(1));
    writer.meta("tokenizer.ggml.eos_token_id", u32_of(2));
    writer.meta("tokenizer.ggml.add_bos_token", Meta::Bool(false));
    for weight in weights {
        writer.tensor(&weight.gguf, &weight.shape, weight.ty, weight.gguf_bytes());
    }
    writer.write(path);
}

/// The dense f32 Hugging Face folder holding exactly the decoded weights. With
/// `gguf_row_order`, q/k rows stay in llama.cpp's order (a deliberately wrong folder).
fn write_folder(dir: &Path, weights: &[Weight], gguf_file: &Path, gguf_row_order: bool) {
    let arrays: Vec<(&str, Array)> = weights
        .iter()
        .map(|w| {
            let shape: Vec<i32> = w.shape.iter().map(|&d| d as i32).collect();
            let values = match w.rope_heads {
                Some(heads) if gguf_row_order => permute_rows(&w.values, w.shape[1], heads),
                _ => w.values.clone(),
            };
            (w.hf.as_str(), Array::from_slice(&values, &shape))
        })
        .collect();
    Array::save_safetensors(arrays, None, dir.join("model.safetensors")).expect("save weights");
    let config = json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_THETA,
        "max_position_embeddings": CONTEXT,
        "tie_word_embeddings": false,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config.json");
    // The GGUF's tokenizer written as tokenizer.json, plus the special tokens' config.
    let file = GgufFile::load(gguf_file).expect("load GGUF");
    mlx_serve::model::Tokenizer::from_gguf(&file, gguf_file)
        .expect("GGUF tokenizer")
        .save_hf_tokenizer_json(&dir.join("tokenizer.json"))
        .expect("tokenizer.json");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "add_bos_token": false,
        })
        .to_string(),
    )
    .expect("tokenizer_config.json");
}

fn load(source: ModelSource) -> Result<LoadedModel, ModelError> {
    let options = LoadOptions {
        weights: WeightMode::F32,
        served_name: None,
        hub: HubOptions {
            offline: true,
            ..HubOptions::default()
        },
    };
    loader::load(&source, &options)
}

fn new_cache(model: &LlamaModel, tokens: usize) -> PagedKvCache {
    let config = KvCacheConfig {
        block_size: KV_BLOCK,
        num_blocks: tokens.div_ceil(KV_BLOCK) + 1,
    };
    PagedKvCache::new(config, model.config(), Dtype::Float32).expect("cache")
}

/// Logits after prefilling `prompt` whole.
fn first_logits(model: &LlamaModel, prompt: &[u32]) -> Vec<f32> {
    let mut cache = new_cache(model, prompt.len());
    let table: Vec<u32> = (0..prompt.len().div_ceil(KV_BLOCK) as u32).collect();
    let chunk = SequenceChunk {
        tokens: prompt,
        cached: 0,
        block_table: &table,
    };
    let logits = model.forward(&[chunk], &mut cache).expect("forward");
    logits.as_slice::<f32>().to_vec()
}

/// `STEPS` greedy tokens and their margins.
fn greedy_run(model: &LlamaModel, prompt: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let mut cache = new_cache(model, prompt.len() + STEPS);
    let request = GreedyRequest {
        prompt: prompt.to_vec(),
        max_tokens: STEPS,
        join_step: 0,
    };
    let output = greedy::generate(model, &mut cache, &[request], GreedyOptions::default())
        .expect("generate")
        .remove(0);
    (output.tokens, output.margins)
}

/// The loader's tensor map of the GGUF equals the folder's values bit for bit (names,
/// un-permuted rows, dequantization), and reports each quantized tensor's bit width.
fn check_tensor_map(path: &Path, weights: &[Weight]) {
    let file = GgufFile::load(path).expect("load GGUF");
    let config = gguf::model_config(&file, path).expect("config");
    let map: TensorMap = gguf::tensors(&file, &config, path).expect("tensors");
    let arrays: std::collections::HashMap<String, Array> = map
        .iter()
        .map(|(name, array)| (name.clone(), array.clone()))
        .collect();
    let quantized_names = weights.iter().filter(|w| w.ty.mlx_bits().is_some()).count();
    assert_eq!(
        arrays.len(),
        weights.len() + 2 * quantized_names,
        "tensor map: every weight, plus scales and biases of the quantized ones"
    );
    for weight in weights {
        let spec = if weight.shape.len() == 2 {
            map.quant_spec(weight.hf_prefix())
                .map(|s| (s.group_size, s.bits))
        } else {
            None
        };
        assert_eq!(
            spec,
            weight.ty.mlx_bits().map(|bits| (BLOCK as i32, bits)),
            "{} ({:?}): quant_spec",
            weight.gguf,
            weight.ty
        );
        let got = to_f32_vec(&dequantized(&arrays, &weight.hf, spec.map(|s| s.1)));
        let differences = bit_differences(&got, &weight.values);
        assert!(
            differences.is_empty(),
            "{} -> {} ({:?}): the loader's tensor differs from the encoded values at \
             (index, loader, ours) {differences:?}",
            weight.gguf,
            weight.hf,
            weight.ty
        );
    }
}

#[test]
fn mixed_type_gguf_equals_its_dense_folder() {
    common::use_test_device();
    let scratch = ScratchDir::new("gguf-types-mixed");
    let weights = tiny_llama(None);
    let covered: std::collections::BTreeSet<u32> = weights.iter().map(|w| w.ty.id()).collect();
    assert_eq!(covered.len(), GgmlType::ALL.len(), "every type is used");
    let gguf_path = scratch.0.join("tiny-mixed.gguf");
    write_gguf(&gguf_path, &weights);
    let folder = scratch.0.join("tiny-mixed-hf");
    std::fs::create_dir_all(&folder).expect("folder");
    write_folder(&folder, &weights, &gguf_path, false);

    check_tensor_map(&gguf_path, &weights);

    let from_gguf = load(ModelSource::Gguf(gguf_path.clone())).expect("load the GGUF");
    let from_folder = load(ModelSource::Folder(folder.clone())).expect("load the folder");
    // Nothing differs: vocab_size comes from the token list (GGUF) and config.json (folder),
    // the GGUF is untied because it has `output.weight`, rms_norm_eps is the same f32.
    assert_eq!(
        from_gguf.model.config(),
        from_folder.model.config(),
        "configs"
    );
    assert!(!from_gguf.model.config().tie_word_embeddings);

    let texts = [
        "Hello world",
        "the world said: Hello there, 42 times!\nthe end {of [it]} ~ ok?",
    ];
    let mut prompts = Vec::new();
    for text in texts {
        let ids = from_gguf.tokenizer.encode(text, false).expect("encode");
        let folder_ids = from_folder.tokenizer.encode(text, false).expect("encode");
        assert_eq!(ids, folder_ids, "tokenizers agree on {text:?}");
        prompts.push(ids);
    }
    assert_eq!(prompts[0].len(), 2, "merges apply: {:?}", prompts[0]);
    assert_eq!(
        from_gguf.tokenizer.eos_ids(),
        from_folder.tokenizer.eos_ids()
    );

    let mut report = Vec::new();
    for (text, prompt) in texts.iter().zip(&prompts) {
        let gguf_logits = first_logits(&from_gguf.model, prompt);
        let folder_logits = first_logits(&from_folder.model, prompt);
        assert!(gguf_logits.iter().all(|v| v.is_finite()), "finite logits");
        let differences = bit_differences(&gguf_logits, &folder_logits);
        assert!(
            differences.is_empty(),
            "{text:?}: first-step logits differ at (index, GGUF, folder) {differences:?}"
        );
        let (gguf_tokens, gguf_margins) = greedy_run(&from_gguf.model, prompt);
        let (folder_tokens, folder_margins) = greedy_run(&from_folder.model, prompt);
        assert_eq!(gguf_tokens, folder_tokens, "{text:?}: greedy tokens");
        assert!(
            bit_differences(&gguf_margins, &folder_margins).is_empty(),
            "{text:?}: greedy margins"
        );
        let distinct: std::collections::BTreeSet<&u32> = gguf_tokens.iter().collect();
        report.push(format!(
            "{} prompt tokens: {VOCAB} logits bit-identical, {STEPS} greedy tokens identical \
             ({} distinct)",
            prompt.len(),
            distinct.len()
        ));
    }
    drop(from_folder);

    // Control: the same folder with q/k rows in GGUF order decodes differently, so the
    // equality above depends on the loader undoing the permutation.
    let unpermuted = scratch.0.join("tiny-gguf-rows-hf");
    std::fs::create_dir_all(&unpermuted).expect("folder");
    write_folder(&unpermuted, &weights, &gguf_path, true);
    let wrong = load(ModelSource::Folder(unpermuted)).expect("load the control folder");
    let control = first_logits(&wrong.model, &prompts[1]);
    let reference = first_logits(&from_gguf.model, &prompts[1]);
    let worst = control
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst > 1e-3,
        "q/k rows in GGUF order should change the logits (max |diff| {worst:e})"
    );
    report.push(format!(
        "q/k rows left permuted: logits off by up to {worst:.3}"
    ));
    eprintln!("gguf_types: {}", report.join("; "));
}

#[test]
fn wrong_attn_q_rows_are_shape_errors() {
    common::use_test_device();
    let scratch = ScratchDir::new("gguf-types-wrong-rows");
    // 48 rows split evenly over the heads' RoPE halves, 36 do not; Q4_0 and Q4_1 rows.
    for (layer, rows) in [(0, 48), (0, 36), (1, 36)] {
        let path = scratch.0.join(format!("q-rows-{layer}-{rows}.gguf"));
        write_gguf(&path, &tiny_llama(Some((layer, rows))));
        let err = load(ModelSource::Gguf(path))
            .err()
            .unwrap_or_else(|| panic!("a {rows}-row attn_q must not load"));
        match &err {
            ModelError::TensorShape { name, found, .. } => {
                assert_eq!(name, &format!("blk.{layer}.attn_q.weight"), "{err}");
                assert!(found.contains(&rows.to_string()), "{err}");
            }
            other => panic!("{rows}-row attn_q: expected a TensorShape error, got {other}"),
        }
        eprintln!("{err}");
    }
}
