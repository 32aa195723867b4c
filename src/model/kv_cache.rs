//! The paged KV cache: preallocated per-layer block tensors that hold every sequence's keys
//! and values.
//!
//! Storage per layer is one keys and one values array of shape
//! `[num_blocks * block_size, kv_heads, head_dim]` — "slots", where slot
//! `block * block_size + offset` holds one token. Which blocks belong to which sequence is
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
//! `head_dim`, plus per-group scales and biases with the same leading `[slot, kv_head]`
//! axes) keeps the same slot addressing.

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::{scatter_single, take_axis};
use mlx_rs::ops::zeros_dtype;
use mlx_rs::{Array, Dtype};

use super::config::ModelConfig;

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
        let num_blocks = budget_bytes / per_block;
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

    pub fn total_tokens(&self) -> usize {
        self.block_size * self.num_blocks
    }
}

fn dtype_bytes(dtype: Dtype) -> usize {
    match dtype {
        Dtype::Float32 => 4,
        _ => 2,
    }
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
}

impl PagedKvCache {
    /// Allocates (and materialises) the whole pool up front, so memory use is fixed from
    /// start-up on.
    pub fn new(
        config: KvCacheConfig,
        model: &ModelConfig,
        dtype: Dtype,
    ) -> Result<Self, Exception> {
        let slots = (config.num_blocks * config.block_size) as i32;
        let kv_heads = model.num_kv_heads as i32;
        let head_dim = model.head_dim as i32;
        let shape = [slots, kv_heads, head_dim];
        let layers = (0..model.num_layers)
            .map(|_| {
                Ok(LayerKv {
                    keys: zeros_dtype(&shape, dtype)?,
                    values: zeros_dtype(&shape, dtype)?,
                })
            })
            .collect::<Result<Vec<_>, Exception>>()?;
        let cache = PagedKvCache {
            layers,
            config,
            kv_heads,
            head_dim,
            dtype,
        };
        mlx_rs::transforms::eval(cache.arrays())?;
        Ok(cache)
    }

    pub fn config(&self) -> KvCacheConfig {
        self.config
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
        let update_shape = [n, 1, self.kv_heads, self.head_dim];
        let entry = &mut self.layers[layer];
        // Move the old arrays out so the scatter holds their only reference and MLX can
        // donate the buffer instead of copying the pool.
        let old_keys = std::mem::replace(&mut entry.keys, Array::from_int(0));
        entry.keys = scatter_single(old_keys, slots, keys.reshape(&update_shape)?, 0)?;
        let old_values = std::mem::replace(&mut entry.values, Array::from_int(0));
        entry.values = scatter_single(old_values, slots, values.reshape(&update_shape)?, 0)?;
        Ok(())
    }

    /// Gathers whole blocks for a batch: `block_ids` is `[B, blocks_per_seq]` int32; returns
    /// keys and values as `[B, kv_heads, blocks_per_seq * block_size, head_dim]`, the layout
    /// attention wants.
    pub fn gather(&self, layer: usize, block_ids: &Array) -> Result<(Array, Array), Exception> {
        let batch = block_ids.dim(0);
        let blocks = block_ids.dim(1);
        let block_size = self.config.block_size as i32;
        let block_view = [
            self.config.num_blocks as i32,
            block_size,
            self.kv_heads,
            self.head_dim,
        ];
        let seq_shape = [batch, blocks * block_size, self.kv_heads, self.head_dim];
        let gather = |pool: &Array| -> Result<Array, Exception> {
            take_axis(pool.reshape(&block_view)?, block_ids, 0)?
                .reshape(&seq_shape)?
                .transpose_axes(&[0, 2, 1, 3])
        };
        let entry = &self.layers[layer];
        Ok((gather(&entry.keys)?, gather(&entry.values)?))
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
