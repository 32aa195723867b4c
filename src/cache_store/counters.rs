//! What the store counts for `/metrics` and `/v1/stats`: written from its threads and the
//! engine thread, read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use super::block_file::Miss;

/// Why a block that should have been written was not. Each is a documented bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// One block is larger than the whole `--kv-store-max-gb` budget.
    OverBudget,
    /// Writing it would leave less than the free-disk headroom.
    DiskFull,
    /// The file system refused the write.
    WriteError,
    /// It waited for room in the write queue and was evicted from the pool meanwhile.
    EvictedBeforeWrite,
}

impl DropReason {
    pub const ALL: [DropReason; 4] = [
        DropReason::OverBudget,
        DropReason::DiskFull,
        DropReason::WriteError,
        DropReason::EvictedBeforeWrite,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::OverBudget => "over_budget",
            DropReason::DiskFull => "disk_full",
            DropReason::WriteError => "write_error",
            DropReason::EvictedBeforeWrite => "evicted_before_write",
        }
    }
}

/// Monotonic counters and the write queue's depth.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub blocks_written: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Time the writer spent encoding and writing blocks, in nanoseconds (write MB/s).
    pub write_nanos: AtomicU64,
    pub blocks_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Misses, indexed as [`Miss::LABELS`].
    misses: [AtomicU64; 5],
    /// Drops, indexed as [`DropReason::ALL`].
    drops: [AtomicU64; 4],
    /// Blocks that found the write queue full and waited in the engine for room.
    pub deferred: AtomicU64,
    /// Files removed to stay within the budget.
    pub evicted: AtomicU64,
    /// Files moved to quarantine since start-up.
    pub quarantined: AtomicU64,
    /// Leftover temporaries removed at start-up.
    pub leftovers_removed: AtomicU64,
    /// Blocks and bytes handed to the writer and not yet written.
    pub queued_blocks: AtomicU64,
    pub queued_bytes: AtomicU64,
}

impl StoreCounters {
    pub fn miss(&self, miss: &Miss) {
        if let Some(i) = Miss::LABELS.iter().position(|&l| l == miss.label()) {
            self.misses[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn drop_write(&self, reason: DropReason) {
        if let Some(i) = DropReason::ALL.iter().position(|&d| d == reason) {
            self.drops[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(label, count)` for every miss reason.
    pub fn misses(&self) -> Vec<(&'static str, u64)> {
        Miss::LABELS
            .iter()
            .zip(&self.misses)
            .map(|(&label, n)| (label, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// `(label, count)` for every drop reason.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .zip(&self.drops)
            .map(|(d, n)| (d.label(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
