//! The IPv6 front end: an IPv6 client's packet checked and translated to
//! IPv4 for the IPv4 steps, its replies, resets and ICMP errors made IPv6
//! again (RFC 7915 in spirit), Packet Too Big where it would not fit.

use super::answer::ICMP_QUOTE;
use super::forward::forward;
use super::fragment::fragment6;
use super::parse::{Ip4, parse_l4};
use super::reply::deliver;
use super::{ETH, FrameBuf, INNER, INNER_IP, IP, State, Verdict};
use crate::dataplane::counters::DropReason;
use crate::dataplane::tables::{Identity, L4Checksum, Snapshot};
use crate::dataplane::xlat::{self, Transport};
use crate::wire::ethernet::field as eth_f;
use crate::wire::ethernet::{self, ethertype};
use crate::wire::icmp::field as icmp_f;
use crate::wire::ipv4::field as ip_f;
use crate::wire::ipv4::protocol;
use crate::wire::tcp::field as tcp_f;
use crate::wire::udp::field as udp_f;
use crate::wire::{MacAddr, checksum, get_mac, get16, icmp, icmpv6, ipv6, set16};

/// An IPv6 client's packet to a published port on `node.address6`
/// (RFC 7915 in spirit; the overlay and the tasks stay IPv4): checked as
/// strictly as IPv4 (no extension header; a fragment header goes to
/// [`fragment6`]), answered with
/// Packet Too Big when its IPv4 form would not fit the overlay, then
/// translated in place into IPv4 from the client's digest
/// ([`FlowTable::digest6`]) to the node address, so that the IPv4 steps
/// forward it unchanged, its flow keyed by the whole IPv6 address.
#[inline(never)]
pub(super) fn forward6(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let Some(node6) = id.node_addr6 else {
        return Err(DropReason::NotIpv4);
    };
    // `Repr::parse` checks the packet's length and version.
    let p = ipv6::Packet::new_unchecked(&f.data()[ETH..]);
    let r = match ipv6::Repr::parse(&p) {
        Ok(r) => r,
        Err(crate::wire::Error::Fragment) => return fragment6(snap, st, f, node6),
        Err(crate::wire::Error::Unsupported) => return Err(DropReason::Ipv6ExtensionHeader),
        Err(crate::wire::Error::Truncated) => return Err(DropReason::Truncated),
        Err(_) => return Err(DropReason::IpMalformed),
    };
    if r.dst != node6 {
        return Err(DropReason::NotForUs);
    }
    // Any other protocol is `UnsupportedProtocol` from `parse_l4`.
    let proto = r.next_header;
    let payload = usize::from(r.payload_len);
    // Drop Ethernet padding: the frame is exactly its packet from here on.
    f.len = ETH + ipv6::HEADER_LEN + payload;
    let l4 = parse_l4(proto, &f.data()[ETH + ipv6::HEADER_LEN..])?;
    snap.ports
        .get(proto, l4.dport)
        .ok_or(DropReason::NoService)?;
    if IP + payload > usize::from(id.overlay_mtu) {
        return packet_too_big6(snap, st, f, node6, r.src);
    }
    let c6 = r.src.octets();
    let digest = st.flows.digest6(&c6);
    // A partial checksum (a veth's offload: the pseudo-header's sum only)
    // would come out of the translation's update as garbage: it becomes
    // the IPv4 pseudo-header's sum, partial again, which the IPv4 steps
    // complete.
    let csum_at = ETH + ipv6::HEADER_LEN + l4_checksum_offset(proto);
    let stored = get16(f.data(), csum_at..csum_at + 2);
    let partial = id.l4_checksum != L4Checksum::Incremental
        && stored == checksum::pseudo_header_v6(r.src, r.dst, proto, u32::from(r.payload_len));
    let (off, len) = (f.off + ETH, ipv6::HEADER_LEN + payload);
    // The transport checksum is left for the flow's deltas, which include
    // the change of pseudo-header (`nat::deltas_of`).
    let translated = xlat::v6_to_v4(f.buf, (off, len), digest, id.node_addr, Transport::Kept);
    let Some((v4, total)) = translated else {
        return Err(DropReason::UnsupportedProtocol);
    };
    if partial {
        let ph = checksum::pseudo_header(digest, id.node_addr, proto, r.payload_len);
        f.buf[v4 + IP + l4_checksum_offset(proto)..][..2].copy_from_slice(&ph.to_be_bytes());
    }
    // The Ethernet header moves up to the IPv4 packet. Its transport
    // header is the one parsed above.
    f.move_ethernet(v4 - ETH, ETH + total, ethertype::IPV4)?;
    let ip = Ip4 {
        client: digest,
        proto,
        ttl: r.hop_limit,
    };
    forward::<true, false>(snap, st, f, ip, l4, &c6)
}

