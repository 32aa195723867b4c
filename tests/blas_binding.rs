//! On Linux, libmlx's f32 matmuls must run in OpenBLAS, not in the single-threaded reference
//! BLAS the MLX wheel bundles. `build.rs` arranges that for every binary of the package;
//! this plain `cargo test` proves it took effect.
#![cfg(target_os = "linux")]

use mlx_serve::runtime::blas_library;

/// Shared objects mapped into this process (from /proc/self/maps).
fn mapped_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let mut libraries: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.contains(".so"))
        .map(str::to_owned)
        .collect();
    libraries.dedup();
    libraries
}

#[test]
fn cblas_sgemm_resolves_to_openblas_ahead_of_the_bundled_reference_blas() {
    let mapped = mapped_libraries();
    // The wheel's reference BLAS is loaded (libmlx needs it) ...
    assert!(
        mapped
            .iter()
            .any(|path| path.contains("mlx_cpu.libs/libblas")),
        "the MLX wheel's bundled BLAS is not loaded; is this the mlx-cpu wheel? mapped: {mapped:#?}"
    );
    // ... yet the global lookup libmlx's calls go through finds OpenBLAS first.
    let blas = blas_library().expect("cblas_sgemm is not resolvable in this process");
    let name = blas
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    assert!(
        name.starts_with("libopenblas"),
        "cblas_sgemm resolves to {}, expected OpenBLAS (install libopenblas0-pthread)",
        blas.display()
    );
}
