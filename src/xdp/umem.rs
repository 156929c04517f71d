//! The UMEM: one memory area shared by every AF_XDP socket of a forwarder,
//! cut into equal frames, and the [`FrameToken`]s that prove ownership of a
//! frame by user space.
//!
//! Ownership protocol (what makes [`Umem::frame`] sound): at any instant a
//! frame belongs to exactly one party — the kernel (from the moment its
//! address is on the fill or TX ring until it comes back on the RX or
//! completion ring) or the single holder of its `FrameToken`. Tokens are
//! created only when the kernel hands a frame back ([`super::port::Port`])
//! or, once per frame, when the UMEM is created; they are consumed when a
//! frame is given to the kernel; they cannot be cloned. Hence two live
//! `&mut` views of one frame cannot exist. Tokens move between workers
//! through lock-free queues whose release/acquire pairs also publish the
//! frame's bytes.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT_UMEM_ID: AtomicU32 = AtomicU32::new(1);

/// Ownership of one UMEM frame, and where its data is.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameToken {
    /// Offset of the data from the start of the UMEM.
    addr: u64,
    len: u32,
    umem: u32,
}

impl FrameToken {
    /// Offset of the first data byte from the start of the UMEM.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The frame's data length.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the frame holds no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn new(addr: u64, len: u32, umem: u32) -> Self {
        FrameToken { addr, len, umem }
    }

    /// Consumes the token when its frame goes to the kernel.
    pub(crate) fn into_desc(self) -> (u64, u32) {
        (self.addr, self.len)
    }
}

/// An anonymous memory mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    huge: bool,
}

impl Mapping {
    fn new(len: usize, try_huge: bool) -> io::Result<Mapping> {
        let base = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        let attempt = |flags: libc::c_int| {
            // SAFETY: an anonymous private mapping with no address hint
            // touches no existing memory; the result is checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                None
            } else {
                NonNull::new(p as *mut u8)
            }
        };
        // Huge pages cut TLB misses on the frame accesses; the UMEM works
        // without them (and most machines have none reserved).
        if try_huge && len % (2 << 20) == 0 {
            if let Some(ptr) = attempt(base | libc::MAP_HUGETLB) {
                return Ok(Mapping {
                    ptr,
                    len,
                    huge: true,
                });
            }
        }
        attempt(base)
            .map(|ptr| Mapping {
                ptr,
                len,
                huge: false,
            })
            .ok_or_else(io::Error::last_os_error)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; the owning
        // `Umem` outlives every socket and view of it.
        unsafe {
            libc::munmap(self.ptr.as_ptr() as *mut libc::c_void, self.len);
        }
    }
}

/// A registered UMEM.
pub struct Umem {
    pub(crate) inner: xdpilone::Umem,
    area: Mapping,
    frame_size: u32,
    frames: u32,
    id: u32,
}

// SAFETY: `xdpilone::Umem` holds a pointer to the area, a socket fd and a
// spin-locked registry of device queues; it is not tied to a thread. Frame
// memory is reached only through `frame`, whose exclusivity rests on token
// ownership (module docs), not on the thread that calls it.
unsafe impl Send for Umem {}
// SAFETY: as above; `&Umem` methods never hand out overlapping `&mut`.
unsafe impl Sync for Umem {}

/// Bytes the kernel reserves in front of received data (`XDP_PACKET_HEADROOM`):
/// the room meshgate encapsulates into.
pub const KERNEL_HEADROOM: usize = 256;

