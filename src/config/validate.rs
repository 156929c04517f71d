//! Validation: each table of the file checked into its typed form
//! (one function per table), services, ports and tasks checked alone and
//! together. Every error names the key and how to fix it.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::raw::*;
use super::*;
use crate::wire::MacAddr;

impl Config {
    pub(super) fn from_raw(
        raw: RawConfig,
        file: &str,
        discover: Discover,
    ) -> Result<Config, ConfigError> {
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
pub(super) struct At<'a>(&'a str);

impl At<'_> {
    pub(super) fn err(self, key: &str, msg: String) -> ConfigError {
        ConfigError::new(self.0, key, msg)
    }
}

/// The ingress sandbox as `[swarm]` gives it: a path (Docker's default
/// when it exists), and whether the file named it.
#[derive(Default)]
pub(super) struct SwarmSandbox {
    path: Option<String>,
    given: bool,
}

/// `[swarm]`, with this node's facts from `discover`.
pub(super) fn swarm_table(
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
pub(super) fn node_table(
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
        queues(q).map_err(|m| err("node.queues", m))?;
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
    let xdp_mode = xdp_mode(n.xdp_mode.as_deref()).map_err(|m| err("node.xdp_mode", m))?;
    let checksum = checksum(n.checksum.as_deref()).map_err(|m| err("node.checksum", m))?;
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

/// `node.queues`: a non-empty list without repeats.
fn queues(q: &[u32]) -> Result<(), String> {
    if q.is_empty() {
        return Err("is empty; remove the key to use every queue of the interface".into());
    }
    let mut seen = HashSet::new();
    for &id in q {
        if !seen.insert(id) {
            return Err(format!("queue {id} is listed twice"));
        }
    }
    Ok(())
}

/// `node.xdp_mode`: native unless named.
fn xdp_mode(m: Option<&str>) -> Result<XdpMode, String> {
    match m {
        None | Some("native") => Ok(XdpMode::Native),
        Some("generic") => Ok(XdpMode::Generic),
        Some(o) => Err(format!(
            "`{o}` is not a mode; use \"native\" or \"generic\""
        )),
    }
}

/// `node.checksum`: auto unless named.
fn checksum(c: Option<&str>) -> Result<ChecksumSetting, String> {
    match c {
        None | Some("auto") => Ok(ChecksumSetting::Auto),
        Some("incremental") => Ok(ChecksumSetting::Incremental),
        Some("full") => Ok(ChecksumSetting::Full),
        Some(o) => Err(format!(
            "`{o}` is not a choice; use \"auto\", \"incremental\" or \"full\""
        )),
    }
}

/// `node.address6`: a unicast IPv6 address clients can reach.
pub(super) fn node_address6(a: &str) -> Result<Ipv6Addr, String> {
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
pub(super) fn node_address(
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
pub(super) fn sandbox_path(p: String, in_swarm: bool, at: At<'_>) -> Result<PathBuf, ConfigError> {
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
pub(super) fn ingress_table(
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
pub(super) fn timeouts_table(t: RawTimeouts, at: At<'_>) -> Result<Timeouts, ConfigError> {
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
pub(super) fn flows_table(f: RawFlows, at: At<'_>) -> Result<FlowLimits, ConfigError> {
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
pub(super) fn control_table(c: RawControl, at: At<'_>) -> Result<ControlConfig, ConfigError> {
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

pub(super) fn check_name(name: &str) -> Result<(), String> {
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

pub(super) fn parse_port(p: i64) -> Result<u16, String> {
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

pub(super) fn check_in_subnet(a: Ipv4Addr, net: &Ipv4Net) -> Result<(), String> {
    if !net.contains(a) {
        return Err(format!("{a} is outside the ingress subnet {net}"));
    }
    if a == net.network() || a == net.broadcast() {
        return Err(format!("{a} is the network or broadcast address of {net}"));
    }
    Ok(())
}

pub(super) fn parse_unicast_mac(s: &str) -> Result<MacAddr, String> {
    let m: MacAddr = s
        .parse()
        .map_err(|e: crate::wire::ethernet::MacParseError| e.to_string())?;
    if !m.is_unicast() || m == MacAddr::ZERO {
        return Err(format!("{m} is not a unicast MAC address"));
    }
    Ok(m)
}
