//! Replies: a task's packet, in VXLAN from its node or from the ingress
//! sandbox for a task on this node, back to its flow's client.

use super::answer::{arp_reply, icmp_error};
use super::client6::deliver6;
use super::fragment::{parse_first, reply_fragment};
use super::nat::{Rewrite, nat};
use super::parse::{L4, check_ipv4, parse_l4, tcp_flags_valid, tcp_seq_end};
use super::track::{
    end_flow, flow_task, move_shared, request_resolution, seq_after, tcp_transition,
};
use super::{ETH, FrameBuf, INNER, INNER_IP, IP, State, VX_HDR, VX_UDP, Verdict};
use crate::dataplane::counters::{DropReason, EventCounters};
use crate::dataplane::desc::OutlierDetection;
use crate::dataplane::flow::{Flow, FlowState, FlowTable, SnatKey};
use crate::dataplane::health::{self, Failure};
use crate::dataplane::tables::{Identity, L4Checksum, Snapshot, TaskEntry};
use crate::wire::ethernet::ethertype;
use crate::wire::ethernet::field as eth_f;
use crate::wire::ipv4::field as ip_f;
use crate::wire::ipv4::protocol;
use crate::wire::tcp::field as tcp_f;
use crate::wire::udp::field as udp_f;
use crate::wire::{
    MacAddr, at, checksum, get_addr, get16, get16_ne, get24, get32, set16_ne, tcp, vxlan,
};
use std::net::Ipv4Addr;

pub(super) fn reply(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let d = f.data();
    // The outer UDP header was checked by `classify`: the datagram ends at
    // `end`, within the frame. VXLAN and the inner Ethernet must fit in it.
    let Some(h) = d.first_chunk::<INNER_IP>() else {
        return Err(DropReason::Truncated);
    };
    let end = VX_UDP + usize::from(get16(h, at(udp_f::LENGTH, VX_UDP)));
    if end < INNER_IP {
        return Err(DropReason::Truncated);
    }
    if h[VX_HDR + vxlan::field::FLAGS] != vxlan::FLAG_I {
        return Err(DropReason::VxlanBadFlags);
    }
    if get24(h, at(vxlan::field::VNI, VX_HDR)) != id.vni {
        return Err(DropReason::VxlanWrongVni);
    }
    let vtep = get_addr(&h[ETH..], ip_f::SRC);
    let r = reply_from(snap, st, f, vtep, end);
    // Only a node that runs a task (a VTEP of the snapshot's) is listened
    // to. A reply translated for a client has passed that test already
    // (in `translate_reply`, mostly without a table lookup, which saves a
    // reply instructions); every other outcome is tested here, so that
    // a frame from an unknown node is counted as such whatever else is
    // wrong with it, as when the test came first.
    match r {
        Ok(Verdict::Transmit) => r,
        _ if snap.vteps.contains_key(&vtep) => r,
        _ => Err(DropReason::UnknownVtep),
    }
}

