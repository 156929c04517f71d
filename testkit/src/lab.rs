//! The namespace lab: a Swarm-like topology on one machine, for the demo, the
//! end-to-end tests and the benchmarks.
//!
//! ```text
//!   client 198.18.0.1 ──┐
//!   ingress 198.18.0.2 ─┤ switch (bridge) ├─ node1 198.18.0.11 ── vxlan0 (VNI 4096) ── br ── task-a 198.18.128.4, task-b .5
//!     in0 + meshgate    │                  └─ node2 198.18.0.12 ── vxlan0 (VNI 4096) ── br ── task-c 198.18.128.6
//! ```
//!
//! Each task also has `eth1` on its node's `gwbridge` (198.18.96.0/24,
//! default route via .1), as Swarm tasks have on `docker_gwbridge`; the
//! nodes do not forward, so nothing a task sends that way reaches a client.
//!
//! Every namespace name starts with `mgl<pid>x<n>-`, so two runs never
//! collide; [`Lab`] deletes its namespaces when dropped (also when a test
//! fails and unwinds), and building a lab first removes namespaces left by
//! processes that no longer exist (killed runs). Only 198.18.0.0/15
//! addresses are used, and no namespace has a route out.
//!
//! Every veth keeps its default offloads, as a user's would: frames reach
//! meshgate with the partial TCP/UDP checksums of the sending stack's
//! transmit offload, and meshgate must complete them (`node.checksum`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error(
        "`{0}` is not installed; the lab needs iproute2 and ethtool (apt-get install iproute2 ethtool)"
    )]
    Missing(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("entering network namespace {ns}: {err}")]
    Setns { ns: String, err: String },
}

/// A task of the lab.
#[derive(Debug, Clone)]
pub struct LabTask {
    pub name: String,
    pub address: Ipv4Addr,
    /// Index of its node in `Lab::nodes`.
    pub node: usize,
}

/// Shape of the lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// RX/TX queues of the ingress interface (and its peer).
    pub queues: u32,
    /// (task name, node index) for each task; addresses are 198.18.128.4 up.
    pub tasks: Vec<(String, usize)>,
    /// Number of task nodes.
    pub nodes: usize,
    /// IPv6 on the ingress interface ([`INGRESS6_ADDR`]) and a second
    /// client that has only IPv6 ([`Lab::client6`], [`CLIENT6_ADDR`]).
    pub ipv6: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            queues: 1,
            tasks: vec![
                ("task-a".into(), 0),
                ("task-b".into(), 0),
                ("task-c".into(), 1),
            ],
            nodes: 2,
            ipv6: false,
        }
    }
}

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The IPv6-only client and the ingress node's IPv6 address (the IPv6
/// benchmarking prefix, RFC 5180).
pub const CLIENT6_ADDR: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const INGRESS6_ADDR: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
pub const INGRESS_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const OVERLAY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 2);
pub const VNI: u32 = 4096;
/// Each task node's docker_gwbridge (the tasks' default gateway).
const GWBRIDGE_GATEWAY: &str = "198.18.96.1/24";
pub const VXLAN_PORT: u16 = 4789;

pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 11 + i as u8)
}

pub fn task_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 128, 4 + i as u8)
}

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command; error carries its stderr.
pub fn sh(args: &[&str]) -> Result<String, LabError> {
    let out = run_cmd(args)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_cmd(args: &[&str]) -> Result<Output, LabError> {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LabError::Missing(args[0].to_string())
            } else {
                LabError::Io(e)
            }
        })
}

