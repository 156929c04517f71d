//! The per-packet pipeline: a frame in, a verdict out, the frame rewritten in
//! place when it is to be transmitted.
//!
//! Forward path (client -> task), for TCP/UDP to a published port on the
//! node address:
//! parse -> ingress match (service, mark) -> flow lookup or round-robin
//! choice of a task -> DNAT to task:target and SNAT to overlay:port, TTL-1,
//! incremental checksums -> VXLAN encapsulation in the frame's headroom.
//!
//! Return path (task -> client), for VXLAN on the overlay port:
//! outer checks (flags, VNI, known VTEP) -> inner checks -> the worker that
//! owns the SNAT port (hand-off if another) -> flow lookup -> reverse both
//! translations -> decapsulate -> Ethernet to the client's next hop.
//!
//! Tasks on this node: the forward path ends in plain Ethernet from the
//! sandbox's MAC to the task's ([`Verdict::Local`], sent out of the ingress
//! sandbox's interface), and their replies enter by [`Pipeline::process_local`]
//! (plain Ethernet and IPv4 to the sandbox) into the same flow lookup and
//! reverse translation as replies in VXLAN.
//!
//! Also answered in place: ARP requests for the overlay address arriving in
//! VXLAN; TCP resets to clients whose task is gone.
//!
//! Invariants: nothing here panics on any input (fuzzed), allocates, locks or
//! makes a system call; every frame that is not transmitted or handed off is
//! counted under exactly one [`DropReason`].

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam::queue::ArrayQueue;

use super::counters::{DropCounters, DropReason, EventCounters, TaskCounters};
use super::desc::ClientIp;
use super::flow::{ClientKey, Flow, FlowState, FlowTable, InsertError, SnatKey};
use super::handover::{FlowRecord, HandoverError, Origin, RestoreReport};
use super::tables::{
    Identity, L4Checksum, OUTER_TEMPLATE_LEN, OUTER_TTL, OuterTemplate, PortEntry, Snapshot,
    TaskEntry, TaskId,
};
use crate::wire::ethernet::{self, ethertype};
use crate::wire::ipv4::{self, protocol};
use crate::wire::{
    MacAddr, arp, at, checksum, get_addr, get_mac, get16, get16_ne, get24, get32, icmp, icmpv6,
    ipv6, set_addr, set16, set16_ne, tcp, udp, vxlan,
};

// Header layout comes from `src/wire` only: field ranges, shifted by the
// headers in front of them (`at`). All constant, so every access below
// compiles to the same load or store a literal offset would.
use crate::wire::ethernet::field as eth_f;
use crate::wire::icmp::field as icmp_f;
use crate::wire::ipv4::field as ip_f;
use crate::wire::tcp::field as tcp_f;
use crate::wire::udp::field as udp_f;

/// A frame inside a buffer with headroom: bytes `off..off + len` of `buf`.
#[derive(Debug)]
pub struct FrameBuf<'a> {
    pub buf: &'a mut [u8],
    pub off: usize,
    pub len: usize,
}

impl<'a> FrameBuf<'a> {
    pub fn new(buf: &'a mut [u8], off: usize, len: usize) -> Self {
        assert!(off + len <= buf.len(), "frame outside its buffer");
        FrameBuf { buf, off, len }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// What to do with a frame after [`Pipeline::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit `buf[off..off + len]` on the ingress interface.
    Transmit,
    /// Transmit `buf[off..off + len]` on the ingress sandbox's interface:
    /// a frame for a task on this node.
    Local,
    /// A reply whose flow belongs to worker `n`: give it the frame unchanged.
    Handoff(u16),
    Drop(DropReason),
}

/// Bytes of headroom a frame needs for encapsulation.
pub const HEADROOM: usize = vxlan::ENCAP_LEN;

const ETH: usize = ethernet::HEADER_LEN;
const IP: usize = ipv4::HEADER_LEN;

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

/// Counters a worker ships to the control thread (deltas since the last one).
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub worker: u16,
    pub generation: u64,
    pub drops: DropCounters,
    pub events: EventCounters,
    pub tasks: Vec<(TaskId, TaskCounters)>,
    /// Flows in the table now (not a delta).
    pub flows: usize,
}

/// Frames a worker generates itself (TCP resets, ICMP errors) per 100 ms.
pub const GENERATED_PER_TICK: u32 = 100;

/// A budget of generated frames per 100 ms tick.
struct RateLimit {
    tick: u32,
    left: u32,
}

