//! The task-node side of preserving client addresses: installs the return
//! paths of this node's tasks ([`crate::return_path`]), removes them when a
//! task or its service's preserve mode goes away or meshgate stops, and
//! announces which tasks have one ([`crate::announce`]).
//!
//! In swarm mode a thread ([`SwarmAgent`]) finds this node's tasks of
//! preserving services and their network namespaces through Docker, once a
//! second; `meshgate return-path` runs the same [`Agent`] for a namespace
//! given on the command line (the namespace lab's task nodes, where no
//! Docker runs).
//!
//! On a manager the same thread also announces what only managers know of
//! the services ([`word_of`]) to every node, for the workers' meshgates.
//!
//! Invariant: a task is announced only while its return path is installed;
//! a stop removes every return path before it announces the empty list.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::Receiver;

use super::peers::KnownNodes;
use crate::announce::{Content, INTERVAL, Keys, ReturnPaths, Sender, ServiceWord};
use crate::config::{ClientIp, Protocol, Service};
use crate::docker::engine::Docker;
use crate::docker::ingress_view::{ingress_endpoints, sandbox_key};
use crate::return_path::{self, IngressNode, Plan};
use crate::wire::MacAddr;

/// Installs, removes and announces return paths.
pub struct Agent {
    sender: Sender,
    keys: Keys,
    sock: UdpSocket,
    installed: BTreeMap<PathBuf, Plan>,
    /// Tasks whose own container asks for the client's address (its
    /// label), announced as such once their return path is installed.
    asks: BTreeSet<Ipv4Addr>,
    /// This node's own ingress sandbox and its MAC, as its Docker says.
    own_sandbox: Option<(Ipv4Addr, MacAddr)>,
    /// The last error per namespace, so that it is logged once.
    failing: BTreeMap<PathBuf, String>,
}

impl Agent {
    /// An agent for the node at `node`; announcements leave from it.
    pub fn new(node: Ipv4Addr, keys: Keys) -> std::io::Result<Agent> {
        Ok(Agent {
            sender: Sender::new(node),
            keys,
            sock: UdpSocket::bind((node, 0))?,
            installed: BTreeMap::new(),
            asks: BTreeSet::new(),
            own_sandbox: None,
            failing: BTreeMap::new(),
        })
    }

    /// The return paths now installed.
    pub fn installed(&self) -> impl Iterator<Item = &Plan> {
        self.installed.values()
    }

    /// Brings the installed return paths to `want`.
    pub fn reconcile(&mut self, want: Vec<Plan>) {
        let wanted: BTreeSet<PathBuf> = want.iter().map(|p| p.netns.clone()).collect();
        let gone: Vec<PathBuf> = self
            .installed
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for netns in gone {
            let plan = self.installed.remove(&netns).expect("listed");
            self.remove(&netns, plan.task);
        }
        for plan in want {
            if self.installed.get(&plan.netns) == Some(&plan) {
                continue;
            }
            match return_path::install(&plan) {
                Ok(()) => {
                    log::info!(
                        "return path of task {} installed ({}; to {} ingress sandbox(es))",
                        plan.task,
                        plan.netns.display(),
                        plan.ingress.len()
                    );
                    self.failing.remove(&plan.netns);
                    self.installed.insert(plan.netns.clone(), plan);
                }
                Err(e) => {
                    self.installed.remove(&plan.netns);
                    let msg = e.to_string();
                    if self.failing.get(&plan.netns) != Some(&msg) {
                        log::warn!(
                            "return path of task {}: {msg}; ingress nodes give it SNAT",
                            plan.task
                        );
                        self.failing.insert(plan.netns.clone(), msg);
                    }
                }
            }
        }
    }

    fn remove(&mut self, netns: &Path, task: Ipv4Addr) {
        if !netns.exists() {
            // The task's namespace went with the task.
            return;
        }
        match return_path::remove(netns) {
            Ok(_) => log::info!("return path of task {task} removed"),
            Err(e) => log::warn!("return path of task {task}: removing it: {e}"),
        }
    }

    /// What this node announces now.
    pub fn announcement(&self) -> ReturnPaths {
        let mut sandboxes: Option<BTreeSet<Ipv4Addr>> = None;
        for p in self.installed.values() {
            let s: BTreeSet<Ipv4Addr> = p.ingress.iter().map(|n| n.sandbox).collect();
            sandboxes = Some(match sandboxes {
                None => s,
                // Every task announced must reach every sandbox named.
                Some(acc) => acc.intersection(&s).copied().collect(),
            });
        }
        let tasks: BTreeSet<Ipv4Addr> = self.installed.values().map(|p| p.task).collect();
        ReturnPaths {
            own_sandbox: self.own_sandbox,
            asks: tasks.intersection(&self.asks).copied().collect(),
            tasks,
            sandboxes: sandboxes.unwrap_or_default(),
        }
    }

