//! Fragments through the pipeline: a datagram cut by the client's link (or
//! the task's overlay) comes out whole on the other side, as the receiving
//! kernel reassembles it: each output fragment is checked on its own
//! (checksums, lengths, the overlay's MTU) and the reassembled datagram
//! against the translation (addresses, ports, transport checksum over
//! everything, payload).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{FrameBuf, Pipeline, Verdict};
use crate::dataplane::counters::DropReason;
use crate::dataplane::fixtures::*;
use crate::dataplane::fragments;
use crate::dataplane::tables::L4Checksum;
use crate::wire::checksum;

const MTU: usize = 1450;

/// Runs `frame` (from the NIC, or from the sandbox when `local`) and
/// returns the verdict and every frame that leaves: one, or two for a
/// split packet.
fn run_split(p: &mut Pipeline, frame: &[u8], local: bool) -> (Verdict, Vec<Vec<u8>>) {
    let mut buf = vec![0u8; FIXTURE_FRAME];
    buf[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
    let mut f = FrameBuf::new(&mut buf, FIXTURE_HEADROOM, frame.len());
    let v = if local {
        p.process_local(&mut f)
    } else {
        p.process(&mut f)
    };
    let mut out = vec![f.data().to_vec()];
    if let Verdict::Split(n) | Verdict::SplitLocal(n) = v {
        let at = f.off + f.len;
        out.push(buf[at..at + usize::from(n)].to_vec());
    }
    (v, out)
}

/// The inner Ethernet frame of a VXLAN frame meshgate sent, its outer
/// headers checked (lengths, IPv4 checksum, DF).
fn decap(frame: &[u8]) -> Vec<u8> {
    let outer = &frame[14..34];
    assert_eq!(checksum::checksum(outer), 0, "outer IPv4 checksum");
    assert_eq!(
        usize::from(u16::from_be_bytes([outer[2], outer[3]])),
        frame.len() - 14,
        "outer length"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([frame[38], frame[39]])),
        frame.len() - 34,
        "outer UDP length"
    );
    assert!(frame.len() - 14 <= MTU + 50, "fits a 1500-byte link");
    frame[50..].to_vec()
}

/// An IPv4 datagram reassembled from Ethernet frames of its fragments
/// (each checked: IPv4 checksum, one source, destination and
/// identification, at most `max` bytes): (source, destination, protocol,
/// transport header and data).
fn reassemble4(frames: &[Vec<u8>], max: usize) -> (Ipv4Addr, Ipv4Addr, u8, Vec<u8>) {
    let mut parts: Vec<(usize, bool, Vec<u8>)> = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let (mut src, mut dst, mut proto) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, 0);
    for f in frames {
        assert_eq!(&f[12..14], &[0x08, 0x00], "IPv4");
        let ip = &f[14..];
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, ip.len(), "exactly its packet");
        assert!(total <= max, "{total} bytes over {max}");
        assert_eq!(checksum::checksum(&ip[..20]), 0, "IPv4 checksum");
        let fo = u16::from_be_bytes([ip[6], ip[7]]);
        assert_eq!(fo & 0x4000, 0, "no DF on a fragment");
        ids.insert((ip[12..20].to_vec(), [ip[4], ip[5]]));
        src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        proto = ip[9];
        parts.push((
            usize::from(fo & 0x1fff) * 8,
            fo & 0x2000 != 0,
            ip[20..total].to_vec(),
        ));
    }
    assert_eq!(ids.len(), 1, "one datagram: addresses and identification");
    parts.sort_by_key(|p| p.0);
    let mut data = Vec::new();
    for (off, _, d) in &parts {
        assert_eq!(*off, data.len(), "no hole, no overlap");
        data.extend_from_slice(d);
    }
    assert!(!parts.last().expect("fragments").1, "the last has no MF");
    (src, dst, proto, data)
}

