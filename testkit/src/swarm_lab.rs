//! A real Docker Swarm of two or three nodes in network namespaces, for
//! the swarm end-to-end tests.
//!
//! ```text
//!   client  198.18.0.1  ──┐                  ┌── worker  198.18.0.11
//!   manager 198.18.0.2  ──┤ switch (bridge) ├┤   dockerd
//!     dockerd             │                  └── worker2 198.18.0.12 (SwarmLab::build_with(2))
//! ```
//!
//! Each dockerd runs in its namespace through `nsenter --net` (not `ip netns
//! exec`, which remounts /sys and hides the cgroup mounts dockerd needs),
//! with its own data root, exec root, socket, pid file and daemon.json
//! under one directory, the vfs storage driver, and address pools inside
//! 198.18.0.0/15. No namespace has a route out: dockerd never reaches a
//! registry or a DNS server; the image is imported from the static busybox.
//!
//! Names start with `mgs<pid>x<n>`; [`SwarmLab`] stops the daemons (and
//! any process they leave), unmounts what they mounted, and deletes its
//! namespaces and directory when dropped, also when a test fails. Labs of
//! killed runs are swept when the next one is built.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::lab::{LabError, enter_ns, sh};

pub const CLIENT_ADDR: &str = "198.18.0.1";
pub const MANAGER_ADDR: &str = "198.18.0.2";
pub const WORKER_ADDR: &str = "198.18.0.11";
pub const WORKER2_ADDR: &str = "198.18.0.12";

/// What the lab runs, each checked before anything is built.
const TOOLS: [(&str, &str); 4] = [
    ("dockerd", "docker.io"),
    ("docker", "docker.io"),
    ("busybox", "busybox-static"),
    ("nsenter", "util-linux"),
];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Missing programs, as (program, Debian package).
pub fn missing_tools() -> Vec<(&'static str, &'static str)> {
    TOOLS
        .iter()
        .copied()
        .filter(|(bin, _)| {
            !std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
                .unwrap_or(false)
        })
        .collect()
}

struct Daemon {
    ns: String,
    socket: PathBuf,
    child: Child,
}

pub struct SwarmLab {
    pub prefix: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    daemons: Vec<Daemon>,
    workers: usize,
}

/// Which node a docker command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Manager,
    Worker,
    /// The second worker, in a lab built with two.
    Worker2,
}

impl Node {
    /// The node's directory under the lab's (daemon files, socket, log).
    fn dir_name(self) -> &'static str {
        match self {
            Node::Manager => "m",
            Node::Worker => "w",
            Node::Worker2 => "w2",
        }
    }
}

impl SwarmLab {
    pub fn client(&self) -> String {
        format!("{}-c", self.prefix)
    }

    pub fn manager(&self) -> String {
        format!("{}-m", self.prefix)
    }

    pub fn worker(&self) -> String {
        format!("{}-w", self.prefix)
    }

    pub fn worker2(&self) -> String {
        format!("{}-w2", self.prefix)
    }

    /// The namespace of `node`.
    pub fn ns(&self, node: Node) -> String {
        format!("{}-{}", self.prefix, node.dir_name())
    }

    fn switch(&self) -> String {
        format!("{}-b", self.prefix)
    }

    /// The manager's Engine API socket.
    pub fn manager_socket(&self) -> PathBuf {
        self.dir.join("m").join("docker.sock")
    }

    /// The Engine API socket of `node`'s dockerd.
    pub fn socket(&self, node: Node) -> PathBuf {
        self.dir.join(node.dir_name()).join("docker.sock")
    }

    /// The network namespace of `node`'s ingress sandbox (Docker's
    /// `<exec-root>/netns/ingress_sbox`).
    pub fn sandbox(&self, node: Node) -> PathBuf {
        self.dir
            .join(node.dir_name())
            .join("exec")
            .join("netns")
            .join("ingress_sbox")
    }

