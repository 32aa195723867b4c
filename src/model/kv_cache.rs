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
use mlx_rs::ops::indexing::{TryIndexOp, scatter_single, take_axis};
use mlx_rs::ops::zeros_dtype;
use mlx_rs::{Array, Dtype};

use super::ModelError;
use super::batch::KeyLocation;
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
    /// head_dim]`: a view into the pool when its blocks are consecutive, else a gathered
    /// copy of its blocks.
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

    /// Every pool array, to be evaluated together with a step's outputs so that no lazy
    /// graph (holding old pool versions) survives the step.
    pub fn arrays(&self) -> Vec<&Array> {
        self.layers
            .iter()
            .flat_map(|layer| [&layer.keys, &layer.values])
            .collect()
    }
}
