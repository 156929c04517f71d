//! The client's own address through the namespace lab (file mode): a
//! service with `client_ip = "preserve"`; on each task node, `meshgate
//! return-path` (what `meshgate run` does for local tasks in swarm mode)
//! installs the task's return path and announces it to the ingress node.
//! The lab's tasks have no route to the client at all: only the return
//! path brings their answers back.

use meshgate_testkit::harness as common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Meshgate, default_lab, target};
use meshgate::announce::{Content, Keys, ReturnPaths, Sender};
use meshgate_testkit::keys::KeyFile;
use meshgate_testkit::lab::{self, CLIENT_ADDR, INGRESS_ADDR, Lab, OVERLAY_ADDR, node_addr};

const T: Duration = Duration::from_secs(3);

/// `meshgate return-path` for the tasks of one lab node, in the node's
/// namespace; killed if dropped.
struct ReturnPathAgent {
    child: Option<Child>,
    log: std::path::PathBuf,
}

impl ReturnPathAgent {
    fn start(lab: &Lab, node: usize, key: &KeyFile) -> ReturnPathAgent {
        let log = std::env::temp_dir().join(format!("{}-agent{node}.log", lab.prefix));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.node(node)])
            .arg(env!("CARGO_BIN_EXE_meshgate"))
            .arg("return-path");
        for (i, t) in lab.tasks.iter().enumerate().filter(|(_, t)| t.node == node) {
            cmd.arg("--task")
                .arg(format!("{}@/run/netns/{}", t.address, lab.task_ns(i)));
        }
        let child = cmd
            .args(["--sandbox", &OVERLAY_ADDR.to_string()])
            .args(["--node", &node_addr(node).to_string()])
            .args(["--announce-to", &INGRESS_ADDR.to_string()])
            .arg("--announce-key")
            .arg(key.path())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning meshgate return-path");
        ReturnPathAgent {
            child: Some(child),
            log,
        }
    }

    /// SIGTERM, and the exit.
    fn stop(mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the agent did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ReturnPathAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The CLIENT IP column of `service ps web`, by task address.
fn modes(mg: &Meshgate) -> BTreeMap<String, String> {
    mg.cli_ok(&["service", "ps", "web"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((w.first()?.to_string(), w.get(5)?.to_string()))
        })
        .collect()
}

fn wait_for_modes(mg: &Meshgate, want: &[&str; 3]) {
    let t0 = Instant::now();
    loop {
        let m: Vec<String> = modes(mg).into_values().collect();
        if m == want.map(String::from) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "client-IP modes {m:?}, expected {want:?} within 6 s:\n{}",
            mg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (task, source address it saw) for `n` TCP requests and `n` UDP ones.
fn requests(lab: &Lab, mg: &Meshgate, n: usize) -> Vec<(String, String)> {
    let answers = lab.in_ns(&lab.client(), move || {
        let mut out = Vec::new();
        for i in 0..2 * n {
            let line = if i % 2 == 0 {
                lab::tcp_request(target(), T)
            } else {
                lab::udp_request(target(), T)
            }
            .map_err(|e| format!("request {i} failed: {e}"))?;
            out.push(common::task_and_source(&line));
        }
        Ok::<_, String>(out)
    });
    answers
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", mg.log(), mg.cli(&["stats", "--json"]).1))
}

/// Sends forged and replayed announcements from lab node `node`'s address
/// to the ingress node.
fn forge_from_node(lab: &Lab, node: usize, key: &KeyFile) {
    let from = node_addr(node);
    let empty = Content::ReturnPaths(ReturnPaths::default());
    let keys = Keys::load(key.path()).unwrap();
    let wrong = Keys::parse(b"a key that is not this swarm's one").unwrap();
    let datagrams = vec![
        format!(r#"{{"version":1,"node":"{from}","tasks":[],"sandboxes":[]}}"#).into_bytes(),
        Sender::new(from).encode(&wrong, &empty).remove(0),
        Sender::with_epoch(from, 1).encode(&keys, &empty).remove(0),
    ];
    lab.in_ns(&lab.node(node), move || {
        let s = std::net::UdpSocket::bind((from, 0)).unwrap();
        for d in &datagrams {
            s.send_to(d, (INGRESS_ADDR, meshgate::announce::DEFAULT_PORT))
                .unwrap();
        }
    })
    .unwrap();
}

#[test]
fn tasks_see_the_clients_address_while_their_node_provides_the_way_back() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let key = KeyFile::create(&std::env::temp_dir().join(format!("{}-key", lab.prefix))).unwrap();
    let config = lab
        .config_toml("")
        .replace(
            "name = \"web\"\n",
            "name = \"web\"\nclient_ip = \"preserve\"\n",
        )
        .replace("[node]\n", &format!("[node]\n{}", key.toml()));
    let mg = Meshgate::start(&lab, &config);

    // No task node announces a return path yet: SNAT, as in Swarm.
    wait_for_modes(&mg, &["snat-fallback"; 3]);
    for (task, src) in requests(&lab, &mg, 3) {
        assert_eq!(
            src,
            OVERLAY_ADDR.to_string(),
            "{task} before any return path"
        );
    }

    // One agent per task node: task-a and task-b on node 1, task-c on 2.
    let agents: Vec<ReturnPathAgent> = (0..2)
        .map(|n| ReturnPathAgent::start(&lab, n, &key))
        .collect();
    wait_for_modes(&mg, &["preserve"; 3]);
    assert!(
        mg.log().contains("the client's address is preserved"),
        "{}",
        mg.log()
    );
    let mut per_task: BTreeMap<String, u32> = BTreeMap::new();
    for (task, src) in requests(&lab, &mg, 15) {
        assert_eq!(
            src,
            CLIENT_ADDR.to_string(),
            "{task} sees the client's own address"
        );
        *per_task.entry(task).or_default() += 1;
    }
    assert_eq!(per_task.len(), 3, "every task answered: {per_task:?}");
    assert!(per_task.values().all(|&n| n == 10), "{per_task:?}");
    let stats = mg.cli_ok(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        stats["drops"]["inner_not_for_us"]
            .as_u64()
            .expect("drops.inner_not_for_us"),
        0,
        "{stats}"
    );
    let heard = &stats["announcements"];
    assert!(heard["accepted"].as_u64().unwrap() >= 2, "{heard}");
    assert_eq!(heard["refused"].as_u64(), Some(0), "{heard}");
    assert_eq!(heard["signed"].as_bool(), Some(true), "{heard}");
    assert_eq!(
        heard["nodes"].as_u64(),
        Some(2),
        "both task nodes heard: {heard}"
    );

    // Three open connections, one per task, that keep the client's address.
    let mut open: Vec<(String, std::net::TcpStream)> = lab
        .in_ns(&lab.client(), || {
            (0..3)
                .map(|_| {
                    let mut s = std::net::TcpStream::connect_timeout(&target(), T).unwrap();
                    s.set_read_timeout(Some(T)).unwrap();
                    s.write_all(b"hello\n").unwrap();
                    let line = lab::read_line(&mut s).unwrap();
                    (line.split_whitespace().next().unwrap().to_string(), s)
                })
                .collect()
        })
        .unwrap();
    open.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = open.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["task-a", "task-b", "task-c"]);

    // From node 1's address, what issue 31 sent to switch its tasks to
    // SNAT, then the same with another key, then a signed set of an epoch
    // long past (a replay): all refused, by reason, and nothing changes.
    forge_from_node(&lab, 0, &key);
    let t0 = Instant::now();
    loop {
        let stats: serde_json::Value =
            serde_json::from_str(&mg.cli_ok(&["stats", "--json"])).unwrap();
        let heard = &stats["announcements"];
        let counted = ["format", "unknown_key", "replay"]
            .map(|why| heard["refused_by"][why].as_u64().unwrap_or(0));
        if counted == [1, 1, 1] {
            break;
        }
        assert!(t0.elapsed() < T, "refusals by reason: {heard}");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_modes(&mg, &["preserve"; 3]);

    // Node 1's agent stops: its rules go, and the ingress node falls back
    // to SNAT for its tasks at once (the agent's last announcement).
    let mut agents = agents.into_iter();
    let first = agents.next().unwrap();
    let stopped = Instant::now();
    assert!(first.stop().success());
    wait_for_modes(&mg, &["snat-fallback", "snat-fallback", "preserve"]);
    assert!(
        stopped.elapsed() < meshgate::announce::STALE_AFTER,
        "the fallback came with the last announcement, not with staleness"
    );
    for task in [0, 1] {
        let ns = lab.task_ns(task);
        let rules = lab.exec(&ns, &["ip", "rule"]).unwrap();
        assert!(!rules.contains("0x6d67"), "rules left behind: {rules}");
        let nft = lab.exec(&ns, &["nft", "list", "ruleset"]).unwrap();
        assert_eq!(nft.trim(), "", "an nf_tables table left behind");
    }
    // Their connections that kept the client's address were reset (the
    // answers would now take the task's default route); task-c's goes on.
    for (name, s) in &mut open {
        let r = s.write_all(b"again\n").and_then(|_| lab::read_line(s));
        if name == "task-c" {
            assert!(
                r.is_ok_and(|l| l.starts_with("task-c")),
                "task-c's connection"
            );
        } else {
            assert!(
                r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
                "{name}'s connection must be reset, got {r:?}"
            );
        }
    }
    for (task, src) in requests(&lab, &mg, 6) {
        let want = if task == "task-c" {
            CLIENT_ADDR
        } else {
            OVERLAY_ADDR
        };
        assert_eq!(src, want.to_string(), "{task}");
    }

    // An agent that dies without a word: the ingress node stops trusting
    // it once its announcements are stale.
    let mut second = agents.next().unwrap();
    let mut c = second.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    wait_for_modes(&mg, &["snat-fallback", "snat-fallback", "snat-fallback"]);
    drop(second);
    drop(agents);
    drop(mg);
}
