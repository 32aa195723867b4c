//! An agent's manifest: the ordered blocks of its latest context, so the admin API can say
//! what is kept for it (and delete it). Restores never need it: any prompt that starts with
//! stored blocks finds them by hash.

use serde::{Deserialize, Serialize};

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

/// Whether `id` may name a manifest file: 1 to 128 characters of `[A-Za-z0-9_.-]`, not
/// `.` or `..` (the API validates ids the same way; this is the store's own guard).
pub fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
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
