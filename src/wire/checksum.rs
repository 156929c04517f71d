//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! All values are host-order `u16` views of big-endian words. A *sum* is the
//! folded one's-complement sum of some words; a *checksum* is its complement,
//! as stored in a header.
//!
//! The data plane rewrites addresses and ports of packets it forwards; it never
//! recomputes a TCP or UDP checksum over the payload. [`Delta`] collects the
//! word changes and applies them at once with RFC 1624 equation 3,
//! `HC' = ~(~HC + ~m + m')`, which, unlike equation 2, never produces the
//! `-0` (0xffff vs 0x0000) ambiguity on a header that had a valid checksum.

use std::net::{Ipv4Addr, Ipv6Addr};

/// One's-complement sum of `data` as big-endian 16-bit words, not folded.
/// An odd trailing byte is padded with zero (RFC 1071).
#[inline]
pub fn sum_raw(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Eight bytes at a time: four words, summed into a u64 that cannot
        // overflow for any slice shorter than 2^47 bytes.
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]))
            + u64::from(u16::from_be_bytes([c[2], c[3]]))
            + u64::from(u16::from_be_bytes([c[4], c[5]]))
            + u64::from(u16::from_be_bytes([c[6], c[7]]));
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a wide one's-complement accumulator to 16 bits, without a loop
/// (four end-around-carry steps cover any u64).
#[inline]
pub fn fold(acc: u64) -> u16 {
    let s = (acc & 0xffff_ffff) + (acc >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Folded sum of a 20-byte IPv4 header without options, for the fast path:
/// the fixed length lets the compiler drop every bounds check. Always
/// inlined: a call cost the established path the saving of registers
/// (bench/README.md, "Choices the counts made").
#[inline(always)]
pub fn ipv4_header_sum(h: &[u8; 20]) -> u16 {
    // Summed in the machine's byte order, swapped once at the end: the
    // one's-complement sum does not depend on byte order (RFC 1071, 2.B).
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    u16::from_be(fold(w(0) + w(4) + w(8) + w(12) + w(16)))
}

/// Folded one's-complement sum of `data`.
#[inline]
pub fn data(data: &[u8]) -> u16 {
    fold(sum_raw(data))
}

/// Folded sum of several partial sums.
#[inline]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Sum of the IPv4 pseudo-header used by TCP and UDP (RFC 793, RFC 768).
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let s = src.octets();
    let d = dst.octets();
    fold(
        u64::from(u16::from_be_bytes([s[0], s[1]]))
            + u64::from(u16::from_be_bytes([s[2], s[3]]))
            + u64::from(u16::from_be_bytes([d[0], d[1]]))
            + u64::from(u16::from_be_bytes([d[2], d[3]]))
            + u64::from(protocol)
            + u64::from(length),
    )
}

/// Sum of the IPv6 pseudo-header used by TCP, UDP and ICMPv6 (RFC 8200
/// section 8.1): both addresses, the upper-layer length as 32 bits, the
/// next header.
#[inline]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u16 {
    let addrs = addr6_sum::<false>(&src.octets()) + addr6_sum::<false>(&dst.octets());
    let mut acc = u64::from(u16::from_be(fold(addrs)));
    acc += u64::from(length >> 16) + u64::from(length & 0xffff) + u64::from(next_header);
    fold(acc)
}

/// A transport checksum after its pseudo-header's addresses change from
/// the IPv6 pair `from` to the IPv4 pair `to` (RFC 7915's translation: the
/// length and next header are the same in both pseudo-headers and cancel),
/// by RFC 1624 equation 3 in one sum. `hc` and the result are in the
/// machine's byte order, as [`crate::wire::get16_ne`] reads a checksum:
/// summing words in either order gives the same sum, swapped (RFC 1071,
/// 2.B), so no word is swapped. Equal, to the bit, to
/// `apply_folded(hc, combine(&[!pseudo_header_v6(..), pseudo_header(..)]))`
/// in the wire's order.
#[inline(always)]
pub fn update_v6_to_v4_ne(hc: u16, from: (&[u8; 16], &[u8; 16]), to: (Ipv4Addr, Ipv4Addr)) -> u16 {
    let out = addr6_sum::<true>(from.0) + addr6_sum::<true>(from.1);
    !fold(u64::from(!hc) + out + addr4_sum::<false>(to.0) + addr4_sum::<false>(to.1))
}

