//! What every swarm node can read, worker or manager: the ingress network's
//! load-balancer view (`GET /networks/INGRESS?verbose=true`).
//!
//! On a worker, Docker's cluster API (`/services`, `/tasks`, `/nodes`)
//! answers "This node is not a swarm manager". The verbose ingress network
//! answers on every node: `Services.<name>` has `Ports` (strings such as
//! `"Target: 80, Publish: 8080"`) and `Tasks[]` with `EndpointIP` and
//! `Info["Host IP"]` (the task's node, its VTEP). The view names no
//! protocol: a TCP and a UDP port give the same string. meshgate never
//! guesses one; it takes it from one of two sources ([`Protocols`]):
//!
//! - a manager's Engine API, when `swarm.manager` names one: its
//!   `/services` give each published port with its protocol;
//! - otherwise the DNAT rules Docker programs on every node for the
//!   routing mesh (`iptables -t nat -S DOCKER-INGRESS`: `-p tcp --dport
//!   8080`). They name the port's protocols but not the service, so a port
//!   number published by two services (one TCP, one UDP) is ambiguous and
//!   left out with a note. Docker programs them only where IPVS works.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde_json::Value;

use super::swarm::{Desired, SwarmFacts, finish_services};
use super::swarm::{client_ip_label, outlier_label};
use crate::announce::ServiceWord;
use crate::config::{IngressConfig, Protocol, PublishSpec, Scheduler, ServiceSpec, TaskSpec};

/// Where the protocols of published ports come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocols {
    /// From a manager (its Engine API as `swarm.manager`, or what its
    /// meshgate announces): by service name, the ports with their
    /// protocols, the client-IP mode and outlier detection its labels ask
    /// for, and the tasks being drained (only a manager knows any of it).
    Manager(HashMap<String, ServiceWord>),
    /// From this node's `DOCKER-INGRESS` rules: published port → protocols.
    Rules(HashMap<u16, BTreeSet<Protocol>>),
}

impl Protocols {
    /// What managers announced, as [`Protocols::Manager`].
    pub fn from_word(word: &[ServiceWord]) -> Protocols {
        Protocols::Manager(word.iter().map(|w| (w.name.clone(), w.clone())).collect())
    }
}

/// A manager's `/services` as [`Protocols::Manager`] (its tasks are not
/// read: none is drained).
pub fn protocols_from_services(services: &Value, notes: &mut Vec<String>) -> Protocols {
    let mut m: HashMap<String, ServiceWord> = HashMap::new();
    for s in services.as_array().into_iter().flatten() {
        let Some(name) = s["Spec"]["Name"].as_str() else {
            continue;
        };
        let mut word = ServiceWord {
            name: name.to_string(),
            ports: Vec::new(),
            client_ip: client_ip_label(name, s, notes),
            outlier_detection: outlier_label(name, s, notes),
            drained: BTreeSet::new(),
        };
        for p in s["Endpoint"]["Ports"].as_array().into_iter().flatten() {
            if p["PublishMode"].as_str().unwrap_or("ingress") != "ingress" {
                continue;
            }
            let proto = match p["Protocol"].as_str().unwrap_or("tcp") {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => continue,
            };
            let port = |k: &str| p[k].as_u64().and_then(|v| u16::try_from(v).ok());
            if let (Some(published), Some(target)) = (port("PublishedPort"), port("TargetPort")) {
                word.ports.push((published, target, proto));
            }
        }
        m.insert(name.to_string(), word);
    }
    Protocols::Manager(m)
}

/// `iptables -t nat -S DOCKER-INGRESS` as [`Protocols::Rules`]. Docker's
/// rules read `-A DOCKER-INGRESS -p tcp -m tcp --dport 8080 -j DNAT
/// --to-destination 172.18.0.2:8080`; other lines are ignored.
pub fn protocols_from_rules(text: &str) -> Protocols {
    let mut m: HashMap<u16, BTreeSet<Protocol>> = HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() != Some(&"-A") || !words.contains(&"DNAT") {
            continue;
        }
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
        };
        let proto = match after("-p").copied() {
            Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            _ => continue,
        };
        if let Some(port) = after("--dport").and_then(|p| p.parse::<u16>().ok()) {
            m.entry(port).or_default().insert(proto);
        }
    }
    Protocols::Rules(m)
}

