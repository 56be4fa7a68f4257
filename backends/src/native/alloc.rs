//! The allocator compiled code calls in process: the JIT maps the `malloc`, `calloc` and `free`
//! that generated code references (LLVM turns a `malloc` followed by zeroing into `calloc`) to
//! [`tttc_malloc`], [`tttc_calloc`] and [`tttc_free`] (an ahead-of-time library keeps the C
//! library's).
//!
//! Small blocks are plain heap blocks. Large ones (at least [`KEPT_FROM_BYTES`]: above all the
//! memory plan's arena, gigabytes for a real-size gradient) are kept when freed and handed out
//! again to the next request they can hold. Without this every run of a compiled program gets
//! its arena fresh from the kernel (the C library maps blocks this large and unmaps them on
//! `free`), and faults in and zeroes every page of it again: measured at about a tenth of a
//! training step of a 2-layer language model.
//!
//! What is kept never exceeds what compiled code had live at once: a block is kept only when
//! freed, at most [`MAX_KEPT`] are kept (the smallest goes first), and a request none of them
//! can hold releases them all before it allocates. [`release_kept_blocks`] returns them to the
//! system.

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::sync::{Mutex, MutexGuard};

/// Blocks at least this large (in bytes) are kept for reuse when freed.
pub const KEPT_FROM_BYTES: usize = 16 << 20;

/// At most this many freed blocks are kept.
pub const MAX_KEPT: usize = 4;

/// Alignment of every block handed out (a cache line; the C library's `malloc` promises 16).
const ALIGN: usize = 64;

/// Bytes in front of each block, recording its usable size (one alignment unit, so the block
/// after it stays aligned).
const HEADER: usize = ALIGN;

/// A block's start (its header) and its usable size in bytes.
struct Block {
    base: *mut u8,
    usable: usize,
}

// SAFETY: a kept block is owned by the cache alone; nothing else holds its pointer.
unsafe impl Send for Block {}

impl Block {
    fn layout(usable: usize) -> Option<Layout> {
        Layout::from_size_align(usable.checked_add(HEADER)?, ALIGN).ok()
    }

    /// A fresh block of `usable` bytes, or `None` when the system has no memory for it.
    fn allocate(usable: usize) -> Option<Block> {
        let layout = Self::layout(usable)?;
        // SAFETY: the layout has a nonzero size (the header).
        let base = unsafe { alloc(layout) };
        (!base.is_null()).then_some(Block { base, usable })
    }

    /// The block whose usable part starts at `user` (a pointer [`Block::hand_out`] returned).
    ///
    /// # Safety
    /// `user` must come from [`tttc_malloc`] and not have been freed.
    unsafe fn from_user(user: *mut u8) -> Block {
        let base = user.sub(HEADER);
        let usable = (base as *const usize).read();
        Block { base, usable }
    }

    /// Records the size in the header and returns the usable part.
    fn hand_out(self) -> *mut u8 {
        // SAFETY: the header lies inside the block and is aligned for a `usize`.
        unsafe {
            (self.base as *mut usize).write(self.usable);
            self.base.add(HEADER)
        }
    }

    /// A fresh block of `usable` zero bytes (pages the system hands out zeroed are not
    /// written again).
    fn allocate_zeroed(usable: usize) -> Option<Block> {
        let layout = Self::layout(usable)?;
        // SAFETY: the layout has a nonzero size (the header).
        let base = unsafe { alloc_zeroed(layout) };
        (!base.is_null()).then_some(Block { base, usable })
    }

    fn release(self) {
        // The layout was formed when the block was made, so it forms again; were it not (a
        // corrupted header), leaking the block is better than unwinding out of `tttc_free`.
        if let Some(layout) = Self::layout(self.usable) {
            // SAFETY: `base` came from `alloc` with this same layout.
            unsafe { dealloc(self.base, layout) }
        }
    }
}

static KEPT: Mutex<Vec<Block>> = Mutex::new(Vec::new());

fn kept() -> MutexGuard<'static, Vec<Block>> {
    // A panic while the lock was held cannot leave the list inconsistent (each change is one
    // push or remove), so a poisoned lock is still usable.
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// The smallest kept block that holds `bytes`; when none does, every kept block is released
/// first (all are too small), so that the new allocation does not come on top of them.
fn take_kept(bytes: usize) -> Option<Block> {
    let mut kept = kept();
    let best = (0..kept.len())
        .filter(|&i| kept[i].usable >= bytes)
        .min_by_key(|&i| kept[i].usable);
    match best {
        Some(i) => Some(kept.swap_remove(i)),
        None => {
            kept.drain(..).for_each(Block::release);
            None
        }
    }
}

/// `malloc` for compiled code: `bytes` bytes aligned to 64, or null when there is no memory.
///
/// # Safety
/// Callable from any thread; the result must be freed with [`tttc_free`] only.
pub unsafe extern "C" fn tttc_malloc(bytes: usize) -> *mut u8 {
    let bytes = bytes.max(1);
    let block = if bytes >= KEPT_FROM_BYTES {
        take_kept(bytes).or_else(|| Block::allocate(bytes))
    } else {
        Block::allocate(bytes)
    };
    block.map_or(std::ptr::null_mut(), Block::hand_out)
}

