//! meshgate's XDP programs, assembled at run time.
//!
//! The ingress program redirects to the queue's AF_XDP socket only:
//! (a) IPv4 TCP/UDP to the node address whose (protocol, destination port)
//!     is in the `ports` map — the published ports; and
//! (b) VXLAN (UDP to the overlay port, to the node address) with the ingress
//!     VNI whose inner frame is IPv4 to the overlay address or to the
//!     sandbox's MAC (a task's reply to a client whose address meshgate
//!     preserved is addressed to the client, and routed to the sandbox), or
//!     ARP asking for the overlay address; and
//! (c) with `node.address6`, IPv6 TCP/UDP to a published port on it, the
//!     fragments of its datagrams, and IPv6 extension headers to it (see
//!     `emit_ipv6`); and
//! (d) the fragments of a datagram whose first fragment went to a
//!     published port (IPv4 and IPv6).
//! Everything else — ARP, ICMP, ICMPv6, SSH, other VNIs, the node's own
//! services — passes to the kernel. A frame for a queue without a socket
//! gets the miss action (`XDP_DROP`, counted), never the kernel, which
//! would reset its flow. Frames to a published port that meshgate must
//! count as malformed (IP options, truncated transport headers, bad VXLAN
//! flags) are redirected too, so that the user-space pipeline counts them
//! by reason; with IP options or fragmented, the node's own traffic is the
//! kernel's (see `emit_options` and `emit_fragments`: a later fragment
//! follows its datagram's first one, remembered in `mg_frags`).
//!
//! In C, the ingress program reads:
//! ```c
//! if (eth->h_proto == htons(ETH_P_IPV6) && NODE6) goto ipv6; /* emit_ipv6 */
//! if (eth->h_proto != htons(ETH_P_IP) || ip->daddr != NODE) return XDP_PASS;
//! if (ip->protocol != TCP && ip->protocol != UDP) return XDP_PASS;
//! if (ip->version != 4 || ip->ihl < 5) goto redirect;
//! if (ip->frag_off & htons(0x3fff)) goto fragment;  /* emit_fragments */
//! if (ip->ihl != 5) goto options;                   /* emit_options */
//! if (l4 + 4 > end) goto redirect;
//! if (ip->protocol == UDP && udp->dest == htons(VXLAN_PORT)) {
//!     if (vxlan->vni != VNI) return XDP_PASS;
//!     if (inner->h_proto == htons(ETH_P_ARP)) return arp->tpa == OVERLAY ? redirect : XDP_PASS;
//!     if (inner->h_proto != htons(ETH_P_IP)) return XDP_PASS;
//!     return inner_ip->daddr == OVERLAY || inner->h_dest == OVERLAY_MAC ? redirect : XDP_PASS;
//! }
//! if (!bpf_map_lookup_elem(&ports, &(ip->protocol << 16 | l4->dest))) return XDP_PASS;
//! redirect: return bpf_redirect_map(&xsks, ctx->rx_queue_index, MISS_ACTION);
//! ```
//! Byte-order note: loads are host-order reads of network-order bytes, so
//! every constant compared with a load is built with `from_ne_bytes` of its
//! network-order bytes.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use super::asm::{Alu, Asm, B, DW, H, Jmp, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, W, helper};
use super::bpf::{self, BpfError, Link, Map, Program, action, map_type};
use crate::wire::MacAddr;

/// Parameters of the ingress program.
#[derive(Debug, Clone, Copy)]
pub struct IngressParams {
    /// The node's address: published ports are on it.
    pub node_addr: Ipv4Addr,
    /// Published ports answer IPv6 clients here too (`node.address6`).
    pub node_addr6: Option<std::net::Ipv6Addr>,
    /// The ingress sandbox's address on the overlay: replies come to it.
    pub overlay_addr: Ipv4Addr,
    /// The sandbox's MAC on the overlay: replies routed to the sandbox
    /// carry it, whatever their destination address.
    pub overlay_mac: MacAddr,
    /// The ingress overlay's VXLAN network identifier.
    pub vni: u32,
    /// The VXLAN UDP port (4789).
    pub vxlan_port: u16,
    /// Size of the socket map: the highest queue id + 1.
    pub queues: u32,
    /// What a frame meant for a socket gets when its queue has none:
    /// `XDP_DROP` in production (the kernel, which knows none of
    /// meshgate's flows, would answer it with a reset; a dropped segment is
    /// retransmitted), counted ([`NO_SOCKET`]); tests use `XDP_ABORTED` to
    /// tell it apart.
    pub miss_action: u32,
    /// The device the program is for, when known: it is then loaded bound
    /// to it and asks the driver for a VLAN tag it stripped (see
    /// [`VLAN_TAG_KFUNC`]).
    pub ifindex: Option<u32>,
}

/// The kfunc that reports a VLAN tag the driver took out of the frame
/// (Linux 6.8+; veth and NICs with VLAN stripping on keep the tag as
/// metadata, so the frame XDP sees looks untagged). A tagged frame is not
/// meshgate's: it goes to the kernel, counted with `not_ipv4` (not an
/// untagged IPv4 frame), as a frame with its tag still inside is.
pub const VLAN_TAG_KFUNC: &str = "bpf_xdp_metadata_rx_vlan_tag";

/// The programs' names, as the kernel keeps them: a restarted meshgate
/// replaces only programs of these names.
pub const INGRESS_NAME: &str = "meshgate_in";
/// The capture program's name (the sandbox's, the tools').
pub const CAPTURE_NAME: &str = "meshgate_cap";

/// Largest number of published (protocol, port) pairs.
pub const MAX_PORTS: u32 = 4096;

fn ne16(v: u16) -> i32 {
    i32::from(u16::from_ne_bytes(v.to_be_bytes()))
}

fn ne32(b: [u8; 4]) -> i32 {
    u32::from_ne_bytes(b) as i32
}

/// The key of the `ports` map for a published port.
pub fn port_key(protocol: u8, port: u16) -> [u8; 4] {
    ((u32::from(protocol) << 16) | u16::from_ne_bytes(port.to_be_bytes()) as u32).to_ne_bytes()
}

/// Why the ingress program passed a frame to the kernel; counted per CPU
/// in the `mg_pass` map and reported as `xdp_passed`.
pub const PASS_REASONS: [&str; 8] = [
    "short",
    "not_ipv4",
    "other_address",
    "other_protocol",
    "unpublished_port",
    "vxlan_other_vni",
    "vxlan_not_for_sandbox",
    "fragment_not_ours",
];

/// The slot of the program's counters after the pass reasons: frames for
/// meshgate that met no socket on their queue (and got the miss action).
pub const NO_SOCKET: u32 = PASS_REASONS.len() as u32;

/// The program's jump target for each of [`PASS_REASONS`], in the same
/// order (the assembler's labels are static strings; a test checks the
/// two lists agree).
const PASS_LABELS: [&str; PASS_REASONS.len()] = [
    "pass_short",
    "pass_not_ipv4",
    "pass_other_address",
    "pass_other_protocol",
    "pass_unpublished_port",
    "pass_vxlan_other_vni",
    "pass_vxlan_not_for_sandbox",
    "pass_fragment_not_ours",
];

/// Emits `goto target` when the 6 bytes at r2 + `off` are `mac` (r8 is
/// clobbered); falls through otherwise.
fn emit_mac_is(a: &mut Asm, off: i16, mac: MacAddr, target: &'static str, other: &'static str) {
    let m = mac.0;
    a.ldx(W, R8, R2, off)
        .jmp32_imm(Jmp::Ne, R8, ne32([m[0], m[1], m[2], m[3]]), other)
        .ldx(H, R8, R2, off + 4)
        .jmp_imm(Jmp::Eq, R8, ne16(u16::from_be_bytes([m[4], m[5]])), target)
        .ja(other);
}

