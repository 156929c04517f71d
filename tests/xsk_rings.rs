//! The AF_XDP rings against a real socket (copy mode on a veth pair): what
//! the fast path relies on, checked where the kernel is on the other side.

use meshgate_testkit::harness as common;

use std::time::{Duration, Instant};

use common::privileged;
use meshgate::xdp::umem::KERNEL_HEADROOM;
use meshgate::xdp::{BindMode, Xsk, XskConfig};
use meshgate_testkit::lab::{self, sh};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// Batch after batch on a 64-entry TX ring, each batch bigger than what is
/// left of the producer's cached view of the ring: every batch must be
/// taken whole once the kernel has sent the previous one. (The ring
/// library refreshes its cached consumer index only when the cache shows
/// no room at all; without a second reservation the second batch came back
/// 16 frames short, and meshgate dropped the rest as "TX full".)
#[test]
fn a_batch_fits_whenever_the_kernel_has_emptied_the_tx_ring() {
    if !privileged() {
        return;
    }
    // "mgl<pid>x…" like the lab's namespaces: swept if this run is killed.
    let ns = Ns(format!("mgl{}x78-ring", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]).unwrap();
    sh(&[
        "ip", "-n", &ns.0, "link", "add", "a0", "type", "veth", "peer", "name", "b0",
    ])
    .unwrap();
    for dev in ["a0", "b0"] {
        sh(&["ip", "-n", &ns.0, "link", "set", dev, "up"]).unwrap();
    }
    let name = ns.0.clone();
    let rounds: Vec<(usize, usize)> = std::thread::spawn(move || {
        lab::enter_ns(&name).unwrap();
        let mut xsk = Xsk::open(&XskConfig {
            ifname: "a0".into(),
            queues: vec![0],
            frames_per_queue: 256,
            frame_size: 2048,
            ring_size: 64,
            mode: BindMode::Copy,
            huge_pages: false,
        })
        .expect("AF_XDP socket on a0");
        let umem = xsk.umem.clone();
        let mut pool = std::mem::take(&mut xsk.initial[0]);
        let port = &mut xsk.ports[0];
        // Broadcast, a local experimental EtherType: b0's stack drops it.
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
        frame.resize(60, 0);
        const BATCH: usize = 48;
        let mut rounds = Vec::new();
        for _ in 0..10 {
            let mut batch: Vec<_> = pool.drain(pool.len() - BATCH..).collect();
            for t in batch.iter_mut() {
                let (chunk, off) = umem.frame(t);
                chunk[off..off + frame.len()].copy_from_slice(&frame);
                umem.set_data(t, KERNEL_HEADROOM, frame.len());
            }
            let taken = port.transmit(&mut batch);
            port.kick();
            // Whatever did not fit goes back to the pool unsent.
            pool.append(&mut batch);
            let mut done = Vec::new();
            let t0 = Instant::now();
            while done.len() < taken && t0.elapsed() < Duration::from_secs(2) {
                port.kick();
                port.complete(&mut done, 64);
            }
            rounds.push((taken, done.len()));
            pool.append(&mut done);
        }
        rounds
    })
    .join()
    .unwrap();
    for (i, &(taken, completed)) in rounds.iter().enumerate() {
        assert_eq!(
            taken, 48,
            "round {i}: the TX ring took {taken} of 48 frames though the kernel had sent every earlier frame: {rounds:?}"
        );
        assert_eq!(completed, taken, "round {i}: completions {rounds:?}");
    }
}