/// Checks a reassembled UDP datagram: ports, length, checksum over the
/// pseudo-header `pseudo`, payload.
fn check_udp(data: &[u8], pseudo: u16, ports: (u16, u16), payload: &[u8]) {
    assert_eq!(
        u16::from_be_bytes([data[0], data[1]]),
        ports.0,
        "source port"
    );
    assert_eq!(
        u16::from_be_bytes([data[2], data[3]]),
        ports.1,
        "destination port"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([data[4], data[5]])),
        data.len()
    );
    assert_eq!(
        !checksum::combine(&[pseudo, checksum::data(data)]),
        0,
        "UDP checksum over the whole datagram"
    );
    assert!(&data[8..] == payload, "payload");
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends a client's datagram of `size` payload bytes cut at `link` bytes,
/// fragments in `order`; returns every frame that left and the verdicts.
fn send(p: &mut Pipeline, frames: &[Vec<u8>], order: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for &i in order {
        let (v, o) = run_split(p, &frames[i], false);
        assert!(
            matches!(v, Verdict::Transmit | Verdict::Split(_)),
            "fragment {i}: {v:?}"
        );
        out.extend(o);
    }
    out
}

/// The SNAT port of a task's inner frame.
fn snat_of(inner: &[u8]) -> u16 {
    u16::from_be_bytes([inner[34], inner[35]])
}

#[test]
fn an_ipv4_clients_datagrams_of_every_size_reach_one_task_whole_and_the_answers_come_back() {
    for size in [1800usize, 4000, 9000, 65000] {
        let mut p = lab_pipeline(0, 1);
        let data = payload(size - 28);
        let frames = ipv4_fragments(&client_udp(50000, &data), 1500, 7);
        let out = send(&mut p, &frames, &(0..frames.len()).collect::<Vec<_>>());
        assert!(
            out.len() > frames.len(),
            "{size}: 1500-byte fragments are split for the overlay"
        );
        let inner: Vec<Vec<u8>> = out.iter().map(|f| decap(f)).collect();
        let (src, dst, proto, dgram) = reassemble4(&inner, MTU);
        assert_eq!((src, proto), (OVERLAY, 17));
        let task = TASKS.iter().position(|t| *t == dst).expect("a task");
        // Every fragment in VXLAN to that task's node.
        for f in &out {
            assert_eq!(&f[30..34], &task_node(task).0.octets(), "{size}: one node");
        }
        let snat = snat_of(&inner[0]);
        let ph = checksum::pseudo_header(OVERLAY, dst, 17, dgram.len() as u16);
        check_udp(&dgram, ph, (snat, TARGET), &data);

        // The task's answer, cut at the overlay's MTU by its kernel.
        let answer = payload(size - 28 + 3);
        let reply = from_task_udp(dst, snat, &answer);
        let mut back = Vec::new();
        for inner in ipv4_fragments(&reply, MTU, 99) {
            let (node, mac) = task_node(task);
            let f = vxlan_frame(mac, NODE_MAC, node, NODE, 51234, VNI, &inner);
            let (v, o) = run_split(&mut p, &f, false);
            assert_eq!(v, Verdict::Transmit, "{size}: answer fragment");
            back.extend(o);
        }
        let (src, dst, _, dgram) = reassemble4(&back, 1500);
        assert_eq!((src, dst), (NODE, CLIENT));
        for f in &back {
            assert_eq!(&f[..6], &CLIENT_MAC.0, "to the client's MAC");
        }
        let ph = checksum::pseudo_header(NODE, CLIENT, 17, dgram.len() as u16);
        check_udp(&dgram, ph, (PUBLISHED, 50000), &answer);
        let e = p.events();
        assert_eq!(e.fragments_forwarded as usize, frames.len(), "{size}");
        assert_eq!(e.fragments_replied as usize, back.len(), "{size}");
        assert_eq!(
            e.fragments_split as usize,
            out.len() - frames.len(),
            "{size}"
        );
        assert_eq!(p.drops().total(), 0, "{size}: nothing dropped");
        assert_eq!(p.flows().len(), 1, "{size}: one flow");
    }
}

