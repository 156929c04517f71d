//! IPv6 headers (RFC 8200).
//!
//! Invariant of [`Packet`] after `new_checked`: the buffer holds the
//! 40-byte fixed header and at least `payload_len()` bytes after it, and
//! the version is 6. Bytes past the payload (Ethernet padding) are not
//! part of the packet and [`Packet::payload`] excludes them.
//!
//! meshgate translates only packets whose fixed header is followed
//! directly by TCP, UDP or ICMPv6: [`Repr::parse`] refuses a fragment
//! header with [`Error::Fragment`] and any other extension header with
//! [`Error::Unsupported`] (extension-header chains are a classic way to
//! hide a transport header from a filter; nothing published needs them).
//! A payload length of 0 with a hop-by-hop header is a jumbogram, refused
//! the same way.

use std::net::Ipv6Addr;

use super::be16;
use super::{Error, Result};

/// Next-header values meshgate tells apart.
pub mod next_header {
    /// Hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// Routing header.
    pub const ROUTING: u8 = 43;
    /// Fragment header.
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating security payload.
    pub const ESP: u8 = 50;
    /// Authentication header.
    pub const AUTH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// No next header.
    pub const NO_NEXT: u8 = 59;
    /// Destination options.
    pub const DEST_OPTS: u8 = 60;
    /// Mobility header.
    pub const MOBILITY: u8 = 135;
    /// Host identity protocol.
    pub const HIP: u8 = 139;
    /// Shim6.
    pub const SHIM6: u8 = 140;

    /// Whether `nh` names an extension header (RFC 8200 section 4, and
    /// the later ones of RFC 7045's list) rather than an upper layer.
    pub const fn is_extension(nh: u8) -> bool {
        matches!(
            nh,
            HOP_BY_HOP | ROUTING | FRAGMENT | ESP | AUTH | DEST_OPTS | MOBILITY | HIP | SHIM6
        )
    }
}

/// Field offsets in the header: the one place the layout is written.
pub mod field {
    use std::ops::Range;
    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    /// The payload length field.
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    /// The next header field.
    pub const NEXT_HEADER: usize = 6;
    /// The hop limit field.
    pub const HOP_LIMIT: usize = 7;
    /// The source field.
    pub const SRC: Range<usize> = 8..24;
    /// The destination field.
    pub const DST: Range<usize> = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// The fragment header (RFC 8200 section 4.5): field offsets from its
/// start, and how a fragment's offset and M flag lie in their word.
pub mod fragment {
    use std::ops::Range;
    /// The next header field (the fragmented datagram's upper layer).
    pub const NEXT_HEADER: usize = 0;
    /// Fragment offset (13 bits, in 8-byte units), 2 reserved bits, M.
    pub const OFFSET_M: Range<usize> = 2..4;
    /// The identification field.
    pub const IDENT: Range<usize> = 4..8;
    /// Length of the fragment header.
    pub const HEADER_LEN: usize = 8;
    /// The offset's bits in `OFFSET_M` (already in bytes: 8-byte units
    /// shifted by 3).
    pub const OFFSET_MASK: u16 = 0xfff8;
    /// More fragments follow.
    pub const FLAG_M: u16 = 0x0001;
}

/// The minimum link MTU every IPv6 link carries (RFC 8200 section 5).
pub const MIN_MTU: u16 = 1280;

/// A read/write view of an IPv6 packet.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

#[inline]
fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[..16]);
    Ipv6Addr::from(o)
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

    /// Checks the invariants listed in the module documentation.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        if len < HEADER_LEN + usize::from(self.payload_len()) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ver_tc_flow(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    #[inline]
    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The traffic class: DSCP and ECN, as IPv4's second byte.
    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (self.ver_tc_flow() >> 20) as u8
    }

    #[inline]
    /// The flow label (20 bits) field.
    pub fn flow_label(&self) -> u32 {
        self.ver_tc_flow() & 0x000f_ffff
    }

    /// Bytes after the fixed header (extension headers included).
    #[inline]
    pub fn payload_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::PAYLOAD_LEN])
    }

    #[inline]
    /// The next header field ([`next_header`]).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[inline]
    /// The hop limit field.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline]
    /// The source address field.
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    #[inline]
    /// The destination address field.
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// The payload, up to `payload_len()`.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &self.buffer.as_ref()[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version to 6 with the traffic class and flow label.
    #[inline]
    pub fn set_ver_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    #[inline]
    /// Sets the payload's length in bytes field.
    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::PAYLOAD_LEN].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the next header field ([`next_header`]).
    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = v;
    }

    #[inline]
    /// Sets the hop limit field.
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    #[inline]
    /// Sets the source address field.
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets())
    }

    #[inline]
    /// Sets the destination address field.
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets())
    }

    #[inline]
    /// The bytes after the header, to write.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// High-level description of an IPv6 header followed directly by an upper
