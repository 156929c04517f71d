//! Passive health in the pipeline (`crate::dataplane::health`): refused
//! and unanswered SYNs, ejection and its cap, over several frames.

use super::{Pipeline, Verdict};
use crate::dataplane::counters::DropReason;
use crate::dataplane::desc::TableDesc;
use crate::dataplane::fixtures::*;
use crate::dataplane::health::{BASE_EJECTION_MS, CONSECUTIVE_UNANSWERED};
use crate::dataplane::tables::{L4Checksum, Registry, Snapshot};
use std::sync::Arc;

/// Which task (0, 1, 2) a forwarded frame went to, and its SNAT port.
fn task_and_snat(out: &[u8]) -> (usize, u16) {
    let ip = 14 + 20 + 8 + 8 + 14;
    let dst = &out[ip + 16..ip + 20];
    let t = TASKS
        .iter()
        .position(|t| t.octets() == dst)
        .expect("a task address");
    (t, u16::from_be_bytes([out[ip + 20], out[ip + 21]]))
}

/// A pipeline over the tables `desc` describes (a fixture configuration's).
fn pipeline_for(desc: &TableDesc<'_>) -> Pipeline {
    let snap = Arc::new(Snapshot::build(
        desc,
        lab_link(L4Checksum::Incremental),
        Arc::new(lab_neighbours()),
        &mut Registry::default(),
        1,
    ));
    let mut p = Pipeline::new(snap, 0, 1, 1024, (1024, 65535));
    p.set_now(1_000);
    p
}

/// A SYN from `port`: the task it went to and its SNAT port.
fn syn(p: &mut Pipeline, port: u16) -> (usize, u16) {
    let (v, out) = run(p, &client_tcp(port, 1, 0, SYN, b""));
    assert_eq!(v, Verdict::Transmit, "SYN from {port}");
    task_and_snat(&out)
}

/// SYNs from `from` on until one goes to `task`: its port and SNAT port.
fn syn_on(p: &mut Pipeline, task: usize, from: u16) -> (u16, u16) {
    (from..)
        .find_map(|port| {
            let (t, snat) = syn(p, port);
            (t == task).then_some((port, snat))
        })
        .expect("round robin comes round")
}

fn ejected(p: &Pipeline, task: usize) -> bool {
    p.snapshot().tasks[task].shared.health.ejected(p.now())
}

#[test]
fn a_refused_syn_is_held_back_and_its_retransmission_reaches_a_healthy_task() {
    let mut p = pipeline_for(&lab_config().table_desc());
    let (a, snat) = syn(&mut p, 50_000);
    let (v, _) = run(&mut p, &task_reply_tcp(a, snat, 9, 2, RST_ACK, b""));
    assert_eq!(v, Verdict::Drop(DropReason::TaskRefused));
    assert_eq!(p.drops().get(DropReason::TaskRefused), 1);
    assert_eq!(p.events().tasks_ejected, 1);
    assert!(ejected(&p, a));
    assert_eq!(p.snapshot().tasks[a].shared.health.ejections(), 1);

    // The client's retransmission, a second later, goes elsewhere.
    p.set_now(2_000);
    let (b, _) = syn(&mut p, 50_000);
    assert_ne!(b, a);
    assert_eq!(p.flows().len(), 1);
    // No new connection goes to the ejected task while it is out...
    for i in 1..=12 {
        assert_ne!(syn(&mut p, 50_000 + i).0, a, "connection {i}");
    }
    // ...and it takes them again once its ejection is over.
    p.set_now(2_000 + BASE_EJECTION_MS);
    assert!(!ejected(&p, a));
    let back = (13..19)
        .map(|i| syn(&mut p, 50_000 + i).0)
        .filter(|&t| t == a);
    assert_eq!(back.count(), 2, "one in three again");
}

#[test]
fn a_connection_has_one_reset_held_back_and_half_the_tasks_at_most_are_ejected() {
    let mut p = pipeline_for(&lab_config().table_desc());
    let (a, snat) = syn(&mut p, 51_000);
    run(&mut p, &task_reply_tcp(a, snat, 9, 2, RST_ACK, b""));
    p.set_now(2_000);
    let (b, snat) = syn(&mut p, 51_000);
    // The second task refuses too: the client hears it this time, and the
    // cap (one of three) keeps the second task in.
    let (v, out) = run(&mut p, &task_reply_tcp(b, snat, 9, 2, RST_ACK, b""));
    assert_eq!(v, Verdict::Transmit);
    assert_eq!(out, expected_reply_tcp(51_000, 9, 2, RST_ACK, b""));
    assert_eq!(p.events().tasks_ejected, 1);
    assert_eq!(p.events().ejections_capped, 1);
    assert!(ejected(&p, a) && !ejected(&p, b));
}

#[test]
fn with_no_other_healthy_task_the_reset_reaches_the_client_at_once() {
    let cfg = config_with_tasks(&[(TASKS[0], NODE1)]);
    let mut p = pipeline_for(&cfg.table_desc());
    let (t, snat) = syn(&mut p, 52_000);
    let (v, _) = run(&mut p, &task_reply_tcp(t, snat, 9, 2, RST_ACK, b""));
    assert_eq!(v, Verdict::Transmit, "a closed port fails fast");
    assert!(!ejected(&p, t), "the only task is never ejected");
    assert_eq!(p.events().ejections_capped, 1);
}

