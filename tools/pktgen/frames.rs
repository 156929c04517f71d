//! The generator's frames: Ethernet/IPv4/UDP (or TCP SYN) to a published
//! port, one of N flows, carrying a marker, a sequence number and the time
//! it was sent; and finding that time again in whatever comes back.
//!
//! UDP frames carry `MGTS` + seq (u32) + send time (u64 ns) as payload
//! (16 bytes: a 64-byte frame has room for it). TCP SYNs carry the low 32
//! bits of the send time in the acknowledgment field and the marker 0x4d47
//! ("MG") as window, since a 64-byte SYN has no room for a payload.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use meshgate::wire::{MacAddr, checksum};

const MAGIC: [u8; 4] = *b"MGTS";
const TCP_MARK: u16 = 0x4d47;
const FIRST_PORT: u32 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    TcpSyn,
}

pub struct FlowSet {
    smac: MacAddr,
    dmac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    proto: Proto,
    flows: u32,
    /// Frame length without the FCS.
    len: usize,
    /// Flows per source address; beyond, the next address is used.
    ports_per_addr: u32,
    /// IPv6 instead (source of the first flow, destination): UDP only.
    v6: Option<(Ipv6Addr, Ipv6Addr)>,
}

/// The smallest IPv6 UDP frame that carries the marker, with the FCS:
/// Ethernet 14, IPv6 40, UDP 8, marker 16, FCS 4.
pub const MIN_V6_FRAME: usize = 14 + 40 + 8 + 16 + 4;

