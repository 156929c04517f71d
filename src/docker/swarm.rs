//! Docker Swarm as the source of services and tasks (`[swarm]`).
//!
//! meshgate reads the swarm's state from a manager's Engine API over its
//! Unix socket, the way `docker service ls/ps` do, and turns it into the
//! same validated [`Service`] list a configuration file gives:
//!
//! * every service with a port published in `ingress` mode becomes a
//!   service with those ports (Swarm's `PublishedPort` and `TargetPort`);
//! * every task whose current state is `running` and that has an address
//!   on the ingress network becomes a task, carried to the underlay address
//!   of its node (`Status.Addr` of the node); one that Swarm is stopping
//!   (its desired state no longer `running`) gets weight 0, drained as
//!   Swarm's own mesh drains it;
//! * `[node] address` and the whole `[ingress]` table come from this node:
//!   `NodeAddr`, the ingress network's VNI, subnet and MTU, and the address
//!   and MAC of this node's ingress sandbox (`ingress-sbox`), whose place on
//!   the overlay meshgate takes for the published ports.
//!
//! Invariants: nothing here touches the data plane; a failed or odd answer
//! from Docker is an error value, never a panic, and never an empty service
//! list (the caller keeps the last good one). Things that are valid in
//! Swarm but that meshgate cannot carry (SCTP; a task on this very node
//! when meshgate has no ingress sandbox to reach it through)
//! are left out and reported as notes.
//!
//! The requests go through the Engine API client in [`super::engine`].

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use serde_json::Value;

use super::engine::{Docker, EngineError, filters};
pub use crate::config::SwarmFacts;

use crate::config::{
    ClientIp, IngressConfig, OutlierDetection, Protocol, PublishSpec, Scheduler, Service,
    ServiceSpec, TaskSpec, check_unique,
};

/// Why the swarm's state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("Docker API GET {request}: unexpected answer: {what}")]
    Shape { request: String, what: String },
    #[error(
        "this Docker engine is not part of a swarm (LocalNodeState `{0}`); run `docker swarm init` or `docker swarm join` first"
    )]
    NotInSwarm(String),
    #[error(
        "this node has no ingress sandbox on the ingress network yet (no `ingress-sbox` in `docker network inspect ingress`); Docker creates it when the node joins the swarm, retry in a few seconds"
    )]
    NoSandbox,
}

fn shape(request: &str, what: impl Into<String>) -> SwarmError {
    SwarmError::Shape {
        request: request.to_string(),
        what: what.into(),
    }
}

/// The answer to `request`, which must be a JSON list.
fn list<'v>(v: &'v Value, request: &str) -> Result<&'v [Value], SwarmError> {
    v.as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| shape(request, "not a list"))
}

/// `"198.18.128.18/24"` → the address.
fn cidr_host(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next()?.parse().ok()
}

/// Reads this node's swarm facts.
pub fn discover(d: &Docker) -> Result<SwarmFacts, SwarmError> {
    let info = d.get("/info")?;
    let node = swarm_node(&info)?;
    let nets = d.get("/networks")?;
    let ingress_network = list(&nets, "/networks")?
        .iter()
        .find(|n| n["Ingress"].as_bool() == Some(true))
        .and_then(|n| n["Id"].as_str())
        .ok_or_else(|| {
            shape(
                "/networks",
                "no network has Ingress: true; recreate it with `docker network create --ingress --driver overlay ingress`",
            )
        })?
        .to_string();
    let req = format!("/networks/{ingress_network}");
    let net = ingress_facts(&d.get(&req)?, &req)?;
    Ok(SwarmFacts {
        node_id: node.node_id,
        manager: node.manager,
        node_address: node.node_address,
        data_path_port: node.data_path_port,
        ingress_network,
        vni: net.vni,
        subnet: net.subnet,
        sandbox_address: net.sandbox_address,
        sandbox_mac: net.sandbox_mac,
        mtu: net.mtu,
    })
}

/// What `/info` says of this node in its swarm.
struct SwarmNode {
    node_id: String,
    manager: bool,
    node_address: Ipv4Addr,
    data_path_port: u16,
}

