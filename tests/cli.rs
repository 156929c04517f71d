//! The command line: `check` accepts the shipped example and rejects mistakes
//! with the file, the key and what is wrong; argument errors name what is
//! missing; `stats --watch` into a pipe prints plain snapshots.

use std::process::Command;

fn meshgate(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_lab_example() {
    let (ok, out, err) = meshgate(&["check", "--config", "examples/lab.toml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ok") && out.contains("1 service(s), 3 task(s)"),
        "{out}"
    );
}

#[test]
fn check_rejects_with_file_key_and_reason() {
    let dir = std::env::temp_dir().join(format!("mg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    let text = std::fs::read_to_string("examples/lab.toml")
        .unwrap()
        .replace("vni = 4096", "vni = 99999999");
    std::fs::write(&bad, text).unwrap();
    let (ok, _, err) = meshgate(&["check", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("bad.toml")
            && err.contains("ingress.vni")
            && err.contains("out of range (1 to 16777215)"),
        "{err}"
    );
    let (ok, _, err) = meshgate(&[
        "check",
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("missing.toml") && err.contains("cannot read"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `check` checks the announcement key as `run` would load it: a key
/// others can read stops it with the reason; a private one is named.
#[test]
fn check_checks_the_announcement_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("mg-cli-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("announce.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.join("lab.toml");
    let text = std::fs::read_to_string("examples/lab.toml")
        .unwrap()
        .replace(
            "[node]\n",
            &format!("[node]\nannounce_key = \"{}\"\n", key.display()),
        );
    std::fs::write(&cfg, text).unwrap();
    let (ok, _, err) = meshgate(&["check", "--config", cfg.to_str().unwrap()]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok2, out2, err2) = meshgate(&["check", "--config", cfg.to_str().unwrap()]);
    let (_, plain, _) = meshgate(&["check", "--config", "examples/lab.toml"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!ok, "a key others can read passed");
    assert!(err.contains("readable by others (mode 644)"), "{err}");
    assert!(ok2, "{err2}");
    assert!(out2.contains("announcements signed with"), "{out2}");
    assert!(plain.contains("announcements off (no key"), "{plain}");
}

#[test]
fn run_without_a_source_names_both_options() {
    let (ok, _, err) = meshgate(&["run"]);
    assert!(!ok);
    assert!(
        err.contains("--config") && err.contains("--swarm"),
        "`run` alone must say that --config FILE or --swarm is needed: {err}"
    );
}

/// Every subcommand's help describes every argument and option: a line
/// of `--help` with nothing after the option but its default is a user
/// left guessing.
#[test]
fn every_argument_of_every_subcommand_is_described() {
    let subcommands: &[&[&str]] = &[
        &[],
        &["run"],
        &["check"],
        &["service"],
        &["service", "ls"],
        &["service", "ps"],
        &["service", "update"],
        &["ipvs"],
        &["stats"],
        &["status"],
        &["reload"],
        &["return-path"],
    ];
    let mut undescribed = Vec::new();
    for sub in subcommands {
        let args: Vec<&str> = sub.iter().copied().chain(["--help"]).collect();
        let (ok, out, err) = meshgate(&args);
        assert!(ok, "{sub:?}: {err}");
        let mut in_list = false;
        for line in out.lines() {
            if line == "Options:" || line == "Arguments:" || line == "Commands:" {
                in_list = true;
                continue;
            }
            if line.trim().is_empty() {
                in_list = false;
                continue;
            }
            let entry = line.trim_start();
            // An entry starts two spaces in; wrapped descriptions further.
            if !in_list || line.len() - entry.len() > 6 {
                continue;
            }
            // The entry's name, then two spaces or more, then its help.
            let help = entry.split_once("  ").map(|(_, h)| h.trim()).unwrap_or("");
            if help.is_empty() || help.starts_with("[default:") {
                undescribed.push(format!("meshgate {}: {}", sub.join(" "), entry));
            }
        }
    }
    assert!(
        undescribed.is_empty(),
        "arguments without a description:\n{}",
        undescribed.join("\n")
    );
}

#[test]
fn swarm_socket_errors_name_the_command_line_once() {
    let sock = format!("unix:///tmp/mg-cli-{}-nodocker.sock", std::process::id());
    let (ok, _, err) = meshgate(&["run", "--swarm", &sock, "--interface", "lo"]);
    assert!(!ok);
    assert!(err.contains(&format!("--swarm: {sock}")), "{err}");
    assert!(!err.contains("swarm.socket"), "no file key: {err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "the OS error once: {err}"
    );
}

/// A stand-in for `meshgate run`'s control socket that answers every
/// request with the same statistics.
fn fake_control(path: &std::path::Path) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, BufReader, Write};
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(3) {
            let mut s = s.unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            // A whole answer, as a running meshgate builds it.
            let data = meshgate::runtime::serve::stats::Stats::new(1)
                .view(&meshgate_testkit::fixtures::lab_snapshot(), None);
            let _ = writeln!(s, "{}", serde_json::json!({"ok": true, "data": data}));
        }
    })
}

#[test]
fn stats_watch_into_a_pipe_prints_plain_snapshots() {
    let dir = std::env::temp_dir().join(format!("mg-cli-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("control.sock");
    let server = fake_control(&sock);
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["stats", "--watch", "--control"])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    server.join().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\x1b'), "escape codes into a pipe: {text:?}");
    assert_eq!(text.matches("uptime").count(), 3, "{text}");
}