    /// `docker -H unix://SOCKET args...` against one node.
    pub fn docker(&self, node: Node, args: &[&str]) -> Result<String, LabError> {
        let host = format!("unix://{}", self.socket(node).display());
        let mut v = vec!["docker", "-H", &host];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Builds the namespaces, starts both daemons, forms the swarm and
    /// imports the busybox image on the worker.
    pub fn build() -> Result<SwarmLab, LabError> {
        Self::build_with(1)
    }

    /// [`SwarmLab::build`] with one or two workers (every node then has
    /// the busybox image).
    pub fn build_with(workers: usize) -> Result<SwarmLab, LabError> {
        assert!((1..=2).contains(&workers), "one or two workers");
        sweep_stale();
        let prefix = format!(
            "mgs{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let mut lab = SwarmLab {
            prefix,
            dir,
            namespaces: Vec::new(),
            daemons: Vec::new(),
            workers,
        };
        lab.build_inner()?;
        Ok(lab)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), LabError> {
        sh(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.to_string());
        sh(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    fn build_inner(&mut self) -> Result<(), LabError> {
        let (b, c, m, w) = (self.switch(), self.client(), self.manager(), self.worker());
        let w2 = self.worker2();
        let two = self.workers == 2;
        for ns in [&b, &c, &m, &w] {
            self.add_ns(ns)?;
        }
        if two {
            self.add_ns(&w2)?;
        }
        sh(&["ip", "-n", &b, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &b, "link", "set", "br0", "up"])?;
        let _ = sh(&[
            "ip",
            "netns",
            "exec",
            &b,
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
        ]);
        let mut hosts = vec![(&c, CLIENT_ADDR), (&m, MANAGER_ADDR), (&w, WORKER_ADDR)];
        if two {
            hosts.push((&w2, WORKER2_ADDR));
        }
        for (i, (ns, addr)) in hosts.into_iter().enumerate() {
            let port = format!("p{i}");
            sh(&[
                "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &port,
                "netns", &b,
            ])?;
            sh(&["ip", "-n", &b, "link", "set", &port, "master", "br0"])?;
            sh(&["ip", "-n", &b, "link", "set", &port, "up"])?;
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        }
        self.start_daemon(&m, Node::Manager)?;
        self.start_daemon(&w, Node::Worker)?;
        if two {
            self.start_daemon(&w2, Node::Worker2)?;
        }
        self.docker(
            Node::Manager,
            &[
                "swarm",
                "init",
                "--advertise-addr",
                MANAGER_ADDR,
                "--default-addr-pool",
                "198.18.128.0/17",
                "--default-addr-pool-mask-length",
                "24",
            ],
        )?;
        let token = self.docker(Node::Manager, &["swarm", "join-token", "-q", "worker"])?;
        let mut workers = vec![(Node::Worker, WORKER_ADDR)];
        if two {
            workers.push((Node::Worker2, WORKER2_ADDR));
        }
        for (node, addr) in workers {
            self.docker(
                node,
                &[
                    "swarm",
                    "join",
                    "--token",
                    token.trim(),
                    "--advertise-addr",
                    addr,
                    &format!("{MANAGER_ADDR}:2377"),
                ],
            )?;
            self.import_busybox(node)?;
        }
        if two {
            self.import_busybox(Node::Manager)?;
        }
        // The manager's ingress sandbox is meshgate's identity on the
        // overlay: wait until Docker has made it.
        self.wait_for("the manager's ingress-sbox", Duration::from_secs(30), |l| {
            l.docker(Node::Manager, &["network", "inspect", "ingress"])
                .is_ok_and(|o| o.contains("ingress-sbox"))
        })?;
        Ok(())
    }

    fn start_daemon(&mut self, ns: &str, node: Node) -> Result<(), LabError> {
        let d = self.dir.join(node.dir_name());
        std::fs::create_dir_all(&d)?;
        // Keeps dockerd off /etc/docker: its identity key and any host
        // daemon.json stay out of the lab.
        let conf = d.join("daemon.json");
        std::fs::write(
            &conf,
            serde_json::json!({ "deprecated-key-path": d.join("key.json") }).to_string(),
        )?;
        let socket = d.join("docker.sock");
        let log = std::fs::File::create(d.join("dockerd.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("dockerd")
            .arg("--config-file")
            .arg(&conf)
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--storage-driver",
                "vfs",
                "--bip",
                "198.18.200.1/24",
                "--default-address-pool",
                "base=198.18.208.0/20,size=24",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.daemons.push(Daemon {
            ns: ns.to_string(),
            socket: socket.clone(),
            child,
        });
        self.wait_for(&format!("dockerd in {ns}"), Duration::from_secs(60), |l| {
            l.docker(node, &["info", "--format", "{{.ID}}"]).is_ok()
        })
    }

    /// Imports `local/busybox:1` on `node`: the static busybox and its
    /// applet links (the image's tar is made once per lab).
    pub fn import_busybox(&self, node: Node) -> Result<(), LabError> {
        let tar = self.dir.join("image.tar");
        if !tar.exists() {
            let root = self.dir.join("image");
            let bin = root.join("bin");
            std::fs::create_dir_all(&bin)?;
            let busybox = sh(&["sh", "-c", "command -v busybox"])?;
            std::fs::copy(busybox.trim(), bin.join("busybox"))?;
            for applet in sh(&["busybox", "--list"])?.split_whitespace() {
                if applet != "busybox" {
                    std::os::unix::fs::symlink("busybox", bin.join(applet))?;
                }
            }
            sh(&[
                "tar",
                "-C",
                &root.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                ".",
            ])?;
        }
        self.docker(
            node,
            &["import", &tar.display().to_string(), "local/busybox:1"],
        )?;
        Ok(())
    }

    /// Polls `ok` every 100 ms; the error names what did not happen.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut ok: impl FnMut(&SwarmLab) -> bool,
    ) -> Result<(), LabError> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if ok(self) {
                return Ok(());
            }
            for d in &self.daemons {
                if !Path::new(&format!("/proc/{}", d.child.id())).exists() {
                    return Err(LabError::Command {
                        cmd: format!("dockerd in {}", d.ns),
                        stderr: self.daemon_log(&d.ns),
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(LabError::Command {
            cmd: format!("waiting for {what}"),
            stderr: format!("not done within {limit:?}"),
        })
    }

    /// The last lines of a daemon's log, for failure messages.
    pub fn daemon_log(&self, ns: &str) -> String {
        let name = ns.rsplit('-').next().unwrap_or("m");
        let log =
            std::fs::read_to_string(self.dir.join(name).join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `docker service create` of `web` (busybox httpd answering its
    /// hostname) publishing 8080:80, placed by `placement` (replicas,
    /// mode, constraints).
    pub fn create_web(&self, placement: &[&str]) -> Result<String, LabError> {
        let httpd = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";
        self.create_service("web", "8080:80", placement, httpd)
    }

    /// `docker service create` of `name` publishing `publish`, with
    /// `options` (placement, health checks, grace periods), running
    /// `command` in `sh -c` on the lab's busybox image.
    pub fn create_service(
        &self,
        name: &str,
        publish: &str,
        options: &[&str],
        command: &str,
    ) -> Result<String, LabError> {
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--publish",
            publish,
        ];
        args.extend_from_slice(options);
        args.extend_from_slice(&["--no-resolve-image", "local/busybox:1", "sh", "-c", command]);
        self.docker(Node::Manager, &args)
    }

    /// Writes on `node` the `DOCKER-INGRESS` rules Docker writes for the
    /// routing mesh's published `ports` ((port, "tcp" or "udp")) on a
    /// kernel with IPVS, which this one lacks (`../shared/notes`): the nat
    /// chain, jumped from PREROUTING and OUTPUT for local destinations,
    /// with a DNAT per port to the ingress sandbox's `docker_gwbridge`
    /// address. A worker's meshgate reads the ports' protocols from them
    /// as it would on a real node, with no manager's socket.
    pub fn write_docker_ingress_rules(
        &self,
        node: Node,
        ports: &[(u16, &str)],
    ) -> Result<(), LabError> {
        let ipt = self.nat_table(node);
        if ipt(&["-S", "DOCKER-INGRESS"]).is_err() {
            ipt(&["-N", "DOCKER-INGRESS"])?;
            ipt(&["-A", "DOCKER-INGRESS", "-j", "RETURN"])?;
            for chain in ["PREROUTING", "OUTPUT"] {
                let jump = [
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    "DOCKER-INGRESS",
                ];
                ipt(&[&["-I", chain][..], &jump[..]].concat())?;
            }
        }
        let to = self.ingress_sandbox_gateway(node)?;
        for (port, proto) in ports {
            let (port, to) = (port.to_string(), format!("{to}:{port}"));
            ipt(&[
                "-I",
                "DOCKER-INGRESS",
                "-p",
                proto,
                "-m",
                proto,
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ])?;
        }
        Ok(())
    }

    /// Removes the rules [`SwarmLab::write_docker_ingress_rules`] wrote for
    /// `ports`, as Docker does when a service's last task is gone.
    pub fn remove_docker_ingress_rules(
        &self,
        node: Node,
        ports: &[(u16, &str)],
    ) -> Result<(), LabError> {
        let ipt = self.nat_table(node);
        let rules = ipt(&["-S", "DOCKER-INGRESS"])?;
        for (port, proto) in ports {
            let (p, d) = (format!(" -p {proto} "), format!(" --dport {port} "));
            for rule in rules.lines().filter(|r| r.contains(&p) && r.contains(&d)) {
                let Some(spec) = rule.strip_prefix("-A ") else {
                    continue;
                };
                let args: Vec<&str> = spec.split_whitespace().collect();
                ipt(&[&["-D"][..], &args[..]].concat())?;
            }
        }
        Ok(())
    }

    /// `iptables -t nat ARGS` in `node`'s namespace.
    fn nat_table(&self, node: Node) -> impl Fn(&[&str]) -> Result<String, LabError> {
        let ns = self.ns(node);
        move |args: &[&str]| {
            let mut a = vec!["ip", "netns", "exec", ns.as_str(), "iptables", "-t", "nat"];
            a.extend_from_slice(args);
            sh(&a)
        }
    }

    /// Where Docker's rules send a published port: the ingress sandbox's
    /// `docker_gwbridge` address; on a node that has no gwbridge yet (no
    /// task has run there), its address on the ingress network, which
    /// stands in for it (meshgate reads only the rules' ports).
    fn ingress_sandbox_gateway(&self, node: Node) -> Result<String, LabError> {
        self.sandbox_on(node, "docker_gwbridge")
            .or_else(|_| self.sandbox_on(node, "ingress"))
    }

    /// The ingress sandbox's address on `network` of `node`.
    fn sandbox_on(&self, node: Node, network: &str) -> Result<String, LabError> {
        let format = "{{(index .Containers \"ingress-sbox\").IPv4Address}}";
        self.docker(node, &["network", "inspect", network, "--format", format])
            .map(|a| a.trim().split('/').next().unwrap_or_default().to_string())
    }

    /// Tasks of `service` that Docker reports running, as (name, state).
    pub fn running_tasks(&self, service: &str) -> Result<usize, LabError> {
        let out = self.docker(
            Node::Manager,
            &[
                "service",
                "ps",
                service,
                "--filter",
                "desired-state=running",
                "--format",
                "{{.CurrentState}}",
            ],
        )?;
        Ok(out.lines().filter(|l| l.starts_with("Running")).count())
    }

    /// One HTTP/1.0 GET of `/` from the client namespace; returns the body.
    pub fn http_get(&self, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
        self.http_get_path(to, "/", timeout)
    }

    /// One HTTP/1.0 GET of `path` from the client namespace; returns the
    /// body.
    pub fn http_get_path(
        &self,
        to: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> std::io::Result<String> {
        Self::http_get_in(&self.client(), to, path, timeout)
    }

    /// One HTTP/1.0 GET of `path` from namespace `ns` (a node's own
    /// loopback, say); the body of a 200 answer, else an error.
    pub fn http_get_in(
        ns: &str,
        to: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> std::io::Result<String> {
        let ns = ns.to_string();
        let request = format!("GET {path} HTTP/1.0\r\nHost: web\r\n\r\n");
        std::thread::spawn(move || -> std::io::Result<String> {
            enter_ns(&ns).map_err(std::io::Error::other)?;
            use std::io::{Read, Write};
            let mut s = TcpStream::connect_timeout(&to, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.write_all(request.as_bytes())?;
            let mut resp = Vec::new();
            s.read_to_end(&mut resp)?;
            let text = String::from_utf8_lossy(&resp).into_owned();
            // A CGI script's own header lines may end in a bare newline.
            let (head, body) = text
                .split_once("\r\n\r\n")
                .or_else(|| text.split_once("\n\n"))
                .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
            if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
                return Err(std::io::Error::other(format!("HTTP error: {head}")));
            }
            Ok(body.trim().to_string())
        })
        .join()
        .map_err(|_| std::io::Error::other("client thread panicked"))?
    }

    fn stop_daemons(&mut self) {
        remove_containers(&self.dir);
        for d in &mut self.daemons {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for d in &mut self.daemons {
            let t0 = Instant::now();
            while d.child.try_wait().ok().flatten().is_none() {
                if t0.elapsed() > Duration::from_secs(20) {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_file(&d.socket);
        }
        self.daemons.clear();
    }

    /// `n` requests to `to` from the client namespace; answers counted by
    /// container hostname.
    pub fn spread(&self, to: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut by = std::collections::BTreeMap::new();
        for i in 0..n {
            let host = self
                .http_get(to, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("request {i} to {to} failed: {e}"));
            *by.entry(host).or_insert(0) += 1;
        }
        by
    }

    /// A service of two tasks on the workers, publishing `port`:80 (busybox
    /// httpd with a CGI script that prints the container's hostname and
    /// `$REMOTE_ADDR`, the address its TCP peer has) and, when given, a
    /// UDP port; `label` is added to the service.
    pub fn create_cgi_service(&self, name: &str, port: u16, udp: Option<u16>, label: &[&str]) {
        let mut options = vec!["--replicas", "2", "--constraint", "node.role==worker"];
        let udp = udp.map(|u| format!("{u}:{u}/udp"));
        if let Some(u) = &udp {
            options.extend_from_slice(&["--publish", u]);
        }
        options.extend_from_slice(label);
        let httpd = "mkdir -p /www/cgi-bin && printf '%s\\n' '#!/bin/sh' 'echo Content-Type: text/plain' 'echo' 'echo $(hostname) $REMOTE_ADDR' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www";
        self.create_service(name, &format!("{port}:80"), &options, httpd)
            .unwrap();
    }

    /// The ingress sandbox's address of `node`.
    pub fn sandbox_address(&self, node: Node) -> String {
        self.sandbox_on(node, "ingress").unwrap()
    }

    /// The network namespaces of `service`'s containers on the worker.
    pub fn task_namespaces(&self, service: &str) -> Vec<String> {
        let ids = self
            .docker(
                Node::Worker,
                &["ps", "-q", "--filter", &format!("name={service}.")],
            )
            .unwrap();
        ids.split_whitespace()
            .map(|id| {
                self.docker(
                    Node::Worker,
                    &["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", id],
                )
                .unwrap()
                .trim()
                .to_string()
            })
            .collect()
    }

    /// One datagram from the client namespace to `to`; the answer.
    pub fn udp_ask(&self, to: SocketAddr) -> std::io::Result<String> {
        let ns = self.client();
        std::thread::spawn(move || -> std::io::Result<String> {
            enter_ns(&ns).map_err(std::io::Error::other)?;
            let s = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.send_to(b"who am i", to)?;
            let mut buf = [0u8; 256];
            let (n, from) = s.recv_from(&mut buf)?;
            // An answer from elsewhere (Docker's gwbridge masquerade, say)
            // is not one a connected client would take.
            if from != to {
                return Err(std::io::Error::other(format!(
                    "answer from {from}, not from {to}"
                )));
            }
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .join()
        .unwrap()
    }

    /// `n` requests for the CGI script through `to`, sent but for their
    /// last line: each waits, its connection open, until
    /// [`finish_request`].
    pub fn hold_requests(&self, to: SocketAddr, n: usize) -> Vec<TcpStream> {
        let ns = self.client();
        std::thread::spawn(move || {
            enter_ns(&ns).unwrap();
            (0..n)
                .map(|_| {
                    use std::io::Write;
                    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
                    s.write_all(b"GET /cgi-bin/ip HTTP/1.0\r\nHost: web\r\n")
                        .unwrap();
                    s
                })
                .collect()
        })
        .join()
        .unwrap()
    }

    /// `n` GETs of the CGI script through `to`: (hostname, address the
    /// task saw) counted.
    pub fn remote_addrs(
        &self,
        to: SocketAddr,
        n: usize,
    ) -> std::collections::BTreeMap<(String, String), usize> {
        let mut by = std::collections::BTreeMap::new();
        for i in 0..n {
            let body = self
                .http_get_path(to, "/cgi-bin/ip", Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("request {i} to {to} failed: {e}"));
            let (host, addr) = body.split_once(' ').unwrap_or((&body, ""));
            // httpd listens on IPv6 too: an IPv4 peer shows as
            // [::ffff:a.b.c.d].
            let addr = addr.trim_start_matches("[::ffff:").trim_end_matches(']');
            *by.entry((host.to_string(), addr.to_string())).or_insert(0) += 1;
        }
        by
    }
}

/// Removes every container of the lab's daemons, so that no task
/// outlives its daemon.
fn remove_containers(dir: &Path) {
    for node in ["m", "w"] {
        let sock = dir.join(node).join("docker.sock");
        if !sock.exists() {
            continue;
        }
        let host = format!("unix://{}", sock.display());
        if let Ok(ids) = sh(&["docker", "-H", &host, "ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["docker", "-H", &host, "rm", "-f"];
                args.extend(ids);
                let _ = sh(&args);
            }
        }
    }
}

/// Pids of the processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .contains(needle)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// Kills every process whose command line mentions `dir` (containerd and
/// its shims, when a daemon could not stop them), then unmounts what is
/// still mounted under `dir`, deepest first.
fn reap(dir: &Path) {
    let needle = dir.display().to_string();
    for pid in processes_mentioning(&needle) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&needle))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for m in points {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}

/// Removes labs whose creating process is gone.
fn sweep_stale() {
    for name in crate::lab::orphaned_namespaces("mgs") {
        if let Some(prefix) = name.rsplit_once('-').map(|(p, _)| p) {
            let dir = std::env::temp_dir().join(prefix);
            // A killed run left its daemons: stop them as a test would.
            remove_containers(&dir);
            let needle = dir.display().to_string();
            for pid in processes_mentioning(&format!("{needle}/")) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let t0 = Instant::now();
            while !processes_mentioning(&format!("dockerd --config-file {needle}/")).is_empty()
                && t0.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            reap(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
        let _ = sh(&["ip", "netns", "del", &name]);
    }
}

impl Drop for SwarmLab {
    fn drop(&mut self) {
        self.stop_daemons();
        reap(&self.dir);
        for ns in self.namespaces.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Ends a request [`SwarmLab::hold_requests`] began; the whole answer.
pub fn finish_request(mut s: TcpStream) -> std::io::Result<String> {
    use std::io::{Read, Write};
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer)
}

/// `args` run inside the network namespace at `netns`; their output.
pub fn in_netns(netns: &str, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} in {netns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// UDP servers in the containers' namespaces (what a UDP server in the
/// container would be: the same namespace, the same kernel path) answering
/// each datagram with the peer's address; stopped when dropped.
pub struct UdpServers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl UdpServers {
    pub fn start(namespaces: &[String], port: u16) -> UdpServers {
        use std::sync::atomic::AtomicBool;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for ns in namespaces {
            let (ns, st) = (ns.clone(), stop.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                let f = std::fs::File::open(&ns).unwrap();
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let s = std::net::UdpSocket::bind(("0.0.0.0", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                tx.send(()).unwrap();
                let mut buf = [0u8; 1500];
                while !st.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(format!("{peer}").as_bytes(), peer);
                    }
                }
            }));
            rx.recv().unwrap();
        }
        UdpServers { stop, threads }
    }
}

impl Drop for UdpServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
