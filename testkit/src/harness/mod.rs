//! What the end-to-end tests share (`use meshgate_testkit::harness as
//! common;`): privilege checks and a running `meshgate` process in a
//! lab's ingress namespace ([`swarm`]: beside a real swarm).

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::lab::{self, Lab};

pub mod swarm;

/// Polls `f` every 20 ms until it yields a value; fails after `limit`
/// with `why()` (what was awaited, and the log to read).
pub fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>, why: impl Fn() -> String) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{}", why());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `meshgate` binary cargo built for the tests that run now: beside
/// their own binary's `deps/` directory.
pub fn meshgate_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("meshgate");
    assert!(
        bin.exists(),
        "{} is not built: run the tests through cargo test, which builds it",
        bin.display()
    );
    bin
}

/// True when the test may run. Lab tests need root (namespaces, XDP,
/// AF_XDP); without it they fail with a message, unless
/// MESHGATE_SKIP_PRIVILEGED=1 opts out explicitly.
pub fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("MESHGATE_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("skipped: not root and MESHGATE_SKIP_PRIVILEGED=1");
        return false;
    }
    panic!(
        "this test builds network namespaces and attaches XDP: run it as root (or set MESHGATE_SKIP_PRIVILEGED=1 to skip it)"
    );
}

/// True when the swarm tests may run: Docker and the lab's tools are
/// installed. Without them the test fails and names what is missing,
/// unless MESHGATE_SKIP_DOCKER=1 opts out explicitly.
pub fn docker_available() -> bool {
    let missing = crate::swarm_lab::missing_tools();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("MESHGATE_SKIP_DOCKER").as_deref() == Ok("1") {
        eprintln!("skipped: {missing:?} missing and MESHGATE_SKIP_DOCKER=1");
        return false;
    }
    let pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    panic!(
        "this test needs {:?}, which are not installed: run tools/setup (apt-get install {}), or set MESHGATE_SKIP_DOCKER=1 to skip it on a machine without Docker",
        missing.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
        pkgs.join(" ")
    );
}

/// The lab's published port: web's 8080 on the ingress node.
pub fn target() -> std::net::SocketAddr {
    (lab::INGRESS_ADDR, 8080).into()
}

