//! The status page in a real browser: meshgate in the lab with its HTTP
//! listener, traffic through it, and Debian's chromium (headless, in the
//! ingress namespace) rendering `/` twice, a few seconds apart.
//!
//! `MESHGATE_SCREENSHOT=docs/status-page.png` also saves a screenshot of
//! the page (the picture in the README and docs/operating.md is made this way), 900 CSS pixels wide
//! unless `MESHGATE_SCREENSHOT_WIDTH` says otherwise (390: a phone).

use meshgate_testkit::harness as common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Meshgate, default_lab, target};
use meshgate_testkit::browser;
use meshgate_testkit::lab;

/// The value of `attr="…"` on the element with `id`.
fn attr_of(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let k = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    Some(tag[k..k + tag[k..].find('"')?].to_string())
}

/// The rendered text of task `addr`'s row.
fn task_row(dom: &str, addr: &str) -> Option<String> {
    let at = dom.find(&format!("data-task=\"{addr}\""))?;
    let end = at + dom[at..].find("</tr>")?;
    Some(dom[at..end].to_string())
}

#[test]
fn status_page_shows_services_tasks_and_live_rates_in_a_browser() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    if !browser::available().unwrap() {
        return;
    }
    let mg = Meshgate::start(
        &lab,
        &lab.config_toml("[control]\nmetrics = \"127.0.0.1:0\"\n"),
    );
    let addr = mg.metrics_addr();
    let page = format!("http://{addr}/");

    // Connections, one after another, for as long as the test looks.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let client = lab.client();
    let traffic = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            lab::enter_ns(&client).unwrap();
            while !stop.load(Ordering::Relaxed) {
                if lab::tcp_request(target(), Duration::from_secs(2)).is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Rates need two samples a second apart.
    std::thread::sleep(Duration::from_secs(3));

    let settle = Duration::from_millis(2500);
    let first = browser::dump_dom(&lab.ingress(), &page, settle).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let second = browser::dump_dom(&lab.ingress(), &page, settle).unwrap();
    if let Ok(to) = std::env::var("MESHGATE_SCREENSHOT") {
        browser::screenshot(
            &lab.ingress(),
            &page,
            settle,
            match std::env::var("MESHGATE_SCREENSHOT_WIDTH") {
                Ok(w) => (w.parse().unwrap(), 1400),
                Err(_) => (900, 1000),
            },
            std::path::Path::new(&to),
        )
        .unwrap();
        eprintln!("screenshot in {to}");
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    assert!(
        done.load(Ordering::Relaxed) > 50,
        "too few connections went through: {}",
        done.load(Ordering::Relaxed)
    );

    for dom in [&first, &second] {
        let updates: u32 = attr_of(dom, "updated", "data-count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(updates >= 1, "the page never read status.json:\n{dom}");
        assert!(
            dom.contains("data-service=\"web\""),
            "no service web:\n{dom}"
        );
        for t in ["198.18.128.4", "198.18.128.5", "198.18.128.6"] {
            let row = task_row(dom, t).unwrap_or_else(|| panic!("no task {t}:\n{dom}"));
            assert!(row.contains("running"), "{row}");
        }
        let rate: f64 = attr_of(dom, "fwd-rate", "data-value")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(rate > 0.0, "no forwarded rate on the page:\n{dom}");
        assert!(
            dom.contains("0x100") && dom.contains("8080→80/tcp"),
            "{dom}"
        );
        assert!(dom.contains("<polyline"), "no chart:\n{dom}");
    }
    // The numbers moved between the two moments: the uptime, and the
    // tasks' rows (rates and flows).
    assert_ne!(attr_of(&first, "uptime", "id"), None, "no uptime element");
    let uptime = |d: &str| {
        let at = d.find("id=\"uptime\">").unwrap() + "id=\"uptime\">".len();
        d[at..at + d[at..].find('<').unwrap()].to_string()
    };
    assert_ne!(uptime(&first), uptime(&second));
    let rows = |d: &str| {
        ["198.18.128.4", "198.18.128.5", "198.18.128.6"]
            .map(|t| task_row(d, t).unwrap())
            .join("\n")
    };
    assert_ne!(rows(&first), rows(&second), "the task rows did not change");

    // The page stays small, and the listener is read-only.
    let body = lab
        .in_ns(&lab.ingress(), move || http(addr, "GET / HTTP/1.0\r\n\r\n"))
        .unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(
        body.contains("Content-Security-Policy: default-src 'none'"),
        "{body}"
    );
    assert!(body.len() < 32 * 1024, "the page is {} bytes", body.len());
    let post = lab
        .in_ns(&lab.ingress(), move || {
            http(
                addr,
                "POST /status.json HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            )
        })
        .unwrap();
    assert!(post.starts_with("HTTP/1.0 405"), "{post}");
    // Not HTTP at all (a request line with a space in its target): refused
    // as such, not taken for a method.
    let bad = lab
        .in_ns(&lab.ingress(), move || {
            http(addr, "GET /status json HTTP/1.0\r\n\r\n")
        })
        .unwrap();
    assert!(bad.starts_with("HTTP/1.0 400"), "{bad}");
    let json = lab
        .in_ns(&lab.ingress(), move || {
            http(addr, "GET /status.json HTTP/1.0\r\n\r\n")
        })
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(json.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(v["mode"], "file");
    assert_eq!(v["services"][0]["tasks"].as_array().unwrap().len(), 3);
    // The CLI reads the same view over the control socket.
    let cli: serde_json::Value = serde_json::from_str(&mg.cli_ok(&["status"])).unwrap();
    assert_eq!(cli["services"][0]["name"], "web");
}

fn http(addr: SocketAddr, req: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut b = String::new();
    s.read_to_string(&mut b).unwrap();
    b
}
