//! One AF_XDP socket per interface queue, all sharing one UMEM, and the
//! batch operations on its four rings.
//!
//! Memory ordering of the rings (single producer, single consumer each,
//! shared with the kernel through mmap; implemented by `xdpilone` after
//! libxdp's `xsk.h`):
//! - RX and completion rings, where we consume: the kernel writes
//!   descriptors, then stores the producer index with release semantics; we
//!   load the producer index with *acquire* before reading descriptors or the
//!   frames they point to, and store our consumer index with *release* after
//!   our last read, so the kernel never reuses a slot we are reading.
//! - Fill and TX rings, where we produce: we write descriptors (and, for TX,
//!   the frame bytes) and then store the producer index with *release*; the
//!   kernel loads it with acquire before reading them.
//!
//! need_wakeup: when the kernel sets the flag on the fill ring, RX stopped
//! for want of frames and a `poll()` restarts it; on the TX ring, a
//! `sendto()` starts transmission. In copy mode (veth) TX always needs the
//! kick, so frames are batched and one kick carries the whole batch.

use std::ffi::CString;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, User};

use super::umem::{FrameToken, Umem};

/// How to bind sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Zero-copy when the driver supports it, else copy.
    Auto,
    /// Copy mode: the kernel copies each frame to and from the UMEM.
    Copy,
    /// Zero-copy: the driver reads and writes the UMEM itself; fails where
    /// the driver cannot.
    ZeroCopy,
}

/// What to open.
#[derive(Debug, Clone)]
pub struct XskConfig {
    /// The interface.
    pub ifname: String,
    /// Its queues, one socket each.
    pub queues: Vec<u32>,
    /// UMEM frames per queue (a power of two).
    pub frames_per_queue: u32,
    /// Bytes per UMEM frame.
    pub frame_size: u32,
    /// Descriptors per ring (fill, completion, RX, TX).
    pub ring_size: u32,
    /// How to bind.
    pub mode: BindMode,
    /// Back the UMEM with huge pages when the system has them.
    pub huge_pages: bool,
}

/// A socket-level failure, with what was being done and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}{hint}")]
pub struct XskError {
    /// What meshgate was doing.
    pub what: String,
    /// Part of the message, not a `#[source]`, so that it is printed once.
    pub source: io::Error,
    /// How to fix it, prefixed with a newline; empty when there is no hint.
    pub hint: String,
}

impl XskError {
    fn new(what: impl Into<String>, e: impl Into<ErrnoLike>) -> Self {
        let source = e.into().0;
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) => "\n  hint: AF_XDP needs CAP_NET_RAW and CAP_NET_ADMIN (or root)".into(),
            Some(libc::ENODEV) => "\n  hint: check node.interface (`ip link`) and that meshgate runs in the interface's network namespace".into(),
            Some(libc::EBUSY) => "\n  hint: another AF_XDP socket is bound to this queue (another meshgate?)".into(),
            Some(libc::EINVAL) => "\n  hint: check node.queues against the interface's queues (`ethtool -l`)".into(),
            _ => String::new(),
        };
        XskError {
            what: what.into(),
            source,
            hint,
        }
    }
}

/// An error number from xdpilone or the standard library, as one type.
pub struct ErrnoLike(io::Error);

impl From<xdpilone::Errno> for ErrnoLike {
    fn from(e: xdpilone::Errno) -> Self {
        ErrnoLike(io::Error::from_raw_os_error(e.get_raw().abs()))
    }
}

impl From<io::Error> for ErrnoLike {
    fn from(e: io::Error) -> Self {
        ErrnoLike(e)
    }
}

/// Kernel statistics of one socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct XskStats {
    /// Frames dropped for any other reason than the ones below.
    pub rx_dropped: u64,
    /// RX descriptors the kernel found invalid.
    pub rx_invalid_descs: u64,
    /// TX descriptors the kernel found invalid.
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring had no frame for an arriving frame.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel went to send and found the TX ring empty.
    pub tx_ring_empty_descs: u64,
}

/// One queue's socket and rings.
pub struct Port {
    umem: Arc<Umem>,
    queue: u32,
    fq: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
    user: User,
    /// Descriptors on the TX ring not yet kicked.
    unkicked: u32,
    /// Descriptors the kernel returned that failed validation.
    pub bad_descs: u64,
    zero_copy: bool,
}

/// The sockets of all queues, their UMEM, and each queue's initial frames.
pub struct Xsk {
    /// The UMEM every socket shares.
    pub umem: Arc<Umem>,
    /// One per queue, in `XskConfig::queues` order.
    pub ports: Vec<Port>,
    /// Each queue's share of the frames, not yet on any ring.
    pub initial: Vec<Vec<FrameToken>>,
    /// Whether the sockets bound in zero-copy mode.
    pub zero_copy: bool,
}

