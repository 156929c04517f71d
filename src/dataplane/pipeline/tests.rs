//! Pipeline tests: the fixture table, byte for byte, and the behaviours that
//! need several frames (round robin, stickiness, hand-off, snapshots).

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::{INNER_IP, Pipeline, Verdict};
use crate::dataplane::counters::DropReason;
use crate::dataplane::fixtures::*;
use crate::dataplane::tables::{L4Checksum, Neighbours, Registry, Snapshot};
use crate::wire::MacAddr;

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| {
            c.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn fixture_table() {
    for c in cases() {
        let (v, out) = run_case(&c);
        match &c.expect {
            Expect::Frame(want) => {
                assert_eq!(v, Verdict::Transmit, "{}", c.name);
                assert!(
                    out == *want,
                    "{}: output differs\n got:\n{}\nwant:\n{}",
                    c.name,
                    hex(&out),
                    hex(want)
                );
            }
            Expect::Drop(r) => assert_eq!(v, Verdict::Drop(*r), "{}", c.name),
            Expect::Handoff(w) => {
                assert_eq!(v, Verdict::Handoff(*w), "{}", c.name);
                assert_eq!(out, c.input, "{}: a handed-off frame is unchanged", c.name);
            }
        }
    }
}

#[test]
fn every_drop_is_counted_once() {
    for c in cases() {
        let mut p = c.pipeline();
        for s in &c.setup {
            run(&mut p, s);
        }
        let before = p.drops().total();
        let (v, _) = run(&mut p, &c.input);
        let after = p.drops().total();
        match v {
            Verdict::Drop(r) => {
                assert_eq!(after - before, 1, "{}", c.name);
                assert!(p.drops().get(r) >= 1, "{}", c.name);
            }
            // A generated reset answers a dropped segment: one drop, one reset.
            _ if p.events().resets_sent + p.events().icmp_sent > 0 => {
                assert_eq!(after - before, 1, "{}", c.name)
            }
            _ => assert_eq!(after, before, "{}", c.name),
        }
    }
}

/// Which task (0, 1, 2) a forwarded frame went to, from its inner destination.
fn task_of(out: &[u8]) -> usize {
    let dst = &out[50 + 14 + 16..50 + 14 + 20];
    TASKS
        .iter()
        .position(|t| t.octets() == dst)
        .expect("a task address")
}

#[test]
fn round_robin_spreads_30_connections_10_10_10() {
    let mut p = lab_pipeline(0, 1);
    let mut per_task: HashMap<usize, usize> = HashMap::new();
    for i in 0..30u16 {
        let (v, out) = run(&mut p, &client_tcp(41000 + i, 1, 0, SYN, b""));
        assert_eq!(v, Verdict::Transmit);
        *per_task.entry(task_of(&out)).or_default() += 1;
    }
    assert_eq!(per_task.get(&0), Some(&10));
    assert_eq!(per_task.get(&1), Some(&10));
    assert_eq!(per_task.get(&2), Some(&10));
    assert_eq!(p.flows().len(), 30);
    assert_eq!(p.events().flows_created, 30);
    let s = p.snapshot().clone();
    assert_eq!(
        s.tasks
            .iter()
            .map(|t| t.shared.inactive.load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u32>(),
        30
    );
}

#[test]
fn existing_connection_keeps_its_task_while_new_ones_rotate() {
    let mut p = lab_pipeline(0, 1);
    let (_, first) = run(&mut p, &client_tcp(42000, 1, 0, SYN, b""));
    let t0 = task_of(&first);
    for i in 1..10u16 {
        let (_, new) = run(&mut p, &client_tcp(42000 + i, 1, 0, SYN, b""));
        assert_eq!(task_of(&new), (t0 + i as usize) % 3);
        let (v, again) = run(&mut p, &client_tcp(42000, 2, 1, PSH_ACK, b"more"));
        assert_eq!(v, Verdict::Transmit);
        assert_eq!(task_of(&again), t0);
    }
}

#[test]
fn established_state_follows_the_reply() {
    let mut p = lab_pipeline(0, 1);
    run(&mut p, &client_tcp(43000, 1, 0, SYN, b""));
    let snap = p.snapshot().clone();
    let task = &snap.tasks[0].shared;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        (task.active.load(Relaxed), task.inactive.load(Relaxed)),
        (0, 1)
    );
    let (v, _) = run(&mut p, &task_reply_tcp(0, 43000, 9, 2, SYN_ACK, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(
        (task.active.load(Relaxed), task.inactive.load(Relaxed)),
        (1, 0)
    );
    run(&mut p, &client_tcp(43000, 2, 10, FIN_ACK, b""));
    assert_eq!(
        (task.active.load(Relaxed), task.inactive.load(Relaxed)),
        (0, 1)
    );
}

#[test]
fn client_port_reuse_after_close_is_a_new_connection() {
    let mut p = lab_pipeline(0, 1);
    let (_, a) = run(&mut p, &client_tcp(44000, 1, 0, SYN, b""));
    run(&mut p, &client_tcp(44000, 2, 1, FIN_ACK, b""));
    let (v, b) = run(&mut p, &client_tcp(44000, 100, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_ne!(task_of(&a), task_of(&b), "rescheduled round robin");
    assert_eq!(p.flows().len(), 1);
}

#[test]
fn handoff_between_two_workers() {
    // Worker 0 owns even SNAT ports.
    let snap = lab_snapshot();
    let mut w0 = Pipeline::new(snap.clone(), 0, 2, 1024, (1024, 65535));
    let mut w1 = Pipeline::new(snap, 1, 2, 1024, (1024, 65535));
    let (v, out) = run(&mut w0, &client_tcp(45001, 1, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
    // An odd client port is replaced by an even one, which worker 0 owns.
    let snat = u16::from_be_bytes([out[64 + 20], out[64 + 21]]);
    assert_eq!(snat % 2, 0, "{snat}");
    let reply = task_reply_tcp(0, snat, 7, 2, SYN_ACK, b"");
    // The reply lands on worker 1's queue: handed off unchanged...
    let (v, same) = run(&mut w1, &reply);
    assert_eq!(v, Verdict::Handoff(0));
    assert_eq!(same, reply);
    // ...and worker 0 translates it.
    let (v, out) = run(&mut w0, &same);
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_tcp(45001, 7, 2, SYN_ACK, b""));
}

fn snapshot_with(
    cfg: &crate::config::Config,
    reg: &mut Registry,
    generation: u64,
) -> Arc<Snapshot> {
    Arc::new(Snapshot::build(
        &cfg.table_desc(),
        lab_link(L4Checksum::Incremental),
        Arc::new(lab_neighbours()),
        reg,
        generation,
    ))
}

#[test]
fn removed_task_ends_its_flows_with_a_reset_and_spares_the_others() {
    let cfg = lab_config();
    let mut reg = Registry::default();
    let mut p = Pipeline::new(snapshot_with(&cfg, &mut reg, 1), 0, 1, 1024, (1024, 65535));
    for i in 0..3u16 {
        run(&mut p, &client_tcp(46000 + i, 1, 0, SYN, b""));
    }
    // Remove task 0 (198.18.128.4).
    let mut cfg2 = cfg.clone();
    cfg2.services[0].tasks.remove(0);
    p.set_snapshot(snapshot_with(&cfg2, &mut reg, 2));
    // The flow of the removed task: the client gets a reset.
    let (v, out) = run(&mut p, &client_tcp(46000, 2, 77, PSH_ACK, b"x"));
    assert_eq!(v, Verdict::Transmit);
    let (eth, rest) = etherparse::Ethernet2Header::from_slice(&out).unwrap();
    assert_eq!(eth.destination, CLIENT_MAC.0);
    let (ip, rest) = etherparse::Ipv4Header::from_slice(rest).unwrap();
    assert_eq!(
        (ip.source, ip.destination),
        (NODE.octets(), CLIENT.octets())
    );
    let (tcp, _) = etherparse::TcpHeader::from_slice(rest).unwrap();
    assert!(tcp.rst);
    assert_eq!(
        (tcp.source_port, tcp.destination_port, tcp.sequence_number),
        (PUBLISHED, 46000, 77)
    );
    assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, &[]).unwrap());
    assert_eq!(p.drops().get(DropReason::TaskGone), 1);
    // The flows of surviving tasks are untouched.
    for (i, task) in [(1u16, 1usize), (2, 2)] {
        let (v, out) = run(&mut p, &client_tcp(46000 + i, 2, 1, PSH_ACK, b"y"));
        assert_eq!(v, Verdict::Transmit);
        assert_eq!(task_of(&out), task);
    }
    // New flows go only to the remaining tasks.
    let mut seen = std::collections::HashSet::new();
    for i in 0..6u16 {
        let (_, out) = run(&mut p, &client_tcp(47000 + i, 1, 0, SYN, b""));
        seen.insert(task_of(&out));
    }
    assert_eq!(seen, [1usize, 2].into_iter().collect());
}

#[test]
fn drained_task_keeps_flows_but_gets_no_new_ones() {
    let cfg = lab_config();
    let mut reg = Registry::default();
    let mut p = Pipeline::new(snapshot_with(&cfg, &mut reg, 1), 0, 1, 1024, (1024, 65535));
    run(&mut p, &client_tcp(48000, 1, 0, SYN, b""));
    let mut cfg2 = cfg.clone();
    cfg2.services[0].tasks[0].weight = 0;
    p.set_snapshot(snapshot_with(&cfg2, &mut reg, 2));
    let (v, out) = run(&mut p, &client_tcp(48000, 2, 1, PSH_ACK, b"still here"));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(task_of(&out), 0);
    for i in 1..=6u16 {
        let (_, out) = run(&mut p, &client_tcp(48000 + i, 1, 0, SYN, b""));
        assert_ne!(task_of(&out), 0);
    }
}

/// Every task drained (a removed service whose tasks run out their grace
/// period, a last task stopping): new connections are refused, as IPVS
/// refuses them, while the existing ones go on.
#[test]
fn a_service_with_every_task_drained_refuses_new_flows_and_keeps_its_own() {
    let cfg = lab_config();
    let mut reg = Registry::default();
    let mut p = Pipeline::new(snapshot_with(&cfg, &mut reg, 1), 0, 1, 1024, (1024, 65535));
    run(&mut p, &client_tcp(48100, 1, 0, SYN, b""));
    let mut drained = cfg.clone();
    for t in &mut drained.services[0].tasks {
        t.weight = 0;
    }
    p.set_snapshot(snapshot_with(&drained, &mut reg, 2));
    let (v, _) = run(&mut p, &client_tcp(48100, 2, 1, PSH_ACK, b"go on"));
    assert_eq!(v, Verdict::Transmit);
    let (v, out) = run(&mut p, &client_tcp(48101, 7, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, reset_to_client(48101, 0, 8, RST_ACK));
    let datagram = client_udp(48102, b"anyone?");
    let (v, out) = run(&mut p, &datagram);
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, port_unreachable_to_client(&datagram));
    assert_eq!(p.drops().get(DropReason::NoTask), 2);
    assert_eq!(p.events().icmp_sent, 1);
    assert_eq!(p.flows().len(), 1);

    // Tasks whose node's address is not resolved yet will take flows:
    // their service's new connections are dropped, for the client's
    // retransmission to find them, not refused.
    let unresolved = Arc::new(Snapshot::build(
        &cfg.table_desc(),
        lab_link(L4Checksum::Incremental),
        Arc::new(Neighbours::default()),
        &mut Registry::default(),
        1,
    ));
    let mut p = Pipeline::new(unresolved, 0, 1, 1024, (1024, 65535));
    let (v, _) = run(&mut p, &client_tcp(48103, 7, 0, SYN, b""));
    assert_eq!(v, Verdict::Drop(DropReason::NoTask));
}

#[test]
fn unresolved_tasks_get_no_new_flows_and_existing_ones_ask_for_their_node() {
    let cfg = lab_config();
    let build = |n: Neighbours, reg: &mut Registry, generation| {
        Arc::new(Snapshot::build(
            &cfg.table_desc(),
            lab_link(L4Checksum::Incremental),
            Arc::new(n),
            reg,
            generation,
        ))
    };
    let mut reg = Registry::default();
    let mut p = Pipeline::new(
        build(lab_neighbours(), &mut reg, 1),
        0,
        1,
        1024,
        (1024, 65535),
    );
    let q = Arc::new(crossbeam::queue::ArrayQueue::new(8));
    p.set_resolver(q.clone());
    // A flow to task 0 (node 1) while node 1 is resolved.
    let (v, out) = run(&mut p, &client_tcp(48999, 1, 0, SYN, b""));
    assert_eq!((v, task_of(&out)), (Verdict::Transmit, 0));
    // Node 1's neighbour entry goes: tasks 0 and 1 are skipped by new
    // flows (the control thread resolves the node from the snapshot)...
    let mut n = lab_neighbours();
    n.entries.remove(&NODE1);
    let snap = build(n, &mut reg, 2);
    assert_eq!(snap.vteps.get(&NODE1), Some(&None));
    p.set_snapshot(snap);
    for port in 49000..49006 {
        let (v, out) = run(&mut p, &client_tcp(port, 1, 0, SYN, b""));
        assert_eq!((v, task_of(&out)), (Verdict::Transmit, 2), "port {port}");
    }
    assert_eq!(q.pop(), None, "new flows never met the unresolved node");
    // ...while the existing flow's packets are dropped, counted, and ask.
    let (v, _) = run(&mut p, &client_tcp(48999, 2, 1, ACK, b"x"));
    assert_eq!(v, Verdict::Drop(DropReason::NoNeighbour));
    assert_eq!(q.pop(), Some(NODE1));
}

#[test]
fn idle_flows_expire_by_state() {
    let mut p = lab_pipeline(0, 1);
    p.set_now(0);
    run(&mut p, &client_tcp(50000, 1, 0, SYN, b""));
    run(&mut p, &client_udp(50001, b"u"));
    // SYN timeout 60 s, UDP 300 s.
    p.set_now(61_000);
    assert_eq!(p.expire((1000, usize::MAX)), 1);
    assert_eq!(p.flows().len(), 1);
    p.set_now(301_000);
    assert_eq!(p.expire((1000, usize::MAX)), 1);
    assert!(p.flows().is_empty());
    let s = p.snapshot().clone();
    assert!(
        s.tasks.iter().all(|t| t.shared.load() == 0),
        "shared counts released"
    );
}

#[test]
fn report_carries_counters_across_snapshots() {
    let cfg = lab_config();
    let mut reg = Registry::default();
    let mut p = Pipeline::new(snapshot_with(&cfg, &mut reg, 1), 0, 1, 1024, (1024, 65535));
    let (_, out) = run(&mut p, &client_tcp(51000, 1, 0, SYN, b""));
    let old_id = p.snapshot().tasks[0].id;
    p.set_snapshot(snapshot_with(&cfg, &mut reg, 2));
    run(&mut p, &client_tcp(51000, 2, 1, ACK, b""));
    let r = p.take_report();
    let c: u64 = r
        .tasks
        .iter()
        .filter(|(id, _)| *id == old_id)
        .map(|(_, c)| c.packets_in)
        .sum();
    assert_eq!(c, 2);
    let bytes: u64 = r.tasks.iter().map(|(_, c)| c.bytes_in).sum();
    assert_eq!(bytes, 2 * (out.len() as u64 - 50));
    assert_eq!(r.events.flows_created, 1);
    let r2 = p.take_report();
    assert!(
        r2.tasks.is_empty() && r2.events.flows_created == 0,
        "reports are deltas"
    );
}

proptest! {
    /// Any client segment to the published port either drops with a reason
    /// or comes out as a valid VXLAN frame whose inner checksums verify.
    #[test]
    fn forwarded_frames_have_valid_checksums(sport in 1u16..=65535, seq in any::<u32>(), payload in proptest::collection::vec(any::<u8>(), 0..200), udp in any::<bool>()) {
        let mut p = lab_pipeline(0, 1);
        let frame = if udp { client_udp(sport, &payload) } else { client_tcp(sport, seq, 0, SYN, &payload) };
        let (v, out) = run(&mut p, &frame);
        prop_assert_eq!(v, Verdict::Transmit);
        let outer = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
        let Some(etherparse::NetSlice::Ipv4(oip)) = outer.net else { panic!("outer ipv4") };
        prop_assert_eq!(oip.header().header_checksum(), oip.header().to_header().calc_header_checksum());
        let inner = etherparse::SlicedPacket::from_ethernet(&out[50..]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(iip)) = inner.net else { panic!("inner ipv4") };
        let ih = iip.header().to_header();
        prop_assert_eq!(ih.header_checksum, ih.calc_header_checksum());
        match inner.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => {
                prop_assert_eq!(t.checksum(), t.to_header().calc_checksum_ipv4(&ih, t.payload()).unwrap());
            }
            Some(etherparse::TransportSlice::Udp(u)) => {
                prop_assert_eq!(u.checksum(), u.to_header().calc_checksum_ipv4(&ih, u.payload()).unwrap());
            }
            _ => panic!("transport"),
        }
    }

    /// Replies come back with valid checksums and the client's addressing.
    #[test]
    fn replies_have_valid_checksums(sport in 1024u16..=65535, payload in proptest::collection::vec(any::<u8>(), 0..200), udp in any::<bool>()) {
        let mut p = lab_pipeline(0, 1);
        let (reply, want) = if udp {
            run(&mut p, &client_udp(sport, b"q"));
            (task_reply_udp(0, sport, &payload), expected_reply_udp(sport, &payload))
        } else {
            run(&mut p, &client_tcp(sport, 1, 0, SYN, b""));
            (task_reply_tcp(0, sport, 5, 2, SYN_ACK, &payload), expected_reply_tcp(sport, 5, 2, SYN_ACK, &payload))
        };
        let (v, out) = run(&mut p, &reply);
        prop_assert_eq!(v, Verdict::Transmit);
        prop_assert_eq!(out, want);
    }

    /// Arbitrary bytes never panic the pipeline and never yield a verdict
    /// without a count.
    #[test]
    fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), mutate_from in 0usize..200) {
        let mut p = lab_pipeline(0, 2);
        let _ = run(&mut p, &bytes);
        // Also mutate real frames, which reach deeper.
        let f = mutated(task_reply_tcp(0, 40000, 1, 1, ACK, b"abc"), &bytes, mutate_from);
        let _ = run(&mut p, &f);
        let g = mutated(client_tcp(40000, 1, 0, SYN, b"abc"), &bytes, mutate_from);
        let _ = run(&mut p, &g);
        // The sandbox's entry, with a local flow to reach.
        let mut l = local_pipeline(0, 2, true);
        let _ = run(&mut l, &client_tcp(40000, 1, 0, SYN, b""));
        let _ = run_local(&mut l, &bytes);
        let r = mutated(local_reply_tcp(1024, 1, 1, ACK, b"abc"), &bytes, mutate_from);
        let _ = run_local(&mut l, &r);
    }
}

#[test]
fn mac_helpers() {
    assert_eq!(overlay_mac(), MacAddr([0x02, 0x42, 198, 18, 128, 2]));
}

#[test]
fn generated_resets_are_rate_limited() {
    let mut p = lab_pipeline(0, 1);
    p.set_now(1_000);
    let mut sent = 0;
    for i in 0..(super::GENERATED_PER_TICK + 50) {
        let (v, _) = run(&mut p, &client_tcp(30000 + i as u16, 5, 9, ACK, b""));
        if v == Verdict::Transmit {
            sent += 1;
        } else {
            assert_eq!(v, Verdict::Drop(DropReason::TcpNoFlow));
        }
    }
    assert_eq!(sent, super::GENERATED_PER_TICK);
    assert_eq!(
        p.drops().get(DropReason::TcpNoFlow),
        u64::from(super::GENERATED_PER_TICK) + 50
    );
    // The next tick has a fresh budget.
    p.set_now(1_100);
    assert_eq!(
        run(&mut p, &client_tcp(29000, 5, 9, ACK, b"")).0,
        Verdict::Transmit
    );
}

#[test]
fn ended_flows_get_resets_the_client_accepts() {
    let cfg = lab_config();
    let mut reg = Registry::default();
    let mut p = Pipeline::new(snapshot_with(&cfg, &mut reg, 1), 0, 1, 1024, (1024, 65535));
    // Flow 1 established (task answered with data); flow 2 still in SYN-SENT.
    run(&mut p, &client_tcp(52000, 1000, 0, SYN, b""));
    run(&mut p, &task_reply_tcp(0, 52000, 7000, 1001, SYN_ACK, b""));
    run(&mut p, &client_tcp(52000, 1001, 7001, PSH_ACK, b"req"));
    run(
        &mut p,
        &task_reply_tcp(0, 52000, 7001, 1004, PSH_ACK, b"answer"),
    );
    // Round robin: 52001 and 52002 go to tasks 1 and 2, 52003 to task 0.
    for port in [52001, 52002, 52003] {
        run(&mut p, &client_tcp(port, 500, 0, SYN, b""));
    }
    let ended = p.end_flows_where(|f| f.task_addr == TASKS[0]);
    assert_eq!(ended.len(), 2);
    assert_eq!(p.flows().len(), 2);
    let mut frames = Vec::new();
    for f in &ended {
        let mut buf = vec![0u8; FIXTURE_FRAME];
        let mut fb = crate::dataplane::FrameBuf::new(&mut buf, FIXTURE_HEADROOM, 0);
        if p.reset_for_flow(f, &mut fb) {
            frames.push((f.key.client_port, fb.data().to_vec()));
        }
    }
    assert_eq!(frames.len(), 1, "no reset in SYN-SENT");
    // Established: RST at the task's next sequence number (7001 + 6).
    assert_eq!(
        frames[0].1,
        reset_to_client(
            52000,
            7007,
            0,
            Flags {
                rst: true,
                ..Flags::default()
            }
        )
    );
    let snap = p.snapshot().clone();
    assert_eq!(snap.tasks[0].shared.load(), 0);
    // SYN-SENT: no reset; the client's retransmitted SYN is a new flow, to
    // a task that runs once the snapshot has lost task 0.
    let mut cfg2 = cfg.clone();
    cfg2.services[0].tasks.remove(0);
    p.set_snapshot(snapshot_with(&cfg2, &mut reg, 2));
    let (v, out) = run(&mut p, &client_tcp(52003, 500, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_ne!(task_of(&out), 0);
}

/// The inner TCP or UDP checksum of a forwarded VXLAN frame verifies.
fn inner_l4_checksum_ok(out: &[u8]) -> bool {
    let inner = etherparse::SlicedPacket::from_ethernet(&out[50..]).unwrap();
    let Some(etherparse::NetSlice::Ipv4(iip)) = inner.net else {
        panic!("inner ipv4")
    };
    let ih = iip.header().to_header();
    match inner.transport {
        Some(etherparse::TransportSlice::Tcp(t)) => {
            t.checksum() == t.to_header().calc_checksum_ipv4(&ih, t.payload()).unwrap()
        }
        Some(etherparse::TransportSlice::Udp(u)) => {
            u.checksum() == u.to_header().calc_checksum_ipv4(&ih, u.payload()).unwrap()
        }
        _ => panic!("transport"),
    }
}

#[test]
fn partial_checksums_are_completed_in_both_directions() {
    for mode in [L4Checksum::Full, L4Checksum::CompletePartial] {
        partial_checksums_completed(mode);
    }
    // Completing partial checksums only keeps a corrupt one corrupt (the
    // receiver must drop it), where a full sum would mend it.
    let mut corrupt = client_udp(43002, b"bad checksum");
    corrupt[14 + 20 + 6] ^= 0x55;
    let (_, out) = run(
        &mut lab_pipeline_with_checksum(L4Checksum::CompletePartial),
        &corrupt,
    );
    assert!(!inner_l4_checksum_ok(&out));
    let (_, out) = run(&mut lab_pipeline_with_checksum(L4Checksum::Full), &corrupt);
    assert!(inner_l4_checksum_ok(&out));
}

fn partial_checksums_completed(mode: crate::dataplane::tables::L4Checksum) {
    let mut p = lab_pipeline_with_checksum(mode);
    for (i, payload) in [&b""[..], b"GET / HTTP/1.1\r\n\r\n", &[0xa5; 1001]]
        .into_iter()
        .enumerate()
    {
        let sport = 42000 + i as u16;
        // Forward: a partial checksum from the client becomes a valid one.
        let syn = partial_checksum(client_tcp(sport, 1, 0, SYN, payload), 14);
        let (v, out) = run(&mut p, &syn);
        assert_eq!(v, Verdict::Transmit);
        assert!(inner_l4_checksum_ok(&out), "tcp forward, payload {i}");
        let task_tcp = task_of(&out);
        let dgram = partial_checksum(client_udp(sport, payload), 14);
        let (v, out) = run(&mut p, &dgram);
        assert_eq!(v, Verdict::Transmit);
        assert!(inner_l4_checksum_ok(&out), "udp forward, payload {i}");
        // Replies: a task node's kernel VXLAN over a veth leaves the inner
        // checksum partial; the client gets the frame a NIC would send.
        let task = task_of(&out);
        let reply = partial_checksum(task_reply_udp(task, sport, payload), 50 + 14);
        let (v, out) = run(&mut p, &reply);
        assert_eq!(v, Verdict::Transmit);
        assert_eq!(out, expected_reply_udp(sport, payload), "udp reply {i}");
        let reply = partial_checksum(
            task_reply_tcp(task_tcp, sport, 5, 2, SYN_ACK, payload),
            50 + 14,
        );
        let (v, out) = run(&mut p, &reply);
        assert_eq!(v, Verdict::Transmit);
        assert_eq!(
            out,
            expected_reply_tcp(sport, 5, 2, SYN_ACK, payload),
            "tcp reply {i}"
        );
        let reply = partial_checksum(task_reply_udp(task, sport, payload), 50 + 14);
        let (v, out) = run(&mut p, &reply);
        assert_eq!(v, Verdict::Transmit);
        assert_eq!(out, expected_reply_udp(sport, payload), "udp reply {i}");
    }
    // A complete checksum stays right too, and a UDP datagram without a
    // checksum (zero) keeps having none.
    let (_, out) = run(&mut p, &client_tcp(43000, 1, 0, SYN, b"x"));
    assert!(inner_l4_checksum_ok(&out));
    let mut nocsum = client_udp(43001, b"x");
    nocsum[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let (_, out) = run(&mut p, &nocsum);
    assert_eq!(&out[50 + 14 + 20 + 6..50 + 14 + 20 + 8], &[0, 0]);

    // Incremental updates cannot mend a partial checksum: the bug that a
    // veth lab with default offloads showed (the task drops the SYN).
    let mut inc = lab_pipeline_with_checksum(L4Checksum::Incremental);
    let (_, out) = run(
        &mut inc,
        &partial_checksum(client_tcp(44000, 1, 0, SYN, b""), 14),
    );
    assert!(!inner_l4_checksum_ok(&out));
}

/// `frame` with up to 8 bytes from `at` (wrapping) XORed with `bytes`.
fn mutated(mut frame: Vec<u8>, bytes: &[u8], at: usize) -> Vec<u8> {
    let i = at % frame.len();
    for (k, b) in bytes.iter().take(8).enumerate() {
        let j = (i + k) % frame.len();
        frame[j] ^= b;
    }
    frame
}

/// The SNAT port of a frame for the local task (plain Ethernet/IPv4/L4).
fn local_snat(out: &[u8]) -> u16 {
    u16::from_be_bytes([out[34], out[35]])
}

#[test]
fn a_task_on_this_node_gets_plain_ethernet_and_its_replies_reach_the_client() {
    let mut p = local_pipeline(0, 1, false);
    let (v, out) = run(&mut p, &client_tcp(40000, 100, 0, SYN, b""));
    assert_eq!(
        v,
        Verdict::Local,
        "a local task's frame goes to the sandbox"
    );
    let snat = local_snat(&out);
    assert_eq!(out, expected_local_tcp(snat, 100, 0, SYN, b""));
    // The task answers through the sandbox's interface, with a partial
    // checksum as a veth hands it over: the client gets a complete one.
    let reply = partial_checksum(local_reply_tcp(snat, 7, 101, SYN_ACK, b""), 14);
    let (v, out) = run_local(&mut p, &reply);
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_tcp(40000, 7, 101, SYN_ACK, b""));
    let (v, out) = run(&mut p, &client_tcp(40000, 101, 8, PSH_ACK, b"GET /"));
    assert_eq!(v, Verdict::Local);
    assert_eq!(out, expected_local_tcp(snat, 101, 8, PSH_ACK, b"GET /"));
    let reply = local_reply_tcp(snat, 8, 106, PSH_ACK, b"200 OK");
    let (v, out) = run_local(&mut p, &reply);
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_tcp(40000, 8, 106, PSH_ACK, b"200 OK"));

    // UDP both ways.
    let (v, out) = run(&mut p, &client_udp(40001, b"q"));
    assert_eq!(v, Verdict::Local);
    let snat = local_snat(&out);
    let (v, out) = run_local(&mut p, &partial_checksum(local_reply_udp(snat, b"a"), 14));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_udp(40001, b"a"));

    let snap = p.snapshot().clone();
    assert!(snap.tasks[0].local && snap.tasks[0].outer.is_none());
    assert!(
        !snap.vteps.contains_key(&NODE),
        "this node is no VTEP: VXLAN from it is not a task's"
    );
    let c = p.task_counters()[0];
    assert_eq!((c.packets_in, c.packets_out, c.flows), (3, 3, 2));
}

#[test]
fn frames_from_the_sandbox_that_are_no_replies_are_dropped_by_reason() {
    let mut p = local_pipeline(0, 1, false);
    let (_, out) = run(&mut p, &client_tcp(40000, 100, 0, SYN, b""));
    let snat = local_snat(&out);
    // No flow with that port.
    let (v, _) = run_local(&mut p, &local_reply_tcp(snat + 1, 7, 101, SYN_ACK, b""));
    assert_eq!(v, Verdict::Drop(DropReason::ReplyNoFlow));
    // To another MAC than the sandbox's, to another address.
    let mut other = local_reply_tcp(snat, 7, 101, SYN_ACK, b"");
    other[0..6].copy_from_slice(&[2, 0x42, 1, 2, 3, 4]);
    let (v, _) = run_local(&mut p, &other);
    assert_eq!(v, Verdict::Drop(DropReason::InnerNotForUs));
    let mut other = local_reply_tcp(snat, 7, 101, SYN_ACK, b"");
    other[14 + 19] ^= 1;
    fix_ip_checksum(&mut other, 14);
    let (v, _) = run_local(&mut p, &other);
    assert_eq!(v, Verdict::Drop(DropReason::InnerNotForUs));
    // The same port from a task on another node is not this flow's reply.
    let (v, _) = run(&mut p, &task_reply_tcp(0, snat, 7, 101, SYN_ACK, b""));
    assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    // Truncated, and not IPv4.
    let reply = local_reply_tcp(snat, 7, 101, SYN_ACK, b"");
    let (v, _) = run_local(&mut p, &reply[..30]);
    assert_eq!(v, Verdict::Drop(DropReason::Truncated));
    let mut arp = reply.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let (v, _) = run_local(&mut p, &arp);
    assert_eq!(v, Verdict::Drop(DropReason::Arp));
    // The flow still answers.
    let (v, _) = run_local(&mut p, &reply);
    assert_eq!(v, Verdict::Transmit);
}

#[test]
fn local_and_remote_tasks_share_the_round_robin() {
    let mut p = local_pipeline(0, 1, true);
    let (mut local, mut remote) = (0, 0);
    for i in 0..20u16 {
        match run(&mut p, &client_tcp(41000 + i, 1, 0, SYN, b"")).0 {
            Verdict::Local => local += 1,
            Verdict::Transmit => remote += 1,
            v => panic!("{v:?}"),
        }
    }
    assert_eq!((local, remote), (10, 10));
}

#[test]
fn a_local_reply_goes_to_the_worker_owning_its_flow() {
    // Two workers: find the owner of a flow's port, then give its reply
    // to the other worker first, as the sandbox worker would.
    let mut owner = local_pipeline(0, 2, false);
    let (v, out) = run(&mut owner, &client_tcp(40000, 100, 0, SYN, b""));
    assert_eq!(v, Verdict::Local);
    let snat = local_snat(&out);
    let mut other = local_pipeline(1, 2, false);
    let reply = local_reply_tcp(snat, 7, 101, SYN_ACK, b"");
    let (v, _) = run_local(&mut other, &reply);
    assert_eq!(v, Verdict::Handoff(0));
    let (v, out) = run_local(&mut owner, &reply);
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_tcp(40000, 7, 101, SYN_ACK, b""));
}

