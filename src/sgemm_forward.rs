//! Every f32 matmul of libmlx, routed so that one thread pool owns the cores (Linux).
//!
//! Every f32 matmul of libmlx is a `cblas_sgemm` call, bound to OpenBLAS by `build.rs`. The
//! executable defines `cblas_sgemm` itself and `build.rs` exports it, so the dynamic linker
//! finds it before OpenBLAS's and libmlx's calls come here:
//!
//! - **Products of a few rows by a weight matrix** (a decode step's: 1–16 rows, one per
//!   sequence, `x · Wᵀ` over at least 2^16 weights) go to [`crate::few_row_gemm`], split
//!   by output columns over [`crate::core_pool`]. OpenBLAS 0.3.21 packs the whole weight
//!   matrix on each such call; the kernel reads it once (docs/performance.md).
//! - **Other large products** (prefill, at least 2^18 multiply-adds) are split along their
//!   longer output side over the same pool, each part a one-thread OpenBLAS `sgemm`.
//! - **Small products** (attention over a few keys) go to OpenBLAS directly, on the
//!   calling thread, as OpenBLAS itself would run them.
//!
//! OpenBLAS is kept to one thread ([`crate::core_pool::global`]). Its own pool would spin
//! between products on the core this pool needs, and a part handed to a thread that
//! waits to be scheduled costs more than the split gains.

use std::ffi::c_int;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core_pool;
use crate::few_row_gemm::{self, Kernel, Product};

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

/// The smallest weight matrix (in elements) whose few-row products go to the kernel: every
/// weight matrix of a model (the default model's smallest is 192 × 576). Attention's
/// per-head products over a few hundred keys (64 × 512 and less) stay in OpenBLAS.
const MIN_WEIGHT_ELEMENTS: i64 = 1 << 16;

/// The fewest multiply-adds worth splitting over the pool: OpenBLAS's own limit for
/// running a GEMM on one thread (65,536 × its `GEMM_MULTITHREAD_THRESHOLD` of 4).
const MIN_SPLIT_WORK: i64 = 1 << 18;

/// The fewest rows or columns a part of a split product gets, so that each part still
/// fills OpenBLAS's register tiles.
const MIN_PART_SIDE: usize = 16;

/// Chunks per thread of a few-row product: threads take chunks as they come, so a helper
/// that starts late or is preempted leaves its share to the others instead of making them
/// wait.
const CHUNKS_PER_THREAD: usize = 4;

/// The narrowest chunk of a few-row product, in output columns: a multiple of the kernel's
/// 3-column tiles, and enough work per chunk (48 weight rows) to pay for taking it.
const MIN_CHUNK_COLUMNS: usize = 48;

/// Few-row products computed by the kernel since start.
static FEW_ROW: AtomicU64 = AtomicU64::new(0);
/// Products split over the pool as one-thread OpenBLAS calls since start.
static SPLIT: AtomicU64 = AtomicU64::new(0);

/// How many products went to the few-row kernel (tests check the routing).
pub fn few_row_products() -> u64 {
    FEW_ROW.load(Ordering::Relaxed)
}

/// How many products were split over the pool as one-thread OpenBLAS calls.
pub fn split_products() -> u64 {
    SPLIT.load(Ordering::Relaxed)
}

/// The few-row kernel this CPU runs, detected once.
fn kernel() -> Option<Kernel> {
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        let kernel = Kernel::detect();
        match kernel {
            Some(kernel) => tracing::info!(?kernel, "few-row products run in mlx-serve's kernel"),
            None => tracing::info!("no AVX2/FMA: few-row products stay in OpenBLAS"),
        }
        kernel
    })
}

/// The `cblas_sgemm` after this executable's in the dynamic linker's lookup order
/// (OpenBLAS's): the one every part goes to, and the library
/// [`crate::runtime::blas_library`] reports.
pub fn next_sgemm() -> Option<*mut libc::c_void> {
    static NEXT: OnceLock<usize> = OnceLock::new();
    // SAFETY: dlsym only reads the loader's tables.
    let next = *NEXT
        .get_or_init(|| unsafe { libc::dlsym(libc::RTLD_NEXT, c"cblas_sgemm".as_ptr()) as usize });
    (next != 0).then_some(next as *mut libc::c_void)
}

fn openblas_sgemm() -> Sgemm {
    let next = next_sgemm()
        .expect("no cblas_sgemm after the executable's own: OpenBLAS is not loaded (see build.rs)");
    // SAFETY: `next` is a cblas_sgemm with the same C signature.
    unsafe { std::mem::transmute::<*mut libc::c_void, Sgemm>(next) }
}

/// Splits `0..len` into `parts` near-equal ranges, each a multiple of `align` long except
/// the last; returns part `part`'s range (possibly empty).
fn part_range(len: usize, parts: usize, part: usize, align: usize) -> std::ops::Range<usize> {
    let per_part = len.div_ceil(parts).div_ceil(align) * align;
    let start = (part * per_part).min(len);
    start..((part + 1) * per_part).min(len)
}