/// `"Target: 80, Publish: 8080"` → (published 8080, target 80).
fn parse_port(s: &str) -> Option<(u16, u16)> {
    let mut target = None;
    let mut publish = None;
    for part in s.split(',') {
        let (k, v) = part.split_once(':')?;
        let v: u16 = v.trim().parse().ok()?;
        match k.trim() {
            "Target" => target = Some(v),
            "Publish" => publish = Some(v),
            _ => {}
        }
    }
    Some((publish?, target?))
}

/// Turns this node's verbose ingress network into validated services.
/// Pure: the tests feed it a real answer of a Docker 20.10 worker.
pub fn derive(
    net: &Value,
    protocols: &Protocols,
    facts: &SwarmFacts,
    ingress: &IngressConfig,
) -> Desired {
    let mut notes = Vec::new();
    let services: Vec<(&String, &Value)> = net["Services"]
        .as_object()
        .into_iter()
        .flatten()
        // "" lists every node's ingress endpoint, not a service.
        .filter(|(name, _)| !name.is_empty())
        .collect();
    let ports = ViewPorts::read(&services, &mut notes);
    let mut specs = Vec::new();
    for (name, svc) in &services {
        let publish = ports.publish(name, protocols, &mut notes);
        if publish.is_empty() {
            continue;
        }
        let word = match protocols {
            Protocols::Manager(m) => m.get(name.as_str()),
            Protocols::Rules(_) => None,
        };
        let tasks = view_tasks(name, svc, word, facts, ingress, &mut notes);
        specs.push((
            name.to_string(),
            ServiceSpec {
                name: name.to_string(),
                scheduler: Scheduler::Rr,
                // A worker's own API shows no service labels: the managers'
                // word, else the defaults.
                client_ip: word.map(|w| w.client_ip).unwrap_or_default(),
                outlier_detection: word.map(|w| w.outlier_detection).unwrap_or_default(),
                publish,
                tasks,
            },
        ));
    }
    finish_services(specs, ingress, facts, notes)
}

/// The view's ports: per service its (published, target) pairs, and per
/// published port the services that publish it (for the rules'
/// ambiguity).
struct ViewPorts<'v> {
    of: BTreeMap<&'v str, BTreeSet<(u16, u16)>>,
    by_port: BTreeMap<u16, BTreeSet<&'v str>>,
}

impl<'v> ViewPorts<'v> {
    fn read(services: &[(&'v String, &'v Value)], notes: &mut Vec<String>) -> ViewPorts<'v> {
        let mut v = ViewPorts {
            of: BTreeMap::new(),
            by_port: BTreeMap::new(),
        };
        for (name, svc) in services {
            for s in svc["Ports"].as_array().into_iter().flatten() {
                match s.as_str().and_then(parse_port) {
                    Some(pt) => {
                        v.of.entry(name.as_str()).or_default().insert(pt);
                        v.by_port.entry(pt.0).or_default().insert(name.as_str());
                    }
                    None => notes.push(format!("service {name}: port `{s}` not understood")),
                }
            }
        }
        v
    }

    /// Service `name`'s ports with the protocols `protocols` give them;
    /// a port whose protocol is not known is left out with a note.
    fn publish(
        &self,
        name: &str,
        protocols: &Protocols,
        notes: &mut Vec<String>,
    ) -> Vec<PublishSpec> {
        let mut publish = Vec::new();
        for &(published, target) in self.of.get(name).into_iter().flatten() {
            let protos: Vec<Protocol> = match protocols {
                Protocols::Manager(m) => m
                    .get(name)
                    .into_iter()
                    .flat_map(|w| &w.ports)
                    .filter(|&&(p, t, _)| (p, t) == (published, target))
                    .map(|&(_, _, proto)| proto)
                    .collect(),
                Protocols::Rules(r) => {
                    if self.by_port[&published].len() > 1 {
                        notes.push(format!(
                            "service {name}: port {published} left out: several services publish it and this node's rules do not say which protocol is whose (set node.announce_key)"
                        ));
                        continue;
                    }
                    r.get(&published).into_iter().flatten().copied().collect()
                }
            };
            if protos.is_empty() {
                notes.push(format!(
                    "service {name}: port {published} left out: its protocol is not known yet ({})",
                    match protocols {
                        Protocols::Manager(_) => "the manager does not list it",
                        Protocols::Rules(_) =>
                            "no DOCKER-INGRESS rule for it on this node, and no manager's meshgate announces it; set node.announce_key",
                    }
                ));
            }
            publish.extend(protos.into_iter().map(|protocol| PublishSpec {
                published: i64::from(published),
                target: i64::from(target),
                protocol,
            }));
        }
        publish
    }
}