/// Where a TCP or UDP header keeps its checksum.
#[inline(always)]
pub(super) fn l4_checksum_offset(proto: u8) -> usize {
    if proto == protocol::TCP {
        tcp_f::CHECKSUM.start
    } else {
        udp_f::CHECKSUM.start
    }
}

/// Turns the IPv4 packet in `f` (translated, addressed to an IPv6 client's
/// digest) into IPv6 from the node's IPv6 address to `client6`, in place:
/// it grows by [`crate::dataplane::xlat::GROWTH`] bytes into the headroom, and the
/// Ethernet header, its addresses kept, moves with it.
///
/// `FRAGMENT`: the packet is a fragment, and becomes an IPv6 fragment
/// (with a fragment header: [`crate::dataplane::xlat::FRAGMENT_GROWTH`]).
/// `transport`: `Kept` for a reply its flow's deltas translated (they
/// include the change of pseudo-header), `Patched` for a packet meshgate
/// made for the IPv4 digest (a reset).
#[inline(never)]
pub(super) fn to_ipv6<const FRAGMENT: bool>(
    id: &Identity,
    f: &mut FrameBuf<'_>,
    client6: &[u8; 16],
    transport: Transport,
) -> Result<(), DropReason> {
    let Some(node6) = id.node_addr6 else {
        return Err(DropReason::NotIpv4);
    };
    let (eth, len) = (f.off, f.len);
    let growth = if FRAGMENT {
        xlat::FRAGMENT_GROWTH
    } else {
        xlat::GROWTH
    };
    let Some(start) = eth.checked_sub(growth) else {
        return Err(DropReason::NoHeadroom);
    };
    // First the Ethernet header, out of the way of the IPv6 header that
    // will cover its old place.
    f.move_ethernet(start, len + growth, ethertype::IPV6)?;
    let client6 = std::net::Ipv6Addr::from(*client6);
    let translated = if FRAGMENT {
        xlat::v4_fragment_to_v6(f.buf, (eth + ETH, len - ETH), node6, client6, transport)
    } else {
        xlat::v4_to_v6(f.buf, (eth + ETH, len - ETH), node6, client6, transport)
    };
    let Some((v6, total)) = translated else {
        return Err(DropReason::UnsupportedProtocol);
    };
    debug_assert_eq!((v6, ETH + total), (start + ETH, f.len));
    Ok(())
}

/// Writes the Ethernet and IPv6 headers of an ICMPv6 answer meshgate
/// sends an IPv6 client (from the node, to the neighbour `mac`) into `b`.
pub(super) fn emit_icmp6_headers(
    id: &Identity,
    b: &mut [u8],
    mac: MacAddr,
    (src, dst): (std::net::Ipv6Addr, std::net::Ipv6Addr),
    payload_len: usize,
    hop_limit: u8,
) {
    let next_header = ipv6::next_header::ICMPV6;
    ethernet::Repr {
        src: id.node_mac,
        dst: mac,
        ethertype: ethertype::IPV6,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut b[..]));
    ipv6::Repr {
        src,
        dst,
        next_header,
        payload_len: payload_len as u16,
        hop_limit,
        traffic_class: 0,
        flow_label: 0,
    }
    .emit(&mut ipv6::Packet::new_unchecked(&mut b[ETH..]));
}

