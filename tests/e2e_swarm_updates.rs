//! A swarm's everyday life under continuous traffic, through meshgate on
//! the manager and on a worker (each from its own Docker socket; the
//! worker has no manager's): a rolling update, a killed task and a
//! removed service, with tasks that behave like a graceful server (on
//! SIGTERM it stops accepting, finishes what is in flight within 4 s,
//! then exits).
//!
//! Both share the swarm's announcement key: the manager's meshgate
//! announces what only a manager knows (the ports' protocols, the tasks
//! being drained, a removed service), and the worker's takes it from
//! there. No `DOCKER-INGRESS` rules are written: this kernel has no IPVS,
//! so Docker writes none.
//!
//! Needs root and Docker, as `e2e_swarm` does. Prints the lags it
//! measures (docs/swarm.md quotes them).

use meshgate_testkit::harness as common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::swarm::{Mg, swarm_config, wait_until};
use meshgate_testkit::swarm_lab::{MANAGER_ADDR, Node, SwarmLab, WORKER_ADDR};

/// busybox httpd as a graceful server, with `/cgi-bin/slow` (3 s) for
/// requests in flight; `/` answers the container's hostname.
const GRACEFUL: &str = "mkdir -p /www/cgi-bin && hostname > /www/index.html \
    && printf '%s\\n' '#!/bin/sh' 'sleep 3' 'echo Content-Type: text/plain' 'echo' 'hostname' \
       > /www/cgi-bin/slow && chmod +x /www/cgi-bin/slow; \
    httpd -f -p 80 -h /www & p=$!; trap 'kill $p; sleep 4; exit 0' TERM; wait $p; wait $p";

fn addr(node: &str) -> SocketAddr {
    format!("{node}:8080").parse().unwrap()
}

/// The lab, `web` (three graceful tasks on the two workers, 10 s stop
/// grace period) and meshgate on the manager and on the worker, both
/// with web's three tasks in their tables.
fn setup() -> Option<(SwarmLab, Mg, Mg)> {
    if !common::privileged() || !common::docker_available() {
        return None;
    }
    let lab = SwarmLab::build_with(2).unwrap_or_else(|e| panic!("building the swarm lab: {e}"));
    let options = [
        "--replicas",
        "3",
        "--constraint",
        "node.role==worker",
        "--stop-grace-period",
        "10s",
    ];
    lab.create_service("web", "8080:80", &options, GRACEFUL)
        .unwrap();
    lab.wait_for("3 running tasks of web", Duration::from_secs(90), |l| {
        l.running_tasks("web").unwrap_or(0) == 3
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.daemon_log(&lab.manager())));
    let sandbox = |node: Node| format!("sandbox = \"{}\"\n", lab.sandbox(node).display());
    let wcfg: PathBuf = swarm_config(&lab, Node::Worker, "worker.toml", &sandbox(Node::Worker));
    let mcfg: PathBuf = swarm_config(&lab, Node::Manager, "manager.toml", &sandbox(Node::Manager));
    let on_worker = Mg::start_in(&lab, &lab.worker(), &["--config", wcfg.to_str().unwrap()]);
    let on_manager = Mg::start_in(&lab, &lab.manager(), &["--config", mcfg.to_str().unwrap()]);
    for mg in [&on_worker, &on_manager] {
        wait_until("meshgate sees 3 tasks", Duration::from_secs(10), || {
            mg.web_tasks() == 3
        });
    }
    Some((lab, on_worker, on_manager))
}

/// What the clients saw while `during` ran.
#[derive(Debug, Default)]
struct Seen {
    short: usize,
    slow: usize,
    /// The longest short request.
    longest: Duration,
    failures: Vec<String>,
}

impl Seen {
    /// No request failed; else the failures and both meshgates' logs.
    fn assert_none_failed(&self, on_manager: &Mg, on_worker: &Mg) {
        assert!(
            self.failures.is_empty(),
            "{:?}\n{}\n{}",
            self.failures,
            on_manager.log(),
            on_worker.log()
        );
    }
}

