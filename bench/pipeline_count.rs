//! The pipeline alone in a loop, for callgrind's instruction counts and a
//! quick ns/packet: the same frames as `bench/pipeline.rs`.

use meshgate::dataplane::{FrameBuf, Pipeline, Verdict};
use meshgate_testkit::fixtures::*;

fn buffer(frame: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; FIXTURE_FRAME];
    b[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
    b
}

/// One packet: what callgrind counts (`bench/callgrind.rs` names this
/// function; it must stay out of line and keep its name).
#[inline(never)]
fn one(p: &mut Pipeline, b: &mut [u8], frame: &[u8]) -> Verdict {
    b[FIXTURE_HEADROOM..FIXTURE_HEADROOM + frame.len()].copy_from_slice(frame);
    let mut f = FrameBuf::new(b, FIXTURE_HEADROOM, frame.len());
    p.process(&mut f)
}

/// The flow tables' seed here: a fixed one, so that callgrind's counts
/// are the same on every run (the random seed of production tables moved
/// the new-flow count from 906 to 982 once).
const SEED: u64 = 0x6d67_5eed_0000_0001;

/// Runs `iterations` packets of `case`; returns ns per packet.
pub fn run(case: &str, iterations: u64) -> anyhow::Result<f64> {
    // A fixed table size, so that setup costs the same whatever the
    // iteration count (callgrind subtracts two runs).
    // The IPv6 cases: an IPv6 client's flow (node.address6), translated.
    let v6 = case.ends_with('6');
    let snap = if v6 {
        lab_snapshot_for(&lab_config6())
    } else {
        lab_snapshot()
    };
    let mut p = Pipeline::new(snap, 0, 1, 1 << 10, (1024, 65535));
    p.set_flow_seed(SEED);
    let syn = if v6 {
        client6_tcp(CLIENT6, 40000, 1, 0, SYN, b"")
    } else {
        client_tcp(40000, 1, 0, SYN, b"")
    };
    let mut b = buffer(&syn);
    anyhow::ensure!(one(&mut p, &mut b, &syn) == Verdict::Transmit);
    let start;
    match case {
        "established6" => {
            let data = client6_tcp(CLIENT6, 40000, 2, 1, PSH_ACK, b"");
            start = std::time::Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(one(&mut p, &mut b, &data));
            }
        }
        "established" => {
            let data = client_tcp(40000, 2, 1, PSH_ACK, b"");
            start = std::time::Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(one(&mut p, &mut b, &data));
            }
        }
        "reply" | "reply6" => {
            let reply = task_reply_tcp(0, 40000, 9, 2, ACK, b"");
            start = std::time::Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(one(&mut p, &mut b, &reply));
            }
        }
        "new" => {
            // Distinct clients (source ports). One sandbox address gives each
            // task 64 512 SNAT ports, so the table is recreated every 60 000
            // flows, outside the timing.
            let mut frame = client_udp(1, b"");
            let mut elapsed = std::time::Duration::ZERO;
            let mut done = 0;
            while done < iterations {
                let n = (iterations - done).min(60_000);
                p = Pipeline::new(lab_snapshot(), 0, 1, 1 << 17, (1024, 65535));
                p.set_flow_seed(SEED);
                let t = std::time::Instant::now();
                for i in 0..n {
                    frame[34..36].copy_from_slice(&(1024 + i as u16).to_be_bytes());
                    std::hint::black_box(one(&mut p, &mut b, &frame));
                }
                elapsed += t.elapsed();
                anyhow::ensure!(
                    p.drops().total() == 0,
                    "the pipeline dropped frames: {:?}",
                    p.drops().nonzero().collect::<Vec<_>>()
                );
                done += n;
            }
            return Ok(elapsed.as_nanos() as f64 / iterations.max(1) as f64);
        }
        other => {
            anyhow::bail!("unknown case `{other}` (new, established, reply, established6, reply6)")
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations.max(1) as f64;
    anyhow::ensure!(
        p.drops().total() == 0,
        "the pipeline dropped frames: {:?}",
        p.drops().nonzero().collect::<Vec<_>>()
    );
    Ok(ns)
}
