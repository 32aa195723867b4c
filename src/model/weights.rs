//! Weight tensors as the forward pass uses them, and how they are stored.
//!
//! Loaders (GGUF, Hugging Face folders) hand over a [`TensorMap`] keyed by Hugging Face
//! parameter names; quantized tensors come in MLX's layout (`.weight` packed u32 plus
//! `.scales` and `.biases`). The [`WeightMode`] decides whether they stay quantized or are
//! expanded to a float dtype once, at load time.

use std::collections::HashMap;

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::take_axis;
use mlx_rs::ops::{add, dequantize, matmul, quantized_matmul};
use mlx_rs::{Array, Dtype};

use super::ModelError;
use crate::device::ComputeDevice;

/// How weights are held in memory, and with it the compute dtype.
///
/// On Linux CPU, MLX runs f32 matmuls through BLAS (OpenBLAS here) and everything else
/// through slow generic loops, so dequantizing to f32 once is by far the fastest path.
/// On Apple GPUs, quantized kernels are fast and memory is the constraint, so weights stay
/// quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// Expand everything to f32.
    F32,
    /// Expand everything to f16.
    F16,
    /// Expand everything to bf16.
    Bf16,
    /// Keep quantized tensors quantized; activations and float tensors take the
    /// checkpoint's 16-bit float type, or bf16 (see [`WeightMode::compute_dtype`]).
    Quantized,
}

impl WeightMode {
    /// What `--weights auto` means on `device`: `Quantized` on a GPU, `F32` on the CPU.
    pub fn for_device(device: ComputeDevice) -> Self {
        match device {
            ComputeDevice::Gpu => WeightMode::Quantized,
            ComputeDevice::Cpu => WeightMode::F32,
        }
    }

    /// Dtype of activations, float weights and the KV cache, for a checkpoint whose float
    /// tensors are stored as `stored` (its norm weights: every checkpoint has them, and
    /// they keep the training dtype).
    ///
    /// `Quantized` computes in `stored` when that is f16 or bf16, and in bf16 otherwise (f32
    /// checkpoints, and GGUF files, whose norms are always f32). Never f16 by default: f16
    /// tops out at 65504, and some Qwen2/Qwen3 checkpoints trained in bf16 reach larger
    /// activations, which overflow to infinity; bf16 has f32's range.
    pub fn compute_dtype(self, stored: Dtype) -> Dtype {
        match self {
            WeightMode::F32 => Dtype::Float32,
            WeightMode::F16 => Dtype::Float16,
            WeightMode::Bf16 => Dtype::Bfloat16,
            WeightMode::Quantized => match stored {
                Dtype::Float16 | Dtype::Bfloat16 => stored,
                _ => Dtype::Bfloat16,
            },
        }
    }
}

/// The `--weights` setting. `Auto` stays unresolved until the model loads, after
/// `--device` has set MLX's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightChoice {
    Auto,
    Fixed(WeightMode),
}

impl WeightChoice {
    /// Parses `auto`, `f32`, `f16`, `bf16` or `quantized`.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "auto" => WeightChoice::Auto,
            "f32" => WeightChoice::Fixed(WeightMode::F32),
            "f16" => WeightChoice::Fixed(WeightMode::F16),
            "bf16" => WeightChoice::Fixed(WeightMode::Bf16),
            "quantized" => WeightChoice::Fixed(WeightMode::Quantized),
            _ => return None,
        })
    }

    /// The mode to load with on `device`.
    pub fn resolve(self, device: ComputeDevice) -> WeightMode {
        match self {
            WeightChoice::Auto => WeightMode::for_device(device),
            WeightChoice::Fixed(mode) => mode,
        }
    }
}

/// Group quantization parameters of one tensor (MLX affine layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    pub group_size: i32,
    pub bits: i32,
}

impl QuantSpec {
    /// The bit widths MLX's affine quantization packs.
    pub const BITS: [i32; 6] = [2, 3, 4, 5, 6, 8];

    /// Whether MLX can unpack this at all (positive group size, supported width).
    pub fn is_valid(&self) -> bool {
        self.group_size > 0 && Self::BITS.contains(&self.bits)
    }
}

/// Parameters by Hugging Face name, plus how quantized ones were packed.
pub struct TensorMap {
    tensors: HashMap<String, Array>,
    /// Quantization of every tensor that has `.scales` (by the tensor's prefix, e.g.
    /// `model.layers.0.self_attn.q_proj`).
    quant: HashMap<String, QuantSpec>,
    /// Where the tensors came from, for error messages.
    source: String,
}