/// The change [`update_v6_to_v4_ne`] applies, as a folded delta to add to
/// others (a flow's, for an IPv6 client: one update instead of two), in
/// the machine's byte order. `apply_folded(hc, v6_to_v4_delta_ne(from,
/// to))` is `update_v6_to_v4_ne(hc, from, to)`, to the bit.
#[inline]
pub fn v6_to_v4_delta_ne(from: (&[u8; 16], &[u8; 16]), to: (Ipv4Addr, Ipv4Addr)) -> u16 {
    let out = addr6_sum::<true>(from.0) + addr6_sum::<true>(from.1);
    fold(out + addr4_sum::<false>(to.0) + addr4_sum::<false>(to.1))
}

/// [`update_v6_to_v4_ne`] the other way: the IPv4 pair `from` leaves the
/// pseudo-header, the IPv6 pair `to` comes in. Equal, to the bit, to
/// `apply_folded(hc, combine(&[!pseudo_header(..), pseudo_header_v6(..)]))`
/// in the wire's order.
#[inline(always)]
pub fn update_v4_to_v6_ne(hc: u16, from: (Ipv4Addr, Ipv4Addr), to: (&[u8; 16], &[u8; 16])) -> u16 {
    let out = addr4_sum::<true>(from.0) + addr4_sum::<true>(from.1);
    !fold(u64::from(!hc) + out + addr6_sum::<false>(to.0) + addr6_sum::<false>(to.1))
}

/// The unfolded sum of an IPv6 address in the machine's byte order, as
/// [`ipv4_header_sum`] sums (RFC 1071, 2.B): four loads, not sixteen.
/// `NEG`: its one's-complement negation, for an address that leaves a
/// sum (`!w` of a 32-bit word negates both its 16-bit halves).
#[inline(always)]
fn addr6_sum<const NEG: bool>(a: &[u8; 16]) -> u64 {
    let w = |i: usize| {
        let w = u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        u64::from(if NEG { !w } else { w })
    };
    w(0) + w(4) + w(8) + w(12)
}

/// The change of an IPv4 address from `old` to `new` as RFC 1624 sums it
/// (`!old + new` over its two 16-bit words), in the wire's byte order
/// (`get16_ne`) and unfolded: at most 0x3fffc, so that a few such sums
/// add up in 32 bits before one fold. (Summed by 16-bit halves, not as
/// `addr4_sum`'s 32-bit words, whose sums need 64 bits and a longer
/// fold: bench/README.md, "Choices the counts made".)
#[inline(always)]
pub fn addr_change_ne(old: Ipv4Addr, new: Ipv4Addr) -> u32 {
    let a = |x: Ipv4Addr| {
        let v = u32::from_ne_bytes(x.octets());
        (v >> 16) + (v & 0xffff)
    };
    // `!w` of a 16-bit word is 0xffff - w: an old address counts
    // 0x1fffe - its words' sum.
    0x1fffe - a(old) + a(new)
}

/// [`addr6_sum`] of an IPv4 address.
#[inline(always)]
fn addr4_sum<const NEG: bool>(a: Ipv4Addr) -> u64 {
    let w = u32::from_ne_bytes(a.octets());
    u64::from(if NEG { !w } else { w })
}

/// Checksum (complemented sum) of `data`, as stored in an IPv4 or ICMP header
/// whose checksum field is zero in `data`.
#[inline]
pub fn checksum(bytes: &[u8]) -> u16 {
    !data(bytes)
}

