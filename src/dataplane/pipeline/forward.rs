//! Forward: a client's packet to a published port, from its flow (known,
//! or new: scheduled, SNAT port, checksum deltas) to the task, in VXLAN from
//! the task's outer template or, for a task on this node, as it is.

use super::answer::{frag_needed, port_unreachable, send_reset};
use super::fragment;
use super::nat::{Rewrite, deltas_of, nat, nat_addrs};
use super::parse::{Ip4, L4, tcp_flags_valid, tcp_seq_end};
use super::track::{
    end_flow, flow_task, move_shared, release_shared, request_resolution, tcp_transition,
};
use super::{ETH, FrameBuf, HEADROOM, IP, Retry, State, VX_UDP, Verdict};
use crate::dataplane::counters::{DropReason, EventCounters};
use crate::dataplane::desc::{ClientIp, OutlierDetection};
use crate::dataplane::flow::{ClientKey, Flow, FlowState, FlowTable, InsertError};
use crate::dataplane::fragments::Route;
use crate::dataplane::health::{self, Failure};
use crate::dataplane::tables::{
    Identity, L4Checksum, OUTER_TEMPLATE_LEN, OuterTemplate, PortEntry, Snapshot, TaskEntry,
};
use crate::wire::ethernet::field as eth_f;
use crate::wire::ipv4::field as ip_f;
use crate::wire::ipv4::protocol;
use crate::wire::udp::field as udp_f;
use crate::wire::{at, checksum, get_mac, get16_ne, set16, set16_ne, tcp, udp, vxlan};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

/// Hash of a flow's client side: unseeded and stable, so that Maglev agrees
/// across ingress nodes and the VXLAN source port is stable per flow.
#[inline]
pub fn flow_hash(k: &ClientKey) -> u32 {
    let mut x = (u64::from(u32::from(k.client)) << 32)
        | (u64::from(k.client_port) << 16)
        | u64::from(k.published);
    x ^= u64::from(k.protocol) << 56;
    // splitmix64 finalizer.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) as u32
}

/// [`flow_hash`] of an IPv6 client's flow: its key's `client` is a keyed,
/// per-table digest, so the hash folds the address itself instead (still
/// unseeded: Maglev agrees across nodes for IPv6 clients too).
#[inline]
pub fn flow_hash6(k: &ClientKey, client6: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_be_bytes(client6[i..i + 4].try_into().expect("4 bytes"));
    let folded = w(0) ^ w(4).rotate_left(8) ^ w(8).rotate_left(16) ^ w(12).rotate_left(24);
    flow_hash(&ClientKey {
        client: Ipv4Addr::from(folded),
        v6: true,
        ..*k
    }) ^ 0x6666_0006
}

/// The VXLAN source port for a flow hash: 49152-65535 (RFC 7348 section 5).
#[inline]
pub fn vxlan_source_port(hash: u32) -> u16 {
    0xc000 | (hash as u16 & 0x3fff)
}

/// The IPv6 client argument of the IPv4 instances of the generic steps.
pub(super) const NO_CLIENT6: [u8; 16] = [0; 16];

