//! Which of OpenBLAS's kernel sets runs this process's f32 matmuls (Linux).
//!
//! Debian's OpenBLAS is built for every x86-64 CPU at once and picks its kernels when it
//! loads, from the CPU's family and model numbers. OpenBLAS 0.3.21 (Debian 12) does not know
//! newer models, such as Intel's family 6 model 207 (Emerald Rapids), and then falls back to
//! its oldest kernels, Prescott's (SSE3). On such a machine every matmul of MLX, and so the
//! whole forward pass, runs at a fraction of the CPU's speed: over the default model's
//! weights, 256 rows took 1,941 ms with the Prescott kernels and 359 ms with SkylakeX's
//! (docs/performance.md).
//!
//! OpenBLAS reads its choice from `OPENBLAS_CORETYPE` only while it loads, before `main`.
//! So when it fell back to Prescott on a CPU that has AVX2 and FMA, the server starts itself
//! again, in the same process (`exec`, same pid and arguments), with `OPENBLAS_CORETYPE` set
//! to the kernels the CPU's features allow. A user's own `OPENBLAS_CORETYPE` is always
//! left as it is, which also means the restart happens at most once.

use std::ffi::CStr;
use std::os::unix::process::CommandExt;

/// The environment variable OpenBLAS reads its kernel set from when it loads.
pub const CORETYPE_VARIABLE: &str = "OPENBLAS_CORETYPE";

/// The kernel set OpenBLAS falls back to on an x86-64 CPU it does not recognise.
const FALLBACK_CORE: &str = "Prescott";

unsafe extern "C" {
    fn openblas_get_corename() -> *const std::ffi::c_char;
}

/// The name of the kernel set OpenBLAS chose (e.g. `SkylakeX`, `Haswell`, `Prescott`).
pub fn core_name() -> String {
    // SAFETY: OpenBLAS returns a pointer to a static NUL-terminated string.
    unsafe {
        let name = openblas_get_corename();
        if name.is_null() {
            return String::new();
        }
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

/// The x86-64 features that decide which OpenBLAS kernels a CPU can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub avx2: bool,
    pub fma: bool,
    /// AVX-512 F, CD, BW, DQ and VL: the Skylake-X set OpenBLAS's SkylakeX kernels use.
    pub avx512_skylake: bool,
}

impl CpuFeatures {
    /// This CPU's features, as the CPU and the operating system report them.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                fma: std::arch::is_x86_feature_detected!("fma"),
                avx512_skylake: std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512cd")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        CpuFeatures::default()
    }
}

/// The kernel set to ask OpenBLAS for, given the one it chose and the CPU's features:
/// `None` when its choice stands (it recognised the CPU, or the CPU has nothing better
/// than the fallback).
pub fn better_core(chosen: &str, cpu: CpuFeatures) -> Option<&'static str> {
    if !chosen.eq_ignore_ascii_case(FALLBACK_CORE) {
        return None;
    }
    if cpu.avx512_skylake {
        Some("SkylakeX")
    } else if cpu.avx2 && cpu.fma {
        Some("Haswell")
    } else {
        None
    }
}

/// Starts this executable again with OpenBLAS's kernels chosen for the CPU, when OpenBLAS
/// fell back to Prescott's on a CPU with better ones and the user did not choose. Returns
/// only when no restart is needed or when it failed (it then logs why and the process goes
/// on with the slow kernels).
///
/// Call it first thing in `main`, before any thread of ours exists: `exec` ends every
/// other thread.
pub fn restart_with_kernels_for_this_cpu() {
    if std::env::var_os(CORETYPE_VARIABLE).is_some() {
        return;
    }
    let chosen = core_name();
    let Some(core) = better_core(&chosen, CpuFeatures::detect()) else {
        return;
    };
    tracing::info!(
        chosen = %chosen,
        restart_with = core,
        "OpenBLAS did not recognise this CPU and chose its oldest kernels; starting again with \
         {CORETYPE_VARIABLE}={core} (set {CORETYPE_VARIABLE} to choose yourself)"
    );
    let error = match std::env::current_exe() {
        Ok(executable) => std::process::Command::new(executable)
            .args(std::env::args_os().skip(1))
            .env(CORETYPE_VARIABLE, core)
            .exec(),
        Err(error) => error,
    };
    tracing::warn!(
        %error,
        "could not start again with {CORETYPE_VARIABLE}={core}; matmuls run on OpenBLAS's \
         {chosen} kernels, several times slower on this CPU"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVX2: CpuFeatures = CpuFeatures {
        avx2: true,
        fma: true,
        avx512_skylake: false,
    };
    const AVX512: CpuFeatures = CpuFeatures {
        avx2: true,
        fma: true,
        avx512_skylake: true,
    };

    #[test]
    fn a_recognised_cpu_keeps_the_kernels_openblas_chose() {
        assert_eq!(better_core("SkylakeX", AVX512), None);
        assert_eq!(better_core("Haswell", AVX512), None);
        assert_eq!(better_core("Zen", AVX2), None);
    }

    #[test]
    fn the_fallback_is_replaced_by_the_best_set_the_cpu_runs() {
        assert_eq!(better_core("Prescott", AVX512), Some("SkylakeX"));
        assert_eq!(better_core("PRESCOTT", AVX2), Some("Haswell"));
    }

    #[test]
    fn a_cpu_without_avx2_and_fma_stays_on_the_fallback() {
        assert_eq!(better_core("Prescott", CpuFeatures::default()), None);
        let avx2_only = CpuFeatures { fma: false, ..AVX2 };
        assert_eq!(better_core("Prescott", avx2_only), None);
    }
}
