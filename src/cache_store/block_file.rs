//! One block on disk: a safetensors file with the block's keys and values and metadata
//! that says exactly what they are. Whatever a file holds, [`decode`] either returns a
//! block that is the one asked for, computed by this model with this layout and stored in
//! this encoding, with its bytes intact, or says why not ([`Miss`]); it never panics.
//!
//! Tensors, for the float encodings: `keys` and `values`, each
//! `[layers, kv_heads, block_size, head_dim]` in the stored dtype. For the quantized ones
//! (format version 2), MLX's quantized layout: `keys` as `u32` words
//! `[layers, kv_heads, block_size, head_dim * bits / 32]` with `keys.scales` and
//! `keys.biases` `[layers, kv_heads, block_size, head_dim / group_size]` in the pool's
//! dtype, and the same three for the values. Metadata (all strings): `format`,
//! `format_version`, `model_fingerprint`, `layers`, `kv_heads`, `head_dim`, `block_size`,
//! `pool_dtype`, `encoding`, `group_size` (0: not quantized), `block_hash`, `parent_hash`
//! (empty for a chain's first block), `tokens` (comma-separated ids) and `checksum`
//! (`crc32:<hex>` over every tensor's bytes as stored, in the order above).

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::layout::{Encoding, KvDtype, KvLayout};
use super::quantize;
use crate::engine::block_pool::BlockHash;

/// Written into every file; a file without it is not ours.
pub const FORMAT: &str = "mlx-serve-kv-block";
/// The version this build writes. Version 2 added the quantized encodings; version 1
/// files (lossless and f16 only) are laid out the same way and still read.
pub const FORMAT_VERSION: u32 = 2;
/// Versions this build reads.
const READABLE_VERSIONS: [u32; 2] = [1, 2];
/// Largest header a block file may have (its token list dominates): a bigger one is
/// refused before it is parsed.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Which model's KV a store holds: files must match it exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreIdentity {
    /// The weights fingerprint (`sha256:...`).
    pub fingerprint: String,
    pub layout: KvLayout,
}

/// A full block's KV and what it is: the unit the store writes and reads.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockRecord {
    pub hash: BlockHash,
    /// The chain's previous block (or the cache salt for a chain's first block).
    pub parent: Option<BlockHash>,
    /// The block's token ids (`block_size` of them).
    pub tokens: Vec<u32>,
    /// Keys, `[layers, kv_heads, block_size, head_dim]`, in the pool's dtype, native
    /// byte order.
    pub keys: Vec<u8>,
    /// Values, shaped as the keys.
    pub values: Vec<u8>,
}

/// Why a stored block was not used. Every miss is counted by reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Miss {
    #[error("no such block on disk")]
    Absent,
    #[error("the block was written for another model or KV layout ({0})")]
    Foreign(String),
    #[error("the block file has format version {0}, which this build does not read")]
    Version(String),
    #[error("the block's bytes do not match its checksum")]
    Checksum,
    #[error("the block file is malformed: {0}")]
    Malformed(String),
}

impl Miss {
    /// The reason's label in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Miss::Absent => "absent",
            Miss::Foreign(_) => "foreign",
            Miss::Version(_) => "version",
            Miss::Checksum => "checksum",
            Miss::Malformed(_) => "malformed",
        }
    }

    /// Whether the file is damaged (moved to quarantine) rather than just not for us.
    pub fn is_damage(&self) -> bool {
        matches!(self, Miss::Checksum | Miss::Malformed(_))
    }

    /// Every label, for metrics that list them all.
    pub const LABELS: [&'static str; 5] = ["absent", "foreign", "version", "checksum", "malformed"];
}

fn malformed(what: impl Into<String>) -> Miss {
    Miss::Malformed(what.into())
}

fn safetensors_dtype(dtype: KvDtype) -> Dtype {
    match dtype {
        KvDtype::F32 => Dtype::F32,
        KvDtype::F16 => Dtype::F16,
        KvDtype::BF16 => Dtype::BF16,
    }
}

