//! meshgate takes over a real Docker Swarm's ingress: two dockerds in
//! network namespaces (a manager that is the ingress node, a worker that
//! runs the tasks), a published service, and HTTP requests from a client
//! namespace through meshgate to the busybox httpd in each container.
//!
//! Needs root and Docker (`tools/setup` installs docker.io and
//! busybox-static). Without Docker the test fails and says so, unless
//! MESHGATE_SKIP_DOCKER=1 opts out explicitly.

use meshgate_testkit::harness as common;

use common::swarm::{Mg, swarm_config, wait_until};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshgate_testkit::swarm_lab::{
    CLIENT_ADDR, MANAGER_ADDR, Node, SwarmLab, UdpServers, WORKER_ADDR, WORKER2_ADDR,
    finish_request, in_netns,
};

fn published() -> SocketAddr {
    format!("{MANAGER_ADDR}:8080").parse().unwrap()
}

/// `n` requests to the manager's published port; answers counted by
/// container hostname.
fn spread(lab: &SwarmLab, n: usize) -> BTreeMap<String, usize> {
    lab.spread(published(), n)
}

/// [`SwarmLab::create_web`], then waits until `tasks` of its tasks run.
fn create_running_web(lab: &SwarmLab, placement: &[&str], tasks: usize) {
    lab.create_web(placement).unwrap();
    lab.wait_for(
        &format!("{tasks} running tasks of web"),
        Duration::from_secs(90),
        |l| l.running_tasks("web").unwrap_or(0) == tasks,
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            lab.daemon_log(&lab.manager()),
            lab.daemon_log(&lab.worker())
        )
    });
}

/// The configuration of a meshgate on the worker: its own socket only,
/// with the ports' protocols from the worker's `DOCKER-INGRESS` rules,
/// which the lab writes as Docker does on a kernel with IPVS.
fn worker_config(lab: &SwarmLab) -> PathBuf {
    let cfg = swarm_config(lab, Node::Worker, "worker.toml", "");
    lab.write_docker_ingress_rules(Node::Worker, WEB_PORTS)
        .unwrap();
    cfg
}

/// web's published ports, for the worker's `DOCKER-INGRESS` rules.
const WEB_PORTS: &[(u16, &str)] = &[(8080, "tcp")];

/// Waits until the worker's meshgate has dropped web after `docker
/// service rm` (its Docker says so once the tasks are gone: httpd ignores
/// SIGTERM, so at the end of their 10 s grace period), then removes the
/// worker's `DOCKER-INGRESS` rules, as Docker does at that moment.
fn worker_drops_web(lab: &SwarmLab, mg: &Mg) {
    wait_until(
        "the worker's meshgate drops web",
        Duration::from_secs(30),
        || mg.log().contains("web: removed"),
    );
    lab.remove_docker_ingress_rules(Node::Worker, WEB_PORTS)
        .unwrap();
}

/// Configurations for meshgate on the worker and on the manager, each
/// with its own socket and sandbox and the swarm's announcement key, named
/// `<node>-<name>.toml`. With `rules`, the lab writes the worker's
/// `DOCKER-INGRESS` rules for web's ports as Docker does on a kernel with
/// IPVS; without, the worker has only what the manager's meshgate
/// announces (as on a node whose Docker writes none: its nftables
/// backend, no IPVS).
fn sandbox_configs(lab: &SwarmLab, name: &str, rules: bool) -> (PathBuf, PathBuf) {
    let sandbox = |node: Node| format!("sandbox = \"{}\"\n", lab.sandbox(node).display());
    let worker = swarm_config(
        lab,
        Node::Worker,
        &format!("worker-{name}.toml"),
        &sandbox(Node::Worker),
    );
    if rules {
        lab.write_docker_ingress_rules(Node::Worker, WEB_PORTS)
            .unwrap();
    }
    let manager = swarm_config(
        lab,
        Node::Manager,
        &format!("manager-{name}.toml"),
        &sandbox(Node::Manager),
    );
    (worker, manager)
}

