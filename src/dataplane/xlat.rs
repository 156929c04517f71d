//! IPv6 ↔ IPv4 header translation for TCP and UDP, in the spirit of
//! RFC 7915 (SIIT), in place in a frame buffer: an IPv6 client's packet
//! becomes an IPv4 one for the overlay (the tasks stay IPv4, as in Swarm),
//! and the task's IPv4 answer becomes IPv6 again.
//!
//! What is mapped (RFC 7915 sections 4.1 and 5.1): traffic class ↔ type
//! of service, hop limit ↔ TTL, payload length ↔ total length − 20, next
//! header ↔ protocol; IPv6 → IPv4 sets DF on packets above 1260 bytes (a
//! smaller one may cross an IPv6 link of MTU 1280 after translation back)
//! and identification 0 otherwise; IPv4 → IPv6 sets flow label 0. The
//! addresses are the caller's (the pipeline chooses the sandbox's, the
//! task's, the client's, the node's). The transport checksum is patched
//! for the change of pseudo-header (RFC 1624), or kept as it is where the
//! caller's own update covers that change ([`Transport`]: a flow's
//! deltas); a UDP datagram from IPv4 without a checksum (0, allowed
//! there, not in IPv6) gets a full one either way.
//!
//! Invariants: the caller has checked the headers (an IPv6 fixed header
//! followed directly by TCP or UDP, or an IPv4 header without options,
//! with a complete transport header); these functions index only within
//! `buf[off..off + len]` and, for IPv4 → IPv6, the 20 bytes before `off`.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::checksum;
use crate::wire::ipv4::{self, field as ip4};
use crate::wire::ipv6::{self, field as ip6};
use crate::wire::{at, get16, get16_ne, set16_ne, tcp, udp};

/// What translation keeps of a fixed IPv6 header: traffic class, hop
/// limit, source and destination.
fn read_v6(h: &[u8]) -> (u8, u8, Ipv6Addr, Ipv6Addr) {
    let addr = |r: std::ops::Range<usize>| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[r]);
        Ipv6Addr::from(a)
    };
    let traffic_class = ((get16(h, 0..2) >> 4) & 0xff) as u8;
    (
        traffic_class,
        h[ip6::HOP_LIMIT],
        addr(ip6::SRC),
        addr(ip6::DST),
    )
}

/// What translation keeps of an IPv4 header: type of service, TTL,
/// source and destination.
fn read_v4(h: &[u8]) -> (u8, u8, Ipv4Addr, Ipv4Addr) {
    let addr = |r: std::ops::Range<usize>| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&h[r]);
        Ipv4Addr::from(a)
    };
    (
        h[ip4::DSCP_ECN],
        h[ip4::TTL],
        addr(ip4::SRC),
        addr(ip4::DST),
    )
}

/// The bytes an IPv6 header has over an IPv4 one without options.
pub const GROWTH: usize = ipv6::HEADER_LEN - ipv4::HEADER_LEN;

/// What a translation does with the transport checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Patched for the change of pseudo-header (RFC 1624).
    Patched,
    /// Left as it is: the packet is a flow's, whose checksum deltas
    /// include the change of pseudo-header already (an IPv6 client's flow:
    /// `pipeline::nat::deltas_of`), so that its checksum is patched once.
    /// A UDP datagram from IPv4 without a checksum still gets one.
    Kept,
}

/// The offset of the transport checksum within its header, and whether a
/// zero there means "none" (UDP).
fn l4_checksum(protocol: u8) -> Option<(std::ops::Range<usize>, bool)> {
    match protocol {
        ipv4::protocol::TCP => Some((tcp::field::CHECKSUM, false)),
        ipv4::protocol::UDP => Some((udp::field::CHECKSUM, true)),
        _ => None,
    }
}

