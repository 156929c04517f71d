//! A forwarder's start: the XDP program loaded and its maps filled, the
//! sockets opened, the workers spawned and pinned, the control thread's
//! state, the journals and the sandbox's socket; and its end (a stop or a
//! hand-over to a successor). The process around it is `runtime::run`.
//!
//! Startup order matters: the program's socket map is filled before the
//! program is attached, and the first snapshot reaches the workers before
//! any published port is in the program's port map, so no frame reaches a
//! worker that cannot handle it; the port map is full before the program
//! is attached, so that a program replacing another's (a takeover, a
//! restart after a crash) never passes a published port to the kernel.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::queue::ArrayQueue;

use crate::announce::{Keys, key_file};
use crate::config::{Config, XdpMode};
use crate::dataplane::Pipeline;
use crate::dataplane::handover::RestoreReport;
use crate::dataplane::tables::{Neighbours, Registry, Snapshot};
use crate::netlink::{LinkFacts, Rtnl, Watcher};
use crate::xdp::bpf::{action, xdp_flags};
use crate::xdp::program::{IngressParams, IngressProgram};
use crate::xdp::umem::KERNEL_HEADROOM;
use crate::xdp::{BindMode, Xsk, XskConfig};

use super::control::Control;
use super::swarm::agent;
use super::takeover;
use super::worker::{Exchange, SandboxPort, Worker, WorkerShared};
use super::{FRAME_SIZE, RunError, RunOptions};

/// Everything that runs; dropping it stops the workers and detaches XDP.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    pub control: Control,
    /// The ingress sandbox's capture program and its place (detached when
    /// dropped), while its socket is in use.
    sandbox_xdp: Option<(crate::xdp::program::CaptureProgram, super::attach::XdpPlace)>,
    /// The return paths of this node's tasks (swarm mode); stopped first.
    agent: Option<agent::SwarmAgent>,
}