/// The inner source address and port of a frame sent to a remote task.
fn inner_source(out: &[u8]) -> (std::net::Ipv4Addr, u16) {
    let ip = 14 + 20 + 8 + 8 + 14;
    let a = std::net::Ipv4Addr::new(out[ip + 12], out[ip + 13], out[ip + 14], out[ip + 15]);
    (a, u16::from_be_bytes([out[ip + 20], out[ip + 21]]))
}

#[test]
fn a_preserving_service_keeps_the_clients_address_both_ways() {
    let mut p = preserve_pipeline(0, 1, [true; 3]);
    // TCP: DNAT only; the task's reply, addressed to the client and routed
    // to the sandbox's MAC, is translated back from the published port.
    let (v, out) = run(&mut p, &client_tcp(40000, 100, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(
        out,
        expected_forward_preserved_tcp(0, 40000, 100, 0, SYN, b""),
        "\n{}",
        hex(&out)
    );
    let reply = task_reply_to_client_tcp(0, 40000, 7, 101, SYN_ACK, b"");
    let (v, out) = run(&mut p, &reply);
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_tcp(40000, 7, 101, SYN_ACK, b""));
    let (v, out) = run(&mut p, &client_tcp(40000, 101, 8, PSH_ACK, b"GET /"));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(
        out,
        expected_forward_preserved_tcp(0, 40000, 101, 8, PSH_ACK, b"GET /")
    );
    // UDP, to the next task.
    let (v, out) = run(&mut p, &client_udp(40001, b"q"));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_forward_preserved_udp(1, 40001, b"q"));
    let (v, out) = run(&mut p, &task_reply_to_client_udp(1, 40001, b"a"));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_udp(40001, b"a"));
    // No SNAT port was taken, and a reply to the sandbox with the client's
    // port is not one of these flows.
    let (v, _) = run(&mut p, &task_reply_udp(1, 40001, b"a"));
    assert_eq!(v, Verdict::Drop(DropReason::ReplyNoFlow));
    assert_eq!(p.flows().len(), 2);
    assert!(p.flows().iter().all(|(_, f)| f.preserve));
}

