//! The configuration file (TOML): the user's contract.
//!
//! Parsing happens in two steps. `serde` reads the file into `Raw*` structs
//! (unknown keys are errors, with the line and column from `toml`); then
//! `Config::from_raw` validates every value and builds the typed
//! [`Config`], reporting the first mistake as
//! `FILE: KEY: what is wrong (how to fix it)`.
//!
//! Invariant of a [`Config`]: every field has been validated; building the
//! data-plane tables from it cannot fail for a reason the file controls.
//! What the command line adds to the file (`run --swarm`, `--interface`)
//! is merged into the text first, in [`source`].

pub mod source;

pub use source::{ConfigSource, swarm_text};

use crate::dataplane::desc::TableDesc;
pub use crate::dataplane::desc::{
    ClientIp, Ipv4Net, OutlierDetection, Protocol, Publish, Scheduler, Service, Task, Timeouts,
};
use crate::wire::MacAddr;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// A configuration mistake, located by file and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(file: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// How a worker waits for frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Spin on the rings while frames arrive, sleep in `poll(2)` after about
    /// 50 µs without any.
    #[default]
    Adaptive,
    /// Spin on the rings always (a dedicated core per queue).
    Busy,
    /// Sleep in `poll(2)` as soon as the rings are empty: the least CPU per
    /// packet at moderate rates, a wake-up's latency per batch.
    Interrupt,
}

// ---------------------------------------------------------------------------
// Raw file shape.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    ingress: Option<RawIngress>,
    swarm: Option<RawSwarm>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    flows: RawFlows,
    #[serde(default)]
    control: RawControl,
    #[serde(default, rename = "service")]
    services: Vec<ServiceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    interface: String,
    address: Option<String>,
    address6: Option<String>,
    queues: Option<Vec<u32>>,
    #[serde(default)]
    poll: PollMode,
    frames_per_queue: Option<u32>,
    batch_size: Option<u32>,
    #[serde(default)]
    xdp_mode: Option<String>,
    cpus: Option<Vec<usize>>,
    checksum: Option<String>,
    /// Read as `mesh_port` too, its earlier name.
    #[serde(alias = "mesh_port")]
    announce_port: Option<u16>,
    announce_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngress {
    vni: Option<i64>,
    port: Option<i64>,
    subnet: String,
    address: String,
    mac: Option<String>,
    mtu: Option<i64>,
    sandbox: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwarm {
    socket: Option<String>,
    resync: Option<f64>,
    manager: Option<String>,
    sandbox: Option<String>,
}

/// Where Docker keeps the ingress sandbox's network namespace with its
/// default `--exec-root`.
pub const DEFAULT_SANDBOX: &str = "/var/run/docker/netns/ingress_sbox";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_syn: Option<i64>,
    tcp_established: Option<i64>,
    tcp_closing: Option<i64>,
    tcp_close: Option<i64>,
    udp: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    max: Option<i64>,
    snat_ports: Option<[i64; 2]>,
    new_per_second: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
    metrics: Option<String>,
    stats_interval: Option<f64>,
}

/// A service as the configuration file and the control API describe it,
/// before validation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(default)]
    pub scheduler: Scheduler,
    /// `"preserve"`: tasks see the client's address (Docker label
    /// `meshgate.client-ip=preserve`).
    #[serde(default)]
    pub client_ip: ClientIp,
    /// `"off"`: no passive health checks of the tasks (Docker label
    /// `meshgate.outlier-detection=off`); on by default.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    #[serde(default)]
    pub publish: Vec<PublishSpec>,
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
}

/// A published port before validation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    pub published: i64,
    pub target: i64,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

/// A task before validation.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub address: String,
    pub node: String,
    pub mac: Option<String>,
    pub weight: Option<i64>,
}

// ---------------------------------------------------------------------------
// Validated configuration.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub interface: String,
    pub address: Ipv4Addr,
    /// Published ports answer IPv6 clients on this address too (the
    /// overlay and the tasks stay IPv4); `None`: IPv4 only.
    pub address6: Option<Ipv6Addr>,
    /// `None`: every queue of the interface.
    pub queues: Option<Vec<u32>>,
    pub poll: PollMode,
    pub frames_per_queue: u32,
    pub batch_size: u32,
    /// Native (driver) XDP or generic (skb) XDP.
    pub xdp_mode: XdpMode,
    /// CPUs to pin workers to, in queue order; default: queue i on CPU i mod n.
    pub cpus: Option<Vec<usize>>,
    /// How translated TCP/UDP checksums are made.
    pub checksum: ChecksumSetting,
    /// The UDP port of the meshgates' announcements of return paths
    /// (`crate::announce`); 0: none heard or sent, every task gets SNAT.
    pub announce_port: u16,
    /// The file of the key that signs announcements (`crate::announce`);
    /// `None`: [`crate::announce::DEFAULT_KEY_FILE`] in swarm mode when it
    /// exists, else no announcements.
    pub announce_key: Option<std::path::PathBuf>,
}

/// `node.checksum`: how translated TCP and UDP checksums are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumSetting {
    /// Partial checksums completed on interfaces that may hand them over
    /// (virtual ones: veth above all), incremental updates on NICs.
    #[default]
    Auto,
    Incremental,
    Full,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressConfig {
    pub vni: u32,
    pub port: u16,
    pub subnet: Ipv4Net,
    pub address: Ipv4Addr,
    pub mac: MacAddr,
    /// MTU of the overlay (inner) network: the largest inner IPv4 packet.
    pub mtu: u16,
    /// The network namespace of this node's ingress sandbox (Docker's
    /// `ingress_sbox`), through whose interface on the ingress network
    /// meshgate reaches tasks on this node. `None`: tasks on this node are
    /// not allowed (file) or left out (swarm).
    pub sandbox: Option<PathBuf>,
    /// The sandbox was configured, not found at Docker's default place:
    /// failing to open it stops meshgate instead of leaving local tasks out.
    pub sandbox_required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Maximum number of flows, all workers together.
    pub max: u32,
    /// Inclusive range of SNAT source ports on the overlay address.
    pub snat_ports: (u16, u16),
    /// New TCP flows (SYNs) admitted per receive queue and second by the
    /// XDP program; the rest are dropped before the AF_XDP ring. 0: no
    /// limit. Changeable by a reload.
    pub new_per_second: u32,
}

