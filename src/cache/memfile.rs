//! Large stored bodies in memory files (`memfd`): the same bytes in memory, mapped for every
//! reader that needs a slice (TLS, HTTP/2 and 3, ranges, the disk tier), and a file a plain-TCP
//! answer sends with `sendfile`, so the kernel takes the pages as they are instead of copying
//! the body out of the process for every hit (`http::direct`).
//!
//! A memory file is written once, when its fill ends, and never changed after: a `sendfile`
//! still in flight when the store lets the body go reads pages the kernel keeps until it is
//! done with them. Each file costs a descriptor and a mapping, so only bodies of
//! [`MIN_LEN`] and more get one, and no more than [`limit`] live at once; past that, or if the
//! kernel refuses one, a body stays in the process's heap as before.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The smallest body given a memory file: below it, copying is cheaper than the extra system
/// call a head and a `sendfile` take where one `writev` did.
pub(crate) const MIN_LEN: usize = 64 * 1024;

/// Memory files alive now.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many memory files may live at once: a quarter of the descriptor limit (the rest are
/// the connections'), and no more than 16,384 mappings (the kernel's default cap on a
/// process's mappings is 65,530).
pub(crate) fn limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
            usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        };
        (soft / 4).min(16_384)
    })
}

/// A body in a sealed-by-convention memory file, mapped read-only.
#[derive(Debug)]
pub(crate) struct MemFile {
    fd: OwnedFd,
    map: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and lives as long as the value; the file is never written
// after `MemFile::new` returns.
unsafe impl Send for MemFile {}
// SAFETY: as above; shared readers only read.
unsafe impl Sync for MemFile {}

impl MemFile {
    /// A memory file holding `chunks` (`len` bytes in all), or `None` when the body is small,
    /// the live files are at [`limit`], or the kernel refuses (the caller keeps the body in
    /// the heap).
    pub(crate) fn new<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
        len: usize,
    ) -> Option<MemFile> {
        if len < MIN_LEN {
            return None;
        }
        if LIVE
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit()).then_some(n + 1)
            })
            .is_err()
        {
            return None;
        }
        match Self::create(chunks, len) {
            Ok(f) => Some(f),
            Err(e) => {
                LIVE.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "stored body kept in the heap: no memory file");
                None
            }
        }
    }

    fn create<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, len: usize) -> io::Result<MemFile> {
        // SAFETY: a constant, NUL-terminated name; the flags are memfd_create's.
        let raw = unsafe { libc::memfd_create(c"meridian-body".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut file = std::fs::File::from(fd);
        let mut written = 0usize;
        for c in chunks {
            file.write_all(c)?;
            written += c.len();
        }
        if written != len {
            return Err(io::Error::other(format!(
                "{written} bytes written of a body of {len}"
            )));
        }
        let fd = OwnedFd::from(file);
        // Populated now, so the pages count in the process's RSS as the heap's bytes did (and
        // readers of the mapping take no faults).
        // SAFETY: a fresh shared read-only mapping of `len` bytes of a file of `len` bytes.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MemFile {
            fd,
            map: map.cast_const().cast(),
            len,
        })
    }

    /// The body.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `map` is a live read-only mapping of `len` bytes until `self` is dropped.
        unsafe { std::slice::from_raw_parts(self.map, self.len) }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The file, for `sendfile`.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether `body` is this file's whole body (the same bytes, not a copy or a slice).
    pub(crate) fn is(&self, body: &[u8]) -> bool {
        body.as_ptr() == self.map && body.len() == self.len
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `create`, unmapped once; no slice of it outlives `self`
        // (a `Bytes` of it owns what owns this).
        unsafe { libc::munmap(self.map.cast_mut().cast(), self.len) };
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_body_reads_back_whole_and_a_small_one_stays_in_the_heap() {
        let a = vec![1u8; MIN_LEN];
        let b = [2u8; 10];
        let f = MemFile::new([&a[..], &b[..]], MIN_LEN + 10).expect("a memory file");
        assert_eq!(f.len(), MIN_LEN + 10);
        assert_eq!(&f.bytes()[..MIN_LEN], &a[..]);
        assert_eq!(&f.bytes()[MIN_LEN..], &b[..]);
        assert!(f.is(f.bytes()));
        assert!(!f.is(&f.bytes()[1..]));
        drop(f);
        assert!(MemFile::new([&b[..]], 10).is_none());
    }

    #[test]
    fn a_length_that_does_not_add_up_gets_no_file() {
        let a = vec![1u8; MIN_LEN];
        assert!(MemFile::new([&a[..]], MIN_LEN + 1).is_none());
    }
}