/// Service `name`'s tasks in the view, each at its address on its node;
/// drained when the managers' `word` says it is being stopped.
fn view_tasks(
    name: &str,
    svc: &Value,
    word: Option<&ServiceWord>,
    facts: &SwarmFacts,
    ingress: &IngressConfig,
    notes: &mut Vec<String>,
) -> Vec<TaskSpec> {
    let mut tasks = Vec::new();
    for t in svc["Tasks"].as_array().into_iter().flatten() {
        let task = t["Name"].as_str().unwrap_or("?");
        let ip = |v: &Value| v.as_str().and_then(|a| a.parse::<Ipv4Addr>().ok());
        match (ip(&t["EndpointIP"]), ip(&t["Info"]["Host IP"])) {
            (Some(address), Some(node))
                if node == facts.node_address && ingress.sandbox.is_none() =>
            {
                notes.push(format!(
                    "service {name}: task {task} ({address}) left out: it runs on this node, whose ingress sandbox meshgate has not found; set swarm.sandbox to <docker exec-root>/netns/ingress_sbox"
                ))
            }
            (Some(address), Some(node)) => tasks.push(TaskSpec {
                address: address.to_string(),
                node: node.to_string(),
                mac: None,
                // Being stopped, as only a manager knows: drained.
                weight: word
                    .is_some_and(|w| w.drained.contains(&address))
                    .then_some(0),
            }),
            _ => notes.push(format!(
                "service {name}: task {task} left out: no endpoint address or node in the ingress view"
            )),
        }
    }
    tasks
}

/// Every node's ingress endpoint and this node's containers on the
/// ingress network, from the verbose ingress network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressEndpoints {
    /// (sandbox address, its node's address), one per swarm node: the
    /// service named "" lists them.
    pub sandboxes: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// (container ID, address) of this node's containers, the ingress
    /// sandbox left out.
    pub containers: Vec<(String, Ipv4Addr)>,
}

