//! Takeovers in the lab: a new meshgate replaces a running one while
//! clients talk through it, and no connection notices more than a pause.

use meshgate_testkit::harness as common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Meshgate, default_lab, poll, target, task_of};
use meshgate::dataplane::{handover, journal};
use meshgate_testkit::lab::{self, Lab};

/// Long enough for TCP to retransmit a segment dropped during a switch
/// (the minimum RTO is 200 ms; a SYN's first retransmission comes after 1 s).
const T: Duration = Duration::from_secs(5);

/// What the clients saw while meshgate changed hands.
#[derive(Debug, Default)]
struct Outcome {
    requests: u64,
    new_connections: u64,
    failures: Vec<String>,
}

/// Six keep-alive connections asking every 250 ms, and ten new connections
/// a second, from the client namespace until `stop`.
fn clients(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Outcome> {
    let ns = lab.client();
    std::thread::spawn(move || {
        lab::enter_ns(&ns).unwrap();
        let keepalive: Vec<_> = (0..6)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut out = Outcome::default();
                    let mut s = match TcpStream::connect_timeout(&target(), T) {
                        Ok(s) => s,
                        Err(e) => {
                            out.failures.push(format!("keep-alive {i}: connect: {e}"));
                            return out;
                        }
                    };
                    s.set_read_timeout(Some(T)).unwrap();
                    let mut task = None;
                    while !stop.load(Ordering::Relaxed) {
                        let answer = s.write_all(b"hello\n").and_then(|_| lab::read_line(&mut s));
                        match answer {
                            Ok(line) if line.is_empty() => {
                                out.failures.push(format!("keep-alive {i}: closed"));
                                return out;
                            }
                            Ok(line) => {
                                let t = task_of(&line);
                                if task.get_or_insert(t.clone()) != &t {
                                    out.failures
                                        .push(format!("keep-alive {i} moved from {task:?} to {t}"));
                                    return out;
                                }
                                out.requests += 1;
                            }
                            Err(e) => {
                                out.failures
                                    .push(format!("keep-alive {i}: request {}: {e}", out.requests));
                                return out;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    out
                })
            })
            .collect();
        let fresh = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Ten a second, each on its own thread: a connection
                // waiting for its SYN's retransmission does not hold up
                // the next ones.
                let mut handles = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    handles.push(std::thread::spawn(|| lab::tcp_request(target(), T)));
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut out = Outcome::default();
                for h in handles {
                    match h.join().unwrap() {
                        Ok(_) => out.new_connections += 1,
                        Err(e) => out.failures.push(format!("new connection: {e}")),
                    }
                }
                out
            })
        };
        let mut total = Outcome::default();
        for h in keepalive.into_iter().chain([fresh]) {
            let o = h.join().unwrap();
            total.requests += o.requests;
            total.new_connections += o.new_connections;
            total.failures.extend(o.failures);
        }
        total
    })
}