/// The default SYN budget per queue and second: what one worker admits
/// while its established flows keep their latency (measured in
/// `tests/e2e_flood.rs`; see docs/security.md, floods).
pub const DEFAULT_NEW_PER_SECOND: u32 = 20_000;

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            max: 1 << 20,
            snat_ports: (1024, 65535),
            new_per_second: DEFAULT_NEW_PER_SECOND,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    pub metrics: Option<std::net::SocketAddr>,
    /// Seconds between the one-line summaries `run` prints.
    pub stats_interval: f64,
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/meshgate/control.sock";

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            metrics: None,
            stats_interval: 5.0,
        }
    }
}

/// Services and tasks come from Docker Swarm (`[swarm]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmConfig {
    /// A manager's Engine API socket.
    pub socket: PathBuf,
    /// Time between full re-reads of services and tasks; Docker's events
    /// trigger earlier ones.
    pub resync: std::time::Duration,
    /// What the engine said about this node when the file was loaded.
    pub facts: SwarmFacts,
    /// On a worker: a manager's Engine API socket, to read the protocols
    /// of published ports (see `ingress_view`).
    pub manager: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub ingress: IngressConfig,
    pub timeouts: Timeouts,
    pub flows: FlowLimits,
    pub control: ControlConfig,
    pub services: Vec<Service>,
    /// `Some`: services and tasks come from Docker Swarm, not the file.
    pub swarm: Option<SwarmConfig>,
}

impl Config {
    /// What the data plane's tables are built from.
    pub fn table_desc(&self) -> TableDesc<'_> {
        TableDesc {
            node_addr: self.node.address,
            node_addr6: self.node.address6,
            overlay_addr: self.ingress.address,
            overlay_mac: self.ingress.mac,
            vni: self.ingress.vni,
            vxlan_port: self.ingress.port,
            overlay_mtu: self.ingress.mtu,
            timeouts: self.timeouts,
            services: &self.services,
        }
    }
}

/// Reads a node's swarm facts from the socket at the given path; the
/// error says what is wrong in words.
pub type Discover<'a> = &'a mut dyn FnMut(&Path) -> Result<SwarmFacts, String>;

/// The discovery of a caller that has no Docker to ask: a `[swarm]`
/// table is refused with a message that says so.
fn no_docker(socket: &Path) -> Result<SwarmFacts, String> {
    Err(format!(
        "cannot ask Docker at {} here: this configuration was parsed without a Docker client (meshgate::docker::discover is one)",
        socket.display()
    ))
}

/// What this node's swarm state says about `[node]` and `[ingress]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmFacts {
    pub node_id: String,
    /// A manager reads services and tasks from the cluster API; a worker
    /// from its ingress network's view (see `ingress_view`).
    pub manager: bool,
    /// The node's underlay address (`docker info`: `Swarm.NodeAddr`).
    pub node_address: Ipv4Addr,
    /// VXLAN UDP port of the data path (`docker swarm init --data-path-port`).
    pub data_path_port: u16,
    pub ingress_network: String,
    pub vni: u32,
    pub subnet: String,
    /// This node's ingress sandbox on the overlay.
    pub sandbox_address: Ipv4Addr,
    pub sandbox_mac: String,
    /// `com.docker.network.driver.mtu` of the ingress network, if set.
    pub mtu: Option<u16>,
}

/// The default Engine API socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Reads `docker.sock` or `unix:///path/docker.sock`.
pub fn parse_socket(s: &str) -> Result<PathBuf, String> {
    let path = s.strip_prefix("unix://").unwrap_or(s);
    if s.contains("://") && !s.starts_with("unix://") {
        return Err(format!(
            "`{s}` is not a Unix socket; meshgate talks to the Docker Engine API over its local Unix socket (unix:///var/run/docker.sock)"
        ));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "`{s}` is not an absolute path to a Unix socket (like /var/run/docker.sock)"
        ));
    }
    Ok(PathBuf::from(path))
}

/// Largest weight of a task.
pub const MAX_WEIGHT: u32 = 65535;

impl Config {
    /// Reads and validates a configuration file; with `[swarm]`, asks
    /// `discover` (`meshgate::docker::discover`) for this node's facts.
    pub fn load_with(path: &Path, discover: Discover) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(&file, "(file)", format!("cannot read: {e}")))?;
        Self::parse_with(&text, &file, discover)
    }

    /// Parses and validates configuration text without Docker; `file`
    /// names it in errors. A `[swarm]` table is refused: use
    /// [`Config::parse_with`] and a discovery.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        Self::parse_with(text, file, &mut no_docker)
    }

    /// [`Config::parse`] with the swarm facts from `discover`.
    pub fn parse_with(text: &str, file: &str, discover: Discover) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let key = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                }
                None => "(syntax)".to_string(),
            };
            ConfigError::new(file, key, e.message().trim().to_string())
        })?;
        Self::from_raw(raw, file, discover)
    }

    fn from_raw(raw: RawConfig, file: &str, discover: Discover) -> Result<Config, ConfigError> {
        let at = At(file);
        // [swarm] first: it fills in [node] address and [ingress].
        if raw.swarm.is_some() {
            if raw.ingress.is_some() {
                return Err(at.err(
                    "ingress",
                    "comes from the swarm's ingress network when [swarm] is set; remove the [ingress] table".into(),
                ));
            }
            if !raw.services.is_empty() {
                return Err(at.err(
                    "service",
                    "services come from Docker Swarm when [swarm] is set; remove the [[service]] tables and use `docker service create/update/rm`".into(),
                ));
            }
        }
        let (swarm, sandbox) = match raw.swarm {
            Some(sw) => {
                let (sw, sandbox) = swarm_table(sw, at, discover)?;
                (Some(sw), sandbox)
            }
            None => (None, SwarmSandbox::default()),
        };
        let node = node_table(raw.node, swarm.as_ref(), at)?;
        let ingress = ingress_table(raw.ingress, swarm.as_ref(), sandbox, node.address, at)?;
        let timeouts = timeouts_table(raw.timeouts, at)?;
        let flows = flows_table(raw.flows, at)?;
        let control = control_table(raw.control, at)?;
        let mut services = Vec::with_capacity(raw.services.len());
        for (si, spec) in raw.services.iter().enumerate() {
            let svc = Service::from_spec(spec, &ingress, node.address)
                .map_err(|(k, m)| at.err(&format!("service[{si}] ({:?}).{k}", spec.name), m))?;
            services.push(svc);
        }
        check_unique(&services).map_err(|(k, m)| at.err(&k, m))?;

        Ok(Config {
            node,
            ingress,
            timeouts,
            flows,
            control,
            services,
            swarm,
        })
    }
}

