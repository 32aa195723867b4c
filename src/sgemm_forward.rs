//! One-row f32 matmuls as matrix-vector products (Linux).
//!
//! Every f32 matmul of libmlx is a `cblas_sgemm` call, bound to OpenBLAS by `build.rs`.
//! Decoding one sequence multiplies a single row by each weight matrix. OpenBLAS 0.3.21
//! (Debian 12) runs such a call through its general GEMM path, which repacks the whole
//! weight matrix before multiplying, while its GEMV streams the matrix once: over the
//! default model's weights one row takes about 68 ms through `sgemm` and 55 ms through
//! `sgemv` on 2 cores (docs/performance.md). OpenBLAS 0.3.28 forwards such calls itself, but
//! only when built for arm64, RISC-V or POWER.
//!
//! So the executable defines `cblas_sgemm` itself and `build.rs` exports it: the dynamic
//! linker finds it before OpenBLAS's, libmlx's calls come here, one-row row-major products
//! go to OpenBLAS's `cblas_sgemv`, and every other call goes on to the `cblas_sgemm` next in
//! the lookup order (OpenBLAS's), unchanged. Products of several rows stay in GEMM, which
//! is faster from two rows on (8 rows: 108 ms in GEMM against 8 × 35 ms in GEMV).

use std::ffi::c_int;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

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

unsafe extern "C" {
    fn cblas_sgemv(
        order: c_int,
        trans: c_int,
        m: c_int,
        n: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        x: *const f32,
        incx: c_int,
        beta: f32,
        y: *mut f32,
        incy: c_int,
    );
}

/// The smallest matrix (in elements) whose one-row products go to GEMV: every weight matrix
/// of a model (the default model's smallest is 192 × 576), which is where the gain was
/// measured. Attention's per-head products over a few hundred keys (64 × 512 and less)
/// stay in GEMM as before.
const MIN_FORWARDED_ELEMENTS: i64 = 1 << 16;

/// One-row products sent to GEMV since start (tests check that forwarding happens).
static FORWARDED: AtomicU64 = AtomicU64::new(0);

/// How many one-row products went to `cblas_sgemv`.
pub fn forwarded_calls() -> u64 {
    FORWARDED.load(Ordering::Relaxed)
}

/// The `cblas_sgemm` after this executable's in the dynamic linker's lookup order: the
/// one every other call goes to, and the library [`crate::runtime::blas_library`] reports.
pub fn next_sgemm() -> Option<*mut libc::c_void> {
    static NEXT: OnceLock<usize> = OnceLock::new();
    // SAFETY: dlsym only reads the loader's tables.
    let next = *NEXT
        .get_or_init(|| unsafe { libc::dlsym(libc::RTLD_NEXT, c"cblas_sgemm".as_ptr()) as usize });
    (next != 0).then_some(next as *mut libc::c_void)
}

/// `C = alpha · op(A) · op(B) + beta · C`, with CBLAS's contract: one-row row-major
/// products as `cblas_sgemv`, the rest through the next `cblas_sgemm`.
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
    if order == ROW_MAJOR
        && m == 1
        && n > 0
        && k > 0
        && i64::from(n) * i64::from(k) >= MIN_FORWARDED_ELEMENTS
    {
        FORWARDED.fetch_add(1, Ordering::Relaxed);
        // op(A) is one row of k values: contiguous, or a column of A with stride lda.
        let incx = if trans_a == NO_TRANS { 1 } else { lda };
        // c[j] = alpha · Σ_i a[i] · op(B)[i, j] + beta · c[j]. B is stored k × n (op(B) = B,
        // so c = Bᵀ a) or n × k (op(B) = Bᵀ, so c = B a).
        let (trans, rows, cols) = if trans_b == NO_TRANS {
            (TRANS, k, n)
        } else {
            (NO_TRANS, n, k)
        };
        // SAFETY: the caller's contract covers these reads and writes: c holds a row of n
        // values, b a k × n (or n × k) matrix with leading dimension ldb, a k values at
        // stride incx. With beta 0, C's old contents must not matter even when not finite.
        unsafe {
            if beta == 0.0 {
                std::ptr::write_bytes(c, 0, n as usize);
            }
            cblas_sgemv(
                ROW_MAJOR, trans, rows, cols, alpha, b, ldb, a, incx, beta, c, 1,
            );
        }
        return;
    }
    let next = next_sgemm()
        .expect("no cblas_sgemm after the executable's own: OpenBLAS is not loaded (see build.rs)");
    // SAFETY: `next` is a cblas_sgemm with the same C signature; the arguments pass through.
    unsafe {
        let next: Sgemm = std::mem::transmute(next);
        next(
            order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
        );
    }
}
