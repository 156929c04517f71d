//! Fixture frames and the table of {input frame, expected output frame,
//! verdict} cases shared by the unit tests, the property tests, the fuzz
//! seeds and the benchmarks.
//!
//! Every frame here is built with `etherparse`, an implementation independent
//! of [`meshgate::wire`], so the expected outputs check meshgate's rewriting
//! byte for byte against a second opinion. The topology is the lab's
//! (`examples/lab.toml`): client 198.18.0.1 -> node 198.18.0.2:8080, tasks
//! 198.18.128.4 and .5 on node 198.18.0.11 and .6 on node 198.18.0.12.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use etherparse::{PacketBuilder, TcpHeader};

use meshgate::config::Config;
use meshgate::dataplane::counters::DropReason;
use meshgate::dataplane::flow::ClientKey;
use meshgate::dataplane::pipeline::{
    FrameBuf, Pipeline, Verdict, flow_hash, flow_hash6, vxlan_source_port,
};
use meshgate::dataplane::tables::{L4Checksum, LinkInfo, Neighbours, Registry, Route, Snapshot};
use meshgate::wire::MacAddr;

pub const LAB_TOML: &str = include_str!("../../examples/lab.toml");

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, 0x01]);
pub const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const NODE_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, 0x02]);
pub const NODE1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
pub const NODE1_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, 0x0b]);
pub const NODE2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
pub const NODE2_MAC: MacAddr = MacAddr([0x02, 0x00, 0xc6, 0x12, 0x00, 0x0c]);
pub const OVERLAY: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 2);
pub const TASKS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 18, 128, 4),
    Ipv4Addr::new(198, 18, 128, 5),
    Ipv4Addr::new(198, 18, 128, 6),
];
pub const PUBLISHED: u16 = 8080;
pub const TARGET: u16 = 80;
pub const VNI: u32 = 4096;
pub const VXLAN_PORT: u16 = 4789;
/// Headroom the fixtures leave in front of a frame, as the UMEM does.
pub const FIXTURE_HEADROOM: usize = 256;
/// Size of a fixture buffer (a UMEM frame).
pub const FIXTURE_FRAME: usize = 2048;

pub fn overlay_mac() -> MacAddr {
    MacAddr::docker(OVERLAY)
}

/// The node (VTEP) that runs task `i`.
pub fn task_node(i: usize) -> (Ipv4Addr, MacAddr) {
    if i < 2 {
        (NODE1, NODE1_MAC)
    } else {
        (NODE2, NODE2_MAC)
    }
}

pub fn lab_config() -> Config {
    Config::parse(LAB_TOML, "examples/lab.toml").expect("the lab configuration is valid")
}

/// The neighbour table the kernel would hold in the lab.
pub fn lab_neighbours() -> Neighbours {
    let mut n = Neighbours::default();
    n.insert_route(Route {
        dst: "198.18.0.0/24".parse().unwrap(),
        gateway: None,
    });
    n.entries.insert(CLIENT, CLIENT_MAC);
    n.entries.insert(NODE1, NODE1_MAC);
    n.entries.insert(NODE2, NODE2_MAC);
    n
}

/// The lab's ingress interface, whose frames need `l4_checksum`.
pub fn lab_link(l4_checksum: L4Checksum) -> LinkInfo {
    LinkInfo {
        mac: NODE_MAC,
        l4_checksum,
        sandbox_l4_checksum: L4Checksum::CompletePartial,
    }
}

pub fn lab_snapshot_for(cfg: &Config) -> Arc<Snapshot> {
    Arc::new(Snapshot::build(
        &cfg.table_desc(),
        lab_link(L4Checksum::Incremental),
        Arc::new(lab_neighbours()),
        &mut Registry::default(),
        1,
    ))
}

pub fn lab_snapshot() -> Arc<Snapshot> {
    lab_snapshot_for(&lab_config())
}

/// A pipeline for worker `worker` of `workers` on the lab tables.
pub fn lab_pipeline(worker: u16, workers: u16) -> Pipeline {
    Pipeline::new(lab_snapshot(), worker, workers, 1 << 16, (1024, 65535))
}

/// TCP flags for fixture segments.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

pub const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
    psh: false,
};
pub const SYN_ACK: Flags = Flags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
    psh: false,
};
pub const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
    psh: false,
};
pub const PSH_ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
    psh: true,
};
pub const FIN_ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
    psh: false,
};

fn tcp_header(sport: u16, dport: u16, seq: u32, ack: u32, f: Flags) -> TcpHeader {
    let mut h = TcpHeader::new(sport, dport, seq, 64240);
    h.syn = f.syn;
    h.ack = f.ack;
    h.fin = f.fin;
    h.rst = f.rst;
    h.psh = f.psh;
    h.acknowledgment_number = ack;
    h
}

/// A TCP segment from `src` to `dst`, as an Ethernet frame.
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    smac: MacAddr,
    dmac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac.0, dmac.0)
        .ipv4(src.octets(), dst.octets(), ttl)
        .tcp_header(tcp_header(sport, dport, seq, ack, f));
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("fixture frame");
    v
}

/// A UDP datagram from `src` to `dst`, as an Ethernet frame.
#[allow(clippy::too_many_arguments)]
pub fn udp_frame(
    smac: MacAddr,
    dmac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac.0, dmac.0)
        .ipv4(src.octets(), dst.octets(), ttl)
        .udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("fixture frame");
    v
}

