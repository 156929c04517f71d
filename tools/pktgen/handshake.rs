//! The generator's answers in handshake trials (`send --handshakes`): it
//! plays both ends of each connection, statelessly, every answer made from
//! the segment it answers.
//!
//! ```text
//!   client (generator)            path under test           task (generator, in VXLAN)
//!   SYN                 ───────────────────────────────────▶
//!                       ◀─────────────────────────────────── SYN-ACK
//!   FIN-ACK (acks it)   ───────────────────────────────────▶
//!                       ◀─────────────────────────────────── FIN-ACK
//!   ACK: complete       ───────────────────────────────────▶
//! ```
//!
//! Five segments cross the path per connection, each way translated; a
//! connection counts as complete when the client has the task's FIN-ACK.
//! The task's segments go back in VXLAN to the VTEP the SYN came from.

use std::net::Ipv4Addr;

use meshgate::wire::checksum;

const ETH: usize = 14;
const IP: usize = 20;
const TCP: usize = 20;
/// Outer Ethernet, IPv4, UDP and VXLAN headers in front of the inner frame.
const VXLAN_OUTER: usize = ETH + IP + 8 + 8;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The task's initial sequence number for a SYN's sequence number: any
/// function of the SYN works, the client acknowledges what it gets.
fn task_isn(client_seq: u32) -> u32 {
    client_seq.rotate_left(13) ^ 0x5bd1_e995
}

/// An answer written to `out`: its length, and whether it completes a
/// connection (the client's last ACK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub len: usize,
    pub completes: bool,
}