impl Forwarder {
    /// Sets up the data plane for `cfg` and starts the workers.
    pub fn start(
        mut cfg: Config,
        opts: &RunOptions,
        stop: Arc<AtomicBool>,
    ) -> Result<Forwarder, RunError> {
        let mut rtnl = Rtnl::new()?;
        let link = rtnl.link(&cfg.node.interface)?;
        let queues = served_queues(&cfg, &link)?;
        swarm_address6(&mut cfg, &mut rtnl, &link)?;
        // Loaded before a takeover's request: the verifier's time is not
        // spent while no socket is bound.
        let program = load_program(&cfg, &link, &queues)?;
        let takeover_from = takeover_source(opts)?;
        // Tasks on this node are reached through the ingress sandbox,
        // opened first: whether it opened decides whether the swarm's
        // tasks on this node are in the tables. In a takeover the old
        // process holds the sandbox's socket until it hands over; the new
        // one counts on opening it as the old one did.
        let sandbox = match takeover_from {
            None => open_sandbox(&mut cfg)?,
            Some(_) => None,
        };
        let (swarm_notes, swarm_memory) = read_swarm(&mut cfg)?;

        let (watcher, registry, snapshot) = first_snapshot(&mut rtnl, &link, &cfg)?;
        // The flow tables are allocated and touched up front (most of a
        // second for the default flows.max), before a takeover's request.
        let pipelines = new_pipelines(&cfg, &snapshot, queues.len());

        let (sandbox, successor) = match takeover_from {
            None => (sandbox, None),
            Some(path) => {
                let successor = request_takeover(path, queues.len(), &cfg)?;
                (open_sandbox(&mut cfg)?, Some(successor))
            }
        };
        let carried = carried_flows(opts, successor.as_ref(), queues.len());

        let xsk = open_sockets(&cfg, &program, queues)?;

        let n = xsk.ports.len();
        let exchange = new_exchange(n, cfg.node.frames_per_queue, sandbox.is_some())?;
        let (sandbox_port, sandbox_xdp) = sandbox
            .map(|sb| sandbox_parts(sb, cfg.node.batch_size as usize))
            .unzip();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let worker_cores = worker_cores(&cfg, &cores, n);
        let Xsk {
            umem,
            ports,
            initial,
            zero_copy,
        } = xsk;
        let (wiring, ends) = WorkerWiring::new(umem, &snapshot, &exchange, &stop);
        let (command_txs, handles, restored) = spawn_workers(
            &cfg,
            ports.into_iter().zip(initial).zip(pipelines).collect(),
            &wiring,
            &worker_cores,
            sandbox_port,
            carried,
            opts.control_socket.as_deref(),
        )?;

        pin_off_workers(&cores, &worker_cores);
        publish_ports(&cfg, &program)?;
        let xdp = attach_ingress(&cfg, &link, &program)?;
        let mut control = Control::new(super::control::ControlParts {
            cfg,
            source: opts.source.clone(),
            link,
            registry,
            snapshot,
            program,
            xdp,
            workers: command_txs,
            exchange,
            reports: ends.reports,
            garbage: ends.garbage,
            resolve_q: ends.resolve_q,
            rtnl,
            watcher,
            zero_copy,
        });
        report_carried(&mut control, successor, restored);
        let agent = begin_control(&mut control, swarm_notes, swarm_memory)?;
        Ok(Forwarder {
            stop,
            workers: handles,
            control,
            sandbox_xdp,
            agent,
        })
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Index of a worker that has stopped (panicked), if any.
    pub fn dead_worker(&self) -> Option<usize> {
        self.workers.iter().position(|h| h.is_finished())
    }

    /// Stops the workers and takes their last reports.
    fn join_workers(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.control.wake_workers();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        self.control.drain_reports();
    }

    /// After a takeover: the workers have stopped and closed their
    /// sockets; the program, now the successor's, stays attached and the
    /// return paths stay in place.
    pub fn hand_over(mut self) -> Control {
        if let Some(a) = self.agent.take() {
            a.hand_over();
        }
        self.control.hand_over_xdp();
        self.join_workers();
        if let Some((_, place)) = self.sandbox_xdp.take() {
            place.hand_over();
        }
        self.control
    }

    /// After a takeover that failed once the workers had handed over:
    /// detaches XDP, and leaves the return paths and the journals to the
    /// process that starts next, as a crash would.
    pub fn abandon(mut self) -> Control {
        if let Some(a) = self.agent.take() {
            a.hand_over();
        }
        self.control.stop_api();
        self.join_workers();
        self.control.detach();
        self.sandbox_xdp = None;
        self.control
    }

    /// Stops the workers, collects their last reports and detaches XDP.
    pub fn shutdown(mut self) -> Control {
        // First: the ingress nodes hear that this node's tasks have no
        // return path any more while this node still forwards.
        self.agent = None;
        self.control.stop_api();
        self.join_workers();
        self.control.detach();
        self.sandbox_xdp = None;
        self.control
    }
}

/// What every worker shares with the others and with the control thread.
struct WorkerWiring {
    umem: Arc<crate::xdp::Umem>,
    snapshot: Arc<Snapshot>,
    exchange: Arc<Exchange>,
    resolve_q: Arc<ArrayQueue<Ipv4Addr>>,
    reports: crossbeam::channel::Sender<super::worker::WorkerReport>,
    garbage: crossbeam::channel::Sender<Arc<Snapshot>>,
    stop: Arc<AtomicBool>,
}

/// The control thread's ends of the workers' queues.
struct ControlEnds {
    resolve_q: Arc<ArrayQueue<Ipv4Addr>>,
    reports: crossbeam::channel::Receiver<super::worker::WorkerReport>,
    garbage: crossbeam::channel::Receiver<Arc<Snapshot>>,
}

impl WorkerWiring {
    /// The workers' shared parts around the first snapshot, and the
    /// control thread's ends of their queues.
    fn new(
        umem: Arc<crate::xdp::Umem>,
        snapshot: &Arc<Snapshot>,
        exchange: &Arc<Exchange>,
        stop: &Arc<AtomicBool>,
    ) -> (WorkerWiring, ControlEnds) {
        // Bounded: a full queue means the control thread has work queued
        // already, and the next packet asks again.
        let resolve_q = Arc::new(ArrayQueue::new(1024));
        let (reports, report_rx) = crossbeam::channel::unbounded();
        let (garbage, garbage_rx) = crossbeam::channel::unbounded();
        let wiring = WorkerWiring {
            umem,
            snapshot: snapshot.clone(),
            exchange: exchange.clone(),
            resolve_q: resolve_q.clone(),
            reports,
            garbage,
            stop: stop.clone(),
        };
        let ends = ControlEnds {
            resolve_q,
            reports: report_rx,
            garbage: garbage_rx,
        };
        (wiring, ends)
    }
}

/// The workers' command channels and threads, and what became of the
/// flows carried over.
type Workers = (
    Vec<crossbeam::channel::Sender<super::worker::Command>>,
    Vec<JoinHandle<()>>,
    RestoreReport,
);

/// The control thread's first work once the workers run: the published
/// ports into the program, the swarm's threads, the announcements.
fn begin_control(
    control: &mut Control,
    swarm_notes: Vec<String>,
    swarm_memory: crate::docker::swarm::ServiceMemory,
) -> Result<Option<agent::SwarmAgent>, RunError> {
    control.sync_ports()?;
    control
        .follow_swarm(swarm_notes, swarm_memory)
        .map_err(|e| RunError::Setup(format!("starting the swarm threads: {e}")))?;
    start_announcements(control)
}

/// The control socket of the process to take over from, when this one
/// is a takeover (`--takeover` needs one).
fn takeover_source(opts: &RunOptions) -> Result<Option<&std::path::Path>, RunError> {
    match (opts.takeover, &opts.control_socket) {
        (false, _) => Ok(None),
        (true, Some(path)) => Ok(Some(path)),
        (true, None) => Err(RunError::Setup(TAKEOVER_NEEDS_SOCKET.into())),
    }
}

/// Asks the process at `path` to hand its `queues` over.
fn request_takeover(
    path: &std::path::Path,
    queues: usize,
    cfg: &Config,
) -> Result<takeover::Successor, RunError> {
    takeover::Successor::request(path, queues as u16, cfg.flows.snat_ports)
        .map_err(|e| RunError::Setup(e.to_string()))
}

/// The opened sandbox's socket for its worker, and its XDP program and
/// place for the forwarder to keep.
fn sandbox_parts(
    sb: super::sandbox::Sandbox,
    batch: usize,
) -> (
    SandboxPort,
    (crate::xdp::program::CaptureProgram, super::attach::XdpPlace),
) {
    let port = SandboxPort::new(sb.port, sb.umem, sb.frames, batch);
    (port, (sb.program, sb.place))
}

/// The control thread (this one) and its helpers stay off the workers'
/// CPUs: a busy-polling worker preempted for a time slice loses frames.
fn pin_off_workers(
    cores: &[core_affinity::CoreId],
    worker_cores: &[Option<core_affinity::CoreId>],
) {
    if let Some(free) = cores.iter().find(|c| !worker_cores.contains(&Some(**c))) {
        core_affinity::set_for_current(*free);
    }
}

/// Attaches the ingress program to the NIC, in place of one a previous
/// meshgate left there.
fn attach_ingress(
    cfg: &Config,
    link: &LinkFacts,
    program: &IngressProgram,
) -> Result<super::attach::XdpPlace, RunError> {
    let (xdp, previous) = super::attach::XdpPlace::attach(
        Rtnl::new()?,
        link.index,
        &cfg.node.interface,
        attach_flags(cfg.node.xdp_mode),
        &program.prog,
        &[crate::xdp::program::INGRESS_NAME],
    )?;
    if let super::attach::Previous::Meshgate(id) = previous {
        log::info!(
            "replaced the meshgate XDP program (id {id}) left on {} by the previous process",
            cfg.node.interface
        );
    }
    Ok(xdp)
}

/// Starts one pinned worker per socket (with its initial frames); worker
/// 0 also serves the sandbox's socket. Returns their command channels
/// and threads.
fn spawn_workers(
    cfg: &Config,
    sockets: Vec<((crate::xdp::Port, Vec<crate::xdp::FrameToken>), Pipeline)>,
    wiring: &WorkerWiring,
    cores: &[Option<core_affinity::CoreId>],
    mut sandbox: Option<SandboxPort>,
    mut carried: Vec<Option<super::worker::FlowExport>>,
    journals: Option<&std::path::Path>,
) -> Result<Workers, RunError> {
    let mut restored = RestoreReport::default();
    let n = sockets.len();
    let mut command_txs = Vec::new();
    let mut handles = Vec::new();
    for (i, ((port, frames), mut pipeline)) in sockets.into_iter().enumerate() {
        let (ctx, crx) = crossbeam::channel::unbounded();
        command_txs.push(ctx);
        pipeline.set_resolver(wiring.resolve_q.clone());
        if let Some((origin, records)) = carried.get_mut(i).and_then(Option::take) {
            match pipeline.restore_flows(origin, &records) {
                Ok(r) => {
                    restored.restored += r.restored;
                    restored.task_gone += r.task_gone;
                    restored.refused += r.refused;
                }
                Err(e) => log::warn!("worker {i}: flows not carried over: {e}"),
            }
        }
        if let Some(control) = journals {
            open_journal(&mut pipeline, control, i, n, cfg.flows.snat_ports);
        }
        wiring.exchange.shared[i]
            .generation
            .store(wiring.snapshot.generation, Ordering::Release);
        let w = Worker {
            id: i as u16,
            port,
            umem: wiring.umem.clone(),
            pipeline,
            free: frames,
            frames_per_queue: cfg.node.frames_per_queue,
            exchange: wiring.exchange.clone(),
            commands: crx,
            reports: wiring.reports.clone(),
            garbage: wiring.garbage.clone(),
            stop: wiring.stop.clone(),
            batch: cfg.node.batch_size as usize,
            poll: cfg.node.poll,
            report_every: Duration::from_millis(250),
            sandbox: if i == 0 { sandbox.take() } else { None },
            hand_over: None,
        };
        let core = cores[i];
        let h = std::thread::Builder::new()
            .name(format!("mg-worker-{i}"))
            .spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(c);
                }
                w.run();
            })
            .map_err(|e| RunError::Setup(format!("spawning worker {i}: {e}")))?;
        handles.push(h);
    }
    Ok((command_txs, handles, restored))
}