/// Emits the common prefix: Ethernet type IPv4, destination `addr` (any
/// when `None`) or, when `mac` is given, a frame to that MAC, protocol TCP
/// or UDP. Leaves r2 = data, r3 = data_end, r5 = protocol, r6 = ctx.
/// Otherwise jumps to `pass_short`, `pass_not_ipv4`, `pass_other_address`
/// or `pass_other_protocol`.
fn emit_ipv4_to(a: &mut Asm, addr: Option<Ipv4Addr>, mac: Option<MacAddr>, ipv6: bool) {
    a.alu64_reg(Alu::Mov, R6, R1)
        .ldx(W, R2, R1, 0)
        .ldx(W, R3, R1, 4)
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 14)
        .jmp_reg(Jmp::Gt, R4, R3, "pass_short")
        .ldx(H, R5, R2, 12);
    if ipv6 {
        a.jmp_imm(Jmp::Eq, R5, ne16(0x86dd), "ipv6");
    }
    a.jmp_imm(Jmp::Ne, R5, ne16(0x0800), "pass_not_ipv4")
        .alu64_imm(Alu::Add, R4, 20)
        .jmp_reg(Jmp::Gt, R4, R3, "pass_short");
    match (addr, mac) {
        (Some(addr), None) => {
            a.ldx(W, R5, R2, 30)
                .jmp32_imm(Jmp::Ne, R5, ne32(addr.octets()), "pass_other_address");
        }
        (Some(addr), Some(mac)) => {
            a.ldx(W, R5, R2, 30)
                .jmp32_imm(Jmp::Eq, R5, ne32(addr.octets()), "to_us");
            emit_mac_is(a, 0, mac, "to_us", "pass_other_address");
            a.label("to_us");
        }
        (None, _) => {}
    }
    a.ldx(B, R5, R2, 23)
        .jmp_imm(Jmp::Eq, R5, 6, "l4")
        .jmp_imm(Jmp::Eq, R5, 17, "l4")
        .ja("pass_other_protocol")
        .label("l4");
}

/// Emits: add one to the per-CPU counter whose slot is the u32 at r10-8,
/// falling through (or going to `missing` when the lookup fails, which it
/// cannot for a slot below the map's size). Clobbers r0-r5.
fn emit_count(a: &mut Asm, counters: RawFd, missing: &'static str) {
    a.ld_map_fd(R1, counters)
        .alu64_reg(Alu::Mov, R2, R10)
        .alu64_imm(Alu::Add, R2, -8)
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(Jmp::Eq, R0, 0, missing)
        // A per-CPU slot: no other CPU writes it, a plain add is enough.
        .ldx(DW, R1, R0, 0)
        .alu64_imm(Alu::Add, R1, 1)
        .stx(DW, R0, 0, R1);
}

/// Emits one label per pass reason that records the reason in r9 and goes
/// to `count`, which adds one to the reason's per-CPU counter and passes.
fn emit_counted_pass(a: &mut Asm, counters: RawFd) {
    for (i, l) in PASS_LABELS.iter().enumerate() {
        a.label(l).alu64_imm(Alu::Mov, R9, i as i32).ja("count");
    }
    a.label("count").stx(W, R10, -8, R9);
    emit_count(a, counters, "pass");
    a.ja("pass");
}

/// Emits the tail: "redirect" to the queue's socket in `xsks`, and "pass".
/// With `counters`, a frame whose queue has no socket (between two
/// processes in a takeover, or after a crash until the restart binds) is
/// counted in slot [`NO_SOCKET`] before it gets `miss_action`.
fn emit_redirect_and_pass(a: &mut Asm, xsks: RawFd, miss_action: u32, counters: Option<RawFd>) {
    a.label("redirect")
        .ldx(W, R2, R6, 16) // ctx->rx_queue_index
        .ld_map_fd(R1, xsks)
        .alu64_imm(Alu::Mov, R3, miss_action as i32)
        .call(helper::REDIRECT_MAP);
    if let Some(counters) = counters {
        a.jmp_imm(Jmp::Ne, R0, miss_action as i32, "redirected")
            .alu64_imm(Alu::Mov, R1, NO_SOCKET as i32)
            .stx(W, R10, -8, R1);
        emit_count(a, counters, "missed");
        a.label("missed")
            .alu64_imm(Alu::Mov, R0, miss_action as i32)
            .label("redirected");
    }
    a.exit()
        .label("pass")
        .alu64_imm(Alu::Mov, R0, action::PASS as i32)
        .exit();
}

fn ingress_insns(p: &IngressParams, maps: &ProgramMaps, vlan_kfunc: Option<u32>) -> Vec<bpf::Insn> {
    let vni = p.vni.to_be_bytes();
    let mut a = Asm::new();
    if let Some(id) = vlan_kfunc {
        // r0 = bpf_xdp_metadata_rx_vlan_tag(ctx, &proto, &tci): 0 when tagged.
        a.alu64_reg(Alu::Mov, R6, R1)
            .alu64_imm(Alu::Mov, R2, 0)
            .stx(W, R10, -8, R2)
            .alu64_reg(Alu::Mov, R2, R10)
            .alu64_imm(Alu::Add, R2, -8)
            .alu64_reg(Alu::Mov, R3, R10)
            .alu64_imm(Alu::Add, R3, -6)
            .call_kfunc(id as i32)
            .jmp_imm(Jmp::Eq, R0, 0, "pass_not_ipv4")
            .alu64_reg(Alu::Mov, R1, R6);
    }
    emit_ipv4_to(&mut a, Some(p.node_addr), None, p.node_addr6.is_some());
    // r7 = the header's length in 32-bit words: a malformed version or
    // length is the pipeline's to count; options and fragments have their
    // own branches.
    a.ldx(B, R7, R2, 14)
        .alu64_reg(Alu::Mov, R8, R7)
        .alu64_imm(Alu::And, R8, 0xf0)
        .jmp_imm(Jmp::Ne, R8, 0x40, "redirect")
        .alu64_imm(Alu::And, R7, 0x0f)
        .jmp_imm(Jmp::Lt, R7, 5, "redirect")
        .ldx(H, R8, R2, 20)
        .alu32_imm(Alu::And, R8, ne16(0x3fff))
        .jmp_imm(Jmp::Ne, R8, 0, "fragment")
        .jmp_imm(Jmp::Ne, R7, 5, "options")
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 38)
        .jmp_reg(Jmp::Gt, R4, R3, "redirect")
        .ldx(H, R7, R2, 36)
        .jmp_imm(Jmp::Ne, R5, 17, "lookup")
        .jmp_imm(Jmp::Ne, R7, ne16(p.vxlan_port), "lookup")
        // VXLAN: outer 14 + 20 + 8, VXLAN 8, inner Ethernet 14 = 64 bytes.
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 64)
        .jmp_reg(Jmp::Gt, R4, R3, "pass_short")
        .ldx(W, R8, R2, 46)
        .alu32_imm(Alu::And, R8, ne32([0xff, 0xff, 0xff, 0]))
        .jmp32_imm(
            Jmp::Ne,
            R8,
            ne32([vni[1], vni[2], vni[3], 0]),
            "pass_vxlan_other_vni",
        )
        .ldx(H, R8, R2, 62)
        .jmp_imm(Jmp::Eq, R8, ne16(0x0806), "arp")
        .jmp_imm(Jmp::Ne, R8, ne16(0x0800), "pass_vxlan_not_for_sandbox")
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 84)
        .jmp_reg(Jmp::Gt, R4, R3, "pass_short")
        .ldx(W, R8, R2, 80)
        .jmp32_imm(Jmp::Eq, R8, ne32(p.overlay_addr.octets()), "redirect");
    // The inner Ethernet destination is at 64 - 14 = 50.
    emit_mac_is(
        &mut a,
        50,
        p.overlay_mac,
        "redirect",
        "pass_vxlan_not_for_sandbox",
    );
    a.label("arp")
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 92)
        .jmp_reg(Jmp::Gt, R4, R3, "pass_short")
        .ldx(W, R8, R2, 88)
        .jmp32_imm(Jmp::Eq, R8, ne32(p.overlay_addr.octets()), "redirect")
        .ja("pass_vxlan_not_for_sandbox");
    if let Some(addr6) = p.node_addr6 {
        emit_ipv6(&mut a, addr6, maps);
    }
    emit_options(&mut a, maps.ports);
    emit_fragments(&mut a, maps, p.node_addr6.is_some());
    a.label("lookup");
    emit_port_lookup(&mut a, maps.ports);
    emit_syn_admission(&mut a, maps, &SYN_V4);
    emit_redirect_and_pass(&mut a, maps.xsks, p.miss_action, Some(maps.counters));
    emit_counted_pass(&mut a, maps.counters);
    a.finish()
}

