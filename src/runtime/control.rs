//! The control thread: keeps the workers' tables in sync with the
//! configuration and the kernel's neighbours, resolves missing next hops,
//! keeps the program's port map in sync, and gathers statistics.
//!
//! Publishing a change: build a new immutable [`Snapshot`], send it to every
//! worker (each switches between two batches), wait until all report the new
//! generation, then update the BPF port map. Ports that go away leave the
//! port map *before* the snapshot changes; ports that appear enter it
//! *after*: a worker never receives a frame its tables do not describe.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use crossbeam::queue::ArrayQueue;

use super::doorbell::Doorbell;
use super::serve::servers::{ApiCall, ApiServer, MetricsServer};
use super::serve::stats::Stats;
use super::swarm::follow::{SwarmSource, SwarmStatus};
use super::swarm::peers::PeerListener;
use super::worker::{Command, Exchange, WorkerReport};
use crate::announce::{Content, Keys, ManagerWords, Peers};
use crate::api::Response;
use crate::config::{Config, ConfigSource};
use crate::dataplane::tables::{Neighbours, Registry, Snapshot, TaskId};
use crate::netlink::{LinkFacts, Rtnl, Watcher};
use crate::xdp::bpf::BpfError;
use crate::xdp::program::IngressProgram;

/// How often the neighbour table is re-read even without notifications.
const RESYNC_EVERY: Duration = Duration::from_secs(5);
/// How often an unresolved next hop is asked for again.
const RESOLVE_RETRY: Duration = Duration::from_millis(500);
/// Resolutions asked of the kernel per control round (about 20 rounds a
/// second): a flood from spoofed sources must not become an ARP storm.
const RESOLVE_PER_ROUND: usize = 16;

pub struct Control {
    pub cfg: Config,
    source: Option<ConfigSource>,
    link: LinkFacts,
    registry: Registry,
    neighbours: Arc<Neighbours>,
    snapshot: Arc<Snapshot>,
    program: IngressProgram,
    xdp: Option<super::attach::XdpPlace>,
    published: BTreeSet<(u8, u16)>,
    /// The SYN budget in the program's map (None: not written yet).
    syn_budget: Option<u32>,
    workers: Vec<Sender<Command>>,
    exchange: Arc<Exchange>,
    reports: Receiver<WorkerReport>,
    garbage: Receiver<Arc<Snapshot>>,
    resolve_q: Arc<ArrayQueue<Ipv4Addr>>,
    rtnl: Rtnl,
    watcher: Watcher,
    pub stats: Stats,
    /// Per-second rates for the status page.
    pub rates: super::serve::status::RateSampler,
    last_resync: Instant,
    resolving: HashMap<Ipv4Addr, Instant>,
    zero_copy: bool,
    calls_tx: Sender<ApiCall>,
    calls: Receiver<ApiCall>,
    bell: Arc<Doorbell>,
    api_server: Option<ApiServer>,
    metrics_server: Option<MetricsServer>,
    swarm: Option<SwarmSource>,
    /// What other nodes announce about their tasks' return paths.
    peers: Peers,
    peer_listener: Option<PeerListener>,
    /// What managers announce of services (heard on a worker).
    words: ManagerWords,
    /// The sandboxes' MACs their nodes announce, for the agent.
    sandbox_macs: super::swarm::agent::SandboxMacs,
    /// (service, task) forwarded with the client's address, for the log.
    preserved: BTreeSet<(String, Ipv4Addr)>,
    last_refusal_note: Option<Instant>,
    /// Services for the local tasks' return paths (swarm mode).
    agent_tx: Option<Sender<Vec<crate::config::Service>>>,
    /// The control socket served, beside which flow states are written.
    api_path: Option<std::path::PathBuf>,
    /// A takeover in progress: the program's no-socket count when the
    /// workers stopped; then true once the successor's program is in.
    handing_over: Option<(u64, Instant)>,
    handed_over: bool,
    /// Why a takeover failed after this process's workers stopped.
    handover_failed: Option<String>,
}

