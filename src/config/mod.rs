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

mod desc;
mod raw;
pub mod source;
mod validate;

pub use raw::{PublishSpec, ServiceSpec, TaskSpec};
pub use source::{ConfigSource, swarm_text};
pub use validate::{check_unique, parse_host};

pub use crate::dataplane::desc::{
    ClientIp, Ipv4Net, OutlierDetection, Protocol, Publish, Scheduler, Service, Task, Timeouts,
};
use crate::wire::MacAddr;
use serde::Deserialize;
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

/// Where Docker keeps the ingress sandbox's network namespace with its
/// default `--exec-root`.
pub const DEFAULT_SANDBOX: &str = "/var/run/docker/netns/ingress_sbox";

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
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
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
}

#[cfg(test)]
mod tests;