/// Emits the published-port check: r5 = IP protocol, r7 = destination
/// port (as loaded); a port not in `ports` goes to `pass_unpublished_port`,
/// a published one falls through.
fn emit_port_lookup(a: &mut Asm, ports: RawFd) {
    a.alu64_imm(Alu::Lsh, R5, 16)
        .alu64_reg(Alu::Or, R5, R7)
        .stx(W, R10, -4, R5)
        .ld_map_fd(R1, ports)
        .alu64_reg(Alu::Mov, R2, R10)
        .alu64_imm(Alu::Add, R2, -4)
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(Jmp::Eq, R0, 0, "pass_unpublished_port");
}

/// The IPv6 branch of the ingress program, entered at "ipv6" with r2 =
/// data, r3 = data_end: TCP or UDP to a published port on `addr6` is
/// redirected; so is an extension header to `addr6` (the pipeline drops
/// and counts them; the kernel would answer a published port with a
/// reset); a fragment goes to `emit_fragments`; ICMPv6 (neighbour
/// discovery, echo) and everything else pass. New TCP flows pass the same SYN admission control as IPv4's
/// (the same budget and buckets per queue), by their own offsets.
///
/// In C:
/// ```c
/// if (ip6 + 1 > end) return XDP_PASS;
/// if (ip6->daddr != NODE6) return XDP_PASS;
/// switch (ip6->nexthdr) {
/// case TCP: case UDP: break;
/// case FRAGMENT: goto fragment6;                     /* emit_fragments */
/// case HOPOPTS: case ROUTING: case DSTOPTS: goto redirect;
/// default: return XDP_PASS;
/// }
/// if (l4 + 4 > end) goto redirect;
/// if (!bpf_map_lookup_elem(&ports, &(nexthdr << 16 | l4->dest))) return XDP_PASS;
/// goto syn_admission; /* as IPv4's, at IPv6's offsets */
/// ```
fn emit_ipv6(a: &mut Asm, addr6: std::net::Ipv6Addr, maps: &ProgramMaps) {
    let o = addr6.octets();
    a.label("ipv6")
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 54)
        .jmp_reg(Jmp::Gt, R4, R3, "pass_short");
    for (i, off) in [38i16, 42, 46, 50].into_iter().enumerate() {
        let w = [o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]];
        a.ldx(W, R8, R2, off)
            .jmp32_imm(Jmp::Ne, R8, ne32(w), "pass_other_address");
    }
    a.ldx(B, R5, R2, 20)
        .jmp_imm(Jmp::Eq, R5, 6, "l4_6")
        .jmp_imm(Jmp::Eq, R5, 17, "l4_6")
        .jmp_imm(Jmp::Eq, R5, 0, "redirect")
        .jmp_imm(Jmp::Eq, R5, 43, "redirect")
        .jmp_imm(Jmp::Eq, R5, 44, "fragment6")
        .jmp_imm(Jmp::Eq, R5, 60, "redirect")
        .ja("pass_other_protocol")
        .label("l4_6")
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 58)
        .jmp_reg(Jmp::Gt, R4, R3, "redirect")
        .ldx(H, R7, R2, 56);
    emit_port_lookup(a, maps.ports);
    emit_syn_admission(a, maps, &SYN_V6);
}

/// IPv4 with options to the node (r7 = the header's length in words, 6
/// to 15; r5 = protocol): redirected when its destination port is
/// published (the pipeline refuses options and counts them), else the
/// kernel's, as the node's own traffic. One branch per length, each with
/// constant offsets: the verifier refuses pointer arithmetic with a
/// variable to a program loaded without CAP_PERFMON, as meshgate's
/// systemd unit loads it. No admission control: the pipeline drops these.
fn emit_options(a: &mut Asm, ports: RawFd) {
    a.label("options");
    for (i, l) in OPTION_LABELS.iter().enumerate() {
        a.jmp_imm(Jmp::Eq, R7, i as i32 + 6, l);
    }
    a.ja("redirect");
    for (i, l) in OPTION_LABELS.iter().enumerate() {
        // The destination port is 2 bytes into the transport header.
        let dport = 14 + 4 * (i as i16 + 6) + 2;
        a.label(l)
            .alu64_reg(Alu::Mov, R1, R2)
            .alu64_imm(Alu::Add, R1, i32::from(dport) + 2)
            .jmp_reg(Jmp::Gt, R1, R3, "redirect")
            .ldx(H, R7, R2, dport)
            .ja("options_port");
    }
    a.label("options_port");
    emit_port_lookup(a, ports);
    a.ja("redirect");
}

/// [`emit_options`]' branches, for header lengths of 6 to 15 words.
const OPTION_LABELS: [&str; 10] = [
    "options6",
    "options7",
    "options8",
    "options9",
    "options10",
    "options11",
    "options12",
    "options13",
    "options14",
    "options15",
];

/// How long after a datagram's first fragment its later fragments still
/// follow it to meshgate, in units of 2^20 ns (about 30 s: Linux's
/// `ipfrag_time`).
pub const FRAGMENT_TIMEOUT_UNITS: i32 = 28_610;

/// Datagrams whose fragments the program remembers at once (an LRU table:
/// a flood of first fragments evicts the oldest).
pub const FRAGMENT_SLOTS: u32 = 8192;

/// The fragment table's key on the stack: the source address (IPv4 in its
/// first 4 bytes), the identification (IPv4's 16 bits in the first two of
/// four), the protocol, the family (4 or 6), two zero bytes.
const FRAG_KEY: i16 = -48;
const FRAG_KEY_LEN: u32 = 24;
const FRAG_TIME: i16 = -56;

/// Fragments to the node, IPv4 (entered at "fragment": r8 = its MF and
/// offset bits, r7 = the header's length in words, r5 = protocol) and
/// IPv6 (at "fragment6", after the address check).
///
/// A datagram is meshgate's when its first fragment, the one with the
/// transport header, goes to a published port: the first fragment is
/// redirected and its (source, identification, protocol) remembered in
/// `mg_frags`, so that the later fragments, which carry no ports, follow
/// it. Every other fragment is the kernel's, as if meshgate were not
/// there: a later fragment whose first one was not a published port's
/// (or not seen, or more than [`FRAGMENT_TIMEOUT_UNITS`] ago) passes,
/// counted as `fragment_not_ours`.
///
/// In C:
/// ```c
/// key = { src, id, proto, family };
/// if (offset == 0) {
///     if (l4 + 4 > end) return XDP_PASS;             /* short */
///     if (!bpf_map_lookup_elem(&ports, &(proto << 16 | l4->dest))) return XDP_PASS;
///     now = bpf_ktime_get_ns();
///     bpf_map_update_elem(&frags, &key, &now, BPF_ANY);
///     goto redirect;
/// }
/// t = bpf_map_lookup_elem(&frags, &key);
/// if (!t || (bpf_ktime_get_ns() - *t) >> 20 > TIMEOUT) return XDP_PASS;
/// goto redirect;
/// ```
fn emit_fragments(a: &mut Asm, m: &ProgramMaps, ipv6: bool) {
    // IPv4: r8 = MF and offset (as loaded), r7 = the header's length in
    // words. With options as well, its ports are not at a constant offset
    // (see `emit_options`): the kernel's.
    a.label("fragment")
        .jmp_imm(Jmp::Ne, R7, 5, "pass_fragment_not_ours");
    emit_zero_frag_key(a);
    a.ldx(W, R1, R2, 26)
        .stx(W, R10, FRAG_KEY, R1)
        .ldx(H, R1, R2, 18)
        .stx(H, R10, FRAG_KEY + 16, R1)
        .stx(B, R10, FRAG_KEY + 20, R5)
        .alu64_imm(Alu::Mov, R1, 4)
        .stx(B, R10, FRAG_KEY + 21, R1)
        .alu32_imm(Alu::And, R8, ne16(0x1fff))
        .jmp_imm(Jmp::Ne, R8, 0, "fragment_later")
        .alu64_reg(Alu::Mov, R1, R2)
        .alu64_imm(Alu::Add, R1, 38)
        .jmp_reg(Jmp::Gt, R1, R3, "pass_short")
        .ldx(H, R7, R2, 36)
        .ja("fragment_first");
    // Emitted only with an IPv6 branch: the verifier refuses code that
    // nothing reaches.
    if ipv6 {
        emit_fragment6(a);
    }
    // A first fragment: r5 = protocol, r7 = destination port.
    a.label("fragment_first");
    emit_port_lookup(a, m.ports);
    a.call(helper::KTIME_GET_NS)
        .stx(DW, R10, FRAG_TIME, R0)
        .ld_map_fd(R1, m.frags)
        .alu64_reg(Alu::Mov, R2, R10)
        .alu64_imm(Alu::Add, R2, i32::from(FRAG_KEY))
        .alu64_reg(Alu::Mov, R3, R10)
        .alu64_imm(Alu::Add, R3, i32::from(FRAG_TIME))
        .alu64_imm(Alu::Mov, R4, 0)
        .call(helper::MAP_UPDATE_ELEM)
        .ja("redirect");
    // A later fragment: its datagram's, if the first one was meshgate's.
    a.label("fragment_later")
        .ld_map_fd(R1, m.frags)
        .alu64_reg(Alu::Mov, R2, R10)
        .alu64_imm(Alu::Add, R2, i32::from(FRAG_KEY))
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(Jmp::Eq, R0, 0, "pass_fragment_not_ours")
        .ldx(DW, R9, R0, 0)
        .call(helper::KTIME_GET_NS)
        .alu64_reg(Alu::Sub, R0, R9)
        .alu64_imm(Alu::Rsh, R0, 20)
        .jmp_imm(
            Jmp::Gt,
            R0,
            FRAGMENT_TIMEOUT_UNITS,
            "pass_fragment_not_ours",
        )
        .ja("redirect");
}

