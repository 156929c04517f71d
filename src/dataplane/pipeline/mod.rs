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
//! Header layout comes from `src/wire` only: field ranges, shifted by the
//! headers in front of them (`at`). All constant, so every access compiles
//! to the same load or store a literal offset would.
//!
//! The steps live in their own files, in the order a packet meets them:
//! [`parse`] (the first look and the dispatch), [`client6`] (an IPv6
//! client's packets, made IPv4 and back), [`forward`] (a client's packet
//! to its task), [`reply`] (a task's packet back to its client), [`nat`]
//! (the translation and its checksums), [`track`] (a flow's state) and
//! [`answer`] (ARP, ICMP and resets meshgate writes itself), and
//! [`fragment`] (datagrams in fragments, both ways, and packets split at
//! the overlay's MTU).
//!
//! Invariants: nothing here panics on any input (fuzzed), allocates, locks or
//! makes a system call; every frame that is not transmitted or handed off is
//! counted under exactly one [`DropReason`].

use super::counters::{DropCounters, DropReason, EventCounters, TaskCounters};
use super::flow::{ClientKey, Flow, FlowState, FlowTable};
use super::fragments::{FragKey, FragTable};
use super::handover::{FlowRecord, HandoverError, Origin, RestoreReport};
use super::tables::{Snapshot, TaskId};
use crate::wire::ethernet;
use crate::wire::ipv4::{self, protocol};
use crate::wire::{MacAddr, tcp, udp, vxlan};
use crossbeam::queue::ArrayQueue;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

mod answer;
mod client6;
mod forward;
mod fragment;
mod nat;
mod parse;
mod reply;
mod track;

#[cfg(test)]
mod fragment_tests;
#[cfg(test)]
mod health_tests;
#[cfg(test)]
mod tests;

use answer::{Reset, emit_reset};
pub use client6::icmp4_to_6;
pub use forward::{encapsulate, flow_hash, flow_hash6, vxlan_source_port};
use nat::deltas_of;
use parse::classify;
use reply::local_reply;
use track::release_shared;

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

    /// Makes the frame the `len` bytes at `off`, its Ethernet header the
    /// old one's addresses with `ethertype`: an IP header translated in
    /// place changed size (IPv4 and IPv6). The addresses are copied as one
    /// 12-byte value: `copy_within` called `memmove`.
    #[inline(always)]
    pub(super) fn move_ethernet(
        &mut self,
        off: usize,
        len: usize,
        ethertype: u16,
    ) -> Result<(), DropReason> {
        const MACS: usize = 2 * 6;
        let Some(&macs) = self
            .buf
            .get(self.off..)
            .and_then(|b| b.first_chunk::<MACS>())
        else {
            return Err(DropReason::Truncated);
        };
        let Some(eth) = self
            .buf
            .get_mut(off..off.wrapping_add(len))
            .and_then(|b| b.first_chunk_mut::<{ ethernet::HEADER_LEN }>())
        else {
            return Err(DropReason::NoHeadroom);
        };
        eth[..MACS].copy_from_slice(&macs);
        eth[MACS..].copy_from_slice(&ethertype.to_be_bytes());
        (self.off, self.len) = (off, len);
        Ok(())
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
    /// As [`Verdict::Transmit`], and then a second frame of `n` bytes,
    /// written in the buffer right behind the first: a packet above the
    /// overlay's MTU split in two fragments. The worker copies the second
    /// into a frame of its own. (Two variants of a `u16` keep a verdict
    /// in 4 bytes: a wider one cost every packet instructions.)
    Split(u16),
    /// As [`Verdict::Split`], both frames for the ingress sandbox's
    /// interface ([`Verdict::Local`]).
    SplitLocal(u16),
    Drop(DropReason),
}

/// Bytes of headroom a frame needs for encapsulation.
pub const HEADROOM: usize = vxlan::ENCAP_LEN;

const ETH: usize = ethernet::HEADER_LEN;
const IP: usize = ipv4::HEADER_LEN;

/// Offsets inside a VXLAN frame.
const VX_UDP: usize = ETH + IP;
const VX_HDR: usize = VX_UDP + udp::HEADER_LEN;
const INNER: usize = VX_HDR + vxlan::HEADER_LEN;
const INNER_IP: usize = INNER + ETH;

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
    /// For the next new flow only (`forward::new_flow` takes it).
    retry: Retry,
    /// Datagrams in fragments on their way ([`fragment`]).
    frags: FragTable,
    /// The datagram whose first fragment is being forwarded: entered in
    /// `frags` once its flow is known (`fragment::enter`).
    first_fragment: Option<FragKey>,
}

