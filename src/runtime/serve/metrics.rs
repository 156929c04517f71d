//! The Prometheus text exposition (format 0.0.4) of the statistics: what
//! `/metrics` and the API's `metrics` request answer.
//!
//! Every family is written with its `# HELP` and `# TYPE` lines first and
//! all its samples together, as the format requires; label values are
//! service names (validated: no quotes or backslashes), addresses and fixed
//! words, so they need no escaping.

use std::fmt::{Display, Write as _};
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::stats::Stats;
use crate::dataplane::DropReason;
use crate::dataplane::counters::TaskCounters;
use crate::dataplane::tables::{Snapshot, TaskEntry};

/// The exposition text of `st` over the tables of `snap`, at `now` on the
/// workers' clock (for passive health's ejections).
pub fn render(snap: &Snapshot, st: &Stats, now: u32) -> String {
    let mut x = Exposition::default();
    service_families(&mut x, snap);
    task_families(&mut x, snap, st);
    health_families(&mut x, snap, now);
    node_families(&mut x, snap, st);
    x.out
}

/// A text exposition being written.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &dyn Display)], value: impl Display) {
        self.out.push_str(name);
        for (i, (k, v)) in labels.iter().enumerate() {
            let sep = if i == 0 { '{' } else { ',' };
            let _ = write!(self.out, "{sep}{k}=\"{v}\"");
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Per service: its mark, scheduler and client-IP mode, and per task the
/// source address its new flows carry (`snat-fallback`: the service keeps
/// clients' addresses, but the task's node has no return path here).
fn service_families(x: &mut Exposition, snap: &Snapshot) {
    x.family(
        "meshgate_service_info",
        "gauge",
        "A service: its fwmark, scheduler and client-IP mode (snat or preserve).",
    );
    for s in &snap.services {
        let mark = format!("{:#x}", s.mark);
        x.sample(
            "meshgate_service_info",
            &[
                ("service", &s.name),
                ("fwmark", &mark),
                ("scheduler", &s.scheduler),
                ("client_ip", &s.client_ip),
            ],
            1,
        );
    }
    x.family(
        "meshgate_task_client_ip",
        "gauge",
        "The source address a task's new flows carry: snat, preserve or snat-fallback.",
    );
    for s in &snap.services {
        for &i in &s.tasks {
            let t = &snap.tasks[i as usize];
            let mode = s.client_ip_of(t);
            x.sample(
                "meshgate_task_client_ip",
                &[
                    ("service", &s.name),
                    ("task", &t.addr),
                    ("client_ip", &mode),
                ],
                1,
            );
        }
    }
}

/// Per task of each service: packets, bytes, flows created, flows now.
fn task_families(x: &mut Exposition, snap: &Snapshot, st: &Stats) {
    let tasks: Vec<(&str, &TaskEntry)> = snap
        .services
        .iter()
        .flat_map(|s| s.tasks.iter().map(|&i| (&*s.name, &snap.tasks[i as usize])))
        .collect();
    // The traffic counters: one family each, a sample per task and direction.
    let directions =
        |x: &mut Exposition, name: &str, help: &str, pair: fn(TaskCounters) -> [u64; 2]| {
            x.family(name, "counter", help);
            for &(service, t) in &tasks {
                for (direction, n) in ["in", "out"].into_iter().zip(pair(st.task(t.id))) {
                    x.sample(
                        name,
                        &[
                            ("service", &service),
                            ("task", &t.addr),
                            ("direction", &direction),
                        ],
                        n,
                    );
                }
            }
        };
    directions(
        x,
        "meshgate_task_packets_total",
        "Packets forwarded per task and direction (in: client to task).",
        |c| [c.packets_in, c.packets_out],
    );
    directions(
        x,
        "meshgate_task_bytes_total",
        "Bytes forwarded per task and direction.",
        |c| [c.bytes_in, c.bytes_out],
    );
    x.family(
        "meshgate_task_flows_total",
        "counter",
        "Flows created per task.",
    );
    for &(service, t) in &tasks {
        let labels: [(&str, &dyn Display); 2] = [("service", &service), ("task", &t.addr)];
        x.sample("meshgate_task_flows_total", &labels, st.task(t.id).flows);
    }
    x.family(
        "meshgate_task_flows",
        "gauge",
        "Flows in the tables per task and state (active: established TCP).",
    );
    for &(service, t) in &tasks {
        for (state, n) in [
            ("active", &t.shared.active),
            ("inactive", &t.shared.inactive),
        ] {
            x.sample(
                "meshgate_task_flows",
                &[("service", &service), ("task", &t.addr), ("state", &state)],
                n.load(Ordering::Relaxed),
            );
        }
    }
}

/// Per task: whether passive health has it out of new-flow selection
/// now, and how often it did.
fn health_families(x: &mut Exposition, snap: &Snapshot, now: u32) {
    let family = |x: &mut Exposition,
                  name: &str,
                  kind: &str,
                  help: &str,
                  value: &dyn Fn(&TaskEntry) -> u64| {
        x.family(name, kind, help);
        for s in &snap.services {
            for &i in &s.tasks {
                let t = &snap.tasks[i as usize];
                let labels: [(&str, &dyn Display); 2] = [("service", &s.name), ("task", &t.addr)];
                x.sample(name, &labels, value(t));
            }
        }
    };
    family(
        x,
        "meshgate_task_ejected",
        "gauge",
        "1 while passive health keeps a task out of new-flow selection.",
        &|t| u64::from(t.shared.health.ejected(now)),
    );
    family(
        x,
        "meshgate_task_ejections_total",
        "counter",
        "Times passive health took a task out of new-flow selection.",
        &|t| t.shared.health.ejections(),
    );
}

/// The node's drops, SYN admission, events, flows, batch latency and
/// snapshot generation.
fn node_families(x: &mut Exposition, snap: &Snapshot, st: &Stats) {
    x.family(
        "meshgate_announcements_total",
        "counter",
        "Other nodes' announcements: return-path sets accepted and ignored (from nodes without tasks), managers' service sets, datagrams refused by reason.",
    );
    let a = &st.announcements;
    for (result, n) in [
        ("accepted", a.accepted),
        ("ignored", a.ignored),
        ("service_set", a.service_sets),
    ] {
        x.sample("meshgate_announcements_total", &[("result", &result)], n);
    }
    for r in crate::announce::Refusal::ALL {
        let n = a.refused_by.get(r.name()).copied().unwrap_or(0);
        let result = format!("refused_{}", r.name());
        x.sample("meshgate_announcements_total", &[("result", &result)], n);
    }
    x.family(
        "meshgate_drops_total",
        "counter",
        "Frames not forwarded, by reason.",
    );
    for r in DropReason::ALL {
        x.sample(
            "meshgate_drops_total",
            &[("reason", &r.name())],
            st.drops.get(*r),
        );
    }
    x.family(
        "meshgate_syn_budget",
        "gauge",
        "New TCP flows the XDP program admits per receive queue and second (0: no limit).",
    );
    x.sample("meshgate_syn_budget", &[], st.syn_budget);
    x.family(
        "meshgate_syn_admission_total",
        "counter",
        "SYNs to published ports by the XDP program's verdict (retried: a refused SYN's retransmission, admitted on its second chance).",
    );
    let a = st.admission;
    for (verdict, n) in [
        ("admitted", a.admitted),
        ("retried", a.retried),
        ("refused", a.refused),
    ] {
        x.sample("meshgate_syn_admission_total", &[("verdict", &verdict)], n);
    }
    x.family("meshgate_events_total", "counter", "Data-plane events.");
    if let Value::Object(m) = serde_json::to_value(st.events).unwrap_or_default() {
        for (event, n) in m {
            x.sample("meshgate_events_total", &[("event", &event)], n);
        }
    }
    x.family("meshgate_flows", "gauge", "Flows in all workers' tables.");
    x.sample("meshgate_flows", &[], st.total_flows());
    x.family(
        "meshgate_batch_seconds",
        "summary",
        "Time a worker spends on one batch.",
    );
    for q in [0.5, 0.9, 0.99, 0.999] {
        let seconds = st.batch_ns.value_at_quantile(q) as f64 / 1e9;
        x.sample(
            "meshgate_batch_seconds",
            &[("quantile", &q)],
            format_args!("{seconds:e}"),
        );
    }
    x.sample("meshgate_batch_seconds_count", &[], st.batch_ns.len());
    x.family(
        "meshgate_snapshot_generation",
        "gauge",
        "Generation of the tables the workers use.",
    );
    x.sample("meshgate_snapshot_generation", &[], snap.generation);
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn every_family_once_with_its_samples_together() {
        use crate::dataplane::tables::{L4Checksum, Registry};
        let cfg = crate::dataplane::fixtures::lab_config();
        let mut reg = Registry::default();
        let link = crate::dataplane::fixtures::lab_link(L4Checksum::Incremental);
        let snap = Snapshot::build(
            &cfg.table_desc(),
            link,
            std::sync::Arc::default(),
            &mut reg,
            7,
        );
        let mut st = Stats::new(2);
        st.syn_budget = 5;
        st.flows = vec![3, 4];
        st.events.forwarded = 9;
        let _ = st.batch_ns.record(12345);
        let id = snap.tasks[1].id;
        st.tasks.insert(id, Default::default());
        st.tasks.get_mut(&id).unwrap().packets_in = 11;
        st.tasks.get_mut(&id).unwrap().bytes_out = 1100;
        snap.tasks[0].shared.active.fetch_add(2, Ordering::Relaxed);
        let text = render(&snap, &st, 0);
        let task = snap.tasks[1].addr;
        for line in [
            format!(
                "meshgate_task_packets_total{{service=\"web\",task=\"{task}\",direction=\"in\"}} 11"
            ),
            format!(
                "meshgate_task_bytes_total{{service=\"web\",task=\"{task}\",direction=\"out\"}} 1100"
            ),
            format!(
                "meshgate_task_flows{{service=\"web\",task=\"{}\",state=\"active\"}} 2",
                snap.tasks[0].addr
            ),
            format!("meshgate_task_ejected{{service=\"web\",task=\"{task}\"}} 0"),
            format!("meshgate_task_ejections_total{{service=\"web\",task=\"{task}\"}} 0"),
            "meshgate_syn_budget 5".into(),
            "meshgate_events_total{event=\"forwarded\"} 9".into(),
            "meshgate_flows 7".into(),
            "meshgate_batch_seconds_count 1".into(),
            "meshgate_snapshot_generation 7".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        // The format wants each family's samples after its TYPE line and
        // before the next family's.
        let mut seen = Vec::new();
        let mut current = "";
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap();
                assert!(!seen.contains(&current), "{current} twice");
                seen.push(current);
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert!(
                    name.starts_with(current),
                    "{name} outside its family {current}"
                );
            }
        }
        assert_eq!(seen.len(), 16);
    }

    #[test]
    fn samples_follow_the_text_format() {
        let mut x = Exposition::default();
        x.family("m_total", "counter", "Things.");
        x.sample("m_total", &[], 3);
        x.sample("m_total", &[("a", &"x"), ("b", &7)], 4);
        assert_eq!(
            x.out,
            "# HELP m_total Things.\n# TYPE m_total counter\nm_total 3\nm_total{a=\"x\",b=\"7\"} 4\n"
        );
    }
}
