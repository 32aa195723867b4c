//! Products of a few rows by a weight matrix that read each weight row once (x86-64).
//!
//! A decode step multiplies 1–16 rows (one per sequence) by every weight matrix of the
//! model. OpenBLAS packs the whole weight matrix into its own layout on every such call,
//! so the weights cross the memory bus twice and the multiply waits on the packing
//! (docs/performance.md). Here each output tile of [`TILE_COLUMNS`] weight rows is
//! computed for every input row while those weight rows are in the L1 cache: the weights
//! are read once, straight from the caller's matrix, and the product is bound by memory
//! bandwidth from a few rows on.
//!
//! The layout is the one libmlx uses for `x · Wᵀ` with row-major weights: row-major `A`
//! (`m × k`), `B` stored `n × k` (CBLAS `Trans`), row-major `C` (`m × n`).

use std::ops::Range;

/// The most rows a product may have to be computed here; larger products pack their
/// weights once for many rows and belong to GEMM.
pub const MAX_ROWS: usize = 16;

/// Weight rows per tile (4 and 6 were no faster, 2 slower).
const TILE_COLUMNS: usize = 3;

/// Rows of `A` per pass over a tile: 4 rows × 3 weight rows keep 12 sums, 3 weight vectors
/// and 1 input vector in 16 vector registers, which both AVX2 and AVX-512 have. The passes
/// after the first find the tile's weight rows in the L1 cache. Passes of 8 rows (24 sums,
/// AVX-512's 32 registers) made the compiler spill sums to the stack: 8 rows of the
/// default model's matrices took 42.6 ms in one pass against 34.5 ms in two.
const ROWS_PER_PASS: usize = 4;

/// `C = alpha · A · Bᵀ + beta · C` over raw, caller-owned matrices.
///
/// Invariant (the constructor's caller's promise, as for any CBLAS call): `a` holds `m`
/// rows of `k` values at stride `lda`, `b` holds `n` rows of `k` values at stride `ldb`,
/// and `c` holds `m` rows of `n` values at stride `ldc`, with `m ≤ MAX_ROWS`.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: *const f32,
    pub lda: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub beta: f32,
    pub c: *mut f32,
    pub ldc: usize,
}

// SAFETY: a `Product` is a description of matrices; the threads that share one write
// disjoint column ranges of `c` and only read `a` and `b` (see `Kernel::columns`).
unsafe impl Sync for Product {}

/// The instruction set a product is computed with, chosen once from the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 16 lanes, with masked loads for the last lanes of a row.
    Avx512,
    /// 8 lanes with fused multiply-add, a scalar tail for the last values of a row.
    Avx2Fma,
}

