//! Fragments: datagrams larger than a link, both ways, and packets that
//! must be split to fit the overlay.
//!
//! A client's datagram in fragments goes to one task with one translation,
//! as Swarm's conntrack gives it after reassembly, without reassembling:
//! its first fragment carries the ports and goes through [`forward`] like
//! any packet (its transport checksum, which covers the whole datagram, is
//! only updated), and enters the datagram in the worker's
//! [`crate::dataplane::fragments`] table with its flow's key; later
//! fragments find the flow there and take its address translation
//! ([`nat_addrs`]). A first fragment handed to another worker leaves a
//! note to send its later ones after it (a NIC hashes every fragment of a
//! datagram by its addresses alone, so they reach one queue). A task's
//! answer in fragments comes back the same way through the reply path.
//!
//! IPv6 clients' fragments (a fragment header, RFC 8200 4.5) become IPv4
//! fragments with the low 16 bits of their identification (RFC 7915
//! 5.1.1), and the answers' IPv4 fragments become IPv6 fragments again.
//!
//! The overlay is 50 bytes narrower than the links: a fragment of a full
//! 1500-byte link (or a datagram without DF above the overlay's MTU) is
//! split in two fragments of the same datagram (RFC 791 3.2), as the
//! kernel splits what its conntrack reassembled for Swarm. The second
//! frame is written behind the first in the same buffer
//! ([`Verdict::Split`]); the worker copies it out.
//!
//! Refused, and counted: a later fragment whose first has not passed
//! (`fragment_no_first`), fragments RFC 1858 warns of
//! (`fragment_malformed`), fragments of anything but TCP and UDP or of
//! VXLAN itself (`ip_fragment`).