/// `C = alpha · op(A) · op(B) + beta · C`, with CBLAS's contract, routed as the module
/// documentation says.
///
/// # Safety
/// The caller's pointers and leading dimensions must describe valid matrices, as for any
/// `cblas_sgemm`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cblas_sgemm(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
) {
    let sgemm = openblas_sgemm();
    // First, so that OpenBLAS is down to one thread before any product runs.
    let pool = core_pool::global();
    // Only well-formed row-major products are routed; anything else goes to OpenBLAS as is.
    let routed = order == ROW_MAJOR && m > 0 && n > 0 && k > 0;
    let (rows, columns) = (m.max(0) as usize, n.max(0) as usize);
    if routed
        && let Some(kernel) = kernel()
        && trans_a == NO_TRANS
        && trans_b == TRANS
        && rows <= few_row_gemm::MAX_ROWS
        && i64::from(n) * i64::from(k) >= MIN_WEIGHT_ELEMENTS
    {
        FEW_ROW.fetch_add(1, Ordering::Relaxed);
        let product = Product {
            m: rows,
            n: columns,
            k: k as usize,
            alpha,
            a,
            lda: lda as usize,
            b,
            ldb: ldb as usize,
            beta,
            c,
            ldc: ldc as usize,
        };
        let chunks = (pool.threads() * CHUNKS_PER_THREAD).min(columns.div_ceil(MIN_CHUNK_COLUMNS));
        pool.run(chunks, &|chunk| {
            let range = part_range(columns, chunks, chunk, MIN_CHUNK_COLUMNS);
            if !range.is_empty() {
                // SAFETY: the caller's contract makes `product` valid; the chunks' column
                // ranges are disjoint and within n; `kernel` came from `Kernel::detect`.
                unsafe { kernel.columns(&product, range) };
            }
        });
        return;
    }
    let parts = pool.threads();
    let work = i64::from(m) * i64::from(n) * i64::from(k);
    if !routed || work < MIN_SPLIT_WORK || rows.max(columns) < parts * MIN_PART_SIDE {
        // SAFETY: the caller's arguments pass through unchanged.
        unsafe {
            sgemm(
                order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
            )
        };
        return;
    }
    SPLIT.fetch_add(1, Ordering::Relaxed);
    // Pointers cross to the helpers as addresses; each part offsets them to its own block.
    let (a, b, c) = (a as usize, b as usize, c as usize);
    let (lda_, ldb_, ldc_) = (lda as usize, ldb as usize, ldc as usize);
    let f32_size = std::mem::size_of::<f32>();
    pool.run(parts, &|part| {
        // Row-major: C's rows come from op(A)'s rows, its columns from op(B)'s columns.
        // A row block of op(A) starts `start` rows down A (no transpose) or `start`
        // columns across it (transposed), and likewise for a column block of op(B).
        let (a, b, c, part_m, part_n) = if rows >= columns {
            let range = part_range(rows, parts, part, MIN_PART_SIDE);
            let a_offset = if trans_a == NO_TRANS {
                range.start * lda_
            } else {
                range.start
            };
            (
                a + a_offset * f32_size,
                b,
                c + range.start * ldc_ * f32_size,
                range.len(),
                columns,
            )
        } else {
            let range = part_range(columns, parts, part, MIN_PART_SIDE);
            let b_offset = if trans_b == NO_TRANS {
                range.start
            } else {
                range.start * ldb_
            };
            (
                a,
                b + b_offset * f32_size,
                c + range.start * f32_size,
                rows,
                range.len(),
            )
        };
        if part_m == 0 || part_n == 0 {
            return;
        }
        // SAFETY: each part is a block of the caller's product (same leading dimensions,
        // pointers offset into the same matrices); the parts write disjoint blocks of C.
        unsafe {
            sgemm(
                order,
                trans_a,
                trans_b,
                part_m as c_int,
                part_n as c_int,
                k,
                alpha,
                a as *const f32,
                lda,
                b as *const f32,
                ldb,
                beta,
                c as *mut f32,
                ldc,
            )
        };
    });
}

#[cfg(test)]
mod tests {
    use super::part_range;

    #[test]
    fn parts_cover_the_range_once_in_aligned_blocks() {
        for len in [0, 1, 15, 16, 17, 576, 1120, 49152] {
            for parts in 1..=4 {
                let ranges: Vec<_> = (0..parts)
                    .map(|part| part_range(len, parts, part, 16))
                    .collect();
                let mut next = 0;
                for range in &ranges {
                    assert_eq!(
                        range.start,
                        next.min(len),
                        "len {len}, parts {parts}: {ranges:?}"
                    );
                    next = range.end.max(next);
                    if range.end < len {
                        assert_eq!(range.len() % 16, 0, "len {len}, parts {parts}: {ranges:?}");
                    }
                }
                assert_eq!(next, len, "len {len}, parts {parts}: {ranges:?}");
            }
        }
    }
}