#[test]
fn a_task_without_a_return_path_falls_back_to_snat() {
    // Task 1's node has not set up the return path: its flows are
    // translated to the sandbox, the others' keep the client's address.
    let mut p = preserve_pipeline(0, 1, [true, false, true]);
    let mut seen = Vec::new();
    for (i, sport) in [41000u16, 41001, 41002].into_iter().enumerate() {
        let (v, out) = run(&mut p, &client_tcp(sport, 1, 0, SYN, b""));
        assert_eq!(v, Verdict::Transmit);
        let (src, port) = inner_source(&out);
        if i == 1 {
            assert_eq!(src, OVERLAY, "task 1 sees the sandbox");
            assert_eq!(out, expected_forward_tcp(1, sport, port, 1, 0, SYN, b""));
            let (v, out) = run(&mut p, &task_reply_tcp(1, port, 9, 2, SYN_ACK, b""));
            assert_eq!(v, Verdict::Transmit);
            assert_eq!(out, expected_reply_tcp(sport, 9, 2, SYN_ACK, b""));
        } else {
            assert_eq!((src, port), (CLIENT, sport), "task {i} sees the client");
        }
        seen.push(src);
    }
    assert_eq!(seen, [CLIENT, OVERLAY, CLIENT]);
}

#[test]
fn replies_to_clients_without_a_preserving_flow_are_dropped() {
    let mut p = preserve_pipeline(0, 1, [true; 3]);
    let (v, _) = run(&mut p, &client_tcp(40000, 100, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
    // Another client port, another task, and a SNAT flow's reply sent to
    // the client's address: none is this flow's reply.
    for frame in [
        task_reply_to_client_tcp(0, 40001, 7, 101, SYN_ACK, b""),
        task_reply_to_client_tcp(1, 40000, 7, 101, SYN_ACK, b""),
    ] {
        let (v, _) = run(&mut p, &frame);
        assert_eq!(v, Verdict::Drop(DropReason::InnerNotForUs));
    }
    let mut q = lab_pipeline(0, 1);
    let (_, out) = run(&mut q, &client_tcp(40000, 100, 0, SYN, b""));
    let (_, snat) = inner_source(&out);
    let (v, _) = run(
        &mut q,
        &task_reply_to_client_tcp(0, snat, 7, 101, SYN_ACK, b""),
    );
    assert_eq!(v, Verdict::Drop(DropReason::InnerNotForUs));
    // The flow still answers.
    let (v, _) = run(
        &mut p,
        &task_reply_to_client_tcp(0, 40000, 7, 101, SYN_ACK, b""),
    );
    assert_eq!(v, Verdict::Transmit);
}

#[test]
fn a_preserving_flow_lives_on_the_worker_its_client_port_names() {
    // Two workers: port 40001 is worker 1's. Its client's packets and its
    // task's replies reaching worker 0 are handed to worker 1, unchanged.
    let mut w0 = preserve_pipeline(0, 2, [true; 3]);
    let mut w1 = preserve_pipeline(1, 2, [true; 3]);
    let syn = client_tcp(40001, 100, 0, SYN, b"");
    let (v, out) = run(&mut w0, &syn);
    assert_eq!((v, out.as_slice()), (Verdict::Handoff(1), syn.as_slice()));
    assert!(w0.flows().is_empty());
    let (v, out) = run(&mut w1, &syn);
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(
        out,
        expected_forward_preserved_tcp(0, 40001, 100, 0, SYN, b"")
    );
    let reply = task_reply_to_client_tcp(0, 40001, 7, 101, SYN_ACK, b"");
    assert_eq!(run(&mut w0, &reply).0, Verdict::Handoff(1));
    assert_eq!(run(&mut w1, &reply).0, Verdict::Transmit);
    // An even port stays on worker 0.
    let (v, _) = run(&mut w0, &client_tcp(40002, 100, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
}

#[test]
fn one_client_port_to_one_task_through_two_published_ports_falls_back_to_snat() {
    // 8080 and 8081 both lead to web's port 80; one task. The second flow
    // would share the first's reply key, so it gets a SNAT port instead.
    let mut cfg = preserve_config([true; 3]);
    let web = &mut cfg.services[0];
    web.tasks.truncate(1);
    web.publish.push(crate::config::Publish {
        published: 8081,
        target: TARGET,
        protocol: crate::config::Protocol::Tcp,
    });
    let mut p = Pipeline::new(lab_snapshot_for(&cfg), 0, 1, 1024, (1024, 65535));
    let (v, out) = run(&mut p, &client_tcp(40000, 1, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(inner_source(&out), (CLIENT, 40000));
    let other = tcp_frame(
        CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, 40000, 8081, 1, 0, SYN, b"",
    );
    let (v, out) = run(&mut p, &other);
    assert_eq!(v, Verdict::Transmit);
    let (src, port) = inner_source(&out);
    assert_eq!(src, OVERLAY, "the second flow is translated to the sandbox");
    // Both flows' replies find their own flow.
    let (v, out) = run(&mut p, &task_reply_tcp(0, port, 9, 2, SYN_ACK, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), 8081);
    let (v, out) = run(
        &mut p,
        &task_reply_to_client_tcp(0, 40000, 9, 2, SYN_ACK, b""),
    );
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), PUBLISHED);
}

#[test]
fn an_icmp_error_about_a_preserving_flow_reaches_the_client() {
    let mut p = preserve_pipeline(0, 1, [true; 3]);
    let (v, fwd) = run(&mut p, &client_udp(50000, b"knock"));
    assert_eq!(v, Verdict::Transmit);
    let (v, out) = run(&mut p, &task_icmp_unreachable_to_client(0, &fwd[64..]));
    assert_eq!(v, Verdict::Transmit, "{:?}", p.drops());
    let want = icmp_unreachable_to_client(
        &udp_frame(
            CLIENT_MAC, NODE_MAC, CLIENT, NODE, 63, 50000, PUBLISHED, b"knock",
        )[14..],
    );
    assert_eq!(out, want, "\n{}\n{}", hex(&out), hex(&want));
}

#[test]
fn a_local_task_of_a_preserving_service_sees_the_client_too() {
    let mut cfg = config_with_tasks(&[(LOCAL_TASK, NODE)]);
    cfg.services[0].client_ip = crate::config::ClientIp::Preserve;
    cfg.services[0].tasks[0].return_path = true;
    let mut p = Pipeline::new(lab_snapshot_for(&cfg), 0, 1, 1024, (1024, 65535));
    let (v, out) = run(&mut p, &client_tcp(40000, 100, 0, SYN, b""));
    assert_eq!(v, Verdict::Local);
    let want = tcp_frame(
        overlay_mac(),
        MacAddr::docker(LOCAL_TASK),
        CLIENT,
        LOCAL_TASK,
        63,
        40000,
        TARGET,
        100,
        0,
        SYN,
        b"",
    );
    assert_eq!(out, want);
    // Its reply to the client, routed to the sandbox's MAC, with a veth's
    // partial checksum.
    let reply = tcp_frame(
        MacAddr::docker(LOCAL_TASK),
        overlay_mac(),
        LOCAL_TASK,
        CLIENT,
        64,
        TARGET,
        40000,
        7,
        101,
        SYN_ACK,
        b"",
    );
    let (v, out) = run_local(&mut p, &partial_checksum(reply, 14));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_tcp(40000, 7, 101, SYN_ACK, b""));
}

/// Flows exported by one pipeline and restored into a fresh one (a
/// takeover, a restart after a crash): the next packets of every flow,
/// both ways, come out byte for byte as they would have from the first.
#[test]
fn flows_survive_a_handover_byte_for_byte() {
    use crate::dataplane::handover::{HandoverError, RestoreReport, decode, encode};
    let mut a = lab_pipeline(0, 1);
    a.set_now(1_000);
    for sport in 40000..40006 {
        run(&mut a, &client_tcp(sport, 1, 0, SYN, b""));
    }
    for sport in 41000..41003 {
        run(&mut a, &client_udp(sport, b"x"));
    }
    let task_of = |addr| TASKS.iter().position(|t| *t == addr).unwrap();
    // The tasks answer the SYNs: the TCP flows are established.
    for r in a.export_flows().1.iter().filter(|r| r.protocol == 6) {
        let (v, _) = run(
            &mut a,
            &task_reply_tcp(task_of(r.task), r.snat_port, 7, 2, SYN_ACK, b""),
        );
        assert_eq!(v, Verdict::Transmit);
    }
    a.set_now(1_500);
    let (origin, records) = a.export_flows();
    assert_eq!(records.len(), 9);
    assert!(records.iter().all(|r| r.idle_ms == 500));
    let (origin, records) = decode(&encode(origin, &records)).unwrap();

    let mut b = lab_pipeline(0, 1);
    b.set_now(90_000);
    assert_eq!(
        b.restore_flows(origin, &records),
        Ok(RestoreReport {
            restored: 9,
            task_gone: 0,
            refused: 0
        })
    );
    assert_eq!(b.flows().len(), 9);
    assert!(b.export_flows().1.iter().all(|r| r.idle_ms == 500));
    for r in &records {
        let (t, p) = (task_of(r.task), r.client_port);
        let frames = if r.protocol == 6 {
            vec![
                client_tcp(p, 2, 8, ACK, b"GET /"),
                task_reply_tcp(t, r.snat_port, 8, 7, ACK, b"200 OK"),
            ]
        } else {
            vec![
                client_udp(p, b"again"),
                task_reply_udp(t, r.snat_port, b"answer"),
            ]
        };
        for f in frames {
            let (va, out_a) = run(&mut a, &f);
            let (vb, out_b) = run(&mut b, &f);
            assert_eq!((va, vb), (Verdict::Transmit, Verdict::Transmit), "{r:?}");
            assert!(out_a == out_b, "{r:?}:\n{}\n{}", hex(&out_a), hex(&out_b));
        }
    }
    assert_eq!(b.flows().len(), 9, "no flow was created anew");

    // The same flows again clash; a flow whose task is gone is left out;
    // another worker's flows are refused whole.
    let mut gone = records.clone();
    gone[0].task = std::net::Ipv4Addr::new(198, 18, 128, 99);
    let mut c = lab_pipeline(0, 1);
    let report = c.restore_flows(origin, &gone).unwrap();
    assert_eq!((report.restored, report.task_gone), (8, 1));
    assert_eq!(c.restore_flows(origin, &records).unwrap().refused, 8);
    assert!(matches!(
        lab_pipeline(1, 2).restore_flows(origin, &records),
        Err(HandoverError::Origin { .. })
    ));
}

// ---------------------------------------------------------------------------
// IPv6 clients (issue 15): translated to IPv4 for the overlay and back.

fn c6(last: u16) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, last)
}

#[test]
fn an_ipv6_clients_connection_is_translated_both_ways_byte_for_byte() {
    let mut p = lab_pipeline6(L4Checksum::Incremental);
    let (v, out) = run(&mut p, &client6_tcp(CLIENT6, 40000, 1000, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit);
    let want = expected_forward6_tcp(CLIENT6, 0, 40000, 40000, 1000, 0, SYN, b"");
    assert!(out == want, "got:\n{}\nwant:\n{}", hex(&out), hex(&want));
    let (v, out) = run(&mut p, &task_reply_tcp(0, 40000, 5000, 1001, SYN_ACK, b""));
    assert_eq!(v, Verdict::Transmit);
    let want = expected_reply6_tcp(CLIENT6, 40000, 5000, 1001, SYN_ACK, b"");
    assert!(out == want, "got:\n{}\nwant:\n{}", hex(&out), hex(&want));
    // Data both ways on the established flow.
    let (v, out) = run(
        &mut p,
        &client6_tcp(CLIENT6, 40000, 1001, 5001, PSH_ACK, b"GET /"),
    );
    assert_eq!(v, Verdict::Transmit);
    let want = expected_forward6_tcp(CLIENT6, 0, 40000, 40000, 1001, 5001, PSH_ACK, b"GET /");
    assert!(out == want, "got:\n{}\nwant:\n{}", hex(&out), hex(&want));
    let (v, out) = run(
        &mut p,
        &task_reply_tcp(0, 40000, 5001, 1006, PSH_ACK, b"200 OK"),
    );
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(
        out,
        expected_reply6_tcp(CLIENT6, 40000, 5001, 1006, PSH_ACK, b"200 OK")
    );
    // UDP likewise.
    let (v, _) = run(&mut p, &client6_udp(CLIENT6, 41000, b"q"));
    assert_eq!(v, Verdict::Transmit);
    let (v, out) = run(&mut p, &task_reply_udp(1, 41000, b"answer"));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply6_udp(CLIENT6, 41000, b"answer"));
}

#[test]
fn ipv6_clients_spread_10_10_10_and_are_told_apart_by_address() {
    let mut p = lab_pipeline6(L4Checksum::Incremental);
    let mut per_task = [0; 3];
    for i in 0..30u16 {
        let (v, out) = run(&mut p, &client6_tcp(c6(100 + i), 40000, 1, 0, SYN, b""));
        assert_eq!(v, Verdict::Transmit);
        per_task[task_of(&out)] += 1;
    }
    assert_eq!(per_task, [10, 10, 10]);
    // Thirty clients, one client port: thirty flows, each its own SNAT port
    // towards its task, each reply to its own client.
    assert_eq!(p.flows().len(), 30);
    let (v, out) = run(&mut p, &client6_tcp(c6(101), 40000, 2, 0, ACK, b"x"));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(task_of(&out), 1, "the second client's flow keeps its task");
}

#[test]
fn ipv6_input_meshgate_does_not_forward_is_dropped_by_reason() {
    let mut p = lab_pipeline6(L4Checksum::Incremental);
    let syn = client6_tcp(CLIENT6, 40000, 1, 0, SYN, b"");
    let with = |at: usize, b: u8| {
        let mut f = syn.clone();
        f[at] = b;
        f
    };
    let cases: Vec<(&str, Vec<u8>, DropReason)> = vec![
        (
            "hop-by-hop header",
            with(14 + 6, 0),
            DropReason::Ipv6ExtensionHeader,
        ),
        (
            "routing header",
            with(14 + 6, 43),
            DropReason::Ipv6ExtensionHeader,
        ),
        // A fragment header whose datagram is not TCP or UDP (the TCP
        // header's first byte read as its next header).
        (
            "fragment header of something else",
            with(14 + 6, 44),
            DropReason::UnsupportedProtocol,
        ),
        (
            "ICMPv6 to the node",
            with(14 + 6, 58),
            DropReason::UnsupportedProtocol,
        ),
        (
            "version 4 in an IPv6 frame",
            with(14, 0x45),
            DropReason::IpMalformed,
        ),
        (
            "multicast source",
            with(14 + 8, 0xff),
            DropReason::IpMalformed,
        ),
        (
            "another destination",
            with(14 + 39, 9),
            DropReason::NotForUs,
        ),
        ("hop limit 1", with(14 + 7, 1), DropReason::TtlExpired),
        (
            "truncated header",
            syn[..14 + 30].to_vec(),
            DropReason::Truncated,
        ),
        (
            "payload length beyond the frame",
            with(14 + 5, 200),
            DropReason::Truncated,
        ),
        (
            "unpublished port",
            with(14 + 40 + 3, 81),
            DropReason::NoService,
        ),
    ];
    for (name, frame, reason) in cases {
        let before = p.drops().total();
        let (v, _) = run(&mut p, &frame);
        assert_eq!(v, Verdict::Drop(reason), "{name}");
        assert_eq!(p.drops().total(), before + 1, "{name}: counted once");
    }
    // Without node.address6, IPv6 is not meshgate's at all.
    let (v, _) = run(&mut lab_pipeline(0, 1), &syn);
    assert_eq!(v, Verdict::Drop(DropReason::NotIpv4));
}

#[test]
fn a_too_big_ipv6_packet_gets_packet_too_big_with_the_overlay_mtu_plus_20() {
    let mut p = lab_pipeline6(L4Checksum::Incremental);
    // 1450 bytes of IPv4 fit the overlay: 1430 of IPv6 payload... one more
    // does not.
    let fits = client6_udp(CLIENT6, 41000, &[7; 1430 - 8]);
    assert_eq!(run(&mut p, &fits).0, Verdict::Transmit);
    let big = client6_udp(CLIENT6, 41001, &[7; 1431 - 8]);
    let (v, out) = run(&mut p, &big);
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(p.drops().get(DropReason::TooBig), 1);
    let pkt = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &pkt.net else {
        panic!("not IPv6: {}", hex(&out))
    };
    let h = ip.header();
    assert_eq!(h.source_addr(), NODE6);
    assert_eq!(h.destination_addr(), CLIENT6);
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &pkt.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv6Type::PacketTooBig { mtu: 1470 }
    );
    let want = icmp
        .header()
        .icmp_type
        .calc_checksum(h.source(), h.destination(), icmp.payload())
        .unwrap();
    assert_eq!(icmp.checksum(), want);
    // The quote is the offending packet's start, within 1280 bytes in all.
    assert_eq!(out.len(), 14 + 1280);
    assert_eq!(icmp.payload(), &big[14..14 + 1280 - 48]);
}

