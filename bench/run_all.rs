//! `meshgate-bench run`: every measurement of bench/README.md in one run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::paths::{self, BenchLab, Bins, Load, PathKind};
use crate::pipeline_count;

pub struct Opts {
    pub quick: bool,
    pub bins: Bins,
    pub memory: bool,
    pub callgrind: Option<PathBuf>,
}

pub const MAX_LOSS: f64 = 0.001;

/// One round's numbers of one path and load.
struct Sample {
    round: usize,
    kind: PathKind,
    flows: u32,
    size: usize,
    rate: f64,
    loss: f64,
    gbps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

/// Rounds of the CPU measurement.
const CPU_ROUNDS: usize = 3;

/// The widest spread (max / min of the rounds' meshgate/reflector ratio)
/// at which the median ratio is still committed as a result.
pub const MAX_CPU_RATIO_SPREAD: f64 = 1.5;

/// One round's CPU per packet of one path and load.
struct CpuSample {
    round: usize,
    kind: PathKind,
    flows: u32,
    size: usize,
    ns: f64,
    loss: f64,
}

fn cpu_load(flows: u32, size: usize, rate: u64, secs: f64) -> Load {
    Load {
        flows,
        size,
        rate,
        seconds: secs * 2.0,
        count: None,
        sleep: true,
        v6: false,
        new_flows: false,
        handshakes: false,
    }
}

/// The middle value (of the sorted values; NaN when there are none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// max / min of the values (NaN when there are none, or one is not a
/// positive number).
pub fn spread(v: &[f64]) -> f64 {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.is_empty() || v.iter().any(|x| !x.is_finite() || *x <= 0.0) {
        f64::NAN
    } else {
        max / min
    }
}

/// Why the CPU ratio of a run cannot be read, if it cannot: too few
/// rounds measured, or rounds that disagree by more than
/// [`MAX_CPU_RATIO_SPREAD`].
pub fn cpu_verdict(ratio_rounds: &[f64]) -> Option<String> {
    cpu_verdict_of("meshgate/reflector", ratio_rounds)
}

/// [`cpu_verdict`] of the CPU ratio `what`.
pub fn cpu_verdict_of(what: &str, ratio_rounds: &[f64]) -> Option<String> {
    if ratio_rounds.len() < 2 {
        return Some(format!(
            "{} round(s) of {what} CPU measured, at least 2 needed",
            ratio_rounds.len()
        ));
    }
    let s = spread(ratio_rounds);
    if s.is_nan() || s > MAX_CPU_RATIO_SPREAD {
        return Some(format!(
            "the rounds' {what} CPU ratios {ratio_rounds:.2?} differ by {s:.2} x (more than {MAX_CPU_RATIO_SPREAD} x): the machine was too busy; run again"
        ));
    }
    None
}

pub fn log(msg: &str) {
    eprintln!("[bench] {msg}");
}

pub fn run(o: &Opts) -> Result<Value> {
    let lab = BenchLab::build()?;
    let combos: Vec<(u32, usize)> = if o.quick {
        vec![(1000, 64)]
    } else {
        vec![
            (1, 64),
            (1000, 64),
            (100_000, 64),
            (1, 1400),
            (1000, 1400),
            (100_000, 1400),
        ]
    };
    let (secs, steps) = if o.quick { (1.0, 3) } else { (2.0, 5) };
    let kinds = [
        PathKind::Kernel,
        PathKind::Ceiling,
        PathKind::CeilingVxlan,
        PathKind::Meshgate,
    ];
    let tasks = paths::default_tasks();

    // Phase 1: highest rate with <= 0.1 % loss, and latency at half of it,
    // with the AF_XDP paths spinning (their best rates). This machine's
    // rates drift by tens of percent between runs, so the paths take turns
    // over several rounds and each number is the median of its rounds.
    let rounds = 3;
    let mut samples: Vec<Sample> = Vec::new();
    for round in 0..rounds {
        for kind in kinds {
            log(&format!(
                "{}: rates (round {}/{rounds})",
                kind.name(),
                round + 1
            ));
            let _path = paths::start(&lab, &o.bins, kind, false, "", &tasks)?;
            for &(flows, size) in &combos {
                let (rate, at_max) = paths::max_rate(
                    &lab,
                    &o.bins,
                    Load::flat(flows, size, secs),
                    steps,
                    MAX_LOSS,
                )?;
                let half = paths::trial(
                    &lab,
                    &o.bins,
                    Load {
                        flows,
                        size,
                        rate: (rate / 2.0) as u64,
                        seconds: secs,
                        count: None,
                        sleep: false,
                        v6: false,
                        new_flows: false,
                        handshakes: false,
                    },
                )?;
                log(&format!(
                    "{} flows={flows} size={size}: {:.3} Mpps (loss {:.4} %), at half rate p50 {:.1} us p99 {:.1} us",
                    kind.name(),
                    rate / 1e6,
                    at_max.loss * 100.0,
                    half.p50_us,
                    half.p99_us
                ));
                samples.push(Sample {
                    round,
                    kind,
                    flows,
                    size,
                    rate,
                    loss: at_max.loss,
                    gbps: at_max.rx_gbps,
                    p50: half.p50_us,
                    p99: half.p99_us,
                    p999: half.p999_us,
                });
            }
        }
    }
    let mut rows: Vec<Value> = Vec::new();
    for kind in kinds {
        for &(flows, size) in &combos {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|x| x.kind == kind && x.flows == flows && x.size == size)
                .collect();
            let col = |f: fn(&Sample) -> f64| median(mine.iter().map(|x| f(x)).collect());
            let rate = col(|x| x.rate);
            rows.push(json!({
                "path": kind.name(), "flows": flows, "frame_bytes": size,
                "mpps": rate / 1e6, "loss": col(|x| x.loss), "gbps": col(|x| x.gbps),
                "p50_us": col(|x| x.p50), "p99_us": col(|x| x.p99), "p999_us": col(|x| x.p999),
                "latency_offered_mpps": rate / 2.0 / 1e6,
                "rounds_mpps": mine.iter().map(|x| x.rate / 1e6).collect::<Vec<_>>(),
            }));
        }
    }