/// Answers an IPv6 client's packet that would not fit the overlay once
/// translated with ICMPv6 Packet Too Big (RFC 8201: routers do not
/// fragment IPv6), quoting as much of it as fits in 1280 bytes, with the
/// largest IPv6 packet that does fit: the overlay MTU plus the 20 bytes
/// the translation takes off.
pub(super) fn packet_too_big6(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    node6: std::net::Ipv6Addr,
    client6: std::net::Ipv6Addr,
) -> Result<Verdict, DropReason> {
    if !st.generated.take(st.now) {
        return Err(DropReason::TooBig);
    }
    let id = &snap.identity;
    let d = f.data();
    let mac = get_mac(d, eth_f::SRC);
    let packet = f.len - ETH;
    let room = usize::from(ipv6::MIN_MTU) - ipv6::HEADER_LEN - icmpv6::HEADER_LEN;
    let q = packet.min(room);
    let head = ETH + ipv6::HEADER_LEN + icmpv6::HEADER_LEN;
    // The quote moves back by the answer's headers; the buffer holds the
    // frame, so its room after the frame's start is enough.
    let (off, end) = (f.off, f.off + ETH + q);
    if off + head + q > f.buf.len() || end > f.buf.len() {
        return Err(DropReason::TooBig);
    }
    f.buf.copy_within(off + ETH..end, off + head);
    f.len = head + q;
    let b = f.data_mut();
    emit_icmp6_headers(id, b, mac, (node6, client6), icmpv6::HEADER_LEN + q, 64);
    icmpv6::Repr::PacketTooBig {
        mtu: u32::from(id.overlay_mtu) + crate::dataplane::xlat::GROWTH as u32,
    }
    .emit(
        &mut icmpv6::Packet::new_unchecked(&mut b[ETH + ipv6::HEADER_LEN..]),
        node6,
        client6,
    );
    st.drops.inc(DropReason::TooBig);
    st.events.icmp_sent += 1;
    Ok(Verdict::Transmit)
}

/// [`deliver`] for an IPv6 client's flow (in `slot`): the reply, addressed
/// and counted, becomes IPv6 (20 bytes longer; the task's counters count
/// what left the task).
#[inline(never)]
pub(super) fn deliver6(
    id: &crate::dataplane::tables::Identity,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    client_mac: MacAddr,
    task_index: u32,
    slot: u32,
) -> Result<Verdict, DropReason> {
    let v = deliver(id, st, f, client_mac, task_index)?;
    let c6 = *st.flows.client6(slot);
    to_ipv6::<false>(id, f, &c6, Transport::Kept)?;
    st.events.ipv6_replies += 1;
    Ok(v)
}

/// RFC 7915 section 4.2: what an ICMPv4 error (`msg_type`, `code`, the
/// next-hop MTU of "fragmentation needed") is in ICMPv6; `None` for one
/// that has no counterpart (it is dropped).
pub fn icmp4_to_6(msg_type: u8, code: u8, mtu: u16) -> Option<icmpv6::Repr> {
    use icmpv6::unreachable as u6;
    Some(match (msg_type, code) {
        (icmp::msg_type::DST_UNREACHABLE, 0 | 1 | 5 | 6 | 7 | 8 | 11 | 12) => {
            icmpv6::Repr::DstUnreachable { code: u6::NO_ROUTE }
        }
        (icmp::msg_type::DST_UNREACHABLE, 9 | 10 | 13 | 15) => icmpv6::Repr::DstUnreachable {
            code: u6::ADMIN_PROHIBITED,
        },
        (icmp::msg_type::DST_UNREACHABLE, icmp::unreachable::PORT) => {
            icmpv6::Repr::DstUnreachable { code: u6::PORT }
        }
        // The next header field of the IPv6 header (offset 6).
        (icmp::msg_type::DST_UNREACHABLE, icmp::unreachable::PROTOCOL) => {
            icmpv6::Repr::ParamProblem {
                code: 1,
                pointer: 6,
            }
        }
        // An IPv6 packet is 20 bytes longer than its IPv4 form; no IPv6
        // link is below 1280. An MTU of 0 (a pre-RFC 1191 router) says
        // nothing to go by.
        (icmp::msg_type::DST_UNREACHABLE, icmp::unreachable::FRAG_NEEDED) if mtu > 0 => {
            icmpv6::Repr::PacketTooBig {
                mtu: (u32::from(mtu) + crate::dataplane::xlat::GROWTH as u32)
                    .max(u32::from(ipv6::MIN_MTU)),
            }
        }
        (icmp::msg_type::TIME_EXCEEDED, c @ (0 | 1)) => icmpv6::Repr::TimeExceeded { code: c },
        _ => return None,
    })
}

