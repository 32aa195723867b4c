//! f32 matmul speed through MLX on the default device: the number that decides whether
//! CPU inference is usable. Throughput is reported in elements/s where one "element" is one
//! floating-point operation (2·n³ per n×n matmul), so `Gelem/s` reads as GFLOP/s.
//!
//! `cargo bench --bench matmul` measures the build as shipped (OpenBLAS bound on Linux).
//! BENCHMARK_REPORT.md gives the command that measures the wheel's bundled reference BLAS
//! for comparison.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mlx_rs::{Array, ops::matmul, random};
use mlx_serve::runtime::RuntimeInfo;

fn matmul_f32(c: &mut Criterion) {
    // The OpenBLAS kernels the server runs (src/openblas_core.rs); may start the bench again.
    #[cfg(target_os = "linux")]
    mlx_serve::openblas_core::restart_with_kernels_for_this_cpu();
    mlx_serve::device::apply_from_env().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", RuntimeInfo::detect());
    let mut group = c.benchmark_group("matmul_f32");
    group.sample_size(10);
    for n in [512, 1024, 2048] {
        let a = random::normal::<f32>(&[n, n], None, None, None).expect("random a");
        let b = random::normal::<f32>(&[n, n], None, None, None).expect("random b");
        a.eval().expect("eval a");
        b.eval().expect("eval b");
        let flops = 2 * (n as u64).pow(3);
        group.throughput(Throughput::Elements(flops));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter(|| {
                let product: Array = matmul(&a, &b).expect("matmul");
                product.eval().expect("eval product");
                product
            })
        });
    }
    group.finish();
}

criterion_group!(benches, matmul_f32);
criterion_main!(benches);