/// Where an error is: the file being read (the key comes with the error).
#[derive(Clone, Copy)]
struct At<'a>(&'a str);

impl At<'_> {
    fn err(self, key: &str, msg: String) -> ConfigError {
        ConfigError::new(self.0, key, msg)
    }
}

/// The ingress sandbox as `[swarm]` gives it: a path (Docker's default
/// when it exists), and whether the file named it.
#[derive(Default)]
struct SwarmSandbox {
    path: Option<String>,
    given: bool,
}

/// `[swarm]`, with this node's facts from `discover`.
fn swarm_table(
    sw: RawSwarm,
    at: At<'_>,
    discover: Discover,
) -> Result<(SwarmConfig, SwarmSandbox), ConfigError> {
    let socket = parse_socket(sw.socket.as_deref().unwrap_or(DEFAULT_DOCKER_SOCKET))
        .map_err(|m| at.err("swarm.socket", m))?;
    let facts = discover(&socket).map_err(|m| at.err("swarm.socket", m))?;
    // A worker's Docker sends no service or task events: it reads its own
    // ingress view (one local request) more often.
    let resync = sw.resync.unwrap_or(if facts.manager { 2.0 } else { 0.5 });
    if !(0.1..=600.0).contains(&resync) {
        return Err(at.err(
            "swarm.resync",
            format!("{resync} must be between 0.1 and 600 seconds"),
        ));
    }
    let manager = sw
        .manager
        .as_deref()
        .map(parse_socket)
        .transpose()
        .map_err(|m| at.err("swarm.manager", m))?;
    // The default sandbox only where Docker made it; a path given
    // explicitly must exist (checked with [ingress]).
    let sandbox = SwarmSandbox {
        given: sw.sandbox.as_deref().is_some_and(|p| !p.is_empty()),
        path: match sw.sandbox {
            None => Path::new(DEFAULT_SANDBOX)
                .exists()
                .then(|| DEFAULT_SANDBOX.to_string()),
            Some(p) if p.is_empty() => None,
            Some(p) => Some(p),
        },
    };
    Ok((
        SwarmConfig {
            socket,
            resync: std::time::Duration::from_secs_f64(resync),
            facts,
            manager,
        },
        sandbox,
    ))
}

/// `[node]`; with `[swarm]`, the address is the swarm's.
fn node_table(
    n: RawNode,
    swarm: Option<&SwarmConfig>,
    at: At<'_>,
) -> Result<NodeConfig, ConfigError> {
    let err = |key: &str, msg: String| at.err(key, msg);
    if n.interface.is_empty() || n.interface.len() > 15 || n.interface.contains(['/', ' ']) {
        return Err(err(
            "node.interface",
            format!(
                "`{}` is not an interface name (1 to 15 characters, no '/' or spaces)",
                n.interface
            ),
        ));
    }
    let address = node_address(n.address.as_deref(), swarm, at)?;
    let address6 = n
        .address6
        .as_deref()
        .map(|a| node_address6(a).map_err(|m| err("node.address6", m)))
        .transpose()?;
    if let Some(q) = &n.queues {
        if q.is_empty() {
            return Err(err(
                "node.queues",
                "is empty; remove the key to use every queue of the interface".into(),
            ));
        }
        let mut seen = HashSet::new();
        for &id in q {
            if !seen.insert(id) {
                return Err(err("node.queues", format!("queue {id} is listed twice")));
            }
        }
    }
    let frames = n.frames_per_queue.unwrap_or(4096);
    if !(64..=1 << 20).contains(&frames) || !frames.is_power_of_two() {
        return Err(err(
            "node.frames_per_queue",
            format!("{frames} must be a power of two between 64 and 1048576"),
        ));
    }
    let batch = n.batch_size.unwrap_or(64);
    if !(1..=256).contains(&batch) {
        return Err(err(
            "node.batch_size",
            format!("{batch} must be between 1 and 256 (32 to 64 is best)"),
        ));
    }
    let xdp_mode = match n.xdp_mode.as_deref() {
        None | Some("native") => XdpMode::Native,
        Some("generic") => XdpMode::Generic,
        Some(o) => {
            return Err(err(
                "node.xdp_mode",
                format!("`{o}` is not a mode; use \"native\" or \"generic\""),
            ));
        }
    };
    let checksum = match n.checksum.as_deref() {
        None | Some("auto") => ChecksumSetting::Auto,
        Some("incremental") => ChecksumSetting::Incremental,
        Some("full") => ChecksumSetting::Full,
        Some(o) => {
            return Err(err(
                "node.checksum",
                format!("`{o}` is not a choice; use \"auto\", \"incremental\" or \"full\""),
            ));
        }
    };
    if let Some(c) = &n.cpus {
        if c.is_empty() {
            return Err(err(
                "node.cpus",
                "is empty; remove the key for the default pinning".into(),
            ));
        }
    }
    Ok(NodeConfig {
        interface: n.interface,
        address,
        address6,
        queues: n.queues,
        poll: n.poll,
        frames_per_queue: frames,
        batch_size: batch,
        xdp_mode,
        cpus: n.cpus,
        checksum,
        announce_port: n.announce_port.unwrap_or(crate::announce::DEFAULT_PORT),
        announce_key: n.announce_key.map(std::path::PathBuf::from),
    })
}

