//! 64-bit atomics on map values.
//!
//! `core::sync::atomic` offers no compare-exchange on the BPF target, although the instruction
//! set has one (BPF v3, kernel >= 5.12; the object is linked with `--cpu=v3`). These wrappers use
//! the compiler intrinsics that the atomic types are built on.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

/// Reads `*dst` atomically.
///
/// # Safety
/// `dst` must be valid, 8-byte aligned, and only accessed atomically while shared.
#[inline(always)]
pub unsafe fn load(dst: *mut u64) -> u64 {
    // An aligned 64-bit load is single-copy atomic on BPF; LLVM's BPF backend has no pattern
    // for an explicit atomic load, so a volatile read stands in for a relaxed one.
    // SAFETY: the caller's contract.
    unsafe { core::ptr::read_volatile(dst) }
}

/// Replaces `*dst` with `new` if it still holds `old`; returns the value seen on failure.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
pub unsafe fn compare_exchange(dst: *mut u64, old: u64, new: u64) -> Result<(), u64> {
    // SAFETY: the caller's contract.
    let (seen, ok) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(dst, old, new)
    };
    if ok { Ok(()) } else { Err(seen) }
}

/// Adds `value` to `*dst`.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
pub unsafe fn add(dst: *mut u64, value: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, value);
    }
}