/// [`reply`] from the VXLAN header on: `vtep` is the outer source, not
/// yet checked against the snapshot's VTEPs unless the frame is
/// transmitted; `end` is where the outer UDP datagram ends.
#[inline(always)]
pub(super) fn reply_from(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    vtep: Ipv4Addr,
    end: usize,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let d = f.data();
    let Some(h) = d.first_chunk::<INNER_IP>() else {
        return Err(DropReason::Truncated);
    };
    match get16(h, at(eth_f::ETHERTYPE, INNER)) {
        ethertype::IPV4 => {}
        ethertype::ARP => {
            let Some(&vtep_mac) = snap.vteps.get(&vtep) else {
                return Err(DropReason::UnknownVtep);
            };
            return arp_reply(snap, st, f, vtep, vtep_mac);
        }
        ethertype::VLAN | ethertype::QINQ => return Err(DropReason::Vlan),
        _ => return Err(DropReason::NotIpv4),
    }
    if h[at(eth_f::DST, INNER)] != id.overlay_mac.0 {
        return Err(DropReason::InnerNotForUs);
    }
    let Some(iph) = d[INNER_IP..end].first_chunk::<IP>() else {
        return Err(DropReason::Truncated);
    };
    let total = match check_ipv4(iph, end - INNER_IP) {
        Ok(t) => t,
        Err(DropReason::IpFragment) => return reply_fragment::<true>(snap, st, f, vtep),
        Err(e) => return Err(e),
    };
    // To the sandbox, or (sent to the sandbox's MAC) to a client whose
    // address the flow keeps.
    let peer = reply_peer(id, iph);
    if iph[ip_f::PROTOCOL] == protocol::ICMP {
        if !snap.vteps.contains_key(&vtep) {
            return Err(DropReason::UnknownVtep);
        }
        let ttl = iph[ip_f::TTL];
        return icmp_error(snap, st, f, total, vtep, ttl, peer);
    }
    let p = &mut f.data_mut()[INNER_IP..INNER_IP + total];
    match translate_reply::<true, false>(snap, st, p, vtep, id.l4_checksum, peer)? {
        ReplyTo::Worker(w) => Ok(Verdict::Handoff(w)),
        ReplyTo::Client {
            mac,
            task_index,
            v6_slot: None,
        } => to_client(id, st, f, total, mac, task_index),
        ReplyTo::Client {
            mac,
            task_index,
            v6_slot: Some(slot),
        } => {
            f.off += INNER;
            f.len = ETH + total;
            deliver6(id, st, f, mac, task_index, slot)
        }
    }
}

/// The peer of a reply-path key for a task's packet with IPv4 header
/// `iph`: none for a packet to the sandbox, else its destination, which
/// only a flow that keeps its client's address can match.
#[inline(always)]
pub(super) fn reply_peer(id: &Identity, iph: &[u8; IP]) -> Ipv4Addr {
    let dst = get_addr(iph, ip_f::DST);
    if dst == id.overlay_addr {
        Ipv4Addr::UNSPECIFIED
    } else {
        dst
    }
}

/// Where a task's reply goes once its flow is known.
pub(super) enum ReplyTo {
    /// The worker that owns the flow.
    Worker(u16),
    /// The client, translated: its next hop's MAC and the task's index;
    /// for an IPv6 client, the flow's slot (its address is there), the
    /// packet to be made IPv6 once addressed.
    Client {
        mac: MacAddr,
        task_index: u32,
        v6_slot: Option<u32>,
    },
}

