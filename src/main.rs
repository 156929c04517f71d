//! The `meshgate` command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use meshgate::config::{
    ClientIp, Config, ConfigSource, DEFAULT_CONTROL_SOCKET, OutlierDetection, Scheduler,
};
use meshgate::runtime::{self, RunOptions};

mod cli;

#[derive(Parser)]
#[command(
    name = "meshgate",
    version,
    about = "Kernel-bypass (AF_XDP) ingress routing mesh for Docker Swarm published ports"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log level of `run`: error, warn, info, debug, trace or off (default: RUST_LOG, else info).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<log::LevelFilter>,
}

/// meshgate's log lines: `meshgate: MESSAGE` (`meshgate: warning: …` and
/// so on above info), on standard output, where the summary lines and the
/// client commands' output go too; systemd's journal takes it from there.
struct Logger;

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        use std::io::Write;
        let tag = match r.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            log::Level::Info => "",
            log::Level::Debug => "debug: ",
            log::Level::Trace => "trace: ",
        };
        // One write per line, so that lines from several threads never mix.
        let line = format!("meshgate: {tag}{}\n", r.args());
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}

/// `--log-level`, else `RUST_LOG` (a plain level), else info.
fn init_logging(flag: Option<log::LevelFilter>) -> Result<()> {
    let level = match flag {
        Some(l) => l,
        None => match std::env::var("RUST_LOG") {
            Ok(v) => v.trim().parse().with_context(|| {
                format!("RUST_LOG={v:?} is not a level (error, warn, info, debug, trace, off)")
            })?,
            Err(_) => log::LevelFilter::Info,
        },
    };
    log::set_logger(&Logger).context("installing the logger")?;
    log::set_max_level(level);
    Ok(())
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the forwarder; needs --config FILE or --swarm [SOCKET] (or both).
    #[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["config", "swarm"])))]
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Read services and tasks from Docker Swarm through this node's Engine API socket (a manager's or a worker's).
        #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = meshgate::config::DEFAULT_DOCKER_SOCKET)]
        swarm: Option<String>,
        /// The ingress NIC, with --swarm and no --config (default: the interface that holds the swarm's node address).
        #[arg(long)]
        interface: Option<String>,
        /// Control socket to serve (default: control.socket of the file, else /run/meshgate/control.sock).
        #[arg(long)]
        control: Option<PathBuf>,
        /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<f64>,
        /// Write statistics as JSON to this file at every summary and on exit.
        #[arg(long)]
        stats_file: Option<PathBuf>,
        /// Take over from the meshgate serving the control socket, with its flows and without dropping a connection (an upgrade, a restart).
        #[arg(long)]
        takeover: bool,
        /// Serve the status page, /status.json and /metrics on ADDR:PORT (over the file's control.metrics); read-only, without authentication: never on an address that faces the internet.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file; exits non-zero with a precise message on any mistake.
    Check {
        /// Configuration file (TOML) to validate.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Services, their tasks, and changes to them.
    Service {
        #[command(subcommand)]
        cmd: ServiceCmd,
        /// The running meshgate's control socket.
        #[arg(long, global = true, default_value = DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// The balancing table in the shape of `ipvsadm -ln`.
    Ipvs {
        /// The running meshgate's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// Packets, bytes, flows and drops per service and task, and batch latency.
    Stats {
        /// Print the statistics as JSON (what `--stats-file` writes).
        #[arg(long)]
        json: bool,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
        /// The running meshgate's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// Writes the man pages (meshgate.1, meshgate-SUBCOMMAND.1) and the
    /// bash, zsh and fish completions into a directory (for packagers:
    /// tools/package).
    #[command(hide = true)]
    GenerateDocs {
        #[arg(long)]
        out: PathBuf,
    },
    /// What the status page shows, as JSON (the page reads the same from
    /// `GET /status.json` on the `control.metrics` listener).
    Status {
        /// The running meshgate's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// Re-read the configuration file of a running meshgate (as SIGHUP does).
    Reload {
        /// The running meshgate's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        control: PathBuf,
    },
    /// On a task's node without Docker (file mode): install the return
    /// paths of this node's tasks of services with client_ip = "preserve",
    /// announce them to the ingress nodes every second, and remove them on
    /// SIGTERM or SIGINT. One per node. In swarm mode `meshgate run` does
    /// this for every local task.
    ReturnPath {
        /// A task: ADDRESS@NETNS, its address on the ingress network and
        /// its network namespace (such as /run/netns/NAME); repeatable.
        #[arg(long, required = true)]
        task: Vec<String>,
        /// An ingress node's sandbox address (its MAC is 02:42 + the
        /// address, as Docker makes it); repeatable.
        #[arg(long, required = true)]
        sandbox: Vec<std::net::Ipv4Addr>,
        /// This node's address: announcements leave from it.
        #[arg(long)]
        node: std::net::Ipv4Addr,
        /// A UDP target port the tasks serve for preserving services: their
        /// answers get the task's ingress address as source even from a
        /// socket bound to the wildcard address; repeatable.
        #[arg(long = "udp-port")]
        udp_port: Vec<u16>,
        /// An ingress node's address[:port] (port: node.announce_port, 7949
        /// by default); repeatable.
        #[arg(long = "announce-to", required = true)]
        announce_to: Vec<String>,
        /// The file of the key that signs announcements (the ingress
        /// nodes' node.announce_key); readable by its owner only.
        #[arg(long = "announce-key")]
        announce_key: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum ServiceCmd {
    /// List services (like `docker service ls`).
    Ls,
    /// List a service's tasks (like `docker service ps`).
    Ps {
        /// The service's name.
        name: String,
    },
    /// Change a service: add or remove tasks, set weights, publish ports.
    Update {
        /// The service's name.
        name: String,
        /// Add a task: ADDRESS@NODE[,mac=MAC][,weight=W]
        #[arg(long = "task-add")]
        task_add: Vec<String>,
        /// Remove a task by address; its flows end at once.
        #[arg(long = "task-rm")]
        task_rm: Vec<String>,
        /// Set a weight: ADDRESS=W (0 drains the task).
        #[arg(long)]
        weight: Vec<String>,
        /// Publish a port: PUBLISHED:TARGET[/tcp|/udp]
        #[arg(long = "publish-add")]
        publish_add: Vec<String>,
        /// Unpublish a port: PUBLISHED[/tcp|/udp]
        #[arg(long = "publish-rm")]
        publish_rm: Vec<String>,
        /// rr, wrr, lc or maglev.
        #[arg(long)]
        scheduler: Option<String>,
    },
    /// Create a service.
    Create {
        name: String,
        /// PUBLISHED:TARGET[/tcp|/udp], repeatable.
        #[arg(long, required = true)]
        publish: Vec<String>,
        /// ADDRESS@NODE[,mac=MAC][,weight=W], repeatable.
        #[arg(long)]
        task: Vec<String>,
        #[arg(long, default_value = "rr")]
        scheduler: String,
        /// `preserve`: tasks see the client's address and port (where
        /// their node has set up the return path); `snat`: the sandbox's.
        #[arg(long, default_value = "snat")]
        client_ip: String,
        /// `off`: no passive health checks of the tasks (`on`: tasks that
        /// refuse or leave new connections unanswered get none for a while).
        #[arg(long, default_value = "on")]
        outlier_detection: String,
    },
    /// Remove a service; its ports close and its flows end.
    Rm { name: String },
}

fn client_ip(s: &str) -> Result<ClientIp> {
    Ok(match s {
        "snat" => ClientIp::Snat,
        "preserve" => ClientIp::Preserve,
        o => anyhow::bail!("`{o}` is not a client-IP mode (snat, preserve)"),
    })
}

fn outlier_detection(s: &str) -> Result<OutlierDetection> {
    Ok(match s {
        "on" => OutlierDetection::On,
        "off" => OutlierDetection::Off,
        o => anyhow::bail!("`{o}` is not an outlier-detection mode (on, off)"),
    })
}

fn scheduler(s: &str) -> Result<Scheduler> {
    Ok(match s {
        "rr" => Scheduler::Rr,
        "wrr" => Scheduler::Wrr,
        "lc" => Scheduler::Lc,
        "maglev" => Scheduler::Maglev,
        o => anyhow::bail!("`{o}` is not a scheduler (rr, wrr, lc, maglev)"),
    })
}

/// `meshgate return-path`: this node's tasks' return paths, until a signal.
fn return_path(
    tasks: &[String],
    sandboxes: Vec<std::net::Ipv4Addr>,
    node: std::net::Ipv4Addr,
    udp_ports: &[u16],
    announce_to: &[String],
    announce_key: &std::path::Path,
) -> Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let targets = announce_to
        .iter()
        .map(|t| {
            t.parse::<std::net::SocketAddr>().or_else(|_| {
                t.parse::<std::net::Ipv4Addr>()
                    .map(|a| (a, meshgate::announce::DEFAULT_PORT).into())
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .context("--announce-to takes ADDRESS or ADDRESS:PORT")?;
    let ingress: std::collections::BTreeSet<_> = sandboxes
        .into_iter()
        .map(meshgate::return_path::IngressNode::docker)
        .collect();
    let plans = tasks
        .iter()
        .map(|t| {
            let (addr, netns) = t
                .split_once('@')
                .with_context(|| format!("--task {t}: expected ADDRESS@NETNS"))?;
            Ok(meshgate::return_path::Plan {
                netns: netns.into(),
                task: addr
                    .parse()
                    .with_context(|| format!("--task {t}: `{addr}` is not an IPv4 address"))?,
                ingress: ingress.clone(),
                udp_ports: udp_ports.iter().copied().collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Refuse at once what cannot work, rather than announce nothing.
    for p in &plans {
        meshgate::return_path::install(p)
            .with_context(|| format!("the return path of task {}", p.task))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let keys = meshgate::announce::Keys::load(announce_key).map_err(anyhow::Error::msg)?;
    let mut agent = runtime::swarm::agent::Agent::new(node, keys)
        .with_context(|| format!("sending announcements from {node}"))?;
    while !stop.load(Ordering::Relaxed) {
        agent.reconcile(plans.clone());
        agent.announce(&targets);
        let round = std::time::Instant::now();
        while round.elapsed() < meshgate::announce::INTERVAL && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    agent.stop(&targets);
    Ok(())
}

/// Man pages and shell completions, generated from the command line's
/// own definition so that they cannot drift from it.
fn generate_docs(out: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    std::fs::create_dir_all(&comp).with_context(|| format!("creating {}", comp.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages into {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "meshgate", &comp)
            .with_context(|| format!("writing {shell} completions into {}", comp.display()))?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("meshgate: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_level)?;
    match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Run {
            config,
            swarm,
            interface,
            control,
            duration,
            stats_file,
            takeover,
            metrics,
        } => run(
            ConfigSource {
                file: config,
                swarm,
                interface,
                metrics,
            },
            control,
            duration,
            stats_file,
            takeover,
        ),
        Cmd::ReturnPath {
            task,
            sandbox,
            node,
            udp_port,
            announce_to,
            announce_key,
        } => return_path(&task, sandbox, node, &udp_port, &announce_to, &announce_key),
        Cmd::Ipvs { control } => cli::ipvs(&control),
        Cmd::Stats {
            json,
            watch,
            control,
        } => cli::stats(&control, json, watch),
        Cmd::Status { control } => cli::status(&control),
        Cmd::GenerateDocs { out } => generate_docs(&out),
        Cmd::Reload { control } => cli::reload(&control),
        Cmd::Service { cmd, control } => service(cmd, &control),
    }
}

/// `meshgate check`: validates the file and, with `[swarm]`, reads what
/// `run` would start with.
fn check(config: &std::path::Path) -> Result<()> {
    let mut cfg = Config::load_with(config, &mut meshgate::docker::discover)?;
    if let Some(sw) = &cfg.swarm {
        cfg.services = meshgate::runtime::swarm::follow::read_once(sw, &cfg.ingress)
            .context("reading the swarm's services")?
            .0
            .services;
    }
    let tasks: usize = cfg.services.iter().map(|s| s.tasks.len()).sum();
    // The key `run` would sign announcements with: a mistake in it stops
    // `run`, so it stops `check` first.
    let key = meshgate::announce::key_file(cfg.node.announce_key.as_deref(), cfg.swarm.is_some());
    let announcements = match (&key, cfg.node.announce_port) {
        (_, 0) => "announcements off (node.announce_port = 0)".to_string(),
        (None, _) => "announcements off (no key: every task gets SNAT)".to_string(),
        (Some(path), _) => {
            meshgate::announce::Keys::load(path).map_err(anyhow::Error::msg)?;
            format!("announcements signed with {}", path.display())
        }
    };
    println!(
        "{}: ok: interface {}, node {}, ingress {} (VNI {}, port {}), {} service(s), {} task(s), {announcements}",
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

/// `meshgate run`: the configuration from the file and the flags, then
/// the forwarder until a signal.
fn run(
    mut source: ConfigSource,
    control: Option<std::path::PathBuf>,
    duration: Option<f64>,
    stats_file: Option<std::path::PathBuf>,
    takeover: bool,
) -> Result<()> {
    if let (None, None, Some(socket)) = (&source.interface, &source.file, &source.swarm) {
        source.interface = Some(cli::swarm_interface(socket)?);
    }
    let cfg = source.load_with(&mut meshgate::docker::discover)?;
    let control = control.unwrap_or_else(|| cfg.control.socket.clone());
    let every = Duration::from_secs_f64(cfg.control.stats_interval);
    let what = match &source.file {
        Some(c) => format!("running {}", c.display()),
        None => "running on the swarm".to_string(),
    };
    runtime::run(
        cfg,
        RunOptions {
            source: Some(source),
            summary_every: Some(every),
            duration: duration.map(Duration::from_secs_f64),
            control_socket: Some(control),
            stats_file,
            takeover,
        },
    )
    .context(what)
}

/// `meshgate service …` against the control socket `control`.
fn service(cmd: ServiceCmd, control: &std::path::Path) -> Result<()> {
    match cmd {
        ServiceCmd::Ls => cli::service_ls(control),
        ServiceCmd::Ps { name } => cli::service_ps(control, &name),
        ServiceCmd::Update {
            name,
            task_add,
            task_rm,
            weight,
            publish_add,
            publish_rm,
            scheduler: sch,
        } => cli::service_update(
            control,
            &name,
            cli::UpdateArgs {
                task_add,
                task_rm,
                weight,
                publish_add,
                publish_rm,
                scheduler: sch.as_deref().map(scheduler).transpose()?,
            },
        ),
        ServiceCmd::Create {
            name,
            publish,
            task,
            scheduler: sch,
            client_ip: mode,
            outlier_detection: od,
        } => cli::service_create(
            control,
            &name,
            &publish,
            &task,
            scheduler(&sch)?,
            client_ip(&mode)?,
            outlier_detection(&od)?,
        ),
        ServiceCmd::Rm { name } => cli::service_rm(control, &name),
    }
}