/// Emits the zeroing of the fragment key's bytes (the verifier reads a
/// map key only from initialised stack).
fn emit_zero_frag_key(a: &mut Asm) {
    a.alu64_imm(Alu::Mov, R1, 0);
    for i in 0..(FRAG_KEY_LEN as i16 / 8) {
        a.stx(DW, R10, FRAG_KEY + 8 * i, R1);
    }
}

/// The IPv6 half of [`emit_fragments`], at "fragment6": the fragment
/// header (RFC 8200 4.5) right after the fixed header gives the key; a
/// first fragment's TCP or UDP header follows it.
fn emit_fragment6(a: &mut Asm) {
    a.label("fragment6")
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 62)
        .jmp_reg(Jmp::Gt, R4, R3, "pass_short");
    emit_zero_frag_key(a);
    for i in 0..4i16 {
        a.ldx(W, R1, R2, 22 + 4 * i)
            .stx(W, R10, FRAG_KEY + 4 * i, R1);
    }
    a.ldx(W, R1, R2, 58)
        .stx(W, R10, FRAG_KEY + 16, R1)
        .ldx(B, R5, R2, 54)
        .stx(B, R10, FRAG_KEY + 20, R5)
        .alu64_imm(Alu::Mov, R1, 6)
        .stx(B, R10, FRAG_KEY + 21, R1)
        .ldx(H, R8, R2, 56)
        .alu32_imm(Alu::And, R8, ne16(0xfff8))
        .jmp_imm(Jmp::Ne, R8, 0, "fragment_later")
        .jmp_imm(Jmp::Eq, R5, 6, "fragment6_l4")
        .jmp_imm(Jmp::Eq, R5, 17, "fragment6_l4")
        .ja("pass_other_protocol")
        .label("fragment6_l4")
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, 66)
        .jmp_reg(Jmp::Gt, R4, R3, "pass_short")
        .ldx(H, R7, R2, 64)
        .ja("fragment_first");
}

/// Slots of the table of refused SYNs (2^21 fingerprints, 16 MiB): at
/// 700 000 refused SYNs a second a slot survives a second with
/// probability e^(-700000/2^21) = 0.72, so most clients' first
/// retransmission, a second after their SYN, finds its record.
pub const RETRY_SLOT_BITS: u32 = 21;

/// Offsets in a queue's `mg_admit` entry ([`AdmissionCounts`] plus the
/// two buckets' theoretical arrival times).
mod admit {
    pub const TAT: i16 = 0;
    pub const ADMITTED: i16 = 8;
    pub const REFUSED: i16 = 16;
    pub const RETRY_TAT: i16 = 24;
    pub const RETRIED: i16 = 32;
    pub const SIZE: u32 = 40;
}

/// One odd 32-bit constant (sign-extended by the ALU) for the SYN's
/// fingerprint: a multiplicative hash, not a keyed one.
const FP_MUL: i32 = 0x9e37_79b1_u32 as i32;

/// Emits `r0 = bpf_map_lookup_elem(map, &(u32)r1)`, going to `missing`
/// when there is no entry (the key goes through the stack at r10-4).
fn emit_lookup(a: &mut Asm, map: RawFd, missing: &'static str) {
    a.stx(W, R10, -4, R1)
        .ld_map_fd(R1, map)
        .alu64_reg(Alu::Mov, R2, R10)
        .alu64_imm(Alu::Add, R2, -4)
        .call(helper::MAP_LOOKUP_ELEM)
        .jmp_imm(Jmp::Eq, R0, 0, missing);
}