#[test]
fn ipv6_clients_partial_and_complete_checksums_come_out_right() {
    for mode in [L4Checksum::CompletePartial, L4Checksum::Full] {
        // Complete sums too: they are patched by the flow's deltas, which
        // include the change of pseudo-header.
        for (udp, partial) in [(false, true), (true, true), (false, false), (true, false)] {
            let mut p = lab_pipeline6(mode);
            let mut frame = if udp {
                client6_udp(CLIENT6, 41000, b"question")
            } else {
                client6_tcp(CLIENT6, 40000, 1, 0, SYN, b"")
            };
            if partial {
                // What a veth hands over: the field holds the
                // pseudo-header sum.
                let len = (frame.len() - 14 - 40) as u32;
                let proto = if udp { 17 } else { 6 };
                let ph = crate::wire::checksum::pseudo_header_v6(CLIENT6, NODE6, proto, len);
                let at = 14 + 40 + if udp { 6 } else { 16 };
                frame[at..at + 2].copy_from_slice(&ph.to_be_bytes());
            }
            let (v, out) = run(&mut p, &frame);
            let what = format!("{mode:?} udp {udp} partial {partial}");
            assert_eq!(v, Verdict::Transmit, "{what}");
            assert!(inner_l4_checksum_ok(&out), "{what}: {}", hex(&out));
        }
    }
}

