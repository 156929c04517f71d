//! NAT and checksum deltas: a flow's translation written into a packet,
//! the checksums changed by the flow's stored deltas (RFC 1624) or summed
//! anew where a virtual link left them partial.

use super::IP;
use crate::dataplane::flow::{ClientKey, Flow};
use crate::dataplane::tables::{Identity, L4Checksum};
use crate::wire::ipv4::field as ip_f;
use crate::wire::ipv4::protocol;
use crate::wire::tcp::field as tcp_f;
use crate::wire::udp::field as udp_f;
use crate::wire::{checksum, get_addr, get16, get16_ne, set_addr, set16, set16_ne, tcp, udp};
use std::net::Ipv4Addr;

/// Rewrites the addresses, TTL (minus one) and ports of the IPv4 packet at
/// the start of `p` (a header without options, then a TCP or UDP header
/// that `parse_l4` accepted). The IPv4 checksum changes by the flow's
/// stored deltas (RFC 1624): every rewritten field is constant for a flow,
/// so its checksum change is too. So does the TCP or UDP checksum, unless
/// it is (or may be) partial: see [`L4Checksum`].
///
/// The mode is a type parameter of [`nat_with`], picked here once, so that
/// the NIC's incremental path compiles to the update alone, without the
/// run-time tests of the mode inside the update (bench/README.md, "Choices
/// the counts made").
///
/// Returns whether the transport checksum was summed anew (the `Full`
/// mode, or a partial sum completed): then it is over the IPv4
/// pseudo-header alone, and a reply to an IPv6 client needs it patched for
/// the IPv6 one (`reply::summed_for_ipv6`), which the flow's deltas would
/// otherwise have done (`deltas_of`).
#[inline(always)]
pub(super) fn nat(p: &mut [u8], rw: Rewrite, l4_checksum: L4Checksum) -> bool {
    if l4_checksum == L4Checksum::Incremental {
        nat_with::<false>(p, rw, l4_checksum)
    } else {
        nat_with::<true>(p, rw, l4_checksum)
    }
}

/// What a flow's translation writes into one direction's packets, and
/// the checksum changes that go with it.
#[derive(Clone, Copy)]
pub(super) struct Rewrite {
    pub(super) src: Ipv4Addr,
    pub(super) dst: Ipv4Addr,
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) delta_addrs: u16,
    pub(super) delta_l4: u16,
}

