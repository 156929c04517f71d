//! Instructions per packet of the pipeline alone, counted by callgrind:
//! only inside the harness's per-packet function (`pipeline_count::one`:
//! the frame copied into its buffer, then `Pipeline::process`), as the
//! difference of runs of 100 000 and 300 000 packets, so that what runs
//! once cancels out and periodic work (sweeps, reports) is averaged over
//! many periods. Counting inside `one` only leaves out the harness's setup
//! and loop: the "new" case recreates its pipeline and flow table every
//! 60 000 flows (its SNAT ports run out), which, counted, read about 245
//! instructions per packet that no new flow costs (1 195 against 950 on
//! 2026-12-02; established 482 against 475, the loop). Repeatable on a
//! noisy machine where timings are not; `testkit/tests/instructions.rs`
//! guards the same counts with this code.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The function callgrind counts in: `#[inline(never)]` in
/// `bench/pipeline_count.rs`, and checked below to have been found.
const COUNTED: &str = "meshgate_bench::pipeline_count::one";

fn total(bin: &Path, case: &str, n: u64, dir: &Path) -> Result<u64> {
    let out = dir.join(format!("cg.{case}.{n}"));
    let st = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--toggle-collect={COUNTED}"))
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

/// Instructions per packet of `case` (`meshgate-bench pipeline --case`),
/// with `bin` the `meshgate-bench` binary and `dir` for callgrind's files.
pub fn per_packet(bin: &Path, case: &str, dir: &Path) -> Result<u64> {
    let a = total(bin, case, 100_000, dir)?;
    let b = total(bin, case, 300_000, dir)?;
    let per = b.saturating_sub(a) / 200_000;
    // Nothing counted means callgrind never entered `COUNTED` (renamed,
    // or inlined into its caller): a count of zero must not pass a budget.
    if per < 50 {
        bail!(
            "callgrind counted {per} instructions per packet inside `{COUNTED}`: was it renamed or inlined?"
        );
    }
    Ok(per)
}

/// (case, instructions per packet) for new, established and reply, and
/// an IPv6 client's established segments and replies.
pub fn instructions(bin: &Path) -> Result<Vec<(&'static str, u64)>> {
    const CASES: [&str; 5] = ["new", "established", "reply", "established6", "reply6"];
    Ok(CASES.into_iter().zip(count(bin, &CASES)?).collect())
}

/// Instructions per packet of each of `cases`, callgrind's files in a
/// directory of their own, removed afterwards (also on an error).
pub fn count<S: AsRef<str>>(bin: &Path, cases: &[S]) -> Result<Vec<u64>> {
    let dir = std::env::temp_dir().join(format!("mg-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let counted = cases
        .iter()
        .map(|c| per_packet(bin, c.as_ref(), &dir))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    counted
}