    /// This node's own ingress sandbox and MAC, told to every node.
    pub fn set_own_sandbox(&mut self, sandbox: Option<(Ipv4Addr, MacAddr)>) {
        self.own_sandbox = sandbox;
    }

    /// Which of this node's tasks ask for the client's address by their
    /// container's label.
    pub fn set_asks(&mut self, asks: BTreeSet<Ipv4Addr>) {
        self.asks = asks;
    }

    /// Sends the return paths to every target; a target that cannot be
    /// reached now is tried again next time.
    pub fn announce(&mut self, targets: &[SocketAddr]) {
        let content = Content::ReturnPaths(self.announcement());
        self.send(targets, &content);
    }

    /// Sends what a manager knows of the services to every target.
    pub fn announce_word(&mut self, targets: &[SocketAddr], word: Vec<ServiceWord>) {
        self.send(targets, &Content::Services(word));
    }

    fn send(&mut self, targets: &[SocketAddr], content: &Content) {
        for d in self.sender.encode(&self.keys, content) {
            for t in targets {
                if let Err(e) = self.sock.send_to(&d, t) {
                    log::debug!("announcing to {t}: {e}");
                }
            }
        }
    }

    /// Removes every return path, then announces that none is left.
    pub fn stop(&mut self, targets: &[SocketAddr]) {
        self.reconcile(Vec::new());
        self.announce(targets);
    }
}

/// What the swarm agent needs to know about this node.
#[derive(Debug, Clone)]
pub struct SwarmAgentParams {
    pub docker: PathBuf,
    pub ingress_network: String,
    pub node: Ipv4Addr,
    pub announce_port: u16,
    pub keys: Keys,
    /// Whether this node is a manager: then it announces [`word_of`].
    pub manager: bool,
    /// The announcement listener's known nodes, to which the agent adds
    /// the swarm's.
    pub known: Option<Arc<Mutex<KnownNodes>>>,
    /// This node's ingress sandbox and its MAC, from its Docker.
    pub own_sandbox: (Ipv4Addr, MacAddr),
    /// The other sandboxes' MACs, as their nodes announce them.
    pub sandbox_macs: SandboxMacs,
}

/// Sandbox address → MAC, shared by the control thread (which hears
/// them) and the agent (which matches replies on them).
pub type SandboxMacs = Arc<Mutex<BTreeMap<Ipv4Addr, MacAddr>>>;

/// The ingress nodes a task's return path leads to: each sandbox with the
/// MAC its own node announces, else the one Docker 20.10 derives from its
/// address.
pub fn ingress_nodes(
    sandboxes: impl Iterator<Item = Ipv4Addr>,
    macs: &BTreeMap<Ipv4Addr, MacAddr>,
) -> BTreeSet<IngressNode> {
    sandboxes
        .map(|sandbox| IngressNode {
            sandbox,
            mac: macs
                .get(&sandbox)
                .copied()
                .unwrap_or_else(|| MacAddr::docker(sandbox)),
        })
        .collect()
}