/// Wraps `inner` in VXLAN from `src` to `dst` (outer UDP checksum 0, DF,
/// identification 0, TTL 64), as meshgate and the Linux driver send it.
pub fn vxlan_frame(
    smac: MacAddr,
    dmac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    vni: u32,
    inner: &[u8],
) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&vni.to_be_bytes()[1..]);
    payload.push(0);
    payload.extend_from_slice(inner);
    let b = PacketBuilder::ethernet2(smac.0, dmac.0)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, VXLAN_PORT);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).expect("fixture frame");
    // VXLAN senders leave the outer UDP checksum out (RFC 7348 section 5).
    v[40] = 0;
    v[41] = 0;
    v
}

/// `inner` in VXLAN from this node to task `task`'s node, as meshgate sends
/// a frame of the client's flow (`sport`, IP protocol `protocol`).
fn in_vxlan_to_task(task: usize, sport: u16, protocol: u8, inner: &[u8]) -> Vec<u8> {
    let (node, mac) = task_node(task);
    let sport = vxlan_source_port(flow_hash(&key(sport, protocol)));
    vxlan_frame(NODE_MAC, mac, NODE, node, sport, VNI, inner)
}

/// `inner` in VXLAN from task `task`'s node to this node, as the Linux
/// driver sends it (source port arbitrary).
fn in_vxlan_from_task(task: usize, inner: &[u8]) -> Vec<u8> {
    let (node, mac) = task_node(task);
    vxlan_frame(mac, NODE_MAC, node, NODE, 51234, VNI, inner)
}

/// A reset meshgate sends a client from the published port (window 0).
pub fn reset_to_client(client_port: u16, seq: u32, ack: u32, f: Flags) -> Vec<u8> {
    let mut h = tcp_header(PUBLISHED, client_port, seq, ack, f);
    h.window_size = 0;
    let b = PacketBuilder::ethernet2(NODE_MAC.0, CLIENT_MAC.0)
        .ipv4(NODE.octets(), CLIENT.octets(), 64)
        .tcp_header(h);
    let mut v = Vec::with_capacity(b.size(0));
    b.write(&mut v, b"").expect("fixture frame");
    v
}

/// A client segment to the published port.
pub fn client_tcp(sport: u16, seq: u32, ack: u32, f: Flags, payload: &[u8]) -> Vec<u8> {
    tcp_frame(
        CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, sport, PUBLISHED, seq, ack, f, payload,
    )
}

/// A client datagram to the published port.
pub fn client_udp(sport: u16, payload: &[u8]) -> Vec<u8> {
    udp_frame(
        CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, sport, PUBLISHED, payload,
    )
}

fn key(sport: u16, protocol: u8) -> ClientKey {
    ClientKey {
        client: CLIENT,
        client_port: sport,
        published: PUBLISHED,
        protocol,
        v6: false,
    }
}

/// What meshgate must send to task `task` for `client_tcp(sport, ...)`
/// when the flow's SNAT port is `snat`.
pub fn expected_forward_tcp(
    task: usize,
    sport: u16,
    snat: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let inner = to_task_tcp(TASKS[task], snat, seq, ack, f, payload);
    in_vxlan_to_task(task, sport, 6, &inner)
}

pub fn expected_forward_udp(task: usize, sport: u16, snat: u16, payload: &[u8]) -> Vec<u8> {
    let inner = udp_frame(
        overlay_mac(),
        MacAddr::docker(TASKS[task]),
        OVERLAY,
        TASKS[task],
        63,
        snat,
        TARGET,
        payload,
    );
    in_vxlan_to_task(task, sport, 17, &inner)
}

/// A task's TCP reply to the sandbox, inside VXLAN from its node, as the
/// Linux VXLAN driver would send it (source port arbitrary).
pub fn task_reply_tcp(
    task: usize,
    snat: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let inner = from_task_tcp(TASKS[task], snat, seq, ack, f, payload);
    in_vxlan_from_task(task, &inner)
}

pub fn task_reply_udp(task: usize, snat: u16, payload: &[u8]) -> Vec<u8> {
    let inner = from_task_udp(TASKS[task], snat, payload);
    in_vxlan_from_task(task, &inner)
}

/// What the client must receive for `task_reply_tcp`.
pub fn expected_reply_tcp(
    client_port: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    tcp_frame(
        NODE_MAC,
        CLIENT_MAC,
        NODE,
        CLIENT,
        63,
        PUBLISHED,
        client_port,
        seq,
        ack,
        f,
        payload,
    )
}

pub fn expected_reply_udp(client_port: u16, payload: &[u8]) -> Vec<u8> {
    udp_frame(
        NODE_MAC,
        CLIENT_MAC,
        NODE,
        CLIENT,
        63,
        PUBLISHED,
        client_port,
        payload,
    )
}

/// What meshgate must send back for a too-big client packet `frame`: ICMP
/// "fragmentation needed" quoting its first 64 bytes.
pub fn frag_needed_to_client(frame: &[u8], mtu: u16) -> Vec<u8> {
    let quote = &frame[14..14 + 64];
    let b = PacketBuilder::ethernet2(NODE_MAC.0, CLIENT_MAC.0)
        .ipv4(NODE.octets(), CLIENT.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ));
    let mut v = Vec::new();
    b.write(&mut v, quote).expect("fixture frame");
    v
}

/// A task's ICMP "port unreachable" about the packet `quoted` (an IPv4
/// packet as the task received it), in VXLAN from its node.
pub fn task_icmp_unreachable(task: usize, quoted: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MacAddr::docker(TASKS[task]).0, overlay_mac().0)
        .ipv4(TASKS[task].octets(), OVERLAY.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
    let mut inner = Vec::new();
    b.write(&mut inner, quoted).expect("fixture frame");
    in_vxlan_from_task(task, &inner)
}