use super::client6::to_ipv6;
use super::forward::{forward, to_task};
use super::nat::{Rewrite, nat_addrs};
use super::parse::{Ip4, L4, parse_l4, parse_l4_of};
use super::reply::{ReplyTo, client_mac, deliver, reply_peer, translate_reply};
use super::track::{flow_task, request_resolution};
use super::{ETH, FrameBuf, INNER, INNER_IP, IP, State, VX_UDP, Verdict};
use crate::dataplane::counters::DropReason;
use crate::dataplane::flow::ClientKey;
use crate::dataplane::fragments::{Dir, FragKey, Inserted, Route};
use crate::dataplane::tables::{Identity, L4Checksum, Snapshot, TaskEntry};
use crate::dataplane::xlat::{self, Transport};
use crate::wire::ethernet::ethertype;
use crate::wire::ethernet::field as eth_f;
use crate::wire::ipv4::field as ip_f;
use crate::wire::ipv4::{self, protocol};
use crate::wire::ipv6::{self, fragment as fh};
use crate::wire::udp::field as udp_f;
use crate::wire::{MacAddr, at, checksum, get_addr, get16, set16};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Enters the datagram whose first fragment is being forwarded (if the
/// packet is one) with where its later fragments go; whether it was one.
pub(super) fn enter(st: &mut State, route: Route) -> bool {
    let Some(key) = st.first_fragment.take() else {
        return false;
    };
    if st.frags.insert(key, route, st.now) == Inserted::Evicted {
        st.events.fragments_evicted += 1;
    }
    true
}

/// The transport header of a first fragment (`l4` is what the fragment
/// holds of the datagram).
pub(super) fn parse_first(proto: u8, l4: &[u8]) -> Result<L4, DropReason> {
    parse_l4_of::<true>(proto, l4)
}

/// RFC 1858: a TCP fragment at offset 8 bytes would overwrite the flags
/// of a header already let through.
fn overlaps_tcp_header(proto: u8, offset_bytes: usize) -> bool {
    proto == protocol::TCP && offset_bytes == 8
}

/// An IPv4 client's fragment to the node (`classify` found the header
/// sound but for being a fragment).
#[cold]
#[inline(never)]
pub(super) fn fragment4(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let d = f.data();
    let Some(iph) = d.get(ETH..).and_then(|x| x.first_chunk::<IP>()) else {
        return Err(DropReason::Truncated);
    };
    let total = usize::from(get16(iph, ip_f::LENGTH));
    if iph[ip_f::DST] != id.node_addr.octets() {
        return Err(DropReason::NotForUs);
    }
    let proto = iph[ip_f::PROTOCOL];
    if proto != protocol::TCP && proto != protocol::UDP {
        return Err(DropReason::IpFragment);
    }
    let flg = get16(iph, ip_f::FLG_OFF);
    let offset = usize::from(flg & ipv4::OFFSET_MASK) * 8;
    let key = FragKey {
        src: u32::from(get_addr(iph, ip_f::SRC)),
        dst: u32::from(id.node_addr),
        id: u32::from(get16(iph, ip_f::IDENT)),
        protocol: proto,
        dir: Dir::Client4,
    };
    let ip = Ip4::of(iph);
    f.len = ETH + total;
    if offset != 0 {
        if overlaps_tcp_header(proto, offset) {
            return Err(DropReason::FragmentMalformed);
        }
        return later::<false>(snap, st, f, key, &[0; 16], total);
    }
    let l4 = parse_first(proto, &f.data()[ETH + IP..])?;
    if proto == protocol::UDP && l4.dport == id.vxlan_port {
        // VXLAN fragmented on its way: no task's node sends that.
        return Err(DropReason::IpFragment);
    }
    first(snap, st, f, key, |snap, st, f| {
        forward::<false, true>(snap, st, f, ip, l4, &[0; 16])
    })
}

/// A frame the pipeline found `too_big`: an IPv4 client's packet above
/// the overlay's MTU without DF goes on through `forward`'s cold
/// instance, which splits it (it is read again from the frame here, out
/// of the hot path's way); anything else (DF set, an IPv6 client's
/// packet) stays `too_big`.
#[cold]
#[inline(never)]
pub(super) fn oversized(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
) -> Result<Verdict, DropReason> {
    let d = f.data();
    let Some(h) = d.first_chunk::<{ ETH + IP }>() else {
        return Err(DropReason::TooBig);
    };
    let iph = &h[ETH..];
    let df = get16(iph, ip_f::FLG_OFF) & ipv4::FLAG_DF != 0;
    if get16(h, eth_f::ETHERTYPE) != ethertype::IPV4 || df {
        return Err(DropReason::TooBig);
    }
    let Some(iph) = iph.first_chunk::<IP>() else {
        return Err(DropReason::TooBig);
    };
    let ip = Ip4::of(iph);
    let l4 = parse_l4(ip.proto, &d[ETH + IP..])?;
    forward::<false, true>(snap, st, f, ip, l4, &[0; 16])
}

/// An IPv6 client's fragment to `node6` (`forward6` found a fragment
/// header right after the fixed header): made an IPv4 fragment from the
/// client's digest, then on as [`fragment4`]'s.
#[cold]
#[inline(never)]
pub(super) fn fragment6(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    node6: Ipv6Addr,
) -> Result<Verdict, DropReason> {
    const HEADERS: usize = ipv6::HEADER_LEN + fh::HEADER_LEN;
    let id = &snap.identity;
    let d = f.data();
    let Some(h) = d.get(ETH..).and_then(|x| x.first_chunk::<HEADERS>()) else {
        return Err(DropReason::Truncated);
    };
    if h[ipv6::field::NEXT_HEADER] != ipv6::next_header::FRAGMENT {
        return Err(DropReason::Ipv6ExtensionHeader);
    }
    if h[ipv6::field::DST] != node6.octets() {
        return Err(DropReason::NotForUs);
    }
    let len = ipv6::HEADER_LEN + usize::from(get16(h, ipv6::field::PAYLOAD_LEN));
    if len < HEADERS {
        return Err(DropReason::IpMalformed);
    }
    if ETH + len > d.len() {
        return Err(DropReason::Truncated);
    }
    let fr = &h[ipv6::HEADER_LEN..];
    let proto = fr[fh::NEXT_HEADER];
    if proto != protocol::TCP && proto != protocol::UDP {
        return Err(if ipv6::next_header::is_extension(proto) {
            DropReason::Ipv6ExtensionHeader
        } else {
            DropReason::UnsupportedProtocol
        });
    }
    let offset = usize::from(get16(fr, fh::OFFSET_M) & fh::OFFSET_MASK);
    let mut c6 = [0u8; 16];
    c6.copy_from_slice(&h[ipv6::field::SRC]);
    let digest = st.flows.digest6(&c6);
    let key = FragKey {
        src: u32::from(digest),
        dst: 0,
        id: u32::from_be_bytes([fr[4], fr[5], fr[6], fr[7]]),
        protocol: proto,
        dir: Dir::Client6,
    };
    f.len = ETH + len;
    if offset == 0 {
        let l4 = parse_first(proto, &f.data()[ETH + HEADERS..])?;
        snap.ports
            .get(proto, l4.dport)
            .ok_or(DropReason::NoService)?;
    } else if overlaps_tcp_header(proto, offset) {
        return Err(DropReason::FragmentMalformed);
    }
    let off = f.off + ETH;
    let Some((v4, total)) =
        xlat::v6_fragment_to_v4(f.buf, (off, len), digest, id.node_addr, Transport::Kept)
    else {
        return Err(DropReason::UnsupportedProtocol);
    };
    // The Ethernet header moves up to the IPv4 packet.
    f.move_ethernet(v4 - ETH, ETH + total, ethertype::IPV4)?;
    if offset != 0 {
        return later::<true>(snap, st, f, key, &c6, total);
    }
    let d = f.data();
    let Some(iph) = d[ETH..].first_chunk::<IP>() else {
        return Err(DropReason::Truncated);
    };
    let ip = Ip4::of(iph);
    let l4 = parse_first(proto, &d[ETH + IP..])?;
    first(snap, st, f, key, |snap, st, f| {
        forward::<true, true>(snap, st, f, ip, l4, &c6)
    })
}

/// Forwards a datagram's first fragment (`key`): `forward`'s cold
/// instance with `State::first_fragment` set for it, and unset after.
fn first(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    key: FragKey,
    forward: impl FnOnce(&Snapshot, &mut State, &mut FrameBuf<'_>) -> Result<Verdict, DropReason>,
) -> Result<Verdict, DropReason> {
    st.first_fragment = Some(key);
    let r = forward(snap, st, f);
    st.first_fragment = None;
    r
}

/// Sends a client's packet that may not fit the overlay to its task
/// (the end of `forward`'s cold instance): a first fragment enters
/// its datagram, whose later fragments will follow `key`'s flow, and its
/// transport checksum, which covers a datagram that is not all here, is
/// updated, never summed anew; either way the packet leaves in two
/// fragments if it must.
#[cold]
#[inline(never)]
pub(super) fn first_to_task<const V6: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    (task, key): (&TaskEntry, ClientKey),
    (ti, hash, total): (u32, u32, usize),
    rw: Rewrite,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let fragment = enter(st, Route::Client(key));
    let mode = if fragment {
        L4Checksum::Incremental
    } else {
        id.l4_checksum
    };
    let v = to_task::<V6, false>(st, f, task, (ti, hash, total), id, (rw, mode))?;
    let v = split(snap, st, f, v)?;
    if fragment {
        st.events.fragments_forwarded += 1;
    }
    Ok(v)
}

/// A client's fragment after its datagram's first (`total` bytes of IPv4,
/// an IPv6 client's translated already): where its first one went.
fn later<const V6: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    key: FragKey,
    c6: &[u8; 16],
    total: usize,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let ck = match st.frags.get(&key, st.now) {
        Some(Route::Client(ck)) => ck,
        Some(Route::Worker(w)) => return Ok(Verdict::Handoff(w)),
        Some(Route::Snat(_)) | None => return Err(DropReason::FragmentNoFirst),
    };
    let found = if V6 {
        let h = st.flows.client_hash(&ck);
        st.flows.lookup_client6_hashed(&ck, c6, h)
    } else {
        st.flows.lookup_client(&ck)
    };
    let slot = found.ok_or(DropReason::FragmentNoFirst)?;
    if f.data().get(ETH + ip_f::TTL).is_none_or(|&t| t <= 1) {
        return Err(DropReason::TtlExpired);
    }
    let (gen32, now) = (st.gen32, st.now);
    let flow = st.flows.get_mut(slot);
    let Some(task) = flow_task(snap, gen32, flow) else {
        return Err(DropReason::TaskGone);
    };
    flow.last_seen = now;
    let (rw, hash, ti) = (
        Rewrite::to_task(flow, id.overlay_addr),
        flow.hash,
        flow.task_index,
    );
    let v = to_task::<V6, true>(st, f, task, (ti, hash, total), id, (rw, id.l4_checksum))?;
    let v = split(snap, st, f, v)?;
    st.events.fragments_forwarded += 1;
    Ok(v)
}

