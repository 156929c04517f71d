//! The `meshgate` command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use meshgate::control::config::Config;
use meshgate::runtime::{self, RunOptions};

mod demo;

#[derive(Parser)]
#[command(
    name = "meshgate",
    version,
    about = "Kernel-bypass (AF_XDP) ingress routing mesh for Docker Swarm published ports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the forwarder.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<f64>,
        /// Write statistics as JSON to this file at every summary and on exit.
        #[arg(long)]
        stats_file: Option<PathBuf>,
    },
    /// Validate a configuration file; exits non-zero with a precise message on any mistake.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Build the built-in namespace lab, run meshgate on it, send requests through it and show the counters.
    Demo {
        /// TCP connections to make.
        #[arg(long, default_value_t = 30)]
        connections: u32,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("meshgate: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => {
            let cfg = Config::load(&config)?;
            let tasks: usize = cfg.services.iter().map(|s| s.tasks.len()).sum();
            println!(
                "{}: ok: interface {}, node {}, ingress {} (VNI {}, port {}), {} service(s), {} task(s)",
                config.display(),
                cfg.node.interface,
                cfg.node.address,
                cfg.ingress.address,
                cfg.ingress.vni,
                cfg.ingress.port,
                cfg.services.len(),
                tasks
            );
            Ok(())
        }
        Cmd::Run {
            config,
            duration,
            stats_file,
        } => {
            let cfg = Config::load(&config)?;
            let every = Duration::from_secs_f64(cfg.control.stats_interval);
            runtime::run(
                cfg,
                RunOptions {
                    config_path: Some(config.clone()),
                    summary_every: Some(every),
                    duration: duration.map(Duration::from_secs_f64),
                    control_socket: None,
                    stats_file,
                },
            )
            .with_context(|| format!("running {}", config.display()))
        }
        Cmd::Demo { connections } => demo::run(connections),
    }
}
