//! A box whose memory its thread keeps for the next one of the same layout.
//!
//! Every request puts itself (its head, and what `answer_now` leaves for later) in a box, and a
//! forwarded one its forward (or fill) future, a few KB, and the streams of its bodies: they move
//! as pointers instead of as hundreds of bytes. glibc serves such blocks from its arena's bins
//! (its per-thread caches stop at 1 KiB, and `meridian run` turns them off besides), about 600
//! instructions a request for the future's block alone, malloc and free, under the arena's
//! lock. A [`Reused`] gives its block back to its thread's spares instead, and the next
//! request's box on that thread takes it.
//!
//! Bounded: a thread keeps at most [`KEPT`] blocks (64 blocks of a request's three layouts,
//! the largest 4–6 KB: a few hundred KB at most); a block given back past that, or on a thread
//! that is ending, goes back to the allocator.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::ptr::NonNull;
use std::thread::LocalKey;

/// The last of this thread's `spares` that `fits`, taken, where the thread has one (none on a
/// thread that is ending).
pub(crate) fn take_spare<T: 'static>(
    spares: &'static LocalKey<RefCell<Vec<T>>>,
    fits: impl Fn(&T) -> bool,
) -> Option<T> {
    spares
        .try_with(|s| {
            let mut s = s.try_borrow_mut().ok()?;
            let at = s.iter().rposition(fits)?;
            Some(s.swap_remove(at))
        })
        .ok()
        .flatten()
}

/// Keeps `spare` (emptied by the caller) for the next taker on this thread, unless the thread
/// keeps `most` already or is ending: then it is dropped.
pub(crate) fn keep_spare<T: 'static>(
    spares: &'static LocalKey<RefCell<Vec<T>>>,
    spare: T,
    most: usize,
) {
    let _ = spares.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < most {
                s.push(spare);
            }
        }
    });
}

/// Most blocks a thread keeps. A request on its way holds three (its head, its forward or fill
/// future, its answer's body stream), and the requests a thread has under way rise and fall by
/// tens at once under load: with 16, 64 connections on two threads still took a new block from
/// the allocator for 7 requests in 10 (callgrind, ~300 instructions each, with the free).
pub(crate) const KEPT: usize = 64;

/// A block of memory from `alloc`, holding no value; freed when dropped.
struct Block {
    at: NonNull<u8>,
    layout: Layout,
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: the block was allocated by `alloc` with its layout, and holds no value.
        unsafe { dealloc(self.at.as_ptr(), self.layout) }
    }
}

thread_local! {
    static SPARES: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// A block of `layout` (whose size is not zero): a spare of this thread, else a new one.
fn take(layout: Layout) -> NonNull<u8> {
    match take_spare(&SPARES, |b| b.layout == layout) {
        // Handed out: no longer the spare's to free.
        Some(block) => std::mem::ManuallyDrop::new(block).at,
        None => {
            // SAFETY: the layout's size is not zero (see `Reused::new`).
            let block = unsafe { alloc(layout) };
            NonNull::new(block).unwrap_or_else(|| handle_alloc_error(layout))
        }
    }
}

/// Keeps the block at `at` (of `layout`, holding no value) for this thread's next box, or
/// frees it.
fn give(at: NonNull<u8>, layout: Layout) {
    keep_spare(&SPARES, Block { at, layout }, KEPT);
}

/// An owned `T` on the heap, as a `Box<T>`, whose memory goes to its thread's spares when it
/// is dropped.
pub(crate) struct Reused<T> {
    value: NonNull<T>,
    _owns: PhantomData<T>,
}

// SAFETY: a `Reused<T>` owns its `T` alone, as a `Box<T>` does.
unsafe impl<T: Send> Send for Reused<T> {}
// SAFETY: as above; `&Reused<T>` gives only `&T`.
unsafe impl<T: Sync> Sync for Reused<T> {}

impl<T> Reused<T> {
    /// `make()`'s value, moved into its block. Unlike `Box::write` into a fresh allocation,
    /// which LLVM can make the value in, a reused block (a pointer other code has held) gets
    /// it copied in from the stack, all of `T`'s size (~70 instructions for the forward
    /// future), well under the allocator's ~1,000 it saves.
    #[inline(always)]
    pub(crate) fn new(make: impl FnOnce() -> T) -> Reused<T> {
        let layout = Layout::new::<T>();
        if layout.size() == 0 {
            let value = NonNull::<T>::dangling();
            // SAFETY: any aligned non-null pointer is valid for a zero-sized write.
            unsafe { value.as_ptr().write(make()) };
            return Reused {
                value,
                _owns: PhantomData,
            };
        }
        let value = take(layout).cast::<T>();
        // SAFETY: the block is `T`'s layout and holds nothing. Should `make` panic, the block is
        // lost to the allocator (never freed), which is safe.
        unsafe { value.as_ptr().write(make()) };
        Reused {
            value,
            _owns: PhantomData,
        }
    }

    /// [`Reused::new`], pinned (a future to poll where it is).
    #[inline(always)]
    pub(crate) fn pin(make: impl FnOnce() -> T) -> Pin<Reused<T>> {
        // SAFETY: the value stays in its block until it is dropped there: `Reused` has no way to
        // move it out (as `Box::into_pin`).
        unsafe { Pin::new_unchecked(Reused::new(make)) }
    }

    /// The value, moved out; its block goes to the thread's spares.
    pub(crate) fn into_inner(this: Reused<T>) -> T {
        let this = std::mem::ManuallyDrop::new(this);
        // SAFETY: the block holds a `T`, read once here; `this` is never dropped, so nothing
        // reads or drops it again.
        let value = unsafe { this.value.as_ptr().read() };
        let layout = Layout::new::<T>();
        if layout.size() != 0 {
            give(this.value.cast(), layout);
        }
        value
    }
}

impl<T> Deref for Reused<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the block holds a `T` for as long as `self` lives.
        unsafe { self.value.as_ref() }
    }
}