/// A task's fragment: in VXLAN from `vtep` (`VXLAN`), or from the ingress
/// sandbox for a task on this node; the reply path found its header sound
/// but for being a fragment.
#[cold]
#[inline(never)]
pub(super) fn reply_fragment<const VXLAN: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    vtep: Ipv4Addr,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let at_ip = if VXLAN { INNER_IP } else { ETH };
    let d = f.data();
    let Some(iph) = d.get(at_ip..).and_then(|x| x.first_chunk::<IP>()) else {
        return Err(DropReason::Truncated);
    };
    let proto = iph[ip_f::PROTOCOL];
    if proto != protocol::TCP && proto != protocol::UDP {
        return Err(DropReason::IpFragment);
    }
    if VXLAN && !snap.vteps.contains_key(&vtep) {
        return Err(DropReason::UnknownVtep);
    }
    let offset = usize::from(get16(iph, ip_f::FLG_OFF) & ipv4::OFFSET_MASK) * 8;
    let frag = TaskFragment {
        at_ip,
        total: usize::from(get16(iph, ip_f::LENGTH)),
        task: get_addr(iph, ip_f::SRC),
        peer: reply_peer(id, iph),
        ttl: iph[ip_f::TTL],
        key: FragKey {
            src: u32::from(get_addr(iph, ip_f::SRC)),
            dst: u32::from(get_addr(iph, ip_f::DST)),
            id: u32::from(get16(iph, ip_f::IDENT)),
            protocol: proto,
            dir: Dir::Reply,
        },
    };
    if offset == 0 {
        return reply_first::<VXLAN>(snap, st, f, vtep, frag);
    }
    if overlaps_tcp_header(proto, offset) {
        return Err(DropReason::FragmentMalformed);
    }
    reply_later::<VXLAN>(snap, st, f, vtep, frag)
}