/// `node.address6`: a unicast IPv6 address clients can reach.
fn node_address6(a: &str) -> Result<Ipv6Addr, String> {
    let addr: Ipv6Addr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IPv6 address (like \"2001:db8::2\")"))?;
    if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
        return Err(format!(
            "{addr} is not a unicast address clients can reach; use the node's global IPv6 address"
        ));
    }
    if addr.to_ipv4_mapped().is_some() {
        return Err(format!(
            "{addr} is an IPv4-mapped address; give the IPv4 address as node.address"
        ));
    }
    Ok(addr)
}

/// `node.address`: given, or with `[swarm]` the swarm's (and then a given
/// one must agree).
fn node_address(
    given: Option<&str>,
    swarm: Option<&SwarmConfig>,
    at: At<'_>,
) -> Result<Ipv4Addr, ConfigError> {
    let err = |key: &str, msg: String| at.err(key, msg);
    Ok(match (given, swarm) {
        (Some(a), None) => parse_host(a).map_err(|m| err("node.address", m))?,
        (None, None) => {
            return Err(err(
                "node.address",
                "is missing: the address clients connect to (like 198.18.0.2)".into(),
            ));
        }
        (None, Some(sw)) => sw.facts.node_address,
        (Some(a), Some(sw)) => {
            let a = parse_host(a).map_err(|m| err("node.address", m))?;
            if a != sw.facts.node_address {
                return Err(err(
                    "node.address",
                    format!(
                        "{a} is not this node's swarm address {} (docker info: NodeAddr); remove the key to use it",
                        sw.facts.node_address
                    ),
                ));
            }
            a
        }
    })
}

/// `ingress.sandbox` (or `swarm.sandbox`): an absolute path that exists.
fn sandbox_path(p: String, in_swarm: bool, at: At<'_>) -> Result<PathBuf, ConfigError> {
    let key = if in_swarm {
        "swarm.sandbox"
    } else {
        "ingress.sandbox"
    };
    let path = PathBuf::from(&p);
    if !path.is_absolute() {
        return Err(at.err(
            key,
            format!("`{p}` is not an absolute path (Docker's is {DEFAULT_SANDBOX})"),
        ));
    }
    if !path.exists() {
        return Err(at.err(
            key,
            format!(
                "{p} does not exist: it is the ingress sandbox's network namespace, which Docker creates once the node is in a swarm (<exec-root>/netns/ingress_sbox)"
            ),
        ));
    }
    Ok(path)
}

/// `[ingress]`, or with `[swarm]` the swarm's ingress network and this
/// node's sandbox on it.
fn ingress_table(
    raw: Option<RawIngress>,
    swarm: Option<&SwarmConfig>,
    sandbox: SwarmSandbox,
    node_address: Ipv4Addr,
    at: At<'_>,
) -> Result<IngressConfig, ConfigError> {
    let err = |key: &str, msg: String| at.err(key, msg);
    let i = match (raw, swarm) {
        (Some(i), _) => i,
        (None, Some(sw)) => RawIngress {
            vni: Some(sw.facts.vni.into()),
            port: Some(sw.facts.data_path_port.into()),
            subnet: sw.facts.subnet.clone(),
            address: sw.facts.sandbox_address.to_string(),
            mac: Some(sw.facts.sandbox_mac.clone()),
            mtu: sw.facts.mtu.map(i64::from),
            sandbox: sandbox.path,
        },
        (None, None) => {
            return Err(err(
                "ingress",
                "is missing: add an [ingress] table (subnet and address of the sandbox on the ingress network), or a [swarm] table to read it from Docker".into(),
            ));
        }
    };
    let vni = i.vni.unwrap_or(4096);
    if !(1..=0xff_ffff).contains(&vni) {
        return Err(err(
            "ingress.vni",
            format!("{vni} is out of range (1 to 16777215)"),
        ));
    }
    let port = parse_port(i.port.unwrap_or(4789)).map_err(|m| err("ingress.port", m))?;
    let subnet: Ipv4Net = i.subnet.parse().map_err(|m| err("ingress.subnet", m))?;
    if subnet.prefix_len > 30 {
        return Err(err(
            "ingress.subnet",
            format!("{subnet} is too small for a sandbox and tasks (use /30 or larger)"),
        ));
    }
    let ia = parse_host(&i.address).map_err(|m| err("ingress.address", m))?;
    check_in_subnet(ia, &subnet).map_err(|m| err("ingress.address", m))?;
    let imac = match &i.mac {
        Some(m) => parse_unicast_mac(m).map_err(|m| err("ingress.mac", m))?,
        None => MacAddr::docker(ia),
    };
    let mtu = i.mtu.unwrap_or(1450);
    if !(576..=9000).contains(&mtu) {
        return Err(err(
            "ingress.mtu",
            format!("{mtu} is out of range (576 to 9000; Docker's overlay uses 1450)"),
        ));
    }
    if ia == node_address {
        return Err(err(
            "ingress.address",
            format!("{ia} is the node address; the sandbox needs its own address on the overlay"),
        ));
    }
    let sandbox_required = match swarm {
        Some(_) => sandbox.given,
        None => true,
    };
    let sandbox_path = i
        .sandbox
        .map(|p| sandbox_path(p, swarm.is_some(), at))
        .transpose()?;
    Ok(IngressConfig {
        vni: vni as u32,
        port,
        subnet,
        address: ia,
        mac: imac,
        mtu: mtu as u16,
        sandbox: sandbox_path,
        sandbox_required,
    })
}

/// `[timeouts]`.
fn timeouts_table(t: RawTimeouts, at: At<'_>) -> Result<Timeouts, ConfigError> {
    let err = |key: &str, msg: String| at.err(key, msg);
    let d = Timeouts::default();
    let secs = |key: &str, v: Option<i64>, def: u32| -> Result<u32, ConfigError> {
        match v {
            None => Ok(def),
            Some(s) if (1..=30 * 86400).contains(&s) => Ok(s as u32),
            Some(s) => Err(err(
                key,
                format!("{s} seconds is out of range (1 to 2592000)"),
            )),
        }
    };
    Ok(Timeouts {
        tcp_syn: secs("timeouts.tcp_syn", t.tcp_syn, d.tcp_syn)?,
        tcp_established: secs(
            "timeouts.tcp_established",
            t.tcp_established,
            d.tcp_established,
        )?,
        tcp_closing: secs("timeouts.tcp_closing", t.tcp_closing, d.tcp_closing)?,
        tcp_close: secs("timeouts.tcp_close", t.tcp_close, d.tcp_close)?,
        udp: secs("timeouts.udp", t.udp, d.udp)?,
    })
}