/// The client's view of `task_icmp_unreachable`: from the node address,
/// quoting `quoted` (the client's own packet as it would have arrived).
pub fn icmp_unreachable_to_client(quoted: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(NODE_MAC.0, CLIENT_MAC.0)
        .ipv4(NODE.octets(), CLIENT.octets(), 63)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
    let mut v = Vec::new();
    b.write(&mut v, quoted).expect("fixture frame");
    v
}

/// An ARP request for the sandbox address from task `task`, in VXLAN.
pub fn task_arp_request(task: usize) -> Vec<u8> {
    let inner = arp_frame(
        MacAddr::docker(TASKS[task]),
        MacAddr::BROADCAST,
        1,
        MacAddr::docker(TASKS[task]),
        TASKS[task],
        MacAddr::ZERO,
        OVERLAY,
    );
    in_vxlan_from_task(task, &inner)
}

/// The answer meshgate must send back for `task_arp_request(task)`.
pub fn expected_arp_reply(task: usize) -> Vec<u8> {
    let inner = arp_frame(
        overlay_mac(),
        MacAddr::docker(TASKS[task]),
        2,
        overlay_mac(),
        OVERLAY,
        MacAddr::docker(TASKS[task]),
        TASKS[task],
    );
    let (node, mac) = task_node(task);
    vxlan_frame(NODE_MAC, mac, NODE, node, 51234, VNI, &inner)
}

#[allow(clippy::too_many_arguments)]
pub fn arp_frame(
    smac: MacAddr,
    dmac: MacAddr,
    op: u16,
    sha: MacAddr,
    spa: Ipv4Addr,
    tha: MacAddr,
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let arp = etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation(op),
        &sha.0,
        &spa.octets(),
        &tha.0,
        &tpa.octets(),
    )
    .expect("fixture ARP");
    let mut v = Vec::new();
    v.extend_from_slice(&dmac.0);
    v.extend_from_slice(&smac.0);
    v.extend_from_slice(&0x0806u16.to_be_bytes());
    v.extend_from_slice(&arp.to_bytes());
    v
}

/// What a case must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Frame(Vec<u8>),
    Drop(DropReason),
    Handoff(u16),
}

/// One row of the pipeline table: after `setup` frames (each must be
/// transmitted), `input` must give `expect`. Run on a fresh single-worker
/// lab pipeline unless `workers` says otherwise.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    pub workers: u16,
    /// Run on a pipeline that answers IPv6 clients ([`lab_pipeline6`]).
    pub ipv6: bool,
    pub setup: Vec<Vec<u8>>,
    pub input: Vec<u8>,
    pub expect: Expect,
}

fn case(name: &'static str, setup: Vec<Vec<u8>>, input: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        workers: 1,
        ipv6: false,
        setup,
        input,
        expect,
    }
}

/// A case for a pipeline that answers IPv6 clients.
fn case6(name: &'static str, setup: Vec<Vec<u8>>, input: Vec<u8>, expect: Expect) -> Case {
    Case {
        ipv6: true,
        ..case(name, setup, input, expect)
    }
}

impl Case {
    /// A fresh pipeline of the kind this case runs on.
    pub fn pipeline(&self) -> Pipeline {
        if self.ipv6 {
            lab_pipeline6(L4Checksum::Incremental)
        } else {
            lab_pipeline(0, self.workers)
        }
    }
}

/// Rewrites the IPv4 header checksum after a fixture edit: over the
/// header length the IHL field states (options included), at least 20
/// bytes, so that a malformed IHL below 5 still gets a valid sum.
pub fn fix_ip_checksum(frame: &mut [u8], ip_off: usize) {
    frame[ip_off + 10] = 0;
    frame[ip_off + 11] = 0;
    let ihl = usize::from(frame[ip_off] & 0x0f) * 4;
    let end = (ip_off + ihl.max(20)).min(frame.len());
    let c = meshgate::wire::checksum::checksum(&frame[ip_off..end]);
    frame[ip_off + 10..ip_off + 12].copy_from_slice(&c.to_be_bytes());
}

