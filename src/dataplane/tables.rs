//! Immutable forwarding tables: one [`Snapshot`] is everything a worker needs
//! to forward a frame, built by the control thread and shared read-only.
//!
//! Invariants:
//! - a snapshot never changes after it is built; a change of configuration,
//!   tasks or neighbours is a new snapshot with a larger `generation`;
//! - task and service identities ([`TaskId`], [`ServiceId`]) and the shared
//!   per-task state ([`TaskShared`]) outlive snapshots: the [`Registry`] hands
//!   out the same id and the same `Arc` for the same (service, task address)
//!   for as long as the task exists, so flows survive unrelated changes;
//! - `tasks[i].outer` is `Some` only when the task node's next-hop MAC is
//!   known; the template then holds a complete, checksummed outer header for
//!   an empty payload. A task on this node (`local`) has no outer header:
//!   its frames go out of the ingress sandbox's interface, never in VXLAN,
//!   and its node is not a VTEP.

use super::desc::{
    ClientIp, Ipv4Net, OutlierDetection, Protocol, Scheduler, Service, TableDesc, Timeouts,
};
use super::health::TaskHealth;
use super::sched::SchedTable;
use crate::wire::{MacAddr, checksum, ethernet, ipv4, udp, vxlan};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Stable identity of a task across snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u32);

/// Stable identity of a service across snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u32);

/// State of a task shared by all workers: flow counts by IPVS's definition
/// (active = established TCP, inactive = everything else). Updated with one
/// atomic add per flow event (never per packet).
#[derive(Debug, Default)]
pub struct TaskShared {
    pub active: AtomicU32,
    pub inactive: AtomicU32,
    /// Flows ever created for the task. A worker counts a new flow here
    /// before it adds it to `inactive` (Release), so a reader that loads
    /// the two states first (Acquire) never sees more flows than created.
    pub created: AtomicU64,
    /// Passive health: what the task's answers to new connections said.
    pub health: TaskHealth,
}

impl TaskShared {
    /// (active, inactive, created) as one consistent view: views that show
    /// them side by side must never show more flows than were created.
    pub fn counts(&self) -> (u32, u32, u64) {
        let active = self.active.load(Ordering::Acquire);
        let inactive = self.inactive.load(Ordering::Acquire);
        (active, inactive, self.created.load(Ordering::Relaxed))
    }

    /// Active flows plus inactive ones, the load `lc` balances.
    pub fn load(&self) -> u32 {
        self.active
            .load(Ordering::Relaxed)
            .saturating_add(self.inactive.load(Ordering::Relaxed))
    }
}

/// State of a service shared by all workers and snapshots: the round-robin
/// cursor (one atomic add per new flow, so that round robin is exact across
/// workers as IPVS's is).
#[derive(Debug, Default)]
pub struct ServiceShared {
    pub cursor: AtomicU64,
    /// Taken while a worker ejects one of the service's tasks
    /// ([`super::health`]).
    pub ejecting: AtomicBool,
}

/// Outer headers for one task: Ethernet to the next hop of the task's node,
/// IPv4 node -> node, UDP to the overlay port, VXLAN, and the inner Ethernet
/// header from the sandbox to the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OuterTemplate {
    /// The outer IPv4 header has total length 0 and the checksum that
    /// goes with it: both are patched per frame (the checksum by the
    /// length alone, RFC 1624).
    pub bytes: [u8; OUTER_TEMPLATE_LEN],
}

/// Outer Ethernet + IPv4 + UDP + VXLAN + inner Ethernet.
pub const OUTER_TEMPLATE_LEN: usize = vxlan::ENCAP_LEN + ethernet::HEADER_LEN;

/// TTL of the outer IPv4 header, as the Linux VXLAN driver uses by default.
pub const OUTER_TTL: u8 = 64;

