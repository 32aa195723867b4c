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

#[test]
fn libmlx_calls_reach_the_executables_own_sgemm_first() {
    // SAFETY: dlsym only reads the loader's tables.
    let bound = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"cblas_sgemm".as_ptr()) };
    assert_eq!(
        bound as usize,
        mlx_serve::sgemm_forward::cblas_sgemm as *const () as usize,
        "cblas_sgemm does not resolve to the executable's own (build.rs exports it)"
    );
}

/// `op(x) · op(w)` for a `[1, k]` row and a `[k, n]` matrix, each possibly stored
/// transposed, through MLX (so through `cblas_sgemm`), against a plain sum.
#[test]
fn one_row_products_go_to_gemv_and_equal_a_plain_sum() {
    use mlx_rs::Array;
    use mlx_rs::ops::{addmm, matmul};

    // Large enough to be forwarded (at least 2^16 elements).
    let (k, n) = (301, 257);
    let x: Vec<f32> = (0..k).map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0).collect();
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 16.0)
        .collect();
    let expected: Vec<f32> = (0..n)
        .map(|j| (0..k).map(|i| x[i] * w[i * n + j]).sum())
        .collect();
    let row = Array::from_slice(&x, &[1, k as i32]);
    let column = Array::from_slice(&x, &[k as i32, 1]).t();
    let plain = Array::from_slice(&w, &[k as i32, n as i32]);
    // The same matrix stored n × k and viewed transposed.
    let stored_t: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
    let transposed = Array::from_slice(&stored_t, &[n as i32, k as i32]).t();

    let before = mlx_serve::sgemm_forward::forwarded_calls();
    let close = |got: &Array, scale: f32, offset: f32, what: &str| {
        got.eval().expect("eval");
        for (j, (g, e)) in got.as_slice::<f32>().iter().zip(&expected).enumerate() {
            let e = scale * e + offset;
            assert!(
                (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "{what}: [{j}] {g} vs {e}"
            );
        }
    };
    for (a, a_name) in [(&row, "row"), (&column, "column")] {
        for (b, b_name) in [(&plain, "B"), (&transposed, "Bᵀ stored")] {
            let what = format!("{a_name} · {b_name}");
            close(&matmul(a, b).expect("matmul"), 1.0, 0.0, &what);
            let c = Array::from_slice(&vec![1.0f32; n], &[1, n as i32]);
            let sum = addmm(&c, a, b, 0.5, 2.0).expect("addmm");
            close(&sum, 0.5, 2.0, &format!("addmm {what}"));
        }
    }
    assert!(
        mlx_serve::sgemm_forward::forwarded_calls() >= before + 8,
        "the one-row products did not go to GEMV"
    );
}