/// The table. With one worker, SNAT keeps the client's port; round robin
/// starts at task 0.
pub fn cases() -> Vec<Case> {
    let syn = client_tcp(40000, 1000, 0, SYN, b"");
    let data = client_tcp(40000, 1001, 5001, PSH_ACK, b"GET / HTTP/1.0\r\n\r\n");
    let mut v = vec![
        case(
            "tcp syn opens a flow to task 0",
            vec![],
            syn.clone(),
            Expect::Frame(expected_forward_tcp(0, 40000, 40000, 1000, 0, SYN, b"")),
        ),
        case(
            "tcp data follows its flow",
            vec![syn.clone()],
            data.clone(),
            Expect::Frame(expected_forward_tcp(
                0,
                40000,
                40000,
                1001,
                5001,
                PSH_ACK,
                b"GET / HTTP/1.0\r\n\r\n",
            )),
        ),
        case(
            "second syn goes to task 1",
            vec![syn.clone()],
            client_tcp(40001, 7, 0, SYN, b""),
            Expect::Frame(expected_forward_tcp(1, 40001, 40001, 7, 0, SYN, b"")),
        ),
        case(
            "tcp reply is decapsulated to the client",
            vec![syn.clone()],
            task_reply_tcp(0, 40000, 5000, 1001, SYN_ACK, b""),
            Expect::Frame(expected_reply_tcp(40000, 5000, 1001, SYN_ACK, b"")),
        ),
        case(
            "tcp reply with data",
            vec![
                syn.clone(),
                task_reply_tcp(0, 40000, 5000, 1001, SYN_ACK, b""),
            ],
            task_reply_tcp(
                0,
                40000,
                5001,
                1019,
                PSH_ACK,
                b"task-a 198.18.128.2:40000\n",
            ),
            Expect::Frame(expected_reply_tcp(
                40000,
                5001,
                1019,
                PSH_ACK,
                b"task-a 198.18.128.2:40000\n",
            )),
        ),
        case(
            "udp datagram opens a flow",
            vec![],
            client_udp(50000, b"ping"),
            Expect::Frame(expected_forward_udp(0, 50000, 50000, b"ping")),
        ),
        case(
            "udp reply",
            vec![client_udp(50000, b"ping")],
            task_reply_udp(0, 50000, b"task-a 198.18.128.2:50000\n"),
            Expect::Frame(expected_reply_udp(50000, b"task-a 198.18.128.2:50000\n")),
        ),
        case(
            "arp request for the sandbox is answered",
            vec![],
            task_arp_request(2),
            Expect::Frame(expected_arp_reply(2)),
        ),
        case(
            "tcp data without a flow is answered with a reset",
            vec![],
            data.clone(),
            Expect::Frame(reset_to_client(
                40000,
                5001,
                0,
                Flags {
                    rst: true,
                    ..Flags::default()
                },
            )),
        ),
        case(
            "a reset without a flow is not answered",
            vec![],
            client_tcp(
                40000,
                1001,
                5001,
                Flags {
                    rst: true,
                    ack: true,
                    ..Flags::default()
                },
                b"",
            ),
            Expect::Drop(DropReason::TcpNoFlow),
        ),
        case(
            "unpublished port",
            vec![],
            tcp_frame(
                CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, 40000, 8081, 1, 0, SYN, b"",
            ),
            Expect::Drop(DropReason::NoService),
        ),
        case(
            "published tcp port over another protocol",
            vec![],
            udp_frame(CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, 40000, 9999, b"x"),
            Expect::Drop(DropReason::NoService),
        ),
        case(
            "not the node address",
            vec![],
            tcp_frame(
                CLIENT_MAC,
                NODE_MAC,
                CLIENT,
                Ipv4Addr::new(198, 18, 0, 3),
                64,
                40000,
                8080,
                1,
                0,
                SYN,
                b"",
            ),
            Expect::Drop(DropReason::NotForUs),
        ),
        case(
            "ttl 1",
            vec![],
            tcp_frame(
                CLIENT_MAC, NODE_MAC, CLIENT, NODE, 1, 40000, 8080, 1, 0, SYN, b"",
            ),
            Expect::Drop(DropReason::TtlExpired),
        ),
        case(
            "reply without a flow",
            vec![],
            task_reply_tcp(0, 40000, 1, 1, ACK, b""),
            Expect::Drop(DropReason::ReplyNoFlow),
        ),
        case(
            "reply from the wrong node",
            vec![syn.clone()],
            {
                let inner = tcp_frame(
                    MacAddr::docker(TASKS[0]),
                    overlay_mac(),
                    TASKS[0],
                    OVERLAY,
                    64,
                    TARGET,
                    40000,
                    1,
                    1,
                    ACK,
                    b"",
                );
                vxlan_frame(NODE2_MAC, NODE_MAC, NODE2, NODE, 51234, VNI, &inner)
            },
            Expect::Drop(DropReason::ReplyWrongVtep),
        ),
        case(
            "vxlan from an unknown node",
            vec![],
            {
                let inner = tcp_frame(
                    MacAddr::docker(TASKS[0]),
                    overlay_mac(),
                    TASKS[0],
                    OVERLAY,
                    64,
                    TARGET,
                    40000,
                    1,
                    1,
                    ACK,
                    b"",
                );
                vxlan_frame(
                    NODE2_MAC,
                    NODE_MAC,
                    Ipv4Addr::new(198, 18, 0, 99),
                    NODE,
                    51234,
                    VNI,
                    &inner,
                )
            },
            Expect::Drop(DropReason::UnknownVtep),
        ),
        case(
            "vxlan with a wrong vni",
            vec![],
            {
                let inner = tcp_frame(
                    MacAddr::docker(TASKS[0]),
                    overlay_mac(),
                    TASKS[0],
                    OVERLAY,
                    64,
                    TARGET,
                    40000,
                    1,
                    1,
                    ACK,
                    b"",
                );
                vxlan_frame(NODE1_MAC, NODE_MAC, NODE1, NODE, 51234, 4097, &inner)
            },
            Expect::Drop(DropReason::VxlanWrongVni),
        ),
        case(
            "vxlan with bad flags",
            vec![],
            {
                let mut f = task_reply_tcp(0, 40000, 1, 1, ACK, b"");
                f[42] = 0x0c;
                f
            },
            Expect::Drop(DropReason::VxlanBadFlags),
        ),
        case(
            "inner frame for another address",
            vec![],
            {
                let inner = tcp_frame(
                    MacAddr::docker(TASKS[0]),
                    overlay_mac(),
                    TASKS[0],
                    Ipv4Addr::new(198, 18, 128, 3),
                    64,
                    TARGET,
                    40000,
                    1,
                    1,
                    ACK,
                    b"",
                );
                vxlan_frame(NODE1_MAC, NODE_MAC, NODE1, NODE, 51234, VNI, &inner)
            },
            Expect::Drop(DropReason::InnerNotForUs),
        ),
        case(
            "arp for another address",
            vec![],
            {
                let inner = arp_frame(
                    MacAddr::docker(TASKS[0]),
                    MacAddr::BROADCAST,
                    1,
                    MacAddr::docker(TASKS[0]),
                    TASKS[0],
                    MacAddr::ZERO,
                    TASKS[1],
                );
                vxlan_frame(NODE1_MAC, NODE_MAC, NODE1, NODE, 51234, VNI, &inner)
            },
            Expect::Drop(DropReason::ArpNotForUs),
        ),
        case(
            "syn+fin",
            vec![],
            client_tcp(
                40000,
                1,
                0,
                Flags {
                    syn: true,
                    fin: true,
                    ..Flags::default()
                },
                b"",
            ),
            Expect::Drop(DropReason::TcpBadFlags),
        ),
        case(
            "no tcp flags",
            vec![],
            client_tcp(40000, 1, 0, Flags::default(), b""),
            Expect::Drop(DropReason::TcpBadFlags),
        ),
        case(
            "a later fragment whose first has not passed",
            vec![],
            {
                let mut f = client_udp(50000, b"frag");
                f[20] = 0x20; // MF, offset 100 * 8
                f[21] = 100;
                fix_ip_checksum(&mut f, 14);
                f
            },
            Expect::Drop(DropReason::FragmentNoFirst),
        ),
        case(
            "ip options",
            vec![],
            {
                // IHL 6 with a 4-byte NOP option block.
                let mut f = client_udp(50000, b"opts");
                f.splice(34..34, [1u8, 1, 1, 0]);
                f[14] = 0x46;
                let tl = u16::from_be_bytes([f[16], f[17]]) + 4;
                f[16..18].copy_from_slice(&tl.to_be_bytes());
                fix_ip_checksum(&mut f, 14);
                f
            },
            Expect::Drop(DropReason::IpOptions),
        ),
        case(
            "bad ip checksum",
            vec![],
            {
                let mut f = client_udp(50000, b"x");
                f[24] ^= 0xff;
                f
            },
            Expect::Drop(DropReason::IpChecksum),
        ),
        case(
            "truncated ip",
            vec![],
            {
                let mut f = client_tcp(40000, 1, 0, SYN, b"");
                f.truncate(30);
                f
            },
            Expect::Drop(DropReason::Truncated),
        ),
        case(
            "ipv6",
            vec![],
            {
                let mut f = client_udp(50000, b"x");
                f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                f
            },
            Expect::Drop(DropReason::NotIpv4),
        ),
        case(
            "vlan tagged",
            vec![],
            {
                let mut f = client_udp(50000, b"x");
                f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
                f
            },
            Expect::Drop(DropReason::Vlan),
        ),
        case(
            "too big for the overlay, DF: fragmentation needed",
            vec![],
            client_udp(50000, &[7u8; 1430]),
            Expect::Frame(frag_needed_to_client(
                &client_udp(50000, &[7u8; 1430]),
                1450,
            )),
        ),
        case(
            "icmp port unreachable from a task goes back to the client",
            vec![client_udp(50000, b"knock")],
            task_icmp_unreachable(0, &expected_forward_udp(0, 50000, 50000, b"knock")[64..]),
            Expect::Frame(icmp_unreachable_to_client(
                &udp_frame(
                    CLIENT_MAC, NODE_MAC, CLIENT, NODE, 63, 50000, PUBLISHED, b"knock",
                )[14..],
            )),
        ),
        case(
            "icmp error about no flow",
            vec![],
            task_icmp_unreachable(0, &expected_forward_udp(0, 50000, 50000, b"knock")[64..]),
            Expect::Drop(DropReason::IcmpNoFlow),
        ),
    ];
    // A reply for a flow owned by another worker is handed off unchanged.
    v.push(Case {
        name: "reply owned by another worker",
        workers: 2,
        ipv6: false,
        setup: vec![],
        input: task_reply_tcp(0, 40001, 1, 1, ACK, b""),
        expect: Expect::Handoff(1),
    });
    // IPv6 clients (node.address6): translated to IPv4 for the overlay and
    // back; what meshgate does not forward, dropped by reason.
    let syn6 = client6_tcp(CLIENT6, 40000, 1000, 0, SYN, b"");
    let syn6_with = |at: usize, b: u8| {
        let mut f = syn6.clone();
        f[at] = b;
        f
    };
    v.extend([
        case6(
            "IPv6 SYN to the published port",
            vec![],
            syn6.clone(),
            Expect::Frame(expected_forward6_tcp(
                CLIENT6, 0, 40000, 40000, 1000, 0, SYN, b"",
            )),
        ),
        case6(
            "task's SYN-ACK to an IPv6 client",
            vec![syn6.clone()],
            task_reply_tcp(0, 40000, 5000, 1001, SYN_ACK, b""),
            Expect::Frame(expected_reply6_tcp(
                CLIENT6, 40000, 5000, 1001, SYN_ACK, b"",
            )),
        ),
        case6(
            "IPv6 UDP answered in IPv6",
            vec![client6_udp(CLIENT6, 41000, b"q")],
            task_reply_udp(0, 41000, b"a"),
            Expect::Frame(expected_reply6_udp(CLIENT6, 41000, b"a")),
        ),
        case6(
            "IPv6 hop-by-hop options header",
            vec![],
            syn6_with(14 + 6, 0),
            Expect::Drop(DropReason::Ipv6ExtensionHeader),
        ),
        case6(
            "IPv6 fragment header over something else than TCP or UDP",
            vec![],
            syn6_with(14 + 6, 44),
            Expect::Drop(DropReason::UnsupportedProtocol),
        ),
        case6(
            "IPv6 hop limit 1",
            vec![],
            syn6_with(14 + 7, 1),
            Expect::Drop(DropReason::TtlExpired),
        ),
        case6(
            "IPv6 truncated header",
            vec![],
            syn6[..14 + 39].to_vec(),
            Expect::Drop(DropReason::Truncated),
        ),
        case(
            "IPv6 without node.address6",
            vec![],
            syn6.clone(),
            Expect::Drop(DropReason::NotIpv4),
        ),
    ]);
    v
}