#[test]
fn out_of_order_fragments_after_the_first_follow_it_and_before_it_are_counted() {
    let mut p = lab_pipeline(0, 1);
    let data = payload(4000);
    let frames = ipv4_fragments(&client_udp(50001, &data), 1500, 8);
    assert_eq!(frames.len(), 3);
    // The last one first: its first has not passed.
    let (v, _) = run_split(&mut p, &frames[2], false);
    assert_eq!(v, Verdict::Drop(DropReason::FragmentNoFirst));
    // First, last, middle: all reach the task, which reassembles them.
    let out = send(&mut p, &frames, &[0, 2, 1]);
    let inner: Vec<Vec<u8>> = out.iter().map(|f| decap(f)).collect();
    let (_, dst, _, dgram) = reassemble4(&inner, MTU);
    let ph = checksum::pseudo_header(OVERLAY, dst, 17, dgram.len() as u16);
    check_udp(&dgram, ph, (snat_of(&inner[0]), TARGET), &data);
    assert_eq!(p.drops().get(DropReason::FragmentNoFirst), 1);
}

#[test]
fn fragments_of_different_datagrams_and_clients_keep_apart() {
    let mut p = lab_pipeline(0, 1);
    let a = ipv4_fragments(&client_udp(50010, &payload(2000)), 1500, 1);
    let b = ipv4_fragments(&client_udp(50011, &payload(2000)), 1500, 2);
    // Interleaved: a's first, b's first, a's last, b's last.
    let (_, oa0) = run_split(&mut p, &a[0], false);
    let (_, ob0) = run_split(&mut p, &b[0], false);
    let (_, oa1) = run_split(&mut p, &a[1], false);
    let (_, ob1) = run_split(&mut p, &b[1], false);
    let dst = |o: &Vec<Vec<u8>>| decap(&o[0])[30..34].to_vec();
    assert_eq!(dst(&oa0), dst(&oa1), "a's fragments to one task");
    assert_eq!(dst(&ob0), dst(&ob1), "b's fragments to one task");
    assert_ne!(
        dst(&oa0),
        dst(&ob0),
        "round robin between the two datagrams' flows"
    );
    // A later fragment with another identification belongs to no datagram.
    let stray = ipv4_fragments(&client_udp(50010, &payload(2000)), 1500, 3);
    let (v, _) = run_split(&mut p, &stray[1], false);
    assert_eq!(v, Verdict::Drop(DropReason::FragmentNoFirst));
}

#[test]
fn fragments_rfc_1858_warns_of_are_dropped() {
    let mut p = lab_pipeline(0, 1);
    // A TCP fragment at offset 8, over the header of a first let through.
    let seg = client_tcp(50020, 1, 0, SYN, &payload(100));
    let mut frags = ipv4_fragments(&seg, 60, 4);
    let second = &mut frags[1];
    assert_eq!(u16::from_be_bytes([second[20], second[21]]) & 0x1fff, 5);
    second[20..22].copy_from_slice(&(0x2000u16 | 1).to_be_bytes());
    fix_ip_checksum(second, 14);
    let (v, _) = run_split(&mut p, &frags[1], false);
    assert_eq!(v, Verdict::Drop(DropReason::FragmentMalformed));
    // A first fragment too short for its transport header: 8 bytes of TCP.
    let tiny = ipv4_fragments(&seg, 28, 5);
    let (v, _) = run_split(&mut p, &tiny[0], false);
    assert_eq!(v, Verdict::Drop(DropReason::FragmentMalformed));
    // A UDP "first fragment" that holds its whole datagram is no fragment.
    let mut whole = client_udp(50021, b"x");
    whole[20] = 0x20;
    fix_ip_checksum(&mut whole, 14);
    let (v, _) = run_split(&mut p, &whole, false);
    assert_eq!(v, Verdict::Drop(DropReason::FragmentMalformed));
    // Fragments of ICMP are not meshgate's.
    let mut icmp = ipv4_fragments(&client_udp(50022, &payload(2000)), 1500, 6).remove(0);
    icmp[23] = 1;
    fix_ip_checksum(&mut icmp, 14);
    let (v, _) = run_split(&mut p, &icmp, false);
    assert_eq!(v, Verdict::Drop(DropReason::IpFragment));
    assert_eq!(p.flows().len(), 0);
}