/// A VXLAN tunnel from this node to a task's node (its VTEP), as the
/// outer headers name it.
#[derive(Debug, Clone, Copy)]
pub struct Tunnel {
    /// This node's MAC and the next hop's towards the VTEP.
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// This node's underlay address and the VTEP's.
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The VXLAN UDP port and the overlay's VNI.
    pub port: u16,
    pub vni: u32,
}

impl OuterTemplate {
    /// The headers in front of an inner frame from `inner_src` to
    /// `inner_dst` (overlay MACs) carried through `tunnel`.
    pub fn new(tunnel: &Tunnel, inner_src: MacAddr, inner_dst: MacAddr) -> Self {
        let Tunnel {
            src_mac,
            dst_mac,
            src,
            dst,
            port,
            vni,
        } = *tunnel;
        let mut b = [0u8; OUTER_TEMPLATE_LEN];
        ethernet::Repr {
            src: src_mac,
            dst: dst_mac,
            ethertype: ethernet::ethertype::IPV4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut b[..]));
        let ip_off = ethernet::HEADER_LEN;
        // The outer datagram is atomic (DF, identification 0, RFC 6864):
        // meshgate never sends an inner packet larger than the overlay MTU,
        // so the outer one always fits the underlay.
        let mut ip = ipv4::Packet::new_unchecked(&mut b[ip_off..ip_off + ipv4::HEADER_LEN]);
        ipv4::Repr {
            src,
            dst,
            protocol: ipv4::protocol::UDP,
            payload_len: 0,
            ttl: OUTER_TTL,
            ident: 0,
            dont_frag: true,
            dscp_ecn: 0,
        }
        .emit(&mut ip);
        ip.set_total_len(0);
        ip.fill_checksum();
        let udp_off = ip_off + ipv4::HEADER_LEN;
        udp::Repr {
            src_port: 0,
            dst_port: port,
            payload_len: 0,
        }
        .emit(
            &mut udp::Packet::new_unchecked(&mut b[udp_off..udp_off + udp::HEADER_LEN]),
            None,
        );
        let vx_off = udp_off + udp::HEADER_LEN;
        vxlan::Repr { vni }.emit(&mut vxlan::Packet::new_unchecked(
            &mut b[vx_off..vx_off + vxlan::HEADER_LEN],
        ));
        let in_off = vx_off + vxlan::HEADER_LEN;
        ethernet::Repr {
            src: inner_src,
            dst: inner_dst,
            ethertype: ethernet::ethertype::IPV4,
        }
        .emit(&mut ethernet::Frame::new_unchecked(&mut b[in_off..]));
        OuterTemplate { bytes: b }
    }
}

/// A task as the data plane sees it.
#[derive(Debug, Clone)]
pub struct TaskEntry {
    pub id: TaskId,
    /// Index of the service in `Snapshot::services`.
    pub service: u32,
    pub addr: Ipv4Addr,
    pub mac: MacAddr,
    /// Underlay address of the task's node (its VTEP).
    pub node: Ipv4Addr,
    pub weight: u32,
    pub outer: Option<OuterTemplate>,
    /// Runs on this node: reached through the ingress sandbox's interface.
    pub local: bool,
    /// New flows of a preserving service keep the client's address.
    pub preserve: bool,
    /// The node's address changed to the task's
    /// (`wire::checksum::addr_change_ne`): the half of a flow's address
    /// delta that every flow to the task shares, summed once here rather
    /// than per new flow (`pipeline::nat::flow_deltas`).
    pub node_to_task: u32,
    pub shared: Arc<TaskShared>,
}

impl TaskEntry {
    /// Whether frames can reach the task now: on this node, or its node's
    /// next-hop MAC is known. Schedulers choose only reachable tasks.
    #[inline]
    pub fn reachable(&self) -> bool {
        self.local || self.outer.is_some()
    }

    /// Whether the task takes new flows at all: weight above 0 (not
    /// draining) and reachable. Its service's scheduler table holds
    /// exactly these.
    #[inline]
    pub fn eligible(&self) -> bool {
        self.weight > 0 && self.reachable()
    }
}

