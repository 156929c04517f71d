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

/// The keys serde accepts where `prefix` puts an unknown one, as the
/// code says them: every shape denies unknown fields, and its error
/// lists the fields it expected.
fn accepted_keys(prefix: &str) -> std::collections::BTreeSet<String> {
    let text = format!("{prefix}zz_not_a_key = 1\n");
    let err = toml::from_str::<raw::RawConfig>(&text)
        .expect_err("an unknown key is refused")
        .to_string();
    let (_, expected) = err
        .split_once("expected")
        .unwrap_or_else(|| panic!("no expected fields in: {err}"));
    let expected = expected.lines().next().unwrap_or("");
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The configuration reference (docs/configuration.md) names exactly the
/// keys the code reads, table by table: a key added to the code and not
/// to the reference (or the other way round) fails here.
#[test]
fn the_configuration_reference_names_every_key_the_code_reads() {
    use std::collections::{BTreeMap, BTreeSet};
    let doc = include_str!("../../docs/configuration.md");
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let mut cells = line.split(" | ");
        let first = cells.next().unwrap_or("").trim_start_matches("| ");
        for name in first.split('`').skip(1).step_by(2) {
            let name = name.replace("[[service]] ", "service.");
            if let Some((table, key)) = name.split_once('.') {
                documented
                    .entry(table.to_string())
                    .or_default()
                    .insert(key.to_string());
            }
        }
        // The inline tables of `service.publish` and `service.tasks`:
        // `{ a, b = default, … }` in the meaning.
        if let (Some(sub), Some(inner)) = (
            first
                .strip_prefix("`service.")
                .and_then(|s| s.strip_suffix('`')),
            line.split_once("`{ ")
                .map(|(_, r)| r.split(" }").next().unwrap_or("")),
        ) {
            let keys = inner
                .split(',')
                .map(|k| k.split('=').next().unwrap_or("").trim().to_string());
            documented
                .entry(format!("service.{sub}"))
                .or_default()
                .extend(keys);
        }
    }
    let code: BTreeMap<String, BTreeSet<String>> = [
        ("node", "[node]\n"),
        ("ingress", "[ingress]\n"),
        ("swarm", "[swarm]\n"),
        ("timeouts", "[timeouts]\n"),
        ("flows", "[flows]\n"),
        ("control", "[control]\n"),
        ("service", "[[service]]\n"),
        (
            "service.publish",
            "[[service]]\nname = \"a\"\n[[service.publish]]\n",
        ),
        (
            "service.tasks",
            "[[service]]\nname = \"a\"\n[[service.tasks]]\n",
        ),
    ]
    .into_iter()
    .map(|(t, p)| (t.to_string(), accepted_keys(p)))
    .collect();
    // Every table the code reads at the top is one of those.
    let top: BTreeSet<String> = accepted_keys("").into_iter().collect();
    let tables: BTreeSet<String> = code.keys().filter(|t| !t.contains('.')).cloned().collect();
    assert_eq!(top, tables, "the top-level tables");
    for (table, keys) in &code {
        assert!(!keys.is_empty(), "{table}: no keys read from the code");
        let doc_keys = documented.get(table).cloned().unwrap_or_default();
        assert_eq!(
            &doc_keys, keys,
            "{table}: docs/configuration.md (left) against the code (right)"
        );
    }
}