#[test]
fn unanswered_syns_move_to_another_task_and_three_in_a_row_eject_it() {
    let mut p = pipeline_for(&lab_config().table_desc());
    let mut now = 1_000;
    let mut port = 53_000;
    let mut unanswered_on_0 = 0;
    while unanswered_on_0 < CONSECUTIVE_UNANSWERED {
        port += 1;
        let (t, _) = syn(&mut p, port);
        if t != 0 {
            continue;
        }
        // Task 0 leaves it unanswered; the client tries again a second on.
        now += 1_000;
        p.set_now(now);
        let (moved, snat) = syn(&mut p, port);
        assert_ne!(moved, 0, "the retransmission goes to another task");
        run(&mut p, &task_reply_tcp(moved, snat, 9, 2, SYN_ACK, b""));
        unanswered_on_0 += 1;
        assert_eq!(ejected(&p, 0), unanswered_on_0 == CONSECUTIVE_UNANSWERED);
    }
    assert_eq!(p.events().syns_moved, u64::from(CONSECUTIVE_UNANSWERED));
    assert_eq!(p.events().tasks_ejected, 1);
    for i in 0..9 {
        assert_ne!(syn(&mut p, 54_000 + i).0, 0);
    }
}

#[test]
fn a_syn_ack_forgives_unanswered_syns() {
    let mut p = pipeline_for(&lab_config().table_desc());
    for round in 0..4u16 {
        // One SYN task 0 leaves unanswered, then one it answers.
        let (port, _) = syn_on(&mut p, 0, 55_000 + round * 100);
        p.set_now(p.now() + 1_000);
        syn(&mut p, port);
        let (_, snat) = syn_on(&mut p, 0, 55_050 + round * 100);
        run(&mut p, &task_reply_tcp(0, snat, 9, 2, SYN_ACK, b""));
    }
    assert!(!ejected(&p, 0), "never three in a row");
    assert_eq!(p.events().tasks_ejected, 0);
    assert_eq!(p.events().syns_moved, 4);
}

#[test]
fn a_duplicate_syn_within_half_a_second_stays_with_its_task() {
    let mut p = pipeline_for(&lab_config().table_desc());
    let (a, _) = syn(&mut p, 56_000);
    p.set_now(1_200);
    assert_eq!(syn(&mut p, 56_000).0, a);
    assert_eq!(p.events().syns_moved, 0);
}

#[test]
fn with_outlier_detection_off_resets_pass_and_syns_stay() {
    let mut cfg = lab_config();
    cfg.services[0].outlier_detection = crate::dataplane::desc::OutlierDetection::Off;
    let mut p = pipeline_for(&cfg.table_desc());
    let (a, snat) = syn(&mut p, 57_000);
    p.set_now(2_000);
    assert_eq!(syn(&mut p, 57_000).0, a, "the retransmission stays");
    let (v, _) = run(&mut p, &task_reply_tcp(a, snat, 9, 2, RST_ACK, b""));
    assert_eq!(v, Verdict::Transmit);
    assert!(!ejected(&p, a));
    assert_eq!(p.events().syns_moved + p.events().tasks_ejected, 0);
}

#[test]
fn a_syn_ack_held_for_the_clients_neighbour_still_counts_as_an_answer() {
    let mut neighbours = lab_neighbours();
    neighbours.entries.remove(&CLIENT);
    let snap = Arc::new(Snapshot::build(
        &lab_config().table_desc(),
        lab_link(L4Checksum::Incremental),
        Arc::new(neighbours),
        &mut Registry::default(),
        1,
    ));
    let mut p = Pipeline::new(snap, 0, 1, 1024, (1024, 65535));
    p.set_now(1_000);
    let (a, snat) = syn(&mut p, 58_000);
    let (v, _) = run(&mut p, &task_reply_tcp(a, snat, 9, 2, SYN_ACK, b""));
    assert_eq!(v, Verdict::Drop(DropReason::NoNeighbour));
    // The client's retransmission a second later stays with its task,
    // which answered.
    p.set_now(2_000);
    assert_eq!(syn(&mut p, 58_000).0, a);
    assert_eq!(p.events().syns_moved, 0);
}

#[test]
fn a_reset_that_acknowledges_another_syn_says_nothing_of_the_task() {
    // A spoofed flood repeats ports with new sequence numbers: the task's
    // reset to such a SYN acknowledges that one, not the flow's.
    let mut p = pipeline_for(&lab_config().table_desc());
    let (a, snat) = syn(&mut p, 59_000);
    let (v, _) = run(&mut p, &task_reply_tcp(a, snat, 9, 77_777, RST_ACK, b""));
    assert_eq!(v, Verdict::Transmit, "it passes");
    assert!(!ejected(&p, a));
    assert_eq!(p.events().tasks_ejected + p.events().ejections_capped, 0);
}
