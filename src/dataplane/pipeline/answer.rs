//! Answers meshgate writes itself, in place of the frame: ARP for the
//! sandbox's address, ICMP errors (fragmentation needed, a task's errors
//! translated back), TCP resets.

use super::client6::{icmp_error6, to_ipv6};
use super::reply::{client_mac, to_client};
use super::track::{flow_task, request_resolution};
use super::{ETH, FrameBuf, INNER, INNER_IP, IP, State, VX_HDR, VX_UDP, Verdict};
use crate::dataplane::counters::DropReason;
use crate::dataplane::flow::{ClientKey, FlowTable, SnatKey};
use crate::dataplane::tables::{Identity, OUTER_TTL, Snapshot};
use crate::dataplane::xlat::Transport;
use crate::wire::ethernet::field as eth_f;
use crate::wire::ethernet::{self, ethertype};
use crate::wire::icmp::field as icmp_f;
use crate::wire::ipv4::field as ip_f;
use crate::wire::ipv4::{self, protocol};
use crate::wire::tcp::field as tcp_f;
use crate::wire::udp::field as udp_f;
use crate::wire::{
    MacAddr, arp, at, checksum, get_addr, get_mac, get16, get16_ne, icmp, set16, set16_ne, tcp,
    udp, vxlan,
};
use std::net::Ipv4Addr;

/// Answers an ARP request for the overlay address that arrived in VXLAN,
/// in place, back to the VTEP that sent it.
#[cold]
#[inline(never)]
pub(super) fn arp_reply(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    vtep: Ipv4Addr,
    vtep_mac: Option<MacAddr>,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let d = f.data();
    let ulen = get16(d, at(udp_f::LENGTH, VX_UDP)) as usize;
    let a = arp::Packet::new_checked(&d[INNER + ETH..VX_UDP + ulen])
        .map_err(|_| DropReason::Truncated)?;
    let req = arp::Repr::parse(&a).map_err(|_| DropReason::ArpNotForUs)?;
    if req.operation != arp::operation::REQUEST || req.target_protocol_addr != id.overlay_addr {
        return Err(DropReason::ArpNotForUs);
    }
    let Some(vtep_mac) = vtep_mac else {
        request_resolution(st, vtep);
        return Err(DropReason::NoNeighbour);
    };
    let sport = get16(d, at(udp_f::SRC_PORT, VX_UDP));
    let inner_len = ETH + arp::PACKET_LEN;
    f.len = INNER + inner_len;
    let b = f.data_mut();
    ethernet::Repr {
        src: id.node_mac,
        dst: vtep_mac,
        ethertype: ethertype::IPV4,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut b[..]));
    let ip_len = (IP + udp::HEADER_LEN + vxlan::HEADER_LEN + inner_len) as u16;
    ipv4::Repr {
        src: id.node_addr,
        dst: vtep,
        protocol: protocol::UDP,
        payload_len: ip_len - IP as u16,
        ttl: OUTER_TTL,
        ident: 0,
        dont_frag: true,
        dscp_ecn: 0,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut b[ETH..ETH + IP]));
    udp::Repr {
        src_port: sport,
        dst_port: id.vxlan_port,
        payload_len: vxlan::HEADER_LEN + inner_len,
    }
    .emit(
        &mut udp::Packet::new_unchecked(&mut b[VX_UDP..VX_HDR]),
        None,
    );
    vxlan::Repr { vni: id.vni }.emit(&mut vxlan::Packet::new_unchecked(&mut b[VX_HDR..INNER]));
    ethernet::Repr {
        src: id.overlay_mac,
        dst: req.source_hardware_addr,
        ethertype: ethertype::ARP,
    }
    .emit(&mut ethernet::Frame::new_unchecked(
        &mut b[INNER..INNER + ETH],
    ));
    arp::Repr {
        operation: arp::operation::REPLY,
        source_hardware_addr: id.overlay_mac,
        source_protocol_addr: id.overlay_addr,
        target_hardware_addr: req.source_hardware_addr,
        target_protocol_addr: req.source_protocol_addr,
    }
    .emit(&mut arp::Packet::new_unchecked(&mut b[INNER + ETH..]));
    st.events.arp_replies += 1;
    Ok(Verdict::Transmit)
}

