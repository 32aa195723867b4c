//! What a stored block must match to be used: the model it was computed by, the shape of
//! its KV, and how its values are encoded on disk.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Element type of the pool's KV (plain Rust mirror of the MLX dtype the engine uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    F16,
    BF16,
}

impl KvDtype {
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "float32",
            KvDtype::F16 => "float16",
            KvDtype::BF16 => "bfloat16",
        }
    }
}

/// The geometry of one block's KV. Two runs share stored blocks only when their layouts
/// (and model fingerprints) are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    /// The pool's dtype: what a restore hands back, whatever the encoding on disk.
    pub dtype: KvDtype,
}

impl KvLayout {
    /// Elements in one block's keys (as many again for its values):
    /// `[layers, kv_heads, block_size, head_dim]`.
    pub fn elements(&self) -> usize {
        self.layers * self.kv_heads * self.block_size * self.head_dim
    }

    /// The shape of a block's keys (and values) tensor.
    pub fn shape(&self) -> [usize; 4] {
        [self.layers, self.kv_heads, self.block_size, self.head_dim]
    }

    /// Bytes of one block's keys plus values in the pool's dtype.
    pub fn block_bytes(&self) -> usize {
        2 * self.elements() * self.dtype.size()
    }

    /// A stable one-line description, recorded in every file and hashed into the
    /// namespace.
    pub fn describe(&self) -> String {
        format!(
            "layers={} kv_heads={} head_dim={} block_size={} dtype={}",
            self.layers,
            self.kv_heads,
            self.head_dim,
            self.block_size,
            self.dtype.name()
        )
    }
}

/// How block values are written to disk (`--kv-store-encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// The pool's own dtype, bit for bit.
    #[default]
    Lossless,
    /// IEEE half precision (lossless when the pool is already f16).
    F16,
    /// 8-bit affine quantization in MLX's layout ([`quantize`](super::quantize)).
    Q8,
    /// 4-bit affine quantization in MLX's layout.
    Q4,
}

impl Encoding {
    pub const ALL: [Encoding; 4] = [
        Encoding::Lossless,
        Encoding::F16,
        Encoding::Q8,
        Encoding::Q4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Lossless => "lossless",
            Encoding::F16 => "f16",
            Encoding::Q8 => "q8",
            Encoding::Q4 => "q4",
        }
    }

    /// Bits per quantized value; `None` for the float encodings.
    pub fn bits(self) -> Option<u32> {
        match self {
            Encoding::Lossless | Encoding::F16 => None,
            Encoding::Q8 => Some(8),
            Encoding::Q4 => Some(4),
        }
    }

    /// The dtype of the stored float tensors for a pool of `pool` dtype: the values
    /// themselves, or a quantized encoding's scales and biases (kept in the pool's dtype,
    /// as MLX does).
    pub fn stored_dtype(self, pool: KvDtype) -> KvDtype {
        match self {
            Encoding::F16 => KvDtype::F16,
            Encoding::Lossless | Encoding::Q8 | Encoding::Q4 => pool,
        }
    }

    /// The quantization group size for rows of `head_dim` values (0 for the float
    /// encodings), or why this encoding cannot store them.
    pub fn group_size(self, head_dim: usize) -> Result<usize, String> {
        if self.bits().is_none() {
            return Ok(0);
        }
        super::quantize::group_size_for(head_dim).ok_or_else(|| {
            format!(
                "--kv-store-encoding {self} quantizes groups of {:?} values, which do not \
                 divide this model's head dimension {head_dim}; use lossless or f16",
                super::quantize::GROUP_SIZES
            )
        })
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Encoding {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                format!("unknown KV store encoding `{s}`; expected lossless, f16, q8 or q4")
            })
    }
}

/// The folder name of a model's blocks: 16 hex digits of SHA-256 over its weights
/// fingerprint, KV layout and storage encoding. Files carry all three in full; the folder
/// keeps models apart, and keeps a server that stores losslessly from reading blocks
/// another configuration quantized.
pub fn namespace(fingerprint: &str, layout: &KvLayout, encoding: Encoding) -> String {
    let mut hasher = Sha256::new();
    hasher.update(fingerprint.as_bytes());
    hasher.update(b"\n");
    hasher.update(layout.describe().as_bytes());
    hasher.update(b"\n");
    hasher.update(encoding.name().as_bytes());
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(block_size: usize) -> KvLayout {
        KvLayout {
            layers: 2,
            kv_heads: 3,
            head_dim: 4,
            block_size,
            dtype: KvDtype::F32,
        }
    }

    #[test]
    fn namespaces_separate_models_and_layouts() {
        let a = namespace("sha256:aa", &layout(16), Encoding::Lossless);
        assert_eq!(a.len(), 16);
        assert_eq!(a, namespace("sha256:aa", &layout(16), Encoding::Lossless));
        assert_ne!(a, namespace("sha256:ab", &layout(16), Encoding::Lossless));
        assert_ne!(a, namespace("sha256:aa", &layout(32), Encoding::Lossless));
        assert_ne!(a, namespace("sha256:aa", &layout(16), Encoding::Q4));
    }

    #[test]
    fn encodings_parse_by_name() {
        for encoding in Encoding::ALL {
            assert_eq!(encoding.name().parse::<Encoding>(), Ok(encoding));
        }
        assert_eq!(Encoding::Q4.group_size(64), Ok(64));
        assert_eq!(Encoding::Q8.group_size(96), Ok(32));
        assert_eq!(Encoding::F16.group_size(80), Ok(0));
        assert!(Encoding::Q4.group_size(80).unwrap_err().contains("80"));
        assert!("q3".parse::<Encoding>().unwrap_err().contains("q3"));
        assert_eq!(layout(16).block_bytes(), 2 * 2 * 3 * 16 * 4 * 4);
    }
}
