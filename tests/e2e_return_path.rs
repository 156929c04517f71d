//! The return path of preserved client addresses, in real namespaces with
//! the kernel's own conntrack, nf_tables and policy routing, without
//! meshgate's data plane: two ingress sandboxes on one ingress network
//! send a task connections from the client's own address, as meshgate does
//! for a service in `client_ip = "preserve"` mode.
//!
//! ```text
//!   sbox-a 198.18.128.2 (02:42:c6:12:80:02) ─┐
//!   sbox-b 198.18.128.3 (02:42:c6:12:80:03) ─┤ br0 ├─ task eth0 198.18.128.4
//!   (both source from 198.18.0.1)            │       task eth1 198.18.1.2, default via 198.18.1.1
//! ```
//!
//! The task's default route leads nowhere (as `docker_gwbridge` leads
//! away from the ingress node), so without the return path its answers
//! are lost; with it, each goes back to the sandbox its request came from.

use meshgate_testkit::harness as common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshgate::return_path::{self, IngressNode, Plan, ReturnPathError};
use meshgate_testkit::lab::{enter_ns, sh};

const TASK: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 4);
const SBOX_A: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 2);
const SBOX_B: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Namespaces deleted when dropped, also when the test fails.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

struct Topology {
    ns: Namespaces,
    task: String,
    sbox: [String; 2],
}

fn ip(ns: &str, args: &[&str]) {
    let mut v = vec!["ip", "-n", ns];
    v.extend_from_slice(args);
    sh(&v).unwrap();
}

fn build() -> Topology {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let p = format!(
        "mgrp{}x{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let names = ["br", "task", "sa", "sb"].map(|r| format!("{p}-{r}"));
    let ns = Namespaces(Vec::new());
    let mut ns = ns;
    for n in &names {
        sh(&["ip", "netns", "add", n]).unwrap();
        ns.0.push(n.clone());
        ip(n, &["link", "set", "lo", "up"]);
    }
    let [br, task, sa, sb] = names;
    ip(&br, &["link", "add", "br0", "type", "bridge"]);
    ip(&br, &["link", "set", "br0", "up"]);
    let port = |inner_ns: &str, inner: &str, outer: &str, mac: &str, addr: &str| {
        sh(&[
            "ip", "link", "add", inner, "netns", inner_ns, "type", "veth", "peer", "name", outer,
            "netns", &br,
        ])
        .unwrap();
        ip(inner_ns, &["link", "set", inner, "address", mac]);
        ip(inner_ns, &["addr", "add", addr, "dev", inner]);
        ip(inner_ns, &["link", "set", inner, "up"]);
        ip(&br, &["link", "set", outer, "master", "br0"]);
        ip(&br, &["link", "set", outer, "up"]);
    };
    port(
        &task,
        "eth0",
        "p-task",
        "02:42:c6:12:80:04",
        "198.18.128.4/24",
    );
    port(&sa, "s0", "p-sa", "02:42:c6:12:80:02", "198.18.128.2/24");
    port(&sb, "s0", "p-sb", "02:42:c6:12:80:03", "198.18.128.3/24");
    // The task's default route: a gateway on another link, which never
    // answers (nothing is there).
    sh(&[
        "ip", "link", "add", "eth1", "netns", &task, "type", "veth", "peer", "name", "gw0",
        "netns", &br,
    ])
    .unwrap();
    ip(&task, &["addr", "add", "198.18.1.2/24", "dev", "eth1"]);
    ip(&task, &["link", "set", "eth1", "up"]);
    ip(&br, &["link", "set", "gw0", "up"]);
    ip(&task, &["route", "add", "default", "via", "198.18.1.1"]);
    // The sandboxes send from the client's address, untranslated.
    for s in [&sa, &sb] {
        ip(s, &["addr", "add", "198.18.0.1/32", "dev", "lo"]);
        ip(
            s,
            &[
                "route",
                "replace",
                "198.18.128.0/24",
                "dev",
                "s0",
                "src",
                "198.18.0.1",
            ],
        );
    }
    Topology {
        ns,
        task,
        sbox: [sa, sb],
    }
}

/// A server in the task's namespace that answers each connection with
/// the peer's address; stops when the flag is set.
fn serve(task_ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = task_ns.to_string();
    let h = std::thread::spawn(move || {
        enter_ns(&ns).unwrap();
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 80)).unwrap();
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.write_all(format!("{peer}\n").as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// A UDP server on the task's port 53, bound to the wildcard address (as
/// most are), answering each datagram with the peer's address.
fn serve_udp(task_ns: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = task_ns.to_string();
    let h = std::thread::spawn(move || {
        enter_ns(&ns).unwrap();
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 53)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(peer.to_string().as_bytes(), peer);
            }
        }
    });
    rx.recv().unwrap();
    h
}