/// A client's packet to a published port (`f` is exactly Ethernet and the
/// packet, `l4` its parsed transport header): finds or makes its flow,
/// translates it and sends it to the flow's task, in VXLAN or, for a task
/// on this node, as it is.
///
/// `SPLIT` is the cold instance for a packet that may not fit the overlay
/// as it is: a datagram's first fragment (`State::first_fragment` names
/// it) or a packet above the overlay's MTU without DF;
/// [`fragment::first_to_task`] sends it.
pub(super) fn forward<const V6: bool, const SPLIT: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    ip: Ip4,
    l4: L4,
    c6: &[u8; 16],
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let total = f.len - ETH;
    let Ip4 { client, proto, .. } = ip;
    let port = admit(snap, ip, l4)?;
    if total > usize::from(id.overlay_mtu) && !SPLIT {
        return frag_needed(snap, st, f, total);
    }
    let key = ClientKey {
        client,
        client_port: l4.sport,
        published: l4.dport,
        protocol: proto,
        v6: V6,
    };
    let is_syn = l4
        .flags
        .is_some_and(|fl| fl & (tcp::flags::SYN | tcp::flags::ACK) == tcp::flags::SYN);
    let key_hash = st.flows.client_hash(&key);
    let (rw, hash, ti, task) = match known_flow::<V6>(snap, st, &key, key_hash, is_syn, port, c6) {
        Known::Flow(slot, task) => {
            let now = st.now;
            let flow = st.flows.get_mut(slot);
            flow.last_seen = now;
            if let Some(fl) = l4.flags {
                if let Some(to_active) = tcp_transition(flow, fl, false) {
                    move_shared(task, to_active);
                }
            }
            (
                Rewrite::to_task(flow, id.overlay_addr),
                flow.hash,
                flow.task_index,
                task,
            )
        }
        Known::Elsewhere(w) => {
            if SPLIT {
                fragment::enter(st, Route::Worker(w));
            }
            return hand_to(w);
        }
        // A SYN again (a retransmission to a task that died) starts anew;
        // any other segment learns that its connection is gone.
        Known::TaskGone if proto == protocol::TCP && !is_syn => {
            return send_reset::<V6>(snap, st, f, DropReason::TaskGone, c6);
        }
        // A datagram of a gone task's flow starts a new flow.
        Known::New | Known::TaskGone => {
            if l4.flags.is_some() && !is_syn {
                // As the kernel answers a segment of a connection it does
                // not know: a reset, so that clients of a restarted or
                // evicted flow learn it at once.
                return send_reset::<V6>(snap, st, f, DropReason::TcpNoFlow, c6);
            }
            // A new flow's first packet: `new_flow` stamped it seen, and
            // the state it begins in is the one its first packet gives.
            match start_flow::<V6>(snap, st, f, (key, key_hash), port, l4, c6) {
                Ok(v) => v,
                Err(DropReason::NoTask) => return refuse::<V6>(snap, st, f, port, total, c6),
                Err(e) => return Err(e),
            }
        }
    };
    if SPLIT {
        return fragment::first_to_task::<V6>(snap, st, f, (task, key), (ti, hash, total), rw);
    }
    if task.local {
        to_local(f, rw, task, id)?;
        count_in(st, ti, ETH + total);
        if V6 {
            st.events.ipv6_forwarded += 1;
        }
        return Ok(Verdict::Local);
    }
    to_vxlan::<V6, false>(st, f, task, (ti, hash, total), (rw, id.l4_checksum))
}

/// The checks a client's packet passes before its flow is looked up: a
/// published port, TCP flags a real stack sends, a TTL left to forward.
#[inline(always)]
fn admit(snap: &Snapshot, ip: Ip4, l4: L4) -> Result<PortEntry, DropReason> {
    let port = snap
        .ports
        .get(ip.proto, l4.dport)
        .ok_or(DropReason::NoService)?;
    if let Some(fl) = l4.flags {
        if !tcp_flags_valid(fl) {
            return Err(DropReason::TcpBadFlags);
        }
    }
    if ip.ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    Ok(port)
}

/// A new flow for a packet that may start one: its scheduled task, SNAT
/// port and checksum deltas ([`new_flow`]), with what only its first
/// packet tells (an IPv6 client's neighbour, a TCP client's next sequence
/// number).
#[inline(always)]
fn start_flow<'s, const V6: bool>(
    snap: &'s Snapshot,
    st: &mut State,
    f: &FrameBuf<'_>,
    key: (ClientKey, u64),
    port: PortEntry,
    l4: L4,
    c6: &[u8; 16],
) -> Result<(Rewrite, u32, u32, &'s TaskEntry), DropReason> {
    // An IPv6 client's replies go back to the neighbour its packets came
    // from: the kernel's IPv4 neighbour table knows nothing of it.
    let mac6 = if V6 {
        get_mac(f.data(), eth_f::SRC).0
    } else {
        [0; 6]
    };
    let client_next = if l4.flags.is_some() {
        tcp_seq_end(&f.data()[ETH + IP..])
    } else {
        0
    };
    if V6 {
        new_flow6(snap, st, key, port, client_next, c6, mac6)
    } else {
        new_flow::<false>(snap, st, key, port, client_next, c6, mac6)
    }
}