/// Emits one GCRA step (a token bucket as a theoretical arrival time):
/// `t = max(tat, now - burst) + interval; if t > now goto over; tat = t;
/// count += 1; goto redirect`. Expects r0 = now, r8 = interval, r9 = the
/// queue's `mg_admit` entry, the burst at r10-16.
fn emit_gcra(a: &mut Asm, tat: i16, count: i16, l: [&'static str; 3], over: &'static str) {
    let [low, max, keep] = l;
    a.ldx(DW, R1, R9, tat)
        .ldx(DW, R2, R10, -16)
        .alu64_reg(Alu::Mov, R3, R0)
        .jmp_reg(Jmp::Gt, R2, R3, low)
        .alu64_reg(Alu::Sub, R3, R2)
        .ja(max)
        .label(low)
        .alu64_imm(Alu::Mov, R3, 0)
        .label(max)
        .jmp_reg(Jmp::Gt, R1, R3, keep)
        .alu64_reg(Alu::Mov, R1, R3)
        .label(keep)
        .alu64_reg(Alu::Add, R1, R8)
        .jmp_reg(Jmp::Gt, R1, R0, over)
        .stx(DW, R9, tat, R1)
        .ldx(DW, R1, R9, count)
        .alu64_imm(Alu::Add, R1, 1)
        .stx(DW, R9, count, R1)
        .ja("redirect");
}

/// Admission control of new TCP flows, before the AF_XDP ring: a SYN
/// without ACK to a published port passes its queue's budget or is
/// dropped here and counted, so that a flood cannot fill the ring that
/// established flows share. A SYN refused once and seen again (same
/// source, ports and sequence number: a client's retransmission, which a
/// spoofed flood does not send) draws on a second budget of the same
/// size, so real clients get in at their first retries. Everything else
/// goes to "redirect" untouched.
///
/// The per-queue entries are written without atomics: a queue's frames
/// are processed by one NAPI context at a time (native XDP), so there is
/// one writer per entry.
fn emit_syn_admission(a: &mut Asm, m: &ProgramMaps, at: &SynAt) {
    let l4 = at.l4;
    a.ldx(W, R2, R6, 0)
        .ldx(W, R3, R6, 4)
        .alu64_reg(Alu::Mov, R4, R2)
        .alu64_imm(Alu::Add, R4, i32::from(l4) + 14)
        .jmp_reg(Jmp::Gt, R4, R3, "redirect")
        .ldx(B, R5, R2, at.proto)
        .jmp_imm(Jmp::Ne, R5, 6, "redirect")
        .ldx(B, R5, R2, l4 + 13)
        .alu32_imm(Alu::And, R5, 0x12)
        .jmp_imm(Jmp::Ne, R5, 0x02, "redirect");
    // r7 = fingerprint of (source, ports, sequence number), never 0.
    a.ldx(W, R7, R2, at.src[0]).alu64_imm(Alu::Mul, R7, FP_MUL);
    for &w in &at.src[1..] {
        a.ldx(W, R5, R2, w)
            .alu64_reg(Alu::Xor, R7, R5)
            .alu64_imm(Alu::Mul, R7, FP_MUL);
    }
    a.ldx(W, R5, R2, l4)
        .alu64_reg(Alu::Xor, R7, R5)
        .alu64_imm(Alu::Mul, R7, FP_MUL)
        .ldx(W, R5, R2, l4 + 4)
        .alu64_reg(Alu::Xor, R7, R5)
        .alu64_imm(Alu::Mul, R7, FP_MUL)
        .alu64_imm(Alu::Or, R7, 1)
        // The budget: r8 = interval (0: no admission control), burst at r10-16.
        .alu64_imm(Alu::Mov, R1, 0);
    emit_lookup(a, m.budget, "redirect");
    a.ldx(DW, R8, R0, 0)
        .jmp_imm(Jmp::Eq, R8, 0, "redirect")
        .ldx(DW, R1, R0, 8)
        .stx(DW, R10, -16, R1)
        // r9 = this queue's entry.
        .ldx(W, R1, R6, 16);
    emit_lookup(a, m.admit, "redirect");
    a.alu64_reg(Alu::Mov, R9, R0)
        .call(helper::KTIME_GET_NS)
        .stx(DW, R10, -24, R0);
    let l = &at.labels;
    emit_gcra(a, admit::TAT, admit::ADMITTED, l.new, l.over);
    // Over budget: a retransmission of a refused SYN gets a second
    // chance; any other SYN is remembered in its slot and refused.
    a.label(l.over).alu64_reg(Alu::Mov, R1, R7).alu64_imm(
        Alu::Rsh,
        R1,
        64 - RETRY_SLOT_BITS as i32,
    );
    emit_lookup(a, m.retry, l.refuse);
    a.ldx(DW, R1, R0, 0)
        .jmp_reg(Jmp::Eq, R1, R7, l.retry)
        .stx(DW, R0, 0, R7)
        .ja(l.refuse)
        .label(l.retry)
        .alu64_imm(Alu::Mov, R1, 0)
        .stx(DW, R0, 0, R1)
        .ldx(DW, R0, R10, -24);
    emit_gcra(a, admit::RETRY_TAT, admit::RETRIED, l.retry_gcra, l.refuse);
    a.label(l.refuse)
        .ldx(DW, R1, R9, admit::REFUSED)
        .alu64_imm(Alu::Add, R1, 1)
        .stx(DW, R9, admit::REFUSED, R1)
        .alu64_imm(Alu::Mov, R0, action::DROP as i32)
        .exit();
}

/// Where the SYN admission control finds a family's fields, and its
/// labels (one set per copy of the code).
struct SynAt {
    /// The transport header.
    l4: i16,
    /// The IP protocol (IPv4) or next header (IPv6).
    proto: i16,
    /// 32-bit words of the source address that go into the fingerprint.
    src: &'static [i16],
    labels: SynLabels,
}

struct SynLabels {
    over: &'static str,
    retry: &'static str,
    refuse: &'static str,
    new: [&'static str; 3],
    retry_gcra: [&'static str; 3],
}

const SYN_V4: SynAt = SynAt {
    l4: 34,
    proto: 23,
    src: &[26],
    labels: SynLabels {
        over: "syn_over",
        retry: "syn_retry",
        refuse: "syn_refuse",
        new: ["new_low", "new_max", "new_keep"],
        retry_gcra: ["retry_low", "retry_max", "retry_keep"],
    },
};

/// IPv6: the source's last 64 bits (what tells clients apart within
/// their networks) go into the fingerprint.
const SYN_V6: SynAt = SynAt {
    l4: 54,
    proto: 20,
    src: &[30, 34],
    labels: SynLabels {
        over: "syn6_over",
        retry: "syn6_retry",
        refuse: "syn6_refuse",
        new: ["new6_low", "new6_max", "new6_keep"],
        retry_gcra: ["retry6_low", "retry6_max", "retry6_keep"],
    },
};

/// The file descriptors of the ingress program's maps.
struct ProgramMaps {
    xsks: RawFd,
    ports: RawFd,
    counters: RawFd,
    budget: RawFd,
    admit: RawFd,
    retry: RawFd,
    frags: RawFd,
}

/// What the SYN admission control did, all queues together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdmissionCounts {
    /// SYNs admitted within the budget.
    pub admitted: u64,
    /// SYNs dropped in XDP over the budget.
    pub refused: u64,
    /// Retransmitted SYNs admitted on their second chance.
    pub retried: u64,
}

/// The budget's map value: the interval between admissions in ns (0: no
/// limit) and the bucket's depth in ns: 100 ms of the budget, and at least
/// one admission (the bucket admits nothing when it is shallower than one
/// interval).
pub fn budget_value(new_per_second: u32) -> [u8; 16] {
    let interval: u64 = if new_per_second == 0 {
        0
    } else {
        (1_000_000_000 / u64::from(new_per_second)).max(1)
    };
    let burst: u64 = interval.max(100_000_000);
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&interval.to_ne_bytes());
    v[8..].copy_from_slice(&burst.to_ne_bytes());
    v
}

/// The ingress program with its maps.
#[derive(Debug)]
pub struct IngressProgram {
    /// The loaded program.
    pub prog: Program,
    /// Queue to AF_XDP socket.
    pub xsks: Map,
    /// Published (protocol, port) pairs.
    pub ports: Map,
    /// Frames passed to the kernel, by reason (per CPU).
    pub counters: Map,
    /// The SYN budget ([`budget_value`]), one entry, changed live.
    pub budget: Map,
    /// Per queue: the buckets and [`AdmissionCounts`].
    pub admit: Map,
    /// Fingerprints of refused SYNs, for their retransmissions.
    pub retry: Map,
    /// Datagrams whose first fragment went to a published port
    /// ([`emit_fragments`]).
    pub frags: Map,
    queues: u32,
}

impl IngressProgram {
    /// Creates the maps and loads the program for `p`; the verifier's log
    /// is in the error when it refuses.
    pub fn load(p: &IngressParams) -> Result<IngressProgram, BpfError> {
        let xsks = Map::create(map_type::XSKMAP, 4, 4, p.queues.max(1), "mg_xsks")?;
        let ports = Map::create(map_type::HASH, 4, 4, MAX_PORTS, "mg_ports")?;
        let counters = Map::create(map_type::PERCPU_ARRAY, 4, 8, NO_SOCKET + 1, "mg_pass")?;
        let budget = Map::create(map_type::ARRAY, 4, 16, 1, "mg_budget")?;
        let admit = Map::create(map_type::ARRAY, 4, admit::SIZE, p.queues.max(1), "mg_admit")?;
        let retry = Map::create(map_type::ARRAY, 4, 8, 1 << RETRY_SLOT_BITS, "mg_syn_retry")?;
        let frags = Map::create(
            map_type::LRU_HASH,
            FRAG_KEY_LEN,
            8,
            FRAGMENT_SLOTS,
            "mg_frags",
        )?;
        let maps = ProgramMaps {
            xsks: xsks.fd(),
            ports: ports.fd(),
            counters: counters.fd(),
            budget: budget.fd(),
            admit: admit.fd(),
            retry: retry.fd(),
            frags: frags.fd(),
        };
        let prog = Self::load_program(p, &maps)?;
        Ok(IngressProgram {
            prog,
            xsks,
            ports,
            counters,
            budget,
            admit,
            retry,
            frags,
            queues: p.queues.max(1),
        })
    }

    /// Loads the program: bound to `p.ifindex` with the VLAN check when the
    /// kernel and the driver offer it, else without (and says so).
    fn load_program(p: &IngressParams, maps: &ProgramMaps) -> Result<Program, BpfError> {
        let plain = |why: String| {
            if p.ifindex.is_some() {
                log::warn!(
                    "{why}: VLAN-tagged frames whose tag the driver strips look untagged to meshgate"
                );
            }
            Program::load_xdp(&ingress_insns(p, maps, None), INGRESS_NAME)
        };
        let Some(ifindex) = p.ifindex else {
            return plain(String::new());
        };
        let Some(id) = super::btf::vmlinux_func_id(VLAN_TAG_KFUNC) else {
            return plain(format!("this kernel has no {VLAN_TAG_KFUNC} (Linux 6.8+)"));
        };
        match Program::load_xdp_bound(&ingress_insns(p, maps, Some(id)), INGRESS_NAME, ifindex) {
            Ok(prog) => Ok(prog),
            Err(e) => plain(format!("the driver does not report VLAN tags to XDP ({e})")),
        }
    }

    /// Sets the budget of new TCP flows, per queue and second (0: none).
    pub fn set_syn_budget(&self, new_per_second: u32) -> Result<(), BpfError> {
        self.budget
            .update(&0u32.to_ne_bytes(), &budget_value(new_per_second))
    }

    /// What the admission control did, summed over the queues.
    pub fn admission_counts(&self) -> Result<AdmissionCounts, BpfError> {
        let mut c = AdmissionCounts::default();
        let mut v = [0u8; admit::SIZE as usize];
        let at = |v: &[u8], off: i16| {
            u64::from_ne_bytes(
                v[off as usize..off as usize + 8]
                    .try_into()
                    .expect("8 bytes"),
            )
        };
        for q in 0..self.queues {
            if self.admit.lookup(&q.to_ne_bytes(), &mut v)? {
                c.admitted += at(&v, admit::ADMITTED);
                c.refused += at(&v, admit::REFUSED);
                c.retried += at(&v, admit::RETRIED);
            }
        }
        Ok(c)
    }

    /// Frames passed to the kernel, by reason ([`PASS_REASONS`]), all CPUs.
    pub fn pass_counts(&self) -> Result<[u64; PASS_REASONS.len()], BpfError> {
        let mut out = [0u64; PASS_REASONS.len()];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.counter(i as u32)?;
        }
        Ok(out)
    }

    /// Frames for meshgate that found no socket on their queue, all CPUs.
    pub fn no_socket_count(&self) -> Result<u64, BpfError> {
        self.counter(NO_SOCKET)
    }

    fn counter(&self, slot: u32) -> Result<u64, BpfError> {
        Ok(self
            .counters
            .lookup_percpu(&slot.to_ne_bytes())?
            .map(|buf| {
                buf.chunks_exact(8)
                    .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
                    .sum()
            })
            .unwrap_or(0))
    }

    /// Publishes (protocol, port) to the program.
    pub fn add_port(&self, protocol: u8, port: u16) -> Result<(), BpfError> {
        self.ports
            .update(&port_key(protocol, port), &1u32.to_ne_bytes())
    }

    /// Unpublishes (protocol, port); false when it was not published.
    pub fn remove_port(&self, protocol: u8, port: u16) -> Result<bool, BpfError> {
        self.ports.delete(&port_key(protocol, port))
    }

    /// Routes queue `queue`'s matching frames to the AF_XDP socket `fd`.
    pub fn register_socket(&self, queue: u32, fd: RawFd) -> Result<(), BpfError> {
        self.xsks
            .update(&queue.to_ne_bytes(), &(fd as u32).to_ne_bytes())
    }

    /// Attaches the program to `ifindex` with `flags` ([`bpf::xdp_flags`]).
    pub fn attach(&self, ifindex: u32, flags: u32, ifname: &str) -> Result<Link, BpfError> {
        self.prog.attach_xdp(ifindex, flags, ifname)
    }
}