/// The metadata fields that say whose KV a file holds and how it is stored: all must
/// match to use it.
fn identity_fields(identity: &StoreIdentity, encoding: Encoding) -> [(&'static str, String); 8] {
    let layout = identity.layout;
    [
        ("model_fingerprint", identity.fingerprint.clone()),
        ("layers", layout.layers.to_string()),
        ("kv_heads", layout.kv_heads.to_string()),
        ("head_dim", layout.head_dim.to_string()),
        ("block_size", layout.block_size.to_string()),
        ("pool_dtype", layout.dtype.name().to_owned()),
        ("encoding", encoding.name().to_owned()),
        ("group_size", group_size(encoding, &layout).to_string()),
    ]
}

/// The group size `encoding` uses for `layout` (the store checked at open that it has
/// one; 0 when not quantized).
fn group_size(encoding: Encoding, layout: &KvLayout) -> usize {
    encoding.group_size(layout.head_dim).unwrap_or(0)
}

/// A stored tensor's name, dtype and shape.
struct Spec {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
}

/// The tensors `part` (`keys` or `values`) is stored as: one in the float encodings;
/// packed words, scales and biases in the quantized ones.
fn specs(part: &str, layout: &KvLayout, encoding: Encoding) -> Vec<Spec> {
    let float = safetensors_dtype(encoding.stored_dtype(layout.dtype));
    let Some(bits) = encoding.bits() else {
        return vec![Spec {
            name: part.to_owned(),
            dtype: float,
            shape: layout.shape().to_vec(),
        }];
    };
    let [l, h, b, d] = layout.shape();
    let groups = d / group_size(encoding, layout).max(1);
    vec![
        Spec {
            name: part.to_owned(),
            dtype: Dtype::U32,
            shape: vec![l, h, b, d * bits as usize / 32],
        },
        Spec {
            name: format!("{part}.scales"),
            dtype: float,
            shape: vec![l, h, b, groups],
        },
        Spec {
            name: format!("{part}.biases"),
            dtype: float,
            shape: vec![l, h, b, groups],
        },
    ]
}

/// The bytes of `part`'s tensors (in [`specs`]' order) from `bytes` in the pool's dtype.
fn encode_part(bytes: &[u8], layout: &KvLayout, encoding: Encoding) -> Vec<Vec<u8>> {
    let stored = encoding.stored_dtype(layout.dtype);
    let Some(bits) = encoding.bits() else {
        return vec![convert(bytes, layout.dtype, stored)];
    };
    let q = quantize::quantize(
        &to_f32(bytes, layout.dtype),
        group_size(encoding, layout),
        bits,
    );
    vec![
        q.packed.iter().flat_map(|w| w.to_le_bytes()).collect(),
        from_f32(&q.scales, stored),
        from_f32(&q.biases, stored),
    ]
}

/// Serializes `record` (whose bytes are in the identity's pool dtype) in `encoding`, which
/// must be able to store the layout ([`Encoding::group_size`]; [`super::KvStore::open`]
/// refuses one that cannot).
pub fn encode(record: &BlockRecord, identity: &StoreIdentity, encoding: Encoding) -> Vec<u8> {
    let layout = identity.layout;
    let tensors: Vec<(Spec, Vec<u8>)> = [("keys", &record.keys), ("values", &record.values)]
        .into_iter()
        .flat_map(|(part, bytes)| {
            specs(part, &layout, encoding)
                .into_iter()
                .zip(encode_part(bytes, &layout, encoding))
        })
        .collect();
    let mut checksum = crc32fast::Hasher::new();
    for (_, data) in &tensors {
        checksum.update(data);
    }
    let tokens: Vec<String> = record.tokens.iter().map(u32::to_string).collect();
    let header = [
        ("format", FORMAT.to_owned()),
        ("format_version", FORMAT_VERSION.to_string()),
    ];
    let metadata: HashMap<String, String> = header
        .into_iter()
        .chain(identity_fields(identity, encoding))
        .chain([
            ("block_hash", record.hash.to_hex()),
            (
                "parent_hash",
                record.parent.map(|p| p.to_hex()).unwrap_or_default(),
            ),
            ("tokens", tokens.join(",")),
            ("checksum", format!("crc32:{:08x}", checksum.finalize())),
        ])
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let views = tensors.iter().map(|(spec, data)| {
        let view = TensorView::new(spec.dtype, spec.shape.clone(), data)
            .unwrap_or_else(|e| unreachable!("shape and data agree by construction: {e}"));
        (spec.name.as_str(), view)
    });
    safetensors::serialize(views, Some(metadata))
        .unwrap_or_else(|e| unreachable!("well-formed tensors serialize: {e}"))
}

/// Reads the block file `bytes`, expected to hold the block hashed `expected` stored in
/// `encoding`, and checks everything: format and version, model, layout and encoding, the
/// hash chain over its tokens, the tensors' shapes and dtypes, and the checksum. Returns
/// the KV in the pool's dtype.
pub fn decode(
    bytes: &[u8],
    identity: &StoreIdentity,
    encoding: Encoding,
    expected: BlockHash,
) -> Result<BlockRecord, Miss> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| malformed(e.to_string()))?;
    let meta = header
        .metadata()
        .as_ref()
        .ok_or_else(|| malformed("no metadata"))?;
    let field = |name: &str| -> Result<&str, Miss> {
        meta.get(name)
            .map(String::as_str)
            .ok_or_else(|| malformed(format!("no `{name}` in the metadata")))
    };
    check_format(field("format")?, field("format_version")?)?;
    let layout = identity.layout;
    for (name, want) in identity_fields(identity, encoding) {
        let found = field(name)?;
        if found != want {
            return Err(Miss::Foreign(format!(
                "{name} is `{found}`, expected `{want}`"
            )));
        }
    }
    let hash = BlockHash::from_hex(field("block_hash")?).ok_or_else(|| malformed("block_hash"))?;
    if hash != expected {
        return Err(malformed("the file holds another block"));
    }
    let parent = match field("parent_hash")? {
        "" => None,
        hex => Some(BlockHash::from_hex(hex).ok_or_else(|| malformed("parent_hash"))?),
    };
    let tokens = field("tokens")?
        .split(',')
        .map(str::parse::<u32>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| malformed("tokens"))?;
    if tokens.len() != layout.block_size || BlockHash::chain(parent, &tokens) != hash {
        return Err(malformed("the tokens do not hash to the block's hash"));
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| malformed(e.to_string()))?;
    let wanted: Vec<Spec> = ["keys", "values"]
        .into_iter()
        .flat_map(|part| specs(part, &layout, encoding))
        .collect();
    let mut views = Vec::with_capacity(wanted.len());
    let mut checksum = crc32fast::Hasher::new();
    for want in &wanted {
        let view = tensors
            .tensor(&want.name)
            .map_err(|_| malformed(format!("no `{}` tensor", want.name)))?;
        if view.dtype() != want.dtype || view.shape() != want.shape.as_slice() {
            return Err(malformed(format!(
                "`{}` is {:?} {:?}, expected {:?} {:?}",
                want.name,
                view.dtype(),
                view.shape(),
                want.dtype,
                want.shape
            )));
        }
        checksum.update(view.data());
        views.push(view);
    }
    if field("checksum")? != format!("crc32:{:08x}", checksum.finalize()) {
        return Err(Miss::Checksum);
    }
    let (keys, values) = views.split_at(views.len() / 2);
    Ok(BlockRecord {
        hash,
        parent,
        tokens,
        keys: decode_part(keys, &layout, encoding),
        values: decode_part(values, &layout, encoding),
    })
}

