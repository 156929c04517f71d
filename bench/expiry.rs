//! `meshgate-bench expiry`: a worker's flow table full of flows that all
//! expire at once, swept the way a worker sweeps it (busy: a slice each
//! millisecond; idle: a larger one per wake-up), timing every sweep call.
//! What it answers (issue 33): do a million flows expiring together stall
//! a worker, and do their SNAT ports and slots come back?

use std::time::{Duration, Instant};

use meshgate::dataplane::{FrameBuf, Pipeline, Verdict};
use meshgate::runtime::worker::{EXPIRE_BUDGET_IDLE, EXPIRE_REMOVED_IDLE, busy_sweep_budget};
use meshgate_testkit::fixtures::*;

/// Tasks of the one service: enough SNAT ports (64 512 per task) for the
/// flows.
fn tasks(flows: usize) -> Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    let n = flows.div_ceil(60_000).max(1);
    (0..n)
        .map(|i| {
            let a = std::net::Ipv4Addr::new(198, 18, 129 + (i / 250) as u8, 10 + (i % 250) as u8);
            (a, if i % 2 == 0 { NODE1 } else { NODE2 })
        })
        .collect()
}

/// Sweep calls' longest and total time, and the flows they freed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Sweeps {
    pub calls: usize,
    pub longest_us: f64,
    pub total_ms: f64,
    pub expired: usize,
}

fn sweep(p: &mut Pipeline, budget: impl Fn(&Pipeline) -> (usize, usize), step_ms: u32) -> Sweeps {
    let mut s = Sweeps::default();
    let mut longest = Duration::ZERO;
    let t0 = Instant::now();
    while !p.flows().is_empty() {
        let b = budget(p);
        let t = Instant::now();
        s.expired += p.expire(b);
        longest = longest.max(t.elapsed());
        s.calls += 1;
        p.set_now(p.now() + step_ms);
    }
    s.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    s.longest_us = longest.as_secs_f64() * 1e6;
    s
}

/// One run: fills a table with `flows` UDP flows (distinct clients and
/// ports), lets them all go idle past the UDP timeout, sweeps as a busy
/// worker and then (filled again) as an idle one; checks that new flows
/// get slots and SNAT ports again.
pub fn run(flows: usize) -> anyhow::Result<serde_json::Value> {
    let snap = lab_snapshot_for(&config_with_tasks(&tasks(flows)));
    let mut p = Pipeline::new(snap, 0, 1, flows, (1024, 65535));
    let mut out = serde_json::Map::new();
    for mode in ["busy", "idle"] {
        let mut base = client_udp(1, b"");
        let mut buf = vec![0u8; FIXTURE_FRAME];
        let fill = Instant::now();
        for i in 0..flows {
            // Client 198.18.(64 + i / 60 000 / 256).…, port 1024 + i % 60 000.
            let c = (i / 60_000) as u32;
            base[26..30].copy_from_slice(&[198, 18, 64 + (c >> 8) as u8, c as u8]);
            base[34..36].copy_from_slice(&(1024 + (i % 60_000) as u16).to_be_bytes());
            fix_ip_checksum(&mut base, 14);
            buf[FIXTURE_HEADROOM..FIXTURE_HEADROOM + base.len()].copy_from_slice(&base);
            let mut f = FrameBuf::new(&mut buf, FIXTURE_HEADROOM, base.len());
            let v = p.process(&mut f);
            anyhow::ensure!(v == Verdict::Transmit, "flow {i}: {v:?}");
        }
        let filled = fill.elapsed();
        anyhow::ensure!(p.flows().len() == flows, "{} flows", p.flows().len());
        // Past the UDP timeout (300 s by default): every flow is due.
        p.set_now(p.now() + 400_000);
        let s = match mode {
            "busy" => sweep(&mut p, |p| busy_sweep_budget(p.flows().high_water()), 1),
            _ => sweep(&mut p, |_| (EXPIRE_BUDGET_IDLE, EXPIRE_REMOVED_IDLE), 100),
        };
        anyhow::ensure!(
            s.expired == flows,
            "{mode}: {} of {flows} expired",
            s.expired
        );
        out.insert(
            mode.into(),
            serde_json::json!({
                "sweeps": s,
                "fill_ms": filled.as_secs_f64() * 1e3,
            }),
        );
    }
    Ok(serde_json::Value::Object(out))
}
