//! The KV block allocator: which pool blocks are in use, cached or free. Pure Rust; the
//! tensors the ids index live in `model::kv_cache`.
//!
//! Every block is in exactly one state:
//! - **in use**: referenced by at least one running sequence (refcount > 0). Several
//!   sequences may share a block holding an identical prefix.
//! - **cached**: nobody references it, but it holds a full block of known content (its
//!   chained hash is registered), so a later request with the same prefix can reuse it.
//!   Cached blocks are evicted least-recently-released first when blocks are needed.
//! - **free**: holds nothing useful.
//!
//! Admission counts free + cached blocks ([`BlockPool::available`]); readiness and
//! utilisation count in-use blocks ([`BlockPool::in_use`]).
//!
//! Allocation prefers consecutive ids, continuing a sequence's last block when it can:
//! attention reads a sequence whose blocks are consecutive in place, and gathers (copies)
//! the keys of a fragmented one (see docs/model-runtime.md).

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest, Sha256};

/// Index of a block in the pool.
pub type BlockId = u32;

/// Content hash of a full block, chained over its parent's hash: equal hashes mean equal
/// token prefixes up to and including this block (128 bits of SHA-256, stable across runs
/// and builds, so persisted caches can be matched again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub [u8; 16]);

impl BlockHash {
    /// The hash of a full block holding `tokens`, following the block hashed `parent`.
    pub fn chain(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
        let mut hasher = Sha256::new();
        match parent {
            Some(parent) => {
                hasher.update([1u8]);
                hasher.update(parent.0);
            }
            None => hasher.update([0u8]),
        }
        for token in tokens {
            hasher.update(token.to_le_bytes());
        }
        let digest = hasher.finalize();
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&digest[..16]);
        BlockHash(hash)
    }

    /// The root of a hash chain private to the holder of `secret` (an API key): a first
    /// block chained from it hashes differently from the same tokens under any other root.
    pub fn salt(secret: &str) -> BlockHash {
        let mut hasher = Sha256::new();
        hasher.update(b"mlx-serve prefix cache salt\n");
        hasher.update(secret.as_bytes());
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&hasher.finalize()[..16]);
        BlockHash(hash)
    }

    /// 32 lowercase hex digits (file names, manifests, metadata).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`BlockHash::to_hex`]'s output; `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<BlockHash> {
        if hex.len() != 32 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut hash = [0u8; 16];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(BlockHash(hash))
    }

    /// The chained hashes of every full block of `tokens`.
    pub fn chain_all(tokens: &[u32], block_size: usize) -> Vec<BlockHash> {
        let mut parent = None;
        tokens
            .chunks_exact(block_size.max(1))
            .map(|block| {
                let hash = BlockHash::chain(parent, block);
                parent = Some(hash);
                hash
            })
            .collect()
    }
}

/// Not enough free or cached blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the KV pool has {available} blocks available, {requested} were requested")]
pub struct PoolExhausted {
    pub requested: usize,
    pub available: usize,
}

#[derive(Debug, Clone, Default)]
struct BlockMeta {
    refcount: u32,
    hash: Option<BlockHash>,
    /// Release tick while cached (for LRU eviction).
    released_at: u64,
}

/// The allocator. Invariants (checked by [`BlockPool::check`] in tests):
/// `free + cached + in_use == total`; a block is cached iff its refcount is 0 and it has a
/// registered hash; `by_hash` maps each registered hash to a block carrying it.
#[derive(Debug, Clone)]
pub struct BlockPool {
    blocks: Vec<BlockMeta>,
    /// Free blocks, lowest id first (so fresh allocations come out consecutive).
    free: BTreeSet<BlockId>,
    /// Cached blocks by (release tick, id): the first is the least recently released.
    cached: BTreeSet<(u64, BlockId)>,
    by_hash: HashMap<BlockHash, BlockId>,
    tick: u64,
}

