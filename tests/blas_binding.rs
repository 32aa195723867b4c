//! On Linux, libmlx's f32 matmuls must run in OpenBLAS, not in the single-threaded reference
//! BLAS the MLX wheel bundles. `build.rs` arranges that for every binary of the package;
//! this plain `cargo test` proves it took effect.
#![cfg(target_os = "linux")]

mod common;
#[path = "common/process.rs"]
mod process;

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

/// `op(x) · op(w)` for an `[m, k]` input and a `[k, n]` matrix, each possibly stored
/// transposed, through MLX (so through the executable's `cblas_sgemm`), against a plain
/// sum, for row counts that take every route: the few-row kernel (1–16 rows by a weight
/// matrix stored `n × k`, as libmlx passes `x · Wᵀ`), OpenBLAS alone (one row by a matrix
/// stored `k × n`: too few multiply-adds to split), and products split over the pool (17
/// rows along the columns, 300 along the rows).
#[test]
fn products_of_every_shape_take_their_route_and_equal_a_plain_sum() {
    common::use_test_device();
    use mlx_rs::Array;
    use mlx_rs::ops::{addmm, matmul};
    use mlx_serve::sgemm_forward::{few_row_products, split_products};

    // At least 2^16 weights, so that few-row products go to the kernel.
    let (k, n) = (301, 257);
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 13 % 17) as f32 - 8.0) / 16.0)
        .collect();
    let plain = Array::from_slice(&w, &[k as i32, n as i32]);
    // The same matrix stored n × k and viewed transposed.
    let stored_t: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
    let transposed = Array::from_slice(&stored_t, &[n as i32, k as i32]).t();

    let (few_before, split_before) = (few_row_products(), split_products());
    for m in [1usize, 3, 8, 16, 17, 300] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0)
            .collect();
        let expected: Vec<f32> = (0..m * n)
            .map(|at| {
                let (r, j) = (at / n, at % n);
                (0..k).map(|i| x[r * k + i] * w[i * n + j]).sum()
            })
            .collect();
        let rows = Array::from_slice(&x, &[m as i32, k as i32]);
        // The same input stored k × m and viewed transposed.
        let x_t: Vec<f32> = (0..k * m).map(|i| x[(i % m) * k + i / m]).collect();
        let columns = Array::from_slice(&x_t, &[k as i32, m as i32]).t();
        let close = |got: &Array, scale: f32, offset: f32, what: &str| {
            got.eval().expect("eval");
            let got = got.as_slice::<f32>();
            assert_eq!(got.len(), expected.len(), "{what}: shape");
            for (at, (g, e)) in got.iter().zip(&expected).enumerate() {
                let e = scale * e + offset;
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{what}: [{}][{}] {g} vs {e}",
                    at / n,
                    at % n
                );
            }
        };
        for (a, a_name) in [(&rows, "A"), (&columns, "Aᵀ stored")] {
            for (b, b_name) in [(&plain, "B"), (&transposed, "Bᵀ stored")] {
                let what = format!("{m} rows: {a_name} · {b_name}");
                close(&matmul(a, b).expect("matmul"), 1.0, 0.0, &what);
                let c = Array::from_slice(&vec![1.0f32; m * n], &[m as i32, n as i32]);
                let sum = addmm(&c, a, b, 0.5, 2.0).expect("addmm");
                close(&sum, 0.5, 2.0, &format!("addmm {what}"));
            }
        }
    }
    // 1, 3, 8 and 16 rows of a row-major input by Bᵀ stored, twice each (matmul, addmm).
    assert!(
        few_row_products() >= few_before + 8,
        "the few-row products did not go to the kernel ({} of 8)",
        few_row_products() - few_before
    );
    // 17 and 300 rows, four layouts, twice each.
    assert!(
        split_products() >= split_before + 16,
        "the 17- and 300-row products were not split over the pool ({} of 16)",
        split_products() - split_before
    );
}

/// The kernel set in the `blas kernels:` line `mlx-serve serve` prints at start, with
/// `OPENBLAS_CORETYPE` set to `coretype` (or absent).
fn kernels_the_server_reports(coretype: Option<&str>) -> String {
    use std::io::{BufRead, BufReader};

    let mut command = process::serve_command(&["--no-kv-store"]);
    command
        .env_remove(mlx_serve::openblas_core::CORETYPE_VARIABLE)
        .stderr(std::process::Stdio::null());
    if let Some(coretype) = coretype {
        command.env(mlx_serve::openblas_core::CORETYPE_VARIABLE, coretype);
    }
    let mut child = command.spawn().expect("start mlx-serve");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // The runtime description comes before the model loads, within a second or two.
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("blas kernels:"));
    let _ = child.kill();
    let _ = child.wait();
    line.expect("mlx-serve printed no `blas kernels:` line")
        .trim_start_matches("blas kernels:")
        .trim()
        .to_owned()
}

/// OpenBLAS 0.3.21 takes CPUs newer than it for the oldest x86-64 it knows and runs its
/// Prescott kernels (SSE3), several times slower. The server must run the best kernels the
/// CPU has, whatever OpenBLAS made of the CPU's model number.
#[test]
fn the_server_runs_the_openblas_kernels_this_cpu_supports() {
    use mlx_serve::openblas_core::{CpuFeatures, better_core};

    let kernels = kernels_the_server_reports(None);
    assert_eq!(
        better_core(&kernels, CpuFeatures::detect()),
        None,
        "the server runs OpenBLAS's {kernels} kernels on a CPU with better ones ({:?})",
        CpuFeatures::detect()
    );
}

#[test]
fn a_kernel_set_the_user_chose_is_kept() {
    assert_eq!(kernels_the_server_reports(Some("Prescott")), "Prescott");
}
