//! Passive health, end to end: a task that stops accepting (a graceful
//! server on SIGTERM) and a task that dies hard (its link gone, as
//! `docker kill` takes a container's) cost the clients of new
//! connections no failed request, at most one SYN retransmission each,
//! and are shown ejected; a connection to the stopping task continues.

use meshgate_testkit::harness as common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Meshgate, default_lab, target, task_of};
use meshgate_testkit::lab::{self, Lab};

const T: Duration = Duration::from_secs(5);

/// `n` requests, each on a new connection from the client: (task, time).
fn requests(lab: &Lab, n: usize) -> Vec<(String, Duration)> {
    lab.in_ns(&lab.client(), move || {
        (0..n)
            .map(|i| {
                let t0 = Instant::now();
                let line = lab::tcp_request(target(), T)
                    .unwrap_or_else(|e| panic!("request {i} failed: {e}"));
                (task_of(&line), t0.elapsed())
            })
            .collect::<Vec<_>>()
    })
    .unwrap()
}

/// The value of the metric sample whose line starts with `prefix`.
fn metric(mg: &Meshgate, prefix: &str) -> Option<u64> {
    let text = meshgate::api::call(&mg.control, &meshgate::api::Request::Metrics {}).ok()?;
    text.as_str()?
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// The drop or event counter `key` of the last statistics, once it is at
/// least `want` (they are written every 0.25 s).
fn counter_reaches(mg: &Meshgate, table: &str, key: &str, want: u64) -> u64 {
    let t0 = Instant::now();
    loop {
        let n = mg.stats_json()[table][key].as_u64().unwrap_or(0);
        if n >= want || t0.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// meshgate in `lab`, its statistics written every 0.25 s, once new
/// connections have reached `task` among others.
fn started(lab: &Lab, task: &str) -> Meshgate {
    let mg = Meshgate::start(lab, &lab.config_toml("[control]\nstats_interval = 0.25\n"));
    let warm = requests(lab, 6);
    assert!(warm.iter().any(|r| r.0 == task), "{warm:?}");
    mg
}

/// Asserts that `service ps` shows lab task `ti` ejected; its address.
fn shown_ejected(mg: &Meshgate, ti: usize) -> String {
    let addr = lab::task_addr(ti).to_string();
    let ps = mg.cli_ok(&["service", "ps", "web"]);
    let row = ps
        .lines()
        .find(|l| l.starts_with(&addr))
        .unwrap_or_default();
    assert!(row.contains("ejected"), "{ps}");
    addr
}

fn slow(results: &[(String, Duration)]) -> usize {
    results
        .iter()
        .filter(|r| r.1 >= Duration::from_millis(900))
        .count()
}

#[test]
fn a_task_that_stops_accepting_fails_no_request_and_keeps_its_connections() {
    let Some((lab, servers)) = default_lab() else {
        return;
    };
    let mg = started(&lab, "task-b");
    // A connection to task-b, open while it stops accepting.
    let mut conn = lab
        .in_ns(&lab.client(), || {
            loop {
                let mut c = TcpStream::connect_timeout(&target(), T).unwrap();
                c.set_read_timeout(Some(T)).unwrap();
                c.write_all(b"who\n").unwrap();
                if task_of(&lab::read_line(&mut c).unwrap()) == "task-b" {
                    return c;
                }
            }
        })
        .unwrap();

    servers.stop_accepting(1);
    std::thread::sleep(Duration::from_millis(100));
    let after = requests(&lab, 30);
    assert!(after.iter().all(|r| r.0 != "task-b"), "{after:?}");
    assert!(
        slow(&after) <= 1,
        "one connection waits for a retransmission: {after:?}"
    );
    assert!(after.iter().all(|r| r.1 < Duration::from_millis(2_500)));

    conn.write_all(b"still there?\n").unwrap();
    assert_eq!(task_of(&lab::read_line(&mut conn).unwrap()), "task-b");

    assert_eq!(counter_reaches(&mg, "drops", "task_refused", 1), 1);
    assert_eq!(counter_reaches(&mg, "events", "tasks_ejected", 1), 1);
    let b = shown_ejected(&mg, 1);
    let sample = format!("meshgate_task_ejected{{service=\"web\",task=\"{b}\"}}");
    assert_eq!(metric(&mg, &sample), Some(1));
    let sample = format!("meshgate_task_ejections_total{{service=\"web\",task=\"{b}\"}}");
    assert_eq!(metric(&mg, &sample), Some(1));
}

#[test]
fn a_task_killed_hard_costs_at_most_one_retransmission_per_connection() {
    let Some((lab, _servers)) = default_lab() else {
        return;
    };
    let mg = started(&lab, "task-c");

    // task-c's link goes, as a killed container's veth does: SYNs to it
    // find no one until the control plane hears of it. (Its namespace
    // itself stays: this process's server threads hold it.)
    lab.ip(&lab.node(1), &["link", "del", "v-2"]).unwrap();

    let after = requests(&lab, 30);
    assert!(after.iter().all(|r| r.0 != "task-c"), "{after:?}");
    assert!(
        after.iter().all(|r| r.1 < Duration::from_millis(2_500)),
        "at most one retransmission each: {after:?}"
    );
    let unanswered = meshgate::dataplane::health::CONSECUTIVE_UNANSWERED as usize;
    assert_eq!(slow(&after), unanswered, "until it is ejected: {after:?}");
    assert_eq!(
        counter_reaches(&mg, "events", "syns_moved", unanswered as u64),
        unanswered as u64
    );
    assert_eq!(counter_reaches(&mg, "events", "tasks_ejected", 1), 1);
    shown_ejected(&mg, 2);
}