/// `[flows]`.
fn flows_table(f: RawFlows, at: At<'_>) -> Result<FlowLimits, ConfigError> {
    let err = |key: &str, msg: String| at.err(key, msg);
    let df = FlowLimits::default();
    let max = f.max.unwrap_or(df.max as i64);
    if !(16..=1 << 26).contains(&max) {
        return Err(err(
            "flows.max",
            format!("{max} is out of range (16 to 67108864)"),
        ));
    }
    let snat_ports = match f.snat_ports {
        None => df.snat_ports,
        Some([lo, hi]) => {
            let lo = parse_port(lo).map_err(|m| err("flows.snat_ports", m))?;
            let hi = parse_port(hi).map_err(|m| err("flows.snat_ports", m))?;
            if hi < lo || hi - lo < 63 {
                return Err(err(
                    "flows.snat_ports",
                    format!("[{lo}, {hi}] must be an increasing range of at least 64 ports"),
                ));
            }
            (lo, hi)
        }
    };
    let new_per_second = f.new_per_second.unwrap_or(df.new_per_second as i64);
    if !(0..=100_000_000).contains(&new_per_second) {
        return Err(err(
            "flows.new_per_second",
            format!("{new_per_second} is out of range (0 to 100000000; 0 admits every new flow)"),
        ));
    }
    Ok(FlowLimits {
        max: max as u32,
        snat_ports,
        new_per_second: new_per_second as u32,
    })
}

/// `[control]`.
fn control_table(c: RawControl, at: At<'_>) -> Result<ControlConfig, ConfigError> {
    let err = |key: &str, msg: String| at.err(key, msg);
    let dc = ControlConfig::default();
    let metrics = match c.metrics {
        None => None,
        Some(m) => Some(m.parse().map_err(|_| {
            err(
                "control.metrics",
                format!("`{m}` is not an address:port (like 127.0.0.1:9464)"),
            )
        })?),
    };
    let stats_interval = c.stats_interval.unwrap_or(dc.stats_interval);
    if !(stats_interval > 0.0 && stats_interval <= 3600.0) {
        return Err(err(
            "control.stats_interval",
            format!("{stats_interval} must be between 0 and 3600 seconds"),
        ));
    }
    Ok(ControlConfig {
        socket: c.socket.unwrap_or(dc.socket),
        metrics,
        stats_interval,
    })
}

impl Service {
    /// Validates one service; the error names the key relative to the
    /// service (`publish[0].published`, `tasks[2].address`).
    pub fn from_spec(
        s: &ServiceSpec,
        ingress: &IngressConfig,
        node_addr: Ipv4Addr,
    ) -> Result<Service, (String, String)> {
        check_name(&s.name).map_err(|m| ("name".to_string(), m))?;
        if s.publish.is_empty() {
            return Err((
                "publish".into(),
                "is empty; a service needs at least one published port".into(),
            ));
        }
        let mut publish: Vec<Publish> = Vec::new();
        for (pi, p) in s.publish.iter().enumerate() {
            let k = |f: &str| format!("publish[{pi}].{f}");
            let pb = Publish::from_spec(p, ingress).map_err(|(f, m)| (k(f), m))?;
            if publish.contains(&pb) {
                return Err((format!("publish[{pi}]"), "is listed twice".into()));
            }
            publish.push(pb);
        }
        let mut tasks: Vec<Task> = Vec::new();
        for (ti, t) in s.tasks.iter().enumerate() {
            let k = |f: &str| format!("tasks[{ti}].{f}");
            let task = Task::from_spec(t, ingress, node_addr).map_err(|(f, m)| (k(f), m))?;
            if tasks.iter().any(|o| o.address == task.address) {
                return Err((k("address"), format!("{} is listed twice", task.address)));
            }
            tasks.push(task);
        }
        Ok(Service {
            name: s.name.clone(),
            scheduler: s.scheduler,
            client_ip: s.client_ip,
            outlier_detection: s.outlier_detection,
            publish,
            tasks,
        })
    }
}

impl Publish {
    pub fn from_spec(
        p: &PublishSpec,
        ingress: &IngressConfig,
    ) -> Result<Publish, (&'static str, String)> {
        let published = parse_port(p.published).map_err(|m| ("published", m))?;
        let target = parse_port(p.target).map_err(|m| ("target", m))?;
        if p.protocol == Protocol::Udp && published == ingress.port {
            return Err((
                "published",
                format!("{published}/udp is the overlay's VXLAN port (ingress.port)"),
            ));
        }
        Ok(Publish {
            published,
            target,
            protocol: p.protocol,
        })
    }
}

/// Checks what must be unique across services: names, published ports and
/// task addresses. The error names the offending key.
pub fn check_unique(services: &[Service]) -> Result<(), (String, String)> {
    if services.len() > 0xffff - 0x100 {
        return Err(("service".into(), "too many services (at most 65279)".into()));
    }
    let mut names = HashSet::new();
    let mut published = HashSet::new();
    let mut task_addrs = HashSet::new();
    for (si, svc) in services.iter().enumerate() {
        let key = |k: &str| format!("service[{si}] ({:?}).{k}", svc.name);
        if !names.insert(svc.name.as_str()) {
            return Err((
                key("name"),
                format!(
                    "`{}` names two services; service names are unique",
                    svc.name
                ),
            ));
        }
        for (pi, p) in svc.publish.iter().enumerate() {
            if !published.insert((p.protocol, p.published)) {
                return Err((
                    key(&format!("publish[{pi}]")),
                    format!(
                        "{}/{} is published by another service",
                        p.published, p.protocol
                    ),
                ));
            }
        }
        for (ti, t) in svc.tasks.iter().enumerate() {
            if !task_addrs.insert(t.address) {
                return Err((
                    key(&format!("tasks[{ti}].address")),
                    format!(
                        "{} is the address of another task; each task has its own address on the ingress network",
                        t.address
                    ),
                ));
            }
        }
    }
    Ok(())
}