/// Everything the control thread takes over from the setup in
/// `Forwarder::start`, by name.
pub struct ControlParts {
    pub cfg: Config,
    /// Where the configuration came from (None: no reload).
    pub source: Option<ConfigSource>,
    /// The ingress interface.
    pub link: LinkFacts,
    pub registry: Registry,
    /// The snapshot the workers start with.
    pub snapshot: Arc<Snapshot>,
    pub program: IngressProgram,
    pub xdp: super::attach::XdpPlace,
    /// One command channel per worker.
    pub workers: Vec<Sender<Command>>,
    pub exchange: Arc<Exchange>,
    pub reports: Receiver<WorkerReport>,
    /// Old snapshots the workers hand back, freed here.
    pub garbage: Receiver<Arc<Snapshot>>,
    /// Next hops the workers ask to resolve.
    pub resolve_q: Arc<ArrayQueue<Ipv4Addr>>,
    pub rtnl: Rtnl,
    pub watcher: Watcher,
    pub zero_copy: bool,
}

impl Control {
    pub fn new(parts: ControlParts) -> Control {
        let ControlParts {
            cfg,
            source,
            link,
            registry,
            snapshot,
            program,
            xdp,
            workers,
            exchange,
            reports,
            garbage,
            resolve_q,
            rtnl,
            watcher,
            zero_copy,
        } = parts;
        let n = workers.len();
        let (calls_tx, calls) = crossbeam::channel::unbounded();
        let bell = Doorbell::new().expect("eventfd");
        let stats = Stats::new(n);
        Control {
            cfg,
            source,
            link,
            registry,
            neighbours: snapshot.neighbours.clone(),
            snapshot,
            program,
            xdp: Some(xdp),
            published: BTreeSet::new(),
            syn_budget: None,
            workers,
            exchange,
            reports,
            garbage,
            resolve_q,
            rtnl,
            watcher,
            rates: super::serve::status::RateSampler::new(stats.started),
            stats,
            last_resync: Instant::now(),
            resolving: HashMap::new(),
            zero_copy,
            calls_tx,
            calls,
            bell,
            api_server: None,
            metrics_server: None,
            swarm: None,
            peers: Peers::default(),
            peer_listener: None,
            words: ManagerWords::default(),
            sandbox_macs: Default::default(),
            preserved: BTreeSet::new(),
            last_refusal_note: None,
            agent_tx: None,
            api_path: None,
            handing_over: None,
            handed_over: false,
            handover_failed: None,
        }
    }

    /// Starts listening to the other nodes' announcements
    /// (`node.announce_port`) when there is a key to check them with.
    pub fn listen_to_peers(&mut self, keys: Option<Keys>) -> std::io::Result<()> {
        self.stats.announcements.signed = keys.is_some();
        if let Some(keys) = keys.filter(|_| self.cfg.node.announce_port != 0) {
            let l = PeerListener::start(
                self.cfg.node.address,
                self.cfg.node.announce_port,
                keys,
                self.bell.clone(),
            )?;
            self.peer_listener = Some(l);
            self.tell_listener_task_nodes();
        }
        Ok(())
    }

    /// The listener takes announcements from the tables' task nodes (and
    /// the swarm's nodes, which the agent tells it).
    fn tell_listener_task_nodes(&self) {
        if let Some(l) = &self.peer_listener {
            let nodes = self
                .cfg
                .services
                .iter()
                .flat_map(|s| s.tasks.iter().map(|t| t.node))
                .collect();
            l.known.lock().unwrap_or_else(|e| e.into_inner()).task_nodes = nodes;
        }
    }

    /// The sandboxes' MACs as their nodes announce them, for the agent.
    pub fn sandbox_macs(&self) -> super::swarm::agent::SandboxMacs {
        self.sandbox_macs.clone()
    }

    /// The listener's known nodes, for the swarm agent to fill in.
    pub fn known_nodes(&self) -> Option<Arc<std::sync::Mutex<super::swarm::peers::KnownNodes>>> {
        self.peer_listener.as_ref().map(|l| l.known.clone())
    }

