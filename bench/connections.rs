//! The connection-rate phase: new flows per second, every flow from a
//! client address and port never used before in the run, through the
//! kernel path and meshgate (and, for UDP, the reflector that puts its
//! frames in VXLAN); and the CPU each path spends per new flow at a rate
//! all of them carry. Two kinds of flow: a single UDP datagram (DNS-like
//! clients), and a TCP connection opened and closed ([`Transport`]).
//!
//! Every path serves [`TASKS`] tasks, so that SNAT ports are not what
//! runs out first: the kernel's SNAT, like meshgate's, gives each
//! destination (task and port) its own 64 K source ports, and a few
//! seconds of new flows at these rates outnumber three tasks' ports while
//! the flows are alive (UDP flows stay 30 s in conntrack and meshgate by
//! default; closed TCP connections stay in conntrack's TIME_WAIT). Both keep their defaults otherwise: the kernel's conntrack
//! table and meshgate's flow table fill up over a run, and each then makes
//! room as it does in production (conntrack's early drop of unreplied
//! entries, meshgate's eviction), which the rates include.

use anyhow::Result;
use serde_json::{Value, json};

use crate::paths::{self, BenchLab, Bins, Load, PathKind};
use crate::run_all::{MAX_LOSS, cpu_verdict_of, log, median, spread};

/// Tasks behind the published port, on every path.
pub const TASKS: usize = 32;

/// 64-byte frames (the generator's smallest UDP frame; a SYN's size).
const SIZE: usize = 64;

/// What a new flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One UDP datagram from a new client port.
    Udp,
    /// A TCP connection: SYN, SYN-ACK, and a close both ways, the
    /// generator playing client and task (`meshgate-pktgen send
    /// --handshakes`).
    Tcp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    /// The paths compared, in the order they take turns. The reflector
    /// answers no SYN (it sends the generator's own frames back), so it
    /// has no TCP row.
    fn kinds(self) -> &'static [PathKind] {
        match self {
            Transport::Udp => &[PathKind::Kernel, PathKind::CeilingVxlan, PathKind::Meshgate],
            Transport::Tcp => &[PathKind::Kernel, PathKind::Meshgate],
        }
    }

    /// meshgate's extra configuration: for TCP, no SYN admission budget
    /// (`flows.new_per_second`, 20 000 a queue and second by default,
    /// meshgate's flood protection), which would measure the budget; the
    /// kernel path has none.
    fn meshgate_cfg(self) -> &'static str {
        match self {
            Transport::Udp => "",
            Transport::Tcp => "[flows]\nnew_per_second = 0",
        }
    }

    fn load(self, rate: u64, seconds: f64, sleep: bool) -> Load {
        Load {
            rate,
            sleep,
            new_flows: true,
            handshakes: self == Transport::Tcp,
            ..Load::flat(1, SIZE, seconds)
        }
    }
}

/// Both transports' phases.
pub fn run(lab: &BenchLab, bins: &Bins, quick: bool) -> Result<Value> {
    Ok(json!({
        "udp": phase(lab, bins, quick, Transport::Udp)?,
        "tcp": phase(lab, bins, quick, Transport::Tcp)?,
    }))
}

/// One round's numbers of one path.
struct Round {
    round: usize,
    kind: PathKind,
    rate: f64,
    loss: f64,
    cpu_ns: f64,
}

