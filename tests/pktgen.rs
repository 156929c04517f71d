//! The traffic generator end to end: `meshgate-pktgen send` towards an
//! AF_XDP reflector (`meshgate-pktgen reflect`) on a veth pair; what is
//! sent comes back, is counted, and carries its send time.

use meshgate_testkit::harness as common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::privileged;
use meshgate_testkit::lab::{self, sh};

/// Two namespaces and a reflector; all removed when dropped.
struct Pair {
    gen_ns: String,
    dut_ns: String,
    reflector: Option<Child>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(mut c) = self.reflector.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.gen_ns, &self.dut_ns] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

#[test]
fn sent_frames_come_back_from_the_reflector_with_their_timestamps() {
    if !privileged() {
        return;
    }
    // "mgl<pid>x…" like the lab's namespaces: swept if this run is killed.
    let prefix = format!("mgl{}x77", std::process::id());
    let mut p = Pair {
        gen_ns: format!("{prefix}-gen"),
        dut_ns: format!("{prefix}-dut"),
        reflector: None,
    };
    for ns in [&p.gen_ns, &p.dut_ns] {
        sh(&["ip", "netns", "add", ns]).unwrap();
    }
    sh(&[
        "ip", "link", "add", "g0", "netns", &p.gen_ns, "type", "veth", "peer", "name", "d0",
        "netns", &p.dut_ns,
    ])
    .unwrap();
    sh(&[
        "ip",
        "-n",
        &p.gen_ns,
        "addr",
        "add",
        "198.18.1.1/24",
        "dev",
        "g0",
    ])
    .unwrap();
    sh(&[
        "ip",
        "-n",
        &p.dut_ns,
        "addr",
        "add",
        "198.18.1.2/24",
        "dev",
        "d0",
    ])
    .unwrap();
    for (ns, dev) in [(&p.gen_ns, "g0"), (&p.dut_ns, "d0")] {
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]).unwrap();
    }
    p.reflector = Some(
        Command::new("ip")
            .args(["netns", "exec", &p.dut_ns])
            .arg(env!("CARGO_BIN_EXE_meshgate-pktgen"))
            .args(["reflect", "--iface", "d0", "--addr", "198.18.1.2"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !lab::xdp_attached(&p.dut_ns, "d0").unwrap() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the reflector did not attach"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &p.gen_ns])
        .arg(env!("CARGO_BIN_EXE_meshgate-pktgen"))
        .args([
            "send",
            "--iface",
            "g0",
            "--src",
            "198.18.64.1",
            "--dst",
            "198.18.1.2",
            "--flows",
            "100",
            "--rate",
            "20000",
            "--count",
            "10000",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(v["sent"], 10000, "{v}");
    let received = v["received"].as_u64().unwrap();
    assert!(received >= 9990, "lost more than 0.1 %: {v}");
    let (p50, p99) = (v["p50_us"].as_f64().unwrap(), v["p99_us"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 100_000.0, "{v}");
}
