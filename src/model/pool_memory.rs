//! Zero-filled arrays for the KV pool whose memory becomes resident only where it is
//! written (Linux).
//!
//! The pool is sized once, at start-up, so that admission can refuse or queue work instead
//! of running out of memory. Filling it with zeros writes every page, so the whole pool
//! counted in the process's resident memory from the first second: 512 MiB of RSS for a
//! server that held one conversation (1,126 MiB at one stream against mlx_lm.server's
//! 718 MiB, docs/performance.md).
//!
//! MLX's CPU allocator takes its buffers from `malloc`, which is private anonymous memory
//! on Linux. After the zeros are written, the pages of such memory are handed back to the
//! kernel (`madvise(MADV_DONTNEED)`): the array still reads as zeros, because the kernel
//! maps a zero-filled page on the next touch, and a page takes memory again only when a
//! block is written into it. So resident memory follows the blocks that were ever filled,
//! while the pool's size still bounds it. (Wrapping a fresh mapping as the array's data
//! would be simpler, but MLX's CPU allocator copies external data into its own buffer,
//! which writes every page.)
//!
//! Pages are made resident again block by block, just before a step first writes there
//! ([`populate`], called by `PagedKvCache::populate_before_writes`): one call per range
//! costs far less than a page fault per page in the middle of a step.
//!
//! Elsewhere the zeros stay resident: the pool is plain `zeros`.

use mlx_rs::error::Exception;
use mlx_rs::ops::zeros_dtype;
use mlx_rs::{Array, Dtype};

/// A `dtype` array of `shape` that reads as zeros and, on Linux, takes resident memory
/// only for the pages later written into it.
pub fn zeroed_on_demand(shape: &[i32], dtype: Dtype) -> Result<Array, Exception> {
    let array = zeros_dtype(shape, dtype)?;
    array.eval()?;
    #[cfg(target_os = "linux")]
    release_pages(&array);
    Ok(array)
}

/// Makes the pages under `ranges` of `array`'s buffer (`(offset, bytes)` pairs, for an
/// evaluated array made by [`zeroed_on_demand`]) resident, with one
/// `madvise(MADV_POPULATE_WRITE)` per range instead of one page fault per page at the
/// first write. Contents never change: the kernel maps zero-filled pages where none were
/// and leaves resident ones alone. Each range is widened to whole pages, so at the
/// buffer's edges it may reach into the neighbouring bytes of the same mapping (malloc's
/// bookkeeping), which is harmless for the same reason. A failure (a kernel before 5.14)
/// only leaves the faults to the write. Does nothing elsewhere than on Linux.
pub fn populate(array: &Array, ranges: &[(usize, usize)]) {
    #[cfg(target_os = "linux")]
    {
        let Some(base) = buffer_address(array) else {
            return;
        };
        let page = page_size();
        for &(offset, len) in ranges {
            // madvise wants a page-aligned start: the range widens to whole pages.
            let first = (base + offset) / page * page;
            let end = (base + offset + len).next_multiple_of(page);
            // SAFETY: MADV_POPULATE_WRITE faults pages in as if written, without writing:
            // no memory contents change. The pages overlap a live MLX buffer; a page only
            // partly inside it is still mapped memory, and unmapped ones make the call
            // fail without effect.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    end - first,
                    libc::MADV_POPULATE_WRITE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (array, ranges);
}

/// The address of an evaluated array's buffer; `None` when it has none.
#[cfg(target_os = "linux")]
pub(super) fn buffer_address(array: &Array) -> Option<usize> {
    // SAFETY: reads the buffer's address of an evaluated array; nothing is dereferenced.
    let address = unsafe { mlx_sys::mlx_array_data_uint8(array.as_ptr()) } as usize;
    (address != 0).then_some(address)
}

#[cfg(target_os = "linux")]
pub(super) fn page_size() -> usize {
    // SAFETY: sysconf only reads a constant.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Hands the whole pages of `array`'s buffer back to the kernel. Only for an evaluated
/// array that holds nothing but zeros and that nothing else shares: its contents read the
/// same afterwards.
#[cfg(target_os = "linux")]
fn release_pages(array: &Array) {
    let len = array.nbytes();
    let Some(start) = buffer_address(array).filter(|_| len > 0) else {
        return;
    };
    let page = page_size();
    // Only the pages wholly inside the buffer: the allocator's bookkeeping may share the
    // first and last ones.
    let first = start.next_multiple_of(page);
    let end = (start + len) / page * page;
    if end <= first {
        return;
    }
    // SAFETY: [first, end) lies inside the array's buffer, which is private anonymous
    // memory (malloc's) holding zeros; after MADV_DONTNEED it reads as zeros again, so the
    // array's contents do not change. A failure leaves the pages resident, nothing else.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
    }
}