impl Task {
    /// Validates one task; the error names the field (`address`, `node`, `mac`, `weight`).
    pub fn from_spec(
        t: &TaskSpec,
        ingress: &IngressConfig,
        node_addr: Ipv4Addr,
    ) -> Result<Task, (&'static str, String)> {
        let (address, node, mac, weight) = (
            t.address.as_str(),
            t.node.as_str(),
            t.mac.as_deref(),
            t.weight,
        );
        let address = parse_host(address).map_err(|m| ("address", m))?;
        check_in_subnet(address, &ingress.subnet).map_err(|m| ("address", m))?;
        if address == ingress.address {
            return Err((
                "address",
                format!("{address} is this node's ingress-sandbox address (ingress.address)"),
            ));
        }
        let node = parse_host(node).map_err(|m| ("node", m))?;
        if ingress.subnet.contains(node) {
            return Err((
                "node",
                format!(
                    "{node} is inside the ingress subnet {}; `node` is the underlay address of the node running the task",
                    ingress.subnet
                ),
            ));
        }
        if node == node_addr && ingress.sandbox.is_none() {
            return Err((
                "node",
                format!(
                    "{node} is this node (node.address): tasks on this node are reached through the ingress sandbox; set ingress.sandbox to its network namespace ({DEFAULT_SANDBOX} on a Docker node)"
                ),
            ));
        }
        let mac = match mac {
            Some(m) => parse_unicast_mac(m).map_err(|m| ("mac", m))?,
            None => MacAddr::docker(address),
        };
        let weight = match weight {
            None => 1,
            Some(w) if (0..=MAX_WEIGHT as i64).contains(&w) => w as u32,
            Some(w) => {
                return Err((
                    "weight",
                    format!("{w} is out of range (0 to {MAX_WEIGHT}; 0 drains the task)"),
                ));
            }
        };
        Ok(Task {
            address,
            node,
            mac,
            weight,
            // Known only once the task's node says so.
            return_path: false,
        })
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a service name (1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit)"
        ))
    }
}

fn parse_port(p: i64) -> Result<u16, String> {
    if (1..=65535).contains(&p) {
        Ok(p as u16)
    } else {
        Err(format!("{p} is not a port (1 to 65535)"))
    }
}

/// Parses a unicast host address (not unspecified, broadcast, multicast or loopback).
pub fn parse_host(s: &str) -> Result<Ipv4Addr, String> {
    let a: Ipv4Addr = s
        .parse()
        .map_err(|_| format!("`{s}` is not an IPv4 address"))?;
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        return Err(format!("{a} is not a unicast host address"));
    }
    Ok(a)
}

fn check_in_subnet(a: Ipv4Addr, net: &Ipv4Net) -> Result<(), String> {
    if !net.contains(a) {
        return Err(format!("{a} is outside the ingress subnet {net}"));
    }
    if a == net.network() || a == net.broadcast() {
        return Err(format!("{a} is the network or broadcast address of {net}"));
    }
    Ok(())
}