/// A program that redirects every IPv4 TCP/UDP frame to `addr` (to any
/// address when `None`), or to `mac` when given, to the queue's socket and
/// passes everything else (ARP above all) to the kernel. The traffic
/// generator and the benchmark's reflector use it with an address or none;
/// the ingress sandbox with its address and MAC (its tasks' replies to
/// clients whose address meshgate preserved are routed to the sandbox's
/// MAC).
#[derive(Debug)]
pub struct CaptureProgram {
    /// The loaded program.
    pub prog: Program,
    /// Queue to AF_XDP socket.
    pub xsks: Map,
}

impl CaptureProgram {
    /// `miss_action`: what a captured frame gets while its queue has no
    /// socket (`XDP_PASS` for tools; `XDP_DROP` for the sandbox, whose
    /// kernel would reset the tasks' replies).
    pub fn load(
        addr: Option<Ipv4Addr>,
        mac: Option<MacAddr>,
        queues: u32,
        miss_action: u32,
    ) -> Result<CaptureProgram, BpfError> {
        let xsks = Map::create(map_type::XSKMAP, 4, 4, queues.max(1), "mg_cap_xsks")?;
        let mut a = Asm::new();
        emit_ipv4_to(&mut a, addr, mac, false);
        emit_redirect_and_pass(&mut a, xsks.fd(), miss_action, None);
        // Not counted: every reason is a plain pass. Without an address
        // nothing jumps to `pass_other_address`, and the verifier rejects
        // unreachable instructions.
        let mut reasons = vec!["pass_short", "pass_not_ipv4", "pass_other_protocol"];
        if addr.is_some() {
            reasons.push("pass_other_address");
        }
        for l in reasons {
            a.label(l).ja("pass");
        }
        let prog = Program::load_xdp(&a.finish(), CAPTURE_NAME)?;
        Ok(CaptureProgram { prog, xsks })
    }

    /// Routes queue `queue`'s captured frames to the AF_XDP socket `fd`.
    pub fn register_socket(&self, queue: u32, fd: RawFd) -> Result<(), BpfError> {
        self.xsks
            .update(&queue.to_ne_bytes(), &(fd as u32).to_ne_bytes())
    }

    /// Attaches the program to `ifindex` with `flags` ([`bpf::xdp_flags`]).
    pub fn attach(&self, ifindex: u32, flags: u32, ifname: &str) -> Result<Link, BpfError> {
        self.prog.attach_xdp(ifindex, flags, ifname)
    }
}

#[cfg(test)]
mod tests {
    //! These tests load the real program into the kernel and run it on the
    //! fixture frames with `BPF_PROG_TEST_RUN`. They need root (CAP_BPF);
    //! without it they fail and say so, unless MESHGATE_SKIP_PRIVILEGED=1.
    use super::*;
    use crate::dataplane::fixtures::*;

    fn load() -> Option<IngressProgram> {
        load_with(None)
    }

    fn load_with(node_addr6: Option<std::net::Ipv6Addr>) -> Option<IngressProgram> {
        let p = IngressParams {
            node_addr: NODE,
            node_addr6,
            overlay_addr: OVERLAY,
            overlay_mac: overlay_mac(),
            vni: VNI,
            vxlan_port: VXLAN_PORT,
            queues: 4,
            miss_action: action::ABORTED,
            ifindex: None,
        };
        match IngressProgram::load(&p) {
            Ok(prog) => Some(prog),
            Err(e)
                if e.errno() == Some(libc::EPERM)
                    && std::env::var("MESHGATE_SKIP_PRIVILEGED").as_deref() == Ok("1") =>
            {
                eprintln!("skipped (MESHGATE_SKIP_PRIVILEGED=1): {e}");
                None
            }
            Err(e) => panic!(
                "cannot load the XDP program (run the tests as root, or set MESHGATE_SKIP_PRIVILEGED=1 to skip): {e}"
            ),
        }
    }

    #[test]
    fn pass_labels_name_their_reasons() {
        for (reason, label) in PASS_REASONS.iter().zip(PASS_LABELS) {
            assert_eq!(label, format!("pass_{reason}"));
        }
    }

    /// With no socket registered and miss action ABORTED, "redirect" shows
    /// as ABORTED (DROP is the admission control's refusal).
    const REDIRECT: u32 = action::ABORTED;
    const PASS: u32 = action::PASS;
    const REFUSE: u32 = action::DROP;

    #[test]
    fn ipv6_to_a_published_port_on_the_node_is_redirected_and_the_rest_passes() {
        let Some(p) = load_with(Some(NODE6)) else {
            return;
        };
        p.add_port(6, PUBLISHED).unwrap();
        p.add_port(17, PUBLISHED).unwrap();
        let run = |f: &[u8]| p.prog.test_run(f).unwrap();
        let syn = client6_tcp(CLIENT6, 40000, 1, 0, SYN, b"");
        let with = |at: usize, b: u8| {
            let mut f = syn.clone();
            f[at] = b;
            f
        };
        assert_eq!(run(&syn), REDIRECT, "TCP to a published port");
        assert_eq!(run(&client6_udp(CLIENT6, 40000, b"q")), REDIRECT, "UDP");
        assert_eq!(run(&with(14 + 40 + 3, 81)), PASS, "an unpublished port");
        assert_eq!(run(&with(14 + 39, 9)), PASS, "another destination");
        assert_eq!(
            run(&with(14 + 6, 58)),
            PASS,
            "ICMPv6: neighbour discovery, echo"
        );
        for eh in [0u8, 43, 60] {
            assert_eq!(
                run(&with(14 + 6, eh)),
                REDIRECT,
                "extension header {eh}: counted by the pipeline"
            );
        }
        assert_eq!(
            run(&syn[..14 + 40 + 2]),
            REDIRECT,
            "a truncated transport header is counted too"
        );
        assert_eq!(run(&syn[..14 + 30]), PASS, "a truncated IPv6 header");
        let before = p.pass_counts().unwrap();
        run(&with(14 + 6, 58));
        let after = p.pass_counts().unwrap();
        let other_protocol = PASS_REASONS
            .iter()
            .position(|r| *r == "other_protocol")
            .unwrap();
        assert_eq!(after[other_protocol], before[other_protocol] + 1);
        // Without node.address6, IPv6 is not meshgate's.
        let v4_only = load().unwrap();
        v4_only.add_port(6, PUBLISHED).unwrap();
        assert_eq!(v4_only.prog.test_run(&syn).unwrap(), PASS);
    }