fn swarm_node(info: &Value) -> Result<SwarmNode, SwarmError> {
    let sw = &info["Swarm"];
    let state = sw["LocalNodeState"].as_str().unwrap_or("");
    if state != "active" {
        return Err(SwarmError::NotInSwarm(state.to_string()));
    }
    let manager = sw["ControlAvailable"].as_bool() == Some(true);
    let node_id = sw["NodeID"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| shape("/info", "no Swarm.NodeID"))?
        .to_string();
    let node_address: Ipv4Addr = sw["NodeAddr"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            shape(
                "/info",
                format!(
                    "Swarm.NodeAddr {} is not an IPv4 address (meshgate carries IPv4 only)",
                    sw["NodeAddr"]
                ),
            )
        })?;
    let data_path_port = match sw["Cluster"]["DataPathPort"].as_u64() {
        None | Some(0) => 4789,
        Some(p) => u16::try_from(p).map_err(|_| shape("/info", "DataPathPort is not a port"))?,
    };

    Ok(SwarmNode {
        node_id,
        manager,
        node_address,
        data_path_port,
    })
}

/// What the ingress network's own description says: its VNI, subnet and
/// MTU, and this node's ingress sandbox on it.
struct IngressNetwork {
    vni: u32,
    subnet: String,
    mtu: Option<u16>,
    sandbox_address: Ipv4Addr,
    sandbox_mac: String,
}

fn ingress_facts(net: &Value, req: &str) -> Result<IngressNetwork, SwarmError> {
    let vni = net["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            shape(
                req,
                "no VNI in Options.com.docker.network.driver.overlay.vxlanid_list",
            )
        })?;
    let subnet = net["IPAM"]["Config"]
        .as_array()
        .and_then(|c| c.iter().find_map(|c| c["Subnet"].as_str()))
        .filter(|s| s.contains('.'))
        .ok_or_else(|| shape(req, "no IPv4 subnet in IPAM.Config"))?
        .to_string();
    let mtu = match net["Options"]["com.docker.network.driver.mtu"].as_str() {
        None => None,
        Some(m) => Some(
            m.parse::<u16>()
                .map_err(|_| shape(req, format!("MTU option `{m}` is not a number")))?,
        ),
    };
    let sbox = &net["Containers"]["ingress-sbox"];
    if sbox.is_null() {
        return Err(SwarmError::NoSandbox);
    }
    let sandbox_address = sbox["IPv4Address"]
        .as_str()
        .and_then(cidr_host)
        .ok_or_else(|| shape(req, "ingress-sbox has no IPv4Address"))?;
    let sandbox_mac = sbox["MacAddress"]
        .as_str()
        .ok_or_else(|| shape(req, "ingress-sbox has no MacAddress"))?
        .to_string();
    Ok(IngressNetwork {
        vni,
        subnet,
        mtu,
        sandbox_address,
        sandbox_mac,
    })
}

/// The swarm's services in meshgate's terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    /// Sorted by name; tasks sorted by address.
    pub services: Vec<Service>,
    /// What was left out, and why.
    pub notes: Vec<String>,
}

/// Reads the swarm's services and running tasks: on a manager from its
/// cluster API; on a worker from this node's ingress network view, with
/// the ports' protocols from `manager` (a manager's Engine API, when
/// configured) or from this node's `DOCKER-INGRESS` rules.
pub fn read_desired(
    d: &Docker,
    facts: &SwarmFacts,
    ingress: &IngressConfig,
    manager: Option<&Docker>,
    word: Option<&[crate::announce::ServiceWord]>,
    memory: &mut ServiceMemory,
) -> Result<Desired, SwarmError> {
    if !facts.manager {
        let net = d.get(&format!("/networks/{}?verbose=true", facts.ingress_network))?;
        let mut label_notes = Vec::new();
        let protocols = match manager {
            Some(m) => {
                super::ingress_view::protocols_from_services(&m.get("/services")?, &mut label_notes)
            }
            None => match word {
                Some(w) => super::ingress_view::Protocols::from_word(w),
                None => super::ingress_view::protocols_from_rules(&ingress_rules()),
            },
        };
        let mut desired = super::ingress_view::derive(&net, &protocols, facts, ingress);
        desired.notes.extend(label_notes);
        return Ok(desired);
    }
    let services = d.get("/services")?;
    let tasks = d.get(&format!(
        "/tasks?{}",
        // Tasks being stopped too: they are drained while they run.
        filters(&serde_json::json!({ "desired-state": ["running", "shutdown", "remove"] }))
    ))?;
    let nodes = d.get("/nodes")?;
    derive(&services, &tasks, &nodes, facts, ingress, memory)
}