/// A published port: which service and which target port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortEntry {
    pub service: u32,
    pub target: u16,
}

/// Published ports, indexed directly by (TCP or UDP, port): one load per
/// packet instead of a hash lookup. 512 KiB per snapshot. A fixed-size
/// array, so that the lookup needs no bounds check.
#[derive(Clone)]
pub struct PortTable(Box<[u32; PORT_SLOTS]>);

/// One slot per TCP port, then one per UDP port.
const PORT_SLOTS: usize = 2 << 16;

impl std::fmt::Debug for PortTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PortTable({} ports)",
            self.0.iter().filter(|&&e| e != 0).count()
        )
    }
}

impl Default for PortTable {
    fn default() -> Self {
        let slots: Box<[u32]> = vec![0u32; PORT_SLOTS].into_boxed_slice();
        PortTable(slots.try_into().expect("PORT_SLOTS entries"))
    }
}

impl PortTable {
    /// Slot of (protocol, port); `None` for protocols other than TCP and UDP.
    #[inline]
    fn slot(protocol: u8, port: u16) -> Option<usize> {
        match protocol {
            ipv4::protocol::TCP => Some(usize::from(port)),
            ipv4::protocol::UDP => Some((1 << 16) | usize::from(port)),
            _ => None,
        }
    }

    /// Entries hold (service index + 1) in the high half and the target port
    /// in the low half; zero is "not published".
    pub fn insert(&mut self, protocol: u8, port: u16, e: PortEntry) {
        assert!(e.service < 0xffff, "service index fits 16 bits");
        let s = Self::slot(protocol, port).expect("TCP or UDP");
        self.0[s] = ((e.service + 1) << 16) | u32::from(e.target);
    }

    #[inline]
    pub fn get(&self, protocol: u8, port: u16) -> Option<PortEntry> {
        let e = *self.0.get(Self::slot(protocol, port)?)?;
        (e != 0).then(|| PortEntry {
            service: (e >> 16) - 1,
            target: e as u16,
        })
    }
}

impl ServiceEntry {
    /// The source address new flows to its task `t` carry: `snat`,
    /// `preserve`, or `snat-fallback` (the service keeps clients'
    /// addresses, but `t`'s node has no return path to this node).
    pub fn client_ip_of(&self, t: &TaskEntry) -> &'static str {
        match (self.client_ip, t.preserve) {
            (ClientIp::Snat, _) => "snat",
            (ClientIp::Preserve, true) => "preserve",
            (ClientIp::Preserve, false) => "snat-fallback",
        }
    }
}

/// A service as the data plane sees it.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    pub id: ServiceId,
    pub name: Arc<str>,
    /// Swarm's firewall mark for the service: 0x100 + its index.
    pub mark: u32,
    pub scheduler: Scheduler,
    pub client_ip: ClientIp,
    /// Passive health checks the service's tasks ([`super::health`]).
    pub outlier_detection: OutlierDetection,
    /// Indices into `Snapshot::tasks` of all the service's tasks.
    pub tasks: Vec<u32>,
    pub sched: SchedTable,
    pub shared: Arc<ServiceShared>,
}

/// A route of the ingress interface, for the reply path's next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
}

/// The kernel's view of the ingress interface's neighbours and routes.
#[derive(Debug, Clone, Default)]
pub struct Neighbours {
    pub entries: hashbrown::HashMap<Ipv4Addr, MacAddr>,
    /// Longest prefix first.
    pub routes: Vec<Route>,
}

