//! ARP for IPv4 over Ethernet (RFC 826).
//!
//! Invariant of [`Packet`] after `new_checked`: the buffer holds the 8-byte
//! fixed part and the four addresses whose lengths it declares. [`Repr`]
//! accepts only Ethernet/IPv4 (hlen 6, plen 4), the only kind meshgate
//! answers.

use super::be16;
use super::ethernet::MacAddr;
use super::{Error, Result};
use std::net::Ipv4Addr;

/// Field offsets in the header: the one place the layout is written.
pub mod field {
    use std::ops::Range;
    /// The hardware type field.
    pub const HTYPE: Range<usize> = 0..2;
    /// The protocol type field.
    pub const PTYPE: Range<usize> = 2..4;
    /// The hardware address length field.
    pub const HLEN: usize = 4;
    /// The protocol address length field.
    pub const PLEN: usize = 5;
    /// The operation field.
    pub const OPER: Range<usize> = 6..8;
    // For hlen 6, plen 4:
    /// The sender's hardware address field.
    pub const SHA: Range<usize> = 8..14;
    /// The sender's protocol address field.
    pub const SPA: Range<usize> = 14..18;
    /// The target's hardware address field.
    pub const THA: Range<usize> = 18..24;
    /// The target's protocol address field.
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP operations (RFC 826).
pub mod operation {
    /// Who has this protocol address?
    pub const REQUEST: u16 = 1;
    /// This one.
    pub const REPLY: u16 = 2;
}

#[derive(Debug, Clone)]
/// An ARP header (and what follows it) in a buffer, read and written in
/// place.
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
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

    /// Checks that the buffer holds the whole header (and what its length
    /// fields promise), so that the accessors cannot panic.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < 8 {
            return Err(Error::Truncated);
        }
        let need = 8 + 2 * (self.hardware_len() as usize + self.protocol_len() as usize);
        if len < need {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    /// The hardware type field.
    pub fn hardware_type(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::HTYPE])
    }

    #[inline]
    /// The protocol type field.
    pub fn protocol_type(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::PTYPE])
    }

    #[inline]
    /// The hardware length field.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    #[inline]
    /// The protocol length field.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    #[inline]
    /// The operation field ([`operation`]).
    pub fn operation(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::OPER])
    }

    fn is_eth_ipv4(&self) -> bool {
        self.hardware_type() == 1
            && self.protocol_type() == super::ethernet::ethertype::IPV4
            && self.hardware_len() == 6
            && self.protocol_len() == 4
    }

    fn mac(&self, r: std::ops::Range<usize>) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buffer.as_ref()[r]);
        MacAddr(m)
    }

    fn ip(&self, r: std::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set(&mut self, r: std::ops::Range<usize>, v: &[u8]) {
        self.buffer.as_mut()[r].copy_from_slice(v);
    }
}

/// An Ethernet/IPv4 ARP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The operation ([`operation`]).
    pub operation: u16,
    /// The sender's hardware address.
    pub source_hardware_addr: MacAddr,
    /// The sender's protocol address.
    pub source_protocol_addr: Ipv4Addr,
    /// The target's hardware address.
    pub target_hardware_addr: MacAddr,
    /// The target's protocol address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Reads an ARP header into its fields, checking what the format requires.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if !p.is_eth_ipv4() {
            return Err(Error::Unsupported);
        }
        Ok(Repr {
            operation: p.operation(),
            source_hardware_addr: p.mac(field::SHA),
            source_protocol_addr: p.ip(field::SPA),
            target_hardware_addr: p.mac(field::THA),
            target_protocol_addr: p.ip(field::TPA),
        })
    }

    /// The bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes these fields into `p`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set(field::HTYPE, &1u16.to_be_bytes());
        p.set(
            field::PTYPE,
            &super::ethernet::ethertype::IPV4.to_be_bytes(),
        );
        p.buffer.as_mut()[field::HLEN] = 6;
        p.buffer.as_mut()[field::PLEN] = 4;
        p.set(field::OPER, &self.operation.to_be_bytes());
        p.set(field::SHA, &self.source_hardware_addr.0);
        p.set(field::SPA, &self.source_protocol_addr.octets());
        p.set(field::THA, &self.target_hardware_addr.0);
        p.set(field::TPA, &self.target_protocol_addr.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Who has 198.18.128.2? Tell 198.18.128.4 (02:42:c6:12:80:04).
    pub static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x42, 0xc6, 0x12, 0x80, 0x04, 0xc6,
        0x12, 0x80, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc6, 0x12, 0x80, 0x02,
    ];

    fn request() -> Repr {
        Repr {
            operation: operation::REQUEST,
            source_hardware_addr: MacAddr([0x02, 0x42, 0xc6, 0x12, 0x80, 0x04]),
            source_protocol_addr: Ipv4Addr::new(198, 18, 128, 4),
            target_hardware_addr: MacAddr::ZERO,
            target_protocol_addr: Ipv4Addr::new(198, 18, 128, 2),
        }
    }

    #[test]
    fn parse_fixture() {
        assert_eq!(
            Repr::parse(&Packet::new_checked(&REQUEST[..]).unwrap()).unwrap(),
            request()
        );
        let a = etherparse::ArpPacketSlice::from_slice(&REQUEST).unwrap();
        assert_eq!(a.target_protocol_addr(), &[198, 18, 128, 2]);
    }

    #[test]
    fn emit_fixture() {
        let mut b = [0u8; 28];
        request().emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b, REQUEST);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&REQUEST[..27]).unwrap_err(),
            Error::Truncated
        );
        let mut b = REQUEST;
        b[5] = 16; // IPv6-sized protocol addresses
        assert!(Packet::new_checked(&b[..]).is_err());
        let mut b = REQUEST;
        b[1] = 6; // IEEE 802 hardware type
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])).unwrap_err(),
            Error::Unsupported
        );
    }

    proptest! {
        #[test]
        fn roundtrip(op in 1u16..3, sha in any::<[u8;6]>(), spa in any::<u32>(), tha in any::<[u8;6]>(), tpa in any::<u32>()) {
            let r = Repr { operation: op, source_hardware_addr: MacAddr(sha), source_protocol_addr: spa.into(),
                           target_hardware_addr: MacAddr(tha), target_protocol_addr: tpa.into() };
            let mut b = [0u8; 28];
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), r);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p);
            }
        }
    }
}