/// What an ended flow of a client port leaves its next flow: set where a
/// SYN ends it (`forward::syn_ends`), taken by the new flow.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// The task index to schedule away from ([`NO_TASK`]: none).
    avoid: u32,
    /// The connection had a task's reset held back already
    /// (`crate::dataplane::health`).
    held: bool,
}

impl Retry {
    const NONE: Retry = Retry {
        avoid: NO_TASK,
        held: false,
    };
}

/// No task: a [`Retry`] with nothing to avoid.
const NO_TASK: u32 = u32::MAX;

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
                retry: Retry::NONE,
                frags: FragTable::new(),
                first_fragment: None,
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

    /// Fixes the flow table's seed while it is empty
    /// ([`FlowTable::set_seed`]).
    pub fn set_flow_seed(&mut self, seed: u64) {
        self.st.flows.set_seed(seed);
        self.st.frags.set_seed(seed);
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
        let mut report = RestoreReport::default();
        for r in records {
            let Some(ti) = record_task(snap, r) else {
                report.task_gone += 1;
                continue;
            };
            let task = &snap.tasks[ti as usize];
            let c6 = r.client6.map(|(a, mac)| (a.octets(), mac));
            let flow = record_flow(snap, st, r, ti, c6);
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

    /// Expires idle flows, examining up to `budget` table slots and
    /// removing `max_removed` flows at most.
    pub fn expire(&mut self, (budget, max_removed): (usize, usize)) -> usize {
        let snap = &*self.snap;
        let t = snap.timeouts;
        let st = &mut self.st;
        let gen32 = st.gen32;
        let n = st.flows.sweep(
            st.now,
            (budget, max_removed),
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
    /// accepts (RFC 9293 3.10.7, RFC 5961): an RST at the next sequence
    /// number the task would send. False when the flow is not TCP, already
    /// reset, still in SYN-SENT, or the client's next hop is unknown.
    ///
    /// A connection in SYN-SENT has nothing to lose yet: its client's
    /// retransmitted SYN starts a new flow to a task that runs (or is
    /// refused when none does), where a reset would fail a connection that
    /// one retransmission saves (a killed task's, `docker kill`).
    pub fn reset_for_flow(&mut self, flow: &Flow, f: &mut FrameBuf<'_>) -> bool {
        // An ended flow no longer has its IPv6 client's address at hand: its
        // client learns from its next segment's reset (`tcp_no_flow`).
        if flow.key.protocol != protocol::TCP
            || matches!(flow.state, FlowState::Closed | FlowState::SynSent)
            || flow.key.v6
        {
            return false;
        }
        let snap = &*self.snap;
        let mac = if flow.client_mac_valid {
            Some(MacAddr(flow.client_mac))
        } else {
            snap.neighbours.mac_for(flow.key.client)
        };
        let Some(mac) = mac else { return false };
        let reset = Reset {
            seq: flow.task_next,
            ack: 0,
            flags: tcp::flags::RST,
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
            Verdict::Transmit | Verdict::Local | Verdict::Split(_) | Verdict::SplitLocal(_) => {}
            Verdict::Handoff(_) => self.st.events.handoffs += 1,
            Verdict::Drop(r) => self.st.drops.inc(r),
        }
        v
    }
}

/// The task of a handed-over flow's record in this snapshot: its published
/// port still maps to its target port, and its task is still among the
/// service's tasks.
fn record_task(snap: &Snapshot, r: &FlowRecord) -> Option<u32> {
    let port = snap.ports.get(r.protocol, r.published)?;
    if port.target != r.target {
        return None;
    }
    let svc = &snap.services[port.service as usize];
    svc.tasks
        .iter()
        .copied()
        .find(|&i| snap.tasks[i as usize].addr == r.task)
}

/// A handed-over flow's record as this worker's flow to task `ti`: its
/// checksum deltas made again from this node's identity, its clock set
/// back by the time it had been idle.
fn record_flow(
    snap: &Snapshot,
    st: &State,
    r: &FlowRecord,
    ti: u32,
    c6: Option<([u8; 16], [u8; 6])>,
) -> Flow {
    let task = &snap.tasks[ti as usize];
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
    let mut flow = Flow {
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
        delta_addrs: 0,
        delta_l4: 0,
        preserve: r.preserve,
        held_reset: false,
    };
    (flow.delta_addrs, flow.delta_l4) = deltas_of(
        &snap.identity,
        &key,
        (r.preserve, r.snat_port),
        (task.node_to_task, r.target),
        c6.as_ref().map_or(&[0; 16], |(a, _)| a),
    );
    flow
}