/// What a manager's earlier reads showed of each published service (by
/// service ID): a removed service leaves `/services` at once, while its
/// tasks run on through their stop grace period, and only this says
/// which ports their flows came in by.
#[derive(Debug, Clone, Default)]
pub struct ServiceMemory(BTreeMap<String, (String, ServiceSpec)>);

/// This node's `DOCKER-INGRESS` rules (`iptables -t nat -S
/// DOCKER-INGRESS`), or nothing when iptables or the chain is missing
/// (Docker writes the chain only where IPVS works).
fn ingress_rules() -> String {
    std::process::Command::new("iptables")
        .args(["-t", "nat", "-S", "DOCKER-INGRESS"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The first 12 characters of a Docker ID, as `docker ps` shows it. By
/// characters, not bytes: the ID comes from the daemon's JSON and is not
/// guaranteed to be ASCII (the docker_api fuzz target found the byte cut).
fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(at, _)| &id[..at])
}

/// Turns the Engine API's answers into validated services. Pure: the
/// fixtures below are real answers of Docker 20.10.
///
/// A service removed since an earlier read (`memory`) stays while its
/// tasks run, every task drained: its flows go on, and it takes no new
/// ones, as Swarm's own mesh drains a removed service's tasks. It yields
/// to a live service with its name or one of its ports.
pub fn derive(
    services: &Value,
    tasks: &Value,
    nodes: &Value,
    facts: &SwarmFacts,
    ingress: &IngressConfig,
    memory: &mut ServiceMemory,
) -> Result<Desired, SwarmError> {
    let (services, tasks, nodes) = (
        list(services, "/services")?,
        list(tasks, "/tasks")?,
        list(nodes, "/nodes")?,
    );
    let mut notes = Vec::new();
    let nodes = node_addresses(nodes);
    let mut specs = published_services(services, &mut notes);
    let removed = removed_services(&specs, memory);
    specs.extend(removed.iter().map(|(id, v)| (id.clone(), v.clone())));
    for t in tasks {
        let Some((name, spec)) = t["ServiceID"].as_str().and_then(|id| specs.get_mut(id)) else {
            continue;
        };
        // Running is what counts: a task still starting (or already
        // failed) must not receive flows.
        if t["Status"]["State"].as_str() != Some("running") {
            continue;
        }
        match place_task(t, &nodes, facts, ingress) {
            // A task Swarm is stopping (a rolling update, a scale-down, a
            // drained node: its desired state is no longer `running`)
            // whose container still runs is drained, as Swarm's own mesh
            // drains it (weight 0 before the stop signal): no new flows,
            // its flows go on until it is gone.
            Ok(task)
                if t["DesiredState"].as_str() != Some("running")
                    || t["ServiceID"]
                        .as_str()
                        .is_some_and(|id| removed.contains_key(id)) =>
            {
                spec.tasks.push(TaskSpec {
                    weight: Some(0),
                    ..task
                })
            }
            Ok(task) => spec.tasks.push(task),
            Err(why) => notes.push(format!("service {name}: {why}")),
        }
    }
    for id in removed.keys() {
        match specs.get(id) {
            Some((_, spec)) if spec.tasks.is_empty() => {
                specs.remove(id);
            }
            Some((name, spec)) => notes.push(format!(
                "service {name} was removed: its {} running tasks drain",
                spec.tasks.len()
            )),
            None => {}
        }
    }
    memory.0 = specs
        .iter()
        .map(|(id, (name, spec))| {
            let spec = ServiceSpec {
                tasks: Vec::new(),
                ..spec.clone()
            };
            (id.clone(), (name.clone(), spec))
        })
        .collect();
    Ok(finish_services(
        specs.into_values().collect(),
        ingress,
        facts,
        notes,
    ))
}

/// The services of `memory` that `live` (this read's published services)
/// no longer has, unless a live one has taken their name or a port.
fn removed_services(
    live: &BTreeMap<String, (String, ServiceSpec)>,
    memory: &ServiceMemory,
) -> BTreeMap<String, (String, ServiceSpec)> {
    let port = |p: &PublishSpec| (p.published, p.protocol);
    let names: std::collections::HashSet<&str> = live.values().map(|v| v.0.as_str()).collect();
    let ports: std::collections::HashSet<_> = live
        .values()
        .flat_map(|v| v.1.publish.iter().map(port))
        .collect();
    memory
        .0
        .iter()
        .filter(|(id, (name, spec))| {
            !live.contains_key(*id)
                && !names.contains(name.as_str())
                && !spec.publish.iter().any(|p| ports.contains(&port(p)))
        })
        .map(|(id, v)| (id.clone(), v.clone()))
        .collect()
}

/// Node ID → (underlay address, ready?).
fn node_addresses(nodes: &[Value]) -> HashMap<&str, (Option<Ipv4Addr>, bool)> {
    let mut node_addr = HashMap::new();
    for n in nodes {
        let Some(id) = n["ID"].as_str() else { continue };
        // A manager may report Status.Addr 0.0.0.0 on some versions; its
        // ManagerStatus.Addr ("ip:port") is then the underlay address.
        let status = n["Status"]["Addr"]
            .as_str()
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
            .filter(|a| !a.is_unspecified());
        let manager = n["ManagerStatus"]["Addr"]
            .as_str()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(h, _)| h.parse::<Ipv4Addr>().ok());
        let ready = n["Status"]["State"].as_str() == Some("ready");
        node_addr.insert(id, (status.or(manager), ready));
    }
    node_addr
}

