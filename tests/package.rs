//! The Debian package: `tools/package` builds it from this test's binary,
//! its contents are checked, then it is installed on this machine with
//! `dpkg -i`, its unit verified by `systemd-analyze verify`, its man pages
//! and completions found where man and bash look, and it is purged again.
//!
//! Installing is the only honest check of a package, so the test refuses
//! to run where a meshgate package is installed already (it would replace
//! it), saying so; MESHGATE_SKIP_PACKAGE=1 opts out explicitly.

use std::path::Path;
use std::process::{Command, Output};

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "meshgate"])
        .stdout
        .starts_with(b"install ok")
}

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "meshgate"]);
    }
}

/// Removes the output directory.
struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn debian_package_installs_a_verified_unit_man_pages_and_completions() {
    if std::env::var("MESHGATE_SKIP_PACKAGE").as_deref() == Ok("1") {
        eprintln!("skipped: MESHGATE_SKIP_PACKAGE=1");
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test installs the package with dpkg: run it as root (or set MESHGATE_SKIP_PACKAGE=1)"
    );
    assert!(
        !installed(),
        "a meshgate package is installed on this machine; this test would replace and purge it: remove it first (or set MESHGATE_SKIP_PACKAGE=1)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Dir(std::env::temp_dir().join(format!("mg-deb-{}", std::process::id())));
    let o = Command::new(root.join("tools/package"))
        .args(["--binary", env!("CARGO_BIN_EXE_meshgate"), "--out"])
        .arg(&out.0)
        .output()
        .expect("tools/package");
    assert!(
        o.status.success(),
        "tools/package failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let deb = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{deb}");

    // What the package holds.
    let list = ok("dpkg-deb", &["-c", &deb]);
    for path in [
        "./usr/bin/meshgate",
        "./usr/lib/systemd/system/meshgate.service",
        "./etc/meshgate/meshgate.toml",
        "./usr/share/man/man1/meshgate.1.gz",
        "./usr/share/man/man1/meshgate-run.1.gz",
        "./usr/share/man/man1/meshgate-status.1.gz",
        "./usr/share/bash-completion/completions/meshgate",
        "./usr/share/zsh/vendor-completions/_meshgate",
        "./usr/share/fish/vendor_completions.d/meshgate.fish",
        // The configuration file's comments send the reader there.
        "./usr/share/doc/meshgate/docs/configuration.md",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{list}"
        );
    }
    assert!(
        !list.contains("generate-docs"),
        "the packagers' subcommand has a man page:\n{list}"
    );
    let depends = ok("dpkg-deb", &["-f", &deb, "Depends"]);
    assert!(depends.contains("libc6"), "Depends: {depends}");
    let control = std::env::temp_dir().join(format!("mg-deb-ctl-{}", std::process::id()));
    let _ctl = Dir(control.clone());
    ok("dpkg-deb", &["-e", &deb, control.to_str().unwrap()]);
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/meshgate/meshgate.toml"),
        "{conffiles}"
    );

    // Installed for real.
    let _purge = Installed;
    ok("dpkg", &["-i", &deb]);
    assert!(installed());
    let version = ok("/usr/bin/meshgate", &["--version"]);
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/meshgate.service").unwrap();
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    let v = run("systemd-analyze", &["verify", "meshgate.service"]);
    let said = String::from_utf8_lossy(&v.stderr).into_owned();
    assert!(v.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("meshgate.service"),
        "systemd-analyze has remarks on the unit: {said}"
    );
    for page in ["meshgate", "meshgate-run", "meshgate-service-update"] {
        let at = ok("man", &["-w", page]);
        assert!(at.contains("/usr/share/man/man1/"), "{page}: {at}");
    }
    let page = ok("man", &["-P", "cat", "meshgate-run"]);
    assert!(page.contains("--takeover"), "{page}");
    let complete = ok(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/meshgate && complete -p meshgate",
        ],
    );
    assert!(complete.contains("meshgate"), "{complete}");
    // The default configuration is the commented one of deploy/.
    let conf = std::fs::read_to_string("/etc/meshgate/meshgate.toml").unwrap();
    assert_eq!(
        conf,
        std::fs::read_to_string(root.join("deploy/meshgate.toml")).unwrap()
    );

    drop(_purge);
    assert!(!installed(), "dpkg --purge left the package");
    for p in [
        "/usr/bin/meshgate",
        "/etc/meshgate/meshgate.toml",
        "/usr/lib/systemd/system/meshgate.service",
    ] {
        assert!(!Path::new(p).exists(), "{p} is left after the purge");
    }
}