/// The agent's thread in swarm mode; dropping it removes the return paths
/// and announces so, unless it was handed over.
pub struct SwarmAgent {
    stop: Arc<AtomicBool>,
    /// Set with `stop` by [`SwarmAgent::hand_over`]: the successor keeps the
    /// return paths, so they stay.
    keep: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SwarmAgent {
    pub fn start(p: SwarmAgentParams, services: Receiver<Vec<Service>>) -> std::io::Result<Self> {
        let mut agent = Agent::new(p.node, p.keys.clone())?;
        agent.set_own_sandbox(Some(p.own_sandbox));
        let stop = Arc::new(AtomicBool::new(false));
        let keep = Arc::new(AtomicBool::new(false));
        let (st, kp) = (stop.clone(), keep.clone());
        let thread = std::thread::Builder::new()
            .name("mg-return-path".into())
            .spawn(move || run_swarm_agent(p, agent, services, st, kp))?;
        Ok(SwarmAgent {
            stop,
            keep,
            thread: Some(thread),
        })
    }

    /// Stops the thread and leaves the return paths to the process that
    /// takes over (its agent finds them installed and keeps them).
    pub fn hand_over(self) {
        self.keep.store(true, Ordering::Relaxed);
    }
}

impl Drop for SwarmAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This node's tasks of services that preserve the client's address,
/// with the UDP target ports they serve for those services.
pub fn local_preserving_tasks(
    services: &[Service],
    node: Ipv4Addr,
) -> BTreeMap<Ipv4Addr, BTreeSet<u16>> {
    let mut out: BTreeMap<Ipv4Addr, BTreeSet<u16>> = BTreeMap::new();
    for s in services
        .iter()
        .filter(|s| s.client_ip == ClientIp::Preserve)
    {
        let udp = s
            .publish
            .iter()
            .filter(|p| p.protocol == Protocol::Udp)
            .map(|p| p.target);
        for t in s.tasks.iter().filter(|t| t.node == node) {
            out.entry(t.address).or_default().extend(udp.clone());
        }
    }
    out
}

/// The UDP target ports `task` serves for any of `services` (for a task
/// whose container asks for the client's address itself).
fn udp_ports_of(services: &[Service], task: Ipv4Addr) -> BTreeSet<u16> {
    services
        .iter()
        .filter(|s| s.tasks.iter().any(|t| t.address == task))
        .flat_map(|s| &s.publish)
        .filter(|p| p.protocol == Protocol::Udp)
        .map(|p| p.target)
        .collect()
}

/// The container label by which a task asks for the client's address
/// itself (`docker service create --container-label`, `labels:` under a
/// compose service): read on the task's own node, it needs no manager.
pub const CONTAINER_LABEL: &str = "meshgate.client-ip";

/// What a manager announces of `services` (its own list: labels read,
/// ports with their protocols, the tasks being stopped at weight 0).
pub fn word_of(services: &[Service]) -> Vec<ServiceWord> {
    services
        .iter()
        .map(|s| ServiceWord {
            name: s.name.to_string(),
            ports: s
                .publish
                .iter()
                .map(|p| (p.published, p.target, p.protocol))
                .collect(),
            client_ip: s.client_ip,
            outlier_detection: s.outlier_detection,
            drained: s
                .tasks
                .iter()
                .filter(|t| t.weight == 0)
                .map(|t| t.address)
                .collect(),
        })
        .collect()
}

/// A container's network namespace and whether its label asks for the
/// client's address, asked of Docker once per container.
fn container_facts(
    docker: &Docker,
    cache: &mut BTreeMap<String, (PathBuf, bool)>,
    id: &str,
) -> Option<(PathBuf, bool)> {
    if let Some(n) = cache.get(id) {
        return Some(n.clone());
    }
    let c = docker.get(&format!("/containers/{id}/json")).ok()?;
    let netns = sandbox_key(&c)?;
    let label = c["Config"]["Labels"][CONTAINER_LABEL].as_str();
    let asks = match label {
        Some("preserve") => true,
        None | Some("snat") => false,
        Some(other) => {
            log::warn!(
                "container {id}: label {CONTAINER_LABEL}={other} is neither preserve nor snat; taken as snat"
            );
            false
        }
    };
    cache.insert(id.to_string(), (netns.clone(), asks));
    Some((netns, asks))
}

/// What the swarm agent keeps between rounds.
struct SwarmRounds {
    p: SwarmAgentParams,
    docker: Docker,
    request: String,
    services: Vec<Service>,
    /// Per container ID: its namespace and whether its label asks.
    facts_of: BTreeMap<String, (PathBuf, bool)>,
    targets: Vec<SocketAddr>,
    started: Instant,
    /// Return paths a predecessor left for services that no longer
    /// preserve are removed once, when this node knows which do: at once
    /// on a manager, on a worker once the managers' word had time to
    /// arrive (else a takeover would remove what its services still want).
    cleaned: bool,
    last_error: Option<String>,
}

impl SwarmRounds {
    /// Reads the ingress network and brings the return paths to what it
    /// and the services want.
    fn read(&mut self, agent: &mut Agent) {
        match self.docker.get(&self.request) {
            Ok(net) => {
                self.last_error = None;
                let e = ingress_endpoints(&net);
                self.learn_nodes(&e);
                let (want, asks) = self.wanted(&e);
                agent.set_asks(asks);
                agent.reconcile(want);
                self.cleaned |= self.may_clean();
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_ref() != Some(&msg) {
                    log::warn!("announcements: reading {}: {msg}", self.request);
                    self.last_error = Some(msg);
                }
            }
        }
    }

    fn may_clean(&self) -> bool {
        self.p.manager || self.started.elapsed() >= crate::announce::STALE_AFTER
    }