/// Gives worker `i` of `n` a fresh crash journal beside the control socket
/// (after its carried flows are in, which the journal then holds too).
fn open_journal(
    pipeline: &mut Pipeline,
    control: &std::path::Path,
    i: usize,
    n: usize,
    snat_ports: (u16, u16),
) {
    use crate::dataplane::handover::Origin;
    use crate::dataplane::journal::{Journal, journal_len};
    let path = takeover::journal_path(control, i);
    match crate::xdp::shm::SharedFile::create(&path, journal_len(pipeline.flows().capacity())) {
        Ok(mem) => pipeline.set_journal(Box::new(Journal::new(
            mem,
            Origin {
                worker: i as u16,
                workers: n as u16,
                snat_ports,
            },
        ))),
        Err(e) => log::warn!(
            "worker {i}: no flow journal ({}: {e}); its flows will not survive a crash",
            path.display()
        ),
    }
}

/// The keys that sign announcements: `node.announce_key`, else in swarm
/// mode the stack file's Docker secret when there is one. Without one,
/// nothing is announced or believed, and the log says so once.
fn announce_keys(cfg: &Config) -> Result<Option<Keys>, RunError> {
    if cfg.node.announce_port == 0 {
        return Ok(None);
    }
    let Some(path) = key_file(cfg.node.announce_key.as_deref(), cfg.swarm.is_some()) else {
        log::info!(
            "announcements off: no key (node.announce_key, or the Docker secret meshgate_announce_key in swarm mode); every task gets SNAT{} (docs/swarm.md)",
            if cfg.swarm.is_some() {
                ", and a worker takes ports' protocols from DOCKER-INGRESS"
            } else {
                ""
            }
        );
        return Ok(None);
    };
    Keys::load(&path).map(Some).map_err(|e| {
        RunError::Setup(format!(
            "{e} (node.announce_key; it signs the announcements between nodes)"
        ))
    })
}