    /// Hands every new service list to the local return-path agent.
    pub fn feed_agent(&mut self, tx: Sender<Vec<crate::config::Service>>) {
        let _ = tx.send(self.cfg.services.clone());
        self.agent_tx = Some(tx);
    }

    /// The services as the tables get them: a task of a service that
    /// preserves the client's address does so only while its node
    /// announces a return path to this node's sandbox; else SNAT.
    /// Also returns the (service, task) that just lost their return path.
    fn services_with_return_paths(
        &mut self,
    ) -> (Vec<crate::config::Service>, Vec<(String, Ipv4Addr)>) {
        let sandbox = self.cfg.ingress.address;
        let mut out = self.cfg.services.clone();
        let mut preserved = BTreeSet::new();
        let mut lost = Vec::new();
        for s in &mut out {
            // A task's own container may ask for the client's address
            // (its node says so) where the service does not: then the
            // service preserves for those tasks, SNAT for the others.
            let by_service = s.client_ip == crate::config::ClientIp::Preserve;
            if !by_service && !s.tasks.iter().any(|t| self.peers.asks(t.node, t.address)) {
                continue;
            }
            s.client_ip = crate::config::ClientIp::Preserve;
            for t in &mut s.tasks {
                t.return_path = self.peers.ready(t.node, t.address, sandbox)
                    && (by_service || self.peers.asks(t.node, t.address));
                let key = (s.name.clone(), t.address);
                let was = self.preserved.contains(&key);
                if t.return_path {
                    if !was {
                        log::info!(
                            "{}: task {}: the client's address is preserved (node {} announces its return path)",
                            s.name,
                            t.address,
                            t.node
                        );
                    }
                    preserved.insert(key);
                } else if was {
                    lost.push(key);
                    log::warn!(
                        "{}: task {}: falls back to SNAT: node {} no longer announces a return path to this node; its connections that kept the client's address end with a reset",
                        s.name,
                        t.address,
                        t.node
                    );
                }
            }
        }
        // Tasks of a service that no longer preserves at all lose their
        // way back too (their node removes it).
        for key in self.preserved.difference(&preserved) {
            if !lost.contains(key) {
                log::warn!(
                    "{}: task {}: falls back to SNAT: its service no longer preserves the client's address; its connections that kept it end with a reset",
                    key.0,
                    key.1
                );
                lost.push(key.clone());
            }
        }
        self.preserved = preserved;
        (out, lost)
    }

