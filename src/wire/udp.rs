//! UDP datagram headers (RFC 768).
//!
//! Invariant of [`Packet`] after `new_checked`: the buffer holds the 8-byte
//! header, the length field is at least 8 and at most the buffer length.
//! [`Packet::payload`] ends at the length field, not at the buffer's end.

use super::be16;
use super::checksum;
use super::{Error, Result};
use std::net::Ipv4Addr;

/// Field ranges, from the start of the header.
pub mod field {
    use std::ops::Range;
    /// The source port field.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// The destination port field.
    pub const DST_PORT: Range<usize> = 2..4;
    /// The length field.
    pub const LENGTH: Range<usize> = 4..6;
    /// The checksum field.
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// The header's length in bytes.
pub const HEADER_LEN: usize = 8;

#[derive(Debug, Clone)]
/// An UDP header (and what follows it) in a buffer, read and written in
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
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = self.len() as usize;
        if l < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if l > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    /// The source port field.
    pub fn src_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SRC_PORT])
    }

    #[inline]
    /// The destination port field.
    pub fn dst_port(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::DST_PORT])
    }

    /// The length field: header plus payload.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::LENGTH])
    }

    #[inline]
    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    #[inline]
    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.len() as usize]
    }

    /// True when the checksum is absent (zero) or valid.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let len = self.len();
        checksum::combine(&[
            checksum::pseudo_header(src, dst, super::ipv4::protocol::UDP, len),
            checksum::data(&self.buffer.as_ref()[..len as usize]),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    /// Sets the source port field.
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the destination port field.
    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the length field.
    pub fn set_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// The bytes after the header, to write.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let l = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..l]
    }

    /// Computes the checksum; a computed zero is sent as 0xffff.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let len = self.len();
        let c = !checksum::combine(&[
            checksum::pseudo_header(src, dst, super::ipv4::protocol::UDP, len),
            checksum::data(&self.buffer.as_ref()[..len as usize]),
        ]);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

/// High-level description of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The source port.
    pub src_port: u16,
    /// The destination port.
    pub dst_port: u16,
    /// The payload's length in bytes.
    pub payload_len: usize,
}

impl Repr {
    /// Reads an UDP header into its fields, checking what the format requires.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Repr> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            payload_len: p.payload().len(),
        })
    }

    /// The bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header. `checksum = Some((src, dst))` computes the
    /// checksum over the payload already in the buffer; `None` leaves it zero
    /// (absent), as VXLAN senders do (RFC 7348 section 5).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut Packet<T>,
        checksum: Option<(Ipv4Addr, Ipv4Addr)>,
    ) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len((HEADER_LEN + self.payload_len) as u16);
        p.set_checksum(0);
        if let Some((s, d)) = checksum {
            p.fill_checksum(s, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    /// 198.18.0.1:40000 -> 198.18.0.2:8080, payload "hi".
    static DATAGRAM: [u8; 10] = [0x9c, 0x40, 0x1f, 0x90, 0x00, 0x0a, 0x4f, 0x78, b'h', b'i'];

    #[test]
    fn parse_fixture() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        let r = Repr::parse(&p, SRC, DST).unwrap();
        assert_eq!(
            r,
            Repr {
                src_port: 40000,
                dst_port: 8080,
                payload_len: 2
            }
        );
        assert_eq!(p.payload(), b"hi");
    }

    #[test]
    fn emit_fixture() {
        let mut buf = [0u8; 10];
        buf[8..].copy_from_slice(b"hi");
        Repr {
            src_port: 40000,
            dst_port: 8080,
            payload_len: 2,
        }
        .emit(&mut Packet::new_unchecked(&mut buf[..]), Some((SRC, DST)));
        assert_eq!(buf, DATAGRAM);
        let (h, rest) = etherparse::UdpHeader::from_slice(&buf).unwrap();
        assert_eq!(
            h.checksum,
            h.calc_checksum_ipv4_raw(SRC.octets(), DST.octets(), rest)
                .unwrap()
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&DATAGRAM[..7]).unwrap_err(),
            Error::Truncated
        );
        let mut b = DATAGRAM;
        b[5] = 4; // length below the header
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        let mut b = DATAGRAM;
        b[5] = 11; // length beyond the buffer
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Truncated);
        let mut b = DATAGRAM;
        b[9] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..]), SRC, DST).unwrap_err(),
            Error::Checksum
        );
        // Zero checksum means "none" and is accepted.
        let mut b = DATAGRAM;
        b[6] = 0;
        b[7] = 0;
        assert!(Repr::parse(&Packet::new_unchecked(&b[..]), SRC, DST).is_ok());
    }

    proptest! {
        #[test]
        fn roundtrip(sp in any::<u16>(), dp in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
                     src in any::<u32>(), dst in any::<u32>()) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let r = Repr { src_port: sp, dst_port: dp, payload_len: payload.len() };
            let mut buf = vec![0u8; r.buffer_len()];
            buf[HEADER_LEN..].copy_from_slice(&payload);
            r.emit(&mut Packet::new_unchecked(&mut buf[..]), Some((src, dst)));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), src, dst).unwrap(), r);
            let (h, rest) = etherparse::UdpHeader::from_slice(&buf).unwrap();
            prop_assert_eq!(h.checksum, h.calc_checksum_ipv4_raw(src.octets(), dst.octets(), rest).unwrap());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p, SRC, DST);
            }
        }
    }
}
