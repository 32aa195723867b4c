//! Facts about the MLX runtime this process actually runs on, for start-up logs and tests.
//!
//! The build links MLX from a wheel and, on Linux, binds OpenBLAS ahead of the wheel's
//! reference BLAS (see `build.rs`). These functions report what the dynamic linker and MLX
//! really resolved, so a misconfigured machine shows up in the first lines of output.

use std::ffi::CStr;
use std::fmt;
use std::path::PathBuf;

/// The MLX library version compiled into libmlx (e.g. `0.32.2`).
pub fn mlx_version() -> String {
    // SAFETY: mlx_version fills a fresh mlx_string that we own and free; the data pointer
    // is only read before the free.
    unsafe {
        let mut handle = mlx_sys::mlx_string_new();
        let version = if mlx_sys::mlx_version(&mut handle) == 0 {
            let data = mlx_sys::mlx_string_data(handle);
            if data.is_null() {
                String::new()
            } else {
                CStr::from_ptr(data).to_string_lossy().into_owned()
            }
        } else {
            String::new()
        };
        mlx_sys::mlx_string_free(handle);
        version
    }
}

/// The shared library libmlx's f32 matmuls run in: the `cblas_sgemm` that the executable's
/// own (`crate::sgemm_forward`) passes them on to. On Linux this must be OpenBLAS for
/// usable CPU speed.
#[cfg(target_os = "linux")]
pub fn blas_library() -> Option<PathBuf> {
    let symbol = crate::sgemm_forward::next_sgemm()?;
    // SAFETY: dladdr only reads the loader's tables, and the returned name stays valid
    // while the library is loaded (forever).
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(symbol, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        let name = CStr::from_ptr(info.dli_fname)
            .to_string_lossy()
            .into_owned();
        Some(std::fs::canonicalize(&name).unwrap_or_else(|_| PathBuf::from(name)))
    }
}

/// A one-screen description of the runtime: MLX version, default device, BLAS.
pub struct RuntimeInfo {
    pub mlx_version: String,
    pub device: crate::device::ComputeDevice,
    /// Where f32 matmuls run (Linux); `None` where the platform decides (Apple).
    pub blas: Option<PathBuf>,
    /// OpenBLAS's kernel set (Linux), e.g. `SkylakeX`; `None` where the platform decides.
    pub blas_core: Option<String>,
}

impl RuntimeInfo {
    pub fn detect() -> Self {
        RuntimeInfo {
            mlx_version: mlx_version(),
            device: crate::device::ComputeDevice::current(),
            #[cfg(target_os = "linux")]
            blas: blas_library(),
            #[cfg(not(target_os = "linux"))]
            blas: None,
            #[cfg(target_os = "linux")]
            blas_core: Some(crate::openblas_core::core_name()),
            #[cfg(not(target_os = "linux"))]
            blas_core: None,
        }
    }
}

impl fmt::Display for RuntimeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "mlx:            {}", self.mlx_version)?;
        write!(f, "device:         {}", self.device)?;
        if let Some(blas) = &self.blas {
            write!(f, "\nblas:           {}", blas.display())?;
        }
        if let Some(core) = &self.blas_core {
            write!(f, "\nblas kernels:   {core}")?;
        }
        Ok(())
    }
}