    // IPv6 clients through meshgate (UDP to node.address6), at the smallest
    // IPv6 frame that carries the generator's marker: 82 bytes (no IPv6
    // frame is 64 bytes: its headers alone take 62). One round; the IPv4
    // row of the same round sets the comparison.
    let ipv6 = {
        log("meshgate: IPv6 clients");
        let _path = paths::start(&lab, &o.bins, PathKind::Meshgate, false, "", &tasks)?;
        let size = pktgen_min_v6_frame();
        let mut out = Vec::new();
        for v6 in [false, true] {
            let (rate, at_max) = paths::max_rate(
                &lab,
                &o.bins,
                Load {
                    v6,
                    ..Load::flat(1000, size, secs)
                },
                steps,
                MAX_LOSS,
            )?;
            let half = paths::trial(
                &lab,
                &o.bins,
                Load {
                    flows: 1000,
                    size,
                    rate: (rate / 2.0) as u64,
                    seconds: secs,
                    count: None,
                    sleep: false,
                    v6,
                    new_flows: false,
                    handshakes: false,
                },
            )?;
            log(&format!(
                "meshgate {} flows=1000 size={size}: {:.3} Mpps (loss {:.4} %), at half rate p50 {:.1} us p99 {:.1} us",
                if v6 { "IPv6" } else { "IPv4" },
                rate / 1e6,
                at_max.loss * 100.0,
                half.p50_us,
                half.p99_us
            ));
            out.push(json!({
                "family": if v6 { "ipv6" } else { "ipv4" },
                "flows": 1000, "frame_bytes": size, "mpps": rate / 1e6, "loss": at_max.loss,
                "p50_us": half.p50_us, "p99_us": half.p99_us, "p999_us": half.p999_us,
            }));
        }
        out
    };

    // Phase 1b: the tail, meshgate against the reflector at one offered
    // rate (half of the slower one's maximum), in interleaved blocks of
    // short trials. One trial's p99 on this machine ranges over 30 x
    // (hypervisor stalls): the median of many trials, both paths taking
    // turns, is what can be compared. See bench/README.md, "Tail latency".
    let tail = tail(&lab, o, &rows, &tasks)?;