/// A reply's transport checksum comes out right for the IPv6 client in
/// every mode: patched by the flow's deltas alone (which include the
/// change of pseudo-header), or, where the mode sums it anew over the
/// IPv4 pseudo-header (`Full`, or a task's partial sum completed),
/// patched again when the reply becomes IPv6.
#[test]
fn replies_to_ipv6_clients_have_valid_checksums_in_every_mode() {
    let modes = [
        L4Checksum::Incremental,
        L4Checksum::CompletePartial,
        L4Checksum::Full,
    ];
    for mode in modes {
        for udp in [false, true] {
            for partial in [false, true] {
                let mut p = lab_pipeline6(mode);
                let first = if udp {
                    client6_udp(CLIENT6, 41000, b"question")
                } else {
                    client6_tcp(CLIENT6, 40000, 1000, 0, SYN, b"")
                };
                assert_eq!(run(&mut p, &first).0, Verdict::Transmit);
                let mut reply = if udp {
                    task_reply_udp(0, 41000, b"answer")
                } else {
                    task_reply_tcp(0, 40000, 5000, 1001, SYN_ACK, b"")
                };
                if partial {
                    reply = partial_checksum(reply, INNER_IP);
                }
                let (v, out) = run(&mut p, &reply);
                let what = format!("{mode:?} udp {udp} partial {partial}");
                assert_eq!(v, Verdict::Transmit, "{what}");
                if partial && mode == L4Checksum::Incremental {
                    // A NIC that checks sums hands over none partial: the
                    // mode trusts the field, and passes it on as it is.
                    continue;
                }
                let pkt = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
                let Some(etherparse::NetSlice::Ipv6(ip)) = &pkt.net else {
                    panic!("{what}: not IPv6: {}", hex(&out))
                };
                let h = ip.header().to_header();
                let (got, want) = match &pkt.transport {
                    Some(etherparse::TransportSlice::Tcp(t)) => (
                        t.checksum(),
                        t.to_header().calc_checksum_ipv6(&h, t.payload()).unwrap(),
                    ),
                    Some(etherparse::TransportSlice::Udp(u)) => (
                        u.checksum(),
                        u.to_header().calc_checksum_ipv6(&h, u.payload()).unwrap(),
                    ),
                    _ => panic!("{what}: no TCP or UDP"),
                };
                assert_eq!(got, want, "{what}: {}", hex(&out));
            }
        }
    }
}

