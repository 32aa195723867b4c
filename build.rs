//! Final-link settings every binary of this package needs (the server, tests, benches).
//!
//! - rpath to the MLX wheel's `lib/` (published by mlx-sys as `DEP_MLX_LIBDIR`): rpath set by
//!   a dependency's build script does not reach the final binary, so without this every run
//!   would need `LD_LIBRARY_PATH`.
//! - Linux: OpenBLAS as a direct, `--no-as-needed` dependency. The MLX wheel bundles the
//!   single-threaded netlib reference BLAS (~2 GFLOP/s); a library the executable itself
//!   needs comes before libmlx's own dependencies in the global symbol lookup order, so
//!   libmlx's `cblas_sgemm` calls bind to OpenBLAS instead (~15x faster f32 matmul).
//!   `tests/blas_binding.rs` proves the binding; BENCHMARK_REPORT.md measures it.
//! - Linux: the executable's own `cblas_sgemm` (`src/sgemm_forward.rs`) kept by the linker
//!   and exported, so libmlx's calls reach it first; it sends one-row products to
//!   OpenBLAS's GEMV and everything else on to OpenBLAS's GEMM.

use std::env;
use std::path::Path;
use std::process::Command;

/// The soname Debian's `libopenblas0-pthread` (and most distributions) provide.
const OPENBLAS: &str = "libopenblas.so.0";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let libdir = env::var("DEP_MLX_LIBDIR")
        .expect("mlx-sys publishes DEP_MLX_LIBDIR; is mlx-sys still a direct dependency?");
    println!("cargo::rustc-link-arg=-Wl,-rpath,{libdir}");

    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        let path = find_openblas().unwrap_or_else(|| {
            panic!(
                "\n\nmlx-serve: {OPENBLAS} was not found by the C compiler. MLX's CPU matmuls \
                 need OpenBLAS to be usable: install Debian's libopenblas0-pthread \
                 (apt-get install libopenblas0-pthread) or run `make setup`.\n\n"
            )
        });
        println!("cargo::rerun-if-changed={path}");
        println!("cargo::rustc-link-arg=-Wl,--push-state,--no-as-needed,-l:{OPENBLAS},--pop-state");
        // The executable's own cblas_sgemm (src/sgemm_forward.rs), linked in and exported
        // so that libmlx's calls bind to it ahead of OpenBLAS's.
        println!(
            "cargo::rustc-link-arg=-Wl,--undefined=cblas_sgemm,--export-dynamic-symbol=cblas_sgemm"
        );
    }
}

/// Asks the C compiler (the linker driver rustc uses) where it would find OpenBLAS.
fn find_openblas() -> Option<String> {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let output = Command::new(cc)
        .arg(format!("-print-file-name={OPENBLAS}"))
        .output()
        .ok()?;
    let path = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    // When it does not know the file, the compiler echoes the bare name back.
    Path::new(&path).is_absolute().then_some(path)
}
