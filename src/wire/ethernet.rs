//! Ethernet II frames (IEEE 802.3 with an EtherType).
//!
//! Invariant of [`Frame`]: after `new_checked`, the buffer holds at least
//! [`HEADER_LEN`] bytes, so every field accessor is in bounds.

use super::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// A 48-bit MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00: no address.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Docker's convention for container MACs: `02:42` followed by the four
    /// bytes of the container's IPv4 address.
    pub fn docker(ip: std::net::Ipv4Addr) -> MacAddr {
        let o = ip.octets();
        MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    /// Whether this is ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the group bit (the lowest bit of the first byte) is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    /// Neither multicast nor broadcast.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a MAC address (expected six hex bytes separated by ':', like 02:42:c6:12:80:04)"
)]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(|| MacParseError(s.into()))?;
            if p.is_empty() || p.len() > 2 {
                return Err(MacParseError(s.into()));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| MacParseError(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(MacParseError(s.into()));
        }
        Ok(MacAddr(out))
    }
}

/// EtherType values meshgate cares about.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// An 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// An 802.1ad (QinQ) service tag.
    pub const QINQ: u16 = 0x88a8;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// Field offsets in the header: the one place the layout is written.
pub mod field {
    use std::ops::{Range, RangeFrom};
    /// The destination field.
    pub const DST: Range<usize> = 0..6;
    /// The source field.
    pub const SRC: Range<usize> = 6..12;
    /// The EtherType field.
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// The payload field.
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` without checking its length: the accessors panic on a
    /// short one, so use [`Self::new_checked`] on input.
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// Wraps `buffer` after [`Self::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Checks that the buffer holds the whole header (and what its length
    /// fields promise), so that the accessors cannot panic.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    /// The destination address field.
    pub fn dst_addr(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        MacAddr(m)
    }

    #[inline]
    /// The source address field.
    pub fn src_addr(&self) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        MacAddr(m)
    }

    #[inline]
    /// The EtherType of the payload field ([`ethertype`]).
    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    #[inline]
    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    #[inline]
    /// Sets the destination address field.
    pub fn set_dst_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.0)
    }

    #[inline]
    /// Sets the source address field.
    pub fn set_src_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.0)
    }

    #[inline]
    /// Sets the EtherType of the payload field ([`ethertype`]).
    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.to_be_bytes())
    }

    #[inline]
    /// The bytes after the header, to write.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// High-level description of an Ethernet II header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The source address.
    pub src: MacAddr,
    /// The destination address.
    pub dst: MacAddr,
    /// The EtherType of the payload ([`ethertype`]).
    pub ethertype: u16,
}

impl Repr {
    /// Reads an Ethernet header into its fields, checking what the format requires.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Repr> {
        frame.check_len()?;
        Ok(Repr {
            src: frame.src_addr(),
            dst: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// The bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header; the buffer must hold at least `buffer_len()` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst);
        frame.set_src_addr(self.src);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ARP request broadcast from 02:42:c6:12:80:04.
    static FRAME: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0xc6, 0x12, 0x80, 0x04, 0x08, 0x06, 0xaa,
        0xbb,
    ];

    #[test]
    fn parse_fixture() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        let r = Repr::parse(&f).unwrap();
        assert!(r.dst.is_broadcast());
        assert_eq!(r.src, "02:42:c6:12:80:04".parse().unwrap());
        assert_eq!(r.ethertype, ethertype::ARP);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn emit_fixture() {
        let r = Repr {
            src: MacAddr([0x02, 0x42, 0xc6, 0x12, 0x80, 0x04]),
            dst: MacAddr::BROADCAST,
            ethertype: ethertype::ARP,
        };
        let mut buf = [0u8; 16];
        r.emit(&mut Frame::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..14], &FRAME[..14]);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Frame::new_checked(&FRAME[..13]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn docker_mac() {
        let m = MacAddr::docker("198.18.128.4".parse().unwrap());
        assert_eq!(m.to_string(), "02:42:c6:12:80:04");
    }

    #[test]
    fn mac_parse_errors() {
        for bad in [
            "",
            "02:42",
            "02:42:c6:12:80:04:00",
            "02:42:c6:12:80:zz",
            "0242:c6:12:80:04:1",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn roundtrip(src in any::<[u8; 6]>(), dst in any::<[u8; 6]>(), et in any::<u16>()) {
            let r = Repr { src: MacAddr(src), dst: MacAddr(dst), ethertype: et };
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Frame::new_unchecked(&mut buf[..]));
            prop_assert_eq!(Repr::parse(&Frame::new_checked(&buf[..]).unwrap()).unwrap(), r);
            let text = r.src.to_string();
            prop_assert_eq!(text.parse::<MacAddr>().unwrap(), r.src);
        }
    }
}
