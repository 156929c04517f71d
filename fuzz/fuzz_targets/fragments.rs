//! Sequences of fragments through the pipeline: a real datagram of an
//! IPv4 or IPv6 client, cut at a chosen size, its fragments sent in a
//! chosen order, some repeated, some with a byte changed; then the task's
//! answer in fragments back. No panic; every frame that leaves lies in
//! its buffer, the second half of a split one too, with valid IPv4 header
//! checksums, and nothing to a task's node is larger than the overlay.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate::dataplane::tables::L4Checksum;
use meshgate::dataplane::{FrameBuf, Pipeline, Verdict};
use meshgate_testkit::fixtures::*;

/// Runs one frame; returns every frame that left (one, or two when split).
fn run_all(p: &mut Pipeline, frame: &[u8]) -> Vec<Vec<u8>> {
    if frame.len() > FIXTURE_FRAME - FIXTURE_HEADROOM {
        return Vec::new();
    }
    let mut buf = vec![0u8; FIXTURE_FRAME];
    buf[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
    let mut f = FrameBuf::new(&mut buf, FIXTURE_HEADROOM, frame.len());
    let v = p.process(&mut f);
    let mut out = Vec::new();
    match v {
        Verdict::Transmit | Verdict::Local => out.push(f.data().to_vec()),
        Verdict::Split(n) | Verdict::SplitLocal(n) => {
            out.push(f.data().to_vec());
            let (o, l) = (f.off + f.len, usize::from(n));
            assert!(o + l <= buf.len(), "second frame inside its buffer");
            assert!(o >= FIXTURE_HEADROOM, "second frame behind the first");
            out.push(buf[o..o + l].to_vec());
        }
        _ => {}
    }
    for o in &out {
        if o.len() >= 34 && o[12..14] == [0x08, 0x00] && o[14] == 0x45 {
            assert_eq!(meshgate::wire::checksum::data(&o[14..34]), 0xffff, "IPv4 checksum");
            // In VXLAN: the inner packet fits the overlay.
            if o.len() >= 84 && o[23] == 17 && o[36..38] == VXLAN_PORT.to_be_bytes() {
                assert!(o.len() - 64 <= 1450, "inner {} bytes", o.len() - 64);
                assert_eq!(meshgate::wire::checksum::data(&o[64..84]), 0xffff, "inner checksum");
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&[shape, size_hi, size_lo, mtu_byte, id], rest)) = data.split_first_chunk::<5>()
    else {
        return;
    };
    let v6 = shape & 1 == 1;
    let tcp = shape & 2 == 2 && !v6;
    let mut p = lab_pipeline6(L4Checksum::Incremental);
    let size = usize::from(u16::from_be_bytes([size_hi, size_lo]) % 12_000);
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let whole = if v6 {
        client6_udp(CLIENT6, 40000, &payload)
    } else if tcp {
        client_tcp(40000, 1, 0, SYN, &payload)
    } else {
        client_udp(40000, &payload)
    };
    // Cut at 68 to 1 598 bytes a fragment (IPv6: at least 56, room for
    // the headers and 8 bytes).
    let max = 68 + usize::from(mtu_byte) * 6;
    let frags = if v6 {
        ipv6_fragments(&whole, max.max(56), u32::from(id))
    } else {
        ipv4_fragments(&whole, max, u16::from(id))
    };
    if frags.is_empty() {
        return;
    }
    // Then: pairs of (which fragment, a byte to change and how).
    let mut sent_first = None;
    for op in rest.chunks(3).take(24) {
        let i = usize::from(op[0]) % frags.len();
        let mut f = frags[i].clone();
        if let [_, at, x] = *op {
            if x != 0 {
                let at = usize::from(at) % f.len();
                f[at] ^= x;
            }
        }
        let out = run_all(&mut p, &f);
        if i == 0 && sent_first.is_none() {
            sent_first = out.first().cloned();
        }
    }
    // The task's answer, in fragments, to the flow's SNAT port if one
    // was made.
    if let Some(first) = sent_first {
        if first.len() < 100 || first[12..14] != [0x08, 0x00] {
            return;
        }
        let inner = &first[50..];
        let snat = u16::from_be_bytes([inner[34], inner[35]]);
        let dst = std::net::Ipv4Addr::new(inner[30], inner[31], inner[32], inner[33]);
        let Some(task) = TASKS.iter().position(|t| *t == dst) else {
            return;
        };
        let answer = from_task_udp(dst, snat, &payload);
        let (node, mac) = task_node(task);
        for f in ipv4_fragments(&answer, 1450, u16::from(id) ^ 0x5a5a) {
            run_all(&mut p, &vxlan_frame(mac, NODE_MAC, node, NODE, 51234, VNI, &f));
        }
    }
});
