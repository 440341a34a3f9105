//! Heap bytes of the core's in-memory representations (`cargo bench -p benches --bench memory`).
//!
//! A counting global allocator records the bytes requested, live, while a thousand profiles are held: a
//! 20-gauge profile as W7 writes it (built by `put_gauges`, and decoded from its stored record, which is
//! what a node holds after a restart), the mixed profile of the `core` bench, and the stored record and the
//! client view of a 20-gauge profile. The figures are exact and repeatable (no timing), so they are the
//! before/after measure of the profile representation. They count requested bytes: malloc's own headers
//! and rounding come on top, so RSS per profile (W7 in `loadgen`) is higher.

// The counting allocator below is the only unsafe code in the workspace: a `GlobalAlloc` impl cannot be
// written without it. It forwards every call to `System` unchanged.
#![allow(unsafe_code)]
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use featurestore::wire::codec::{decode_record, encode_record};
use featurestore::Profile;

mod fixtures;

use fixtures::{gauge_profile, mixed_profile, NOW};

/// The system allocator, counting live requested bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const COUNT: usize = 1_000;

/// Live heap bytes per item while `COUNT` items made by `make` are held, plus the inline size of one.
fn bytes_per<T>(make: impl Fn(usize) -> T) -> (f64, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let items: Vec<T> = (0..COUNT).map(make).collect();
    let grown = LIVE.load(Ordering::Relaxed) - before;
    drop(items);
    (grown as f64 / COUNT as f64, std::mem::size_of::<T>())
}

fn main() {
    // Warm anything process-wide (e.g. interned names) so it is not charged to the first figure.
    let _ = bytes_per(|i| gauge_profile(i, "n1", NOW));
    let records: Vec<Vec<u8>> = (0..COUNT)
        .map(|i| encode_record(&gauge_profile(i, "n1", NOW)).expect("encodes"))
        .collect();
    let rows: [(&str, (f64, usize)); 5] = [
        (
            "profile, 20 gauges, written",
            bytes_per(|i| gauge_profile(i, "n1", NOW)),
        ),
        (
            "profile, 20 gauges, decoded from its record",
            bytes_per(|i| decode_record(&records[i]).expect("decodes")),
        ),
        (
            "profile, 14 gauges + 3 counters + 3 flags",
            bytes_per(|_| mixed_profile("n1", "n2", NOW)),
        ),
        (
            "stored record, 20 gauges",
            bytes_per(|i| records[i].clone()),
        ),
        (
            "client view, 20 gauges",
            bytes_per(|i| {
                let p: Profile = decode_record(&records[i]).expect("decodes");
                p.view(NOW, None)
            }),
        ),
    ];
    println!("| what | heap B each | inline B |");
    println!("|---|---|---|");
    for (what, (heap, inline)) in rows {
        println!("| {what} | {heap:.0} | {inline} |");
    }
}
