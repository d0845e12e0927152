//! Asking the CPU to start loading memory that code will read soon.
//!
//! Work over many separately allocated items stalls on one cache miss after
//! another when each item is only touched as its turn comes; a prefetch a
//! few items ahead overlaps those misses instead.

/// Starts loading the cache line holding `address`. A hint only: it never
/// faults, whatever the address, and changes nothing but timing. A no-op
/// on targets without one on stable Rust.
#[inline(always)]
pub(crate) fn prefetch<T: ?Sized>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults and reads nothing the
    // program sees, whatever the address.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}
