//! What the store folder holds, in memory: every block file under the root (this model's
//! and others'), its size and last use, this model's blocks by hash, and the blocks queued
//! for writing. Eviction is least-recently-used across the whole folder, so one budget
//! bounds every model's blocks together. Pure bookkeeping: files are created and deleted
//! by the store's threads.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::engine::block_pool::BlockHash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileInfo {
    size: u64,
    /// Last use in nanoseconds since the Unix epoch (the file's mtime after a restart).
    used: u64,
    /// This model's block the file holds; `None` for other models' files.
    hash: Option<BlockHash>,
}

/// The in-memory index. Invariants: `bytes` is the sum of `files` sizes plus space
/// reserved for writes in flight; `lru` and `files` list the same paths; `ours` maps
/// exactly the files whose `hash` is set.
#[derive(Debug, Default)]
pub struct Index {
    budget: u64,
    files: HashMap<PathBuf, FileInfo>,
    lru: BTreeSet<(u64, PathBuf)>,
    ours: HashMap<BlockHash, PathBuf>,
    /// Blocks handed to the writer and not yet written (or dropped).
    pending: HashSet<BlockHash>,
    bytes: u64,
}

/// A write that cannot be made to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl Index {
    pub fn new(budget: u64) -> Index {
        Index {
            budget,
            ..Index::default()
        }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of files (and reserved writes) under the root.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// This model's blocks on disk.
    pub fn blocks(&self) -> usize {
        self.ours.len()
    }

    pub fn contains(&self, hash: &BlockHash) -> bool {
        self.ours.contains_key(hash)
    }

    /// How many of `hashes`, from the first, are on disk.
    pub fn leading_run(&self, hashes: &[BlockHash]) -> usize {
        hashes.iter().take_while(|h| self.contains(h)).count()
    }

    /// Claims `hash` for writing: true when it is neither on disk nor already claimed.
    pub fn claim(&mut self, hash: BlockHash) -> bool {
        !self.contains(&hash) && self.pending.insert(hash)
    }

    /// Ends a claim (written, dropped or failed).
    pub fn unclaim(&mut self, hash: &BlockHash) {
        self.pending.remove(hash);
    }

    /// Records an existing file.
    pub fn insert(&mut self, path: PathBuf, size: u64, used: u64, hash: Option<BlockHash>) {
        self.remove(&path);
        if let Some(hash) = hash {
            self.ours.insert(hash, path.clone());
        }
        self.lru.insert((used, path.clone()));
        self.files.insert(path, FileInfo { size, used, hash });
        self.bytes += size;
    }

    /// Forgets a file (deleted, quarantined); returns its size.
    pub fn remove(&mut self, path: &Path) -> Option<u64> {
        let info = self.files.remove(path)?;
        self.lru.remove(&(info.used, path.to_path_buf()));
        if let Some(hash) = info.hash
            && self.ours.get(&hash).is_some_and(|p| p == path)
        {
            self.ours.remove(&hash);
        }
        self.bytes -= info.size;
        Some(info.size)
    }

    /// Marks a file as used at `used` (a restore read it).
    pub fn touch(&mut self, path: &Path, used: u64) {
        if let Some(info) = self.files.get_mut(path) {
            self.lru.remove(&(info.used, path.to_path_buf()));
            info.used = used;
            self.lru.insert((used, path.to_path_buf()));
        }
    }

    /// Reserves `size` bytes for a new file, evicting least recently used files from the
    /// index until it fits the budget. Returns the evicted paths (for the caller to
    /// delete); takes nothing when `size` alone exceeds the budget.
    pub fn reserve(&mut self, size: u64) -> Result<Vec<PathBuf>, OverBudget> {
        if size > self.budget {
            return Err(OverBudget);
        }
        let mut evicted = Vec::new();
        while self.bytes + size > self.budget {
            let Some((_, path)) = self.lru.first().cloned() else {
                break;
            };
            self.remove(&path);
            evicted.push(path);
        }
        self.bytes += size;
        Ok(evicted)
    }

    /// Returns a reservation that did not become a file.
    pub fn unreserve(&mut self, size: u64) {
        self.bytes = self.bytes.saturating_sub(size);
    }

    /// Records the file a reservation of `size` became.
    pub fn commit(&mut self, path: PathBuf, size: u64, used: u64, hash: Option<BlockHash>) {
        self.unreserve(size);
        self.insert(path, size, used, hash);
    }

    /// Evicts least recently used files until the index fits its budget (after start-up,
    /// when the budget may have shrunk). Returns the paths to delete.
    pub fn shrink_to_budget(&mut self) -> Vec<PathBuf> {
        let mut evicted = Vec::new();
        while self.bytes > self.budget {
            let Some((_, path)) = self.lru.first().cloned() else {
                break;
            };
            self.remove(&path);
            evicted.push(path);
        }
        evicted
    }

    /// Every file of this model's blocks.
    pub fn our_paths(&self) -> Vec<PathBuf> {
        self.ours.values().cloned().collect()
    }

    /// Every file under the root.
    pub fn all_paths(&self) -> Vec<PathBuf> {
        self.files.keys().cloned().collect()
    }

    /// The file holding this model's block `hash`.
    pub fn path_of(&self, hash: &BlockHash) -> Option<&Path> {
        self.ours.get(hash).map(PathBuf::as_path)
    }

    /// Checks the invariants; names the first violation.
    #[cfg(test)]
    pub fn check(&self, reserved: u64) -> Result<(), String> {
        let sum: u64 = self.files.values().map(|f| f.size).sum();
        if sum + reserved != self.bytes {
            return Err(format!("{sum} + {reserved} bytes, {} counted", self.bytes));
        }
        if self.lru.len() != self.files.len()
            || self
                .lru
                .iter()
                .any(|(used, p)| self.files.get(p).map(|f| f.used) != Some(*used))
        {
            return Err("lru and files disagree".to_owned());
        }
        let hashed = self.files.values().filter(|f| f.hash.is_some()).count();
        if hashed != self.ours.len() {
            return Err(format!(
                "{hashed} hashed files, {} in ours",
                self.ours.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u32) -> BlockHash {
        BlockHash::chain(None, &[n])
    }

    #[test]
    fn eviction_is_least_recently_used_across_models() {
        let mut index = Index::new(300);
        index.insert("a".into(), 100, 1, Some(hash(1)));
        index.insert("other-model".into(), 100, 2, None);
        index.insert("c".into(), 100, 3, Some(hash(3)));
        index.touch(Path::new("a"), 4);
        index.check(0).unwrap();
        // 100 more: the least recently used (the other model's file) goes.
        assert_eq!(index.reserve(100), Ok(vec![PathBuf::from("other-model")]));
        index.check(100).unwrap();
        index.commit("d".into(), 100, 5, Some(hash(4)));
        index.check(0).unwrap();
        assert_eq!(index.bytes(), 300);
        assert_eq!(index.leading_run(&[hash(1), hash(3), hash(9), hash(4)]), 2);
        // Too large for the budget at all: nothing is evicted.
        assert_eq!(index.reserve(301), Err(OverBudget));
        assert_eq!(index.files(), 3);
        // A budget that shrank.
        index.budget = 150;
        assert_eq!(
            index.shrink_to_budget(),
            vec![PathBuf::from("c"), "a".into()]
        );
        assert!(!index.contains(&hash(3)) && index.contains(&hash(4)));
        index.check(0).unwrap();
    }

    #[test]
    fn a_block_is_claimed_once_until_written_or_dropped() {
        let mut index = Index::new(1000);
        assert!(index.claim(hash(1)));
        assert!(!index.claim(hash(1)));
        index.unclaim(&hash(1));
        assert!(index.claim(hash(1)));
        index.unclaim(&hash(1));
        index.insert("x".into(), 10, 1, Some(hash(1)));
        assert!(!index.claim(hash(1)), "already on disk");
        assert_eq!(index.remove(Path::new("x")), Some(10));
        assert!(index.claim(hash(1)));
        index.check(0).unwrap();
    }
}