#[test]
fn meshgate_takes_over_a_real_swarms_ingress() {
    if !common::privileged() || !common::docker_available() {
        return;
    }
    let lab = SwarmLab::build().unwrap_or_else(|e| panic!("building the swarm lab: {e}"));
    create_running_web(
        &lab,
        &["--replicas", "3", "--constraint", "node.role==worker"],
        3,
    );

    // `check` with a [swarm] table reads the same state `run` starts from.
    let cfg = lab.dir.join("check.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ninterface = \"eth0\"\n\n[swarm]\nsocket = \"{}\"\n",
            lab.manager_socket().display()
        ),
    )
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.manager()])
        .arg(env!("CARGO_BIN_EXE_meshgate"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("node 198.18.0.2, ingress 198.18.128.")
            && text.contains("(VNI 4096, port 4789), 1 service(s), 3 task(s)"),
        "{text}"
    );

    let mg = Mg::start(&lab);
    wait_until("meshgate sees 3 tasks", Duration::from_secs(5), || {
        mg.web_tasks() == 3
    });

    // 30 requests, round robin over three containers: ten each.
    let by = spread(&lab, 30);
    assert_eq!(by.len(), 3, "answers by container: {by:?}");
    assert!(by.values().all(|&n| n == 10), "uneven: {by:?}");
    // meshgate, not the kernel, carried them (both ways).
    wait_until("meshgate's counters", Duration::from_secs(3), || {
        let ev = &mg.stats()["events"];
        ev["forwarded"].as_u64().unwrap_or(0) >= 30 * 3
            && ev["replies"].as_u64().unwrap_or(0) >= 30 * 3
    });

    // Docker unreachable: the tables stay, requests keep working.
    let sock = lab.manager_socket();
    let away = sock.with_extension("away");
    std::fs::rename(&sock, &away).unwrap();
    wait_until("a failed swarm read", Duration::from_secs(10), || {
        mg.stats()["swarm"]["read_errors"].as_u64().unwrap_or(0) > 0
    });
    let by = spread(&lab, 9);
    assert_eq!(by.len(), 3, "tables emptied while Docker was away: {by:?}");
    assert!(
        mg.stats()["swarm"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "{}",
        mg.stats()
    );
    std::fs::rename(&away, &sock).unwrap();
    wait_until("Docker answering again", Duration::from_secs(10), || {
        mg.stats()["swarm"]["last_error"].is_null()
    });

    // Scale to five: the new tasks reach the tables within a second of
    // Docker reporting them running.
    lab.docker(Node::Manager, &["service", "scale", "--detach", "web=5"])
        .unwrap();
    wait_until("5 running tasks in Docker", Duration::from_secs(90), || {
        lab.running_tasks("web").unwrap_or(0) == 5
    });
    let lag = wait_until("meshgate sees 5 tasks", Duration::from_secs(5), || {
        mg.web_tasks() == 5
    });
    eprintln!(
        "scale to 5: meshgate's tables followed {lag:?} after Docker reported the tasks running"
    );
    assert!(lag <= Duration::from_secs(1), "tables lagged {lag:?}");
    let by = spread(&lab, 50);
    assert_eq!(by.len(), 5, "answers by container: {by:?}");
    assert!(by.values().all(|&n| n == 10), "uneven: {by:?}");

    // A task dies: Swarm starts a replacement (a new container, a new
    // address) and meshgate follows.
    let victim = lab
        .docker(Node::Worker, &["ps", "-q", "--filter", "name=web.1."])
        .unwrap();
    let victim = victim.trim().to_string();
    assert!(!victim.is_empty(), "no container of task web.1");
    lab.docker(Node::Worker, &["rm", "-f", &victim]).unwrap();
    wait_until(
        "meshgate drops the dead task",
        Duration::from_secs(5),
        || mg.web_tasks() == 4,
    );
    wait_until(
        "a replacement task in meshgate",
        Duration::from_secs(60),
        || mg.web_tasks() == 5,
    );
    let by = spread(&lab, 50);
    assert_eq!(by.len(), 5, "answers by container: {by:?}");
    assert!(by.values().all(|&n| n == 10), "uneven: {by:?}");
    assert!(
        !by.keys().any(|h| victim.starts_with(h.as_str())),
        "the dead container {victim} still answers: {by:?}"
    );

    // Remove the service: the port stops answering.
    lab.docker(Node::Manager, &["service", "rm", "web"])
        .unwrap();
    wait_until("meshgate drops web", Duration::from_secs(5), || {
        mg.web_tasks() == 0
    });
    let e = lab
        .http_get(published(), Duration::from_secs(2))
        .expect_err("port 8080 still answers after docker service rm");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "expected a refused connection, got {e}"
    );
    // Every change is logged. Docker may start the two new tasks in one
    // read or in two (3 -> 4 -> 5), so only the end point is fixed. The
    // removed service's tasks drain until their grace period (10 s: httpd
    // ignores SIGTERM) ends, then it is gone.
    let log = mg.log();
    assert!(log.contains("-> 5 task(s)"), "{log}");
    assert!(log.contains("web: 5 -> 4 task(s)"), "{log}");
    assert!(
        log.contains("service web was removed: its 5 running tasks drain"),
        "{log}"
    );
    wait_until("web gone", Duration::from_secs(30), || {
        mg.log().contains("web: removed")
    });
}