/// [`new_flow`] of an IPv6 client, out of line: inlined, it cost an IPv6
/// client's established segments instructions (bench/README.md, "Choices
/// the counts made").
#[inline(never)]
fn new_flow6<'s>(
    snap: &'s Snapshot,
    st: &mut State,
    key: (ClientKey, u64),
    port: PortEntry,
    client_next: u32,
    c6: &[u8; 16],
    mac6: [u8; 6],
) -> Result<(Rewrite, u32, u32, &'s TaskEntry), DropReason> {
    new_flow::<true>(snap, st, key, port, client_next, c6, mac6)
}

/// Translates a client's packet (by `rw`, its transport checksum in
/// `mode`; `ADDRS_ONLY`: a later fragment, which has no transport header)
/// and sends it to a task on another node: VXLAN from the task's outer
/// template, built in the frame's headroom.
#[inline(always)]
fn to_vxlan<const V6: bool, const ADDRS_ONLY: bool>(
    st: &mut State,
    f: &mut FrameBuf<'_>,
    task: &TaskEntry,
    (ti, hash, total): (u32, u32, usize),
    (rw, mode): (Rewrite, L4Checksum),
) -> Result<Verdict, DropReason> {
    let Some(outer) = &task.outer else {
        request_resolution(st, task.node);
        return Err(DropReason::NoNeighbour);
    };
    // The headroom and the frame as one slice, bounds-checked once (with
    // less headroom than that, `off` wraps past the frame's end: `None`).
    let (off, inner_len) = (f.off.wrapping_sub(HEADROOM), f.len);
    let Some(out) = f.buf.get_mut(off..f.off + inner_len) else {
        return Err(DropReason::NoHeadroom);
    };
    let Some((encap, inner)) = out.split_first_chunk_mut::<{ OUTER_TEMPLATE_LEN }>() else {
        return Err(DropReason::Truncated);
    };
    // DNAT + SNAT of the inner packet.
    if ADDRS_ONLY {
        nat_addrs(inner, rw);
    } else {
        nat(inner, rw, mode);
    }
    encapsulate(encap, outer, hash, inner_len);
    f.off = off;
    f.len = HEADROOM + inner_len;
    count_in(st, ti, ETH + total);
    if V6 {
        st.events.ipv6_forwarded += 1;
    }
    Ok(Verdict::Transmit)
}

/// Translates a client's packet (by `rw`, its transport checksum in
/// `mode`; `ADDRS_ONLY`: a later fragment, which has no transport header)
/// and sends it to its flow's task (`ti`; `hash` picks the outer UDP
/// source port; `total` is its IPv4 length): for a task on this node, as
/// it is ([`to_local`]); else in VXLAN ([`to_vxlan`]). The
/// translation is a type parameter and two values, not a closure: a
/// closure stayed out of line. `forward` does not share it (it has its own
/// `to_local` call and [`to_vxlan`]): sharing it cost each established
/// packet instructions (bench/README.md, "Choices the counts made").
#[inline(always)]
pub(super) fn to_task<const V6: bool, const ADDRS_ONLY: bool>(
    st: &mut State,
    f: &mut FrameBuf<'_>,
    task: &TaskEntry,
    (ti, hash, total): (u32, u32, usize),
    id: &Identity,
    (rw, mode): (Rewrite, L4Checksum),
) -> Result<Verdict, DropReason> {
    if task.local {
        if ADDRS_ONLY {
            nat_addrs(&mut f.data_mut()[ETH..], rw);
        } else {
            nat(&mut f.data_mut()[ETH..], rw, mode);
        }
        local_macs(f, task, id)?;
        count_in(st, ti, ETH + total);
        if V6 {
            st.events.ipv6_forwarded += 1;
        }
        return Ok(Verdict::Local);
    }
    to_vxlan::<V6, ADDRS_ONLY>(st, f, task, (ti, hash, total), (rw, mode))
}