impl FlowSet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        smac: MacAddr,
        dmac: MacAddr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        proto: Proto,
        flows: u32,
        size: usize,
        ports_per_addr: u32,
    ) -> Result<FlowSet> {
        let min = match proto {
            Proto::Udp => 14 + 20 + 8 + 16 + 4,
            Proto::TcpSyn => 64,
        };
        ensure!(
            (min..=1518).contains(&size),
            "--size must be between {min} and 1518 bytes (with FCS)"
        );
        ensure!(flows >= 1, "--flows must be at least 1");
        ensure!(
            (1..=55_000).contains(&ports_per_addr),
            "--ports-per-addr must be between 1 and 55000"
        );
        Ok(FlowSet {
            smac,
            dmac,
            src,
            dst,
            port,
            proto,
            flows,
            len: size - 4,
            ports_per_addr,
            v6: None,
        })
    }

    /// Sends IPv6 UDP from `src` (the first flow's address) to `dst`
    /// instead (as an IPv6 client of `node.address6`).
    pub fn with_ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Result<FlowSet> {
        ensure!(self.proto == Proto::Udp, "IPv6 frames are UDP only");
        ensure!(
            self.len + 4 >= MIN_V6_FRAME,
            "--size must be at least {MIN_V6_FRAME} bytes for IPv6 (with FCS)"
        );
        self.v6 = Some((src, dst));
        Ok(self)
    }

    /// [`Self::write`] for IPv6: the same flows, the source address's low
    /// 32 bits counting up as the IPv4 one does.
    fn write6(&self, b: &mut [u8], seq: u32, ts: u64, (src, dst): (Ipv6Addr, Ipv6Addr)) -> usize {
        let flow = seq % self.flows;
        let src = Ipv6Addr::from(u128::from(src) + u128::from(flow / self.ports_per_addr));
        let sport = (FIRST_PORT + flow % self.ports_per_addr) as u16;
        let b = &mut b[..self.len];
        b[..6].copy_from_slice(&self.dmac.0);
        b[6..12].copy_from_slice(&self.smac.0);
        b[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let plen = (self.len - 14 - 40) as u16;
        let ip = &mut b[14..54];
        ip[..4].copy_from_slice(&(6u32 << 28).to_be_bytes());
        ip[4..6].copy_from_slice(&plen.to_be_bytes());
        ip[6] = 17;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        let l4 = &mut b[54..];
        l4[0..2].copy_from_slice(&sport.to_be_bytes());
        l4[2..4].copy_from_slice(&self.port.to_be_bytes());
        l4[4..6].copy_from_slice(&plen.to_be_bytes());
        l4[6..8].copy_from_slice(&[0, 0]);
        l4[8..12].copy_from_slice(&MAGIC);
        l4[12..16].copy_from_slice(&seq.to_be_bytes());
        l4[16..24].copy_from_slice(&ts.to_be_bytes());
        l4[24..].fill(0);
        // IPv6 requires the UDP checksum (RFC 8200 8.1).
        let sum = checksum::combine(&[
            checksum::pseudo_header_v6(src, dst, 17, u32::from(plen)),
            checksum::data(l4),
        ]);
        let c = match !sum {
            0 => 0xffff,
            c => c,
        };
        l4[6..8].copy_from_slice(&c.to_be_bytes());
        self.len
    }

    /// Writes packet number `seq` (flow `seq % flows`) sent at `ts` ns into
    /// `b`; returns its length.
    pub fn write(&self, b: &mut [u8], seq: u32, ts: u64) -> usize {
        if let Some(v6) = self.v6 {
            return self.write6(b, seq, ts, v6);
        }
        let flow = seq % self.flows;
        let src = Ipv4Addr::from(u32::from(self.src) + flow / self.ports_per_addr);
        let sport = (FIRST_PORT + flow % self.ports_per_addr) as u16;
        let b = &mut b[..self.len];
        b[..6].copy_from_slice(&self.dmac.0);
        b[6..12].copy_from_slice(&self.smac.0);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip_len = (self.len - 14) as u16;
        let proto = if self.proto == Proto::Udp { 17 } else { 6 };
        let ip = &mut b[14..34];
        ip.copy_from_slice(&[
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&self.dst.octets());
        let c = checksum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        match self.proto {
            Proto::Udp => {
                let l4 = &mut b[34..];
                let ulen = l4.len() as u16;
                l4[0..2].copy_from_slice(&sport.to_be_bytes());
                l4[2..4].copy_from_slice(&self.port.to_be_bytes());
                l4[4..6].copy_from_slice(&ulen.to_be_bytes());
                l4[6..8].copy_from_slice(&[0, 0]); // no checksum (RFC 768)
                l4[8..12].copy_from_slice(&MAGIC);
                l4[12..16].copy_from_slice(&seq.to_be_bytes());
                l4[16..24].copy_from_slice(&ts.to_be_bytes());
                l4[24..].fill(0);
            }
            Proto::TcpSyn => {
                let l4 = &mut b[34..];
                l4[..20].copy_from_slice(&[0; 20]);
                l4[0..2].copy_from_slice(&sport.to_be_bytes());
                l4[2..4].copy_from_slice(&self.port.to_be_bytes());
                l4[4..8].copy_from_slice(&seq.to_be_bytes());
                l4[8..12].copy_from_slice(&(ts as u32).to_be_bytes());
                l4[12] = 0x50;
                l4[13] = 0x02; // SYN
                l4[14..16].copy_from_slice(&TCP_MARK.to_be_bytes());
                l4[20..].fill(0);
                let sum = checksum::combine(&[
                    checksum::pseudo_header(src, self.dst, 6, l4.len() as u16),
                    checksum::data(l4),
                ]);
                l4[16..18].copy_from_slice(&(!sum).to_be_bytes());
            }
        }
        self.len
    }
}

/// The latency of a frame that carries our marker, with `now` the receive
/// time in ns: the frame itself (reflected), or inside VXLAN.
pub fn latency_ns(f: &[u8], now: u64) -> Option<u64> {
    let ip_at = |f: &[u8], off: usize| -> Option<u64> {
        let ip = f.get(off..off + 20)?;
        if ip[0] != 0x45 {
            return None;
        }
        let l4 = f.get(off + 20..)?;
        match ip[9] {
            17 => {
                let p = l4.get(8..24)?;
                let ts = u64::from_be_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]);
                (p[..4] == MAGIC).then(|| now.wrapping_sub(ts))
            }
            6 => {
                let t = l4.get(..20)?;
                (u16::from_be_bytes([t[14], t[15]]) == TCP_MARK).then(|| {
                    u64::from(
                        (now as u32).wrapping_sub(u32::from_be_bytes([t[8], t[9], t[10], t[11]])),
                    )
                })
            }
            _ => None,
        }
    };
    if f.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    // VXLAN (UDP to 4789) carries ours inside, behind 50 + 14 bytes.
    if f.get(23) == Some(&17) && f.get(36..38) == Some(&[0x12, 0xb5]) {
        if f.get(62..64)? != [0x08, 0x00] {
            return None;
        }
        return ip_at(f, 64);
    }
    ip_at(f, 14)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(proto: Proto, flows: u32) -> FlowSet {
        FlowSet::new(
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(198, 18, 1, 1),
            Ipv4Addr::new(198, 18, 1, 2),
            8080,
            proto,
            flows,
            64,
            50_000,
        )
        .unwrap()
    }

    /// The bench's new-flow trials (bench/paths.rs): 16 000 addresses
    /// from 198.18.64.1 with 55 000 ports each, a trial starting at its own
    /// first flow. Every packet of a run is a new client address and port,
    /// and the last address stays below the tasks' 198.18.128.0/24.
    #[test]
    fn new_flow_trials_never_repeat_a_client_address_and_port() {
        let flows = 16_000 * 55_000;
        let s = FlowSet::new(
            MacAddr([2, 0, 0, 0, 0, 1]),
            MacAddr([2, 0, 0, 0, 0, 2]),
            Ipv4Addr::new(198, 18, 64, 1),
            Ipv4Addr::new(198, 18, 1, 2),
            8080,
            Proto::Udp,
            flows,
            64,
            55_000,
        )
        .unwrap();
        let client = |seq: u32| {
            let mut b = [0u8; 128];
            s.write(&mut b, seq, 0);
            (
                Ipv4Addr::new(b[26], b[27], b[28], b[29]),
                u16::from_be_bytes([b[34], b[35]]),
            )
        };
        let mut seen = std::collections::HashSet::new();
        // Two trials' first packets, across an address boundary.
        for first in [0u32, 12_000_000] {
            for seq in first..first + 120_000 {
                assert!(seen.insert(client(seq)), "flow {seq} repeats a client");
            }
        }
        let (last, _) = client(flows - 1);
        assert_eq!(last, Ipv4Addr::new(198, 18, 126, 128));
        assert!(last < Ipv4Addr::new(198, 18, 128, 0));
    }

    #[test]
    fn udp_frames_are_valid_and_timed() {
        let s = set(Proto::Udp, 70_000);
        let mut b = [0u8; 2048];
        let n = s.write(&mut b, 60_001, 1_000_000);
        assert_eq!(n, 60);
        let p = etherparse::SlicedPacket::from_ethernet(&b[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        assert_eq!(
            ip.header().source_addr(),
            Ipv4Addr::new(198, 18, 1, 2),
            "flow 60001 uses the second address"
        );
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        assert_eq!(latency_ns(&b[..n], 1_000_500), Some(500));
        // The same frame inside VXLAN.
        let mut v = vec![0u8; 64];
        v[12] = 8;
        v[23] = 17;
        v[36..38].copy_from_slice(&4789u16.to_be_bytes());
        v[62] = 8;
        v.extend_from_slice(&b[14..n]);
        assert_eq!(latency_ns(&v, 1_000_700), Some(700));
        assert_eq!(latency_ns(&b[..30], 0), None);
    }

    #[test]
    fn tcp_syn_has_a_valid_checksum() {
        let s = set(Proto::TcpSyn, 10);
        let mut b = [0u8; 2048];
        let n = s.write(&mut b, 3, 5_000);
        let p = etherparse::SlicedPacket::from_ethernet(&b[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        let Some(etherparse::TransportSlice::Tcp(t)) = p.transport else {
            panic!()
        };
        assert!(t.syn() && !t.ack());
        assert_eq!(
            t.checksum(),
            t.to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                .unwrap()
        );
        assert_eq!(latency_ns(&b[..n], 5_040), Some(40));
    }
}