/// The answer to frame `f`, if it is a segment of a handshake trial that
/// has one. `out` must hold at least [`VXLAN_OUTER`] + 54 bytes.
pub fn answer(f: &[u8], out: &mut [u8]) -> Option<Answer> {
    if f.get(12..14)? != [0x08, 0x00] || *f.get(ETH)? != 0x45 {
        return None;
    }
    // VXLAN (UDP to 4789): a segment to a task.
    if f[ETH + 9] == 17 && f.get(ETH + IP + 2..ETH + IP + 4)? == [0x12, 0xb5] {
        let inner = f.get(VXLAN_OUTER..)?;
        let (flags, seq, ack) = tcp_of(inner)?;
        let (flags, seq, ack) = match flags {
            fl if fl & (SYN | ACK) == SYN => (SYN | ACK, task_isn(seq), seq.wrapping_add(1)),
            fl if fl & FIN != 0 => (FIN | ACK, ack, seq.wrapping_add(1)),
            _ => return None,
        };
        let len = reply(inner, &mut out[VXLAN_OUTER..], flags, seq, ack)?;
        // The outer headers back to the VTEP it came from: addresses and
        // MACs swapped, the VXLAN header kept, UDP's checksum zero.
        out[..VXLAN_OUTER].copy_from_slice(&f[..VXLAN_OUTER]);
        swap(out, 0, 6, 6);
        swap(out, ETH + 12, ETH + 16, 4);
        let total = (VXLAN_OUTER - ETH + len) as u16;
        out[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
        out[ETH + 8] = 64;
        out[ETH + 10..ETH + 12].fill(0);
        let c = checksum::checksum(&out[ETH..ETH + IP]);
        out[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        let udp_len = total - IP as u16;
        out[ETH + IP + 4..ETH + IP + 6].copy_from_slice(&udp_len.to_be_bytes());
        out[ETH + IP + 6..ETH + IP + 8].fill(0);
        return Some(Answer {
            len: VXLAN_OUTER + len,
            completes: false,
        });
    }
    // A segment to a client.
    let (flags, seq, ack) = tcp_of(f)?;
    let (answer, completes) = match flags {
        fl if fl & RST != 0 => return None,
        fl if fl & (SYN | ACK) == SYN | ACK => (FIN | ACK, false),
        fl if fl & FIN != 0 => (ACK, true),
        _ => return None,
    };
    let len = reply(f, out, answer, ack, seq.wrapping_add(1))?;
    Some(Answer { len, completes })
}

/// The flags, sequence and acknowledgment numbers of an Ethernet/IPv4
/// (no options)/TCP frame.
fn tcp_of(f: &[u8]) -> Option<(u8, u32, u32)> {
    if f.get(12..14)? != [0x08, 0x00] || *f.get(ETH)? != 0x45 || f[ETH + 9] != 6 {
        return None;
    }
    let t = f.get(ETH + IP..ETH + IP + TCP)?;
    Some((
        t[13],
        u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
    ))
}

fn swap(b: &mut [u8], x: usize, y: usize, n: usize) {
    for i in 0..n {
        b.swap(x + i, y + i);
    }
}

/// Writes to `out` the segment that answers the Ethernet/IPv4/TCP frame
/// `f`: MACs, addresses and ports swapped, no payload, `flags`, `seq`,
/// `ack`; returns its length.
fn reply(f: &[u8], out: &mut [u8], flags: u8, seq: u32, ack: u32) -> Option<usize> {
    let len = ETH + IP + TCP;
    let out = out.get_mut(..len)?;
    out[..6].copy_from_slice(f.get(6..12)?);
    out[6..12].copy_from_slice(&f[..6]);
    out[12..14].copy_from_slice(&[0x08, 0x00]);
    let (src, dst) = (
        Ipv4Addr::new(f[ETH + 16], f[ETH + 17], f[ETH + 18], f[ETH + 19]),
        Ipv4Addr::new(f[ETH + 12], f[ETH + 13], f[ETH + 14], f[ETH + 15]),
    );
    let ip = &mut out[ETH..ETH + IP];
    ip.copy_from_slice(&[
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let t_in = f.get(ETH + IP..ETH + IP + 4)?;
    let t = &mut out[ETH + IP..];
    t.fill(0);
    t[0..2].copy_from_slice(&t_in[2..4]);
    t[2..4].copy_from_slice(&t_in[0..2]);
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    let sum = checksum::combine(&[
        checksum::pseudo_header(src, dst, 6, TCP as u16),
        checksum::data(t),
    ]);
    t[16..18].copy_from_slice(&(!sum).to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const CLIENT: [u8; 4] = [198, 18, 64, 1];
    const NODE: [u8; 4] = [198, 18, 1, 2];

    /// An Ethernet/IPv4/TCP frame from `src:sport` to `dst:dport`.
    fn segment(
        src: [u8; 4],
        dst: [u8; 4],
        ports: (u16, u16),
        flags: u8,
        seq: u32,
        ack: u32,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12] = 8;
        f[ETH] = 0x45;
        f[ETH + 9] = 6;
        f[ETH + 12..ETH + 16].copy_from_slice(&src);
        f[ETH + 16..ETH + 20].copy_from_slice(&dst);
        let t = &mut f[ETH + IP..];
        t[0..2].copy_from_slice(&ports.0.to_be_bytes());
        t[2..4].copy_from_slice(&ports.1.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[13] = flags;
        f
    }

    /// `inner` in VXLAN from the DUT (198.18.1.2) to the generator.
    fn in_vxlan(inner: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VXLAN_OUTER];
        f[..6].copy_from_slice(&[2, 0, 0xc6, 0x12, 1, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0xc6, 0x12, 1, 2]);
        f[12] = 8;
        f[ETH] = 0x45;
        f[ETH + 9] = 17;
        f[ETH + 12..ETH + 16].copy_from_slice(&NODE);
        f[ETH + 16..ETH + 20].copy_from_slice(&[198, 18, 1, 1]);
        f[ETH + IP..ETH + IP + 2].copy_from_slice(&50000u16.to_be_bytes());
        f[ETH + IP + 2..ETH + IP + 4].copy_from_slice(&4789u16.to_be_bytes());
        f[ETH + IP + 8] = 0x08;
        f[ETH + IP + 8 + 4..ETH + IP + 8 + 7].copy_from_slice(&[0, 0x10, 0]);
        f.extend_from_slice(inner);
        f
    }

    /// (flags, seq, ack, source port, destination port) of a checked
    /// Ethernet/IPv4/TCP frame; panics on a bad IPv4 or TCP checksum.
    fn read(f: &[u8]) -> (u8, u32, u32, u16, u16) {
        let p = SlicedPacket::from_ethernet(f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("not TCP")
        };
        let th = t.to_header();
        assert_eq!(
            th.checksum,
            th.calc_checksum_ipv4(&h, t.payload()).unwrap(),
            "TCP checksum"
        );
        let mut fl = 0;
        for (set, bit) in [(th.fin, FIN), (th.syn, SYN), (th.rst, RST), (th.ack, ACK)] {
            if set {
                fl |= bit;
            }
        }
        (
            fl,
            th.sequence_number,
            th.acknowledgment_number,
            th.source_port,
            th.destination_port,
        )
    }

    #[test]
    fn the_generator_plays_both_ends_of_a_connection_to_its_close() {
        let task = [198, 18, 128, 2];
        let mut out = [0u8; 256];
        // The task gets the SYN (translated: from the sandbox address).
        let syn = in_vxlan(&segment(task, [198, 18, 128, 4], (1024, 80), SYN, 1000, 0));
        let a = answer(&syn, &mut out).unwrap();
        assert!(!a.completes);
        {
            let outer = SlicedPacket::from_ethernet(&out[..a.len]).unwrap();
            let Some(NetSlice::Ipv4(oip)) = outer.net else {
                panic!("not IPv4")
            };
            let h = oip.header().to_header();
            assert_eq!(h.destination, NODE, "back to the VTEP");
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!(&out[ETH + IP + 2..ETH + IP + 4], &4789u16.to_be_bytes());
        }
        let (fl, seq, ack, sp, dp) = read(&out[VXLAN_OUTER..a.len]);
        assert_eq!((fl, ack, sp, dp), (SYN | ACK, 1001, 80, 1024));
        let isn = seq;
        // The client gets the SYN-ACK: it acknowledges and closes.
        let synack = segment(NODE, CLIENT, (8080, 10000), SYN | ACK, isn, 1001);
        let a = answer(&synack, &mut out).unwrap();
        assert_eq!(read(&out[..a.len]), (FIN | ACK, 1001, isn + 1, 10000, 8080));
        assert!(!a.completes);
        // The task gets the FIN and closes too.
        let fin = in_vxlan(&segment(
            task,
            [198, 18, 128, 4],
            (1024, 80),
            FIN | ACK,
            1001,
            isn + 1,
        ));
        let a = answer(&fin, &mut out).unwrap();
        assert_eq!(
            read(&out[VXLAN_OUTER..a.len]),
            (FIN | ACK, isn + 1, 1002, 80, 1024)
        );
        // The client's last ACK completes the connection.
        let finack = segment(NODE, CLIENT, (8080, 10000), FIN | ACK, isn + 1, 1002);
        let a = answer(&finack, &mut out).unwrap();
        assert_eq!(read(&out[..a.len]), (ACK, 1002, isn + 2, 10000, 8080));
        assert!(a.completes);
        // Nothing answers a bare ACK or a reset.
        let last = in_vxlan(&segment(
            task,
            [198, 18, 128, 4],
            (1024, 80),
            ACK,
            1002,
            isn + 2,
        ));
        assert_eq!(answer(&last, &mut out), None);
        let rst = segment(NODE, CLIENT, (8080, 10000), RST | ACK, 0, 1001);
        assert_eq!(answer(&rst, &mut out), None);
    }
}
