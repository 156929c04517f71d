//! meshgate deployed the way a swarm deploys things: its image (from
//! `tools/image`, imported on each node, no registry) and
//! `docker stack deploy -c deploy/meshgate-stack.yml` on a real swarm of
//! a manager and a worker (dockerd in namespaces, default veths). A global
//! service's published port then answers through meshgate on both nodes,
//! each meshgate's status page counts the requests, and `docker stack rm`
//! leaves the nodes as they were (no XDP, nothing listening).
//!
//! The lab's daemons keep their sockets and exec roots in per-node
//! directories, not at Docker's defaults; the stack's DOCKER_SOCKET and
//! DOCKER_NETNS name them through Swarm's `{{.Node.ID}}` template. The
//! lab's kernel has no IPVS, so its worker's dockerd writes no
//! DOCKER-INGRESS rules; the test writes the rule Docker writes on a
//! worker with IPVS, from which meshgate there reads the port's protocol.
//!
//! Needs root and Docker, as tests/e2e_swarm.rs.

use meshgate_testkit::harness as common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshgate_testkit::swarm_lab::{MANAGER_ADDR, Node, SwarmLab, WORKER_ADDR};

/// One HTTP/1.0 GET of `path` from namespace `ns`: the body of a 200 answer.
fn http_in(ns: &str, to: SocketAddr, path: &str) -> std::io::Result<String> {
    SwarmLab::http_get_in(ns, to, path, Duration::from_secs(3))
}

fn status_page() -> SocketAddr {
    "127.0.0.1:9464".parse().unwrap()
}

/// meshgate's status on `node`, from its page's JSON on the node's
/// 127.0.0.1:9464 (host networking: the node's own loopback).
fn status(lab: &SwarmLab, node: Node) -> Option<serde_json::Value> {
    let body = http_in(&lab.ns(node), status_page(), "/status.json").ok()?;
    serde_json::from_str(&body).ok()
}

/// Packets meshgate forwarded to the tasks of `web` on `node`.
fn web_packets_in(v: &serde_json::Value) -> u64 {
    v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == "web")
        .flat_map(|s| s["tasks"].as_array().cloned().unwrap_or_default())
        .map(|t| t["counters"]["packets_in"].as_u64().unwrap_or(0))
        .sum()
}