impl Neighbours {
    pub fn insert_route(&mut self, r: Route) {
        self.routes.push(r);
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.dst.prefix_len));
    }

    /// The address whose MAC a frame to `dst` goes to: the gateway of the
    /// longest matching route, or `dst` itself when on-link (or when no route
    /// matches, so that a missing route shows as a missing neighbour).
    pub fn next_hop(&self, dst: Ipv4Addr) -> Ipv4Addr {
        for r in &self.routes {
            if r.dst.contains(dst) {
                return r.gateway.unwrap_or(dst);
            }
        }
        dst
    }

    /// The MAC of the next hop towards `dst`, when the kernel knows it.
    #[inline]
    pub fn mac_for(&self, dst: Ipv4Addr) -> Option<MacAddr> {
        self.entries.get(&self.next_hop(dst)).copied()
    }
}

/// Timeouts in worker ticks (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutTicks {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub tcp_close: u32,
    pub udp: u32,
}

impl From<Timeouts> for TimeoutTicks {
    fn from(t: Timeouts) -> Self {
        let ms = |s: u32| s.saturating_mul(1000);
        TimeoutTicks {
            tcp_syn: ms(t.tcp_syn),
            tcp_established: ms(t.tcp_established),
            tcp_closing: ms(t.tcp_closing),
            tcp_close: ms(t.tcp_close),
            udp: ms(t.udp),
        }
    }
}

/// This node's identity on the underlay and on the ingress overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub node_addr: Ipv4Addr,
    /// Published ports answer IPv6 clients here (`None`: IPv4 only).
    pub node_addr6: Option<std::net::Ipv6Addr>,
    /// MAC of the ingress interface.
    pub node_mac: MacAddr,
    pub overlay_addr: Ipv4Addr,
    pub overlay_mac: MacAddr,
    pub vni: u32,
    pub vxlan_port: u16,
    /// Largest inner IPv4 packet (the overlay MTU).
    pub overlay_mtu: u16,
    /// How translated TCP and UDP checksums are made.
    pub l4_checksum: L4Checksum,
    /// The same for frames from the ingress sandbox's interface (a veth:
    /// its tasks' frames may carry partial checksums).
    pub sandbox_l4_checksum: L4Checksum,
}

/// How the pipeline makes the TCP and UDP checksums of the packets it
/// translates.
///
/// A NIC hands over frames with complete checksums, which an incremental
/// update (RFC 1624) keeps right. A veth does not: it passes on the
/// sending stack's transmit offload, so a frame may arrive with
/// `CHECKSUM_PARTIAL`, its checksum field holding only the folded sum of
/// the pseudo-header for a NIC that never comes, and XDP is not told. An
/// update of that is garbage, which the receiver drops; a full sum is
/// right either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum L4Checksum {
    /// RFC 1624 update by the flow's constant delta.
    #[default]
    Incremental,
    /// A field that holds exactly the pseudo-header's sum is partial and
    /// is summed anew; any other is updated, so that a corrupt checksum
    /// stays corrupt (a complete checksum equal to that value, 1 in 65 536,
    /// is summed anew too, which is harmless when it was right).
    CompletePartial,
    /// Summed anew over the whole segment.
    Full,
}

/// Everything a worker reads to forward a frame.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub generation: u64,
    pub identity: Identity,
    pub timeouts: TimeoutTicks,
    /// Published ports by (IP protocol, port).
    pub ports: PortTable,
    pub services: Vec<ServiceEntry>,
    pub tasks: Vec<TaskEntry>,
    pub task_index: hashbrown::HashMap<TaskId, u32>,
    /// Next-hop MAC of each task node (VTEP) that runs a task; `None` while unresolved.
    pub vteps: hashbrown::HashMap<Ipv4Addr, Option<MacAddr>>,
    pub neighbours: Arc<Neighbours>,
}

/// Stable identities and shared state, kept by the control thread across
/// snapshots.
#[derive(Debug, Default)]
pub struct Registry {
    services: std::collections::BTreeMap<String, (ServiceId, u32, Arc<ServiceShared>)>,
    tasks: std::collections::BTreeMap<(ServiceId, Ipv4Addr), (TaskId, Arc<TaskShared>)>,
    next_service: u32,
    next_task: u32,
}