impl Umem {
    /// Maps `frames` frames of `frame_size` bytes (a power of two) and
    /// registers them with a new XDP socket.
    pub fn new(frames: u32, frame_size: u32, ring_size: u32, try_huge: bool) -> io::Result<Umem> {
        assert!(frame_size.is_power_of_two() && frame_size >= 2048);
        let len = frames as usize * frame_size as usize;
        let area = Mapping::new(len, try_huge)?;
        let cfg = xdpilone::UmemConfig {
            fill_size: ring_size,
            complete_size: ring_size,
            frame_size,
            headroom: 0,
            flags: 0,
        };
        let slice = NonNull::slice_from_raw_parts(area.ptr, len);
        // SAFETY: `slice` is a page-aligned mapping of `len` bytes that the
        // returned `Umem` owns (field `area`) and unmaps only after `inner`
        // (declared first, so dropped first) and every socket using it.
        let inner = unsafe { xdpilone::Umem::new(cfg, slice) }
            .map_err(|e| io::Error::from_raw_os_error(e.get_raw()))?;
        Ok(Umem {
            inner,
            area,
            frame_size,
            frames,
            id: NEXT_UMEM_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// Frames in the UMEM.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Whether huge pages back it.
    pub fn huge_pages(&self) -> bool {
        self.area.huge
    }

    /// Index of the frame a token refers to.
    pub fn frame_index(&self, t: &FrameToken) -> u32 {
        (t.addr / u64::from(self.frame_size)) as u32
    }

    /// Tokens for frames `range`, each pointing `KERNEL_HEADROOM` into its
    /// frame with length 0. Called once per frame at setup (by `open`).
    pub(crate) fn initial_tokens(&self, range: std::ops::Range<u32>) -> Vec<FrameToken> {
        assert!(range.end <= self.frames);
        range
            .map(|i| {
                FrameToken::new(
                    u64::from(i) * u64::from(self.frame_size) + KERNEL_HEADROOM as u64,
                    0,
                    self.id,
                )
            })
            .collect()
    }

    /// A token for a descriptor the kernel returned, after checking that it
    /// lies inside one frame of this UMEM. `None`: a corrupt descriptor.
    pub(crate) fn token_from_kernel(&self, addr: u64, len: u32) -> Option<FrameToken> {
        let fs = u64::from(self.frame_size);
        let in_frame = addr % fs;
        (addr < u64::from(self.frames) * fs && in_frame + u64::from(len) <= fs)
            .then(|| FrameToken::new(addr, len, self.id))
    }

    /// The frame of `t` and the offset of its data inside it.
    #[inline]
    pub fn frame<'a>(&'a self, t: &'a mut FrameToken) -> (&'a mut [u8], usize) {
        assert_eq!(t.umem, self.id, "frame token of another UMEM");
        let fs = u64::from(self.frame_size);
        let base = t.addr - t.addr % fs;
        debug_assert!(base + fs <= self.area.len as u64);
        // SAFETY: `base..base + frame_size` is one frame inside the mapping
        // (checked when the token was made); the token is borrowed mutably for
        // the slice's lifetime and is the only token of that frame (module
        // docs), so no other reference to these bytes exists meanwhile.
        let s = unsafe {
            std::slice::from_raw_parts_mut(
                self.area.ptr.as_ptr().add(base as usize),
                self.frame_size as usize,
            )
        };
        (s, (t.addr - base) as usize)
    }

    /// Moves a token's data to `off..off + len` of its frame.
    #[inline]
    pub fn set_data(&self, t: &mut FrameToken, off: usize, len: usize) {
        let fs = u64::from(self.frame_size);
        assert!(off + len <= fs as usize, "data outside its frame");
        t.addr = t.addr - t.addr % fs + off as u64;
        t.len = len as u32;
    }

    /// Resets a token to an empty frame with the standard headroom, for
    /// frames going back to the fill ring.
    #[inline]
    pub fn reset(&self, t: &mut FrameToken) {
        self.set_data(t, KERNEL_HEADROOM, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_frames() {
        let u = match Umem::new(64, 2048, 64, false) {
            Ok(u) => u,
            Err(e)
                if e.raw_os_error() == Some(libc::EPERM)
                    || e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
            {
                assert_eq!(
                    std::env::var("MESHGATE_SKIP_PRIVILEGED").as_deref(),
                    Ok("1"),
                    "AF_XDP socket creation failed ({e}); run as root or set MESHGATE_SKIP_PRIVILEGED=1"
                );
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let mut toks = u.initial_tokens(0..64);
        assert_eq!(toks.len(), 64);
        let (f, off) = u.frame(&mut toks[3]);
        assert_eq!((f.len(), off), (2048, KERNEL_HEADROOM));
        f[off] = 0xab;
        u.set_data(&mut toks[3], 100, 10);
        let (f, off) = u.frame(&mut toks[3]);
        assert_eq!(off, 100);
        assert_eq!(f[KERNEL_HEADROOM], 0xab, "same frame");
        assert_eq!(u.frame_index(&toks[3]), 3);
        assert!(u.token_from_kernel(2048 * 63 + 2000, 48).is_some());
        assert!(
            u.token_from_kernel(2048 * 63 + 2000, 49).is_none(),
            "crosses the frame end"
        );
        assert!(
            u.token_from_kernel(2048 * 64, 1).is_none(),
            "outside the UMEM"
        );
    }
}
