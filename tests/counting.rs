//! A global allocator that counts the bytes each thread holds, so that a
//! test can tell what the host keeps of a run in *allocated* bytes, not in
//! lengths.
//!
//! Counts are per thread: a run on a current-thread runtime allocates and
//! frees on its test's thread, so tests running in parallel do not disturb
//! each other's figures. Install it in a test binary with
//! `#[global_allocator] static ALLOCATOR: Counting = Counting;`.

#![allow(unsafe_code, reason = "a global allocator is an unsafe trait")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    /// Bytes allocated by this thread and not yet freed by it.
    static HELD: Cell<isize> = const { Cell::new(0) };
    /// The most `HELD` has been since [`reset_peak`].
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    let held = HELD.get() + bytes;
    HELD.set(held);
    if held > PEAK.get() {
        PEAK.set(held);
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counting touches only thread-local cells without destructors, which are
// usable at any point of a thread's life.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's contract for `alloc`.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            add(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's contract for `alloc_zeroed`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            add(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller's contract for `dealloc`.
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller's contract for `realloc`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        new
    }
}

/// Bytes this thread has allocated and not freed.
pub fn held() -> isize {
    HELD.get()
}

/// Starts measuring this thread's peak afresh, from what it holds now.
pub fn reset_peak() {
    PEAK.set(HELD.get());
}

/// The most this thread has held since [`reset_peak`].
pub fn peak() -> isize {
    PEAK.get()
}