/// One datagram from a sandbox to the task's port 53: the answer and the
/// address it came from.
fn ask_udp(sbox_ns: &str) -> std::io::Result<(String, SocketAddr)> {
    let ns = sbox_ns.to_string();
    std::thread::spawn(move || {
        enter_ns(&ns).map_err(std::io::Error::other)?;
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))?;
        s.send_to(b"?", (TASK, 53))?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
    })
    .join()
    .unwrap()
}

/// Connects from a sandbox to the task; the peer address the task saw.
fn request_from(sbox_ns: &str) -> std::io::Result<String> {
    let ns = sbox_ns.to_string();
    std::thread::spawn(move || {
        enter_ns(&ns).map_err(std::io::Error::other)?;
        let to = SocketAddr::from((TASK, 80));
        let mut s = TcpStream::connect_timeout(&to, Duration::from_millis(1500))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out.trim().to_string())
    })
    .join()
    .unwrap()
}

fn plan(t: &Topology, sandboxes: &[Ipv4Addr]) -> Plan {
    Plan {
        netns: PathBuf::from(format!("/run/netns/{}", t.task)),
        task: TASK,
        ingress: sandboxes
            .iter()
            .map(|&a| IngressNode::docker(a))
            .collect::<BTreeSet<_>>(),
        udp_ports: BTreeSet::new(),
    }
}

fn in_task(t: &Topology, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", t.task.as_str()];
    v.extend_from_slice(args);
    sh(&v).unwrap()
}

#[test]
fn replies_go_back_to_the_sandbox_each_connection_came_from() {
    if !common::privileged() {
        return;
    }
    let t = build();
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve(&t.task, stop.clone());

    // Without the return path the task answers into its default route.
    assert!(
        request_from(&t.sbox[0]).is_err(),
        "the task's answer must be lost without the return path"
    );

    return_path::install(&plan(&t, &[SBOX_A, SBOX_B])).unwrap();
    for s in &t.sbox {
        for _ in 0..3 {
            let seen = request_from(s).unwrap_or_else(|e| panic!("through {s}: {e}"));
            assert!(
                seen.starts_with(&format!("{CLIENT}:")),
                "the task sees the client's own address, saw {seen}"
            );
        }
    }
    let rules = in_task(&t, &["ip", "rule"]);
    assert!(
        rules.contains("fwmark 0x6d678002 lookup 1835499522"),
        "{rules}"
    );
    assert!(
        rules.contains("fwmark 0x6d678003 lookup 1835499523"),
        "{rules}"
    );
    let table = in_task(&t, &["ip", "route", "show", "table", "1835499522"]);
    assert!(
        table.contains("default via 198.18.128.2 dev eth0"),
        "{table}"
    );
    let nft = in_task(&t, &["nft", "list", "table", "ip", "meshgate"]);
    assert!(nft.contains("02:42:c6:12:80:03"), "{nft}");

    // A UDP server bound to the wildcard address answers from the address
    // its default route gives (eth1's): lost, unless the rule for its port
    // makes the source the task's ingress address.
    let udp = serve_udp(&t.task, stop.clone());
    assert!(
        ask_udp(&t.sbox[1]).is_err(),
        "without the UDP rule the answer leaves by the default route"
    );
    let mut with_udp = plan(&t, &[SBOX_A, SBOX_B]);
    with_udp.udp_ports = [53].into_iter().collect();
    return_path::install(&with_udp).unwrap();
    for s in &t.sbox {
        let (seen, from) = ask_udp(s).unwrap_or_else(|e| panic!("UDP through {s}: {e}"));
        assert!(seen.starts_with(&format!("{CLIENT}:")), "{seen}");
        assert_eq!(
            from,
            SocketAddr::from((TASK, 53)),
            "answered from the task's address"
        );
    }
    let rules = in_task(&t, &["ip", "rule"]);
    assert!(
        rules.contains("ipproto udp sport 53 lookup 1835466752"),
        "{rules}"
    );

    // Installing again with one node less is an update, not a second copy.
    return_path::install(&plan(&t, &[SBOX_A])).unwrap();
    let rules = in_task(&t, &["ip", "rule"]);
    assert_eq!(rules.matches("0x6d67").count(), 1, "{rules}");
    assert!(
        !rules.contains("sport 53"),
        "no UDP port in this plan: {rules}"
    );
    assert!(request_from(&t.sbox[0]).is_ok());
    assert!(
        request_from(&t.sbox[1]).is_err(),
        "a node no longer in the plan has no way back"
    );

    // Removal leaves nothing behind, and says whether there was anything.
    let mut with_udp = plan(&t, &[SBOX_A]);
    with_udp.udp_ports = [53].into_iter().collect();
    return_path::install(&with_udp).unwrap();
    let netns = plan(&t, &[]).netns;
    assert!(return_path::remove(&netns).unwrap());
    assert!(
        !return_path::remove(&netns).unwrap(),
        "nothing left to remove"
    );
    let rules = in_task(&t, &["ip", "rule"]);
    assert!(
        !rules.contains("0x6d67") && !rules.contains("1835466752"),
        "{rules}"
    );
    assert_eq!(in_task(&t, &["nft", "list", "ruleset"]).trim(), "");
    assert_eq!(
        in_task(&t, &["ip", "route", "show", "table", "1835499522"]).trim(),
        ""
    );
    assert!(request_from(&t.sbox[0]).is_err());

    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    udp.join().unwrap();
}