impl RateLimit {
    fn take(&mut self, now_ms: u32) -> bool {
        let t = now_ms / 100;
        if t != self.tick {
            self.tick = t;
            self.left = GENERATED_PER_TICK;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

/// Mutable per-worker state, separate from the snapshot so both can be
/// borrowed at once.
struct State {
    worker: u16,
    workers: u16,
    now: u32,
    gen32: u32,
    flows: FlowTable,
    drops: DropCounters,
    events: EventCounters,
    tasks: Vec<TaskCounters>,
    /// Counters of tasks of earlier snapshots, not yet reported.
    carried: Vec<(TaskId, TaskCounters)>,
    resolve: Option<Arc<ArrayQueue<Ipv4Addr>>>,
    generated: RateLimit,
}

/// One worker's pipeline: its snapshot, flow table and counters.
pub struct Pipeline {
    snap: Arc<Snapshot>,
    st: State,
}

impl Pipeline {
    /// A pipeline for worker `worker` of `workers`, with room for
    /// `max_flows` flows and SNAT ports in `snat_ports`.
    pub fn new(
        snap: Arc<Snapshot>,
        worker: u16,
        workers: u16,
        max_flows: usize,
        snat_ports: (u16, u16),
    ) -> Pipeline {
        let ntasks = snap.tasks.len();
        Pipeline {
            st: State {
                worker,
                workers,
                now: 0,
                gen32: snap.generation as u32,
                flows: FlowTable::new(max_flows, worker, workers, snat_ports),
                drops: DropCounters::default(),
                events: EventCounters::default(),
                tasks: vec![TaskCounters::default(); ntasks],
                carried: Vec::new(),
                resolve: None,
                generated: RateLimit {
                    tick: u32::MAX,
                    left: 0,
                },
            },
            snap,
        }
    }

    /// Where to ask the control thread to resolve a missing neighbour.
    pub fn set_resolver(&mut self, q: Arc<ArrayQueue<Ipv4Addr>>) {
        self.st.resolve = Some(q);
    }

    /// Sets the clock, in milliseconds (wrapping); call once per batch.
    #[inline]
    pub fn set_now(&mut self, ms: u32) {
        self.st.now = ms;
    }

    pub fn now(&self) -> u32 {
        self.st.now
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snap
    }

    pub fn flows(&self) -> &FlowTable {
        &self.st.flows
    }

    pub fn drops(&self) -> &DropCounters {
        &self.st.drops
    }

    pub fn events(&self) -> &EventCounters {
        &self.st.events
    }

    pub fn events_mut(&mut self) -> &mut EventCounters {
        &mut self.st.events
    }

    /// Counts a drop decided outside the pipeline (full rings, hand-off queues).
    pub fn count_drop(&mut self, r: DropReason) {
        self.st.drops.inc(r);
    }

    pub fn task_counters(&self) -> &[TaskCounters] {
        &self.st.tasks
    }

    /// Switches to a newer snapshot between batches and returns the old one
    /// (so that the caller can free it off the fast path). Flows are
    /// re-linked to their tasks lazily, on their next packet.
    pub fn set_snapshot(&mut self, snap: Arc<Snapshot>) -> Arc<Snapshot> {
        let old = std::mem::replace(&mut self.snap, snap);
        for (i, c) in self.st.tasks.iter().enumerate() {
            if *c != TaskCounters::default() {
                self.st.carried.push((old.tasks[i].id, *c));
            }
        }
        self.st.tasks.clear();
        self.st
            .tasks
            .resize(self.snap.tasks.len(), TaskCounters::default());
        self.st.gen32 = self.snap.generation as u32;
        self.st.flows.prune_ports();
        old
    }

    /// Takes the counters accumulated since the last report.
    pub fn take_report(&mut self) -> Report {
        let mut tasks = std::mem::take(&mut self.st.carried);
        for (i, c) in self.st.tasks.iter_mut().enumerate() {
            if *c != TaskCounters::default() {
                tasks.push((self.snap.tasks[i].id, *c));
                *c = TaskCounters::default();
            }
        }
        Report {
            worker: self.st.worker,
            generation: self.snap.generation,
            drops: std::mem::take(&mut self.st.drops),
            events: std::mem::take(&mut self.st.events),
            tasks,
            flows: self.st.flows.len(),
        }
    }

    /// This worker's flows as they leave the process ([`handover`]).
    pub fn export_flows(&self) -> (Origin, Vec<FlowRecord>) {
        let st = &self.st;
        let origin = Origin {
            worker: st.worker,
            workers: st.workers,
            snat_ports: st.flows.snat_ports(),
        };
        let records = st
            .flows
            .iter()
            .map(|(slot, f)| {
                FlowRecord::of(f, st.now.wrapping_sub(f.last_seen), st.flows.client6(slot))
            })
            .collect();
        (origin, records)
    }

    /// Mirrors this worker's flows into `m` from now on
    /// ([`super::journal`]), starting with those it has.
    pub fn set_journal(&mut self, m: Box<dyn super::flow::FlowMirror>) {
        self.st.flows.set_mirror(m);
    }

    /// Puts back flows another process exported: each to its task in this
    /// snapshot (found by its published port and address), with its SNAT
    /// port, state, sequence numbers and idle time. A flow whose service
    /// or task is gone, or that clashes, is left out and counted. Flows of
    /// another worker, worker count or SNAT range are refused whole: their
    /// ports belong to other workers here.
    pub fn restore_flows(
        &mut self,
        origin: Origin,
        records: &[FlowRecord],
    ) -> Result<RestoreReport, HandoverError> {
        let here = Origin {
            worker: self.st.worker,
            workers: self.st.workers,
            snat_ports: self.st.flows.snat_ports(),
        };
        if origin != here {
            return Err(HandoverError::Origin {
                found: origin,
                here,
            });
        }
        let snap = &*self.snap;
        let st = &mut self.st;
        let id = &snap.identity;
        let mut report = RestoreReport::default();
        for r in records {
            let task = snap.ports.get(r.protocol, r.published).and_then(|port| {
                let svc = &snap.services[port.service as usize];
                (port.target == r.target)
                    .then(|| {
                        svc.tasks
                            .iter()
                            .copied()
                            .find(|&i| snap.tasks[i as usize].addr == r.task)
                    })
                    .flatten()
            });
            let Some(ti) = task else {
                report.task_gone += 1;
                continue;
            };
            let task = &snap.tasks[ti as usize];
            let c6 = r.client6.map(|(a, mac)| (a.octets(), mac));
            let key = ClientKey {
                client: match &c6 {
                    Some((a, _)) => st.flows.digest6(a),
                    None => r.client,
                },
                client_port: r.client_port,
                published: r.published,
                protocol: r.protocol,
                v6: c6.is_some(),
            };
            let source = if r.preserve {
                key.client
            } else {
                id.overlay_addr
            };
            let (delta_addrs, delta_l4) = flow_deltas(
                (key.client, key.client_port),
                (id.node_addr, key.published),
                (source, r.snat_port),
                (task.addr, r.target),
            );
            let flow = Flow {
                key,
                task_addr: task.addr,
                task_id: task.id,
                task_index: ti,
                snapshot_gen: st.gen32,
                vtep: task.node,
                target: r.target,
                snat_port: r.snat_port,
                last_seen: st.now.wrapping_sub(r.idle_ms),
                hash: r.hash,
                client_mac: c6.map_or([0; 6], |(_, mac)| mac),
                client_mac_valid: c6.is_some(),
                state: r.state,
                client_next: r.client_next,
                task_next: r.task_next,
                delta_addrs,
                delta_l4,
                preserve: r.preserve,
            };
            match st.flows.restore(flow) {
                Ok(slot) => {
                    if let Some((a, _)) = &c6 {
                        st.flows.set_client6(slot, a);
                    }
                    let c = if r.state.is_active() {
                        &task.shared.active
                    } else {
                        &task.shared.inactive
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    report.restored += 1;
                }
                Err(_) => report.refused += 1,
            }
        }
        Ok(report)
    }

    /// Expires idle flows, examining up to `budget` table slots.
    pub fn expire(&mut self, budget: usize) -> usize {
        let snap = &*self.snap;
        let t = snap.timeouts;
        let st = &mut self.st;
        let gen32 = st.gen32;
        let n = st.flows.sweep(
            st.now,
            budget,
            |f| match f.state {
                FlowState::SynSent => t.tcp_syn,
                FlowState::Established => t.tcp_established,
                FlowState::Closing => t.tcp_closing,
                FlowState::Closed => t.tcp_close,
                FlowState::Udp => t.udp,
            },
            |f| release_shared(snap, gen32, f),
        );
        st.events.flows_expired += n as u64;
        n
    }

    /// Ends every flow of the tasks for which `gone` holds (a removed task):
    /// the control plane calls this through the worker after a removal so
    /// that no flow waits for its idle timeout.
    pub fn end_flows_where(&mut self, mut gone: impl FnMut(&Flow) -> bool) -> Vec<Flow> {
        let snap = &*self.snap;
        let gen32 = self.st.gen32;
        let mut ended = Vec::new();
        self.st.flows.remove_where(&mut gone, |f| {
            release_shared(snap, gen32, f);
            ended.push(*f);
        });
        self.st.events.flows_ended += ended.len() as u64;
        ended
    }

    /// Writes into `f` a reset that tells the client of the ended TCP flow
    /// `flow` that its connection is gone, with a sequence number the client
    /// accepts (RFC 9293 3.10.7, RFC 5961): in SYN-SENT an RST+ACK of its
    /// SYN, later an RST at the next sequence number the task would send.
    /// False when the flow is not TCP, already reset, or the client's next
    /// hop is unknown.
    pub fn reset_for_flow(&mut self, flow: &Flow, f: &mut FrameBuf<'_>) -> bool {
        // An ended flow no longer has its IPv6 client's address at hand: its
        // client learns from its next segment's reset (`tcp_no_flow`).
        if flow.key.protocol != protocol::TCP || flow.state == FlowState::Closed || flow.key.v6 {
            return false;
        }
        let snap = &*self.snap;
        let mac = if flow.client_mac_valid {
            Some(MacAddr(flow.client_mac))
        } else {
            snap.neighbours.mac_for(flow.key.client)
        };
        let Some(mac) = mac else { return false };
        let reset = if flow.state == FlowState::SynSent {
            Reset {
                seq: 0,
                ack: flow.client_next,
                flags: tcp::flags::RST | tcp::flags::ACK,
            }
        } else {
            Reset {
                seq: flow.task_next,
                ack: 0,
                flags: tcp::flags::RST,
            }
        };
        emit_reset(&snap.identity, f, mac, &flow.key, reset);
        self.st.events.resets_sent += 1;
        true
    }

    /// Runs the pipeline on one frame.
    #[inline]
    pub fn process(&mut self, f: &mut FrameBuf<'_>) -> Verdict {
        let v = match classify(&self.snap, &mut self.st, f) {
            Ok(v) => v,
            Err(r) => Verdict::Drop(r),
        };
        self.account(v)
    }

    /// Runs the pipeline on one frame from the ingress sandbox's interface.
    pub fn process_local(&mut self, f: &mut FrameBuf<'_>) -> Verdict {
        let v = match local_reply(&self.snap, &mut self.st, f) {
            Ok(v) => v,
            Err(r) => Verdict::Drop(r),
        };
        self.account(v)
    }

    #[inline(always)]
    fn account(&mut self, v: Verdict) -> Verdict {
        match v {
            // `tx` counts frames on the wire: the worker counts them.
            Verdict::Transmit | Verdict::Local => {}
            Verdict::Handoff(_) => self.st.events.handoffs += 1,
            Verdict::Drop(r) => self.st.drops.inc(r),
        }
        v
    }
}

/// Takes a flow's share out of its task's shared flow counts.
fn release_shared(snap: &Snapshot, gen32: u32, f: &Flow) {
    let idx = if f.snapshot_gen == gen32 {
        Some(f.task_index)
    } else {
        snap.task_index.get(&f.task_id).copied()
    };
    if let Some(i) = idx {
        let sh = &snap.tasks[i as usize].shared;
        let c = if f.state.is_active() {
            &sh.active
        } else {
            &sh.inactive
        };
        // Saturating: a count never goes below zero even if a flow was
        // counted under an earlier generation of the task.
        let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(1))
        });
    }
}

/// Checks an IPv4 header without options; `avail` is the number of bytes
/// from the header's start to the end of the frame. Returns the packet's
/// total length. The fixed-size header makes every access check-free.
#[inline(always)]
fn check_ipv4(h: &[u8; IP], avail: usize) -> Result<usize, DropReason> {
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
/// apart, by [`tcp_seq_end`], where it is needed: measured, a 12-byte
/// `L4` passed through the stack cost each established packet 15
/// instructions).
#[derive(Clone, Copy)]
struct L4 {
    sport: u16,
    dport: u16,
    /// TCP flags; `None` for UDP.
    flags: Option<u8>,
}

/// The parts of a checked IPv4 header [`forward`] uses, read once by its
/// caller and passed in a register (measured: reading them again from the
/// frame cost each established packet 8 instructions).
#[derive(Clone, Copy)]
struct Ip4 {
    client: Ipv4Addr,
    proto: u8,
    ttl: u8,
}

impl Ip4 {
    #[inline(always)]
    fn of(h: &[u8; IP]) -> Self {
        Ip4 {
            client: get_addr(h, ip_f::SRC),
            proto: h[ip_f::PROTOCOL],
            ttl: h[ip_f::TTL],
        }
    }
}

/// Parses the transport header of an IP payload (`l4` is the payload exactly).
#[inline(always)]
fn parse_l4(proto: u8, l4: &[u8]) -> Result<L4, DropReason> {
    match proto {
        protocol::TCP => {
            let Some(h) = l4.first_chunk::<{ tcp::HEADER_LEN }>() else {
                return Err(DropReason::Truncated);
            };
            let doff = usize::from(h[tcp_f::OFF] >> 4) * 4;
            if doff < tcp::HEADER_LEN {
                return Err(DropReason::L4Malformed);
            }
            if doff > l4.len() {
                return Err(DropReason::Truncated);
            }
            Ok(L4 {
                sport: get16(h, tcp_f::SRC_PORT),
                dport: get16(h, tcp_f::DST_PORT),
                flags: Some(h[tcp_f::FLAGS]),
            })
        }
        protocol::UDP => {
            let Some(h) = l4.first_chunk::<{ udp::HEADER_LEN }>() else {
                return Err(DropReason::Truncated);
            };
            let ulen = usize::from(get16(h, udp_f::LENGTH));
            if ulen < udp::HEADER_LEN {
                return Err(DropReason::L4Malformed);
            }
            if ulen > l4.len() {
                return Err(DropReason::Truncated);
            }
            Ok(L4 {
                sport: get16(h, udp_f::SRC_PORT),
                dport: get16(h, udp_f::DST_PORT),
                flags: None,
            })
        }
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

/// The sequence number after the TCP segment `seg` (exactly the segment,
/// which [`parse_l4`] accepted): its sequence number plus its payload, SYN
/// and FIN.
#[inline(always)]
fn tcp_seq_end(seg: &[u8]) -> u32 {
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

/// Rewrites the addresses, TTL (minus one) and ports of the IPv4 packet at
/// the start of `p` (a header without options, then a TCP or UDP header
/// that `parse_l4` accepted). The IPv4 checksum changes by the flow's
/// stored deltas (RFC 1624): every rewritten field is constant for a flow,
/// so its checksum change is too. So does the TCP or UDP checksum, unless
/// it is (or may be) partial: see [`L4Checksum`].
///
/// The mode is a type parameter of [`nat_with`], picked here once, so that
/// the NIC's incremental path compiles to the update alone: as run-time
/// tests inside the update the modes cost the established path 19
/// instructions (callgrind, runs of 20 000 and 40 000 packets).
#[inline(always)]
fn nat(p: &mut [u8], rw: Rewrite, l4_checksum: L4Checksum) {
    if l4_checksum == L4Checksum::Incremental {
        nat_with::<false>(p, rw, l4_checksum)
    } else {
        nat_with::<true>(p, rw, l4_checksum)
    }
}

/// What a flow's translation writes into one direction's packets, and
/// the checksum changes that go with it.
#[derive(Clone, Copy)]
struct Rewrite {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    delta_addrs: u16,
    delta_l4: u16,
}

impl Rewrite {
    /// A client's packet of `flow`, from the overlay address (or the
    /// client's own) to the task.
    #[inline(always)]
    fn to_task(flow: &Flow, overlay: Ipv4Addr) -> Self {
        Rewrite {
            src: if flow.preserve {
                flow.key.client
            } else {
                overlay
            },
            dst: flow.task_addr,
            sport: flow.snat_port,
            dport: flow.target,
            delta_addrs: flow.delta_addrs,
            delta_l4: flow.delta_l4,
        }
    }

    /// A task's reply of `flow`, from the node's address to the client:
    /// the reverse translation, so the reverse deltas.
    #[inline(always)]
    fn to_client(flow: &Flow, node: Ipv4Addr) -> Self {
        Rewrite {
            src: node,
            dst: flow.key.client,
            sport: flow.key.published,
            dport: flow.key.client_port,
            delta_addrs: !flow.delta_addrs,
            delta_l4: !flow.delta_l4,
        }
    }
}

/// [`nat`] for one kind of mode: `CHECKED` is false for incremental updates.
#[inline(always)]
fn nat_with<const CHECKED: bool>(p: &mut [u8], rw: Rewrite, l4_checksum: L4Checksum) {
    let Rewrite {
        src,
        dst,
        sport,
        dport,
        delta_addrs,
        delta_l4,
    } = rw;
    let (iph, l4) = p.split_at_mut(IP);
    let Some(h) = iph.first_chunk_mut::<IP>() else {
        return;
    };
    let (proto, total) = (h[ip_f::PROTOCOL], get16(h, ip_f::LENGTH));
    let partial_sum = match l4_checksum {
        L4Checksum::CompletePartial if CHECKED => Some(checksum::pseudo_header(
            get_addr(h, ip_f::SRC),
            get_addr(h, ip_f::DST),
            proto,
            total.wrapping_sub(IP as u16),
        )),
        _ => None,
    };
    h[ip_f::TTL] = h[ip_f::TTL].wrapping_sub(1);
    set_addr(h, ip_f::SRC, src);
    set_addr(h, ip_f::DST, dst);
    // Checksums and their deltas in the wire's byte order: no swaps.
    let c = checksum::apply_folded2(get16_ne(h, ip_f::CHECKSUM), delta_addrs, TTL_DECREMENT_NE);
    set16_ne(h, ip_f::CHECKSUM, c);
    let stored = if proto == protocol::TCP {
        let Some(t) = l4.first_chunk_mut::<{ tcp_f::CHECKSUM.end }>() else {
            return;
        };
        set16(t, tcp_f::SRC_PORT, sport);
        set16(t, tcp_f::DST_PORT, dport);
        let stored = get16_ne(t, tcp_f::CHECKSUM);
        let c = checksum::apply_folded(stored, delta_l4);
        set16_ne(t, tcp_f::CHECKSUM, c);
        stored
    } else {
        let Some(u) = l4.first_chunk_mut::<{ udp::HEADER_LEN }>() else {
            return;
        };
        set16(u, udp_f::SRC_PORT, sport);
        set16(u, udp_f::DST_PORT, dport);
        let stored = get16_ne(u, udp_f::CHECKSUM);
        let c = checksum::apply_folded_udp(stored, delta_l4);
        set16_ne(u, udp_f::CHECKSUM, c);
        stored
    };
    if CHECKED && (l4_checksum == L4Checksum::Full || partial_sum == Some(u16::from_be(stored))) {
        if let Some(seg) = l4.get_mut(..usize::from(total).saturating_sub(IP)) {
            fill_l4_checksum(seg, src, dst, proto);
        }
    }
}

/// Sums the TCP or UDP checksum of `seg` (the whole segment) anew. A UDP
/// checksum of zero (the sender computed none) stays zero: a partial one
/// never is, since the pseudo-header's sum is not zero.
#[inline(never)]
fn fill_l4_checksum(seg: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8) {
    let at = if proto == protocol::TCP {
        tcp::field::CHECKSUM.start
    } else {
        udp::field::CHECKSUM.start
    };
    let Some(field) = seg.get_mut(at..at + 2) else {
        return;
    };
    if proto == protocol::UDP && field == [0, 0] {
        return;
    }
    field.copy_from_slice(&[0, 0]);
    let pseudo = checksum::pseudo_header(src, dst, proto, seg.len() as u16);
    let mut c = !checksum::combine(&[pseudo, checksum::data(seg)]);
    if proto == protocol::UDP && c == 0 {
        c = 0xffff;
    }
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// [`checksum::TTL_DECREMENT`] in the wire's byte order ([`get16_ne`]).
const TTL_DECREMENT_NE: u16 = checksum::TTL_DECREMENT.to_be();

/// The checksum deltas of a flow's forward translation: the packet from
/// `client` to `published` (addresses and ports) leaves from `snat` to
/// `task`. In the wire's byte order ([`get16_ne`]), as the flow stores
/// them.
///
/// Summed in the wire's byte order directly, in 32 bits with two folds
/// (the sums are bounded): measured, [`checksum::Delta`]'s 64-bit
/// accumulator and general fold, then two swaps, cost each new flow 9
/// instructions. `flow_deltas_agree` checks the two against each other.
#[inline(always)]
fn flow_deltas(
    (client, client_port): (Ipv4Addr, u16),
    (node, published): (Ipv4Addr, u16),
    (overlay, snat): (Ipv4Addr, u16),
    (task, target): (Ipv4Addr, u16),
) -> (u16, u16) {
    // An address's two words as they lie in memory, summed; `!w` of a
    // 16-bit word is 0xffff - w, so an old address counts 0x1fffe - sum.
    let a = |x: Ipv4Addr| {
        let v = u32::from_ne_bytes(x.octets());
        (v >> 16) + (v & 0xffff)
    };
    let p = |x: u16| u32::from(x.to_be());
    // At most 5 * 0xffff: two end-around carries bring it to 16 bits.
    let fold = |s: u32| {
        let s = (s & 0xffff) + (s >> 16);
        ((s & 0xffff) + (s >> 16)) as u16
    };
    let addrs = fold(0x1fffe - a(client) + a(overlay) + 0x1fffe - a(node) + a(task));
    let l4 = fold(
        u32::from(addrs) + 0xffff - p(client_port) + p(snat) + 0xffff - p(published) + p(target),
    );
    (addrs, l4)
}

/// Valid TCP flag combinations (after Linux conntrack's `tcp_valid_flags`),
/// ignoring PSH, ECE and CWR.
#[inline(always)]
fn tcp_flags_valid(flags: u8) -> bool {
    use tcp::flags::*;
    let f = flags & (FIN | SYN | RST | ACK | URG);
    matches!(f & !URG, x if x == SYN || x == SYN | ACK || x == RST || x == RST | ACK || x == FIN | ACK || x == ACK)
        || (f == FIN) // a bare FIN, which some stacks send on abortive close
}

fn classify(snap: &Snapshot, st: &mut State, f: &mut FrameBuf<'_>) -> Result<Verdict, DropReason> {
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
    let total = check_ipv4(iph, d.len() - ETH)?;
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
    forward::<false>(snap, st, f, ip, l4, &NO_CLIENT6)
}

/// A frame that is not IPv4: an IPv6 client's, or dropped by its EtherType.
fn not_ipv4(
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

/// The IPv6 client argument of the IPv4 instances of the generic steps.
const NO_CLIENT6: [u8; 16] = [0; 16];

/// An IPv6 client's packet to a published port on `node.address6`
/// (RFC 7915 in spirit; the overlay and the tasks stay IPv4): checked as
/// strictly as IPv4 (no extension header, no fragment), answered with
/// Packet Too Big when its IPv4 form would not fit the overlay, then
/// translated in place into IPv4 from the client's digest
/// ([`FlowTable::digest6`]) to the node address, so that the IPv4 steps
/// forward it unchanged, its flow keyed by the whole IPv6 address.
#[inline(never)]
fn forward6(snap: &Snapshot, st: &mut State, f: &mut FrameBuf<'_>) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let Some(node6) = id.node_addr6 else {
        return Err(DropReason::NotIpv4);
    };
    let d = f.data();
    let p = ipv6::Packet::new_checked(&d[ETH..]).map_err(|e| match e {
        crate::wire::Error::Truncated => DropReason::Truncated,
        _ => DropReason::IpMalformed,
    })?;
    let r = ipv6::Repr::parse(&p).map_err(|e| match e {
        crate::wire::Error::Fragment => DropReason::IpFragment,
        crate::wire::Error::Unsupported => DropReason::Ipv6ExtensionHeader,
        crate::wire::Error::Truncated => DropReason::Truncated,
        _ => DropReason::IpMalformed,
    })?;
    if r.dst != node6 {
        return Err(DropReason::NotForUs);
    }
    let proto = r.next_header;
    if proto != protocol::TCP && proto != protocol::UDP {
        return Err(DropReason::UnsupportedProtocol);
    }
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
    let Some((v4, total)) = super::xlat::v6_to_v4(f.buf, off, len, digest, id.node_addr) else {
        return Err(DropReason::UnsupportedProtocol);
    };
    if partial {
        let ph = checksum::pseudo_header(digest, id.node_addr, proto, r.payload_len);
        f.buf[v4 + IP + l4_checksum_offset(proto)..][..2].copy_from_slice(&ph.to_be_bytes());
    }
    // The Ethernet header moves up to the IPv4 packet.
    let eth = f.off;
    f.buf.copy_within(eth..eth + ETH - 2, v4 - ETH);
    f.off = v4 - ETH;
    f.len = ETH + total;
    set16(f.data_mut(), eth_f::ETHERTYPE, ethertype::IPV4);
    let d = f.data();
    let Some(iph) = d[ETH..].first_chunk::<IP>() else {
        return Err(DropReason::Truncated);
    };
    let ip = Ip4::of(iph);
    let l4 = parse_l4(proto, &d[ETH + IP..])?;
    forward::<true>(snap, st, f, ip, l4, &c6)
}

/// Where a TCP or UDP header keeps its checksum.
#[inline(always)]
fn l4_checksum_offset(proto: u8) -> usize {
    if proto == protocol::TCP {
        tcp_f::CHECKSUM.start
    } else {
        udp_f::CHECKSUM.start
    }
}

/// Turns the IPv4 packet in `f` (translated, addressed to an IPv6 client's
/// digest) into IPv6 from the node's IPv6 address to `client6`, in place:
/// it grows by [`super::xlat::GROWTH`] bytes into the headroom, and the
/// Ethernet header, its addresses kept, moves with it.
#[inline(never)]
fn to_ipv6(id: &Identity, f: &mut FrameBuf<'_>, client6: &[u8; 16]) -> Result<(), DropReason> {
    let Some(node6) = id.node_addr6 else {
        return Err(DropReason::NotIpv4);
    };
    let (eth, len) = (f.off, f.len);
    let Some(start) = eth.checked_sub(super::xlat::GROWTH) else {
        return Err(DropReason::NoHeadroom);
    };
    // First the Ethernet header, out of the way of the IPv6 header that
    // will cover its old place.
    f.buf.copy_within(eth..eth + ETH - 2, start);
    let Some((v6, total)) = super::xlat::v4_to_v6(
        f.buf,
        eth + ETH,
        len - ETH,
        node6,
        std::net::Ipv6Addr::from(*client6),
    ) else {
        return Err(DropReason::UnsupportedProtocol);
    };
    debug_assert_eq!(v6, start + ETH);
    f.off = start;
    f.len = ETH + total;
    set16(f.data_mut(), eth_f::ETHERTYPE, ethertype::IPV6);
    Ok(())
}

/// Writes the Ethernet and IPv6 headers of an answer meshgate sends an
/// IPv6 client (from the node, to the neighbour `mac`) into `b`.
#[allow(clippy::too_many_arguments)]
fn emit_answer6_headers(
    id: &Identity,
    b: &mut [u8],
    mac: MacAddr,
    src: std::net::Ipv6Addr,
    dst: std::net::Ipv6Addr,
    next_header: u8,
    payload_len: usize,
    hop_limit: u8,
) {
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
fn packet_too_big6(
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
    emit_answer6_headers(
        id,
        b,
        mac,
        node6,
        client6,
        ipv6::next_header::ICMPV6,
        icmpv6::HEADER_LEN + q,
        64,
    );
    icmpv6::Repr::PacketTooBig {
        mtu: u32::from(id.overlay_mtu) + super::xlat::GROWTH as u32,
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

/// Resolves a flow's task in the current snapshot, re-linking it after a
/// snapshot change. `None`: the task is gone.
#[inline(always)]
fn flow_task<'s>(snap: &'s Snapshot, gen32: u32, flow: &mut Flow) -> Option<&'s TaskEntry> {
    if flow.snapshot_gen != gen32 {
        let i = *snap.task_index.get(&flow.task_id)?;
        flow.task_index = i;
        flow.snapshot_gen = gen32;
        // An IPv6 client's MAC is the neighbour its packets came from,
        // not the neighbour table's: it stays.
        flow.client_mac_valid = flow.key.v6;
    }
    snap.tasks.get(flow.task_index as usize)
}

fn request_resolution(st: &State, addr: Ipv4Addr) {
    if let Some(q) = &st.resolve {
        // A full queue means the control thread already has work queued;
        // the next packet asks again.
        let _ = q.push(addr);
    }
}

fn end_flow(snap: &Snapshot, st: &mut State, slot: u32) {
    let f = st.flows.remove(slot);
    release_shared(snap, st.gen32, &f);
    st.events.flows_ended += 1;
}

/// `a` comes after `b` in sequence space (RFC 1982 arithmetic).
#[inline]
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Applies a TCP segment's flags to the flow state; returns the shared
/// counter move (from inactive to active or back) to apply.
#[inline(always)]
fn tcp_transition(flow: &mut Flow, flags: u8, from_task: bool) -> Option<bool> {
    use tcp::flags::*;
    let before = flow.state;
    // Most segments change nothing: said first, without a store.
    if flags & (RST | FIN) == 0 && !(from_task && before == FlowState::SynSent) {
        return None;
    }
    flow.state = if flags & RST != 0 {
        FlowState::Closed
    } else if flags & FIN != 0 && before != FlowState::Closed {
        FlowState::Closing
    } else if from_task && before == FlowState::SynSent {
        FlowState::Established
    } else {
        before
    };
    (before.is_active() != flow.state.is_active()).then_some(flow.state.is_active())
}

fn move_shared(task: &TaskEntry, to_active: bool) {
    let sh = &task.shared;
    let (from, to) = if to_active {
        (&sh.inactive, &sh.active)
    } else {
        (&sh.active, &sh.inactive)
    };
    // Out of one state before into the other, so that a reader never
    // counts the flow twice; Release: see `TaskShared::counts`.
    let _ = from.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(1))
    });
    to.fetch_add(1, Ordering::Release);
}

/// A client's packet to a published port (`f` is exactly Ethernet and the
/// packet, `l4` its parsed transport header): finds or makes its flow,
/// translates it and sends it to the flow's task, in VXLAN or, for a task
/// on this node, as it is.
fn forward<const V6: bool>(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    ip: Ip4,
    l4: L4,
    c6: &[u8; 16],
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let total = f.len - ETH;
    let Ip4 { client, proto, ttl } = ip;
    let port = snap
        .ports
        .get(proto, l4.dport)
        .ok_or(DropReason::NoService)?;
    if let Some(fl) = l4.flags {
        if !tcp_flags_valid(fl) {
            return Err(DropReason::TcpBadFlags);
        }
    }
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    if total > usize::from(id.overlay_mtu) {
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
    let (slot, task) = match known_flow::<V6>(snap, st, &key, key_hash, is_syn, port, c6) {
        Known::Flow(s, task) => (s, task),
        Known::Elsewhere(w) => return hand_to(w),
        Known::TaskGone if proto == protocol::TCP => {
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
            // An IPv6 client's replies go back to the neighbour its
            // packets came from: the kernel's IPv4 neighbour table knows
            // nothing of it.
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
            new_flow::<V6>(snap, st, key, key_hash, port, client_next, c6, mac6)?
        }
    };

    let now = st.now;
    let flow = st.flows.get_mut(slot);
    flow.last_seen = now;
    if let Some(fl) = l4.flags {
        if let Some(to_active) = tcp_transition(flow, fl, false) {
            move_shared(task, to_active);
        }
    }
    let (rw, hash, ti) = (
        Rewrite::to_task(flow, id.overlay_addr),
        flow.hash,
        flow.task_index,
    );
    if task.local {
        to_local(f, rw, task, id)?;
        count_in(st, ti, ETH + total);
        if V6 {
            st.events.ipv6_forwarded += 1;
        }
        return Ok(Verdict::Local);
    }
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
    nat(inner, rw, id.l4_checksum);
    encapsulate(encap, outer, hash, inner_len);
    f.off = off;
    f.len = HEADROOM + inner_len;
    count_in(st, ti, ETH + total);
    if V6 {
        st.events.ipv6_forwarded += 1;
    }
    Ok(Verdict::Transmit)
}

/// Translates a client's packet for a task on this node: no VXLAN, the
/// sandbox's interface is on the task's own bridge, and the frame keeps
/// its size and place. Its own `nat` call rather than one shared with the
/// VXLAN path: measured, sharing it (an `Option` of the template chosen
/// first) cost the established path 9 instructions per packet and a new
/// flow 13 (testkit/tests/instructions.rs).
#[inline(always)]
fn to_local(
    f: &mut FrameBuf<'_>,
    rw: Rewrite,
    task: &TaskEntry,
    id: &Identity,
) -> Result<(), DropReason> {
    nat(&mut f.data_mut()[ETH..], rw, id.l4_checksum);
    let Some(eth) = f.data_mut().first_chunk_mut::<ETH>() else {
        return Err(DropReason::Truncated);
    };
    eth[eth_f::DST].copy_from_slice(&task.mac.0);
    eth[eth_f::SRC].copy_from_slice(&id.overlay_mac.0);
    Ok(())
}

/// `Ok(Verdict::Handoff(w))`, out of line. Measured (callgrind,
/// established flow): `forward` returning this verdict at all costs every
/// established packet about 20 instructions of register pressure, wherever
/// the test sits; built out of line, 5 of them are saved (572 -> 567).
/// See bench/README.md.
#[cold]
#[inline(never)]
fn hand_to(w: u16) -> Result<Verdict, DropReason> {
    Ok(Verdict::Handoff(w))
}

/// What the flow table holds for a client's packet.
enum Known<'s> {
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
/// `flow_deltas` and `SchedTable::pick` were chosen by measurement
/// (callgrind, established / reply / new flow): all inline 556/700/1213,
/// `new_flow` out of line 550/700/1210, `flow_deltas` out of line
/// 542/700/1173, as here 545/700/1152.
#[inline]
fn known_flow<'s, const V6: bool>(
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
    let gen32 = st.gen32;
    let flow = st.flows.get_mut(s);
    if is_syn && matches!(flow.state, FlowState::Closing | FlowState::Closed) {
        // The client reuses its port for a new connection: schedule anew.
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

/// Schedules a new flow for `key` to one of the service's tasks and
/// enters it in the flow table (which picks its SNAT port); returns its
/// slot and the task.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn new_flow<'s, const V6: bool>(
    snap: &'s Snapshot,
    st: &mut State,
    key: ClientKey,
    key_hash: u64,
    port: PortEntry,
    client_next: u32,
    c6: &[u8; 16],
    mac6: [u8; 6],
) -> Result<(u32, &'s TaskEntry), DropReason> {
    let id = &snap.identity;
    let svc = &snap.services[port.service as usize];
    let hash = if V6 {
        flow_hash6(&key, c6)
    } else {
        flow_hash(&key)
    };
    let ti = svc
        .sched
        .pick(&svc.shared, &snap.tasks, hash)
        .ok_or(DropReason::NoTask)?;
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
        state: if key.protocol == protocol::TCP {
            FlowState::SynSent
        } else {
            FlowState::Udp
        },
    };
    let s = st
        .flows
        .insert_hashed(flow, st.now, key_hash)
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
    let source = if fl.preserve {
        key.client
    } else {
        id.overlay_addr
    };
    (fl.delta_addrs, fl.delta_l4) = flow_deltas(
        (key.client, key.client_port),
        (id.node_addr, key.published),
        (source, fl.snat_port),
        (task.addr, port.target),
    );
    task.shared.created.fetch_add(1, Ordering::Relaxed);
    task.shared.inactive.fetch_add(1, Ordering::Release);
    st.events.flows_created += 1;
    st.tasks[ti as usize].flows += 1;
    Ok((s, task))
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
fn count_in(st: &mut State, ti: u32, len: usize) {
    let c = &mut st.tasks[ti as usize];
    c.packets_in += 1;
    c.bytes_in += len as u64;
    st.events.forwarded += 1;
}

/// Offsets inside a VXLAN frame.
const VX_UDP: usize = ETH + IP;
const VX_HDR: usize = VX_UDP + udp::HEADER_LEN;
const INNER: usize = VX_HDR + vxlan::HEADER_LEN;
const INNER_IP: usize = INNER + ETH;

fn reply(snap: &Snapshot, st: &mut State, f: &mut FrameBuf<'_>) -> Result<Verdict, DropReason> {
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
    // (in `translate_reply`, mostly without a table lookup: measured, 30
    // instructions a reply); every other outcome is tested here, so that
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
fn reply_from(
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
    let total = check_ipv4(iph, end - INNER_IP)?;
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
    match translate_reply::<true>(snap, st, p, vtep, id.l4_checksum, peer)? {
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
fn reply_peer(id: &Identity, iph: &[u8; IP]) -> Ipv4Addr {
    let dst = get_addr(iph, ip_f::DST);
    if dst == id.overlay_addr {
        Ipv4Addr::UNSPECIFIED
    } else {
        dst
    }
}

/// Where a task's reply goes once its flow is known.
enum ReplyTo {
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
#[inline(always)]
fn translate_reply<const VXLAN: bool>(
    snap: &Snapshot,
    st: &mut State,
    p: &mut [u8],
    vtep: Ipv4Addr,
    l4_checksum: L4Checksum,
    peer: Ipv4Addr,
) -> Result<ReplyTo, DropReason> {
    let id = &snap.identity;
    let Some(iph) = p.first_chunk::<IP>() else {
        return Err(DropReason::Truncated);
    };
    let proto = iph[ip_f::PROTOCOL];
    let ttl = iph[ip_f::TTL];
    let task_addr = get_addr(iph, ip_f::SRC);
    let l4 = parse_l4(proto, &p[IP..])?;
    let (sport, dport, tcp_flags) = (l4.sport, l4.dport, l4.flags);
    if let Some(fl) = tcp_flags {
        if !tcp_flags_valid(fl) {
            return Err(DropReason::TcpBadFlags);
        }
    }
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
    if ttl <= 1 {
        return Err(DropReason::TtlExpired);
    }
    let client = flow.key.client;
    let Some(client_mac) = client_mac(snap, flow) else {
        request_resolution(st, snap.neighbours.next_hop(client));
        return Err(DropReason::NoNeighbour);
    };
    flow.last_seen = now;
    if let Some(fl) = tcp_flags {
        let seq_end = tcp_seq_end(&p[IP..]);
        if flow.state == FlowState::SynSent || seq_after(seq_end, flow.task_next) {
            flow.task_next = seq_end;
        }
        if let Some(to_active) = tcp_transition(flow, fl, true) {
            move_shared(task, to_active);
        }
    }
    let (rw, ti, v6) = (
        Rewrite::to_client(flow, id.node_addr),
        flow.task_index,
        flow.key.v6,
    );
    nat(p, rw, l4_checksum);
    Ok(ReplyTo::Client {
        mac: client_mac,
        task_index: ti,
        v6_slot: v6.then_some(slot),
    })
}

/// A frame from the ingress sandbox's interface: a reply of a task on
/// this node, plain Ethernet and IPv4 to the sandbox (the capture program
/// passes everything else to the sandbox's kernel).
fn local_reply(
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
    let total = check_ipv4(iph, d.len() - ETH)?;
    let peer = reply_peer(id, iph);
    if iph[ip_f::PROTOCOL] != protocol::TCP && iph[ip_f::PROTOCOL] != protocol::UDP {
        return Err(DropReason::UnsupportedProtocol);
    }
    f.len = ETH + total;
    let p = &mut f.data_mut()[ETH..ETH + total];
    match translate_reply::<false>(snap, st, p, id.node_addr, id.sandbox_l4_checksum, peer)? {
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
// Inlined, like `to_client`: measured, the calls cost 12 instructions per
// reply (callgrind, `meshgate-bench pipeline --case reply`).
#[inline(always)]
fn client_mac(snap: &Snapshot, flow: &mut Flow) -> Option<MacAddr> {
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
fn to_client(
    id: &super::tables::Identity,
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
fn deliver(
    id: &super::tables::Identity,
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

/// [`deliver`] for an IPv6 client's flow (in `slot`): the reply, addressed
/// and counted, becomes IPv6 (20 bytes longer; the task's counters count
/// what left the task).
#[inline(never)]
fn deliver6(
    id: &super::tables::Identity,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    client_mac: MacAddr,
    task_index: u32,
    slot: u32,
) -> Result<Verdict, DropReason> {
    let v = deliver(id, st, f, client_mac, task_index)?;
    let c6 = *st.flows.client6(slot);
    to_ipv6(id, f, &c6)?;
    st.events.ipv6_replies += 1;
    Ok(v)
}

/// Answers an ARP request for the overlay address that arrived in VXLAN,
/// in place, back to the VTEP that sent it.
#[cold]
#[inline(never)]
fn arp_reply(
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
fn emit_answer_headers(
    id: &super::tables::Identity,
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
const ICMP_QUOTE: usize = 64;

/// Answers a client packet larger than the overlay MTU with ICMP
/// "fragmentation needed" (RFC 1191), as a router on the path would, so that
/// path MTU discovery works through meshgate. Packets without DF are
/// dropped: meshgate does not fragment.
fn frag_needed(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let d = f.data();
    let Some(h) = d.first_chunk::<{ ETH + IP }>() else {
        return Err(DropReason::Truncated);
    };
    let df = get16(h, at(ip_f::FLG_OFF, ETH)) & ipv4::FLAG_DF != 0;
    if !df || !st.generated.take(st.now) {
        return Err(DropReason::TooBig);
    }
    let client = get_addr(h, at(ip_f::SRC, ETH));
    // An answer to this very frame goes back to the neighbour that sent it
    // (its source MAC), as any responder does; the neighbour table may not
    // know the client yet (it ARPed microseconds ago).
    let mac = get_mac(h, eth_f::SRC);
    let q = total.min(ICMP_QUOTE);
    let mut quote = [0u8; ICMP_QUOTE];
    quote[..q].copy_from_slice(&d[ETH..ETH + q]);
    f.len = ETH + IP + icmp::HEADER_LEN + q;
    let b = f.data_mut();
    emit_answer_headers(id, b, mac, client, protocol::ICMP, icmp::HEADER_LEN + q);
    let msg = &mut b[ETH + IP..];
    msg[icmp::HEADER_LEN..].copy_from_slice(&quote[..q]);
    icmp::Repr::DstUnreachable {
        code: icmp::unreachable::FRAG_NEEDED,
        next_hop_mtu: id.overlay_mtu,
        data_len: q,
    }
    .emit(&mut icmp::Packet::new_unchecked(msg));
    st.drops.inc(DropReason::TooBig);
    st.events.icmp_sent += 1;
    Ok(Verdict::Transmit)
}

/// Translates an ICMP error about a flow's packet (a task's "port
/// unreachable", a "fragmentation needed" from the task's side) back to the
/// client, as NAT does: the error's addresses, and the quoted packet's
/// addresses and ports, are reversed, and every checksum is redone.
#[cold]
#[inline(never)]
fn icmp_error(
    snap: &Snapshot,
    st: &mut State,
    f: &mut FrameBuf<'_>,
    total: usize,
    vtep: Ipv4Addr,
    ttl: u8,
    peer: Ipv4Addr,
) -> Result<Verdict, DropReason> {
    let id = &snap.identity;
    let d = f.data();
    let msg = &d[INNER_IP + IP..INNER_IP + total];
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
    // The quoted packet went from the sandbox (or, for a flow that keeps
    // its client's address, from the client the error is sent to) to the
    // task; TCP and UDP put their ports in the same place.
    let quoted_src = if peer.is_unspecified() {
        id.overlay_addr
    } else {
        peer
    };
    if q[ip_f::VER_IHL] != 0x45
        || !matches!(qproto, protocol::TCP | protocol::UDP)
        || q[ip_f::SRC] != quoted_src.octets()
    {
        return Err(DropReason::IcmpNoFlow);
    }
    let task = get_addr(q, ip_f::DST);
    let snat = get16(q, at(udp_f::SRC_PORT, IP));
    let target = get16(q, at(udp_f::DST_PORT, IP));
    let owner = FlowTable::owner(snat, st.workers);
    if owner != st.worker {
        return Ok(Verdict::Handoff(owner));
    }
    let slot = st
        .flows
        .lookup_snat(&SnatKey {
            task,
            target,
            snat_port: snat,
            protocol: qproto,
            peer,
        })
        .ok_or(DropReason::IcmpNoFlow)?;
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
    let (client, client_port, published, delta_l4, ti) = (
        flow.key.client,
        flow.key.client_port,
        flow.key.published,
        flow.delta_l4,
        flow.task_index,
    );
    let Some(client_mac) = client_mac(snap, flow) else {
        request_resolution(st, snap.neighbours.next_hop(client));
        return Err(DropReason::NoNeighbour);
    };

    let b = &mut f.data_mut()[INNER_IP..INNER_IP + total];
    let (iph, msg) = b.split_at_mut(IP);
    let mut ip = ipv4::Packet::new_unchecked(&mut iph[..]);
    ip.set_src_addr(id.node_addr);
    ip.set_dst_addr(client);
    ip.set_ttl(ttl - 1);
    ip.fill_checksum();
    let (_, quoted) = msg.split_at_mut(icmp::HEADER_LEN);
    let (qh, ql4) = quoted.split_at_mut(IP);
    let mut qip = ipv4::Packet::new_unchecked(&mut qh[..]);
    qip.set_src_addr(client);
    qip.set_dst_addr(id.node_addr);
    qip.fill_checksum();
    set16(ql4, udp_f::SRC_PORT, client_port);
    set16(ql4, udp_f::DST_PORT, published);
    // The quoted transport checksum, when quoted: the reverse of the flow's
    // translation.
    if qproto == protocol::UDP {
        let c = checksum::apply_folded_udp(get16_ne(ql4, udp_f::CHECKSUM), !delta_l4);
        set16_ne(ql4, udp_f::CHECKSUM, c);
    } else if ql4.len() >= tcp_f::CHECKSUM.end {
        let c = checksum::apply_folded(get16_ne(ql4, tcp_f::CHECKSUM), !delta_l4);
        set16_ne(ql4, tcp_f::CHECKSUM, c);
    }
    let mut icmp = icmp::Packet::new_unchecked(&mut msg[..]);
    icmp.fill_checksum();

    to_client(id, st, f, total, client_mac, ti)
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
                mtu: (u32::from(mtu) + super::xlat::GROWTH as u32).max(u32::from(ipv6::MIN_MTU)),
            }
        }
        (icmp::msg_type::TIME_EXCEEDED, c @ (0 | 1)) => icmpv6::Repr::TimeExceeded { code: c },
        _ => return None,
    })
}

/// Bytes of the quoted transport header and data in an ICMPv6 error
/// meshgate translates (the quoted IPv6 header comes on top).
const ICMP6_QUOTE_L4: usize = ICMP_QUOTE - IP;

/// [`icmp_error`] for an IPv6 client's flow (in `slot`): the error is
/// translated to ICMPv6 (RFC 7915 4.2) from the node's IPv6 address, and
/// the quoted packet is the client's own, as it sent it: its IPv6 header,
/// then its ports and what follows of the transport header.
fn icmp_error6(
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
    emit_answer6_headers(
        id,
        b,
        client_mac,
        node6,
        client6,
        ipv6::next_header::ICMPV6,
        icmpv6::HEADER_LEN + qlen,
        ttl - 1,
    );
    let icmp6 = &mut b[ETH + ipv6::HEADER_LEN..];
    icmp6[icmpv6::HEADER_LEN..].copy_from_slice(&quote[..qlen]);
    repr.emit(&mut icmpv6::Packet::new_unchecked(icmp6), node6, client6);
    st.events.ipv6_replies += 1;
    deliver(id, st, f, client_mac, ti)
}

/// The numbers of a TCP reset (RFC 9293 section 3.10.7.1).
struct Reset {
    seq: u32,
    ack: u32,
    flags: u8,
}

/// Writes a TCP reset from the published port on the node address to the
/// client of `key` into `f` (replacing its contents).
fn emit_reset(id: &Identity, f: &mut FrameBuf<'_>, mac: MacAddr, key: &ClientKey, r: Reset) {
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
fn send_reset<const V6: bool>(
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
        to_ipv6(id, f, c6).map_err(|_| reason)?;
    }
    st.events.resets_sent += 1;
    st.drops.inc(reason);
    Ok(Verdict::Transmit)
}

#[cfg(test)]
mod deltas_tests {
    use super::*;
    use proptest::prelude::*;

    /// A translation that changes nothing: every word's `!old + new` is
    /// 0xffff, "minus zero", in both forms.
    #[test]
    fn identity_deltas_are_minus_zero() {
        let (a, b) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(
            flow_deltas((a, 1), (b, 2), (a, 1), (b, 2)),
            (0xffff, 0xffff)
        );
    }

    proptest! {
        /// The word-order shortcut gives exactly the deltas of
        /// `checksum::Delta`, swapped into the wire's byte order.
        #[test]
        fn flow_deltas_agree(
            a in any::<[u32; 4]>(),
            ports in any::<[u16; 4]>(),
        ) {
            let ip = |i: usize| Ipv4Addr::from(a[i]);
            let mut d = checksum::Delta::new();
            d.addr(ip(0), ip(2)).addr(ip(1), ip(3));
            let addrs = d.folded();
            d.word(ports[0], ports[2]).word(ports[1], ports[3]);
            let want = (addrs.to_be(), d.folded().to_be());
            prop_assert_eq!(
                flow_deltas((ip(0), ports[0]), (ip(1), ports[1]), (ip(2), ports[2]), (ip(3), ports[3])),
                want
            );
        }
    }
}
