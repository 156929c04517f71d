//! Aggregated statistics: worker reports summed by the control thread.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use super::worker::WorkerReport;
use crate::dataplane::counters::{DropCounters, EventCounters, TaskCounters};
use crate::dataplane::tables::{Snapshot, TaskId};
use crate::xdp::XskStats;

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
            batch_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            xsk: vec![XskStats::default(); workers],
            bad_descs: vec![0; workers],
            xdp_passed: [0; crate::xdp::program::PASS_REASONS.len()],
            syn_budget: 0,
            admission: Default::default(),
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
    pub fn to_json(&self, snap: &Snapshot) -> Value {
        let drops: serde_json::Map<String, Value> = crate::dataplane::DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), json!(self.drops.get(*r))))
            .collect();
        let services: Vec<Value> = snap
            .services
            .iter()
            .map(|svc| {
                let mut total = TaskCounters::default();
                let tasks: Vec<Value> = svc
                    .tasks
                    .iter()
                    .map(|&i| {
                        let t = &snap.tasks[i as usize];
                        let c = self.task(t.id);
                        total.add(&c);
                        let (active, inactive, created) = t.shared.counts();
                        json!({
                            "address": t.addr.to_string(),
                            "node": t.node.to_string(),
                            "weight": t.weight,
                            "active_flows": active,
                            "inactive_flows": inactive,
                            "flows": created,
                            "counters": c,
                        })
                    })
                    .collect();
                json!({ "name": &*svc.name, "mark": svc.mark, "scheduler": svc.scheduler.to_string(), "counters": total, "tasks": tasks })
            })
            .collect();
        let h = &self.batch_ns;
        json!({
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "generation": snap.generation,
            "events": self.events,
            "drops": drops,
            "drops_total": self.drops.total(),
            "flows": self.total_flows(),
            "flows_per_worker": self.flows,
            "free_frames_per_worker": self.free_frames,
            "services": services,
            "batch_latency_ns": {
                "count": h.len(),
                "p50": h.value_at_quantile(0.5),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            },
            "xsk": self.xsk,
            "xdp_passed": crate::xdp::program::PASS_REASONS.iter().zip(self.xdp_passed).map(|(r, n)| (r.to_string(), json!(n))).collect::<serde_json::Map<String, Value>>(),
            "bad_descriptors": self.bad_descs.iter().sum::<u64>(),
            "syn_admission": {
                "budget_per_queue_per_second": self.syn_budget,
                "admitted": self.admission.admitted,
                "retried": self.admission.retried,
                "refused": self.admission.refused,
            },
        })
    }
}