    /// Takes the sets heard since the last round; publishes when what is
    /// ready changed, and hands a changed managers' word to the swarm
    /// follower.
    fn hear_peers(&mut self) {
        let Some(l) = &self.peer_listener else {
            return;
        };
        let sets: Vec<(Ipv4Addr, Content)> = l.sets.try_iter().collect();
        let heard = l.heard();
        let now = Instant::now();
        let nodes: BTreeSet<Ipv4Addr> = self
            .cfg
            .services
            .iter()
            .flat_map(|s| s.tasks.iter().map(|t| t.node))
            .collect();
        let (mut changed, mut word_changed) = (false, false);
        for (from, content) in sets {
            match content {
                Content::ReturnPaths(rp) => {
                    changed |= self.peers.take(from, rp, now, |n| nodes.contains(&n));
                }
                Content::Services(w) => {
                    self.stats.announcements.service_sets += 1;
                    word_changed |= self.words.take(from, w, now);
                }
            }
        }
        let refused_at = |n: Ipv4Addr| heard.last_refusal.get(&n).copied();
        changed |= self.peers.expire(now, refused_at);
        let macs = self.peers.sandbox_macs();
        let mut shared = self.sandbox_macs.lock().unwrap_or_else(|e| e.into_inner());
        if *shared != macs {
            *shared = macs;
        }
        drop(shared);
        word_changed |= self.words.expire(now, refused_at);
        let refused: u64 = heard.refused.values().sum();
        if refused > self.stats.announcements.refused
            && self
                .last_refusal_note
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(30))
        {
            let by: Vec<String> = heard
                .refused
                .iter()
                .map(|(r, n)| format!("{} {n}", r.name()))
                .collect();
            log::warn!(
                "announcements refused: {} so far ({}); see docs/security.md",
                refused,
                by.join(", ")
            );
            self.last_refusal_note = Some(now);
        }
        let a = &mut self.stats.announcements;
        a.accepted = self.peers.accepted;
        a.ignored = self.peers.ignored;
        a.refused = refused;
        a.refused_by = heard
            .refused
            .iter()
            .map(|(r, n)| (r.name().to_string(), *n))
            .collect();
        a.nodes = self.peers.nodes();
        a.manager_word = self.words.current().is_some();
        if word_changed {
            if let Some(sw) = &self.swarm {
                sw.tell(self.words.current().cloned());
            }
        }
        if changed {
            if let Err(e) = self.publish() {
                log::error!("publishing return-path change: {e}");
            }
        }
    }

    /// Starts the control socket at `path` and, when configured, the
    /// Prometheus endpoint.
    pub fn serve_api(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        self.api_path = Some(path.to_path_buf());
        self.api_server = Some(ApiServer::start(
            path,
            self.calls_tx.clone(),
            self.bell.clone(),
        )?);
        if let Some(addr) = self.cfg.control.metrics {
            self.metrics_server = Some(MetricsServer::start(
                addr,
                self.calls_tx.clone(),
                self.bell.clone(),
            )?);
        }
        Ok(())
    }

    /// The address the metrics endpoint listens on, when it runs.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.as_ref().map(|m| m.addr)
    }

    /// Stops the API servers (before the workers stop).
    pub fn stop_api(&mut self) {
        self.api_server = None;
        self.metrics_server = None;
    }

    /// Waits up to `timeout` for a kernel notification or an API call;
    /// true when the kernel notified.
    fn wait(&self, timeout: Duration) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut fds = [
            PollFd::new(self.watcher.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.bell.0.as_fd(), PollFlags::POLLIN),
        ];
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as u32)
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(n) if n > 0 => fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN)),
            _ => false,
        }
    }

    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    pub fn summary_line(&self) -> String {
        self.stats.summary_line(&self.snapshot)
    }

    pub fn wake_workers(&self) {
        for s in &self.exchange.shared {
            s.wake();
        }
    }

    /// A successor asks for the flows ([`super::takeover`], step 1).
    pub fn hand_over_flows(
        &mut self,
        version: u32,
        workers: u16,
        snat_ports: (u16, u16),
    ) -> Response {
        use crate::dataplane::handover::VERSION;
        if self.handing_over.is_some() {
            return Response::err("a takeover is already under way");
        }
        if version != VERSION {
            return Response::err(format!(
                "this meshgate hands over flow state version {VERSION}, the new one reads version {version}: it cannot take over without losing every connection; stop this one and start the new one instead (connections through this node will be reset)"
            ));
        }
        let here = (self.workers.len() as u16, self.cfg.flows.snat_ports);
        if (workers, snat_ports) != here {
            return Response::err(format!(
                "this meshgate runs {} worker(s) with SNAT ports {}-{}, the new one would run {workers} with {}-{}: its flows' SNAT ports would belong to other workers; keep node.queues and flows.snat_ports as they are for a takeover",
                here.0, here.1.0, here.1.1, snat_ports.0, snat_ports.1
            ));
        }
        let Some(api_path) = self.api_path.clone() else {
            return Response::err("this meshgate serves no control socket");
        };
        self.handing_over = Some((self.program.no_socket_count().unwrap_or(0), Instant::now()));
        // The successor listens on the same port; announcements missed
        // meanwhile are repeated every second.
        self.peer_listener = None;
        let (tx, rx) = crossbeam::channel::unbounded();
        for w in &self.workers {
            let _ = w.send(Command::HandOver(tx.clone()));
        }
        self.wake_workers();
        let mut exports = vec![None; self.workers.len()];
        for _ in 0..self.workers.len() {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok((origin, records)) => exports[origin.worker as usize] = Some((origin, records)),
                Err(_) => break,
            }
        }
        let mut files = Vec::new();
        let mut flows = 0;
        for (w, e) in exports.into_iter().enumerate() {
            let Some((origin, records)) = e else {
                return Response::err(format!(
                    "worker {w} did not hand over its flows within 5 s; this meshgate no longer forwards: restart it"
                ));
            };
            let path = super::takeover::flows_path(&api_path, w);
            if let Err(e) = super::takeover::write_flows(&path, origin, &records) {
                return Response::err(format!("writing {}: {e}", path.display()));
            }
            flows += records.len();
            files.push(path);
        }
        log::info!("handing over {flows} flow(s) to a new meshgate; workers stopped");
        Response::of(&crate::api::HandoverView {
            files,
            flows,
            takeovers: self.stats.takeover.takeovers,
            pid: std::process::id(),
        })
    }

    /// The successor's program is attached (step 3).
    pub fn hand_over_done(&mut self) -> Response {
        let Some((base, _)) = self.handing_over else {
            return Response::err("no takeover under way");
        };
        let dropped = self
            .program
            .no_socket_count()
            .unwrap_or(base)
            .saturating_sub(base);
        self.handed_over = true;
        log::info!(
            "handed over; {dropped} frame(s) met no socket while neither process had one bound"
        );
        Response::of(&crate::api::HandoverDoneView { dropped })
    }

    /// The successor failed after it took the flows (step 2).
    pub fn hand_over_aborted(&mut self, reason: String) -> Response {
        if self.handing_over.is_none() || self.handed_over {
            return Response::err("no takeover under way");
        }
        log::error!("the new meshgate failed after it took the flows: {reason}");
        self.handover_failed = Some(format!("the new meshgate failed: {reason}"));
        Response::ok(serde_json::Value::Null)
    }

    /// True once a successor has taken over: this process only exits.
    pub fn handed_over(&self) -> bool {
        self.handed_over
    }

    /// Why the takeover under way failed: the successor said so, or it
    /// took the flows and never reported its program attached within
    /// 30 s. This process's workers are gone; it must not exit as if all
    /// were well with a program that has no socket left.
    pub fn handover_failed(&mut self) -> Option<String> {
        if let Some((_, since)) = self.handing_over {
            if !self.handed_over
                && self.handover_failed.is_none()
                && since.elapsed() > Duration::from_secs(30)
            {
                self.handover_failed = Some(
                    "the new meshgate took the flows but did not report its program attached within 30 s".into(),
                );
            }
        }
        self.handover_failed.clone()
    }

    /// Between a successor's request and its report: the workers are
    /// stopped on purpose.
    pub fn handing_over(&self) -> bool {
        self.handing_over.is_some()
    }

    /// Leaves the program attached and stops the API for the successor.
    pub fn hand_over_xdp(&mut self) {
        self.stop_api();
        if let Some(p) = self.xdp.take() {
            p.hand_over();
        }
    }

    /// Detaches the XDP program (a crash leaves it attached: see
    /// [`super::attach`]).
    pub fn detach(&mut self) {
        self.xdp = None;
    }

    /// Takes the workers' reports and the XDP program's counters into the
    /// statistics, and frees old snapshots here, off the workers' fast path.
    pub fn drain_reports(&mut self) {
        while let Ok(r) = self.reports.try_recv() {
            self.stats.absorb(r);
        }
        if let Ok(c) = self.program.pass_counts() {
            self.stats.xdp_passed = c;
        }
        if let Ok(c) = self.program.admission_counts() {
            self.stats.admission = c;
        }
        self.stats.syn_budget = self.cfg.flows.new_per_second;
        self.rates.sample(Instant::now(), &self.stats);
        while self.garbage.try_recv().is_ok() {}
    }

    /// The published (protocol, port) pairs of the current configuration.
    fn wanted_ports(&self) -> BTreeSet<(u8, u16)> {
        self.cfg
            .services
            .iter()
            .flat_map(|s| s.publish.iter().map(|p| (p.protocol.number(), p.published)))
            .collect()
    }

    /// Brings the program's port map to the configuration: additions (the
    /// snapshot already has them); and the SYN budget.
    pub fn sync_ports(&mut self) -> Result<(), BpfError> {
        if self.syn_budget != Some(self.cfg.flows.new_per_second) {
            self.program.set_syn_budget(self.cfg.flows.new_per_second)?;
            self.syn_budget = Some(self.cfg.flows.new_per_second);
        }
        let want = self.wanted_ports();
        for &(proto, port) in want.difference(&self.published.clone()) {
            self.program.add_port(proto, port)?;
            self.published.insert((proto, port));
        }
        Ok(())
    }

    /// Removes ports that are no longer published from the program's map.
    fn unpublish_stale(&mut self) -> Result<(), BpfError> {
        let want = self.wanted_ports();
        for &(proto, port) in self.published.clone().difference(&want) {
            self.program.remove_port(proto, port)?;
            self.published.remove(&(proto, port));
        }
        Ok(())
    }

    /// Builds and publishes a snapshot of the current configuration and
    /// neighbours; waits (up to a second) until every worker uses it.
    pub fn publish(&mut self) -> Result<(), BpfError> {
        self.unpublish_stale()?;
        self.tell_listener_task_nodes();
        let before: BTreeSet<TaskId> = self.snapshot.tasks.iter().map(|t| t.id).collect();
        let generation = self.snapshot.generation + 1;
        let (services, lost) = self.services_with_return_paths();
        let snap = Arc::new(Snapshot::build(
            &crate::dataplane::desc::TableDesc {
                services: &services,
                ..self.cfg.table_desc()
            },
            crate::netlink::link_info(self.cfg.node.checksum, &self.link),
            self.neighbours.clone(),
            &mut self.registry,
            generation,
        ));
        let after: BTreeSet<TaskId> = snap.tasks.iter().map(|t| t.id).collect();
        // Tasks that lost their return path: their flows with the client's
        // address would wait for answers that now take another way.
        let no_way_back: Vec<TaskId> = snap
            .tasks
            .iter()
            .filter(|t| {
                let name = &snap.services[t.service as usize].name;
                lost.iter().any(|(s, a)| **s == **name && *a == t.addr)
            })
            .map(|t| t.id)
            .collect();
        let removed: Vec<TaskId> = before.difference(&after).copied().collect();
        for w in &self.workers {
            let _ = w.send(Command::Snapshot(snap.clone()));
            if !removed.is_empty() {
                let _ = w.send(Command::EndFlows {
                    tasks: removed.clone(),
                    preserving_only: false,
                });
            }
            if !no_way_back.is_empty() {
                let _ = w.send(Command::EndFlows {
                    tasks: no_way_back.clone(),
                    preserving_only: true,
                });
            }
        }
        self.snapshot = snap;
        self.wake_workers();
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if self
                .exchange
                .shared
                .iter()
                .all(|s| s.generation.load(Ordering::Acquire) >= generation)
            {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        self.sync_ports()
    }

    /// Starts following Docker Swarm (`[swarm]`); the tables already hold
    /// the swarm's services of the first read, whose `notes` were printed.
    pub fn follow_swarm(
        &mut self,
        notes: Vec<String>,
        memory: crate::docker::swarm::ServiceMemory,
    ) -> std::io::Result<()> {
        if let Some(sw) = &self.cfg.swarm {
            self.swarm = Some(SwarmSource::start(
                sw,
                &self.cfg.ingress,
                (self.cfg.services.clone(), memory),
                notes,
                self.bell.clone(),
            )?);
        }
        Ok(())
    }

    pub fn swarm_status(&self) -> Option<SwarmStatus> {
        self.swarm.as_ref().map(|s| s.status())
    }

    /// All statistics, with the swarm source's state when there is one.
    pub fn stats_view(&self) -> super::serve::stats::StatsView {
        self.stats.view(self.snapshot(), self.swarm_status())
    }

    /// Replaces the services with the swarm's newest list.
    fn apply_swarm(&mut self, services: Vec<crate::config::Service>) {
        for line in describe_change(&self.cfg.services, &services) {
            log::info!("swarm: {line}");
        }
        let old = std::mem::replace(&mut self.cfg.services, services);
        if let Err(e) = self.publish() {
            log::error!("swarm: updating the XDP port map: {e}; keeping the previous services");
            self.cfg.services = old;
            let _ = self.publish();
        }
        if let Some(tx) = &self.agent_tx {
            let _ = tx.send(self.cfg.services.clone());
        }
    }

    /// Re-reads the configuration file; on any error the running tables
    /// stay as they were.
    pub fn reload(&mut self) -> Result<String, String> {
        let source = self
            .source
            .clone()
            .ok_or("meshgate was started without a configuration file")?;
        let new = source
            .load_with(&mut crate::docker::discover)
            .map_err(|e| e.to_string())?;
        self.apply_config(new)
    }

    /// Applies a new validated configuration (services, tasks, timeouts).
    /// Node and ingress settings cannot change while running.
    pub fn apply_config(&mut self, mut new: Config) -> Result<String, String> {
        if new.swarm.as_ref().map(|s| (&s.socket, s.resync))
            != self.cfg.swarm.as_ref().map(|s| (&s.socket, s.resync))
        {
            return Err("[swarm] cannot change while meshgate runs; restart it to apply it".into());
        }
        if new.swarm.is_some() {
            // The file has no services in swarm mode: the swarm's stay.
            new.services = self.cfg.services.clone();
        }
        if !new.ingress.sandbox_required {
            // Docker's default sandbox is looked for once, at start.
            new.ingress.sandbox = self.cfg.ingress.sandbox.clone();
        }
        if new.swarm.is_some() && new.node.address6.is_none() {
            // So is the interface's IPv6 address, in swarm mode.
            new.node.address6 = self.cfg.node.address6;
        }
        if new.node != self.cfg.node || new.ingress != self.cfg.ingress {
            return Err(
                "[node] and [ingress] cannot change while meshgate runs; restart it to apply them"
                    .into(),
            );
        }
        if (new.flows.max, new.flows.snat_ports) != (self.cfg.flows.max, self.cfg.flows.snat_ports)
        {
            return Err(
                "flows.max and flows.snat_ports cannot change while meshgate runs; restart it to apply them"
                    .into(),
            );
        }
        let services = new.services.len();
        let tasks: usize = new.services.iter().map(|s| s.tasks.len()).sum();
        let old = std::mem::replace(&mut self.cfg, new);
        if let Err(e) = self.publish() {
            self.cfg = old;
            let _ = self.publish();
            return Err(format!("updating the XDP port map: {e}"));
        }
        Ok(format!(
            "{services} service(s), {tasks} task(s), generation {}",
            self.snapshot.generation
        ))
    }

    /// Re-reads neighbours and routes; publishes when they changed.
    fn refresh_neighbours(&mut self) {
        let Ok(n) = self.rtnl.neighbour_table(self.link.index) else {
            return;
        };
        if n.entries != self.neighbours.entries || n.routes != self.neighbours.routes {
            self.neighbours = Arc::new(n);
            if let Err(e) = self.publish() {
                log::error!("publishing neighbour change: {e}");
            }
        }
    }

    /// Asks the kernel to confirm the next hops of the task nodes. The
    /// kernel sees none of the traffic meshgate sends them, so it would
    /// never re-validate those entries: a node whose MAC changed would stay
    /// a black hole. A "use" of a stale entry makes the kernel probe it.
    fn revalidate_vteps(&mut self) {
        let hops: Vec<Ipv4Addr> = self
            .snapshot
            .vteps
            .iter()
            .filter(|(_, m)| m.is_some())
            .map(|(n, _)| self.neighbours.next_hop(*n))
            .collect();
        for h in hops {
            let _ = self.rtnl.resolve(self.link.index, h);
        }
    }

    /// Asks the kernel to resolve next hops the workers or the tables miss.
    fn resolve_missing(&mut self) {
        let mut want: Vec<Ipv4Addr> = Vec::new();
        while let Some(a) = self.resolve_q.pop() {
            want.push(a);
        }
        for (node, mac) in &self.snapshot.vteps {
            if mac.is_none() {
                want.push(self.neighbours.next_hop(*node));
            }
        }
        let now = Instant::now();
        let mut asked = 0;
        for a in want {
            if self
                .resolving
                .get(&a)
                .is_some_and(|t| now.duration_since(*t) < RESOLVE_RETRY)
            {
                continue;
            }
            if asked == RESOLVE_PER_ROUND {
                break;
            }
            asked += 1;
            self.resolving.insert(a, now);
            let _ = self.rtnl.resolve(self.link.index, a);
        }
        self.resolving
            .retain(|_, t| now.duration_since(*t) < Duration::from_secs(10));
    }

    /// One round of control work, waiting up to `wait` for kernel events.
    pub fn step(&mut self, wait: Duration) {
        let notified = self.wait(wait) && self.watcher.changed();
        self.bell.clear();
        while let Ok(call) = self.calls.try_recv() {
            let resp = match (&call.req, self.handing_over.is_some()) {
                (
                    crate::api::Request::HandoverDone {}
                    | crate::api::Request::HandoverAbort { .. },
                    _,
                )
                | (_, false) => self.handle(call.req),
                (_, true) => Response::err(
                    "this meshgate is handing over to a new one; ask the new one in a moment",
                ),
            };
            let _ = call.reply.send(resp);
        }
        if self.handing_over.is_some() {
            // The workers are gone and the program is the successor's
            // soon: no snapshot, port or neighbour work until this
            // process exits (a port removed now would reach the kernel).
            return;
        }
        if let Some(new) = self.swarm.as_ref().and_then(|s| s.latest()) {
            self.apply_swarm(new);
        }
        self.hear_peers();
        let resync = self.last_resync.elapsed() >= RESYNC_EVERY;
        if resync {
            self.revalidate_vteps();
        }
        if notified || resync {
            self.refresh_neighbours();
            self.last_resync = Instant::now();
        }
        self.resolve_missing();
        self.drain_reports();
    }
}