    // Phase 2: CPU per forwarded packet at an offered rate every path
    // carries: half of the slowest path's maximum, per combination. The
    // generator alone (d0 dropping in XDP) is measured at the same rates and
    // subtracted. The AF_XDP paths sleep when idle here.
    let fixed: Vec<u64> = combos
        .iter()
        .map(|&(f, s)| {
            let min = rows
                .iter()
                .filter(|r| r["flows"] == f && r["frame_bytes"] == s)
                .filter_map(|r| r["mpps"].as_f64())
                .fold(f64::MAX, f64::min);
            ((min * 1e6 / 2.0) as u64).max(1000)
        })
        .collect();
    // CPU per packet drifts more than anything else on a shared machine
    // (one quick run read 6.3 x the reflector, the next 1.33 x): it is
    // measured in CPU_ROUNDS rounds, each with its own baseline and every
    // path in turn, and the spread of the rounds is reported beside the
    // medians. The ratios are taken within each round (paired), then their
    // median; a run whose ratio spread is too wide is flagged.
    let mut cpu: Vec<CpuSample> = Vec::new();
    for round in 0..CPU_ROUNDS {
        let mut baseline = Vec::new();
        {
            log(&format!(
                "generator alone: cpu (round {}/{CPU_ROUNDS})",
                round + 1
            ));
            let _b = paths::start_baseline(&lab)?;
            for (i, &(flows, size)) in combos.iter().enumerate() {
                let t = paths::trial(&lab, &o.bins, cpu_load(flows, size, fixed[i], secs))?;
                baseline.push(t.busy_share());
            }
        }
        for kind in kinds {
            log(&format!(
                "{}: cpu (round {}/{CPU_ROUNDS})",
                kind.name(),
                round + 1
            ));
            let _path = paths::start(&lab, &o.bins, kind, true, "", &tasks)?;
            for (i, &(flows, size)) in combos.iter().enumerate() {
                let t = paths::trial(&lab, &o.bins, cpu_load(flows, size, fixed[i], secs))?;
                let ns = t.net_cpu_ns(baseline[i]);
                log(&format!(
                    "{} flows={flows} size={size}: {ns:.0} ns CPU per packet at {} pps (loss {:.4} %)",
                    kind.name(),
                    fixed[i],
                    t.loss * 100.0
                ));
                cpu.push(CpuSample {
                    round,
                    kind,
                    flows,
                    size,
                    ns,
                    loss: t.loss,
                });
            }
        }
    }
    for (i, &(flows, size)) in combos.iter().enumerate() {
        for kind in kinds {
            let mine: Vec<&CpuSample> = cpu
                .iter()
                .filter(|x| x.kind == kind && x.flows == flows && x.size == size)
                .collect();
            let ns: Vec<f64> = mine.iter().map(|x| x.ns).collect();
            if let Some(r) = rows.iter_mut().find(|r| {
                r["path"] == kind.name() && r["flows"] == flows && r["frame_bytes"] == size
            }) {
                r["cpu_ns_per_packet"] = json!(median(ns.clone()));
                r["cpu_rounds_ns"] = json!(ns);
                r["cpu_spread"] = json!(spread(&ns));
                r["cpu_offered_mpps"] = json!(fixed[i] as f64 / 1e6);
                r["cpu_loss"] = json!(median(mine.iter().map(|x| x.loss).collect()));
            }
        }
    }
    // meshgate / reflector, per round, at 1 000 flows and 64 B.
    let paired = |a: PathKind, b: PathKind| -> Vec<f64> {
        (0..CPU_ROUNDS)
            .filter_map(|round| {
                let at = |k: PathKind| {
                    cpu.iter()
                        .find(|x| {
                            x.round == round && x.kind == k && x.flows == 1000 && x.size == 64
                        })
                        .map(|x| x.ns)
                };
                Some(at(a)? / at(b)?)
            })
            .collect()
    };
    // The rates' ratio the same way: per round (the paths minutes apart at
    // most), then the median.
    let rate_paired = |a: PathKind, b: PathKind| -> Vec<f64> {
        (0..rounds)
            .filter_map(|round| {
                let at = |k: PathKind| {
                    samples
                        .iter()
                        .find(|x| {
                            x.round == round && x.kind == k && x.flows == 1000 && x.size == 64
                        })
                        .map(|x| x.rate)
                };
                Some(at(a)? / at(b)?)
            })
            .collect()
    };
    let rate_rounds = rate_paired(PathKind::Meshgate, PathKind::Ceiling);
    let rate_rounds_vxlan = rate_paired(PathKind::Meshgate, PathKind::CeilingVxlan);
    let vs_vxlan = paired(PathKind::Meshgate, PathKind::CeilingVxlan);
    let vs_ceiling = paired(PathKind::Meshgate, PathKind::Ceiling);
    let vs_kernel = paired(PathKind::Kernel, PathKind::Meshgate);
    let cpu_verdict = cpu_verdict(&vs_ceiling);
    if let Some(why) = &cpu_verdict {
        log(&format!(
            "CPU per packet is not meaningful in this run: {why}"
        ));
    }

