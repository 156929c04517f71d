//! The command line: `check` accepts the shipped example and rejects mistakes
//! with the file, the key and what is wrong.

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
