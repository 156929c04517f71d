//! Live control under traffic: scale, drain and reload while a steady stream
//! of new TCP connections and long-lived ones run; check that the CLI's
//! views (`ipvs`, `service ls`, `service ps`, `stats --json`) match what the
//! test counted itself.

use meshgate_testkit::harness as common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Meshgate, default_lab, privileged, target, task_of};
use meshgate_testkit::lab::{self, Lab, LabOptions};

const T: Duration = Duration::from_secs(3);

/// One short connection of the stream.
#[derive(Debug, Clone)]
struct Conn {
    start: Instant,
    end: Instant,
    result: Result<String, String>,
}

/// One check of a long-lived connection.
#[derive(Debug, Clone)]
struct Ping {
    at: Instant,
    result: Result<String, String>,
}

struct Traffic {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<Conn>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A steady stream of new connections, one after the other, from the client.
fn stream(lab: &Lab) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let conns = Arc::new(Mutex::new(Vec::new()));
    let (s, c) = (stop.clone(), conns.clone());
    let ns = lab.client();
    let t = std::thread::spawn(move || {
        lab::enter_ns(&ns).unwrap();
        while !s.load(Ordering::Relaxed) {
            let start = Instant::now();
            let result = lab::tcp_request(target(), Duration::from_secs(2))
                .map(|l| task_of(&l))
                .map_err(|e| e.to_string());
            c.lock().unwrap().push(Conn {
                start,
                end: Instant::now(),
                result,
            });
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    Traffic {
        stop,
        conns,
        threads: vec![t],
    }
}

/// Long-lived connections, each asked every 50 ms which task serves it.
struct LongLived {
    stop: Arc<AtomicBool>,
    pings: Arc<Mutex<Vec<Vec<Ping>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn long_lived(lab: &Lab, n: usize) -> LongLived {
    let stop = Arc::new(AtomicBool::new(false));
    let pings = Arc::new(Mutex::new(vec![Vec::new(); n]));
    let (s, p) = (stop.clone(), pings.clone());
    let ns = lab.client();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        lab::enter_ns(&ns).unwrap();
        let mut socks: Vec<Option<TcpStream>> = (0..n)
            .map(|_| {
                let c = TcpStream::connect_timeout(&target(), T).unwrap();
                c.set_read_timeout(Some(T)).unwrap();
                Some(c)
            })
            .collect();
        let _ = ready_tx.send(());
        while !s.load(Ordering::Relaxed) {
            for (i, slot) in socks.iter_mut().enumerate() {
                let Some(c) = slot else { continue };
                let at = Instant::now();
                let r = c
                    .write_all(b"ping\n")
                    .and_then(|_| lab::read_line(c))
                    .map_err(|e| e.to_string());
                let r = match r {
                    Ok(l) if l.is_empty() => Err("closed".to_string()),
                    Ok(l) => Ok(task_of(&l)),
                    Err(e) => Err(e),
                };
                if r.is_err() {
                    *slot = None;
                }
                p.lock().unwrap()[i].push(Ping { at, result: r });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("long-lived connections opened");
    LongLived {
        stop,
        pings,
        thread: Some(t),
    }
}

/// Tasks that answered stream connections started after `after` and ended
/// before `before`; panics on any failure among them.
fn tasks_between(conns: &[Conn], after: Instant, before: Instant) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in conns.iter().filter(|c| c.start > after && c.end < before) {
        match &c.result {
            Ok(t) => *m.entry(t.clone()).or_default() += 1,
            Err(e) => panic!("a new connection after the change settled failed: {e}"),
        }
    }
    m
}

#[test]
fn scale_drain_and_reload_under_traffic() {
    if !privileged() {
        return;
    }
    let opts = LabOptions {
        tasks: vec![
            ("task-a".into(), 0),
            ("task-b".into(), 0),
            ("task-c".into(), 1),
            ("task-d".into(), 0),
            ("task-e".into(), 1),
        ],
        ..LabOptions::default()
    };
    let lab = Lab::build(opts).expect("lab");
    let _servers = lab.start_servers().expect("servers");
    let mg = Meshgate::start(
        &lab,
        &lab.config_toml_with(&[0, 1, 2], "[control]\nstats_interval = 0.25\n"),
    );
    let names = |s: &[&str]| {
        s.iter()
            .map(|x| x.to_string())
            .collect::<BTreeSet<String>>()
    };

    // Long-lived connections: 6 over the first three tasks.
    let long = long_lived(&lab, 6);
    let traffic = stream(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let first_tasks: BTreeSet<String> = long
        .pings
        .lock()
        .unwrap()
        .iter()
        .filter_map(|p| p.first())
        .filter_map(|p| p.result.clone().ok())
        .collect();
    assert_eq!(first_tasks, names(&["task-a", "task-b", "task-c"]));

    // (1) Scale 3 -> 5.
    let t0 = Instant::now();
    mg.cli_ok(&[
        "service",
        "update",
        "web",
        "--task-add",
        "198.18.128.7@198.18.0.11",
        "--task-add",
        "198.18.128.8@198.18.0.12",
    ]);
    let up = Instant::now();
    std::thread::sleep(Duration::from_millis(800));
    let seen = tasks_between(&traffic.conns.lock().unwrap(), up, Instant::now());
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        names(&["task-a", "task-b", "task-c", "task-d", "task-e"]),
        "{seen:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));

    // Scale 5 -> 2: keep task-c (.6) and task-e (.8).
    let rm_start = Instant::now();
    mg.cli_ok(&[
        "service",
        "update",
        "web",
        "--task-rm",
        "198.18.128.4",
        "--task-rm",
        "198.18.128.5",
        "--task-rm",
        "198.18.128.7",
    ]);
    let rm_end = Instant::now();
    // A SYN in flight to a removed task gets no answer; the client's SYN
    // retransmission (after its 1 s RTO) then reaches a surviving task.
    std::thread::sleep(Duration::from_millis(2000));
    let seen = tasks_between(&traffic.conns.lock().unwrap(), rm_end, Instant::now());
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        names(&["task-c", "task-e"]),
        "{seen:?}"
    );

    // (2) Drain task-e: open a long connection to it first.
    let drain_conn = lab
        .in_ns(&lab.client(), || {
            // Open connections back to back (the stream's connections take
            // turns on the same round robin), keep the one on task-e.
            for _ in 0..10 {
                let mut batch: Vec<TcpStream> = (0..4)
                    .map(|_| TcpStream::connect_timeout(&target(), T).unwrap())
                    .collect();
                for c in batch.iter_mut() {
                    c.set_read_timeout(Some(T)).unwrap();
                    c.write_all(b"who\n").unwrap();
                }
                if let Some(i) = batch
                    .iter_mut()
                    .position(|c| task_of(&lab::read_line(c).unwrap()) == "task-e")
                {
                    return Some(batch.swap_remove(i));
                }
            }
            None
        })
        .unwrap()
        .expect("a connection to task-e");
    mg.cli_ok(&["service", "update", "web", "--weight", "198.18.128.8=0"]);
    let drained = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    let seen = tasks_between(&traffic.conns.lock().unwrap(), drained, Instant::now());
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        names(&["task-c"]),
        "weight 0 takes no new flows: {seen:?}"
    );
    let mut dc = drain_conn;
    dc.write_all(b"still\n").unwrap();
    assert_eq!(
        task_of(&lab::read_line(&mut dc).unwrap()),
        "task-e",
        "a draining task keeps its connections"
    );

    // (3) A bad reload is rejected and changes nothing.
    let good = std::fs::read_to_string(&mg.config).unwrap();
    std::fs::write(&mg.config, good.replace("vni = 4096", "vni = 0")).unwrap();
    let before_bad = Instant::now();
    let (ok, out, err) = mg.cli(&["reload"]);
    assert!(!ok, "a bad reload must fail: {out}");
    assert!(
        err.contains("ingress.vni") && err.contains("tables unchanged"),
        "{err}"
    );
    mg.signal("HUP");
    std::thread::sleep(Duration::from_millis(600));
    assert!(mg.log().contains("reload rejected"), "{}", mg.log());
    let seen = tasks_between(&traffic.conns.lock().unwrap(), before_bad, Instant::now());
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        names(&["task-c"])
    );

    // Stop the stream (the long-lived connections stay open for the views).
    traffic.stop.store(true, Ordering::Relaxed);
    for t in traffic.threads {
        t.join().unwrap();
    }
    let conns = traffic.conns.lock().unwrap().clone();
    // Failures only among connections in flight while tasks were removed
    // (their task went away under them), at most one (the stream is sequential).
    let failed: Vec<&Conn> = conns.iter().filter(|c| c.result.is_err()).collect();
    for f in &failed {
        assert!(
            f.start <= rm_end && f.end >= rm_start,
            "a connection failed outside the removal: {f:?}"
        );
    }
    assert!(failed.len() <= 1, "{failed:?}");
    let long_c = long
        .pings
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p[0].result.as_deref() == Ok("task-c"))
        .count() as u64;

    // (4) The views match the test's own counts.
    std::thread::sleep(Duration::from_millis(600));
    let mut ok_per_task: BTreeMap<String, u64> = BTreeMap::new();
    for c in &conns {
        if let Ok(t) = &c.result {
            *ok_per_task.entry(t.clone()).or_default() += 1;
        }
    }
    let stats: serde_json::Value = serde_json::from_str(&mg.cli_ok(&["stats", "--json"])).unwrap();
    let task_json = |addr: &str| {
        stats["services"][0]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == addr)
            .unwrap()
            .clone()
    };
    let c = task_json("198.18.128.6");
    // Flows to task-c: the stream's, the long-lived ones, the drain probes' (up to 4 rounds).
    let flows_c = c["counters"]["flows"].as_u64().unwrap();
    let probes_c = flows_c - ok_per_task["task-c"] - long_c;
    assert!(
        probes_c <= 40,
        "task-c flows {flows_c} = stream {} + long {long_c} + probes {probes_c}",
        ok_per_task["task-c"]
    );
    assert_eq!(
        c["active_flows"].as_u64().unwrap(),
        long_c,
        "open long-lived connections are the active flows"
    );
    assert_eq!(
        c["inactive_flows"].as_u64().unwrap(),
        ok_per_task["task-c"] + probes_c,
        "closed connections are inactive flows"
    );
    let e = task_json("198.18.128.8");
    assert_eq!(e["weight"], 0);
    assert_eq!(e["active_flows"], 1, "the drain connection is still open");

    let ipvs = mg.cli_ok(&["ipvs"]);
    assert!(ipvs.contains("FWM  256 rr"), "{ipvs}");
    let line_c = ipvs
        .lines()
        .find(|l| l.contains("198.18.128.6:80"))
        .unwrap();
    let cols: Vec<&str> = line_c.split_whitespace().collect();
    assert_eq!(
        cols,
        vec![
            "->",
            "198.18.128.6:80",
            "Masq",
            "1",
            &long_c.to_string(),
            &(ok_per_task["task-c"] + probes_c).to_string()
        ],
        "{ipvs}"
    );
    let line_e = ipvs
        .lines()
        .find(|l| l.contains("198.18.128.8:80"))
        .unwrap();
    assert_eq!(line_e.split_whitespace().nth(3), Some("0"), "{ipvs}");
    assert!(
        !ipvs.contains("198.18.128.4"),
        "removed tasks are gone: {ipvs}"
    );

    let ls = mg.cli_ok(&["service", "ls"]);
    let row = ls.lines().find(|l| l.starts_with("web")).unwrap();
    assert!(
        row.contains("0x100")
            && row.contains("1/2")
            && row.contains("*:8080->80/tcp,*:8080->80/udp"),
        "{ls}"
    );
    let ps = mg.cli_ok(&["service", "ps", "web"]);
    let row_e = ps.lines().find(|l| l.starts_with("198.18.128.8")).unwrap();
    assert!(
        row_e.contains("draining") && row_e.contains("02:42:c6:12:80:08"),
        "{ps}"
    );
    let row_c = ps.lines().find(|l| l.starts_with("198.18.128.6")).unwrap();
    assert!(row_c.contains("running"), "{ps}");

    // Long-lived connections: those on surviving tasks never failed or
    // moved; those on removed tasks were reset promptly.
    long.stop.store(true, Ordering::Relaxed);
    let mut long = long;
    long.thread.take().unwrap().join().unwrap();
    let pings = long.pings.lock().unwrap().clone();
    for p in &pings {
        let task = p[0].result.clone().unwrap();
        let survivor = task == "task-c";
        for q in p {
            match &q.result {
                Ok(t) => assert_eq!(*t, task, "a long-lived connection moved"),
                Err(e) => {
                    assert!(!survivor, "a connection to a surviving task failed: {e}");
                    assert!(q.at >= rm_start, "failed before its task was removed: {e}");
                    assert!(
                        q.at - rm_end < Duration::from_millis(600),
                        "reset took too long after removal"
                    );
                }
            }
        }
        if !survivor {
            assert!(
                p.last().unwrap().result.is_err(),
                "a connection to a removed task kept working"
            );
        }
    }

    drop(dc);
    // The SYN budget changes with a reload, in the XDP program's map.
    let budget = |mg: &common::Meshgate| {
        let st: serde_json::Value = serde_json::from_str(&mg.cli_ok(&["stats", "--json"])).unwrap();
        st["syn_admission"]["budget_per_queue_per_second"].clone()
    };
    assert_eq!(budget(&mg), 20000, "the default budget");
    std::fs::write(
        &mg.config,
        good.replace(
            "[control]\n",
            "[flows]\nnew_per_second = 12345\n\n[control]\n",
        ),
    )
    .unwrap();
    let (ok, out, err) = mg.cli(&["reload"]);
    assert!(ok, "{out}{err}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(budget(&mg), 12345, "the reloaded budget");
    assert!(
        mg.cli_ok(&["stats"])
            .contains("new TCP flows: budget 12345/s per queue"),
        "{}",
        mg.cli_ok(&["stats"])
    );

    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}

#[test]
fn api_rejects_bad_changes_and_serves_metrics() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = Meshgate::start(
        &lab,
        &lab.config_toml("[control]\nmetrics = \"127.0.0.1:0\"\n"),
    );
    for (args, words) in [
        (
            vec![
                "service",
                "update",
                "web",
                "--task-add",
                "198.18.129.9@198.18.0.11",
            ],
            "outside the ingress subnet",
        ),
        (
            vec!["service", "update", "web", "--task-rm", "198.18.128.99"],
            "no task 198.18.128.99",
        ),
        (
            vec!["service", "update", "web", "--weight", "198.18.128.4=70000"],
            "out of range",
        ),
        (
            vec!["service", "update", "nosuch", "--weight", "198.18.128.4=1"],
            "no service named",
        ),
        (
            vec!["service", "create", "api", "--publish", "8080:80"],
            "published by another service",
        ),
        (
            vec![
                "service",
                "create",
                "api",
                "--publish",
                "9090:90",
                "--task",
                "198.18.128.4@198.18.0.11",
            ],
            "address of another task",
        ),
    ] {
        let (ok, out, err) = mg.cli(&args);
        assert!(!ok, "{args:?} was accepted: {out}");
        assert!(err.contains(words), "{args:?}: {err}");
    }
    // The tables are intact: three tasks, all running.
    let ls = mg.cli_ok(&["service", "ls"]);
    assert!(ls.contains("3/3"), "{ls}");
    // A new service on a new port works at once, and its removal closes the port.
    mg.cli_ok(&[
        "service",
        "create",
        "api",
        "--publish",
        "9090:80",
        "--task",
        "198.18.128.7@198.18.0.12",
    ]);
    let ls = mg.cli_ok(&["service", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("api") && l.contains("0x101")),
        "{ls}"
    );
    // 198.18.128.7 has no server in this lab: the SYN is forwarded, nothing answers.
    mg.cli_ok(&["service", "rm", "api"]);
    assert!(!mg.cli_ok(&["service", "ls"]).contains("api"));
    // One connection, then the counters on the Prometheus endpoint.
    let r = lab
        .in_ns(&lab.client(), || lab::tcp_request(target(), T))
        .unwrap();
    assert!(r.is_ok());
    std::thread::sleep(Duration::from_millis(400));
    let stats = mg.cli_ok(&["stats", "--json"]);
    assert!(stats.contains("\"flows_created\": 1"), "{stats}");
    let addr = mg.metrics_addr();
    let body = lab
        .in_ns(&lab.ingress(), move || {
            use std::io::Read;
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut b = String::new();
            s.read_to_string(&mut b).unwrap();
            b
        })
        .unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(
        body.contains("# TYPE meshgate_drops_total counter"),
        "{body}"
    );
    let flows: u64 = ["198.18.128.4", "198.18.128.5", "198.18.128.6"]
        .iter()
        .map(|t| {
            let key = format!("meshgate_task_flows_total{{service=\"web\",task=\"{t}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(flows, 1, "{body}");
    // Every SYN counts, a retransmission of the first one included.
    let admitted: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("meshgate_syn_admission_total{verdict=\"admitted\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        body.contains("meshgate_syn_budget 20000") && admitted >= 1,
        "{body}"
    );

    // A task whose node never answers ARP is accepted with a warning, shown
    // as skipped, and gets no new flows: no connection goes into the hole.
    let (ok, out, err) = mg.cli(&[
        "service",
        "update",
        "web",
        "--task-add",
        "198.18.128.9@198.18.0.99",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("warning: service web: task 198.18.128.9 is unresolved")
            && out.contains("gets no new flows"),
        "{out}"
    );
    let ps = mg.cli_ok(&["service", "ps", "web"]);
    let row = ps.lines().find(|l| l.starts_with("198.18.128.9")).unwrap();
    assert!(row.contains("unresolved-skipped"), "{ps}");
    let answers = lab
        .in_ns(&lab.client(), || {
            (0..6)
                .map(|_| lab::tcp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    let ps = mg.cli_ok(&["service", "ps", "web"]);
    let row = ps.lines().find(|l| l.starts_with("198.18.128.9")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[7], "0", "the unresolved task got flows: {ps}");
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}