    // New flows per second (bench/connections.rs).
    let connections = crate::connections::run(&lab, &o.bins, o.quick)?;

    // The pipeline alone.
    let mut pipeline = json!({});
    for case in ["new", "established", "reply", "established6", "reply6"] {
        let ns = pipeline_count::run(case, if o.quick { 1_000_000 } else { 5_000_000 })?;
        pipeline[case] = json!({ "ns_per_packet": ns });
    }
    if let Some(self_bin) = &o.callgrind {
        match crate::callgrind::instructions(self_bin) {
            Ok(counts) => {
                for (case, n) in counts {
                    pipeline[case]["instructions_per_packet"] = json!(n);
                }
            }
            Err(e) => log(&format!("callgrind unavailable: {e}")),
        }
    }

    // Memory with one million flows.
    let memory = if o.memory {
        memory(&lab, o)?
    } else {
        Value::Null
    };

    let pick = |path: &str| {
        rows.iter()
            .find(|r| r["path"] == path && r["flows"] == 1000 && r["frame_bytes"] == 64)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (k, c, m) = (pick("kernel"), pick("ceiling"), pick("meshgate"));
    let ratio = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => json!(a / b),
        _ => Value::Null,
    };
    let summary = json!({
        // The medians' ratio, and the median of the rounds' ratios.
        "meshgate_vs_ceiling_rate": ratio(&m["mpps"], &c["mpps"]),
        "meshgate_vs_ceiling_rate_paired": median(rate_rounds.clone()),
        "meshgate_vs_ceiling_rate_rounds": rate_rounds,
        "kernel_vs_meshgate_cpu": median(vs_kernel.clone()),
        "kernel_vs_meshgate_cpu_rounds": vs_kernel,
        "meshgate_vs_kernel_rate": ratio(&m["mpps"], &k["mpps"]),
        "meshgate_vs_ceiling_cpu": median(vs_ceiling.clone()),
        "meshgate_vs_ceiling_cpu_rounds": vs_ceiling,
        "meshgate_vs_ceiling_cpu_spread": spread(&paired(PathKind::Meshgate, PathKind::Ceiling)),
        // None: the CPU ratios may be read; else why they may not.
        "cpu_not_meaningful": cpu_verdict,
        "meshgate_vs_kernel_p99": ratio(&m["p99_us"], &k["p99_us"]),
        "meshgate_vs_ceiling_p99": tail["meshgate_vs_ceiling_p99"],
        "meshgate_vs_ceiling_p999": tail["meshgate_vs_ceiling_p999"],
        // Against the reflector whose frames grow by VXLAN's 50 bytes as
        // meshgate's do: what is left is meshgate's own work.
        "meshgate_vs_ceiling_vxlan_rate_paired": median(rate_rounds_vxlan.clone()),
        "meshgate_vs_ceiling_vxlan_rate_rounds": rate_rounds_vxlan,
        "meshgate_vs_ceiling_vxlan_cpu": median(vs_vxlan.clone()),
        "meshgate_vs_ceiling_vxlan_cpu_rounds": vs_vxlan,
        "meshgate_vs_ceiling_vxlan_p99": tail["meshgate_vs_ceiling_vxlan_p99"],
        "meshgate_vs_ceiling_vxlan_p999": tail["meshgate_vs_ceiling_vxlan_p999"],
    });
    Ok(json!({
        "machine": paths::machine(),
        "mode": if o.quick { "quick" } else { "full" },
        "max_loss": MAX_LOSS,
        "runs": rows,
        "ipv6": ipv6,
        "tail": tail,
        "connections": connections,
        "pipeline": pipeline,
        "memory": memory,
        "summary": summary,
    }))
}