/// The listener of other nodes' announcements and, in swarm mode, the
/// agent that installs this node's return paths and announces.
fn start_announcements(control: &mut Control) -> Result<Option<agent::SwarmAgent>, RunError> {
    let (cfg_address, cfg_announce_port) =
        (control.cfg.node.address, control.cfg.node.announce_port);
    let keys = announce_keys(&control.cfg)?;
    control.listen_to_peers(keys.clone()).map_err(|e| {
        RunError::Setup(format!(
            "listening for other nodes' announcements on {}:{} (node.announce_port): {e}; choose another port, the same on every node, or 0 to preserve no client address",
            cfg_address, cfg_announce_port
        ))
    })?;
    let (Some(sw), Some(keys)) = (control.cfg.swarm.clone(), keys) else {
        return Ok(None);
    };
    let (tx, rx) = crossbeam::channel::unbounded();
    control.feed_agent(tx);
    agent::SwarmAgent::start(
        agent::SwarmAgentParams {
            docker: sw.socket,
            ingress_network: sw.facts.ingress_network,
            node: cfg_address,
            announce_port: cfg_announce_port,
            keys,
            manager: sw.facts.manager,
            known: control.known_nodes(),
            own_sandbox: (control.cfg.ingress.address, control.cfg.ingress.mac),
            sandbox_macs: control.sandbox_macs(),
        },
        rx,
    )
    .map(Some)
    .map_err(|e| RunError::Setup(format!("starting the return-path agent: {e}")))
}