/// `calloc` for compiled code: `count · size` zero bytes aligned to 64, or null when there is
/// no memory or the size overflows.
///
/// # Safety
/// As [`tttc_malloc`].
pub unsafe extern "C" fn tttc_calloc(count: usize, size: usize) -> *mut u8 {
    let Some(bytes) = count.checked_mul(size) else {
        return std::ptr::null_mut();
    };
    let bytes = bytes.max(1);
    if bytes >= KEPT_FROM_BYTES {
        if let Some(block) = take_kept(bytes) {
            let user = block.hand_out();
            std::ptr::write_bytes(user, 0, bytes);
            return user;
        }
    }
    Block::allocate_zeroed(bytes).map_or(std::ptr::null_mut(), Block::hand_out)
}

/// `free` for compiled code: keeps a large block for reuse, releases a small one; null is
/// ignored.
///
/// # Safety
/// `p` must be null or come from [`tttc_malloc`], and not have been freed.
pub unsafe extern "C" fn tttc_free(p: *mut u8) {
    if p.is_null() {
        return;
    }
    let block = Block::from_user(p);
    if block.usable < KEPT_FROM_BYTES {
        return block.release();
    }
    let mut kept = kept();
    kept.push(block);
    if kept.len() > MAX_KEPT {
        let smallest = (0..kept.len()).min_by_key(|&i| kept[i].usable);
        if let Some(i) = smallest {
            kept.swap_remove(i).release();
        }
    }
}

/// Returns every kept block to the system; the bytes released.
pub fn release_kept_blocks() -> usize {
    let blocks: Vec<Block> = kept().drain(..).collect();
    let bytes = blocks.iter().map(|b| b.usable).sum();
    blocks.into_iter().for_each(Block::release);
    bytes
}

/// The bytes currently kept for reuse.
pub fn kept_bytes() -> usize {
    kept().iter().map(|b| b.usable).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache is process-wide: the tests that look at it run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn small_blocks_are_aligned_usable_and_not_kept() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        release_kept_blocks();
        unsafe {
            let p = tttc_malloc(100);
            assert!(!p.is_null());
            assert_eq!(p as usize % ALIGN, 0);
            std::ptr::write_bytes(p, 7, 100);
            tttc_free(p);
            tttc_free(std::ptr::null_mut());
        }
        assert_eq!(kept_bytes(), 0);
    }

    #[test]
    fn a_freed_large_block_serves_the_next_request_it_can_hold() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        release_kept_blocks();
        unsafe {
            let big = KEPT_FROM_BYTES * 2;
            let p = tttc_malloc(big);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 1, big);
            tttc_free(p);
            assert_eq!(kept_bytes(), big);
            // A smaller large request reuses it (same memory).
            let q = tttc_malloc(KEPT_FROM_BYTES);
            assert_eq!(q, p);
            assert_eq!(kept_bytes(), 0);
            tttc_free(q);
            // A request it cannot hold releases it and allocates afresh.
            let r = tttc_malloc(big * 2);
            assert!(!r.is_null());
            assert_eq!(kept_bytes(), 0);
            std::ptr::write_bytes(r, 2, big * 2);
            tttc_free(r);
            assert_eq!(kept_bytes(), big * 2);
        }
        assert_eq!(release_kept_blocks(), KEPT_FROM_BYTES * 4);
        assert_eq!(kept_bytes(), 0);
    }

    #[test]
    fn calloc_zeroes_a_reused_block_and_refuses_overflow() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        release_kept_blocks();
        unsafe {
            let n = KEPT_FROM_BYTES;
            let p = tttc_malloc(n);
            std::ptr::write_bytes(p, 0xab, n);
            tttc_free(p);
            let q = tttc_calloc(n / 4, 4);
            assert_eq!(q, p, "the kept block is reused");
            assert!(std::slice::from_raw_parts(q, n).iter().all(|&b| b == 0));
            tttc_free(q);
            let small = tttc_calloc(10, 3);
            assert!(std::slice::from_raw_parts(small, 30)
                .iter()
                .all(|&b| b == 0));
            tttc_free(small);
            assert!(tttc_calloc(usize::MAX, 2).is_null());
        }
        release_kept_blocks();
    }

    #[test]
    fn at_most_max_kept_blocks_stay_and_the_smallest_go_first() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        release_kept_blocks();
        let sizes: Vec<usize> = (1..=MAX_KEPT + 2).map(|k| KEPT_FROM_BYTES + k).collect();
        unsafe {
            let ptrs: Vec<*mut u8> = sizes.iter().map(|&n| tttc_malloc(n)).collect();
            assert!(ptrs.iter().all(|p| !p.is_null()));
            ptrs.into_iter().for_each(|p| tttc_free(p));
        }
        let largest: usize = sizes[sizes.len() - MAX_KEPT..].iter().sum();
        assert_eq!(kept_bytes(), largest);
        release_kept_blocks();
    }
}
