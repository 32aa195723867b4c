//! The paged KV cache: preallocated per-layer block tensors that hold every sequence's keys
//! and values.
//!
//! Storage per layer is one keys and one values array of shape
//! `[kv_heads, num_blocks * block_size, head_dim]` — "slots", where slot
//! `block * block_size + offset` holds one token. Slots are the middle axis so that a
//! gathered sequence is, per head, one contiguous `[tokens, head_dim]` matrix: attention's
//! matmuls then read it in place instead of copying it again. Which blocks belong to which sequence is
//! the caller's business (block tables, see `model::batch`); this type only writes slots and
//! gathers blocks.
//!
//! Two rules from MLX make this fast:
//! - **in place**: a write replaces the layer's array with a scatter of the old one. When
//!   nothing else references the old array, MLX reuses its buffer (tens of µs); if any
//!   other handle survives, it copies the whole pool (~100 ms for 200 MB). So the cache is
//!   the only owner of its arrays, and no gathered view outlives a step.
//! - **one thread**: the arrays belong to the thread that created them (the engine thread).
//!
//! The head dim is the innermost axis so that a later quantized layout (data packed along
//! `head_dim`, plus per-group scales and biases under the same `[kv_head, slot]` axes) keeps
//! the same slot addressing.

use mlx_rs::error::Exception;
use mlx_rs::ops::concatenate;
use mlx_rs::ops::indexing::{TryIndexOp, scatter_single, take_axis};
use mlx_rs::{Array, Dtype};

use super::ModelError;
use super::batch::{DecodeBatch, KeyLocation};
use super::config::ModelConfig;
use super::pool_memory::{populate, zeroed_on_demand};

/// Geometry of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Tokens per block: the unit of allocation, sharing and persistence.
    pub block_size: usize,
    pub num_blocks: usize,
}

impl KvCacheConfig {
    /// The largest pool that fits `budget_bytes` for this model at `dtype`.
    /// Fails when not even one block fits.
    pub fn from_budget(
        budget_bytes: usize,
        block_size: usize,
        model: &ModelConfig,
        dtype: Dtype,
    ) -> Result<Self, String> {
        if block_size == 0 {
            return Err("block size must be at least 1".to_owned());
        }
        let per_block = Self::bytes_per_block(block_size, model, dtype);
        // Slot indices are 32-bit in MLX: cap the pool there rather than wrap.
        let num_blocks = (budget_bytes / per_block).min(i32::MAX as usize / block_size);
        if num_blocks == 0 {
            return Err(format!(
                "a KV budget of {budget_bytes} bytes holds no block: one block of {block_size} \
                 tokens needs {per_block} bytes for this model"
            ));
        }
        Ok(KvCacheConfig {
            block_size,
            num_blocks,
        })
    }

    /// Bytes one block occupies across all layers (keys and values).
    pub fn bytes_per_block(block_size: usize, model: &ModelConfig, dtype: Dtype) -> usize {
        block_size * model.num_layers * model.kv_bytes_per_token_per_layer(dtype_bytes(dtype))
    }

    /// Checks the geometry: at least one block of at least one token, and every slot
    /// addressable with MLX's 32-bit indices.
    pub fn validate(&self) -> Result<(), String> {
        if self.block_size == 0 || self.num_blocks == 0 {
            return Err(format!(
                "the KV pool needs at least one block of at least one token \
                 (got {} blocks of {})",
                self.num_blocks, self.block_size
            ));
        }
        match self.num_blocks.checked_mul(self.block_size) {
            Some(slots) if slots <= i32::MAX as usize => Ok(()),
            _ => Err(format!(
                "{} blocks of {} tokens exceed the 2^31 slots MLX can index",
                self.num_blocks, self.block_size
            )),
        }
    }

    pub fn total_tokens(&self) -> usize {
        self.block_size * self.num_blocks
    }
}

pub(super) fn dtype_bytes(dtype: Dtype) -> usize {
    match dtype {
        Dtype::Float32 => 4,
        _ => 2,
    }
}

/// One block's keys and values across all layers, as bytes (see
/// [`PagedKvCache::read_blocks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockKv {
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
}