const TAKEOVER_NEEDS_SOCKET: &str =
    "--takeover needs the running meshgate's control socket (--control)";

/// The kernel's neighbour notifications, the task registry and the first
/// snapshot; neighbours first, so that it can already forward.
fn first_snapshot(
    rtnl: &mut Rtnl,
    link: &LinkFacts,
    cfg: &Config,
) -> Result<(Watcher, Registry, Arc<Snapshot>), RunError> {
    let watcher = Watcher::new()?;
    let neighbours = Arc::new(task_neighbours(rtnl, link, cfg)?);
    let mut registry = Registry::default();
    let snapshot = Arc::new(Snapshot::build(
        &cfg.table_desc(),
        crate::netlink::link_info(cfg.node.checksum, link),
        neighbours,
        &mut registry,
        1,
    ));
    Ok((watcher, registry, snapshot))
}

/// Fills the program's port map and SYN budget before it is attached.
/// The workers have the first snapshot, so the program may hand them every
/// published port from its first frame on; a replacing program must (the
/// old one forwarded them; until its map had them, the kernel would reset
/// their connections).
fn publish_ports(cfg: &Config, program: &IngressProgram) -> Result<(), RunError> {
    program.set_syn_budget(cfg.flows.new_per_second)?;
    for s in &cfg.services {
        for p in &s.publish {
            program.add_port(p.protocol.number(), p.published)?;
        }
    }
    Ok(())
}