/// meshgate on a worker with only its own Docker socket, where Docker's
/// cluster API answers "not a swarm manager": services and tasks come
/// from the worker's own ingress network view, the ports' protocols from
/// the worker's `DOCKER-INGRESS` rules, which the lab writes as Docker
/// does on a kernel with IPVS (this one has none). The tasks run on the
/// manager.
#[test]
fn meshgate_on_a_worker_node() {
    if !common::privileged() || !common::docker_available() {
        return;
    }
    let lab = SwarmLab::build().unwrap_or_else(|e| panic!("building the swarm lab: {e}"));
    lab.import_busybox(Node::Manager).unwrap();
    create_running_web(
        &lab,
        &["--replicas", "2", "--constraint", "node.role==manager"],
        2,
    );

    // The worker's interface and the client also have IPv6 (a dual-stack
    // network): in swarm mode meshgate answers on the interface's global
    // IPv6 address without being told.
    for (ns, addr) in [
        (lab.worker(), "2001:2::21/64"),
        (lab.client(), "2001:2::1/64"),
    ] {
        for k in [
            "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0",
            "net.ipv6.conf.eth0.disable_ipv6=0",
        ] {
            let st = Command::new("ip")
                .args(["netns", "exec", &ns, "sysctl", "-qw", k])
                .status()
                .unwrap();
            assert!(st.success(), "{ns}: sysctl {k}");
        }
        let st = Command::new("ip")
            .args(["-n", &ns, "-6", "addr", "add", addr, "dev", "eth0", "nodad"])
            .status()
            .unwrap();
        assert!(st.success(), "{ns}: {addr}");
    }
    let cfg = worker_config(&lab);
    let mg = Mg::start_in(&lab, &lab.worker(), &["--config", cfg.to_str().unwrap()]);
    assert!(
        mg.log()
            .contains(&format!("published ports answer on {WORKER_ADDR}")),
        "{}",
        mg.log()
    );
    assert!(
        mg.log()
            .contains("IPv6 clients: published ports answer on 2001:2::21 too"),
        "{}",
        mg.log()
    );
    wait_until("meshgate sees 2 tasks", Duration::from_secs(5), || {
        mg.web_tasks() == 2
    });
    let at_worker: SocketAddr = format!("{WORKER_ADDR}:8080").parse().unwrap();
    let by = lab.spread(at_worker, 20);
    assert_eq!(by.len(), 2, "answers by container: {by:?}");
    assert!(by.values().all(|&n| n == 10), "uneven: {by:?}");
    // And over IPv6, which Swarm's own ingress does not answer.
    let at_worker6: SocketAddr = "[2001:2::21]:8080".parse().unwrap();
    let by6 = lab.spread(at_worker6, 4);
    assert_eq!(by6.len(), 2, "answers over IPv6 by container: {by6:?}");
    wait_until("meshgate's counters", Duration::from_secs(3), || {
        let ev = &mg.stats()["events"];
        ev["forwarded"].as_u64().unwrap_or(0) >= 20 * 3
            && ev["replies"].as_u64().unwrap_or(0) >= 20 * 3
    });

    // Scaling reaches a worker's tables as fast as a manager's (the
    // manager test allows 1 s from Docker's "running" to the tables).
    lab.docker(Node::Manager, &["service", "scale", "--detach", "web=3"])
        .unwrap();
    lab.wait_for("3 running tasks of web", Duration::from_secs(90), |l| {
        l.running_tasks("web").unwrap_or(0) == 3
    })
    .unwrap();
    let lag = wait_until("meshgate sees 3 tasks", Duration::from_secs(10), || {
        mg.web_tasks() == 3
    });
    eprintln!("worker: tables followed the scale-up {lag:?} after Docker reported it");
    assert!(lag <= Duration::from_secs(1), "tables lagged {lag:?}");
    let by = lab.spread(at_worker, 30);
    assert_eq!(by.len(), 3, "answers by container: {by:?}");
    assert!(by.values().all(|&n| n == 10), "uneven: {by:?}");

    // Removal closes the port on the worker too.
    lab.docker(Node::Manager, &["service", "rm", "web"])
        .unwrap();
    worker_drops_web(&lab, &mg);
    let e = lab
        .http_get(at_worker, Duration::from_secs(2))
        .expect_err("port 8080 still answers on the worker after docker service rm");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(mg.log().contains("web: removed"), "{}", mg.log());
}