/// A new flow for a service none of whose tasks takes new flows. When
/// none ever will (every task drained: a removed service whose tasks run
/// out their grace period, a stopping last task, no task at all), it is
/// refused, as IPVS refuses one for a service without an available real
/// server: a TCP client gets a reset, an IPv4 UDP client an ICMP port
/// unreachable (an IPv6 one nothing: its datagram is translated already,
/// and counted). When some task will once its node's address resolves,
/// it is dropped: the client's retransmission will find it.
#[cold]
#[inline(never)]
fn refuse<const V6: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    port: PortEntry,
    total: usize,
    c6: &[u8; 16],
) -> Result<Verdict, DropReason> {
    let svc = &snap.services[port.service as usize];
    if svc.tasks.iter().any(|&i| snap.tasks[i as usize].weight > 0) {
        return Err(DropReason::NoTask);
    }
    match f.data().get(ETH + ip_f::PROTOCOL) {
        Some(&protocol::TCP) => send_reset::<V6>(snap, st, f, DropReason::NoTask, c6),
        Some(&protocol::UDP) if !V6 => port_unreachable(snap, st, f, total),
        _ => Err(DropReason::NoTask),
    }
}

/// Translates a client's packet for a task on this node: no VXLAN, the
/// sandbox's interface is on the task's own bridge, and the frame keeps
/// its size and place. Its own `nat` call rather than one shared with the
/// VXLAN path: sharing it (an `Option` of the template chosen first)
/// cost both the established path and new flows instructions
/// (bench/README.md, "Choices the counts made").
#[inline(always)]
pub(super) fn to_local(
    f: &mut FrameBuf<'_>,
    rw: Rewrite,
    task: &TaskEntry,
    id: &Identity,
) -> Result<(), DropReason> {
    nat(&mut f.data_mut()[ETH..], rw, id.l4_checksum);
    local_macs(f, task, id)
}

/// The Ethernet addresses of a translated packet to a task on this node.
#[inline(always)]
pub(super) fn local_macs(
    f: &mut FrameBuf<'_>,
    task: &TaskEntry,
    id: &Identity,
) -> Result<(), DropReason> {
    let Some(eth) = f.data_mut().first_chunk_mut::<ETH>() else {
        return Err(DropReason::Truncated);
    };
    eth[eth_f::DST].copy_from_slice(&task.mac.0);
    eth[eth_f::SRC].copy_from_slice(&id.overlay_mac.0);
    Ok(())
}

/// `Ok(Verdict::Handoff(w))`, out of line: `forward` returning this
/// verdict at all costs every established packet register pressure,
/// wherever the test sits, and built out of line it costs less
/// (bench/README.md, "Choices the counts made").
#[cold]
#[inline(never)]
pub(super) fn hand_to(w: u16) -> Result<Verdict, DropReason> {
    Ok(Verdict::Handoff(w))
}

/// What the flow table holds for a client's packet.
pub(super) enum Known<'s> {
    /// Its flow's slot, and the task that still serves it.
    Flow(u32, &'s TaskEntry),
    /// Nothing (any more): the packet may start a flow.
    New,
    /// Nothing here, and the flow would keep its client's address, so it
    /// belongs to this other worker (the one its client port names).
    Elsewhere(u16),
    /// A flow whose task is gone, now ended.
    TaskGone,
}