/// What [`reply_fragment`] read of a task's fragment: where its IPv4
/// header is in the frame, its length, source (the task), the flow key's
/// peer ([`reply_peer`]), TTL and datagram.
struct TaskFragment {
    at_ip: usize,
    total: usize,
    task: Ipv4Addr,
    peer: Ipv4Addr,
    ttl: u8,
    key: FragKey,
}

/// A task's first fragment: translated as a reply (its checksum only
/// updated), its datagram entered with the flow's reply key, or with the
/// worker it is handed to.
fn reply_first<const VXLAN: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    vtep: Ipv4Addr,
    frag: TaskFragment,
) -> Result<Verdict, DropReason> {
    let TaskFragment {
        at_ip, total, key, ..
    } = frag;
    let Some(p) = f.data_mut().get_mut(at_ip..at_ip + total) else {
        return Err(DropReason::Truncated);
    };
    let l4 = parse_first(key.protocol, &p[IP..])?;
    let sk = crate::dataplane::flow::SnatKey {
        task: frag.task,
        target: l4.sport,
        snat_port: l4.dport,
        protocol: key.protocol,
        peer: frag.peer,
    };
    let mode = L4Checksum::Incremental;
    st.first_fragment = Some(key);
    match translate_reply::<VXLAN, true>(snap, st, p, vtep, mode, frag.peer) {
        Ok(ReplyTo::Worker(w)) => {
            enter(st, Route::Worker(w));
            Ok(Verdict::Handoff(w))
        }
        Ok(ReplyTo::Client {
            mac,
            task_index,
            v6_slot,
        }) => {
            enter(st, Route::Snat(sk));
            let id = &snap.identity;
            deliver_fragment::<VXLAN>(id, st, f, total, (mac, task_index), v6_slot)
        }
        Err(e) => {
            st.first_fragment = None;
            Err(e)
        }
    }
}

/// A task's fragment after its datagram's first: its flow's reverse
/// address translation, or the worker its first went to.
fn reply_later<const VXLAN: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    vtep: Ipv4Addr,
    frag: TaskFragment,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let sk = match st.frags.get(&frag.key, st.now) {
        Some(Route::Snat(sk)) => sk,
        Some(Route::Worker(w)) => return Ok(Verdict::Handoff(w)),
        Some(Route::Client(_)) | None => return Err(DropReason::FragmentNoFirst),
    };
    let slot = st
        .flows
        .lookup_snat(&sk)
        .ok_or(DropReason::FragmentNoFirst)?;
    let (gen32, now) = (st.gen32, st.now);
    let flow = st.flows.get_mut(slot);
    if flow.vtep != vtep {
        return Err(DropReason::ReplyWrongVtep);
    }
    if flow_task(snap, gen32, flow).is_none() {
        return Err(DropReason::TaskGone);
    }
    if frag.ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let Some(mac) = client_mac(snap, flow) else {
        let client = flow.key.client;
        request_resolution(st, snap.neighbours.next_hop(client));
        return Err(DropReason::NoNeighbour);
    };
    flow.last_seen = now;
    let (rw, ti, v6) = (
        Rewrite::to_client(flow, id.node_addr),
        flow.task_index,
        flow.key.v6,
    );
    let (at_ip, total) = (frag.at_ip, frag.total);
    let Some(p) = f.data_mut().get_mut(at_ip..at_ip + total) else {
        return Err(DropReason::Truncated);
    };
    nat_addrs(p, rw);
    deliver_fragment::<VXLAN>(id, st, f, total, (mac, ti), v6.then_some(slot))
}

