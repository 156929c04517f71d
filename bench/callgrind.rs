//! Instructions per packet of the pipeline alone, counted by callgrind:
//! the difference of runs of 100 000 and 300 000 packets, so setup cancels
//! out and periodic work (sweeps, reports) is averaged over many periods
//! (runs of 20 000 and 40 000 read 35 fewer per established packet of the
//! same code). Repeatable on a noisy machine where timings are not;
//! `testkit/tests/instructions.rs` guards the same counts.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn total(bin: &Path, case: &str, n: u64, dir: &Path) -> Result<u64> {
    let out = dir.join(format!("cg.{case}.{n}"));
    let st = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(bin)
        .args(["pipeline", "--case", case, "--iterations", &n.to_string()])
        .output()
        .context("running valgrind (apt-get install valgrind)")?;
    if !st.status.success() {
        bail!("valgrind failed: {}", String::from_utf8_lossy(&st.stderr));
    }
    let text = std::fs::read_to_string(&out)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no total in the callgrind output")
}

/// (case, instructions per packet) for new, established and reply, and
/// an IPv6 client's established segments and replies.
pub fn instructions(bin: &Path) -> Result<Vec<(&'static str, u64)>> {
    let dir = std::env::temp_dir().join(format!("mg-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut v = Vec::new();
    for case in ["new", "established", "reply", "established6", "reply6"] {
        let a = total(bin, case, 100_000, &dir)?;
        let b = total(bin, case, 300_000, &dir)?;
        v.push((case, (b.saturating_sub(a)) / 200_000));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(v)
}