#[test]
fn a_stray_ipv6_segment_gets_an_ipv6_reset() {
    let mut p = lab_pipeline6(L4Checksum::Incremental);
    let (v, out) = run(&mut p, &client6_tcp(CLIENT6, 40000, 77, 99, ACK, b"x"));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(p.drops().get(DropReason::TcpNoFlow), 1);
    let pkt = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &pkt.net else {
        panic!("not IPv6: {}", hex(&out))
    };
    let h = ip.header().to_header();
    assert_eq!((h.source_addr(), h.destination_addr()), (NODE6, CLIENT6));
    let Some(etherparse::TransportSlice::Tcp(t)) = &pkt.transport else {
        panic!("not TCP")
    };
    assert!(t.rst());
    assert_eq!(
        (t.source_port(), t.destination_port(), t.sequence_number()),
        (PUBLISHED, 40000, 99)
    );
    assert_eq!(
        t.checksum(),
        t.to_header().calc_checksum_ipv6(&h, t.payload()).unwrap()
    );
}

#[test]
fn ipv6_flows_survive_a_handover() {
    let mut old = lab_pipeline6(L4Checksum::Incremental);
    run(&mut old, &client6_tcp(CLIENT6, 40000, 1000, 0, SYN, b""));
    run(&mut old, &client6_tcp(c6(7), 40000, 1000, 0, SYN, b""));
    run(&mut old, &client_tcp(40001, 1, 0, SYN, b""));
    let (origin, records) = old.export_flows();
    assert_eq!(records.len(), 3);
    assert_eq!(records.iter().filter(|r| r.client6.is_some()).count(), 2);
    let bytes = crate::dataplane::handover::encode(origin, &records);
    let (origin, records) = crate::dataplane::handover::decode(&bytes).unwrap();
    let mut new = lab_pipeline6(L4Checksum::Incremental);
    let r = new.restore_flows(origin, &records).unwrap();
    assert_eq!(r.restored, 3);
    // The task's answer reaches the IPv6 client, from the same SNAT port.
    let (v, out) = run(
        &mut new,
        &task_reply_tcp(0, 40000, 5000, 1001, SYN_ACK, b""),
    );
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(
        out,
        expected_reply6_tcp(CLIENT6, 40000, 5000, 1001, SYN_ACK, b"")
    );
    // And the client's next segment goes to the same task with it.
    let (v, out) = run(&mut new, &client6_tcp(CLIENT6, 40000, 1001, 5001, ACK, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(
        out,
        expected_forward6_tcp(CLIENT6, 0, 40000, 40000, 1001, 5001, ACK, b"")
    );
    assert_eq!(task_of(&out), 0);
}

proptest! {
    /// Arbitrary IPv6 frames never panic and every verdict is counted.
    #[test]
    fn arbitrary_ipv6_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), from in 14usize..120, sport in 1u16..=65535) {
        let mut p = lab_pipeline6(L4Checksum::CompletePartial);
        let mut frame = client6_tcp(CLIENT6, sport, 1, 0, SYN, b"0123456789");
        for (i, b) in bytes.iter().enumerate() {
            if let Some(x) = frame.get_mut(from + i) {
                *x = *b;
            }
        }
        let before = (p.drops().total(), p.events().forwarded);
        let (v, _) = run(&mut p, &frame);
        if let Verdict::Drop(_) = v {
            prop_assert_eq!(p.drops().total(), before.0 + 1);
        }
    }
}