/// Delivers a task's translated fragment (`total` bytes of IPv4, in
/// VXLAN when `VXLAN`) to its client: IPv4, or an IPv6 fragment for the
/// IPv6 client of the flow in `v6_slot`.
fn deliver_fragment<const VXLAN: bool>(
    id: &Identity,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
    (mac, task_index): (MacAddr, u32),
    v6_slot: Option<u32>,
) -> Result<Verdict, DropReason> {
    if VXLAN {
        f.off += INNER;
    }
    f.len = ETH + total;
    let v = deliver(id, st, f, mac, task_index)?;
    if let Some(slot) = v6_slot {
        let c6 = *st.flows.client6(slot);
        to_ipv6::<true>(id, f, &c6, Transport::Kept)?;
        st.events.ipv6_replies += 1;
    }
    st.events.fragments_replied += 1;
    Ok(v)
}

/// Splits a translated packet above the overlay's MTU (`v` says where it
/// goes: in VXLAN, or to a task on this node) in two IPv4 fragments of
/// its datagram: the first stays in place, the second is written right
/// behind it ([`Verdict::Split`], [`Verdict::SplitLocal`]). A packet that fits goes as it is; one
/// that would need three fragments (a link far wider than the overlay) or
/// finds no room behind it in its buffer is dropped as `too_big`.
pub(super) fn split(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    v: Verdict,
) -> Result<Verdict, DropReason> {
    let local = match v {
        Verdict::Transmit => false,
        Verdict::Local => true,
        other => return Ok(other),
    };
    let mtu = usize::from(snap.identity.overlay_mtu);
    let head = if local { ETH } else { INNER_IP };
    let Some(iph) = f.data().get(head..).and_then(|x| x.first_chunk::<IP>()) else {
        return Err(DropReason::Truncated);
    };
    let total = usize::from(get16(iph, ip_f::LENGTH));
    if total <= mtu {
        return Ok(v);
    }
    let flg = get16(iph, ip_f::FLG_OFF);
    // The first fragment's data: a multiple of 8 bytes (RFC 791).
    let room = (mtu.saturating_sub(IP)) & !7;
    let payload = total - IP;
    let rest = payload.saturating_sub(room);
    let (first, hdrs) = (f.off, head + IP);
    // The second frame starts where the first's data ends: its data moves
    // up by the headers it gets, a copy of the first's.
    let second = first + hdrs + room;
    let len2 = hdrs + rest;
    if room == 0 || rest > room || second + len2 > f.buf.len() || len2 > 0xffff {
        return Err(DropReason::TooBig);
    }
    f.buf.copy_within(second..second + rest, second + hdrs);
    f.buf.copy_within(first..first + hdrs, second);
    let off8 = flg & ipv4::OFFSET_MASK;
    let (mf, kept) = (flg & ipv4::FLAG_MF, flg & 0x8000);
    fix_headers(
        &mut f.buf[first..first + hdrs],
        local,
        IP + room,
        kept | ipv4::FLAG_MF | off8,
    );
    fix_headers(
        &mut f.buf[second..second + hdrs],
        local,
        IP + rest,
        kept | mf | (off8 + (room / 8) as u16),
    );
    f.len = hdrs + room;
    st.events.fragments_split += 1;
    Ok(if local {
        Verdict::SplitLocal(len2 as u16)
    } else {
        Verdict::Split(len2 as u16)
    })
}

/// Writes a fragment's lengths, flags and offset into its headers `h`
/// (the frame up to the end of the inner IPv4 header): the inner header's
/// and, in VXLAN, the outer IPv4 and UDP ones, checksums summed anew (the
/// outer UDP checksum is 0, as VXLAN's over IPv4 may be: RFC 7348 5).
fn fix_headers(h: &mut [u8], local: bool, inner_total: usize, flg_off: u16) {
    let head = h.len() - IP;
    let ip = &mut h[head..];
    set16(ip, ip_f::LENGTH, inner_total as u16);
    set16(ip, ip_f::FLG_OFF, flg_off);
    set16(ip, ip_f::CHECKSUM, 0);
    let c = checksum::checksum(ip);
    set16(ip, ip_f::CHECKSUM, c);
    if local {
        return;
    }
    let outer_total = (INNER_IP - ETH + inner_total) as u16;
    let outer = &mut h[ETH..ETH + IP];
    set16(outer, ip_f::LENGTH, outer_total);
    set16(outer, ip_f::CHECKSUM, 0);
    let c = checksum::checksum(outer);
    set16(outer, ip_f::CHECKSUM, c);
    set16(h, at(udp_f::LENGTH, VX_UDP), outer_total - IP as u16);
    set16(h, at(udp_f::CHECKSUM, VX_UDP), 0);
}