/// The Ethernet and IPv4 headers of a packet meshgate itself sends from
/// the node address (an ICMP error, a reset) to `to` through neighbour
/// `mac`, with `payload_len` bytes of `protocol` after them.
pub(super) fn emit_answer_headers(
    id: &crate::dataplane::tables::Identity,
    b: &mut [u8],
    mac: MacAddr,
    to: Ipv4Addr,
    protocol: u8,
    payload_len: usize,
) {
    ethernet::Repr {
        src: id.node_mac,
        dst: mac,
        ethertype: ethertype::IPV4,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut b[..]));
    ipv4::Repr {
        src: id.node_addr,
        dst: to,
        protocol,
        payload_len: payload_len as u16,
        ttl: 64,
        ident: 0,
        dont_frag: true,
        dscp_ecn: 0,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut b[ETH..ETH + IP]));
}

/// Bytes of the offending packet quoted in an ICMP error meshgate sends: its
/// IPv4 header and 44 bytes of the rest (RFC 792 asks for 8; more lets the
/// client match TCP segments).
pub(super) const ICMP_QUOTE: usize = 64;

/// Answers a client packet larger than the overlay MTU with ICMP
/// "fragmentation needed" (RFC 1191), as a router on the path would, so that
/// path MTU discovery works through meshgate. A packet without DF is
/// `too_big` here, and [`Pipeline::process`](super::Pipeline::process)
/// sends it on in two fragments ([`super::fragment::oversized`]).
pub(super) fn frag_needed(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
) -> Result<Verdict, DropReason> {
    let Some(h) = f.data().first_chunk::<{ ETH + IP }>() else {
        return Err(DropReason::Truncated);
    };
    if get16(h, at(ip_f::FLG_OFF, ETH)) & ipv4::FLAG_DF == 0 {
        return Err(DropReason::TooBig);
    }
    let mtu = snap.identity.overlay_mtu;
    let code = icmp::unreachable::FRAG_NEEDED;
    dst_unreachable(snap, st, f, total, (code, mtu), DropReason::TooBig)
}

/// Answers a client's datagram to a service that has no task to take it
/// with ICMP "port unreachable", as IPVS answers one for a service without
/// an available real server (and the node's kernel, once the port is
/// closed): its client hears at once that nothing serves there.
pub(super) fn port_unreachable(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
) -> Result<Verdict, DropReason> {
    let code = icmp::unreachable::PORT;
    dst_unreachable(snap, st, f, total, (code, 0), DropReason::NoTask)
}

/// Turns a client's IPv4 packet of `total` bytes into an ICMP destination
/// unreachable (`code`, and the next-hop MTU that "fragmentation needed"
/// carries) back to it, quoting its start; counted as a drop for `reason`.
fn dst_unreachable(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
    (code, next_hop_mtu): (u8, u16),
    reason: DropReason,
) -> Result<Verdict, DropReason> {
    if !st.generated.take(st.now) {
        return Err(reason);
    }
    let id = &snap.identity;
    let d = f.data();
    let Some(h) = d.first_chunk::<{ ETH + IP }>() else {
        return Err(DropReason::Truncated);
    };
    let client = get_addr(h, at(ip_f::SRC, ETH));
    // An answer to this very frame goes back to the neighbour that sent it
    // (its source MAC), as any responder does; the neighbour table may not
    // know the client yet (it ARPed microseconds ago).
    let mac = get_mac(h, eth_f::SRC);
    let q = total.min(ICMP_QUOTE).min(d.len() - ETH);
    let mut quote = [0u8; ICMP_QUOTE];
    quote[..q].copy_from_slice(&d[ETH..ETH + q]);
    let len = ETH + IP + icmp::HEADER_LEN + q;
    // A small datagram's answer is longer than it: the buffer must hold it.
    if f.off + len > f.buf.len() {
        return Err(reason);
    }
    f.len = len;
    let b = f.data_mut();
    emit_answer_headers(id, b, mac, client, protocol::ICMP, icmp::HEADER_LEN + q);
    let msg = &mut b[ETH + IP..];
    msg[icmp::HEADER_LEN..].copy_from_slice(&quote[..q]);
    icmp::Repr::DstUnreachable {
        code,
        next_hop_mtu,
        data_len: q,
    }
    .emit(&mut icmp::Packet::new_unchecked(msg));
    st.drops.inc(reason);
    st.events.icmp_sent += 1;
    Ok(Verdict::Transmit)
}