fn xdp_on_eth0(lab: &SwarmLab, node: Node) -> bool {
    lab.docker(node, &["info", "--format", "{{.ID}}"]).unwrap();
    let out = Command::new("ip")
        .args(["-n", &lab.ns(node), "-d", "link", "show", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool, why: impl Fn() -> String) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            why()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `docker ARGS` against the manager with the stack's variables set.
fn docker_env(lab: &SwarmLab, args: &[&str], env: &[(&str, String)]) -> String {
    let out = Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{}", lab.manager_socket().display()))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_stack_runs_meshgate_on_every_node_and_stack_rm_restores_them() {
    if !common::privileged() || !common::docker_available() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lab = SwarmLab::build().expect("swarm lab");
    // The web service's tasks run on both nodes.
    lab.import_busybox(Node::Manager).unwrap();
    let nodes = [(Node::Manager, MANAGER_ADDR), (Node::Worker, WORKER_ADDR)];

    // The image, from this test's binary, imported on each node.
    let tar = lab.dir.join("meshgate-image.tar");
    let o = Command::new(root.join("tools/image"))
        .args(["--binary", env!("CARGO_BIN_EXE_meshgate"), "--out"])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tools/image: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let image = format!("local/meshgate:{}", env!("CARGO_PKG_VERSION"));
    for (node, _) in nodes {
        lab.docker(
            node,
            &[
                "import",
                "--change",
                "ENTRYPOINT [\"/usr/bin/meshgate\"]",
                &tar.display().to_string(),
                &image,
            ],
        )
        .unwrap();
    }
    // Each node's directory under its node ID, for the stack's template.
    let by_id = lab.dir.join("nodes");
    std::fs::create_dir_all(&by_id).unwrap();
    for (node, _) in nodes {
        let id = lab
            .docker(node, &["info", "--format", "{{.Swarm.NodeID}}"])
            .unwrap();
        let dir = lab.socket(node).parent().unwrap().to_path_buf();
        std::os::unix::fs::symlink(&dir, by_id.join(id.trim())).unwrap();
    }

    // A global service published on 8080: a task on each node.
    lab.create_web(&["--mode", "global"]).unwrap();
    lab.wait_for("2 running tasks of web", Duration::from_secs(90), |l| {
        l.running_tasks("web").unwrap_or(0) == 2
    })
    .unwrap();
    // The worker's DOCKER-INGRESS rule, as Docker writes it where IPVS
    // works (the lab's kernel has none).
    let worker = lab.worker();
    for args in [
        vec!["-t", "nat", "-N", "DOCKER-INGRESS"],
        vec![
            "-t",
            "nat",
            "-A",
            "DOCKER-INGRESS",
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "DNAT",
            "--to-destination",
            "172.18.0.2:8080",
        ],
    ] {
        let st = Command::new("ip")
            .args(["netns", "exec", &worker, "iptables"])
            .args(&args)
            .status()
            .unwrap();
        assert!(st.success(), "iptables {args:?}");
    }

    // The stack.
    let template = |rest: &str| format!("{}/{{{{.Node.ID}}}}/{rest}", by_id.display());
    let env = [
        ("MESHGATE_IMAGE", image.clone()),
        ("DOCKER_SOCKET", template("docker.sock")),
        ("DOCKER_NETNS", template("exec/netns")),
    ];
    let stack = format!("mg{}", std::process::id());
    let file = root.join("deploy/meshgate-stack.yml");
    // The announcement key, as the stack file's comment says to make it.
    // It goes with the lab's swarm.
    let key = meshgate_testkit::keys::KeyFile::create(&lab.dir.join("announce.key")).unwrap();
    docker_env(
        &lab,
        &[
            "secret",
            "create",
            "meshgate_announce_key",
            key.path().to_str().unwrap(),
        ],
        &[],
    );
    docker_env(
        &lab,
        &[
            "stack",
            "deploy",
            "--detach=true",
            "--resolve-image",
            "never",
            "-c",
            file.to_str().unwrap(),
            &stack,
        ],
        &env,
    );
    let service = format!("{stack}_meshgate");
    let why = || {
        let ps = Command::new("docker")
            .arg("-H")
            .arg(format!("unix://{}", lab.manager_socket().display()))
            .args(["service", "ps", "--no-trunc", &service])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "{ps}\n{}\n{}",
            lab.daemon_log(&lab.manager()),
            lab.daemon_log(&lab.worker())
        )
    };
    for (node, _) in nodes {
        wait(
            &format!("meshgate's status page on {node:?} with web's 2 tasks"),
            Duration::from_secs(90),
            || {
                status(&lab, node).is_some_and(|v| {
                    v["services"].as_array().is_some_and(|s| {
                        s.iter().any(|s| {
                            s["name"] == "web" && s["tasks"].as_array().map_or(0, |t| t.len()) == 2
                        })
                    })
                })
            },
            why,
        );
        assert!(xdp_on_eth0(&lab, node), "no XDP on {node:?}'s eth0");
    }
    let before: Vec<u64> = nodes
        .iter()
        .map(|(n, _)| web_packets_in(&status(&lab, *n).unwrap()))
        .collect();

    // The published port answers through meshgate on every node, from
    // both tasks.
    for (node, addr) in nodes {
        let to: SocketAddr = format!("{addr}:8080").parse().unwrap();
        let mut hosts = std::collections::BTreeSet::new();
        for i in 0..10 {
            // Anything but a 200 answer is an error of http_in.
            let body = http_in(&lab.client(), to, "/").unwrap_or_else(|e| {
                panic!("request {i} to {node:?}'s published port: {e}\n{}", why())
            });
            hosts.insert(body);
        }
        assert_eq!(hosts.len(), 2, "{node:?} reached only {hosts:?}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    for ((node, _), was) in nodes.iter().zip(before) {
        let v = status(&lab, *node).unwrap();
        assert_eq!(v["mode"], "swarm");
        // The page's "last Docker read": recent, as reads run every 0.5 to 2 s.
        let age = v["swarm"]["last_read_age_seconds"].as_f64();
        assert!(age.is_some_and(|a| a < 30.0), "{node:?}: last read {age:?}");
        let now = web_packets_in(&v);
        assert!(
            now >= was + 10 * 3,
            "{node:?}: meshgate counted {} packets to web's tasks for 10 requests",
            now - was
        );
    }

    // docker stack rm: meshgate stops on every node and detaches.
    docker_env(&lab, &["stack", "rm", &stack], &[]);
    for (node, _) in nodes {
        wait(
            &format!("{node:?} back to its state before the stack"),
            Duration::from_secs(60),
            || !xdp_on_eth0(&lab, node) && http_in(&lab.ns(node), status_page(), "/").is_err(),
            why,
        );
    }
}
