//! A real browser for the tests of what a person looks at: Debian's
//! `chromium`, headless, run inside a lab namespace (where meshgate's HTTP
//! listener is), printing the rendered DOM or taking a screenshot.
//!
//! Each run gets its own profile directory, removed afterwards, so runs
//! share nothing and leave nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "{CHROMIUM} is missing: install Debian's `chromium` package (tools/setup does), or set MESHGATE_SKIP_BROWSER=1 to skip the browser tests"
    )]
    Missing,
    #[error("chromium {what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("running chromium: {0}")]
    Io(#[from] std::io::Error),
}

/// True when the browser tests may run: chromium is there, or the
/// explicit opt-out is set (then the caller returns, saying so).
pub fn available() -> Result<bool, BrowserError> {
    if Path::new(CHROMIUM).exists() {
        return Ok(true);
    }
    if std::env::var("MESHGATE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: no chromium and MESHGATE_SKIP_BROWSER=1");
        return Ok(false);
    }
    Err(BrowserError::Missing)
}

/// A throwaway profile directory.
struct Profile(PathBuf);

impl Profile {
    fn new() -> std::io::Result<Profile> {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "mg-chromium-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Profile(p))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs headless chromium in namespace `ns` on `url`, letting the page's
/// scripts run for `settle` first, with `extra` arguments; its stdout.
fn run(ns: &str, url: &str, settle: Duration, extra: &[String]) -> Result<String, BrowserError> {
    if !Path::new(CHROMIUM).exists() {
        return Err(BrowserError::Missing);
    }
    let profile = Profile::new()?;
    let out = Command::new("ip")
        .args(["netns", "exec", ns, CHROMIUM])
        .args([
            "--headless",
            // Root in a test namespace: chromium's own sandbox needs user
            // namespaces for a non-root user, which this is not.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(format!("--virtual-time-budget={}", settle.as_millis()))
        .args(extra)
        .arg(url)
        .env("HOME", &profile.0)
        .output()?;
    if !out.status.success() {
        return Err(BrowserError::Failed {
            what: extra.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DOM of `url` as rendered after its scripts ran for `settle`.
pub fn dump_dom(ns: &str, url: &str, settle: Duration) -> Result<String, BrowserError> {
    run(ns, url, settle, &["--dump-dom".to_string()])
}

/// A PNG screenshot of `url` at `width` × `height` CSS pixels, into `to`.
pub fn screenshot(
    ns: &str,
    url: &str,
    settle: Duration,
    (width, height): (u32, u32),
    to: &Path,
) -> Result<(), BrowserError> {
    let to = std::path::absolute(to)?;
    run(
        ns,
        url,
        settle,
        &[
            format!("--screenshot={}", to.display()),
            format!("--window-size={width},{height}"),
        ],
    )?;
    Ok(())
}
