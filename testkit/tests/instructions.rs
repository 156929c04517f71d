//! A deterministic guard on the pipeline's cost: instructions per packet
//! counted by callgrind (the difference of runs of 100 000 and 300 000
//! packets, as `bench/run` counts them), which do not depend on the
//! machine's load as timings do. The budgets are today's counts (511, 684,
//! 1 214 on 2026-12-02, down from 573, 735, 1 238 by issue 17's work: see
//! bench/README.md, "Instructions per packet") with about 2 % of room; the
//! targets (200 per established packet) are in bench/README.md. The binary
//! this test runs is built by `cargo test --release --workspace` in CI,
//! whose unified features have read up to 9 more than a lone `cargo build
//! --release --bin meshgate-bench` (new flow: 1 247 against 1 238 once),
//! hence the room.
//!
//! Needs valgrind (`tools/setup` installs it); without it the test fails
//! and says so, unless MESHGATE_SKIP_VALGRIND=1 opts out.

use std::process::Command;

/// (case, budget in instructions per packet).
const BUDGETS: [(&str, u64); 3] = [("established", 522), ("reply", 697), ("new", 1240)];

fn total(case: &str, n: u64, dir: &std::path::Path) -> u64 {
    let out = dir.join(format!("cg.{case}.{n}"));
    let st = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(env!("CARGO_BIN_EXE_meshgate-bench"))
        .args(["pipeline", "--case", case, "--iterations", &n.to_string()])
        .output()
        .expect("running valgrind");
    assert!(
        st.status.success(),
        "valgrind: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a total in callgrind's output")
}

#[test]
fn pipeline_instructions_stay_within_budget() {
    // The budgets count the optimised build; a debug build counts 15 times
    // as many and would fail for the wrong reason.
    if cfg!(debug_assertions) {
        panic!(
            "the instruction budgets hold for the release build only: run \
             `cargo test --release -p meshgate-testkit --test instructions` (tools/test does)"
        );
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        if std::env::var("MESHGATE_SKIP_VALGRIND").as_deref() == Ok("1") {
            eprintln!("skipped: valgrind missing and MESHGATE_SKIP_VALGRIND=1");
            return;
        }
        panic!(
            "valgrind is not installed: run tools/setup (apt-get install valgrind), or set MESHGATE_SKIP_VALGRIND=1 to skip"
        );
    }
    let dir = std::env::temp_dir().join(format!("mg-insns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut over = Vec::new();
    for (case, budget) in BUDGETS {
        let per = (total(case, 300_000, &dir) - total(case, 100_000, &dir)) / 200_000;
        eprintln!("{case}: {per} instructions per packet (budget {budget})");
        if per > budget {
            over.push(format!("{case}: {per} > {budget}"));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(over.is_empty(), "over budget: {over:?}");
}
