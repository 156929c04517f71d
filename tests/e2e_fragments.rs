//! IP fragments in the lab, both ways through meshgate and beside it.
//!
//! A published UDP port answers datagrams of 200, 1 800, 4 000 and 9 000
//! bytes from IPv4 and IPv6 clients whole: the client's kernel sends them
//! in 1 500-byte fragments, meshgate carries them to one task (splitting
//! each for the 1 450-byte overlay), the task's kernel reassembles them and
//! answers in fragments, which come back to the client.
//!
//! And starting meshgate takes nothing away from the node's own fragmented
//! traffic: a UDP service of the ingress node itself (not published)
//! answers datagrams larger than the link's MTU, which reach it in
//! fragments, from an IPv4 and an IPv6 client, while meshgate runs and
//! serves its published port; the XDP program counts the later fragments
//! it passed to the kernel.

use meshgate_testkit::harness as common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Meshgate, privileged, target, task_of};
use meshgate_testkit::lab::{self, INGRESS_ADDR, INGRESS6_ADDR, Lab, LabOptions};

const T: Duration = Duration::from_secs(3);

/// The node's own service: not a published port.
const OWN_PORT: u16 = 9999;

/// Datagrams sent to the node's own service, and their size: three
/// fragments each on a 1 500-byte link.
const DATAGRAMS: usize = 10;
const SIZE: usize = 3000;

