//! A meshgate beside a real swarm's dockerds (`crate::swarm_lab`):
//! the process, its configuration from a node's own socket, and waiting.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::swarm_lab::{Node, SwarmLab};

/// `meshgate run --swarm` in the manager's namespace; killed if dropped.
pub struct Mg {
    pub child: Child,
    pub stdout: PathBuf,
    pub control: PathBuf,
}

impl Mg {
    /// On the manager, from its own socket.
    pub fn start(lab: &SwarmLab) -> Mg {
        let swarm = format!("--swarm=unix://{}", lab.manager_socket().display());
        Self::start_in(lab, &lab.manager(), &[swarm.as_str()])
    }

    /// `meshgate run ARGS` in namespace `ns`.
    pub fn start_in(lab: &SwarmLab, ns: &str, args: &[&str]) -> Mg {
        Self::start_as(lab, ns, args, "", "forwarding on")
    }

    /// `meshgate run ARGS --takeover` in namespace `ns`, on this one's
    /// control socket: returns the new one once it has taken over and
    /// this one has exited successfully.
    pub fn take_over(mut self, lab: &SwarmLab, ns: &str, args: &[&str]) -> Mg {
        let mut args = args.to_vec();
        args.push("--takeover");
        let next = Self::start_as(lab, ns, &args, "-next", "took over from");
        let (child, stdout) = (&mut self.child, &self.stdout);
        let log = || std::fs::read_to_string(stdout).unwrap_or_default();
        let st = super::poll(
            Duration::from_secs(10),
            || child.try_wait().unwrap(),
            || format!("the old meshgate did not exit:\n{}", log()),
        );
        assert!(st.success(), "{st}:\n{}", self.log());
        next
    }

    /// `meshgate run ARGS` in `ns`, logging to a file tagged `tag`; waits
    /// for `ready` in the log.
    pub fn start_as(lab: &SwarmLab, ns: &str, args: &[&str], tag: &str, ready: &str) -> Mg {
        // One set of files per node: several may run at once.
        let node = ns.rsplit('-').next().unwrap_or("m");
        let stdout = lab.dir.join(format!("meshgate-{node}{tag}.log"));
        let control = lab.dir.join(format!("control-{node}.sock"));
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(super::meshgate_bin())
            .arg("run")
            .args(args)
            .arg("--control")
            .arg(&control)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(
                std::fs::File::create(lab.dir.join(format!("meshgate-{node}{tag}.err"))).unwrap(),
            )
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut mg = Mg {
            child,
            stdout,
            control,
        };
        let t0 = Instant::now();
        while !mg.log().contains(ready) || !mg.log().contains("forwarding on") {
            if let Some(st) = mg.child.try_wait().unwrap() {
                panic!(
                    "meshgate exited at start ({st}):\n{}\n{}",
                    mg.log(),
                    std::fs::read_to_string(lab.dir.join(format!("meshgate-{node}{tag}.err")))
                        .unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "meshgate did not start:\n{}",
                mg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mg
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stats(&self) -> serde_json::Value {
        let (ok, out, err) = super::cli_at(&self.control, &["stats", "--json"]);
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    }

    /// Running tasks of `web` in meshgate's tables (0 when it is not there).
    pub fn web_tasks(&self) -> usize {
        self.tasks_up("web")
    }

    /// Running tasks of `service` in meshgate's tables (0 when it is not
    /// there).
    pub fn tasks_up(&self, service: &str) -> usize {
        let name = format!("{service} ");
        super::cli_at(&self.control, &["service", "ls"])
            .1
            .lines()
            .find(|l| l.starts_with(&name))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|up| up.split('/').next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Mg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `node`'s Docker lists its ingress sandbox on the ingress
/// network: Docker makes it some time after the node joins, and meshgate
/// refuses to start without it (as it should: it takes its place).
pub fn wait_for_sandbox(lab: &SwarmLab, node: Node) {
    lab.wait_for("the node's ingress sandbox", Duration::from_secs(60), |l| {
        l.docker(
            node,
            &[
                "network",
                "inspect",
                "ingress",
                "--format",
                "{{json .Containers}}",
            ],
        )
        .is_ok_and(|out| out.contains("ingress-sbox"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.daemon_log(&lab.ns(node))));
}

/// Writes `name`: a meshgate configuration for `node` from its own
/// Docker socket, with `extra` lines in `[swarm]`, once the node has its
/// ingress sandbox.
pub fn swarm_config(lab: &SwarmLab, node: Node, name: &str, extra: &str) -> PathBuf {
    wait_for_sandbox(lab, node);
    let cfg = lab.dir.join(name);
    std::fs::write(
        &cfg,
        format!(
            "[node]\ninterface = \"eth0\"\nannounce_key = \"{}\"\n\n[swarm]\nsocket = \"unix://{}\"\n{extra}",
            announce_key(lab).display(),
            lab.socket(node).display(),
        ),
    )
    .unwrap();
    cfg
}

/// The swarm's announcement key, one file every node's meshgate reads (as
/// a Docker secret would give each the same); it goes with the lab's
/// directory.
pub fn announce_key(lab: &SwarmLab) -> PathBuf {
    let path = lab.dir.join("announce.key");
    if !path.exists() {
        std::mem::forget(crate::keys::KeyFile::create(&path).unwrap());
    }
    path
}

/// Waits until `ok`, at most `limit`; returns how long it took.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}
