//! Who a loaded model is: the names clients use for it, its context length, and a
//! fingerprint of its weights.
//!
//! The fingerprint is what persisted KV caches and hot-swap compare: two loads share KV
//! only if they computed it from byte-identical weight files. It is the SHA-256 of the
//! weight files (for several files, of their names and digests in name order), computed once
//! at load time.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// The identity of a loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity {
    /// The name `/v1/models` reports and requests use.
    pub served_name: String,
    /// Other names requests may use for the same model.
    pub aliases: Vec<String>,
    /// Longest prompt plus completion, in tokens.
    pub context_length: usize,
    /// `sha256:<hex>` over the weight files.
    pub fingerprint: String,
}

impl ModelIdentity {
    /// Whether a request's `model` field names this model.
    pub fn answers_to(&self, name: &str) -> bool {
        self.served_name == name || self.aliases.iter().any(|alias| alias == name)
    }
}

/// Hex SHA-256 of one file's bytes.
pub fn file_sha256(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The weights fingerprint of a model stored in `files`: the file's own SHA-256 for a
/// single file, else a SHA-256 over `name:digest` lines in name order.
pub fn fingerprint(files: &[&Path]) -> io::Result<String> {
    if let [single] = files {
        return Ok(format!("sha256:{}", file_sha256(single)?));
    }
    let mut entries = files
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, file_sha256(path)?))
        })
        .collect::<io::Result<Vec<_>>>()?;
    entries.sort();
    let mut hasher = Sha256::new();
    for (name, digest) in entries {
        hasher.update(format!("{name}:{digest}\n").as_bytes());
    }
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_content_hashes() {
        let dir = std::env::temp_dir().join(format!("mlx-serve-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.safetensors");
        let b = dir.join("b.safetensors");
        std::fs::write(&a, b"abc").unwrap();
        std::fs::write(&b, b"def").unwrap();
        // SHA-256("abc"), the standard test vector.
        assert_eq!(
            file_sha256(&a).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            fingerprint(&[&a]).unwrap(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let both = fingerprint(&[&a, &b]).unwrap();
        assert_eq!(both, fingerprint(&[&b, &a]).unwrap(), "order-independent");
        std::fs::write(&b, b"deg").unwrap();
        assert_ne!(both, fingerprint(&[&a, &b]).unwrap(), "content-dependent");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
