//! IPv4 headers (RFC 791).
//!
//! Invariant of [`Packet`] after `new_checked`: the buffer holds the whole
//! header (`header_len()` bytes, at least 20) and at least `total_len()` bytes,
//! and `total_len() >= header_len()`. Bytes past `total_len()` (Ethernet
//! padding) are not part of the packet and [`Packet::payload`] excludes them.

use super::be16;
use super::checksum;
use super::{Error, Result};
use std::net::Ipv4Addr;

/// IP protocol numbers meshgate handles.
pub mod protocol {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Field offsets in the header: the one place the layout is written.
pub mod field {
    use std::ops::Range;
    /// The version and header length byte.
    pub const VER_IHL: usize = 0;
    /// The DSCP and ECN byte.
    pub const DSCP_ECN: usize = 1;
    /// The length field.
    pub const LENGTH: Range<usize> = 2..4;
    /// The identification field.
    pub const IDENT: Range<usize> = 4..6;
    /// The flags and fragment offset field.
    pub const FLG_OFF: Range<usize> = 6..8;
    /// The time-to-live field.
    pub const TTL: usize = 8;
    /// The protocol field.
    pub const PROTOCOL: usize = 9;
    /// The checksum field.
    pub const CHECKSUM: Range<usize> = 10..12;
    /// The source field.
    pub const SRC: Range<usize> = 12..16;
    /// The destination field.
    pub const DST: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

/// The "don't fragment" flag in the flags/offset word.
pub const FLAG_DF: u16 = 0x4000;
/// The "more fragments" flag.
pub const FLAG_MF: u16 = 0x2000;
/// The fragment offset mask (in 8-byte units).
pub const OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking its length: the accessors panic on a
    /// short one, so use [`Self::new_checked`] on input.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps `buffer` after [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the length invariants listed in the module documentation, and
    /// that the version is 4.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 {
            return Err(Error::Malformed);
        }
        let hl = self.header_len() as usize;
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < hl {
            return Err(Error::Truncated);
        }
        let tl = self.total_len() as usize;
        if tl < hl {
            return Err(Error::Malformed);
        }
        if len < tl {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes.
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    /// The DSCP and ECN bits (the former type of service) field.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    #[inline]
    /// The total length field.
    pub fn total_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }

    #[inline]
    /// The identification field.
    pub fn ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::IDENT])
    }

    /// The flags and fragment offset word.
    #[inline]
    pub fn flags_offset(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::FLG_OFF])
    }

    #[inline]
    /// Whether the DF (don't fragment) flag is set.
    pub fn dont_frag(&self) -> bool {
        self.flags_offset() & FLAG_DF != 0
    }

    #[inline]
    /// Whether the MF (more fragments) flag is set.
    pub fn more_frags(&self) -> bool {
        self.flags_offset() & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (self.flags_offset() & OFFSET_MASK) << 3
    }

    /// True for any fragment: the first (MF set) or a later one (offset > 0).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.flags_offset() & (FLAG_MF | OFFSET_MASK) != 0
    }

    #[inline]
    /// The time to live field.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline]
    /// The protocol of the payload field ([`protocol`]).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    #[inline]
    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    #[inline]
    /// The source address field.
    pub fn src_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    #[inline]
    /// The destination address field.
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// True when the header checksum is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len() as usize]) == 0xffff
    }

    /// The payload, up to `total_len()`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.header_len() as usize..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    /// Sets the version (4) and the header length, in bytes.
    pub fn set_version_ihl(&mut self, header_len: u8) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | (header_len / 4);
    }

    #[inline]
    /// Sets the DSCP and ECN bits (the former type of service) field.
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    #[inline]
    /// Sets the total length field.
    pub fn set_total_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the identification field.
    pub fn set_ident(&mut self, v: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the flags and fragment offset field as a whole.
    pub fn set_flags_offset(&mut self, v: u16) {
        self.buffer.as_mut()[field::FLG_OFF].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the time to live field.
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    #[inline]
    /// Sets the protocol of the payload field ([`protocol`]).
    pub fn set_protocol(&mut self, v: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = v;
    }

    #[inline]
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the source address field.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets())
    }

    #[inline]
    /// Sets the destination address field.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets())
    }

    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len() as usize;
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }

    /// Decrements the TTL and patches the checksum incrementally. The caller
    /// has checked that the TTL is above 1.
    #[inline]
    pub fn decrement_ttl(&mut self) {
        let ttl = self.ttl();
        let proto = self.protocol();
        let old = u16::from_be_bytes([ttl, proto]);
        let new = u16::from_be_bytes([ttl - 1, proto]);
        self.set_ttl(ttl - 1);
        let c = checksum::update16(self.checksum(), old, new);
        self.set_checksum(c);
    }

    #[inline]
    /// The bytes after the header, to write.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len() as usize;
        let tl = self.total_len() as usize;
        &mut self.buffer.as_mut()[hl..tl]
    }
}

