//! Aggregated statistics: worker reports summed by the control thread.

use std::collections::BTreeMap;
use std::time::Instant;

use std::net::Ipv4Addr;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::dataplane::DropReason;
use crate::dataplane::counters::{DropCounters, EventCounters, TaskCounters};
use crate::dataplane::tables::{Snapshot, TaskId};
use crate::runtime::swarm::follow::SwarmStatus;
use crate::runtime::worker::WorkerReport;
use crate::xdp::XskStats;
use crate::xdp::program::PASS_REASONS;

// The answer to `stats`, defined once: the control thread builds it, the
// CLI decodes it (a renamed field is a decoding error, not an empty
// column), `--stats-file` and the tests read its JSON.

/// All statistics, as `meshgate stats --json` prints them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    pub uptime_seconds: f64,
    /// The snapshot generation in use.
    pub generation: u64,
    pub events: EventCounters,
    /// Drops by reason (every reason, zeros included).
    pub drops: BTreeMap<String, u64>,
    pub drops_total: u64,
    pub flows: usize,
    pub flows_per_worker: Vec<usize>,
    pub free_frames_per_worker: Vec<usize>,
    pub services: Vec<ServiceStats>,
    pub batch_latency_ns: LatencyView,
    pub xsk: Vec<XskStats>,
    /// Frames the XDP program passed to the kernel, by reason.
    pub xdp_passed: BTreeMap<String, u64>,
    pub bad_descriptors: u64,
    pub syn_admission: AdmissionView,
    /// In swarm mode: what the Docker follower did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<SwarmStatus>,
    /// Other nodes' announcements of return paths (`crate::announce`).
    #[serde(default)]
    pub announcements: AnnounceStats,
    /// Takeovers and the flows this process started with.
    #[serde(default)]
    pub takeover: crate::runtime::takeover::TakeoverStats,
}

/// What the announcements' listener heard (`crate::announce`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStats {
    /// Whether a key is configured: without one nothing is sent or heard.
    #[serde(default)]
    pub signed: bool,
    /// Return-path sets taken.
    pub accepted: u64,
    /// Datagrams refused, all reasons together.
    pub refused: u64,
    /// Datagrams refused, by reason (`crate::announce::Refusal`).
    #[serde(default)]
    pub refused_by: BTreeMap<String, u64>,
    /// Return-path sets from nodes that run none of the tables' tasks:
    /// not kept.
    pub ignored: u64,
    /// Sets of what managers know of services, taken.
    #[serde(default)]
    pub service_sets: u64,
    /// Nodes whose return-path set counts.
    pub nodes: usize,
    /// Whether a manager's word on services is in force (on a worker).
    #[serde(default)]
    pub manager_word: bool,
}

/// One service's counters and tasks in [`StatsView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub name: String,
    pub mark: u32,
    pub scheduler: String,
    /// Its tasks' counters summed.
    pub counters: TaskCounters,
    pub tasks: Vec<TaskStats>,
}

/// One task in [`ServiceStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStats {
    pub address: Ipv4Addr,
    pub node: Ipv4Addr,
    pub weight: u32,
    pub active_flows: u32,
    pub inactive_flows: u32,
    /// Flows created since the task appeared.
    pub flows: u64,
    pub counters: TaskCounters,
}

/// Batch processing time, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyView {
    /// Batches measured.
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The XDP program's SYN admission control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionView {
    /// New TCP flows admitted per queue and second (0: no limit).
    pub budget_per_queue_per_second: u32,
    pub admitted: u64,
    pub retried: u64,
    pub refused: u64,
}

pub struct Stats {
    pub started: Instant,
    pub drops: DropCounters,
    pub events: EventCounters,
    pub tasks: BTreeMap<TaskId, TaskCounters>,
    pub flows: Vec<usize>,
    pub free_frames: Vec<usize>,
    pub batch_ns: Histogram<u64>,
    pub xsk: Vec<XskStats>,
    pub bad_descs: Vec<u64>,
    /// Frames the XDP program passed to the kernel, by reason.
    pub xdp_passed: [u64; crate::xdp::program::PASS_REASONS.len()],
    /// New TCP flows admitted per queue and second (0: no limit).
    pub syn_budget: u32,
    /// What the XDP program's SYN admission control did.
    pub admission: crate::xdp::program::AdmissionCounts,
    pub announcements: AnnounceStats,
    pub takeover: crate::runtime::takeover::TakeoverStats,
}

impl Stats {
    pub fn new(workers: usize) -> Stats {
        Stats {
            started: Instant::now(),
            drops: DropCounters::default(),
            events: EventCounters::default(),
            tasks: BTreeMap::new(),
            flows: vec![0; workers],
            free_frames: vec![0; workers],
            batch_ns: Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid bounds"),
            xsk: vec![XskStats::default(); workers],
            bad_descs: vec![0; workers],
            xdp_passed: [0; crate::xdp::program::PASS_REASONS.len()],
            syn_budget: 0,
            admission: Default::default(),
            announcements: AnnounceStats::default(),
            takeover: Default::default(),
        }
    }

    pub fn absorb(&mut self, r: WorkerReport) {
        let w = r.pipeline.worker as usize;
        self.drops.add(&r.pipeline.drops);
        self.events.add(&r.pipeline.events);
        for (id, c) in &r.pipeline.tasks {
            self.tasks.entry(*id).or_default().add(c);
        }
        if w < self.flows.len() {
            self.flows[w] = r.pipeline.flows;
            self.free_frames[w] = r.free_frames;
            self.xsk[w] = r.xsk;
            self.bad_descs[w] = r.bad_descs;
        }
        let _ = self.batch_ns.add(&r.batch_ns);
    }