impl Registry {
    /// The id, mark and shared state of service `name`; a new service gets
    /// the lowest free mark from 0x100 up, as Swarm numbers them.
    fn service(&mut self, name: &str) -> (ServiceId, u32, Arc<ServiceShared>) {
        if let Some(s) = self.services.get(name) {
            return s.clone();
        }
        let used: std::collections::BTreeSet<u32> = self.services.values().map(|s| s.1).collect();
        let mark = (0x100..)
            .find(|m| !used.contains(m))
            .expect("fewer than 2^32 services");
        let id = ServiceId(self.next_service);
        self.next_service += 1;
        let v = (id, mark, Arc::new(ServiceShared::default()));
        self.services.insert(name.to_string(), v.clone());
        v
    }

    fn task(&mut self, service: ServiceId, addr: Ipv4Addr) -> (TaskId, Arc<TaskShared>) {
        if let Some(t) = self.tasks.get(&(service, addr)) {
            return t.clone();
        }
        let id = TaskId(self.next_task);
        self.next_task += 1;
        let v = (id, Arc::new(TaskShared::default()));
        self.tasks.insert((service, addr), v.clone());
        v
    }

    /// Forgets services and tasks that are not in `services`, so that a
    /// task that comes back later is a new task (its old flows ended with it).
    fn retain(&mut self, services: &[Service]) {
        let names: std::collections::HashSet<&str> =
            services.iter().map(|s| s.name.as_str()).collect();
        self.services.retain(|n, _| names.contains(n.as_str()));
        let live: std::collections::HashSet<(ServiceId, Ipv4Addr)> = services
            .iter()
            .filter_map(|s| self.services.get(&s.name).map(|v| (v.0, s)))
            .flat_map(|(id, s)| s.tasks.iter().map(move |t| (id, t.address)))
            .collect();
        self.tasks.retain(|k, _| live.contains(k));
    }
}

/// Facts about the ingress interface that the configuration does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub mac: MacAddr,
    /// What the interface's frames need (see [`L4Checksum`]).
    pub l4_checksum: L4Checksum,
    /// What the ingress sandbox's interface's frames need.
    pub sandbox_l4_checksum: L4Checksum,
}

impl Identity {
    /// The node's identity in the tables: from the description and the
    /// interface's facts.
    fn of(cfg: &TableDesc<'_>, link: &LinkInfo) -> Identity {
        Identity {
            node_addr: cfg.node_addr,
            node_addr6: cfg.node_addr6,
            node_mac: link.mac,
            overlay_addr: cfg.overlay_addr,
            overlay_mac: cfg.overlay_mac,
            vni: cfg.vni,
            vxlan_port: cfg.vxlan_port,
            overlay_mtu: cfg.overlay_mtu,
            l4_checksum: link.l4_checksum,
            sandbox_l4_checksum: link.sandbox_l4_checksum,
        }
    }
}

/// The outer headers to task `t` on another node, whose MAC is `vtep_mac`.
fn outer_template(
    cfg: &TableDesc<'_>,
    link: &LinkInfo,
    t: &super::desc::Task,
    vtep_mac: MacAddr,
) -> OuterTemplate {
    let tunnel = Tunnel {
        src_mac: link.mac,
        dst_mac: vtep_mac,
        src: cfg.node_addr,
        dst: t.node,
        port: cfg.vxlan_port,
        vni: cfg.vni,
    };
    OuterTemplate::new(&tunnel, cfg.overlay_mac, t.mac)
}

