//! The engine thread's side of the disk store: copying full blocks out of the pool for
//! the writer (write-behind), writing restored blocks back in, and persisting what is
//! still only in the pool at shutdown. The engine never waits for the disk on a step: a
//! copy that does not fit the write queue is deferred, and offered again while its block
//! still holds it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::block_pool::BlockHash;
use super::scheduler::{FullBlock, Scheduler};
use crate::cache_store::{AgentManifest, BlockRecord, DropReason, KvStore, counters};
use crate::model::kv_cache::PagedKvCache;

/// What [`Persistence::persist_all`] did at shutdown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PersistReport {
    /// Blocks handed to the writer by this call (those not yet on disk).
    pub blocks: usize,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Everything queued reached the disk within the timeout.
    pub complete: bool,
}

pub(crate) struct Persistence {
    store: Arc<KvStore>,
    /// Claimed blocks that found the write queue full, oldest first.
    deferred: VecDeque<FullBlock>,
}

impl Persistence {
    pub(crate) fn new(store: Arc<KvStore>) -> Persistence {
        Persistence {
            store,
            deferred: VecDeque::new(),
        }
    }

    pub(crate) fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    /// Offers full blocks for writing: those not on disk or queued yet are copied out of
    /// the pool now while the write queue has room, the rest deferred.
    pub(crate) fn offer(&mut self, blocks: Vec<FullBlock>, cache: &PagedKvCache) {
        let claimed: Vec<FullBlock> = blocks
            .into_iter()
            .filter(|b| self.store.claim(b.hash))
            .collect();
        if claimed.is_empty() {
            return;
        }
        let mut claimed = claimed.into_iter();
        let now: Vec<FullBlock> = claimed.by_ref().take(self.store.room()).collect();
        let later: Vec<FullBlock> = claimed.collect();
        counters::add(&self.store.counters().deferred, later.len() as u64);
        self.deferred.extend(later);
        self.copy_out(now, cache);
    }

    /// Writes deferred blocks the queue now has room for; forgets (and counts) those whose
    /// pool block was reused meanwhile.
    pub(crate) fn retry(&mut self, cache: &PagedKvCache, scheduler: &Scheduler) {
        self.retry_bounded(cache, scheduler, true);
    }

    /// Queues deferred blocks still in the pool (within the queue's bound if `bounded`);
    /// returns how many.
    fn retry_bounded(
        &mut self,
        cache: &PagedKvCache,
        scheduler: &Scheduler,
        bounded: bool,
    ) -> usize {
        let room = if bounded {
            self.store.room()
        } else {
            usize::MAX
        };
        let mut ready = Vec::new();
        while let Some(block) = self.deferred.front() {
            if !scheduler.holds(block.block, block.hash) {
                let gone = self.deferred.pop_front().map(|b| b.hash);
                if let Some(hash) = gone {
                    self.drop_claim(&hash);
                }
                continue;
            }
            if ready.len() >= room {
                break;
            }
            ready.extend(self.deferred.pop_front());
        }
        let queued = ready.len();
        self.copy_out(ready, cache);
        queued
    }

    fn drop_claim(&self, hash: &BlockHash) {
        self.store.unclaim(hash);
        self.store
            .counters()
            .drop_write(DropReason::EvictedBeforeWrite);
    }

    /// Copies `blocks` out of the pool and queues them for the writer.
    fn copy_out(&self, blocks: Vec<FullBlock>, cache: &PagedKvCache) {
        if blocks.is_empty() {
            return;
        }
        let ids: Vec<u32> = blocks.iter().map(|b| b.block).collect();
        match cache.read_blocks(&ids) {
            Ok(data) => {
                for (block, kv) in blocks.into_iter().zip(data) {
                    self.store.write(BlockRecord {
                        hash: block.hash,
                        parent: block.parent,
                        tokens: block.tokens,
                        keys: kv.keys,
                        values: kv.values,
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot copy KV blocks out of the pool for the disk store");
                for block in blocks {
                    self.store.unclaim(&block.hash);
                    self.store.counters().drop_write(DropReason::WriteError);
                }
            }
        }
    }

    /// Shutdown: queues every deferred block still in the pool (whatever the queue's
    /// bound) and waits for the writer, at most `timeout`.
    pub(crate) fn persist_all(
        &mut self,
        cache: &PagedKvCache,
        scheduler: &Scheduler,
        timeout: Duration,
    ) -> PersistReport {
        let started = Instant::now();
        let queued_before = counters::get(&self.store.counters().queued_blocks) as usize;
        let blocks = queued_before + self.retry_bounded(cache, scheduler, false);
        let bytes = counters::get(&self.store.counters().queued_bytes);
        let complete = self.store.flush(timeout);
        PersistReport {
            blocks,
            bytes,
            elapsed: started.elapsed(),
            complete,
        }
    }

    /// Records an agent's latest context (its computed full blocks) after its request.
    pub(crate) fn write_manifest(&self, agent: &str, hashes: &[BlockHash], tokens: Vec<u32>) {
        let block_bytes = self.store.identity().layout.block_bytes() as u64;
        self.store.write_manifest(AgentManifest {
            agent_id: agent.to_owned(),
            block_hashes: hashes.iter().map(BlockHash::to_hex).collect(),
            token_ids: tokens,
            last_used_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            block_bytes,
        });
    }
}