/// Bytes of the quoted transport header and data in an ICMPv6 error
/// meshgate translates (the quoted IPv6 header comes on top).
pub(super) const ICMP6_QUOTE_L4: usize = ICMP_QUOTE - IP;

/// [`icmp_error`] for an IPv6 client's flow (in `slot`): the error is
/// translated to ICMPv6 (RFC 7915 4.2) from the node's IPv6 address, and
/// the quoted packet is the client's own, as it sent it: its IPv6 header,
/// then its ports and what follows of the transport header.
pub(super) fn icmp_error6(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
    ttl: u8,
    slot: u32,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let Some(node6) = id.node_addr6 else {
        return Err(DropReason::NotIpv4);
    };
    let flow = st.flows.get(slot);
    let (client_port, published, ti) = (flow.key.client_port, flow.key.published, flow.task_index);
    let client_mac = MacAddr(flow.client_mac);
    let client6 = std::net::Ipv6Addr::from(*st.flows.client6(slot));
    let msg = &f.data()[INNER_IP + IP..INNER_IP + total];
    let Some(m) = msg.first_chunk::<{ icmp::HEADER_LEN + IP + 8 }>() else {
        return Err(DropReason::Truncated);
    };
    let Some(repr) = icmp4_to_6(m[icmp_f::TYPE], m[icmp_f::CODE], get16(m, icmp_f::MTU)) else {
        return Err(DropReason::UnsupportedProtocol);
    };
    let q = &m[icmp::HEADER_LEN..];
    let (qproto, qttl, qtotal) = (q[ip_f::PROTOCOL], q[ip_f::TTL], get16(q, ip_f::LENGTH));
    let ql4 = &msg[icmp::HEADER_LEN + IP..];
    let l4n = ql4.len().min(ICMP6_QUOTE_L4);
    let mut quote = [0u8; ipv6::HEADER_LEN + ICMP6_QUOTE_L4];
    ipv6::Repr {
        src: client6,
        dst: node6,
        next_header: qproto,
        payload_len: qtotal.saturating_sub(IP as u16),
        hop_limit: qttl,
        traffic_class: 0,
        flow_label: 0,
    }
    .emit(&mut ipv6::Packet::new_unchecked(
        &mut quote[..ipv6::HEADER_LEN],
    ));
    let ql = &mut quote[ipv6::HEADER_LEN..ipv6::HEADER_LEN + l4n];
    ql.copy_from_slice(&ql4[..l4n]);
    set16(ql, udp_f::SRC_PORT, client_port);
    set16(ql, udp_f::DST_PORT, published);
    let qlen = ipv6::HEADER_LEN + l4n;

    // The answer replaces the inner frame: Ethernet, IPv6, ICMPv6, quote.
    f.off += INNER;
    f.len = ETH + ipv6::HEADER_LEN + icmpv6::HEADER_LEN + qlen;
    if f.off + f.len > f.buf.len() {
        return Err(DropReason::Truncated);
    }
    let b = f.data_mut();
    emit_icmp6_headers(
        id,
        b,
        client_mac,
        (node6, client6),
        icmpv6::HEADER_LEN + qlen,
        ttl - 1,
    );
    let icmp6 = &mut b[ETH + ipv6::HEADER_LEN..];
    icmp6[icmpv6::HEADER_LEN..].copy_from_slice(&quote[..qlen]);
    repr.emit(&mut icmpv6::Packet::new_unchecked(icmp6), node6, client6);
    st.events.ipv6_replies += 1;
    deliver(id, st, f, client_mac, ti)
}