struct LayerKv {
    keys: Array,
    values: Array,
}

/// Block tensors for every layer. Owned by the engine thread; see the module docs for the
/// ownership rule that keeps writes in place.
pub struct PagedKvCache {
    layers: Vec<LayerKv>,
    config: KvCacheConfig,
    kv_heads: i32,
    head_dim: i32,
    dtype: Dtype,
    /// Per block: its pages were made resident ([`Self::populate_before_writes`]).
    populated: Vec<bool>,
}

impl PagedKvCache {
    /// Reserves the whole pool up front, so its size bounds memory from start-up on; pages
    /// become resident as blocks are first written (`pool_memory`).
    /// Fails when the geometry is empty or too large for MLX's 32-bit indices.
    pub fn new(
        config: KvCacheConfig,
        model: &ModelConfig,
        dtype: Dtype,
    ) -> Result<Self, ModelError> {
        config.validate().map_err(ModelError::KvCache)?;
        let slots = (config.num_blocks * config.block_size) as i32;
        let kv_heads = model.num_kv_heads as i32;
        let head_dim = model.head_dim as i32;
        let shape = [kv_heads, slots, head_dim];
        let layers = (0..model.num_layers)
            .map(|_| {
                Ok(LayerKv {
                    keys: zeroed_on_demand(&shape, dtype)?,
                    values: zeroed_on_demand(&shape, dtype)?,
                })
            })
            .collect::<Result<Vec<_>, Exception>>()?;
        // `zeroed_on_demand` evaluates each array: the pool exists in full from here on.
        Ok(PagedKvCache {
            layers,
            config,
            kv_heads,
            head_dim,
            dtype,
            populated: vec![false; config.num_blocks],
        })
    }

    pub fn config(&self) -> KvCacheConfig {
        self.config
    }

