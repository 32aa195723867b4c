//! An agent's manifest: the ordered blocks of its latest context, so the admin API can say
//! what is kept for it (and delete it). Restores never need it: any prompt that starts with
//! stored blocks finds them by hash.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Shared, durable, lock};
use crate::engine::block_pool::BlockHash;

/// `<namespace>/agents/<agent id>.json`, replaced atomically after each of the agent's
/// requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentManifest {
    pub agent_id: String,
    /// Chained hashes (hex) of the full blocks of its latest context, in order.
    pub block_hashes: Vec<String>,
    /// The token ids those blocks hold.
    pub token_ids: Vec<u32>,
    /// Last use, milliseconds since the Unix epoch.
    pub last_used_ms: u64,
    /// Bytes one block takes in the pool.
    pub block_bytes: u64,
}

/// Longest agent id.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// Whether `id` is a valid agent id and may name a manifest file: 1 to 128 characters of
/// `[A-Za-z0-9_.-]`, not `.` or `..`. The API refuses other ids with this rule, and the
/// store checks it again before it names a file.
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_AGENT_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl AgentManifest {
    /// Its blocks' hashes (entries that are not a hash are skipped).
    pub fn hashes(&self) -> Vec<BlockHash> {
        self.block_hashes
            .iter()
            .filter_map(|h| BlockHash::from_hex(h))
            .collect()
    }
}

/// What `DELETE /admin/caches` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Cleared {
    pub blocks: usize,
    pub manifests: usize,
}

impl Shared {
    pub(super) fn agents_dir(&self) -> PathBuf {
        self.dir.join("agents")
    }

    pub(super) fn manifest_path(&self, agent_id: &str) -> PathBuf {
        self.agents_dir().join(format!("{agent_id}.json"))
    }

    pub(super) fn write_manifest_file(&self, manifest: &AgentManifest) {
        let path = self.manifest_path(&manifest.agent_id);
        let written = serde_json::to_vec(manifest)
            .map_err(std::io::Error::other)
            .and_then(|json| durable::write_atomic(&path, &json));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write an agent manifest");
        }
    }

    /// The agent's manifest; `None` for an unknown (or invalid) id or an unreadable file.
    pub(super) fn read_manifest(&self, agent_id: &str) -> Option<AgentManifest> {
        if !valid_agent_id(agent_id) {
            return None;
        }
        let bytes = fs::read(self.manifest_path(agent_id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every readable manifest of this model, by agent id.
    pub(super) fn manifests(&self) -> Vec<AgentManifest> {
        let mut manifests: Vec<AgentManifest> = fs::read_dir(self.agents_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                self.read_manifest(name.strip_suffix(".json")?)
            })
            .collect();
        manifests.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        manifests
    }

    /// Removes an agent's manifest and the blocks no other agent's manifest lists; `None`
    /// when it has no manifest. Runs on the writer thread, so it cannot race a write.
    pub(super) fn delete_agent(&self, agent_id: &str) -> Option<usize> {
        let target = self.read_manifest(agent_id)?;
        let kept: HashSet<BlockHash> = self
            .manifests()
            .iter()
            .filter(|m| m.agent_id != agent_id)
            .flat_map(AgentManifest::hashes)
            .collect();
        let mut removed = 0;
        for hash in target.hashes().iter().filter(|h| !kept.contains(*h)) {
            let path = {
                let mut index = lock(&self.index);
                let path = index.path_of(hash).map(PathBuf::from);
                if let Some(path) = &path {
                    index.remove(path);
                }
                path
            };
            if path.is_some_and(|p| fs::remove_file(p).is_ok()) {
                removed += 1;
            }
        }
        let _ = fs::remove_file(self.manifest_path(agent_id));
        let _ = durable::sync_dir(&self.agents_dir());
        Some(removed)
    }

    /// Removes every block and manifest of this model (other models' files stay).
    pub(super) fn clear(&self) -> Cleared {
        let mut cleared = Cleared::default();
        let paths = lock(&self.index).our_paths();
        for path in paths {
            lock(&self.index).remove(&path);
            if fs::remove_file(&path).is_ok() {
                cleared.blocks += 1;
            }
        }
        for manifest in self.manifests() {
            if fs::remove_file(self.manifest_path(&manifest.agent_id)).is_ok() {
                cleared.manifests += 1;
            }
        }
        cleared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_ids_name_files() {
        assert!(valid_agent_id("agent-1.a_b"));
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(!valid_agent_id(bad), "{bad:?}");
        }
    }
}