/// Looks a client's packet up in the flow table and settles what its flow
/// there (if any) means: a SYN on a closing flow and a flow whose task has
/// gone end it. The inlining attributes of this step, `new_flow`,
/// `flow_deltas` and `SchedTable::pick` were chosen by callgrind's counts
/// (bench/README.md, "Choices the counts made"); `always` since the cold
/// instance of `forward` calls it too, and with two callers the hint no
/// longer inlined it into the hot one.
#[inline(always)]
pub(super) fn known_flow<'s, const V6: bool>(
    snap: &'s Snapshot,
    st: &mut State,
    key: &ClientKey,
    key_hash: u64,
    is_syn: bool,
    port: PortEntry,
    c6: &[u8; 16],
) -> Known<'s> {
    let found = if V6 {
        st.flows.lookup_client6_hashed(key, c6, key_hash)
    } else {
        st.flows.lookup_client_hashed(key, key_hash)
    };
    let Some(s) = found else {
        // A flow that keeps the client's address has no SNAT port of its
        // own to say which worker owns it: its client port says it. Its
        // packets reaching another worker find no flow there and go on from
        // here, so the test runs only on a miss. (An IPv6 client's address
        // cannot be kept: the tasks are IPv4.)
        if !V6 && snap.services[port.service as usize].client_ip == ClientIp::Preserve {
            let owner = FlowTable::owner(key.client_port, st.workers);
            if owner != st.worker {
                return Known::Elsewhere(owner);
            }
        }
        return Known::New;
    };
    let (gen32, now) = (st.gen32, st.now);
    let flow = st.flows.get_mut(s);
    if is_syn
        && flow.state != FlowState::Established
        && syn_ends(snap, flow, &mut st.events, &mut st.retry, gen32, now)
    {
        end_flow(snap, st, s);
        return Known::New;
    }
    match flow_task(snap, gen32, flow) {
        Some(task) => Known::Flow(s, task),
        None => {
            end_flow(snap, st, s);
            Known::TaskGone
        }
    }
}

/// A SYN for a flow that is not established: whether it ends the flow, to
/// be scheduled anew. It does when the client reuses its port for a new
/// connection after a close, and when it retransmits a SYN whose reset
/// was held back or that its task left unanswered, and passive health
/// sends it to another task (`crate::dataplane::health`; `retry` says
/// which task to avoid). Out of line: most packets are no such SYN.
#[cold]
#[inline(never)]
fn syn_ends(
    snap: &Snapshot,
    flow: &mut Flow,
    events: &mut EventCounters,
    retry: &mut Retry,
    gen32: u32,
    now: u32,
) -> bool {
    if matches!(flow.state, FlowState::Closing | FlowState::Closed) {
        if flow.held_reset {
            if let Some(task) = flow_task(snap, gen32, flow) {
                if outlier_detection(snap, task) {
                    *retry = Retry {
                        avoid: flow.task_index,
                        held: true,
                    };
                }
            }
        }
        return true;
    }
    // A SYN-ACK that the client has not seen yet (held for its next hop)
    // left its sequence number: the task answered.
    let retransmitted = now.wrapping_sub(flow.last_seen) >= health::MIN_RETRANSMISSION_MS;
    if flow.state != FlowState::SynSent || !retransmitted || flow.task_next != 0 {
        return false;
    }
    match flow_task(snap, gen32, flow) {
        Some(task) if outlier_detection(snap, task) => {}
        _ => return false,
    }
    let ti = flow.task_index;
    events.count_health(health::record_failure(snap, ti, Failure::Unanswered, now));
    if !health::healthy_other(snap, ti, now) {
        return false;
    }
    *retry = Retry {
        avoid: ti,
        held: flow.held_reset,
    };
    events.syns_moved += 1;
    true
}

/// Whether passive health checks `task`'s service.
fn outlier_detection(snap: &Snapshot, task: &TaskEntry) -> bool {
    snap.services[task.service as usize].outlier_detection == OutlierDetection::On
}

