//! TCP segment headers (RFC 9293).
//!
//! Invariant of [`Packet`] after `new_checked`: the buffer holds the whole
//! header including options (`header_len()` bytes, at least 20).

use super::checksum;
use super::{Error, Result};
use super::{be16, be32};
use std::net::Ipv4Addr;

/// Field ranges, from the start of the header.
pub mod field {
    use std::ops::Range;
    /// The source port field.
    pub const SRC_PORT: Range<usize> = 0..2;
    /// The destination port field.
    pub const DST_PORT: Range<usize> = 2..4;
    /// The sequence field.
    pub const SEQ: Range<usize> = 4..8;
    /// The acknowledgment field.
    pub const ACK: Range<usize> = 8..12;
    /// The data offset field.
    pub const OFF: usize = 12;
    /// The flags field.
    pub const FLAGS: usize = 13;
    /// The window field.
    pub const WINDOW: Range<usize> = 14..16;
    /// The checksum field.
    pub const CHECKSUM: Range<usize> = 16..18;
    /// The urgent field.
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;

/// TCP flag bits (the low byte of the flags word).
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers (a connection begins).
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment number is valid.
    pub const ACK: u8 = 0x10;
    /// The urgent pointer is valid.
    pub const URG: u8 = 0x20;
}

#[derive(Debug, Clone)]
/// A TCP header (and what follows it) in a buffer, read and written in
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
        let hl = self.header_len() as usize;
        if hl < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < hl {
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

    #[inline]
    /// The sequence number field.
    pub fn seq_number(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::SEQ])
    }

    #[inline]
    /// The acknowledgment number field.
    pub fn ack_number(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::ACK])
    }

    /// Header length (data offset) in bytes.
    #[inline]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::OFF] >> 4) * 4
    }

    #[inline]
    /// The flags field ([`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    #[inline]
    /// The window size field.
    pub fn window(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::WINDOW])
    }

    #[inline]
    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    #[inline]
    /// The urgent field.
    pub fn urgent(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::URGENT])
    }

    #[inline]
    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len() as usize..]
    }

    /// True when the checksum over the pseudo-header and the whole segment
    /// (the buffer is the segment, exactly) is valid.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let Ok(len) = u16::try_from(b.len()) else {
            return false;
        };
        checksum::combine(&[
            checksum::pseudo_header(src, dst, super::ipv4::protocol::TCP, len),
            checksum::data(b),
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
    /// Sets the sequence number field.
    pub fn set_seq_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the acknowledgment number field.
    pub fn set_ack_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::ACK].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the header length, in bytes.
    pub fn set_header_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::OFF] = (len / 4) << 4;
    }

    #[inline]
    /// Sets the flags field ([`flags`]).
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    #[inline]
    /// Sets the window size field.
    pub fn set_window(&mut self, v: u16) {
        self.buffer.as_mut()[field::WINDOW].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the urgent field.
    pub fn set_urgent(&mut self, v: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&v.to_be_bytes())
    }

    /// Computes the checksum over the pseudo-header and the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let c = !checksum::combine(&[
            checksum::pseudo_header(src, dst, super::ipv4::protocol::TCP, b.len() as u16),
            checksum::data(b),
        ]);
        self.set_checksum(c);
    }
}

/// High-level description of a TCP header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// The source port.
    pub src_port: u16,
    /// The destination port.
    pub dst_port: u16,
    /// The sequence number.
    pub seq: u32,
    /// The acknowledgment number.
    pub ack: u32,
    /// The flags ([`flags`]).
    pub flags: u8,
    /// The window size.
    pub window: u16,
    /// The payload's length in bytes.
    pub payload_len: usize,
}

impl Repr {
    /// Parses a segment; `src`/`dst` are the IP addresses for the checksum.
    /// The buffer must be the segment exactly (IP payload).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Repr> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(Repr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq_number(),
            ack: p.ack_number(),
            flags: p.flags(),
            window: p.window(),
            payload_len: p.payload().len(),
        })
    }

    /// The bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header and the checksum over the header and the payload
    /// already in the buffer, which must be exactly `buffer_len()` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq);
        p.set_ack_number(self.ack);
        p.set_header_len(HEADER_LEN as u8);
        p.set_flags(self.flags);
        p.set_window(self.window);
        p.set_urgent(0);
        p.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    /// A SYN from 198.18.0.1:40000 to 198.18.0.2:8080, seq 1, window 64240.
    static SYN: [u8; 20] = [
        0x9c, 0x40, 0x1f, 0x90, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xfa,
        0xf0, 0x6c, 0xf8, 0x00, 0x00,
    ];

    fn syn() -> Repr {
        Repr {
            src_port: 40000,
            dst_port: 8080,
            seq: 1,
            ack: 0,
            flags: flags::SYN,
            window: 64240,
            payload_len: 0,
        }
    }

    #[test]
    fn parse_fixture() {
        let p = Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(Repr::parse(&p, SRC, DST).unwrap(), syn());
    }

    #[test]
    fn emit_fixture() {
        let mut buf = [0u8; 20];
        syn().emit(&mut Packet::new_unchecked(&mut buf[..]), SRC, DST);
        assert_eq!(buf, SYN);
        let (h, _) = etherparse::TcpHeader::from_slice(&buf).unwrap();
        assert_eq!(
            h.checksum,
            h.calc_checksum_ipv4_raw(SRC.octets(), DST.octets(), &[])
                .unwrap()
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&SYN[..19]).unwrap_err(),
            Error::Truncated
        );
        let mut b = SYN;
        b[12] = 0x40; // data offset 16 bytes
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Malformed);
        let mut b = SYN;
        b[12] = 0x60; // data offset 24 > 20 available
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), Error::Truncated);
        let mut b = SYN;
        b[17] ^= 0x10;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..]), SRC, DST).unwrap_err(),
            Error::Checksum
        );
    }

    proptest! {
        #[test]
        fn roundtrip(sp in any::<u16>(), dp in any::<u16>(), seq in any::<u32>(), ack in any::<u32>(),
                     fl in any::<u8>(), win in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..64),
                     src in any::<u32>(), dst in any::<u32>()) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let r = Repr { src_port: sp, dst_port: dp, seq, ack, flags: fl, window: win, payload_len: payload.len() };
            let mut buf = vec![0u8; r.buffer_len()];
            buf[HEADER_LEN..].copy_from_slice(&payload);
            r.emit(&mut Packet::new_unchecked(&mut buf[..]), src, dst);
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), src, dst).unwrap(), r);
            let (h, rest) = etherparse::TcpHeader::from_slice(&buf).unwrap();
            prop_assert_eq!(h.checksum, h.calc_checksum_ipv4_raw(src.octets(), dst.octets(), rest).unwrap());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p, SRC, DST);
            }
        }
    }
}
