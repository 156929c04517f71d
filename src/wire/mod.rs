//! Zero-copy views and representations of the wire formats meshgate reads and
//! writes, in the style of smoltcp: a `Packet<T: AsRef<[u8]>>` (or `Frame`)
//! per header with `new_checked`, named field ranges and accessors, and a
//! `Repr` with `parse`, `buffer_len` and `emit`.
//!
//! Invariants: no I/O, no allocation, no `unsafe`. Every accessor of a view
//! built with `new_checked` is in bounds; parsing arbitrary bytes never
//! panics (property-tested here and fuzzed in `fuzz/`).
#![warn(missing_docs)]

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use ethernet::MacAddr;

use std::ops::Range;

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

/// A result whose error is an [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

// Reading and writing a field by its range, for code that holds a fixed-
// size header (`&[u8; N]`) or has checked the length itself: with constant
// ranges these inline to plain loads and stores, bounds checks folded.

/// Shifts a field's range by `by` bytes: the field of a header that sits
/// `by` bytes into a frame.
pub const fn at(r: Range<usize>, by: usize) -> Range<usize> {
    r.start + by..r.end + by
}

/// The big-endian 16-bit field `r` of `b`.
#[inline(always)]
pub fn get16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

/// The big-endian 24-bit field `r` of `b` (a VNI).
#[inline(always)]
pub fn get24(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_be_bytes([0, b[r.start], b[r.start + 1], b[r.start + 2]])
}

/// The big-endian 32-bit field `r` of `b`.
#[inline(always)]
pub fn get32(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_be_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

/// The IPv4 address in field `r` of `b`.
#[inline(always)]
pub fn get_addr(b: &[u8], r: Range<usize>) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3])
}

/// The MAC address in field `r` of `b`.
#[inline(always)]
pub fn get_mac(b: &[u8], r: Range<usize>) -> MacAddr {
    let s = r.start;
    MacAddr([b[s], b[s + 1], b[s + 2], b[s + 3], b[s + 4], b[s + 5]])
}

/// Writes `v` big-endian into the 16-bit field `r` of `b`.
#[inline(always)]
pub fn set16(b: &mut [u8], r: Range<usize>, v: u16) {
    b[r.start..r.start + 2].copy_from_slice(&v.to_be_bytes());
}

/// The 16-bit field `r` of `b` as it lies in memory (the machine's byte
/// order): for a checksum, whose one's-complement arithmetic gives the
/// same bytes in either byte order (RFC 1071, 2.B), so that updating one
/// needs no byte swaps.
#[inline(always)]
pub fn get16_ne(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_ne_bytes([b[r.start], b[r.start + 1]])
}

/// Writes `v`, a value of [`get16_ne`]'s byte order, into field `r` of `b`.
#[inline(always)]
pub fn set16_ne(b: &mut [u8], r: Range<usize>, v: u16) {
    b[r.start..r.start + 2].copy_from_slice(&v.to_ne_bytes());
}

/// Writes the IPv4 address `a` into field `r` of `b`.
#[inline(always)]
pub fn set_addr(b: &mut [u8], r: Range<usize>, a: std::net::Ipv4Addr) {
    b[r.start..r.start + 4].copy_from_slice(&a.octets());
}

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