    /// Makes the memory of every block that `slots` (a step's write slots) fall in
    /// resident before the step writes there, once per block for the pool's lifetime, and
    /// returns how many blocks that took. The pool's pages start released
    /// ([`zeroed_on_demand`]), so a block's first write would fault in its pages (for the
    /// default model about one per KV head, layer, keys and values: 180) in the middle of a
    /// step. Measured on this project's Linux machine, 8 decoders crossing into new blocks
    /// made that step about 30 ms slower, where populating the same pages beforehand took
    /// 3–4 ms (docs/performance.md, item 10). The contents stay as they are.
    pub fn populate_before_writes(&mut self, slots: &[i32]) -> usize {
        let block_size = self.config.block_size;
        let mut fresh: Vec<usize> = slots
            .iter()
            .map(|&slot| slot as usize / block_size)
            .filter(|&block| block < self.populated.len() && !self.populated[block])
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        // A step that failed after its writes were built leaves the pool unevaluated (no
        // buffer yet); evaluating it is a no-op otherwise. If even that fails, the writes
        // fault their pages in as before.
        if fresh.is_empty() || mlx_rs::transforms::eval(self.arrays()).is_err() {
            return 0;
        }
        // Every layer's keys and values share one geometry, so one list of byte ranges
        // (each fresh block of each KV head) serves them all.
        let element = dtype_bytes(self.dtype);
        let slots_per_head = self.config.num_blocks * block_size;
        let head_dim = self.head_dim as usize;
        let len = block_size * head_dim * element;
        let ranges: Vec<(usize, usize)> = fresh
            .iter()
            .flat_map(|&block| {
                (0..self.kv_heads as usize).map(move |head| {
                    let slot = head * slots_per_head + block * block_size;
                    (slot * head_dim * element, len)
                })
            })
            .collect();
        for array in self.arrays() {
            populate(array, &ranges);
        }
        for &block in &fresh {
            self.populated[block] = true;
        }
        fresh.len()
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Writes `keys`/`values` (`[N, kv_heads, head_dim]`) of N new tokens into `slots`
    /// (`[N]` int32) of `layer`. Lazy: the write happens when the step is evaluated.
    pub fn write(
        &mut self,
        layer: usize,
        slots: &Array,
        keys: &Array,
        values: &Array,
    ) -> Result<(), Exception> {
        let n = slots.dim(0);
        // scatter along the slot axis wants `[N, kv_heads, 1, head_dim]`.
        let update_shape = [n, self.kv_heads, 1, self.head_dim];
        let keys = keys.reshape(&update_shape)?;
        let values = values.reshape(&update_shape)?;
        let entry = &mut self.layers[layer];
        // Both scatters are built before either array is replaced, so an error leaves the
        // pool as it was. Assigning drops our handle to the old array: by evaluation time
        // the scatter holds its only reference and MLX reuses the buffer in place.
        let new_keys = scatter_single(&entry.keys, slots, &keys, 1)?;
        let new_values = scatter_single(&entry.values, slots, &values, 1)?;
        entry.keys = new_keys;
        entry.values = new_values;
        Ok(())
    }

    /// One sequence's first `len` keys and values in `layer`, as `[1, kv_heads, len,
    /// head_dim]`: a view into the pool when its blocks are consecutive, else a copy of its
    /// runs of blocks (concatenated) or of its blocks (gathered).
    pub fn sequence(
        &self,
        layer: usize,
        location: &KeyLocation,
        len: usize,
    ) -> Result<(Array, Array), Exception> {
        let len = len as i32;
        let read = |pool: &Array| -> Result<Array, Exception> {
            let keys = match location {
                KeyLocation::Run { first_slot } => {
                    let first = *first_slot as i32;
                    pool.try_index((.., first..first + len, ..))?
                }
                KeyLocation::Runs(runs) => {
                    let slices = runs
                        .iter()
                        .map(|&(first, tokens)| {
                            let (first, tokens) = (first as i32, tokens as i32);
                            pool.try_index((.., first..first + tokens, ..))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    concatenate(&slices, 1)?
                }
                KeyLocation::Blocks(blocks) => {
                    let block_size = self.config.block_size as i32;
                    let count = blocks.len() as i32;
                    let by_block = [
                        self.kv_heads,
                        self.config.num_blocks as i32,
                        block_size,
                        self.head_dim,
                    ];
                    take_axis(
                        pool.reshape(&by_block)?,
                        Array::from_slice(blocks, &[count]),
                        1,
                    )?
                    .reshape(&[self.kv_heads, count * block_size, self.head_dim])?
                    .try_index((.., ..len, ..))?
                }
            };
            keys.expand_dims(0)
        };
        let entry = &self.layers[layer];
        Ok((read(&entry.keys)?, read(&entry.values)?))
    }

    /// The index [`Self::batched`] reads a [`DecodeBatch`] with: built once per step and
    /// shared by every layer. Each entry names one block of one KV head in the pool viewed
    /// as `[kv_heads * num_blocks, block_size * head_dim]`, where a block's keys for one
    /// head are contiguous, so the gather copies whole rows instead of walking elements.
    pub fn batch_index(&self, batch: &DecodeBatch) -> Array {
        let num_blocks = self.config.num_blocks as i32;
        let index: Vec<i32> = (0..self.kv_heads)
            .flat_map(|head| batch.blocks.iter().map(move |&b| head * num_blocks + b))
            .collect();
        Array::from_slice(&index, &[index.len() as i32])
    }

    /// The keys and values of a [`DecodeBatch`] in `layer`, as `[B, kv_heads, M *
    /// block_size, head_dim]` (padding included), read with `index` from
    /// [`Self::batch_index`]: one gather each.
    pub fn batched(
        &self,
        layer: usize,
        batch: &DecodeBatch,
        index: &Array,
    ) -> Result<(Array, Array), Exception> {
        let block_size = self.config.block_size as i32;
        let rows = [
            self.kv_heads * self.config.num_blocks as i32,
            block_size * self.head_dim,
        ];
        let gathered = [
            self.kv_heads,
            batch.batch as i32,
            batch.blocks_per_sequence as i32 * block_size,
            self.head_dim,
        ];
        let read = |pool: &Array| -> Result<Array, Exception> {
            // [kv_heads, B, M * block_size, head_dim] -> [B, kv_heads, ...]: a view whose
            // matrices stay row-contiguous, so attention's matmuls read them in place.
            take_axis(pool.reshape(&rows)?, index, 0)?
                .reshape(&gathered)?
                .transpose_axes(&[1, 0, 2, 3])
        };
        let entry = &self.layers[layer];
        Ok((read(&entry.keys)?, read(&entry.values)?))
    }

    /// The KV of whole blocks, for the disk store: per block, its keys and its values as
    /// `[layers, kv_heads, block_size, head_dim]` in native-endian bytes of the pool's
    /// dtype. Evaluates the copies at once and keeps no handle on the pool.
    pub fn read_blocks(&self, blocks: &[u32]) -> Result<Vec<BlockKv>, Exception> {
        let n = blocks.len();
        let block_size = self.config.block_size;
        let (heads, head_dim) = (self.kv_heads as usize, self.head_dim as usize);
        let by_block = [
            self.kv_heads,
            self.config.num_blocks as i32,
            block_size as i32,
            self.head_dim,
        ];
        let index = Array::from_slice(blocks, &[n as i32]);
        let mut gathered = Vec::with_capacity(2 * self.layers.len());
        for layer in &self.layers {
            for pool in [&layer.keys, &layer.values] {
                // [kv_heads, n, block_size, head_dim], as raw bytes.
                gathered.push(
                    take_axis(pool.reshape(&by_block)?, &index, 1)?
                        .contiguous()?
                        .view::<u8>()?,
                );
            }
        }
        mlx_rs::transforms::eval(gathered.iter())?;
        let chunk = block_size * head_dim * dtype_bytes(self.dtype);
        let per_block = self.layers.len() * heads * chunk;
        let mut out: Vec<BlockKv> = (0..n)
            .map(|_| BlockKv {
                keys: Vec::with_capacity(per_block),
                values: Vec::with_capacity(per_block),
            })
            .collect();
        for (i, array) in gathered.iter().enumerate() {
            let bytes = array
                .try_as_slice::<u8>()
                .map_err(|e| Exception::custom(e.to_string()))?;
            for (j, block) in out.iter_mut().enumerate() {
                let target = if i % 2 == 0 {
                    &mut block.keys
                } else {
                    &mut block.values
                };
                for head in 0..heads {
                    let at = (head * n + j) * chunk;
                    target.extend_from_slice(&bytes[at..at + chunk]);
                }
            }
        }
        Ok(out)
    }

    /// Writes whole blocks read back from the disk store (the layout [`Self::read_blocks`]
    /// returns) into `blocks`, and evaluates the pool so the write happens in place now.
    pub fn write_blocks(
        &mut self,
        blocks: &[u32],
        data: &[(&[u8], &[u8])],
    ) -> Result<(), ModelError> {
        let block_size = self.config.block_size;
        let (heads, head_dim) = (self.kv_heads as usize, self.head_dim as usize);
        let elem = dtype_bytes(self.dtype);
        let row = head_dim * elem;
        let chunk = block_size * row;
        let per_block = self.layers.len() * heads * chunk;
        if blocks.len() != data.len()
            || data
                .iter()
                .any(|(k, v)| k.len() != per_block || v.len() != per_block)
        {
            return Err(ModelError::KvCache(format!(
                "restored blocks must be {per_block} bytes each for keys and values"
            )));
        }
        let tokens = blocks.len() * block_size;
        let slots: Vec<i32> = blocks
            .iter()
            .flat_map(|&b| (0..block_size).map(move |o| (b as usize * block_size + o) as i32))
            .collect();
        let slots = Array::from_slice(&slots, &[tokens as i32]);
        for layer in 0..self.layers.len() {
            // Token-major `[tokens, kv_heads, head_dim]`, as `write` takes new tokens.
            let mut keys = vec![0u8; tokens * heads * row];
            let mut values = vec![0u8; tokens * heads * row];
            for (j, (k, v)) in data.iter().enumerate() {
                for head in 0..heads {
                    let from = (layer * heads + head) * chunk;
                    for offset in 0..block_size {
                        let to = ((j * block_size + offset) * heads + head) * row;
                        let src = from + offset * row;
                        keys[to..to + row].copy_from_slice(&k[src..src + row]);
                        values[to..to + row].copy_from_slice(&v[src..src + row]);
                    }
                }
            }
            let shape = [tokens as i32, self.kv_heads, row as i32];
            let keys = Array::from_slice(&keys, &shape).view_dtype(self.dtype)?;
            let values = Array::from_slice(&values, &shape).view_dtype(self.dtype)?;
            self.write(layer, &slots, &keys, &values)?;
        }
        mlx_rs::transforms::eval(self.arrays())?;
        Ok(())
    }

    /// Every pool array, to be evaluated together with a step's outputs so that no lazy
    /// graph (holding old pool versions) survives the step.
    pub fn arrays(&self) -> Vec<&Array> {
        self.layers
            .iter()
            .flat_map(|layer| [&layer.keys, &layer.values])
            .collect()
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::model::config::Architecture;
    use crate::model::pool_memory::{buffer_address, page_size};

    fn model(head_dim: usize) -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 8,
            hidden_size: 2 * head_dim,
            intermediate_size: 8,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 2,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            context_length: 4096,
            tie_word_embeddings: true,
            attention_bias: false,
            output_bias: false,
            qk_norm: false,
        }
    }

    /// Whether each page of `[start, start + len)` is resident, from `mincore`.
    fn resident(start: usize, len: usize) -> Vec<bool> {
        let page = page_size();
        let (first, end) = (start / page * page, (start + len).next_multiple_of(page));
        let mut flags = vec![0u8; (end - first) / page];
        // SAFETY: `flags` has one byte per page of the range, which lies in a live buffer.
        let status =
            unsafe { libc::mincore(first as *mut libc::c_void, end - first, flags.as_mut_ptr()) };
        assert_eq!(status, 0, "{}", std::io::Error::last_os_error());
        flags.iter().map(|flag| flag & 1 == 1).collect()
    }

    /// 64 blocks of 16 tokens, 2 layers, 2 KV heads of 64 f32: one block of one head is
    /// 16 × 64 × 4 bytes = 4 KiB, a page per block, head and layer.
    fn pool() -> PagedKvCache {
        let config = KvCacheConfig {
            block_size: 16,
            num_blocks: 64,
        };
        PagedKvCache::new(config, &model(64), Dtype::Float32).unwrap()
    }

    #[test]
    fn blocks_are_populated_once_before_their_first_write_and_still_read_zeros() {
        crate::device::use_test_device();
        let mut cache = pool();
        let keys = buffer_address(&cache.layers[1].keys).unwrap();
        let page_of_block = |block: usize| keys + block * 4096 + 2048;
        assert_eq!(resident(page_of_block(40), 1), [false]);

        // Slots 640..=642 and 700 lie in blocks 40 and 43.
        assert_eq!(cache.populate_before_writes(&[640, 641, 642, 700]), 2);
        assert_eq!(resident(page_of_block(40), 1), [true]);
        assert_eq!(resident(page_of_block(43), 1), [true]);
        assert_eq!(resident(page_of_block(50), 1), [false]);
        // Each block once: the second time finds nothing left to do.
        assert_eq!(cache.populate_before_writes(&[643, 700]), 0);

        let blocks = cache.read_blocks(&[40, 43]).unwrap();
        assert!(
            blocks
                .iter()
                .all(|b| b.keys.iter().chain(&b.values).all(|&x| x == 0))
        );
    }

    #[test]
    fn a_pool_left_unevaluated_by_a_failed_step_is_evaluated_before_populating() {
        crate::device::use_test_device();
        let mut cache = pool();
        // A write built but never evaluated, as when a step fails after its writes.
        let ones = Array::from_slice(&[1.0f32; 128], &[1, 2, 64]);
        let slot = Array::from_slice(&[5i32], &[1]);
        cache.write(0, &slot, &ones, &ones).unwrap();
        assert_eq!(cache.populate_before_writes(&[800]), 1);
        let block = &cache.read_blocks(&[0]).unwrap()[0];
        assert!(block.keys.iter().any(|&byte| byte != 0));
    }
}