/// Service ID → (name, spec without tasks) of every service with a port
/// published through the routing mesh.
fn published_services(
    services: &[Value],
    notes: &mut Vec<String>,
) -> BTreeMap<String, (String, ServiceSpec)> {
    let mut specs = BTreeMap::new();
    for s in services {
        let (Some(id), Some(name)) = (s["ID"].as_str(), s["Spec"]["Name"].as_str()) else {
            notes.push("a service without ID or name was skipped".into());
            continue;
        };
        let publish = ingress_ports(name, s, notes);
        if publish.is_empty() {
            continue; // not published through the routing mesh
        }
        let spec = ServiceSpec {
            name: name.to_string(),
            scheduler: Scheduler::Rr,
            client_ip: client_ip_label(name, s, notes),
            outlier_detection: outlier_label(name, s, notes),
            publish,
            tasks: Vec::new(),
        };
        specs.insert(id.to_string(), (name.to_string(), spec));
    }
    specs
}

/// The Docker label that asks meshgate to keep clients' addresses.
pub const CLIENT_IP_LABEL: &str = "meshgate.client-ip";

/// A service's client-IP mode from its `meshgate.client-ip` label
/// (`preserve` or `snat`; absent means `snat`, as in Swarm).
pub fn client_ip_label(name: &str, service: &Value, notes: &mut Vec<String>) -> ClientIp {
    let means = "preserve or snat; its tasks see the sandbox's address";
    label_setting(name, service, CLIENT_IP_LABEL, means, notes)
}

/// The Docker label that turns passive health checks of a service's
/// tasks off (or on: the default).
pub const OUTLIER_LABEL: &str = "meshgate.outlier-detection";

/// A service's outlier detection from its `meshgate.outlier-detection`
/// label (`on` or `off`; absent means `on`).
pub fn outlier_label(name: &str, service: &Value, notes: &mut Vec<String>) -> OutlierDetection {
    let means = "on or off; its tasks are health-checked";
    label_setting(name, service, OUTLIER_LABEL, means, notes)
}

/// A setting of a service from its label `label`, spelled as the setting's
/// own (serde) name: absent means the default; a value the setting does not
/// know is noted, with what the label takes and what happens (`means`), and
/// read as the default.
fn label_setting<T: serde::de::DeserializeOwned + Default>(
    name: &str,
    service: &Value,
    label: &str,
    means: &str,
    notes: &mut Vec<String>,
) -> T {
    let Some(v) = service["Spec"]["Labels"][label].as_str() else {
        return T::default();
    };
    serde_json::from_value(Value::String(v.to_string())).unwrap_or_else(|_| {
        notes.push(format!(
            "service {name}: label {label}={v:?} not understood ({means})"
        ));
        T::default()
    })
}