/// Runs the phase: `rounds` rounds of each path's highest new-flow rate
/// with at most [`MAX_LOSS`] loss, then `rounds` rounds of CPU per new
/// flow at half the slowest path's median rate, the generator alone
/// measured at that rate and subtracted.
fn phase(lab: &BenchLab, bins: &Bins, quick: bool, tr: Transport) -> Result<Value> {
    let (rounds, secs, steps) = if quick { (1, 1.0, 3) } else { (3, 2.0, 5) };
    let tasks = paths::many_tasks(TASKS);
    let mut out: Vec<Round> = Vec::new();
    let mut meshgate_stats = Value::Null;
    let mut kernel_conntrack = Value::Null;
    for round in 0..rounds {
        for &kind in tr.kinds() {
            log(&format!(
                "{}: new {} flows per second (round {}/{rounds})",
                kind.name(),
                tr.name(),
                round + 1
            ));
            let _path = paths::start(lab, bins, kind, false, tr.meshgate_cfg(), &tasks)?;
            let (rate, at) = paths::max_rate(lab, bins, tr.load(0, secs, false), steps, MAX_LOSS)?;
            log(&format!(
                "{}: {:.0} new flows/s (loss {:.4} %)",
                kind.name(),
                rate,
                at.loss * 100.0
            ));
            if kind == PathKind::Kernel {
                kernel_conntrack = conntrack(lab);
            }
            if kind == PathKind::Meshgate {
                // The stats file is written every second: the last trial's
                // flows are in it after that.
                std::thread::sleep(std::time::Duration::from_millis(1200));
                meshgate_stats = paths::meshgate_stats(lab);
            }
            out.push(Round {
                round,
                kind,
                rate,
                loss: at.loss,
                cpu_ns: f64::NAN,
            });
        }
    }
    let rates =
        |k: PathKind| -> Vec<f64> { out.iter().filter(|r| r.kind == k).map(|r| r.rate).collect() };
    let slowest = tr
        .kinds()
        .iter()
        .map(|&k| median(rates(k)))
        .fold(f64::MAX, f64::min);
    let offered = ((slowest / 2.0) as u64).max(1000);
    let mut cpu: Vec<Round> = Vec::new();
    for round in 0..rounds {
        log(&format!(
            "generator alone: cpu of new flows (round {}/{rounds})",
            round + 1
        ));
        let baseline = {
            let _b = paths::start_baseline(lab)?;
            let t = paths::trial(lab, bins, tr.load(offered, secs * 2.0, true))?;
            t.busy_share()
        };
        for &kind in tr.kinds() {
            let _path = paths::start(lab, bins, kind, true, tr.meshgate_cfg(), &tasks)?;
            let t = paths::trial(lab, bins, tr.load(offered, secs * 2.0, true))?;
            let ns = t.net_cpu_ns(baseline);
            log(&format!(
                "{}: {ns:.0} ns CPU per new flow at {offered} flows/s (loss {:.4} %)",
                kind.name(),
                t.loss * 100.0
            ));
            cpu.push(Round {
                round,
                kind,
                rate: t.rx_pps,
                loss: t.loss,
                cpu_ns: ns,
            });
        }
    }
    let rows: Vec<Value> = tr
        .kinds()
        .iter()
        .map(|&k| {
            let r = rates(k);
            let ns: Vec<f64> = cpu
                .iter()
                .filter(|c| c.kind == k)
                .map(|c| c.cpu_ns)
                .collect();
            let loss: Vec<f64> = out.iter().filter(|c| c.kind == k).map(|c| c.loss).collect();
            json!({
                "path": k.name(),
                "flows_per_second": median(r.clone()),
                "rounds_flows_per_second": r,
                "rate_spread": spread(&rates(k)),
                "loss": median(loss),
                "cpu_ns_per_flow": median(ns.clone()),
                "cpu_rounds_ns": ns,
                "cpu_spread": spread(&ns),
            })
        })
        .collect();
    // meshgate / kernel, per round (the paths minutes apart at most).
    let paired = |f: &dyn Fn(&Round) -> f64, v: &[Round], a: PathKind, b: PathKind| -> Vec<f64> {
        (0..rounds)
            .filter_map(|round| {
                let at = |k| v.iter().find(|x| x.round == round && x.kind == k).map(f);
                Some(at(a)? / at(b)?)
            })
            .collect()
    };
    let rate_rounds = paired(&|r| r.rate, &out, PathKind::Meshgate, PathKind::Kernel);
    let cpu_rounds = paired(&|r| r.cpu_ns, &cpu, PathKind::Kernel, PathKind::Meshgate);
    let events = &meshgate_stats["events"];
    Ok(json!({
        "transport": tr.name(),
        "tasks": TASKS,
        "frame_bytes": SIZE,
        "rounds": rounds,
        "max_loss": MAX_LOSS,
        "cpu_offered_flows_per_second": offered,
        "paths": rows,
        "meshgate_vs_kernel_rate": median(rate_rounds.clone()),
        "meshgate_vs_kernel_rate_rounds": rate_rounds,
        "kernel_vs_meshgate_cpu": median(cpu_rounds.clone()),
        "kernel_vs_meshgate_cpu_rounds": cpu_rounds.clone(),
        "cpu_not_meaningful": cpu_verdict_of("kernel/meshgate", &cpu_rounds),
        // What conntrack went through in the kernel path's last rate round.
        "kernel_conntrack": kernel_conntrack,
        // What meshgate's flow table went through in its last rate round.
        "meshgate_flows": {
            "created": events["flows_created"],
            "evicted": events["flows_evicted"],
            "expired": events["flows_expired"],
            "in_table": meshgate_stats["flows"],
            "drops": meshgate_stats["drops"].as_object().map(|d| {
                d.iter().filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                    .map(|(k, n)| (k.clone(), n.clone())).collect::<serde_json::Map<_, _>>()
            }),
        },
    }))
}

