//! The executable's global allocator: the system allocator, except that every block is zeroed
//! before it is handed back. Zeroing our own secret types on drop is not enough — response
//! buffers, parser scratch space and the temporaries of every library hold copies of the
//! secrets too, and a freed block keeps its bytes until it is reused. Zeroing at the allocator
//! wipes all of them, whoever allocated them.

use std::alloc::{GlobalAlloc, Layout, System};

/// [`System`] with every block zeroed when it is freed, or moved by `realloc`.
pub struct ZeroingAllocator;

// SAFETY: every method forwards to `System` with a layout it accepts: the caller's own layout,
// or (in `realloc`) the caller's alignment with the new size, which `GlobalAlloc::realloc`'s
// contract guarantees is a valid layout. The extra work only writes to and copies between
// blocks the caller owns.
unsafe impl GlobalAlloc for ZeroingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded under the caller's guarantees (non-zero size).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` is a live block of `layout` from this allocator.
        unsafe {
            wipe(ptr, layout.size());
            System.dealloc(ptr, layout);
        }
    }

    /// Never `System::realloc`: it may move the block and free the old one without zeroing
    /// it, leaving a full copy behind. Always a new block, a copy, and a wiped old block.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` with the old alignment is a valid layout (the caller's contract);
        // `ptr` is live for `layout.size()` bytes and the new block for `new_size`, and two live
        // blocks never overlap; the old block is freed exactly once, and only when the new one
        // exists (on failure the caller keeps the old block, as `realloc` requires).
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new_ptr = System.alloc(new_layout);
            if !new_ptr.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new_ptr
        }
    }
}

/// Zeroes `size` bytes at `ptr`, in a way the optimizer cannot remove.
///
/// A plain `write_bytes` right before `free` is a dead store to the compiler: nothing reads
/// the block afterwards, and LLVM knows what `free` means, so it deletes the memset (rustc
/// 1.95 at -O does; that is why C has `explicit_bzero`). A `compiler_fence` happens to keep it
/// today but promises nothing of the kind — it only orders accesses against signal handlers
/// on this thread. So the memset (fast, unlike byte-wise volatile writes) is followed by an
/// empty `asm!` that is given the pointer and is marked `readonly` but not `nomem`: the
/// compiler must assume it reads the zeroed bytes, so the stores have to happen, inlined or
/// not (LTO). This is glibc's `explicit_bzero`.
///
/// # Safety
/// `ptr` must be valid for writes of `size` bytes.
unsafe fn wipe(ptr: *mut u8, size: usize) {
    // SAFETY: the caller guarantees `ptr` is writable for `size` bytes.
    unsafe { std::ptr::write_bytes(ptr, 0, size) };
    // SAFETY: the template is empty: it executes no instruction, touches no register but the
    // input, and uses no stack.
    unsafe { std::arch::asm!("/* {0} */", in(reg) ptr, options(nostack, preserves_flags, readonly)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_zeroed_when_freed_and_when_moved() {
        let allocator = ZeroingAllocator;
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: each block is used within its layout and freed once; `realloc` consumed
        // `block`, so only `grown` is touched after it.
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null());
            std::ptr::write_bytes(block, 0xA5, 64);
            let grown = allocator.realloc(block, layout, 4096);
            assert!(!grown.is_null());
            assert!(std::slice::from_raw_parts(grown, 64).iter().all(|&byte| byte == 0xA5));
            wipe(grown, 4096);
            assert!(std::slice::from_raw_parts(grown, 4096).iter().all(|&byte| byte == 0));
            allocator.dealloc(grown, Layout::from_size_align(4096, 8).unwrap());
        }
    }
}
