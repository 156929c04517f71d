//! Parsing and checks: the frame's first look (EtherType, the IPv4 header,
//! the transport header) and the dispatch to forward, reply or IPv6.

use super::client6::forward6;
use super::forward::{NO_CLIENT6, forward};
use super::fragment::{self, fragment4};
use super::reply::reply;
use super::{ETH, FrameBuf, IP, State, Verdict};
use crate::dataplane::counters::DropReason;
use crate::dataplane::tables::Snapshot;
use crate::wire::ethernet::ethertype;
use crate::wire::ethernet::field as eth_f;
use crate::wire::ipv4::field as ip_f;
use crate::wire::ipv4::{self, protocol};
use crate::wire::tcp::field as tcp_f;
use crate::wire::udp::field as udp_f;
use crate::wire::{checksum, get_addr, get16, get32, tcp, udp};
use std::net::Ipv4Addr;

/// Checks an IPv4 header without options; `avail` is the number of bytes
/// from the header's start to the end of the frame. Returns the packet's
/// total length. The fixed-size header makes every access check-free. A
/// fragment is tested last: `IpFragment` says that all else is sound.
#[inline(always)]
pub(super) fn check_ipv4(h: &[u8; IP], avail: usize) -> Result<usize, DropReason> {
    let ver_ihl = h[ip_f::VER_IHL];
    if ver_ihl != 0x45 {
        return Err(if ver_ihl >> 4 != 4 || ver_ihl & 0x0f < 5 {
            DropReason::IpMalformed
        } else {
            DropReason::IpOptions
        });
    }
    let total = usize::from(get16(h, ip_f::LENGTH));
    if total < IP {
        return Err(DropReason::IpMalformed);
    }
    if total > avail {
        return Err(DropReason::Truncated);
    }
    if checksum::ipv4_header_sum(h) != 0xffff {
        return Err(DropReason::IpChecksum);
    }
    if get16(h, ip_f::FLG_OFF) & (ipv4::FLAG_MF | ipv4::OFFSET_MASK) != 0 {
        return Err(DropReason::IpFragment);
    }
    Ok(total)
}

/// The parts of a TCP or UDP header the pipeline uses. Eight bytes at
/// most, so that it travels in a register (the sequence number is read
/// apart, by [`tcp_seq_end`], where it is needed: a 12-byte `L4` goes
/// through the stack; bench/README.md, "Choices the counts made").
#[derive(Clone, Copy)]
pub(super) struct L4 {
    pub(super) sport: u16,
    pub(super) dport: u16,
    /// TCP flags; `None` for UDP.
    pub(super) flags: Option<u8>,
}

/// The parts of a checked IPv4 header [`forward`] uses, read once by its
/// caller and passed in a register (reading them again from the frame
/// costs each established packet more; bench/README.md, "Choices the counts
/// made").
#[derive(Clone, Copy)]
pub(super) struct Ip4 {
    pub(super) client: Ipv4Addr,
    pub(super) proto: u8,
    pub(super) ttl: u8,
}

impl Ip4 {
    #[inline(always)]
    pub(super) fn of(h: &[u8; IP]) -> Self {
        Ip4 {
            client: get_addr(h, ip_f::SRC),
            proto: h[ip_f::PROTOCOL],
            ttl: h[ip_f::TTL],
        }
    }
}

/// Parses the transport header of an IP payload (`l4` is the payload exactly).
#[inline(always)]
pub(super) fn parse_l4(proto: u8, l4: &[u8]) -> Result<L4, DropReason> {
    parse_l4_of::<false>(proto, l4)
}