/// Runs `frame` through `p` in a fixture buffer; returns the verdict and the
/// output frame.
pub fn run(p: &mut Pipeline, frame: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; FIXTURE_FRAME];
    buf[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
    let mut f = FrameBuf::new(&mut buf, FIXTURE_HEADROOM, frame.len());
    let v = p.process(&mut f);
    (v, f.data().to_vec())
}

/// Runs one case on a fresh pipeline; returns (verdict, output frame).
pub fn run_case(c: &Case) -> (Verdict, Vec<u8>) {
    let mut p = c.pipeline();
    for (i, s) in c.setup.iter().enumerate() {
        let (v, _) = run(&mut p, s);
        assert_eq!(
            v,
            Verdict::Transmit,
            "{}: setup frame {i} was not transmitted",
            c.name
        );
    }
    run(&mut p, &c.input)
}

/// What a veth hands over when the sender's stack left the checksum to a
/// NIC (`CHECKSUM_PARTIAL`): the TCP/UDP checksum field holds only the
/// folded pseudo-header sum. `ip` is the IPv4 header's offset in `frame`.
pub fn partial_checksum(mut frame: Vec<u8>, ip: usize) -> Vec<u8> {
    use meshgate::wire::checksum;
    let h = &frame[ip..ip + 20];
    let (proto, total) = (h[9], u16::from_be_bytes([h[2], h[3]]));
    let src = std::net::Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = std::net::Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let at = ip + 20 + if proto == 6 { 16 } else { 6 };
    let pseudo = checksum::pseudo_header(src, dst, proto, total - 20);
    frame[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
    frame
}

/// A lab pipeline (worker 0 of 1) whose interface needs `l4_checksum`.
pub fn lab_pipeline_with_checksum(l4_checksum: L4Checksum) -> Pipeline {
    let snap = Arc::new(Snapshot::build(
        &lab_config().table_desc(),
        lab_link(l4_checksum),
        Arc::new(lab_neighbours()),
        &mut Registry::default(),
        1,
    ));
    Pipeline::new(snap, 0, 1, 1024, (1024, 65535))
}

/// A task on the ingress node itself (reached through the sandbox).
pub const LOCAL_TASK: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 7);

