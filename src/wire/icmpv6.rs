//! ICMPv6 messages (RFC 4443; Packet Too Big for path MTU discovery,
//! RFC 8201).
//!
//! Invariant of [`Packet`] after `new_checked`: the buffer holds the 8-byte
//! header; the message is the whole buffer (its length is the IPv6
//! payload's), which the checksum covers with the IPv6 pseudo-header.
//! Error messages quote as much of the offending packet as fits in the
//! minimum MTU (1280 bytes) in [`Packet::data`].

use std::net::Ipv6Addr;

use super::be16;
use super::checksum;
use super::ipv6::next_header;
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
    /// Packet Too Big's MTU, Parameter Problem's pointer.
    pub const WORD: Range<usize> = 4..8;
    /// The data field.
    pub const DATA: RangeFrom<usize> = 8..;
}

/// The header's length in bytes.
pub const HEADER_LEN: usize = 8;

/// Message types.
pub mod msg_type {
    /// Destination unreachable.
    pub const DST_UNREACHABLE: u8 = 1;
    /// Packet too big (RFC 4443).
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAM_PROBLEM: u8 = 4;
    /// Echo request (ping).
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Neighbor solicitation (RFC 4861).
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbor advertisement (RFC 4861).
    pub const NEIGHBOR_ADVERT: u8 = 136;
}

/// Codes of "destination unreachable".
pub mod unreachable {
    /// No route to destination.
    pub const NO_ROUTE: u8 = 0;
    /// Communication administratively prohibited.
    pub const ADMIN_PROHIBITED: u8 = 1;
    /// Address unreachable.
    pub const ADDRESS: u8 = 3;
    /// Port unreachable.
    pub const PORT: u8 = 4;
}

#[derive(Debug, Clone)]
/// An ICMPv6 header (and what follows it) in a buffer, read and written in
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

    /// Packet Too Big's MTU; Parameter Problem's pointer.
    #[inline]
    pub fn word(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::WORD];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    #[inline]
    /// The bytes after the header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// The checksum over the message and the pseudo-header of `src` and
    /// `dst` is valid.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.buffer.as_ref();
        let ph = checksum::pseudo_header_v6(src, dst, next_header::ICMPV6, b.len() as u32);
        checksum::combine(&[ph, checksum::data(b)]) == 0xffff
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

    #[inline]
    /// Sets the whole header word.
    pub fn set_word(&mut self, v: u32) {
        self.buffer.as_mut()[field::WORD].copy_from_slice(&v.to_be_bytes())
    }

    #[inline]
    /// The bytes after the header, to write.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes and stores the checksum for `src` -> `dst`.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let ph = checksum::pseudo_header_v6(src, dst, next_header::ICMPV6, b.len() as u32);
        let c = !checksum::combine(&[ph, checksum::data(b)]);
        self.set_checksum(c);
    }
}

/// High-level description of the messages meshgate reads or writes; the
/// data (an echo's payload, an error's quote) stays in the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repr {
    /// An echo request (ping).
    EchoRequest {
        /// The identification.
        ident: u16,
        /// The sequence number.
        seq: u16,
    },
    /// An echo reply.
    EchoReply {
        /// The identification.
        ident: u16,
        /// The sequence number.
        seq: u16,
    },
    /// Packet too big (RFC 4443): the next hop takes at most `mtu` bytes.
    PacketTooBig {
        /// The MTU of the next hop.
        mtu: u32,
    },
    /// Destination unreachable.
    DstUnreachable {
        /// The code.
        code: u8,
    },
    /// Time exceeded (a TTL or hop limit ran out on the way).
    TimeExceeded {
        /// The code.
        code: u8,
    },
    /// Parameter problem.
    ParamProblem {
        /// The code.
        code: u8,
        /// The offset of the problem in the offending packet.
        pointer: u32,
    },
    /// Another type (neighbour discovery, MLD, …): meshgate passes these.
    Other {
        /// The message type.
        msg_type: u8,
        /// The code.
        code: u8,
    },
}