/// Blocks of the tail phase, and trials per path in each block.
const TAIL_BLOCKS: (usize, usize) = (6, 10);
const TAIL_TRIALS_PER_BLOCK: usize = 3;

/// Quartiles (25th, 50th, 75th percentile) of the values, nearest rank.
fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

/// The tail phase: meshgate and the reflector spinning, at one offered
/// rate, 1 000 flows, 64 B; blocks in which each path starts, sends one
/// warm-up trial (not counted: the first trial after a start pays the
/// UMEM's page faults) and then `TAIL_TRIALS_PER_BLOCK` one-second
/// trials. Per path, the median and quartiles of the trials' p50, p99 and
/// p99.9.
fn tail(lab: &BenchLab, o: &Opts, rows: &[Value], tasks: &[String]) -> Result<Value> {
    let (flows, size) = (1000, 64);
    let kinds = [
        PathKind::Ceiling,
        PathKind::CeilingVxlan,
        PathKind::Meshgate,
    ];
    // The rate: half of the slower of meshgate and the plain reflector.
    let slower = rows
        .iter()
        .filter(|r| r["flows"] == flows && r["frame_bytes"] == size)
        .filter(|r| {
            [PathKind::Ceiling, PathKind::Meshgate]
                .iter()
                .any(|k| r["path"] == k.name())
        })
        .filter_map(|r| r["mpps"].as_f64())
        .fold(f64::MAX, f64::min);
    if slower == f64::MAX {
        return Ok(Value::Null);
    }
    let rate = ((slower * 1e6 / 2.0) as u64).max(1000);
    let blocks = if o.quick {
        TAIL_BLOCKS.0
    } else {
        TAIL_BLOCKS.1
    };
    let load = Load {
        flows,
        size,
        rate,
        seconds: 1.0,
        count: None,
        sleep: false,
        v6: false,
        new_flows: false,
        handshakes: false,
    };
    let mut trials: Vec<(PathKind, paths::Trial)> = Vec::new();
    for b in 0..blocks {
        for kind in kinds {
            log(&format!(
                "{}: tail at {rate} pps (block {}/{blocks})",
                kind.name(),
                b + 1
            ));
            let _path = paths::start(lab, &o.bins, kind, false, "", tasks)?;
            paths::trial(
                lab,
                &o.bins,
                Load {
                    seconds: 0.5,
                    ..load
                },
            )?;
            for _ in 0..TAIL_TRIALS_PER_BLOCK {
                trials.push((kind, paths::trial(lab, &o.bins, load)?));
            }
        }
    }
    let mut out = json!({
        "offered_mpps": rate as f64 / 1e6,
        "flows": flows,
        "frame_bytes": size,
        "blocks": blocks,
        "trials_per_block": TAIL_TRIALS_PER_BLOCK,
    });
    let mut medians = std::collections::HashMap::new();
    for kind in kinds {
        let mine: Vec<&paths::Trial> = trials
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| t)
            .collect();
        let col = |f: fn(&paths::Trial) -> f64| mine.iter().map(|t| f(t)).collect::<Vec<_>>();
        let (p50, p99, p999) = (
            quartiles(col(|t| t.p50_us)),
            quartiles(col(|t| t.p99_us)),
            quartiles(col(|t| t.p999_us)),
        );
        log(&format!(
            "{}: tail over {} trials: p50 {:.1} us, p99 {:.1} us (quartiles {:.1}-{:.1}), p99.9 {:.1} us",
            kind.name(),
            mine.len(),
            p50[1],
            p99[1],
            p99[0],
            p99[2],
            p999[1]
        ));
        out[kind.name()] = json!({
            "p50_us": p50[1], "p99_us": p99[1], "p999_us": p999[1],
            "p99_quartiles_us": [p99[0], p99[2]], "p999_quartiles_us": [p999[0], p999[2]],
            "trials_p99_us": col(|t| t.p99_us), "trials_p999_us": col(|t| t.p999_us),
            "loss": median(col(|t| t.loss)),
        });
        medians.insert(kind, (p99[1], p999[1]));
    }
    let m = medians[&PathKind::Meshgate];
    for reference in [PathKind::Ceiling, PathKind::CeilingVxlan] {
        let r = medians[&reference];
        out[format!("meshgate_vs_{}_p99", reference.name())] = json!(m.0 / r.0);
        out[format!("meshgate_vs_{}_p999", reference.name())] = json!(m.1 / r.1);
    }
    Ok(out)
}

