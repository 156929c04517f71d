//! IPv6 published ports in the lab: a client with only an IPv6 path to the
//! ingress node talks to the published port; meshgate translates its
//! packets to IPv4 for the overlay (the tasks see the sandbox's IPv4
//! address) and the answers back to IPv6, while IPv4 clients go on as
//! before and the kernel keeps answering ping and neighbour discovery.

use meshgate_testkit::harness as common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{Meshgate, privileged, target, task_and_source};
use meshgate_testkit::lab::{self, INGRESS6_ADDR, Lab, LabOptions};

const T: Duration = Duration::from_secs(3);

fn target6() -> SocketAddr {
    SocketAddr::from((INGRESS6_ADDR, 8080))
}

fn lab6() -> Option<(Lab, lab::Servers)> {
    if !privileged() {
        return None;
    }
    let lab = Lab::build(LabOptions {
        ipv6: true,
        ..LabOptions::default()
    })
    .expect("lab");
    let servers = lab.start_servers().expect("servers");
    Some((lab, servers))
}

fn config6(lab: &Lab) -> String {
    lab.config_toml("[control]\nstats_interval = 0.5\n")
        .replacen(
            "[node]\n",
            &format!("[node]\naddress6 = \"{INGRESS6_ADDR}\"\n"),
            1,
        )
}

