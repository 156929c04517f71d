//! Criterion micro-benchmark of the pipeline alone (no NIC, no rings): ns
//! per packet for a new flow, an established flow and a reply, fed by the
//! same fixture frames as the unit tests (`src/dataplane/fixtures.rs`).
//!
//! Each measured iteration copies the 60-byte input frame into a UMEM-like
//! buffer (a few ns, the NIC's job in production) and runs the pipeline.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshgate::dataplane::{FrameBuf, Pipeline, Verdict};
use meshgate_testkit::fixtures::*;

fn lab(max_flows: usize) -> Pipeline {
    Pipeline::new(lab_snapshot(), 0, 1, max_flows, (1024, 65535))
}

fn buffer(frame: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; FIXTURE_FRAME];
    b[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
    b
}

#[inline]
fn process(p: &mut Pipeline, b: &mut [u8], len: usize) -> Verdict {
    let mut f = FrameBuf::new(b, FIXTURE_HEADROOM, len);
    p.process(&mut f)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));

    // Established: a data segment of an existing flow.
    let mut p = lab(1 << 16);
    let syn = client_tcp(40000, 1, 0, SYN, b"");
    assert_eq!(
        process(&mut p, &mut buffer(&syn), syn.len()),
        Verdict::Transmit
    );
    let data = client_tcp(40000, 2, 1, PSH_ACK, b"");
    let mut b = buffer(&data);
    g.bench_function("established", |bn| {
        bn.iter(|| {
            b[FIXTURE_HEADROOM..FIXTURE_HEADROOM + data.len()].copy_from_slice(&data);
            let v = process(&mut p, &mut b, data.len());
            debug_assert_eq!(v, Verdict::Transmit);
            v
        })
    });

    // Reply: the task's answer in VXLAN, decapsulated to the client.
    let reply = task_reply_tcp(0, 40000, 9, 2, ACK, b"");
    let mut b = buffer(&reply);
    g.bench_function("reply", |bn| {
        bn.iter(|| {
            b[FIXTURE_HEADROOM..FIXTURE_HEADROOM + reply.len()].copy_from_slice(&reply);
            let v = process(&mut p, &mut b, reply.len());
            debug_assert_eq!(v, Verdict::Transmit);
            v
        })
    });

    // New flow: a UDP datagram from a client port not seen before; the
    // table is recreated (outside the timing) every 50 000 flows.
    let udp = client_udp(1, b"");
    g.bench_function("new_flow", |bn| {
        bn.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(50_000);
                let mut p = lab(1 << 17);
                let mut b = buffer(&udp);
                let start = std::time::Instant::now();
                for i in 0..n {
                    b[FIXTURE_HEADROOM..FIXTURE_HEADROOM + udp.len()].copy_from_slice(&udp);
                    let port = 1024 + i as u16;
                    b[FIXTURE_HEADROOM + 34..FIXTURE_HEADROOM + 36]
                        .copy_from_slice(&port.to_be_bytes());
                    let v = process(&mut p, &mut b, udp.len());
                    debug_assert_eq!(v, Verdict::Transmit);
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

/// The cost of the checksum modes on an established flow's data segment,
/// 64-byte and 1 400-byte frames: the incremental update; completing a
/// partial checksum (a veth's frame: a full sum over the segment); and the
/// check alone when the checksum is complete.
fn checksums(c: &mut Criterion) {
    use meshgate::dataplane::tables::L4Checksum;
    let mut g = c.benchmark_group("checksum");
    g.throughput(Throughput::Elements(1));
    for (size, payload) in [(64, vec![0x5a; 10]), (1400, vec![0x5a; 1346])] {
        let complete = client_tcp(40000, 2, 1, PSH_ACK, &payload);
        assert_eq!(complete.len(), size);
        let partial = partial_checksum(complete.clone(), 14);
        for (name, mode, frame) in [
            ("incremental", L4Checksum::Incremental, &complete),
            ("partial_completed", L4Checksum::CompletePartial, &partial),
            ("complete_checked", L4Checksum::CompletePartial, &complete),
            ("full", L4Checksum::Full, &complete),
        ] {
            let mut p = lab_pipeline_with_checksum(mode);
            let syn = client_tcp(40000, 1, 0, SYN, b"");
            assert_eq!(
                process(&mut p, &mut buffer(&syn), syn.len()),
                Verdict::Transmit
            );
            let mut b = buffer(frame);
            g.bench_function(format!("{name}_{size}B"), |bn| {
                bn.iter(|| {
                    b[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
                    let v = process(&mut p, &mut b, frame.len());
                    debug_assert_eq!(v, Verdict::Transmit);
                    v
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench, checksums);
criterion_main!(benches);