/// Reads [`IngressEndpoints`] from `GET /networks/INGRESS?verbose=true`.
pub fn ingress_endpoints(net: &Value) -> IngressEndpoints {
    let ip = |v: &Value| {
        v.as_str()
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
    };
    let sandboxes = net["Services"][""]["Tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((ip(&t["EndpointIP"])?, ip(&t["Info"]["Host IP"])?)))
        .collect();
    let containers = net["Containers"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(id, _)| id.as_str() != "ingress-sbox")
        .filter_map(|(id, c)| Some((id.clone(), ip(&c["IPv4Address"])?)))
        .collect();
    IngressEndpoints {
        sandboxes,
        containers,
    }
}

/// A container's network namespace (`GET /containers/ID/json`:
/// `NetworkSettings.SandboxKey`, such as `/var/run/docker/netns/1a2b…`).
pub fn sandbox_key(container: &Value) -> Option<std::path::PathBuf> {
    container["NetworkSettings"]["SandboxKey"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::docker_fixtures::*;

    fn worker_facts() -> SwarmFacts {
        SwarmFacts {
            node_id: "gmlozumb0mqdfnfjgs34d7e5j".into(),
            node_address: Ipv4Addr::new(198, 18, 0, 11),
            manager: false,
            ..facts()
        }
    }

    fn ports(d: &Desired, name: &str) -> Vec<String> {
        d.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| {
                s.publish
                    .iter()
                    .map(|p| format!("{}:{}/{}", p.published, p.target, p.protocol))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_worker_view_with_the_managers_protocols() {
        let net: Value = serde_json::from_str(WORKER_INGRESS).unwrap();
        let p = protocols_from_services(
            &serde_json::from_str(MANAGER_SERVICES).unwrap(),
            &mut Vec::new(),
        );
        let d = derive(&net, &p, &worker_facts(), &ingress());
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(ports(&d, "web"), ["8080:80/tcp"]);
        assert_eq!(ports(&d, "dns"), ["9053:53/udp"]);
        assert_eq!(ports(&d, "both"), ["7070:70/tcp", "7070:70/udp"]);
        let web = d.services.iter().find(|s| s.name == "web").unwrap();
        let tasks: Vec<(String, String)> = web
            .tasks
            .iter()
            .map(|t| (t.address.to_string(), t.node.to_string()))
            .collect();
        assert_eq!(
            tasks,
            [
                ("198.18.128.5".to_string(), "198.18.0.2".to_string()),
                ("198.18.128.6".to_string(), "198.18.0.2".to_string())
            ]
        );
    }

    /// What a manager's meshgate announces, through the signed format and
    /// back, is what a worker's view takes: protocols, the label's mode
    /// and the drained task at weight 0.
    #[test]
    fn a_worker_view_with_a_managers_announced_word() {
        use crate::announce::{Content, Keys, Sender, Verifier};
        let Protocols::Manager(m) = protocols_from_services(
            &serde_json::from_str(MANAGER_SERVICES).unwrap(),
            &mut Vec::new(),
        ) else {
            unreachable!("a manager's answer")
        };
        let mut word: Vec<ServiceWord> = m.into_values().collect();
        let web = word.iter_mut().find(|w| w.name == "web").unwrap();
        web.client_ip = crate::config::ClientIp::Preserve;
        web.drained.insert(Ipv4Addr::new(198, 18, 128, 5));
        let keys = Keys::parse(b"the swarm's key, long enough").unwrap();
        let manager = Ipv4Addr::new(198, 18, 0, 2);
        let sent = Content::Services(word);
        let mut heard = None;
        let mut v = Verifier::new(keys.clone());
        for d in Sender::new(manager).encode(&keys, &sent) {
            heard = v
                .receive(manager, &d, std::time::Instant::now(), |_| true)
                .unwrap();
        }
        let Some((_, Content::Services(heard))) = heard else {
            panic!("no set heard")
        };
        let net: Value = serde_json::from_str(WORKER_INGRESS).unwrap();
        let d = derive(
            &net,
            &Protocols::from_word(&heard),
            &worker_facts(),
            &ingress(),
        );
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(ports(&d, "both"), ["7070:70/tcp", "7070:70/udp"]);
        let web = d.services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.client_ip, crate::config::ClientIp::Preserve);
        let weights: Vec<(String, u32)> = web
            .tasks
            .iter()
            .map(|t| (t.address.to_string(), t.weight))
            .collect();
        assert_eq!(
            weights,
            [
                ("198.18.128.5".to_string(), 0),
                ("198.18.128.6".to_string(), 1)
            ]
        );
    }

    #[test]
    fn a_worker_view_with_the_nodes_rules() {
        let net: Value = serde_json::from_str(WORKER_INGRESS).unwrap();
        let d = derive(
            &net,
            &protocols_from_rules(RULES),
            &worker_facts(),
            &ingress(),
        );
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert_eq!(ports(&d, "web"), ["8080:80/tcp"]);
        assert_eq!(ports(&d, "dns"), ["9053:53/udp"]);
        assert_eq!(ports(&d, "both"), ["7070:70/tcp", "7070:70/udp"]);
    }

    #[test]
    fn no_protocol_no_port() {
        let net: Value = serde_json::from_str(WORKER_INGRESS).unwrap();
        // No rules (Docker without IPVS writes none): nothing is guessed.
        let d = derive(&net, &protocols_from_rules(""), &worker_facts(), &ingress());
        assert!(d.services.is_empty());
        assert_eq!(d.notes.len(), 3, "{:?}", d.notes);
        assert!(d.notes.iter().all(|n| n.contains("node.announce_key")));
        // Two services on one port number, one TCP and one UDP: the rules
        // cannot say whose is which.
        let twisted = WORKER_INGRESS.replace("Publish: 9053", "Publish: 8080");
        let rules = RULES.replace("--dport 9053", "--dport 8080");
        let d = derive(
            &serde_json::from_str(&twisted).unwrap(),
            &protocols_from_rules(&rules),
            &worker_facts(),
            &ingress(),
        );
        assert_eq!(ports(&d, "web"), Vec::<String>::new());
        assert_eq!(ports(&d, "dns"), Vec::<String>::new());
        assert_eq!(ports(&d, "both"), ["7070:70/tcp", "7070:70/udp"]);
        assert!(d.notes.iter().any(|n| n.contains("several services")));
    }

    #[test]
    fn tasks_on_this_node_are_left_out_with_a_note() {
        let net: Value = serde_json::from_str(WORKER_INGRESS).unwrap();
        let p = protocols_from_services(
            &serde_json::from_str(MANAGER_SERVICES).unwrap(),
            &mut Vec::new(),
        );
        let mut facts = worker_facts();
        facts.node_address = Ipv4Addr::new(198, 18, 0, 2);
        let d = derive(&net, &p, &facts, &ingress());
        assert_eq!(d.notes.len(), 6, "{:?}", d.notes);
        assert!(d.services.iter().all(|s| s.tasks.is_empty()));
        // Reached through the ingress sandbox, when meshgate has it.
        let mut with = ingress();
        with.sandbox = Some("/proc/self/ns/net".into());
        let d = derive(&net, &p, &facts, &with);
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        assert!(
            d.services.iter().all(
                |s| !s.tasks.is_empty() && s.tasks.iter().all(|t| t.node == facts.node_address)
            )
        );
    }

    #[test]
    fn every_nodes_sandbox_and_this_nodes_containers() {
        let net: Value = serde_json::from_str(WORKER_INGRESS).unwrap();
        let e = ingress_endpoints(&net);
        assert_eq!(
            e.sandboxes,
            [
                (
                    Ipv4Addr::new(198, 18, 128, 3),
                    Ipv4Addr::new(198, 18, 0, 11)
                ),
                (Ipv4Addr::new(198, 18, 128, 2), Ipv4Addr::new(198, 18, 0, 2)),
            ]
        );
        assert!(e.containers.is_empty(), "the sandbox is not a container");
        let with_task = WORKER_INGRESS.replace(
            r#""Containers":{"#,
            r#""Containers":{"9f3c":{"Name":"web.1.x","MacAddress":"02:42:c6:12:80:05","IPv4Address":"198.18.128.5/24"},"#,
        );
        let e = ingress_endpoints(&serde_json::from_str(&with_task).unwrap());
        assert_eq!(
            e.containers,
            [("9f3c".to_string(), Ipv4Addr::new(198, 18, 128, 5))]
        );
        let c =
            serde_json::json!({"NetworkSettings": {"SandboxKey": "/var/run/docker/netns/1a2b"}});
        assert_eq!(
            sandbox_key(&c),
            Some(std::path::PathBuf::from("/var/run/docker/netns/1a2b"))
        );
        assert_eq!(sandbox_key(&serde_json::json!({})), None);
    }

    #[test]
    fn port_strings() {
        assert_eq!(parse_port("Target: 80, Publish: 8080"), Some((8080, 80)));
        assert_eq!(parse_port("Publish: 1, Target: 2"), Some((1, 2)));
        assert_eq!(parse_port("Target: 80"), None);
        assert_eq!(parse_port("garbage"), None);
    }
}
