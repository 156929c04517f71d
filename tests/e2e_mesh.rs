//! End to end through the namespace lab: a client talks to the published
//! port; meshgate (not the kernel) carries the flows in VXLAN to tasks on
//! two nodes with real kernel VXLAN devices, and carries the replies back.

use meshgate_testkit::harness as common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

use common::{Meshgate, default_lab, privileged, target, task_and_source};
use meshgate_testkit::lab::{self, Lab, LabOptions};

const T: Duration = Duration::from_secs(3);

#[test]
fn routing_mesh_end_to_end() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = Meshgate::start(&lab, &lab.config_toml("[control]\nstats_interval = 0.5\n"));

    // 30 TCP connections spread 10/10/10; every task sees the sandbox address.
    let answers = lab
        .in_ns(&lab.client(), || {
            (0..30)
                .map(|_| lab::tcp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    let mut per_task: BTreeMap<String, u32> = BTreeMap::new();
    for a in &answers {
        let line = a
            .as_ref()
            .unwrap_or_else(|e| panic!("a TCP connection failed: {e}\n{}", mg.log()));
        let (task, src) = task_and_source(line);
        assert_eq!(
            src, "198.18.128.2",
            "the task sees the ingress sandbox address as the source: {line}"
        );
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

    // UDP works the same way, and datagram flows rotate too.
    let udp = lab
        .in_ns(&lab.client(), || {
            (0..3)
                .map(|_| lab::udp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    let mut udp_tasks = std::collections::BTreeSet::new();
    for a in &udp {
        let line = a
            .as_ref()
            .unwrap_or_else(|e| panic!("a UDP exchange failed: {e}"));
        let (task, src) = task_and_source(line);
        assert_eq!(src, "198.18.128.2");
        udp_tasks.insert(task);
    }
    assert_eq!(udp_tasks.len(), 3, "three UDP flows, three tasks: {udp:?}");

    // An existing TCP connection keeps its task while new ones rotate.
    let (kept, rotated) = lab
        .in_ns(&lab.client(), || {
            use std::io::Write;
            let mut long = TcpStream::connect_timeout(&target(), T).unwrap();
            long.set_read_timeout(Some(T)).unwrap();
            let mut kept = Vec::new();
            let mut rotated = Vec::new();
            for _ in 0..6 {
                long.write_all(b"again\n").unwrap();
                kept.push(task_and_source(&lab::read_line(&mut long).unwrap()).0);
                rotated.push(task_and_source(&lab::tcp_request(target(), T).unwrap()).0);
            }
            (kept, rotated)
        })
        .unwrap();
    assert!(
        kept.iter().all(|t| *t == kept[0]),
        "the long connection moved: {kept:?}"
    );
    let distinct: std::collections::BTreeSet<_> = rotated.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "new connections rotate over all tasks: {rotated:?}"
    );

    // The kernel still answers ping and ARP on the node address.
    lab.exec(&lab.client(), &["ping", "-c", "1", "-W", "2", "198.18.0.2"])
        .expect("ping to the node address");
    let neigh = lab
        .ip(&lab.client(), &["neigh", "show", "198.18.0.2"])
        .unwrap();
    assert!(
        neigh.contains("lladdr"),
        "the client resolved the node address by ARP: {neigh}"
    );

    // Counters: meshgate forwarded and counted what the test sent. The
    // statistics file is written every 0.5 s from reports the workers send
    // every 250 ms: wait for the last of them.
    let t0 = std::time::Instant::now();
    let mut live = mg.stats_json();
    while live["events"]["flows_created"].as_u64() != Some(40)
        && t0.elapsed() < Duration::from_secs(3)
    {
        std::thread::sleep(Duration::from_millis(100));
        live = mg.stats_json();
    }
    let flows = live["events"]["flows_created"].as_u64().unwrap();
    assert_eq!(flows, 30 + 3 + 1 + 6, "flows created: {live}");
    assert!(
        live["events"]["arp_replies"].as_u64().unwrap() >= 2,
        "tasks resolved the sandbox through meshgate: {live}"
    );

    let (st, log, _) = mg.stop();
    assert!(st.success(), "meshgate exit status {st}:\n{log}");
    assert!(log.contains("XDP program detached"), "{log}");
    assert!(
        !lab::xdp_attached(&lab.ingress(), "in0").unwrap(),
        "no XDP program left on in0"
    );
    // Without meshgate the published port is the kernel's again: closed.
    let after = lab
        .in_ns(&lab.client(), || {
            lab::tcp_request(target(), Duration::from_secs(1))
        })
        .unwrap();
    assert!(
        after.is_err(),
        "the kernel does not forward the published port: {after:?}"
    );
}

#[test]
fn replies_arriving_on_another_queue_are_translated() {
    if !privileged() {
        return;
    }
    let lab = Lab::build(LabOptions {
        queues: 2,
        ..LabOptions::default()
    })
    .expect("lab");
    let _servers = lab.start_servers().expect("servers");
    let mg = Meshgate::start(&lab, &lab.config_toml("[control]\nstats_interval = 0.5\n"));
    assert!(mg.log().contains("2 queue(s)"), "{}", mg.log());
    let answers = lab
        .in_ns(&lab.client(), || {
            (0..60)
                .map(|_| lab::tcp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 60 connections failed: {failed:?}\n{}",
        failed.len(),
        mg.log()
    );
    let udp = lab
        .in_ns(&lab.client(), || {
            (0..20)
                .map(|_| lab::udp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(udp.iter().all(|a| a.is_ok()), "{udp:?}");
    let (st, log, stats) = mg.stop();
    assert!(st.success(), "{log}");
    let handoffs = stats["events"]["handoffs"].as_u64().unwrap();
    assert!(
        handoffs > 0,
        "replies crossed queues and were handed to the flow's worker: {stats}"
    );
    assert_eq!(stats["drops"]["handoff_full"].as_u64().unwrap(), 0);
    let per_worker = stats["flows_per_worker"].as_array().unwrap();
    assert_eq!(per_worker.len(), 2);
    // RSS spread the connections over both queues' workers.
    let flows: Vec<u64> = per_worker.iter().map(|v| v.as_u64().unwrap()).collect();
    eprintln!("flows per worker: {flows:?}, hand-offs {handoffs}");
    assert!(flows.iter().all(|&n| n >= 10), "{flows:?}");
}

/// SIGTERM stops meshgate cleanly and gives the published port back to
/// the kernel. SIGKILL leaves the program attached (netlink, not a BPF
/// link: it outlives the process), so the port is not the kernel's: a SYN
/// is dropped and counted, not refused with a reset, until a restarted
/// meshgate replaces the program in one step and answers again.
#[test]
fn xdp_program_goes_on_sigterm_and_stays_through_sigkill() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let cfg = lab.config_toml("");
    let mg = Meshgate::start(&lab, &cfg);
    mg.signal("TERM");
    let t0 = std::time::Instant::now();
    while lab::xdp_attached(&lab.ingress(), "in0").unwrap() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still attached 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(mg);
    // The published port is the kernel's again: connection refused, at once.
    let r = lab
        .in_ns(&lab.client(), || lab::tcp_request(target(), T))
        .unwrap();
    let e = r.expect_err("nothing listens on 8080 without meshgate");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

    let mut mg = Meshgate::start(&lab, &cfg);
    assert!(
        lab.in_ns(&lab.client(), || lab::tcp_request(target(), T))
            .unwrap()
            .is_ok()
    );
    mg.signal("KILL");
    let _ = mg.child.as_mut().unwrap().wait();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        lab::xdp_attached(&lab.ingress(), "in0").unwrap(),
        "the program went with the killed process"
    );
    // No reset from the kernel: the SYN is dropped, the connect times out.
    let r = lab
        .in_ns(&lab.client(), || {
            lab::tcp_request(target(), Duration::from_millis(700))
        })
        .unwrap();
    let e = r.expect_err("nobody forwards while meshgate is down");
    assert_ne!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // A restarted meshgate replaces the program and answers.
    let mg = Meshgate::start(&lab, &cfg);
    let again = lab
        .in_ns(&lab.client(), || {
            (0..3)
                .map(|_| lab::tcp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(again.iter().all(|a| a.is_ok()), "{again:?}");
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
    assert!(log.contains("replaced the meshgate XDP program"), "{log}");
    assert!(
        !lab::xdp_attached(&lab.ingress(), "in0").unwrap(),
        "SIGTERM after the restart detaches"
    );
}

/// The lab's veths keep their default offloads, so frames reach meshgate
/// with partial TCP/UDP checksums: "auto" completes them (the log says
/// "partial-completing"), and forcing incremental updates shows the black hole that the
/// lab would otherwise hide (the tasks drop every forwarded segment).
#[test]
fn default_veth_offloads_need_full_checksums() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = Meshgate::start(&lab, &lab.config_toml(""));
    let ok = lab
        .in_ns(&lab.client(), || {
            (0..6)
                .map(|_| lab::tcp_request(target(), T).is_ok())
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(ok.iter().all(|&o| o), "{ok:?}");
    let log = mg.log();
    assert!(
        log.contains("partial-completing TCP/UDP checksums"),
        "{log}"
    );
    // The program was loaded bound to in0 with its VLAN check (veth
    // reports stripped tags), not the fallback without it.
    assert!(!log.contains("VLAN-tagged frames"), "{log}");
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");

    let cfg = lab
        .config_toml("")
        .replace("[node]\n", "[node]\nchecksum = \"incremental\"\n");
    let mg = Meshgate::start(&lab, &cfg);
    let ok = lab
        .in_ns(&lab.client(), || {
            (0..3)
                .map(|_| lab::tcp_request(target(), Duration::from_millis(1500)).is_ok())
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(
        ok.iter().all(|&o| !o),
        "with incremental updates of partial checksums no connection can work here: {ok:?}"
    );
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");

    // RUST_LOG=warn keeps the info lines out (and meshgate still runs).
    let file = std::env::temp_dir().join(format!("{}-warn.toml", lab.prefix));
    std::fs::write(&file, lab.config_toml("")).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ingress(), "env", "RUST_LOG=warn"])
        .arg(env!("CARGO_BIN_EXE_meshgate"))
        .args(["run", "--duration", "1", "--control"])
        .arg(file.with_extension("sock"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("forwarding on") && !text.contains("stopped"),
        "RUST_LOG=warn keeps info lines out: {text}"
    );
}