/// Accumulated changes of 16-bit words, applied to a stored checksum with
/// RFC 1624 equation 3.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// An empty change.
    pub const fn new() -> Self {
        Delta(0)
    }

    /// Records that the word `old` became `new`.
    #[inline]
    pub fn word(&mut self, old: u16, new: u16) -> &mut Self {
        self.0 += u64::from(!old) + u64::from(new);
        self
    }

    /// Records that a 32-bit field (an IPv4 address) changed.
    #[inline]
    pub fn word32(&mut self, old: u32, new: u32) -> &mut Self {
        self.word((old >> 16) as u16, (new >> 16) as u16)
            .word(old as u16, new as u16)
    }

    /// Records that an IPv4 address changed.
    #[inline]
    pub fn addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) -> &mut Self {
        self.word32(u32::from(old), u32::from(new))
    }

    /// Records that the checksummed length word changed (pseudo-header).
    #[inline]
    pub fn len(&mut self, old: u16, new: u16) -> &mut Self {
        self.word(old, new)
    }

    /// The change folded to 16 bits, to store and re-apply later with
    /// [`apply_folded`].
    #[inline]
    pub fn folded(&self) -> u16 {
        fold(self.0)
    }

    /// Applies the changes to a stored checksum `hc` (RFC 1624 eq. 3).
    #[inline]
    pub fn apply(&self, hc: u16) -> u16 {
        !fold(u64::from(!hc) + self.0)
    }

    /// Applies the changes to a UDP checksum: zero means "no checksum" and
    /// stays zero; a computed zero is sent as 0xffff (RFC 768).
    #[inline]
    pub fn apply_udp(&self, hc: u16) -> u16 {
        if hc == 0 {
            return 0;
        }
        match self.apply(hc) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Applies a folded change `d` (from [`Delta::folded`]) to checksum `hc`.
/// The inverse change of `d` is `!d`.
#[inline]
pub fn apply_folded(hc: u16, d: u16) -> u16 {
    // Two 16-bit values: one end-around carry is enough.
    let s = u32::from(!hc) + u32::from(d);
    !(((s & 0xffff) + (s >> 16)) as u16)
}

/// Applies two folded changes at once: `apply_folded(apply_folded(hc, a), b)`
/// with one fold.
#[inline]
pub fn apply_folded2(hc: u16, a: u16, b: u16) -> u16 {
    // Three 16-bit values sum to at most 0x2fffd: two end-around carries.
    let s = u32::from(!hc) + u32::from(a) + u32::from(b);
    let s = (s & 0xffff) + (s >> 16);
    !(((s & 0xffff) + (s >> 16)) as u16)
}

/// Like [`apply_folded`] for a UDP checksum: zero (absent) stays zero, a
/// computed zero is sent as 0xffff.
#[inline]
pub fn apply_folded_udp(hc: u16, d: u16) -> u16 {
    if hc == 0 {
        return 0;
    }
    match apply_folded(hc, d) {
        0 => 0xffff,
        c => c,
    }
}

/// The folded change of an IPv4 TTL decrement: `!(ttl << 8 | proto) +
/// ((ttl - 1) << 8 | proto)` is 0xfeff whatever the TTL (above 0) and the
/// protocol.
pub const TTL_DECREMENT: u16 = 0xfeff;

/// Updates checksum `hc` for one 16-bit word change (RFC 1624 eq. 3).
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    Delta::new().word(old, new).apply(hc)
}

