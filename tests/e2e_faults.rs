//! Faults: a task node that disappears, a neighbour whose MAC changes, and
//! the control socket refusing other users, and meshgate running as an
//! unprivileged user with only the capabilities it documents.

use meshgate_testkit::harness as common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Meshgate, default_lab, privileged, target, task_of};
use meshgate_testkit::lab::tcp_request;
use meshgate_testkit::lab::{self, Lab, LabOptions};

const T: Duration = Duration::from_secs(2);

#[test]
fn a_node_disappears() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = Meshgate::start(&lab, &lab.config_toml("[control]\nstats_interval = 0.25\n"));
    // A connection to task-c, on node 2.
    let ns = lab.client();
    let mut conn = std::thread::spawn(move || {
        lab::enter_ns(&ns).unwrap();
        loop {
            let mut c = TcpStream::connect_timeout(&target(), T).unwrap();
            c.set_read_timeout(Some(T)).unwrap();
            c.write_all(b"who\n").unwrap();
            if task_of(&lab::read_line(&mut c).unwrap()) == "task-c" {
                return c;
            }
        }
    })
    .join()
    .unwrap();

    // Node 2 goes away (its namespace, with task-c's link, is deleted).
    lab::sh(&["ip", "netns", "del", &lab.node(1)]).unwrap();
    // The kernel dismantles a namespace later, in a work queue: wait until
    // task-c's link (whose peer was in node 2) is gone.
    let t0 = Instant::now();
    while lab.ip(&lab.task_ns(2), &["link", "show", "eth0"]).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "node 2 was not dismantled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    conn.write_all(b"still there?\n").unwrap();
    assert!(
        lab::read_line(&mut conn).is_err(),
        "node 2 is gone: no answer"
    );

    // The control plane removes the task: its flows end with a reset, at once.
    mg.cli_ok(&["service", "update", "web", "--task-rm", "198.18.128.6"]);
    let t0 = Instant::now();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let e = lab::read_line(&mut conn).expect_err("the connection ends");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "reset within {:?}",
        t0.elapsed()
    );

    // New flows avoid the lost task.
    let fresh = lab
        .in_ns(&lab.client(), || {
            (0..8)
                .map(|_| lab::tcp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    for f in &fresh {
        let t = task_of(f.as_ref().expect("new connections work"));
        assert!(t == "task-a" || t == "task-b", "{t}");
    }
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}

#[test]
fn a_neighbour_changes_its_mac() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    // Faster kernel neighbour timers on in0, so the test takes seconds.
    for (k, v) in [
        ("base_reachable_time_ms", "2000"),
        ("delay_first_probe_time", "1"),
        ("retrans_time_ms", "500"),
    ] {
        lab.exec(
            &lab.ingress(),
            &["sysctl", "-qw", &format!("net.ipv4.neigh.in0.{k}={v}")],
        )
        .unwrap();
    }
    let mg = Meshgate::start(&lab, &lab.config_toml("[control]\nstats_interval = 0.25\n"));
    let ok = lab
        .in_ns(&lab.client(), || {
            (0..3)
                .map(|_| lab::tcp_request(target(), T))
                .collect::<Vec<_>>()
        })
        .unwrap();
    assert!(ok.iter().all(|r| r.is_ok()), "{ok:?}");

    // Node 1 (tasks a and b) gets a new MAC: meshgate's entry is now wrong.
    lab.ip(
        &lab.node(0),
        &["link", "set", "eth0", "address", "02:00:c6:12:00:99"],
    )
    .unwrap();
    let changed = Instant::now();
    // Until meshgate has the new MAC, connections to tasks a and b fail;
    // the kernel re-validates the entry meshgate asks it to, and meshgate
    // takes the answer.
    let recovered = loop {
        let r = lab
            .in_ns(&lab.client(), || {
                (0..3)
                    .map(|_| lab::tcp_request(target(), Duration::from_millis(500)))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        if r.iter().all(|x| x.is_ok()) {
            break changed.elapsed();
        }
        assert!(
            changed.elapsed() < Duration::from_secs(40),
            "still failing 40 s after the MAC change: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("recovered {recovered:?} after node 1's MAC changed");
    let neigh = lab
        .ip(&lab.ingress(), &["neigh", "show", "198.18.0.11"])
        .unwrap();
    assert!(neigh.contains("02:00:c6:12:00:99"), "{neigh}");
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}

#[test]
fn the_control_socket_refuses_other_users() {
    if !privileged() {
        return;
    }
    let lab = Lab::build(LabOptions::default()).expect("lab");
    let mg = Meshgate::start(&lab, &lab.config_toml(""));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&mg.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is private");
    // The directory must be reachable for the test; the socket itself is not.
    let dir_mode = std::fs::metadata(&mg.dir).unwrap().permissions().mode();
    std::fs::set_permissions(&mg.dir, std::fs::Permissions::from_mode(dir_mode | 0o755)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_meshgate"))
        .args(["service", "ls", "--control"])
        .arg(&mg.control)
        .output()
        .expect("setpriv (util-linux)");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Permission denied") || err.contains("permission denied"),
        "{err}"
    );
    assert!(
        mg.cli_ok(&["service", "ls"]).contains("web"),
        "root is served"
    );
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
}

/// The capabilities docs/install.md documents are enough: meshgate runs as
/// `nobody` with only those and forwards; without CAP_BPF it stops at once
/// and names what is missing.
#[test]
fn meshgate_runs_unprivileged_with_its_capabilities() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let caps = "+net_admin,+net_raw,+bpf,+ipc_lock";
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps",
        caps,
        "--ambient-caps",
        caps,
        "--bounding-set",
        "-all,+net_admin,+net_raw,+bpf,+ipc_lock",
    ];
    let mg = Meshgate::start_as(&lab, &lab.config_toml(""), &wrapper);
    let status = std::fs::read_to_string(format!("/proc/{}/status", mg.pid())).unwrap();
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    assert!(uid.contains("65534"), "meshgate runs as nobody: {uid}");
    let c = lab.client();
    let answers = lab
        .in_ns(&c, || {
            (0..6)
                .map(|_| tcp_request(target(), Duration::from_secs(3)).map(|l| task_of(&l)))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .expect("requests through an unprivileged meshgate");
    let distinct: std::collections::BTreeSet<_> = answers.iter().collect();
    assert_eq!(distinct.len(), 3, "{answers:?}");
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");

    // Without CAP_BPF: a clear error, not a half-started forwarder.
    let cfg = std::env::temp_dir().join(format!("{}-nobpf.toml", lab.prefix));
    std::fs::write(&cfg, lab.config_toml("")).unwrap();
    let caps = "+net_admin,+net_raw,+ipc_lock";
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ingress(), "setpriv"])
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps", caps, "--ambient-caps", caps])
        .args(["--bounding-set", "-all,+net_admin,+net_raw,+ipc_lock"])
        .arg(env!("CARGO_BIN_EXE_meshgate"))
        .args(["run", "--duration", "5", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&cfg);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_BPF"), "{err}");
    assert!(!lab::xdp_attached(&lab.ingress(), "in0").unwrap());
}