/// Resident memory of meshgate with one million flows in its table.
fn memory(lab: &BenchLab, o: &Opts) -> Result<Value> {
    const FLOWS: u64 = 1_000_000;
    log("memory: meshgate with flows.max = 1024");
    let small = {
        let p = paths::start(
            lab,
            &o.bins,
            PathKind::Meshgate,
            true,
            "[flows]\nmax = 1024\n",
            &paths::default_tasks(),
        )?;
        std::thread::sleep(Duration::from_millis(500));
        paths::rss(p.pid().unwrap_or(0))?
    };
    log("memory: meshgate with flows.max = 1048576 and one million flows");
    // 20 tasks: one SNAT address gives each task 64 512 ports.
    let p = paths::start(
        lab,
        &o.bins,
        PathKind::Meshgate,
        true,
        "[flows]\nmax = 1048576\n",
        &paths::many_tasks(20),
    )?;
    let pid = p.pid().unwrap_or(0);
    let empty = paths::rss(pid)?;
    let t = paths::trial(
        lab,
        &o.bins,
        Load {
            flows: FLOWS as u32,
            size: 64,
            rate: 150_000,
            seconds: 60.0,
            count: Some(FLOWS),
            sleep: false,
            v6: false,
            new_flows: false,
            handshakes: false,
        },
    )?;
    std::thread::sleep(Duration::from_millis(2500));
    let full = paths::rss(pid)?;
    let stats = paths::meshgate_stats(lab);
    let flows = stats["flows"].as_u64().unwrap_or(0);
    log(&format!(
        "memory: {} flows in the table ({} received), RSS {} MiB empty, {} MiB full, {} MiB with a 1024-flow table",
        flows,
        t.received,
        empty >> 20,
        full >> 20,
        small >> 20
    ));
    Ok(json!({
        "flows_sent": t.sent,
        "flows_in_table": flows,
        "drops": stats["drops_total"],
        "rss_bytes_table_1024": small,
        "rss_bytes_table_1m_empty": empty,
        "rss_bytes_table_1m_full": full,
        "bytes_per_flow_measured": (full.saturating_sub(small)) as f64 / 1_048_576.0,
        // The table, and the crash journal beside the control socket (a
        // shared mapping, resident like the table).
        "bytes_per_flow_documented": meshgate::dataplane::flow::table_bytes(1 << 20) as f64 / 1_048_576.0
            + meshgate::dataplane::handover::RECORD_LEN as f64,
        "drops_by_reason": stats["drops"].as_object().map(|m| m.iter().filter(|(_, v)| v.as_u64() != Some(0)).map(|(k, v)| (k.clone(), v.clone())).collect::<serde_json::Map<_, _>>()),
    }))
}

/// Per-round ratios as "0.80, 0.65, 0.87", or `None` when the run has none.
fn rounds_text(rounds: &Value) -> Option<String> {
    let r: Vec<String> = rounds
        .as_array()?
        .iter()
        .map(|x| format!("{:.2}", x.as_f64().unwrap_or(f64::NAN)))
        .collect();
    Some(r.join(", "))
}

