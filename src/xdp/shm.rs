//! A file mapped shared into memory: what a worker writes there is in the
//! file (in the page cache; under `/run`, a tmpfs, in memory) the moment
//! it is written, without a system call, and survives the process however
//! it ends. The flow journal lives in one (`dataplane::journal`).
//!
//! Invariants: the mapping covers exactly the file's length, fixed at
//! creation; nothing else maps or truncates the file while this process
//! holds it (a successor reads it only after this process is gone, or
//! writes a new file and renames it over this one).

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

/// A file mapped shared into memory: what is written to it is in the
/// file however the process ends (the crash journal).
pub struct SharedFile {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; `&mut self` is
// needed to write it, so it is never written from two threads at once.
unsafe impl Send for SharedFile {}

impl SharedFile {
    /// Creates `path` anew (a new file renamed over any old one, whose
    /// readers keep the old contents) of `len` zero bytes, mapped and
    /// pre-faulted.
    pub fn create(path: &Path, len: usize) -> io::Result<SharedFile> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty shared file",
            ));
        }
        // Private to meshgate's user, and a new file: whatever someone left
        // at the temporary name is removed, never followed.
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("new");
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.set_len(len as u64)?;
        // SAFETY: a new shared mapping of a file of exactly `len` bytes,
        // with no address hint: it overlaps no existing memory; the result
        // is checked below. The mapping stays valid after `f` is closed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                f.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let ptr = NonNull::new(p as *mut u8).ok_or_else(io::Error::last_os_error)?;
        let shared = SharedFile { ptr, len };
        std::fs::rename(&tmp, path)?;
        Ok(shared)
    }

    /// The mapping's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsMut<[u8]> for SharedFile {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` readable and writable bytes for the
        // life of `self`; the `&mut self` borrow makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `create`; no view of
        // it outlives the `&mut self` borrows that made them.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_in_the_file_without_a_flush() {
        let dir = std::env::temp_dir().join(format!("mg-shm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("j");
        let mut m = SharedFile::create(&path, 8192).unwrap();
        m.as_mut()[4096..4100].copy_from_slice(b"flow");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 8192);
        assert_eq!(&on_disk[4096..4100], b"flow");
        // A new file renamed over it: the old mapping writes nowhere seen.
        let mut n = SharedFile::create(&path, 4096).unwrap();
        m.as_mut()[0] = 1;
        n.as_mut()[0] = 2;
        assert_eq!(std::fs::read(&path).unwrap()[0], 2);
        drop((m, n));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