#[test]
fn an_icmp_error_about_an_ipv6_flow_reaches_the_client_as_icmpv6() {
    let mut p = lab_pipeline6(L4Checksum::Incremental);
    let (v, fwd) = run(&mut p, &client6_udp(CLIENT6, 41000, b"knock"));
    assert_eq!(v, Verdict::Transmit);
    let (v, out) = run(&mut p, &task_icmp_unreachable(0, &fwd[64..]));
    assert_eq!(v, Verdict::Transmit, "{:?}", p.drops());
    let pkt = etherparse::SlicedPacket::from_ethernet(&out).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = &pkt.net else {
        panic!("not IPv6: {}", hex(&out))
    };
    let h = ip.header();
    assert_eq!((h.source_addr(), h.destination_addr()), (NODE6, CLIENT6));
    assert_eq!(
        &out[..12],
        &[&CLIENT_MAC.0[..], &NODE_MAC.0[..]].concat()[..]
    );
    let Some(etherparse::TransportSlice::Icmpv6(icmp)) = &pkt.transport else {
        panic!("not ICMPv6")
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv6Type::DestinationUnreachable(
            etherparse::icmpv6::DestUnreachableCode::Port
        )
    );
    let want = icmp
        .header()
        .icmp_type
        .calc_checksum(h.source(), h.destination(), icmp.payload())
        .unwrap();
    assert_eq!(icmp.checksum(), want);
    // The quote is the client's own datagram as it sent it.
    let q = etherparse::Ipv6HeaderSlice::from_slice(icmp.payload()).unwrap();
    assert_eq!((q.source_addr(), q.destination_addr()), (CLIENT6, NODE6));
    let ports = &icmp.payload()[40..44];
    assert_eq!(
        ports,
        &[&41000u16.to_be_bytes()[..], &PUBLISHED.to_be_bytes()[..]].concat()[..]
    );
}