#[test]
fn five_takeovers_in_a_row_drop_no_connection() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mut mg = Meshgate::start(&lab, &lab.config_toml("[control]\nstats_interval = 0.5\n"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = clients(&lab, stop.clone());
    let t0 = Instant::now();
    let mut old_logs = Vec::new();
    for n in 1..=5 {
        std::thread::sleep(Duration::from_secs(5));
        let (next, old_log) = mg.take_over(&lab, n);
        old_logs.push(old_log);
        mg = next;
    }
    std::thread::sleep(Duration::from_secs(30).saturating_sub(t0.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let outcome = load.join().unwrap();
    let log = mg.log();
    eprintln!(
        "{} requests on 6 keep-alive connections, {} new connections",
        outcome.requests, outcome.new_connections
    );
    for l in log.lines().chain(old_logs.iter().flat_map(|l| l.lines())) {
        if l.contains("took over") || l.contains("handed over") || l.contains("was busy") {
            eprintln!("{l}");
        }
    }
    assert!(
        outcome.failures.is_empty(),
        "{:?}\nlast log:\n{log}\nearlier:\n{}",
        outcome.failures,
        old_logs.join("\n---\n")
    );
    // 30 s at four a second on six connections, less the pauses (a
    // segment dropped in a switch waits for its retransmission).
    assert!(outcome.requests >= 6 * 80, "{outcome:?}");
    assert!(outcome.new_connections >= 250, "{outcome:?}");
    for old in &old_logs {
        assert!(old.contains("handing over"), "{old}");
        assert!(old.contains("taken over; exiting"), "{old}");
    }
    let human = mg.cli_ok(&["stats"]);
    assert!(
        human.contains("takeovers: 5, flows carried over"),
        "{human}"
    );
    let (st, log, stats) = mg.stop();
    assert!(st.success(), "{log}");
    let t = &stats["takeover"];
    assert_eq!(t["takeovers"], 5, "{t}");
    assert!(t["flows_carried"].as_u64().unwrap() >= 6, "{t}");
    assert!(t["switch_ms"].as_f64().unwrap() > 0.0, "{t}");
}

/// SIGKILL and an immediate restart (what systemd's `Restart=always`
/// does): the program stays attached and drops meanwhile, the restarted
/// meshgate finds every flow in the dead one's journal, and no connection
/// is reset or moves; new connections after the restart are answered.
#[test]
fn sigkill_and_an_immediate_restart_reset_no_connection() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = Meshgate::start(&lab, &lab.config_toml("[control]\nstats_interval = 0.5\n"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = clients(&lab, stop.clone());
    std::thread::sleep(Duration::from_secs(5));
    let killed_at = Instant::now();
    let mg = mg.kill_and_restart(&lab, 1);
    let restarted_in = killed_at.elapsed();
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let outcome = load.join().unwrap();
    let log = mg.log();
    eprintln!(
        "restarted in {restarted_in:?}; {} requests on 6 keep-alive connections, {} new connections",
        outcome.requests, outcome.new_connections
    );
    assert!(outcome.failures.is_empty(), "{:?}\n{log}", outcome.failures);
    assert!(outcome.requests >= 6 * 40, "{outcome:?}");
    assert!(outcome.new_connections >= 100, "{outcome:?}");
    let carried: u64 = log
        .lines()
        .find_map(|l| {
            l.split("restarted with the flows a previous meshgate left: ")
                .nth(1)
        })
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no restart line:\n{log}"));
    assert!(carried >= 6, "{log}");
    let journal = mg.control.with_extension("sock.journal.0");
    assert!(journal.exists(), "{}", journal.display());
    let mut mg = mg;
    mg.signal("INT");
    let st = mg.child.as_mut().unwrap().wait().unwrap();
    assert!(st.success(), "{}", mg.log());
    let stats = mg.stats_json();
    assert_eq!(
        stats["takeover"]["flows_carried"], carried,
        "{}",
        stats["takeover"]
    );
    // A clean stop removes the journal: nothing to restore next time.
    assert!(!journal.exists(), "{}", journal.display());
}

/// A takeover the running meshgate cannot honour is refused before
/// anything changes: the old one keeps serving its connections. And a
/// second meshgate without --takeover is refused with the flag's name.
#[test]
fn an_incompatible_takeover_is_refused_without_harm() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = Meshgate::start(&lab, &lab.config_toml(""));
    let run = |cfg: &str, extra: &[&str]| run_beside(&lab, &mg, cfg, extra);
    let (s, first) = connect_and_ask(&lab);

    let (ok, out) = run(&lab.config_toml(""), &[]);
    assert!(!ok && out.contains("--takeover"), "{out}");

    let other = lab.config_toml("[flows]\nsnat_ports = [20000, 40000]\n");
    let (ok, out) = run(&other, &["--takeover"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("refused") && out.contains("flows.snat_ports"),
        "{out}"
    );

    // A flow state of another version: refused by name, nothing stops.
    let mut api = std::os::unix::net::UnixStream::connect(&mg.control).unwrap();
    api.write_all(
        b"{\"cmd\":\"handover\",\"version\":99,\"workers\":1,\"snat_ports\":[1024,65535]}\n",
    )
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&api), &mut line).unwrap();
    assert!(
        line.contains("\"ok\":false") && line.contains("version 99"),
        "{line}"
    );

    // The old meshgate still serves the connection it had, on its task.
    assert_eq!(ask_again(s), first, "the connection moved to another task");
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
    assert!(!log.contains("handing over"), "{log}");
}

/// A connection from the client through meshgate, and the task that
/// answered it first.
fn connect_and_ask(lab: &Lab) -> (TcpStream, String) {
    let ns = lab.client();
    std::thread::spawn(move || {
        lab::enter_ns(&ns).unwrap();
        let mut s = TcpStream::connect_timeout(&target(), T).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(b"hello\n").unwrap();
        let first = task_of(&lab::read_line(&mut s).unwrap());
        (s, first)
    })
    .join()
    .unwrap()
}

/// The task that answers `s` now.
fn ask_again(mut s: TcpStream) -> String {
    std::thread::spawn(move || {
        s.write_all(b"hello\n").unwrap();
        task_of(&lab::read_line(&mut s).unwrap())
    })
    .join()
    .unwrap()
}

/// `meshgate run` with configuration `cfg` on `mg`'s control socket, beside
/// it in the lab's ingress namespace, until it exits: whether it
/// succeeded, and what it said.
fn run_beside(lab: &Lab, mg: &Meshgate, cfg: &str, extra: &[&str]) -> (bool, String) {
    let path = mg.dir.join("other.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ingress()])
        .arg(env!("CARGO_BIN_EXE_meshgate"))
        .args(["run", "--config"])
        .arg(&path)
        .arg("--control")
        .arg(&mg.control)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A flow state that is corrupt, foreign or of another shape is discarded
/// with a warning, and meshgate starts and serves.
#[test]
fn a_corrupt_flow_state_is_discarded() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("{}-mg", lab.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("control.sock.flows.0"), b"MGFLOWS\0garbage").unwrap();
    // A journal of another shape: two workers' worth of header, one here.
    let mut journal = handover::encode_header(
        journal::JOURNAL_MAGIC,
        handover::Origin {
            worker: 1,
            workers: 2,
            snat_ports: (1024, 65535),
        },
        1,
        0,
    )
    .to_vec();
    journal.extend_from_slice(&[0; handover::RECORD_LEN]);
    std::fs::write(dir.join("control.sock.journal.0"), &journal).unwrap();
    let mg = Meshgate::start(&lab, &lab.config_toml(""));
    let ok = lab
        .in_ns(&lab.client(), || lab::tcp_request(target(), T))
        .unwrap();
    assert!(ok.is_ok(), "{ok:?}\n{}", mg.log());
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{log}");
    assert!(log.contains("discarded a flow state"), "{log}");
    assert!(log.contains("flows not carried over"), "{log}");
    assert!(log.contains("worker 1 of 2"), "{log}");
    assert!(!dir.join("control.sock.flows.0").exists());
}

/// A new meshgate that fails after it took the flows (here it asks for
/// generic XDP while the running one's program is native, which the
/// kernel refuses at the swap) must not leave the node with a program and
/// no socket behind it and a clean exit: the old one hears the abort,
/// detaches its program and exits non-zero, for its supervisor
/// (`Restart=on-failure`) to start it again, and that start takes the
/// flows from the journals.
#[test]
fn a_takeover_that_fails_after_the_handover_ends_in_a_restart_not_a_black_hole() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mut mg = Meshgate::start(&lab, &lab.config_toml(""));
    let (s, first) = connect_and_ask(&lab);

    let t0 = Instant::now();
    let generic = lab
        .config_toml("")
        .replace("[node]\n", "[node]\nxdp_mode = \"generic\"\n");
    let (ok, said) = run_beside(&lab, &mg, &generic, &["--takeover"]);
    assert!(!ok, "the new one started: {said}");
    let mut child = mg.child.take().unwrap();
    let st = poll(
        Duration::from_secs(10),
        || child.try_wait().unwrap(),
        || {
            format!(
                "the old meshgate still runs 10 s after a failed takeover:\n{}\nthe new one: {said}",
                mg.log()
            )
        },
    );
    mg.child = Some(child);
    let log = mg.log();
    eprintln!(
        "the old meshgate exited {:?} after the request",
        t0.elapsed()
    );
    assert!(
        !st.success(),
        "exit status 0 after a failed takeover:\n{log}"
    );
    assert!(log.contains("takeover failed"), "{log}");
    assert!(
        !lab::xdp_attached(&lab.ingress(), "in0").unwrap(),
        "a program left attached with no socket behind it"
    );
    let journal = mg.control.with_extension("sock.journal.0");
    assert!(journal.exists(), "the flows' journal went: {log}");

    // The supervisor's restart: the held connection goes on, on its task.
    let mg = mg.kill_and_restart(&lab, 1);
    assert!(
        mg.log()
            .contains("restarted with the flows a previous meshgate left"),
        "{}",
        mg.log()
    );
    assert_eq!(ask_again(s), first, "the connection moved to another task");
}