/// Translates the IPv6 packet at `buf[off..off + len]` into IPv4 from
/// `src` to `dst`, in place: the IPv4 header ends where the IPv6 one did,
/// so the packet now starts at `off + GROWTH`. Returns its new (offset,
/// length), or `None` for another upper layer than TCP or UDP. Inlined:
/// its one caller on the per-packet path, `forward6`, counted 12
/// instructions fewer a packet.
#[inline(always)]
pub fn v6_to_v4(
    buf: &mut [u8],
    (off, len): (usize, usize),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    transport: Transport,
) -> Option<(usize, usize)> {
    let h = buf.get(off..)?.first_chunk::<{ ipv6::HEADER_LEN }>()?;
    let protocol = h[ip6::NEXT_HEADER];
    let (csum, udp_like) = l4_checksum(protocol)?;
    let payload_len = get16(h, ip6::PAYLOAD_LEN);
    let traffic_class = ((get16(h, 0..2) >> 4) & 0xff) as u8;
    let hop_limit = h[ip6::HOP_LIMIT];
    let (s6, d6): (&[u8; 16], &[u8; 16]) =
        (h[ip6::SRC].try_into().ok()?, h[ip6::DST].try_into().ok()?);
    let total = ipv4::HEADER_LEN + usize::from(payload_len);
    debug_assert_eq!(total + GROWTH, len);

    // The transport checksum, when `Patched`: out with the IPv6
    // pseudo-header, in with the IPv4 one (the transport header and
    // payload do not change).
    let c = at(csum, off + ipv6::HEADER_LEN);
    let old = get16_ne(buf.get(c.clone())?, 0..2);
    if transport == Transport::Patched && !(udp_like && old == 0) {
        let new = checksum::update_v6_to_v4_ne(old, (s6, d6), (src, dst));
        let new = if udp_like && new == 0 { 0xffff } else { new };
        set16_ne(buf, c, new);
    }

    let v4 = off + GROWTH;
    // RFC 7915 5.1: DF above 1260 bytes, where a path MTU of 1280 on the
    // IPv6 side would need it; identification 0 (nothing is fragmented).
    let flg_off = if total > 1260 { ipv4::FLAG_DF } else { 0 };
    let fields = V4Header {
        tos: traffic_class,
        total,
        ident: 0,
        flg_off,
        ttl: hop_limit,
        protocol,
    };
    emit_v4(buf.get_mut(v4..)?.first_chunk_mut()?, &fields, src, dst);
    Some((v4, total))
}

/// What a translated IPv4 header holds besides its addresses.
struct V4Header {
    tos: u8,
    total: usize,
    ident: u16,
    flg_off: u16,
    ttl: u8,
    protocol: u8,
}