impl Kernel {
    /// The best kernel this CPU runs, or `None` (then products stay in BLAS).
    pub fn detect() -> Option<Kernel> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Some(Kernel::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Some(Kernel::Avx2Fma);
            }
        }
        None
    }

    /// Computes the columns `columns` of `product.c` (all its rows).
    ///
    /// # Safety
    /// `product` must satisfy its invariant, `columns` must lie within `0..product.n`, and
    /// the CPU must support `self` (as [`Kernel::detect`] returned it). Threads computing
    /// the same product concurrently must be given disjoint column ranges.
    pub unsafe fn columns(self, product: &Product, columns: Range<usize>) {
        debug_assert!(product.m <= MAX_ROWS && columns.end <= product.n);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded from the caller; the kernels read and write only within the
        // product's matrices and the given columns.
        unsafe {
            match self {
                Kernel::Avx512 => x86::columns_avx512(product, columns),
                Kernel::Avx2Fma => x86::columns_avx2(product, columns),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("Kernel::detect returns no kernel off x86-64: {columns:?} of {product:?}");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Product, ROWS_PER_PASS, TILE_COLUMNS};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// One vector of lanes from position `$at` of every row: loads the tile's weight
    /// vectors with `$load`, then adds each input row's vector times each of them into
    /// that row's sums with `$fma`.
    macro_rules! multiply_lanes {
        ($product:ident, $a:ident, $b:ident, $at:ident, $sums:ident, $weights:ident, $fma:ident, |$ptr:ident| $load:expr) => {
            for (t, weight) in $weights.iter_mut().enumerate() {
                let $ptr = $b.add(t * $product.ldb + $at);
                *weight = $load;
            }
            for (r, row_sums) in $sums.iter_mut().enumerate() {
                let $ptr = $a.add(r * $product.lda + $at);
                let input = $load;
                for (sum, weight) in row_sums.iter_mut().zip(&$weights) {
                    *sum = $fma(input, *weight, *sum);
                }
            }
        };
    }

    /// The loops around a tile kernel, for one instruction set: `$columns` walks the
    /// given output columns in tiles of [`TILE_COLUMNS`] weight rows (then the 1–2 left),
    /// and `$tiles` meets one tile with every row of A, [`ROWS_PER_PASS`] rows at a time.
    /// Both carry the kernel's target features, so that the kernel inlines into them.
    macro_rules! columns_over_tiles {
        ($columns:ident, $tiles:ident, $tile:ident, $features:literal) => {
            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn $tiles<const T: usize>(product: &Product, column: usize) {
                let mut first = 0;
                // SAFETY: forwarded; every pass stays within the product's rows.
                unsafe {
                    while first < product.m {
                        let rows = (product.m - first).min(ROWS_PER_PASS);
                        match rows {
                            4 => $tile::<4, T>(product, first, column),
                            3 => $tile::<3, T>(product, first, column),
                            2 => $tile::<2, T>(product, first, column),
                            _ => $tile::<1, T>(product, first, column),
                        }
                        first += rows;
                    }
                }
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn $columns(product: &Product, columns: Range<usize>) {
                let mut column = columns.start;
                // SAFETY: forwarded; tiles stay within `columns`.
                unsafe {
                    while column + TILE_COLUMNS <= columns.end {
                        $tiles::<TILE_COLUMNS>(product, column);
                        column += TILE_COLUMNS;
                    }
                    match columns.end - column {
                        2 => $tiles::<2>(product, column),
                        1 => $tiles::<1>(product, column),
                        _ => {}
                    }
                }
            }
        };
    }

    /// Writes one output value: `alpha · sum`, plus `beta ·` the old value unless beta is 0
    /// (CBLAS: with beta 0 the old contents are not read, so they may be anything).
    #[inline(always)]
    unsafe fn store(product: &Product, row: usize, column: usize, sum: f32) {
        // SAFETY: the caller passes a row and column inside C.
        unsafe {
            let out = product.c.add(row * product.ldc + column);
            *out = if product.beta == 0.0 {
                product.alpha * sum
            } else {
                product.alpha * sum + product.beta * *out
            };
        }
    }

    /// Rows `first..first + R` of A against weight rows `column..column + T`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile_avx512<const R: usize, const T: usize>(
        product: &Product,
        first: usize,
        column: usize,
    ) {
        let k = product.k;
        // SAFETY: the caller keeps rows, columns and k within the matrices; the masked
        // tail loads read only the lanes below k.
        unsafe {
            let a = product.a.add(first * product.lda);
            let b = product.b.add(column * product.ldb);
            let mut sums = [[_mm512_setzero_ps(); T]; R];
            let mut weights = [_mm512_setzero_ps(); T];
            let mut at = 0;
            while at + 16 <= k {
                multiply_lanes!(product, a, b, at, sums, weights, _mm512_fmadd_ps, |at| {
                    _mm512_loadu_ps(at)
                });
                at += 16;
            }
            if at < k {
                let lanes: __mmask16 = (1u32 << (k - at)) as u16 - 1;
                multiply_lanes!(product, a, b, at, sums, weights, _mm512_fmadd_ps, |at| {
                    _mm512_maskz_loadu_ps(lanes, at)
                });
            }
            for (r, row_sums) in sums.iter().enumerate() {
                for (t, sum) in row_sums.iter().enumerate() {
                    store(product, first + r, column + t, _mm512_reduce_add_ps(*sum));
                }
            }
        }
    }

    columns_over_tiles!(columns_avx512, tiles_avx512, tile_avx512, "avx512f");

    /// The sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn reduce_avx2(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quarter, _mm_movehdup_ps(quarter)))
    }

    /// Rows `first..first + R` of A against weight rows `column..column + T`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_avx2<const R: usize, const T: usize>(
        product: &Product,
        first: usize,
        column: usize,
    ) {
        let k = product.k;
        // SAFETY: the caller keeps rows, columns and k within the matrices; the vector
        // loop reads whole groups of 8 below k, the scalar tail the rest.
        unsafe {
            let a = product.a.add(first * product.lda);
            let b = product.b.add(column * product.ldb);
            let mut sums = [[_mm256_setzero_ps(); T]; R];
            let mut weights = [_mm256_setzero_ps(); T];
            let mut at = 0;
            while at + 8 <= k {
                multiply_lanes!(product, a, b, at, sums, weights, _mm256_fmadd_ps, |at| {
                    _mm256_loadu_ps(at)
                });
                at += 8;
            }
            for (r, row_sums) in sums.iter().enumerate() {
                for (t, sum) in row_sums.iter().enumerate() {
                    let mut total = reduce_avx2(*sum);
                    for i in at..k {
                        total += *a.add(r * product.lda + i) * *b.add(t * product.ldb + i);
                    }
                    store(product, first + r, column + t, total);
                }
            }
        }
    }

    columns_over_tiles!(columns_avx2, tiles_avx2, tile_avx2, "avx2,fma");
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Reference: the plain triple loop in f64.
    fn reference(p: &Product) -> Vec<f32> {
        let mut out = vec![0f32; p.m * p.ldc];
        for r in 0..p.m {
            for j in 0..p.n {
                let mut sum = 0f64;
                for i in 0..p.k {
                    // SAFETY: the tests build matrices matching the product.
                    unsafe {
                        sum +=
                            f64::from(*p.a.add(r * p.lda + i)) * f64::from(*p.b.add(j * p.ldb + i));
                    }
                }
                // SAFETY: as above.
                let old = unsafe { *p.c.add(r * p.ldc + j) };
                out[r * p.ldc + j] =
                    p.alpha * sum as f32 + if p.beta == 0.0 { 0.0 } else { p.beta * old };
            }
        }
        out
    }

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| ((i * 2_654_435_761 + seed * 97) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Every row count up to MAX_ROWS, column counts that leave 0, 1 and 2 columns after
    /// the last whole tile, k that leaves a tail after the last vector, padded strides,
    /// beta 0 over garbage and beta 1 over old values, each on every kernel this CPU has.
    #[test]
    fn matches_the_reference_on_every_shape_and_kernel() {
        let kernels: Vec<Kernel> = [Kernel::Avx512, Kernel::Avx2Fma]
            .into_iter()
            .filter(|kernel| match kernel {
                Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Kernel::Avx2Fma => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            })
            .collect();
        assert!(
            !kernels.is_empty(),
            "this CPU has neither AVX-512 nor AVX2+FMA"
        );
        for kernel in kernels {
            for m in 1..=MAX_ROWS {
                for (n, k) in [(9, 64), (10, 37), (11, 576), (1, 5), (7, 1536)] {
                    for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0)] {
                        let (lda, ldb, ldc) = (k + 3, k + 1, n + 2);
                        let a = values(m * lda, 1);
                        let b = values(n * ldb, 2);
                        let mut c = if beta == 0.0 {
                            vec![f32::NAN; m * ldc]
                        } else {
                            values(m * ldc, 3)
                        };
                        let product = Product {
                            m,
                            n,
                            k,
                            alpha,
                            a: a.as_ptr(),
                            lda,
                            b: b.as_ptr(),
                            ldb,
                            beta,
                            c: c.as_mut_ptr(),
                            ldc,
                        };
                        let expected = reference(&product);
                        // Two column ranges, as two threads would compute them.
                        let split = n / 2;
                        // SAFETY: the matrices above match the product; the CPU has the kernel.
                        unsafe {
                            kernel.columns(&product, 0..split);
                            kernel.columns(&product, split..n);
                        }
                        for r in 0..m {
                            for j in 0..n {
                                let (got, want) = (c[r * ldc + j], expected[r * ldc + j]);
                                assert!(
                                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                    "{kernel:?} m={m} n={n} k={k} beta={beta}: C[{r}][{j}] = {got}, expected {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
