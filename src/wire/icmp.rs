//! ICMPv4 messages (RFC 792, RFC 1191 for "fragmentation needed").
//!
//! Invariant of [`Packet`] after `new_checked`: the buffer holds the 8-byte
//! header. Error messages (destination unreachable, time exceeded) carry the
//! offending packet's IP header and at least 8 bytes of its payload in
//! [`Packet::data`]; meshgate uses that quote to find the flow an error
//! belongs to.

use super::be16;
use super::checksum;
use super::{Error, Result};

/// Field offsets in the header: the one place the layout is written.
pub mod field {
    use std::ops::{Range, RangeFrom};
    /// The type field.
    pub const TYPE: usize = 0;
    /// The code field.
    pub const CODE: usize = 1;
    /// The checksum field.
    pub const CHECKSUM: Range<usize> = 2..4;
    /// The identification field.
    pub const IDENT: Range<usize> = 4..6;
    /// The sequence field.
    pub const SEQ: Range<usize> = 6..8;
    /// The MTU field.
    pub const MTU: Range<usize> = 6..8;
    /// The data field.
    pub const DATA: RangeFrom<usize> = 8..;
}

/// The header's length in bytes.
pub const HEADER_LEN: usize = 8;

/// Message types.
pub mod msg_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 3;
    /// Echo request (ping).
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
}

/// Codes of "destination unreachable".
pub mod unreachable {
    /// Network unreachable.
    pub const NET: u8 = 0;
    /// Host unreachable.
    pub const HOST: u8 = 1;
    /// Protocol unreachable.
    pub const PROTOCOL: u8 = 2;
    /// Port unreachable.
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set: the next-hop MTU follows (RFC 1191).
    pub const FRAG_NEEDED: u8 = 4;
}

#[derive(Debug, Clone)]
/// An ICMP header (and what follows it) in a buffer, read and written in
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
    /// The message type field.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    #[inline]
    /// The code field.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    #[inline]
    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    #[inline]
    /// The echo identification field.
    pub fn echo_ident(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::IDENT])
    }

    #[inline]
    /// The echo sequence field.
    pub fn echo_seq(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::SEQ])
    }

    /// Next-hop MTU of a "fragmentation needed" message (RFC 1191).
    #[inline]
    pub fn next_hop_mtu(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::MTU])
    }

    #[inline]
    /// The bytes after the header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Whether the checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(self.buffer.as_ref()) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    /// Sets the message type field.
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    #[inline]
    /// Sets the code field.
    pub fn set_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    #[inline]
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the echo identification field.
    pub fn set_echo_ident(&mut self, v: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// Sets the echo sequence field.
    pub fn set_echo_seq(&mut self, v: u16) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&v.to_be_bytes())
    }

    /// Sets the 4-byte "rest of header" of an error message: unused (zero)
    /// and, for "fragmentation needed", the next-hop MTU.
    #[inline]
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        let b = self.buffer.as_mut();
        b[4] = 0;
        b[5] = 0;
        b[field::MTU].copy_from_slice(&mtu.to_be_bytes());
    }

    #[inline]
    /// The bytes after the header, to write.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes the checksum and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }
}

/// High-level description of the ICMP messages meshgate reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    /// An echo request (ping).
    EchoRequest {
        /// The identification.
        ident: u16,
        /// The sequence number.
        seq: u16,
        /// The length of the data after the header.
        data_len: usize,
    },
    /// An echo reply.
    EchoReply {
        /// The identification.
        ident: u16,
        /// The sequence number.
        seq: u16,
        /// The length of the data after the header.
        data_len: usize,
    },
    /// Destination unreachable; `data_len` bytes of the offending packet
    /// follow the header.
    DstUnreachable {
        /// The code.
        code: u8,
        /// The next-hop MTU (RFC 1191).
        next_hop_mtu: u16,
        /// The length of the data after the header.
        data_len: usize,
    },
    /// Time exceeded (a TTL or hop limit ran out on the way).
    TimeExceeded {
        /// The code.
        code: u8,
        /// The length of the data after the header.
        data_len: usize,
    },
}

