//! A global allocator that counts the heap bytes in use over another allocator: what the
//! memory test and the memory examples read (RSS would include the allocator's free pages).
//! Each binary installs it with `#[global_allocator] static A: Counting<X> = Counting(X);`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts into [`live`] and forwards to the allocator it wraps.
pub struct Counting<A>(pub A);

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Heap bytes in use now.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The process's resident set (`VmRSS`), KiB; 0 when it cannot be read.
#[cfg_attr(
    test,
    expect(dead_code, reason = "the memory examples read it; the test does not")
)]
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

// SAFETY: forwards every call to the wrapped allocator unchanged and only counts.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout, forwarded.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same pointer and layout, forwarded.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same pointer and layout, forwarded.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}