impl Snapshot {
    /// Builds the tables for `cfg`. Marks follow the services' order in the
    /// description for services the registry has not seen before.
    pub fn build(
        cfg: &TableDesc<'_>,
        link: LinkInfo,
        neighbours: Arc<Neighbours>,
        registry: &mut Registry,
        generation: u64,
    ) -> Snapshot {
        registry.retain(cfg.services);
        let identity = Identity::of(cfg, &link);
        let mut ports = PortTable::default();
        let mut services = Vec::with_capacity(cfg.services.len());
        let mut tasks: Vec<TaskEntry> = Vec::new();
        let mut task_index = hashbrown::HashMap::new();
        let mut vteps = hashbrown::HashMap::new();
        for (si, s) in cfg.services.iter().enumerate() {
            let (sid, mark, shared) = registry.service(&s.name);
            for p in &s.publish {
                ports.insert(
                    p.protocol.number(),
                    p.published,
                    PortEntry {
                        service: si as u32,
                        target: p.target,
                    },
                );
            }
            let mut members = Vec::with_capacity(s.tasks.len());
            for t in &s.tasks {
                let (tid, tshared) = registry.task(sid, t.address);
                let local = t.node == cfg.node_addr;
                let vtep_mac = if local {
                    None
                } else {
                    let m = neighbours.mac_for(t.node);
                    vteps.insert(t.node, m);
                    m
                };
                let outer = vtep_mac.map(|m| outer_template(cfg, &link, t, m));
                let idx = tasks.len() as u32;
                task_index.insert(tid, idx);
                members.push(idx);
                tasks.push(TaskEntry {
                    id: tid,
                    service: si as u32,
                    addr: t.address,
                    mac: t.mac,
                    node: t.node,
                    weight: t.weight,
                    outer,
                    local,
                    preserve: s.client_ip == ClientIp::Preserve && t.return_path,
                    node_to_task: checksum::addr_change_ne(cfg.node_addr, t.address),
                    shared: tshared,
                });
            }
            let sched = SchedTable::build(s.scheduler, &members, &tasks);
            services.push(ServiceEntry {
                id: sid,
                name: s.name.as_str().into(),
                mark,
                scheduler: s.scheduler,
                client_ip: s.client_ip,
                outlier_detection: s.outlier_detection,
                tasks: members,
                sched,
                shared,
            });
        }
        Snapshot {
            generation,
            identity,
            timeouts: cfg.timeouts.into(),
            ports,
            services,
            tasks,
            task_index,
            vteps,
            neighbours,
        }
    }

    /// The service publishing `port` over `protocol`.
    pub fn service_for(&self, protocol: Protocol, port: u16) -> Option<&ServiceEntry> {
        self.ports
            .get(protocol.number(), port)
            .map(|p| &self.services[p.service as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;

    #[test]
    fn template_is_a_valid_header() {
        let tunnel = Tunnel {
            src_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 11]),
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 0, 11),
            port: 4789,
            vni: 4096,
        };
        let t = OuterTemplate::new(
            &tunnel,
            MacAddr::docker(Ipv4Addr::new(198, 18, 128, 2)),
            MacAddr::docker(Ipv4Addr::new(198, 18, 128, 4)),
        );
        // With the real total length patched in incrementally, the header
        // checksum equals a full recomputation.
        let mut b = t.bytes;
        let total = 20 + 8 + 8 + 14 + 40u16;
        b[16..18].copy_from_slice(&total.to_be_bytes());
        let c = u16::from_be_bytes([b[24], b[25]]);
        b[24..26].copy_from_slice(&checksum::update16(c, 0, total).to_be_bytes());
        let (ip, _) = etherparse::Ipv4Header::from_slice(&b[14..]).unwrap();
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert!(ip.dont_fragment);
        assert_eq!(ip.time_to_live, OUTER_TTL);
        assert_eq!(&b[42..50], &[0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0]);
        assert_eq!(&b[36..38], &4789u16.to_be_bytes());
    }