    pub fn total_flows(&self) -> usize {
        self.flows.iter().sum()
    }

    /// Counters of a task (zero when it never saw a packet).
    pub fn task(&self, id: TaskId) -> TaskCounters {
        self.tasks.get(&id).copied().unwrap_or_default()
    }

    /// The one-line summary `meshgate run` prints.
    pub fn summary_line(&self, snap: &Snapshot) -> String {
        let e = &self.events;
        let mut s = format!(
            "{:>7.1}s  rx {}  fwd {}  replies {}  arp {}  flows {} (+{} new)  drops {}",
            self.started.elapsed().as_secs_f64(),
            e.rx,
            e.forwarded,
            e.replies,
            e.arp_replies,
            self.total_flows(),
            e.flows_created,
            self.drops.total()
        );
        if e.handoffs > 0 {
            s.push_str(&format!("  handoffs {}", e.handoffs));
        }
        if e.sandbox_rx + e.sandbox_tx > 0 {
            s.push_str(&format!(
                "  local tasks: to {} from {}",
                e.sandbox_tx, e.sandbox_rx
            ));
        }
        if self.admission.refused > 0 {
            s.push_str(&format!("  syn refused {}", self.admission.refused));
        }
        let mut reasons: Vec<(&str, u64)> = self.drops.nonzero().collect();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        if !reasons.is_empty() {
            let r: Vec<String> = reasons
                .iter()
                .take(4)
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            s.push_str(&format!(" ({})", r.join(", ")));
        }
        for svc in &snap.services {
            let per: Vec<String> = svc
                .tasks
                .iter()
                .map(|&i| self.task(snap.tasks[i as usize].id).flows.to_string())
                .collect();
            s.push_str(&format!("  | {} flows/task {}", svc.name, per.join("/")));
        }
        s
    }

    /// Machine-readable statistics.
    /// The answer to `stats`: what `meshgate stats` prints and
    /// `--stats-file` holds.
    pub fn view(&self, snap: &Snapshot, swarm: Option<SwarmStatus>) -> StatsView {
        let services = snap
            .services
            .iter()
            .map(|svc| {
                let mut total = TaskCounters::default();
                let tasks = svc
                    .tasks
                    .iter()
                    .map(|&i| {
                        let t = &snap.tasks[i as usize];
                        let c = self.task(t.id);
                        total.add(&c);
                        let (active, inactive, created) = t.shared.counts();
                        TaskStats {
                            address: t.addr,
                            node: t.node,
                            weight: t.weight,
                            active_flows: active,
                            inactive_flows: inactive,
                            flows: created,
                            counters: c,
                        }
                    })
                    .collect();
                ServiceStats {
                    name: svc.name.to_string(),
                    mark: svc.mark,
                    scheduler: svc.scheduler.to_string(),
                    counters: total,
                    tasks,
                }
            })
            .collect();
        let h = &self.batch_ns;
        StatsView {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            generation: snap.generation,
            events: self.events,
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), self.drops.get(*r)))
                .collect(),
            drops_total: self.drops.total(),
            flows: self.total_flows(),
            flows_per_worker: self.flows.clone(),
            free_frames_per_worker: self.free_frames.clone(),
            services,
            batch_latency_ns: LatencyView {
                count: h.len(),
                p50: h.value_at_quantile(0.5),
                p99: h.value_at_quantile(0.99),
                p999: h.value_at_quantile(0.999),
                max: h.max(),
            },
            xsk: self.xsk.clone(),
            xdp_passed: PASS_REASONS
                .iter()
                .zip(self.xdp_passed)
                .map(|(r, n)| (r.to_string(), n))
                .collect(),
            bad_descriptors: self.bad_descs.iter().sum(),
            syn_admission: AdmissionView {
                budget_per_queue_per_second: self.syn_budget,
                admitted: self.admission.admitted,
                retried: self.admission.retried,
                refused: self.admission.refused,
            },
            swarm,
            announcements: self.announcements.clone(),
            takeover: self.takeover,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer survives JSON both ways (what the CLI decodes is what
    /// the control thread sent), and a missing field is an error.
    #[test]
    fn stats_view_round_trips() {
        let mut stats = Stats::new(2);
        stats.events.forwarded = 7;
        stats.drops.inc(DropReason::NoService);
        stats.syn_budget = 20_000;
        stats.admission.refused = 3;
        let snap = crate::dataplane::fixtures::lab_snapshot();
        let swarm = SwarmStatus {
            socket: "/var/run/docker.sock".into(),
            reads: 2,
            ..Default::default()
        };
        for view in [stats.view(&snap, None), stats.view(&snap, Some(swarm))] {
            let text = serde_json::to_string(&view).unwrap();
            let back: StatsView = serde_json::from_str(&text).unwrap();
            assert_eq!(back, view);
            assert_eq!(back.services[0].tasks.len(), 3);
            assert_eq!(back.drops["no_service"], 1);
            assert_eq!(back.drops.len(), DropReason::COUNT);
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v.as_object_mut().unwrap().remove("events");
            assert!(serde_json::from_value::<StatsView>(v).is_err());
        }
    }
}