    /// The swarm's nodes are whom to tell and whom to believe.
    fn learn_nodes(&mut self, e: &crate::docker::ingress_view::IngressEndpoints) {
        self.targets = e
            .sandboxes
            .iter()
            .map(|&(_, node)| SocketAddr::from((node, self.p.announce_port)))
            .collect();
        if let Some(k) = &self.p.known {
            k.lock().unwrap_or_else(|e| e.into_inner()).swarm_nodes =
                e.sandboxes.iter().map(|&(_, node)| node).collect();
        }
    }

    /// The return paths this node's tasks want (their service preserves,
    /// or their container's label asks), and the tasks that ask; removes,
    /// once, those a predecessor left that nothing wants.
    fn wanted(
        &mut self,
        e: &crate::docker::ingress_view::IngressEndpoints,
    ) -> (Vec<Plan>, BTreeSet<Ipv4Addr>) {
        let local = local_preserving_tasks(&self.services, self.p.node);
        let mut macs = self
            .p
            .sandbox_macs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        macs.insert(self.p.own_sandbox.0, self.p.own_sandbox.1);
        let ingress = ingress_nodes(e.sandboxes.iter().map(|&(sbox, _)| sbox), &macs);
        let clean_now = !self.cleaned && self.may_clean();
        let mut want = Vec::new();
        let mut asks = BTreeSet::new();
        for (id, addr) in &e.containers {
            // Every local container once (cached): its label may ask.
            let Some((netns, asked)) = container_facts(&self.docker, &mut self.facts_of, id) else {
                continue;
            };
            let wanted = match (local.get(addr), asked) {
                (Some(udp), _) => Some(udp.clone()),
                (None, true) => Some(udp_ports_of(&self.services, *addr)),
                (None, false) => None,
            };
            if asked {
                asks.insert(*addr);
            }
            match wanted {
                Some(udp_ports) => want.push(Plan {
                    netns,
                    task: *addr,
                    ingress: ingress.clone(),
                    udp_ports,
                }),
                None if clean_now => {
                    if let Ok(true) = return_path::remove(&netns) {
                        log::info!("removed a stale return path from task {addr}");
                    }
                }
                None => {}
            }
        }
        self.facts_of
            .retain(|id, _| e.containers.iter().any(|(c, _)| c == id));
        (want, asks)
    }

    /// Until the next round: a second, or less when a new service list
    /// comes (a task being drained, a service removed), which is acted on
    /// and announced at once: workers learn of a drain only from this.
    fn wait(&mut self, updates: &Receiver<Vec<Service>>, stop: &AtomicBool, round: Instant) {
        while round.elapsed() < INTERVAL && !stop.load(Ordering::Relaxed) {
            if let Ok(s) = updates.recv_timeout(Duration::from_millis(50)) {
                self.services = s;
                return;
            }
        }
    }
}

fn run_swarm_agent(
    p: SwarmAgentParams,
    mut agent: Agent,
    updates: Receiver<Vec<Service>>,
    stop: Arc<AtomicBool>,
    keep: Arc<AtomicBool>,
) {
    let mut r = SwarmRounds {
        docker: Docker::new(&p.docker),
        request: format!("/networks/{}?verbose=true", p.ingress_network),
        p,
        services: Vec::new(),
        facts_of: BTreeMap::new(),
        targets: Vec::new(),
        started: Instant::now(),
        cleaned: false,
        last_error: None,
    };
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        if let Some(s) = updates.try_iter().last() {
            r.services = s;
        }
        r.read(&mut agent);
        agent.announce(&r.targets);
        if r.p.manager {
            agent.announce_word(&r.targets, word_of(&r.services));
        }
        r.wait(&updates, &stop, round);
    }
    if !keep.load(Ordering::Relaxed) {
        agent.stop(&r.targets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_gets_the_mac_its_node_announces_else_dockers_derived_one() {
        let (a, b) = (
            Ipv4Addr::new(198, 18, 128, 2),
            Ipv4Addr::new(198, 18, 128, 3),
        );
        let random = MacAddr([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);
        let macs = [(a, random)].into_iter().collect();
        let nodes: Vec<(Ipv4Addr, String)> = ingress_nodes([a, b].into_iter(), &macs)
            .into_iter()
            .map(|n| (n.sandbox, n.mac.to_string()))
            .collect();
        assert_eq!(
            nodes,
            [
                (a, "0a:1b:2c:3d:4e:5f".to_string()),
                (b, "02:42:c6:12:80:03".to_string())
            ]
        );
    }
}