/// Updates checksum `hc` for one 32-bit field change.
#[inline]
pub fn update32(hc: u16, old: u32, new: u32) -> u16 {
    Delta::new().word32(old, new).apply(hc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The IPv4 header from RFC 1071's companion example set, also used by
    /// Wikipedia's "IPv4 header checksum" article: checksum 0xb861.
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn known_header_checksum() {
        let mut h = HEADER;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
        // A header with its checksum in place sums to 0xffff.
        assert_eq!(data(&HEADER), 0xffff);
    }

    #[test]
    fn fast_header_sum_agrees() {
        assert_eq!(ipv4_header_sum(&HEADER), data(&HEADER));
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(data(&[0x01]), 0x0100);
        assert_eq!(data(&[0x01, 0x02, 0x03]), 0x0102 + 0x0300);
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285,
        // new checksum 0x0000 computed by eq. 3.
        assert_eq!(update16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn udp_zero_checksum_stays_absent() {
        let mut d = Delta::new();
        d.word(1, 2);
        assert_eq!(d.apply_udp(0), 0);
    }

    fn with_checksum(mut h: Vec<u8>) -> Vec<u8> {
        h[10] = 0;
        h[11] = 0;
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    proptest! {
        /// An address's change summed in the wire's byte order is
        /// `Delta`'s, swapped.
        #[test]
        fn address_change_is_deltas(a in any::<u32>(), b in any::<u32>()) {
            let (a, b) = (Ipv4Addr::from(a), Ipv4Addr::from(b));
            let mut d = Delta::new();
            d.addr(a, b);
            prop_assert_eq!(fold(u64::from(addr_change_ne(a, b))), d.folded().to_be());
        }

        /// The byte-order-free fast sum is the sum of big-endian words.
        #[test]
        fn fast_header_sum_is_the_sum(h in any::<[u8; 20]>()) {
            prop_assert_eq!(ipv4_header_sum(&h), data(&h));
        }

        /// The IPv6 pseudo-header's word-wise sum is its big-endian sum
        /// (RFC 8200 section 8.1), to the bit (0 and 0xffff are told apart).
        #[test]
        fn pseudo_header_v6_is_the_sum(
            s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), nh in any::<u8>(), len in any::<u32>()
        ) {
            let acc = sum_raw(&s) + sum_raw(&d)
                + u64::from(len >> 16) + u64::from(len & 0xffff) + u64::from(nh);
            prop_assert_eq!(
                pseudo_header_v6(Ipv6Addr::from(s), Ipv6Addr::from(d), nh, len),
                fold(acc)
            );
        }

        /// The IPv6-to-IPv4 update in one sum is the pseudo-headers' change
        /// applied as RFC 1624 says, to the bit.
        #[test]
        fn v6_to_v4_update_is_the_pseudo_headers_change(
            hc in any::<u16>(), s6 in any::<[u8; 16]>(), d6 in any::<[u8; 16]>(),
            s4 in any::<[u8; 4]>(), d4 in any::<[u8; 4]>(), nh in any::<u8>(), len in any::<u16>()
        ) {
            let (s4, d4) = (Ipv4Addr::from(s4), Ipv4Addr::from(d4));
            let out = pseudo_header_v6(Ipv6Addr::from(s6), Ipv6Addr::from(d6), nh, u32::from(len));
            let inn = pseudo_header(s4, d4, nh, len);
            let want = apply_folded(hc, combine(&[!out, inn]));
            let ne = update_v6_to_v4_ne(hc.to_be(), (&s6, &d6), (s4, d4));
            prop_assert_eq!(u16::from_be(ne), want);
        }

        /// The translation's change as a delta applies as the update does.
        #[test]
        fn v6_to_v4_delta_applies_as_the_update(
            hc in any::<u16>(), s6 in any::<[u8; 16]>(), d6 in any::<[u8; 16]>(),
            s4 in any::<[u8; 4]>(), d4 in any::<[u8; 4]>()
        ) {
            let (s4, d4) = (Ipv4Addr::from(s4), Ipv4Addr::from(d4));
            prop_assert_eq!(
                apply_folded(hc, v6_to_v4_delta_ne((&s6, &d6), (s4, d4))),
                update_v6_to_v4_ne(hc, (&s6, &d6), (s4, d4))
            );
        }

        /// The IPv4-to-IPv6 update in one sum, likewise.
        #[test]
        fn v4_to_v6_update_is_the_pseudo_headers_change(
            hc in any::<u16>(), s6 in any::<[u8; 16]>(), d6 in any::<[u8; 16]>(),
            s4 in any::<[u8; 4]>(), d4 in any::<[u8; 4]>(), nh in any::<u8>(), len in any::<u16>()
        ) {
            let (s4, d4) = (Ipv4Addr::from(s4), Ipv4Addr::from(d4));
            let out = pseudo_header(s4, d4, nh, len);
            let inn = pseudo_header_v6(Ipv6Addr::from(s6), Ipv6Addr::from(d6), nh, u32::from(len));
            let want = apply_folded(hc, combine(&[!out, inn]));
            let ne = update_v4_to_v6_ne(hc.to_be(), (s4, d4), (&s6, &d6));
            prop_assert_eq!(u16::from_be(ne), want);
        }

        /// Two folded changes applied at once equal them applied in turn.
        #[test]
        fn two_changes_at_once(hc in any::<u16>(), a in any::<u16>(), b in any::<u16>()) {
            prop_assert_eq!(apply_folded2(hc, a, b), apply_folded(apply_folded(hc, a), b));
        }

        /// Incrementally updating a valid checksum after rewriting any words
        /// gives the same result as recomputing it from scratch.
        #[test]
        fn incremental_equals_full(
            mut words in proptest::collection::vec(any::<u16>(), 10..40),
            edits in proptest::collection::vec((0usize..40, any::<u16>()), 1..8),
        ) {
            // Word 5 holds the checksum, as in an IPv4 header.
            words[5] = 0;
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let orig = with_checksum(bytes);
            let mut edited = orig.clone();
            let mut delta = Delta::new();
            for (i, v) in edits {
                let i = i % words.len();
                if i == 5 { continue; }
                let old = u16::from_be_bytes([edited[2*i], edited[2*i+1]]);
                edited[2*i..2*i+2].copy_from_slice(&v.to_be_bytes());
                delta.word(old, v);
            }
            let hc = u16::from_be_bytes([orig[10], orig[11]]);
            let inc = delta.apply(hc);
            let full = u16::from_be_bytes({ let f = with_checksum(edited.clone()); [f[10], f[11]] });
            // Equal as one's-complement numbers: 0x0000 and 0xffff are both
            // "zero"; equation 3 yields the same representation as a full
            // recomputation except for that pair.
            prop_assert!(inc == full || (inc ^ full) == 0xffff && (inc == 0 || full == 0),
                "inc {inc:#06x} full {full:#06x}");
            edited[10..12].copy_from_slice(&inc.to_be_bytes());
            prop_assert_eq!(data(&edited), 0xffff);
        }

        /// A stored forward change undone by its negation, TTL included.
        #[test]
        fn folded_deltas_invert(words in proptest::collection::vec(any::<u16>(), 10..20), a in any::<u32>(), b in any::<u32>(), ttl in 2u8..=255, proto in any::<u8>()) {
            let mut h: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            h[8] = ttl;
            h[9] = proto;
            h[12..16].copy_from_slice(&a.to_be_bytes());
            let h = with_checksum(h);
            let hc = u16::from_be_bytes([h[10], h[11]]);
            let mut d = Delta::new();
            d.word32(a, b);
            let fwd = d.folded();
            // Forward: address a -> b and TTL - 1, from the stored deltas.
            let mut g = h.clone();
            g[12..16].copy_from_slice(&b.to_be_bytes());
            g[8] = ttl - 1;
            let c = apply_folded(apply_folded(hc, fwd), TTL_DECREMENT);
            g[10..12].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(data(&g), 0xffff);
            // Reverse: b -> a with the negated delta, TTL - 1 again.
            let mut r = g.clone();
            r[12..16].copy_from_slice(&a.to_be_bytes());
            r[8] = ttl - 2;
            if ttl >= 3 {
                let c = apply_folded(apply_folded(c, !fwd), TTL_DECREMENT);
                r[10..12].copy_from_slice(&c.to_be_bytes());
                prop_assert_eq!(data(&r), 0xffff);
            }
        }

        #[test]
        fn sum_matches_naive(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut naive: u32 = 0;
            for pair in bytes.chunks(2) {
                let w = if pair.len() == 2 { u16::from_be_bytes([pair[0], pair[1]]) } else { u16::from(pair[0]) << 8 };
                naive += u32::from(w);
                naive = (naive & 0xffff) + (naive >> 16);
            }
            prop_assert_eq!(data(&bytes), naive as u16);
        }
    }
}