/// layer (no extension header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The source address.
    pub src: Ipv6Addr,
    /// The destination address.
    pub dst: Ipv6Addr,
    /// The next header ([`next_header`]).
    pub next_header: u8,
    /// The payload's length in bytes.
    pub payload_len: u16,
    /// The hop limit.
    pub hop_limit: u8,
    /// The traffic class.
    pub traffic_class: u8,
    /// The flow label (20 bits).
    pub flow_label: u32,
}

impl Repr {
    /// Parses a header followed by an upper layer. A fragment header
    /// yields [`Error::Fragment`], any other extension header
    /// [`Error::Unsupported`]; a source that is multicast or unspecified
    /// (RFC 4291 section 2.7, RFC 8200) is [`Error::Malformed`].
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        let nh = p.next_header();
        if nh == next_header::FRAGMENT {
            return Err(Error::Fragment);
        }
        if next_header::is_extension(nh) {
            return Err(Error::Unsupported);
        }
        let src = p.src_addr();
        if src.is_multicast() || src.is_unspecified() {
            return Err(Error::Malformed);
        }
        Ok(Repr {
            src,
            dst: p.dst_addr(),
            next_header: nh,
            payload_len: p.payload_len(),
            hop_limit: p.hop_limit(),
            traffic_class: p.traffic_class(),
            flow_label: p.flow_label(),
        })
    }

    /// The bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header (IPv6 has no header checksum). The buffer must
    /// hold at least `buffer_len()` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_ver_tc_flow(self.traffic_class, self.flow_label);
        p.set_payload_len(self.payload_len);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2001:2::1 -> 2001:2::2, UDP, 8-byte payload (a UDP header, zeros
    /// here), hop limit 64, traffic class 0xb8 (EF), flow label 0x12345,
    /// and 2 bytes of padding that are not part of the packet.
    pub static PACKET: [u8; 50] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x08, 17, 64, //
        0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, //
        0x20, 0x01, 0x00, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, //
        0, 0, 0, 0, 0, 0, 0, 0, //
        0xee, 0xee,
    ];

    fn repr() -> Repr {
        Repr {
            src: "2001:2::1".parse().unwrap(),
            dst: "2001:2::2".parse().unwrap(),
            next_header: next_header::UDP,
            payload_len: 8,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
        }
    }

    #[test]
    fn parse_fixture() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), repr());
        assert_eq!(p.payload().len(), 8, "padding is not payload");
        // Independent check with etherparse.
        let (h, _) = etherparse::Ipv6Header::from_slice(&PACKET).unwrap();
        assert_eq!(h.traffic_class, 0xb8);
        assert_eq!(h.flow_label.value(), 0x12345);
        assert_eq!(h.payload_length, 8);
    }

    #[test]
    fn emit_fixture() {
        let mut buf = [0u8; 40];
        repr().emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..], &PACKET[..40]);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&PACKET[..39]).unwrap_err(),
            Error::Truncated
        );
        // Payload length beyond the buffer.
        assert_eq!(
            Packet::new_checked(&PACKET[..47]).unwrap_err(),
            Error::Truncated
        );
        let mut b = PACKET;
        b[0] = 0x4b; // version 4
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        for (nh, e) in [
            (next_header::FRAGMENT, Error::Fragment),
            (next_header::HOP_BY_HOP, Error::Unsupported),
            (next_header::ROUTING, Error::Unsupported),
            (next_header::DEST_OPTS, Error::Unsupported),
            (next_header::AUTH, Error::Unsupported),
            (next_header::ESP, Error::Unsupported),
        ] {
            let mut b = PACKET;
            b[field::NEXT_HEADER] = nh;
            let p = Packet::new_checked(&b[..]).unwrap();
            assert_eq!(Repr::parse(&p).unwrap_err(), e, "next header {nh}");
        }
        for src in ["ff02::1", "::"] {
            let mut b = PACKET;
            let a: Ipv6Addr = src.parse().unwrap();
            b[field::SRC].copy_from_slice(&a.octets());
            let p = Packet::new_checked(&b[..]).unwrap();
            assert_eq!(Repr::parse(&p).unwrap_err(), Error::Malformed, "{src}");
        }
    }

    proptest! {
        #[test]
        fn roundtrip(src in any::<u128>(), dst in any::<u128>(), nh in prop::sample::select(vec![6u8, 17, 58]),
                     len in 0u16..1480, hop in any::<u8>(), tc in any::<u8>(), flow in 0u32..0x10_0000) {
            let src = Ipv6Addr::from(src);
            prop_assume!(!src.is_multicast() && !src.is_unspecified());
            let r = Repr { src, dst: dst.into(), next_header: nh, payload_len: len, hop_limit: hop, traffic_class: tc, flow_label: flow };
            let mut buf = vec![0u8; r.buffer_len() + len as usize];
            r.emit(&mut Packet::new_unchecked(&mut buf[..]));
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p).unwrap(), r);
            let (h, _) = etherparse::Ipv6Header::from_slice(&buf).unwrap();
            prop_assert_eq!(h.payload_length, len);
            prop_assert_eq!(h.hop_limit, hop);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p);
                let _ = p.payload();
            }
        }
    }
}