/// Ends a takeover (the old process reports its drops and exits) and puts
/// what was carried over into the statistics and the log.
fn report_carried(
    control: &mut Control,
    successor: Option<takeover::Successor>,
    restored: RestoreReport,
) {
    let left_out = restored.task_gone + restored.refused;
    control.stats.takeover.flows_carried = restored.restored as u64;
    control.stats.takeover.flows_left_out = left_out as u64;
    let Some(successor) = successor else {
        if restored.restored + left_out > 0 {
            log::info!(
                "restarted with the flows a previous meshgate left: {} carried over, {left_out} left out",
                restored.restored
            );
        }
        return;
    };
    let (pid, before) = (successor.view.pid, successor.view.takeovers);
    let (started, released) = (successor.started, successor.released);
    let dropped = successor.finish().unwrap_or_else(|e| {
        log::warn!("{e}");
        0
    });
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let t = &mut control.stats.takeover;
    t.takeovers = before + 1;
    t.switch_ms = Some(ms);
    t.switch_dropped = Some(dropped);
    log::info!(
        "took over from meshgate pid {pid} in {ms:.1} ms ({:.1} ms without a socket bound): {} flow(s) carried over, {left_out} left out; {dropped} frame(s) dropped while no socket was bound",
        released.elapsed().as_secs_f64() * 1e3,
        restored.restored,
    );
}

/// One pipeline per worker, with its flow table (its share of
/// `flows.max`).
fn new_pipelines(cfg: &Config, snapshot: &Arc<Snapshot>, n: usize) -> Vec<Pipeline> {
    let max_flows = (cfg.flows.max as usize / n.max(1)).max(16);
    (0..n)
        .map(|i| {
            Pipeline::new(
                snapshot.clone(),
                i as u16,
                n as u16,
                max_flows,
                cfg.flows.snat_ports,
            )
        })
        .collect()
}

/// The flows to start with, per worker: a predecessor's (a takeover), or
/// those a stopped meshgate left beside the control socket. A state that
/// does not validate is discarded with a warning, never half-used.
fn carried_flows(
    opts: &RunOptions,
    successor: Option<&takeover::Successor>,
    workers: usize,
) -> Vec<Option<super::worker::FlowExport>> {
    let mut out = vec![None; workers];
    let files: Vec<PathBuf> = match (successor, &opts.control_socket) {
        (Some(s), Some(path)) => takeover::expected_flow_files(path, workers, &s.view.files),
        (Some(s), None) => s.view.files.clone(),
        (None, Some(path)) => {
            // A crash: each worker's journal. (A handover's files, left by
            // a takeover that did not finish, take precedence: they are
            // the last word of a process that stopped on purpose.)
            for (w, slot) in out.iter_mut().enumerate() {
                match takeover::read_journal(&takeover::journal_path(path, w)) {
                    None => {}
                    Some(Ok((origin, flows))) => *slot = Some((origin, flows)),
                    Some(Err(e)) => log::warn!("discarded a flow journal: {e}"),
                }
            }
            (0..workers)
                .map(|w| takeover::flows_path(path, w))
                .filter(|p| p.exists())
                .collect()
        }
        (None, None) => Vec::new(),
    };
    for f in files {
        match takeover::take_flows(&f) {
            Ok((origin, records)) if (origin.worker as usize) < workers => {
                out[origin.worker as usize] = Some((origin, records));
            }
            Ok((origin, _)) => log::warn!(
                "{}: flows of worker {} of {}; this meshgate runs {workers} worker(s): discarded",
                f.display(),
                origin.worker,
                origin.workers
            ),
            Err(e) => log::warn!("discarded a flow state: {e}"),
        }
    }
    out
}

/// Loads the ingress program (not attached yet).
fn load_program(
    cfg: &Config,
    link: &LinkFacts,
    queues: &[u32],
) -> Result<IngressProgram, RunError> {
    let max_queue = queues.iter().copied().max().unwrap_or(0);
    Ok(IngressProgram::load(&IngressParams {
        node_addr: cfg.node.address,
        node_addr6: cfg.node.address6,
        overlay_addr: cfg.ingress.address,
        overlay_mac: cfg.ingress.mac,
        vni: cfg.ingress.vni,
        vxlan_port: cfg.ingress.port,
        queues: max_queue + 1,
        miss_action: action::DROP,
        ifindex: Some(link.index),
    })?)
}

