//! Arbitrary frames through the whole pipeline (two workers, so hand-offs
//! happen too), after a few real flows, from the NIC and from the ingress
//! sandbox (the first byte chooses): no panic, and every transmitted frame
//! lies inside its buffer with valid IPv4 header checksums.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshgate_testkit::fixtures::*;
use meshgate::dataplane::{FrameBuf, Pipeline, Verdict};
use std::sync::OnceLock;

fn pipeline() -> Pipeline {
    static SNAP: OnceLock<std::sync::Arc<meshgate::dataplane::tables::Snapshot>> = OnceLock::new();
    let snap = SNAP
        .get_or_init(|| lab_snapshot_for(&config_with_tasks(&[(LOCAL_TASK, NODE), (TASKS[0], NODE1)])))
        .clone();
    let mut p = Pipeline::new(snap, 0, 2, 256, (1024, 65535));
    for f in [client_tcp(40000, 1, 0, SYN, b""), client_udp(40002, b"x")] {
        run(&mut p, &f);
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let mut p = pipeline();
    let Some((&entry, data)) = data.split_first() else { return };
    for frame in data.split(|&b| b == 0xa5).take(8) {
        if frame.len() > FIXTURE_FRAME - FIXTURE_HEADROOM {
            continue;
        }
        let mut buf = vec![0u8; FIXTURE_FRAME];
        buf[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
        let mut f = FrameBuf::new(&mut buf, FIXTURE_HEADROOM, frame.len());
        let v = if entry & 1 == 1 { p.process_local(&mut f) } else { p.process(&mut f) };
        if matches!(v, Verdict::Transmit | Verdict::Local) {
            let out = f.data();
            assert!(out.len() >= 14);
            if out[12..14] == [0x08, 0x00] && out.len() >= 34 && out[14] == 0x45 {
                assert_eq!(meshgate::wire::checksum::data(&out[14..34]), 0xffff, "outer IPv4 checksum");
            }
        }
    }
});