impl BlockPool {
    pub fn new(num_blocks: usize) -> Self {
        BlockPool {
            blocks: vec![BlockMeta::default(); num_blocks],
            free: (0..num_blocks as BlockId).collect(),
            cached: BTreeSet::new(),
            by_hash: HashMap::new(),
            tick: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }

    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn in_use(&self) -> usize {
        self.total() - self.free() - self.cached()
    }

    /// Blocks an allocation can get: free plus evictable cached ones.
    pub fn available(&self) -> usize {
        self.free() + self.cached()
    }

    pub fn refcount(&self, block: BlockId) -> u32 {
        self.blocks.get(block as usize).map_or(0, |b| b.refcount)
    }

    /// Allocates `count` blocks (refcount 1 each), preferring the ones right after `after`
    /// (a sequence's current last block), then a new run placed by
    /// [`BlockPool::run_start`], then the lowest free ids, then evicting cached blocks least
    /// recently released first. All or nothing.
    ///
    /// Placement matters for speed: attention reads a sequence whose blocks are consecutive
    /// in place, but must gather a scattered one (tens of ms per step at 1K tokens).
    pub fn allocate(
        &mut self,
        count: usize,
        after: Option<BlockId>,
    ) -> Result<Vec<BlockId>, PoolExhausted> {
        if count > self.available() {
            return Err(PoolExhausted {
                requested: count,
                available: self.available(),
            });
        }
        let mut blocks = Vec::with_capacity(count);
        // Continue the run after `after` while those blocks are free.
        let mut next = after.map(|b| b + 1);
        while blocks.len() < count {
            match next {
                Some(id) if self.free.remove(&id) => {
                    blocks.push(id);
                    next = Some(id + 1);
                }
                _ => break,
            }
        }
        if blocks.len() < count
            && let Some(start) = self.run_start(count - blocks.len())
        {
            let mut id = start;
            while blocks.len() < count && self.free.remove(&id) {
                blocks.push(id);
                id += 1;
            }
        }
        while blocks.len() < count {
            let id = match self.free.pop_first() {
                Some(id) => id,
                None => self.evict_oldest_cached(),
            };
            blocks.push(id);
        }
        for &id in &blocks {
            self.blocks[id as usize].refcount = 1;
        }
        Ok(blocks)
    }

    /// Where a new run of `count` blocks starts: in the longest stretch of free blocks
    /// (the first of equals). When the block before that stretch is in use, its sequence
    /// may grow into the stretch, so the run goes to the middle of what is left: the
    /// neighbour and the new run get equal room to grow consecutively. `None` when nothing
    /// is free. One pass over the free set, only when a run cannot simply continue.
    fn run_start(&self, count: usize) -> Option<BlockId> {
        let mut best: Option<(BlockId, usize)> = None;
        let mut current: Option<(BlockId, usize)> = None;
        for &id in &self.free {
            current = match current {
                Some((start, len)) if start + len as BlockId == id => Some((start, len + 1)),
                _ => Some((id, 1)),
            };
            if let Some((start, len)) = current
                && best.is_none_or(|(_, longest)| len > longest)
            {
                best = Some((start, len));
            }
        }
        let (start, len) = best?;
        let neighbour_in_use = start > 0 && self.refcount(start - 1) > 0;
        Some(if neighbour_in_use && len > count {
            start + ((len - count) / 2) as BlockId
        } else {
            start
        })
    }

    /// Blocks an admission would take out of [`BlockPool::available`]: `fresh` new ones
    /// plus every block of `prefix` that is cached now (sharing it brings it back into
    /// use); shared blocks already in use cost nothing.
    pub fn admission_cost(&self, prefix: &[BlockId], fresh: usize) -> usize {
        fresh + prefix.iter().filter(|&&b| self.refcount(b) == 0).count()
    }

    /// Shares `prefix` (blocks found by [`BlockPool::lookup_prefix`]) and allocates `fresh`
    /// more after it, all or nothing: the returned table is `prefix` followed by the new
    /// blocks. Fails, taking nothing, when [`BlockPool::admission_cost`] exceeds what is
    /// available (a cached prefix block taken back into use is no longer available for the
    /// rest).
    pub fn share_and_allocate(
        &mut self,
        prefix: &[BlockId],
        fresh: usize,
    ) -> Result<Vec<BlockId>, PoolExhausted> {
        let cost = self.admission_cost(prefix, fresh);
        if cost > self.available() {
            return Err(PoolExhausted {
                requested: cost,
                available: self.available(),
            });
        }
        prefix.iter().for_each(|&b| self.retain(b));
        let mut table = prefix.to_vec();
        table.extend(self.allocate(fresh, prefix.last().copied())?);
        Ok(table)
    }

    /// Turns the least recently released cached block into a free one (forgetting its
    /// content) and returns it. Only called when `free` is empty and `cached` is not.
    fn evict_oldest_cached(&mut self) -> BlockId {
        let Some((_, id)) = self.cached.pop_first() else {
            unreachable!("allocate checked that enough blocks are available");
        };
        let meta = &mut self.blocks[id as usize];
        if let Some(hash) = meta.hash.take()
            && self.by_hash.get(&hash) == Some(&id)
        {
            self.by_hash.remove(&hash);
        }
        id
    }

    /// Adds a reference to an in-use or cached block (prefix sharing); a cached block comes
    /// back into use.
    pub fn retain(&mut self, block: BlockId) {
        let meta = &mut self.blocks[block as usize];
        if meta.refcount == 0 && !self.cached.remove(&(meta.released_at, block)) {
            self.free.remove(&block);
        }
        meta.refcount += 1;
    }

    /// Drops one reference. At zero the block becomes cached if its content is registered,
    /// free otherwise.
    pub fn release(&mut self, block: BlockId) {
        let meta = &mut self.blocks[block as usize];
        debug_assert!(meta.refcount > 0, "release of unreferenced block {block}");
        meta.refcount = meta.refcount.saturating_sub(1);
        if meta.refcount > 0 {
            return;
        }
        if meta.hash.is_some() {
            self.tick += 1;
            meta.released_at = self.tick;
            self.cached.insert((self.tick, block));
        } else {
            self.free.insert(block);
        }
    }

    /// Whether `block` (in use or cached) holds the content hashed `hash`.
    pub fn holds(&self, block: BlockId, hash: BlockHash) -> bool {
        self.blocks
            .get(block as usize)
            .is_some_and(|b| b.hash == Some(hash))
    }

    /// Forgets the content of cached (unreferenced) blocks holding any of `hashes`, so no
    /// later prompt finds them (an agent's memory was deleted); blocks in use keep theirs.
    /// Returns how many were freed.
    pub fn forget(&mut self, hashes: &[BlockHash]) -> usize {
        let mut freed = 0;
        for hash in hashes {
            let Some(&block) = self.by_hash.get(hash) else {
                continue;
            };
            let meta = &mut self.blocks[block as usize];
            if meta.refcount == 0 && self.cached.remove(&(meta.released_at, block)) {
                meta.hash = None;
                self.by_hash.remove(hash);
                self.free.insert(block);
                freed += 1;
            }
        }
        freed
    }

    /// Forgets every cached block's content (`DELETE /admin/caches`); returns how many.
    pub fn forget_all_cached(&mut self) -> usize {
        let cached = std::mem::take(&mut self.cached);
        for &(_, block) in &cached {
            if let Some(hash) = self.blocks[block as usize].hash.take()
                && self.by_hash.get(&hash) == Some(&block)
            {
                self.by_hash.remove(&hash);
            }
            self.free.insert(block);
        }
        cached.len()
    }

    /// How many of `hashes` are held by a block (in use or cached).
    pub fn count_held(&self, hashes: &[BlockHash]) -> usize {
        hashes
            .iter()
            .filter(|h| self.by_hash.contains_key(h))
            .count()
    }

    /// Records that in-use `block` now holds the full block with content `hash`, so later
    /// requests can find it. A hash already registered to another block keeps that block.
    pub fn register(&mut self, block: BlockId, hash: BlockHash) {
        let meta = &mut self.blocks[block as usize];
        meta.hash = Some(hash);
        self.by_hash.entry(hash).or_insert(block);
    }

    /// The blocks (in use or cached) holding the longest prefix of `hashes`, without
    /// taking references: call [`BlockPool::retain`] on the ones to use.
    pub fn lookup_prefix(&self, hashes: &[BlockHash]) -> Vec<BlockId> {
        hashes
            .iter()
            .map_while(|hash| self.by_hash.get(hash).copied())
            .collect()
    }

    /// Checks every invariant; a message describes the first violation.
    pub fn check(&self) -> Result<(), String> {
        for (id, meta) in self.blocks.iter().enumerate() {
            let id = id as BlockId;
            let is_free = self.free.contains(&id);
            let is_cached = self.cached.contains(&(meta.released_at, id));
            match (meta.refcount, is_free, is_cached) {
                (0, true, false) if meta.hash.is_none() => {}
                (0, false, true) if meta.hash.is_some() => {}
                (n, false, false) if n > 0 => {}
                state => return Err(format!("block {id} in inconsistent state {state:?}")),
            }
        }
        if self.free.len() + self.cached.len() + self.in_use() != self.total() {
            return Err("free + cached + in use != total".to_owned());
        }
        for (hash, &id) in &self.by_hash {
            if self.blocks[id as usize].hash != Some(*hash) {
                return Err(format!(
                    "hash index points to block {id}, which holds another"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_content_is_never_found_again() {
        let mut pool = BlockPool::new(4);
        let hashes = BlockHash::chain_all(&[1, 2, 3, 4, 5, 6], 2);
        let blocks = pool.allocate(3, None).unwrap();
        for (&b, &h) in blocks.iter().zip(&hashes) {
            pool.register(b, h);
        }
        // The first stays in use; the other two are cached.
        pool.release(blocks[1]);
        pool.release(blocks[2]);
        assert_eq!(pool.count_held(&hashes), 3);
        assert_eq!(pool.forget(&hashes), 2, "only cached blocks are forgotten");
        assert_eq!(pool.lookup_prefix(&hashes), vec![blocks[0]]);
        assert_eq!((pool.free(), pool.cached()), (3, 0));
        pool.release(blocks[0]);
        assert_eq!(pool.forget_all_cached(), 1);
        assert_eq!(pool.count_held(&hashes), 0);
        pool.check().unwrap();
    }

    #[test]
    fn allocation_is_consecutive_and_continues_runs() {
        let mut pool = BlockPool::new(8);
        let a = pool.allocate(3, None).unwrap();
        assert_eq!(a, vec![0, 1, 2]);
        // A new run leaves room for `a` to grow: the middle of the free 3..8.
        let b = pool.allocate(2, None).unwrap();
        assert_eq!(b, vec![4, 5]);
        assert_eq!(pool.allocate(1, Some(2)).unwrap(), vec![3]);
        pool.release(1);
        // `a` grows after its last block only if that is free: 4 is taken, so the longest
        // free stretch (6..8, its neighbour in use, no room to spare), then lowest free.
        assert_eq!(pool.allocate(3, Some(3)).unwrap(), vec![6, 7, 1]);
        assert_eq!(pool.in_use(), 8);
        pool.release(7);
        assert_eq!(pool.in_use(), 7);
        let err = pool.allocate(2, None).unwrap_err();
        assert_eq!(
            err,
            PoolExhausted {
                requested: 2,
                available: 1
            }
        );
        assert_eq!(pool.in_use(), 7, "a failed allocation takes nothing");
        pool.check().unwrap();
    }

    #[test]
    fn sequences_growing_in_turn_keep_their_blocks_consecutive() {
        // Four sequences admitted one after another, then decoding in lockstep, each
        // growing by a block in turn: the way a continuous batch fills the pool. Placing
        // each new run at the lowest free id would leave every later block scattered.
        let mut pool = BlockPool::new(64);
        let mut tables: Vec<Vec<BlockId>> =
            (0..4).map(|_| pool.allocate(3, None).unwrap()).collect();
        for _ in 0..5 {
            for table in &mut tables {
                let last = table.last().copied();
                table.extend(pool.allocate(1, last).unwrap());
            }
        }
        for table in &tables {
            assert!(
                table.windows(2).all(|w| w[1] == w[0] + 1),
                "scattered table {table:?}"
            );
        }
        pool.check().unwrap();
    }

    #[test]
    fn cached_prefixes_are_shared_then_evicted_lru() {
        let mut pool = BlockPool::new(4);
        let tokens: Vec<u32> = (0..8).collect();
        let hashes = BlockHash::chain_all(&tokens, 4);
        let blocks = pool.allocate(2, None).unwrap();
        for (&b, &h) in blocks.iter().zip(&hashes) {
            pool.register(b, h);
        }
        // A second sequence with the same prompt shares both blocks.
        let shared = pool.lookup_prefix(&hashes);
        assert_eq!(shared, blocks);
        shared.iter().for_each(|&b| pool.retain(b));
        assert_eq!(pool.refcount(0), 2);
        // Both finish: the blocks stay cached, available for admission.
        for &b in blocks.iter().chain(&shared) {
            pool.release(b);
        }
        assert_eq!((pool.cached(), pool.free(), pool.in_use()), (2, 2, 0));
        assert_eq!(pool.available(), 4);
        // A different prefix shares nothing; a longer one matches the cached start.
        let other = BlockHash::chain_all(&[9; 8], 4);
        assert!(pool.lookup_prefix(&other).is_empty());
        assert_eq!(pool.lookup_prefix(&hashes[..1]), vec![0]);
        // Needing all 4 evicts the cached blocks, least recently released first.
        let all = pool.allocate(4, None).unwrap();
        assert_eq!(all, vec![2, 3, 0, 1]);
        assert!(pool.lookup_prefix(&hashes).is_empty());
        pool.check().unwrap();
    }

    #[test]
    fn sharing_a_cached_prefix_counts_it_as_taken() {
        let mut pool = BlockPool::new(6);
        let hashes = BlockHash::chain_all(&[1, 2, 3, 4, 5, 6], 3);
        let old = pool.allocate(2, None).unwrap();
        for (&b, &h) in old.iter().zip(&hashes) {
            pool.register(b, h);
        }
        old.iter().for_each(|&b| pool.release(b));
        // Two cached, one free after another sequence takes three.
        let other = pool.allocate(3, None).unwrap();
        assert_eq!((pool.cached(), pool.free(), pool.available()), (2, 1, 3));
        let prefix = pool.lookup_prefix(&hashes);
        assert_eq!(prefix, old);
        // The prefix plus two fresh blocks would take 4 of the 3 available.
        assert_eq!(pool.admission_cost(&prefix, 2), 4);
        let err = pool.share_and_allocate(&prefix, 2).unwrap_err();
        assert_eq!((err.requested, err.available), (4, 3));
        assert_eq!(pool.in_use(), 3, "a refused admission takes nothing");
        pool.check().unwrap();
        // One fresh block fits: the table is the prefix, then the new block.
        let table = pool.share_and_allocate(&prefix, 1).unwrap();
        assert_eq!(&table[..2], &old[..]);
        assert_eq!(table.len(), 3);
        assert_eq!((pool.available(), pool.in_use()), (0, 6));
        // Sharing blocks already in use costs nothing.
        assert_eq!(pool.admission_cost(&prefix, 0), 0);
        for &b in table.iter().chain(&other) {
            pool.release(b);
        }
        pool.check().unwrap();
    }

    #[test]
    fn chained_hashes_depend_on_the_whole_prefix() {
        let a = BlockHash::chain_all(&[1, 2, 3, 4, 5, 6], 3);
        let b = BlockHash::chain_all(&[9, 2, 3, 4, 5, 6], 3);
        assert_eq!(a.len(), 2);
        assert_ne!(a[1], b[1], "same block, different parent");
        assert_eq!(
            a,
            BlockHash::chain_all(&[1, 2, 3, 4, 5, 6, 7], 3),
            "partial block ignored"
        );
    }
}