/// The task that answered, from a task server's reply ("task-a 198.18…").
pub fn task_of(line: &str) -> String {
    line.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Splits a task server's reply ("task-a 198.18.128.2:40000") into the
/// task and the source address it saw.
pub fn task_and_source(line: &str) -> (String, String) {
    let mut it = line.split_whitespace();
    let task = it.next().unwrap_or_default().to_string();
    let src = it
        .next()
        .unwrap_or_default()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    (task, src)
}

/// The default lab with its task servers answering, or `None` when the
/// test may not run here (see [`privileged`]). Bind both: the servers stop
/// when their handle is dropped.
pub fn default_lab() -> Option<(Lab, lab::Servers)> {
    if !privileged() {
        return None;
    }
    let lab = Lab::build(lab::LabOptions::default()).expect("lab");
    let servers = lab.start_servers().expect("servers");
    Some((lab, servers))
}

/// Runs `meshgate ARGS --control SOCKET`; returns (success, stdout, stderr).
pub fn cli_at(control: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(meshgate_bin())
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `meshgate run` in the lab's ingress namespace; killed if dropped.
pub struct Meshgate {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub stats: PathBuf,
    pub stdout: PathBuf,
    pub control: PathBuf,
    ns: String,
    /// Removes `dir` when dropped (a predecessor in a takeover does not).
    owns_dir: bool,
}

impl Meshgate {
    /// Starts meshgate with `config` and waits until its XDP program is attached.
    pub fn start(lab: &Lab, config: &str) -> Meshgate {
        Self::start_as(lab, config, &[])
    }

    /// [`Meshgate::start`] through a wrapper command (`setpriv ...`); the
    /// working directory is then writable by everyone.
    pub fn start_as(lab: &Lab, config: &str, wrapper: &[&str]) -> Meshgate {
        let dir = std::env::temp_dir().join(format!("{}-mg", lab.prefix));
        std::fs::create_dir_all(&dir).unwrap();
        if !wrapper.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            // Sticky, as /tmp: meshgate refuses a control directory others
            // may write to otherwise.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        let cfg = dir.join("meshgate.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut m = Self::spawn(lab, dir, wrapper, &[], "stdout.log");
        m.wait_for(&["forwarding on"]);
        m
    }

    /// [`Meshgate::start`] on the control socket at `control` (the
    /// default one, for commands typed as the README types them).
    pub fn start_on(lab: &Lab, config: &str, control: PathBuf) -> Meshgate {
        let dir = std::env::temp_dir().join(format!("{}-mg", lab.prefix));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("meshgate.toml"), config).unwrap();
        let mut m = Self::spawn_at(lab, dir, (&[], &[]), "stdout.log", control);
        m.wait_for(&["forwarding on"]);
        m
    }

    /// Starts `meshgate run` on the configuration in `dir`, with `args`.
    fn spawn(lab: &Lab, dir: PathBuf, wrapper: &[&str], args: &[&str], log: &str) -> Meshgate {
        let control = dir.join("control.sock");
        Self::spawn_at(lab, dir, (wrapper, args), log, control)
    }

    /// [`Meshgate::spawn`] on the control socket at `control`.
    fn spawn_at(
        lab: &Lab,
        dir: PathBuf,
        (wrapper, args): (&[&str], &[&str]),
        log: &str,
        control: PathBuf,
    ) -> Meshgate {
        let cfg = dir.join("meshgate.toml");
        let stats = dir.join("stats.json");
        let stdout = dir.join(log);
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.ingress()])
            .args(wrapper)
            .arg(meshgate_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .arg("--stats-file")
            .arg(&stats)
            .arg("--control")
            .arg(&control)
            .args(args)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(stdout.with_extension("err")).unwrap())
            .spawn()
            .expect("spawning meshgate");
        Meshgate {
            child: Some(child),
            dir,
            config: cfg,
            stats,
            stdout,
            control,
            ns: lab.ingress(),
            owns_dir: true,
        }
    }

    /// Waits until the program is attached, the log has each of `lines`
    /// and the statistics are written.
    fn wait_for(&mut self, lines: &[&str]) {
        let t0 = Instant::now();
        loop {
            let log = self.log();
            if lab::xdp_attached(&self.ns, "in0").unwrap()
                && lines.iter().all(|l| log.contains(l))
                && self.stats.exists()
            {
                break;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "meshgate exited at start ({st}):\n{}\n{}",
                    self.log(),
                    std::fs::read_to_string(self.stdout.with_extension("err")).unwrap_or_default()
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "meshgate did not start within 15 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `meshgate run --takeover` on the same configuration and
    /// control socket, waits until it has taken over and this one has
    /// exited (successfully); returns the new one and this one's log.
    pub fn take_over(mut self, lab: &Lab, n: usize) -> (Meshgate, String) {
        let mut next = Self::spawn(
            lab,
            self.dir.clone(),
            &[],
            &["--takeover"],
            &format!("stdout-{n}.log"),
        );
        next.wait_for(&["took over from", "forwarding on"]);
        let mut child = self.child.take().unwrap();
        let st = poll(
            Duration::from_secs(10),
            || child.try_wait().unwrap(),
            || {
                format!(
                    "the old meshgate did not exit within 10 s of the takeover:\n{}",
                    self.log()
                )
            },
        );
        let log = self.log();
        assert!(st.success(), "the old meshgate failed ({st}):\n{log}");
        self.owns_dir = false;
        (next, log)
    }

    /// Kills this meshgate with SIGKILL and starts another on the same
    /// configuration and control socket at once.
    pub fn kill_and_restart(mut self, lab: &Lab, n: usize) -> Meshgate {
        let mut child = self.child.take().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        self.owns_dir = false;
        let mut next = Self::spawn(lab, self.dir.clone(), &[], &[], &format!("stdout-{n}.log"));
        next.wait_for(&["forwarding on"]);
        next
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// The address of the HTTP listener (`control.metrics`), from the log.
    pub fn metrics_addr(&self) -> std::net::SocketAddr {
        let log = self.log();
        let url = log
            .lines()
            .find_map(|l| l.strip_prefix("meshgate: metrics on http://"))
            .expect("metrics address in the log");
        url.trim_end_matches("/metrics").parse().unwrap()
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Sends SIGINT and waits for the exit; returns the status and stdout.
    pub fn stop(mut self) -> (ExitStatus, String, serde_json::Value) {
        self.signal("INT");
        let mut child = self.child.take().unwrap();
        let t0 = Instant::now();
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("meshgate did not stop within 10 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stats = self.stats_json();
        (st, self.log(), stats)
    }

    /// Runs a client subcommand against this meshgate's control socket;
    /// returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        cli_at(&self.control, args)
    }

    /// Like `cli`, but panics with the output on failure.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.cli(args);
        assert!(ok, "meshgate {args:?} failed:\n{out}{err}");
        out
    }

    /// The statistics as written once every frame sent before this call
    /// has been counted: the first write more than a worker's report
    /// period (250 ms) and a margin after now. It waits for that write
    /// rather than sleeping a fixed time, since a busy machine delays the
    /// control thread's writes (with `control.stats_interval` set low;
    /// the default writes every 5 s), and fails after 10 s with the log.
    pub fn settled_stats(&self) -> serde_json::Value {
        let after = std::time::SystemTime::now() + Duration::from_millis(350);
        let written = || std::fs::metadata(&self.stats).and_then(|m| m.modified());
        poll(
            Duration::from_secs(10),
            || {
                let fresh = written().is_ok_and(|w| w > after);
                Some(self.stats_json()).filter(|v| fresh && !v.is_null())
            },
            || {
                format!(
                    "meshgate wrote no statistics for 10 s ({:?}):\n{}",
                    written(),
                    self.log()
                )
            },
        )
    }

    /// The last statistics meshgate wrote.
    pub fn stats_json(&self) -> serde_json::Value {
        std::fs::read(&self.stats)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Meshgate {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends raw frames out of `dev` in namespace `ns` through an AF_XDP socket
/// (copy mode): any bytes at all, which no kernel socket would send.
pub fn inject(ns: &str, dev: &str, frames: Vec<Vec<u8>>) {
    let ns = ns.to_string();
    let dev = dev.to_string();
    std::thread::spawn(move || {
        crate::lab::enter_ns(&ns).unwrap();
        let mut xsk = meshgate::xdp::Xsk::open(&meshgate::xdp::XskConfig {
            ifname: dev,
            queues: vec![0],
            frames_per_queue: 256,
            frame_size: 2048,
            ring_size: 128,
            mode: meshgate::xdp::BindMode::Copy,
            huge_pages: false,
        })
        .expect("AF_XDP socket for injection");
        let umem = xsk.umem.clone();
        let mut pool = std::mem::take(&mut xsk.initial[0]);
        let port = &mut xsk.ports[0];
        for f in frames {
            let mut t = pool.pop().expect("a free frame");
            {
                let (chunk, off) = umem.frame(&mut t);
                chunk[off..off + f.len()].copy_from_slice(&f);
            }
            let off = meshgate::xdp::umem::KERNEL_HEADROOM;
            umem.set_data(&mut t, off, f.len());
            let mut one = vec![t];
            while port.transmit(&mut one) == 0 {
                port.kick();
            }
            port.kick();
            let mut done = Vec::new();
            let t0 = Instant::now();
            while done.is_empty() && t0.elapsed() < Duration::from_secs(1) {
                port.kick();
                port.complete(&mut done, 8);
            }
            pool.append(&mut done);
            // Frames one at a time, a little apart: the test counts each.
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .join()
    .unwrap();
}

/// The MAC address of `dev` in namespace `ns`.
pub fn mac_of(lab: &Lab, ns: &str, dev: &str) -> [u8; 6] {
    let out = lab.ip(ns, &["-br", "link", "show", "dev", dev]).unwrap();
    let m: meshgate::wire::MacAddr = out.split_whitespace().nth(2).unwrap().parse().unwrap();
    m.0
}