/// The DUT's conntrack entries and its statistics summed over CPUs
/// (`/proc/net/stat/nf_conntrack`: hexadecimal, a line per CPU), among
/// them `early_drop` (unreplied entries dropped to make room) and `drop`.
fn conntrack(lab: &BenchLab) -> Value {
    let sysctl = |name: &str| {
        lab.exec(&lab.dut, &["sysctl", "-n", name])
            .ok()
            .and_then(|c| c.trim().parse::<u64>().ok())
    };
    let mut v = json!({
        "entries_now": sysctl("net.netfilter.nf_conntrack_count"),
        "max": sysctl("net.netfilter.nf_conntrack_max"),
    });
    if let Ok(text) = lab.exec(&lab.dut, &["cat", "/proc/net/stat/nf_conntrack"]) {
        for (name, n) in conntrack_stats(&text) {
            if ["insert_failed", "drop", "early_drop"].contains(&name.as_str()) {
                v[name] = json!(n);
            }
        }
    }
    v
}

/// `/proc/net/stat/nf_conntrack`'s columns, each summed over its lines
/// (one a CPU, in hexadecimal).
fn conntrack_stats(text: &str) -> Vec<(String, u64)> {
    let mut lines = text.lines();
    let names: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let mut sums = vec![0u64; names.len()];
    for l in lines {
        for (i, x) in l.split_whitespace().enumerate() {
            if let (Some(s), Ok(n)) = (sums.get_mut(i), u64::from_str_radix(x, 16)) {
                *s += n;
            }
        }
    }
    names.iter().map(|n| n.to_string()).zip(sums).collect()
}

/// The phase's lines of the results table.
pub fn table(v: &Value) -> String {
    ["udp", "tcp"]
        .iter()
        .map(|t| transport_table(&v[*t]))
        .collect()
}

fn transport_table(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    let what = match v["transport"].as_str() {
        Some("tcp") => "TCP connections (SYN, SYN-ACK, a close both ways)",
        _ => "UDP flows (every datagram a new client port)",
    };
    let mut s = format!(
        "\nnew {what} per second, {} tasks, loss <= {} %\n{:<14} {:>12} {:>8} {:>12} {:>8}\n",
        v["tasks"],
        v["max_loss"].as_f64().unwrap_or(f64::NAN) * 100.0,
        "path",
        "flows/s",
        "spread",
        "CPU ns/flow",
        "spread"
    );
    for r in v["paths"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<14} {:>12.0} {:>8.2} {:>12.0} {:>8.2}\n",
            r["path"].as_str().unwrap_or(""),
            r["flows_per_second"].as_f64().unwrap_or(f64::NAN),
            r["rate_spread"].as_f64().unwrap_or(f64::NAN),
            r["cpu_ns_per_flow"].as_f64().unwrap_or(f64::NAN),
            r["cpu_spread"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    s.push_str(&format!(
        "meshgate/kernel flows/s {:.2}   kernel/meshgate CPU per flow {:.2}{}\n",
        v["meshgate_vs_kernel_rate"].as_f64().unwrap_or(f64::NAN),
        v["kernel_vs_meshgate_cpu"].as_f64().unwrap_or(f64::NAN),
        match v["cpu_not_meaningful"].as_str() {
            Some(why) => format!(" (not meaningful: {why})"),
            None => String::new(),
        }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conntrack_statistics_are_summed_over_cpus_in_hexadecimal() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n\
                    0000002a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000010 000000ff\n\
                    0000002a  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000001 00000001\n";
        let v: std::collections::HashMap<String, u64> = conntrack_stats(text).into_iter().collect();
        assert_eq!(v["insert_failed"], 3);
        assert_eq!(v["drop"], 17);
        assert_eq!(v["early_drop"], 256);
        assert_eq!(v["entries"], 84);
    }
}
