//! Which device MLX computes on: `--device auto|cpu|gpu` (`MLX_SERVE_DEVICE`).
//!
//! MLX picks its default device once per process: the GPU whenever the library was built
//! with one (the mlx-metal wheel on macOS, mlx-cuda on Linux), else the CPU. That default
//! is wrong on a machine whose GPU is not usable, such as a hosted macOS CI runner, which
//! is a virtual machine: MLX still reports Metal as available there, and the first GPU
//! operation fails. The switch lets such a machine run on the CPU, and lets a user who asks
//! for the GPU hear at start-up that this build has none instead of silently getting the CPU.
//!
//! The default device is process-wide in MLX (streams are per thread, the device is not),
//! so it is set once, before a model loads; every later decision that depends on it
//! ([`ComputeDevice::current`]) reads it back from MLX rather than from the setting.

use std::fmt;

use clap::ValueEnum;
use mlx_rs::{Array, Device, DeviceType};

/// The `--device` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// MLX's own default: the GPU when this MLX build has one, else the CPU.
    Auto,
    /// The CPU, even where a GPU exists.
    Cpu,
    /// The GPU; refused when this MLX build has none.
    Gpu,
}

/// The device MLX computes on, as resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDevice {
    Cpu,
    Gpu,
}

impl DeviceChoice {
    /// The environment variable that sets `--device` (and the device of the test suite).
    pub const ENV: &'static str = "MLX_SERVE_DEVICE";

    /// The choice `MLX_SERVE_DEVICE` makes (`auto` when unset), for programs that have no
    /// command line of their own: the test binaries and benches.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(Self::ENV) {
            Err(std::env::VarError::NotPresent) => Ok(DeviceChoice::Auto),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{} is not valid UTF-8", Self::ENV))
            }
            Ok(value) => Self::from_str(&value, true)
                .map_err(|_| format!("{}={value:?}: expected auto, cpu or gpu", Self::ENV)),
        }
    }

    /// Makes this choice MLX's default device for the whole process and returns what it
    /// resolved to, after one small operation on it when that is a GPU. Call it before
    /// anything computes (a model loads, a kernel is chosen).
    pub fn apply(self) -> Result<ComputeDevice, String> {
        match self {
            DeviceChoice::Auto => {}
            DeviceChoice::Cpu => Device::set_default(&Device::cpu()),
            DeviceChoice::Gpu => {
                if !gpu_available() {
                    return Err(format!(
                        "--device gpu: this MLX build ({}) has no GPU backend. Use --device cpu \
                         (or auto); for the GPU, build against the mlx-metal wheel on Apple \
                         Silicon (the default of `make setup` on macOS) or mlx-cuda \
                         (MLX_BACKEND=cuda make setup) on Linux with an NVIDIA GPU",
                        crate::runtime::mlx_version()
                    ));
                }
                Device::set_default(&Device::gpu());
            }
        }
        let device = ComputeDevice::current();
        if device == ComputeDevice::Gpu {
            probe_gpu()?;
        }
        Ok(device)
    }
}

/// Evaluates one small sum on the GPU. A virtual Mac reports a Metal device whatever it can
/// run; when even this fails, start-up stops with what to do instead of the first request
/// failing. Its arrays live and die on the calling thread.
fn probe_gpu() -> Result<(), String> {
    let failed = |problem: String| {
        format!(
            "the GPU failed a first test operation ({problem}); on a virtual Mac, such as a \
             hosted CI runner, run with --device cpu (MLX_SERVE_DEVICE=cpu)"
        )
    };
    let total = Array::from_slice(&[1.0f32, 2.0, 3.0], &[3])
        .sum(None)
        .map_err(|e| failed(e.to_string()))?;
    total.eval().map_err(|e| failed(e.to_string()))?;
    match total.as_slice::<f32>() {
        [sum] if *sum == 6.0 => Ok(()),
        other => Err(failed(format!("1 + 2 + 3 gave {other:?}"))),
    }
}

/// Applies the device `MLX_SERVE_DEVICE` names, for programs without a command line of their
/// own: the test binaries (the hosted macOS CI runs the suite with `cpu`) and benches. MLX's
/// device is process-wide, so each test that computes calls this before its first
/// operation; applying the same choice again changes nothing.
pub fn apply_from_env() -> Result<ComputeDevice, String> {
    DeviceChoice::from_env()?.apply()
}

impl ComputeDevice {
    /// MLX's default device now: what unqualified operations run on.
    pub fn current() -> Self {
        match Device::default().get_type() {
            Ok(DeviceType::Gpu) => ComputeDevice::Gpu,
            // Reading the type of MLX's own default device cannot fail; the CPU is the
            // conservative reading if it ever did.
            Ok(DeviceType::Cpu) | Err(_) => ComputeDevice::Cpu,
        }
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComputeDevice::Cpu => "cpu",
            ComputeDevice::Gpu => "gpu",
        })
    }
}

/// Whether this MLX build has a GPU backend (Metal or CUDA). On a virtual Mac this is still
/// true: MLX cannot tell a usable GPU from a paravirtual one.
pub fn gpu_available() -> bool {
    let mut available = false;
    // SAFETY: the device handle is created, queried and freed here; MLX writes one bool
    // through the pointer.
    unsafe {
        let gpu = mlx_sys::mlx_device_new_type(mlx_sys::mlx_device_type__MLX_GPU, 0);
        let status = mlx_sys::mlx_device_is_available(&mut available, gpu);
        mlx_sys::mlx_device_free(gpu);
        status == 0 && available
    }
}

/// [`apply_from_env`] for the unit tests that compute, panicking with its message.
#[cfg(test)]
pub(crate) fn use_test_device() {
    if let Err(message) = apply_from_env() {
        panic!("{message}");
    }
}