/// Opens one socket per served queue, registered in the program's socket
/// map.
fn open_sockets(cfg: &Config, program: &IngressProgram, queues: Vec<u32>) -> Result<Xsk, RunError> {
    let xsk = Xsk::open(&XskConfig {
        ifname: cfg.node.interface.clone(),
        queues,
        frames_per_queue: cfg.node.frames_per_queue,
        frame_size: FRAME_SIZE,
        ring_size: ring_size(cfg.node.frames_per_queue),
        mode: BindMode::Auto,
        huge_pages: true,
    })?;
    for p in &xsk.ports {
        program.register_socket(p.queue(), p.raw_fd())?;
    }
    Ok(xsk)
}

/// The queues to serve: `node.queues` or every queue of the interface,
/// once the interface's queues and MTU are known to suit them.
fn served_queues(cfg: &Config, link: &LinkFacts) -> Result<Vec<u32>, RunError> {
    let queues: Vec<u32> = match &cfg.node.queues {
        Some(q) => q.clone(),
        None => (0..link.rx_queues.max(1)).collect(),
    };
    if let Some(&q) = queues.iter().find(|&&q| q >= link.rx_queues.max(1)) {
        return Err(RunError::NoSuchQueue {
            interface: cfg.node.interface.clone(),
            queue: q,
            available: link.rx_queues,
        });
    }
    if KERNEL_HEADROOM + link.mtu as usize + 14 > FRAME_SIZE as usize {
        return Err(RunError::MtuTooLarge {
            interface: cfg.node.interface.clone(),
            mtu: link.mtu,
            frame: FRAME_SIZE,
            headroom: KERNEL_HEADROOM,
        });
    }
    Ok(queues)
}

/// The kernel's neighbour table for `link`, after asking it to resolve the
/// tasks' nodes it lacks and giving ARP half a second; anything still
/// missing resolves later, through the workers' requests.
fn task_neighbours(
    rtnl: &mut Rtnl,
    link: &LinkFacts,
    cfg: &Config,
) -> Result<Neighbours, RunError> {
    let mut neighbours = rtnl.neighbour_table(link.index)?;
    let missing: Vec<Ipv4Addr> = cfg
        .services
        .iter()
        .flat_map(|s| s.tasks.iter().map(|t| t.node))
        .filter(|&n| n != cfg.node.address && neighbours.mac_for(n).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(neighbours);
    }
    for n in &missing {
        let _ = rtnl.resolve(link.index, neighbours.next_hop(*n));
    }
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(25));
        neighbours = rtnl.neighbour_table(link.index)?;
        if missing.iter().all(|n| neighbours.mac_for(*n).is_some()) {
            break;
        }
    }
    Ok(neighbours)
}

/// The queues between `n` workers, and from and to the sandbox's socket,
/// which worker 0 serves when there is one.
fn new_exchange(n: usize, frames_per_queue: u32, sandbox: bool) -> Result<Arc<Exchange>, RunError> {
    let queues = |cap: usize| (0..n).map(|_| Arc::new(ArrayQueue::new(cap))).collect();
    Ok(Arc::new(Exchange {
        handoff: queues(4096),
        returns: queues(frames_per_queue as usize),
        shared: (0..n)
            .map(|_| WorkerShared::new())
            .collect::<Result<_, _>>()
            .map_err(|e| RunError::Setup(format!("eventfd: {e}")))?,
        local: queues(4096),
        to_sandbox: Arc::new(ArrayQueue::new(4096)),
        sandbox_worker: sandbox.then_some(0),
    }))
}