#[test]
fn a_tcp_segment_in_fragments_is_translated_as_a_whole() {
    let mut p = lab_pipeline(0, 1);
    let data = payload(2500);
    let seg = client_tcp(50030, 1, 0, SYN, &data);
    let frames = ipv4_fragments(&seg, 1500, 9);
    let out = send(&mut p, &frames, &[0, 1]);
    let inner: Vec<Vec<u8>> = out.iter().map(|f| decap(f)).collect();
    let (src, dst, proto, dgram) = reassemble4(&inner, MTU);
    assert_eq!((src, proto), (OVERLAY, 6));
    let ph = checksum::pseudo_header(src, dst, 6, dgram.len() as u16);
    assert_eq!(
        !checksum::combine(&[ph, checksum::data(&dgram)]),
        0,
        "TCP checksum"
    );
    assert_eq!(u16::from_be_bytes([dgram[2], dgram[3]]), TARGET);
    assert!(dgram[20..] == data[..]);
}

/// Too many datagrams in flight: the oldest are forgotten (counted), the
/// table's memory is what `fragments` says, and new ones still pass.
#[test]
fn too_many_datagrams_in_flight_evict_the_oldest_and_are_counted() {
    let mut p = lab_pipeline(0, 1);
    p.set_flow_seed(1);
    let n = fragments::CAPACITY * 4;
    let whole = client_udp(50100, &payload(1600));
    let mut lasts = Vec::new();
    for i in 0..n {
        p.set_now(i as u32 / 8);
        let f = ipv4_fragments(&whole, 1500, i as u16);
        let (v, _) = run_split(&mut p, &f[0], false);
        assert!(matches!(v, Verdict::Split(_)), "{i}: {v:?}");
        lasts.push(f[1].clone());
    }
    let evicted = p.events().fragments_evicted as usize;
    assert!(
        evicted >= n - fragments::CAPACITY,
        "{evicted} evictions counted"
    );
    let (v, _) = run_split(&mut p, &lasts[0], false);
    assert_eq!(
        v,
        Verdict::Drop(DropReason::FragmentNoFirst),
        "the oldest went"
    );
    let (v, _) = run_split(&mut p, &lasts[n - 1], false);
    assert_eq!(v, Verdict::Transmit, "the newest is there");
    // What security.md says of the table's memory.
    const { assert!(fragments::CAPACITY * fragments::ENTRY_BYTES <= 256 * 1024) };
}

#[test]
fn a_datagram_without_df_above_the_overlays_mtu_is_split_and_one_with_df_is_refused() {
    let mut p = lab_pipeline(0, 1);
    let data = payload(1472);
    let mut frame = client_udp(50040, &data);
    assert_eq!(frame[20] & 0x40, 0x40, "etherparse sets DF");
    let (v, out) = run_split(&mut p, &frame, false);
    assert_eq!(v, Verdict::Transmit, "frag needed goes back");
    assert_eq!(&out[0][23..24], &[1], "ICMP");
    frame[20] &= !0x40;
    fix_ip_checksum(&mut frame, 14);
    let (v, out) = run_split(&mut p, &frame, false);
    assert!(matches!(v, Verdict::Split(_)), "{v:?}");
    let inner: Vec<Vec<u8>> = out.iter().map(|f| decap(f)).collect();
    let (_, dst, _, dgram) = reassemble4(&inner, MTU);
    let ph = checksum::pseudo_header(OVERLAY, dst, 17, dgram.len() as u16);
    check_udp(&dgram, ph, (snat_of(&inner[0]), TARGET), &data);
}

#[test]
fn a_local_tasks_fragments_are_split_for_the_sandbox_and_its_answers_come_back() {
    let mut p = local_pipeline(0, 1, false);
    let data = payload(3000);
    let frames = ipv4_fragments(&client_udp(50050, &data), 1500, 11);
    let mut out = Vec::new();
    for f in &frames {
        let (v, o) = run_split(&mut p, f, false);
        assert!(
            matches!(v, Verdict::Local | Verdict::SplitLocal(_)),
            "{v:?}"
        );
        out.extend(o);
    }
    let (src, dst, _, dgram) = reassemble4(&out, MTU);
    assert_eq!((src, dst), (OVERLAY, LOCAL_TASK));
    let snat = snat_of(&out[0]);
    let ph = checksum::pseudo_header(OVERLAY, LOCAL_TASK, 17, dgram.len() as u16);
    check_udp(&dgram, ph, (snat, TARGET), &data);
    let answer = payload(2000);
    let mut back = Vec::new();
    for f in ipv4_fragments(&from_task_udp(LOCAL_TASK, snat, &answer), MTU, 12) {
        let (v, o) = run_split(&mut p, &f, true);
        assert_eq!(v, Verdict::Transmit);
        back.extend(o);
    }
    let (src, dst, _, dgram) = reassemble4(&back, 1500);
    assert_eq!((src, dst), (NODE, CLIENT));
    let ph = checksum::pseudo_header(NODE, CLIENT, 17, dgram.len() as u16);
    check_udp(&dgram, ph, (PUBLISHED, 50050), &answer);
}