fn parse_unicast_mac(s: &str) -> Result<MacAddr, String> {
    let m: MacAddr = s
        .parse()
        .map_err(|e: crate::wire::ethernet::MacParseError| e.to_string())?;
    if !m.is_unicast() || m == MacAddr::ZERO {
        return Err(format!("{m} is not a unicast MAC address"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const LAB: &str = include_str!("../../examples/lab.toml");

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, "test.toml")
    }

    #[test]
    fn client_ip_is_snat_unless_preserve_is_asked_for() {
        let lab = include_str!("../../examples/lab.toml");
        let cfg = Config::parse(lab, "lab.toml").unwrap();
        assert_eq!(cfg.services[0].client_ip, ClientIp::Snat);
        let text = lab.replace("name = \"web\"", "name = \"web\"\nclient_ip = \"preserve\"");
        assert_ne!(text, lab);
        let cfg = Config::parse(&text, "lab.toml").unwrap();
        assert_eq!(cfg.services[0].client_ip, ClientIp::Preserve);
        // Until the tasks' nodes say otherwise, no task has a return path.
        assert!(cfg.services[0].tasks.iter().all(|t| !t.return_path));
        let bad = lab.replace("name = \"web\"", "name = \"web\"\nclient_ip = \"keep\"");
        let e = Config::parse(&bad, "lab.toml").unwrap_err().to_string();
        assert!(e.contains("keep") && e.contains("preserve"), "{e}");
    }

    #[test]
    fn the_announcement_port_keeps_its_earlier_name() {
        let lab = include_str!("../../examples/lab.toml");
        assert_eq!(
            Config::parse(lab, "lab.toml").unwrap().node.announce_port,
            crate::announce::DEFAULT_PORT
        );
        for key in ["announce_port", "mesh_port"] {
            let text = lab.replacen("[node]\n", &format!("[node]\n{key} = 7000\n"), 1);
            assert_ne!(text, lab);
            let cfg = Config::parse(&text, "lab.toml").unwrap();
            assert_eq!(cfg.node.announce_port, 7000, "{key}");
        }
    }

    #[test]
    fn docker_sockets() {
        assert_eq!(
            parse_socket("unix:///var/run/docker.sock").unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(parse_socket("/x.sock").unwrap(), PathBuf::from("/x.sock"));
        assert!(
            parse_socket("tcp://10.0.0.1:2375")
                .unwrap_err()
                .contains("Unix socket")
        );
        assert!(parse_socket("docker.sock").is_err());
    }

    #[test]
    fn lab_example_is_valid() {
        let c = parse(LAB).unwrap();
        assert_eq!(c.node.interface, "in0");
        assert_eq!(c.ingress.vni, 4096);
        assert_eq!(c.ingress.port, 4789);
        assert_eq!(c.ingress.mac.to_string(), "02:42:c6:12:80:02");
        assert_eq!(c.services.len(), 1);
        let web = &c.services[0];
        assert_eq!(web.publish.len(), 2);
        assert_eq!(web.tasks.len(), 3);
        assert_eq!(web.tasks[0].mac.to_string(), "02:42:c6:12:80:04");
        assert_eq!(web.tasks[2].node, Ipv4Addr::new(198, 18, 0, 12));
        assert_eq!(c.timeouts, Timeouts::default());
        assert!(c.timeouts.tcp_established >= 3600);
    }

    /// Replaces the first occurrence of `from` in the lab file.
    fn edit(from: &str, to: &str) -> String {
        assert!(LAB.contains(from), "fixture does not contain {from:?}");
        LAB.replacen(from, to, 1)
    }

    fn expect_err(text: &str, key: &str, words: &str) {
        let e = parse(text).unwrap_err();
        assert_eq!(e.file, "test.toml");
        assert!(
            e.key.contains(key),
            "key {:?} does not contain {key:?} ({e})",
            e.key
        );
        assert!(
            e.message.contains(words),
            "message {:?} does not contain {words:?}",
            e.message
        );
    }

    #[test]
    fn precise_errors() {
        expect_err(
            &edit("vni = 4096", "vni = 16777216"),
            "ingress.vni",
            "out of range",
        );
        expect_err(
            &edit("vni = 4096", "vni = 0"),
            "ingress.vni",
            "out of range",
        );
        expect_err(
            &edit("port = 4789", "port = 70000"),
            "ingress.port",
            "not a port",
        );
        expect_err(
            &edit("address = \"198.18.0.2\"", "address = \"198.18.0\""),
            "node.address",
            "not an IPv4 address",
        );
        expect_err(
            &edit("address = \"198.18.0.2\"", "address = \"224.0.0.1\""),
            "node.address",
            "unicast",
        );
        expect_err(
            &edit(
                "subnet = \"198.18.128.0/24\"",
                "subnet = \"198.18.128.1/24\"",
            ),
            "ingress.subnet",
            "host bits",
        );
        expect_err(
            &edit("address = \"198.18.128.2\"", "address = \"198.18.129.2\""),
            "ingress.address",
            "outside",
        );
        expect_err(
            &edit(
                "published = 8080, target = 80, protocol = \"tcp\"",
                "published = 0, target = 80, protocol = \"tcp\"",
            ),
            "service[0] (\"web\").publish[0].published",
            "not a port",
        );
        expect_err(
            &edit("protocol = \"tcp\"", "protocol = \"sctp\""),
            "line",
            "unknown variant",
        );
        expect_err(
            &edit(
                "{ address = \"198.18.128.4\"",
                "{ address = \"198.18.129.4\"",
            ),
            "tasks[0].address",
            "outside the ingress subnet",
        );
        expect_err(
            &edit(
                "{ address = \"198.18.128.5\"",
                "{ address = \"198.18.128.4\"",
            ),
            "tasks[1].address",
            "listed twice",
        );
        expect_err(
            &edit("node = \"198.18.0.12\"", "node = \"198.18.128.9\""),
            "tasks[2].node",
            "inside the ingress subnet",
        );
        expect_err(
            &edit("[ingress]", "[ingress]\nvlan = 3"),
            "line",
            "unknown field",
        );
        expect_err(
            &edit("name = \"web\"", "name = \"web app\""),
            "name",
            "not a service name",
        );
        expect_err(
            &edit(
                "node = \"198.18.0.12\" }",
                "node = \"198.18.0.12\", weight = -1 }",
            ),
            "tasks[2].weight",
            "out of range",
        );
        expect_err(
            &edit(
                "node = \"198.18.0.12\" }",
                "node = \"198.18.0.12\", mac = \"01:00:5e:00:00:01\" }",
            ),
            "tasks[2].mac",
            "unicast",
        );
        expect_err(
            &format!(
                "{LAB}\n[[service]]\nname = \"web\"\npublish = [{{ published = 9090, target = 80 }}]\n"
            ),
            "service[1]",
            "names two services",
        );
        expect_err(
            &format!(
                "{LAB}\n[[service]]\nname = \"api\"\npublish = [{{ published = 8080, target = 80 }}]\n"
            ),
            "service[1]",
            "published by another service",
        );
        expect_err(
            &format!(
                "{LAB}\n[[service]]\nname = \"vx\"\npublish = [{{ published = 4789, target = 80, protocol = \"udp\" }}]\n"
            ),
            "publish[0].published",
            "VXLAN port",
        );
        expect_err(
            "[node]\ninterface = \"in0\"\n",
            "node.address",
            "is missing",
        );
        expect_err("[timeouts]\n", "line 1", "missing field `node`");
    }

    #[test]
    fn tasks_on_this_node_need_the_ingress_sandbox() {
        let local = edit(
            "{ address = \"198.18.128.6\", node = \"198.18.0.12\" }",
            "{ address = \"198.18.128.6\", node = \"198.18.0.2\" }",
        );
        expect_err(&local, "tasks[2].node", "set ingress.sandbox");
        // Any network namespace file will do for the check; the sandbox's
        // interface is looked for when meshgate starts.
        let with = local.replacen(
            "address = \"198.18.128.2\"",
            "address = \"198.18.128.2\"\nsandbox = \"/proc/self/ns/net\"",
            1,
        );
        let c = parse(&with).unwrap();
        assert_eq!(c.ingress.sandbox, Some(PathBuf::from("/proc/self/ns/net")));
        assert!(c.ingress.sandbox_required);
        assert_eq!(c.services[0].tasks[2].node, Ipv4Addr::new(198, 18, 0, 2));
        expect_err(
            &with.replace("/proc/self/ns/net", "ns/net"),
            "ingress.sandbox",
            "not an absolute path",
        );
        expect_err(
            &with.replace("/proc/self/ns/net", "/nonexistent/ingress_sbox"),
            "ingress.sandbox",
            "does not exist",
        );
    }

    #[test]
    fn syntax_error_has_line() {
        let e = parse("[node]\ninterface = \"in0\"\naddress = \n").unwrap_err();
        assert_eq!(e.key, "line 3", "{e}");
    }

    #[test]
    fn prefix_parsing() {
        let n: Ipv4Net = "198.18.128.0/24".parse().unwrap();
        assert!(n.contains(Ipv4Addr::new(198, 18, 128, 200)));
        assert!(!n.contains(Ipv4Addr::new(198, 18, 129, 1)));
        assert_eq!(n.broadcast(), Ipv4Addr::new(198, 18, 128, 255));
        assert!("198.18.128.0/33".parse::<Ipv4Net>().is_err());
        assert!("198.18.128.0".parse::<Ipv4Net>().is_err());
    }
}

#[cfg(test)]
mod swarm_tests {
    use super::*;

    fn facts() -> SwarmFacts {
        SwarmFacts {
            manager: true,
            node_id: "ieau4xomuc2kmaf95o8kef0pn".into(),
            node_address: Ipv4Addr::new(198, 18, 0, 2),
            data_path_port: 7789,
            ingress_network: "g61z0msna4i4bmd4g9zxacfou".into(),
            vni: 4097,
            subnet: "198.18.128.0/24".into(),
            sandbox_address: Ipv4Addr::new(198, 18, 128, 2),
            sandbox_mac: "02:42:c6:12:80:02".into(),
            mtu: Some(1400),
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut asked = Vec::new();
        let r = Config::parse_with(text, "swarm.toml", &mut |p: &Path| {
            asked.push(p.to_path_buf());
            Ok(facts())
        });
        if r.is_ok() {
            assert_eq!(asked.len(), 1, "Docker is asked exactly once");
        }
        r
    }

    const MINIMAL: &str = "[node]\ninterface = \"eth0\"\n[swarm]\n";

    /// The Debian package's default configuration (deploy/meshgate.toml)
    /// is valid on a swarm node as shipped, and every key it comments out
    /// is valid too when uncommented.
    #[test]
    fn the_packaged_default_configuration_is_valid() {
        let text = include_str!("../../deploy/meshgate.toml");
        let c = parse(text).unwrap();
        assert_eq!(c.node.interface, "eth0");
        assert!(c.swarm.is_some());
        assert_eq!(c.control.metrics, None);
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                // Commented keys and tables, not the prose.
                Some(k) if k.starts_with('[') || k.split_whitespace().nth(1) == Some("=") => k,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(c.flows.snat_ports, (1024, 65535));
        assert!(c.control.metrics.is_some());
    }

    #[test]
    fn swarm_fills_node_and_ingress() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.node.interface, "eth0");
        assert_eq!(c.node.address, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(c.ingress.vni, 4097);
        assert_eq!(c.ingress.port, 7789);
        assert_eq!(c.ingress.subnet.to_string(), "198.18.128.0/24");
        assert_eq!(c.ingress.address, Ipv4Addr::new(198, 18, 128, 2));
        assert_eq!(c.ingress.mac.to_string(), "02:42:c6:12:80:02");
        assert_eq!(c.ingress.mtu, 1400);
        assert!(c.services.is_empty());
        let sw = c.swarm.unwrap();
        assert_eq!(sw.socket, PathBuf::from("/var/run/docker.sock"));
        assert_eq!(sw.resync, std::time::Duration::from_secs(2));
        assert_eq!(sw.facts, facts());
    }

    #[test]
    fn swarm_settings_and_mistakes() {
        let c = parse(&format!(
            "{MINIMAL}socket = \"unix:///tmp/d.sock\"\nresync = 0.5\n"
        ))
        .unwrap();
        let sw = c.swarm.unwrap();
        assert_eq!(sw.socket, PathBuf::from("/tmp/d.sock"));
        assert_eq!(sw.resync, std::time::Duration::from_millis(500));
        // Same node address as the swarm's: accepted; another one: refused.
        let c = parse("[node]\ninterface = \"eth0\"\naddress = \"198.18.0.2\"\n[swarm]\n").unwrap();
        assert_eq!(c.node.address, Ipv4Addr::new(198, 18, 0, 2));
        let cases = [
            (
                "[node]\ninterface = \"eth0\"\naddress = \"198.18.0.3\"\n[swarm]\n".to_string(),
                "node.address",
                "not this node's swarm address 198.18.0.2",
            ),
            (
                format!(
                    "{MINIMAL}[ingress]\nsubnet = \"198.18.128.0/24\"\naddress = \"198.18.128.2\"\n"
                ),
                "ingress",
                "remove the [ingress] table",
            ),
            (
                format!("{MINIMAL}[[service]]\nname = \"web\"\n"),
                "service",
                "docker service create",
            ),
            (
                format!("{MINIMAL}socket = \"tcp://198.18.0.2:2375\"\n"),
                "swarm.socket",
                "Unix socket",
            ),
            (format!("{MINIMAL}resync = 0\n"), "swarm.resync", "between"),
            (
                format!("{MINIMAL}interval = 3\n"),
                "line 4",
                "unknown field",
            ),
            (
                "[node]\ninterface = \"eth0\"\n".to_string(),
                "node.address",
                "is missing",
            ),
            (
                "[node]\ninterface = \"eth0\"\naddress = \"198.18.0.2\"\n".to_string(),
                "ingress",
                "or a [swarm] table",
            ),
        ];
        for (text, key, words) in cases {
            let e = parse(&text).unwrap_err();
            assert!(e.key.contains(key), "{text}: key {:?} ({e})", e.key);
            assert!(e.message.contains(words), "{text}: {e}");
        }
    }

    #[test]
    fn docker_errors_name_the_socket_key() {
        let e = Config::parse_with(MINIMAL, "swarm.toml", &mut |_: &Path| {
            Err("this Docker engine is a swarm worker".to_string())
        })
        .unwrap_err();
        assert_eq!(e.key, "swarm.socket");
        assert!(e.message.contains("swarm worker"), "{e}");
        // Without a Docker client, the error names the socket it would ask
        // (the real discovery is tested in `docker`).
        let e = Config::parse(
            &format!("{MINIMAL}socket = \"/nonexistent/meshgate/docker.sock\"\n"),
            "swarm.toml",
        )
        .unwrap_err();
        assert!(
            e.message.contains("/nonexistent/meshgate/docker.sock"),
            "{e}"
        );
    }

    #[test]
    fn swarm_facts_are_validated_like_a_file() {
        let e = Config::parse_with(MINIMAL, "swarm.toml", &mut |_: &Path| {
            Ok(SwarmFacts { vni: 0, ..facts() })
        })
        .unwrap_err();
        assert_eq!(e.key, "ingress.vni");
    }
}