/// A service's ports published in ingress mode.
fn ingress_ports(name: &str, service: &Value, notes: &mut Vec<String>) -> Vec<PublishSpec> {
    // Endpoint.Ports is what Swarm allocated (published ports chosen by
    // Swarm included); the spec only has what the user asked for.
    let Some(ports) = service["Endpoint"]["Ports"].as_array() else {
        return Vec::new();
    };
    let mut publish = Vec::new();
    for p in ports {
        let mode = p["PublishMode"].as_str().unwrap_or("ingress");
        if mode != "ingress" {
            continue; // host-mode ports bypass the routing mesh
        }
        let protocol = match p["Protocol"].as_str().unwrap_or("tcp") {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                notes.push(format!(
                    "service {name}: port {}/{other} left out (meshgate carries TCP and UDP)",
                    p["PublishedPort"]
                ));
                continue;
            }
        };
        let (Some(published), Some(target)) =
            (p["PublishedPort"].as_i64(), p["TargetPort"].as_i64())
        else {
            notes.push(format!(
                "service {name}: a published port without numbers was skipped"
            ));
            continue;
        };
        publish.push(PublishSpec {
            published,
            target,
            protocol,
        });
    }
    publish
}

/// Where a running task is reached: its ingress address and its node's
/// underlay address (this node's own for a task here, reached through the
/// sandbox); or why it is left out.
fn place_task(
    t: &Value,
    nodes: &HashMap<&str, (Option<Ipv4Addr>, bool)>,
    facts: &SwarmFacts,
    ingress: &IngressConfig,
) -> Result<TaskSpec, String> {
    let short = short_id(t["ID"].as_str().unwrap_or("?"));
    let address = t["NetworksAttachments"].as_array().and_then(|atts| {
        atts.iter()
            .find(|a| {
                a["Network"]["ID"].as_str() == Some(facts.ingress_network.as_str())
                    || a["Network"]["Spec"]["Ingress"].as_bool() == Some(true)
            })
            .and_then(|a| a["Addresses"].as_array())
            .and_then(|a| a.iter().find_map(|x| x.as_str().and_then(cidr_host)))
    });
    let Some(address) = address else {
        return Err(format!(
            "task {short} has no address on the ingress network yet"
        ));
    };
    let node_id = t["NodeID"].as_str().unwrap_or("");
    let node = if node_id == facts.node_id {
        if ingress.sandbox.is_none() {
            return Err(format!(
                "task {short} ({address}) left out: it runs on this node, whose ingress sandbox meshgate has not found; set swarm.sandbox to <docker exec-root>/netns/ingress_sbox"
            ));
        }
        facts.node_address
    } else {
        match nodes.get(node_id) {
            Some((Some(vtep), true)) => *vtep,
            Some((Some(_), false)) => {
                return Err(format!(
                    "task {short} ({address}) left out: its node {node_id} is not ready"
                ));
            }
            _ => {
                return Err(format!(
                    "task {short} ({address}) left out: no underlay address for node {node_id}"
                ));
            }
        }
    };
    Ok(TaskSpec {
        address: address.to_string(),
        node: node.to_string(),
        mac: None,
        weight: None,
    })
}