    #[test]
    fn ipv6_syns_pass_the_same_admission_control() {
        let Some(p) = load_with(Some(NODE6)) else {
            return;
        };
        p.add_port(6, PUBLISHED).unwrap();
        let run = |f: &[u8]| p.prog.test_run(f).unwrap();
        let syn = |port: u16, seq: u32| client6_tcp(CLIENT6, port, seq, 0, SYN, b"");
        p.set_syn_budget(1).unwrap();
        assert_eq!(run(&syn(41000, 1)), REDIRECT, "within the budget");
        assert_eq!(run(&syn(41001, 2)), REFUSE, "over the budget");
        assert_eq!(run(&syn(41001, 2)), REDIRECT, "its retransmission");
        assert_eq!(run(&syn(41002, 3)), REFUSE);
        // Another client's SYN is another fingerprint.
        assert_eq!(
            run(&client6_tcp(
                "2001:2::7".parse().unwrap(),
                41002,
                3,
                0,
                SYN,
                b""
            )),
            REFUSE
        );
        // Segments of established flows are not SYNs: never refused.
        assert_eq!(run(&client6_tcp(CLIENT6, 41003, 5, 1, ACK, b"x")), REDIRECT);
        assert_eq!(
            p.admission_counts().unwrap(),
            AdmissionCounts {
                admitted: 1,
                retried: 1,
                refused: 3,
            }
        );
    }

    #[test]
    fn frames_without_a_socket_get_the_miss_action_and_are_counted() {
        let Some(p) = load() else { return };
        p.add_port(6, PUBLISHED).unwrap();
        let ack = client_tcp(40000, 7, 1, ACK, b"x");
        assert_eq!(p.no_socket_count().unwrap(), 0);
        for _ in 0..3 {
            assert_eq!(p.prog.test_run(&ack).unwrap(), REDIRECT);
        }
        assert_eq!(p.no_socket_count().unwrap(), 3);
        // A frame the program passes is not a miss.
        p.remove_port(6, PUBLISHED).unwrap();
        assert_eq!(p.prog.test_run(&ack).unwrap(), PASS);
        assert_eq!(p.no_socket_count().unwrap(), 3);
        assert_eq!(p.pass_counts().unwrap().iter().sum::<u64>(), 1);
    }

    #[test]
    fn syn_admission_budget_and_second_chance() {
        let Some(p) = load() else { return };
        p.add_port(6, PUBLISHED).unwrap();
        let run = |f: &[u8]| p.prog.test_run(f).unwrap();
        let syn = |port: u16, seq: u32| client_tcp(port, seq, 0, SYN, b"");
        // No budget written: every SYN is admitted.
        for i in 0..50 {
            assert_eq!(run(&syn(40000 + i, 7)), REDIRECT);
        }
        assert_eq!(p.admission_counts().unwrap(), AdmissionCounts::default());
        // One SYN a second: the first is admitted, the next refused.
        p.set_syn_budget(1).unwrap();
        assert_eq!(run(&syn(41000, 1)), REDIRECT, "within the budget");
        assert_eq!(run(&syn(41001, 2)), REFUSE, "over the budget");
        assert_eq!(run(&syn(41002, 3)), REFUSE, "over the budget");
        // The refused SYN's retransmission gets its second chance, once.
        assert_eq!(run(&syn(41001, 2)), REDIRECT, "a retransmission");
        assert_eq!(
            run(&syn(41002, 3)),
            REFUSE,
            "the second chances have a budget of their own"
        );
        assert_eq!(
            run(&syn(41001, 99)),
            REFUSE,
            "another sequence number is not a retransmission"
        );
        // Established traffic, SYN-ACKs and UDP are never counted.
        assert_eq!(run(&client_tcp(41003, 5, 1, ACK, b"x")), REDIRECT);
        assert_eq!(run(&client_tcp(41004, 5, 1, SYN_ACK, b"")), REDIRECT);
        p.add_port(17, PUBLISHED).unwrap();
        assert_eq!(run(&client_udp(41005, b"x")), REDIRECT);
        assert_eq!(run(&task_reply_tcp(0, 41001, 1, 1, SYN_ACK, b"")), REDIRECT);
        assert_eq!(
            p.admission_counts().unwrap(),
            AdmissionCounts {
                admitted: 1,
                refused: 4,
                retried: 1
            }
        );
        // Budget 0 turns the admission control off again.
        p.set_syn_budget(0).unwrap();
        assert_eq!(run(&syn(41006, 6)), REDIRECT);
    }