/// Translates an ICMP error about a flow's packet (a task's "port
/// unreachable", a "fragmentation needed" from the task's side) back to the
/// client, as NAT does: the error's addresses, and the quoted packet's
/// addresses and ports, are reversed, and every checksum is redone.
#[cold]
#[inline(never)]
pub(super) fn icmp_error(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
    vtep: Ipv4Addr,
    ttl: u8,
    peer: Ipv4Addr,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let (slot, qproto) = match quoted_flow(snap, st, &f.data()[INNER_IP..INNER_IP + total], peer)? {
        Quoted::Worker(w) => return Ok(Verdict::Handoff(w)),
        Quoted::Flow(slot, qproto) => (slot, qproto),
    };
    let gen32 = st.gen32;
    let flow = st.flows.get_mut(slot);
    if flow.vtep != vtep {
        return Err(DropReason::ReplyWrongVtep);
    }
    if flow_task(snap, gen32, flow).is_none() {
        return Err(DropReason::TaskGone);
    }
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    if flow.key.v6 {
        return icmp_error6(snap, st, f, total, ttl, slot);
    }
    let (key, delta_l4, ti) = (flow.key, flow.delta_l4, flow.task_index);
    let Some(client_mac) = client_mac(snap, flow) else {
        request_resolution(st, snap.neighbours.next_hop(key.client));
        return Err(DropReason::NoNeighbour);
    };
    let b = &mut f.data_mut()[INNER_IP..INNER_IP + total];
    reverse_icmp(b, id.node_addr, (key, delta_l4), ttl, qproto);
    to_client(id, st, f, total, client_mac, ti)
}

/// Whose flow an ICMP error quotes.
enum Quoted {
    /// Another worker's (by the quoted SNAT port).
    Worker(u16),
    /// This worker's, in this slot; the quoted protocol.
    Flow(u32, u8),
}

/// Finds the flow an ICMP error from a task's side (`p`, its IPv4 packet)
/// quotes a packet of: a destination unreachable or time exceeded with a
/// sound checksum, quoting TCP or UDP from the sandbox (or, for a flow
/// that keeps its client's address, from `peer`, the client) to a task.
fn quoted_flow(
    snap: &Snapshot,
    st: &State,
    p: &[u8],
    peer: Ipv4Addr,
) -> Result<Quoted, DropReason> {
    let msg = &p[IP..];
    // Header, then at least the quoted IPv4 header and 8 bytes of transport.
    let Some(m) = msg.first_chunk::<{ icmp::HEADER_LEN + IP + 8 }>() else {
        return Err(DropReason::Truncated);
    };
    if !matches!(
        m[icmp_f::TYPE],
        icmp::msg_type::DST_UNREACHABLE | icmp::msg_type::TIME_EXCEEDED
    ) {
        return Err(DropReason::UnsupportedProtocol);
    }
    if checksum::data(msg) != 0xffff {
        return Err(DropReason::L4Malformed);
    }
    let q = &m[icmp::HEADER_LEN..];
    let qproto = q[ip_f::PROTOCOL];
    // TCP and UDP put their ports in the same place.
    let quoted_src = if peer.is_unspecified() {
        snap.identity.overlay_addr
    } else {
        peer
    };
    if q[ip_f::VER_IHL] != 0x45
        || !matches!(qproto, protocol::TCP | protocol::UDP)
        || q[ip_f::SRC] != quoted_src.octets()
    {
        return Err(DropReason::IcmpNoFlow);
    }
    let snat = get16(q, at(udp_f::SRC_PORT, IP));
    let owner = FlowTable::owner(snat, st.workers);
    if owner != st.worker {
        return Ok(Quoted::Worker(owner));
    }
    let key = SnatKey {
        task: get_addr(q, ip_f::DST),
        target: get16(q, at(udp_f::DST_PORT, IP)),
        snat_port: snat,
        protocol: qproto,
        peer,
    };
    let slot = st.flows.lookup_snat(&key).ok_or(DropReason::IcmpNoFlow)?;
    Ok(Quoted::Flow(slot, qproto))
}

