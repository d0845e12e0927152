//! The allocator the binary and the benchmarks use: mimalloc, asked for
//! word-aligned memory the way that is fast.
//!
//! `mimalloc::MiMalloc` passes every request to `mi_malloc_aligned`, which
//! (mimalloc v3) serves a size that is not a multiple of its alignment by
//! over-allocating, unless a block of exactly that size class happens to be
//! free. Most of the mirror's allocations are such sizes (a record or a tag
//! is a header plus its bytes), so a 100k-entity snapshot went almost
//! entirely through that path: 982k of 1.01M allocations under callgrind.
//! Every mimalloc block is at least word-aligned, so a request aligned to a
//! word or less needs no more than `mi_malloc`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{mi_malloc, mi_realloc, mi_zalloc};

/// The alignment every mimalloc block has: its size classes are whole words.
const WORD: usize = size_of::<usize>();

/// mimalloc, through its plain calls for requests aligned to a word or less
/// and through `mimalloc::MiMalloc` for the others.
pub struct Mimalloc;

// SAFETY: every request goes to mimalloc, which returns blocks of at least
// the size asked, aligned to at least a word (or to the layout's alignment,
// through `MiMalloc`, when that is more), and frees any of its blocks with
// `mi_free` whatever call made it.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: any size is valid; the block is word-aligned.
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: per the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: as in `alloc`.
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: per the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a mimalloc block, which `mi_free` takes whatever
        // call made it.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= WORD {
            // SAFETY: `ptr` is a mimalloc block; the new one is word-aligned.
            unsafe { mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: per the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alignment gets a block aligned to it, of the size asked,
    /// through every call, odd sizes included.
    #[test]
    fn blocks_are_aligned_as_asked_through_every_call() {
        for align in [1, 2, 4, 8, 16, 64, 4096] {
            for size in [1, 7, 8, 13, 24, 57, 100, 1000, 5000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed once, with
                // its layout.
                unsafe {
                    let block = Mimalloc.alloc(layout);
                    assert!(
                        !block.is_null() && block.addr().is_multiple_of(align),
                        "{size} {align}"
                    );
                    block.write_bytes(0xa5, size);
                    let grown = Mimalloc.realloc(block, layout, size * 3);
                    assert!(grown.addr().is_multiple_of(align), "{size} {align}");
                    assert_eq!(*grown.add(size - 1), 0xa5);
                    Mimalloc.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let zeroed = Mimalloc.alloc_zeroed(layout);
                    assert!(zeroed.addr().is_multiple_of(align));
                    assert!((0..size).all(|at| *zeroed.add(at) == 0));
                    Mimalloc.dealloc(zeroed, layout);
                }
            }
        }
    }
}