#[test]
fn an_ipv6_only_client_reaches_every_task_while_ipv4_goes_on() {
    let Some((lab, _servers)) = lab6() else {
        return;
    };
    let mg = Meshgate::start(&lab, &config6(&lab));

    // 30 connections from the IPv6-only client: 10/10/10, and every task
    // sees the sandbox's IPv4 address.
    let answers = lab
        .in_ns(&lab.client6(), || {
            (0..30)
                .map(|_| lab::tcp_request(target6(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    let mut per_task: BTreeMap<String, u32> = BTreeMap::new();
    for a in &answers {
        let line = a
            .as_ref()
            .unwrap_or_else(|e| panic!("an IPv6 connection failed: {e}\n{}", mg.log()));
        let (task, src) = task_and_source(line);
        assert_eq!(src, "198.18.128.2", "the task sees the sandbox: {line}");
        *per_task.entry(task).or_default() += 1;
    }
    assert_eq!(
        per_task,
        BTreeMap::from([
            ("task-a".into(), 10),
            ("task-b".into(), 10),
            ("task-c".into(), 10)
        ])
    );

    // The IPVS view counts them (closed connections: inactive), and
    // /metrics labels IPv6 clients' share.
    let ipvs = mg.cli_ok(&["ipvs"]);
    let inactive: u64 = ipvs
        .lines()
        .filter(|l| l.contains("Masq"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum();
    assert!(inactive >= 30, "{ipvs}");
    let t0 = std::time::Instant::now();
    loop {
        let metrics = meshgate::api::call(&mg.control, &meshgate::api::Request::Metrics {})
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_string();
        let sample = metrics
            .lines()
            .find(|l| l.starts_with("meshgate_events_total{event=\"ipv6_flows_created\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok());
        if sample == Some(30) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "ipv6_flows_created: {sample:?}\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // IPv4 and IPv6 clients at the same time, sharing the round robin.
    let v4 = {
        let ns = lab.client();
        std::thread::spawn(move || {
            lab::enter_ns(&ns).unwrap();
            (0..30)
                .map(|_| lab::tcp_request(target(), T))
                .collect::<Vec<_>>()
        })
    };
    let v6 = lab
        .in_ns(&lab.client6(), || {
            (0..30)
                .map(|_| lab::tcp_request(target6(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    let v4 = v4.join().unwrap();
    assert!(v4.iter().all(|a| a.is_ok()), "IPv4 meanwhile: {v4:?}");
    assert!(v6.iter().all(|a| a.is_ok()), "IPv6 meanwhile: {v6:?}");
    let mut both: BTreeMap<String, u32> = BTreeMap::new();
    for a in v4.iter().chain(&v6) {
        *both
            .entry(task_and_source(a.as_ref().unwrap()).0)
            .or_default() += 1;
    }
    assert_eq!(both.values().sum::<u32>(), 60);
    assert!(both.values().all(|&n| n == 20), "{both:?}");

    // UDP: answered from the address and port the client asked.
    let (from, answer) = lab
        .in_ns(
            &lab.client6(),
            || -> std::io::Result<(SocketAddr, String)> {
                let s = UdpSocket::bind("[::]:0")?;
                s.set_read_timeout(Some(T))?;
                s.send_to(b"hello\n", target6())?;
                let mut buf = [0u8; 512];
                let (n, from) = s.recv_from(&mut buf)?;
                Ok((from, String::from_utf8_lossy(&buf[..n]).into_owned()))
            },
        )
        .unwrap()
        .unwrap_or_else(|e| panic!("UDP over IPv6: {e}\n{}", mg.log()));
    assert_eq!(from, target6());
    assert!(answer.starts_with("task-"), "{answer}");

    // The kernel still answers ping on the node's IPv6 address.
    lab.exec(
        &lab.client6(),
        &[
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "2",
            &INGRESS6_ADDR.to_string(),
        ],
    )
    .expect("ping -6 to the node");

    // Too big for the overlay once translated: Packet Too Big, and the
    // client's kernel learns the path MTU (1450 + 20). Linux takes a PTB
    // through the socket that sent the packet: it stays open meanwhile.
    let route = lab
        .in_ns(&lab.client6(), || -> std::io::Result<String> {
            let s = UdpSocket::bind("[::]:0")?;
            assert_eq!(s.send_to(&[0u8; 1452], target6())?, 1452);
            let mut route = String::new();
            for _ in 0..20 {
                let out = std::process::Command::new("ip")
                    .args(["-6", "route", "get", &INGRESS6_ADDR.to_string()])
                    .output()?;
                route = String::from_utf8_lossy(&out.stdout).into_owned();
                if route.contains("mtu 1470") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(route)
        })
        .unwrap()
        .unwrap();
    assert!(route.contains("mtu 1470"), "{route}\n{}", mg.log());

    let (st, log, stats) = mg.stop();
    assert!(st.success(), "{log}");
    assert!(stats["drops"]["too_big"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["events"]["icmp_sent"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    // IPv6 clients' share of the events: 60 connections of theirs and one
    // UDP exchange (the too-big datagram was answered, not forwarded).
    let ev = &stats["events"];
    assert_eq!(ev["ipv6_flows_created"], 61, "{ev}");
    assert!(ev["ipv6_forwarded"].as_u64().unwrap() >= 61 * 2, "{ev}");
    assert!(ev["ipv6_replies"].as_u64().unwrap() >= 61 * 2, "{ev}");
    assert!(ev["flows_created"].as_u64().unwrap() >= 61 + 30, "{ev}");
}

/// Hostile IPv6 frames through the running forwarder: dropped by meshgate
/// or passed to the kernel by the XDP program, each counted under its
/// reason, while good IPv6 traffic keeps flowing.
#[test]
fn hostile_ipv6_frames_are_dropped_and_counted_by_reason() {
    use meshgate_testkit::fixtures::{ACK, CLIENT6, SYN, client6_tcp, client6_udp};
    let Some((lab, _servers)) = lab6() else {
        return;
    };
    let mg = Meshgate::start(
        &lab,
        &config6(&lab).replace("stats_interval = 0.5", "stats_interval = 0.25"),
    );
    let (client, in0) = (
        common::mac_of(&lab, &lab.client6(), "eth0"),
        common::mac_of(&lab, &lab.ingress(), "in0"),
    );
    let to_in0 = |mut f: Vec<u8>| {
        f[0..6].copy_from_slice(&in0);
        f[6..12].copy_from_slice(&client);
        f
    };
    let syn = || client6_tcp(CLIENT6, 40000, 1, 0, SYN, b"");
    // A fragment header (RFC 8200 4.5) of datagram `id` at `offset` (8-byte
    // units), more fragments following, in front of the frame's transport
    // header.
    let frag6 = |f: Vec<u8>, offset: u16, id: u32| {
        let mut out = f[..54].to_vec();
        out[20] = 44;
        let len = u16::from_be_bytes([f[18], f[19]]) + 8;
        out[18..20].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[f[20], 0]);
        out.extend_from_slice(&((offset << 3) | 1).to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&f[54..]);
        out
    };
    let edit = |mut f: Vec<u8>, at: usize, bytes: &[u8]| {
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    // (frame, where it is counted: "drops.<reason>" or "xdp_passed.<reason>")
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "hop-by-hop options",
            edit(syn(), 14 + 6, &[0]),
            "drops.ipv6_extension_header",
        ),
        (
            "routing header",
            edit(syn(), 14 + 6, &[43]),
            "drops.ipv6_extension_header",
        ),
        (
            "destination options",
            edit(syn(), 14 + 6, &[60]),
            "drops.ipv6_extension_header",
        ),
        (
            "a first fragment to the published port that holds its whole datagram",
            frag6(client6_udp(CLIENT6, 40002, b"frag"), 0, 1),
            "drops.fragment_malformed",
        ),
        (
            "later fragment of no first fragment: the kernel's",
            frag6(client6_udp(CLIENT6, 40003, b"frag"), 1, 2),
            "xdp_passed.fragment_not_ours",
        ),
        (
            "truncated TCP header",
            syn()[..14 + 40 + 10].to_vec(),
            "drops.truncated",
        ),
        (
            "payload length beyond the frame",
            edit(syn(), 14 + 4, &[0, 200]),
            "drops.truncated",
        ),
        (
            "hop limit 1",
            edit(syn(), 14 + 7, &[1]),
            "drops.ttl_expired",
        ),
        (
            "stray segment of no flow (answered by a reset)",
            client6_tcp(CLIENT6, 40001, 5, 9, ACK, b"x"),
            "drops.tcp_no_flow",
        ),
        (
            "unpublished port",
            edit(syn(), 14 + 40 + 2, &[0x1f, 0x91]),
            "xdp_passed.unpublished_port",
        ),
        (
            "to another address",
            edit(client6_udp(CLIENT6, 40002, b"q"), 14 + 39, &[9]),
            "xdp_passed.other_address",
        ),
    ];
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, where_) in &cases {
        *want.entry(where_).or_default() += 1;
    }
    std::thread::sleep(Duration::from_millis(400));
    let before = mg.stats_json();
    common::inject(
        &lab.client6(),
        "eth0",
        cases.iter().map(|(_, f, _)| to_in0(f.clone())).collect(),
    );
    let good = lab
        .in_ns(&lab.client6(), || {
            (0..5)
                .map(|_| lab::tcp_request(target6(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(good.iter().all(|g| g.is_ok()), "{good:?}");
    std::thread::sleep(Duration::from_millis(700));
    let after = mg.stats_json();
    for (where_, n) in &want {
        let (group, reason) = where_.split_once('.').unwrap();
        let d = after[group][reason].as_u64().unwrap() - before[group][reason].as_u64().unwrap();
        if group == "drops" {
            assert_eq!(d, *n, "{where_}: counted {d}, sent {n}\n{after}");
        } else if *where_ == "xdp_passed.other_address" {
            // Shared with the client's own IPv6 stack, which sends router
            // solicitations and MLD reports to multicast addresses in its
            // first seconds (up to 4 s apart, so their number in this
            // window varies: 5 extra were seen in one CI run). What can be
            // asserted: the frame was passed, not forwarded or dropped.
            assert!(d >= *n, "{where_}: counted {d}, sent {n}");
        } else {
            // Shared with the lab's own traffic now and then.
            assert!(d >= *n && d <= n + 4, "{where_}: counted {d}, sent {n}");
        }
    }
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}

/// An IPv6 client's connection keeps its task through a takeover and
/// through SIGKILL and a restart (flow-state format 2 carries its address).
#[test]
fn an_ipv6_connection_survives_a_takeover_and_a_crash() {
    use std::io::Write;
    let Some((lab, _servers)) = lab6() else {
        return;
    };
    let mg = Meshgate::start(&lab, &config6(&lab));
    let mut s = lab
        .in_ns(&lab.client6(), || {
            std::net::TcpStream::connect_timeout(&target6(), T)
        })
        .unwrap()
        .unwrap();
    // Long enough for a retransmission after the restart.
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut ask = |what: &str| -> String {
        s.write_all(b"hello\n").unwrap();
        let line = lab::read_line(&mut s).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!line.is_empty(), "{what}: closed");
        common::task_of(&line)
    };
    let task = ask("before");
    let (mg, _) = mg.take_over(&lab, 1);
    assert_eq!(ask("after the takeover"), task);
    let mg = mg.kill_and_restart(&lab, 2);
    assert_eq!(ask("after SIGKILL and a restart"), task);
    let log = mg.log();
    assert!(log.contains("restarted with the flows"), "{log}");
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}