/// Rewrites an ICMP error (`b`, its IPv4 packet) about a packet of the
/// flow with client key `key` (and transport checksum delta `delta_l4`)
/// for the client: from the node (`node`), TTL `ttl` minus one, quoting
/// the client's packet as the client sent it (addresses, ports, and the
/// quoted transport checksum by the reverse of the flow's delta); every
/// checksum redone.
fn reverse_icmp(
    b: &mut [u8],
    node: Ipv4Addr,
    (key, delta_l4): (crate::dataplane::flow::ClientKey, u16),
    ttl: u8,
    qproto: u8,
) {
    let (iph, msg) = b.split_at_mut(IP);
    let mut ip = ipv4::Packet::new_unchecked(&mut iph[..]);
    ip.set_src_addr(node);
    ip.set_dst_addr(key.client);
    ip.set_ttl(ttl - 1);
    ip.fill_checksum();
    let (_, quoted) = msg.split_at_mut(icmp::HEADER_LEN);
    let (qh, ql4) = quoted.split_at_mut(IP);
    let mut qip = ipv4::Packet::new_unchecked(&mut qh[..]);
    qip.set_src_addr(key.client);
    qip.set_dst_addr(node);
    qip.fill_checksum();
    set16(ql4, udp_f::SRC_PORT, key.client_port);
    set16(ql4, udp_f::DST_PORT, key.published);
    if qproto == protocol::UDP {
        let c = checksum::apply_folded_udp(get16_ne(ql4, udp_f::CHECKSUM), !delta_l4);
        set16_ne(ql4, udp_f::CHECKSUM, c);
    } else if ql4.len() >= tcp_f::CHECKSUM.end {
        let c = checksum::apply_folded(get16_ne(ql4, tcp_f::CHECKSUM), !delta_l4);
        set16_ne(ql4, tcp_f::CHECKSUM, c);
    }
    let mut icmp = icmp::Packet::new_unchecked(&mut msg[..]);
    icmp.fill_checksum();
}

/// The numbers of a TCP reset (RFC 9293 section 3.10.7.1).
pub(super) struct Reset {
    pub(super) seq: u32,
    pub(super) ack: u32,
    pub(super) flags: u8,
}

/// Writes a TCP reset from the published port on the node address to the
/// client of `key` into `f` (replacing its contents).
pub(super) fn emit_reset(
    id: &Identity,
    f: &mut FrameBuf<'_>,
    mac: MacAddr,
    key: &ClientKey,
    r: Reset,
) {
    let client = key.client;
    f.len = ETH + IP + tcp::HEADER_LEN;
    let b = f.data_mut();
    emit_answer_headers(id, b, mac, client, protocol::TCP, tcp::HEADER_LEN);
    tcp::Repr {
        src_port: key.published,
        dst_port: key.client_port,
        seq: r.seq,
        ack: r.ack,
        flags: r.flags,
        window: 0,
        payload_len: 0,
    }
    .emit(
        &mut tcp::Packet::new_unchecked(&mut b[ETH + IP..]),
        id.node_addr,
        client,
    );
}

/// Turns a client's TCP segment into a reset from the published port, in
/// place (RFC 9293 section 3.10.7.1), for a connection whose task is gone.
pub(super) fn send_reset<const V6: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    reason: DropReason,
    c6: &[u8; 16],
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let d = f.data();
    let ip = ipv4::Packet::new_unchecked(&d[ETH..]);
    let client = ip.src_addr();
    let t = tcp::Packet::new_unchecked(ip.payload());
    let (sport, dport, flags, seq, ack) = (
        t.src_port(),
        t.dst_port(),
        t.flags(),
        t.seq_number(),
        t.ack_number(),
    );
    // Never answer a reset; and answer at most `GENERATED_PER_TICK` per
    // 100 ms, so that a flood of stray segments cannot make meshgate a
    // reflector.
    if flags & tcp::flags::RST != 0 || !st.generated.take(st.now) {
        return Err(reason);
    }
    // Back to the neighbour that sent the segment (see `frag_needed`).
    if f.data().len() < ETH {
        return Err(reason);
    }
    let mac = get_mac(f.data(), eth_f::SRC);
    let seg_len = t.payload().len() as u32
        + u32::from(flags & tcp::flags::SYN != 0)
        + u32::from(flags & tcp::flags::FIN != 0);
    let reset = if flags & tcp::flags::ACK != 0 {
        Reset {
            seq: ack,
            ack: 0,
            flags: tcp::flags::RST,
        }
    } else {
        Reset {
            seq: 0,
            ack: seq.wrapping_add(seg_len),
            flags: tcp::flags::RST | tcp::flags::ACK,
        }
    };
    let key = ClientKey {
        client,
        client_port: sport,
        published: dport,
        protocol: protocol::TCP,
        v6: false,
    };
    emit_reset(id, f, mac, &key, reset);
    if V6 {
        // The client's segment was translated from IPv6: so is the reset.
        to_ipv6::<false>(id, f, c6, Transport::Patched).map_err(|_| reason)?;
    }
    st.events.resets_sent += 1;
    st.drops.inc(reason);
    Ok(Verdict::Transmit)
}