impl Repr {
    /// Parses a message whose checksum for `src` -> `dst` is valid.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>, src: Ipv6Addr, dst: Ipv6Addr) -> Result<Repr> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(match p.msg_type() {
            msg_type::ECHO_REQUEST if p.code() == 0 => Repr::EchoRequest {
                ident: p.echo_ident(),
                seq: p.echo_seq(),
            },
            msg_type::ECHO_REPLY if p.code() == 0 => Repr::EchoReply {
                ident: p.echo_ident(),
                seq: p.echo_seq(),
            },
            msg_type::PACKET_TOO_BIG if p.code() == 0 => Repr::PacketTooBig { mtu: p.word() },
            msg_type::DST_UNREACHABLE => Repr::DstUnreachable { code: p.code() },
            msg_type::TIME_EXCEEDED => Repr::TimeExceeded { code: p.code() },
            msg_type::PARAM_PROBLEM => Repr::ParamProblem {
                code: p.code(),
                pointer: p.word(),
            },
            t => Repr::Other {
                msg_type: t,
                code: p.code(),
            },
        })
    }

    /// The bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header and the checksum over the whole buffer (the data
    /// must be in place) for `src` -> `dst`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut Packet<T>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) {
        let (t, code, word) = match *self {
            Repr::EchoRequest { ident, seq } => (
                msg_type::ECHO_REQUEST,
                0,
                (u32::from(ident) << 16) | u32::from(seq),
            ),
            Repr::EchoReply { ident, seq } => (
                msg_type::ECHO_REPLY,
                0,
                (u32::from(ident) << 16) | u32::from(seq),
            ),
            Repr::PacketTooBig { mtu } => (msg_type::PACKET_TOO_BIG, 0, mtu),
            Repr::DstUnreachable { code } => (msg_type::DST_UNREACHABLE, code, 0),
            Repr::TimeExceeded { code } => (msg_type::TIME_EXCEEDED, code, 0),
            Repr::ParamProblem { code, pointer } => (msg_type::PARAM_PROBLEM, code, pointer),
            Repr::Other { msg_type, code } => (msg_type, code, 0),
        };
        p.set_msg_type(t);
        p.set_code(code);
        p.set_word(word);
        p.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addrs() -> (Ipv6Addr, Ipv6Addr) {
        ("2001:2::1".parse().unwrap(), "2001:2::2".parse().unwrap())
    }

    /// An echo request, ident 0x1234, seq 1, payload "ping", 2001:2::1 ->
    /// 2001:2::2; checksum 0x4eaa (RFC 4443 section 2.3, computed outside).
    static ECHO: [u8; 12] = [
        0x80, 0x00, 0x4e, 0xaa, 0x12, 0x34, 0x00, 0x01, b'p', b'i', b'n', b'g',
    ];

    #[test]
    fn parse_and_emit_fixture() {
        let (s, d) = addrs();
        let p = Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!(
            Repr::parse(&p, s, d).unwrap(),
            Repr::EchoRequest {
                ident: 0x1234,
                seq: 1
            }
        );
        assert_eq!(p.data(), b"ping");
        let mut b = [0u8; 12];
        b[8..].copy_from_slice(b"ping");
        Repr::EchoRequest {
            ident: 0x1234,
            seq: 1,
        }
        .emit(&mut Packet::new_unchecked(&mut b[..]), s, d);
        assert_eq!(b, ECHO);
        // Independent check with etherparse.
        let h = etherparse::Icmpv6Header::from_slice(&ECHO).unwrap().0;
        assert_eq!(
            h.icmp_type
                .calc_checksum(s.octets(), d.octets(), b"ping")
                .unwrap(),
            0x4eaa
        );
    }

    #[test]
    fn rejects() {
        let (s, d) = addrs();
        assert_eq!(
            Packet::new_checked(&ECHO[..7]).unwrap_err(),
            Error::Truncated
        );
        let mut b = ECHO;
        b[9] ^= 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p, s, d).unwrap_err(), Error::Checksum);
        // The checksum covers the addresses (swapping them would not show
        // it: the sum is commutative).
        let p = Packet::new_checked(&ECHO[..]).unwrap();
        let other: Ipv6Addr = "2001:2::3".parse().unwrap();
        assert_eq!(Repr::parse(&p, s, other).unwrap_err(), Error::Checksum);
    }

    proptest! {
        #[test]
        fn roundtrip(kind in 0u8..7, a in any::<u16>(), b in any::<u16>(), word in any::<u32>(),
                     data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let (s, d) = addrs();
            let r = match kind {
                0 => Repr::EchoRequest { ident: a, seq: b },
                1 => Repr::EchoReply { ident: a, seq: b },
                2 => Repr::PacketTooBig { mtu: word },
                3 => Repr::DstUnreachable { code: a as u8 },
                4 => Repr::TimeExceeded { code: a as u8 },
                5 => Repr::ParamProblem { code: a as u8, pointer: word },
                _ => Repr::Other { msg_type: 135, code: a as u8 },
            };
            let mut buf = vec![0u8; HEADER_LEN + data.len()];
            buf[HEADER_LEN..].copy_from_slice(&data);
            r.emit(&mut Packet::new_unchecked(&mut buf[..]), s, d);
            let p = Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Repr::parse(&p, s, d).unwrap(), r);
            prop_assert_eq!(p.data(), &data[..]);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let (s, d) = addrs();
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&p, s, d);
                let _ = p.data();
            }
        }
    }
}
