//! Start-up: the index is rebuilt from the folder, so whatever a crash left behind is
//! either a whole, valid file or gone. Only paths of the store's own shape are touched;
//! anything else under the root is left alone.

use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::time::UNIX_EPOCH;

use super::block_file::{self, MAX_HEADER_BYTES, Miss};
use super::counters::add;
use super::durable::TEMP_SUFFIX;
use super::{Shared, lock};
use crate::engine::block_pool::BlockHash;

pub const BLOCK_EXTENSION: &str = "safetensors";

/// Indexes `<root>/v1/*/<hh>/<hash>.safetensors`: other models' files by size and mtime,
/// this model's after a header check (a damaged one goes to quarantine; one of an unknown
/// version stays, unused). Removes leftover temporaries, then evicts down to the budget.
pub(super) fn rebuild(root: &Path, namespace: &str, shared: &Shared) -> io::Result<()> {
    let versions = root.join("v1");
    for ns in fs::read_dir(&versions)?.flatten() {
        let ours = ns.file_name() == namespace;
        let Ok(subdirs) = fs::read_dir(ns.path()) else {
            continue;
        };
        for sub in subdirs.flatten() {
            let Ok(files) = fs::read_dir(sub.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                let name = file.file_name().to_string_lossy().into_owned();
                if name.ends_with(TEMP_SUFFIX) {
                    if fs::remove_file(&path).is_ok() {
                        add(&shared.counters.leftovers_removed, 1);
                    }
                    continue;
                }
                let Some(hash) = name
                    .strip_suffix(&format!(".{BLOCK_EXTENSION}"))
                    .and_then(BlockHash::from_hex)
                else {
                    continue;
                };
                let Ok(meta) = file.metadata() else {
                    continue;
                };
                let used = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as u64);
                let hash = if ours {
                    match check_file(&path, meta.len(), hash) {
                        Ok(()) => Some(hash),
                        Err(Miss::Version(_)) => None,
                        Err(miss) => {
                            tracing::warn!(path = %path.display(), %miss, "quarantining a damaged KV block");
                            shared.counters.miss(&miss);
                            shared.quarantine(&path);
                            continue;
                        }
                    }
                } else {
                    None
                };
                lock(&shared.index).insert(path, meta.len(), used, hash);
            }
        }
    }
    let evicted = lock(&shared.index).shrink_to_budget();
    for path in evicted {
        if fs::remove_file(&path).is_ok() {
            add(&shared.counters.evicted, 1);
        }
    }
    Ok(())
}

/// Reads just the length prefix and header of a block file and checks them.
fn check_file(path: &Path, len: u64, hash: BlockHash) -> Result<(), Miss> {
    let mut file = fs::File::open(path).map_err(|_| Miss::Absent)?;
    let mut prefix = [0u8; 8];
    file.read_exact(&mut prefix)
        .map_err(|_| Miss::Malformed("shorter than a header".to_owned()))?;
    let header_len = u64::from_le_bytes(prefix).min(MAX_HEADER_BYTES + 1);
    let mut head = prefix.to_vec();
    file.take(header_len)
        .read_to_end(&mut head)
        .map_err(|e| Miss::Malformed(e.to_string()))?;
    block_file::check_header(&head, len, hash)
}

/// Keeps the newest [`super::QUARANTINE_MAX_FILES`] files in the quarantine folder (their
/// names start with the time they were moved there).
pub(super) fn trim_quarantine(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    if names.len() <= super::QUARANTINE_MAX_FILES {
        return;
    }
    names.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    });
    let excess = names.len() - super::QUARANTINE_MAX_FILES;
    for old in &names[..excess] {
        let _ = fs::remove_file(old);
    }
}