impl Rewrite {
    /// A client's packet of `flow`, from the overlay address (or the
    /// client's own) to the task.
    #[inline(always)]
    pub(super) fn to_task(flow: &Flow, overlay: Ipv4Addr) -> Self {
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
    pub(super) fn to_client(flow: &Flow, node: Ipv4Addr) -> Self {
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
pub(super) fn nat_with<const CHECKED: bool>(
    p: &mut [u8],
    rw: Rewrite,
    l4_checksum: L4Checksum,
) -> bool {
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
        return false;
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
            return false;
        };
        set16(t, tcp_f::SRC_PORT, sport);
        set16(t, tcp_f::DST_PORT, dport);
        let stored = get16_ne(t, tcp_f::CHECKSUM);
        let c = checksum::apply_folded(stored, delta_l4);
        set16_ne(t, tcp_f::CHECKSUM, c);
        stored
    } else {
        let Some(u) = l4.first_chunk_mut::<{ udp::HEADER_LEN }>() else {
            return false;
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
            return true;
        }
    }
    false
}

/// A flow's translation of a fragment after its datagram's first (it
/// has no transport header): the addresses and TTL, the IPv4 checksum by
/// the flow's address delta (the transport checksum, in the first
/// fragment, took the whole change).
pub(super) fn nat_addrs(p: &mut [u8], rw: Rewrite) {
    let Some(h) = p.first_chunk_mut::<IP>() else {
        return;
    };
    h[ip_f::TTL] = h[ip_f::TTL].wrapping_sub(1);
    set_addr(h, ip_f::SRC, rw.src);
    set_addr(h, ip_f::DST, rw.dst);
    let c = checksum::apply_folded2(
        get16_ne(h, ip_f::CHECKSUM),
        rw.delta_addrs,
        TTL_DECREMENT_NE,
    );
    set16_ne(h, ip_f::CHECKSUM, c);
}

/// Sums the TCP or UDP checksum of `seg` (the whole segment) anew. A UDP
/// checksum of zero (the sender computed none) stays zero: a partial one
/// never is, since the pseudo-header's sum is not zero.
#[inline(never)]
pub(super) fn fill_l4_checksum(seg: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8) {
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
pub(super) const TTL_DECREMENT_NE: u16 = checksum::TTL_DECREMENT.to_be();

/// The checksum deltas of a flow's forward translation: the packet from
/// the client's port to the published port leaves from the SNAT port to
/// the target port, its addresses changed by `addrs` (the unfolded sum of
/// each address's change, [`checksum::addr_change_ne`]). In the wire's
/// byte order ([`get16_ne`]), as the flow stores them.
///
/// Summed in the wire's byte order directly, in 32 bits with two folds
/// (the sums are bounded): [`checksum::Delta`]'s 64-bit accumulator and
/// general fold, then two swaps, cost each new flow more (bench/README.md,
/// "Choices the counts made"). `flow_deltas_agree` checks the two against
/// each other.
#[inline(always)]
pub(super) fn flow_deltas(
    addrs: u32,
    (client_port, snat): (u16, u16),
    (published, target): (u16, u16),
) -> (u16, u16) {
    let p = |x: u16| u32::from(x.to_be());
    // Two end-around carries bring any 32-bit sum to 16 bits (two
    // addresses' changes are at most 0x7fff8; a folded sum and four port
    // words at most 5 * 0xffff).
    let fold = |s: u32| {
        let s = (s & 0xffff) + (s >> 16);
        ((s & 0xffff) + (s >> 16)) as u16
    };
    let addrs = fold(addrs);
    let l4 = fold(
        u32::from(addrs) + 0xffff - p(client_port) + p(snat) + 0xffff - p(published) + p(target),
    );
    (addrs, l4)
}

/// The checksum deltas of a flow on this node (`id`) from its key, its
/// SNAT port and its task: the task sees the client itself as the source
/// of a flow that keeps the client's address (`preserve`), else the
/// node's overlay address.
///
/// For an IPv6 client (`key.v6`, its address `c6`), the transport delta
/// starts from the client's own packet: its IPv6 pseudo-header (`c6` to
/// `node.address6`) becomes the task's IPv4 one in the same update, so
/// that the translation between the families leaves the transport
/// checksum alone (`xlat::Transport::Kept`) and a packet's checksum is
/// patched once, not twice (bench/README.md, "IPv6 clients").
#[inline(always)]
pub(super) fn deltas_of(
    id: &Identity,
    key: &ClientKey,
    (preserve, snat_port): (bool, u16),
    (node_to_task, target): (u32, u16),
    c6: &[u8; 16],
) -> (u16, u16) {
    let source = if preserve {
        key.client
    } else {
        id.overlay_addr
    };
    // The node's address changing to the task's comes summed once per
    // task by the snapshot (`TaskEntry::node_to_task`).
    let (addrs, l4) = flow_deltas(
        checksum::addr_change_ne(key.client, source) + node_to_task,
        (key.client_port, snat_port),
        (key.published, target),
    );
    if !key.v6 {
        return (addrs, l4);
    }
    let node6 = id.node_addr6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
    let v6 = checksum::v6_to_v4_delta_ne((c6, &node6.octets()), (key.client, id.node_addr));
    (addrs, checksum::combine(&[l4, v6]))
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
            flow_deltas(
                checksum::addr_change_ne(a, a) + checksum::addr_change_ne(b, b),
                (1, 1),
                (2, 2)
            ),
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
                flow_deltas(
                    checksum::addr_change_ne(ip(0), ip(2)) + checksum::addr_change_ne(ip(1), ip(3)),
                    (ports[0], ports[2]),
                    (ports[1], ports[3]),
                ),
                want
            );
        }
    }
}