/// The lab configuration with `web`'s tasks replaced by `tasks`, given as
/// (address, node); a task whose node is `NODE` runs on the ingress node.
pub fn config_with_tasks(tasks: &[(Ipv4Addr, Ipv4Addr)]) -> Config {
    let mut cfg = lab_config();
    cfg.services[0].tasks = tasks
        .iter()
        .map(|&(address, node)| meshgate::config::Task {
            address,
            node,
            mac: MacAddr::docker(address),
            weight: 1,
            return_path: false,
        })
        .collect();
    cfg
}

/// A pipeline (worker `worker` of `workers`) whose `web` has one task on
/// the ingress node, and also task 0 on another node when `with_remote`.
pub fn local_pipeline(worker: u16, workers: u16, with_remote: bool) -> Pipeline {
    let mut tasks = vec![(LOCAL_TASK, NODE)];
    if with_remote {
        tasks.push((TASKS[0], NODE1));
    }
    let snap = lab_snapshot_for(&config_with_tasks(&tasks));
    Pipeline::new(snap, worker, workers, 1 << 16, (1024, 65535))
}

/// Runs `frame` through `p` as a frame from the sandbox's interface.
pub fn run_local(p: &mut Pipeline, frame: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; FIXTURE_FRAME];
    buf[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
    let mut f = FrameBuf::new(&mut buf, FIXTURE_HEADROOM, frame.len());
    let v = p.process_local(&mut f);
    (v, f.data().to_vec())
}

/// A translated TCP segment from the sandbox to the task at `task`, as
/// Ethernet on the ingress network.
fn to_task_tcp(task: Ipv4Addr, snat: u16, seq: u32, ack: u32, f: Flags, payload: &[u8]) -> Vec<u8> {
    tcp_frame(
        overlay_mac(),
        MacAddr::docker(task),
        OVERLAY,
        task,
        63,
        snat,
        TARGET,
        seq,
        ack,
        f,
        payload,
    )
}

/// The TCP reply of the task at `task` to the sandbox, as Ethernet on the
/// ingress network.
fn from_task_tcp(
    task: Ipv4Addr,
    snat: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    tcp_frame(
        MacAddr::docker(task),
        overlay_mac(),
        task,
        OVERLAY,
        64,
        TARGET,
        snat,
        seq,
        ack,
        f,
        payload,
    )
}

/// The UDP reply of the task at `task` to the sandbox.
/// A task's UDP datagram to the sandbox's SNAT port `snat`, before VXLAN.
pub fn from_task_udp(task: Ipv4Addr, snat: u16, payload: &[u8]) -> Vec<u8> {
    udp_frame(
        MacAddr::docker(task),
        overlay_mac(),
        task,
        OVERLAY,
        64,
        TARGET,
        snat,
        payload,
    )
}