/// Schedules a new flow for `key` to one of the service's tasks and
/// enters it in the flow table (which picks its SNAT port); returns what
/// its first packet is sent with: the translation, the flow's hash, the
/// task's number and the task. (Returned rather than read back from the
/// slot by `forward`: bench/README.md, "Choices the counts made".)
#[inline(always)]
pub(super) fn new_flow<'s, const V6: bool>(
    snap: &'s Snapshot,
    st: &mut State,
    (key, key_hash): (ClientKey, u64),
    port: PortEntry,
    client_next: u32,
    c6: &[u8; 16],
    mac6: [u8; 6],
) -> Result<(Rewrite, u32, u32, &'s TaskEntry), DropReason> {
    let id = &snap.identity;
    let svc = &snap.services[port.service as usize];
    let hash = if V6 {
        flow_hash6(&key, c6)
    } else {
        flow_hash(&key)
    };
    let Retry { avoid, held } = std::mem::replace(&mut st.retry, Retry::NONE);
    let mut ti = svc
        .sched
        .pick(&svc.shared, &snap.tasks, hash)
        .ok_or(DropReason::NoTask)?;
    if ti == avoid || snap.tasks[ti as usize].shared.health.ejected(st.now) {
        ti = health::pick_other(svc, &snap.tasks, hash, avoid, st.now).unwrap_or(ti);
    }
    let task = &snap.tasks[ti as usize];
    let flow = Flow {
        key,
        task_addr: task.addr,
        task_id: task.id,
        task_index: ti,
        snapshot_gen: st.gen32,
        vtep: task.node,
        target: port.target,
        snat_port: 0,
        last_seen: st.now,
        hash,
        client_mac: mac6,
        client_mac_valid: V6,
        client_next,
        task_next: 0,
        delta_addrs: 0,
        delta_l4: 0,
        preserve: task.preserve && !V6,
        held_reset: held,
        state: if key.protocol == protocol::TCP {
            FlowState::SynSent
        } else {
            FlowState::Udp
        },
    };
    let s = st
        .flows
        .insert_hashed(&flow, st.now, key_hash)
        .map_err(|e| match e {
            InsertError::Full => DropReason::FlowTableFull,
            InsertError::PortsExhausted => DropReason::SnatExhausted,
        })?;
    if V6 {
        st.flows.set_client6(s, c6);
        st.events.ipv6_flows_created += 1;
    }
    if let Some(ev) = st.flows.take_evicted() {
        release_shared(snap, st.gen32, &ev.0);
        st.events.flows_evicted += 1;
    }
    // The SNAT port (and whether the flow keeps the client's address) is
    // known now: fix the flow's checksum deltas.
    let fl = st.flows.get_mut(s);
    (fl.delta_addrs, fl.delta_l4) = deltas_of(
        id,
        &key,
        (fl.preserve, fl.snat_port),
        (task.node_to_task, port.target),
        c6,
    );
    let rw = Rewrite::to_task(fl, id.overlay_addr);
    task.shared.created.fetch_add(1, Ordering::Relaxed);
    task.shared.inactive.fetch_add(1, Ordering::Release);
    st.events.flows_created += 1;
    st.tasks[ti as usize].flows += 1;
    Ok((rw, hash, ti, task))
}

/// Writes the task's outer headers (VXLAN) into `out`, the headroom in
/// front of a translated frame of `inner_len` bytes and that frame's
/// Ethernet header, which the template's last 14 bytes (the inner Ethernet
/// header) overwrite. `hash` picks the outer UDP source port. Public for
/// the benchmark's VXLAN reflector, which encapsulates as meshgate does.
#[inline(always)]
pub fn encapsulate(
    out: &mut [u8; OUTER_TEMPLATE_LEN],
    outer: &OuterTemplate,
    hash: u32,
    inner_len: usize,
) {
    *out = outer.bytes;
    let outer_total = (IP + udp::HEADER_LEN + vxlan::HEADER_LEN + inner_len) as u16;
    set16(out, at(ip_f::LENGTH, ETH), outer_total);
    // The template's checksum was taken with a total length of 0: the
    // length's change from 0 is the length itself (RFC 1624; it is never
    // 0), added in the wire's byte order, as the checksum lies.
    let c = get16_ne(out, at(ip_f::CHECKSUM, ETH));
    set16_ne(
        out,
        at(ip_f::CHECKSUM, ETH),
        checksum::apply_folded(c, outer_total.to_be()),
    );
    set16(out, at(udp_f::SRC_PORT, VX_UDP), vxlan_source_port(hash));
    set16(out, at(udp_f::LENGTH, VX_UDP), outer_total - IP as u16);
}

/// A packet of `len` bytes (Ethernet and IPv4) forwarded to task `ti`.
#[inline(always)]
pub(super) fn count_in(st: &mut State, ti: u32, len: usize) {
    let c = &mut st.tasks[ti as usize];
    c.packets_in += 1;
    c.bytes_in += len as u64;
    st.events.forwarded += 1;
}