impl Xsk {
    /// Opens one socket per queue of `cfg.queues` on a shared UMEM.
    ///
    /// A queue stays busy for a moment after the socket that used it closed
    /// (the kernel releases it asynchronously), so a quick restart retries
    /// EBUSY for up to two seconds.
    pub fn open(cfg: &XskConfig) -> Result<Xsk, XskError> {
        let mut tries = 0;
        loop {
            match Self::open_once(cfg) {
                // A queue is freed shortly after its last socket closes
                // (the kernel releases it from a work queue): a takeover's
                // or a restart's bind waits for it, 2 s at most, in short
                // steps, since frames are dropped until it succeeds.
                Err(e) if e.source.raw_os_error() == Some(libc::EBUSY) && tries < 400 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => {
                    if tries > 0 {
                        log::info!("{}: the queue was busy for {} ms", cfg.ifname, tries * 5);
                    }
                    return r;
                }
            }
        }
    }

    fn open_once(cfg: &XskConfig) -> Result<Xsk, XskError> {
        match cfg.mode {
            BindMode::Copy => Self::open_mode(cfg, false),
            BindMode::ZeroCopy => Self::open_mode(cfg, true),
            BindMode::Auto => match Self::open_mode(cfg, true) {
                Ok(x) => Ok(x),
                // Drivers without zero-copy (veth) refuse the bind.
                Err(e)
                    if matches!(
                        e.source.raw_os_error(),
                        Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::EPROTONOSUPPORT)
                    ) =>
                {
                    Self::open_mode(cfg, false)
                }
                Err(e) => Err(e),
            },
        }
    }

    fn open_mode(cfg: &XskConfig, zero_copy: bool) -> Result<Xsk, XskError> {
        assert!(!cfg.queues.is_empty());
        let frames = cfg.frames_per_queue * cfg.queues.len() as u32;
        let umem = Arc::new(
            Umem::new(frames, cfg.frame_size, cfg.ring_size, cfg.huge_pages)
                .map_err(|e| XskError::new("creating the UMEM", e))?,
        );
        let name = CString::new(cfg.ifname.as_str()).map_err(|_| {
            XskError::new("interface name", io::Error::from_raw_os_error(libc::EINVAL))
        })?;
        let mut ports = Vec::new();
        let mut initial = Vec::new();
        for (i, &q) in cfg.queues.iter().enumerate() {
            let what = |s: &str| format!("{s} for {} queue {q}", cfg.ifname);
            let mut info = IfInfo::invalid();
            info.from_name(&name)
                .map_err(|e| XskError::new(what("finding the interface"), e))?;
            info.set_queue(q);
            // The first socket is the UMEM's own; the others share it.
            let sock = if i == 0 {
                Socket::with_shared(&info, &umem.inner)
            } else {
                Socket::new(&info)
            }
            .map_err(|e| XskError::new(what("creating the AF_XDP socket"), e))?;
            let fq = umem
                .inner
                .fq_cq(&sock)
                .map_err(|e| XskError::new(what("creating the fill and completion rings"), e))?;
            let bind_flags = if i == 0 {
                SocketConfig::XDP_BIND_NEED_WAKEUP
                    | if zero_copy {
                        SocketConfig::XDP_BIND_ZEROCOPY
                    } else {
                        SocketConfig::XDP_BIND_COPY
                    }
            } else {
                // Sockets sharing a UMEM inherit its mode; the kernel
                // refuses mode flags on them.
                0
            };
            let ring = NonZeroU32::new(cfg.ring_size).expect("ring size > 0");
            let user = umem
                .inner
                .rx_tx(
                    &sock,
                    &SocketConfig {
                        rx_size: Some(ring),
                        tx_size: Some(ring),
                        bind_flags,
                    },
                )
                .map_err(|e| XskError::new(what("creating the RX and TX rings"), e))?;
            let rx = user
                .map_rx()
                .map_err(|e| XskError::new(what("mapping the RX ring"), e))?;
            let tx = user
                .map_tx()
                .map_err(|e| XskError::new(what("mapping the TX ring"), e))?;
            umem.inner.bind(&user).map_err(|e| {
                XskError::new(
                    what(if zero_copy {
                        "binding (zero-copy)"
                    } else {
                        "binding (copy mode)"
                    }),
                    e,
                )
            })?;
            let lo = i as u32 * cfg.frames_per_queue;
            initial.push(umem.initial_tokens(lo..lo + cfg.frames_per_queue));
            ports.push(Port {
                umem: umem.clone(),
                queue: q,
                fq,
                rx,
                tx,
                user,
                unkicked: 0,
                bad_descs: 0,
                zero_copy,
            });
        }
        Ok(Xsk {
            umem,
            ports,
            initial,
            zero_copy,
        })
    }
}

impl Port {
    /// The queue this socket serves.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The UMEM its frames live in.
    pub fn umem(&self) -> &Arc<Umem> {
        &self.umem
    }