impl Repr {
    /// Reads an ICMP header into its fields, checking what the format requires.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr> {
        p.check_len()?;
        if !p.verify_checksum() {
            return Err(Error::Checksum);
        }
        let data_len = p.data().len();
        Ok(match (p.msg_type(), p.code()) {
            (msg_type::ECHO_REQUEST, 0) => Repr::EchoRequest {
                ident: p.echo_ident(),
                seq: p.echo_seq(),
                data_len,
            },
            (msg_type::ECHO_REPLY, 0) => Repr::EchoReply {
                ident: p.echo_ident(),
                seq: p.echo_seq(),
                data_len,
            },
            (msg_type::DST_UNREACHABLE, code) if code <= 15 => {
                if data_len < super::ipv4::HEADER_LEN + 8 {
                    return Err(Error::Truncated);
                }
                let mtu = if code == unreachable::FRAG_NEEDED {
                    p.next_hop_mtu()
                } else {
                    0
                };
                Repr::DstUnreachable {
                    code,
                    next_hop_mtu: mtu,
                    data_len,
                }
            }
            (msg_type::TIME_EXCEEDED, code) if code <= 1 => {
                if data_len < super::ipv4::HEADER_LEN + 8 {
                    return Err(Error::Truncated);
                }
                Repr::TimeExceeded { code, data_len }
            }
            _ => return Err(Error::Unsupported),
        })
    }

    /// The bytes [`Self::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match *self {
                Repr::EchoRequest { data_len, .. }
                | Repr::EchoReply { data_len, .. }
                | Repr::DstUnreachable { data_len, .. }
                | Repr::TimeExceeded { data_len, .. } => data_len,
            }
    }

    /// Writes the header and the checksum over the data already in place.
    /// The buffer must be exactly `buffer_len()` bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        match *self {
            Repr::EchoRequest { ident, seq, .. } | Repr::EchoReply { ident, seq, .. } => {
                let t = if matches!(self, Repr::EchoRequest { .. }) {
                    msg_type::ECHO_REQUEST
                } else {
                    msg_type::ECHO_REPLY
                };
                p.set_msg_type(t);
                p.set_code(0);
                p.set_echo_ident(ident);
                p.set_echo_seq(seq);
            }
            Repr::DstUnreachable {
                code, next_hop_mtu, ..
            } => {
                p.set_msg_type(msg_type::DST_UNREACHABLE);
                p.set_code(code);
                p.set_next_hop_mtu(next_hop_mtu);
            }
            Repr::TimeExceeded { code, .. } => {
                p.set_msg_type(msg_type::TIME_EXCEEDED);
                p.set_code(code);
                p.set_next_hop_mtu(0);
            }
        }
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Echo request, id 0x0102, seq 3, data "abcd".
    static ECHO: [u8; 12] = [
        0x08, 0x00, 0x32, 0x34, 0x01, 0x02, 0x00, 0x03, b'a', b'b', b'c', b'd',
    ];

    #[test]
    fn parse_fixture() {
        let p = Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(
            Repr::parse(&p).unwrap(),
            Repr::EchoRequest {
                ident: 0x0102,
                seq: 3,
                data_len: 4
            }
        );
    }

    #[test]
    fn emit_fixture() {
        let mut b = [0u8; 12];
        b[8..].copy_from_slice(b"abcd");
        Repr::EchoRequest {
            ident: 0x0102,
            seq: 3,
            data_len: 4,
        }
        .emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b, ECHO);
        let (h, _) = etherparse::Icmpv4Header::from_slice(&b).unwrap();
        assert_eq!(h.checksum, h.icmp_type.calc_checksum(b"abcd"));
    }

    #[test]
    fn frag_needed_roundtrip() {
        let r = Repr::DstUnreachable {
            code: unreachable::FRAG_NEEDED,
            next_hop_mtu: 1450,
            data_len: 28,
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut b[..]));
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), r);
        assert_eq!(p.next_hop_mtu(), 1450);
    }

    #[test]
    fn rejects() {
        assert_eq!(
            Packet::new_checked(&ECHO[..7]).unwrap_err(),
            Error::Truncated
        );
        let mut b = ECHO;
        b[3] ^= 1;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])).unwrap_err(),
            Error::Checksum
        );
        // An unreachable that quotes too little of the offending packet.
        let r = Repr::DstUnreachable {
            code: 3,
            next_hop_mtu: 0,
            data_len: 10,
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])).unwrap_err(),
            Error::Truncated
        );
    }

    proptest! {
        #[test]
        fn roundtrip(kind in 0u8..4, a in any::<u16>(), s in any::<u16>(), code in 0u8..2, data in proptest::collection::vec(any::<u8>(), 28..60)) {
            let data_len = data.len();
            let r = match kind {
                0 => Repr::EchoRequest { ident: a, seq: s, data_len },
                1 => Repr::EchoReply { ident: a, seq: s, data_len },
                2 => Repr::DstUnreachable { code: 3 + code, next_hop_mtu: if code == 1 { a } else { 0 }, data_len },
                _ => Repr::TimeExceeded { code, data_len },
            };
            let mut b = vec![0u8; r.buffer_len()];
            b[HEADER_LEN..].copy_from_slice(&data);
            r.emit(&mut Packet::new_unchecked(&mut b[..]));
            prop_assert_eq!(Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(), r);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p);
            }
        }
    }
}