#[test]
fn a_tasks_fragments_reach_the_worker_of_their_flow_in_order() {
    // Worker 0 of 2 owns even SNAT ports.
    let mut w0 = lab_pipeline(0, 2);
    let mut w1 = lab_pipeline(1, 2);
    let (_, out) = run_split(&mut w0, &client_udp(50060, b"q"), false);
    let inner = decap(&out[0]);
    let (snat, task) = (snat_of(&inner), &inner[30..34]);
    let ti = TASKS.iter().position(|t| t.octets() == task).unwrap();
    let answer = payload(3000);
    let mut back = Vec::new();
    for f in ipv4_fragments(&from_task_udp(TASKS[ti], snat, &answer), MTU, 13) {
        let (node, mac) = task_node(ti);
        let f = vxlan_frame(mac, NODE_MAC, node, NODE, 51234, VNI, &f);
        // Every fragment reaches worker 1 (one RSS hash); it hands them on.
        let (v, o) = run_split(&mut w1, &f, false);
        assert_eq!(v, Verdict::Handoff(0));
        let (v, o2) = run_split(&mut w0, &o[0], false);
        assert_eq!(v, Verdict::Transmit);
        back.extend(o2);
    }
    let (_, _, _, dgram) = reassemble4(&back, 1500);
    let ph = checksum::pseudo_header(NODE, CLIENT, 17, dgram.len() as u16);
    check_udp(&dgram, ph, (PUBLISHED, 50060), &answer);
}

/// An IPv6 datagram reassembled from Ethernet frames of its fragments:
/// (source, destination, upper layer, its header and data).
fn reassemble6(frames: &[Vec<u8>]) -> (Ipv6Addr, Ipv6Addr, u8, Vec<u8>) {
    let mut parts = Vec::new();
    let mut head = None;
    for f in frames {
        assert_eq!(&f[12..14], &[0x86, 0xdd], "IPv6");
        let ip = &f[14..];
        assert!(ip.len() <= 1500, "fits the client's link");
        assert_eq!(ip[6], 44, "a fragment header");
        let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        assert_eq!(plen + 40, ip.len());
        let fr = &ip[40..48];
        let om = u16::from_be_bytes([fr[2], fr[3]]);
        let src: [u8; 16] = ip[8..24].try_into().unwrap();
        let dst: [u8; 16] = ip[24..40].try_into().unwrap();
        let h = (src, dst, fr[0], fr[4..8].to_vec());
        assert!(head.get_or_insert(h.clone()) == &h, "one datagram");
        parts.push((usize::from(om & 0xfff8), om & 1 != 0, ip[48..].to_vec()));
    }
    parts.sort_by_key(|p| p.0);
    let mut data = Vec::new();
    for (off, _, d) in &parts {
        assert_eq!(*off, data.len());
        data.extend_from_slice(d);
    }
    let (s, d, nh, _) = head.expect("fragments");
    (s.into(), d.into(), nh, data)
}