/// Worker i's CPU: node.cpus[i], else CPU i+1 (mod n), because CPU 0
/// usually takes most interrupts and the system's housekeeping.
fn worker_cores(
    cfg: &Config,
    cores: &[core_affinity::CoreId],
    n: usize,
) -> Vec<Option<core_affinity::CoreId>> {
    (0..n)
        .map(|i| match &cfg.node.cpus {
            Some(c) => c.get(i).copied().map(|id| core_affinity::CoreId { id }),
            None if !cores.is_empty() => Some(cores[(i + 1) % cores.len()]),
            None => None,
        })
        .collect()
}

/// Ring size of a socket with `frames` frames: half of them may wait in
/// each ring, so the other half stays free for the other rings.
fn ring_size(frames: u32) -> u32 {
    (frames / 2).clamp(64, 4096)
}

/// Opens the ingress sandbox of `cfg`, if any. A sandbox found at Docker's
/// default place that cannot be opened (no CAP_SYS_ADMIN, say) is dropped
/// from `cfg` with a warning, so that local tasks are left out with a note
/// rather than meshgate refusing to start; a configured one is required.
/// The attach flags of an XDP mode.
fn attach_flags(mode: XdpMode) -> u32 {
    match mode {
        XdpMode::Native => xdp_flags::DRV_MODE,
        XdpMode::Generic => xdp_flags::SKB_MODE,
    }
}

/// In swarm mode without `node.address6`: the ingress interface's global
/// IPv6 address, if it has one, so that published ports answer IPv6
/// clients where the node has IPv6 (Swarm's own ingress does not).
fn swarm_address6(cfg: &mut Config, rtnl: &mut Rtnl, link: &LinkFacts) -> Result<(), RunError> {
    if cfg.swarm.is_none() || cfg.node.address6.is_some() {
        return Ok(());
    }
    let found = rtnl.global_ipv6(link.index)?;
    if let Some(&a) = found.first() {
        log::info!(
            "IPv6 clients: published ports answer on {a} too, {}'s global address (node.address6 chooses another{})",
            cfg.node.interface,
            if found.len() > 1 {
                "; it has several"
            } else {
                ""
            }
        );
        cfg.node.address6 = Some(a);
    }
    Ok(())
}

/// With `[swarm]`, the first read of services and tasks, into `cfg`; what
/// was left out and why, and what the follower remembers of it. It
/// happens before anything is attached: a swarm meshgate cannot read is a
/// setup error, not an empty table.
fn read_swarm(
    cfg: &mut Config,
) -> Result<(Vec<String>, crate::docker::swarm::ServiceMemory), RunError> {
    let Some(sw) = &cfg.swarm else {
        return Ok(Default::default());
    };
    let (d, memory) = super::swarm::follow::read_once(sw, &cfg.ingress)
        .map_err(|e| RunError::Setup(format!("reading the swarm: {e}")))?;
    cfg.services = d.services;
    Ok((d.notes, memory))
}

fn open_sandbox(cfg: &mut Config) -> Result<Option<super::sandbox::Sandbox>, RunError> {
    let Some(netns) = cfg.ingress.sandbox.clone() else {
        return Ok(None);
    };
    let ring = ring_size(cfg.node.frames_per_queue);
    match super::sandbox::open(&super::sandbox::SandboxParams {
        netns: netns.clone(),
        address: cfg.ingress.address,
        mac: cfg.ingress.mac,
        frames: cfg.node.frames_per_queue,
        frame_size: FRAME_SIZE,
        ring_size: ring,
    }) {
        Ok(sb) => {
            log::info!(
                "tasks on this node: through {} in the ingress sandbox {}",
                sb.interface,
                netns.display()
            );
            Ok(Some(sb))
        }
        Err(e) if !cfg.ingress.sandbox_required => {
            log::warn!(
                "{e}; tasks on this node are left out (entering the sandbox needs CAP_SYS_ADMIN; swarm.sandbox = \"\" turns this off)"
            );
            cfg.ingress.sandbox = None;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