/// Runs `during` under load: a short request every 50 ms, alternating
/// between the manager and the worker, and six 3-second requests in
/// flight at all times (three through each node); then 2 s more.
fn under_load(lab: &SwarmLab, during: impl FnOnce()) -> Seen {
    let going = AtomicBool::new(true);
    let seen = Mutex::new(Seen::default());
    let short = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut i = 0;
            while going.load(Ordering::Relaxed) {
                let to = addr([MANAGER_ADDR, WORKER_ADDR][i % 2]);
                let t0 = Instant::now();
                let r = lab.http_get(to, Duration::from_secs(10));
                let took = t0.elapsed();
                let mut s = seen.lock().unwrap();
                match r {
                    Ok(_) => s.short += 1,
                    Err(e) => s.failures.push(format!("short {i} via {to}: {e}")),
                }
                s.longest = s.longest.max(took);
                drop(s);
                short.fetch_add(1, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        for k in 0..6 {
            let (going, seen) = (&going, &seen);
            sc.spawn(move || {
                let to = addr([MANAGER_ADDR, WORKER_ADDR][k % 2]);
                while going.load(Ordering::Relaxed) {
                    let r = lab.http_get_path(to, "/cgi-bin/slow", Duration::from_secs(15));
                    let mut s = seen.lock().unwrap();
                    match r {
                        Ok(_) => s.slow += 1,
                        Err(e) => s.failures.push(format!("slow via {to}: {e}")),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(1));
        during();
        std::thread::sleep(Duration::from_secs(2));
        going.store(false, Ordering::Relaxed);
    });
    seen.into_inner().unwrap()
}

/// Waits for web's update to complete (`UpdateStatus.State`).
fn wait_for_update(lab: &SwarmLab) -> Duration {
    let t0 = Instant::now();
    lab.wait_for("web's update", Duration::from_secs(180), |l| {
        l.docker(
            Node::Manager,
            &[
                "service",
                "inspect",
                "web",
                "--format",
                "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
            ],
        )
        .is_ok_and(|s| s.trim() == "completed")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.daemon_log(&lab.manager())));
    t0.elapsed()
}

/// How long until `mg`'s `service ps web` shows a task in `state`,
/// polled every 20 ms from now (at most `limit`).
fn until_state(mg: &Mg, state: &str, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let (_, out, _) = common::cli_at(&mg.control, &["service", "ps", "web"]);
        if out.lines().skip(1).any(|l| l.contains(state)) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The state `service ps web` shows for the task at `address` (running,
/// draining, ejected …), if it is there.
fn task_state(mg: &Mg, address: &str) -> Option<String> {
    let (_, out, _) = common::cli_at(&mg.control, &["service", "ps", "web"]);
    let header = out.lines().next()?;
    let at = header.find("STATE")?;
    out.lines().skip(1).find(|l| l.contains(address)).map(|l| {
        l.get(at..)
            .unwrap_or("")
            .split("  ")
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    })
}

/// A meshgate's drops, events and the XDP program's passes, for a
/// failure's message.
fn counters(mg: &Mg) -> String {
    let st = mg.stats();
    format!("{} {} {}", st["drops"], st["events"], st["xdp_passed"])
}

#[test]
fn a_rolling_update_fails_no_request_through_the_manager_or_a_worker() {
    let Some((lab, on_worker, on_manager)) = setup() else {
        return;
    };
    let (mut drain_lag, mut worker_lag) = (None, None);
    let seen = under_load(&lab, || {
        let t0 = Instant::now();
        lab.docker(
            Node::Manager,
            &["service", "update", "--detach", "--force", "web"],
        )
        .unwrap();
        drain_lag = until_state(&on_manager, "draining", Duration::from_secs(5));
        // The worker's Docker says nothing of it: the manager's meshgate
        // does.
        worker_lag =
            until_state(&on_worker, "draining", Duration::from_secs(5)).map(|_| t0.elapsed());
        let took = wait_for_update(&lab);
        eprintln!("the update took {took:?}");
    });
    eprintln!(
        "rolling update: {} short and {} slow requests, the longest short one {:?}; \
         after the update was asked for, the manager drained the first task after {:?}, \
         the worker after {:?}",
        seen.short, seen.slow, seen.longest, drain_lag, worker_lag
    );
    seen.assert_none_failed(&on_manager, &on_worker);
    assert!(seen.short >= 100 && seen.slow >= 12, "{seen:?}");
    assert!(drain_lag.is_some(), "the manager never drained a task");
    // Swarm waits 2 s between the drain and the stop signal: the drain
    // must reach every node within that.
    assert!(
        worker_lag.is_some_and(|l| l < Duration::from_secs(1)),
        "the worker drained the task after {worker_lag:?}"
    );
    for mg in [&on_worker, &on_manager] {
        wait_until("three new tasks", Duration::from_secs(10), || {
            mg.web_tasks() == 3
        });
    }
}

/// `docker service scale web=1` under the same load: the two stopping
/// tasks are drained on both nodes before their stop signal, their
/// requests in flight finish, and no request fails.
#[test]
fn a_scale_down_fails_no_request_through_the_manager_or_a_worker() {
    let Some((lab, on_worker, on_manager)) = setup() else {
        return;
    };
    let mut lags = (None, None);
    let seen = under_load(&lab, || {
        let t0 = Instant::now();
        lab.docker(Node::Manager, &["service", "scale", "--detach", "web=1"])
            .unwrap();
        lags.0 = until_state(&on_manager, "draining", Duration::from_secs(5));
        lags.1 = until_state(&on_worker, "draining", Duration::from_secs(5)).map(|_| t0.elapsed());
        for mg in [&on_manager, &on_worker] {
            wait_until("one task of web left", Duration::from_secs(30), || {
                let (_, out, _) = common::cli_at(&mg.control, &["service", "ps", "web"]);
                out.lines().skip(1).count() == 1
            });
        }
    });
    eprintln!(
        "scale down: {} short and {} slow requests, the longest short one {:?}; \
         the manager drained after {:?}, the worker after {:?}",
        seen.short, seen.slow, seen.longest, lags.0, lags.1
    );
    seen.assert_none_failed(&on_manager, &on_worker);
    assert!(seen.short >= 50 && seen.slow >= 12, "{seen:?}");
    assert!(
        lags.1.is_some_and(|l| l < Duration::from_secs(1)),
        "the worker drained after {:?}",
        lags.1
    );
}

#[test]
fn a_killed_task_costs_a_client_at_most_one_syn_retransmission() {
    let Some((lab, on_worker, on_manager)) = setup() else {
        return;
    };
    let victim = lab
        .docker(Node::Worker, &["ps", "-q", "--filter", "name=web."])
        .unwrap();
    let victim = victim.split_whitespace().next().unwrap().to_string();
    let victim_addr = lab
        .docker(
            Node::Worker,
            &[
                "inspect",
                "--format",
                "{{.NetworkSettings.Networks.ingress.IPAddress}}",
                &victim,
            ],
        )
        .unwrap()
        .trim()
        .to_string();
    // What each node shows of the killed task, and when it left the
    // node's tables (Swarm reports the death; passive health would eject
    // it, at its third unanswered SYN, had it stayed longer).
    let mut states: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let mut gone_after: [Option<Duration>; 2] = [None, None];
    let seen = under_load(&lab, || {
        let t0 = Instant::now();
        lab.docker(Node::Worker, &["kill", &victim]).unwrap();
        loop {
            for (i, mg) in [&on_manager, &on_worker].into_iter().enumerate() {
                let state = task_state(mg, &victim_addr).unwrap_or_else(|| "gone".into());
                if state == "gone" && gone_after[i].is_none() {
                    gone_after[i] = Some(t0.elapsed());
                }
                if states[i].last() != Some(&state) {
                    states[i].push(state);
                }
            }
            if lab.running_tasks("web").unwrap_or(0) == 3 && gone_after.iter().all(Option::is_some)
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no new third task, or the killed one stays: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    eprintln!(
        "docker kill: {} short and {} slow requests, the longest short one {:?}; \
         the killed task on the manager {:?}, gone after {:?}; on the worker {:?}, gone after {:?}",
        seen.short, seen.slow, seen.longest, states[0], gone_after[0], states[1], gone_after[1]
    );
    for (node, (s, after)) in ["manager", "worker"]
        .iter()
        .zip(states.iter().zip(gone_after))
    {
        assert!(
            s.iter()
                .all(|st| st == "running" || st.starts_with("ejected") || st == "gone"),
            "{node}: {s:?}"
        );
        assert!(
            after.is_some_and(|a| a < Duration::from_secs(5)),
            "{node} kept the killed task {after:?}: {s:?}"
        );
    }
    // Requests in flight on the killed task die with it, as they do with
    // Swarm's own mesh: only new connections must not fail.
    let short_failures: Vec<_> = seen
        .failures
        .iter()
        .filter(|f| f.starts_with("short"))
        .collect();
    assert!(
        short_failures.is_empty(),
        "{short_failures:?}\n{}\n{}\nmanager {}\nworker {}",
        on_manager.log(),
        on_worker.log(),
        counters(&on_manager),
        counters(&on_worker)
    );
    assert!(
        seen.longest < Duration::from_millis(2_500),
        "a new connection waited {:?}: more than one retransmission",
        seen.longest
    );
}

#[test]
fn a_removed_service_refuses_new_connections_and_finishes_those_in_flight() {
    let Some((lab, on_worker, on_manager)) = setup() else {
        return;
    };
    let in_flight: Vec<_> = [MANAGER_ADDR, WORKER_ADDR]
        .into_iter()
        .map(|node| {
            let client = lab.client();
            std::thread::spawn(move || {
                let r = SwarmLab::http_get_in(
                    &client,
                    addr(node),
                    "/cgi-bin/slow",
                    Duration::from_secs(15),
                );
                r.map_err(|e| format!("via {node}: {e}"))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    lab.docker(Node::Manager, &["service", "rm", "web"])
        .unwrap();
    let mut refused_after = Vec::new();
    for node in [MANAGER_ADDR, WORKER_ADDR] {
        loop {
            match lab.http_get(addr(node), Duration::from_secs(2)) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ if t0.elapsed() > Duration::from_secs(15) => {
                    panic!("{node} still takes connections 15 s after docker service rm")
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        refused_after.push((node, t0.elapsed()));
    }
    eprintln!("docker service rm: new connections refused after {refused_after:?}");
    for r in in_flight {
        let r = r.join().unwrap();
        assert!(
            r.is_ok(),
            "a request in flight failed: {r:?}\n{}\n{}",
            on_manager.log(),
            on_worker.log()
        );
    }
    assert!(
        refused_after[0].1 < Duration::from_secs(1),
        "the manager refused after {:?}",
        refused_after[0].1
    );
    // A worker's Docker does not say that the service is gone while its
    // tasks run (docs/swarm.md): the manager's meshgate does.
    assert!(
        refused_after[1].1 < Duration::from_secs(1),
        "the worker refused after {:?}",
        refused_after[1].1
    );
}

/// A task with a Docker health check joins when Docker says it is
/// healthy, on the manager (Swarm reports it running only then) and on a
/// worker (its ingress view lists it only then): never before.
#[test]
fn a_task_with_a_health_check_gets_flows_only_once_healthy() {
    let Some((lab, on_worker, on_manager)) = setup() else {
        return;
    };
    // The worker knows the port from the manager's meshgate at once: only
    // its view of the task keeps it out.
    let options = [
        "--constraint",
        "node.role==worker",
        "--health-cmd",
        "test -f /www/ready",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        "--health-start-period",
        "60s",
    ];
    let ready_late = "(sleep 15; touch /www/ready) & mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";
    lab.create_service("late", "8081:80", &options, ready_late)
        .unwrap();
    let status = || -> String {
        [Node::Worker, Node::Worker2]
            .into_iter()
            .filter_map(|n| {
                lab.docker(
                    n,
                    &["ps", "--filter", "name=late.", "--format", "{{.Status}}"],
                )
                .ok()
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    lab.wait_for("late's container", Duration::from_secs(60), |_| {
        status().contains("health: starting")
    })
    .unwrap();
    let mut checked = 0;
    while status().contains("health: starting") {
        for (mg, node) in [(&on_manager, MANAGER_ADDR), (&on_worker, WORKER_ADDR)] {
            assert_eq!(
                mg.tasks_up("late"),
                0,
                "{node} has late before it is healthy"
            );
            let to: SocketAddr = format!("{node}:8081").parse().unwrap();
            assert!(lab.http_get(to, Duration::from_secs(1)).is_err());
        }
        checked += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(checked >= 3, "too little time before healthy: {checked}");
    let t0 = Instant::now();
    for (mg, node) in [(&on_manager, MANAGER_ADDR), (&on_worker, WORKER_ADDR)] {
        let t1 = Instant::now();
        while mg.tasks_up("late") != 1 {
            assert!(
                t1.elapsed() < Duration::from_secs(10),
                "{node} has no task of late 10 s after Docker said healthy ({}):\n{}\n{}\n{}",
                status(),
                common::cli_at(&mg.control, &["service", "ls"]).1,
                lab.docker(Node::Manager, &["service", "ps", "late"])
                    .unwrap_or_default(),
                mg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let to: SocketAddr = format!("{node}:8081").parse().unwrap();
        lab.http_get(to, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{node} after healthy: {e}"));
    }
    eprintln!(
        "health check: both nodes had the task {:?} after Docker said healthy",
        t0.elapsed()
    );
}