/// Namespaces named `<kind><pid>x…` whose creating process is gone: what a
/// killed run left behind.
pub fn orphaned_namespaces(kind: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.strip_prefix(kind)
                .and_then(|rest| rest.split('x').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}

/// Deletes lab namespaces whose creating process is gone.
fn sweep_stale() {
    for name in orphaned_namespaces("mgl") {
        let _ = run_cmd(&["ip", "netns", "del", &name]);
    }
}

pub struct Lab {
    pub prefix: String,
    pub opts: LabOptions,
    pub tasks: Vec<LabTask>,
    namespaces: Vec<String>,
    /// Steers frames into the ingress queues by flow hash (several queues only).
    rss: Option<crate::programs::RssSteering>,
}

impl Lab {
    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn client(&self) -> String {
        self.ns("client")
    }

    pub fn ingress(&self) -> String {
        self.ns("ingress")
    }

    /// The client with only an IPv6 path to the ingress node (a lab built
    /// with `ipv6`).
    pub fn client6(&self) -> String {
        self.ns("client6")
    }

    /// Turns IPv6 on in `ns` (every lab namespace starts without it).
    fn enable_ipv6(&self, ns: &str, dev: &str) -> Result<(), LabError> {
        for k in [
            "net.ipv6.conf.all.disable_ipv6=0".to_string(),
            "net.ipv6.conf.default.disable_ipv6=0".to_string(),
            format!("net.ipv6.conf.{dev}.disable_ipv6=0"),
        ] {
            self.exec(ns, &["sysctl", "-qw", &k])?;
        }
        Ok(())
    }

    pub fn switch(&self) -> String {
        self.ns("sw")
    }

    pub fn node(&self, i: usize) -> String {
        self.ns(&format!("node{}", i + 1))
    }

    pub fn task_ns(&self, i: usize) -> String {
        self.ns(&self.tasks[i].name)
    }

    fn add_ns(&mut self, name: &str) -> Result<(), LabError> {
        sh(&["ip", "netns", "add", name])?;
        self.namespaces.push(name.to_string());
        // IPv4 only: without IPv6's neighbour discovery and multicast
        // reports the lab's links are quiet, and counters count the test.
        for k in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            let _ = self.exec(name, &["sysctl", "-qw", k]);
        }
        sh(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Runs `ip -n NS args...`.
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<String, LabError> {
        let mut v = vec!["ip", "-n", ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<String, LabError> {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Creates a veth pair with ends in two namespaces.
    fn veth(&self, ns_a: &str, a: &str, ns_b: &str, b: &str, queues: u32) -> Result<(), LabError> {
        let q = queues.to_string();
        sh(&[
            "ip",
            "link",
            "add",
            a,
            "netns",
            ns_a,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            b,
            "netns",
            ns_b,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ])?;
        Ok(())
    }

    /// Builds the lab.
    pub fn build(opts: LabOptions) -> Result<Lab, LabError> {
        sweep_stale();
        let prefix = format!(
            "mgl{}x{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tasks = opts
            .tasks
            .iter()
            .enumerate()
            .map(|(i, (name, node))| LabTask {
                name: name.clone(),
                address: task_addr(i),
                node: *node,
            })
            .collect();
        let mut lab = Lab {
            prefix,
            opts,
            tasks,
            namespaces: Vec::new(),
            rss: None,
        };
        lab.build_inner()?;
        Ok(lab)
    }

    fn build_inner(&mut self) -> Result<(), LabError> {
        let sw = self.switch();
        let client = self.client();
        let ingress = self.ingress();
        self.add_ns(&sw)?;
        self.add_ns(&client)?;
        self.add_ns(&ingress)?;
        self.ip(&sw, &["link", "add", "br0", "type", "bridge"])?;
        self.ip(&sw, &["link", "set", "br0", "up"])?;
        // A switch forwards frames as they are. With br_netfilter (built in
        // here) a Linux bridge would validate IPv4 headers and drop bad
        // ones before meshgate could see and count them.
        for t in ["iptables", "ip6tables", "arptables"] {
            let key = format!("net.bridge.bridge-nf-call-{t}=0");
            let _ = self.exec(&sw, &["sysctl", "-qw", &key]);
        }

        // With several ingress queues, the veths feeding the switch get as
        // many: a bridge keeps a frame on the queue it arrived on, so this
        // is what spreads flows over the ingress queues (as RSS would).
        let q = self.opts.queues.max(1);
        self.veth(&client, "eth0", &sw, "p-client", q)?;
        self.ip(&client, &["addr", "add", "198.18.0.1/24", "dev", "eth0"])?;
        self.ip(&client, &["link", "set", "eth0", "up"])?;

        self.veth(&ingress, "in0", &sw, "p-in", q)?;
        // p-in keeps its VLAN offload: a bridge keeps an 802.1Q tag as
        // metadata and veth hands XDP the frame without it, as a NIC that
        // strips tags does; meshgate asks the driver for the tag.
        self.ip(&ingress, &["addr", "add", "198.18.0.2/24", "dev", "in0"])?;
        self.ip(&ingress, &["link", "set", "in0", "up"])?;

        for p in ["p-client", "p-in"] {
            self.ip(&sw, &["link", "set", p, "master", "br0"])?;
            self.ip(&sw, &["link", "set", p, "up"])?;
        }
        if self.opts.ipv6 {
            // As a dual-stack node: the kernel keeps answering neighbour
            // discovery and ping on the IPv6 address (the XDP program
            // passes them). No duplicate address detection: the lab's
            // addresses are unique, and DAD would delay the test by a second.
            let a6 = format!("{INGRESS6_ADDR}/64");
            self.enable_ipv6(&ingress, "in0")?;
            self.ip(&ingress, &["-6", "addr", "add", &a6, "dev", "in0", "nodad"])?;
            let client6 = self.client6();
            self.add_ns(&client6)?;
            self.veth(&client6, "eth0", &sw, "p-client6", q)?;
            self.enable_ipv6(&client6, "eth0")?;
            let c6 = format!("{CLIENT6_ADDR}/64");
            self.ip(
                &client6,
                &["-6", "addr", "add", &c6, "dev", "eth0", "nodad"],
            )?;
            self.ip(&client6, &["link", "set", "eth0", "up"])?;
            self.ip(&sw, &["link", "set", "p-client6", "master", "br0"])?;
            self.ip(&sw, &["link", "set", "p-client6", "up"])?;
        }
        if q > 1 {
            // A bridge sends every forwarded frame on one transmit queue of
            // p-in, hence into one receive queue of in0; spread them by flow
            // hash instead, as a NIC's RSS does.
            let rss = self.in_ns(
                &sw,
                move || -> Result<crate::programs::RssSteering, String> {
                    let mut rtnl = meshgate::netlink::Rtnl::new().map_err(|e| e.to_string())?;
                    let idx = rtnl.link("p-in").map_err(|e| e.to_string())?.index;
                    crate::programs::RssSteering::attach(idx, "p-in", q).map_err(|e| e.to_string())
                },
            )?;
            self.rss = Some(rss.map_err(|err| LabError::Setns {
                ns: sw.clone(),
                err,
            })?);
        }

        for i in 0..self.opts.nodes {
            let node = self.node(i);
            self.add_ns(&node)?;
            let port = format!("p-n{}", i + 1);
            self.veth(&node, "eth0", &sw, &port, q)?;
            self.ip(&sw, &["link", "set", &port, "master", "br0"])?;
            self.ip(&sw, &["link", "set", &port, "up"])?;
            let a = format!("{}/24", node_addr(i));
            self.ip(&node, &["addr", "add", &a, "dev", "eth0"])?;
            self.ip(&node, &["link", "set", "eth0", "up"])?;
            // The ingress network on this node: a bridge with the VXLAN
            // device, as Docker's overlay namespace has (br0 + vxlan0).
            let local = node_addr(i).to_string();
            let vni = VNI.to_string();
            let port = VXLAN_PORT.to_string();
            self.ip(
                &node,
                &[
                    "link", "add", "vxlan0", "type", "vxlan", "id", &vni, "dstport", &port,
                    "local", &local, "dev", "eth0",
                ],
            )?;
            self.ip(&node, &["link", "add", "br-ingress", "type", "bridge"])?;
            self.ip(&node, &["link", "set", "vxlan0", "master", "br-ingress"])?;
            self.ip(&node, &["link", "set", "vxlan0", "up"])?;
            self.ip(&node, &["link", "set", "br-ingress", "up"])?;
            // Flood unknown and broadcast frames (ARP) to the ingress node
            // and to the other task nodes.
            let mut peers = vec![INGRESS_ADDR];
            peers.extend((0..self.opts.nodes).filter(|&j| j != i).map(node_addr));
            for p in peers {
                let p = p.to_string();
                self.exec(
                    &node,
                    &[
                        "bridge",
                        "fdb",
                        "append",
                        "00:00:00:00:00:00",
                        "dev",
                        "vxlan0",
                        "dst",
                        &p,
                    ],
                )?;
            }
        }

        for ti in 0..self.tasks.len() {
            let t = self.tasks[ti].clone();
            let ns = self.task_ns(ti);
            let node = self.node(t.node);
            self.add_ns(&ns)?;
            let veth = format!("v-{}", ti);
            self.veth(&ns, "eth0", &node, &veth, 1)?;
            let o = t.address.octets();
            let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
            self.ip(&ns, &["link", "set", "eth0", "address", &mac])?;
            self.ip(&ns, &["link", "set", "eth0", "mtu", "1450"])?;
            let a = format!("{}/24", t.address);
            self.ip(&ns, &["addr", "add", &a, "dev", "eth0"])?;
            self.ip(&ns, &["link", "set", "eth0", "up"])?;
            self.ip(&node, &["link", "set", &veth, "master", "br-ingress"])?;
            self.ip(&node, &["link", "set", &veth, "up"])?;
            // Docker gives every task with a published port a second
            // interface on its node's docker_gwbridge, the task's default
            // route. The node does not forward (ip_forward stays 0 here):
            // what a task sends there never reaches a lab client.
            if !self
                .ip(&node, &["link", "show", "gwbridge"])
                .is_ok_and(|o| !o.is_empty())
            {
                self.ip(&node, &["link", "add", "gwbridge", "type", "bridge"])?;
                self.ip(&node, &["addr", "add", GWBRIDGE_GATEWAY, "dev", "gwbridge"])?;
                self.ip(&node, &["link", "set", "gwbridge", "up"])?;
            }
            let gw_veth = format!("g-{ti}");
            self.veth(&ns, "eth1", &node, &gw_veth, 1)?;
            let a = format!("198.18.96.{}/24", 10 + ti);
            self.ip(&ns, &["addr", "add", &a, "dev", "eth1"])?;
            self.ip(&ns, &["link", "set", "eth1", "up"])?;
            self.ip(&ns, &["route", "add", "default", "via", "198.18.96.1"])?;
            self.ip(&node, &["link", "set", &gw_veth, "master", "gwbridge"])?;
            self.ip(&node, &["link", "set", &gw_veth, "up"])?;
        }
        Ok(())
    }

    /// The meshgate configuration for this lab (`examples/lab.toml`'s shape).
    pub fn config_toml(&self, extra: &str) -> String {
        self.config_toml_with(&(0..self.tasks.len()).collect::<Vec<_>>(), extra)
    }

    /// The configuration with only the lab tasks `tasks` in the service.
    pub fn config_toml_with(&self, tasks: &[usize], extra: &str) -> String {
        let tasks: Vec<String> = tasks
            .iter()
            .map(|&i| &self.tasks[i])
            .map(|t| {
                format!(
                    "{{ address = \"{}\", node = \"{}\" }}",
                    t.address,
                    node_addr(t.node)
                )
            })
            .collect();
        format!(
            "[node]\ninterface = \"in0\"\naddress = \"{INGRESS_ADDR}\"\n\n[ingress]\nvni = {VNI}\nport = {VXLAN_PORT}\nsubnet = \"198.18.128.0/24\"\naddress = \"{OVERLAY_ADDR}\"\n\n{extra}\n[[service]]\nname = \"web\"\npublish = [ {{ published = 8080, target = 80, protocol = \"tcp\" }},\n            {{ published = 8080, target = 80, protocol = \"udp\" }} ]\ntasks = [ {} ]\n",
            tasks.join(",\n          ")
        )
    }

    /// Runs `f` on a thread inside namespace `ns` (sockets it opens live there).
    pub fn in_ns<T: Send + 'static>(
        &self,
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let ns = ns.to_string();
        std::thread::spawn(move || -> Result<T, LabError> {
            enter_ns(&ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| LabError::Setns {
            ns: "thread".into(),
            err: "panicked".into(),
        })?
    }

    /// Starts a TCP and a UDP server on port 80 in every task namespace.
    /// Each answers every line (TCP) or datagram (UDP) with
    /// "<task name> <source address>:<source port>\n".
    pub fn start_servers(&self) -> Result<Servers, LabError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut closing = Vec::new();
        for ti in 0..self.tasks.len() {
            let close = Arc::new(AtomicBool::new(false));
            closing.push(close.clone());
            let ns = self.task_ns(ti);
            let name = self.tasks[ti].name.clone();
            let addr = self.tasks[ti].address;
            let (tx, rx) = std::sync::mpsc::channel();
            let st = stop.clone();
            let n2 = name.clone();
            threads.push(std::thread::spawn(move || {
                if let Err(e) = enter_ns(&ns) {
                    let _ = tx.send(Err(e));
                    return;
                }
                let l = match TcpListener::bind((addr, 80)) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                tcp_server(l, n2, st, close);
            }));
            rx.recv().map_err(|_| LabError::Setns {
                ns: self.task_ns(ti),
                err: "server thread died".into(),
            })??;
            let ns = self.task_ns(ti);
            let (tx, rx) = std::sync::mpsc::channel();
            let st = stop.clone();
            threads.push(std::thread::spawn(move || {
                if let Err(e) = enter_ns(&ns) {
                    let _ = tx.send(Err(e));
                    return;
                }
                let s = match UdpSocket::bind((addr, 80)) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                udp_server(s, name, st);
            }));
            rx.recv().map_err(|_| LabError::Setns {
                ns: self.task_ns(ti),
                err: "server thread died".into(),
            })??;
        }
        Ok(Servers {
            stop,
            threads,
            closing,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = run_cmd(&["ip", "netns", "del", ns]);
        }
    }
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_ns(ns: &str) -> Result<(), LabError> {
    let f = File::open(format!("/run/netns/{ns}")).map_err(|e| LabError::Setns {
        ns: ns.into(),
        err: e.to_string(),
    })?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Setns {
        ns: ns.into(),
        err: e.to_string(),
    })
}

/// The lab's task servers; stopped when dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Per task: its TCP server closes its listening socket.
    closing: Vec<Arc<AtomicBool>>,
}

impl Servers {
    /// Task `ti`'s TCP server stops accepting, as a graceful server does on
    /// SIGTERM: its listening socket closes (new connections are refused
    /// with a reset) while its connections continue.
    pub fn stop_accepting(&self, ti: usize) {
        self.closing[ti].store(true, Ordering::Relaxed);
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_server(l: TcpListener, name: String, stop: Arc<AtomicBool>, close: Arc<AtomicBool>) {
    l.set_nonblocking(true).ok();
    while !stop.load(Ordering::Relaxed) {
        if close.load(Ordering::Relaxed) {
            drop(l);
            return;
        }
        match l.accept() {
            Ok((s, peer)) => {
                let name = name.clone();
                let stop = stop.clone();
                std::thread::spawn(move || serve_tcp(s, peer, name, stop));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_tcp(s: TcpStream, peer: SocketAddr, name: String, stop: Arc<AtomicBool>) {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if w.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        }
    }
}

/// Answers each datagram with a line naming the task and the peer it
/// saw; a datagram of more than [`ECHO_ABOVE`] bytes comes back after the
/// line, whole (the fragments tests' large answers).
fn udp_server(s: UdpSocket, name: String, stop: Arc<AtomicBool>) {
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            let mut answer = format!("{name} {peer}\n").into_bytes();
            if n > ECHO_ABOVE {
                answer.extend_from_slice(&buf[..n]);
            }
            let _ = s.send_to(&answer, peer);
        }
    }
}

/// Datagrams larger than this come back whole from the lab's UDP tasks.
pub const ECHO_ABOVE: usize = 100;

/// One request on a new TCP connection: returns the server's answer line.
pub fn tcp_request(to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"hello\n")?;
    read_line(&mut s)
}

/// Reads one line from a stream.
pub fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s.read(&mut b)?;
        if n == 0 || b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// One UDP request/answer.
pub fn udp_request(to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let any: SocketAddr = if to.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(b"hello\n", to)?;
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}

/// Whether an XDP program is attached to `dev` in namespace `ns`.
pub fn xdp_attached(ns: &str, dev: &str) -> Result<bool, LabError> {
    let out = sh(&["ip", "-n", ns, "-d", "link", "show", "dev", dev])?;
    Ok(out.contains("prog/xdp") || out.contains(" xdp "))
}
