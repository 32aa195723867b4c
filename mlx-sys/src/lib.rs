//! Raw bindings to mlx-c 0.7.0, generated at build time against MLX 0.32.2.
//!
//! This crate replaces the crates.io `mlx-sys 0.7.0` (through `[patch.crates-io]`) so that
//! mlx-rs builds on Linux as well as macOS; see `build.rs` and `docs/mlx-runtime.md` for how
//! MLX and the mlx-c sources are found. The generated items are identical in name and shape
//! to the genuine crate's, so mlx-rs compiles against them unchanged.

#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// mlx-rs seeds its random-number generator with Mach's `mach_approximate_time`, which only
/// exists on Apple platforms. Elsewhere we provide it: a monotonic-enough nanosecond count
/// (the value is only used as a seed, never as a clock).
#[cfg(not(target_vendor = "apple"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