/// [`parse_l4`] for the payload of a whole packet (`FIRST` false), or of
/// a datagram's first fragment (`FIRST`): its transport header must be
/// whole there too (RFC 1858), and a UDP length must run past it (a
/// first fragment holds less than its datagram); what is wrong with a
/// fragment is `fragment_malformed`.
#[inline(always)]
pub(super) fn parse_l4_of<const FIRST: bool>(proto: u8, l4: &[u8]) -> Result<L4, DropReason> {
    let (truncated, malformed) = if FIRST {
        (DropReason::FragmentMalformed, DropReason::FragmentMalformed)
    } else {
        (DropReason::Truncated, DropReason::L4Malformed)
    };
    match proto {
        protocol::TCP => {
            let Some(h) = l4.first_chunk::<{ tcp::HEADER_LEN }>() else {
                return Err(truncated);
            };
            let doff = usize::from(h[tcp_f::OFF] >> 4) * 4;
            if doff < tcp::HEADER_LEN {
                return Err(malformed);
            }
            if doff > l4.len() {
                return Err(truncated);
            }
            Ok(L4 {
                sport: get16(h, tcp_f::SRC_PORT),
                dport: get16(h, tcp_f::DST_PORT),
                flags: Some(h[tcp_f::FLAGS]),
            })
        }
        protocol::UDP => {
            let Some(h) = l4.first_chunk::<{ udp::HEADER_LEN }>() else {
                return Err(truncated);
            };
            let ulen = usize::from(get16(h, udp_f::LENGTH));
            if ulen < udp::HEADER_LEN {
                return Err(malformed);
            }
            if FIRST && ulen <= l4.len() || !FIRST && ulen > l4.len() {
                return Err(truncated);
            }
            Ok(L4 {
                sport: get16(h, udp_f::SRC_PORT),
                dport: get16(h, udp_f::DST_PORT),
                flags: None,
            })
        }
        _ if FIRST => Err(DropReason::IpFragment),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

/// The sequence number after the TCP segment `seg` (exactly the segment,
/// which [`parse_l4`] accepted): its sequence number plus its payload, SYN
/// and FIN.
#[inline(always)]
pub(super) fn tcp_seq_end(seg: &[u8]) -> u32 {
    let Some(h) = seg.first_chunk::<{ tcp::HEADER_LEN }>() else {
        return 0;
    };
    let doff = usize::from(h[tcp_f::OFF] >> 4) * 4;
    let flags = h[tcp_f::FLAGS];
    get32(h, tcp_f::SEQ)
        .wrapping_add(seg.len().saturating_sub(doff) as u32)
        .wrapping_add(u32::from(flags & tcp::flags::SYN != 0))
        .wrapping_add(u32::from(flags & tcp::flags::FIN != 0))
}

/// Valid TCP flag combinations (after Linux conntrack's `tcp_valid_flags`),
/// ignoring PSH, ECE and CWR.
#[inline(always)]
pub(super) fn tcp_flags_valid(flags: u8) -> bool {
    use tcp::flags::*;
    let f = flags & (FIN | SYN | RST | ACK | URG);
    matches!(f & !URG, x if x == SYN || x == SYN | ACK || x == RST || x == RST | ACK || x == FIN | ACK || x == ACK)
        || (f == FIN) // a bare FIN, which some stacks send on abortive close
}

pub(super) fn classify(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
) -> Result<Verdict, DropReason> {
    let d = f.data();
    let Some(et) = d.get(eth_f::ETHERTYPE) else {
        return Err(DropReason::Truncated);
    };
    let et = u16::from_be_bytes([et[0], et[1]]);
    // IPv4 first, alone: the usual frame pays one comparison.
    if et != ethertype::IPV4 {
        return not_ipv4(snap, st, f, et);
    }
    let Some(h) = d.first_chunk::<{ ETH + IP }>() else {
        return Err(DropReason::Truncated);
    };
    let Some(iph) = h[ETH..].first_chunk::<IP>() else {
        return Err(DropReason::Truncated);
    };
    let total = match check_ipv4(iph, d.len() - ETH) {
        Ok(t) => t,
        Err(DropReason::IpFragment) => return fragment4(snap, st, f),
        Err(e) => return Err(e),
    };
    if iph[ip_f::DST] != snap.identity.node_addr.octets() {
        return Err(DropReason::NotForUs);
    }
    let ip = Ip4::of(iph);
    let proto = ip.proto;
    let l4 = parse_l4(proto, &d[ETH + IP..ETH + total])?;
    // Drop Ethernet padding: the frame is exactly its packet from here on.
    f.len = ETH + total;
    if proto == protocol::UDP && l4.dport == snap.identity.vxlan_port {
        return reply(snap, st, f);
    }
    match forward::<false, false>(snap, st, f, ip, l4, &NO_CLIENT6) {
        Err(DropReason::TooBig) => fragment::oversized(snap, st, f),
        r => r,
    }
}

/// A frame that is not IPv4: an IPv6 client's, or dropped by its EtherType.
pub(super) fn not_ipv4(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    et: u16,
) -> Result<Verdict, DropReason> {
    match et {
        ethertype::IPV6 => forward6(snap, st, f),
        ethertype::VLAN | ethertype::QINQ => Err(DropReason::Vlan),
        ethertype::ARP => Err(DropReason::Arp),
        _ => Err(DropReason::NotIpv4),
    }
}
