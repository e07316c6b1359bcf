//! The process allocator: mimalloc, except that very large requests are served by lazily
//! backed anonymous mappings.
//!
//! Why mimalloc: the metadata path allocates small objects at a high rate (persistent-map
//! nodes on every replay, record encodings, protocol structs); profiles of `kmeta bench
//! quorum` showed about 30% of CPU in glibc's malloc/free, and mimalloc raised committed
//! records/s at 1,024 writers from 82-98k to 127-185k on the same machine.
//!
//! Why: kafka-protocol 0.18 decodes an array by calling `Vec::with_capacity(count)` with the
//! count read from the wire, before reading any element (upstream PRs #152 and #200 are still
//! open). A 12-byte hostile frame claiming two billion elements asks for hundreds of GiB; the
//! system allocator refuses, and Rust aborts the whole process. kmeta may not patch the crate,
//! so it makes such a request harmless instead: an allocation of at least
//! [`LAZY_ALLOCATION_BYTES`] is an `mmap` with `MAP_NORESERVE`, which reserves address space
//! but no memory. The decoder then fails on the first missing element, the vector is dropped,
//! and the mapping is returned. A successful decode can never hold such a vector: every
//! element takes at least one byte of the frame, and frames are capped far below this size.
//!
//! Under `vm.overcommit_memory = 2` (strict accounting) the kernel still refuses; the
//! listeners' frame cap and connection cap are the remaining guard there (`docs/PROTOCOL.md`).

use std::alloc::{GlobalAlloc, Layout};

/// Allocations of at least this many bytes are lazily backed mappings.
pub const LAZY_ALLOCATION_BYTES: usize = 1 << 30;

const PAGE: usize = 4096;

/// The allocator installed for kmeta's binaries and tests (see the module docs).
/// Everything below [`LAZY_ALLOCATION_BYTES`] goes to mimalloc.
pub struct GuardedAlloc;

fn lazy(layout: &Layout) -> bool {
    layout.size() >= LAZY_ALLOCATION_BYTES && layout.align() <= PAGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is either mimalloc's (and returned to it) or a mapping of
// exactly `layout.size()` bytes (and unmapped with that size); `lazy` decides which, and
// Rust passes the same layout to `dealloc` as to `alloc`.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if lazy(&layout) {
            unsafe { map(layout.size()) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if lazy(&layout) {
            // Anonymous mappings are zero-filled.
            unsafe { map(layout.size()) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if lazy(&layout) {
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !lazy(&layout) && !lazy(&new_layout) {
            return unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        }
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// mimalloc's `mi_option_purge_delay` (v2's option numbering; the test below checks it
/// names the option whose default is 10 ms).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps a freed page before handing it back to the system.
pub const PURGE_DELAY_MS: i64 = 1_000;

/// Sets the process's memory behaviour, once, before the work starts:
///
/// - **No transparent huge pages** (`prctl(PR_SET_THP_DISABLE)`), and
/// - **freed pages kept for [`PURGE_DELAY_MS`]** instead of mimalloc's 10 ms, unless the
///   environment sets `MIMALLOC_PURGE_DELAY` (mimalloc's own variable, read at its start).
///
/// Why: replaying a million-partition snapshot allocates and frees persistent-map nodes at a
/// high rate. With mimalloc's defaults each freed page went back to the system after 10 ms and
/// came back as a fresh huge page, zeroed by the kernel, 2 MiB at a time: a controller loading
/// a 37 MB snapshot took 8,500-9,500 page faults and 1.9-2.5 s of system time, zeroing about
/// 18 GiB, and peaked at 792 MiB. With both settings the load took 4.0-4.8 s instead of 6.7 s,
/// 0.6-0.7 s of system time and a 673-688 MiB peak (`docs/BENCHMARKS.md`). Idle threads still
/// return their free pages every second ([`on_idle`]).
pub fn tune() {
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory map; failing
    // (an old kernel) leaves huge pages as they were. mi_option_set writes one of mimalloc's
    // option cells, which mimalloc reads on each purge.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS as libc::c_long);
        }
    }
}

/// How often, at most, an idle runtime thread hands its free pages back ([`on_idle`]).
const IDLE_COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Called when a runtime worker thread is about to park (nothing to run): at most once per
/// [`IDLE_COLLECT_EVERY`] on each thread, has mimalloc return that thread's free pages.
///
/// Why: mimalloc purges a thread's emptied pages only when that thread allocates or frees
/// again, after a delay (10 ms). A burst of work (a million partitions created, a broker
/// fenced) leaves every worker holding the pages it freed, and a thread that then goes idle
/// keeps them resident. `bench scale` at 300,000 partitions measured brokers at 362-366 MiB
/// with the default and 330-332 MiB with `MIMALLOC_PURGE_DELAY=0`; a purge delay of zero
/// costs every free of a page a system call under load, this costs one heap walk per second
/// per thread that went idle.
pub fn on_idle() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| match last.get() {
        Some(t) if now.duration_since(t) < IDLE_COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        // SAFETY: mi_collect only releases memory mimalloc holds free; it is safe to call
        // from any thread at any time.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_mimalloc_documents_at_ten_ms() {
        // SAFETY: reads one of mimalloc's option cells.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // Another test in this process may have tuned it already.
        assert!(
            default == 10 || default == super::PURGE_DELAY_MS as libc::c_long,
            "option {} reads {default}",
            super::MI_OPTION_PURGE_DELAY
        );
        super::tune();
        // SAFETY: as above.
        let now = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(now, super::PURGE_DELAY_MS as libc::c_long);
        // SAFETY: PR_GET_THP_DISABLE only reads this process's flag.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
    }

    #[test]
    fn an_allocation_far_beyond_memory_is_only_reserved() {
        // 256 GiB: more than this machine has; the system allocator would refuse it.
        let v: Vec<u64> = Vec::with_capacity(32 << 30);
        assert!(v.capacity() >= 32 << 30);
        let mut grown: Vec<u8> = Vec::with_capacity(16);
        grown.extend_from_slice(b"kmeta");
        grown.reserve_exact(super::LAZY_ALLOCATION_BYTES);
        assert_eq!(&grown[..], b"kmeta");
        grown.shrink_to_fit();
        assert_eq!(&grown[..], b"kmeta");
    }
}