impl<T> DerefMut for Reused<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `self` is borrowed mutably.
        unsafe { self.value.as_mut() }
    }
}

impl<T> Drop for Reused<T> {
    fn drop(&mut self) {
        // SAFETY: the block holds a `T`, dropped once, here; nothing reads it afterwards.
        unsafe { std::ptr::drop_in_place(self.value.as_ptr()) };
        let layout = Layout::new::<T>();
        if layout.size() != 0 {
            give(self.value.cast(), layout);
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Reused<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>, [u8; 600]);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn spares() -> usize {
        SPARES.with(|s| s.borrow().len())
    }

    #[test]
    fn a_value_moved_out_is_not_dropped_with_its_box_and_its_block_is_kept() {
        let drops = Arc::new(AtomicUsize::new(0));
        let boxed = Reused::new(|| Counted(drops.clone(), [5; 600]));
        let before = spares();
        let value = Reused::into_inner(boxed);
        assert_eq!(drops.load(Ordering::SeqCst), 0, "moved out, not dropped");
        assert_eq!(value.1[599], 5);
        assert_eq!(spares(), before + 1, "its block kept for the next box");
        drop(value);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_dropped_box_drops_its_value_once_and_the_next_takes_its_block() {
        let drops = Arc::new(AtomicUsize::new(0));
        let first = Reused::new(|| Counted(drops.clone(), [7; 600]));
        let block = first.value.as_ptr() as usize;
        assert_eq!(first.1[599], 7);
        let before = spares();
        drop(first);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(spares(), before + 1);
        let second = Reused::new(|| Counted(drops.clone(), [9; 600]));
        assert_eq!(
            second.value.as_ptr() as usize,
            block,
            "the spare block is taken"
        );
        assert_eq!(second.1[0], 9);
        assert_eq!(spares(), before);
        // Another layout does not take it.
        drop(second);
        let other = Reused::new(|| [1u64; 3]);
        assert_ne!(other.value.as_ptr() as usize, block);
        assert_eq!(other[2], 1);
        drop(other);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_thread_keeps_no_more_than_its_bound() {
        let boxes: Vec<_> = (0..KEPT + 5).map(|i| Reused::new(|| [i; 100])).collect();
        for (i, b) in boxes.iter().enumerate() {
            assert_eq!(b[99], i);
        }
        drop(boxes);
        assert_eq!(spares(), KEPT);
        // Zero-sized values take no block.
        let none = Reused::new(|| ());
        drop(none);
        assert_eq!(spares(), KEPT);
    }

    #[test]
    fn a_pinned_future_runs_in_its_block() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let n = rt.block_on(Reused::pin(|| async {
            let big = [3u8; 2048];
            tokio::task::yield_now().await;
            big.iter().map(|&b| usize::from(b)).sum::<usize>()
        }));
        assert_eq!(n, 3 * 2048);
    }
}