/// A human-readable table of a result.
pub fn table(v: &Value) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<13} {:>7} {:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9}\n",
        "path", "flows", "bytes", "Mpps", "loss%", "CPU ns/p", "p50 us", "p99 us", "p99.9 us"
    ));
    for r in v["runs"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{:<13} {:>7} {:>6} {:>8.3} {:>8.4} {:>9.0} {:>8.1} {:>8.1} {:>9.1}\n",
            r["path"].as_str().unwrap_or(""),
            r["flows"].as_u64().unwrap_or(0),
            r["frame_bytes"].as_u64().unwrap_or(0),
            r["mpps"].as_f64().unwrap_or(f64::NAN),
            r["loss"].as_f64().unwrap_or(f64::NAN) * 100.0,
            r["cpu_ns_per_packet"].as_f64().unwrap_or(f64::NAN),
            r["p50_us"].as_f64().unwrap_or(f64::NAN),
            r["p99_us"].as_f64().unwrap_or(f64::NAN),
            r["p999_us"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    let sm = &v["summary"];
    s.push_str(&format!(
        "\nmeshgate/ceiling rate {:.3}   meshgate/kernel rate {:.3}   kernel/meshgate CPU {:.2}   meshgate/ceiling CPU {:.2}   meshgate/kernel p99 {:.2}\n",
        sm["meshgate_vs_ceiling_rate"].as_f64().unwrap_or(f64::NAN),
        sm["meshgate_vs_kernel_rate"].as_f64().unwrap_or(f64::NAN),
        sm["kernel_vs_meshgate_cpu"].as_f64().unwrap_or(f64::NAN),
        sm["meshgate_vs_ceiling_cpu"].as_f64().unwrap_or(f64::NAN),
        sm["meshgate_vs_kernel_p99"].as_f64().unwrap_or(f64::NAN),
    ));
    if let Some(rounds) = rounds_text(&sm["meshgate_vs_ceiling_rate_rounds"]) {
        s.push_str(&format!(
            "meshgate/ceiling rate by round {rounds}: median {:.2}\n",
            sm["meshgate_vs_ceiling_rate_paired"]
                .as_f64()
                .unwrap_or(f64::NAN)
        ));
    }
    if let Some(rounds) = rounds_text(&sm["meshgate_vs_ceiling_cpu_rounds"]) {
        s.push_str(&format!(
            "meshgate/ceiling CPU by round {rounds} (spread {:.2} x): {}\n",
            sm["meshgate_vs_ceiling_cpu_spread"]
                .as_f64()
                .unwrap_or(f64::NAN),
            sm["cpu_not_meaningful"]
                .as_str()
                .map_or("the rounds agree".to_string(), |w| format!(
                    "NOT MEANINGFUL: {w}"
                ))
        ));
    }
    if let Some(rounds) = rounds_text(&sm["meshgate_vs_ceiling_vxlan_rate_rounds"]) {
        let n = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "meshgate/ceiling_vxlan (the reflector's frames in VXLAN): rate by round {rounds}: median {:.2}; CPU by round {}: median {:.2}; p99 {:.2} x, p99.9 {:.2} x\n",
            n(&sm["meshgate_vs_ceiling_vxlan_rate_paired"]),
            rounds_text(&sm["meshgate_vs_ceiling_vxlan_cpu_rounds"]).unwrap_or_default(),
            n(&sm["meshgate_vs_ceiling_vxlan_cpu"]),
            n(&sm["meshgate_vs_ceiling_vxlan_p99"]),
            n(&sm["meshgate_vs_ceiling_vxlan_p999"]),
        ));
    }
    let t = &v["tail"];
    if t.is_object() {
        let n = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "tail at {:.3} Mpps, median of {} one-second trials per path: p99 meshgate {:.1} / ceiling {:.1} us = {:.2} x (quartiles {:.1}-{:.1} / {:.1}-{:.1}), p99.9 {:.1} / {:.1} us = {:.2} x\n",
            n(&t["offered_mpps"]),
            t["meshgate"]["trials_p99_us"].as_array().map_or(0, |a| a.len()),
            n(&t["meshgate"]["p99_us"]),
            n(&t["ceiling"]["p99_us"]),
            n(&t["meshgate_vs_ceiling_p99"]),
            n(&t["meshgate"]["p99_quartiles_us"][0]),
            n(&t["meshgate"]["p99_quartiles_us"][1]),
            n(&t["ceiling"]["p99_quartiles_us"][0]),
            n(&t["ceiling"]["p99_quartiles_us"][1]),
            n(&t["meshgate"]["p999_us"]),
            n(&t["ceiling"]["p999_us"]),
            n(&t["meshgate_vs_ceiling_p999"]),
        ));
    }
    for r in v["ipv6"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "meshgate {} clients, {} flows, {} B: {:.3} Mpps (loss {:.4} %), p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us\n",
            r["family"].as_str().unwrap_or(""),
            r["flows"].as_u64().unwrap_or(0),
            r["frame_bytes"].as_u64().unwrap_or(0),
            r["mpps"].as_f64().unwrap_or(f64::NAN),
            r["loss"].as_f64().unwrap_or(f64::NAN) * 100.0,
            r["p50_us"].as_f64().unwrap_or(f64::NAN),
            r["p99_us"].as_f64().unwrap_or(f64::NAN),
            r["p999_us"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    let p = &v["pipeline"];
    for case in ["new", "established", "reply", "established6", "reply6"] {
        s.push_str(&format!(
            "pipeline {case:<12} {:>7.1} ns/packet  {:>5} instructions/packet\n",
            p[case]["ns_per_packet"].as_f64().unwrap_or(f64::NAN),
            p[case]["instructions_per_packet"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
        ));
    }
    let m = &v["memory"];
    if !m.is_null() {
        s.push_str(&format!(
            "memory: {} flows in the table; RSS {:.0} MiB (table of 1 M) vs {:.0} MiB (table of 1024): {:.0} bytes per flow (documented {})\n",
            m["flows_in_table"],
            m["rss_bytes_table_1m_full"].as_f64().unwrap_or(0.0) / 1048576.0,
            m["rss_bytes_table_1024"].as_f64().unwrap_or(0.0) / 1048576.0,
            m["bytes_per_flow_measured"].as_f64().unwrap_or(f64::NAN),
            m["bytes_per_flow_documented"]
        ));
    }
    s.push_str(&crate::connections::table(&v["connections"]));
    s
}

/// The smallest IPv6 frame the generator sends (with the FCS).
fn pktgen_min_v6_frame() -> usize {
    // Ethernet 14, IPv6 40, UDP 8, the marker 16, FCS 4 (tools/pktgen/frames.rs).
    14 + 40 + 8 + 16 + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rounds_that_disagree_are_flagged() {
        // The two quick runs of issue 17: 6.3 x, then 1.33 x.
        assert!(cpu_verdict(&[6.3, 1.33, 1.4]).is_some());
        assert!(cpu_verdict(&[1.30, 1.33, 1.41]).is_none());
        assert!(cpu_verdict(&[1.3]).is_some());
        assert!(cpu_verdict(&[1.3, f64::NAN]).is_some());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!((spread(&[2.0, 1.0, 1.5]) - 2.0).abs() < 1e-12);
        assert!(spread(&[0.0, 1.0]).is_nan());
    }

    #[test]
    fn cpu_per_packet_is_net_of_the_generator() {
        let t = |busy: f64, rx_pps: f64| crate::paths::Trial {
            sent: 0,
            received: 0,
            loss: 0.0,
            duration_s: 2.0,
            tx_pps: 0.0,
            rx_pps,
            rx_gbps: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            cpu_busy_s: busy,
            rx_dropped_here: 0,
        };
        // 1.5 of a CPU busy, 0.5 of it the generator's: 1 ms per 1 000 packets.
        assert_eq!(t(3.0, 1000.0).net_cpu_ns(0.5), 1e6);
        assert_eq!(t(0.5, 1000.0).net_cpu_ns(0.5), 0.0);
        assert!(t(3.0, 0.0).net_cpu_ns(0.5).is_nan());
    }

    #[test]
    fn quartiles_of_trials() {
        // Nine trials' p99: one stalled trial moves the median not at all.
        let v = vec![40.0, 38.0, 1937.0, 45.0, 41.0, 39.0, 44.0, 42.0, 43.0];
        assert_eq!(quartiles(v), [40.0, 42.0, 44.0]);
        assert_eq!(quartiles(vec![7.0]), [7.0; 3]);
        assert!(quartiles(Vec::new())[1].is_nan());
    }
}
