//! Zero-copy views and representations of the wire formats meshgate reads and
//! writes, in the style of smoltcp: a `Packet<T: AsRef<[u8]>>` (or `Frame`)
//! per header with `new_checked`, named field ranges and accessors, and a
//! `Repr` with `parse`, `buffer_len` and `emit`.
//!
//! Invariants: no I/O, no allocation, no `unsafe`. Every accessor of a view
//! built with `new_checked` is in bounds; parsing arbitrary bytes never
//! panics (property-tested here and fuzzed in `fuzz/`).

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use ethernet::MacAddr;

/// Why a buffer was not accepted as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the header (or a length field) says.
    #[error("truncated")]
    Truncated,
    /// A field holds an impossible value.
    #[error("malformed")]
    Malformed,
    /// Valid, but a variant meshgate does not handle (IP options, non-Ethernet ARP).
    #[error("unsupported")]
    Unsupported,
    /// The checksum does not match.
    #[error("bad checksum")]
    Checksum,
    /// An IPv4 fragment.
    #[error("fragment")]
    Fragment,
}

pub type Result<T> = core::result::Result<T, Error>;

/// The big-endian 16-bit word at the start of `b` (which the caller has
/// bounds-checked: a view's field range).
#[inline]
pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The big-endian 32-bit word at the start of `b`.
#[inline]
pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