/// Writes a translated IPv4 header (no options) from `src` to `dst`
/// into `h`, its checksum summed.
#[inline(always)]
fn emit_v4(out: &mut [u8; ipv4::HEADER_LEN], f: &V4Header, src: Ipv4Addr, dst: Ipv4Addr) {
    // Built and summed in a local, then stored: summed in the frame, the
    // header was read back from memory (2 instructions more an IPv6
    // client's packet; summed from the fields' values instead, 19 more).
    let mut h = [0u8; ipv4::HEADER_LEN];
    h[ip4::VER_IHL] = 0x45;
    h[ip4::DSCP_ECN] = f.tos;
    h[ip4::LENGTH].copy_from_slice(&(f.total as u16).to_be_bytes());
    h[ip4::IDENT].copy_from_slice(&f.ident.to_be_bytes());
    h[ip4::FLG_OFF].copy_from_slice(&f.flg_off.to_be_bytes());
    h[ip4::TTL] = f.ttl;
    h[ip4::PROTOCOL] = f.protocol;
    h[ip4::SRC].copy_from_slice(&src.octets());
    h[ip4::DST].copy_from_slice(&dst.octets());
    let c = !checksum::ipv4_header_sum(&h);
    h[ip4::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    *out = h;
}

/// Writes a translated IPv6 header from `src` to `dst` into `h`.
#[inline(always)]
fn emit_v6(
    h: &mut [u8],
    (tos, payload_len, next_header, hop_limit): (u8, u16, u8, u8),
    src: Ipv6Addr,
    dst: Ipv6Addr,
) {
    let w = (6u32 << 28) | (u32::from(tos) << 20);
    h[ip6::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    h[ip6::PAYLOAD_LEN].copy_from_slice(&payload_len.to_be_bytes());
    h[ip6::NEXT_HEADER] = next_header;
    h[ip6::HOP_LIMIT] = hop_limit;
    h[ip6::SRC].copy_from_slice(&src.octets());
    h[ip6::DST].copy_from_slice(&dst.octets());
}

/// Translates the IPv4 packet at `buf[off..off + len]` into IPv6 from
/// `src` to `dst`, in place: the IPv6 header starts `GROWTH` bytes before
/// `off` (the caller's headroom). Returns the new (offset, length), or
/// `None` for another protocol than TCP or UDP or no headroom.
pub fn v4_to_v6(
    buf: &mut [u8],
    (off, len): (usize, usize),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    transport: Transport,
) -> Option<(usize, usize)> {
    let start = off.checked_sub(GROWTH)?;
    let h = &buf[off..off + ipv4::HEADER_LEN];
    let protocol = h[ip4::PROTOCOL];
    let (csum, udp_like) = l4_checksum(protocol)?;
    let total = usize::from(get16(h, ip4::LENGTH));
    debug_assert_eq!(total, len);
    let payload_len = (total - ipv4::HEADER_LEN) as u16;
    let (tos, ttl, s4, d4) = read_v4(h);

    let l4 = off + ipv4::HEADER_LEN;
    let c = at(csum, l4);
    let old = get16_ne(buf.get(c.clone())?, 0..2);
    let new = if udp_like && old == 0 {
        // No checksum in IPv4; IPv6 requires one (RFC 7915 4.5): sum the
        // whole datagram.
        let ph = checksum::pseudo_header_v6(src, dst, protocol, u32::from(payload_len));
        let body = checksum::data(&buf[l4..off + total]);
        match !checksum::combine(&[ph, body]) {
            0 => 0xffff,
            c => c,
        }
        .to_be()
    } else if transport == Transport::Kept {
        old
    } else {
        let new = checksum::update_v4_to_v6_ne(old, (s4, d4), (&src.octets(), &dst.octets()));
        if udp_like && new == 0 { 0xffff } else { new }
    };
    set16_ne(buf, c, new);

    let h = &mut buf[start..start + ipv6::HEADER_LEN];
    emit_v6(h, (tos, payload_len, protocol, ttl), src, dst);
    Some((start, total + GROWTH))
}

/// The bytes an IPv6 header and a fragment header have over an IPv4
/// header without options.
pub const FRAGMENT_GROWTH: usize = GROWTH + ipv6::fragment::HEADER_LEN;

/// The change of a fragment's transport checksum when its datagram's
/// pseudo-header goes from `out` to `inn` (each a sum over addresses and
/// protocol; the length is the datagram's in both and cancels).
fn fragment_checksum(old: u16, out: u16, inn: u16, udp_like: bool) -> u16 {
    let new = checksum::apply_folded(old, checksum::combine(&[!out, inn]));
    if udp_like && new == 0 { 0xffff } else { new }
}

/// Translates the IPv6 fragment at `buf[off..off + len]` (the fixed
/// header, a fragment header, then a part of a TCP or UDP datagram) into
/// an IPv4 fragment from `src` to `dst`, in place (RFC 7915 5.1.1): the
/// IPv4 header ends where the fragment header did, so the packet starts
/// at `off + FRAGMENT_GROWTH`. Its identification is the low 16 bits of
/// the fragment header's, its offset and MF the fragment header's, DF
/// clear. Only a first fragment (offset 0) holds the transport checksum,
/// patched for the change of pseudo-header. Returns the new (offset,
/// length), or `None` for another upper layer than TCP or UDP.
pub fn v6_fragment_to_v4(
    buf: &mut [u8],
    (off, len): (usize, usize),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    transport: Transport,
) -> Option<(usize, usize)> {
    use ipv6::fragment as fh;
    let h = buf.get(off..off + ipv6::HEADER_LEN + fh::HEADER_LEN)?;
    let fr = &h[ipv6::HEADER_LEN..];
    let protocol = fr[fh::NEXT_HEADER];
    let (csum, udp_like) = l4_checksum(protocol)?;
    let payload = len.checked_sub(ipv6::HEADER_LEN + fh::HEADER_LEN)?;
    let offset_m = get16(fr, fh::OFFSET_M);
    let ident = get16(fr, fh::IDENT.start + 2..fh::IDENT.end);
    let (traffic_class, hop_limit, s6, d6) = read_v6(h);
    let l4 = off + ipv6::HEADER_LEN + fh::HEADER_LEN;
    if offset_m & fh::OFFSET_MASK == 0 && transport == Transport::Patched {
        let c = at(csum, l4);
        let old = get16(buf.get(c.clone())?, 0..2);
        if !(udp_like && old == 0) {
            let out = checksum::pseudo_header_v6(s6, d6, protocol, 0);
            let inn = checksum::pseudo_header(src, dst, protocol, 0);
            let new = fragment_checksum(old, out, inn, udp_like);
            buf[c].copy_from_slice(&new.to_be_bytes());
        }
    }
    let total = ipv4::HEADER_LEN + payload;
    let v4 = off + FRAGMENT_GROWTH;
    let mut flg_off = (offset_m & fh::OFFSET_MASK) >> 3;
    if offset_m & fh::FLAG_M != 0 {
        flg_off |= ipv4::FLAG_MF;
    }
    let fields = V4Header {
        tos: traffic_class,
        total,
        ident,
        flg_off,
        ttl: hop_limit,
        protocol,
    };
    emit_v4(buf.get_mut(v4..)?.first_chunk_mut()?, &fields, src, dst);
    Some((v4, total))
}

/// Translates the IPv4 fragment at `buf[off..off + len]` (a header
/// without options, then a part of a TCP or UDP datagram) into an IPv6
/// fragment from `src` to `dst`, in place (RFC 7915 4.1.1): the IPv6 and
/// fragment headers start `FRAGMENT_GROWTH` bytes before `off` (the
/// caller's headroom); identification, offset and M follow the IPv4
/// header's. A first fragment's transport checksum is patched for the
/// change of pseudo-header; a UDP first fragment without one (IPv6
/// requires one, and the datagram is not here whole to sum it) is
/// refused. Returns the new (offset, length), or `None` for another
/// protocol than TCP or UDP, no headroom, or that UDP case.
pub fn v4_fragment_to_v6(
    buf: &mut [u8],
    (off, len): (usize, usize),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    transport: Transport,
) -> Option<(usize, usize)> {
    use ipv6::fragment as fh;
    let start = off.checked_sub(FRAGMENT_GROWTH)?;
    let h = buf.get(off..off + ipv4::HEADER_LEN)?;
    let protocol = h[ip4::PROTOCOL];
    let (csum, udp_like) = l4_checksum(protocol)?;
    let total = len;
    let flg_off = get16(h, ip4::FLG_OFF);
    let ident = get16(h, ip4::IDENT);
    let (tos, ttl, s4, d4) = read_v4(h);
    let payload = total.checked_sub(ipv4::HEADER_LEN)?;
    let l4 = off + ipv4::HEADER_LEN;
    if flg_off & ipv4::OFFSET_MASK == 0 {
        let c = at(csum, l4);
        let old = get16(buf.get(c.clone())?, 0..2);
        if udp_like && old == 0 {
            return None;
        }
        if transport == Transport::Patched {
            let out = checksum::pseudo_header(s4, d4, protocol, 0);
            let inn = checksum::pseudo_header_v6(src, dst, protocol, 0);
            let new = fragment_checksum(old, out, inn, udp_like);
            buf[c].copy_from_slice(&new.to_be_bytes());
        }
    }
    let h = &mut buf[start..start + ipv6::HEADER_LEN + fh::HEADER_LEN];
    let payload_len = (payload + fh::HEADER_LEN) as u16;
    let fragment = ipv6::next_header::FRAGMENT;
    emit_v6(h, (tos, payload_len, fragment, ttl), src, dst);
    let fr = &mut h[ipv6::HEADER_LEN..];
    fr[fh::NEXT_HEADER] = protocol;
    fr[1] = 0;
    let mut offset_m = (flg_off & ipv4::OFFSET_MASK) << 3;
    if flg_off & ipv4::FLAG_MF != 0 {
        offset_m |= fh::FLAG_M;
    }
    fr[fh::OFFSET_M].copy_from_slice(&offset_m.to_be_bytes());
    fr[fh::IDENT].copy_from_slice(&u32::from(ident).to_be_bytes());
    Some((start, ipv6::HEADER_LEN + fh::HEADER_LEN + payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use proptest::prelude::*;

    const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
    const N6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
    const SBOX: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 2);
    const TASK: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 4);

    /// An IPv6 packet built by etherparse (valid checksums), after
    /// `headroom` bytes.
    fn v6_packet(tcp: bool, payload: &[u8], headroom: usize, tc: u8, hop: u8) -> Vec<u8> {
        let b = PacketBuilder::ipv6(C6.octets(), N6.octets(), hop);
        let mut out = vec![0u8; headroom];
        let mut pkt = Vec::new();
        if tcp {
            b.tcp(40000, 8080, 7, 64000)
                .ack(9)
                .write(&mut pkt, payload)
                .unwrap();
        } else {
            b.udp(40000, 8080).write(&mut pkt, payload).unwrap();
        }
        // Traffic class: etherparse's builder leaves it 0.
        let w = (6u32 << 28) | (u32::from(tc) << 20);
        pkt[0..4].copy_from_slice(&w.to_be_bytes());
        out.extend_from_slice(&pkt);
        out
    }

    fn check_v4(buf: &[u8], tcp: bool, payload: &[u8]) {
        let p = SlicedPacket::from_ip(buf).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "IPv4 header checksum"
        );
        assert_eq!((h.source, h.destination), (SBOX.octets(), TASK.octets()));
        match &p.transport {
            Some(TransportSlice::Tcp(t)) if tcp => {
                let th = t.to_header();
                assert_eq!(
                    th.checksum,
                    th.calc_checksum_ipv4(&h, payload).unwrap(),
                    "TCP checksum over the IPv4 pseudo-header"
                );
            }
            Some(TransportSlice::Udp(u)) if !tcp => {
                let uh = u.to_header();
                assert_eq!(
                    uh.checksum,
                    uh.calc_checksum_ipv4(&h, payload).unwrap(),
                    "UDP checksum over the IPv4 pseudo-header"
                );
            }
            other => panic!("transport {other:?}"),
        }
    }

    /// `Kept` leaves the transport checksum as it was, both ways, but for
    /// a UDP datagram from IPv4 without one.
    #[test]
    fn a_kept_transport_checksum_is_left_alone() {
        for tcp in [true, false] {
            let len = 40 + if tcp { 20 } else { 8 } + 5;
            let mut buf = v6_packet(tcp, b"hello", 0, 0, 64);
            let at = 40 + if tcp { 16 } else { 6 };
            let before = get16(&buf, at..at + 2);
            let (off, l) = v6_to_v4(&mut buf, (0, len), SBOX, TASK, Transport::Kept).unwrap();
            assert_eq!(
                get16(&buf, off + 20 + at - 40..off + 20 + at - 40 + 2),
                before
            );
            let (off6, _) = v4_to_v6(&mut buf, (off, l), C6, N6, Transport::Kept).unwrap();
            assert_eq!(get16(&buf, off6 + at..off6 + at + 2), before);
        }
        // UDP from IPv4 without a checksum gets one, kept or not.
        let mut buf = v6_packet(false, b"hello", 0, 0, 64);
        let (off, l) = v6_to_v4(&mut buf, (0, 53), SBOX, TASK, Transport::Patched).unwrap();
        buf[off + 26..off + 28].copy_from_slice(&[0, 0]);
        let (off6, l6) = v4_to_v6(&mut buf, (off, l), C6, N6, Transport::Kept).unwrap();
        let p = etherparse::SlicedPacket::from_ip(&buf[off6..off6 + l6]).unwrap();
        let (Some(etherparse::NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(u))) =
            (&p.net, &p.transport)
        else {
            panic!("not IPv6 UDP");
        };
        let want = u
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), u.payload())
            .unwrap();
        assert_eq!(u.checksum(), want);
    }

    #[test]
    fn a_client_packet_and_its_answer_cross_the_families() {
        for tcp in [true, false] {
            let payload = b"GET / HTTP/1.0\r\n\r\n";
            let mut buf = v6_packet(tcp, payload, 0, 0xb8, 61);
            let len = buf.len();
            let (off, l) = v6_to_v4(&mut buf, (0, len), SBOX, TASK, Transport::Patched).unwrap();
            assert_eq!((off, l), (GROWTH, len - GROWTH));
            let v4 = &buf[off..off + l];
            check_v4(v4, tcp, payload);
            assert_eq!(v4[ip4::DSCP_ECN], 0xb8, "traffic class");
            assert_eq!(v4[ip4::TTL], 61, "hop limit");
            assert_eq!(get16(v4, ip4::FLG_OFF), 0, "no DF below 1260 bytes");

            // And back: the original packet, bytes and checksums.
            let want = v6_packet(tcp, payload, 0, 0xb8, 61);
            let (off6, l6) = v4_to_v6(&mut buf, (off, l), C6, N6, Transport::Patched).unwrap();
            assert_eq!((off6, l6), (0, len));
            assert_eq!(buf, want, "tcp: {tcp}");
        }
    }

    #[test]
    fn large_packets_get_df_and_checksumless_udp_gets_a_checksum() {
        let payload = vec![0x5au8; 1300];
        let mut buf = v6_packet(true, &payload, 0, 0, 64);
        let len = buf.len();
        let (off, l) = v6_to_v4(&mut buf, (0, len), SBOX, TASK, Transport::Patched).unwrap();
        assert_eq!(get16(&buf[off..], ip4::FLG_OFF), ipv4::FLAG_DF);
        check_v4(&buf[off..off + l], true, &payload);

        // A task's UDP answer without a checksum (allowed in IPv4).
        let mut v4 = vec![0u8; GROWTH];
        let mut pkt = Vec::new();
        PacketBuilder::ipv4(TASK.octets(), SBOX.octets(), 64)
            .udp(8080, 40000)
            .write(&mut pkt, b"answer")
            .unwrap();
        pkt[ipv4::HEADER_LEN + 6..ipv4::HEADER_LEN + 8].copy_from_slice(&[0, 0]);
        v4.extend_from_slice(&pkt);
        let n = pkt.len();
        let (off6, l6) = v4_to_v6(&mut v4, (GROWTH, n), N6, C6, Transport::Patched).unwrap();
        let p = SlicedPacket::from_ip(&v4[off6..off6 + l6]).unwrap();
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        let Some(TransportSlice::Udp(u)) = &p.transport else {
            panic!("not UDP")
        };
        let uh = u.to_header();
        assert_ne!(uh.checksum, 0, "IPv6 requires a UDP checksum");
        assert_eq!(
            uh.checksum,
            uh.calc_checksum_ipv6(&ip.header().to_header(), b"answer")
                .unwrap()
        );
        // Without headroom for the longer header: refused.
        assert!(v4_to_v6(&mut v4.clone(), (0, n), N6, C6, Transport::Patched).is_none());
    }

    proptest! {
        /// Any TCP or UDP packet crosses to IPv4 with valid checksums and
        /// comes back as it was.
        #[test]
        fn round_trip(tcp in any::<bool>(), payload in proptest::collection::vec(any::<u8>(), 0..1400),
                      tc in any::<u8>(), hop in 1u8..) {
            let mut buf = v6_packet(tcp, &payload, 0, tc, hop);
            let want = buf.clone();
            let len = buf.len();
            let (off, l) = v6_to_v4(&mut buf, (0, len), SBOX, TASK, Transport::Patched).unwrap();
            check_v4(&buf[off..off + l], tcp, &payload);
            let (off6, l6) = v4_to_v6(&mut buf, (off, l), C6, N6, Transport::Patched).unwrap();
            prop_assert_eq!((off6, l6), (0, len));
            prop_assert_eq!(buf, want);
        }
    }
}