#[test]
fn icmpv4_errors_map_to_icmpv6_as_rfc_7915_says() {
    use super::icmp4_to_6;
    use crate::wire::icmpv6::Repr;
    assert_eq!(icmp4_to_6(3, 3, 0), Some(Repr::DstUnreachable { code: 4 }));
    assert_eq!(icmp4_to_6(3, 1, 0), Some(Repr::DstUnreachable { code: 0 }));
    assert_eq!(icmp4_to_6(3, 13, 0), Some(Repr::DstUnreachable { code: 1 }));
    assert_eq!(
        icmp4_to_6(3, 2, 0),
        Some(Repr::ParamProblem {
            code: 1,
            pointer: 6
        })
    );
    assert_eq!(
        icmp4_to_6(3, 4, 1400),
        Some(Repr::PacketTooBig { mtu: 1420 })
    );
    assert_eq!(
        icmp4_to_6(3, 4, 576),
        Some(Repr::PacketTooBig { mtu: 1280 }),
        "never below 1280"
    );
    assert_eq!(icmp4_to_6(3, 4, 0), None);
    assert_eq!(icmp4_to_6(11, 0, 0), Some(Repr::TimeExceeded { code: 0 }));
    assert_eq!(icmp4_to_6(5, 0, 0), None, "redirect");
}

/// A frame with less headroom in front of it than the VXLAN headers take
/// is dropped, counted and left as it was; with exactly enough it goes.
#[test]
fn a_frame_without_room_for_the_outer_headers_is_dropped() {
    let mut p = lab_pipeline(0, 1);
    let syn = client_tcp(41000, 1, 0, SYN, b"");
    let headroom = super::HEADROOM;
    for (room, want) in [
        (0, Verdict::Drop(DropReason::NoHeadroom)),
        (headroom - 1, Verdict::Drop(DropReason::NoHeadroom)),
        (headroom, Verdict::Transmit),
    ] {
        let mut buf = vec![0u8; room + syn.len()];
        buf[room..].copy_from_slice(&syn);
        let mut f = crate::dataplane::FrameBuf::new(&mut buf, room, syn.len());
        assert_eq!(p.process(&mut f), want, "headroom {room}");
        if want != Verdict::Transmit {
            assert_eq!(f.data(), &syn[..], "headroom {room}: frame changed");
        }
    }
    assert_eq!(p.drops().get(DropReason::NoHeadroom), 2);
}

/// The VTEP test after the flow lookup (`translate_reply`) still refuses
/// what the test before it refused: a reply whose flow names a node that
/// no longer runs a task (the task's address now lives on another node),
/// without ending the flow, and the same flow's reply from the node that
/// now runs it is the wrong VTEP for the flow.
#[test]
fn a_reply_from_a_node_that_is_no_longer_a_vtep_is_refused() {
    let mut reg = Registry::default();
    let cfg = config_with_tasks(&[(TASKS[0], NODE1)]);
    let mut p = Pipeline::new(snapshot_with(&cfg, &mut reg, 1), 0, 1, 1024, (1024, 65535));
    let (v, fwd) = run(&mut p, &client_udp(50000, b"q"));
    assert_eq!(v, Verdict::Transmit);
    let snat = u16::from_be_bytes([fwd[84], fwd[85]]);
    // The answer from NODE1 is fine while the task is there.
    let (v, _) = run(&mut p, &task_reply_udp(0, snat, b"a"));
    assert_eq!(v, Verdict::Transmit, "{:?}", p.drops());
    // The same task address, now on NODE2: NODE1 runs no task any more.
    let moved = config_with_tasks(&[(TASKS[0], NODE2)]);
    p.set_snapshot(snapshot_with(&moved, &mut reg, 2));
    let (v, _) = run(&mut p, &task_reply_udp(0, snat, b"a"));
    assert_eq!(v, Verdict::Drop(DropReason::UnknownVtep));
    assert_eq!(p.flows().len(), 1, "the flow stays");
    let inner = from_task_udp(TASKS[0], snat, b"a");
    let from_node2 = vxlan_frame(NODE2_MAC, NODE_MAC, NODE2, NODE, 51234, VNI, &inner);
    let (v, _) = run(&mut p, &from_node2);
    assert_eq!(v, Verdict::Drop(DropReason::ReplyWrongVtep));
}

/// A VXLAN frame claiming this node's own address as its VTEP matches a
/// local task's flow by the flow's VTEP, but this node is no VTEP of the
/// snapshot's: refused, as a frame from an unknown node.
#[test]
fn vxlan_from_this_nodes_own_address_is_refused() {
    let cfg = config_with_tasks(&[(LOCAL_TASK, NODE)]);
    let mut p = Pipeline::new(lab_snapshot_for(&cfg), 0, 1, 1024, (1024, 65535));
    let (v, out) = run(&mut p, &client_tcp(40000, 100, 0, SYN, b""));
    assert_eq!(v, Verdict::Local);
    let snat = u16::from_be_bytes([out[34], out[35]]);
    let inner = tcp_frame(
        MacAddr::docker(LOCAL_TASK),
        overlay_mac(),
        LOCAL_TASK,
        OVERLAY,
        64,
        TARGET,
        snat,
        7,
        101,
        SYN_ACK,
        b"",
    );
    let spoofed = vxlan_frame(NODE1_MAC, NODE_MAC, NODE, NODE, 51234, VNI, &inner);
    let (v, _) = run(&mut p, &spoofed);
    assert_eq!(v, Verdict::Drop(DropReason::UnknownVtep));
}

/// Frames from an unknown node are counted as such whatever else is
/// wrong with them or wherever they would go: not handed to another
/// worker, not answered.
#[test]
fn unknown_vtep_comes_first() {
    let stranger = std::net::Ipv4Addr::new(198, 18, 0, 99);
    let inner_to = |snat: u16| from_task_udp(TASKS[0], snat, b"a");
    // Two workers: port 1025 belongs to worker 1, so worker 0 would hand
    // the reply over if the node were known.
    let mut p = lab_pipeline(0, 2);
    let known = vxlan_frame(
        NODE1_MAC,
        NODE_MAC,
        NODE1,
        NODE,
        51234,
        VNI,
        &inner_to(1025),
    );
    assert_eq!(run(&mut p, &known).0, Verdict::Handoff(1));
    let unknown = vxlan_frame(
        NODE1_MAC,
        NODE_MAC,
        stranger,
        NODE,
        51234,
        VNI,
        &inner_to(1025),
    );
    assert_eq!(
        run(&mut p, &unknown).0,
        Verdict::Drop(DropReason::UnknownVtep)
    );
    // A bad inner header from an unknown node: the node is what counts.
    let mut bad = inner_to(1024);
    bad[14 + 10] ^= 0xff; // the inner IPv4 checksum
    let unknown = vxlan_frame(NODE1_MAC, NODE_MAC, stranger, NODE, 51234, VNI, &bad);
    assert_eq!(
        run(&mut p, &unknown).0,
        Verdict::Drop(DropReason::UnknownVtep)
    );
    let known = vxlan_frame(NODE1_MAC, NODE_MAC, NODE1, NODE, 51234, VNI, &bad);
    assert_eq!(run(&mut p, &known).0, Verdict::Drop(DropReason::IpChecksum));
}