impl TensorMap {
    pub fn new(source: impl Into<String>) -> Self {
        TensorMap {
            tensors: HashMap::new(),
            quant: HashMap::new(),
            source: source.into(),
        }
    }

    pub fn insert(&mut self, name: String, tensor: Array) {
        self.tensors.insert(name, tensor);
    }

    pub fn set_quant(&mut self, prefix: String, spec: QuantSpec) {
        self.quant.insert(prefix, spec);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor by name (e.g. to write the map back out as a checkpoint).
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Array)> {
        self.tensors.iter()
    }

    /// The quantization of the tensor group `prefix` (`prefix.weight/scales/biases`).
    pub fn quant_spec(&self, prefix: &str) -> Option<QuantSpec> {
        self.quant.get(prefix).copied()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Drops the tensor group `prefix` (`.weight`, and `.scales`/`.biases`/`.bias` if any).
    pub fn discard(&mut self, prefix: &str) {
        for suffix in ["weight", "scales", "biases", "bias"] {
            self.tensors.remove(&format!("{prefix}.{suffix}"));
        }
        self.quant.remove(prefix);
    }

    /// Fails when tensors are left over after the model took what it needs (buffers such
    /// as `rotary_emb.inv_freq`, which some checkpoints carry, do not count).
    pub fn expect_all_used(&self) -> Result<(), ModelError> {
        let mut unused: Vec<&str> = self
            .tensors
            .keys()
            .map(String::as_str)
            .filter(|name| !name.ends_with("rotary_emb.inv_freq"))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort_unstable();
        let count = unused.len();
        unused.truncate(5);
        Err(ModelError::UnusedTensors {
            source_name: self.source.clone(),
            count,
            examples: unused.join(", "),
        })
    }

    fn take(&mut self, name: &str) -> Result<Array, ModelError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                source_name: self.source.clone(),
                name: name.to_owned(),
            })
    }

    fn shape_error(&self, name: &str, expected: &[i32], found: &[i32]) -> ModelError {
        ModelError::TensorShape {
            source_name: self.source.clone(),
            name: name.to_owned(),
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        }
    }

    /// The dtype tensor `name` is stored in (not taken).
    pub fn stored_dtype(&self, name: &str) -> Result<Dtype, ModelError> {
        self.tensors
            .get(name)
            .map(Array::dtype)
            .ok_or_else(|| ModelError::MissingTensor {
                source_name: self.source.clone(),
                name: name.to_owned(),
            })
    }

    /// A 1-D float parameter (norm weights, biases) in the compute dtype `dtype`.
    pub fn vector(&mut self, name: &str, len: usize, dtype: Dtype) -> Result<Array, ModelError> {
        let tensor = self.take(name)?;
        if tensor.shape() != [len as i32] {
            return Err(self.shape_error(name, &[len as i32], tensor.shape()));
        }
        Ok(tensor.as_dtype(dtype)?)
    }

    /// A `[out, in]` projection `prefix.weight` (+ `prefix.bias` when `bias`), quantized or
    /// dense as stored, then kept quantized or expanded according to `mode`, with its float
    /// parts in the compute dtype `dtype`.
    pub fn linear(
        &mut self,
        prefix: &str,
        out_features: usize,
        in_features: usize,
        bias: bool,
        mode: WeightMode,
        dtype: Dtype,
    ) -> Result<Linear, ModelError> {
        let weight_name = format!("{prefix}.weight");
        let weight = self.take(&weight_name)?;
        let expected = [out_features as i32, in_features as i32];
        let (weight, quant) = match self.quant.get(prefix).copied() {
            None => {
                if weight.shape() != expected {
                    return Err(self.shape_error(&weight_name, &expected, weight.shape()));
                }
                (weight.as_dtype(dtype)?, None)
            }
            Some(spec) => {
                let scales = self.take(&format!("{prefix}.scales"))?;
                let biases = self.take(&format!("{prefix}.biases"))?;
                if !spec.is_valid() || !in_features.is_multiple_of(spec.group_size.max(1) as usize)
                {
                    return Err(ModelError::TensorShape {
                        source_name: self.source.clone(),
                        name: weight_name,
                        expected: format!("{in_features} inputs in whole quantization groups"),
                        found: format!("group size {}, {} bits", spec.group_size, spec.bits),
                    });
                }
                let packed = [out_features as i32, (in_features as i32 * spec.bits) / 32];
                let groups = [out_features as i32, in_features as i32 / spec.group_size];
                if weight.shape() != packed {
                    return Err(self.shape_error(&weight_name, &packed, weight.shape()));
                }
                for (name, tensor) in [("scales", &scales), ("biases", &biases)] {
                    if tensor.shape() != groups {
                        return Err(self.shape_error(
                            &format!("{prefix}.{name}"),
                            &groups,
                            tensor.shape(),
                        ));
                    }
                }
                if mode == WeightMode::Quantized {
                    let quant = QuantizedParts {
                        scales: scales.as_dtype(dtype)?,
                        biases: biases.as_dtype(dtype)?,
                        spec,
                    };
                    (weight, Some(quant))
                } else {
                    // Dequantize in f32 even when the target is 16-bit: GGUF stores scales as
                    // f16, and dequantizing in f16 is off by up to 1e-3 per weight.
                    let full = dequantize(
                        &weight,
                        scales.as_dtype(Dtype::Float32)?,
                        &biases.as_dtype(Dtype::Float32)?,
                        spec.group_size,
                        spec.bits,
                    )?;
                    (full.as_dtype(dtype)?, None)
                }
            }
        };
        let bias = if bias {
            Some(self.vector(&format!("{prefix}.bias"), out_features, dtype)?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            quant,
            bias,
        })
    }
}