#[test]
fn what_cannot_work_is_refused_with_its_reason() {
    if !common::privileged() {
        return;
    }
    let t = build();
    let mut p = plan(&t, &[SBOX_A]);
    p.task = Ipv4Addr::new(198, 18, 128, 99);
    let e = return_path::install(&p).unwrap_err();
    assert!(matches!(e, ReturnPathError::NoInterface { .. }), "{e}");
    in_task(&t, &["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=1"]);
    let e = return_path::install(&plan(&t, &[SBOX_A])).unwrap_err();
    assert!(matches!(e, ReturnPathError::StrictRpFilter { .. }), "{e}");
    assert!(e.to_string().contains("eth0"), "{e}");
    let e = return_path::install(&Plan {
        netns: "/run/netns/mg-no-such-namespace".into(),
        ..plan(&t, &[SBOX_A])
    })
    .unwrap_err();
    assert!(matches!(e, ReturnPathError::Enter { .. }), "{e}");
    drop(t.ns);
}

/// A task whose namespace routes its answers by a rule of its own before
/// meshgate's (as a VPN side-car does): the return path would not take
/// effect, so it is refused, naming why, and nothing of it stays; the
/// node then does not announce the task, and ingress nodes give it SNAT.
/// UDP likewise, when another rule picks the source of its answers.
#[test]
fn a_return_path_that_would_not_take_effect_is_refused_and_removed() {
    if !common::privileged() {
        return;
    }
    let t = build();
    // Everything to table 100 first, whose default route is the other link.
    ip(
        &t.task,
        &[
            "route",
            "add",
            "default",
            "via",
            "198.18.1.1",
            "table",
            "100",
        ],
    );
    ip(
        &t.task,
        &["rule", "add", "priority", "500", "lookup", "100"],
    );
    let e = return_path::install(&plan(&t, &[SBOX_A])).unwrap_err();
    assert!(matches!(e, ReturnPathError::Probe { .. }), "{e}");
    assert!(e.to_string().contains("via 198.18.1.1"), "{e}");
    let rules = in_task(&t, &["ip", "rule"]);
    assert!(
        !rules.contains("0x6d67"),
        "meshgate's rules stayed: {rules}"
    );
    let nft = in_task(&t, &["nft", "list", "ruleset"]);
    assert!(!nft.contains("meshgate"), "meshgate's table stayed: {nft}");

    // Without that rule it installs; a UDP port whose answers another
    // rule (of higher priority than meshgate's source rule) sends out
    // of the other link with its address is refused the same way.
    ip(&t.task, &["rule", "del", "priority", "500"]);
    return_path::install(&plan(&t, &[SBOX_A])).unwrap();
    ip(
        &t.task,
        &[
            "rule", "add", "priority", "999", "ipproto", "udp", "sport", "53", "lookup", "100",
        ],
    );
    let mut with_udp = plan(&t, &[SBOX_A]);
    with_udp.udp_ports.insert(53);
    let e = return_path::install(&with_udp).unwrap_err();
    assert!(
        matches!(e, ReturnPathError::Probe { .. }) && e.to_string().contains("port 53"),
        "{e}"
    );
    drop(t.ns);
}