/// One line per service that appeared, went away or changed.
fn describe_change(old: &[crate::config::Service], new: &[crate::config::Service]) -> Vec<String> {
    let ports = |s: &crate::config::Service| {
        s.publish
            .iter()
            .map(|p| format!("{}/{}->{}", p.published, p.protocol, p.target))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = Vec::new();
    for n in new {
        match old.iter().find(|o| o.name == n.name) {
            None => out.push(format!(
                "{}: published {} with {} task(s)",
                n.name,
                ports(n),
                n.tasks.len()
            )),
            Some(o) if o != n => {
                let mut what = Vec::new();
                if o.publish != n.publish {
                    what.push(format!("ports {} -> {}", ports(o), ports(n)));
                }
                if o.tasks != n.tasks {
                    let drained = |s: &crate::config::Service| {
                        s.tasks.iter().filter(|t| t.weight == 0).count()
                    };
                    let (a, b) = (drained(o), drained(n));
                    what.push(if a == b {
                        format!("{} -> {} task(s)", o.tasks.len(), n.tasks.len())
                    } else {
                        format!(
                            "{} -> {} task(s), {a} -> {b} drained",
                            o.tasks.len(),
                            n.tasks.len()
                        )
                    });
                }
                out.push(format!("{}: {}", n.name, what.join(", ")));
            }
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| n.name == o.name) {
            out.push(format!("{}: removed, {} unpublished", o.name, ports(o)));
        }
    }
    out
}