/// Validates derived services (sorted by name, tasks by address) into a
/// [`Desired`]; a service that does not validate is left out with a note.
pub(crate) fn finish_services(
    mut by_name: Vec<(String, ServiceSpec)>,
    ingress: &IngressConfig,
    facts: &SwarmFacts,
    mut notes: Vec<String>,
) -> Desired {
    let mut out: Vec<Service> = Vec::new();
    by_name.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut spec) in by_name {
        spec.tasks
            .sort_by_key(|t| t.address.parse::<Ipv4Addr>().ok());
        match Service::from_spec(&spec, ingress, facts.node_address) {
            Ok(svc) => {
                out.push(svc);
                if let Err((key, msg)) = check_unique(&out) {
                    out.pop();
                    notes.push(format!("service {name} left out: {key}: {msg}"));
                }
            }
            Err((key, msg)) => notes.push(format!("service {name} left out: {key}: {msg}")),
        }
    }
    Desired {
        services: out,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::docker::docker_fixtures::*;

    fn run(services: &str, tasks: &str, nodes: &str) -> Desired {
        run_after(&mut ServiceMemory::default(), services, tasks, nodes)
    }

    fn run_after(memory: &mut ServiceMemory, services: &str, tasks: &str, nodes: &str) -> Desired {
        derive(
            &serde_json::from_str(services).unwrap(),
            &serde_json::from_str(tasks).unwrap(),
            &serde_json::from_str(nodes).unwrap(),
            &facts(),
            &ingress(),
            memory,
        )
        .unwrap()
    }

    /// `docker service rm`: the service leaves `/services` at once, its
    /// tasks (desired state `remove`) run on until they stop. Meanwhile
    /// the service stays with every task drained; then it is gone. A new
    /// service on its port takes the port at once.
    #[test]
    fn a_removed_service_drains_while_its_tasks_run() {
        let mut memory = ServiceMemory::default();
        let before = run_after(&mut memory, SERVICES, TASKS, NODES);
        assert_eq!(before.services[0].tasks.len(), 3);
        let removing = TASKS.replace(r#""DesiredState":"running""#, r#""DesiredState":"remove""#);
        let d = run_after(&mut memory, "[]", &removing, NODES);
        assert_eq!(d.services.len(), 1, "{d:?}");
        assert_eq!(d.services[0].name, before.services[0].name);
        assert_eq!(d.services[0].publish, before.services[0].publish);
        assert_eq!(d.services[0].tasks.len(), 3);
        assert!(d.services[0].tasks.iter().all(|t| t.weight == 0));
        assert!(
            d.notes.iter().any(|n| n.contains("was removed")),
            "{:?}",
            d.notes
        );
        // Its tasks as Docker still lists them with desired state
        // `running` in a read that raced the removal: drained all the same.
        let d = run_after(&mut memory, "[]", TASKS, NODES);
        assert!(d.services[0].tasks.iter().all(|t| t.weight == 0));
        // Stopped: gone, and forgotten.
        let stopped = removing.replace(
            r#""Status":{"State":"running""#,
            r#""Status":{"State":"shutdown""#,
        );
        assert!(
            run_after(&mut memory, "[]", &stopped, NODES)
                .services
                .is_empty()
        );
        assert!(
            run_after(&mut memory, "[]", &removing, NODES)
                .services
                .is_empty()
        );
    }

    #[test]
    fn a_new_service_on_a_removed_ones_port_takes_it_at_once() {
        let mut memory = ServiceMemory::default();
        run_after(&mut memory, SERVICES, TASKS, NODES);
        let renamed = SERVICES.replace(r#""ID":""#, r#""ID":"new"#);
        assert_ne!(renamed, SERVICES);
        let d = run_after(&mut memory, &renamed, "[]", NODES);
        assert_eq!(d.services.len(), 1, "{d:?}");
        assert!(d.services[0].tasks.is_empty(), "the new one: {d:?}");
    }

    #[test]
    fn the_client_ip_label_chooses_the_mode() {
        let mut notes = Vec::new();
        let svc = |label: &str| serde_json::json!({"Spec": {"Labels": {CLIENT_IP_LABEL: label}}});
        assert_eq!(
            client_ip_label("web", &svc("preserve"), &mut notes),
            ClientIp::Preserve
        );
        assert_eq!(
            client_ip_label("web", &svc("snat"), &mut notes),
            ClientIp::Snat
        );
        assert_eq!(
            client_ip_label("web", &serde_json::json!({"Spec": {}}), &mut notes),
            ClientIp::Snat
        );
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            client_ip_label("web", &svc("yes"), &mut notes),
            ClientIp::Snat
        );
        assert!(
            notes[0].contains("meshgate.client-ip=\"yes\" not understood"),
            "{notes:?}"
        );
        // The real answer has no label: Swarm's SNAT.
        assert_eq!(
            run(SERVICES, TASKS, NODES).services[0].client_ip,
            ClientIp::Snat
        );
    }

    #[test]
    fn real_swarm_answers_become_a_service() {
        let d = run(SERVICES, TASKS, NODES);
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(d.services.len(), 1);
        let web = &d.services[0];
        assert_eq!(web.name, "web");
        assert_eq!(web.scheduler, Scheduler::Rr);
        assert_eq!(
            (
                web.publish[0].published,
                web.publish[0].target,
                web.publish[0].protocol
            ),
            (8080, 80, Protocol::Tcp)
        );
        let addrs: Vec<String> = web.tasks.iter().map(|t| t.address.to_string()).collect();
        assert_eq!(addrs, ["198.18.128.18", "198.18.128.19", "198.18.128.20"]);
        assert!(
            web.tasks
                .iter()
                .all(|t| t.node == Ipv4Addr::new(198, 18, 0, 11))
        );
        // Docker derives a container's MAC from its address.
        assert_eq!(web.tasks[0].mac.to_string(), "02:42:c6:12:80:12");
    }

    #[test]
    fn starting_and_local_tasks_are_left_out() {
        let tasks = TASKS
            .replacen(r#""Status":{"State":"running"}"#, r#""Status":{"State":"starting"}"#, 1)
            .replacen(
                r#""NodeID":"rwqnic9oiedgcroolvzz3yz9g","DesiredState":"running","Status":{"State":"running"},"NetworksAttachments":[{"Network":{"ID":"g61z0msna4i4bmd4g9zxacfou","Spec":{"Name":"ingress","Ingress":true}},"Addresses":["198.18.128.18/24"]"#,
                r#""NodeID":"ieau4xomuc2kmaf95o8kef0pn","DesiredState":"running","Status":{"State":"running"},"NetworksAttachments":[{"Network":{"ID":"g61z0msna4i4bmd4g9zxacfou","Spec":{"Name":"ingress","Ingress":true}},"Addresses":["198.18.128.18/24"]"#,
                1,
            );
        let d = run(SERVICES, &tasks, NODES);
        let addrs: Vec<String> = d.services[0]
            .tasks
            .iter()
            .map(|t| t.address.to_string())
            .collect();
        assert_eq!(addrs, ["198.18.128.20"]);
        assert_eq!(d.notes.len(), 1, "{:?}", d.notes);
        assert!(d.notes[0].contains("runs on this node"), "{:?}", d.notes);

        // With the ingress sandbox found, the local task is in, carried to
        // this node's own address.
        let mut with = ingress();
        with.sandbox = Some("/proc/self/ns/net".into());
        let d = derive(
            &serde_json::from_str(SERVICES).unwrap(),
            &serde_json::from_str(&tasks).unwrap(),
            &serde_json::from_str(NODES).unwrap(),
            &facts(),
            &with,
            &mut ServiceMemory::default(),
        )
        .unwrap();
        let tasks: Vec<(String, Ipv4Addr)> = d.services[0]
            .tasks
            .iter()
            .map(|t| (t.address.to_string(), t.node))
            .collect();
        assert_eq!(
            tasks,
            [
                ("198.18.128.18".to_string(), facts().node_address),
                ("198.18.128.20".to_string(), Ipv4Addr::new(198, 18, 0, 11))
            ]
        );
        assert!(d.notes.is_empty(), "{:?}", d.notes);
    }

    /// A rolling update, a scale-down or a drained node: Swarm sets the
    /// task's desired state to `shutdown` (or `remove`) while its
    /// container still runs, then stops it. Meanwhile it is drained;
    /// once it no longer runs it is gone.
    #[test]
    fn tasks_being_stopped_are_drained_until_they_stop() {
        let stopping = TASKS.replacen(
            r#""DesiredState":"running","Status":{"State":"running"}"#,
            r#""DesiredState":"shutdown","Status":{"State":"running"}"#,
            1,
        );
        assert_ne!(stopping, TASKS);
        let d = run(SERVICES, &stopping, NODES);
        let weights: Vec<(String, u32)> = d.services[0]
            .tasks
            .iter()
            .map(|t| (t.address.to_string(), t.weight))
            .collect();
        let drained: Vec<_> = weights.iter().filter(|(_, w)| *w == 0).collect();
        assert_eq!(drained.len(), 1, "{weights:?}");
        assert_eq!(
            weights.len(),
            3,
            "the stopping task is still there: {weights:?}"
        );
        // `remove` (a removed service or a scale-down) drains as well.
        let removing = stopping.replacen(
            r#""DesiredState":"shutdown""#,
            r#""DesiredState":"remove""#,
            1,
        );
        let d = run(SERVICES, &removing, NODES);
        assert_eq!(
            d.services[0].tasks.iter().filter(|t| t.weight == 0).count(),
            1
        );
        // Stopped: gone.
        let stopped = stopping.replacen(
            r#""DesiredState":"shutdown","Status":{"State":"running"}"#,
            r#""DesiredState":"shutdown","Status":{"State":"shutdown"}"#,
            1,
        );
        let d = run(SERVICES, &stopped, NODES);
        assert_eq!(d.services[0].tasks.len(), 2);
        assert!(d.services[0].tasks.iter().all(|t| t.weight == 1));
    }

    #[test]
    fn tasks_on_down_nodes_and_unknown_nodes_are_left_out() {
        let nodes = NODES.replace(
            r#""State":"ready","Addr":"198.18.0.11""#,
            r#""State":"down","Addr":"198.18.0.11""#,
        );
        let d = run(SERVICES, TASKS, &nodes);
        assert!(d.services[0].tasks.is_empty());
        assert_eq!(d.notes.len(), 3);
        assert!(d.notes.iter().all(|n| n.contains("not ready")));
        let d = run(SERVICES, TASKS, "[]");
        assert!(d.services[0].tasks.is_empty());
        assert!(d.notes.iter().all(|n| n.contains("no underlay address")));
    }

    #[test]
    fn task_ids_are_shortened_by_characters() {
        assert_eq!(short_id("yg37k5f54vvl6roq9amkmdbux"), "yg37k5f54vvl");
        assert_eq!(short_id("abc"), "abc");
        // The docker_api fuzz target's crash: a two-byte character across
        // byte 12.
        let tasks = TASKS.replace("yg37k5f54vvl6roq", "yDesireg37k\u{2e0}54vvl6roq");
        let nodes = NODES.replace(
            r#""State":"ready","Addr":"198.18.0.11""#,
            r#""State":"down","Addr":"198.18.0.11""#,
        );
        let d = run(SERVICES, &tasks, &nodes);
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("task yDesireg37k\u{2e0} ")),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn host_mode_and_sctp_ports_are_not_routing_mesh_ports() {
        let host = SERVICES.replace(
            r#""PublishMode":"ingress"}],"VirtualIPs""#,
            r#""PublishMode":"host"}],"VirtualIPs""#,
        );
        let d = run(&host, TASKS, NODES);
        assert!(d.services.is_empty(), "{:?}", d.services);
        let sctp = SERVICES.replace(r#"[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}],"VirtualIPs""#, r#"[{"Protocol":"sctp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"},{"Protocol":"udp","TargetPort":53,"PublishedPort":5353,"PublishMode":"ingress"}],"VirtualIPs""#);
        let d = run(&sctp, TASKS, NODES);
        assert_eq!(d.services[0].publish.len(), 1);
        assert_eq!(d.services[0].publish[0].protocol, Protocol::Udp);
        assert!(d.notes[0].contains("sctp"), "{:?}", d.notes);
    }

    #[test]
    fn conflicting_services_keep_the_first_by_name() {
        let two = format!(
            "[{},{}]",
            &SERVICES[1..SERVICES.len() - 1],
            SERVICES[1..SERVICES.len() - 1]
                .replace("xv8ctzjgiu7fe980hoe7res7z", "other")
                .replace(r#""Name":"web""#, r#""Name":"api""#)
        );
        let d = run(&two, TASKS, NODES);
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.services[0].name, "api");
        assert!(
            d.notes[0].starts_with("service web left out"),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn odd_answers_are_errors_not_panics() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let m = &mut ServiceMemory::default();
        assert!(derive(&v("{}"), &v("[]"), &v("[]"), &facts(), &ingress(), m).is_err());
        assert!(derive(&v("[]"), &v("null"), &v("[]"), &facts(), &ingress(), m).is_err());
        let d = derive(
            &v("[1, {}, {\"ID\": 3}]"),
            &v("[1, {}]"),
            &v("[{}]"),
            &facts(),
            &ingress(),
            m,
        )
        .unwrap();
        assert!(d.services.is_empty());
    }
}