    /// The socket's fd, for the XSKMAP.
    pub fn raw_fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// The socket's fd, for `poll()`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by `self.rx` (and the shared socket
        // handles), open for as long as `self` lives, which bounds the
        // returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.rx.as_raw_fd()) }
    }

    /// Moves up to `max` received frames into `out`.
    pub fn recv(&mut self, out: &mut Vec<FrameToken>, max: u32) -> usize {
        let mut r = self.rx.receive(max);
        let mut n = 0;
        while let Some(d) = r.read() {
            match self.umem.token_from_kernel(d.addr, d.len) {
                Some(t) => {
                    out.push(t);
                    n += 1;
                }
                // Never seen; counted rather than trusted. The frame is lost
                // to the pool (it has no valid address to recycle).
                None => self.bad_descs += 1,
            }
        }
        r.release();
        n
    }

    /// Gives frames from the end of `frames` to the kernel's fill ring;
    /// returns how many were taken.
    pub fn fill(&mut self, frames: &mut Vec<FrameToken>) -> usize {
        if frames.is_empty() {
            return 0;
        }
        let fq = &mut self.fq;
        let n = produce_refreshed(frames, |frames| {
            let mut w = fq.fill(frames.len() as u32);
            let take = (w.capacity() as usize).min(frames.len());
            let start = frames.len() - take;
            let got = w.insert(frames.drain(start..).map(|t| t.into_desc().0)) as usize;
            w.commit();
            debug_assert_eq!(got, take);
            got
        });
        // Only a zero-copy driver's RX stops for want of fill entries and
        // must be kicked; in copy mode the flag stays set and the kick would
        // be a useless poll() per batch.
        if self.zero_copy && self.fq.needs_wakeup() {
            self.fq.wake();
        }
        n
    }

    /// Puts frames from the front of `frames` on the TX ring (as many as
    /// fit); returns how many. Call [`Port::kick`] after the batch.
    pub fn transmit(&mut self, frames: &mut Vec<FrameToken>) -> usize {
        let tx = &mut self.tx;
        let n = produce_refreshed(frames, |frames| {
            let mut w = tx.transmit(frames.len() as u32);
            let take = (w.capacity() as usize).min(frames.len());
            let got = w.insert(frames.drain(..take).map(|t| {
                let (addr, len) = t.into_desc();
                XdpDesc {
                    addr,
                    len,
                    options: 0,
                }
            })) as usize;
            w.commit();
            debug_assert_eq!(got, take);
            got
        });
        self.unkicked += n as u32;
        n
    }

    /// Starts transmission of queued frames if the kernel asks for it.
    ///
    /// In copy mode one `sendto()` transmits at most 32 frames (the
    /// kernel's `TX_BATCH_SIZE`), so this kicks until the ring is empty, at
    /// most `MAX_KICKS` times: one kick per 64-frame batch would leave half
    /// of every batch behind until the TX ring filled.
    pub fn kick(&mut self) {
        const MAX_KICKS: u32 = 8;
        if self.unkicked == 0 && self.tx.pending() == 0 {
            return;
        }
        for _ in 0..MAX_KICKS {
            if !self.tx.needs_wakeup() {
                break;
            }
            self.tx.wake();
            if self.tx.pending() == 0 {
                break;
            }
        }
        self.unkicked = 0;
    }

    /// Moves up to `max` transmitted frames from the completion ring into `out`.
    pub fn complete(&mut self, out: &mut Vec<FrameToken>, max: u32) -> usize {
        let mut r = self.fq.complete(max);
        let mut n = 0;
        while let Some(addr) = r.read() {
            match self.umem.token_from_kernel(addr, 0) {
                Some(mut t) => {
                    self.umem.reset(&mut t);
                    out.push(t);
                    n += 1;
                }
                None => self.bad_descs += 1,
            }
        }
        r.release();
        n
    }

    /// Frames on the TX ring not yet completed.
    pub fn tx_in_flight(&self) -> u32 {
        self.tx.pending()
    }

    /// Whether RX stalled for want of fill-ring frames.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fq.needs_wakeup()
    }

    /// The kernel's statistics of this socket (zeros when it cannot say).
    pub fn stats(&self) -> XskStats {
        match self.user.statistics_v2() {
            Ok(s) => XskStats {
                rx_dropped: s.rx_dropped,
                rx_invalid_descs: s.rx_invalid_descs,
                tx_invalid_descs: s.tx_invalid_descs,
                rx_ring_full: s.rx_ring_full,
                rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
                tx_ring_empty_descs: s.tx_ring_empty_descs,
            },
            Err(_) => XskStats::default(),
        }
    }
}

/// Runs `produce` (reserve ring entries, move frames from `frames` into
/// them, commit; return how many) once more when the first round left
/// frames behind. A reservation of n entries returns what the producer's
/// *cached* view of the kernel's consumer index allows, and xdpilone
/// refreshes that view only when it shows no room at all (it asks for at
/// least 1, not n). So one round can come back short while the kernel has
/// long emptied the ring: once per ring's worth of frames, the tail of a TX
/// batch was dropped as "TX full" (0.5 % of all frames at 200 kpps here;
/// `tests/xsk_rings.rs`). The second round reserves with the cache at zero,
/// which forces the refresh; what still does not fit has no room.
fn produce_refreshed(
    frames: &mut Vec<FrameToken>,
    mut produce: impl FnMut(&mut Vec<FrameToken>) -> usize,
) -> usize {
    let mut n = 0;
    for _ in 0..2 {
        if frames.is_empty() {
            break;
        }
        let got = produce(frames);
        n += got;
        if got == 0 {
            break;
        }
    }
    n
}
