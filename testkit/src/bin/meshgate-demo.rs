//! `meshgate-demo`: the built-in lab, end to end, in one command (what
//! `tools/demo` runs). It starts the `meshgate` binary that sits beside it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

use meshgate_testkit::lab::{self, Lab, LabOptions};

/// Build the built-in namespace lab, run meshgate on it, send requests
/// through it and show the counters.
#[derive(Parser)]
#[command(name = "meshgate-demo", version)]
struct Args {
    /// TCP connections to make.
    #[arg(long, default_value_t = 30)]
    connections: u32,
    /// Keep the lab and meshgate running until Ctrl-C, to try meshgate's
    /// client subcommands.
    #[arg(long)]
    keep: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    run(args.connections, args.keep)
}

fn run(connections: u32, keep: bool) -> Result<()> {
    println!(
        "== building the lab: client, ingress node (meshgate on in0), switch, two task nodes with kernel VXLAN, three tasks"
    );
    let lab =
        Lab::build(LabOptions::default()).context("building the namespace lab (run as root)")?;
    let _servers = lab.start_servers()?;
    let dir = std::env::temp_dir().join(format!("{}-demo", lab.prefix));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("lab.toml");
    std::fs::write(&cfg, lab.config_toml("[control]\nstats_interval = 1\n"))?;
    println!(
        "== configuration ({}):\n{}",
        cfg.display(),
        std::fs::read_to_string(&cfg)?
    );

    // With --keep, the default control socket, so that the client
    // commands work as docs/operating.md shows them, without --control.
    let sock = if keep {
        std::path::PathBuf::from(meshgate::config::DEFAULT_CONTROL_SOCKET)
    } else {
        dir.join("control.sock")
    };
    let exe = std::env::current_exe()?.with_file_name("meshgate");
    if !exe.exists() {
        bail!(
            "{} is missing: build it first (cargo build --release --workspace --bins, or tools/demo)",
            exe.display()
        );
    }
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ingress()])
        .arg(&exe)
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--control")
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting meshgate run")?;
    let stdout = child.stdout.take().expect("piped");
    let printer = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("   [meshgate] {line}");
        }
    });
    let t0 = Instant::now();
    while !lab::xdp_attached(&lab.ingress(), "in0")? {
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            bail!("meshgate did not attach its XDP program within 10 s");
        }
        if let Some(st) = child.try_wait()? {
            bail!("meshgate exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let target: SocketAddr = (lab::INGRESS_ADDR, 8080).into();
    println!("== {connections} TCP connections from the client to {target} (the published port)");
    let answers = lab.in_ns(&lab.client(), move || {
        (0..connections)
            .map(|_| lab::tcp_request(target, Duration::from_secs(3)))
            .collect::<Vec<_>>()
    })?;
    let mut per_task: BTreeMap<String, u32> = BTreeMap::new();
    for (i, a) in answers.iter().enumerate() {
        match a {
            Ok(line) => {
                if i < 6 {
                    println!("   connection {:>2}: {line}", i + 1);
                }
                *per_task
                    .entry(line.split_whitespace().next().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            Err(e) => println!("   connection {:>2}: FAILED: {e}", i + 1),
        }
    }
    println!("   ...");
    println!(
        "   spread over tasks: {per_task:?} (the tasks see the sandbox address 198.18.128.2 as the source, as in Swarm)"
    );
    let udp = lab.in_ns(&lab.client(), move || {
        lab::udp_request(target, Duration::from_secs(3))
    })?;
    println!(
        "== one UDP datagram to {target}: {}",
        udp.as_deref().unwrap_or_else(|e| panic!("UDP failed: {e}"))
    );
    let ping = lab
        .exec(&lab.client(), &["ping", "-c", "1", "-W", "2", "198.18.0.2"])
        .map(|_| "answered by the kernel (XDP passed it)")
        .unwrap_or("no answer");
    println!("== ping 198.18.0.2 from the client: {ping}");

    std::thread::sleep(Duration::from_millis(1200));
    if keep {
        println!(
            "== the lab stays up; meshgate serves {}; in another terminal, try:",
            sock.display()
        );
        // The binary it started: nothing has put it on the PATH.
        let mg = exe.display();
        println!("   sudo {mg} service ls");
        println!("   sudo {mg} service ps web");
        println!("   sudo {mg} ipvs");
        println!("   sudo {mg} stats --watch");
        println!(
            "   sudo ip netns exec {} bash -c 'exec 3<>/dev/tcp/198.18.0.2/8080; echo hello >&3; head -1 <&3'",
            lab.client()
        );
        println!(
            "      (the client, 198.18.0.1, asks the published port: a task answers with its name and the address it saw)"
        );
        println!("== press Ctrl-C to stop meshgate and remove the lab");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && child.try_wait()?.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("== stopping meshgate (SIGINT)");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    let st = child.wait()?;
    let _ = printer.join();
    let attached = lab::xdp_attached(&lab.ingress(), "in0")?;
    println!("== meshgate exited ({st}); XDP program still attached: {attached}");
    let _ = std::fs::remove_dir_all(&dir);
    drop(lab);
    println!("== lab removed");
    if answers.iter().any(|a| a.is_err()) || attached || !st.success() {
        bail!("the demo did not go as expected");
    }
    Ok(())
}