/// Finds the flow of a task's reply `p` (an IPv4 packet without options,
/// exactly `total` bytes, checked) that came from `vtep` (this node for a
/// local task) and reverses both translations in place; `l4_checksum` is
/// the mode for the interface it came in by, `peer` its key's peer
/// ([`reply_peer`]). `VXLAN`: it came in VXLAN, and `vtep` must be one
/// of the snapshot's VTEPs ([`reply`]), which is settled here before the
/// flow changes.
///
/// `FRAGMENT`: `p` is a datagram's first fragment, whose transport
/// header's length may run past it (`l4_checksum` is then incremental).
#[inline(always)]
pub(super) fn translate_reply<const VXLAN: bool, const FRAGMENT: bool>(
    snap: &Snapshot,
    st: &mut State,
    p: &mut [u8],
    vtep: Ipv4Addr,
    l4_checksum: L4Checksum,
    peer: Ipv4Addr,
) -> Result<ReplyTo, DropReason> {
    let id = &snap.identity;
    let (task_addr, proto, ttl, l4) = reply_headers::<FRAGMENT>(p)?;
    let (sport, dport, tcp_flags) = (l4.sport, l4.dport, l4.flags);
    let owner = FlowTable::owner(dport, st.workers);
    if owner != st.worker {
        return Ok(ReplyTo::Worker(owner));
    }
    let key = SnatKey {
        task: task_addr,
        target: sport,
        snat_port: dport,
        protocol: proto,
        peer,
    };
    let Some(slot) = st.flows.lookup_snat(&key) else {
        return Err(if peer.is_unspecified() {
            DropReason::ReplyNoFlow
        } else {
            DropReason::InnerNotForUs
        });
    };
    let gen32 = st.gen32;
    let now = st.now;
    let flow = st.flows.get_mut(slot);
    if flow.vtep != vtep {
        return Err(DropReason::ReplyWrongVtep);
    }
    let task = flow_task(snap, gen32, flow);
    // The snapshot's VTEPs are the nodes of its tasks on other nodes: a
    // reply from the node of its flow's (remote) task comes from one, and
    // only anything else needs the table.
    if VXLAN && !task.is_some_and(|t| t.node == vtep && !t.local) && !snap.vteps.contains_key(&vtep)
    {
        return Err(DropReason::UnknownVtep);
    }
    let Some(task) = task else {
        end_flow(snap, st, slot);
        return Err(DropReason::TaskGone);
    };
    if tcp_flags.is_some_and(|fl| fl & tcp::flags::RST != 0)
        && flow.state == FlowState::SynSent
        && hold_refusal(snap, &mut st.events, flow, &p[IP..], now)
    {
        return Err(DropReason::TaskRefused);
    }
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let client = flow.key.client;
    let Some(client_mac) = client_mac(snap, flow) else {
        answered_unseen(flow, task, tcp_flags, &p[IP..], now);
        request_resolution(st, snap.neighbours.next_hop(client));
        return Err(DropReason::NoNeighbour);
    };
    flow.last_seen = now;
    if let Some(fl) = tcp_flags {
        track_reply(flow, task, fl, &p[IP..], now);
    }
    let (rw, ti, v6) = (
        Rewrite::to_client(flow, id.node_addr),
        flow.task_index,
        flow.key.v6,
    );
    if nat(p, rw, l4_checksum) && v6 {
        summed_for_ipv6(id, p, client, st.flows.client6(slot));
    }
    Ok(ReplyTo::Client {
        mac: client_mac,
        task_index: ti,
        v6_slot: v6.then_some(slot),
    })
}

/// A reply to an IPv6 client (`client` its digest, `c6` its address)
/// whose transport checksum the interface's mode had summed anew over the
/// IPv4 pseudo-header (`nat` returned true): patched here for the IPv6
/// pseudo-header, so that the translation keeps it, as it keeps every
/// other reply's, which the flow's deltas patched for the change of
/// pseudo-header already (`nat::deltas_of`). Out of line: only the
/// `CompletePartial` and `Full` modes get here.
#[cold]
#[inline(never)]
fn summed_for_ipv6(id: &Identity, p: &mut [u8], client: Ipv4Addr, c6: &[u8; 16]) {
    let node6 = id.node_addr6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
    // The reverse of the forward change; a pseudo-header's sum does not
    // depend on which address is the source.
    let d = !checksum::v6_to_v4_delta_ne((c6, &node6.octets()), (client, id.node_addr));
    let (tcp, at) = match p[ip_f::PROTOCOL] {
        protocol::TCP => (true, IP + tcp_f::CHECKSUM.start),
        _ => (false, IP + udp_f::CHECKSUM.start),
    };
    let Some(c) = p.get_mut(at..at + 2) else {
        return;
    };
    let old = get16_ne(c, 0..2);
    let new = if tcp {
        checksum::apply_folded(old, d)
    } else {
        checksum::apply_folded_udp(old, d)
    };
    set16_ne(c, 0..2, new);
}