#[test]
fn an_ipv6_clients_fragments_become_ipv4_fragments_and_the_answers_ipv6_ones() {
    for size in [1800usize, 4000, 9000] {
        let mut p = lab_pipeline6(L4Checksum::Incremental);
        let data = payload(size - 48);
        let frames = ipv6_fragments(&client6_udp(CLIENT6, 50070, &data), 1500, 0x0102_0304);
        let out = send(&mut p, &frames, &(0..frames.len()).collect::<Vec<_>>());
        let inner: Vec<Vec<u8>> = out.iter().map(|f| decap(f)).collect();
        let (src, dst, _, dgram) = reassemble4(&inner, MTU);
        assert_eq!(src, OVERLAY);
        for i in &inner {
            assert_eq!(
                &i[14 + 4..14 + 6],
                &[3, 4],
                "the identification's low 16 bits"
            );
        }
        let snat = snat_of(&inner[0]);
        let ph = checksum::pseudo_header(OVERLAY, dst, 17, dgram.len() as u16);
        check_udp(&dgram, ph, (snat, TARGET), &data);
        let task = TASKS.iter().position(|t| *t == dst).unwrap();
        let answer = payload(size);
        let mut back = Vec::new();
        for f in ipv4_fragments(&from_task_udp(dst, snat, &answer), MTU, 0x4242) {
            let (node, mac) = task_node(task);
            let f = vxlan_frame(mac, NODE_MAC, node, NODE, 51234, VNI, &f);
            let (v, o) = run_split(&mut p, &f, false);
            assert_eq!(v, Verdict::Transmit, "{size}");
            back.extend(o);
        }
        let (src, dst, nh, dgram) = reassemble6(&back);
        assert_eq!((src, dst, nh), (NODE6, CLIENT6, 17));
        let ph = checksum::pseudo_header_v6(NODE6, CLIENT6, 17, dgram.len() as u32);
        check_udp(&dgram, ph, (PUBLISHED, 50070), &answer);
        assert_eq!(p.drops().total(), 0, "{size}");
    }
}

/// Overlapping and repeated fragments are not meshgate's to judge (it
/// does not reassemble): each takes its datagram's one translation to
/// its one task, whose kernel drops an overlapping datagram (RFC 5722,
/// Linux since 4.19 for IPv4 too); nothing in meshgate's state changes.
#[test]
fn overlapping_and_repeated_fragments_take_their_datagrams_one_translation() {
    let mut p = lab_pipeline(0, 1);
    let frames = ipv4_fragments(&client_udp(50080, &payload(2000)), 1500, 21);
    let (_, first) = run_split(&mut p, &frames[0], false);
    let task = decap(&first[0])[30..34].to_vec();
    // The second fragment moved 8 bytes back, over the first's data.
    let mut overlap = frames[1].clone();
    let fo = u16::from_be_bytes([overlap[20], overlap[21]]);
    overlap[20..22].copy_from_slice(&(fo - 1).to_be_bytes());
    fix_ip_checksum(&mut overlap, 14);
    for f in [&frames[1], &overlap, &frames[1], &frames[0]] {
        let (v, out) = run_split(&mut p, f, false);
        assert!(matches!(v, Verdict::Transmit | Verdict::Split(_)), "{v:?}");
        for o in &out {
            assert_eq!(decap(o)[30..34], task[..], "one task");
        }
    }
    assert_eq!(p.flows().len(), 1);
    assert_eq!(p.drops().total(), 0);
}

/// An IPv6 client's TCP segment in fragments: IPv4 fragments to one task,
/// whose reassembled segment has the translated ports and a sound
/// checksum (the first fragment's, patched for both pseudo-headers).
#[test]
fn an_ipv6_clients_tcp_segment_in_fragments_is_translated_as_a_whole() {
    let mut p = lab_pipeline6(L4Checksum::Incremental);
    let data = payload(3000);
    let seg = client6_tcp(CLIENT6, 50090, 1, 0, SYN, &data);
    let frames = ipv6_fragments(&seg, 1500, 0x0a0b_0c0d);
    let out = send(&mut p, &frames, &(0..frames.len()).collect::<Vec<_>>());
    let inner: Vec<Vec<u8>> = out.iter().map(|f| decap(f)).collect();
    let (src, dst, proto, dgram) = reassemble4(&inner, MTU);
    assert_eq!((src, proto), (OVERLAY, 6));
    assert!(TASKS.contains(&dst));
    let ph = checksum::pseudo_header(src, dst, 6, dgram.len() as u16);
    assert_eq!(
        !checksum::combine(&[ph, checksum::data(&dgram)]),
        0,
        "TCP checksum"
    );
    assert_eq!(u16::from_be_bytes([dgram[2], dgram[3]]), TARGET);
    assert!(dgram[20..] == data[..]);
    assert_eq!(p.drops().total(), 0);
}
