//! VXLAN headers (RFC 7348).
//!
//! ```text
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! meshgate is strict on receipt, like the Linux VXLAN driver without
//! extensions: the I flag must be set and every other flag bit clear
//! (frames with unknown flags are dropped, not guessed at). Reserved fields
//! are ignored on receipt and written as zero.

use super::{Error, Result};

/// Length of the VXLAN header.
/// Field offsets in the header: the one place the layout is written.
pub mod field {
    use std::ops::Range;
    /// The flags field.
    pub const FLAGS: usize = 0;
    /// The 24-bit VNI (the byte after it is reserved).
    pub const VNI: Range<usize> = 4..7;
}

/// The header's length in bytes.
pub const HEADER_LEN: usize = 8;
/// The "VNI is valid" flag.
pub const FLAG_I: u8 = 0x08;
/// The IANA-assigned VXLAN UDP port, Docker's default data-path port.
pub const DEFAULT_PORT: u16 = 4789;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Bytes added in front of an inner Ethernet frame on an IPv4 underlay:
/// outer Ethernet, IPv4, UDP and VXLAN headers.
pub const ENCAP_LEN: usize =
    super::ethernet::HEADER_LEN + super::ipv4::HEADER_LEN + super::udp::HEADER_LEN + HEADER_LEN;

#[derive(Debug, Clone)]
/// A VXLAN header (and what follows it) in a buffer, read and written in
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
    /// The flags field (the I flag: [`FLAG_I`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    #[inline]
    /// The VXLAN network identifier (24 bits) field.
    pub fn vni(&self) -> u32 {
        super::get24(self.buffer.as_ref(), field::VNI)
    }

    #[inline]
    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes flags I, zero reserved fields and the VNI.
    #[inline]
    pub fn set_header(&mut self, vni: u32) {
        let v = vni.to_be_bytes();
        self.buffer.as_mut()[..HEADER_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }

    #[inline]
    /// The bytes after the header, to write.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// A VXLAN header's fields, parsed from a packet or to emit.
pub struct Repr {
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
}

impl Repr {
    /// Reads a VXLAN header into its fields, checking what the format requires.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if p.flags() != FLAG_I {
            return Err(Error::Malformed);
        }
        Ok(Repr { vni: p.vni() })
    }

    /// The bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes these fields into `p`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_header(self.vni & MAX_VNI);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// VNI 4096, as on Docker's ingress network.
    static HEADER: [u8; 8] = [0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0];

    #[test]
    fn parse_fixture() {
        assert_eq!(
            Repr::parse(&Packet::new_checked(&HEADER[..]).unwrap()).unwrap(),
            Repr { vni: 4096 }
        );
    }

    #[test]
    fn emit_fixture() {
        let mut b = [0xffu8; 8];
        Repr { vni: 4096 }.emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b, HEADER);
    }

    #[test]
    fn rejects_bad_flags() {
        for flags in [0x00u8, 0x0c, 0x88, 0x09] {
            let mut b = HEADER;
            b[0] = flags;
            assert_eq!(
                Repr::parse(&Packet::new_unchecked(&b[..])).unwrap_err(),
                Error::Malformed,
                "{flags:#x}"
            );
        }
        assert_eq!(
            Packet::new_checked(&HEADER[..7]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn reserved_bits_are_ignored() {
        let mut b = HEADER;
        b[1] = 0xff;
        b[7] = 0xff;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])).unwrap(),
            Repr { vni: 4096 }
        );
    }

    proptest! {
        #[test]
        fn roundtrip(vni in 0u32..=MAX_VNI) {
            let mut b = [0u8; 8];
            Repr { vni }.emit(&mut Packet::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), Repr { vni });
        }
    }
}
