//! Hostile and unusual frames sent through the running forwarder in the
//! lab: each is dropped by meshgate or passed to the kernel by its XDP
//! program, and counted under its reason; good traffic keeps flowing.
//! Also: PMTU discovery through meshgate, ICMP errors of a flow reaching its
//! client, zero-length and bad-checksum UDP.

use meshgate_testkit::harness as common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use common::{Meshgate, default_lab, inject, mac_of, target};
use meshgate_testkit::fixtures::*;
use meshgate_testkit::lab;

const T: Duration = Duration::from_secs(3);

/// Gives a fixture frame the lab's MACs: from the client, to in0.
fn to_in0(mut f: Vec<u8>, client: [u8; 6], in0: [u8; 6]) -> Vec<u8> {
    f[0..6].copy_from_slice(&in0);
    f[6..12].copy_from_slice(&client);
    f
}

fn with_ip_edit(mut f: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    edit(&mut f);
    f
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = Meshgate::start(&lab, &lab.config_toml("[control]\nstats_interval = 0.25\n"));
    let (client, in0) = (
        mac_of(&lab, &lab.client(), "eth0"),
        mac_of(&lab, &lab.ingress(), "in0"),
    );
    // Good traffic first: it must work before, during and after.
    assert!(
        lab.in_ns(&lab.client(), || lab::tcp_request(target(), T))
            .unwrap()
            .is_ok()
    );

    let syn = || client_tcp(40000, 1, 0, SYN, b"");
    // (frame, where it is counted: "drops.<reason>" or "xdp_passed.<reason>")
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated tcp header",
            with_ip_edit(syn(), |f| f.truncate(44)),
            "drops.truncated",
        ),
        (
            "total length beyond the frame",
            with_ip_edit(client_udp(40001, b"abcd"), |f| {
                f[16..18].copy_from_slice(&200u16.to_be_bytes());
                fix_ip_checksum(f, 14);
            }),
            "drops.truncated",
        ),
        (
            "total length below the header",
            with_ip_edit(client_udp(40002, b"abcd"), |f| {
                f[16..18].copy_from_slice(&10u16.to_be_bytes());
                fix_ip_checksum(f, 14);
            }),
            "drops.ip_malformed",
        ),
        (
            "ihl 4",
            with_ip_edit(client_udp(40003, b"abcd"), |f| {
                f[14] = 0x44;
                fix_ip_checksum(f, 14);
            }),
            "drops.ip_malformed",
        ),
        (
            "ip options",
            with_ip_edit(client_udp(40004, b"opts"), |f| {
                f.splice(34..34, [1u8, 1, 1, 0]);
                f[14] = 0x46;
                let tl = u16::from_be_bytes([f[16], f[17]]) + 4;
                f[16..18].copy_from_slice(&tl.to_be_bytes());
                fix_ip_checksum(f, 14);
            }),
            "drops.ip_options",
        ),
        (
            "bad ip checksum",
            with_ip_edit(client_udp(40005, b"x"), |f| f[24] ^= 0xff),
            "drops.ip_checksum",
        ),
        (
            "a first fragment that holds its whole datagram",
            with_ip_edit(client_udp(40006, b"frag"), |f| {
                f[20] = 0x20;
                fix_ip_checksum(f, 14);
            }),
            "drops.fragment_malformed",
        ),
        (
            // Its first fragment was never seen: the kernel's, as the node's
            // own traffic is.
            "later fragment of no first fragment",
            with_ip_edit(client_udp(40007, b"frag"), |f| {
                // Another datagram than the first fragment's above.
                f[18..20].copy_from_slice(&0x6d67u16.to_be_bytes());
                f[20] = 0x00;
                f[21] = 0x10;
                fix_ip_checksum(f, 14);
            }),
            "xdp_passed.fragment_not_ours",
        ),
        (
            "ttl 1",
            tcp_frame(
                CLIENT_MAC, NODE_MAC, CLIENT, NODE, 1, 40008, 8080, 1, 0, SYN, b"",
            ),
            "drops.ttl_expired",
        ),
        (
            "ttl 0",
            tcp_frame(
                CLIENT_MAC, NODE_MAC, CLIENT, NODE, 0, 40009, 8080, 1, 0, SYN, b"",
            ),
            "drops.ttl_expired",
        ),
        (
            "syn+fin",
            client_tcp(
                40010,
                1,
                0,
                Flags {
                    syn: true,
                    fin: true,
                    ..Flags::default()
                },
                b"",
            ),
            "drops.tcp_bad_flags",
        ),
        (
            "no tcp flags",
            client_tcp(40011, 1, 0, Flags::default(), b""),
            "drops.tcp_bad_flags",
        ),
        (
            "udp length below its header",
            with_ip_edit(client_udp(40012, b"abcd"), |f| {
                f[38..40].copy_from_slice(&4u16.to_be_bytes())
            }),
            "drops.l4_malformed",
        ),
        (
            "vxlan with bad flags",
            with_ip_edit(task_reply_tcp(0, 40013, 1, 1, ACK, b""), |f| f[42] = 0x0c),
            "drops.vxlan_bad_flags",
        ),
        (
            "spoofed reply without a flow",
            task_reply_tcp(0, 40014, 1, 1, ACK, b""),
            "drops.reply_no_flow",
        ),
        (
            "vxlan from an unknown node",
            {
                let inner = tcp_frame(
                    CLIENT_MAC,
                    overlay_mac(),
                    TASKS[0],
                    OVERLAY,
                    64,
                    80,
                    40015,
                    1,
                    1,
                    ACK,
                    b"",
                );
                vxlan_frame(
                    CLIENT_MAC,
                    NODE_MAC,
                    std::net::Ipv4Addr::new(198, 18, 0, 99),
                    NODE,
                    5000,
                    VNI,
                    &inner,
                )
            },
            "drops.unknown_vtep",
        ),
        (
            "vlan tagged",
            with_ip_edit(client_udp(40016, b"x"), |f| {
                f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
            }),
            "xdp_passed.not_ipv4",
        ),
        (
            "ipv6",
            with_ip_edit(client_udp(40017, b"x"), |f| {
                f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes())
            }),
            "xdp_passed.not_ipv4",
        ),
        (
            "truncated ipv4",
            with_ip_edit(syn(), |f| f.truncate(24)),
            "xdp_passed.short",
        ),
        (
            "vxlan with another vni",
            {
                let inner = tcp_frame(
                    CLIENT_MAC,
                    overlay_mac(),
                    TASKS[0],
                    OVERLAY,
                    64,
                    80,
                    40018,
                    1,
                    1,
                    ACK,
                    b"",
                );
                vxlan_frame(CLIENT_MAC, NODE_MAC, NODE1, NODE, 5000, 77, &inner)
            },
            "xdp_passed.vxlan_other_vni",
        ),
        (
            "vxlan for another inner address and MAC",
            {
                let inner = tcp_frame(
                    CLIENT_MAC,
                    meshgate::wire::MacAddr::docker(TASKS[1]),
                    TASKS[0],
                    TASKS[1],
                    64,
                    80,
                    40019,
                    1,
                    1,
                    ACK,
                    b"",
                );
                vxlan_frame(CLIENT_MAC, NODE_MAC, NODE1, NODE, 5000, VNI, &inner)
            },
            "xdp_passed.vxlan_not_for_sandbox",
        ),
        (
            // Routed to the sandbox (as a preserved client's reply is) but
            // of no flow meshgate knows.
            "vxlan to the sandbox's MAC for another address",
            {
                let inner = tcp_frame(
                    CLIENT_MAC,
                    overlay_mac(),
                    TASKS[0],
                    TASKS[1],
                    64,
                    80,
                    40021,
                    1,
                    1,
                    ACK,
                    b"",
                );
                vxlan_frame(CLIENT_MAC, NODE_MAC, NODE1, NODE, 5000, VNI, &inner)
            },
            "drops.inner_not_for_us",
        ),
        (
            "unpublished port",
            tcp_frame(
                CLIENT_MAC, NODE_MAC, CLIENT, NODE, 64, 40020, 8081, 1, 0, SYN, b"",
            ),
            "xdp_passed.unpublished_port",
        ),
    ];
    let mut want: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, where_) in &cases {
        *want.entry(where_).or_default() += 1;
    }
    let before = mg.settled_stats();
    let frames: Vec<Vec<u8>> = cases
        .iter()
        .map(|(_, f, _)| to_in0(f.clone(), client, in0))
        .collect();
    inject(&lab.client(), "eth0", frames);
    // Good traffic still flows.
    let good = lab
        .in_ns(&lab.client(), || {
            (0..5)
                .map(|_| lab::tcp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(good.iter().all(|g| g.is_ok()), "{good:?}");
    let after = mg.settled_stats();
    for (where_, n) in &want {
        let (group, reason) = where_.split_once('.').unwrap();
        let d = after[group][reason].as_u64().unwrap() - before[group][reason].as_u64().unwrap();
        if group == "drops" {
            assert_eq!(d, *n, "{where_}: counted {d}, sent {n}\n{after}");
        } else {
            // Frames for the kernel share these counters with the lab's own
            // background traffic (an ARP now and then).
            assert!(
                d >= *n && d <= n + 2,
                "{where_}: counted {d}, sent {n}\nbefore {}\nafter {}",
                before["xdp_passed"],
                after["xdp_passed"]
            );
        }
    }
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}

#[test]
fn pmtu_icmp_errors_and_unusual_udp() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = Meshgate::start(&lab, &lab.config_toml("[control]\nstats_interval = 0.25\n"));

    // PMTU discovery: a 1472-byte UDP datagram with DF (Linux's default)
    // is a 1500-byte packet, over the overlay MTU of 1450. meshgate answers
    // "fragmentation needed" with MTU 1450, which the client's kernel
    // records for the published address; later datagrams of that size fail
    // at once with EMSGSIZE, as the client would see behind a real router.
    // (TCP needs none of this here: the task's MSS already fits.)
    let before = mg.settled_stats();
    let (ns, ingress) = (lab.client(), lab.ingress());
    let pmtu = lab
        .in_ns(&ns, move || {
            // Linux applies a UDP "fragmentation needed" through the socket
            // that sent the datagram: keep it open across both sends.
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(target()).unwrap();
            s.send(&[0u8; 1472]).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let route = meshgate_testkit::lab::sh(&["ip", "route", "get", "198.18.0.2"]).unwrap();
            // The application hears of it (a pending EMSGSIZE)...
            let told = s.send(&[0u8; 1472]).map_err(|e| e.raw_os_error());
            // ...and then the kernel splits such datagrams into fragments
            // that fit 1450, which meshgate carries to a task.
            s.send(&[0u8; 1472]).unwrap();
            (route, told)
        })
        .unwrap();
    let _ = ingress;
    assert!(
        pmtu.0.contains("mtu 1450"),
        "the client learned the path MTU: {}",
        pmtu.0
    );
    assert_eq!(
        pmtu.1,
        Err(Some(libc::EMSGSIZE)),
        "the sending socket was told"
    );
    let stats = mg.settled_stats();
    let delta = |g: &str, k: &str| stats[g][k].as_u64().unwrap() - before[g][k].as_u64().unwrap();
    assert_eq!(delta("events", "icmp_sent"), 1, "{stats}");
    assert_eq!(delta("drops", "too_big"), 1);
    assert_eq!(
        delta("events", "fragments_forwarded"),
        2,
        "both fragments of the second datagram\n{stats}"
    );
    assert_eq!(delta("drops", "ip_fragment"), 0, "{stats}");
    // TCP through meshgate with a large request still works.
    let answer = lab
        .in_ns(&lab.client(), || {
            let mut s = TcpStream::connect_timeout(&target(), T)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut line = vec![b'x'; 20_000];
            line.push(b'\n');
            s.write_all(&line)?;
            lab::read_line(&mut s)
        })
        .unwrap();
    assert!(
        answer.as_ref().is_ok_and(|a| a.starts_with("task-")),
        "{answer:?}"
    );

    // A task's "port unreachable" reaches the client: publish 9090/udp to a
    // port nobody listens on; a connected UDP socket sees ECONNREFUSED.
    mg.cli_ok(&["service", "update", "web", "--publish-add", "9090:9/udp"]);
    let refused = lab
        .in_ns(&lab.client(), || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect((lab::INGRESS_ADDR, 9090))?;
            s.set_read_timeout(Some(T))?;
            s.send(b"anyone?")?;
            let mut b = [0u8; 64];
            s.recv(&mut b).map(|_| ())
        })
        .unwrap();
    let e = refused.expect_err("nothing listens on the target port");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

    // Zero-length UDP is a valid datagram: forwarded and answered.
    let zero = lab
        .in_ns(&lab.client(), || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(T))?;
            s.send_to(b"", target())?;
            let mut b = [0u8; 128];
            let (n, _) = s.recv_from(&mut b)?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&b[..n]).into_owned())
        })
        .unwrap();
    assert!(
        zero.as_ref().is_ok_and(|z| z.starts_with("task-")),
        "{zero:?}"
    );

    // A UDP checksum is not verified: meshgate forwards the datagram with its
    // checksum patched incrementally, so it stays wrong and the task's kernel
    // drops it (no answer); the flow was forwarded.
    let (client, in0) = (
        mac_of(&lab, &lab.client(), "eth0"),
        mac_of(&lab, &lab.ingress(), "in0"),
    );
    // Statistics lag by up to two report intervals: let them settle.
    let before = mg.settled_stats()["events"]["forwarded"].as_u64().unwrap();
    let got = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let g2 = got.clone();
    let ns = lab.client();
    let listener = std::thread::spawn(move || {
        lab::enter_ns(&ns).unwrap();
        let s = UdpSocket::bind("198.18.0.1:45999").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut b = [0u8; 128];
        if s.recv_from(&mut b).is_ok() {
            g2.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let mut bad = client_udp(45999, b"bad checksum");
    bad[40] ^= 0x55;
    inject(&lab.client(), "eth0", vec![to_in0(bad, client, in0)]);
    listener.join().unwrap();
    assert!(
        !got.load(std::sync::atomic::Ordering::SeqCst),
        "a corrupt datagram was answered"
    );
    let after = mg.settled_stats()["events"]["forwarded"].as_u64().unwrap();
    assert_eq!(
        after,
        before + 1,
        "forwarded before {before}, after {after}\n{}",
        mg.log()
    );

    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}