/// A UDP echo server on `addr` in namespace `ns`, until the flag is set.
fn echo_server(ns: &str, addr: SocketAddr) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let flag = stop.clone();
    let h = std::thread::spawn(move || {
        lab::enter_ns(&ns).expect("enter the ingress namespace");
        let s = UdpSocket::bind(addr).expect("bind the node's own service");
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    ready_rx.recv_timeout(T).expect("echo server ready");
    (stop, h)
}

/// A UDP socket of `to`'s family, waiting up to `T` for an answer.
fn socket_for(to: SocketAddr) -> UdpSocket {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let s = UdpSocket::bind(any).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// Sends `DATAGRAMS` datagrams of `SIZE` bytes to `to` (the node's own
/// echo service) and counts the answers that came back whole.
fn echoed(to: SocketAddr) -> usize {
    let s = socket_for(to);
    let mut buf = vec![0u8; 65536];
    (0..DATAGRAMS)
        .filter(|&i| {
            let msg = vec![i as u8; SIZE];
            s.send_to(&msg, to).unwrap();
            matches!(s.recv_from(&mut buf), Ok((n, _)) if buf[..n] == msg[..])
        })
        .count()
}

/// The lab with IPv6 on the ingress interface and a second client, and
/// its task servers.
fn dual_stack_lab() -> (Lab, lab::Servers) {
    let lab = Lab::build(LabOptions {
        ipv6: true,
        ..LabOptions::default()
    })
    .expect("lab");
    let servers = lab.start_servers().expect("servers");
    (lab, servers)
}

/// The lab's configuration with `node.address6`, statistics every
/// `interval` seconds.
fn config6(lab: &Lab, interval: f64) -> String {
    lab.config_toml(&format!("[control]\nstats_interval = {interval}\n"))
        .replacen(
            "[node]\n",
            &format!("[node]\naddress6 = \"{INGRESS6_ADDR}\"\n"),
            1,
        )
}

#[test]
fn the_nodes_own_fragmented_traffic_reaches_its_kernel_while_meshgate_runs() {
    if !privileged() {
        return;
    }
    let (lab, _servers) = dual_stack_lab();
    let (stop4, h4) = echo_server(&lab.ingress(), SocketAddr::from((INGRESS_ADDR, OWN_PORT)));
    let (stop6, h6) = echo_server(&lab.ingress(), SocketAddr::from((INGRESS6_ADDR, OWN_PORT)));
    let own4 = SocketAddr::from((INGRESS_ADDR, OWN_PORT));
    let own6 = SocketAddr::from((INGRESS6_ADDR, OWN_PORT));

    // Without meshgate: the kernel reassembles and answers.
    assert_eq!(
        lab.in_ns(&lab.client(), move || echoed(own4)).unwrap(),
        DATAGRAMS
    );
    assert_eq!(
        lab.in_ns(&lab.client6(), move || echoed(own6)).unwrap(),
        DATAGRAMS
    );

    let mg = Meshgate::start(&lab, &config6(&lab, 0.5));
    // meshgate serves its published port...
    let answer = lab
        .in_ns(&lab.client(), || lab::udp_request(target(), T))
        .unwrap()
        .unwrap_or_else(|e| panic!("the published port does not answer: {e}\n{}", mg.log()));
    assert!(task_of(&answer).starts_with("task-"), "{answer}");
    // ...and the node's own service still gets every fragment.
    assert_eq!(
        lab.in_ns(&lab.client(), move || echoed(own4)).unwrap(),
        DATAGRAMS,
        "IPv4 datagrams of {SIZE} bytes to the node's own service\n{}",
        mg.log()
    );
    assert_eq!(
        lab.in_ns(&lab.client6(), move || echoed(own6)).unwrap(),
        DATAGRAMS,
        "IPv6 datagrams of {SIZE} bytes to the node's own service\n{}",
        mg.log()
    );

    std::thread::sleep(Duration::from_millis(1200));
    let stats = mg.stats_json();
    // Two later fragments of each datagram passed as not meshgate's; none
    // reached the pipeline.
    let not_ours = stats["xdp_passed"]["fragment_not_ours"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        not_ours >= 2 * 2 * DATAGRAMS as u64,
        "later fragments passed to the kernel: {not_ours}\n{stats}"
    );
    assert_eq!(
        stats["drops"]["ip_fragment"].as_u64().unwrap_or(0),
        0,
        "{stats}"
    );
    for (stop, h) in [(stop4, h4), (stop6, h6)] {
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }
}

/// The sizes the issue names: one packet, two, three and seven fragments
/// on a 1 500-byte link.
const PUBLISHED_SIZES: [usize; 4] = [200, 1800, 4000, 9000];
/// Datagrams of each size from each client.
const PER_SIZE: usize = 5;

/// Sends `PER_SIZE` datagrams of each of `PUBLISHED_SIZES` to the
/// published port at `to`; returns, per size, how many answers came back
/// from a task with the datagram whole behind its line.
fn published_echoes(to: SocketAddr) -> Vec<(usize, usize)> {
    let s = socket_for(to);
    let mut buf = vec![0u8; 65536];
    PUBLISHED_SIZES
        .iter()
        .map(|&size| {
            let whole = (0..PER_SIZE)
                .filter(|&i| {
                    let msg: Vec<u8> = (0..size).map(|j| (i * 31 + j * 7) as u8).collect();
                    s.send_to(&msg, to).unwrap();
                    let Ok((n, _)) = s.recv_from(&mut buf) else {
                        return false;
                    };
                    let a = &buf[..n];
                    let line = a.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
                    let echoed = if size > lab::ECHO_ABOVE {
                        &a[line..]
                    } else {
                        &msg[..]
                    };
                    a.starts_with(b"task-") && echoed == &msg[..]
                })
                .count();
            (size, whole)
        })
        .collect()
}

#[test]
fn a_published_udp_port_answers_datagrams_of_every_size_whole() {
    if !privileged() {
        return;
    }
    let (lab, _servers) = dual_stack_lab();
    let mg = Meshgate::start(&lab, &config6(&lab, 0.25));
    let to4 = target();
    let to6 = SocketAddr::from((INGRESS6_ADDR, 8080));
    // The node learns each client's neighbour from a first small request
    // (its first answer waits for it, counted as `no_neighbour`, and a
    // client retries): then every datagram counts.
    for (ns, to) in [(lab.client(), to4), (lab.client6(), to6)] {
        let warm = lab.in_ns(&ns, move || {
            (0..5).any(|_| lab::udp_request(to, Duration::from_millis(500)).is_ok())
        });
        assert!(warm.unwrap(), "{to} answers a small request\n{}", mg.log());
    }
    let v4 = lab
        .in_ns(&lab.client(), move || published_echoes(to4))
        .unwrap();
    let v6 = lab
        .in_ns(&lab.client6(), move || published_echoes(to6))
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let stats = mg.stats_json();
    let want: Vec<(usize, usize)> = PUBLISHED_SIZES.iter().map(|&s| (s, PER_SIZE)).collect();
    assert_eq!(
        v4,
        want,
        "IPv4 client: (size, answered whole)\n{stats}\n{}",
        mg.log()
    );
    assert_eq!(
        v6,
        want,
        "IPv6 client: (size, answered whole)\n{stats}\n{}",
        mg.log()
    );
    let count = |g: &str, k: &str| stats[g][k].as_u64().unwrap_or(0);
    // Fragments per datagram on a 1 500-byte link (IPv4; IPv6 carries 8
    // bytes less per fragment, the same counts at these sizes).
    let per = |size: usize| (size + 8).div_ceil(1480) as u64;
    let fragmented: u64 = PUBLISHED_SIZES
        .iter()
        .filter(|&&s| s + 28 > 1500)
        .map(|&s| per(s))
        .sum();
    assert!(
        count("events", "fragments_forwarded") >= 2 * PER_SIZE as u64 * fragmented,
        "every client fragment forwarded\n{stats}"
    );
    assert!(
        count("events", "fragments_split") >= 2 * PER_SIZE as u64 * 3,
        "full fragments split for the overlay\n{stats}"
    );
    assert!(count("events", "fragments_replied") > 0, "{stats}");
    for reason in [
        "fragment_no_first",
        "fragment_malformed",
        "ip_fragment",
        "too_big",
        "no_frame",
    ] {
        assert_eq!(count("drops", reason), 0, "{reason}\n{stats}");
    }
}