/// A task's packet's source (the task), protocol and TTL, and its
/// transport header, with TCP flags a real stack sends.
#[inline(always)]
fn reply_headers<const FRAGMENT: bool>(p: &[u8]) -> Result<(Ipv4Addr, u8, u8, L4), DropReason> {
    let Some(iph) = p.first_chunk::<IP>() else {
        return Err(DropReason::Truncated);
    };
    let proto = iph[ip_f::PROTOCOL];
    let ttl = iph[ip_f::TTL];
    let task_addr = get_addr(iph, ip_f::SRC);
    let l4 = if FRAGMENT {
        parse_first(proto, &p[IP..])?
    } else {
        parse_l4(proto, &p[IP..])?
    };
    if let Some(fl) = l4.flags {
        if !tcp_flags_valid(fl) {
            return Err(DropReason::TcpBadFlags);
        }
    }
    Ok((task_addr, proto, ttl, l4))
}

/// A task's TCP segment `l4` (flags `fl`) moves its flow on: the task's
/// next sequence number, and the flow's state, with the task's shared
/// counts of active flows and, for its SYN-ACK, its health.
#[inline(always)]
fn track_reply(flow: &mut Flow, task: &TaskEntry, fl: u8, l4: &[u8], now: u32) {
    let seq_end = tcp_seq_end(l4);
    if flow.state == FlowState::SynSent || seq_after(seq_end, flow.task_next) {
        flow.task_next = seq_end;
    }
    if let Some(to_active) = tcp_transition(flow, fl, true) {
        move_shared(task, to_active);
        if to_active {
            // Its SYN-ACK: the task serves.
            task.shared.health.success(now);
        }
    }
}

/// A task's SYN-ACK held because the client's next hop is not resolved
/// yet: it still says that the task serves (its failures are forgiven),
/// and its sequence number in the flow says that the SYN was answered, so
/// that the client's retransmitted SYN stays with this task
/// (`forward::syn_ends`). The flow itself stays in SYN-SENT: a spoofed
/// client, whose next hop never resolves, must not make established
/// flows, which eviction spares.
#[cold]
#[inline(never)]
fn answered_unseen(flow: &mut Flow, task: &TaskEntry, flags: Option<u8>, seg: &[u8], now: u32) {
    let syn_ack = tcp::flags::SYN | tcp::flags::ACK;
    if flow.state == FlowState::SynSent && flags.is_some_and(|f| f & syn_ack == syn_ack) {
        flow.task_next = tcp_seq_end(seg);
        task.shared.health.success(now);
    }
}

/// A task's reset (the TCP segment `seg`) while its flow, relinked to the
/// current snapshot, is in SYN-SENT. When it refuses the flow's SYN (it
/// acknowledges exactly that SYN: nothing listens), it records the
/// refusal, and holds the reset back when the service checks its tasks'
/// health, this connection had none held yet and another task is
/// healthy. The flow closes, so that the client's retransmitted SYN is
/// scheduled anew, away from this task (`super::forward::syn_ends`). A
/// reset that acknowledges something else (a SYN with another sequence
/// number on the same ports, as a spoofed flood repeats them) says
/// nothing of the task's health and passes.
#[cold]
#[inline(never)]
fn hold_refusal(
    snap: &Snapshot,
    events: &mut EventCounters,
    flow: &mut Flow,
    seg: &[u8],
    now: u32,
) -> bool {
    let ti = flow.task_index;
    let service = snap.tasks[ti as usize].service;
    if snap.services[service as usize].outlier_detection != OutlierDetection::On {
        return false;
    }
    let acks_the_syn = seg.get(tcp::field::ACK).map(|a| get32(a, 0..4)) == Some(flow.client_next);
    if !acks_the_syn {
        return false;
    }
    events.count_health(health::record_failure(snap, ti, Failure::Refused, now));
    if flow.held_reset || !health::healthy_other(snap, ti, now) {
        return false;
    }
    flow.held_reset = true;
    // SYN-SENT and CLOSED are both inactive: the shared counts stay.
    flow.state = FlowState::Closed;
    true
}