/// High-level description of an IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The source address.
    pub src: Ipv4Addr,
    /// The destination address.
    pub dst: Ipv4Addr,
    /// The protocol of the payload ([`protocol`]).
    pub protocol: u8,
    /// The payload's length in bytes.
    pub payload_len: u16,
    /// The time to live.
    pub ttl: u8,
    /// The identification.
    pub ident: u16,
    /// Whether the DF (don't fragment) flag is set.
    pub dont_frag: bool,
    /// The DSCP and ECN bits (the former type of service).
    pub dscp_ecn: u8,
}

impl Repr {
    /// Parses a header without options or fragmentation, with a valid
    /// checksum. Options yield [`Error::Unsupported`], fragments
    /// [`Error::Fragment`].
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if p.header_len() as usize != HEADER_LEN {
            return Err(Error::Unsupported);
        }
        if !p.verify_checksum() {
            return Err(Error::Checksum);
        }
        if p.is_fragment() {
            return Err(Error::Fragment);
        }
        Ok(Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: p.total_len() - HEADER_LEN as u16,
            ttl: p.ttl(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
            dscp_ecn: p.dscp_ecn(),
        })
    }

    /// The bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with its checksum. The buffer must hold at least
    /// `buffer_len()` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_version_ihl(HEADER_LEN as u8);
        p.set_dscp_ecn(self.dscp_ecn);
        p.set_total_len(HEADER_LEN as u16 + self.payload_len);
        p.set_ident(self.ident);
        p.set_flags_offset(if self.dont_frag { FLAG_DF } else { 0 });
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
        p.fill_checksum();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 198.18.0.1 -> 198.18.0.2, TCP, 40 bytes total, TTL 64, DF, id 0x1234,
    /// followed by 20 bytes of TCP header (zeros here) and 2 bytes of
    /// Ethernet padding that are not part of the packet.
    pub static PACKET: [u8; 42] = [
        0x45, 0x00, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x9c, 0x74, 0xc6, 0x12, 0x00,
        0x01, 0xc6, 0x12, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0xee, 0xee,
    ];

    fn repr() -> Repr {
        Repr {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            protocol: protocol::TCP,
            payload_len: 20,
            ttl: 64,
            ident: 0x1234,
            dont_frag: true,
            dscp_ecn: 0,
        }
    }

    #[test]
    fn parse_fixture() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Repr::parse(&p).unwrap(), repr());
        assert_eq!(p.payload().len(), 20, "padding is not payload");
    }

    #[test]
    fn emit_fixture() {
        let mut buf = [0u8; 20];
        repr().emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..], &PACKET[..20]);
        // Independent check with etherparse.
        let (h, _) = etherparse::Ipv4Header::from_slice(&PACKET).unwrap();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&PACKET[..19]).unwrap_err(),
            Error::Truncated
        );
        // Total length beyond the buffer.
        assert_eq!(
            Packet::new_checked(&PACKET[..39]).unwrap_err(),
            Error::Truncated
        );
        let mut b = PACKET;
        b[0] = 0x44; // IHL 4 < 5
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        let mut b = PACKET;
        b[0] = 0x65; // version 6
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        let mut b = PACKET;
        b[3] = 0x10; // total length 16 < header length
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        let mut b = PACKET;
        b[11] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])).unwrap_err(),
            Error::Checksum
        );
        let mut b = PACKET;
        b[0] = 0x46; // options
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])).unwrap_err(),
            Error::Unsupported
        );
    }

    #[test]
    fn fragments_are_recognised() {
        for (word, frag) in [
            (0x4000u16, false),
            (0x2000, true),
            (0x0001, true),
            (0x2001, true),
        ] {
            let mut b = PACKET;
            b[6..8].copy_from_slice(&word.to_be_bytes());
            let mut p = Packet::new_unchecked(&mut b[..]);
            p.fill_checksum();
            assert_eq!(p.is_fragment(), frag, "{word:#x}");
            if frag {
                assert_eq!(Repr::parse(&p).unwrap_err(), Error::Fragment);
            }
        }
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut b = PACKET;
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.decrement_ttl();
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
    }

    proptest! {
        #[test]
        fn roundtrip(src in any::<u32>(), dst in any::<u32>(), proto in any::<u8>(),
                     len in 0u16..1480, ttl in any::<u8>(), ident in any::<u16>(), df in any::<bool>(), tos in any::<u8>()) {
            let r = Repr { src: src.into(), dst: dst.into(), protocol: proto, payload_len: len, ttl, ident, dont_frag: df, dscp_ecn: tos };
            let mut buf = vec![0u8; r.buffer_len() + len as usize];
            r.emit(&mut Packet::new_unchecked(&mut buf[..]));
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p).unwrap(), r);
            let (h, _) = etherparse::Ipv4Header::from_slice(&buf).unwrap();
            prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p);
                let _ = p.payload();
            }
        }
    }
}