/// A part's KV in the pool's dtype from its checked tensors (in [`specs`]' order).
fn decode_part(views: &[TensorView<'_>], layout: &KvLayout, encoding: Encoding) -> Vec<u8> {
    let stored = encoding.stored_dtype(layout.dtype);
    let (Some(bits), [packed, scales, biases]) = (encoding.bits(), views) else {
        return convert(views[0].data(), stored, layout.dtype);
    };
    let q = quantize::Quantized {
        packed: packed
            .data()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        scales: to_f32(scales.data(), stored),
        biases: to_f32(biases.data(), stored),
    };
    from_f32(
        &quantize::dequantize(&q, group_size(encoding, layout), bits),
        layout.dtype,
    )
}

fn check_format(format: &str, version: &str) -> Result<(), Miss> {
    if format != FORMAT {
        return Err(malformed(format!("format `{format}`")));
    }
    match version.parse::<u32>() {
        Ok(v) if READABLE_VERSIONS.contains(&v) => Ok(()),
        _ => Err(Miss::Version(version.to_owned())),
    }
}

/// The cheap start-up check of a file of `file_len` bytes whose first bytes are `head`
/// (at least its length prefix and header): ours, a readable version, the block its name
/// says, and exactly as long as its header says (a torn write is shorter).
pub fn check_header(head: &[u8], file_len: u64, name_hash: BlockHash) -> Result<(), Miss> {
    let len_bytes: [u8; 8] = head
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("shorter than a header"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || head.len() < 8 + header_len as usize {
        return Err(malformed("the header is cut off or too large"));
    }
    let header: serde_json::Value = serde_json::from_slice(&head[8..8 + header_len as usize])
        .map_err(|e| malformed(format!("header: {e}")))?;
    let meta = &header["__metadata__"];
    check_format(
        meta["format"].as_str().unwrap_or_default(),
        meta["format_version"].as_str().unwrap_or_default(),
    )?;
    if meta["block_hash"].as_str() != Some(name_hash.to_hex().as_str()) {
        return Err(malformed("the file holds another block than its name says"));
    }
    let data_end = header
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| name.as_str() != "__metadata__")
        .filter_map(|(_, info)| info["data_offsets"][1].as_u64())
        .max()
        .ok_or_else(|| malformed("no tensors"))?;
    if 8 + header_len + data_end != file_len {
        return Err(malformed(format!(
            "{file_len} bytes, the header describes {}",
            8 + header_len + data_end
        )));
    }
    Ok(())
}

/// `bytes` of `from` elements as `to` elements (a copy when they are the same).
fn convert(bytes: &[u8], from: KvDtype, to: KvDtype) -> Vec<u8> {
    if from == to {
        return bytes.to_vec();
    }
    from_f32(&to_f32(bytes, from), to)
}

/// `bytes` of `dtype` elements (native byte order) as `f32`s.
fn to_f32(bytes: &[u8], dtype: KvDtype) -> Vec<f32> {
    match dtype {
        KvDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        KvDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_ne_bytes([c[0], c[1]]).to_f32())
            .collect(),
        KvDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_ne_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// `floats` as `dtype` elements (native byte order), rounded to nearest.
fn from_f32(floats: &[f32], dtype: KvDtype) -> Vec<u8> {
    match dtype {
        KvDtype::F32 => floats.iter().flat_map(|f| f.to_ne_bytes()).collect(),
        KvDtype::F16 => floats
            .iter()
            .flat_map(|&f| half::f16::from_f32(f).to_ne_bytes())
            .collect(),
        KvDtype::BF16 => floats
            .iter()
            .flat_map(|&f| half::bf16::from_f32(f).to_ne_bytes())
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn identity() -> StoreIdentity {
        StoreIdentity {
            fingerprint: "sha256:test".to_owned(),
            layout: KvLayout {
                layers: 2,
                kv_heads: 2,
                head_dim: 32,
                block_size: 4,
                dtype: KvDtype::F32,
            },
        }
    }

    /// A record for the block after `parent` holding `tokens`, with values derived from
    /// the tokens.
    pub(crate) fn record(parent: Option<BlockHash>, tokens: &[u32]) -> BlockRecord {
        let layout = identity().layout;
        let floats = |offset: f32| -> Vec<u8> {
            (0..layout.elements())
                .flat_map(|i| (i as f32 * 0.25 + offset + tokens[0] as f32).to_ne_bytes())
                .collect()
        };
        BlockRecord {
            hash: BlockHash::chain(parent, tokens),
            parent,
            tokens: tokens.to_vec(),
            keys: floats(0.5),
            values: floats(-3.0),
        }
    }

    #[test]
    fn a_lossless_block_comes_back_bit_for_bit() {
        let block = record(None, &[1, 2, 3, 4]);
        let bytes = encode(&block, &identity(), Encoding::Lossless);
        assert_eq!(
            decode(&bytes, &identity(), Encoding::Lossless, block.hash),
            Ok(block.clone())
        );
        check_header(&bytes, bytes.len() as u64, block.hash).unwrap();
        let child = record(Some(block.hash), &[5, 6, 7, 8]);
        let bytes = encode(&child, &identity(), Encoding::Lossless);
        assert_eq!(
            decode(&bytes, &identity(), Encoding::Lossless, child.hash),
            Ok(child)
        );
    }

    #[test]
    fn f16_halves_the_size_and_rounds_to_half_precision() {
        let block = record(None, &[1, 2, 3, 4]);
        let lossless = encode(&block, &identity(), Encoding::Lossless);
        let half = encode(&block, &identity(), Encoding::F16);
        // Two bytes saved per element of the keys and of the values.
        let elements = identity().layout.elements();
        let saved = lossless.len() - half.len();
        assert!(
            (4 * elements..4 * elements + 16).contains(&saved),
            "{saved}"
        );
        let back = decode(&half, &identity(), Encoding::F16, block.hash).unwrap();
        // The test values are multiples of 0.25 below 64: exact in f16.
        assert_eq!(back, block);
    }

    #[test]
    fn every_kind_of_damage_is_a_miss_with_its_reason() {
        let block = record(None, &[1, 2, 3, 4]);
        let bytes = encode(&block, &identity(), Encoding::Lossless);
        // A flipped bit in the tensor data.
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x10;
        assert_eq!(
            decode(&flipped, &identity(), Encoding::Lossless, block.hash),
            Err(Miss::Checksum)
        );
        // Torn: cut anywhere.
        for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
            let miss =
                decode(&bytes[..cut], &identity(), Encoding::Lossless, block.hash).unwrap_err();
            assert!(miss.is_damage(), "{cut}: {miss:?}");
            let miss = check_header(&bytes[..cut], cut as u64, block.hash).unwrap_err();
            assert!(miss.is_damage(), "{cut}: {miss:?}");
        }
        // Another model, another layout.
        let mut other = identity();
        other.fingerprint = "sha256:other".to_owned();
        assert!(matches!(
            decode(&bytes, &other, Encoding::Lossless, block.hash),
            Err(Miss::Foreign(_))
        ));
        let mut other = identity();
        other.layout.dtype = KvDtype::F16;
        assert!(matches!(
            decode(&bytes, &other, Encoding::Lossless, block.hash),
            Err(Miss::Foreign(_))
        ));
        // Asked for another block.
        let other_hash = BlockHash::chain(None, &[9, 9, 9, 9]);
        assert!(
            decode(&bytes, &identity(), Encoding::Lossless, other_hash)
                .unwrap_err()
                .is_damage()
        );
        assert!(check_header(&bytes, bytes.len() as u64, other_hash).is_err());
        // Garbage.
        assert!(
            decode(
                b"not a safetensors file",
                &identity(),
                Encoding::Lossless,
                block.hash
            )
            .is_err()
        );
    }

    #[test]
    fn quantized_blocks_come_back_within_a_step_and_smaller() {
        let block = record(None, &[1, 2, 3, 4]);
        let lossless = encode(&block, &identity(), Encoding::Lossless).len();
        let floats = |bytes: &[u8]| to_f32(bytes, KvDtype::F32);
        let elements = identity().layout.elements();
        let header = lossless - 2 * 4 * elements;
        for encoding in [Encoding::Q8, Encoding::Q4] {
            let bytes = encode(&block, &identity(), encoding);
            // Keys and values: `bits` per value plus an f32 scale and bias per group of 32
            // (the header grows by four tensor entries).
            let bits = encoding.bits().unwrap() as usize;
            let data = 2 * (elements * bits / 8 + 2 * 4 * elements / 32);
            assert!(
                (header + data..header + data + 400).contains(&bytes.len()),
                "{encoding}: {} bytes, {data} of data",
                bytes.len()
            );
            check_header(&bytes, bytes.len() as u64, block.hash).unwrap();
            let back = decode(&bytes, &identity(), encoding, block.hash).unwrap();
            assert_eq!((back.hash, back.parent), (block.hash, block.parent));
            assert_eq!(back.tokens, block.tokens);
            let levels = ((1u32 << encoding.bits().unwrap()) - 1) as f32;
            for (original, restored) in [(&block.keys, &back.keys), (&block.values, &back.values)] {
                let (original, restored) = (floats(original), floats(restored));
                assert_eq!(original.len(), restored.len());
                for (group, back) in original.chunks(32).zip(restored.chunks(32)) {
                    let (lo, hi) = group
                        .iter()
                        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                    let step = (hi - lo) / levels;
                    for (v, b) in group.iter().zip(back) {
                        assert!((v - b).abs() <= step + 1e-4, "{encoding}: {v} {b}");
                    }
                }
            }
            // Another encoding of the same block is not this store's.
            assert!(matches!(
                decode(&bytes, &identity(), Encoding::Lossless, block.hash),
                Err(Miss::Foreign(_))
            ));
        }
    }

    #[test]
    fn version_1_files_still_read() {
        let block = record(None, &[1, 2, 3, 4]);
        for encoding in [Encoding::Lossless, Encoding::F16] {
            let bytes = encode(&block, &identity(), encoding);
            let old = bytes_replace(
                &bytes,
                b"\"format_version\":\"2\"",
                b"\"format_version\":\"1\"",
            );
            let back = decode(&old, &identity(), encoding, block.hash).unwrap();
            assert_eq!(
                back,
                decode(&bytes, &identity(), encoding, block.hash).unwrap()
            );
        }
    }

    #[test]
    fn unknown_versions_are_a_version_miss() {
        let block = record(None, &[1, 2, 3, 4]);
        let bytes = encode(&block, &identity(), Encoding::Lossless);
        // Same length, so the header length prefix stays right.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let needle = "\"format_version\":\"2\"";
        assert!(text.contains(needle));
        let future = bytes_replace(&bytes, needle.as_bytes(), b"\"format_version\":\"9\"");
        assert_eq!(
            decode(&future, &identity(), Encoding::Lossless, block.hash),
            Err(Miss::Version("9".to_owned()))
        );
        assert_eq!(
            check_header(&future, future.len() as u64, block.hash),
            Err(Miss::Version("9".to_owned()))
        );
    }

    /// Bytes with the first occurrence of `from` replaced by the same-length `to`.
    pub(crate) fn bytes_replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .expect("present");
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to);
        out
    }

    #[test]
    fn a_tampered_token_list_is_caught_by_the_hash_chain() {
        let block = record(None, &[1, 2, 3, 4]);
        let bytes = encode(&block, &identity(), Encoding::Lossless);
        let tampered = bytes_replace(&bytes, b"\"1,2,3,4\"", b"\"1,2,3,5\"");
        assert!(matches!(
            decode(&tampered, &identity(), Encoding::Lossless, block.hash),
            Err(Miss::Malformed(_))
        ));
    }
}