/// What meshgate must send out of the sandbox's interface to the local
/// task for `client_tcp(..)`: plain Ethernet, no VXLAN.
pub fn expected_local_tcp(snat: u16, seq: u32, ack: u32, f: Flags, payload: &[u8]) -> Vec<u8> {
    to_task_tcp(LOCAL_TASK, snat, seq, ack, f, payload)
}

/// The local task's TCP reply as it arrives on the sandbox's interface.
pub fn local_reply_tcp(snat: u16, seq: u32, ack: u32, f: Flags, payload: &[u8]) -> Vec<u8> {
    from_task_tcp(LOCAL_TASK, snat, seq, ack, f, payload)
}

/// The local task's UDP reply as it arrives on the sandbox's interface.
pub fn local_reply_udp(snat: u16, payload: &[u8]) -> Vec<u8> {
    from_task_udp(LOCAL_TASK, snat, payload)
}

/// The lab configuration with `web` keeping clients' addresses
/// (`client_ip = "preserve"`); task `i`'s node has set up its return path
/// when `ready[i]`.
pub fn preserve_config(ready: [bool; 3]) -> Config {
    let mut cfg = lab_config();
    let web = &mut cfg.services[0];
    web.client_ip = meshgate::config::ClientIp::Preserve;
    for (t, r) in web.tasks.iter_mut().zip(ready) {
        t.return_path = r;
    }
    cfg
}

/// A pipeline (worker `worker` of `workers`) on [`preserve_config`].
pub fn preserve_pipeline(worker: u16, workers: u16, ready: [bool; 3]) -> Pipeline {
    let snap = lab_snapshot_for(&preserve_config(ready));
    Pipeline::new(snap, worker, workers, 1 << 16, (1024, 65535))
}

/// What task `task` must receive for `client_tcp(sport, ..)` of a flow that
/// keeps the client's address: DNAT only, in VXLAN.
pub fn expected_forward_preserved_tcp(
    task: usize,
    sport: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let inner = tcp_frame(
        overlay_mac(),
        MacAddr::docker(TASKS[task]),
        CLIENT,
        TASKS[task],
        63,
        sport,
        TARGET,
        seq,
        ack,
        f,
        payload,
    );
    in_vxlan_to_task(task, sport, 6, &inner)
}

/// [`expected_forward_preserved_tcp`] for `client_udp(sport, ..)`.
pub fn expected_forward_preserved_udp(task: usize, sport: u16, payload: &[u8]) -> Vec<u8> {
    let inner = udp_frame(
        overlay_mac(),
        MacAddr::docker(TASKS[task]),
        CLIENT,
        TASKS[task],
        63,
        sport,
        TARGET,
        payload,
    );
    in_vxlan_to_task(task, sport, 17, &inner)
}

/// Task `task`'s TCP reply straight to the client at `client_port`, routed
/// through the sandbox (to its MAC) by the return path, in VXLAN.
pub fn task_reply_to_client_tcp(
    task: usize,
    client_port: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let inner = tcp_frame(
        MacAddr::docker(TASKS[task]),
        overlay_mac(),
        TASKS[task],
        CLIENT,
        64,
        TARGET,
        client_port,
        seq,
        ack,
        f,
        payload,
    );
    in_vxlan_from_task(task, &inner)
}

/// [`task_reply_to_client_tcp`] for UDP.
pub fn task_reply_to_client_udp(task: usize, client_port: u16, payload: &[u8]) -> Vec<u8> {
    let inner = udp_frame(
        MacAddr::docker(TASKS[task]),
        overlay_mac(),
        TASKS[task],
        CLIENT,
        64,
        TARGET,
        client_port,
        payload,
    );
    in_vxlan_from_task(task, &inner)
}

/// Task `task`'s ICMP "port unreachable" to the client about `quoted` (the
/// client's packet as the task received it, source address kept), in VXLAN.
pub fn task_icmp_unreachable_to_client(task: usize, quoted: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MacAddr::docker(TASKS[task]).0, overlay_mac().0)
        .ipv4(TASKS[task].octets(), CLIENT.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
    let mut inner = Vec::new();
    b.write(&mut inner, quoted).expect("fixture frame");
    in_vxlan_from_task(task, &inner)
}

/// The lab's IPv6 client and the node's IPv6 address (`node.address6`),
/// from the IPv6 benchmarking prefix.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

/// The lab configuration answering IPv6 clients on [`NODE6`].
pub fn lab_config6() -> Config {
    let mut cfg = lab_config();
    cfg.node.address6 = Some(NODE6);
    cfg
}

/// A pipeline (worker 0 of 1) on the lab tables with `node.address6`.
pub fn lab_pipeline6(l4_checksum: L4Checksum) -> Pipeline {
    let snap = Arc::new(Snapshot::build(
        &lab_config6().table_desc(),
        lab_link(l4_checksum),
        Arc::new(lab_neighbours()),
        &mut Registry::default(),
        1,
    ));
    Pipeline::new(snap, 0, 1, 1024, (1024, 65535))
}

/// An IPv6 client's segment (from `client`) to the published port.
pub fn client6_tcp(
    client: Ipv6Addr,
    sport: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    tcp6_frame(
        (CLIENT_MAC, NODE_MAC),
        (client, NODE6),
        64,
        tcp_header(sport, PUBLISHED, seq, ack, f),
        payload,
    )
}