/// Three nodes, a global service (one task per node), meshgate on a worker
/// and on the manager at the same time, each from its own node's socket.
/// Each meshgate impersonates its own node's ingress sandbox, so the tasks'
/// replies go back to the node the client entered by; each reaches the task
/// on its own node through that node's ingress sandbox. The requests to a
/// node spread over all three tasks, the local one included.
#[test]
fn meshgate_on_a_worker_and_the_manager_at_once() {
    if !common::privileged() || !common::docker_available() {
        return;
    }
    let lab = SwarmLab::build_with(2).unwrap_or_else(|e| panic!("building the swarm lab: {e}"));
    create_running_web(&lab, &["--mode", "global"], 3);

    let (wcfg, mcfg) = sandbox_configs(&lab, "sandbox", true);
    let on_worker = Mg::start_in(&lab, &lab.worker(), &["--config", wcfg.to_str().unwrap()]);
    let on_manager = Mg::start_in(&lab, &lab.manager(), &["--config", mcfg.to_str().unwrap()]);
    for mg in [&on_worker, &on_manager] {
        wait_until("meshgate sees 3 tasks", Duration::from_secs(5), || {
            mg.web_tasks() == 3
        });
        assert!(
            mg.log()
                .contains("tasks on this node: through eth0 in the ingress sandbox"),
            "{}",
            mg.log()
        );
    }
    let mut all = BTreeMap::new();
    for (mg, addr) in [(&on_worker, WORKER_ADDR), (&on_manager, MANAGER_ADDR)] {
        let to: SocketAddr = format!("{addr}:8080").parse().unwrap();
        let by = lab.spread(to, 30);
        assert_eq!(by.len(), 3, "answers by container through {addr}: {by:?}");
        assert!(
            by.values().all(|&n| (9..=11).contains(&n)),
            "uneven through {addr}: {by:?}"
        );
        // This node's meshgate carried them, both ways, a third of them
        // through its own ingress sandbox.
        wait_until("meshgate's counters", Duration::from_secs(3), || {
            let ev = &mg.stats()["events"];
            ev["forwarded"].as_u64().unwrap_or(0) >= 30 * 3
                && ev["replies"].as_u64().unwrap_or(0) >= 30 * 3
                && ev["sandbox_tx"].as_u64().unwrap_or(0) >= 9 * 3
                && ev["sandbox_rx"].as_u64().unwrap_or(0) >= 9 * 3
        });
        // Nothing lost on the way, but for replies held until the kernel
        // resolved the client's MAC (TCP retransmits them).
        let st = mg.stats();
        let unresolved = st["drops"]["no_neighbour"].as_u64().unwrap_or(0);
        assert_eq!(st["drops_total"].as_u64(), Some(unresolved), "{addr}: {st}");
        for (host, n) in by {
            *all.entry(host).or_insert(0) += n;
        }
    }
    // Both reached the same three tasks.
    assert_eq!(all.len(), 3, "{all:?}");

    // The worker's meshgate is taken over (it reads Docker again, then
    // takes the flows, the NIC's program and the sandbox's) while a
    // client keeps asking through the worker: no request fails, and the
    // new one spreads over the three tasks, through its sandbox too.
    let asking = AtomicBool::new(true);
    let (on_worker, (asked, failures)) = std::thread::scope(|sc| {
        let asker = sc.spawn(|| {
            let to: SocketAddr = format!("{WORKER_ADDR}:8080").parse().unwrap();
            let mut failures = Vec::new();
            let mut n = 0;
            while asking.load(Ordering::Relaxed) {
                match lab.http_get(to, Duration::from_secs(5)) {
                    Ok(_) => n += 1,
                    Err(e) => failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (n, failures)
        });
        std::thread::sleep(Duration::from_secs(1));
        let next = on_worker.take_over(&lab, &lab.worker(), &["--config", wcfg.to_str().unwrap()]);
        std::thread::sleep(Duration::from_secs(2));
        asking.store(false, Ordering::Relaxed);
        (next, asker.join().unwrap())
    });
    assert!(failures.is_empty(), "{failures:?}\n{}", on_worker.log());
    assert!(asked >= 20, "{asked}");
    let to: SocketAddr = format!("{WORKER_ADDR}:8080").parse().unwrap();
    let by = lab.spread(to, 30);
    assert_eq!(by.len(), 3, "after the takeover: {by:?}");
    wait_until("the new meshgate's sandbox", Duration::from_secs(3), || {
        on_worker.stats()["events"]["sandbox_rx"]
            .as_u64()
            .unwrap_or(0)
            >= 9
    });
    assert_eq!(on_worker.stats()["takeover"]["takeovers"], 1);
    // The third node (no meshgate) is untouched: Docker's own mesh has no
    // IPVS on this kernel, so its port does not answer.
    let third: SocketAddr = format!("{WORKER2_ADDR}:8080").parse().unwrap();
    assert!(lab.http_get(third, Duration::from_secs(2)).is_err());

    lab.docker(Node::Manager, &["service", "rm", "web"])
        .unwrap();
    worker_drops_web(&lab, &on_worker);
    for (mg, addr) in [(&on_worker, WORKER_ADDR), (&on_manager, MANAGER_ADDR)] {
        wait_until("meshgate drops web", Duration::from_secs(5), || {
            mg.web_tasks() == 0
        });
        let to: SocketAddr = format!("{addr}:8080").parse().unwrap();
        let e = lab
            .http_get(to, Duration::from_secs(2))
            .expect_err("port 8080 still answers after docker service rm");
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{addr}: {e}"
        );
    }
    // Killed, meshgate leaves its capture program on the sandboxes'
    // interfaces (attached through netlink, it outlives the process): the
    // tasks' replies are dropped, not reset by the sandbox's kernel, until
    // a restarted meshgate replaces it (`runtime::attach`).
    drop(on_worker);
    drop(on_manager);
    for node in [Node::Worker, Node::Manager] {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", lab.sandbox(node).display()))
            .args(["ip", "-d", "link", "show", "eth0"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("xdp"), "{text}");
    }
}

/// `web` (port 8080, and `udp` too, with `web_options`) and `plain`
/// (8081), two CGI tasks each on the worker, running.
fn web_and_plain(lab: &SwarmLab, udp: Option<u16>, web_options: &[&str]) {
    lab.create_cgi_service("web", 8080, udp, web_options);
    lab.create_cgi_service("plain", 8081, None, &[]);
    lab.wait_for("4 running tasks", Duration::from_secs(90), |l| {
        l.running_tasks("web").unwrap_or(0) == 2 && l.running_tasks("plain").unwrap_or(0) == 2
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.daemon_log(&lab.worker())));
}

/// `meshgate-pktgen datagrams` as `nobody` in the worker's namespace, at
/// the manager's announcement port; killed if dropped.
struct Flood(Option<std::process::Child>);

impl Flood {
    fn is_running(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// The datagrams it sent.
    fn sent(mut self) -> u64 {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "the flood failed: {text}");
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("the flood: {text}"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn forge_from_worker(lab: &SwarmLab, time: Duration) -> Flood {
    use meshgate::announce::{Content, Keys, ReturnPaths, Sender};
    let worker: std::net::Ipv4Addr = WORKER_ADDR.parse().unwrap();
    let empty = Content::ReturnPaths(ReturnPaths::default());
    let keys = Keys::load(&common::swarm::announce_key(lab)).unwrap();
    let wrong = Keys::parse(b"a key that is not this swarm's one").unwrap();
    let hex = |d: Vec<u8>| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let payloads = [
        format!(r#"{{"version":1,"node":"{WORKER_ADDR}","tasks":[],"sandboxes":[]}}"#).into_bytes(),
        Sender::new(worker).encode(&wrong, &empty).remove(0),
        Sender::with_epoch(worker, 1)
            .encode(&keys, &empty)
            .remove(0),
    ];
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &lab.worker(),
        "runuser",
        "-u",
        "nobody",
        "--",
    ])
    .arg(env!("CARGO_BIN_EXE_meshgate-pktgen"))
    .args(["datagrams", "--junk", "--duration"])
    .arg(time.as_secs_f64().to_string())
    .arg("--to")
    .arg(format!(
        "{MANAGER_ADDR}:{}",
        meshgate::announce::DEFAULT_PORT
    ));
    for p in payloads {
        cmd.arg("--hex").arg(hex(p));
    }
    Flood(Some(
        cmd.stdout(std::process::Stdio::piped()).spawn().unwrap(),
    ))
}

/// The CLIENT IP column of `service ps NAME`.
fn client_ip_modes(mg: &Mg, name: &str) -> Vec<String> {
    common::cli_at(&mg.control, &["service", "ps", name])
        .1
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(5).map(String::from))
        .collect()
}

/// Issue 13's swarm test: a service labelled `meshgate.client-ip=preserve`
/// and one without, both with two tasks on the worker; meshgate on both
/// nodes, each an ingress node. The labelled service's tasks see the
/// client's own address (TCP and UDP), the other's see the sandbox of the
/// node the client entered by, as in Swarm; the replies of each go back
/// through the node the client entered by. When the worker's meshgate
/// stops, its return paths go and the manager falls back to SNAT.
#[test]
fn tasks_see_the_clients_own_address_on_a_real_swarm() {
    if !common::privileged() || !common::docker_available() {
        return;
    }
    let lab = SwarmLab::build().unwrap_or_else(|e| panic!("building the swarm lab: {e}"));
    web_and_plain(
        &lab,
        Some(9000),
        &["--label", "meshgate.client-ip=preserve"],
    );
    let web_ns = lab.task_namespaces("web");
    assert_eq!(web_ns.len(), 2, "{web_ns:?}");
    let _udp = UdpServers::start(&web_ns, 9000);

    let (wcfg, mcfg) = sandbox_configs(&lab, "client-ip", false);
    let mut on_worker = Mg::start_in(&lab, &lab.worker(), &["--config", wcfg.to_str().unwrap()]);
    let on_manager = Mg::start_in(&lab, &lab.manager(), &["--config", mcfg.to_str().unwrap()]);
    for mg in [&on_worker, &on_manager] {
        wait_until(
            "both tasks of web in preserve mode",
            Duration::from_secs(10),
            || client_ip_modes(mg, "web") == ["preserve", "preserve"],
        );
        assert_eq!(client_ip_modes(mg, "plain"), ["snat", "snat"]);
    }
    for ns in &web_ns {
        let nft = in_netns(ns, &["nft", "list", "table", "ip", "meshgate"]);
        assert!(nft.contains("ether saddr"), "{nft}");
    }

    let replies = |mg: &Mg| mg.stats()["events"]["replies"].as_u64().unwrap_or(0);
    for (entry, addr, other) in [
        (&on_manager, MANAGER_ADDR, &on_worker),
        (&on_worker, WORKER_ADDR, &on_manager),
    ] {
        let node = if addr == MANAGER_ADDR {
            Node::Manager
        } else {
            Node::Worker
        };
        // The counters come from the workers' periodic reports: let the
        // previous phase's last replies arrive first.
        for mg in [entry, other] {
            let mut last = replies(mg);
            wait_until("settled counters", Duration::from_secs(10), || {
                std::thread::sleep(Duration::from_millis(700));
                let now = replies(mg);
                std::mem::replace(&mut last, now) == now
            });
        }
        let (entry_before, other_before) = (replies(entry), replies(other));
        let web: SocketAddr = format!("{addr}:8080").parse().unwrap();
        let by = lab.remote_addrs(web, 20);
        assert_eq!(by.len(), 2, "through {addr}: {by:?}");
        for ((host, seen), n) in &by {
            assert_eq!(
                seen, CLIENT_ADDR,
                "through {addr}: {host} must see the client's address"
            );
            assert_eq!(*n, 10, "through {addr}: {by:?}");
        }
        let plain: SocketAddr = format!("{addr}:8081").parse().unwrap();
        let by = lab.remote_addrs(plain, 20);
        let sbox = lab.sandbox_address(node);
        assert!(
            by.keys().all(|(_, seen)| *seen == sbox),
            "through {addr}, the snat service sees {sbox}: {by:?}"
        );
        let udp: SocketAddr = format!("{addr}:9000").parse().unwrap();
        for i in 0..10 {
            let answer = lab
                .udp_ask(udp)
                .unwrap_or_else(|e| panic!("datagram {i} through {addr}: {e}"));
            assert!(
                answer.starts_with(&format!("{CLIENT_ADDR}:")),
                "through {addr}: {answer}"
            );
        }
        // The node the client entered by carried every reply; the other
        // carried none of them.
        wait_until("the entry node's counters", Duration::from_secs(3), || {
            replies(entry) >= entry_before + 40 * 3 + 10
        });
        if replies(other) != other_before {
            let mut why = String::new();
            for ns in &web_ns {
                why += &in_netns(ns, &["nft", "list", "table", "ip", "meshgate"]);
                why += &in_netns(ns, &["cat", "/proc/net/nf_conntrack"]);
                why += &in_netns(ns, &["ip", "neigh"]);
            }
            panic!(
                "through {addr}: a reply went through the other node ({} -> {})\n{why}\nentry: {}\nother: {}",
                other_before,
                replies(other),
                entry.stats(),
                other.stats()
            );
        }
    }

    // Issue 31's attack, from an unprivileged process on the worker (as
    // any user or container there could): the old format that switched
    // the worker's tasks to SNAT, the new one with another key, a signed
    // set of an epoch long past (a replay), and random junk, flat out at
    // the manager's announcement port for 8 s, while requests that keep
    // the client's address are in flight through the manager.
    let held = lab.hold_requests(format!("{MANAGER_ADDR}:8080").parse().unwrap(), 4);
    let mut flood = forge_from_worker(&lab, Duration::from_secs(8));
    let mut checks = 0;
    while flood.is_running() {
        assert_eq!(
            client_ip_modes(&on_manager, "web"),
            ["preserve", "preserve"],
            "a mode changed during the flood\n{}",
            on_manager.log()
        );
        checks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = flood.sent();
    eprintln!("flood: {sent} datagrams in 8 s; the mode held through {checks} checks");
    assert!(sent > 10_000, "not a flood: {sent}");
    for (i, s) in held.into_iter().enumerate() {
        let body = finish_request(s).unwrap_or_else(|e| panic!("held request {i}: {e}"));
        assert!(body.contains(CLIENT_ADDR), "held request {i}: {body}");
    }
    let heard = &on_manager.stats()["announcements"];
    for why in ["format", "unknown_key", "replay"] {
        assert!(
            heard["refused_by"][why].as_u64().unwrap_or(0) >= 1,
            "{why}: {heard}"
        );
    }
    eprintln!("refused: {}", heard["refused_by"]);

    // The worker's meshgate stops: its tasks' return paths go, and the
    // manager gives web's tasks SNAT within a few seconds.
    let stopped = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(on_worker.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let st = on_worker.child.wait().unwrap();
    assert!(st.success(), "{}", on_worker.log());
    for ns in &web_ns {
        let rules = in_netns(ns, &["ip", "rule"]);
        assert!(!rules.contains("0x6d67"), "rules left behind: {rules}");
        // Docker's own tables (the embedded DNS, the ingress filter) stay.
        let nft = in_netns(ns, &["nft", "list", "ruleset"]);
        assert!(!nft.contains("table ip meshgate"), "{nft}");
        assert!(nft.contains("table ip filter"), "{nft}");
    }
    wait_until(
        "the manager falls back to SNAT",
        Duration::from_secs(5),
        || client_ip_modes(&on_manager, "web") == ["snat-fallback", "snat-fallback"],
    );
    eprintln!("fallback {:?} after the stop", stopped.elapsed());
    let web: SocketAddr = format!("{MANAGER_ADDR}:8080").parse().unwrap();
    let sbox = lab.sandbox_address(Node::Manager);
    let by = lab.remote_addrs(web, 6);
    assert!(by.keys().all(|(_, seen)| *seen == sbox), "{by:?}");
    assert!(
        on_manager.log().contains("falls back to SNAT"),
        "{}",
        on_manager.log()
    );

    // A crash leaves the rules in place; the next start removes those that
    // no service wants any more (web no longer preserves).
    let mut crashed = Mg::start_in(&lab, &lab.worker(), &["--config", wcfg.to_str().unwrap()]);
    wait_until("web preserved again", Duration::from_secs(10), || {
        client_ip_modes(&on_manager, "web") == ["preserve", "preserve"]
    });
    crashed.child.kill().unwrap();
    crashed.child.wait().unwrap();
    for ns in &web_ns {
        let nft = in_netns(ns, &["nft", "list", "ruleset"]);
        assert!(
            nft.contains("table ip meshgate"),
            "SIGKILL leaves them: {nft}"
        );
    }
    lab.docker(
        Node::Manager,
        &[
            "service",
            "update",
            "--detach",
            "--label-rm",
            "meshgate.client-ip",
            "web",
        ],
    )
    .unwrap();
    let restarted = Mg::start_in(&lab, &lab.worker(), &["--config", wcfg.to_str().unwrap()]);
    wait_until(
        "stale rules removed at start",
        Duration::from_secs(10),
        || {
            web_ns.iter().all(|ns| {
                !in_netns(ns, &["nft", "list", "ruleset"]).contains("table ip meshgate")
                    && !in_netns(ns, &["ip", "rule"]).contains("0x6d67")
            })
        },
    );
    assert!(
        restarted.log().contains("removed a stale return path"),
        "{}",
        restarted.log()
    );
}

/// A swarm whose managers run no meshgate (drained, as many are): a
/// service's tasks ask for the client's address by their own container
/// label, which the worker's meshgate reads from its own Docker; no
/// manager is asked anything. The labelled service's tasks see the
/// client's address through the worker, the other's the sandbox's.
#[test]
fn a_container_label_keeps_the_clients_address_with_no_meshgate_on_a_manager() {
    if !common::privileged() || !common::docker_available() {
        return;
    }
    let lab = SwarmLab::build().unwrap_or_else(|e| panic!("building the swarm lab: {e}"));
    web_and_plain(
        &lab,
        None,
        &["--container-label", "meshgate.client-ip=preserve"],
    );
    // Only the worker runs meshgate; no manager tells it the ports'
    // protocols, so it reads the rules Docker writes (the lab, here).
    let cfg = swarm_config(
        &lab,
        Node::Worker,
        "worker-label.toml",
        &format!("sandbox = \"{}\"\n", lab.sandbox(Node::Worker).display()),
    );
    lab.write_docker_ingress_rules(Node::Worker, &[(8080, "tcp"), (8081, "tcp")])
        .unwrap();
    let mg = Mg::start_in(&lab, &lab.worker(), &["--config", cfg.to_str().unwrap()]);
    wait_until(
        "web's tasks preserve the client's address",
        Duration::from_secs(10),
        || client_ip_modes(&mg, "web") == ["preserve", "preserve"],
    );
    assert_eq!(client_ip_modes(&mg, "plain"), ["snat", "snat"]);
    let web: SocketAddr = format!("{WORKER_ADDR}:8080").parse().unwrap();
    let by = lab.remote_addrs(web, 10);
    assert_eq!(by.len(), 2, "{by:?}");
    assert!(by.keys().all(|(_, seen)| seen == CLIENT_ADDR), "{by:?}");
    let plain: SocketAddr = format!("{WORKER_ADDR}:8081").parse().unwrap();
    let sbox = lab.sandbox_address(Node::Worker);
    let by = lab.remote_addrs(plain, 10);
    assert!(by.keys().all(|(_, seen)| *seen == sbox), "{by:?}");
    assert!(
        mg.log().contains("the client's address is preserved"),
        "{}",
        mg.log()
    );
}