/// A frame from the ingress sandbox's interface: a reply of a task on
/// this node, plain Ethernet and IPv4 to the sandbox (the capture program
/// passes everything else to the sandbox's kernel).
pub(super) fn local_reply(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let d = f.data();
    let Some(h) = d.first_chunk::<{ ETH + IP }>() else {
        return Err(DropReason::Truncated);
    };
    match get16(h, eth_f::ETHERTYPE) {
        ethertype::IPV4 => {}
        ethertype::VLAN | ethertype::QINQ => return Err(DropReason::Vlan),
        ethertype::ARP => return Err(DropReason::Arp),
        _ => return Err(DropReason::NotIpv4),
    }
    if h[eth_f::DST] != id.overlay_mac.0 {
        return Err(DropReason::InnerNotForUs);
    }
    let Some(iph) = h[ETH..].first_chunk::<IP>() else {
        return Err(DropReason::Truncated);
    };
    let total = match check_ipv4(iph, d.len() - ETH) {
        Ok(t) => t,
        Err(DropReason::IpFragment) => {
            return reply_fragment::<false>(snap, st, f, id.node_addr);
        }
        Err(e) => return Err(e),
    };
    let peer = reply_peer(id, iph);
    if iph[ip_f::PROTOCOL] != protocol::TCP && iph[ip_f::PROTOCOL] != protocol::UDP {
        return Err(DropReason::UnsupportedProtocol);
    }
    f.len = ETH + total;
    let p = &mut f.data_mut()[ETH..ETH + total];
    match translate_reply::<false, false>(snap, st, p, id.node_addr, id.sandbox_l4_checksum, peer)?
    {
        ReplyTo::Worker(w) => Ok(Verdict::Handoff(w)),
        ReplyTo::Client {
            mac,
            task_index,
            v6_slot: None,
        } => deliver(id, st, f, mac, task_index),
        ReplyTo::Client {
            mac,
            task_index,
            v6_slot: Some(slot),
        } => deliver6(id, st, f, mac, task_index, slot),
    }
}

/// The client's MAC address for a flow's replies: resolved once, then
/// kept in the flow.
// Inlined, like `to_client`: on the reply path the calls cost more than
// the bodies (bench/README.md, "Choices the counts made").
#[inline(always)]
pub(super) fn client_mac(snap: &Snapshot, flow: &mut Flow) -> Option<MacAddr> {
    if !flow.client_mac_valid {
        flow.client_mac = snap.neighbours.mac_for(flow.key.client)?.0;
        flow.client_mac_valid = true;
    }
    Some(MacAddr(flow.client_mac))
}

/// Decapsulates a translated packet from a task (`total` bytes of inner
/// IPv4 at `INNER_IP`): its inner Ethernet header becomes the frame's,
/// which [`deliver`] addresses to the client.
// Inlined: on the reply path a call costs more than its body.
#[inline(always)]
pub(super) fn to_client(
    id: &crate::dataplane::tables::Identity,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
    client_mac: MacAddr,
    task_index: u32,
) -> Result<Verdict, DropReason> {
    f.off += INNER;
    f.len = ETH + total;
    deliver(id, st, f, client_mac, task_index)
}

/// Addresses a translated reply (the frame is exactly Ethernet and the
/// packet) from the node to the client, and the task's counters take it.
#[inline(always)]
pub(super) fn deliver(
    id: &crate::dataplane::tables::Identity,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    client_mac: MacAddr,
    task_index: u32,
) -> Result<Verdict, DropReason> {
    let len = f.len;
    let Some(eth) = f.data_mut().first_chunk_mut::<ETH>() else {
        return Err(DropReason::Truncated);
    };
    eth[eth_f::DST].copy_from_slice(&client_mac.0);
    eth[eth_f::SRC].copy_from_slice(&id.node_mac.0);
    let c = &mut st.tasks[task_index as usize];
    c.packets_out += 1;
    c.bytes_out += len as u64;
    st.events.replies += 1;
    Ok(Verdict::Transmit)
}