/// An IPv6 client's datagram to the published port.
pub fn client6_udp(client: Ipv6Addr, sport: u16, payload: &[u8]) -> Vec<u8> {
    udp6_frame(
        (CLIENT_MAC, NODE_MAC),
        (client, NODE6),
        64,
        (sport, PUBLISHED),
        payload,
    )
}

/// What meshgate must send to task `task` for `client6_tcp(client, sport,
/// ...)`: the same as for an IPv4 client but for the VXLAN source port
/// (the flow's hash folds the IPv6 address) and DF, which translation sets
/// only above 1260 bytes (RFC 7915 5.1).
#[allow(clippy::too_many_arguments)]
pub fn expected_forward6_tcp(
    client: Ipv6Addr,
    task: usize,
    sport: u16,
    snat: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let mut inner = to_task_tcp(TASKS[task], snat, seq, ack, f, payload);
    inner[14 + 6] &= !0x40;
    fix_ip_checksum(&mut inner, 14);
    let (node, mac) = task_node(task);
    let k = ClientKey {
        v6: true,
        ..key(sport, 6)
    };
    let vx = vxlan_source_port(flow_hash6(&k, &client.octets()));
    vxlan_frame(NODE_MAC, mac, NODE, node, vx, VNI, &inner)
}

/// What an IPv6 client must receive for `task_reply_tcp`.
pub fn expected_reply6_tcp(
    client: Ipv6Addr,
    client_port: u16,
    seq: u32,
    ack: u32,
    f: Flags,
    payload: &[u8],
) -> Vec<u8> {
    tcp6_frame(
        (NODE_MAC, CLIENT_MAC),
        (NODE6, client),
        63,
        tcp_header(PUBLISHED, client_port, seq, ack, f),
        payload,
    )
}

/// What an IPv6 client must receive for `task_reply_udp`.
pub fn expected_reply6_udp(client: Ipv6Addr, client_port: u16, payload: &[u8]) -> Vec<u8> {
    udp6_frame(
        (NODE_MAC, CLIENT_MAC),
        (NODE6, client),
        63,
        (PUBLISHED, client_port),
        payload,
    )
}

/// A TCP segment over IPv6, as an Ethernet frame: (source, destination) MACs
/// and addresses, hop limit, header and payload.
fn tcp6_frame(
    (smac, dmac): (MacAddr, MacAddr),
    (src, dst): (Ipv6Addr, Ipv6Addr),
    hop: u8,
    h: TcpHeader,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac.0, dmac.0)
        .ipv6(src.octets(), dst.octets(), hop)
        .tcp_header(h);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("fixture frame");
    v
}

/// A UDP datagram over IPv6 from port `ports.0` to `ports.1`, as an
/// Ethernet frame.
fn udp6_frame(
    (smac, dmac): (MacAddr, MacAddr),
    (src, dst): (Ipv6Addr, Ipv6Addr),
    hop: u8,
    (sport, dport): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(smac.0, dmac.0)
        .ipv6(src.octets(), dst.octets(), hop)
        .udp(sport, dport);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload).expect("fixture frame");
    v
}

/// A reset with an acknowledgment: what a stack answers a SYN to a port
/// nothing listens on.
pub const RST_ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: true,
    psh: false,
};

/// What a client must receive for a datagram (`frame`) to a service that
/// has no task to take it: ICMP "port unreachable" from the node, quoting
/// the datagram's start (at most 64 bytes).
pub fn port_unreachable_to_client(frame: &[u8]) -> Vec<u8> {
    let quote = &frame[14..frame.len().min(14 + 64)];
    let b = PacketBuilder::ethernet2(NODE_MAC.0, CLIENT_MAC.0)
        .ipv4(NODE.octets(), CLIENT.octets(), 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ));
    let mut v = Vec::new();
    b.write(&mut v, quote).expect("fixture frame");
    v
}

/// The pieces a datagram's `len` bytes of data are cut into, at most
/// `room` each (a multiple of 8): (offset, length, more follow).
fn pieces(len: usize, room: usize) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < len {
        let n = room.min(len - at);
        out.push((at, n, at + n < len));
        at += n;
    }
    out
}

/// Cuts the IPv4 packet of Ethernet frame `frame` into fragments of at
/// most `max` bytes of IPv4, with identification `id`.
pub fn ipv4_fragments(frame: &[u8], max: usize, id: u16) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    let (hdr, data) = ip.split_at(20);
    pieces(data.len(), (max - 20) & !7)
        .into_iter()
        .map(|(at, n, mf)| {
            let mut h = hdr.to_vec();
            h[2..4].copy_from_slice(&((20 + n) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&id.to_be_bytes());
            let fo = (at / 8) as u16 | if mf { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&fo.to_be_bytes());
            h[10..12].fill(0);
            let c = meshgate::wire::checksum::checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            [eth, &h, &data[at..at + n]].concat()
        })
        .collect()
}

/// Cuts the IPv6 packet of `frame` into fragments (RFC 8200 4.5) of at
/// most `max` bytes of IPv6, with identification `id`.
pub fn ipv6_fragments(frame: &[u8], max: usize, id: u32) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    let (hdr, data) = ip.split_at(40);
    pieces(data.len(), (max - 48) & !7)
        .into_iter()
        .map(|(at, n, mf)| {
            let mut h = hdr.to_vec();
            h[4..6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
            h[6] = 44;
            let mut fr = vec![hdr[6], 0];
            fr.extend_from_slice(&((at as u16) | u16::from(mf)).to_be_bytes());
            fr.extend_from_slice(&id.to_be_bytes());
            [eth, &h, &fr, &data[at..at + n]].concat()
        })
        .collect()
}
