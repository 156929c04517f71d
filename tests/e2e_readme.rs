//! The README's first run, as a user types it. `tools/demo --keep` leaves
//! the lab running with meshgate on the default control socket; this test
//! builds the same lab, starts meshgate the same way, and runs the
//! commands of the README's block after `tools/demo --keep` exactly as
//! written (`sudo` included: `tools/setup` installs it), from the
//! repository's root. Each must succeed and show what its comment in the
//! README promises.

use meshgate_testkit::harness as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Meshgate, default_lab, target};
use meshgate_testkit::lab;

/// The commands of the README's block after "`sudo tools/demo --keep`",
/// each with its comment (what it shows).
fn first_run_commands(readme: &str) -> Vec<(String, String)> {
    let (_, after) = readme
        .split_once("`sudo tools/demo --keep`")
        .expect("the README's first run mentions tools/demo --keep");
    let (_, block) = after.split_once("```sh\n").expect("a sh block follows");
    let (block, _) = block.split_once("```").expect("the block ends");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once('#') {
            Some((cmd, note)) => (cmd.trim().to_string(), note.trim().to_string()),
            None => (l.trim().to_string(), String::new()),
        })
        .collect()
}

/// Removes the default control socket if it is left (a failed run), and
/// its directory if this test made it.
struct ControlDir(PathBuf, Option<PathBuf>);

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(d) = self.1.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn the_readmes_first_run_commands_run_as_written() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commands = first_run_commands(include_str!("../README.md"));
    assert!(commands.len() >= 3, "{commands:?}");
    let written = root.join("target/release/meshgate");
    let built = PathBuf::from(env!("CARGO_BIN_EXE_meshgate"));
    assert_eq!(
        written.canonicalize().ok(),
        built.canonicalize().ok(),
        "the README runs target/release/meshgate: run this test with --release (tools/test does)"
    );

    let control = PathBuf::from(meshgate::config::DEFAULT_CONTROL_SOCKET);
    let dir = control.parent().expect("a directory").to_path_buf();
    assert!(
        !control.exists(),
        "{} is in use: another meshgate runs on this machine",
        control.display()
    );
    let _dir = ControlDir(control.clone(), (!dir.exists()).then(|| dir.clone()));
    let mg = Meshgate::start_on(&lab, &lab.config_toml(""), control.clone());
    // A connection, as the demo makes thirty: the tables show flows.
    let answer = lab
        .in_ns(&lab.client(), || {
            lab::tcp_request(target(), Duration::from_secs(3))
        })
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}\n{}", mg.log());

    for (cmd, note) in &commands {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(root)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`{cmd}` failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            mg.log()
        );
        // What the README's comment promises, where it names values.
        let promised: Vec<&str> = note
            .split([',', ' '])
            .filter(|w| w.contains("0x") || w.contains('/') || *w == "web")
            .map(|w| w.trim_end_matches('…'))
            .filter(|w| !w.is_empty())
            .collect();
        for p in &promised {
            assert!(text.contains(p), "`{cmd}` shows no {p:?}:\n{text}");
        }
        assert!(
            text.contains("web") || text.contains("198.18."),
            "`{cmd}`:\n{text}"
        );
    }
    let (st, log, _) = mg.stop();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        !control.exists(),
        "meshgate left its control socket behind\n{log}"
    );
}