    #[test]
    fn port_table() {
        let mut t = PortTable::default();
        t.insert(
            6,
            8080,
            PortEntry {
                service: 0,
                target: 80,
            },
        );
        t.insert(
            17,
            65535,
            PortEntry {
                service: 7,
                target: 1,
            },
        );
        assert_eq!(
            t.get(6, 8080),
            Some(PortEntry {
                service: 0,
                target: 80
            })
        );
        assert_eq!(t.get(17, 8080), None);
        assert_eq!(
            t.get(17, 65535),
            Some(PortEntry {
                service: 7,
                target: 1
            })
        );
        assert_eq!(t.get(1, 8080), None, "ICMP has no ports");
    }

    #[test]
    fn next_hop_uses_longest_route() {
        let mut n = Neighbours::default();
        n.insert_route(Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(198, 18, 0, 254)),
        });
        n.insert_route(Route {
            dst: "198.18.0.0/24".parse().unwrap(),
            gateway: None,
        });
        assert_eq!(
            n.next_hop(Ipv4Addr::new(198, 18, 0, 1)),
            Ipv4Addr::new(198, 18, 0, 1)
        );
        assert_eq!(
            n.next_hop(Ipv4Addr::new(198, 19, 7, 1)),
            Ipv4Addr::new(198, 18, 0, 254)
        );
        n.entries.insert(
            Ipv4Addr::new(198, 18, 0, 254),
            MacAddr([2, 0, 0, 0, 0, 0xfe]),
        );
        assert_eq!(
            n.mac_for(Ipv4Addr::new(198, 19, 7, 1)),
            Some(MacAddr([2, 0, 0, 0, 0, 0xfe]))
        );
        assert_eq!(n.mac_for(Ipv4Addr::new(198, 18, 0, 1)), None);
    }

    /// What the workers do (see `pipeline::track::move_shared` and the flow's
    /// creation) against what a view reads: never more flows than created.
    #[test]
    fn task_counts_never_show_more_flows_than_created() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sh = Arc::new(TaskShared::default());
        let done = Arc::new(AtomicBool::new(false));
        let (w, d) = (sh.clone(), done.clone());
        let writer = std::thread::spawn(move || {
            for i in 0..200_000u32 {
                w.created.fetch_add(1, Ordering::Relaxed);
                w.inactive.fetch_add(1, Ordering::Release);
                if i % 2 == 0 {
                    w.inactive.fetch_sub(1, Ordering::Relaxed);
                    w.active.fetch_add(1, Ordering::Release);
                }
            }
            d.store(true, Ordering::Release);
        });
        while !done.load(Ordering::Acquire) {
            let (a, i, c) = sh.counts();
            assert!(u64::from(a) + u64::from(i) <= c, "{a} + {i} > {c}");
        }
        writer.join().unwrap();
        assert_eq!(sh.counts(), (100_000, 100_000, 200_000));
    }

    #[test]
    fn registry_keeps_ids_and_marks() {
        let cfg = crate::dataplane::fixtures::lab_config();
        let mut reg = Registry::default();
        let link = crate::dataplane::fixtures::lab_link(L4Checksum::Incremental);
        let a = Snapshot::build(&cfg.table_desc(), link, Arc::default(), &mut reg, 1);
        assert_eq!(a.services[0].mark, 0x100);
        let mut cfg2 = cfg.clone();
        cfg2.services[0].tasks.remove(0);
        let b = Snapshot::build(&cfg2.table_desc(), link, Arc::default(), &mut reg, 2);
        // Surviving tasks keep their ids and shared state.
        assert_eq!(b.tasks[0].id, a.tasks[1].id);
        assert!(Arc::ptr_eq(&b.tasks[0].shared, &a.tasks[1].shared));
        assert!(!b.task_index.contains_key(&a.tasks[0].id));
        // A task that comes back is a new task.
        let c = Snapshot::build(&cfg.table_desc(), link, Arc::default(), &mut reg, 3);
        assert_ne!(c.tasks[0].id, a.tasks[0].id);
        assert!(
            c.tasks.iter().all(|t| t.outer.is_none()),
            "no neighbour known yet"
        );
    }
}