    #[test]
    fn classifies_fixture_frames() {
        let Some(p) = load() else { return };
        p.add_port(6, PUBLISHED).unwrap();
        p.add_port(17, PUBLISHED).unwrap();
        let other_vni = {
            let inner = tcp_frame(
                NODE1_MAC,
                overlay_mac(),
                TASKS[0],
                OVERLAY,
                64,
                80,
                40000,
                1,
                1,
                ACK,
                b"",
            );
            vxlan_frame(NODE1_MAC, NODE_MAC, NODE1, NODE, 5, 77, &inner)
        };
        let other_inner = {
            let inner = tcp_frame(
                NODE1_MAC,
                crate::wire::MacAddr::docker(TASKS[1]),
                TASKS[0],
                TASKS[1],
                64,
                80,
                40000,
                1,
                1,
                ACK,
                b"",
            );
            vxlan_frame(NODE1_MAC, NODE_MAC, NODE1, NODE, 5, VNI, &inner)
        };
        let arp_other = {
            let inner = arp_frame(
                NODE1_MAC,
                crate::wire::MacAddr::BROADCAST,
                1,
                NODE1_MAC,
                TASKS[0],
                crate::wire::MacAddr::ZERO,
                TASKS[1],
            );
            vxlan_frame(NODE1_MAC, NODE_MAC, NODE1, NODE, 5, VNI, &inner)
        };
        let mut frag = client_udp(50000, b"frag");
        frag[20] = 0x20;
        fix_ip_checksum(&mut frag, 14);
        let mut icmp = client_udp(50000, b"ping");
        icmp[23] = 1;
        fix_ip_checksum(&mut icmp, 14);
        let plain_arp = arp_frame(
            CLIENT_MAC,
            crate::wire::MacAddr::BROADCAST,
            1,
            CLIENT_MAC,
            CLIENT,
            crate::wire::MacAddr::ZERO,
            NODE,
        );
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "tcp to the published port",
                client_tcp(40000, 1, 0, SYN, b""),
                REDIRECT,
            ),
            (
                "udp to the published port",
                client_udp(40000, b"x"),
                REDIRECT,
            ),
            (
                "ssh to the node",
                tcp_frame(
                    CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, 40000, 22, 1, 0, SYN, b"",
                ),
                PASS,
            ),
            (
                "udp to another port",
                udp_frame(CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, 40000, 53, b"x"),
                PASS,
            ),
            (
                "tcp to another address",
                tcp_frame(
                    CLIENT_MAC, NODE_MAC, CLIENT, TASKS[0], 64, 40000, 8080, 1, 0, SYN, b"",
                ),
                PASS,
            ),
            ("icmp to the node", icmp, PASS),
            ("arp", plain_arp, PASS),
            (
                "vxlan reply for the sandbox",
                task_reply_tcp(0, 40000, 1, 1, ACK, b""),
                REDIRECT,
            ),
            (
                "vxlan reply to a client, routed to the sandbox's MAC",
                task_reply_to_client_tcp(0, 40000, 1, 1, ACK, b""),
                REDIRECT,
            ),
            ("vxlan arp for the sandbox", task_arp_request(0), REDIRECT),
            ("vxlan arp for someone else", arp_other, PASS),
            ("vxlan with another vni", other_vni, PASS),
            ("vxlan for another inner address and MAC", other_inner, PASS),
            ("fragment to the node", frag, REDIRECT),
            ("truncated ethernet", vec![0u8; 14], PASS),
        ];
        for (name, frame, want) in cases {
            assert_eq!(p.prog.test_run(&frame).unwrap(), want, "{name}");
        }
        // Unpublishing takes effect.
        p.remove_port(6, PUBLISHED).unwrap();
        assert_eq!(
            p.prog.test_run(&client_tcp(40000, 1, 0, SYN, b"")).unwrap(),
            PASS
        );
        assert!(!p.remove_port(6, PUBLISHED).unwrap(), "already absent");
        // Every pass was counted under its reason.
        let counts = p.pass_counts().unwrap();
        let by_name: std::collections::HashMap<&str, u64> =
            PASS_REASONS.iter().copied().zip(counts).collect();
        assert_eq!(by_name["short"], 0);
        assert_eq!(by_name["not_ipv4"], 2, "ARP and the zero frame");
        assert_eq!(by_name["other_address"], 1);
        assert_eq!(by_name["other_protocol"], 1, "ICMP");
        assert_eq!(
            by_name["unpublished_port"], 3,
            "SSH, UDP 53, TCP 8080 after removal"
        );
        assert_eq!(by_name["vxlan_other_vni"], 1);
        assert_eq!(by_name["vxlan_not_for_sandbox"], 2);
        assert_eq!(
            p.prog
                .test_run(&client_tcp(40000, 1, 0, SYN, b"")[..20])
                .unwrap(),
            PASS
        );
        assert_eq!(
            p.pass_counts().unwrap()[0],
            1,
            "a truncated IPv4 frame is short"
        );
    }

    /// `f`, an IPv4 frame, as a fragment at `offset` (8-byte units) of
    /// the datagram `id`, more fragments following when `mf`.
    fn frag4(mut f: Vec<u8>, offset: u16, mf: bool, id: u16) -> Vec<u8> {
        f[18..20].copy_from_slice(&id.to_be_bytes());
        let v = offset | if mf { 0x2000 } else { 0 };
        f[20..22].copy_from_slice(&v.to_be_bytes());
        fix_ip_checksum(&mut f, 14);
        f
    }

    /// `f`, an IPv6 frame, with a fragment header (RFC 8200 4.5) between
    /// its fixed header and its transport header.
    fn frag6(f: &[u8], offset: u16, mf: bool, id: u32) -> Vec<u8> {
        let mut out = f[..54].to_vec();
        out[20] = 44;
        let len = u16::from_be_bytes([f[18], f[19]]) + 8;
        out[18..20].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[f[20], 0]);
        out.extend_from_slice(&((offset << 3) | u16::from(mf)).to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&f[54..]);
        out
    }

    /// `f`, an IPv4 frame, with four bytes of IP options (NOPs).
    fn with_options(f: &[u8]) -> Vec<u8> {
        let mut out = f[..34].to_vec();
        out.extend_from_slice(&[1, 1, 1, 1]);
        out.extend_from_slice(&f[34..]);
        out[14] = 0x46;
        let len = u16::from_be_bytes([f[16], f[17]]) + 4;
        out[16..18].copy_from_slice(&len.to_be_bytes());
        fix_ip_checksum(&mut out, 14);
        out
    }

    fn passed(p: &IngressProgram, reason: &str) -> u64 {
        let i = PASS_REASONS.iter().position(|r| *r == reason).unwrap();
        p.pass_counts().unwrap()[i]
    }

    /// The node's own fragmented traffic is the kernel's: only a datagram
    /// whose first fragment goes to a published port is meshgate's, and
    /// its later fragments (which carry no ports) follow it.
    #[test]
    fn fragments_follow_their_first_fragment_and_the_rest_is_the_kernels() {
        let Some(p) = load_with(Some(NODE6)) else {
            return;
        };
        p.add_port(17, PUBLISHED).unwrap();
        let run = |f: &[u8]| p.prog.test_run(f).unwrap();
        let to = |port: u16| {
            udp_frame(
                CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, 40000, port, &[7; 64],
            )
        };
        // A published port's datagram, first fragment first.
        assert_eq!(run(&frag4(to(PUBLISHED), 0, true, 1)), REDIRECT, "first");
        assert_eq!(run(&frag4(to(PUBLISHED), 9, true, 1)), REDIRECT, "middle");
        assert_eq!(run(&frag4(to(PUBLISHED), 18, false, 1)), REDIRECT, "last");
        // The node's own service: every fragment passes.
        assert_eq!(
            run(&frag4(to(9999), 0, true, 2)),
            PASS,
            "first, unpublished"
        );
        assert_eq!(run(&frag4(to(9999), 9, false, 2)), PASS, "its last");
        // Later fragments of no first fragment seen, of another source, of
        // another protocol: the kernel's, whatever their bytes look like.
        let before = passed(&p, "fragment_not_ours");
        assert_eq!(
            run(&frag4(to(PUBLISHED), 9, false, 3)),
            PASS,
            "no first seen"
        );
        let other = udp_frame(
            CLIENT_MAC, NODE_MAC, TASKS[0], NODE, 64, 40000, PUBLISHED, b"x",
        );
        assert_eq!(run(&frag4(other, 9, false, 1)), PASS, "another source");
        let tcp = client_tcp(40000, 1, 1, ACK, &[7; 64]);
        assert_eq!(run(&frag4(tcp, 9, false, 1)), PASS, "another protocol");
        assert_eq!(passed(&p, "fragment_not_ours"), before + 3);
        // A first fragment too short to hold the ports is the kernel's.
        let short = frag4(to(PUBLISHED), 0, true, 4);
        assert_eq!(run(&short[..14 + 20 + 2]), PASS, "a tiny first fragment");
        // IPv6, the same.
        let to6 = |port: u16| {
            let mut f = client6_udp(CLIENT6, 40000, &[7; 64]);
            f[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&port.to_be_bytes());
            f
        };
        assert_eq!(
            run(&frag6(&to6(PUBLISHED), 0, true, 7)),
            REDIRECT,
            "IPv6 first"
        );
        assert_eq!(
            run(&frag6(&to6(PUBLISHED), 9, false, 7)),
            REDIRECT,
            "IPv6 last"
        );
        assert_eq!(
            run(&frag6(&to6(9999), 0, true, 8)),
            PASS,
            "IPv6, unpublished"
        );
        assert_eq!(run(&frag6(&to6(9999), 9, false, 8)), PASS, "its last");
        assert_eq!(
            run(&frag6(&to6(PUBLISHED), 9, false, 9)),
            PASS,
            "IPv6, no first seen"
        );
        // The IPv4 and IPv6 tables do not mix: datagram 7 is IPv6's.
        assert_eq!(run(&frag4(to(PUBLISHED), 9, false, 7)), PASS);
    }

    /// IPv4 options: a published port's are the pipeline's to refuse and
    /// count; the node's own reach its kernel.
    #[test]
    fn ip_options_to_the_node_reach_its_kernel() {
        let Some(p) = load() else { return };
        p.add_port(6, PUBLISHED).unwrap();
        let run = |f: &[u8]| p.prog.test_run(f).unwrap();
        let ssh = tcp_frame(
            CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, 40000, 22, 1, 0, SYN, b"",
        );
        assert_eq!(run(&with_options(&ssh)), PASS, "ssh with options");
        assert_eq!(
            run(&with_options(&client_tcp(40000, 1, 0, SYN, b""))),
            REDIRECT
        );
        let mut bad = client_tcp(40000, 1, 0, SYN, b"");
        bad[14] = 0x44;
        fix_ip_checksum(&mut bad, 14);
        assert_eq!(
            run(&bad),
            REDIRECT,
            "a malformed header: the pipeline counts it"
        );
        assert_eq!(
            run(&with_options(&ssh)[..14 + 24 + 2]),
            REDIRECT,
            "truncated: counted"
        );
    }

    #[test]
    fn capture_program_passes_arp() {
        let Some(_) = load() else { return };
        let p = CaptureProgram::load(Some(NODE), None, 1, action::PASS).unwrap();
        let plain_arp = arp_frame(
            CLIENT_MAC,
            crate::wire::MacAddr::BROADCAST,
            1,
            CLIENT_MAC,
            CLIENT,
            crate::wire::MacAddr::ZERO,
            NODE,
        );
        assert_eq!(p.prog.test_run(&plain_arp).unwrap(), PASS);
        // No socket registered, production miss action: passes too.
        assert_eq!(p.prog.test_run(&client_udp(1, b"x")).unwrap(), PASS);
        // Without an address (the traffic generator's capture) it loads
        // and passes ARP as well.
        let any = CaptureProgram::load(None, None, 1, action::PASS).unwrap();
        assert_eq!(any.prog.test_run(&plain_arp).unwrap(), PASS);
    }

    #[test]
    fn port_keys_differ_by_protocol() {
        assert_ne!(port_key(6, 8080), port_key(17, 8080));
        assert_ne!(port_key(6, 8080), port_key(6, 8081));
    }
}