struct QuantizedParts {
    scales: Array,
    biases: Array,
    spec: QuantSpec,
}

/// A projection `y = x Wᵀ (+ b)`, dense or group-quantized. Also serves as an embedding
/// table (`[vocab, hidden]`), looked up by row.
pub struct Linear {
    /// `[out, in]` dense, or `[out, in * bits / 32]` packed u32 when quantized.
    weight: Array,
    quant: Option<QuantizedParts>,
    bias: Option<Array>,
}

impl Linear {
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let y = match &self.quant {
            None => matmul(x, self.weight.t())?,
            Some(q) => quantized_matmul(
                x,
                &self.weight,
                &q.scales,
                &q.biases,
                true,
                q.spec.group_size,
                q.spec.bits,
            )?,
        };
        match &self.bias {
            Some(bias) => add(&y, bias),
            None => Ok(y),
        }
    }

    /// Rows `ids` of the weight as dense vectors: the embedding lookup.
    pub fn rows(&self, ids: &Array) -> Result<Array, Exception> {
        let rows = take_axis(&self.weight, ids, 0)?;
        match &self.quant {
            None => Ok(rows),
            Some(q) => dequantize(
                &rows,
                take_axis(&q.scales, ids, 0)?,
                &take_axis(&q.biases, ids, 0)?,
                q.spec.group_size,
                q.spec.bits,
            ),
        }
    }

    /// Every array this layer owns, for evaluation right after loading.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut arrays = vec![&self.weight];
        if let Some(q) = &self.quant {
            arrays.push(&q.scales);
            arrays.push(&q.biases);
        }
        arrays.extend(self.bias.iter());
        arrays
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The activation rule of docs/model-runtime.md: quantized weights compute in the
    /// checkpoint's 16-bit float type, else (f32 checkpoints, GGUF's f32 norms) in bf16,
    /// never f16 by default; the dense modes ignore what is stored.
    #[test]
    fn compute_dtypes_follow_the_mode_and_the_checkpoint() {
        for (stored, quantized) in [
            (Dtype::Float16, Dtype::Float16),
            (Dtype::Bfloat16, Dtype::Bfloat16),
            (Dtype::Float32, Dtype::Bfloat16),
        ] {
            assert_eq!(WeightMode::Quantized.compute_dtype(stored), quantized);
            assert_eq!(WeightMode::F32.compute_dtype(stored), Dtype::Float32);
            assert_eq!(WeightMode::F16.compute_dtype(stored), Dtype::Float16);
            assert_eq!(WeightMode::Bf16.compute_dtype(stored), Dtype::Bfloat16);
        }
        let auto = WeightChoice::parse("auto").expect("auto");
        assert_eq!(auto.resolve(ComputeDevice::Gpu), WeightMode::Quantized);
        assert_eq!(auto.resolve(ComputeDevice::Cpu), WeightMode::F32);
        let fixed = WeightChoice::parse("bf16").expect("bf16");
        assert_eq!(fixed.resolve(ComputeDevice::Gpu), WeightMode::Bf16);
        assert_eq!(WeightChoice::parse("q4"), None);
    }
}
