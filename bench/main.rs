//! `meshgate-bench`: the benchmark driver behind `bench/run`.
//!
//! `meshgate-bench run [--quick] [--json]` measures the kernel path, the
//! AF_XDP ceiling and meshgate side by side in a namespace lab, the
//! pipeline alone (time and callgrind instructions) and the memory of a
//! million flows; `meshgate-bench pipeline --case C --iterations N` is the
//! pipeline loop that callgrind runs, `meshgate-bench count --case C` its
//! instructions per packet; `meshgate-bench expiry` times a
//! worker's sweeps while a million flows expire at once. See
//! bench/README.md.

mod callgrind;
mod connections;
mod expiry;
mod paths;
mod pipeline_count;
mod run_all;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "meshgate-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the pipeline alone on fixture frames.
    Pipeline {
        /// new, established or reply.
        #[arg(long)]
        case: String,
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
    },
    /// Instructions per packet of each CASE, counted by callgrind as
    /// `bench/run` and the guard count them (`bench/callgrind.rs`).
    Count {
        /// new, established, reply, established6 or reply6.
        #[arg(long, required = true)]
        case: Vec<String>,
    },
    /// One path, one load: for profiling and for trying a change.
    Trial {
        /// kernel, ceiling, ceiling_vxlan (the reflector, its frames put in
        /// VXLAN as meshgate's are) or meshgate.
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 1000)]
        flows: u32,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Offered packets per second.
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// AF_XDP paths sleep when idle (as in the CPU phase) instead of spinning.
        #[arg(long)]
        interrupt: bool,
        /// Trials in a row on the same setup.
        #[arg(long, default_value_t = 3)]
        repeat: u32,
        /// IPv6 clients (UDP, meshgate only; --size at least 82).
        #[arg(long)]
        ipv6: bool,
        /// Every packet a new flow (a client address and port used once).
        #[arg(long)]
        new_flows: bool,
        /// TCP connections: SYN, the generator's SYN-ACK as the task, and
        /// a close both ways; rates count completed connections.
        #[arg(long)]
        handshakes: bool,
        /// Tasks of the service (198.18.128.4 on), for every path.
        #[arg(long, default_value_t = 3)]
        tasks: usize,
        /// A meshgate setting for this trial, TABLE.KEY=VALUE in TOML
        /// (node.batch_size=16, control.stats_interval=3600); repeats.
        #[arg(long = "set", value_name = "TABLE.KEY=VALUE")]
        settings: Vec<String>,
    },
    /// New UDP flows per second through the kernel path, the reflector
    /// and meshgate, and CPU per new flow (the phase of `run`, alone).
    Connections {
        /// One round, short trials.
        #[arg(long)]
        quick: bool,
        /// Also write the JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The whole benchmark.
    Run {
        /// 1 000 flows, 64-byte frames, short trials.
        #[arg(long)]
        quick: bool,
        /// Print one JSON object on standard output (else a table).
        #[arg(long)]
        json: bool,
        /// Also write the JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Skip the one-million-flow memory measurement.
        #[arg(long)]
        no_memory: bool,
        /// Skip the callgrind instruction counts.
        #[arg(long)]
        no_callgrind: bool,
    },
    /// Print the table of a saved result (bench/results/*.json).
    Table { file: PathBuf },
    /// A worker's table of FLOWS flows expiring at once, swept as a busy
    /// and as an idle worker sweeps: the longest sweep call, and that
    /// every slot and SNAT port comes back.
    Expiry {
        #[arg(long, default_value_t = 1_000_000)]
        flows: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Pipeline { case, iterations } => {
            let ns = pipeline_count::run(&case, iterations)?;
            println!("{case}: {iterations} packets, {ns:.1} ns/packet");
            Ok(())
        }
        Cmd::Trial {
            path,
            flows,
            size,
            rate,
            seconds,
            interrupt,
            repeat,
            ipv6,
            new_flows,
            handshakes,
            tasks,
            settings,
        } => {
            let kind = match path.as_str() {
                "kernel" => paths::PathKind::Kernel,
                "ceiling" => paths::PathKind::Ceiling,
                "ceiling_vxlan" | "ceiling-vxlan" => paths::PathKind::CeilingVxlan,
                "meshgate" => paths::PathKind::Meshgate,
                o => {
                    anyhow::bail!("`{o}` is not a path (kernel, ceiling, ceiling_vxlan, meshgate)")
                }
            };
            let bins = bins()?;
            let lab = paths::BenchLab::build()?;
            let _running = paths::start(
                &lab,
                &bins,
                kind,
                interrupt,
                &settings.join("\n"),
                &paths::many_tasks(tasks),
            )?;
            for _ in 0..repeat {
                let t = paths::trial(
                    &lab,
                    &bins,
                    paths::Load {
                        flows,
                        size,
                        rate,
                        seconds,
                        count: None,
                        sleep: interrupt,
                        v6: ipv6,
                        new_flows,
                        handshakes,
                    },
                )?;
                println!("{}", serde_json::to_string(&t)?);
                if kind == paths::PathKind::Meshgate {
                    // Where meshgate saw losses: its own counters (the
                    // stats file is rewritten every second).
                    std::thread::sleep(std::time::Duration::from_millis(1200));
                    let st = paths::meshgate_stats(&lab);
                    eprintln!(
                        "meshgate: drops {} xsk {} batch_latency_ns {} snapshot generation {}",
                        st["drops"], st["xsk"], st["batch_latency_ns"], st["generation"]
                    );
                }
            }
            Ok(())
        }
        Cmd::Run {
            quick,
            json,
            out,
            no_memory,
            no_callgrind,
        } => {
            let opts = run_all::Opts {
                quick,
                bins: bins()?,
                memory: !no_memory,
                callgrind: (!no_callgrind).then(std::env::current_exe).transpose()?,
            };
            let v = run_all::run(&opts)?;
            // A run whose CPU rounds disagree is kept beside the results
            // file, never in its place: its ratios are noise.
            let noisy = v["summary"]["cpu_not_meaningful"]
                .as_str()
                .map(str::to_string);
            if let Some(p) = &out {
                let to = match &noisy {
                    None => p.clone(),
                    Some(_) => p.with_extension("rejected.json"),
                };
                paths::write_json(&to, &v)?;
                if let Some(why) = &noisy {
                    eprintln!(
                        "[bench] {} left as it was; this run is in {}: {why}",
                        p.display(),
                        to.display()
                    );
                }
            }
            if json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                print!("{}", run_all::table(&v));
            }
            if noisy.is_some() {
                std::process::exit(3);
            }
            Ok(())
        }
        Cmd::Connections { quick, out } => {
            let lab = paths::BenchLab::build()?;
            let v = connections::run(&lab, &bins()?, quick)?;
            if let Some(p) = &out {
                paths::write_json(p, &v)?;
            }
            print!("{}", connections::table(&v));
            Ok(())
        }
        Cmd::Count { case } => {
            let counted = callgrind::count(&std::env::current_exe()?, &case)?;
            for (c, n) in case.iter().zip(counted) {
                println!("{c} {n}");
            }
            Ok(())
        }
        Cmd::Expiry { flows } => {
            println!("{}", serde_json::to_string_pretty(&expiry::run(flows)?)?);
            Ok(())
        }
        Cmd::Table { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            print!("{}", run_all::table(&serde_json::from_str(&text)?));
            Ok(())
        }
    }
}

/// meshgate and meshgate-pktgen, next to this binary.
fn bins() -> anyhow::Result<paths::Bins> {
    let dir = std::env::current_exe()?
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    Ok(paths::Bins {
        meshgate: dir.join("meshgate"),
        pktgen: dir.join("meshgate-pktgen"),
    })
}
